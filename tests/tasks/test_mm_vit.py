"""The timm ViT backbone for mmseg (``TimmViT``): mmseg's ViT layout, and a UperNet-ViT segmentor end to end."""
from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("mmseg", reason="needs the mm stack (make setup-mm)")
pytestmark = pytest.mark.mm

from vitquant.errors import UserError  # noqa: E402
from vitquant.tasks.mm_checkpoint import (  # noqa: E402
    convert_mmseg_vit,
    load_detector_checkpoint,
    load_pretrained_backbone,
)
from vitquant.tasks.mm_vit import TimmViT  # noqa: E402

VIT = dict(embed_dim=32, depth=3, num_heads=2, img_size=64, out_indices=(0, 1, 2))
TINY_VIT_SEG = ["task=semantic_segmentation", "model=upernet_vit_micro", "data=coco128_semseg", "model.checkpoint=null",
                "task.max_eval_images=2", "task.image_scale=[128,128]", "method.n_calib=2", "logger=none"]
# A ViT site: the linears' inputs/weights and the attention matmuls' operands of one block (and the patch embedding).
VIT_SITE = re.compile(r"net\.backbone\.(patch_embed\.proj\.(input|weight)"
                      r"|blocks\.\d+\.(attn\.(qkv|proj)\.(input|weight)|attn\.(q|k|v|softmax_in|post_softmax)|mlp\.fc[12]\.(input|weight)))")


def mmseg_vit(final_norm: bool):
    """mmseg's own VisionTransformer with random weights (what its UperNet-ViT checkpoints hold)."""
    from mmseg.models.backbones.vit import VisionTransformer

    model = VisionTransformer(img_size=(64, 64), patch_size=16, embed_dims=32, num_layers=3, num_heads=2,
                              out_indices=(0, 1, 2), final_norm=final_norm, norm_cfg=dict(type="LN", eps=1e-6))
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("final_norm", [False, True])
def test_timm_vit_with_mmseg_weights_matches_mmseg_vit(final_norm):
    """Converted keys load strictly and give mmseg's numbers, at a size that pads and resamples positions."""
    theirs = mmseg_vit(final_norm)
    converted = convert_mmseg_vit({f"backbone.{k}": v for k, v in theirs.state_dict().items()})
    ours = TimmViT("deit_tiny_patch16_224", final_norm=final_norm, **VIT).eval()
    ours.load_state_dict({k.removeprefix("backbone."): v for k, v in converted.items()}, strict=True)
    assert torch.equal(ours.patch_embed.proj.bias, torch.zeros(32))  # mmseg's patch embedding has no bias
    x = torch.randn(2, 3, 100, 140)  # not a multiple of the patch; a 7x9 grid, not the stored 4x4
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mmseg_segmentor_file_loads_and_a_deit_backbone_file_initialises(tmp_path):
    net = torch.nn.Module()
    net.backbone = TimmViT("deit_tiny_patch16_224", **VIT)
    theirs = mmseg_vit(False)
    path = tmp_path / "upernet_vit.pth"
    torch.save({"meta": {"mmseg_version": "0.16.0"},
                "state_dict": {f"backbone.{k}": v for k, v in theirs.state_dict().items()}}, path)
    load_detector_checkpoint(net, path)
    assert torch.equal(net.backbone.blocks[1].attn.qkv.weight, theirs.layers[1].attn.attn.in_proj_weight)
    # An ImageNet DeiT file (timm keys, classifier, 224 px position grid) initialises the backbone alone.
    deit = TimmViT("deit_tiny_patch16_224", **{**VIT, "img_size": 224}, final_norm=True)
    state = {**deit.state_dict(), "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}
    torch.save({"model": state}, tmp_path / "deit.pth")
    load_pretrained_backbone(net.backbone, tmp_path / "deit.pth")
    assert torch.equal(net.backbone.blocks[2].mlp.fc2.weight, deit.blocks[2].mlp.fc2.weight)
    assert net.backbone.pos_embed.shape == (1, 17, 32)  # 14x14 grid resampled to the stored 4x4
    torch.save({"backbone.cls_token": torch.zeros(1), "decode_head.conv_seg.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="whole detector/segmentor"):
        load_pretrained_backbone(net.backbone, path)


@pytest.fixture
def vit_seg_cfg(semseg_root, tmp_path):
    from conftest import run_config_factory

    return run_config_factory([*TINY_VIT_SEG, f"data.root={semseg_root}"], tmp_path)


def test_every_quantized_backbone_site_is_a_vit_site_and_blocks_are_units(vit_seg_cfg):
    from vitquant.config import bit_widths
    from vitquant.engines.reconstruction import reconstruction_units
    from vitquant.models.quantize import quantized_twin
    from vitquant.nn.site import quantized_sites
    from vitquant.pipelines.common import build_recipe
    from vitquant.tasks.base import build_task

    cfg = vit_seg_cfg("method=repqvit")
    task = build_task(cfg.task, cfg.model, cfg.data)
    q = quantized_twin(task.build_model(), build_recipe(cfg.method), list(cfg.policy.kinds), bit_widths(cfg), 0)
    names = [name for name, _ in quantized_sites(q)]
    assert names and all(VIT_SITE.fullmatch(n) for n in names), [n for n in names if not VIT_SITE.fullmatch(n)]
    for i in range(4):
        assert {f"net.backbone.blocks.{i}.{s}" for s in ("attn.qkv.weight", "attn.q", "attn.post_softmax",
                                                          "attn.proj.input", "mlp.fc2.input")} <= set(names)
    units = [name for name, _ in reconstruction_units(q)]
    assert units == ["net.backbone.patch_embed.proj", *[f"net.backbone.blocks.{i}" for i in range(4)]]


def test_quantizers_off_give_the_float_vit_segmentor(vit_seg_cfg):
    from mm_pair import float_and_twin_predictions

    a, b = float_and_twin_predictions(vit_seg_cfg("method=percentile"))
    torch.testing.assert_close(a.seg_logits.data, b.seg_logits.data)


def test_reconstruct_calibrate_then_evaluate_gives_the_same_miou(vit_seg_cfg, tmp_path):
    """I&S-ViT (block reconstruction of the backbone's ViT blocks) → quantized.pt → evaluate.py's numbers."""
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.evaluate import run_evaluation

    metrics = run_calibration(vit_seg_cfg("method=isvit", "bits=4", "method.iters=1", "method.batch_size=2",
                                          "eval_fp=false"))
    assert metrics["primary_metric"] == "mIoU" and 0 <= metrics["mIoU"] <= 100
    again = run_evaluation(vit_seg_cfg(f"checkpoint={tmp_path / 'run' / 'quantized.pt'}",
                                       "task=semantic_segmentation", "task.max_eval_images=2",
                                       "task.image_scale=[128,128]", name="evaluate", out="ev"))
    assert {k: again[k] for k in ("mIoU", "aAcc", "mAcc")} == {k: metrics[k] for k in ("mIoU", "aAcc", "mAcc")}


def test_mismatched_checkpoint_is_one_line_error(vit_seg_cfg, tmp_path, capsys):
    """A segmentor checkpoint of another ViT width: one ``error:`` line, exit 2, no run folder."""
    from vitquant.cli import guarded
    from vitquant.pipelines.calibrate import run_calibration

    other = TimmViT("deit_tiny_patch16_224", embed_dim=48, depth=4, num_heads=2, img_size=64)
    path = tmp_path / "upernet_vit_wide.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(SystemExit) as exit_info:
        guarded(run_calibration)(vit_seg_cfg(f"model.checkpoint={path}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: checkpoint ")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_upernet_deit_small_with_mmseg_weights_matches_mmseg_segmentor(tmp_path):
    """model=upernet_deit_small loads a checkpoint of mmseg's own UperNet-DeiT-S and gives its logits."""
    from hydra import compose, initialize_config_dir
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from vitquant.cli import CONF_DIR
    from vitquant.tasks.mm_common import find_config, load_mm_config

    register_all_modules()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        model_cfg = compose("calibrate", overrides=["task=semantic_segmentation", "model=upernet_deit_small"]).model
    theirs_cfg = Config.fromfile(str(find_config(model_cfg.mm_config, "mmseg")))
    theirs_cfg.model.pretrained = None
    theirs = MODELS.build(theirs_cfg.model).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.05)
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": theirs.state_dict()}, tmp_path / "upernet.pth")
    ours = MODELS.build(load_mm_config(model_cfg, "mmseg").model).eval()
    load_detector_checkpoint(ours, tmp_path / "upernet.pth")
    x = torch.randn(1, 3, 320, 384)  # a 20x24 grid: the stored 32x32 position grid is resampled
    with torch.no_grad():
        torch.testing.assert_close(ours._forward(x), theirs._forward(x), atol=1e-5, rtol=1e-5)
