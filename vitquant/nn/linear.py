"""Quant twins of ``nn.Linear`` and ``nn.Conv2d``: a weight site and (for Linear) an input site.

They subclass the float layers and keep the same parameter names, so a twin model's state dict
is the float model's plus quantizer state, and code that checks ``isinstance(m, nn.Linear)``
still works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.nn.site import QuantSite


class QuantLinear(nn.Linear):
    """y = Q_a(x) · Q_w(W)ᵀ + b, or, with a ``compensation`` (``vitquant.nn.lowrank``), its output."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_kind: str = "linear_in", is_end: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.input_site = QuantSite(input_kind, channel_dim=-1, is_end=is_end)
        self.weight_site = QuantSite("weight", channel_dim=0, is_end=is_end)
        self.register_module("compensation", None)  # optional low-rank compensation (AIQViT)

    @classmethod
    def from_float(cls, linear: nn.Linear, input_kind: str, is_end: bool = False) -> QuantLinear:
        twin = cls(linear.in_features, linear.out_features, linear.bias is not None, input_kind, is_end)
        twin.weight, twin.bias = linear.weight, linear.bias
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_site(x)
        if self.compensation is not None:
            return self.compensation(self, x)
        return F.linear(x, self.weight_site(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """Patch-embedding convolution: quantized weight, float input (the image is already 8-bit)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, is_end: bool = True) -> QuantConv2d:
        twin = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        twin.weight, twin.bias = conv.weight, conv.bias
        twin.weight_site = QuantSite("weight", channel_dim=0, is_end=is_end)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_site(self.weight), self.bias)
