"""Load detector/segmentor weights, including the official Swin-Transformer-Object-Detection files.

Those checkpoints (mmdet 2.x, ``{'meta', 'state_dict', 'optimizer'}``) use the original Swin
layout under ``backbone.``: ``backbone.patch_embed.proj``, ``backbone.layers.N.blocks.M.attn.qkv``,
``backbone.layers.N.downsample.{norm,reduction}`` (downsample at the *end* of stage N),
``backbone.norm0..3``, persistent ``relative_position_index``/``attn_mask`` buffers. ``TimmSwin``
has the same names except that timm downsamples at the *start* of the next stage, so::

    backbone.layers.N.downsample.*  ->  backbone.layers.{N+1}.downsample.*

and the buffers (recomputed by the model) are dropped. Neck and head keys are the same in mmdet
2.x and 3.x for these models (FPN, RPN, RoI bbox/mask heads). Files are read with
``torch.load(weights_only=True)`` (:func:`vitquant.models.checkpoint.read_state_dict`); safety is
never turned off.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from vitquant.models.checkpoint import CheckpointError, check_state_dict, read_state_dict

BUFFERS = ("relative_position_index", "attn_mask")
OFFICIAL_MARK = "backbone.layers.0.downsample.reduction.weight"  # timm's stage 0 has no downsample


def convert_official_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (downsample-at-end) Swin detection keys -> ``TimmSwin`` keys; other layouts unchanged."""
    if OFFICIAL_MARK not in state:
        return {k: v for k, v in state.items() if not k.endswith(BUFFERS)}
    out = {}
    for key, value in state.items():
        if key.endswith(BUFFERS):
            continue
        key = re.sub(r"^backbone\.layers\.(\d+)\.downsample\.",
                     lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample.", key)
        out[key] = value
    return out


def load_detector_checkpoint(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-network checkpoint into an mm ``net`` (strict; one-line errors)."""
    path = Path(path)
    state = read_state_dict(path)
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"checkpoint {path} has no backbone.* keys: it is a classification or backbone-only "
                              "checkpoint (e.g. patch_embed.proj.weight), not a detector/segmentor; pass the "
                              "whole model's weights (official Swin-Transformer-Object-Detection .pth, make reference)")
    state = convert_official_swin(state)
    check_state_dict(state, net, path)
    net.load_state_dict(state, strict=True)
    return net
