"""DDP: one process group from torchrun's or Slurm's variables, rank-0 helpers.

Where the ranks come from, first match wins:

- torchrun (``torchrun --nproc_per_node=N train.py ...``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``.
- a Slurm job step with several tasks (``srun``, which is how submitit starts the tasks of
  ``train.py -m hydra/launcher=slurm hydra.launcher.tasks_per_node=N``): ``SLURM_PROCID`` (rank),
  ``SLURM_STEP_NUM_TASKS`` (world), ``SLURM_LOCALID`` (local rank), the first host of
  ``SLURM_STEP_NODELIST`` as the address and a port derived from the job id and its restart count
  (each requeue of the job gets a fresh port). ``SLURM_STEP_NUM_TASKS`` exists only inside a job
  step: a batch script or an ``salloc`` shell that runs ``python train.py`` directly is one process
  whatever ``--ntasks`` says, so it never waits for ranks that will not come.

Each process then joins the group (NCCL on CUDA, gloo on CPU), uses its own GPU (``cuda:LOCAL_RANK``)
and only rank 0 logs, evaluates and writes files. A multi-task job that cannot form the group stops
with a :class:`UserError` (one ``error:`` line): never several independent trainings in one folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vitquant.errors import UserError

log = logging.getLogger("vitquant")
PORT_RANGE = (20000, 60000)  # MASTER_PORT derived from the Slurm job id falls in [20000, 60000)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


@dataclass(frozen=True)
class Rendezvous:
    """Who this process is in the group and where the group meets (``source``: torchrun | slurm)."""
    info: DistInfo
    local_world: int
    master_addr: str
    master_port: int
    source: str


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[07-09,12],cpu01`` → ``gpu07``; ``node1,node2`` → ``node1``."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not match:
        raise UserError(f"SLURM_STEP_NODELIST={nodelist!r} is not a Slurm node list; set MASTER_ADDR to rank 0's host")
    return match.group(1) + (match.group(2) or "")


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node ``node`` from ``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1`` = 2, 2, 2, 1)."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * int(repeat.rstrip(")") or 1)
    return counts[node] if node < len(counts) else counts[-1]


def slurm_port(job_id: str, restarts: str) -> int:
    """A port every task of one run of the job agrees on; a requeued run (restart count + 1) gets another."""
    lo, hi = PORT_RANGE
    return lo + zlib.crc32(f"{job_id}.{restarts}".encode()) % (hi - lo)


def discover(env: Mapping[str, str] | None = None) -> Rendezvous | None:
    """The group this process belongs to, or None for a single process."""
    env = os.environ if env is None else env
    try:
        if "WORLD_SIZE" in env:  # torchrun (or a user who set the variables himself)
            world = int(env["WORLD_SIZE"])
            if world <= 1:
                return None
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
            info = DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
            return Rendezvous(info, local_world, env.get("MASTER_ADDR", "127.0.0.1"),
                              int(env.get("MASTER_PORT", "29500")), "torchrun")
        world = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
        if world <= 1:
            return None
        info = DistInfo(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", "0")))
        local_world = tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", str(world)), int(env.get("SLURM_NODEID", "0")))
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
        port = int(env.get("MASTER_PORT") or slurm_port(env["SLURM_JOB_ID"], env.get("SLURM_RESTART_COUNT", "0")))
        return Rendezvous(info, local_world, addr, port, "slurm")
    except (KeyError, ValueError) as e:
        raise UserError(f"this process is one of several tasks but its rank is incomplete ({type(e).__name__}: {e}); "
                        "launch with torchrun or srun (hydra/launcher=slurm), which set RANK/SLURM_PROCID") from None


def task_device(device: torch.device, rdv: Rendezvous, env: Mapping[str, str] | None = None) -> torch.device:
    """One GPU per task: ``cuda:LOCAL_RANK``, or the one GPU a task sees when Slurm bound one GPU to each task
    (the job holds at least as many GPUs on this node, ``SLURM_JOB_GPUS``, as it has tasks there)."""
    if device.type != "cuda":
        return device
    env = os.environ if env is None else env
    visible = torch.cuda.device_count()
    if visible >= rdv.local_world:
        return torch.device("cuda", rdv.info.local_rank)
    allocated = len((env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS") or "").split(","))
    if visible == 1 and rdv.source == "slurm" and allocated >= rdv.local_world:
        return torch.device("cuda", 0)
    raise UserError(f"{rdv.local_world} tasks on this node see {visible} GPUs: give each task its own GPU "
                    f"(hydra.launcher.gpus_per_node={rdv.local_world} with hydra.launcher.tasks_per_node="
                    f"{rdv.local_world}, or torchrun --nproc_per_node=<number of GPUs>)")


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when there is one; returns (info, this process's device)."""
    rdv = discover()
    if rdv is None:
        return DistInfo(), device
    device = task_device(device, rdv)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun's agent already hosts the store (env://); under Slurm rank 0 hosts it (tcp://)
        init = "env://" if rdv.source == "torchrun" else f"tcp://{rdv.master_addr}:{rdv.master_port}"
        try:
            dist.init_process_group(backend, init_method=init, rank=rdv.info.rank, world_size=rdv.info.world)
        except (RuntimeError, OSError) as e:  # DistNetworkError, DistStoreError are RuntimeErrors
            raise UserError(f"rank {rdv.info.rank} of {rdv.info.world} ({rdv.source}) could not join the {backend} "
                            f"process group at {rdv.master_addr}:{rdv.master_port}: {e}; free that port or set "
                            "MASTER_ADDR/MASTER_PORT") from None
    return rdv.info, device


def require_one_process(script: str) -> None:
    """Scripts without DDP (calibrate.py) stop when started as several tasks: N copies would write one folder."""
    rdv = discover()
    if rdv is not None:
        raise UserError(f"{script} runs in one process but was started as {rdv.info.world} tasks ({rdv.source}); "
                        "use hydra.launcher.tasks_per_node=1 (or no torchrun)")


def env_rank() -> int:
    """This process's rank (0 for a single process), before the group exists."""
    rdv = discover()
    return 0 if rdv is None else rdv.info.rank


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(info: DistInfo, flag: bool) -> bool:
    """``flag`` on every rank (an all-reduce of one number; ``flag`` itself without a group)."""
    if not info.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def gather(info: DistInfo, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a group)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def any_true(info: DistInfo, flag: bool) -> bool:
    """``flag`` on at least one rank."""
    return not all_true(info, not flag)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict: every tensor's key and bytes, in key order (other entries skipped)."""
    sha = hashlib.sha256()
    for key, value in state.items():
        if torch.is_tensor(value):
            sha.update(key.encode())
            sha.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def weights_digest(model: torch.nn.Module, info: DistInfo) -> str:
    """``state_digest`` of the model; with a group, every rank's digest must equal rank 0's (DDP keeps
    replicas identical: a difference is a bug, not bad input)."""
    digest = state_digest(model.state_dict())
    if info.enabled:
        digests = gather(info, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: weight digests per rank {digests}")
        log.info("rank %d/%d: weights sha256 %s, identical on all ranks", info.rank, info.world, digest)
    return digest


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
