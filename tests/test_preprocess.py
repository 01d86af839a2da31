"""Preprocessing steps and pipelines: hand-computed cases, pure-Python references, invariants, real data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastspec import preprocess as pp
from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra

# Spectra's sort check subtracts inf - inf for infinite m/z test values
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")

NAN = float("nan")
INF = float("inf")


def _sp(peaks, precursors=None):
    """Spectra from lists of (mz, intensity) pairs."""
    mz = [[p[0] for p in s] for s in peaks]
    it = [[p[1] for p in s] for s in peaks]
    return Spectra.from_arrays(mz, it, precursor_mz=precursors)


def _lists(sp: Spectra):
    return [list(zip(v.mz.tolist(), v.intensity.tolist())) for v in sp]


def _check_invariants(before: Spectra, after: Spectra):
    assert len(after) == len(before)
    assert after.offsets.dtype == np.int64 and after.mz.dtype == np.float64 and after.intensity.dtype == np.float32
    assert after.offsets[0] == 0 and after.offsets[-1] == after.mz.shape[0] == after.intensity.shape[0]
    assert np.all(np.diff(after.offsets) >= 0)
    assert np.all(np.isfinite(after.intensity)) and np.all(after.intensity > 0)
    assert np.all(np.isfinite(after.mz)) and np.all(after.mz > 0)
    for v in after:
        assert np.all(np.diff(v.mz) >= 0)
    np.testing.assert_array_equal(after.precursor_mz, before.precursor_mz)


# ============================================================================ pure-Python references
def _valid(m, x):
    return 0 < m < INF and 0 < x < INF


def ref_sanitize(peaks, duplicates="sum"):
    out = []
    for m, x in peaks:
        if not _valid(m, x):
            continue
        if out and duplicates != "keep" and out[-1][0] == m:
            if duplicates == "sum":
                out[-1][2] += x
            else:
                out[-1][2] = max(out[-1][2], x)
            continue
        out.append([m, x, x])
    return [(m, float(np.float32(acc))) for m, _, acc in out]


def ref_mz_range(peaks, lo, hi):
    return [(m, x) for m, x in peaks if _valid(m, x) and lo <= m <= hi]


def ref_remove_precursor(peaks, pmz, window, above):
    v = [(m, x) for m, x in peaks if _valid(m, x)]
    if not (0 < pmz < INF):
        return v
    if above:
        return [(m, x) for m, x in v if not m > pmz - window]
    return [(m, x) for m, x in v if abs(m - pmz) > window]


def ref_noise_cut(peaks, relative):
    v = [(m, x) for m, x in peaks if _valid(m, x)]
    top = max((x for _, x in v), default=0.0)
    return [(m, x) for m, x in v if x / top >= relative]


def ref_top_k(peaks, k):
    v = [(m, x) for m, x in peaks if _valid(m, x)]
    order = sorted(range(len(v)), key=lambda j: v[j][1])  # stable: ties keep m/z order
    keep = set(order[-k:]) if k < len(v) else set(range(len(v)))
    return [v[j] for j in range(len(v)) if j in keep]


def ref_merge(peaks, da=0.0, ppm=0.0):
    """ms_entropy's centroid rule written out plainly (float64, stable sorts)."""
    v = [[m, x] for m, x in peaks if _valid(m, x)]

    def separated(v):
        for j in range(1, len(v)):
            d = v[j][0] - v[j - 1][0]
            if (d < v[j][0] * ppm * 1e-6) if ppm > 0 else (d < da):
                return False
        return True

    while not separated(v):
        w = [p[1] for p in v]
        order = sorted(range(len(v)), key=lambda j: w[j])
        new = []
        for idx in reversed(order):
            if w[idx] <= 0:
                continue
            m0 = v[idx][0]
            dl = dr = da
            if ppm > 0:
                dl = m0 * ppm * 1e-6
                dr = m0 / (1 - ppm * 1e-6) - m0
            lo = idx
            while lo - 1 >= 0 and m0 - v[lo - 1][0] <= dl:
                lo -= 1
            hi = idx + 1
            while hi < len(v) and v[hi][0] - m0 <= dr:
                hi += 1
            sw = sum(w[q] for q in range(lo, hi))
            swm = sum(w[q] * v[q][0] for q in range(lo, hi))
            for q in range(lo, hi):
                w[q] = 0.0
            new.append([swm / sw, sw])
        v = sorted(new, key=lambda p: p[0])
    return [(m, x) for m, x in v]


def ref_normalize(peaks, how):
    v = [(m, x) for m, x in peaks if _valid(m, x)]
    xs = [x for _, x in v]
    norm = {"max": max(xs, default=0.0), "sum": sum(xs), "l2": math.sqrt(sum(x * x for x in xs))}[how]
    return [(m, float(np.float32(x / norm))) for m, x in v] if norm > 0 else []


def ref_weight(peaks, a, b):
    return [(m, float(np.float32(m ** a * x ** b))) for m, x in peaks if _valid(m, x)]


def _assert_same(got, want, rtol_mz=0.0, rtol_int=1e-6):
    assert len(got) == len(want), (got, want)
    if got:
        g = np.array(got, dtype=np.float64)
        w = np.array(want, dtype=np.float64)
        np.testing.assert_allclose(g[:, 0], w[:, 0], rtol=rtol_mz, atol=0)
        np.testing.assert_allclose(g[:, 1], w[:, 1], rtol=rtol_int, atol=0)


# ============================================================================ hand-computed cases
def test_sanitize_hand():
    sp = _sp([[(100.0, 1.0), (100.0, 2.0), (150.0, 0.0), (160.0, -1.0), (170.0, NAN), (180.0, INF), (200.0, 5.0)],
              [(NAN, 1.0), (-5.0, 1.0), (0.0, 3.0)], []])
    out, counts = pp.sanitize(sp, return_counts=True)
    assert _lists(out) == [[(100.0, 3.0), (200.0, 5.0)], [], []]
    assert counts == {"n_invalid": 7, "n_duplicates": 1, "n_spectra_changed": 2, "n_spectra_emptied": 1}
    assert _lists(pp.sanitize(sp, "max"))[0] == [(100.0, 2.0), (200.0, 5.0)]
    assert _lists(pp.sanitize(sp, "keep"))[0] == [(100.0, 1.0), (100.0, 2.0), (200.0, 5.0)]
    with pytest.raises(ParameterError):
        pp.sanitize(sp, "mean")


def test_sanitize_nan_mz_and_unsorted_duplicates():
    # a NaN m/z hides the disorder of 51, 50 from the sort check; sanitize drops it and sorts
    sp = _sp([[(51.0, 1.0), (NAN, 1.0), (50.0, 2.0), (51.0, 4.0)], [(NAN, 1.0)]])
    out, counts = pp.sanitize(sp, return_counts=True)
    assert _lists(out) == [[(50.0, 2.0), (51.0, 5.0)], []]
    assert counts["n_invalid"] == 2 and counts["n_duplicates"] == 1
    _check_invariants(sp, out)


def test_mz_range_hand():
    sp = _sp([[(10.0, 1.0), (50.0, 2.0), (100.0, 3.0), (150.0, 4.0)]])
    assert _lists(pp.mz_range(sp, 50.0, 100.0)) == [[(50.0, 2.0), (100.0, 3.0)]]  # inclusive bounds
    assert _lists(pp.mz_range(sp, 60.0)) == [[(100.0, 3.0), (150.0, 4.0)]]
    assert _lists(pp.mz_range(sp, 0.0, INF)) == _lists(sp)
    assert _lists(pp.mz_range(sp, 10.0)) == _lists(sp)  # nothing to drop (no kernel call): the bound inclusive
    nan = _sp([[(10.0, 1.0), (float("nan"), 2.0)]])
    assert _lists(pp.mz_range(nan, 0.0)) == [[(10.0, 1.0)]]  # a NaN m/z is outside any range
    # every step drops invalid peaks, whether or not another spectrum of the call has one out of range (a
    # review: the no-copy path kept them when nothing was below min_mz)
    bad = [(0.0, 1.0), (50.0, 0.0), (60.0, float("nan")), (70.0, -1.0), (INF, 1.0), (80.0, 2.0)]
    raw = Spectra(np.array([0, 6]), np.array([p[0] for p in bad]), np.array([p[1] for p in bad], np.float32),
                  validate=False)
    assert _lists(pp.mz_range(raw, 0.0)) == [[(80.0, 2.0)]]
    assert _lists(pp.mz_range(raw + _sp([[(5.0, 1.0)]]), 0.0)) == [[(80.0, 2.0)], [(5.0, 1.0)]]
    with pytest.raises(ParameterError):
        pp.mz_range(sp, 100.0, 50.0)
    with pytest.raises(ParameterError, match="above max_mz"):  # refused when parsed, not first when run
        pp.Pipeline.parse("mz_range:min=10,max=5")


def test_remove_precursor_hand():
    peaks = [(50.0, 1.0), (98.5, 2.0), (98.3, 2.5), (100.0, 3.0), (101.0, 4.0), (102.0, 5.0)]
    sp = _sp([peaks, peaks, peaks], precursors=[100.0, None, 100.0])
    out = pp.remove_precursor(sp, window=1.6)
    # above: drop m/z > 98.4; no precursor: keep all
    assert _lists(out) == [[(50.0, 1.0), (98.3, 2.5)], sorted(peaks), [(50.0, 1.0), (98.3, 2.5)]]
    out = pp.remove_precursor(sp, window=1.0, above=False)
    assert _lists(out)[0] == [(50.0, 1.0), (98.3, 2.5), (98.5, 2.0), (102.0, 5.0)]
    assert _lists(out)[1] == sorted(peaks)


def test_noise_cut_hand():
    sp = _sp([[(10.0, 100.0), (20.0, 1.0), (30.0, 0.99), (40.0, 50.0)], [(5.0, 3.0)], []])
    assert _lists(pp.noise_cut(sp, 0.01)) == [[(10.0, 100.0), (20.0, 1.0), (40.0, 50.0)], [(5.0, 3.0)], []]
    assert _lists(pp.noise_cut(sp, 0.5)) == [[(10.0, 100.0), (40.0, 50.0)], [(5.0, 3.0)], []]
    with pytest.raises(ParameterError):
        pp.noise_cut(sp, 1.5)
    # a peak exactly on the threshold stays, as in matchms (0.07 * 100 rounds to 7.000000000000001)
    edge = _sp([[(100.0, 7.0), (200.0, 100.0)], [(100.0, 70.0), (200.0, 1000.0)], [(1.0, 14.0), (2.0, 200.0)]])
    assert [len(v) for v in _lists(pp.noise_cut(edge, 0.07))] == [2, 2, 2]


def test_top_k_hand_and_ties():
    sp = _sp([[(10.0, 5.0), (20.0, 1.0), (30.0, 5.0), (40.0, 3.0), (50.0, 5.0)]])
    assert _lists(pp.top_k(sp, 2)) == [[(30.0, 5.0), (50.0, 5.0)]]  # ties: higher m/z kept
    assert _lists(pp.top_k(sp, 4)) == [[(10.0, 5.0), (30.0, 5.0), (40.0, 3.0), (50.0, 5.0)]]
    assert _lists(pp.top_k(sp, 10)) == _lists(sp)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ParameterError):
            pp.top_k(sp, bad)


def test_merge_peaks_hand():
    sp = _sp([[(100.00, 1.0), (100.03, 3.0), (100.07, 1.0), (200.0, 2.0)]])
    out = _lists(pp.merge_peaks(sp, 0.05))[0]
    # 100.03 (most intense) absorbs 100.00 and 100.07 (both within 0.05 Da)
    assert len(out) == 2
    assert out[0][0] == pytest.approx((100.0 + 3 * 100.03 + 100.07) / 5, abs=1e-12) and out[0][1] == 5.0
    assert out[1] == (200.0, 2.0)
    # a second pass: 10.06 absorbs 10.02 -> 10.0418 (5.5), now 0.0418 Da from 10.00 (2) -> one peak
    sp2 = _sp([[(10.00, 2.0), (10.02, 2.5), (10.06, 3.0)]])
    got = _lists(pp.merge_peaks(sp2, 0.05))[0]
    _assert_same(got, ref_merge(_lists(sp2)[0], da=0.05), rtol_mz=1e-12)
    assert len(got) == 1 and got[0][1] == 7.5
    assert got[0][0] == pytest.approx((10.0 * 2 + 10.02 * 2.5 + 10.06 * 3) / 7.5, abs=1e-12)
    # ppm: 10 ppm at m/z 1000 is 0.01 Da
    sp3 = _sp([[(1000.0, 1.0), (1000.005, 2.0), (1000.05, 1.0)]])
    got = _lists(pp.merge_peaks(sp3, "10ppm"))[0]
    assert len(got) == 2 and got[0][1] == 3.0
    assert _lists(pp.merge_peaks(sp3, 0.0)) == _lists(sp3)


def test_normalize_and_weight_hand():
    sp = _sp([[(100.0, 2.0), (200.0, 4.0)], []])
    assert _lists(pp.normalize(sp, "max"))[0] == [(100.0, 0.5), (200.0, 1.0)]
    assert _lists(pp.normalize(sp, "sum"))[0] == [(100.0, pytest.approx(1 / 3)), (200.0, pytest.approx(2 / 3))]
    l2 = _lists(pp.normalize(sp, "l2"))[0]
    assert l2[0][1] == pytest.approx(2 / math.sqrt(20)) and l2[1][1] == pytest.approx(4 / math.sqrt(20))
    with pytest.raises(ParameterError):
        pp.normalize(sp, "mean")
    w = _lists(pp.weight(sp, mz_power=1.0, intensity_power=0.5))[0]
    assert w[0][1] == pytest.approx(100 * math.sqrt(2)) and w[1][1] == pytest.approx(200 * 2.0)
    assert _lists(pp.weight(sp)) == _lists(sp)  # defaults: identity
    big = _sp([[(1000.0, 3e38), (2000.0, 1e38)]])
    wb = pp.weight(big, mz_power=3.0, intensity_power=1.0)  # would overflow float32: rescaled
    assert np.all(np.isfinite(wb.intensity)) and wb.intensity.max() == pytest.approx(1.0)


def test_steps_reject_non_spectra():
    with pytest.raises(ParameterError):
        pp.noise_cut([[1.0, 2.0]])


# ============================================================================ references on random spectra
_MZ = st.one_of(
    st.sampled_from([50.0, 50.01, 50.03, 50.05, 50.06, 100.0, 100.0, 100.02, 150.0, 150.04]),
    st.floats(1.0, 400.0),
    st.sampled_from([-1.0, 0.0, INF]),  # NaN m/z: see test_sanitize_nan_mz (Spectra cannot sort them)
)
_INT = st.one_of(
    st.floats(0.5, 1e6, width=32),
    st.sampled_from([1.0, 2.0, 5.0, 5.0]),  # ties
    st.sampled_from([0.0, -3.0, NAN, INF]),
)
_SPEC = st.lists(st.tuples(_MZ, _INT), max_size=25)
_SPECTRA = st.lists(st.tuples(_SPEC, st.one_of(st.none(), st.floats(10.0, 400.0))), min_size=1, max_size=6)


def _build(data):
    return _sp([d[0] for d in data], precursors=[d[1] for d in data])


def _each(sp: Spectra):
    return [list(zip(v.mz.tolist(), v.intensity.tolist())) for v in sp]


@settings(max_examples=150, deadline=None)
@given(_SPECTRA, st.sampled_from(["sum", "max", "keep"]), st.floats(0, 300), st.floats(0, 10), st.booleans(),
       st.floats(0, 1), st.integers(1, 8))
def test_filters_match_reference(data, dup, lo, window, above, rel, k):
    sp = _build(data)
    raw = _each(sp)
    pmz = sp.precursor_mz.tolist()
    cases = [
        (pp.sanitize(sp, dup), [ref_sanitize(s, dup) for s in raw]),
        (pp.mz_range(sp, lo, lo + 100.0), [ref_mz_range(s, lo, lo + 100.0) for s in raw]),
        (pp.remove_precursor(sp, window, above), [ref_remove_precursor(s, p, window, above) for s, p in zip(raw, pmz)]),
        (pp.noise_cut(sp, rel), [ref_noise_cut(s, rel) for s in raw]),
        (pp.top_k(sp, k), [ref_top_k(s, k) for s in raw]),
    ]
    for out, want in cases:
        _check_invariants(sp, out)
        for g, w in zip(_each(out), want):
            _assert_same(g, w, rtol_int=0.0)


@settings(max_examples=150, deadline=None)
@given(_SPECTRA, st.sampled_from([0.01, 0.03, 0.05, 0.2, 1.0]), st.sampled_from([5.0, 20.0, 300.0]))
def test_merge_matches_reference(data, da, ppm):
    sp = _build(data)
    raw = _each(sp)
    for tol, kw in ((da, {"da": da}), (f"{ppm}ppm", {"ppm": ppm})):
        out = pp.merge_peaks(sp, tol)
        _check_invariants(sp, out)
        for g, s in zip(_each(out), raw):
            _assert_same(g, ref_merge(s, **kw), rtol_mz=1e-12)
        # merged spectra are separated
        for v in out:
            d = np.diff(v.mz)
            assert np.all(d >= (v.mz[1:] * ppm * 1e-6 if "ppm" in kw else da))


@settings(max_examples=100, deadline=None)
@given(_SPECTRA, st.sampled_from(["max", "sum", "l2"]), st.floats(-2, 3), st.floats(0, 2))
def test_intensity_steps_match_reference(data, how, a, b):
    sp = _build(data)
    raw = _each(sp)
    out = pp.normalize(sp, how)
    _check_invariants(sp, out)
    for g, s in zip(_each(out), raw):
        _assert_same(g, ref_normalize(s, how))
    out = pp.weight(sp, a, b)
    _check_invariants(sp, out)
    for g, s in zip(_each(out), raw):
        want = [p for p in ref_weight(s, a, b) if 0 < p[1] < INF]
        _assert_same(g, want)


@settings(max_examples=60, deadline=None)
@given(_SPECTRA)
def test_default_pipeline_invariants_and_idempotence(data):
    sp = _build(data)
    p = pp.default_pipeline(top_k=5)
    out = p(sp)
    _check_invariants(sp, out)
    assert np.all(np.diff(out.offsets) <= 5)
    again = p(out)  # cleaning a cleaned spectrum changes nothing
    np.testing.assert_array_equal(again.offsets, out.offsets)
    np.testing.assert_allclose(again.mz, out.mz, rtol=1e-12)
    np.testing.assert_array_equal(again.intensity, out.intensity)


# ============================================================================ pipelines
def test_pipeline_config_roundtrip_and_string():
    p = pp.Pipeline([("mz_range", {"min": 50, "max": 2000}), "sanitize", ("remove_precursor", {"window": 1.6}),
                     {"name": "merge_peaks", "params": {"tolerance": "10ppm"}}, ("top_k", {"k": 20}),
                     ("normalize", {"how": "sum"}), ("weight", {"mz_power": 1, "intensity_power": 0.5})])
    cfg = json.loads(json.dumps(p.to_config()))  # strictly JSON (no inf/NaN)
    assert cfg["format"] == "fastspec.preprocess" and cfg["version"] == 1
    assert cfg["steps"][0] == {"name": "mz_range", "params": {"min_mz": 50.0, "max_mz": 2000.0}}
    assert pp.Pipeline.from_config(cfg) == p
    assert pp.Pipeline.from_config(cfg["steps"]) == p
    assert pp.Pipeline.parse(p.to_string()) == p
    assert len(p.describe().splitlines()) == len(p) == 7
    s = pp.Pipeline.parse("mz_range:min=0,max=2000;remove_precursor:window=1.6;noise_cut:relative=0.01")
    assert s.steps == (("mz_range", {"min_mz": 0.0, "max_mz": 2000.0}),
                       ("remove_precursor", {"window": 1.6, "above": True}),
                       ("noise_cut", {"relative": 0.01}))
    assert pp.Pipeline.parse("top_k:50;mz_range:10,inf").steps == (("top_k", {"k": 50}),
                                                                   ("mz_range", {"min_mz": 10.0, "max_mz": None}))
    assert pp.Pipeline.parse("remove_precursor:above=false").steps[0][1]["above"] is False
    assert pp.Pipeline.parse("default") == pp.default_pipeline()
    assert pp.Pipeline.parse("none") == pp.Pipeline.none() and len(pp.Pipeline.none()) == 0
    assert pp.parse_pipeline(" noise_cut ; ") == pp.Pipeline([("noise_cut", {})])


@pytest.mark.parametrize("bad", [
    "nope", "top_k", "top_k:k=0", "top_k:k=2.5", "noise_cut:relative=2", "noise_cut:relative=abc",
    "mz_range:min=1,min_mz=2", "mz_range:foo=1", "top_k:5,6", "remove_precursor:above=maybe",
    "merge_peaks:tolerance=5parsec", "normalize:how=median", "mz_range:min=nan",
])
def test_pipeline_string_refusals(bad):
    with pytest.raises(ParameterError):
        pp.Pipeline.parse(bad)


def test_pipeline_config_refusals():
    good = pp.default_pipeline().to_config()
    for cfg in ({**good, "version": 99}, {**good, "format": "other"}, {"format": "fastspec.preprocess"},
                {"steps": "noise_cut"}, [{"params": {}}], [("noise_cut", {"x": 1})], [42]):
        with pytest.raises(ParameterError):
            pp.Pipeline.from_config(cfg)
    assert issubclass(ParameterError, FastspecError)


def test_default_pipeline_documented_steps_and_options():
    p = pp.default_pipeline()
    assert [n for n, _ in p] == ["sanitize", "mz_range", "entropy_clean"]
    clean = dict(p.steps)["entropy_clean"]
    assert clean == {"min_mz": -1.0, "max_mz": -1.0, "noise_threshold": 0.01, "min_ms2_difference_in_da": 0.05,
                     "min_ms2_difference_in_ppm": -1.0, "max_peak_num": -1, "normalize_intensity": False,
                     "precursor_ions_removal_da": 1.6}
    q = pp.default_pipeline(min_mz=50, max_mz=1500, remove_precursor=None, noise=0.05, top_k=100, merge="10ppm")
    assert dict(q.steps)["mz_range"] == {"min_mz": 50.0, "max_mz": 1500.0}
    assert dict(q.steps)["entropy_clean"] == {**clean, "noise_threshold": 0.05, "max_peak_num": 100,
                                              "precursor_ions_removal_da": None, "min_ms2_difference_in_da": -1.0,
                                              "min_ms2_difference_in_ppm": 10.0}
    assert pp.Pipeline.from_config(json.loads(json.dumps(q.to_config()))) == q
    assert "precursor_ions_removal_da=none" in pp.default_pipeline(remove_precursor=None).describe()
    for bad in ({"top_k": 0}, {"top_k": -2}, {"top_k": 2.5}, {"remove_precursor": -3}, {"noise": 1.5},
                {"noise": float("nan")}, {"merge": "-1da"}):
        with pytest.raises(ParameterError):
            pp.default_pipeline(**bad)
    bare = pp.default_pipeline(remove_precursor=None, merge=None, noise=None)
    assert [n for n, _ in bare] == ["sanitize", "mz_range"]
    sp = _sp([[(10.0, 1.0), (10.5, 1.0), (50.0, 0.001)]], precursors=[20.0])  # float32-exact m/z
    assert _lists(bare(sp)) == _lists(sp)
    assert _lists(pp.default_pipeline(remove_precursor=None, merge=None)(sp)) == [[(10.0, 1.0), (10.5, 1.0)]]


def test_pipeline_run_report_and_identity():
    sp = _sp([[(10.0, 1.0), (10.0, 1.0), (50.0, 100.0), (99.0, 5.0)], [(20.0, 0.0)]], precursors=[100.0, 30.0])
    out, report = pp.default_pipeline().run(sp)
    assert [r["step"] for r in report] == [n for n, _ in pp.default_pipeline()]
    # the two peaks at m/z 10 stay for entropy_clean's centroiding (ms_entropy's float32 mean)
    assert report[0] == {"step": "sanitize", "peaks_in": 5, "peaks_out": 4, "spectra_emptied": 1}
    assert _lists(out) == [[(10.0, 2.0), (50.0, 100.0)], []]
    ident = pp.Pipeline.none()(sp)
    assert ident is sp


def test_steps_registry_is_complete():
    for name, step in pp.STEPS.items():
        assert step.name == name and callable(step.func)
        assert name in pp.__doc__  # every step is documented in the module docstring


# ============================================================================ real data
@pytest.fixture(scope="module")
def massbank_spectra(massbank_parquet):
    import pyarrow.parquet as pq

    t = pq.read_table(massbank_parquet, columns=["mz", "intensity", "precursor_mz"]).slice(0, 6000)
    return Spectra.from_arrays(t.column("mz").to_pylist(), t.column("intensity").to_pylist(),
                               precursor_mz=t.column("precursor_mz").to_pylist())


def test_default_pipeline_matches_ms_entropy_clean_spectrum(massbank_spectra):
    """Default pipeline == ms_entropy clean_spectrum_for_search without the sum-normalisation, to the bit,
    on every MassBank spectrum (the float64 steps merged 0.3% of them differently)."""
    ms_entropy = pytest.importorskip("ms_entropy")
    sp = massbank_spectra
    out = pp.default_pipeline()(sp)
    _check_invariants(sp, out)
    for i, v in enumerate(out):
        pk = np.column_stack([sp[i].mz, sp[i].intensity]).astype(np.float32)
        pmz = sp.precursor_mz[i]
        ref = ms_entropy.clean_spectrum(pk, min_mz=-1, max_mz=pmz - 1.6 if np.isfinite(pmz) else -1,
                                        noise_threshold=0.01, min_ms2_difference_in_da=0.05,
                                        normalize_intensity=False)
        np.testing.assert_array_equal(v.mz.astype(np.float32), ref[:, 0], err_msg=str(i))
        np.testing.assert_array_equal(v.intensity, ref[:, 1], err_msg=str(i))


def test_default_pipeline_merges_identical_mz_as_ms_entropy():
    """Peaks at one m/z (merged spectra, some exports) are centroided as ms_entropy centroids them, an
    intensity-weighted float32 mean one ulp off the m/z; summing them at the exact m/z first (sanitize) made
    open / identity entropy search differ from FlashEntropySearch where a match sat at the window's edge
    (a search audit: 0.972 against 0.622)."""
    ms_entropy = pytest.importorskip("ms_entropy")
    rng = np.random.default_rng(7)
    mzs, ints, pmzs = [], [], []
    for _ in range(400):
        n = int(rng.integers(2, 30))
        mz = np.round(rng.uniform(50, 500, n), 4)
        dup = rng.random(n) < 0.3
        mz = np.sort(np.concatenate([mz, mz[dup], mz[dup][: int(dup.sum()) // 2]]))  # pairs and triples
        mzs.append(mz)
        ints.append(rng.uniform(1, 100, len(mz)).astype(np.float32))
        pmzs.append(float(rng.uniform(300, 600)))
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=pmzs)
    out = pp.default_pipeline()(sp)
    n_moved = 0
    for i, v in enumerate(out):
        pk = np.column_stack([sp[i].mz, sp[i].intensity]).astype(np.float32)
        ref = ms_entropy.clean_spectrum(pk, min_mz=-1, max_mz=pmzs[i] - 1.6, noise_threshold=0.01,
                                        min_ms2_difference_in_da=0.05, normalize_intensity=False)
        np.testing.assert_array_equal(v.mz.astype(np.float32), ref[:, 0], err_msg=str(i))
        np.testing.assert_array_equal(v.intensity, ref[:, 1], err_msg=str(i))
        n_moved += int(np.count_nonzero(~np.isin(v.mz.astype(np.float32), pk[:, 0])))
    assert n_moved > 50  # merged m/z that are none of the input's: the case summing got wrong


def test_steps_match_matchms_filters(massbank_spectra):
    matchms_filtering = pytest.importorskip("matchms.filtering")
    sp = pp.sanitize(massbank_spectra[:300])
    ref = sp.to_matchms()
    cases = [
        (pp.mz_range(sp, 50.0, 300.0), lambda s: matchms_filtering.select_by_mz(s, mz_from=50.0, mz_to=300.0)),
        (pp.remove_precursor(sp, 1.6), lambda s: matchms_filtering.remove_peaks_relative_to_precursor_mz(s, -1.6)),
        (pp.noise_cut(sp, 0.05), lambda s: matchms_filtering.select_by_relative_intensity(s, intensity_from=0.05)),
        (pp.top_k(sp, 10), lambda s: matchms_filtering.reduce_to_number_of_peaks(s, n_max=10)),
        (pp.normalize(sp, "max"), matchms_filtering.normalize_intensities),
    ]
    for j, (out, f) in enumerate(cases):
        for i, s in enumerate(ref):
            if not np.isfinite(sp.precursor_mz[i]):
                continue
            if j == 3 and len(np.unique(s.peaks.intensities)) < len(s.peaks.intensities):
                continue  # top-k with tied intensities: matchms' unstable argsort picks arbitrarily
            want = f(s)
            v = out[i]
            np.testing.assert_allclose(v.mz, want.peaks.mz, rtol=1e-12)
            np.testing.assert_allclose(v.intensity, want.peaks.intensities, rtol=1e-6)


def test_default_pipeline_on_massbank(massbank_spectra):
    out, report = pp.default_pipeline().run(massbank_spectra)
    _check_invariants(massbank_spectra, out)
    assert report[-1]["peaks_out"] < report[0]["peaks_in"]
    # spectra with nothing but the precursor ion end up empty (~5% of MassBank)
    assert np.count_nonzero(out.n_peaks) > 0.9 * len(out)
    for v in out[:500]:
        assert np.all(np.diff(v.mz) >= 0.05)


# ============================================================================ entropy steps (helper K's kernels)
def test_entropy_weight_drops_invalid_peaks_first():
    """Weights sum to 1 over the peaks that stay: a negative or NaN intensity used to enter the
    normalisation (sum ~11 instead of 1)."""
    sp = Spectra.from_arrays([[50.0, 60.0, 70.0, 80.0]], [[-5.0, 1.0, np.nan, 3.0]])
    w = pp.entropy_weight(sp)
    ref = pp.entropy_weight(Spectra.from_arrays([[60.0, 80.0]], [[1.0, 3.0]]))
    np.testing.assert_allclose(w.intensity, ref.intensity, rtol=1e-6)
    assert abs(float(w.intensity.sum()) - 1.0) < 1e-6


def test_entropy_clean_max_mz_with_a_precursor():
    """max_mz applies to spectra with a precursor too (the precursor cut replaced it: 300 and 450 kept under
    max_mz=200, an audit); the lower of the two bounds wins, a non-positive precursor cut is no bound."""
    pytest.importorskip("fastspec.kernels.entropy")
    ms_entropy = pytest.importorskip("ms_entropy")
    sp = _sp([[(100.0, 1.0), (300.0, 1.0), (450.0, 1.0)]] * 3 + [[(0.5, 1.0), (1.0, 1.0), (100.0, 1.0)]],
             precursors=[500.0, None, 320.0, 1.0])
    got = [[m for m, _ in v] for v in _lists(pp.entropy_clean(sp, max_mz=200, normalize_intensity=False))]
    assert got == [[100.0], [100.0], [100.0], [0.5, 1.0, 100.0]]
    got = [[m for m, _ in v] for v in _lists(pp.entropy_clean(sp, max_mz=400, normalize_intensity=False))]
    assert got == [[100.0, 300.0], [100.0, 300.0], [100.0, 300.0], [0.5, 1.0, 100.0]]
    pk = np.array([[100.0, 1.0], [300.0, 1.0], [450.0, 1.0]], np.float32)
    ref = ms_entropy.clean_spectrum(pk, max_mz=min(400, 320.0 - 1.6), noise_threshold=0.01,
                                    min_ms2_difference_in_da=0.05, normalize_intensity=False)
    assert ref[:, 0].tolist() == got[2]


def test_entropy_steps_match_ms_entropy(massbank_spectra):
    pytest.importorskip("fastspec.kernels.entropy")
    ms_entropy = pytest.importorskip("ms_entropy")
    sp = massbank_spectra[:500]
    cleaned = pp.entropy_clean(sp)
    weighted = pp.entropy_weight(cleaned)
    _check_invariants(sp, cleaned)
    _check_invariants(sp, weighted)
    p = pp.Pipeline([("entropy_clean", {}), ("entropy_weight", {})])
    np.testing.assert_array_equal(p(sp).intensity, weighted.intensity)
    same = 0
    for i in range(len(sp)):
        pk = np.column_stack([sp[i].mz, sp[i].intensity]).astype(np.float32)
        pmz = sp.precursor_mz[i]
        ref = ms_entropy.clean_spectrum(pk, min_mz=-1, max_mz=pmz - 1.6 if np.isfinite(pmz) else -1,
                                        noise_threshold=0.01, min_ms2_difference_in_da=0.05)
        refw = ms_entropy.apply_weight_to_intensity(ref)
        c, w = cleaned[i], weighted[i]
        if len(ref) == len(c) and np.allclose(ref[:, 0], c.mz, rtol=1e-6) and \
                np.allclose(ref[:, 1], c.intensity, rtol=1e-4, atol=1e-7) and \
                np.allclose(refw[:, 1], w.intensity, rtol=1e-4, atol=1e-7):
            same += 1
    assert same >= 0.99 * len(sp)


# ---------------------------------------------------------------------------------------- CSR helpers
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(1, 1000), st.floats(1e-3, 1e6)), max_size=6), min_size=1, max_size=8),
       st.data())
def test_gather_and_norms_vs_reference(peaks, data):
    from fastspec.kernels.peaks import gather_csr, l2_norms_csr

    sp = _sp([sorted(p) for p in peaks])
    rows = np.array(data.draw(st.lists(st.integers(0, len(peaks) - 1), max_size=12)), dtype=np.int64)
    for dtype in (np.float32, np.float64):
        off, mz, it = gather_csr(sp.offsets, sp.mz, sp.intensity, rows, intensity_dtype=dtype)
        assert it.dtype == dtype and off[0] == 0 and off[-1] == mz.shape[0]
        for r, row in enumerate(rows):
            a, b = sp.offsets[row], sp.offsets[row + 1]
            assert mz[off[r]:off[r + 1]].tolist() == sp.mz[a:b].tolist()
            assert it[off[r]:off[r + 1]].tolist() == sp.intensity[a:b].astype(dtype).tolist()
    w = sp.intensity.astype(np.float64)
    norms = l2_norms_csr(sp.offsets, w)
    for i in range(len(peaks)):  # naive: peak-order sum of squares, as a bincount over peaks adds them
        s = 0.0
        for x in w[sp.offsets[i]:sp.offsets[i + 1]]:
            s += x * x
        assert norms[i] == math.sqrt(s)


def test_gather_rejects_bad_rows():
    from fastspec.kernels.peaks import gather_csr

    sp = _sp([[(100.0, 1.0)]])
    with pytest.raises(ParameterError):
        gather_csr(sp.offsets, sp.mz, sp.intensity, np.array([1]))
