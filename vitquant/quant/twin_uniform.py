"""PTQ4ViT's twin uniform quantizer for post-Softmax and post-GELU activations.

Spec: ``specs/baselines.md`` (PTQ4ViT); details from ``hahnyuan/PTQ4ViT`` ``quant_layers/matmul.py``
(``SoSPTQSLBatchingQuantMatMul``) and ``quant_layers/linear.py``
(``PostGeluPTQSLBatchingQuantLinear``). Two uniform ranges R1, R2 share the b−1 code bits; the MSB
says which one an element uses::

    softmax:  R1 = [0, 2^(b−1)·Δ_R1),  R2 = [0, 1] with Δ_R2 = 1/2^(b−1),  Δ_R2 = 2^m·Δ_R1
              q = clamp(round(x/Δ), 0, 2^(b−1) − 1) in either range (R2 for x ≥ 2^(b−1)·Δ_R1)
    gelu:     R1 = negatives, Δ_R1 = 0.16997/2^(b−1) fixed (GELU's minimum), q ∈ [−2^(b−1), 0]
              R2 = positives, Δ_R2 searched,                                  q ∈ [0, 2^(b−1) − 1]

so a GELU code is a b-bit signed integer whose sign picks the scale, as the official
``x_pos + x_neg`` does.

Candidates (what the Hessian-guided search of ``vitquant.engines.hessian_search`` ranks; the
initial calibration here ranks them by ‖x − x̂‖²):

* softmax: m ∈ 0..``max_shift``. The official code searches the split 2^(−i), i ∈ 0..19, i.e.
  m = i and ``max_shift = 19``. It divides by (2^(b−1) − 1) where the paper writes 2^(b−1); we
  follow the paper so that Δ_R2/Δ_R1 is exactly 2^m (a shift).
* gelu: Δ_R2 = α·max(x)/(2^(b−1) − 0.5) for α = eq_alpha + i·(eq_beta − eq_alpha)/eq_n, i ∈ 0..eq_n
  (``configs/PTQ4ViT.py``: 0.01, 1.2, 100). Like the official code, the GELU ranges are not tied
  by a power of two.
"""
from __future__ import annotations

import torch

from vitquant.errors import UserError
from vitquant.quant.two_scale import TwoRegionQuantizer

MODES = ("softmax", "gelu")
GELU_MIN = 0.16997124254703522  # −min GELU(x), the official constant


class TwinUniformQuantizer(TwoRegionQuantizer):
    """Twin uniform quantizer (module docstring): ``scale_r1`` = Δ_R1, ``scale_r2`` = Δ_R2."""

    param_names = ("scale_r1", "scale_r2")

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 mode: str = "softmax", max_shift: int = 19,
                 eq_alpha: float = 0.01, eq_beta: float = 1.2, eq_n: int = 100, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if mode not in MODES:
            raise UserError(f"mode={mode!r} is not one of {MODES}")
        if self.bits < 2:
            raise UserError("a twin uniform quantizer needs at least 2 bits (flag + 1)")
        self.mode = mode
        self.max_shift = int(max_shift)
        self.eq_alpha, self.eq_beta, self.eq_n = float(eq_alpha), float(eq_beta), int(eq_n)
        self.register_buffer("scale_r1", torch.ones(1))
        self.register_buffer("scale_r2", torch.ones(1))

    @property
    def half(self) -> int:
        return 2 ** (self.bits - 1)

    def regions(self, x: torch.Tensor, scale_r1: torch.Tensor, scale_r2: torch.Tensor):
        if self.mode == "softmax":
            in_r2 = x >= self.half * scale_r1
            return in_r2, scale_r1, (0, self.half - 1), scale_r2, (0, self.half - 1)
        return x >= 0, scale_r1, (-self.half, 0), scale_r2, (0, self.half - 1)

    def candidates(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        ones = torch.ones(rows.shape[1], device=rows.device)
        if self.mode == "softmax":
            r2 = ones / self.half
            return [(r2 / 2 ** m, r2) for m in range(self.max_shift + 1)]
        r1 = ones * GELU_MIN / self.half
        init = rows.max(dim=0).values.clamp_min(1e-8) / (self.half - 0.5)
        step = (self.eq_beta - self.eq_alpha) / self.eq_n
        return [(r1, (self.eq_alpha + i * step) * init) for i in range(self.eq_n + 1)]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"
