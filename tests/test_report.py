"""A real sweep with the local submitit launcher, then ``vitquant.analysis.report`` over it (and over a faked
W&B project)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO, TINY_RUN

from vitquant.analysis.report import main, read_folders, read_wandb, report

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """bits=9,4 × method=minmax,percentile on the tiny model, 2 local jobs at a time: the first batch (bits=9)
    fails, the second (bits=4) still runs, and the sweep ends with the failed jobs' error lines (exit 1)."""
    from conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("sweep")
    data = make_image_folder(tmp / "data", {"train": 6, "val": 4})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "VITQUANT_LOCAL_JOBS": "2",
           "PYTHONPATH": str(REPO)}  # submitit jobs start in the sweep folder: import this checkout
    proc = subprocess.run([sys.executable, str(REPO / "calibrate.py"), "-m", "hydra/launcher=local", *TINY_RUN,
                           f"data.root={data}", "bits=9,4", "method=minmax,percentile", "eval_fp=true",
                           f"hydra.sweep.dir={tmp / 'sweep'}"], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    summary = proc.stderr.strip().splitlines()[-3:]
    assert summary[0].startswith("error: 2 of 4 jobs failed, the others finished "
                                 "(table: python -m vitquant.analysis.report")
    assert [line.split(":")[0] for line in summary[1:]] == ["  #0 bits=9 method=minmax",
                                                             "  #1 bits=9 method=percentile"]
    assert all("error: w_bits=9 is out of range" in line for line in summary[1:])
    return tmp / "sweep"


def test_local_sweep_report_cells_equal_metrics_and_failures_are_listed(sweep, capsys):
    runs = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert {(m["method"], m["w_bits"]) for m in runs.values()} == {("minmax", 4), ("percentile", 4)}
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert text in capsys.readouterr().out
    for m in runs.values():
        assert f"{m['top1']:.2f}" in text
    row = next(line for line in text.splitlines() if "| W4A4 |" in line)
    best = max(m["top1"] for m in runs.values())
    assert f"**{best:.2f}**" in row
    fp_row = next(line for line in text.splitlines() if "| FP |" in line)
    assert f"{runs[2]['fp_top1']:.2f}" in fp_row and text.index(fp_row) < text.index("| W4A4 |")  # FP row on top
    assert "2 of 4 jobs did not finish" in text
    assert "| bits=9 method=minmax |" in text and "| bits=9 method=percentile |" in text
    assert "| failed | " in text and "FAILED: error: w_bits=9 is out of range" in text  # the launcher's record
    assert {"report.csv", "top1_vs_bits.png", "drop_vs_calib_time.png"} <= {p.name for p in sweep.iterdir()}


def test_job_that_crashed_leaving_its_folder_is_failed_with_its_error(sweep, tmp_path):
    import shutil

    copy = shutil.copytree(sweep, tmp_path / "sweep", ignore=shutil.ignore_patterns(".submitit"))
    (copy / "failed_jobs.json").unlink()  # a sweep of another launcher: the job's own log tells
    (copy / "2" / "metrics.json").unlink()
    (copy / "2" / "calibrate.log").write_text("[INFO] stage init_ranges\nRuntimeError: CUDA out of memory\n")
    jobs = {j.where: j for j in read_folders([copy])}
    crashed = jobs[str(copy / "2")]
    assert crashed.status == "failed" and crashed.error == "RuntimeError: CUDA out of memory"
    assert sum(j.status == "ok" for j in jobs.values()) == 1 and len(jobs) == 4


def test_jobs_killed_by_slurm_are_listed_with_their_state_and_error_line(sweep, tmp_path):
    import shutil

    copy = shutil.copytree(sweep, tmp_path / "sweep")
    record = json.loads((copy / "failed_jobs.json").read_text())
    assert sorted(record) == ["0", "1"] and "bits=9 method=minmax" in record["0"]["overrides"]
    (copy / "3" / "metrics.json").unlink()  # as if cancelled after it started: its folder stays
    record["3"] = {"overrides": "bits=4 method=percentile", "state": "CANCELLED", "job_id": "12_3",
                   "error": "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-04T23:00:00 ***"}
    (copy / "failed_jobs.json").write_text(json.dumps(record))
    jobs = {j.where: j for j in read_folders([copy])}
    cancelled = jobs[str(copy / "3")]
    assert cancelled.status == "failed" and cancelled.error.startswith("CANCELLED: slurmstepd: error: *** JOB 12")
    text = report(list(jobs.values()), tmp_path / "out", "top1")
    assert "3 of 4 jobs did not finish" in text and "| bits=4 method=percentile | CANCELLED: " in text


def test_report_from_a_wandb_project(tmp_path):
    def run(id_, method, bits, seed, top1, state="finished"):
        summary = {"model": "deit_small", "method": method, "w_bits": bits, "a_bits": bits, "seed": seed,
                   "top1": top1, "fp_top1": 79.8, "calib_seconds": 10.0 * bits, "policy": "default"}
        return SimpleNamespace(id=id_, name=id_, state=state, group="sweep1", summary=summary)

    class FakeApi:
        def runs(self, path, filters=None):
            assert path == "me/vitquant" and filters == {"group": "sweep1"}
            return [run("a", "isvit", 4, 0, 74.0), run("b", "isvit", 4, 1, 75.0), run("c", "repqvit", 4, 0, 69.0),
                    run("d", "repqvit", 4, 1, 0.0, state="crashed")]

    jobs = read_wandb("me/vitquant", "sweep1", api=FakeApi())
    text = report(jobs, tmp_path, "top1")
    assert "**74.50 ± 0.71**" in text and "| 69.00 |" in text and "79.80" in text
    assert "crashed" in text and "1 of 4 jobs did not finish" in text


def test_other_metric_and_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": "swin_t", "method": "repqvit", "w_bits": 4, "a_bits": 4,
                                                  "seed": 0, "bbox_mAP": 40.1, "fp_bbox_mAP": 46.0}))
    assert main([str(run), "--metric", "bbox_mAP", "--out", str(tmp_path / "rep")]) == 0
    assert "40.10" in (tmp_path / "rep" / "report.md").read_text()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
