"""What the entry scripts share: a pre-flight config check, one-line user errors, kept bug reports.

Hydra reports a bad override as a multi-line traceback after creating the run folder. The
pre-flight composes the same config with the compose API and validates it first, so an unknown
method, a typo'd key, ``bits=1``, a model of another task, a missing optional package or a file that
is not a checkpoint ends with one ``error: ...`` line, exit code 2, and no output folder.

Only user errors are reported that way (:mod:`vitquant.errors`): a :class:`~vitquant.errors.UserError`
found later (weights that do not fit the model) is one line too and its run folder is removed. Any
other exception is a bug: it keeps its traceback, the run exits non-zero, and the run folder keeps its
log with the traceback appended — what a bug report needs.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

import vitquant.config  # noqa: F401 - registers the resolvers and the model base that the files in CONF_DIR use
from vitquant.errors import REPORTED_ERRORS, UserError, unwrap
from vitquant.io.atomic import discard_failed_run

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # vitquant/conf: ships inside the package
EXIT_USER_ERROR = 2
# hydra/launcher=<name> -> the modules it needs (our submitit configs and the plugin's own names)
LAUNCHER_MODULES = {name: ("submitit", "hydra_plugins.hydra_submitit_launcher")
                    for name in ("slurm", "local", "submitit_slurm", "submitit_local")}


def one_line(error: BaseException) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    text = str(error).strip().split("\nConfig search path:")[0]  # Hydra's search-path dump is noise here
    text = re.sub(r":\s*\n\s*", ": ", text)
    text = re.sub(r"\s*\n\s*", "; ", text)
    return re.sub(r"(; )+", "; ", text) or type(error).__name__


def fail(error: BaseException | str) -> None:
    """Print ``error: <one line>`` and exit with code 2 (``VITQUANT_TRACEBACK=1``: raise it instead)."""
    if os.environ.get("VITQUANT_TRACEBACK") and isinstance(error, BaseException):
        raise error
    print(f"error: {one_line(error) if isinstance(error, BaseException) else error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def primary_metric(metrics: dict[str, Any]) -> Any:
    """What an entry script returns (Hydra sweepers optimise it): the task's primary metric."""
    return metrics[metrics["primary_metric"]]


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=slurm|local`` needs the submitit launcher plugin: one line if it is missing."""
    for arg in argv:
        name = arg.partition("hydra/launcher=")[2]
        for module in LAUNCHER_MODULES.get(name, ()):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise UserError(f"hydra/launcher={name} needs {module.split('.')[-1]}, which cannot be imported "
                                f"({e}); pip install 'vitquant[slurm]' (hydra-submitit-launcher)") from None


def preflight(config_name: str, validate: Callable[[DictConfig], Any], argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command-line overrides, resolve and validate it, or exit with one line.

    Multirun sweeps and Hydra's own flags are left to Hydra (each job is validated when it runs),
    except that the launcher a sweep names must be installed.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    argv = sys.argv[1:] if argv is None else argv
    try:
        check_launcher(argv)
        if any(a.startswith("-") for a in argv):
            return
        overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
        with open_dict(cfg):
            cfg.out_dir = "."  # ${hydra:runtime.output_dir} has no value before Hydra runs the job
        OmegaConf.resolve(cfg)  # every interpolation (${oc.env:...}) resolves now, not mid-run
        validate(cfg)
    except MissingMandatoryValue as e:
        fail(f"{e.full_key} has no default: set it on the command line ({e.full_key}=...)")
    except (HydraException, OmegaConfBaseException, UserError) as e:
        error = unwrap(e)
        if error is not e and not isinstance(error, REPORTED_ERRORS):
            raise error from None  # a bug inside something the config instantiated: keep its traceback
        fail(error)


def log_to_files(error: BaseException) -> None:
    """Append ``error``'s traceback to the run's log file(s) (Hydra prints it to the terminal only)."""
    record = logging.LogRecord("vitquant", logging.ERROR, __file__, 0, "the run failed with an internal error:",
                               None, (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Report a user error raised inside a Hydra task as one line and discard the run folder; let any
    other exception through with its traceback (also appended to the run's log), keeping the folder."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as e:
            error = unwrap(e)
            if isinstance(error, REPORTED_ERRORS):
                discard_failed_run(cfg.out_dir)
                fail(error)
            log_to_files(error)
            if error is e:
                raise
            raise error from None  # the constructor's traceback, not Hydra's 4-line instantiate summary

    return wrapper
