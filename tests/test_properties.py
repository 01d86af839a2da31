"""Property tests (hypothesis) for every similarity metric: range, self-similarity, symmetry, peak order."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
from fastspec.similarity import METRICS, score_pairs
from fastspec.spectra import Spectra

ALL = list(dict.fromkeys(METRICS))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOLERANCES = [0.1, 0.02, "20ppm"]

finite_mz = st.floats(1.0, 1500.0, allow_nan=False)
intensity = st.floats(0.0, 1e6, allow_nan=False)
positive_intensity = st.floats(1e-3, 1e6, allow_nan=False)
precursor = st.one_of(st.just(float("nan")), st.floats(1.0, 1600.0))


@st.composite
def any_spectrum(draw, min_peaks=0):
    """Arbitrary peaks: repeated m/z, zero intensities and unknown precursors allowed."""
    n = draw(st.integers(min_peaks, 25))
    mz = draw(st.lists(finite_mz, min_size=n, max_size=n))
    it = draw(st.lists(intensity, min_size=n, max_size=n))
    return mz, it, draw(precursor)


@st.composite
def grid_spectrum(draw, jitter=0.02, min_peaks=1):
    """Peaks on a 1 Da grid (distinct slots) with small jitter, precursor above all peaks.

    Any two peaks -- within a spectrum, across spectra, after a precursor shift -- are then either
    within ``3 * jitter`` or at least ``1 - 3 * jitter`` apart: no match sits near a tolerance boundary
    and no peak can match two others, so greedy matching has no choices to make.
    """
    slots = draw(st.lists(st.integers(0, 300), min_size=min_peaks, max_size=30, unique=True))
    mz = [50.0 + s + draw(st.floats(-jitter, jitter)) for s in slots]
    it = draw(st.lists(positive_intensity, min_size=len(mz), max_size=len(mz)))
    pmz = 50.0 + max(slots) + draw(st.integers(1, 100)) + draw(st.floats(-jitter, jitter))
    return mz, it, pmz


def spectra(*specs) -> Spectra:
    return Spectra.from_arrays([s[0] for s in specs], [s[1] for s in specs], precursor_mz=[s[2] for s in specs])


def score(metric, a, b, tol, **kw):
    s, m = score_pairs(spectra(a), spectra(b), metric, tol, **kw)
    return float(s[0]), int(m[0])


@SETTINGS
@given(a=any_spectrum(), b=any_spectrum(), tol=st.sampled_from(TOLERANCES),
       powers=st.sampled_from([(0.0, 1.0), (1.0, 0.5), (0.0, 0.0), (2.0, 1.0)]))
def test_range(a, b, tol, powers):
    for metric in ALL:
        s, m = score(metric, a, b, tol if metric != "binned_cosine" else 0.1, mz_power=powers[0],
                     intensity_power=powers[1])
        assert 0.0 <= s <= 1.0 + 1e-12, (metric, s)
        assert 0 <= m <= max(len(a[0]), len(b[0])) + 1  # binned: +1 for a precursor bin at most
        if m == 0 and metric != "binned_cosine":
            assert s == 0.0


@SETTINGS
@given(a=grid_spectrum(), tol=st.sampled_from([0.1, "200ppm", 0.3]))
def test_self_score_cosine_family(a, tol):
    for metric in ("cosine", "modified_cosine", "neutral_loss_cosine"):
        s, m = score(metric, a, a, tol)
        assert s == pytest.approx(1.0, abs=1e-12), metric
        assert m == len(a[0])  # every peak lies below the precursor


@SETTINGS
@given(a=any_spectrum(min_peaks=1), bw=st.sampled_from([0.01, 0.25, 1.0]), preset=st.booleans())
def test_self_score_binned(a, bw, preset):
    kw = {"preset": "khoo2026"} if preset else {"bin_width": bw}
    opts = dict(ref.KHOO2026) if preset else {"bin_width": bw}
    s, _ = score("binned_cosine", a, a, 0.1, **kw)
    # intensities are stored as float32: one that rounds to 0 there (2e-311) is no intensity at all
    stored = [float(np.float32(x)) for x in a[1]]
    if not any(v > 0 for v in ref.binned_vector(a[0], stored, a[2], **opts).values()):
        assert s == 0.0  # a zero vector (no intensity in range) scores 0 by definition
        return
    assert s == pytest.approx(1.0, abs=1e-12)


@SETTINGS
@given(a=any_spectrum(min_peaks=1), tol=st.sampled_from([0.02, 0.05, "10ppm"]))
def test_self_score_entropy(a, tol):
    """After ms_entropy's cleaning a spectrum matches itself peak for peak: similarity 1 (float32)."""
    if not any(np.float32(x) > 0 for x in a[1]):
        return  # cleaning removes every peak (intensities are stored as float32: 1e-109 is 0)
    for metric in ("entropy", "unweighted_entropy"):
        s, m = score(metric, a, a, tol)
        assert s == pytest.approx(1.0, abs=1e-5), metric
        assert m >= 1


@SETTINGS
@given(a=any_spectrum(), b=any_spectrum(), bw=st.sampled_from([0.05, 0.25, 1.0]), preset=st.booleans(),
       powers=st.sampled_from([(0.0, 1.0), (1.0, 0.5)]))
def test_symmetry_binned(a, b, bw, preset, powers):
    kw = {"preset": "khoo2026"} if preset else {"bin_width": bw}
    kw.update(mz_power=powers[0], intensity_power=powers[1])
    assert score("binned_cosine", a, b, 0.1, **kw) == score("binned_cosine", b, a, 0.1, **kw)


@SETTINGS
@given(a=grid_spectrum(), b=grid_spectrum(), tol=st.sampled_from([0.1, 0.2]),
       powers=st.sampled_from([(0.0, 1.0), (1.0, 0.5), (0.0, 0.0)]))
def test_symmetry_cosine(a, b, tol, powers):
    for metric in ("cosine", "neutral_loss_cosine"):
        s1, m1 = score(metric, a, b, tol, mz_power=powers[0], intensity_power=powers[1])
        s2, m2 = score(metric, b, a, tol, mz_power=powers[0], intensity_power=powers[1])
        assert m1 == m2 and s1 == pytest.approx(s2, abs=1e-12), metric


@SETTINGS
@given(a=grid_spectrum(jitter=0.005), b=grid_spectrum(jitter=0.005), tol=st.sampled_from([0.02, 0.05]))
def test_symmetry_entropy(a, b, tol):
    for metric in ("entropy", "unweighted_entropy"):
        s1, m1 = score(metric, a, b, tol)
        s2, m2 = score(metric, b, a, tol)
        assert m1 == m2 and s1 == pytest.approx(s2, abs=1e-6), metric


@SETTINGS
@given(data=st.data(), b=any_spectrum(), tol=st.sampled_from(TOLERANCES))
def test_peak_order_invariance(data, b, tol):
    n = data.draw(st.integers(0, 25))
    mz = data.draw(st.lists(finite_mz, min_size=n, max_size=n, unique=True))
    it = data.draw(st.lists(intensity, min_size=n, max_size=n))
    pmz = data.draw(precursor)
    perm = data.draw(st.permutations(range(n)))
    shuffled = ([mz[p] for p in perm], [it[p] for p in perm], pmz)
    for metric in ALL:
        t = tol if metric != "binned_cosine" else 0.1
        assert score(metric, (mz, it, pmz), b, t) == score(metric, shuffled, b, t), metric
        assert score(metric, b, (mz, it, pmz), t) == score(metric, b, shuffled, t), metric
