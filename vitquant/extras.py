"""Optional dependencies (pip extras) and the one-line error when one is missing.

The core (calibrate, evaluate, train, export to PyTorch) needs only torch, timm, Hydra and a few small
packages. Logging to W&B, sweep reports and plots, and the embedded demo pull in heavier packages, so they
are extras of the ``vitquant`` distribution (``pyproject.toml``: ``[wandb]``, ``[report]``, ``[demo]``;
``[dev]`` has them all). Each import site asks for its module through :func:`require`, so a user who never
uses the feature never needs the package, and one who does gets the install command instead of a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from vitquant.errors import UserError


class MissingExtraError(UserError, ImportError):
    """A feature's optional package is not installed. A :class:`UserError` (the entry scripts print it as one
    ``error:`` line, exit code 2) and an ``ImportError`` (code that guards an optional import still catches it)."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``), which the ``extra`` of vitquant installs.

    Only an absent package becomes a :class:`MissingExtraError` naming ``pip install 'vitquant[<extra>]'``; an
    installed package that fails while importing keeps its own traceback (that is a broken install, not a
    missing one).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise MissingExtraError(f"{e.name} is not installed; it comes with an optional part of vitquant: "
                                f"pip install 'vitquant[{extra}]'") from None
