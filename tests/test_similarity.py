"""fastspec.similarity API: shapes, top-k, candidates, threads, errors, edge cases, and the naive reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

import reference as ref
from fastspec.errors import ParameterError
from fastspec.io import read
from fastspec.similarity import (METRICS, Prepared, group_candidates, prepare, score_matrix, score_pairs,
                                 topk_candidates)
from fastspec.spectra import Spectra

ALL = list(dict.fromkeys(METRICS))
COSINE_FAMILY = ["cosine", "modified_cosine", "neutral_loss_cosine"]
ENTROPY = ["entropy", "unweighted_entropy"]


# ----------------------------------------------------------------------------------- synthetic spectra
def messy_spectra(n: int, seed: int, tol_da: float = 0.1) -> Spectra:
    """Spectra that stress greedy matching: shared fragments, copies shifted by the precursor difference,
    peaks closer than the tolerance, repeated (tied) intensities, NaN precursors and empty spectra."""
    rng = np.random.default_rng(seed)
    pool = np.sort(np.random.default_rng(0).uniform(50, 600, 20))  # shared by every call
    mzs, ints, pmz = [], [], []
    for i in range(n):
        base = 650.0 + rng.integers(0, 4) * 14.01565  # a few precursors, shifts of CH2
        k = int(rng.integers(0, 15))
        m = rng.choice(pool, size=k, replace=False) + rng.uniform(-tol_da, tol_da, k) * 0.9
        if k and rng.random() < 0.5:  # fragments carrying the shift
            m = np.concatenate([m, m[: k // 2] + (base - 650.0)])
        if m.size and rng.random() < 0.5:  # near-duplicates inside the tolerance
            m = np.concatenate([m, m[:3] + rng.uniform(-tol_da, tol_da, min(3, m.size)) * 0.6])
        levels = np.array([1.0, 2.0, 5.0, 10.0, 100.0])
        it = rng.choice(levels, size=m.size) if rng.random() < 0.5 else rng.uniform(0.1, 100, m.size)
        if i % 17 == 5:
            m, it = m[:0], it[:0]
        p = base if i % 13 != 3 else np.nan
        mzs.append(m)
        ints.append(it.astype(np.float32))
        pmz.append(p)
    return Spectra.from_arrays(mzs, ints, precursor_mz=pmz)


def clean_spectra(n: int, seed: int, tol_da: float = 0.02, ppm: float | None = None) -> Spectra:
    """Spectra whose peaks are >= 6 tolerances apart and whose shared peaks sit within 0.4 tolerance:
    every match is unambiguous, also after rounding m/z to float32 (entropy kernels)."""
    rng = np.random.default_rng(seed)
    pool = 60.0 + np.arange(200) * 3.7
    mzs, ints, pmz = [], [], []
    for _ in range(n):
        k = int(rng.integers(1, 25))
        m = np.sort(rng.choice(pool, size=k, replace=False))
        t = m * ppm * 1e-6 if ppm else tol_da
        m = m + rng.uniform(-0.2, 0.2, k) * t
        mzs.append(np.float32(m).astype(np.float64))
        ints.append(rng.uniform(0.5, 100, k).astype(np.float32))
        pmz.append(900.0)
    return Spectra.from_arrays(mzs, ints, precursor_mz=pmz)


def peaks_of(sp: Spectra, i: int):
    lo, hi = sp.offsets[i], sp.offsets[i + 1]
    return sp.mz[lo:hi].tolist(), sp.intensity[lo:hi].astype(np.float64).tolist(), float(sp.precursor_mz[i])


def reference_matrix(metric, A, B, tol, unit="da", mz_power=0.0, intensity_power=1.0, **params):
    S = np.zeros((len(A), len(B)))
    M = np.zeros((len(A), len(B)), np.int64)
    pb = [peaks_of(B, j) for j in range(len(B))]
    for i in range(len(A)):
        pa = peaks_of(A, i)
        for j in range(len(B)):
            S[i, j], M[i, j] = ref.score(metric, *pa, *pb[j], tol, unit, mz_power, intensity_power, **params)
    return S, M


@pytest.fixture(scope="module")
def real(massbank_parquet) -> Spectra:
    sp = read(massbank_parquet)
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(np.flatnonzero(sp.n_peaks <= 400), 150, replace=False))
    rows = np.concatenate([rows, rows[:10]])  # duplicates: exact ties
    return sp.take(rows)


# ----------------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("metric", ALL)
def test_shapes_and_dtypes(metric):
    A, B = messy_spectra(12, 1), messy_spectra(9, 2)
    s, m = score_pairs(A[np.arange(9)], B, metric)
    assert s.shape == m.shape == (9,) and s.dtype == np.float64 and m.dtype == np.int32
    S, M = score_matrix(A, B, metric)
    assert S.shape == M.shape == (12, 9) and S.dtype == np.float64 and M.dtype == np.int32
    assert np.array_equal(S[np.arange(9), np.arange(9)], s) and np.array_equal(M[np.arange(9), np.arange(9)], m)
    ts, ti, tm = score_matrix(A, B, metric, k=4)
    assert ts.shape == ti.shape == tm.shape == (12, 4)
    assert ts.dtype == np.float64 and ti.dtype == np.int64 and tm.dtype == np.int32
    S2, _ = score_matrix(A, metric=metric)
    assert S2.shape == (12, 12)
    assert np.all((S >= 0) & (S <= 1 + 1e-12))


# ----------------------------------------------------------------------------------- the naive reference
@pytest.mark.parametrize("tol,unit", [(0.1, "da"), (0.02, "da"), (20.0, "ppm"), (200.0, "ppm")])
@pytest.mark.parametrize("mz_power,intensity_power", [(0.0, 1.0), (1.0, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("metric", COSINE_FAMILY)
def test_cosine_family_vs_reference(metric, tol, unit, mz_power, intensity_power):
    jitter = tol if unit == "da" else tol * 300e-6  # peaks scattered on the scale of the window
    A, B = messy_spectra(40, 11, jitter), messy_spectra(30, 12, jitter)
    tolerance = f"{tol}ppm" if unit == "ppm" else tol
    S, M = score_matrix(A, B, metric, tolerance, mz_power, intensity_power)
    RS, RM = reference_matrix(metric, A, B, tol, unit, mz_power, intensity_power)
    assert np.abs(S - RS).max() <= 1e-12
    assert np.array_equal(M, RM)
    assert (RM > 1).sum() > 100  # many matched peaks per pair ...
    # ... and greedy conflicts (candidate pairs that had to be rejected) in many of them
    conflicts = 0
    for i in range(len(A)):
        ma, ia, _ = peaks_of(A, i)
        for j in range(len(B)):
            mb, ib, _ = peaks_of(B, j)
            conflicts += len(ref.collect_pairs(ma, ia, mb, ib, tol, unit)) > ref.cosine(ma, ia, mb, ib, tol, unit)[1]
    assert conflicts > 50


def profile_spectra(n: int, seed: int) -> Spectra:
    """Profile-like spectra: runs of peaks 0.01-0.03 Da apart (tens of candidate pairs per peak at
    0.1 Da) with monotone or flat intensity ramps -- long chains of conflicts, where the matching needs
    many locally-dominant rounds or the heap fallback -- plus a far-out peak that widens the bins."""
    rng = np.random.default_rng(seed)
    mzs, ints, pmz = [], [], []
    for i in range(n):
        start = 100.0 + rng.integers(0, 3) * 0.013
        m = start + np.cumsum(rng.uniform(0.01, 0.03, int(rng.integers(20, 120))))
        ramp = np.arange(m.size, dtype=float) + 1.0
        it = [ramp, ramp[::-1], np.ones(m.size), np.minimum(ramp, ramp[::-1])][i % 4]
        if i % 5 == 0:
            m, it = np.append(m, 25000.0 + i), np.append(it, 3.0)
        mzs.append(m)
        ints.append(it.astype(np.float32))
        pmz.append(400.0 + (i % 3) * 0.5)
    return Spectra.from_arrays(mzs, ints, precursor_mz=pmz)


@pytest.mark.parametrize("metric", ["cosine", "modified_cosine"])
def test_dense_conflicts_vs_reference(metric):
    """Long monotone conflict chains and exact ties: the round-based matching (and its heap fallback)
    must pick exactly the pairs of matchms' sort-then-take greedy."""
    A, B = profile_spectra(12, 1), profile_spectra(10, 2)
    S, M = score_matrix(A, B, metric, 0.1)
    RS, RM = reference_matrix(metric, A, B, 0.1)
    assert np.abs(S - RS).max() <= 1e-12
    assert np.array_equal(M, RM)
    # the same pairs scored in a scrambled order (grouped by row inside the kernel)
    rng = np.random.default_rng(3)
    ia, ib = rng.integers(0, len(A), 300), rng.integers(0, len(B), 300)
    s, m = score_pairs(A[ia], B[ib], metric, 0.1)
    assert np.array_equal(s, S[ia, ib]) and np.array_equal(m, M[ia, ib])


def test_pair_list_larger_than_scratch_grows():
    """Two 150-peak clusters inside one tolerance give 22,500 candidate pairs, far beyond the 4,096-pair
    per-thread scratch: the buffers grow and the pair is scored again, exactly."""
    rng = np.random.default_rng(5)
    m1 = np.sort(200.0 + rng.uniform(0, 0.05, 150))
    m2 = np.sort(200.0 + rng.uniform(0, 0.05, 150))
    sp = Spectra.from_arrays([m1, m2, m1[:3]], [rng.uniform(1, 9, 150).astype(np.float32),
                                                 rng.uniform(1, 9, 150).astype(np.float32),
                                                 np.ones(3, np.float32)], precursor_mz=[300.0, 300.0, 300.05])
    for metric in ("cosine", "modified_cosine"):
        S, M = score_matrix(sp, sp, metric, 0.1)
        RS, RM = reference_matrix(metric, sp, sp, 0.1)
        assert np.abs(S - RS).max() <= 1e-12 and np.array_equal(M, RM)
        assert M[0, 1] == 150


@pytest.mark.parametrize("metric,peer", [("cosine", "CosineGreedy"), ("modified_cosine", "ModifiedCosineGreedy"),
                                         ("neutral_loss_cosine", "NeutralLossesCosine")])
def test_many_peak_spectra_grow_scratch_to_need(metric, peer):
    """Two 25,000-peak spectra (shifted precursors: modified cosine scans twice) hold 25,000-50,000
    candidate pairs: the scratch grows to that count, not to the 25,000 x 25,000 x 2 worst case (50 GB,
    which raised MemoryError). Scores and matches as matchms's."""
    similarity = pytest.importorskip("matchms.similarity")
    from matchms import Spectrum
    rng = np.random.default_rng(11)
    mz = 50.0 + 0.05 * np.arange(25000)
    it = rng.uniform(1, 9, mz.size)
    sp = Spectra.from_arrays([mz, mz + 0.01], [it, it], precursor_mz=[1301.0, 1301.5])
    s, m = score_pairs(sp[[0, 0]], sp[[0, 1]], metric, 0.02)
    assert s[0] == pytest.approx(1.0, abs=1e-9) and m[0] == 25000
    a = Spectrum(mz=mz, intensities=it, metadata={"precursor_mz": 1301.0})
    b = Spectrum(mz=mz + 0.01, intensities=it, metadata={"precursor_mz": 1301.5})
    want = getattr(similarity, peer)(tolerance=0.02).pair(a, b)
    assert s[1] == pytest.approx(float(want["score"]), abs=1e-9) and m[1] == int(want["matches"]) > 20000


def test_pair_scratch_grows_to_the_pairs_counted():
    """The kernel itself, from a 16-pair scratch: the first scan overflows, the shifted second one goes on
    counting, and the buffers grow to the count (at most doubled), not to peaks x peaks."""
    from fastspec.kernels import matching as mk

    mz = 50.0 + 0.05 * np.arange(3000)
    sp = Spectra.from_arrays([mz, mz + 0.01], [np.ones(3000), np.ones(3000)], precursor_mz=[200.0, 200.5])
    p = prepare(sp, "modified_cosine", 0.02)
    off, pos, w, norm, pmz = p.kernel_args()
    inv_w = mk.bin_inverse(pos, 0.02, 0.0)
    out_s, out_m = np.zeros(1), np.zeros(1, np.int32)
    buf = mk.new_buffers(3000, 3000, 16)
    buf = mk.score_row(mk.MODIFIED_COSINE, 0, np.array([1]), 0, 1, False, off, pos, w, norm, pmz, off, pos, w, norm,
                       pmz, 0.02, 0.0, inv_w, buf, out_s, out_m)
    want_s, want_m = ref.modified_cosine(mz, np.ones(3000), 200.0, mz + 0.01, np.ones(3000), 200.5, 0.02)
    assert out_s[0] == pytest.approx(want_s, abs=1e-12) and out_m[0] == want_m > 2900
    # ~6,000 pairs, ~3,000 per scan (peaks at the precursor and above are dropped)
    assert 5900 <= buf[0].shape[1] <= 12000 and buf[1].shape[0] == buf[0].shape[1]


@pytest.mark.parametrize("opts", [
    {"bin_width": 0.1}, {"bin_width": 1.0, "max_mz": 400.0}, {"bin_width": 0.5, "base_peak": 100.0},
    {"bin_width": 0.25, "precursor_peak": 50.0}, {"preset": "khoo2026"}])
@pytest.mark.parametrize("mz_power,intensity_power", [(0.0, 1.0), (1.0, 0.5)])
def test_binned_vs_reference(opts, mz_power, intensity_power):
    A, B = messy_spectra(30, 21), messy_spectra(25, 22)
    S, M = score_matrix(A, B, "binned_cosine", None, mz_power, intensity_power, **opts)
    RS, RM = reference_matrix("binned_cosine", A, B, opts.get("bin_width", 0.1), "da", mz_power, intensity_power,
                              **{k: v for k, v in opts.items() if k != "bin_width"}, bin_width=opts.get("bin_width", 0.1))
    assert np.abs(S - RS).max() <= 1e-12
    assert np.array_equal(M, RM)


def test_binned_bin_width_defaults_to_tolerance():
    A = messy_spectra(20, 3)
    assert np.array_equal(score_matrix(A, None, "binned_cosine", 0.5)[0],
                          score_matrix(A, None, "binned_cosine", 0.1, bin_width=0.5)[0])
    with pytest.raises(ParameterError):
        score_matrix(A, None, "binned_cosine", "10ppm")  # a ppm tolerance is no bin width
    S, _ = score_matrix(A, None, "binned_cosine", "10ppm", bin_width=0.5)  # unless one is given
    assert S.shape == (20, 20)


@pytest.mark.parametrize("tol", [0.02, 0.05, "10ppm", "50ppm"])
@pytest.mark.parametrize("metric", ENTROPY)
def test_entropy_vs_reference(metric, tol):
    """clean=False: the pure walk on given peaks (float32 in fastspec, float64 in the reference)."""
    ppm = float(tol[:-3]) if isinstance(tol, str) else None
    A = clean_spectra(40, 31, tol_da=0.02 if ppm is None else 0, ppm=ppm)
    B = clean_spectra(30, 32, tol_da=0.02 if ppm is None else 0, ppm=ppm)
    S, M = score_matrix(A, B, metric, tol, clean=False)
    RS, RM = reference_matrix(metric, A, B, ppm if ppm else tol, "ppm" if ppm else "da")
    assert np.abs(S - RS).max() <= 2e-6
    assert np.array_equal(M, RM)
    assert (RM > 2).sum() > 50


@pytest.mark.parametrize("metric", ENTROPY)
def test_entropy_flash_windows_vs_reference(metric):
    """flash=True: FlashEntropySearch's float32 windows. Peaks written 0.0200 apart (0.020004 in float32)
    match there and not in the pair function; elsewhere both agree with the naive walk."""
    a = Spectra.from_arrays([[100.0, 149.0424, 300.0]], [[1.0, 2.0, 3.0]])
    b = Spectra.from_arrays([[100.0, 149.0224, 300.0]], [[1.0, 2.0, 3.0]])
    s_pair, m_pair = score_pairs(a, b, metric, 0.02, clean=False)
    s_flash, m_flash = score_pairs(a, b, metric, 0.02, clean=False, flash=True)
    assert (m_pair[0], m_flash[0]) == (2, 3) and abs(s_flash[0] - 1.0) <= 1e-6 and s_pair[0] < 0.9
    rng = np.random.default_rng(5)
    mzs = [np.float32(np.sort(rng.choice(np.arange(60.0, 600.0, 0.07), 12, replace=False))).astype(np.float64)
           for _ in range(40)]
    # partners exactly 0.02 (in float64) away, either side, and some just inside / outside
    shifted = [m + rng.choice([-0.02, 0.02, 0.0199, 0.0201, 0.0], m.shape[0]) for m in mzs]
    ints = [rng.uniform(1, 100, 12).astype(np.float32) for _ in range(40)]
    A = Spectra.from_arrays(mzs, ints)
    B = Spectra.from_arrays([np.float32(m).astype(np.float64) for m in shifted], ints)
    for flash in (False, True):
        S, M = score_matrix(A, B, metric, 0.02, clean=False, flash=flash)
        RS, RM = reference_matrix(metric, A, B, 0.02, "da", flash=flash)
        assert np.abs(S - RS).max() <= 2e-6, flash
        assert np.array_equal(M, RM), flash
    with pytest.raises(ParameterError):
        score_pairs(a, b, metric, "10ppm", flash=True)
    with pytest.raises(ParameterError):
        score_pairs(a, b, "cosine", 0.02, flash=True)


def test_entropy_clean_flag_changes_nothing_on_clean_input():
    """Spectra that ms_entropy's cleaning leaves alone (peaks > 2 x tolerance apart, none below 1% of the
    base peak) score the same with clean=True and clean=False."""
    A = clean_spectra(30, 41)
    ok = np.array([A[i].intensity.min() >= 0.01 * A[i].intensity.max() for i in range(len(A))])
    assert ok.sum() > 10
    A = A[np.flatnonzero(ok)]
    for metric in ENTROPY:
        s1, m1 = score_matrix(A, None, metric, 0.02, clean=True)
        s2, m2 = score_matrix(A, None, metric, 0.02, clean=False)
        assert np.abs(s1 - s2).max() <= 1e-6 and np.array_equal(m1, m2)


# ----------------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("metric", ALL)
@pytest.mark.parametrize("k", [1, 5, 200])
def test_topk_equals_sorted_dense(real, metric, k):
    S, M = score_matrix(real, None, metric)
    ts, ti, tm = score_matrix(real, None, metric, k=k)
    for i in range(len(real)):
        rs, ri, rm = ref.topk(S[i], M[i], k)
        assert np.array_equal(ti[i], ri), i
        assert np.array_equal(ts[i], rs) and np.array_equal(tm[i], rm)


@pytest.mark.parametrize("min_matches,min_score", [(2, -np.inf), (0, 0.3), (3, 0.5), (1, 0.0)])
@pytest.mark.parametrize("metric", ["cosine", "modified_cosine", "entropy", "binned_cosine"])
def test_topk_filters(real, metric, min_matches, min_score):
    S, M = score_matrix(real, None, metric)
    ts, ti, tm = score_matrix(real, None, metric, k=7, min_matches=min_matches, min_score=min_score)
    for i in range(len(real)):
        rs, ri, rm = ref.topk(S[i], M[i], 7, min_matches, min_score)
        assert np.array_equal(ti[i], ri) and np.array_equal(ts[i], rs) and np.array_equal(tm[i], rm)
    if metric == "cosine" and min_matches == 2:
        # binned-cosine options on another metric: refused (cosine at 0.1 Da was scored silently)
        for kw in (dict(preset="khoo2026"), dict(bin_width=0.5), dict(max_mz=1000.0)):
            with pytest.raises(ParameterError, match="binned_cosine"):
                score_matrix(real, None, metric, **kw)
        # switches of other metrics turned off: refused (they did nothing here)
        for kw, what in ((dict(clean=False), "entropy"), (dict(ignore_peaks_above_precursor=False), "neutral_loss")):
            with pytest.raises(ParameterError, match=what):
                score_matrix(real, None, metric, **kw)
    if metric == "cosine" and min_matches == 2:  # filters without k, or not numbers: refused, not ignored
        for kw in (dict(min_matches=2), dict(min_score=0.5), dict(k=3, min_matches="x"), dict(k=3, min_score=np.nan),
                   dict(k=3, min_matches=-1)):
            with pytest.raises(ParameterError):
                score_matrix(real, None, metric, **kw)


@pytest.mark.parametrize("metric", ["cosine", "modified_cosine", "entropy", "binned_cosine"])
def test_nan_peaks_are_left_out_by_every_metric(metric):
    """A NaN m/z or intensity: the score of the spectrum without that peak, whatever the metric (cosine
    zeroed the whole pair, binned cosine counted the peak as matched, NaN m/z stayed in cosine's norm)."""
    a = Spectra.from_arrays([[100.0, 150.0, 200.0, 250.0]], [[1.0, np.nan, 3.0, 2.0]], precursor_mz=[300.0])
    b = Spectra.from_arrays([[100.0, 150.0, 200.0, np.nan]], [[2.0, 1.0, 3.0, 5.0]], precursor_mz=[300.0])
    a0 = Spectra.from_arrays([[100.0, 200.0, 250.0]], [[1.0, 3.0, 2.0]], precursor_mz=[300.0])
    b0 = Spectra.from_arrays([[100.0, 150.0, 200.0]], [[2.0, 1.0, 3.0]], precursor_mz=[300.0])
    s, m = score_pairs(a, b, metric, tolerance=0.02)
    s0, m0 = score_pairs(a0, b0, metric, tolerance=0.02)
    assert np.isfinite(s).all() and s == pytest.approx(s0, abs=1e-12) and (m == m0).all()


def test_topk_ties_lowest_index():
    sp = messy_spectra(5, 9)
    i = next(t for t in range(5) if sp.n_peaks[t] > 0)
    dup = sp.take(np.array([i] * 6))
    ts, ti, _ = score_matrix(dup, None, "cosine", k=3)
    assert np.array_equal(ti, np.tile([0, 1, 2], (6, 1)))
    assert np.allclose(ts, 1.0)


@pytest.mark.parametrize("metric", ALL)
def test_topk_candidates_vs_brute_force(real, metric):
    rng = np.random.default_rng(5)
    q = prepare(real[np.arange(40)], metric)
    lib = prepare(real, metric)
    S, M = score_matrix(q, lib)
    lists = [rng.permutation(rng.choice(len(real), size=int(rng.integers(0, 30)), replace=False))
             for _ in range(len(q))]
    lists[3] = np.zeros(0, np.int64)
    off = np.zeros(len(q) + 1, np.int64)
    np.cumsum([len(c) for c in lists], out=off[1:])
    ids = np.concatenate(lists).astype(np.int64)
    for k, mm, ms in [(4, 0, -np.inf), (10, 2, 0.1)]:
        ts, ti, tm = topk_candidates(q, lib, off, ids, k, metric=metric, min_matches=mm, min_score=ms)
        for r, cand in enumerate(lists):
            cand = np.sort(cand)  # ties go to the lowest *library* index, not the first listed
            rs, ri, rm = ref.topk(S[r, cand], M[r, cand], k, mm, ms)
            ri = [int(cand[t]) if t >= 0 else -1 for t in ri]
            assert np.array_equal(ti[r], ri) and np.array_equal(ts[r], rs) and np.array_equal(tm[r], rm)
        # the library stored in reverse order, labelled with the original indices: the same hits and ties
        n = len(real)
        rev = np.arange(n - 1, -1, -1, dtype=np.int64)
        ls, li, lm = topk_candidates(q, lib.take(rev), off, n - 1 - ids, k, min_matches=mm, min_score=ms, labels=rev)
        assert np.array_equal(li, ti) and np.array_equal(ls, ts) and np.array_equal(lm, tm)
    with pytest.raises(ParameterError):
        topk_candidates(q, lib, off, ids, 3, labels=np.arange(3))
    with pytest.raises(ParameterError):
        topk_candidates(q, lib, off[:-1], ids, 3)
    with pytest.raises(ParameterError):
        topk_candidates(q, lib, off, ids + len(real), 3)
    other = "cosine" if metric != "cosine" else "entropy"
    with pytest.raises(ParameterError):
        topk_candidates(q, lib, off, ids, 3, metric=other)
    with pytest.raises(ParameterError):
        topk_candidates(q, prepare(real, other), off, ids, 3)


@pytest.mark.parametrize("metric", ["cosine", "modified_cosine", "entropy"])
def test_topk_candidates_bounds_stop_early(real, metric):
    """With upper bounds in non-increasing order a query stops once its k-th score beats the next bound:
    the same hits as scoring every candidate, bounds tight (ties with the k-th score) or loose; and
    scoring does stop (bounds that lie after the first chunk change the hits)."""
    from fastspec.kernels.topk import _BOUND_CHUNK

    rng = np.random.default_rng(11)
    q = prepare(real[np.arange(25)], metric)
    lib = prepare(real, metric)
    lists = [rng.choice(len(real), size=int(rng.integers(0, len(real))), replace=False) for _ in range(len(q))]
    off = np.zeros(len(q) + 1, np.int64)
    np.cumsum([len(c) for c in lists], out=off[1:])
    ids = np.concatenate(lists).astype(np.int64)
    exact, _ = score_pairs(q.take(np.repeat(np.arange(len(q)), np.diff(off))), lib.take(ids))
    for k in (1, 5):
        want = topk_candidates(q, lib, off, ids, k, min_matches=1)
        for slack in (np.zeros(ids.shape[0]), rng.uniform(0, 0.3, ids.shape[0]) * (rng.random(ids.shape[0]) < 0.5)):
            b = exact + slack
            order = np.concatenate([off[r] + np.argsort(-b[off[r]:off[r + 1]], kind="stable") for r in range(len(q))])
            got = topk_candidates(q, lib, off, ids[order], k, min_matches=1, cand_bounds=b[order])
            for w, g in zip(want, got):
                assert np.array_equal(w, g)
        # lying bounds: after the first chunk nothing may beat a full list, so only the first chunk counts
        lie = np.where(np.arange(ids.shape[0]) - np.repeat(off[:-1], np.diff(off)) < _BOUND_CHUNK, 2.0, -1.0)
        got = topk_candidates(q, lib, off, ids, k, min_matches=1, cand_bounds=lie)
        head = np.minimum(np.diff(off), _BOUND_CHUNK)
        hoff = np.zeros(len(q) + 1, np.int64)
        np.cumsum(head, out=hoff[1:])
        hid = np.concatenate([ids[off[r]:off[r] + head[r]] for r in range(len(q))]).astype(np.int64)
        first = topk_candidates(q, lib, hoff, hid, k, min_matches=1)
        full = (first[1][:, -1] >= 0) & (np.diff(off) > _BOUND_CHUNK)
        assert full.any() and not np.array_equal(want[1][full], got[1][full])
        assert np.array_equal(got[1][full], first[1][full])
    with pytest.raises(ParameterError):
        topk_candidates(q, lib, off, ids, 3, cand_bounds=np.ones(ids.shape[0] + 1))
    r = int(np.argmax(np.diff(off) > 1))
    rising = np.zeros(ids.shape[0])
    rising[off[r] + 1] = 1.0
    with pytest.raises(ParameterError, match="increase"):
        topk_candidates(q, lib, off, ids, 3, cand_bounds=rising)
    # each query's list may start above where the previous one ended
    topk_candidates(q, lib, off, ids, 3, cand_bounds=-np.arange(ids.shape[0]) + np.repeat(off[:-1], np.diff(off)) * 2.0)


def test_group_candidates():
    rng = np.random.default_rng(3)
    lk = rng.integers(-2, 6, 50)
    qk = rng.integers(-2, 8, 20)
    mask = rng.random(50) < 0.7
    for m in (None, mask):
        off, ids = group_candidates(qk, lk, m)
        assert off.dtype == np.int64 and ids.dtype == np.int64 and off.shape == (21,)
        for r in range(20):
            want = [j for j in range(50) if qk[r] >= 0 and lk[j] == qk[r] and (m is None or m[j])]
            assert ids[off[r]:off[r + 1]].tolist() == want
    off, ids = group_candidates(np.zeros(0, np.int64), lk)
    assert off.tolist() == [0] and ids.size == 0


def test_key_groups_listed_in_bounded_runs():
    """KeyGroups.chunks lists every query once, in order, runs of at most max_pairs candidates (a query with
    more alone), each run's lists equal to group_candidates' for those queries."""
    from fastspec.similarity import KeyGroups

    rng = np.random.default_rng(5)
    lk, qk = rng.integers(-1, 4, 200), rng.integers(-1, 5, 60)
    off, ids = group_candidates(qk, lk)
    g = KeyGroups(qk, lk)
    np.testing.assert_array_equal(g.lengths, np.diff(off))
    for max_pairs in (1, 7, 100, 10**9):
        got, seen = [], 0
        for start, stop, o, c in g.chunks(max_pairs):
            assert start == seen and stop > start
            assert o[-1] <= max_pairs or stop == start + 1
            got.append(c)
            np.testing.assert_array_equal(c, ids[off[start]:off[stop]])
            seen = stop
        assert seen == 60 and np.array_equal(np.concatenate(got), ids)


# ----------------------------------------------------------------------------------- threads, take
@pytest.mark.parametrize("metric", ALL)
def test_threads_identical(real, metric):
    one = score_matrix(real, None, metric, threads=1)
    two = score_matrix(real, None, metric, threads=2)
    assert all(np.array_equal(x, y) for x, y in zip(one, two))
    one = score_matrix(real, None, metric, k=5, threads=1)
    two = score_matrix(real, None, metric, k=5, threads=2)
    assert all(np.array_equal(x, y) for x, y in zip(one, two))
    idx = np.arange(len(real))[::-1]
    one = score_pairs(real, real.take(idx), metric, threads=1)
    two = score_pairs(real, real.take(idx), metric, threads=2)
    assert all(np.array_equal(x, y) for x, y in zip(one, two))


@pytest.mark.parametrize("metric", ALL)
def test_prepared_take(real, metric):
    p = prepare(real, metric)
    assert isinstance(p, Prepared) and len(p) == len(real) and p.metric == metric
    assert prepare(p, metric) is p
    rows = np.array([5, 0, 5, -1, 17])
    t = p.take(rows)
    assert len(t) == 5
    direct = prepare(real.take(np.where(rows < 0, rows + len(real), rows)), metric)
    assert all(np.array_equal(x, y) for x, y in zip(score_matrix(t, p), score_matrix(direct, p)))
    assert len(p.take(np.zeros(0, np.int64))) == 0
    with pytest.raises(ParameterError):
        p.take(np.array([len(real)]))
    with pytest.raises(ParameterError):
        p.take(np.zeros((2, 2), np.int64))


# ----------------------------------------------------------------------------------- bad parameters
def test_parameter_errors():
    A = messy_spectra(6, 4)
    with pytest.raises(ParameterError):
        score_pairs(A, A, "tanimoto")
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", "10 parsecs")
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", -0.1)
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", k=0)
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", k="many")
    with pytest.raises(ParameterError):
        score_pairs(A, A[np.arange(5)], "cosine")
    with pytest.raises(ParameterError):
        score_matrix(A, None, "binned_cosine", preset="khoo2099")
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", bin_widht=0.1)  # unknown keyword
    with pytest.raises(ParameterError):
        score_matrix(A, None, "cosine", mz_power=float("nan"))
    with pytest.raises(ParameterError):
        score_matrix(A, None, "binned_cosine", bin_width=0.0)
    with pytest.raises(ParameterError):
        score_matrix(A, None, "entropy", 0.0)
    with pytest.raises(ParameterError):
        prepare([1, 2, 3], "cosine")
    with pytest.raises(ParameterError):  # sides prepared differently
        score_matrix(prepare(A, "cosine", 0.1), prepare(A, "cosine", 0.2))
    assert score_matrix(A, None, "Modified-Cosine")[0].shape == (6, 6)  # aliases and case are accepted


# ----------------------------------------------------------------------------------- edge cases
def test_nan_precursor():
    A = messy_spectra(40, 8)
    nan_a = np.isnan(A.precursor_mz)
    assert nan_a.any() and (~nan_a).any()
    cos, cm = score_matrix(A, None, "cosine")
    mod, mm = score_matrix(A, None, "modified_cosine")
    nl, nm = score_matrix(A, None, "neutral_loss_cosine")
    either = nan_a[:, None] | nan_a[None, :]
    assert np.array_equal(mod[either], cos[either]) and np.array_equal(mm[either], cm[either])
    assert np.all(nl[either] == 0) and np.all(nm[either] == 0)
    assert (mod[~either] != cos[~either]).any()  # elsewhere the shift matters


@pytest.mark.parametrize("metric", ALL)
def test_empty_spectra_score_zero(metric):
    A = Spectra.from_arrays([[], [100.0, 200.0], []], [[], [5.0, 10.0], []], precursor_mz=[300.0, 300.0, np.nan])
    S, M = score_matrix(A, None, metric)
    assert S[1, 1] == pytest.approx(1.0, abs=1e-6)
    S[1, 1] = 0
    M[1, 1] = 0
    assert not S.any() and not M.any()
    ts, ti, tm = score_matrix(A, None, metric, k=2, min_matches=1)
    assert ti.tolist() == [[-1, -1], [1, -1], [-1, -1]]


@pytest.mark.parametrize("metric", ALL)
def test_zero_spectra(metric):
    assert score_matrix(Spectra.empty(), None, metric)[0].shape == (0, 0)
    assert score_pairs(Spectra.empty(), Spectra.empty(), metric)[0].shape == (0,)
    A = messy_spectra(3, 1)
    assert score_matrix(A, Spectra.empty(), metric, k=2)[1].shape == (3, 2)


def test_modified_cosine_shift_sign_and_fallback():
    # b's fragments are a's shifted by -30 Da; its precursor is 30 Da lower
    A = Spectra.from_arrays([[100.0, 150.0, 250.0]], [[10.0, 20.0, 30.0]], precursor_mz=[400.0])
    B = Spectra.from_arrays([[100.0, 120.0, 220.0]], [[10.0, 20.0, 30.0]], precursor_mz=[370.0])
    s, m = score_pairs(A, B, "modified_cosine", 0.01)
    assert s[0] == pytest.approx(1.0) and m[0] == 3
    s, m = score_pairs(A, B, "cosine", 0.01)
    assert m[0] == 1
    s, m = score_pairs(A, B, "neutral_loss_cosine", 0.01)
    assert m[0] == 2  # 150 -> 120 and 250 -> 220 (same losses); 100 vs 100 differ in loss
    # precursors within the tolerance: plain cosine (no shifted pairs even though the shift is 0.005)
    B2 = Spectra.from_arrays([[100.0, 120.0, 220.0]], [[10.0, 20.0, 30.0]], precursor_mz=[399.995])
    assert np.array_equal(score_pairs(A, B2, "modified_cosine", 0.01)[1], score_pairs(A, B2, "cosine", 0.01)[1])
    # ppm: the fallback window is 10 ppm of the precursor (0.004 Da at 400); fragment windows 0.01 Da at 1000
    A3 = Spectra.from_arrays([[1000.0]], [[10.0]], precursor_mz=[400.0])
    B3 = Spectra.from_arrays([[999.988]], [[10.0]], precursor_mz=[399.997])  # shift 0.003: cosine, no match
    assert score_pairs(A3, B3, "modified_cosine", "10ppm")[1][0] == 0
    B4 = Spectra.from_arrays([[999.988]], [[10.0]], precursor_mz=[399.99])  # shift 0.01: 999.998 matches
    assert score_pairs(A3, B4, "modified_cosine", "10ppm")[1][0] == 1
    assert score_pairs(A3, B4, "cosine", "10ppm")[1][0] == 0


def test_khoo2026_vs_numpy(real):
    """The preset against a plain dense numpy implementation (8000 bins of 0.25 Da below 2000)."""
    extra = Spectra.from_arrays([[50.0, 1999.9, 2000.0, 2500.0], [0.1, 1999.76], [1000.0]],
                                [[1.0, 3.0, 50.0, 7.0], [2.0, 2.0], [5.0]], precursor_mz=[2100.0, 1999.8, np.nan])
    sp = Spectra.concat([real, extra])

    def dense(s):
        X = np.zeros((len(s), 8000))
        for i in range(len(s)):
            lo, hi = s.offsets[i], s.offsets[i + 1]
            mz, it = s.mz[lo:hi], s.intensity[lo:hi].astype(np.float64)
            if it.size and it.max() > 0:
                it = it / it.max() * 100.0
            b = np.floor(mz / 0.25).astype(np.int64)
            ok = (b >= 0) & (b < 8000)
            np.add.at(X[i], b[ok], it[ok])
            p = s.precursor_mz[i]
            if np.isfinite(p) and 0 <= math.floor(p / 0.25) < 8000:
                X[i, math.floor(p / 0.25)] += 100.0
        return X

    X = dense(sp)
    nrm = np.linalg.norm(X, axis=1)
    want = (X @ X.T) / np.where(np.outer(nrm, nrm) > 0, np.outer(nrm, nrm), 1.0)
    got, _ = score_matrix(sp, None, "binned_cosine", preset="khoo2026")
    assert np.abs(got - want).max() <= 1e-12
    got2, _ = score_matrix(sp, None, "binned", bin_width=0.25, max_mz=2000.0, base_peak=100.0, precursor_peak=100.0)
    assert np.array_equal(got, got2)
    assert prepare(sp, "binned_cosine", preset="khoo2026").params["preset"] == "khoo2026"


def test_matrix_arguments_are_checked():
    """k and threads are checked as library search checks them: no silent truncation or clamping, and
    no (n, 10**9) padding to allocate."""
    s = Spectra.from_arrays([[100.0, 150.0], [100.0, 120.0], [90.0]], [[1.0, 2.0], [1.0, 1.0], [3.0]])
    for kw in ({"k": 2.7}, {"k": True}, {"k": "3"}, {"k": 0}, {"k": 10**9}, {"threads": 0}, {"threads": -1},
               {"threads": "2"}, {"k": 2, "min_matches": 2.7}, {"k": 2, "min_matches": "3"},
               {"k": 2, "min_matches": True}, {"metric": "binned_cosine", "max_mz": -5.0},
               {"metric": "binned_cosine", "base_peak": -1.0}, {"metric": "binned_cosine", "precursor_peak": -1.0}):
        with pytest.raises(ParameterError):
            score_matrix(s, s, **kw)
    for kw in ({"threads": 0}, {"threads": 1.5}):
        with pytest.raises(ParameterError):
            score_pairs(s, s, **kw)
    score_matrix(s, s, k=2, min_matches=np.int64(1), metric="binned_cosine", precursor_peak=0.0)
    _, idx, _ = score_matrix(s, s, k=np.int64(5))  # numpy integers are integers; past the columns: -1
    assert idx.shape == (3, 5) and (idx[:, 3:] == -1).all()


def test_pair_api_input_checks():
    """From an audit of the pair API: (n, 1) peak arrays are refused before the kernels (a numba typing
    error before); arguments that Prepared inputs would ignore are refused; binned cosine against a spectrum
    of zero norm is 0 with 0 matches, as every other metric gives."""
    from fastspec.errors import FastspecError

    with pytest.raises(FastspecError, match="1-D"):
        Spectra(np.array([0, 2]), np.array([[100.0], [200.0]]), np.array([[1.0], [2.0]]))
    with pytest.raises(FastspecError, match="one value per spectrum"):
        Spectra.from_arrays([[100.0]], [[1.0]], precursor_mz=300.0)
    a = Spectra.from_arrays([[100.0, 150.0, 200.0]], [[1.0, 2.0, 3.0]])
    b = Spectra.from_arrays([[100.05, 150.3, 200.0]], [[1.0, 2.0, 3.0]])
    pa, pb = prepare(a, "cosine", 0.1), prepare(b, "cosine", 0.1)
    assert score_pairs(pa, pb)[0][0] == score_pairs(pa, pb, "cosine", 0.1)[0][0] == score_pairs(a, b, tolerance=0.1)[0][0]
    for args in (("entropy", 0.5), ("cosine", 0.5)):
        with pytest.raises(ParameterError, match="prepared with"):
            score_pairs(pa, pb, *args)
    with pytest.raises(ParameterError, match="intensity_power"):
        score_matrix(pa, pb, intensity_power=0.5)
    ea, eb = prepare(a, "entropy", 0.1), prepare(b, "entropy", 0.1)  # flags, options of another metric
    for kw in ({"neutral_loss": True}, {"flash": True}):
        with pytest.raises(ParameterError, match="prepared with"):
            score_pairs(ea, eb, **kw)
    with pytest.raises(ParameterError, match="clean"):
        score_pairs(pa, pb, clean=False)
    assert score_pairs(pa, pb, tolerance=np.float32(0.1))[0][0] == score_pairs(pa, pb)[0][0]  # the same 0.1
    with pytest.raises(ParameterError, match="matchms spectra"):  # neither Spectra nor matchms spectra
        score_pairs([object()], [object()])
    with pytest.raises(FastspecError, match="matchms.Spectrum"):
        Spectra.from_matchms([1])
    zero = Spectra.from_arrays([[100.0, 200.0]], [[0.0, 0.0]])
    one = Spectra.from_arrays([[100.0, 200.0]], [[1.0, 1.0]])
    for metric in ("binned_cosine", "cosine"):
        s, m = score_pairs(zero, one, metric, 0.1)
        assert (s[0], m[0]) == (0.0, 0), metric


def test_invalid_peaks_in_memory_are_left_out_by_every_metric():
    """From an audit: a negative intensity given in memory was a negative weight for cosine (0.43 with 3
    matches), dropped by entropy and by library search, and a NaN weight under intensity_power 0.5 (the pair
    silently 0). Every metric now leaves out peaks with a negative intensity or an m/z of 0 or less, as
    search does: scores equal those of the spectrum without them."""
    a = Spectra.from_arrays([[100.0, 200.0, 300.0]], [[1.0, -2.0, 3.0]], precursor_mz=[400.0])
    bad_mz = Spectra(np.array([0, 4]), np.array([-5.0, 0.0, 100.0, 300.0]), np.array([9.0, 9.0, 1.0, 3.0]),
                     precursor_mz=np.array([400.0]))
    clean = Spectra.from_arrays([[100.0, 300.0]], [[1.0, 3.0]], precursor_mz=[400.0])
    b = Spectra.from_arrays([[100.0, 200.0, 300.0]], [[1.0, 2.0, 3.0]], precursor_mz=[400.0])
    for kw in ({"metric": "cosine"}, {"metric": "cosine", "intensity_power": 0.5}, {"metric": "modified_cosine"},
               {"metric": "neutral_loss_cosine"}, {"metric": "entropy"}, {"metric": "binned_cosine"}):
        want = score_pairs(clean, b, **kw)
        for x in (a, bad_mz):
            got = score_pairs(x, b, **kw)
            assert got[0][0] == pytest.approx(want[0][0], abs=1e-12) and got[1][0] == want[1][0], kw


def test_csr_offsets_past_the_arrays_are_refused():
    """From an audit: public CSR entry points took offsets past their arrays and read (peak_weights: wrote)
    outside them: a wrong score, or the process aborting on a corrupted heap."""
    from fastspec.kernels import fragment, peaks
    from fastspec.similarity import prepare_csr

    mz, it = np.array([100.0, 200.0, 100.0, 150.0, 300.0]), np.ones(5, np.float32)
    for off in (np.array([0, 2, 9]), np.array([0, 3, 2]), np.array([1, 5]), np.zeros((2, 2), np.int64)):
        n = max(np.shape(off)[0] - 1, 0)
        with pytest.raises(ParameterError, match="CSR peaks"):
            prepare_csr(off, mz, it, np.full(n, np.nan), "cosine")
        for call in (lambda: fragment.peak_weights(off, mz, it, "cosine"), lambda: fragment.min_peak_gaps(off, mz),
                     lambda: peaks.l2_norms_csr(off, it), lambda: peaks.top_peaks_mz(off, mz, it)):
            with pytest.raises(ParameterError, match="CSR peaks"):
                call()
    with pytest.raises(ParameterError, match="precursor_mz"):
        prepare_csr(np.array([0, 2, 5]), mz, it, np.full(3, np.nan), "cosine")
    assert peaks.l2_norms_csr(np.array([0, 2, 5]), it).tolist() == pytest.approx([2 ** 0.5, 3 ** 0.5])


def test_pair_api_takes_one_spectrum_and_refuses_ambiguous_names_and_text_flags():
    """From an audit: ``spectra[i]`` (a SpectrumView, which search takes) was refused by the pair API with
    advice that did not help; metric 'neutral_loss' silently meant matchms' neutral-loss cosine, which an
    ms_entropy user reads as its neutral-loss (entropy) search; ``clean="False"`` was taken as True."""
    s = Spectra.from_arrays([[100.0, 150.0], [100.0, 120.0]], [[1.0, 2.0], [1.0, 1.0]], precursor_mz=[300.0, 310.0])
    assert score_pairs(s[0], s[1:2])[0][0] == score_pairs(s[0:1], s[1:2])[0][0]
    with pytest.raises(ParameterError, match="ambiguous.*neutral_loss_cosine.*mode='neutral_loss'"):
        score_pairs(s, s, metric="neutral_loss")
    for kw in ({"clean": "False"}, {"flash": 1}, {"ignore_peaks_above_precursor": "no"}):
        with pytest.raises(ParameterError, match="True or False"):
            score_pairs(s, s, metric="entropy" if "clean" in kw or "flash" in kw else "neutral_loss_cosine", **kw)
    score_pairs(s, s, metric="entropy", clean=np.bool_(False))


def test_one_prepared_side_prepares_the_other_alike(real):
    """score_pairs(prepare(S, "entropy"), T) with the metric left out prepared T as cosine and refused the pair
    as a mismatch; the raw side now takes the prepared side's metric, tolerance and parameters."""
    from fastspec import similarity as sim

    s, t = real.take(np.arange(0, 20)), real.take(np.arange(20, 40))
    for metric, kw in (("entropy", {"clean": False}), ("modified_cosine", {"tolerance": 0.02}),
                       ("cosine", {"mz_power": 1.0, "intensity_power": 0.5}), ("binned_cosine", {"preset": "khoo2026"})):
        p = sim.prepare(s, metric, **kw)
        want = sim.score_pairs(s, t, metric, **kw)
        for got in (sim.score_pairs(p, t), sim.score_pairs(p, t, metric)):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(sim.score_pairs(t, p)[0], sim.score_pairs(t, s, metric, **kw)[0])
        np.testing.assert_array_equal(np.asarray(sim.score_matrix(p, t)[0]), np.asarray(sim.score_matrix(s, t, metric, **kw)[0]))
    with pytest.raises(ParameterError, match="not what the Prepared spectra were prepared with"):
        sim.score_pairs(sim.prepare(s, "entropy"), t, "cosine")
    # what a call gives is kept, not replaced by the prepared side's settings (a review): an explicit default
    # power, a flag set False, a None option
    with pytest.raises(ParameterError, match="mz_power=0"):
        sim.score_pairs(sim.prepare(s, "cosine", mz_power=1.0), t, "cosine", mz_power=0)
    for flag in ("hybrid", "flash"):
        with pytest.raises(ParameterError, match="same metric, tolerance and parameters"):
            sim.score_pairs(sim.prepare(s, "entropy", clean=False, **{flag: True}), t, "entropy", **{flag: False})
    with pytest.raises(ParameterError, match="clean"):
        sim.score_pairs(sim.prepare(s, "entropy"), t, "entropy", clean=None)


def test_numeric_strings_are_no_numbers(real):
    """score_pairs took mz_power="1" or bin_width="0.5" as numbers where Library.search refuses them: a string
    from a config file is a mistake in both now."""
    from fastspec import similarity as sim

    s = real.take(np.arange(5))
    for kw in ({"mz_power": "1"}, {"intensity_power": "0.5"}, {"intensity_power": True}):
        with pytest.raises(ParameterError, match="expected a number"):
            sim.score_pairs(s, s, "cosine", **kw)
    with pytest.raises(ParameterError, match="expected a number"):
        sim.score_pairs(s, s, "binned_cosine", bin_width="0.5")
