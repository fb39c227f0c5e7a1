"""Swin export beyond the shared tests in test_export.py: timm's padding, always_partition and dynamic
masks in float; refusals; ``export.py`` end to end on a RepQ-ViT Swin checkpoint (folded reduction bias)."""
import copy
import json
from functools import partial

import numpy as np
import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.engines.reparam import reparameterize_layernorm
from vitquant.errors import UserError
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.twin import to_quant_twin
from vitquant.quant.uniform import UniformQuantizer

pytest.importorskip("onnxruntime")
from vitquant.export.onnx_model import export_model  # noqa: E402

BASE = dict(patch_size=2, window_size=4, embed_dim=24, num_heads=(2, 4, 4), num_classes=10)


@pytest.mark.parametrize("kwargs", [
    dict(img_size=24, depths=(2, 2, 2)),  # 12 → 6 (windows padded to 8) → 3 (merging pads to 4)
    dict(img_size=24, depths=(2, 2, 2), always_partition=True),  # shifted 4-windows on 6×6 and 3×3
    dict(img_size=24, depths=(2, 2, 2), strict_img_size=False),  # dynamic masks
    dict(img_size=32, depths=(2, 2), window_size=(4, 2)),  # rectangular windows
], ids=["padding", "always_partition", "dynamic_mask", "rect_window"])
def test_float_swin_export_equals_timm(onnx_logits, kwargs):
    fp = SwinTransformer(**{**BASE, **kwargs}).eval()
    with torch.no_grad():  # away from timm's near-zero init, so a misplaced shift or mask shows in the logits
        for p in fp.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model, report = export_model(to_quant_twin(copy.deepcopy(fp)), kwargs["img_size"], quantize=False)
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        expected = fp(x).numpy()
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(onnx_logits(model, x), expected, atol=1e-5 * np.abs(expected).max())
    assert not report.integer


@pytest.mark.parametrize("bits", [8, 4])
def test_reparameterized_swin_matches_fake_quant_within_one_step(tiny_swin, onnx_logits, logit_step, bits):
    """Uniform W/A with RepQ-ViT's LayerNorm fold (rounded zero points): the patch-merging reduction gains a
    bias, and every site is integer."""
    uniform = partial(UniformQuantizer, init="percentile")
    factories = {"weight": partial(uniform, granularity="channel"), "activation": uniform,
                 "post_ln": partial(uniform, granularity="channel")}
    stages = [init_ranges, partial(reparameterize_layernorm, round_zero_point=True), init_ranges]
    q = to_quant_twin(copy.deepcopy(tiny_swin))
    recipe = Recipe("t", factories, stages, n_calib=8)
    recipe.attach(q, ["post_ln", "q", "k", "v", "softmax_in", "post_softmax", "attn_out", "post_gelu", "linear_in",
                      "weight"], BitWidths(bits, bits, bits, bits))
    recipe.calibrate(q, CalibContext(tiny_swin, torch.randn(8, 3, 32, 32), "cpu", 0))
    q.eval()
    assert q.layers[1].downsample.reduction.bias is not None
    model, report = export_model(q, 32)
    assert report.deployable and report.summary()["rounded_zero_points"] == 0
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = q(x).numpy()
    assert np.abs(onnx_logits(model, x) - expected).max() <= logit_step(q)


def test_unsupported_models_are_refused(tiny_swin):
    with pytest.raises(UserError, match="global_pool='max'"):
        export_model(to_quant_twin(SwinTransformer(**{**BASE, "global_pool": "max"}, img_size=32, depths=(2, 2))), 32)
    with pytest.raises(UserError, match="image_size=64"):
        export_model(to_quant_twin(tiny_swin), 64)
    with pytest.raises(UserError, match="not Linear"):
        export_model(torch.nn.Linear(2, 2), 32)


def test_export_cli_on_a_repqvit_swin_checkpoint(tiny_run, tmp_path):
    """RepQ-ViT folds PatchMerging's norm into the reduction (a new bias); log√2 post-Softmax stays float."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.export import run_export

    calib = tiny_run("method=repqvit", "bits=8", "method.stages.1.round_zero_point=true", swin=True, out="rq")
    run_calibration(calib)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={calib.out_dir}/quantized.pt", "task.num_workers=0"])
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path / "export")
    metrics = run_export(cfg)
    assert metrics == json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert metrics["float_site_kinds"] == ["post_softmax"] and metrics["rounded_zero_points"] == 0
    assert metrics["integer_sites"] > 0 and (tmp_path / "export" / "model.onnx").stat().st_size > 0
    assert abs(metrics["top1_gap"]) <= 100 / 12 + 1e-6, metrics  # at most one of the 12 images flips
