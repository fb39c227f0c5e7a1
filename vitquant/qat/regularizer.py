"""VVTQ's variation-aware regularizer (``util_loss.BinReg``) and the oscillation rate.

For a weight w with step s and integer range [Q_N, Q_P] (spec ``vvtq.md``)::

    w_c = clamp(w/s, Q_N, Q_P)·s,   ŵ = round(w_c/s)·s,   bin k = {i : ŵ_i/s = k}
    R(w) = mean((w_c − sg(ŵ))²) + Σ_k Var({w_c,i : i ∈ bin k})      (bins with > 1 element)

The loss adds λ(t)·Σ_layers R(w) with λ(t) = 0 for t < start·T and a cosine ramp to λ after
(``CosineTempDecay(t_max=T, range=(0, λ), rel_decay_start=start)``). Here t counts fractional
epochs (step / steps per epoch), which equals the official per-epoch value at each epoch start and
also ramps within the few epochs of a short run. The step s is detached: the term pulls latent
weights towards their bin centres, it does not move the grid. Var is the unbiased variance
(``torch.var``'s default).

Oscillation rate: the share of latent weights whose integer code changed in one optimizer step,
averaged over the steps of an epoch (weights flip-flopping across a rounding boundary is the
variation the regularizer suppresses).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def weight_sites(model: nn.Module) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, quantizer, latent weight) for every weight site whose quantizer exposes integer codes."""
    out = []
    for name, module in model.named_modules():
        site = getattr(module, "weight_site", None)
        if site is not None and site.quantizer is not None and hasattr(site.quantizer, "integer_codes"):
            out.append((name, site.quantizer, module.weight))
    return out


def bin_regularizer(w: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """R(w) of the module docstring; ``scale`` broadcasts against ``w``."""
    s = scale.detach()
    w_c = torch.clamp(w / s, qmin, qmax) * s
    codes = torch.round(w_c / s).detach()
    distance = (w_c - codes * s).pow(2).mean()
    bins = (codes - qmin).long().flatten()
    n_bins = qmax - qmin + 1
    flat = w_c.flatten()
    count = torch.bincount(bins, minlength=n_bins).to(flat.dtype)
    total = torch.zeros(n_bins, dtype=flat.dtype, device=flat.device).index_add(0, bins, flat)
    total_sq = torch.zeros(n_bins, dtype=flat.dtype, device=flat.device).index_add(0, bins, flat * flat)
    used = count > 1
    var = (total_sq[used] - total[used].pow(2) / count[used]) / (count[used] - 1)
    return distance + var.sum()


def variation_loss(model: nn.Module) -> torch.Tensor:
    """Σ over weight sites of R(w) (zero for a model without LSQ weight quantizers)."""
    terms = [bin_regularizer(w, q.expand(q.scale, w).abs().clamp_min(1e-8), q.qmin, q.qmax)
             for _, q, w in weight_sites(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def reg_weight(t: float, total: float, weight: float, start: float = 0.25) -> float:
    """λ(t): 0 before ``start·total``, then weight·(1 − cos(π·r))/2 with r the ramp fraction."""
    begin = start * total
    if weight == 0 or t < begin or total <= begin:
        return 0.0
    r = min((t - begin) / (total - begin), 1.0)
    return weight * (1.0 - math.cos(math.pi * r)) / 2.0


class OscillationTracker:
    """Counts integer-code flips of the latent weights between consecutive optimizer steps."""

    def __init__(self) -> None:
        self.previous: dict[str, torch.Tensor] = {}
        self.sum_rate, self.n_steps = 0.0, 0

    @torch.no_grad()
    def codes(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: q.integer_codes(w.detach()).to(torch.int16) for name, q, w in weight_sites(model)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> float | None:
        """Record one step; returns its flip rate (None on the first call, which only remembers codes)."""
        current = self.codes(model)
        rate = None
        if self.previous and current:
            flips = sum(int((current[k] != self.previous[k]).sum()) for k in current if k in self.previous)
            total = sum(current[k].numel() for k in current if k in self.previous)
            rate = flips / max(total, 1)
            self.sum_rate += rate
            self.n_steps += 1
        self.previous = current
        return rate

    def epoch_rate(self) -> float | None:
        """Mean rate since the last ``reset_epoch`` (None without a measured step)."""
        return self.sum_rate / self.n_steps if self.n_steps else None

    def reset_epoch(self) -> None:
        self.sum_rate, self.n_steps = 0.0, 0

    def state_dict(self) -> dict:
        return {"previous": dict(self.previous), "sum_rate": self.sum_rate, "n_steps": self.n_steps}

    def load_state_dict(self, state: dict) -> None:
        self.previous = dict(state["previous"])
        self.sum_rate, self.n_steps = float(state["sum_rate"]), int(state["n_steps"])
