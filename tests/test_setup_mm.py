"""``scripts/setup_mm.sh``'s choice of CUDA ops for a source build of mmcv.

An ``nvcc`` on a machine without a GPU (CPU CI images ship one) and without ``TORCH_CUDA_ARCH_LIST``
must give a CPU-ops build: asking torch's extension builder for CUDA there fails (no architecture).
The function is taken from the script itself, so the test follows its edits.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO


def want_cuda(tmp_path, *, nvcc: bool, **env: str) -> str:
    script = (REPO / "scripts" / "setup_mm.sh").read_text()
    function = re.search(r"^want_cuda\(\) \{\n.*?^\}\n", script, flags=re.S | re.M).group(0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvcc"
    if nvcc:
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    elif fake.exists():
        fake.unlink()
    path = f"{bin_dir}:/usr/bin:/bin"  # no system nvcc (some CPU images have one in /usr/local/bin)
    clean = {k: v for k, v in os.environ.items() if k not in ("MM_CUDA", "TORCH_CUDA_ARCH_LIST")}
    proc = subprocess.run(["bash", "-c", f"say() {{ echo \"setup-mm: $*\" >&2; }}\n{function}\nwant_cuda"],
                          capture_output=True, text=True, env={**clean, "PATH": path, "PY": sys.executable, **env})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())
    return proc.stdout.strip()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's choice")
def test_cuda_ops_only_with_nvcc_and_a_target_architecture(tmp_path):
    assert want_cuda(tmp_path, nvcc=False) == "0"
    assert want_cuda(tmp_path, nvcc=True) == "0"  # nvcc but no GPU and no arch list: CPU ops
    assert want_cuda(tmp_path, nvcc=True, TORCH_CUDA_ARCH_LIST="9.0") == "1"
    assert want_cuda(tmp_path, nvcc=False, MM_CUDA="1") == "1"
    assert want_cuda(tmp_path, nvcc=True, TORCH_CUDA_ARCH_LIST="9.0", MM_CUDA="0") == "0"


def test_a_bad_mm_cuda_is_one_error_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"^setup-mm: error: MM_CUDA=yes: use 0 \(CPU ops\) or 1 \(CUDA ops\)$"):
        want_cuda(tmp_path, nvcc=True, MM_CUDA="yes")
