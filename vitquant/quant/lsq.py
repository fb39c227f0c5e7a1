"""LSQ: learned step-size quantizer (Esser et al., ICLR'20), as used by VVTQ (spec ``vvtq.md``).

Forward, with learnable step ``s`` and (optionally learnable) offset ``β``::

    x̂ = round_ste(clamp((x − β) / s, Q_N, Q_P)) · s + β

signed: Q_N = −2^(b−1), Q_P = 2^(b−1) − 1;  unsigned: Q_N = 0, Q_P = 2^b − 1.
Through the straight-through rounding, ∂x̂/∂s = round(v) − v inside the range and Q_N or Q_P
outside (v = (x−β)/s), LSQ's step gradient. The step's gradient is multiplied by ``g``:

* ``lsq``:    g = 1/√(N·Q_P)          (LSQ; N = elements per step: weights per scale, activations per sample)
* ``l1``:     g = 1/√(Σ|x|·Q_P)       (official VVTQ weight quantizer, Σ over the elements of one step)
* ``sqrt_n``: g = 1/(√N·Q_P)          (official VVTQ activation quantizer)
* ``none``:   g = 1

Initialisation (``init``):

* ``mse`` (weights, VVTQ ``quantize_by_mse``): s₀ = max|w|/Q_P, then s ← ⟨w, q⟩/⟨q, q⟩ with
  q = round(clamp(w/s, Q_N, Q_P)) until the relative change is below 1e−5 (least squares in s
  for fixed codes, alternated with the codes: a Lloyd iteration on the error ‖w − s·q‖²).
* ``mean_abs`` (activations, LSQ): s = 2·mean|x − β|/√Q_P, with β = min(x) when the offset is
  learnable (unsigned post-GELU: GELU's minimum ≈ −0.17 maps to code 0) and 0 otherwise.

Per-head scales (``granularity: head``) quantize q, k, v and attention probabilities of shape
(B, heads, N, D) with one step per head; per-channel weights use one step per output row.

Training goes through ``LSQSTE``, one autograd node that saves only x: the op-by-op graph saved
three more tensors of x's size per quantizer (x − β, v and the rounded codes), 3.8× the float
model's saved activations on ViT-T, and QAT on CPU at 64 crops of 224 px peaked at 11.5 GB.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.select import keep
from vitquant.quant.stats import Observation
from vitquant.quant.ste import grad_scale

GRAD_SCALES = ("lsq", "l1", "sqrt_n", "none")
INITS = ("mse", "mean_abs")
ROLES = ("weight", "activation")
MSE_TOL, MSE_MAX_ITERS = 1e-5, 100


class LSQSTE(torch.autograd.Function):
    """x̂ = round(clamp((x − β)/s, Q_N, Q_P))·s + β in place, with the values and the gradients of the
    op-by-op graph (sub, div, clamp, ``round_ste``, mul, add), bit for bit::

        g_v = where(Q_N < v < Q_P, g·s, 0)                  (clamp: gradient 0 at the bounds)
        ∂/∂x = g_v / s
        ∂/∂s = Σ g·round(clamp(v)) + Σ −g_v·(v / s)          (mul's term + div's term, v = (x − β)/s)
        ∂/∂β = Σ g + Σ −g_v / s                              (add's term + sub's term)

    with Σ the reduction to the parameter's broadcast shape (``sum_to_size``, as autograd reduces a
    broadcast input). The backward recomputes v from x: it keeps x alone, where the graph kept x − β,
    v and the codes, each of x's size — most of a QAT step's memory. x may be bf16 (autocast): the
    arithmetic is float32, as in the graph, which converted x first; the output is float32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmin: int,
                qmax: int) -> torch.Tensor:
        ctx.save_for_backward(x, scale, offset)
        ctx.bounds = (qmin, qmax)
        return torch.sub(x.float(), offset).div_(scale).clamp_(qmin, qmax).round_().mul_(scale).add_(offset)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale, offset = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        need_x, need_scale, need_offset = ctx.needs_input_grad[:3]
        v = torch.sub(x.float(), offset).div_(scale)
        grad_v = keep((v > qmin).logical_and_(v < qmax), grad * scale)
        grad_x = grad_v / scale if need_x or need_offset else None
        grad_scale = grad_offset = None
        if need_scale:
            codes = v.clamp(qmin, qmax).round_()
            grad_scale = (grad * codes).sum_to_size(scale.shape) + (-grad_v * (v / scale)).sum_to_size(scale.shape)
        if need_offset:
            grad_offset = grad.sum_to_size(offset.shape) + (-grad_x).sum_to_size(offset.shape)
        return grad_x.to(x.dtype) if need_x else None, grad_scale, grad_offset, None, None


class LSQQuantizer(Quantizer):
    """Learned-step fake quantizer (see module docstring for the formulas)."""

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1, role: str = "activation",
                 signed: bool = True, learn_offset: bool = False, grad_scale: str = "lsq",
                 init: str | None = None, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if role not in ROLES:
            raise UserError(f"role={role!r} is not one of {ROLES}")
        if grad_scale not in GRAD_SCALES:
            raise UserError(f"grad_scale={grad_scale!r} is not one of {GRAD_SCALES}")
        init = init or ("mse" if role == "weight" else "mean_abs")
        if init not in INITS:
            raise UserError(f"init={init!r} is not one of {INITS}")
        self.role, self.signed, self.learn_offset = role, bool(signed), bool(learn_offset)
        self.grad_scale_mode, self.init = grad_scale, init
        self.scale = nn.Parameter(torch.ones(1))
        if self.learn_offset:
            self.offset = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("offset", torch.zeros(1))

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    # ----------------------------------------------------------------- math
    def elements_per_step(self, x: torch.Tensor) -> float:
        """N of the gradient scale: elements sharing one step (activations: per sample)."""
        n = x.numel() / max(self.scale.numel(), 1)
        return n / x.shape[0] if self.role == "activation" and x.dim() > 1 else n

    def step_grad_scale(self, x: torch.Tensor) -> float:
        q_p = float(self.qmax)
        if self.grad_scale_mode == "lsq":
            return 1.0 / math.sqrt(self.elements_per_step(x) * q_p)
        if self.grad_scale_mode == "l1":
            l1 = float(x.detach().abs().sum()) / max(self.scale.numel(), 1)
            return 1.0 / math.sqrt(max(l1, 1e-12) * q_p)
        if self.grad_scale_mode == "sqrt_n":
            return 1.0 / (math.sqrt(self.elements_per_step(x)) * q_p)
        return 1.0

    def codes(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Integer codes q = clamp(round((x − β)/s), Q_N, Q_P) (no gradient)."""
        return torch.clamp(torch.round((x - offset) / scale), self.qmin, self.qmax)

    def integer_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of ``x`` under the current parameters (oscillation tracking, regularizer bins)."""
        return self.codes(x, self.expand(self.scale, x).abs(), self.expand(self.offset, x))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Computed in float32 (under bf16 autocast, x/s would round before ``round`` does)."""
        s = self.expand(grad_scale(self.scale, self.step_grad_scale(x.float())), x).abs().clamp_min(1e-8)
        return LSQSTE.apply(x, s, self.expand(self.offset, x), self.qmin, self.qmax).to(x.dtype)

    # ----------------------------------------------------------------- calibration
    def mse_scale(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-column least-squares step by alternating codes and s = ⟨w,q⟩/⟨q,q⟩ (VVTQ)."""
        scale = (rows.abs().amax(0) / self.qmax).clamp_min(1e-8)
        for _ in range(MSE_MAX_ITERS):
            q = self.codes(rows, scale, torch.zeros_like(scale))
            new = ((rows * q).sum(0) / (q * q).sum(0).clamp_min(1e-12)).clamp_min(1e-8)
            done = ((new - scale).abs() / scale).max() < MSE_TOL
            scale = new
            if done:
                break
        return scale

    def initialize(self, obs: Observation) -> None:
        rows = obs.rows
        offset = obs.lo.clamp_max(0.0) if self.learn_offset else torch.zeros(rows.shape[1])
        offset = offset.to(rows)
        if self.init == "mse":
            scale = self.mse_scale(rows - offset)
        else:
            scale = (2 * (rows - offset).abs().mean(0) / math.sqrt(self.qmax)).clamp_min(1e-8)
        self.set_param("scale", scale)
        self.set_param("offset", offset)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "signed": self.signed}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.signed = bool(state.get("signed", self.signed))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, role={self.role}, signed={self.signed}, learn_offset={self.learn_offset}, "
                f"grad_scale={self.grad_scale_mode}, init={self.init}")
