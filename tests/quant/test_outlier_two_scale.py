import torch

from vitquant.quant.outlier_two_scale import OutlierTwoScaleQuantizer


def test_planted_outlier_channels_are_flagged():
    x = torch.randn(2, 256, 32)
    x[..., 5] *= 40
    x[..., 17] *= 12
    q = OutlierTwoScaleQuantizer(bits=8)
    q.init_from(x)
    assert q.outlier.nonzero().flatten().tolist() == [5, 17]
    assert q.shift.item() >= 1
    single = q.fake_quant(x, q.scale, q.zero_point, torch.zeros(32))
    err_two = (q(x) - x)[..., [5, 17]].pow(2).mean()
    err_one = (single - x)[..., [5, 17]].pow(2).mean()
    assert err_two < err_one / 10
    normal = [c for c in range(32) if c not in (5, 17)]
    assert torch.equal(q(x)[..., normal], single[..., normal])


def test_hand_computed_scale_zero_point_and_shift():
    # normal channels span [−1, 2.75]: S = 3.75/15 = 0.25, z = 4; channel 4 spans 24 > 4 × 3.75
    normal = torch.tensor([-1.0, 0.0, 2.75])
    x = torch.stack([normal] * 4 + [torch.tensor([-8.0, 0.0, 16.0])], dim=1)
    q = OutlierTwoScaleQuantizer(bits=4)
    q.init_from(x)
    assert q.scale.item() == 0.25 and q.zero_point.item() == 4
    assert q.outlier.tolist() == [False] * 4 + [True]
    # n = 3 (step 2) and n = 4 (step 4) are both exact; the tie keeps the smaller shift
    assert q.shift.item() == 3
    assert torch.equal(q(x), x)


def test_no_outlier_means_one_scale():
    x = torch.randn(100, 8)
    q = OutlierTwoScaleQuantizer(bits=8)
    q.init_from(x)
    assert not q.outlier.any() and q.shift.item() == 0


def test_state_dict_round_trip_keeps_the_flag_bits():
    x = torch.randn(64, 12)
    x[:, 7] *= 50
    q = OutlierTwoScaleQuantizer(bits=6)
    q.init_from(x)
    sd = q.state_dict()
    assert sd["outlier"].dtype == torch.bool and sd["outlier"].shape == (12,)
    fresh = OutlierTwoScaleQuantizer(bits=6)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.outlier, q.outlier)
    assert torch.equal(fresh(x), q(x))


def test_ste_gradient():
    x = torch.randn(64, 4)
    q = OutlierTwoScaleQuantizer(bits=8)
    q.init_from(x)
    xg = torch.tensor([[0.0, 0.1, -1e5, 1e5]], requires_grad=True)
    q(xg).sum().backward()
    assert xg.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]
