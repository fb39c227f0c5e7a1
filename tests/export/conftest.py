"""Export test fixtures: run an exported model in ONNX Runtime."""
import numpy as np
import pytest
import torch


@pytest.fixture
def onnx_logits(tmp_path):
    """``run(onnx_model, images) -> logits`` through an ONNX Runtime session (skips without onnxruntime)."""
    pytest.importorskip("onnxruntime")
    import onnx

    from vitquant.export.onnx_runtime import session

    def run(model, x: torch.Tensor) -> np.ndarray:
        path = tmp_path / "m.onnx"
        onnx.save(model, path)
        return session(str(path)).run(None, {"images": x.numpy()})[0]

    return run


@pytest.fixture
def logit_step():
    """``step(q)``: the logit change when every element of the classifier input is one quantization step
    off, Δ_in · max_k ‖W_k‖₁. Integer accumulation (ORT) and float accumulation (fake quant) round
    differently, so codes at rounding ties may flip by one step in the layers before the head."""
    def step(q) -> float:
        head = q.get_classifier()
        return float(head.input_site.quantizer.scale.max() * head.weight.detach().abs().sum(1).max())

    return step
