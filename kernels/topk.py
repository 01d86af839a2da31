"""Batch drivers over :func:`fastspec.kernels.matching.score_one`: pairs, dense matrices and top-k.

Parallel over blocks of rows (``prange`` on the outer loop only); each block owns its scratch
buffers, so nothing is shared between threads. Top-k lists live inside the kernel (insertion into a
sorted list of length k per row); an n x m matrix is never allocated for top-k. Ties go to the lowest
index of side B, so results are deterministic whatever the thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastspec.kernels._config import PJIT
from fastspec.kernels.matching import grow, new_buffers, score_one

_CAPACITY = 4096  # initial pair-buffer size per thread; grown on demand


def _n_blocks(n_rows: int) -> int:
    """Enough blocks for load balance (rows differ a lot in cost), few enough to amortise buffers."""
    return int(max(1, min(n_rows, numba.get_num_threads() * 16)))


@numba.njit(**PJIT)
def pairs_kernel(kind, ia, ib, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                 tol_da, tol_ppm, max_a, max_b, n_blocks):
    """Scores of ``A[ia[t]]`` vs ``B[ib[t]]`` -> (scores float64 (n,), matches int32 (n,))."""
    n = ia.shape[0]
    scores = np.zeros(n, np.float64)
    matches = np.zeros(n, np.int32)
    step = (n + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        pi, pj, pv, order, used_a, used_b = new_buffers(max_a, max_b, _CAPACITY)
        for t in range(blk * step, min(n, (blk + 1) * step)):
            while True:
                s, m, need = score_one(kind, ia[t], ib[t], off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b,
                                   norm_b, pmz_b, tol_da, tol_ppm, pi, pj, pv, order, used_a, used_b)
                if need == 0:
                    break
                pi, pj, pv, order = grow(need)
            scores[t] = s
            matches[t] = m
    return scores, matches


@numba.njit(**PJIT)
def dense_kernel(kind, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
                 tol_da, tol_ppm, max_a, max_b, n_blocks):
    """All-pairs scores -> (scores float64 (n,m), matches int32 (n,m))."""
    n = off_a.shape[0] - 1
    m = off_b.shape[0] - 1
    scores = np.zeros((n, m), np.float64)
    matches = np.zeros((n, m), np.int32)
    step = (n + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        pi, pj, pv, order, used_a, used_b = new_buffers(max_a, max_b, _CAPACITY)
        for i in range(blk * step, min(n, (blk + 1) * step)):
            for j in range(m):
                while True:
                    s, c, need = score_one(kind, i, j, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b,
                                       norm_b, pmz_b, tol_da, tol_ppm, pi, pj, pv, order, used_a, used_b)
                    if need == 0:
                        break
                    pi, pj, pv, order = grow(need)
                scores[i, j] = s
                matches[i, j] = c
    return scores, matches


@numba.njit(**PJIT)
def topk_kernel(kind, rows, cand_off, cand_ids, all_b, off_a, pos_a, w_a, norm_a, pmz_a,
                off_b, pos_b, w_b, norm_b, pmz_b, tol_da, tol_ppm, k, min_matches, min_score,
                max_a, max_b, n_blocks):
    """Top-k of each row over its candidates -> (scores (n,k), indices (n,k) with -1, matches (n,k)).

    Row ``r`` is spectrum ``rows[r]`` of A; its candidates are ``cand_ids[cand_off[r]:cand_off[r+1]]``
    (indices into B), or every spectrum of B when ``all_b``. A candidate enters the list only with at
    least ``min_matches`` matched peaks and a score ``>= min_score``. Ties: lowest B index first.
    """
    n = rows.shape[0]
    m_all = off_b.shape[0] - 1
    out_s = np.zeros((n, k), np.float64)
    out_i = np.full((n, k), -1, np.int64)
    out_m = np.zeros((n, k), np.int32)
    step = (n + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        pi, pj, pv, order, used_a, used_b = new_buffers(max_a, max_b, _CAPACITY)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            i = rows[r]
            c0 = 0 if all_b else cand_off[r]
            c1 = m_all if all_b else cand_off[r + 1]
            filled = 0
            for t in range(c0, c1):
                j = t if all_b else cand_ids[t]
                while True:
                    s, c, need = score_one(kind, i, j, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b,
                                       norm_b, pmz_b, tol_da, tol_ppm, pi, pj, pv, order, used_a, used_b)
                    if need == 0:
                        break
                    pi, pj, pv, order = grow(need)
                if c < min_matches or s < min_score:
                    continue
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
