"""calibrate → quantized.pt → evaluate, in process, on a tiny model and data set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vitquant.errors import UserError
from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.pipelines.calibrate import run_calibration
from vitquant.pipelines.common import build_recipe, rebuild_quantized
from vitquant.pipelines.evaluate import run_evaluation
from vitquant.tasks.base import build_task

OUTPUTS = {"config.yaml", "metrics.json", "quantized.pt", "calib_ids.json"}
METRIC_KEYS = {"task", "model", "method", "w_bits", "a_bits", "top1", "top5", "fp_top1", "n_calib",
               "calib_seconds", "eval_seconds", "seed", "peak_memory_mb", "peak_rss_mb"}


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibrate_save_evaluate_round_trip(tiny_run, image_folder, method):
    cfg = tiny_run(f"method={method}", "bits=4")
    metrics = run_calibration(cfg)
    out = Path(cfg.out_dir)
    assert OUTPUTS <= {p.name for p in out.iterdir()}
    assert METRIC_KEYS <= set(json.loads((out / "metrics.json").read_text()))
    assert metrics["n_calib"] == 8 and len(json.loads((out / "calib_ids.json").read_text())) == 8
    assert metrics["peak_rss_mb"] > 100 and metrics["range_init_batch_images"] == 8  # one forward at 32 px
    torch.load(out / "quantized.pt", weights_only=True)

    eval_cfg = tiny_run(f"checkpoint={out / 'quantized.pt'}", "data=cifar10", f"data.root={image_folder}",
                        "data.val_split=val", "task.num_workers=0", name="evaluate", out="eval")
    again = run_evaluation(eval_cfg)
    assert again["top1"] == metrics["top1"] and again["top5"] == metrics["top5"]


def test_reloaded_model_gives_identical_logits(tiny_run):
    cfg = tiny_run("method=percentile", "bits=4", "policy=full")
    run_calibration(cfg)
    run_cfg, state, _ = read_quantized(Path(cfg.out_dir) / "quantized.pt")
    task = build_task(cfg.task, run_cfg.model, cfg.data)
    first = rebuild_quantized(run_cfg, state, "q.pt", task)
    second = rebuild_quantized(run_cfg, state, "q.pt", task)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
        fp = task.build_model(load_weights=False)
        fp.load_state_dict({k: v for k, v in state.items() if k in fp.state_dict()})
        assert not torch.equal(first(x), fp(x))


def test_fp_method_reproduces_the_float_model(tiny_run):
    metrics = run_calibration(tiny_run("method=fp"))
    assert metrics["top1"] == metrics["fp_top1"]


def test_calibration_ids_are_a_prefix_across_n_calib(tiny_run):
    small = run_calibration(tiny_run("method.n_calib=4", out="a"))
    large = run_calibration(tiny_run("method.n_calib=12", out="b"))
    assert small["n_calib"] == 4 and large["n_calib"] == 12
    ids = lambda cfg_out: json.loads((Path(cfg_out) / "calib_ids.json").read_text())  # noqa: E731
    assert ids(Path(tiny_run(out="b").out_dir))[:4] == ids(Path(tiny_run(out="a").out_dir))


def test_corrupt_quantized_checkpoint_is_one_line(tiny_run, image_folder, tmp_path):
    bad = tmp_path / "q.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = tiny_run(f"checkpoint={bad}", "data=cifar10", f"data.root={image_folder}", "data.val_split=val",
                   name="evaluate", out="eval")
    with pytest.raises(UserError, match="corrupt"):
        run_evaluation(cfg)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_checkpoint_of_another_architecture_names_the_first_key(tiny_run, tmp_path):
    other = tmp_path / "other.safetensors"
    from timm.models.vision_transformer import VisionTransformer
    save_file(VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=3)
              .state_dict(), str(other))
    cfg = tiny_run(f"model.checkpoint={other}")
    with pytest.raises(UserError, match="shape"):
        run_calibration(cfg)
    assert not (Path(cfg.out_dir) / "metrics.json").exists()


def test_wandb_offline_logger_never_needs_network(tiny_run, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    metrics = run_calibration(tiny_run("logger=wandb"))
    assert "top1" in metrics


def test_checkpoint_with_nan_weight_is_refused_before_anything_is_written(tiny_run, tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    state = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=3).state_dict()
    state["blocks.0.attn.qkv.weight"][1, 2] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    cfg = tiny_run(f"model.checkpoint={path}")
    with pytest.raises(UserError, match=r"non-finite weights: blocks\.0\.attn\.qkv\.weight \(1 NaN"):
        run_calibration(cfg)
    assert not (Path(cfg.out_dir) / "quantized.pt").exists()


def test_diverged_stage_names_the_site_and_writes_nothing(tiny_run, monkeypatch):
    import vitquant.pipelines.calibrate as calibrate_pipeline

    def diverging(method_cfg):
        recipe = build_recipe(method_cfg)
        site = "blocks.1.attn.proj.input_site"
        recipe.stages.append(lambda model, ctx: model.get_submodule(site).quantizer.scale.fill_(float("nan")))
        return recipe

    monkeypatch.setattr(calibrate_pipeline, "build_recipe", diverging)
    cfg = tiny_run("method=minmax", "bits=4")
    with pytest.raises(UserError, match=r"minmax diverged: site blocks\.1\.attn\.proj\.input: quantizer scale"):
        run_calibration(cfg)
    assert not (Path(cfg.out_dir) / "quantized.pt").exists()


def test_evaluate_moved_data_with_data_root_only(tiny_run, image_folder, tmp_path):
    cfg = tiny_run("method=minmax", "bits=4")
    metrics = run_calibration(cfg)
    moved = image_folder.rename(tmp_path / "moved")
    eval_cfg = tiny_run(f"checkpoint={Path(cfg.out_dir) / 'quantized.pt'}", f"data.root={moved}",
                        "task.num_workers=0", name="evaluate", out="eval")
    again = run_evaluation(eval_cfg)
    assert again["top1"] == metrics["top1"] and again["n_eval_images"] == metrics["n_eval_images"]
    stale = tiny_run(f"checkpoint={Path(cfg.out_dir) / 'quantized.pt'}", "task.num_workers=0", name="evaluate",
                     out="eval2")
    with pytest.raises(UserError, match="data.root"):  # the checkpoint's own root is gone
        run_evaluation(stale)
