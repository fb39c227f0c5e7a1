"""The real ImageNet ViT-Ti of the shared folder through our configs: same weights, transform and logits as timm's
own pipeline, and ImageNet predictions that make sense on natural photos. Skipped when the file is absent."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import load_file

from bench.imageset import square_box
from vitquant.cli import CONF_DIR
from vitquant.tasks.classification import ClassificationTask

ARCH = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
ZEBRA = 340  # ImageNet-1k class index of "zebra"


@pytest.fixture(scope="module")
def weights():
    from conftest import SHARED

    path = SHARED / "models" / "vit_tiny_augreg_in1k.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not found (set VITQUANT_SHARED to the folder holding models/)")
    return path


@pytest.fixture(scope="module")
def ours(weights):
    """ClassificationTask on our model config (model=vit_tiny_in1k), weights from the shared file."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=["model=vit_tiny_in1k", f"model.checkpoint={weights}"])
    return ClassificationTask(cfg.model, {"format": "images"})


@pytest.fixture(scope="module")
def coco_photos(weights):
    from conftest import SHARED

    root = SHARED / "data" / "coco128"
    if not root.is_dir():
        pytest.skip(f"coco128 not found under {SHARED}/data")
    return root


def test_config_input_is_timms_pretrained_config(ours):
    timm_cfg = timm.data.resolve_data_config({}, model=timm.create_model(ARCH, pretrained=False))
    ours_input = ours.model_cfg["input"]
    assert (ours_input["size"], ours_input["crop_pct"], ours_input["interpolation"]) == \
        (timm_cfg["input_size"][-1], timm_cfg["crop_pct"], timm_cfg["interpolation"])
    assert tuple(ours_input["mean"]) == timm_cfg["mean"] and tuple(ours_input["std"]) == timm_cfg["std"]


def test_same_logits_as_timm_on_coco_photos(ours, weights, coco_photos):
    """Our build_model + our eval transform vs timm.create_model + timm's own transform, on 4 whole photos
    (not square: the resize and centre crop matter)."""
    reference = timm.create_model(ARCH, pretrained=False)
    reference.load_state_dict(load_file(str(weights)))
    reference.eval()
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    photos = sorted((coco_photos / "train2017").glob("*.jpg"))[:4]
    images = [Image.open(p).convert("RGB") for p in photos]
    x_ours = torch.stack([ours.transform(im) for im in images])
    x_timm = torch.stack([timm_transform(im) for im in images])
    torch.testing.assert_close(x_ours, x_timm)
    model = ours.build_model()
    assert sum(p.numel() for p in model.parameters()) == 5_717_416
    with torch.no_grad():
        torch.testing.assert_close(model(x_ours), reference(x_timm), atol=1e-4, rtol=1e-4)


def test_zebras_are_zebras(ours, coco_photos):
    """The large COCO128 zebras, cut out as bench.imageset does, are ImageNet's class 'zebra': the weights and
    the preprocessing are the right ones, not merely self-consistent."""
    coco = json.loads((coco_photos / "annotations" / "instances_train2017.json").read_text())
    zebra_id = next(c["id"] for c in coco["categories"] if c["name"] == "zebra")
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    crops = []
    for ann in coco["annotations"]:
        if ann["category_id"] == zebra_id and min(ann["bbox"][2:]) >= 100:
            photo = Image.open(coco_photos / "train2017" / files[ann["image_id"]]).convert("RGB")
            crops.append(photo.crop(square_box(ann["bbox"], photo.width, photo.height, margin=0.1)))
    assert len(crops) >= 2
    with torch.no_grad():
        predicted = ours.build_model()(torch.stack([ours.transform(c) for c in crops])).argmax(-1)
    assert (predicted == ZEBRA).all(), predicted.tolist()
