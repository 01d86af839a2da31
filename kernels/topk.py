"""Batch drivers over :func:`fastspec.kernels.matching.score_row`: pairs, dense matrices and top-k.

Parallel over blocks of rows (``prange`` on the outer loop only); each block owns its scratch
buffers, so nothing is shared between threads. Each row of A is scored against all its partners in one
:func:`~fastspec.kernels.matching.score_row` call (pairs are grouped by row first). Top-k lists live inside the kernel (insertion into a
sorted list of length k per row); an n x m matrix is never allocated for top-k. Ties go to the lowest
index of side B, so results are deterministic whatever the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from fastspec.kernels._config import pjit
from fastspec.kernels.matching import bin_inverse, new_buffers, score_row

_CAPACITY = 4096  # initial pair-buffer size per thread; grown on demand
_CHUNK = 4096  # candidates scored per score_row call in top-k (bounded scratch per thread)
#: with candidate bounds, candidates scored between checks of the early stop: a call's fixed cost (marking
#: the query's peaks) is a few pairs' worth, the waste past the stop at most a chunk
_BOUND_CHUNK = 16


@pjit
def pairs_kernel(kind, ia, ib, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                 tol_da, tol_ppm, max_a, max_b, n_blocks):
    """Scores of ``A[ia[t]]`` vs ``B[ib[t]]`` -> (scores float64 (n,), matches int32 (n,))."""
    n = ia.shape[0]
    order = np.argsort(ia, kind="mergesort")  # group pairs by row of A
    jb = ib[order]
    s_sorted = np.zeros(n, np.float64)
    m_sorted = np.zeros(n, np.int32)
    step = (n + n_blocks - 1) // n_blocks
    inv_w = bin_inverse(pos_a, tol_da, tol_ppm)
    for blk in prange(n_blocks):
        buf = new_buffers(max_a, max_b, _CAPACITY)
        t, stop = blk * step, min(n, (blk + 1) * step)
        while t < stop:
            i = ia[order[t]]
            u = t + 1
            while u < stop and ia[order[u]] == i:
                u += 1
            buf = score_row(kind, i, jb, t, u, False, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b,
                            norm_b, pmz_b, tol_da, tol_ppm, inv_w, buf, s_sorted[t:u], m_sorted[t:u])
            t = u
    scores = np.zeros(n, np.float64)
    matches = np.zeros(n, np.int32)
    for t in range(n):
        scores[order[t]] = s_sorted[t]
        matches[order[t]] = m_sorted[t]
    return scores, matches


@pjit
def dense_kernel(kind, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                 tol_da, tol_ppm, max_a, max_b, n_blocks):
    """All-pairs scores -> (scores float64 (n,m), matches int32 (n,m))."""
    n = off_a.shape[0] - 1
    m = off_b.shape[0] - 1
    scores = np.zeros((n, m), np.float64)
    matches = np.zeros((n, m), np.int32)
    none = np.empty(0, np.int64)
    step = (n + n_blocks - 1) // n_blocks
    inv_w = bin_inverse(pos_a, tol_da, tol_ppm)
    for blk in prange(n_blocks):
        buf = new_buffers(max_a, max_b, _CAPACITY)
        for i in range(blk * step, min(n, (blk + 1) * step)):
            buf = score_row(kind, i, none, 0, m, True, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b,
                            norm_b, pmz_b, tol_da, tol_ppm, inv_w, buf, scores[i], matches[i])
    return scores, matches


@pjit
def topk_kernel(kind, rows, cand_off, cand_ids, all_b, labels, cand_bounds, off_a, pos_a, w_a, norm_a, pmz_a,
                off_b, pos_b, w_b, norm_b, pmz_b, tol_da, tol_ppm, k, min_matches, min_score,
                max_a, max_b, n_blocks):
    """Top-k of each row over its candidates -> (scores (n,k), indices (n,k) with -1, matches (n,k)).

    Row ``r`` is spectrum ``rows[r]`` of A; its candidates are ``cand_ids[cand_off[r]:cand_off[r+1]]``
    (indices into B), or every spectrum of B when ``all_b``. A candidate enters the list only with at
    least ``min_matches`` matched peaks and a score ``>= min_score``. ``labels`` (int64, one per spectrum
    of B, or empty for the B index itself) is what the list reports and what breaks ties: lowest label
    first, so B may be stored in any order (e.g. by precursor m/z) and still rank like the library.
    ``cand_bounds`` (float64, one per candidate, or empty): upper bounds of the candidates' scores, in
    non-increasing order within each row; a row stops once its list is full and the next bound is below
    its k-th score (no later candidate can enter, not even on a tie), scoring :data:`_BOUND_CHUNK`
    candidates at a time. Candidates are scored in chunks into per-block scratch, so memory stays bounded
    for any row.
    """
    n = rows.shape[0]
    m_all = off_b.shape[0] - 1
    out_s = np.zeros((n, k), np.float64)
    out_i = np.full((n, k), -1, np.int64)
    out_m = np.zeros((n, k), np.int32)
    step = (n + n_blocks - 1) // n_blocks
    inv_w = bin_inverse(pos_a, tol_da, tol_ppm)
    labelled = labels.shape[0] > 0
    bounded = cand_bounds.shape[0] > 0 and not all_b
    chunk = _BOUND_CHUNK if bounded else _CHUNK
    for blk in prange(n_blocks):
        buf = new_buffers(max_a, max_b, _CAPACITY)
        tmp_s = np.empty(_CHUNK, np.float64)
        tmp_m = np.empty(_CHUNK, np.int32)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            i = rows[r]
            c0 = 0 if all_b else cand_off[r]
            c1 = m_all if all_b else cand_off[r + 1]
            filled = 0
            for h0 in range(c0, c1, chunk):
                if bounded and filled == k and cand_bounds[h0] < out_s[r, k - 1]:
                    break
                h1 = min(c1, h0 + chunk)
                buf = score_row(kind, i, cand_ids, h0, h1, all_b, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b,
                                w_b, norm_b, pmz_b, tol_da, tol_ppm, inv_w, buf, tmp_s, tmp_m)
                for t in range(h0, h1):
                    s = tmp_s[t - h0]
                    c = tmp_m[t - h0]
                    # a NaN score (ms_entropy's float32 sums overflow on intensities near 3e38) is no hit
                    if c < min_matches or not s >= min_score:
                        continue
                    j = t if all_b else cand_ids[t]
                    if labelled:
                        j = labels[j]
                    if filled == k:
                        ws, wi = out_s[r, k - 1], out_i[r, k - 1]
                        if not (s > ws or (s == ws and j < wi)):
                            continue
                        p = k - 1
                    else:
                        p = filled
                        filled += 1
                    # shift worse entries down and insert (score desc, index asc)
                    while p > 0 and (out_s[r, p - 1] < s or (out_s[r, p - 1] == s and out_i[r, p - 1] > j)):
                        out_s[r, p] = out_s[r, p - 1]
                        out_i[r, p] = out_i[r, p - 1]
                        out_m[r, p] = out_m[r, p - 1]
                        p -= 1
                    out_s[r, p] = s
                    out_i[r, p] = j
                    out_m[r, p] = c
    return out_s, out_i, out_m

