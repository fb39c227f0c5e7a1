"""Quantization-aware training of one model: the function behind ``train.py``.

build task → float model → quant twin with the QAT recipe's quantizers on the policy's sites (the
same twins, site kinds, policies and ``Recipe.attach`` as PTQ; the recipe's stage initialises the
LSQ steps on ``method.n_calib`` images) — or the PTQ model of ``init=<quantized.pt>`` — → teacher →
resumable multi-crop training → ``quantized.pt`` (PTQ format), ``config.yaml``, ``metrics.json``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vitquant.config import bit_widths, resolve_device
from vitquant.data.datasets import build_dataset
from vitquant.data.training import MultiCropDataset, ResumableSampler, train_subset, train_transform
from vitquant.engines.context import CalibContext
from vitquant.errors import CoverageError, UserError
from vitquant.io.logger import RunLogger
from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.io.sweep import finished_cell
from vitquant.methods.recipe import Recipe
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import uncalibrated_sites
from vitquant.pipelines.common import build_recipe, rebuild_quantized, run_header, run_name, save_run
from vitquant.qat.checkpoint import RESUME_FILE, load_resume
from vitquant.qat.config import validate_train
from vitquant.qat.distributed import DistInfo, barrier, env_rank, init_distributed, shutdown, weights_digest
from vitquant.qat.loop import LoopOptions, Trainer
from vitquant.qat.preemption import PreemptionSignal
from vitquant.qat.soft_labels import SoftLabelCrops
from vitquant.qat.teacher import build_teacher
from vitquant.quant.base import Quantizer
from vitquant.runtime import seed_everything
from vitquant.tasks.base import build_task

log = logging.getLogger("vitquant")


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    run_config: dict[str, Any]
    calib_ids: list[int]


def adopt_init(cfg: DictConfig) -> DictConfig:
    """With ``init=<quantized.pt>``, the run's model, method, policy and bits are the checkpoint's."""
    if cfg.init is None:
        return cfg
    run_cfg, _, _ = read_quantized(cfg.init)
    if (cfg.w_bits, cfg.a_bits) != (run_cfg.w_bits, run_cfg.a_bits):
        log.warning("init=%s is W%dA%d: its bits are kept (W%dA%d on the command line is ignored)", cfg.init,
                    run_cfg.w_bits, run_cfg.a_bits, cfg.w_bits, cfg.a_bits)
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in ("model", "method", "policy", "w_bits", "a_bits", "end_bits", "end_a_bits"):
            cfg[key] = run_cfg[key]
    return cfg


def build_student(cfg: DictConfig, task, fp_model: nn.Module, resuming: bool) -> tuple[nn.Module, list[int]]:
    """The quant twin to train: from ``init=`` (PTQ model, scales made learnable) or freshly initialised."""
    if cfg.init is not None:
        run_cfg, state, calib_ids = read_quantized(cfg.init)
        student = rebuild_quantized(run_cfg, state, cfg.init, task).to(next(fp_model.parameters()).device)
        for module in student.modules():  # LSQ-style: the PTQ steps become trainable too
            if isinstance(module, Quantizer) and "scale" in module._buffers and module.scale.is_floating_point():
                module.make_learnable("scale")
        return student, calib_ids
    recipe: Recipe = build_recipe(cfg.method)
    student = quantized_twin(fp_model, recipe, list(cfg.policy.kinds), bit_widths(cfg), cfg.seed)
    if resuming:  # the resume checkpoint holds the initialised quantizers
        return student, []
    images, calib_ids = task.calibration_images(recipe.n_calib, cfg.seed)
    recipe.calibrate(student, CalibContext(fp_model, images, next(fp_model.parameters()).device, cfg.seed))
    missing = uncalibrated_sites(student)
    if missing:
        raise CoverageError(f"{len(missing)} quantization sites saw no data at initialisation (first: {missing[0]})")
    return student, calib_ids


def train_loader(cfg: DictConfig, dist: DistInfo, device: torch.device) -> tuple[DataLoader, ResumableSampler]:
    base = train_subset(build_dataset(cfg.data, cfg.data.train_split), cfg.data.max_train_images, cfg.seed)
    if cfg.soft_labels.dir is not None:
        dataset = SoftLabelCrops(base, cfg.soft_labels.dir, cfg.qat.n_crops, cfg.model.input)
    else:
        dataset = MultiCropDataset(base, train_transform(cfg.model.input, cfg.data), cfg.qat.n_crops)
    sampler = ResumableSampler(dataset, cfg.qat.batch_size, dist.world, dist.rank, cfg.seed)
    if sampler.batches_per_epoch == 0:
        raise UserError(f"{len(dataset)} training images make no batch of qat.batch_size={cfg.qat.batch_size} "
                        f"per process ({dist.world} processes); lower qat.batch_size or raise data.max_train_images")
    loader = DataLoader(dataset, batch_size=cfg.qat.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.qat.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    return loader, sampler


def optimizer_and_scheduler(model: nn.Module, q: DictConfig, steps_per_epoch: int):
    """AdamW (timm factory: no weight decay on 1-D tensors) + per-step cosine schedule with warmup."""
    optimizer = create_optimizer_v2(model, opt="adamw", lr=q.lr, weight_decay=q.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=q.epochs, warmup_epochs=q.warmup_epochs,
                                       min_lr=q.min_lr, warmup_lr=q.min_lr if q.warmup_epochs else 0.0,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def check_targets(cfg: DictConfig, task) -> None:
    """Unlabeled data (the primary metric needs the float model) trains by distillation only: a teacher or
    stored soft labels must give the targets."""
    if task.primary_needs_reference and cfg.soft_labels.dir is None and cfg.teacher.name == "none":
        raise UserError(f"data={cfg.data.name} has no labels, so QAT can only distill: teacher=none leaves no "
                        "targets; use teacher=float (the default) or soft_labels.dir=<stored soft labels>")


def epoch_score(task, device: torch.device, fp_model: nn.Module):
    """``model -> {metric: value}`` over the task's metric keys: the score of every QAT epoch. On unlabeled data
    they are fidelity to the float model (``agree_top1``, ``kl``, ``logit_sqnr_db``), so the float model runs
    beside it; otherwise no reference is run. ``n_images`` (how many images were scored) rides along where the
    task counts them."""
    reference = fp_model if task.primary_needs_reference else None

    def score(model: nn.Module) -> dict[str, float]:
        out = task.evaluate(model, device, reference=reference)
        counted = {"n_images": out["n_images"]} if "n_images" in out else {}  # metrics.json's n_eval_images
        return {**{k: out[k] for k in task.metric_keys}, **counted}
    return score


def fit(cfg: DictConfig, logger: RunLogger | None = None) -> TrainResult:
    """Train one QAT run (resuming from ``<out_dir>/resume.pt`` when present); nothing is written but
    the resume checkpoint."""
    validate_train(cfg)
    cfg = adopt_init(cfg)
    bits = bit_widths(cfg)
    dist, device = init_distributed(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    out_dir = Path(cfg.out_dir)
    resume_path = out_dir / RESUME_FILE
    resuming = cfg.resume == "auto" and resume_path.is_file()
    barrier(dist)  # every rank decides before rank 0 can write a checkpoint
    task = build_task(cfg.task, cfg.model, cfg.data)
    check_targets(cfg, task)
    fp_model = task.build_model().to(device)
    student, calib_ids = build_student(cfg, task, fp_model, resuming)
    resume_state = load_resume(resume_path) if resuming else None
    if resume_state is not None:
        student.load_state_dict(resume_state["model"])
    teacher = None if cfg.soft_labels.dir is not None else build_teacher(cfg.teacher, cfg.model, fp_model)
    loader, sampler = train_loader(cfg, dist, device)
    optimizer, scheduler = optimizer_and_scheduler(student, cfg.qat, sampler.batches_per_epoch)
    model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else student
    log_fn = logger.log if logger is not None else (lambda m: None)
    max_eval = cfg.task.get("max_eval_images")
    options = LoopOptions(epochs=cfg.qat.epochs, clip_grad=cfg.qat.clip_grad, amp=cfg.qat.amp,
                          reg_weight=cfg.qat.reg.weight, reg_start=cfg.qat.reg.start,
                          teacher_topk=cfg.teacher.get("topk"), checkpoint_every_steps=cfg.qat.checkpoint_every_steps,
                          stop_after_steps=cfg.qat.stop_after_steps)
    primary = task.primary_metric
    score = epoch_score(task, device, fp_model)
    trainer = Trainer(model, teacher, loader, sampler, optimizer, scheduler, options, device, dist,
                      score, log_fn, out_dir / RESUME_FILE)
    trainer.preemption = PreemptionSignal.arm()  # from here, Slurm's end-of-job signal saves at a step boundary
    try:
        extra: dict[str, Any] = {}
        if resume_state is not None:
            trainer.resume(resume_state)
            log.info("resumed from %s", resume_path)
        else:
            trainer.oscillation.update(student)  # remember the initial codes: step 1's flips count
            if cfg.eval_fp and dist.is_main and not task.primary_needs_reference:  # vs itself: 100 %
                extra[f"fp_{primary}"] = score(fp_model)[primary]
            trainer.position.history.append({"epoch": 0, **score(student)} if dist.is_main else {"epoch": 0})
            trainer.position.history[0].update(extra)
            trainer.position.calib_ids = list(calib_ids)
            trainer.save()
        log.info("QAT %s %s W%dA%d: %d steps/epoch of %d images x %d crops, %d epochs, eval on %s images",
                 cfg.method.name, cfg.model.name, bits.w, bits.a, sampler.batches_per_epoch, cfg.qat.batch_size,
                 cfg.qat.n_crops, cfg.qat.epochs, max_eval or "all")
        history = trainer.fit()
    finally:
        if trainer.preemption is not None:
            trainer.preemption.disarm()
    digest = weights_digest(trainer.module, dist)
    metrics = {
        "task": cfg.task.name, **run_header(cfg), "qat": cfg.qat.name, "teacher": cfg.teacher.name,
        **{k: history[-1].get(k) for k in task.metric_keys}, f"init_{primary}": history[0].get(primary),
        **({} if task.primary_needs_reference else {f"fp_{primary}": history[0].get(f"fp_{primary}")}),
        "history": history,
        "train_seconds": trainer.position.train_seconds,
        "train_cpu_seconds": trainer.position.train_cpu_seconds, "epochs": cfg.qat.epochs,
        "steps": trainer.position.step,
        "oscillation_rate": history[-1].get("oscillation_rate"),
        "n_eval_images": history[-1].get("n_images", max_eval), "seed": cfg.seed,
        "device": str(device), "world_size": dist.world, "init": cfg.init, "primary_metric": task.primary_metric,
        "resumed_at_steps": trainer.position.resumed_at, "weights_sha256": digest,
    }
    run_config = OmegaConf.to_container(cfg, resolve=True)
    return TrainResult(trainer.module, metrics, run_config, trainer.position.calib_ids)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train, then (rank 0) write ``quantized.pt``, ``config.yaml`` and, last, ``metrics.json``."""
    out_dir = Path(cfg.out_dir)
    if (finished := finished_cell(out_dir)) is not None:
        return finished
    run_config = OmegaConf.to_container(cfg, resolve=True)
    name = run_name(cfg, method=cfg.qat.name)
    is_main = env_rank() == 0
    logger = RunLogger(cfg.logger if is_main else {"name": "none"}, run_config, str(out_dir), name, job_type="train")
    try:
        result = fit(cfg, logger)
        if is_main:
            save_run(out_dir, result.model, result.run_config, result.calib_ids, result.metrics, logger)
            logger.summary({k: v for k, v in result.metrics.items() if k != "history"})
            primary = result.metrics["primary_metric"]
            log.info("%s: %s %.2f (FP %s) after %d epochs, %.0f s -> %s", name, primary, result.metrics[primary],
                     result.metrics.get(f"fp_{primary}"), cfg.qat.epochs, result.metrics["train_seconds"], out_dir)
        return result.metrics
    finally:
        logger.finish()
        shutdown()
