"""Search queries straight into a hit table file, one chunk of queries at a time.

:func:`search_to_file` (also ``Library.search_to_file`` and ``fastspec query``) reads the query files in
chunks, searches each chunk and appends its rows to the table, so memory holds one chunk's spectra and
hits however many queries there are (2.06M queries against a 2.4M library: peak RSS 2.7 GB, against
9.0 GB with every query and the whole hit table in memory). The file is the
same, row for row, as ``library.search(queries, ...).write(path)``: rows in record order, rejected records
in their place, queries without an id named by their position among all records read, the parameters
and the reader's counts in the Parquet metadata or the CSV/TSV ``#`` header (written once the last
chunk is in).
"""
from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra

#: queries per chunk: the hit table of 50,000 queries at k=10 is about 150 MB in Arrow; a search's own
#: batches are far smaller (identity 2,048 queries), so chunks cost no speed
DEFAULT_CHUNK = 50_000


#: the order of :func:`fastspec.search._unfiltered_queries`'s filters and of their counts
_FILTER_ORDER = ("charge", "adduct", "instrument")
_KEY_ORDER = ("missing", "unreadable", "unreadable_examples")


class _Run(NamedTuple):
    """The next ``n_records`` records read, from record ``first`` on: their spectra (``pos``: each one's
    position in the run), each record's file (or None) and the rejected records' ids and reasons (run
    position -> id, -> reason)."""
    raw: Spectra
    first: int
    n_records: int
    pos: np.ndarray
    files: list | None
    rejected_ids: dict
    rejected_reasons: dict


def search_to_file(library, queries: Any, path: "str | os.PathLike", k: int = 10, *, chunk_size: int = DEFAULT_CHUNK,
                   on_error: str = "skip", progress: bool | None = None, formula=None,
                   on_validated: Callable[[dict], None] | None = None, output_format: str | None = None,
                   client: Any = None, **kwargs: Any) -> dict:
    """Search ``queries`` against ``library`` and write the hit table to ``path``, a chunk at a time.

    Parameters
    ----------
    library : Library
    queries : path, list of paths, directory, Spectra or matchms spectra
        As for :func:`fastspec.search.search`; files are read ``chunk_size`` spectra at a time.
    path : str or os.PathLike
        ``.parquet`` / ``.pq``, ``.tsv`` / ``.tab`` / ``.txt`` or ``.csv``; written to a temporary sibling
        and renamed into place once complete (an error or interrupt leaves no partial table).
    k : int
    chunk_size : int
        Query spectra per chunk, with the records the reader rejected among them. A chunk ends where a
        read block does: MGF/MSP blocks hold at least 1 MB of text (about 1,000 spectra), other formats
        ``chunk_size`` records (TSV rows).
    on_error, progress, formula, **kwargs
        As for :func:`fastspec.search.search` (``formula`` as a list: one per query spectrum read; its
        values are checked before the search, its length once every query is read), but ``progress``
        None shows a bar whenever stderr is a terminal (how many queries files hold is known only once
        read).
    on_validated : callable, optional
        Called once the search parameters have passed their checks, before any query is read, with
        the table's parameters (``mode``, ``metric`` as resolved, ``engine``, ...; as ``params`` below).
    output_format : str, optional
        The table's format when the name does not say it (``/dev/stdout``, a pipe): ``parquet``, ``tsv``,
        ``csv``, ``tsv.gz`` or ``csv.gz`` (:data:`fastspec.hits.TABLE_FORMATS`); default: by extension.
    client : distributed.Client, optional
        Search the chunks on this dask cluster (:mod:`fastspec.dist`; the ``dist`` extra): this process
        reads the queries and writes the table, the workers search, each opening the index at the library's
        path (which every machine must see); ``threads`` is then each search task's (unset: every core of
        its worker's machine). The same table as without.

    Returns
    -------
    dict
        ``n_queries`` (records read: the table's queries), ``n_with_hits``, ``n_skipped`` (not searched,
        see :attr:`fastspec.hits.Hits.skipped`), ``skipped_by_status`` (those by their status, e.g.
        ``{"no_peaks": 7, "no_precursor": 6}``) and ``params`` (what the table's metadata holds).
    """
    from fastspec.errors import interrupts

    with interrupts(), library._in_use():  # as search(): an append on this object waits for it, and it for an append
        return _search_to_file(library, queries, path, k, chunk_size, on_error, progress, formula, on_validated,
                               output_format, client, kwargs)


def _search_to_file(library, queries, path, k, chunk_size, on_error, progress, formula, on_validated, output_format,
                    client, kwargs) -> dict:
    from fastspec.hits import table_kind, write_atomically
    from fastspec.search import (_check_formula, _query_records, _record_hits, _search_spectra, _SearchConfig,
                                 caller_formulas, search)

    delimiter, gz = table_kind(path, output_format)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ParameterError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    # every search parameter, checked before anything is read, with search()'s own defaults
    args = inspect.signature(search).bind(library, None, k, formula=formula, **kwargs)
    args.apply_defaults()
    names = list(inspect.signature(_SearchConfig.make).parameters)[1:]  # after library
    cfg_args = [args.arguments[n] for n in names]
    cfg = _SearchConfig.cached(library, *cfg_args)
    _check_formula(cfg, formula)
    per_query_formula = formula is not None and not isinstance(formula, str)
    formulas = list(formula) if per_query_formula else None
    if per_query_formula:
        caller_formulas(formulas)  # an unparsable one is refused now, not after the chunks before it
    if on_validated is not None:
        on_validated(cfg.describe(library, formula))
    totals = {"with_hits": 0, "skipped": 0, "skipped_by": {}, "spectra": 0, "unfiltered": {}}

    def write(tmp: Path) -> dict:
        bar = _progress_bar(progress)  # one bar over every chunk (None: no bar); refused before any temp file
        sink = None
        try:
            sink = _TableSink(tmp, delimiter, gz)
            counts_holder: dict = {}

            def with_formulas():  # each run with its formula argument
                for run in _runs(queries, on_error, int(chunk_size), counts_holder, output=path,
                                 input_format=args.arguments["input_format"]):
                    f = formula
                    if per_query_formula:
                        s0 = totals["spectra"]
                        f = formulas[s0:s0 + len(run.raw)]
                        if len(f) != len(run.raw):
                            raise ParameterError(f"formula: {len(formulas)} values for more query spectra than that")
                    totals["spectra"] += len(run.raw)
                    yield run, f

            if client is None:
                searched = ((run, _search_spectra(library, cfg, run.raw, f, False if bar is None else bar))
                            for run, f in with_formulas())
            else:  # the same search of each run, on the cluster's workers, a few runs ahead of the writing
                from fastspec.dist import search_runs

                searched = search_runs(client, library, cfg_args, with_formulas(), bar)
            try:
                for run, found in searched:
                    _merge_unfiltered(totals["unfiltered"], found.unfiltered)
                    hits = _record_hits(library, {}, run.raw, found, run.pos, run.n_records, run.files,
                                        run.rejected_ids, first=run.first, rejected_reasons=run.rejected_reasons)
                    totals["with_hits"] += int((hits.indices[:, 0] >= 0).sum()) if len(hits) else 0
                    totals["skipped"] += int(hits.skipped.sum())
                    for st, c in zip(*np.unique(hits.status[hits.skipped].astype(str), return_counts=True)):
                        totals["skipped_by"][str(st)] = totals["skipped_by"].get(str(st), 0) + int(c)
                    if run.n_records or not sink.opened:  # an empty input still gets the table's columns
                        sink.write(hits._table(first=run.first))
                    del hits, found
            finally:  # an error: the cluster's chunks still pending are cancelled now, not when collected
                searched.close()
            if per_query_formula and totals["spectra"] != len(formulas):
                raise ParameterError(f"formula: {len(formulas)} values for {totals['spectra']} queries")
            counts = counts_holder["counts"]
            params = cfg.describe(library, formula)
            if totals["unfiltered"]:
                params["filters_not_applied"] = totals["unfiltered"]
            params["query_records"] = _query_records(counts)
            sink.close(params)
            return {"n_queries": int(counts["n_read"]), "n_with_hits": totals["with_hits"],
                    "n_skipped": totals["skipped"], "skipped_by_status": dict(sorted(totals["skipped_by"].items())),
                    "params": params}
        finally:
            if bar is not None and bar is not progress:  # a caller's bar is the caller's to close
                bar.close()
            if sink is not None:
                sink.discard()

    out: dict = {}
    write_atomically(path, lambda tmp: out.update(write(tmp)), needs_seek="Parquet" if delimiter is None else None)
    return out


def _refuse_own_input(paths: list, output) -> None:
    """ParameterError when the hit table's path is one of the query files read (given, or found in a
    directory given): the table, renamed into place once written, would replace it; or lies inside a library
    index directory (the searched library's, say), whose files it would replace or join."""
    from fastspec._indexfmt import enclosing_index

    target = Path(output) if output is not None else None
    if target is None:
        return
    inside = enclosing_index(target)
    if inside is not None:
        raise ParameterError(f"{output} is inside the library index {inside}; writing it there would corrupt the "
                             "index (choose another output path)")
    if not target.is_file():
        return
    for q in paths:
        if Path(q).is_file() and os.path.samefile(q, target):
            raise ParameterError(f"{output} is one of the query files; the hit table would replace it (choose "
                                 "another output path)")


def _progress_bar(progress: bool | None):
    """A tqdm bar counting searched queries (their number is unknown until the files are read), or None."""
    import sys

    from fastspec.io._common import wants_progress

    if hasattr(progress, "update"):  # the caller's own tqdm bar, as search() takes one
        return progress
    if not wants_progress(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="search", unit="query", file=sys.stderr, leave=False)


def _merge_unfiltered(total: dict, part: dict) -> None:
    """Add one chunk's ``filters_not_applied`` counts (see :func:`fastspec.search._unfiltered_queries`),
    filters and counts in the order a whole search lists them (not in the order the chunks met them)."""
    for name, c in part.items():
        t = total.setdefault(name, {})
        for key, v in c.items():
            if key == "unreadable_examples":
                t[key] = sorted(set(t.get(key, [])) | set(v))[:3]
            else:
                t[key] = t.get(key, 0) + int(v)
    for name in [f for f in _FILTER_ORDER if f in total]:
        total[name] = {k: total[name][k] for k in _KEY_ORDER if k in total[name]}
        total[name] = total.pop(name)  # moved to the end: the filters end up in _FILTER_ORDER


# ------------------------------------------------------------------------------------------- reading
def _runs(source: Any, on_error: str, chunk_size: int, out: dict, output=None,
          input_format: str | None = None) -> Iterator[_Run]:
    """Runs of query records in read order, about ``chunk_size`` spectra each; the last one always comes
    (perhaps empty). ``out["counts"]`` holds the read's counts (as :func:`fastspec.library.read_input`'s)
    once the runs are exhausted. ``output``: the hit table's path, which no query file may be
    (:func:`_refuse_own_input`); query files are read as ``input_format`` (None: by extension or content)."""
    from fastspec.library import read_input, sort_input

    spectra, paths = sort_input(source, on_error)
    if spectra is not None:  # spectra in memory: cut into runs, nothing rejected
        raw, counts = read_input(spectra, on_error)
        out["counts"] = counts
        n = len(raw)
        for s0 in range(0, max(n, 1), chunk_size):
            s1 = min(n, s0 + chunk_size)
            part = raw if (s0, s1) == (0, n) else raw.take(np.arange(s0, s1, dtype=np.int64))
            yield _Run(part, s0, s1 - s0, np.arange(s1 - s0, dtype=np.int64), None, {}, {})
        return
    yield from _file_runs(paths, on_error, chunk_size, out, output, input_format)


def _file_runs(paths: list, on_error: str, chunk_size: int, out: dict, output=None,
               input_format: str | None = None) -> Iterator[_Run]:
    """:func:`_runs` of query files, read block by block (a run never ends inside a block)."""
    from fastspec import io as fio
    from fastspec.io._common import ReadReport
    from fastspec.library import _expand_directories, _read_warnings, _refuse_empty, _report_counts

    paths, n_skipped = _expand_directories(paths)
    _refuse_own_input(paths, output)
    total = ReadReport(path=str(paths[0]) if len(paths) == 1 else [str(p) for p in paths])
    state = _Pending()
    starts: list[int] = []  # first record of each file
    offset = 0  # records of the files read before this one
    for p in paths:
        p = str(p)
        rep = ReadReport(path=p)
        starts.append(offset)
        state.files.append(p)
        cursor, seen = 0, 0  # the file's next record not yet placed; its rejections taken in
        for block in fio._iter_file(p, input_format, on_error, rep, None, chunk_size):
            seen = state.take_rejections(rep, seen, offset)
            if len(block):
                local = _good_positions(cursor, len(block), rep.rejected_records)
                cursor = int(local[-1]) + 1
                state.add(block, offset + local)
            if state.n_spectra >= chunk_size:
                yield state.run(int(state.positions[-1][-1]) + 1, starts)
        state.take_rejections(rep, seen, offset)
        rep.check()
        _refuse_empty(rep)
        fio.add_file_report(total, rep, several=len(paths) > 1)
        offset += rep.n_records
    counts = _report_counts(total, total.n_spectra)
    counts["warnings"] = _read_warnings(total, n_skipped)
    out["counts"] = counts
    yield state.run(offset, starts)


def _good_positions(cursor: int, n: int, rejected: list) -> np.ndarray:
    """Positions in its file of the next ``n`` spectra read: the first ``n`` records from ``cursor`` on that
    are not among the file's ``rejected`` records, int64 (n,)."""
    rej = np.asarray(rejected, dtype=np.int64)
    rej = rej[rej >= cursor]
    cand = np.arange(cursor, cursor + n + rej.shape[0], dtype=np.int64)
    return cand[~np.isin(cand, rej)][:n]


class _Pending:
    """Spectra read and rejected records seen whose rows are not written yet."""

    def __init__(self):
        self.blocks: list[Spectra] = []
        self.positions: list[np.ndarray] = []  # each block's record positions among all records
        self.n_spectra = 0
        self.rejected: dict[int, tuple] = {}  # record -> (id the reader got to, reason)
        self.emitted = 0  # records whose rows are out
        self.files: list[str] = []  # the files begun, in read order

    def take_rejections(self, rep, seen: int, offset: int) -> int:
        for r, rid, why in zip(rep.rejected_records[seen:], rep.rejected_ids[seen:], rep.rejected_reasons[seen:]):
            self.rejected[offset + int(r)] = (rid, why)
        return len(rep.rejected_records)

    def add(self, block: Spectra, positions: np.ndarray) -> None:
        self.blocks.append(block)
        self.positions.append(positions)
        self.n_spectra += len(block)

    def run(self, end: int, starts: list[int]) -> _Run:
        """Everything up to record ``end`` (exclusive) as a run."""
        from fastspec.io import _empty_like_read

        first = self.emitted
        n = end - first
        raw = (self.blocks[0] if len(self.blocks) == 1 else Spectra.concat(self.blocks)) if self.blocks \
            else _empty_like_read()
        pos = (np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)) - first
        rej = {r - first: v for r, v in self.rejected.items() if first <= r < end}
        if len(raw) + len(rej) != n or (pos.shape[0] and (pos[0] < 0 or pos[-1] >= n)):
            # a reader that counted a rejected record only after yielding a later spectrum
            raise FastspecError(f"query records {first}-{end - 1}: {len(raw)} spectra and {len(rej)} rejected records "
                                "do not add up (a reader reported records out of order); search the file with "
                                "Library.search instead")
        for r in rej:
            del self.rejected[r + first]
        which = np.searchsorted(np.asarray(starts, dtype=np.int64), np.arange(first, end, dtype=np.int64),
                                side="right") - 1
        files = [self.files[i] for i in which.tolist()]
        self.blocks, self.positions, self.n_spectra, self.emitted = [], [], 0, end
        return _Run(raw, first, n, pos, files, {r: v[0] for r, v in rej.items() if v[0] is not None},
                    {r: v[1] for r, v in rej.items()})


# ------------------------------------------------------------------------------------------- writing
#: the name (see :func:`fastspec._atomic.temporary_name`) of the rows of a CSV/TSV hit table written to a
#: device or pipe, spooled in the temporary folder until its ``#`` header is known
_SPOOL_NAME = "fastspec-hits"


class _TableSink:
    """The hit table written chunk by chunk: Parquet row groups, or CSV/TSV rows into a body file that
    :meth:`close` puts behind the ``#`` parameter lines (known only at the end)."""

    def __init__(self, tmp: Path, delimiter: str | None, gz: bool = False):
        self.tmp = Path(tmp)
        self.delimiter, self.gz = delimiter, gz
        self.body = None
        if delimiter is not None:
            from fastspec._atomic import output_target

            if output_target(self.tmp)[1]:  # written straight to a device or pipe: the rows wait in a temp file
                import tempfile

                from fastspec._atomic import remove_stale_temporaries, temporary_name

                # named as the atomic writers name theirs, so that those of a killed run are removed by the next
                # (nothing else would: they sit in the temporary folder, not beside an output)
                where = Path(tempfile.gettempdir())
                remove_stale_temporaries(where, _SPOOL_NAME)
                self.body = where / (temporary_name(_SPOOL_NAME) + ".rows")
                self.body.touch(mode=0o600, exist_ok=False)
            else:
                self.body = self.tmp.with_name(self.tmp.name + ".rows")
        self.writer = None
        self.schema = None
        self.opened = False

    def write(self, table) -> None:
        table = table.replace_schema_metadata(None)
        if not self.opened:
            self.schema = table.schema
            if self.delimiter is None:
                import pyarrow.parquet as pq

                # no stored Arrow schema: the parameters, added at the end, are then the schema metadata
                # readers see (the stored schema would carry the empty metadata of the first chunk)
                self.writer = pq.ParquetWriter(str(self.tmp), self.schema, compression="zstd", store_schema=False)
            else:
                import pyarrow.csv as pcsv

                from fastspec._atomic import ACTIVE_TEMPORARIES

                ACTIVE_TEMPORARIES.add(self.body)
                self.writer = pcsv.CSVWriter(str(self.body), self.schema, write_options=pcsv.WriteOptions(
                    delimiter=self.delimiter, quoting_style="needed"))
            self.opened = True
        self.writer.write_table(table.cast(self.schema))

    def close(self, params: dict) -> None:
        import json

        from fastspec._atomic import open_output
        from fastspec.hits import csv_header

        if self.delimiter is None:
            self.writer.add_key_value_metadata({"fastspec": json.dumps(params, default=str)})
            self.writer.close()
            self.writer = None
            return
        self.writer.close()
        self.writer = None
        with open_output(self.tmp, self.gz) as f, open(self.body, "rb") as rows:
            f.write(csv_header(params))
            shutil.copyfileobj(rows, f, 1 << 22)

    def discard(self) -> None:
        """Close and remove what is left (after close, or on an error)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - the error being raised matters, not this one
                pass
            self.writer = None
        if self.body is not None:
            from fastspec._atomic import ACTIVE_TEMPORARIES

            ACTIVE_TEMPORARIES.discard(self.body)
            if self.body.exists():
                self.body.unlink()
