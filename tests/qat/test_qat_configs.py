"""train.yaml: every qat/teacher option composes and its recipe instantiates with LSQ quantizers."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vitquant.cli import CONF_DIR
from vitquant.config import bit_widths
from vitquant.methods.recipe import Recipe
from vitquant.quant.lsq import LSQQuantizer


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, "out_dir=/tmp/x"])


@pytest.mark.parametrize("qat", ["lsq", "vvtq"])
@pytest.mark.parametrize("teacher", ["float", "none"])
def test_qat_options_compose_into_a_recipe(qat, teacher):
    cfg = compose_train(f"qat={qat}", f"teacher={teacher}", "bits=2")
    bits = bit_widths(cfg)
    assert (bits.w, bits.a, bits.end_w, bits.end_a) == (2, 2, 8, 8)  # keep_ends_8bit by default
    recipe = instantiate(cfg.method, _convert_="all")
    assert isinstance(recipe, Recipe) and recipe.name == qat
    q = recipe.factory_for("q")(bits=2, channel_dim=-1, seed=0)
    assert isinstance(q, LSQQuantizer)


def test_vvtq_scheme_switches_reach_the_quantizers():
    cfg = compose_train("qat=vvtq")
    recipe = instantiate(cfg.method, _convert_="all")
    gelu = recipe.factory_for("post_gelu")(bits=3, channel_dim=-1, seed=0)
    softmax = recipe.factory_for("post_softmax")(bits=3, channel_dim=-1, seed=0)
    assert (gelu.signed, gelu.learn_offset, softmax.signed) == (False, True, False)
    assert recipe.factory_for("k")(bits=3, channel_dim=-1, seed=0).granularity == "head"
    cfg = compose_train("qat=vvtq", "qat.scheme.post_gelu_signed=true", "qat.scheme.qkv_granularity=tensor")
    recipe = instantiate(cfg.method, _convert_="all")
    assert recipe.factory_for("post_gelu")(bits=3, channel_dim=-1, seed=0).signed
    assert recipe.factory_for("q")(bits=3, channel_dim=-1, seed=0).granularity == "tensor"


@pytest.mark.parametrize("experiment", ["vvtq_imagenet", "qat_cifar"])
def test_qat_experiments_compose(experiment):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.qat.name == "vvtq" and cfg.qat.epochs >= 1
