"""The entry scripts as a user runs them (a few subprocesses: importing torch + timm costs seconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_RUN


def run(script: str, *args: str, cwd: Path, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """``python <script> <args>`` in ``cwd``; ``path``: folders put first on PYTHONPATH (plugins, hidden packages)."""
    pythonpath = os.pathsep.join([*map(str, path), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def hidden(tmp_path: Path, *packages: str) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import <package>`` fail as on a machine without it."""
    folder = tmp_path / "hidden"
    for name in packages:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is hidden by the test')\n")
    return folder


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a refused command (exit code 2)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


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


def test_file_that_is_no_checkpoint_is_refused_up_front_by_its_key(image_folder, tmp_path):
    corrupt = tmp_path / "weights.pth"
    corrupt.write_bytes(b"\x00garbage")
    for key, value in (("model.checkpoint", corrupt), ("model.checkpoint", "/etc/passwd")):
        proc = run("calibrate.py", *TINY_RUN, f"data.root={image_folder}", f"{key}={value}", "hydra.run.dir=out",
                   cwd=tmp_path)
        assert f"{key}={value} is not a weights file" in one_error_line(proc)
        assert not (tmp_path / "out").exists()


def test_task_and_model_of_different_tasks_are_refused_up_front(tmp_path):
    for args, named in ((["task=detection", "model=vit_cifar"], ("task=detection", "model=vit_cifar")),
                        (["task=classification", "model=mask_rcnn_swin_micro"],
                         ("task=classification", "model=mask_rcnn_swin_micro"))):
        line = one_error_line(run("calibrate.py", *args, "hydra.run.dir=out", cwd=tmp_path))
        assert all(n in line for n in named), line
    assert not (tmp_path / "out").exists()


def test_missing_optional_packages_are_one_line_before_any_work(tmp_path):
    """A machine without the mm stack, onnx or the submitit launcher: each command that needs one says so."""
    no_extras = hidden(tmp_path, "mmdet", "onnx", "submitit")
    line = one_error_line(run("calibrate.py", "task=detection", "model=mask_rcnn_swin_micro", "data=coco128",
                              "hydra.run.dir=out", cwd=tmp_path, path=(no_extras,)))
    assert "task=detection needs mmdet" in line and "make setup-mm" in line
    line = one_error_line(run("calibrate.py", "-m", "hydra/launcher=local", "bits=4,8",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, path=(no_extras,)))
    assert "hydra/launcher=local needs submitit" in line
    line = one_error_line(run("export.py", "checkpoint=nowhere.pt", "hydra.run.dir=out", cwd=tmp_path,
                              path=(no_extras,)))
    assert "export.py needs onnx" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_internal_error_keeps_its_traceback_and_the_run_log(image_folder, tmp_path):
    """A bug of ours (here a builtin ValueError from a calibration stage, injected through a plugin module the
    method config names) is not a user error: traceback, non-zero exit, and the run folder keeps its log."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "vq_bug.py").write_text("def broken_stage(model, ctx, **options):\n"
                                       "    raise ValueError('injected internal bug')\n")
    proc = run("calibrate.py", *TINY_RUN, f"data.root={image_folder}", "method=minmax",
               "method.stages.0._target_=vq_bug.broken_stage", "hydra.run.dir=out", cwd=tmp_path, path=(plugins,))
    assert proc.returncode not in (0, 2), proc.stderr
    assert "Traceback" in proc.stderr and "vq_bug.py" in proc.stderr and "injected internal bug" in proc.stderr
    assert not proc.stderr.startswith("error: ")
    log = (tmp_path / "out" / "calibrate.log").read_text()
    assert "Traceback" in log and "ValueError: injected internal bug" in log
    assert not (tmp_path / "out" / "metrics.json").exists()


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
