"""What every calibration stage receives besides the model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def _no_log(metrics: dict[str, float]) -> None:
    return None


def _no_table(name: str, columns: list[str], rows: list[list[Any]]) -> None:
    return None


@dataclass
class CalibContext:
    """Calibration images (kept on CPU, moved a batch at a time), the FP model, device and logger.

    ``table(name, columns, rows)`` logs a table (W&B); ``metrics`` collects what stages report
    for ``metrics.json`` (chosen ranks, intervals), merged into the run's metrics at the end.
    """

    fp_model: nn.Module
    images: torch.Tensor
    device: torch.device
    seed: int = 0
    log: Callable[[dict[str, float]], None] = field(default=_no_log)
    table: Callable[[str, list[str], list[list[Any]]], None] = field(default=_no_table)
    metrics: dict[str, Any] = field(default_factory=dict)
