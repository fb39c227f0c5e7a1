"""What the timm-backed mm backbones (:class:`~vitquant.tasks.mm_swin.TimmSwin`,
:class:`~vitquant.tasks.mm_vit.TimmViT`) share: padding the image to the patch grid and
registration in the mmdet/mmseg model registries.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn


def pad_to_patch(x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """``x`` (N, C, H, W) zero-padded bottom/right to a multiple of ``patch_size`` (h, w).

    What the official Swin and mmseg's ``PatchEmbed(padding='corner')`` do, so any input size
    gives ``ceil(H / p) × ceil(W / p)`` tokens instead of dropping the border."""
    ph, pw = patch_size
    return nn.functional.pad(x, (0, (pw - x.shape[-1] % pw) % pw, 0, (ph - x.shape[-2] % ph) % ph))


def register(*backbones: type[nn.Module]) -> None:
    """Make ``type='<class name>'`` buildable from mmdet and mmseg configs (idempotent; either
    package may be missing, as long as one is there)."""
    found = False
    for package in ("mmdet", "mmseg"):
        try:
            models = importlib.import_module(f"{package}.registry").MODELS
        except ImportError:
            continue
        found = True
        for backbone in backbones:
            models.register_module(backbone.__name__, module=backbone, force=True)
    if not found:
        raise ImportError("neither mmdet nor mmseg is installed (make setup-mm)")
