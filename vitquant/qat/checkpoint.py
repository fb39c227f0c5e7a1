"""The resume checkpoint ``<run dir>/resume.pt``: everything needed to continue a run bit-exactly.

Contents: model (quant twin, quantizer state included), optimizer, scheduler, AMP-free position
(epoch, batch within the epoch, global step), RNG states (Python, NumPy, torch CPU and CUDA; under DDP
one per rank, since the ranks draw different random numbers: only rank 0 evaluates, and evaluation
loaders draw from the global generator), the
oscillation tracker, the per-epoch history, the FP top-1 and the accumulated train seconds. It is
written atomically (temporary file + rename), so a ``kill -9`` during the write leaves the previous
checkpoint intact; loading uses ``weights_only=True`` (NumPy's RNG state is stored as a tensor).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitquant.errors import UserError
from vitquant.io.atomic import save_torch

FORMAT = "vitquant.qat-resume/1"
RESUME_FILE = "resume.pt"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                     has_gauss, gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(path: str | Path, state: dict[str, Any], rng_per_rank: list[dict[str, Any]] | None = None) -> Path:
    """Write ``state`` with this process's RNG state and, under DDP, every rank's (``rng_per_rank[r]``)."""
    return save_torch(path, {"format": FORMAT, **state, "rng": rng_state(),
                             **({"rng_per_rank": rng_per_rank} if rng_per_rank and len(rng_per_rank) > 1 else {})})


def rank_rng(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG state rank ``rank`` saved (rank 0's when the run had fewer ranks or one process)."""
    per_rank = state.get("rng_per_rank") or []
    return per_rank[rank] if rank < len(per_rank) else state["rng"]


def load_resume(path: str | Path) -> dict[str, Any]:
    """The stored state (RNG not yet applied: call ``set_rng_state(rank_rng(state, rank))`` last)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated/foreign file
        raise UserError(f"{path} is not a readable resume checkpoint ({type(e).__name__}); "
                        "delete it or set resume=never") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a vitquant QAT resume checkpoint; delete it or set resume=never")
    return blob
