"""The peak-index join (kernels/join.py) gives exactly what the per-pair walk gives.

``score_matrix`` joins when side A has at least ``JOIN_MIN_ROWS`` spectra (cosine, modified cosine,
neutral-loss cosine); ``score_pairs`` always walks. Both must agree bit for bit -- scores, matched peaks,
tie order of the top-k lists -- on spectra full of greedy conflicts, shifted copies, NaN precursors, zero
norms, empty spectra, and at Da and ppm tolerances, serial and parallel.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference as ref
from fastspec.kernels.join import JOIN_MIN_ROWS
from fastspec.similarity import prepare, score_matrix, score_pairs
from fastspec.spectra import Spectra
from test_similarity import COSINE_FAMILY, messy_spectra

TOLERANCES = [0.1, 0.02, "20ppm", "200ppm"]


def walk_matrix(pa, pb):
    """Every pair through ``score_pairs`` (the walk), as dense (n, m) arrays."""
    ia, ib = np.meshgrid(np.arange(len(pa)), np.arange(len(pb)), indexing="ij")
    s, m = score_pairs(pa.take(ia.ravel()), pb.take(ib.ravel()), threads=1)
    return s.reshape(ia.shape), m.reshape(ia.shape)


def with_zero_norm(sp: Spectra) -> Spectra:
    """``sp`` plus a spectrum whose intensities are all zero (norm 0: scores 0 with 0 matches)."""
    lo, hi = sp.offsets[1], sp.offsets[2]
    z = Spectra.from_arrays([sp.mz[lo:hi]], [np.zeros(hi - lo, np.float32)], precursor_mz=[sp.precursor_mz[1]])
    return Spectra.concat([sp, z])


@pytest.mark.parametrize("tolerance", TOLERANCES)
@pytest.mark.parametrize("metric", COSINE_FAMILY)
@pytest.mark.parametrize("threads", [1, 2])
def test_join_equals_walk(metric, tolerance, threads):
    tol_da = 0.1 if not isinstance(tolerance, str) else 0.05
    A, B = messy_spectra(3 * JOIN_MIN_ROWS, 21, tol_da), messy_spectra(70, 22, tol_da)
    pa, pb = prepare(A, metric, tolerance), prepare(B, metric, tolerance)
    S, M = score_matrix(pa, pb, threads=threads)
    WS, WM = walk_matrix(pa, pb)
    assert np.array_equal(S, WS) and np.array_equal(M, WM)
    assert (M > 2).sum() > 20  # greedy conflicts and multi-peak pairs are exercised


@pytest.mark.parametrize("metric", COSINE_FAMILY)
def test_join_topk_equals_walk(metric):
    A, B = messy_spectra(2 * JOIN_MIN_ROWS, 31), messy_spectra(90, 32)
    pa, pb = prepare(A, metric, 0.1), prepare(B, metric, 0.1)
    WS, WM = walk_matrix(pa, pb)
    for k, mm, ms in [(5, 0, -np.inf), (200, 0, -np.inf), (7, 1, 0.0), (7, 2, 0.2), (3, 0, 0.5)]:
        ts, ti, tm = score_matrix(pa, pb, k=k, min_matches=mm, min_score=ms)
        for i in range(len(A)):
            rs, ri, rm = ref.topk(WS[i], WM[i], k, mm, ms)
            assert np.array_equal(ti[i], ri), (k, mm, ms, i)
            assert np.array_equal(ts[i], rs) and np.array_equal(tm[i], rm)


def test_join_zero_norm_and_empty():
    A = with_zero_norm(messy_spectra(JOIN_MIN_ROWS + 3, 41))
    pa = prepare(A, "modified_cosine", 0.1)
    S, M = score_matrix(pa, pa)
    WS, WM = walk_matrix(pa, pa)
    assert np.array_equal(S, WS) and np.array_equal(M, WM)
    assert not S[-1].any() and not M[:, -1].any()


def test_join_real(massbank_parquet):
    """Raw MassBank spectra (many peaks within a tolerance of each other), 0.1 Da."""
    from fastspec.io import read

    sp = read(massbank_parquet)
    rows = np.sort(np.random.default_rng(3).choice(np.flatnonzero(sp.n_peaks <= 300), 80, replace=False))
    for metric in COSINE_FAMILY:
        p = prepare(sp.take(rows), metric, 0.1)
        S, M = score_matrix(p, p)
        WS, WM = walk_matrix(p, p)
        assert np.array_equal(S, WS) and np.array_equal(M, WM)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.sampled_from([0.0, 14.01565, -0.05, 0.1]),
       metric=st.sampled_from(COSINE_FAMILY))
def test_join_property(seed, shift, metric):
    """Spectra whose precursors differ by exactly the tolerance, or by a shift carried by fragments."""
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.uniform(50, 300, 12))
    mzs, ints, pmz = [], [], []
    for i in range(JOIN_MIN_ROWS + 4):
        k = int(rng.integers(0, 9))
        m = np.sort(np.concatenate([rng.choice(pool, k) + rng.normal(0, 0.04, k), rng.choice(pool, 2) + shift]))
        mzs.append(m)
        ints.append(rng.choice([1.0, 2.0, 3.0], m.size).astype(np.float32))
        pmz.append(400.0 + (shift if i % 2 else 0.0))
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=pmz)
    p = prepare(sp, metric, 0.1)
    S, M = score_matrix(p, p)
    WS, WM = walk_matrix(p, p)
    assert np.array_equal(S, WS) and np.array_equal(M, WM)


@pytest.mark.parametrize("metric", ["cosine", "modified_cosine"])
def test_large_hit_groups_equal_the_walk(metric):
    """Hit groups past the insertion-sort size (many peaks inside one window) are sorted whole: the same
    scores as the walk, bit for bit (insertion was quadratic there: 16 rows of 400 peaks, 105 s; an audit)."""
    rng = np.random.default_rng(1)
    n = 120
    mz = [np.sort(100 + rng.random(n) * 0.4) for _ in range(JOIN_MIN_ROWS)]
    a = Spectra.from_arrays(mz, [rng.choice([1.0, 2.0, 3.0], n) for _ in mz], precursor_mz=[300.0] * len(mz))
    b = Spectra.from_arrays([np.sort(100 + rng.random(n) * 0.4)], [rng.choice([1.0, 2.0, 3.0], n)],
                            precursor_mz=[300.2])
    joined = score_matrix(a, b, metric, 0.5)
    walked = [score_matrix(a[[i]], b, metric, 0.5) for i in range(len(a))]  # one row: the walk
    np.testing.assert_array_equal(joined[0][:, 0], [w[0][0, 0] for w in walked])
    np.testing.assert_array_equal(joined[1][:, 0], [w[1][0, 0] for w in walked])
