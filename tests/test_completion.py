"""Bound completion of the whole-library search (:func:`fastspec.kernels.fragment._complete`) against a
naive per-query-peak window search: the cell-bitmap lookup must find every library peak in every
fragment (and neutral-loss) window, so the sums are the same, in the same order."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspec.kernels import fragment as fk


@numba.njit(cache=False)
def _run(t0, order, q_mz, q_w, qpmz, l_off, l_mz, l_w, l_pmz, use_nl, kind, tol_da, tol_ppm, nl_base):
    npk = q_mz.shape[0]
    n = l_off.shape[0] - 1
    bits = np.zeros((2, fk._LOOKUP_WORDS), dtype=np.uint64)
    lk = (np.empty(npk), np.empty(npk, dtype=np.int64), np.empty(npk), np.empty(npk), np.empty(npk),
          np.empty(npk), np.empty(npk))
    do_nl = use_nl and np.isfinite(qpmz)
    info = fk._lookup_build(t0, npk, 0, order, q_mz, q_w, qpmz, do_nl, tol_da, tol_ppm, nl_base, bits, lk, 0.0)
    work = np.zeros((n, 2), dtype=np.float32)
    count = np.zeros(n, dtype=np.uint16)
    for c in range(n):
        fk._complete(c, t0, npk, 0, order, q_w, qpmz, (l_off[:-1], l_off[1:]), l_mz, l_w, l_pmz, use_nl, kind, bits,
                     lk, info, work, count, True)
    fk._lookup_mark(bits, lk, info[0], info[1], do_nl, False)
    return work[:, 0].copy(), count, bits


def _half_width(x, tol_da, tol_ppm, base):
    h = tol_ppm * 1e-6 * base / (1.0 - tol_ppm * 1e-6) if tol_ppm > 0 else tol_da
    return h + 3e-7 * abs(x) + 1e-6


def _g(q, l):
    f = lambda x: x * math.log2(x) if x > 0 else 0.0  # noqa: E731
    return 0.5 * (f(q + l) - f(q) - f(l))


def naive(t0, order, q_mz, q_w, qpmz, l_off, l_mz, l_w, l_pmz, use_nl, kind, tol_da, tol_ppm, nl_base):
    """For each query peak left (scan order), the largest library weight in its windows, summed."""
    out, cnt = [], []
    for c in range(len(l_off) - 1):
        mz, w = l_mz[l_off[c]:l_off[c + 1]], l_w[l_off[c]:l_off[c + 1]]
        pc = l_pmz[c]
        do_nl = use_nl and math.isfinite(pc) and math.isfinite(qpmz)
        acc, n = 0.0, 0
        for t in range(t0, len(order)):
            x, qw = q_mz[order[t]], float(q_w[order[t]])
            if qw <= 0:
                continue
            h = _half_width(x, tol_da, tol_ppm, x)
            best = max([float(b) for v, b in zip(mz, w) if x - h <= v <= x + h] + [0.0])
            if do_nl:
                y = qpmz - x
                hn = _half_width(y, tol_da, tol_ppm, max(nl_base, x))
                z = pc - y
                best = max([best] + [float(b) for v, b in zip(mz, w) if z - hn <= v <= z + hn])
            if best > 0:
                acc += qw * best if kind == fk.KIND_PRODUCT else _g(qw, best)
                n += 1
        out.append(np.float32(acc))
        cnt.append(n)
    return np.array(out, dtype=np.float32), np.array(cnt)


def _spectra(rng, n, lo, hi, n_peaks):
    lens = rng.integers(0, n_peaks, n)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    mz = np.concatenate([np.sort(rng.uniform(lo, hi, k)) for k in lens]) if off[-1] else np.zeros(0)
    w = rng.uniform(0.0, 1.0, off[-1]).astype(np.float32)
    return off, mz, w


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from([fk.KIND_PRODUCT, fk.KIND_ENTROPY]),
       use_nl=st.booleans(), tol=st.sampled_from([("da", 0.02), ("da", 0.5), ("ppm", 10.0), ("ppm", 200.0)]),
       t0=st.integers(0, 6))
def test_completion_equals_window_search(seed, kind, use_nl, tol, t0):
    rng = np.random.default_rng(seed)
    # a narrow m/z range makes library peaks fall into (and next to) the query's windows; a wide one
    # wraps the hashed cells (65,536 cells of at least 1e-3 Da)
    lo, hi = (100.0, 104.0) if seed % 2 else (50.0, 5000.0)
    npk = 7
    q_mz = np.sort(rng.uniform(lo, hi, npk))
    q_mz[3] = q_mz[2] + 1e-3  # two query peaks sharing library partners
    q_w = rng.uniform(0.0, 1.0, npk).astype(np.float32)
    q_w[1] = 0.0  # zero weights are skipped
    order = rng.permutation(npk).astype(np.int64)
    l_off, l_mz, l_w = _spectra(rng, 25, lo, hi, 12)
    # library peaks exactly on window edges
    if l_mz.shape[0] > 2:
        h = _half_width(q_mz[0], tol[1] if tol[0] == "da" else 0.0, tol[1] if tol[0] == "ppm" else 0.0, q_mz[0])
        l_mz[0], l_mz[-1] = q_mz[0] - h, q_mz[0] + h
        for c in range(len(l_off) - 1):
            l_mz[l_off[c]:l_off[c + 1]].sort()
    qpmz = float(hi + 30.0)
    l_pmz = qpmz + rng.uniform(-40.0, 40.0, len(l_off) - 1)
    l_pmz[0] = np.nan  # no neutral losses without a precursor
    tol_da, tol_ppm = (tol[1], 0.0) if tol[0] == "da" else (0.0, tol[1])
    args = (min(t0, npk), order, q_mz, q_w, qpmz, l_off, l_mz, l_w, l_pmz, use_nl, kind, tol_da, tol_ppm, hi)
    got, got_cnt, bits = _run(*args)
    want, want_cnt = naive(*args)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got_cnt, want_cnt)
    assert not bits.any()  # cleared for the next query


@pytest.mark.parametrize("use_nl", [False, True])
def test_completion_without_query_peaks_left(use_nl):
    q_mz = np.array([100.0, 200.0])
    q_w = np.array([0.5, 0.5], dtype=np.float32)
    l_off = np.array([0, 2], dtype=np.int64)
    got, cnt, _ = _run(2, np.arange(2), q_mz, q_w, 300.0, l_off, q_mz.copy(), q_w.copy(), np.array([300.0]), use_nl,
                       fk.KIND_PRODUCT, 0.02, 0.0, 200.0)
    assert got[0] == 0.0 and cnt[0] == 0
