"""ONNX graph of a ViT/DeiT quant twin (timm ``VisionTransformer``), site by site.

The architecture walk only: patch embedding, class token and position embedding, pre-norm blocks
of attention (ViT's twin applies d^(-1/2) after q·kᵀ, folded into k's de-quantization scale when
k is an integer site) and MLP, final norm, token or average pooling, head. The layers themselves
(sites, int8 weights, linear/LayerNorm/MLP) are ``exporter.Exporter``'s.
"""
from __future__ import annotations

import onnx
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitquant.errors import UserError
from vitquant.export.exporter import Exporter, ExportReport, refuse
from vitquant.nn import QuantAttention


class ViTExporter(Exporter):
    """Walks a ViT twin and emits its graph (module docstring)."""

    def check(self, model: nn.Module) -> None:
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
        refuse(problems)

    def attention(self, x: str, attn: QuantAttention, tokens: int) -> str:
        g = self.g
        q, k, v = self.qkv_heads(x, attn, tokens)
        q = self.site(q, attn.q_site, 4)
        k_scaled = self.site(k, attn.k_site, 4, dq_factor=attn.scale)  # d^(-1/2) folded into k's scale
        k = k_scaled or self.site(k, attn.k_site, 4)
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        if k_scaled is None:
            scores = g.op("Mul", [scores, g.const(attn.scale)])
        return self.attend(self.site(scores, attn.softmax_in_site, 4), v, attn, tokens)

    def build(self, image_size: int) -> onnx.ModelProto:
        m, g = self.m, self.g
        conv = m.patch_embed.proj
        flat = g.op("Reshape", [self.patch_conv("images", conv), self.ints([0, conv.out_channels, -1])])
        x = g.op("Transpose", [flat], perm=[0, 2, 1])  # (B, C, H·W) -> (B, tokens, C)
        tokens = m.patch_embed.num_patches + m.num_prefix_tokens
        if m.cls_token is not None:
            batch = g.op("Slice", [g.op("Shape", ["images"]), self.ints([0]), self.ints([1])])
            cls = g.op("Expand", [g.const(m.cls_token.detach().numpy()),
                                  g.op("Concat", [batch, self.ints([1, conv.out_channels])], axis=0)])
            x = g.op("Concat", [cls, x], axis=1)
        x = g.op("Add", [x, g.const(m.pos_embed.detach().numpy())])
        for block in m.blocks:
            x = g.op("Add", [x, self.attention(self.layer_norm(x, block.norm1, 3), block.attn, tokens)])
            x = g.op("Add", [x, self.mlp(self.layer_norm(x, block.norm2, 3), block.mlp, [tokens])])
        x = self.layer_norm(x, m.norm, 3)
        if m.global_pool == "avg":
            x = g.op("ReduceMean", [g.op("Slice", [x, self.ints([m.num_prefix_tokens]), self.ints([tokens]),
                                                   self.ints([1])]),
                                    self.ints([1])], keepdims=0)
            x = self.layer_norm(x, m.fc_norm, 2) if isinstance(m.fc_norm, nn.LayerNorm) else x
        else:
            x = g.op("Gather", [x, self.ints(0)], axis=1)
        return self.classifier(x, m.head, image_size)


@torch.no_grad()
def export_vit(model: nn.Module, image_size: int, quantize: bool = True) -> tuple[onnx.ModelProto, ExportReport]:
    """The ONNX model of a ViT twin and what became integer / stayed float."""
    exporter = ViTExporter(model.eval(), quantize)
    return exporter.build(image_size), exporter.report
