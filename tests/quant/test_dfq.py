import pytest
import torch

from vitquant.quant.dfq import DynamicFocusingQuantizer, intervals


def fixed(lower: float, upper: float, bits: int = 2, **kw) -> DynamicFocusingQuantizer:
    q = DynamicFocusingQuantizer(bits, **kw)
    q.set_param("lower", torch.tensor([lower]))
    q.set_param("upper", torch.tensor([upper]))
    q.initialized.fill_(True)
    return q


def test_uniform_levels_inside_the_interval_and_clamping_outside():
    q = fixed(0.2, 0.8)  # Δ = 0.2: levels 0.2, 0.4, 0.6, 0.8
    x = torch.tensor([0.0, 0.25, 0.45, 0.71, 1.0])
    torch.testing.assert_close(q(x), torch.tensor([0.2, 0.2, 0.4, 0.8, 0.8]))


def test_zero_level_keeps_an_exact_zero():
    q = fixed(0.2, 0.8, zero_level=True)  # codes: 0, then 0.2, 0.5, 0.8 (Δ = 0.3)
    x = torch.tensor([0.05, 0.15, 0.4, 0.9])
    torch.testing.assert_close(q(x), torch.tensor([0.0, 0.2, 0.5, 0.8]))


def test_interval_search_clips_a_rare_outlier():
    # 999 values in [0, 0.1) and one 1.0: with c = max every small value rounds to 0 (error ≈ Σx²),
    # with c = the 0.99-quantile only the outlier is clipped ((1 − c)² ≈ 0.81).
    x = torch.cat([torch.linspace(0, 0.0999, 999), torch.tensor([1.0])])
    q = DynamicFocusingQuantizer(2, lower_quantiles=(), upper_quantiles=(0.99, 1.0))
    q.init_from(x)
    assert q.lower.item() == 0.0
    assert q.upper.item() == pytest.approx(torch.quantile(x, 0.99).item())
    assert q(torch.tensor([1.0])).item() == pytest.approx(q.upper.item())


def test_interval_search_keeps_the_full_range_when_it_is_exact():
    x = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).repeat(50)  # exactly the 2-bit grid on [0, 1]
    q = DynamicFocusingQuantizer(2, lower_quantiles=(0.5,), upper_quantiles=(0.9, 1.0))
    q.init_from(x)
    assert (q.lower.item(), q.upper.item()) == (0.0, 1.0)
    torch.testing.assert_close(q(x), x)


def test_interval_search_raises_the_lower_end_when_nothing_is_below_it():
    x = torch.linspace(0.5, 0.6, 100)  # nothing near 0: [0, c] would waste levels
    q = DynamicFocusingQuantizer(2, lower_quantiles=(0.0,), upper_quantiles=(1.0,))
    q.init_from(x)
    assert q.lower.item() == pytest.approx(0.5) and q.upper.item() == pytest.approx(0.6)


def test_gradient_state_reload_and_intervals():
    x = torch.softmax(torch.randn(4, 3, 16, 16) * 3, dim=-1)
    q = DynamicFocusingQuantizer(3, granularity="head", zero_level=True)
    q.init_from(x)
    assert q.lower.shape == (3,) and (q.lower < q.upper).all()
    xr = x.clone().requires_grad_(True)
    q(xr).sum().backward()
    assert torch.isfinite(xr.grad).all()
    twin = DynamicFocusingQuantizer(3, granularity="head")
    twin.load_state_dict(q.state_dict())
    assert twin.zero_level and torch.equal(twin(x), q(x))
    holder = torch.nn.Module()
    holder.post_softmax_site = torch.nn.Module()
    holder.post_softmax_site.quantizer = q
    assert intervals(holder) == {"post_softmax": [q.lower.mean().item(), q.upper.mean().item()]}
