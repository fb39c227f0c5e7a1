"""Checks on a composed ``train.yaml`` config before anything is loaded (one-line errors)."""
from __future__ import annotations

from omegaconf import DictConfig

from vitquant.config import (
    bit_widths,
    check_data,
    check_model_weights,
    check_path,
    check_policy,
    check_weights,
    read_run_config,
    resolve_device,
)
from vitquant.errors import UserError
from vitquant.tasks.base import check_task, task_class

RESUME_MODES = ("auto", "never")


def validate_train(cfg: DictConfig) -> None:
    """Everything about a QAT config that can be checked before loading anything. With ``init=``, the
    model is the quantized checkpoint's (see ``pipelines.train.adopt_init``)."""
    bit_widths(cfg)
    check_policy(cfg)
    if not task_class(cfg.task).can_train:
        raise UserError(f"task={cfg.task.name} cannot be trained: train.py (QAT) trains classification models; "
                        "quantize this task with calibrate.py (PTQ)")
    model = cfg.model if cfg.init is None else read_run_config(cfg.init, "init").model
    check_task(cfg.task, model, cfg.data)
    check_data(cfg)
    check_model_weights(model)
    check_weights(cfg.teacher.get("checkpoint"), "teacher.checkpoint")
    check_path(cfg.soft_labels.dir, "soft_labels.dir", "soft-label folder")
    if cfg.resume not in RESUME_MODES:
        raise UserError(f"resume={cfg.resume} is not one of {', '.join(RESUME_MODES)}")
    q = cfg.qat
    for key in ("epochs", "batch_size", "n_crops"):
        if not isinstance(q[key], int) or q[key] < 1:
            raise UserError(f"qat.{key}={q[key]} must be a positive integer")
    if q.lr <= 0:
        raise UserError(f"qat.lr={q.lr} must be positive")
    max_train = cfg.data.get("max_train_images")
    if max_train is not None and (not isinstance(max_train, int) or max_train < 1):
        raise UserError(f"data.max_train_images={max_train} must be a positive integer or null")
    resolve_device(cfg.device)
