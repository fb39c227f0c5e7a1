"""Memory and time of quantizer-heavy runs on the real ImageNet ViT-T: this tree against a baseline tree.

Four kinds of runs spend most of their time and memory in the quantizers rather than the model: QAT
(LSQ steps), QAT from a PTQ result (the uniform quantizers' steps made learnable), QDrop's block
reconstruction (learned activation steps, random dropping) and PTQ4ViT's Hessian-guided search (every
candidate scale fake-quantizes the layer's inputs). Each cell below runs once from ``--base``'s tree
and once from this one, in the same invocation, with the same seed, one child process at a time (its
peak RSS is its own):

* ``lsq``, ``vvtq``: ``bench.imagenet``'s QAT by distillation (``train.py qat=<method>`` at W4A4 on the
  COCO128 objects' calibration part, 16 images × 4 crops of 224 px per step, float teacher, one epoch);
* ``ptq_init``: the same QAT (``qat=lsq``) from a ``percentile`` W4A4 result of the same tree
  (``train.py init=<quantized.pt>``; only the training run is measured);
* ``qdrop``: ``bench.imagenet``'s QDrop W4A4 cell at its ``cpu50it`` budget (64 images, 50 iterations
  per block);
* ``ptq4vit``: ``bench.imagenet``'s PTQ4ViT W4A4 cell (its own budget: 32 images).

Reported: peak RSS, training or calibration CPU seconds, ``agree_top1``/KL, and the SHA-256 of the
resulting model's state. Equal digests mean both trees produced the same model bit for bit, so the
memory and time differences are the implementation's alone. Results accumulate per cell in the JSON:
``--cells`` reruns only those (both trees), each row records the commits it compared.

    git worktree add /tmp/base <commit before the change>
    python -m bench.train_memory --base /tmp/base      # -> bench/results/train_memory.{json,md}
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.imagenet import QAT_METHODS, RESULTS, WEIGHTS, Cell, run_cell, run_qat_cell
from bench.imageset import DEFAULT_OUT, SHARED, generate
from bench.machine import cpu_name_and_flags
from bench.recon_speed import git_head
from vitquant.cli import fail
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
CELLS = (*QAT_METHODS, "ptq_init", "qdrop", "ptq4vit")
QDROP_IMAGES, QDROP_ITERS = 64, 50  # bench.imagenet's cpu50it budget


def run(cell: str, tree: Path, args: argparse.Namespace, work: Path, n_calib: int) -> dict:
    """One cell from ``tree``: its row with ``cpu_s`` (training or calibration CPU seconds)."""
    if cell in (*QAT_METHODS, "ptq_init"):
        init = None
        if cell == "ptq_init":
            ptq = Path(tempfile.mkdtemp(dir=work))
            run_cell(Cell("percentile", 4, "default", args.seed), args.imageset, n_calib, False, work,
                     max_eval=args.max_eval_images, tree=tree, out=ptq)
            init = ptq / "quantized.pt"
        row = run_qat_cell("lsq" if init else cell, args.seed, args.imageset, args.epochs, work,
                           max_eval=args.max_eval_images, tree=tree, init=init)
        what = f"QAT W4A4{' from percentile (init=)' if init else ''}, {args.epochs} epoch ({row['steps']} steps)"
        return {**row, "cpu_s": row["train_cpu_seconds"], "what": what}
    budget = {"recon_iters": QDROP_ITERS} if cell == "qdrop" else {}
    row = run_cell(Cell(cell, 4, "default", args.seed), args.imageset, QDROP_IMAGES if budget else n_calib, False,
                   work, max_eval=args.max_eval_images, tree=tree, **budget)
    return {**row, "cpu_s": row["calib_cpu_seconds"], "what": f"PTQ W4A4, {row['budget']}, {row['n_calib']} images"}


def markdown(res: dict) -> str:
    lines = ["# Quantizer-heavy runs: memory and time on ViT-T (ImageNet, timm `vit_tiny_patch16_224`) at 224 px, "
             "1 thread", "",
             f"CPU: {res['cpu']}. Each cell ran from both trees in one invocation, one child process at a time, "
             "same seed. CPU s: training (QAT) or calibration (PTQ) CPU seconds.", "",
             "| cell | run | tree | commit | peak RSS MB | CPU s | agree_top1 % | KL | state SHA-256 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['cell']} | {r['what']} | {r['tree']} | `{r['commit']}` | {r['peak_rss_mb']} | "
                     f"{r['cpu_s']:.0f} | {r['agree_top1']:.2f} | {r['kl']:.4f} | `{r['state_sha256'][:12]}` |")
    lines += ["", "| cell | peak RSS this ÷ base | CPU s this ÷ base | same model |", "|---|---|---|---|"]
    for cell, ratio in res["ratios"].items():
        lines.append(f"| {cell} | {ratio['peak_rss']:.2f} | {ratio['cpu']:.2f} | {ratio['same_state']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="a worktree of the baseline commit")
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    ap.add_argument("--epochs", type=int, default=1, help="QAT epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-eval-images", type=int, default=None, help="evenly spaced subset of the eval part")
    ap.add_argument("--imageset", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.epochs < 1:
        fail(f"--epochs {args.epochs}: QAT needs at least one epoch; pass --epochs 1 or more")
    if not (args.base / "train.py").is_file():
        fail(f"--base {args.base} holds no train.py; pass a worktree of the baseline commit "
             "(git worktree add <dir> <commit>)")
    if not WEIGHTS.is_file():
        fail(f"{WEIGHTS} not found; set VITQUANT_SHARED to the folder holding models/")
    n_calib = generate(SHARED / "data" / "coco128", args.imageset)["images"]["calib"]
    json_path = args.out / "train_memory.json"
    kept = [r for r in json.loads(json_path.read_text())["rows"] if r["cell"] not in args.cells] \
        if json_path.exists() else []
    trees = {"base": args.base.resolve(), "this": REPO}
    commits = {name: git_head(tree) for name, tree in trees.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            for name, tree in trees.items():
                row = {**run(cell, tree, args, Path(tmp), n_calib), "cell": cell, "tree": name, "commit": commits[name]}
                rows.append(row)
                print(f"{cell} {name}: peak {row['peak_rss_mb']} MB, {row['cpu_s']:.0f} CPU s, "
                      f"agree {row['agree_top1']:.2f} %", flush=True)
    rows = sorted(kept + rows, key=lambda r: (CELLS.index(r["cell"]), r["tree"]))
    ratios = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        base, this = (next(r for r in rows if r["cell"] == cell and r["tree"] == t) for t in ("base", "this"))
        ratios[cell] = {"peak_rss": this["peak_rss_mb"] / base["peak_rss_mb"], "cpu": this["cpu_s"] / base["cpu_s"],
                        "same_state": this["state_sha256"] == base["state_sha256"]}
    res = {"cpu": cpu_name_and_flags()[0], "seed": args.seed, "rows": rows, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "train_memory.json", res)
    text = markdown(res)
    write_text(args.out / "train_memory.md", text)
    print(text)
    return res


if __name__ == "__main__":
    main()
