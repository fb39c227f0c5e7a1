"""LSQ quantizer: forward values and gradients against hand-derived cases."""
import math

import pytest
import torch

from vitquant.quant.lsq import LSQQuantizer


def ready(q: LSQQuantizer, scale: float, offset: float = 0.0) -> LSQQuantizer:
    q.set_param("scale", torch.tensor([scale]))
    q.set_param("offset", torch.tensor([offset]))
    q.initialized.fill_(True)
    return q


@pytest.mark.parametrize("mode,g", [("none", 1.0), ("lsq", 0.5), ("l1", 1 / math.sqrt(2.7))])
def test_signed_forward_and_step_gradient(mode, g):
    # 2 bits signed: codes -2..1. x/s = [-2.6, -0.4, 0.6, 1.8] -> clamp [-2, -0.4, 0.6, 1] -> round [-2, 0, 1, 1]
    q = ready(LSQQuantizer(2, role="weight", grad_scale=mode), 0.5)
    x = torch.tensor([-1.3, -0.2, 0.3, 0.9], requires_grad=True)
    y = q(x)
    assert torch.allclose(y, torch.tensor([-1.0, 0.0, 0.5, 0.5]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))  # STE inside the range only
    # dŷ/ds: Q_N = -2 and Q_P = 1 where clipped, round(v) - v = 0.4, 0.4 inside; times the grad scale g
    # (lsq: 1/sqrt(N*Q_P) = 1/sqrt(4); l1: 1/sqrt(sum|x| * Q_P) = 1/sqrt(2.7)).
    assert q.scale.grad.item() == pytest.approx(-0.2 * g, rel=1e-5)


def test_unsigned_with_offset():
    # 2 bits unsigned: codes 0..3, s = 0.5, beta = -0.2: (x-beta)/s = [-0.2, 0.6, 1.6, 4.4] -> [0, 1, 2, 3]
    q = ready(LSQQuantizer(2, signed=False, learn_offset=True, grad_scale="none"), 0.5, -0.2)
    x = torch.tensor([-0.3, 0.1, 0.6, 2.0])
    y = q(x)
    assert torch.allclose(y, torch.tensor([-0.2, 0.3, 0.8, 1.3]))
    y.sum().backward()
    assert q.offset.grad.item() == pytest.approx(2.0)  # dŷ/dβ = 1 where clipped, 0 inside (STE)
    assert q.scale.grad.item() == pytest.approx(0 + (1 - 0.6) + (2 - 1.6) + 3)


def test_activation_grad_scale_counts_elements_per_sample():
    q = ready(LSQQuantizer(3, grad_scale="lsq"), 1.0)  # activation: N = elements per sample = 6
    assert q.step_grad_scale(torch.zeros(5, 2, 3)) == pytest.approx(1 / math.sqrt(6 * 3))
    q = ready(LSQQuantizer(3, grad_scale="sqrt_n"), 1.0)
    assert q.step_grad_scale(torch.zeros(5, 2, 3)) == pytest.approx(1 / (math.sqrt(6) * 3))


def test_inits():
    act = LSQQuantizer(2)
    act.init_from(torch.tensor([[1.0], [-3.0]]))
    assert act.scale.item() == pytest.approx(2 * 2.0 / math.sqrt(1))  # 2 mean|x| / sqrt(Q_P)
    w = LSQQuantizer(3, role="weight")  # codes -4..3; s0 = 1/3 -> codes (3,-3,2,-2) -> s = 8/26, stable
    w.init_from(torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert w.scale.item() == pytest.approx(8 / 26)
    gelu = LSQQuantizer(2, signed=False, learn_offset=True)
    gelu.init_from(torch.tensor([[-0.1], [0.5], [1.6]]))
    assert gelu.offset.item() == pytest.approx(-0.1)
    assert isinstance(gelu.offset, torch.nn.Parameter) and isinstance(gelu.scale, torch.nn.Parameter)


def test_head_wise_scales_and_state_roundtrip():
    q = LSQQuantizer(4, granularity="head")
    q.init_from(torch.randn(2, 3, 5, 4) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1))
    assert q.scale.shape == (3,) and q.scale[0] < q.scale[1] < q.scale[2]
    fresh = LSQQuantizer(4, granularity="head")
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(fresh(x), q(x))


def test_bits_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        LSQQuantizer(17)
