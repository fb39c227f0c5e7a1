"""QDrop (Wei et al., ICLR'22): randomly drop activation quantization while reconstructing.

During a unit's optimisation every enabled activation quantizer inside it returns, element-wise
with probability ``p``, the float value instead of the fake-quantized one::

    x̃ = where(u < p, x, Q(x)),   u ~ U(0, 1) per element

so the weights are tuned for a flatter neighbourhood of quantization noise. QDrop's code keeps the
quantized value with probability ``drop_prob`` (``where(rand < drop_prob, X_q, X)``, default 0.5);
here ``p`` is the probability of the float value, which is the same thing at 0.5.

With inputs from the quantized model, the unit input is likewise mixed element-wise from the
FP-model and quantized-model inputs (QDrop ``input_prob``, same ``p``).

``QDrop`` is the ``ReconHook`` (``engines.reconstruction``): the quantizers are wrapped only for the
duration of the unit's optimisation loop and then put back, so the quantization sites and
checkpoints never see the wrapper. One generator per unit (the engine's) draws both the input mix
and the quantizers' choices, in that order within a step.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vitquant.engines.reconstruction import ReconHook
from vitquant.errors import UserError
from vitquant.nn.site import iter_sites
from vitquant.quant.select import select


def mix(fp: torch.Tensor, quantized: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Element-wise ``fp`` with probability ``p``, else ``quantized``."""
    u = torch.rand(fp.shape, generator=generator, device=fp.device, dtype=fp.dtype)
    return select(u < p, fp, quantized)


class DropQuantizer(nn.Module):
    """Wraps a quantizer: its output with probability 1 − p, its float input with probability p."""

    def __init__(self, quantizer: nn.Module, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.quantizer, self.p, self.generator = quantizer, p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix(x, self.quantizer(x), self.p, self.generator)


@contextmanager
def quant_dropout(unit: nn.Module, p: float, generator: torch.Generator) -> Iterator[None]:
    """Wrap the enabled activation quantizers of ``unit`` in ``DropQuantizer`` (no-op for p = 0)."""
    sites = [s for _, s in iter_sites(unit) if p > 0 and s.enabled and s.quantizer is not None and not s.is_weight]
    originals = [s.quantizer for s in sites]
    for site, quantizer in zip(sites, originals):
        site.quantizer = DropQuantizer(quantizer, p, generator)
    try:
        yield
    finally:
        for site, quantizer in zip(sites, originals):
            site.quantizer = quantizer


class QDrop(ReconHook):
    """Drop activation quantization (and mix FP into quantized unit inputs) with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise UserError(f"QDrop prob={prob} is not a probability")
        self.prob = float(prob)
        self.needs_fp_inputs = self.prob > 0
        self.generator: torch.Generator | None = None

    @contextmanager
    def optimising(self, unit: nn.Module, generator: torch.Generator) -> Iterator[None]:
        self.generator = generator
        with quant_dropout(unit, self.prob, generator):
            yield

    def inputs(self, x: torch.Tensor, fp_x: torch.Tensor | None) -> torch.Tensor:
        return x if fp_x is None or self.prob == 0 else mix(fp_x, x, self.prob, self.generator)
