"""Process-level helpers shared by the entry points: seeding, timing, peak memory."""
from __future__ import annotations

import random
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux.

    ``VmHWM`` belongs to this process's address space, so it starts afresh at ``exec``; the
    ``getrusage`` peak (the fallback elsewhere) keeps the parent's size across fork + exec, which
    would charge a child started from a large process (pytest, a benchmark driver) with its parent.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process where the model ran: the CUDA allocator's peak on a GPU, else the
    peak RSS (``peak_rss_mb``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_memory_mb`` (see there) and ``peak_rss_mb`` (host RSS, also reported on a GPU run, where
    calibration statistics and cached tensors live on the host)."""
    return {"peak_memory_mb": round(peak_memory_mb(device), 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


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
