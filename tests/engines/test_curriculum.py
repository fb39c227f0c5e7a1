import pytest
import torch

from vitquant.engines.curriculum import curriculum_batches, pacing, random_batches, sample_losses


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
