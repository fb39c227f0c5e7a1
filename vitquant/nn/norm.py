"""Quant twin of ``nn.LayerNorm``: an input site on the residual stream (kind ``ln_in``).

Only fully-quantized policies (FQ-ViT, TSPTQ-ViT) enable it; the LayerNorm itself stays float.
"""
from __future__ import annotations

import torch
from torch import nn

from vitquant.nn.site import QuantSite


class QuantLayerNorm(nn.LayerNorm):
    """LayerNorm(Q_a(x)), keeping ``weight``/``bias`` names so reparameterization edits them in place."""

    @classmethod
    def from_float(cls, norm: nn.LayerNorm) -> QuantLayerNorm:
        twin = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                   bias=norm.bias is not None)
        twin.weight, twin.bias = norm.weight, norm.bias
        twin.input_site = QuantSite("ln_in", channel_dim=-1)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_site(x))
