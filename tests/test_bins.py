"""Inverted bin index (fastspec.kernels.bins) against the pure-Python binned vectors of tests/reference.py.

The kernel returns candidates, not hits: every library spectrum whose binned cosine can be in a query's
top-k (within the rounding margin), which the search then scores exactly. The checks: postings are the
transpose of the binned vectors; no spectrum that belongs in the top-k is left out; nothing returned is
far below the k-th score or fails a filter; near-ties beyond the first output capacity come back.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import reference as ref
from fastspec import similarity
from fastspec.errors import ParameterError
from fastspec.kernels.bins import MARGIN, BinPostings, BinWorkspace, bin_peaks, binned_candidates

BW = 0.5


def _spectra(rng, n, pool):
    mzs, ints, pmz = [], [], []
    for _ in range(n):
        m = np.sort(rng.choice(pool, size=rng.integers(1, 9), replace=False) + rng.uniform(0, 0.4))
        mzs.append(m)
        ints.append(rng.uniform(0.05, 1.0, m.shape[0]))
        pmz.append(float(m.max() + rng.uniform(1, 40)) if rng.random() < 0.8 else math.nan)
    return mzs, ints, pmz


def _prepared(mzs, ints, pmz, **opts):
    off = np.zeros(len(mzs) + 1, np.int64)
    np.cumsum([len(m) for m in mzs], out=off[1:])
    cat = np.concatenate(mzs) if mzs else np.zeros(0)
    return similarity.prepare_csr(off, cat, np.concatenate(ints) if ints else np.zeros(0), np.asarray(pmz, float),
                                  "binned_cosine", **opts)


def _postings(p, n_bins, chunk):
    """Postings built in chunks of ``chunk`` spectra (two passes), as Library search builds them."""
    norm = np.repeat(p.norm, np.diff(p.offsets))
    vals = np.where(norm > 0, p.w / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)
    n = p.offsets.shape[0] - 1
    post = BinPostings(n_bins, n)
    parts = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        e0, e1 = p.offsets[a], p.offsets[b]
        parts.append((p.offsets[a: b + 1] - e0, p.pos[e0:e1].astype(np.int32), vals[e0:e1]))
        post.add(*parts[-1])
    post.finish()
    for part in parts:
        post.add(*part)
    return post, vals


def _unit(vec: dict) -> dict:
    nrm = math.sqrt(sum(v * v for v in vec.values()))
    return {b: (v / nrm if nrm > 0 else 0.0) for b, v in vec.items()}


def _edge_spectra(rng, n):
    """Spectra with the cases the linear binning must get right: several peaks in one bin, the precursor
    in a peak's bin / before / between / after them, no precursor, zero intensities, negative m/z and
    -0.0, m/z beyond max_mz, no peaks at all."""
    mzs, ints, pmz = [], [], []
    for i in range(n):
        m = np.sort(rng.choice(np.r_[rng.uniform(-3, 60, 6), [-0.0, 10.1, 10.2, 10.3, 30.05]], size=rng.integers(0, 9)))
        v = rng.uniform(0, 5, m.shape[0])
        v[rng.random(m.shape[0]) < 0.1] = 0.0
        mzs.append(m)
        ints.append(v)
        pmz.append([math.nan, 10.25, -1.0, 0.2, 30.1, 59.9, 75.0, float(m[0]) if m.size else 5.0][i % 8])
    return mzs, ints, pmz


@pytest.mark.parametrize("opts", [{}, {"precursor_peak": 7.0}, {"base_peak": 100.0, "max_mz": 40.0},
                                  {"base_peak": -1.0, "precursor_peak": 0.0},
                                  {"precursor_peak": 100.0, "base_peak": 100.0, "intensity_power": 0.5,
                                   "mz_power": 1.0}, {"intensity_power": 2.0, "mz_power": 2.0, "max_mz": 25.0},
                                  {"intensity_power": 0.0, "precursor_peak": 100.0, "base_peak": 100.0}])
@pytest.mark.parametrize("threads", [1, 2])
def test_bin_peaks_equals_reference_vectors(opts, threads):
    """The linear binning pass equals the pure-Python binned vectors (bins ascending, sums per bin), in
    its serial and parallel builds; and bit for bit the sort-based numpy path prepare_csr keeps for
    peaks out of order."""
    import fastspec.kernels.bins as kb

    rng = np.random.default_rng(11)
    mzs, ints, pmz = _edge_spectra(rng, 3000)
    off = np.zeros(len(mzs) + 1, np.int64)
    np.cumsum([len(m) for m in mzs], out=off[1:])
    cat, icat = np.concatenate(mzs), np.concatenate(ints)
    got = bin_peaks(off, cat, icat, np.asarray(pmz), 0.5, threads=threads, **opts)
    assert got is not None
    b_off, bins, vals = got
    for i in range(len(mzs)):
        want = ref.binned_vector(mzs[i], ints[i], pmz[i], 0.5, **opts)
        sl = slice(b_off[i], b_off[i + 1])
        assert bins[sl].tolist() == sorted(want)
        np.testing.assert_allclose(vals[sl], [want[b] for b in sorted(want)], rtol=1e-13, atol=0)
    if opts.get("base_peak", 1.0) <= 0:  # the kernel's edge case; the public API refuses it
        with pytest.raises(ParameterError, match="base_peak"):
            similarity.prepare_csr(off, cat, icat, np.asarray(pmz), "binned_cosine", bin_width=0.5, **opts)
        return
    fast = similarity.prepare_csr(off, cat, icat, np.asarray(pmz), "binned_cosine", bin_width=0.5, **opts)
    orig = kb.bin_peaks
    kb.bin_peaks = lambda *a, **k: None  # the numpy path
    try:
        slow = similarity.prepare_csr(off, cat, icat, np.asarray(pmz), "binned_cosine", bin_width=0.5, **opts)
    finally:
        kb.bin_peaks = orig
    for a in ("offsets", "pos", "w", "norm"):
        np.testing.assert_array_equal(getattr(fast, a), getattr(slow, a), err_msg=a)
    assert fast.params == slow.params


def test_bin_peaks_out_of_order_and_bad_calls():
    """Peaks out of m/z order (also around a NaN m/z) make bin_peaks decline, and prepare_csr then bins
    them the sort-based way, as the reference does; bad arguments are refused."""
    off = np.array([0, 3, 6])
    mz = np.array([1.0, 2.2, 2.4, 5.0, np.nan, 3.0])
    inten = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pmz = np.array([np.nan, 2.3])
    assert bin_peaks(off, mz, inten, pmz, 1.0) is None
    p = similarity.prepare_csr(off, mz, inten, pmz, "binned_cosine", bin_width=1.0, precursor_peak=1.0)
    assert p.pos.tolist() == [1.0, 2.0, 2.0, 3.0, 5.0]
    np.testing.assert_allclose(p.w, [1.0, 5.0, 1.0, 6.0, 4.0])
    with pytest.raises(ValueError):
        bin_peaks(off, mz, inten, pmz, 0.0)
    with pytest.raises(ValueError):
        bin_peaks(off, mz, inten, pmz, 1.0, intensity_power=0.7)  # numpy's pow() may differ in the last bit
    with pytest.raises(ValueError):
        bin_peaks(off[:2], mz, inten, pmz, 1.0)


@pytest.mark.parametrize("opts", [{"bin_width": BW}, {"bin_width": BW, "precursor_peak": 100.0, "base_peak": 100.0,
                                                      "intensity_power": 0.5}])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_postings_are_the_transpose_of_the_binned_vectors(opts, chunk):
    rng = np.random.default_rng(3)
    mzs, ints, pmz = _spectra(rng, 60, np.arange(50.0, 90.0, 1.0))
    p = _prepared(mzs, ints, pmz, tolerance=f"{BW}da", **{k: v for k, v in opts.items() if k != "bin_width"})
    post, _ = _postings(p, 400, chunk)
    want: dict[int, list] = {}
    for s, (m, i, pm) in enumerate(zip(mzs, ints, pmz)):
        vec = _unit(ref.binned_vector(m, i, pm, BW, **{k: v for k, v in opts.items() if k != "bin_width"}))
        for b, v in vec.items():
            want.setdefault(b, []).append((s, v))
    for b in range(post.n_bins):
        got = list(zip(post.spectra[post.bin_offsets[b]: post.bin_offsets[b + 1]].tolist(),
                       post.values[post.bin_offsets[b]: post.bin_offsets[b + 1]].tolist()))
        exp = want.get(b, [])
        assert [s for s, _ in got] == [s for s, _ in exp], b  # spectra ascending within a bin
        np.testing.assert_allclose([v for _, v in got], [v for _, v in exp], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("k,min_matches,min_score,filtered,threads",
                         [(1, 1, 0.0, False, 1), (5, 1, 0.0, True, 1), (4, 2, 0.2, True, 2), (30, 1, 0.0, False, 2)])
def test_candidates_hold_the_exact_top_k(k, min_matches, min_score, filtered, threads):
    rng = np.random.default_rng(11)
    pool = np.arange(60.0, 80.0, 1.0)  # few bins: many shared bins and near-ties
    lm, li, lp = _spectra(rng, 300, pool)
    qm, qi, qp = _spectra(rng, 25, pool)
    lm, li, lp = lm + lm[:20], li + li[:20], lp + lp[:20]  # exact duplicates: ties
    lprep = _prepared(lm, li, lp, tolerance=f"{BW}da")
    qprep = _prepared(qm, qi, qp, tolerance=f"{BW}da")
    post, _ = _postings(lprep, 200, 64)
    qn = np.repeat(qprep.norm, np.diff(qprep.offsets))
    qv = np.where(qn > 0, qprep.w / np.where(qn > 0, qn, 1.0), 0.0)
    n_lib = len(lm)
    codes = dict(q_codes=rng.integers(-1, 2, (len(qm), 1)).astype(np.int32),
                 lib_codes=rng.integers(-1, 2, (n_lib, 1)).astype(np.int32), sym=np.array([True])) if filtered else {}
    rows = np.arange(len(qm))
    offs, ids = binned_candidates(qprep.offsets, qprep.pos, qv, rows, post, k, min_matches=min_matches,
                                  min_score=min_score, workspace=BinWorkspace(n_lib, threads), threads=threads, **codes)
    assert offs.shape == (len(qm) + 1,)
    for r in range(len(qm)):
        qvec = _unit(ref.binned_vector(qm[r], qi[r], qp[r], BW))
        exact = []
        for c in range(n_lib):
            lvec = _unit(ref.binned_vector(lm[c], li[c], lp[c], BW))
            shared = [b for b in qvec if b in lvec]
            ok = len(shared) >= max(1, min_matches)
            if codes:
                qc, lc = codes["q_codes"][r, 0], codes["lib_codes"][c, 0]
                ok &= bool(qc == -1 or lc == -1 or qc == lc)
            exact.append((sum(qvec[b] * lvec[b] for b in shared), ok))
        eligible = sorted((s for s, ok in exact if ok and s >= min_score), reverse=True)
        kth = eligible[k - 1] if len(eligible) >= k else -math.inf
        got = ids[offs[r]: offs[r + 1]].tolist()
        assert len(set(got)) == len(got)
        for c, (s, ok) in enumerate(exact):
            if ok and s >= max(kth, min_score):
                assert c in got, (r, c, s, kth)
        for c in got:
            s, ok = exact[c]
            assert ok and s >= max(kth, min_score) - 2 * MARGIN, (r, c, s, kth)


def test_more_near_ties_than_the_first_capacity():
    """200 identical library spectra tie for every slot: the first output capacity (64 for k = 3) is
    exceeded, and the second round returns all of them."""
    m, i = [np.array([70.1, 75.2, 80.3])], [np.array([1.0, 0.5, 0.2])]
    lprep = _prepared(m * 200 + [np.array([90.0])], i * 200 + [np.array([1.0])], [math.nan] * 201,
                      tolerance=f"{BW}da")
    post, _ = _postings(lprep, 300, 50)
    qprep = _prepared(m * 2, i * 2, [math.nan] * 2, tolerance=f"{BW}da")
    qv = qprep.w / np.repeat(qprep.norm, np.diff(qprep.offsets))
    offs, ids = binned_candidates(qprep.offsets, qprep.pos, qv, np.array([1, 0]), post, 3, threads=1)
    np.testing.assert_array_equal(offs, [0, 200, 400])
    assert sorted(ids[:200].tolist()) == list(range(200)) and sorted(ids[200:].tolist()) == list(range(200))


def test_bad_calls():
    post = BinPostings(4, 2)
    with pytest.raises(ValueError, match="not complete"):
        binned_candidates(np.array([0, 1]), np.array([1.0]), np.array([1.0]), np.array([0]), post, 1)
    post.add(np.array([0, 1, 2]), np.array([1, 2], np.int32), np.array([1.0, 1.0], np.float32))
    post.finish()
    post.add(np.array([0, 1, 2]), np.array([1, 2], np.int32), np.array([1.0, 1.0], np.float32))
    with pytest.raises(ValueError, match="k must"):
        binned_candidates(np.array([0, 1]), np.array([1.0]), np.array([1.0]), np.array([0]), post, 0)
    offs, ids = binned_candidates(np.array([0, 1]), np.array([1.0]), np.array([1.0]), np.array([0]), post, 1)
    assert offs.tolist() == [0, 1] and ids.tolist() == [0]
    assert post.nbytes == post.bin_offsets.nbytes + 2 * 4 * 2  # the counting arrays are gone
    with pytest.raises(ValueError, match="more spectra"):
        post.add(np.array([0, 1]), np.array([1], np.int32), np.array([1.0], np.float32))


def test_passes_that_disagree_are_refused():
    chunk = (np.array([0, 2]), np.array([1, 3], np.int32), np.array([0.6, 0.8], np.float32))
    for second, match in [((np.array([0, 2]), np.array([1, 1], np.int32), np.array([0.6, 0.8], np.float32)),
                           "more entries"),
                          ((np.array([0, 1]), np.array([1], np.int32), np.array([1.0], np.float32)), "fewer")]:
        post = BinPostings(5, 1)
        post.add(*chunk)
        post.finish()
        with pytest.raises(ValueError, match=match):
            post.add(*second)
        assert not post.complete
