"""Identity search: exact top-k over each query's precursor window.

Candidates are the library spectra whose precursor m/z lies within the precursor tolerance of the
query's. With the index's precursor-block index (cosine and modified cosine at default weights,
entropy) every candidate first gets a score bound, and only those whose bound can still reach the
top-k are scored (:func:`bounded_window_search`); otherwise all are scored exactly, read from the
precursor-ordered peak copy. Open search takes its first threshold from the same windows
(:mod:`fastspec.search_fragment`).
"""
from __future__ import annotations

import numpy as np

from fastspec.search import _BOUNDED, _ENTROPY, _batches, _Context, _csr_take, _filter_key, _merge_topk

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


def precursor_half_widths(tol, pmz: np.ndarray) -> np.ndarray:
    """Half-width of each query's precursor window, float64 (nq,): ``tol`` in Da, or ppm of the query's
    precursor m/z (a Tolerance)."""
    pmz = np.asarray(pmz, np.float64)
    return np.full(pmz.shape, float(tol.value)) if tol.unit == "da" else np.abs(pmz) * tol.value * 1e-6


def window_candidates(ctx: _Context, rows: np.ndarray, tol, positions: bool = False,
                      flash: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Library spectra whose precursor m/z is within ``tol`` (a Tolerance) of each query's, filtered
    (CSR of library rows, or with ``positions`` of positions in precursor order): ``abs(l - q) <= tol``
    in float64 as matchms' ``PrecursorMzMatch`` tests it (ppm: relative to the query's), or with
    ``flash`` ``q - tol <= float32(l) <= q + tol``, as ``FlashEntropySearch.identity_search`` stores and
    compares them."""
    from fastspec.kernels.window import WINDOW_ABS, WINDOW_FLASH, window_positions

    lib = ctx.lib
    n_finite = int(lib.manifest["counts"].get("n_with_precursor", len(lib)))
    sorted_pmz = np.asarray(lib.array("prec_sorted")[:n_finite])
    order = lib.array("prec_order")
    pmz = np.asarray(ctx.q.precursor_mz[rows], np.float64)
    half = precursor_half_widths(tol, pmz)
    qc, lc, sym = ctx.filters()
    key = ("codes in precursor order", _filter_key(ctx.cfg))
    lcp = lib._cache.get(key)
    if lcp is None:  # the filter codes permuted like the precursor-ordered arrays: windows read in order
        lcp = lib._cache[key] = np.ascontiguousarray(lc[np.asarray(order[:n_finite])])
    # a library precursor of 0 or less is a placeholder, never inside a window (the floor is above 0)
    offs, pos = window_positions(sorted_pmz, pmz, half, float(np.nextafter(0.0, 1.0)), np.ascontiguousarray(qc[rows]),
                                 lcp, sym, WINDOW_FLASH if flash else WINDOW_ABS)
    if positions:
        return offs, pos
    return offs, np.asarray(order[pos], dtype=np.int64)


def window_search(ctx: _Context, rows: np.ndarray, tol, flash: bool = False):
    """Exact top-k over each query's precursor window, read from the precursor-ordered peak copy when
    the index has one (a window is then one block of memory, and default cosine weights are scored
    in place): 2.4M MassBank-grown library, 1,000 queries, 1 thread, best of 3: identity 0.47-0.52
    -> 0.24 ms/query. ``flash``: windows as :func:`window_candidates`'."""
    by_prec = ctx.lib.has_array("prec_norm")  # the copy's required arrays (prec_entropy_w is optional)
    offs, cand = window_candidates(ctx, rows, tol, positions=by_prec, flash=flash)
    if by_prec and block_bounded(ctx):
        return bounded_window_search(ctx, rows, offs, cand)
    return ctx.exact(rows, offs, cand, by_precursor=by_prec)


def block_bounded(ctx: _Context) -> bool:
    """Whether window candidates can be pruned through the precursor-block index: cosine or modified
    cosine at default weights, or entropy (the index stores those scan weights), on an index that has
    it."""
    from fastspec.library import WINDOW_WEIGHTS

    kw = ctx.cfg.metric_kwargs()
    if ctx.cfg.metric in ("cosine", "modified_cosine"):
        ok = kw.get("mz_power") == 0.0 and kw.get("intensity_power") == 1.0
    else:
        ok = ctx.cfg.metric == "entropy"
    return ok and ctx.lib.window_block > 0 and ctx.lib.has_array(WINDOW_WEIGHTS[_BOUNDED[ctx.cfg.metric][1]])


def bounded_window_search(ctx: _Context, rows: np.ndarray, offs: np.ndarray, pos: np.ndarray):
    """Exact top-k over precursor windows (``pos``: CSR of positions in precursor order), scoring
    only candidates whose score bound can still reach the top-k (cosine and modified cosine at default
    weights, entropy: see :func:`block_bounded`).

    The bounds come from the precursor-block index (:func:`fastspec.kernels.window.window_bounds`).
    The ``k + _WINDOW_FIRST`` best-bounded candidates of a query are scored first; the k-th exact score
    among them is a floor the final k-th score cannot be below, so only the other candidates whose
    bound reaches it are scored next, and the two top-k lists merged. Windows wider than
    ``_WINDOW_SPAN`` spectra are scored in full.
    """
    from fastspec.kernels.fragment import BOUND_ATOL, BOUND_RTOL
    from fastspec.kernels.window import second_round, window_bounds

    lib, cfg = ctx.lib, ctx.cfg
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
            res = bounded_window_search(ctx, rows[sel], o, p) if j == 0 else ctx.exact(rows[sel], o, p, True)
            for a, v in zip(out, res):
                a[sel] = v
        return tuple(out)
    from fastspec.library import WINDOW_WEIGHTS

    from fastspec.spectra import _gather_index

    wname = _BOUNDED[cfg.metric][1]
    qv = ctx.query_weights(wname)
    peaks, q_off = _gather_index(ctx.q.offsets, rows)  # the rows' peaks (no metadata taken)
    qv = qv[peaks]
    extra = None
    if cfg.metric == "modified_cosine":  # shifted pairs: peak windows widened by the precursor window
        extra = precursor_half_widths(cfg.precursor_tolerance, ctx.q.precursor_mz[rows])
    wb = window_bounds(q_off, ctx.q.mz[peaks], qv if wname == "cosine" else np.sqrt(qv), offs, pos,
                       lib.array("prec_offsets"), lib.array("wblk_mz"), lib.array("wblk_loc"),
                       lib.array(WINDOW_WEIGHTS[wname]), lib.window_block, cfg.tolerance.da, cfg.tolerance.ppm,
                       cfg.k + _WINDOW_FIRST, extra=extra, threads=cfg.threads,
                       b_sum=lib.array("wblk_sum") if lib.has_array("wblk_sum") else None,
                       min_matches=max(1, cfg.min_matches))
    s, idx, m = ctx.exact(rows, wb.first_offsets, wb.first_positions, by_precursor=True)
    theta = np.where(idx[:, -1] >= 0, s[:, -1], -np.inf)
    rtol = BOUND_RTOL if cfg.metric == "entropy" else _WINDOW_RTOL
    again, offs2, pos2 = second_round(offs, wb.ub, wb.count, wb.first, np.maximum(theta, cfg.min_score),
                                      max(1, cfg.min_matches), rtol, BOUND_ATOL, pos, wb.rest)
    if again.shape[0]:  # only the candidates not scored yet; their top-k merged with the first
        more = ctx.exact(rows[again], offs2, pos2, by_precursor=True)
        s[again], idx[again], m[again] = _merge_topk((s[again], idx[again], m[again]), more)
    return s, idx, m


#: queries per identity batch: each batch's window arrays (~12 MB per 1,000 queries at 2.4M) then stay
#: below the 32 MB up to which freed memory is reused (kernels._memory.retain_freed_memory); 8,000
#: queries, 1 thread: 4,096 per batch 0.051-0.053 ms per query, 2,048 0.048-0.049, 1,024 0.050-0.052
_IDENTITY_BATCH = 2048


def run_identity(ctx: _Context, rows, scores, indices, matches):
    tol = ctx.cfg.precursor_tolerance
    # entropy with Da windows is FlashEntropySearch's search: its fragment windows (similarity's flash) and
    # its precursor window, which compares the library's precursor m/z as it stores them, in float32
    flash = ctx.cfg.metric in _ENTROPY and tol.unit == "da"
    for batch in _batches(rows, _IDENTITY_BATCH):
        s, i, m = window_search(ctx, batch, tol, flash=flash)
        scores[batch], indices[batch], matches[batch] = s, i, m
        ctx.advance(batch.shape[0])
