"""Dense bound scan of the fragment index: a score bound for every library spectrum, by table lookups.

:func:`fastspec.kernels.fragment.search_bounds` prunes: it scans query peaks until the unscanned ones can
no longer lift an unreached spectrum to the threshold, then follows the spectra it reached. When the
query's best scores are low (a compound the library does not hold), little is pruned and each index
entry costs 4-6 ns (branches, scattered 8-byte rows, the pruning passes). :func:`dense_bounds` does no
pruning: it adds one 16-bit fixed-point number per entry of every query peak's window (fragments, and
for analog and hybrid search neutral losses too; for neutral-loss search and neutral-loss cosine losses only) to a 16-bit accumulator per library spectrum (4.8 MB at
2.4M spectra), ~1.2-1.3 ns per entry, then keeps the ``m`` best sums in one vectorised pass over the
accumulators, which it leaves zeroed.

The number added for a pair is an upper bound of the pair's exact contribution, read from a table
(:func:`bound_table`) indexed by a code of the query peak's weight (its square root for entropy, in
``Q_LEVELS`` steps, rounded up) and the library peak's stored one-byte code
(:func:`fastspec.kernels.fragment.quantize_weights`, ``floor(255 w)``): the contribution at the top of
both codes' ranges (cosine ``q*l``; entropy ``(f(q+l) - f(q) - f(l)) / 2``, f(x) = x log2 x, increasing
in both), times ``SCALE``, rounded up, plus one. Any one-to-one assignment (greedy cosine, modified
cosine, entropy, hybrid entropy) uses a subset of the pairs within tolerance, so each spectrum's sum
bounds its exact score from above. The 16-bit sums (``SCALE`` 8,192: a ceiling of 8) never wrap
around: a window holds at most a few entries of one library spectrum (one, when its peaks are more than
two windows apart; otherwise the sums count every pair in the windows, still a bound; :func:`_per_window`), so a sum
is at most the query's table-row maxima summed, times that; where this could pass 16 bits (queries of
thousands of peaks, a library precursor so large that its float32 losses are coarse), the adds
saturate, and a saturated sum is still a bound, scores being at most 1. Windows are :func:`fastspec.kernels.fragment._side_window`'s, which cover
any Da/ppm convention with float32 slack.

The contract is :func:`~fastspec.kernels.fragment.search_bounds`'s: the ``m`` candidates of best bound,
best first, and (at least) the best bound left out, so that the caller's exact rescoring gives
brute-force hits. One-byte library codes loosen each pair's bound by up to a few thousandths, so a few
more candidates are scored exactly.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from fastspec.kernels._config import NJIT, await_compiled
from fastspec.kernels.fragment import (BOUND_ATOL, BOUND_RTOL, KIND_ENTROPY, PeakIndex, _contrib, _defaults,
                                       _entry_range, _group_ranges, _outputs, _passes, _ro, _run_blocks,
                                       _side_window, quantize_weights)

#: Fixed-point units per unit of score.
SCALE = 8192
#: Steps of the query weight code (cosine: the weight; entropy: its square root), rounded up: the table
#: is (Q_LEVELS + 1) x 256 uint16 (2 MB); a query reads one 512-byte row per peak.
Q_LEVELS = 4095
#: Candidate keys hold the scan id in their low 32 bits.
_ID_MASK = np.int64(0xFFFFFFFF)
#: Accumulators are checked and cleared in chunks of this many spectra: a chunk whose largest sum cannot
#: enter the candidates is skipped after one vectorised max.
_CHUNK = 512

_TABLES: dict[int, np.ndarray] = {}
_TABLES_LOCK = threading.Lock()


@numba.njit(**NJIT)
def _fill_table(kind, out):
    n_q = out.shape[0] - 1
    for qc in range(n_q + 1):
        # tops of the code ranges, widened by 1e-6 for float32 rounding of the stored weights
        s = qc / n_q * (1.0 + 1e-6)
        q = s * s if kind == KIND_ENTROPY else s
        for c in range(256):
            t = (c + 1) / 255.0 * (1.0 + 1e-6)
            h = _contrib(kind, q, t * t if kind == KIND_ENTROPY else t)
            out[qc, c] = np.uint16(min(np.ceil(h * SCALE * (1.0 + 1e-9)) + 1.0, 65535.0))


def bound_table(kind: int) -> np.ndarray:
    """The pair-bound table of ``kind`` (:data:`~fastspec.kernels.fragment.KIND_PRODUCT` or
    ``KIND_ENTROPY``): uint16 (Q_LEVELS + 1, 256), entry ``[query code, library code]`` (see the module
    docstring). Built once per process (~20 ms)."""
    kind = int(kind)
    with _TABLES_LOCK:
        t = _TABLES.get(kind)
        if t is None:
            t = np.empty((Q_LEVELS + 1, 256), dtype=np.uint16)
            _fill_table(kind, t)
            t.setflags(write=False)
            _TABLES[kind] = t
        return t


def query_codes(kind: int, weights: np.ndarray) -> np.ndarray:
    """Table row of every query peak: ``ceil(Q_LEVELS * v)``, ``v`` the weight (cosine) or its square
    root (entropy), clipped to the table; int32 (P,)."""
    w = np.asarray(weights, dtype=np.float64)
    v = np.sqrt(np.maximum(w, 0.0)) if int(kind) == KIND_ENTROPY else np.maximum(w, 0.0)
    return np.minimum(np.ceil(np.nan_to_num(v, nan=1.0) * Q_LEVELS), Q_LEVELS).astype(np.int32)


@numba.njit(**NJIT)
def _dense_bounds(b, n_blocks, q_rows, q_off, q_mz, q_code, q_pmz, theta_in, fr_mz, fr_spec, fr_q8, fr_rng,
                  nl_mz, nl_spec, nl_q8, nl_rng, use_nl, losses_only, nl_base, p_big, per_frag, per_loss, table,
                  tol_da, tol_ppm, q_codes, lib_codes, sym, min_score, m_cap, min_pairs, acc, cnt, out_ids, out_bound,
                  out_next, out_stats):
    # one block of queries (t = b, b + n_blocks, ...) with its own accumulators; blocks run in Python
    # threads (the kernel releases the GIL)
    n = acc.shape[0]
    # with a minimum of matched peaks, cnt counts each spectrum's (query peak, entry) pairs in the windows:
    # at least its matched peaks under any one-to-one assignment (saturating at 255)
    count = min_pairs > 1
    need = min(min_pairs, 255)  # a saturated count may stand for any more
    side0 = 1 if losses_only else 0  # neutral-loss search and neutral-loss cosine scan the loss windows only
    buf = np.empty(4 * m_cap + 64, dtype=np.int64)
    for t in range(b, q_rows.shape[0], n_blocks):
        qrow = q_rows[t]
        a0, a1 = q_off[qrow], q_off[qrow + 1]
        pmz = q_pmz[qrow]
        do_nl = use_nl and np.isfinite(pmz)
        if a1 == a0:  # no peaks: no candidates
            out_next[t] = -1.0
            out_ids[t, :] = -1
            out_bound[t, :] = -1.0
            continue
        # a window holds at most per_frag (per_loss) entries of one spectrum, so no sum exceeds the query's
        # row maxima times their sum; where that passes 16 bits (queries of thousands of peaks, or wide
        # windows), the adds saturate instead: a saturated sum reads 8, still a bound (~7% slower)
        most = 0
        for p in range(a0, a1):
            most += np.int64(table[q_code[p], 255])
        sat = most * ((per_frag if side0 == 0 else 0) + (per_loss if do_nl else 0)) >= 65535
        entries = 0
        for p in range(a0, a1):
            row = table[q_code[p]]
            # the fragment window, then (analog, hybrid) the neutral-loss window
            for side in range(side0, 2 if do_nl else 1):
                lo_v, hi_v = _side_window(side, q_mz[p], pmz, tol_da, tol_ppm, nl_base, p_big)
                if side == 0:
                    s_mz, s_spec, s_q8, s_rng = fr_mz, fr_spec, fr_q8, fr_rng
                else:
                    s_mz, s_spec, s_q8, s_rng = nl_mz, nl_spec, nl_q8, nl_rng
                for g in range(s_rng.shape[1]):
                    if s_rng[qrow, g, 1] <= s_rng[qrow, g, 0]:
                        continue
                    e0, e1 = _entry_range(s_mz, s_rng, qrow, g, lo_v, hi_v)
                    entries += e1 - e0
                    # unsigned positions: numba wraps signed indices around at every access
                    if sat:
                        for e in range(np.uint64(e0), np.uint64(e1)):
                            c = np.uint32(s_spec[e])
                            acc[c] = np.uint16(min(np.uint32(acc[c]) + np.uint32(row[s_q8[e]]), np.uint32(65535)))
                    else:
                        for e in range(np.uint64(e0), np.uint64(e1)):
                            acc[np.uint32(s_spec[e])] += row[s_q8[e]]
                    if count:
                        for e in range(np.uint64(e0), np.uint64(e1)):
                            c = np.uint32(s_spec[e])
                            cnt[c] = np.uint8(min(np.uint32(cnt[c]) + np.uint32(1), np.uint32(255)))
        # spectra that cannot beat theta (or min_score) are no candidates: inflate(v / SCALE) >= theta
        lim = max(theta_in[t], min_score)
        thr = np.int64(1)
        if lim > BOUND_ATOL:
            thr = max(np.int64(1), np.int64(np.floor((lim - BOUND_ATOL) / (1.0 + BOUND_RTOL) * SCALE)))
        # candidates as keys (sum << 32 | ~scan id: larger is better, equal sums by lowest scan id) in a
        # buffer cut back to its m best whenever it fills (a partition, linear); a sum not above the
        # m-th best at the last cut cannot enter, and is left out
        floor_v = thr - 1
        nbuf = 0
        cut = False
        kept = 0
        for c0 in range(0, n, _CHUNK):
            blk = acc[c0:min(c0 + _CHUNK, n)]
            nb = np.uint64(blk.shape[0])
            top = np.uint16(0)
            for j in range(nb):
                v = blk[j]
                top = v if v > top else top
            if top == 0:
                if count:  # (a pair may add 0 to the sum, never to the count)
                    cnt[c0:c0 + np.int64(nb)] = 0
                continue
            if np.int64(top) > floor_v:
                for j in range(nb):
                    v = np.int64(blk[j])
                    if v <= floor_v:
                        continue
                    c = c0 + np.int64(j)
                    if count and np.int64(cnt[c]) < need:  # too few peaks to match: no candidate
                        continue
                    if not _passes(c, qrow, q_codes, lib_codes, sym):
                        continue
                    kept += 1
                    buf[nbuf] = (v << 32) | (_ID_MASK - c)
                    nbuf += 1
                    if nbuf == buf.shape[0]:
                        nbuf = _cut(buf, nbuf, m_cap)
                        floor_v = max(floor_v, buf[0] >> 32)
                        cut = True
            for j in range(nb):
                blk[j] = 0
            if count:
                cnt[c0:c0 + np.int64(nb)] = 0
        left = floor_v if cut else np.int64(0)  # every sum left out is at most the floor
        if nbuf > m_cap:
            nbuf = _cut(buf, nbuf, m_cap)
            left = max(left, buf[m_cap] >> 32)
        top_m = np.sort(buf[:nbuf])
        out_stats[t, 0] = kept
        out_stats[t, 1] = a1 - a0
        out_stats[t, 2] = a1 - a0
        out_stats[t, 3] = entries
        out_next[t] = (left / SCALE) * (1.0 + BOUND_RTOL) + BOUND_ATOL if left > 0 else -1.0
        for v in range(nbuf):  # best bounds first, so exact scoring may stop early
            key = top_m[nbuf - 1 - v]
            out_ids[t, v] = _ID_MASK - (key & _ID_MASK)
            out_bound[t, v] = ((key >> 32) / SCALE) * (1.0 + BOUND_RTOL) + BOUND_ATOL
        for v in range(nbuf, m_cap):
            out_ids[t, v] = -1
            out_bound[t, v] = -1.0


@numba.njit(**NJIT)
def _cut(buf, nbuf, m):
    """Keep the ``m`` largest of ``buf[:nbuf]`` (``nbuf > m``): the m-th largest goes to ``buf[0]``, the
    others of the m to ``buf[1:m]`` (any order), and the largest of the rest to ``buf[m]``. Returns m."""
    part = np.partition(buf[:nbuf], nbuf - m)
    best = part[0]
    for j in range(1, nbuf - m):
        best = max(best, part[j])
    buf[0] = part[nbuf - m]
    buf[1:m] = part[nbuf - m + 1:]
    buf[m] = best
    return m


def _per_window(index: PeakIndex, q_precursor_mz, tol_da, tol_ppm, nl_base, p_big, prec_lo, prec_hi) -> tuple[int, int]:
    """Most entries of one library spectrum a query peak's fragment (loss) window can hold: windows are
    at most ``2 h`` wide (:func:`fastspec.kernels.fragment._side_window` at the largest values), and a
    spectrum's stored values are at least its smallest peak gap apart, less their float32 rounding (two
    roundings of m/z for fragments; of m/z and loss for losses, whose precursor rounding cancels)."""
    q_p = np.asarray(q_precursor_mz, dtype=np.float64)
    q_p = q_p[np.isfinite(q_p)]
    top = max(float(nl_base), abs(prec_lo), abs(prec_hi), float(np.abs(q_p).max()) if q_p.size else 0.0, 1.0)
    tol = float(tol_da) if tol_ppm <= 0 else float(tol_ppm) * 1e-6 * top / (1 - float(tol_ppm) * 1e-6)
    h_frag = tol + 3e-7 * top + 1e-6
    h_loss = h_frag + (7e-8 * 10.0 * max(top, p_big) + 1e-6 if p_big > 0 else 0.0)
    gap = float(index.min_gap_min)

    def most(h, roundings):
        g = gap - roundings * 2.0 ** -24 * top
        return 1 + int(2.0 * h // g) if g > 0 and np.isfinite(g) else 1 << 20

    return most(h_frag, 2), most(h_loss, 4)


def dense_bounds(
    q_rows: np.ndarray,
    q_offsets: np.ndarray,
    q_mz: np.ndarray,
    q_weights: np.ndarray,
    q_precursor_mz: np.ndarray,
    index: PeakIndex,
    *,
    kind: int,
    use_nl: bool,
    tol_da: float,
    tol_ppm: float,
    m: int,
    workspace,
    theta: np.ndarray | None = None,
    q_codes: np.ndarray | None = None,
    lib_codes: np.ndarray | None = None,
    symmetric: np.ndarray | None = None,
    q_groups: np.ndarray | None = None,
    min_score: float = 0.0,
    nl_base: float = 0.0,
    threads: int | None = None,
    losses_only: bool = False,
    min_pairs: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` library spectra with the highest score upper bounds for each query, by a dense scan of
    the fragment index (and the neutral-loss index, or that alone; see the module docstring).

    On clean queries against a clean library (no two peaks of a spectrum within two windows of each
    other) each window holds one entry of a spectrum and the sums are one-to-one pairs; otherwise they
    count every pair in the windows, still an upper bound of any one-to-one assignment, looser (the adds
    saturate where they could pass 16 bits). The caller chooses which queries take it.

    Parameters
    ----------
    q_rows, q_offsets, q_mz, q_weights, q_precursor_mz
        As :func:`fastspec.kernels.fragment.search_bounds` (weights of the same kind as the index's).
    index : PeakIndex
        Reads the fragment (and neutral-loss) entries with their one-byte codes (computed from the
        weights when None), the groups, ``prec_sorted`` (hybrid loss windows) and ``scan_rows``.
    kind : int
        ``KIND_PRODUCT`` (cosine) or ``KIND_ENTROPY``.
    use_nl : bool
        Also add pairs of neutral losses (modified cosine, hybrid entropy), for queries with a precursor.
    tol_da, tol_ppm : float
        Fragment tolerance (one of them 0).
    m : int
        Candidates returned per query.
    workspace : BoundWorkspace
        Its :meth:`~fastspec.kernels.fragment.BoundWorkspace.dense_acc` accumulators (left zeroed).
    theta : ndarray, float64 (nq,), optional
        Known lower bounds of each query's k-th best score: spectra whose bound is below are no candidates.
    q_codes, lib_codes, symmetric, q_groups, min_score, nl_base, threads
        As :func:`~fastspec.kernels.fragment.search_bounds`.
    losses_only : bool
        With ``use_nl``: scan the neutral-loss windows only (ms_entropy's neutral-loss search, neutral-loss
        cosine).
    min_pairs : int
        Minimum of matched peaks: above 1, a spectrum whose (query peak, entry) pairs in the windows are
        fewer is no candidate (a second, one-byte count per spectrum; every one-to-one assignment of
        matched peaks is among those pairs).

    Returns
    -------
    ids : ndarray, int64 (nq, m)
        Candidate library rows by decreasing bound (equal bounds: lowest scan id first), -1 padding.
    bounds : ndarray, float64 (nq, m)
        Their upper bounds (slack included; -1 for padding).
    next_bound : ndarray, float64 (nq,)
        At least the best bound among spectra left out that could still beat ``theta``, and at most the
        last candidate's (-1 when none is left out).
    stats : ndarray, int64 (nq, 7)
        Spectra that reached the candidates' floor, query peaks (twice), index entries scanned; the
        rest 0 (the columns of ``search_bounds``' diagnostics that apply).
    """
    q_rows, m, (ids, bounds, nxt, stats) = _outputs(q_rows, m)
    nq = q_rows.shape[0]
    if nq == 0:
        return ids, bounds, nxt, stats
    n_total_q = q_offsets.shape[0] - 1
    theta, q_codes, lib_codes, symmetric = _defaults(nq, n_total_q, workspace.n_library, theta, q_codes, lib_codes,
                                                     symmetric)
    ix = index
    fq8 = quantize_weights(ix.frag_w) if ix.frag_q8 is None else ix.frag_q8
    nq8 = quantize_weights(ix.nl_w) if ix.nl_q8 is None else ix.nl_q8
    # hybrid search's float32 losses need wider loss windows (as in search_bounds)
    prec = np.asarray(ix.prec_sorted)
    n_prec = int(np.searchsorted(prec, np.inf, side="left")) if prec.shape[0] else 0
    p_big = 0.0
    if use_nl and kind == KIND_ENTROPY and n_prec:
        p_big = max(abs(float(prec[0])), abs(float(prec[n_prec - 1])), 1.0)
    per_frag, per_loss = _per_window(index, q_precursor_mz, tol_da, tol_ppm, nl_base, p_big, float(prec[0]) if n_prec
                                     else 0.0, float(prec[n_prec - 1]) if n_prec else 0.0)
    # table rows of the peaks of these queries only (a search calls this once per batch)
    q_offsets = np.asarray(q_offsets)
    codes = np.empty(q_offsets[-1], dtype=np.int32)
    lo, hi = int(q_offsets[q_rows.min()]), int(q_offsets[q_rows.max() + 1])
    codes[lo:hi] = query_codes(kind, np.asarray(q_weights)[lo:hi])
    i32, i64, f32, f64, u8 = np.int32, np.int64, np.float32, np.float64, np.uint8
    args = (_ro(q_rows, i64), _ro(q_offsets, i64), _ro(q_mz, f64), _ro(codes, i32),
            _ro(q_precursor_mz, f64), _ro(theta, f64), _ro(ix.frag_mz, f32), _ro(ix.frag_spec, i32), _ro(fq8, u8),
            _group_ranges(ix.frag_groups, ix.frag_mz.shape[0], q_groups, n_total_q), _ro(ix.nl_mz, f32),
            _ro(ix.nl_spec, i32), _ro(nq8, u8), _group_ranges(ix.nl_groups, ix.nl_mz.shape[0], q_groups, n_total_q),
            bool(use_nl), bool(losses_only and use_nl), float(nl_base), p_big, per_frag, per_loss, bound_table(kind),
            float(tol_da), float(tol_ppm), _ro(q_codes, i32), _ro(lib_codes, i32), _ro(symmetric, np.bool_),
            float(min_score), m, int(max(1, min_pairs)))
    ws = workspace
    n_blocks = max(1, min(ws.n_blocks, nq, int(threads) if threads else ws.n_blocks))
    accs = [ws.dense_acc(b) for b in range(n_blocks)]
    no_count = np.zeros(1, dtype=np.uint8)  # (never read: one numba type either way)
    cnts = [ws.dense_cnt(b) if min_pairs > 1 else no_count for b in range(n_blocks)]
    await_compiled("dense_bounds")  # a process compiling it ahead (fastspec demo / query): load, not compile

    def run(b: int) -> None:
        _dense_bounds(b, n_blocks, *args, accs[b], cnts[b], ids, bounds, nxt, stats)

    _run_blocks(n_blocks, run, ids, ix.scan_rows)
    return ids, bounds, nxt, stats


def compile_dense_bounds() -> None:
    """Compile the dense scan and its tables (or load them from numba's on-disk cache) by running it once,
    tiny: :func:`dense_bounds` passes every array through ``_ro`` and every scalar as a Python
    ``int``/``float``/``bool``, so this is the build every search runs (a second process of ``fastspec
    demo`` and ``fastspec query`` runs it after the bound kernel, :mod:`fastspec.cli._ahead`)."""
    from fastspec.kernels.fragment import KIND_PRODUCT, BoundWorkspace, tiny_index

    index = tiny_index()
    bound_table(KIND_ENTROPY)
    dense_bounds(np.zeros(1, dtype=np.int64), np.array([0, 2]), index.mz, index.w, index.precursor_mz, index,
                 kind=KIND_PRODUCT, use_nl=False, tol_da=0.01, tol_ppm=0.0, m=1, workspace=BoundWorkspace(1, 1),
                 threads=1)
