"""Per-site quantization error after calibration: where in the network a method loses accuracy.

For every site that holds a quantizer, on a few calibration images:

- ``mse``: mean (x_q − x_fp)², with x_q the site's output in the quantized model and x_fp the same
  tensor in the float model;
- ``sqnr_db``: 10·log10(Σ x_fp² / Σ (x_q − x_fp)²), the error accumulated up to and through the site
  (+inf where the two agree exactly, e.g. every quantizer off);
- ``quantizer_sqnr_db``: the same ratio between the site's output and its own input in the quantized model,
  i.e. this quantizer's error alone (+inf where the quantizer is off).

The float model is the quantized model with every quantizer switched off, not the original float model:
calibration may have moved the float computation (RepQ-ViT folds post-LN scales into LayerNorm and the next
weights, so post-LN tensors differ from the original model's while the network function is the same). Weight
sites need no float pass: their float tensor is their input. Results go to ``sites.csv`` (atomically), a
plot of SQNR by block and site kind (``sites_sqnr.png``) and a W&B table. Opt in with ``diagnostics=true``.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vitquant.extras import require
from vitquant.io.atomic import atomic_write, write_text
from vitquant.io.logger import RunLogger
from vitquant.nn.site import QuantSite, quantized_sites

COLUMNS = ("site", "kind", "block", "bits", "enabled", "mse", "sqnr_db", "quantizer_sqnr_db")


@dataclass
class SiteError:
    """One row of ``sites.csv``."""

    site: str
    kind: str
    block: str
    bits: int
    enabled: bool
    mse: float
    sqnr_db: float
    quantizer_sqnr_db: float


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10·log10(signal / noise) in dB; +inf when there is no noise."""
    if noise_energy == 0.0:
        return math.inf
    return 10.0 * math.log10(signal_energy / noise_energy) if signal_energy > 0 else -math.inf


def block_of(site: str) -> str:
    """The transformer block a site belongs to (``blocks.3``, ``layers.1.blocks.0``), else its module."""
    match = re.match(r"(.*?\bblocks\.\d+)\.", site)
    return match.group(1) if match else site.rsplit(".", 1)[0]


class _Sums:
    """Running Σ x_fp², Σ (x_q − x_fp)², Σ x_in², Σ (x_q − x_in)² and the element count of one site."""

    def __init__(self) -> None:
        self.signal = self.noise = self.in_signal = self.in_noise = 0.0
        self.count = 0

    def add(self, x_q: torch.Tensor, x_fp: torch.Tensor, x_in: torch.Tensor) -> None:
        x_q, x_fp, x_in = x_q.double(), x_fp.double(), x_in.double()
        self.signal += float((x_fp ** 2).sum())
        self.noise += float(((x_q - x_fp) ** 2).sum())
        self.in_signal += float((x_in ** 2).sum())
        self.in_noise += float(((x_q - x_in) ** 2).sum())
        self.count += x_q.numel()


@contextmanager
def _recording(sites: dict[str, QuantSite],
               record: Callable[[str, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Call ``record(name, input, output)`` for every call of every site while the context is open."""
    handles = [site.register_forward_hook(lambda _m, args, out, n=name: record(n, args[0], out))
               for name, site in sites.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _quantizers_off(model: nn.Module) -> Iterator[None]:
    """Switch every site off (the float twin), restoring each site's own flag afterwards."""
    sites = [site for _, site in quantized_sites(model)]
    flags = [site.enabled for site in sites]
    for site in sites:
        site.enabled = False
    try:
        yield
    finally:
        for site, flag in zip(sites, flags):
            site.enabled = flag


def _measure_batch(model: nn.Module, sites: dict[str, QuantSite], sums: dict[str, _Sums], batch: torch.Tensor) -> None:
    """Quantizers off: record each activation site's float output; on: compare call by call."""
    float_out: dict[str, list[torch.Tensor]] = {name: [] for name in sites}

    def keep(name: str, x_in: torch.Tensor, out: torch.Tensor) -> None:
        if not sites[name].is_weight:
            float_out[name].append(out.detach())

    def compare(name: str, x_in: torch.Tensor, out: torch.Tensor) -> None:
        x_fp = x_in if sites[name].is_weight else float_out[name].pop(0)
        sums[name].add(out, x_fp, x_in)

    with _quantizers_off(model), _recording(sites, keep):
        model(batch)
    with _recording(sites, compare):
        model(batch)


@torch.no_grad()
def site_errors(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 4) -> list[SiteError]:
    """One :class:`SiteError` per quantized site of ``model``, in module order, measured on ``images``.

    Each batch runs twice: quantizers off (recording the float output of every activation site), then on
    (comparing each site's output with the recorded float tensor and with its own input). A site called
    several times per forward is compared call by call.
    """
    sites = dict(quantized_sites(model))
    sums = {name: _Sums() for name in sites}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            _measure_batch(model, sites, sums, images[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
    return [SiteError(site=name, kind=site.kind, block=block_of(name), bits=int(site.quantizer.bits),
                      enabled=bool(site.enabled), mse=s.noise / max(s.count, 1), sqnr_db=sqnr_db(s.signal, s.noise),
                      quantizer_sqnr_db=sqnr_db(s.in_signal, s.in_noise))
            for (name, site), s in zip(sites.items(), sums.values())]


def to_csv(rows: list[SiteError]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue()


def plot_sqnr(rows: list[SiteError], path: Path, title: str = "") -> Path:
    """SQNR (dB) of every site by block (dots), one line per site kind through its mean per block; +inf sites are
    left out (counted in the title)."""
    require("matplotlib", "report").use("Agg")
    plt = require("matplotlib.pyplot", "report")

    blocks = list(dict.fromkeys(r.block for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(blocks) + 3), 4.5))
    for i, kind in enumerate(dict.fromkeys(r.kind for r in rows)):
        points = [(blocks.index(r.block), r.sqnr_db) for r in rows if r.kind == kind and math.isfinite(r.sqnr_db)]
        if not points:
            continue
        ax.scatter(*zip(*points), color=f"C{i}", s=12, alpha=0.6)  # every site; the line: mean per block
        xs = sorted({x for x, _ in points})
        ax.plot(xs, [sum(y for x, y in points if x == b) / sum(x == b for x, _ in points) for b in xs],
                color=f"C{i}", marker="o", alpha=0.9, label=kind)
    n_inf = sum(not math.isfinite(r.sqnr_db) for r in rows)
    ax.set_xticks(range(len(blocks)), blocks, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title(title + (f" ({n_inf} sites without error not shown)" if n_inf else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_site_diagnostics(model: nn.Module, images: torch.Tensor, device: torch.device, out_dir: str | Path,
                           logger: RunLogger | None = None, title: str = "") -> list[SiteError]:
    """Measure :func:`site_errors`, write ``sites.csv`` and ``sites_sqnr.png`` in ``out_dir``, log a W&B table."""
    rows = site_errors(model, images, device)
    out_dir = Path(out_dir)
    write_text(out_dir / "sites.csv", to_csv(rows))
    plot = plot_sqnr(rows, out_dir / "sites_sqnr.png", title)
    if logger is not None:
        logger.table("sites", COLUMNS, [list(asdict(r).values()) for r in rows], image=str(plot))
    return rows
