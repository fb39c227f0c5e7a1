import torch

from vitquant.engines.qdrop import DropQuantizer, mix, quant_dropout
from vitquant.nn import QuantLinear
from vitquant.quant.uniform import UniformQuantizer


def linear() -> QuantLinear:
    layer = QuantLinear(4, 3)
    for site in (layer.input_site, layer.weight_site):
        site.quantizer = UniformQuantizer(2)
        site.quantizer.init_from(torch.randn(16, 4))
    return layer


def test_mix_takes_fp_with_probability_p():
    g = torch.Generator().manual_seed(0)
    fp, q = torch.zeros(100_000), torch.ones(100_000)
    assert torch.equal(mix(fp, q, 0.0, g), q) and torch.equal(mix(fp, q, 1.0, g), fp)
    assert abs(mix(fp, q, 0.3, g).mean().item() - 0.7) < 0.01


def test_quant_dropout_wraps_activation_quantizers_only_and_restores():
    layer = linear()
    before_in, before_w = layer.input_site.quantizer, layer.weight_site.quantizer
    x = torch.randn(5, 4)
    with quant_dropout(layer, 1.0, torch.Generator().manual_seed(0)):
        assert isinstance(layer.input_site.quantizer, DropQuantizer)
        assert layer.weight_site.quantizer is before_w
        # p = 1: the input is never quantized, the weight still is
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, before_w(layer.weight), layer.bias))
    assert layer.input_site.quantizer is before_in
    with quant_dropout(layer, 0.0, torch.Generator()):
        assert layer.input_site.quantizer is before_in


def test_qdrop_hook_mixes_inputs_with_the_engine_generator_and_checks_prob():
    import pytest

    from vitquant.engines.qdrop import QDrop
    layer, hook = linear(), QDrop(1.0)
    assert hook.needs_fp_inputs and not QDrop(0.0).needs_fp_inputs
    fp, q = torch.zeros(8, 4), torch.ones(8, 4)
    with hook.optimising(layer, torch.Generator().manual_seed(0)):
        assert isinstance(layer.input_site.quantizer, DropQuantizer)
        assert torch.equal(hook.inputs(q, fp), fp) and torch.equal(hook.inputs(q, None), q)
    assert not isinstance(layer.input_site.quantizer, DropQuantizer)
    with pytest.raises(ValueError, match="probability"):
        QDrop(1.5)
