"""QAT benchmark: LSQ vs VVTQ and VVTQ ablations on the CIFAR-10 reference ViT, one fixed short budget.

Cells: bits ∈ {2, 3} (W2A2, W3A3; patch-embed/classifier at 8 bits, ``keep_ends_8bit``) × variants
(``lsq``: plain LSQ with label CE; ``vvtq``: full; ``vvtq-kd``, ``vvtq-reg``, ``vvtq-scheme``: one
component off each). Every cell uses the same budget (``BUDGET``, overridable from the command
line) and runs in this process, one after the other, with one thread. Rows go to
``bench/results/qat.json`` (written after every cell; a cell already there with the same budget is
skipped, so an interrupted benchmark continues), and ``qat.md`` adds the best PTQ top-1 of
``bench/results/quality.json`` at the same bits for contrast.

    python -m bench.qat                      # make bench-qat
    python -m bench.qat --bits 2 --variants lsq vvtq --images 1000 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from bench.references import cifar_root, reference_checkpoint
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORK = REPO / "outputs" / "bench-qat"
NO_SCHEME = ["qat.scheme.qkv_granularity=tensor", "qat.scheme.post_softmax_signed=true",
             "qat.scheme.post_gelu_signed=true", "qat.scheme.post_gelu_offset=false"]
VARIANTS = {
    "lsq": ["qat=lsq", "teacher=none"],
    "vvtq": ["qat=vvtq"],
    "vvtq-kd": ["qat=vvtq", "teacher=none"],
    "vvtq-reg": ["qat=vvtq", "qat.reg.weight=0"],
    "vvtq-scheme": ["qat=vvtq", *NO_SCHEME],
}
# Not in the default set: the regularizer at 100x the official weight, to see whether it can move the
# oscillation rate at all within the short budget.
EXTRA_VARIANTS = {"vvtq-reg100x": ["qat=vvtq", "qat.reg.weight=1.0"]}
BUDGET = {"images": 2000, "epochs": 1, "batch_size": 32, "n_crops": 2, "eval_images": 2000, "lr": 5.0e-4}


def budget_text(b: dict) -> str:
    return (f"{b['images']} train img x {b['n_crops']} crops, {b['epochs']} ep, batch {b['batch_size']}, "
            f"lr {b['lr']:g}, eval {b['eval_images']} img")


def run_cell(variant: str, bits: int, budget: dict, eval_fp: bool) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR
    from vitquant.pipelines.train import run_training

    out = WORK / f"{variant}_w{bits}a{bits}"
    overrides = [*{**VARIANTS, **EXTRA_VARIANTS}[variant], "model=vit_cifar", "data=cifar10",
                 f"data.root={cifar_root()}",
                 f"model.checkpoint={reference_checkpoint('vit_cifar')}", f"bits={bits}", "device=cpu",
                 f"qat.epochs={budget['epochs']}", f"qat.batch_size={budget['batch_size']}",
                 f"qat.n_crops={budget['n_crops']}", f"qat.lr={budget['lr']}", "qat.num_workers=0",
                 f"data.max_train_images={budget['images']}", f"task.max_eval_images={budget['eval_images']}",
                 "task.num_workers=0", f"eval_fp={str(eval_fp).lower()}", "resume=never"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.out_dir = str(out)
    metrics = run_training(cfg)
    return {**{k: v for k, v in metrics.items() if k != "history"}, "variant": variant, "budget": budget_text(budget),
            "history": metrics["history"]}


def best_ptq(bits: int) -> tuple[str, float] | None:
    """Best PTQ top-1 on vit_cifar at WbAb in quality.json (seeds averaged per variant)."""
    path = RESULTS / "quality.json"
    if not path.is_file():
        return None
    groups: dict[str, list[float]] = {}
    for row in json.loads(path.read_text()):
        if row.get("model") == "vit_cifar" and row.get("w_bits") == bits and row.get("a_bits") == bits \
                and row.get("method") != "fp":
            groups.setdefault(f"{row['variant']} ({row['policy']})", []).append(row["top1"])
    if not groups:
        return None
    name, values = max(groups.items(), key=lambda kv: statistics.mean(kv[1]))
    return name, statistics.mean(values)


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    fp = next((r["fp_top1"] for r in rows if r.get("fp_top1") is not None), None)
    lines = ["# QAT benchmark: vit_cifar (CIFAR-10 reference ViT), CPU, one thread", "",
             f"Budget per cell: {rows[0]['budget'] if rows else ''}. FP top-1 on the same eval subset: {fmt(fp)}. "
             "Ends (patch-embed, classifier) at 8 bits. Oscillation rate: share of latent weights whose integer "
             "code flipped per step, mean over the last epoch. Train seconds: wall / CPU of the training steps "
             "(evaluation excluded) on a shared, loaded 2-core machine.", "",
             "| W/A | variant | init top-1 | top-1 | oscillation (%) | train s (wall / CPU) |",
             "|---|---|---|---|---|---|"]
    for bits in sorted({r["w_bits"] for r in rows}, reverse=True):
        for r in (r for r in rows if r["w_bits"] == bits):
            osc = None if r.get("oscillation_rate") is None else 100 * r["oscillation_rate"]
            lines.append(f"| W{bits}A{bits} | {r['variant']} | {fmt(r.get('init_top1'))} | {fmt(r['top1'])} | "
                         f"{fmt(osc, 3)} | {r['train_seconds']:.0f} / {r.get('train_cpu_seconds', 0):.0f} |")
        ptq = best_ptq(bits)
        lines.append(f"| W{bits}A{bits} | best PTQ: {ptq[0]} | | {fmt(ptq[1])} (10,000 img, ends at W{bits}A{bits}) "
                     "| | |" if ptq else f"| W{bits}A{bits} | best PTQ | | not in quality.json | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *EXTRA_VARIANTS])
    for key, value in BUDGET.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = {k: getattr(args, k) for k in BUDGET}
    path = RESULTS / "qat.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for bits in args.bits:
        for variant in args.variants:
            if any(r["variant"] == variant and r["w_bits"] == bits and r["budget"] == budget_text(budget)
                   for r in rows):
                continue
            eval_fp = not any(r.get("fp_top1") is not None for r in rows)
            row = run_cell(variant, bits, budget, eval_fp)
            rows = [r for r in rows if not (r["variant"] == variant and r["w_bits"] == bits)] + [row]
            write_json(path, rows)
            write_text(RESULTS / "qat.md", table(rows))
            print(f"W{bits}A{bits} {variant}: top-1 {row['top1']:.2f}, oscillation {row['oscillation_rate']}, "
                  f"{row['train_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
