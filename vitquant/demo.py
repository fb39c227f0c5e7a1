"""The embedded demo (``make demo``): no data, no network, a few minutes on 2 CPU cores.

1. Train the ``vit_digits`` model (a 2-block ViT) on scikit-learn's digits for about a minute on
   first use and cache it (``$VITQUANT_CACHE``, default ``~/.cache/vitquant``).
2. Quantize it with min-max and percentile at W8A8 and W4A4 through the same ``run_calibration``
   that ``calibrate.py`` uses, and print one table.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vitquant.cli import CONF_DIR, fail
from vitquant.data.datasets import build_dataset
from vitquant.data.transforms import eval_transform
from vitquant.errors import REPORTED_ERRORS
from vitquant.io.atomic import atomic_write
from vitquant.models.build import build_model
from vitquant.pipelines.calibrate import run_calibration

RUNS = [("minmax", 8), ("percentile", 8), ("minmax", 4), ("percentile", 4)]


def train_demo_model(cfg: DictConfig, epochs: int = 40, lr: float = 2e-3, seed: int = 0) -> torch.nn.Module:
    """Train the demo ViT from scratch (AdamW, cosine schedule, label smoothing 0.1)."""
    torch.manual_seed(seed)
    model = build_model({**cfg.model, "checkpoint": None}).train()
    data = build_dataset(cfg.data, cfg.data.train_split, eval_transform(cfg.model.input))
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    steps = epochs * math.ceil(len(x) / 64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="train demo model", disable=None):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def ensure_demo_model(cfg: DictConfig) -> Path:
    """Path of the cached demo checkpoint, training and caching it first when absent."""
    path = Path(cfg.model.checkpoint)
    if not path.exists():
        print(f"training the demo model on first use (about a minute) -> {path}", flush=True)
        state = {k: v.contiguous() for k, v in train_demo_model(cfg).state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"arch": cfg.model.arch}))
    return path


def compose_run(method: str, bits: int, out_dir: Path) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"method={method}", f"bits={bits}"])
    with open_dict(cfg):
        cfg.out_dir = str(out_dir / f"{method}_w{bits}a{bits}")
        cfg.task.num_workers = 0
    return cfg


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out = Path("outputs/demo")
    ensure_demo_model(compose_run("fp", 8, out))
    rows = [run_calibration(compose_run(m, b, out)) for m, b in RUNS]
    print("\n| method | bits | FP top-1 | quantized top-1 | calibration s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | W{r['w_bits']}A{r['a_bits']} | {r['fp_top1']:.2f} | {r['top1']:.2f} | "
              f"{r['calib_seconds']:.2f} |")
    print("\nrun folders: outputs/demo/<method>_w<b>a<b> (metrics.json, quantized.pt, config.yaml)")


def run() -> None:
    """``python -m vitquant.demo`` / ``vitquant-demo``: a user error (e.g. the ``[demo]`` extra missing) is one line."""
    try:
        main()
    except REPORTED_ERRORS as e:
        fail(e)


if __name__ == "__main__":
    run()
