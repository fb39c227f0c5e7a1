"""Turn a timm ViT/DeiT/Swin model into its quant twin, in place.

Every ``nn.Linear`` becomes a ``QuantLinear`` whose input-site kind comes from where it sits
(qkv/fc1/reduction read a LayerNorm output, fc2 reads GELU, proj reads the attention output);
every LayerNorm gets an ``ln_in`` site; attention modules become explicit twins. Modules that run
fused attention we do not implement are refused, so no site can silently go unseen.
"""
from __future__ import annotations

from timm.layers import Attention, Mlp
from timm.layers import LayerNorm as TimmLayerNorm
from timm.models.swin_transformer import PatchMerging, WindowAttention
from torch import nn

from vitquant.errors import UnsupportedError
from vitquant.nn import QuantAttention, QuantConv2d, QuantLayerNorm, QuantLinear, QuantWindowAttention

LINEAR_INPUT_KINDS = {
    (Attention, "qkv"): "post_ln",
    (Attention, "proj"): "attn_out",
    (WindowAttention, "qkv"): "post_ln",
    (WindowAttention, "proj"): "attn_out",
    (Mlp, "fc1"): "post_ln",
    (Mlp, "fc2"): "post_gelu",
    (PatchMerging, "reduction"): "post_ln",
}
LAYER_NORMS = (nn.LayerNorm, TimmLayerNorm)  # same math; timm's may pick a faster kernel
ATTENTION_TWINS = {Attention: QuantAttention, WindowAttention: QuantWindowAttention}


def linear_input_kind(parent: nn.Module, name: str) -> str:
    return LINEAR_INPUT_KINDS.get((type(parent), name), "linear_in")


def check_supported(model: nn.Module) -> None:
    """Refuse timm modules whose computation the twins would silently change."""
    for path, module in model.named_modules():
        if hasattr(module, "fused_attn") and type(module) not in ATTENTION_TWINS:
            raise UnsupportedError(f"{path or 'model'} is a {type(module).__name__}, which has no quant twin "
                                      f"(supported attention: {', '.join(t.__name__ for t in ATTENTION_TWINS)})")
        if type(module) is Mlp and not isinstance(module.norm, nn.Identity):
            raise UnsupportedError(f"{path}: Mlp with a hidden norm is not supported by the quant twins")


def to_quant_twin(model: nn.Module) -> nn.Module:
    """Replace quantizable modules of ``model`` by their twins (in place) and return it.

    A model with a ``quant_scope()`` method (a detector: its backbone) has only those submodules
    converted; the rest stays float.
    """
    for scope in model.quant_scope() if hasattr(model, "quant_scope") else [model]:
        _twin_modules(scope)
    return model


def _twin_modules(model: nn.Module) -> None:
    check_supported(model)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    patch_proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                kind = "linear_in" if child is head else linear_input_kind(parent, name)
                setattr(parent, name, QuantLinear.from_float(child, kind, is_end=child is head))
            elif type(child) is nn.Conv2d:
                setattr(parent, name, QuantConv2d.from_float(child, is_end=child is patch_proj))
            elif type(child) in LAYER_NORMS:
                setattr(parent, name, QuantLayerNorm.from_float(child))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in ATTENTION_TWINS:
                setattr(parent, name, ATTENTION_TWINS[type(child)](child))
