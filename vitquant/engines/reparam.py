"""LayerNorm scale reparameterization: channel-wise post-LN quantizers become layer-wise.

RepQ-ViT (``zkkli/RepQ-ViT`` ``classification/test_quant.py``) and I&S-ViT stage 2 (``zysxmu/IaS-ViT``
``test_quant.py``; spec ``specs/isvit.md`` §1.3): the input of qkv / fc1 (/ Swin ``reduction``) is
calibrated with one (s_c, z_c) per channel, then the per-channel part is moved into the LayerNorm
affine and the next linear layer so that a single (s̃, z̃) quantizes the whole tensor::

    s̃ = mean(s),  z̃ = mean(z),  r = s / s̃,  b = (−z·s)/r − (−z̃·s̃) = (z̃ − z)·s̃
    γ ← γ / r,    β ← β / r − b
    W[:, c] ← W[:, c]·r_c,   bias ← bias + W_new · b
    input quantizer ← layer-wise (s̃, z̃)

With y the old LayerNorm output and y' = y/r − b the new one, y'/s̃ + z̃ = y/s + z exactly, so the
integer codes are unchanged when z̃ is an integer and W_new·Q'(y') + bias_new = W·Q(y) + bias: the
fold is exact. The official code keeps z̃ = mean(z) *unrounded*, so round(y/s + z − z̃) + z̃ differs
from round(y/s) + z by the fractional part of z̃ (spec pitfall 3); ``round_zero_point=True`` rounds
z̃ and makes the fold exact. Weights are rescaled per input column, so the weight quantizers of
the changed linears are reset and initialise again on the next calibrating forward.

Pairs are found by block type, not by attribute names, because timm's post-norm blocks
(``ResPostBlock``) have ``norm1`` *after* attention: ViT/DeiT ``Block`` and Swin
``SwinTransformerBlock`` give norm1→attn.qkv and norm2→mlp.fc1; Swin ``PatchMerging`` gives
norm→reduction (RepQ-ViT folds it, I&S-ViT does not: ``include_reduction``). Swin windows padded
after norm1 (resolutions not divisible by the window) see the zero padding through the new qkv
bias; the official code shares this, and 224-px Swin models never pad.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from timm.models.vision_transformer import Block
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.nn.linear import QuantLinear
from vitquant.quant.uniform import UniformQuantizer

log = logging.getLogger(__name__)
PRE_NORM_BLOCKS = (Block, SwinTransformerBlock)


def layernorm_linear_pairs(model: nn.Module,
                           include_reduction: bool = True) -> Iterator[tuple[nn.LayerNorm, nn.Linear]]:
    """Yield (LayerNorm, the linear layer reading its output) in module order."""
    for module in model.modules():
        if type(module) in PRE_NORM_BLOCKS:
            yield module.norm1, module.attn.qkv
            yield module.norm2, module.mlp.fc1
        elif include_reduction and type(module) is PatchMerging:
            yield module.norm, module.reduction


def reparam_factors(scale: torch.Tensor, zero_point: torch.Tensor, round_zero_point: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, b, s̃, z̃) for per-channel (s, z): r = s/s̃, b = (−z·s)/r − (−z̃·s̃)."""
    scale, zero_point = scale.reshape(-1).float(), zero_point.reshape(-1).float()
    target_scale, target_zero = scale.mean(), zero_point.mean()
    if round_zero_point:
        target_zero = target_zero.round()
    r = scale / target_scale
    b = (-zero_point * scale) / r - (-target_zero * target_scale)
    return r, b, target_scale, target_zero


@torch.no_grad()
def fold_layernorm_pair(norm: nn.LayerNorm, linear: QuantLinear, round_zero_point: bool = False) -> None:
    """Fold the channel-wise input quantizer of ``linear`` into ``norm`` and ``linear`` (in place)."""
    quantizer = linear.input_site.quantizer
    if not bool(quantizer.initialized):
        raise RuntimeError("reparameterization needs calibrated post-LayerNorm quantizers; run range init first")
    if norm.weight is None:
        raise ValueError("reparameterization needs a LayerNorm with an affine weight")
    r, b, target_scale, target_zero = reparam_factors(quantizer.scale, quantizer.zero_point, round_zero_point)
    r, b = r.to(norm.weight), b.to(norm.weight)
    norm.weight.div_(r)
    if norm.bias is None:
        norm.bias = nn.Parameter(-b)
    else:
        norm.bias.div_(r).sub_(b)
    linear.weight.mul_(r)
    shift = linear.weight @ b
    if linear.bias is None:
        linear.bias = nn.Parameter(shift)
    else:
        linear.bias.add_(shift)
    quantizer.granularity = "tensor"
    quantizer.set_param("scale", target_scale.reshape(1))
    quantizer.set_param("zero_point", target_zero.reshape(1))
    if linear.weight_site.quantizer is not None:
        linear.weight_site.quantizer.initialized.fill_(False)


def is_foldable(linear: nn.Module) -> bool:
    """The linear layer reads its input through a channel-wise uniform quantizer."""
    quantizer = getattr(getattr(linear, "input_site", None), "quantizer", None)
    return isinstance(quantizer, UniformQuantizer) and quantizer.granularity == "channel"


def reparameterize_layernorm(model: nn.Module, ctx: CalibContext | None = None, include_reduction: bool = True,
                             round_zero_point: bool = False) -> None:
    """Stage: fold every channel-wise post-LN quantizer into its LayerNorm and next linear layer.

    Pairs whose quantizer is absent or already layer-wise are left alone, so the stage is idempotent.
    """
    n = 0
    for norm, linear in layernorm_linear_pairs(model, include_reduction):
        if is_foldable(linear):
            fold_layernorm_pair(norm, linear, round_zero_point)
            n += 1
    log.info("reparameterized %d LayerNorm → linear pairs", n)
    if ctx is not None:
        ctx.log({"reparam/pairs": float(n)})
