"""Library search: candidate generation per mode, exact rescoring, and the :class:`Hits` result.

Modes
-----
``identity``
    Candidates are the library spectra whose precursor m/z lies within ``precursor_tolerance`` of the
    query's (binary search in the precursor-sorted permutation); all are scored exactly.
``formula``
    Candidates share the query's canonical Hill formula (from its metadata or ``formula=``).
``open``
    The whole library, exactly: the fragment-ion index gives every spectrum sharing a peak with the
    query an upper bound of its score; candidates are scored exactly in bound order until the k-th
    exact score beats every remaining bound (:mod:`fastspec.kernels.fragment`).
``analog``
    Like ``open`` for modified cosine, with the neutral-loss index adding the shifted partners.

Every mode keeps a query away from library spectra of the other polarity (unknown matches both) and
applies the optional charge / adduct / instrument filters. Scores come from :mod:`fastspec.similarity`.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra
from fastspec.tolerance import Tolerance, parse_tolerance

MODES = ("identity", "formula", "open", "analog", "hybrid")
ENGINES = ("exact", "faiss")
NO_NEIGHBOUR = ("skip", "fallback", "empty")
#: metrics whose prepared weights at mz_power 0 / intensity_power 1 are the stored intensities
_RAW_WEIGHTS = ("cosine", "modified_cosine")
#: metrics whose whole-library search runs through the fragment index (kind, weight name)
_BOUNDED = {"cosine": (0, "cosine"), "entropy": (1, "entropy"), "unweighted_entropy": (1, "unweighted_entropy"),
            "modified_cosine": (0, "cosine")}
_ENTROPY = ("entropy", "unweighted_entropy")
#: Library spectra per chunk while the whole library is prepared (binned-cosine postings, brute force).
_BIN_CHUNK = 1 << 17
#: Most bins the inverted bin index takes (a count per bin, int32 bin ids); finer bins are scored by
#: brute force (2,000 Da at 1e-4 Da bins is 20M bins).
_BIN_MAX = 1 << 26
_DEFAULT_METRIC = {"identity": "cosine", "formula": "cosine", "open": "cosine", "analog": "modified_cosine",
                   "hybrid": "entropy"}
#: Identity search through the precursor-block index: candidates of best bound scored first per query
#: (k more than this), and the widest window (in spectra of the precursor order) bounded; wider windows
#: are scored in full. 2.4M MassBank-grown library, 1,000 queries, 1 thread, 7 interleaved rounds, same
#: hits, median ms/query against 16: 4 -> cosine 0.088 / 0.100, entropy 0.087 / 0.107, modified cosine
#: 0.085 / 0.098 (0 and 2 alike, 32 slower); held-out compounds (smaller windows) 0.022 / 0.024 cosine,
#: entropy unchanged. The k-th exact score of a few more candidates is rarely a better floor than the
#: k-th of the best-bounded k, and ties in the bound add candidates anyway.
_WINDOW_FIRST = 4
_WINDOW_SPAN = 1 << 17
#: Relative slack of the precursor-block cosine bounds against exact scores. They are float64 sums of
#: products of float64 query weights and float32-rounded library weights (each product off by at most
#: 2**-24, 6e-8, relative; all terms positive), compared with float64 greedy scores: 1e-6 covers that
#: 16 times over. The fragment-index bounds' BOUND_RTOL (1e-4) covers float32 sums, and entropy keeps
#: it (its exact kernel computes in float32, as ms_entropy does). 2.4M MassBank-grown library, 1,000
#: queries, k=10: windows scored a second time 148 -> 6, candidates in them 23,365 -> 183 (cosine
#: spectra of a clean library are paired one to one, so near-ties of the bound are near-ties of the
#: score, which 1e-4 let in by the hundred).
_WINDOW_RTOL = 1e-6
#: Open search: a precursor-window threshold at least this high is kept as it is (no FAISS neighbours
#: looked up; _Context._first_theta).
_THETA_WINDOW_ENOUGH = 0.5
#: first pruning threshold of open/analog search: FAISS neighbours rescored exactly (_Context._first_theta);
#: 100 candidates at nprobe 4 measured best among 100-500 and nprobe 1-16
_THETA_FAISS = 100
#: analog search: since its bound scan prunes with the threshold too, 300 pays (2.4M MassBank-grown, 1,000
#: queries, same process, ms/query: 100 -> 4.13-4.17, 300 -> 3.78-3.80, 1000 -> 3.76-3.98; spectra
#: reached per query 21.2k -> 15.2k -> 13.4k). Open search showed no gain within the noise.
_THETA_FAISS_ANALOG = 300
#: analog: queries left without a threshold (fewer than k hits among those candidates: the IVF lists
#: probed can be mostly the other polarity's spectra, dropped by the filter) ask FAISS again for this
#: many. Without a threshold the bound scan prunes nothing. 2.4M MassBank-grown library, 300 real
#: spectra of compounds it does not hold (6 without a threshold), 1 thread, ms/query: 5.59 -> 4.14
#: (nprobe 16: 4.24; 500 candidates: no gain). Open search: slower (its thresholdless queries have weak
#: hits anyway: 1.96 -> 2.08 ms, 4.54 -> 4.68 ms entropy), so analog only.
_THETA_FAISS_AGAIN = 2000
_THETA_NPROBE = 4
#: analog search: queries whose threshold is still below ``_HEAVY_BELOW`` take one from the
#: ``_HEAVY_CANDIDATES`` spectra that best match their ``_HEAVY_PEAKS`` heaviest peaks, fragments and
#: neutral losses, rescored exactly (_Context._heavy_theta). FAISS's binned vectors miss analogs that
#: match through the precursor shift only: on a 2.4M MassBank-grown library, of 281 novel-compound
#: queries, 44 had a k-th score of 0.95 (median) but a FAISS threshold of 0.04 (their hits' plain cosine:
#: 0.0), and took 13 ms each. 300 queries, 1 thread, interleaved, same hits, ms/query (median of 4):
#: 6.40 -> 5.28 (0.82x) with one peak below 0.7; below 0.6 5.28, 0.9 slower; 2-3 peaks cost more
#: than they save (without _HEAVY_BAND the pass does not prune: 3.7 ms per query at one peak, 44.7k
#: spectra reached); library copies as queries 2.20 -> 2.28 (noise). With _HEAVY_BAND 0.5, two peaks
#: or a 0.9 limit were no better. Open search gained nothing (cosine 0.97x, entropy 1.0-1.3x: its weak
#: thresholds are weak hits).
_HEAVY_PEAKS = 1
_HEAVY_BELOW = 0.7
_HEAVY_CANDIDATES = 300
#: the heavy pass reaches only spectra whose partner of the query's heaviest peak has at least this scan
#: weight (see _Context._heavy_theta): same 300 queries, 7 interleaved runs, median ms/query, against
#: every partner: novel compounds 5.54 -> 4.94 (0.89x), library copies 2.27 -> 2.11; 0.3 / 0.7 alike
_HEAVY_BAND = 0.5
#: open search asks FAISS only from this library size on: below, the bound kernel's own precursor-window
#: threshold suffices (100k: open cosine 0.171 ms/query without, 0.205 with; 1M: 1.45 -> 1.37; 2.4M: 4.3 -> 3.4)
_THETA_FAISS_OPEN_MIN = 500_000

#: status of a query row in Hits
OK, NO_HIT, NO_PEAKS, NO_PRECURSOR, NO_NEIGHBOUR_SKIPPED = "ok", "no_hit", "no_peaks", "no_precursor", "no_neighbour"
MS1 = "ms1"  # an MS1 record among the queries (ms_level 1): the library holds tandem spectra only
REJECTED = "rejected"  # a query record the reader could not use (on_error="skip"; why: params["query_records"])

HIT_COLUMNS = (
    "query_index", "query_id", "query_file", "rank", "library_index", "library_input_index", "library_file",
    "library_id", "score", "n_matched",
    "query_precursor_mz", "library_precursor_mz", "delta_mz", "delta_ppm", "adduct", "formula",
    "inchikey14", "smiles", "name", "status", "fallback",
)


# ====================================================================================== Hits
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
        (identity mode without a precursor m/z), ``no_neighbour`` (formula mode, skipped) or ``ms1``
        (an MS1 record, ``ms_level`` 1, as SIRIUS/MZmine MGF exports interleave them: not searched).
    fallback : ndarray of bool (n,)
        Formula mode: the query had no same-formula neighbour and was searched against the whole library.
    query_ids : list of str
        Each query's id (its ``id`` metadata: MGF TITLE or SPECTRUMID, MSP DB#, ...), else its position
        among the records read (the row's ``query_index``). Rejected records keep the id the reader got
        to, else they too are named by their position.
    query_files : list of str or None
        The file each query record was read from (as given, or as found in a directory given), so that ids
        repeated across files (mzML native ids such as ``scan=2``) stay apart; ``None`` for queries given
        in memory.
    query_precursor_mz : ndarray, float64 (n,)
    params : dict
        The search parameters (mode, metric, tolerances, filters, library path and build parameters),
        and ``query_records``: records read from the query files, rejected by the reader (on_error
        ``"skip"``: their rows have status ``rejected``) and why.
    """

    def __init__(self, scores, indices, matches, *, status, fallback=None, query_ids=None, query_precursor_mz=None,
                 library=None, params=None, query_files=None):
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
        self.query_precursor_mz = np.full(n, np.nan) if query_precursor_mz is None else np.asarray(query_precursor_mz, np.float64)
        self.library = library
        self.params = dict(params or {})

    def __len__(self) -> int:
        return self.scores.shape[0]

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
        """Queries not searched (rejected by the reader, no peaks, MS1, no precursor in identity mode, no
        formula neighbour with skip)."""
        return np.isin(self.status, [NO_PEAKS, MS1, NO_PRECURSOR, NO_NEIGHBOUR_SKIPPED, REJECTED])

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
        over the query's precursor m/z, as ppm precursor windows are), adduct, formula, inchikey14,
        smiles, name, status, fallback`` (formula mode: the hits come from the whole library because no
        same-formula spectrum was found, ``no_neighbour="fallback"``). Search parameters are in the
        schema metadata (key ``fastspec``, JSON).
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
            "query_index": pa.array(q_index + first, pa.int64()) if first else per_query,
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
            if meta is not None and column in meta.column_names:
                return meta.column(column).cast(pa.string()).combine_chunks().take(per_hit)
            if fallback is not None and has.any():  # also for hits without a library (row numbers)
                return pa.array(np.asarray(fallback)[has].astype(str).tolist(), pa.string()).take(
                    pa.array(np.cumsum(has) - 1, pa.int64(), mask=~has))
            return pa.nulls(q_index.shape[0], pa.string())

        # a library without ids names its spectra by row; without library columns the id stays null (row
        # numbers there would pass for ids)
        cols["library_id"] = strings("id", fallback=lib_idx if library_columns else None)
        cols["score"] = pa.array(score.astype(np.float32), pa.float32(), mask=~has)
        cols["n_matched"] = pa.array(nmatch.astype(np.int32), pa.int32(), mask=~has)
        cols["query_precursor_mz"] = pa.array(qpmz, pa.float64(), mask=~np.isfinite(qpmz))
        cols["library_precursor_mz"] = pa.array(lpmz, pa.float64(), mask=~np.isfinite(lpmz))
        with np.errstate(invalid="ignore", divide="ignore"):
            dmz = qpmz - lpmz
            dppm = dmz / qpmz * 1e6
        cols["delta_mz"] = pa.array(dmz, pa.float64(), mask=~np.isfinite(dmz))
        cols["delta_ppm"] = pa.array(dppm, pa.float64(), mask=~np.isfinite(dppm))
        cols["adduct"] = strings("adduct")
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
        table = pa.table(cols)
        return table.replace_schema_metadata({"fastspec": json.dumps(self.params, default=str)})

    def to_pandas(self, library_columns: bool = True):
        """The hit table of :meth:`to_arrow` as a pandas DataFrame (requires pandas); the search
        parameters are in ``df.attrs["fastspec"]``."""
        table = self.to_arrow(library_columns)
        df = table.to_pandas()
        df.attrs["fastspec"] = self.params
        return df

    def to_parquet(self, path: "str | Path") -> None:
        """Write :meth:`to_arrow` as Parquet (parameters in the schema metadata)."""
        import pyarrow.parquet as pq

        pq.write_table(self.to_arrow(), str(path), compression="zstd")

    def to_csv(self, path: "str | Path", delimiter: str = ",") -> None:
        """Write :meth:`to_arrow` as CSV/TSV with the parameters in leading ``#`` lines."""
        import pyarrow.csv as pcsv

        table = self.to_arrow()
        with open(path, "wb") as f:
            f.write(csv_header(self.params))
            pcsv.write_csv(table.replace_schema_metadata(None), f,
                           write_options=pcsv.WriteOptions(delimiter=delimiter, quoting_style="needed"))

    def write(self, path: "str | Path") -> None:
        """Write by extension: ``.parquet``, ``.tsv`` / ``.tab`` or ``.csv``.

        Written to a temporary sibling and renamed into place, so an interrupted write never leaves a
        truncated table where a previous one was.
        """
        delimiter = table_format(path)
        if delimiter is None:
            write_atomically(path, self.to_parquet)
        else:
            write_atomically(path, lambda p: self.to_csv(p, delimiter=delimiter))


def csv_header(params: dict) -> bytes:
    """The leading ``# key: value`` lines (values as JSON) of a CSV/TSV hit table."""
    return "".join(f"# {key}: {json.dumps(value, default=str)}\n" for key, value in params.items()).encode()


def table_format(path: "str | Path") -> str | None:
    """A hit table's format by extension: None for Parquet (``.parquet``, ``.pq``), else the delimiter of
    CSV (``.csv``) or TSV (``.tsv``, ``.tab``, ``.txt``); ParameterError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return None
    if suffix in (".tsv", ".tab", ".txt"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise ParameterError(f"unknown hit table format {suffix or '(none)'!r}: use .parquet, .tsv or .csv")


def write_atomically(path: "str | Path", write) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` and rename it into place, so that an
    interrupted write never leaves a truncated file where a previous one was; the temporary is removed
    on any error, and an OSError names ``path``, not the temporary."""
    import uuid

    from fastspec._indexfmt import ACTIVE_TEMPORARIES

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    ACTIVE_TEMPORARIES.add(tmp)
    try:
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as e:  # name the file asked for, not the temporary (a full disk, no permission)
            if e.errno is None or (e.filename is not None and not os.fspath(e.filename).startswith(str(tmp))):
                raise  # about another file (a query file not found)
            # pyarrow puts the path it opened into the message itself (the temporary, or the rows file a
            # chunked CSV/TSV writes beside it: fastspec.stream)
            why = re.sub(re.escape(str(tmp)) + r"(\.rows)?", lambda m: str(path), e.strerror or str(e))
            raise type(e)(e.errno, why, str(path)) from e
    finally:
        ACTIVE_TEMPORARIES.discard(tmp)
        if tmp.exists():
            tmp.unlink()


# ====================================================================================== search
def search(
    library,
    queries: Any,
    k: int = 10,
    *,
    mode: str = "identity",
    metric: str | None = None,
    tolerance: "float | str | Tolerance" = 0.02,
    precursor_tolerance: "float | str | Tolerance" = 0.01,
    engine: str = "exact",
    threads: int | None = None,
    formula: "str | Sequence[str | None] | None" = None,
    no_neighbour: str = "skip",
    same_adduct: bool = False,
    same_charge: bool = False,
    same_instrument: bool = False,
    min_matches: int = 0,
    min_score: float = 0.0,
    nprobe: int | None = None,
    n_candidates: int | None = None,
    on_error: str = "skip",
    progress: bool | None = None,
    mz_power: float = 0.0,
    intensity_power: float = 1.0,
    **metric_params: Any,
) -> Hits:
    """Search ``queries`` against ``library``.

    A query is only ever matched with library spectra of its own polarity (or of unknown polarity;
    a query of unknown polarity matches both): ms_entropy's search has no such filter, so on a library
    of mixed polarity its hits can differ by the other polarity's spectra.

    Parameters
    ----------
    library : Library
    queries : Spectra, one spectrum (``spectra[i]``), a list of matchms ``Spectrum``, path or list of paths
        Preprocessed with the library's recorded pipeline before scoring.
    k : int
        Hits per query.
    mode : {"identity", "formula", "open", "analog", "hybrid"}
    metric : str, optional
        Any :mod:`fastspec.similarity` metric; default ``cosine`` (``modified_cosine`` for analog,
        ``entropy`` for hybrid). ``hybrid`` is ms_entropy's hybrid search over the whole library: entropy
        similarity where each query peak matches a fragment, else a neutral loss (Da tolerances; see
        :func:`fastspec.kernels.entropy.hybrid_entropy_pair`), exact through the fragment and
        neutral-loss indexes.
        ``open`` is exact through the fragment index for cosine and (unweighted) entropy, and through
        an inverted bin index (built on first use, kept with the open library) for ``binned_cosine``;
        other metrics score every library spectrum. ``open`` with modified cosine is ``analog``.
    tolerance : float or str
        Fragment tolerance (float = Da, or ``"0.02da"``, ``"10ppm"``).
    precursor_tolerance : float or str
        Identity-mode precursor window (relative to the query precursor for ppm).
    engine : {"exact", "faiss"}
        ``faiss``: candidates from the FAISS index (``nprobe``, ``n_candidates``), rescored exactly
        (open/analog/hybrid modes).
    threads : int, optional
        numba and FAISS threads.
    formula : str or list of str, optional
        Formula mode: the queries' formulas (default: their ``formula`` metadata).
    no_neighbour : {"skip", "fallback", "empty"}
        Formula mode, query without a same-formula library spectrum: ``skip`` -> a row with status
        ``no_neighbour``; ``fallback`` -> search every library spectrum of the same polarity (``fallback``
        flag set); ``empty`` -> a row with status ``no_hit``.
    same_adduct, same_charge, same_instrument : bool
        Keep only library spectra with the query's adduct / charge / instrument type (when the query's is known;
        queries without one, or with an adduct no parser reads, match any, and are counted per filter in
        ``Hits.params["filters_not_applied"]``).
    min_matches : int
        Minimum matched peaks of a hit (a hit always has at least one).
    min_score : float
        Minimum score of a hit.
    on_error : {"skip", "raise"}
        Unreadable query records (when ``queries`` are paths).
    mz_power, intensity_power, **metric_params
        Passed to :func:`fastspec.similarity.prepare` (cosine family; unknown names raise ParameterError).
        Entropy metrics score the library's stored (preprocessed) peaks and the queries after the same
        preprocessing as they are (``clean=False``: only sum-normalised and weighted), the peaks the
        fragment-index bounds are computed on; ``clean=True`` and non-default powers are refused. The
        default pipeline cleans as ms_entropy's ``clean_spectrum_for_search`` does, to the bit (see
        :func:`fastspec.preprocess.default_pipeline`), so scores equal its ``FlashEntropySearch``'s.

    Returns
    -------
    Hits
    """
    from fastspec.library import read_input

    cfg = _SearchConfig.cached(library, k, mode, metric, tolerance, precursor_tolerance, engine, threads, no_neighbour,
                               same_adduct, same_charge, same_instrument, min_matches, min_score, nprobe, n_candidates,
                               mz_power, intensity_power, metric_params)
    _check_formula(cfg, formula)
    raw, read_counts = read_input(queries, on_error)
    found = _search_spectra(library, cfg, raw, formula, progress)
    params = cfg.describe(library)
    if found.unfiltered:
        params["filters_not_applied"] = found.unfiltered
    # query records the reader rejected (on_error="skip") keep their place: a row with status "rejected";
    # the counts say why
    params["query_records"] = _query_records(read_counts)
    n_read = int(read_counts["n_read"])
    return _record_hits(library, params, raw, found, read_counts.get("positions"), n_read,
                        _record_files(read_counts.get("files"), n_read), read_counts.get("rejected_ids") or {})


def _formula_texts(values) -> list:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]


def caller_formulas(values) -> list[str | None]:
    """Canonical formulas of the caller's ``formula=`` list; one that does not parse is a mistake, not a
    miss (ParameterError)."""
    from fastspec.library import canonical_formulas

    given = _formula_texts(values)
    canon = canonical_formulas(given)
    bad = sorted({g for g, c in zip(given, canon) if c is None and g is not None and g.strip()})
    if bad:
        raise ParameterError(f"formula: cannot parse {bad[0]!r} as a molecular formula"
                             + (f" ({len(bad)} such values)" if len(bad) > 1 else ""))
    return canon


def _check_formula(cfg: "_SearchConfig", formula) -> None:
    if formula is not None and cfg.mode != "formula":
        raise ParameterError(f"formula applies to mode='formula', not {cfg.mode!r}")
    if isinstance(formula, str) and not formula.strip():
        raise ParameterError("formula is empty (leave it out to take each query's formula from its metadata)")


def _query_records(counts: dict) -> dict:
    """``Hits.params["query_records"]`` from a read's counts (:func:`fastspec.library.read_input`)."""
    # keys sorted: a reader meets them in an order that can depend on its block size
    return {"read": int(counts["n_read"]), "rejected": int(counts["n_rejected"]),
            "rejected_by_reason": dict(sorted(counts["rejected"].items())),
            "warnings": dict(sorted((counts.get("warnings") or {}).items()))}


class _Found(NamedTuple):
    """One row per query spectrum searched (:func:`_search_spectra`)."""
    scores: np.ndarray
    indices: np.ndarray
    matches: np.ndarray
    status: np.ndarray
    fallback: np.ndarray
    unfiltered: dict


def _search_spectra(library, cfg: "_SearchConfig", raw: Spectra, formula, progress) -> _Found:
    """Search query spectra as read (preprocessed here with the library's pipeline); ``progress`` as
    :meth:`_Context.start_progress`'s ``enabled``."""
    from fastspec.kernels._memory import retain_freed_memory
    from fastspec.library import _is_ms1, apply_pipeline

    retain_freed_memory()  # per-batch arrays reuse freed memory instead of fresh zero-filled pages
    qproc = apply_pipeline(library.pipeline, raw, cfg.threads)
    nq = len(qproc)
    scores = np.zeros((nq, cfg.k), dtype=np.float64)
    indices = np.full((nq, cfg.k), -1, dtype=np.int64)
    matches = np.zeros((nq, cfg.k), dtype=np.int32)
    status = np.full(nq, OK, dtype=object)
    fallback = np.zeros(nq, dtype=bool)
    has_peaks = np.diff(qproc.offsets) > 0
    status[~has_peaks] = NO_PEAKS
    ms1 = _is_ms1(raw.metadata)
    status[ms1] = MS1
    has_peaks &= ~ms1  # searched: tandem spectra with peaks left
    ctx = _Context(library, qproc, cfg)
    searchable = np.flatnonzero(has_peaks)
    ctx.start_progress(progress, searchable.shape[0])
    try:
        _dispatch(ctx, cfg, qproc, raw, formula, searchable, has_peaks, scores, indices, matches, status, fallback)
    finally:
        ctx.close()
    status[(status == OK) & (indices[:, 0] < 0)] = NO_HIT
    return _Found(scores, indices, matches, status, fallback, _unfiltered_queries(cfg, qproc, searchable))


def _record_hits(library, params: dict, raw: Spectra, found: _Found, pos, n_records: int, record_files,
                 rejected_ids: dict, first: int = 0) -> Hits:
    """Hits with a row for every record of a run of ``n_records`` records read: the searched spectra's rows
    at ``pos`` (their positions in the run, int64 (len(raw),)), status ``rejected`` for the other records.

    ``first`` is the position of the run's first record among all records read (a chunk of a larger
    search): a query without an id is named by that position, as its ``query_index``. ``record_files``:
    the file of each record of the run (or None); ``rejected_ids``: run position -> id the reader got to.
    """
    scores, indices, matches, status, fallback = found[:5]
    nq = len(raw)
    pmz = np.asarray(raw.precursor_mz, dtype=np.float64)
    placed = pos is not None and len(pos) == nq
    if placed and (first or n_records > nq):  # a query without an id is named by its record position
        given = raw.column("id")
        ids = [str(v) if v is not None else str(first + int(p)) for v, p in zip(given, pos)]
    else:
        ids = list(raw.ids)
    files = None
    if record_files is not None:
        files = record_files if n_records == nq else [record_files[int(p)] for p in pos] if placed else None
    if placed and n_records > nq:
        def grow(a, fill):
            out = np.full((n_records,) + a.shape[1:], fill, dtype=a.dtype)
            out[pos] = a
            return out

        scores, indices, matches = grow(scores, 0.0), grow(indices, -1), grow(matches, 0)
        status, fallback, pmz = grow(status, REJECTED), grow(fallback, False), grow(pmz, np.nan)
        # a rejected record without an id the reader could see is named by its position too
        named = np.asarray([str(first + r) for r in range(n_records)], dtype=object)
        named[pos] = ids
        ids = named.tolist()
        for r, rid in rejected_ids.items():  # as far as the reader got
            if 0 <= r < n_records:
                ids[r] = rid
        files = record_files
    return Hits(scores, indices, matches, status=status, fallback=fallback, query_ids=ids,
                query_precursor_mz=pmz, library=library, params=params, query_files=files)


def _unfiltered_queries(cfg: _SearchConfig, q: Spectra, searched: np.ndarray) -> dict:
    """Searched queries a requested filter could not apply to, per filter and reason: a query without a
    charge, adduct or instrument type of its own matches every library spectrum on that filter
    (:func:`_filter_codes`), which the hit table's metadata then says instead of leaving it silent.
    ``{"adduct": {"missing": 3, "unreadable": 1, "unreadable_examples": ["[Cat]+"]}}``; empty when all applied."""
    from fastspec.library import normalize_adducts

    out: dict = {}
    if not searched.shape[0]:
        return out
    if cfg.same_charge:
        n = int((q.charge[searched] == 0).sum())
        if n:
            out["charge"] = {"missing": n}
    for flag, name, col in ((cfg.same_adduct, "adduct", "adduct"), (cfg.same_instrument, "instrument", "instrument_type")):
        if not flag:
            continue
        column = q.column(col)
        vals = [column[int(i)] for i in searched]
        given = [None if v is None or not str(v).strip() else str(v).strip() for v in vals]
        counts: dict = {}
        missing = sum(g is None for g in given)
        if missing:
            counts["missing"] = missing
        if name == "adduct":
            bad = [g for g, a in zip(given, normalize_adducts(given)) if g is not None and a is None]
            if bad:
                counts["unreadable"] = len(bad)
                counts["unreadable_examples"] = sorted(set(bad))[:3]
        if counts:
            out[name] = counts
    return out


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


def _record_files(files: list | None, n_read: int) -> list[str] | None:
    """The file of every record read, in record order, from ``(path, records)`` per file; None for
    queries given in memory (or counts that do not add up, which the reader's own check rules out)."""
    if not files or sum(n for _, n in files) != n_read:
        return None
    return [path for path, n in files for _ in range(n)]


def _dispatch(ctx, cfg, qproc, raw, formula, searchable, has_peaks, scores, indices, matches, status, fallback):
    if cfg.mode == "identity":
        pmz = qproc.precursor_mz
        no_pmz = has_peaks & ~np.isfinite(pmz)
        status[no_pmz] = NO_PRECURSOR
        rows = np.flatnonzero(has_peaks & np.isfinite(pmz))
        ctx.run_identity(rows, scores, indices, matches)
    elif cfg.mode == "formula":
        fcodes = ctx.query_formula_codes(formula, raw)
        ctx.run_formula(searchable, fcodes, scores, indices, matches, status, fallback)
    elif cfg.engine == "faiss":
        ctx.run_faiss(searchable, scores, indices, matches)
    else:
        ctx.run_whole_library(searchable, scores, indices, matches)


#: k may exceed the library's size up to this (the hits are padded with -1, as FAISS does)
from fastspec.similarity import _K_PAD_MAX  # noqa: E402  (one limit for search and score_matrix)


class _SearchConfig:
    """Validated search parameters (never changed after :meth:`make`)."""

    @classmethod
    def cached(cls, library, *args):
        """:meth:`make`, remembered with the library for the same arguments (of the same types: ``k=True``
        must still be refused although ``True == 1``): a caller searching one query at a time repeats
        them. Arguments that cannot be hashed, or metric parameters, are validated afresh each time."""
        *plain, metric_params = args
        if metric_params:
            return cls.make(library, *args)
        try:
            key = ("search config",) + tuple((type(a), a) for a in plain)
            got = library._cache.get(key)
        except TypeError:  # an unhashable argument (a list as tolerance): make() says what is wrong
            return cls.make(library, *args)
        if got is None:
            got = cls.make(library, *args)
            configs = library._cache.setdefault("search configs", [])
            configs.append(key)
            if len(configs) > 32:  # a bounded few
                library._cache.pop(configs.pop(0), None)
            library._cache[key] = got
        return got

    @classmethod
    def make(cls, library, k, mode, metric, tolerance, precursor_tolerance, engine, threads, no_neighbour, same_adduct,
             same_charge, same_instrument, min_matches, min_score, nprobe, n_candidates, mz_power, intensity_power,
             metric_params):
        c = cls()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ParameterError(f"k must be a positive integer, got {k!r}")
        if k > max(len(library), _K_PAD_MAX):  # (n, k) arrays: k = 10**9 would ask for terabytes
            raise ParameterError(f"k={k} is more than both the library's {len(library)} spectra and "
                                 f"{_K_PAD_MAX} (k beyond the library size only pads with -1)")
        c.k = int(k)
        # case-insensitive, as metric names are ("OPEN", "FAISS")
        mode = mode.lower() if isinstance(mode, str) else mode
        engine = engine.lower() if isinstance(engine, str) else engine
        if mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        metric = _check_metric(metric or _DEFAULT_METRIC[mode])
        if mode == "open" and metric == "modified_cosine":
            mode = "analog"
        if mode == "analog" and metric != "modified_cosine":
            raise ParameterError(f"mode 'analog' searches with modified_cosine, not {metric!r} (use mode='open')")
        if mode == "hybrid" and metric not in _ENTROPY:
            raise ParameterError(f"mode 'hybrid' (ms_entropy's hybrid search) scores entropy or unweighted_entropy, "
                                 f"not {metric!r}")
        c.mode, c.metric = mode, metric
        c.tolerance = parse_tolerance(tolerance, "tolerance")
        if mode == "hybrid" and c.tolerance.unit != "da":
            raise ParameterError("mode 'hybrid' takes a Da tolerance, as ms_entropy's hybrid search does")
        c.precursor_tolerance = parse_tolerance(precursor_tolerance, "precursor_tolerance")
        if engine not in ENGINES:
            raise ParameterError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        if engine == "faiss":
            if mode not in ("open", "analog", "hybrid"):
                raise ParameterError("engine='faiss' applies to modes 'open', 'analog' and 'hybrid'")
            if not library.has_faiss:
                why = "it holds no spectra" if len(library) == 0 else "rebuild with faiss=True / --faiss"
                raise ParameterError(f"library {library.path} has no FAISS index ({why})")
        c.engine = engine
        if no_neighbour not in NO_NEIGHBOUR:
            raise ParameterError(f"no_neighbour must be one of {', '.join(NO_NEIGHBOUR)}; got {no_neighbour!r}")
        c.no_neighbour = no_neighbour
        c.threads = None if threads is None else _count(threads, "threads", 1)
        for name, flag in (("same_adduct", same_adduct), ("same_charge", same_charge), ("same_instrument", same_instrument)):
            if not isinstance(flag, (bool, np.bool_)):  # "no" would read as True
                raise ParameterError(f"{name} must be True or False, got {flag!r}")
        c.same_adduct, c.same_charge, c.same_instrument = bool(same_adduct), bool(same_charge), bool(same_instrument)
        c.min_matches = _count(min_matches, "min_matches", 0)
        c.min_score = _number(min_score, "min_score")
        c.nprobe = None if nprobe is None else _count(nprobe, "nprobe", 1)
        c.n_candidates = None if n_candidates is None else _count(n_candidates, "n_candidates", 1)
        if engine != "faiss" and (nprobe is not None or n_candidates is not None):  # set but never used
            raise ParameterError("nprobe and n_candidates apply to engine='faiss'")
        c.mz_power, c.intensity_power = _number(mz_power, "mz_power"), _number(intensity_power, "intensity_power")
        c.metric_params = dict(metric_params)
        _check_metric_params(c.metric_params)
        if metric in _ENTROPY:
            # the library holds preprocessed peaks and the fragment index's entropy weights are computed on
            # them as stored; rescoring must see the very same peaks, or the bounds would not hold
            if c.metric_params.pop("clean", False):
                raise ParameterError("entropy search scores the library's stored (preprocessed) peaks; clean=True "
                                     "is not supported -- choose the cleaning with the library's preprocessing")
            if (c.mz_power, c.intensity_power) != (0.0, 1.0):
                raise ParameterError("entropy search does not support mz_power / intensity_power")
            pipe = library.pipeline
            if metric == "entropy" and pipe is not None and any(name == "entropy_weight" for name, _ in pipe.steps):
                raise ParameterError("the library's preprocessing already applies entropy_weight, so metric "
                                     "'entropy' would weight its peaks twice; use metric='unweighted_entropy' "
                                     "(ms_entropy's weighted entropy of the peaks as read)")
        return c

    def metric_kwargs(self) -> dict:
        """Keyword arguments for :func:`fastspec.similarity.prepare` (same for queries and library).

        Entropy metrics get ``clean=False``: prepare then only sum-normalises and weights the peaks, so
        the exact scores are those of the stored peaks, on which the fragment-index bounds are computed;
        and ``flash=True`` with Da tolerances: peaks matched in FlashEntropySearch's float32 windows.
        """
        kw = dict(self.metric_params)
        kw["tolerance"] = self.tolerance
        if self.metric in _ENTROPY:
            kw["clean"] = False
            # peaks matched as FlashEntropySearch matches them (float32 windows), so scores are its
            kw["flash"] = self.tolerance.unit == "da"
            if self.mode == "hybrid":  # and as its hybrid search scores them
                kw["hybrid"] = True
        else:
            kw["mz_power"] = self.mz_power
            kw["intensity_power"] = self.intensity_power
        return kw

    def describe(self, library) -> dict:
        """The parameters for a hit table: fresh objects (a caller editing ``hits.params`` must not change
        this config, which later searches with the same arguments reuse, nor the library's manifest)."""
        return {
            "mode": self.mode, "metric": self.metric, "k": self.k, "tolerance": str(self.tolerance),
            "precursor_tolerance": str(self.precursor_tolerance), "engine": self.engine,
            "no_neighbour": self.no_neighbour, "same_adduct": self.same_adduct, "same_charge": self.same_charge,
            "same_instrument": self.same_instrument, "min_matches": self.min_matches, "min_score": self.min_score,
            "nprobe": self.nprobe, "n_candidates": self.n_candidates, "mz_power": self.mz_power,
            "intensity_power": self.intensity_power, "metric_params": _plain_copy(self.metric_params),
            "library": str(library.path), "library_n_spectra": len(library),
            "preprocess": _plain_copy(library.preprocess_config),
            "fastspec_version": library.manifest.get("fastspec_version"),
        }


def _plain_copy(value):
    """A copy of nested dicts, lists and tuples of plain values (JSON-like parameters): a few microseconds
    where ``copy.deepcopy`` takes a dozen, once per search call."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_copy(v) for v in value)
    return value


def _check_metric(metric: str) -> str:
    """The canonical metric name (aliases resolved); ParameterError for an unknown one."""
    from fastspec.similarity import canonical_metric

    return canonical_metric(metric)


#: search() arguments that are set by the search itself, not passed through to prepare()
_OWN_PARAMS = {"spectra", "metric", "tolerance", "mz_power", "intensity_power", "threads", "flash"}


def _check_metric_params(params: dict) -> None:
    """Extra keyword arguments must be :func:`fastspec.similarity.prepare` options."""
    if not params:  # the common case; inspecting the signature costs ~0.06 ms per search call
        return
    import inspect

    from fastspec.similarity import prepare

    allowed = set(inspect.signature(prepare).parameters) - _OWN_PARAMS
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ParameterError(f"unknown search option(s): {', '.join(unknown)}; metric options are "
                             f"{', '.join(sorted(allowed))}")


def _count(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _number(v, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ParameterError(f"{name} must be finite, got {v!r}")
    return f


def _kth_lower(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Each row's k-th exact score lowered by the bound kernel's float32 slack (-inf: fewer than k hits):
    a valid pruning threshold."""
    from fastspec.kernels import fragment as fk

    return np.where(indices[:, -1] >= 0, scores[:, -1] * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL, -np.inf)


class _Context:
    """Per-call state: the processed queries, their prepared form, filter codes, and the library."""

    def __init__(self, library, queries: Spectra, cfg: _SearchConfig):
        self.lib = library
        self.q = queries
        self.cfg = cfg
        self._qprep = None
        self._filters = None
        self._qweights: dict[str, np.ndarray] = {}  # bound weights of the queries, per weight kind
        self.stats: list[np.ndarray] = []  # per-round kernel diagnostics (see search_bounds)
        self.rounds = 0
        self.bar = None
        self._own_bar = True
        self.nested = 0  # fallback searches inside formula mode do not advance the bar twice
        self._borrowed: list[tuple[str, object, int]] = []  # library scratch lent to this search (see close)
        self._whole = None  # the whole library prepared for brute force (see prepared_library)
        self._prep_key = None  # the queries' preparation, as a key of the library's cache (see stored_view)

    def start_progress(self, enabled, total: int) -> None:
        """A tqdm bar of ``total`` queries on stderr (``enabled`` None: when stderr is a terminal), or the
        caller's own bar (a tqdm object, which a chunked search advances over its chunks; not closed here)."""
        import sys

        if enabled is not None and not isinstance(enabled, bool):
            self.bar, self._own_bar = enabled, False
            return
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="search", unit="query", file=sys.stderr, leave=False)

    def advance(self, n: int) -> None:
        if self.bar is not None and not self.nested:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None and self._own_bar:
            self.bar.close()
        for name, obj, generation in self._borrowed:
            self.lib.give_scratch(name, obj, generation)
        self._borrowed = []

    def scratch(self, name: str, make, fits=None):
        """A library scratch object of kind ``name`` for this search only (borrowed on first use,
        returned by :meth:`close`): concurrent searches on one Library never share one."""
        for n, obj, _ in self._borrowed:
            if n == name and (fits is None or fits(obj)):
                return obj
        obj, generation = self.lib.take_scratch(name, make, fits)
        self._borrowed.append((name, obj, generation))
        return obj

    # --------------------------------------------------------------------------- shared pieces
    @property
    def qprep(self):
        if self._qprep is None:
            from fastspec import similarity

            self._qprep = similarity.prepare(self.q, self.cfg.metric, **self.cfg.metric_kwargs())
        return self._qprep

    def filters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Filter codes (query (nq, f), library (n, f), symmetric (f,)); polarity always first."""
        if self._filters is None:
            self._filters = _filter_codes(self.lib, self.q, self.cfg)
        return self._filters

    def exact(self, rows: np.ndarray, cand_offsets: np.ndarray, cand_ids: np.ndarray, by_precursor: bool = False,
              cand_bounds: np.ndarray | None = None):
        """Exact top-k of queries ``rows`` over their candidate CSR -> scores, indices (library rows), matches.

        ``cand_ids`` are library rows, or with ``by_precursor`` positions in the precursor-ordered peak
        copy (see :meth:`window_candidates`); either way the hits are library rows, ties to the lowest.
        ``cand_bounds``: upper bounds of the candidates' scores, non-increasing within each query, to
        stop scoring a query early (:func:`fastspec.similarity.topk_candidates`).
        """
        from fastspec import similarity
        from fastspec.kernels.fragment import compact_ids

        k = self.cfg.k
        nr = rows.shape[0]
        if cand_ids.shape[0] == 0 or nr == 0:
            return np.zeros((nr, k)), np.full((nr, k), -1, np.int64), np.zeros((nr, k), np.int32)
        kw = self.cfg.metric_kwargs()
        in_place = self.cfg.metric in _RAW_WEIGHTS and kw.get("mz_power") == 0.0 and kw.get("intensity_power") == 1.0
        in_place = in_place and self.lib.has_array("prec_norm" if by_precursor else "norm")
        entropy_w = "prec_entropy_w" if by_precursor and not in_place and self.entropy_in_place() else None
        if in_place or entropy_w:
            lprep = self.stored_view(by_precursor, weights=entropy_w)
            cand, labels = cand_ids, (self.lib.array("prec_order")[: len(lprep)] if by_precursor else None)
        else:
            uniq, cand = compact_ids(cand_ids, self.lib_mark())
            # intensities straight from the gather in the dtype preparation reads: float64 for the cosine
            # family's weights, float32 for entropy (stored as float32; its kernels read float32)
            dtype = np.float32 if self.cfg.metric in _ENTROPY else np.float64
            peaks = self.lib.peaks(uniq, threads=self.cfg.threads, intensity_dtype=dtype, by_precursor=by_precursor)
            try:
                lprep = similarity.prepare_csr(*peaks, self.cfg.metric, threads=self.cfg.threads, **kw)
            except FastspecError:
                raise
            except ValueError as e:
                # the queries passed the same preparation first, so the stored values are damaged: a byte
                # flipped inside mz.npy, which the open-time checks do not read (1e300: bin ids past int64
                # made np.bincount fail)
                why = (str(e).splitlines() or [type(e).__name__])[0]
                raise self.lib._corrupted(f"preparing its stored peaks failed ({why})") from e
            labels = np.asarray(self.lib.array("prec_order")[uniq]) if by_precursor else uniq
        return self.score(rows, lprep, cand_offsets, cand, labels, cand_bounds)

    def score(self, rows: np.ndarray, lprep, cand_offsets: np.ndarray, cand: np.ndarray, labels=None,
              cand_bounds: np.ndarray | None = None):
        """Exact top-k of queries ``rows`` over candidates ``cand`` (CSR; rows of the prepared ``lprep``,
        reported as ``labels`` of them when given) -> scores, indices, matches. ``cand_bounds``: see
        :meth:`exact`."""
        from fastspec import similarity

        s, idx, m = similarity.topk_candidates(self.qprep.take(rows), lprep, cand_offsets, cand, self.cfg.k,
                                               metric=self.cfg.metric, threads=self.cfg.threads,
                                               min_matches=max(1, self.cfg.min_matches),
                                               min_score=self.cfg.min_score, labels=labels,
                                               cand_bounds=cand_bounds)
        return np.asarray(s, np.float64), idx, np.asarray(m, np.int32)

    def entropy_in_place(self) -> bool:
        """Whether entropy candidates in precursor order can be scored in place: the index stores the
        copy's entropy weights as this search prepares them (``prec_entropy_w``: weighted entropy of the
        stored peaks, not cleaned again, default powers; no tolerance enters that preparation)."""
        if self.cfg.metric != "entropy" or not self.lib.has_array("prec_entropy_w"):
            return False
        built = self.lib.manifest["build"].get("prec_entropy") or {}
        qp = self.qprep
        return (built.get("clean") is False and qp.params.get("clean") is False
                and qp.params.get("mz_power") == 0.0 and qp.params.get("intensity_power") == 1.0)

    def stored_view(self, by_precursor: bool = False, weights: str | None = None):
        """The stored peaks (library order, or the precursor-ordered copy) as a Prepared library, scored
        in place: no gather, no copy.

        Only for metrics whose prepared weights are the stored intensities (``_RAW_WEIGHTS`` at
        ``mz_power`` 0, ``intensity_power`` 1): the stored norms are then the prepared norms. Scoring
        candidates where they lie beats gathering them first: 2.4M MassBank-grown library, analog
        search, the gather alone took 0.85 s per 1,000 queries. ``weights`` (with ``by_precursor``): a
        stored array of prepared weights to read instead of the intensities (``prec_entropy_w``, see
        :meth:`entropy_in_place`; entropy kernels read no norms).
        """
        from fastspec import similarity

        lib, qp = self.lib, self.qprep
        if self._prep_key is None:  # the same for every call of this search (a few microseconds each)
            self._prep_key = (qp.metric, repr(sorted(qp.params.items())), repr(qp.tolerance))
        key = ("stored_view", by_precursor, weights) + self._prep_key
        view = lib._cache.get(key)
        if view is None:  # cached for its max_peaks (a pass over all offsets)
            if by_precursor:
                off = lib.array("prec_offsets")
                arrays = (off, lib.array("prec_mz"), lib.array(weights or "prec_intensity"), lib.array("prec_norm"),
                          lib.array("prec_sorted")[: off.shape[0] - 1])
            else:
                arrays = (lib.array("offsets"), lib.array("mz"), lib.array("intensity"), lib.array("norm"),
                          lib.array("precursor_mz"))
            view = lib._cache[key] = similarity.Prepared(qp.metric, *arrays, qp.tolerance, dict(qp.params))
        return view

    def lib_mark(self) -> np.ndarray:
        """int64 (n,) scratch of -1s for :func:`fastspec.kernels.fragment.compact_ids` (left as found)."""
        n = max(len(self.lib), 1)
        return self.scratch("mark", lambda: np.full(n, -1, dtype=np.int64), lambda m: m.shape[0] == n)

    def filter_csr(self, rows: np.ndarray, cand_offsets: np.ndarray, cand_ids: np.ndarray,
                   values: np.ndarray | None = None):
        """Drop candidates failing the filters (polarity, charge, adduct, instrument) -> (offsets, kept).

        ``cand_ids`` are library rows; ``values`` (default: ``cand_ids``) are what is kept of each.
        """
        qc, lc, sym = self.filters()
        values = cand_ids if values is None else values
        if cand_ids.shape[0] == 0:
            return cand_offsets, values
        owner = np.repeat(rows, np.diff(cand_offsets))
        keep = np.ones(cand_ids.shape[0], dtype=bool)
        for f in range(sym.shape[0]):
            q = qc[owner, f]
            lcf = lc[cand_ids, f]
            ok = (q == -1) | (lcf == q)
            if sym[f]:
                ok |= lcf < 0
            keep &= ok
        if keep.all():
            return cand_offsets, values
        # kept entries before each offset (np.add.reduceat refused offsets equal to the length, i.e. a
        # last query without candidates)
        kept = np.zeros(keep.shape[0] + 1, dtype=np.int64)
        np.cumsum(keep, out=kept[1:])
        return kept[np.asarray(cand_offsets, dtype=np.int64)], values[keep]

    # --------------------------------------------------------------------------- identity
    def window_candidates(self, rows: np.ndarray, tol, positions: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Library spectra whose precursor m/z is within ``tol`` (a Tolerance) of each query's, filtered
        (CSR of library rows, or with ``positions`` of positions in precursor order)."""
        from fastspec.kernels.window import window_positions

        lib = self.lib
        n_finite = int(lib.manifest["counts"].get("n_with_precursor", len(lib)))
        sorted_pmz = np.asarray(lib.array("prec_sorted")[:n_finite])
        order = lib.array("prec_order")
        pmz = self.q.precursor_mz[rows]
        half = tol.value if tol.unit == "da" else np.abs(pmz) * tol.value * 1e-6
        qc, lc, sym = self.filters()
        key = ("codes in precursor order", _filter_key(self.cfg))
        lcp = lib._cache.get(key)
        if lcp is None:  # the filter codes permuted like the precursor-ordered arrays: windows read in order
            lcp = lib._cache[key] = np.ascontiguousarray(lc[np.asarray(order[:n_finite])])
        offs, pos = window_positions(sorted_pmz, np.asarray(pmz - half, np.float64), np.asarray(pmz + half, np.float64),
                                     np.ascontiguousarray(qc[rows]), lcp, sym)
        if positions:
            return offs, pos
        return offs, np.asarray(order[pos], dtype=np.int64)

    def window_search(self, rows: np.ndarray, tol):
        """Exact top-k over each query's precursor window, read from the precursor-ordered peak copy when
        the index has one (a window is then one block of memory, and default cosine weights are scored
        in place): 2.4M MassBank-grown library, 1,000 queries, 1 thread, best of 3: identity 0.47-0.52
        -> 0.24 ms/query."""
        by_prec = self.lib.has_array("prec_norm")  # the copy's required arrays (prec_entropy_w is optional)
        offs, cand = self.window_candidates(rows, tol, positions=by_prec)
        if by_prec and self.block_bounded():
            return self.bounded_window_search(rows, offs, cand)
        return self.exact(rows, offs, cand, by_precursor=by_prec)

    def block_bounded(self) -> bool:
        """Whether window candidates can be pruned through the precursor-block index: cosine or modified
        cosine at default weights, or entropy (the index stores those scan weights), on an index that has
        it."""
        from fastspec.library import WINDOW_WEIGHTS

        kw = self.cfg.metric_kwargs()
        if self.cfg.metric in ("cosine", "modified_cosine"):
            ok = kw.get("mz_power") == 0.0 and kw.get("intensity_power") == 1.0
        else:
            ok = self.cfg.metric == "entropy"
        return ok and self.lib.window_block > 0 and self.lib.has_array(WINDOW_WEIGHTS[_BOUNDED[self.cfg.metric][1]])

    def bounded_window_search(self, rows: np.ndarray, offs: np.ndarray, pos: np.ndarray):
        """Exact top-k over precursor windows (``pos``: CSR of positions in precursor order), scoring
        only candidates whose score bound can still reach the top-k (cosine and modified cosine at default
        weights, entropy: see :meth:`block_bounded`).

        The bounds come from the precursor-block index (:func:`fastspec.kernels.window.window_bounds`).
        The ``k + _WINDOW_FIRST`` best-bounded candidates of a query are scored first; the k-th exact score
        among them is a floor the final k-th score cannot be below, so only the other candidates whose
        bound reaches it are scored next, and the two top-k lists merged. Windows wider than
        ``_WINDOW_SPAN`` spectra are scored in full.
        """
        from fastspec.kernels.fragment import BOUND_ATOL, BOUND_RTOL
        from fastspec.kernels.window import second_round, window_bounds

        lib, cfg = self.lib, self.cfg
        nr = rows.shape[0]
        sizes = np.diff(offs)
        spans = np.zeros(nr, np.int64)
        full = np.flatnonzero(sizes > 0)
        spans[full] = pos[offs[full + 1] - 1] + 1 - pos[offs[full]]
        wide = spans > _WINDOW_SPAN
        if wide.any():  # rare (very wide precursor tolerances): split off and score in full
            parts = (np.flatnonzero(~wide), np.flatnonzero(wide))
            out = [np.zeros((nr, cfg.k)), np.full((nr, cfg.k), -1, np.int64), np.zeros((nr, cfg.k), np.int32)]
            for j, sel in enumerate(parts):
                if sel.shape[0] == 0:
                    continue
                o, p = _csr_take(offs, pos, sel)
                res = self.bounded_window_search(rows[sel], o, p) if j == 0 else self.exact(rows[sel], o, p, True)
                for a, v in zip(out, res):
                    a[sel] = v
            return tuple(out)
        from fastspec.library import WINDOW_WEIGHTS

        from fastspec.spectra import _gather_index

        wname = _BOUNDED[cfg.metric][1]
        qv = self.query_weights(wname)
        peaks, q_off = _gather_index(self.q.offsets, rows)  # the rows' peaks (no metadata taken)
        qv = qv[peaks]
        extra = None
        if cfg.metric == "modified_cosine":  # shifted pairs: peak windows widened by the precursor window
            ptol, pmz = cfg.precursor_tolerance, self.q.precursor_mz[rows]
            extra = np.full(nr, ptol.value) if ptol.unit == "da" else np.abs(pmz) * ptol.value * 1e-6
        wb = window_bounds(q_off, self.q.mz[peaks], qv if wname == "cosine" else np.sqrt(qv), offs, pos,
                           lib.array("prec_offsets"), lib.array("wblk_mz"), lib.array("wblk_loc"),
                           lib.array(WINDOW_WEIGHTS[wname]), lib.window_block, cfg.tolerance.da, cfg.tolerance.ppm,
                           cfg.k + _WINDOW_FIRST, extra=extra, threads=cfg.threads,
                           b_sum=lib.array("wblk_sum") if lib.has_array("wblk_sum") else None,
                           min_matches=max(1, cfg.min_matches))
        s, idx, m = self.exact(rows, wb.first_offsets, wb.first_positions, by_precursor=True)
        theta = np.where(idx[:, -1] >= 0, s[:, -1], -np.inf)
        rtol = BOUND_RTOL if cfg.metric == "entropy" else _WINDOW_RTOL
        again, offs2, pos2 = second_round(offs, wb.ub, wb.count, wb.first, np.maximum(theta, cfg.min_score),
                                          max(1, cfg.min_matches), rtol, BOUND_ATOL, pos, wb.rest)
        if again.shape[0]:  # only the candidates not scored yet; their top-k merged with the first
            more = self.exact(rows[again], offs2, pos2, by_precursor=True)
            s[again], idx[again], m[again] = _merge_topk((s[again], idx[again], m[again]), more)
        return s, idx, m

    def faiss_candidates(self, rows: np.ndarray, n_cand: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_cand`` nearest library spectra of each query in the FAISS index, filtered (CSR)."""
        from fastspec import vectors

        index = vectors.load_faiss_index(self.lib)
        params = self.lib.manifest["build"]["faiss"]
        qv = vectors.spectrum_vectors(self.q.take(rows, metadata=False), params, threads=self.cfg.threads)
        n = max(1, min(int(n_cand), int(index.ntotal)))
        cand = np.full((rows.shape[0], n), -1, dtype=np.int64)
        # one FAISS call per distinct filter combination among the queries (usually one or two
        # polarities), each restricted to the library rows it may match: the n neighbours are then n
        # eligible spectra. Filtering afterwards instead left some minority-polarity queries of a
        # MassBank-grown library with fewer than k of 300 neighbours.
        for sel, allowed in self.filter_groups(rows, packed=True):
            cand[sel] = vectors.faiss_search(index, qv[sel], n, nprobe=nprobe, threads=self.cfg.threads,
                                             allowed=allowed)
        valid = cand >= 0
        offs = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(valid.sum(axis=1), out=offs[1:])
        return self.filter_csr(rows, offs, cand[valid].astype(np.int64))

    def filter_groups(self, rows: np.ndarray, packed: bool = False):
        """Queries ``rows`` grouped by their filter codes: yields (positions in ``rows``, the library rows
        they may match as :meth:`allowed_rows` gives them, with ``packed`` as its FAISS bitmap)."""
        codes = self.filters()[0][rows]
        if codes.shape[0] and (codes == codes[0]).all():  # one combination (always for a single query)
            yield np.arange(rows.shape[0]), self.allowed_rows(codes[0], packed)
            return
        combos, which = np.unique(codes, axis=0, return_inverse=True)
        for c in range(combos.shape[0]):
            yield np.flatnonzero(which.reshape(-1) == c), self.allowed_rows(combos[c], packed)

    def allowed_rows(self, codes: np.ndarray, packed: bool = False) -> np.ndarray | None:
        """bool (n,): the library rows a query with filter codes ``codes`` (one row of the query codes)
        may match, under the same rules as :meth:`filter_csr`; None when that is every row. With
        ``packed``, the same as the bitmap FAISS's ID selector reads (:func:`fastspec.vectors.pack_rows`).
        The last few of either are kept with the library: packing 2.4M rows costs 0.1 ms, a search of
        one query a few."""
        qc, lc, sym = self.filters()
        key = ("allowed rows", _filter_key(self.cfg), tuple(int(c) for c in codes), packed)
        lock = self.lib._lock
        with lock:
            cache = self.lib._cache.setdefault("allowed rows", {})
            if key in cache:
                return cache[key]
        if packed:
            from fastspec.vectors import pack_rows

            mask = self.allowed_rows(codes)
            out = None if mask is None else pack_rows(mask)
        else:
            ok = np.ones(lc.shape[0], dtype=bool)
            for f in range(sym.shape[0]):
                if codes[f] == -1:
                    continue
                okf = lc[:, f] == codes[f]
                if sym[f]:
                    okf |= lc[:, f] < 0
                ok &= okf
            out = None if ok.all() else ok
        with lock:
            if len(cache) >= 16:  # per adduct or instrument there can be many: keep a bounded few
                cache.pop(next(iter(cache)))
            cache[key] = out
        return out

    def workspace(self):
        """The bound kernel's per-block scratch (:class:`fastspec.kernels.fragment.BoundWorkspace`)."""
        from fastspec.kernels import fragment as fk

        n_blocks = _n_blocks(self.cfg.threads)
        n = len(self.lib)
        return self.scratch("workspace", lambda: fk.BoundWorkspace(n, n_blocks),
                            lambda w: w.n_blocks == n_blocks and w.n_library == n)

    #: queries per identity batch: each batch's window arrays (~12 MB per 1,000 queries at 2.4M) then stay
    #: below the 32 MB up to which freed memory is reused (kernels._memory.retain_freed_memory); 8,000
    #: queries, 1 thread: 4,096 per batch 0.051-0.053 ms per query, 2,048 0.048-0.049, 1,024 0.050-0.052
    _IDENTITY_BATCH = 2048

    def run_identity(self, rows, scores, indices, matches):
        for batch in _batches(rows, self._IDENTITY_BATCH):
            s, i, m = self.window_search(batch, self.cfg.precursor_tolerance)
            scores[batch], indices[batch], matches[batch] = s, i, m
            self.advance(batch.shape[0])

    # --------------------------------------------------------------------------- formula
    def query_formula_codes(self, formula, raw: Spectra) -> np.ndarray:
        from fastspec.library import formulas_or_from_smiles

        nq = len(self.q)
        if formula is None:
            vals = raw.column("formula")
        elif isinstance(formula, str):
            vals = [formula] * nq
        else:
            vals = list(formula)
            if len(vals) != nq:
                raise ParameterError(f"formula: {len(vals)} values for {nq} queries")
        if formula is None:  # the queries' own, else from their SMILES, as the library's are
            canon, _ = formulas_or_from_smiles(_formula_texts(vals), raw.column("smiles"))
        else:
            canon = caller_formulas(vals)
        lut = self.lib.code_lookup("formula")
        return np.array([lut.get(c, -2) if c is not None else -1 for c in canon], dtype=np.int64)

    def run_formula(self, rows, fcodes, scores, indices, matches, status, fallback):
        lib = self.lib
        foff = np.asarray(lib.array("formula_offsets"))
        fids = lib.array("formula_ids")
        for batch in _batches(rows, 4096):
            code = fcodes[batch]
            known = code >= 0  # -1 no formula, -2 a formula no library spectrum has
            safe = np.where(known, code, 0)  # a library without formulas has foff == [0]
            lo = np.where(known, foff[np.minimum(safe, foff.shape[0] - 1)], 0)
            hi = np.where(known, foff[np.minimum(safe + 1, foff.shape[0] - 1)], 0)
            offs, pos = _ranges_csr(lo, hi)
            ids = np.asarray(fids[pos], dtype=np.int64)
            offs, ids = self.filter_csr(batch, offs, ids)
            s, i, m = self.exact(batch, offs, ids)
            scores[batch], indices[batch], matches[batch] = s, i, m
            empty = np.diff(offs) == 0
            if empty.any():
                miss = batch[empty]
                if self.cfg.no_neighbour == "skip":
                    status[miss] = NO_NEIGHBOUR_SKIPPED
                elif self.cfg.no_neighbour == "fallback":
                    fallback[miss] = True
                    self.nested += 1
                    try:
                        self.run_whole_library(miss, scores, indices, matches)
                    finally:
                        self.nested -= 1
            self.advance(batch.shape[0])

    # --------------------------------------------------------------------------- whole library
    def run_whole_library(self, rows, scores, indices, matches):
        metric = self.cfg.metric
        if metric in _BOUNDED:
            # neutral losses: modified cosine's shifted pairs, hybrid search's losses
            self.run_bounded(rows, scores, indices, matches,
                             use_nl=metric == "modified_cosine" or self.cfg.mode == "hybrid")
        elif metric == "binned_cosine" and self.n_bins() <= _BIN_MAX:
            self.run_binned(rows, scores, indices, matches)
        else:
            self.run_brute_force(rows, scores, indices, matches)

    def run_bounded(self, rows, scores, indices, matches, use_nl: bool):
        # query weights and the neutral-loss window base once per search, not once per batch
        qw = self.query_weights(_BOUNDED[self.cfg.metric][1])
        nl_base = float(max(self.lib.manifest["counts"].get("max_mz", 0.0),
                            float(self.q.mz.max()) if self.q.mz.size else 0.0))
        for batch in _batches(rows, 1024):
            self._run_bounded(batch, scores, indices, matches, use_nl, qw, nl_base)
            self.advance(batch.shape[0])

    def query_weights(self, wname: str) -> np.ndarray:
        """Bound weights of every query peak (float64 (Q,)): L2-normalised cosine weights at the search's
        powers, or sum-normalised entropy weights (``wname`` as in ``_BOUNDED``); computed once."""
        qw = self._qweights.get(wname)
        if qw is None:
            from fastspec.kernels import fragment as fk

            mzp, ip = (self.cfg.mz_power, self.cfg.intensity_power) if wname == "cosine" else (0.0, 1.0)
            qw = self._qweights[wname] = fk.peak_weights(self.q.offsets, self.q.mz, self.q.intensity, wname, mzp, ip,
                                                         threads=self.cfg.threads)
        return qw

    def _run_bounded(self, rows, scores, indices, matches, use_nl: bool, qw: np.ndarray, nl_base: float):
        """Exact whole-library top-k through the fragment (and neutral-loss) index with bound pruning.

        Candidates come out of :func:`fastspec.kernels.fragment.search_bounds` in bound order, ``m`` per
        query; they are scored exactly and ``m`` grows (x8) for the queries whose k-th exact score does not
        yet beat the best bound left out. Exact k-th scores found on the way feed the pruning threshold.
        """
        from fastspec.kernels import fragment as fk
        from fastspec.library import allowed_groups

        if rows.shape[0] == 0:
            return
        lib, cfg = self.lib, self.cfg
        kind, wname = _BOUNDED[cfg.metric]
        mzp, ip = (cfg.mz_power, cfg.intensity_power) if wname == "cosine" else (0.0, 1.0)
        index = lib.peak_index(wname, mzp, ip, losses=use_nl)
        qc, lc, sym = self.filters()
        if index.scan_rows is not None:  # the kernel reads library codes by scan id
            key = "scan " + _filter_key(cfg)
            lc_scan = lib._cache.get(key)
            if lc_scan is None:
                lc_scan = lib._cache[key] = np.ascontiguousarray(lc[np.asarray(index.scan_rows)])
            lc = lc_scan
        # the index groups spectra by polarity: the other polarity's entries are never scanned
        groups = allowed_groups(self.q.polarity)
        ws = self.workspace()
        tol = cfg.tolerance
        n_lib = len(lib)
        pending = np.asarray(rows, dtype=np.int64)
        theta = self._first_theta(pending, use_nl)
        if use_nl and _HEAVY_PEAKS > 0:
            weak = np.flatnonzero(theta < _HEAVY_BELOW)
            if weak.shape[0]:
                theta[weak] = np.maximum(theta[weak], self._heavy_theta(
                    pending[weak], qw, index, kind, use_nl, nl_base, ws, qc, lc, sym, groups))
        # every further round is a full bound scan again, so the first one returns more candidates than
        # k: scoring a candidate exactly costs far less than a rescan. Analog: neutral losses loosen the
        # bounds; with 2,048 candidates (k = 10) 6% of queries needed a second scan on a 2.4M
        # MassBank-grown library (60% with 256): 18.1 -> 14.8 ms/query. Open search, same library, 300
        # novel-compound queries, 1 thread, interleaved, compound-ordered and shuffled input, median time
        # against 32 candidates: entropy (whose bounds are refined on a shortlist 4x larger) 64 ->
        # 0.91-0.93, 128 -> 0.89-0.94, and on 300 library spectra as queries 0.99 / 1.02; cosine 128 ->
        # 0.94-0.97 (library spectra 0.93-0.98), 64 -> 0.97-1.01 (0.98-0.99). Open search with a large k
        # keeps 2k + 8, which already covers it
        m = max(2 * cfg.k + 8, 32) * 64 if use_nl else max(2 * cfg.k + 8, 64 if kind == 1 else 128)
        while pending.shape[0]:
            m = min(m, max(n_lib, 1))
            ids, bounds, nxt, st = fk.search_bounds(
                pending, self.q.offsets, self.q.mz, qw, self.q.precursor_mz, index, kind=kind, use_nl=use_nl,
                tol_da=tol.da, tol_ppm=tol.ppm, k=cfg.k, m=m, workspace=ws, theta=theta, q_codes=qc, lib_codes=lc,
                symmetric=sym, q_groups=groups, min_pairs=max(1, cfg.min_matches), min_score=cfg.min_score, nl_base=nl_base,
                threads=cfg.threads)
            self.stats.append(st)
            self.rounds += 1
            valid = ids >= 0
            offs = np.zeros(pending.shape[0] + 1, dtype=np.int64)
            np.cumsum(valid.sum(axis=1), out=offs[1:])
            # candidates come best bound first: a query's scoring stops once its k-th score beats the rest
            # (analog, 2.4M, novel compounds: of 777 candidates per query 295 have a bound above the final
            # k-th score, median 46; first-round rescoring 0.45-0.53 -> 0.30 ms per query)
            s, i, mm = self.exact(pending, offs, ids[valid], cand_bounds=bounds[valid])
            kth = np.where(i[:, -1] >= 0, s[:, -1], -np.inf)
            done = (nxt < 0) | (nxt < kth)
            if m >= n_lib:
                done[:] = True
            d = pending[done]
            scores[d], indices[d], matches[d] = s[done], i[done], mm[done]
            # the k-th exact score is a valid pruning threshold for the next round
            theta = np.maximum(theta[~done], kth[~done] * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL)
            pending = pending[~done]
            m *= 8

    def _heavy_theta(self, rows, qw, index, kind, use_nl, nl_base, ws, qc, lc, sym, groups) -> np.ndarray:
        """Lower bounds of each query's k-th best score (-inf: none) from the ``_HEAVY_CANDIDATES``
        library spectra that best match its ``_HEAVY_PEAKS`` heaviest peaks (fragments and neutral losses,
        by the bound kernel, heavy partners only), scored exactly with all the query's peaks.

        Any k eligible spectra's k-th exact score bounds the library's k-th best from below, so which
        spectra these are only decides how good the threshold is, never the hits."""
        from fastspec.kernels import fragment as fk

        q = self.q
        off = np.asarray(q.offsets)
        n = rows.shape[0]
        lens = off[rows + 1] - off[rows]
        owner = np.repeat(np.arange(n), lens)
        first = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=first[1:])
        peak = np.arange(first[-1]) - first[owner] + off[rows][owner]  # the rows' peaks, query by query
        by_weight = np.lexsort((-qw[peak], owner))
        keep = by_weight[(np.arange(peak.shape[0]) - first[owner[by_weight]]) < _HEAVY_PEAKS]
        keep = keep[np.lexsort((peak[keep], owner[keep]))]  # back to m/z order within each query
        sub_off = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(owner[keep], minlength=n), out=sub_off[1:])
        sel = peak[keep]
        # a threshold of a share of the heaviest picked peak's weight: the kernel then reaches only the
        # spectra whose partner peaks are heavy too (with one peak: scan weight >= _HEAVY_BAND)
        top_w = np.zeros(n)
        has = sub_off[1:] > sub_off[:-1]
        if has.any():
            top_w[has] = np.maximum.reduceat(qw[sel].astype(np.float64), sub_off[:-1][has])
        tol = self.cfg.tolerance
        ids, _, _, _ = fk.search_bounds(
            np.arange(n, dtype=np.int64), sub_off, np.asarray(q.mz)[sel], qw[sel], np.asarray(q.precursor_mz)[rows],
            index, kind=kind, use_nl=use_nl, tol_da=tol.da, tol_ppm=tol.ppm, k=self.cfg.k,
            m=max(1, min(_HEAVY_CANDIDATES, len(self.lib))),
            workspace=ws, q_codes=qc[rows], lib_codes=lc, symmetric=sym, q_groups=groups[rows], nl_base=nl_base,
            threads=self.cfg.threads, theta=_HEAVY_BAND * top_w)
        valid = ids >= 0
        offs = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(valid.sum(axis=1), out=offs[1:])
        return _kth_lower(*self.exact(rows, offs, ids[valid])[:2])

    def _first_theta(self, rows: np.ndarray, use_nl: bool) -> np.ndarray:
        """Lower bounds of each query's k-th best score before the bound search: the exact k-th score
        among a few likely hits (-inf: none).

        The k-th best of any k eligible spectra bounds the k-th best of the library from below, so the
        hits only need to be good, not right. Open search first takes the spectra within 0.01 Da of the
        query's precursor m/z, when the index bounds such windows cheaply (:meth:`block_bounded`); then,
        for the queries whose window gave less than ``_THETA_WINDOW_ENOUGH``, the FAISS index's nearest
        neighbours when the library has one (``_THETA_FAISS`` candidates, analog ``_THETA_FAISS_ANALOG``
        and then ``_THETA_FAISS_AGAIN`` where those gave no threshold, at nprobe ``_THETA_NPROBE``; open
        search from ``_THETA_FAISS_OPEN_MIN`` spectra on). Without either, analog
        search takes the window anyway and open search leaves the threshold to the bound kernel (which
        scores the precursor window itself, for clean spectra). For analog the FAISS threshold replaced
        an exact plain-cosine top-k through the fragment index, which cost as much as an open search:
        2.4M MassBank-grown library, 1,000 queries, 1 thread, ms/query: analog 11.4 (cosine pass) -> 7.6
        (FAISS). The window first (block-bounded, ~0.07 ms) and FAISS only for weak windows, alternating
        with FAISS for all (3 pairs of runs, median ratio): open entropy 0.88, open cosine 0.95, analog
        0.83 (a window threshold of 0.65: 0.94 / 0.90 / 0.86; 0.8: 0.88 / 0.94 / 0.88). Analog search
        still asks FAISS first: the window's pages (precursor-block index, peak copy) on top of FAISS
        and the neutral-loss index took its peak RSS over all queries at 1M from 1.31 to 1.51 GB (the
        budget is 1.5).
        """
        k = self.cfg.k
        theta = np.full(rows.shape[0], -np.inf)

        window = not use_nl and self.lib.has_array("prec_norm") and self.block_bounded()
        if window:
            theta = _kth_lower(*self.window_search(rows, parse_tolerance(0.01))[:2])
        weak = np.flatnonzero(theta < _THETA_WINDOW_ENOUGH)
        if weak.shape[0] and self.lib.has_faiss and (use_nl or len(self.lib) >= _THETA_FAISS_OPEN_MIN):
            offs, ids = self.faiss_candidates(rows[weak], max(_THETA_FAISS_ANALOG if use_nl else _THETA_FAISS, 2 * k),
                                              _THETA_NPROBE)
            theta[weak] = np.maximum(theta[weak], _kth_lower(*self.exact(rows[weak], offs, ids)[:2]))
            weak = np.flatnonzero(~np.isfinite(theta)) if use_nl else weak[:0]
            if weak.shape[0]:
                offs, ids = self.faiss_candidates(rows[weak], max(_THETA_FAISS_AGAIN, 2 * k), _THETA_NPROBE)
                theta[weak] = np.maximum(theta[weak], _kth_lower(*self.exact(rows[weak], offs, ids)[:2]))
        elif use_nl:
            theta = _kth_lower(*self.window_search(rows, parse_tolerance(0.01))[:2])
        return theta

    def n_bins(self) -> int:
        """Bins the library's binned vectors can use at the search's bin parameters: up to its largest
        fragment m/z (and precursor m/z when a precursor peak is added) or ``max_mz``, one spare against
        rounding."""
        lib, params = self.lib, self.qprep.params
        top = lib._cache.get("largest m/z")
        if top is None:
            mz, pmz = lib.array("mz"), lib.array("precursor_mz")
            top = (float(np.max(mz)) if mz.shape[0] else 0.0, float(np.nanmax(pmz, initial=0.0)))
            # this pass reads every stored m/z anyway: its largest must be the one the build recorded, or
            # a flipped byte inside mz.npy (NaN, inf, 1e300; the open-time checksums read only the file's
            # ends) would become a bin count (a ValueError, or brute force over absurd bins)
            recorded = lib.manifest["counts"].get("max_mz")
            if not math.isfinite(top[0]) or (recorded is not None and top[0] != float(recorded)):
                raise lib._corrupted(f"the largest m/z in mz is {top[0]!r}, the build recorded {recorded!r}")
            if not math.isfinite(top[1]):
                raise lib._corrupted(f"the largest precursor m/z is {top[1]!r}")
            lib._cache["largest m/z"] = top
        bw = float(params["bin_width"])
        n = int(max(top[0], top[1] if params.get("precursor_peak") is not None else 0.0) // bw) + 2
        if params.get("max_mz") is not None:
            n = min(n, int(float(params["max_mz"]) // bw) + 2)
        return n

    def bin_postings(self):
        """The library's binned vectors (the search's bin parameters) as postings by bin
        (:class:`fastspec.kernels.bins.BinPostings`), built on first use and kept with the open library.

        Built from the stored peaks in chunks of :data:`_BIN_CHUNK` spectra, prepared exactly as
        :meth:`exact` prepares candidates; the postings take 8 bytes per stored bin plus 8 per bin of
        the m/z range (and as much again while they are built).
        """
        from fastspec.kernels.bins import BinPostings

        qp = self.qprep
        # one set per open library: the bin parameters fix the postings (a tolerance only through the
        # bin width it implies), and another set replaces it
        key = repr(sorted(qp.params.items()))
        have = self.lib._cache.get("bin postings")
        if have is not None and have[0] == key:
            return have[1]
        self.lib._cache.pop("bin postings", None)
        post = BinPostings(self.n_bins(), len(self.lib))
        chunks = []
        for p in self.prepared_chunks():
            chunks.append((p.offsets, p.pos.astype(np.int32), _unit_weights(p).astype(np.float32)))
            post.add(*chunks[-1])
        post.finish()
        for chunk in chunks:
            post.add(*chunk)
        self.lib._cache["bin postings"] = (key, post)
        return post

    def run_binned(self, rows, scores, indices, matches):
        """Whole-library binned cosine: candidates from the inverted bin index
        (:func:`fastspec.kernels.bins.binned_candidates`: every spectrum within a rounding margin of
        each query's k-th dot product), scored exactly."""
        from fastspec.kernels.bins import BinWorkspace, binned_candidates

        if rows.shape[0] == 0:
            return
        post = self.bin_postings()
        qp = self.qprep
        qv = _unit_weights(qp)
        qc, lc, sym = self.filters()
        n_blocks = _n_blocks(self.cfg.threads)
        n = max(len(self.lib), 1)
        ws = self.scratch("bin workspace", lambda: BinWorkspace(len(self.lib), n_blocks),
                          lambda w: w.n_blocks == n_blocks and w.acc.shape[1] == n)
        for batch in _batches(rows, 1024):
            offs, ids = binned_candidates(qp.offsets, qp.pos, qv, batch, post, self.cfg.k,
                                          min_matches=self.cfg.min_matches, min_score=self.cfg.min_score,
                                          q_codes=qc[batch], lib_codes=lc, sym=sym, workspace=ws,
                                          threads=self.cfg.threads)
            s, i, m = self.exact(batch, offs, ids)
            scores[batch], indices[batch], matches[batch] = s, i, m
            self.advance(batch.shape[0])

    def run_brute_force(self, rows, scores, indices, matches):
        """Every eligible library spectrum as a candidate (metrics without a fragment-index bound).

        The whole library is prepared once per search (:meth:`prepared_library`), and each query's
        candidates are the rows its filters allow (:meth:`allowed_rows`). Preparing and filtering the
        library again for every batch of 8 queries took 80% of the time: 2.4M MassBank-grown library,
        neutral-loss cosine, 1 thread, 428 ms per query (prepare 219, gather 66, filter 68, scoring 64).
        """
        if rows.shape[0] == 0:
            return
        n_lib = len(self.lib)
        lprep = self.prepared_library()
        per = max(1, int(2e7 // max(n_lib, 1)))  # candidate lists of at most ~2e7 entries (160 MB)
        for batch in _batches(rows, per):
            for sel, allowed in self.filter_groups(batch):
                sub = batch[sel]
                ids = np.arange(n_lib, dtype=np.int64) if allowed is None else np.flatnonzero(allowed)
                offs = np.arange(sub.shape[0] + 1, dtype=np.int64) * ids.shape[0]
                s, i, m = self.score(sub, lprep, offs, np.tile(ids, sub.shape[0]))
                scores[sub], indices[sub], matches[sub] = s, i, m
            self.advance(batch.shape[0])

    def prepared_chunks(self):
        """The library's stored peaks prepared for the search's metric, :data:`_BIN_CHUNK` spectra at a
        time (one :class:`fastspec.similarity.Prepared` per chunk, library rows in order), exactly as
        :meth:`exact` prepares candidates."""
        from fastspec import similarity

        lib, kw = self.lib, self.cfg.metric_kwargs()
        off, mz, inten, pmz = (lib.array(a) for a in ("offsets", "mz", "intensity", "precursor_mz"))
        n = len(lib)
        for a in range(0, n, _BIN_CHUNK):
            b = min(n, a + _BIN_CHUNK)
            e0, e1 = int(off[a]), int(off[b])
            yield similarity.prepare_csr(np.asarray(off[a: b + 1]) - e0, np.asarray(mz[e0:e1]),
                                         np.asarray(inten[e0:e1], np.float64), np.asarray(pmz[a:b]), self.cfg.metric,
                                         threads=self.cfg.threads, **kw)

    def prepared_library(self):
        """The whole library prepared for the search's metric (:meth:`prepared_chunks` one after the
        other), built once per search and not kept after it."""
        from fastspec import similarity

        if self._whole is None:
            n = len(self.lib)
            # no preparation adds more than a peak per spectrum (the binned precursor peak): the output
            # is allocated once at that bound and filled chunk by chunk; pages never written are never
            # resident (a list of chunks joined at the end held the library twice: +1.1 GB at 2.4M)
            cap = int(self.lib.array("offsets")[-1]) + n
            pos, w = np.empty(cap), np.empty(cap)
            norm, pmz = np.empty(n), np.empty(n)
            offsets = np.zeros(n + 1, np.int64)
            at = row = 0
            first = None
            for p in self.prepared_chunks():
                if first is None:
                    first = p
                m, c = int(p.offsets[-1]), len(p)
                pos[at:at + m], w[at:at + m] = p.pos, p.w
                norm[row:row + c], pmz[row:row + c] = p.norm, p.precursor_mz
                offsets[row + 1:row + c + 1] = p.offsets[1:] + at
                at, row = at + m, row + c
            if first is None:  # an empty library
                first = similarity.prepare_csr(np.zeros(1, np.int64), np.zeros(0), np.zeros(0), np.zeros(0),
                                               self.cfg.metric, threads=self.cfg.threads, **self.cfg.metric_kwargs())
            self._whole = similarity.Prepared(first.metric, offsets, pos[:at], w[:at], norm, pmz, first.tolerance,
                                              dict(first.params))
        return self._whole

    # --------------------------------------------------------------------------- faiss
    def run_faiss(self, rows, scores, indices, matches):
        """FAISS proposes ``n_candidates`` spectra per query; they are filtered and scored exactly."""
        cfg = self.cfg
        n_cand = int(cfg.n_candidates or max(50 * cfg.k, 500))
        for batch in _batches(rows, 4096):
            offs, ids = self.faiss_candidates(batch, n_cand, cfg.nprobe)
            s, i, m = self.exact(batch, offs, ids)
            scores[batch], indices[batch], matches[batch] = s, i, m
            self.advance(batch.shape[0])


# ====================================================================================== helpers
def _merge_topk(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k of two top-k lists over disjoint candidates, in the kernels' order (score descending,
    library index ascending; -1 entries last).

    Parameters
    ----------
    a, b : (scores float64 (n, k), indices int64 (n, k), matches int32 (n, k))

    Returns
    -------
    The merged (scores, indices, matches), each (n, k): what one top-k over both candidate sets gives.
    """
    k = a[0].shape[1]
    s, i, m = (np.concatenate([x, y], axis=1) for x, y in zip(a, b))
    missing = i < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, i), -np.where(missing, -np.inf, s)), axis=1)[:, :k]
    return tuple(np.take_along_axis(x, order, axis=1) for x in (s, i, m))


def _mask_offsets(offs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Offsets of the CSR ``offs`` after dropping the entries where ``keep`` is False."""
    c = np.zeros(keep.shape[0] + 1, np.int64)
    np.cumsum(keep, out=c[1:])
    return c[offs]


def _csr_take(offs: np.ndarray, vals: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``sel`` (ascending) of a CSR -> (offsets, values)."""
    keep = np.zeros(vals.shape[0], bool)
    for a, b in zip(offs[sel], offs[sel + 1]):
        keep[a:b] = True
    return _mask_offsets(offs, keep)[np.r_[sel, offs.shape[0] - 1]], vals[keep]


def _batches(rows: np.ndarray, size: int):
    for a in range(0, rows.shape[0], size):
        yield rows[a: a + size]


def _ranges_csr(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and the concatenated positions ``lo[i]..hi[i]-1`` of several ranges."""
    lengths = np.maximum(np.asarray(hi, np.int64) - np.asarray(lo, np.int64), 0)
    offs = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offs[1:])
    pos = np.arange(offs[-1], dtype=np.int64) - np.repeat(offs[:-1] - np.asarray(lo, np.int64), lengths)
    return offs, pos


def _unit_weights(p) -> np.ndarray:
    """Weights of a Prepared divided by their spectrum's L2 norm (0 where the norm is 0): float64 (P,)."""
    norm = np.repeat(p.norm, np.diff(p.offsets))
    return np.where(norm > 0, p.w / np.where(norm > 0, norm, 1.0), 0.0)


def _n_blocks(threads: int | None) -> int:
    from fastspec.kernels._config import max_threads

    return max_threads() if threads is None else max(1, min(int(threads), max_threads()))




def _filter_codes(lib, q: Spectra, cfg: _SearchConfig):
    """Integer codes per filter: polarity (symmetric: unknown matches all), then the optional ones."""
    from fastspec.library import normalize_adducts

    n_lib = len(lib)
    qcols = [_pol_code(q.polarity)]
    names = ["polarity"]
    sym = [True]
    if cfg.same_charge:
        qch = q.charge.astype(np.int32)
        qcols.append(np.where(qch != 0, np.abs(qch), -1))
        names.append("charge")
        sym.append(True)
    for flag, name, col in ((cfg.same_adduct, "adduct", "adduct"), (cfg.same_instrument, "instrument", "instrument_type")):
        if not flag:
            continue
        vals = q.column(col)
        if name == "adduct":
            vals = normalize_adducts(vals)
        # instrument types match whatever their case ("lc-esi-qtof"); adducts exactly, as normalised (element
        # case is chemistry: [M+Co]+ is not [M+CO]+); a blank query value applies no filter
        lut = _instrument_folding(lib)[1] if name == "instrument" else lib.code_lookup(name)
        fold = (lambda t: t.casefold()) if name == "instrument" else (lambda t: t)
        codes = []
        for v in vals:
            t = None if v is None else str(v).strip()
            codes.append(-1 if not t else lut.get(fold(t), -2))
        qcols.append(np.array(codes, dtype=np.int32))
        names.append(name)
        sym.append(False)
    qc = np.ascontiguousarray(np.stack(qcols, axis=1).astype(np.int32)) if len(q) else np.zeros((0, len(sym)), np.int32)
    key = _filter_key(cfg)  # library side: built once per filter combination (names in this order)
    lc = lib._cache.get(key)
    if lc is None:
        lcols = []
        for name in names:
            if name == "polarity":
                lcols.append(_pol_code(np.asarray(lib.polarity)))
            elif name == "charge":
                lch = np.asarray(lib.array("charge")).astype(np.int32)
                lcols.append(np.where(lch != 0, np.abs(lch), -1))
            elif name == "instrument":  # one code per instrument type whatever its case
                code = np.asarray(lib.array("instrument_code"))
                to_folded = _instrument_folding(lib)[0]
                lcols.append(np.where(code >= 0, to_folded[np.maximum(code, 0)] if to_folded.size else -1, code))
            else:
                lcols.append(np.asarray(lib.array(f"{name}_code")))
        lc = np.ascontiguousarray(np.stack(lcols, axis=1).astype(np.int32)) if n_lib else np.zeros((0, len(sym)), np.int32)
        lib._cache[key] = lc
    return qc, lc, np.array(sym, dtype=bool)


def _instrument_folding(lib) -> tuple[np.ndarray, dict[str, int]]:
    """The library's instrument codes mapped to one code per case-folded, stripped instrument type
    (int32 (n_keys,)), and that folded type -> code."""
    key = "instrument folding"
    got = lib._cache.get(key)
    if got is None:
        lut: dict[str, int] = {}
        to_folded = np.array([lut.setdefault(str(k).strip().casefold(), len(lut)) for k in lib.keys("instrument").tolist()],
                             dtype=np.int32)
        got = lib._cache[key] = (to_folded, lut)
    return got


def _filter_key(cfg: _SearchConfig) -> str:
    """Which filters the codes hold (polarity, then charge, adduct, instrument when asked): names the
    library's code table and what is derived from it in the library's cache."""
    on = [("charge", cfg.same_charge), ("adduct", cfg.same_adduct), ("instrument", cfg.same_instrument)]
    return "codes:" + ",".join(["polarity"] + [name for name, flag in on if flag])


#: filter code of polarity -1 / 0 / +1 (negative 0, positive 1, unknown -1: matches both)
_POL_CODES = np.array([0, -1, 1], dtype=np.int32)


def _pol_code(pol: np.ndarray) -> np.ndarray:
    return _POL_CODES[np.sign(np.asarray(pol, dtype=np.int8)) + np.int8(1)]
