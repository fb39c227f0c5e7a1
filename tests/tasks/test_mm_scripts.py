"""``evaluate.py checkpoint=<run>/quantized.pt`` on detection and segmentation runs, as a user types it: the task,
model and data come from the checkpoint, the script exits 0 and reproduces the calibration run's metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmdet", reason="needs the mm stack (make setup-mm)")
pytest.importorskip("mmseg", reason="needs the mm stack (make setup-mm)")
pytestmark = pytest.mark.mm

from conftest import REPO, run_config_factory  # noqa: E402
from mm_pair import TINY_MM_SWIN  # noqa: E402


def calibrate_then_evaluate_cli(overrides: list[str], tmp_path) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """Calibrate in-process (seconds), then ``python evaluate.py checkpoint=...`` with no task/data overrides;
    the metrics.json of both runs."""
    from vitquant.pipelines.calibrate import run_calibration

    run_calibration(run_config_factory(overrides, tmp_path)("method=minmax", "bits=8", "eval_fp=false"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, str(REPO / "evaluate.py"), "checkpoint=run/quantized.pt", "hydra.run.dir=ev"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return (json.loads((tmp_path / "run" / "metrics.json").read_text()),
            json.loads((tmp_path / "ev" / "metrics.json").read_text()), proc)


def test_evaluate_cli_on_an_instance_segmentation_checkpoint(shared_dir, tmp_path):
    run = ["task=instance_segmentation", "model=mask_rcnn_swin_micro", "data=coco128",
           f"data.root={shared_dir / 'data' / 'coco128'}", *TINY_MM_SWIN]
    written, again, _ = calibrate_then_evaluate_cli(run, tmp_path)
    keys = [f"{m}_{k}" for m in ("bbox", "segm") for k in ("mAP", "AP50", "AP75")]
    assert again["task"] == "instance_segmentation" and again["primary_metric"] == "bbox_mAP"
    assert {k: again[k] for k in keys} == {k: written[k] for k in keys}
    assert again["n_eval_images"] == written["n_eval_images"] == 2  # (the random micro detector's AP is 0)
    assert {k: again[k] for k in ("model", "method", "w_bits", "a_bits")} == \
        {k: written[k] for k in ("model", "method", "w_bits", "a_bits")}


def test_evaluate_cli_on_a_semantic_segmentation_checkpoint(semseg_root, tmp_path):
    run = ["task=semantic_segmentation", "model=upernet_swin_micro", "data=coco128_semseg",
           f"data.root={semseg_root}", *TINY_MM_SWIN]
    written, again, _ = calibrate_then_evaluate_cli(run, tmp_path)
    assert again["task"] == "semantic_segmentation" and again["primary_metric"] == "mIoU"
    assert written["aAcc"] > 0  # the same non-trivial numbers, from the same quantized segmentor
    assert {k: again[k] for k in ("mIoU", "aAcc", "mAcc")} == {k: written[k] for k in ("mIoU", "aAcc", "mAcc")}
