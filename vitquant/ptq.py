"""Post-training quantization of one model: the function behind ``calibrate.py``.

build task → float model → quant twin with the method's quantizers on the policy's sites →
method stages on calibration images → coverage and finiteness checks → evaluate FP and quantized → write
``quantized.pt``, ``config.yaml`` and, last, ``metrics.json`` (all atomically).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vitquant.config import bit_widths, resolve_device, validate_calibrate
from vitquant.diagnostics import write_site_diagnostics
from vitquant.engines.context import CalibContext
from vitquant.errors import CoverageError
from vitquant.io.atomic import write_json, write_text
from vitquant.io.logger import RunLogger
from vitquant.io.quantized_checkpoint import save_quantized
from vitquant.io.sweep import finished_cell
from vitquant.methods.recipe import Recipe
from vitquant.models.finite import check_calibrated
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import uncalibrated_sites
from vitquant.qat.distributed import require_one_process
from vitquant.runtime import peak_memory, seed_everything, timer
from vitquant.tasks.base import build_task

log = logging.getLogger("vitquant")


def build_recipe(method_cfg: DictConfig) -> Recipe:
    return instantiate(method_cfg, _convert_="all")


def run_calibration(cfg: DictConfig) -> dict[str, Any]:
    """Calibrate, evaluate and save one quantized model; returns the metrics."""
    validate_calibrate(cfg)
    require_one_process("calibrate.py")
    bits = bit_widths(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    if (finished := finished_cell(out_dir)) is not None:
        return finished
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_name = f"{cfg.model.name}-{cfg.method.name}-w{bits.w}a{bits.a}-s{cfg.seed}"
    logger = RunLogger(cfg.logger, run_config, str(out_dir), run_name, job_type="calibrate")
    try:
        task = build_task(cfg.task, cfg.model, cfg.data)
        recipe = build_recipe(cfg.method)
        fp_model = task.build_model().to(device)
        qmodel = quantized_twin(fp_model, recipe, list(cfg.policy.kinds), bits, cfg.seed)
        images, calib_ids = task.calibration_images(recipe.n_calib, cfg.seed)
        logger.summary({"calib_ids": calib_ids})
        ctx = CalibContext(fp_model, images, device, cfg.seed, logger.log, logger.table)
        with timer() as calib:
            recipe.calibrate(qmodel, ctx)
        missing = uncalibrated_sites(qmodel)
        if missing:
            raise CoverageError(f"{len(missing)} enabled quantization sites saw no data during calibration "
                                f"(first: {missing[0]}); the model's forward bypasses them")
        check_calibrated(qmodel, recipe.name)
        if cfg.get("diagnostics"):
            write_site_diagnostics(qmodel, images[: cfg.diagnostics_images], device, out_dir, logger, run_name)
        keys = list(task.metric_keys)
        fp_metrics = dict.fromkeys(keys)
        with timer() as fp_eval:
            if cfg.eval_fp:
                fp_metrics = task.evaluate(fp_model, device)
        with timer() as q_eval:
            q_metrics = task.evaluate(qmodel, device, reference=fp_model)
        metrics = {
            "task": cfg.task.name, "model": cfg.model.name, "method": cfg.method.name, "policy": cfg.policy.name,
            "w_bits": bits.w, "a_bits": bits.a, "end_bits": bits.end_w, "end_a_bits": bits.end_a,
            **{k: q_metrics[k] for k in keys}, **{f"fp_{k}": fp_metrics[k] for k in keys},
            "n_eval_images": q_metrics["n_images"],
            "n_calib": recipe.n_calib, "calib_seconds": calib["seconds"], "eval_seconds": q_eval["seconds"],
            "fp_eval_seconds": fp_eval["seconds"] if cfg.eval_fp else None, **peak_memory(device),
            "seed": cfg.seed, "device": str(device), "primary_metric": task.primary_metric, **ctx.metrics,
        }
        save_quantized(out_dir / "quantized.pt", qmodel, OmegaConf.create(run_config), calib_ids)
        write_text(out_dir / "config.yaml", OmegaConf.to_yaml(run_config))
        write_json(out_dir / "calib_ids.json", calib_ids)
        write_json(out_dir / "metrics.json", metrics)
        logger.artifact(out_dir / "quantized.pt")
        logger.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.summary(metrics)
        log.info("%s %s W%dA%d: %s %.2f (FP %s), calibration %.1fs -> %s", cfg.model.name, cfg.method.name,
                 bits.w, bits.a, keys[0], metrics[keys[0]], metrics[f"fp_{keys[0]}"], metrics["calib_seconds"], out_dir)
        return metrics
    finally:
        logger.finish()
