"""Whole-side scoring through a peak index: cosine, modified cosine and neutral-loss cosine of one spectrum
of A against *every* spectrum of B, at a cost that follows the matching peaks instead of ``len(B)``.

:func:`~fastspec.kernels.matching.score_row` walks every peak of every spectrum of B for each row of A.
Scoring a whole matrix (``score_matrix``, dense or top-k over all of B) that way costs a walk per pair,
although most pairs share no peak at all. Here B's peaks are sorted once per call (:func:`side_index`), by
m/z and by neutral loss (m/z - precursor m/z). For each row of A, every peak looks up its window in
those sorted arrays; the hits are grouped by spectrum of B and each group is scored by the very greedy
step :func:`~fastspec.kernels.matching.score_row` uses. Spectra of B without a hit score 0 with 0 matches,
as they would in the walk.

Exactly the walk's results, bit for bit
---------------------------------------
* A shifted pair of modified cosine (or a neutral-loss pair) matches when ``x - t <= y <= x + t`` with
  ``y = mz_b + (pmz_a - pmz_b)``, the walk's expression: the loss index only proposes candidates (its
  window is widened by :func:`_slack`, far above the rounding of ``mz_b - pmz_b``) and every candidate is
  tested with that expression. Unshifted pairs are tested the same way.
* The walk collects a spectrum's pairs unshifted before shifted, by peak of B, then peak of A; each group
  of three or more pairs is sorted into that order before scoring, so sums are added in the same order
  (one or two pairs: the order does not change the result; ties always break on the matchms rank).

Speed: raw MassBank spectra, 2,000 x 2,000, 0.1 Da, 1 thread, same sitting: modified cosine 3.06M ->
3.92M pairs/s, cosine 6.0M -> 8.3M, neutral-loss cosine 8.8M -> 12.5M. Most of what is left is the
greedy step of the pairs with conflicting peaks (about 0.8M spectrum pairs per 4M for modified cosine),
which the walk pays as well. The step is inlined here (``greedy_inline``): as a call it cost six
reference-count operations each time, about 18% of the kernel's time in a perf profile; alternating
runs, modified cosine 4.98-5.31M -> 5.03-5.70M pairs/s (4 of 5 faster).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastspec.kernels._config import NJIT, pjit
from fastspec.kernels.matching import (COSINE, MODIFIED_COSINE, NEUTRAL_LOSS, PI, PJ, PK, few_pairs, greedy_inline,
                                       grow, new_buffers)

#: Rows of A from which the join is used: sorting all of B's peaks is not repaid for a few rows.
JOIN_MIN_ROWS = 16


def joinable(kind: int, n_rows: int, max_a: int, max_b: int) -> bool:
    """Whether :func:`score_row_join` serves ``kind`` for ``n_rows`` rows of A (spectra of at most
    ``max_a`` / ``max_b`` peaks)."""
    return ((kind == COSINE or kind == MODIFIED_COSINE or kind == NEUTRAL_LOSS) and n_rows >= JOIN_MIN_ROWS
            and max_a < MAX_PEAKS and max_b < MAX_PEAKS)


@numba.njit(**NJIT)
def side_index(kind, off_b, pos_b, pmz_b):
    """The peaks of B sorted by m/z (``by_mz``) and by neutral loss, m/z - precursor m/z (``by_loss``).

    Each is ``(key, spectrum, peak, mz)``: the sorted values (float64), and per entry the spectrum of B
    (int64), the peak's index within it (int64) and its m/z (float64), stored in sorted order so that a
    window is read sequentially. ``by_mz`` is left empty for neutral-loss cosine, ``by_loss`` for cosine;
    spectra without a precursor have no losses.
    """
    m = off_b.shape[0] - 1
    n_peaks = pos_b.shape[0]
    owner = np.empty(n_peaks, np.int64)
    for j in range(m):
        owner[off_b[j]:off_b[j + 1]] = j
    by_mz = _sorted_part(off_b, pos_b, owner, np.arange(n_peaks if kind != NEUTRAL_LOSS else 0), pos_b)
    if kind != COSINE:
        loss = np.empty(n_peaks, np.float64)
        keep = np.empty(n_peaks, np.int64)
        nk = 0
        for q in range(n_peaks):
            pb = pmz_b[owner[q]]
            if pb == pb:
                keep[nk] = q
                loss[nk] = pos_b[q] - pb
                nk += 1
        by_loss = _sorted_part(off_b, pos_b, owner, keep[:nk], loss[:nk])
    else:
        by_loss = _sorted_part(off_b, pos_b, owner, np.empty(0, np.int64), np.empty(0, np.float64))
    return by_mz, by_loss


@numba.njit(**NJIT)
def _sorted_part(off_b, pos_b, owner, peaks, values):
    """``(key, spectrum, peak within it, m/z)`` of the global ``peaks`` sorted by ``values`` (stable)."""
    n = peaks.shape[0]
    o = np.argsort(values[:n], kind="mergesort")
    key = np.empty(n, np.float64)
    spec = np.empty(n, np.int64)
    local = np.empty(n, np.int64)
    mz = np.empty(n, np.float64)
    for h in range(n):
        q = peaks[o[h]]
        key[h] = values[o[h]]
        spec[h] = owner[q]
        local[h] = q - off_b[owner[q]]
        mz[h] = pos_b[q]
    return key, spec, local, mz


@numba.njit(**NJIT)
def new_workspace(m, capacity):
    """Per-block scratch of :func:`score_row_join`: ``(ent_j, ent_key, gkey, cnt, touched)``.

    Hits (spectrum of B, sort key) and the grouped keys (int64, ``capacity``, grown on demand); per
    spectrum of B a hit count, zero between calls, and the list of spectra hit (int64, ``m``).
    """
    return (np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.int64),
            np.zeros(max(m, 1), np.int64), np.empty(max(m, 1), np.int64))


@numba.njit(**NJIT)
def _slack(pos_a, pos_b, pmz_a, pmz_b):
    """Widening of the index windows: well above the rounding of ``mz - pmz`` (a few ulps of the
    largest magnitude involved), so that no match is missed; extra candidates are tested exactly."""
    top = max(max(_abs_max(pos_a), _abs_max(pos_b)), max(_abs_max(pmz_a), _abs_max(pmz_b)))
    return 1e-9 + top * 1e-12


@numba.njit(**NJIT)
def _abs_max(arr):
    top = 0.0
    for v in arr:
        if v == v and abs(v) > top:
            top = abs(v)
    return top


_BITS = 20  # bits per peak index in a hit's sort key: (scan, peak of B, peak of A) packed in an int64
_MASK = (1 << _BITS) - 1
MAX_PEAKS = 1 << _BITS  # spectra with more peaks are scored by the walk


@numba.njit(**NJIT)
def _room(ent_j, ent_key, ne, extra):
    """Hit arrays holding at least ``ne + extra`` (the first ``ne`` kept) and a grouping array as long."""
    cap = max(2 * ent_j.shape[0], ne + extra)
    nj, nk = np.empty(cap, np.int64), np.empty(cap, np.int64)
    nj[:ne] = ent_j[:ne]
    nk[:ne] = ent_key[:ne]
    return nj, nk, np.empty(cap, np.int64)


@numba.njit(**NJIT)
def _gather(kind, scan, a0, a1, pos_a, pa, norm_ai, norm_b, pmz_b, tol_da, tol_ppm, srt, spec, local, mz, slack,
            ent_j, ent_key, gkey, cnt, touched, ne, nt):
    """Append the hits of peaks ``[a0, a1)`` of A in one sorted part of the index (``scan`` 0: by m/z,
    1: by loss) -> (hit arrays, maybe grown, hit count, spectra hit). A function of its own: the tight
    loop compiles better apart from the scoring code."""
    rank = 1 if scan == 1 and kind == MODIFIED_COSINE else 0
    tol_pa = tol_da if tol_ppm <= 0.0 else pa * tol_ppm * 1e-6
    for p in range(a0, a1):
        x = pos_a[p]
        t = tol_da if tol_ppm <= 0.0 else x * tol_ppm * 1e-6
        c = x if scan == 0 else x - pa
        lo = np.searchsorted(srt, c - t - slack, side="left")
        hi = np.searchsorted(srt, c + t + slack, side="right")
        if ne + (hi - lo) > ent_j.shape[0]:
            ent_j, ent_key, gkey = _room(ent_j, ent_key, ne, hi - lo)
        base = rank << _BITS
        for h in range(lo, hi):
            j = spec[h]
            y = mz[h]
            if scan == 1:
                shift = pa - pmz_b[j]
                if kind == MODIFIED_COSINE and not abs(shift) > tol_pa:
                    continue  # matchms' fallback: no shifted pairs within the tolerance
                y = mz[h] + shift
            if x + t < y or x - t > y or not norm_ai * norm_b[j] > 0:
                continue
            ent_j[ne] = j
            ent_key[ne] = ((base | local[h]) << _BITS) | (p - a0)
            ne += 1
            if cnt[j] == 0:
                touched[nt] = j
                nt += 1
            cnt[j] += 1
    return ent_j, ent_key, gkey, ne, nt


@numba.njit(**NJIT)
def score_row_join(kind, i, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b, tol_da, tol_ppm,
                   index, slack, ws, buf, out_s, out_m):
    """Score spectrum ``i`` of A against every spectrum of B through ``index`` (:func:`side_index`).

    Writes ``out_s[j]`` (float64) and ``out_m[j]`` (int32) for the spectra ``j`` of B with a candidate
    pair and leaves the others untouched (the caller zeroes them: they score 0 with 0 matches). Returns
    ``(buf, ws, nt)``: buffers as grown, and the number of spectra written, listed in ``ws[4][:nt]``.
    Per-hit work stays inside this function: a numba call passing arrays costs reference counting.
    """
    a0, a1 = off_a[i], off_a[i + 1]
    na = a1 - a0
    pa = pmz_a[i]
    if na == 0 or not norm_a[i] > 0:
        return buf, ws, 0
    ne = 0
    nt = 0
    ent_j, ent_key, gkey, cnt, touched = ws
    for scan in range(2):
        # scan 0: unshifted pairs (cosine, modified cosine); scan 1: pairs at the precursor shift (modified
        # cosine) or neutral-loss pairs (stored with scan 0, as the walk ranks them)
        if scan == 0 and kind == NEUTRAL_LOSS or scan == 1 and (kind == COSINE or not pa == pa):
            continue
        srt, spec, local, mz = index[scan]
        ent_j, ent_key, gkey, ne, nt = _gather(kind, scan, a0, a1, pos_a, pa, norm_a[i], norm_b, pmz_b, tol_da,
                                               tol_ppm, srt, spec, local, mz, slack, ent_j, ent_key, gkey, cnt,
                                               touched, ne, nt)
    ws = (ent_j, ent_key, gkey, cnt, touched)
    # group the hits by spectrum of B: cnt[j] becomes the end of j's group
    start = 0
    for u in range(nt):
        j = touched[u]
        c = cnt[j]
        cnt[j] = start
        start += c
    for e in range(ne):
        j = ent_j[e]
        gkey[cnt[j]] = ent_key[e]
        cnt[j] += 1
    pairs, pv, peaks = buf[0], buf[1], buf[2]
    s0 = 0
    for u in range(nt):
        j = touched[u]
        s1 = cnt[j]
        cnt[j] = 0
        n = s1 - s0
        b0 = off_b[j]
        nb = off_b[j + 1] - b0
        den = norm_a[i] * norm_b[j]
        if n <= 2:  # the result does not depend on the pairs' order
            k0, k1 = gkey[s0], gkey[s1 - 1]
            p0, p1 = k0 & _MASK, k1 & _MASK
            q0, q1 = (k0 >> _BITS) & _MASK, (k1 >> _BITS) & _MASK
            score, used = few_pairs(p0, q0, ((k0 >> (2 * _BITS)) * na + p0) * nb + q0, w_a[a0 + p0] * w_b[b0 + q0],
                                    p1, q1, ((k1 >> (2 * _BITS)) * na + p1) * nb + q1, w_a[a0 + p1] * w_b[b0 + q1],
                                    n, den)
        else:
            # into the walk's collection order, so that sums are added in the same order (keys are unique:
            # any sort gives it); insertion for small groups, a full sort for large ones, whose hits arrive in
            # peak-of-A order (insertion there was quadratic: 16 rows of 400 peaks within one window, 105 s)
            if n <= _INSERTION_MAX:
                for e in range(s0 + 1, s1):
                    v = gkey[e]
                    f = e - 1
                    while f >= s0 and gkey[f] > v:
                        gkey[f + 1] = gkey[f]
                        f -= 1
                    gkey[f + 1] = v
            else:
                gkey[s0:s1] = np.sort(gkey[s0:s1])
            if n > pv.shape[0]:
                buf = grow(buf, 2 * n)
                pairs, pv = buf[0], buf[1]
            for e in range(n):
                key = gkey[s0 + e]
                pl = key & _MASK
                ql = (key >> _BITS) & _MASK
                pairs[PI, e] = pl
                pairs[PJ, e] = ql
                pv[e] = w_a[a0 + pl] * w_b[b0 + ql]
                pairs[PK, e] = ((key >> (2 * _BITS)) * na + pl) * nb + ql
            total, used = greedy_inline(pairs, pv, peaks, n)
            score = total / den
        out_s[j] = score
        out_m[j] = used
        s0 = s1
    return buf, ws, nt


_CAPACITY = 4096  # initial hit and pair buffer size per block; grown on demand
_INSERTION_MAX = 32  # hit groups up to this size are put in order by insertion


@pjit
def dense_join_kernel(kind, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b, tol_da, tol_ppm,
                      max_a, max_b, n_blocks):
    """All-pairs scores through the peak index -> (scores float64 (n,m), matches int32 (n,m)); the same
    arrays as :func:`fastspec.kernels.topk.dense_kernel`."""
    n = off_a.shape[0] - 1
    m = off_b.shape[0] - 1
    scores = np.zeros((n, m), np.float64)
    matches = np.zeros((n, m), np.int32)
    (mk, ms, ml, mm), (lk, ls, ll, lm) = side_index(kind, off_b, pos_b, pmz_b)
    slack = _slack(pos_a, pos_b, pmz_a, pmz_b)
    step = (n + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        buf = new_buffers(max_a, max_b, _CAPACITY)
        ws = new_workspace(m, _CAPACITY)
        index = ((mk, ms, ml, mm), (lk, ls, ll, lm))  # built here: prange cannot take nested tuples
        for i in range(blk * step, min(n, (blk + 1) * step)):
            buf, ws, _ = score_row_join(kind, i, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                                        tol_da, tol_ppm, index, slack, ws, buf, scores[i], matches[i])
    return scores, matches


@pjit
def topk_join_kernel(kind, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b, tol_da, tol_ppm,
                     k, min_matches, min_score, max_a, max_b, n_blocks):
    """Top-k of every row of A over all of B through the peak index -> (scores (n,k), indices (n,k) with
    -1, matches (n,k)); the same lists as :func:`fastspec.kernels.topk.topk_kernel` with ``all_b``.

    Each block keeps one row of scores over B (zero where not hit); the spectra hit go into the list,
    then, when ``min_matches <= 0`` and ``min_score <= 0`` let pairs without a match in, the others by
    ascending index (score 0) until the list is full.
    """
    n = off_a.shape[0] - 1
    m = off_b.shape[0] - 1
    out_s = np.zeros((n, k), np.float64)
    out_i = np.full((n, k), -1, np.int64)
    out_m = np.zeros((n, k), np.int32)
    (mk, ms, ml, mm), (lk, ls, ll, lm) = side_index(kind, off_b, pos_b, pmz_b)
    slack = _slack(pos_a, pos_b, pmz_a, pmz_b)
    zeros_listed = 0 >= min_matches and 0.0 >= min_score
    step = (n + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        buf = new_buffers(max_a, max_b, _CAPACITY)
        ws = new_workspace(m, _CAPACITY)
        index = ((mk, ms, ml, mm), (lk, ls, ll, lm))
        row_s = np.zeros(m, np.float64)
        row_m = np.zeros(m, np.int32)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            buf, ws, nt = score_row_join(kind, r, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                                         tol_da, tol_ppm, index, slack, ws, buf, row_s, row_m)
            hit = ws[4]
            filled = 0
            for u in range(nt):
                j = hit[u]
                if row_m[j] >= min_matches and row_s[j] >= min_score:
                    filled, _ = insert(out_s, out_i, out_m, r, k, filled, row_s[j], j, row_m[j])
            if zeros_listed:
                for j in range(m):
                    if row_m[j] == 0:  # not hit (a hit has at least one matched peak)
                        filled, entered = insert(out_s, out_i, out_m, r, k, filled, 0.0, j, 0)
                        if not entered:
                            break  # the list is full of better entries or lower indices
            for u in range(nt):
                row_s[hit[u]] = 0.0
                row_m[hit[u]] = 0
    return out_s, out_i, out_m


@numba.njit(**NJIT)
def insert(out_s, out_i, out_m, r, k, filled, s, j, c):
    """Insert (score ``s``, index ``j``, matches ``c``) into row ``r``'s top-k list (score desc, index asc)
    holding ``filled`` entries -> (entries now, whether it entered).

    :func:`fastspec.kernels.topk.topk_kernel` spells the same insertion out inline: a call per candidate
    there slowed identity search by about 15% (alternating runs, 2.4M library).
    """
    if filled == k:
        if not (s > out_s[r, k - 1] or (s == out_s[r, k - 1] and j < out_i[r, k - 1])):
            return filled, False
        p = k - 1
    else:
        p = filled
        filled += 1
    # shift worse entries down
    while p > 0 and (out_s[r, p - 1] < s or (out_s[r, p - 1] == s and out_i[r, p - 1] > j)):
        out_s[r, p] = out_s[r, p - 1]
        out_i[r, p] = out_i[r, p - 1]
        out_m[r, p] = out_m[r, p - 1]
        p -= 1
    out_s[r, p] = s
    out_i[r, p] = j
    out_m[r, p] = c
    return filled, True
