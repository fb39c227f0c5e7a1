"""Semantic-segmentation benchmark: each PTQ method × W8A8/W6A6/W4A4 on the coco128_semseg reference UperNet.

The reference segmentor (``model=upernet_swin_micro``, ``make reference``; ``--reference segmentation_vit``:
``model=upernet_vit_micro``, a plain-ViT backbone) is evaluated on the 32
coco128_semseg images it was trained on, at 256 px: the table measures the mIoU *drop* under
quantization of its backbone, not generalisation (cell loop and budget: :mod:`bench.mm_bench`).
Rows: ``bench/results/<reference>.json`` and ``<reference>.md``.
``python -m bench.segmentation [--reference segmentation_vit] [--methods minmax repqvit] [--bits 4] [--iters 20]``.
"""
from __future__ import annotations

import argparse
import functools

from bench.mm_bench import ITERS, Bench, method_rows, run
from bench.mm_reference import IMAGES, SCALE

METHODS = ("minmax", "percentile", "mse", "repqvit", "fqvit", "isvit", "qdrop", "tsptq", "ptq4vit")


def table(rows: list[dict], backbone: str = "micro Swin") -> str:
    fp = next(r for r in rows if r["method"] == "fp")
    lines = [f"FP (reference UperNet, {backbone}, {IMAGES} coco128_semseg training images at {SCALE[0]} px, "
             f"81 classes): mIoU {fp['mIoU']:.2f}, aAcc {fp['aAcc']:.2f}, mAcc {fp['mAcc']:.2f}", "",
             "| method | W/A | mIoU | Δ mIoU | aAcc | Δ aAcc | mAcc | calib s |", "|---|---|---|---|---|---|---|---|"]
    lines += method_rows(rows, lambda r: (
        f"{r['mIoU']:.2f} | {r['mIoU'] - fp['mIoU']:+.2f} | {r['aAcc']:.2f} | {r['aAcc'] - fp['aAcc']:+.2f} | "
        f"{r['mAcc']:.2f} | {r['calib_seconds']:.0f}"), columns=6)
    return "\n".join(lines) + "\n"


BENCHES = {name: Bench(name, name, ("mIoU", "aAcc", "mAcc"), functools.partial(table, backbone=backbone))
           for name, backbone in (("segmentation", "micro Swin"), ("segmentation_vit", "micro ViT"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="segmentation", choices=sorted(BENCHES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--bits", nargs="+", type=int, default=[4, 6, 8])  # lowest first: where methods differ
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--iters", type=int, default=ITERS, help="reconstruction iterations per unit and stage")
    args = parser.parse_args()
    bench = BENCHES[args.reference]
    print(bench.table(run(bench, args.methods, args.bits, args.n_calib, args.iters)))


if __name__ == "__main__":
    main()
