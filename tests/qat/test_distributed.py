"""Rank discovery: torchrun's variables, then a Slurm job step's (srun / submitit); one error line when a
multi-task job cannot form its group."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_qat import train_args

from vitquant.errors import UserError
from vitquant.qat.distributed import (
    PORT_RANGE,
    DistInfo,
    discover,
    env_rank,
    first_host,
    require_one_process,
    slurm_port,
    task_device,
    tasks_on_node,
)

REPO = Path(__file__).resolve().parents[2]
# What srun sets for task 1 of `tasks_per_node=2` (as seen on the CI cluster), plus what a job always has
SLURM_STEP = {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "vm", "SLURM_STEP_NODELIST": "vm", "SLURM_NTASKS": "2",
              "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_PROCID": "1",
              "SLURM_LOCALID": "1", "SLURM_NODEID": "0"}


def test_no_variables_is_one_process():
    assert discover({}) is None


def test_torchrun_variables_win():
    rdv = discover({**SLURM_STEP, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert (rdv.info, rdv.local_world, rdv.master_addr, rdv.master_port, rdv.source) == (
        DistInfo(3, 4, 1), 2, "10.0.0.1", 29400, "torchrun")
    assert discover({"RANK": "0", "WORLD_SIZE": "1"}) is None


def test_slurm_job_step_gives_rank_world_and_a_rendezvous():
    rdv = discover(SLURM_STEP)
    assert (rdv.info, rdv.local_world, rdv.master_addr, rdv.source) == (DistInfo(1, 2, 1), 2, "vm", "slurm")
    assert rdv.master_port == slurm_port("41", "0") and PORT_RANGE[0] <= rdv.master_port < PORT_RANGE[1]
    assert discover({**SLURM_STEP, "SLURM_PROCID": "0"}).master_port == rdv.master_port  # every task agrees
    requeued = discover({**SLURM_STEP, "SLURM_RESTART_COUNT": "1"})
    assert requeued.master_port != rdv.master_port  # a fresh port for the requeued run
    assert discover({**SLURM_STEP, "MASTER_ADDR": "h0", "MASTER_PORT": "12345"}).master_port == 12345


def test_multi_node_step():
    rdv = discover({**SLURM_STEP, "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_NUM_TASKS": "8",
                    "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_PROCID": "6", "SLURM_LOCALID": "2",
                    "SLURM_NODEID": "1"})
    assert (rdv.info, rdv.local_world, rdv.master_addr) == (DistInfo(6, 8, 2), 4, "gpu07")


def test_batch_script_or_salloc_shell_is_one_process():
    """``sbatch -n2`` / ``salloc -n2`` then plain ``python train.py``: SLURM_NTASKS=2 but no job step."""
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")} | {"SLURM_PROCID": "0"}
    assert discover(batch) is None


def test_incomplete_step_variables_are_one_user_error():
    with pytest.raises(UserError, match="rank is incomplete"):
        discover({k: v for k, v in SLURM_STEP.items() if k != "SLURM_PROCID"})


def test_env_rank(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", *SLURM_STEP):
        monkeypatch.delenv(key, raising=False)
    assert env_rank() == 0
    for key, value in SLURM_STEP.items():
        monkeypatch.setenv(key, value)
    assert env_rank() == 1


@pytest.mark.parametrize("nodelist,host", [("vm", "vm"), ("gpu[07-09,12]", "gpu07"), ("a1,a2", "a1"),
                                           ("n[3,5],m1", "n3"), ("rack1-n[001-004]", "rack1-n001")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_tasks_on_node():
    assert [tasks_on_node("2(x3),1", n) for n in range(4)] == [2, 2, 2, 1]
    assert tasks_on_node("4", 0) == 4


def test_one_gpu_per_task(monkeypatch):
    rdv = discover(SLURM_STEP)
    assert task_device(torch.device("cpu"), rdv) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert task_device(torch.device("cuda"), rdv) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    bound = {"SLURM_JOB_GPUS": "0,1"}  # Slurm bound one of the job's 2 GPUs to each task
    assert task_device(torch.device("cuda"), rdv, bound) == torch.device("cuda", 0)
    with pytest.raises(UserError, match="2 tasks on this node see 1 GPUs"):  # both tasks on one GPU
        task_device(torch.device("cuda"), rdv, {"SLURM_JOB_GPUS": "0"})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    four = discover({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "4"})
    with pytest.raises(UserError, match="gpus_per_node=4"):
        task_device(torch.device("cuda"), four, {})


def test_calibrate_refuses_several_tasks(monkeypatch):
    for key, value in SLURM_STEP.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="calibrate.py runs in one process but was started as 2 tasks"):
        require_one_process("calibrate.py")


def test_task_that_cannot_join_its_group_stops_with_one_error_line(image_folder, tmp_path):
    """Rank 0 of a 2-task step whose rendezvous port is taken: one ``error:`` line, exit 2, no run folder."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**SLURM_STEP, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(busy.getsockname()[1]), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
               "PATH": "/usr/bin:/bin"}
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "train.py", *train_args(image_folder), f"hydra.run.dir={out}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 (slurm) could not join the gloo"), lines
    assert not out.exists()


def _ddp_run(rank: int, cfg, port: int, stop_after: int | None) -> None:
    import os

    from vitquant.pipelines.train import run_training
    from vitquant.qat.loop import TrainingStopped

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if stop_after is not None:
        cfg.qat.stop_after_steps = stop_after
    try:
        run_training(cfg)
    except TrainingStopped:
        pass


def _ddp(cfg, stop_after: int | None = None) -> None:
    import multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [mp.get_context("fork").Process(target=_ddp_run, args=(r, cfg, port, stop_after)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]


def test_ddp_kill_and_resume_equals_an_uninterrupted_ddp_run(image_folder, tmp_path):
    """Each rank draws its own random numbers (drop path; only rank 0's evaluation loaders draw from the global
    generator), so each rank must resume with its own RNG state: killed mid-epoch 2 after an evaluation."""
    from omegaconf import open_dict
    from tiny_qat import train_config_factory

    from vitquant.io.quantized_checkpoint import read_quantized

    make = train_config_factory(image_folder, tmp_path)
    options = ("qat.batch_size=2", "qat.checkpoint_every_steps=3")  # 4 steps per epoch and rank
    _ddp(make(*options, out="straight"))
    killed = make(*options, out="killed")
    with open_dict(killed):
        _ddp(killed, stop_after=7)  # last checkpoint at step 6 (epoch 2, batch 2)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    _ddp(killed)
    _, a, _ = read_quantized(tmp_path / "straight" / "quantized.pt")
    _, b, _ = read_quantized(tmp_path / "killed" / "quantized.pt")
    assert [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])] == []
