"""Errors that mean "the user asked for something invalid": reported as one line, exit code 2.

Only :class:`UserError` (and its subclasses) and Hydra/OmegaConf configuration errors are reported
that way. Every other exception — a builtin ``ValueError`` included — is a bug of ours: it keeps its
traceback, the run exits non-zero and its folder keeps the log, which is what a bug report needs.
So a check of user input raises ``UserError`` with a message naming the bad value and the fix, and
an internal invariant raises anything else.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad option, path or file; the message names the bad value and the fix."""


class CoverageError(UserError):
    """Calibration finished but some enabled quantization sites never saw data."""


# Exception types the entry scripts turn into a one-line message instead of a traceback.
REPORTED_ERRORS: tuple[type[Exception], ...] = (UserError,)


def unwrap(error: BaseException) -> BaseException:
    """The exception itself, or for Hydra's ``InstantiationException`` ("Error in call to target ...",
    raised by ``hydra.utils.instantiate`` around whatever a constructor raised) the constructor's own."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


class UnsupportedError(UserError, NotImplementedError):
    """A model or option the quant twins do not implement (the message names it and what is supported)."""
