"""FQ-ViT's Power-of-Two Factor (PTF) quantizer for LayerNorm inputs, and its shared base.

Spec: ``specs/baselines.md`` (FQ-ViT); details from ``megvii-research/FQ-ViT``
``models/ptq/observer/ptf.py``. The residual stream entering a LayerNorm has a few channels with a
far larger range than the rest. One layer scale s and zero point z are shared by all channels;
each channel c multiplies s by a power of two 2^(e_c), so integer LayerNorm only needs shifts::

    x̂ = (clamp(round(x / (s·2^e_c)) + z, 0, 2^b − 1) − z) · s·2^e_c

PTF (FQ-ViT, asymmetric uint as ``BIT_TYPE_A = uint8``):

    scale8 = (max_c max − min_c min) / (2^b − 1)     (global min/max over channels)
    z      = clamp(−round(min / scale8), 0, 2^b − 1)  (from scale8, shared by every factor)
    s      = scale8 / 2^K,   e_c ∈ {0..K} (K = ``max_factor`` = 3: s, 2s, 4s, 8s)

each channel picking the e_c with the least ‖x_c − x̂_c‖² (ties → the smaller factor, as the
official ``score.index(min(score))``). TSPTQ-ViT's O-2SF (``outlier_two_scale.py``) is the same
grid with e_c ∈ {0, n}.
"""
from __future__ import annotations

import torch

from vitquant.quant.base import Quantizer
from vitquant.quant.stats import Observation, least_error
from vitquant.quant.ste import round_ste


class PowerOfTwoChannelQuantizer(Quantizer):
    """Asymmetric uniform grid with one layer scale/zero point and a per-channel power-of-two factor.

    Subclasses set ``scale``, ``zero_point`` at calibration and say how the exponents are stored.
    """

    def __init__(self, bits: int, channel_dim: int = -1, **kw) -> None:
        super().__init__(bits, "channel", channel_dim, **kw)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def exponents(self) -> torch.Tensor:  # pragma: no cover - abstract
        """Per-channel exponent e_c, shape (C,)."""
        raise NotImplementedError

    def fake_quant(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   exponent: torch.Tensor) -> torch.Tensor:
        step = scale * torch.pow(2.0, exponent)
        return (torch.clamp(round_ste(x / step) + zero, 0, self.qmax) - zero) * step

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake_quant(x, self.scale, self.zero_point, self.expand(self.exponents(), x))

    def channel_errors(self, rows: torch.Tensor, exponent: torch.Tensor, scale: torch.Tensor | None = None,
                       zero: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel ‖x_c − x̂_c‖² mean of a (rows, C) view under exponents ``exponent``."""
        scale = self.scale if scale is None else scale
        zero = self.zero_point if zero is None else zero
        return (self.fake_quant(rows, scale, zero, exponent) - rows).pow(2).mean(0)


class PowerOfTwoFactorQuantizer(PowerOfTwoChannelQuantizer):
    """FQ-ViT PTF: ``alpha`` (per-channel factor exponent in 0..``max_factor``)."""

    def __init__(self, bits: int, channel_dim: int = -1, max_factor: int = 3, **kw) -> None:
        super().__init__(bits, channel_dim, **kw)
        self.max_factor = int(max_factor)
        self.register_buffer("alpha", torch.zeros(1))

    def exponents(self) -> torch.Tensor:
        return self.alpha

    def initialize(self, obs: Observation) -> None:
        rows = obs.rows
        lo, hi = obs.lo.min(), obs.hi.max()
        scale_top = ((hi - lo) / self.qmax).clamp_min(torch.finfo(torch.float32).eps)
        zero = torch.clamp(-torch.round(lo / scale_top), 0, self.qmax)
        self.set_param("scale", (scale_top / 2 ** self.max_factor).reshape(1))
        self.set_param("zero_point", zero.reshape(1))
        ones = torch.ones(rows.shape[1], device=rows.device)
        candidates = [(a * ones,) for a in range(self.max_factor + 1)]
        sample = self.search_rows(rows)
        (alpha,) = least_error(candidates, lambda e: self.channel_errors(sample, e))
        self.set_param("alpha", alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_factor={self.max_factor}"
