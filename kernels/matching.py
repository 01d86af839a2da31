"""Pair scoring kernels: greedy cosine, modified cosine, neutral-loss cosine, binned cosine, entropy.

Everything works on *prepared* CSR arrays (see :func:`fastspec.similarity.prepare`): per spectrum the
peaks ``[off[i], off[i+1])`` with ``pos`` (m/z, neutral loss or bin id, float64) and a weight ``w``
(float64), a norm per spectrum and the precursor m/z. One function, :func:`score_one`, scores spectrum
``i`` of side A against spectrum ``j`` of side B for any metric ``kind``; the batch drivers in
:mod:`fastspec.kernels.topk` call it from their parallel outer loops with per-thread :class:`buffers`.

matchms parity (CosineGreedy / ModifiedCosineGreedy / NeutralLossesCosine 0.33)
------------------------------------------------------------------------------
* Candidate pairs are collected in matchms order: for each peak of A (ascending m/z), the peaks of B
  with ``mz_a - tol <= mz_b + shift <= mz_a + tol``; modified cosine appends the shifted pairs after the
  unshifted ones. Products are ``w_a * w_b`` with ``w = mz**mz_power * intensity**intensity_power``.
* Pairs are taken greedily by descending product. matchms reverses a stable ascending sort, so among
  equal products the pair collected *later* wins; :func:`_order_pairs` reproduces that.
* Modified cosine falls back to plain cosine when ``|pmz_a - pmz_b| <= tol`` (as matchms does); when a
  precursor is unknown (NaN) it also falls back to plain cosine (matchms would raise).
* ppm tolerances (not in matchms) use the window ``mz_a * ppm * 1e-6`` around each peak of A.
"""
from __future__ import annotations

import numba
import numpy as np

from fastspec.kernels._config import NJIT
from fastspec.kernels.entropy import entropy_pair

COSINE = 0
MODIFIED_COSINE = 1
NEUTRAL_LOSS = 2
BINNED = 3
ENTROPY = 4

_SMALL_SORT = 24  # insertion sort below this many pairs (no allocation); mergesort above


@numba.njit(**NJIT)
def new_buffers(max_peaks_a, max_peaks_b, capacity):
    """Per-thread scratch: pair lists (grown on demand) and 'used' flags for both sides."""
    pi = np.empty(capacity, np.int64)
    pj = np.empty(capacity, np.int64)
    pv = np.empty(capacity, np.float64)
    order = np.empty(capacity, np.int64)
    used_a = np.zeros(max(max_peaks_a, 1), np.bool_)
    used_b = np.zeros(max(max_peaks_b, 1), np.bool_)
    return pi, pj, pv, order, used_a, used_b


@numba.njit(**NJIT)
def _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, shift, pi, pj, pv, n):
    """Append the pairs within tolerance (matchms ``find_matches`` order); -1 when the buffer is full."""
    cap = pi.shape[0]
    lowest = b0
    for p in range(a0, a1):
        mz = pos_a[p]
        tol = tol_da if tol_ppm <= 0.0 else mz * tol_ppm * 1e-6
        low = mz - tol
        high = mz + tol
        for q in range(lowest, b1):
            mz2 = pos_b[q] + shift
            if mz2 > high:
                break
            if mz2 < low:
                lowest = q + 1
            else:
                if n >= cap:
                    return -1
                pi[n] = p - a0
                pj[n] = q - b0
                pv[n] = w_a[p] * w_b[q]
                n += 1
    return n


@numba.njit(**NJIT)
def _order_pairs(pv, n, order):
    """Indices of the first ``n`` pairs by descending product, later pairs first among equal products."""
    if n <= _SMALL_SORT:
        for t in range(n):
            order[t] = t
        for t in range(1, n):
            cur = order[t]
            v = pv[cur]
            s = t - 1
            # 'cur' (collected later than everything before it) goes ahead of equal products
            while s >= 0 and pv[order[s]] <= v:
                order[s + 1] = order[s]
                s -= 1
            order[s + 1] = cur
    else:
        asc = np.argsort(pv[:n], kind="mergesort")
        for t in range(n):
            order[t] = asc[n - 1 - t]


@numba.njit(**NJIT)
def _greedy(pi, pj, pv, n, order, used_a, used_b):
    """Greedy one-to-one assignment over ordered pairs -> (sum of products, matched pairs)."""
    _order_pairs(pv, n, order)
    total = 0.0
    used = 0
    for t in range(n):
        k = order[t]
        if not used_a[pi[k]] and not used_b[pj[k]]:
            total += pv[k]
            used_a[pi[k]] = True
            used_b[pj[k]] = True
            used += 1
    for t in range(n):  # reset only the flags this pair touched
        used_a[pi[t]] = False
        used_b[pj[t]] = False
    return total, used


@numba.njit(**NJIT)
def _binned(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1):
    """Dot product of two sparse binned vectors (sorted unique bin ids) and the shared-bin count."""
    a, b = a0, b0
    total = 0.0
    shared = 0
    while a < a1 and b < b1:
        if pos_a[a] < pos_b[b]:
            a += 1
        elif pos_a[a] > pos_b[b]:
            b += 1
        else:
            total += w_a[a] * w_b[b]
            shared += 1
            a += 1
            b += 1
    return total, shared


@numba.njit(**NJIT)
def score_one(kind, i, j, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
              tol_da, tol_ppm, pi, pj, pv, order, used_a, used_b):
    """Score spectrum ``i`` of A against spectrum ``j`` of B -> (score, matched peaks, overflow).

    ``pi, pj, pv, order, used_a, used_b`` are the scratch arrays from :func:`new_buffers`. ``overflow``
    is 0, or the pair count that did not fit: the caller grows the pair buffers and calls again
    (returning arrays from here would cost reference counting on every call). Empty spectra and zero
    norms score 0 with 0 matches.
    """
    a0, a1 = off_a[i], off_a[i + 1]
    b0, b1 = off_b[j], off_b[j + 1]
    if a1 == a0 or b1 == b0:
        return 0.0, 0, 0
    if kind == BINNED:
        dot, shared = _binned(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1)
        den = norm_a[i] * norm_b[j]
        return (dot / den if den > 0 else 0.0), shared, 0
    if kind == ENTROPY:
        s, m = entropy_pair(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm)
        return s, m, 0
    den = norm_a[i] * norm_b[j]
    if not den > 0:
        return 0.0, 0, 0
    shift = 0.0
    shifted = False
    if kind == NEUTRAL_LOSS:
        if not (pmz_a[i] == pmz_a[i] and pmz_b[j] == pmz_b[j]):
            return 0.0, 0, 0
        shift = pmz_a[i] - pmz_b[j]
    elif kind == MODIFIED_COSINE:
        pa, pb = pmz_a[i], pmz_b[j]
        if pa == pa and pb == pb:
            ptol = tol_da if tol_ppm <= 0.0 else pa * tol_ppm * 1e-6
            shifted = abs(pa - pb) > ptol
            shift = pa - pb
    n = _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, shift if kind == NEUTRAL_LOSS else 0.0,
                 pi, pj, pv, 0)
    if n >= 0 and shifted:
        n = _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, shift, pi, pj, pv, n)
    if n < 0:  # a pathological pair list: ask for room for every peak pair
        return 0.0, 0, (a1 - a0) * (b1 - b0) * (2 if shifted else 1)
    if n == 0:
        return 0.0, 0, 0
    total, used = _greedy(pi, pj, pv, n, order, used_a, used_b)
    return total / den, used, 0


@numba.njit(**NJIT)
def grow(need):
    """Larger pair buffers (pi, pj, pv, order) for ``need`` pairs."""
    return np.empty(need, np.int64), np.empty(need, np.int64), np.empty(need, np.float64), np.empty(need, np.int64)
