"""Which cached samples a reconstruction step draws: uniformly at random, or easy→hard (AIQViT).

Curriculum reconstruction (AIQViT; ``specs/aiqvit.md``, our reading): before a unit is optimised,
each calibration sample is scored by its reconstruction loss under the unit as it stands (the
initial quantized unit: compensation factors start at zero), ℓ_i = lp_loss(unit(x_i), y_i), and
the samples are sorted easy (low ℓ) to hard. Step t draws its batch uniformly from the easiest
fraction λ(t) of them, with the linear pacing function::

    λ(t) = min(1, λ0 + (1 − λ0) · t / (g · T))        (λ0 = 0.3, g = 0.5: all samples from T/2 on)

``RandomBatches`` and ``CurriculumBatches`` are the ``sampler`` of ``reconstruct_blocks``; their
``batches`` give endless iterators of index tensors.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from vitquant.errors import UserError


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of ``batch_size`` distinct indices drawn uniformly from ``range(n)``."""
    while True:
        yield torch.randperm(n, generator=generator)[:batch_size]


def pacing(step: int, iters: int, start: float = 0.3, grow: float = 0.5) -> float:
    """λ(t): fraction of the (sorted) samples in use at 1-based step t (module docstring)."""
    if grow <= 0:
        return 1.0
    return min(1.0, start + (1.0 - start) * step / (grow * iters))


@torch.no_grad()
def sample_losses(loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """(n,) per-sample losses; ``loss_fn(indices)`` returns the loss of each indexed sample."""
    return torch.cat([loss_fn(idx).detach().cpu() for idx in torch.arange(n).split(batch_size)])


def curriculum_batches(losses: torch.Tensor, batch_size: int, iters: int, generator: torch.Generator,
                       start: float = 0.3, grow: float = 0.5) -> Iterator[torch.Tensor]:
    """Batches drawn from the easiest ⌈λ(t)·n⌉ samples at step t (at least ``batch_size`` of them)."""
    if not 0.0 < start <= 1.0:
        raise UserError(f"curriculum start fraction {start} must be in (0, 1]")
    order = torch.argsort(losses, stable=True)
    n = len(order)
    step = 0
    while True:
        step += 1
        pool = min(n, max(batch_size, math.ceil(pacing(step, iters, start, grow) * n)))
        yield order[torch.randperm(pool, generator=generator)[:batch_size]]


class RandomBatches:
    """Each step draws ``batch_size`` cached samples uniformly (the default sampler)."""

    def batches(self, n: int, batch_size: int, iters: int, generator: torch.Generator,
                scores: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
        return random_batches(n, batch_size, generator)


class CurriculumBatches:
    """Easy→hard batches with the linear pacing λ(t) (module docstring); ``enabled=False`` (an
    ablation switch) draws uniformly instead."""

    def __init__(self, start: float = 0.3, grow: float = 0.5, enabled: bool = True) -> None:
        if not 0.0 < start <= 1.0:
            raise UserError(f"curriculum start fraction {start} must be in (0, 1]")
        self.start, self.grow, self.enabled = float(start), float(grow), bool(enabled)

    def batches(self, n: int, batch_size: int, iters: int, generator: torch.Generator,
                scores: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
        if not self.enabled:
            return random_batches(n, batch_size, generator)
        return curriculum_batches(scores(), batch_size, iters, generator, self.start, self.grow)
