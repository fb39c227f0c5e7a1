"""Block reconstruction stage (I&S-ViT SOS stages 1 and 3; BRECQ/QDrop with AdaRound).

Units are reconstructed one after another in module order (``reconstruction_units``): the
patch-embedding conv, the classifier head and Swin ``PatchMerging`` layer-wise, every transformer
block (a module with an attention twin ``attn`` and an ``mlp``) block-wise. For each unit:

1. Cache, on CPU, its inputs and FP targets for the calibration images. Targets are the output of
   the same-named module of ``ctx.fp_model`` on FP inputs. Inputs come from the FP model
   (``input_source='fp'``, I&S-ViT stage 1, ``GetLayerInpOut_T``) or from the quantized model in its
   current state, all earlier units already reconstructed (``'quantized'``, I&S-ViT stage 3 /
   BRECQ / QDrop, ``GetLayerInpOut``). Hooks stop the forward right after the unit.
2. Optimise, for ``iters`` steps on batches of ``batch_size`` cached samples::

       L = lp_loss(unit(x), y) [+ what hooks add]
       lp_loss(ŷ, y) = mean over the rest of Σ_dim1 (ŷ − y)²   (official ``lp_loss(p=2)``)

   dim 1 is the token axis for blocks (Swin's (B, H, W, C) outputs are flattened to (B, H·W, C)
   first), the class axis for the head and the channel axis for the patch conv, as in the code.
   Adam over the parameter groups the hooks return, each cosine-annealed to 0 over the ``iters``
   steps (``CosineAnnealingLR(T_max=iters, eta_min=0)``) unless the group says
   ``"schedule": "constant"``.

The engine itself trains nothing: a method says what is trained, and how, through ``hooks``
(``ReconHook``), and in which order samples are drawn through ``sampler``:

* weights through straight-through rounding (I&S-ViT): ``engines.rounding.SteWeights``;
  AdaRound's learned rounding (BRECQ/QDrop): ``engines.rounding.AdaRoundWeights``;
* QDrop's learned activation scales: ``engines.act_scales.LearnActScales``; its random dropping of
  activation quantization: ``engines.qdrop.QDrop``;
* AIQViT's low-rank compensation with its rank search: ``engines.lowrank.LowRankHook``;
* batches uniformly at random (``engines.curriculum.RandomBatches``, the default) or easy→hard
  (``engines.curriculum.CurriculumBatches``, AIQViT).

A unit for which no hook returns a parameter is skipped without caching. The unit runs in eval mode
(the models have no dropout at calibration); quantizers must already be initialised (run
``init_ranges`` first); the model ends in eval mode with its ``requires_grad`` flags restored. On CPU
the loop keeps freed memory in the heap (``engines.cpu_heap``).

See ``docs/reconstruction.md`` for the hook interface and how a method plugs in.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from timm.models.swin_transformer import PatchMerging
from torch import nn
from tqdm import tqdm

from vitquant.engines.context import CalibContext
from vitquant.engines.cpu_heap import reuse_heap
from vitquant.engines.curriculum import RandomBatches, sample_losses
from vitquant.errors import UserError
from vitquant.nn import QuantAttention, QuantConv2d, QuantLinear, QuantWindowAttention
from vitquant.nn.site import quantized_sites, set_calibrating

INPUT_SOURCES = ("fp", "quantized")
SCHEDULES = ("cosine", "constant")


# ----------------------------------------------------------------------------- units
def is_block(module: nn.Module) -> bool:
    """A transformer block: owns an attention twin ``attn`` and an ``mlp`` (ViT Block, Swin block)."""
    return isinstance(getattr(module, "attn", None), (QuantAttention, QuantWindowAttention)) \
        and hasattr(module, "mlp")


def is_layer_unit(module: nn.Module) -> bool:
    """Layer-wise units: patch-embed conv and classifier head (``is_end``), Swin PatchMerging."""
    end = isinstance(module, (QuantLinear, QuantConv2d)) and module.weight_site.is_end
    return end or isinstance(module, PatchMerging)


def reconstruction_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every unit in module order (outermost match, its children skipped)."""
    units: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if units and name.startswith(units[-1][0] + "."):
            continue
        if is_block(module) or is_layer_unit(module):
            units.append((name, module))
    return units


def unit_output(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Swin blocks and PatchMerging work in NHWC: flatten (B, H, W, C) to (B, H·W, C) tokens."""
    return y.flatten(1, 2) if y.dim() == 4 and not isinstance(module, nn.Conv2d) else y


def lp_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official ``lp_loss(p=2, reduction='none')``: (ŷ − y)² summed over dim 1, averaged over the rest."""
    return (pred - target).pow(2).sum(1).mean()


def per_sample_lp_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``lp_loss`` of each sample of the batch: (B,)."""
    err = (pred - target).pow(2).sum(1)
    return err.reshape(len(err), -1).mean(1)


# ----------------------------------------------------------------------------- caching
class _StopForward(Exception):
    """Raised by the capture hook: nothing after the unit needs computing."""


@torch.no_grad()
def capture(model: nn.Module, unit: nn.Module, images: torch.Tensor, batch_size: int,
            device: torch.device, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of ``unit`` while ``model`` runs on ``images``, concatenated on CPU
    (outputs as ``unit_output`` gives them, or as the unit returns them with ``raw``)."""
    inputs, outputs = [], []

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if len(args) != 1 or kwargs:
            raise NotImplementedError(f"{type(module).__name__} was called with extra arguments; "
                                      "reconstruction caches a single input tensor")
        inputs.append(args[0].detach().cpu())
        outputs.append((output if raw else unit_output(module, output)).detach().cpu())
        raise _StopForward

    handle = unit.register_forward_hook(hook, with_kwargs=True)
    try:
        for batch in images.split(batch_size):
            try:
                model(batch.to(device))
            except _StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(inputs), torch.cat(outputs)


@dataclass
class UnitData:
    """Cached samples of one unit (CPU): inputs, FP targets, FP inputs when QDrop mixes them in.

    ``fp_outputs`` is the FP unit's raw output (``targets`` before Swin's NHWC flattening): when the
    next unit is this one's successor in an ``nn.Sequential``, it is the next unit's FP input.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    fp_inputs: torch.Tensor | None = None
    fp_outputs: torch.Tensor | None = None


def successor(previous: str | None, name: str, model: nn.Module) -> bool:
    """``name`` directly follows ``previous`` in the same ``nn.Sequential`` (``blocks.3`` after ``blocks.2``),
    so its input is exactly the previous unit's output: no forward from the start of the model is needed."""
    if previous is None or "." not in name or "." not in previous:
        return False
    (parent, index), (prev_parent, prev_index) = name.rsplit(".", 1), previous.rsplit(".", 1)
    return (parent == prev_parent and index.isdigit() and prev_index.isdigit() and int(index) == int(prev_index) + 1
            and isinstance(model.get_submodule(parent), nn.Sequential))


@torch.no_grad()
def run_unit(unit: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``unit`` applied to cached ``inputs`` batch by batch (the batches ``capture`` used), on CPU."""
    return torch.cat([unit(batch.to(device)).cpu() for batch in inputs.split(batch_size)])


def cache_unit(model: nn.Module, name: str, unit: nn.Module, ctx: CalibContext, images: torch.Tensor,
               batch_size: int, input_source: str, mix_inputs: bool, previous: tuple[str, nn.Module, UnitData]
               | None = None) -> UnitData:
    """Inputs and FP targets of one unit. With ``previous`` = (name, unit, data) of the unit just
    reconstructed, a successor's inputs come from the previous unit's cached data (its FP output;
    the quantized unit re-applied to its quantized inputs) instead of a forward from the model's
    start for every unit — O(units) instead of O(units²) block evaluations, the same values."""
    fp_unit = ctx.fp_model.get_submodule(name)
    if previous is not None and successor(previous[0], name, model) and previous[2].fp_outputs is not None:
        _, prev_unit, prev = previous
        fp_inputs = prev.fp_outputs
        fp_outputs = run_unit(fp_unit, fp_inputs, batch_size, ctx.device)
        inputs = fp_inputs if input_source == "fp" else run_unit(prev_unit, prev.inputs, batch_size, ctx.device)
    else:
        fp_inputs, fp_outputs = capture(ctx.fp_model, fp_unit, images, batch_size, ctx.device, raw=True)
        inputs = fp_inputs if input_source == "fp" else capture(model, unit, images, batch_size, ctx.device)[0]
    targets = unit_output(fp_unit, fp_outputs)
    mixed = fp_inputs if input_source != "fp" and mix_inputs else None
    return UnitData(inputs, targets, mixed, fp_outputs)


# ----------------------------------------------------------------------------- extension points
class ReconHook:
    """Extends every unit's reconstruction; the methods are called in this order, no-ops here.

    ``needs_fp_inputs``: cache the FP model's inputs of the unit too (``inputs`` gets them when the
    unit's inputs come from the quantized model).
    """

    needs_fp_inputs: bool = False

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        """Before the unit's data are cached: prepare ``unit`` and return the Adam parameter groups
        this hook trains (``{"params": [...], "lr": ..., "schedule": "cosine" | "constant"}``)."""
        return []

    def optimising(self, unit: nn.Module, generator: torch.Generator) -> AbstractContextManager:
        """A context entered around the optimisation loop only (not the caching): temporary changes
        to the unit, undone on exit whatever happens. ``generator`` (seeded per unit) is for random
        choices."""
        return nullcontext()

    def inputs(self, x: torch.Tensor, fp_x: torch.Tensor | None) -> torch.Tensor:
        """The unit input of a step from the cached ``x`` (and FP inputs with ``needs_fp_inputs``)."""
        return x

    def extra_loss(self, rec: torch.Tensor, step: int, iters: int) -> torch.Tensor | None:
        """A term added to the reconstruction loss ``rec`` of 1-based ``step`` (None: nothing)."""
        return None

    def after_step(self, step: int, iters: int) -> None:
        """Called after the optimiser step of 1-based ``step``."""

    def end(self, name: str, unit: nn.Module, data: UnitData, ctx: CalibContext) -> None:
        """The unit is optimised: finalise it before its successor's inputs run through it (hooks may
        log through ``ctx``)."""

    def finish(self, ctx: CalibContext) -> None:
        """Every unit is done."""


class BatchSampler(Protocol):
    """Which cached samples each step draws (``engines.curriculum``)."""

    def batches(self, n: int, batch_size: int, iters: int, generator: torch.Generator,
                scores: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
        """Endless index batches; ``scores()`` gives each sample's loss under the unit as it stands."""
        ...


# ----------------------------------------------------------------------------- the stage
def check_initialised(model: nn.Module) -> None:
    missing = [n for n, s in quantized_sites(model) if s.enabled and not bool(s.quantizer.initialized)]
    if missing:
        raise RuntimeError(f"reconstruction needs initialised quantizers; run init_ranges first "
                           f"(uninitialised: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")


def schedule(kind: str, iters: int) -> Callable[[int], float]:
    """LambdaLR factor: ``cosine`` = CosineAnnealingLR(T_max=iters, eta_min=0), ``constant`` = 1."""
    if kind not in SCHEDULES:
        raise UserError(f"schedule={kind!r} is not one of {SCHEDULES}")
    if kind == "constant":
        return lambda t: 1.0
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, iters) / iters))


def reconstruct_blocks(model: nn.Module, ctx: CalibContext, iters: int = 1000, batch_size: int = 64,
                       input_source: str = "fp", hooks: Sequence[ReconHook] = (),
                       sampler: BatchSampler | None = None, n_images: int | None = None,
                       progress: bool = True) -> None:
    """Reconstruct every unit of ``model`` in order against ``ctx.fp_model`` (module docstring)."""
    if input_source not in INPUT_SOURCES:
        raise UserError(f"input_source={input_source!r} is not one of {INPUT_SOURCES}")
    if ctx.fp_model is model:
        raise ValueError("ctx.fp_model must be a separate float model, not the model being quantized")
    check_initialised(model)
    set_calibrating(model, False)  # nothing may re-fit itself to a reconstruction batch
    model.eval()
    ctx.fp_model.eval()
    sampler = sampler or RandomBatches()
    images = ctx.images[: n_images or len(ctx.images)]
    units = reconstruction_units(model)
    mix_inputs = input_source != "fp" and any(h.needs_fp_inputs for h in hooks)
    saved = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    with reuse_heap(ctx.device):
        bar = tqdm(total=len(units) * iters, desc="reconstruction", disable=None if progress else True)
        try:
            previous = None
            for index, (name, unit) in enumerate(units):
                bar.set_description(f"recon {name}")
                groups = [g for h in hooks for g in h.begin(name, unit) if g["params"]]
                if not groups:
                    previous = None  # nothing cached for this unit: its successor captures from the start
                    bar.update(iters)
                    continue
                data = cache_unit(model, name, unit, ctx, images, batch_size, input_source, mix_inputs, previous)
                previous = None  # the previous unit's data is no longer needed: free it before optimising
                batches = sampler.batches(len(data.inputs), batch_size, iters,
                                          torch.Generator().manual_seed(ctx.seed + index),
                                          partial(score_samples, unit, data, batch_size, ctx.device))
                loss = optimise_unit(unit, data, ctx, groups, hooks, batches, iters, ctx.seed + index, bar)
                ctx.log({f"recon/{name}/loss": loss})
                for hook in hooks:
                    hook.end(name, unit, data, ctx)  # finalised first: the successor's inputs run through it
                previous = (name, unit, data)
            for hook in hooks:
                hook.finish(ctx)
        finally:
            bar.close()
            for p in model.parameters():
                p.requires_grad_(saved.get(p, False))
            model.eval()


def score_samples(unit: nn.Module, data: UnitData, batch_size: int, device: torch.device) -> torch.Tensor:
    """(n,) reconstruction loss of every cached sample under ``unit`` as it stands (curriculum scores)."""
    def loss(idx: torch.Tensor) -> torch.Tensor:
        return per_sample_lp_loss(unit_output(unit, unit(data.inputs[idx].to(device))), data.targets[idx].to(device))
    return sample_losses(loss, len(data.inputs), batch_size)


def optimise_unit(unit: nn.Module, data: UnitData, ctx: CalibContext, groups: Sequence[dict],
                  hooks: Sequence[ReconHook], batches: Iterator[torch.Tensor], iters: int, seed: int,
                  bar: tqdm) -> float:
    """Run the optimisation of one unit on its cached data; return the last reconstruction loss."""
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    groups = [dict(g) for g in groups]
    schedules = [schedule(g.pop("schedule", "cosine"), iters) for g in groups]
    params = [p for g in groups for p in g["params"]]
    with ExitStack() as stack:
        for p in params:
            p.requires_grad_(True)
        stack.callback(lambda: [p.requires_grad_(False) for p in params])
        for hook in hooks:
            stack.enter_context(hook.optimising(unit, generator))
        stack.enter_context(torch.enable_grad())
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        rec = torch.zeros(())
        for step in range(1, iters + 1):
            idx = next(batches)
            x = data.inputs[idx].to(ctx.device)
            fp_x = None if data.fp_inputs is None else data.fp_inputs[idx].to(ctx.device)
            for hook in hooks:
                x = hook.inputs(x, fp_x)
            rec = lp_loss(unit_output(unit, unit(x)), data.targets[idx].to(ctx.device))
            loss = rec
            for hook in hooks:
                extra = hook.extra_loss(rec, step, iters)
                loss = loss if extra is None else loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for hook in hooks:
                hook.after_step(step, iters)
            bar.update()
        return float(rec.detach())
