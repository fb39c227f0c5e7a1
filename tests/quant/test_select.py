"""The branch-free select is torch.where bit for bit: values, gradients, and the special floats."""
from __future__ import annotations

import pytest
import torch

from vitquant.quant.select import BIT_VIEW, keep, select

SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1.5, -2.25, 1e-40]


def operands(dtype: torch.dtype, n: int = 257) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    a[: len(SPECIAL)] = torch.tensor(SPECIAL).to(dtype)
    b[len(SPECIAL): 2 * len(SPECIAL)] = torch.tensor(SPECIAL).to(dtype)
    mask = torch.rand(n, generator=g) < 0.5
    return mask, a, b


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal as bit patterns: NaN equals NaN, −0 differs from +0."""
    return x.dtype == y.dtype and torch.equal(x.view(BIT_VIEW[x.element_size()]), y.view(BIT_VIEW[y.element_size()]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_values_are_where_bit_for_bit(dtype: torch.dtype) -> None:
    mask, a, b = operands(dtype)
    assert same_bits(select(mask, a, b), torch.where(mask, a, b))
    assert same_bits(select(mask, b, a), torch.where(mask, b, a))
    assert same_bits(keep(mask, a), torch.where(mask, a, 0.0))


def test_gradients_are_where_gradients_bit_for_bit() -> None:
    mask, a, b = operands(torch.float32)
    grad = torch.randn(a.shape)
    grad[:4] = torch.tensor([-0.0, 0.0, -1.0, float("nan")])
    got, want = [], []
    for fn, out in ((select, got), (torch.where, want)):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        fn(mask, x, y).backward(grad)
        out += [x.grad, y.grad]
    assert all(same_bits(g, w) for g, w in zip(got, want))
    x = a.clone().requires_grad_()
    keep(mask, x).backward(grad)
    x_ref = a.clone().requires_grad_()
    torch.where(mask, x_ref, 0.0).backward(grad)
    assert same_bits(x.grad, x_ref.grad)


def test_one_operand_without_gradient() -> None:
    mask, a, b = operands(torch.float32)
    x = a.clone().requires_grad_()
    select(mask, b, x).sum().backward()
    assert torch.equal(x.grad, (~mask).float())


def test_keeps_only_the_bool_mask_for_backward() -> None:
    mask, a, b = operands(torch.float32, n=4096)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        select(mask, a.requires_grad_(), b.requires_grad_())
    assert [t.dtype for t in saved] == [torch.bool]


def test_broadcast_and_mixed_dtypes_fall_back_to_where() -> None:
    mask = torch.tensor([[True], [False]])
    a, b = torch.arange(6.0).reshape(2, 3), torch.full((2, 3), -1.0)
    assert torch.equal(select(mask, a, b), torch.where(mask, a, b))
    assert torch.equal(keep(mask, a), torch.where(mask, a, 0.0))
    assert torch.equal(select(mask[:, :1].expand(2, 3), a, b.double()), torch.where(mask, a, b.double()))


@pytest.mark.filterwarnings("ignore:where received a uint8 condition")
def test_a_mask_that_is_not_bool_goes_to_where() -> None:
    """A uint8 mask of 0/2 would double the bits under the multiply; ``where`` reads it as nonzero."""
    mask, a, b = operands(torch.float32)
    assert same_bits(select(mask.to(torch.uint8) * 2, a, b), torch.where(mask, a, b))
