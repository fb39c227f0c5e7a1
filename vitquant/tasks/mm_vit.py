"""A timm plain ViT/DeiT as an mmseg/mmdet backbone (registered as ``TimmViT``).

The same route as :class:`~vitquant.tasks.mm_swin.TimmSwin`: the blocks stay timm's ``Block``
(``attn.qkv``/``attn.proj``/``mlp.fc1``/``mlp.fc2``), so the quant twins, site kinds and
reconstruction units of classification apply unchanged. The computation is mmseg's
``VisionTransformer`` (``configs/vit/*upernet*``), so its checkpoints load by renaming keys
(:func:`vitquant.tasks.mm_checkpoint.convert_mmseg_vit`) and give the same numbers::

    x = patch_embed(pad_to_patch(img))                  # (B, h, w, C); the image padded bottom/right
    x = [cls, x.flatten] + resize(pos_embed, (h, w))    # pos grid resampled when (h, w) != pretraining grid
    for i, block in enumerate(blocks):
        x = block(x);  x = norm(x) if final_norm and i is the last block
        out_i = x[:, 1:] as (B, C, h, w)  for i in out_indices   # class token dropped

The position grid is resampled with ``interpolate_mode`` (bicubic), ``align_corners=False`` and no
antialiasing, as mmseg does (timm's default antialiasing would change the numbers).
"""
from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitquant.errors import UserError
from vitquant.tasks.mm_backbone import pad_to_patch


class TimmViT(nn.Module):
    """Blocks of a timm ViT/DeiT; returns the NCHW token maps after the ``out_indices`` blocks.

    ``arch`` is a timm ViT name (``deit_small_patch16_224``); ``kwargs`` go to ``timm.create_model``
    (``img_size`` sets the stored position grid, ``embed_dim``, ``depth``, ``num_heads``, ``patch_size``,
    ``drop_path_rate``...). ``final_norm`` applies timm's final ``norm`` to the last block's output, as
    mmseg's ``final_norm=True`` (its ``*-ln_mln`` configs) does; without it the norm is dropped.
    The classifier is dropped.
    """

    def __init__(self, arch: str = "deit_small_patch16_224", out_indices: Sequence[int] = (2, 5, 8, 11),
                 final_norm: bool = False, interpolate_mode: str = "bicubic", **kwargs) -> None:
        super().__init__()
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", **kwargs)
        if model.num_prefix_tokens != 1 or not model.has_class_token or model.no_embed_class:
            raise UserError(f"model.arch={arch}: the TimmViT backbone needs exactly one class token with a position "
                            "embedding (as mmseg's VisionTransformer); distilled, register-token and no-embed-class "
                            "ViTs are not supported, use e.g. model.arch=deit_small_patch16_224")
        self.patch_embed, self.cls_token, self.pos_embed = model.patch_embed, model.cls_token, model.pos_embed
        self.patch_embed.flatten, self.patch_embed.strict_img_size = False, False  # (B, C, h, w) of any size
        self.norm_pre, self.blocks = model.norm_pre, model.blocks
        self.norm = model.norm if final_norm else None
        self.out_indices = tuple(int(i) % len(self.blocks) for i in out_indices)
        self.interpolate_mode = interpolate_mode
        self.channels = [model.embed_dim] * len(self.out_indices)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """``pos_embed`` for an ``grid`` (h, w) of patches: the class position kept, the grid resampled."""
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=list(self.patch_embed.grid_size),
                                      num_prefix_tokens=1, interpolation=self.interpolate_mode, antialias=False,
                                      align_corners=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(pad_to_patch(x, self.patch_embed.patch_size))  # (B, C, h, w)
        B, C, h, w = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = self.norm_pre(x + self.position_embedding((h, w)))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.norm is not None and i == len(self.blocks) - 1:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(x[:, 1:].transpose(1, 2).reshape(B, C, h, w).contiguous())
        return tuple(outs)
