"""Parity of fastspec.similarity with matchms 0.33 and ms_entropy on real MassBank spectrum pairs.

Pairs are drawn so that every code path is exercised on real data: same compound (inchikey14;
different adducts give precursor shifts, identical precursors the modified-cosine fallback), same
formula, precursor differences up to 200 Da (shifted matches in modified / neutral-loss cosine) and
random pairs. matchms has no ppm tolerance, so the cosine family at 10 ppm is checked against the
naive reference (tests/reference.py); ms_entropy supports ppm and is checked directly.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

import reference as ref
from fastspec.io import read
from fastspec.similarity import score_matrix, score_pairs

matchms_sim = pytest.importorskip("matchms.similarity")
ms_entropy = pytest.importorskip("ms_entropy")

N_PER_KIND = 2600  # x 4 kinds of pairs -> >= 10,000 pairs for the main setting
N_GRID = 3000  # pairs per grid point (matchms: ~35 us per pair once compiled)
N_PPM = 1000  # pairs per ppm grid point (pure-Python reference)
MAX_PEAKS_REF = 300  # keep the O(n*m) reference quick
TOL = 1e-6
COSINE_FAMILY = {"cosine": "CosineGreedy", "modified_cosine": "ModifiedCosineGreedy",
                 "neutral_loss_cosine": "NeutralLossesCosine"}
POWERS = [(mzp, ip) for mzp in (0.0, 1.0) for ip in (0.0, 0.5, 1.0)]


def _pairs_within_groups(keys: list, rows: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` random ordered pairs of distinct rows sharing a (non-empty) key."""
    groups: dict = {}
    for r in rows:
        k = keys[r]
        if k:
            groups.setdefault(k, []).append(r)
    multi = [np.array(g) for g in groups.values() if len(g) > 1]
    sizes = np.array([len(g) for g in multi], float)
    pick = rng.choice(len(multi), size=n, p=sizes / sizes.sum())
    out = np.empty((n, 2), np.int64)
    for t, g in enumerate(pick):
        out[t] = rng.choice(multi[g], size=2, replace=False)
    return out


@pytest.fixture(scope="module")
def data(massbank_parquet):
    sp = read(massbank_parquet)
    rng = np.random.default_rng(2026)
    rows = np.flatnonzero(np.isfinite(sp.precursor_mz) & (sp.n_peaks > 0))  # matchms needs precursors
    same_compound = _pairs_within_groups(sp.column("inchikey14"), rows, N_PER_KIND, rng)
    same_formula = _pairs_within_groups(sp.column("formula"), rows, N_PER_KIND, rng)
    # precursor differences up to 200 Da: partners among the neighbours in precursor order
    by_pmz = rows[np.argsort(sp.precursor_mz[rows], kind="stable")]
    pmz_sorted = sp.precursor_mz[by_pmz]
    i = rng.integers(0, by_pmz.size, N_PER_KIND)
    hi = np.searchsorted(pmz_sorted, pmz_sorted[i] + 200.0, side="right")
    j = np.minimum(i + 1 + (rng.random(N_PER_KIND) * (hi - i - 1)).astype(np.int64), by_pmz.size - 1)
    near = np.stack([by_pmz[i], by_pmz[j]], 1)
    near[::2] = near[::2, ::-1]  # both signs of the shift
    random_pairs = rng.choice(rows, size=(N_PER_KIND, 2))
    pairs = np.concatenate([same_compound, same_formula, near, random_pairs])
    pairs = pairs[rng.permutation(pairs.shape[0])]
    used = np.unique(pairs)
    sub = sp.take(used)
    sub = sub.with_metadata(pa.table({"id": pa.array([str(r) for r in used], pa.string())}))
    ms = sub.to_matchms()
    col = {int(r): t for t, r in enumerate(used)}
    ms_a = [ms[col[int(r)]] for r in pairs[:, 0]]
    ms_b = [ms[col[int(r)]] for r in pairs[:, 1]]
    return {"sp": sp, "pairs": pairs, "A": sp.take(pairs[:, 0]), "B": sp.take(pairs[:, 1]), "ms_a": ms_a,
            "ms_b": ms_b}


def _matchms(metric, tol, mz_power, intensity_power, ms_a, ms_b):
    sim = getattr(matchms_sim, COSINE_FAMILY[metric])(tolerance=tol, mz_power=mz_power,
                                                      intensity_power=intensity_power)
    out = [sim.pair(a, b) for a, b in zip(ms_a, ms_b)]
    return (np.array([float(o["score"]) for o in out]), np.array([int(o["matches"]) for o in out]))


def _check(name, got_s, got_m, want_s, want_m):
    diff = np.abs(got_s - want_s)
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    frac = ((got_m if want_m is None else want_m) > 0).mean()
    print(f"{name}: n={diff.size} max|diff|={worst:.3g} matched>0: {frac:.2f}")
    assert not np.isnan(got_s).any()
    assert np.array_equal(np.isnan(want_s), np.isnan(got_s))
    assert worst <= TOL, f"{name}: max |diff| {worst}"
    if want_m is not None:
        bad = np.flatnonzero(got_m != want_m)
        assert bad.size == 0, f"{name}: {bad.size} pairs with different match counts, first {bad[:5]}"


def test_pair_mix(data):
    """The drawn pairs really contain shifted precursors, identical precursors and >= 10,000 pairs."""
    pmz = data["sp"].precursor_mz
    d = pmz[data["pairs"][:, 0]] - pmz[data["pairs"][:, 1]]
    assert data["pairs"].shape[0] >= 10_000
    assert (np.abs(d) <= 0.1).sum() > 500  # modified cosine falls back to cosine
    assert ((np.abs(d) > 0.1) & (np.abs(d) <= 200)).sum() > 3000
    assert (d > 0).sum() > 1000 and (d < 0).sum() > 1000


@pytest.mark.parametrize("metric", list(COSINE_FAMILY))
def test_matchms_main(data, metric):
    """All pairs at the matchms defaults (0.1 Da, mz_power 0, intensity_power 1)."""
    want_s, want_m = _matchms(metric, 0.1, 0.0, 1.0, data["ms_a"], data["ms_b"])
    got_s, got_m = score_pairs(data["A"], data["B"], metric, 0.1)
    _check(f"{metric} 0.1 Da", got_s, got_m, want_s, want_m)
    assert got_s.dtype == np.float64 and got_m.dtype == np.int32
    if metric == "modified_cosine":  # shifted matches were exercised: some pairs beat plain cosine
        cos_s, _ = score_pairs(data["A"], data["B"], "cosine", 0.1)
        assert (got_s > cos_s + 1e-9).sum() > 500


def test_matchms_spectra_as_input(data):
    """Lists of matchms spectra go straight in, as to matchms' own ``matrix`` / pair calls: the same
    scores and counts as the Spectra they came from (a matchms user's first call)."""
    ms_a, ms_b = data["ms_a"][:200], data["ms_b"][:200]
    want = score_pairs(data["A"].take(np.arange(200)), data["B"].take(np.arange(200)), "modified_cosine", 0.1)
    got = score_pairs(list(ms_a), list(ms_b), "modified_cosine", 0.1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    sim = matchms_sim.ModifiedCosineGreedy(tolerance=0.1).pair(ms_a[0], ms_b[0])
    assert abs(score_pairs(ms_a[0], ms_b[0], "modified_cosine", 0.1)[0][0] - float(sim["score"])) < 1e-6
    m = score_matrix(list(ms_a[:20]), list(ms_b[:30]), "cosine", 0.1)
    assert m[0].shape == (20, 30)


@pytest.mark.parametrize("mz_power,intensity_power", POWERS)
@pytest.mark.parametrize("tol", [0.01, 0.1])
@pytest.mark.parametrize("metric", list(COSINE_FAMILY))
def test_matchms_grid(data, metric, tol, mz_power, intensity_power):
    sl = slice(0, N_GRID)
    A, B = data["A"][np.arange(N_GRID)], data["B"][np.arange(N_GRID)]
    want_s, want_m = _matchms(metric, tol, mz_power, intensity_power, data["ms_a"][sl], data["ms_b"][sl])
    got_s, got_m = score_pairs(A, B, metric, tol, mz_power, intensity_power)
    _check(f"{metric} {tol} Da mz^{mz_power} I^{intensity_power}", got_s, got_m, want_s, want_m)


@pytest.fixture(scope="module")
def small_pairs(data):
    """Pairs of spectra with at most MAX_PEAKS_REF peaks each (for the O(n*m) reference)."""
    n = data["sp"].n_peaks
    p = data["pairs"]
    keep = np.flatnonzero((n[p[:, 0]] <= MAX_PEAKS_REF) & (n[p[:, 1]] <= MAX_PEAKS_REF))[:N_PPM]
    sp = data["sp"]
    peaks = {int(r): (sp.mz[sp.offsets[r]:sp.offsets[r + 1]].tolist(),
                      sp.intensity[sp.offsets[r]:sp.offsets[r + 1]].astype(np.float64).tolist(),
                      float(sp.precursor_mz[r])) for r in np.unique(p[keep])}
    return p[keep], peaks


@pytest.mark.parametrize("mz_power,intensity_power", POWERS)
@pytest.mark.parametrize("metric", list(COSINE_FAMILY))
def test_reference_ppm(data, small_pairs, metric, mz_power, intensity_power):
    """10 ppm (no matchms equivalent): fastspec vs the naive reference."""
    pairs, peaks = small_pairs
    sp = data["sp"]
    got_s, got_m = score_pairs(sp.take(pairs[:, 0]), sp.take(pairs[:, 1]), metric, "10ppm", mz_power,
                               intensity_power)
    want = [ref.score(metric, *peaks[int(a)], *peaks[int(b)], 10.0, "ppm", mz_power, intensity_power)
            for a, b in pairs]
    want_s = np.array([w[0] for w in want])
    want_m = np.array([w[1] for w in want])
    _check(f"{metric} 10 ppm mz^{mz_power} I^{intensity_power} (reference)", got_s, got_m, want_s, want_m)
    assert (want_m > 0).mean() > 0.2


def _entropy_args(tol):
    if isinstance(tol, str):  # ppm
        return {"ms2_tolerance_in_da": -1, "ms2_tolerance_in_ppm": float(tol[:-3])}
    return {"ms2_tolerance_in_da": tol, "ms2_tolerance_in_ppm": -1}


def _ms_entropy(metric, tol, mz_power, intensity_power, A, B):
    fn = (ms_entropy.calculate_entropy_similarity if metric == "entropy"
          else ms_entropy.calculate_unweighted_entropy_similarity)

    def peaks(sp, i):
        lo, hi = sp.offsets[i], sp.offsets[i + 1]
        mz = sp.mz[lo:hi]
        # fastspec transforms the intensities (float64) before handing float32 peaks to the cleaning
        inten = np.power(mz, mz_power) * np.power(sp.intensity[lo:hi].astype(np.float64), intensity_power)
        return np.ascontiguousarray(np.stack([mz, inten], 1), dtype=np.float32)

    kw = _entropy_args(tol)
    return np.array([fn(peaks(A, i), peaks(B, i), **kw) for i in range(len(A))], np.float64)


@pytest.mark.parametrize("metric", ["entropy", "unweighted_entropy"])
def test_ms_entropy_main(data, metric):
    """All pairs at ms_entropy's default tolerance (0.02 Da)."""
    want = _ms_entropy(metric, 0.02, 0.0, 1.0, data["A"], data["B"])
    got, matches = score_pairs(data["A"], data["B"], metric, 0.02)
    _check(f"{metric} 0.02 Da", got, matches, want, None)
    assert ((matches > 0) == (got > 0)).mean() > 0.99


@pytest.mark.parametrize("mz_power,intensity_power", POWERS)
@pytest.mark.parametrize("tol", [0.01, 0.1, "10ppm"])
@pytest.mark.parametrize("metric", ["entropy", "unweighted_entropy"])
def test_ms_entropy_grid(data, metric, tol, mz_power, intensity_power):
    A, B = data["A"][np.arange(N_GRID)], data["B"][np.arange(N_GRID)]
    want = _ms_entropy(metric, tol, mz_power, intensity_power, A, B)
    got, matches = score_pairs(A, B, metric, tol, mz_power, intensity_power)
    _check(f"{metric} {tol} mz^{mz_power} I^{intensity_power}", got, matches, want, None)


def test_reference_is_matchms(data):
    """The naive reference itself agrees with matchms (so the ppm checks above mean something)."""
    sp = data["sp"]
    pairs = data["pairs"][:300]
    for metric in COSINE_FAMILY:
        want_s, want_m = _matchms(metric, 0.1, 0.0, 1.0, data["ms_a"][:300], data["ms_b"][:300])
        for t, (a, b) in enumerate(pairs):
            pa_ = (sp[int(a)].mz.tolist(), sp[int(a)].intensity.astype(float).tolist(), float(sp.precursor_mz[a]))
            pb_ = (sp[int(b)].mz.tolist(), sp[int(b)].intensity.astype(float).tolist(), float(sp.precursor_mz[b]))
            s, m = ref.score(metric, *pa_, *pb_, 0.1)
            assert math.isclose(s, want_s[t], abs_tol=TOL) and m == want_m[t], (metric, t)
