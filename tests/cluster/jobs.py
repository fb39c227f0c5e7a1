"""What the cluster tests share: the command a user types, with the CI cluster's resources.

A plain module, not a ``conftest.py`` (the top-level tests import ``conftest`` by name; tests/cluster is a
package so that its own conftest.py does not take that name).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "qat"))
from tiny_qat import TINY_TRAIN  # noqa: E402, F401 - re-exported; tests/qat is on the path only with its tests


def slurm_env(partition: str) -> dict[str, str]:
    """The environment of a sweep on the CI node: 2 CPUs, no GPU, 2 GB per job; this checkout imported."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
            "VITQUANT_SLURM_PARTITION": partition, "VITQUANT_SLURM_GPUS": "0", "VITQUANT_SLURM_CPUS": "1",
            "VITQUANT_SLURM_MEM_GB": "2", "VITQUANT_SLURM_TIME_MIN": "10"}


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``python <argv>`` from ``cwd`` (a multirun's folders land under cwd/multirun); a script of the repository
    (``train.py``) is found there."""
    argv = [str(REPO / argv[0]) if argv[0].endswith(".py") else argv[0], *argv[1:]]
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for the command; its output, asserted to end with exit code 0."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} still running after {timeout} s:\n{out[-4000:]}") from None
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def job_ids(root: Path) -> list[str]:
    """Slurm ids of the jobs of every sweep under ``root`` (submitit's folders: ``<id>`` or ``<array id>_<i>``)."""
    return sorted(p.name for p in root.glob("**/.submitit/*") if re.fullmatch(r"\d+(_\d+)?", p.name))


@contextmanager
def cleanup(root: Path) -> Iterator[list[subprocess.Popen]]:
    """Yields a list to put started commands in; on the way out, kills those still running and cancels
    the Slurm jobs of the sweeps under ``root`` (a failed test leaves nothing behind on the cluster)."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        ids = job_ids(root)
        if ids:
            subprocess.run(["scancel", *ids], check=False, capture_output=True)


def job_logs(sweep: Path) -> str:
    """Every task's submitit log of a sweep (stdout and stderr)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


def quantized_tensors(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {"calib_ids": blob["calib_ids"], **{k: v for k, v in blob["state_dict"].items() if torch.is_tensor(v)}}


def assert_same_tensors(a: Path, b: Path) -> None:
    """Two quantized.pt files hold bit-identical tensors (their configs differ in out_dir)."""
    ta, tb = quantized_tensors(a), quantized_tensors(b)
    assert ta.keys() == tb.keys() and ta
    different = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} tensors differ, first: {different[:3]}"
