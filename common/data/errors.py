"""The one exception type for bad input data, so users get a clear message instead of a traceback."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or unexpected input data. The message names the file (and line) and the problem."""
