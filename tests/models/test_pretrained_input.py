"""model.input of timm-zoo configs comes from timm's pretrained config of model.arch; model.kwargs takes any key."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torchvision import transforms as T

from vitquant.cli import CONF_DIR
from vitquant.data.transforms import eval_transform
from vitquant.errors import UserError
from vitquant.models.build import build_model
from vitquant.models.pretrained_input import pretrained_input

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# spec protocol.md §0: crop_pct 0.875 for DeiT, 0.9 for ViT and Swin; ViT mean/std 0.5, DeiT and Swin ImageNet's.
PROTOCOL = {"deit_tiny": (0.875, IMAGENET), "deit_small": (0.875, IMAGENET), "deit_base": (0.875, IMAGENET),
            "vit_small": (0.9, HALF), "vit_base": (0.9, HALF),
            "swin_tiny": (0.9, IMAGENET), "swin_small": (0.9, IMAGENET), "swin_base": (0.9, IMAGENET)}


def model_cfg(*overrides: str, config: str = "calibrate"):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config, overrides=list(overrides))
    OmegaConf.resolve(cfg.model)  # in place, as `--cfg job --resolve` does: every key resolves to a plain value
    return OmegaConf.to_container(cfg.model)


def test_augreg_vit_tiny_gets_half_normalisation_resize_248_bicubic_crop_224():
    cfg = pretrained_input("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert cfg["mean"] == cfg["std"] == [0.5, 0.5, 0.5]
    resize, crop = eval_transform({**cfg, "resize": True}).transforms[:2]
    assert isinstance(resize, T.Resize) and resize.size == 248  # floor(224 / 0.9)
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(crop, T.CenterCrop) and crop.size == (224, 224)


def test_switching_arch_to_a_384_model_switches_the_input():
    cfg = model_cfg("model=vit_base", "model.arch=vit_base_patch16_384.augreg_in21k_ft_in1k")
    assert cfg["input"]["size"] == 384
    resize, crop = eval_transform(cfg["input"]).transforms[:2]
    assert resize.size == 384 and crop.size == (384, 384)  # crop_pct 1.0 for this tag
    assert cfg["input"]["mean"] == HALF["mean"]


def test_switching_arch_to_another_normalisation_switches_mean_and_std():
    cfg = model_cfg("model=vit_small", "model.arch=deit_small_patch16_224.fb_in1k")
    assert (cfg["input"]["mean"], cfg["input"]["std"]) == (IMAGENET["mean"], IMAGENET["std"])


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_zoo_configs_keep_the_papers_protocol(name):
    crop_pct, norm = PROTOCOL[name]
    got = model_cfg(f"model={name}")["input"]
    assert got == {"size": 224, "crop_pct": crop_pct, "crop_mode": "center", "interpolation": "bicubic",
                   **norm, "resize": True}


def test_one_input_key_can_be_set_on_the_command_line():
    got = model_cfg("model=vit_small", "model.input.crop_pct=1.0")["input"]
    assert got["crop_pct"] == 1.0 and got["size"] == 224 and got["mean"] == HALF["mean"]


def test_reference_models_keep_their_explicit_input():
    got = model_cfg("model=vit_cifar", "model.arch=vit_base_patch16_384")["input"]
    assert got["size"] == 32 and got["resize"] is False


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="vit_tny_patch16_224 is not a timm model"):
        pretrained_input("vit_tny_patch16_224")


@pytest.mark.parametrize("config", ["calibrate", "train"])
def test_kwargs_take_a_new_timm_argument_without_plus(config):
    cfg = model_cfg("model=deit_small", "model.kwargs.depth=6", "model.kwargs.num_classes=7", config=config)
    assert cfg["kwargs"] == {"depth": 6, "num_classes": 7}
    model = build_model({**cfg, "kwargs": {**cfg["kwargs"], "embed_dim": 24, "num_heads": 2, "img_size": 32}})
    assert len(model.blocks) == 6 and model.num_classes == 7


@pytest.mark.parametrize("override", ["model.kwarg.depth=6", "model.depht=6", "bitz=4"])
def test_a_typo_outside_kwargs_still_fails(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        model_cfg("model=deit_small", override)
