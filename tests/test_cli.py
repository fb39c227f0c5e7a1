"""Bad command-line input ends with one `error:` line, exit code 2, and no output folder."""
from __future__ import annotations

import pytest

from vitquant.cli import EXIT_USER_ERROR, preflight
from vitquant.config import validate_calibrate, validate_evaluate


def run_preflight(capsys, *argv: str, name: str = "calibrate") -> str:
    with pytest.raises(SystemExit) as exit_info:
        preflight(name, validate_calibrate if name == "calibrate" else validate_evaluate, list(argv))
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_unknown_method_lists_valid_ones(capsys):
    err = run_preflight(capsys, "method=nope")
    assert "method/nope" in err and "percentile" in err and "minmax" in err


@pytest.mark.parametrize("bits", ["1", "17"])
def test_bits_out_of_range(capsys, bits):
    err = run_preflight(capsys, f"bits={bits}")
    assert f"w_bits={bits} is out of range" in err and "2..8" in err


def test_unknown_key(capsys):
    assert "bitz" in run_preflight(capsys, "bitz=4")


def test_missing_data_root(capsys, tmp_path):
    err = run_preflight(capsys, "data=cifar10", f"data.root={tmp_path}/nowhere")
    assert "data.root" in err and "nowhere" in err


def test_missing_model_checkpoint(capsys, tmp_path):
    err = run_preflight(capsys, f"model.checkpoint={tmp_path}/missing.pth")
    assert "model.checkpoint" in err and "not found" in err


def test_imagenet_without_root(capsys):
    assert "data.root" in run_preflight(capsys, "data=imagenet")


def test_evaluate_needs_an_existing_checkpoint(capsys, tmp_path):
    err = run_preflight(capsys, f"checkpoint={tmp_path}/q.pt", name="evaluate")
    assert "checkpoint" in err and "not found" in err


def test_valid_command_passes_preflight():
    preflight("calibrate", validate_calibrate, ["method=minmax", "model=vit_cifar", "bits=4", "w_bits=6"])


def hydra_job(tmp_path, target: dict):
    """A guarded job that instantiates ``target`` (as the pipelines do configs), run folder ``tmp_path/run``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vitquant.cli import guarded

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    return lambda: guarded(lambda cfg: instantiate(target))(OmegaConf.create({"out_dir": str(tmp_path / "run")}))


def test_user_error_inside_an_instantiated_constructor_is_one_line(tmp_path, capsys):
    job = hydra_job(tmp_path, {"_target_": "vitquant.tasks.base.task_class", "_recursive_": False,
                               "task_cfg": {"_target_": "nope.Task"}})
    with pytest.raises(SystemExit) as exit_info:
        job()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == EXIT_USER_ERROR and "\n" not in err
    assert err.startswith("error: task._target_=nope.Task cannot be imported")
    assert not (tmp_path / "run").exists()


def test_bug_inside_an_instantiated_constructor_keeps_its_own_traceback_and_the_folder(tmp_path):
    job = hydra_job(tmp_path, {"_target_": "vitquant.tasks.base.task_options", "task_cfg": 3})
    with pytest.raises(AttributeError) as info:  # the bug itself, not Hydra's "Error in call to target" summary
        job()
    assert info.traceback[-1].name == "task_options" and (tmp_path / "run" / ".hydra").is_dir()


def test_builtin_value_error_is_a_bug_not_a_user_error(tmp_path):
    from omegaconf import OmegaConf

    from vitquant.cli import guarded

    def buggy(cfg):
        raise ValueError("internal invariant broken")

    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="internal invariant"):
        guarded(buggy)(OmegaConf.create({"out_dir": str(tmp_path / "run")}))
    assert (tmp_path / "run").is_dir()


def test_task_options_are_checked_against_the_task(capsys):
    err = run_preflight(capsys, "task.batch_size=8", "+task.image_scale=[64,64]")
    assert "task.image_scale is not an option of task=classification" in err and "max_eval_images" in err
