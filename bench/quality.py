"""Quality benchmark: methods × bit-widths × policies × seeds on the CIFAR-10 reference ViT and Swin.

Each cell is one ``calibrate.py`` process (its peak memory is its own). The float model is
evaluated once per model in the same run (method ``fp``), which gives the FP top-1 and the FP
evaluation time that the fake-quant evaluation time is divided by. Rows go to
``bench/results/quality.json`` (the ``metrics.json`` keys + ``variant`` and ``budget``), keyed so
re-running a subset replaces only its rows; ``quality.md`` aggregates seeds as mean ± std.
Results are written after every cell.

    python -m bench.quality                                  # everything in bench/plan.py
    python -m bench.quality --entries isvit repqvit --bits 4 --models vit_cifar
    python -m bench.quality --full                           # official budgets (GPU)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock

from bench.plan import ENTRIES, Entry
from bench.references import REFERENCES, cifar_root, reference_checkpoint
from bench.table import write_table
from vitquant.cli import fail
from vitquant.io.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ROW_KEY = ("model", "variant", "policy", "w_bits", "a_bits", "seed", "budget")


def run_cell(model: str, method: str, bits: int, seed: int, policy: str, overrides: list[str], work: Path,
             eval_fp: bool = False) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, str(REPO / "calibrate.py"), f"method={method}", f"model={model}", "data=cifar10",
           f"data.root={cifar_root()}", f"model.checkpoint={reference_checkpoint(model)}", f"bits={bits}",
           f"seed={seed}", f"policy={policy}", f"eval_fp={str(eval_fp).lower()}", f"hydra.run.dir={out}",
           "task.num_workers=0", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def merge_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    rows = json.loads(path.read_text()) if path.exists() else []
    fresh = {tuple(r.get(k) for k in ROW_KEY) for r in new_rows}
    return [r for r in rows if tuple(r.get(k) for k in ROW_KEY) not in fresh] + new_rows


def cells(entries: list[Entry], models: list[str], bits_filter: list[int] | None, seeds: list[int] | None):
    """(model, entry, bits, policy, seed), the lowest bits first (where methods differ most)."""
    out = []
    for entry in entries:
        for bits in entry.bits:
            if bits_filter and bits not in bits_filter:
                continue
            for policy in entry.policies:
                for seed in seeds or entry.seeds(bits):
                    for model in models:
                        out.append((model, entry, bits, policy, seed))
    return sorted(out, key=lambda c: (c[2], c[0]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(REFERENCES))
    ap.add_argument("--entries", nargs="+", default=None, help="entries (methods) of bench/plan.py; default all")
    ap.add_argument("--bits", nargs="+", type=int, default=None, help="default: each entry's own list")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: each entry's own seeds")
    ap.add_argument("--full", action="store_true", help="official budgets instead of the reduced CPU budget")
    ap.add_argument("--jobs", type=int, default=1, help="cells run in parallel (one torch thread each)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    by_name = {e.name: e for e in ENTRIES}
    unknown = sorted(set(args.entries or []) - set(by_name))
    if unknown:
        fail(f"unknown benchmark entries {unknown}; pass --entries from: {', '.join(by_name)}")
    entries = [by_name[n] for n in args.entries] if args.entries else ENTRIES
    models = [m for m in args.models if reference_checkpoint(m) is not None and cifar_root().is_dir()]
    for m in sorted(set(args.models) - set(models)):
        print(f"skip {m}: reference checkpoint or CIFAR-10 missing (run `make reference`)")
    json_path, lock, rows = args.out / "quality.json", Lock(), []

    with tempfile.TemporaryDirectory() as tmp:
        fp = {m: run_cell(m, "fp", 8, 0, "default", [], Path(tmp), eval_fp=True) for m in models}

        def one(cell) -> None:
            model, entry, bits, policy, seed = cell
            row = run_cell(model, entry.method, bits, seed, policy, list(entry.full if args.full else entry.cpu),
                           Path(tmp))
            row.update(variant=entry.name, budget="official" if args.full or not entry.cpu else entry.budget,
                       fp_top1=fp[model]["top1"], fp_top5=fp[model]["top5"],
                       fp_eval_seconds=fp[model]["fp_eval_seconds"])
            with lock:
                rows.append(row)
                write_json(json_path, merge_rows(json_path, rows))
                write_table(json.loads(json_path.read_text()), args.out / "quality.md")
                print(f"{model:10s} {entry.name:24s} {policy:7s} W{bits}A{bits} s{seed}: top-1 {row['top1']:.2f} "
                      f"(FP {row['fp_top1']:.2f}) calib {row['calib_seconds']:.1f}s", flush=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, cells(entries, models, args.bits, args.seeds)))
    print((args.out / "quality.md").read_text())


if __name__ == "__main__":
    main()
