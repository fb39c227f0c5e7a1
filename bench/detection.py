"""Detection benchmark: each PTQ method × W8A8/W6A6/W4A4 on the COCO128 reference Mask R-CNN.

The reference detector (``model=mask_rcnn_swin_micro``, ``make reference``) is evaluated on the 32
COCO128 images it was trained on, at 256 px: the table measures the box/mask AP *drop* under
quantization of its backbone, not generalisation. Cells run in this process through
``vitquant.ptq.run_calibration`` (the code path of ``calibrate.py``); the FP model is evaluated once
(method ``fp``). CPU budget: 32 calibration images and, for the reconstruction methods, ``ITERS``
iterations per unit and stage (official: 1024 images, 1000-20000 iterations). PTQ4ViT does not
apply (its search needs classifier logits) and is listed as such. Rows: ``bench/results/detection.json``
and ``detection.md``; a re-run replaces only its own cells (the FP row is measured once).
``python -m bench.detection [--methods isvit repqvit] [--bits 4]``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bench.detection_reference import IMAGES, SCALE
from vitquant.cli import CONF_DIR
from vitquant.errors import UserError
from vitquant.io.atomic import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("percentile", "repqvit", "tsptq", "fqvit", "isvit", "qdrop", "ptq4vit")
RECONSTRUCTION = ("isvit", "qdrop")
ITERS = 20
KEYS = ("bbox_mAP", "bbox_AP50", "segm_mAP", "segm_AP50")


def cell_config(method: str, bits: int, out: Path, n_calib: int):
    overrides = ["task=instance_segmentation", "model=mask_rcnn_swin_micro", "data=coco128", f"method={method}",
                 f"bits={bits}", f"task.max_eval_images={IMAGES}", f"task.image_scale=[{SCALE[0]},{SCALE[1]}]",
                 f"method.n_calib={n_calib}", "eval_fp=false", "logger=none"]
    if method in RECONSTRUCTION:
        overrides += [f"method.iters={ITERS}", "method.batch_size=8"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=overrides)
    with open_dict(cfg):
        cfg.out_dir = str(out)
    return cfg


def run(methods: list[str], bits_list: list[int], n_calib: int) -> list[dict]:
    from vitquant.ptq import run_calibration

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="vitquant-det-bench-"))
    planned = [(m, b) for b in bits_list for m in methods]
    rows = [r for r in load_rows() if (r["method"], r["w_bits"]) not in planned]  # re-running a cell replaces it
    for method, bits in ([] if any(r["method"] == "fp" for r in rows) else [("fp", 8)]) + planned:
        start = time.time()
        try:
            metrics = run_calibration(cell_config(method, bits, work / f"{method}_{bits}", 1 if method == "fp"
                                                  else n_calib))
            row = {"method": method, "w_bits": bits, "a_bits": bits, **{k: metrics[k] for k in KEYS},
                   "calib_seconds": metrics["calib_seconds"], "n_calib": metrics["n_calib"]}
        except UserError as e:
            row = {"method": method, "w_bits": bits, "a_bits": bits, "error": str(e)}
        row["seconds"] = time.time() - start
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(rows)  # after every cell: a cut-short run keeps what it measured
    return rows


def load_rows() -> list[dict]:
    path = RESULTS / "detection.json"
    return json.loads(path.read_text()) if path.is_file() else []


def save(rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "detection.json", rows)
    write_text(RESULTS / "detection.md", table(rows))


def table(rows: list[dict]) -> str:
    fp = next(r for r in rows if r["method"] == "fp")
    lines = [f"FP (reference Mask R-CNN, micro Swin, {IMAGES} COCO128 training images at {SCALE[0]} px): "
             f"box AP {fp['bbox_mAP']:.1f} (AP50 {fp['bbox_AP50']:.1f}), mask AP {fp['segm_mAP']:.1f} "
             f"(AP50 {fp['segm_AP50']:.1f})", "",
             "| method | W/A | box AP | Δ box | box AP50 | mask AP | Δ mask | mask AP50 | calib s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "fp":
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | n/a: {r['error'][:60]}… |||||||")
            continue
        lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | {r['bbox_mAP']:.1f} | "
                     f"{r['bbox_mAP'] - fp['bbox_mAP']:+.1f} | {r['bbox_AP50']:.1f} | {r['segm_mAP']:.1f} | "
                     f"{r['segm_mAP'] - fp['segm_mAP']:+.1f} | {r['segm_AP50']:.1f} | {r['calib_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--bits", nargs="+", type=int, default=[4, 6, 8])  # lowest first: where methods differ
    parser.add_argument("--n-calib", type=int, default=32)
    args = parser.parse_args()
    print(table(run(args.methods, args.bits, args.n_calib)))


if __name__ == "__main__":
    main()
