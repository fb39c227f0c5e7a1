"""Where an ONNX Runtime session spends its time, by operator type, and the Amdahl bound it implies.

ORT's profiler (``SessionOptions.enable_profiling``) records every kernel of a run after the graph
optimisations (so the op types are the fused ones: ``QGemm``, ``MatMulIntegerToFloat``, ...). Summed
by op type, the share ``g`` of the FP32 graph's time spent in GEMMs bounds what an int8 GEMM that is
``r`` times faster can give the whole model (Amdahl)::

    speedup ≤ 1 / (g / r + (1 − g))

when every other op (LayerNorm, GELU, Softmax, residual adds, transposes, the patch convolution,
which reads the float image) costs what it costs in FP32. The INT8 graph adds QuantizeLinear passes
on top, so its measured speedup is lower still.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from vitquant.export.onnx_runtime import session_options

GEMM_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul",
                      "QGemm", "DynamicQuantizeMatMul"})


def op_times(path: str | Path, feed: dict, threads: int, runs: int = 2) -> dict[str, float]:
    """Mean milliseconds per run spent in each op type, over ``runs`` profiled runs after a warm-up."""
    import onnxruntime as ort

    options = session_options(threads)  # the sessions users and bench.speed run
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(path).with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, feed)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    os.unlink(profile)
    first_timed = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1]  # after the warm-up
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            totals[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def gemm_fraction(times: dict[str, float]) -> float:
    """Share of the summed kernel time spent in GEMM ops."""
    total = sum(times.values())
    return sum(t for op, t in times.items() if op in GEMM_OPS) / total if total else 0.0


def amdahl_bound(fp32_gemm_fraction: float, gemm_ratio: float) -> float:
    """Whole-model speedup if only the GEMMs (share ``g`` of FP32 time) ran ``gemm_ratio`` times faster."""
    g = fp32_gemm_fraction
    return 1.0 / (g / gemm_ratio + (1.0 - g))
