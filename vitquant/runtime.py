"""Process-level helpers shared by the entry points: seeding, timing, peak memory."""
from __future__ import annotations

import random
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory of this process: CUDA allocator peak, else the CPU resident-set peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t['seconds']`` (wall, CUDA synchronised) and ``t['cpu_seconds']`` (this
    process's CPU time: comparable across runs on a busy shared machine, where wall time is not)."""
    out: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu_start
