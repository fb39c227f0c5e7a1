import torch

from vitquant.quant.adaround import AdaRound
from vitquant.quant.uniform import UniformQuantizer


def weight_quantizer(w: torch.Tensor) -> UniformQuantizer:
    q = UniformQuantizer(4, granularity="channel", channel_dim=0)
    q.init_from(w)
    return q


def test_soft_weight_starts_at_the_float_weight_and_hard_rounding_at_nearest():
    w = torch.randn(6, 5)
    base = weight_quantizer(w)
    ada = AdaRound(base, w)
    s, z = base.scale[:, None], base.zero_point[:, None]
    codes = torch.floor(w / s) + z
    inside = (codes >= 0) & (codes + 1 <= base.qmax)  # no clamping: soft weight = s·(⌊W/s⌋ + frac) = W
    torch.testing.assert_close(ada(w)[inside], w[inside])
    torch.testing.assert_close(ada.quantize(w, hard=True), base(w))  # V ≥ 0 ⇔ frac ≥ ½ at init


def test_hard_weight_lies_on_the_grid_for_any_rounding_choice():
    w = torch.randn(8, 7)
    base = weight_quantizer(w)
    ada = AdaRound(base, w)
    with torch.no_grad():
        ada.alpha.copy_(torch.randn_like(ada.alpha) * 5)  # arbitrary up/down decisions
    hard = ada.quantize(w, hard=True)
    assert torch.equal(base(hard), hard)
    up = (ada.alpha >= 0).float()
    expected = (torch.clamp(torch.floor(w / base.scale[:, None]) + up + base.zero_point[:, None], 0, 15)
                - base.zero_point[:, None]) * base.scale[:, None]
    torch.testing.assert_close(hard, expected)


def test_round_loss_is_zero_only_for_hard_decisions_and_gradient_reaches_v():
    w = torch.randn(4, 3)
    ada = AdaRound(weight_quantizer(w), w)
    with torch.no_grad():
        ada.alpha.fill_(10.0)  # h = 1 (clipped)
    assert ada.round_loss(2.0).item() == 0.0
    with torch.no_grad():
        ada.alpha.zero_()  # h = 0.5: 1 − 0^β = 1 per element
    assert ada.round_loss(2.0).item() == w.numel()
    ada(w).sum().backward()
    assert ada.alpha.grad is not None and ada.alpha.grad.abs().sum() > 0
