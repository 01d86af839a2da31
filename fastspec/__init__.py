"""fastspec: fast, exact spectral similarity for small-molecule MS/MS.

The top-level names are imported lazily (PEP 562), so ``import fastspec`` loads no numba kernel,
no faiss and no file reader until one is used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastspec._version import __version__
from fastspec.errors import FastspecError, IndexFormatError, ParameterError, ParseError

_LAZY = {
    "Spectra": "fastspec.spectra",
    "read": "fastspec.io",
    "iter_read": "fastspec.io",
    "write": "fastspec.io",
    "ReadReport": "fastspec.io",
    "score_pairs": "fastspec.similarity",
    "score_matrix": "fastspec.similarity",
    "Library": "fastspec.library",
    "Hits": "fastspec.hits",
    "Tolerance": "fastspec.tolerance",
    "parse_tolerance": "fastspec.tolerance",
}

__all__ = ["__version__", "FastspecError", "IndexFormatError", "ParameterError", "ParseError", *_LAZY]


#: submodules reachable as attributes once used (``fastspec.preprocess``, ``help(fastspec.search.search)``),
#: imported on first access like the names above
_SUBMODULES = frozenset({
    "ablation", "baseline", "chem", "cli", "dist", "errors", "evaluate", "fingerprints", "hits", "io", "kernels",
    "library", "preprocess", "report", "search", "search_formula", "search_fragment", "search_identity", "search_scan",
    "similarity", "spectra", "splits", "stream", "synth", "tolerance", "vectors",
})


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        if name in _SUBMODULES:  # importing it binds it here too
            return importlib.import_module(f"fastspec.{name}")
        raise AttributeError(f"module 'fastspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


if TYPE_CHECKING:  # pragma: no cover
    from fastspec.io import iter_read, read, write
    from fastspec.library import Library
    from fastspec.hits import Hits
    from fastspec.similarity import score_matrix, score_pairs
    from fastspec.spectra import Spectra
    from fastspec.tolerance import Tolerance, parse_tolerance
