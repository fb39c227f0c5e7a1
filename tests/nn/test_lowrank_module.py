import copy

import pytest
import torch

from vitquant.errors import UserError
from vitquant.models.twin import to_quant_twin
from vitquant.nn import QuantLinear
from vitquant.nn.lowrank import LowRankCompensation
from vitquant.quant.uniform import UniformQuantizer


def quant_linear(bits: int = 4) -> QuantLinear:
    layer = QuantLinear(12, 8)
    layer.weight_site.quantizer = UniformQuantizer(bits, granularity="channel", channel_dim=0)
    layer.weight_site.quantizer.init_from(layer.weight)
    return layer


def test_zero_initialised_compensation_leaves_a_block_unchanged(tiny_vit):
    q = to_quant_twin(copy.deepcopy(tiny_vit)).eval()
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        before = q.blocks[0](x)
        for layer in (q.blocks[0].attn.qkv, q.blocks[0].attn.proj, q.blocks[0].mlp.fc1, q.blocks[0].mlp.fc2):
            layer.branch = LowRankCompensation(layer.in_features, layer.out_features, 4, (0, 2, 4))
        assert torch.equal(q.blocks[0](x), before)


@pytest.mark.parametrize("merged", [False, True])
def test_both_forms_agree_when_the_merge_is_exact(merged):
    """Weight quantizer off: Q(W + BA)x = Wx + BAx = Q(W)x + B(Ax)."""
    layer, x = quant_linear(), torch.randn(5, 12)
    layer.weight_site.enabled = False
    comp = LowRankCompensation(12, 8, 3, merged=merged)
    with torch.no_grad():
        comp.B.normal_()
    layer.branch = comp
    expected = x @ (layer.weight + comp.B @ comp.A).T + layer.bias
    torch.testing.assert_close(layer(x), expected)


def test_merged_form_quantizes_the_sum_and_trains_through_ste():
    layer, x = quant_linear(bits=3), torch.randn(5, 12)
    comp = LowRankCompensation(12, 8, 3, merged=True)
    with torch.no_grad():
        comp.B.normal_(std=0.05)
    layer.branch = comp
    q = layer.weight_site.quantizer
    torch.testing.assert_close(layer(x), x @ q(layer.weight + comp.B @ comp.A).T + layer.bias)
    layer(x).sum().backward()
    assert comp.A.grad is not None and comp.B.grad.abs().sum() > 0


def test_rank_mixture_select_and_compact():
    comp = LowRankCompensation(6, 5, 4, candidates=(0, 2, 4))
    with torch.no_grad():
        comp.B.normal_()
        comp.alpha.copy_(torch.tensor([0.0, 2.0, 0.5]))
    p = comp.probabilities()
    # column weights: columns 0,1 are in the rank-2 and rank-4 branches, columns 2,3 only in rank 4
    torch.testing.assert_close(comp.column_weights(), torch.stack([p[1] + p[2]] * 2 + [p[2]] * 2))
    torch.testing.assert_close(comp.expected_rank(), 2 * p[1] + 4 * p[2])
    kept = (comp.B[:, :2] * comp.column_weights()[:2]) @ comp.A[:2]
    assert comp.select_rank() == 2 and not comp.searching
    torch.testing.assert_close(comp.delta(), kept)  # the kept columns' contribution is unchanged
    comp.compact()
    assert comp.A.shape == (2, 6) and comp.B.shape == (5, 2) and comp.extra_params() == 2 * (6 + 5)


@pytest.mark.parametrize("candidates", [None, (0, 2, 3)])
def test_a_layer_restores_its_compensation_from_a_state_dict_alone(candidates):
    """The branch is re-created by the layer while loading (no loader knows AIQViT): rank from A, form and
    search state from the branch's extra state; the restored layer computes the same output."""
    layer, x = quant_linear(), torch.randn(5, 12)
    layer.branch = LowRankCompensation(12, 8, 3, candidates)
    with torch.no_grad():
        layer.branch.B.normal_()
    state = layer.state_dict()
    twin = quant_linear()
    twin.load_state_dict(state, strict=True)
    assert isinstance(twin.branch, LowRankCompensation) and twin.branch.rank == 3
    assert twin.branch.candidates == layer.branch.candidates and not twin.branch.merged
    torch.testing.assert_close(twin(x), layer(x))


def test_checkpoints_from_before_the_branch_slot_still_load():
    layer, x = quant_linear(), torch.randn(5, 12)
    layer.branch = LowRankCompensation(12, 8, 2)
    with torch.no_grad():
        layer.branch.B.normal_()
    legacy = {k.replace("branch.", "compensation."): v for k, v in layer.state_dict().items()
              if k != "branch._extra_state"}
    twin = quant_linear()
    twin.load_state_dict(legacy, strict=True)
    assert twin.branch.rank == 2
    torch.testing.assert_close(twin(x), layer(x))


def test_a_folded_bias_is_recreated_and_an_unknown_branch_is_named():
    layer = QuantLinear(12, 8, bias=False)
    state = {**layer.state_dict(), "bias": torch.randn(8)}
    layer.load_state_dict(state, strict=True)
    assert torch.equal(layer.bias, state["bias"])
    with pytest.raises(UserError, match="'madeup' branch, which no imported module registers"):
        QuantLinear(12, 8).load_state_dict({**state, "branch._extra_state": {"kind": "madeup"}})


def test_bad_candidates_rejected():
    with pytest.raises(ValueError, match="candidates"):
        LowRankCompensation(6, 5, 4, candidates=(2, 0, 4))
