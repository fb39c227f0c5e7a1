"""Seeded calibration sampling: which training images calibrate a model.

The PTQ-ViT codes draw the calibration set as the first batch of a shuffled *train* loader with the
*val* transform (spec ``protocol.md`` §0). Here the draw is explicit and reproducible: the first
``n`` entries of one ``torch.randperm(n_train)`` from a generator seeded with ``seed``. Because the
permutation does not depend on ``n``, the 32-image set of a seed is a prefix of its 1024-image set,
so methods calibrated with different set sizes share images; the ids are logged with each run.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from vitquant.errors import UserError


def calibration_ids(n_train: int, n: int, seed: int) -> list[int]:
    """Indices of the ``n`` calibration images among ``n_train`` training images."""
    if not 1 <= n <= n_train:
        raise UserError(f"cannot draw {n} calibration images from a training split of {n_train}; "
                        f"use at most {n_train} (method.n_calib)")
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:n].tolist()


def load_images(dataset: Dataset, ids: list[int]) -> torch.Tensor:
    """The transformed images ``dataset[i][0]`` for ``i`` in ``ids``, stacked to (n, C, H, W)."""
    return torch.stack([dataset[i][0] for i in ids])
