"""Building timm models from model configs: kwargs conversion, weights, one-line errors."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from vitquant.errors import UserError
from vitquant.models import build
from vitquant.models.build import PretrainedUnavailableError, build_model

VIT = {"name": "t", "arch": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": None,
       "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}}


def test_vit_from_a_plain_dict():
    model = build_model(VIT)
    assert isinstance(model, VisionTransformer) and not model.training
    assert len(model.blocks) == 2 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swin_from_a_dictconfig_with_yaml_lists():
    cfg = OmegaConf.create({"arch": "swin_tiny_patch4_window7_224", "kwargs": {
        "img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 24, "depths": [2, 2],
        "num_heads": [2, 4], "num_classes": 10}})
    model = build_model(cfg)
    assert isinstance(model, SwinTransformer) and len(model.layers) == 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_norm_eps_and_string_act_layer():
    model = build_model({**VIT, "kwargs": {**VIT["kwargs"], "norm_eps": 1e-5, "act_layer": "gelu_tanh"}})
    assert model.blocks[0].norm1.eps == 1e-5 and model.norm.eps == 1e-5
    assert type(model.blocks[0].mlp.act).__name__ == "GELUTanh"


def test_checkpoint_is_loaded_unless_load_weights_is_false(tmp_path):
    source = build_model(VIT)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    cfg = {**VIT, "checkpoint": str(tmp_path / "w.safetensors")}
    torch.testing.assert_close(build_model(cfg).state_dict(), source.state_dict())
    skipped = build_model({**cfg, "checkpoint": str(tmp_path / "absent.pth")}, load_weights=False)
    assert isinstance(skipped, VisionTransformer)


def test_unknown_arch_names_it_and_hints_list_models():
    with pytest.raises(ValueError, match=r"model.arch=vit_nope is not a timm model.*timm.list_models\('vit\*'\)"):
        build_model({**VIT, "arch": "vit_nope"})


def test_unknown_pretrained_tag():
    with pytest.raises(UserError, match=r"unknown pretrained tag.*list_pretrained\('deit_tiny_patch16_224\*'\)"):
        build_model({**VIT, "arch": "deit_tiny_patch16_224.bogus", "kwargs": {}})


def test_bad_kwarg_is_a_user_error():
    with pytest.raises(UserError, match="bad model.kwargs.*depthh"):
        build_model({**VIT, "kwargs": {"depthh": 2}})


def test_offline_pretrained_download_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(build.timm, "create_model", offline)
    with pytest.raises(PretrainedUnavailableError) as info:
        build_model({**VIT, "arch": "deit_tiny_patch16_224.fb_in1k", "pretrained": True, "kwargs": {}})
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, UserError)
    assert "could not be downloaded" in str(info.value) and "model.checkpoint=" in str(info.value)
