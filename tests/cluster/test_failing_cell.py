"""A Slurm sweep in which one cell has a bad value and another is cancelled: the third finishes, the sweep ends
with the two failures' error lines, and ``vitquant.analysis.report`` lists them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN

from vitquant.analysis.report import main as report_main

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def running_tasks(name: str) -> list[str]:
    """Running array tasks (``12_0`` ...) of the jobs named ``name``."""
    return subprocess.run(["squeue", "-h", "-r", "-t", "RUNNING", "-n", name, "-o", "%i"], capture_output=True,
                          text=True, timeout=30).stdout.split()


def test_failed_and_cancelled_cells_do_not_stop_the_sweep_and_are_reported(slurm_cluster, image_folder, tmp_path,
                                                                             capsys):
    name = f"vq_failing_cell_{os.getpid()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "VITQUANT_SLURM_PARTITION": slurm_cluster, "VITQUANT_SLURM_CPUS": "1", "VITQUANT_SLURM_MEM_GB": "2",
           "VITQUANT_SLURM_TIME_MIN": "10"}
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, str(REPO / "calibrate.py"), "-m", "hydra/launcher=slurm_cpu", *TINY_RUN,
                             f"data.root={image_folder}", "method=minmax", "bits=4,9,8", "eval_fp=false",
                             f"hydra.launcher.name={name}", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180  # cell 2 starts when cell 1 (bad value) has failed: cancel it running
        while not (third := [t for t in running_tasks(name) if t.endswith("_2")]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert third, "cell 2 never ran"
        subprocess.run(["scancel", third[0]], check=True, timeout=30)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", "-n", name], timeout=30, check=False)
    assert proc.returncode == 1, err[-3000:]
    summary = err.strip().splitlines()[-3:]
    assert summary[0].startswith("error: 2 of 3 jobs failed, the others finished "
                                 "(table: python -m vitquant.analysis.report")
    assert summary[1].startswith("  #1 bits=9: error: w_bits=9 is out of range")
    assert summary[2].startswith("  #2 bits=8: CANCELLED: ") and "slurmstepd" in summary[2]

    assert json.loads((sweep / "0" / "metrics.json").read_text())["w_bits"] == 4  # the good cell finished
    record = json.loads((sweep / "failed_jobs.json").read_text())
    assert sorted(record) == ["1", "2"] and record["1"]["state"] == "FAILED"
    assert record["2"]["state"].startswith("CANCELLED") and record["2"]["job_id"] == third[0]

    assert report_main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "| W4A4 |" in text and "2 of 3 jobs did not finish" in text
    rows = [line for line in text.splitlines() if line.startswith("| failed |")]
    assert len(rows) == 2 and "| bits=9 | FAILED: error: w_bits=9 is out of range" in rows[0]
    assert "| bits=8 | CANCELLED" in rows[1]
