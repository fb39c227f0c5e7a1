"""AIQViT's architecture-informed low-rank compensation, trained by block reconstruction.

``LowRankHook`` is a ``reconstruct_blocks`` hook (``hooks=[...]``; AIQViT lists no weight
strategy, so the quantized weights stay frozen). For each transformer
block it:

1. attaches a compensation (``vitquant.nn.lowrank``) as the ``branch`` of the quantized linears named in
   ``layers`` (qkv, proj, fc1, fc2), B = 0 so the block starts exactly as plain PTQ left it;
2. returns the factors A, B as a parameter group (lr ``lr``, cosine-annealed with the unit);
3. rank search (``search=True``): each layer has logits α over the candidate ranks r ∈ ``ranks``
   (those ≤ ``max_fraction``·min(in, out)), p = softmax(α/τ), with their own Adam (lr
   ``alpha_lr``), trained from ``search_warmup``·T (B starts at zero, so α gets no signal at first)
   to ``search_fraction``·T; then r* = argmax α is kept and the remaining iterations fine-tune the
   factors at that rank. The objective of α is scale-free, with a rank cost (our addition;
   ``rank_cost`` = λ = 0 turns it off; without it nothing stops every layer drifting to the largest
   rank, since more columns never raise the training loss)::

       J(α) = E[log ℓ_rec] + λ · E_p[r] / r_max          (per layer)

   ``estimator='sample'`` (default): each step draws one rank per layer from p and uses hard
   masks (the factors train as nested ranks); α gets the score-function gradient
   (log ℓ − b)·∇α log p(r), b an exponential moving average of log ℓ, plus λ·∇α E[r]/r_max.
   ``estimator='mixture'`` is first-order one-level DARTS: the mask is the softmax mixture and α's
   gradient comes from the same backward as the factors (the loss gets sg(ℓ)·λ·cost; α's gradient
   is divided by ℓ, giving ∇α of log ℓ + λ·cost). For linear branches the mixture weight of a column
   is absorbed by the scale of B's column, so ∂ℓ/∂α → 0 as the factors converge and the mixture
   search stalls near its start (we saw it pick the largest or smallest rank on a problem with a
   clear answer); sampling the rank removes that symmetry. ``search=False`` uses ``fixed_rank``
   (capped the same way) everywhere;
4. at the end of the block, either merges (``form='merged'``: W ← W + B·A, compensation removed;
   no inference cost) or keeps the FP branch truncated to r* (``form='unmerged'``). Layers whose
   chosen rank is 0 lose their compensation.

The chosen ranks, the form and the extra parameters/MACs of the unmerged branch go to
``ctx.metrics`` (→ ``metrics.json``), ``ctx.log`` and a W&B table (``ctx.table``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.engines.reconstruction import ReconHook, UnitData, is_block
from vitquant.errors import UserError
from vitquant.nn.linear import QuantLinear
from vitquant.nn.lowrank import LowRankCompensation

FORMS = ("unmerged", "merged")
ESTIMATORS = ("sample", "mixture")
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
                 alpha_lr: float = 5e-2, tau: float = 1.0, rank_cost: float = 0.1, search_warmup: float = 0.2,
                 search_fraction: float = 0.6, estimator: str = "sample", baseline_decay: float = 0.9,
                 layers: Sequence[str] = BLOCK_LINEARS, seed: int = 0) -> None:
        if form not in FORMS:
            raise UserError(f"form={form!r} is not one of {FORMS}")
        if estimator not in ESTIMATORS:
            raise UserError(f"estimator={estimator!r} is not one of {ESTIMATORS}")
        if not 0.0 <= search_warmup <= search_fraction <= 1.0:
            raise UserError(f"need 0 <= search_warmup ({search_warmup}) <= search_fraction ({search_fraction}) <= 1")
        self.enabled, self.form, self.search = bool(enabled), form, bool(search)
        self.ranks, self.fixed_rank, self.max_fraction = tuple(int(r) for r in ranks), int(fixed_rank), max_fraction
        self.lr, self.alpha_lr, self.tau, self.rank_cost = lr, alpha_lr, tau, rank_cost
        self.search_warmup, self.search_fraction, self.layers = search_warmup, search_fraction, tuple(layers)
        self.estimator, self.baseline_decay = estimator, baseline_decay
        self.baseline: float | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.current: list[tuple[str, QuantLinear]] = []
        self.alpha_optimizer: torch.optim.Optimizer | None = None
        self.rec = 1.0
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
            layer.branch = LowRankCompensation(
                layer.in_features, layer.out_features, candidates[-1], candidates, merged=self.form == "merged",
                tau=self.tau, generator=self.generator).to(layer.weight.device)
            self.current.append((f"{name}.{rel}", layer))
        alphas = [c.alpha for c in self.compensations() if c.alpha is not None]
        if alphas:
            self.alpha_optimizer = torch.optim.Adam(alphas, lr=self.alpha_lr)
            self.baseline = None
            self.sample_ranks()
        return [{"params": [p for c in self.compensations() for p in (c.A, c.B)], "lr": self.lr}]

    def compensations(self) -> list[LowRankCompensation]:
        return [layer.branch for _, layer in self.current]

    def searching(self) -> list[LowRankCompensation]:
        return [c for c in self.compensations() if c.searching]

    def sample_ranks(self) -> None:
        """Draw the next step's rank of every searching layer from softmax(α/τ) (sampled estimator)."""
        if self.estimator != "sample":
            return
        for c in self.searching():
            k = int(torch.multinomial(c.probabilities().detach().cpu(), 1, generator=self.generator))
            c.sampled = c.candidates[k]

    def rank_cost_term(self) -> torch.Tensor:
        """λ · Σ_layers E_p[r] / r_max (each layer's α sees its own cost)."""
        return self.rank_cost * torch.stack([c.expected_rank() / c.candidates[-1] for c in self.searching()]).sum()

    def extra_loss(self, rec: torch.Tensor, step: int, iters: int) -> torch.Tensor | None:
        self.rec = float(rec.detach())
        if self.estimator != "mixture" or not self.searching() or self.rank_cost == 0:
            return None
        return rec.detach() * self.rank_cost_term()

    def after_step(self, step: int, iters: int) -> None:
        if self.alpha_optimizer is None:
            return
        if step > self.search_warmup * iters:
            if self.estimator == "mixture":
                for c in self.searching():  # ∇α log ℓ = ∇α ℓ / ℓ (module docstring)
                    if c.alpha.grad is not None:
                        c.alpha.grad.div_(max(self.rec, 1e-30))
            else:
                self.score_function_gradient()
            self.alpha_optimizer.step()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        if step >= self.search_fraction * iters:
            for c in self.compensations():
                c.select_rank()
            self.alpha_optimizer = None
        else:
            self.sample_ranks()

    def score_function_gradient(self) -> None:
        """α.grad ← (log ℓ − b)·∇α log p(r_sampled) + λ·∇α E[r]/r_max; then update b."""
        log_rec = math.log(max(self.rec, 1e-30))
        if self.baseline is None:
            self.baseline = log_rec
        advantage = log_rec - self.baseline
        searching = self.searching()
        with torch.enable_grad():
            surrogate = sum(advantage * torch.log_softmax(c.alpha / c.tau, 0)[c.candidates.index(c.sampled)]
                            for c in searching)
            if self.rank_cost:
                surrogate = surrogate + self.rank_cost_term()
            grads = torch.autograd.grad(surrogate, [c.alpha for c in searching])
        for c, g in zip(searching, grads):
            c.alpha.grad = g
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * log_rec

    def end(self, name: str, unit: nn.Module, data: UnitData, ctx: CalibContext) -> None:
        tokens = tokens_per_sample(data)
        for full, layer in self.current:
            comp = layer.branch
            rank = comp.select_rank()  # a search that never reached its end point keeps argmax α too
            self.chosen[full] = rank
            ctx.log({f"lowrank/{full}/rank": float(rank)})
            if rank == 0:
                layer.branch = None
            elif self.form == "merged":
                with torch.no_grad():
                    layer.weight.add_(comp.delta())
                layer.branch = None
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
