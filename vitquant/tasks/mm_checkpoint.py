"""Load detector/segmentor weights: the official Swin-Transformer-Object-Detection files and mmseg's ViT.

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

mmseg's ``VisionTransformer`` (UperNet-ViT/DeiT segmentors) is built on mmcv bricks; its keys map
one to one onto :class:`~vitquant.tasks.mm_vit.TimmViT` (timm's ``Block``), with the same tensors
(``nn.MultiheadAttention``'s ``in_proj`` is timm's fused ``qkv``, q|k|v stacked, heads contiguous)::

    patch_embed.projection       -> patch_embed.proj     (mmseg's default has no bias: a zero bias is added)
    layers.N.ln1 / ln2           -> blocks.N.norm1 / norm2
    layers.N.attn.attn.in_proj_* -> blocks.N.attn.qkv.*
    layers.N.attn.attn.out_proj  -> blocks.N.attn.proj
    layers.N.ffn.layers.0.0 / 1  -> blocks.N.mlp.fc1 / fc2
    ln1 (final_norm) / ln_pre    -> norm / norm_pre
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitquant.models.checkpoint import CheckpointError, check_state_dict, read_state_dict

BUFFERS = ("relative_position_index", "attn_mask")
OFFICIAL_MARK = "backbone.layers.0.downsample.reduction.weight"  # timm's stage 0 has no downsample
MMSEG_VIT_MARK = "layers.0.attn.attn.in_proj_weight"  # nn.MultiheadAttention inside mmcv's MultiheadAttention
IMAGENET_ONLY = ("head.", "head_dist.", "fc_norm.", "norm.")  # classifier-side keys a backbone may lack
DENSE_PARTS = ("neck.", "decode_head.", "auxiliary_head.", "rpn_head.", "roi_head.")
MMSEG_VIT_RULES = (  # (mmseg, timm) key patterns below the backbone prefix, applied in order
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln([12])\.", r"blocks.\1.norm\2."),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^layers\.(\d+)\.attn\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^ln1\.", "norm."),
    (r"^ln_pre\.", "norm_pre."),
)


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


def convert_mmseg_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg ``VisionTransformer`` keys (under ``backbone.`` or bare) -> ``TimmViT`` keys; other layouts unchanged."""
    prefix = next((p for p in ("backbone.", "") if p + MMSEG_VIT_MARK in state), None)
    if prefix is None:
        return state
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            inner = key.removeprefix(prefix)
            for pattern, replacement in MMSEG_VIT_RULES:
                inner = re.sub(pattern, replacement, inner)
            key = prefix + inner
        out[key] = value
    weight, bias = prefix + "patch_embed.proj.weight", prefix + "patch_embed.proj.bias"
    if weight in out and bias not in out:  # mmseg's patch_bias=False is timm's proj with a zero bias
        out[bias] = torch.zeros(len(out[weight]), dtype=out[weight].dtype)
    return out


def convert_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every known foreign layout (official Swin, mmseg ViT) -> our backbones' keys."""
    return convert_mmseg_vit(convert_official_swin(state))


def load_detector_checkpoint(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-network checkpoint into an mm ``net`` (strict; one-line errors)."""
    path = Path(path)
    state = read_state_dict(path)
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"checkpoint {path} has no backbone.* keys: it is a classification or backbone-only "
                              "checkpoint (e.g. patch_embed.proj.weight), not a detector/segmentor; pass the "
                              "whole model's weights (official Swin-Transformer-Object-Detection .pth, make reference)")
    state = convert_layout(state)
    check_state_dict(state, net, path)
    net.load_state_dict(state, strict=True)
    return net


def load_pretrained_backbone(backbone: nn.Module, path: str | Path) -> nn.Module:
    """ImageNet weights into ``backbone`` alone (``model.pretrained``, mmseg's ``pretrained=``).

    Accepts a timm/DeiT classification file or a backbone in mmseg's ViT layout: mmseg keys are
    converted, classifier-side keys the backbone lacks (``head``, ``fc_norm``, the final ``norm``
    when the backbone has no ``final_norm``) are dropped, and a ``pos_embed`` of another grid (224 px
    pretraining) is resampled to the backbone's stored grid as mmseg's ``init_weights`` does
    (bicubic, no antialiasing). Everything else must match exactly (one-line error otherwise)."""
    path = Path(path)
    state = read_state_dict(path)
    if any(k.startswith(DENSE_PARTS) for k in state):
        raise CheckpointError(f"checkpoint {path} holds a whole detector/segmentor (neck/head keys): pass it as "
                              "model.checkpoint; model.pretrained takes ImageNet backbone weights")
    state = {k.removeprefix("backbone."): v for k, v in convert_layout(state).items()}
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(IMAGENET_ONLY)}
    pos, target = state.get("pos_embed"), own.get("pos_embed")
    if pos is not None and target is not None and pos.shape != target.shape and pos.shape[-1] == target.shape[-1]:
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(backbone.patch_embed.grid_size),
                                                    num_prefix_tokens=1, antialias=False, align_corners=False)
    check_state_dict(state, backbone, path)
    backbone.load_state_dict(state, strict=True)
    return backbone
