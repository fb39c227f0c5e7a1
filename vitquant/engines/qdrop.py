"""QDrop (Wei et al., ICLR'22): randomly drop activation quantization while reconstructing.

During a unit's optimisation every enabled activation quantizer inside it returns, element-wise
with probability ``p``, the float value instead of the fake-quantized one::

    x̃ = where(u < p, x, Q(x)),   u ~ U(0, 1) per element

so the weights are tuned for a flatter neighbourhood of quantization noise. QDrop's code keeps the
quantized value with probability ``drop_prob`` (``where(rand < drop_prob, X_q, X)``, default 0.5);
here ``p`` is the probability of the float value, which is the same thing at 0.5.

The quantizers are wrapped only for the duration of a ``with quant_dropout(...)`` block and then
put back, so the quantization sites and checkpoints never see the wrapper.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vitquant.nn.site import iter_sites


def mix(fp: torch.Tensor, quantized: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Element-wise ``fp`` with probability ``p``, else ``quantized``."""
    u = torch.rand(fp.shape, generator=generator, device=fp.device, dtype=fp.dtype)
    return torch.where(u < p, fp, quantized)


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
