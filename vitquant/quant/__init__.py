"""Fake quantizers. One quantizer per module; shared math in ``ste`` and ``stats``."""
from vitquant.quant.base import Quantizer
from vitquant.quant.log import LogQuantizer
from vitquant.quant.uniform import UniformQuantizer

__all__ = ["Quantizer", "UniformQuantizer", "LogQuantizer"]
