"""Detection benchmark: each PTQ method × W8A8/W6A6/W4A4 on the COCO128 reference Mask R-CNN.

The reference detector (``model=mask_rcnn_swin_micro``, ``make reference``) is evaluated on the 32
COCO128 images it was trained on, at 256 px: the table measures the box/mask AP *drop* under
quantization of its backbone, not generalisation (cell loop and budget: :mod:`bench.mm_bench`).
PTQ4ViT does not apply (its search needs classifier logits) and is listed as such. Rows:
``bench/results/detection.json`` and ``detection.md``.
``python -m bench.detection [--methods isvit repqvit] [--bits 4]``.
"""
from __future__ import annotations

import argparse

from bench.mm_bench import Bench, method_rows, run
from bench.mm_reference import IMAGES, SCALE

METHODS = ("minmax", "percentile", "mse", "repqvit", "tsptq", "fqvit", "isvit", "qdrop", "ptq4vit")


def table(rows: list[dict]) -> str:
    fp = next(r for r in rows if r["method"] == "fp")
    lines = [f"FP (reference Mask R-CNN, micro Swin, {IMAGES} COCO128 training images at {SCALE[0]} px): "
             f"box AP {fp['bbox_mAP']:.1f} (AP50 {fp['bbox_AP50']:.1f}), mask AP {fp['segm_mAP']:.1f} "
             f"(AP50 {fp['segm_AP50']:.1f})", "",
             "| method | W/A | box AP | Δ box | box AP50 | mask AP | Δ mask | mask AP50 | calib s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += method_rows(rows, lambda r: (
        f"{r['bbox_mAP']:.1f} | {r['bbox_mAP'] - fp['bbox_mAP']:+.1f} | {r['bbox_AP50']:.1f} | {r['segm_mAP']:.1f} | "
        f"{r['segm_mAP'] - fp['segm_mAP']:+.1f} | {r['segm_AP50']:.1f} | {r['calib_seconds']:.0f}"), columns=7)
    return "\n".join(lines) + "\n"


DETECTION = Bench("detection", "detection", ("bbox_mAP", "bbox_AP50", "segm_mAP", "segm_AP50"), table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--bits", nargs="+", type=int, default=[4, 6, 8])  # lowest first: where methods differ
    parser.add_argument("--n-calib", type=int, default=32)
    args = parser.parse_args()
    print(table(run(DETECTION, args.methods, args.bits, args.n_calib)))


if __name__ == "__main__":
    main()
