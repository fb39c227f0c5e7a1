"""Re-evaluate a quantized checkpoint: the function behind ``evaluate.py``.

The model, method, policy and bits come from the checkpoint (so the exact quantized model is
rebuilt); the task and data are the checkpoint's own too, with any ``task.*``/``data.*`` key of the
command line on top (``task=<name>``/``data=<name>`` replace them); device and logger come from the
command line.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitquant.config import evaluation_data, evaluation_task, resolve_device, validate_evaluate
from vitquant.errors import UserError
from vitquant.io.atomic import write_json
from vitquant.io.logger import RunLogger
from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.pipelines.common import rebuild_quantized, run_header, run_name
from vitquant.runtime import timer
from vitquant.tasks.base import build_task
from vitquant.tasks.fidelity import FIDELITY_KEYS

log = logging.getLogger("vitquant")


def float_reference(cfg: DictConfig, run_cfg: DictConfig, task, device) -> Any:
    """The float model the checkpoint was quantized from (its model config's weights), to measure the
    fidelity metrics against; None with ``fidelity=false`` or for a task that does not compare models."""
    if not cfg.fidelity or not task.compares_to_reference:
        return None
    weights = run_cfg.model.get("checkpoint")
    if not weights and not run_cfg.model.get("pretrained"):
        log.warning("the checkpoint's model config names no float weights (random initialisation): "
                    "no fidelity metrics")
        return None
    if weights and not Path(weights).is_file():
        raise UserError(f"the float weights of this checkpoint (model.checkpoint={weights}) are not found, so the "
                        "fidelity metrics cannot be measured; put them there or pass fidelity=false")
    return task.build_model().to(device)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    validate_evaluate(cfg)
    device = resolve_device(cfg.device)
    run_cfg, state, calib_ids = read_quantized(cfg.checkpoint)
    out_dir = Path(cfg.out_dir)
    logger = RunLogger(cfg.logger, OmegaConf.to_container(cfg, resolve=True), str(out_dir),
                       run_name(run_cfg, job="eval"), job_type="evaluate")
    try:
        task_cfg = evaluation_task(cfg, run_cfg.task)
        task = build_task(task_cfg, run_cfg.model, evaluation_data(cfg, run_cfg.data))
        qmodel = rebuild_quantized(run_cfg, state, cfg.checkpoint, task).to(device)
        reference = float_reference(cfg, run_cfg, task, device)
        with timer() as t:
            metrics = task.evaluate(qmodel, device, reference=reference) if reference is not None \
                else task.evaluate(qmodel, device)
        keys = list(task.metric_keys)
        out = {"task": task_cfg.name, **run_header(run_cfg),
               **{k: metrics[k] for k in keys}, **{k: metrics[k] for k in FIDELITY_KEYS if k in metrics},
               **{f"fp_{k}": metrics[f"fp_{k}"] for k in keys if f"fp_{k}" in metrics},
               "n_eval_images": metrics["n_images"],
               "eval_seconds": t["seconds"] - metrics.get("reference_seconds", 0.0),
               "checkpoint": str(cfg.checkpoint), "n_calib": len(calib_ids), "primary_metric": task.primary_metric}
        write_json(out_dir / "metrics.json", out)
        logger.summary(out)
        log.info("%s: %s", cfg.checkpoint, ", ".join(f"{k} {out[k]:.2f}" for k in (*keys, *FIDELITY_KEYS) if k in out))
        return out
    finally:
        logger.finish()
