"""Exception hierarchy. Every error fastspec raises on purpose derives from FastspecError."""
from __future__ import annotations


class FastspecError(Exception):
    """Base class of all fastspec errors (bad input, bad index, bad parameters)."""


class ParseError(FastspecError, ValueError):
    """A record in an input file could not be parsed.

    Parameters
    ----------
    message : str
        What is wrong with the record.
    path : str, optional
        The file being read.
    line : int, optional
        1-based line number (or row number for tabular formats) where the record starts
        or where the problem was found.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.reason = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)


class IndexFormatError(FastspecError):
    """A library index is missing, corrupted, truncated or of an incompatible version."""


class ParameterError(FastspecError, ValueError):
    """A user-supplied parameter (tolerance, metric, mode...) is invalid."""
