"""Shared fixtures: one torch thread, a fixed seed, W&B off, tiny models and the shared data root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITQUANT_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    """A 2-block ViT at 32×32 (timm VisionTransformer), in eval mode."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10).eval()


@pytest.fixture
def tiny_swin() -> torch.nn.Module:
    """A 2-stage Swin at 32×32 with shifted windows and patch merging, in eval mode."""
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2),
                           num_heads=(2, 4), num_classes=10).eval()



# Export tests (tests/export): run an exported model in ONNX Runtime; the one-step logit tolerance.
@pytest.fixture
def onnx_logits(tmp_path):
    """``run(onnx_model, images) -> logits`` through an ONNX Runtime session (skips without onnxruntime)."""
    pytest.importorskip("onnxruntime")
    import onnx

    from vitquant.export.onnx_runtime import session

    def run(model, x: torch.Tensor):
        path = tmp_path / "m.onnx"
        onnx.save(model, path)
        return session(str(path)).run(None, {"images": x.numpy()})[0]

    return run


@pytest.fixture
def logit_step():
    """``step(q)``: the logit change when every element of the classifier input is one quantization step
    off, Δ_in · max_k ‖W_k‖₁. Integer accumulation (ORT) and float accumulation (fake quant) round
    differently, so codes at rounding ties may flip by one step in the layers before the head."""
    def step(q) -> float:
        head = q.get_classifier()
        return float(head.input_site.quantizer.scale.max() * head.weight.detach().abs().sum(1).max())

    return step


@pytest.fixture
def shared_dir() -> Path:
    """The workplace's shared data/models folder (``VITQUANT_SHARED``); skips when absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set VITQUANT_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def semseg_root(tmp_path_factory) -> Path:
    """bench.coco128_semseg's semantic-segmentation set for the first 4 COCO128 images (the mm segmentation tests)."""
    from bench.coco128_semseg import generate

    if not (SHARED / "data" / "coco128").is_dir():
        pytest.skip(f"coco128 not found under {SHARED}/data (set VITQUANT_SHARED)")
    return generate(SHARED / "data" / "coco128", tmp_path_factory.mktemp("semseg"), limit=4)


def make_image_folder(root: Path, counts: dict[str, int], n_classes: int = 3, size: int = 32) -> Path:
    """root/<split>/c<k>/<i>.png with ``counts[split]`` random RGB images per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for k in range(n_classes):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{k}" / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A tiny ImageFolder data set: train/ (6 per class) and val/ (4 per class), 3 classes, 32 px."""
    return make_image_folder(tmp_path / "data", {"train": 6, "val": 4})


# Overrides that make any calibrate config run in seconds: a 2-block ViT at 32 px on the tiny folder.
COMMON = ["data=cifar10", "data.val_split=val", "task.num_workers=0", "method.n_calib=8", "logger=none"]
TINY_RUN = ["model=vit_cifar", "model.kwargs.depth=2", "model.kwargs.embed_dim=48", "model.kwargs.patch_size=8",
            "model.kwargs.num_classes=3", *COMMON]
# A 2-stage Swin (shifted windows, one patch merging) at 32 px.
TINY_SWIN_RUN = ["model=swin_cifar", "model.kwargs.depths=[2,2]", "model.kwargs.num_heads=[2,4]",
                 "model.kwargs.embed_dim=24", "model.kwargs.num_classes=3", *COMMON]


def run_config_factory(base: list[str], tmp_path: Path):
    """``make(*overrides, name=, out=)`` → a composed ``name`` config (``base`` first when it is a calibration),
    writing under ``tmp_path / out``: what every run fixture of the suite returns."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR

    def make(*overrides: str, name: str = "calibrate", out: str = "run"):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(name, overrides=(base if name == "calibrate" else []) + list(overrides))
        with open_dict(cfg):
            cfg.out_dir = str(tmp_path / out)
        return cfg

    return make


@pytest.fixture
def tiny_run(image_folder, tmp_path):
    """``compose(*overrides)`` → a calibrate config on the tiny model and data, writing under tmp_path."""
    data = [f"data.root={image_folder}"]
    vit_run = run_config_factory(TINY_RUN + data, tmp_path)
    swin_run = run_config_factory(TINY_SWIN_RUN + data, tmp_path)

    def make(*overrides: str, name: str = "calibrate", out: str = "run", swin: bool = False):
        return (swin_run if swin else vit_run)(*overrides, name=name, out=out)

    return make
