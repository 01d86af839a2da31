"""The alive band and the early-stop drop of the bound search (:mod:`fastspec.kernels.fragment`) against naive bounds."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspec.kernels import fragment as fk


def _xlog2x(x: float) -> float:
    return x * math.log2(x) if x > 0 else 0.0


def _g(a: float, b: float) -> float:
    return 0.5 * (_xlog2x(a + b) - _xlog2x(a) - _xlog2x(b))


def bound(kind: int, q: float, rest_mass: float, w: float) -> float:
    """Most a spectrum first reached through this peak with scan weight ``w`` can score (naive)."""
    if kind == fk.KIND_PRODUCT:
        return q * w + math.sqrt(rest_mass) * math.sqrt(max(0.0, 1.0 - w * w))
    l = w * w  # entropy scan weights are square roots
    return _g(q, l) + (_g(rest_mass, 1.0 - l) if rest_mass > 0 and l < 1 else 0.0)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from([fk.KIND_PRODUCT, fk.KIND_ENTROPY]), q=st.floats(0.001, 1.0),
       share=st.floats(0.0, 1.0), theta=st.floats(-0.1, 1.0))
def test_band_is_the_set_that_can_reach_theta(kind, q, share, theta):
    # the query's weights: cosine L2-normalised (q**2 + rest = 1), entropy sum-normalised (q + rest = 1)
    rest_mass = (1.0 - q * q if kind == fk.KIND_PRODUCT else 1.0 - q) * share
    lo, hi = fk._alive_band(kind, q, rest_mass, theta)
    grid = np.linspace(0.0, 1.0, 2001)
    for w in grid:
        alive = bound(kind, q, rest_mass, float(w)) * (1 + fk.BOUND_RTOL) + fk.BOUND_ATOL >= theta
        if alive:  # never rule out what could reach theta
            assert lo <= w <= hi, (w, lo, hi)
        elif lo + 1e-5 < w < hi - 1e-5:  # and the band is not loose
            pytest.fail(f"w={w} inside ({lo}, {hi}) cannot reach theta")


def test_band_edges():
    assert fk._alive_band(fk.KIND_PRODUCT, 0.5, 0.75, -np.inf) == (-1.0, 2.0)  # no threshold: everything
    lo, hi = fk._alive_band(fk.KIND_PRODUCT, 0.5, 0.75, 1.5)  # above the best possible score: nothing
    assert lo > hi


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from([fk.KIND_PRODUCT, fk.KIND_ENTROPY]), q_rest=st.floats(0.0, 1.0),
       theta=st.floats(0.0, 1.2), seed=st.integers(0, 2**31 - 1), compact=st.booleans())
def test_drop_keeps_every_spectrum_that_can_reach_theta(kind, q_rest, theta, seed, compact):
    """_drop_hopeless (the early-stop drop) never rules out a spectrum whose partial bound plus the most
    the unscanned query mass can add against its unmatched library mass reaches theta (naive bound);
    for entropy the kernel uses the tangent of g at 1, which must lie above it. With ``compact`` the
    sums sit in other rows (``slots``), which follow the kept spectra."""
    rng = np.random.default_rng(seed)
    n = 64
    a = rng.uniform(0.0, 1.0, n).astype(np.float32)
    matched = rng.uniform(0.0, 1.0, n).astype(np.float32)
    work = np.stack([a, matched], axis=1).astype(np.float32)
    touched = np.arange(n, dtype=np.int32)
    live = np.zeros(n // 64 + 1, dtype=np.uint64)
    min_gap = np.full(n, 1.0, dtype=np.float32)
    slots = rng.permutation(n).astype(np.int32)
    acc = np.empty_like(work)
    acc[slots] = work
    keep, nd = fk._drop_hopeless(kind, touched, n, np.zeros(n, np.int32), 0, acc if compact else work, compact, slots,
                                 np.zeros(n, np.uint16), False, live, q_rest, theta, True, min_gap, 0.05, 0,
                                 np.zeros((1, 0), np.int32), np.zeros((n, 0), np.int32), np.zeros(0, np.bool_), False)
    kept = set(touched[:keep].tolist())
    if compact:  # each kept spectrum still names its own row
        assert all(np.array_equal(acc[slots[v]], work[touched[v]]) for v in range(keep))
    assert keep + nd == n
    for i in range(n):
        rest_l = max(0.0, 1.0 - float(matched[i]))
        most = math.sqrt(q_rest * rest_l) if kind == fk.KIND_PRODUCT else _g(q_rest, rest_l)
        if float(a[i]) + most >= theta:
            assert i in kept, (i, float(a[i]), most, theta)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 700), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_compact_rows_are_ranks_in_the_live_bitmap(n, density, seed):
    """_compact_live moves the live spectra's sums to rows 0.. in spectrum order and _compact_row finds
    each one's row from the bitmap (naive reference: position among the sorted live ids)."""
    rng = np.random.default_rng(seed)
    ids = np.flatnonzero(rng.random(n) < density)
    live = np.zeros(n // 64 + 1, dtype=np.uint64)
    for c in ids:
        live[c // 64] |= np.uint64(1) << np.uint64(c % 64)
    work = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    before = work.copy()
    cw = np.full((n, 2), -1.0, dtype=np.float32)
    snap, rank = np.zeros_like(live), np.zeros(live.shape[0], dtype=np.int64)
    touched, slots = np.zeros(n, np.int32), np.zeros(n, np.int32)
    got = fk._compact_live(live, snap, rank, work, cw, touched, slots)
    assert got == ids.size
    assert np.array_equal(touched[:got], ids) and np.array_equal(slots[:got], np.arange(got))
    assert np.array_equal(cw[:got], before[ids]) and not work[ids].any()
    assert np.array_equal(np.delete(work, ids, axis=0), np.delete(before, ids, axis=0))
    assert [fk._compact_row(rank, snap, c) for c in ids] == list(range(ids.size))


def _code(w: float) -> int:
    """Naive band code of one scan weight (``quantize_weights``)."""
    return int(min(255, max(0, math.floor(float(w) * 255)))) if math.isfinite(w) else 0


@settings(max_examples=200, deadline=None)
@given(ws=st.lists(st.floats(-0.5, 1.5, width=32), min_size=1, max_size=50),
       lo=st.floats(-1.0, 2.0), hi=st.floats(-1.0, 2.0))
def test_band_codes_never_lose_a_weight_in_the_band(ws, lo, hi):
    # the scans pre-filter entries by code: every weight within [lo, hi] must pass (extra ones are
    # tested on their float32 weight afterwards)
    w = np.array(ws + [np.nan], dtype=np.float32)
    codes = fk.quantize_weights(w)
    assert codes.tolist() == [_code(x) for x in w.tolist()]
    lo8, hi8 = fk._q8_band(lo, hi)
    for x, c in zip(w.tolist(), codes.tolist()):
        if lo <= x <= hi:
            assert lo8 <= c <= hi8
