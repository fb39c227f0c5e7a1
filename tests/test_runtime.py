"""Peak memory as metrics.json reports it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitquant.runtime import peak_memory, peak_rss_mb


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_cpu_peak_is_this_process_peak_rss():
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    before = peak_rss_mb()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_rss_mb() >= max(before, rss_now_mb()) and float(x.sum()) > 0
    report = peak_memory(torch.device("cpu"))
    assert set(report) == {"peak_memory_mb", "peak_rss_mb"} and report["peak_memory_mb"] >= rss_now_mb() - 1


def test_a_child_does_not_inherit_its_parents_peak():
    """getrusage's peak survives fork + exec (a child of a 1 GB parent reports ≥ 1 GB); VmHWM does not."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    big = torch.ones(2**30 // 4)  # the parent: +1 GiB resident
    code = "from vitquant.runtime import peak_rss_mb; print(peak_rss_mb())"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert float(out.stdout) < peak_rss_mb() - 512 and float(big[0]) == 1.0
