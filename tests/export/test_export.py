"""Integer ONNX export of ViT and Swin twins: ORT matches fake quantization, float sites are listed,
bad input is one line."""
import copy
from functools import partial

import numpy as np
import pytest
import torch

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.errors import UserError
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.nn.lowrank import LowRankCompensation
from vitquant.quant.sulq import SULQuantizer
from vitquant.quant.twin_uniform import TwinUniformQuantizer
from vitquant.quant.two_scale import TwoScaleQuantizer
from vitquant.quant.uniform import UniformQuantizer

pytest.importorskip("onnxruntime")
from vitquant.export.onnx_model import export_model  # noqa: E402
from vitquant.nn.site import iter_sites  # noqa: E402

MODELS = ["tiny_vit", "tiny_swin"]
DEFAULT_KINDS = ["post_ln", "q", "k", "v", "post_softmax", "attn_out", "post_gelu", "linear_in", "weight"]


def calibrated(fp, bits: int, kinds=DEFAULT_KINDS, **quantizers):
    factories = {"weight": partial(UniformQuantizer, granularity="channel", init="percentile"),
                 "activation": partial(UniformQuantizer, init="percentile"), **quantizers}
    recipe = Recipe("t", factories, [init_ranges], n_calib=8)
    q = to_quant_twin(copy.deepcopy(fp))
    recipe.attach(q, list(kinds), BitWidths(bits, bits, bits, bits))
    recipe.calibrate(q, CalibContext(fp, torch.randn(8, 3, 32, 32), "cpu", 0))
    return q.eval()


def site_names(q, kind: str) -> set[str]:
    return {name for name, site in iter_sites(q) if site.kind == kind}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("arch", MODELS)
def test_onnx_runtime_matches_fake_quant_within_one_step(request, onnx_logits, logit_step, arch, bits):
    q, x = calibrated(request.getfixturevalue(arch), bits), torch.randn(6, 3, 32, 32)
    model, report = export_model(q, 32)
    assert report.deployable and not report.summary()["float_sites"]
    with torch.no_grad():
        expected = q(x).numpy()
    got = onnx_logits(model, x)
    assert np.abs(got - expected).max() <= logit_step(q), np.abs(got - expected).max()
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in model.graph.initializer if t.data_type in (2, 3)]  # uint8 / int8 weights
    assert len(int8) >= 4 * 2 + 2, "weights are stored as 8-bit initializers"
    assert bits == 8 or "Clip" in ops, "below 8 bits the codes are clipped to the b-bit range"


@pytest.mark.parametrize("arch", MODELS)
def test_every_gemm_runs_in_integers_after_ort_fusion(request, tmp_path, arch):
    """Each linear layer (bias included; qkv as three projections) fuses into one QGemm, the attention
    products into integer MatMuls: no float GEMM is left in the graph ONNX Runtime executes."""
    import onnx
    import onnxruntime as ort

    from vitquant.nn import QuantLinear

    q = calibrated(request.getfixturevalue(arch), 8)
    onnx.save(export_model(q, 32)[0], tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    linears = [name for name, m in q.named_modules() if isinstance(m, QuantLinear)]
    assert ops.count("QGemm") == sum(3 if name.endswith("qkv") else 1 for name in linears)
    attentions = sum(name.endswith("qkv") for name in linears)
    assert ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul") == 2 * attentions
    assert not {"Gemm", "MatMul", "FusedMatMul"} & set(ops), "a float GEMM is left"


@pytest.mark.parametrize("arch", MODELS)
def test_log_domain_softmax_site_stays_float_and_is_listed(request, onnx_logits, logit_step, arch):
    q = calibrated(request.getfixturevalue(arch), 6, post_softmax=partial(SULQuantizer))
    model, report = export_model(q, 32)
    summary = report.summary()
    assert not summary["deployable"]
    assert set(summary["float_sites"]) == site_names(q, "post_softmax") and len(summary["float_sites"]) >= 2
    assert set(summary["float_sites"].values()) == {"SULQuantizer/6b"}
    assert summary["float_site_kinds"] == ["post_softmax"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = q(x).numpy()
    assert np.abs(onnx_logits(model, x) - expected).max() <= logit_step(q)


@pytest.mark.parametrize("arch", MODELS)
def test_float_export_matches_the_float_model(request, onnx_logits, arch):
    fp = request.getfixturevalue(arch)
    q = calibrated(fp, 8)
    model, report = export_model(q, 32, quantize=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = fp(x).numpy()
    np.testing.assert_allclose(onnx_logits(model, x), expected, atol=1e-4)
    assert not report.integer


def test_bad_input_is_one_error_line(tiny_run, capsys, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR, EXIT_USER_ERROR, guarded, preflight
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.export import run_export, validate_export

    fp_run = tiny_run("method=fp", out="fp")
    run_calibration(fp_run)
    checkpoint = f"{fp_run.out_dir}/quantized.pt"
    for argv in ([f"checkpoint={checkpoint}", "format=tflite"], ["checkpoint=/nowhere.pt"]):
        with pytest.raises(SystemExit) as exit_info:
            preflight("export", validate_export, argv)
        assert exit_info.value.code == EXIT_USER_ERROR
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={checkpoint}", "task.num_workers=0"])
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path / "export")
    with pytest.raises(SystemExit) as exit_info:
        guarded(run_export)(cfg)
    assert exit_info.value.code == EXIT_USER_ERROR
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors), errors
    assert "tflite" in errors[0] and "no quantized sites" in errors[2]
    assert not (tmp_path / "export" / "model.onnx").exists()


@pytest.mark.parametrize("quantizers", [
    {"post_softmax": partial(TwinUniformQuantizer), "post_gelu": partial(TwinUniformQuantizer, mode="gelu")},
    {"post_softmax": partial(TwoScaleQuantizer), "post_gelu": partial(TwoScaleQuantizer, signed_fine=True)},
], ids=["twin_uniform", "two_scale"])
def test_two_region_sites_are_emulated_in_float(tiny_vit, onnx_logits, logit_step, quantizers):
    q = calibrated(tiny_vit, 6, **quantizers)
    model, report = export_model(q, 32)
    assert report.summary()["float_site_kinds"] == ["post_gelu", "post_softmax"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = q(x).numpy()
    assert np.abs(onnx_logits(model, x) - expected).max() <= logit_step(q)


def test_unmerged_low_rank_compensation_is_a_float_branch(tiny_vit, onnx_logits, logit_step):
    """AIQViT's unmerged ``Q(W)·x̂ + B·(A·x̂)``: the branch is exported in float and reported; merged is refused."""
    q = calibrated(tiny_vit, 8)
    fc1 = q.blocks[0].mlp.fc1
    fc1.branch = LowRankCompensation(fc1.in_features, fc1.out_features, rank=4)
    with torch.no_grad():
        fc1.branch.B.normal_(0, 0.2)
    model, report = export_model(q, 32)
    assert report.summary()["float_branches"] == {"blocks.0.mlp.fc1": "low-rank compensation r=4"}
    assert not report.deployable
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = q(x).numpy()
    assert np.abs(onnx_logits(model, x) - expected).max() <= logit_step(q)
    fc1.branch.merged = True
    with pytest.raises(UserError, match="blocks.0.mlp.fc1 low-rank compensation"):
        export_model(q, 32)
