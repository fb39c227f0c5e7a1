import pytest
import torch

from vitquant.engines.curriculum import curriculum_batches, pacing, random_batches, sample_losses
from vitquant.engines.reconstruction import lp_loss, per_sample_lp_loss


def test_pacing_is_linear_from_start_to_all_at_half_the_iterations():
    assert pacing(0, 100) == pytest.approx(0.3)
    assert pacing(25, 100) == pytest.approx(0.65)
    assert pacing(50, 100) == 1.0 and pacing(90, 100) == 1.0
    assert pacing(1, 100, grow=0.0) == 1.0


def test_curriculum_draws_easiest_first_then_everything():
    losses = torch.arange(100, 0, -1).float()  # sample 99 is the easiest
    batches = curriculum_batches(losses, batch_size=10, iters=100, generator=torch.Generator().manual_seed(0))
    first = next(batches)
    assert len(first) == 10 and (first >= 100 - 32).all()  # ⌈(0.3 + 0.7/50)·100⌉ = 32 easiest
    seen = set()
    for _ in range(99):
        seen.update(next(batches).tolist())
    assert min(seen) < 10  # the hardest samples are in use by the end


def test_random_batches_match_the_previous_sampler():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = random_batches(20, 4, g1)
    for _ in range(3):
        assert torch.equal(next(batches), torch.randperm(20, generator=g2)[:4])


def test_sample_losses_in_order():
    values = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])
    assert torch.equal(sample_losses(lambda idx: values[idx], 5, 2), values)


@pytest.mark.parametrize("shape", [(4, 5, 6), (4, 10), (4, 2, 3, 3)])
def test_per_sample_loss_averages_to_the_batch_loss(shape):
    pred, target = torch.randn(shape), torch.randn(shape)
    per_sample = per_sample_lp_loss(pred, target)
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample.mean(), lp_loss(pred, target))


def test_any_reconstruction_can_use_the_curriculum(tiny_vit):
    """I&S-ViT-style weight reconstruction over every unit (patch conv, blocks, head), easy→hard."""
    import copy

    from vitquant.engines.context import CalibContext
    from vitquant.engines.curriculum import CurriculumBatches
    from vitquant.engines.range_init import init_ranges
    from vitquant.engines.reconstruction import reconstruct_blocks
    from vitquant.engines.rounding import SteWeights
    from vitquant.methods.recipe import BitWidths, Recipe
    from vitquant.models.twin import to_quant_twin
    from vitquant.quant.uniform import UniformQuantizer

    ctx = CalibContext(tiny_vit, torch.randn(8, 3, 32, 32), torch.device("cpu"))
    q = to_quant_twin(copy.deepcopy(tiny_vit)).eval()
    Recipe("t", {"weight": UniformQuantizer, "activation": UniformQuantizer}, [], n_calib=8).attach(
        q, ["weight", "post_ln", "post_gelu", "linear_in"], BitWidths(4, 4, 4, 4))
    init_ranges(q, ctx)
    head = q.head.weight.clone()
    reconstruct_blocks(q, ctx, iters=3, batch_size=4, hooks=[SteWeights(1e-3)], sampler=CurriculumBatches(),
                       progress=False)
    assert not torch.equal(q.head.weight, head)


def test_switched_off_curriculum_draws_like_the_default_sampler():
    from vitquant.engines.curriculum import CurriculumBatches, RandomBatches

    def draw(sampler) -> list[torch.Tensor]:
        batches = sampler.batches(20, 4, 10, torch.Generator().manual_seed(3), lambda: pytest.fail("scored"))
        return [next(batches) for _ in range(5)]

    assert all(torch.equal(a, b) for a, b in zip(draw(CurriculumBatches(enabled=False)), draw(RandomBatches())))
    with pytest.raises(ValueError, match="start fraction"):
        CurriculumBatches(start=0.0)
