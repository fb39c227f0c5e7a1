"""Statistics used to initialise quantizers from calibration tensors, collected in bounded memory.

What a quantizer sees of its calibration data is an :class:`Observation`: the exact per-channel
minimum and maximum of every value, and a sample of at most ``max_elements`` values kept as whole
rows (tokens: every channel keeps the same rows, so per-channel statistics stay comparable). A
:class:`RowSampler` builds it from one tensor or streams it over several (micro-batches) in memory
bounded by the cap, never by the data: the extrema are reductions over the tensor (no copy); when
the rows fit under the cap every row is kept, in order (the view is then exactly the tensor's);
otherwise ``keep = max_elements // C`` rows are drawn uniformly without replacement by a seeded
generator (random indices, deduplicated and topped up, O(keep) memory: never a permutation or a
copy of the whole tensor) and gathered in data order. Streamed, each part contributes in proportion
to its ``share`` of the calibration set (stratified sampling: every micro-batch gets its share of
the ``keep`` rows), so the sample never holds more than ``keep`` rows.

``torch.quantile`` refuses large inputs (2^24 elements on older torch) and sorts a full copy,
so quantiles here use ``kthvalue`` (exact, linear interpolation between the two neighbouring
order statistics, identical to ``torch.quantile``'s default) on the sample.

Candidate searches (``least_error``) fake-quantize the calibration view once per candidate
(100-180 candidates for the MSE and two-scale searches), so they score candidates on a smaller
seeded subsample of at most ``SEARCH_MAX_ELEMENTS`` values: the candidates themselves (ranges,
quantiles, maxima) still come from the sample, only the choice among them is estimated. 2^22 is
above every tensor a multi-candidate search sees on the CIFAR reference models at the methods'
range-initialisation image counts (at most 3.1M values: swin_cifar's post-GELU at 64 images; FQ-ViT's
100 images give 4.9M there, but its min-max init has one candidate), so their results are unchanged,
and it bounds the search on dense-task feature maps (a 32-image COCO batch gives 17M-value
post-GELU tensors: 4× fewer passes of each candidate).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_ELEMENTS = 1 << 24
SEARCH_MAX_ELEMENTS = 1 << 22
GATHER_ROWS = 1 << 20  # indices gathered at a time from a non-contiguous tensor


@dataclass
class Observation:
    """What calibration saw at one site: ``rows`` (a bounded (rows, C) float32 sample, every row when
    ``n_rows`` fit under the cap) and the exact per-channel ``lo``/``hi`` over all ``n_rows`` rows."""

    rows: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    n_rows: int

    @property
    def subsampled(self) -> bool:
        return self.n_rows > self.rows.shape[0]


def to_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as (rows, channels): channels along ``axis``, or one column when ``axis`` is None."""
    if axis is None:
        return x.reshape(-1, 1)
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


def sample_indices(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices of ``range(n)``, uniform without replacement, sorted, in O(k) memory
    (int32 when ``n`` < 2^31).

    Draws with replacement until ``k`` distinct values are in hand, then keeps a random ``k`` of them:
    by symmetry every k-subset is equally likely. (A permutation of ``n`` would cost 8·n bytes: 6.6 GB
    for one per-tensor post-GELU site of a 32-image COCO batch.)
    """
    if 2 * k >= n:
        return torch.randperm(n, generator=gen)[:k].sort().values
    dtype = torch.int32 if n < 2**31 else torch.int64  # half the memory of the dedup sort
    idx = None
    while idx is None or idx.numel() < k:
        have = 0 if idx is None else idx.numel()
        draw = torch.randint(n, (int(1.05 * (k - have)) + 16,), generator=gen, dtype=dtype)
        idx = sorted_unique(draw if idx is None else torch.cat([idx, draw]))
    if idx.numel() > k:  # drop a uniform random subset of the surplus
        keep = torch.ones(idx.numel(), dtype=torch.bool)
        keep[sample_indices(idx.numel(), idx.numel() - k, gen)] = False
        idx = idx[keep]
    return idx


def sorted_unique(values: torch.Tensor) -> torch.Tensor:
    """Distinct values of a 1-D CPU integer tensor, sorted; sorts ``values`` in place (numpy's sort needs no
    index array: ``torch.unique`` and ``torch.sort`` allocate 8 more bytes per value for one)."""
    arr = values.numpy()
    arr.sort()
    first = np.ones(arr.size, dtype=bool)
    np.not_equal(arr[1:], arr[:-1], out=first[1:])
    return torch.from_numpy(arr[first])


def gather_rows(xm: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (sorted) of channels-last ``xm`` seen as (rows, C), as float32, copying only those rows."""
    c = xm.shape[-1]
    if xm.is_contiguous():
        return xm.reshape(-1, c).index_select(0, idx.to(xm.device)).float()
    parts = []
    for s in range(0, idx.numel(), GATHER_ROWS):
        where = torch.unravel_index(idx[s: s + GATHER_ROWS].long().to(xm.device), xm.shape[:-1])
        parts.append(xm[where].float())
    return torch.cat(parts) if parts else xm.new_empty((0, c), dtype=torch.float32)


class RowSampler:
    """Builds an :class:`Observation` (module docstring) from one tensor or a stream of parts.

    ``add(x, share)``: ``share`` is the part's fraction of the whole stream (a micro-batch of 8 of 32
    images: 0.25); the sample keeps at most ``share · keep`` of its rows, every row when that many fit.
    """

    def __init__(self, axis: int | None, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0) -> None:
        self.axis, self.max_elements = axis, int(max_elements)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.n_rows = 0
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.parts: list[torch.Tensor] = []
        self.share = 1.0  # the default ``share`` of ``add``

    def add(self, x: torch.Tensor, share: float | None = None) -> None:
        share = self.share if share is None else share
        x = x.detach()
        if self.axis is None:  # one column
            xm = x.reshape(-1, 1) if x.dim() < 2 else x.unsqueeze(-1)
        else:  # channels last; a 1-D tensor is one row
            xm = x.movedim(self.axis, -1) if x.dim() > 1 else x.unsqueeze(0)
        lead = tuple(range(xm.dim() - 1))
        lo, hi = xm.amin(dim=lead).float(), xm.amax(dim=lead).float()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        c = xm.shape[-1]
        n = xm.numel() // c
        self.n_rows += n
        quota = max(1, round(share * max(1, self.max_elements // c)))
        if n <= quota:
            self.parts.append(xm.reshape(-1, c).float().clone() if xm.is_contiguous() else xm.reshape(-1, c).float())
        else:
            self.parts.append(gather_rows(xm, sample_indices(n, quota, self.gen)))

    def observation(self) -> Observation:
        """The sample and extrema of everything added (rows: every row in order when under the cap)."""
        if self.lo is None:
            raise RuntimeError("RowSampler.observation() before any tensor was added")
        rows = self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)
        return Observation(rows, self.lo, self.hi, self.n_rows)


def observe(x: torch.Tensor, axis: int | None, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0) -> Observation:
    """The :class:`Observation` of one tensor."""
    sampler = RowSampler(axis, max_elements, seed)
    sampler.add(x)
    return sampler.observation()


def subsample_rows(rows: torch.Tensor, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0) -> torch.Tensor:
    """Keep at most ``max_elements`` values by drawing whole rows with a seeded generator (the candidate
    search's scoring rows, drawn from an already bounded sample)."""
    n, c = rows.shape
    keep = max(1, max_elements // c)
    if n <= keep:
        return rows
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:keep].to(rows.device)
    return rows.index_select(0, idx)


def quantiles_rows(rows: torch.Tensor, qs: Sequence[float]) -> list[torch.Tensor]:
    """Per-column ``q``-quantiles of a (rows, channels) tensor for each q in ``qs``, exact, with linear
    interpolation: at position p = q·(n − 1), v = x₍⌊p⌋₎ + (x₍⌊p⌋+1₎ − x₍⌊p⌋₎)·(p − ⌊p⌋), x₍ₖ₎ the k-th
    smallest (as ``torch.quantile``).

    The order statistics come from two partial sorts (``topk``), one per tail: the bottom k₁ for ranks in
    the lower half, the top k₂ for ranks in the upper half. Clipping searches ask for extreme quantiles
    (RepQ-ViT's 0.999–0.99999, I&S-ViT's nine weight percentiles), whose ranks lie within the outer 0.1 %
    (or the outer few % for weights), so two ``topk`` calls replace one ``kthvalue`` per rank and per
    search candidate (2 per quantile): on a 16M-value activation sample six ``kthvalue`` took ~6× the time.
    """
    n = rows.shape[0]
    spans = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(pos)
        spans.append((lo, min(lo + 1, n - 1), pos - lo))
    ranks = {r for lo, hi, frac in spans for r in ((lo, hi) if frac else (lo,))}
    low, high = [r for r in ranks if 2 * r < n], [r for r in ranks if 2 * r >= n]
    bottom = rows.topk(max(low) + 1, dim=0, largest=False).values if low else None  # bottom[r] = x₍ᵣ₎
    top = rows.topk(n - min(high), dim=0).values if high else None                  # top[j] = x₍ₙ₋₁₋ⱼ₎

    def order_statistic(r: int) -> torch.Tensor:
        return bottom[r] if 2 * r < n else top[n - 1 - r]

    out = []
    for lo, hi, frac in spans:
        v_lo = order_statistic(lo)
        out.append(v_lo if frac == 0.0 or hi == lo else v_lo + (order_statistic(hi) - v_lo) * frac)
    return out


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
