"""DDP through torchrun: process group from the environment, rank-0 helpers.

``torchrun --nproc_per_node=N train.py ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; then
each process joins a process group (NCCL on CUDA, gloo on CPU), uses ``cuda:LOCAL_RANK``, and only
rank 0 logs, evaluates and writes files. Without those variables everything is single-process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when there is one; returns (info, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=world)
    return info, device


def env_rank() -> int:
    """This process's rank as torchrun announces it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
