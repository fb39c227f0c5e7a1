"""The jobs ("cells") of a sweep: which ones it has, and the record of the ones that failed.

A cell can fail in four ways, and each leaves its error line in ``<sweep>/failed_jobs.json``
(``{"<job num>": {"overrides", "state", "job_id", "error"}}``), written by the launcher that waited for it:

* the task raised (Hydra returns the exception): ``RuntimeError: ...``;
* the task stopped with a one-line user error (exit 2, its run folder removed): the ``error: ...`` line of
  the job's stderr;
* Slurm ended it (``scancel``, time or memory limit): submitit's state (CANCELLED, TIMEOUT, OUT_OF_MEMORY)
  and the last error line of the job's logs (``slurmstepd: error: *** JOB 12 ... CANCELLED ...``);
* the job could not even build its config (a bad value in one cell): the last line of the traceback;
* the job left the Slurm queue without a result and without an accounting record (a pending array task that
  was cancelled, on a cluster whose ``sacct`` forgets it): submitit would wait for it forever, so after
  ``LOST_AFTER_S`` out of the queue it is recorded as ``LOST``.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vitquant.io.atomic import write_json

FAILED_JOBS = "failed_jobs.json"
LOST_AFTER_S = 60.0   # out of the queue this long, without a result: lost (a finished job writes its result first)
SLURM_LINE_WAIT_S = 15.0  # slurmstepd appends its "*** JOB ... CANCELLED ..." line after the state changes
ERROR_LINE = re.compile(r"(^error: |Error\b|Exception\b|Traceback|\bKilled\b|CANCELLED|TIMEOUT|out of memory"
                        r"|oom[_-]kill)")
NOT_AN_ERROR_LINE = re.compile(r"^(Error stream produced:|-+)$")  # submitit's header above a job's stderr


def last_error_line(texts: Iterable[str]) -> str:
    """The last line that looks like an error in ``texts``, or ''."""
    found = ""
    for text in texts:
        for line in text.splitlines():
            if ERROR_LINE.search(line) and not NOT_AN_ERROR_LINE.match(line.strip()):
                found = line.strip()
    return found


def read_texts(paths: Iterable[Path]) -> list[str]:
    """The readable ones of ``paths`` (logs that may not exist)."""
    texts = []
    for path in paths:
        try:
            texts.append(Path(path).read_text(errors="replace"))
        except OSError:
            continue
    return texts


def sweep_job_overrides(hydra_cfg: Any) -> list[str] | None:
    """The sweep's job overrides in job-number order, expanded from a (multirun) config like Hydra's basic
    sweeper does (``hydra.sweeper.params`` then the command line); None for another sweeper or a config
    that cannot be expanded."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = hydra_cfg.sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + list(hydra_cfg.overrides.task)
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
        return [" ".join(job) for batch in batches for job in batch]
    except Exception:  # noqa: BLE001 - a sweep we cannot expand is still read from its folders
        return None


def read_failures(sweep: Path) -> dict[int, dict[str, Any]]:
    """Job number → failure record (empty when the sweep has none or no record)."""
    path = Path(sweep) / FAILED_JOBS
    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def update_failures(sweep: Path, failed: Mapping[int, dict[str, Any]], finished: Iterable[int]) -> None:
    """Add this batch's failures to the sweep's record and drop cells that have now finished (a rerun)."""
    records = read_failures(sweep)
    if not records and not failed:
        return  # a sweep without failures gets no record file
    for num in finished:
        records.pop(num, None)
    records.update(failed)
    write_json(Path(sweep) / FAILED_JOBS, {str(k): v for k, v in sorted(records.items())})


def exception_line(error: BaseException) -> str:
    """``Type: message`` on one line (the last error line of a multi-line message, e.g. a traceback)."""
    text = str(error).strip()
    if "\n" in text:
        text = last_error_line([text]) or text.splitlines()[-1]
    return f"{type(error).__name__}: {text}" if not text.startswith(type(error).__name__) else text


def killed_job_error(job: Any, error: BaseException,
                     wait_s: float = SLURM_LINE_WAIT_S) -> tuple[str, str]:
    """(state, error line) of a submitit job whose result could not be read (``UncompletedJobError``).

    When Slurm ended the job (cancelled, time or memory limit), its reason is the ``slurmstepd: ...`` line that
    the step daemon appends to the job's stderr, sometimes a moment after the job's state has changed: the logs
    are read again for up to ``wait_s`` seconds until that line is there."""
    try:
        state = str(job.state)
    except Exception:  # noqa: BLE001 - the scheduler may not answer any more; the logs still tell
        state = "UNKNOWN"
    if state in ("COMPLETED", "FINISHED"):  # the process ended (e.g. exit 2 after a user error) without a result
        state = "FAILED"
    deadline = time.monotonic() + (wait_s if state not in ("FAILED", "UNKNOWN") else 0.0)
    while True:
        line = last_error_line(read_texts([job.paths.stderr, job.paths.stdout]))
        if "slurmstepd" in line or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    line = line or last_error_line([str(error)])
    return state, line or f"job ended in state {state} without an error line (logs: {job.paths.stderr})"


def lost_job_error(job: Any) -> str:
    """The error line of a job that left the queue without a trace: its logs' last error line, if it ran."""
    return last_error_line(read_texts([job.paths.stderr, job.paths.stdout])) or (
        f"job {job.job_id} left the Slurm queue without a result or an accounting record (cancelled while pending?)")


def in_slurm_queue(job_id: str) -> bool:
    """Whether ``squeue`` still lists the job (array tasks one by one); True when squeue cannot answer, so that
    a scheduler hiccup never counts as a lost job."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", job_id.split("_")[0]], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if proc.returncode != 0:
        return "Invalid job id" not in proc.stderr
    return job_id in proc.stdout.split()
