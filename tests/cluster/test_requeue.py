"""A 2-task QAT job signalled mid-epoch (what Slurm does signal_delay_s before the time limit, or on
preemption) saves, is requeued, resumes, and ends with the same quantized.pt as an uninterrupted run."""
import json
import subprocess
import time

import pytest

from .jobs import assert_same_tensors, cleanup, finish, job_ids, job_logs, slurm_env, start

pytestmark = pytest.mark.cluster
STEPS_PER_EPOCH = 15  # 120 images, 60 per rank, batches of 4


def wait_for(pattern: str, root, proc: subprocess.Popen, timeout: float = 120):
    """The first path under ``root`` matching ``pattern``, once it exists (the command must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, f"{proc.args} ended before {pattern} appeared:\n{proc.communicate()[0][-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} under {root} after {timeout} s")


def skip_requeue_delay(ids: list[str], proc: subprocess.Popen, timeout: float = 60) -> None:
    """Slurm makes a requeued job eligible 121 s after the requeue; start it sooner (saves CI two minutes).
    Not at once: slurmd refuses to relaunch a job it killed a moment ago ("already killed") and holds it
    ("launch failed requeued held"); 5 s were usually enough, and a held job is released and asked again.
    Returns once the job runs again (or has left the queue)."""
    deadline = time.monotonic() + timeout
    requeued = None
    while time.monotonic() < deadline:
        rows = subprocess.run(["squeue", "-h", "-o", "%T|%r", "-j", ",".join(ids)], capture_output=True,
                              text=True).stdout.splitlines()
        state, _, reason = (rows[0] if rows else "GONE|").partition("|")
        if state == "PENDING":
            requeued = requeued or time.monotonic()
            if "held" in reason.lower():
                subprocess.run(["scontrol", "release", ids[0]], check=False)
            elif reason == "BeginTime" and time.monotonic() - requeued > 8:
                subprocess.run(["scontrol", "update", f"JobId={ids[0]}", "StartTime=now"], check=True)
                requeued = time.monotonic() - 4  # if it is still pending, ask again in 4 s
        elif requeued is not None and state in ("RUNNING", "COMPLETING", "COMPLETED", "GONE"):
            return  # started again
        assert proc.poll() is None, f"{proc.args} ended before the requeue:\n{proc.communicate()[0][-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"job {ids} was not requeued and restarted within {timeout} s")


def test_two_task_job_signalled_mid_epoch_is_requeued_and_ends_as_if_uninterrupted(slurm_cluster, qat_reference,
                                                                                     tmp_path):
    with cleanup(tmp_path) as procs:
        procs.append(job := start(["train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                                   "hydra.launcher.max_num_timeout=1", *qat_reference.args], tmp_path,
                                  slurm_env(slurm_cluster)))
        # resume.pt is first written just before the first step (step 0): signal the job then
        wait_for("multirun/train/*/0/resume.pt", tmp_path, job)
        subprocess.run(["scancel", "--signal=USR2", *job_ids(tmp_path)], check=True)
        skip_requeue_delay(job_ids(tmp_path), job)
        finish(job)
    [cell] = tmp_path.glob("multirun/train/*/0")
    metrics = json.loads((cell / "metrics.json").read_text())
    [resumed_at] = metrics["resumed_at_steps"]
    assert 0 < resumed_at < 2 * STEPS_PER_EPOCH and resumed_at % STEPS_PER_EPOCH, f"resumed at step {resumed_at}"
    assert metrics["steps"] == 2 * STEPS_PER_EPOCH and metrics["world_size"] == 2
    logs = job_logs(cell.parent)
    assert "for the requeue" in logs and "Requeued job" in logs
    assert_same_tensors(cell / "quantized.pt", qat_reference.quantized())
