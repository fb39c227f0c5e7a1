"""The CPU a benchmark or a bit-identity check ran on, from ``/proc/cpuinfo``.

Float results move in the last digits between CPUs: oneDNN picks kernels by ISA flags (AMX, VNNI, BF16) that
torch's own dispatch level ("AVX512") does not name. Benchmarks record the CPU with their rows; the golden-file
test keys bit-identity on it.
"""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_name_and_flags() -> tuple[str, set[str]]:
    """(model name, ISA flags) of the first CPU; ``platform.processor()`` and no flags where there is no cpuinfo."""
    name, flags = "", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine() or "unknown", flags
