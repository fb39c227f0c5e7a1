"""The CPU a benchmark or a bit-identity check ran on, from ``/proc/cpuinfo``.

Float results move in the last digits between CPUs: oneDNN picks kernels by ISA flags (AMX, VNNI, BF16) that
torch's own dispatch level ("AVX512") does not name. Benchmarks record the CPU with their rows; the golden-file
test keys bit-identity on it.
"""
from __future__ import annotations

import platform
from pathlib import Path

# The ISA extensions oneDNN picks float kernels by, beyond torch's own dispatch level ("AVX2", "AVX512").
KERNEL_ISA_FLAGS = frozenset({"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                              "avx_vnni"})


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


def cpu_name_and_kernel_isa() -> tuple[str, list[str]]:
    """(model name, the sorted :data:`KERNEL_ISA_FLAGS` it has): what a float result's last digits depend on,
    with torch's build and dispatch level."""
    name, flags = cpu_name_and_flags()
    return name, sorted(KERNEL_ISA_FLAGS & flags)
