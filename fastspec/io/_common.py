"""Shared reader plumbing: the read report, the peak rules every reader applies, file opening,
progress bars and the assembly of parsed records into :class:`~fastspec.spectra.Spectra`.

Peak rules (:func:`clean_peaks`), identical for every format, applied to CSR arrays at once:

========================================  =====================================================
condition                                 rule
========================================  =====================================================
NaN or infinite m/z or intensity          record rejected (``"non-finite peak value"``); also
                                          m/z and intensities beyond float32 range (3.4e38)
m/z <= 0                                  record rejected (``"m/z not positive"``); also m/z
                                          below float32 range (under ~7e-46: stored as 0)
intensity < 0                             record rejected (``"negative intensity"``)
intensity == 0                            peak kept as matchms keeps it (counted in
                                          ``n_zero_intensity``); preprocessing drops it
no peak of positive intensity             record rejected (``"no peaks"``)
peaks not sorted by m/z                   sorted (stable), counted in ``n_fixed_unsorted``
repeated m/z values                       kept as they are, counted in ``n_with_duplicate_mz``
missing / unparsable / non-positive       precursor m/z is NaN; record kept (``"bad precursor_mz"``
precursor m/z, or beyond float32 range    warning when a value was given but unusable)
========================================  =====================================================
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import re
import stat
import sys
import zlib
from typing import Any, Iterator, NamedTuple

import numba
import numpy as np
import pyarrow as pa

from fastspec._atomic import naming_output, open_output, output_target, temporary_sibling
from fastspec.errors import FastspecError, ParameterError, ParseError, location
from fastspec.kernels._config import NJIT
from fastspec.spectra import Spectra, sort_peaks_csr

#: at most this many rejected records are listed one by one in a report (counts stay exact)
MAX_LISTED = 10_000

#: what a rejection's ``line`` counts in formats without meaningful lines (default: file lines)
POSITION_UNITS = {"mzml": "spectrum", "mzxml": "spectrum", "json": "record", "parquet": "row", "hdf5": "row"}


def position_unit(fmt: str | None) -> str:
    """What a rejection's ``line`` counts in format ``fmt`` (see :data:`POSITION_UNITS`)."""
    return POSITION_UNITS.get(fmt or "", "line")


REASON_NONFINITE = "non-finite peak value"
REASON_MZ = "m/z not positive"
REASON_NEGATIVE = "negative intensity"
REASON_EMPTY = "no peaks"


class Rejection(NamedTuple):
    """One rejected record: 1-based line (row for tables) where it starts or fails, why, and the file."""

    line: int | None
    reason: str
    path: str | None = None


@dataclasses.dataclass
class ReadReport:
    """What a read did. Invariant: ``n_records == n_spectra + n_rejected``.

    Attributes
    ----------
    path : str or list of str
        The file(s) read.
    format : str
        Format name (``"mgf"``, ``"msp"``, ...; ``"mixed"`` for several formats).
    n_records : int
        Records found (MGF ``BEGIN IONS`` blocks, MSP entries, table rows, mzML MS2 spectra).
    n_spectra : int
        Spectra returned.
    n_rejected : int
        Records skipped (``on_error="skip"``).
    rejected : list of Rejection
        ``(line, reason, path)`` per rejected record, the first :data:`MAX_LISTED`.
    counts_by_reason : dict
        Rejected records per reason (exact).
    n_fixed_unsorted : int
        Spectra whose peaks were sorted by m/z.
    n_zero_intensity : int
        Zero-intensity peaks in the spectra returned (kept as read: matchms keeps them and counts them
        as matched peaks; the default preprocessing drops them).
    n_with_duplicate_mz : int
        Spectra kept with repeated m/z values.
    warnings : dict
        Other counted oddities (``"num_peaks mismatch"``, ``"num_peaks unreadable"``, ``"lines outside records"``,
        ``"bad precursor_mz"``, ``"spectra with ms level != 2 skipped"`` ...).
    files : list of ReadReport
        Per-file reports when several paths were read.
    seconds : float
        Wall time of the read.
    rejected_records : list of int
        0-based position among all records read of every rejected record, in rejection order.
    rejected_ids : list of str or None
        The id of each of ``rejected_records`` (None when it has none or the reader did not get that far).
    rejected_reasons : list of str
        Why each of ``rejected_records`` was rejected, with where when known: its line in a text format
        (``"unparsable peak line (line 4)"``), else its row, spectrum or record number
        (:data:`POSITION_UNITS`; ``"negative intensity (row 3)"``): every one, where :attr:`rejected`
        lists the first :data:`MAX_LISTED`.
    """

    path: Any = None
    format: str | None = None
    n_records: int = 0
    n_spectra: int = 0
    n_rejected: int = 0
    rejected: list = dataclasses.field(default_factory=list)
    counts_by_reason: dict = dataclasses.field(default_factory=dict)
    n_fixed_unsorted: int = 0
    n_zero_intensity: int = 0
    n_with_duplicate_mz: int = 0
    warnings: dict = dataclasses.field(default_factory=dict)
    files: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    #: 0-based position among all records read of every rejected record, in rejection order
    rejected_records: list = dataclasses.field(default_factory=list)
    #: the record's harmonised ``id`` (MGF TITLE or SPECTRUMID, MSP DB#, ...) for each of ``rejected_records``,
    #: None when it has none or the reader did not get that far
    rejected_ids: list = dataclasses.field(default_factory=list)
    #: the reason (and line) of each of ``rejected_records``
    rejected_reasons: list = dataclasses.field(default_factory=list)

    @property
    def reasons(self) -> dict:
        """Alias of :attr:`counts_by_reason`."""
        return self.counts_by_reason

    def check(self) -> "ReadReport":
        """Raise AssertionError unless the counts add up."""
        if self.n_records != self.n_spectra + self.n_rejected:
            raise AssertionError(f"read report does not add up: {self.n_records} records != "
                                 f"{self.n_spectra} spectra + {self.n_rejected} rejected")
        if sum(self.counts_by_reason.values()) != self.n_rejected:
            raise AssertionError("read report: rejection reasons do not add up")
        if not len(self.rejected_records) == len(self.rejected_ids) == len(self.rejected_reasons) == self.n_rejected:
            raise AssertionError("read report: rejected records and their ids do not add up")
        return self

    def reject(self, line: int | None, reason: str, path: str | None = None, record: int | None = None,
               record_id: str | None = None) -> None:
        """Count a rejected record; ``record``: its position among the records read (default: the next);
        ``record_id``: its id when the reader got that far."""
        self.rejected_records.append(self.n_records if record is None else int(record))
        self.rejected_ids.append(None if record_id is None else str(record_id))
        # where: a line of a text format, else the record's position in its unit (row, spectrum, record)
        self.rejected_reasons.append(reason if line is None else f"{reason} ({position_unit(self.format)} {int(line)})")
        self.n_records += 1
        self.n_rejected += 1
        self.counts_by_reason[reason] = self.counts_by_reason.get(reason, 0) + 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(Rejection(None if line is None else int(line), reason, path))

    def warn(self, what: str, n: int = 1) -> None:
        if n:
            self.warnings[what] = self.warnings.get(what, 0) + int(n)

    def absorb(self, other: "ReadReport") -> None:
        """Add another report's counts (used for several files)."""
        self.rejected_records.extend(self.n_records + r for r in other.rejected_records)
        self.rejected_ids.extend(other.rejected_ids)
        self.rejected_reasons.extend(other.rejected_reasons)
        self.n_records += other.n_records
        self.n_spectra += other.n_spectra
        self.n_rejected += other.n_rejected
        room = MAX_LISTED - len(self.rejected)
        if room > 0:
            self.rejected.extend(other.rejected[:room])
        for k, v in other.counts_by_reason.items():
            self.counts_by_reason[k] = self.counts_by_reason.get(k, 0) + v
        for k, v in other.warnings.items():
            self.warnings[k] = self.warnings.get(k, 0) + v
        self.n_fixed_unsorted += other.n_fixed_unsorted
        self.n_zero_intensity += other.n_zero_intensity
        self.n_with_duplicate_mz += other.n_with_duplicate_mz

    def summary(self) -> str:
        """One line, e.g. ``1000 records: 998 spectra, 2 rejected (no peaks: 2)``."""
        s = f"{self.n_records} records: {self.n_spectra} spectra, {self.n_rejected} rejected"
        if self.counts_by_reason:
            s += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.counts_by_reason.items())) + ")"
        fixes = []
        if self.n_fixed_unsorted:
            fixes.append(f"{self.n_fixed_unsorted} sorted")
        if self.n_zero_intensity:
            fixes.append(f"{self.n_zero_intensity} zero-intensity peaks kept")
        fixes += [f"{k}: {v}" for k, v in sorted(self.warnings.items())]
        if fixes:
            s += "; " + ", ".join(fixes)
        return s

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rejected"] = [list(r) for r in self.rejected]
        return d


# ---------------------------------------------------------------------------- peak rules
_CODES = (None, REASON_NONFINITE, REASON_MZ, REASON_NEGATIVE, REASON_EMPTY)
_F32_MAX = float(np.finfo(np.float32).max)


@numba.njit(**NJIT)
def _peak_rules(offsets, mz, inten, pre_bad):
    """One pass over CSR peaks: per-record rule code (0 keep, else index into _CODES), peak keep
    mask, kept peaks per record, unsorted flag per record and the number of zero-intensity peaks in
    kept records (kept too: a record needs one positive intensity)."""
    n = offsets.shape[0] - 1
    code = np.zeros(n, np.int8)
    lengths = np.zeros(n, np.int64)
    unsorted = np.zeros(n, np.bool_)
    keep = np.zeros(mz.shape[0], np.bool_)
    n_zero = 0
    for r in range(n):
        a = offsets[r]
        b = offsets[r + 1]
        if pre_bad[r]:  # a parse error wins over the peak rules
            code[r] = 5
            continue
        c = 0
        for k in range(a, b):
            m = mz[k]
            v = inten[k]
            if not (np.isfinite(m) and np.isfinite(v) and m <= _F32_MAX):  # (the index stores float32 m/z)
                c = 1
                break
            if (m <= 0.0 or np.float32(m) == 0.0) and c == 0:  # (below float32's range: 0 as stored)
                c = 2
            elif v < 0.0 and c == 0:
                c = 3
        if c != 0:
            code[r] = c
            continue
        kept = 0
        last = -np.inf
        zeros = 0
        for k in range(a, b):
            if inten[k] == 0.0:
                zeros += 1
            keep[k] = True
            kept += 1
            if mz[k] < last:
                unsorted[r] = True
            last = mz[k]
        lengths[r] = kept
        if kept == zeros:  # no peak, or only zero intensities: nothing to score
            code[r] = 4
            unsorted[r] = False  # (a rejected record is not counted as sorted)
            for k in range(a, b):
                keep[k] = False
        else:
            n_zero += zeros
    return code, keep, lengths, unsorted, n_zero


@numba.njit(**NJIT)
def _dup_rows(offsets, mz):
    """Number of records with two equal consecutive m/z values (peaks sorted)."""
    n = offsets.shape[0] - 1
    cnt = 0
    for r in range(n):
        for k in range(offsets[r] + 1, offsets[r + 1]):
            if mz[k] == mz[k - 1]:
                cnt += 1
                break
    return cnt


def clean_peaks(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, report: ReadReport | None = None,
                reasons: np.ndarray | None = None):
    """Apply the peak rules (module docstring) to CSR peaks of n records, in one compiled pass.

    Parameters
    ----------
    offsets : int64 (n+1,)
    mz : float64 (n_peaks,)
    intensity : float (n_peaks,)
        Any float dtype; cast to float32 (values beyond float32 range become inf -> rejected).
    report : ReadReport, optional
        Receives the fix counts of the kept records (not the rejections: see ``reasons``).
    reasons : object array (n,), optional
        Reasons already known (parse errors; None for records that parsed); such records are
        rejected whatever their peaks.

    Returns
    -------
    keep : bool (n,)
        Records that survive.
    reasons : object array (n,)
        Rejection reason per record (None when kept).
    offsets, mz, intensity : ndarray
        CSR peaks of the kept records only (int64, float64 sorted per spectrum, float32).
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    mz = np.ascontiguousarray(mz, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        inten = np.ascontiguousarray(intensity).astype(np.float32, copy=False)
    n = offsets.shape[0] - 1
    pre = np.zeros(n, np.bool_) if reasons is None else np.array([r is not None for r in reasons], dtype=np.bool_)
    code, keep_peak, lengths, unsorted, n_zero = _peak_rules(offsets, mz, inten, pre)
    out_reasons = np.array(_CODES, dtype=object)[np.minimum(code, 4)]
    if reasons is not None and pre.any():
        is_pre = code == 5
        out_reasons[is_pre] = np.asarray(reasons, dtype=object)[is_pre]
    keep = code == 0
    if not keep_peak.all():
        mz2 = mz[keep_peak]
        in2 = inten[keep_peak]
    else:
        mz2, in2 = mz, inten
    new_len = lengths[keep]
    new_off = np.zeros(new_len.shape[0] + 1, np.int64)
    np.cumsum(new_len, out=new_off[1:])
    n_fixed = int(np.count_nonzero(unsorted))
    if n_fixed:
        mz2, in2, _ = sort_peaks_csr(new_off, mz2, in2)
    if report is not None:
        report.n_fixed_unsorted += n_fixed
        report.n_zero_intensity += int(n_zero)
        report.n_with_duplicate_mz += int(_dup_rows(new_off, mz2))
    return keep, out_reasons, new_off, np.ascontiguousarray(mz2), np.ascontiguousarray(in2, dtype=np.float32)


def _record_ids(metadata: pa.Table, rows: np.ndarray, text: bool, merge_aliases: bool | None) -> list:
    """The harmonised ``id`` of some records (None where they have none), one per row."""
    from fastspec.io.meta import harmonise_table

    if metadata.num_columns == 0:  # a table without columns harmonises to no rows at all
        return [None] * len(rows)
    ids = harmonise_table(metadata.take(pa.array(rows)), text=text, merge_aliases=merge_aliases).column("id")
    ids = ids.to_pylist()
    return ids if len(ids) == len(rows) else [None] * len(rows)


def finish_block(
    report: ReadReport,
    path: str,
    lines: np.ndarray,
    errors: np.ndarray,
    offsets: np.ndarray,
    mz: np.ndarray,
    intensity: np.ndarray,
    metadata: pa.Table,
    on_error: str,
    *,
    text: bool = True,
    merge_aliases: bool | None = None,
    signed_charge: bool = False,
    records: np.ndarray | None = None,
    peak_line=None,
) -> Spectra:
    """Turn n parsed records into Spectra and account for them in ``report``.

    Parameters
    ----------
    lines : int64 (n,)
        Line (or row) number of each record, for messages.
    errors : object (n,) or None
        Parse error per record (None if it parsed); such records are rejected whatever their peaks.
    offsets, mz, intensity : CSR peaks of the n records.
    metadata : pyarrow.Table
        n rows of raw metadata (harmonised here).
    records : int64 (n,), optional
        Each record's position among the file's records, for a reader that counts records of its own
        (rows it dropped before this block) out of order; default: they follow those already counted.
    peak_line : callable, optional
        ``peak_line(i, p)``: the line of peak ``p`` (an index into ``mz``) of record ``i``, or None. A
        record rejected for a peak value is then named at that peak's line, not where it starts. Asked
        only for rejected records (with ``on_error="raise"`` the first; else a file's first
        :data:`PEAK_LINE_LOOKUPS` rejections, later ones keep the record's first line), so a reader can
        find lines lazily.
    """
    from fastspec.io.meta import harmonise_table

    keep, reasons, off2, mz2, in2 = clean_peaks(offsets, mz, intensity, report, errors)
    bad = np.flatnonzero(~keep)
    if bad.size:
        if on_error == "raise":
            first = bad[np.argmin(lines[bad])]
            raise ParseError(str(reasons[first]), path,
                             _line_of(first, lines, reasons, offsets, mz, intensity, peak_line),
                             unit=position_unit(report.format))
        base = report.n_records  # this block's records follow those already counted
        # their ids as the kept records get theirs, so that a hit table can name the rejected queries
        bad_ids = _record_ids(metadata, bad, text, merge_aliases)
        # the peak's line for a file's first listed rejections only: finding it rescans the record's text
        # (a review: 12k rejected 2,000-peak records read 2.2 -> 10.6 s when all 10,000 listed looked)
        room = min(MAX_LISTED, PEAK_LINE_LOOKUPS) - len(report.rejected)
        for j, (i, rid) in enumerate(zip(bad, bad_ids)):
            line = _line_of(i, lines, reasons, offsets, mz, intensity, peak_line if j < room else None)
            report.reject(line, str(reasons[i]), path, record_id=rid,
                          record=base + int(i) if records is None else int(records[i]))
    n_keep = int(keep.sum())
    report.n_records += n_keep
    report.n_spectra += n_keep
    meta = metadata.filter(pa.array(keep)) if bad.size else metadata
    counts: dict = {}
    meta = harmonise_table(meta, text=text, merge_aliases=merge_aliases, counts=counts, signed_charge=signed_charge)
    for k, v in counts.items():
        report.warn(k, v)
    pmz = meta.column("precursor_mz").to_numpy(zero_copy_only=False).astype(np.float64)
    charge = meta.column("charge").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int8)
    return Spectra(off2, mz2, in2, pmz, charge, meta, validate=False)


#: Rejections per file named at the offending peak's line (see ``peak_line`` in :func:`finish_block`); the
#: others at their record's first line
PEAK_LINE_LOOKUPS = 100


def _line_of(i: int, lines: np.ndarray, reasons: np.ndarray, offsets, mz, intensity, peak_line) -> int:
    """The line to name rejected record ``i`` by: that of the peak whose value rejected it where
    ``peak_line`` finds it (see :func:`finish_block`), else ``lines[i]``."""
    p = None if peak_line is None else _bad_peak(offsets, mz, intensity, int(i), reasons[i])
    at = None if p is None else peak_line(int(i), p)
    return int(lines[i]) if at is None else int(at)


def _bad_peak(offsets, mz, intensity, i: int, reason) -> int | None:
    """The index (into ``mz``) of the peak :func:`_peak_rules` rejected record ``i`` for, with ``reason``;
    None for a reason that is no single peak's (no peaks, a parse error)."""
    a, b = int(offsets[i]), int(offsets[i + 1])
    m = np.asarray(mz[a:b], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(intensity[a:b]).astype(np.float32)  # as the rules see it: beyond float32 is inf
        if reason == REASON_NONFINITE:
            hit = ~(np.isfinite(m) & np.isfinite(v) & (m <= _F32_MAX))
        elif reason in (REASON_MZ, REASON_NEGATIVE):  # the rules keep the first of the two
            hit = (m <= 0.0) | (v < 0.0)
        else:
            return None
    k = np.flatnonzero(hit)
    return a + int(k[0]) if k.size else None


# ---------------------------------------------------------------------------- files
def strip_gz(path: str) -> tuple[str, bool]:
    """(path without a trailing .gz, whether it had one)."""
    low = path.lower()
    if low.endswith(".gz"):
        return path[:-3], True
    return path, False


#: the first bytes of a gzip stream
GZIP_MAGIC = b"\x1f\x8b"
#: magic bytes -> (what, the tool that extracts it) of the archives fastspec does not read
_ARCHIVES = ((b"PK\x03\x04", "a zip archive", "unzip"), (b"BZh", "bzip2-compressed", "bunzip2"),
             (b"\xfd7zXZ\x00", "xz-compressed", "unxz"), (b"7z\xbc\xaf", "a 7-Zip archive", "7z x"))


def refuse_archive(path: str, head: bytes) -> None:
    """Raise :class:`FastspecError` when ``head`` (a file's first bytes) starts an archive, whatever the
    file's name: MoNA and others distribute zipped libraries; gzip is read directly."""
    for magic, kind, tool in _ARCHIVES:
        if head.startswith(magic):
            raise FastspecError(f"{path}: {kind}, which fastspec does not read; extract it first ({tool}) "
                                f"and give the spectrum file (gzip-compressed files are read as they are)")


def open_binary(path: str):
    """A binary file object (gzip-decompressing for ``.gz``, and for gzip content under another name) and
    the on-disk size in bytes. Archives (zip, bzip2, xz, 7-Zip) are refused (:func:`refuse_archive`). A pipe
    is told by its first bytes too (gzip or plain), read and put back in front of the rest (:class:`_Prefixed`)."""
    size = os.path.getsize(path)
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb"), size
    f = open(path, "rb")
    if not f.seekable():  # a pipe (/dev/stdin, <(...)): its first bytes cannot be read twice; read, then put back
        try:
            head = f.read(8)
            refuse_archive(path, head)
        except BaseException:
            f.close()
            raise
        stream = io.BufferedReader(_Prefixed(head, f))
        if not head.startswith(GZIP_MAGIC):
            return stream, size
        z = gzip.GzipFile(fileobj=stream, mode="rb")
        z.fastspec_source = stream  # closed with it (BlockReader)
        return z, size
    try:
        head = f.read(8)
        f.seek(0)
        refuse_archive(path, head)  # a zip named .mgf would read as text, losing its first record
    except BaseException:
        f.close()
        raise
    if head.startswith(GZIP_MAGIC):  # a .mgf.gz saved without its suffix would read as no record at all
        f.close()
        return gzip.open(path, "rb"), size
    return f, size


class _Prefixed(io.RawIOBase):
    """A pipe's first bytes, read to tell its content, then the rest of it: one raw stream again."""

    def __init__(self, head: bytes, rest):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._rest.close()
        super().close()


def raw_position(f) -> int:
    """Bytes consumed from disk so far (compressed position for gzip streams)."""
    try:
        if isinstance(f, gzip.GzipFile):
            return f.fileobj.tell()
        return f.tell()
    except (OSError, ValueError, AttributeError):
        return 0


class Progress:
    """A tqdm byte counter on stderr, or nothing.

    ``enabled=None`` (auto) shows it only for files over 64 MB when stderr is a terminal.
    """

    AUTO_BYTES = 64 << 20

    def __init__(self, total: int, enabled: bool | None, desc: str):
        enabled = wants_progress(enabled, total >= self.AUTO_BYTES and _stderr_tty())
        self._bar = None
        self._done = 0
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                             file=sys.stderr, leave=False, dynamic_ncols=True)

    def to(self, position: int) -> None:
        if self._bar is not None and position > self._done:
            self._bar.update(position - self._done)
            self._done = position

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _stderr_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def wants_progress(progress: Any, auto: bool | None = None) -> bool:
    """Whether to show a progress bar: ``progress`` True / False (a number or numpy boolean as one), or None
    for ``auto`` (default: stderr is a terminal). Anything else is a ParameterError (``"no"`` read as True)."""
    if progress is None:
        return _stderr_tty() if auto is None else bool(auto)
    if isinstance(progress, (bool, int, np.integer, np.bool_)):
        return bool(progress)
    raise ParameterError(f"progress must be True, False or None, got {progress!r}")


class BlockReader:
    """Read a (possibly gzipped) file in blocks that end at a newline.

    ``for data, final in reader:`` — ``data`` holds whole lines; after scanning, the consumer
    hands back what it did not consume (an unfinished record) with ``reader.give_back(tail)``;
    it is prefixed to the next block. ``final`` is True for the last block (EOF).

    ``salvage``: compressed data that ends early (an interrupted download) or breaks off raises
    :class:`~fastspec.errors.FastspecError` unless this is set; then the lines decoded before the break come
    as a last block with ``final`` False (so that an unfinished record is handed back, not read as complete),
    :attr:`truncated` holds the cause and :attr:`tail` what was left over; the consumer counts that as one
    rejected record.
    """

    def __init__(self, path: str, block_bytes: int = 32 << 20, progress: bool | None = None, desc: str = "",
                 salvage: bool = False):
        self.path = path
        self.block_bytes = int(block_bytes)
        self.progress = progress
        self.desc = desc or os.path.basename(path)
        self.salvage = salvage
        #: why the data ended early (``salvage``), else None
        self.truncated: str | None = None
        self._decoded = 0  # bytes a gzip stream gave so far
        self._tail = b""

    def give_back(self, tail: bytes) -> None:
        self._tail = bytes(tail)

    @property
    def tail(self) -> bytes:
        """What the consumer handed back last and no later block took."""
        return self._tail

    def __iter__(self) -> Iterator[tuple[bytes, bool]]:
        f, size = open_binary(self.path)
        bar = Progress(size, self.progress, self.desc)
        carry = b""
        first = True
        try:
            while True:
                try:
                    chunk = self._read(f)
                except _Broken as e:
                    self.truncated = str(e.cause)
                    data = carry + e.got
                    cut = data.rfind(b"\n") + 1
                    self._tail = b""
                    if cut:
                        yield data[:cut], False
                    self._tail += data[cut:]
                    return
                if first:
                    first = False
                    if chunk.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                        chunk = chunk[3:]
                data = carry + chunk if carry else chunk
                if not chunk:
                    if data:
                        self._tail = b""
                        yield data, True
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                self._tail = b""
                yield (data[:cut] if cut < len(data) else data), False
                carry = self._tail + data[cut:]
                bar.to(raw_position(f))
        except (OSError, EOFError, zlib.error) as e:
            raise FastspecError(f"{self.path}: cannot read: {e}") from e
        finally:
            bar.close()
            f.close()
            source = getattr(f, "fastspec_source", None)  # a pipe under a GzipFile, which does not close it
            if source is not None:
                source.close()

    def _read(self, f) -> bytes:
        """The next block of ``f``. A gzip stream is read in steps of one decompressed chunk (``read1``), so
        that data breaking off loses none of what decoded before (one large ``read`` returns nothing of its
        part then): with ``salvage``, that much comes in :class:`_Broken`."""
        if not isinstance(f, gzip.GzipFile):
            return f.read(self.block_bytes)
        data, err = read_pieces(f, self.block_bytes)
        if err is not None:
            if not self.salvage or not (self._decoded or data):  # (not gzip data at all: an error)
                raise err
            raise _Broken(err, data) from None
        self._decoded += len(data)
        return data


#: what a gzip stream raises where its data breaks off (cut short, a failed CRC check, trailing garbage)
GZIP_BREAKS = (EOFError, zlib.error, gzip.BadGzipFile)


def read_pieces(f: gzip.GzipFile, size: int) -> tuple[bytes, BaseException | None]:
    """Up to ``size`` bytes of a gzip stream, one decompressed piece (at most 1 MiB) at a time, so that where
    its data breaks off none of what decoded before is lost (one large ``read`` returns nothing of its part
    then): ``(data, None)``, or the bytes before the break and the error (:data:`GZIP_BREAKS`)."""
    parts: list[bytes] = []
    n = 0
    while n < size:
        try:
            b = f.read1(min(size - n, 1 << 20))
        except GZIP_BREAKS as e:
            return b"".join(parts), e
        if not b:
            break
        parts.append(b)
        n += len(b)
    return b"".join(parts), None


class _Broken(Exception):
    """Compressed data broke off (:meth:`BlockReader._read`): ``cause``, and ``got``, the bytes decoded before."""

    def __init__(self, cause: BaseException, got: bytes):
        super().__init__(str(cause))
        self.cause = cause
        self.got = got


def truncated_reason(cause: str) -> str:
    """Rejection reason of the record a compressed file breaks off in (``cause``:
    :attr:`BlockReader.truncated`, not part of it, so that the reason is one count)."""
    return "compressed data breaks off here (a truncated or corrupt file): the rest is lost"


# ---------------------------------------------------------------------------- formats
#: extension -> format name
EXTENSIONS = {
    ".mgf": "mgf",
    ".msp": "msp",
    ".mzml": "mzml",
    ".mzxml": "mzxml",
    ".json": "json",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}
FORMATS = ("mgf", "msp", "mzml", "mzxml", "json", "tsv", "parquet", "hdf5", "massbank")


def detect_format(path: str, format: str | None = None) -> str:
    """Format name from ``format=``, else the extension (``.gz`` ignored), else the content."""
    if format is not None:
        f = str(format).lower().lstrip(".")
        f = {"h5": "hdf5", "pq": "parquet", "mzml": "mzml"}.get(f, f)
        if f not in FORMATS:
            raise FastspecError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        return f
    base, _ = strip_gz(str(path))
    ext = os.path.splitext(base)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    return sniff_format(str(path))


# a peak list as GNPS / matchms (peaks_json, peaks: [[mz, i], ...]) or MoNA ("spectrum": "mz:i ...", after a
# "compound": [{...}] list) write it
_JSON_PEAKS = re.compile(r'"peaks_json"\s*:|"peaks"\s*:\s*"?\[\s*\[|"spectrum"\s*:\s*"\s*[0-9.]+:|"compound"\s*:\s*\[\s*\{')


def sniff_format(path: str) -> str:
    """Guess the format from the first bytes of the file. A pipe is refused: the bytes read to tell its
    format could not be read again (its first records would be lost)."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # open() below says why it cannot be read
    if not regular:
        raise FastspecError(f"{path}: a pipe, whose format cannot be told from its first bytes without losing "
                            f"them; give a file with a known extension (.mgf, .msp, ...) or name its format (--input-format; "
                            f"format= of fastspec.io.read, input_format= of Library.build and search)")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x89HDF"):
        return "hdf5"
    # before the text rules: a zip member stored uncompressed shows its MSP / MGF text in the first bytes
    refuse_archive(path, head)
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(4096)
        except (OSError, EOFError, zlib.error) as e:
            raise FastspecError(f"{path}: cannot read: {e}") from e
    text = head.decode("utf-8", "replace").lower()
    # the root element, whichever comes first (an mzXML file's comment may mention <mzML>, and vice versa)
    roots = sorted((i, f) for f, i in (("mzml", text.find("<mzml")), ("mzml", text.find("<indexedmzml")),
                                       ("mzxml", text.find("<mzxml"))) if i >= 0)
    if roots:
        return roots[0][1]
    if text.lstrip("\ufeff \t\r\n")[:1] in ("[", "{") and _JSON_PEAKS.search(text):
        return "json"  # a GNPS / matchms / MoNA JSON library
    if "begin ions" in text:
        return "mgf"
    first = text.lstrip().split("\n", 1)[0]
    if "\t" in first and "mzs" in first.split("\t"):
        return "tsv"
    if "pk$peak:" in text or "ch$name:" in text or text.lstrip().startswith("accession:"):
        # before the MSP test: a MassBank record's CH$NAME: line would pass for an MSP Name:
        return "massbank"
    if "name:" in text or "num peaks:" in text:
        return "msp"
    raise FastspecError(f"{path}: cannot tell the file format from its name or content; give it a known "
                        f"extension (.mgf, .msp, .mzML, .parquet, ...) or pass format= (one of {', '.join(FORMATS)}; "
                        f"--input-format in `fastspec convert`)")


def sniffed(path: str) -> str | None:
    """What :func:`sniff_format` finds in the file's first bytes; None when it cannot tell or the file cannot
    be read (the reader then says why)."""
    try:
        return sniff_format(path)
    except (FastspecError, OSError, EOFError, zlib.error):  # a truncated or corrupt gzip file among them
        return None


def first_rejection(report) -> str | None:
    """``path:line: reason`` of the reader's first rejected record (None: none), for messages."""
    first = next(iter(getattr(report, "rejected", None) or []), None)
    if first is None:
        return None
    where = first.path or (report.path if isinstance(report.path, str) else None)
    fmt = next((getattr(f, "format", None) for f in (getattr(report, "files", None) or [report])
                if str(getattr(f, "path", "")) == str(where)), None)
    if fmt is None and where:  # a report reused over several read() calls keeps no per-file formats
        try:
            fmt = detect_format(str(where))
        except Exception:  # (a file gone since, or of no known format: then plain lines)
            fmt = None
    other = other_format(str(where), fmt) if where and is_parse_failure(first.reason) else None
    hint = f" (read as {fmt}; its content looks like {other})" if other else ""
    return location(where, first.line, position_unit(fmt)) + str(first.reason) + hint


def is_parse_failure(reason) -> bool:
    """Whether a rejection says the format could not parse a line (a hint that the file is of another
    format); a record of the right format rejected for its values says nothing about the format."""
    return str(reason).startswith(("unparsable", "peak line"))


def other_format(path: str, fmt: str | None) -> str | None:
    """The format the first bytes of the file at ``path`` tell when it is not ``fmt``, the one it was read
    as (an MGF file named ``.msp``), else None. MSP and MassBank records share their ``CH$NAME:`` lines
    (matchms writes MassBank-style MSP): None between those two."""
    found = sniffed(path) if fmt and os.path.isfile(path) else None
    return None if not found or found == fmt or {found, fmt} == {"msp", "massbank"} else found


@contextlib.contextmanager
def text_sink(path: str):
    """A text file for writing (gzip-compressed for ``.gz``), UTF-8, ``\\n`` line ends. Written to a
    :func:`temporary_sibling` and renamed when complete: a failed or interrupted write leaves no partial
    file (nor clobbers an older one)."""
    gz = str(path).lower().endswith(".gz")
    target, direct = output_target(path)
    if direct:  # a device or pipe (/dev/null, /dev/stdout): written to as it is
        with naming_output(target, target), open_output(target, gz) as raw, \
                io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as fh:
            yield fh
        return
    path = str(target)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with temporary_sibling(path) as tmp, naming_output(path, tmp):  # opened with the umask's permissions
        # (gzip: no temporary's name or time in the header, see open_output)
        with open_output(tmp, gz) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as fh:
            yield fh
        os.replace(tmp, path)
