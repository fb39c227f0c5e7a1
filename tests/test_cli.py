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
