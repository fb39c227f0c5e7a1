"""ONNX graph of a ViT/DeiT quant twin (timm ``VisionTransformer``), site by site.

Each uniform site becomes Q/DQ (``sites.site_form``); each linear layer is a 2-D
``Gemm(DQ(Q(x)), DQ(int8 Wᵀ), DQ(int32 b))`` (tokens flattened into rows), which ONNX Runtime fuses
into one integer ``QGemm`` with the bias in the kernel; the attention products are ``MatMul`` of
Q/DQ operands (``MatMulIntegerToFloat`` / ``QLinearMatMul``).
Float sites (no integer form) are emulated (``emulate``) or left unquantized, and reported.
``quantize=False`` writes the float model (the FP32 ONNX baseline of the speed benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitquant.errors import UserError
from vitquant.export.emulate import EMULATORS
from vitquant.export.graph import GraphBuilder, float_input
from vitquant.export.sites import quantizer_name, site_form, weight_codes
from vitquant.nn import QuantAttention, QuantLinear
from vitquant.nn.site import QuantSite, iter_sites


@dataclass
class ExportReport:
    """What became integer and what stayed float, by site name."""

    integer: list[str] = field(default_factory=list)
    emulated: dict[str, str] = field(default_factory=dict)   # float ops computing the fake-quant x̂
    unquantized: dict[str, str] = field(default_factory=dict)  # quantizer dropped: no float emulation either
    rounded_zero_points: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # site name -> site kind

    @property
    def deployable(self) -> bool:
        """Every quantized site runs in integers."""
        return bool(self.integer) and not self.emulated and not self.unquantized

    def summary(self) -> dict:
        def kinds(names):
            return sorted({self.kinds[n] for n in names})
        return {"deployable": self.deployable, "integer_sites": len(self.integer),
                "float_sites": {**self.emulated, **self.unquantized},
                "float_site_kinds": kinds([*self.emulated, *self.unquantized]),
                "emulated_sites": len(self.emulated), "unquantized_sites": len(self.unquantized),
                "rounded_zero_points": len(self.rounded_zero_points)}


class ViTExporter:
    """Walks a ViT twin and emits its graph (module docstring)."""

    def __init__(self, model: nn.Module, quantize: bool = True) -> None:
        check_exportable(model)
        self.m, self.quantize = model, quantize
        self.g, self.report = GraphBuilder(), ExportReport()
        self.site_names = {id(s): n for n, s in iter_sites(model)}

    # ------------------------------------------------------------------ sites
    def site(self, x: str, site: QuantSite | None, rank: int, dq_factor: float | None = None) -> str:
        """``x`` through the site's quantizer; with ``dq_factor``, returns None unless the factor could
        be folded into an integer site's de-quantization scale (see ``GraphBuilder.fake_quant``)."""
        active = self.quantize and site is not None and site.quantizer is not None and site.enabled
        form = site_form(site, rank) if active else None
        if dq_factor is not None and form is None:
            return None
        if not active:
            return x
        name = self.site_names[id(site)]
        self.report.kinds[name] = site.kind
        if form is not None:
            self.report.integer.append(name)
            if form.rounded_zero:
                self.report.rounded_zero_points.append(name)
            return self.g.fake_quant(x, form, name.replace(".", "_"), dq_factor or 1.0)
        emulate = EMULATORS.get(type(site.quantizer))
        if emulate is None:
            self.report.unquantized[name] = quantizer_name(site)
            return x
        self.report.emulated[name] = quantizer_name(site)
        return emulate(self.g, x, site.quantizer, rank, name.replace(".", "_"))

    def weight(self, layer: nn.Module, transpose: bool, rows: slice = slice(None)) -> str:
        """The layer's weight (its output channels ``rows``) as DQ(int8 initializer), or a float
        initializer (Wᵀ for MatMul/Gemm)."""
        w, name = layer.weight.detach().float(), self.site_names[id(layer.weight_site)]
        site, hint = layer.weight_site, name.replace(".", "_")
        form = site_form(site, w.dim(), weight=True) if self.quantize and site.quantizer is not None \
            and site.enabled else None
        if form is None:
            if self.quantize and site.quantizer is not None and site.enabled:
                w = site(layer.weight).detach().float()  # non-uniform weights: their x̂, in float
                self.report.emulated[name] = quantizer_name(site)
                self.report.kinds[name] = site.kind
            w = w[rows]
            value = w.t().contiguous() if transpose else w
            return self.g.const(value.numpy(), hint)
        if name not in self.report.integer:
            self.report.integer.append(name)
        codes, form = weight_codes(w, form)[rows], form.rows(rows)
        return self.g.int_weight(codes.T.copy() if transpose else codes, form, hint, axis=1 if transpose else 0)

    # ------------------------------------------------------------------ layers
    def linear(self, x: str, layer: QuantLinear, tokens: int | None = None) -> str:
        """``layer`` of ``x`` (B, C), or of ``x`` (B, tokens, C) when ``tokens`` is given: the tokens are
        flattened into rows before the input site, so its Q/DQ sits right at the 2-D ``Gemm``."""
        if tokens is not None:
            x = self.g.op("Reshape", [x, self.g.const([-1, layer.in_features], dtype=np.int64)])
        y = self.project(self.site(x, layer.input_site, 2), layer)
        if tokens is None:
            return y
        return self.g.op("Reshape", [y, self.g.const([-1, tokens, layer.out_features], dtype=np.int64)])

    def project(self, x: str, layer: QuantLinear, rows: slice = slice(None)) -> str:
        """Output channels ``rows`` of ``layer`` for a quantized 2-D input: one ``Gemm`` with the bias
        inside (``GraphBuilder.gemm``)."""
        bias = None if layer.bias is None else layer.bias.detach().float().numpy()[rows]
        return self.g.gemm(x, self.weight(layer, transpose=True, rows=rows), bias)

    def layer_norm(self, x: str, norm: nn.LayerNorm) -> str:
        x = self.site(x, getattr(norm, "input_site", None), 3)
        return self.g.op("LayerNormalization", [x, self.g.const(norm.weight.detach().numpy()),
                                                self.g.const(norm.bias.detach().numpy())],
                         axis=-1, epsilon=float(norm.eps))

    def attention(self, x: str, attn: QuantAttention, tokens: int) -> str:
        """timm's attention with q, k, v as three projections of one quantized input (not one qkv
        GEMM split afterwards): each is its own Gemm, so with per-tensor q/k/v sites ONNX Runtime
        writes their uint8 codes straight from the integer GEMM, and no float split/transpose runs."""
        g, heads, dim = self.g, attn.num_heads, attn.head_dim
        x = self.site(g.op("Reshape", [x, g.const([-1, attn.qkv.in_features], dtype=np.int64)]),
                      attn.qkv.input_site, 2)
        q, k, v = (g.op("Transpose", [g.op("Reshape", [
            self.project(x, attn.qkv, slice(i * heads * dim, (i + 1) * heads * dim)),
            g.const([-1, tokens, heads, dim], dtype=np.int64)])], perm=[0, 2, 1, 3]) for i in range(3))
        q, v = self.site(q, attn.q_site, 4), self.site(v, attn.v_site, 4)
        k_scaled = self.site(k, attn.k_site, 4, dq_factor=attn.scale)  # d^(-1/2) folded into k's scale
        k = k_scaled or self.site(k, attn.k_site, 4)
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        if k_scaled is None:
            scores = g.op("Mul", [scores, g.const(attn.scale)])
        scores = self.site(scores, attn.softmax_in_site, 4)
        probs = self.site(g.op("Softmax", [scores], axis=-1), attn.post_softmax_site, 4)
        out = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        out = g.op("Reshape", [out, g.const([0, tokens, heads * dim], dtype=np.int64)])
        return self.linear(out, attn.proj, tokens)

    def mlp(self, x: str, mlp: nn.Module, tokens: int) -> str:
        approximate = getattr(mlp.act, "approximate", "none")
        hidden = self.g.op("Gelu", [self.linear(x, mlp.fc1, tokens)], approximate=approximate)
        return self.linear(hidden, mlp.fc2, tokens)

    def build(self, image_size: int) -> onnx.ModelProto:
        m, g = self.m, self.g
        conv = m.patch_embed.proj
        x = g.op("Conv", ["images", self.weight(conv, transpose=False),
                          g.const(conv.bias.detach().numpy())],
                 kernel_shape=list(conv.kernel_size), strides=list(conv.stride))
        flat = g.op("Reshape", [x, g.const([0, conv.out_channels, -1], dtype=np.int64)])
        x = g.op("Transpose", [flat], perm=[0, 2, 1])  # (B, C, H·W) -> (B, tokens, C)
        tokens = m.patch_embed.num_patches + m.num_prefix_tokens
        if m.cls_token is not None:
            batch = g.op("Slice", [g.op("Shape", ["images"]), g.const([0], dtype=np.int64),
                                   g.const([1], dtype=np.int64)])
            cls = g.op("Expand", [g.const(m.cls_token.detach().numpy()),
                                  g.op("Concat", [batch, g.const([1, conv.out_channels], dtype=np.int64)], axis=0)])
            x = g.op("Concat", [cls, x], axis=1)
        x = g.op("Add", [x, g.const(m.pos_embed.detach().numpy())])
        for block in m.blocks:
            x = g.op("Add", [x, self.attention(self.layer_norm(x, block.norm1), block.attn, tokens)])
            x = g.op("Add", [x, self.mlp(self.layer_norm(x, block.norm2), block.mlp, tokens)])
        x = self.layer_norm(x, m.norm)
        if m.global_pool == "avg":
            x = g.op("ReduceMean", [g.op("Slice", [x, g.const([m.num_prefix_tokens], dtype=np.int64),
                                                   g.const([tokens], dtype=np.int64),
                                                   g.const([1], dtype=np.int64)]),
                                    g.const([1], dtype=np.int64)], keepdims=0)
            x = self.layer_norm(x, m.fc_norm) if isinstance(m.fc_norm, nn.LayerNorm) else x
        else:
            x = g.op("Gather", [x, g.const(0, dtype=np.int64)], axis=1)
        g.nodes.append(onnx.helper.make_node("Identity", [self.linear(x, m.head)], ["logits"]))
        inputs = [float_input("images", ["batch", 3, image_size, image_size])]
        return g.model(inputs, [float_input("logits", ["batch", m.num_classes])], "vitquant")


def check_exportable(model: nn.Module) -> None:
    """Refuse what the ViT graph does not implement, with the reason."""
    if not isinstance(model, VisionTransformer):
        raise UserError(f"export supports ViT/DeiT (timm VisionTransformer) models, not {type(model).__name__}")
    problems = []
    if model.global_pool not in ("token", "avg"):
        problems.append(f"global_pool={model.global_pool!r}")
    if getattr(model, "dist_token", None) is not None or model.num_reg_tokens:
        problems.append("distillation/register tokens")
    if not model.has_class_token and model.global_pool == "token":
        problems.append("token pooling without class token")
    for i, block in enumerate(model.blocks):
        if not isinstance(block.ls1, nn.Identity) or not isinstance(block.ls2, nn.Identity):
            problems.append(f"blocks.{i} LayerScale")
        if not isinstance(block.attn, QuantAttention):
            problems.append(f"blocks.{i}.attn is not a quant twin")
    if not isinstance(model.norm_pre, nn.Identity) or not isinstance(model.patch_embed.norm, nn.Identity):
        problems.append("pre-norm / patch-embed norm")
    if problems:
        raise UserError(f"export does not implement: {', '.join(problems[:3])}")


@torch.no_grad()
def export_vit(model: nn.Module, image_size: int, quantize: bool = True) -> tuple[onnx.ModelProto, ExportReport]:
    """The ONNX model of a ViT twin and what became integer / stayed float."""
    exporter = ViTExporter(model.eval(), quantize)
    return exporter.build(image_size), exporter.report
