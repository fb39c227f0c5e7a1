"""Train a reference model that the shared recipe script cannot build, with that script's recipe.

``../shared/models/train_reference.py`` knows two fixed architectures and the CIFAR mean/std. A
reference described by a project model config (``conf/model/<name>.yaml``: timm arch + kwargs, its
own input mean/std) is trained here with the same recipe, reusing the script's augmentation
(random 4-px reflect-padded crop + horizontal flip): seed 0, AdamW (weight decay 0.05), cosine
schedule with one linear warm-up epoch, label smoothing 0.1; test top-1 after every epoch. The
weights are written atomically after every epoch as a safetensors state dict whose metadata has
the keys of the shared files (arch, kwargs, epochs_done, test_top1, mean, std).

    python -m bench.train_reference --model vit_cifar_nofinalnorm --out X.safetensors --epochs 8
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from bench.references import CACHE, REPO, SHARED, cifar_root
from vitquant.models.build import build_model


def shared_recipe():
    """The shared recipe script as a module (for its augmentation and class order)."""
    spec = importlib.util.spec_from_file_location("shared_train_reference", SHARED / "models" / "train_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_split(root: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and labels, cached as .npz in the (writable) cache, not in the data."""
    cache = CACHE.parent / "data" / f"cifar10-{split}.npz"
    if cache.is_file():
        d = np.load(cache)
        return d["x"], d["y"]
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / split / name).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    x, y = np.stack(xs), np.array(ys, dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y)
    return x, y


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model config name (conf/model/<name>.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bs", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    recipe = shared_recipe()
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(a.threads)
    cfg = OmegaConf.load(REPO / "vitquant" / "conf" / "model" / f"{a.model}.yaml")
    mean = torch.tensor(list(cfg.input.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.input.std)).view(1, 3, 1, 1)

    def to_input(xb: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(xb).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    xtr, ytr = load_split(cifar_root(), "train", recipe.CLASSES)
    xte, yte = load_split(cifar_root(), "test", recipe.CLASSES)
    model = build_model({**OmegaConf.to_container(cfg, resolve=False), "checkpoint": None}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    steps = len(xtr) // a.bs
    total = steps * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        perm = np.random.permutation(len(xtr))
        for k in range(steps):
            idx = perm[k * a.bs:(k + 1) * a.bs]
            loss = F.cross_entropy(model(recipe.augment(to_input(xtr[idx]))), torch.from_numpy(ytr[idx]),
                                   label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(to_input(xte[k:k + 500])).argmax(-1) == torch.from_numpy(yte[k:k + 500])).sum().item()
                          for k in range(0, len(xte), 500))
        acc = correct / len(xte)
        print(f"epoch {epoch} loss {loss.item():.3f} test_acc {acc:.4f} elapsed {time.time() - t0:.0f}s", flush=True)
        meta = {"arch": a.model, "kwargs": json.dumps(OmegaConf.to_container(cfg.kwargs)),
                "epochs_done": str(epoch + 1), "test_top1": f"{acc:.4f}", "mean": ",".join(map(str, cfg.input.mean)),
                "std": ",".join(map(str, cfg.input.std)), "recipe": f"bs {a.bs} lr {a.lr} epochs {a.epochs}"}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{a.out}.tmp", metadata=meta)
        os.replace(f"{a.out}.tmp", a.out)


if __name__ == "__main__":
    main()
