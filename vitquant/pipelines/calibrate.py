"""Post-training quantization of one model: the function behind ``calibrate.py``.

build task → float model → quant twin with the method's quantizers on the policy's sites →
method stages on calibration images → coverage and finiteness checks → evaluate quantized and FP (one pass,
with fidelity metrics, where the task supports it) → write
``quantized.pt``, ``config.yaml`` and, last, ``metrics.json`` (all atomically).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitquant.analysis.diagnostics import write_site_diagnostics
from vitquant.config import bit_widths, resolve_device, validate_calibrate
from vitquant.engines.context import CalibContext
from vitquant.errors import CoverageError
from vitquant.io.logger import RunLogger
from vitquant.io.sweep import finished_cell
from vitquant.models.finite import check_calibrated
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import uncalibrated_sites
from vitquant.pipelines.common import build_recipe, run_header, run_name, save_run
from vitquant.qat.distributed import require_one_process
from vitquant.runtime import peak_memory, seed_everything, timer
from vitquant.tasks.base import build_task
from vitquant.tasks.fidelity import FIDELITY_KEYS

log = logging.getLogger("vitquant")


def evaluate_with_reference(task, qmodel, fp_model, device,
                            eval_fp: bool) -> tuple[dict[str, Any], float, float | None]:
    """Evaluate the quantized model, and the float one in the same pass when the task compares them.

    Returns (metrics, quantized evaluation seconds, float evaluation seconds or None). A task that uses a
    ``reference`` (classification) runs both models on each batch: the float logits are computed once and give
    both ``fp_*`` and the fidelity metrics, and each model's seconds are the shared loop minus the other's
    forward passes. With ``eval_fp=false`` the float model still runs (fidelity is measured on every
    evaluation) but its own metrics are not reported. Other tasks evaluate the two models one after the other.
    """
    with timer() as t:
        metrics = task.evaluate(qmodel, device, reference=fp_model if task.compares_to_reference else None)
    if "reference_seconds" in metrics:
        if not eval_fp:
            metrics = {k: v for k, v in metrics.items() if not k.startswith("fp_")}
        return (metrics, t["seconds"] - metrics["reference_seconds"],
                t["seconds"] - metrics["model_seconds"] if eval_fp else None)
    if not eval_fp:
        return metrics, t["seconds"], None
    with timer() as fp_eval:
        fp_metrics = task.evaluate(fp_model, device)
    return {**metrics, **{f"fp_{k}": v for k, v in fp_metrics.items()}}, t["seconds"], fp_eval["seconds"]


def fidelity_summary(metrics: dict[str, Any]) -> str:
    """``agree 97.1%, KL 0.052, SQNR 18.3 dB`` for the log line ('' without fidelity metrics)."""
    if "agree_top1" not in metrics:
        return "no fidelity metrics"
    return f"agree {metrics['agree_top1']:.1f}%, KL {metrics['kl']:.3g}, SQNR {metrics['logit_sqnr_db']:.1f} dB"


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
    name = run_name(cfg)
    logger = RunLogger(cfg.logger, run_config, str(out_dir), name, job_type="calibrate")
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
            write_site_diagnostics(qmodel, images[: cfg.diagnostics_images], device, out_dir, logger, name)
        keys = list(task.metric_keys)
        q_metrics, eval_seconds, fp_eval_seconds = evaluate_with_reference(task, qmodel, fp_model, device,
                                                                           cfg.eval_fp)
        metrics = {
            "task": cfg.task.name, **run_header(cfg),
            **{k: q_metrics[k] for k in keys},
            **{f"fp_{k}": q_metrics.get(f"fp_{k}") for k in keys if k not in FIDELITY_KEYS},
            **{k: q_metrics[k] for k in FIDELITY_KEYS if k in q_metrics},
            "n_eval_images": q_metrics["n_images"],
            "n_calib": recipe.n_calib, "calib_seconds": calib["seconds"],
            "calib_cpu_seconds": calib["cpu_seconds"], "eval_seconds": eval_seconds,
            "fp_eval_seconds": fp_eval_seconds, **peak_memory(device),
            "seed": cfg.seed, "device": str(device), "primary_metric": task.primary_metric, **ctx.metrics,
        }
        save_run(out_dir, qmodel, run_config, calib_ids, metrics, logger, {"calib_ids.json": calib_ids})
        logger.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.summary(metrics)
        log.info("%s %s W%dA%d: %s %.2f (FP %s), %s, calibration %.1fs -> %s", cfg.model.name, cfg.method.name,
                 bits.w, bits.a, keys[0], metrics[keys[0]], metrics.get(f"fp_{keys[0]}"), fidelity_summary(metrics),
                 metrics["calib_seconds"], out_dir)
        return metrics
    finally:
        logger.finish()
