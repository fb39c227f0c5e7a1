"""Launcher configs: the local launcher runs N jobs at a time, Slurm settings come from the command line or env."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.config import local_batch  # noqa: F401 - registers ${vq.local_batch:...} (calibrate.py imports it)

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def hydra_cfg(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=list(overrides), return_hydra_config=True).hydra


def test_local_launcher_batches_the_sweep_other_launchers_do_not(monkeypatch):
    monkeypatch.delenv("VITQUANT_LOCAL_JOBS", raising=False)
    assert hydra_cfg("hydra/launcher=local").sweeper.max_batch_size == 2
    monkeypatch.setenv("VITQUANT_LOCAL_JOBS", "3")
    local = hydra_cfg("hydra/launcher=local")
    assert local.sweeper.max_batch_size == 3 and local.launcher.gpus_per_node == 0
    assert hydra_cfg("hydra/launcher=local", "hydra.sweeper.max_batch_size=5").sweeper.max_batch_size == 5
    assert hydra_cfg("hydra/launcher=slurm").sweeper.max_batch_size is None
    assert hydra_cfg().sweeper.max_batch_size is None


def test_slurm_defaults_come_from_env_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("VITQUANT_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("VITQUANT_SLURM_GPUS", "4")
    monkeypatch.setenv("VITQUANT_SLURM_TIME_MIN", "90")
    cli = ["hydra/launcher=slurm", "hydra.launcher.account=proj", "hydra.launcher.gpus_per_node=2"]
    launcher = hydra_cfg(*cli).launcher
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "proj", 90)
    assert launcher.gpus_per_node == 2
    monkeypatch.delenv("VITQUANT_SLURM_PARTITION")
    launcher = hydra_cfg("hydra/launcher=slurm").launcher
    assert launcher.partition is None and launcher.gpus_per_node == 4 and launcher.mem_gb == 64


# ------------------------------------------------------------------------------------------- Slurm request check
SINFO = """debug*|2|21694|(null)|infinite|1
gpu|64|515000|gpu:a100:4(S:0-1)|2-00:00:00|8
gpu|32|256000+|gpu:a100:2,gpu:v100:1|2-00:00:00|4
short|16|64000|(null)|30:00|2
"""


def slurm_request(*overrides: str):
    from vitquant.launch.resources import Request

    launcher = hydra_cfg("hydra/launcher=slurm", *overrides).launcher
    return Request.from_params({k: v for k, v in launcher.items() if not k.startswith("_")})


def refusal(request, sinfo: str = SINFO) -> str:
    from vitquant.errors import UserError
    from vitquant.launch.resources import check_request, parse_sinfo

    with pytest.raises(UserError) as error:
        check_request(request, parse_sinfo(sinfo))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_sinfo_lines_become_node_kinds():
    from vitquant.launch.resources import parse_sinfo

    debug, big, mixed, short = parse_sinfo(SINFO)
    assert (debug.partition, debug.default, debug.cpus, debug.memory_mb, debug.gpus) == ("debug", True, 2, 21694, 0)
    assert debug.time_limit_min == float("inf") and not big.default
    assert (big.gpus, big.time_limit_min, big.nodes) == (4, 2 * 1440, 8)
    assert (mixed.gpus, mixed.memory_mb) == (3, 256000)  # two gres entries; "+" marks a minimum
    assert short.time_limit_min == 30  # sinfo prints MM:SS


@pytest.mark.parametrize("text,minutes", [("infinite", float("inf")), ("UNLIMITED", float("inf")), ("45", 45),
                                          ("30:00", 30), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160),
                                          ("0:00:30", 0.5)])
def test_slurm_time_formats(text, minutes):
    from vitquant.launch.resources import time_limit_minutes

    assert time_limit_minutes(text) == minutes


def test_default_profile_on_a_cpu_partition_names_every_override_to_change(monkeypatch):
    for name in ("VITQUANT_SLURM_GPUS", "VITQUANT_SLURM_CPUS", "VITQUANT_SLURM_MEM_GB", "VITQUANT_SLURM_TIME_MIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VITQUANT_SLURM_PARTITION", "debug")
    message = refusal(slurm_request())
    assert message.startswith("Slurm request does not fit, nothing submitted: ")
    for fix in ("hydra.launcher.gpus_per_node=0 (or VITQUANT_SLURM_GPUS=0)", "hydra/launcher=slurm_cpu",
                "hydra.launcher.cpus_per_task=2 (or VITQUANT_SLURM_CPUS=2)",
                "hydra.launcher.mem_gb=21 (or VITQUANT_SLURM_MEM_GB=21)"):
        assert fix in message
    assert "timeout_min" not in message  # debug has no time limit
    # no partition given: the default one (debug*) is checked
    monkeypatch.delenv("VITQUANT_SLURM_PARTITION")
    assert "partition debug's nodes have 2" in refusal(slurm_request())


def test_cpus_alone_are_refused_although_sbatch_would_accept_them_and_pend_forever():
    message = refusal(slurm_request("hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
                                    "hydra.launcher.mem_gb=2", "hydra.launcher.cpus_per_task=4"))
    assert "4 CPUs per node requested" in message and "cpus_per_task=2" in message
    assert "gpus_per_node" not in message and "mem_gb" not in message


def test_requests_that_fit_pass_and_other_limits_are_named():
    from vitquant.launch.resources import check_request, parse_sinfo

    kinds = parse_sinfo(SINFO)
    check_request(slurm_request("hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"), kinds)
    check_request(slurm_request("hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug"), kinds)
    assert "time limit 2-00:00:00: set hydra.launcher.timeout_min=2880" in refusal(
        slurm_request("hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=5000"))
    assert "gpus_per_node=4" in refusal(slurm_request("hydra.launcher.partition=gpu",
                                                      "hydra.launcher.gpus_per_node=8"))
    assert "has 12: set hydra.launcher.nodes=12" in refusal(slurm_request("hydra.launcher.partition=gpu",
                                                                          "hydra.launcher.nodes=20"))
    assert "time limit 30:00" in refusal(slurm_request("hydra.launcher.partition=short",
                                                       "hydra.launcher.gpus_per_node=0"))
    message = refusal(slurm_request("hydra.launcher.partition=gpus"))
    assert "hydra.launcher.partition=gpus is not a partition" in message and "debug, gpu, short" in message


def test_every_named_environment_variable_drives_its_launcher_key(monkeypatch):
    from vitquant.launch.resources import ENV

    values = {"partition": "p7", "gpus_per_node": 3, "cpus_per_task": 5, "mem_gb": 7, "timeout_min": 11}
    for key, env in ENV.items():
        monkeypatch.setenv(env, str(values[key]))
    for profile in ("slurm", "slurm_cpu"):
        launcher = hydra_cfg(f"hydra/launcher={profile}").launcher
        assert {k: launcher[k] for k in values if not (profile == "slurm_cpu" and k == "gpus_per_node")} == {
            k: v for k, v in values.items() if not (profile == "slurm_cpu" and k == "gpus_per_node")}
    assert hydra_cfg("hydra/launcher=slurm_cpu").launcher.gpus_per_node == 0


def test_cpu_profile_defaults_fit_the_ci_node(monkeypatch):
    for name in ("VITQUANT_SLURM_GPUS", "VITQUANT_SLURM_CPUS", "VITQUANT_SLURM_MEM_GB", "VITQUANT_SLURM_TIME_MIN"):
        monkeypatch.delenv(name, raising=False)
    launcher = hydra_cfg("hydra/launcher=slurm_cpu").launcher
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb) == (0, 2, 8)
    assert launcher._target_ == "hydra_plugins.vitquant_launchers.SlurmLauncher"


# ---------------------------------------------------------------------------------------------- failed jobs
class FakeJob:
    """What the launcher reads of a submitit job: results(), state, job_id, paths."""

    def __init__(self, tmp_path, job_id: str, result=None, state: str = "COMPLETED", stderr: str | None = None):
        from types import SimpleNamespace

        self.job_id, self.state, self._result = job_id, state, result
        self.paths = SimpleNamespace(stderr=tmp_path / f"{job_id}_log.err", stdout=tmp_path / f"{job_id}_log.out")
        if stderr is not None:
            self.paths.stderr.write_text(stderr)

    def done(self) -> bool:
        return True

    def results(self):
        if isinstance(self._result, BaseException):
            raise self._result
        return [self._result]


def test_each_way_a_job_fails_is_recorded_with_its_error_line(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from hydra_plugins.vitquant_launchers import SlurmLauncher

    launcher = SlurmLauncher()
    launcher.failures = {}
    ok = JobReturn(overrides=["bits=4"], status=JobStatus.COMPLETED, _return_value=71.0)
    raised = JobReturn(overrides=["bits=5"], status=JobStatus.FAILED, _return_value=RuntimeError("CUDA out of memory"))
    jobs = [FakeJob(tmp_path, "7_0", ok), FakeJob(tmp_path, "7_1", raised),
            FakeJob(tmp_path, "7_2", UncompletedJobError("Job 7_2 has not produced any output (state: FAILED)"),
                    "FAILED", "[INFO] start\nerror: w_bits=9 is out of range: use an integer in 2..8\n"),
            FakeJob(tmp_path, "7_3", UncompletedJobError("Job 7_3 has not produced any output"), "CANCELLED",
                    "slurmstepd: error: *** JOB 10 ON vm CANCELLED AT 2026-12-04T23:00:00 ***\n"),
            FakeJob(tmp_path, "7_4", UncompletedJobError("Job 7_4 has not produced any output"), "OUT_OF_MEMORY",
                    "slurmstepd: error: Detected 1 oom_kill event in StepId=11.0.\n"),
            FakeJob(tmp_path, "7_5", FailedJobError("Job 7_5 raised:\nTraceback (most recent call last):\n  x\n"
                                                    "omegaconf.errors.ConfigKeyError: Key 'bitz' is not in struct"),
                    "COMPLETED")]
    returns = [launcher.result(job, n, [f"bits={n}"]) for n, job in enumerate(jobs)]
    assert returns[0] is ok and all(r.status == JobStatus.COMPLETED for r in returns)  # the sweeper goes on
    f = launcher.failures
    assert sorted(f) == [1, 2, 3, 4, 5]
    assert f[1] == {"overrides": "bits=1", "state": "FAILED", "job_id": "7_1",
                    "error": "RuntimeError: CUDA out of memory"}
    assert f[2]["error"] == "error: w_bits=9 is out of range: use an integer in 2..8"
    assert f[3]["state"] == "CANCELLED" and "CANCELLED AT" in f[3]["error"]
    assert f[4]["state"] == "OUT_OF_MEMORY" and "oom_kill" in f[4]["error"]
    assert f[5]["error"].endswith("ConfigKeyError: Key 'bitz' is not in struct")
    summary = launcher.summary(tmp_path, [f"a=1 bits={n}" for n in range(6)]).splitlines()
    assert summary[0].startswith("error: 5 of 6 jobs failed, the others finished "
                                 "(table: python -m vitquant.analysis.report")
    assert summary[2] == "  #2 bits=2: error: w_bits=9 is out of range: use an integer in 2..8"  # a=1 is common
    assert summary[3].startswith("  #3 bits=3: CANCELLED: slurmstepd: error: *** JOB 10")


def test_slurms_own_line_is_waited_for_when_it_lands_after_the_state_change(tmp_path):
    """slurmstepd appends "*** JOB ... CANCELLED ..." a moment after squeue/sacct say CANCELLED; until then the only
    text is submitit's "Error stream produced:" header, which must never stand as the reason."""
    import threading

    from submitit.core.utils import UncompletedJobError

    from vitquant.launch.cells import killed_job_error

    job = FakeJob(tmp_path, "8_1", None, "CANCELLED", "[INFO] calibrating\n")
    late = "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-05T01:00:00 ***\n"
    writer = threading.Timer(1.0, lambda: job.paths.stderr.write_text(job.paths.stderr.read_text() + late))
    writer.start()
    error = UncompletedJobError("Job 8_1 has not produced any output (state: CANCELLED)\nError stream produced:\n"
                                "----------------------------------------\n[INFO] calibrating")
    assert killed_job_error(job, error, wait_s=10.0) == ("CANCELLED", late.strip())
    writer.join()
    state, line = killed_job_error(FakeJob(tmp_path, "8_2", None, "CANCELLED", ""), error, wait_s=0.0)
    assert state == "CANCELLED" and line.startswith("Job 8_1 has not produced any output")


def test_a_job_that_leaves_the_queue_without_a_trace_is_lost_not_waited_for(tmp_path, monkeypatch):
    """A pending array task cancelled on a cluster whose sacct forgets it: submitit would wait forever."""
    from hydra_plugins.vitquant_launchers import SlurmLauncher
    from vitquant.launch import submitit as launcher_module

    class Vanished(FakeJob):
        def done(self) -> bool:
            return False

    checked = []
    monkeypatch.setattr(launcher_module, "in_slurm_queue", lambda job_id: checked.append(job_id) or len(checked) < 3)
    monkeypatch.setattr(launcher_module, "LOST_AFTER_S", 0.0)
    monkeypatch.setattr(launcher_module, "POLL_S", 0.0)
    launcher = SlurmLauncher()
    launcher.failures = {}
    launcher.result(Vanished(tmp_path, "9_2"), 2, ["bits=8"])
    assert checked[:3] == ["9_2"] * 3  # in the queue twice, then out
    assert launcher.failures[2]["state"] == "LOST" and "left the Slurm queue" in launcher.failures[2]["error"]


def test_failure_record_follows_reruns_of_the_sweep(tmp_path):
    from vitquant.launch.cells import FAILED_JOBS, read_failures, update_failures

    update_failures(tmp_path, {}, [0, 1])
    assert not (tmp_path / FAILED_JOBS).exists()  # nothing failed: no record
    update_failures(tmp_path, {1: {"state": "CANCELLED", "error": "x"}, 2: {"state": "FAILED", "error": "y"}}, [0])
    assert sorted(read_failures(tmp_path)) == [1, 2]
    update_failures(tmp_path, {}, [1])  # the same sweep again: cell 1 now finished
    assert read_failures(tmp_path) == {2: {"state": "FAILED", "error": "y"}}
