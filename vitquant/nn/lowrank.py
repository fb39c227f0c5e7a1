"""Low-rank compensation of a quantized linear layer (AIQViT AILoC; ``specs/aiqvit.md``).

The compensation is a ``LinearBranch`` (kind ``lowrank``) in a ``QuantLinear``'s ``branch`` slot; the layer
then computes, on its (quantized) input x̂ = Q_a(x), one of two forms:

* ``merged=False`` (unmerged, the default): a full-precision branch beside the quantized weight::

      y = Q_w(W)·x̂ + B·(A·x̂) + bias          extra cost per token: r·(in + out) MACs, r·(in + out) params

* ``merged=True``: the compensation is folded into the weight before quantization, with the
  straight-through rounding of the weight quantizer carrying the gradient to A and B::

      y = Q_w(W + B·A)·x̂ + bias              no inference cost: W + B·A is written into W at the end

A ∈ R^{R×in} is initialised like LoRA (Kaiming-uniform, a = √5), B ∈ R^{out×R} at zero, so a fresh
compensation leaves the layer exactly as it was. W itself stays frozen.

Rank search (DARTS-style, weight-shared): with candidate ranks r_1 < … < r_K ≤ R and architecture
logits α, column j of the factors is weighted by the probability that the chosen rank exceeds j::

      p = softmax(α / τ),   m_j = Σ_k p_k · [j < r_k],   ΔW = B·diag(m)·A

which is the softmax mixture Σ_k p_k·B_{:, <r_k}·A_{<r_k} of the K candidate branches sharing their
leading columns. Alternatively a rank r_k ~ p is *sampled* for the step (``sampled``), and the
mask is hard: m_j = [j < r_k] (nested ranks: the leading columns must work alone).
``select_rank`` keeps r* = r_argmax(α), folds a soft m into B (ΔW keeps the kept columns'
contribution) and drops α; ``compact`` then truncates A and B to r* columns.

A checkpoint restores it by itself (``from_state``: rank from the stored A, form and candidates from the extra
state); checkpoints written before the branch slot kept it under ``compensation.`` and load too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.errors import UserError
from vitquant.nn.linear import LinearBranch, QuantLinear


@LinearBranch.register("lowrank")
class LowRankCompensation(LinearBranch):
    """Factors A (rank × in), B (out × rank) and, while searching, the rank logits α."""

    legacy_prefix = "compensation"

    def __init__(self, in_features: int, out_features: int, rank: int, candidates: Sequence[int] | None = None,
                 merged: bool = False, tau: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise UserError(f"rank={rank} must be at least 1")
        self.merged = bool(merged)
        self.tau = float(tau)
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=√5), LoRA's init of A
        with torch.no_grad():
            self.A.uniform_(-bound, bound, generator=generator)
        self.candidates: tuple[int, ...] = ()
        self.alpha: nn.Parameter | None = None
        if candidates is not None and len(candidates) > 1:
            if sorted(set(candidates)) != list(candidates) or candidates[0] < 0 or candidates[-1] != rank:
                raise UserError(f"candidates {list(candidates)} must be increasing, ≥ 0, the largest = rank {rank}")
            self.candidates = tuple(int(r) for r in candidates)
            self.alpha = nn.Parameter(torch.zeros(len(self.candidates)))
        self.active = rank
        self.sampled: int | None = None  # rank drawn for the current step (sampled search), else None

    @property
    def searching(self) -> bool:
        return self.alpha is not None

    @property
    def rank(self) -> int:
        return self.active

    def probabilities(self) -> torch.Tensor:
        """softmax(α/τ) over the candidate ranks."""
        return torch.softmax(self.alpha / self.tau, dim=0)

    def column_weights(self) -> torch.Tensor | None:
        """m_j = Σ_k p_k·[j < r_k] (or [j < sampled]) while searching, else None (all columns weigh 1)."""
        if self.alpha is None:
            return None
        cols = torch.arange(self.A.shape[0], device=self.alpha.device)
        if self.sampled is not None:
            return (cols < self.sampled).to(self.A.dtype)
        ranks = torch.tensor(self.candidates, device=self.alpha.device)
        return (self.probabilities()[:, None] * (cols[None, :] < ranks[:, None])).sum(0)

    def expected_rank(self) -> torch.Tensor:
        """E[r] = Σ_k p_k·r_k (differentiable in α); the fixed rank once chosen."""
        if self.alpha is None:
            return torch.tensor(float(self.active))
        return (self.probabilities() * torch.tensor(self.candidates, dtype=self.alpha.dtype,
                                                    device=self.alpha.device)).sum()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B·diag(m), A) restricted to the active columns."""
        a, b = self.A[: self.active], self.B[:, : self.active]
        m = self.column_weights()
        return (b if m is None else b * m), a

    def delta(self) -> torch.Tensor:
        """ΔW = B·diag(m)·A (out × in)."""
        b, a = self.factors()
        return b @ a

    def forward(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """Output of ``layer`` on its already quantized input ``x`` (module docstring)."""
        if self.merged:
            return F.linear(x, layer.weight_site(layer.weight + self.delta()), layer.bias)
        b, a = self.factors()
        return F.linear(x, layer.weight_site(layer.weight), layer.bias) + F.linear(F.linear(x, a), b)

    @torch.no_grad()
    def select_rank(self) -> int:
        """Keep r* = r_argmax(α): fold the column weights into B, stop searching; returns r*."""
        if self.alpha is None:
            return self.active
        if self.sampled is None:
            self.B.mul_(self.column_weights())
        self.active = self.candidates[int(self.alpha.argmax())]
        self.alpha, self.sampled = None, None
        return self.active

    @torch.no_grad()
    def compact(self) -> None:
        """Truncate A and B to the active columns (after the optimisation that held references)."""
        self.A = nn.Parameter(self.A[: self.active].clone(), requires_grad=False)
        self.B = nn.Parameter(self.B[:, : self.active].clone(), requires_grad=False)

    def extra_params(self) -> int:
        """Parameters the unmerged branch adds: r·(in + out)."""
        return self.active * (self.A.shape[1] + self.B.shape[0])

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "merged": self.merged, "tau": self.tau, "active": self.active,
                "candidates": list(self.candidates) if self.searching else []}

    @classmethod
    def from_state(cls, layer: QuantLinear, state: dict[str, Any], prefix: str) -> LowRankCompensation:
        extra = state[prefix + "_extra_state"]
        rank = int(state[prefix + "A"].shape[0])
        branch = cls(layer.in_features, layer.out_features, rank, extra.get("candidates") or None,
                     merged=extra.get("merged", False), tau=extra.get("tau", 1.0))
        branch.active = int(extra.get("active", rank))
        return branch

    def extra_repr(self) -> str:
        form = "merged" if self.merged else "unmerged"
        search = f", candidates={list(self.candidates)}" if self.searching else ""
        return f"rank={self.active}, {form}{search}"
