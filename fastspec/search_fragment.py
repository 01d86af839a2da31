"""Open, analog, hybrid and neutral-loss search: the exact top-k of the whole library through the
fragment-ion (and neutral-loss) index.

:func:`fastspec.kernels.fragment.search_bounds` bounds every spectrum sharing a peak (or a loss) with
the query and prunes with a threshold, a lower bound of the k-th best score; the candidates of best
bound are scored exactly until the k-th exact score beats every bound left out, so hits equal brute
force. Queries whose first threshold is weak take a dense scan of the same index instead
(:func:`fastspec.kernels.dense.dense_bounds`: no pruning, one table lookup per entry), with the same
exact rescoring. The first threshold (:func:`_first_theta`) comes from exact scores of likely hits: the query's
precursor window, FAISS neighbours (from the threshold index when the library has one), and for
analog and hybrid search the spectra best matching its heaviest peak (:func:`_heavy_theta`).
"""
from __future__ import annotations

import numpy as np

from fastspec import search_identity, search_scan
from fastspec.search import _BOUNDED, _LOSS_BOUNDED, _batches, _Context, _filter_key, _kth_lower
from fastspec.tolerance import parse_tolerance

#: Open search: a precursor-window threshold at least this high is kept as it is (no FAISS neighbours
#: looked up; :func:`_first_theta`).
_THETA_WINDOW_ENOUGH = 0.5
#: first pruning threshold of open/analog search: FAISS neighbours rescored exactly (:func:`_first_theta`);
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
#: candidates from the threshold index (:data:`fastspec._indexfmt.THETA_FILE`, used when the library has
#: one) for open and analog search alike, at nprobe ``_THETA_NPROBE``: its 4-bit codes rank coarser than
#: SQ8 but cost a sixth per list (2.4M, 1,000 queries, 1 thread, interleaved, ms/query, 100 -> 300
#: candidates: open entropy novel compounds 3.38 -> 3.17, open cosine novel 1.05 -> 0.98, copies 0.440
#: -> 0.435; nprobe 8 / 16 no better)
_THETA_FAISS_PQ = 300
#: analog and hybrid search: queries whose threshold is still below ``_HEAVY_BELOW`` take one from the
#: ``_HEAVY_CANDIDATES`` spectra that best match their ``_HEAVY_PEAKS`` heaviest peaks, fragments and
#: neutral losses, rescored exactly (:func:`_heavy_theta`). FAISS's binned vectors miss analogs that
#: match through the precursor shift only: on a 2.4M MassBank-grown library, of 281 novel-compound
#: queries, 44 had a k-th score of 0.95 (median) but a FAISS threshold of 0.04 (their hits' plain cosine:
#: 0.0), and took 13 ms each. 300 queries, 1 thread, interleaved, same hits, ms/query (median of 4):
#: 6.40 -> 5.28 (0.82x) with one peak below 0.7; below 0.6 5.28, 0.9 slower; 2-3 peaks cost more
#: than they save (without _HEAVY_BAND the pass does not prune: 3.7 ms per query at one peak, 44.7k
#: spectra reached); library copies as queries 2.20 -> 2.28 (noise). With _HEAVY_BAND 0.5, two peaks
#: or a 0.9 limit were no better. Open search gained nothing (cosine 0.97x, entropy 1.0-1.3x: its weak
#: thresholds are weak hits). With the FAISS threshold index (2026-12-05; 2.4M, 1,000 queries, 6
#: interleaved rounds, same hits): below 0.5 instead of 0.7, hybrid novel compounds 0.91x (0.5 faster
#: in all 6 rounds), hybrid copies and analog novel compounds unchanged (3.25 -> 3.27, 2.88 -> 2.88 ms).
#: Since analog and hybrid queries below 0.8 / 0.9 take the dense scan (``_DENSE_BELOW``), this pass
#: runs only for queries the dense scan may not take (a minimum of matched peaks).
_HEAVY_PEAKS = 1
_HEAVY_BELOW = 0.5
_HEAVY_CANDIDATES = 300
#: the heavy pass reaches only spectra whose partner of the query's heaviest peak has at least this scan
#: weight (see :func:`_heavy_theta`): same 300 queries, 7 interleaved runs, median ms/query, against
#: every partner: novel compounds 5.54 -> 4.94 (0.89x), library copies 2.27 -> 2.11; 0.3 / 0.7 alike
_HEAVY_BAND = 0.5
#: open search asks FAISS only from this library size on: below, the bound kernel's own precursor-window
#: threshold suffices (100k: open cosine 0.171 ms/query without, 0.205 with; 1M: 1.45 -> 1.37; 2.4M: 4.3 -> 3.4)
_THETA_FAISS_OPEN_MIN_SQ8 = 500_000
#: the same with the threshold index (:data:`fastspec._indexfmt.THETA_FILE`), a sixth of SQ8's cost per
#: query: MassBank-grown libraries, 1,000 queries, 1 thread, 5 interleaved rounds, same hits, ms/query
#: without -> with FAISS thresholds: 200k novel compounds open entropy 0.655 -> 0.501, open cosine 0.224
#: -> 0.205, library copies 0.249 -> 0.274 / 0.110 -> 0.123; 400k novel 1.136 -> 0.758 / 0.395 -> 0.278,
#: copies 0.374 -> 0.367 / 0.154 -> 0.172; 100k novel 0.396 -> 0.362 / 0.135 -> 0.166, copies 0.252 ->
#: 0.276 / 0.109 -> 0.132
_THETA_FAISS_OPEN_MIN = 200_000
#: Queries whose first threshold (:func:`_first_theta`) is below this (by kind and neutral losses: open
#: cosine, open entropy, analog, hybrid) take the dense scan (:func:`fastspec.kernels.dense.dense_bounds`)
#: instead of the pruned bound kernel (and no heaviest-peak threshold): low thresholds prune little, and
#: then one pass adding a table entry per window entry costs less than pruning does. 2.4M MassBank-grown
#: library, 1 thread, 3-5 interleaved rounds in one process, identical hits, median ms per query, never
#: dense -> these values:
#:
#: * open cosine (1,000 queries): novel compounds 1.48 -> 1.13 / 1.09 / 1.12 (0.5 / 0.65 / 0.8), library
#:   copies 0.500 -> 0.491 / 0.486 / 0.480; with 96 candidates, 0.5 / 0.65 / 0.8 / 0.9: novel 1.30 / 1.23 /
#:   1.26 / 1.32, copies 0.572 / 0.580 / 0.584 / 0.678;
#: * open entropy: novel 2.80 -> 1.57 / 1.57 / 1.60 (0.9 / 0.95 / always), copies 1.36 -> 1.29 / 1.20 /
#:   1.25 (0.8 / 0.9 / 0.95);
#: * hybrid (600 queries, 96 candidates): novel 6.95 -> 5.50 / 4.92 / 4.63 / 4.53 / 4.73 (0.5 / 0.7 / 0.8 /
#:   0.9 / always), copies 3.38 -> 3.19 / 3.14-3.20 / 3.23 / 3.84 / 4.85;
#: * analog: novel 2.35 -> 2.40 / 2.34 / 2.70 / 3.68 (0.5 / 0.7 / 0.9 / always), copies 1.30 -> 1.39 / 1.43
#:   / 1.85 / 4.32 with 96 candidates; with 1,024 (``_DENSE_CANDIDATES_NL``; 600 queries, 3 interleaved
#:   rounds, the "never" figures sending queries without a threshold to the dense scan) novel 2.55 / 2.20
#:   -> 2.44 / 2.20 / 1.92 / 2.07 (0.5 / 0.7 / 0.8 / 0.9), copies 1.22 / 1.19 -> 1.23 / 1.18 / 1.18 / 1.35;
#:   1,000 queries, 7 rounds, never (exactly) -> 0.6 / 0.8: novel 2.78 -> 2.55 / 2.49, copies 1.44 ->
#:   1.47 / 1.49 (a slower hour); below 0.8, 2.4M without the threshold index: novel 2.32 -> 2.12, copies
#:   1.38 -> 1.37; 100k: 0.274 -> 0.239, 0.287 -> 0.257.
#:
#: Deciding on the precursor window's threshold alone, before FAISS, was no better for open entropy and
#: worse for open cosine (novel compounds 1.45-1.55 for 0.3-0.8).
#:
#: Hybrid moved from 0.8 to 0.9, and analog from never to 0.8, with ``_DENSE_CANDIDATES_NL`` (2026-12-05,
#: hybrid's figures there).
_DENSE_BELOW = {(0, False): 0.65, (1, False): 0.9, (0, True): 0.8, (1, True): 0.9}
#: candidates of the dense scan's first round (at least 2k + 8). Its bounds are looser than the pruned
#: kernel's and a second round is a second full scan, yet sorting and gathering more candidates cost more
#: than the rescans they save: 1,000 novel-compound queries, 1 thread, 3 interleaved rounds, median ms
#: per query at 28 / 64 / 112 / 256 / 512 / 1,024 candidates: 100k library cosine 0.097 / 0.100 / 0.112
#: / 0.131 / 0.157 / 0.200, entropy 0.108 / 0.124 / 0.134 / 0.148 / 0.182 / 0.255; 2.4M cosine 1.32 /
#: 1.25 / 1.19-1.25 / 1.19 / 1.29 / 1.21, entropy 2.05 / 1.82 / 1.64-1.73 / 1.71 / 1.76 / 2.04
_DENSE_CANDIDATES = 96
#: the same for analog and hybrid search. Their bounds count a peak's fragment and loss partners
#: both, so 96 candidates rarely held the top-k: hybrid search on a 2.4M MassBank-grown library, of
#: 1,000 novel-compound queries 611 took the dense scan and 334 of them a second full scan
#: (m = 768), 113 a third; 5.41 ms per query, a third of it in 329 pruned-kernel queries with first
#: thresholds of 0.8-0.9 (5.5 ms each). 600 queries, 1 thread, 3 interleaved rounds in one process,
#: identical hits, median ms per query, novel compounds / library copies: 96 candidates and dense below
#: 0.8 4.93 / 3.07; below 0.9 with 512 / 1,024 / 2,048 candidates 3.86 / 3.06, 3.46 / 2.78, 3.43 / 2.82;
#: 1,024 below 0.95 / always 3.38 / 3.13, 3.38 / 3.35. 2.4M without the threshold index: 4.75 / 3.41 ->
#: 3.65 / 3.19; 100k: 0.485 / 0.558 -> 0.466 / 0.499.
_DENSE_CANDIDATES_NL = 1024
#: candidates per bound-kernel call (queries x m): a round whose m is large (late rounds reach the library
#: size; the pruned kernel's first analog round holds (2k + 8) x 64 per query) goes to the kernel a slice
#: of queries at a time. 2^22 candidates: ~70 MB of ids and bounds; first rounds of 1,024 queries at k = 10
#: fit in one call (at most 2,048 candidates each)
_ROUND_ENTRIES = 1 << 22


def run_bounded(ctx: _Context, rows, scores, indices, matches, use_nl: bool, losses_only: bool = False):
    # query weights and the neutral-loss window base once per search, not once per batch
    qw = ctx.query_weights(_bound_kind(ctx.cfg)[1])
    nl_base = float(max(ctx.lib.manifest["counts"].get("max_mz", 0.0),
                        float(ctx.q.mz.max()) if ctx.q.mz.size else 0.0))
    for batch in _batches(rows, 1024):
        _run_bounded(ctx, batch, scores, indices, matches, use_nl, qw, nl_base, losses_only)
        ctx.advance(batch.shape[0])


def _bound_kind(cfg) -> tuple[int, str]:
    """(bound kind, weight name) of the search's metric (``_BOUNDED``, ``_LOSS_BOUNDED``). Neutral-loss
    cosine keeping the peaks above the precursor (negative losses) weighs every peak as cosine does."""
    if cfg.metric in _BOUNDED:
        return _BOUNDED[cfg.metric]
    if not cfg.metric_params.get("ignore_peaks_above_precursor", True):
        return 0, "cosine"
    return _LOSS_BOUNDED[cfg.metric]


def run_losses(ctx: _Context, rows, scores, indices, matches):
    """ms_entropy's neutral-loss search (``mode="neutral_loss"``): the exact top-k of the entropy
    similarity of neutral losses, through the neutral-loss index.

    The dense scan (:func:`fastspec.kernels.dense.dense_bounds`, loss windows only) bounds every spectrum
    and :func:`_rounds` scores the candidates exactly, as for open search (unclean spectra included, see
    :func:`_dense_eligible`; with a minimum of matched peaks, which it then counts, too). ``rows``:
    queries with a precursor m/z (the caller sets the others' status).
    """
    run_bounded(ctx, rows, scores, indices, matches, use_nl=True, losses_only=True)


def _run_bounded(ctx: _Context, rows, scores, indices, matches, use_nl: bool, qw: np.ndarray,
                 nl_base: float, losses_only: bool = False):
    """Exact whole-library top-k through the fragment (and neutral-loss) index with score bounds.

    Candidates come out of :func:`fastspec.kernels.fragment.search_bounds` (pruning), or for queries with
    a weak first threshold :func:`fastspec.kernels.dense.dense_bounds` (no pruning, see ``_DENSE_BELOW``),
    in bound order, ``m`` per query; :func:`_rounds` scores them exactly. ``losses_only``: neutral-loss
    search (:func:`run_losses`) and neutral-loss cosine, loss windows only.
    """
    from fastspec import search_scan
    from fastspec.kernels import fragment as fk
    from fastspec.library import allowed_groups

    if rows.shape[0] == 0:
        return
    lib, cfg = ctx.lib, ctx.cfg
    kind, wname = _bound_kind(cfg)
    mzp, ip = (cfg.mz_power, cfg.intensity_power) if wname in ("cosine", "nl_cosine") else (0.0, 1.0)
    index = lib.peak_index(wname, mzp, ip, losses=use_nl, threads=cfg.threads)
    qc, lc, sym = ctx.filters()
    if index.scan_rows is not None:  # the kernel reads library codes by scan id
        key = "scan " + _filter_key(cfg)
        lc_scan = lib._cache.get(key)
        if lc_scan is None:
            lc_scan = lib._cache[key] = np.ascontiguousarray(lc[np.asarray(index.scan_rows)])
        lc = lc_scan
    # the index groups spectra by polarity: the other polarity's entries are never scanned
    groups = allowed_groups(ctx.qpol)
    ws = ctx.workspace()
    tol = cfg.tolerance
    pending = np.asarray(rows, dtype=np.int64)
    dense = _dense_eligible(ctx, pending, index)
    if losses_only:
        # no first threshold: it only trims the dense scan's candidates, which are few anyway
        theta = np.full(pending.shape[0], -np.inf)
        dense = np.zeros(pending.shape[0], dtype=bool) if dense is None else dense
        if not dense.all():
            ctx.nested += 1  # this batch advances the progress bar once, in run_bounded
            try:
                search_scan.run_brute_force(ctx, pending[~dense], scores, indices, matches)
            finally:
                ctx.nested -= 1
    else:
        theta = _first_theta(ctx, pending, use_nl)
        # weak first thresholds prune little: those queries take the dense scan (see _DENSE_BELOW)
        dense = np.zeros(pending.shape[0], dtype=bool) if dense is None else \
            dense & (theta < _DENSE_BELOW[(kind, use_nl)])
    if use_nl and _HEAVY_PEAKS > 0 and not losses_only:
        weak = np.flatnonzero((theta < _HEAVY_BELOW) & ~dense)
        if weak.shape[0]:
            heavy = _heavy_theta(ctx, pending[weak], qw, index, kind, use_nl, nl_base, ws, qc, lc, sym, groups)
            theta[weak] = np.maximum(theta[weak], heavy)

    def pruned(q, th, m):
        return fk.search_bounds(
            q, ctx.q.offsets, ctx.q.mz, qw, ctx.q.precursor_mz, index, kind=kind, use_nl=use_nl,
            tol_da=tol.da, tol_ppm=tol.ppm, k=cfg.k, m=m, workspace=ws, theta=th, q_codes=qc, lib_codes=lc,
            symmetric=sym, q_groups=groups, min_pairs=max(1, cfg.min_matches), min_score=cfg.min_score, nl_base=nl_base,
            threads=cfg.threads)

    def dense_scan(q, th, m):
        from fastspec.kernels import dense as dk

        return dk.dense_bounds(q, ctx.q.offsets, ctx.q.mz, qw, ctx.q.precursor_mz, index, kind=kind, use_nl=use_nl,
                               tol_da=tol.da, tol_ppm=tol.ppm, m=m, workspace=ws, theta=th, q_codes=qc, lib_codes=lc,
                               symmetric=sym, q_groups=groups, min_score=cfg.min_score, nl_base=nl_base,
                               threads=cfg.threads, losses_only=losses_only, min_pairs=max(1, cfg.min_matches))

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
    if not losses_only:  # (those queries were scored above)
        _rounds(ctx, pending[~dense], theta[~dense], m, pruned, scores, indices, matches)
    if dense.any():
        # a loss-only bound counts one partner per query peak, as open search's does
        many = use_nl and not losses_only
        _rounds(ctx, pending[dense], theta[dense],
                max(_DENSE_CANDIDATES_NL if many else _DENSE_CANDIDATES, 2 * cfg.k + 8), dense_scan,
                scores, indices, matches)


def _rounds(ctx: _Context, pending, theta, m, bounds_of, scores, indices, matches):
    """Score the candidates of ``bounds_of(rows, theta, m)`` (a bound kernel's ids, bounds, next bound,
    stats) exactly, in rounds: ``m`` grows (x8) for the queries whose k-th exact score does not yet beat
    the best bound left out. Exact k-th scores found on the way feed the pruning threshold. A round's
    queries go to the kernel ``_ROUND_ENTRIES // m`` at a time, so that late rounds (m up to the library
    size) and large k keep their candidate arrays bounded."""
    from fastspec.kernels import fragment as fk

    n_lib = len(ctx.lib)
    while pending.shape[0]:
        m = min(m, max(n_lib, 1))
        ctx.rounds += 1
        step = max(1, _ROUND_ENTRIES // m)
        done = np.zeros(pending.shape[0], dtype=bool)
        kth = np.empty(pending.shape[0])
        for a in range(0, pending.shape[0], step):
            part = slice(a, a + step)
            rows = pending[part]
            ids, bounds, nxt, st = bounds_of(rows, theta[part], m)
            ctx.stats.append(st)  # one entry per kernel call (for debugging; nothing reads them)
            valid = ids >= 0
            offs = np.zeros(rows.shape[0] + 1, dtype=np.int64)
            np.cumsum(valid.sum(axis=1), out=offs[1:])
            # candidates come best bound first: a query's scoring stops once its k-th score beats the rest
            # (analog, 2.4M, novel compounds: of 777 candidates per query 295 have a bound above the final
            # k-th score, median 46; first-round rescoring 0.45-0.53 -> 0.30 ms per query)
            s, i, mm = ctx.exact(rows, offs, ids[valid], cand_bounds=bounds[valid])
            del ids, bounds, valid
            kth[part] = np.where(i[:, -1] >= 0, s[:, -1], -np.inf)
            fin = (nxt < 0) | (nxt < kth[part]) | (m >= n_lib)
            done[part] = fin
            d = rows[fin]
            scores[d], indices[d], matches[d] = s[fin], i[fin], mm[fin]
        # the k-th exact score is a valid pruning threshold for the next round
        theta = np.maximum(theta[~done], kth[~done] * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL)
        pending = pending[~done]
        m *= 8


def _dense_eligible(ctx: _Context, rows, index) -> np.ndarray | None:
    """Which queries may take the dense scan (:func:`fastspec.kernels.dense.dense_bounds`; None: none):
    all (with a minimum of matched peaks the scan counts each spectrum's pairs in the windows; 2.4M
    MassBank-grown library, novel compounds, ``min_matches=3``, 1 thread, against the pruned kernel alone,
    identical hits: open entropy 5.8-6.6 -> 2.9-3.4 ms per query, open cosine 2.5-3.0 -> 1.7, analog
    3.7-5.2 -> 2.6-2.7; library copies open cosine 0.90-1.19 -> 0.82-1.05, entropy 1.73-2.27 -> 1.67-1.75).

    On unclean spectra (two peaks of a spectrum within two windows: libraries built with
    ``preprocess=None``) the scan's sums count every pair in the windows, a looser bound than
    one-to-one pairs give, with saturating adds; it still beat the pruned kernel there (a 1M
    MassBank-grown library built with ``preprocess=None``, 500 queries, 1 thread, 3 alternating rounds,
    identical hits, ms per query, clean-only -> any: novel compounds open entropy 3.997-4.657 -> 1.44-1.46,
    open cosine 1.15 -> 0.96 (0.02 Da) and 2.02 -> 1.74 (0.1 Da), hybrid 7.8 -> 3.1, analog 3.66 -> 3.18
    (0.02 Da) and 5.9 -> 5.6 (0.1 Da); library copies open entropy 1.09 -> 0.82, hybrid 2.86 -> 2.08,
    open cosine and analog unchanged). Before, such queries were kept on the pruned kernel."""
    if index.frag_mz.shape[0] == 0:
        return None
    return np.ones(np.asarray(rows).shape[0], dtype=bool)


def _heavy_theta(ctx: _Context, rows, qw, index, kind, use_nl, nl_base, ws, qc, lc, sym,
                 groups) -> np.ndarray:
    """Lower bounds of each query's k-th best score (-inf: none) from the ``_HEAVY_CANDIDATES``
    library spectra that best match its ``_HEAVY_PEAKS`` heaviest peaks (fragments and neutral losses,
    by the bound kernel, heavy partners only), scored exactly with all the query's peaks.

    Any k eligible spectra's k-th exact score bounds the library's k-th best from below, so which
    spectra these are only decides how good the threshold is, never the hits."""
    from fastspec.kernels import fragment as fk

    q = ctx.q
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
    tol = ctx.cfg.tolerance
    ids, _, _, _ = fk.search_bounds(
        np.arange(n, dtype=np.int64), sub_off, np.asarray(q.mz)[sel], qw[sel], np.asarray(q.precursor_mz)[rows],
        index, kind=kind, use_nl=use_nl, tol_da=tol.da, tol_ppm=tol.ppm, k=ctx.cfg.k,
        m=max(1, min(_HEAVY_CANDIDATES, len(ctx.lib))),
        workspace=ws, q_codes=qc[rows], lib_codes=lc, symmetric=sym, q_groups=groups[rows], nl_base=nl_base,
        threads=ctx.cfg.threads, theta=_HEAVY_BAND * top_w)
    valid = ids >= 0
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=offs[1:])
    return _kth_lower(*ctx.exact(rows, offs, ids[valid])[:2])


def _first_theta(ctx: _Context, rows: np.ndarray, use_nl: bool) -> np.ndarray:
    """Lower bounds of each query's k-th best score before the bound search: the exact k-th score
    among a few likely hits (-inf: none).

    The k-th best of any k eligible spectra bounds the k-th best of the library from below, so the
    hits only need to be good, not right. Open search first takes the spectra within 0.01 Da of the
    query's precursor m/z, when the index bounds such windows cheaply
    (:func:`fastspec.search_identity.block_bounded`); then,
    for the queries whose window gave less than ``_THETA_WINDOW_ENOUGH``, the FAISS index's nearest
    neighbours when the library has one (from its threshold index ``_THETA_FAISS_PQ`` candidates; from
    the main index of older libraries ``_THETA_FAISS``, analog ``_THETA_FAISS_ANALOG``; then
    ``_THETA_FAISS_AGAIN`` where those gave no threshold, at nprobe ``_THETA_NPROBE``; open
    search from ``_THETA_FAISS_OPEN_MIN`` spectra on, ``_THETA_FAISS_OPEN_MIN_SQ8`` without the
    threshold index). Without either, analog
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
    k = ctx.cfg.k
    theta = np.full(rows.shape[0], -np.inf)

    window = not use_nl and ctx.lib.has_array("prec_norm") and search_identity.block_bounded(ctx)
    if window:
        theta = _kth_lower(*search_identity.window_search(ctx, rows, parse_tolerance(0.01))[:2])
    weak = np.flatnonzero(theta < _THETA_WINDOW_ENOUGH)
    pq = ctx.lib.has_faiss_theta  # the threshold index, else the main one (older indexes)
    open_min = _THETA_FAISS_OPEN_MIN if pq else _THETA_FAISS_OPEN_MIN_SQ8
    if weak.shape[0] and ctx.lib.has_faiss and (use_nl or len(ctx.lib) >= open_min):
        n_cand = max(_THETA_FAISS_PQ if pq else _THETA_FAISS_ANALOG if use_nl else _THETA_FAISS, 2 * k)
        offs, ids = search_scan.faiss_candidates(ctx, rows[weak], n_cand, _THETA_NPROBE, theta=pq)
        theta[weak] = np.maximum(theta[weak], _kth_lower(*ctx.exact(rows[weak], offs, ids)[:2]))
        weak = np.flatnonzero(~np.isfinite(theta)) if use_nl else weak[:0]
        if weak.shape[0]:
            offs, ids = search_scan.faiss_candidates(ctx, rows[weak], max(_THETA_FAISS_AGAIN, 2 * k), _THETA_NPROBE,
                                                     theta=pq)
            theta[weak] = np.maximum(theta[weak], _kth_lower(*ctx.exact(rows[weak], offs, ids)[:2]))
    elif use_nl:
        theta = _kth_lower(*search_identity.window_search(ctx, rows, parse_tolerance(0.01))[:2])
    return theta
