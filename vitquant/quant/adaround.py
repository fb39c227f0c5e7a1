"""AdaRound: learned up/down rounding of a weight on a fixed uniform grid (BRECQ, QDrop).

Wraps an initialised weight ``UniformQuantizer`` (scale s, zero point z) during reconstruction.
Instead of round-to-nearest, each weight picks floor or ceil through a soft variable V::

    h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1),   ζ = 1.1, γ = −0.1
    Ŵ    = s · (clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) − z)          (soft, while optimising)
    Ŵ    = s · (clamp(⌊W/s⌋ + [V ≥ 0] + z, qmin, qmax) − z)       (hard; h ≥ ½ ⇔ V ≥ 0)

V starts where h(V) = frac(W/s), i.e. V = −log((ζ − γ)/(frac − γ) − 1), so the soft weight equals
W before optimisation (QDrop ``AdaRoundFakeQuantize.init_alpha``). The regulariser
Σ (1 − |2h − 1|^β) pushes every h to 0 or 1 as β is annealed (``round_loss``).

The hard weight lies exactly on the grid, so writing it back into ``W`` leaves a plain weight that
the unchanged ``UniformQuantizer`` reproduces bit for bit (round(Ŵ/s) recovers the integer code).
"""
from __future__ import annotations

import torch
from torch import nn

from vitquant.quant.uniform import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


class AdaRound(nn.Module):
    """Soft-rounding stand-in for a weight ``UniformQuantizer`` (see module docstring)."""

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(base, UniformQuantizer) or not bool(base.initialized):
            raise TypeError(f"AdaRound needs an initialised UniformQuantizer weight quantizer, got "
                            f"{type(base).__name__} (initialised={bool(getattr(base, 'initialized', False))})")
        self.base = base
        w = weight.detach() / self.scale(weight)
        frac = w - torch.floor(w)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.base.expand(self.base.scale, w).detach()

    def soft_rounding(self) -> torch.Tensor:
        """h(V) ∈ [0, 1]: the amount added to ⌊W/s⌋."""
        return ((ZETA - GAMMA) * torch.sigmoid(self.alpha) + GAMMA).clamp(0, 1)

    def quantize(self, weight: torch.Tensor, hard: bool = False) -> torch.Tensor:
        s, z = self.scale(weight), self.base.expand(self.base.zero_point, weight)
        up = (self.alpha >= 0).to(weight.dtype) if hard else self.soft_rounding()
        q = torch.clamp(torch.floor(weight.detach() / s) + up + z, self.base.qmin, self.base.qmax)
        return (q - z) * s

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.quantize(weight)

    def round_loss(self, beta: float) -> torch.Tensor:
        """Σ (1 − |2h − 1|^β): zero only when every h is exactly 0 or 1."""
        return (1 - (2 * self.soft_rounding() - 1).abs().pow(beta)).sum()
