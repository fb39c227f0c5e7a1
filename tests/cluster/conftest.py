"""Minimal ``slurm_cluster`` fixture (the cluster helper's conftest.py, which can also start a cluster, replaces it):
the default partition of a Slurm cluster that answers, else the test is skipped with the reason."""
from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm cluster: sinfo not found")
    out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    up = [line.split()[0] for line in out.stdout.splitlines() if out.returncode == 0 and line.split()[1:] == ["up"]]
    if not up:
        pytest.skip(f"no Slurm partition up (sinfo: {(out.stderr or out.stdout).strip()[:200]})")
    return next((p for p in up if p.endswith("*")), up[0]).rstrip("*")
