"""Quant twins of timm modules and the quantization-site abstraction."""
from vitquant.nn.attention import QuantAttention
from vitquant.nn.linear import LinearBranch, QuantConv2d, QuantLinear
from vitquant.nn.lowrank import LowRankCompensation  # registers the "lowrank" branch kind
from vitquant.nn.norm import QuantLayerNorm
from vitquant.nn.site import (
                              ACTIVATION_KINDS,
                              SITE_KINDS,
                              QuantSite,
                              iter_sites,
                              quantized_sites,
                              set_calibrating,
                              set_quant_state,
                              uncalibrated_sites,
)
from vitquant.nn.window_attention import QuantWindowAttention

__all__ = ["QuantAttention", "QuantWindowAttention", "QuantLinear", "QuantConv2d", "QuantLayerNorm",
           "LinearBranch", "LowRankCompensation",
           "QuantSite", "SITE_KINDS", "ACTIVATION_KINDS", "iter_sites", "quantized_sites",
           "set_calibrating", "set_quant_state", "uncalibrated_sites"]
