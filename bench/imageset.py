"""Natural images for the ImageNet models: COCO128's objects cut out by their boxes (``data=coco128_objects``).

There are no ImageNet images here, but the objects of COCO128 are natural photos of ImageNet-like things
(people, animals, vehicles, food, furniture). Each non-crowd box whose short side is at least ``min_side``
pixels becomes one image:

1. a square around the box centre with side ``max(w, h) · (1 + 2·margin)`` (context around the object, and
   square so that the model's centre crop keeps the whole object), shrunk to fit the photo if needed and
   shifted to lie inside it;
2. resized to the model's resize size ``int(size / crop_pct)`` (248 for the ViTs: 224 / 0.9) with its
   interpolation (bicubic), so the evaluation transform's resize is a no-op and its centre crop gives 224;
3. saved as PNG (lossless, deterministic) as ``<split>/<image id>_<annotation id>.png``.

Split by *source photo*: the photos that have at least one such box, sorted by id, go every ``calib_every``-th
to ``calib/`` and the others to ``eval/``, so no photo (and no object in it) is in both. The same inputs give
the same files byte for byte. ``manifest.json`` (written last, so its presence means complete) records the
options and the counts; a folder whose manifest has the same options is reused as it is.

    python -m bench.imageset [--out DIR] [--coco128 DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from vitquant.io.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITQUANT_SHARED", REPO.parent / "shared"))
CACHE = Path(os.environ.get("VITQUANT_CACHE", Path.home() / ".cache" / "vitquant"))
DEFAULT_OUT = CACHE / "imagesets" / "coco128_objects"
# The ViT input config (vitquant/conf/model/vit_tiny_in1k.yaml): 224 px, crop_pct 0.9, bicubic.
VIT_INPUT = {"size": 224, "crop_pct": 0.9, "interpolation": "bicubic"}
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
VERSION = 1  # bump when the recipe changes, so cached folders are rebuilt


def square_box(box: tuple[float, float, float, float], width: int, height: int, margin: float) -> tuple[int, ...]:
    """(left, top, right, bottom) of the context square of a COCO box ``(x, y, w, h)`` inside a photo."""
    x, y, w, h = box
    side = min(max(w, h) * (1 + 2 * margin), width, height)
    cx, cy = x + w / 2, y + h / 2
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def select(annotations: dict[str, Any], min_side: float) -> dict[int, list[dict]]:
    """Photo id → its usable boxes (non-crowd, short side ≥ ``min_side``), sorted by annotation id."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in sorted(annotations["annotations"], key=lambda a: a["id"]):
        if not ann.get("iscrowd", 0) and min(ann["bbox"][2:]) >= min_side:
            by_image[ann["image_id"]].append(ann)
    return dict(sorted(by_image.items()))


def generate(coco128: str | Path, out: str | Path, min_side: float = 48, margin: float = 0.1, calib_every: int = 3,
             input_cfg: Mapping[str, Any] = VIT_INPUT, limit: int | None = None) -> dict[str, Any]:
    """Write the image set (first ``limit`` photos only, for tests) and return its manifest."""
    coco128, out = Path(coco128), Path(out)
    options = {"version": VERSION, "min_side": min_side, "margin": margin, "calib_every": calib_every,
               "input": dict(input_cfg), "limit": limit, "source": "coco128 train2017 instances"}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("options") == options:
            return manifest
    for split in ("calib", "eval"):  # a partial or other-recipe set: start over
        shutil.rmtree(out / split, ignore_errors=True)
    annotations = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    files = {im["id"]: im["file_name"] for im in annotations["images"]}
    chosen = list(select(annotations, min_side).items())[:limit]
    resize = int(int(input_cfg["size"]) / float(input_cfg.get("crop_pct", 1.0)))
    resample = RESAMPLE[str(input_cfg.get("interpolation", "bicubic"))]
    counts = {"calib": 0, "eval": 0}
    photos = {"calib": [], "eval": []}
    for k, (image_id, anns) in enumerate(chosen):
        split = "calib" if k % calib_every == 0 else "eval"
        (out / split).mkdir(parents=True, exist_ok=True)
        photos[split].append(image_id)
        with Image.open(coco128 / "train2017" / files[image_id]) as photo:
            photo = photo.convert("RGB")
        for ann in anns:
            crop = photo.crop(square_box(ann["bbox"], photo.width, photo.height, margin))
            scale = resize / min(crop.size)
            crop = crop.resize((max(resize, round(crop.width * scale)), max(resize, round(crop.height * scale))),
                               resample)
            crop.save(out / split / f"{image_id:012d}_{ann['id']}.png", optimize=False)
            counts[split] += 1
    manifest = {"options": options, "images": counts, "photos": {s: len(p) for s, p in photos.items()},
                "photo_ids": photos, "resize": resize}
    write_json(manifest_path, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", type=Path, default=SHARED / "data" / "coco128")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--min-side", type=float, default=48)
    ap.add_argument("--margin", type=float, default=0.1, help="context on each side, as a fraction of the box")
    ap.add_argument("--calib-every", type=int, default=3, help="every N-th photo goes to calib/, the rest to eval/")
    args = ap.parse_args(argv)
    if not (args.coco128 / "annotations" / "instances_train2017.json").is_file():
        raise SystemExit(f"error: {args.coco128} is not COCO128 (no annotations/instances_train2017.json); "
                         "pass --coco128 or set VITQUANT_SHARED")
    m = generate(args.coco128, args.out, args.min_side, args.margin, args.calib_every)
    print(f"{args.out}: calib {m['images']['calib']} images from {m['photos']['calib']} photos, "
          f"eval {m['images']['eval']} images from {m['photos']['eval']} photos")


if __name__ == "__main__":
    main()
