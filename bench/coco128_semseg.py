"""Derive a semantic-segmentation set in mmseg's folder layout from COCO128's instance masks.

``python -m bench.coco128_semseg [--out DIR]`` (default ``$VITQUANT_CACHE/data/coco128_semseg``, what
``data=coco128_semseg`` reads) writes ``images/training/<name>.jpg`` (symlinks to COCO128's
images) and ``annotations/training/<name>.png``: per pixel 0 for background, ``k + 1`` for the
k-th COCO category (ids in increasing order, mmdet's class order), 255 (ignored) for crowd
regions. Larger instances are painted first, so a small object in front of a large one keeps its
pixels. There is no validation split: evaluation uses the same images (a drop, not generalisation).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("VITQUANT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CACHE = Path(os.environ.get("VITQUANT_CACHE", Path.home() / ".cache" / "vitquant"))
IGNORE = 255


def class_names(annotation_file: Path) -> list[str]:
    """``background`` then the category names in increasing id order (the label values 0, 1, ...)."""
    categories = sorted(json.loads(annotation_file.read_text())["categories"], key=lambda c: c["id"])
    return ["background", *[c["name"] for c in categories]]


def label_map(coco, image_id: int, label_of: dict[int, int]) -> np.ndarray:
    """The (H, W) uint8 label map of one image from its instance annotations."""
    info = coco.loadImgs(image_id)[0]
    labels = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: -a["area"])
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        labels[mask] = IGNORE if ann.get("iscrowd", 0) else label_of[ann["category_id"]]
    return labels


def generate(coco_root: Path, out: Path, limit: int | None = None) -> Path:
    """Write the set under ``out`` (``images/training``, ``annotations/training``); returns ``out``."""
    from pycocotools.coco import COCO

    annotation_file = coco_root / "annotations" / "instances_train2017.json"
    coco = COCO(str(annotation_file))
    label_of = {cid: i + 1 for i, cid in enumerate(sorted(coco.getCatIds()))}
    (out / "images" / "training").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "training").mkdir(parents=True, exist_ok=True)
    for image_id in sorted(coco.getImgIds())[:limit]:
        name = coco.loadImgs(image_id)[0]["file_name"]
        link = out / "images" / "training" / name
        if not link.exists():
            link.symlink_to((coco_root / "train2017" / name).resolve())
        Image.fromarray(label_map(coco, image_id, label_of)).save(
            out / "annotations" / "training" / f"{Path(name).stem}.png")
    (out / "classes.json").write_text(json.dumps(class_names(annotation_file)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, default=SHARED / "data" / "coco128")
    parser.add_argument("--out", type=Path, default=CACHE / "data" / "coco128_semseg")
    args = parser.parse_args()
    print(f"coco128 semantic segmentation -> {generate(args.coco, args.out)}")


if __name__ == "__main__":
    main()
