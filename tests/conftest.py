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


@pytest.fixture
def shared_dir() -> Path:
    """The workplace's shared data/models folder (``VITQUANT_SHARED``); skips when absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set VITQUANT_SHARED)")
    return SHARED
