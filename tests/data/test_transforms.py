"""Evaluation transforms: timm's resize + center crop, or only ToTensor + Normalize."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vitquant.data.transforms import eval_transform
from vitquant.errors import UserError

DEIT = {"size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "resize": True}


def test_imagenet_protocol_resizes_short_side_then_crops():
    transform = eval_transform(DEIT)
    resize = transform.transforms[0]
    assert isinstance(resize, T.Resize) and resize.size == 256  # int(224 / 0.875)
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert transform(Image.new("RGB", (400, 300))).shape == (3, 224, 224)


def test_no_resize_only_normalizes():
    transform = eval_transform({"size": 2, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0], "resize": False})
    out = transform(Image.new("RGB", (2, 2), color=(255, 0, 51)))
    expected = torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, 0.2 - 0.5]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected)


def test_squash_crop_mode_resizes_both_sides():
    image = Image.new("RGB", (400, 300))
    assert eval_transform(DEIT).transforms[0](image).size == (341, 256)  # center: keeps the aspect ratio
    transform = eval_transform({**DEIT, "crop_mode": "squash"})
    assert transform.transforms[0](image).size == (256, 256)
    assert transform(image).shape == (3, 224, 224)


def test_unsupported_crop_mode_is_a_user_error():
    with pytest.raises(UserError, match="crop_mode=border"):
        eval_transform({**DEIT, "crop_mode": "border"})
