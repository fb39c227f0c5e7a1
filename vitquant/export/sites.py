"""Which quantization sites have an integer form, and what it is.

A uniform quantizer with an integral zero point is exactly an 8-bit QuantizeLinear/DequantizeLinear
pair (Δ = scale, zero point z)::

    ONNX:  c = saturate(round(x / Δ) + z),  x̂ = (c − z)·Δ        (round half to even, like torch)
    ours:  c = clamp(round(x / Δ) + z, qmin, qmax)

so the two agree when the code range [qmin, qmax] is the storage type's: 8 bits. Below 8 bits the
b-bit range is enforced with an integer ``Clip`` on the codes (Q → Clip → DQ), which keeps exactly
the fake-quant values (the INT8 graph carries b-bit codes in 8-bit containers). Storage:

* activations, asymmetric: uint8 codes, zero point z ∈ [0, 2^b − 1] (ORT's fast path is u8 × s8);
* weights: int8, the asymmetric codes shifted by −128 (c − 128 with zero point z − 128 dequantize
  to the same (c − z)·Δ), so GEMMs are u8 × s8;
* symmetric quantizers: int8 with zero point 0.

A zero point that is not an integer (RepQ-ViT's averaged zero point after reparameterization, with
``round_zero_point=false``) is rounded: only clipped values move, by less than one step.

Quantizers with no integer form (log2/log√2, SULQ, two-region/twin-uniform, PTF) are emulated in
float ops in the graph where ``vitquant.export.emulate`` knows them, else left unquantized; either way
they are listed as float sites.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from vitquant.nn.site import QuantSite
from vitquant.quant.uniform import UniformQuantizer


@dataclass
class SiteForm:
    """Integer form of one site: per-axis (or scalar) scale and zero point, storage type, code range."""

    scale: np.ndarray       # float32, (C,) or ()
    zero: np.ndarray        # int, same shape, in storage coordinates
    signed: bool            # int8 (True) or uint8 storage
    code_range: tuple[int, int]  # codes allowed, storage coordinates
    axis: int | None        # quantization axis of the site's tensor (None: per tensor)
    rounded_zero: bool      # the fake-quant zero point was fractional

    @property
    def full_range(self) -> bool:
        return self.code_range == ((-128, 127) if self.signed else (0, 255))

    def rows(self, index: slice) -> SiteForm:
        """The form of ``weight[index]`` (a per-output-channel form keeps those channels' parameters)."""
        if self.axis != 0:
            return self
        return replace(self, scale=self.scale[index], zero=self.zero[index])


def site_form(site: QuantSite, rank: int, weight: bool = False) -> SiteForm | None:
    """The integer form of ``site`` for a tensor of ``rank`` dims, or None (float site)."""
    q = site.quantizer
    if q is None or not site.enabled or type(q) is not UniformQuantizer or q.bits > 8:
        return None
    scale = q.scale.detach().float().cpu().numpy().reshape(-1)
    zero_f = q.zero_point.detach().float().cpu().numpy().reshape(-1)
    zero = np.round(zero_f).astype(np.int64)
    if scale.size != zero.size and zero.size != 1 and scale.size != 1:
        return None
    n = max(scale.size, zero.size)
    scale, zero = np.broadcast_to(scale, (n,)).copy(), np.broadcast_to(zero, (n,)).copy()
    lo, hi = q.qmin, q.qmax
    signed = q.symmetric or weight
    if weight and not q.symmetric:
        lo, hi, zero = lo - 128, hi - 128, zero - 128
    axis = None if n == 1 else (q.axis % rank if q.axis is not None else None)
    if n == 1:
        scale, zero = scale.reshape(()), zero.reshape(())
    return SiteForm(scale.astype(np.float32), zero, signed, (lo, hi), axis,
                    rounded_zero=bool(np.any(zero_f != np.round(zero_f))))


def quantizer_name(site: QuantSite) -> str:
    """Short description of a site's quantizer for reports (``UniformQuantizer/8b``)."""
    q = site.quantizer
    return "none" if q is None else f"{type(q).__name__}/{q.bits}b"


def to_tensor_layout(values: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    """Reshape per-axis ``values`` so they broadcast against a rank-``rank`` tensor."""
    if axis is None or values.ndim == 0:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return values.reshape(shape)


def weight_codes(weight: torch.Tensor, form: SiteForm) -> np.ndarray:
    """Integer codes of a weight (out, ...) in storage coordinates: clamp(round(W/Δ) + z)."""
    w = weight.detach().float().cpu().numpy()
    scale = to_tensor_layout(form.scale, form.axis, w.ndim)
    zero = to_tensor_layout(form.zero, form.axis, w.ndim)
    codes = np.clip(np.round(w / scale) + zero, *form.code_range)
    return codes.astype(np.int8 if form.signed else np.uint8)
