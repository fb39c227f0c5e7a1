"""Statistics used to initialise quantizers from calibration tensors.

``torch.quantile`` refuses large inputs (2^24 elements on older torch) and sorts a full copy,
so quantiles here use ``kthvalue`` (exact, linear interpolation between the two neighbouring
order statistics, identical to ``torch.quantile``'s default) on at most ``max_rows`` rows.
When a tensor is larger, rows (tokens) are subsampled with a seeded generator: every channel
keeps the same rows, so per-channel statistics stay comparable and runs stay reproducible.

Candidate searches (``least_error``) fake-quantize the calibration view once per candidate
(100-180 candidates for the MSE and two-scale searches), so they score candidates on a smaller
seeded subsample of at most ``SEARCH_MAX_ELEMENTS`` values: the candidates themselves (ranges,
quantiles, maxima) still come from the full view, only the choice among them is estimated. 2^22 is
above every tensor a multi-candidate search sees on the CIFAR reference models at the methods'
range-initialisation image counts (at most 3.1M values: swin_cifar's post-GELU at 64 images; FQ-ViT's
100 images give 4.9M there, but its min-max init has one candidate), so their results are unchanged,
and it bounds the search on dense-task feature maps (a 32-image COCO batch gives 17M-value
post-GELU tensors: 4× fewer passes of each candidate).
"""
from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 1 << 24
SEARCH_MAX_ELEMENTS = 1 << 22


def to_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as (rows, channels): channels along ``axis``, or one column when ``axis`` is None."""
    if axis is None:
        return x.reshape(-1, 1)
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


def subsample_rows(rows: torch.Tensor, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0) -> torch.Tensor:
    """Keep at most ``max_elements`` values by drawing whole rows with a seeded generator."""
    n, c = rows.shape
    keep = max(1, max_elements // c)
    if n <= keep:
        return rows
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:keep].to(rows.device)
    return rows.index_select(0, idx)


def quantile_rows(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-column ``q``-quantile of a (rows, channels) tensor, exact, with linear interpolation."""
    n = rows.shape[0]
    pos = q * (n - 1)
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    frac = pos - lo
    v_lo = rows.kthvalue(lo + 1, dim=0).values
    if frac == 0.0 or hi == lo:
        return v_lo
    v_hi = rows.kthvalue(hi + 1, dim=0).values
    return v_lo + (v_hi - v_lo) * frac


def least_error(candidates, error_fn):
    """Among candidate parameter tuples of (C,) tensors, keep per channel the one with least error.

    ``error_fn(*candidate)`` returns a (C,) error. Channels choose independently, as RepQ-ViT's
    per-channel percentile search does.
    """
    best_err, best = None, None
    for cand in candidates:
        err = error_fn(*cand)
        if best is None:
            best_err, best = err, tuple(cand)
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = tuple(torch.where(better, c, b) for c, b in zip(cand, best))
    return best
