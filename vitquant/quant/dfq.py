"""Dynamic Focusing Quantizer (AIQViT, Jiang et al. AAAI'25; ``specs/aiqvit.md`` DFQ) for post-Softmax.

Instead of spreading levels logarithmically over [0, 1], DFQ *focuses* 2^b uniform levels on the
interval [a, c] that matters most for this layer and clamps everything outside it::

    Δ = (c − a) / (2^b − 1)
    x̂ = a + Δ · clamp(round((x − a) / Δ), 0, 2^b − 1)          (x < a → a, x > c → c)

With ``zero_level`` the lowest code is an exact zero instead of a and the other 2^b − 1 codes are
uniform on [a, c] (Δ = (c − a)/(2^b − 2)); x < a/2 maps to 0. This keeps the many near-zero
attention probabilities from all being lifted to a.

Interval choice (our reading; the paper does not say how the interval is found): every pair
(a, c) with a ∈ {0} ∪ {quantile_p(x) : p ∈ ``lower_quantiles``} and c ∈ {quantile_p(x) : p ∈
``upper_quantiles``} (1.0 = the maximum) is tried and the one with the least quantization MSE
‖x − x̂‖² of the calibration tensor is kept, per layer (or per head). The spec's ideal criterion is
the block-output error; we use the tensor MSE because a quantizer initialises from its tensor
alone inside ``init_ranges``, which keeps DFQ a drop-in quantizer for any method
(``quantizer@method.quantizers.post_softmax=dfq``), and the reconstruction stage that follows
then adapts the rest of the block to the chosen interval. The chosen intervals are buffers
(``lower``, ``upper``) so they are in the checkpoint; ``intervals`` collects them for logging.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.select import keep
from vitquant.quant.stats import Observation, least_error, quantiles_rows
from vitquant.quant.ste import round_ste


class DynamicFocusingQuantizer(Quantizer):
    """Uniform levels on a searched interval [a, c], values outside clamped (module docstring)."""

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 lower_quantiles: Sequence[float] = (0.5, 0.9),
                 upper_quantiles: Sequence[float] = (0.99, 0.999, 0.9999, 1.0),
                 zero_level: bool = False, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if zero_level and self.bits < 2:
            raise UserError("zero_level needs bits >= 2 (one code is the zero)")
        for p in (*lower_quantiles, *upper_quantiles):
            if not 0.0 <= float(p) <= 1.0:
                raise UserError(f"quantile {p} is not in [0, 1]")
        self.lower_quantiles = tuple(float(p) for p in lower_quantiles)
        self.upper_quantiles = tuple(float(p) for p in upper_quantiles)
        self.zero_level = bool(zero_level)
        self.register_buffer("lower", torch.zeros(1))
        self.register_buffer("upper", torch.ones(1))

    def fake_quant(self, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        steps = 2 ** self.bits - (2 if self.zero_level else 1)
        step = ((upper - lower) / steps).clamp_min(1e-12)
        x_hat = lower + step * torch.clamp(round_ste((x - lower) / step), 0, steps)
        if self.zero_level:
            x_hat = keep((x.detach() < lower / 2).logical_not_(), x_hat)
        return x_hat

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake_quant(x, self.expand(self.lower, x), self.expand(self.upper, x))

    def candidate_intervals(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every (a, c) of the grid with a < c, each a pair of (C,) tensors."""
        zero = torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
        qs = quantiles_rows(rows, [*self.lower_quantiles, *self.upper_quantiles])
        lows, highs = [zero, *qs[: len(self.lower_quantiles)]], qs[len(self.lower_quantiles):]
        # a ≥ c would be an empty interval: fall back to [0, c] there
        return [(torch.where(lo < hi, lo, zero), hi) for lo in lows for hi in highs]

    def initialize(self, obs: Observation) -> None:
        rows = obs.rows
        sample = self.search_rows(rows)
        error = lambda lo, hi: (self.fake_quant(sample, lo, hi) - sample).pow(2).mean(0)  # noqa: E731
        lower, upper = least_error(self.candidate_intervals(rows), error)
        self.set_param("lower", lower)
        self.set_param("upper", upper)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "zero_level": self.zero_level}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.zero_level = bool(state.get("zero_level", False))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, zero_level={self.zero_level}"


def intervals(model: nn.Module) -> dict[str, list[float]]:
    """``{site name: [a, c]}`` of every initialised DFQ in ``model`` (per-head/channel: the means)."""
    return {path.removesuffix(".quantizer").removesuffix("_site"): [float(q.lower.mean()), float(q.upper.mean())]
            for path, q in model.named_modules()
            if isinstance(q, DynamicFocusingQuantizer) and bool(q.initialized)}
