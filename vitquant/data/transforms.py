"""The evaluation transform of a model's ``input`` config (``conf/model/*.yaml``).

- ``resize: true`` is the timm / PTQ-literature ImageNet protocol (spec ``protocol.md`` §0, RepQ-ViT
  ``utils/build_dataset.py``): ``Resize(int(size / crop_pct), interpolation)`` on the short side,
  ``CenterCrop(size)``, then ``ToTensor`` and ``Normalize(mean, std)``. crop_pct is 0.875 for DeiT,
  0.9 for ViT and Swin; interpolation bicubic.
- ``resize: false`` is for images already at the model's size (the 32 px CIFAR reference models,
  the 16 px digits demo): only ``ToTensor`` (to [0, 1]) and ``Normalize``, as in their training.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def eval_transform(input_cfg: Mapping[str, Any]) -> T.Compose:
    """PIL RGB image → normalised (3, size, size) float tensor."""
    to_tensor = [T.ToTensor(), T.Normalize(tuple(input_cfg["mean"]), tuple(input_cfg["std"]))]
    if not input_cfg.get("resize", True):
        return T.Compose(to_tensor)
    size = int(input_cfg["size"])
    interpolation = InterpolationMode(str(input_cfg.get("interpolation", "bicubic")))
    resize = int(size / float(input_cfg.get("crop_pct", 1.0)))
    return T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *to_tensor])
