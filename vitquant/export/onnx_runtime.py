"""ONNX Runtime sessions for exported models, and a module wrapper so tasks can evaluate them."""
from __future__ import annotations

import torch
from torch import nn


def session(path: str, threads: int = 1):
    """A CPU inference session with ORT's full graph optimisations (QDQ → integer-op fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtClassifier(nn.Module):
    """``images -> logits`` through an ONNX Runtime session (for ``task.evaluate``)."""

    def __init__(self, path: str, threads: int = 1) -> None:
        super().__init__()
        self.session = session(path, threads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": images.detach().cpu().numpy()})[0])
