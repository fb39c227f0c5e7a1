import torch

from vitquant.quant.ptf import PowerOfTwoFactorQuantizer


def fq_vit_reference(x: torch.Tensor, bits: int):
    """models/ptq/observer/ptf.py (FQ-ViT), on a (tokens, channels) tensor."""
    qmin, qmax = 0, 2 ** bits - 1
    scale8 = ((x.max() - x.min()) / (qmax - qmin)).clamp(torch.finfo(torch.float32).eps)
    scale1 = scale8 / 8
    zero = (qmin - torch.round(x.min() / scale8)).clamp(qmin, qmax)
    mask = torch.ones(x.shape[1])
    for j in range(x.shape[1]):
        data = x[:, j]
        scores = []
        for f in (1, 2, 4, 8):
            data_q = ((data / (scale1 * f) + zero).round().clamp(qmin, qmax) - zero) * scale1 * f
            scores.append((data - data_q).pow(2).mean())
        mask[j] = 2 ** scores.index(min(scores))
    return scale1 * mask, zero


def test_hand_computed_factors():
    # min −4, max 11 → scale8 = 15/15 = 1, z = 4, s = 1/8; channel 0 fits s, channel 1 needs 8s
    x = torch.tensor([[-0.5, -4.0], [0.25, 0.0], [0.5, 11.0]])
    q = PowerOfTwoFactorQuantizer(bits=4)
    q.init_from(x)
    assert q.scale.item() == 0.125 and q.zero_point.item() == 4
    assert q.alpha.tolist() == [0.0, 3.0]
    assert torch.equal(q(x), x)


def test_matches_the_official_observer():
    x = torch.randn(2, 50, 24)
    x[..., 3] *= 30
    x[..., 9] *= 6
    x[..., 11] += 5
    q = PowerOfTwoFactorQuantizer(bits=8)
    q.init_from(x)
    scale, zero = fq_vit_reference(x.reshape(-1, 24), 8)
    assert torch.allclose(q.scale * 2 ** q.alpha, scale)
    assert q.zero_point.item() == zero.item()
    assert q.alpha[3] == 3 and q.alpha.max() == 3


def test_state_dict_round_trip_and_ste_gradient():
    x = torch.randn(4, 10, 6)
    x[..., 2] *= 20
    q = PowerOfTwoFactorQuantizer(bits=6)
    q.init_from(x)
    fresh = PowerOfTwoFactorQuantizer(bits=6)
    fresh.load_state_dict(q.state_dict())
    assert fresh.alpha.shape == (6,)
    assert torch.equal(fresh(x), q(x))
    xg = torch.tensor([[0.1, 0.0, 1e4, 0.0, 0.0, 0.0]], requires_grad=True)
    q(xg).sum().backward()
    assert xg.grad[0, 0] == 1 and xg.grad[0, 2] == 0  # beyond the range: clamped
