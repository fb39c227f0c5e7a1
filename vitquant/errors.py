"""Errors that mean "the user asked for something invalid": reported as one line, exit code 2."""
from __future__ import annotations


class UserError(ValueError):
    """A bad option, path or file; the message names the bad value and the fix."""


class CoverageError(UserError):
    """Calibration finished but some enabled quantization sites never saw data."""


# Exception types the entry scripts turn into a one-line message instead of a traceback.
REPORTED_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)
