"""What every architecture's exporter shares: sites, weights, linear/LayerNorm/MLP layers, attention heads.

An architecture module (``vit``, ``swin``) subclasses ``Exporter`` with its ``check`` (refuse what its
graph does not implement) and its ``build`` (the walk over its modules). The layers it calls here
emit, for a twin layer, the ONNX of its fake-quant forward:

* a uniform site becomes Q/DQ (``sites.site_form``); a float site is emulated (``emulate``) or left
  unquantized, and reported (``ExportReport``);
* a linear layer is a 2-D ``Gemm(DQ(Q(x)), DQ(int8 Wᵀ), DQ(int32 b))`` (leading dimensions flattened
  into rows), which ONNX Runtime fuses into one integer ``QGemm`` with the bias in the kernel; q, k, v
  are three such projections of one quantized input; AIQViT's unmerged low-rank compensation adds
  its float ``(x̂·Aᵀ)·Bᵀ`` beside it, reported in ``float_branches`` (not deployable);
* ``quantize=False`` writes the float model (the FP32 ONNX baseline of the speed benchmark).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from torch import nn

from vitquant.errors import UserError
from vitquant.export.emulate import EMULATORS
from vitquant.export.graph import GraphBuilder, float_input
from vitquant.export.sites import quantizer_name, site_form, weight_codes
from vitquant.nn import LowRankCompensation, QuantLinear
from vitquant.nn.site import QuantSite, iter_sites


@dataclass
class ExportReport:
    """What became integer and what stayed float, by site name."""

    integer: list[str] = field(default_factory=list)
    emulated: dict[str, str] = field(default_factory=dict)   # float ops computing the fake-quant x̂
    unquantized: dict[str, str] = field(default_factory=dict)  # quantizer dropped: no float emulation either
    rounded_zero_points: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # site name -> site kind
    float_branches: dict[str, str] = field(default_factory=dict)  # layer -> float GEMM beside its integer one

    @property
    def deployable(self) -> bool:
        """Every quantized site, and every GEMM, runs in integers."""
        return bool(self.integer) and not self.emulated and not self.unquantized and not self.float_branches

    def summary(self) -> dict:
        def kinds(names):
            return sorted({self.kinds[n] for n in names})
        return {"deployable": self.deployable, "integer_sites": len(self.integer),
                "float_sites": {**self.emulated, **self.unquantized},
                "float_site_kinds": kinds([*self.emulated, *self.unquantized]),
                "emulated_sites": len(self.emulated), "unquantized_sites": len(self.unquantized),
                "rounded_zero_points": len(self.rounded_zero_points), "float_branches": dict(self.float_branches)}


def refuse(problems: list[str]) -> None:
    """One ``UserError`` line naming (up to three of) the configurations the graph does not implement."""
    if problems:
        raise UserError(f"export does not implement: {', '.join(problems[:3])}")


def branch_problem(branch: nn.Module) -> str | None:
    """Why ``project`` cannot emit a linear's output branch, or None: it emits AIQViT's low-rank compensation,
    unmerged and with its rank chosen, and nothing else."""
    if not isinstance(branch, LowRankCompensation):
        return f"{type(branch).__name__} output branch"
    return "low-rank compensation while merged or searching" if branch.merged or branch.searching else None


class Exporter:
    """Shared layer emitters; subclasses implement ``check`` and ``build`` for one architecture."""

    def __init__(self, model: nn.Module, quantize: bool = True) -> None:
        self.check(model)
        refuse([f"{path} {branch_problem(m.branch)}" for path, m in model.named_modules()
                if isinstance(m, QuantLinear) and m.branch is not None and branch_problem(m.branch)])
        self.m, self.quantize = model, quantize
        self.g, self.report = GraphBuilder(), ExportReport()
        self.site_names = {id(s): n for n, s in iter_sites(model)}

    def check(self, model: nn.Module) -> None:
        """Raise ``UserError`` for a model this exporter's graph does not implement."""
        raise NotImplementedError

    def build(self, image_size: int) -> onnx.ModelProto:
        raise NotImplementedError

    def ints(self, values) -> str:
        """A shape / axes / index constant (ONNX wants int64)."""
        return self.g.const(values, "i", np.int64)

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
        initializer (Wᵀ for Gemm)."""
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
    def patch_conv(self, x: str, conv: nn.Conv2d) -> str:
        """The patch-embedding convolution (float input: the image; quantized weight)."""
        inputs = [x, self.weight(conv, transpose=False)]
        if conv.bias is not None:
            inputs.append(self.g.const(conv.bias.detach().numpy()))
        return self.g.op("Conv", inputs, kernel_shape=list(conv.kernel_size), strides=list(conv.stride))

    def linear(self, x: str, layer: QuantLinear, lead: Sequence[int] = ()) -> str:
        """``x̂·Wᵀ + b`` with x̂ = Q_a(x) for ``x`` of shape (B, *lead, C_in) → (B, *lead, C_out).

        The leading dimensions are flattened into rows first, so the input site's Q/DQ sits right at a
        2-D ``Gemm`` (``project``) that ONNX Runtime fuses into one integer ``QGemm``.
        """
        if lead:
            x = self.g.op("Reshape", [x, self.ints([-1, layer.in_features])])
        y = self.project(self.site(x, layer.input_site, 2), layer)
        return self.g.op("Reshape", [y, self.ints([-1, *lead, layer.out_features])]) if lead else y

    def project(self, x: str, layer: QuantLinear, rows: slice = slice(None)) -> str:
        """Output channels ``rows`` of ``layer`` for a quantized 2-D input: one ``Gemm`` with the bias
        inside (``GraphBuilder.gemm``); with AIQViT's unmerged compensation also ``+ (x̂·Aᵀ)·Bᵀ`` in float."""
        bias = None if layer.bias is None else layer.bias.detach().float().numpy()[rows]
        y = self.g.gemm(x, self.weight(layer, transpose=True, rows=rows), bias)
        if layer.branch is not None:
            b, a = (t.detach().float().t().contiguous().numpy() for t in layer.branch.factors())
            low = self.g.op("MatMul", [x, self.g.const(a, "lowrank_a")])
            y = self.g.op("Add", [y, self.g.op("MatMul", [low, self.g.const(b[:, rows], "lowrank_b")])])
            name = self.site_names[id(layer.input_site)].rsplit(".", 1)[0]
            self.report.float_branches[name] = f"low-rank compensation r={layer.branch.rank}"
        return y

    def layer_norm(self, x: str, norm: nn.LayerNorm, rank: int) -> str:
        """LayerNorm over the last axis of a rank-``rank`` tensor, after its ``ln_in`` site."""
        x = self.site(x, getattr(norm, "input_site", None), rank)
        inputs = [x, self.g.const(norm.weight.detach().numpy())]
        if norm.bias is not None:
            inputs.append(self.g.const(norm.bias.detach().numpy()))
        return self.g.op("LayerNormalization", inputs, axis=-1, epsilon=float(norm.eps))

    def mlp(self, x: str, mlp: nn.Module, lead: Sequence[int]) -> str:
        approximate = getattr(mlp.act, "approximate", "none")
        hidden = self.g.op("Gelu", [self.linear(x, mlp.fc1, lead)], approximate=approximate)
        return self.linear(hidden, mlp.fc2, lead)

    def qkv_heads(self, x: str, attn: nn.Module, tokens: int) -> list[str]:
        """(B, N, C) → q, k, v of shape (B, heads, N, head_dim), as timm splits ``qkv(x)``.

        Three projections of one quantized input rather than one qkv GEMM split afterwards: each is
        its own ``Gemm``, so with per-tensor q/k/v sites ONNX Runtime writes their uint8 codes
        straight from the integer GEMM (no float qkv tensor, no float split; uint8 transposes)."""
        g, heads = self.g, attn.num_heads
        x = self.site(g.op("Reshape", [x, self.ints([-1, attn.qkv.in_features])]), attn.qkv.input_site, 2)
        width = attn.qkv.out_features // 3
        return [g.op("Transpose", [g.op("Reshape", [self.project(x, attn.qkv, slice(i * width, (i + 1) * width)),
                                                    self.ints([-1, tokens, heads, width // heads])])],
                     perm=[0, 2, 1, 3]) for i in range(3)]

    def attend(self, scores: str, v: str, attn: nn.Module, tokens: int) -> str:
        """``proj(Q_ps(softmax(scores)) · Q_v(v))`` with heads merged back to (B, N, C)."""
        g = self.g
        probs = self.site(g.op("Softmax", [scores], axis=-1), attn.post_softmax_site, 4)
        out = g.op("Transpose", [g.op("MatMul", [probs, self.site(v, attn.v_site, 4)])], perm=[0, 2, 1, 3])
        out = g.op("Reshape", [out, self.ints([0, tokens, -1])])
        return self.linear(out, attn.proj, [tokens])

    def classifier(self, x: str, head: QuantLinear, image_size: int) -> onnx.ModelProto:
        """``logits = head(x)`` for pooled features ``x`` (B, C), and the finished model."""
        self.g.nodes.append(onnx.helper.make_node("Identity", [self.linear(x, head)], ["logits"]))
        inputs = [float_input("images", ["batch", 3, image_size, image_size])]
        return self.g.model(inputs, [float_input("logits", ["batch", head.out_features])], "vitquant")
