"""What every calibration stage receives besides the model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


def _no_log(metrics: dict[str, float]) -> None:
    return None


@dataclass
class CalibContext:
    """Calibration images (kept on CPU, moved a batch at a time), the FP model, device and logger."""

    fp_model: nn.Module
    images: torch.Tensor
    device: torch.device
    seed: int = 0
    log: Callable[[dict[str, float]], None] = field(default=_no_log)
