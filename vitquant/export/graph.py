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
        self.dq_scales: dict[str, tuple[np.ndarray, int | None]] = {}  # DQ output -> (scale, axis)
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
        dq_scale = form.scale * np.float32(dq_factor)
        if dq_factor != 1.0:
            scale = self.const(dq_scale, f"{hint}_dq_scale")
        out = self.op("DequantizeLinear", [codes, scale, zero], f"{hint}_dq", **axis)
        self.dq_scales[out] = (dq_scale, form.axis)
        return out

    def int_weight(self, codes: np.ndarray, form: SiteForm, hint: str, axis: int) -> str:
        """DequantizeLinear of an int8 initializer (``axis``: the per-channel axis of ``codes``)."""
        scale, zero = self.qparams(form, hint)
        w = self.const(codes, f"{hint}_int8", codes.dtype)
        out = self.op("DequantizeLinear", [w, scale, zero], f"{hint}_dq",
                      **({} if form.axis is None else {"axis": axis}))
        self.dq_scales[out] = (form.scale, None if form.axis is None else axis)
        return out

    def gemm(self, x: str, w: str, bias: np.ndarray | None) -> str:
        """``x · W + b`` for a 2-D ``x`` and a (K, N) ``W``, as one ``Gemm``.

        When ``x`` is a per-tensor DQ and ``W`` a DQ per output channel (or per tensor), the bias is
        stored as int32 codes at the accumulator's scale Δ_x·Δ_w (how QDQ graphs carry a bias): ONNX
        Runtime then fuses the group into one integer ``QGemm`` that adds the bias in the kernel
        (and writes uint8 directly when a QuantizeLinear follows), instead of a float ``Add`` pass.
        Rounding the bias to that scale moves it by at most Δ_x·Δ_w / 2, far below an output step.
        """
        inputs = [x, w]
        if bias is not None:
            inputs.append(self.int_bias(bias, x, w) or self.const(bias, "bias"))
        return self.op("Gemm", inputs)

    def int_bias(self, bias: np.ndarray, x: str, w: str) -> str | None:
        """DQ(int32 round(b / (Δ_x·Δ_w))), or None when x or W is not an integer tensor of the right form."""
        if x not in self.dq_scales or w not in self.dq_scales or self.dq_scales[x][1] is not None \
                or self.dq_scales[w][1] not in (None, 1):
            return None
        scale = (self.dq_scales[x][0] * self.dq_scales[w][0]).astype(np.float32)
        if scale.size not in (1, bias.size) or not np.all(scale > 0):
            return None
        codes = np.round(bias / scale)
        if np.abs(codes).max(initial=0) >= 2**31 - 1:
            return None
        axis = {} if scale.ndim == 0 else {"axis": 0}
        return self.op("DequantizeLinear", [self.const(codes, "bias_int32", np.int32), self.const(scale, "bias_scale"),
                                            self.const(np.zeros(scale.shape), "bias_zero", np.int32)],
                       "bias_dq", **axis)

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
