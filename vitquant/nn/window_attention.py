"""Quant twin of timm's Swin ``WindowAttention`` (relative position bias, shifted-window mask).

Following the Swin code (and RepQ-ViT/I&S-ViT), q is pre-scaled. The Softmax-input site sees the
scores plus relative position bias *before* the shifted-window mask's −100 entries are added,
which would otherwise swamp the quantization range::

    S = Q_q(q · d^(-1/2)) · Q_k(k)ᵀ + B_rel
    A = Q_ps(softmax(Q_s(S) + M_shift));  out = proj(A · Q_v(v))
"""
from __future__ import annotations

import torch
from torch import nn

from vitquant.nn.attention import attention_sites


class QuantWindowAttention(nn.Module):
    """Explicit window attention; keeps the relative-position parameters under their timm names."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.scale = attn.num_heads, attn.scale
        self.window_size, self.window_area = attn.window_size, attn.window_area
        self.relative_position_bias_table = attn.relative_position_bias_table
        self.register_buffer("relative_position_index", attn.relative_position_index, persistent=False)
        self.qkv, self.proj = attn.qkv, attn.proj
        self.attn_drop, self.proj_drop = attn.attn_drop, attn.proj_drop
        attention_sites(self)

    def relative_position_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = self.q_site(q * self.scale) @ self.k_site(k).transpose(-2, -1)
        scores = self.softmax_in_site(scores + self.relative_position_bias())
        if mask is not None:
            num_win = mask.shape[0]
            scores = scores.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.post_softmax_site(scores.softmax(dim=-1)))
        x = (attn @ self.v_site(v)).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))
