"""Every method end to end on the tiny model (2 reconstruction iterations), and its checkpoint
reloading to identical logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitquant.cli import CONF_DIR
from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.pipelines.calibrate import run_calibration
from vitquant.pipelines.common import rebuild_quantized
from vitquant.tasks.base import build_task

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
FAST = {  # keep each method to seconds: tiny budgets for the iterative stages
    "isvit": ["method.iters=2", "method.batch_size=4", "method.init_images=8"],
    "qdrop": ["method.iters=2", "method.batch_size=4"],
    "aiqvit": ["method.iters=4", "method.batch_size=4", "method.init_images=8"],
}


CASES = [(m, p, "vit") for m in METHODS for p in ("default", "full")] + [(m, "default", "swin") for m in METHODS]


@pytest.mark.parametrize("method,policy,arch", CASES)
def test_method_runs_and_reloads_to_identical_logits(tiny_run, method, policy, arch):
    cfg = tiny_run(f"method={method}", f"policy={policy}", "bits=4", *FAST.get(method, []), swin=arch == "swin")
    metrics = run_calibration(cfg)
    assert metrics["method"] == method and metrics["policy"] == policy
    assert 0.0 <= metrics["top1"] <= 100.0

    run_cfg, state, _ = read_quantized(Path(cfg.out_dir) / "quantized.pt")
    task = build_task(cfg.task, run_cfg.model, cfg.data)
    x = task.calibration_images(4, seed=1)[0]
    with torch.no_grad():
        first = rebuild_quantized(run_cfg, state, "q.pt", task)(x)
        second = rebuild_quantized(run_cfg, state, "q.pt", task)(x)
    assert torch.equal(first, second)
    reloaded = task.evaluate(rebuild_quantized(run_cfg, state, "q.pt", task), torch.device("cpu"))
    assert (reloaded["top1"], reloaded["top5"]) == (metrics["top1"], metrics["top5"])
    if method != "fp":
        fp = task.build_model(load_weights=False)
        fp.load_state_dict({k: v for k, v in state.items() if k in fp.state_dict()})
        with torch.no_grad():
            assert not torch.equal(first, fp(x)), "quantizers had no effect"
