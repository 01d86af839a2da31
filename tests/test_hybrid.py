"""ms_entropy's hybrid search (fragments, else neutral losses): the pair kernel against a naive reference
and against ``FlashEntropySearch.hybrid_search`` on real MassBank spectra."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from fastspec import similarity
from fastspec.errors import ParameterError
from fastspec.spectra import Spectra


def _clean_spectrum(draw, n_max=12):
    """Peaks on a 0.0125 Da grid more than 0.05 Da apart (clean at 0.02 Da), with a precursor above them;
    fragments and losses of two spectra then often fall in each other's windows, edges included."""
    k = draw(st.integers(1, n_max))
    steps = draw(st.lists(st.integers(5, 400), min_size=k, max_size=k))
    start = draw(st.integers(4000, 8000))
    mz = (start + np.cumsum(steps)) * 0.0125
    inten = np.array(draw(st.lists(st.floats(1.0, 1000.0), min_size=k, max_size=k)))
    pmz = float(mz[-1] + draw(st.integers(160, 4000)) * 0.0125)
    return mz, inten, pmz


@st.composite
def pairs(draw):
    a = _clean_spectrum(draw)
    if draw(st.booleans()):  # b shares fragments or losses with a, exactly or by a window's width
        mz, inten, pmz = a
        shift = draw(st.sampled_from([0.0, 0.02, -0.02, 0.0125, 1.5]))
        pick = np.array(draw(st.lists(st.booleans(), min_size=len(mz), max_size=len(mz))))
        if not pick.any():
            pick[0] = True
        frag = mz[pick]
        loss_side = draw(st.booleans())
        pmz_b = pmz + (draw(st.integers(-400, 400)) * 0.0125 if loss_side else 0.0)
        mz_b = np.sort((pmz_b - (pmz - frag)) if loss_side else frag + shift)
        keep = np.concatenate([[True], np.diff(mz_b) > 0.05])
        mz_b = mz_b[keep & (mz_b > 1.0) & (mz_b < pmz_b - 1.6)]
        if mz_b.size == 0:
            mz_b = np.array([pmz_b - 50.0])
        b = (mz_b, np.linspace(5.0, 500.0, mz_b.size), pmz_b)
    else:
        b = _clean_spectrum(draw)
    return a, b


def _spectra(*specs):
    return Spectra.from_arrays([s[0] for s in specs], [s[1] for s in specs],
                               precursor_mz=np.array([s[2] for s in specs], dtype=np.float64))


@settings(max_examples=300, deadline=None)
@given(pair=pairs(), weighted=st.booleans())
def test_hybrid_pair_vs_naive(pair, weighted):
    (a, b) = pair
    metric = "entropy" if weighted else "unweighted_entropy"
    s, m = similarity.score_pairs(_spectra(a), _spectra(b), metric, tolerance=0.02, clean=False, hybrid=True)
    want, n = ref.hybrid_entropy_similarity(*a, *b, tol=0.02, weighted=weighted)
    assert s[0] == pytest.approx(want, abs=2e-6) and m[0] == n
    # never below the fragment-only (open search) score: losses only add where fragments found nothing
    s_open, _ = similarity.score_pairs(_spectra(a), _spectra(b), metric, tolerance=0.02, clean=False, flash=True)
    assert s[0] >= s_open[0] - 1e-7 and 0.0 <= s[0] <= 1.0


def test_hybrid_without_precursor_is_fragments_only():
    a = (np.array([100.0, 150.0, 200.0]), np.array([10.0, 20.0, 30.0]), np.nan)
    b = (np.array([100.0, 160.0]), np.array([5.0, 5.0]), 300.0)
    s, m = similarity.score_pairs(_spectra(a), _spectra(b), "entropy", tolerance=0.02, clean=False, hybrid=True)
    s_open, m_open = similarity.score_pairs(_spectra(a), _spectra(b), "entropy", tolerance=0.02, clean=False, flash=True)
    assert s[0] == s_open[0] and m[0] == m_open[0] == 1


def test_hybrid_needs_entropy_and_da():
    x = _spectra((np.array([100.0]), np.array([1.0]), 200.0))
    with pytest.raises(ParameterError, match="hybrid"):
        similarity.prepare(x, "cosine", hybrid=True)
    with pytest.raises(ParameterError, match="hybrid"):
        similarity.prepare(x, "entropy", tolerance="10ppm", hybrid=True)


def flash_pairs(massbank_parquet, seed: int, start: int):
    """Real positive MassBank spectra cleaned by ms_entropy's ``clean_spectrum_for_search`` and indexed by
    its FlashEntropySearch: a precursor-mass neighbourhood (sorted positions ``start:start + 600``) plus 600
    random others; and 40 of them as queries with their precursor kept or moved (+14.0157, -2.0157 Da:
    losses shift, fragments do not). Returns (index, library Spectra in the index's order, query
    positions in it, queries)."""
    me = pytest.importorskip("ms_entropy")
    import fastspec

    sp = fastspec.read(massbank_parquet)
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero((sp.polarity > 0) & np.isfinite(sp.precursor_mz) & (sp.precursor_mz > 100))
    pick = np.unique(np.concatenate([pos[np.argsort(sp.precursor_mz[pos])][start:start + 600],
                                     rng.choice(pos, 600, replace=False)]))
    es = me.FlashEntropySearch(max_ms2_tolerance_in_da=0.02)
    specs = []
    for i in pick:
        pk = es.clean_spectrum_for_search(float(sp.precursor_mz[i]),
                                          np.column_stack([sp[i].mz, sp[i].intensity]).astype(np.float32))
        if len(pk):
            specs.append({"precursor_mz": float(sp.precursor_mz[i]), "peaks": pk})
    specs = es.build_index(specs)  # sorted by precursor m/z; its scores come in this order
    lib = Spectra.from_arrays([s["peaks"][:, 0].astype(np.float64) for s in specs],
                              [s["peaks"][:, 1].astype(np.float64) for s in specs],
                              precursor_mz=np.array([s["precursor_mz"] for s in specs]))
    queries = rng.choice(len(specs), 40, replace=False)
    qs = Spectra.from_arrays([lib[int(j)].mz for j in queries], [lib[int(j)].intensity for j in queries],
                             precursor_mz=lib.precursor_mz[queries] + rng.choice([0.0, 14.0157, -2.0157], 40))
    return es, lib, queries, qs


def test_hybrid_equals_ms_entropy_flash_hybrid_search(massbank_parquet):
    """Real MassBank spectra cleaned by ms_entropy, indexed by FlashEntropySearch: its hybrid_search
    scores against every library spectrum equal the hybrid pair kernel's within 1e-6 (float32 sums in
    another order), and the spectra with a nonzero score are the same."""
    es, lib, _, qs = flash_pairs(massbank_parquet, 7, 2000)
    mine, _ = similarity.score_matrix(qs, lib, "entropy", tolerance=0.02, clean=False, hybrid=True)
    n_losses = 0
    for r in range(len(qs)):
        peaks = np.column_stack([qs[r].mz, qs[r].intensity]).astype(np.float32)
        theirs = es.hybrid_search(precursor_mz=float(qs.precursor_mz[r]), peaks=peaks, ms2_tolerance_in_da=0.02)
        np.testing.assert_allclose(np.asarray(mine)[r], theirs, atol=1e-6, rtol=0)
        assert np.array_equal(np.asarray(mine)[r] > 0, theirs > 0)
        opened = es.open_search(peaks=peaks, ms2_tolerance_in_da=0.02)
        n_losses += int((theirs > opened + 1e-6).sum())
    assert n_losses > 50  # neutral losses did add to many pairs


# ------------------------------------------------------------------------------------------ search
def brute_force(lib, queries, k, metric="entropy", min_matches=0, min_score=0.0, **flags):
    """The library's top-k by scoring every spectrum with the pair kernel (``flags``: ``hybrid=True`` or
    ``neutral_loss=True``), under the search's polarity rule; [(score, row), ...] per query."""
    from fastspec.library import apply_pipeline

    q = apply_pipeline(lib.pipeline, queries)
    kw = dict(tolerance=0.02, clean=False, **flags)
    S, M = similarity.score_matrix(similarity.prepare(q, metric, **kw), similarity.prepare(lib.spectra(), metric, **kw))
    S, M = np.asarray(S), np.asarray(M)
    out = []
    for r in range(len(queries)):
        qp = q.polarity[r]
        ok = (M[r] >= max(1, min_matches)) & (S[r] >= min_score) & ((lib.polarity == qp) | (lib.polarity == 0) | (qp == 0))
        if np.diff(q.offsets)[r] == 0:
            ok[:] = False
        order = np.lexsort((np.arange(S.shape[1]), -np.where(ok, S[r], -np.inf)))[:k]
        out.append([(float(S[r, j]), int(j)) for j in order if ok[j]])
    return out


def assert_hits_equal(hits, want):
    """The same rows in the same order as :func:`brute_force`, the same scores (float64)."""
    for r, w in enumerate(want):
        got = [(float(hits.scores[r, t]), int(hits.indices[r, t])) for t in range(hits.indices.shape[1])
               if hits.indices[r, t] >= 0]
        assert [j for _, j in got] == [j for _, j in w], r
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in w], rtol=0, atol=1e-12)


def assert_flash_top10(hits, flash, call, counts=False) -> int:
    """``hits`` (the positive queries of ``hlib_flash``) against FlashEntropySearch's dense scores from
    ``call(es, precursor_mz, peaks)`` (``counts``: also its matched-peak numbers): the top-10 scores within
    1e-6, the same spectra except ties (and the same counts). Returns the queries checked."""
    es, row_of, q = flash
    checked = 0
    for r in range(len(q)):
        if np.diff(q.offsets)[r] == 0:
            continue
        peaks = es.clean_spectrum_for_search(precursor_mz=float(q.precursor_mz[r]),
                                             peaks=np.column_stack([q[r].mz, q[r].intensity]).astype(np.float32))
        out = call(es, float(q.precursor_mz[r]), peaks)
        s, n = (np.asarray(out[0]), np.asarray(out[1])) if counts else (np.asarray(out), None)
        top = np.lexsort((row_of, -s))[:10]
        top = top[s[top] > 0]
        k = top.shape[0]
        np.testing.assert_allclose(hits.scores[r, :k], s[top], atol=1e-6, rtol=0)
        untied = np.isclose(s[top][:, None], s[top][None, :], atol=1e-6).sum(axis=1) == 1
        assert list(hits.indices[r, :k][untied]) == list(row_of[top][untied])
        if counts:
            assert list(hits.matches[r, :k][untied]) == list(n[top][untied])
        assert (hits.indices[r, k:] == -1).all()
        checked += 1
    return checked


@pytest.mark.parametrize("metric,min_matches,dense", [("entropy", 0, False), ("unweighted_entropy", 0, False),
                                                      ("entropy", 3, False), ("entropy", 0, True),
                                                      ("unweighted_entropy", 0, True), ("entropy", 0, "rounds")])
def test_hybrid_search_equals_brute_force(hlib, metric, min_matches, dense, monkeypatch):
    """Through the pruned bound kernel only, or the dense scan for every query (fragments and losses),
    also with the fewest first-round candidates (2k + 8), so that queries need further rounds."""
    from fastspec import search_fragment as F
    from fastspec.kernels import dense as dk

    monkeypatch.setattr(F, "_DENSE_BELOW", dict.fromkeys(F._DENSE_BELOW, np.inf if dense else -np.inf))
    if dense == "rounds":
        monkeypatch.setattr(F, "_DENSE_CANDIDATES_NL", 1)
    calls = []
    orig = dk.dense_bounds
    monkeypatch.setattr(dk, "dense_bounds", lambda rows, *a, **k: calls.append(rows.shape[0]) or orig(rows, *a, **k))
    lib, queries = hlib
    hits = lib.search(queries, k=10, mode="hybrid", metric=metric, min_matches=min_matches, threads=1)
    assert_hits_equal(hits, brute_force(lib, queries, 10, metric, min_matches, hybrid=True))
    assert (sum(calls) >= len(queries) - 5) if dense else not calls
    if dense == "rounds":  # 60 queries, one batch: a second call is a second round
        assert len(calls) >= 2
    # losses matter here: hybrid beats open search's best score for some queries
    open_hits = lib.search(queries, k=10, mode="open", metric=metric, threads=1)
    assert (hits.scores[:, 0] > open_hits.scores[:, 0] + 1e-6).sum() >= 5


def test_hybrid_search_without_stored_loss_weights(hlib, monkeypatch):
    """Indexes built before nl_went_sqrt compute the loss weights on first use: the same hits."""
    from fastspec.library import Library

    lib, queries = hlib
    ref = lib.search(queries, k=10, mode="hybrid")
    real = Library.has_array
    monkeypatch.setattr(Library, "has_array", lambda self, name: not name.startswith("nl_went") and real(self, name))
    old = Library.open(lib.path).search(queries, k=10, mode="hybrid")
    np.testing.assert_array_equal(old.indices, ref.indices)
    np.testing.assert_array_equal(old.scores, ref.scores)


def test_hybrid_search_equals_ms_entropy_hybrid_search(hlib, hlib_flash):
    """The library's positive spectra indexed by FlashEntropySearch from the same stored (clean) peaks:
    its hybrid_search top-10 scores equal the hybrid search's within 1e-6, the same spectra except ties."""
    lib, queries = hlib
    hits = lib.search(queries.take(np.flatnonzero(queries.polarity > 0)), k=10, mode="hybrid", threads=1)
    checked = assert_flash_top10(hits, hlib_flash, lambda es, pmz, peaks: es.hybrid_search(
        precursor_mz=pmz, peaks=peaks, ms2_tolerance_in_da=0.02))
    assert checked >= 20


def test_hybrid_parameters(hlib):
    lib, queries = hlib
    with pytest.raises(ParameterError, match="hybrid"):
        lib.search(queries, mode="hybrid", metric="cosine")
    with pytest.raises(ParameterError, match="Da tolerance"):
        lib.search(queries, mode="hybrid", tolerance="10ppm")


def test_hybrid_on_the_command_line(hlib, tmp_path):
    from click.testing import CliRunner

    import fastspec
    from fastspec.cli import main

    lib, queries = hlib
    qfile = tmp_path / "q.mgf"
    fastspec.io.write(queries, qfile)
    res = CliRunner().invoke(main, ["query", str(qfile), "--library", str(lib.path), "-o", str(tmp_path / "h.parquet"),
                                    "--mode", "hybrid", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "h.parquet")
    assert set(table.column("query_index").to_pylist()) == set(range(len(queries)))
    import json

    assert json.loads(table.schema.metadata[b"fastspec"])["mode"] == "hybrid"
    res = CliRunner().invoke(main, ["query", str(qfile), "--library", str(lib.path), "-o", str(tmp_path / "x.tsv"),
                                    "--mode", "hybrid", "--tolerance", "10ppm"], catch_exceptions=False)
    assert res.exit_code != 0 and "Traceback" not in res.output and "Da tolerance" in res.output


def test_hybrid_search_finds_losses_matched_only_in_float32(tmp_path):
    """The kernel's losses are float32(float32(precursor) - mz) (ms_entropy's): rounded relative to the
    precursor, not the loss. Here they are 0.019958 Da apart in float32 (a match, as in ms_entropy's
    hybrid_search) but 0.02002 in float64; the bound's loss windows must still reach the spectrum."""
    from fastspec.library import Library

    q = _spectra((np.array([940.4358]), np.array([100.0]), 958.03324))
    spec = _spectra((np.array([883.981]), np.array([100.0]), 901.59846))
    lib = Library.build(spec, tmp_path / "l.fastspec", preprocess=None, faiss=False, progress=False)
    s, _ = similarity.score_pairs(q, spec, "entropy", tolerance=0.02, clean=False, hybrid=True)
    assert s[0] == 1.0
    hits = lib.search(q, k=1, mode="hybrid")
    assert hits.indices[0, 0] == 0 and hits.scores[0, 0] == 1.0


def test_hybrid_unclean_loss_partner_not_taken_by_a_fragment_matched_peak():
    # 150.03 has a fragment partner; the loss partner of 150.00 (250.015: loss 149.985) lies in the loss
    # windows of both and goes to 150.00
    a = (np.array([150.00, 150.03]), np.array([1.0, 1.0]), 300.0)
    b = (np.array([150.03, 250.015]), np.array([1.0, 1.0]), 400.0)
    s, m = similarity.score_pairs(_spectra(a), _spectra(b), "entropy", tolerance=0.02, clean=False, hybrid=True)
    assert s[0] == pytest.approx(1.0, abs=1e-6) and m[0] == 2
