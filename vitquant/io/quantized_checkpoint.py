"""``quantized.pt``: everything needed to rebuild the exact quantized model, as tensors + YAML.

Layout (loadable with ``torch.load(weights_only=True)``)::

    {"format": "vitquant.quantized/1", "config": <resolved run config, YAML text>,
     "state_dict": <twin model state: weights as calibrated (reparameterized LayerNorms and
                    linears included), quantizer parameters, quantizer extra state>,
     "calib_ids": LongTensor}

Rebuilding = the model and method from the stored config, twins + quantizers attached, then this
state dict. The modules restore their own structure while loading (quantizers adopt the stored per-channel
shapes and granularity, linears a folded bias or an output branch), so this module knows no method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vitquant.errors import UserError
from vitquant.io.atomic import save_torch

FORMAT = "vitquant.quantized/1"


def save_quantized(path: str | Path, model: nn.Module, run_cfg: DictConfig, calib_ids: list[int]) -> Path:
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    return save_torch(path, {"format": FORMAT, "config": OmegaConf.to_yaml(run_cfg), "state_dict": state,
                             "calib_ids": torch.tensor(calib_ids, dtype=torch.long)})


def read_quantized(path: str | Path) -> tuple[DictConfig, dict[str, Any], list[int]]:
    """(run config, state dict, calibration ids) of a quantized checkpoint; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint={path}: file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        raise UserError(f"checkpoint={path} is corrupt or not a vitquant quantized checkpoint "
                        f"({type(e).__name__}); re-run calibrate.py to produce it") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"checkpoint={path} is not a vitquant quantized checkpoint (expected format {FORMAT}); "
                        "pass the quantized.pt written by calibrate.py")
    return OmegaConf.create(blob["config"]), blob["state_dict"], blob["calib_ids"].tolist()


def load_quantized_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Strictly load ``state`` into a rebuilt twin, naming the first mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"checkpoint={path} does not match the model it describes: {first}") from None
