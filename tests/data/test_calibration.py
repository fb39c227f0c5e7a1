"""Seeded calibration draws: deterministic, nested across sizes, bounded by the split."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from vitquant.data.calibration import calibration_ids, load_images
from vitquant.errors import UserError


def test_small_set_is_a_prefix_of_the_large_one():
    large = calibration_ids(50_000, 1024, seed=3)
    assert calibration_ids(50_000, 32, seed=3) == large[:32]
    assert len(set(large)) == 1024 and all(0 <= i < 50_000 for i in large)


def test_deterministic_per_seed_and_different_across_seeds():
    assert calibration_ids(1000, 32, seed=0) == calibration_ids(1000, 32, seed=0)
    assert calibration_ids(1000, 32, seed=0) != calibration_ids(1000, 32, seed=1)


def test_same_as_one_seeded_randperm():
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(7))[:5].tolist()
    assert calibration_ids(100, 5, seed=7) == expected


@pytest.mark.parametrize("n", [0, 11])
def test_size_out_of_range(n):
    with pytest.raises(UserError, match=f"cannot draw {n} calibration images from a training split of 10"):
        calibration_ids(10, n, seed=0)


def test_load_images_stacks_in_id_order():
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    out = load_images(TensorDataset(images, torch.zeros(5)), [4, 0, 2])
    assert out.shape == (3, 3, 2, 2) and out[:, 0, 0, 0].tolist() == [4.0, 0.0, 2.0]
