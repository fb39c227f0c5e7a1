"""AIQViT's architecture-informed low-rank compensation, trained by block reconstruction.

``LowRankHook`` is a ``reconstruct_blocks`` hook (``hooks=[...]``). For each transformer
block it:

1. attaches a compensation (``vitquant.nn.lowrank``) to the quantized linears named in ``layers``
   (qkv, proj, fc1, fc2), B = 0 so the block starts exactly as plain PTQ left it;
2. returns the factors A, B as a parameter group (lr ``lr``, cosine-annealed with the unit);
3. rank search (``search=True``): each layer mixes the candidate ranks r ∈ ``ranks`` (those ≤
   ``max_fraction``·min(in, out)) with softmax(α/τ). α has its own Adam (lr ``alpha_lr``) and is
   updated from the same backward pass as the factors (one-level, first-order DARTS) from
   ``search_warmup``·T (B starts at zero, so α gets no signal from the loss at first) to
   ``search_fraction``·T; then r* = argmax α is kept and the remaining iterations fine-tune the
   factors at that rank. Without a cost every layer would drift to the
   largest rank (more columns never raise the training loss), so α also sees a rank cost
   (our addition, ``rank_cost`` = 0 turns it off)::

       L_α = ℓ_rec + sg(ℓ_rec) · λ · mean_layers(E_p[r] / r_max)

   whose α-gradient is ℓ_rec·∇α(log ℓ_rec + λ·E[r]/r_max): a rank must lower the block loss by a
   relative λ per r_max columns to be worth keeping, independently of the loss scale.
   ``search=False`` uses ``fixed_rank`` (capped the same way) everywhere;
4. at the end of the block, either merges (``form='merged'``: W ← W + B·A, compensation removed;
   no inference cost) or keeps the FP branch truncated to r* (``form='unmerged'``). Layers whose
   chosen rank is 0 lose their compensation.

The chosen ranks, the form and the extra parameters/MACs of the unmerged branch go to
``ctx.metrics`` (→ ``metrics.json``), ``ctx.log`` and a W&B table (``ctx.table``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.engines.reconstruction import ReconHook, UnitData, is_block
from vitquant.nn.linear import QuantLinear
from vitquant.nn.lowrank import LowRankCompensation

FORMS = ("unmerged", "merged")
BLOCK_LINEARS = ("qkv", "proj", "fc1", "fc2")


def capped_ranks(ranks: Sequence[int], in_features: int, out_features: int, max_fraction: float) -> tuple[int, ...]:
    """Candidate ranks ≤ ⌊max_fraction·min(in, out)⌋ (at least one: the cap itself, or 0 when it is 0)."""
    cap = int(max_fraction * min(in_features, out_features))
    kept = sorted({int(r) for r in ranks if int(r) <= cap})
    return tuple(kept) or (cap,)


def block_linears(unit: nn.Module, layers: Sequence[str]) -> list[tuple[str, QuantLinear]]:
    """(relative name, layer) of the block's quantized linears whose last name is in ``layers``."""
    return [(n, m) for n, m in unit.named_modules() if isinstance(m, QuantLinear) and n.rsplit(".", 1)[-1] in layers]


def tokens_per_sample(data: UnitData) -> int:
    """Tokens each image sends through the block (Swin's (B, H, W, C) inputs: H·W)."""
    return int(torch.tensor(data.inputs.shape[1:-1]).prod())


class LowRankHook(ReconHook):
    """Attach, search, fine-tune and finalise low-rank compensation per block (module docstring)."""

    def __init__(self, enabled: bool = True, form: str = "unmerged", ranks: Sequence[int] = (0, 4, 8, 16, 32),
                 search: bool = True, fixed_rank: int = 16, max_fraction: float = 0.25, lr: float = 1e-3,
                 alpha_lr: float = 5e-2, tau: float = 1.0, rank_cost: float = 0.02, search_warmup: float = 0.1,
                 search_fraction: float = 0.5, layers: Sequence[str] = BLOCK_LINEARS, seed: int = 0) -> None:
        if form not in FORMS:
            raise ValueError(f"form={form!r} is not one of {FORMS}")
        if not 0.0 <= search_warmup <= search_fraction <= 1.0:
            raise ValueError(f"need 0 <= search_warmup ({search_warmup}) <= search_fraction ({search_fraction}) <= 1")
        self.enabled, self.form, self.search = bool(enabled), form, bool(search)
        self.ranks, self.fixed_rank, self.max_fraction = tuple(int(r) for r in ranks), int(fixed_rank), max_fraction
        self.lr, self.alpha_lr, self.tau, self.rank_cost = lr, alpha_lr, tau, rank_cost
        self.search_warmup, self.search_fraction, self.layers = search_warmup, search_fraction, tuple(layers)
        self.generator = torch.Generator().manual_seed(seed)
        self.current: list[tuple[str, QuantLinear]] = []
        self.alpha_optimizer: torch.optim.Optimizer | None = None
        self.chosen: dict[str, int] = {}
        self.extra_params = 0
        self.extra_macs = 0

    # ------------------------------------------------------------------ per unit
    def candidates(self, layer: QuantLinear) -> tuple[int, ...]:
        wanted = self.ranks if self.search else (self.fixed_rank,)
        return capped_ranks(wanted, layer.in_features, layer.out_features, self.max_fraction)

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        self.current, self.alpha_optimizer = [], None
        if not self.enabled or not is_block(unit):
            return []
        for rel, layer in block_linears(unit, self.layers):
            candidates = self.candidates(layer)
            if candidates[-1] == 0:
                continue
            layer.compensation = LowRankCompensation(
                layer.in_features, layer.out_features, candidates[-1], candidates, merged=self.form == "merged",
                tau=self.tau, generator=self.generator).to(layer.weight.device)
            self.current.append((f"{name}.{rel}", layer))
        alphas = [c.alpha for c in self.compensations() if c.alpha is not None]
        if alphas:
            self.alpha_optimizer = torch.optim.Adam(alphas, lr=self.alpha_lr)
        return [{"params": [p for c in self.compensations() for p in (c.A, c.B)], "lr": self.lr}]

    def compensations(self) -> list[LowRankCompensation]:
        return [layer.compensation for _, layer in self.current]

    def extra_loss(self, rec: torch.Tensor) -> torch.Tensor | None:
        searching = [c for c in self.compensations() if c.searching]
        if not searching or self.rank_cost == 0:
            return None
        cost = torch.stack([c.expected_rank() / c.candidates[-1] for c in searching]).mean()
        return rec.detach() * self.rank_cost * cost

    def after_step(self, step: int, iters: int) -> None:
        if self.alpha_optimizer is None:
            return
        if step > self.search_warmup * iters:
            self.alpha_optimizer.step()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        if step >= self.search_fraction * iters:
            for c in self.compensations():
                c.select_rank()
            self.alpha_optimizer = None

    def end(self, name: str, unit: nn.Module, data: UnitData, ctx: CalibContext) -> None:
        tokens = tokens_per_sample(data)
        for full, layer in self.current:
            comp = layer.compensation
            rank = comp.select_rank()  # a search that never reached its end point keeps argmax α too
            self.chosen[full] = rank
            ctx.log({f"lowrank/{full}/rank": float(rank)})
            if rank == 0:
                layer.compensation = None
            elif self.form == "merged":
                with torch.no_grad():
                    layer.weight.add_(comp.delta())
                layer.compensation = None
            else:
                comp.compact()
                self.extra_params += comp.extra_params()
                self.extra_macs += comp.extra_params() * tokens
        self.current = []

    def finish(self, ctx: CalibContext) -> None:
        if not self.enabled:
            return
        summary = {"lowrank_form": self.form, "lowrank_search": self.search, "lowrank_ranks": dict(self.chosen),
                   "lowrank_extra_params": self.extra_params if self.form == "unmerged" else 0,
                   "lowrank_extra_macs_per_image": self.extra_macs if self.form == "unmerged" else 0}
        ctx.metrics.update(summary)
        ctx.log({"lowrank/extra_params": float(summary["lowrank_extra_params"]),
                 "lowrank/extra_macs_per_image": float(summary["lowrank_extra_macs_per_image"])})
        ctx.table("lowrank/ranks", ["layer", "rank"], [[k, v] for k, v in self.chosen.items()])
