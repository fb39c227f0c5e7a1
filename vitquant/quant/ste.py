"""Straight-through estimators shared by every quantizer.

Rounding has zero gradient almost everywhere, so fake quantization back-propagates through
``round_ste(x) = x + (round(x) - x).detach()`` (identity gradient, Bengio et al. 2013), as in
BRECQ/QDrop/RepQ-ViT/I&S-ViT. ``grad_scale`` is LSQ's trick (Esser et al. 2020): the value is
unchanged but the gradient reaching a step size is multiplied by ``g = 1/sqrt(N * Q_P)``.
"""
from __future__ import annotations

import torch


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will track an op on ``tensors`` (else the STE detour is wasted work)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with an identity (straight-through) gradient.

    Without autograd this is plain ``round(x)``: bit-identical, since r − x is exact for the
    integer r nearest x (|r − x| ≤ ½ and r is a multiple of x's ulp) and so x + (r − x) = r.
    """
    if not needs_grad(x):
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor with an identity gradient (AdaRound's base grid)."""
    return x + (torch.floor(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``x`` whose gradient is multiplied by ``scale`` (LSQ step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale
