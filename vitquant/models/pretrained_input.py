"""A timm-zoo model's input (size, crop, interpolation, normalisation) from timm's pretrained config.

timm keeps, for every pretrained tag, the preprocessing its weights expect (``pretrained_cfg``: metadata
inside the package, nothing is downloaded); ``timm.data.resolve_data_config`` turns it into ``input_size``,
``crop_pct``, ``crop_mode``, ``interpolation``, ``mean`` and ``std``. Here those become the keys of
``model.input`` (:mod:`vitquant.data.transforms`). ``conf/model_input/timm.yaml`` reads each key through the
``vq.timm_input`` resolver, so switching ``model.arch`` to a 384-px or other-normalisation model switches its
preprocessing with it, while a model config or the command line can still set any single key
(``model.input.crop_pct=0.875``).
"""
from __future__ import annotations

from functools import cache
from typing import Any

from vitquant.errors import UserError

INPUT_KEYS = ("size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


@cache
def pretrained_input(arch: str) -> dict[str, Any]:
    """``model.input`` keys of ``arch`` (a timm name, optionally with a pretrained tag), as timm resolves them.

    timm is imported here, not at module level: configs are composed (and this module imported) long before
    a model is built, and importing timm costs seconds.
    """
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    from vitquant.models.build import check_arch

    check_arch(arch)
    pretrained_cfg = get_pretrained_cfg(arch)
    data = resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    _, height, width = data["input_size"]
    if height != width:
        raise UserError(f"model.arch={arch} expects {height}x{width} inputs; only square inputs are supported: "
                        "set model.input.size and a square model.kwargs.img_size")
    return {"size": int(height), "crop_pct": float(data["crop_pct"]), "crop_mode": str(data["crop_mode"]),
            "interpolation": str(data["interpolation"]), "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]]}


def timm_input(arch: str, key: str, channel: int | None = None) -> Any:
    """``${vq.timm_input:<arch>,<key>}``: one key of :func:`pretrained_input`; ``mean`` and ``std`` one
    ``channel`` at a time (``${vq.timm_input:<arch>,mean,0}``), since ``OmegaConf.resolve`` cannot put a
    resolver's list into a YAML leaf."""
    if key not in INPUT_KEYS:
        raise UserError(f"vq.timm_input: unknown key '{key}'; valid: {', '.join(INPUT_KEYS)}")
    value = pretrained_input(str(arch))[key]
    return value if channel is None else value[int(channel)]
