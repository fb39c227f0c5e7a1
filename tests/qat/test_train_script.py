"""train.py bad inputs: one ``error:`` line, exit code 2, nothing written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_qat import train_args

from vitquant.cli import preflight
from vitquant.qat.config import validate_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_train_args(image_folder) -> list[str]:
    return train_args(image_folder)


@pytest.mark.parametrize("override,message", [
    ("bits=1", "w_bits=1 is out of range"),
    ("a_bits=9", "a_bits=9 is out of range"),
    ("teacher.checkpoint=/nonexistent/teacher.pth", "teacher.checkpoint=/nonexistent/teacher.pth: weights file"),
    ("qat.epochs=0", "qat.epochs=0 must be a positive integer"),
])
def test_preflight_rejects_bad_options(override, message, tiny_train_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preflight("train", validate_train, [*tiny_train_args, override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_init_that_is_not_a_quantized_checkpoint(tiny_train_args, tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", *tiny_train_args, f"init={bogus}",
                           f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a vitquant quantized checkpoint" in lines[0]
    assert not out.exists()


def test_teacher_checkpoint_that_is_no_weights_file_is_refused_up_front(tiny_train_args, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", *tiny_train_args, "teacher.checkpoint=/etc/passwd",
                           f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: teacher.checkpoint=/etc/passwd is not a weights file"), lines[0]
    assert "model.checkpoint" not in lines[0] and not out.exists()


def test_a_task_that_cannot_train_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        preflight("train", validate_train, ["task=semantic_segmentation", "model=upernet_swin_micro",
                                            "data=coco128_semseg", "model.checkpoint=null"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task=semantic_segmentation cannot be trained" in err[0], err


def test_train_runs_on_its_default_data(tmp_path):
    """``python train.py`` with the default ``data=digits`` (the embedded set, whose items are tensors without a
    transform) trains; the demo model's checkpoint is stood in for by an untrained one, cached in tmp_path."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import save_file

    from vitquant.cli import CONF_DIR
    from vitquant.models.build import build_model

    env = {**os.environ, "VITQUANT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        model_cfg = compose("train").model
    (tmp_path / "cache").mkdir()
    model = build_model({**model_cfg, "checkpoint": None})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "cache" / "vit_digits.safetensors"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "qat.epochs=1", "data.max_train_images=32", "qat.batch_size=16",
                           "qat.num_workers=0", "task.num_workers=0", "task.max_eval_images=32", "device=cpu",
                           f"hydra.run.dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "vit_digits" and 0 <= metrics["top1"] <= 100
