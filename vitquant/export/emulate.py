"""Float emulation, in ONNX ops, of quantizers with no integer form (log2/log√2, SULQ, two-region).

These sites stay float in the graph — no integer GEMM reads them — but computing the same x̂ as the
fake quantizer keeps the exported model's accuracy that of the fake-quant model. log2 is written as
ln(·)/ln 2 (ONNX has no Log2), so values at rounding boundaries may differ from torch in rare cases.
"""
from __future__ import annotations

import numpy as np
import torch

from vitquant.export.graph import LN2, GraphBuilder
from vitquant.quant.log import LogQuantizer
from vitquant.quant.sulq import SULQuantizer
from vitquant.quant.twin_uniform import TwinUniformQuantizer
from vitquant.quant.two_scale import TwoRegionQuantizer, TwoScaleQuantizer


def params(g: GraphBuilder, q, name: str, rank: int, hint: str) -> str:
    values = getattr(q, name).detach().float().cpu().numpy().reshape(-1)
    axis = None if values.size == 1 else q.axis % rank
    return g.broadcast_const(values, axis, rank, f"{hint}_{name}")


def emulate_log(g: GraphBuilder, x: str, q: LogQuantizer, rank: int, hint: str) -> str:
    """code = round(−k·log2(max(x, tiny)/Δ)); x̂ = Δ·2^(−clip(code, 0, L−1)/k), 0 where code ≥ L."""
    k, levels = q.levels_per_octave, 2 ** q.bits
    scale = params(g, q, "scale", rank, hint)
    ratio = g.op("Div", [g.op("Max", [x, g.const(np.finfo(np.float32).tiny)]), scale])
    code = g.op("Round", [g.op("Mul", [g.op("Log", [ratio]), g.const(-k / LN2)])], f"{hint}_code")
    clipped = g.op("Clip", [code, g.const(0.0), g.const(float(levels - 1))])
    value = g.op("Mul", [g.op("Pow", [g.const(2.0), g.op("Mul", [clipped, g.const(-1.0 / k)])]), scale])
    overflow = g.op("GreaterOrEqual", [code, g.const(float(levels))])
    return g.op("Where", [overflow, g.const(0.0), value], f"{hint}_log")


def emulate_sulq(g: GraphBuilder, x: str, q: SULQuantizer, rank: int, hint: str) -> str:
    """code = clip(round((log2(x + η) − m)/Δ), 0, S); e = code·Δ + m (rounded); x̂ = 2^e − η."""
    shift, log_min = params(g, q, "shift", rank, hint), params(g, q, "log_min", rank, hint)
    lo = q.log_min.detach().float().cpu().numpy().reshape(-1)
    hi = q.log_max.detach().float().cpu().numpy().reshape(-1)
    delta_values = np.maximum((hi - lo) / q.steps, 1e-8).astype(np.float32)
    delta = g.broadcast_const(delta_values, None if delta_values.size == 1 else q.axis % rank, rank, f"{hint}_delta")
    t = g.op("Div", [g.op("Log", [g.op("Add", [x, shift])]), g.const(LN2)])
    code = g.op("Clip", [g.op("Round", [g.op("Div", [g.op("Sub", [t, log_min]), delta])]),
                         g.const(0.0), g.const(float(q.steps))])
    exponent = g.op("Add", [g.op("Mul", [code, delta]), log_min])
    if q.round_exponent:
        exponent = g.op("Round", [exponent])
    return g.op("Sub", [g.op("Pow", [g.const(2.0), exponent]), shift], f"{hint}_sulq")


def region_threshold(q: TwoRegionQuantizer, s1: torch.Tensor) -> torch.Tensor:
    """Smallest value in the coarse region: twin-uniform softmax 2^(b−1)·Δ_R1, GELU 0, V-2SF (hi₁+1)·S₁."""
    if isinstance(q, TwinUniformQuantizer):
        return q.half * s1 if q.mode == "softmax" else torch.zeros_like(s1)
    if isinstance(q, TwoScaleQuantizer):
        return q.boundary(s1)
    raise TypeError(f"no region threshold known for {type(q).__name__}")


def emulate_two_region(g: GraphBuilder, x: str, q: TwoRegionQuantizer, rank: int, hint: str) -> str:
    """x̂ = where(x ≥ B, clip(round(x/S₂), range₂)·S₂, clip(round(x/S₁), range₁)·S₁)."""
    shape = [1] * rank
    if q.axis is not None and q.params()[0].numel() > 1:
        shape[q.axis % rank] = q.params()[0].numel()
    probe = torch.zeros(shape)
    params = tuple(q.expand(p.detach().float(), probe) for p in q.params())
    _, s1, range1, s2, range2 = q.regions(probe, *params)

    def const(t: torch.Tensor, name: str) -> str:
        return g.const(np.broadcast_to(t.detach().cpu().numpy(), shape).astype(np.float32), f"{hint}_{name}")

    def region(scale: str, bounds: tuple[int, int]) -> str:
        code = g.op("Clip", [g.op("Round", [g.op("Div", [x, scale])]), g.const(float(bounds[0])),
                             g.const(float(bounds[1]))])
        return g.op("Mul", [code, scale])

    step1, step2 = const(s1, "s1"), const(s2, "s2")
    flag = g.op("GreaterOrEqual", [x, const(region_threshold(q, s1), "boundary")])
    return g.op("Where", [flag, region(step2, range2), region(step1, range1)], f"{hint}_two_region")


EMULATORS = {LogQuantizer: emulate_log, SULQuantizer: emulate_sulq, TwinUniformQuantizer: emulate_two_region,
             TwoScaleQuantizer: emulate_two_region}
