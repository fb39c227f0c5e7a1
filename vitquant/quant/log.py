"""Logarithmic quantizers for post-Softmax attention probabilities (values in [0, 1]).

With ``k`` levels per octave (k = 1: log2, FQ-ViT/PTQ-log2; k = 2: log√2, RepQ-ViT)::

    q  = clamp(round(−k · log2(x / Δ)), 0, 2^b − 1)
    x̂ = Δ · 2^(−q / k),    and x̂ = 0 where round(−k · log2(x / Δ)) ≥ 2^b

For k = 2 this equals RepQ-ViT's ``Δ · 2^(−⌈q/2⌉) · (1 + (√2 − 1)·(q mod 2))``, written in the form
that back-propagates through the straight-through rounding. Δ is the ``p``-quantile of x for each
p in ``percentiles`` (RepQ-ViT: {0.999, 0.9999, 0.99999}) picked by least ‖x − x̂‖²; ``1.0``
means the maximum and ``fixed_scale`` pins Δ (FQ-ViT's Log-Int-Softmax uses Δ = 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.select import keep
from vitquant.quant.stats import Observation, least_error, quantiles_rows
from vitquant.quant.ste import round_ste


class LogQuantizer(Quantizer):
    """log2 (``levels_per_octave=1``) or log√2 (``levels_per_octave=2``) fake quantizer."""

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 levels_per_octave: int = 1, percentiles: Sequence[float] = (0.999, 0.9999, 0.99999),
                 fixed_scale: float | None = None, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if levels_per_octave not in (1, 2):
            raise UserError(f"levels_per_octave={levels_per_octave} must be 1 (log2) or 2 (log√2)")
        self.levels_per_octave = int(levels_per_octave)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.fixed_scale = fixed_scale
        self.register_buffer("scale", torch.ones(1))

    def fake_quant(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        k, levels = self.levels_per_octave, 2 ** self.bits
        code = round_ste(-k * torch.log2(x.clamp_min(torch.finfo(x.dtype).tiny) / scale))
        x_hat = scale * torch.pow(2.0, -torch.clamp(code, 0, levels - 1) / k)
        return keep((code.detach() >= levels).logical_not_(), x_hat)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake_quant(x, self.expand(self.scale, x))

    def initialize(self, obs: Observation) -> None:
        rows = obs.rows
        if self.fixed_scale is not None:
            self.set_param("scale", torch.full((rows.shape[1],), float(self.fixed_scale)))
            return
        candidates = [(q.clamp_min(1e-8),) for q in quantiles_rows(rows, self.percentiles)]
        sample = self.search_rows(rows)
        (scale,) = least_error(candidates, lambda s: (self.fake_quant(sample, s) - sample).pow(2).mean(0))
        self.set_param("scale", scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, levels_per_octave={self.levels_per_octave}"
