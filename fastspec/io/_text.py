"""Shared reader for line-based text formats (MGF, MSP): blocks -> numba scan -> Spectra.

Metadata lines come out of the scanner as one ``\\n``-joined string; pyarrow splits them into
key/value columns and this module pivots them into one column per key (first value per record
wins), without a Python loop per line. Only MSP's ``Synon:``/``Comments:`` lines, at most a few
per record, go through Python (:func:`_msp_special`).
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.errors import ParseError
from fastspec.io import _textscan as ts
from fastspec.io._common import BlockReader, ReadReport, finish_block, truncated_reason
from fastspec.io.meta import NIST_SYNON_CODES, key_info, missing_marker, pepmass_parts, pepmass_value
from fastspec.spectra import Spectra

NUM_PEAKS_KEYS = ts.NUM_PEAKS_KEYS  # defined with the scanner, which reads them too

# MoNA quotes whole pairs: "SMILES=C=CC(=O)O" "cas=50-00-0". Quoted strings are taken left to right, so
# that a closing quote never opens one (NIST's peptide comments: Origfile="a.MGF" Nreps=1/2 Sample="s1");
# those holding no key=value stay text
# (a key starts and ends with no space, a value starts with none: each run of spaces splits one way; "\s*" beside
# a lazy key that may hold spaces split them many ways, and a 3,000-space comment took 29 s)
_QUOTED_RE = re.compile(r'"(?:\s*([^"=\s](?:[^"=]*[^"=\s])?)\s*=\s*((?:[^"\s][^"]*)?)|[^"]*)"')
_PAIR_RE = re.compile(r'"\s*([^"=\s](?:[^"=]*[^"=\s])?)\s*=\s*((?:[^"\s][^"]*)?)"')  # the same, where every quote is in a pair
# Thermo / mzVault libraries quote only the value: Comments: ColumnType="DB-5, 30 m" SMILES="C=CC(=O)O"
_KEY_QUOTED_RE = re.compile(r'(?:(?<=\s)|^)([A-Za-z_][\w.\-/#]*)\s*=\s*"([^"]*)"')
# MS-DIAL / RIKEN / GNPS-to-MSP conversions write the pairs unquoted: Comment: DB#=X; origin=GNPS. A key: up
# to three words of letters, digits and _#$.-/ ("DB#", "origin", "computed SMILES"), starting with a letter
_PLAIN_KEY_RE = re.compile(r"[A-Za-z][\w#$.\-/]*(?: [\w#$.\-/]+){0,2}")
# a value holding another " key=" is a line of space-separated pairs (NIST: Single Pep=Tryptic Charge=2)
_SPACED_PAIR_RE = re.compile(r"\s[A-Za-z][\w#$.\-/]*=")
# GOLM (GMD) synonyms that carry structure keys: "Synon: METB InChIKey: ..." (see meta.ALIASES)
_GOLM_SYNON_RE = re.compile(r"^(METB InChIKey|METB InChI)\s*:\s*(\S.*)$", re.IGNORECASE)
# the "; KEY: " seams of a NIST "CAS#: 71-43-2;  NIST#: 291514" line
_CAS_LINE_RE = re.compile(r";\s*(?=[A-Za-z][\w#$ ]*:)")
_ERRORS = {code: reason for code, reason in ts.ERROR_REASONS.items()}


def iter_text(path: str, mode: int, *, on_error: str, report: ReadReport, progress: bool | None,
              block_bytes: int = 32 << 20) -> Iterator[Spectra]:
    """Spectra of a MGF/MSP file, one :class:`Spectra` per block of about ``block_bytes``."""
    reader = BlockReader(path, block_bytes, progress, desc=f"reading {path}", salvage=on_error == "skip")
    line0 = 1
    defaults: dict[str, str] = {}
    header = _MgfHeader() if mode == ts.MGF else None  # until the first BEGIN IONS
    header_ignored = 0
    carry: dict = {}  # MSP: the last record's metadata, for a .mat file's MSTYPE block in the next block
    after_peak = False  # MSP: the line before this block is a peak line
    outside = np.array([-1, 0], np.int64)  # MGF: lines outside records, across blocks (ts.E_OUTSIDE)
    for data, final in reader:
        if line0 == 1:
            _check_encoding(path, data)
        r = ts.scan(data, mode, line0, final, outside)
        n_ignored = r.n_ignored
        if header is not None:
            # judged over the whole header (a cut-off record's tail is no header), whatever blocks it
            # spans; no record comes before the first BEGIN IONS, so deciding there is early enough
            m = _MGF_BEGIN_RE.search(data)
            header.feed(data[:m.start()] if m else data[:r.consumed])
            header_ignored += n_ignored
            n_ignored = 0
            if m is not None or final:
                n_global = header.apply(defaults)
                report.warn("global parameters applied", n_global)
                n_ignored = header_ignored - n_global
                header = None
        starts = _line_starts(data)  # found on first use only: the rare records that need lines ask
        follows = _follows_peaks(data, r, line0, after_peak, starts) if mode == ts.MSP else None
        at = _peak_lines(data, r, line0, mode, starts)
        if mode == ts.MSP:
            after_peak = _is_peak_line(_last_line(data, r.consumed)) if r.consumed else after_peak
        line0 += r.consumed_lines
        if r.consumed < len(data):
            reader.give_back(data[r.consumed:])
        report.warn("lines outside records", n_ignored)
        if len(r) == 0:
            continue
        yield _block_spectra(path, r, mode, on_error, report, defaults, carry, follows, at)
    if header is not None:  # no BEGIN IONS at all, and the last block ended with a line end (not final)
        n_global = header.apply(defaults)
        report.warn("global parameters applied", n_global)
        report.warn("lines outside records", header_ignored - n_global)
    if reader.truncated is not None:  # the record the data broke off in (or after), counted
        report.reject(line0, truncated_reason(reader.truncated), path)


_MGF_BEGIN_RE = re.compile(rb"(?im)^(?:\xef\xbb\xbf)?[ \t]*begin ions[ \t\r]*$")


def _clean_line(raw: str) -> str:
    return raw.strip().lstrip("\ufeff").strip()


# a number, then a separator and the start of another: "85.03 100", "+301.1 20", "(85 100)", "[85 100]",
# "85:100", "1e2\t3 \"p=1\"" -- not "(c) Lab X", "...", "13C: 1.1" or key lines. Each digit run has one way to
# match ("\d+\.?\d*" split a run of n digits n ways, and a failed match tried them all: a 20,000-digit line
# took 14 s, a fuzzer found)
_PEAK_LINE_RE = re.compile(r"^[(\[{]?\s*\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[\s,;:]+[+-]?\.?\d")


def _is_peak_line(line) -> bool:
    """A line the scanners read as peaks (``85.03 100``, AMDIS ``(85 100)``, GOLM ``85:100``)."""
    t = line.strip() if isinstance(line, str) else bytes(line).strip().decode("utf-8", "replace")
    return _PEAK_LINE_RE.match(t) is not None


def _last_line(data, end: int) -> bytes:
    """The line ending at byte ``end`` of ``data`` (just before it), without its newline."""
    stop = end - 1 if end > 0 and data[end - 1:end] == b"\n" else end
    start = bytes(data[:stop]).rfind(b"\n") + 1 if stop > 0 else 0
    return bytes(data[start:stop])


def _line_starts(data):
    """``get()``: the byte offset of every line of ``data`` that starts one (int64, 0 first), computed
    on the first call and kept."""
    got = []

    def get() -> np.ndarray:
        if not got:
            nl = np.flatnonzero(np.frombuffer(bytes(data), dtype=np.uint8) == 10)
            got.append(np.concatenate([np.zeros(1, np.int64), nl + 1]))
        return got[0]

    return get


def _follows_peaks(data, r: ts.ScanResult, line0: int, after_peak: bool, starts):
    """``f(j)``: record ``j`` of this block starts on the line right after a peak line (as an ``.mat``
    file's MSTYPE block does; a blank line between means a new entry). Lines are located lazily
    (``starts``, :func:`_line_starts`): only the rare MSTYPE-only records ask."""

    def f(j: int) -> bool:
        k = int(r.rec_line[j]) - line0  # 0-based line of this block where record j starts
        if k == 0:
            return after_peak
        s = starts()
        return _is_peak_line(bytes(data[int(s[k - 1]):int(s[k]) - 1]))

    return f


#: Records up to this size get their rejected peak's line (:func:`_peak_lines`: ~20 rescans of the record;
#: a review: a 1M-peak MGF record took 2 s to place)
_PEAK_LINE_MAX_BYTES = 1 << 22


def _peak_lines(data, r: ts.ScanResult, line0: int, mode: int, starts):
    """``f(i, p)``: the line of peak ``p`` (an index into ``r.mz``) of record ``i`` of this block, for a
    record rejected for a peak value. The scan keeps no line per peak (the hot path): the record's text is
    scanned again, a growing run of its lines at a time (bisected), until the run holds that peak
    (``starts``: :func:`_line_starts`)."""

    def f(i: int, p: int) -> int | None:
        s, first = starts(), int(r.rec_line[i])
        a = int(s[first - line0])
        b = int(s[int(r.rec_line[i + 1]) - line0]) if i + 1 < len(r) else r.consumed
        if b - a > _PEAK_LINE_MAX_BYTES:  # the record's first line rather than seconds of rescans
            return None
        text = bytes(data[a:b])
        if not text.endswith(b"\n"):
            text += b"\n"
        ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10) + 1
        close = b"END IONS\n" if mode == ts.MGF else b""  # (MSP: the end of the text ends the entry)
        k = p - int(r.rec_pk[i])  # the peak's place in its record
        lo, hi = 1, len(ends)  # the fewest lines whose scan holds more than k peaks
        while lo < hi:
            mid = (lo + hi) // 2
            if ts.count_peaks(text[:ends[mid - 1]] + close, mode) > k:
                hi = mid
            else:
                lo = mid + 1
        # (the last line unchecked: a peak the text does not hold, which cannot be, gets no line rather than it)
        if lo == len(ends) and ts.count_peaks(text + close, mode) <= k:
            return None
        return first + lo - 1

    return f


class _MgfHeader:
    """The ``KEY=value`` lines of an MGF file before its first ``BEGIN IONS``, fed block by block.

    The MGF convention (Mascot, and pyteomics' ``use_header``, hence matchms) applies them to each
    record that does not set the key itself. Keys are lower-cased; the first value wins; declared peak
    counts are left out. Key lines followed by peak lines or ``END IONS`` are the tail of a record cut
    off at its start (a file split with ``split -l``, a truncated download), not a header: they stay
    lines outside records, lest one compound's name and SMILES land on every record. Only key lines are
    kept, so a long preamble of comments costs no memory.
    """

    def __init__(self):
        self.pending: list[tuple[str, str]] = []
        self.tail = b""  # an unfinished last line of the text fed so far

    def feed(self, text) -> None:
        text = self.tail + bytes(text)
        lines = text.split(b"\n")
        self.tail = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", errors="replace"))

    def _line(self, raw: str) -> None:
        line = _clean_line(raw)
        if line.lower() == "end ions" or _is_peak_line(line):
            self.pending.clear()  # what came before belongs to a cut-off record
        elif line and line[0] not in "#;!/" and "=" in line:
            key, val = line.split("=", 1)
            key, val = key.strip().lower(), val.strip()
            if key and val and key not in NUM_PEAKS_KEYS:
                self.pending.append((key, val))

    def apply(self, into: dict[str, str]) -> int:
        """Put the header's values into ``into`` (defaults for every record); returns how many."""
        if self.tail:
            self._line(self.tail.decode("utf-8", errors="replace"))
            self.tail = b""
        for key, val in self.pending:
            cur = into.get(key)
            # the first value wins, but a missing marker ("N/A") yields to a later real one, as in records
            if cur is None or (_is_marker(cur) and not _is_marker(val)):
                into[key] = val
        return len(self.pending)


def _is_marker(value: str) -> bool:
    """A missing marker, by :func:`fastspec.io.meta.missing_marker`'s rule (``-`` a value)."""
    return bool(missing_marker(pa.array([value.strip()], pa.string()), signs=True)[0].as_py())


def mgf_global_params(text: bytes, into: dict[str, str]) -> int:
    """Read the global parameters of ``text`` (lines of an MGF file before its first ``BEGIN IONS``)
    into ``into``; returns how many lines were taken (see :class:`_MgfHeader`)."""
    h = _MgfHeader()
    h.feed(text)
    return h.apply(into)


def _check_encoding(path: str, data) -> None:
    """Refuse UTF-16/32 text (Windows "Unicode" exports): read byte-wise it holds no record at all."""
    head = bytes(data[:4096])
    wide = head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 16 and head.count(0) * 4 >= len(head))
    if wide:
        raise ParseError("text encoded as UTF-16 or UTF-32 (or not text at all); save it as UTF-8", path, 1)
    if b"\n" not in head and head.count(b"\r") >= 2:  # read by \n, the whole file would be one line
        raise ParseError("lines end in CR only (classic Mac OS); convert the file to LF or CRLF line endings",
                         path, 1)


def _block_spectra(path: str, r: ts.ScanResult, mode: int, on_error: str, report: ReadReport,
                   defaults: dict[str, str] | None = None, carry: dict | None = None,
                   follows_peaks=None, peak_line=None) -> Spectra:
    n = len(r)
    meta = _meta_table(r.keys, r.values, r.rec_meta, mode, carry, follows_peaks or (lambda j: False))
    # global parameters fill what a record leaves unset (CHARGE last: it yields to a PEPMASS charge, the
    # record's own or a global one)
    for key, val in sorted((defaults or {}).items(), key=lambda kv: kv[0] == "charge"):
        fill = pa.repeat(pa.scalar(val, pa.string()), n)
        if key == "charge" and "pepmass" in meta.column_names:
            # a record's own PEPMASS charge ("PEPMASS=300.1 1234 3+") is set, not left to the global one
            third = pepmass_value(pepmass_parts(meta.column("pepmass")), 2)
            own = pc.fill_null(pc.match_substring_regex(third, r"^[+-]?0*[1-9][0-9]*[+-]?$"), False)
            fill = pc.if_else(own, pa.scalar(None, pa.string()), fill)
        if key in meta.column_names:
            i = meta.column_names.index(key)
            col = meta.column(i).combine_chunks()
            meta = meta.set_column(i, key, pc.coalesce(col, fill.cast(col.type)))
        else:
            meta = meta.append_column(key, fill)
    n_peaks = np.diff(r.rec_pk)
    # declared peak counts: trust the peaks, count the disagreement
    declared = [c for c in meta.column_names if c in NUM_PEAKS_KEYS]
    if declared:
        col = pc.coalesce(*[meta.column(c) for c in declared])
        dec = pc.cast(pc.utf8_trim_whitespace(col), pa.float64(), safe=False) if _all_numeric(col) else None
        if dec is None:
            dec = pa.array([_to_num(v) for v in col.to_pylist()], pa.float64())
        d = dec.to_numpy(zero_copy_only=False)
        ok = ~np.isnan(d)
        parse_ok = r.rec_err == 0
        report.warn("num_peaks mismatch", int(np.count_nonzero(ok & parse_ok & (d != n_peaks))))
        # a count written but no number ("abc"; an empty value or "NA" says there is none)
        given = pc.and_(pc.is_valid(col), pc.invert(missing_marker(pc.utf8_trim_whitespace(col))))
        given = given.to_numpy(zero_copy_only=False)
        report.warn("num_peaks unreadable", int(np.count_nonzero(given & ~ok & parse_ok)))
        meta = meta.drop_columns(declared)
    errors = None
    if r.rec_err.any():
        errors = np.full(n, None, dtype=object)
        for i in np.flatnonzero(r.rec_err):
            errors[i] = _ERRORS.get(int(r.rec_err[i]), "unparsable record")
    lines = np.where(r.rec_err != 0, r.rec_err_line, r.rec_line)
    return finish_block(report, path, lines, errors, r.rec_pk, r.mz, r.intensity, meta, on_error, text=True,
                        peak_line=peak_line)


def _all_numeric(col) -> bool:
    try:
        pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _to_num(v) -> float:
    try:
        return float(str(v).strip())
    except (TypeError, ValueError):
        return float("nan")


def _empty_rows(n: int) -> pa.Table:
    return pa.table({"_": pa.nulls(n)}).drop_columns(["_"])


_SUBTAG_RE = r"^(?P<sub>[A-Za-z][A-Za-z0-9_/]*):[ \t]*(?P<v>.*)$"


def _massbank_subtags(keys: pa.Array, vals: pa.Array) -> tuple[pa.Array, pa.Array]:
    """MassBank tags written as MSP keys with their subtag, as matchms' ``save_as_msp(style="massbank")``
    writes them (``MS$FOCUSED_ION:PRECURSOR_M/Z: 179.0349``, split at the first colon): the key takes the
    subtag (``ms$focused_ion:precursor_m/z``), the name the MassBank reader gives it."""
    from fastspec.io.massbank import SUBTAG_TAGS  # (only MassBank's tags that take subtags: CH$NAME: Tris: ...
    # is a name)

    tagged = pc.and_(pc.is_in(keys, value_set=pa.array(sorted(t.lower() for t in SUBTAG_TAGS))),
                     pc.match_substring_regex(vals, _SUBTAG_RE))
    if not pc.any(tagged).as_py():
        return keys, vals
    parts = pc.extract_regex(vals, _SUBTAG_RE)
    sub = pc.utf8_lower(pc.struct_field(parts, [0]))
    keys = pc.if_else(tagged, pc.binary_join_element_wise(keys, sub, ":"), keys)
    vals = pc.if_else(tagged, pc.struct_field(parts, [1]), vals)
    return keys, vals


def _meta_table(keys: pa.Array, vals: pa.Array, rec_meta: np.ndarray, mode: int,
                carry: dict | None = None, follows_peaks=lambda j: False) -> pa.Table:
    """One row per record, one string column per raw (lower-cased) key; first value wins (an empty value or
    a missing marker only when the record has no other).

    MSP: values taken from ``Synon:``/``Comments:`` (and the ``NIST#`` of a ``CAS#: ...; NIST#: ...``
    line) fill only what no explicit ``Key: value`` line of the record gives under the same harmonised
    key (judged per record); a record that holds nothing but an ``MSTYPE:`` line and peaks right after
    another record's peaks (an MS-FINDER/MS-DIAL ``.mat`` file's second block) takes the metadata of
    the record before it, from the previous block through ``carry`` (updated in place). ``MSTYPE`` and
    ``Num Peaks`` take the last value of a record, the rest the first.
    """
    n = rec_meta.shape[0] - 1
    if len(keys) == 0:
        return _empty_rows(n)
    rec = np.repeat(np.arange(n, dtype=np.int64), np.diff(rec_meta))
    lists: dict[str, tuple[np.ndarray, list]] = {}
    if mode == ts.MSP:
        keys, vals = _massbank_subtags(keys, vals)
        special = pc.is_in(keys, value_set=pa.array(["synon", "comments", "comment", "synonym", "cas#"]))
        if pc.any(special).as_py():
            sp = np.asarray(special.to_numpy(zero_copy_only=False), dtype=bool)
            sp_idx = np.flatnonzero(sp)
            ek, ev, er, syn_r, syn_v = _msp_special(keys.take(pa.array(sp_idx)).to_pylist(),
                                                    vals.take(pa.array(sp_idx)).to_pylist(), rec[sp_idx])
            keep = pa.array(~sp)
            keys = pa.concat_arrays([keys.filter(keep), pa.array(ek, pa.string())])
            vals = pa.concat_arrays([vals.filter(keep), pa.array(ev, pa.string())])
            rec = np.concatenate([rec[~sp], np.asarray(er, dtype=np.int64)])
            # back to record order (stable: within a record the explicit lines, which come first here,
            # win over values taken from Comments), so "first value wins" below sees each record's
            # values together whatever the records around it
            o = pa.array(np.argsort(rec, kind="stable"))
            keys, vals, rec = keys.take(o), vals.take(o), rec[o.to_numpy()]
            if syn_r:
                lists["synonyms"] = (np.asarray(syn_r, dtype=np.int64), syn_v)
    cols: dict[str, pa.Array] = {}
    if len(keys):
        enc = pc.dictionary_encode(keys)
        names = enc.dictionary.to_pylist()
        gid = enc.indices.to_numpy(zero_copy_only=False)
        if len(names) < 2**15:
            gid = gid.astype(np.int16)  # numpy's stable sort is a radix sort for 16-bit keys
        order = np.argsort(gid, kind="stable")
        bounds = np.searchsorted(gid[order], np.arange(len(names) + 1))
        for g, name in enumerate(names):
            if not name:
                continue
            pos = order[bounds[g]:bounds[g + 1]]
            last = name in _LAST_WINS
            r = rec[pos]  # non-decreasing: lines are in file order
            if r.shape[0] > 1 and (r[1:] == r[:-1]).any():
                # an empty value or a missing marker ("N/A") never hides another of the key in the record (a
                # converter writing "MSLEVEL: " then "MSLEVEL=2", "PEPMASS=" then "PEPMASS=200.5"): within a
                # record, blank values go first (last wins) or last (first wins)
                b = np.asarray(missing_marker(pc.utf8_trim_whitespace(vals.take(pa.array(pos))), signs=True)
                               .to_numpy(zero_copy_only=False), dtype=bool)
                if b.any():
                    pos = pos[np.lexsort((~b if last else b, r))]
                    r = rec[pos]
            pick = np.ones(r.shape[0], dtype=bool)
            if last:  # an .mat MS1 block without peaks is one record with the MS2 block
                pick[:-1] = r[:-1] != r[1:]
            else:
                pick[1:] = r[1:] != r[:-1]
            idx = np.full(n, -1, dtype=np.int64)
            idx[r[pick]] = pos[pick]
            cols[name] = vals.take(pa.array(idx, mask=idx < 0))
    for name, (r_, v_) in lists.items():
        order = np.argsort(r_, kind="stable")
        counts = np.bincount(r_, minlength=n)
        offs = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offs[1:])
        values = pa.array([v_[i] for i in order], pa.string())
        cols[name] = pa.ListArray.from_arrays(pa.array(offs), values, mask=pa.array(counts == 0))
    if mode == ts.MSP:
        _explicit_first(cols)
        if cols:
            _inherit_mstype_blocks(cols, n, carry, follows_peaks)
    if not cols:
        return _empty_rows(n)
    return pa.table(cols)


#: key prefix of values taken from Synon / Comments (resolved per record by :func:`_explicit_first`)
_DERIVED = "\x00"
_MSTYPE_KEYS = ("mstype", "ms_type")
_LAST_WINS = frozenset(_MSTYPE_KEYS) | frozenset(NUM_PEAKS_KEYS)


def _present(col: pa.Array, signs: bool = False) -> pa.Array:
    """bool per row: a value that is not null and not a missing marker (``N/A``, ``""``...; ``signs``:
    ``-`` is a value, as in a polarity field)."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return col.is_valid()  # e.g. the synonyms list column
    marker = missing_marker(pc.utf8_trim_whitespace(col), signs)  # false (not null) for a null
    return pc.and_(col.is_valid(), pc.invert(marker))


def _explicit_first(cols: dict) -> None:
    """Resolve the values taken from Synon/Comments (columns named ``_DERIVED + key``) record by
    record: each fills only rows where no explicit line of that record gives the same harmonised key.
    ``Synon: $:04 0`` (a placeholder) must not beat ``PrecursorMZ: 301.14``, whose alias ranks lower
    than the canonical name the synonym code maps to."""
    explicit = [c for c in cols if not c.startswith(_DERIVED)]  # derived values never block each other
    for d in [c for c in cols if c.startswith(_DERIVED)]:
        col = cols.pop(d)
        key = d[len(_DERIVED):]
        canon = key_info(key)[0]
        peers = [c for c in explicit if key_info(c)[0] == canon]
        if peers:
            given = _present(cols[peers[0]], canon == "ion_mode")
            for c in peers[1:]:
                given = pc.or_(given, _present(cols[c], canon == "ion_mode"))
            if pc.any(given).as_py():
                col = pc.if_else(given, pa.scalar(None, col.type), col)
        if key == "synonyms":  # Comments "synonyms=bar": a one-item list, like the Synon lines' column
            col = pa.array([None if v is None else [v] for v in col.to_pylist()], pa.list_(pa.string()))
        if key in explicit:  # the same raw key written explicitly: its value where it has one
            cols[key] = pc.if_else(_present(cols[key], canon == "ion_mode"), cols[key], col)
        else:
            cols[key] = col


def _inherit_mstype_blocks(cols: dict, n: int, carry: dict | None, follows_peaks) -> None:
    """MS-FINDER / MS-DIAL ``.mat`` (and RAMClustR's export): one compound's metadata, then
    ``MSTYPE: MS1`` + peaks, then right after them (no blank line) ``MSTYPE: MS2`` + peaks, which the
    MSP scanner reads as two records. Such a record with nothing but ``MSTYPE`` (and a peak count)
    takes the metadata of the record before it; ``follows_peaks(j)`` says whether record ``j`` starts
    on the line after a peak line. ``carry`` holds the last record's metadata (pyarrow scalars) for
    the next block, updated in place."""
    ms = [cols[c] for c in _MSTYPE_KEYS if c in cols]
    if ms:
        own = [c for c in cols if c not in _MSTYPE_KEYS and c not in NUM_PEAKS_KEYS]
        has_type = ms[0].is_valid() if len(ms) == 1 else pc.or_(ms[0].is_valid(), ms[1].is_valid())
        bare = np.asarray(has_type.to_numpy(zero_copy_only=False), dtype=bool)
        for c in own:
            bare &= ~np.asarray(cols[c].is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        idx = [j for j in np.flatnonzero(bare).tolist() if follows_peaks(j)]
        if idx:
            src = np.arange(n, dtype=np.int64)
            for j in idx:  # in order: a run of such blocks all take the run's first record
                src[j] = src[j - 1] if j > 0 else -1
            for c in own:
                cols[c] = cols[c].take(pa.array(src, mask=src < 0))
            first = src < 0
            if carry and first.any():  # the compound's record ended the previous block
                for c, v in carry.items():
                    col = cols.get(c, pa.nulls(n, v.type))
                    cols[c] = pc.if_else(pa.array(first), v, col)
    if carry is not None:
        carry.clear()
        last = n - 1
        carry.update({c: cols[c][last] for c in cols
                      if c not in _MSTYPE_KEYS and c not in NUM_PEAKS_KEYS and cols[c][last].is_valid})


def _msp_special(keys: list, vals: list, recs: np.ndarray):
    """MSP ``Synon:`` (plain synonyms or NIST ``$:NN`` codes) and ``Comments:`` key=value blobs."""
    ek, ev, er = [], [], []
    syn_r, syn_v = [], []
    for k, v, r in zip(keys, vals, recs.tolist()):
        if v is None:
            continue
        if k == "cas#":  # NIST: "CAS#: 71-43-2;  NIST#: 291514" -- two keys on one line
            parts = _CAS_LINE_RE.split(v)
            ek.append("cas#")
            ev.append(parts[0].strip())
            er.append(r)
            for part in parts[1:]:
                pk, _, pv = part.partition(":")
                ek.append(pk.strip().lower())
                ev.append(pv.strip())
                er.append(r)
            continue
        if k in ("synon", "synonym"):
            if v.startswith("$:") and len(v) >= 4:
                code = v[2:4]
                ek.append(_DERIVED + NIST_SYNON_CODES.get(code, f"nist_synon_{code}"))
                ev.append(v[4:].strip())
                er.append(r)
            elif v:
                m = _GOLM_SYNON_RE.match(v)
                if m:
                    ek.append(_DERIVED + "synon: " + m.group(1).lower())
                    ev.append(m.group(2).strip())
                    er.append(r)
                    continue
                syn_r.append(r)
                syn_v.append(v)
            continue
        # MoNA quotes whole pairs ("SMILES=C=CC(=O)O"), Thermo only values (SMILES="C=CC(=O)O"): the
        # line's start says which (MoNA's pattern reads Thermo's quotes as empty values)
        if _KEY_QUOTED_RE.match(v.lstrip()):
            pairs = _KEY_QUOTED_RE.findall(v)
            rest = _KEY_QUOTED_RE.sub(" ", v).strip()
        else:
            pairs, rest = _quoted_pairs(v)
        if not pairs:  # MS-DIAL writes them unquoted: "DB#=X; origin=GNPS"
            pairs, rest = _plain_pairs(v)
        for pk, pv in pairs:
            ek.append(_DERIVED + pk.strip().lower())
            ev.append(pv.strip())
            er.append(r)
        if rest or not pairs:
            ek.append("comment")
            ev.append(rest)
            er.append(r)
    return ek, ev, er, syn_r, syn_v


def _quoted_pairs(text: str) -> tuple[list[tuple[str, str]], str]:
    """MoNA's quoted ``"key=value"`` pairs of a ``Comments:`` line and the text left around them (quoted
    strings holding no ``=`` included, quotes and all)."""
    pairs = _PAIR_RE.findall(text)
    n_quotes = text.count('"')
    # every quote in a pair: none was taken for another's; an odd count (a stray inch mark) cannot be
    # read left to right either, and the pairs found around it are the best reading
    if pairs and (n_quotes == 2 * len(pairs) or n_quotes % 2):
        return pairs, _PAIR_RE.sub(" ", text).strip()
    found = _QUOTED_RE.findall(text)
    pairs = [(k, v) for k, v in found if k]
    if not pairs:
        return pairs, text
    rest = _QUOTED_RE.sub(lambda m: " " if m.group(1) else m.group(0), text)
    return pairs, " ".join(rest.split())


def _plain_pairs(text: str) -> tuple[list[tuple[str, str]], str]:
    """The ``key=value`` pairs of an unquoted ``Comment: DB#=X; origin=GNPS`` (MS-DIAL) and the free text
    left: none unless every ``;``-separated part is one with a plausible key (:data:`_PLAIN_KEY_RE`) and
    a value holding no further `` key=``, so that free text holding ``=`` or ``;`` stays a comment.
    After a leading ``DB#=`` pair (MassBank's RIKEN-style export: ``DB#=MSBNK-...; origin=MassBank;
    Annotation ...``) free-text parts are allowed and are the text left."""
    if "=" not in text:
        return [], text
    pairs, free = [], []
    for part in text.split(";"):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or not _PLAIN_KEY_RE.fullmatch(key) or _SPACED_PAIR_RE.search(val):
            if not part.strip():
                continue  # "origin=GNPS;": nothing after the last ';'
            if not pairs or pairs[0][0].upper() != "DB#":
                return [], text  # free text, not pairs
            free.append(part.strip())
            continue
        pairs.append((key, val))
    return pairs, "; ".join(free)


# ---------------------------------------------------------------------------- writing
def string_column(col) -> pa.Array:
    """A metadata column as single-line strings for text formats (lists joined with ``"; "``)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        try:
            col = pc.binary_join(col.cast(pa.list_(pa.string())), "; ")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pa.array([None if v is None else "; ".join(map(str, v)) for v in col.to_pylist()], pa.string())
    elif pa.types.is_floating(t):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, t), col).cast(pa.string())
    elif pa.types.is_null(t):
        col = col.cast(pa.string())
    else:
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            import json

            col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
    # one value per line: fold line breaks
    return pc.replace_substring_regex(col, r"[\r\n]+", " ")


def peak_blocks(spectra: Spectra, sep: str) -> pa.Array:
    """One string per spectrum: its peaks as ``mz<sep>intensity`` lines joined by newlines.

    Numbers are written in their shortest round-trip form (float64 m/z, float32 intensity).
    """
    mz_s = pa.array(spectra.mz, pa.float64()).cast(pa.string())
    in_s = pa.array(spectra.intensity, pa.float32()).cast(pa.string())
    lines = pc.binary_join_element_wise(mz_s, in_s, sep)
    off = spectra.offsets
    off_arr = pa.array(off.astype(np.int32)) if off[-1] < 2**31 - 1 else pa.array(off)
    lst = (pa.ListArray if off_arr.type == pa.int32() else pa.LargeListArray).from_arrays(off_arr, lines)
    return pc.binary_join(lst, "\n")


def header_lines(fields: list[tuple[str, pa.Array]], kv_sep: str) -> pa.Array:
    """Per row, ``label<kv_sep>value\\n`` for every field whose value is not null, concatenated."""
    pieces = []
    for label, vals in fields:
        piece = pc.binary_join_element_wise(pa.scalar(label + kv_sep), vals, pa.scalar("\n"), "")
        pieces.append(pc.fill_null(piece, ""))
    if not pieces:
        return None
    return pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]


#: spectra formatted at a time by :func:`write_text_records`: all 2.4M of a NIST-sized library at once
#: held ~8 GB of record strings
WRITE_CHUNK = 50_000


def write_text_records(path: str, spectra: Spectra, records, chunk: int | None = None, batch: int = 20_000) -> None:
    """Write ``spectra`` to ``path`` (gzip for ``.gz``) as text records, ``chunk`` spectra at a time.

    ``records(part, start)`` formats the spectra ``part`` (rows ``start`` on of ``spectra``) as a string
    array, one record per spectrum (``chunk``: default :data:`WRITE_CHUNK`); a record depends only on its
    own spectrum, so the file is the same whatever the chunk size, and memory stays that of one chunk's
    strings.
    """
    from fastspec.io._common import text_sink

    chunk = chunk or WRITE_CHUNK
    with text_sink(path) as fh:
        for start in range(0, len(spectra), chunk):
            part = spectra.take(np.arange(start, min(start + chunk, len(spectra)), dtype=np.int64))
            recs = records(part, start)
            for b in range(0, len(recs), batch):
                fh.write("".join(recs.slice(b, batch).to_pylist()))
