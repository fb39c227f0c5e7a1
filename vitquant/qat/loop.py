"""The QAT epoch loop: multi-crop KD + variation regularizer, AdamW/cosine, resumable at any step.

One step (``images``: (B, n_crops, C, H, W), all crops of a batch go through the model at once)::

    z = student(crops);  p = teacher(crops) (or stored soft labels, or one-hot labels)
    loss = soft_CE(z, p) + λ(t)·Σ R(w)        (see losses.py, regularizer.py)
    backward → clip → AdamW step → scheduler.step_update(step) → oscillation count

The position (epoch, batch in epoch, global step) advances with every step; a resume checkpoint is
written every ``checkpoint_every_steps`` steps and at the end of each epoch (after its evaluation),
on rank 0 only, and when Slurm signals the end of the job (preemption.py: after that step every rank
stops, rank 0 saves, submitit requeues). Because the sampler and the crops are functions of (seed,
epoch, position) and the RNG states travel in the checkpoint, resuming mid-epoch replays exactly
what an uninterrupted run does (bit-identical on CPU).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitquant.data.training import ResumableSampler
from vitquant.qat.checkpoint import rank_rng, rng_state, save_resume, set_rng_state
from vitquant.qat.distributed import DistInfo, any_true, barrier, gather
from vitquant.qat.losses import soft_cross_entropy, teacher_targets
from vitquant.qat.preemption import PreemptionSignal
from vitquant.qat.regularizer import OscillationTracker, reg_weight, variation_loss

log = logging.getLogger("vitquant")


class TrainingStopped(BaseException):  # noqa: N818 - a simulated kill, not an error
    """Raised by the ``qat.stop_after_steps`` test hook: the process stops as if killed."""


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    calib_ids: list[int] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # global step of each resume


@dataclass
class LoopOptions:
    epochs: int
    clip_grad: float | None = None
    amp: bool = False
    reg_weight: float = 0.0
    reg_start: float = 0.25
    teacher_topk: int | None = None
    checkpoint_every_steps: int | None = None
    stop_after_steps: int | None = None


class Trainer:
    """Owns the model, optimizer, scheduler, loader and position of one QAT run."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, loader: DataLoader, sampler: ResumableSampler,
                 optimizer: torch.optim.Optimizer, scheduler: Any, options: LoopOptions, device: torch.device,
                 dist: DistInfo, evaluate: Callable[[nn.Module], dict[str, float]], log_fn: Callable[[dict], None],
                 checkpoint_path: Path | None) -> None:
        self.model, self.teacher, self.loader, self.sampler = model, teacher, loader, sampler
        self.optimizer, self.scheduler, self.options = optimizer, scheduler, options
        self.device, self.dist, self.evaluate, self.log = device, dist, evaluate, log_fn
        self.checkpoint_path = checkpoint_path
        self.position = Position()
        self.oscillation = OscillationTracker()
        self.steps_this_process = 0
        self.epoch_sums: dict[str, float] = {}
        self.preemption: PreemptionSignal | None = None  # set while running as a submitit Slurm job

    @property
    def module(self) -> nn.Module:
        """The bare model (DDP unwrapped)."""
        return getattr(self.model, "module", self.model)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "position": asdict(self.position),
                "oscillation": self.oscillation.state_dict(), "epoch_sums": dict(self.epoch_sums)}

    def save(self) -> None:
        """Rank 0 writes the resume checkpoint (every rank calls this: their RNG states are gathered)."""
        rngs = gather(self.dist, rng_state())
        if self.dist.is_main and self.checkpoint_path is not None:
            save_resume(self.checkpoint_path, self.state_dict(), rngs)

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a loaded resume checkpoint. The model state must already be loaded, before the
        optimizer was built: loading can replace quantizer parameters (per-head shapes)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        self.oscillation.load_state_dict(state["oscillation"])
        self.epoch_sums = dict(state["epoch_sums"])
        set_rng_state(rank_rng(state, self.dist.rank))
        self.position.resumed_at.append(self.position.step)
        log.info("resumed at epoch %d, batch %d (step %d)", self.position.epoch,
                 self.position.batch, self.position.step)

    # ----------------------------------------------------------------- one step
    def targets(self, crops: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor | None:
        if soft is not None:
            return soft.flatten(0, 1).to(self.device)
        if self.teacher is None:
            return None
        with torch.no_grad(), self.autocast():
            return teacher_targets(self.teacher(crops), self.options.teacher_topk)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.options.amp and self.device.type == "cuda")

    def train_step(self, batch: list[torch.Tensor]) -> dict[str, float]:
        images, labels = batch[0], batch[1]
        n_crops = images.shape[1]
        crops = images.flatten(0, 1).to(self.device, non_blocking=True)
        labels = labels.to(self.device).repeat_interleave(n_crops)
        targets = self.targets(crops, labels, batch[2] if len(batch) > 2 else None)
        self.model.train()
        with self.autocast():
            logits = self.model(crops)
        task_loss = (F.cross_entropy(logits.float(), labels) if targets is None
                     else soft_cross_entropy(logits, targets))
        t = self.position.epoch + self.position.batch / max(self.steps_per_epoch, 1)
        lam = reg_weight(t, self.options.epochs, self.options.reg_weight, self.options.reg_start)
        reg = variation_loss(self.module).to(self.device) if lam > 0 else torch.zeros((), device=self.device)
        loss = task_loss + lam * reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.options.clip_grad))
        self.optimizer.step()
        self.position.step += 1
        self.scheduler.step_update(num_updates=self.position.step)
        rate = self.oscillation.update(self.module)
        return {"loss": loss.item(), "task_loss": task_loss.item(), "reg_loss": reg.item(), "reg_weight": lam,
                "oscillation": rate, "lr": self.optimizer.param_groups[0]["lr"]}

    # ----------------------------------------------------------------- epochs
    def fit(self) -> list[dict[str, Any]]:
        """Train from the current position to the last epoch; returns the per-epoch history."""
        while self.position.epoch < self.options.epochs:
            self.run_epoch()
        return self.position.history

    def run_epoch(self) -> None:
        pos = self.position
        self.sampler.set_position(pos.epoch, pos.batch)
        bar = tqdm(self.loader, desc=f"epoch {pos.epoch + 1}/{self.options.epochs}", disable=None if
                   self.dist.is_main else True, initial=pos.batch, total=self.steps_per_epoch, leave=False)
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in bar:
            t0 = time.perf_counter()
            metrics = self.train_step(batch)
            pos.batch += 1
            self.accumulate(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                            img_s=f"{len(batch[0]) * self.dist.world / (time.perf_counter() - t0):.0f}")
            pos.train_seconds += time.perf_counter() - start
            pos.train_cpu_seconds += time.process_time() - cpu_start
            start, cpu_start = time.perf_counter(), time.process_time()
            self.steps_this_process += 1
            every = self.options.checkpoint_every_steps
            if every and pos.step % int(every) == 0:
                self.save()
            if self.options.stop_after_steps is not None and self.steps_this_process >= self.options.stop_after_steps:
                raise TrainingStopped(f"stopped after {self.steps_this_process} steps (qat.stop_after_steps)")
            if self.preemption is not None and any_true(self.dist, self.preemption.requested):
                self.save()
                barrier(self.dist)
                log.info("saved at epoch %d, batch %d (step %d) for the requeue", pos.epoch, pos.batch, pos.step)
                self.preemption.hand_over(self.dist.is_main)
        self.end_epoch()

    def accumulate(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if value is not None and key not in ("lr", "oscillation"):
                self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value
        self.epoch_sums["n"] = self.epoch_sums.get("n", 0.0) + 1
        self.epoch_sums["lr"] = metrics["lr"]

    def end_epoch(self) -> None:
        pos, sums = self.position, self.epoch_sums
        n = max(sums.get("n", 0.0), 1.0)
        scores = self.evaluate(self.module) if self.dist.is_main else {}
        barrier(self.dist)
        row = {"epoch": pos.epoch + 1, "step": pos.step, **scores, "lr": sums.get("lr"),
               "oscillation_rate": self.oscillation.epoch_rate(), "train_seconds": pos.train_seconds,
               "train_cpu_seconds": pos.train_cpu_seconds,
               **{k: sums.get(k, 0.0) / n for k in ("loss", "task_loss", "reg_loss", "reg_weight")}}
        pos.history.append(row)
        if self.dist.is_main:
            self.log({k: v for k, v in row.items() if v is not None})
        pos.epoch, pos.batch = pos.epoch + 1, 0
        self.oscillation.reset_epoch()
        self.epoch_sums = {}
        self.save()
