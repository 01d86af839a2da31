"""Library search: parameters, query preprocessing, the dispatch to one candidate source per mode, and
the shared state those sources use (:class:`_Context`: prepared queries, filters, exact rescoring).

Modes
-----
``identity``
    Candidates are the library spectra whose precursor m/z lies within ``precursor_tolerance`` of the
    query's, bounded through the precursor-block index and scored exactly
    (:mod:`fastspec.search_identity`).
``formula``
    Candidates share the query's canonical Hill formula (from its metadata or ``formula=``;
    :mod:`fastspec.search_formula`).
``open``
    The whole library, exactly: the fragment-ion index gives every spectrum sharing a peak with the
    query an upper bound of its score; candidates are scored exactly in bound order until the k-th
    exact score beats every remaining bound (:mod:`fastspec.search_fragment`,
    :mod:`fastspec.kernels.fragment`). Neutral-loss cosine is bounded through the neutral-loss index
    alone; binned cosine goes through an inverted bin index; the rest score every spectrum
    (:mod:`fastspec.search_scan`).
``analog``, ``hybrid``
    Like ``open`` for modified cosine and ms_entropy's hybrid entropy, with the neutral-loss index adding
    the shifted partners.
``neutral_loss``
    ms_entropy's neutral-loss search: entropy similarity of the losses ``precursor_mz - mz``, bounded
    through the neutral-loss index alone (:func:`fastspec.search_fragment.run_losses`).

``engine="faiss"`` takes FAISS neighbours as candidates (:mod:`fastspec.search_scan`). Every mode keeps a
query away from library spectra of the other polarity (unknown matches both) and applies the optional
charge / adduct / instrument filters. Scores come from :mod:`fastspec.similarity`; results are
:class:`fastspec.hits.Hits`.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from fastspec.errors import FastspecError, ParameterError
from fastspec.hits import MS1, MSN, NO_HIT, NO_PEAKS, NO_PRECURSOR, OK, REJECTED, Hits
from fastspec.spectra import Spectra
from fastspec.tolerance import Tolerance, parse_tolerance

MODES = ("identity", "formula", "open", "analog", "hybrid", "neutral_loss")
ENGINES = ("exact", "faiss")
NO_NEIGHBOUR = ("skip", "fallback", "empty")
#: metrics whose prepared weights at mz_power 0 / intensity_power 1 are the stored intensities
_RAW_WEIGHTS = ("cosine", "modified_cosine")
#: metrics whose whole-library search runs through the fragment index (kind, weight name)
_BOUNDED = {"cosine": (0, "cosine"), "entropy": (1, "entropy"), "unweighted_entropy": (1, "unweighted_entropy"),
            "modified_cosine": (0, "cosine")}
#: metrics whose whole-library search scans the neutral-loss index alone (kind, weight name; with
#: ``ignore_peaks_above_precursor=False`` the plain cosine weights, see search_fragment._bound_kind)
_LOSS_BOUNDED = {"neutral_loss_cosine": (0, "nl_cosine")}
_ENTROPY = ("entropy", "unweighted_entropy")
_DEFAULT_METRIC = {"identity": "cosine", "formula": "cosine", "open": "cosine", "analog": "modified_cosine",
                   "hybrid": "entropy", "neutral_loss": "entropy"}
#: ms_entropy's searches of the whole library beyond open search (FlashEntropySearch's method names)
_FLASH_MODES = {"hybrid": "hybrid search", "neutral_loss": "neutral-loss search"}


def search(
    library,
    queries: Any,
    k: int = 10,
    *,
    mode: str = "identity",
    metric: str | None = None,
    tolerance: "float | str | Tolerance | None" = None,
    precursor_tolerance: "float | str | Tolerance | None" = None,
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
    input_format: str | None = None,
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
    queries : Spectra, one spectrum (``spectra[i]``), a list of matchms ``Spectrum``, path, directory or list of paths
        Preprocessed with the library's recorded pipeline before scoring.
    k : int
        Hits per query.
    mode : {"identity", "formula", "open", "analog", "hybrid", "neutral_loss"}
    metric : str, optional
        Any :mod:`fastspec.similarity` metric; default ``cosine`` (``modified_cosine`` for analog,
        ``entropy`` for hybrid and neutral_loss). ``hybrid`` is ms_entropy's hybrid search over the whole
        library: entropy similarity where each query peak matches a fragment, else a neutral loss (Da
        tolerances; see :func:`fastspec.kernels.entropy.hybrid_entropy_pair`), exact through the fragment
        and neutral-loss indexes. ``neutral_loss`` is ms_entropy's neutral-loss search: the entropy
        similarity of the spectra's neutral losses (``precursor_mz - mz``; Da tolerances; see
        ``neutral_loss`` in :func:`fastspec.similarity.prepare`), exact through the neutral-loss index;
        queries and library spectra without a precursor m/z (NaN, or 0 or less) have no losses and no
        hits.
        ``open`` is exact through the fragment index for cosine and (unweighted) entropy, through the
        neutral-loss index for ``neutral_loss_cosine`` (matchms' ``NeutralLossesCosine``), and through
        an inverted bin index (built on first use, kept with the open library) for ``binned_cosine``
        (scoring every spectrum beyond ``search_scan._BIN_MAX`` bins). ``open`` with modified cosine is
        ``analog``.
    tolerance : float or str, optional
        Fragment tolerance (float = Da, or ``"0.02da"``, ``"10ppm"``; default 0.02 Da). ``binned_cosine``: the
        bin width (Da), also with a ``preset``, whose bins it then replaces (as ``fastspec query --preset
        --tolerance`` and the lab's ``evaluate`` take it); ``bin_width`` wins over both, and without either a
        preset sets the bins. The hit parameters record ``tolerance``
        as None where a preset or ``bin_width`` sets the bins.
    precursor_tolerance : float or str, optional
        Identity-mode precursor window (relative to the query precursor for ppm; default 0.01 Da); other
        modes refuse it (their hit parameters record None). Entropy metrics with a Da window test the library
        precursor m/z rounded to float32, as ``FlashEntropySearch.identity_search`` does.
    engine : {"exact", "faiss"}
        ``faiss``: candidates from the FAISS index (``nprobe``, ``n_candidates``), rescored exactly
        (open/analog/hybrid modes).
    threads : int, optional
        numba and FAISS threads.
    formula : str or list of str, optional
        Formula mode: the queries' formulas (default: their ``formula`` metadata). A list (or array, pandas
        or Arrow column) has one value per query; a missing entry (None, NaN, pandas NA, an Arrow null)
        means that query has no formula (status ``no_formula``): it does not fall back to its metadata.
    no_neighbour : {"skip", "fallback", "empty"}
        Formula mode, query without a same-formula library spectrum (of its polarity, and passing the
        ``same_*`` filters; ``min_matches`` / ``min_score`` apply to hits after): ``skip`` -> a row with status
        ``no_neighbour`` (``no_formula`` when the query has no formula at all); ``fallback`` -> search every library spectrum of the same polarity that passes the
        ``same_*`` filters, as ``mode="open"`` with them (``fallback`` flag set); ``empty`` -> a row with status ``no_hit``.
    same_adduct, same_charge, same_instrument : bool
        Keep only library spectra with the query's adduct / charge / instrument type (when the query's is known;
        queries without one, or with an adduct no parser reads, match any, and are counted per filter in
        ``Hits.params["filters_not_applied"]``). Library spectra without an adduct or instrument type are
        dropped; ``same_charge`` compares the charge's size (polarity is matched in every search) and keeps
        library spectra of unknown charge, which many files leave out (MGF ``CHARGE=0``) where the adduct or
        polarity says it.
    min_matches : int
        Minimum matched peaks of a hit (a hit always has at least one).
    min_score : float
        Minimum score of a hit.
    nprobe : int, optional
        ``engine="faiss"``: inverted lists visited (default: the build's ``faiss_params["nprobe"]``, 16), at
        most the index's own; without effect on an index without lists (a flat index: libraries built with fewer
        than ``faiss_params["flat_below"]``, 20,000, spectra search every vector), whose hits record None.
    n_candidates : int, optional
        ``engine="faiss"``: candidates rescored exactly per query, at least ``k`` (default: ``max(50 k,
        500)``; the hit parameters record the number used).
    on_error : {"skip", "raise"}
        Unreadable query records (when ``queries`` are paths).
    input_format : str, optional
        Format of query files, as ``format`` of :func:`fastspec.io.read` (default: from each file's
        extension, else sniffed; a pipe such as ``/dev/stdin`` needs it).
    progress : bool, optional
        A tqdm bar on stderr (default: for searches of 1,000 queries or more when stderr is a terminal).
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
    from fastspec.errors import interrupts

    with interrupts(), library._in_use():  # an append on this object waits for the search, and the search for it
        return _search(library, queries, k, mode, metric, tolerance, precursor_tolerance, engine, threads, formula,
                       no_neighbour, same_adduct, same_charge, same_instrument, min_matches, min_score, nprobe,
                       n_candidates, on_error, input_format, progress, mz_power, intensity_power, metric_params)


def _search(library, queries, k, mode, metric, tolerance, precursor_tolerance, engine, threads, formula, no_neighbour,
            same_adduct, same_charge, same_instrument, min_matches, min_score, nprobe, n_candidates, on_error,
            input_format, progress, mz_power, intensity_power, metric_params) -> Hits:
    from fastspec.library import read_input

    cfg = _SearchConfig.cached(library, k, mode, metric, tolerance, precursor_tolerance, engine, threads, no_neighbour,
                               same_adduct, same_charge, same_instrument, min_matches, min_score, nprobe, n_candidates,
                               mz_power, intensity_power, metric_params)
    _check_formula(cfg, formula)
    raw, read_counts = read_input(queries, on_error, input_format=input_format)
    found = _search_spectra(library, cfg, raw, formula, progress)
    params = cfg.describe(library, formula)
    if found.unfiltered:
        params["filters_not_applied"] = found.unfiltered
    # query records the reader rejected (on_error="skip") keep their place: a row with status "rejected";
    # the counts say why
    params["query_records"] = _query_records(read_counts)
    n_read = int(read_counts["n_read"])
    return _record_hits(library, params, raw, found, read_counts.get("positions"), n_read,
                        _record_files(read_counts.get("files"), n_read), read_counts.get("rejected_ids") or {},
                        rejected_reasons=read_counts.get("rejected_reasons"))


def _formula_texts(values) -> list:
    """Formula texts of a caller's or a column's values; missing (None): None, NaN, pandas' NA and NaT,
    Arrow nulls (an Arrow array or a pandas ``string`` column is read as its Python values)."""
    if hasattr(values, "to_pylist"):  # pyarrow Array / ChunkedArray: nulls as None
        values = values.to_pylist()
    return [None if _missing_value(v) else str(v) for v in values]


def _float32_floor(min_score: float) -> float:
    """The float64 threshold at which ``min_score`` keeps exactly the hits whose score, as ``Hits.scores``
    shows it (float32), is at least ``min_score``: scores are computed in float64, and a self-score of
    0.99999999 shows as 1.0, which ``min_score=1.0`` would otherwise drop. The midpoint between the smallest
    float32 not below ``min_score`` and the float32 before it (scores there round up to it)."""
    if not np.isfinite(min_score) or min_score <= 0.0:
        return float(min_score)
    v = np.float32(min_score)
    if float(v) < min_score:
        v = np.nextafter(v, np.float32(np.inf))
    prev = np.nextafter(v, np.float32(-np.inf))
    return (float(prev) + float(v)) / 2.0


def _missing_value(v) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    if type(v).__name__ in ("NAType", "NaTType"):  # pandas.NA / NaT, without importing pandas
        return True
    return hasattr(v, "is_valid") and hasattr(v, "as_py") and not v.is_valid  # a pyarrow null scalar


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
    if formula is not None and (not hasattr(formula, "__len__") or isinstance(formula, (bytes, dict))):
        raise ParameterError(f"formula must be a string or one value per query, got {type(formula).__name__}")


def formula_param(formula) -> "str | None":
    """How the hit table records a caller's ``formula=`` (None: the queries' own formulas were used):
    the formula given for every query, or that one was given per query."""
    if formula is None:
        return None
    return formula if isinstance(formula, str) else f"given per query ({len(formula)} values)"


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
    #: formula mode: each query's canonical formula searched with (None: none); other modes: None
    formulas: list | None = None


def _search_spectra(library, cfg: "_SearchConfig", raw: Spectra, formula, progress) -> _Found:
    """Search query spectra as read (preprocessed here with the library's pipeline); ``progress`` as
    :meth:`_Context.start_progress`'s ``enabled``."""
    from fastspec.kernels._memory import retain_freed_memory
    from fastspec.library import _ms_stages, apply_pipeline

    _check_hit_memory(len(raw), cfg.k)
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
    ms1, msn = _ms_stages(raw.metadata)
    status[msn] = MSN
    status[ms1] = MS1
    has_peaks &= ~ms1 & ~msn  # searched: MS2 spectra with peaks left
    ctx = _Context(library, qproc, cfg)
    searchable = np.flatnonzero(has_peaks)
    ctx.start_progress(progress, searchable.shape[0])
    try:
        formulas = _dispatch(ctx, cfg, qproc, raw, formula, searchable, has_peaks, scores, indices, matches, status,
                             fallback)
    finally:
        ctx.close()
    status[(status == OK) & (indices[:, 0] < 0)] = NO_HIT
    return _Found(scores, indices, matches, status, fallback, _unfiltered_queries(cfg, qproc, searchable), formulas)


#: bytes per (query, hit) a search holds at once: float64 scores, int64 indices and int32 matched peaks, and
#: the float32 scores of the Hits
_HIT_BYTES = 24


def _check_hit_memory(nq: int, k: int) -> None:
    """Refuse ``nq`` queries x ``k`` hits whose (nq, k) arrays alone could not fit in this machine's memory
    (k may be as large as the library: 1,000 queries at k = 2.4M would ask for ~58 GB and end in a
    MemoryError or the OOM killer, not a message)."""
    from fastspec._sysmem import physical_memory

    total = physical_memory()
    need = nq * k * _HIT_BYTES
    if total is not None and need > total:
        raise ParameterError(f"{nq:,} queries x k={k:,} need about {need / 2**30:,.1f} GiB for their hits alone; this "
                             f"machine has {total / 2**30:,.1f} GiB: ask for fewer hits, or search fewer queries per "
                             "call (search_to_file reads, searches and writes them chunk_size at a time)")


def _record_hits(library, params: dict, raw: Spectra, found: _Found, pos, n_records: int, record_files,
                 rejected_ids: dict, first: int = 0, rejected_reasons: dict | None = None) -> Hits:
    """Hits with a row for every record of a run of ``n_records`` records read: the searched spectra's rows
    at ``pos`` (their positions in the run, int64 (len(raw),)), status ``rejected`` for the other records.

    ``first`` is the position of the run's first record among all records read (a chunk of a larger
    search): a query without an id is named by that position, as its ``query_index``. ``record_files``:
    the file of each record of the run (or None); ``rejected_ids``: run position -> id the reader got to;
    ``rejected_reasons``: run position -> the reader's reason.
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
    reasons = None
    formulas = found.formulas
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
        if formulas is not None:
            placed_formulas = [None] * n_records
            for p, f in zip(pos.tolist(), formulas):
                placed_formulas[p] = f
            formulas = placed_formulas
        reasons = [None] * n_records
        for r, why in (rejected_reasons or {}).items():
            if 0 <= r < n_records:
                reasons[r] = why
    return Hits(scores, indices, matches, status=status, fallback=fallback, query_ids=ids,
                query_precursor_mz=pmz, library=library, params=params, query_files=files,
                rejected_reasons=reasons, query_formulas=formulas)


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


def _record_files(files: list | None, n_read: int) -> list[str] | None:
    """The file of every record read, in record order, from ``(path, records)`` per file; None for
    queries given in memory (or counts that do not add up, which the reader's own check rules out)."""
    if not files or sum(n for _, n in files) != n_read:
        return None
    return [path for path, n in files for _ in range(n)]


def _dispatch(ctx, cfg, qproc, raw, formula, searchable, has_peaks, scores, indices, matches, status,
              fallback) -> list | None:
    """Search ``searchable`` queries by mode, filling the arrays; formula mode returns each query's
    canonical formula (None for the other modes)."""
    from fastspec import search_formula, search_fragment, search_identity, search_scan

    if cfg.mode in ("identity", "neutral_loss"):  # precursor windows, or losses from the precursor
        pmz = qproc.precursor_mz
        known = np.isfinite(pmz) & (pmz > 0)  # 0 is a placeholder (PEPMASS=0; the readers make it NaN)
        status[has_peaks & ~known] = NO_PRECURSOR
        rows = np.flatnonzero(has_peaks & known)
        if cfg.mode == "identity":
            search_identity.run_identity(ctx, rows, scores, indices, matches)
        else:
            search_fragment.run_losses(ctx, rows, scores, indices, matches)
    elif cfg.mode == "formula":
        fcodes, canon = search_formula.query_formula_codes(ctx, formula, raw)
        search_formula.run_formula(ctx, searchable, fcodes, scores, indices, matches, status, fallback)
        return canon
    elif cfg.engine == "faiss":
        search_scan.run_faiss(ctx, searchable, scores, indices, matches)
    else:
        run_whole_library(ctx, searchable, scores, indices, matches)
    return None


def _nprobe_used(cfg: "_SearchConfig", library) -> int | None:
    """The ``nprobe`` a hit table records: as FAISS takes it, at most the index's inverted lists (it probes
    them all beyond that), None for an index without lists (flat, HNSW: every spectrum or a graph)."""
    from fastspec import vectors

    index = vectors.load_faiss_index(library)  # read and cached by the search already
    try:
        nlist = int(vectors._faiss().extract_index_ivf(index).nlist)
    except RuntimeError:  # not an IVF index
        return None
    nprobe = faiss_nprobe(cfg, library)
    return None if nprobe is None else min(int(nprobe), nlist)


def faiss_nprobe(cfg: "_SearchConfig", library) -> int | None:
    """The inverted lists ``engine="faiss"`` visits: the search's ``nprobe``, else the build's
    (``faiss_params["nprobe"]``, recorded in the manifest), else None (the default, 16)."""
    if cfg.nprobe is not None:
        return cfg.nprobe
    return ((library.manifest.get("build") or {}).get("faiss") or {}).get("nprobe")


def faiss_n_candidates(cfg: "_SearchConfig") -> int:
    """The spectra FAISS proposes per query for exact rescoring: ``n_candidates``, else ``max(50 k, 500)``."""
    return int(cfg.n_candidates or max(50 * cfg.k, 500))


def run_whole_library(ctx: "_Context", rows: np.ndarray, scores: np.ndarray, indices: np.ndarray,
                      matches: np.ndarray) -> None:
    """Exact top-k of queries ``rows`` over the whole library, written into ``scores``, ``indices`` and
    ``matches`` at those rows: through the fragment index for the bounded metrics (with neutral losses
    for modified cosine and hybrid search), the inverted bin index for binned cosine, else every
    spectrum."""
    from fastspec import search_fragment, search_scan

    metric = ctx.cfg.metric
    if metric in _BOUNDED:
        # neutral losses: modified cosine's shifted pairs, hybrid search's losses
        search_fragment.run_bounded(ctx, rows, scores, indices, matches,
                                    use_nl=metric == "modified_cosine" or ctx.cfg.mode == "hybrid")
    elif metric in _LOSS_BOUNDED:  # neutral-loss cosine: every pair is a pair of losses
        search_fragment.run_bounded(ctx, rows, scores, indices, matches, use_nl=True, losses_only=True)
    elif metric == "binned_cosine" and search_scan.n_bins(ctx) <= search_scan._BIN_MAX:
        search_scan.run_binned(ctx, rows, scores, indices, matches)
    else:
        search_scan.run_brute_force(ctx, rows, scores, indices, matches)


#: k may exceed the library's size up to this (the hits are padded with -1, as FAISS does)
from fastspec.similarity import _K_PAD_MAX, _finite  # noqa: E402  (limits and checks shared with score_matrix)


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
        if mode in _FLASH_MODES and metric not in _ENTROPY:
            hint = " (matchms' NeutralLossesCosine is mode='open', metric='neutral_loss_cosine')" \
                if mode == "neutral_loss" else ""
            raise ParameterError(f"mode {mode!r} (ms_entropy's {_FLASH_MODES[mode]}) scores entropy or "
                                 f"unweighted_entropy, not {metric!r}{hint}")
        c.mode, c.metric = mode, metric
        c.tolerance = parse_tolerance(0.02 if tolerance is None else tolerance, "tolerance")
        if metric == "binned_cosine" and metric_params.get("preset") and tolerance is not None \
                and metric_params.get("bin_width") is None:
            # the bin width in place of the preset's, as the command line and the lab take it (passed to
            # similarity.prepare as bin_width, which wins over its preset)
            if c.tolerance.unit != "da":
                raise ParameterError(f"binned_cosine's bin width is in Da, not {c.tolerance}")
            metric_params = {**metric_params, "bin_width": c.tolerance.value}
        if mode in _FLASH_MODES and c.tolerance.unit != "da":
            raise ParameterError(f"mode {mode!r} takes a Da tolerance, as ms_entropy's {_FLASH_MODES[mode]} does")
        if precursor_tolerance is not None and mode != "identity":  # it would filter nothing
            raise ParameterError(f"precursor_tolerance applies to mode='identity', not {mode!r}")
        c.precursor_tolerance = parse_tolerance(0.01 if precursor_tolerance is None else precursor_tolerance,
                                                "precursor_tolerance")
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
        if no_neighbour != "skip" and mode != "formula":  # it would be recorded, yet nothing falls back
            raise ParameterError(f"no_neighbour applies to mode='formula', not {mode!r}")
        c.no_neighbour = no_neighbour
        from fastspec.kernels._config import check_threads

        c.threads = check_threads(threads)  # (the one check every entry point uses)
        for name, flag in (("same_adduct", same_adduct), ("same_charge", same_charge), ("same_instrument", same_instrument)):
            if not isinstance(flag, (bool, np.bool_)):  # "no" would read as True
                raise ParameterError(f"{name} must be True or False, got {flag!r}")
        c.same_adduct, c.same_charge, c.same_instrument = bool(same_adduct), bool(same_charge), bool(same_instrument)
        c.min_matches = _count(min_matches, "min_matches", 0)
        c.min_score_given = _finite(min_score, "min_score")
        if c.min_score_given > 1.0:  # every metric scores within [0, 1]: nothing could ever be a hit
            raise ParameterError(f"min_score must be at most 1 (scores lie in [0, 1]), got {min_score!r}")
        c.min_score = _float32_floor(c.min_score_given)
        c.nprobe = None if nprobe is None else _count(nprobe, "nprobe", 1)
        c.n_candidates = None if n_candidates is None else _count(n_candidates, "n_candidates", 1)
        if engine != "faiss" and (nprobe is not None or n_candidates is not None):  # set but never used
            raise ParameterError("nprobe and n_candidates apply to engine='faiss'")
        if c.n_candidates is not None and c.n_candidates < c.k:  # fewer than k hits whatever the library holds
            raise ParameterError(f"n_candidates={c.n_candidates} must be at least k={c.k}")
        c.mz_power, c.intensity_power = _finite(mz_power, "mz_power"), _finite(intensity_power, "intensity_power")
        if c.intensity_power < 0:  # a zero-intensity peak would weigh inf, and its spectrum score NaN (matchms too)
            raise ParameterError(f"intensity_power must be 0 or more, got {c.intensity_power:g}")
        c.metric_params = dict(metric_params)
        _check_metric_params(c.metric_params)
        if metric in _ENTROPY:
            # the library holds preprocessed peaks and the fragment index's entropy weights are computed on
            # them as stored; rescoring must see the very same peaks, or the bounds would not hold
            if c.metric_params.pop("clean", False):
                raise ParameterError("entropy search scores the library's stored (preprocessed) peaks; clean=True "
                                     "is not supported -- choose the cleaning with the library's preprocessing")
            if (c.mz_power, c.intensity_power) != (0.0, 1.0):
                raise ParameterError(f"mz_power and intensity_power apply to the cosine metrics, not {metric} search "
                                     f"(got mz_power={c.mz_power!r}, intensity_power={c.intensity_power!r})")
            pipe = library.pipeline
            if metric == "entropy" and pipe is not None and any(name == "entropy_weight" for name, _ in pipe.steps):
                raise ParameterError("the library's preprocessing already applies entropy_weight, so metric "
                                     "'entropy' would weight its peaks twice; use metric='unweighted_entropy' "
                                     "(ms_entropy's weighted entropy of the peaks as read)")
        # the metric's own checks (entropy's positive tolerance, binned_cosine's bin width from a Da
        # tolerance, ...) on an empty input now, not when a query first reaches a candidate: a query set
        # with nothing to score returned hits under parameters every other search refuses
        from fastspec import similarity

        similarity.prepare_csr(np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.float32), np.zeros(0), c.metric,
                               **c.metric_kwargs())
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
            elif self.mode == "neutral_loss":  # or its neutral-loss search
                kw["neutral_loss"] = True
        else:
            kw["mz_power"] = self.mz_power
            kw["intensity_power"] = self.intensity_power
        return kw

    def describe(self, library, formula=None) -> dict:
        """The parameters for a hit table: fresh objects (a caller editing ``hits.params`` must not change
        this config, which later searches with the same arguments reuse, nor the library's manifest);
        with the caller's ``formula=`` (formula mode), ``formula`` too (:func:`formula_param`)."""
        out = {
            "mode": self.mode, "metric": self.metric, "k": self.k,
            # binned cosine's bins come from the tolerance only where no preset or bin_width sets them
            "tolerance": None if self.metric == "binned_cosine" and (self.metric_params.get("preset") or self.metric_params.get(
                "bin_width") is not None) else str(self.tolerance),
            # only identity search has a precursor window: a value in another mode's table would read as a filter
            "precursor_tolerance": str(self.precursor_tolerance) if self.mode == "identity" else None,
            "engine": self.engine,
            "no_neighbour": self.no_neighbour, "same_adduct": self.same_adduct, "same_charge": self.same_charge,
            "same_instrument": self.same_instrument, "min_matches": self.min_matches, "min_score": self.min_score_given,
            "nprobe": _nprobe_used(self, library) if self.engine == "faiss" else self.nprobe,
            # as the FAISS search takes it: at most the library
            "n_candidates": min(faiss_n_candidates(self), len(library)) if self.engine == "faiss" else self.n_candidates,
            "mz_power": self.mz_power,
            "intensity_power": self.intensity_power, "metric_params": _plain_copy(self.metric_params),
            "library": str(library.path), "library_n_spectra": len(library),
            "preprocess": _plain_copy(library.preprocess_config),
            "fastspec_version": library.manifest.get("fastspec_version"),
        }
        if formula is not None:
            out["formula"] = formula_param(formula)
        return out


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
_OWN_PARAMS = {"spectra", "metric", "tolerance", "mz_power", "intensity_power", "threads", "flash", *_FLASH_MODES}


def _check_metric_params(params: dict) -> None:
    """Extra keyword arguments must be :func:`fastspec.similarity.prepare` options."""
    if not params:  # the common case; inspecting the signature costs ~0.06 ms per search call
        return
    import inspect

    from fastspec.similarity import prepare

    allowed = set(inspect.signature(prepare).parameters) - _OWN_PARAMS
    for name in _FLASH_MODES:  # prepare() flags that are searches of their own, with their own candidates
        if name in params:
            raise ParameterError(f"{name} is a search mode, not a metric option: use mode={name!r}")
    unknown = sorted(set(params) - allowed)
    if unknown:
        from difflib import get_close_matches

        own = [n for n, prm in inspect.signature(search).parameters.items()
               if n not in ("library", "queries") and prm.kind is not prm.VAR_KEYWORD]
        hints = []
        for u in unknown:
            close = _PEER_NAMES.get(u.lower()) or next(iter(get_close_matches(u, own + sorted(allowed), n=1)), None)
            if close:
                hints.append(f"{u}: {close if ' ' in close else f'did you mean {close}?'}")
        raise ParameterError(f"unknown search option(s): {', '.join(unknown)}"
                             + (f" ({'; '.join(hints)})" if hints else "")
                             + f"; search options are {', '.join(own)}; metric options are {', '.join(sorted(allowed))}")


#: options other tools name differently (ms_entropy, matchms, FAISS, scikit-learn), and what fastspec takes
_PEER_NAMES = {
    "polarity": "a query never matches the other polarity (always; no option)",
    "ion_mode": "a query never matches the other polarity (always; no option)",
    "adduct": "same_adduct=True", "charge": "same_charge=True", "instrument": "same_instrument=True",
    "instrument_type": "same_instrument=True",
    "ms2_tolerance_in_da": "tolerance", "ms2_tolerance_in_ppm": "tolerance (e.g. '10ppm')",
    "ms1_tolerance_in_da": "precursor_tolerance", "ms1_tolerance_in_ppm": "precursor_tolerance (e.g. '10ppm')",
    "n_neighbors": "k", "topn": "k", "top_n": "k", "method": "mode", "search_type": "mode",
    "score_min": "min_score", "min_matched_peaks": "min_matches", "n_jobs": "threads",
}


def _count(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _kth_lower(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Each row's k-th exact score lowered by the bound kernel's float32 slack (-inf: fewer than k hits):
    a valid pruning threshold."""
    from fastspec.kernels import fragment as fk

    return np.where(indices[:, -1] >= 0, scores[:, -1] * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL, -np.inf)


#: queries from which a search shows a progress bar by default (stderr a terminal); fewer take a second
#: or less in most modes
AUTO_PROGRESS_QUERIES = 1000


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
        self._qpol = None

    def start_progress(self, enabled, total: int) -> None:
        """A tqdm bar of ``total`` queries on stderr (``enabled`` None: for :data:`AUTO_PROGRESS_QUERIES` or
        more when stderr is a terminal), or the caller's own bar (a tqdm object, which a chunked search
        advances over its chunks; not closed here)."""
        import sys

        if hasattr(enabled, "update"):  # a tqdm bar
            self.bar, self._own_bar = enabled, False
            return
        from fastspec.io._common import wants_progress

        # "no" is refused, not read as True. A loop of one-query calls in a terminal made and closed a bar
        # per call, never drawn: 0.22 ms of a 0.78 ms identity call at 2.4M
        enabled = wants_progress(enabled, auto=None if total >= AUTO_PROGRESS_QUERIES else False)
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

            self._qprep = similarity.prepare(self.q, self.cfg.metric, **self.cfg.metric_kwargs(),
                                             threads=self.cfg.threads)
        return self._qprep

    @property
    def qpol(self) -> np.ndarray:
        """The queries' polarity, int8 (nq,): read from their metadata once per search (the filter codes and
        the fragment index's polarity groups both need it)."""
        if self._qpol is None:
            self._qpol = np.asarray(self.q.polarity)
        return self._qpol

    def filters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Filter codes (query (nq, f), library (n, f), symmetric (f,)); polarity always first."""
        if self._filters is None:
            self._filters = _filter_codes(self.lib, self.q, self.cfg, self.qpol)
        return self._filters

    def exact(self, rows: np.ndarray, cand_offsets: np.ndarray, cand_ids: np.ndarray, by_precursor: bool = False,
              cand_bounds: np.ndarray | None = None):
        """Exact top-k of queries ``rows`` over their candidate CSR -> scores, indices (library rows), matches.

        ``cand_ids`` are library rows, or with ``by_precursor`` positions in the precursor-ordered peak
        copy (see :func:`fastspec.search_identity.window_candidates`); either way the hits are library
        rows, ties to the lowest.
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
        entropy_w = "prec_entropy_w" if by_precursor else "entropy_w"
        entropy_w = entropy_w if not in_place and self.entropy_in_place(entropy_w) else None
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

    def entropy_in_place(self, weights: str = "prec_entropy_w") -> bool:
        """Whether entropy candidates can be scored in place: the index stores ``weights`` as this search
        prepares the stored peaks (``prec_entropy_w`` for the precursor-ordered copy, ``entropy_w`` in
        library order: weighted entropy of the stored peaks, not cleaned again, default powers; no
        tolerance enters that preparation)."""
        if self.cfg.metric != "entropy" or not self.lib.has_array(weights):
            return False
        built = self.lib.manifest["build"].get("prec_entropy") or {}
        qp = self.qprep
        return (built.get("clean") is False and qp.params.get("clean") is False
                and not qp.params.get("neutral_loss")  # it scores losses, not the stored m/z
                and qp.params.get("mz_power") == 0.0 and qp.params.get("intensity_power") == 1.0)

    def stored_view(self, by_precursor: bool = False, weights: str | None = None):
        """The stored peaks (library order, or the precursor-ordered copy) as a Prepared library, scored
        in place: no gather, no copy.

        Only for metrics whose prepared weights are the stored intensities (``_RAW_WEIGHTS`` at
        ``mz_power`` 0, ``intensity_power`` 1): the stored norms are then the prepared norms. Scoring
        candidates where they lie beats gathering them first: 2.4M MassBank-grown library, analog
        search, the gather alone took 0.85 s per 1,000 queries. ``weights``: a stored array of prepared
        weights to read instead of the intensities (``prec_entropy_w`` for the copy, ``entropy_w`` in
        library order, see :meth:`entropy_in_place`; entropy kernels read no norms).
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
                arrays = (lib.array("offsets"), lib.array("mz"), lib.array(weights or "intensity"), lib.array("norm"),
                          lib.array("precursor_mz"))
            from fastspec.library import KEEP_VIEWS

            view = lib._remember(key, similarity.Prepared(qp.metric, *arrays, qp.tolerance, dict(qp.params)),
                                "stored views", self._prep_key, KEEP_VIEWS)
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

    def query_weights(self, wname: str) -> np.ndarray:
        """Bound weights of every query peak (float32 (Q,)): L2-normalised cosine weights at the search's
        powers, sum-normalised entropy weights, or neutral-loss cosine's (``wname`` as in ``_BOUNDED`` and
        ``_LOSS_BOUNDED``); computed once."""
        qw = self._qweights.get(wname)
        if qw is None:
            from fastspec.kernels import fragment as fk

            if wname == "nl_cosine":  # cosine weights renormalised below each query's precursor m/z
                off = self.q.offsets
                qw = fk.below_precursor_weights(off[:-1], off[1:], self.q.mz, self.query_weights("cosine"),
                                                self.q.precursor_mz, threads=self.cfg.threads,
                                                intensity=self.q.intensity)[0]
            else:
                mzp, ip = (self.cfg.mz_power, self.cfg.intensity_power) if wname == "cosine" else (0.0, 1.0)
                qw = fk.peak_weights(self.q.offsets, self.q.mz, self.q.intensity, wname, mzp, ip,
                                     threads=self.cfg.threads)
            self._qweights[wname] = qw
        return qw

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




def _filter_codes(lib, q: Spectra, cfg: _SearchConfig, qpol: np.ndarray):
    """Integer codes per filter: polarity (``qpol``, the queries'; symmetric: unknown matches all), then the
    optional ones."""
    from fastspec.library import normalize_adducts

    n_lib = len(lib)
    qcols = [_pol_code(qpol)]
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
    qc = np.empty((len(q), len(qcols)), np.int32)  # (np.stack and a cast: ~12 us for one query)
    for j, col in enumerate(qcols):
        qc[:, j] = col
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
