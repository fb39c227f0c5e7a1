"""Quality benchmark: every method × bit-width × seed on the CIFAR-10 reference ViT and Swin.

Each cell is one ``calibrate.py`` process (so peak memory is that run's own), its
``metrics.json`` becomes a row of ``bench/results/quality.json``; rows are keyed by model,
method, policy, bits, seed and budget, so re-running a subset replaces only those rows.
``bench/results/quality.md`` aggregates seeds as mean ± std.

    python -m bench.quality                              # default grid, reduced CPU budget
    python -m bench.quality --methods isvit --bits 4 --seeds 0 1 2
    python -m bench.quality --full                       # official budgets (GPU)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.references import REFERENCES, cifar_root, reference_checkpoint
from bench.table import write_table
from vitquant.io.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ROW_KEY = ("model", "method", "policy", "w_bits", "a_bits", "seed", "budget")

# Method -> (bits to run, extra overrides). Reconstruction methods get a reduced CPU budget
# (stated in the table) unless --full; every method listed runs at the same budget.
METHODS: dict[str, dict] = {
    "minmax": {"bits": [8, 6, 4, 3]},
    "percentile": {"bits": [8, 6, 4, 3]},
}


def run_cell(model: str, method: str, bits: int, seed: int, overrides: list[str], eval_images: int | None,
             work: Path) -> dict:
    out = work / f"{model}_{method}_w{bits}_s{seed}"
    cmd = [sys.executable, str(REPO / "calibrate.py"), f"method={method}", f"model={model}", "data=cifar10",
           f"data.root={cifar_root()}", f"model.checkpoint={reference_checkpoint(model)}", f"bits={bits}",
           f"seed={seed}", f"hydra.run.dir={out}", *overrides]
    if eval_images:
        cmd.append(f"task.max_eval_images={eval_images}")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def merge_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    rows = json.loads(path.read_text()) if path.exists() else []
    fresh = {tuple(r.get(k) for k in ROW_KEY) for r in new_rows}
    return [r for r in rows if tuple(r.get(k) for k in ROW_KEY) not in fresh] + new_rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(REFERENCES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--bits", nargs="+", type=int, default=None, help="default: each method's own list")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--full", action="store_true", help="official budgets instead of the reduced CPU budget")
    ap.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N test images")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: no benchmark entry for methods {unknown}; known: {', '.join(METHODS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            if reference_checkpoint(model) is None or not cifar_root().is_dir():
                print(f"skip {model}: reference checkpoint or CIFAR-10 missing (run `make reference`)")
                continue
            for method in args.methods:
                spec = METHODS[method]
                budget = "official" if args.full else spec.get("budget", "-")
                overrides = spec.get("full" if args.full else "cpu", [])
                for bits in args.bits or spec["bits"]:
                    for seed in args.seeds:
                        row = run_cell(model, method, bits, seed, overrides, args.eval_images, Path(tmp))
                        row.update(budget=budget)
                        rows.append(row)
                        print(f"{model:11s} {method:11s} W{bits}A{bits} seed {seed}: top-1 {row['top1']:.2f} "
                              f"(FP {row['fp_top1']:.2f}) calib {row['calib_seconds']:.1f}s", flush=True)
    json_path = args.out / "quality.json"
    all_rows = merge_rows(json_path, rows)
    write_json(json_path, all_rows)
    print(write_table(all_rows, args.out / "quality.md"))


if __name__ == "__main__":
    main()
