"""Non-finite tensors: a NaN/Inf weight or quantizer parameter makes every later number meaningless.

A NaN in one weight of a float checkpoint, or a scale that a diverged reconstruction stage turned
into NaN, does not crash anything: the model just predicts one class (10% top-1 on CIFAR-10). So
checkpoints are checked when loaded and the quantized model after calibration, and the first bad
tensor is named.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from vitquant.errors import UserError
from vitquant.nn.site import site_name

QUANTIZER_INFIX = ".quantizer."


class NonFiniteError(UserError):
    """A checkpoint or a calibrated model holds NaN or Inf values."""


def first_nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """``"<name> (3 NaN, 0 Inf of 2304 values)"`` for the first floating tensor with NaN/Inf, else None."""
    for name, value in tensors:
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n_nan, n_inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            return f"{name} ({n_nan} NaN, {n_inf} Inf of {value.numel()} values)"
    return None


def describe(state_key: str) -> str:
    """A quantizer's state key as ``site <site name>: <parameter>``; other keys unchanged."""
    if QUANTIZER_INFIX not in state_key:
        return state_key
    site, param = state_key.split(QUANTIZER_INFIX, 1)
    return f"site {site_name(site)}: quantizer {param}"


def check_calibrated(model: torch.nn.Module, method: str) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite weight or quantizer parameter."""
    bad = first_nonfinite((describe(k), v) for k, v in model.state_dict().items())
    if bad is not None:
        raise NonFiniteError(f"calibration with method {method} diverged: {bad} is not finite after its stages; "
                             "lower the method's lr/iters or report the model and seed")
