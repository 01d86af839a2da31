"""Native MassBank record files (the ``MSBNK-...txt`` files of the MassBank-data repository).

A record is a run of ``TAG: value`` lines ended by a line ``//`` (a file may hold several; a last
record without ``//`` at the end of the file is read too). Per the MassBank record format:

* tags with a subtag (``AC$MASS_SPECTROMETRY: ION_MODE POSITIVE``, ``MS$FOCUSED_ION: PRECURSOR_M/Z
  195.0877``, ``CH$LINK: INCHIKEY ...``, ``AC$CHROMATOGRAPHY``, ``MS$DATA_PROCESSING``, ``SP$LINK``,
  ...) become the key ``tag:subtag`` (lower-case), which :mod:`fastspec.io.meta` maps onto the
  canonical columns (``precursor_mz``, ``adduct``, ``ion_mode``, ``collision_energy``,
  ``fragmentation_mode``, ``inchikey``, ``ms_level``); ``ACCESSION`` -> ``id``, ``CH$NAME`` (first
  line) -> ``name``, further ``CH$NAME`` lines -> ``synonyms`` list, ``CH$FORMULA``, ``CH$SMILES``,
  ``CH$IUPAC`` (InChI), ``CH$EXACT_MASS``, ``AC$INSTRUMENT``, ``AC$INSTRUMENT_TYPE``,
  ``RECORD_TITLE`` -> ``title``, ``PK$SPLASH`` -> ``splash``; other tags are kept (snake_case);
* a repeated tag keeps its first value when it maps to a harmonised key, else the values are
  joined with ``"; "`` (``COMMENT``, ``AC$CHROMATOGRAPHY: SOLVENT`` A and B);
* lines starting with a blank continue the previous value; ``PK$ANNOTATION`` blocks are skipped;
* ``PK$PEAK: m/z int. rel.int.`` is followed by ``mz intensity [rel.int.]`` lines up to ``//``
  (the relative intensity is not read); ``PK$NUM_PEAK`` is checked against the peaks read
  (``num_peaks mismatch`` warning, the peaks are trusted) and dropped;
* ``N/A`` and the other missing markers are nulls (harmonisation).

Records go through :func:`~fastspec.io._common.finish_block`, so the peak rules and rejection
reasons are those of MGF/MSP; a record without ``PK$PEAK`` has no peaks.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pyarrow as pa

from fastspec.io import _textscan as ts
from fastspec.io._common import BlockReader, ReadReport, finish_block, truncated_reason
from fastspec.io._text import _check_encoding
from fastspec.io.meta import EXTRA_ALIASES, key_info
from fastspec.spectra import CANONICAL_KEYS, Spectra

#: tags whose value starts with a subtag: ``TAG: SUBTAG value`` -> key ``tag:subtag``
SUBTAG_TAGS = frozenset({
    "CH$LINK", "SP$LINK", "AC$MASS_SPECTROMETRY", "AC$CHROMATOGRAPHY", "AC$GENERAL", "AC$ION_MOBILITY",
    "MS$FOCUSED_ION", "MS$DATA_PROCESSING",
    "AC$ANALYTICAL_CONDITION",  # MassBank 1.x: MODE NEGATIVE, MS_TYPE MS2, COLLISION_ENERGY 10 V
})
#: tags read under another key
RENAMED = {"RECORD_TITLE": "title", "PK$SPLASH": "splash"}

_HARMONISED = frozenset(CANONICAL_KEYS) | frozenset(EXTRA_ALIASES)
_TAG_RE = re.compile(r"([A-Za-z][A-Za-z0-9_]*(?:\$[A-Za-z0-9_]+)?)[ \t]*:[ \t]?(.*)")
# a tag line inside the peak block ends it (PK$PEAK is the last tag by the spec, but be tolerant)
_TAG_LINE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\$[A-Za-z0-9_]+)?[ \t]*:", re.M)
_PEAK_TAG_RE = re.compile(r"^PK\$PEAK[ \t]*:[^\n]*", re.M | re.I)
_END_RE = re.compile(r"^//[ \t\r]*$", re.M)
# one peak line: m/z, intensity, anything after (relative intensity)
_PEAK_LINE_RE = re.compile(r"^[ \t]*(\S+)[ \t]+(\S+)(?:[ \t]+\S+)*[ \t\r]*$", re.M)
_DECIMAL_COMMA_RE = re.compile(r"\d,\d")


class _Chunk:
    """Parsed records waiting to become one Spectra."""

    def __init__(self):
        self.lines: list[int] = []
        self.errors: list[str | None] = []
        self.mzs: list[np.ndarray] = []
        self.ints: list[np.ndarray] = []
        self.rows: list[dict] = []
        self.synonyms: list[list | None] = []
        self.declared: list[float] = []

    def __len__(self) -> int:
        return len(self.rows)


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None, block_bytes: int = 8 << 20) -> Iterator[Spectra]:
    """Spectra of a MassBank record file (``.gz`` allowed), ``chunk_size`` records at a time (default 10000).

    Parameters
    ----------
    path : str
        File of one or more records.
    on_error, report, progress
        As in :func:`fastspec.io.read`.
    chunk_size : int, optional
        Records per yielded :class:`Spectra`.
    block_bytes : int
        Bytes read at a time (whole records are parsed; the rest is carried to the next block).
    """
    step = int(chunk_size or 10_000)
    reader = BlockReader(path, block_bytes, progress, desc=f"reading {path}", salvage=on_error == "skip")
    chunk = _Chunk()
    line0 = 1
    first = True
    for data, final in reader:
        if first:
            first = False
            _check_encoding(path, data)
        cut = len(data) if final else _end_of_last_record(data)
        if cut < len(data):
            reader.give_back(data[cut:])
        if cut == 0:
            continue
        text = _decode_block(data[:cut])
        for seg, seg_line in _segments(text, line0, final):
            _parse_record(seg, seg_line, chunk, report)
            if len(chunk) >= step:
                yield _finish(path, chunk, on_error, report)
                chunk = _Chunk()
        line0 += text.count("\n")
    if len(chunk):
        yield _finish(path, chunk, on_error, report)
    if reader.truncated is not None:  # the record the data broke off in (or after), counted
        report.reject(line0, truncated_reason(reader.truncated), path)


def _end_of_last_record(data: bytes) -> int:
    """Byte offset just after the last ``//`` line of ``data`` (0 when there is none)."""
    end = len(data)
    while True:
        i = data.rfind(b"//", 0, end)
        if i < 0:
            return 0
        if i == 0 or data[i - 1] == 0x0A:
            j = data.find(b"\n", i)
            j = len(data) if j < 0 else j + 1
            if not data[i + 2:j].strip(b" \t\r\n"):  # the same test as _END_RE
                return j
        end = i  # '//' inside a line (an URL in a comment)


def _decode_block(raw: bytes) -> str:
    """UTF-8, line by line Windows-1252/Latin-1 where it is not (as the MGF/MSP readers do)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "\n".join(ts._decode(line) for line in raw.split(b"\n"))


def _segments(text: str, line0: int, final: bool) -> Iterator[tuple[str, int]]:
    """(text of one record, line of its first character), split at ``//`` lines."""
    pos, line = 0, line0
    for m in _END_RE.finditer(text):
        seg = text[pos:m.start()]
        yield seg, line
        line += seg.count("\n")
        pos = m.end()
    if final and pos < len(text):
        yield text[pos:], line  # no '//' at the end of the file: accepted


def _parse_record(seg: str, line0: int, chunk: _Chunk, report: ReadReport) -> None:
    """Parse one record's text into ``chunk`` (nothing when it holds no tag line at all)."""
    m = _PEAK_TAG_RE.search(seg)
    head, peaks_text, peak_line0 = seg, "", 0
    if m is not None:
        head = seg[:m.start()]
        rest = seg[m.end():]
        peak_line0 = line0 + seg.count("\n", 0, m.end())  # line of the PK$PEAK tag
        t = _TAG_LINE_RE.search(rest)
        if t is not None:  # tags after the peaks go back to the metadata (blank lines keep the numbering)
            head = head + "\n" * seg.count("\n", m.start(), m.end() + t.start()) + rest[t.start():]
            rest = rest[:t.start()]
        peaks_text = rest
    row, names, declared, n_tags, n_odd, first_line = _parse_head(head, line0)
    if n_tags == 0 and m is None:
        # no tag at all (junk after the last '//'): not a record
        report.warn("lines outside records", sum(1 for ln in seg.split("\n") if ln.strip()))
        return
    report.warn("unrecognised lines", n_odd)
    mz, inten, err, err_line = _parse_peaks(peaks_text, peak_line0)
    start = first_line if first_line is not None else peak_line0
    chunk.lines.append(err_line if err else start)
    chunk.errors.append(err)
    chunk.mzs.append(mz)
    chunk.ints.append(inten)
    chunk.rows.append(row)
    chunk.synonyms.append(names[1:] or None)
    chunk.declared.append(declared)
    if names:
        row["name"] = names[0]


def _parse_head(head: str, line0: int):
    """Metadata lines -> (row dict, CH$NAME values, declared peak count, tag lines, unrecognised lines,
    line of the first non-blank line)."""
    row: dict[str, str] = {}
    names: list[str] = []
    declared = np.nan
    n_tags = n_odd = 0
    first_line = None
    key = None  # key a continuation line extends (None: skipped block or nothing yet)
    for i, raw in enumerate(head.split("\n")):
        ln = raw.rstrip("\r")
        if not ln.strip():
            continue
        if first_line is None:
            first_line = line0 + i
        if ln[0] in " \t":
            if key is None:
                continue  # PK$ANNOTATION lines, or a continuation of a skipped tag
            if key == "ch$name":
                names[-1] = f"{names[-1]} {ln.strip()}"
            else:
                row[key] = f"{row[key]} {ln.strip()}".strip()
            continue
        m = _TAG_RE.fullmatch(ln)
        if m is None:
            n_odd += 1
            key = None
            continue
        n_tags += 1
        tag, value = m.group(1).upper(), m.group(2).strip()
        key = None
        if tag == "PK$ANNOTATION":
            continue
        if tag == "PK$NUM_PEAK":
            declared = _to_float(value)
            continue
        if tag == "CH$NAME":
            names.append(value)
            key = "ch$name"
            continue
        if tag in SUBTAG_TAGS:
            sub, _, value = value.partition(" ")
            key = f"{tag}:{sub}".lower()
            value = value.strip()
        else:
            key = RENAMED.get(tag, tag.lower())
        if key not in row:
            row[key] = value
        elif key_info(key)[0] not in _HARMONISED:
            row[key] = f"{row[key]}; {value}"  # iterative tags (COMMENT, SOLVENT A/B)
        else:
            key = None  # first value wins; ignore its continuation lines too
    return row, names, declared, n_tags, n_odd, first_line


def _to_float(value: str) -> float:
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return np.nan


def _parse_peaks(text: str, line0: int) -> tuple[np.ndarray, np.ndarray, str | None, int]:
    """Peak lines after ``PK$PEAK`` (``line0`` is the tag's line) -> (mz, intensity, error, error line).

    The common case is one regex pass and one numpy conversion for the whole block.
    """
    empty = np.zeros(0)
    if not text.strip() or text.strip().upper() == "N/A":  # (merged records: "PK$PEAK: ..." then "  N/A")
        return empty, empty, None, 0
    pairs = _PEAK_LINE_RE.findall(text)
    n_lines = sum(1 for ln in text.split("\n") if ln.strip())
    if len(pairs) == n_lines:
        try:
            arr = np.array(pairs, dtype=np.float64).reshape(-1, 2)
            return arr[:, 0].copy(), arr[:, 1].copy(), None, 0
        except ValueError:
            pass
    # unusual layout or a bad line: line by line, stopping at the first bad one (for its line number)
    mzs, ints = [], []
    for i, raw in enumerate(text.split("\n")):
        toks = raw.split()
        if not toks:
            continue
        line = line0 + i
        if len(toks) == 1:
            return empty, empty, ts.ERROR_REASONS[ts.E_SINGLE], line
        try:
            a, b = float(toks[0]), float(toks[1])
        except ValueError:
            if _DECIMAL_COMMA_RE.search(raw) and "." not in raw:
                return empty, empty, ts.ERROR_REASONS[ts.E_DECIMAL_COMMA], line
            return empty, empty, ts.ERROR_REASONS[ts.E_NUMBER], line
        mzs.append(a)
        ints.append(b)
    return np.array(mzs, np.float64), np.array(ints, np.float64), None, 0


def _finish(path: str, chunk: _Chunk, on_error: str, report: ReadReport) -> Spectra:
    n = len(chunk)
    lengths = np.fromiter((m.shape[0] for m in chunk.mzs), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    mz = np.concatenate(chunk.mzs) if n else np.zeros(0)
    inten = np.concatenate(chunk.ints) if n else np.zeros(0)
    errors = np.array(chunk.errors, dtype=object)
    declared = np.asarray(chunk.declared, dtype=np.float64)
    parsed = errors == None  # noqa: E711
    report.warn("num_peaks mismatch", int(np.count_nonzero(parsed & ~np.isnan(declared) & (declared != lengths))))
    keys: dict[str, None] = {}
    for r in chunk.rows:
        keys.update(dict.fromkeys(r))
    cols = {k: pa.array([r.get(k) for r in chunk.rows], pa.string()) for k in keys}
    if any(s is not None for s in chunk.synonyms):
        cols["synonyms"] = pa.array(chunk.synonyms, pa.list_(pa.string()))
    meta = pa.table(cols) if cols else pa.table({"id": pa.nulls(n, pa.string())})
    return finish_block(report, path, np.asarray(chunk.lines, np.int64), None if parsed.all() else errors,
                        offsets, mz, inten, meta, on_error, text=True)
