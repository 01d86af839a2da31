"""Fair evaluation of the nearest-neighbour (NN) baseline on a labelled library.

:func:`evaluate` predicts each test spectrum's molecule as the molecule of its most similar training
spectrum inside the same bucket (same canonical formula by default; always the same polarity) and
scores the prediction by the Tanimoto similarity of Morgan fingerprints against the true molecule.
It reports the metrics over the scored spectra *and* over the whole test set, so the coverage effect
(test spectra without any same-formula training spectrum) is visible by construction.

Report keys (:data:`REPORT_KEYS`, stable):

``n_test``
    Test spectra evaluated (after dropping those without a molecule identity or parsable structure,
    counted in ``excluded``).
``n_scored``
    Test spectra that received a prediction (``zero`` policy: all of them).
``coverage``
    Share of test spectra with at least one training spectrum in their bucket.
``mean_tanimoto``
    Mean Tanimoto over the ``n_scored`` spectra.
``mean_tanimoto_all``
    Sum of Tanimoto over the scored spectra divided by ``n_test`` (unscored count as 0).
``exact_match_rate`` / ``exact_match_rate_all``
    Share of predictions whose InChIKey first block equals the truth; denominator ``n_scored`` /
    ``n_test`` respectively.
``hit_at_k`` / ``hit_at_k_all``
    {k: share} for k in 1, 5, 10: the true molecule is among the k best distinct training molecules
    (each molecule ranked by its best-scoring spectrum among the ``search_k`` neighbours, whatever
    ``vote`` is: with ``vote > 1`` the prediction is the voted molecule, so hit@1 can differ from
    ``exact_match_rate``); denominator ``n_scored`` / ``n_test``.
``oracle_tanimoto`` / ``oracle_tanimoto_all``
    Best Tanimoto achievable by copying any training molecule in the test spectrum's bucket (with
    ``no_neighbour="fallback"``, for a spectrum without one: any training molecule of its polarity, what
    the fallback search can reach); mean over the test spectra with such molecules / over ``n_test``
    (none = 0).
``leakage``
    Share of distinct test molecules that also occur in training (with ``queries``: in the library);
    ``leakage_spectra`` the same per test spectrum.
``groups``
    {field: {value: metrics}} for instrument_type, adduct and ce_bin (n_test, n_scored, coverage,
    mean_tanimoto, mean_tanimoto_all, exact_match_rate, exact_match_rate_all).
``ci``
    95% bootstrap intervals {metric: [low, high]}, resampling test *molecules* (clusters of spectra),
    seeded.
``config``, ``split_profile``
    The full configuration and the split profile (:func:`fastspec.splits.profile_between`) of the spectra
    evaluated (training spectra with a molecule identity and the ``n_test`` test spectra, scored or not;
    ``n_excluded``: the split's own exclusions).
``labels``
    How the labels were read, per side (``library``; ``queries`` with an external test set), over the
    spectra read before the ion-mode filter: spectra without a molecule key, molecules keyed from the
    SMILES, formulas missing or derived from the SMILES / InChI, normalized (NCE %) collision energies
    (:attr:`fastspec.baseline.LabData.counts`).
``n_fallback``, ``n_top1_tied``, ``n_zero_score``, ``excluded``, ``score_hist``, ``examples``, ``timing``
    Predictions from the fallback search; scored test spectra whose best score a spectrum of another molecule
    shares among their neighbours (the prediction is then the lowest library row of the tied, so the
    library's row order decides it; None with ``vote`` above 1, where summed votes decide); scored test
    spectra predicted from a neighbour scoring 0 (``predicted``; no peak matched: the same-formula bucket,
    or the whole training side under fallback, and its row order chose the molecule) and how many of those
    were exact (``exact``); exclusion counts (test / train spectra without a usable molecule,
    and the library's and queries' records the reader rejected); top-1 score histograms for same vs
    different molecule; the worst confusions (with peaks, for mirror plots); seconds per phase.

Invalid structures: test spectra whose true structure has no identity or cannot be parsed are excluded
(counted); a training spectrum with an unparsable structure can still be predicted and then scores
Tanimoto 0 (1.0 only if it is the very same molecule key). Fingerprints are per molecule (InChIKey-14),
taken from the first of its records whose structure parses, so ``*_invalid_structure`` counts the spectra
of molecules none of whose records parses, not every spectrum with an unparsable SMILES.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fastspec.baseline import (
    PRESETS,
    LabData,
    NNResult,
    SearchConfig,
    bucket_keys,
    factorize,
    nn_search,
    predict_molecules,
)
from fastspec._atomic import write_atomically, write_text_atomically
from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra

REPORT_KEYS = (
    "n_test",
    "n_scored",
    "coverage",
    "mean_tanimoto",
    "mean_tanimoto_all",
    "exact_match_rate",
    "exact_match_rate_all",
    "hit_at_k",
    "hit_at_k_all",
    "oracle_tanimoto",
    "oracle_tanimoto_all",
    "leakage",
    "leakage_spectra",
    "n_fallback",
    "n_top1_tied",
    "n_zero_score",
    "excluded",
    "labels",
    "groups",
    "ci",
    "score_hist",
    "examples",
    "config",
    "split_profile",
    "timing",
)
GROUP_FIELDS = ("instrument_type", "adduct", "ce_bin")
GROUP_METRICS = ("n_test", "n_scored", "coverage", "mean_tanimoto", "mean_tanimoto_all", "exact_match_rate", "exact_match_rate_all")
CI_METRICS = ("coverage", "mean_tanimoto", "mean_tanimoto_all", "exact_match_rate", "exact_match_rate_all", "hit_at_1")
HIT_KS = (1, 5, 10)


def _check_hit_ks(hit_ks) -> list[int]:
    """The ranks of ``hit_at_k`` as ints, each 1 or more (hit@0 is always 0: a mistake, not a metric)."""
    try:
        ks = list(hit_ks)
    except TypeError:
        raise ParameterError(f"hit_ks must be a sequence of integers >= 1, got {hit_ks!r}") from None
    if not ks:
        raise ParameterError(f"hit_ks must be a non-empty sequence of integers >= 1, got {hit_ks!r}")
    from fastspec.search import _count

    return [_count(k, "hit_ks", 1) for k in ks]


def _draws(split) -> bool:
    """Whether a split spec draws its test set (and so uses ``test_fraction``)."""
    from fastspec.splits import check_split_spec

    return isinstance(split, str) and check_split_spec(split) in ("random", "inchikey", "formula", "scaffold", "l2s")


def _plain(d: dict) -> dict:
    """A JSON-ready copy of a parameter dict (numpy scalars as numbers, other objects as text)."""
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


def _versions() -> dict:
    """Versions of what an evaluation's numbers depend on."""
    import importlib.metadata as md

    from fastspec._version import __version__

    out = {"fastspec": __version__}
    for name, dist in (("numpy", "numpy"), ("numba", "numba"), ("pyarrow", "pyarrow"), ("rdkit", "rdkit")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# ====================================================================== configuration
def search_config(preset: str | None = None, base: SearchConfig | None = None, **overrides) -> SearchConfig:
    """A validated :class:`SearchConfig`: ``preset`` (or ``base``, or the defaults) with overrides.

    ``None`` overrides are ignored, so CLI options that were not given keep the preset value.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ParameterError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        cfg = PRESETS[preset]
    else:
        cfg = base or SearchConfig()
    kw = {k: v for k, v in overrides.items() if v is not None}
    if kw:
        unknown = set(kw) - set(SearchConfig.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"unknown search option(s): {', '.join(sorted(unknown))}")
        if preset is not None and kw.get("metric", cfg.metric) != cfg.metric:
            # the preset's binning options belong to its metric; another metric keeps the rest of the preset,
            # but not its name (a modified-cosine run is no khoo2026 run)
            cfg = cfg.replace(metric_params=(), preset=None)
            kw.setdefault("tolerance", SearchConfig().tolerance)
        elif "tolerance" in kw and cfg.metric == "binned_cosine" and "preset" in dict(cfg.metric_params):
            # an explicit tolerance is the bin width, over the preset's (it would be recorded, yet unused)
            from fastspec.tolerance import parse_tolerance

            tol = parse_tolerance(kw["tolerance"], "tolerance")
            if tol.unit != "da" or not tol.value > 0:
                raise ParameterError("binned_cosine's tolerance is its bin width: a positive Da value")
            kw["metric_params"] = tuple(x for x in cfg.metric_params if x[0] != "bin_width") + (("bin_width", tol.value),)
        cfg = cfg.replace(**kw)
    return cfg.validate()


def _fingerprinted(lab: LabData, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` have a valid fingerprint (a library without any structure has an empty table)."""
    fr = lab.fp_row[rows]
    valid = lab.fps.valid
    if not valid.size:
        return np.zeros(rows.shape[0], dtype=bool)
    return (fr >= 0) & valid[np.maximum(fr, 0)]


def load_spectra(obj: "str | Path | Spectra | LabData", rejected: dict | None = None) -> Spectra | LabData:
    """Read a library given as a path (any format ``fastspec.io.read`` knows); pass objects through.

    ``rejected``: filled with the records the reader rejected, by reason (nothing for objects), so that they
    are counted rather than gone."""
    if isinstance(obj, (Spectra, LabData)):
        return obj
    path = Path(obj)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    from fastspec.io import read
    from fastspec.io._common import first_rejection

    spectra, rep = read(str(path), return_report=True)
    if len(spectra) == 0:  # else every split reports an empty side, which hides the cause
        why = f"; first: {first_rejection(rep)}" if rep.n_rejected else ""
        raise FastspecError(f"{path}: no spectra read ({rep.n_records} records, {rep.n_rejected} rejected{why})")
    if rejected is not None:
        rejected.update(rep.counts_by_reason)
    return spectra


def rejected_note(rejected: dict) -> str:
    """' (N records rejected by the reader: reason: n, ...)', or '' when none were."""
    n = sum(rejected.values())
    return f" ({n} records rejected by the reader: " + ", ".join(f"{k}: {v}" for k, v in rejected.items()) + ")" \
        if n else ""


def _filter_mode(lab: LabData, ion_mode: str | None) -> LabData:
    if ion_mode in (None, "", "both", "any"):
        return lab
    want = {"positive": 1, "pos": 1, "+": 1, "negative": -1, "neg": -1, "-": -1}.get(str(ion_mode).lower())
    if want is None:
        raise ParameterError(f"ion_mode must be positive, negative or both; got {ion_mode!r}")
    rows = np.flatnonzero(lab.polarity == want)
    if rows.size == 0:
        raise FastspecError(f"no {ion_mode} mode spectra in the library")
    return lab.take(rows)


# ====================================================================== scoring helpers
def prediction_tanimoto(qlab: LabData, qrows: np.ndarray, llab: LabData, lrows: np.ndarray) -> np.ndarray:
    """Tanimoto between the true molecule of ``qlab[qrows]`` and the molecule of ``llab[lrows]``.

    ``lrows`` -1 (no prediction) gives 0. The same molecule key gives 1.0 even without fingerprints;
    a missing or invalid fingerprint on either side gives 0. Both LabData must share one fingerprint
    table (see :meth:`Evaluation`).
    """
    from fastspec.kernels.tanimoto import tanimoto_pairs

    qrows = np.asarray(qrows, np.int64)
    lrows = np.asarray(lrows, np.int64)
    out = np.zeros(qrows.shape[0])
    has = lrows >= 0
    if not has.any():
        return out
    same = np.zeros(qrows.shape[0], bool)
    qm = [qlab.mol[i] for i in qrows.tolist()]
    lm = [llab.mol[i] if i >= 0 else None for i in lrows.tolist()]
    same[:] = [a is not None and a == b for a, b in zip(qm, lm)]
    if qlab.fps is not None and qlab.fp_row is not None and llab.fp_row is not None:
        fq = qlab.fp_row[qrows]
        fl = np.where(has, llab.fp_row[np.where(has, lrows, 0)], -1)
        valid = qlab.fps.valid
        ok = has & (fq >= 0) & (fl >= 0)
        ok[ok] &= valid[fq[ok]] & valid[fl[ok]]
        if ok.any():
            out[ok] = tanimoto_pairs(qlab.fps.packed, fq[ok], qlab.fps.packed, fl[ok])
    out[same] = 1.0
    return out


def distinct_ranks(neigh_codes: np.ndarray, true_codes: np.ndarray) -> np.ndarray:
    """0-based rank of the true molecule among the distinct molecules of each neighbour row.

    Parameters
    ----------
    neigh_codes : ndarray, int64 (nq, K)
        Molecule code of each neighbour, best first; -1 padding.
    true_codes : ndarray, int64 (nq,)

    Returns
    -------
    ndarray, int64 (nq,)
        Rank (0 = best) or a large number when the molecule is not among the neighbours.
    """
    nq, k = neigh_codes.shape
    big = np.iinfo(np.int64).max // 2
    if nq == 0 or k == 0:
        return np.full(nq, big, dtype=np.int64)
    pos = np.broadcast_to(np.arange(k), (nq, k))
    order = np.lexsort((pos, neigh_codes), axis=-1)  # by code, then position
    cs = np.take_along_axis(neigh_codes, order, axis=1)
    first_s = np.ones((nq, k), bool)
    first_s[:, 1:] = cs[:, 1:] != cs[:, :-1]
    first = np.zeros((nq, k), bool)
    np.put_along_axis(first, order, first_s, axis=1)
    first &= neigh_codes >= 0
    rank = np.cumsum(first, axis=1) - 1
    hit = first & (neigh_codes == true_codes[:, None])
    has = hit.any(axis=1)
    out = np.full(nq, big, dtype=np.int64)
    out[has] = rank[has, hit[has].argmax(axis=1)]
    return out


def bootstrap_ci(
    cluster: np.ndarray, columns: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap CIs of ratio metrics, resampling clusters (e.g. test molecules).

    Parameters
    ----------
    cluster : ndarray, int64 (n,)
        Cluster code per test spectrum (0..G-1).
    columns : {name: (numerator, denominator)}
        Per-spectrum numerator and denominator arrays (n,) of each ratio metric.
    """
    if n_boot <= 0 or cluster.size == 0:
        return {}
    g = int(cluster.max()) + 1
    names = list(columns)
    sums = np.zeros((g, 2 * len(names)))
    for j, name in enumerate(names):
        num, den = columns[name]
        sums[:, 2 * j] = np.bincount(cluster, weights=np.asarray(num, float), minlength=g)
        sums[:, 2 * j + 1] = np.bincount(cluster, weights=np.asarray(den, float), minlength=g)
    rng = np.random.default_rng(seed)
    res = np.empty((n_boot, len(names)))
    chunk = max(1, min(n_boot, 20_000_000 // max(g, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(g, np.full(g, 1.0 / g), size=b).astype(np.float64)
        tot = counts @ sums
        with np.errstate(invalid="ignore", divide="ignore"):
            res[done : done + b] = tot[:, 0::2] / tot[:, 1::2]
        done += b
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for j, name in enumerate(names):
        v = res[:, j]
        v = v[np.isfinite(v)]
        out[name] = [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if v.size else [None, None]
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


# ====================================================================== the evaluation context
class Evaluation:
    """Everything that does not depend on the similarity setting, computed once.

    Labels, fingerprints (each unique molecule once), the split, its profile, leakage and the
    bucket oracle are shared; :meth:`run` then performs one search + scoring per setting (the
    ablation calls it many times).

    Parameters
    ----------
    library : path, Spectra or LabData
    queries : path, Spectra or LabData, optional
        External test set searched against the whole library (no split then).
    split : str
        Split spec (see :mod:`fastspec.splits`); ignored with ``queries``.
    """

    def __init__(
        self,
        library,
        *,
        queries=None,
        split: str = "random",
        test_fraction: float = 0.2,
        seed: int = 0,
        molecule_disjoint: bool = False,
        ion_mode: str | None = None,
        fingerprint: str | None = "morgan:2:4096",
        fingerprint_cache: str | Path | None = None,
        fingerprints=None,
        l2s_options: dict | None = None,
        search: SearchConfig | None = None,
        threads: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        from fastspec.splits import EXCLUDED, make_split, profile_between

        self.log = log or (lambda msg: None)
        self.threads = threads
        self.timing: dict[str, float] = {}
        t0 = time.perf_counter()
        lib_rejected: dict = {}
        q_rejected: dict = {}
        lib = load_spectra(library, lib_rejected)
        self.lib = _filter_mode(lib if isinstance(lib, LabData) else LabData.build(lib), ion_mode)
        if queries is not None:
            q = load_spectra(queries, q_rejected)
            self.qlab = _filter_mode(q if isinstance(q, LabData) else LabData.build(q), ion_mode)
        else:
            self.qlab = self.lib
        #: records of the files the reader rejected (reported with the exclusions, so that none is gone unseen)
        self.unreadable = {"library_records_rejected": sum(lib_rejected.values()),
                           "query_records_rejected": sum(q_rejected.values())}
        self.timing["labels"] = time.perf_counter() - t0
        # LabData.counts: how the labels were read (before the ion-mode filter; take() keeps them)
        self.label_counts = {"library": dict(self.lib.counts)}
        if queries is not None:
            self.label_counts["queries"] = dict(self.qlab.counts)
        self.log(f"labels: {len(self.lib)} library spectra{rejected_note(lib_rejected)}"
                 + (f", {len(self.qlab)} queries{rejected_note(q_rejected)}" if queries is not None else ""))

        t0 = time.perf_counter()
        self.fingerprint = None if fingerprint in (None, "", "none") else str(fingerprint)
        if self.fingerprint is not None:
            self.lib.attach_fingerprints(self.fingerprint, table=fingerprints, cache_dir=fingerprint_cache)
            if self.qlab is not self.lib:
                self.qlab.attach_fingerprints(self.fingerprint, table=self.lib.fps, cache_dir=fingerprint_cache)
                self.lib.fps = self.qlab.fps  # a superset; library rows stay valid (appended only)
        self.timing["fingerprints"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.split = None
        self.split_params: dict[str, Any] = {}
        if queries is None:
            # l2s's NN predictor uses the setting's metric and buckets but the reference peak weights
            # (intensity_power 1, mz_power 0, no shuffle): every ablation setting then shares one split,
            # and an ablation row equals `evaluate` with the same settings
            split_search = None if search is None else search.replace(intensity_power=1.0, mz_power=0.0, shuffle_intensities=False)
            self.split = make_split(
                self.lib,
                split,
                test_fraction=test_fraction,
                seed=seed,
                molecule_disjoint=molecule_disjoint,
                l2s_options=l2s_options,
                search=split_search,
                threads=threads,
            )
            train_rows, test_rows = self.split.train, self.split.test
            n_split_excluded = int((np.asarray(self.split.assignment) == EXCLUDED).sum())
        else:
            train_rows, test_rows = np.arange(len(self.lib)), np.arange(len(self.qlab))
            n_out = 0
            if molecule_disjoint:  # library spectra of a query's molecule are left out, as from a split's train
                qmols = {m for m in self.qlab.mol if m is not None}
                keep = np.array([m is None or m not in qmols for m in self.lib.mol], dtype=bool)
                n_out = int((~keep).sum())
                train_rows = train_rows[keep]
            n_split_excluded = n_out
        self.timing["split"] = time.perf_counter() - t0
        self.split_spec = split if queries is None else "queries"
        drawn = queries is None and self.split is not None and _draws(split)
        self.split_args = {"split": self.split_spec, "test_fraction": test_fraction if drawn else None, "seed": seed,
                           "molecule_disjoint": molecule_disjoint, "ion_mode": ion_mode, "fingerprint": self.fingerprint,
                           # what else a rerun needs: the split's own parameters (l2s: iterations, patience, ...),
                           # the fingerprint cache (its bits are reused as stored) and the versions (RDKit's Morgan bits)
                           "split_params": _plain(self.split.params) if self.split is not None else {},
                           "fingerprint_cache": None if fingerprint_cache is None else str(fingerprint_cache),
                           "versions": _versions()}
        if queries is not None:
            self.split_args["queries"] = str(queries) if isinstance(queries, (str, Path)) else "<object>"
        if isinstance(library, (str, Path)):
            self.split_args["library"] = str(library)

        # exclusions: the truth must be identifiable (and fingerprintable when scoring by Tanimoto)
        qmol_ok = np.array([self.qlab.mol[i] is not None for i in test_rows.tolist()], bool)
        qfp_ok = np.ones(test_rows.shape[0], bool)
        if self.fingerprint is not None:
            qfp_ok = _fingerprinted(self.qlab, test_rows)
        lmol_ok = np.array([self.lib.mol[i] is not None for i in train_rows.tolist()], bool)
        self.excluded = {
            "test_no_molecule": int((~qmol_ok).sum()),
            "test_invalid_structure": int((qmol_ok & ~qfp_ok).sum()),
            "train_no_molecule": int((~lmol_ok).sum()),
            # counted, not left out: they stay in training (a copy of one scores Tanimoto 0)
            "train_invalid_structure": int((~_fingerprinted(self.lib, train_rows) & lmol_ok).sum())
            if self.fingerprint is not None else 0,
            **self.unreadable,
        }
        self.test_rows = test_rows[qmol_ok & qfp_ok]
        self.train_rows = train_rows[lmol_ok]
        if self.test_rows.size == 0:
            raise FastspecError("no test spectra with a usable molecule identity")
        if self.train_rows.size == 0:
            raise FastspecError("no training spectra with a molecule identity")
        # the shifts (instrument, adduct, energy), overlaps and unseen formulas of the spectra evaluated: the
        # split's own sides held spectra without a molecule too (an audit: a collision-energy TVD quoted over
        # 232 test spectra no score counted), which `fastspec split` profiles
        t0 = time.perf_counter()
        self.profile = profile_between(self.lib, self.train_rows, self.qlab, self.test_rows)
        self.profile["n_excluded"] = n_split_excluded
        self.profile["scope"] = "spectra evaluated: train spectra with a molecule, test spectra with a usable one (n_test)"
        if self.split is not None and self.split.info:
            self.profile["split_info"] = self.split.info
        self.timing["split"] += time.perf_counter() - t0

        # joint molecule codes (library and queries) for exact match, hit@k and leakage
        codes, _ = factorize([self.lib.mol, self.qlab.mol]) if self.qlab is not self.lib else factorize([self.lib.mol])
        self.lib_code = codes[: len(self.lib)]
        self.q_code = codes[len(self.lib) :] if self.qlab is not self.lib else self.lib_code
        tq = self.q_code[self.test_rows]
        train_set = np.zeros(int(codes.max()) + 2, bool)
        train_set[self.lib_code[self.train_rows]] = True
        uq = np.unique(tq)
        self.leakage = float(train_set[uq].mean()) if uq.size else 0.0
        self.leakage_spectra = float(train_set[tq].mean()) if tq.size else 0.0
        self._oracle: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ oracle
    def oracle(self, bucket: str) -> np.ndarray:
        """Best Tanimoto of each test spectrum's truth against the training molecules of its bucket
        (NaN when the bucket has no training spectrum). Cached per bucket kind."""
        if bucket in self._oracle:
            return self._oracle[bucket]
        from fastspec.kernels.tanimoto import max_tanimoto_csr

        qk, lk = _joint(bucket_keys(self.qlab, bucket), bucket_keys(self.lib, bucket))
        tq, tl = qk[self.test_rows], lk[self.train_rows]
        nq = tq.shape[0]
        out = np.full(nq, np.nan)
        if self.fingerprint is None:
            # no fingerprints: oracle = the true molecule is in the bucket (1) or not (0)
            pairs = set(zip(tl.tolist(), self.lib_code[self.train_rows].tolist()))
            tcode = self.q_code[self.test_rows]
            present = set(tl.tolist())
            for i, (b, m) in enumerate(zip(tq.tolist(), tcode.tolist())):
                if b >= 0 and b in present:
                    out[i] = 1.0 if (b, m) in pairs else 0.0
            self._oracle[bucket] = out
            return out
        # unique (bucket, molecule fingerprint row) among training spectra, as CSR by bucket
        fl = self.lib.fp_row[self.train_rows]
        ok = (tl >= 0) & (fl >= 0)
        pair = np.unique(np.stack([tl[ok], fl[ok]], axis=1), axis=0) if ok.any() else np.zeros((0, 2), np.int64)
        nb = int(max(qk.max(initial=-1), lk.max(initial=-1))) + 1
        boff = np.zeros(nb + 1, np.int64)
        np.add.at(boff, pair[:, 0] + 1, 1)
        boff = np.cumsum(boff)
        bmol = pair[:, 1]
        # unique (bucket, true fp row) among test spectra
        fq = self.qlab.fp_row[self.test_rows]
        qok = tq >= 0
        qpair, inv = np.unique(np.stack([np.where(qok, tq, -1), fq], axis=1), axis=0, return_inverse=True)
        inv = inv.ravel()
        has = qpair[:, 0] >= 0
        lens = np.zeros(qpair.shape[0], np.int64)
        lens[has] = boff[qpair[has, 0] + 1] - boff[qpair[has, 0]]
        offs = np.zeros(qpair.shape[0] + 1, np.int64)
        np.cumsum(lens, out=offs[1:])
        starts = np.where(has, boff[np.maximum(qpair[:, 0], 0)], 0)
        cand = bmol[np.repeat(starts - offs[:-1], lens) + np.arange(offs[-1])] if offs[-1] else np.zeros(0, np.int64)
        fps = self.lib.fps
        best, _ = max_tanimoto_csr(fps.packed, qpair[:, 1], offs, cand, fps.packed, threads=self.threads)
        best = np.where(lens > 0, np.maximum(best, 0.0), np.nan)
        out = best[inv]
        self._oracle[bucket] = out
        return out

    # ------------------------------------------------------------------ one setting
    def run(
        self,
        cfg: SearchConfig,
        *,
        hit_ks: Sequence[int] = HIT_KS,
        n_bootstrap: int = 1000,
        ci_seed: int = 0,
        n_examples: int = 6,
        prepared: tuple | None = None,
    ) -> tuple[dict, dict]:
        """Search, predict and score one setting.

        Returns
        -------
        report : dict
            Keys :data:`REPORT_KEYS`.
        details : dict
            Per-test-spectrum arrays (``test_rows``, ``pred_rows``, ``score``, ``tanimoto``, ``exact``,
            ``covered``, ``scored``, ``fallback``, ``rank``, ``n_candidates``) for predictions files and
            the ablation.
        """
        hit_ks = _check_hit_ks(hit_ks)
        from fastspec.search import _count

        _count(n_bootstrap, "n_bootstrap (0: no confidence intervals)", 0)
        cfg = cfg.replace(search_k=max(int(cfg.search_k), max(hit_ks), int(cfg.vote))).validate()
        timing = dict(self.timing)
        t0 = time.perf_counter()
        res = nn_search(
            self.qlab, self.lib, cfg, query_rows=self.test_rows, library_rows=self.train_rows, prepared=prepared, threads=self.threads
        )
        timing["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report, details = self._score(res, cfg, hit_ks, n_bootstrap, ci_seed, n_examples)
        timing["scoring"] = time.perf_counter() - t0
        timing["total"] = sum(v for k, v in timing.items() if k != "total")
        report["timing"] = {k: round(v, 4) for k, v in timing.items()}
        return report, details

    def _score(self, res: NNResult, cfg: SearchConfig, hit_ks, n_bootstrap, ci_seed, n_examples) -> tuple[dict, dict]:
        n = self.test_rows.shape[0]
        pred, score = predict_molecules(res, self.lib_code, cfg.vote)
        has = pred >= 0
        tani = prediction_tanimoto(self.qlab, self.test_rows, self.lib, pred) if self.fingerprint else np.zeros(n)
        tcode = self.q_code[self.test_rows]
        exact = has & (self.lib_code[np.maximum(pred, 0)] == tcode)
        if not self.fingerprint:
            tani = exact.astype(float)  # without fingerprints only identity can be scored
        scored = np.ones(n, bool) if cfg.no_neighbour == "zero" else has
        tani = np.where(has, tani, 0.0)
        ncodes = np.where(res.neighbours >= 0, self.lib_code[np.maximum(res.neighbours, 0)], -1)
        rank = distinct_ranks(ncodes, tcode)
        oracle = self.oracle(cfg.bucket)
        if cfg.no_neighbour == "fallback":  # an uncovered spectrum is answered from its polarity's whole
            # training side: the reach of that search, or the oracle was no bound (0.051 against a mean 0.165)
            oracle = np.where(res.covered, oracle, self.oracle("none"))  # (covered: the bucket's, even NaN)
        covered = res.covered
        n_sc = int(scored.sum())
        rep: dict[str, Any] = {
            "n_test": n,
            "n_scored": n_sc,
            "coverage": float(covered.mean()),
            "mean_tanimoto": _ratio(tani[scored].sum(), n_sc),
            "mean_tanimoto_all": _ratio(tani.sum(), n),
            "exact_match_rate": _ratio(exact[scored].sum(), n_sc),
            "exact_match_rate_all": _ratio(exact.sum(), n),
            "hit_at_k": {str(k): _ratio(((rank < k) & scored).sum(), n_sc) for k in hit_ks},
            "hit_at_k_all": {str(k): _ratio((rank < k).sum(), n) for k in hit_ks},
            "oracle_tanimoto": _ratio(np.nansum(oracle), int(np.isfinite(oracle).sum())),
            "oracle_tanimoto_all": _ratio(np.nansum(oracle), n),
            "leakage": self.leakage,
            "leakage_spectra": self.leakage_spectra,
            "n_fallback": int(res.fallback.sum()),
            # (with vote > 1 the summed votes decide, not the best score: not counted)
            "n_top1_tied": int((_top1_tied(res, self.lib_code) & scored).sum()) if cfg.vote <= 1 else None,
            # predictions whose neighbour shares no scored peak with the test spectrum (best score, or summed
            # votes, 0): the bucket and the library's row order chose the molecule, not the spectrum
            "n_zero_score": {"predicted": int((has & (score <= 0) & scored).sum()),
                             "exact": int((exact & (score <= 0) & scored).sum())},
            "excluded": dict(self.excluded),
            "labels": {side: dict(c) for side, c in self.label_counts.items()},
        }
        rep["groups"] = self._groups(scored, covered, tani, exact)
        cl = np.unique(tcode, return_inverse=True)[1].ravel()
        ones = np.ones(n)
        rep["ci"] = bootstrap_ci(
            cl,
            {
                "coverage": (covered, ones),
                "mean_tanimoto": (tani * scored, scored),
                "mean_tanimoto_all": (tani, ones),
                "exact_match_rate": (exact & scored, scored),
                "exact_match_rate_all": (exact, ones),
                "hit_at_1": ((rank < 1) & scored, scored),
            },
            n_boot=n_bootstrap,
            seed=ci_seed,
        )
        rep["score_hist"] = _score_hist(score[has & ~np.isnan(score)], exact[has & ~np.isnan(score)], cfg.vote)
        rep["examples"] = self._examples(pred, score, tani, exact, n_examples)
        rep["config"] = {**cfg.as_dict(), **self.split_args, "hit_ks": list(hit_ks), "n_bootstrap": n_bootstrap, "ci_seed": ci_seed}
        rep["split_profile"] = self.profile
        details = {
            "test_rows": self.test_rows,
            "pred_rows": pred,
            "score": score,
            "tanimoto": tani,
            "exact": exact,
            "covered": covered,
            "scored": scored,
            "fallback": res.fallback,
            "rank": rank,
            "n_candidates": res.n_candidates,
            "oracle": oracle,
        }
        return rep, details

    def _groups(self, scored, covered, tani, exact) -> dict:
        out = {}
        for f in GROUP_FIELDS:
            vals = ["unknown" if v is None else str(v) for v in (self.qlab.field(f)[i] for i in self.test_rows.tolist())]
            codes, uniq = factorize([vals])
            k = len(uniq)
            cnt = np.bincount(codes, minlength=k)
            sc = np.bincount(codes, weights=scored, minlength=k)
            cov = np.bincount(codes, weights=covered, minlength=k)
            ts = np.bincount(codes, weights=tani * scored, minlength=k)
            ex = np.bincount(codes, weights=exact & scored, minlength=k)
            exa = np.bincount(codes, weights=exact, minlength=k)
            order = np.argsort(-cnt, kind="stable")[:20]
            out[f] = {
                uniq[i]: {
                    "n_test": int(cnt[i]),
                    "n_scored": int(sc[i]),
                    "coverage": _ratio(cov[i], cnt[i]),
                    "mean_tanimoto": _ratio(ts[i], sc[i]),
                    "mean_tanimoto_all": _ratio(ts[i], cnt[i]),
                    "exact_match_rate": _ratio(ex[i], sc[i]),
                    "exact_match_rate_all": _ratio(exa[i], cnt[i]),
                }
                for i in order
            }
        return out

    def _examples(self, pred, score, tani, exact, n_examples: int, min_peaks: int = 3) -> list[dict]:
        """The worst confusions: wrong molecule predicted with the highest spectral similarity (times
        1 - Tanimoto). Pairs where either spectrum has fewer than ``min_peaks`` peaks are passed over
        while others exist: a lone precursor peak matches any spectrum of the same formula."""
        wrong = np.flatnonzero((pred >= 0) & ~exact)
        if wrong.size == 0 or n_examples <= 0:
            return []
        npq = self.qlab.spectra.n_peaks[self.test_rows[wrong]]
        npl = self.lib.spectra.n_peaks[pred[wrong]]
        rich = (npq >= min_peaks) & (npl >= min_peaks)
        if rich.any():
            wrong = wrong[rich]
        badness = score[wrong] * (1.0 - tani[wrong])
        pick = wrong[np.argsort(-badness, kind="stable")[:n_examples]]
        out = []
        for i in pick.tolist():
            q, l = int(self.test_rows[i]), int(pred[i])
            out.append(
                {
                    "query_index": q,
                    "query_id": self.qlab.spectra.ids[q] if len(self.qlab) < 200_000 else str(q),
                    "query_molecule": self.qlab.mol[q],
                    "query_smiles": self.qlab.smiles[q],
                    "library_index": l,
                    "library_id": self.lib.spectra.ids[l] if len(self.lib) < 200_000 else str(l),
                    "library_molecule": self.lib.mol[l],
                    "library_smiles": self.lib.smiles[l],
                    "formula": self.qlab.formula[q],
                    "score": float(score[i]),
                    "tanimoto": float(tani[i]),
                    "query_peaks": _peaks(self.qlab.spectra, q),
                    "library_peaks": _peaks(self.lib.spectra, l),
                }
            )
        return out

    def predictions_table(self, details: dict):
        """Per-test-spectrum predictions as a pyarrow Table."""
        import pyarrow as pa

        q = details["test_rows"]
        p = details["pred_rows"]
        qids = self.qlab.spectra.ids
        lids = self.lib.spectra.ids
        pick = lambda xs, rows: [xs[i] if i >= 0 else None for i in rows.tolist()]  # noqa: E731
        return pa.table(
            {
                "query_index": pa.array(q, pa.int64()),
                "query_id": pa.array(pick(qids, q), pa.string()),
                "true_molecule": pa.array(pick(self.qlab.mol, q), pa.string()),
                "true_smiles": pa.array(pick(self.qlab.smiles, q), pa.string()),
                "formula": pa.array(pick(self.qlab.formula, q), pa.string()),
                "predicted_index": pa.array(p, pa.int64()),
                "predicted_id": pa.array(pick(lids, p), pa.string()),
                "predicted_molecule": pa.array(pick(self.lib.mol, p), pa.string()),
                "predicted_smiles": pa.array(pick(self.lib.smiles, p), pa.string()),
                "score": pa.array(np.where(p >= 0, details["score"], np.nan)),
                "tanimoto": pa.array(details["tanimoto"]),
                "exact": pa.array(details["exact"]),
                "covered": pa.array(details["covered"]),
                "scored": pa.array(details["scored"]),
                "fallback": pa.array(details["fallback"]),
                "n_candidates": pa.array(details["n_candidates"], pa.int64()),
                "true_rank": pa.array(np.where(details["rank"] < 10**9, details["rank"], -1), pa.int64()),
                "oracle_tanimoto": pa.array(details["oracle"]),
                "instrument_type": pa.array(pick(self.qlab.instrument_type, q), pa.string()),
                "adduct": pa.array(pick(self.qlab.adduct, q), pa.string()),
                "ce_bin": pa.array(pick(self.qlab.ce_bin, q), pa.string()),
            }
        )


def _top1_tied(res: NNResult, lib_code: np.ndarray) -> np.ndarray:
    """Queries whose best score another molecule's spectrum shares among their neighbours, bool (nq,): their
    prediction (the lowest library row among the tied) depends on the library's row order."""
    nb, sc = res.neighbours, res.scores
    if nb.shape[1] < 2:
        return np.zeros(nb.shape[0], bool)
    code = np.where(nb >= 0, lib_code[np.maximum(nb, 0)], -1)
    same_score = (nb[:, 1:] >= 0) & (nb[:, :1] >= 0) & (sc[:, 1:] == sc[:, :1])
    return (same_score & (code[:, 1:] != code[:, :1])).any(axis=1)


def _joint(a, b) -> tuple[np.ndarray, np.ndarray]:
    codes, _ = factorize([a, b])
    return codes[: len(a)], codes[len(a) :]


def _peaks(spectra: Spectra, i: int, top: int = 60) -> dict:
    """Peaks of one spectrum for a mirror plot: the ``top`` most intense, base peak scaled to 1."""
    lo, hi = spectra.offsets[i], spectra.offsets[i + 1]
    mz, it = spectra.mz[lo:hi], spectra.intensity[lo:hi].astype(float)
    if it.size > top:
        keep = np.sort(np.argsort(-it, kind="stable")[:top])
        mz, it = mz[keep], it[keep]
    m = it.max() if it.size else 1.0
    return {
        "mz": [round(float(x), 4) for x in mz],
        "intensity": [round(float(x / m), 4) if m > 0 else 0.0 for x in it],
        "precursor_mz": None if not np.isfinite(spectra.precursor_mz[i]) else float(spectra.precursor_mz[i]),
    }


def _score_hist(score: np.ndarray, same: np.ndarray, vote: int, bins: int = 20) -> dict:
    """Histogram of top-1 scores for same-molecule vs different-molecule predictions."""
    hi = float(max(1.0, np.nanmax(score))) if score.size and vote > 1 else 1.0
    edges = np.linspace(0.0, hi, bins + 1)
    s = np.clip(score, 0.0, hi)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "same": np.histogram(s[same], edges)[0].tolist(),
        "different": np.histogram(s[~same], edges)[0].tolist(),
    }


# ====================================================================== public entry point
def evaluate(
    library,
    split: str = "random",
    *,
    queries=None,
    preset: str | None = None,
    search: SearchConfig | None = None,
    metric: str | None = None,
    tolerance=None,
    mz_power: float | None = None,
    intensity_power: float | None = None,
    bucket: str | None = None,
    no_neighbour: str | None = None,
    vote: int | None = None,
    shuffle_intensities: bool | None = None,
    shuffle_seed: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    molecule_disjoint: bool = False,
    ion_mode: str | None = None,
    fingerprint: str | None = "morgan:2:4096",
    fingerprint_cache: str | Path | None = None,
    fingerprints=None,
    l2s_options: dict | None = None,
    hit_ks: Sequence[int] = HIT_KS,
    n_bootstrap: int = 1000,
    output: str | Path | None = None,
    markdown: str | Path | None = None,
    predictions: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate the NN baseline on a labelled library (see the module docstring for the report keys).

    Parameters
    ----------
    library : path, Spectra or LabData
        Labelled spectra (SMILES or InChIKey, formula, adduct, instrument, collision energy).
    split : str
        ``random``, ``inchikey``, ``formula``, ``scaffold``, ``instrument:VALUE``, ``adduct:VALUE``,
        ``ce:LOW-HIGH``, ``column:NAME``, ``file:PATH`` or ``l2s`` (:mod:`fastspec.splits`).
    queries : path, Spectra or LabData, optional
        External test set searched against the whole library (instead of a split).
    preset : {"khoo2026"}, optional
        Paper-faithful settings; explicit search options override it.
    metric, tolerance, mz_power, intensity_power, bucket, no_neighbour, vote, shuffle_intensities, shuffle_seed
        Search options (:class:`fastspec.baseline.SearchConfig`); None keeps the preset/default.
    fingerprint : str or None
        ``"morgan:RADIUS:BITS"``; None scores identity only (Tanimoto 1 for the same molecule, else 0).
    fingerprint_cache : path, optional
        Directory of a persistent fingerprint cache (.npy).
    fingerprints : FingerprintTable, optional
        Precomputed fingerprints keyed by molecule.
    output, markdown, predictions : path, optional
        Write the report JSON, a markdown summary and a per-query parquet.

    Returns
    -------
    dict
        The report (keys :data:`REPORT_KEYS`).
    """
    cfg = search_config(
        preset,
        search,
        metric=metric,
        tolerance=tolerance,
        mz_power=mz_power,
        intensity_power=intensity_power,
        bucket=bucket,
        no_neighbour=no_neighbour,
        vote=vote,
        shuffle_intensities=shuffle_intensities,
        shuffle_seed=shuffle_seed,
    )
    ev = Evaluation(
        library,
        queries=queries,
        split=split,
        test_fraction=test_fraction,
        seed=seed,
        molecule_disjoint=molecule_disjoint,
        ion_mode=ion_mode,
        fingerprint=fingerprint,
        fingerprint_cache=fingerprint_cache,
        fingerprints=fingerprints,
        l2s_options=l2s_options,
        search=cfg,
        threads=threads,
        log=log,
    )
    report, details = ev.run(cfg, hit_ks=hit_ks, n_bootstrap=n_bootstrap, ci_seed=seed)
    if output is not None:
        write_json(report, output)
    if markdown is not None:
        from fastspec.report import report_markdown

        write_text_atomically(markdown, report_markdown([report]))
    if predictions is not None:
        import pyarrow.parquet as pq

        table = ev.predictions_table(details)
        write_atomically(predictions, lambda tmp: pq.write_table(table, tmp), needs_seek="Parquet",
                         direct_file=True)
    return report


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON with NaN/inf turned into null (strict JSON)."""
    write_text_atomically(path, json.dumps(_clean(obj), indent=1, sort_keys=False) + "\n")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x
