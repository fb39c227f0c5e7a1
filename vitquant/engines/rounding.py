"""How block reconstruction trains the weights: two ``ReconHook`` strategies (``engines.reconstruction``).

* ``SteWeights`` (I&S-ViT SOS stages 1 and 3): every parameter of the unit except LayerNorm γ/β and
  quantizer parameters — the Linear/Conv weights and biases, and Swin's relative-position bias
  table, which the official code also leaves trainable — through the quantizers' straight-through
  rounding; Adam at ``lr`` with ``CosineAnnealingLR(T_max=iters, eta_min=0)``.
* ``AdaRoundWeights`` (BRECQ/QDrop): weights frozen; AdaRound's V per weight quantizer
  (``vitquant.quant.adaround``) at a constant ``lr`` (QDrop: ``Adam(w_para)``, lr 1e-3), with the
  rounding regulariser added to the loss after the warm-up::

      L += λ Σ_V (1 − |2h(V) − 1|^β)

  β is held at ``b_range[0]`` for the ``warmup`` fraction, then decays linearly to ``b_range[1]``
  (``LinearTempDecay``). When the unit is done the hard rounding is written into the weights
  (W ← s·(clamp(⌊W/s⌋ + [V ≥ 0] + z) − z)), which then lie on the quantization grid.

Without either (AIQViT) the weights stay as initialised.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.engines.reconstruction import ReconHook, UnitData
from vitquant.errors import UserError
from vitquant.nn import QuantConv2d, QuantLinear
from vitquant.quant.adaround import AdaRound
from vitquant.quant.base import Quantizer


def ste_parameters(unit: nn.Module) -> list[nn.Parameter]:
    """Every parameter except LayerNorm affine and quantizer parameters (I&S-ViT ``block_recon``)."""
    frozen = {id(p) for m in unit.modules() if isinstance(m, (nn.LayerNorm, Quantizer)) for p in m.parameters()}
    return [p for p in unit.parameters() if id(p) not in frozen]


class SteWeights(ReconHook):
    """Train the unit's weights and biases through straight-through rounding (module docstring)."""

    def __init__(self, lr: float = 4e-5) -> None:
        self.lr = float(lr)

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        return [{"params": ste_parameters(unit), "lr": self.lr, "schedule": "cosine"}]


def rounding_temperature(t: int, iters: int, warmup: float, b_range: tuple[float, float]) -> float:
    """β at step t (1-based): b_range[0] until warmup·iters, then linear to b_range[1] at iters."""
    start = warmup * iters
    if t < start:
        return float(b_range[0])
    rel = (t - start) / max(iters - start, 1e-12)
    return b_range[1] + (b_range[0] - b_range[1]) * max(0.0, 1.0 - rel)


class AdaRoundWeights(ReconHook):
    """Learn each weight's up/down rounding (AdaRound), then write it into the weights (module docstring)."""

    def __init__(self, lr: float = 1e-3, round_loss_weight: float = 0.01,
                 b_range: tuple[float, float] = (20, 2), warmup: float = 0.2) -> None:
        self.lr, self.round_loss_weight = float(lr), float(round_loss_weight)
        self.b_range, self.warmup = (float(b_range[0]), float(b_range[1])), float(warmup)
        self.layers: list[QuantLinear | QuantConv2d] = []
        self.rounders: list[AdaRound] = []

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        self.layers = [m for m in unit.modules() if isinstance(m, (QuantLinear, QuantConv2d))
                       and m.weight_site.enabled and m.weight_site.quantizer is not None]
        if not self.layers:
            raise UserError(f"{name}: AdaRound needs enabled weight quantizers in the unit "
                             "(initialise weights with init_ranges(weights=True) first)")
        self.rounders = [AdaRound(m.weight_site.quantizer, m.weight) for m in self.layers]
        return [{"params": [r.alpha for r in self.rounders], "lr": self.lr, "schedule": "constant"}]

    @contextmanager
    def optimising(self, unit: nn.Module, generator: torch.Generator) -> Iterator[None]:
        """Swap each weight quantizer for its AdaRound while optimising; always put them back."""
        originals = [m.weight_site.quantizer for m in self.layers]
        for m, r in zip(self.layers, self.rounders):
            m.weight_site.quantizer = r
        try:
            yield
        finally:
            for m, q in zip(self.layers, originals):
                m.weight_site.quantizer = q

    def extra_loss(self, rec: torch.Tensor, step: int, iters: int) -> torch.Tensor | None:
        if step < self.warmup * iters:
            return None
        beta = rounding_temperature(step, iters, self.warmup, self.b_range)
        return self.round_loss_weight * sum(r.round_loss(beta) for r in self.rounders)

    @torch.no_grad()
    def end(self, name: str, unit: nn.Module, data: UnitData, ctx: CalibContext) -> None:
        for m, r in zip(self.layers, self.rounders):
            m.weight.copy_(r.quantize(m.weight, hard=True))
        self.layers, self.rounders = [], []
