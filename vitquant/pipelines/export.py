"""Export a quantized checkpoint: the function behind ``export.py``.

checkpoint → rebuilt fake-quant model → ONNX graph (``export_model``: ``vit.export_vit`` or
``swin.export_swin`` by model type) → ``model.onnx`` →
optionally top-1 of ONNX Runtime and of the fake-quant model on the evaluation set →
``metrics.json`` with which sites are integer and which stayed float (``deployable``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitquant.config import evaluation_data, validate_evaluate
from vitquant.errors import UserError
from vitquant.export.onnx_model import export_model, require_onnx, save_onnx
from vitquant.io.atomic import write_json
from vitquant.io.logger import RunLogger
from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.nn.site import quantized_sites
from vitquant.pipelines.common import rebuild_quantized, run_header, run_name
from vitquant.runtime import timer
from vitquant.tasks.base import build_task

log = logging.getLogger("vitquant")
FORMATS = ("onnx",)


def validate_export(cfg: DictConfig) -> None:
    """Format, the onnx package, and a classification checkpoint (``validate_evaluate``'s checks too)."""
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not supported; valid: {', '.join(FORMATS)}")
    require_onnx()
    run_cfg = validate_evaluate(cfg)
    if run_cfg.task.name != "classification":
        raise UserError(f"checkpoint={cfg.checkpoint} is a task={run_cfg.task.name} model; export.py exports "
                        "classification models (ViT/DeiT, Swin)")


def log_export(cfg: DictConfig, run_name: str, metrics: dict[str, Any]) -> None:
    """With ``logger=wandb``: the export's metrics and ``model.onnx`` (an artifact) in a run of job type export."""
    logger = RunLogger(cfg.logger, OmegaConf.to_container(cfg, resolve=True), str(cfg.out_dir), run_name,
                       job_type="export")
    try:
        logger.summary(metrics)
        logger.artifact(metrics["onnx"])
    finally:
        logger.finish()


def run_export(cfg: DictConfig) -> dict[str, Any]:
    validate_export(cfg)
    from vitquant.export.onnx_runtime import OrtClassifier  # (imported here: onnxruntime is optional)

    run_cfg, state, _ = read_quantized(cfg.checkpoint)
    task = build_task(cfg.task, run_cfg.model, evaluation_data(cfg, run_cfg.data))
    qmodel = rebuild_quantized(run_cfg, state, cfg.checkpoint, task).eval()
    if not any(True for _ in quantized_sites(qmodel)):
        raise UserError(f"checkpoint={cfg.checkpoint} has no quantized sites (method={run_cfg.method.name}); "
                        "export a checkpoint of a quantization method")
    model, report = export_model(qmodel, int(run_cfg.model.input.size))
    out_dir = Path(cfg.out_dir)
    path = save_onnx(model, out_dir / "model.onnx")
    metrics: dict[str, Any] = {**run_header(run_cfg), "format": cfg.format,
                               "onnx": str(path), "onnx_bytes": path.stat().st_size, **report.summary()}
    if cfg.verify:
        with timer() as t:
            metrics["top1_onnx"] = task.evaluate(OrtClassifier(str(path)), "cpu")["top1"]
        metrics["onnx_eval_seconds"] = t["seconds"]
        metrics["top1_fakequant"] = task.evaluate(qmodel, "cpu")["top1"]
        metrics["top1_gap"] = round(metrics["top1_onnx"] - metrics["top1_fakequant"], 4)
    write_json(out_dir / "metrics.json", metrics)
    log_export(cfg, run_name(run_cfg, job="export"), metrics)
    floats = ", ".join(f"{k} ({v})" for k, v in sorted(metrics["float_sites"].items())[:6]) or "none"
    log.info("export %s %s W%sA%s -> %s: deployable=%s, %d integer sites, float sites: %s%s",
             run_cfg.model.name, run_cfg.method.name, run_cfg.w_bits, run_cfg.a_bits, path,
             metrics["deployable"], metrics["integer_sites"], floats,
             "" if not cfg.verify else f"; top-1 ONNX {metrics['top1_onnx']:.2f} vs fake-quant "
                                       f"{metrics['top1_fakequant']:.2f}")
    return metrics
