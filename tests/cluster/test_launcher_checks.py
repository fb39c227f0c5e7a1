"""The Slurm request is checked against the CI cluster's partition before anything is submitted or written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
PROFILE_ENV = ("VITQUANT_SLURM_GPUS", "VITQUANT_SLURM_CPUS", "VITQUANT_SLURM_MEM_GB", "VITQUANT_SLURM_TIME_MIN")


def jobs_named(name: str) -> list[str]:
    """Jobs of that name the controller knows, queued or finished within the last MinJobAge (the cluster is shared:
    other sessions' jobs come and go)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if f" JobName={name} " in line]


def sweep(tmp_path: Path, partition: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """A 2-cell sweep whose jobs would be named after the test folder (so ``jobs_named`` finds only them)."""
    environ = {k: v for k, v in os.environ.items() if k not in PROFILE_ENV}
    environ.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                    "VITQUANT_SLURM_PARTITION": partition, **env})
    return subprocess.run([sys.executable, str(REPO / "calibrate.py"), "-m", *args, *TINY_RUN, "bits=4,8",
                           f"hydra.launcher.name={tmp_path.name}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)


def test_default_profile_on_the_cpu_partition_is_one_error_line_and_nothing_submitted(slurm_cluster, tmp_path):
    proc = sweep(tmp_path, slurm_cluster, "hydra/launcher=slurm")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Slurm request does not fit, nothing submitted: ")
    for fix in ("hydra.launcher.gpus_per_node=0 (or VITQUANT_SLURM_GPUS=0)", "hydra/launcher=slurm_cpu",
                "hydra.launcher.cpus_per_task=", "VITQUANT_SLURM_MEM_GB="):
        assert fix in lines[0]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "multirun").exists()
    assert jobs_named(tmp_path.name) == []


def test_too_many_cpus_alone_are_refused_instead_of_pending_forever(slurm_cluster, tmp_path):
    cpus = subprocess.run(["sinfo", "-h", "-p", slurm_cluster, "-o", "%c"], capture_output=True, text=True,
                          timeout=30).stdout.split()[0].rstrip("+")
    proc = sweep(tmp_path, slurm_cluster, "hydra/launcher=slurm", VITQUANT_SLURM_GPUS="0", VITQUANT_SLURM_MEM_GB="1",
                 VITQUANT_SLURM_CPUS=str(int(cpus) + 1))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert f"set hydra.launcher.cpus_per_task={cpus} (or VITQUANT_SLURM_CPUS={cpus})" in proc.stderr
    assert "gpus_per_node" not in proc.stderr and "mem_gb" not in proc.stderr
    assert not (tmp_path / "sweep").exists() and jobs_named(tmp_path.name) == []


def test_cpu_profile_fits_the_partition(slurm_cluster, monkeypatch):
    """``hydra/launcher=slurm_cpu`` as composed passes the check against the live ``sinfo``."""
    from hydra import compose, initialize_config_dir

    from vitquant.cli import CONF_DIR
    from vitquant.launch.resources import Request, check_request, query_sinfo

    for name in PROFILE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VITQUANT_SLURM_PARTITION", slurm_cluster)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        launcher = compose("calibrate", ["hydra/launcher=slurm_cpu"], return_hydra_config=True).hydra.launcher
    check_request(Request.from_params({k: v for k, v in launcher.items() if not k.startswith("_")}), query_sinfo())
