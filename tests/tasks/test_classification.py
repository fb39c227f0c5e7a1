"""Classification task: accuracy bookkeeping, calibration draws, and the CIFAR-10 reference model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitquant.tasks.classification import ClassificationTask

INPUT = {"size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": False}
TINY = {"arch": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": None, "input": INPUT,
        "kwargs": {"img_size": 8, "patch_size": 4, "embed_dim": 24, "depth": 1, "num_heads": 2, "num_classes": 3}}
CIFAR_INPUT = {"size": 32, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.4914, 0.4822, 0.4465],
               "std": [0.2470, 0.2435, 0.2616], "resize": False}
# The shared reference models (shared/models/README.md): config, checkpoint file, README top-1.
REFERENCES = {
    "vit_cifar": ({"arch": "vit_tiny_patch16_224", "input": CIFAR_INPUT, "kwargs": {
        "img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3, "mlp_ratio": 4,
        "num_classes": 10}},
        "vit_cifar10.safetensors", 56.99),
    "swin_cifar": ({"arch": "swin_tiny_patch4_window7_224", "input": CIFAR_INPUT, "kwargs": {
        "img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 48, "depths": [2, 2, 2],
        "num_heads": [3, 6, 12], "num_classes": 10}},
        "swin_cifar10.safetensors", 54.43),
}


class AlwaysClass0(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([3.0, 2.0, 1.0]).expand(len(x), 3)


@pytest.fixture
def data_cfg(tmp_path) -> dict:
    """train/ and val/ folders with 3 classes: val holds 3 + 2 + 1 images (class 0 is 50%)."""
    for split, counts in {"train": (4, 4, 4), "val": (3, 2, 1)}.items():
        for cls, count in enumerate(counts):
            (tmp_path / split / f"c{cls}").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), color=(40 * cls, 10 * i, 0)).save(tmp_path / split / f"c{cls}" / f"{i}.png")
    return {"name": "tiny", "format": "folder", "root": str(tmp_path), "train_split": "train", "val_split": "val"}


def test_constant_model_scores_the_class_frequency(data_cfg):
    metrics = ClassificationTask(TINY, data_cfg, batch_size=4).evaluate(AlwaysClass0(), "cpu")
    assert metrics == {"top1": 50.0, "top5": 100.0, "n_images": 6}


def test_max_eval_images_keeps_an_evenly_spaced_subset(data_cfg):
    task = ClassificationTask(TINY, data_cfg, max_eval_images=4)
    assert task.eval_dataset().indices == [0, 2, 3, 5]  # both classes of the class-sorted folder
    metrics = task.evaluate(AlwaysClass0(), "cpu")
    assert metrics["n_images"] == 4 and metrics["top1"] == 50.0


def test_tiny_vit_evaluates_in_eval_mode(data_cfg):
    task = ClassificationTask(TINY, data_cfg, batch_size=5)
    model = task.build_model().train()
    metrics = task.evaluate(model, torch.device("cpu"))
    assert not model.training and metrics["n_images"] == 6 and 0 <= metrics["top1"] <= metrics["top5"] <= 100


def test_calibration_images_are_seeded_train_images(data_cfg):
    task = ClassificationTask(TINY, data_cfg)
    images, ids = task.calibration_images(5, seed=1)
    again, same_ids = task.calibration_images(5, seed=1)
    assert images.shape == (5, 3, 8, 8) and ids == same_ids and len(set(ids)) == 5
    assert all(0 <= i < 12 for i in ids) and torch.equal(images, again)
    torch.testing.assert_close(images[0], task.dataset("train")[ids[0]][0])


def reference_accuracy(model: nn.Module, root: Path, n: int) -> float:
    """n evenly spaced test images decoded and normalised as in shared/models/train_reference.py."""
    files = sorted((root / "test").glob("*/*.jpg"), key=lambda p: (p.parent.name, p.name))
    files = [files[i] for i in torch.linspace(0, len(files) - 1, n).round().long().tolist()]
    classes = sorted(p.name for p in (root / "test").iterdir())
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    mean, std = (torch.tensor(CIFAR_INPUT[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    with torch.no_grad():
        return 100.0 * (model((x.permute(0, 3, 1, 2).float() / 255 - mean) / std).argmax(-1) == y).float().mean().item()


def cifar_task(shared_dir: Path, name: str, **options) -> ClassificationTask:
    model_cfg, file, _ = REFERENCES[name]
    model_cfg = {**model_cfg, "checkpoint": str(shared_dir / "models" / file)}
    data_cfg = {"format": "folder", "root": str(shared_dir / "data" / "cifar10"), "train_split": "train",
                "val_split": "test"}
    return ClassificationTask(model_cfg, data_cfg, **options)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_model_matches_the_training_recipe_preprocessing(shared_dir, name):
    task = cifar_task(shared_dir, name, max_eval_images=200)
    model = task.build_model()
    metrics = task.evaluate(model, "cpu")
    assert metrics["n_images"] == 200
    assert metrics["top1"] == pytest.approx(reference_accuracy(model, shared_dir / "data" / "cifar10", 200))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_model_full_test_set_top1(shared_dir, name):
    """The shared README's numbers on the 10,000 test JPEGs (about 20 s each on one thread)."""
    task = cifar_task(shared_dir, name)
    assert task.evaluate(task.build_model(), "cpu")["top1"] == pytest.approx(REFERENCES[name][2], abs=0.02)
