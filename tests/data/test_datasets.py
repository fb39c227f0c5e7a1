"""Datasets from data configs: image folders, the digits demo set, and one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vitquant.data import datasets
from vitquant.data.datasets import build_dataset
from vitquant.data.digits import DigitsDataset, split_indices
from vitquant.data.transforms import eval_transform
from vitquant.errors import UserError

INPUT = {"size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": False}


@pytest.fixture
def folder(tmp_path) -> Path:
    """root/val/<class>/*.png with 2 cats and 1 dog (8×8)."""
    for cls, count in {"cat": 2, "dog": 1}.items():
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), color=(255, 255, 255)).save(tmp_path / "val" / cls / f"{i}.png")
    return tmp_path


def test_image_folder(folder):
    data = build_dataset({"format": "folder", "root": str(folder)}, "val", eval_transform(INPUT))
    assert data.classes == ["cat", "dog"] and data.targets == [0, 0, 1]
    image, label = data[2]
    assert label == 1 and image.shape == (3, 8, 8) and torch.allclose(image, torch.ones(3, 8, 8))


def test_missing_split_folder_names_root_and_fix(folder):
    with pytest.raises(UserError, match=rf"data root '{folder}' has no 'train' folder.*set data.root="):
        build_dataset({"format": "folder", "root": str(folder)}, "train", None)


def test_unknown_format_lists_valid_ones():
    valid = "data.format=lmdb is not supported; valid: folder, torchvision_cifar10, digits"
    with pytest.raises(UserError, match=valid):
        build_dataset({"format": "lmdb", "root": "x"}, "val", None)


def test_cifar10_offline_is_one_line(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setattr(datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="could not be downloaded.*data.format=folder"):
        build_dataset({"format": "torchvision_cifar10", "root": str(tmp_path)}, "test", None)


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test = split_indices("train"), split_indices("test")
    assert (len(train), len(test)) == (1297, 500)
    assert sorted(train + test) == list(range(1797))
    assert split_indices("test") == test


def test_digits_items():
    raw = DigitsDataset("test")
    image, label = raw[0]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1 and 0 <= label <= 9
    assert torch.equal(image[0], image[2])  # grayscale repeated to RGB
    normalized, _ = build_dataset({"format": "digits", "root": None}, "test", eval_transform(INPUT))[0]
    torch.testing.assert_close(normalized, (image - 0.5) / 0.5)
