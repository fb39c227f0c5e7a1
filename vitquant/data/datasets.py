"""Datasets from a data config (``conf/data/*.yaml``), dispatched on ``format``.

- ``folder``: torchvision ``ImageFolder`` over ``root/<split>/<class>/*`` (ImageNet, CIFAR-10 as
  JPEGs). Classes are the sorted folder names, which for CIFAR-10 is its label order.
- ``torchvision_cifar10``: ``torchvision.datasets.CIFAR10`` (the original binary release) under
  ``root``, downloaded when missing and online; splits ``train`` and ``test``.
- ``digits``: the embedded demo set (:mod:`vitquant.data.digits`); ``root`` is unused.
- ``images``: unlabeled images, every image file under ``root/<split>/`` (any depth, sorted paths), no class
  folders (:mod:`vitquant.data.unlabeled`). Items carry the label ``-1``; classification reports only the
  label-free fidelity metrics on them (:mod:`vitquant.tasks.fidelity`).

Every item is ``(transform(PIL RGB image), class index)``; every dataset has ``targets``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, ImageFolder

from vitquant.data.digits import DigitsDataset
from vitquant.data.unlabeled import UnlabeledImages
from vitquant.errors import UserError

FORMATS = ("folder", "torchvision_cifar10", "digits", "images")
UNLABELED_FORMATS = ("images",)


def has_labels(data_cfg: Mapping[str, Any]) -> bool:
    """Whether the data config's items carry class labels (``images`` folders do not)."""
    return data_cfg["format"] not in UNLABELED_FORMATS


def _root(data_cfg: Mapping[str, Any]) -> Path:
    if data_cfg.get("root") is None:
        raise UserError(f"data.format={data_cfg['format']} needs data.root (the dataset folder)")
    return Path(data_cfg["root"])


def _folder(data_cfg: Mapping[str, Any], split: str, transform: Callable | None) -> Dataset:
    root = _root(data_cfg)
    if not (root / split).is_dir():
        raise UserError(f"data root '{root}' has no '{split}' folder (expected {root}/{split}/<class>/*); "
                        "set data.root=<dataset root>")
    return ImageFolder(str(root / split), transform=transform)


def _cifar10(data_cfg: Mapping[str, Any], split: str, transform: Callable | None) -> Dataset:
    if split not in ("train", "test"):
        raise UserError(f"torchvision CIFAR-10 has splits 'train' and 'test', not '{split}'")
    root = _root(data_cfg)
    try:
        return CIFAR10(str(root), train=split == "train", download=True, transform=transform)
    except (OSError, RuntimeError) as e:  # URLError/socket errors offline; RuntimeError for a bad archive
        raise UserError(f"CIFAR-10 is not under '{root}' and could not be downloaded ({type(e).__name__}); "
                        "put cifar-10-batches-py there or use data.format=folder with JPEG folders") from None


def build_dataset(data_cfg: Mapping[str, Any], split: str, transform: Callable | None = None) -> Dataset:
    """The ``split`` (e.g. ``data.train_split``/``data.val_split``) of the configured dataset."""
    fmt = data_cfg["format"]
    if fmt == "folder":
        return _folder(data_cfg, split, transform)
    if fmt == "torchvision_cifar10":
        return _cifar10(data_cfg, split, transform)
    if fmt == "digits":
        return DigitsDataset(split, transform)
    if fmt == "images":
        return UnlabeledImages(_root(data_cfg) / split, transform)
    raise UserError(f"data.format={fmt} is not supported; valid: {', '.join(FORMATS)}")
