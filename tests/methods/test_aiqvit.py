"""AIQViT end to end on the tiny model: compensation in the checkpoint, chosen ranks and DFQ
intervals in metrics.json, and the paper's ablation switches."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.nn import QuantLinear
from vitquant.pipelines.calibrate import run_calibration
from vitquant.pipelines.common import rebuild_quantized
from vitquant.tasks.base import build_task

FAST = ["method=aiqvit", "bits=4", "method.iters=6", "method.batch_size=4", "method.init_images=8"]


def compensated(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.branch.rank for n, m in model.named_modules()
            if isinstance(m, QuantLinear) and m.branch is not None}


def test_aiqvit_checkpoint_with_compensation_reloads_to_identical_logits(tiny_run):
    cfg = tiny_run(*FAST, "method.rank_search=false", "method.fixed_rank=4")
    metrics = run_calibration(cfg)
    saved = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert saved["lowrank_form"] == "unmerged" and saved["lowrank_search"] is False
    assert set(saved["lowrank_ranks"].values()) == {4} and len(saved["lowrank_ranks"]) == 8  # 2 blocks × 4
    assert saved["lowrank_extra_params"] == 4 * 2 * ((48 + 144) + (48 + 48) + (48 + 192) + (192 + 48))
    assert set(saved["dfq_intervals"]) == {"blocks.0.attn.post_softmax", "blocks.1.attn.post_softmax"}

    run_cfg, state, _ = read_quantized(Path(cfg.out_dir) / "quantized.pt")
    assert "blocks.0.mlp.fc2.branch.A" in state
    task = build_task(cfg.task, run_cfg.model, cfg.data)
    x = task.calibration_images(4, seed=1)[0]
    first = rebuild_quantized(run_cfg, state, "q.pt", task)
    assert compensated(first) == {k.removesuffix(".branch.A"): 4 for k in state if k.endswith("branch.A")}
    with torch.no_grad():
        assert torch.equal(first(x), rebuild_quantized(run_cfg, state, "q.pt", task)(x))
    reloaded = task.evaluate(first, torch.device("cpu"))
    assert (reloaded["top1"], reloaded["top5"]) == (metrics["top1"], metrics["top5"])


def test_aiqvit_merged_form_leaves_no_modules(tiny_run):
    cfg = tiny_run(*FAST, "method.lowrank_form=merged", "method.rank_search=false", "method.fixed_rank=4")
    metrics = run_calibration(cfg)
    assert metrics["lowrank_form"] == "merged" and metrics["lowrank_extra_params"] == 0
    _, state, _ = read_quantized(Path(cfg.out_dir) / "quantized.pt")
    assert not any(".branch." in k for k in state)


@pytest.mark.parametrize("switch", ["method.lowrank=false", "quantizer@method.quantizers.post_softmax=logsqrt2"])
def test_aiqvit_ablation_switches(tiny_run, switch):
    metrics = run_calibration(tiny_run(*FAST, switch))
    if switch == "method.lowrank=false":
        assert "lowrank_ranks" not in metrics
    else:
        assert len(metrics["lowrank_ranks"]) == 8
    assert ("dfq_intervals" in metrics) == ("logsqrt2" not in switch)
