import pytest
import torch

from vitquant.quant.stats import least_error, quantiles_rows, subsample_rows
from vitquant.quant.uniform import UniformQuantizer


def test_asymmetric_minmax_matches_hand_computed_grid():
    q = UniformQuantizer(bits=2, init="minmax")
    q.init_from(torch.tensor([-1.0, 0.0, 2.0]))
    # Δ = 3/3 = 1, z = round(1/1) = 1; codes 0..3 → values −1, 0, 1, 2
    assert q.scale.item() == pytest.approx(1.0)
    assert q.zero_point.item() == 1.0
    x = torch.tensor([-1.4, -0.6, 0.4, 1.6, 5.0])
    assert torch.equal(q(x), torch.tensor([-1.0, -1.0, 0.0, 2.0, 2.0]))


def test_symmetric_grid():
    q = UniformQuantizer(bits=3, symmetric=True, init="minmax")
    q.init_from(torch.tensor([-3.0, 1.5]))
    # Δ = 3/(2^2−1) = 1, codes −4..3
    assert q.scale.item() == pytest.approx(1.0)
    assert torch.equal(q(torch.tensor([-9.0, -2.6, 0.4, 9.0])), torch.tensor([-4.0, -3.0, 0.0, 3.0]))


def test_per_channel_weight_scales():
    w = torch.tensor([[1.0, -1.0], [4.0, -4.0]])
    q = UniformQuantizer(bits=8, granularity="channel", channel_dim=0, symmetric=True)
    q.init_from(w)
    assert torch.allclose(q.scale, torch.tensor([1.0, 4.0]) / 127)
    assert torch.allclose(q(w), w)


def test_percentile_clips_an_outlier_and_search_keeps_the_least_error():
    x = torch.cat([torch.linspace(-1, 1, 10000), torch.tensor([100.0])])
    mm = UniformQuantizer(bits=4, init="minmax")
    p999 = UniformQuantizer(bits=4, init="percentile", percentiles=[0.999])
    mm.init_from(x)
    p999.init_from(x)
    assert p999.scale.item() == pytest.approx(2 * 0.998 / 15, rel=1e-3)
    errors = {}
    for p in (0.999, 0.9999, 0.99999):
        single = UniformQuantizer(bits=4, init="percentile", percentiles=[p])
        single.init_from(x)
        errors[p] = (single(x) - x).pow(2).mean().item()
    searched = UniformQuantizer(bits=4, init="percentile")
    searched.init_from(x)
    assert (searched(x) - x).pow(2).mean().item() == pytest.approx(min(errors.values()))


def test_mse_search_not_worse_than_minmax():
    x = torch.randn(4096)
    mm, ms = UniformQuantizer(bits=3, init="minmax"), UniformQuantizer(bits=3, init="mse")
    mm.init_from(x)
    ms.init_from(x)
    assert (ms(x) - x).pow(2).mean() <= (mm(x) - x).pow(2).mean()


def test_straight_through_gradient():
    q = UniformQuantizer(bits=4)
    q.init_from(torch.tensor([-1.0, 1.0]))
    x = torch.linspace(-0.8, 0.8, 11, requires_grad=True)
    q(x).sum().backward()
    # inside the range the gradient is the identity (clamp passes it through)
    assert torch.allclose(x.grad, torch.ones_like(x))


def test_uninitialised_quantizer_refuses_to_run_outside_calibration():
    q = UniformQuantizer(bits=4)
    with pytest.raises(RuntimeError, match="before calibration"):
        q(torch.ones(3))
    q.calibrating = True
    q(torch.ones(3))
    assert bool(q.initialized)


def test_state_dict_round_trip_with_per_channel_shapes():
    x = torch.randn(64, 16) * torch.linspace(0.1, 5, 16)
    q = UniformQuantizer(bits=4, granularity="channel", init="percentile")
    q.init_from(x)
    fresh = UniformQuantizer(bits=8)
    fresh.load_state_dict(q.state_dict())
    assert fresh.granularity == "channel" and fresh.bits == 4
    assert torch.equal(fresh(x), q(x))


def test_quantile_matches_torch_quantile_and_subsample_is_bounded():
    rows = torch.randn(1001, 3)
    qs = (0.0, 0.5, 0.999, 1.0, 0.0004, 0.37, 0.99999)
    for p, value in zip(qs, quantiles_rows(rows, qs)):
        assert torch.allclose(value, torch.quantile(rows, p, dim=0))
    for n in (1, 2, 3):  # both tails from a handful of rows
        few = torch.randn(n, 2)
        assert all(torch.allclose(v, torch.quantile(few, p, dim=0)) for p, v in zip(qs, quantiles_rows(few, qs)))
    big = torch.randn(10000, 8)
    small = subsample_rows(big, max_elements=800, seed=1)
    assert small.shape == (100, 8)
    assert torch.equal(small, subsample_rows(big, max_elements=800, seed=1))


def test_large_activation_does_not_break_quantile():
    x = torch.randn(1 << 25)  # over older torch.quantile's 2^24 limit
    q = UniformQuantizer(bits=8, init="percentile", percentiles=[0.999])
    q.init_from(x)
    assert 3.0 < (q.scale * 255).item() < 8.0


def test_invalid_options_fail_clearly():
    with pytest.raises(ValueError, match="granularity"):
        UniformQuantizer(bits=4, granularity="row")
    with pytest.raises(ValueError, match="init"):
        UniformQuantizer(bits=4, init="kl")


def test_candidate_search_scores_on_a_bounded_subsample_with_candidates_from_all_rows():
    """MSE search over a tensor above ``search_max_elements``: the clipping candidates come from the
    full tensor's range, the choice among them from the seeded subsample (same as searching that
    subsample with the full range's candidates)."""
    x = torch.randn(4000, 4) * torch.tensor([1.0, 2.0, 4.0, 8.0])
    x[0] = 40.0  # an outlier row: it sets the full view's candidate ranges whether or not it is sampled
    capped = UniformQuantizer(bits=4, init="mse", granularity="channel", search_max_elements=400)
    capped.init_from(x)
    rows = capped.rows(x)
    sample = capped.search_rows(rows)
    assert sample.shape == (100, 4)
    reference = UniformQuantizer(bits=4, init="mse", granularity="channel")
    candidates = [reference.params_for_range(lo, hi) for lo, hi in reference.candidate_ranges(capped.observe(x))]
    expected = least_error(candidates, lambda s, z: (reference.fake_quant(sample, s, z) - sample).pow(2).mean(0))
    assert torch.equal(capped.scale, expected[0]) and torch.equal(capped.zero_point, expected[1])
    uncapped = UniformQuantizer(bits=4, init="mse", granularity="channel")
    uncapped.init_from(x[:100])  # below the default cap: every row scores, as before
    assert torch.equal(uncapped.search_rows(uncapped.rows(x[:100])), uncapped.rows(x[:100]))
