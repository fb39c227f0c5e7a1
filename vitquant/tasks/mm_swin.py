"""A timm Swin Transformer as an mmdet/mmseg backbone (registered as ``TimmSwin``).

Why timm's Swin and not mmdet's: the quant twins (:mod:`vitquant.models.twin`) know timm's
``WindowAttention``/``Mlp``/``PatchMerging``, so with this backbone one set of twins, site kinds and
reconstruction units serves classification, detection and segmentation alike.

The module tree follows the official Swin detection code (``patch_embed``, ``layers.N``,
``norm0..3``), so official checkpoints map onto it by one rule (:mod:`vitquant.tasks.mm_checkpoint`):
timm downsamples at the *start* of a stage where the official code does it at the end.

Dense inputs are of any size (padded to a multiple of 32 by mmdet), so every block pads its
feature map to a multiple of the window and then shifts it, in the official order (timm shifts
first), with the shifted-window mask computed on the padded map; :class:`PadFirstSwinBlock`.
"""
from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from vitquant.tasks.mm_backbone import pad_to_patch


class PadFirstSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the official dense-task order: pad to the window, then shift.

    ``x → pad(x) → roll(−s) → W-MSA(mask(Hp, Wp)) → roll(+s) → crop``. Same parameters as timm's
    block (an instance is converted by assigning this class; nothing is added)."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        wh, ww = self.window_size
        x = nn.functional.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape
        shift = tuple(self.shift_size)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.get_attn_mask(x))
        x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


class TimmSwin(nn.Module):
    """Swin stages of a timm model; returns the NCHW outputs of ``out_indices``, each LayerNorm'd.

    ``arch`` is a timm Swin name; ``kwargs`` go to ``timm.create_model`` (``embed_dim``, ``depths``,
    ``num_heads``, ``window_size``, ``drop_path_rate``...). The classifier and final norm are dropped.
    """

    def __init__(self, arch: str = "swin_tiny_patch4_window7_224", out_indices: Sequence[int] = (0, 1, 2, 3),
                 **kwargs) -> None:
        super().__init__()
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        model = timm.create_model(arch, pretrained=False, num_classes=0, strict_img_size=False,
                                  always_partition=True, **kwargs)
        self.patch_embed, self.layers = model.patch_embed, model.layers
        for module in self.layers.modules():
            if type(module) is SwinTransformerBlock:
                module.__class__ = PadFirstSwinBlock
        self.out_indices = tuple(out_indices)
        stage_widths = [int(info["num_chs"]) for info in model.feature_info]
        self.channels = [stage_widths[i] for i in self.out_indices]  # one per output, as the neck reads them
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(stage_widths[i]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(pad_to_patch(x, self.patch_embed.patch_size))  # NHWC
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

