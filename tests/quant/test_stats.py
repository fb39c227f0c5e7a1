"""The bounded observation path: row samples, exact extrema, streaming, and its memory."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vitquant.quant import stats
from vitquant.quant.stats import RowSampler, observe, sample_indices, to_rows
from vitquant.quant.uniform import UniformQuantizer

LAYOUTS = [  # (tensor, axis): token features, per-tensor, per-head on a permuted (non-contiguous) view
    (torch.randn(4, 50, 7), -1),
    (torch.randn(4, 50, 7), None),
    (torch.randn(4, 50, 3, 7).permute(0, 2, 1, 3), 1),
    (torch.randn(4, 7, 50).transpose(1, 2), None),
]


@pytest.mark.parametrize("x,axis", LAYOUTS)
def test_under_the_cap_every_row_is_kept_in_order(x, axis):
    obs = observe(x, axis)
    full = to_rows(x, axis)
    assert not obs.subsampled and torch.equal(obs.rows, full)
    assert torch.equal(obs.lo, full.min(0).values) and torch.equal(obs.hi, full.max(0).values)
    streamed = RowSampler(axis)
    streamed.add(x[:1], share=0.25)
    streamed.add(x[1:], share=0.75)
    assert torch.equal(streamed.observation().rows, full)


@pytest.mark.parametrize("x,axis", LAYOUTS)
def test_over_the_cap_a_seeded_sample_of_real_rows_and_exact_extrema(x, axis):
    full = to_rows(x, axis)
    cap = 40 * full.shape[1]
    obs = observe(x, axis, max_elements=cap, seed=3)
    assert obs.subsampled and obs.rows.shape == (40, full.shape[1]) and obs.n_rows == full.shape[0]
    assert all(bool((full == r).all(1).any()) for r in obs.rows)  # whole rows of the tensor
    assert torch.equal(obs.rows, observe(x, axis, max_elements=cap, seed=3).rows)  # reproducible
    assert not torch.equal(obs.rows, observe(x, axis, max_elements=cap, seed=4).rows)
    assert torch.equal(obs.lo, full.min(0).values) and torch.equal(obs.hi, full.max(0).values)


def test_streamed_parts_share_the_cap():
    sampler = RowSampler(None, max_elements=1000, seed=0)
    for _ in range(4):
        sampler.add(torch.randn(10_000), share=0.25)
    obs = sampler.observation()
    assert obs.rows.shape == (1000, 1) and obs.n_rows == 40_000


def test_sample_indices_are_distinct_sorted_and_uniform():
    gen = torch.Generator().manual_seed(0)
    idx = sample_indices(1_000_000, 20_000, gen)
    assert idx.numel() == 20_000 and bool((idx[1:] > idx[:-1]).all())
    counts = torch.histc(idx.float(), bins=10, min=0, max=1_000_000)
    assert float(counts.min()) > 1800 and float(counts.max()) < 2200  # 2000 per tenth, ± 4.5σ


def test_no_permutation_of_the_whole_tensor(monkeypatch):
    """The previous code drew ``randperm(rows)``: 8 bytes per value of a per-tensor site."""
    real = torch.randperm

    def guarded(n, *args, **kw):
        assert n <= 2 * (1 << 12), f"randperm({n}) over the cap"
        return real(n, *args, **kw)

    monkeypatch.setattr(torch, "randperm", guarded)
    obs = observe(torch.randn(1 << 18), None, max_elements=1 << 12)
    assert obs.rows.shape == (1 << 12, 1)


def test_quantile_from_a_subsample_stays_within_tolerance():
    """Percentile clipping on a 2^16-value sample of 2^22 values: the 99.9th percentile within 5%."""
    x = torch.randn(1 << 22)
    full = UniformQuantizer(bits=8, init="percentile", percentiles=[0.999], max_elements=1 << 40)
    sampled = UniformQuantizer(bits=8, init="percentile", percentiles=[0.999], max_elements=1 << 16)
    full.init_from(x)
    sampled.init_from(x)
    assert abs(float(sampled.scale / full.scale) - 1) < 0.05


def test_observing_a_large_per_tensor_site_costs_a_fraction_of_the_tensor(tmp_path):
    """Peak RSS (VmHWM) of observing a 2^27-value (512 MB) tensor at the default cap (2^24 values:
    the 64 MB sample): the previous permutation alone was 1 GB."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    script = textwrap.dedent("""
        import torch
        from vitquant.quant.stats import observe
        from vitquant.runtime import peak_rss_mb
        torch.set_num_threads(1)
        x = torch.randn(1 << 27)
        before = peak_rss_mb()
        observe(x, None)
        print(peak_rss_mb() - before)
    """)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, check=True)
    assert float(out.stdout.split()[-1]) < 512  # MB: the sample, its indices, their dedup (measured: 367)


def test_chunked_gather_of_a_non_contiguous_tensor(monkeypatch):
    monkeypatch.setattr(stats, "GATHER_ROWS", 7)
    x = torch.randn(6, 40, 5).transpose(1, 2)
    assert torch.equal(observe(x, None, max_elements=100, seed=1).rows.flatten(),
                       x.reshape(-1)[sample_indices(1200, 100, torch.Generator().manual_seed(1))])


@pytest.mark.parametrize("x,axis", [(torch.tensor(3.0), None), (torch.randn(5), None), (torch.randn(5), 0)])
def test_scalars_and_vectors_are_observed_as_to_rows_views_them(x, axis):
    obs, rows = observe(x, axis), to_rows(x, axis)
    assert torch.equal(obs.rows, rows) and torch.equal(obs.lo, rows.min(0).values)
