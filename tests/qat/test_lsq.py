"""LSQ quantizer: forward values and gradients against hand-derived cases."""
import math
from functools import partial

import pytest
import torch

from vitquant.quant.lsq import LSQQuantizer
from vitquant.quant.ste import grad_scale, round_ste


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


def op_by_op(q: LSQQuantizer, x: torch.Tensor) -> torch.Tensor:
    """The autograd graph ``LSQSTE`` replaces: sub, div, clamp, ``round_ste``, mul, add."""
    xf = x.float()
    s = q.expand(grad_scale(q.scale, q.step_grad_scale(xf)), xf).abs().clamp_min(1e-8)
    beta = q.expand(q.offset, xf)
    return (round_ste(torch.clamp((xf - beta) / s, q.qmin, q.qmax)) * s + beta).to(x.dtype)


@pytest.mark.parametrize("granularity,shape,kw", [
    ("tensor", (4, 9, 16), dict(grad_scale="lsq")),
    ("tensor", (4, 9, 16), dict(signed=False, learn_offset=True, grad_scale="sqrt_n")),
    ("channel", (12, 16), dict(role="weight", grad_scale="l1")),
    ("head", (2, 3, 9, 8), dict(grad_scale="lsq")),
])
def test_fused_ste_reproduces_the_graph_bit_for_bit(granularity, shape, kw):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    q = LSQQuantizer(4, granularity=granularity, channel_dim=0 if granularity == "channel" else -1, **kw)
    q.init_from(x)
    # values exactly on the clamp bounds and on rounding ties, where the gradient rules switch
    s = float(q.scale.detach().flatten()[0])
    x.view(-1)[:4] = torch.tensor([q.qmin * s, q.qmax * s, 0.5 * s, 2.5 * s]) + float(q.offset.detach().flatten()[0])
    upstream = torch.randn(shape)
    grads = []
    for forward in (q, partial(op_by_op, q)):
        xi = x.clone().requires_grad_(True)
        y = forward(xi)
        (y * upstream).sum().backward()
        grads.append((y.detach(), xi.grad, *(p.grad.clone() for p in q.parameters())))
        q.zero_grad(set_to_none=True)
    for fused, graph in zip(*grads, strict=True):
        assert torch.equal(fused, graph)


def test_fused_ste_keeps_only_its_input():
    q = ready(LSQQuantizer(4, grad_scale="lsq"), 0.3)
    x = torch.randn(2, 5, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        q(x)
    assert sum(t.numel() for t in saved if t.numel() > 1) == x.numel()


def test_bf16_input_is_quantized_in_float32():
    q = ready(LSQQuantizer(4, grad_scale="none"), 0.3)
    x = (torch.randn(64) * 2).bfloat16().requires_grad_(True)
    y = q(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, op_by_op(q, x.detach()))
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16
