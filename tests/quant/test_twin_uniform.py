import pytest
import torch

from vitquant.quant.twin_uniform import GELU_MIN, TwinUniformQuantizer


def test_softmax_twin_by_hand():
    # b=4: Δ_R2 = 1/2^3, m = 2 → Δ_R1 = 1/32, R1 = [0, 8·Δ_R1) = [0, 0.25)
    q = TwinUniformQuantizer(bits=4, mode="softmax")
    q.set_candidate(torch.tensor([1 / 32]), torch.tensor([1 / 8]))
    x = torch.tensor([0.01, 0.1, 0.24, 0.25, 0.6, 1.0])
    codes, in_r2 = q.encode(x)
    assert codes.tolist() == [0, 3, 7, 2, 5, 7]
    assert in_r2.tolist() == [False, False, False, True, True, True]
    assert torch.equal(q(x), torch.tensor([0.0, 0.09375, 0.21875, 0.25, 0.625, 0.875]))


def test_softmax_candidates_fix_r2_and_use_power_of_two_ratios():
    q = TwinUniformQuantizer(bits=6, mode="softmax", max_shift=19)
    cands = q.candidates(torch.rand(10, 1))
    assert len(cands) == 20
    for m, (r1, r2) in enumerate(cands):
        assert r2.item() == 1 / 32 and r1.item() == pytest.approx(2.0 ** -m / 32)


def test_gelu_twin_by_hand():
    q = TwinUniformQuantizer(bits=4, mode="gelu")
    q.set_candidate(torch.tensor([GELU_MIN / 8]), torch.tensor([0.5]))
    x = torch.tensor([-0.17, -0.05, 0.0, 0.3, 10.0])
    codes, positive = q.encode(x)
    assert codes.tolist() == [-8, -2, 0, 1, 7]
    assert positive.tolist() == [False, False, True, True, True]
    expected = torch.tensor([-8 * GELU_MIN / 8, -2 * GELU_MIN / 8, 0.0, 0.5, 3.5])
    assert torch.allclose(q(x), expected)


def test_gelu_candidates_follow_the_official_grid_and_init_keeps_least_mse():
    x = torch.nn.functional.gelu(torch.randn(4096) * 2)
    q = TwinUniformQuantizer(bits=4, mode="gelu")
    cands = q.candidates(x.reshape(-1, 1))
    init = x.max() / 7.5
    assert len(cands) == 101
    assert cands[0][1].item() == pytest.approx(0.01 * init.item())
    assert cands[-1][1].item() == pytest.approx(1.2 * init.item())
    assert all(c[0].item() == pytest.approx(GELU_MIN / 8) for c in cands)
    q.init_from(x)
    errors = [(q.fake_quant(x, *c) - x).pow(2).mean().item() for c in cands]
    assert (q(x) - x).pow(2).mean().item() == pytest.approx(min(errors))


def test_state_dict_round_trip_and_ste_gradient():
    x = torch.softmax(torch.randn(2, 3, 5, 5) * 3, dim=-1)
    q = TwinUniformQuantizer(bits=4, mode="softmax")
    q.init_from(x)
    fresh = TwinUniformQuantizer(bits=4, mode="softmax")
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))
    xg = x.clone().requires_grad_(True)
    q(xg).sum().backward()
    assert torch.all((xg.grad == 0) | (xg.grad == 1)) and xg.grad.sum() > 0


def test_unknown_mode_rejected():
    with pytest.raises(ValueError):
        TwinUniformQuantizer(bits=4, mode="relu")
