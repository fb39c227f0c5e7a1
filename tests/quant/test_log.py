import math

import pytest
import torch

from vitquant.quant.log import LogQuantizer


def test_log2_levels_and_zero_region():
    q = LogQuantizer(bits=2, levels_per_octave=1, fixed_scale=1.0)
    q.init_from(torch.tensor([1.0]))
    # codes 0..3 → 1, 1/2, 1/4, 1/8; round(−log2 x) ≥ 4 → 0
    x = torch.tensor([1.0, 0.6, 0.26, 0.13, 0.05, 0.0])
    assert torch.allclose(q(x), torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0, 0.0]))


def test_logsqrt2_matches_repq_formula():
    q = LogQuantizer(bits=4, levels_per_octave=2, fixed_scale=1.0)
    q.init_from(torch.tensor([1.0]))
    x = torch.rand(1000) * 0.99 + 1e-4
    code = torch.round(-2 * torch.log2(x)).clamp(0, 15)
    repq = 2 ** (-torch.ceil(code / 2)) * ((code % 2) * (math.sqrt(2) - 1) + 1)
    repq[torch.round(-2 * torch.log2(x)) >= 16] = 0
    assert torch.allclose(q(x), repq, atol=1e-7)


def test_percentile_scale_search_and_gradient():
    x = torch.softmax(torch.randn(8, 16, 16) * 3, dim=-1)
    q = LogQuantizer(bits=4, levels_per_octave=2)
    q.init_from(x)
    assert 0 < q.scale.item() <= x.max().item()
    xr = x.clone().requires_grad_(True)
    q(xr).sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_bad_levels_rejected():
    with pytest.raises(ValueError, match="levels_per_octave"):
        LogQuantizer(bits=4, levels_per_octave=3)
