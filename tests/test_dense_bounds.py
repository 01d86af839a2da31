"""The dense bound scan (:mod:`fastspec.kernels.dense`) against a naive pure-Python scan of the same index,
and its bounds against exact scores (real MassBank spectra and generated clean spectra)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastspec import similarity
from fastspec.kernels import dense as dk
from fastspec.kernels import fragment as fk
from fastspec.library import Library, allowed_groups, apply_pipeline
from fastspec.spectra import Spectra
from test_library import massbank_subset

KINDS = {"cosine": fk.KIND_PRODUCT, "entropy": fk.KIND_ENTROPY, "unweighted_entropy": fk.KIND_ENTROPY,
         "modified_cosine": fk.KIND_PRODUCT, "hybrid": fk.KIND_ENTROPY}
LOSSES = ("modified_cosine", "hybrid")  # neutral losses too


@pytest.fixture(scope="module")
def setup(massbank_parquet, tmp_path_factory):
    lib_sp, q_sp = massbank_subset(massbank_parquet, n_lib=1500, n_query=40, seed=7)
    lib = Library.build(lib_sp, tmp_path_factory.mktemp("d") / "lib.fastspec", faiss=False)
    return lib, apply_pipeline(lib.pipeline, q_sp)


def _inputs(lib, q, metric):
    wname = {"modified_cosine": "cosine", "hybrid": "entropy"}.get(metric, metric)
    index = lib.peak_index(wname, 0.0, 1.0, losses=metric in LOSSES)
    qw = fk.peak_weights(q.offsets, q.mz, q.intensity, wname, 0.0, 1.0)
    return index, qw


def _nl_base(lib, q):
    return float(max(lib.manifest["counts"]["max_mz"], q.mz.max()))


def _p_big(index, metric):
    prec = np.asarray(index.prec_sorted)
    prec = prec[np.isfinite(prec)]
    return max(abs(prec[0]), abs(prec[-1]), 1.0) if metric == "hybrid" else 0.0


def _call(index, q, qw, metric, m, theta=None, tol=(0.02, 0.0), nl_base=0.0, threads=1, ws=None, **kw):
    return dk.dense_bounds(np.arange(len(q)), q.offsets, q.mz, qw, q.precursor_mz, index, kind=KINDS[metric],
                           use_nl=metric in LOSSES, tol_da=tol[0], tol_ppm=tol[1], m=m,
                           workspace=ws or fk.BoundWorkspace(index.starts.shape[0], 1), theta=theta,
                           q_groups=kw.pop("q_groups", allowed_groups(q.polarity)), nl_base=nl_base, threads=threads,
                           **kw)


def naive_dense(index, q, qw, metric, tol_da, tol_ppm, theta, m, min_score=0.0, lib_codes=None, q_codes=None,
                sym=None, nl_base=0.0):
    """The kernel's contract computed entry by entry: per query, each spectrum's sum of table entries over
    the index entries inside each query peak's fragment window (and, with losses, its neutral-loss
    window; allowed polarity groups only), the ``m`` best sums that can beat the floor (ties: lowest scan
    id), the best left out."""
    kind = KINDS[metric]
    table = dk.bound_table(kind)
    codes = dk.query_codes(kind, qw)
    sides = [(index.frag_mz, index.frag_spec, index.frag_q8, index.frag_groups)]
    if metric in LOSSES:
        sides.append((index.nl_mz, index.nl_spec, index.nl_q8, index.nl_groups))
    p_big = _p_big(index, metric)
    allowed = allowed_groups(q.polarity)
    scan_rows = np.asarray(index.scan_rows)
    nq = len(q)
    ids, bounds, nxt = np.full((nq, m), -1, np.int64), np.full((nq, m), -1.0), np.full(nq, -1.0)
    for r in range(nq):
        sums: dict[int, int] = {}
        pmz = float(q.precursor_mz[r])
        for p in range(q.offsets[r], q.offsets[r + 1]):
            for side, (vals, spec, q8, groups) in enumerate(sides):
                if side == 1 and not np.isfinite(pmz):
                    continue
                lo, hi = fk._side_window.py_func(side, float(q.mz[p]), pmz, tol_da, tol_ppm, nl_base, p_big)
                groups = np.asarray(groups)
                for g in range(groups.shape[0] - 1):
                    if not allowed[r, g]:
                        continue
                    for e in range(groups[g], groups[g + 1]):
                        if lo <= float(vals[e]) <= hi:
                            c = int(spec[e])
                            sums[c] = sums.get(c, 0) + int(table[codes[p], q8[e]])
        lim = max(theta[r], min_score)
        floor = 1
        if lim > fk.BOUND_ATOL:
            floor = max(1, math.floor((lim - fk.BOUND_ATOL) / (1 + fk.BOUND_RTOL) * dk.SCALE))
        ok = [(v, c) for c, v in sums.items() if v >= floor
              and (lib_codes is None or fk._passes.py_func(c, r, q_codes, lib_codes, sym))]
        ok.sort(key=lambda t: (-t[0], t[1]))
        for j, (v, c) in enumerate(ok[:m]):
            ids[r, j], bounds[r, j] = scan_rows[c], (v / dk.SCALE) * (1 + fk.BOUND_RTOL) + fk.BOUND_ATOL
        if len(ok) > m:
            nxt[r] = (ok[m][0] / dk.SCALE) * (1 + fk.BOUND_RTOL) + fk.BOUND_ATOL
    return ids, bounds, nxt


def assert_next(got, ref, bounds):
    """The kernel's next bound covers the best one left out (exact when its candidate buffer was never cut
    back) and never exceeds the last candidate's."""
    assert (got >= ref).all()
    assert ((got == -1) == (ref == -1)).all()
    last = np.where((bounds >= 0).any(1), bounds.min(1, where=bounds >= 0, initial=np.inf), np.inf)
    assert (got <= last).all()


@pytest.mark.parametrize("metric,tol", [("cosine", (0.02, 0.0)), ("entropy", (0.02, 0.0)),
                                        ("unweighted_entropy", (0.0, 20.0)), ("modified_cosine", (0.02, 0.0)),
                                        ("hybrid", (0.02, 0.0))])
@pytest.mark.parametrize("m,theta", [(5, None), (40, 0.3), (3000, None)])
def test_dense_bounds_vs_naive(setup, metric, tol, m, theta):
    lib, q = setup
    q = q[:12]
    index, qw = _inputs(lib, q, metric)
    th = np.full(len(q), -np.inf if theta is None else theta)
    ws = fk.BoundWorkspace(len(lib), 2)
    nl_base = _nl_base(lib, q)
    ref = naive_dense(index, q, qw, metric, tol[0], tol[1], th, m, nl_base=nl_base)
    for threads in (1, 2):
        ids, bounds, nxt, _ = _call(index, q, qw, metric, m, th, tol, nl_base, threads, ws)
        np.testing.assert_array_equal(ids, ref[0])
        np.testing.assert_array_equal(bounds, ref[1])
        assert_next(nxt, ref[2], bounds)
        assert (ids >= 0).sum() > len(q)  # the searches found candidates
        assert not ws.dense_acc(0).any() and not ws.dense_acc(1).any()  # accumulators left zeroed


def test_dense_bounds_filters_and_min_score(setup):
    """Filter codes (asymmetric unknowns) and min_score decide which sums are candidates, as the pruned
    kernel's do."""
    lib, q = setup
    q = q[:10]
    index, qw = _inputs(lib, q, "entropy")
    rng = np.random.default_rng(3)
    lib_codes = rng.integers(-1, 3, size=(len(lib), 2)).astype(np.int32)
    q_codes = rng.integers(-1, 3, size=(len(q), 2)).astype(np.int32)
    sym = np.array([True, False])
    th = np.full(len(q), -np.inf)
    ids, bounds, nxt, _ = _call(index, q, qw, "entropy", 25, th, q_codes=q_codes, lib_codes=lib_codes,
                                symmetric=sym, min_score=0.05)
    ref = naive_dense(index, q, qw, "entropy", 0.02, 0.0, th, 25, min_score=0.05, lib_codes=lib_codes,
                      q_codes=q_codes, sym=sym)
    np.testing.assert_array_equal(ids, ref[0])
    np.testing.assert_array_equal(bounds, ref[1])
    assert_next(nxt, ref[2], bounds)


def _exact(lib, q, metric, tolerance):
    name = {"hybrid": "entropy"}.get(metric, metric)
    kw = {"tolerance": tolerance}
    if name not in ("cosine", "modified_cosine"):  # as the search scores entropy: stored peaks, Flash windows
        kw.update(clean=False, hybrid=True) if metric == "hybrid" else kw.update(clean=False, flash=True)
    s, _ = similarity.score_matrix(similarity.prepare(q, name, **kw), similarity.prepare(lib.spectra(), name, **kw))
    return np.asarray(s)


@pytest.mark.parametrize("metric", ["cosine", "entropy", "unweighted_entropy", "modified_cosine", "hybrid"])
def test_dense_bounds_cover_exact_scores(setup, metric):
    """Every spectrum's bound is at least its exact score (real spectra, every library spectrum returned)."""
    lib, q = setup
    q = q[:20]
    index, qw = _inputs(lib, q, metric)
    ids, bounds, _, _ = _call(index, q, qw, metric, len(lib), nl_base=_nl_base(lib, q),
                              q_groups=np.ones((len(q), 3), bool))
    exact = _exact(lib, q, metric, 0.02)
    for r in range(len(q)):
        got = np.zeros(len(lib))
        ok = ids[r] >= 0
        got[ids[r][ok]] = bounds[r][ok]
        assert (got >= exact[r] - 1e-7).all()
        hit = exact[r] > 0.05
        if hit.any() and metric not in LOSSES:  # not loose: one-byte codes loosen a pair by a few thousandths
            assert (got[hit] - exact[r][hit]).max() < 0.1


@st.composite
def clean_spectra(draw, n):
    """Spectra whose peaks are more than 0.05 Da apart (clean at 0.02 Da)."""
    out_mz, out_int = [], []
    for _ in range(n):
        k = draw(st.integers(1, 12))
        gaps = draw(st.lists(st.floats(0.06, 40.0), min_size=k, max_size=k))
        mz = 50.0 + np.cumsum(gaps)
        it = np.array(draw(st.lists(st.floats(0.001, 1000.0), min_size=k, max_size=k)))
        out_mz.append(mz)
        out_int.append(it)
    return out_mz, out_int


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), metric=st.sampled_from(["cosine", "entropy", "modified_cosine", "hybrid"]))
def test_dense_bounds_cover_exact_scores_property(tmp_path_factory, data, metric):
    """Generated clean spectra, queries sharing some library peaks (shifted within the tolerance) or, with
    another precursor, neutral losses: bounds never fall below exact scores, and a spectrum against itself
    is bounded by at least 1."""
    lib_mz, lib_int = data.draw(clean_spectra(6))
    q_mz = [m + data.draw(st.floats(-0.015, 0.015)) for m in lib_mz[:3]]
    q_int = [i * data.draw(st.floats(0.1, 10.0)) for i in lib_int[:3]]
    pos = {"ion_mode": ["positive"] * 6}
    sp = Spectra.from_arrays(lib_mz, lib_int, precursor_mz=[900.0] * 6, metadata=pos)
    lib = Library.build(sp, tmp_path_factory.mktemp("p") / "l.fastspec", preprocess=None, faiss=False)
    q_pmz = [900.0 + data.draw(st.sampled_from([0.0, 14.01565, 100.5])) for _ in range(3)]
    q_mz = [m + (p - 900.0) * data.draw(st.booleans()) for m, p in zip(q_mz, q_pmz)]  # losses kept, or fragments
    q = Spectra.from_arrays(q_mz + lib_mz[:1], q_int + lib_int[:1], precursor_mz=q_pmz + [900.0],
                            metadata={"ion_mode": ["positive"] * 4})
    index, qw = _inputs(lib, q, metric)
    ids, bounds, _, _ = _call(index, q, qw, metric, 6, nl_base=_nl_base(lib, q))
    exact = _exact(lib, q, metric, 0.02)
    for r in range(len(q)):
        got = np.zeros(len(lib))
        ok = ids[r] >= 0
        got[ids[r][ok]] = bounds[r][ok]
        assert (got >= exact[r] - 1e-7).all(), (r, got, exact[r])
    assert got[0] >= 1.0  # the last query is library spectrum 0 itself


@pytest.mark.parametrize("metric,n_peaks,huge_precursor", [("cosine", 35000, False), ("entropy", 35000, False),
                                                           ("hybrid", 17000, False), ("hybrid", 600, True)])
def test_sums_never_wrap_around(tmp_path, metric, n_peaks, huge_precursor):
    """A clean spectrum of tens of thousands of peaks against itself sums past 16 bits, and so do hybrid
    search's loss windows next to a library precursor of 1e6 (its float32 losses are coarse, its loss
    windows wide): the adds saturate, and the bound stays at least the exact score of 1."""
    mz = 50.0 + 0.05 * np.arange(n_peaks)
    it = np.full(n_peaks, 1.0)
    it[n_peaks // 2] = 3.0  # a decoy shares this peak
    lib_mz, lib_int, pmz = [mz, np.array([mz[n_peaks // 2], 3.0])], [it, np.array([3.0, 1.0])], [mz[-1] + 50.0] * 2
    if huge_precursor:
        lib_mz.append(np.array([100.0, 200.0]))
        lib_int.append(np.array([1.0, 1.0]))
        pmz.append(1e6)
    sp = Spectra.from_arrays(lib_mz, lib_int, precursor_mz=pmz, metadata={"ion_mode": ["positive"] * len(pmz)})
    lib = Library.build(sp, tmp_path / "l.fastspec", preprocess=None, faiss=False)
    q = Spectra.from_arrays([mz], [it], precursor_mz=[pmz[0]], metadata={"ion_mode": ["positive"]})
    index, qw = _inputs(lib, q, metric)
    ids, bounds, _, _ = _call(index, q, qw, metric, len(lib), nl_base=_nl_base(lib, q))
    assert ids[0, 0] == 0 and bounds[0, 0] >= 1.0, (ids, bounds)
    # ms_entropy's float32 sums score this 35,000-peak self-match 0.99974 too
    hits = lib.search(q, k=2, mode="hybrid" if metric == "hybrid" else "open",
                      **({} if metric == "hybrid" else {"metric": metric}), threads=1)
    assert hits.indices[0, 0] == 0 and hits.scores[0, 0] == pytest.approx(1.0, abs=5e-4)


def test_entries_per_window(setup):
    """A clean library's windows hold one entry of a spectrum (plain adds); a precursor of 1e6 makes
    float32 losses too coarse to say (saturating adds)."""
    lib, q = setup
    index, _ = _inputs(lib, q, "hybrid")
    base = _nl_base(lib, q)
    prec = np.asarray(index.prec_sorted)
    lo, hi = float(prec[0]), float(prec[np.isfinite(prec)][-1])
    assert dk._per_window(index, q.precursor_mz, 0.02, 0.0, base, max(abs(lo), hi), lo, hi) == (1, 1)
    assert dk._per_window(index, q.precursor_mz, 0.0, 10.0, base, 0.0, lo, hi) == (1, 1)
    assert dk._per_window(index, q.precursor_mz, 0.02, 0.0, base, 1e6, lo, 1e6)[1] > 1000


@pytest.mark.parametrize("kind", [fk.KIND_PRODUCT, fk.KIND_ENTROPY])
def test_bound_table_covers_every_pair_of_its_codes(kind):
    """Table entry [query code, library code] / SCALE is at least the pair's contribution for every
    weight pair with those codes (sampled, code edges included)."""
    table = dk.bound_table(kind).astype(np.float64) / dk.SCALE
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.random(1500) ** 3, [0.0, 1.0, 1e-9]])
    w = np.concatenate([rng.random(1500), [0.0, 1.0, 1 / 255, 254.999 / 255]]).astype(np.float32)  # scan weights
    qc = dk.query_codes(kind, q)
    lc = fk.quantize_weights(w)
    qq, ww = np.meshgrid(np.arange(q.size), np.arange(w.size), indexing="ij", sparse=True)
    qv, lv = q[qq], w[ww].astype(np.float64) ** (2 if kind == fk.KIND_ENTROPY else 1)
    if kind == fk.KIND_ENTROPY:
        with np.errstate(divide="ignore", invalid="ignore"):
            f = lambda x: np.where(x > 0, x * np.log2(np.where(x > 0, x, 1)), 0.0)  # noqa: E731
            exact = 0.5 * (f(qv + lv) - f(qv) - f(lv))
    else:
        exact = qv * lv
    assert (table[qc[qq], lc[ww]] >= exact).all()
