"""Variation-aware regularizer, its schedule, and the oscillation rate."""
import pytest
import torch

from vitquant.nn.linear import QuantLinear
from vitquant.qat.regularizer import OscillationTracker, bin_regularizer, reg_weight, variation_loss
from vitquant.quant.lsq import LSQQuantizer


def test_bin_regularizer_on_a_constructed_tensor():
    # s = 1, 3 bits signed (codes -4..3). codes: 0.1, 0.3 -> 0; 0.9, 1.1 -> 1; 2.0 -> 2 (alone); 5.0 -> clipped to 3.
    w = torch.tensor([0.1, 0.3, 0.9, 1.1, 2.0, 5.0], requires_grad=True)
    r = bin_regularizer(w, torch.tensor(1.0), -4, 3)
    distance = (0.01 + 0.09 + 0.01 + 0.01 + 0 + 0) / 6
    variance = 0.02 + 0.02  # unbiased variance of {0.1, 0.3} and of {0.9, 1.1}; single-element bins skipped
    assert r.item() == pytest.approx(distance + variance, rel=1e-5)
    r.backward()
    assert w.grad[5] == 0 and w.grad[0] != 0  # clipped weights get no gradient


def test_reg_weight_schedule():
    assert reg_weight(0.9, 4, 0.01) == 0.0  # first quarter of the epochs: off
    assert reg_weight(2.5, 4, 0.01) == pytest.approx(0.005)  # half-way through the cosine ramp
    assert reg_weight(4, 4, 0.01) == pytest.approx(0.01)
    assert reg_weight(3, 4, 0.0) == 0.0


def test_oscillation_rate_and_variation_loss_on_a_layer():
    layer = QuantLinear(4, 2)
    q = LSQQuantizer(2, role="weight")
    q.init_from(layer.weight)
    layer.weight_site.quantizer = q
    tracker = OscillationTracker()
    assert tracker.update(layer) is None
    codes = q.integer_codes(layer.weight.detach())
    with torch.no_grad():  # push exactly one weight across to another code
        i = int((codes.flatten() != q.qmax).nonzero()[0])
        layer.weight.view(-1)[i] = q.scale.item() * q.qmax
    assert tracker.update(layer) == pytest.approx(1 / 8)
    assert tracker.epoch_rate() == pytest.approx(1 / 8)
    assert variation_loss(layer).item() >= 0
