"""Build a float timm model from a model config (``conf/model/*.yaml``).

Config keys: ``arch`` (timm name, optionally with a pretrained tag such as
``deit_small_patch16_224.fb_in1k``), ``pretrained`` (timm download / HF cache), ``checkpoint``
(local weights file, see :mod:`vitquant.models.checkpoint`) and ``kwargs`` (any timm constructor
argument). Two conveniences on ``kwargs``: lists become tuples (``depths``, ``num_heads`` from
YAML), and ``norm_eps`` becomes ``norm_layer=partial(nn.LayerNorm, eps=norm_eps)`` since an
epsilon cannot be written as a layer class in YAML. A string ``act_layer`` is resolved by timm.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import timm
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from vitquant.errors import UserError
from vitquant.models.checkpoint import load_checkpoint


class PretrainedUnavailableError(UserError, RuntimeError):
    """timm could not fetch pretrained weights (offline, no HF cache).

    A ``RuntimeError`` (a download failed) that is also a :class:`UserError`, so the entry scripts
    report it as one line with its fix rather than a traceback.
    """


def _plain(value: Any) -> Any:
    """Config values as plain Python: OmegaConf containers resolved, lists turned into tuples."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """timm constructor arguments from ``model.kwargs`` (tuples, ``norm_eps`` → ``norm_layer``)."""
    out = _plain(kwargs or {})
    if "norm_eps" in out:
        out["norm_layer"] = partial(nn.LayerNorm, eps=float(out.pop("norm_eps")))
    return out


def check_arch(arch: str) -> None:
    """``arch`` is a timm model name, with a known pretrained tag if it has one; else one line naming the fix."""
    if not timm.is_model(arch):
        raise UserError(f"model.arch={arch} is not a timm model; list valid names with "
                        f"timm.list_models('{arch.split('.')[0].split('_')[0]}*')")
    if "." in arch and not timm.list_pretrained(arch):
        raise UserError(f"model.arch={arch}: unknown pretrained tag; list valid ones with "
                        f"timm.list_pretrained('{arch.split('.')[0]}*')")


def build_model(model_cfg: Mapping[str, Any] | DictConfig, load_weights: bool = True) -> nn.Module:
    """The float model in eval mode; ``load_weights=False`` skips pretrained/checkpoint weights
    (used when a quantized checkpoint will overwrite them anyway)."""
    arch = str(model_cfg["arch"])
    check_arch(arch)
    pretrained = bool(model_cfg.get("pretrained", False)) and load_weights
    kwargs = model_kwargs(model_cfg.get("kwargs"))
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise UserError(f"model.arch={arch}: bad model.kwargs ({e})") from None
    except OSError as e:  # huggingface_hub / urllib / requests network and cache-miss errors
        if not pretrained:
            raise
        raise PretrainedUnavailableError(
            f"model.arch={arch}: pretrained weights could not be downloaded ({type(e).__name__}); "
            "go online or set model.pretrained=false model.checkpoint=/path/to/weights.pth") from None
    checkpoint = model_cfg.get("checkpoint")
    if checkpoint and load_weights:
        load_checkpoint(model, checkpoint)
    return model.eval()
