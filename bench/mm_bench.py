"""The cell loop shared by the mm benchmarks (:mod:`bench.detection`, :mod:`bench.segmentation`).

Each cell (method × bits) runs in this process through ``vitquant.pipelines.calibrate.run_calibration`` (the code
path of ``calibrate.py``) on a reference of :mod:`bench.mm_reference`, evaluated on the
``IMAGES`` images it was trained on at ``SCALE``; the FP model is evaluated once (method ``fp``).
CPU budget: ``n_calib`` calibration images and, for the reconstruction methods, ``ITERS``
iterations per unit and stage (official: 1024 images, 1000-20000 iterations). Rows go to
``bench/results/<name>.json`` and ``<name>.md`` after every cell; a re-run replaces only its own
cells (the FP row is measured once).
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import open_dict

from bench.mm_reference import compose_run
from vitquant.errors import UserError
from vitquant.io.atomic import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
RECONSTRUCTION = ("isvit", "qdrop")
ITERS = 20


@dataclass(frozen=True)
class Bench:
    """One mm benchmark: its results name, reference kind, metric keys and markdown table."""

    name: str
    reference: str  # a key of bench.mm_reference.REFERENCES
    keys: tuple[str, ...]
    table: Callable[[list[dict]], str]


def cell_config(bench: Bench, method: str, bits: int, out: Path, n_calib: int, iters: int):
    overrides = [f"method={method}", f"bits={bits}", f"method.n_calib={n_calib}", "eval_fp=false", "logger=none"]
    if method in RECONSTRUCTION:
        overrides += [f"method.iters={iters}", "method.batch_size=8"]
    cfg = compose_run(bench.reference, *overrides)
    with open_dict(cfg):
        cfg.out_dir = str(out)
    return cfg


def run(bench: Bench, methods: list[str], bits_list: list[int], n_calib: int, iters: int = ITERS) -> list[dict]:
    """Measure the cells ``methods × bits_list`` (and the FP row when missing), saving after each."""
    from vitquant.pipelines.calibrate import run_calibration

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix=f"vitquant-{bench.name}-bench-"))
    planned = [(m, b) for b in bits_list for m in methods]
    rows = [r for r in load_rows(bench) if (r["method"], r["w_bits"]) not in planned]  # a re-run replaces a cell
    for method, bits in ([] if any(r["method"] == "fp" for r in rows) else [("fp", 8)]) + planned:
        start, cpu = time.time(), time.process_time()
        try:
            metrics = run_calibration(cell_config(bench, method, bits, work / f"{method}_{bits}",
                                                  1 if method == "fp" else n_calib, iters))
            row = {"method": method, "w_bits": bits, "a_bits": bits, **{k: metrics[k] for k in bench.keys},
                   "calib_seconds": metrics["calib_seconds"], "n_calib": metrics["n_calib"]}
            if method in RECONSTRUCTION:
                row["iters"] = iters
        except UserError as e:
            row = {"method": method, "w_bits": bits, "a_bits": bits, "error": str(e)}
        row["seconds"], row["cpu_seconds"] = time.time() - start, time.process_time() - cpu
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(bench, rows)  # after every cell: a cut-short run keeps what it measured
    return rows


def method_rows(rows: list[dict], cells: Callable[[dict], str], columns: int) -> list[str]:
    """The markdown rows of every measured cell, highest bits first then by method: ``method (N it)``
    for the reconstruction methods, ``W/A``, then ``cells(row)`` (the bench's own ``columns`` metric
    columns), or the method's one-line refusal spanning them."""
    lines = []
    for r in sorted((r for r in rows if r["method"] != "fp"), key=lambda r: (-r["w_bits"], r["method"])):
        name = f"{r['method']} ({r['iters']} it)" if "iters" in r else r["method"]
        body = f"n/a: {r['error'][:60]}… " + "|" * (columns - 1) if "error" in r else cells(r)
        lines.append(f"| {name} | {r['w_bits']}/{r['a_bits']} | {body} |")
    return lines


def load_rows(bench: Bench) -> list[dict]:
    path = RESULTS / f"{bench.name}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def save(bench: Bench, rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{bench.name}.json", rows)
    write_text(RESULTS / f"{bench.name}.md", bench.table(rows))
