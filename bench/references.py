"""Where the CIFAR-10 reference FP checkpoints are: ``$VITQUANT_SHARED/models`` or the cache.

``make reference`` fills the cache for any model missing from shared/, by running the recipe
script that ships beside the shared checkpoints (``train_reference.py``, see its README), or, for
an architecture that script cannot build, ``bench/train_reference.py`` (same recipe).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vitquant.cli import fail

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITQUANT_SHARED", REPO.parent / "shared")).resolve()
CACHE = Path(os.environ.get("VITQUANT_CACHE", Path.home() / ".cache" / "vitquant")) / "reference"

# model config name -> (checkpoint file, recipe arguments from shared/models/README.md)
REFERENCES = {
    "vit_cifar": ("vit_cifar10.safetensors", ["--arch", "vit", "--epochs", "4", "--bs", "256", "--lr", "2e-3"]),
    "swin_cifar": ("swin_cifar10.safetensors", ["--arch", "swin", "--epochs", "4", "--bs", "256", "--lr", "1.5e-3"]),
    "vit_cifar_nofinalnorm": ("vit_cifar10_nofinalnorm.safetensors", ["--epochs", "6", "--bs", "256", "--lr", "2e-3"]),
}
# Architectures the shared script cannot build (described by their model config instead): trained
# with the same recipe by bench/train_reference.py.
PROJECT_RECIPE = {"vit_cifar_nofinalnorm"}


def cifar_root() -> Path:
    return SHARED / "data" / "cifar10"


def reference_checkpoint(model: str) -> Path | None:
    """The shared checkpoint, else the cached one, else None."""
    name = REFERENCES[model][0]
    for folder in (SHARED / "models", CACHE):
        if (folder / name).is_file():
            return folder / name
    return None


def main() -> None:
    script = SHARED / "models" / "train_reference.py"
    for model, (name, args) in REFERENCES.items():
        if reference_checkpoint(model) is not None:
            print(f"{model}: {reference_checkpoint(model)}")
            continue
        if not script.is_file() or not cifar_root().is_dir():
            fail(f"cannot train {model}: need {script} and {cifar_root()}; set VITQUANT_SHARED to the folder "
                 "holding models/ and data/")
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"{model}: training with the shared recipe (about 35 minutes) -> {CACHE / name}", flush=True)
        trainer = ["-m", "bench.train_reference", "--model", model] if model in PROJECT_RECIPE \
            else [str(script), "--data", str(cifar_root())]
        subprocess.run([sys.executable, *trainer, "--out", str(CACHE / name), "--threads", "1", *args],
                       cwd=REPO, check=True)


if __name__ == "__main__":
    main()
