"""bench.imageset: COCO128 objects cut out by their boxes, split by photo, byte-for-byte reproducible."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from bench.imageset import generate, select, square_box
from vitquant.data.unlabeled import UnlabeledImages


def test_square_box_adds_context_and_stays_inside_the_photo():
    assert square_box((40, 40, 20, 10), 200, 100, margin=0.5) == (30, 25, 70, 65)  # side 20·2 around (50, 45)
    assert square_box((0, 0, 20, 10), 200, 100, margin=0.5) == (0, 0, 40, 40)      # shifted in at the corner
    assert square_box((0, 0, 190, 30), 200, 100, margin=0.1) == (45, 0, 145, 100)  # capped by the height; x centre 95


def test_select_drops_crowd_and_small_boxes():
    anns = {"annotations": [
        {"id": 3, "image_id": 1, "bbox": [0, 0, 60, 50], "iscrowd": 0},
        {"id": 1, "image_id": 1, "bbox": [0, 0, 60, 47], "iscrowd": 0},   # short side < 48
        {"id": 2, "image_id": 2, "bbox": [0, 0, 90, 90], "iscrowd": 1},   # crowd
        {"id": 4, "image_id": 0, "bbox": [5, 5, 48, 48], "iscrowd": 0}]}
    assert {k: [a["id"] for a in v] for k, v in select(anns, 48).items()} == {0: [4], 1: [3]}


@pytest.fixture
def coco128(shared_dir):
    root = shared_dir / "data" / "coco128"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found under {shared_dir}/data")
    return root


def test_first_photos_give_disjoint_reproducible_parts(coco128, tmp_path):
    manifest = generate(coco128, tmp_path / "a", limit=4)
    calib, evaluation = (sorted((tmp_path / "a" / s).glob("*.png")) for s in ("calib", "eval"))
    assert manifest["images"] == {"calib": len(calib), "eval": len(evaluation)} and calib and evaluation
    photos = [{p.name.split("_")[0] for p in part} for part in (calib, evaluation)]
    assert not photos[0] & photos[1] and len(photos[0]) + len(photos[1]) == 4  # photo 0, 3 → calib; 1, 2 → eval
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["photos"] == {"calib": 2, "eval": 2}
    with Image.open(calib[0]) as image:
        assert image.mode == "RGB" and min(image.size) == 248  # int(224 / 0.9): the model's resize size
    again = generate(coco128, tmp_path / "b", limit=4)
    assert again["images"] == manifest["images"]
    for a in calib + evaluation:
        assert (tmp_path / "b" / a.parent.name / a.name).read_bytes() == a.read_bytes()
    assert len(UnlabeledImages(tmp_path / "a" / "eval")) == len(evaluation)


def test_existing_set_is_reused_and_another_recipe_rebuilds_it(coco128, tmp_path):
    generate(coco128, tmp_path, limit=2)
    stamp = (tmp_path / "manifest.json").stat().st_mtime_ns
    generate(coco128, tmp_path, limit=2)
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == stamp
    fewer = generate(coco128, tmp_path, limit=2, min_side=200)
    assert sum(fewer["images"].values()) == len(list(tmp_path.glob("*/*.png")))
