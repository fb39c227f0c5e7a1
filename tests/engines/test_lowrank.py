import copy

import pytest
import torch

from vitquant.engines.context import CalibContext
from vitquant.engines.curriculum import CurriculumBatches
from vitquant.engines.lowrank import LowRankHook, capped_ranks
from vitquant.engines.reconstruction import reconstruct_blocks
from vitquant.models.twin import to_quant_twin
from vitquant.nn import QuantLinear


def context(fp: torch.nn.Module, logged: dict, tables: dict) -> CalibContext:
    return CalibContext(fp, torch.randn(16, 3, 32, 32), torch.device("cpu"), seed=0, log=logged.update,
                        table=lambda name, cols, rows: tables.update({name: rows}))


def perturbed_twin(fp: torch.nn.Module, rank: int) -> torch.nn.Module:
    """A float twin whose blocks.0.mlp.fc2 is off by a rank-``rank`` matrix (everything else exact)."""
    q = to_quant_twin(copy.deepcopy(fp)).eval()
    g = torch.Generator().manual_seed(1)
    fc2 = q.blocks[0].mlp.fc2
    with torch.no_grad():
        fc2.weight.add_(torch.randn(fc2.out_features, rank, generator=g) @ torch.randn(rank, fc2.in_features,
                                                                                       generator=g) * 0.05)
    return q


def test_capped_ranks():
    assert capped_ranks((0, 4, 8, 16, 32), 96, 384, 0.25) == (0, 4, 8, 16)
    assert capped_ranks((16,), 8, 8, 0.25) == (2,)


def test_rank_search_picks_the_rank_of_the_error(tiny_vit):
    """fc2 of block 0 is off by a rank-4 matrix (rank 2 cannot fix it, rank 8 costs more), fc2 of
    block 1 is exact (rank 0). Only fc2 is compensated: fc1 could absorb part of the error too."""
    logged, tables = {}, {}
    ctx = context(tiny_vit, logged, tables)
    q = perturbed_twin(tiny_vit, rank=4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = (q(x) - tiny_vit(x)).pow(2).mean()
    hook = LowRankHook(ranks=(0, 2, 4, 8), lr=2e-2, alpha_lr=5e-2, rank_cost=0.5, search_warmup=0.3,
                       search_fraction=0.7, layers=("fc2",))
    reconstruct_blocks(q, ctx, iters=300, batch_size=8, hooks=[hook], progress=False)
    assert hook.chosen == {"blocks.0.mlp.fc2": 4, "blocks.1.mlp.fc2": 0}, hook.chosen
    assert ctx.metrics["lowrank_ranks"] == hook.chosen and ctx.metrics["lowrank_form"] == "unmerged"
    assert ctx.metrics["lowrank_extra_params"] == 4 * (192 + 48)
    assert ctx.metrics["lowrank_extra_macs_per_image"] == 4 * (192 + 48) * 17
    assert tables["lowrank/ranks"] == [[k, v] for k, v in hook.chosen.items()]
    assert logged["lowrank/blocks.0.mlp.fc2/rank"] == 4.0
    # only fc2 of block 0 keeps a compensation, at its chosen rank; the error is gone
    kept = {n for n, m in q.named_modules() if isinstance(m, QuantLinear) and m.branch is not None}
    assert kept == {"blocks.0.mlp.fc2"} and q.blocks[0].mlp.fc2.branch.A.shape == (4, 192)
    with torch.no_grad():
        assert (q(x) - tiny_vit(x)).pow(2).mean() < before / 10


def test_mixture_estimator_runs_and_selects_a_candidate(tiny_vit):
    ctx = context(tiny_vit, {}, {})
    q = perturbed_twin(tiny_vit, rank=4)
    hook = LowRankHook(ranks=(0, 2, 4, 8), lr=1e-2, estimator="mixture", layers=("fc2",))
    reconstruct_blocks(q, ctx, iters=20, batch_size=8, hooks=[hook], progress=False)
    assert set(hook.chosen.values()) <= {0, 2, 4, 8} and len(hook.chosen) == 2


@pytest.mark.parametrize("form", ["unmerged", "merged"])
def test_fixed_rank_forms_and_curriculum_reduce_the_error(tiny_vit, form):
    logged, tables = {}, {}
    ctx = context(tiny_vit, logged, tables)
    q = perturbed_twin(tiny_vit, rank=2)
    weight = q.blocks[0].mlp.fc2.weight.clone()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = (q(x) - tiny_vit(x)).pow(2).mean()
    hook = LowRankHook(form=form, search=False, fixed_rank=4, lr=1e-2, layers=("fc2",))
    reconstruct_blocks(q, ctx, iters=60, batch_size=8, hooks=[hook], sampler=CurriculumBatches(),
                       progress=False)
    with torch.no_grad():
        assert (q(x) - tiny_vit(x)).pow(2).mean() < before / 4
    assert hook.chosen == {"blocks.0.mlp.fc2": 4, "blocks.1.mlp.fc2": 4}
    fc2 = q.blocks[0].mlp.fc2
    if form == "merged":  # folded into the weight: no module, no extra cost
        assert fc2.branch is None and not torch.equal(fc2.weight, weight)
        assert ctx.metrics["lowrank_extra_params"] == 0
    else:
        assert fc2.branch.rank == 4 and torch.equal(fc2.weight, weight)


def test_disabled_hook_trains_nothing(tiny_vit):
    ctx = context(tiny_vit, {}, {})
    q = perturbed_twin(tiny_vit, rank=2)
    state = copy.deepcopy(q.state_dict())
    hook = LowRankHook(enabled=False)
    reconstruct_blocks(q, ctx, iters=5, batch_size=8, hooks=[hook], progress=False)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items()) and not ctx.metrics


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="form"):
        LowRankHook(form="fused")
    with pytest.raises(ValueError, match="estimator"):
        LowRankHook(estimator="gumbel")
    with pytest.raises(ValueError, match="search_warmup"):
        LowRankHook(search_warmup=0.6, search_fraction=0.5)
