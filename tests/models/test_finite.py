"""Non-finite weights and quantizer parameters are named, not calibrated to chance accuracy."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.checkpoint import CheckpointError, load_checkpoint
from vitquant.models.finite import NonFiniteError, check_calibrated, describe, first_nonfinite
from vitquant.models.quantize import quantized_twin
from vitquant.quant.uniform import UniformQuantizer


def test_first_nonfinite_names_the_first_bad_float_tensor():
    tensors = [("a", torch.ones(3)), ("ids", torch.arange(3)), ("b", torch.tensor([1.0, float("inf")])),
               ("c", torch.tensor([float("nan")]))]
    assert first_nonfinite(tensors) == "b (0 NaN, 1 Inf of 2 values)"
    assert first_nonfinite(tensors[:2]) is None


def test_quantizer_state_keys_are_described_by_site():
    assert describe("blocks.0.attn.qkv.weight_site.quantizer.scale") == "site blocks.0.attn.qkv.weight: quantizer scale"
    assert describe("blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv.weight"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_a_nonfinite_weight_is_refused(tmp_path, tiny_vit, value):
    state = {k: v.clone().contiguous() for k, v in tiny_vit.state_dict().items()}
    state["blocks.1.mlp.fc1.bias"][3] = value
    state["blocks.0.attn.qkv.weight"][0, 5] = value  # first in module order: the one named
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"non-finite weights: blocks\.0\.attn\.qkv\.weight \("):
        load_checkpoint(tiny_vit, path)


def test_diverged_quantizer_parameter_names_its_site(tiny_vit):
    recipe = Recipe("toy", {"weight": partial(UniformQuantizer)}, stages=[], n_calib=2)
    qmodel = quantized_twin(tiny_vit, recipe, ["weight"], BitWidths(4, 4, 4, 4), seed=0)
    check_calibrated(qmodel, "toy")
    qmodel.blocks[1].mlp.fc2.weight_site.quantizer.scale.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"toy diverged: site blocks\.1\.mlp\.fc2\.weight: quantizer scale"):
        check_calibrated(qmodel, "toy")
