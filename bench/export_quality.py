"""Integer-export quality: top-1 of ONNX Runtime next to the fake-quant model, CIFAR-10 reference ViT and Swin.

Each cell calibrates with ``calibrate.py`` (``bench.quality.run_cell``), exports with ``export.py`` (which also
evaluates the ONNX graph and the fake-quant model on the same images) and keeps the export's ``metrics.json``.
Writes ``bench/results/export_quality.{json,md}``.

    python -m bench.export_quality                       # every cell, 2000 evenly spaced test images
    python -m bench.export_quality --models swin_cifar --images 10000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.quality import RESULTS, run_cell
from bench.references import cifar_root
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
CELLS = (  # (label, method, bits, extra overrides)
    ("percentile", "percentile", 8, []),
    ("percentile", "percentile", 4, []),
    ("repqvit (rounded zero points at calibration)", "repqvit", 4, ["method.stages.1.round_zero_point=true"]),
    ("repqvit (official fractional zero points)", "repqvit", 8, []),
)


def export_cell(checkpoint: Path, images: int, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, str(REPO / "export.py"), f"checkpoint={checkpoint}", f"data.root={cifar_root()}",
           f"task.max_eval_images={images}", "task.num_workers=0", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def table(rows: list[dict]) -> str:
    lines = ["| model | method | W/A | top-1 ONNX Runtime | top-1 fake-quant | deployable | integer sites | "
             "float site kinds | rounded zero points |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floats = ", ".join(r["float_site_kinds"]) or "—"
        lines.append(f"| {r['model']} | {r['label']} | W{r['w_bits']}A{r['a_bits']} | {r['top1_onnx']:.2f} | "
                     f"{r['top1_fakequant']:.2f} | {'✓' if r['deployable'] else '✗'} | {r['integer_sites']} | "
                     f"{floats} | {r.get('rounded_zero_points', 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_cifar", "swin_cifar"])
    parser.add_argument("--images", type=int, default=2000, help="evenly spaced CIFAR-10 test images")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models:
            for label, method, bits, overrides in CELLS:
                calib = run_cell(model, method, bits, 0, "default",
                                 [f"task.max_eval_images={args.images}", *overrides], work)
                runs = sorted(work.glob("*/quantized.pt"), key=lambda p: p.stat().st_mtime)
                exported = export_cell(runs[-1], args.images, work)
                rows.append({**exported, "label": label, "calibrate_top1": calib["top1"],
                             "n_eval_images": args.images})
                write_json(RESULTS / "export_quality.json", rows)
                print(table(rows).splitlines()[-1], flush=True)
    title = (f"# Integer export (ONNX Runtime) vs fake quant: CIFAR-10 reference models, {args.images} evenly "
             "spaced test images, seed 0, `default` policy\n\n")
    write_text(RESULTS / "export_quality.md", title + table(rows) + "\n")


if __name__ == "__main__":
    main()
