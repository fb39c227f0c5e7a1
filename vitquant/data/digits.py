"""The embedded demo data set: scikit-learn's handwritten digits, as small RGB images.

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8×8 images (values 0..16, 10 classes) inside
the installed package, so the demo needs no download. Each image is scaled to [0, 1], upsampled to
16×16 (bilinear, ``align_corners=False``) so that a ViT with 4-px patches sees a 4×4 token grid,
repeated to 3 channels and stored as 8-bit RGB, like every other image source: the model's
evaluation transform then applies (``vit_digits``: ``ToTensor`` + ``Normalize(0.5, 0.5)``, i.e.
values in [-1, 1]). Raw [0, 1] statistics of the train split, per channel: mean 0.31, std 0.32.

Split: one permutation of the 1,797 indices from ``torch.Generator().manual_seed(0)``; its first
500 are ``test``, the other 1,297 ``train``, each kept in the original (class-interleaved) order.
"""
from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from vitquant.errors import UserError
from vitquant.extras import require

SIZE = 16
SPLIT_SEED = 0
N_TEST = 500
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, 16, 16, 3) and their labels (N,)."""
    digits = require("sklearn.datasets", "demo").load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    return images.contiguous(), torch.as_tensor(digits.target, dtype=torch.long)


def split_indices(split: str) -> list[int]:
    """Indices of ``split`` into the full set (train 1,297, test 500; fixed, seeded)."""
    if split not in SPLITS:
        raise UserError(f"digits has splits {SPLITS}, not '{split}'; set data.train_split/data.val_split")
    perm = torch.randperm(len(digits_arrays()[1]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    ids = perm[:N_TEST] if split == "test" else perm[N_TEST:]
    return sorted(ids.tolist())


class DigitsDataset(Dataset):
    """One split; items are ``(transform(PIL RGB image), label)``, or a [0, 1] (3, 16, 16) tensor
    when ``transform`` is None."""

    classes: ClassVar[list[str]] = [str(d) for d in range(10)]

    def __init__(self, split: str, transform=None):
        images, labels = digits_arrays()
        ids = split_indices(split)
        self.images, self.transform = images[ids], transform
        self.targets = labels[ids].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if self.transform is None:
            return image.permute(2, 0, 1).float() / 255, self.targets[i]
        return self.transform(Image.fromarray(image.numpy())), self.targets[i]
