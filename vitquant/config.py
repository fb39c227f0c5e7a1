"""Checks on a composed run config that Hydra's own schema cannot express.

Each failure is one line naming the bad value and what is valid, raised before any work starts
(the entry scripts' pre-flight runs these before Hydra creates a run folder; the pipelines run them
again first thing, for callers that skip the pre-flight).
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vitquant.errors import UserError
from vitquant.io.quantized_checkpoint import FORMAT as QUANTIZED_FORMAT
from vitquant.io.sweep import sweep_name
from vitquant.methods.recipe import BitWidths
from vitquant.models.pretrained_input import timm_input
from vitquant.nn.site import SITE_KINDS
from vitquant.tasks.base import check_task

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
if not OmegaConf.has_resolver("vq.timm_input"):  # conf/model_input/timm.yaml
    OmegaConf.register_new_resolver("vq.timm_input", timm_input)


def model_base() -> DictConfig:
    """What every ``model`` config starts from (``model_base@model``, first in calibrate.yaml and train.yaml).

    ``kwargs`` is not in struct mode, so ``model.kwargs.depth=6`` passes any timm constructor argument without
    Hydra's ``+``; every other key stays in struct mode, where a typo (``model.kwarg.depth=6``) still fails.
    """
    node = OmegaConf.create({"kwargs": {}})
    OmegaConf.set_struct(node.kwargs, False)
    return node


ConfigStore.instance().store(name="model_base", node=model_base())
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


def load_lazily(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path`` without reading tensor data (memory-mapped) when the file
    is in torch's zip format. Official DeiT files pickle an ``argparse.Namespace``: allowed, as on load."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def check_weights(value: str | None, key: str) -> None:
    """``key`` (``model.checkpoint``, ``teacher.checkpoint``, ``model.pretrained``) names a weights file: a
    ``.safetensors`` header or a torch file that unpickles safely. Only the header/pickle is read, so a wrong
    file (``/etc/passwd``) is refused up front, by its key; whether the weights fit the model is checked on load."""
    if value is None:
        return
    path = Path(value)
    if not path.is_file():
        raise UserError(f"{key}={value}: weights file not found (paths are relative to the launch directory)")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                f.keys()
        else:
            load_lazily(path)
    except Exception as e:  # noqa: BLE001 - every reader failure means the same to the user
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        raise UserError(f"{key}={value} is not a weights file ({type(e).__name__}: {reason}); set {key} to a "
                        ".pth/.pt/.bin/.safetensors state dict") from None


def read_run_config(value: str | None, key: str) -> DictConfig:
    """The run config inside the quantized checkpoint ``key`` (``checkpoint``, ``init``) names; tensors unread."""
    path = Path(str(value))
    if value is None or not path.is_file():
        raise UserError(f"{key}={value}: quantized checkpoint not found; pass the quantized.pt of a calibrate.py "
                        "or train.py run (paths are relative to the launch directory)")
    try:
        blob = load_lazily(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        raise UserError(f"{key}={value} is corrupt or not a vitquant quantized checkpoint ({type(e).__name__}); "
                        "pass the quantized.pt of a calibrate.py or train.py run") from None
    if not isinstance(blob, dict) or blob.get("format") != QUANTIZED_FORMAT:
        raise UserError(f"{key}={value} is not a vitquant quantized checkpoint (expected format "
                        f"{QUANTIZED_FORMAT}); pass the quantized.pt of a calibrate.py or train.py run")
    return OmegaConf.create(blob["config"])


def check_model_weights(model: DictConfig) -> None:
    """``model.checkpoint`` and, for mm models (an ImageNet backbone file), ``model.pretrained``."""
    check_weights(model.get("checkpoint"), "model.checkpoint")
    if isinstance(model.get("pretrained"), str):
        check_weights(model.pretrained, "model.pretrained")


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
    check_task(cfg.task, cfg.model, cfg.data)
    check_data(cfg)
    check_model_weights(cfg.model)
    resolve_device(cfg.device)


def set_keys(node: DictConfig) -> dict[str, Any]:
    """The keys of an evaluate config's ``data``/``task`` node that the command line set (the rest are null)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def evaluation_data(cfg: DictConfig, checkpoint_data: DictConfig) -> DictConfig:
    """The data an evaluation uses: a chosen ``data=<name>`` group as it is, otherwise the checkpoint's
    data with the command line's ``data.*`` keys on top (a moved data set needs only ``data.root=``)."""
    if cfg.data.name is not None:  # resolved here: its ${paths.*} name the root, which a detached copy lacks
        return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    return OmegaConf.merge(checkpoint_data, set_keys(cfg.data))


def evaluation_task(cfg: DictConfig, checkpoint_task: DictConfig) -> DictConfig:
    """The task an evaluation runs: a chosen ``task=<name>`` group as it is, otherwise the checkpoint's
    task with the command line's ``task.*`` keys on top (``task.max_eval_images=100``)."""
    if cfg.task.get("name") is not None:
        return cfg.task
    return OmegaConf.merge(checkpoint_task, set_keys(cfg.task))


def validate_evaluate(cfg: DictConfig) -> DictConfig:
    """Checkpoint, the task and data it is evaluated on (its own unless the command line says otherwise)
    and device; returns the checkpoint's run config."""
    run_cfg = read_run_config(cfg.checkpoint, "checkpoint")
    data = evaluation_data(cfg, run_cfg.data)
    check_task(evaluation_task(cfg, run_cfg.task), run_cfg.model, data)
    check_data(OmegaConf.create({"data": data}))
    resolve_device(cfg.device)
    return run_cfg
