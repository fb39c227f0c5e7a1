import copy
from functools import partial

import pytest
import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.engines.reparam import (
    fold_layernorm_pair,
    layernorm_linear_pairs,
    reparam_factors,
    reparameterize_layernorm,
)
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn.linear import QuantLinear
from vitquant.nn.site import set_quant_state, uncalibrated_sites
from vitquant.quant.uniform import UniformQuantizer

CHANNEL = partial(UniformQuantizer, granularity="channel")


def test_factors_by_hand():
    # s = [1, 3], z = [0, 3]: s̃ = 2, z̃ = 1.5, r = [0.5, 1.5], b = (z̃ − z)·s̃ = [3, −3]
    r, b, s, z = reparam_factors(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 3.0]))
    assert (s.item(), z.item()) == (2.0, 1.5)
    assert torch.equal(r, torch.tensor([0.5, 1.5])) and torch.equal(b, torch.tensor([3.0, -3.0]))
    _, b, _, z = reparam_factors(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 3.0]), round_zero_point=True)
    assert z.item() == 2.0 and torch.equal(b, torch.tensor([4.0, -2.0]))


def ln_linear(bias: bool):
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6).exp() * 2)
        norm.bias.copy_(torch.randn(6))
    linear = QuantLinear(6, 5, bias=bias, input_kind="post_ln")
    linear.input_site.quantizer = UniformQuantizer(bits=4, granularity="channel")
    x = torch.randn(64, 6)
    linear.input_site.quantizer.init_from(norm(x))
    return norm, linear, x


@pytest.mark.parametrize("bias", [True, False])
def test_fold_with_rounded_zero_point_is_exact(bias):
    norm, linear, x = ln_linear(bias)
    before = linear(norm(x))
    fold_layernorm_pair(norm, linear, round_zero_point=True)
    q = linear.input_site.quantizer
    assert q.granularity == "tensor" and q.scale.shape == (1,) and q.zero_point.shape == (1,)
    assert torch.allclose(linear(norm(x)), before, atol=1e-5)
    linear.input_site.enabled = False
    assert torch.allclose(linear(norm(x)), nn.functional.linear(norm(x), linear.weight, linear.bias))


def quantized_twin(model: nn.Module, kinds=("post_ln",)) -> nn.Module:
    """Twin with channel-wise post-LN input quantizers (4 bit), calibrated; other sites float."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):  # spread the channels, as trained LayerNorms do
                m.weight.copy_(torch.randn_like(m.weight).exp())
                m.bias.copy_(torch.randn_like(m.bias))
    q = to_quant_twin(copy.deepcopy(model))
    factories = {"weight": CHANNEL, "post_ln": partial(CHANNEL, init="percentile")}
    recipe = Recipe("t", {k: factories[k] for k in kinds}, [init_ranges], 8)
    recipe.attach(q, kinds=list(kinds), bits=BitWidths(4, 4, 4, 4))
    images = torch.randn(8, 3, 32, 32)
    recipe.calibrate(q, CalibContext(fp_model=model, images=images, device=torch.device("cpu")))
    return q


def outputs(model, x, weights=False, activations=True):
    set_quant_state(model, weights=weights, activations=activations)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_swin"])
def test_float_output_unchanged(name, request):
    q = quantized_twin(request.getfixturevalue(name))
    x = torch.randn(4, 3, 32, 32)
    before = outputs(q, x, activations=False)
    reparameterize_layernorm(q, None)
    assert (outputs(q, x, activations=False) - before).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_swin"])
def test_quantized_output_exact_with_rounded_zero_point_only(name, request):
    q = quantized_twin(request.getfixturevalue(name))
    x = torch.randn(4, 3, 32, 32)
    fp, before = outputs(q, x, activations=False), outputs(q, x)
    exact, official = copy.deepcopy(q), copy.deepcopy(q)
    reparameterize_layernorm(exact, None, round_zero_point=True)
    reparameterize_layernorm(official, None)
    assert (outputs(exact, x) - before).abs().max() < 1e-4
    # official: the grid moves by frac(z̃) of a step, so it is not the same quantizer, but as good a one
    shifted = outputs(official, x)
    assert (shifted - before).abs().max() > 1e-4
    assert (shifted - fp).pow(2).mean() < 3 * (before - fp).pow(2).mean()


def test_pairs_found_by_block_type(tiny_vit, tiny_swin):
    assert len(list(layernorm_linear_pairs(to_quant_twin(tiny_vit)))) == 4
    swin = to_quant_twin(tiny_swin)
    pairs = list(layernorm_linear_pairs(swin))
    assert len(pairs) == 9 and pairs[4][1] is swin.layers[1].downsample.reduction
    assert len(list(layernorm_linear_pairs(swin, include_reduction=False))) == 8


def test_swin_reduction_gets_a_bias_and_can_be_skipped(tiny_swin):
    q = quantized_twin(tiny_swin)
    reduction = q.layers[1].downsample.reduction
    assert reduction.bias is None
    skipped = copy.deepcopy(q)
    reparameterize_layernorm(skipped, None, include_reduction=False)
    assert skipped.layers[1].downsample.reduction.input_site.quantizer.granularity == "channel"
    reparameterize_layernorm(q, None)
    assert reduction.bias is not None and reduction.input_site.quantizer.granularity == "tensor"


def test_weight_quantizers_of_changed_linears_reinitialise(tiny_vit):
    q = quantized_twin(tiny_vit, kinds=("post_ln", "weight"))
    proj_scale = q.blocks[0].attn.proj.weight_site.quantizer.scale.clone()
    reparameterize_layernorm(q, None)
    assert sorted(uncalibrated_sites(q)) == sorted(f"blocks.{i}.{n}.weight" for i in (0, 1)
                                                  for n in ("attn.qkv", "mlp.fc1"))
    init_ranges(q, CalibContext(fp_model=tiny_vit, images=torch.randn(2, 3, 32, 32), device=torch.device("cpu")))
    assert uncalibrated_sites(q) == []
    assert torch.equal(q.blocks[0].attn.proj.weight_site.quantizer.scale, proj_scale)
    fresh = CHANNEL(bits=4, channel_dim=0)
    fresh.init_from(q.blocks[0].attn.qkv.weight)  # fitted to the rescaled weights
    assert torch.equal(q.blocks[0].attn.qkv.weight_site.quantizer.scale, fresh.scale)


def test_stage_is_idempotent(tiny_vit):
    q = quantized_twin(tiny_vit)
    reparameterize_layernorm(q, None)
    state = copy.deepcopy(q.state_dict())
    logged = []
    reparameterize_layernorm(q, CalibContext(fp_model=tiny_vit, images=torch.zeros(1, 3, 32, 32),
                                             device=torch.device("cpu"), log=logged.append))
    assert logged == [{"reparam/pairs": 0.0}]
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items() if torch.is_tensor(v))


def test_uncalibrated_quantizer_refused():
    norm, linear, _ = ln_linear(True)
    linear.input_site.quantizer.initialized.fill_(False)
    with pytest.raises(RuntimeError, match="range init"):
        fold_layernorm_pair(norm, linear)
