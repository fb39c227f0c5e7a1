"""Load a float checkpoint (``.safetensors`` or a torch file) into a timm model, strictly.

What is accepted, in order:

1. Reading: ``.safetensors`` with ``safetensors.torch.load_file``; anything else with
   ``torch.load(weights_only=True)``. Official DeiT ``.pth`` files pickle the training
   ``argparse.Namespace`` next to the weights, so that one class is allow-listed
   (``torch.serialization.safe_globals``) instead of turning the safe loader off.
2. Unwrapping training checkpoints: ``{'model': sd}`` (DeiT/Swin official), ``{'state_dict': sd}``
   (Lightning/mmcv), ``{'model_ema': sd}``; and stripping ``module.`` (DataParallel/DDP) and
   ``_orig_mod.`` (``torch.compile``) key prefixes.
3. Layout conversion: when the keys still differ from the model's, the architecture's own timm
   ``checkpoint_filter_fn`` (what ``timm.create_model(pretrained=True)`` applies) converts foreign
   layouts, e.g. Microsoft's original Swin files (downsample at the end of a stage, persistent
   ``relative_position_index``/``attn_mask`` buffers).
4. ``pos_embed`` of another grid (checkpoint trained at another resolution) is resampled to the
   model's patch grid with ``timm.layers.resample_abs_pos_embed``; the class/distillation tokens
   (``num_prefix_tokens``, none when ``no_embed_class``) are kept, not interpolated.
5. Every floating tensor must be finite: a NaN/Inf weight is named (first in module order) instead
   of calibrating silently to chance accuracy.
6. Strict ``load_state_dict``. Any remaining difference is a one-line :class:`CheckpointError`
   naming the path, the first differing keys (or the first key whose shape differs, with both
   shapes) and the fix.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitquant.errors import UserError
from vitquant.models.finite import first_nonfinite

WRAPPER_KEYS = ("model", "state_dict", "model_ema")
KEY_PREFIXES = ("module.", "_orig_mod.")
SHOWN_KEYS = 3  # how many offending keys an error message names


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found; set model.checkpoint to an existing "
                              ".pth/.pt/.bin/.safetensors file (paths are relative to the launch directory)")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure means the same thing to the user
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights file ({type(e).__name__}: {reason}); "
                              "re-download it or point model.checkpoint at a state dict") from None


def _unwrap(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor state dict inside a (possibly nested) training checkpoint, prefixes stripped."""
    while isinstance(blob, dict) and not any(torch.is_tensor(v) for v in blob.values()):
        inner = next((blob[k] for k in WRAPPER_KEYS if isinstance(blob.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"checkpoint {path} holds no state dict (top-level keys: {sorted(blob)[:8]}); "
                                  f"expected tensors or one of the wrapper keys {list(WRAPPER_KEYS)}")
        blob = inner
    if not isinstance(blob, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(blob).__name__}, not a state dict; "
                              "save model.state_dict() instead of the model object")
    out = {}
    for key, value in blob.items():
        for prefix in KEY_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _convert_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the architecture's timm ``checkpoint_filter_fn`` when the keys do not already match."""
    if set(state) == set(model.state_dict()):
        return state
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    return filter_fn(state, model) if filter_fn is not None else state


def _resize_pos_embed(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resample an absolute ``pos_embed`` of another grid to the model's (same width only)."""
    target, grid = getattr(model, "pos_embed", None), getattr(getattr(model, "patch_embed", None), "grid_size", None)
    pos = state.get("pos_embed")
    if pos is None or not isinstance(target, torch.Tensor) or grid is None or pos.shape == target.shape:
        return
    if pos.ndim != 3 or pos.shape[-1] != target.shape[-1]:
        return  # a different width is an architecture mismatch: reported by the shape check
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)


def _check(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{name} keys {keys[:SHOWN_KEYS]}{' ...' if len(keys) > SHOWN_KEYS else ''} ({len(keys)} in all)"
                 for name, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"checkpoint {path} does not match the model: {'; '.join(parts)}; "
                              "check model.arch and model.kwargs against the checkpoint")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise CheckpointError(f"checkpoint {path} does not match the model: {key} has shape "
                                  f"{tuple(state[key].shape)} in the checkpoint but {tuple(value.shape)} in the model; "
                                  "check model.arch and model.kwargs against the checkpoint")


def _check_finite(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    bad = first_nonfinite((key, state[key]) for key in model.state_dict())
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} has non-finite weights: {bad}; the file is damaged or "
                              "its training diverged, use an earlier or re-downloaded checkpoint")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights at ``path`` into ``model`` in place (strict); returns ``model``."""
    path = Path(path)
    state = _convert_layout(_unwrap(_read(path), path), model)
    _resize_pos_embed(state, model)
    _check(state, model, path)
    _check_finite(state, model, path)
    model.load_state_dict(state, strict=True)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor state dict in the file at ``path`` (read safely, training wrappers removed)."""
    path = Path(path)
    return _unwrap(_read(path), path)


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> None:
    """One-line :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys and shapes."""
    _check(state, model, Path(path))
