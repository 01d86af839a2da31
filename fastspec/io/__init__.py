"""Reading and writing spectrum files: MGF, MSP, mzML and mzXML (read), GNPS / matchms / MoNA JSON (read),
MassBank records (read), MassSpecGym TSV, parquet, HDF5.

>>> import fastspec.io as fio
>>> spectra, report = fio.read("library.mgf", return_report=True)   # doctest: +SKIP
>>> for chunk in fio.iter_read("huge.msp.gz", chunk_size=100_000):  # doctest: +SKIP
...     ...
>>> fio.write(spectra, "library.parquet")                          # doctest: +SKIP

The format comes from the extension (``.mgf``, ``.msp``, ``.mzml``, ``.mzxml``, ``.json``, ``.tsv``, ``.parquet``,
``.h5``/``.hdf5``; text formats may end in ``.gz``) or ``format=``; unknown extensions are sniffed
(MassBank record files, ``MSBNK-...txt``, are recognised by their content).
Metadata is harmonised (:mod:`fastspec.io.meta`) and the same peak rules apply to every format
(:func:`read`). File layouts are documented in ``docs/formats.md``.
"""
from __future__ import annotations

import importlib
import os
import time
from typing import Iterable, Iterator

import numpy as np

from fastspec.errors import FastspecError, ParameterError
from fastspec.io._common import FORMATS, ReadReport, Rejection, detect_format, strip_gz
from fastspec.spectra import Spectra

__all__ = ["read", "iter_read", "write", "output_format", "ReadReport", "Rejection", "detect_format", "FORMATS",
           "WRITABLE"]

#: format -> module implementing ``iter_spectra`` (and ``write`` when writable)
_MODULES = {
    "mgf": "fastspec.io.mgf",
    "msp": "fastspec.io.msp",
    "mzml": "fastspec.io.mzml",
    "mzxml": "fastspec.io.mzxml",
    "json": "fastspec.io.jsonspec",
    "tsv": "fastspec.io.tsv",
    "parquet": "fastspec.io.parquet",
    "hdf5": "fastspec.io.hdf5",
    "massbank": "fastspec.io.massbank",
}
WRITABLE = ("mgf", "msp", "tsv", "parquet", "hdf5")
_TEXT = ("mgf", "msp", "tsv", "mzml", "mzxml", "json", "massbank")



def _paths(path) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    if isinstance(path, (list, tuple)):
        if not path:
            raise ParameterError("no input path given")
        out = []
        for p in path:
            if not isinstance(p, (str, os.PathLike)):
                raise ParameterError(f"expected a path, got {type(p).__name__}")
            out.append(os.fspath(p))
        return out
    raise ParameterError(f"expected a path or a list of paths, got {type(path).__name__}")


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ParameterError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


_SEEKING = ("mzml", "mzxml", "parquet", "hdf5")  # formats whose readers seek in the file


def _iter_file(path: str, fmt: str | None, on_error: str, report: ReadReport, progress, chunk_hint: int | None):
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory (read takes spectrum files; Library.build, Library.search "
                                    "and fastspec index take directories of them)", path)
    fmt = detect_format(path, fmt)
    if fmt in _SEEKING and not os.path.isfile(path):  # their readers seek: a pipe fails deep inside them
        raise FastspecError(f"{path}: {fmt} is read from a regular file, not a pipe: save it to a file first")
    report.format = fmt
    mod = importlib.import_module(_MODULES[fmt])
    kwargs = {}
    if chunk_hint is not None:
        if fmt in ("mgf", "msp"):
            # about 1 kB of text per spectrum; bounded blocks keep memory flat
            kwargs["block_bytes"] = int(min(max(chunk_hint * 1024, 1 << 20), 32 << 20))
        else:
            kwargs["chunk_size"] = int(chunk_hint)
    return mod.iter_spectra(path, on_error=on_error, report=report, progress=progress, **kwargs)


def read(
    path,
    format: str | None = None,
    on_error: str = "skip",
    progress: bool | None = None,
    report: ReadReport | None = None,
    return_report: bool = False,
):
    """Read spectra from one file or several.

    Parameters
    ----------
    path : str, os.PathLike or list of them
        File(s) to read; several files are concatenated in order.
    format : str, optional
        ``"mgf"``, ``"msp"``, ``"mzml"``, ``"mzxml"``, ``"json"``, ``"massbank"``, ``"tsv"``, ``"parquet"`` or
        ``"hdf5"``.
        Default: from
        the extension (``.gz`` allowed for text formats), else sniffed from the content.
    on_error : {"skip", "raise"}
        ``"skip"``: drop bad records and count them (with line and reason) in the report.
        ``"raise"``: raise :class:`fastspec.errors.ParseError` naming the file and line of the
        first bad record.
    progress : bool, optional
        tqdm progress bar on stderr. Default: only for files over 64 MB when stderr is a terminal.
    report : ReadReport, optional
        Filled in place (counts added) — handy with :func:`iter_read`.
    return_report : bool
        Return ``(spectra, report)`` instead of ``spectra``.

    Returns
    -------
    Spectra, or (Spectra, ReadReport)

    Notes
    -----
    Peak rules, the same in every format (``docs/formats.md``):

    * NaN/inf m/z or intensity (also intensities beyond float32 range): record rejected;
    * m/z <= 0 or intensity < 0: record rejected;
    * zero intensities: the peak is kept, as matchms keeps it (counted in ``n_zero_intensity``);
    * no peak of positive intensity: record rejected (``"no peaks"``);
    * unsorted peaks: sorted (counted in ``n_fixed_unsorted``), never rejected;
    * repeated m/z values: kept as they are (counted in ``n_with_duplicate_mz``);
    * missing or unusable precursor m/z: NaN, record kept.

    The report always satisfies ``n_records == n_spectra + n_rejected``.
    """
    _check_on_error(on_error)
    paths = _paths(path)
    t0 = time.perf_counter()
    parts: list[Spectra] = []
    per_file: list[ReadReport] = []
    for p in paths:
        rep = ReadReport(path=p, format=None)
        t1 = time.perf_counter()
        chunks = list(_iter_file(p, format, on_error, rep, progress, None))
        sp = Spectra.concat(chunks) if chunks else _empty_like_read()
        rep.seconds = time.perf_counter() - t1
        rep.check()
        parts.append(sp)
        per_file.append(rep)
    spectra = parts[0] if len(parts) == 1 else Spectra.concat(parts)
    if len(per_file) == 1:
        combined = per_file[0]
    else:
        fmts = {r.format for r in per_file}
        combined = ReadReport(path=paths, format=fmts.pop() if len(fmts) == 1 else "mixed", files=per_file)
        for r in per_file:
            combined.absorb(r)
        combined.seconds = time.perf_counter() - t0
        combined.check()
    if report is not None:
        if report.path is None:
            report.path = combined.path
        if report.format is None:
            report.format = combined.format
        report.absorb(combined)
        report.seconds += combined.seconds
        if combined.files:
            report.files.extend(combined.files)
    return (spectra, combined) if return_report else spectra


def _empty_like_read() -> Spectra:
    """An empty Spectra with the canonical metadata columns."""
    import pyarrow as pa

    from fastspec.io.meta import harmonise_table

    meta = harmonise_table(pa.table({"id": pa.array([], pa.string())}))
    return Spectra(np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.float32), metadata=meta, validate=False)


def iter_read(
    path,
    chunk_size: int = 100_000,
    format: str | None = None,
    on_error: str = "skip",
    progress: bool | None = None,
    report: ReadReport | None = None,
) -> Iterator[Spectra]:
    """Read spectra in chunks of ``chunk_size`` (the last may be shorter), in file order.

    Memory stays bounded by the chunk (text formats are read in blocks, parquet by row
    batches, HDF5 by slices), so files larger than memory can be processed. Same rules and
    arguments as :func:`read`; pass ``report=ReadReport()`` to collect the counts (complete
    once the iterator is exhausted).
    """
    _check_on_error(on_error)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ParameterError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    paths = _paths(path)
    if report is not None and report.path is None:
        report.path = paths[0] if len(paths) == 1 else paths
    return _rechunk(_iter_all(paths, format, on_error, progress, report, int(chunk_size)), int(chunk_size))


def _iter_all(paths, fmt, on_error, progress, report, chunk_size) -> Iterator[Spectra]:
    for p in paths:
        rep = ReadReport(path=p)
        t1 = time.perf_counter()
        yield from _iter_file(p, fmt, on_error, rep, progress, chunk_size)
        rep.seconds = time.perf_counter() - t1
        rep.check()
        if report is not None:
            add_file_report(report, rep, several=len(paths) > 1)


def add_file_report(report: ReadReport, rep: ReadReport, several: bool) -> None:
    """Add one file's finished report to the report of a chunked read of one or ``several`` files."""
    if report.format is None:
        report.format = rep.format
    elif report.format != rep.format:
        report.format = "mixed"
    report.absorb(rep)
    report.seconds += rep.seconds
    if several:
        report.files.append(rep)


def _rechunk(chunks: Iterable[Spectra], size: int) -> Iterator[Spectra]:
    """Re-cut a stream of Spectra into pieces of exactly ``size`` (the last may be shorter).

    A cursor walks each incoming block, so only the short remainder of a block is ever copied.
    """
    buf: Spectra | None = None
    pos = 0
    for c in chunks:
        if len(c) == 0:
            continue
        if buf is None or pos >= len(buf):
            buf, pos = c, 0
        else:
            buf, pos = Spectra.concat([buf.take(np.arange(pos, len(buf), dtype=np.int64)), c]), 0
        while len(buf) - pos >= size:
            if pos == 0 and len(buf) == size:
                yield buf
            else:
                yield buf.take(np.arange(pos, pos + size, dtype=np.int64))
            pos += size
    if buf is not None and pos < len(buf):
        yield buf if pos == 0 else buf.take(np.arange(pos, len(buf), dtype=np.int64))


def output_format(path, format: str | None = None) -> str:
    """The format :func:`write` writes ``path`` in (``format``, else from the extension), checked before
    any work: writable, ``.gz`` only for text formats, and a seeking format (Parquet, HDF5) not into a
    pipe or terminal (:func:`fastspec._atomic.check_seekable`)."""
    from fastspec._atomic import check_seekable

    from fastspec.io._common import EXTENSIONS

    path = os.fspath(path)
    base, _ = strip_gz(path)
    ext = os.path.splitext(base)[1].lower()
    if format is None:
        if ext not in EXTENSIONS:
            raise FastspecError(f"{path}: cannot tell the output format from the extension; name the file "
                                f".mgf, .msp, ... or pass format= (one of {', '.join(WRITABLE)}; --format in "
                                "`fastspec convert`)")
        fmt = EXTENSIONS[ext]
    else:
        fmt = detect_format(path, format)
        # reading it back would take it for the other (a pipe or device, written through, may be named anyhow)
        if ext in EXTENSIONS and EXTENSIONS[ext] != fmt and not (os.path.exists(path) and not os.path.isfile(path)):
            raise FastspecError(f"{path}: its extension names {EXTENSIONS[ext]}, not the {fmt} asked for; "
                                f"name the file .{fmt if fmt != 'hdf5' else 'h5'} or drop the format")
    if fmt not in WRITABLE:
        raise FastspecError(f"{path}: writing {fmt} is not supported (writable: {', '.join(WRITABLE)})")
    if strip_gz(path)[1] and fmt not in _TEXT:
        raise FastspecError(f"{path}: .gz compression applies to text formats only")
    if fmt in _SEEKING_WRITERS:
        check_seekable(path, _SEEKING_WRITERS[fmt], "a text format (mgf, msp or tsv)")
    return fmt


#: formats whose writers seek, by the name messages give them
_SEEKING_WRITERS = {"parquet": "Parquet", "hdf5": "HDF5"}


def write(spectra, path, format: str | None = None) -> None:
    """Write spectra to ``path``.

    Parameters
    ----------
    spectra : Spectra (or an iterable of matchms.Spectrum)
    path : str or os.PathLike
        Output file; parent folders are created. ``.gz`` compresses text formats.
    format : str, optional
        ``"mgf"``, ``"msp"``, ``"tsv"``, ``"parquet"`` or ``"hdf5"``; default from the extension.
    """
    if not isinstance(spectra, Spectra):
        try:
            spectra = Spectra.from_matchms(list(spectra))
        except (TypeError, AttributeError) as e:
            raise ParameterError(f"write() needs a Spectra, got {type(spectra).__name__}") from e
    path = os.fspath(path)
    fmt = output_format(path, format)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    importlib.import_module(_MODULES[fmt]).write(spectra, path)
