"""Checks on a composed run config that Hydra's own schema cannot express.

Each failure is one line naming the bad value and what is valid, raised before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vitquant.errors import UserError
from vitquant.io.sweep import sweep_name
from vitquant.methods.recipe import BitWidths
from vitquant.nn.site import SITE_KINDS

BIT_KEYS = ("w_bits", "a_bits", "end_bits", "end_a_bits")


def at_most_bits(bits: int, limit: int, low_bits_value: Any, high_bits_value: Any) -> Any:
    """``${vq.at_most_bits:${w_bits},4,1000,200}``: 1000 at W≤4, else 200 (I&S-ViT's iterations)."""
    return low_bits_value if int(bits) <= int(limit) else high_bits_value


def local_batch(launcher_target: str, jobs: Any) -> int | None:
    """``hydra.sweeper.max_batch_size``: N jobs at a time under submitit's local launcher (it would start every job
    of a sweep at once), unbounded (None) under any other launcher (Slurm queues them itself)."""
    return int(jobs) if launcher_target.endswith(".LocalLauncher") else None


if not OmegaConf.has_resolver("vq.at_most_bits"):
    OmegaConf.register_new_resolver("vq.at_most_bits", at_most_bits)
if not OmegaConf.has_resolver("vq.local_batch"):
    OmegaConf.register_new_resolver("vq.local_batch", local_batch)
if not OmegaConf.has_resolver("vq.sweep_name"):  # cached: each job keeps its sweep's folder (io/sweep.py)
    OmegaConf.register_new_resolver("vq.sweep_name", lambda overrides: sweep_name(list(overrides)), use_cache=True)


def bit_widths(cfg: DictConfig) -> BitWidths:
    """The run's bits, each checked against ``bits_range`` (PTQ: 2..8)."""
    lo, hi = cfg.bits_range
    for key in BIT_KEYS:
        value = cfg[key]
        if not isinstance(value, int) or not lo <= value <= hi:
            raise UserError(f"{key}={value} is out of range: use an integer in {lo}..{hi} (e.g. bits=4)")
    return BitWidths(w=cfg.w_bits, a=cfg.a_bits, end_w=cfg.end_bits, end_a=cfg.end_a_bits)


def check_policy(cfg: DictConfig) -> None:
    unknown = [k for k in cfg.policy.kinds if k not in SITE_KINDS]
    if unknown:
        raise UserError(f"policy {cfg.policy.name}: unknown site kinds {unknown}; valid: {', '.join(SITE_KINDS)}")


def check_path(value: str | None, key: str, what: str) -> None:
    if value is not None and not Path(value).exists():
        raise UserError(f"{key}={value}: {what} not found (paths are relative to the launch directory)")


def check_data(cfg: DictConfig) -> None:
    data = cfg.data
    if data.format == "folder":
        check_path(data.root, "data.root", "data folder")
        for split in {data.val_split, *([data.train_split] if "method" in cfg else [])}:
            if not (Path(data.root) / split).is_dir():
                raise UserError(f"data.root={data.root} has no '{split}' folder "
                                f"(expected {data.root}/{split}/<class>/*); set data.root to the dataset root")
    elif data.format in LAYOUTS:
        check_layout(data, {"val", *(["train"] if "method" in cfg else [])})


LAYOUTS = {  # format -> (key suffix, is a file) of what each split needs under data.root
    "coco": (("ann", True), ("images", False)),        # annotations/instances_*.json, train2017/
    "mmseg": (("images", False), ("masks", False)),   # images/training/, annotations/training/
}


def check_layout(data: DictConfig, splits: set[str]) -> None:
    """The files/folders of ``LAYOUTS[data.format]`` exist under ``data.root`` for each split."""
    check_path(data.root, "data.root", "data folder")
    for split in sorted(splits):
        for suffix, is_file in LAYOUTS[data.format]:
            key = f"{split}_{suffix}"
            path = Path(data.root) / data[key]
            if not (path.is_file() if is_file else path.is_dir()):
                raise UserError(f"data.{key}={data[key]}: {'file' if is_file else 'folder'} not found under "
                                f"data.root={data.root}; set data.root to the {data.name} root")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def validate_calibrate(cfg: DictConfig) -> None:
    """Everything about a calibration config that can be checked before loading anything."""
    bit_widths(cfg)
    check_policy(cfg)
    check_data(cfg)
    check_path(cfg.model.checkpoint, "model.checkpoint", "checkpoint file")
    resolve_device(cfg.device)


def data_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.*`` keys an evaluate config sets (``conf/evaluate.yaml`` leaves the rest null)."""
    return {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if v is not None}


def evaluation_data(cfg: DictConfig, checkpoint_data: DictConfig) -> DictConfig:
    """The data an evaluation uses: a chosen ``data=<name>`` group as it is, otherwise the checkpoint's
    data with the command line's ``data.*`` keys on top (a moved data set needs only ``data.root=``)."""
    if cfg.data.name is not None:
        return cfg.data
    return OmegaConf.merge(checkpoint_data, data_overrides(cfg))


def validate_evaluate(cfg: DictConfig) -> None:
    """Checkpoint, device and, where the command line names it, the data folder (the rest of the
    data comes from the checkpoint and is checked once it is read)."""
    check_path(cfg.checkpoint, "checkpoint", "quantized checkpoint")
    if cfg.data.name is not None:
        check_data(cfg)
    else:
        check_path(cfg.data.root, "data.root", "data folder")
    resolve_device(cfg.device)
