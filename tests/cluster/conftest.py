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
CONFIGLESS = Path("/run/slurm/conf/slurm.conf")  # where slurmd caches the config of a "configless" cluster


def running_partition(env: dict[str, str] | None = None) -> str | None:
    """The default (else first) partition of a cluster that answers and has a usable node, or None."""
    env = dict(os.environ if env is None else env)
    conf = env.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if shutil.which("sinfo", path=env.get("PATH")) is None or not (Path(conf).is_file() or CONFIGLESS.is_file()):
        return None  # (sinfo without a config retries for a minute)
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



class QatRun:
    """The QAT run both DDP cluster tests compare with: ``torchrun --nproc_per_node=2`` on 120 images,
    2 epochs of 15 steps per rank, started in the background by the first test that asks for it."""

    def __init__(self, root: Path) -> None:
        from conftest import make_image_folder

        from .jobs import TINY_TRAIN, slurm_env, start

        data = make_image_folder(root / "data", {"train": 40, "val": 4})
        self.args = [*TINY_TRAIN, f"data.root={data}", "qat.epochs=2", "qat.n_crops=4",
                     "qat.checkpoint_every_steps=null", "eval_fp=false"]
        self.out = root / "torchrun"
        self.proc = start(["-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "train.py"), *self.args,
                           f"hydra.run.dir={self.out}"], root, slurm_env("unused"))

    def quantized(self) -> Path:
        from .jobs import finish

        if self.proc.returncode is None:
            finish(self.proc)
        return self.out / "quantized.pt"


@pytest.fixture(scope="session")
def qat_reference(tmp_path_factory) -> Iterator[QatRun]:
    run = QatRun(tmp_path_factory.mktemp("qat_reference"))
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.communicate()
