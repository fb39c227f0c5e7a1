"""A folder of unlabeled images (``data.format=images``): every image file under one folder, no classes.

Natural images without ImageNet labels (the COCO128 object crops of ``scripts/make_imageset.py``, photos of
one's own) are enough to calibrate a quantized ImageNet model and to measure how faithfully it reproduces the
float model (:mod:`vitquant.tasks.fidelity`). Files are found recursively (any depth) and sorted by relative
path, so the order, and with it the seeded calibration draw, is the same on every machine. Items are
``(transform(PIL RGB image), -1)``: ``-1`` says "no label" wherever a class index is expected.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitquant.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
NO_LABEL = -1


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by suffix, case-insensitive), sorted by relative path."""
    if not folder.is_dir():
        raise UserError(f"image folder '{folder}' does not exist or is not a folder; set data.root to the folder "
                        "that holds the split folders (data.root/<split>/*.jpg)")
    try:
        files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    except OSError as e:  # e.g. permission denied on a subfolder
        raise UserError(f"image folder '{folder}' cannot be read ({e.strerror or e}); fix its permissions "
                        "or set data.root to a readable folder") from None
    if not files:
        raise UserError(f"image folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        "set data.root to a folder with images in data.root/<split>/")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


class UnlabeledImages(Dataset):
    """``(transform(image), -1)`` for each image file under ``folder``; ``targets`` is all ``-1``."""

    labeled = False

    def __init__(self, folder: str | Path, transform: Callable | None = None) -> None:
        self.folder, self.transform = Path(folder), transform
        self.files = image_files(self.folder)
        self.targets = [NO_LABEL] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"image '{path}' cannot be read ({type(e).__name__}); remove or replace it") from None
        return (self.transform(image) if self.transform is not None else image), NO_LABEL
