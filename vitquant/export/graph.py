"""A small ONNX graph builder: named initializers, nodes, and the quantization patterns we emit.

Weights are stored as int8 initializers behind a DequantizeLinear (not float + Q/DQ), so the file is
~4× smaller and ONNX Runtime's QDQ fusions see ``DQ(int8 W)`` and ``DQ(Q(x))`` on both MatMul inputs
(→ MatMulInteger/QLinearMatMul, int8 GEMM).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitquant.export.sites import SiteForm, to_tensor_layout

OPSET = 21  # per-axis Q/DQ needs ≥ 13; Gelu and LayerNormalization are native from 20 / 17


class GraphBuilder:
    """Accumulates nodes and initializers; ``name`` makes unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs) -> str:
        outputs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # ------------------------------------------------------------------ quantization
    def qparams(self, form: SiteForm, hint: str) -> tuple[str, str]:
        zero_type = np.int8 if form.signed else np.uint8
        return self.const(form.scale, f"{hint}_scale"), self.const(form.zero, f"{hint}_zero", zero_type)

    def fake_quant(self, x: str, form: SiteForm, hint: str, dq_factor: float = 1.0) -> str:
        """x → QuantizeLinear → (Clip on the codes below 8 bits) → DequantizeLinear.

        ``dq_factor`` multiplies the de-quantization scale only: a constant factor that follows a
        product (attention's d^(-1/2)) is folded into its operand's scale instead of costing a pass.
        """
        scale, zero = self.qparams(form, hint)
        axis = {} if form.axis is None else {"axis": form.axis}
        codes = self.op("QuantizeLinear", [x, scale, zero], f"{hint}_q", **axis)
        if not form.full_range:
            code_type = np.int8 if form.signed else np.uint8
            codes = self.op("Clip", [codes, self.const(form.code_range[0], "lo", code_type),
                                     self.const(form.code_range[1], "hi", code_type)], f"{hint}_clip")
        if dq_factor != 1.0:
            scale = self.const(form.scale * np.float32(dq_factor), f"{hint}_dq_scale")
        return self.op("DequantizeLinear", [codes, scale, zero], f"{hint}_dq", **axis)

    def int_weight(self, codes: np.ndarray, form: SiteForm, hint: str, axis: int) -> str:
        """DequantizeLinear of an int8 initializer (``axis``: the per-channel axis of ``codes``)."""
        scale, zero = self.qparams(form, hint)
        w = self.const(codes, f"{hint}_int8", codes.dtype)
        return self.op("DequantizeLinear", [w, scale, zero], f"{hint}_dq",
                       **({} if form.axis is None else {"axis": axis}))

    def broadcast_const(self, values: np.ndarray, axis: int | None, rank: int, hint: str) -> str:
        return self.const(to_tensor_layout(np.asarray(values, np.float32), axis, rank), hint)

    # ------------------------------------------------------------------ model
    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="vitquant")
        model.ir_version = min(model.ir_version, 10)  # readable by the ONNX Runtime we pin
        onnx.checker.check_model(model)
        return model


def float_input(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


LN2 = math.log(2.0)
