"""Write the offline multi-crop KD store (FKD): the function behind ``soft_labels.py``.

Per training image, ``soft_labels.n_stored`` random-resized crops (seeded by (seed, image index)) and the
float teacher's top-k probabilities on them; the format is in :mod:`vitquant.qat.soft_labels`, which
``train.py ... soft_labels.dir=<dir>`` replays.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchvision import transforms as T
from tqdm.auto import tqdm

from vitquant.config import resolve_device
from vitquant.data.datasets import build_dataset
from vitquant.data.training import as_pil, sample_seed, train_subset
from vitquant.io.atomic import save_torch, write_json
from vitquant.qat.soft_labels import META, crop, record_path, source_index, to_input
from vitquant.qat.teacher import build_teacher
from vitquant.tasks.base import build_task

log = logging.getLogger("vitquant")


@torch.no_grad()
def write_soft_labels(cfg: DictConfig) -> dict[str, Any]:
    """Draw and store ``soft_labels.n_stored`` crops per training image with the teacher's top-k."""
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
