"""Library search: every exact mode equals brute force on real MassBank spectra; Hits output; filters.

The reference is :func:`fastspec.similarity.score_matrix` over the whole library (dense, or top-k per
polarity group) on the same preprocessed peaks, with the mode's candidate set applied afterwards; it
shares no code with the search's candidate generation or bounds. Entropy metrics
score the stored peaks as they are (``clean=False``), as the search does.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastspec import similarity
from fastspec.errors import FastspecError, ParameterError
from fastspec.library import Library, apply_pipeline, canonical_formulas, normalize_adducts
from fastspec.hits import HIT_COLUMNS, Hits
from fastspec.spectra import Spectra
from test_library import massbank_subset

K = 5
TIE = 1e-6  # scores closer than this are ties: either spectrum may be listed


@pytest.fixture(scope="module")
def data(massbank_parquet):
    lib_sp, queries = massbank_subset(massbank_parquet, n_lib=3000, n_query=60, seed=1)
    # some queries that are library spectra (identity/formula modes then surely have neighbours)
    return lib_sp, Spectra.concat([queries, lib_sp[::150]])


@pytest.fixture(scope="module")
def lib(data, tmp_path_factory):
    # an IVF index even at this size (default: exhaustive below 20k spectra)
    return Library.build(data[0], tmp_path_factory.mktemp("s") / "lib.fastspec", faiss=True,
                         faiss_params={"flat_below": 0})


@pytest.fixture(scope="module")
def raw(data, tmp_path_factory):
    """Peaks exactly as read (not clean: close peaks, noise), only spectra with a precursor (matchms'
    modified cosine needs them)."""
    sp = data[0][np.flatnonzero(np.isfinite(data[0].precursor_mz))[:1500]]
    assert (sp.intensity == 0).any()  # MassBank's few zero-intensity peaks, kept as matchms keeps them
    return Library.build(sp, tmp_path_factory.mktemp("r") / "raw.fastspec", preprocess=None, faiss=False)


@pytest.fixture(scope="module")
def raw_positive(raw, tmp_path_factory):
    """``raw`` without its zero-intensity peaks: entropy preparation drops those, so an index holding them
    stores no in-place entropy weights (``entropy_w``, ``prec_entropy_w``)."""
    sp = raw.spectra(metadata=True)
    sp = sp.keep_peaks(sp.intensity > 0)
    return Library.build(sp, tmp_path_factory.mktemp("r") / "raw_positive.fastspec", preprocess=None, faiss=False)


# ------------------------------------------------------------------------------------------ reference
def _metric_kw(metric: str, tolerance, **params) -> dict:
    kw = {"tolerance": tolerance, **params}
    if metric in ("entropy", "unweighted_entropy"):
        kw["clean"] = False  # the library's stored peaks, as the search scores them
        # and with Da tolerances, peaks matched in FlashEntropySearch's float32 windows, as the search does
        from fastspec.tolerance import parse_tolerance

        kw["flash"] = parse_tolerance(tolerance).unit == "da"
    return kw


def dense(lib: Library, queries: Spectra, metric: str, tolerance="0.02da", **params):
    """Scores and matched peaks of every (query, library) pair: float64 / int32 (nq, n_lib); ``params``
    go to :func:`fastspec.similarity.prepare`."""
    q = apply_pipeline(lib.pipeline, queries)
    kw = _metric_kw(metric, tolerance, **params)
    s, m = similarity.score_matrix(similarity.prepare(q, metric, **kw), similarity.prepare(lib.spectra(), metric, **kw))
    return np.asarray(s), np.asarray(m)


def brute_force(lib: Library, queries: Spectra, metric: str, candidates, k: int = K, tolerance="0.02da",
                min_matches: int = 0, min_score: float = 0.0, **params):
    """Reference top-k from the dense matrix over explicit candidates (bool (nq, n_lib)).

    Returns scores (nq, k), indices (nq, k) (-1 none), matches (nq, k), the (k+1)-th score (nq,) (-inf
    none) and the dense (S, M).
    """
    S, M = dense(lib, queries, metric, tolerance, **params)
    q = apply_pipeline(lib.pipeline, queries)
    ok = (np.asarray(candidates, bool) & (np.diff(q.offsets) > 0)[:, None] & (M >= max(1, min_matches))
          & (S >= min_score))
    nq = len(queries)
    s, i, m = np.zeros((nq, k)), np.full((nq, k), -1, np.int64), np.zeros((nq, k), np.int32)
    nxt = np.full(nq, -np.inf)
    for r in range(nq):
        cols = np.flatnonzero(ok[r])
        best = cols[np.lexsort((cols, -S[r, cols]))[: k + 1]]  # score desc, ties to the lowest library row
        if best.size > k:
            nxt[r], best = S[r, best[k]], best[:k]
        s[r, : best.size], i[r, : best.size], m[r, : best.size] = S[r, best], best, M[r, best]
    return s, i, m, nxt, S, M


def brute_force_topk(lib: Library, queries: Spectra, metric: str, k: int = K, tolerance="0.02da"):
    """Whole-library reference: ``score_matrix(..., k=k)`` per query polarity against the library spectra
    it may match (same polarity or unknown), indices mapped back to library rows."""
    q = apply_pipeline(lib.pipeline, queries)
    kw = _metric_kw(metric, tolerance)
    lpol = np.asarray(lib.polarity)
    nq = len(q)
    s, i, m = np.zeros((nq, k + 1)), np.full((nq, k + 1), -1, np.int64), np.zeros((nq, k + 1), np.int32)
    for pol in (-1, 0, 1):
        rows = np.flatnonzero((q.polarity == pol) & (np.diff(q.offsets) > 0))
        cols = np.flatnonzero((lpol == pol) | (lpol == 0) | (pol == 0))
        if rows.size == 0 or cols.size == 0:
            continue
        gs, gi, gm = similarity.score_matrix(similarity.prepare(q.take(rows), metric, **kw),
                                             similarity.prepare(lib.spectra(cols), metric, **kw), k=k + 1,
                                             min_matches=1, min_score=0.0)
        s[rows], i[rows], m[rows] = gs, np.where(gi >= 0, cols[np.maximum(gi, 0)], -1), gm
    nxt = np.where(i[:, k] >= 0, s[:, k], -np.inf)
    return s[:, :k], i[:, :k], m[:, :k], nxt


def same_polarity(lib: Library, queries: Spectra) -> np.ndarray:
    lp, qp = np.asarray(lib.polarity), queries.polarity
    return (qp[:, None] == 0) | (lp[None, :] == 0) | (qp[:, None] == lp[None, :])


def assert_same_hits(hits: Hits, ref, dense_sm=None):
    """Same scores and matched peaks; same library rows except among tied scores (the (k+1)-th score
    included), where every listed row must really have that score (checked against the dense matrix).

    ``ref``: (scores, indices, matches, next score) from :func:`brute_force_topk`, or with the dense
    (S, M) appended from :func:`brute_force`.
    """
    s, i, m, nxt = ref[:4]
    if dense_sm is None and len(ref) == 6:
        dense_sm = ref[4:]
    np.testing.assert_array_equal(hits.indices >= 0, i >= 0)
    np.testing.assert_allclose(hits.scores, s, rtol=1e-6, atol=1e-6)
    for r in range(i.shape[0]):
        n = int((i[r] >= 0).sum())
        for j in range(n):
            others = np.append(np.delete(s[r, :n], j), nxt[r])
            if not np.any(np.abs(others - s[r, j]) <= TIE):
                assert hits.indices[r, j] == i[r, j], (r, j)
                assert hits.matches[r, j] == m[r, j], (r, j)
        if dense_sm is not None and n:
            S, M = dense_sm
            got = hits.indices[r, :n]
            assert len(set(got.tolist())) == n
            np.testing.assert_allclose(S[r, got], hits.scores[r, :n], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(M[r, got], hits.matches[r, :n])
    # no hit: -1, score 0, no matches
    assert (hits.scores[hits.indices < 0] == 0).all() and (hits.matches[hits.indices < 0] == 0).all()


# ------------------------------------------------------------------------------------------ exact modes
def test_identity_equals_brute_force(lib, data):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="0.01da")
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= 0.01
    assert_same_hits(hits, brute_force(lib, queries, "cosine", window & same_polarity(lib, queries)))
    assert (hits.indices[:, 0] >= 0).sum() >= 20
    assert set(hits.status[~np.isfinite(pq_)]) <= {"no_precursor", "no_peaks"}


def test_identity_takes_a_zero_precursor_as_unknown(tmp_path):
    """A precursor m/z of 0 (an MGF PEPMASS=0 placeholder built in memory) is no precursor, as modified cosine
    takes it: the query gets no_precursor, and a library spectrum of precursor 0 is in no window."""
    md = [{"id": i, "ion_mode": "positive"} for i in ("p0", "p250", "pnan")]
    lib = Library.build(Spectra.from_arrays([[100.0, 150.0, 200.0]] * 3, [[1.0, 1.0, 1.0]] * 3,
                                            precursor_mz=[0.0, 250.0, np.nan], metadata=md),
                        tmp_path / "z.fastspec", faiss=False, preprocess=None)
    q = Spectra.from_arrays([[100.0, 150.0, 200.0]] * 3, [[1.0, 1.0, 1.0]] * 3, precursor_mz=[0.0, -1.0, 0.004],
                            metadata=[{"ion_mode": "positive"}] * 3)
    h = lib.search(q, k=2, mode="identity", precursor_tolerance=0.01)
    assert list(h.status[:2]) == ["no_precursor", "no_precursor"]
    assert (h.indices == -1).all()


def test_identity_filters_equal_brute_force(lib, data):
    """Identity windows filtered in the window kernel: same adduct and same charge, at 3000 ppm (wide
    windows, so that the filters have candidates to drop)."""
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="3000ppm", same_adduct=True,
                      same_charge=True)
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= np.abs(pq_[:, None]) * 3000e-6
    la = np.array(normalize_adducts(lib.metadata(columns=["adduct"]).column("adduct").to_pylist()), dtype=object)
    qa = normalize_adducts(queries.column("adduct"))
    adduct = np.array([[a is None or a == "" or a == b for b in la] for a in qa])
    lc, qch = np.abs(np.asarray(lib.array("charge"))), np.abs(queries.charge)
    charge = (qch[:, None] == 0) | (lc[None, :] == 0) | (qch[:, None] == lc[None, :])
    base = window & same_polarity(lib, queries)
    assert (base & ~(adduct & charge)).sum() >= 20  # the filters drop candidates from some windows
    assert_same_hits(hits, brute_force(lib, queries, "cosine", base & adduct & charge))
    assert (hits.indices[:, 0] >= 0).sum() >= 10


@pytest.mark.parametrize("raw_peaks", [False, True])
@pytest.mark.parametrize("metric,min_matches,min_score", [("cosine", 0, 0.0), ("cosine", 4, 0.0),
                                                          ("cosine", 0, 0.6), ("entropy", 0, 0.0),
                                                          ("entropy", 3, 0.5), ("modified_cosine", 0, 0.0),
                                                          ("modified_cosine", 2, 0.3)])
def test_identity_bounded_windows_equal_brute_force(data, tmp_path_factory, monkeypatch, metric, min_matches,
                                                    min_score, raw_peaks):
    """Identity search prunes window candidates through the precursor-block index: blocks of 16 spectra
    and only k candidates scored first, so windows span many blocks. On raw peaks (close peaks: bounds
    above the exact scores) half the first round is moved to the second: correct for any first round."""
    from fastspec import library as libmod
    from fastspec import search_identity as ident

    monkeypatch.setattr(libmod, "WINDOW_BLOCK", 16)
    monkeypatch.setattr(ident, "_WINDOW_FIRST", 0)
    lib = Library.build(data[0], tmp_path_factory.mktemp("w") / "lib.fastspec", faiss=False,
                        **({"preprocess": None} if raw_peaks else {}))
    assert lib.window_block == 16
    queries = data[1]
    seen = {}
    real = ident.bounded_window_search

    def spy(ctx, rows, offs, pos):
        seen["wide"] = seen.get("wide", 0) + int((np.diff(offs) > 4 * K).sum())
        return real(ctx, rows, offs, pos)

    monkeypatch.setattr(ident, "bounded_window_search", spy)
    from fastspec.kernels import window as window_mod

    real_second = window_mod.second_round

    def spy_second(*a, **kw):
        rows, offs2, pos2 = real_second(*a, **kw)
        seen["again"] = seen.get("again", 0) + rows.shape[0]
        return rows, offs2, pos2

    monkeypatch.setattr(window_mod, "second_round", spy_second)
    real_bounds = window_mod.window_bounds

    def fewer_first(*a, **kw):
        wb = real_bounds(*a, **kw)
        if not raw_peaks:
            return wb
        ub, cnt, first, rest = wb[:4]
        moved = first & (np.random.default_rng(0).random(first.shape[0]) >= 0.5)
        first &= ~moved
        w_off = np.asarray(a[3])  # the moved candidates' bounds join their window's rest
        np.maximum.at(rest, np.repeat(np.arange(w_off.shape[0] - 1), np.diff(w_off))[moved], ub[moved])
        keep = first & (cnt >= kw["min_matches"])
        return wb._replace(first_offsets=np.concatenate([[0], np.cumsum(keep)])[w_off],
                           first_positions=np.asarray(a[4])[keep])

    monkeypatch.setattr(window_mod, "window_bounds", fewer_first)
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="10000ppm", min_matches=min_matches,
                      min_score=min_score, metric=metric)
    assert seen["wide"] >= 20  # windows larger than the first round
    assert seen["again"] >= 20 or not raw_peaks
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= np.abs(pq_[:, None]) * 10000e-6
    assert_same_hits(hits, brute_force(lib, queries, metric, window & same_polarity(lib, queries),
                                       min_matches=min_matches, min_score=min_score))
    assert (hits.indices[:, 0] >= 0).sum() >= 10


@pytest.mark.parametrize("metric", ["cosine", "entropy"])
def test_identity_wide_windows_split_off(data, tmp_path_factory, monkeypatch, metric):
    """Windows spanning more than ``_WINDOW_SPAN`` spectra are scored in full, the others bounded, in
    one call: both parts land in the caller's rows."""
    from fastspec import library as libmod
    from fastspec import search as search_mod
    from fastspec import search_identity as ident

    monkeypatch.setattr(libmod, "WINDOW_BLOCK", 16)
    monkeypatch.setattr(ident, "_WINDOW_SPAN", 40)
    lib = Library.build(data[0], tmp_path_factory.mktemp("v") / "lib.fastspec", faiss=False)
    queries = data[1]
    seen = {}
    real = search_mod._Context.exact

    def spy(self, rows, offs, ids, by_precursor=False):
        seen["calls"] = seen.get("calls", 0) + 1
        return real(self, rows, offs, ids, by_precursor)

    monkeypatch.setattr(search_mod._Context, "exact", spy)
    real_take = ident._csr_take

    def spy_take(offs, vals, sel):
        seen["parts"] = seen.get("parts", 0) + 1
        return real_take(offs, vals, sel)

    monkeypatch.setattr(ident, "_csr_take", spy_take)
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="10000ppm", metric=metric)
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= np.abs(pq_[:, None]) * 10000e-6
    spans = (window & same_polarity(lib, queries)).sum(1)
    assert (spans > 40).sum() >= 5 and ((spans > 0) & (spans <= 40)).sum() >= 5  # both parts occur
    assert seen["calls"] >= 2 and seen["parts"] == 2  # one bounded part, one scored in full
    assert_same_hits(hits, brute_force(lib, queries, metric, window & same_polarity(lib, queries)))


def test_window_positions_vs_numpy():
    from fastspec.kernels.window import WINDOW_FLASH, window_positions

    @settings(max_examples=80, deadline=None)
    @given(seed=st.integers(0, 10_000), nf=st.integers(0, 3), rule=st.sampled_from([0, 1]))
    def check(seed, nf, rule):
        rng = np.random.default_rng(seed)
        n, nr = int(rng.integers(0, 60)), int(rng.integers(0, 12))
        spmz = rng.choice([100.0, 100.5, 101.0, 150.0, 200.0, 0.0, -1.0], n) + rng.integers(0, 3, n) * 1e-3
        # values a float32 rounding or a float64 difference puts on the other side of a window end:
        # 100.001 is 100.00099945 in float32; 197.0808 - 197.0608 is 0.0200000000000102, though
        # 197.0608 + 0.02 == 197.0808 in float64
        spmz = np.sort(np.concatenate([spmz, [100.001, 100.0010001, 99.99999999, 100.50100002, 197.0808, 197.0408]]))
        n = spmz.shape[0]
        q = rng.choice([99.5, 100.0, 100.001, 100.5, 150.0, 197.0608, 0.004, -100.0, np.nan], nr)
        half = rng.choice([0.0, 0.01, 0.001, 0.02, 1.0, 60.0, np.inf, np.nan], nr)
        qc = rng.integers(-2, 3, (nr, nf)).astype(np.int32)
        lcodes = rng.integers(-1, 3, (n, nf)).astype(np.int32)
        sym = rng.random(nf) < 0.5
        floor = float(np.nextafter(0.0, 1.0))
        offs, pos = window_positions(spmz, q, half, floor, qc, lcodes, sym, rule)
        v = spmz.astype(np.float32).astype(np.float64)
        for r in range(nr):
            inside = [(q[r] - half[r] <= v[t] <= q[r] + half[r]) if rule == WINDOW_FLASH
                      else abs(spmz[t] - q[r]) <= half[r] for t in range(n)]
            want = [t for t in range(n) if inside[t] and spmz[t] >= floor
                    and all(qc[r, f] == -1 or lcodes[t, f] == qc[r, f] or (sym[f] and lcodes[t, f] < 0)
                            for f in range(nf))]
            assert pos[offs[r]:offs[r + 1]].tolist() == want

    check()


@pytest.mark.parametrize("mode,metric", [("identity", "cosine"), ("identity", "modified_cosine"),
                                         ("identity", "entropy"), ("formula", "cosine"), ("open", "cosine"),
                                         ("analog", "modified_cosine")])
@pytest.mark.parametrize("absent", [("norm", "prec_norm"), ("wblk_loc",), ("wblk_sum",), ("prec_entropy_w",)])
def test_without_stored_norms_is_the_same(lib, data, mode, metric, absent, monkeypatch):
    """Indexes without the stored norms and the precursor-ordered peak copy (older builds), or without
    the copy's entropy weights, gather and prepare candidates instead of scoring them in place; without
    the precursor-block index, identity windows are scored in full, and without its summary searched
    peak by peak: the same hits."""
    kw = dict(k=K, mode=mode, metric=metric, **({"precursor_tolerance": "0.05da"} if mode == "identity" else {}))
    ref = lib.search(data[1], **kw)
    real = Library.has_array
    monkeypatch.setattr(Library, "has_array", lambda self, name: name not in absent and real(self, name))
    old = lib.search(data[1], **kw)
    np.testing.assert_array_equal(old.indices, ref.indices)
    np.testing.assert_array_equal(old.scores, ref.scores)
    np.testing.assert_array_equal(old.matches, ref.matches)


@pytest.mark.parametrize("which", ["lib", "raw_positive"])
@pytest.mark.parametrize("mode", ["open", "hybrid", "formula"])
def test_entropy_in_place_in_library_order(request, data, which, mode, monkeypatch):
    """Open, hybrid and formula entropy search score their candidates in place with the stored
    library-order entropy weights (``entropy_w``), gathering and preparing none; without them (older
    indexes) they gather and prepare: the same hits, clean and unclean libraries alike."""
    lib = request.getfixturevalue(which)
    assert lib.has_array("entropy_w")
    kw = dict(k=K, mode=mode, metric="entropy")
    if mode == "formula":
        kw["no_neighbour"] = "fallback"  # fallback queries take open search
    gathered = []
    real_peaks = Library.peaks
    monkeypatch.setattr(Library, "peaks", lambda self, rows, **k: gathered.append(len(rows)) or real_peaks(self, rows, **k))
    ref = lib.search(data[1], **kw)
    assert not gathered
    real = Library.has_array
    monkeypatch.setattr(Library, "has_array", lambda self, name: name != "entropy_w" and real(self, name))
    old = lib.search(data[1], **kw)
    assert gathered
    np.testing.assert_array_equal(old.indices, ref.indices)
    np.testing.assert_array_equal(old.scores, ref.scores)
    np.testing.assert_array_equal(old.matches, ref.matches)


@pytest.mark.parametrize("metric", ["cosine", "entropy"])
@pytest.mark.parametrize("copy", [True, False])
def test_identity_ties_go_to_the_lowest_library_row(tmp_path, metric, copy, monkeypatch):
    """Identical spectra whose precursor order is the reverse of their row order: the lowest rows win."""
    mz = [np.array([60.0, 85.0, 120.0, 150.5])] * 6
    it = [np.array([10.0, 100.0, 40.0, 5.0])] * 6
    pmz = np.array([200.005, 200.004, 200.003, 200.002, 200.001, 200.0])
    md = {"ion_mode": ["positive"] * 6}
    lib = Library.build(Spectra.from_arrays(mz, it, precursor_mz=pmz, metadata=md), tmp_path / "t.fastspec",
                        preprocess=None, faiss=False)
    if not copy:
        real = Library.has_array
        gone = ("norm", "prec_norm", "prec_entropy_w")
        monkeypatch.setattr(Library, "has_array", lambda self, name: name not in gone and real(self, name))
    q = Spectra.from_arrays(mz[:1], it[:1], precursor_mz=[200.0025], metadata={"ion_mode": ["positive"]})
    hits = lib.search(q, k=3, mode="identity", precursor_tolerance="0.01da", metric=metric)
    assert hits.indices[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(hits.scores[0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("metric", ["entropy", "unweighted_entropy"])
@pytest.mark.parametrize("mode", ["open", "identity"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_entropy_huge_intensities_keep_every_hit(tmp_path, metric, mode, k):
    """Finite intensities whose float32 sum overflows (ms_entropy scores such a pair NaN) still get a finite
    score, and never cost another spectrum its place (the bound kernel's threshold once counted it)."""
    base = np.array([50.0, 100.0, 30.0])
    mz = [np.array([100.0, 150.0, 200.0])] * 2 + [np.array([100.0, 150.0])]
    it = [base, np.full(3, 3e38), np.array([10.0, 100.0])]
    md = {"ion_mode": ["positive"] * 3}
    sp = Spectra.from_arrays(mz, it, precursor_mz=[300.0] * 3, metadata=md)
    lib = Library.build(sp, tmp_path / "t.fastspec", preprocess=None, faiss=False)
    q = Spectra.from_arrays(mz[:1], [base], precursor_mz=[300.0], metadata={"ion_mode": ["positive"]})
    ref = similarity.score_matrix(q, sp, metric=metric, tolerance=0.02)[0][0]
    assert np.all(np.isfinite(ref))
    hits = lib.search(q, k=k, mode=mode, metric=metric, tolerance=0.02)
    order = np.lexsort((np.arange(3), -ref))[:k]
    assert hits.indices[0].tolist() == order.tolist()
    np.testing.assert_allclose(hits.scores[0], ref[order], rtol=1e-6)


@pytest.mark.parametrize("mode,metric,ip", [("open", "cosine", 1.0), ("open", "cosine", 4.0),
                                             ("analog", "modified_cosine", 1.0), ("open", "unweighted_entropy", 1.0),
                                             ("hybrid", "unweighted_entropy", 1.0), ("identity", "cosine", 1.0)])
@pytest.mark.parametrize("tiny_side", ["query", "library"])
def test_weights_below_float32_range_still_count_as_matched(tmp_path, mode, metric, ip, tiny_side):
    """A peak whose bound weight is below the smallest float32 (intensity ratio 1e-48 within a spectrum,
    or 1e-12 at intensity_power 4) is still a pair the exact kernels match: min_matches=2 keeps the hit,
    as brute force does (its float32 weight once rounded to 0, and the bound kernel skipped it)."""
    tiny = [1e-12 if ip == 4.0 else 1e-38, 1.0 if ip == 4.0 else 1e10]
    pos = {"ion_mode": ["positive"]}
    q_int, l_int = (tiny, [1.0, 1.0]) if tiny_side == "query" else ([1.0, 1.0], tiny)
    sp = Spectra.from_arrays([np.array([100.0, 150.0])], [np.array(l_int)], precursor_mz=[400.0], metadata=pos)
    q = Spectra.from_arrays([np.array([100.0, 150.0])], [np.array(q_int)], precursor_mz=[400.0], metadata=pos)
    lib = Library.build(sp, tmp_path / "t.fastspec", preprocess=None, faiss=False)
    kw = {} if metric.endswith("entropy") else {"intensity_power": ip}
    # as the search scores
    ref_kw = {"clean": False, "flash": True, "hybrid": mode == "hybrid"} if metric.endswith("entropy") else kw
    ref, ref_m = similarity.score_matrix(q, sp, metric=metric, tolerance=0.02, **ref_kw)
    assert np.isfinite(ref[0, 0]) and ref_m[0, 0] == 2  # entropy once scored its 0 weight NaN: 0 * log2(0)
    for mm in (1, 2):
        hits = lib.search(q, k=1, mode=mode, metric=metric, tolerance=0.02, min_matches=mm, threads=1, **kw)
        if ref_m[0, 0] >= mm:
            assert hits.indices[0, 0] == 0 and hits.matches[0, 0] == ref_m[0, 0]
            np.testing.assert_allclose(hits.scores[0, 0], ref[0, 0], rtol=1e-6)
        else:
            assert hits.indices[0, 0] == -1


def test_identity_ppm_window_entropy(lib, data):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="20ppm", metric="entropy")
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= pq_[:, None] * 20e-6
    assert_same_hits(hits, brute_force(lib, queries, "entropy", window & same_polarity(lib, queries)))


def test_formula_mode_and_no_neighbour(lib, data):
    queries = data[1]
    qf = canonical_formulas(queries.column("formula"))
    lf = lib.metadata(columns=["formula_canonical"]).column("formula_canonical").to_pylist()
    same = np.array([[a is not None and a == b for b in lf] for a in qf])
    cand = same & same_polarity(lib, queries)
    ref = brute_force(lib, queries, "cosine", cand)
    has = cand.any(1) & (np.diff(apply_pipeline(lib.pipeline, queries).offsets) > 0)
    assert has.sum() >= 10 and (~has).sum() >= 5

    skip = lib.search(queries, k=K, mode="formula", no_neighbour="skip")
    assert_same_hits(skip, ref)
    # a query without a formula is "no_formula", one whose formula no library spectrum of its polarity has "no_neighbour"
    unknown = np.array([f is None for f in qf])
    missing = ~has & (skip.status != "no_peaks")
    assert (skip.status[missing & ~unknown] == "no_neighbour").all()
    assert (skip.status[missing & unknown] == "no_formula").all()
    assert skip.skipped[~has].all() and not skip.skipped[has].any()

    empty = lib.search(queries, k=K, mode="formula", no_neighbour="empty")
    assert_same_hits(empty, ref)
    assert not empty.skipped[~has & (empty.status != "no_peaks")].any()

    fb = lib.search(queries, k=K, mode="formula", no_neighbour="fallback")
    whole = brute_force_topk(lib, queries, "cosine")
    expect = tuple(np.where(has[:, None] if r.ndim == 2 else has, r, w) for r, w in zip(ref[:4], whole))
    assert_same_hits(fb, expect, ref[4:])
    assert (fb.fallback == (~has & (fb.status != "no_peaks"))).all()
    # the hit table says which hits are whole-library fallbacks; delta_ppm is over the query's precursor
    t = fb.to_arrow()
    qi = t.column("query_index").to_numpy()
    assert (t.column("fallback").to_numpy(zero_copy_only=False) == fb.fallback[qi]).all() and fb.fallback.any()
    qm, lm = (t.column(c).to_numpy(zero_copy_only=False) for c in ("query_precursor_mz", "library_precursor_mz"))
    ok = np.isfinite(qm) & np.isfinite(lm)
    assert ok.any() and np.allclose(t.column("delta_ppm").to_numpy(zero_copy_only=False)[ok], (qm - lm)[ok] / qm[ok] * 1e6)


def test_formula_given_explicitly(lib, data):
    queries = data[1][:10]
    formula = lib.metadata(rows=[0], columns=["formula_canonical"]).column(0)[0].as_py()
    hits = lib.search(queries, k=K, mode="formula", formula=formula)
    lf = lib.metadata(columns=["formula_canonical"]).column("formula_canonical").to_pylist()
    cand = np.array([f == formula for f in lf])[None, :] & same_polarity(lib, queries)
    assert_same_hits(hits, brute_force(lib, queries, "cosine", cand))
    # the table records the formula given (without it, the queries' own were used)
    assert hits.params["formula"] == formula
    assert lib.search(queries, k=K, mode="formula", formula=[formula] * 10).params["formula"] == \
        "given per query (10 values)"
    assert "formula" not in lib.search(queries, k=K, mode="formula").params
    # missing entries as pandas NA or Arrow nulls are missing, as None is (they raised 'cannot parse <NA>')
    want = lib.search(queries[:4], k=K, mode="formula", formula=[formula, None, formula, None])
    assert list(want.status[1::2]) == ["no_formula"] * 2
    for column in (pa.array([formula, None, formula, None]), pa.chunked_array([[formula, None], [formula, None]])):
        got = lib.search(queries[:4], k=K, mode="formula", formula=column)
        np.testing.assert_array_equal(got.indices, want.indices)
        assert list(got.status) == list(want.status)
    pd = pytest.importorskip("pandas")
    got = lib.search(queries[:4], k=K, mode="formula", formula=pd.array([formula, None, formula, None], dtype="string"))
    assert list(got.status) == list(want.status)


def test_formula_list_last_query_without_candidates(lib, data):
    """A formula with library spectra of both polarities for a first query (some candidates filtered
    out) and none for the last one: the filtered candidate lists end on an empty query."""
    queries = data[1]
    lf = np.array([f or "" for f in lib.metadata(columns=["formula_canonical"]).column(0).to_pylist()], dtype=object)
    lp = np.asarray(lib.polarity)
    both = [f for f in set(lf[lp > 0]) & set(lf[lp < 0]) if f]
    assert both
    formula = sorted(both)[0]
    q = int(np.flatnonzero(queries.polarity != 0)[0])
    pair = queries.take(np.array([q, q]))
    for formulas in ([formula, "C99H1"], ["C99H1", formula]):
        hits = lib.search(pair, k=K, mode="formula", formula=formulas, no_neighbour="empty")
        cand = np.array([[f == g for f in lf] for g in formulas]) & same_polarity(lib, pair)
        assert cand[formulas.index(formula)].any() and not cand.all(axis=None)
        assert_same_hits(hits, brute_force(lib, pair, "cosine", cand))


def test_caches_of_varied_settings_stay_bounded(lib, data):
    """A loop over intensity powers kept every power's weight arrays and sorted copies (~14 bytes per library
    peak each: hundreds of MB at 2.4M), a loop over tolerances one stored view each (an audit of long runs):
    the last KEEP_POWERS / KEEP_VIEWS settings stay, and an evicted setting searched again gives the same hits."""
    from fastspec.library import KEEP_POWERS, KEEP_VIEWS

    q = data[1].take(np.arange(4))
    first = lib.search(q, k=5, mode="open", intensity_power=0.5)
    for ip in (0.6, 0.7, 0.8, 0.9, 0.5):
        again = lib.search(q, k=5, mode="open", intensity_power=ip)
        powers = lib._cache[("settings", "weight powers")]
        assert len(powers) <= KEEP_POWERS
        derived = [k for k in lib._cache if isinstance(k, str) and k.startswith(("w:", "pi:")) and ":1.0" not in k]
        assert len(derived) <= KEEP_POWERS * 2, derived
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(again.scores, first.scores)
    for tol in np.linspace(0.01, 0.03, 12):
        lib.search(q, k=5, mode="identity", tolerance=float(tol))
    views = [k for k in lib._cache if isinstance(k, tuple) and k[0] == "stored_view"]
    assert 0 < len(views) <= KEEP_VIEWS * 2 and len(lib._cache[("settings", "stored views")]) <= KEEP_VIEWS


def test_power_given_as_int_or_numpy_float_is_one_cache_entry(lib, data):
    """Library.csr_weights / peak_index keyed their caches by str(power): called directly with 2, 2.0 and
    np.float64(2.0) they computed and kept ~14 bytes per library peak three times (search passes floats, so
    its own calls always shared one key)."""
    first = lib.csr_weights("cosine", 0, 2)
    pi = lib.peak_index("cosine", 0, 2)
    for mz, ip in ((0.0, 2.0), (np.float64(0.0), np.float64(2.0)), (np.int64(0), np.int64(2))):
        assert lib.csr_weights("cosine", mz, ip) is first
        assert lib.peak_index("cosine", mz, ip) is pi
    q = data[1].take(np.arange(3))
    np.testing.assert_array_equal(lib.search(q, k=5, mode="open", intensity_power=2).indices,
                                  lib.search(q, k=5, mode="open", intensity_power=np.float64(2.0)).indices)


def test_hits_that_cannot_fit_are_refused(lib, data, monkeypatch):
    """k may be as large as the library: n queries x k hits beyond this machine's memory end in a clear
    ParameterError before any work (an audit: 1,000 queries at k = 2.4M asked for ~58 GB unwarned)."""
    import fastspec._sysmem as sysmem

    q = data[1].take(np.arange(4))
    monkeypatch.setattr(sysmem, "physical_memory", lambda: 4 * 10 * 24 - 1)
    with pytest.raises(ParameterError, match=r"4 queries x k=10 need about .* ask for fewer hits"):
        lib.search(q, k=10)
    assert lib.search(q, k=9).indices.shape == (4, 9)
    monkeypatch.setattr(sysmem, "physical_memory", lambda: None)  # a platform that does not say: no check
    assert lib.search(q, k=10).indices.shape == (4, 10)


def test_progress_bar_only_for_large_searches(lib, data, monkeypatch, capsys):
    """A loop of one-query calls in a terminal made (and closed, never drawn) a tqdm bar per call: 0.22 ms
    of a 0.78 ms identity call at 2.4M. By default a bar comes from AUTO_PROGRESS_QUERIES queries on."""
    import fastspec.io._common as common
    import fastspec.search as S

    monkeypatch.setattr(common, "_stderr_tty", lambda: True)
    q = data[1].take(np.arange(3))
    lib.search(q, k=1)
    assert "search" not in capsys.readouterr().err
    lib.search(q, k=1, progress=True)  # asked for: shown whatever the size
    assert "search" in capsys.readouterr().err
    monkeypatch.setattr(S, "AUTO_PROGRESS_QUERIES", 3)
    lib.search(q, k=1)
    assert "search" in capsys.readouterr().err
    monkeypatch.setattr(common, "_stderr_tty", lambda: False)
    lib.search(q, k=1)
    assert "search" not in capsys.readouterr().err


@pytest.mark.parametrize("faiss_threshold", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "entropy", "unweighted_entropy"])
def test_open_equals_brute_force(lib, data, metric, faiss_threshold, monkeypatch):
    # large libraries start open search from a threshold of FAISS neighbours (forced on here)
    from fastspec import search_fragment as F

    monkeypatch.setattr(F, "_THETA_FAISS_OPEN_MIN", 0 if faiss_threshold else 10**12)
    monkeypatch.setattr(F, "_THETA_FAISS_OPEN_MIN_SQ8", 0 if faiss_threshold else 10**12)
    queries = data[1]
    hits = lib.search(queries, k=K, mode="open", metric=metric)
    ref = brute_force(lib, queries, metric, same_polarity(lib, queries))
    assert_same_hits(hits, ref)
    assert_same_hits(hits, brute_force_topk(lib, queries, metric), ref[4:])


@pytest.mark.parametrize("metric,kw", [("cosine", {}), ("entropy", {}), ("unweighted_entropy", {"tolerance": "20ppm"}),
                                       ("entropy", {"same_adduct": True, "min_score": 0.2, "threads": 2}),
                                       ("cosine", {"k": 25, "same_charge": True, "threads": 2})])
@pytest.mark.parametrize("dense", [True, False])
def test_open_dense_scan_equals_brute_force(lib, data, monkeypatch, metric, kw, dense):
    """Open search through the dense scan (every query; :mod:`fastspec.kernels.dense`) or the pruned
    kernel only: the same hits as brute force, filters, ppm tolerances and threads included."""
    from fastspec import search_fragment as F
    from fastspec.kernels import dense as dk

    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf if dense else -np.inf))
    calls = []
    orig = dk.dense_bounds
    monkeypatch.setattr(dk, "dense_bounds", lambda rows, *a, **k: calls.append(rows.shape[0]) or orig(rows, *a, **k))
    queries = data[1]
    kw = dict(kw)
    k, tolerance = kw.pop("k", K), kw.pop("tolerance", "0.02da")
    hits = lib.search(queries, k=k, mode="open", metric=metric, tolerance=tolerance, **kw)
    assert (sum(calls) >= len(queries) - 5) if dense else not calls  # all but queries without peaks
    cand = same_polarity(lib, queries)
    if kw.get("same_adduct"):
        la = np.array(normalize_adducts(lib.metadata(columns=["adduct"]).column("adduct").to_pylist()), dtype=object)
        cand = cand & np.array([[a is None or a == b for b in la] for a in normalize_adducts(queries.column("adduct"))])
    if kw.get("same_charge"):
        lc, qch = np.abs(np.asarray(lib.array("charge"))), np.abs(queries.charge)
        cand &= (qch[:, None] == 0) | (lc[None, :] == 0) | (qch[:, None] == lc[None, :])
    assert_same_hits(hits, brute_force(lib, queries, metric, cand, k=k, tolerance=tolerance,
                                       min_score=kw.get("min_score", 0.0)))


def test_dense_scan_with_a_minimum_of_matched_peaks_and_unclean_spectra(lib, raw, data, monkeypatch, tmp_path):
    """With a minimum of matched peaks the dense scan also counts each spectrum's pairs in the windows and
    leaves out those with fewer. Unclean libraries and queries (peaks within two windows) take it, their
    sums counting every pair in the windows (a looser bound). The hits of brute force either way."""
    from fastspec import search_fragment as F
    from fastspec.kernels import dense as dk

    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf))
    calls = []
    orig = dk.dense_bounds
    monkeypatch.setattr(dk, "dense_bounds", lambda rows, *a, **k: calls.append(rows.shape[0]) or orig(rows, *a, **k))
    q = data[1][:20]
    for library in (lib, raw):
        for mode, metric, mm in (("open", "cosine", 2), ("open", "entropy", 3), ("analog", "modified_cosine", 3)):
            calls.clear()
            hits = library.search(q, k=K, mode=mode, metric=metric, min_matches=mm)
            assert sum(calls) >= len(q) - 2, (mode, metric)
            ref = brute_force(library, q, metric, same_polarity(library, q), min_matches=mm)
            assert (ref[2][ref[1] >= 0] >= mm).all() and (ref[1] >= 0).sum() > len(q) * 2  # the minimum applies
            assert_same_hits(hits, ref)
    calls.clear()
    for mode, metric in (("open", "entropy"), ("open", "cosine"), ("analog", "modified_cosine")):
        hits = raw.search(q, k=K, mode=mode, metric=metric)  # unclean library
        assert_same_hits(hits, brute_force(raw, q, metric, same_polarity(raw, q)))
    assert sum(calls) >= 3 * (len(q) - 2)
    pos = {"ion_mode": ["positive"] * 2}
    clean = Spectra.from_arrays([np.array([100.0, 150.0, 200.0]), np.array([100.0, 160.0])],
                                [np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0])], precursor_mz=[300.0, 300.0], metadata=pos)
    small = Library.build(clean, tmp_path / "clean.fastspec", preprocess=None, faiss=False)
    close = Spectra.from_arrays([np.array([100.0, 100.03, 150.0]), np.array([100.0, 150.0])],
                                [np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0])], precursor_mz=[300.0, 300.0], metadata=pos)
    calls.clear()
    hits = small.search(close, k=2, mode="open", metric="entropy")
    assert calls == [2]  # the first query too, though its peaks lie closer than two windows
    ref = similarity.score_matrix(close, clean, metric="entropy", tolerance=0.02, clean=False, flash=True)[0]
    np.testing.assert_allclose(hits.scores, -np.sort(-ref, axis=1), rtol=1e-6)


def test_compile_search_bounds_is_the_build_every_search_runs(lib, data):
    """``fastspec demo`` compiles the bound kernel ahead in another process through a one-spectrum call:
    that must be the very signature real searches use, or the demo would compile it twice."""
    from fastspec.kernels import fragment as fk

    q = data[1][:20]
    for kw in (dict(mode="open", metric="cosine"), dict(mode="open", metric="entropy"), dict(mode="analog"),
               dict(mode="hybrid")):
        for threads in (1, 2):
            lib.search(q, k=5, threads=threads, **kw)
    before = list(fk._search_bounds.signatures)
    fk.compile_search_bounds()
    assert fk._search_bounds.signatures == before and len(before) == 1


def test_compile_dense_bounds_is_the_build_every_search_runs(lib, data, monkeypatch):
    """The second process of ``fastspec demo`` / ``query`` also compiles the dense scan through a tiny
    call: the very signature real open, analog and hybrid searches use, at 1 and 2 threads."""
    from fastspec import search_fragment as F
    from fastspec.kernels import dense as dk

    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf))
    q = data[1][:20]
    for kw in (dict(mode="open", metric="cosine"), dict(mode="open", metric="entropy"), dict(mode="hybrid"),
               dict(mode="analog"), dict(mode="open", metric="unweighted_entropy", tolerance="10ppm")):
        for threads in (1, 2):
            lib.search(q, k=5, threads=threads, **kw)
    before = list(dk._dense_bounds.signatures)
    dk.compile_dense_bounds()
    assert dk._dense_bounds.signatures == before and len(before) == 1


@pytest.mark.parametrize("mode,metric", [("open", "cosine"), ("open", "entropy"), ("analog", "modified_cosine"),
                                         ("hybrid", "entropy")])
def test_index_without_band_codes_searches_the_same(lib, data, mode, metric):
    # indexes built before the scans' band codes (``*_q8``) compute them on first use
    from fastspec.library import Library

    stored = [f for f in lib.manifest["files"] if f.endswith("_q8.npy")]
    assert sorted(stored) == ["frag_wcos_q8.npy", "frag_went_sqrt_q8.npy", "nl_wcos_q8.npy", "nl_went_sqrt_q8.npy"]
    queries = data[1][:40]
    want = lib.search(queries, k=K, mode=mode, metric=metric)
    old = Library.open(lib.path)
    for f in stored:
        del old.manifest["files"][f]
    got = old.search(queries, k=K, mode=mode, metric=metric)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_open_ppm_tolerance(lib, data):
    queries = data[1][:30]
    hits = lib.search(queries, k=K, mode="open", metric="cosine", tolerance="15ppm")
    assert_same_hits(hits, brute_force(lib, queries, "cosine", same_polarity(lib, queries), tolerance="15ppm"))


@pytest.mark.parametrize("weak_faiss,heavy,dense", [(False, False, False), (True, False, False), (False, True, False),
                                                     (False, False, True), (False, False, "rounds"),
                                                     (False, False, "pruned rounds")])
def test_analog_equals_brute_force_modified_cosine(lib, data, weak_faiss, heavy, dense, monkeypatch):
    from fastspec import search_fragment as F
    from fastspec import search_scan

    from fastspec.kernels import dense as dk

    # every query through the dense scan (fragments and neutral losses), or none
    pruned_rounds = dense == "pruned rounds"
    pruned_calls = []
    if pruned_rounds:  # the pruned kernel, a query per call (a 300-candidate budget)
        from fastspec.kernels import fragment as fk

        dense = False
        monkeypatch.setattr(F, "_ROUND_ENTRIES", 300)
        orig_pruned = fk.search_bounds
        monkeypatch.setattr(fk, "search_bounds",
                            lambda rows, *a, **k: pruned_calls.append((rows.shape[0], k["m"]))
                            or orig_pruned(rows, *a, **k))
    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf if dense else -np.inf))
    dense_calls = []
    orig_dense = dk.dense_bounds
    dense_m = []
    monkeypatch.setattr(dk, "dense_bounds", lambda rows, *a, **k: dense_calls.append(rows.shape[0])
                        or dense_m.append(k["m"]) or orig_dense(rows, *a, **k))
    if dense == "rounds":  # the fewest first-round candidates (2k + 8), and rounds split into slices
        monkeypatch.setattr(F, "_DENSE_CANDIDATES_NL", 1)
        monkeypatch.setattr(F, "_ROUND_ENTRIES", 200)

    queries = data[1]
    asked = []
    heavy_rows = []
    if heavy:  # every query also takes a threshold from its heaviest peaks (on a big library: weak ones)
        monkeypatch.setattr(F, "_HEAVY_BELOW", np.inf)
        monkeypatch.setattr(F, "_HEAVY_PEAKS", 2)
        monkeypatch.setattr(F, "_HEAVY_CANDIDATES", 20)
        orig_heavy = F._heavy_theta
        monkeypatch.setattr(F, "_heavy_theta",
                            lambda ctx, rows, *a: heavy_rows.append(rows.shape[0]) or orig_heavy(ctx, rows, *a))
    if weak_faiss:  # a first FAISS threshold from too few neighbours: queries left without one ask again
        monkeypatch.setattr(F, "_THETA_FAISS_ANALOG", 0)
        monkeypatch.setattr(F, "_THETA_FAISS_PQ", 0)
        monkeypatch.setattr(F, "_THETA_NPROBE", 1)
        orig = search_scan.faiss_candidates
        monkeypatch.setattr(search_scan, "faiss_candidates",
                            lambda ctx, rows, n, nprobe, **kw: asked.append(n) or orig(ctx, rows, n, nprobe, **kw))
    hits = lib.search(queries, k=K, mode="analog")
    assert (sum(dense_calls) >= len(queries) - 5) if dense else not dense_calls
    assert (F._THETA_FAISS_AGAIN in asked) == weak_faiss
    if pruned_rounds:
        rounds = [n for n, m in pruned_calls if m > F._HEAVY_CANDIDATES]  # not the heaviest-peak pass
        assert len(rounds) >= len(queries) - 5 and max(rounds) == 1
    if dense == "rounds":  # second rounds, and no call over the budget
        assert max(dense_m) > min(dense_m) and max(dense_calls) <= 200 // min(dense_m)
    if heavy:
        assert sum(heavy_rows) >= len(queries) - 5  # all but queries without peaks or precursor
    assert hits.params["metric"] == "modified_cosine"
    ref = brute_force(lib, queries, "modified_cosine", same_polarity(lib, queries))
    assert_same_hits(hits, ref)
    assert_same_hits(hits, brute_force_topk(lib, queries, "modified_cosine"), ref[4:])


@pytest.mark.parametrize("which,mode,metric,kw", [
    ("lib", "open", "entropy", {}), ("lib", "open", "cosine", {"min_matches": 3}),
    ("lib", "analog", "modified_cosine", {}), ("raw", "open", "entropy", {"min_matches": 2}),
    ("raw", "analog", "modified_cosine", {"min_score": 0.2})])
def test_compact_accumulators_equal_brute_force(request, data, monkeypatch, which, mode, metric, kw):
    """With the reached spectra's sums moved to compact rows from the first spectrum on (at 2.4M only
    queries reaching thousands are), results still equal brute force: clean and unclean peaks, pair
    counts kept, neutral losses."""
    from fastspec.kernels import fragment as fk

    from fastspec import search_fragment as F

    lib = request.getfixturevalue(which)
    monkeypatch.setattr(fk, "_COMPACT_MIN", 1)
    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, -np.inf))  # the pruned kernel only
    compacted = []
    orig = fk.search_bounds
    monkeypatch.setattr(fk, "search_bounds", lambda *a, **k: (lambda r: compacted.append(r[3][:, 6]) or r)(orig(*a, **k)))
    queries = data[1]
    hits = lib.search(queries, k=K, mode=mode, metric=metric, **kw)
    assert np.concatenate(compacted).sum() >= 5
    cand = same_polarity(lib, queries)
    assert_same_hits(hits, brute_force(lib, queries, metric, cand, min_matches=kw.get("min_matches", 0),
                                       min_score=kw.get("min_score", 0.0)))


@pytest.mark.parametrize("metric,tolerance", [("entropy", "0.02da"), ("unweighted_entropy", "0.05da"),
                                              ("entropy", "20ppm"), ("cosine", "0.05da"),
                                              ("modified_cosine", "0.02da")])
def test_unclean_library_equals_brute_force(raw, data, metric, tolerance):
    """Peaks as read (closer than the tolerance, noise): bounds and rescoring see the same stored peaks."""
    queries = data[1]
    mode = "analog" if metric == "modified_cosine" else "open"
    hits = raw.search(queries, k=K, mode=mode, metric=metric, tolerance=tolerance)
    assert_same_hits(hits, brute_force(raw, queries, metric, same_polarity(raw, queries), tolerance=tolerance))


@pytest.mark.parametrize("zero_peak", [False, True, "no precursor"])
def test_identity_entropy_in_place_on_stored_peaks(raw_positive, data, tmp_path, zero_peak):
    """Identity entropy scores the precursor-ordered copy in place with its stored entropy weights,
    unclean peaks included; a peak that entropy preparation would drop (an m/z that is positive but 0 in
    float32, as entropy reads it) is dropped at build (it used to leave the index without those weights,
    and entropy bounds below the exact scores), so the weights are stored: equal to brute force."""
    raw = lib = raw_positive
    if zero_peak:
        sp = raw.spectra(metadata=True)
        mz = np.array(sp.mz, copy=True)
        mz[sp.offsets[3]] = 1e-50
        pmz = np.array(sp.precursor_mz, copy=True)
        if zero_peak == "no precursor":
            pmz[3] = np.nan
        sp = Spectra.from_arrays([mz[sp.offsets[i]:sp.offsets[i + 1]] for i in range(len(sp))],
                                 [sp.intensity[sp.offsets[i]:sp.offsets[i + 1]] for i in range(len(sp))],
                                 precursor_mz=pmz, metadata=sp.metadata)
        lib = Library.build(sp, tmp_path / "zero.fastspec", preprocess=None, faiss=False)
    assert lib.has_array("prec_entropy_w") and lib.has_array("entropy_w")
    assert np.float32(lib.spectra().mz.min()) > 0 and len(lib) == len(raw)
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity", metric="entropy", precursor_tolerance="0.05da")
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= 0.05
    assert_same_hits(hits, brute_force(lib, queries, "entropy", window & same_polarity(lib, queries)))
    assert (hits.indices[:, 0] >= 0).sum() >= 10


@pytest.mark.parametrize("metric,tolerance,min_matches", [
    ("entropy", "0.02da", 0), ("unweighted_entropy", "20ppm", 0), ("cosine", "0.05da", 0),
    ("cosine", "0.02da", 3), ("modified_cosine", "0.02da", 0), ("modified_cosine", "15ppm", 2)])
@pytest.mark.parametrize("which", ["lib", "raw"])
@pytest.mark.parametrize("order_share", [None, 0.0])
def test_exact_threshold_keeps_every_hit(request, data, metric, tolerance, min_matches, which, order_share,
                                         monkeypatch):
    """The bound search started from the exact k-th score (the tightest valid threshold) prunes the most:
    spectra passed over at one query peak and reached at a later one, unclean spectra with two partners
    in a window, neutral-loss partners, matched-peak counts; none of it may lose a hit. Scan orders:
    the default (on a library this small, by window entries first) and heaviest first."""
    from fastspec import search_fragment as F
    from fastspec.kernels import fragment as fk

    if order_share is not None:
        monkeypatch.setattr(fk, "_ORDER_SHARE", order_share)

    library = request.getfixturevalue(which)
    queries = data[1]
    mode = "analog" if metric == "modified_cosine" else "open"
    ref = brute_force(library, queries, metric, same_polarity(library, queries), tolerance=tolerance,
                      min_matches=min_matches)
    kth = np.where(ref[1][:, -1] >= 0, ref[0][:, -1], -np.inf)
    monkeypatch.setattr(F, "_first_theta", lambda ctx, rows, use_nl: kth[rows])
    hits = library.search(queries, k=K, mode=mode, metric=metric, tolerance=tolerance, min_matches=min_matches)
    assert_same_hits(hits, ref)


def test_invalid_peaks_are_dropped(tmp_path):
    """Peaks as read, but NaN / negative intensities are dropped from library and queries alike; zero
    intensities stay, as matchms keeps them (its cosine counts their pairs as matched peaks, and weighs
    them 1 at ``intensity_power=0``), and ``min_matches`` counts them."""
    rng = np.random.default_rng(0)
    pool = rng.uniform(50, 300, 30)
    mzs, ints = [], []
    for r in range(60):
        m = np.unique(rng.choice(pool, 8))
        x = rng.uniform(0.1, 1, m.size)
        x[0] = (np.nan, -1.0, 0.0, x[0])[r % 4]
        mzs.append(m)
        ints.append(x)
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=rng.uniform(300, 400, 60))
    lib = Library.build(sp, tmp_path / "a.fastspec", preprocess=None, faiss=False)
    assert len(lib) == 60 and np.asarray(lib.array("offsets"))[-1] == sum(len(m) for m in mzs) - 30
    assert (np.asarray(lib.array("intensity")) >= 0).all() and (np.asarray(lib.array("intensity")) == 0).sum() == 15
    for metric, params in (("cosine", {}), ("entropy", {}), ("modified_cosine", {}), ("cosine", {"intensity_power": 0.0})):
        mode = "analog" if metric == "modified_cosine" else "open"
        hits = lib.search(sp, k=K, mode=mode, metric=metric, **params)
        assert_same_hits(hits, brute_force(lib, sp, metric, np.ones((60, 60), bool), **params))
        assert (hits.indices[:, 0] >= 0).all()
        for mm in (3, 8):  # 8: every peak of a row with a zero-intensity peak must pair
            hits = lib.search(sp, k=K, mode=mode, metric=metric, min_matches=mm, **params)
            assert_same_hits(hits, brute_force(lib, sp, metric, np.ones((60, 60), bool), min_matches=mm, **params))


def test_filters(lib, data):
    queries = data[1]
    ref = brute_force(lib, queries, "cosine", same_polarity(lib, queries), min_matches=4, min_score=0.3)
    hits = lib.search(queries, k=K, mode="open", min_matches=4, min_score=0.3)
    assert_same_hits(hits, ref)
    assert (hits.matches[hits.indices >= 0] >= 4).all() and (hits.scores[hits.indices >= 0] >= 0.3 - 1e-6).all()
    # polarity never crosses
    pol = np.asarray(lib.polarity)
    qp = queries.polarity
    for r in range(len(queries)):
        got = pol[hits.indices[r][hits.indices[r] >= 0]]
        assert qp[r] == 0 or ((got == qp[r]) | (got == 0)).all()
    # same adduct
    ad = lib.search(queries, k=K, mode="open", same_adduct=True)
    la = np.array(normalize_adducts(lib.metadata(columns=["adduct"]).column("adduct").to_pylist()), dtype=object)
    qa = normalize_adducts(queries.column("adduct"))
    cand = same_polarity(lib, queries) & np.array([[a is None or a == b for b in la] for a in qa])
    assert_same_hits(ad, brute_force(lib, queries, "cosine", cand))


def test_unknown_polarity_matches_both(lib, data):
    q = data[1][:8]
    # no ion mode, charge or adduct (whose sign polarity falls back on)
    q = q.with_metadata(q.metadata.drop([c for c in ("ion_mode", "adduct", "precursor_type")
                                         if c in q.metadata.column_names]))
    q = Spectra(q.offsets, q.mz, q.intensity, q.precursor_mz, np.zeros(len(q), np.int8), q.metadata, validate=False)
    assert (q.polarity == 0).all()
    hits = lib.search(q, k=K, mode="open")
    assert_same_hits(hits, brute_force(lib, q, "cosine", np.ones((len(q), len(lib)), bool)))


# ------------------------------------------------------------------------------------------ raw peaks vs matchms
def test_no_preprocess_equals_matchms(raw, data):
    from matchms.similarity import CosineGreedy, ModifiedCosineGreedy

    queries = data[1][:40]
    queries = queries[np.flatnonzero(np.isfinite(queries.precursor_mz))][:5]
    sub = np.arange(0, len(raw), 5)  # matchms is slow: score a fifth of the library
    # the peaks as read, MassBank's few zero-intensity ones included (kept, as matchms keeps them)
    lib_ms, q_ms = raw.spectra(sub, metadata=True).to_matchms(), apply_pipeline(None, queries).to_matchms()
    pol = same_polarity(raw, queries)[:, sub]
    for mode, sim in (("open", CosineGreedy(tolerance=0.02)), ("analog", ModifiedCosineGreedy(tolerance=0.02))):
        hits = raw.search(queries, k=K, mode=mode, tolerance=0.02)
        for r, q in enumerate(q_ms):
            scored = []
            for c, l in enumerate(lib_ms):
                if pol[r, c]:
                    res = sim.pair(l, q)  # the library spectrum is matchms' reference
                    if res["matches"] > 0:
                        scored.append((-float(res["score"]), int(sub[c]), int(res["matches"])))
            scored.sort()
            # the search's hits among the scored fifth are matchms' best of that fifth
            got = [(float(s), int(i), int(m)) for s, i, m in zip(hits.scores[r], hits.indices[r], hits.matches[r])
                   if i >= 0 and i % 5 == 0]
            best = scored[: len(got)]
            np.testing.assert_allclose([g[0] for g in got], [-b[0] for b in best], rtol=1e-6, atol=1e-6)
            for g, b in zip(got, best):
                if sum(abs(-x[0] - g[0]) <= TIE for x in scored) == 1:
                    assert (g[1], g[2]) == (b[1], b[2])
            # and nothing matchms scores higher is missing from the top k
            if (hits.indices[r] >= 0).sum() == K:
                assert all(-x[0] <= hits.scores[r, -1] + 1e-6 for x in scored if x[1] not in hits.indices[r])


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("mode,metric", [("open", "cosine"), ("analog", "modified_cosine"), ("identity", "cosine"),
                                         ("formula", "cosine")])
def test_min_matches_counts_zero_intensity_pairs(tmp_path, monkeypatch, mode, metric, dense):
    """A pair with a zero-intensity peak on either side adds 0 to the score and 1 to the matched peaks
    (matchms): a spectrum that reaches ``min_matches`` only through such pairs is still a hit (the index
    stores a zero intensity's cosine weight as the smallest normal float32, so the bounds count it)."""
    mz = [[100.0, 150.0, 200.0, 250.0]] * 4 + [[100.0, 150.0, 200.0, 260.0], [90.0, 150.0, 210.0, 260.0]]
    it = [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 3.0], [0.0, 0.0, 2.0, 3.0], [5.0, 0.0, 0.0, 3.0],
          [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]]
    md = pa.table({"formula": ["C10H12O2"] * 6, "ion_mode": ["positive"] * 6})
    # open / analog: precursors apart, so that no exact scoring of a precursor window finds the hits first
    pmz = np.full(6, 300.0) if mode == "identity" else 300.0 + 7.0 * np.arange(6)
    sp = Spectra.from_arrays([np.array(m) for m in mz], [np.array(x) for x in it], precursor_mz=pmz, metadata=md)
    lib = Library.build(sp, tmp_path / "z.fastspec", preprocess=None, faiss=False)
    assert (np.asarray(lib.array("intensity")) == 0).sum() == 5
    from fastspec import search_fragment as F

    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf if dense else -np.inf))
    for mm in (1, 3, 4):
        hits = lib.search(sp, k=6, mode=mode, metric=metric, tolerance=0.02, min_matches=mm)
        ref = brute_force(lib, sp, metric, np.ones((6, 6), bool), k=6, min_matches=mm)
        assert_same_hits(hits, ref)
        assert (hits.indices[:4, 0] >= 0).all() if mm == 4 else True  # the first four pair all 4 peaks


@pytest.mark.parametrize("zeros_in", ["both", "query"])
def test_entropy_min_matches_ignores_zero_intensity_pairs(tmp_path, zeros_in):
    """Entropy never matches a zero-intensity peak (ms_entropy cleans it away), so the bound search's
    lower sums must not count such a pair either: here spectrum 1 shares 9 of the query's 10 peaks plus
    its two zero-intensity ones, and counted as 11 matches it raised the threshold above spectrum 2
    (score 0.925, 10 matches), which ``min_matches=10`` then lost."""
    base = 100.0 + 20.0 * np.arange(10)
    zmz = np.array([400.0, 420.0])
    qmz, qit = np.concatenate([base, zmz]), np.concatenate([np.ones(10), np.zeros(2)])
    query = Spectra.from_arrays([qmz], [qit], precursor_mz=np.array([500.0]))
    # "query": spectrum 1 has faint positive peaks where the query's are zero
    mz = [qmz, np.concatenate([base[:9], zmz]), base, base[9:]]
    it = [qit, np.concatenate([np.ones(9), np.zeros(2) if zeros_in == "both" else np.full(2, 0.01)]),
          np.exp(1.2 * np.array([0, 1, -1, 0, 1, -1, 0, 1, -1, 0.0])), np.ones(1)]
    sp = Spectra.from_arrays(mz, it, precursor_mz=np.array([500.0, 500.0, 500.0, 900.0]))
    lib = Library.build(sp, tmp_path / "e.fastspec", preprocess=None, faiss=False)
    for mm in (0, 10):
        hits = lib.search(query, k=2, mode="open", metric="entropy", min_matches=mm)
        assert_same_hits(hits, brute_force(lib, query, "entropy", np.ones((1, 4), bool), k=2, min_matches=mm))
    assert hits.indices[0].tolist() == [0, 2]


def test_zero_intensity_peaks_equal_matchms(massbank_parquet, tmp_path):
    """MassBank's zero-intensity peaks (676 in 603 records), read from the file by fastspec and, apart,
    by pyarrow into matchms spectra: ``--no-preprocess`` search gives matchms' scores and matched-peak
    counts (which count zero-intensity pairs; at ``intensity_power=0`` such a peak weighs 0**0 = 1), and
    misses nothing matchms scores higher, ``min_matches`` included."""
    import logging

    import fastspec.io as fio
    from matchms import Spectrum
    from matchms.similarity import CosineGreedy

    logging.getLogger("matchms").setLevel(logging.ERROR)
    table = pq.read_table(massbank_parquet, columns=["mz", "intensity", "ion_mode"])
    inten = table.column("intensity").to_pylist()
    zero_rows = [i for i, x in enumerate(inten) if x and min(x) == 0]
    assert len(zero_rows) == 603
    rng = np.random.default_rng(5)
    rows = np.unique(np.concatenate([zero_rows[::3], rng.choice(table.num_rows, 300, replace=False)]))
    sp, report = fio.read(massbank_parquet, return_report=True)
    assert report.n_rejected == 0 and report.n_zero_intensity == 676
    lib = Library.build(sp[rows], tmp_path / "z.fastspec", preprocess=None, faiss=False)
    mz, modes = table.column("mz").to_pylist(), table.column("ion_mode").to_pylist()

    def ms(i):  # float32 intensities, as every reader stores them
        return Spectrum(mz=np.array(mz[i]), intensities=np.array(inten[i], np.float32).astype(np.float64),
                        metadata={"ionmode": modes[i]})

    lib_ms = [ms(i) for i in rows]
    qpos = np.flatnonzero(np.isin(rows, zero_rows))[::12]  # queries with zero-intensity peaks, from the library
    lpol = np.asarray(lib.polarity)
    n_zero_pairs = 0
    for params, mm in (({}, 0), ({"intensity_power": 0.0}, 0), ({}, 4)):
        sim = CosineGreedy(tolerance=0.02, **params)
        hits = lib.search(sp[rows[qpos]], k=K, mode="open", tolerance=0.02, min_matches=mm, **params)
        for r, qp in enumerate(qpos):
            ref = {}
            for c in np.flatnonzero((lpol == lpol[qp]) | (lpol == 0)):
                res = sim.pair(lib_ms[qp], lib_ms[c])
                if res["matches"] >= max(mm, 1):
                    ref[int(c)] = (float(res["score"]), int(res["matches"]))
            got = [(int(i), float(s), int(m)) for i, s, m in zip(hits.indices[r], hits.scores[r], hits.matches[r]) if i >= 0]
            assert len(got) == min(K, len(ref))
            for i, s_, m in got:
                assert abs(ref[i][0] - s_) <= 1e-6 and ref[i][1] == m
                n_zero_pairs += bool((np.asarray(inten[rows[i]]) == 0).any())
            kth = got[-1][1] if len(got) == K else -1.0
            assert all(v[0] <= kth + 1e-6 for c, v in ref.items() if c not in hits.indices[r])
    assert n_zero_pairs > 50  # hits with zero-intensity peaks were compared


# ------------------------------------------------------------------------------------------ faiss
def test_faiss_engine_rescored_exactly_with_high_recall(lib, data):
    queries = data[1]
    exact = lib.search(queries, k=K, mode="open")
    approx = lib.search(queries, k=K, mode="open", engine="faiss", n_candidates=200, nprobe=64)
    ok = exact.indices >= 0
    found = [len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx.indices, exact.indices)]
    recall = sum(found) / max(1, ok.sum())
    assert recall >= 0.9
    # every returned score is the exact score of that pair
    S, _ = dense(lib, queries, "cosine")
    rows, cols = np.nonzero(approx.indices >= 0)
    np.testing.assert_allclose(approx.scores[rows, cols], S[rows, approx.indices[rows, cols]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ParameterError):
        lib.search(queries, mode="identity", engine="faiss")
    # fewer candidates than k would cap every query's hits below k: refused; the hits record what was used
    with pytest.raises(ParameterError, match="at least k"):
        lib.search(queries, k=10, mode="open", engine="faiss", n_candidates=5)
    assert approx.params["n_candidates"] == min(200, len(lib))
    assert lib.search(queries[:2], k=4, mode="open", engine="faiss").params["n_candidates"] == min(500, len(lib))
    with pytest.raises(ParameterError, match="apply to engine='faiss'"):  # the option first, then its value
        lib.search(queries, k=10, mode="open", n_candidates=5)


def _polarity_trap(tmp_path, faiss_params):
    """400 negative near-copies of a query, 6 weaker positive matches (3 [M+H]+, 3 [M+Na]+), 1,994
    unrelated positive spectra; and the positive [M+H]+ query."""
    rng = np.random.default_rng(3)
    base = np.array([81.07, 95.09, 109.1, 123.12, 137.13, 151.15])
    mzs, ints, mode, adduct = [], [], [], []
    for i in range(2400):
        if i < 400:  # near copies of the query, other polarity
            mzs.append(base + rng.normal(0, 1e-4, 6)); mode.append("negative"); adduct.append("[M-H]-")
        elif i < 406:  # weaker same-polarity matches: half the peaks shared, two adducts
            mzs.append(np.sort(np.r_[base[:3], rng.uniform(300, 400, 3)])); mode.append("positive")
            adduct.append("[M+H]+" if i < 403 else "[M+Na]+")
        else:
            mzs.append(np.sort(rng.uniform(160, 600, 6))); mode.append("positive"); adduct.append("[M+H]+")
        ints.append(np.linspace(1.0, 0.5, 6))
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=[700.0] * len(mzs),
                             metadata={"id": [str(i) for i in range(len(mzs))], "ion_mode": mode, "adduct": adduct})
    lib = Library.build(sp, tmp_path / "p.fastspec", preprocess=None, faiss=True, faiss_params=faiss_params)
    q = Spectra.from_arrays([base], [np.linspace(1.0, 0.5, 6)], precursor_mz=[700.0],
                            metadata={"id": ["q"], "ion_mode": ["positive"], "adduct": ["[M+H]+"]})
    return lib, q


@pytest.mark.parametrize("flat", [False, True])
def test_faiss_candidates_only_from_eligible_spectra(tmp_path, flat, monkeypatch):
    """FAISS neighbours are drawn from the spectra a query may match: a positive query whose nearest
    vectors are all negative spectra still gets its positive hits (filtering the n neighbours afterwards
    left it none), for the FAISS engine and for the analog threshold; the same with ``same_adduct``."""
    from fastspec import search_fragment as F
    from fastspec import search_scan

    lib, q = _polarity_trap(tmp_path, {"flat_below": 10**9 if flat else 0, "nlist": 4})
    hits = lib.search(q, k=6, mode="open", engine="faiss", n_candidates=50, nprobe=4)
    assert sorted(hits.indices[0].tolist()) == list(range(400, 406))
    hits = lib.search(q, k=6, mode="open", engine="faiss", n_candidates=50, nprobe=4, same_adduct=True)
    assert sorted(hits.indices[0][hits.indices[0] >= 0].tolist()) == [400, 401, 402]
    # the analog threshold's first FAISS round (here 10 neighbours) finds k eligible hits: no second round
    asked = []
    orig = search_scan.faiss_candidates
    monkeypatch.setattr(F, "_THETA_FAISS_ANALOG", 10)
    monkeypatch.setattr(F, "_THETA_FAISS_PQ", 10)
    monkeypatch.setattr(search_scan, "faiss_candidates",
                        lambda ctx, rows, n, nprobe, **kw: asked.append(n) or orig(ctx, rows, n, nprobe, **kw))
    hits = lib.search(q, k=3, mode="analog", tolerance=0.01)
    assert asked == [10]
    assert lib.has_faiss_theta != flat  # the threshold's neighbours came from the PQ index: eligible ones too
    assert_same_hits(hits, brute_force(lib, q, "modified_cosine", same_polarity(lib, q), k=3, tolerance="0.01da"))
    # the selector takes the row mask or its packed bitmap (what searches cache): the same neighbours
    from fastspec import vectors

    index = vectors.load_faiss_index(lib)
    qv = vectors.spectrum_vectors(q, lib.manifest["build"]["faiss"])
    mask = np.zeros(len(lib), dtype=bool)
    mask[400:] = True
    by_mask = vectors.faiss_search(index, qv, 20, nprobe=4, allowed=mask)
    np.testing.assert_array_equal(by_mask, vectors.faiss_search(index, qv, 20, nprobe=4, allowed=vectors.pack_rows(mask)))
    assert (by_mask >= 400).all()
    with pytest.raises(ValueError, match="bitmap"):
        vectors.faiss_search(index, qv, 20, allowed=vectors.pack_rows(mask)[:-1])


@pytest.mark.parametrize("with_theta", [True, False])
def test_first_thresholds_from_the_threshold_index(data, tmp_path, monkeypatch, with_theta):
    """Next to an IVF index of 1,000+ spectra the build also writes the small PQ fast-scan threshold index,
    from which open, analog and hybrid search take their FAISS thresholds; without it
    (``theta_index=None``, or an index built before it) the main index serves them. Either way the hits
    equal brute force."""
    from fastspec import search_fragment as F
    from fastspec import search_scan

    fp = {"flat_below": 0} if with_theta else {"flat_below": 0, "theta_index": None}
    lib = Library.build(data[0][:1500], tmp_path / "t.fastspec", faiss=True, faiss_params=fp)
    assert lib.has_faiss_theta == with_theta
    info = lib.manifest["build"]["faiss"]["theta"]
    assert (info["ntotal"] == len(lib) and "PQ32x4fs" in info["index"]) if with_theta else info is None
    used = []
    orig = search_scan.faiss_candidates
    monkeypatch.setattr(search_scan, "faiss_candidates",
                        lambda ctx, rows, n, nprobe, theta=False: used.append(theta) or orig(ctx, rows, n, nprobe,
                                                                                              theta=theta))
    monkeypatch.setattr(F, "_THETA_FAISS_OPEN_MIN", 0)
    monkeypatch.setattr(F, "_THETA_FAISS_OPEN_MIN_SQ8", 0)
    first = []
    orig_first = F._first_theta
    monkeypatch.setattr(F, "_first_theta",
                        lambda ctx, rows, use_nl: first.append(orig_first(ctx, rows, use_nl)) or first[-1])
    queries = data[1]
    for mode, metric in (("open", "entropy"), ("open", "cosine"), ("analog", "modified_cosine")):
        hits = lib.search(queries, k=K, mode=mode, metric=metric)
        assert_same_hits(hits, brute_force(lib, queries, metric, same_polarity(lib, queries)))
        # the neighbours gave real thresholds (a threshold of -inf everywhere would pass the comparison too)
        assert np.isfinite(first[-1]).mean() > 0.5
    # hybrid: the same hits as with no first threshold at all
    hits = lib.search(queries, k=K, mode="hybrid")
    assert np.isfinite(first[-1]).mean() > 0.5
    monkeypatch.setattr(F, "_first_theta", lambda ctx, rows, use_nl: np.full(rows.shape[0], -np.inf))
    ref = lib.search(queries, k=K, mode="hybrid")
    np.testing.assert_allclose(hits.scores, ref.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hits.indices >= 0, ref.indices >= 0)
    assert used and set(used) == {with_theta}
    if with_theta:  # an append rebuilds it at the new size
        lib.append(data[0][1500:2500])
        assert lib.has_faiss_theta and lib.manifest["build"]["faiss"]["theta"]["ntotal"] == len(lib)


def test_faiss_index_without_search_parameters(tmp_path):
    """An index type that takes no search parameters (IndexPQ) cannot skip ineligible spectra: its
    neighbours are filtered afterwards instead, and the search still runs and stays eligible."""
    lib, q = _polarity_trap(tmp_path, {"flat_below": 0, "index": "PQ8"})
    assert lib.manifest["build"]["faiss"]["index"] == "PQ8"
    hits = lib.search(q, k=6, mode="open", engine="faiss", n_candidates=2400)
    got = hits.indices[0][hits.indices[0] >= 0]
    assert got.shape[0] > 0 and np.all(got >= 400)


def test_concurrent_searches_of_one_library(lib, data):
    """Python threads searching one open Library at once (every exact whole-library mode, identity,
    FAISS; different thread counts, so different workspace shapes) get what they get alone: searches
    never share a scratch buffer."""
    from concurrent.futures import ThreadPoolExecutor

    queries = data[1]
    jobs = [dict(mode="open", metric="cosine"), dict(mode="open", metric="entropy"),
            dict(mode="analog", metric="modified_cosine"), dict(mode="open", metric="binned_cosine"),
            dict(mode="identity", metric="cosine"), dict(mode="open", metric="cosine", engine="faiss", nprobe=2),
            dict(mode="open", metric="cosine", engine="faiss", nprobe=64)]
    alone = [lib.search(queries, k=K, progress=False, **j) for j in jobs]
    work = [(i, t) for _ in range(3) for i in range(len(jobs)) for t in (1, 2)]
    with ThreadPoolExecutor(max_workers=6) as ex:
        got = list(ex.map(lambda it: lib.search(queries, k=K, threads=it[1], progress=False, **jobs[it[0]]), work))
    for (i, _), h in zip(work, got):
        np.testing.assert_array_equal(h.indices, alone[i].indices, err_msg=str(jobs[i]))
        np.testing.assert_array_equal(h.scores, alone[i].scores, err_msg=str(jobs[i]))
        np.testing.assert_array_equal(h.matches, alone[i].matches, err_msg=str(jobs[i]))


def test_append_inside_a_search_of_the_same_object_is_refused(data, tmp_path, monkeypatch):
    """``append`` waits for the searches running on its Library object (see test_library), so one called
    from inside a search of that object, in the same thread, would wait for itself: refused with a clear
    error, the library unchanged. Scratch lent before the library changes is still never lent again."""
    import fastspec.search as S
    from fastspec.errors import FastspecError

    small = Library.build(data[0][:1500], tmp_path / "a.fastspec", faiss=False)
    n0 = len(small)
    orig = S._Context.close
    errors = []

    def close_after_append(self):
        try:
            small.append(data[0][1500:])
        except FastspecError as e:
            errors.append(str(e))
        orig(self)

    kw = dict(k=K, mode="open", metric="cosine", mz_power=1.0)  # bound-kernel workspace and the mark array
    monkeypatch.setattr(S._Context, "close", close_after_append)
    small.search(data[1][:5], **kw)
    monkeypatch.setattr(S._Context, "close", orig)
    assert errors and "inside a search" in errors[0] and len(small) == n0
    small.append(data[0][1500:])  # outside a search: fine
    got = small.search(data[1], **kw)
    want = Library.open(tmp_path / "a.fastspec").search(data[1], **kw)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.scores, want.scores)
    # a workspace lent before the library changed is dropped when given back
    obj, generation = small.take_scratch("probe", lambda: object())
    small._release()
    small.give_scratch("probe", obj, generation)
    assert small._scratch.get("probe", []) == []


def test_faiss_vectors_equal_reference_in_chunks(data):
    """The hashed vectors equal the naive reference, also when computed chunk by chunk from CSR slices
    into one reused buffer holding garbage (as the index build does)."""
    import reference as ref

    from fastspec.vectors import csr_vectors, spectrum_vectors

    sp = data[0][:700]
    whole = spectrum_vectors(sp)
    for r in range(0, len(sp), 97):
        want = ref.hashed_vector(sp.mz[sp.offsets[r]:sp.offsets[r + 1]], sp.intensity[sp.offsets[r]:sp.offsets[r + 1]])
        np.testing.assert_allclose(whole[r], want, rtol=1e-5, atol=1e-6)
    buf = np.full((256, 256), np.nan, dtype=np.float32)
    for a in range(0, len(sp), 256):
        b = min(len(sp), a + 256)
        lo, hi = sp.offsets[a], sp.offsets[b]
        got = csr_vectors(sp.offsets[a:b + 1], sp.mz[lo:hi], sp.intensity[lo:hi], out=buf)
        np.testing.assert_array_equal(got, whole[a:b])
    with pytest.raises(FastspecError):
        csr_vectors(sp.offsets, sp.mz, sp.intensity, out=buf)  # too few rows
    with pytest.raises(FastspecError):
        csr_vectors(sp.offsets[:3], sp.mz, sp.intensity)  # peaks not matching the offsets


def test_nearest_lists_equal_reference(data):
    """The build's own coarse assignment (nonzero slots only) picks the centroid of largest inner
    product, as the naive reference does; ties go to the lowest centroid."""
    import reference as ref

    from fastspec.vectors import nearest_lists, spectrum_vectors

    x = spectrum_vectors(data[0][:400])
    rng = np.random.default_rng(4)
    cen = x[rng.choice(400, 37, replace=False)] + rng.normal(0, 0.05, (37, 256)).astype(np.float32)
    got = nearest_lists(x, np.ascontiguousarray(cen.T))
    want = [ref.nearest_centroid(v, cen) for v in x[::7]]
    # float32 sums in another order: where the two differ, the centroids' products tie within rounding
    for g, w, v in zip(got[::7], want, x[::7]):
        assert g == w or abs(float(v @ cen[g]) - float(v @ cen[w])) < 1e-5
    twice = np.ascontiguousarray(np.concatenate([cen, cen]).T)  # every centroid twice: the first one wins
    np.testing.assert_array_equal(nearest_lists(x, twice), got)
    assert nearest_lists(np.zeros((3, 256), np.float32), twice).tolist() == [0, 0, 0]
    bad = x[:3].copy()
    bad[0, np.flatnonzero(bad[0])[0]] = np.nan
    bad[1, 5] = np.inf
    assert nearest_lists(bad, twice).tolist() == [-1, -1, got[2]]  # as FAISS: in no list
    with pytest.raises(FastspecError):
        nearest_lists(x, cen)  # not transposed


@pytest.mark.parametrize("params", [{}, {"index": "IVF{nlist},Flat", "theta_index": None},
                                    {"index": "IVF{nlist},PQ16x4fs", "theta_index": None},
                                    {"index": "PCA64,IVF{nlist},SQ8", "theta_index": None}])
def test_faiss_build_byte_identical_to_faiss_own_add(data, tmp_path, params, monkeypatch):
    """The build assigns vectors to inverted lists itself (and fills the fast-scan threshold index
    through a plain IVF-PQ twin), in chunks: the index files are byte for byte those of FAISS's own
    ``add`` (on these spectra no two centroids tie within float32 rounding). Index types it cannot do
    that for (fast-scan main index, pre-transforms) take FAISS's ``add``."""
    from fastspec import vectors
    from fastspec._indexfmt import THETA_FILE

    params = dict({"flat_below": 0, "nlist": 24, "theta_nlist": 8}, **params)
    sp = data[0]
    monkeypatch.setattr(vectors, "_ADD_CHUNK", 700)  # 5 chunks: lists and ids run on across them
    calls = []
    real = vectors.nearest_lists
    monkeypatch.setattr(vectors, "nearest_lists", lambda *a, **k: calls.append(1) or real(*a, **k))
    vectors.build_faiss_index(tmp_path / "a.index", sp, params)
    own = bool(calls)
    theta = "theta_index" not in params
    if own:  # one call per chunk and index (main, threshold)
        assert len(calls) == 5 * (2 if theta else 1)
    monkeypatch.setattr(vectors, "_flat_ip_centroids", lambda faiss, index: None)
    monkeypatch.setattr(vectors, "_plain_twin", lambda faiss, index: None)
    (tmp_path / "b").mkdir()
    vectors.build_faiss_index(tmp_path / "b" / "a.index", sp, params)
    assert (tmp_path / "a.index").read_bytes() == (tmp_path / "b" / "a.index").read_bytes()
    assert (tmp_path / THETA_FILE).exists() == theta
    if theta:
        assert (tmp_path / THETA_FILE).read_bytes() == (tmp_path / "b" / THETA_FILE).read_bytes()
    assert own == (params.get("index") in (None, "IVF{nlist},Flat"))


# ------------------------------------------------------------------------------------------ Hits
def test_hits_table_without_a_library():
    # hits made by hand: library rows as ids, null library metadata
    h = Hits(np.array([[0.9, 0.5], [0.0, 0.0]]), np.array([[3, 7], [-1, -1]]), np.array([[2, 1], [0, 0]]),
             status=np.array(["ok", "no_hit"], dtype=object))
    t = h.to_arrow()
    assert t.column("library_id").to_pylist() == ["3", "7", None]
    assert t.column("smiles").null_count == 3 and t.column("query_index").to_pylist() == [0, 0, 1]
    assert h.to_arrow(library_columns=False).column("library_id").null_count == 3
    pd = pytest.importorskip("pandas")
    df = h.to_pandas()  # a query without hits: nullable integers, not float64
    assert str(df["rank"].dtype).startswith("Int")
    assert str(df["library_index"].dtype) == "Int64" and df["library_index"].isna().tolist() == [False, False, True]
    assert df["library_index"].tolist()[:2] == [3, 7] and pd.isna(df["n_matched"].iloc[2])


def test_to_pandas_without_pandas_says_so(monkeypatch):
    import sys

    from fastspec.errors import FastspecError
    from fastspec.hits import Hits

    monkeypatch.setitem(sys.modules, "pandas", None)  # an environment without pandas
    h = Hits(np.array([[0.9]]), np.array([[3]]), np.array([[2]]), status=np.array(["ok"], dtype=object))
    with pytest.raises(FastspecError, match="pip install pandas"):
        h.to_pandas()


def test_library_without_ids_names_its_hits_by_row(tmp_path):
    """A library read without ids gave hits a null library_id (its metadata has an all-null id column), while
    queries without ids were named by position: library spectra are named by their library_index."""
    from fastspec import synth

    sp = synth.generate(300, seed=3)
    sp = sp.with_metadata(sp.metadata.drop_columns(["id"]))
    lib = Library.build(sp, tmp_path / "noid.fastspec", faiss=False)
    t = lib.search(sp[:5], k=3, mode="open").to_arrow()
    has = t.column("library_index").is_valid().to_pylist()
    ids = t.column("library_id").to_pylist()
    assert all(h for h in has)
    assert ids == [str(i) for i in t.column("library_index").to_pylist()]


def test_hits_subsets_keep_their_query_index(lib, data):
    """``hits[sel]`` (int, slice, int rows, mask) is a Hits of those queries: their arrays, ids and hit-table
    rows, each query keeping its ``query_index``; iterating gives one Hits per query."""
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity")
    full = hits.to_arrow()
    qi = full.column("query_index").to_numpy()
    n = len(hits)
    mask = np.zeros(n, bool)
    mask[::3] = True
    for sel, rows in ((4, [4]), (slice(2, 9, 2), [2, 4, 6, 8]), (np.array([7, 0, 7]), [7, 0, 7]), (mask, np.flatnonzero(mask)),
                      (-1, [n - 1])):
        sub = hits[sel]
        rows = np.asarray(rows)
        assert len(sub) == len(rows) and sub.k == hits.k
        assert np.array_equal(sub.scores, hits.scores[rows]) and np.array_equal(sub.indices, hits.indices[rows])
        assert sub.query_ids == [hits.query_ids[r] for r in rows] and np.array_equal(sub.query_index, rows)
        want = pa.concat_tables([full.filter(pa.array(qi == r)) for r in rows])
        assert sub.to_arrow().equals(want)
    assert [len(h) for h in hits] == [1] * n and next(iter(hits)).to_arrow().equals(hits[0].to_arrow())
    for bad in (n, -n - 1, (0, 1), "a", np.zeros(n + 1, bool), True, np.bool_(False), None, 1.0, [[0, 1]]):
        with pytest.raises(IndexError):
            hits[bad]
    assert len(hits[[]]) == 0 and len(hits[2:2]) == 0
    # numpy sees one object, not an array of its queries (each a Hits again: it recursed 64 levels deep)
    assert np.asarray(hits).shape == () and np.array([hits[0], hits[1]], dtype=object).shape == (2,)


def test_hits_table(lib, data, tmp_path):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity")
    table = hits.to_arrow()
    assert tuple(table.column_names[: len(HIT_COLUMNS)]) == HIT_COLUMNS
    # every query appears, in the caller's order; no-hit queries have one row with null library columns
    qi = table.column("query_index").to_numpy()
    assert np.array_equal(np.unique(qi), np.arange(len(queries))) and np.all(np.diff(qi) >= 0)
    n_hits = (hits.indices >= 0).sum(1)
    assert table.num_rows == int(np.maximum(n_hits, 1).sum())
    none = np.flatnonzero(n_hits == 0)
    assert len(none) > 0
    rows = table.filter(np.isin(qi, none))
    assert rows.column("library_index").null_count == rows.num_rows and rows.column("rank").null_count == rows.num_rows
    first = table.filter(table.column("rank").to_numpy(zero_copy_only=False) == 1)
    ids = lib.metadata(rows=first.column("library_index").to_numpy(), columns=["id"]).column("id")
    assert first.column("library_id").to_pylist() == ids.to_pylist()
    d = first.column("delta_mz").to_numpy(zero_copy_only=False)
    assert np.nanmax(np.abs(d)) <= 0.01 + 1e-9
    assert table.column("query_id").to_pylist()[0] == queries.ids[0]
    hits.to_parquet(tmp_path / "h.parquet")
    back = pq.read_table(tmp_path / "h.parquet")
    assert json.loads(back.schema.metadata[b"fastspec"])["mode"] == "identity"
    hits.write(tmp_path / "h.tsv")
    text = (tmp_path / "h.tsv").read_text().splitlines()
    assert text[0].startswith("# ") and any(line.startswith('"query_index"') or line.startswith("query_index") for line in text)
    df = hits.to_pandas()
    assert list(df.columns) == table.column_names and len(df) == table.num_rows
    assert df.attrs["fastspec"]["mode"] == "identity"


def test_bad_parameters(lib, data):
    q = data[1][:3]
    for kw in ({"mode": "fuzzy"}, {"k": 0}, {"tolerance": "abc"}, {"mode": "analog", "metric": "cosine"},
               {"no_neighbour": "maybe"}, {"engine": "gpu"}, {"metric": "nope"}, {"min_matches": "3"},
               {"min_score": float("nan")}, {"min_score": 2}, {"no_such_option": 1}, {"metric": "entropy", "clean": True},
               {"metric": "entropy", "intensity_power": 0.5}, {"threads": 0}, {"on_error": "ignore"}):
        with pytest.raises(ParameterError):
            lib.search(q, **kw)
    # formula-mode options outside formula mode, formulas that are neither a string nor one per query, a
    # dict as queries (its keys would be taken for paths)
    for kw in ({"mode": "open", "no_neighbour": "fallback"}, {"mode": "identity", "no_neighbour": "empty"},
               {"mode": "formula", "formula": 123}, {"mode": "formula", "formula": {"a": "C6H6"}}):
        with pytest.raises(ParameterError, match="formula"):
            lib.search(q, **kw)
    with pytest.raises(ParameterError, match="dict"):
        lib.search({"mz": [[100.0]], "intensity": [[1.0]]}, mode="open")
    # a negative intensity power would weigh zero-intensity peaks inf (scores NaN, hits silently lost)
    with pytest.raises(ParameterError, match="intensity_power must be 0 or more"):
        lib.search(q, mode="open", intensity_power=-0.5)
    # a precursor window outside identity mode filtered nothing (the CLI refused it, the API ignored it)
    for mode in ("open", "analog", "formula", "hybrid"):
        with pytest.raises(ParameterError, match="precursor_tolerance applies to mode='identity'"):
            lib.search(q, mode=mode, precursor_tolerance="5ppm")
    assert lib.search(q, k=1).params["precursor_tolerance"] == "0.01da"
    # progress: True/False/None, numbers and numpy booleans as booleans, a tqdm bar; "no" refused (0 crashed)
    for flag in (0, 1, np.bool_(False)):
        assert lib.search(q, k=1, mode="open", progress=flag).scores.shape == (3, 1)
    with pytest.raises(ParameterError, match="progress"):
        lib.search(q, k=1, mode="open", progress="no")
    # ... as every other function taking progress= refuses it (search_to_file showed a bar for it)
    import fastspec.io as fio

    from tqdm import tqdm

    with tqdm(disable=True) as bar:  # a caller's own bar, as search() takes one, left open for the caller
        lib.search_to_file(q, "/dev/null", output_format="tsv", progress=bar)
    for call in (lambda: lib.search_to_file(q, "/dev/null", output_format="tsv", progress="no"),
                 lambda: fio.read(fio.write(q, lib.path.parent / "q.mgf") or lib.path.parent / "q.mgf", progress="no"),
                 lambda: Library.build(q, lib.path.parent / "p.fastspec", progress="no", faiss=False)):
        with pytest.raises(ParameterError, match="progress"):
            call()
    # aliases resolve
    assert lib.search(q, k=2, mode="open", metric="modcos").params["metric"] == "modified_cosine"
    # a metric's own refusals whatever the queries find: they were raised only once a query reached a
    # candidate, so queries without peaks or candidates returned hits under refused parameters
    empty = Spectra.from_arrays([np.zeros(0)], [np.zeros(0, np.float32)], [1e5])
    for queries in (q, empty):
        for kw, why in (({"mode": "formula", "metric": "binned_cosine", "tolerance": "10ppm", "formula": "C7H8"},
                         "bin_width"),
                        ({"mode": "identity", "metric": "entropy", "tolerance": 0.0}, "positive tolerance")):
            with pytest.raises(ParameterError, match=why):
                lib.search(queries, **kw)


def test_remembered_parameters_are_still_checked(lib, data):
    """Validated parameters are remembered with the library for the next call with the same ones; values
    equal to a remembered one but of another type (``True == 1``) are still refused, and unhashable or
    extra metric parameters are validated afresh."""
    q = data[1][:3]
    for _ in range(2):
        assert lib.search(q, k=1, mode="open").indices.shape == (3, 1)
        with pytest.raises(ParameterError, match="k must be"):
            lib.search(q, k=True, mode="open")
        with pytest.raises(ParameterError):
            lib.search(q, k=1, mode="open", same_charge=1)
        with pytest.raises(ParameterError):
            lib.search(q, k=1, mode="open", tolerance=[0.02])
    # the hit table's parameters are the caller's to edit: the remembered config is not
    h = lib.search(q, k=3, mode="open")
    h.params["metric_params"]["bin_width"] = 20.0
    h.params["preprocess"].clear()
    assert lib.search(q, k=3, mode="open").params["metric_params"] == {}
    assert lib.preprocess_config
    a = lib.search(q, k=2, mode="open", metric="cosine", mz_power=0.5)
    b = lib.search(q, k=2, mode="open", metric="cosine", intensity_power=1.0, mz_power=0.5)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("mode,metric", [("identity", "cosine"), ("identity", "entropy"), ("open", "cosine"),
                                         ("open", "entropy"), ("analog", None), ("hybrid", None)])
def test_one_query_per_call_equals_the_batch(lib, data, mode, metric):
    """A search of one spectrum takes shortcuts (no gather of all rows, remembered parameters): the
    same hits as the batch, query by query."""
    q = data[1][:12]
    batch = lib.search(q, k=K, mode=mode, metric=metric, threads=1)
    for i in range(len(q)):
        one = lib.search(q[i], k=K, mode=mode, metric=metric, threads=1)
        np.testing.assert_array_equal(one.indices[0], batch.indices[i])
        np.testing.assert_allclose(one.scores[0], batch.scores[i], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(one.matches[0], batch.matches[i])


def test_search_inputs_and_refusals(lib, data, tmp_path):
    """One spectrum (``spectra[i]``) and a list of matchms spectra are queries too; entropy over already
    entropy-weighted peaks is refused with what to do instead."""
    q = data[1]
    one, ref = lib.search(q[2], k=3, mode="open"), lib.search(q[[2]], k=3, mode="open")
    np.testing.assert_array_equal(one.indices, ref.indices)
    assert one.query_ids == ref.query_ids
    pytest.importorskip("matchms")
    got, ref = lib.search(q[:4].to_matchms(), k=3, mode="open"), lib.search(q[:4], k=3, mode="open")
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert got.query_ids == ref.query_ids
    weighted = Library.build(data[0][:200], tmp_path / "w.fastspec", preprocess="entropy_clean;entropy_weight",
                             faiss=False)
    with pytest.raises(ParameterError, match="unweighted_entropy"):
        weighted.search(q[:2], mode="open", metric="entropy")
    assert weighted.search(q[:2], mode="open", metric="unweighted_entropy").indices.shape == (2, 10)


def test_query_order_and_library_input_order(lib, data, tmp_path):
    """Hits follow the caller's query order; library rows are the library's input order."""
    q = data[1][:24]
    perm = np.random.default_rng(5).permutation(len(q))
    a, b = lib.search(q, k=K, mode="open"), lib.search(q.take(perm), k=K, mode="open")
    np.testing.assert_array_equal(a.indices[perm], b.indices)
    np.testing.assert_array_equal(a.scores[perm], b.scores)
    assert [a.query_ids[i] for i in perm] == b.query_ids
    # the same library built from shuffled input: the same hits, numbered in the new input order
    sub = data[0][:600]
    lperm = np.random.default_rng(6).permutation(len(sub))
    l1 = Library.build(sub, tmp_path / "a.fastspec", faiss=False)
    l2 = Library.build(sub.take(lperm), tmp_path / "b.fastspec", faiss=False)
    # library rows: the input order, minus spectra left without peaks by preprocessing
    ids1 = np.array(l1.metadata(columns=["id"]).column("id").to_pylist(), dtype=object)
    ids2 = np.array(l2.metadata(columns=["id"]).column("id").to_pylist(), dtype=object)
    kept = set(ids1.tolist())
    assert ids1.tolist() == [i for i in sub.ids if i in kept]
    assert ids2.tolist() == [i for i in sub.take(lperm).ids if i in kept]
    h1, h2 = l1.search(q, k=3, mode="analog"), l2.search(q, k=3, mode="analog")
    ok = h1.indices >= 0
    np.testing.assert_array_equal(ok, h2.indices >= 0)
    np.testing.assert_allclose(h1.scores, h2.scores, rtol=1e-6, atol=1e-6)
    assert ok[:, 0].sum() >= 10
    untied = ok[:, 0] & (np.abs(h1.scores[:, 0] - h1.scores[:, 1]) > TIE)
    assert (ids1[h1.indices[untied, 0]] == ids2[h2.indices[untied, 0]]).all()


def test_empty_and_peakless_queries(lib):
    empty = Spectra.from_arrays([[], [100.0]], [[], [1.0]], precursor_mz=[100.0, 200.0])
    for mode in ("identity", "formula", "open", "analog"):
        h = lib.search(empty, k=K, mode=mode)
        assert h.status[0] == "no_peaks" and (h.indices[0] == -1).all() and (h.scores[0] == 0).all()
        none = lib.search(empty[np.zeros(0, np.int64)], k=K, mode=mode)
        assert len(none) == 0 and none.to_arrow().num_rows == 0


def test_library_without_formulas_or_spectra(tmp_path):
    sp = Spectra.from_arrays([[100.0, 150.0], [100.0, 120.0]], [[1.0, 2.0], [1.0, 1.0]], precursor_mz=[300.0, 300.0])
    lib = Library.build(sp, tmp_path / "a.fastspec", preprocess=None, faiss=False)
    h = lib.search(sp, k=3, mode="formula", formula="C6H12O6", no_neighbour="empty")
    assert (h.indices == -1).all() and list(h.status) == ["no_hit", "no_hit"]
    h = lib.search(sp, k=3, mode="formula", no_neighbour="fallback")
    assert h.fallback.all() and h.indices[0, 0] == 0 and h.indices[1, 0] == 1
    none = Library.build(Spectra.from_arrays([[]], [[]], precursor_mz=[1.0]), tmp_path / "e.fastspec", preprocess=None)
    assert len(none) == 0 and none.n_rejected == 1
    with pytest.raises(FastspecError, match="all 1 records were rejected"):  # the CLI's choice
        Library.build(Spectra.from_arrays([[]], [[]], precursor_mz=[1.0]), tmp_path / "f.fastspec",
                      preprocess=None, allow_empty=False)
    assert not (tmp_path / "f.fastspec").exists()
    for mode in ("identity", "formula", "open", "analog"):
        h = none.search(sp, k=2, mode=mode)
        assert (h.indices == -1).all() and h.to_arrow().num_rows == 2


def test_query_files_follow_on_error(lib, massbank_mgf, tmp_path):
    good = massbank_mgf.read_text().split("END IONS")[0] + "END IONS\n"
    bad = "BEGIN IONS\nTITLE=broken\nPEPMASS=not-a-number\n100.0 abc\nEND IONS\n"
    path = tmp_path / "q.mgf"
    path.write_text(good + bad + good)
    h = lib.search(str(path), k=K, mode="open", on_error="skip")
    assert len(h) == 3 and (h.indices[0] == h.indices[2]).all() and (h.indices[1] == -1).all()
    assert list(h.status) == ["ok", "rejected", "ok"] and h.skipped.tolist() == [False, True, False]
    assert h.query_ids[1] == "broken"  # the id the reader got to
    # a rejected record without an id is named by its position, as an accepted one without an id is
    path.write_text("BEGIN IONS\nPEPMASS=500\n100.0 1\nEND IONS\n" + good + bad.replace("TITLE=broken\n", ""))
    h = lib.search(str(path), k=K, mode="open", on_error="skip")
    assert list(h.status) == ["ok", "ok", "rejected"] and h.query_ids[0] == "0" and h.query_ids[2] == "2"
    assert h.to_arrow().column("query_id").to_pylist()[-1] == "2"
    with pytest.raises(FastspecError):
        lib.search(str(path), k=K, mode="open", on_error="raise")
    with pytest.raises(FileNotFoundError):
        lib.search(str(tmp_path / "missing.mgf"))


def test_query_forms_and_flag_checks(lib, data):
    """Modes and engines in any case, as metric names; filter flags must be booleans ("no" is not False);
    one matchms Spectrum and a list of SpectrumViews are query sets like the others."""
    q = data[1][:3]
    want = lib.search(q, k=K, mode="open")
    got = lib.search(q, k=K, mode="OPEN", engine="Exact")
    np.testing.assert_array_equal(got.indices, want.indices)
    with pytest.raises(ParameterError, match="same_adduct"):
        lib.search(q, k=K, mode="open", same_adduct="no")
    with pytest.raises(ParameterError, match="faiss"):  # set but unused with the exact engine
        lib.search(q, k=K, mode="open", nprobe=4)
    with pytest.raises(ParameterError, match="formula"):
        lib.search(q, k=K, mode="open", formula="C6H12O6")
    with pytest.raises(ParameterError, match="empty"):
        lib.search(q, k=K, mode="formula", formula=" ")
    t = want.to_arrow(library_columns=False)  # no library columns: no row numbers posing as ids
    assert t.column("library_id").null_count == t.num_rows
    views = lib.search([q[0], q[2]], k=K, mode="open")
    np.testing.assert_array_equal(views.indices, want.indices[[0, 2]])
    ms = q.to_matchms()
    one = lib.search(ms[1], k=K, mode="open")
    np.testing.assert_array_equal(one.indices, want.indices[[1]])


def test_same_instrument_ignores_case_and_blank_values(lib, data):
    """A query's instrument type matches the library's equal but for case; a blank one applies no filter
    (as an empty one), instead of matching nothing."""
    q = data[1][:20]
    inst = q.column("instrument_type")
    assert any(v for v in inst)
    want = lib.search(q, k=K, mode="open", same_instrument=True)
    meta = q.metadata
    col = meta.column_names.index("instrument_type")
    lower = q.with_metadata(meta.set_column(col, "instrument_type",
                                            pa.array([v.lower() if v else v for v in inst], pa.string())))
    np.testing.assert_array_equal(lib.search(lower, k=K, mode="open", same_instrument=True).indices, want.indices)
    upper = q.with_metadata(meta.set_column(col, "instrument_type",
                                            pa.array([v.upper() if v else v for v in inst], pa.string())))
    np.testing.assert_array_equal(lib.search(upper, k=K, mode="open", same_instrument=True).indices, want.indices)
    blank = q.with_metadata(meta.set_column(col, "instrument_type", pa.array(["  "] * len(q), pa.string())))
    np.testing.assert_array_equal(lib.search(blank, k=K, mode="open", same_instrument=True).indices,
                                  lib.search(q, k=K, mode="open").indices)


def test_case_folding_of_filters(tmp_path):
    """Instrument types match in any case, also when the library holds several casings; adducts only
    exactly (as normalised): [M+Co]+ is cobalt, [M+CO]+ carbon monoxide."""
    mz, it = [[100.0, 150.0, 200.0]] * 3, [[1.0, 2.0, 3.0]] * 3
    meta = pa.table({"id": ["a", "b", "c"], "precursor_mz": [300.0] * 3, "polarity": [1] * 3,
                     "adduct": ["[M+CO]+", "[M+Co]+", "[M+H]+"],
                     "instrument_type": ["LC-ESI-QTOF", "LC-ESI-QTof", "LC-ESI-ITFT"]})
    lib = Library.build(Spectra.from_arrays(mz, it, metadata=meta), tmp_path / "l.fastspec", faiss=False,
                        preprocess=None)
    q = Spectra.from_arrays(mz[:1], it[:1], metadata=pa.table({
        "id": ["q"], "precursor_mz": [300.0], "polarity": [1], "adduct": ["[M+Co]+"],
        "instrument_type": ["lc-esi-qtof"]}))
    h = lib.search(q, k=3, mode="open", same_instrument=True)
    assert sorted(h.indices[0][h.indices[0] >= 0].tolist()) == [0, 1]
    h = lib.search(q, k=3, mode="open", same_adduct=True)
    assert h.indices[0].tolist() == [1, -1, -1]


def test_query_file_column(lib, tmp_path):
    """Several query files with the same ids (mzML native ids such as ``scan=2`` repeat across runs): each
    hit row names the file its query came from, rejected records included; in-memory queries give nulls."""
    s0 = lib.spectra()[0]
    peaks = "".join(f"{m!r} {i!r}\n" for m, i in zip(s0.mz.tolist(), s0.intensity.tolist()))
    good = f"BEGIN IONS\nTITLE=scan=2\nPEPMASS={s0.precursor_mz!r}\n{peaks}END IONS\n"
    bad = "BEGIN IONS\nTITLE=scan=3\nPEPMASS=500\n100.0 abc\nEND IONS\n"
    a, b = tmp_path / "run1.mgf", tmp_path / "run2.mgf"
    a.write_text(good)
    b.write_text(bad + good + good)
    h = lib.search([str(a), str(b)], k=K, mode="open", on_error="skip")
    assert h.query_files == [str(a), str(b), str(b), str(b)]
    assert list(h.status) == ["ok", "rejected", "ok", "ok"] and h.query_ids == ["scan=2", "scan=3", "scan=2", "scan=2"]
    t = h.to_arrow()
    assert t.column_names.index("query_file") == t.column_names.index("query_id") + 1
    files = dict(zip(t.column("query_index").to_pylist(), t.column("query_file").to_pylist()))
    assert files == {0: str(a), 1: str(b), 2: str(b), 3: str(b)}
    h1 = lib.search(str(b), k=K, mode="open", on_error="skip")  # one file, no rejection kept in place
    assert h1.query_files == [str(b)] * 3
    mem = lib.search(lib.spectra()[:2], k=K, mode="open")
    assert mem.query_files is None and mem.to_arrow().column("query_file").null_count == mem.to_arrow().num_rows
    with pytest.raises(OSError) as err:  # a failed write names the table, not its temporary
        h1.write(tmp_path / "no" / "such" / "dir" / "h.parquet")
    assert ".tmp-" not in str(err.value) and "h.parquet" in str(err.value)
    # to_parquet / to_csv are atomic too: a write that fails leaves neither a table nor a temporary
    out = tmp_path / "atomic"
    out.mkdir()
    h1.to_parquet(out / "h.parquet")
    h1.to_csv(out / "h.tsv", delimiter="\t")
    assert sorted(p.name for p in out.iterdir()) == ["h.parquet", "h.tsv"]

    def broken(path, *args):
        with open(path, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    h1._write_parquet, h1._write_csv = broken, broken
    for name, write in (("x.parquet", h1.to_parquet), ("x.csv", h1.to_csv)):
        with pytest.raises(OSError, match="disk full"):
            write(out / name)
    assert sorted(p.name for p in out.iterdir()) == ["h.parquet", "h.tsv"]
    with pytest.raises(ParameterError, match="query_files"):
        Hits(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), status=["ok"], query_files=["a", "b"])


# ------------------------------------------------------------------------------------------ property
@st.composite
def _library(draw):
    n = draw(st.integers(5, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    pool = np.round(rng.uniform(50, 300, 25), 1)  # shared fragment masses -> many candidates per query
    precursors = rng.uniform(150, 400, 4)
    mzs, ints, pmz = [], [], []
    for _ in range(n):
        # jittered copies of pool masses: some peaks closer than the tolerance (unclean spectra)
        m = rng.choice(pool, size=rng.integers(1, 12), replace=True) + rng.normal(0, 0.004, 1)
        m = np.unique(np.concatenate([m, m[: rng.integers(0, 3)] + rng.uniform(-0.012, 0.012)]))
        mzs.append(m)
        ints.append(rng.uniform(0.01, 1.0, m.shape[0]))
        pmz.append(float(rng.choice(precursors)))  # shared precursors: the precursor-window threshold kicks in
    return Spectra.from_arrays(mzs, ints, precursor_mz=pmz, metadata={"id": [str(i) for i in range(n)]})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sp=_library(), metric=st.sampled_from(["cosine", "entropy", "unweighted_entropy", "modified_cosine",
                                              "binned_cosine"]),
       k=st.integers(1, 6))
def test_whole_library_modes_property(tmp_path_factory, sp, metric, k):
    path = tmp_path_factory.mktemp("h") / "l.fastspec"
    lib = Library.build(sp, path, preprocess=None, faiss=False)
    queries = sp[: min(6, len(sp))]
    mode = "analog" if metric == "modified_cosine" else "open"
    hits = lib.search(queries, k=k, mode=mode, metric=metric, tolerance=0.01)
    assert_same_hits(hits, brute_force(lib, queries, metric, np.ones((len(queries), len(lib)), bool), k=k,
                                       tolerance="0.01da"))


@pytest.mark.parametrize("metric", ["cosine", "entropy", "modified_cosine"])
def test_windows_longer_than_a_scan_chunk(tmp_path, metric):
    """Fragment windows holding more index entries than the kernel's scan chunk (4,096): the chunked,
    branch-free candidate passes (first query peak, survivors-only scans) lose and repeat nothing."""
    rng = np.random.default_rng(7)
    pool = np.array([91.05, 105.07, 119.05, 133.1, 147.04, 161.06, 175.08, 189.1])
    n = 9000
    mzs, ints = [], []
    for _ in range(n):
        m = np.sort(rng.choice(pool, size=6, replace=False) + rng.normal(0, 0.002, 6))
        mzs.append(np.concatenate([m, np.sort(rng.uniform(200, 400, 2))]))
        ints.append(rng.uniform(0.01, 1.0, 8))
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=rng.uniform(420, 440, n).tolist(),
                             metadata={"id": [str(i) for i in range(n)]})
    lib = Library.build(sp, tmp_path / "l.fastspec", preprocess=None, faiss=False)
    queries = sp[rng.choice(n, 6, replace=False)]
    hits = lib.search(queries, k=K, mode="analog" if metric == "modified_cosine" else "open", metric=metric,
                      tolerance=0.01)
    assert_same_hits(hits, brute_force(lib, queries, metric, np.ones((len(queries), n), bool), tolerance="0.01da"))


def test_order_smoothing_is_checked(lib):
    """The scan order's smoothing constant (results do not depend on it) refuses negative or non-finite
    values instead of falling back silently."""
    from fastspec.kernels import fragment as fk

    ws = fk.BoundWorkspace(len(lib), 1)
    empty = (np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.float32), np.zeros(0))
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="order_smoothing"):
            fk.search_bounds(*empty, lib.peak_index("cosine"), kind=fk.KIND_PRODUCT, use_nl=False, tol_da=0.02,
                             tol_ppm=0.0, k=5, m=10, workspace=ws, order_smoothing=bad)


@pytest.mark.parametrize("params", [{}, {"preset": "khoo2026"}, {"min_matches": 3, "min_score": 0.3, "k": 8}])
def test_open_binned_cosine_equals_brute_force(lib, data, params):
    """Whole-library binned cosine goes through the inverted bin index: candidates within a rounding
    margin of each query's k-th dot product, then exact scores."""
    params = dict(params)
    k = params.pop("k", K)
    mm, ms = params.pop("min_matches", 0), params.pop("min_score", 0.0)
    queries = data[1]
    # (with a preset, the tolerance is the bin width in place of the preset's: the reference gets it as such)
    ref_params = {**params, "bin_width": 0.1} if params.get("preset") else params
    hits = lib.search(queries, k=k, mode="open", metric="binned_cosine", tolerance="0.1da", min_matches=mm,
                      min_score=ms, **params)
    ref = brute_force(lib, queries, "binned_cosine", same_polarity(lib, queries), k=k, tolerance="0.1da",
                      min_matches=mm, min_score=ms, **ref_params)
    assert (hits.indices >= 0).sum() > len(queries) * k // 2
    assert_same_hits(hits, ref)
    if params.get("preset"):  # and the preset's own 0.25 Da bins without a tolerance
        hits = lib.search(queries, k=k, mode="open", metric="binned_cosine", **params)
        assert hits.params["tolerance"] is None and hits.params["metric_params"] == {"preset": "khoo2026"}
        assert_same_hits(hits, brute_force(lib, queries, "binned_cosine", same_polarity(lib, queries), k=k,
                                           **params))
        with pytest.raises(ParameterError, match="in Da"):
            lib.search(queries, k=k, mode="open", metric="binned_cosine", tolerance="10ppm", **params)


def _nl_queries(data) -> Spectra:
    """The test queries, plus edge cases of neutral-loss cosine: a query without a precursor m/z, one
    whose precursor is 0 (in memory: every peak is above it), and one with peaks above its precursor."""
    q = data[1]
    extra = q[np.arange(3)]
    pmz = np.array(extra.precursor_mz, dtype=np.float64)
    pmz[0], pmz[1] = np.nan, 0.0
    pmz[2] = float(np.median(extra.mz[extra.offsets[2]:extra.offsets[3]]))  # half its peaks above
    extra = Spectra(extra.offsets, extra.mz, extra.intensity, pmz, extra.charge, extra.metadata)
    return Spectra.concat([q, extra])


@pytest.mark.parametrize("case", ["plain", "filtered", "ppm", "powers", "k_min_score", "keep_above", "min_matches"])
def test_open_neutral_loss_cosine_equals_brute_force(lib, data, monkeypatch, case):
    """Neutral-loss cosine (matchms' NeutralLossesCosine) searches the whole library through the
    neutral-loss index: loss windows only, cosine weights renormalised below each precursor (with
    ``ignore_peaks_above_precursor=False``, negative losses scored too, the cosine weights); the same hits
    as scoring every eligible spectrum."""
    from fastspec import search_scan

    queries = _nl_queries(data)
    kw, ref_kw, k, tol = {}, {}, K, 0.05
    if case == "filtered":
        kw = dict(same_adduct=True, same_charge=True)
    elif case == "ppm":
        tol = "20ppm"
    elif case == "powers":
        kw = ref_kw = dict(mz_power=1.0, intensity_power=0.5)
    elif case == "k_min_score":
        k, kw = 40, dict(min_score=0.2)
        ref_kw = dict(min_score=0.2)
    elif case == "keep_above":
        kw = ref_kw = dict(ignore_peaks_above_precursor=False)
    if case == "min_matches":  # the bound scan counts each spectrum's pairs in the windows
        kw, ref_kw = dict(min_matches=2), dict(min_matches=2)

    def refuse(*a, **kw_):  # the index answers; scoring every spectrum would be a silent fallback
        raise AssertionError("scored every spectrum")
    monkeypatch.setattr(search_scan, "run_brute_force", refuse)
    hits = lib.search(queries, k=k, mode="open", metric="neutral_loss_cosine", tolerance=tol, **kw)
    cand = same_polarity(lib, queries)
    if case == "filtered":
        la = np.array(normalize_adducts(lib.metadata(columns=["adduct"]).column("adduct").to_pylist()), dtype=object)
        qa = normalize_adducts(queries.column("adduct"))
        cand = cand & np.array([[a is None or a == "" or a == b for b in la] for a in qa])
        lc, qch = np.abs(np.asarray(lib.array("charge"))), np.abs(queries.charge)
        cand &= (qch[:, None] == 0) | (lc[None, :] == 0) | (qch[:, None] == lc[None, :])
        assert (same_polarity(lib, queries) & ~cand).sum() > 1000  # the filters drop candidates
    assert (hits.indices >= 0).sum() > len(queries) * k // 3
    assert (hits.indices[-3] < 0).all()  # no precursor: no losses, no hits
    if case != "keep_above":
        assert (hits.indices[-2] < 0).all()  # precursor 0: every peak above it
    tol_s = f"{tol}da" if isinstance(tol, float) else tol
    assert_same_hits(hits, brute_force(lib, queries, "neutral_loss_cosine", cand, k=k, tolerance=tol_s, **ref_kw))


def test_open_neutral_loss_cosine_weights_renormalised_below_the_precursor(tmp_path):
    """A spectrum whose intensity lies mostly above its precursor scores 1 in neutral-loss cosine while
    its cosine weights of the peaks below are tiny: its bound must use the renormalised weights, or the
    decoys sharing one loss (0.58 each, more than the first round's candidates) hide it."""
    def spec(peaks, pmz):
        return np.array([p[0] for p in peaks], float), np.array([p[1] for p in peaks], np.float32), pmz

    target = spec([(200.0, 1.0), (250.0, 1.0), (300.0, 1.0), (410.0, 100.0)], 400.0)
    decoys = [spec([(150.0 + 0.001 * d, 1.0), (20.0 + 0.1 * d, 1.0), (60.0 + 0.1 * d, 1.0)], 350.0 + 0.001 * d)
              for d in range(300)]  # each shares the loss 200 with the query, nothing else
    rows = decoys[:150] + [target] + decoys[150:]
    offsets = np.concatenate([[0], np.cumsum([r[0].shape[0] for r in rows])])
    lib_sp = Spectra(offsets, np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
                     np.array([r[2] for r in rows]))
    lib = Library.build(lib_sp, tmp_path / "nl.fastspec", preprocess=None, faiss=False)
    q = Spectra(np.array([0, 3]), np.array([100.0, 150.0, 200.0]), np.ones(3, np.float32), np.array([300.0]))
    hits = lib.search(q, k=1, mode="open", metric="neutral_loss_cosine", tolerance=0.01)
    assert hits.indices[0, 0] == 150 and hits.scores[0, 0] == pytest.approx(1.0)
    assert hits.matches[0, 0] == 3


def test_open_neutral_loss_cosine_unclean_library(raw, data):
    """On peaks as read (close peaks: several entries of a spectrum in one loss window), the loss-index
    bounds still hold."""
    queries = _nl_queries(data)
    hits = raw.search(queries, k=K, mode="open", metric="neutral_loss_cosine", tolerance=0.1)
    ref = brute_force(raw, queries, "neutral_loss_cosine", same_polarity(raw, queries), tolerance="0.1da")
    assert (hits.indices >= 0).sum() > len(queries) * K // 3
    assert_same_hits(hits, ref)


@pytest.mark.parametrize("kw", [dict(same_adduct=True, same_charge=True),
                                dict(same_instrument=True, k=20, min_matches=2, min_score=0.1)])
def test_open_binned_cosine_filters_equal_scoring_every_spectrum(lib, data, monkeypatch, kw):
    """With the optional filters (asymmetric codes, values no library spectrum has), the inverted bin
    index -- built here over many chunks -- gives exactly what scoring every library spectrum gives."""
    from fastspec import search_scan

    kw = dict(kw)
    args = dict(k=kw.pop("k", K), mode="open", metric="binned_cosine", tolerance="0.07da", **kw)
    monkeypatch.setattr(search_scan, "_BIN_CHUNK", 257)
    got = lib.search(data[1], **args)
    monkeypatch.setattr(search_scan, "_BIN_MAX", 0)  # every library spectrum a candidate
    want = lib.search(data[1], **args)
    assert (want.indices >= 0).sum() > len(data[1])
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.matches, want.matches)


def test_entropy_search_equals_ms_entropy_flash_search(data, lib):
    """Open and identity entropy search of the default library score what ms_entropy's
    FlashEntropySearch scores from the same raw spectra (the default preprocessing is its
    clean_spectrum_for_search; peaks are matched in its float32 windows): the same top-k scores within
    1e-6, the same spectra except ties. Queries: the real ones, and library spectra with m/z rounded to
    4 decimals and some peaks moved by exactly 0.0200 Da (0.020004 or so in float32, where Flash's windows
    and the pair function disagree). Queries and library are positive spectra, as ms_entropy has no
    polarity filter."""
    me = pytest.importorskip("ms_entropy")
    from fastspec import similarity

    lib_sp, queries = data
    inp = np.asarray(lib.input_index if lib.input_index is not None else np.arange(len(lib)))
    rows = np.flatnonzero(lib.polarity > 0)  # the positive spectra the library holds
    src = inp[rows]
    specs = [{"precursor_mz": float(lib_sp.precursor_mz[i]) if np.isfinite(lib_sp.precursor_mz[i]) else 0.0,
              "peaks": np.column_stack([lib_sp[i].mz, lib_sp[i].intensity]).astype(np.float32), "row": int(r)}
             for r, i in zip(rows, src)]
    es = me.FlashEntropySearch(max_ms2_tolerance_in_da=0.02)
    row_of = np.array([s["row"] for s in es.build_index(specs)])
    real = queries[np.flatnonzero((queries.polarity > 0) & np.isfinite(queries.precursor_mz))]
    base = src[np.isfinite(lib_sp.precursor_mz[src]) & (np.diff(lib_sp.offsets)[src] >= 6)][::40][:40]
    mzs = [np.round(lib_sp[i].mz, 4) + np.where(np.arange(len(lib_sp[i].mz)) % 3 == 1, 0.02, 0.0) for i in base]
    edge = Spectra.from_arrays(mzs, [lib_sp[i].intensity for i in base], precursor_mz=lib_sp.precursor_mz[base],
                               metadata={"ion_mode": ["positive"] * len(base)})
    # the edge queries do reach pairs the two conventions match differently
    kw = dict(clean=False, tolerance=0.02)
    q_clean = apply_pipeline(lib.pipeline, edge)
    l_clean = apply_pipeline(lib.pipeline, lib_sp.take(base))
    differ = np.abs(similarity.score_pairs(q_clean, l_clean, "entropy", flash=True, **kw)[0]
                    - similarity.score_pairs(q_clean, l_clean, "entropy", **kw)[0]) > 1e-6
    assert differ.sum() >= 3
    qs = Spectra.concat([real, edge])
    checked = 0
    for mode in ("open", "identity"):
        hits = lib.search(qs, k=10, mode=mode, metric="entropy", tolerance=0.02, threads=1,
                          **({"precursor_tolerance": 0.01} if mode == "identity" else {}))
        for j in range(len(qs)):
            peaks = es.clean_spectrum_for_search(precursor_mz=float(qs.precursor_mz[j]),
                                                 peaks=np.column_stack([qs[j].mz, qs[j].intensity]).astype(np.float32))
            if len(peaks) == 0:
                continue
            if mode == "open":
                s = es.open_search(peaks=peaks, ms2_tolerance_in_da=0.02)
            else:
                s = es.identity_search(precursor_mz=float(qs.precursor_mz[j]), peaks=peaks, ms1_tolerance_in_da=0.01,
                                       ms2_tolerance_in_da=0.02)
            s = np.asarray(s, dtype=np.float64)
            order = np.argsort(-s, kind="stable")[:10]
            want = s[order]
            n = int(np.sum(want > 0))
            np.testing.assert_allclose(hits.scores[j][:n].astype(np.float64), want[:n], atol=1e-6, rtol=0,
                                       err_msg=f"{mode} {j}")
            for r, w in zip(hits.indices[j][:n], want[:n]):
                if np.sum(np.abs(s - w) <= TIE) == 1:
                    assert r == row_of[order[list(want).index(w)]], (mode, j, r)
            checked += 1
    assert checked >= 100


def test_entropy_identity_window_is_flash_searchs(tmp_path):
    """FlashEntropySearch stores library precursor m/z as float32 and tests them against [q - tol, q + tol]
    in float64: a spectrum 0.0100 Da below the query (307.1804, 307.18039 in float32) is outside its
    window, though inside in float64, and so is 307.2004 above it (307.20041). Entropy identity search with a Da window copies Flash (as its
    fragment windows do); cosine keeps the float64 window; ppm windows (Flash has none) too."""
    me = pytest.importorskip("ms_entropy")
    mz, it = np.array([100.0, 150.0, 200.0]), np.array([10.0, 20.0, 30.0])
    pmz = [307.1804, 307.18042, 307.2004, 307.20038]  # float32: 307.18039, 307.18042, 307.20041, 307.20038
    lib = Library.build(Spectra.from_arrays([mz] * 4, [it] * 4, precursor_mz=pmz,
                                            metadata={"ion_mode": ["positive"] * 4}), tmp_path / "w.fastspec",
                        faiss=False)
    q = Spectra.from_arrays([mz], [it], precursor_mz=[307.1904], metadata={"ion_mode": ["positive"]})
    es = me.FlashEntropySearch()
    row_of = [s["row"] for s in es.build_index([{"precursor_mz": p, "peaks": np.column_stack([mz, it]).astype(np.float32),
                                                 "row": r} for r, p in enumerate(pmz)])]
    s = es.identity_search(precursor_mz=307.1904, peaks=es.clean_spectrum_for_search(307.1904, np.column_stack([mz, it])
                                                                                     .astype(np.float32)),
                           ms1_tolerance_in_da=0.01, ms2_tolerance_in_da=0.02)
    flash = sorted(r for r, v in zip(row_of, s) if v > 0)
    assert flash == [1, 3]  # both window ends: 307.1804 rounds down out of it, 307.2004 up
    got = lib.search(q, k=4, mode="identity", metric="entropy", precursor_tolerance=0.01)
    assert sorted(got.indices[0][got.indices[0] >= 0].tolist()) == flash
    # float64 windows keep all four; 32.56 ppm is 0.0100021 Da here, so Flash's rule would drop 0 and 2
    for metric, tol in (("cosine", 0.01), ("entropy", "32.56ppm")):
        got = lib.search(q, k=4, mode="identity", metric=metric, precursor_tolerance=tol)
        assert sorted(got.indices[0][got.indices[0] >= 0].tolist()) == [0, 1, 2, 3], metric


def test_identity_window_is_matchms_precursor_mz_match(tmp_path):
    """Cosine identity windows are matchms' PrecursorMzMatch (``abs(l - q) <= tol`` in float64): precursors
    written 0.02 apart are 0.0200000000000102 apart in float64 (197.0808 - 197.0608), outside, though
    197.0608 + 0.02 == 197.0808; FlashEntropySearch's windows (entropy) keep them."""
    matchms = pytest.importorskip("matchms")
    from matchms.similarity import PrecursorMzMatch

    mz, it = np.array([100.0, 150.0, 170.0]), np.array([10.0, 20.0, 30.0])
    pmz = [197.0408, 197.0808, 197.08079, 197.0409]
    lib = Library.build(Spectra.from_arrays([mz] * 4, [it] * 4, precursor_mz=pmz,
                                            metadata={"ion_mode": ["positive"] * 4}), tmp_path / "m.fastspec",
                        faiss=False, preprocess=None)
    q = Spectra.from_arrays([mz], [it], precursor_mz=[197.0608], metadata={"ion_mode": ["positive"]})
    sp = [matchms.Spectrum(mz=mz, intensities=it, metadata={"precursor_mz": p}) for p in [197.0608] + pmz]
    want = [r for r in range(4) if PrecursorMzMatch(tolerance=0.02).pair(sp[1 + r], sp[0])]
    assert 1 not in want and 2 in want  # the float64 difference decides
    got = lib.search(q, k=4, mode="identity", metric="cosine", tolerance=0.1, precursor_tolerance=0.02)
    assert sorted(got.indices[0][got.indices[0] >= 0].tolist()) == want
    got = lib.search(q, k=4, mode="identity", metric="entropy", precursor_tolerance=0.02)
    assert 1 in got.indices[0]  # float32(197.0808) = 197.08079529 <= 197.0608 + 0.02


def test_faiss_engine_on_an_empty_library_says_why(tmp_path):
    empty = Spectra.from_arrays([], [], metadata={"id": pa.array([], pa.string())})
    lib = Library.build(empty, tmp_path / "e.fastspec")
    q = Spectra.from_arrays([np.array([100.0])], [np.array([1.0])], precursor_mz=[200.0])
    with pytest.raises(ParameterError, match="holds no spectra"):
        lib.search(q, mode="open", engine="faiss")


def test_filters_not_applied_are_counted(tmp_path):
    """A query without an adduct (or with one no parser reads), charge or instrument type of its own is
    searched without that filter; the hit table's metadata counts those queries per filter and reason."""
    mz, it = [[100.0, 150.0, 200.0]] * 4, [[1.0, 2.0, 3.0]] * 4
    meta = pa.table({"id": list("abcd"), "precursor_mz": [300.0] * 4, "polarity": [1] * 4,
                     "adduct": ["[M+H]+", "[M+Na]+", "[M+H]+", None],
                     "instrument_type": ["LC-ESI-QTOF"] * 4})
    lib = Library.build(Spectra.from_arrays(mz, it, metadata=meta), tmp_path / "l.fastspec", faiss=False,
                        preprocess=None)
    q = Spectra.from_arrays(mz, it, metadata=pa.table({
        "id": ["q0", "q1", "q2", "q3"], "precursor_mz": [300.0] * 4, "polarity": [1] * 4,
        "adduct": ["[M+Na]+", "[Cat]+", None, "  "], "instrument_type": ["LC-ESI-QTOF", None, None, "x"]}))
    h = lib.search(q, k=4, mode="open", same_adduct=True, same_instrument=True)
    assert h.indices[0].tolist() == [1, -1, -1, -1]  # filtered
    assert sorted(h.indices[1][h.indices[1] >= 0].tolist()) == [0, 1, 2, 3]  # unreadable adduct: no filter
    assert h.params["filters_not_applied"] == {
        "adduct": {"missing": 2, "unreadable": 1, "unreadable_examples": ["[Cat]+"]},
        "instrument": {"missing": 2}}
    assert "filters_not_applied" not in lib.search(q[:1], k=4, mode="open", same_adduct=True).params
    assert "filters_not_applied" not in lib.search(q, k=4, mode="open").params
    hc = lib.search(q, k=4, mode="open", same_charge=True)
    assert hc.params["filters_not_applied"] == {"charge": {"missing": 4}}  # in-memory spectra without charges


@pytest.mark.parametrize("mode,metric", [("open", "entropy"), ("open", "cosine"), ("analog", "modified_cosine"),
                                         ("hybrid", "entropy")])
def test_min_matches_past_65535_pairs_in_the_windows(tmp_path, mode, metric):
    """The bound kernel counts a spectrum's peak pairs in the query's windows in 16 bits for min_matches: a
    raw spectrum of 256 peaks within 0.03 Da against its own copy at 0.1 Da has 65,536 pairs, which wrapped
    around to 0 and dropped the hit (an audit's reproducer); the count now saturates."""
    mz = (100.0 + 1e-4 * np.arange(256)).tolist()
    it = np.linspace(1.0, 2.0, 256).tolist()
    pos = {"ion_mode": ["positive"] * 2}
    lib = Library.build(Spectra.from_arrays([mz, [150.0, 151.0]], [it, [1.0, 1.0]], precursor_mz=[500.0] * 2,
                                            metadata=pos), tmp_path / "u16.fastspec", preprocess=None, faiss=False)
    q = Spectra.from_arrays([mz], [it], precursor_mz=[500.0], metadata={"ion_mode": ["positive"]})
    for min_matches in (0, 2, 256):
        h = lib.search(q, k=2, mode=mode, metric=metric, tolerance=0.1, min_matches=min_matches)
        assert h.indices[0].tolist() == [0, -1] and h.matches[0, 0] == 256, min_matches
        assert h.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_a_list_of_spectra_and_paths_is_one_clear_error(data, tmp_path):
    _, q = data
    with pytest.raises(ParameterError, match="Spectra and paths"):
        Library.build([q[:2], str(tmp_path / "x.mgf")], tmp_path / "mixed.fastspec", faiss=False)


def test_formula_from_smiles(tmp_path):
    """A library and queries with a structure but no formula (GNPS MGF exports): formula mode takes the
    formula from the SMILES on both sides; a written formula wins over the SMILES'."""
    pk = ([100.0, 150.0], [1.0, 2.0])
    sp = Spectra.from_arrays([pk[0]] * 3, [pk[1]] * 3, precursor_mz=[181.07, 181.07, 181.07],
                             metadata={"smiles": ["OCC1OC(O)C(O)C(O)C1O", "not a smiles", "CCO"],
                                       "formula": [None, None, "C6H12O6"], "ion_mode": ["positive"] * 3})
    lib = Library.build(sp, tmp_path / "s.fastspec", preprocess=None, faiss=False)
    assert lib.info()["n_formula_from_smiles"] == 1
    assert lib.metadata(columns=["formula_canonical"]).column(0).to_pylist() == ["C6H12O6", None, "C6H12O6"]
    h = lib.search(sp, k=3, mode="formula", no_neighbour="empty")
    assert sorted(h.indices[0][h.indices[0] >= 0].tolist()) == [0, 2] and list(h.status) == ["ok", "no_hit", "ok"]
    assert h.to_arrow().column("formula").to_pylist()[0] == "C6H12O6"
    # skipped: a query without any formula is told apart from one whose formula the library lacks
    other = Spectra.from_arrays([pk[0]] * 2, [pk[1]] * 2, precursor_mz=[181.07, 181.07],
                                metadata={"formula": ["C9H9N", None], "ion_mode": ["positive"] * 2})
    h = lib.search(other, k=3, mode="formula")
    assert list(h.status) == ["no_neighbour", "no_formula"] and h.skipped.all()
    # the table says which formula each query was searched with (from its SMILES too), skipped ones included
    h = lib.search(sp, k=1, mode="formula", no_neighbour="empty")
    assert h.query_formulas == ["C6H12O6", None, "C6H12O6"]
    assert h.to_arrow().column("query_formula").to_pylist() == ["C6H12O6", None, "C6H12O6"]
    h = lib.search(other, k=1, mode="formula")
    assert h.to_arrow().column("query_formula").to_pylist() == ["C9H9N", None]
    assert lib.search(other, k=1, mode="formula", formula="H2O").query_formulas == ["H2O", "H2O"]
    assert lib.search(other, k=1, mode="open").to_arrow().column("query_formula").null_count == 2
    # rejected records (read from a file) have no formula; the searched ones keep theirs in file order
    from fastspec import io as fio

    fio.write(other, tmp_path / "o.mgf")
    text = (tmp_path / "o.mgf").read_text()
    (tmp_path / "o.mgf").write_text("BEGIN IONS\nTITLE=bad\nPEPMASS=181\n100 abc\nEND IONS\n" + text)
    h = lib.search(str(tmp_path / "o.mgf"), k=1, mode="formula")
    assert h.query_formulas == [None, "C9H9N", None] and list(h.status)[0] == "rejected"


def test_formula_from_inchi(tmp_path):
    """GNPS records often carry an InChI with ``SMILES=N/A``: formula mode takes the formula from the InChI
    when there is no formula or SMILES, on both sides, the same formula as the structure's SMILES gives
    (charge and proton layers applied). Found by an audit: such queries had status no_neighbour."""
    from fastspec.fingerprints import formulas_from_inchi, formulas_from_smiles

    inchi = ["InChI=1S/C5H14NO/c1-6(2,3)4-5-7/h7H,4-5H2,1-3H3/q+1",  # choline (charge layer)
             "InChI=1S/C2H4O2/c1-2(3)4/h1H3,(H,3,4)/p-1",  # acetate (proton layer)
             "1S/C6H12O6/c7-1-2-3(8)4(9)5(10)6(11)12-2/h2-11H,1H2",  # no "InChI=" prefix
             "InChI=1S/garbage", None]
    assert formulas_from_inchi(inchi) == formulas_from_smiles(["C[N+](C)(C)CCO", "CC(=O)[O-]",
                                                               "OCC1OC(O)C(O)C(O)C1O", None, None])
    text = "".join(f"BEGIN IONS\nTITLE=s{i}\nPEPMASS=181.07\nIONMODE=Positive\nSMILES=N/A\nINCHI={v}\n"
                   f"100 1\n150 2\nEND IONS\n" for i, v in enumerate(inchi[2:4]))
    path = tmp_path / "gnps.mgf"
    path.write_text(text)
    lib = Library.build(path, tmp_path / "i.fastspec", preprocess=None, faiss=False)
    assert lib.info()["n_formula_from_inchi"] == 1 and lib.info()["n_formula_from_smiles"] == 0
    h = lib.search(path, k=2, mode="formula", no_neighbour="empty")
    assert list(h.status) == ["ok", "no_hit"] and h.indices[0].tolist() == [0, -1]


def test_formula_from_smiles_edge_cases(tmp_path, monkeypatch):
    """R-group SMILES give no formula (RDKit writes ``*2`` into it); without RDKit nothing is derived and
    the build still works."""
    from fastspec import fingerprints
    from fastspec.library import formulas_or_from_structure

    smiles = ["*NC1=NC(=NC(=N1)Cl)N*", "C[N+](C)(C)C", "CN.Cl", "", None, "OCC"]
    got, n, n_inchi = formulas_or_from_structure([None, None, None, None, None, "C2H6O"], smiles)
    assert got == [None, "C4H12N+", "CH6ClN", None, None, "C2H6O"] and (n, n_inchi) == (2, 0)
    sp = Spectra.from_arrays([[100.0]] * 2, [[1.0]] * 2, precursor_mz=[47.0, 47.0],
                             metadata={"smiles": ["CCO", "OCC"], "formula": [None, "C2H6O"]})

    def no_rdkit():
        raise FastspecError("fingerprints need RDKit: pip install 'fastspec[chem]'")

    monkeypatch.setattr(fingerprints, "_rdkit", no_rdkit)
    lib = Library.build(sp, tmp_path / "n.fastspec", preprocess=None, faiss=False)
    assert lib.metadata(columns=["formula_canonical"]).column(0).to_pylist() == [None, "C2H6O"]
    assert lib.info()["n_formula_from_smiles"] == 0
    assert lib.info()["n_unknown_polarity"] == 2  # so that the polarity counts add up
    h = lib.search(sp, k=2, mode="formula", no_neighbour="empty")
    assert list(h.status) == ["no_hit", "ok"]


def test_hit_table_adducts_in_canonical_spelling(tmp_path):
    # a library mixing GNPS's M+H and [M+H]+ gives one spelling in the hit table (as --same-adduct compares
    # them); an adduct no parser reads stays as written; the library's own metadata keeps what was written
    sp = Spectra.from_arrays([[100.0, 150.0]] * 4, [[1.0, 0.5]] * 4, precursor_mz=[200.0] * 4,
                             metadata={"adduct": ["M+H", "[M+H]+", "[Cat]+", None], "ion_mode": ["positive"] * 4})
    lib = Library.build(sp, tmp_path / "a.fastspec", preprocess=None, faiss=False)
    t = lib.search(sp[:1], k=4, mode="open").to_arrow()
    got = dict(zip(t.column("library_index").to_pylist(), t.column("adduct").to_pylist()))
    assert got == {0: "[M+H]+", 1: "[M+H]+", 2: "[Cat]+", 3: None}
    assert lib.metadata(columns=["adduct"]).column("adduct").to_pylist() == ["M+H", "[M+H]+", "[Cat]+", None]


def test_mz_rounding_to_zero_in_float32_is_dropped(tmp_path):
    """A peak at m/z 1e-46 (positive in float64, 0 in float32, where the entropy kernels drop it and
    renormalise the rest) is dropped at build and from queries, so the index's weights are the exact
    kernels' and entropy search finds the hits brute force finds."""
    pos = {"ion_mode": ["positive"] * 30}
    mz = [[1e-46, 100.0, 200.0] if i % 3 == 0 else [100.0, 300.0 + i, 400.0 + i] for i in range(30)]
    it = [[1000.0, 5.0, 5.0] if i % 3 == 0 else [3.0, 5.0, 5.0] for i in range(30)]
    sp = Spectra.from_arrays([np.array(m) for m in mz], [np.array(x) for x in it], precursor_mz=[500.0] * 30, metadata=pos)
    lib = Library.build(sp, tmp_path / "z.fastspec", preprocess=None, faiss=False, progress=False)
    assert lib.spectra().mz.min() == 100.0
    q = Spectra.from_arrays([np.array([1e-46, 100.0, 200.0])], [np.array([1.0, 1.0, 1.0])], precursor_mz=[500.0],
                            metadata={"ion_mode": ["positive"]})
    for mode in ("open", "neutral_loss"):
        hits = lib.search(q, k=3, mode=mode, metric="entropy")
        assert hits.indices[0].tolist() == [0, 3, 6] and np.allclose(hits.scores[0], 1.0), mode


def test_hit_table_precursors_of_zero_or_less_are_none(tmp_path):
    """A precursor m/z of 0 or less given in memory counts as none in the hit table too (null precursor and
    deltas), as the readers make it NaN."""
    pk = ([100.0, 150.0], [1.0, 2.0])
    pos = {"ion_mode": ["positive"] * 2}
    lib = Library.build(Spectra.from_arrays([pk[0]] * 2, [pk[1]] * 2, precursor_mz=[0.0, 222.11], metadata=pos),
                        tmp_path / "z.fastspec", preprocess=None, faiss=False)
    q = Spectra.from_arrays([pk[0]] * 3, [pk[1]] * 3, precursor_mz=[-5.0, 0.0, 222.11],
                            metadata={"ion_mode": ["positive"] * 3})
    t = lib.search(q, k=2, mode="open").to_arrow()
    qp, lp = t.column("query_precursor_mz").to_pylist(), t.column("library_precursor_mz").to_pylist()
    dm, dp = t.column("delta_mz").to_pylist(), t.column("delta_ppm").to_pylist()
    for r in range(t.num_rows):
        assert (qp[r] is None or qp[r] > 0) and (lp[r] is None or lp[r] > 0)
        assert (dm[r] is None) == (qp[r] is None or lp[r] is None) and (dp[r] is None) == (dm[r] is None)
    assert sorted(x for x in qp if x is not None) == [222.11, 222.11] and lp.count(None) == 3


@pytest.mark.parametrize("mode", ["identity", "open"])
def test_min_score_keeps_every_hit_shown_at_or_above_it(lib, data, mode):
    """``min_score=s`` keeps every hit whose score, as Hits shows it (float32), is at least ``s``: scores are
    computed in float64, and a library spectrum searched for itself scores 0.99999999, shown as 1.0, which
    ``min_score=1.0`` dropped (an audit: 129 of 300 open-cosine hits dropped at their own shown score)."""
    queries = data[0][::100]
    hits = lib.search(queries, k=5, mode=mode)
    shown = hits.scores
    for j in range(0, shown.shape[1], 2):
        for i in np.flatnonzero(hits.indices[:, j] >= 0)[:12]:
            s = float(shown[i, j])
            again = lib.search(queries[int(i):int(i) + 1], k=5, mode=mode, min_score=s)
            keep = hits.indices[i][(hits.indices[i] >= 0) & (shown[i] >= np.float32(s))]
            assert set(again.indices[0][again.indices[0] >= 0]) == set(keep), (i, j, s)
            assert (again.scores[0][again.indices[0] >= 0] >= np.float32(s)).all()
            assert again.params["min_score"] == s


def test_user_mistakes_from_other_tools_get_pointers(lib, data):
    """An audit as a user of FAISS, scikit-learn, matchms and ms_entropy: a misspelt or foreign option was told
    only the metric options, and a pandas DataFrame as input was taken for a list of paths ('No such file:
    mz')."""
    import pandas as pd

    q = data[1][:2]
    for kw, words in (({"tolerence": 0.02}, "did you mean tolerance?"), ({"adduct": "[M+H]+"}, "same_adduct=True"),
                      ({"polarity": "positive"}, "never matches the other polarity"),
                      ({"ms2_tolerance_in_da": 0.02}, "tolerance"), ({"n_neighbors": 5}, "did you mean k?")):
        with pytest.raises(ParameterError, match="search options are k, mode") as e:
            lib.search(q, **kw)
        assert words in str(e.value)
    frame = pd.DataFrame({"mz": [[100.0]], "intensity": [[1.0]]})
    with pytest.raises(ParameterError, match="got a DataFrame"):
        lib.search(frame)
    with pytest.raises(ParameterError, match="got a DataFrame"):
        Library.build(frame, "unused.fastspec")
