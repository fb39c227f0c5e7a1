"""Write files atomically (temporary file in the same folder, then ``os.replace``).

An interrupted run therefore never leaves a truncated ``metrics.json`` or checkpoint behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, write)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def discard_failed_run(run_dir: str | Path, keep: tuple[str, ...] = ()) -> None:
    """Remove what a failed run wrote: the whole folder if it holds only Hydra's bookkeeping.

    Folders with anything else (a user's ``hydra.run.dir=.``, earlier results) only lose our
    temporary files, so nothing outside this run is ever deleted.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir() or Path.cwd().resolve().is_relative_to(run_dir):
        return
    ours = {".hydra", *keep}
    entries = list(run_dir.iterdir())
    for e in entries:
        if e.name.endswith(TMP_SUFFIX):
            e.unlink(missing_ok=True)
    if all(e.name in ours or e.suffix == ".log" or e.name.endswith(TMP_SUFFIX) for e in entries):
        shutil.rmtree(run_dir, ignore_errors=True)
