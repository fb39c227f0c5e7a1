"""PTQ benchmark on a real ImageNet ViT (ViT-Ti/16 AugReg, ``model=vit_tiny_in1k``), label-free.

There are no ImageNet images here, so quality is fidelity to the float model on natural images: COCO128's
objects cut out by their boxes (``data=coco128_objects``, built by :mod:`bench.imageset` when missing),
calibration on ``calib/`` and evaluation on ``eval/`` (disjoint photos). Each cell is one ``calibrate.py``
process; its row holds the ``metrics.json`` keys: ``agree_top1`` (top-1 agreement with the float model, %),
``kl`` (mean KL(FP ‖ quantized), nats), ``logit_sqnr_db`` and ``calib_cpu_seconds`` (the child's own CPU
time of calibration, one torch thread).

QAT by distillation only (``--qat``: ``lsq`` and ``vvtq`` at W4A4, their own recipes, trained on the calibration
part for ``--qat-epochs`` short epoch with the float model as teacher; no labels are used anywhere) gives rows
of ``kind`` ``qat`` with the trained model's fidelity and ``init_agree_top1`` (after the LSQ initialisation).

The grid (``CELLS``): every PTQ method at W4A4 and W6A6 (each under its own policy: fqvit and tsptq are fully
quantized), W3A3 for repqvit, qdrop, isvit and aiqvit, and the fully quantized policy (``full``) at W8A8,
W6A6 and W4A4 for fqvit, ptq4vit and tsptq (W6A6 so that TSPTQ-ViT's claim over PTQ4ViT is checked at both of
the claims' bit-widths); seeds 0, 1, 2 (the calibration draw is random for every method).
``n_calib`` is capped at the calibration part's size; the reconstruction methods run at the reduced CPU
budget of ``bench/plan.py`` (200 iterations per block and stage) unless ``--full``. Nothing is tuned to this
model: every method runs with its own config.

Cells are resumable: a cell whose row is already in ``bench/results/imagenet.json`` is skipped, so the slow
cells can be run later (``--methods isvit aiqvit``) and rows accumulate. ``imagenet.md`` is rewritten after
each cell, with the papers' orderings (W4A4, W6A6) checked against whatever rows exist.

    python -m bench.imagenet                                  # every cell not yet in the JSON
    python -m bench.imagenet --methods minmax percentile --bits 4 --seeds 0
    python -m bench.imagenet --qat --seeds 0 1 2              # lsq vs vvtq by distillation, W4A4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.imageset import DEFAULT_OUT, SHARED, generate
from bench.machine import cpu_name_and_flags
from bench.plan import CPU_RECON
from vitquant.cli import fail
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "vit_tiny_in1k"
WEIGHTS = SHARED / "models" / "vit_tiny_augreg_in1k.safetensors"
ROW_KEY = ("method", "policy", "w_bits", "a_bits", "seed", "budget")
SEEDS = (0, 1, 2)
RECONSTRUCTION = ("qdrop", "isvit", "aiqvit")
METHODS = ("minmax", "percentile", "mse", "repqvit", "ptq4vit", "fqvit", "tsptq", "qdrop", "isvit", "aiqvit")
QAT_METHODS = ("lsq", "vvtq")
QAT_POLICY = "keep_ends_8bit"  # train.yaml's policy (QAT papers keep patch-embed and classifier at 8 bits)
QAT_BATCH = 16  # images per step: 7 steps per epoch on the 112 calibration images
OWN_POLICY = {"fqvit": "full", "tsptq": "full"}  # their configs switch to the fully quantized policy


@dataclass(frozen=True)
class Cell:
    method: str
    bits: int
    policy: str
    seed: int


def grid(methods: list[str], bits: list[int] | None, seeds: list[int]) -> list[Cell]:
    """The benchmark's cells (see the module docstring), cheapest methods and highest bits first."""
    out: list[Cell] = []
    for method in methods:
        plan = [(b, OWN_POLICY.get(method, "default")) for b in (6, 4)]
        if method in ("repqvit", *RECONSTRUCTION):
            plan.append((3, "default"))
        if method in ("fqvit", "ptq4vit", "tsptq"):
            plan += [(b, "full") for b in (8, 6, 4)]
        out += [Cell(method, b, p, s) for b, p in dict.fromkeys(plan) if not bits or b in bits for s in seeds]
    return out


def budget(method: str, full: bool, recon_iters: int | None = None) -> str:
    """``official`` (the method's config), ``cpu`` (bench/plan.py's 200 iterations) or ``cpu<N>it`` (fewer)."""
    if method not in RECONSTRUCTION or full:
        return "official"
    return "cpu" if recon_iters is None else f"cpu{recon_iters}it"


def recon_overrides(method: str, full: bool, recon_iters: int | None) -> list[str]:
    """The reconstruction budget's overrides (the calibration images are capped separately)."""
    if budget(method, full) != "cpu":
        return []
    its = [] if recon_iters is None else [f"method.iters={recon_iters}"]
    kept = [o for o in CPU_RECON if not o.startswith("method.n_calib")]
    return [o for o in kept if not (its and o.startswith("method.iters"))] + its


def key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


# Runs argv[2:] and writes its ru_maxrss (kB) to argv[1]. A child's ru_maxrss includes the memory of the
# process it was forked from, so the measured command is started from this small interpreter, not the bench.
PEAK_WRAPPER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
                "_, status, usage = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
                "sys.exit(os.waitstatus_to_exitcode(status))")


def run_child(cmd: list[str], cwd: Path) -> float:
    """Run ``cmd`` (one thread, W&B off); return its own peak RSS in MB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak_kb"
        proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak), *cmd], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return int(peak.read_text()) / 1024


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a ``quantized.pt``'s state (equal digests: the same model, bit for bit)."""
    from vitquant.io.quantized_checkpoint import read_quantized
    from vitquant.qat.distributed import state_digest
    return state_digest(read_quantized(path)[1])


def run_cell(cell: Cell, imageset: Path, n_calib: int, full: bool, work: Path, max_eval: int | None = None,
             recon_iters: int | None = None, tree: Path = REPO, out: Path | None = None) -> dict:
    """One ``calibrate.py`` process of ``tree`` (run folder ``out``, default a new one in ``work``); its
    ``metrics.json`` plus the cell's bookkeeping, its peak RSS and the digest of the quantized model."""
    from hydra import compose, initialize_config_dir

    from vitquant.cli import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        own = compose("calibrate", overrides=[f"method={cell.method}"]).method.n_calib
    recon = recon_overrides(cell.method, full, recon_iters)
    out = out or Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, str(tree / "calibrate.py"), f"method={cell.method}", f"model={MODEL}",
           f"model.checkpoint={WEIGHTS}", "data=coco128_objects", f"data.root={imageset}", f"bits={cell.bits}",
           f"seed={cell.seed}", f"policy={cell.policy}", f"method.n_calib={min(own, n_calib)}", "eval_fp=true",
           "task.num_workers=0", "task.batch_size=50", "logger=none", f"hydra.run.dir={out}", *recon,
           *([f"task.max_eval_images={max_eval}"] if max_eval else [])]
    peak = run_child(cmd, tree)
    row = json.loads((out / "metrics.json").read_text())
    row.update(budget=budget(cell.method, full, recon_iters), method_n_calib=own, cpu=cpu_name_and_flags()[0],
               peak_rss_mb=round(peak), state_sha256=checkpoint_digest(out / "quantized.pt"))
    return row


def run_qat_cell(method: str, seed: int, imageset: Path, epochs: int, work: Path,
                 max_eval: int | None = None, tree: Path = REPO, init: Path | None = None) -> dict:
    """One ``train.py`` process of ``tree`` at W4A4 on the calibration part (distillation from the float
    model), from scratch or from the PTQ result ``init``; its metrics, peak RSS and the digest of the
    trained weights."""
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, str(tree / "train.py"), f"qat={method}", f"model={MODEL}", f"model.checkpoint={WEIGHTS}",
           "data=coco128_objects", f"data.root={imageset}", "bits=4", f"seed={seed}", f"qat.epochs={epochs}",
           f"qat.batch_size={QAT_BATCH}", "qat.num_workers=0", "task.num_workers=0", "task.batch_size=50",
           "teacher=float", "logger=none", f"hydra.run.dir={out}", *([f"init={init}"] if init else []),
           *([f"task.max_eval_images={max_eval}"] if max_eval else [])]
    peak = run_child(cmd, tree)
    m = json.loads((out / "metrics.json").read_text())
    keep = ("method", "policy", "w_bits", "a_bits", "seed", "agree_top1", "kl", "logit_sqnr_db", "init_agree_top1",
            "train_cpu_seconds", "steps", "epochs")
    return {**{k: m[k] for k in keep}, "kind": "qat", "budget": f"{epochs} epoch",
            "n_eval_images": m.get("n_eval_images") or max_eval, "peak_rss_mb": round(peak),
            "state_sha256": checkpoint_digest(out / "quantized.pt"), "cpu": cpu_name_and_flags()[0]}


def qat_markdown(rows: list[dict]) -> list[str]:
    """The QAT-by-distillation table (rows of kind ``qat``), mean ± std over seeds."""
    qat = [r for r in rows if r.get("kind") == "qat"]
    if not qat:
        return []
    lines = ["## QAT by distillation only (W4A4, float teacher, trained on the calibration part)", "",
             "| method | policy | budget | steps | seeds | agree_top1 % after init | agree_top1 % | KL | SQNR dB "
             "| train CPU s |", "|" + "---|" * 10]
    by: dict[tuple, list[dict]] = {}
    for r in qat:
        by.setdefault((r["method"], r["policy"], r["budget"]), []).append(r)
    for (method, policy, bud), g in sorted(by.items()):
        lines.append(f"| {method} | {policy} | {bud} | {g[0]['steps']} | {len(g)} "
                     f"| {mean_std([r['init_agree_top1'] for r in g], 1)} "
                     f"| {mean_std([r['agree_top1'] for r in g], 1)} "
                     f"| {mean_std([r['kl'] for r in g], 3)} | {mean_std([r['logit_sqnr_db'] for r in g], 1)} "
                     f"| {mean_std([r['train_cpu_seconds'] for r in g], 0)} |")
    return ["", *lines, ""]


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind") != "qat":
            out.setdefault((r["policy"], r["method"], r["w_bits"], r["a_bits"], r["budget"]), []).append(r)
    return out


def budget_rank(name: str) -> float:
    """Order of budgets, smallest first: ``cpu<N>it`` by N, then ``cpu`` (200 iterations), then ``official``."""
    if name == "official":
        return math.inf
    return 200.0 if name == "cpu" else float(name.removeprefix("cpu").removesuffix("it"))


def agree_values(rows: list[dict], method: str, bits: int, policy: str) -> list[float]:
    """agree_top1 of every seed of one cell, at the largest budget it was run with (rows of a ``--full`` or
    ``cpu`` run then replace the ``cpu50it`` ones in the claims instead of being averaged with them)."""
    cell = [r for r in rows if (r["method"], r["w_bits"], r["policy"]) == (method, bits, policy)]
    best = max((budget_rank(r["budget"]) for r in cell), default=None)
    return [r["agree_top1"] for r in cell if budget_rank(r["budget"]) == best]


# The papers' orderings (ImageNet top-1, reported at W4A4 and W6A6), checked here on agree_top1:
# (left, relation, right, policy).
CLAIMS = [("isvit", ">", "repqvit", "default"), ("repqvit", ">", "ptq4vit", "default"),
          ("ptq4vit", ">", "percentile", "default"), ("aiqvit", ">=", "isvit", "default"),
          ("tsptq", ">=", "ptq4vit", "full")]
CLAIM_BITS = (4, 6)
COLLAPSED = 5.0  # % agreement: when both sides are below it, the model has collapsed and an ordering says nothing


def spread(values: list[float]) -> float:
    """Sample std of the seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(a: list[float], rel: str, b: list[float]) -> tuple[str, str]:
    """(``a vs b``, holds?) for one claim at one bit-width, from the seeds' agree_top1 of each side.

    The difference of the means d = ā − b̄ is weighed against the seeds' spread s = √(s_a² + s_b²) (sample
    stds; 0 for a single seed): ``>`` holds when d > s, fails when d < −s and is a tie in between (these seeds
    cannot order the two); ``>=`` holds when d ≥ −max(1, s), i.e. equal within a point or within the spread.
    """
    if not a or not b:
        return "not measured yet", "—"
    text = f"{mean_std(a, 1)} vs {mean_std(b, 1)}"
    mean_a, mean_b = statistics.mean(a), statistics.mean(b)
    if mean_a < COLLAPSED and mean_b < COLLAPSED:
        return text, f"no signal (both < {COLLAPSED:g} %)"
    d, s = mean_a - mean_b, math.hypot(spread(a), spread(b))
    if rel == ">=":
        return text, "yes" if d >= -max(1.0, s) else "no"
    return text, "yes" if d > s else "no" if d < -s else "tie (within the seed spread)"


def claims_markdown(rows: list[dict]) -> list[str]:
    head = " | ".join(f"W{b}A{b} here (agree_top1, mean ± std over seeds) | holds?" for b in CLAIM_BITS)
    lines = [f"| claim (papers, ImageNet top-1) | {head} |", "|---|" + "---|---|" * len(CLAIM_BITS)]
    for left, rel, right, policy in CLAIMS:
        cells = [" | ".join(verdict(agree_values(rows, left, b, policy), rel, agree_values(rows, right, b, policy)))
                 for b in CLAIM_BITS]
        lines.append(f"| {left} {rel} {right} ({policy}) | {' | '.join(cells)} |")
    lines += ["", f"`>` holds when the difference of the means exceeds the seeds' spread √(s_a² + s_b²) and is a tie "
              f"within it; `>=` allows a point or the spread; no signal when both sides are below {COLLAPSED:g} %.",
              "", "| claim (papers) | here | holds? |", "|---|---|---|"]
    for method in ("fqvit", "ptq4vit", "tsptq"):
        values = agree_values(rows, method, 8, "full")
        a = statistics.mean(values) if values else None
        text = "not measured yet" if a is None else f"{mean_std(values, 1)} % agreement"
        lines.append(f"| {method} full W8A8 within ~1 point of FP | {text} | "
                     f"{'—' if a is None else 'yes' if a >= 99.0 else 'no'} |")
    return lines


def write_markdown(rows: list[dict], path: Path) -> str:
    n_eval = sorted({r["n_eval_images"] for r in rows if r.get("kind") != "qat"})
    lines = ["# PTQ on a real ImageNet ViT (ViT-Ti/16 AugReg in21k→in1k), label-free", "",
             f"Evaluation: {', '.join(map(str, n_eval))} COCO128 object crops (`data=coco128_objects`, eval part); "
             "calibration on the disjoint calib part. `agree_top1`: % of images where the quantized model predicts "
             "the float model's class; `KL`: mean KL(FP ‖ quantized) of the softmax (nats); `SQNR`: logit SQNR (dB); "
             "`calib CPU s`: the calibration's own CPU seconds (one thread). Mean ± std over seeds. "
             "Budget `cpu`: 200 iterations per block and stage (bench/plan.py); `cpu<N>it`: N iterations (a smaller "
             "CPU budget); `official`: the method's config.", "",
             "| policy | method | W/A | budget | n_calib | seeds | agree_top1 % | KL | SQNR dB | calib CPU s |",
             "|" + "---|" * 10]
    for (policy, method, w, a, bud), g in sorted(groups(rows).items(), key=lambda kv: (kv[0][0], -kv[0][2],
                                                                                          METHODS.index(kv[0][1]))):
        lines.append(f"| {policy} | {method} | W{w}A{a} | {bud} | {g[0]['n_calib']} | {len(g)} "
                     f"| {mean_std([r['agree_top1'] for r in g], 1)} | {mean_std([r['kl'] for r in g], 3)} "
                     f"| {mean_std([r['logit_sqnr_db'] for r in g], 1)} "
                     f"| {mean_std([r['calib_cpu_seconds'] for r in g], 0)} |")
    cpus = Counter(r.get("cpu", "not recorded") for r in rows)
    lines += ["", "Rows per CPU (same-seed results move by a few images between CPUs): "
              + "; ".join(f"{name}: {n}" for name, n in sorted(cpus.items())) + "."]
    lines += ["", "## The papers' orderings on this model", "", *claims_markdown(rows), *qat_markdown(rows)]
    text = "\n".join(lines)
    write_text(path, text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--bits", nargs="+", type=int, default=None, help="only these bits (default: the grid's)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--full", action="store_true", help="official reconstruction budgets (GPU)")
    ap.add_argument("--recon-iters", type=int, default=None,
                    help="fewer reconstruction iterations than the cpu budget's 200 (rows labelled cpu<N>it)")
    ap.add_argument("--recon-images", type=int, default=None,
                    help="at most this many calibration images for the reconstruction methods")
    ap.add_argument("--qat", action="store_true", help="the QAT-by-distillation cells (lsq, vvtq) instead of PTQ")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--max-eval-images", type=int, default=None, help="evenly spaced subset of the eval part")
    ap.add_argument("--imageset", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not WEIGHTS.is_file():
        fail(f"{WEIGHTS} not found; set VITQUANT_SHARED to the folder holding models/")
    manifest = generate(SHARED / "data" / "coco128", args.imageset)
    n_calib = manifest["images"]["calib"]
    json_path = args.out / "imagenet.json"
    rows = json.loads(json_path.read_text()) if json_path.exists() else []
    done = {key(r) for r in rows}
    jobs = []  # (row key, label, run(work folder) -> row)
    if args.qat:
        for method in QAT_METHODS:
            for seed in args.seeds:
                jobs.append(((method, QAT_POLICY, 4, 4, seed, f"{args.qat_epochs} epoch"), f"{method} W4A4 s{seed}",
                             partial(run_qat_cell, method, seed, args.imageset, args.qat_epochs,
                                     max_eval=args.max_eval_images)))
    else:
        for c in grid(args.methods, args.bits, args.seeds):
            cap = args.recon_images if args.recon_images and c.method in RECONSTRUCTION else n_calib
            jobs.append(((c.method, c.policy, c.bits, c.bits, c.seed, budget(c.method, args.full, args.recon_iters)),
                         f"{c.method} {c.policy} W{c.bits}A{c.bits} s{c.seed}",
                         partial(run_cell, c, args.imageset, min(cap, n_calib), args.full,
                                 max_eval=args.max_eval_images, recon_iters=args.recon_iters)))
    todo = [job for job in jobs if job[0] not in done]
    print(f"{len(todo)} cells to run ({len(done)} rows already in {json_path})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for _, label, run in todo:
            try:
                row = run(work=Path(tmp))
            except RuntimeError as e:
                print(f"FAILED {label}: {str(e)[-600:]}", flush=True)
                continue
            rows.append(row)
            write_json(json_path, sorted(rows, key=key))
            write_markdown(rows, args.out / "imagenet.md")
            cpu = row.get("calib_cpu_seconds", row.get("train_cpu_seconds"))
            print(f"{label}: agree {row['agree_top1']:.1f}% KL {row['kl']:.3f} SQNR {row['logit_sqnr_db']:.1f} dB, "
                  f"{cpu:.0f} CPU s", flush=True)
    if rows:
        print(write_markdown(rows, args.out / "imagenet.md"))


if __name__ == "__main__":
    main()
