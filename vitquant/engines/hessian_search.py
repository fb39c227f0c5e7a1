"""PTQ4ViT's Hessian-guided scale search, with parallel calibration.

Spec: ``specs/baselines.md`` (PTQ4ViT); details from ``hahnyuan/PTQ4ViT`` ``utils/quant_calib.py``
(``HessianQuantCalibrator``), ``quant_layers/{linear,matmul}.py`` and ``configs/PTQ4ViT.py``. For a
quantized activation x feeding a layer with output y, each candidate quantization is scored by

    E[(ŷ − y)ᵀ diag((∂L/∂y)²) (ŷ − y)]

where ŷ is the layer output with the candidate and y, ∂L/∂y are taken on the float model
(parallel calibration: every layer sees FP inputs). Sites and the layer that consumes them:

* ``post_softmax`` → y = A·V of the attention (the ``proj`` input), partner operand V (``v`` site);
* the input site of any ``QuantLinear`` (``post_gelu`` → fc2, ``post_ln`` → qkv/fc1,
  ``attn_out`` → proj, ``linear_in`` → head) → y = the linear's output, partner operand W.

Candidates: a ``TwoRegionQuantizer`` (twin uniform, V-2SF) lists its own (``candidates``); any
other quantizer with a ``scale`` buffer (uniform, log) is searched over α·Δ₀ for
α = eq_alpha + i·(eq_beta − eq_alpha)/eq_n (official 0.01, 1.2, 100), Δ₀ its current scale.
``rounds`` alternates activation and partner search (the official ``search_round = 3``); a
partner without a quantizer stays float.

Simplifications, on purpose:

* Loss: cross-entropy against the FP model's top-1 prediction. The official code uses
  KL(softmax(FP) ‖ softmax(model)) with the model itself in FP mode during parallel calibration,
  whose gradient vanishes there (only rounding noise remains; hahnyuan/PTQ4ViT#17 questions the
  loss); the pseudo-label CE is the Fisher-style choice with a non-zero gradient.
* One candidate per quantizer (the whole layer; per-channel scales are scaled together), not the
  official per-head / per-row-block sub-searches (``n_G``, ``n_V``, ``n_H`` are 1 in the config).
* The partner operand is quantized with its current quantizer also while the post-Softmax split
  is searched (the official ``SoS`` search uses the float V there).
* Activations, outputs and gradients of all searched sites are collected in one pass over the
  calibration images and kept on CPU (ViT-B, 32 images: about 2 GB).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.errors import UserError
from vitquant.nn.linear import QuantLinear
from vitquant.nn.site import QuantSite, iter_sites, set_quant_state
from vitquant.quant.base import Quantizer
from vitquant.quant.two_scale import TwoRegionQuantizer

Params = tuple[torch.Tensor, ...]
SEARCHABLE_KINDS = ("post_softmax", "post_ln", "attn_out", "post_gelu", "linear_in")


@dataclass
class Target:
    """A searched site, its consumer ``output(x̂, ô)`` and the float data seen by it."""

    name: str
    site: QuantSite
    partner: QuantSite
    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    constant_operand: torch.Tensor | None = None  # the weight of a linear consumer
    xs: list[torch.Tensor] = field(default_factory=list)
    operands: list[torch.Tensor] = field(default_factory=list)
    ys: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    buf: dict[str, torch.Tensor] = field(default_factory=dict)

    def operand(self, b: int) -> torch.Tensor:
        return self.constant_operand if self.constant_operand is not None else self.operands[b]


def linear_target(name: str, linear: QuantLinear) -> tuple[Target, list]:
    t = Target(name, linear.input_site, linear.weight_site,
               lambda x, w: F.linear(x, w, linear.bias), constant_operand=linear.weight.detach())

    def hook(module, args, out):
        t.buf.update(x=args[0].detach(), y=out)
    return t, [linear.register_forward_hook(hook)]


def attention_target(name: str, attn: nn.Module) -> tuple[Target, list]:
    def output(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = a @ v
        return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)

    t = Target(name, attn.post_softmax_site, attn.v_site, output)
    hooks = [attn.post_softmax_site.register_forward_hook(lambda m, a, out: t.buf.update(x=a[0].detach())),
             attn.v_site.register_forward_hook(lambda m, a, out: t.buf.update(o=a[0].detach())),
             attn.proj.register_forward_pre_hook(lambda m, a: t.buf.update(y=a[0]))]
    return t, hooks


def find_targets(model: nn.Module, kinds: Sequence[str]) -> tuple[list[Target], list]:
    """Searchable sites of ``kinds`` (with a quantizer) and the hooks that capture their data."""
    names = {id(site): name for name, site in iter_sites(model)}
    targets, hooks = [], []
    for module in model.modules():
        if isinstance(module, QuantLinear):
            site, make = module.input_site, linear_target
        elif hasattr(module, "post_softmax_site") and hasattr(module, "v_site"):
            site, make = module.post_softmax_site, attention_target
        else:
            continue
        if site.kind in kinds and site.quantizer is not None:
            t, h = make(names[id(site)], module)
            targets.append(t)
            hooks += h
    return targets, hooks


def collect(model: nn.Module, targets: list[Target], ctx: CalibContext, images: torch.Tensor,
            batch_size: int) -> None:
    """FP forward/backward per batch: store x, the partner operand, y and ∂L/∂y on CPU."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(ctx.device)
        with torch.no_grad():
            logits = ctx.fp_model(batch)
        if not torch.is_tensor(logits) or logits.dim() != 2:  # detection/segmentation: feature maps, no classes
            raise UserError("method ptq4vit guides its search with the cross-entropy of a classifier's logits; this "
                            "model returns no logits (detection/segmentation), so use another method")
        labels = logits.argmax(-1)
        with torch.enable_grad():
            logits = model(batch.clone().requires_grad_(True))  # every activation then carries a graph
            loss = F.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, [t.buf["y"] for t in targets])
        for t, g in zip(targets, grads, strict=True):
            t.xs.append(t.buf["x"].cpu())
            t.ys.append(t.buf["y"].detach().cpu())
            t.grads.append(g.detach().cpu())
            if "o" in t.buf:
                t.operands.append(t.buf["o"].cpu())
            t.buf.clear()


def candidates(q: Quantizer, data: torch.Tensor, alphas: list[float]) -> list[Params]:
    """Candidate parameters of ``q``: its own list, or its scale times each α."""
    if isinstance(q, TwoRegionQuantizer):
        return q.candidates(q.rows(data))
    if not hasattr(q, "scale"):
        raise TypeError(f"{type(q).__name__} has neither candidates() nor a scale to search")
    base = q.scale.detach().clone()
    return [(a * base,) for a in alphas]


@torch.no_grad()
def apply(q: Quantizer, params: Params) -> None:
    if isinstance(q, TwoRegionQuantizer):
        q.set_candidate(*params)
    else:
        q.scale.copy_(params[0])


def maybe_quant(site: QuantSite, x: torch.Tensor) -> torch.Tensor:
    return site.quantizer.quantize(x) if site.quantizer is not None else x


@torch.no_grad()
def search(t: Target, searched: QuantSite, cands: list[Params], device: torch.device) -> float:
    """Give ``searched`` (the site or its partner) the candidate with the least Hessian-weighted error."""
    errors = torch.zeros(len(cands), dtype=torch.float64)
    for b in range(len(t.ys)):
        x, o = t.xs[b].to(device), t.operand(b).to(device)
        y, g2 = t.ys[b].to(device), t.grads[b].to(device).pow(2)
        fixed = maybe_quant(t.partner, o) if searched is t.site else maybe_quant(t.site, x)
        for i, params in enumerate(cands):
            apply(searched.quantizer, params)
            y_hat = t.output(searched.quantizer.quantize(x), fixed) if searched is t.site \
                else t.output(fixed, searched.quantizer.quantize(o))
            errors[i] += y_hat.sub_(y).square_().mul_(g2).sum().double()  # in place: y_hat is fresh
    best = int(errors.argmin())
    apply(searched.quantizer, cands[best])
    return float(errors[best])


def ensure_initialised(q: Quantizer | None, data: torch.Tensor) -> None:
    if q is not None and not bool(q.initialized):
        q.init_from(data)


def hessian_scale_search(model: nn.Module, ctx: CalibContext,
                         kinds: Sequence[str] = ("post_softmax", "post_gelu"), rounds: int = 3,
                         n_images: int | None = 32, batch_size: int = 8,
                         eq_alpha: float = 0.01, eq_beta: float = 1.2, eq_n: int = 100) -> None:
    """Search the quantizers of ``kinds`` (and their partners) by the Hessian-guided metric."""
    if rounds < 1:
        raise UserError(f"rounds={rounds} must be at least 1")
    unsupported = set(kinds) - set(SEARCHABLE_KINDS)
    if unsupported:
        raise UserError(f"hessian search has no consumer layer for kinds {sorted(unsupported)}; "
                         f"searchable: {', '.join(SEARCHABLE_KINDS)}")
    targets, hooks = find_targets(model, kinds)
    if not targets:
        return
    enabled = {id(s): s.enabled for _, s in iter_sites(model)}
    was_training = model.training
    model.eval()
    ctx.fp_model.eval()
    set_quant_state(model, weights=False, activations=False)
    try:
        collect(model, targets, ctx, ctx.images[: n_images or len(ctx.images)], batch_size)
    finally:
        for h in hooks:
            h.remove()
        for _, site in iter_sites(model):
            site.enabled = enabled[id(site)]
        model.train(was_training)
    alphas = [eq_alpha + i * (eq_beta - eq_alpha) / eq_n for i in range(eq_n + 1)]
    for t in targets:
        x_all = torch.cat(t.xs)
        operand_all = t.constant_operand if t.constant_operand is not None else torch.cat(t.operands)
        ensure_initialised(t.site.quantizer, x_all)
        ensure_initialised(t.partner.quantizer, operand_all)
        site_cands = candidates(t.site.quantizer, x_all, alphas)
        partner_cands = candidates(t.partner.quantizer, operand_all, alphas) if t.partner.quantizer else None
        for _ in range(rounds):
            error = search(t, t.site, site_cands, ctx.device)
            if partner_cands is None:
                break
            error = search(t, t.partner, partner_cands, ctx.device)
        ctx.log({f"hessian/{t.name}/error": error})
        t.xs, t.operands, t.ys, t.grads = [], [], [], []
