import copy
from functools import partial

import pytest
import torch
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn import SITE_KINDS, QuantSite, iter_sites, set_quant_state, uncalibrated_sites
from vitquant.quant.uniform import UniformQuantizer

ALL_KINDS = list(SITE_KINDS)


def uniform_recipe() -> Recipe:
    return Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel"),
                        "activation": partial(UniformQuantizer)}, [init_ranges], n_calib=4)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_twin_with_quantizers_off_matches_fp(fixture, request):
    fp = request.getfixturevalue(fixture)
    q = to_quant_twin(copy.deepcopy(fp)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(q(x), fp(x), atol=1e-5, rtol=0)
    assert set(q.state_dict()) == set(fp.state_dict())
    assert not any(isinstance(m, (Attention, WindowAttention)) for m in q.modules()), "fused attention kept"


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_twin_with_calibrated_but_disabled_quantizers_matches_fp(fixture, request):
    fp = request.getfixturevalue(fixture)
    q = to_quant_twin(copy.deepcopy(fp))
    recipe = uniform_recipe()
    recipe.attach(q, ALL_KINDS, BitWidths(4, 4, 4, 4))
    recipe.calibrate(q, CalibContext(fp, torch.randn(4, 3, 32, 32), torch.device("cpu")))
    x = torch.randn(2, 3, 32, 32)
    set_quant_state(q, weights=False, activations=False)
    with torch.no_grad():
        torch.testing.assert_close(q(x), fp(x), atol=1e-5, rtol=0)
        set_quant_state(q, weights=True, activations=True)
        assert (q(x) - fp(x)).abs().max() > 1e-3


def test_vit_sites_have_expected_kinds(tiny_vit):
    q = to_quant_twin(tiny_vit)
    kinds = {name: site.kind for name, site in iter_sites(q)}
    assert kinds["blocks.0.attn.qkv.input"] == "post_ln"
    assert kinds["blocks.0.attn.proj.input"] == "attn_out"
    assert kinds["blocks.0.mlp.fc1.input"] == "post_ln"
    assert kinds["blocks.0.mlp.fc2.input"] == "post_gelu"
    assert kinds["blocks.0.attn.post_softmax"] == "post_softmax"
    assert kinds["blocks.0.norm1.input"] == "ln_in"
    assert kinds["head.input"] == "linear_in"
    assert kinds["blocks.1.mlp.fc2.weight"] == "weight"
    ends = {name for name, site in iter_sites(q) if site.is_end}
    assert ends == {"patch_embed.proj.weight", "head.input", "head.weight"}
    assert set(kinds.values()) == set(SITE_KINDS)


def test_swin_sites_include_patch_merging(tiny_swin):
    q = to_quant_twin(tiny_swin)
    kinds = {name: site.kind for name, site in iter_sites(q)}
    assert kinds["layers.1.downsample.reduction.input"] == "post_ln"
    assert kinds["layers.1.downsample.norm.input"] == "ln_in"
    assert kinds["head.fc.input"] == "linear_in"
    assert kinds["layers.0.blocks.1.attn.softmax_in"] == "softmax_in"


def test_swin_softmax_input_excludes_shift_mask(tiny_swin):
    q = to_quant_twin(tiny_swin)
    seen = []
    site = q.layers[0].blocks[1].attn.softmax_in_site  # shifted-window block
    site.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    q(torch.randn(1, 3, 32, 32))
    assert seen[0].min() > -50, "the −100 shifted-window mask reached the Softmax-input site"


def test_every_site_fires_and_policy_leaves_other_kinds_float(tiny_vit):
    q = to_quant_twin(copy.deepcopy(tiny_vit))
    recipe = uniform_recipe()
    recipe.attach(q, ["weight", "post_softmax"], BitWidths(4, 4, 8, 8))
    recipe.calibrate(q, CalibContext(tiny_vit, torch.randn(4, 3, 32, 32), torch.device("cpu")))
    assert uncalibrated_sites(q) == []
    on = {site.kind for _, site in iter_sites(q) if site.quantizer is not None}
    assert on == {"weight", "post_softmax"}
    assert q.head.weight_site.quantizer.bits == 8 and q.blocks[0].mlp.fc1.weight_site.quantizer.bits == 4


def test_coverage_check_catches_a_skipped_site(tiny_vit):
    q = to_quant_twin(copy.deepcopy(tiny_vit))
    recipe = uniform_recipe()
    recipe.attach(q, ALL_KINDS, BitWidths(4, 4, 4, 4))
    # a site the forward never reaches (e.g. a module bypassed by a fused path)
    q.blocks[0].orphan_site = QuantSite("linear_in")
    q.blocks[0].orphan_site.quantizer = UniformQuantizer(bits=4)
    recipe.calibrate(q, CalibContext(tiny_vit, torch.randn(4, 3, 32, 32), torch.device("cpu")))
    assert uncalibrated_sites(q) == ["blocks.0.orphan"]


def test_twins_refuse_unimplemented_timm_options():
    from timm.models.vision_transformer import VisionTransformer
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, qk_norm=True)
    with pytest.raises(NotImplementedError, match="qk_norm"):
        to_quant_twin(model)
    pooled = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, global_pool="map")
    with pytest.raises(NotImplementedError, match="no quant twin"):
        to_quant_twin(pooled)
