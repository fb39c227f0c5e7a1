"""Quant twin of timm's ViT/DeiT ``Attention``, with every matmul operand explicit.

timm runs attention through fused SDPA, where q·kᵀ, softmax and attn·v are not modules and
no hook can see them. The twin computes them explicitly (as RepQ-ViT/I&S-ViT do, with the
1/√d scale applied after q·kᵀ)::

    q, k, v = split(qkv(x));  S = (Q_q(q) · Q_k(k)ᵀ) · d^(-1/2)
    A = Q_ps(softmax(Q_s(S)));  out = proj(A · Q_v(v))
"""
from __future__ import annotations

import torch
from torch import nn

from vitquant.errors import UnsupportedError
from vitquant.nn.site import QuantSite


def attention_sites(module: nn.Module) -> None:
    """Register the q, k, v, Softmax-input and post-Softmax sites of an attention twin."""
    module.q_site = QuantSite("q", channel_dim=-1)
    module.k_site = QuantSite("k", channel_dim=-1)
    module.v_site = QuantSite("v", channel_dim=-1)
    module.softmax_in_site = QuantSite("softmax_in", channel_dim=-1)
    module.post_softmax_site = QuantSite("post_softmax", channel_dim=-1)


def refuse(condition: bool, what: str) -> None:
    if condition:
        raise UnsupportedError(f"quant twin does not implement timm's {what}; "
                                  "build the model without it or add it to vitquant.nn")


class QuantAttention(nn.Module):
    """Explicit multi-head self-attention with q, k, v, Softmax-input and post-Softmax sites."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        refuse(not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity), "qk_norm")
        refuse(not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity), "scale_norm")
        refuse(getattr(attn, "gate", None) is not None, "gated attention")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.qkv, self.proj = attn.qkv, attn.proj
        self.attn_drop, self.proj_drop = attn.attn_drop, attn.proj_drop
        attention_sites(self)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        refuse(attn_mask is not None or is_causal, "attention masks")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = (self.q_site(q) @ self.k_site(k).transpose(-2, -1)) * self.scale
        attn = self.softmax_in_site(scores).softmax(dim=-1)
        attn = self.attn_drop(self.post_softmax_site(attn))
        x = (attn @ self.v_site(v)).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(x))
