"""I&S-ViT's shift-uniform-log2 quantizer (SULQ) for post-Softmax attention probabilities.

Spec: ``specs/isvit.md`` §1.2; official code ``zysxmu/IaS-ViT`` ``quant/quantizer.py``, class
``LogSqrt2Quantizer`` (misleadingly named: it is SULQ). The input is shifted by η, moved to the
log2 domain and quantized *uniformly* there between m and M::

    t  = log2(x + η)
    Δ  = (M − m) / S
    q  = clamp(round((t − m) / Δ), 0, S)
    x̂ = 2^round(q·Δ + m) − η            (round_exponent=True, the official code)
    x̂ = 2^(q·Δ + m) − η                 (round_exponent=False, uniform log-domain levels)

Two details of the official code are reproduced on purpose:

* **Grid.** The forward pass uses S = 2^b, i.e. 2^b + 1 codes (0..2^b), while the η search of
  the calibration uses S = 2^b − 1 (codes 0..2^b − 1). ``official_grid=False`` uses S = 2^b − 1
  in both, a true b-bit code.
* **Exponent rounding.** The de-quantized exponent q·Δ + m is rounded to an integer, so every
  output is a power of two minus η (bit-shift friendly). The uniform log-domain grid is then
  collapsed onto the integers between round(m) and round(M): with x ∈ [0, 1], at most
  ⌈|log2 η|⌉ + 1 distinct levels remain *at any bit-width* (η = 0.01: 8 levels, spec "Measured
  property": 8–11 levels at 3, 4, 6 and 8 bits, higher MSE than log√2). ``round_exponent=False``
  keeps the S + 1 levels 2^(q·Δ+m) − η so the extra resolution can be measured.

Calibration (official, on the tensor it is given — the I&S-ViT recipe passes calib[:64]): for each
η in ``shifts`` set m = min t, M = max t (over the whole tensor, per channel/head when the
granularity asks for it), quantize with S = 2^b − 1 and the exponent treatment of
``round_exponent``, and keep the η with least ‖x − x̂‖² (first on ties, like the official strict
``<``). η, m and M are buffers: frozen during reconstruction (the official code sets
``requires_grad=False`` on η and keeps m, M as plain attributes). Rounding goes through
``round_ste`` so gradients reach the input.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.stats import Observation, least_error
from vitquant.quant.ste import needs_grad, round_ste

DEFAULT_SHIFTS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1.0)
LN2 = math.log(2.0)


def sulq_codes(x: torch.Tensor, shift: torch.Tensor, log_min: torch.Tensor,
               delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + η, code) with code = round((log2(x + η) − m)/Δ) before clamping, on one new buffer."""
    shifted = x + shift
    return shifted, torch.log2(shifted).sub_(log_min).div_(delta).round_()


def sulq_power(clamped: torch.Tensor, log_min: torch.Tensor, delta: torch.Tensor,
               round_exponent: bool) -> torch.Tensor:
    """2^e with e = [round](code·Δ + m), in place on the clamped codes.

    A rounded e is an integer, whose power of two ``exp2`` gives exactly, like ``pow(2, e)``, at a
    seventh of its time here (``pow`` with a scalar base takes the general path); an unrounded e
    keeps ``pow``, whose last bit ``exp2`` does not always reproduce."""
    exponent = clamped.mul_(delta).add_(log_min)
    if round_exponent:
        return torch.exp2(exponent.round_(), out=exponent)
    return torch.pow(2.0, exponent, out=exponent)


class SULQSTE(torch.autograd.Function):
    """x̂ = 2^e − η with the values and the gradient of the op-by-op graph (``round_ste`` twice)::

        ∂x̂/∂x = where(0 < code < S, g·(2^e·ln2)·Δ, 0) / Δ / ((x + η)·ln2)

    — the products autograd forms through pow, the STE adds, mul, clamp (zero gradient at the bounds
    themselves), div and log2, in that order. Saves x + η and the gated power where(0 < code < S, 2^e, 0)
    instead of a dozen float intermediates (post-Softmax is the largest activation of a block). The gate
    is ``hardtanh_backward(2^e, code, 0, S)``, one fused float pass written over the spent codes: a boolean
    mask would cost two comparisons, an or, and a ``masked_fill_`` in the backward, each slower than a
    float multiply. Gating 2^e before the products instead of the product after them changes only the
    sign of some zeros."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor, log_min: torch.Tensor, delta: torch.Tensor,
                steps: int, round_exponent: bool) -> torch.Tensor:
        shifted, code = sulq_codes(x, shift, log_min, delta)
        power = sulq_power(code.clamp(0, steps), log_min, delta, round_exponent)
        gated = torch.ops.aten.hardtanh_backward.grad_input(power, code, 0.0, float(steps), grad_input=code)
        ctx.save_for_backward(shifted, gated, delta)
        return power.sub_(shift)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shifted, gated, delta = ctx.saved_tensors
        g = gated.mul(LN2).mul_(grad).mul_(delta).div_(delta)
        return g.div_(shifted * LN2), None, None, None, None, None


class SULQuantizer(Quantizer):
    """Shift-uniform-log2 fake quantizer (see module docstring): buffers ``shift`` (η), ``log_min``
    (m) and ``log_max`` (M)."""

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 shifts: Sequence[float] = DEFAULT_SHIFTS, round_exponent: bool = True,
                 official_grid: bool = True, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if not shifts or min(shifts) <= 0:
            raise UserError(f"shifts={list(shifts)} must be a non-empty list of positive values")
        self.shifts = tuple(float(s) for s in shifts)
        self.round_exponent = bool(round_exponent)
        self.official_grid = bool(official_grid)
        self.register_buffer("shift", torch.ones(1))
        self.register_buffer("log_min", torch.zeros(1))
        self.register_buffer("log_max", torch.ones(1))

    @property
    def steps(self) -> int:
        """S of the forward grid: 2^b (official, codes 0..2^b) or 2^b − 1 (b-bit codes)."""
        return 2 ** self.bits if self.official_grid else 2 ** self.bits - 1

    def fake_quant(self, x: torch.Tensor, shift: torch.Tensor, log_min: torch.Tensor,
                   log_max: torch.Tensor, steps: int) -> torch.Tensor:
        """x̂ for broadcastable η, m, M on the grid Δ = (M − m)/S, codes 0..S: in place without
        autograd, through ``SULQSTE`` when only x needs a gradient, else the op-by-op graph."""
        delta = ((log_max - log_min) / steps).clamp_min(1e-8)
        if needs_grad(shift, log_min, log_max):  # learnable η, m or M: the op-by-op graph
            code = torch.clamp(round_ste((torch.log2(x + shift) - log_min) / delta), 0, steps)
            exponent = code * delta + log_min
            return torch.pow(2.0, round_ste(exponent) if self.round_exponent else exponent) - shift
        if needs_grad(x):
            return SULQSTE.apply(x, shift, log_min, delta, steps, self.round_exponent)
        code = sulq_codes(x, shift, log_min, delta)[1]
        return sulq_power(code.clamp_(0, steps), log_min, delta, self.round_exponent).sub_(shift)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake_quant(x, self.expand(self.shift, x), self.expand(self.log_min, x),
                               self.expand(self.log_max, x), self.steps)

    def initialize(self, obs: Observation) -> None:
        lo, hi = obs.lo, obs.hi  # over every value; log2 is monotone: m, M from min, max
        sample = self.search_rows(obs.rows)
        candidates = [(torch.full_like(lo, eta), torch.log2(lo + eta), torch.log2(hi + eta)) for eta in self.shifts]
        calib_steps = 2 ** self.bits - 1  # the official η search uses 2^b − 1, unlike its forward
        shift, log_min, log_max = least_error(
            candidates, lambda e, m, M: (self.fake_quant(sample, e, m, M, calib_steps) - sample).pow(2).mean(0))
        self.set_param("shift", shift)
        self.set_param("log_min", log_min)
        self.set_param("log_max", log_max)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "round_exponent": self.round_exponent,
                "official_grid": self.official_grid}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.round_exponent = bool(state["round_exponent"])
        self.official_grid = bool(state["official_grid"])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, round_exponent={self.round_exponent}, "
                f"official_grid={self.official_grid}")
