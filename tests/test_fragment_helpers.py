"""The small public helpers of the fragment-index kernels (:mod:`fastspec.kernels.fragment`) against naive
pure-Python references: ``peak_weights`` (the bounds' per-peak weights), ``min_peak_gaps`` (which spectra
are *clean*), ``compact_ids`` (candidate sets) and ``clean_gap`` (the gap that makes a spectrum clean)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastspec.kernels import fragment as fk

F32_TINY = float(np.finfo(np.float32).tiny)
F32_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------------------ naive weights
def naive_cosine_weights(mz, inten, mz_power, intensity_power) -> list[float]:
    """``mz**mz_power * intensity**intensity_power`` divided by the spectrum's L2 norm, in Python floats.

    Computed from logarithms relative to the largest weight, so that weights past the float64 range
    (float32-max intensities at intensity_power 4) still come out as their ratios. A zero intensity has
    weight 0 (intensity_power > 0); a spectrum without a positive weight gets 0 everywhere."""
    logs = [mz_power * math.log(m) + intensity_power * math.log(i) if i > 0 else None for m, i in zip(mz, inten)]
    pos = [v for v in logs if v is not None]
    if not pos:
        return [0.0] * len(mz)
    top = max(pos)
    rel = [math.exp(v - top) if v is not None else 0.0 for v in logs]
    norm = math.sqrt(sum(r * r for r in rel))
    return [r / norm for r in rel]


def naive_entropy_weights(inten, weighted: bool) -> list[float]:
    """Intensities (negative ones as 0) normalised to sum 1; with ``weighted`` raised to ``0.25 + 0.25 * S``
    (S the spectral entropy, natural log) when S < 3 and renormalised (Li et al. 2021)."""
    x = [max(float(i), 0.0) for i in inten]
    total = sum(x)
    if not total > 0:
        return [0.0] * len(x)
    x = [v / total for v in x]
    s = -sum(v * math.log(v) for v in x if v > 0)
    power = 0.25 + 0.25 * s if weighted and s < 3 else 1.0
    y = [v ** power if v > 0 else 0.0 for v in x]
    tot = sum(y)
    return [v / tot for v in y]


def as_stored(w: float) -> np.float32:
    """A weight as the bound kernels store it: float32, a positive one never below the smallest normal
    float32 (it must not read as weightless)."""
    return np.float32(F32_TINY) if 0.0 < w < F32_TINY else np.float32(w)


INTENSITIES = st.one_of(st.sampled_from([0.0, 1e-30, 1e-40, 1.0, 1e5, 3e38, F32_MAX]),
                        st.floats(0.5 ** 20, 2.0 ** 20, width=32))


@st.composite
def csr_spectra(draw, max_spectra=6, max_peaks=9):
    """CSR spectra (int64 offsets, float64 m/z ascending, float32 intensities); empty spectra included."""
    n = draw(st.integers(0, max_spectra))
    mz, inten, offsets = [], [], [0]
    for _ in range(n):
        k = draw(st.integers(0, max_peaks))
        mz += sorted(draw(st.lists(st.floats(20.0, 3000.0), min_size=k, max_size=k, unique=True)))
        inten += draw(st.lists(INTENSITIES, min_size=k, max_size=k))
        offsets.append(offsets[-1] + k)
    return (np.array(offsets, dtype=np.int64), np.array(mz, dtype=np.float64),
            np.array(inten, dtype=np.float64).astype(np.float32))


def _expected(offsets, mz, inten, fn, zero_peaks_count: bool = False) -> np.ndarray:
    """``zero_peaks_count``: cosine weights, where a zero weight (a zero intensity) in a spectrum with a
    positive one is stored at the smallest normal float32, as its pairs are matched peaks (matchms)."""
    out = []
    for i in range(offsets.shape[0] - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        ws = fn([float(v) for v in mz[a:b]], [float(v) for v in inten[a:b]])
        if zero_peaks_count and any(w > 0 for w in ws):
            ws = [F32_TINY if w == 0 else w for w in ws]
        out += [as_stored(w) for w in ws]
    return np.array(out, dtype=np.float32)


def _assert_weights(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    assert ((got > 0) == (want > 0)).all(), (got, want)  # a positive weight is never stored as 0
    # float32 rounding of float64 values computed in another order: at most one unit in the last place
    np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sp=csr_spectra(), powers=st.sampled_from([(0.0, 1.0), (0.0, 0.5), (1.0, 0.5), (3.0, 0.6), (0.0, 2.0),
                                                 (2.0, 4.0), (0.5, 1.0)]),
       threads=st.sampled_from([1, 2]))
def test_cosine_peak_weights_vs_naive(sp, powers, threads):
    offsets, mz, inten = sp
    got = fk.peak_weights(offsets, mz, inten, "cosine", *powers, threads=threads)
    _assert_weights(got, _expected(offsets, mz, inten, lambda m, i: naive_cosine_weights(m, i, *powers), True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sp=csr_spectra(), kind=st.sampled_from(["entropy", "unweighted_entropy"]), threads=st.sampled_from([1, 2]))
def test_entropy_peak_weights_vs_naive(sp, kind, threads):
    offsets, mz, inten = sp
    got = fk.peak_weights(offsets, mz, inten, kind, threads=threads)
    _assert_weights(got, _expected(offsets, mz, inten, lambda m, i: naive_entropy_weights(i, kind == "entropy")))


def test_peak_weights_edge_spectra():
    """Written-out cases: zero and 1e-30 intensities (a zero intensity's cosine weight stored at the smallest
    normal float32), a spectrum of zeros, one peak, float32-max intensities
    at intensity_power 4 (w**2 past float64), and a ratio of 1e-40 (stored at the smallest normal float32)."""
    mz = np.array([100.0, 200.0, 300.0, 150.0, 250.0, 500.0, 110.0, 120.0, 130.0, 140.0, 160.0])
    inten = np.array([0.0, 1e-30, 5.0, 0.0, 0.0, 7.0, F32_MAX, 3e38, 1.0, 1e-30, 1e10], dtype=np.float32)
    offsets = np.array([0, 3, 5, 6, 9, 11])
    for powers in [(0.0, 1.0), (0.0, 4.0), (1.0, 0.5)]:
        got = fk.peak_weights(offsets, mz, inten, "cosine", *powers)
        _assert_weights(got, _expected(offsets, mz, inten, lambda m, i: naive_cosine_weights(m, i, *powers), True))
    assert fk.peak_weights(offsets, mz, inten, "cosine")[5] == 1.0  # one peak: weight 1
    w = fk.peak_weights(offsets, mz, inten, "cosine")
    assert w[9] == np.float32(F32_TINY)  # 1e-30 / 1e10 = 1e-40: below the smallest normal, kept at it
    for kind in ("entropy", "unweighted_entropy"):
        got = fk.peak_weights(offsets, mz, inten, kind)
        _assert_weights(got, _expected(offsets, mz, inten, lambda m, i: naive_entropy_weights(i, kind == "entropy")))
        assert got[3] == got[4] == 0.0 and got[5] == 1.0


# ------------------------------------------------------------------------------------------ min_peak_gaps
@st.composite
def sorted_mz_spectra(draw):
    """CSR m/z, ascending within each spectrum, repeated values (gap 0) and 0- / 1-peak spectra included."""
    n = draw(st.integers(0, 8))
    base = draw(st.sampled_from([0.5, 50.0, 999.0, 4000.0]))
    mz, offsets = [], [0]
    for _ in range(n):
        k = draw(st.integers(0, 7))
        vals = draw(st.lists(st.one_of(st.floats(base, base + 3.0), st.sampled_from([base, base + 0.1, base + 0.3])),
                             min_size=k, max_size=k))
        mz += sorted(vals)
        offsets.append(offsets[-1] + k)
    return np.array(offsets, dtype=np.int64), np.array(mz, dtype=np.float64)


@settings(max_examples=300, deadline=None)
@given(sp=sorted_mz_spectra())
def test_min_peak_gaps_vs_naive(sp):
    """Per spectrum, the smallest difference of neighbouring m/z (float64), stored as the largest float32
    not above it (never overstating a gap); inf for fewer than two peaks."""
    offsets, mz = sp
    got = fk.min_peak_gaps(offsets, mz)
    assert got.dtype == np.float32 and got.shape == (offsets.shape[0] - 1,)
    for i in range(offsets.shape[0] - 1):
        vals = [float(v) for v in mz[offsets[i]:offsets[i + 1]]]
        if len(vals) < 2:
            assert got[i] == np.inf
            continue
        gap = min(b - a for a, b in zip(vals, vals[1:]))
        g = float(got[i])
        assert g <= gap, (i, g, gap)
        assert float(np.nextafter(got[i], np.float32(np.inf))) > gap, (i, g, gap)  # and the closest such float32


def test_min_peak_gaps_rounds_down():
    # 0.1 is not a float32: the nearest one (0.100000001...) is above the gap, the stored value below it
    got = fk.min_peak_gaps(np.array([0, 2, 3, 3, 5]), np.array([100.0, 100.1, 7.0, 1.0, 1.0]))
    assert float(got[0]) <= 100.1 - 100.0 and got[1] == np.inf and got[2] == np.inf and got[3] == 0.0


# ------------------------------------------------------------------------------------------ compact_ids
@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 60), data=st.data())
def test_compact_ids_vs_unique(n, data):
    """Sorted distinct ids and each entry's position among them (np.unique with return_inverse); the
    scratch ``mark`` comes back filled with -1, so it can be reused (two calls in a row)."""
    mark = np.full(n, -1, dtype=np.int64)
    for _ in range(2):
        ids = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=80)), dtype=np.int64)
        uniq, local = fk.compact_ids(ids, mark)
        want_u, want_inv = np.unique(ids, return_inverse=True)
        assert uniq.dtype == np.int64 and local.dtype == np.int64
        np.testing.assert_array_equal(uniq, want_u)
        np.testing.assert_array_equal(local, want_inv.reshape(-1))
        np.testing.assert_array_equal(uniq[local], ids)
        assert (mark == -1).all()


# ------------------------------------------------------------------------------------------ clean_gap
def _window(x, tol_da, tol_ppm, top):
    """The fragment window the bound search scans around query m/z ``x``."""
    return fk._side_window.py_func(0, x, math.nan, tol_da, tol_ppm, top, 0.0)


def _shared_window(a, b, tol_da, tol_ppm, top):
    """Does some query m/z ``x <= top`` have both ``a < b`` in its scan window? The window's low end rises
    with ``x``, so the widest reach above ``a`` is at the largest ``x`` whose low end is still ``<= a``
    (bisection), or ``top``."""
    lo_x, hi_x = a, top
    if _window(top, tol_da, tol_ppm, top)[0] <= a:
        lo_x = top
    else:
        for _ in range(200):
            mid = 0.5 * (lo_x + hi_x)
            if _window(mid, tol_da, tol_ppm, top)[0] <= a:
                lo_x = mid
            else:
                hi_x = mid
    lo, hi = _window(lo_x, tol_da, tol_ppm, top)
    return lo <= a and b <= hi


def _exact_partner(x, v, tol_da, tol_ppm):
    """``v`` within tolerance of ``x`` under any convention the exact kernels use: Da (float64, or
    FlashEntropySearch's float32 window ends), ppm of the query's, the library peak's or the larger m/z."""
    if tol_ppm > 0:
        return abs(x - v) <= tol_ppm * 1e-6 * max(x, v)
    f32 = np.float32
    flash = f32(f32(x) - f32(tol_da)) <= f32(v) <= f32(f32(x) + f32(tol_da))
    return abs(x - v) <= tol_da or bool(flash)


TOLS = st.one_of(st.tuples(st.floats(1e-4, 0.5), st.just(0.0)), st.tuples(st.just(0.0), st.floats(0.5, 100.0)))


@settings(max_examples=200, deadline=None)
@given(tol=TOLS, top=st.floats(0.2, 5000.0), where=st.floats(0.0, 1.0), extra=st.floats(1e-9, 1e-3))
def test_clean_gap_keeps_peaks_out_of_one_window(tol, top, where, extra):
    """Two peaks more than ``clean_gap`` apart (both at most ``nl_base``, the largest m/z, which sizes ppm
    windows) never lie in one query peak's scan window, at Da and ppm tolerances; and once rounded to
    float32, as the index stores them, never both within tolerance of one query m/z under any convention
    (the pairs of clean spectra stay one-to-one)."""
    tol_da, tol_ppm = tol
    top_m = max(top, 1.0)
    gap = fk.clean_gap(tol_da, tol_ppm, top)
    b_max = top_m
    b = gap + (b_max - gap) * where if b_max > gap * (1 + extra) else None
    if b is None:
        return
    a = b - gap * (1 + extra)
    if a <= 0:
        return
    assert not _shared_window(a, b, tol_da, tol_ppm, top_m), (a, b, gap)
    a32, b32 = float(np.float32(a)), float(np.float32(b))
    h = tol_da if tol_ppm <= 0 else tol_ppm * 1e-6 * b32
    special = [a32 + h, b32 - h, 0.5 * (a32 + b32), b32 / (1 + tol_ppm * 1e-6), a32 / (1 - tol_ppm * 1e-6)]
    for x in list(np.linspace(a32, b32, 41)) + special + [float(np.float32(v)) for v in special]:
        x = float(x)
        assert not (_exact_partner(x, a32, tol_da, tol_ppm) and _exact_partner(x, b32, tol_da, tol_ppm)), (x, a, b)


def test_clean_gap_values():
    """Twice the tolerance (ppm sized at nl_base, at least 1) plus a small float32 slack."""
    for tol_da, tol_ppm, top in [(0.02, 0.0, 1000.0), (0.005, 0.0, 50.0), (0.0, 10.0, 1000.0), (0.0, 20.0, 2500.0)]:
        two = 2 * tol_da if tol_ppm <= 0 else 2 * tol_ppm * 1e-6 * top
        assert two < fk.clean_gap(tol_da, tol_ppm, top) < two + 1e-6 * top + 1e-5
    assert fk.clean_gap(0.0, 10.0, 0.0) == fk.clean_gap(0.0, 10.0, 1.0)
    assert fk.clean_gap(0.01, 0.0, 2000.0) > fk.clean_gap(0.01, 0.0, 1000.0)
