"""Keep freed memory in the process heap while a CPU training loop runs (glibc only).

A reconstruction step allocates and frees the same large activations (tens of MB each at 224 px)
on every iteration. glibc serves such sizes with a fresh ``mmap`` and unmaps them on ``free``, or
trims the heap top back to the kernel, so every step page-faults its working set in again: on
ViT-T at batch 64 that was ~100k minor faults and a fifth of the step's CPU time (system time
plus zeroing pages). Inside ``reuse_heap`` the heap grows in large steps (``M_TOP_PAD``) and is
never trimmed (``M_TRIM_THRESHOLD``): a large block that fits in the heap top is carved from it
instead of mapped, so after the first step the working set stays mapped. Setting either option also
freezes glibc's dynamic mmap threshold where it had risen to, for the rest of the process (mallopt(3):
setting M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD or M_MMAP_MAX disables the adjustment); blocks
above it that fit no free chunk are still mapped for each use. Peak memory is
unchanged (the same tensors are alive at the same time); afterwards the defaults come back and
``malloc_trim`` returns the free heap to the kernel. Elsewhere (other C libraries, CUDA, whose
caching allocator already reuses memory) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch

M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024}  # mallopt(3)
KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 256 * 2**20}


@cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


@contextmanager
def reuse_heap(device: torch.device) -> Iterator[None]:
    """Keep freed memory mapped for the duration of the block (CPU + glibc; no-op otherwise)."""
    libc = glibc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    for option, value in KEEP.items():
        libc.mallopt(option, value)
    try:
        yield
    finally:
        for option, value in DEFAULTS.items():
            libc.mallopt(option, value)
        libc.malloc_trim(0)
