"""Hydra's submitit launchers, made to check the Slurm request first and to wait for every job of a sweep.

Hydra only instantiates launchers defined in its ``hydra_plugins`` namespace, so the concrete classes
(``hydra_plugins.vitquant_launchers.LocalLauncher``/``SlurmLauncher``) are one-line combinations of these
mixins with the plugin's launchers; the logic lives here.

The plugin's ``launch`` submits every job, then reads the results in order and raises at the first job that
did not finish: the rest of the sweep is neither waited for nor reported, and under the local launcher (which
runs in batches) later batches never start. Here each job is read on its own: a failure is recorded with its
error line (``cells.update_failures``, read by ``vitquant.analysis.report``) and the sweep goes on. When the last job
has been read, a sweep with failures ends with a summary, one line per failed job (exit code 1); under Hydra's basic
sweeper that is after the last batch, under another sweeper after each batch (its size is unknown here).

``hydra/launcher=slurm`` also checks the request against ``sinfo`` when the launcher is set up, before Hydra
writes anything: a request no node can satisfy ends with one ``error:`` line (exit code 2). Set
``VITQUANT_SLURM_CHECK=0`` to submit without the check.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf

from vitquant.errors import UserError
from vitquant.launch.cells import (
    LOST_AFTER_S,
    exception_line,
    in_slurm_queue,
    killed_job_error,
    lost_job_error,
    sweep_job_overrides,
    update_failures,
)
from vitquant.launch.resources import Request, check_request, query_sinfo

log = logging.getLogger("vitquant")
EXECUTOR_INIT_KEYS = {"max_num_timeout"}   # passed to the executor's constructor, as the plugin does
POLL_S = 5.0     # seconds between checks of a job that is not done yet


class WaitForEveryJob:
    """Mixin for a ``BaseSubmititLauncher``: submit like the plugin, then read every job's result, recording
    failures instead of stopping at the first one."""

    _EXECUTOR: str
    params: dict[str, Any]
    config: DictConfig | None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.failures: dict[int, dict[str, Any]] = {}
        self.all_overrides: list[str] | None = sweep_job_overrides(config.hydra)

    def executor(self) -> Any:
        """The submitit executor with this launcher's parameters (the plugin's mapping of keys)."""
        import submitit

        params = dict(self.params)
        init = {f"{self._EXECUTOR}_{k}": params.pop(k) for k in EXECUTOR_INIT_KEYS if k in params}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"), **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for num, overrides in zip(numbers, job_overrides):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        jobs = self.executor().map_array(
            self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(job_overrides), list(numbers),
            [f"job_id_for_{n}" for n in numbers], [Singleton.get_state()] * len(job_overrides))
        log.info("waiting for %d jobs (%s)", len(jobs), ", ".join(str(j.job_id) for j in jobs))
        returns = [self.result(job, num, overrides) for job, num, overrides in zip(jobs, numbers, job_overrides)]
        batch_failures = {n: self.failures[n] for n in numbers if n in self.failures}
        update_failures(sweep_dir, batch_failures, [n for n in numbers if n not in self.failures])
        seen = self.all_overrides or [" ".join(o) for o in job_overrides]
        if self.failures and (self.all_overrides is None or numbers.stop >= len(self.all_overrides)):
            print(self.summary(sweep_dir, seen), file=sys.stderr)
            sys.exit(1)
        return returns

    def result(self, job: Any, num: int, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn; a failed job is recorded and stands as a completed job without a value until
        the sweep's end (so Hydra's sweeper goes on to the next batch)."""
        from submitit.core.utils import UncompletedJobError

        if not self.wait(job):
            state, error = "LOST", lost_job_error(job)
        else:
            try:
                ret = job.results()[0]
                if ret.status != JobStatus.FAILED:
                    return ret
                state, error = "FAILED", exception_line(ret._return_value)
            except UncompletedJobError as e:
                state, error = killed_job_error(job, e)
        self.failures[num] = {"overrides": " ".join(filter_overrides(overrides)), "state": state,
                              "job_id": str(job.job_id), "error": error}
        log.error("job #%d (%s) failed: %s", num, self.failures[num]["overrides"], error)
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)

    def wait(self, job: Any) -> bool:
        """Wait until the job is done (True), or, under Slurm, until it has been out of the queue for
        ``LOST_AFTER_S`` without a result or a final state (False)."""
        out_since = None
        while not job.done():
            if self._EXECUTOR == "slurm" and not in_slurm_queue(str(job.job_id)):
                out_since = out_since or time.monotonic()
                if time.monotonic() - out_since > LOST_AFTER_S:
                    return False
            else:
                out_since = None
            time.sleep(POLL_S)
        return True

    def summary(self, sweep_dir: Path, sweep_overrides: Sequence[str]) -> str:
        """``error: k of n jobs failed ...`` and one line per failed job: its overrides that vary, its Slurm state
        when it was not a plain failure (CANCELLED, TIMEOUT, OUT_OF_MEMORY, LOST), its error line."""
        common = set.intersection(*(set(o.split()) for o in sweep_overrides)) if len(sweep_overrides) > 1 else set()
        lines = [f"error: {len(self.failures)} of {len(sweep_overrides)} jobs failed, the others finished "
                 f"(table: python -m vitquant.analysis.report {sweep_dir}):"]
        for num, failure in sorted(self.failures.items()):
            varying = " ".join(o for o in failure["overrides"].split() if o not in common)
            state = "" if failure["state"] == "FAILED" else f"{failure['state']}: "
            lines.append(f"  #{num} {varying}: {state}{failure['error']}")
        return "\n".join(lines)


class CheckSlurmRequest:
    """Mixin for the Slurm launcher: refuse a request no node of the partition can run, before anything is
    submitted or written (Hydra sets the launcher up before it writes ``multirun.yaml``)."""

    params: dict[str, Any]

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if os.environ.get("VITQUANT_SLURM_CHECK", "1") != "0":
            kinds = query_sinfo()
            if kinds is not None:
                try:
                    check_request(Request.from_params(self.params), kinds)
                except UserError as e:
                    from vitquant.cli import fail
                    fail(e)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
