import pytest
import torch

from vitquant.quant.two_scale import TwoScaleQuantizer
from vitquant.quant.uniform import UniformQuantizer


def fixed(bits=4, scale=0.125, shift=2, **kw) -> TwoScaleQuantizer:
    q = TwoScaleQuantizer(bits=bits, **kw)
    q.set_candidate(torch.tensor([scale]), torch.tensor([float(shift)]))
    return q


def test_unsigned_codes_flags_and_values_by_hand():
    # b=4: 3-bit fields; S1 = 1/8, S2 = 2^2·S1 = 1/2, boundary 2^3·S1 = 1
    q = fixed()
    x = torch.tensor([0.0, 0.05, 0.3, 0.9, 0.99, 1.0, 1.3, 3.6, 10.0])
    codes, flags = q.encode(x)
    assert codes.tolist() == [0, 0, 2, 7, 7, 2, 3, 7, 7]
    assert flags.tolist() == [False] * 5 + [True] * 4
    assert torch.equal(q(x), torch.tensor([0.0, 0.0, 0.25, 0.875, 0.875, 1.0, 1.5, 3.5, 3.5]))


def test_signed_fine_region_holds_gelu_negatives():
    # fine field is 3-bit two's complement [−4, 3]; boundary 2^2·S1 = 0.5
    q = fixed(signed_fine=True)
    x = torch.tensor([-0.17, -0.6, 0.3, 0.45, 0.5, 1.3])
    codes, flags = q.encode(x)
    assert codes.tolist() == [-1, -4, 2, 3, 1, 3]
    assert flags.tolist() == [False, False, False, False, True, True]
    assert torch.equal(q(x), torch.tensor([-0.125, -0.5, 0.25, 0.375, 0.5, 1.5]))


def test_calibration_keeps_the_least_mse_candidate_and_beats_uniform_on_attention_probabilities():
    x = torch.softmax(torch.randn(64, 197) * 2, dim=-1)
    q = TwoScaleQuantizer(bits=4, max_shift=6, grid=10)
    q.init_from(x)
    errors = [(q.fake_quant(x, s, k) - x).pow(2).mean() for s, k in q.candidates(x.reshape(-1, 1))]
    assert (q(x) - x).pow(2).mean() == pytest.approx(min(errors).item())
    uniform = UniformQuantizer(bits=4, init="mse")
    uniform.init_from(x)
    assert (q(x) - x).pow(2).mean() < (uniform(x) - x).pow(2).mean()
    assert q.shift.item() > 0


def test_gelu_negatives_stay_in_the_fine_region_at_8_bits():
    x = torch.nn.functional.gelu(torch.randn(8192) * 2)
    q = TwoScaleQuantizer(bits=8, signed_fine=True)
    q.init_from(x)
    neg = x[x < 0]
    codes, flags = q.encode(neg)
    assert not flags.any() and (codes < 0).any()
    assert (q(neg) - neg).abs().max() <= q.scale.item() / 2 + 1e-7


def test_per_head_state_dict_round_trip():
    x = torch.softmax(torch.randn(2, 3, 6, 6) * torch.tensor([1.0, 3.0, 6.0]).view(1, 3, 1, 1), dim=-1)
    q = TwoScaleQuantizer(bits=4, granularity="head")
    q.init_from(x)
    fresh = TwoScaleQuantizer(bits=4, granularity="head")
    fresh.load_state_dict(q.state_dict())
    assert fresh.scale.shape == (3,) and fresh.shift.shape == (3,)
    assert torch.equal(fresh(x), q(x))


def test_straight_through_gradient_zero_where_clamped():
    q = fixed()
    x = torch.tensor([0.3, 0.99, 1.3, 10.0], requires_grad=True)
    q(x).sum().backward()
    # 0.99 rounds to fine code 8 > 7 (clamped); 10 exceeds the coarse range
    assert x.grad.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_uncalibrated_use_raises():
    with pytest.raises(RuntimeError):
        TwoScaleQuantizer(bits=4)(torch.rand(3))
