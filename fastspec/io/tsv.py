"""MassSpecGym-style TSV: one spectrum per row, peaks as comma-joined ``mzs`` and ``intensities``.

Columns of the MassSpecGym release: ``identifier, mzs, intensities, smiles, inchikey, formula,
precursor_formula, parent_mass, precursor_mz, adduct, instrument_type, collision_energy, fold,
simulation_challenge`` (``identifier`` -> ``id``; MassSpecGym's ``inchikey`` holds only the first
block, which also fills ``inchikey14``). Every column is read as text and harmonised like MGF
metadata. Values (and header names) written inside double quotes, as R's ``write.table`` and
Python's ``csv.QUOTE_ALL`` write them, lose the quotes (``""`` inside becomes ``"``). Rows with a
wrong number of fields, unparsable numbers or m/z and intensity lists of different lengths are
bad records. Line numbers are the file's own, the header's line 1 when it is first (blank
lines, which are skipped, are counted).
"""
from __future__ import annotations

import collections
import gzip
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.errors import FastspecError, ParseError
from fastspec.io._common import ReadReport, read_pieces
from fastspec.io._tables import find_peak_columns, table_spectra
from fastspec.spectra import Spectra

REASON_FIELDS = "wrong number of fields"


def _header(first: bytes, path: str) -> list[str]:
    """Column names of the header line ``first`` (b"" for a file without one)."""
    if not first:
        raise FastspecError(f"{path}: empty file (no header line)")
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    if b"\r" in first.rstrip(b"\r\n"):  # the header read up to a \n holds more lines: pyarrow splits at \r too,
        # and the rows would not line up with the header's names (a fuzzer: a ValueError escaped)
        raise ParseError("lines end in CR only (classic Mac OS); convert the file to LF or CRLF line endings",
                         path, 1)
    names = first.decode("utf-8", "replace").rstrip("\r\n").split("\t")
    return [n.strip() for n in names]


def header_names(path: str) -> list[str]:
    """Column names of a TSV file's header (unquoted), read from the file's first non-blank line."""
    text = _CleanUtf8(path)
    try:
        return [_unquote_name(n) for n in _header(text.header(), path)]
    except EOFError as e:
        raise FastspecError(f"{path}: cannot read: {e}") from e
    finally:
        text.close()


def _unquote_name(name: str) -> str:
    """``"mzs"`` -> ``mzs`` (R's write.table and csv.QUOTE_ALL quote the header too)."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"').strip()
    return name


def _unquote(col: pa.Array) -> pa.Array:
    """Values written inside double quotes (``"1.5,2"``; ``""`` inside is one ``"``) without them.

    Quoting is not given to the CSV parser: one stray ``"`` at the start of a value would make
    it swallow the following fields and rows. Values not both starting and ending with ``"``
    are kept as they are."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    quoted = pc.and_(pc.and_(pc.starts_with(col, '"'), pc.ends_with(col, '"')),
                     pc.greater_equal(pc.utf8_length(col), 2))
    if not pc.any(quoted).as_py():
        return col
    inner = pc.replace_substring(pc.utf8_slice_codeunits(col, 1, -1), '""', '"')
    return pc.if_else(quoted, inner, col)


class _CleanUtf8:
    """Binary reader (gzip-aware) that replaces invalid UTF-8 by U+FFFD, block by block, so that
    pyarrow's CSV parser (and its bad-row handler) always sees valid text."""

    def __init__(self, path: str):
        import codecs

        from fastspec.io._common import open_binary

        self._f, _ = open_binary(path)
        self._gz = isinstance(self._f, gzip.GzipFile)
        self._tail = b""  # gzip: the line the last read ended in, handed on with the next
        self._decoded = 0
        #: why a gzip stream broke off (a truncated or corrupt file), after the complete lines before it
        self.cut: str | None = None
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ahead = b""  # what header() read, given back by read(): a pipe can be read only once
        self.closed = False
        # Empty lines, which pyarrow skips without counting them in its row numbers, so that rows are reported
        # on the file's lines (:meth:`file_lines`): the j-th (from 0) on file line e_j is kept as the key
        # e_j - j, the pyarrow number of the line after it, in a buffer grown by doubling (pyarrow calls
        # read() from a thread of its own: the count is set after the keys, and read before them)
        self._keys = np.zeros(64, dtype=np.int64)
        self._n_empty = 0
        self._lines = 0  # line breaks in the text returned so far
        self._offset = 0  # its length
        self._last_nl = -1  # the position of its last line break (-1: the file's start ends no line)
        self._last_byte = 10  # its last byte

    def header(self) -> bytes:
        """The first non-blank line (b"" if none); the lines up to it are still read by :meth:`read`."""
        while True:
            line = self._f.readline()
            text = line[3:] if self._lines == 0 and line.startswith(b"\xef\xbb\xbf") else line
            if line and not text.strip():
                # a blank line before the header is left out of what pyarrow reads, which would take a
                # whitespace-only (or BOM-only) line as its header; counted as an empty line
                self._lines += 1
                self._add_empty(np.array([self._lines], dtype=np.int64))
                continue
            self._ahead += line
            self._decoded += len(line)  # (a gzip stream breaking off after this is data cut, not "not gzip")
            return line

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else -1
        raw, self._ahead = self._ahead, b""
        if want < 0:
            raw += self._fill(-1)
        elif len(raw) < want:
            raw += self._fill(want - len(raw))
        elif len(raw) > want:  # (the parser asks for whole blocks: not expected)
            raw, self._ahead = raw[:want], raw[want:]
        out = self._dec.decode(raw, final=not raw).encode("utf-8")
        self._track(out)
        return out

    def _fill(self, k: int) -> bytes:
        """About ``k`` more bytes of the file (all with -1). A gzip stream is handed on in whole lines, so
        that where it breaks off (a truncated download, a failed CRC check) the line it breaks off in is
        dropped, not parsed as a row with fewer peaks or a shortened value; :attr:`cut` then says why and
        the reading ends there (:func:`iter_spectra` counts the break as one rejected record)."""
        if not self._gz:
            return self._f.read() if k < 0 else self._f.read(k)
        if self.cut is not None:
            return b""
        got, self._tail = [self._tail], b""
        n, end = len(got[0]), False
        while not end and (k < 0 or n < k or b"\n" not in got[-1]):
            b, err = read_pieces(self._f, 1 << 20 if k < 0 else max(1 << 16, k - n))
            if err is not None:
                if not (self._decoded or n or b):  # not gzip data at all: an error as before
                    raise err
                self.cut = str(err) or type(err).__name__
                data = b"".join(got) + b
                return data[:data.rfind(b"\n") + 1]
            end = not b
            got.append(b)
            n += len(b)
            self._decoded += len(b)
        data = b"".join(got)
        if end:
            return data
        keep = data.rfind(b"\n") + 1
        self._tail = data[keep:]
        return data[:keep]

    def _track(self, data: bytes) -> None:
        """Note the empty lines (``\\n`` or ``\\r\\n`` alone) of the next ``data``: vectorised, ~40 ms per 77 MB,
        where a regex took 1.5 s."""
        if not data:
            return
        a = np.frombuffer(data, dtype=np.uint8)
        nl = np.flatnonzero(a == 10)
        if nl.shape[0]:
            ends = nl + self._offset  # positions of the line breaks in the whole text
            content = np.diff(ends, prepend=self._last_nl) - 1  # bytes between a break and the one before
            before = np.where(nl > 0, a[np.maximum(nl - 1, 0)], self._last_byte)
            empty = np.flatnonzero((content == 0) | ((content == 1) & (before == 13)))
            if empty.shape[0]:
                self._add_empty(self._lines + empty + 1)
            self._lines += int(nl.shape[0])
            self._last_nl = int(ends[-1])
        self._offset += a.shape[0]
        self._last_byte = int(a[-1])

    @property
    def lines_read(self) -> int:
        """Line breaks in the text handed on so far (the file's complete lines, blank ones included)."""
        return self._lines

    def _add_empty(self, numbers: np.ndarray) -> None:
        """Record empty lines on these file lines (increasing, after those recorded)."""
        n, k = self._n_empty, numbers.shape[0]
        keys = self._keys
        if n + k > keys.shape[0]:
            keys = np.zeros(max(2 * keys.shape[0], n + k), dtype=np.int64)
            keys[:n] = self._keys[:n]
        keys[n:n + k] = numbers - np.arange(n, n + k, dtype=np.int64)
        self._keys = keys
        self._n_empty = n + k  # after the keys: a reader taking this count finds them in place

    def empty_lines(self) -> np.ndarray:
        """File line numbers of the empty lines read so far, int64."""
        n = self._n_empty
        return self._keys[:n] + np.arange(n, dtype=np.int64)

    def file_lines(self, lines):
        """The file's line numbers of lines numbered as pyarrow numbers them (empty lines left out), for
        lines of text already read; an int or None gives an int or None, an array an int64 array."""
        if lines is None:
            return None
        n = self._n_empty  # (before the keys: see __init__)
        shift = np.searchsorted(self._keys[:n], np.asarray(lines), side="right")
        out = np.asarray(lines, dtype=np.int64) + shift
        return int(out) if np.ndim(out) == 0 else out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._f.close()
        self.closed = True


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """Spectra of a TSV file, in batches (about ``chunk_size`` rows when given)."""
    import pyarrow.csv as pcsv

    # one stream for the header and the rows: a pipe (/dev/stdin, <(...)) cannot be opened twice
    text = _CleanUtf8(path)
    try:
        try:
            raw_names = _header(text.header(), path)
        except (OSError, EOFError) as e:
            raise FastspecError(f"{path}: cannot read: {e}") from e
        names = [_unquote_name(n) for n in raw_names]
        mz_name, in_name = find_peak_columns(names, path)
        if len(set(names)) != len(names):
            raise FastspecError(f"{path}: repeated column names in the header")
    except BaseException:
        text.close()
        raise
    # pyarrow reports rows that do not split from a thread of its own, also while this one works on a batch:
    # they arrive in a deque (appends are atomic) and are moved to ``invalid``, which only this thread
    # touches, before each batch (a slice written back to a shared list lost rows appended meanwhile)
    arrived: collections.deque = collections.deque()
    invalid: list[tuple[int | None, str]] = []

    def on_invalid(row) -> str:
        arrived.append((row.number, REASON_FIELDS))
        return "skip"

    def drain() -> None:
        while arrived:
            invalid.append(arrived.popleft())

    # a row must fit in a block or so (pyarrow: "straddling object straddles two block boundaries"): at
    # least 16 MB, as a whole-file read has, also for small chunks (a 20,000-peak row, ~310 kB, was refused by
    # iter_read(chunk_size=100) and read by read(): a fuzzer); blocks are handed on chunk_size rows at a time
    block = _block_size(chunk_size)
    ropts = pcsv.ReadOptions(use_threads=False, block_size=block)
    popts = pcsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=on_invalid)
    copts = pcsv.ConvertOptions(column_types={n: pa.string() for n in raw_names}, strings_can_be_null=False,
                                quoted_strings_can_be_null=False)
    stream = pa.PythonFile(text, mode="r")
    try:
        reader = pcsv.open_csv(stream, read_options=ropts, parse_options=popts, convert_options=copts)
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        stream.close()
        if "straddl" in str(e):
            raise _too_long(e, path, block) from e
        raise FastspecError(f"{path}: not a readable TSV file: {e}") from e
    # Rows that do not split into the header's fields are reported by pyarrow while it parses a block,
    # ahead of the rows before them: each is counted once the rows before it are, at its place among the
    # records (record = rows and rejected rows on earlier lines), so that a hit table's rejected rows stay
    # where they are in the file whatever the block size.
    next_line = 2
    n_rows = 0  # rows pyarrow returned so far (records, whether their peaks pass or not)
    placed = 0  # invalid rows counted so far, in line order
    n_seen = 0  # invalid rows whose line numbers are in bad_nums
    bad_nums: list[int] = []
    try:
        for batch in _batches(reader, path, block):
            drain()
            t = pa.Table.from_batches([batch])
            if t.num_rows == 0:
                continue
            t = pa.table([_unquote(c) for c in t.columns], names=names)
            bad_nums.extend(n for n, _ in invalid[n_seen:] if n is not None)
            n_seen = len(invalid)
            bad_lines = np.sort(np.asarray(bad_nums, dtype=np.int64))
            # handed on chunk_size rows at a time: a block holds at least MIN_BLOCK bytes of text, which a
            # chunked search (search_to_file, a cluster's runs) would otherwise take as one run of queries
            step = t.num_rows if chunk_size is None else max(1, int(chunk_size))
            for first in range(0, t.num_rows, step):
                piece = t.slice(first, step)
                lines = _row_lines(next_line, piece.num_rows, bad_lines)
                next_line = int(lines[-1]) + 1
                at = text.file_lines(lines)  # (lines, like pyarrow's row numbers, leave empty lines out)
                if on_error == "raise":
                    _raise_first_invalid(invalid, int(lines[-1]), piece, path, mz_name, in_name, at, text.file_lines)
                records = n_rows + np.arange(piece.num_rows, dtype=np.int64) + np.searchsorted(bad_lines, lines)
                placed = _count_invalid(invalid, placed, int(lines[-1]), lines, n_rows, report, path,
                                        text.file_lines)
                sp = table_spectra(piece, path, mz_name, in_name, 0, on_error, report, text=True, lines=at,
                                   records=records)
                n_rows += piece.num_rows
                yield sp
        drain()
        if on_error == "raise":
            _raise_first_invalid(invalid, None, None, path, mz_name, in_name, None, text.file_lines)
        _count_invalid(invalid, placed, None, np.zeros(0, np.int64), n_rows, report, path, text.file_lines)
        if text.cut is not None:  # the rows before the break are read; the one it falls in is lost
            from fastspec.io._common import truncated_reason

            if on_error == "raise":
                raise ParseError(truncated_reason(text.cut), path, text.lines_read + 1)
            report.reject(text.lines_read + 1, truncated_reason(text.cut), path)
    finally:
        stream.close()


def _raise_first_invalid(invalid: list, below: int | None, t, path: str, mz_name: str, in_name: str, lines,
                         file_lines) -> None:
    """on_error="raise": a ParseError for the first invalid row before line ``below`` (any, when None)
    unless a row of the batch ``t`` on an earlier line has bad peaks (its error is then raised as the
    batch is read). ``below`` and ``invalid`` number lines as pyarrow does, ``lines`` (the batch's rows) as
    the file does (``file_lines`` maps the first to the second)."""
    first = next(((ln, why) for ln, why in invalid if ln is None or below is None or ln < below), None)
    if first is None:
        return
    first = (file_lines(first[0]), first[1])
    if t is not None and first[0] is not None:
        from fastspec.io._common import ReadReport

        scratch = ReadReport(path=path)  # the batch's own bad rows, without counting them anywhere
        table_spectra(t, path, mz_name, in_name, 0, "skip", scratch, text=True, lines=lines)
        if scratch.rejected and min(r.line for r in scratch.rejected) < first[0]:
            return
    raise ParseError(first[1], path, first[0])


def _count_invalid(invalid: list, placed: int, below: int | None, lines: np.ndarray, n_rows: int, report,
                   path: str, file_lines) -> int:
    """Count the invalid rows on lines before ``below`` (all when None) not yet counted, each at its
    record position: ``n_rows`` rows of earlier batches, this batch's ``lines`` before it, and the invalid
    rows on earlier lines; reported on the file's line (lines here are numbered as pyarrow numbers them,
    ``file_lines`` maps them). Returns how many invalid rows are counted now."""
    invalid[placed:] = sorted(invalid[placed:], key=lambda x: (x[0] is None, x[0] or 0))  # the uncounted only
    for j in range(placed, len(invalid)):
        line, why = invalid[j]
        if below is not None and (line is None or line >= below):
            return j
        record = None if line is None else n_rows + int(np.searchsorted(lines, line)) + j
        report.reject(file_lines(line), why, path, record=record)
    return len(invalid)


#: the least and most text pyarrow parses at a time (a row longer than the block cannot be read)
MIN_BLOCK, MAX_BLOCK = 1 << 24, 1 << 26


def _block_size(chunk_size: int | None) -> int:
    """Bytes of text per parsed block: ``512 * chunk_size`` within :data:`MIN_BLOCK` .. :data:`MAX_BLOCK`."""
    return MIN_BLOCK if chunk_size is None else int(min(max(chunk_size * 512, MIN_BLOCK), MAX_BLOCK))


def _too_long(e: Exception, path: str, block: int) -> FastspecError:
    if "straddl" in str(e):
        return FastspecError(f"{path}: a row is too long to parse in blocks of {block:,} bytes (a row up to about "
                             f"that size is read; store such spectra as Parquet)")
    return FastspecError(f"{path}: cannot read TSV data: {e}")


def _batches(reader, path, block: int):
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as e:
            raise _too_long(e, path, block) from e
        yield batch


def _row_lines(start: int, k: int, bad: np.ndarray) -> np.ndarray:
    """Line numbers of the next ``k`` good rows from ``start``, skipping known bad lines."""
    cand = np.arange(start, start + k + bad.shape[0], dtype=np.int64)
    if bad.shape[0]:
        cand = cand[~np.isin(cand, bad)]
    return cand[:k]


def _field(col: pa.Array) -> pa.Array:
    """A text column as TSV fields: tabs and line breaks become spaces (a row is one line); a value
    holding a double quote (msconvert titles: ``File:"x.raw", NativeID:"..."``) is written inside
    quotes with its quotes doubled, which :func:`read` undoes; nulls are empty."""
    col = pc.fill_null(col, "")
    for ch in ("\t", "\r\n", "\n", "\r"):
        col = pc.replace_substring(col, ch, " ")
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
    return pc.if_else(pc.match_substring(col, '"'), quoted, col)


def write(spectra: Spectra, path: str) -> None:
    """Write a MassSpecGym-style TSV (``identifier``, ``mzs``, ``intensities``, then metadata).

    Formatted :data:`fastspec.io._text.WRITE_CHUNK` spectra at a time (the columns are the whole file's):
    the strings of all 2.4M of a NIST-sized library at once took gigabytes."""
    from fastspec.io import _text
    from fastspec.io._common import text_sink

    pmz = spectra.precursor_mz
    md = spectra.metadata
    # the precursor m/z and charge live in arrays, not always in the metadata (Spectra.from_arrays)
    names = list(md.column_names)
    names += [c for c, has in (("precursor_mz", bool(np.isfinite(pmz).any())),
                               ("charge", bool(np.any(spectra.charge != 0)))) if has and c not in names]
    # the identifier column holds ``id`` (else a metadata ``identifier``, else row numbers); metadata named
    # like the peak columns is not written (the peaks are)
    id_col = next((c for c in ("id", "identifier") if c in md.column_names), None)
    names = [c for c in names if c not in ("id", "identifier", "mzs", "intensities")]
    header = ["identifier", "mzs", "intensities", *names]
    with text_sink(path) as fh:
        # a tab or line break in a name would split the header (as in values: spaces)
        fh.write("\t".join(" ".join(c.split()) if any(ch in c for ch in "\t\r\n") else c for c in header) + "\n")
        step = _text.WRITE_CHUNK
        for start in range(0, len(spectra), step):
            part = spectra.take(np.arange(start, min(start + step, len(spectra)), dtype=np.int64))
            for a in range(0, len(part), 65536):
                rows = _rows(part.take(np.arange(a, min(a + 65536, len(part)), dtype=np.int64)), names, start + a,
                             id_col)
                # rows joined in Arrow, not by its CSV writer: that one either quotes every string or refuses
                # a value holding a quote
                lines = pc.binary_join_element_wise(*[c.cast(pa.large_string()) for c in rows],
                                                    pa.scalar("\t", pa.large_string()))
                fh.write("\n".join(lines.to_pylist()) + "\n")


def _rows(spectra: Spectra, names: list[str], start: int, id_col: str | None) -> list[pa.Array]:
    """The TSV fields of ``spectra`` (rows ``start`` on of the file): identifier (metadata column ``id_col``,
    else row numbers), peaks, then ``names``."""
    from fastspec.io._text import string_column
    from fastspec.io.mgf import plain_charge_strings

    n = len(spectra)
    off = spectra.offsets
    off_arr = pa.array(off.astype(np.int32)) if off[-1] < 2**31 - 1 else pa.array(off)
    mk = pa.ListArray.from_arrays if off_arr.type == pa.int32() else pa.LargeListArray.from_arrays
    mzs = pc.binary_join(mk(off_arr, pa.array(spectra.mz, pa.float64()).cast(pa.string())), ",")
    ins = pc.binary_join(mk(off_arr, pa.array(spectra.intensity, pa.float32()).cast(pa.string())), ",")
    md = spectra.metadata
    ids = string_column(md.column(id_col)) if id_col is not None else \
        pa.array([str(i) for i in range(start, start + n)])
    cols = [_field(ids), mzs, ins]
    pmz = spectra.precursor_mz
    for name in names:
        if name == "precursor_mz":
            col = pa.array(pmz, pa.float64(), mask=~np.isfinite(pmz)).cast(pa.string())
        elif name == "charge":
            col = plain_charge_strings(spectra)
        else:
            col = string_column(md.column(name))
        cols.append(_field(col))
    return cols
