"""TSPTQ-ViT's outlier-aware two-scaled scaling factors (O-2SF) for LayerNorm inputs.

Spec: ``specs/tsptq.md`` ("our implementable reading"; the paper has no code). Normal channels
share one asymmetric layer scale S and zero point z; outlier channels use S·2^n, flagged by one
bit per channel (the ``outlier`` buffer, kept in ``state_dict``)::

    x̂ = (clamp(round(x / S_c) + z, 0, 2^b − 1) − z) · S_c,   S_c = S·2^(n·flag_c)

Calibration, on the LayerNorm input's (tokens, channels) view:

* flag_c = range_c > ``outlier_ratio`` · median_c(range_c), range_c = max_c − min_c (the residual
  stream's outlier channels reach ~40× the median [notes]);
* S, z: min-max asymmetric uniform over the normal channels only (range widened to include 0);
* n ∈ 1..``max_shift``: one per layer, the least total ‖x − x̂‖² over the outlier channels
  (n = 0 when no channel is an outlier).

It is FQ-ViT's power-of-two-factor grid (``ptf.py``) with exponents restricted to {0, n}.
"""
from __future__ import annotations

import torch

from vitquant.quant.ptf import PowerOfTwoChannelQuantizer
from vitquant.quant.stats import Observation, least_error


class OutlierTwoScaleQuantizer(PowerOfTwoChannelQuantizer):
    """O-2SF: layer scale ``scale``/``zero_point``, per-channel ``outlier`` flags, layer ``shift`` n."""

    def __init__(self, bits: int, channel_dim: int = -1, outlier_ratio: float = 4.0, max_shift: int = 6,
                 **kw) -> None:
        super().__init__(bits, channel_dim, **kw)
        self.outlier_ratio = float(outlier_ratio)
        self.max_shift = int(max_shift)
        self.register_buffer("outlier", torch.zeros(1, dtype=torch.bool))
        self.register_buffer("shift", torch.zeros(1))

    def exponents(self) -> torch.Tensor:
        return self.shift * self.outlier

    def initialize(self, obs: Observation) -> None:
        rows, lo, hi = obs.rows, obs.lo, obs.hi
        span = hi - lo
        outlier = span > self.outlier_ratio * span.median()
        lo_n, hi_n = lo[~outlier].min().clamp_max(0.0), hi[~outlier].max().clamp_min(0.0)
        scale = ((hi_n - lo_n) / self.qmax).clamp_min(1e-8)
        self.set_param("scale", scale.reshape(1))
        self.set_param("zero_point", torch.round(-lo_n / scale).reshape(1))
        self.set_param("outlier", outlier)
        if not bool(outlier.any()):
            self.set_param("shift", torch.zeros(1, device=rows.device))
            return
        flags = outlier.float()
        candidates = [(torch.full((1,), float(n), device=rows.device),) for n in range(1, self.max_shift + 1)]
        sample = self.search_rows(rows)
        (shift,) = least_error(candidates,
                               lambda n: self.channel_errors(sample, n * flags)[outlier].sum().reshape(1))
        self.set_param("shift", shift)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, outlier_ratio={self.outlier_ratio}, max_shift={self.max_shift}"
