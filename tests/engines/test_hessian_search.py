import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from vitquant.engines.context import CalibContext
from vitquant.engines.hessian_search import collect, find_targets, hessian_scale_search
from vitquant.engines.range_init import init_ranges
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn.site import iter_sites, set_quant_state
from vitquant.quant.twin_uniform import TwinUniformQuantizer
from vitquant.quant.uniform import UniformQuantizer

KINDS = ["weight", "post_ln", "v", "post_softmax", "attn_out", "post_gelu", "linear_in"]


def keep_output(store):
    """Forward hook that keeps the layer's input and output, retaining the output's gradient."""
    def hook(module, args, out):
        out.retain_grad()
        store.update(x=args[0].detach(), y=out)
    return hook


def quantized(fp, images, bits=4):
    q = to_quant_twin(copy.deepcopy(fp))
    recipe = Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel"),
                          "activation": UniformQuantizer,
                          "post_softmax": partial(TwinUniformQuantizer, mode="softmax"),
                          "post_gelu": partial(TwinUniformQuantizer, mode="gelu")}, [init_ranges], n_calib=8)
    recipe.attach(q, kinds=KINDS, bits=BitWidths(bits, bits, bits, bits))
    ctx = CalibContext(fp_model=fp, images=images, device=torch.device("cpu"))
    recipe.calibrate(q, ctx)
    return q, ctx


def test_collected_data_are_the_fp_outputs_and_loss_gradients(tiny_vit):
    images = torch.randn(6, 3, 32, 32)
    q, ctx = quantized(tiny_vit, images)
    targets, hooks = find_targets(q, ["post_softmax", "post_gelu"])
    assert [t.name for t in targets] == ["blocks.0.attn.post_softmax", "blocks.0.mlp.fc2.input",
                                         "blocks.1.attn.post_softmax", "blocks.1.mlp.fc2.input"]
    set_quant_state(q, weights=False, activations=False)
    collect(q, targets, ctx, images, batch_size=4)
    for h in hooks:
        h.remove()
    assert [len(t.ys) for t in targets] == [2, 2, 2, 2]
    # reference gradient of fc2's output in block 0 by retain_grad, CE against the FP top-1
    captured = {}
    h = q.blocks[0].mlp.fc2.register_forward_hook(keep_output(captured))
    x = images.clone().requires_grad_(True)
    logits = q(x)
    F.cross_entropy(logits, tiny_vit(images).argmax(-1), reduction="sum").backward()
    h.remove()
    fc2 = targets[1]
    assert torch.allclose(torch.cat(fc2.grads), captured["y"].grad, atol=1e-6)
    assert torch.cat(fc2.grads).abs().sum() > 0
    attn = targets[0]
    for b in range(2):  # the consumer recomputes the attention output exactly from A and V
        assert torch.allclose(attn.output(attn.xs[b], attn.operands[b]), attn.ys[b], atol=1e-6)
    set_quant_state(q, weights=True, activations=True)


def test_search_picks_the_candidate_with_least_hessian_weighted_error(tiny_vit):
    images = torch.randn(6, 3, 32, 32)
    q, ctx = quantized(tiny_vit, images)
    enabled_before = {n: s.enabled for n, s in iter_sites(q)}
    hessian_scale_search(q, ctx, kinds=("post_softmax", "post_gelu"), rounds=1, n_images=6, batch_size=3)
    assert {n: s.enabled for n, s in iter_sites(q)} == enabled_before
    # brute force for blocks.0.mlp.fc2: E[g² (ŷ − y)²] over the gelu candidates, FP inputs
    fc2, fq = q.blocks[0].mlp.fc2, q.blocks[0].mlp.fc2.input_site.quantizer
    store = {}
    h = fc2.register_forward_hook(keep_output(store))
    set_quant_state(q, weights=False, activations=False)
    logits = q(images.clone().requires_grad_(True))
    F.cross_entropy(logits, tiny_vit(images).argmax(-1), reduction="sum").backward()
    set_quant_state(q, weights=True, activations=True)
    h.remove()
    x, y, g2 = store["x"], store["y"].detach(), store["y"].grad.pow(2)
    w_hat = fc2.weight_site.quantizer.quantize(fc2.weight.detach())
    with torch.no_grad():
        errors = [(g2 * (F.linear(fq.quantize_with(x, c), w_hat, fc2.bias) - y).pow(2)).sum().item()
                  for c in fq.candidates(fq.rows(x))]
        chosen = (g2 * (F.linear(fq.quantize(x), w_hat, fc2.bias) - y).pow(2)).sum().item()
    assert chosen == pytest.approx(min(errors), rel=1e-5)


def test_uniform_sites_and_partners_search_scaled_grids(tiny_vit):
    images = torch.randn(4, 3, 32, 32)
    q, ctx = quantized(tiny_vit, images)
    proj = q.blocks[1].attn.proj
    a0, w0 = proj.input_site.quantizer.scale.clone(), proj.weight_site.quantizer.scale.clone()
    logged = {}
    ctx.log = logged.update
    hessian_scale_search(q, ctx, kinds=("attn_out",), rounds=2, n_images=4, batch_size=4, eq_n=10)
    grid = torch.tensor([0.01 + i * 1.19 / 10 for i in range(11)])
    ratio_a = (proj.input_site.quantizer.scale / a0).item()
    ratio_w = proj.weight_site.quantizer.scale / w0
    assert (grid - ratio_a).abs().min() < 1e-5
    assert torch.allclose(ratio_w, ratio_w[0].expand_as(ratio_w)) and (grid - ratio_w[0]).abs().min() < 1e-5
    assert set(logged) == {"hessian/blocks.0.attn.proj.input/error", "hessian/blocks.1.attn.proj.input/error"}


def test_swin_window_attention(tiny_swin):
    images = torch.randn(2, 3, 32, 32)
    q, ctx = quantized(tiny_swin, images, bits=6)
    hessian_scale_search(q, ctx, rounds=1, n_images=2, batch_size=2)
    out = q(images)
    assert torch.isfinite(out).all()
    sites = [s for _, s in iter_sites(q) if s.kind == "post_softmax"]
    assert sites and all(bool(s.quantizer.initialized) for s in sites)


def test_kinds_without_a_consumer_are_refused(tiny_vit):
    q, ctx = quantized(tiny_vit, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="q"):
        hessian_scale_search(q, ctx, kinds=("q",))
