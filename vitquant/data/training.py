"""Training data for QAT: train transforms, multi-crop items and a resumable distributed sampler.

Exact resume needs every random choice of an epoch to be a function of (seed, epoch, position):

* ``ResumableSampler`` is a ``DistributedSampler`` (seeded shuffle per epoch, rank-strided shard)
  that can start at a batch offset and yields ``(index, sample_seed)`` pairs;
* ``MultiCropDataset`` draws the crops of an item from ``sample_seed`` (not from the worker's RNG),
  so the same item gets the same crops whichever worker loads it and whether or not the run was
  interrupted. Mid-epoch resume is therefore exact, not only resume at epoch boundaries.

Train transforms (``data.train_transform``): ``random_resized_crop`` (timm/DeiT: area scale
``crop_scale``, bicubic, then flip) or ``pad_crop`` (the 32-px CIFAR recipe: pad ``pad`` pixels,
random crop back, flip); ``auto`` picks ``pad_crop`` for models fed at their native size
(``model.input.resize: false``) and ``random_resized_crop`` otherwise.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Subset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import to_pil_image

from vitquant.data.calibration import calibration_ids
from vitquant.errors import UserError

TRAIN_TRANSFORMS = ("auto", "pad_crop", "random_resized_crop")


def train_transform(input_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> T.Compose:
    """PIL image → one augmented, normalised (3, size, size) crop."""
    kind = data_cfg.get("train_transform", "auto")
    if kind not in TRAIN_TRANSFORMS:
        raise UserError(f"data.train_transform={kind} is not one of {', '.join(TRAIN_TRANSFORMS)}")
    if kind == "auto":
        kind = "random_resized_crop" if input_cfg.get("resize", True) else "pad_crop"
    size = int(input_cfg["size"])
    if kind == "pad_crop":
        crop = T.RandomCrop(size, padding=int(data_cfg.get("pad", 4)))
    else:
        interpolation = InterpolationMode(str(input_cfg.get("interpolation", "bicubic")))
        crop = T.RandomResizedCrop(size, scale=tuple(data_cfg.get("crop_scale", (0.08, 1.0))),
                                   interpolation=interpolation)
    return T.Compose([crop, T.RandomHorizontalFlip(float(data_cfg.get("hflip", 0.5))), T.ToTensor(),
                      T.Normalize(tuple(input_cfg["mean"]), tuple(input_cfg["std"]))])


def train_subset(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    """A seeded subset of ``max_images`` training images (all when None), in index order."""
    if max_images is None or int(max_images) >= len(dataset):
        return dataset
    return Subset(dataset, sorted(calibration_ids(len(dataset), int(max_images), seed)))


def as_pil(image: Image.Image | torch.Tensor) -> Image.Image:
    """The PIL image the train transforms expect. A source that yields a [0, 1] float tensor without a
    transform (the embedded digits: 8-bit pixels / 255) becomes 8-bit RGB again, exactly: round(x·255)."""
    if isinstance(image, torch.Tensor):
        return to_pil_image((image * 255).round().clamp(0, 255).to(torch.uint8))
    return image


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation in one epoch (distinct for every triple)."""
    return ((seed * 1_000_003 + epoch) * 100_000_007 + index) % (2**63 - 1)


class MultiCropDataset(Dataset):
    """Items ``(crops (n_crops, C, H, W), label)`` drawn with the seed the sampler hands over.

    ``base`` returns PIL images or [0, 1] tensors (no transform; see ``as_pil``); ``transform`` makes one crop.
    """

    def __init__(self, base: Dataset, transform: Callable, n_crops: int) -> None:
        self.base, self.transform, self.n_crops = base, transform, int(n_crops)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        image, label = self.base[index]
        image = as_pil(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            crops = torch.stack([self.transform(image) for _ in range(self.n_crops)])
        return crops, label


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first ``start_batch`` batches of an epoch and
    yields ``(index, sample_seed)`` so the dataset's augmentation is reproducible."""

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self.start_batch = int(batch_size), 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.set_epoch(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[: self.batches_per_epoch * self.batch_size]
        for index in indices[self.start_batch * self.batch_size:]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
