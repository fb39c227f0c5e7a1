"""Fake quantizers. One quantizer per module; shared math in ``ste`` and ``stats``."""
from vitquant.quant.base import Quantizer
from vitquant.quant.dfq import DynamicFocusingQuantizer
from vitquant.quant.log import LogQuantizer
from vitquant.quant.lsq import LSQQuantizer
from vitquant.quant.outlier_two_scale import OutlierTwoScaleQuantizer
from vitquant.quant.ptf import PowerOfTwoFactorQuantizer
from vitquant.quant.sulq import SULQuantizer
from vitquant.quant.twin_uniform import TwinUniformQuantizer
from vitquant.quant.two_scale import TwoScaleQuantizer
from vitquant.quant.uniform import UniformQuantizer

__all__ = ["DynamicFocusingQuantizer", "LogQuantizer", "LSQQuantizer", "OutlierTwoScaleQuantizer",
           "PowerOfTwoFactorQuantizer", "Quantizer", "SULQuantizer", "TwinUniformQuantizer", "TwoScaleQuantizer",
           "UniformQuantizer"]
