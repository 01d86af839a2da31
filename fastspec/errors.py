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
    unit : str
        What ``line`` counts: ``"line"`` (``path:12: reason``), or a record position for formats without
        meaningful lines: ``"spectrum"`` (mzML, mzXML), ``"record"`` (JSON), ``"row"`` (Parquet, HDF5),
        written ``path: spectrum 12: reason``.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None, unit: str = "line"):
        self.reason = message
        self.path = path
        self.line = line
        self.unit = unit
        super().__init__(location(path, line, unit) + message)


def location(path: str | None, line: int | None, unit: str = "line") -> str:
    """``path:12: ``, ``path: spectrum 12: ``, ``line 12: `` or ``path: `` (empty without either)."""
    if path is None:
        return "" if line is None else f"{unit} {line}: "
    if line is None:
        return f"{path}: "
    return f"{path}:{line}: " if unit == "line" else f"{path}: {unit} {line}: "


class IndexFormatError(FastspecError):
    """A library index is missing, corrupted, truncated or of an incompatible version."""


class ParameterError(FastspecError, ValueError):
    """A user-supplied parameter (tolerance, metric, mode...) is invalid."""
