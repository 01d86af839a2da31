"""The fragment / neutral-loss sort of an index build (:func:`fastspec.kernels.fragment.sorted_peak_index`)
against a naive Python sort."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspec.kernels import fragment as fk


def naive(offsets, mz, rows_ok, groups, n_groups, pmz):
    """Entries (group, float32 value, peak position, spectrum), sorted; the same filters."""
    out = []
    for i in range(len(offsets) - 1):
        if rows_ok is not None and not rows_ok[i]:
            continue
        for p in range(offsets[i], offsets[i + 1]):
            v = float(np.float32(pmz[i] - mz[p])) if pmz is not None else float(np.float32(mz[p]))
            if rows_ok is not None and not math.isfinite(v):
                continue
            out.append((int(groups[i]) if n_groups > 1 else 0, v, p, i))
    out.sort()
    return out


@st.composite
def csr(draw):
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=25))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # few distinct values: ties (broken by peak position) are common
    mz = np.array(draw(st.lists(st.sampled_from([0.5, 50.0, 50.0000001, 80.25, 120.0, 300.0, 1000.0]),
                                min_size=int(offsets[-1]), max_size=int(offsets[-1]))), dtype=np.float64)
    n = len(lengths)
    pmz = np.array(draw(st.lists(st.sampled_from([np.nan, 60.0, 150.0, 500.0, 1200.0]), min_size=n, max_size=n)))
    groups = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int8)
    return offsets, mz, pmz, groups


@settings(max_examples=150, deadline=None)
@given(data=csr(), n_groups=st.sampled_from([1, 3]), losses=st.booleans())
def test_sorted_peak_index_equals_naive_sort(data, n_groups, losses):
    offsets, mz, pmz, groups = data
    rows_ok = np.isfinite(pmz) if losses else None
    order, vals, spec, bounds = fk.sorted_peak_index(offsets, mz, rows_ok, groups, n_groups,
                                                     precursor_mz=pmz if losses else None)
    want = naive(offsets, mz, rows_ok, groups, n_groups, pmz if losses else None)
    assert order.dtype == np.int64 and vals.dtype == np.float32 and spec.dtype == np.int32
    assert [(v, p, i) for _, v, p, i in want] == list(zip(vals.tolist(), order.tolist(), spec.tolist()))
    counts = np.bincount([g for g, *_ in want], minlength=n_groups)[: max(1, n_groups)]
    assert bounds.tolist() == [0, *np.cumsum(counts).tolist()]
    if losses:  # precomputed loss values give the same index
        values = np.repeat(pmz, np.diff(offsets)) - mz
        for a, b in zip(fk.sorted_peak_index(offsets, values, rows_ok, groups, n_groups), (order, vals, spec, bounds)):
            np.testing.assert_array_equal(a, b)


def test_sorted_peak_index_signed_values_and_large_input():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 40, size=5000)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.normal(0.0, 300.0, size=int(offsets[-1]))  # negative losses sort below positive ones
    values[::97] = 0.0
    order, vals, spec, bounds = fk.sorted_peak_index(offsets, values, threads=2)
    v32 = values.astype(np.float32)
    np.testing.assert_array_equal(order, np.argsort(v32, kind="stable"))
    np.testing.assert_array_equal(vals, v32[order])
    np.testing.assert_array_equal(spec, np.repeat(np.arange(5000, dtype=np.int32), lengths)[order])
    assert bounds.tolist() == [0, v32.shape[0]]


def test_sorted_peak_index_refuses_groups_out_of_range():
    offsets = np.array([0, 2, 3], dtype=np.int64)
    mz = np.array([1.0, 2.0, 3.0])
    for groups in (np.array([0, 2], np.int8), np.array([-1, 0], np.int8), np.array([0], np.int8)):
        with pytest.raises(ValueError, match="groups"):
            fk.sorted_peak_index(offsets, mz, None, groups, 2)


def test_sorted_peak_index_refuses_mismatched_shapes():
    offsets = np.array([0, 2, 3], dtype=np.int64)
    mz = np.array([1.0, 2.0, 3.0])
    bad = [dict(values=mz[:2]), dict(offsets=np.array([1, 2, 3])), dict(rows_ok=np.array([True])),
           dict(precursor_mz=np.array([5.0]), rows_ok=np.array([True, True])), dict(offsets=np.array([], np.int64))]
    for kw in bad:
        args = dict(offsets=offsets, values=mz) | kw
        with pytest.raises(ValueError):
            fk.sorted_peak_index(**args)


def naive_top_peaks(offsets, mz, intensity):
    """m/z of the most and second most intense peak (the first of equal intensities wins), inf if none."""
    out = []
    for i in range(len(offsets) - 1):
        order = sorted(range(offsets[i], offsets[i + 1]), key=lambda p: -intensity[p])  # stable: first wins
        out.append([mz[order[0]] if order else math.inf, mz[order[1]] if len(order) > 1 else math.inf])
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(50, 500), st.sampled_from([1.0, 2.0, 2.0, 3.5, 7.0])), max_size=8),
                max_size=12))
def test_top_peaks_equal_naive(spectra):
    """The scan order's keys (:func:`fastspec.kernels.peaks.top_peaks_mz`), ties and empty spectra included."""
    from fastspec.kernels.peaks import top_peaks_mz

    offsets = np.zeros(len(spectra) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in spectra], out=offsets[1:])
    mz = np.array([p[0] for s in spectra for p in s], dtype=np.float64)
    inten = np.array([p[1] for s in spectra for p in s], dtype=np.float32)
    got = top_peaks_mz(offsets, mz, inten)
    assert got.shape == (len(spectra), 2)
    assert got.tolist() == naive_top_peaks(offsets, mz.tolist(), inten.tolist())
