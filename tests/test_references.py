"""The second CIFAR-10 reference (no final norm, tanh-GELU): its config loads its weights as they are."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SHARED
from hydra import compose, initialize_config_dir
from safetensors import safe_open

from vitquant.cli import CONF_DIR
from vitquant.models.build import build_model

MODEL = "vit_cifar_nofinalnorm"


def calibrate_config(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=[f"model={MODEL}", *overrides])


def weights() -> Path:
    """The reference weights the config points at; skips (with the fix) when they are absent."""
    path = Path(calibrate_config().model.checkpoint)
    if not path.is_file():
        pytest.skip(f"{MODEL} reference weights absent at {path}: run `make reference` to train them")
    return path


def test_config_builds_the_tintn_style_architecture():
    cfg = calibrate_config("model.checkpoint=null")
    model = build_model(cfg.model)
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.Identity)
    assert len(model.blocks) == 4 and model.embed_dim == 48 and model.blocks[0].attn.num_heads == 4
    assert model.blocks[0].norm1.eps == 1e-5 and type(model.blocks[0].mlp.act).__name__ == "GELUTanh"
    assert list(cfg.model.input.mean) == [0.5] * 3 and list(cfg.model.input.std) == [0.5] * 3


def test_config_loads_the_reference_without_overrides():
    path = weights()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == MODEL and float(meta["test_top1"]) > 0.5
    build_model(calibrate_config().model)  # strict load: every key and shape matches


@pytest.mark.slow
def test_reference_reaches_its_stated_top1():
    path = weights()
    if not (SHARED / "data" / "cifar10").is_dir():
        pytest.skip(f"CIFAR-10 not found under {SHARED}/data (set VITQUANT_SHARED)")
    with safe_open(str(path), "pt") as f:
        stated = 100 * float(f.metadata()["test_top1"])
    from vitquant.tasks.base import build_task
    cfg = calibrate_config("data=cifar10", f"data.root={SHARED / 'data' / 'cifar10'}", "task.num_workers=0")
    task = build_task(cfg.task, cfg.model, cfg.data)
    assert task.evaluate(task.build_model())["top1"] == pytest.approx(stated, abs=0.05)
