import copy
from functools import partial

import pytest
import torch

from vitquant.engines.act_scales import LearnActScales
from vitquant.engines.context import CalibContext
from vitquant.engines.qdrop import QDrop
from vitquant.engines.range_init import init_ranges
from vitquant.engines.reconstruction import (
    ReconHook,
    capture,
    lp_loss,
    reconstruct_blocks,
    reconstruction_units,
    unit_output,
)
from vitquant.engines.rounding import AdaRoundWeights, SteWeights, rounding_temperature
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn import QuantLinear, iter_sites, set_quant_state
from vitquant.quant.uniform import UniformQuantizer

KINDS = ["weight", "post_ln", "q", "k", "v", "post_softmax", "attn_out", "post_gelu", "linear_in"]
RECON = {"iters": 2, "batch_size": 4, "progress": False}


def quantized(fp: torch.nn.Module, ctx: CalibContext, weights: bool = True) -> torch.nn.Module:
    """W4A4 twin of ``fp`` with ranges initialised (weights only when ``weights``)."""
    q = to_quant_twin(copy.deepcopy(fp)).eval()
    Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel"), "activation": UniformQuantizer},
           [], n_calib=8).attach(q, KINDS, BitWidths(4, 4, 4, 4))
    init_ranges(q, ctx, weights=weights, activations=True)
    return q


def context(fp: torch.nn.Module, n: int = 8, log=None) -> CalibContext:
    return CalibContext(fp, torch.randn(n, 3, 32, 32), torch.device("cpu"), seed=0,
                        log=log or (lambda metrics: None))


def unit_error(q: torch.nn.Module, ctx: CalibContext, name: str) -> float:
    """lp_loss of the quantized unit on FP inputs against the FP unit's outputs."""
    x, y = capture(ctx.fp_model, ctx.fp_model.get_submodule(name), ctx.images, 8, ctx.device)
    unit = q.get_submodule(name)
    with torch.no_grad():
        return float(lp_loss(unit_output(unit, unit(x)), y))


def test_units_in_module_order(tiny_vit, tiny_swin):
    assert [n for n, _ in reconstruction_units(to_quant_twin(tiny_vit))] == \
        ["patch_embed.proj", "blocks.0", "blocks.1", "head"]
    assert [n for n, _ in reconstruction_units(to_quant_twin(tiny_swin))] == \
        ["patch_embed.proj", "layers.0.blocks.0", "layers.0.blocks.1", "layers.1.downsample",
         "layers.1.blocks.0", "layers.1.blocks.1", "head.fc"]


def test_lp_loss_sums_tokens_and_averages_the_rest():
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    target[0, 0, 0] = 3.0
    # per (batch, channel): sum over 3 tokens of 1, one entry 9 instead of 1 -> (8*3 + 8) / 8
    assert lp_loss(pred, target).item() == pytest.approx((24 + 8) / 8)


def test_rounding_temperature_matches_qdrop_schedule():
    assert rounding_temperature(1, 100, 0.2, (20, 2)) == 20
    assert rounding_temperature(20, 100, 0.2, (20, 2)) == 20
    assert rounding_temperature(60, 100, 0.2, (20, 2)) == pytest.approx(11)
    assert rounding_temperature(100, 100, 0.2, (20, 2)) == pytest.approx(2)


def test_reconstruction_lowers_block_error_and_logs(tiny_vit):
    logged = {}
    ctx = context(tiny_vit, n=16, log=logged.update)
    q = quantized(tiny_vit, ctx)
    before = {n: unit_error(q, ctx, n) for n in ("blocks.0", "blocks.1")}
    reconstruct_blocks(q, ctx, iters=20, batch_size=4, input_source="fp", hooks=[SteWeights(1e-3)], progress=False)
    after = {n: unit_error(q, ctx, n) for n in ("blocks.0", "blocks.1")}
    assert all(after[n] < before[n] for n in before), (before, after)
    assert set(logged) == {f"recon/{n}/loss" for n in ("patch_embed.proj", "blocks.0", "blocks.1", "head")}


def test_requires_grad_restored_and_norms_and_quantizers_frozen(tiny_vit):
    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx, weights=False)  # I&S-ViT stage 1: FP weights, quantized activations
    flags = {n: p.requires_grad for n, p in q.named_parameters()}
    state = {k: v.clone() for k, v in q.state_dict().items() if torch.is_tensor(v)}
    reconstruct_blocks(q, ctx, input_source="fp", hooks=[SteWeights(1e-3)], **RECON)
    assert {n: p.requires_grad for n, p in q.named_parameters()} == flags
    assert not q.training
    changed = {k for k, v in q.state_dict().items() if k in state and not torch.equal(v, state[k])}
    assert "blocks.0.attn.qkv.weight" in changed and "head.bias" in changed
    assert not any("norm" in k or "quantizer" in k for k in changed), changed


@pytest.mark.parametrize("input_source", ["fp", "quantized"])
def test_swin_runs_with_patch_merging(tiny_swin, input_source):
    logged = {}
    ctx = context(tiny_swin, log=logged.update)
    q = quantized(tiny_swin, ctx)
    reduction = q.layers[1].downsample.reduction.weight.clone()
    reconstruct_blocks(q, ctx, input_source=input_source, hooks=[SteWeights(1e-3)], **RECON)
    assert "recon/layers.1.downsample/loss" in logged and "recon/head.fc/loss" in logged
    assert not torch.equal(q.layers[1].downsample.reduction.weight, reduction)
    with torch.no_grad():
        assert torch.isfinite(q(ctx.images)).all()


def test_quantized_input_source_reads_quantized_model_inputs(tiny_vit):
    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx)
    fp_in, _ = capture(ctx.fp_model, ctx.fp_model.blocks[1], ctx.images, 4, ctx.device)
    q_in, _ = capture(q, q.blocks[1], ctx.images, 4, ctx.device)
    assert q_in.shape == fp_in.shape and not torch.allclose(q_in, fp_in)
    reconstruct_blocks(q, ctx, input_source="quantized", hooks=[SteWeights()], **RECON)


def test_uninitialised_quantizers_are_refused(tiny_vit):
    q = to_quant_twin(copy.deepcopy(tiny_vit))
    Recipe("t", {"weight": UniformQuantizer, "activation": UniformQuantizer}, [], n_calib=8).attach(
        q, KINDS, BitWidths(4, 4, 4, 4))
    with pytest.raises(RuntimeError, match="init_ranges"):
        reconstruct_blocks(q, context(tiny_vit), hooks=[SteWeights()], **RECON)


def test_adaround_result_lies_on_grid_and_reloads(tiny_vit):
    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx)
    reconstruct_blocks(q, ctx, iters=4, batch_size=4, hooks=[AdaRoundWeights(lr=1e-2, warmup=0.5)],
                       input_source="quantized", progress=False)
    for m in q.modules():
        if isinstance(m, QuantLinear):
            assert isinstance(m.weight_site.quantizer, UniformQuantizer)
            assert torch.equal(m.weight_site.quantizer(m.weight), m.weight), "weight off the grid"
    twin = to_quant_twin(copy.deepcopy(tiny_vit)).eval()
    Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel"), "activation": UniformQuantizer},
           [], n_calib=8).attach(twin, KINDS, BitWidths(4, 4, 4, 4))
    twin.load_state_dict(q.state_dict())
    set_quant_state(twin, weights=True, activations=True)
    with torch.no_grad():
        assert torch.equal(twin(ctx.images), q(ctx.images))


def test_adaround_needs_weight_quantizers(tiny_vit):
    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx, weights=False)
    with pytest.raises(ValueError, match="weight quantizers"):
        reconstruct_blocks(q, ctx, hooks=[AdaRoundWeights()], **RECON)


def test_qdrop_with_learned_act_scales_runs_and_restores_quantizers(tiny_vit):
    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx)
    quantizers = [s.quantizer for _, s in iter_sites(q)]
    scale = q.blocks[0].attn.proj.input_site.quantizer.scale.clone()
    hooks = [AdaRoundWeights(lr=1e-2), LearnActScales(lr=1e-2), QDrop(0.5)]
    reconstruct_blocks(q, ctx, hooks=hooks, input_source="quantized", **RECON)
    assert [s.quantizer for _, s in iter_sites(q)] == quantizers
    learned = q.blocks[0].attn.proj.input_site.quantizer.scale
    assert isinstance(learned, torch.nn.Parameter) and not learned.requires_grad
    assert not torch.equal(learned.detach(), scale)
    with torch.no_grad():
        assert torch.isfinite(q(ctx.images)).all()


def test_nothing_to_train_skips_every_unit(tiny_vit):
    logged = {}
    ctx = context(tiny_vit, log=logged.update)
    q = quantized(tiny_vit, ctx)
    state = {k: v.clone() for k, v in q.state_dict().items() if torch.is_tensor(v)}
    reconstruct_blocks(q, ctx, hooks=[ReconHook()], **RECON)
    assert logged == {} and all(torch.equal(v, state[k]) for k, v in q.state_dict().items() if k in state)


def test_hooks_are_called_in_order_around_the_loop(tiny_vit):
    """The engine's contract with a hook: begin before caching, the context only around the loop,
    inputs → extra_loss → after_step per step, end per unit, finish once; a constant schedule."""
    calls = []

    class Recorder(SteWeights):
        def begin(self, name, unit):
            calls.append(("begin", name))
            return [{**g, "schedule": "constant"} for g in super().begin(name, unit)]

        def optimising(self, unit, generator):
            calls.append(("enter",))
            return super().optimising(unit, generator)

        def inputs(self, x, fp_x):
            calls.append(("inputs", fp_x is None))
            return x

        def extra_loss(self, rec, step, iters):
            calls.append(("loss", step, iters))
            return rec * 0

        def after_step(self, step, iters):
            calls.append(("after", step))

        def end(self, name, unit, data, ctx):
            calls.append(("end", name))

        def finish(self, ctx):
            calls.append(("finish",))

    ctx = context(tiny_vit)
    q = quantized(tiny_vit, ctx)
    reconstruct_blocks(q, ctx, hooks=[Recorder(1e-3)], input_source="quantized", **RECON)
    per_unit = [("enter",), ("inputs", True), ("loss", 1, 2), ("after", 1), ("inputs", True), ("loss", 2, 2),
                ("after", 2)]
    units = ["patch_embed.proj", "blocks.0", "blocks.1", "head"]
    assert calls == [c for n in units for c in [("begin", n), *per_unit, ("end", n)]] + [("finish",)]
