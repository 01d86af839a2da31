"""Search results: :class:`Hits` (top-k per query, in the caller's order) and the hit-table files.

The long hit table (:data:`HIT_COLUMNS`) is written as Parquet (parameters in the schema metadata) or as
CSV/TSV behind ``#`` parameter lines (:func:`csv_header`), atomically (:func:`write_atomically`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import has_column
from fastspec._atomic import check_seekable, open_output, write_atomically  # noqa: F401  (the hit writers; stream imports it from here)

#: status of a query row in Hits
OK, NO_HIT, NO_PEAKS, NO_PRECURSOR, NO_NEIGHBOUR_SKIPPED = "ok", "no_hit", "no_peaks", "no_precursor", "no_neighbour"
NO_FORMULA = "no_formula"  # formula mode, skipped: the query has no formula (none given, none from SMILES / InChI)
MS1 = "ms1"  # an MS1 record among the queries (ms_level 1): the library holds tandem spectra only
MSN = "msn"  # an MSn record (ms_level 3 or more): its precursor is a fragment, the library holds MS2 spectra
REJECTED = "rejected"  # a query record the reader could not use (on_error="skip"; why: rejected_reasons)

HIT_COLUMNS = (
    "query_index", "query_id", "query_file", "rank", "library_index", "library_input_index", "library_file",
    "library_id", "score", "n_matched",
    "query_precursor_mz", "library_precursor_mz", "delta_mz", "delta_ppm", "adduct", "formula",
    "inchikey14", "smiles", "name", "status", "fallback", "query_formula",
    "rejected_reason",
)


# ====================================================================================== Hits
def _nullable_int(t: pa.DataType):
    """pandas' nullable integer dtype for an Arrow integer type (None for others)."""
    import pandas as pd

    if not pa.types.is_integer(t):
        return None
    return pd.api.types.pandas_dtype(f"{'U' if pa.types.is_unsigned_integer(t) else ''}Int{t.bit_width}")


class Hits:
    """Top-k library hits of each query, in the caller's query order.

    Attributes
    ----------
    scores : ndarray, float32 (n, k)
        Similarity scores, best first (0 where there is no hit).
    indices : ndarray, int64 (n, k)
        Library rows, -1 for no hit. Rows number the library's input spectra in input order, skipping
        those rejected at build time (unreadable, or no peak left after preprocessing); the input
        positions themselves are :attr:`input_indices`.
    matches : ndarray, int32 (n, k)
        Matched peaks of each hit.
    status : ndarray of str (n,)
        ``ok``, ``no_hit``, ``no_peaks`` (nothing left after preprocessing), ``no_precursor``
        (identity or neutral-loss mode without a precursor m/z, or with one of 0 or less), ``no_neighbour`` (formula mode,
        skipped: no library spectrum has the query's formula, among those its polarity and the
        ``same_*`` filters allow; one that fails only ``min_matches`` / ``min_score`` gives ``no_hit``), ``no_formula`` (formula mode, skipped: the
        query has no formula, in its metadata, from its SMILES or InChI, or passed in), ``ms1``
        (an MS1 record, ``ms_level`` 1, as SIRIUS/MZmine MGF exports interleave them: not searched) or
        ``msn`` (an MSn record, ``ms_level`` 3 or more, as mzmine's MSn exports hold: not searched; the
        mzML and mzXML readers read MS2 scans only) or ``rejected`` (a query record the reader could not
        use, with ``on_error="skip"``; why: :attr:`rejected_reasons`).
    fallback : ndarray of bool (n,)
        Formula mode: the query had no same-formula neighbour and was searched against the whole library
        (its polarity, and the search's ``same_*`` filters).
    query_ids : list of str
        Each query's id (its ``id`` metadata: MGF TITLE or SPECTRUMID, MSP DB#, ...), else its position
        among the records read (the row's ``query_index``). Rejected records keep the id the reader got
        to, else they too are named by their position.
    query_files : list of str or None
        The file each query record was read from (as given, or as found in a directory given), so that ids
        repeated across files (mzML native ids such as ``scan=2``) stay apart; ``None`` for queries given
        in memory.
    query_precursor_mz : ndarray, float64 (n,)
    query_formulas : list of str or None, or None
        Formula mode: the canonical Hill formula each query was searched with (given, its own, or from its
        SMILES / InChI; None where it has none); None in the other modes.
    rejected_reasons : list of str or None, or None
        For each query row, the reader's reason for rejecting the record (status ``rejected``) with where
        when known (the line of a text format, else the row, spectrum or record number), e.g.
        ``"unparsable peak line (line 4)"``; None for the other rows (no list at all when no record of the
        queries, or of that chunk, was rejected).
    params : dict
        The search parameters (mode, metric, tolerances, filters, library path and build parameters),
        and ``query_records``: records read from the query files, rejected by the reader (on_error
        ``"skip"``: their rows have status ``rejected``) and why.
    query_index : ndarray, int64 (n,)
        Each row's position among the queries searched (the hit table's ``query_index``): ``0..n-1``, or
        where a subset (``hits[5:10]``, ``hits[mask]``) took its rows from.

    Notes
    -----
    ``hits[sel]`` (an int, a slice, an int array or a boolean mask over the queries) is a Hits of those
    queries, each keeping its ``query_index``; iterating gives one Hits per query.
    """

    def __init__(self, scores, indices, matches, *, status, fallback=None, query_ids=None, query_precursor_mz=None,
                 library=None, params=None, query_files=None, rejected_reasons=None, query_formulas=None,
                 query_index=None):
        self.scores = np.asarray(scores, dtype=np.float32)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.matches = np.asarray(matches, dtype=np.int32)
        n = self.scores.shape[0]
        self.status = np.asarray(status, dtype=object)
        self.fallback = np.zeros(n, bool) if fallback is None else np.asarray(fallback, bool)
        self.query_ids = [str(i) for i in range(n)] if query_ids is None else list(query_ids)
        self.query_files = None if query_files is None else list(query_files)
        if self.query_files is not None and len(self.query_files) != n:
            raise ParameterError(f"query_files holds {len(self.query_files)} entries for {n} queries")
        self.query_formulas = None if query_formulas is None else list(query_formulas)
        if self.query_formulas is not None and len(self.query_formulas) != n:
            raise ParameterError(f"query_formulas holds {len(self.query_formulas)} entries for {n} queries")
        self.rejected_reasons = None if rejected_reasons is None else list(rejected_reasons)
        if self.rejected_reasons is not None and len(self.rejected_reasons) != n:
            raise ParameterError(f"rejected_reasons holds {len(self.rejected_reasons)} entries for {n} queries")
        self.query_precursor_mz = np.full(n, np.nan) if query_precursor_mz is None else np.asarray(query_precursor_mz, np.float64)
        self.library = library
        self.params = dict(params or {})
        self.query_index = np.arange(n, dtype=np.int64) if query_index is None else np.asarray(query_index, np.int64)
        if self.query_index.shape != (n,):
            raise ParameterError(f"query_index holds {self.query_index.shape} entries for {n} queries")

    def __len__(self) -> int:
        return self.scores.shape[0]

    def __getitem__(self, sel) -> "Hits":
        """The hits of the queries ``sel`` selects (an int, a slice, an int array or a boolean mask, as numpy
        indexes the rows); they keep their ``query_index``, parameters and library."""
        rows = _query_rows(sel, len(self))

        def take(values):
            return None if values is None else [values[i] for i in rows.tolist()]

        return Hits(self.scores[rows], self.indices[rows], self.matches[rows], status=self.status[rows],
                    fallback=self.fallback[rows], query_ids=take(self.query_ids),
                    query_precursor_mz=self.query_precursor_mz[rows], library=self.library, params=self.params,
                    query_files=take(self.query_files), rejected_reasons=take(self.rejected_reasons),
                    query_formulas=take(self.query_formulas), query_index=self.query_index[rows])

    def __iter__(self):
        """One Hits per query, in order (``hits[i]``)."""
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        # one object, not an array of its queries (each of them a Hits again: numpy recursed without end)
        a = np.empty((), dtype=object)
        a[()] = self
        return a

    @property
    def k(self) -> int:
        return self.scores.shape[1]

    @property
    def input_indices(self) -> np.ndarray | None:
        """The hits as positions among the library's input spectra, int64 (n, k), -1 for no hit.

        What to index the list or file the library was built from with (see
        :attr:`fastspec.library.Library.input_index`); ``None`` when the library does not know them.
        """
        inp = None if self.library is None else self.library.input_index
        if inp is None:
            return None
        inp = np.asarray(inp, dtype=np.int64)
        return np.where(self.indices >= 0, inp[np.maximum(self.indices, 0)] if inp.size else -1, -1)

    @property
    def skipped(self) -> np.ndarray:
        """Queries not searched: rejected by the reader, no peaks, MS1 or MSn records, no precursor (identity
        and neutral-loss modes), no formula or no same-formula neighbour (formula mode with ``skip``)."""
        return np.isin(self.status, [NO_PEAKS, MS1, MSN, NO_PRECURSOR, NO_NEIGHBOUR_SKIPPED, NO_FORMULA, REJECTED])

    def __repr__(self) -> str:
        n_hit = int((self.indices[:, 0] >= 0).sum()) if len(self) else 0
        return f"Hits(n_queries={len(self)}, k={self.k}, with_hits={n_hit})"

    def to_arrow(self, library_columns: bool = True) -> pa.Table:
        """The long hit table: one row per (query, rank); a query without hits gets one row with nulls.

        Columns: ``query_index, query_id, query_file`` (the file the query was read from, null for queries
        given in memory), ``rank (1-based), library_index (row), library_input_index
        (position among the library's input spectra), library_file`` (the input file the hit was read
        from, null for spectra given in memory or an index that did not record its inputs),
        ``library_id, score, n_matched,
        query_precursor_mz, library_precursor_mz, delta_mz (query - library, Da), delta_ppm (the same
        over the query's precursor m/z, as ppm precursor windows are), adduct`` (canonical, ``[M+H]+``,
        where the adduct parser reads it), ``formula`` (canonical Hill), ``inchikey14,
        smiles, name, status, fallback`` (formula mode: the hits come from the whole library because no
        same-formula spectrum was found, ``no_neighbour="fallback"``), ``query_formula`` (formula mode: the
        query's canonical formula searched with), ``rejected_reason`` (status
        ``rejected``: why the reader rejected the record, and where). Search parameters are in the
        schema metadata (key ``fastspec``, JSON).

        Parameters
        ----------
        library_columns : bool
            With False the library's metadata is not read (faster for large tables): the columns stay, with
            ``library_id``, ``library_precursor_mz``, ``delta_mz``, ``delta_ppm``, ``adduct``, ``formula``,
            ``inchikey14``, ``smiles`` and ``name`` null.
        """
        return self._table(library_columns)

    def _table(self, library_columns: bool = True, first: int = 0) -> pa.Table:
        """:meth:`to_arrow`, numbering the queries from ``first`` (a chunk of a larger search)."""
        import pyarrow.compute as pc

        n, k = self.indices.shape
        valid = self.indices >= 0
        n_hits = valid.sum(axis=1)
        rows_per_q = np.maximum(n_hits, 1)
        q_index = np.repeat(np.arange(n, dtype=np.int64), rows_per_q)
        # rank of every output row: 1..n_hits, or null for the placeholder row
        starts = np.concatenate([[0], np.cumsum(rows_per_q)[:-1]]) if n else np.zeros(0, np.int64)
        rank = np.arange(q_index.shape[0], dtype=np.int64) - np.repeat(starts, rows_per_q)
        has = np.repeat(n_hits > 0, rows_per_q)
        # hits are packed left (best first), so position == rank
        flat_pos = q_index * k + rank
        lib_idx = np.where(has, self.indices.reshape(-1)[flat_pos] if n else np.zeros(0, np.int64), -1)
        score = np.where(has, self.scores.reshape(-1)[flat_pos] if n else np.zeros(0, np.float32), np.nan)
        nmatch = np.where(has, self.matches.reshape(-1)[flat_pos] if n else np.zeros(0, np.int32), 0)
        qpmz = self.query_precursor_mz[q_index] if n else np.zeros(0)
        # per-query and per-hit values are gathered by Arrow takes, not Python lists (2.4M queries make
        # 24M rows); a null index takes a null, which is what a row without a hit gets
        per_query = pa.array(q_index, pa.int64())
        cols: dict[str, pa.Array] = {
            "query_index": pa.array(self.query_index[q_index] + first, pa.int64()),
            "query_id": pa.array(self.query_ids, pa.string()).take(per_query),
            "query_file": (pa.nulls(q_index.shape[0], pa.string()) if self.query_files is None else
                           pa.array([_path_text(f) for f in self.query_files], pa.string()).take(per_query)),
            "rank": pa.array(rank + 1, pa.int32(), mask=~has),
            "library_index": pa.array(lib_idx, pa.int64(), mask=~has),
        }
        inp = None if self.library is None else self.library.input_index
        if inp is not None:
            inp = np.asarray(inp, dtype=np.int64)
            lin = np.where(has, inp[np.maximum(lib_idx, 0)] if inp.size else -1, -1)
            cols["library_input_index"] = pa.array(lin, pa.int64(), mask=~has)
        else:
            cols["library_input_index"] = pa.nulls(q_index.shape[0], pa.int64())
        # the distinct hit rows, looked up once for the file and metadata columns
        hit = self.library is not None and bool(has.any())
        uniq, inv = np.unique(lib_idx[has], return_inverse=True) if hit else (None, None)
        # each row's position among the distinct hits (null: no hit)
        per_hit = None
        if hit:
            full = np.zeros(q_index.shape[0], np.int64)
            full[has] = inv.reshape(-1)
            per_hit = pa.array(full, pa.int64(), mask=~has)
        lfile = pa.nulls(q_index.shape[0], pa.string())
        if hit:
            names = [_path_text(p) for p in self.library.input_file(uniq)]
            if any(x is not None for x in names):
                lfile = pa.array(names, pa.string()).take(per_hit)
        cols["library_file"] = lfile
        meta = None
        lpmz = np.full(q_index.shape[0], np.nan)
        if library_columns and hit:
            meta = self.library.metadata(rows=uniq, columns=["id", "adduct", "formula_canonical", "formula", "inchikey14",
                                                              "inchikey", "smiles", "name"])
            lpmz[has] = np.asarray(self.library.precursor_mz[uniq])[inv.reshape(-1)]

        def strings(column: str, fallback=None) -> pa.Array:
            def rows() -> "pa.Array | None":  # row numbers as text (built only where needed: ~0.5 us a hit)
                if fallback is None or not has.any():
                    return None
                return pa.array(np.asarray(fallback)[has].astype(str).tolist(), pa.string()).take(
                    pa.array(np.cumsum(has) - 1, pa.int64(), mask=~has))

            if meta is not None and has_column(meta, column):
                col = meta.column(column).cast(pa.string()).combine_chunks().take(per_hit)
                # spectra without the value (a library read without ids: the column is there, all null)
                if fallback is None or col.null_count <= int((~has).sum()):
                    return col
                import pyarrow.compute as pc

                return pc.coalesce(col, rows())
            out = rows()  # also for hits without a library
            return out if out is not None else pa.nulls(q_index.shape[0], pa.string())

        # a library without ids names its spectra by row; without library columns the id stays null (row
        # numbers there would pass for ids)
        cols["library_id"] = strings("id", fallback=lib_idx if library_columns else None)
        cols["score"] = pa.array(score.astype(np.float32), pa.float32(), mask=~has)
        cols["n_matched"] = pa.array(nmatch.astype(np.int32), pa.int32(), mask=~has)
        # a precursor m/z of 0 or less counts as none (as given in memory; the readers make it NaN)
        with np.errstate(invalid="ignore"):
            qpmz = np.where(qpmz > 0, qpmz, np.nan)
            lpmz = np.where(lpmz > 0, lpmz, np.nan)
        cols["query_precursor_mz"] = pa.array(qpmz, pa.float64(), mask=~np.isfinite(qpmz))
        cols["library_precursor_mz"] = pa.array(lpmz, pa.float64(), mask=~np.isfinite(lpmz))
        with np.errstate(invalid="ignore", divide="ignore"):
            dmz = qpmz - lpmz
            dppm = dmz / qpmz * 1e6
        cols["delta_mz"] = pa.array(dmz, pa.float64(), mask=~np.isfinite(dmz))
        cols["delta_ppm"] = pa.array(dppm, pa.float64(), mask=~np.isfinite(dppm))
        # in canonical spelling where the adduct parser reads it (as --same-adduct compares them; a library
        # mixing GNPS's M+H and [M+H]+ groups as one), else as written; formulas likewise
        cols["adduct"] = strings("adduct")
        if meta is not None and self.library.has_array("adduct_code"):
            # the hits' codes only: converting the whole column first cost 1.6 ms a table at 2.4M
            codes = np.asarray(self.library.array("adduct_code")[uniq], dtype=np.int64)
            keys = pa.array(self.library.keys("adduct").astype(str).tolist(), pa.string())
            canon = keys.take(pa.array(np.maximum(codes, 0), pa.int64(), mask=codes < 0)) if len(keys) else \
                pa.nulls(codes.shape[0], pa.string())
            cols["adduct"] = pc.coalesce(canon.take(per_hit), cols["adduct"])
        cols["formula"] = pc.coalesce(strings("formula_canonical"), strings("formula"))
        # the stored InChIKey's first block where no inchikey14 is stored (an empty one counts as none)
        ik14, ik = strings("inchikey14"), strings("inchikey")
        given = pc.fill_null(pc.greater(pc.utf8_length(ik14), 0), False)
        from_ik = pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(ik), 0), False),
                             pc.utf8_slice_codeunits(ik, 0, 14), pa.scalar(None, pa.string()))
        cols["inchikey14"] = pc.if_else(given, ik14, from_ik)
        cols["smiles"] = strings("smiles")
        cols["name"] = strings("name")
        cols["status"] = pa.array(self.status.tolist(), pa.string()).take(per_query)
        cols["fallback"] = pa.array(self.fallback[q_index] if n else np.zeros(0, bool), pa.bool_())
        cols["query_formula"] = (pa.nulls(q_index.shape[0], pa.string()) if self.query_formulas is None else
                                 pa.array(self.query_formulas, pa.string()).take(per_query))
        cols["rejected_reason"] = (pa.nulls(q_index.shape[0], pa.string()) if self.rejected_reasons is None else
                                   pa.array(self.rejected_reasons, pa.string()).take(per_query))
        table = pa.table(cols)
        return table.replace_schema_metadata({"fastspec": json.dumps(self.params, default=str)})

    def to_pandas(self, library_columns: bool = True):
        """The hit table of :meth:`to_arrow` (``library_columns`` as there) as a pandas DataFrame (requires
        pandas); the search parameters are in ``df.attrs["fastspec"]``."""
        try:
            import pandas  # noqa: F401  (pyarrow's own error names no remedy)
        except ImportError as e:
            raise FastspecError("Hits.to_pandas needs pandas, which fastspec does not install: pip install pandas "
                                "(or use to_arrow())") from e
        table = self.to_arrow(library_columns)
        df = table.to_pandas()
        # integer columns with nulls as nullable integers: a query without hits made rank, library_index and
        # n_matched float64 (columns without nulls keep numpy's int64, and its speed)
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_integer(col.type) and col.null_count:
                df[name] = col.to_pandas(types_mapper=_nullable_int)
        df.attrs["fastspec"] = self.params
        return df

    def to_parquet(self, path: "str | Path") -> None:
        """Write :meth:`to_arrow` as Parquet (parameters in the schema metadata), atomically (as
        :meth:`write`)."""
        write_atomically(path, self._write_parquet, needs_seek="Parquet", direct_file=True)

    def to_csv(self, path: "str | Path", delimiter: str = ",") -> None:
        """Write :meth:`to_arrow` as CSV/TSV with the parameters in leading ``#`` lines, atomically (as
        :meth:`write`); gzipped when ``path`` ends in ``.gz``."""
        write_atomically(path, lambda p: self._write_csv(p, delimiter, gzipped(path)))

    def write(self, path: "str | Path", output_format: str | None = None) -> None:
        """Write by extension: ``.parquet`` / ``.pq``, ``.tsv`` / ``.tab`` / ``.txt`` or ``.csv``, the
        text formats optionally gzipped (``.tsv.gz``, ``.csv.gz``); or as ``output_format`` says (one of
        :data:`TABLE_FORMATS`, e.g. for ``/dev/stdout``, whose name has no extension).

        Written to a temporary sibling and renamed into place, so an interrupted write never leaves a
        truncated table where a previous one was.
        """
        delimiter, gz = table_kind(path, output_format)
        if delimiter is None:
            self.to_parquet(path)
        else:
            write_atomically(path, lambda p: self._write_csv(p, delimiter, gz))

    def _write_parquet(self, where) -> None:
        import pyarrow.parquet as pq

        pq.write_table(self.to_arrow(), where, compression="zstd")  # a path, or a device opened (write_atomically)

    def _write_csv(self, path: str, delimiter: str, gz: bool = False) -> None:
        import pyarrow.csv as pcsv

        table = self.to_arrow()
        with open_output(path, gz) as f:
            f.write(csv_header(self.params))
            pcsv.write_csv(table.replace_schema_metadata(None), f,
                           write_options=pcsv.WriteOptions(delimiter=delimiter, quoting_style="needed"))


def _query_rows(sel, n: int) -> np.ndarray:
    """The query rows ``sel`` selects among ``n`` (int64 (m,)), as numpy selects rows: an int (negative from
    the end), a slice, int rows or a boolean mask of length ``n``; IndexError for anything else. An int or a
    slice costs nothing per query (iterating a 2.4M-query Hits took 1 ms a query when each built a range)."""
    bad = IndexError("Hits are indexed by query: hits[i], hits[a:b], hits[rows] or hits[mask]")
    if isinstance(sel, (bool, np.bool_)) or sel is None or isinstance(sel, tuple):
        raise bad
    if isinstance(sel, (int, np.integer)):
        i = int(sel)
        if not -n <= i < n:
            raise IndexError(f"query {i} out of range for {n} queries")
        return np.array([i % n], dtype=np.int64)
    if isinstance(sel, slice):
        return np.arange(*sel.indices(n), dtype=np.int64)
    a = np.asarray(sel)
    if a.ndim != 1:
        raise bad
    if a.dtype.kind == "b":
        if a.shape[0] != n:
            raise IndexError(f"a boolean mask of {a.shape[0]} values for {n} queries")
        return np.flatnonzero(a).astype(np.int64)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype.kind not in "iu":
        raise bad
    a = a.astype(np.int64)
    if a.min() < -n or a.max() >= n:
        raise IndexError(f"query rows out of range for {n} queries")
    return np.where(a < 0, a + n, a)


def csv_header(params: dict) -> bytes:
    """The leading ``# key: value`` lines (values as JSON) of a CSV/TSV hit table."""
    return "".join(f"# {key}: {json.dumps(value, default=str)}\n" for key, value in params.items()).encode()


def table_format(path: "str | Path") -> str | None:
    """A hit table's format by extension: None for Parquet (``.parquet``, ``.pq``), else the delimiter of
    CSV (``.csv``) or TSV (``.tsv``, ``.tab``, ``.txt``), each of those optionally gzipped (``.csv.gz``);
    ParameterError for any other."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    suffix = Path(name[:-3] if gz else name).suffix
    if suffix in (".parquet", ".pq") and not gz:  # Parquet compresses its own columns (zstd)
        return None
    if suffix in (".tsv", ".tab", ".txt"):
        return "\t"
    if suffix == ".csv":
        return ","
    shown = suffix + ".gz" if gz else suffix
    if not shown:  # (as a device or pipe such as /dev/stdout: its name is all there is to go by)
        raise ParameterError(f"{path}: no extension to tell the hit table format by: end the name in .parquet, "
                             ".tsv or .csv (.tsv.gz and .csv.gz gzipped), or name the format (fastspec query "
                             "--output-format, output_format=)")
    raise ParameterError(f"unknown hit table format {shown!r}: use .parquet, .tsv or .csv "
                         "(.tsv.gz and .csv.gz gzipped)")


#: Hit table formats a caller can name instead of the extension (``output_format``): (delimiter, None for
#: Parquet; gzipped)
TABLE_FORMATS = {"parquet": (None, False), "tsv": ("\t", False), "csv": (",", False), "tsv.gz": ("\t", True),
                 "csv.gz": (",", True)}


def table_kind(path: "str | Path", output_format: str | None = None) -> tuple[str | None, bool]:
    """(delimiter, None for Parquet; gzipped) of a hit table written to ``path``: as ``output_format`` says
    when given (a key of :data:`TABLE_FORMATS`), else by extension (:func:`table_format`, :func:`gzipped`)."""
    if output_format is None:
        kind = table_format(path), gzipped(path)
    else:
        kind = TABLE_FORMATS.get(str(output_format).lower()) if isinstance(output_format, str) else None
        if kind is None:
            raise ParameterError(f"output_format must be one of {', '.join(TABLE_FORMATS)}, got {output_format!r}")
        try:  # a table extension that says otherwise: the file would be misread by its name later
            by_name = table_format(path), gzipped(path)
        except ParameterError:
            by_name = kind  # no table extension (/dev/stdout, "hits"): the format given decides
        if by_name != kind:
            raise ParameterError(f"{path}: its extension names another format than the output format "
                                 f"{output_format!r}: rename it or leave the format out")
    if kind[0] is None:  # before the search, not after it ("I/O error: lseek failed")
        check_seekable(path, "Parquet", "TSV or CSV (output format tsv or csv)")
    return kind


def gzipped(path: "str | Path") -> bool:
    """Whether a text hit table is to be gzipped (its name ends in ``.gz``)."""
    return str(path).lower().endswith(".gz")


# ====================================================================================== search


def _path_text(path: str | None) -> str | None:
    """A file path as table text: a name whose bytes are not UTF-8 (Python holds them as surrogate
    escapes, which Arrow refuses) shows its raw bytes as ``\\xNN``."""
    if path is None:
        return None
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            return os.fsencode(path).decode("utf-8", "backslashreplace")
        except UnicodeError:
            return path.encode("utf-8", "backslashreplace").decode("utf-8")
