"""Build the quantized twin of a float model for a method, policy and bit-widths."""
from __future__ import annotations

import copy

from torch import nn

from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin


def quantized_twin(fp_model: nn.Module, recipe: Recipe, kinds: list[str], bits: BitWidths, seed: int) -> nn.Module:
    """A copy of ``fp_model`` with quant twins and uncalibrated quantizers on the policy's sites."""
    qmodel = to_quant_twin(copy.deepcopy(fp_model))
    recipe.attach(qmodel, kinds, bits, seed)
    device = next(fp_model.parameters()).device
    return qmodel.to(device).eval()  # new quantizers are created on the CPU
