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


class IndexWriteError(IndexFormatError, OSError):
    """Writing a library index failed on the device (a full disk, a quota, a file-size limit): nothing was
    written, and an index already at the path is unchanged. An OSError too, with the failure's errno (None
    for numpy's short write, which has none); the message names the index."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class IndexChangedError(IndexFormatError):
    """The library index on disk is no longer the one opened: another process rebuilt or appended to it
    (swapped a new one in) meanwhile. Nothing is damaged; open it again."""


class ParameterError(FastspecError, ValueError):
    """A user-supplied parameter (tolerance, metric, mode...) is invalid."""


class _Interrupts:
    """``with interrupts():`` a Ctrl-C that numba turned into ``SystemError: CPUDispatcher(...) returned a
    result with an exception set`` (the interrupt landed while a compiled function handed back its result;
    an audit: 9 of 150 interrupted searches) comes out as the KeyboardInterrupt it is, so that a caller's
    ``except KeyboardInterrupt`` sees it. The command line runs commands on a worker thread instead."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, SystemError):
            seen, e = set(), err
            while e is not None and id(e) not in seen:  # the interrupt is somewhere in the chain
                if isinstance(e, KeyboardInterrupt):
                    raise KeyboardInterrupt from err
                seen.add(id(e))
                e = e.__cause__ or e.__context__
        return False


def interrupts() -> _Interrupts:
    return _Interrupts()


def interruptible(func):
    """Decorator: ``func`` run under :func:`interrupts`."""
    import functools

    @functools.wraps(func)
    def run(*args, **kwargs):
        with interrupts():
            return func(*args, **kwargs)

    return run
