"""The in-place evaluation path and the fused STEs give the values and gradients of the op-by-op graph."""
import pytest
import torch

from vitquant.quant.ste import round_ste
from vitquant.quant.uniform import UniformQuantizer


def reference(q: UniformQuantizer, x: torch.Tensor) -> torch.Tensor:
    s, z = q.expand(q.scale, x), q.expand(q.zero_point, x)
    return (torch.clamp(round_ste(x / s) + z, q.qmin, q.qmax) - z) * s


@pytest.mark.parametrize("granularity, shape, symmetric", [("tensor", (4, 17, 24), False),
                                                           ("channel", (24, 40), False), ("channel", (24, 40), True)])
def test_fast_paths_equal_the_graph(granularity, shape, symmetric):
    q = UniformQuantizer(4, granularity=granularity, channel_dim=0 if len(shape) == 2 else -1, symmetric=symmetric)
    q.init_from(torch.randn(shape) * 0.7)
    x, g = torch.randn(shape, requires_grad=True), torch.randn(shape)
    y = q(x)  # fused STE (only x needs a gradient)
    y.backward(g)
    fused_grad, x.grad = x.grad.clone(), None
    expected = reference(q, x)
    expected.backward(g)
    assert torch.equal(y, expected) and torch.equal(fused_grad, x.grad)
    with torch.no_grad():  # evaluation path
        assert torch.equal(q(x), expected)
    q.make_learnable("scale")  # a learnable scale takes the learned-step STE
    assert q(x).grad_fn is not None and torch.equal(q(x), expected)


def test_fused_ste_with_a_fractional_zero_point_equals_the_graph():
    # I&S-ViT's reparameterization leaves z̃ = mean(z) unrounded: z cannot be folded into the bounds
    q = UniformQuantizer(3)
    q.init_from(torch.randn(50) * 0.7)
    q.zero_point.add_(0.37)
    assert q.frozen_params() is None
    x, g = torch.randn(6, 50, requires_grad=True), torch.randn(6, 50)
    y = q(x)
    y.backward(g)
    fused_grad, x.grad = x.grad.clone(), None
    expected = reference(q, x)
    expected.backward(g)
    assert torch.equal(y, expected) and torch.equal(fused_grad, x.grad)


def test_per_tensor_ste_finds_the_bounds_from_its_output():
    # frozen per-tensor Δ and bounds: the backward recovers "code at or beyond a bound" from x̂ alone
    q = UniformQuantizer(4)
    q.init_from(torch.randn(500) * 0.7)
    scale, lo, hi = q.frozen_params()
    codes = torch.tensor([lo - 3, lo - 0.4, lo, lo + 0.4, lo + 1, lo + 2, hi - 1, hi - 0.4, hi, hi + 0.3, hi + 9])
    x, g = (codes * scale).requires_grad_(True), torch.randn(len(codes))
    y = q(x)
    saved = y.grad_fn.saved_tensors  # x̂ itself: no mask, no copy
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()
    y.backward(g)
    fused_grad, x.grad = x.grad.clone(), None
    expected = reference(q, x)
    expected.backward(g)
    assert torch.equal(y, expected) and torch.equal(fused_grad, x.grad)
    assert (fused_grad == 0).tolist() == [True, True, True, True, False, False, False, True, True, True, True]


@pytest.mark.parametrize("granularity, shape, zero_shift, x_grad", [
    ("tensor", (4, 17, 24), 0.0, True), ("tensor", (4, 17, 24), 0.0, False),
    ("channel", (4, 17, 24), 0.0, True), ("tensor", (6, 50), 0.37, True)])
def test_learned_step_ste_equals_the_graph_bit_for_bit(granularity, shape, zero_shift, x_grad):
    # QDrop's learned activation steps: Δ trains, z stays; values and both gradients as the op-by-op graph
    torch.manual_seed(0)
    q = UniformQuantizer(4, granularity=granularity)
    q.init_from(torch.randn(shape) * 0.7)
    q.zero_point.add_(zero_shift)
    q.make_learnable("scale")
    x = torch.randn(shape)
    s, z = float(q.scale.detach().flatten()[0]), float(q.zero_point.flatten()[0])
    x.view(-1)[:4] = torch.tensor([(q.qmin - z) * s, (q.qmax - z) * s, 0.5 * s, 2.5 * s])  # bounds, ties
    g = torch.randn(shape)
    results = []
    for forward in (q, lambda t: reference(q, t)):
        xi = x.clone().requires_grad_(x_grad)
        y = forward(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, q.scale.grad.clone()))
        q.scale.grad = None
    assert type(q(x.requires_grad_(x_grad)).grad_fn).__name__ == "LearnedStepSTEBackward"
    for fused, graph in zip(*results, strict=True):
        assert (fused is None and graph is None) or torch.equal(fused, graph)


def test_learned_step_ste_keeps_only_its_input():
    q = UniformQuantizer(4)
    q.init_from(torch.randn(500))
    q.make_learnable("scale")
    x = torch.randn(4, 9, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        q(x)
    assert sum(t.numel() for t in saved if t.numel() > 1) == x.numel()
