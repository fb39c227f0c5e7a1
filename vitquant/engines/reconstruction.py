"""Block reconstruction stage (I&S-ViT SOS stages 1 and 3; BRECQ/QDrop with AdaRound).

Units are reconstructed one after another in module order (``reconstruction_units``): the
patch-embedding conv, the classifier head and Swin ``PatchMerging`` layer-wise, every transformer
block (a module with an attention twin ``attn`` and an ``mlp``) block-wise. For each unit:

1. Cache, on CPU, its inputs and FP targets for the calibration images. Targets are the output of
   the same-named module of ``ctx.fp_model`` on FP inputs. Inputs come from the FP model
   (``input_source='fp'``, I&S-ViT stage 1, ``GetLayerInpOut_T``) or from the quantized model in its
   current state, all earlier units already reconstructed (``'quantized'``, I&S-ViT stage 3 /
   BRECQ / QDrop, ``GetLayerInpOut``). Hooks stop the forward right after the unit.
2. Optimise, for ``iters`` steps on random batches of ``batch_size`` cached samples::

       L = lp_loss(unit(x), y) [+ λ Σ_V (1 − |2h(V) − 1|^β)  for AdaRound after the warm-up]
       lp_loss(ŷ, y) = mean over the rest of Σ_dim1 (ŷ − y)²   (official ``lp_loss(p=2)``)

   dim 1 is the token axis for blocks (Swin's (B, H, W, C) outputs are flattened to (B, H·W, C)
   first), the class axis for the head and the channel axis for the patch conv, as in the code.
   β is held at ``b_range[0]`` for the ``warmup`` fraction, then decays linearly to ``b_range[1]``
   (``LinearTempDecay``); the rounding term is off during the warm-up.

What is trained (Adam):

* ``round_mode='ste'`` (I&S-ViT): every parameter of the unit except LayerNorm γ/β and quantizer
  parameters — the Linear/Conv weights and biases, and Swin's relative-position bias table, which
  the official code also leaves trainable — through the quantizers' straight-through rounding;
  lr ``lr`` with ``CosineAnnealingLR(T_max=iters, eta_min=0)``.
* ``round_mode='adaround'`` (BRECQ/QDrop): weights frozen; AdaRound's V per weight quantizer
  (``vitquant.quant.adaround``) with a constant lr ``lr`` (QDrop: ``Adam(w_para)``, lr 1e-3). At the
  end the hard rounding is written into the weights, which then lie on the quantization grid.
* ``learn_act_scales``: the unit's activation ``UniformQuantizer`` scales too (QDrop's LSQ step),
  lr ``act_lr`` with cosine annealing.
* ``train_weights=False``: nothing of the above (weights stay as initialised); only what ``hooks``
  add is trained (AIQViT's low-rank compensation, ``engines.lowrank``). A unit with nothing to
  train is skipped without caching.

``hooks`` (``ReconHook``) extend a unit's optimisation without a second loop: extra parameter
groups (Adam, cosine-annealed), an extra loss term, a callback after every step (e.g. their own
optimiser, as the rank search's architecture logits have) and one when the unit is done.

Sample order: by default each step draws ``batch_size`` cached samples uniformly; ``curriculum``
draws them easy→hard with a linear pacing function (``engines.curriculum``, AIQViT).

``drop_prob > 0`` is QDrop: inside the unit every activation quantizer outputs, element-wise with
that probability, the float value (``engines.qdrop``), and with quantized inputs the unit input is
likewise mixed element-wise from FP-model and quantized-model inputs (QDrop ``input_prob``).

The unit runs in eval mode (the models have no dropout at calibration); quantizers must already be
initialised (run ``init_ranges`` first); the model ends in eval mode with its ``requires_grad``
flags restored.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import PatchMerging
from torch import nn
from tqdm import tqdm

from vitquant.engines.context import CalibContext
from vitquant.engines.cpu_heap import reuse_heap
from vitquant.engines.curriculum import curriculum_batches, random_batches, sample_losses
from vitquant.engines.qdrop import mix, quant_dropout
from vitquant.nn import QuantAttention, QuantConv2d, QuantLinear, QuantWindowAttention
from vitquant.nn.site import iter_sites, quantized_sites, set_calibrating
from vitquant.quant.adaround import AdaRound
from vitquant.quant.base import Quantizer
from vitquant.quant.uniform import UniformQuantizer

INPUT_SOURCES = ("fp", "quantized")
ROUND_MODES = ("ste", "adaround")


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


def rounding_temperature(t: int, iters: int, warmup: float, b_range: tuple[float, float]) -> float:
    """β at step t (1-based): b_range[0] until warmup·iters, then linear to b_range[1] at iters."""
    start = warmup * iters
    if t < start:
        return float(b_range[0])
    rel = (t - start) / max(iters - start, 1e-12)
    return b_range[1] + (b_range[0] - b_range[1]) * max(0.0, 1.0 - rel)


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


# ----------------------------------------------------------------------------- what is trained
def ste_parameters(unit: nn.Module) -> list[nn.Parameter]:
    """Every parameter except LayerNorm affine and quantizer parameters (I&S-ViT ``block_recon``)."""
    frozen = {id(p) for m in unit.modules() if isinstance(m, (nn.LayerNorm, Quantizer)) for p in m.parameters()}
    return [p for p in unit.parameters() if id(p) not in frozen]


def learnable_act_scales(unit: nn.Module) -> list[nn.Parameter]:
    """Make the enabled activation ``UniformQuantizer`` scales of ``unit`` Parameters (LSQ step)."""
    return [p for _, s in iter_sites(unit)
            if s.enabled and not s.is_weight and isinstance(s.quantizer, UniformQuantizer)
            for p in s.quantizer.make_learnable("scale")]


@contextmanager
def adaround(unit: nn.Module) -> Iterator[list[AdaRound]]:
    """Swap each enabled weight quantizer of ``unit`` for AdaRound; on success write the hard rounding
    into the weights (W ← s·(clamp(⌊W/s⌋ + [V ≥ 0] + z) − z)); always put the quantizers back."""
    layers = [m for m in unit.modules() if isinstance(m, (QuantLinear, QuantConv2d))
              and m.weight_site.enabled and m.weight_site.quantizer is not None]
    if not layers:
        raise ValueError("round_mode='adaround' needs enabled weight quantizers in the unit "
                         "(initialise weights with init_ranges(weights=True) first)")
    originals = [m.weight_site.quantizer for m in layers]
    rounders = [AdaRound(q, m.weight) for m, q in zip(layers, originals)]
    for m, r in zip(layers, rounders):
        m.weight_site.quantizer = r
    try:
        yield rounders
        with torch.no_grad():
            for m, r in zip(layers, rounders):
                m.weight.copy_(r.quantize(m.weight, hard=True))
    finally:
        for m, q in zip(layers, originals):
            m.weight_site.quantizer = q


class ReconHook:
    """Extends one unit's reconstruction (what it trains, an extra loss, per-step work); no-ops here."""

    def begin(self, name: str, unit: nn.Module) -> list[dict]:
        """Prepare ``unit``; return extra Adam parameter groups (``{"params": [...], "lr": ...}``)."""
        return []

    def extra_loss(self, rec: torch.Tensor) -> torch.Tensor | None:
        """A term added to the reconstruction loss ``rec`` of the step (None: nothing)."""
        return None

    def after_step(self, step: int, iters: int) -> None:
        """Called after the optimiser step of 1-based ``step``."""

    def end(self, name: str, unit: nn.Module, data: UnitData, ctx: CalibContext) -> None:
        """The unit is optimised: finalise it (hooks may log through ``ctx``)."""

    def finish(self, ctx: CalibContext) -> None:
        """Every unit is done."""


# ----------------------------------------------------------------------------- the stage
def check_initialised(model: nn.Module) -> None:
    missing = [n for n, s in quantized_sites(model) if s.enabled and not bool(s.quantizer.initialized)]
    if missing:
        raise RuntimeError(f"reconstruction needs initialised quantizers; run init_ranges first "
                           f"(uninitialised: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")


def cosine(iters: int):
    """CosineAnnealingLR(T_max=iters, eta_min=0) as a LambdaLR factor."""
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, iters) / iters))


def reconstruct_blocks(model: nn.Module, ctx: CalibContext, iters: int = 1000, batch_size: int = 64,
                       lr: float = 4e-5, input_source: str = "fp", drop_prob: float = 0.0,
                       learn_act_scales: bool = False, act_lr: float = 4e-5, round_mode: str = "ste",
                       round_loss_weight: float = 0.01, b_range: tuple[float, float] = (20, 2),
                       warmup: float = 0.2, n_images: int | None = None, progress: bool = True,
                       train_weights: bool = True, hooks: Sequence[ReconHook] = (), curriculum: bool = False,
                       curriculum_start: float = 0.3, curriculum_grow: float = 0.5) -> None:
    """Reconstruct every unit of ``model`` in order against ``ctx.fp_model`` (module docstring)."""
    if input_source not in INPUT_SOURCES:
        raise ValueError(f"input_source={input_source!r} is not one of {INPUT_SOURCES}")
    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode={round_mode!r} is not one of {ROUND_MODES}")
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob={drop_prob} is not a probability")
    if ctx.fp_model is model:
        raise ValueError("ctx.fp_model must be a separate float model, not the model being quantized")
    check_initialised(model)
    set_calibrating(model, False)  # nothing may re-fit itself to a reconstruction batch
    model.eval()
    ctx.fp_model.eval()
    images = ctx.images[: n_images or len(ctx.images)]
    units = reconstruction_units(model)
    saved = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    with reuse_heap(ctx.device):
        bar = tqdm(total=len(units) * iters, desc="reconstruction", disable=None if progress else True)
        try:
            previous = None
            for index, (name, unit) in enumerate(units):
                bar.set_description(f"recon {name}")
                extra_groups = [g for h in hooks for g in h.begin(name, unit) if g["params"]]
                if not (train_weights or learn_act_scales or extra_groups):
                    previous = None  # nothing cached for this unit: its successor captures from the start
                    bar.update(iters)
                    continue
                data = cache_unit(model, name, unit, ctx, images, batch_size, input_source, drop_prob > 0, previous)
                previous = None  # the previous unit's data is no longer needed: free it before optimising
                sampler = torch.Generator().manual_seed(ctx.seed + index)
                batches = (curriculum_batches(score_samples(unit, data, batch_size, ctx.device), batch_size, iters,
                                              sampler, curriculum_start, curriculum_grow)
                           if curriculum else random_batches(len(data.inputs), batch_size, sampler))
                loss = optimise_unit(unit, data, ctx, seed=ctx.seed + index, iters=iters, batch_size=batch_size,
                                     lr=lr, drop_prob=drop_prob, learn_act_scales=learn_act_scales, act_lr=act_lr,
                                     round_mode=round_mode, round_loss_weight=round_loss_weight, b_range=b_range,
                                     warmup=warmup, bar=bar, batches=batches, train_weights=train_weights,
                                     extra_groups=extra_groups, hooks=hooks)
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


def optimise_unit(unit: nn.Module, data: UnitData, ctx: CalibContext, seed: int, iters: int, batch_size: int,
                  lr: float, drop_prob: float, learn_act_scales: bool, act_lr: float, round_mode: str,
                  round_loss_weight: float, b_range: tuple[float, float], warmup: float, bar: tqdm,
                  batches: Iterator[torch.Tensor] | None = None, train_weights: bool = True,
                  extra_groups: Sequence[dict] = (), hooks: Sequence[ReconHook] = ()) -> float:
    """Run the optimisation of one unit on its cached data; return the last reconstruction loss."""
    if batches is None:
        batches = random_batches(len(data.inputs), batch_size, torch.Generator().manual_seed(seed))
    dropper = torch.Generator(device=ctx.device).manual_seed(seed)
    with ExitStack() as stack:
        groups, schedules = [], []
        rounders = []
        if train_weights:
            rounders = stack.enter_context(adaround(unit)) if round_mode == "adaround" else []
            groups.append({"params": [r.alpha for r in rounders] or ste_parameters(unit), "lr": lr})
            schedules.append(cosine(iters) if round_mode == "ste" else (lambda t: 1.0))
        if learn_act_scales:
            groups.append({"params": learnable_act_scales(unit), "lr": act_lr})
            schedules.append(cosine(iters))
        for group in extra_groups:
            groups.append(dict(group))
            schedules.append(cosine(iters))
        params = [p for g in groups for p in g["params"]]
        for p in params:
            p.requires_grad_(True)
        stack.callback(lambda: [p.requires_grad_(False) for p in params])
        stack.enter_context(quant_dropout(unit, drop_prob, dropper))
        stack.enter_context(torch.enable_grad())
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        rec = torch.zeros(())
        for step in range(1, iters + 1):
            idx = next(batches)
            x = data.inputs[idx].to(ctx.device)
            if data.fp_inputs is not None:
                x = mix(data.fp_inputs[idx].to(ctx.device), x, drop_prob, dropper)
            rec = lp_loss(unit_output(unit, unit(x)), data.targets[idx].to(ctx.device))
            loss = rec
            if rounders and step >= warmup * iters:
                beta = rounding_temperature(step, iters, warmup, b_range)
                loss = rec + round_loss_weight * sum(r.round_loss(beta) for r in rounders)
            for hook in hooks:
                extra = hook.extra_loss(rec)
                loss = loss if extra is None else loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for hook in hooks:
                hook.after_step(step, iters)
            bar.update()
        return float(rec.detach())
