"""Metric logging: always to the local log, and to Weights & Biases when ``logger=wandb``.

W&B is best effort: without credentials an ``online`` run falls back to ``offline``; any W&B
failure (init, network) degrades to local logging with one warning and never stops a calibration.
Only a missing ``wandb`` package (the ``[wandb]`` extra) with W&B asked for is an error, before any work.
``finish`` runs in a ``finally`` so sequential multirun jobs never merge runs.

Runs of one sweep share a W&B group (``logger.group``, else the multirun sweep folder's name) and
carry tags from the run's choices (``method:isvit model:deit_small bits:w4a4 policy:default seed:0``),
so a sweep is one filterable set in the W&B UI. Offline runs live in ``<run dir>/wandb/`` and are
uploaded later with ``wandb sync <run dir>/wandb/offline-run-*``.

On clusters: each run's ``job_type`` is its entry script (calibrate, train, evaluate, export); its W&B id is
derived from the run folder (``run_id``) and opened with ``resume="allow"``, so a job that Slurm requeues (or a
``train.py`` rerun that resumes) continues the same W&B run instead of starting a second one. Files such as
``quantized.pt`` and ``model.onnx`` are logged as ``model`` artifacts (``RunLogger.artifact``).
"""
from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitquant.extras import require

log = logging.getLogger("vitquant")


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def sweep_group(cfg: Mapping[str, Any]) -> str | None:
    """``logger.group`` if set, else the sweep folder's name under a Hydra multirun, else None (single run).

    Read from ``HydraConfig`` in code rather than a ``${hydra:...}`` interpolation, which fails under the
    compose API (tests, notebooks); there, and in any single run, the fallback is no group.
    """
    if cfg.get("group"):
        return str(cfg.get("group"))
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(str(HydraConfig.get().sweep.dir)).name
    except Exception:  # noqa: BLE001 - a missing or partial Hydra config just means "no sweep"
        pass
    return None


def run_tags(run_config: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """Tags from the run's choices (method, model, bits, policy, seed), then the user's ``logger.tags``."""
    def name(key: str) -> Any:
        value = run_config.get(key)
        return value.get("name") if isinstance(value, Mapping) else value

    choices = {"method": name("method"), "model": name("model"), "policy": name("policy"), "seed": name("seed")}
    if run_config.get("w_bits") is not None:
        choices["bits"] = f"w{run_config['w_bits']}a{run_config.get('a_bits')}"
    return [f"{k}:{v}" for k, v in choices.items() if v is not None] + [str(t) for t in extra]


def run_id(run_dir: str | Path, job_type: str) -> str:
    """``<job_type>-<first 16 hex digits of sha1(absolute run folder)>``: the same folder (a requeued job, a
    resumed training) gives the same W&B run; the job type keeps an export written into a calibration's folder
    apart from that calibration."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return f"{job_type}-{digest}"


def artifact_name(run_name: str, path: str | Path) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``: ``<run name>-<file stem>``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{run_name}-{Path(path).stem}")


class RunLogger:
    """Log scalars, summaries, tables and artifacts for one run; ``cfg`` is the ``logger`` config group and
    ``job_type`` the entry script (calibrate, train, evaluate, export)."""

    def __init__(self, cfg: Mapping[str, Any], run_config: dict[str, Any], run_dir: str, run_name: str,
                 job_type: str) -> None:
        self.run_name = run_name
        self.run = None
        if cfg.get("name") != "wandb":
            return
        mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "online")
        if mode == "online" and not wandb_credentials_available():
            log.warning("W&B: no credentials found; logging offline (sync later with `wandb sync`)")
            mode = "offline"
        if mode == "disabled":
            return
        wandb = require("wandb", "wandb")  # asked for W&B without the package: an error, not a silent fallback
        try:
            self.run = wandb.init(project=cfg.get("project"), entity=cfg.get("entity"), group=sweep_group(cfg),
                                  tags=run_tags(run_config, list(cfg.get("tags") or [])), config=run_config,
                                  dir=run_dir, name=run_name, mode=mode, reinit="finish_previous",
                                  job_type=job_type, id=run_id(run_dir, job_type), resume="allow")
            log.info("W&B %s %s run %s (id %s), group %s, tags %s", mode, job_type, run_name, self.run.id,
                     self.run.group, ",".join(self.run.tags))
        except Exception as e:  # noqa: BLE001 - any W&B failure must not stop the run
            log.warning("W&B unavailable (%s); logging locally only", str(e).splitlines()[0] if str(e) else e)
            self.run = None

    def _safe(self, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B logging failed (%s); continuing with local logging only", e)
            self.run = None

    def log(self, metrics: Mapping[str, float]) -> None:
        log.info(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        self._safe(self.run.log if self.run else None, dict(metrics))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self._safe(lambda m: self.run.summary.update(m), dict(metrics))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], image: str | None = None) -> None:
        """Log a table (and optionally a PNG next to it) under ``key``; local files are the caller's job."""
        def send() -> None:
            import wandb
            payload = {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}
            if image is not None:
                payload[f"{key}_plot"] = wandb.Image(image)
            self.run.log(payload)

        self._safe(send)

    def artifact(self, path: str | Path, kind: str = "model") -> None:
        """Log the file ``path`` as a W&B artifact ``<run name>-<file stem>`` of type ``kind`` (versioned by W&B;
        offline runs upload it with ``wandb sync``)."""
        def send() -> None:
            import wandb
            artifact = wandb.Artifact(artifact_name(self.run_name, path), type=kind,
                                      metadata={"file": Path(path).name})
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

        self._safe(send)

    def finish(self) -> None:
        self._safe(lambda: self.run.finish())
        self.run = None
