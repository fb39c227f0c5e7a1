"""Quantization sites: the named places where a tensor is fake-quantized.

Papers describe methods by the kind of tensor ("SULQ for post-Softmax, channel-wise for
post-LN"), so every site carries a *kind*; a policy decides which kinds are quantized and a
method maps each kind to a quantizer. A site with no quantizer, or a disabled one, is identity.

Site names are module paths with the ``_site`` suffix dropped, e.g. ``blocks.3.attn.qkv.input``,
``blocks.3.attn.post_softmax``, ``blocks.3.mlp.fc1.weight``.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from vitquant.quant.base import Quantizer

ACTIVATION_KINDS = (
    "ln_in",         # LayerNorm input: the residual stream (quantized only by fully-quantized policies)
    "post_ln",       # LayerNorm output feeding qkv / fc1 / Swin reduction
    "q", "k", "v",   # attention operands
    "softmax_in",    # attention scores (+ relative position bias), before Swin's shifted-window mask
    "post_softmax",  # attention probabilities, input of attn @ v
    "attn_out",      # attention output, input of proj
    "post_gelu",     # MLP hidden activation, input of fc2
    "linear_in",     # input of any other linear layer (the classifier head)
)
WEIGHT_KINDS = ("weight",)
SITE_KINDS = ACTIVATION_KINDS + WEIGHT_KINDS


class QuantSite(nn.Module):
    """One quantization site: identity unless it holds an enabled quantizer.

    ``channel_dim`` tells the quantizer where channels are (0 for weights, −1 for token
    features); ``is_end`` marks patch-embed and classifier sites, whose bits are their own key.
    """

    def __init__(self, kind: str, channel_dim: int = -1, is_end: bool = False) -> None:
        super().__init__()
        if kind not in SITE_KINDS:
            raise ValueError(f"unknown site kind {kind!r}; valid: {', '.join(SITE_KINDS)}")
        self.kind = kind
        self.channel_dim = channel_dim
        self.is_end = is_end
        self.enabled = True
        self.quantizer: Quantizer | None = None
        self._cached: tuple[tuple, torch.Tensor] | None = None  # (cache key, x̂) of a frozen weight

    @property
    def is_weight(self) -> bool:
        return self.kind in WEIGHT_KINDS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizer is None or not self.enabled:
            return x
        if not self.is_weight or self.training or torch.is_grad_enabled():
            self._cached = None
            return self.quantizer(x)
        key = self.cache_key(x)
        if self._cached is None or not same_key(self._cached[0], key):
            self._cached = (key, self.quantizer(x))
        return self._cached[1]

    def cache_key(self, weight: torch.Tensor) -> tuple:
        """What a frozen weight's x̂ depends on: the weight and every quantizer tensor (identity and
        version counter, which in-place updates — optimiser steps, ``copy_``, ``load_state_dict`` —
        bump), the quantizer object and its structural state (bits, granularity)."""
        tensors = (weight, *self.quantizer.parameters(), *self.quantizer.buffers())
        extra = self.quantizer.get_extra_state() if isinstance(self.quantizer, Quantizer) else None
        return self.quantizer, extra, tuple((t, t._version) for t in tensors)

    def train(self, mode: bool = True) -> QuantSite:
        self._cached = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (", end" if self.is_end else "") + ("" if self.enabled else ", disabled")


def same_key(a: tuple, b: tuple) -> bool:
    """Cache keys are equal: same quantizer object and state, same tensors (by identity) at the same versions."""
    (qa, ea, ta), (qb, eb, tb) = a, b
    return qa is qb and ea == eb and len(ta) == len(tb) and all(
        x is y and vx == vy for (x, vx), (y, vy) in zip(ta, tb))


def site_name(module_path: str) -> str:
    """Public name of the site at ``module_path`` (the ``_site`` suffix dropped)."""
    return module_path[: -len("_site")] if module_path.endswith("_site") else module_path


def iter_sites(model: nn.Module) -> Iterator[tuple[str, QuantSite]]:
    """Yield ``(site name, site)`` for every site in ``model``, in module order."""
    for path, module in model.named_modules():
        if isinstance(module, QuantSite):
            yield site_name(path), module


def quantized_sites(model: nn.Module) -> Iterator[tuple[str, QuantSite]]:
    """Sites that hold a quantizer (the policy enabled their kind)."""
    return ((n, s) for n, s in iter_sites(model) if s.quantizer is not None)


def set_quant_state(model: nn.Module, weights: bool, activations: bool) -> None:
    """Switch weight and activation quantization on or off (I&S-ViT stage 1: activations only)."""
    for _, site in iter_sites(model):
        site.enabled = weights if site.is_weight else activations


def set_calibrating(model: nn.Module, on: bool) -> None:
    """Let uninitialised quantizers initialise from the next tensor they see."""
    for module in model.modules():
        if isinstance(module, Quantizer):
            module.calibrating = on


def uninitialised_activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Quantizers of the enabled activation sites that have not been initialised yet: the ones a
    calibration pass over data fits (range initialisation streams its micro-batches into them)."""
    return [s.quantizer for _, s in quantized_sites(model)
            if s.enabled and not s.is_weight and not bool(s.quantizer.initialized)]


def uncalibrated_sites(model: nn.Module) -> list[str]:
    """Names of sites whose quantizer never saw data: a non-empty list is a coverage failure."""
    return [n for n, s in quantized_sites(model) if not bool(s.quantizer.initialized)]
