"""The entry scripts as a user runs them (a few subprocesses: importing torch + timm costs seconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_RUN


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_calibrate_then_evaluate_cli(image_folder, tmp_path):
    out = tmp_path / "run"
    proc = run("calibrate.py", *TINY_RUN, f"data.root={image_folder}", "method=minmax", "bits=6",
               f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["w_bits"], metrics["a_bits"], metrics["method"]) == (6, 6, "minmax")
    assert (out / "calibrate.log").exists() and (out / "config.yaml").exists()

    # data defaults to the checkpoint's own
    proc = run("evaluate.py", "checkpoint=run/quantized.pt", "task.num_workers=0", "hydra.run.dir=eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == metrics["top1"]

    # the data set moved: data.root alone, no data=<name>
    moved = image_folder.rename(tmp_path / "moved")
    proc = run("evaluate.py", "checkpoint=run/quantized.pt", f"data.root={moved}", "task.num_workers=0",
               "hydra.run.dir=eval2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["top1"] == metrics["top1"]


def test_multirun_sweep_writes_one_folder_per_job(image_folder, tmp_path):
    proc = run("calibrate.py", "-m", *TINY_RUN, f"data.root={image_folder}", "method=minmax,percentile",
               "bits=4", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    methods = {json.loads(p.read_text())["method"] for p in (tmp_path / "sweep").glob("*/metrics.json")}
    assert methods == {"minmax", "percentile"}


def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path):
    for args in (["method=nope"], ["bits=1"], ["data=cifar10", "data.root=/nowhere"]):
        proc = run("calibrate.py", *args, "hydra.run.dir=out", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "out").exists()


def test_error_found_during_the_run_removes_its_folder(image_folder, tmp_path):
    corrupt = tmp_path / "weights.pth"
    corrupt.write_bytes(b"\x00garbage")
    proc = run("calibrate.py", *TINY_RUN, f"data.root={image_folder}", f"model.checkpoint={corrupt}",
               "hydra.run.dir=out", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_nan_weight_checkpoint_is_one_line_naming_the_tensor(image_folder, tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer
    state = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=3).state_dict()
    state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    proc = run("calibrate.py", *TINY_RUN, f"data.root={image_folder}", "model.checkpoint=nan.safetensors",
               "hydra.run.dir=out", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "blocks.0.attn.qkv.weight" in proc.stderr
    assert not (tmp_path / "out").exists()
