"""ONNX Runtime sessions for exported models, and a module wrapper so tasks can evaluate them."""
from __future__ import annotations

import torch
from torch import nn


def session_options(threads: int = 1):
    """CPU session options: ORT's full graph optimisations (QDQ → integer-op fusion), exact integer GEMMs.

    On x86 without VNNI (AVX2, AVX-512F), ORT's default U8S8 GEMM multiplies with ``vpmaddubsw``, which adds
    two u8·s8 products into a saturating int16: 255·127·2 = 64770 > 32767, so 8-bit weights and activations
    overflow and the logits drift by more than a quantization step (0.037 vs a step of 0.015 on a tiny ViT on
    an AVX2-only EPYC). ``session.x64quantprecision`` makes ORT rewrite the s8 weights to u8 and use its exact
    U8U8 kernels on those CPUs only; VNNI/AMX CPUs keep the fast path, and the model file is unchanged.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def session(path: str, threads: int = 1):
    """A CPU inference session of ``session_options``."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class OrtClassifier(nn.Module):
    """``images -> logits`` through an ONNX Runtime session (for ``task.evaluate``)."""

    def __init__(self, path: str, threads: int = 1) -> None:
        super().__init__()
        self.session = session(path, threads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": images.detach().cpu().numpy()})[0])
