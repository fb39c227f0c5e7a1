"""Metric logging: always to the local log, and to Weights & Biases when ``logger=wandb``.

W&B is best effort: without credentials an ``online`` run falls back to ``offline``; any W&B
failure (import, init, network) degrades to local logging with one warning and never stops a
calibration. ``finish`` runs in a ``finally`` so sequential multirun jobs never merge runs.
"""
from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("vitquant")


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class RunLogger:
    """Log scalars and summaries for one run; ``cfg`` is the ``logger`` config group."""

    def __init__(self, cfg: Mapping[str, Any], run_config: dict[str, Any], run_dir: str, run_name: str) -> None:
        self.run = None
        if cfg.get("name") != "wandb":
            return
        mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "online")
        if mode == "online" and not wandb_credentials_available():
            log.warning("W&B: no credentials found; logging offline (sync later with `wandb sync`)")
            mode = "offline"
        if mode == "disabled":
            return
        try:
            import wandb
            self.run = wandb.init(project=cfg.get("project"), entity=cfg.get("entity"), group=cfg.get("group"),
                                  tags=list(cfg.get("tags") or []), config=run_config, dir=run_dir,
                                  name=run_name, mode=mode, reinit="finish_previous")
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

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table (e.g. chosen ranks per layer): W&B ``Table``; one local log line per row."""
        for row in rows:
            log.info("%s: %s", name, " ".join(f"{c}={v}" for c, v in zip(columns, row)))

        def send() -> None:
            import wandb
            self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
        self._safe(send)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self._safe(lambda m: self.run.summary.update(m), dict(metrics))

    def finish(self) -> None:
        self._safe(lambda: self.run.finish())
        self.run = None
