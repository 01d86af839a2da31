"""ms_entropy's neutral-loss search (``mode="neutral_loss"``; ``neutral_loss=True`` in similarity): the
scores against a naive reference and against ``FlashEntropySearch.neutral_loss_search`` on real MassBank
spectra, and library search against brute force."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hybrid import (_clean_spectrum, _spectra, assert_flash_top10, assert_hits_equal, brute_force,
                         flash_pairs, pairs)

import reference as ref
from fastspec import similarity
from fastspec.errors import ParameterError

KW = dict(tolerance=0.02, clean=False, neutral_loss=True)


@settings(max_examples=300, deadline=None)
@given(pair=pairs(), weighted=st.booleans())
def test_neutral_loss_pair_vs_naive(pair, weighted):
    a, b = pair
    metric = "entropy" if weighted else "unweighted_entropy"
    s, m = similarity.score_pairs(_spectra(a), _spectra(b), metric, **KW)
    want, n = ref.neutral_loss_entropy_similarity(*a, *b, tol=0.02, weighted=weighted)
    assert s[0] == pytest.approx(want, abs=2e-6) and m[0] == n
    assert 0.0 <= s[0] <= 1.0


@settings(max_examples=200, deadline=None)
@given(pair=pairs(), where=st.tuples(st.floats(-0.5, 1.5), st.floats(-0.5, 1.5)))
def test_neutral_loss_pair_vs_naive_precursor_anywhere(pair, where):
    """Precursors among or below the peaks: negative losses too (unpreprocessed spectra)."""
    (a, b) = pair
    a, b = [(x[0], x[1], float(x[0][0] + w * (x[0][-1] - x[0][0]))) for x, w in zip((a, b), where)]
    s, m = similarity.score_pairs(_spectra(a), _spectra(b), "entropy", **KW)
    want, n = ref.neutral_loss_entropy_similarity(*a, *b, tol=0.02)
    assert s[0] == pytest.approx(want, abs=2e-6) and m[0] == n


@st.composite
def _one(draw):
    return _clean_spectrum(draw)


@settings(max_examples=100, deadline=None)
@given(a=_one(), seed=st.integers(0, 2**16))
def test_neutral_loss_self_score_and_peak_order(a, seed):
    from fastspec.spectra import Spectra

    s, m = similarity.score_pairs(_spectra(a), _spectra(a), "entropy", **KW)
    assert s[0] == pytest.approx(1.0, abs=1e-6) and m[0] == len(a[0])
    # peaks given in another order read the same (Spectra sorts them)
    perm = np.random.default_rng(seed).permutation(len(a[0]))
    shuffled = Spectra.from_arrays([a[0][perm]], [a[1][perm]], precursor_mz=np.array([a[2]]))
    s2, m2 = similarity.score_pairs(shuffled, _spectra(a), "entropy", **KW)
    assert s2[0] == s[0] and m2[0] == m[0]


def test_neutral_loss_is_not_fragment_matching():
    # same fragments, precursors 14 Da apart: fragments match, losses do not; and the reverse
    a = (np.array([100.0, 150.0, 200.0]), np.array([10.0, 20.0, 30.0]), 300.0)
    b = (np.array([100.0, 150.0, 200.0]), np.array([10.0, 20.0, 30.0]), 314.0)
    c = (np.array([114.0, 164.0, 214.0]), np.array([10.0, 20.0, 30.0]), 314.0)
    s, m = similarity.score_pairs(_spectra(a, a), _spectra(b, c), "entropy", **KW)
    assert s[0] == 0.0 and m[0] == 0
    assert s[1] == pytest.approx(1.0, abs=1e-6) and m[1] == 3


@pytest.mark.parametrize("pmz", [np.nan, 0.0, -5.0])
def test_neutral_loss_without_precursor_scores_zero(pmz):
    """No precursor m/z (NaN, or the placeholder 0, or below): no losses, even against the same spectrum."""
    a = (np.array([100.0, 150.0]), np.array([10.0, 20.0]), pmz)
    s, m = similarity.score_pairs(_spectra(a), _spectra(a), "entropy", **KW)
    assert s[0] == 0.0 and m[0] == 0


def test_neutral_loss_needs_entropy_and_da():
    x = _spectra((np.array([100.0]), np.array([1.0]), 200.0))
    with pytest.raises(ParameterError, match="neutral_loss"):
        similarity.prepare(x, "cosine", neutral_loss=True)
    with pytest.raises(ParameterError, match="neutral_loss"):
        similarity.prepare(x, "entropy", tolerance="10ppm", neutral_loss=True)
    with pytest.raises(ParameterError, match="choose one"):
        similarity.prepare(x, "entropy", neutral_loss=True, hybrid=True)


def test_neutral_loss_equals_ms_entropy_flash_neutral_loss_search(massbank_parquet):
    """Real MassBank spectra cleaned by ms_entropy and indexed by FlashEntropySearch: its
    neutral_loss_search scores against every library spectrum equal the pair kernel's within 1e-6 (float32
    sums in another order), with identical matched-loss counts."""
    es, lib, queries, qs = flash_pairs(massbank_parquet, 5, 3000)
    mine, mine_n = similarity.score_matrix(qs, lib, "entropy", **KW)
    mine, mine_n = np.asarray(mine), np.asarray(mine_n)
    shared = 0
    for r in range(len(qs)):
        peaks = np.column_stack([qs[r].mz, qs[r].intensity]).astype(np.float32)
        theirs, theirs_n = es.neutral_loss_search(precursor_mz=float(qs.precursor_mz[r]), peaks=peaks,
                                                  ms2_tolerance_in_da=0.02, output_matched_peak_number=True)
        np.testing.assert_allclose(mine[r], theirs, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(mine_n[r], theirs_n)
        shared += int(((theirs > 0) & (np.arange(len(lib)) != queries[r])).sum())
    assert shared > 200  # losses shared with other spectra, not only self-matches


# ------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("metric,min_matches,rounds", [("entropy", 0, False), ("unweighted_entropy", 0, False),
                                                       ("entropy", 3, False), ("entropy", 0, True)])
def test_neutral_loss_search_equals_brute_force(hlib, metric, min_matches, rounds, monkeypatch):
    """Through the dense scan of the loss windows (also with only 2 first-round candidates, so that queries
    need further rounds; with a minimum of matched peaks, counting each spectrum's pairs in the windows)."""
    from fastspec.kernels import dense as dk

    calls = []
    orig = dk.dense_bounds

    def spy(rows, *a, **k):
        calls.append(k["losses_only"])
        if rounds and len(calls) == 1:
            k["m"] = 2
        return orig(rows, *a, **k)

    monkeypatch.setattr(dk, "dense_bounds", spy)
    lib, queries = hlib
    hits = lib.search(queries, k=10, mode="neutral_loss", metric=metric, min_matches=min_matches, threads=1)
    assert_hits_equal(hits, brute_force(lib, queries, 10, metric, min_matches, neutral_loss=True))
    assert calls and all(calls)
    if rounds:  # 60 queries, one batch: a second call is a second round
        assert len(calls) >= 2
    # the moved-precursor copies (the last 20 queries): their fragments are in the library, their losses not
    open_hits = lib.search(queries, k=1, mode="open", metric=metric, threads=1)
    moved = slice(40, 60)
    assert (open_hits.scores[moved, 0] > hits.scores[moved, 0] + 0.1).sum() >= 10


def test_neutral_loss_search_equals_ms_entropy_neutral_loss_search(hlib, hlib_flash):
    """The library's positive spectra indexed by FlashEntropySearch from the same stored (clean) peaks:
    its neutral_loss_search top-10 scores equal the search's within 1e-6, the same spectra except ties,
    the same matched-loss counts."""
    lib, queries = hlib
    hits = lib.search(queries.take(np.flatnonzero(queries.polarity > 0)), k=10, mode="neutral_loss", threads=1)
    checked = assert_flash_top10(hits, hlib_flash, lambda es, pmz, peaks: es.neutral_loss_search(
        precursor_mz=pmz, peaks=peaks, ms2_tolerance_in_da=0.02, output_matched_peak_number=True), counts=True)
    assert checked >= 20


def test_neutral_loss_search_unpreprocessed_massbank_equals_brute_force(massbank_parquet, tmp_path, monkeypatch):
    """Real spectra as read (peaks closer than two windows, noise, no cleaning: what ms_entropy refuses)
    through the dense scan, whose sums then count every pair in the windows: the same hits as brute force,
    also when the first round holds only 2 candidates; hybrid search likewise."""
    import fastspec
    from fastspec.kernels import dense as dk
    from fastspec.library import Library

    sp = fastspec.read(massbank_parquet)
    rng = np.random.default_rng(23)
    ok = np.flatnonzero(np.isfinite(sp.precursor_mz) & (sp.polarity > 0))
    pick = rng.choice(ok, 1540, replace=False)
    lib = Library.build(sp.take(pick[:1500]), tmp_path / "raw.fastspec", preprocess=None, faiss=False, progress=False)
    assert float(lib.peak_index("entropy", losses=True).min_gap_min) < 0.04  # unclean at 0.02 Da
    queries = sp.take(pick[1500:])
    calls = []
    orig = dk.dense_bounds

    def spy(rows, *a, **k):
        calls.append(rows.shape[0])
        if len(calls) == 1:
            k["m"] = 2
        return orig(rows, *a, **k)

    monkeypatch.setattr(dk, "dense_bounds", spy)
    hits = lib.search(queries, k=10, mode="neutral_loss", threads=1)
    assert_hits_equal(hits, brute_force(lib, queries, 10, neutral_loss=True))
    assert len(calls) >= 2 and (hits.indices[:, 0] >= 0).sum() >= 30
    # hybrid search's dense scan on the same unclean spectra (fragment and loss windows)
    n_calls = len(calls)
    hits = lib.search(queries, k=10, mode="hybrid", threads=1)
    assert_hits_equal(hits, brute_force(lib, queries, 10, hybrid=True))
    assert len(calls) > n_calls


def test_neutral_loss_search_parameters(hlib):
    lib, queries = hlib
    with pytest.raises(ParameterError, match="NeutralLossesCosine"):
        lib.search(queries, mode="neutral_loss", metric="cosine")
    with pytest.raises(ParameterError, match="Da tolerance"):
        lib.search(queries, mode="neutral_loss", tolerance="10ppm")
    with pytest.raises(ParameterError, match="faiss"):
        lib.search(queries, mode="neutral_loss", engine="faiss")


def test_neutral_loss_search_without_precursor(hlib):
    """A query without a precursor m/z (or with the placeholder 0) has no losses: status no_precursor."""
    from fastspec.spectra import Spectra

    lib, queries = hlib
    q = queries.take([0, 1, 2])
    q = Spectra.from_arrays([q[i].mz for i in range(3)], [q[i].intensity for i in range(3)],
                            precursor_mz=np.array([np.nan, 0.0, q.precursor_mz[2]]),
                            metadata={"ion_mode": ["positive" if p > 0 else "negative" for p in q.polarity]})
    hits = lib.search(q, k=3, mode="neutral_loss", threads=1)
    assert list(hits.status) == ["no_precursor", "no_precursor", "ok"]
    assert (hits.indices[:2] == -1).all() and hits.indices[2, 0] >= 0


def test_neutral_loss_flags_are_modes_not_options(hlib):
    """hybrid=True / neutral_loss=True passed to another mode would score candidates that mode's bounds
    chose for fragments (and in place, the stored fragments against the query's losses): refused."""
    lib, queries = hlib
    for flag in ("neutral_loss", "hybrid"):
        for mode in ("open", "identity", "formula"):
            with pytest.raises(ParameterError, match=f"use mode='{flag}'"):
                lib.search(queries, mode=mode, metric="entropy", **{flag: True})


def _handmade(seed, n=300, unclean=False):
    """Spectra of 1-8 peaks on a 0.005 Da grid, more than 0.05 Da apart (closer pairs with ``unclean``),
    some above their precursor (negative losses); precursors shared by groups, some 0 or unknown; both
    polarities, some unknown; losses often within, at or just past a window's edge of each other."""
    from fastspec.spectra import Spectra

    rng = np.random.default_rng(seed)
    base = rng.uniform(150, 400, 12)
    mzs, ints, pmz, mode = [], [], [], []
    for i in range(n):
        p = float(rng.choice(base) + rng.choice([0.0, 0.0, 0.02, -0.02, 0.0201, 14.01565]))
        losses = rng.choice(np.arange(2.0, 140.0, 0.25), rng.integers(1, 9), replace=False)
        m = np.round((p - losses + rng.choice([0.0, 0.01, -0.015], losses.shape)) / 0.005) * 0.005
        if rng.random() < 0.15:
            m = np.append(m, p + rng.uniform(1, 30))  # above the precursor
        m = np.unique(m)
        m = m[np.concatenate([[True], np.diff(m) > 0.05])]
        if unclean and i == 7:
            m = np.append(m, m[0] + 0.01)
        mzs.append(np.sort(m))
        ints.append(rng.uniform(1, 100, m.shape[0]))
        pmz.append(np.nan if rng.random() < 0.05 else 0.0 if rng.random() < 0.03 else p)
        mode.append(rng.choice(["positive", "positive", "negative", None]))
    return Spectra.from_arrays(mzs, ints, precursor_mz=np.array(pmz), metadata={"ion_mode": mode})


@pytest.mark.parametrize("unclean", [False, True])
def test_neutral_loss_search_handmade_equals_brute_force(tmp_path, unclean, monkeypatch):
    """Raw peaks (no preprocessing), negative losses, unknown and 0 precursors, mixed polarity, k beyond
    the library, 2 threads, a minimum score; with one unclean library spectrum (two peaks 0.01 Da apart)
    too, through the dense scan all the same."""
    from fastspec.kernels import dense as dk
    from fastspec.library import Library

    calls = []
    orig = dk.dense_bounds
    monkeypatch.setattr(dk, "dense_bounds", lambda rows, *a, **k: calls.append(rows.shape[0]) or orig(rows, *a, **k))
    sp = _handmade(3, unclean=unclean)
    lib = Library.build(sp.take(np.arange(260)), tmp_path / "l.fastspec", preprocess=None, faiss=False, progress=False)
    queries = sp.take(np.arange(260, 300))
    has = np.isfinite(queries.precursor_mz) & (queries.precursor_mz > 0)
    n_hits = []
    for kw in (dict(k=5, threads=1), dict(k=300, threads=2), dict(k=5, threads=2, min_score=0.3)):
        hits = lib.search(queries, mode="neutral_loss", **kw)
        want = brute_force(lib, queries, kw["k"], min_score=kw.get("min_score", 0.0), neutral_loss=True)
        want = [w if h else [] for w, h in zip(want, has)]
        assert_hits_equal(hits, want)
        assert list(hits.status[~has]) == ["no_precursor"] * int((~has).sum())
        n_hits.append(sum(len(w) for w in want))
    assert n_hits[1] > 100 and n_hits[2] > 5  # shared losses, some strong
    assert calls


def test_neutral_loss_on_the_command_line(hlib, tmp_path):
    import json

    import pyarrow.parquet as pq
    from click.testing import CliRunner

    import fastspec
    from fastspec.cli import main

    lib, queries = hlib
    qfile = tmp_path / "q.mgf"
    fastspec.io.write(queries, qfile)
    res = CliRunner().invoke(main, ["query", str(qfile), "--library", str(lib.path), "-o", str(tmp_path / "h.parquet"),
                                    "--mode", "neutral_loss", "-k", "3", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "h.parquet")
    assert set(table.column("query_index").to_pylist()) == set(range(len(queries)))
    params = json.loads(table.schema.metadata[b"fastspec"])
    assert params["mode"] == "neutral_loss" and params["metric"] == "entropy"
    res = CliRunner().invoke(main, ["query", str(qfile), "--library", str(lib.path), "-o", str(tmp_path / "x.tsv"),
                                    "--mode", "neutral_loss", "--metric", "cosine"], catch_exceptions=False)
    assert res.exit_code != 0 and "Traceback" not in res.output and "neutral_loss_cosine" in res.output


@settings(max_examples=200, deadline=None)
@given(spectra=st.lists(st.tuples(st.lists(st.tuples(st.floats(10.0, 500.0),
                                                    st.one_of(st.floats(0.0, 1e4), st.sampled_from([1e-30, 1e10]))),
                                          max_size=12),
                                  st.one_of(st.floats(0.0, 520.0), st.just(float("nan")))), min_size=1, max_size=6),
       powers=st.sampled_from([(0.0, 1.0), (1.0, 0.5)]))
def test_neutral_loss_cosine_bound_weights_vs_naive(spectra, powers):
    """The neutral-loss index's weights of neutral-loss cosine (:func:`below_precursor_weights`, then
    :func:`scaled_entries` over the loss entries) against the naive weights the score uses: never below
    them (bounds), and equal up to float32 rounding, except in spectra with weights 1e38 or more apart
    (intensities 1e-30 and 1e10), whose stored float32 weights lost their ratio: 1 there. Zero
    intensities (stored at the smallest normal float32 so that their pairs are counted) leave the
    others' weights exact."""
    from fastspec.kernels import fragment as fk

    peaks = [sorted(p) for p, _ in spectra]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in peaks])]).astype(np.int64)
    mz = np.array([m for p in peaks for m, _ in p], dtype=np.float64)
    inten = np.array([i for p in peaks for _, i in p], dtype=np.float32)
    pmz = np.array([x for _, x in spectra], dtype=np.float64)
    cos = fk.peak_weights(offsets, mz, inten, "cosine", *powers)
    w, scale = fk.below_precursor_weights(offsets[:-1], offsets[1:], mz, cos, pmz, intensity=inten)
    want = [x for i, p in enumerate(peaks)
            for x in ref.neutral_loss_weights([m for m, _ in p], [float(np.float32(v)) for _, v in p], pmz[i], *powers)]
    spec = np.repeat(np.arange(len(peaks), dtype=np.int32), np.diff(offsets))
    tiny = np.float32(np.finfo(np.float32).tiny)
    lossy = np.isinf(scale)[spec]  # spectra with a weight kept at the smallest normal float32
    # (a zero intensity's weight is stored there too, standing for 0: not a lost ratio)
    assert set(np.flatnonzero(np.isinf(scale))) == {spec[p] for p in range(len(mz))
                                                    if mz[p] < pmz[spec[p]] and 0 < cos[p] <= tiny and inten[p] != 0}
    zero = inten == 0  # their weights stay positive (their pairs are matched peaks), bounds of 0
    np.testing.assert_allclose(w[~lossy & ~zero], np.asarray(want)[~lossy & ~zero], rtol=1e-6, atol=1e-30)
    z = zero & ~lossy & (mz < pmz[spec]) & (scale[spec] > 0)
    assert (w[z] > 0).all() and (w[z] <= np.minimum(tiny * scale[spec][z] * (1 + 1e-6), 1.0)).all()
    assert (w[lossy] == np.where(mz[lossy] < pmz[spec[lossy]], 1.0, 0.0)).all()
    assert (w >= np.asarray(want) * (1 - 1e-6)).all()
    # the loss entries of every peak (precursor - m/z, any sign, as the index stores them), shuffled
    loss = (pmz[spec] - mz).astype(np.float32)
    order = np.random.default_rng(len(mz)).permutation(len(mz))
    order = order[np.isfinite(loss[order])]  # (the index holds no entries of spectra without a precursor)
    nw = fk.scaled_entries(loss[order], spec[order], cos[order], scale)
    below = mz[order] < pmz[spec[order]]
    np.testing.assert_array_equal(nw[below], w[order][below])  # as the peaks' own
    # a peak at its precursor (loss 0) may keep a weight: a looser bound, never a lower one
    assert (nw >= 0).all() and np.isfinite(nw).all()


def test_cosine_bound_weights_when_the_norm_overflows(tmp_path):
    """Weights past ~1e154 (float32-max intensities at intensity_power 4) overflowed the bound weights'
    L2 norm to inf, so every weight of the spectrum was 0 and open search never reached it, while the
    exact neutral-loss cosine, summing fewer peaks (below the precursor), is 1 (an audit's reproducer,
    reduced; cosine itself is NaN there, as in matchms). The norm is then taken in units of the largest
    weight."""
    from fastspec.kernels import fragment as fk
    from fastspec.library import Library
    from fastspec.spectra import Spectra

    big = float(np.finfo(np.float32).max) * 0.9
    mz = np.array([55.5, 99.99, 999.99, 1000.0])
    inten = np.array([big, big, big, 1e30], dtype=np.float32)  # three weights squared: past float64's max
    got = fk.peak_weights(np.array([0, 4]), mz, inten, "cosine", 0.0, 4.0)
    r = (inten.astype(np.float64) / inten.max()) ** 4
    np.testing.assert_allclose(got, r / np.sqrt((r * r).sum()), rtol=1e-6)
    rng = np.random.default_rng(0)
    others = [(np.sort(rng.uniform(40, 105, 3)), rng.uniform(1, 1e3, 3).astype(np.float32)) for _ in range(12)]
    lib_sp = Spectra.from_arrays([mz] + [m for m, _ in others], [inten] + [i for _, i in others], [110.0] * 13)
    lib = Library.build(lib_sp, tmp_path / "big.fastspec", preprocess=None, faiss=False)
    kw = dict(metric="neutral_loss_cosine", tolerance=0.02, intensity_power=4.0)
    want = similarity.score_matrix(lib_sp[:1], lib_sp, **kw)[0][0]
    hits = lib.search(lib_sp[:1], k=3, mode="open", **kw)
    assert hits.indices[0, 0] == 0 and abs(hits.scores[0, 0] - want[0]) < 1e-6 and want[0] > 0.99
    np.testing.assert_allclose(hits.scores[0], np.sort(want)[::-1][:3], atol=1e-6)
