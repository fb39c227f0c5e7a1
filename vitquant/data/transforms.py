"""The evaluation transform of a model's ``input`` config (``conf/model/*.yaml``).

Timm-zoo model configs take their keys from timm's pretrained config of ``model.arch``
(``conf/model_input/timm.yaml``, :mod:`vitquant.models.pretrained_input`); the CIFAR/digits reference models
write them out.

- ``resize: true`` is the timm / PTQ-literature ImageNet protocol (spec ``protocol.md`` §0, RepQ-ViT
  ``utils/build_dataset.py``, timm ``transforms_factory``): ``Resize(floor(size / crop_pct), interpolation)``
  on the short side, ``CenterCrop(size)``, then ``ToTensor`` and ``Normalize(mean, std)``. crop_pct is 0.875
  for DeiT, 0.9 for ViT and Swin; interpolation bicubic. ``crop_mode: squash`` (some timm models) resizes
  both sides to ``floor(size / crop_pct)`` instead, ignoring the aspect ratio, before the same crop.
- ``resize: false`` is for images already at the model's size (the 32 px CIFAR reference models,
  the 16 px digits demo): only ``ToTensor`` (to [0, 1]) and ``Normalize``, as in their training.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from vitquant.errors import UserError

CROP_MODES = ("center", "squash")


def eval_transform(input_cfg: Mapping[str, Any]) -> T.Compose:
    """PIL RGB image → normalised (3, size, size) float tensor."""
    to_tensor = [T.ToTensor(), T.Normalize(tuple(input_cfg["mean"]), tuple(input_cfg["std"]))]
    if not input_cfg.get("resize", True):
        return T.Compose(to_tensor)
    size = int(input_cfg["size"])
    interpolation = InterpolationMode(str(input_cfg.get("interpolation", "bicubic")))
    resize = math.floor(size / float(input_cfg.get("crop_pct", 1.0)))
    crop_mode = str(input_cfg.get("crop_mode", "center"))
    if crop_mode not in CROP_MODES:
        raise UserError(f"model.input.crop_mode={crop_mode} is not supported; use one of {', '.join(CROP_MODES)} "
                        "(e.g. model.input.crop_mode=center)")
    resize_to = resize if crop_mode == "center" else (resize, resize)
    return T.Compose([T.Resize(resize_to, interpolation=interpolation), T.CenterCrop(size), *to_tensor])
