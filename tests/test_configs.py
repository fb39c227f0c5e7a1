"""Every option of every config group composes, and what it names can be instantiated."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vitquant.cli import CONF_DIR
from vitquant.config import bit_widths
from vitquant.errors import UserError
from vitquant.methods.recipe import Recipe
from vitquant.nn.site import SITE_KINDS

GROUPS = ["method", "model", "data", "task", "policy", "logger", "experiment", "quantizer"]


def options(group: str) -> list[str]:
    return sorted(p.relative_to(CONF_DIR / group).with_suffix("").as_posix()
                  for p in (CONF_DIR / group).rglob("*.yaml"))


def compose_with(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "quantizer" for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_with(f"{group}={option}", "out_dir=/tmp/x")
    OmegaConf.resolve(cfg)  # no dangling interpolation (model paths use ${paths.*})
    bit_widths(cfg)


@pytest.mark.parametrize("method", options("method"))
def test_every_method_instantiates_to_a_recipe_with_valid_kinds(method):
    cfg = compose_with(f"method={method}")
    recipe = instantiate(cfg.method, _convert_="all")
    assert isinstance(recipe, Recipe) and recipe.n_calib >= 1
    assert set(recipe.quantizers) <= set(SITE_KINDS) | {"activation"}


@pytest.mark.parametrize("quantizer", options("quantizer"))
def test_every_quantizer_config_builds(quantizer):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(f"quantizer/{quantizer}")
    node = cfg.quantizer if "quantizer" in cfg else cfg
    factory = instantiate(node, _convert_="all")
    q = factory(bits=4, channel_dim=-1, seed=0)
    assert q.bits == 4


@pytest.mark.parametrize("group", GROUPS)
def test_groups_exist(group):
    assert (Path(CONF_DIR) / group).is_dir()


def test_bits_shorthand_and_overrides():
    cfg = compose_with("bits=4")
    assert (cfg.w_bits, cfg.a_bits, cfg.end_bits, cfg.end_a_bits) == (4, 4, 4, 4)
    cfg = compose_with("bits=4", "a_bits=8", "end_bits=8")
    assert (cfg.w_bits, cfg.a_bits, cfg.end_bits, cfg.end_a_bits) == (4, 8, 8, 8)
    cfg = compose_with("bits=4", "policy=keep_ends_8bit")
    assert (cfg.w_bits, cfg.end_bits) == (4, 8)


@pytest.mark.parametrize("bits", [1, 9, 17])
def test_out_of_range_bits_rejected(bits):
    with pytest.raises(UserError, match=f"w_bits={bits} is out of range"):
        bit_widths(compose_with(f"bits={bits}"))


def test_quantizer_of_one_kind_can_be_swapped_from_the_command_line():
    cfg = compose_with("method=percentile", "+quantizer@method.quantizers.post_softmax=logsqrt2")
    recipe = instantiate(cfg.method, _convert_="all")
    assert recipe.factory_for("post_softmax").func.__name__ == "LogQuantizer"
    assert recipe.factory_for("post_gelu").func.__name__ == "UniformQuantizer"
