"""QAT memory and time on the real ImageNet ViT-T: this tree against a baseline tree, in one run.

Each cell is ``bench.imagenet``'s QAT-by-distillation run (``train.py qat=<method>`` at W4A4 on the
COCO128 objects' calibration part, 16 images × 4 crops of 224 px per step, float teacher), one child
process at a time (its peak RSS is its own, from ``wait4``), from ``--base``'s tree and from this one,
with the same seed. Reported: peak RSS, training CPU seconds, ``agree_top1``/KL after training, and the
SHA-256 of the trained weights — equal digests mean the two trees trained the same model bit for bit,
so the memory and time differences are the implementation's alone.

    git worktree add /tmp/base <commit before the change>
    python -m bench.qat_memory --base /tmp/base      # -> bench/results/qat_memory.{json,md}
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.imagenet import QAT_METHODS, RESULTS, WEIGHTS, run_qat_cell
from bench.imageset import DEFAULT_OUT, SHARED, generate
from bench.machine import cpu_name_and_flags
from bench.recon_speed import git_head
from vitquant.cli import fail
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]


def markdown(res: dict) -> str:
    lines = ["# QAT memory and time: ViT-T (ImageNet, timm `vit_tiny_patch16_224`) at 224 px, W4A4, 1 thread", "",
             f"CPU: {res['cpu']}. Baseline `{res['base']}`, this tree `{res['head']}`, run one after the other "
             f"in one invocation. {res['epochs']} epoch of 16 images × 4 crops per step, seed {res['seed']}.", "",
             "| method | tree | steps | peak RSS MB | train CPU s | agree_top1 % | KL | weights SHA-256 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['tree']} | {r['steps']} | {r['peak_rss_mb']} | "
                     f"{r['train_cpu_seconds']:.0f} | {r['agree_top1']:.2f} | {r['kl']:.4f} | "
                     f"`{r['weights_sha256'][:12]}` |")
    lines += ["", "| method | peak RSS this ÷ base | train CPU this ÷ base | same weights |", "|---|---|---|---|"]
    for method, ratio in res["ratios"].items():
        lines.append(f"| {method} | {ratio['peak_rss']:.2f} | {ratio['train_cpu']:.2f} | {ratio['same_weights']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="a worktree of the baseline commit")
    ap.add_argument("--methods", nargs="+", default=list(QAT_METHODS), choices=QAT_METHODS)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-eval-images", type=int, default=None, help="evenly spaced subset of the eval part")
    ap.add_argument("--imageset", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.base / "train.py").is_file():
        fail(f"--base {args.base} holds no train.py; pass a worktree of the baseline commit "
             "(git worktree add <dir> <commit>)")
    if not WEIGHTS.is_file():
        fail(f"{WEIGHTS} not found; set VITQUANT_SHARED to the folder holding models/")
    generate(SHARED / "data" / "coco128", args.imageset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for name, tree in (("base", args.base.resolve()), ("this", REPO)):
                row = run_qat_cell(method, args.seed, args.imageset, args.epochs, Path(tmp),
                                   max_eval=args.max_eval_images, tree=tree)
                rows.append({**row, "tree": name})
                print(f"{method} {name}: peak {row['peak_rss_mb']} MB, {row['train_cpu_seconds']:.0f} CPU s, "
                      f"agree {row['agree_top1']:.2f} %", flush=True)
    ratios = {}
    for method in args.methods:
        base, this = (next(r for r in rows if r["method"] == method and r["tree"] == t) for t in ("base", "this"))
        ratios[method] = {"peak_rss": this["peak_rss_mb"] / base["peak_rss_mb"],
                          "train_cpu": this["train_cpu_seconds"] / base["train_cpu_seconds"],
                          "same_weights": this["weights_sha256"] == base["weights_sha256"]}
    res = {"cpu": cpu_name_and_flags()[0], "base": git_head(args.base), "head": git_head(REPO),
           "epochs": args.epochs, "seed": args.seed, "rows": rows, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "qat_memory.json", res)
    text = markdown(res)
    write_text(args.out / "qat_memory.md", text)
    print(text)
    return res


if __name__ == "__main__":
    main()
