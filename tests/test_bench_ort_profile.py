"""Per-op-type profile of an ONNX Runtime session and the Amdahl bound of the GEMM share."""
import onnx
import pytest
import torch

from bench.ort_profile import GEMM_OPS, amdahl_bound, gemm_fraction, op_times

pytest.importorskip("onnxruntime")


def test_amdahl_bound():
    assert amdahl_bound(0.5, 4.0) == pytest.approx(1 / (0.5 / 4 + 0.5))
    assert amdahl_bound(1.0, 4.0) == pytest.approx(4.0) and amdahl_bound(0.0, 4.0) == pytest.approx(1.0)


def test_op_times_of_an_exported_vit(tiny_vit, tmp_path):
    from vitquant.export.vit import export_vit
    from vitquant.models.twin import to_quant_twin

    path = tmp_path / "m.onnx"
    onnx.save(export_vit(to_quant_twin(tiny_vit), 32, quantize=False)[0], path)
    times = op_times(path, {"images": torch.randn(2, 3, 32, 32).numpy()}, threads=1)
    assert GEMM_OPS & set(times) and "Softmax" in times and all(t >= 0 for t in times.values())
    assert 0 < gemm_fraction(times) < 1
    assert not list(tmp_path.glob("*profile*")), "the profile file is removed"
