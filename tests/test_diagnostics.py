"""Per-site diagnostics: one row per quantized site, SQNR against the float tensor, +inf where nothing is quantized."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vitquant.analysis.diagnostics import block_of, site_errors, sqnr_db
from vitquant.cli import CONF_DIR
from vitquant.config import bit_widths
from vitquant.engines.context import CalibContext
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import quantized_sites
from vitquant.pipelines.calibrate import run_calibration


def calibrated(fp: torch.nn.Module, *overrides: str) -> torch.nn.Module:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=list(overrides))
    recipe = instantiate(cfg.method, _convert_="all")
    q = quantized_twin(fp, recipe, list(cfg.policy.kinds), bit_widths(cfg), seed=0)
    recipe.calibrate(q, CalibContext(fp, torch.randn(4, 3, 32, 32), torch.device("cpu")))
    return q


def test_sqnr_formula():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(5.0, 0.0) == math.inf


def test_block_of_names_vit_and_swin_blocks():
    assert block_of("blocks.3.attn.qkv.input") == "blocks.3"
    assert block_of("layers.1.blocks.0.mlp.fc1.weight") == "layers.1.blocks.0"
    assert block_of("layers.1.downsample.reduction.input") == "layers.1.downsample.reduction"
    assert block_of("head.weight") == "head"


def test_one_row_per_quantized_site_and_inf_where_quantizers_are_off(tiny_vit):
    q = calibrated(tiny_vit, "method=minmax", "bits=4", "policy=full")
    images = torch.randn(3, 3, 32, 32)
    rows = site_errors(q, images, torch.device("cpu"), batch_size=2)
    names = [n for n, _ in quantized_sites(q)]
    assert [r.site for r in rows] == names and len({r.kind for r in rows}) >= 8
    assert all(math.isfinite(r.sqnr_db) and r.mse > 0 for r in rows)
    # weight sites: the float tensor is the weight itself, so both SQNRs agree
    assert all(r.sqnr_db == pytest.approx(r.quantizer_sqnr_db) for r in rows if r.kind == "weight")

    site = dict(quantized_sites(q))["blocks.1.mlp.fc2.input"]
    site.enabled = False
    off = {r.site: r for r in site_errors(q, images, torch.device("cpu"))}
    assert off["blocks.1.mlp.fc2.input"].quantizer_sqnr_db == math.inf and not off["blocks.1.mlp.fc2.input"].enabled

    for _, s in quantized_sites(q):
        s.enabled = False
    rows = site_errors(q, images, torch.device("cpu"))
    assert all(r.sqnr_db == r.quantizer_sqnr_db == math.inf and r.mse == 0 for r in rows)
    assert not site.enabled and all(not s.enabled for _, s in quantized_sites(q))  # flags restored


def test_diagnostics_flag_writes_sites_csv_and_plot(tiny_run):
    cfg = tiny_run("method=repqvit", "bits=4", "diagnostics=true", "diagnostics_images=4")
    run_calibration(cfg)
    out = Path(cfg.out_dir)
    rows = list(csv.DictReader((out / "sites.csv").open()))
    assert len(rows) > 20 and {"site", "kind", "block", "mse", "sqnr_db", "quantizer_sqnr_db"} <= set(rows[0])
    assert all(math.isfinite(float(r["sqnr_db"])) for r in rows)  # RepQ-ViT's reparameterized float twin
    assert (out / "sites_sqnr.png").stat().st_size > 1000 and (out / "metrics.json").exists()
