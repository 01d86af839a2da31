"""Library search: every exact mode equals brute force on real MassBank spectra; Hits output; filters."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

similarity = pytest.importorskip("fastspec.similarity")
from fastspec.errors import ParameterError
from fastspec.library import Library, apply_pipeline, canonical_formulas
from fastspec.search import HIT_COLUMNS, Hits
from fastspec.spectra import Spectra
from fastspec.tolerance import parse_tolerance
from test_library import massbank_subset

K = 5


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
    sp = data[0][np.flatnonzero(np.isfinite(data[0].precursor_mz))[:400]]  # matchms' modified cosine needs them
    return Library.build(sp, tmp_path_factory.mktemp("r") / "raw.fastspec", preprocess=None, faiss=False)


def brute_force(lib: Library, queries: Spectra, metric: str, candidates, k: int = K, tolerance="0.02da",
                min_matches: int = 0, min_score: float = 0.0):
    """Reference top-k: the similarity kernel over explicit candidate lists (bool matrix (nq, n_lib))."""
    q = apply_pipeline(lib.pipeline, queries)
    allowed = np.asarray(candidates, bool) & (np.diff(q.offsets) > 0)[:, None]
    offs = np.zeros(len(q) + 1, np.int64)
    np.cumsum(allowed.sum(1), out=offs[1:])
    ids = np.nonzero(allowed)[1].astype(np.int64)
    kw = {"tolerance": parse_tolerance(tolerance)}
    s, i, m = similarity.topk_candidates(similarity.prepare(q, metric, **kw), similarity.prepare(lib.spectra(), metric, **kw),
                                         offs, ids, k, metric=metric, min_matches=max(1, min_matches),
                                         min_score=min_score, **kw)
    return np.asarray(s), np.asarray(i), np.asarray(m)


def same_polarity(lib: Library, queries: Spectra) -> np.ndarray:
    lp, qp = np.asarray(lib.polarity), queries.polarity
    return (qp[:, None] == 0) | (lp[None, :] == 0) | (qp[:, None] == lp[None, :])


def assert_same_hits(hits: Hits, ref):
    s, i, m = ref
    np.testing.assert_array_equal(hits.indices, i)
    np.testing.assert_allclose(hits.scores, s, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hits.matches, m)


# ------------------------------------------------------------------------------------------ exact modes
def test_identity_equals_brute_force(lib, data):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="identity", precursor_tolerance="0.01da")
    pl, pq_ = np.asarray(lib.precursor_mz), queries.precursor_mz
    window = np.abs(pl[None, :] - pq_[:, None]) <= 0.01
    assert_same_hits(hits, brute_force(lib, queries, "cosine", window & same_polarity(lib, queries)))
    assert (hits.indices[:, 0] >= 0).sum() >= 20
    assert set(hits.status[~np.isfinite(pq_)]) <= {"no_precursor", "no_peaks"}


def test_identity_ppm_window(lib, data):
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
    assert (skip.status[~has & (skip.status != "no_peaks")] == "no_neighbour").all()
    assert skip.skipped[~has].all() and not skip.skipped[has].any()

    empty = lib.search(queries, k=K, mode="formula", no_neighbour="empty")
    assert_same_hits(empty, ref)
    assert not empty.skipped[~has & (empty.status != "no_peaks")].any()

    fb = lib.search(queries, k=K, mode="formula", no_neighbour="fallback")
    whole = brute_force(lib, queries, "cosine", same_polarity(lib, queries))
    expect = tuple(np.where(has[:, None], r, w) for r, w in zip(ref, whole))
    assert_same_hits(fb, expect)
    assert (fb.fallback == (~has & (fb.status != "no_peaks"))).all()


def test_formula_given_explicitly(lib, data):
    queries = data[1][:10]
    formula = lib.metadata(rows=[0], columns=["formula_canonical"]).column(0)[0].as_py()
    hits = lib.search(queries, k=K, mode="formula", formula=formula)
    lf = lib.metadata(columns=["formula_canonical"]).column("formula_canonical").to_pylist()
    cand = np.array([f == formula for f in lf])[None, :] & same_polarity(lib, queries)
    assert_same_hits(hits, brute_force(lib, queries, "cosine", cand))


@pytest.mark.parametrize("metric", ["cosine", "entropy"])
def test_open_equals_brute_force(lib, data, metric):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="open", metric=metric)
    assert_same_hits(hits, brute_force(lib, queries, metric, same_polarity(lib, queries)))


def test_open_ppm_tolerance(lib, data):
    queries = data[1][:30]
    hits = lib.search(queries, k=K, mode="open", metric="cosine", tolerance="15ppm")
    assert_same_hits(hits, brute_force(lib, queries, "cosine", same_polarity(lib, queries), tolerance="15ppm"))


def test_analog_equals_brute_force_modified_cosine(lib, data):
    queries = data[1]
    hits = lib.search(queries, k=K, mode="analog")
    assert hits.params["metric"] == "modified_cosine"
    assert_same_hits(hits, brute_force(lib, queries, "modified_cosine", same_polarity(lib, queries)))


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
    from fastspec.library import normalize_adducts

    la = np.array(normalize_adducts(lib.metadata(columns=["adduct"]).column("adduct").to_pylist()), dtype=object)
    qa = normalize_adducts(queries.column("adduct"))
    cand = same_polarity(lib, queries) & np.array([[a is None or a == b for b in la] for a in qa])
    assert_same_hits(ad, brute_force(lib, queries, "cosine", cand))


def test_unknown_polarity_matches_both(lib, data):
    q = data[1][:8]
    q = q.with_metadata(q.metadata.drop(["ion_mode"]))
    q = Spectra(q.offsets, q.mz, q.intensity, q.precursor_mz, np.zeros(len(q), np.int8), q.metadata, validate=False)
    assert (q.polarity == 0).all()
    hits = lib.search(q, k=K, mode="open")
    assert_same_hits(hits, brute_force(lib, q, "cosine", np.ones((len(q), len(lib)), bool)))


# ------------------------------------------------------------------------------------------ raw peaks vs matchms
def test_no_preprocess_equals_matchms(raw, data):
    from matchms.similarity import CosineGreedy, ModifiedCosineGreedy

    queries = data[1][:12]
    queries = queries[np.flatnonzero(np.isfinite(queries.precursor_mz))]
    lib_ms, q_ms = raw.spectra(metadata=True).to_matchms(), queries.to_matchms()
    pol = same_polarity(raw, queries)
    for mode, sim in (("open", CosineGreedy(tolerance=0.02)), ("analog", ModifiedCosineGreedy(tolerance=0.02))):
        hits = raw.search(queries, k=K, mode=mode, tolerance=0.02)
        for r, q in enumerate(q_ms):
            scored = []
            for c, l in enumerate(lib_ms):
                if not pol[r, c]:
                    continue
                res = sim.pair(q, l)
                if res["matches"] > 0:
                    scored.append((-float(res["score"]), c))
            best = sorted(scored)[:K]
            np.testing.assert_allclose(hits.scores[r, : len(best)], [-s for s, _ in best], rtol=1e-6, atol=1e-6)
            assert (hits.indices[r, len(best):] == -1).all()


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
    same = approx.indices == exact.indices
    np.testing.assert_allclose(approx.scores[same], exact.scores[same], rtol=1e-6)
    with pytest.raises(ParameterError):
        lib.search(queries, mode="identity", engine="faiss")


# ------------------------------------------------------------------------------------------ Hits
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


def test_bad_parameters(lib, data):
    q = data[1][:3]
    for kw in ({"mode": "fuzzy"}, {"k": 0}, {"tolerance": "abc"}, {"mode": "analog", "metric": "cosine"},
               {"no_neighbour": "maybe"}, {"engine": "gpu"}):
        with pytest.raises(ParameterError):
            lib.search(q, **kw)


def test_query_order_and_empty_queries(lib, data):
    q = data[1][:10]
    rev = q[::-1]
    a, b = lib.search(q, k=K, mode="open"), lib.search(rev, k=K, mode="open")
    np.testing.assert_array_equal(a.indices, b.indices[::-1])
    empty = Spectra.from_arrays([[], [100.0]], [[], [1.0]], precursor_mz=[100.0, 200.0])
    h = lib.search(empty, k=K, mode="open")
    assert h.status[0] == "no_peaks" and (h.indices[0] == -1).all()


# ------------------------------------------------------------------------------------------ property
@st.composite
def _library(draw):
    n = draw(st.integers(5, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    pool = np.round(rng.uniform(50, 300, 25), 1)  # shared fragment masses -> many candidates per query
    precursors = rng.uniform(150, 400, 4)
    mzs, ints, pmz = [], [], []
    for _ in range(n):
        m = np.unique(rng.choice(pool, size=rng.integers(1, 12), replace=True) + rng.normal(0, 0.004, 1))
        mzs.append(m)
        ints.append(rng.uniform(0.01, 1.0, m.shape[0]))
        pmz.append(float(rng.choice(precursors)))  # shared precursors: the precursor-window threshold kicks in
    return Spectra.from_arrays(mzs, ints, precursor_mz=pmz, metadata={"id": [str(i) for i in range(n)]})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sp=_library(), metric=st.sampled_from(["cosine", "entropy", "modified_cosine"]), k=st.integers(1, 6))
def test_whole_library_modes_property(tmp_path_factory, sp, metric, k):
    path = tmp_path_factory.mktemp("h") / "l.fastspec"
    lib = Library.build(sp, path, preprocess=None, faiss=False)
    queries = sp[: min(6, len(sp))]
    mode = "analog" if metric == "modified_cosine" else "open"
    hits = lib.search(queries, k=k, mode=mode, metric=metric, tolerance=0.01)
    ref = brute_force(lib, queries, metric, np.ones((len(queries), len(lib)), bool), k=k, tolerance="0.01da")
    assert_same_hits(hits, ref)
