"""Learned activation scales during block reconstruction (QDrop's LSQ step), as a ``ReconHook``.

The step size Δ of every enabled activation ``UniformQuantizer`` inside the unit becomes a
parameter, trained with the reconstruction loss through the quantizer's straight-through rounding
(∂x̂/∂Δ as the op-by-op graph gives it), Adam at ``lr`` with cosine annealing (QDrop: 4e-5).
"""
from __future__ import annotations

from torch import nn

from vitquant.engines.reconstruction import ReconHook
from vitquant.nn.site import iter_sites
from vitquant.quant.uniform import UniformQuantizer


def learnable_act_scales(unit: nn.Module) -> list[nn.Parameter]:
    """Make the enabled activation ``UniformQuantizer`` scales of ``unit`` Parameters (LSQ step)."""
    return [p for _, s in iter_sites(unit)
            if s.enabled and not s.is_weight and isinstance(s.quantizer, UniformQuantizer)
            for p in s.quantizer.make_learnable("scale")]


class LearnActScales(ReconHook):
    """Train the unit's activation scales (module docstring)."""

    def __init__(self, lr: float = 4e-5) -> None:
        self.lr = float(lr)

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        return [{"params": learnable_act_scales(unit), "lr": self.lr, "schedule": "cosine"}]
