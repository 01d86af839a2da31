"""Identity-search pruning kernels (:mod:`fastspec.kernels.window`) against naive Python references.

The precursor-block index re-sorts the precursor-ordered peaks by m/z within blocks; the window bounds
sum every pair within tolerance (``reference.cosine_bound``), which is never below the greedy cosine
(``reference.cosine``). m/z values sit on a 1/8 grid and the tolerance is 0.1, so no pair lies near
the window's edge, where the kernels' float32 slack may count one more pair than the reference.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from fastspec.kernels.window import block_index, block_summary, second_round, window_bounds


def _library(rng, n):
    mz, it = [], []
    for _ in range(n):
        k = int(rng.integers(1, 9))
        mz.append(np.sort(rng.choice(np.arange(800, 1000) / 8.0, k, replace=False)))
        it.append(rng.choice([0.5, 1.0, 3.0, 10.0], k).astype(np.float32))
    off = np.zeros(n + 1, np.int64)
    np.cumsum([len(m) for m in mz], out=off[1:])
    flat_mz = np.concatenate(mz) if n else np.zeros(0)
    flat_it = np.concatenate(it) if n else np.zeros(0, np.float32)
    norm = np.array([np.sqrt((np.asarray(i, np.float64) ** 2).sum()) for i in it])
    return off, flat_mz, flat_it, norm, mz, it


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 3, 8, 64]))
def test_block_index_vs_naive(seed, block):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    off, mz, it, norm, *_ = _library(rng, n)
    weights = np.stack([it / np.repeat(norm, np.diff(off)), rng.random(mz.shape[0])]).astype(np.float32)
    b_mz, b_loc, b_w = block_index(off, mz, weights, block)
    assert b_w.shape == weights.shape
    for b in range(0, n, block):
        e0, e1 = off[b], off[min(n, b + block)]
        want = sorted((np.float32(mz[p]), s - b) for s in range(b, min(n, b + block)) for p in range(off[s], off[s + 1]))
        np.testing.assert_array_equal(b_mz[e0:e1], np.float32([w[0] for w in want]))
        # equal m/z within a block: any order of their spectra, so compare as sets
        assert sorted(zip(b_mz[e0:e1].tolist(), b_loc[e0:e1].tolist())) == want
        for t in range(e0, e1):  # each entry carries its own peak's weights
            s = b + int(b_loc[t])
            p = off[s] + int(np.flatnonzero(np.float32(mz[off[s]:off[s + 1]]) == b_mz[t])[0])
            np.testing.assert_array_equal(b_w[:, t], weights[:, p])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 4, 16]), n_first=st.integers(1, 6),
       widen=st.booleans(), shuffled=st.booleans(), summary=st.booleans())
def test_window_bounds_vs_naive(seed, block, n_first, widen, shuffled, summary):
    """``extra`` (modified cosine's precursor window) widens each query's peak windows: 0.1 + 0.125 Da
    stays clear of the 1/8 grid too. Query peaks out of m/z order (``shuffled``) give the same bounds
    (each block's search starts over where the peaks step back), and so does searching through the
    block summary."""
    rng = np.random.default_rng(seed)
    n, nr = int(rng.integers(1, 60)), int(rng.integers(1, 6)) * (4 if summary else 1)
    off, mz, it, norm, lmz, lit = _library(rng, n)
    b_mz, b_loc, b_w = block_index(off, mz, it / np.repeat(norm, np.diff(off)), block)
    b_w = b_w[0]
    qoff, qmz, qw, pos = [0], [], [], []
    w_off = [0]
    queries = []
    for _ in range(nr):
        _, _, _, _, m1, i1 = _library(rng, 1)
        if shuffled:
            perm = rng.permutation(m1[0].shape[0])
            m1, i1 = [m1[0][perm]], [i1[0][perm]]
        queries.append((m1[0], i1[0]))
        qn = np.sqrt((i1[0].astype(np.float64) ** 2).sum())
        qmz.extend(m1[0].tolist())
        qw.extend((i1[0] / qn).tolist())
        qoff.append(len(qmz))
        lo = int(rng.integers(0, n))
        keep = [t for t in range(lo, min(n, lo + int(rng.integers(0, 30)))) if rng.random() < 0.8]
        pos.extend(keep)
        w_off.append(len(pos))
    extra = np.where(rng.random(nr) < 0.5, 0.125, 0.0) if widen else None
    min_matches = int(rng.integers(1, 3))
    ub, cnt, first, rest, f_off, f_pos = window_bounds(
        np.array(qoff), np.array(qmz), np.array(qw), np.array(w_off), np.array(pos, np.int64), off, b_mz, b_loc, b_w,
        block, 0.1, 0.0, n_first, extra=extra, b_sum=block_summary(b_mz) if summary else None, min_matches=min_matches)
    keep = first & (cnt >= min_matches)  # the first round's CSR, collected in the kernel
    np.testing.assert_array_equal(f_off, np.concatenate([[0], np.cumsum(keep)])[w_off])
    np.testing.assert_array_equal(f_pos, np.array(pos, np.int64)[keep])
    for r, (qm, qi) in enumerate(queries):
        c0, c1 = w_off[r], w_off[r + 1]
        if c1 - c0 <= n_first:
            assert np.isinf(ub[c0:c1]).all() and first[c0:c1].all() and rest[r] == -np.inf
            continue
        tol = 0.1 + (0.0 if extra is None else extra[r])
        want = [ref.cosine_bound(qm, qi, lmz[p], lit[p], tol=tol) for p in pos[c0:c1]]
        np.testing.assert_allclose(ub[c0:c1], [w[0] for w in want], rtol=1e-5, atol=1e-7)
        assert cnt[c0:c1].tolist() == [w[1] for w in want]
        for t, p in enumerate(pos[c0:c1]):  # a bound, never below the exact score
            assert ub[c0 + t] * (1 + 1e-5) + 1e-7 >= ref.cosine(qm, qi, lmz[p], lit[p], tol=0.1)[0]
        thr = sorted(ub[c0:c1], reverse=True)[n_first - 1]
        assert first[c0:c1].tolist() == [bool(u >= thr and u > 0) for u in ub[c0:c1]]
        assert rest[r] == max([u for u, f in zip(ub[c0:c1], first[c0:c1]) if not f], default=-np.inf)


def test_second_round_vs_naive():
    rng = np.random.default_rng(3)
    w_off = np.array([0, 5, 5, 12, 20])
    ub = rng.random(20)
    cnt = rng.integers(0, 4, 20).astype(np.int32)
    first = rng.random(20) < 0.3
    theta = np.array([0.5, 0.1, 0.95, -np.inf])
    vals = rng.permutation(1000)[:20].astype(np.int64)
    rows, offs, got = second_round(w_off, ub, cnt, first, theta, 2, 1e-4, 1e-6, vals)
    want_rows, want = [], []
    for r in range(4):
        idx = range(w_off[r], w_off[r + 1])
        more = [t for t in idx if not first[t] and cnt[t] >= 2 and ub[t] * (1 + 1e-4) + 1e-6 >= theta[r]]
        if more:
            want_rows.append(r)
            want.append([int(vals[t]) for t in more])
    assert rows.tolist() == want_rows and len(want_rows) >= 2
    assert [got[offs[j]:offs[j + 1]].tolist() for j in range(len(want_rows))] == want
    # window_bounds' largest bound outside the first round: a window it rules out is passed over
    rest = np.array([max([ub[t] for t in range(w_off[r], w_off[r + 1]) if not first[t]], default=-np.inf)
                     for r in range(4)])
    assert [a.tolist() for a in second_round(w_off, ub, cnt, first, theta, 2, 1e-4, 1e-6, vals, rest)] == \
        [rows.tolist(), offs.tolist(), got.tolist()]
    skip = rest.copy()
    skip[want_rows[0]] = theta[want_rows[0]] - 1.0  # a lower rest passes that window over
    rows2, _, _ = second_round(w_off, ub, cnt, first, theta, 2, 1e-4, 1e-6, vals, skip)
    assert rows2.tolist() == want_rows[1:]


@settings(max_examples=200, deadline=None)
@given(vals=st.lists(st.floats(0, 100, width=32), max_size=300), x=st.floats(-1, 101),
       cut=st.tuples(st.integers(0, 300), st.integers(0, 300)), runs=st.integers(1, 4))
def test_summary_search_is_searchsorted(vals, x, cut, runs):
    """Through the block summary (every 32nd entry), the search still finds numpy's left insertion point in
    any range of one ascending run; the array holds several runs (blocks), as the block index does."""
    import fastspec.kernels.window as kw

    arr = np.sort(np.array(vals, dtype=np.float32))
    bounds = np.linspace(0, arr.shape[0], runs + 1).astype(int)
    # each run lower than the one before: ascending within runs only, as in the block index
    whole = np.concatenate([arr[a:b] - 200 * j for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
                           + [np.zeros(0, np.float32)]).astype(np.float32)
    j = int(np.random.default_rng(len(vals)).integers(0, runs))  # one run, and a range inside it
    a0, a1 = int(bounds[j]), int(bounds[j + 1])
    lo, hi = sorted(a0 + min(c, a1 - a0) for c in cut)
    x = x - 200 * j
    got = kw._seek_u(whole, kw.block_summary(whole), x, np.uint64(lo), np.uint64(hi))
    assert int(got) == lo + int(np.searchsorted(whole[lo:hi].astype(np.float64), x, side="left"))
    with pytest.raises(ValueError):  # a summary of another array is refused
        window_bounds(np.zeros(1, np.int64), np.zeros(0), np.zeros(0), np.zeros(1, np.int64), np.zeros(0, np.int64),
                      np.zeros(1, np.int64), whole, np.zeros(whole.shape[0], np.uint16), np.zeros(whole.shape[0]), 1,
                      0.1, 0.0, 1, b_sum=np.zeros(whole.shape[0] // 32 + 2, np.float32))


@pytest.mark.parametrize("name", ["_lower_bound_u", "_gallop_u"])
@settings(max_examples=200, deadline=None)
@given(vals=st.lists(st.floats(0, 100, width=32), max_size=80), x=st.floats(-1, 101),
       cut=st.tuples(st.integers(0, 80), st.integers(0, 80)))
def test_lower_bound_searches_are_searchsorted(name, vals, x, cut):
    """The branch-free halving and the forward (galloping) search both find numpy's left insertion point."""
    import fastspec.kernels.window as kw

    arr = np.sort(np.array(vals, dtype=np.float32))
    lo, hi = sorted(min(c, arr.shape[0]) for c in cut)
    got = getattr(kw, name)(arr, x, np.uint64(lo), np.uint64(hi))
    assert int(got) == lo + int(np.searchsorted(arr[lo:hi].astype(np.float64), x, side="left"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6))
def test_merged_topk_is_topk_of_the_union(seed, k):
    """The second round scores only candidates outside the first; merging the two top-k lists gives the
    one top-k over all of them, ties (frequent: scores on a coarse grid) to the lowest library index,
    short lists padded with -1."""
    from fastspec.search import _merge_topk

    rng = np.random.default_rng(seed)
    n = 4

    def topk(cands):
        s, i, m = np.zeros((n, k)), np.full((n, k), -1, np.int64), np.zeros((n, k), np.int32)
        for r, row in enumerate(cands):
            for j, (idx, sc, mt) in enumerate(sorted(row, key=lambda c: (-c[1], c[0]))[:k]):
                s[r, j], i[r, j], m[r, j] = sc, idx, mt
        return s, i, m

    a, b = [], []
    for _ in range(n):
        ids = rng.permutation(50)[: int(rng.integers(0, 12))]
        row = [(int(j), float(rng.integers(0, 4)) / 4, int(rng.integers(1, 9))) for j in ids]
        cut = int(rng.integers(0, len(row) + 1))
        a.append(row[:cut])
        b.append(row[cut:])
    got = _merge_topk(topk(a), topk(b))
    want = topk([x + y for x, y in zip(a, b)])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
