"""The pruned bound kernel of open / analog / hybrid search (:func:`fastspec.kernels.fragment.search_bounds`)
against exact scores and against a naive bound computed independently, on real MassBank spectra.

Contract tested (from its docstring and the module's):

* **Upper bounds.** Every returned bound is at least the exact score of that spectrum (the metric's
  exact kernel, as library search scores candidates).
* **Nothing needed is left out.** The kernel prunes with ``theta``: the caller's threshold raised to
  lower bounds of the k-th best exact score (its query's precursor window, checkpoints) and to
  ``min_score``; it returns the ``m`` spectra of best bound among those whose bound reaches that
  threshold and reports the best bound it left out (``next_bound``, -1 when none). So a spectrum it does
  not return, with enough matched peaks (``min_pairs``) and at least ``min_score``, scores at most
  ``max(next_bound, theta_in, T_k)`` exactly, ``T_k`` the k-th best exact score of such spectra. Hence the
  caller's rule (score the candidates exactly; done once their k-th score beats ``next_bound``) gives the
  brute-force top-k.
* **The bound itself**, without pruning (``theta`` -inf, ``k`` above the library size, ``m`` the library
  size): after the float32 slack ``bound = raw * (1 + BOUND_RTOL) + BOUND_ATOL``, ``raw`` is, per library
  spectrum, the sum over query peaks of ``q * w`` over every library peak within the peak's window
  (cosine family; analog adds every library neutral loss within the window of the query's neutral loss),
  or of ``g(q, l)`` with ``l`` the largest library weight in those windows (entropy: ``g(q, l) = (f(q + l)
  - f(q) - f(l)) / 2``, ``f(x) = x log2 x``). Windows are documented as a superset of every Da / ppm
  convention widened by a float32 slack, so the naive reference brackets ``raw`` between sums over the
  exact windows and over windows widened by 1e-6 of the m/z involved, and asserts equality (to float32
  rounding) wherever the two agree (most spectra). Spectra come by decreasing bound, equal bounds lowest
  scan id first; with ``min_pairs`` only spectra with that many (query peak, library entry) pairs in the
  windows.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fragment_helpers import naive_cosine_weights, naive_entropy_weights
from test_library import massbank_subset

from fastspec import similarity
from fastspec.kernels import fragment as fk
from fastspec.library import Library, apply_pipeline
from fastspec.spectra import Spectra

# name -> (metric scored exactly, weight kind, bound kind, neutral losses, tol_da, tol_ppm)
CONFIGS = {
    "cosine-da": ("cosine", "cosine", fk.KIND_PRODUCT, False, 0.02, 0.0),
    "cosine-ppm": ("cosine", "cosine", fk.KIND_PRODUCT, False, 0.0, 20.0),
    "entropy-da": ("entropy", "entropy", fk.KIND_ENTROPY, False, 0.02, 0.0),
    "entropy-ppm": ("entropy", "entropy", fk.KIND_ENTROPY, False, 0.0, 20.0),
    "unweighted_entropy-da": ("unweighted_entropy", "unweighted_entropy", fk.KIND_ENTROPY, False, 0.01, 0.0),
    "analog-da": ("modified_cosine", "cosine", fk.KIND_PRODUCT, True, 0.02, 0.0),
    "analog-ppm": ("modified_cosine", "cosine", fk.KIND_PRODUCT, True, 0.0, 20.0),
    "hybrid-da": ("hybrid", "entropy", fk.KIND_ENTROPY, True, 0.02, 0.0),
}
N_COPIES = 10  #: library spectra stored twice: equal bounds


@pytest.fixture(scope="module")
def setup(massbank_parquet, tmp_path_factory):
    """1,210 MassBank spectra (10 of them twice) and 30 queries: 18 other MassBank spectra, 4 library
    spectra that have a copy, 6 one-peak queries (base peaks of real ones), 1 two-peak query and 1 without a
    precursor m/z."""
    lib_sp, q_sp = massbank_subset(massbank_parquet, n_lib=1200, n_query=24, seed=13)
    copies = np.arange(0, 4 * N_COPIES, 4)
    lib_sp = Spectra.concat([lib_sp, lib_sp.take(copies)])
    lib = Library.build(lib_sp, tmp_path_factory.mktemp("sb") / "lib.fastspec", faiss=False, progress=False)
    real = apply_pipeline(lib.pipeline, q_sp)
    stored = lib.spectra()
    # the copies' rows (preprocessing may drop spectra, which shifts rows): equal stored peaks
    seen: dict = {}
    for r in range(len(stored)):
        seen.setdefault((stored[r].mz.tobytes(), stored[r].intensity.tobytes()), []).append(r)
    twins = sorted(tuple(v) for v in seen.values() if len(v) == 2)
    assert len(twins) >= 4
    mzs, its, pmz = [], [], []
    for i in range(18):
        mzs.append(real[i].mz)
        its.append(real[i].intensity)
        pmz.append(real.precursor_mz[i])
    for r, _ in twins[:4]:
        mzs.append(stored[r].mz)
        its.append(stored[r].intensity)
        pmz.append(stored.precursor_mz[r])
    for i in range(18, 24):  # one peak: the base peak
        j = int(np.argmax(real[i].intensity))
        mzs.append(real[i].mz[j:j + 1])
        its.append(real[i].intensity[j:j + 1])
        pmz.append(real.precursor_mz[i])
    top2 = np.sort(np.argsort(real[0].intensity)[-2:])
    mzs.append(real[0].mz[top2])
    its.append(real[0].intensity[top2])
    pmz.append(real.precursor_mz[0])
    mzs.append(real[1].mz)
    its.append(real[1].intensity)
    pmz.append(np.nan)
    q = Spectra.from_arrays(mzs, its, precursor_mz=pmz)
    assert q.offsets[-1] == sum(len(m) for m in mzs)
    return lib, q, twins[:4]


def _nl_base(lib, q) -> float:
    return float(max(lib.manifest["counts"]["max_mz"], q.mz.max()))


def _run(lib, q, name, *, k, m, theta=None, min_pairs=1, min_score=0.0, threads=1, ws=None, rows=None):
    metric, wname, kind, use_nl, tol_da, tol_ppm = CONFIGS[name]
    index = lib.peak_index(wname, 0.0, 1.0, losses=use_nl)
    qw = fk.peak_weights(q.offsets, q.mz, q.intensity, wname)
    n_groups = np.asarray(index.frag_groups).shape[0] - 1
    rows = np.arange(len(q)) if rows is None else rows
    ws = ws or fk.BoundWorkspace(len(lib), max(1, threads))
    out = fk.search_bounds(rows, q.offsets, q.mz, qw, q.precursor_mz, index, kind=kind, use_nl=use_nl, tol_da=tol_da,
                           tol_ppm=tol_ppm, k=k, m=m, workspace=ws, theta=theta,
                           q_groups=np.ones((len(q), n_groups), bool), min_pairs=min_pairs, min_score=min_score,
                           nl_base=_nl_base(lib, q), threads=threads)
    # the workspace is left as the next call needs it
    assert not ws.work.any() and not ws.live.any() and not ws.count.any()
    return out


_EXACT: dict = {}


def exact_scores(lib, q, name, cache=True):
    """Exact scores and matched peaks (queries x library rows), as library search scores candidates:
    cosine family on the stored peaks; entropy on the stored peaks (``clean=False``) in
    FlashEntropySearch's windows (Da), hybrid as its hybrid search (queries as ``a``)."""
    key = (id(lib), id(q), name)
    if cache and key in _EXACT:
        return _EXACT[key]
    metric, _, _, _, tol_da, tol_ppm = CONFIGS[name]
    base = {"hybrid": "entropy"}.get(metric, metric)
    kw = {"tolerance": f"{tol_ppm}ppm" if tol_ppm > 0 else tol_da}
    if base in ("entropy", "unweighted_entropy"):
        kw.update(clean=False, flash=tol_ppm <= 0, hybrid=metric == "hybrid")
    s, mm = similarity.score_matrix(similarity.prepare(q, base, **kw), similarity.prepare(lib.spectra(), base, **kw))
    out = (np.asarray(s, dtype=np.float64), np.asarray(mm))
    if cache:
        _EXACT[key] = out
    return out


def _scan_id_of_row(lib, name) -> np.ndarray:
    index = lib.peak_index(CONFIGS[name][1], 0.0, 1.0, losses=CONFIGS[name][3])
    n = len(lib)
    if index.scan_rows is None:
        return np.arange(n)
    sid = np.empty(n, dtype=np.int64)
    sid[np.asarray(index.scan_rows)] = np.arange(n)
    return sid


def _assert_ordered(ids, bounds, sid):
    """Valid ids first, distinct, by decreasing bound; equal bounds: lowest scan id first."""
    for r in range(ids.shape[0]):
        ok = ids[r] >= 0
        n = int(ok.sum())
        assert ok[:n].all() and not ok[n:].any() and (bounds[r, n:] == -1).all()
        got, b = ids[r, :n], bounds[r, :n]
        assert np.unique(got).shape[0] == n
        for j in range(n - 1):
            assert b[j] > b[j + 1] or (b[j] == b[j + 1] and sid[got[j]] < sid[got[j + 1]]), (r, j)


# ---------------------------------------------------------------------------------- (a) + (b): exact scores
CASES = [  # k, m, theta ("kth": 0.9 x the true k-th exact score, "kth1": it less the float32 slack), min_pairs,
    # min_score
    (5, 8, None, 1, 0.0),
    (5, 8, "kth", 1, 0.0),
    (3, 4, "kth1", 2, 0.0),
    (3, 4, None, 3, 0.0),
    (1, 1, None, 1, 0.0),
    (10, 12, None, 1, 0.3),
]


def _eligible(scores, matches, min_pairs, min_score):
    return (matches >= max(1, min_pairs)) & (scores >= min_score)


def _kth(scores, ok, k):
    v = np.sort(scores[ok])[::-1]
    return v[k - 1] if v.shape[0] >= k else -np.inf


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k%d-m%d-%s-p%d-s%g" % (c[0], c[1], c[2], c[3], c[4]))
def test_search_bounds_vs_exact_scores(setup, name, case):
    lib, q, _ = setup
    k, m, theta_mode, min_pairs, min_score = case
    ex, mt = exact_scores(lib, q, name)
    theta = None
    if theta_mode is not None:
        kth = np.array([_kth(ex[r], _eligible(ex[r], mt[r], min_pairs, min_score), k) for r in range(len(q))])
        theta = 0.9 * np.maximum(kth, 0.0) if theta_mode == "kth" else kth * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL
    ids, bounds, nxt, st = _run(lib, q, name, k=k, m=m, theta=theta, min_pairs=min_pairs, min_score=min_score)
    if theta is not None:  # the threshold pruned: scans stopped early or spectra were ruled out
        assert ((st[:, 1] < np.diff(q.offsets)) | (st[:, 4] > 0)).any()
    ids2, bounds2, nxt2, _ = _run(lib, q, name, k=k, m=m, theta=theta, min_pairs=min_pairs, min_score=min_score,
                                  threads=2)
    np.testing.assert_array_equal(ids, ids2)  # query blocks on two threads: the same answer
    np.testing.assert_array_equal(bounds, bounds2)
    np.testing.assert_array_equal(nxt, nxt2)
    _assert_ordered(ids, bounds, _scan_id_of_row(lib, name))
    th_in = np.full(len(q), -np.inf) if theta is None else theta
    n_solved = 0
    for r in range(len(q)):
        ok = ids[r] >= 0
        got = ids[r][ok]
        # (a) upper bounds
        assert (bounds[r][ok] >= ex[r][got] - 1e-6).all(), (r, bounds[r][ok], ex[r][got])
        # (b) what is left out scores no more than the best bound left out, or is below the threshold
        elig = _eligible(ex[r], mt[r], min_pairs, min_score)
        t_k = _kth(ex[r], elig, k)
        out = elig.copy()
        out[got] = False
        lim = max(nxt[r], th_in[r], t_k)
        assert (ex[r][out] <= lim + 1e-6).all(), (r, ex[r][out].max(), nxt[r], th_in[r], t_k)
        # the caller's stopping rule (done when nothing is left out or the k-th exact score of the
        # candidates beats the best bound left out) then gives the brute-force top-k scores
        cs = np.sort(ex[r][got[elig[got]]])[::-1][:k]
        if nxt[r] < 0 or (cs.shape[0] == k and cs[-1] > nxt[r]):
            np.testing.assert_allclose(cs, np.sort(ex[r][elig])[::-1][:k], atol=1e-12)
            n_solved += 1
    assert (ids[:, 0] >= 0).sum() >= 10 and n_solved >= 3  # candidates found, queries solved by the first call


def _check_exact_contract(ids, bounds, nxt, ex, mt, k, theta, min_pairs):
    """(a), (b) and the caller's stopping rule for every query (see the module docstring)."""
    for r in range(ids.shape[0]):
        got = ids[r][ids[r] >= 0]
        assert (bounds[r][ids[r] >= 0] >= ex[r][got] - 1e-6).all(), (r, bounds[r], ex[r])
        elig = _eligible(ex[r], mt[r], min_pairs, 0.0)
        out = elig.copy()
        out[got] = False
        lim = max(nxt[r], theta[r], _kth(ex[r], elig, k))
        assert (ex[r][out] <= lim + 1e-6).all(), (r, ex[r], ids[r], nxt[r])
        cs = np.sort(ex[r][got[elig[got]]])[::-1][:k]
        if nxt[r] < 0 or (cs.shape[0] == k and cs[-1] > nxt[r]):
            np.testing.assert_allclose(cs, np.sort(ex[r][elig])[::-1][:k], atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 3]),
       m=st.sampled_from([1, 2, 6]), min_pairs=st.sampled_from([1, 2]), given_theta=st.booleans())
def test_search_bounds_window_edges(tmp_path_factory, name, seed, k, m, min_pairs, given_theta):
    """Generated clean spectra (one stored twice), queries made of their peaks moved to the edges of the
    tolerance (just inside, on, just outside; neutral losses kept with a moved precursor), one-peak
    queries: (a), (b) and the caller's rule hold."""
    metric, wname, kind, use_nl, tol_da, tol_ppm = CONFIGS[name]
    rng = np.random.default_rng(seed)
    lib_mz, lib_int = [], []
    for _ in range(14):
        n = int(rng.integers(1, 10))
        lib_mz.append(60.0 + np.cumsum(rng.uniform(0.3, 150.0, n)))
        lib_int.append(rng.choice([1.0, 5.0, 100.0, 1e4], n) * rng.uniform(0.5, 1.0, n))
    lib_mz.append(lib_mz[0].copy())
    lib_int.append(lib_int[0].copy())
    pmz = list(rng.uniform(1500.0, 1700.0, len(lib_mz)))
    pos = {"ion_mode": ["positive"] * len(lib_mz)}
    lib = Library.build(Spectra.from_arrays(lib_mz, lib_int, precursor_mz=pmz, metadata=pos),
                        tmp_path_factory.mktemp("edge") / "l.fastspec", preprocess=None, faiss=False, progress=False)
    q_mz, q_int, q_pmz = [], [], []
    for i in rng.choice(len(lib_mz), 5, replace=False):
        mz = lib_mz[i]
        shift = float(rng.choice([0.0, 0.0, 14.01565, -30.0106])) if use_nl else 0.0
        moved = rng.random(mz.shape[0]) < 0.5  # these peaks keep their loss (shifted with the precursor)
        h = (tol_da if tol_ppm <= 0 else tol_ppm * 1e-6 * mz) * rng.choice([0.0, 1 - 1e-6, 1.0, 1 + 1e-6, 0.5, 1.3],
                                                                            mz.shape[0])
        q_mz.append(np.sort(mz + h * rng.choice([-1.0, 1.0], mz.shape[0]) + shift * moved))
        q_int.append(lib_int[i] * rng.uniform(0.3, 3.0, mz.shape[0]))
        q_pmz.append(pmz[i] + shift)
    q_mz.append(q_mz[0][:1])
    q_int.append(q_int[0][:1])
    q_pmz.append(q_pmz[0])
    q = Spectra.from_arrays(q_mz, q_int, precursor_mz=q_pmz, metadata={"ion_mode": ["positive"] * len(q_mz)})
    ex, mt = exact_scores(lib, q, name, cache=False)
    theta = np.full(len(q), -np.inf)
    if given_theta:
        theta = np.array([_kth(ex[r], _eligible(ex[r], mt[r], min_pairs, 0.0), k) for r in range(len(q))])
        theta = theta * (1 - fk.BOUND_RTOL) - fk.BOUND_ATOL
    ids, bounds, nxt, _ = _run(lib, q, name, k=k, m=m, theta=theta, min_pairs=min_pairs)
    _assert_ordered(ids, bounds, _scan_id_of_row(lib, name))
    _check_exact_contract(ids, bounds, nxt, ex, mt, k, theta, min_pairs)


def test_ties_at_the_cut(setup):
    """A library spectrum stored twice as the query, one candidate: the copy with the lower scan id, and
    the other copy's equal bound is the best one left out."""
    lib, q, twins = setup
    for name in ("cosine-da", "entropy-da", "analog-da"):
        sid = _scan_id_of_row(lib, name)
        rows = np.arange(18, 22)  # the library spectra with a copy
        ids, bounds, nxt, _ = _run(lib, q, name, k=1, m=1, rows=rows)
        for t, pair in enumerate(twins):
            want = min(pair, key=lambda c: sid[c])
            assert ids[t, 0] == want, (name, ids[t], pair)
            assert nxt[t] == bounds[t, 0] and bounds[t, 0] >= 1.0 - 1e-6


# ---------------------------------------------------------------------------------- (c) the bound, naive
def _g(a: float, b: float) -> float:
    f = lambda x: x * math.log2(x) if x > 0 else 0.0  # noqa: E731
    return 0.5 * (f(a + b) - f(a) - f(b))


def _lib_arrays(lib, wname):
    """Stored library peaks (rows in library order) with naive weights of kind ``wname``."""
    sp = lib.spectra()
    off, mz, it = np.asarray(sp.offsets), np.asarray(sp.mz, dtype=np.float64), np.asarray(sp.intensity)
    w = []
    for i in range(len(sp)):
        a, b = int(off[i]), int(off[i + 1])
        m_, i_ = [float(v) for v in mz[a:b]], [float(v) for v in it[a:b]]
        w += (naive_cosine_weights(m_, i_, 0.0, 1.0) if wname == "cosine"
              else naive_entropy_weights(i_, wname == "entropy"))
    row = np.repeat(np.arange(len(sp)), np.diff(off))
    return mz, np.array(w), row, np.asarray(sp.precursor_mz, dtype=np.float64)


def naive_bound(lib_arrays, q_mz, q_w, q_pmz, kind, use_nl, tol_da, tol_ppm, nl_base, loose):
    """One query's bound of every library row (dict row -> (raw bound, pairs in the windows)).

    ``loose`` False: the exact windows of the widest convention (Da; ppm of the larger m/z; loss windows
    in ppm of the largest m/z ``nl_base``), inside the kernel's. True: those windows (ppm: library side,
    ``x / (1 - p)``) widened by a float32 slack of 1e-6 relative to every m/z involved (precursors too:
    hybrid losses are differences of float32 values) plus 10 uDa, around the kernel's."""
    mz, w, row, pmz = lib_arrays
    p = tol_ppm * 1e-6
    loss = pmz[row] - mz
    p_max = float(np.nanmax(np.abs(pmz)))
    sums: dict[int, float] = {}
    pairs: dict[int, int] = {}
    best: dict[int, list] = {}
    for j, (x, qv) in enumerate(zip(q_mz, q_w)):
        if not qv > 0:
            continue
        if tol_ppm > 0:
            hit = np.abs(mz - x) <= (p * x / (1 - p) + 1e-6 * x + 1e-5 if loose else p * np.maximum(mz, x))
        else:
            hit = np.abs(mz - x) <= tol_da + (1e-6 * x + 1e-5 if loose else 0.0)
        found = [int(e) for e in np.flatnonzero(hit)]
        if use_nl and math.isfinite(q_pmz):
            y = q_pmz - x
            hn = tol_da if tol_ppm <= 0 else p * max(nl_base, x) / (1 - p if loose else 1.0)
            if loose:
                hn += 1e-6 * (abs(y) + x + abs(q_pmz) + 2 * p_max) + 1e-5
            with np.errstate(invalid="ignore"):
                found += [int(e) for e in np.flatnonzero(np.abs(loss - y) <= hn)]
        for e in found:
            c = int(row[e])
            pairs[c] = pairs.get(c, 0) + 1
            if kind == fk.KIND_PRODUCT:
                sums[c] = sums.get(c, 0.0) + qv * float(w[e])
            else:
                best.setdefault(c, [0.0] * len(q_mz))
                best[c][j] = max(best[c][j], float(w[e]))
    if kind == fk.KIND_ENTROPY:
        sums = {c: sum(_g(float(qv), lv) for qv, lv in zip(q_w, b) if lv > 0 and qv > 0) for c, b in best.items()}
    return {c: (sums[c], pairs[c]) for c in pairs}


@pytest.mark.parametrize("name,min_pairs", [("cosine-da", 1), ("cosine-ppm", 1), ("entropy-da", 1), ("entropy-ppm", 1),
                                            ("analog-da", 1), ("hybrid-da", 1), ("cosine-da", 3), ("entropy-da", 2)])
def test_search_bounds_vs_naive_bound(setup, name, min_pairs):
    lib, q, _ = setup
    metric, wname, kind, use_nl, tol_da, tol_ppm = CONFIGS[name]
    n = len(lib)
    ids, bounds, nxt, st = _run(lib, q, name, k=n + 1, m=n, min_pairs=min_pairs)
    assert (nxt == -1).all() and (st[:, 2] == np.diff(q.offsets)).all()  # nothing left out, every peak scanned
    sid = _scan_id_of_row(lib, name)
    _assert_ordered(ids, bounds, sid)
    arrays = _lib_arrays(lib, wname)
    nl_base = _nl_base(lib, q)
    n_equal = n_reached = n_ties = 0
    for r in range(len(q)):
        a, b = int(q.offsets[r]), int(q.offsets[r + 1])
        q_mz = [float(v) for v in q.mz[a:b]]
        raw_i = [float(v) for v in q.intensity[a:b]]
        q_w = naive_cosine_weights(q_mz, raw_i, 0.0, 1.0) if wname == "cosine" else \
            naive_entropy_weights(raw_i, wname == "entropy")
        args = (arrays, q_mz, q_w, float(q.precursor_mz[r]), kind, use_nl, tol_da, tol_ppm, nl_base)
        tight, loose = naive_bound(*args, False), naive_bound(*args, True)
        got = {int(c): (float(v) - fk.BOUND_ATOL) / (1 + fk.BOUND_RTOL) for c, v in zip(ids[r], bounds[r]) if c >= 0}
        for c in set(tight) | set(loose) | set(got):
            t_sum, t_n = tight.get(c, (0.0, 0))
            l_sum, l_n = loose.get(c, (0.0, 0))
            assert t_n <= l_n
            if t_n >= min_pairs:  # in the exact windows: never left out
                assert c in got, (r, c, tight.get(c))
            if c in got:
                assert l_n >= min_pairs, (r, c, got[c], loose.get(c))
                v = got[c]
                n_reached += 1
                if t_n == l_n:  # no library peak near a window's edge: the very bound
                    assert v == pytest.approx(t_sum, rel=3e-6, abs=2e-7), (r, c, v, t_sum)
                    n_equal += 1
                else:
                    assert t_sum * (1 - 3e-6) - 2e-7 <= v <= l_sum * (1 + 3e-6) + 2e-7, (r, c, v, t_sum, l_sum)
        b_r = bounds[r][ids[r] >= 0]
        n_ties += int((b_r[1:] == b_r[:-1]).sum())
    assert n_reached > 20 * len(q) and n_equal >= 0.85 * n_reached, (n_equal, n_reached)
    assert n_ties >= 4  # the library copies of the four copy queries (at least) tie with their originals
