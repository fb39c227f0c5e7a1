"""Stages that only report what calibration chose (no change to the model)."""
from __future__ import annotations

from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.quant.dfq import intervals


def report_dfq_intervals(model: nn.Module, ctx: CalibContext) -> None:
    """Log the interval [a, c] each Dynamic Focusing Quantizer chose (W&B scalars + table, metrics.json).

    A no-op when no site uses DFQ (e.g. ``quantizer@method.quantizers.post_softmax=logsqrt2``).
    """
    chosen = intervals(model)
    if not chosen:
        return
    ctx.metrics["dfq_intervals"] = chosen
    ctx.log({f"dfq/{site}/{end}": value for site, pair in chosen.items()
             for end, value in zip(("lower", "upper"), pair)})
    ctx.table("dfq/intervals", ["site", "lower", "upper"], [[site, *pair] for site, pair in chosen.items()])
