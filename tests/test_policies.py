"""Policies decide which site kinds are quantized; the fully-quantized one reaches LayerNorm and
Softmax inputs on ViT and Swin."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vitquant.cli import CONF_DIR
from vitquant.config import bit_widths
from vitquant.engines.context import CalibContext
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import iter_sites, uncalibrated_sites


def recipe_and_cfg(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=list(overrides))
    return instantiate(cfg.method, _convert_="all"), cfg


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_full_policy_quantizes_and_calibrates_layernorm_and_softmax_inputs(fixture, request):
    fp = request.getfixturevalue(fixture)
    recipe, cfg = recipe_and_cfg("method=tsptq", "bits=8")
    assert cfg.policy.name == "full"  # tsptq selects it
    q = quantized_twin(fp, recipe, list(cfg.policy.kinds), bit_widths(cfg), seed=0)
    recipe.calibrate(q, CalibContext(fp, torch.randn(4, 3, 32, 32), torch.device("cpu")))
    assert uncalibrated_sites(q) == []
    quantized = {s.kind for _, s in iter_sites(q) if s.quantizer is not None}
    assert {"ln_in", "softmax_in", "post_softmax", "post_gelu"} <= quantized
    ln_in = [s.quantizer for _, s in iter_sites(q) if s.kind == "ln_in"]
    assert ln_in and all(type(x).__name__ == "OutlierTwoScaleQuantizer" for x in ln_in)


def test_default_policy_leaves_layernorm_and_softmax_inputs_float_and_says_so(tiny_vit, caplog):
    recipe, cfg = recipe_and_cfg("method=tsptq", "policy=default", "bits=8")
    with caplog.at_level(logging.WARNING):
        q = quantized_twin(tiny_vit, recipe, list(cfg.policy.kinds), bit_widths(cfg), seed=0)
    assert "ln_in quantizer has no site" in caplog.text
    kinds = {s.kind for _, s in iter_sites(q) if s.quantizer is not None}
    assert "ln_in" not in kinds and "softmax_in" not in kinds and "post_softmax" in kinds


def test_keep_ends_8bit_policy(tiny_vit):
    recipe, cfg = recipe_and_cfg("method=minmax", "policy=keep_ends_8bit", "bits=4")
    q = quantized_twin(copy.deepcopy(tiny_vit), recipe, list(cfg.policy.kinds), bit_widths(cfg), seed=0)
    bits = {n: s.quantizer.bits for n, s in iter_sites(q) if s.quantizer is not None}
    assert bits["patch_embed.proj.weight"] == bits["head.weight"] == bits["head.input"] == 8
    assert bits["blocks.0.attn.qkv.weight"] == bits["blocks.0.attn.qkv.input"] == 4


def test_fqvit_attention_probabilities_at_4_bits(tiny_vit):
    recipe, cfg = recipe_and_cfg("method=fqvit", "bits=8", "+method.kind_bits.post_softmax=4")
    q = quantized_twin(tiny_vit, recipe, list(cfg.policy.kinds), bit_widths(cfg), seed=0)
    bits = {s.kind: s.quantizer.bits for _, s in iter_sites(q) if s.quantizer is not None}
    assert bits["post_softmax"] == 4 and bits["post_ln"] == 8 and bits["ln_in"] == 8
