import math

import pytest
import torch

from vitquant.quant.sulq import SULQuantizer


def fitted(values, **kw) -> SULQuantizer:
    q = SULQuantizer(**{"bits": 2, "shifts": [1.0], **kw})
    q.init_from(torch.tensor(values))
    return q


def official_search(x: torch.Tensor, bits: int, shifts) -> tuple[float, float, float]:
    """The official η search (IaS-ViT ``LogSqrt2Quantizer.init_quantization_scale``), transcribed."""
    best, out = 1e10, None
    for eta in shifts:
        t = torch.log(x + eta) / math.log(2.0)
        maxv, minv = t.max(), t.min()
        delta = (maxv - minv) / (2 ** bits - 1)
        q = torch.clamp(torch.round((t - minv) / delta), 0, 2 ** bits - 1)
        x_q = 2 ** torch.round(q * delta + minv) - eta
        score = (x - x_q).pow(2).mean()
        if score < best:
            best, out = score, (eta, minv.item(), maxv.item())
    return out


X = torch.tensor([0.0, 0.5, 0.8, 3.0, 10.0])


def test_official_forward_by_hand():
    # η = 1: t = log2(x + 1), m = 0, M = 2; forward Δ = 2/2^2 = 0.5, codes 0..4
    # t = [0, .585, .848, 2, 3.46] → q = [0, 1, 2, 4, 4] → exponent q·Δ = [0, .5, 1, 2, 2]
    # rounded (half to even, as torch.round) → [0, 0, 1, 2, 2] → x̂ = 2^e − 1
    q = fitted([0.0, 1.0, 3.0])
    assert (q.shift.item(), q.log_min.item(), q.log_max.item()) == (1.0, 0.0, 2.0)
    assert torch.equal(q(X), torch.tensor([0.0, 0.0, 1.0, 3.0, 3.0]))


def test_uniform_log_levels_without_exponent_rounding():
    q = fitted([0.0, 1.0, 3.0], round_exponent=False)
    assert torch.allclose(q(X), torch.tensor([0.0, 2 ** 0.5 - 1, 1.0, 3.0, 3.0]))


def test_b_bit_grid_when_not_official():
    # Δ = 2/3, codes 0..3: t/Δ = [0, .877, 1.27, 3, 5.2] → q = [0, 1, 1, 3, 3]
    q = fitted([0.0, 1.0, 3.0], official_grid=False)
    assert torch.equal(q(X), torch.tensor([0.0, 1.0, 1.0, 3.0, 3.0]))
    q = fitted([0.0, 1.0, 3.0], official_grid=False, round_exponent=False)
    assert torch.allclose(q(X), torch.tensor([0.0, 2 ** (2 / 3) - 1, 2 ** (2 / 3) - 1, 3.0, 3.0]))


def test_shift_search_picks_the_exact_shift():
    # 2^k − 0.5 for k = −1..2: with η = 0.5, t = −1..2 is the 2-bit calibration grid exactly
    q = SULQuantizer(bits=2)
    x = torch.tensor([0.0, 0.5, 1.5, 3.5])
    q.init_from(x)
    assert (q.shift.item(), q.log_min.item(), q.log_max.item()) == (0.5, -1.0, 2.0)


@pytest.mark.parametrize("bits", [3, 4])
def test_shift_search_matches_official_on_softmax(bits):
    x = torch.softmax(torch.randn(2, 3, 17, 17) * 3, dim=-1)
    q = SULQuantizer(bits=bits)
    q.init_from(x)
    eta, m, big_m = official_search(x, bits, q.shifts)
    assert q.shift.item() == pytest.approx(eta)
    assert q.log_min.item() == pytest.approx(m, abs=1e-5)
    assert q.log_max.item() == pytest.approx(big_m, abs=1e-5)


def test_exponent_rounding_caps_distinct_levels_independent_of_bits():
    x = torch.softmax(torch.randn(4, 3, 33, 33) * 3, dim=-1)
    levels = {}
    for bits in (4, 8):
        for rounded in (True, False):
            q = SULQuantizer(bits=bits, shifts=[0.01], round_exponent=rounded)
            q.init_from(x)
            levels[bits, rounded] = q(x).unique().numel()
    # η = 0.01: outputs 2^k − η, k integer in [round(log2 0.01), 0] → ≤ ⌈|log2 0.01|⌉ + 1 = 8 levels
    assert levels[4, True] <= 8 and levels[8, True] <= 8
    assert levels[4, False] == 17  # 2^b + 1 codes of the official forward grid, all used
    assert levels[8, False] > 100


def test_ste_gradient_reaches_input_inside_range_only():
    q = fitted([0.0, 1.0, 3.0], round_exponent=False)
    x = torch.tensor([0.3, 2.0, 10.0], requires_grad=True)
    q(x).sum().backward()
    # inside: d/dx 2^(q·Δ+m) with STE = 2^e / (x + η); above M: clamped code, no gradient
    e = torch.round(torch.log2(x.detach()[:2] + 1) / 0.5) * 0.5
    assert torch.allclose(x.grad[:2], 2 ** e / (x.detach()[:2] + 1))
    assert x.grad[2] == 0


def test_state_dict_round_trip_per_head():
    x = torch.softmax(torch.randn(2, 3, 9, 9) * torch.tensor([1.0, 3.0, 6.0]).view(1, 3, 1, 1), dim=-1)
    q = SULQuantizer(bits=4, granularity="head", round_exponent=False)
    q.init_from(x)
    assert q.shift.shape == (3,)
    fresh = SULQuantizer(bits=4, granularity="head")
    fresh.load_state_dict(q.state_dict())
    assert fresh.round_exponent is False
    assert torch.equal(fresh(x), q(x))


def test_rejects_bad_shifts():
    with pytest.raises(ValueError, match="shifts"):
        SULQuantizer(bits=4, shifts=[0.0, 0.1])


def op_by_op(q: SULQuantizer, x: torch.Tensor) -> torch.Tensor:
    """The quantizer as a plain autograd graph (``round_ste`` twice), the reference of the fused path."""
    from vitquant.quant.ste import round_ste
    shift, m, M = (q.expand(t, x) for t in (q.shift, q.log_min, q.log_max))
    delta = ((M - m) / q.steps).clamp_min(1e-8)
    code = torch.clamp(round_ste((torch.log2(x + shift) - m) / delta), 0, q.steps)
    exponent = code * delta + m
    return torch.pow(2.0, round_ste(exponent) if q.round_exponent else exponent) - shift


@pytest.mark.parametrize("granularity", ["tensor", "head"])
@pytest.mark.parametrize("round_exponent", [True, False])
def test_fused_ste_equals_the_graph_in_values_and_gradient(granularity, round_exponent):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9).softmax(-1)
    q = SULQuantizer(4, granularity=granularity, round_exponent=round_exponent)
    q.init_from(x)
    x.requires_grad_(True)
    g = torch.randn_like(x)
    y = q(x)
    assert type(y.grad_fn).__name__ == "SULQSTEBackward"
    y.backward(g)
    fused_grad, x.grad = x.grad.clone(), None
    expected = op_by_op(q, x)
    expected.backward(g)
    assert torch.equal(y, expected) and torch.equal(fused_grad, x.grad)
    assert fused_grad.abs().sum() > 0  # some codes lie strictly inside the grid
    with torch.no_grad():  # the in-place evaluation path
        assert torch.equal(q(x), expected)
