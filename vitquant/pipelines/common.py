"""What the pipelines share: the recipe of a method config, the quantized model a checkpoint describes,
the header (model, method, policy, bits) and name of a run, and writing a run's files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vitquant.config import bit_widths
from vitquant.io.atomic import write_json, write_text
from vitquant.io.logger import RunLogger
from vitquant.io.quantized_checkpoint import load_quantized_state, save_quantized
from vitquant.methods.recipe import Recipe
from vitquant.models.quantize import quantized_twin


def build_recipe(method_cfg: DictConfig) -> Recipe:
    """The ``Recipe`` of a ``method`` (or ``qat``) config: quantizer factories per site kind + ordered stages."""
    return instantiate(method_cfg, _convert_="all")


def rebuild_quantized(run_cfg: DictConfig, state: dict, path: str, task) -> nn.Module:
    """The quantized model described by a checkpoint's config, with its state loaded: model without weights
    → quant twin with the method's quantizers at the run's bits → the checkpoint's state."""
    fp_model = task.build_model(load_weights=False)
    qmodel = quantized_twin(fp_model, build_recipe(run_cfg.method), list(run_cfg.policy.kinds),
                            bit_widths(run_cfg), run_cfg.seed)
    load_quantized_state(qmodel, state, path)
    return qmodel


def run_header(cfg: DictConfig) -> dict[str, Any]:
    """The first keys of every ``metrics.json``: what was quantized, how, and at which bits (from a run's
    config or a checkpoint's)."""
    return {"model": cfg.model.name, "method": cfg.method.name, "policy": cfg.policy.name,
            "w_bits": cfg.w_bits, "a_bits": cfg.a_bits, "end_bits": cfg.end_bits, "end_a_bits": cfg.end_a_bits}


def run_name(cfg: DictConfig, job: str | None = None, method: str | None = None) -> str:
    """``<model>-<method>-w<W>a<A>-s<seed>`` for a run that makes a model (calibrate, train: ``method`` is the
    QAT recipe's name there), ``<job>-<model>-<method>-w<W>a<A>`` for one that reads a checkpoint's config
    (evaluate, export) — the W&B run name."""
    core = f"{cfg.model.name}-{method or cfg.method.name}-w{cfg.w_bits}a{cfg.a_bits}"
    return f"{job}-{core}" if job else f"{core}-s{cfg.seed}"


def save_run(out_dir: Path, model: nn.Module, run_config: dict[str, Any], calib_ids: list[int],
             metrics: dict[str, Any], logger: RunLogger, extra_json: dict[str, Any] | None = None) -> None:
    """Write ``quantized.pt`` (state + resolved config), ``config.yaml``, the ``extra_json`` files and, last,
    ``metrics.json`` (its presence marks the run finished: ``io.sweep.finished_cell``), all atomically; then
    hand ``quantized.pt`` to the logger as an artifact."""
    save_quantized(out_dir / "quantized.pt", model, OmegaConf.create(run_config), calib_ids)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(run_config))
    for name, value in (extra_json or {}).items():
        write_json(out_dir / name, value)
    write_json(out_dir / "metrics.json", metrics)
    logger.artifact(out_dir / "quantized.pt")
