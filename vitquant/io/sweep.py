"""Stable sweep folders and finished cells: rerunning a sweep command finishes only what is missing.

``hydra.sweep.dir`` is ``multirun/<script>/${vq.sweep_name:${hydra.overrides.task}}``: a name made from
the sweep's own overrides (not a timestamp), so the same command lands in the same folder and each
cell in the same ``<job number>`` subfolder. A cell whose ``metrics.json`` exists (written last, after
``quantized.pt``) is finished: it is skipped and returns its stored metrics; a cell that stopped
half-way (time limit, preemption, node failure) runs again and, for QAT, resumes from ``resume.pt``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("vitquant")
MAX_READABLE = 60  # characters of the overrides kept readable in the folder name


def sweep_name(overrides: Sequence[str]) -> str:
    """``['method=minmax,percentile', 'bits=4,8']`` → ``bits=4,8_method=minmax,percentile-1b2c3d4e``.

    The overrides are sorted (their order does not change the sweep), joined with ``_``, characters
    that are awkward in a path become ``-``, and a hash of the exact text keeps two sweeps that read
    alike apart. Registered as the cached resolver ``vq.sweep_name``: a job's ``hydra.overrides.task``
    is its own cell's overrides, and the cache (which Hydra copies from the sweep into each job)
    keeps the sweep's name there.
    """
    text = "_".join(sorted(str(o) for o in overrides))
    readable = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", text).strip("-")[:MAX_READABLE] or "defaults"
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finished_cell(out_dir: str | Path) -> dict[str, Any] | None:
    """The stored metrics of a finished multirun cell (None outside a multirun or when unfinished)."""
    metrics = Path(out_dir) / "metrics.json"
    if not in_multirun() or not metrics.is_file():
        return None
    log.info("%s is finished (metrics.json): skipped; delete it or use another hydra.sweep.dir to run it again",
             Path(out_dir))
    return json.loads(metrics.read_text())
