"""JSON spectrum libraries: GNPS library exports (``ALL_GNPS.json``), matchms ``save_as_json`` files and
MoNA's JSON export, read as a stream (a top-level array of records, or one record per line).

Per record (a JSON object):

* peaks from ``peaks_json`` (GNPS: a string holding ``[[mz, intensity], ...]``, or Python tuples
  ``[(mz, intensity), ...]`` in GNPS "cleaned" exports; matchms: the list
  itself), ``peaks`` (the same list), or ``spectrum`` (MoNA: ``"mz:intensity mz:intensity ..."``);
* metadata from every other key whose value is a string, number or boolean, and from those of a nested
  ``metadata`` (mzmine's GNPS JSON) or ``params`` object, harmonised like MGF/MSP
  keys (``Precursor_MZ``, ``Ion_Mode``, ``Compound_Name``, ``Smiles``, ``INCHI``, ``Adduct``,
  ``spectrum_id``, matchms' ``precursor_mz``, ``ionmode``, ...); MoNA's ``metaData`` lists
  (``{"name": "precursor m/z", "value": ...}``) of the record and of its first ``compound`` become keys
  too, with that compound's first name (``name``), ``inchi`` and ``inchiKey``.

A record without peaks, whose peaks do not parse, or that is not an object, is a bad record (``on_error``).
Broken JSON is one bad record too, and reading goes on at the next record: in an array, the next ``{``
after a ``},`` that opens an object which parses, holds peaks and is followed by ``, {`` or by the closing
``]`` (so that an object nested in the broken record is not taken for one); in a JSON-lines file, the next
line opening a record. What lies between counts as that one record: records the broken text swallowed,
and records right after it that do not parse or hold no peaks, cannot be told from the broken text and
are not counted. A broken first record in an array is an error for the file (it is not taken for a
spectrum library). Records are numbered by their position in the file (1-based), not by line.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError, ParseError
from fastspec.io._common import ReadReport, finish_block, open_binary, read_pieces
from fastspec.spectra import Spectra

_CHUNK = 1 << 20  # characters decoded per read
_WS = " \t\r\n"
#: where the next object of an array may start after broken text: "}", a comma, "{"
_NEXT_OBJECT = re.compile(r"[}\]]\s*,\s*\{")
#: the end of a buffer that may be the start of such a place
_OPEN_TAIL = re.compile(r"[}\]]\s*(?:,\s*)?\Z")
#: characters a candidate record is first decoded from (a failed decode counts lines up to where it
#: failed: decoding from the whole buffer made each failure cost the buffer's length)
_WINDOW = 1 << 16
#: a Python sequence's trailing comma, "(1.0, 2.0,)" or "[..., ]", which JSON refuses
_TRAILING_COMMA = re.compile(r",\s*([\]])")
#: keys of a nested object whose scalar values are the record's metadata (mzmine's GNPS JSON:
#: ``{"metadata": {"PEPMASS": ...}, "peaks": [...]}``); the record's own keys come first
_NESTED_META = ("metadata", "params")


class _Broken(str):
    """A record that does not parse (the reading resumes at the next record; see the module docstring)."""


def _records(path: str) -> Iterator[tuple[Any, str | None]]:
    """(record, None) for each top-level value of the file's array (or of a JSON-lines file); a broken
    record after the first one is yielded as a :class:`_Broken` message and the reading goes on at the next
    record (see the module docstring); (None, message) ends the file: a broken first record, or an array
    without its closing bracket. Where gzip data breaks off (a truncated download, a failed CRC check),
    the records before the break are read as in a plain file cut there, and the last message, the record
    the break falls in (else one after the last record), says so."""
    from fastspec.io._common import truncated_reason

    state: dict = {"cut": None}
    held = None  # one item behind, so that the last one can be told apart
    for item in _scan(path, state):
        if held is not None:
            yield held
        held = item
    if state["cut"] is None:
        if held is not None:
            yield held
        return
    reason = truncated_reason(state["cut"])
    if held is not None and (held[1] is not None or isinstance(held[0], _Broken)):
        yield (_Broken(reason), None) if isinstance(held[0], _Broken) else (None, reason)
        return
    if held is not None:
        yield held
    yield None, reason


def _scan(path: str, state: dict) -> Iterator[tuple[Any, str | None]]:
    """:func:`_records` before the last item is known; ``state["cut"]``: why gzip data broke off, if it did."""
    import codecs
    import gzip

    fh, _ = open_binary(path)
    gz = isinstance(fh, gzip.GzipFile)
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder = json.JSONDecoder()
    buf, pos, eof, started, array, n = "", 0, False, False, False, 0
    decoded = 0

    def more(size: int) -> None:
        nonlocal buf, pos, eof, decoded
        raw = b""
        try:
            if gz and state["cut"] is None:  # a break loses none of what decoded before it
                raw, err = read_pieces(fh, size)
                if err is not None:
                    if not (decoded or raw):  # not gzip data at all
                        raise FastspecError(f"{path}: cannot read: {err}") from err
                    state["cut"] = str(err) or type(err).__name__
            elif not gz:
                raw = fh.read(size)
        except OSError as e:  # a read error
            raise FastspecError(f"{path}: cannot read: {e}") from e
        decoded += len(raw)
        eof = not raw
        buf = buf[pos:] + dec.decode(raw, final=eof)
        pos = 0

    try:
        while True:
            # enough text for the next value: refill when the buffer runs low
            while not eof and len(buf) - pos < _CHUNK:
                more(_CHUNK)
            if not started:
                if buf.startswith("\ufeff", pos):
                    pos += 1
                while pos < len(buf) and buf[pos] in _WS:
                    pos += 1
                if pos >= len(buf) and not eof:  # more leading white space than the buffer holds
                    more(_CHUNK)
                    continue
                if pos < len(buf) and buf[pos] == "[":
                    array, pos = True, pos + 1
                started = True
                continue
            while pos < len(buf) and (buf[pos] in _WS or buf[pos] == ","):  # JSON lines ending in "," too
                pos += 1
            if pos >= len(buf) and not eof:  # white space running past the buffer
                more(_CHUNK)
                continue
            if pos >= len(buf):
                if array:
                    yield None, "invalid JSON (the file ends inside its top-level array)"
                return
            if array and buf[pos] == "]":
                j = _skip_ws(buf, pos + 1)
                if j >= len(buf) and not eof:  # white space after it running past the buffer
                    more(max(_CHUNK, len(buf) - pos))
                    continue
                if j >= len(buf):
                    return
                if buf[j] == "[":  # another array right after it (files appended to one another)
                    pos = j + 1
                    continue
                # a stray "]" (or text after the array): one bad record, and on at the next record
                n += 1
                yield _Broken("invalid JSON (text after a ']' that closes the top-level array)"), None
                resync = pos
            else:
                try:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except RecursionError:  # arrays or objects nested thousands deep
                        raise json.JSONDecodeError("nested too deeply", buf, pos + 1) from None
                except json.JSONDecodeError as e:
                    # cut off by the end of the buffer (not a mistake in the text): read more and try again,
                    # growing the buffer geometrically (a long record costs linear time, not quadratic)
                    truncated = e.pos >= len(buf) - 16 or e.msg.startswith("Unterminated string")
                    if not eof and truncated:
                        more(max(_CHUNK, len(buf) - pos))
                        continue
                    msg = f"invalid JSON ({e.msg} at character {e.pos - pos} of the record)"
                    if n == 0:
                        yield None, msg
                        return
                    if not array:
                        # JSON lines: this record is bad; the next one starts on a line opening with "{"
                        nxt = buf.find("\n{", pos)
                        while nxt < 0 and not eof:
                            keep = len(buf) - pos - 1
                            more(_CHUNK)
                            nxt = buf.find("\n{", max(0, keep))
                        n += 1
                        yield _Broken(msg), None
                        if nxt < 0:
                            return
                        pos = nxt + 1
                        continue
                    n += 1
                    yield _Broken(msg), None
                    resync = e.pos  # where the decoder stopped, which may be a stray "}" itself
                else:
                    if buf.find("\\u", pos, end) >= 0:  # an escape may be a lone surrogate, which no writer takes
                        value = _without_lone_surrogates(value)
                    pos = end
                    n += 1
                    yield value, None
                    continue
            # on at the array's next record: a "{" after "}," (or "],") opening a spectrum object that the
            # array continues after (see _candidate)
            start = resync
            while True:
                m = _NEXT_OBJECT.search(buf, start)
                if m is None:
                    if eof:
                        return  # the broken text runs to the end of the file
                    tail = _OPEN_TAIL.search(buf, start)  # a "}," the next read may complete
                    pos = tail.start() if tail else len(buf)
                    more(_CHUNK)
                    start = 0
                    continue
                got = _candidate(buf, m.end() - 1, eof, decoder)
                if got == "more":  # cut off by the buffer: read on, and look here again
                    pos = m.start()
                    more(max(_CHUNK, len(buf) - pos))
                    start = 0
                    continue
                if got == "record":
                    pos = m.end() - 1
                    break
                start = m.end() - 1
    finally:
        fh.close()


def looks_like_spectra(path: str) -> bool:
    """Whether the file's first record is a spectrum (an object with ``peaks_json``, a ``peaks`` list or
    a MoNA ``spectrum`` string): tells a JSON library from a settings, report or package file."""
    try:
        for rec, broken in _records(path):
            return broken is None and _is_spectrum(rec)
    except (OSError, EOFError, ValueError, FastspecError):
        return False
    return False


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate (a ``\\udcff`` escape, legal JSON text) in its strings replaced by
    U+FFFD, as the text readers replace bytes that are not UTF-8: Arrow, and so every writer, refuses it."""
    if isinstance(value, str):
        if not any("\ud800" <= c <= "\udfff" for c in value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def _candidate(buf: str, at: int, eof: bool, decoder: json.JSONDecoder) -> str:
    """Whether the ``{`` at ``buf[at]`` (after broken JSON in an array) opens the array's next record:
    ``"record"`` when it decodes to a spectrum object followed by ``,`` and another ``{`` or by the
    closing ``]`` and nothing more or another array (an object nested in the broken record is followed
    by something else),
    ``"more"`` when the buffer ends before that can be told, else ``"skip"``."""
    width = _WINDOW
    while True:
        seg = buf[at:at + width]
        try:
            value, used = decoder.raw_decode(seg)
            break
        except RecursionError:
            return "skip"
        except json.JSONDecodeError as e:
            cut = e.pos >= len(seg) - 16 or e.msg.startswith("Unterminated string")
            if cut and at + width < len(buf):
                width *= 4
                continue
            return "more" if cut and not eof else "skip"
    if not _is_spectrum(value):
        return "skip"
    j = _skip_ws(buf, at + used)
    if j < len(buf) and buf[j] == ",":
        j = _skip_ws(buf, j + 1)
        if j < len(buf):
            return "record" if buf[j] == "{" else "skip"
    elif j < len(buf) and buf[j] == "]":
        j = _skip_ws(buf, j + 1)
        if j < len(buf):  # a second array appended, or a list nested in the broken record closing here
            return "record" if buf[j] == "[" else "skip"
    elif j < len(buf):
        return "skip"
    return "record" if eof else "more"


def _skip_ws(buf: str, j: int) -> int:
    while j < len(buf) and buf[j] in _WS:
        j += 1
    return j


def _is_spectrum(rec: Any) -> bool:
    """An object with ``peaks_json``, a ``peaks`` list or a MoNA ``spectrum`` string."""
    return isinstance(rec, dict) and (
        rec.get("peaks_json") is not None or isinstance(rec.get("peaks"), (list, str))
        or (isinstance(rec.get("spectrum"), str) and ":" in rec["spectrum"]))


def _pairs(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """m/z and intensities from ``[[mz, i], ...]`` (or its JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            # GNPS "cleaned" exports (and matchms, through ast.literal_eval) write Python tuples:
            # "[(289.28, 8068.0), ...]"
            if "(" not in value:
                raise
            value = json.loads(_TRAILING_COMMA.sub(r"\1", value.replace("(", "[").replace(")", "]")))
    a = np.asarray(value, dtype=np.float64)
    if a.size == 0:
        return np.zeros(0), np.zeros(0)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError("peaks are not [m/z, intensity] pairs")
    # numpy reads true / false as 1 / 0: a peak, where they can only be a broken export (looked for only
    # where a 0 or 1 came out)
    if ((a[:, :2] == 0) | (a[:, :2] == 1)).any() and any(isinstance(x, bool) for pair in value for x in pair[:2]):
        raise ValueError("peaks hold true / false, not numbers")
    return a[:, 0].copy(), a[:, 1].copy()


def _mona_pairs(text: str) -> tuple[np.ndarray, np.ndarray]:
    """m/z and intensities from MoNA's ``"mz:intensity mz:intensity"``."""
    mz, it = [], []
    for tok in text.split():
        m, _, i = tok.partition(":")
        mz.append(float(m))
        it.append(float(i))
    return np.asarray(mz, np.float64), np.asarray(it, np.float64)


def _scalar(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        return str(v)
    return None


def _mona_meta(items: Any, md: dict) -> None:
    """MoNA's ``metaData`` list of ``{"name", "value"}``: the first value of a name, but comments joined (as
    repeated MassBank ``COMMENT`` lines are: MoNA keeps one item per line of the source record)."""
    seen: set[str] = set()
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            v = _scalar(item.get("value"))
            if v is None:
                continue
            name = item["name"]
            if name.lower() == "comment" and name in seen and name in md:
                md[name] = f"{md[name]}; {v}"
            else:
                md.setdefault(name, v)
            seen.add(name)


def _record(rec: Any) -> tuple[dict, np.ndarray, np.ndarray]:
    """Raw metadata and peaks of one record; ValueError with the reason when it has no usable peaks."""
    if isinstance(rec, _Broken):
        raise ValueError(str(rec))
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object but {type(rec).__name__} (a record must be one)")
    md: dict = {}
    for k, v in rec.items():
        if k in ("peaks_json", "peaks", "spectrum", "metaData", "compound"):
            continue
        s = _scalar(v)
        if s is not None:
            md[str(k)] = s
    for k, v in rec.items():
        if isinstance(v, dict) and str(k).lower() in _NESTED_META:
            for kk, vv in v.items():
                sv = _scalar(vv)
                if sv is not None:
                    md.setdefault(str(kk), sv)
    _mona_meta(rec.get("metaData"), md)
    comp = rec.get("compound")
    if isinstance(comp, list) and comp and isinstance(comp[0], dict):
        c0 = comp[0]
        _mona_meta(c0.get("metaData"), md)
        names = c0.get("names")
        if isinstance(names, list) and names and isinstance(names[0], dict) and isinstance(names[0].get("name"), str):
            md.setdefault("name", names[0]["name"])
        for key in ("inchi", "inchiKey"):
            if isinstance(c0.get(key), str):
                md.setdefault(key, c0[key])
    try:
        if rec.get("peaks_json") is not None:
            mz, it = _pairs(rec["peaks_json"])
        elif rec.get("peaks") is not None:
            mz, it = _pairs(rec["peaks"])
        elif isinstance(rec.get("spectrum"), str):
            mz, it = _mona_pairs(rec["spectrum"])
        else:
            raise ValueError("no peaks (peaks_json, peaks or spectrum)")
    except (TypeError, ValueError, json.JSONDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(msg if msg.startswith(("no peaks", "invalid JSON")) or "pairs" in msg else f"unreadable peaks ({msg})") from None
    return md, mz, it


def _block(path, mds, mzs, ints, lines, errors, on_error, report) -> Spectra:
    lengths = np.fromiter((m.shape[0] for m in mzs), dtype=np.int64, count=len(mzs))
    offsets = np.zeros(len(mzs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    keys: dict[str, None] = {}
    for r in mds:
        keys.update(dict.fromkeys(r))
    meta = pa.table({k: pa.array([r.get(k) for r in mds], pa.string()) for k in keys}) if keys else \
        pa.table({"id": pa.nulls(len(mds), pa.string())})
    err = np.array(errors, dtype=object) if any(e is not None for e in errors) else None
    mz = np.concatenate(mzs) if mzs else np.zeros(0)
    it = np.concatenate(ints) if ints else np.zeros(0)
    return finish_block(report, path, np.asarray(lines, np.int64), err, offsets, mz, it, meta, on_error, text=True)


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """Spectra of a JSON library file (``.gz`` allowed), ``chunk_size`` records at a time (default 10000)."""
    step = int(chunk_size or 10_000)
    mds, mzs, ints, lines, errors = [], [], [], [], []
    position = 0
    for rec, broken in _records(path):
        if broken is not None:
            if position == 0 and not mds:
                raise FastspecError(f"{path}: not readable as JSON spectra ({broken})")
            if mds:  # first (with on_error="raise": raises at an earlier bad record, if any)
                yield _block(path, mds, mzs, ints, lines, errors, on_error, report)
                mds, mzs, ints, lines, errors = [], [], [], [], []
            if on_error == "raise":
                raise ParseError(broken, path, position + 1, unit="record")
            report.reject(position + 1, broken, path)
            return
        position += 1
        try:
            md, mz, it = _record(rec)
            err = None
        except ValueError as e:
            md, mz, it, err = {}, np.zeros(0), np.zeros(0), str(e)
        mds.append(md)
        mzs.append(mz)
        ints.append(it)
        lines.append(position)
        errors.append(err)
        if len(mds) >= step:
            yield _block(path, mds, mzs, ints, lines, errors, on_error, report)
            mds, mzs, ints, lines, errors = [], [], [], [], []
    if mds:
        yield _block(path, mds, mzs, ints, lines, errors, on_error, report)
