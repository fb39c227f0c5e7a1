"""Uniform (linear) quantizer with min-max, percentile and MSE-searched clipping.

Asymmetric (RepQ-ViT/I&S-ViT ``UniformQuantizer``)::

    Δ = (u − l) / (2^b − 1),   z = round(−l / Δ)
    x̂ = (clamp(round(x / Δ) + z, 0, 2^b − 1) − z) · Δ

Symmetric: z = 0, Δ = max(|l|, |u|) / (2^(b−1) − 1), codes in [−2^(b−1), 2^(b−1) − 1].

Clipping range (l, u), chosen per tensor / channel / head:

* ``minmax``: l = min x, u = max x.
* ``percentile``: (l, u) = quantiles (1 − p, p) of x for each p in ``percentiles``; when several
  are given the one with the least ‖x − x̂‖² is kept independently per channel (RepQ-ViT searches
  {0.999, 0.9999, 0.99999} for activations, I&S-ViT a wider grid for weights).
* ``mse``: l, u = α·(min, max) for α on a grid of ``grid`` points in (0, 1], least ‖x − x̂‖²
  (the MSE-searched clipping used by PTQ4ViT-style baselines and EasyQuant).

Rounding uses a straight-through estimator, so the latent input (weights during block
reconstruction) receives gradients; the scale can be made learnable with ``make_learnable``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.select import keep
from vitquant.quant.stats import Observation, least_error, quantiles_rows
from vitquant.quant.ste import needs_grad, round_ste

INITS = ("minmax", "percentile", "mse")
Tensorish = torch.Tensor | float


def fake_quant_in_place(x: torch.Tensor, scale: Tensorish, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """(clamp(round(x/Δ) + z, qmin, qmax) − z)·Δ on one new buffer: the op-by-op graph's values, six passes
    over one tensor instead of eight allocations (evaluation, and the forward of ``LearnedStepSTE``)."""
    return torch.div(x, scale).round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)


class UniformSTE(torch.autograd.Function):
    """x̂ with the straight-through gradient, computed in place, with the values and the gradient of
    the op-by-op graph: ∂x̂/∂x = where(qmin < round(x/Δ) + z < qmax, g·Δ, 0)/Δ, the products autograd
    forms through mul, clamp (zero gradient at the bounds themselves), the STE add and div.

    ``zero=None`` means z is folded into the bounds (``lo = qmin − z``, ``hi = qmax − z``, exact for
    integral z, see ``frozen_params``): two passes fewer. Δ, lo, hi may be Python floats (per-tensor).
    Reconstruction trains weights through this on every step, so the backward keeps little:

    * per-tensor frozen bounds (Δ, lo, hi floats, z folded): nothing but x̂ itself, which the next
      matmul saves anyway. A code is at or beyond a bound exactly when x̂ equals that bound times Δ
      (codes are integers and x ↦ fl(x·Δ) is monotone and separates integers below 2²⁴), so the
      backward is ``hardtanh_backward(g·Δ/Δ, x̂, lo·Δ, hi·Δ)``: one fused pass that zeroes the
      gradient where x̂ ≤ lo·Δ or x̂ ≥ hi·Δ. Boolean masks cost here three passes (two comparisons
      and an or, each slower than a float multiply) and ``masked_fill_`` about three multiplies.
    * otherwise (per-channel bounds, non-integral z): one boolean mask of the codes at or beyond a bound.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: Tensorish, zero: torch.Tensor | None, lo: Tensorish,
                hi: Tensorish) -> torch.Tensor:
        codes = torch.div(x, scale).round_()
        ctx.scale = scale if isinstance(scale, float) else None
        if zero is None and isinstance(scale, float) and not isinstance(lo, torch.Tensor) \
                and not isinstance(hi, torch.Tensor):
            out = codes.clamp_(lo, hi).mul_(scale)
            # the bounds through the same float kernel as x̂ = codes·Δ, so equality is exact
            ctx.bounds = torch.tensor([lo, hi], dtype=out.dtype).mul_(scale).tolist()
            ctx.save_for_backward(out)
            return out
        if zero is not None:
            codes.add_(zero)
        outside = codes.le(lo).logical_or_(codes.ge(hi))
        ctx.bounds = None
        ctx.save_for_backward(outside, *(() if isinstance(scale, float) else (scale,)))
        codes.clamp_(lo, hi)
        return (codes if zero is None else codes.sub_(zero)).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.bounds is not None:
            (out,) = ctx.saved_tensors
            g = grad.mul(ctx.scale).div_(ctx.scale)
            g = torch.ops.aten.hardtanh_backward.grad_input(g, out, *ctx.bounds, grad_input=g)
            return g, None, None, None, None
        outside, *saved = ctx.saved_tensors
        scale = saved[0] if saved else ctx.scale
        return grad.mul(scale).div_(scale).masked_fill_(outside, 0.0), None, None, None, None


class LearnedStepSTE(torch.autograd.Function):
    """x̂ = (clamp(round(x/Δ) + z, qmin, qmax) − z)·Δ with a learned Δ (QDrop's activation steps, QAT
    fine-tuning of a PTQ result), in place, with the values and the gradients of the op-by-op graph (div,
    ``round_ste``, add, clamp, sub, mul) bit for bit::

        g_c = where(qmin < round(x/Δ) + z < qmax, g·Δ, 0)      (clamp: gradient 0 at the bounds)
        ∂/∂x = g_c / Δ
        ∂/∂Δ = Σ g·(clamp(round(x/Δ) + z, qmin, qmax) − z) + Σ −g_c·((x/Δ)/Δ)   (mul's term + div's term)

    with Σ the reduction to Δ's broadcast shape (``sum_to_size``, as autograd reduces a broadcast input).
    The backward recomputes the codes from x: it keeps x alone, where the graph also kept the clamp's
    input and the clamped codes, each of x's size."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int,
                qmax: int) -> torch.Tensor:
        ctx.save_for_backward(x, scale, zero)
        ctx.bounds = (qmin, qmax)
        return fake_quant_in_place(x, scale, zero, qmin, qmax)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale, zero = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        steps = x / scale
        codes = torch.round(steps).add_(zero)
        grad_codes = keep((codes > qmin).logical_and_(codes < qmax), grad * scale)
        grad_x = grad_codes / scale if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = ((grad * codes.clamp_(qmin, qmax).sub_(zero)).sum_to_size(scale.shape)
                          + (-grad_codes * (steps / scale)).sum_to_size(scale.shape))
        return grad_x, grad_scale, None, None, None


class UniformQuantizer(Quantizer):
    """Uniform fake quantizer (see module docstring for the formula)."""

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 symmetric: bool = False, init: str = "minmax",
                 percentiles: Sequence[float] = (0.999, 0.9999, 0.99999), grid: int = 100, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if init not in INITS:
            raise UserError(f"init={init!r} is not one of {INITS}")
        self.symmetric = bool(symmetric)
        self.init = init
        self.percentiles = tuple(float(p) for p in percentiles)
        self.grid = int(grid)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    # ----------------------------------------------------------------- math
    def params_for_range(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δ, z) that map the clipping range [lo, hi] onto the integer grid."""
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if self.symmetric:
            scale = torch.maximum(lo.abs(), hi.abs()) / self.qmax
            zero = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (self.qmax - self.qmin)
            scale = scale.clamp_min(1e-8)
            zero = torch.round(-lo / scale)
        return scale.clamp_min(1e-8), zero

    def fake_quant(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """x̂ = (clamp(round(x/Δ) + z, qmin, qmax) − z)·Δ with broadcastable Δ, z.

        Without autograd the same operations run in place on one buffer (evaluation is
        memory-bound: six passes over one tensor instead of eight allocations), bit-identically.
        """
        if not needs_grad(x, scale, zero):
            return fake_quant_in_place(x, scale, zero, self.qmin, self.qmax)
        if not needs_grad(scale, zero):  # only x learns (weights in reconstruction): fused STE
            return UniformSTE.apply(x, scale, zero, self.qmin, self.qmax)
        if not needs_grad(zero):  # a learned step (QDrop, QAT from a PTQ result): fused too
            return LearnedStepSTE.apply(x, scale, zero, self.qmin, self.qmax)
        q = torch.clamp(round_ste(x / scale) + zero, self.qmin, self.qmax)
        return (q - zero) * scale

    def frozen_params(self) -> tuple[torch.Tensor | float, ...] | None:
        """(Δ, qmin − z, qmax − z) for evaluation when every z is an integer, else None; memoised
        until the parameters change.

        With integral z, clamp(r + z, qmin, qmax) − z = clamp(r, qmin − z, qmax − z) exactly (small
        integers are exact in float; only the sign of a zero can differ), which saves two passes over
        the activation. Per-tensor values become Python floats: ops with 0-dim tensors are slower
        (a 0-dim clamp bound took 9× a float's time here) and give the same float32 result.
        """
        def compute():
            z, scale = self.zero_point.detach(), self.scale.detach()
            if not bool((z == torch.round(z)).all()):
                return None
            lo, hi = self.qmin - z, self.qmax - z
            if z.numel() == 1 and scale.numel() == 1:
                return float(scale), float(lo), float(hi)
            return scale, lo, hi
        return self.derived("frozen_params", (self.scale, self.zero_point), (self.bits, self.symmetric), compute)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen Δ and integral z (evaluation; reconstruction of weights or of what comes before an
        activation): z folded into the clamp bounds, in place, or the fused STE when x needs a gradient."""
        scale, zero = self.expand(self.scale, x), self.expand(self.zero_point, x)
        frozen = None if needs_grad(scale, zero) else self.frozen_params()
        if frozen is None:
            return self.fake_quant(x, scale, zero)
        step, lo, hi = (p if isinstance(p, float) else self.expand(p, x) for p in frozen)
        if needs_grad(x):
            return UniformSTE.apply(x, step, None, lo, hi)
        return torch.div(x, step).round_().clamp_(lo, hi).mul_(step)

    # ----------------------------------------------------------------- calibration
    def candidate_ranges(self, obs: Observation) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Clipping ranges to compare, each a pair of (C,) tensors (extrema: over every value seen;
        quantiles: of the row sample)."""
        lo, hi = obs.lo, obs.hi
        if self.init == "minmax":
            return [(lo, hi)]
        if self.init == "percentile":
            qs = quantiles_rows(obs.rows, [v for p in self.percentiles for v in (1.0 - p, p)])
            return list(zip(qs[::2], qs[1::2]))
        alphas = torch.linspace(1.0 / self.grid, 1.0, self.grid)
        return [(lo * a, hi * a) for a in alphas.tolist()]

    def initialize(self, obs: Observation) -> None:
        candidates = [self.params_for_range(lo, hi) for lo, hi in self.candidate_ranges(obs)]
        sample = self.search_rows(obs.rows)
        scale, zero = least_error(candidates,
                                  lambda s, z: (self.fake_quant(sample, s, z) - sample).pow(2).mean(0))
        self.set_param("scale", scale)
        self.set_param("zero_point", zero)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, symmetric={self.symmetric}, init={self.init}"
