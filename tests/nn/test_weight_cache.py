"""Frozen weights are fake-quantized once in evaluation, bit-identically, and re-quantized on change."""
import copy
from functools import partial

import torch

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn import SITE_KINDS, iter_sites
from vitquant.quant.sulq import SULQuantizer
from vitquant.quant.uniform import UniformQuantizer


def calibrated_twin(fp: torch.nn.Module) -> torch.nn.Module:
    recipe = Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel", bits=4),
                          "activation": partial(UniformQuantizer, bits=4),
                          "post_softmax": partial(SULQuantizer, bits=4)}, [init_ranges], n_calib=4)
    q = to_quant_twin(copy.deepcopy(fp))
    recipe.attach(q, list(SITE_KINDS), BitWidths(4, 4, 4, 4))
    recipe.calibrate(q, CalibContext(fp, torch.randn(4, 3, 32, 32), "cpu", 0))
    return q.eval()


def uncached(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference: the same forward with autograd on (no cache, STE rounding), detached."""
    with torch.enable_grad():
        return model(x).detach()


def test_cached_weights_are_bit_identical_to_the_uncached_path(tiny_vit):
    q, x = calibrated_twin(tiny_vit), torch.randn(3, 3, 32, 32)
    reference = uncached(q, x)
    with torch.no_grad():
        first, second = q(x), q(x)
    weight_sites = [s for _, s in iter_sites(q) if s.is_weight and s.quantizer is not None]
    assert weight_sites and all(s._cached is not None for s in weight_sites)
    assert torch.equal(first, reference) and torch.equal(second, reference)
    for s in weight_sites:  # the cached x̂ is exactly what the quantizer computes
        assert torch.equal(s._cached[1], s.quantizer(s._cached[0][2][0][0]))


def test_cache_follows_weight_and_quantizer_changes(tiny_vit):
    q, x = calibrated_twin(tiny_vit), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        q(x)
        q.head.weight.add_(0.5)            # an optimiser step / copy_ bumps the version counter
        assert torch.equal(q(x), uncached(q, x))
        q.blocks[0].mlp.fc1.weight_site.quantizer.scale.mul_(2)   # quantizer state changed in place
        assert torch.equal(q(x), uncached(q, x))
        q.blocks[0].attn.qkv.weight_site.quantizer.bits = 3       # structural state changed
        assert torch.equal(q(x), uncached(q, x))
    q.train()
    assert all(s._cached is None for _, s in iter_sites(q))


def test_no_cache_while_training_weights(tiny_vit):
    q = calibrated_twin(tiny_vit)
    layer = q.blocks[0].mlp.fc1
    layer.weight.requires_grad_(True)
    out = layer(torch.randn(2, 5, layer.in_features)).sum()
    out.backward()
    assert layer.weight.grad is not None and layer.weight_site._cached is None
