"""fastspec.kernels.entropy against ms_entropy 1.5.3 (its C back end) and a naive reference walk."""
from __future__ import annotations

import ctypes
import math

import numba
import numpy as np
import pytest

from fastspec.errors import ParameterError
from fastspec.kernels.entropy import clean_csr, entropy_pair, entropy_weight_csr, prepare_entropy

me = pytest.importorskip("ms_entropy")

F32 = np.float32
TOLERANCES = [(0.01, -1.0), (0.1, -1.0), (-1.0, 10.0)]  # (tol_da, tol_ppm) as given to ms_entropy


# ---------------------------------------------------------------------------------------- helpers
def _csr(spectra):
    """list of (mz, intensity) arrays -> CSR (offsets int64, mz float64, intensity float32)."""
    offsets = np.zeros(len(spectra) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(m) for m, _ in spectra])
    mz = np.concatenate([np.asarray(m, dtype=np.float64) for m, _ in spectra] or [np.zeros(0)])
    inten = np.concatenate([np.asarray(x, dtype=np.float32) for _, x in spectra] or [np.zeros(0, F32)])
    return offsets, mz, inten


def _peaks(offsets, mz, inten, i):
    """Spectrum ``i`` as ms_entropy wants it: (n, 2) float32."""
    s = slice(offsets[i], offsets[i + 1])
    return np.column_stack([mz[s], inten[s]]).astype(F32)


def _cleaned(offsets, mz, inten, i):
    s = slice(offsets[i], offsets[i + 1])
    return np.column_stack([mz[s].astype(F32), inten[s]])


@numba.njit(cache=False)
def _score_pairs(o, m, w, pairs, tol_da, tol_ppm):
    out = np.empty(pairs.shape[0])
    nm = np.empty(pairs.shape[0], dtype=np.int64)
    for k in range(pairs.shape[0]):
        i = pairs[k, 0]
        j = pairs[k, 1]
        out[k], nm[k] = entropy_pair(m, w, o[i], o[i + 1], m, w, o[j], o[j + 1], tol_da, tol_ppm)
    return out, nm


def _reference_walk(mz_a, w_a, mz_b, w_b, tol_da, tol_ppm):
    """Naive float32 transcription of the similarity walk: (score, n_matched)."""
    tol_da = F32(tol_da)
    sim = F32(0.0)
    n = a = b = 0
    while a < len(mz_a) and b < len(mz_b):
        delta = F32(mz_a[a]) - F32(mz_b[b])
        tol = F32(float(F32(tol_ppm) * F32(mz_a[a])) * 1e-6) if tol_ppm > 0 else tol_da
        if delta < -tol:
            a += 1
        elif delta > tol:
            b += 1
        else:
            pa, pb = F32(w_a[a]), F32(w_b[b])
            pab = F32(pa + pb)
            sim = F32(sim + F32(F32(pab * F32(math.log2(pab))) - F32(pa * F32(math.log2(pa)))
                                - F32(pb * F32(math.log2(pb)))))
            n += 1
            a += 1
            b += 1
    return float(min(max(sim / F32(2), F32(0)), F32(1))), n


def _c_weight():
    """ms_entropy's compiled ``apply_weight_to_intensity(float*, int)`` if the extension exports it."""
    try:
        from ms_entropy.spectra import entropy_cython
        lib = ctypes.CDLL(entropy_cython.__file__)
        fn = lib.apply_weight_to_intensity
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return fn


# ---------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def massbank(massbank_parquet):
    import fastspec

    spectra = fastspec.read(massbank_parquet)
    meta = spectra.metadata  # pyarrow Table
    ik = np.asarray(meta.column("inchikey14").to_pylist(), dtype=object)
    formula = np.asarray(meta.column("formula").to_pylist(), dtype=object)
    return spectra, ik, formula


def _group_pairs(keys, rng, n_pairs):
    """Random pairs (i != j) of spectra sharing a key."""
    groups = {}
    for i, k in enumerate(keys):
        if k:
            groups.setdefault(k, []).append(i)
    multi = [np.array(g) for g in groups.values() if len(g) > 1]
    picks = rng.integers(0, len(multi), n_pairs)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for r, g in enumerate(picks):
        out[r] = rng.choice(multi[g], 2, replace=False)
    return out


@pytest.fixture(scope="module")
def pairs(massbank):
    spectra, ik, formula = massbank
    rng = np.random.default_rng(20240611)
    n = len(spectra.offsets) - 1
    return np.concatenate([
        _group_pairs(ik, rng, 4000),
        _group_pairs(formula, rng, 3000),
        rng.integers(0, n, (3500, 2)),
    ])


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("tol_da,tol_ppm", TOLERANCES)
def test_similarity_parity_real_pairs(massbank, pairs, tol_da, tol_ppm, weighted):
    spectra = massbank[0]
    o, mz, inten = spectra.offsets, spectra.mz, spectra.intensity
    used = np.unique(pairs)
    peaks = {i: _peaks(o, mz, inten, i) for i in used}
    ref_fn = me.calculate_entropy_similarity if weighted else me.calculate_unweighted_entropy_similarity
    ref = np.array([ref_fn(peaks[i], peaks[j], ms2_tolerance_in_da=tol_da, ms2_tolerance_in_ppm=tol_ppm)
                    for i, j in pairs])

    po, pm, pw = prepare_entropy(o, mz, inten, tol_da=tol_da, tol_ppm=tol_ppm, weighted=weighted)
    got, n_matched = _score_pairs(po, pm, pw, pairs, F32(tol_da), F32(tol_ppm))
    diff = np.abs(got - ref)
    print(f"tol=({tol_da}, {tol_ppm}) weighted={weighted}: {len(pairs)} pairs, "
          f"{int((ref > 0).sum())} non-zero, max |diff| = {diff.max():.3g}, inexact = {int((diff > 0).sum())}")
    assert len(pairs) >= 10_000
    assert diff.max() <= 1e-6
    assert np.all((n_matched == 0) <= (got == 0))


def test_clean_parity_real(massbank):
    spectra = massbank[0]
    o, mz, inten, pmz = spectra.offsets, spectra.mz, spectra.intensity, spectra.precursor_mz
    sel = np.random.default_rng(7).choice(len(o) - 1, 4000, replace=False)
    sel.sort()
    sub = [(mz[o[i]:o[i + 1]], inten[o[i]:o[i + 1]]) for i in sel]
    so, smz, sint = _csr(sub)
    spmz = pmz[sel]
    cases = [
        dict(),
        dict(min_ms2_difference_in_da=-1.0, min_ms2_difference_in_ppm=20.0),
        dict(min_ms2_difference_in_da=0.2, noise_threshold=0.0, normalize_intensity=False),
        dict(max_peak_num=5),
        dict(min_mz=60.0, max_mz=300.0, max_peak_num=20, noise_threshold=0.05),
    ]
    for kw in cases:
        co, cm, ci = clean_csr(so, smz, sint, **kw)
        for k in range(len(sel)):
            ref = me.clean_spectrum(_peaks(so, smz, sint, k), **kw)
            got = _cleaned(co, cm, ci, k)
            assert got.shape == ref.shape, (kw, k)
            assert np.array_equal(got, ref), (kw, k)

    # precursor removal exactly as FlashEntropySearch.clean_spectrum_for_search
    search = me.FlashEntropySearch()
    co, cm, ci = clean_csr(so, smz, sint, spmz, precursor_ions_removal_da=1.6)
    for k in range(len(sel)):
        if not np.isfinite(spmz[k]):
            continue
        ref = search.clean_spectrum_for_search(float(spmz[k]), _peaks(so, smz, sint, k),
                                               precursor_ions_removal_da=1.6)
        assert np.array_equal(_cleaned(co, cm, ci, k), ref), k


def test_weight_parity_real(massbank):
    spectra = massbank[0]
    o, mz, inten = spectra.offsets, spectra.mz, spectra.intensity
    co, cm, ci = clean_csr(o[:3001], mz[:o[3000]], inten[:o[3000]])
    w = entropy_weight_csr(co, ci)
    c_fn = _c_weight()
    worst = 0.0
    for i in range(3000):
        peaks = _cleaned(co, cm, ci, i)
        got = w[co[i]:co[i + 1]]
        ref = me.apply_weight_to_intensity(peaks)[:, 1]  # numpy version: pairwise sums
        if len(got):
            worst = max(worst, float(np.abs(got - ref).max()))
        if c_fn is not None:
            buf = np.ascontiguousarray(peaks.copy())
            c_fn(buf.ctypes.data, len(buf))
            assert np.array_equal(got, buf[:, 1]), i
    assert worst <= 1e-6


# ---------------------------------------------------------------------------------------- synthetic
def _random_spectrum(rng, n, lo=50.0, hi=500.0):
    mz = np.sort(rng.uniform(lo, hi, n))
    return mz, rng.lognormal(0.0, 1.5, n).astype(F32)


def test_walk_matches_reference():
    rng = np.random.default_rng(3)
    specs = []
    for _ in range(300):
        mz, x = _random_spectrum(rng, int(rng.integers(0, 25)), 100.0, 110.0)  # dense: many matches
        specs.append((mz, x))
    o, mz, x = _csr(specs)
    for tol_da, tol_ppm in [(0.05, -1.0), (0.2, -1.0), (-1.0, 50.0), (0.0, -1.0)]:
        po, pm, pw = prepare_entropy(o, mz, x, tol_da=max(tol_da, 0.0), tol_ppm=tol_ppm, clean=False)
        pairs = rng.integers(0, len(specs), (400, 2))
        got, nm = _score_pairs(po, pm, pw, pairs, F32(tol_da), F32(tol_ppm))
        for k, (i, j) in enumerate(pairs):
            ref, n_ref = _reference_walk(pm[po[i]:po[i + 1]], pw[po[i]:po[i + 1]],
                                         pm[po[j]:po[j + 1]], pw[po[j]:po[j + 1]], tol_da, tol_ppm)
            assert nm[k] == n_ref
            assert abs(got[k] - ref) <= 1e-6


def test_walk_self_similarity_is_one():
    rng = np.random.default_rng(4)
    o, mz, x = _csr([_random_spectrum(rng, 30) for _ in range(20)])
    po, pm, pw = prepare_entropy(o, mz, x, tol_da=0.02, tol_ppm=-1.0)
    pairs = np.repeat(np.arange(20)[:, None], 2, axis=1)
    got, nm = _score_pairs(po, pm, pw, pairs, F32(0.02), F32(-1.0))
    assert np.allclose(got, 1.0, atol=1e-5)
    assert np.array_equal(nm, np.diff(po))


def test_synthetic_clean_and_similarity_parity():
    """Dense, tied and duplicated peaks stress the centroid order; compare with ms_entropy directly."""
    rng = np.random.default_rng(5)
    specs = []
    for k in range(400):
        n = int(rng.integers(1, 60))
        mz = np.sort(np.round(rng.uniform(100.0, 103.0, n), int(rng.integers(1, 4))))  # duplicates
        x = rng.integers(1, 5, n).astype(F32) * F32(10.0 ** rng.integers(-3, 8))  # many ties
        specs.append((mz, x))
    o, mz, x = _csr(specs)
    for kw in [dict(), dict(min_ms2_difference_in_da=-1.0, min_ms2_difference_in_ppm=100.0),
               dict(max_peak_num=3, noise_threshold=0.0)]:
        co, cm, ci = clean_csr(o, mz, x, **kw)
        for i in range(len(specs)):
            assert np.array_equal(_cleaned(co, cm, ci, i), me.clean_spectrum(_peaks(o, mz, x, i), **kw)), (kw, i)
    pairs = rng.integers(0, len(specs), (2000, 2))
    for tol_da, tol_ppm in TOLERANCES:
        po, pm, pw = prepare_entropy(o, mz, x, tol_da=tol_da, tol_ppm=tol_ppm)
        got, _ = _score_pairs(po, pm, pw, pairs, F32(tol_da), F32(tol_ppm))
        ref = [me.calculate_entropy_similarity(_peaks(o, mz, x, i), _peaks(o, mz, x, j),
                                               ms2_tolerance_in_da=tol_da, ms2_tolerance_in_ppm=tol_ppm)
               for i, j in pairs]
        assert np.abs(got - np.array(ref)).max() <= 1e-6


# ---------------------------------------------------------------------------------------- edge cases
def test_edge_cases_clean():
    specs = [
        ([], []),                                             # empty
        ([150.0], [3.0]),                                     # one peak
        ([100.0, 120.0, 130.0], [0.0, -5.0, 2.0]),            # zero / negative intensities
        ([100.0, 120.0], [0.0, -1.0]),                        # nothing valid
        ([-3.0, 0.0, 80.0], [1.0, 1.0, 1.0]),                 # m/z <= 0
        ([100.0, 100.0, 100.0625], [1.0, 1.0, 2.0]),          # duplicate m/z, gap == min difference
    ]
    o, mz, x = _csr(specs)
    for kw in [dict(), dict(noise_threshold=0.0, min_ms2_difference_in_da=0.0625)]:
        co, cm, ci = clean_csr(o, mz, x, **kw)
        for i, (m_i, _) in enumerate(specs):
            got = _cleaned(co, cm, ci, i)
            ref = me.clean_spectrum(_peaks(o, mz, x, i), **kw) if len(m_i) else np.zeros((0, 2), F32)
            assert np.array_equal(got, ref), (kw, i)
    # all peaks below the noise threshold
    co, cm, ci = clean_csr(o, mz, x, noise_threshold=2.0)
    assert co[-1] == 0 and cm.dtype == np.float64 and ci.dtype == np.float32
    assert me.clean_spectrum(_peaks(o, mz, x, 1), noise_threshold=2.0).shape == (0, 2)


def test_edge_cases_similarity():
    specs = [([], []), ([150.0], [3.0]), ([150.001], [1.0]), ([100.0, 120.0], [0.0, -1.0]),
             ([150.0, 151.0], [1.0, 1.0])]
    o, mz, x = _csr(specs)
    pairs = np.array([[0, 1], [1, 0], [0, 0], [1, 2], [1, 3], [3, 3], [1, 4]])
    for weighted in (True, False):
        po, pm, pw = prepare_entropy(o, mz, x, tol_da=0.02, tol_ppm=-1.0, weighted=weighted)
        got, nm = _score_pairs(po, pm, pw, pairs, F32(0.02), F32(-1.0))
        fn = me.calculate_entropy_similarity if weighted else me.calculate_unweighted_entropy_similarity
        for k, (i, j) in enumerate(pairs):
            if len(specs[i][0]) and len(specs[j][0]):
                assert got[k] == fn(_peaks(o, mz, x, i), _peaks(o, mz, x, j), ms2_tolerance_in_da=0.02)
            else:
                assert got[k] == 0.0 and nm[k] == 0
        assert list(nm[[3, 4, 5]]) == [1, 0, 0]
    # zero-length ranges inside entropy_pair
    assert entropy_pair(pm, pw, 0, 0, pm, pw, 0, 1, F32(0.02), F32(-1.0)) == (0.0, 0)


def test_unclean_path_normalises_only():
    rng = np.random.default_rng(6)
    o, mz, x = _csr([_random_spectrum(rng, 15) for _ in range(50)])
    co, cm, ci = clean_csr(o, mz, x, min_ms2_difference_in_da=0.04)
    po, pm, pw = prepare_entropy(co, cm, ci, tol_da=0.02, tol_ppm=-1.0, clean=False)
    assert np.array_equal(po, co) and np.array_equal(pm, cm.astype(F32))
    pairs = rng.integers(0, 50, (300, 2))
    got, _ = _score_pairs(po, pm, pw, pairs, F32(0.02), F32(-1.0))
    ref = [me.calculate_entropy_similarity(_cleaned(co, cm, ci, i), _cleaned(co, cm, ci, j),
                                           ms2_tolerance_in_da=0.02, clean_spectra=False) for i, j in pairs]
    assert np.abs(got - np.array(ref)).max() <= 1e-6
    # invalid peaks are dropped rather than turned into NaN scores
    o2, m2, x2 = _csr([([100.0, 101.0], [1.0, 0.0])])
    po, pm, pw = prepare_entropy(o2, m2, x2, tol_da=0.02, tol_ppm=-1.0, clean=False)
    assert list(po) == [0, 1] and pw[0] == 1.0


def test_threads_and_parameters():
    rng = np.random.default_rng(8)
    o, mz, x = _csr([_random_spectrum(rng, int(rng.integers(0, 40))) for _ in range(200)])
    one = clean_csr(o, mz, x, threads=1)
    two = clean_csr(o, mz, x, threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)
    assert np.array_equal(entropy_weight_csr(one[0], one[2], threads=1), entropy_weight_csr(one[0], one[2]))
    with pytest.raises(ParameterError):
        clean_csr(o, mz, x, min_ms2_difference_in_da=-1.0, min_ms2_difference_in_ppm=-1.0)
    with pytest.raises(ParameterError):
        prepare_entropy(o, mz, x, tol_da=-1.0, tol_ppm=-1.0)
    with pytest.raises(ParameterError):
        clean_csr(o, mz, x, precursor_ions_removal_da=1.6)
    with pytest.raises(ParameterError):
        clean_csr(o[:-1], mz, x)
