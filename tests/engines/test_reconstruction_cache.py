"""Unit inputs taken from the previous unit's cache equal a forward from the start of the model."""
import pytest
import torch
from test_reconstruction import context, quantized

from vitquant.engines.reconstruction import cache_unit, capture, reconstruction_units, successor, unit_output


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
@pytest.mark.parametrize("source", ["fp", "quantized"])
def test_cached_successor_inputs_equal_full_forward(fixture, source, request):
    fp = request.getfixturevalue(fixture)
    ctx = context(fp, n=6)
    q = quantized(fp, ctx)
    previous, reused = None, 0
    for name, unit in reconstruction_units(q):
        data = cache_unit(q, name, unit, ctx, ctx.images, 4, source, True, previous)
        fp_in, fp_out = capture(fp, fp.get_submodule(name), ctx.images, 4, ctx.device)
        q_in, _ = capture(q, unit, ctx.images, 4, ctx.device)
        assert torch.equal(data.targets, fp_out) and torch.equal(data.inputs, fp_in if source == "fp" else q_in)
        assert source == "fp" or torch.equal(data.fp_inputs, fp_in)
        assert torch.equal(data.targets, unit_output(unit, data.fp_outputs))
        reused += previous is not None and successor(previous[0], name, q)
        with torch.no_grad():  # stand-in for reconstruction: the unit changes before the next is cached
            for p in unit.parameters():
                p.add_(0.01)
        previous = (name, unit, data)
    assert reused >= 1


def test_successor_needs_consecutive_siblings_of_a_sequential(tiny_vit):
    assert successor("blocks.0", "blocks.1", tiny_vit)
    assert not successor("patch_embed.proj", "blocks.0", tiny_vit)
    assert not successor("blocks.1", "head", tiny_vit) and not successor(None, "blocks.0", tiny_vit)
