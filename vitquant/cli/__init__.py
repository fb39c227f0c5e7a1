"""What the entry scripts share: a pre-flight config check and one-line error reporting.

Hydra reports a bad override as a multi-line traceback after creating the run folder. The
pre-flight composes the same config with the compose API and validates it first, so an unknown
method, a typo'd key or ``bits=1`` ends with one ``error: ...`` line, exit code 2, and no output
folder. Errors found later (a corrupt checkpoint) are reported the same way and the run folder is
removed, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import vitquant.config  # noqa: F401 - registers the resolvers and the model base that the files in CONF_DIR use
from vitquant.errors import REPORTED_ERRORS
from vitquant.io.atomic import discard_failed_run

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # vitquant/conf: ships inside the package
EXIT_USER_ERROR = 2


def one_line(error: BaseException) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    text = str(error).strip().split("\nConfig search path:")[0]  # Hydra's search-path dump is noise here
    text = re.sub(r":\s*\n\s*", ": ", text)
    text = re.sub(r"\s*\n\s*", "; ", text)
    return re.sub(r"(; )+", "; ", text) or type(error).__name__


def fail(error: BaseException | str) -> None:
    if os.environ.get("VITQUANT_TRACEBACK") and isinstance(error, BaseException):
        raise error
    print(f"error: {one_line(error) if isinstance(error, BaseException) else error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def preflight(config_name: str, validate: Callable[[DictConfig], None], argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command-line overrides and validate it, or exit with one line.

    Multirun sweeps and Hydra's own flags are left to Hydra (each job is validated when it runs).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
        validate(cfg)
    except (HydraException, OmegaConfBaseException, *REPORTED_ERRORS) as e:
        fail(e)


def guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Report user errors raised inside a Hydra task as one line and discard the run folder."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except REPORTED_ERRORS as e:
            discard_failed_run(cfg.out_dir)
            fail(e)

    return wrapper
