"""Offline multi-crop KD (FKD, the official VVTQ route): store crops + top-k teacher probabilities,
then replay them during training so large runs need no online teacher.

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
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from vitquant.config import resolve_device
from vitquant.data.datasets import build_dataset
from vitquant.data.training import as_pil, sample_seed, train_subset
from vitquant.errors import UserError
from vitquant.io.atomic import save_torch, write_json
from vitquant.qat.losses import dense_from_topk

log = logging.getLogger("vitquant")
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


@torch.no_grad()
def write_soft_labels(cfg: DictConfig) -> dict[str, Any]:
    """Draw and store ``soft_labels.n_stored`` crops per training image with the teacher's top-k."""
    from vitquant.ptq import build_task
    from vitquant.qat.teacher import build_teacher

    folder = Path(cfg.soft_labels.dir)
    device = resolve_device(cfg.device)
    task = build_task(cfg.task, cfg.model, cfg.data)
    teacher = build_teacher({**cfg.teacher, "name": "float"}, cfg.model, task.build_model().to(device))
    data = train_subset(build_dataset(cfg.data, cfg.data.train_split), cfg.data.max_train_images, cfg.seed)
    size, n, k = int(cfg.model.input.size), int(cfg.soft_labels.n_stored), int(cfg.soft_labels.topk)
    scale = tuple(cfg.data.crop_scale)
    classes = None
    for i in tqdm(range(len(data)), desc="soft labels", disable=None):
        image = as_pil(data[i][0])
        src = source_index(data, i)
        gen = torch.Generator().manual_seed(sample_seed(cfg.seed, -1, src))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            boxes = [list(T.RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3))) for _ in range(n)]
            flips = (torch.rand(n) < float(cfg.data.hflip)).tolist()
        batch = torch.stack([to_input(crop(image, b, f, size), cfg.model.input) for b, f in zip(boxes, flips)])
        probs = teacher(batch.to(device)).float().softmax(-1).cpu()
        classes = probs.shape[-1]
        top = probs.topk(min(k, classes), dim=-1)
        save_torch(record_path(folder, src), {"boxes": torch.tensor(boxes, dtype=torch.int32),
                                              "flips": torch.tensor(flips), "topk_index": top.indices.to(torch.int16),
                                              "topk_prob": top.values.half()})
    meta = {"classes": classes, "k": k, "size": size, "n_stored": n, "images": len(data),
            "teacher": dict(cfg.teacher), "model": cfg.model.name}
    write_json(folder / META, meta)
    log.info("soft labels: %d images x %d crops, top-%d -> %s", len(data), n, k, folder)
    return meta
