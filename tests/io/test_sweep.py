"""Stable sweep folders (named from the sweep's overrides) and finished cells."""
import json

from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.config import sweep_name  # noqa: F401 - importing vitquant.config registers ${vq.sweep_name:...}
from vitquant.io import sweep
from vitquant.io.sweep import finished_cell


def test_sweep_name_is_readable_stable_and_order_free():
    name = sweep_name(["method=minmax,percentile", "bits=4,8"])
    assert name.startswith("bits=4,8_method=minmax,percentile-") and len(name.rsplit("-", 1)[1]) == 8
    assert sweep_name(["bits=4,8", "method=minmax,percentile"]) == name
    assert sweep_name(["bits=4,6"]) != sweep_name(["bits=4,8"])
    assert sweep_name(["data.root=/a/b"]) != sweep_name(["data.root=/a_b"])  # both read data.root=-a-b
    assert "/" not in sweep_name(["method=a/b", "data.root=/x y"]) and sweep_name([]).startswith("defaults-")
    assert len(sweep_name([f"model.kwargs.k{i}={i}" for i in range(40)])) <= 60 + 9


def test_sweep_dir_of_both_entry_configs():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for config in ("calibrate", "train"):
            hydra = compose(config, overrides=["bits=4", "seed=3"], return_hydra_config=True).hydra
            assert hydra.sweep.dir == f"multirun/{config}/{sweep_name(['bits=4', 'seed=3'])}"


def test_finished_cell_only_in_a_multirun(tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text(json.dumps({"top1": 71.5}))
    assert finished_cell(tmp_path) is None  # a single run (or no Hydra at all) always runs
    monkeypatch.setattr(sweep, "in_multirun", lambda: True)
    assert finished_cell(tmp_path) == {"top1": 71.5}
    assert finished_cell(tmp_path / "unfinished") is None


def test_same_sweep_command_reuses_its_folder_and_skips_finished_cells(image_folder, tmp_path):
    """Hydra's own (in-process) launcher; tests/cluster checks the same through Slurm."""
    import os
    import subprocess
    import sys

    from conftest import REPO, TINY_RUN

    cmd = [sys.executable, str(REPO / "calibrate.py"), "-m", *TINY_RUN, f"data.root={image_folder}",
           "method=minmax,percentile", "eval_fp=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    [folder] = (tmp_path / "multirun" / "calibrate").iterdir()
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("*/metrics.json")}
    assert sorted(stamps) == ["0", "1"]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert list((tmp_path / "multirun" / "calibrate").iterdir()) == [folder]
    assert {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("*/metrics.json")} == stamps
    assert again.stderr.count("metrics.json): skipped") + again.stdout.count("metrics.json): skipped") == 2
