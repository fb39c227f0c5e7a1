"""Integer export of quantized models (ONNX with QuantizeLinear/DequantizeLinear around the GEMMs)."""
from vitquant.export.sites import SiteForm, site_form

__all__ = ["SiteForm", "site_form"]
