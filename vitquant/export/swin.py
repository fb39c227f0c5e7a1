"""ONNX graph of a Swin quant twin (timm ``SwinTransformer``), site by site, in timm's NHWC layout.

The architecture walk only (the layers are ``exporter.Exporter``'s), following timm's forward:

* patch embedding: ``Conv`` → (B, H, W, C) → LayerNorm over channels;
* per stage: ``PatchMerging`` (pad H, W to even; (B, H/2, 2, W/2, 2, C) → Transpose(0, 1, 3, 4, 2, 5) →
  (B, H/2, W/2, 4C), i.e. the sub-patches (row, col) = (0,0), (1,0), (0,1), (1,1) concatenated as in
  timm 1.0 and the original Swin; LayerNorm; reduction, with the bias RepQ-ViT's fold may have added),
  then blocks;
* a block: ``x + attn(norm1(x))`` with cyclic shift ``roll(−s)`` (``Slice`` + ``Concat``), zero
  padding to whole windows (timm shifts first, then pads), window partition, window attention,
  window reverse, crop, ``roll(+s)``; then ``x + mlp(norm2(x))``;
* window attention as ``QuantWindowAttention``:
  ``S = Q_q(q·d^(-1/2))·Q_k(k)ᵀ + B_rel``, ``A = Q_ps(softmax(Q_s(S) + M_shift))``, ``proj(A·Q_v(v))``;
  the relative position bias (heads, N, N) and the shift mask (windows, N, N) are constants, the
  mask added per window through a (B, windows, heads, N, N) view as timm does;
* final LayerNorm, mean over H, W, head.

Spatial sizes are fixed by ``image_size``; every Reshape keeps the batch dimension free.
"""
from __future__ import annotations

import math

import onnx
import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock
from torch import nn

from vitquant.errors import UserError
from vitquant.export.exporter import Exporter, ExportReport, refuse
from vitquant.nn import QuantWindowAttention


class SwinExporter(Exporter):
    """Walks a Swin twin and emits its graph (module docstring)."""

    def check(self, model: nn.Module) -> None:
        """Refuse what the Swin graph does not implement, with the reason."""
        if not isinstance(model, SwinTransformer):
            raise UserError(f"export supports Swin (timm SwinTransformer) models here, not {type(model).__name__}")
        problems = []
        if model.global_pool != "avg":
            problems.append(f"global_pool={model.global_pool!r}")
        if getattr(model.patch_embed, "dynamic_img_pad", False):
            problems.append("dynamic_img_pad")
        if not isinstance(model.patch_embed.norm, (nn.LayerNorm, nn.Identity)):
            problems.append(f"patch-embed norm {type(model.patch_embed.norm).__name__}")
        for i, stage in enumerate(model.layers):
            if not isinstance(stage.downsample, (PatchMerging, nn.Identity)):
                problems.append(f"layers.{i}.downsample {type(stage.downsample).__name__}")
            for j, block in enumerate(stage.blocks):
                if type(block) is not SwinTransformerBlock:
                    problems.append(f"layers.{i}.blocks.{j} {type(block).__name__}")
                elif not isinstance(block.attn, QuantWindowAttention):
                    problems.append(f"layers.{i}.blocks.{j}.attn is not a quant twin")
        refuse(problems)

    # ------------------------------------------------------------------ spatial ops (NHWC)
    def roll(self, x: str, shift: int, axis: int, size: int) -> str:
        """``torch.roll(x, shift, axis)``: out[i] = x[(i − shift) mod size], as two slices concatenated."""
        r = shift % size
        if r == 0:
            return x
        head = self.g.op("Slice", [x, self.ints([size - r]), self.ints([size]), self.ints([axis])])
        tail = self.g.op("Slice", [x, self.ints([0]), self.ints([size - r]), self.ints([axis])])
        return self.g.op("Concat", [head, tail], axis=axis)

    def pad(self, x: str, pad_h: int, pad_w: int) -> str:
        """Zero padding at the bottom/right of (B, H, W, C)."""
        if not pad_h and not pad_w:
            return x
        return self.g.op("Pad", [x, self.ints([0, 0, 0, 0, 0, pad_h, pad_w, 0])])

    def patch_merging(self, x: str, merge: PatchMerging, size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
        g, (h, w), c = self.g, size, merge.dim
        x = self.pad(x, h % 2, w % 2)
        h, w = (h + 1) // 2, (w + 1) // 2
        x = g.op("Reshape", [x, self.ints([0, h, 2, w, 2, c])])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 1, 3, 4, 2, 5]), self.ints([0, h, w, 4 * c])])
        return self.linear(self.layer_norm(x, merge.norm, 4), merge.reduction, (h, w)), (h, w)

    # ------------------------------------------------------------------ blocks
    def shift_mask(self, block: SwinTransformerBlock, padded: tuple[int, int]) -> torch.Tensor | None:
        """The block's (windows, N, N) shifted-window mask for the padded size (timm's, or rebuilt when dynamic)."""
        if not any(block.shift_size):
            return None
        mask = block.get_attn_mask(torch.zeros(1, *padded, 1)) if block.dynamic_mask else block.attn_mask
        windows = (padded[0] // block.window_size[0]) * (padded[1] // block.window_size[1])
        if mask is None or mask.shape[0] != windows:
            raise UserError(f"export: the shift mask of a block was built for another input size than "
                            f"{padded[0]}x{padded[1]} (build the model with img_size equal to the export size)")
        return mask

    def window_attention(self, x: str, attn: QuantWindowAttention, mask: torch.Tensor | None) -> str:
        g, n, heads = self.g, attn.window_area, attn.num_heads
        q, k, v = self.qkv_heads(x, attn, n)
        q = self.site(g.op("Mul", [q, g.const(attn.scale)]), attn.q_site, 4)
        k = self.site(k, attn.k_site, 4)
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        bias = attn.relative_position_bias().detach().float().numpy()
        scores = self.site(g.op("Add", [scores, g.const(bias, "rel_pos_bias")]), attn.softmax_in_site, 4)
        if mask is not None:
            windows = mask.shape[0]
            scores = g.op("Reshape", [scores, self.ints([-1, windows, heads, n, n])])
            scores = g.op("Add", [scores, g.const(mask[None, :, None].float().numpy(), "shift_mask")])
            scores = g.op("Reshape", [scores, self.ints([-1, heads, n, n])])
        return self.attend(scores, v, attn, n)

    def shifted_window_attention(self, x: str, block: SwinTransformerBlock, size: tuple[int, int]) -> str:
        """timm's ``SwinTransformerBlock._attn`` on (B, H, W, C)."""
        g, (h, w), (wh, ww), (sh, sw) = self.g, size, block.window_size, block.shift_size
        c = block.norm1.normalized_shape[0]
        x = self.roll(self.roll(x, -sh, 1, h), -sw, 2, w)
        hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
        x = self.pad(x, hp - h, wp - w)
        x = g.op("Reshape", [x, self.ints([-1, hp // wh, wh, wp // ww, ww, c])])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), self.ints([-1, wh * ww, c])])
        x = self.window_attention(x, block.attn, self.shift_mask(block, (hp, wp)))
        x = g.op("Reshape", [x, self.ints([-1, hp // wh, wp // ww, wh, ww, c])])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), self.ints([-1, hp, wp, c])])
        if (hp, wp) != (h, w):
            x = g.op("Slice", [x, self.ints([0, 0]), self.ints([h, w]), self.ints([1, 2])])
        return self.roll(self.roll(x, sh, 1, h), sw, 2, w)

    def block(self, x: str, block: SwinTransformerBlock, size: tuple[int, int]) -> str:
        x = self.g.op("Add", [x, self.shifted_window_attention(self.layer_norm(x, block.norm1, 4), block, size)])
        return self.g.op("Add", [x, self.mlp(self.layer_norm(x, block.norm2, 4), block.mlp, size)])

    def build(self, image_size: int) -> onnx.ModelProto:
        m, g = self.m, self.g
        embed = m.patch_embed
        if embed.strict_img_size and tuple(embed.img_size) != (image_size, image_size):
            raise UserError(f"export: image_size={image_size} but the Swin model was built for {embed.img_size}")
        x = g.op("Transpose", [self.patch_conv("images", embed.proj)], perm=[0, 2, 3, 1])  # NCHW -> NHWC
        if isinstance(embed.norm, nn.LayerNorm):
            x = self.layer_norm(x, embed.norm, 4)
        size = (image_size // embed.proj.stride[0], image_size // embed.proj.stride[1])
        for stage in m.layers:
            if isinstance(stage.downsample, PatchMerging):
                x, size = self.patch_merging(x, stage.downsample, size)
            for block in stage.blocks:
                x = self.block(x, block, size)
        x = g.op("ReduceMean", [self.layer_norm(x, m.norm, 4), self.ints([1, 2])], keepdims=0)
        return self.classifier(x, m.head.fc, image_size)


@torch.no_grad()
def export_swin(model: nn.Module, image_size: int, quantize: bool = True) -> tuple[onnx.ModelProto, ExportReport]:
    """The ONNX model of a Swin twin and what became integer / stayed float."""
    exporter = SwinExporter(model.eval(), quantize)
    return exporter.build(image_size), exporter.report
