"""Launcher configs: the local launcher runs N jobs at a time, Slurm settings come from the command line or env."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.config import local_batch  # noqa: F401 - registers ${vq.local_batch:...} (calibrate.py imports it)

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def hydra_cfg(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=list(overrides), return_hydra_config=True).hydra


def test_local_launcher_batches_the_sweep_other_launchers_do_not(monkeypatch):
    monkeypatch.delenv("VITQUANT_LOCAL_JOBS", raising=False)
    assert hydra_cfg("hydra/launcher=local").sweeper.max_batch_size == 2
    monkeypatch.setenv("VITQUANT_LOCAL_JOBS", "3")
    local = hydra_cfg("hydra/launcher=local")
    assert local.sweeper.max_batch_size == 3 and local.launcher.gpus_per_node == 0
    assert hydra_cfg("hydra/launcher=local", "hydra.sweeper.max_batch_size=5").sweeper.max_batch_size == 5
    assert hydra_cfg("hydra/launcher=slurm").sweeper.max_batch_size is None
    assert hydra_cfg().sweeper.max_batch_size is None


def test_slurm_defaults_come_from_env_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("VITQUANT_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("VITQUANT_SLURM_GPUS", "4")
    monkeypatch.setenv("VITQUANT_SLURM_TIME_MIN", "90")
    cli = ["hydra/launcher=slurm", "hydra.launcher.account=proj", "hydra.launcher.gpus_per_node=2"]
    launcher = hydra_cfg(*cli).launcher
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "proj", 90)
    assert launcher.gpus_per_node == 2
    monkeypatch.delenv("VITQUANT_SLURM_PARTITION")
    launcher = hydra_cfg("hydra/launcher=slurm").launcher
    assert launcher.partition is None and launcher.gpus_per_node == 4 and launcher.mem_gb == 64
