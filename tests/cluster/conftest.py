"""The ``slurm_cluster`` session fixture: a one-node Slurm cluster for the ``cluster`` tests.

A cluster that already answers (``sinfo`` shows an up partition with a usable node) is used as it is
and left running. Otherwise ``scripts/slurm/start.sh`` starts one under a temporary SLURM_ROOT (root
and apt needed: elsewhere the tests skip with the script's reason) and ``scripts/slurm/stop.sh`` stops,
by PID, what it started when the session ends.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"
CANNOT_START = 3  # start.sh: Slurm cannot be installed here


def running_partition(env: dict[str, str] | None = None) -> str | None:
    """The default (else first) partition of a cluster that answers and has a usable node, or None."""
    if shutil.which("sinfo", path=(env or os.environ).get("PATH")) is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        return None
    usable = [line.split() for line in out.stdout.splitlines()
              if out.returncode == 0 and line.split()[1:2] == ["up"] and line.split()[2].rstrip("*~#") in
              ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return None
    default = [p for p, *_ in usable if p.endswith("*")]
    return (default or [usable[0][0]])[0].rstrip("*")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """The partition to submit to (``debug`` on the project's cluster)."""
    partition = running_partition()
    if partition is not None:
        yield partition
        return
    root = tempfile.mkdtemp(prefix="vitquant-slurm-")
    env = {**os.environ, "SLURM_ROOT": root}
    start = subprocess.run([str(SCRIPTS / "start.sh")], capture_output=True, text=True, env=env, timeout=600)
    if start.returncode == CANNOT_START:
        pytest.skip(start.stderr.strip().splitlines()[-1])
    try:
        assert start.returncode == 0, f"scripts/slurm/start.sh failed:\n{start.stdout}\n{start.stderr}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", f"{root}/etc/slurm.conf")
            mp.setenv("PATH", f"{root}/bin{os.pathsep}{os.environ['PATH']}")  # the sacct stand-in
            partition = running_partition()
            assert partition is not None, f"the cluster started but sinfo shows no usable partition:\n{start.stdout}"
            yield partition
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh")], env=env, timeout=120, check=False)
