"""Offline multi-crop KD (FKD, the official VVTQ route): the store of crops + top-k teacher probabilities,
replayed during training so large runs need no online teacher (written by :mod:`vitquant.pipelines.soft_labels`).

``soft_labels.py`` (same config as ``train.py``) writes, per training image ``i``,
``<dir>/<i>.pt`` = {``boxes`` (n, 4) int (top, left, height, width in source pixels), ``flips`` (n,)
bool, ``topk_index`` (n, k), ``topk_prob`` (n, k)} for ``n = soft_labels.n_stored`` random-resized
crops drawn from a seed of (seed, i), and ``<dir>/meta.json`` (classes, k, size, n_stored).
Training with ``soft_labels.dir=<dir>`` replays ``qat.n_crops`` of the stored crops per image and
step (chosen from the sampler's per-item seed), rebuilt exactly (``resized_crop``, bilinear, the
model's size) and paired with the dense ``marginal_smoothing_k`` target: top-k probabilities kept,
the remaining mass spread uniformly over the other classes.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from vitquant.data.training import as_pil
from vitquant.errors import UserError
from vitquant.qat.losses import dense_from_topk

META = "meta.json"


def record_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"{index:08d}.pt"


def source_index(dataset: Dataset, i: int) -> int:
    """Index of item ``i`` in the full split (soft labels are keyed by it, subsets share them)."""
    return dataset.indices[i] if hasattr(dataset, "indices") else i


def to_input(image, input_cfg: Mapping[str, Any]) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), list(input_cfg["mean"]), list(input_cfg["std"]))


def crop(image, box: list[int], flip: bool, size: int):
    out = TF.resized_crop(image, *box, [size, size], interpolation=InterpolationMode.BILINEAR)
    return TF.hflip(out) if flip else out


class SoftLabelCrops(Dataset):
    """Items ``(crops (n_crops, C, H, W), label, soft targets (n_crops, classes))`` from a store."""

    def __init__(self, base: Dataset, folder: str | Path, n_crops: int, input_cfg: Mapping[str, Any]) -> None:
        meta_path = Path(folder) / META
        if not meta_path.is_file():
            raise UserError(f"soft_labels.dir={folder} has no {META}; write it with soft_labels.py first")
        self.meta = json.loads(meta_path.read_text())
        self.base, self.folder, self.n_crops, self.input_cfg = base, Path(folder), int(n_crops), input_cfg
        if self.n_crops > self.meta["n_stored"]:
            raise UserError(f"qat.n_crops={n_crops} exceeds the {self.meta['n_stored']} crops stored per image")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, torch.Tensor]:
        index, seed = item
        image, label = self.base[index]
        image = as_pil(image)
        path = record_path(self.folder, source_index(self.base, index))
        if not path.is_file():
            raise UserError(f"{path}: missing soft labels for training image {index}; regenerate soft_labels.dir")
        rec = torch.load(path, weights_only=True)
        pick = torch.randperm(len(rec["flips"]), generator=torch.Generator().manual_seed(seed))[: self.n_crops]
        crops = torch.stack([to_input(crop(image, rec["boxes"][j].tolist(), bool(rec["flips"][j]), self.meta["size"]),
                                      self.input_cfg) for j in pick.tolist()])
        soft = dense_from_topk(rec["topk_index"][pick], rec["topk_prob"][pick].float(), self.meta["classes"])
        return crops, label, soft
