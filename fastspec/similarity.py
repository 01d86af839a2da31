"""Spectral similarity: pairs, matrices and top-k, exact and parallel.

Metrics (``METRICS``)
---------------------
``cosine``, ``modified_cosine``, ``neutral_loss_cosine``
    Greedy peak matching, identical to matchms 0.33 ``CosineGreedy``, ``ModifiedCosineGreedy`` and
    ``NeutralLossesCosine`` (scores within 1e-6, same matched-peak counts, same tie-breaking), with
    ``tolerance`` (Da or ppm), ``mz_power`` and ``intensity_power``. Default tolerance 0.1 Da.
``entropy``, ``unweighted_entropy``
    ms_entropy's (un)weighted entropy similarity. With ``clean=True`` (default) each spectrum goes
    through ms_entropy's ``clean_spectrum`` first (minimum peak distance 2 x tolerance, noise 1%),
    so raw spectra give ``ms_entropy.calculate_entropy_similarity``'s number. Default tolerance 0.02 Da.
    ``flash=True`` (Da) matches peaks as ``FlashEntropySearch``'s index does instead, as library search does;
    ``hybrid=True`` / ``neutral_loss=True`` score as its hybrid / neutral-loss searches do.
``binned_cosine``
    Cosine of fixed-width binned vectors (intensities summed per bin); ``bin_width`` (Da, defaults to
    the tolerance unless a preset sets it), ``max_mz``, ``base_peak`` (scale the most intense peak to this value first) and
    ``precursor_peak`` (add a peak of this intensity at the precursor m/z). ``preset="khoo2026"`` is the
    Khoo & Barzilay (2026) NN baseline: 0.25 Da bins below 2000, base peak 100, precursor peak 100.

The first spectrum of a pair (``a``, the rows of a matrix, the queries of a top-k) plays matchms's
``reference`` / ms_entropy's ``peaks_a``: ppm windows are taken around its peaks, and the modified-cosine
shift is ``precursor_mz(a) - precursor_mz(b)``. Where either precursor m/z is unknown (NaN), modified
cosine scores the unshifted matches only, i.e. the plain cosine (matchms raises "Precursor_mz missing"),
so a library search in ``analog`` mode still ranks such spectra; neutral-loss cosine scores them 0.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastspec.errors import ParameterError, interruptible
from fastspec.spectra import Spectra
from fastspec.tolerance import Tolerance, parse_tolerance

#: metric name -> kernel kind (see :mod:`fastspec.kernels.matching`)
METRICS = {
    "cosine": 0,
    "modified_cosine": 1,
    "neutral_loss_cosine": 2,
    "binned_cosine": 3,
    "entropy": 4,
    "unweighted_entropy": 4,
}
_ALIASES = {"modcos": "modified_cosine", "modified-cosine": "modified_cosine", "binned": "binned_cosine",
            "entropy_similarity": "entropy"}
_DEFAULT_TOL = {"entropy": 0.02, "unweighted_entropy": 0.02}
PRESETS = {"khoo2026": {"bin_width": 0.25, "max_mz": 2000.0, "base_peak": 100.0, "precursor_peak": 100.0}}


def canonical_metric(metric: str) -> str:
    """Validated metric name (aliases resolved); raises ParameterError for an unknown one."""
    m = str(metric).strip().lower()
    m = _ALIASES.get(m, m)
    if m in ("neutral_loss", "neutral_losses"):  # two scores go by that name: say which is which
        raise ParameterError(f"metric {metric!r} is ambiguous: 'neutral_loss_cosine' is matchms' NeutralLossesCosine; "
                             "ms_entropy's neutral-loss search is mode='neutral_loss' of Library.search (entropy), "
                             "or metric='entropy' with neutral_loss=True in fastspec.similarity.prepare")
    if m not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; choose from {', '.join(sorted(METRICS))}")
    return m


@dataclass
class Prepared:
    """Spectra in the form a metric's kernel reads (CSR), built by :func:`prepare`.

    Attributes
    ----------
    metric : str
    offsets : ndarray, int64 (n+1,)
    pos : ndarray, float64 (P,)
        Peak m/z (entropy: float32-exact m/z after cleaning; binned: bin index).
    w : ndarray, float64 (P,)
        Peak weights (``mz**mz_power * intensity**intensity_power``; entropy: normalised intensities).
    norm : ndarray, float64 (n,)
        L2 norm of the weights per spectrum (entropy: unused).
    precursor_mz : ndarray, float64 (n,)
    tolerance : Tolerance
    params : dict
        Everything else that defines the prepared form (recorded in reports).
    """

    metric: str
    offsets: np.ndarray
    pos: np.ndarray
    w: np.ndarray
    norm: np.ndarray
    precursor_mz: np.ndarray
    tolerance: Tolerance
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        # read-only views everywhere: numba specialises on writeability, and library arrays come
        # memory-mapped read-only, so one flavour means one compilation per kernel, not two
        for name in ("offsets", "pos", "w", "norm", "precursor_mz"):
            a = getattr(self, name).view()
            a.flags.writeable = False
            setattr(self, name, a)

    @property
    def kind(self) -> int:
        if self.params.get("hybrid"):
            from fastspec.kernels.matching import ENTROPY_HYBRID

            return ENTROPY_HYBRID
        if self.params.get("flash"):
            from fastspec.kernels.matching import ENTROPY_FLASH

            return ENTROPY_FLASH
        return METRICS[self.metric]

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @functools.cached_property
    def max_peaks(self) -> int:
        # cached: a Prepared view over a whole memory-mapped library is scored batch after batch
        return int(np.diff(self.offsets).max()) if len(self) else 0

    def take(self, rows) -> "Prepared":
        """The prepared spectra ``rows`` (int array), in that order: this object itself when ``rows`` are all
        of them in order (its arrays are read-only)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ParameterError("rows must be one-dimensional")
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise ParameterError("row index out of range")
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.shape[0] == len(self) and (rows.shape[0] == 1 or bool(np.all(np.diff(rows) == 1))):
            return self  # all of them in order (one query searched): nothing to gather, and it is read-only
        counts = self.offsets[rows + 1] - self.offsets[rows]
        off = np.zeros(rows.shape[0] + 1, np.int64)
        np.cumsum(counts, out=off[1:])
        src = np.arange(off[-1], dtype=np.int64) - np.repeat(off[:-1] - self.offsets[rows], counts)
        return Prepared(self.metric, off, self.pos[src], self.w[src], self.norm[rows], self.precursor_mz[rows],
                        self.tolerance, dict(self.params))

    def kernel_args(self) -> tuple:
        return self.offsets, self.pos, self.w, self.norm, self.precursor_mz


# ================================================================================== preparation
def prepare(spectra: Spectra | Prepared, metric: str = "cosine", tolerance: Any = None, mz_power: float = 0.0,
            intensity_power: float = 1.0, *, preset: str | None = None, bin_width: float | None = None,
            max_mz: float | None = None, base_peak: float | None = None, precursor_peak: float | None = None,
            clean: bool = True, ignore_peaks_above_precursor: bool = True, flash: bool = False,
            hybrid: bool = False, neutral_loss: bool = False, threads: int | None = None) -> Prepared:
    """Turn spectra into the arrays a metric's kernel scores (done once, reused for many comparisons).

    Parameters
    ----------
    spectra : Spectra, or matchms.Spectrum objects (a list, or one)
        Peaks as read (m/z sorted within each spectrum; one spectrum ``spectra[i]`` is a set of one). A
        :class:`Prepared` is returned unchanged. Peaks whose m/z or intensity is not finite, with an m/z of 0
        or less or a negative intensity are left out, by every metric, as library search leaves them out
        (matchms returns NaN for a non-finite peak, and takes a negative intensity as a negative weight).
        Zero intensities are kept, as matchms keeps them (its matched-peak counts count them), and as
        library search keeps them; entropy metrics drop them (ms_entropy cleans them away).
    metric : str
        One of :data:`METRICS`.
    tolerance : float, str or Tolerance, optional
        Peak tolerance: a float is Da; ``"10ppm"``/``"0.02da"`` strings are accepted. Default 0.1 Da
        (0.02 Da for entropy). For ``binned_cosine`` it is the default bin width: a ``preset``'s bins or
        ``bin_width`` win over it (library search and the command line take a tolerance given with a preset
        as its bin width: they pass it here as ``bin_width``).
    mz_power, intensity_power : float
        Peak weight ``mz**mz_power * intensity**intensity_power`` (matchms names). For entropy
        metrics a non-default value transforms the intensities before cleaning.
    preset : {"khoo2026"}, optional
        Binned-cosine preset (see module docstring).
    bin_width, max_mz, base_peak, precursor_peak : float, optional
        Binned-cosine options (Da, Da, intensity units).
    clean : bool
        Entropy metrics: run ms_entropy's cleaning (True) or take the peaks as already clean (only
        normalised to sum 1).
    ignore_peaks_above_precursor : bool
        Neutral-loss cosine: drop peaks at or above the precursor m/z (matchms default).
    flash : bool
        Entropy metrics with a Da tolerance: match peaks as ms_entropy's ``FlashEntropySearch`` does (a
        peak of b within ``float32(a - tolerance) .. float32(a + tolerance)`` of a peak of a, ends
        included) instead of as ``calculate_entropy_similarity`` does (``|float32(a - b)| <= tolerance``).
        The windows differ only for pairs about ``tolerance`` apart; library search uses it, so its
        scores are FlashEntropySearch's (NumPy 2; see :func:`fastspec.kernels.entropy.entropy_pair`) on
        clean spectra. With peaks closer than 2 x ``tolerance`` (``clean=False``, or a library built
        with ``preprocess=None``) a pair found earlier in the one-to-one walk can take a peak whose
        heavier partner lies inside the window, so scores can differ by more than the window's edge;
        neither ms_entropy function gives that number (FlashEntropySearch refuses such spectra), and
        ``clean=True`` with ``flash=True`` is ms_entropy's cleaning followed by Flash's windows.
    hybrid : bool
        Entropy metrics with a Da tolerance: score as ms_entropy's ``FlashEntropySearch.hybrid_search``
        (implies ``flash``): each peak of ``a`` matches a fragment of ``b`` in its window, else a peak of
        ``b`` whose neutral loss lies in the window of its own, unless that peak of ``b`` is in some
        fragment window of ``a`` (:func:`fastspec.kernels.entropy.hybrid_entropy_pair`). Needs precursor
        m/z (without, only fragments match; ms_entropy raises there). Not symmetric. ``hybrid_search``'s
        numbers need its cleaning: spectra through ``clean_spectrum_for_search`` (the default library
        preprocessing) and ``clean=False``, as library search scores them; the default ``clean=True`` is
        ``calculate_entropy_similarity``'s cleaning, which keeps peaks near the precursor. Losses are
        float32 as ms_entropy computes them from a Python-float precursor (an ``np.float64`` one makes
        them float64 there, which can move pairs at a window's edge).
    neutral_loss : bool
        Entropy metrics with a Da tolerance: score as ms_entropy's
        ``FlashEntropySearch.neutral_loss_search`` (implies ``flash``): the entropy similarity of the two
        spectra's neutral losses, one per peak at ``float32(float32(precursor_mz) - mz)`` with the peak's
        (cleaned, normalised, weighted) intensity, matched in Flash's float32 windows. A spectrum without a
        precursor m/z (NaN, or 0 or less) has no losses and scores 0. As with ``hybrid``, ms_entropy's
        numbers need its ``clean_spectrum_for_search`` (the default library preprocessing) and
        ``clean=False``: the default ``clean=True`` cleans as ``calculate_entropy_similarity`` does, which
        keeps the peaks near the precursor (losses near 0).
    threads : int, optional
        Threads for the parallel preparation kernels.

    Returns
    -------
    Prepared
    """
    if isinstance(spectra, Prepared):
        return spectra
    from fastspec.spectra import SpectrumView, matchms_to_spectra

    spectra = matchms_to_spectra(spectra)  # matchms Spectrum objects, as Library.build takes them

    if isinstance(spectra, SpectrumView):  # one spectrum (``spectra[i]``): a set of one, as search takes it
        spectra = spectra._parent.take(np.array([spectra.index], dtype=np.int64), metadata=False)
    if not isinstance(spectra, Spectra):
        raise ParameterError(f"expected a fastspec.Spectra or matchms spectra, got {type(spectra).__name__} "
                             "(arrays: Spectra.from_arrays(...); a file: fastspec.read(path))")
    return prepare_csr(spectra.offsets, spectra.mz, spectra.intensity, spectra.precursor_mz, metric, tolerance,
                       mz_power, intensity_power, preset=preset, bin_width=bin_width, max_mz=max_mz,
                       base_peak=base_peak, precursor_peak=precursor_peak, clean=clean,
                       ignore_peaks_above_precursor=ignore_peaks_above_precursor, flash=flash, hybrid=hybrid,
                       neutral_loss=neutral_loss, threads=threads)


def prepare_csr(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, precursor_mz: np.ndarray,
                metric: str = "cosine", tolerance: Any = None, mz_power: float = 0.0, intensity_power: float = 1.0, *,
                preset: str | None = None, bin_width: float | None = None, max_mz: float | None = None,
                base_peak: float | None = None, precursor_peak: float | None = None, clean: bool = True,
                ignore_peaks_above_precursor: bool = True, flash: bool = False, hybrid: bool = False,
                neutral_loss: bool = False, threads: int | None = None) -> Prepared:
    """:func:`prepare` on CSR arrays (``offsets`` int64 (n+1,), ``mz`` float64 and ``intensity`` (P,), m/z
    sorted within each spectrum; ``precursor_mz`` float64 (n,)), for callers that gather peaks themselves
    (library search: no Spectra container or metadata per candidate set)."""
    metric = canonical_metric(metric)
    mz_power, intensity_power = _finite(mz_power, "mz_power"), _finite(intensity_power, "intensity_power")
    for name, flag in (("clean", clean), ("ignore_peaks_above_precursor", ignore_peaks_above_precursor),
                       ("flash", flash), ("hybrid", hybrid), ("neutral_loss", neutral_loss)):
        if not isinstance(flag, (bool, np.bool_)):  # clean="False" would read as True
            raise ParameterError(f"{name} must be True or False, got {flag!r}")
    tol = parse_tolerance(_DEFAULT_TOL.get(metric, 0.1) if tolerance is None else tolerance)
    offsets = np.ascontiguousarray(offsets, np.int64)
    mz = np.ascontiguousarray(mz, np.float64)
    inten = np.asarray(intensity)
    if not (inten.dtype == np.float32 and metric in ("entropy", "unweighted_entropy")):
        inten = np.asarray(inten, np.float64)  # float32 entropy input stays float32: its kernels read float32
    pmz = np.ascontiguousarray(precursor_mz, np.float64)
    from fastspec.kernels.peaks import check_offsets

    offsets = check_offsets(offsets, mz, inten)  # offsets past the arrays: kernels reading outside them
    n = offsets.shape[0] - 1
    if pmz.shape != (n,):
        raise ParameterError(f"precursor_mz: one value per spectrum expected ({n}), got shape {pmz.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(mz) & np.isfinite(inten) & (mz > 0) & (inten >= 0)
    if not valid.all():
        # a NaN peak, a negative intensity, an m/z <= 0: every metric leaves it out, as library search does
        # (cosine zeroed the pair on a NaN and took a negative intensity as a negative weight, a NaN one
        # under intensity_power 0.5; entropy dropped it)
        offsets = _offsets_from_mask(offsets, valid)
        mz, inten = mz[valid], inten[valid]
    params: dict = {"mz_power": mz_power, "intensity_power": intensity_power}
    if flash and (metric not in ("entropy", "unweighted_entropy") or tol.unit != "da"):
        raise ParameterError("flash applies to entropy metrics with a Da tolerance")
    if hybrid and (metric not in ("entropy", "unweighted_entropy") or tol.unit != "da"):
        raise ParameterError("hybrid (ms_entropy's hybrid search) applies to entropy metrics with a Da tolerance")
    if neutral_loss and (metric not in ("entropy", "unweighted_entropy") or tol.unit != "da"):
        raise ParameterError("neutral_loss (ms_entropy's neutral-loss search) applies to entropy metrics with a Da "
                             "tolerance")
    if neutral_loss and hybrid:
        raise ParameterError("neutral_loss and hybrid are two different searches; choose one")
    binned = {"preset": preset, "bin_width": bin_width, "max_mz": max_mz, "base_peak": base_peak,
              "precursor_peak": precursor_peak}
    given = [k for k, v in binned.items() if v is not None]
    if given and metric != "binned_cosine":  # silently scoring plain cosine instead would be worse
        raise ParameterError(f"{', '.join(given)} apply to metric='binned_cosine', not {metric!r}")
    # the switches default to True; turning one off for a metric that ignores it would do nothing silently
    if not clean and metric not in ("entropy", "unweighted_entropy"):
        raise ParameterError(f"clean=False applies to entropy metrics, not {metric!r}")
    if not ignore_peaks_above_precursor and metric != "neutral_loss_cosine":
        raise ParameterError(f"ignore_peaks_above_precursor=False applies to metric='neutral_loss_cosine', "
                             f"not {metric!r}")

    if metric in ("entropy", "unweighted_entropy"):
        from fastspec.kernels.entropy import prepare_entropy

        if mz_power != 0.0 or intensity_power != 1.0:
            inten = _weights(mz, np.asarray(inten, np.float64), mz_power, intensity_power)
        if tol.value <= 0:
            raise ParameterError("entropy similarity needs a positive tolerance")
        off2, mz32, w32 = prepare_entropy(offsets, mz, np.asarray(inten, np.float32), tol_da=tol.da if tol.unit == "da" else -1.0,
                                          tol_ppm=tol.ppm if tol.unit == "ppm" else -1.0, clean=bool(clean),
                                          weighted=metric == "entropy", threads=threads)
        params["clean"] = bool(clean)
        if flash or hybrid or neutral_loss:  # only when set: parameters of Prepared made before it stay comparable
            params["flash"] = True
        if hybrid:
            params["hybrid"] = True
        if neutral_loss:
            params["neutral_loss"] = True
            off2, mz32, w32 = _neutral_losses(np.asarray(off2, np.int64), mz32, w32, pmz)
        return Prepared(metric, np.asarray(off2, np.int64), np.asarray(mz32, np.float64), np.asarray(w32, np.float64),
                        np.ones(n), pmz, tol, params)

    if metric == "binned_cosine":
        return _prepare_binned(offsets, mz, inten, pmz, tol, mz_power, intensity_power, preset, bin_width, max_mz,
                               base_peak, precursor_peak, params, threads)

    if metric == "neutral_loss_cosine" and ignore_peaks_above_precursor:
        seg = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        keep = mz < pmz[seg]  # NaN precursor keeps nothing: the metric is undefined without one
        offsets = _offsets_from_mask(offsets, keep)
        mz, inten = mz[keep], inten[keep]
    params["ignore_peaks_above_precursor"] = bool(ignore_peaks_above_precursor)
    w = _weights(mz, inten, mz_power, intensity_power)
    return Prepared(metric, offsets, mz, w, _norms(offsets, w, threads), pmz, tol, params)


def _neutral_losses(offsets: np.ndarray, mz32: np.ndarray, w32: np.ndarray, pmz: np.ndarray):
    """Each spectrum's neutral losses ``float32(float32(precursor_mz) - mz)`` in ascending order, with
    their peaks' weights -> (offsets int64 (n+1,), losses float32 (P',), weights float32 (P',)).

    ms_entropy computes them in float32 from a Python-float precursor (NumPy 2's weak scalars), for the
    query (``neutral_loss_search``) and the library (``build_index``) alike. A spectrum without a
    precursor m/z keeps no peak: NaN, or 0 or less (a placeholder such as MGF's ``PEPMASS=0``, which the
    readers make NaN; identity search reads it so too, while modified cosine, as matchms' arithmetic, takes
    a precursor given in memory as 0 at its value). Losses fall as m/z rises (float32 rounding is monotone), so
    reversing each spectrum sorts them.
    """
    counts = np.diff(offsets)
    has = np.isfinite(pmz) & (pmz > 0)
    new_counts = np.where(has, counts, 0)
    out_off = np.zeros(offsets.shape[0], np.int64)
    np.cumsum(new_counts, out=out_off[1:])
    seg = np.repeat(np.arange(counts.shape[0], dtype=np.int64), new_counts)
    # the j-th output peak of a spectrum is its (count - 1 - j)-th input peak
    j = np.arange(out_off[-1], dtype=np.int64) - out_off[seg]
    src = offsets[seg] + counts[seg] - 1 - j
    p32 = pmz.astype(np.float32)
    losses = (p32[seg] - np.asarray(mz32, np.float32)[src]).astype(np.float32)
    return out_off, losses, np.asarray(w32, np.float32)[src]


def _prepare_binned(offsets, mz, inten, pmz, tol, mz_power, intensity_power, preset, bin_width, max_mz, base_peak,
                    precursor_peak, params, threads=None) -> Prepared:
    opts = {"bin_width": None, "max_mz": None, "base_peak": None, "precursor_peak": None}
    if preset is not None:
        if preset not in PRESETS:
            raise ParameterError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        opts.update(PRESETS[preset])
        params["preset"] = preset
    for k, v in (("bin_width", bin_width), ("max_mz", max_mz), ("base_peak", base_peak), ("precursor_peak", precursor_peak)):
        if v is not None:
            opts[k] = _finite(v, k)
    if opts["bin_width"] is None:
        if tol.unit != "da" or tol.value <= 0:
            raise ParameterError("binned_cosine needs bin_width (Da) or a positive Da tolerance")
        opts["bin_width"] = tol.value
    bw = float(opts["bin_width"])
    if not bw > 0:
        raise ParameterError("bin_width must be positive")
    for k in ("max_mz", "base_peak", "precursor_peak"):  # negative values scored 0 or flipped signs
        low = 0.0 if k == "precursor_peak" else None  # a precursor peak of 0 adds nothing, as if left out
        v = opts[k]
        if v is not None and not (float(v) >= low if low is not None else float(v) > 0):
            raise ParameterError(f"{k} must be {'non-negative' if low is not None else 'positive'}, got {v!r}")
    params.update({k: v for k, v in opts.items()})
    from fastspec.kernels.bins import EXACT_POWERS, bin_peaks

    # one linear pass per spectrum (m/z ascending, as stored and as Spectra keep them); the sort-based
    # version below took 4.4 s for a 2.4M library's postings, and stays for peaks out of order and
    # for powers numpy computes with pow()
    fast = None
    if intensity_power in EXACT_POWERS and mz_power in (0.0,) + EXACT_POWERS:
        fast = bin_peaks(offsets, mz, inten, pmz, bw, opts["max_mz"], opts["base_peak"], opts["precursor_peak"],
                         mz_power, intensity_power, threads=threads)
    if fast is not None:
        off, bins, summed = fast
        return Prepared("binned_cosine", off, bins, summed, _norms(off, summed, threads), pmz, tol, params)
    n = offsets.shape[0] - 1
    counts = np.diff(offsets)
    seg = np.repeat(np.arange(n, dtype=np.int64), counts)
    val = inten.copy()
    if opts["base_peak"] is not None and val.size:
        mx = np.zeros(n)
        np.maximum.at(mx, seg, val)
        val = val / np.where(mx[seg] > 0, mx[seg], 1.0) * opts["base_peak"]
    pos_mz = mz
    if opts["precursor_peak"] is not None:
        has = np.isfinite(pmz)
        pseg = np.flatnonzero(has)
        seg = np.concatenate([seg, pseg])
        pos_mz = np.concatenate([mz, pmz[pseg]])
        val = np.concatenate([val, np.full(pseg.shape[0], float(opts["precursor_peak"]))])
    val = _weights(pos_mz, val, mz_power, intensity_power)
    b = np.floor(pos_mz / bw)
    ok = b >= 0
    if opts["max_mz"] is not None:
        ok &= b < math.floor(opts["max_mz"] / bw)  # 0.25 Da bins below 2000: 8000 bins
    seg, b, val = seg[ok], b[ok].astype(np.int64), val[ok]
    key = seg * (int(b.max()) + 1 if b.size else 1) + b
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=val, minlength=uniq.shape[0])
    width = int(b.max()) + 1 if b.size else 1
    useg, ubin = uniq // width, uniq % width
    off = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(useg, minlength=n), out=off[1:])
    return Prepared("binned_cosine", off, ubin.astype(np.float64), summed, _norms(off, summed), pmz, tol, params)


def _weights(mz: np.ndarray, inten: np.ndarray, mz_power: float, intensity_power: float) -> np.ndarray:
    """``mz**mz_power * intensity**intensity_power`` as matchms computes it: ``ndarray ** scalar`` takes
    numpy's exact shortcuts (1: copy, 0.5: sqrt, 2: square) where ``np.power`` runs pow() per peak."""
    w = inten if intensity_power == 1.0 else inten ** intensity_power  # Prepared arrays are read-only views
    return w if mz_power == 0.0 else (mz ** mz_power) * w


def _norms(offsets: np.ndarray, w: np.ndarray, threads: int | None = None) -> np.ndarray:
    from fastspec.kernels.peaks import l2_norms_csr

    return l2_norms_csr(offsets, w, threads=threads)


def _offsets_from_mask(offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    n = offsets.shape[0] - 1
    seg = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    off = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(seg[keep], minlength=n), out=off[1:])
    return off


def _finite(v, name: str) -> float:
    """``v`` as a finite float; ParameterError for anything else. A string ("0.5" from a config file) or a bool is
    a mistake, not 0.5 / 1.0 (search refuses them too)."""
    if isinstance(v, (str, bytes, bool, np.bool_)):
        raise ParameterError(f"{name}={v!r}: expected a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={v!r}: expected a number") from None
    if not math.isfinite(f):  # (name=value: a command's message names its option, see cli._common.as_options)
        raise ParameterError(f"{name}={v!r}: must be finite")
    return f


_FLAGS = ("flash", "hybrid", "neutral_loss")


def _check_prepared_args(side: Prepared, metric, tolerance, mz_power, intensity_power, params) -> None:
    """ParameterError when arguments given with a Prepared side ask for other settings than it was prepared
    with (they would be ignored: the prepared arrays are what is scored)."""
    asked = []
    if metric is not None and canonical_metric(metric) != side.metric:
        asked.append(f"metric={metric!r} (prepared: {side.metric!r})")
    if tolerance is not None:
        tol = parse_tolerance(tolerance)
        if tol.unit != side.tolerance.unit or not math.isclose(tol.value, side.tolerance.value, rel_tol=1e-6):
            asked.append(f"tolerance={tolerance!r}")
    for name, value in (("mz_power", mz_power), ("intensity_power", intensity_power)):
        if value is not None and name in side.params and _finite(value, name) != side.params[name]:
            asked.append(f"{name}={value!r}")
    # options (flags are recorded only when set; one another metric has no effect on is asked for too)
    asked += [f"{k}={v!r}" for k, v in params.items() if side.params.get(k, False if k in _FLAGS else None) != v
              and not (v is None or (v is False and k in _FLAGS))]
    if asked:
        raise ParameterError(f"{', '.join(asked)}: not what the Prepared spectra were prepared with; prepare "
                             "them again with these settings (or leave them out)")


def _pair_up(a, b, metric, tolerance, mz_power, intensity_power, params, threads) -> tuple[Prepared, Prepared]:
    from fastspec.kernels._config import check_threads

    check_threads(threads)
    for side in (a, b):
        if isinstance(side, Prepared):
            _check_prepared_args(side, metric, tolerance, mz_power, intensity_power, params)
    given = [side for side in (a, b) if isinstance(side, Prepared)]
    if len(given) == 1 and b is not None:
        # a raw side is prepared as the prepared one was, in what the call leaves out (with the metric left out
        # it was prepared as cosine, then refused as a mismatch); what the call gives stays, so that a setting
        # the check above lets through (flash=False against a flash side) still ends in the mismatch below
        done = given[0]
        metric = done.metric if metric is None else metric
        tolerance = done.tolerance if tolerance is None else tolerance
        mz_power = done.params.get("mz_power", 0.0) if mz_power is None else mz_power
        intensity_power = done.params.get("intensity_power", 1.0) if intensity_power is None else intensity_power
        params = {**{k: v for k, v in done.params.items() if k not in ("mz_power", "intensity_power")}, **params}
    metric = "cosine" if metric is None else metric
    mz_power = 0.0 if mz_power is None else mz_power
    intensity_power = 1.0 if intensity_power is None else intensity_power
    try:
        pa = prepare(a, metric, tolerance, mz_power, intensity_power, threads=threads, **params)
        pb = pa if b is None or b is a else prepare(b, metric, tolerance, mz_power, intensity_power, threads=threads,
                                                    **params)
    except TypeError as e:  # an unknown keyword: a user mistake, not a crash
        raise ParameterError(str(e)) from None
    if pa.metric != pb.metric or pa.tolerance != pb.tolerance or pa.params != pb.params:
        raise ParameterError("both sides must be prepared with the same metric, tolerance and parameters")
    return pa, pb


def _kernel_args(pa: Prepared, pb: Prepared) -> tuple:
    tol = pa.tolerance
    return (*pa.kernel_args(), *pb.kernel_args(), float(tol.da), float(tol.ppm))


# ================================================================================== public API
@interruptible
def score_pairs(a: Spectra | Prepared, b: Spectra | Prepared, metric: str | None = None, tolerance: Any = None,
                mz_power: float | None = None, intensity_power: float | None = None, *, threads: int | None = None,
                **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Score ``a[i]`` against ``b[i]`` for every i.

    Parameters
    ----------
    a, b : Spectra, Prepared, or lists of matchms.Spectrum
        Same length n.
    metric, tolerance, mz_power, intensity_power, **params
        See :func:`prepare` (defaults: ``"cosine"``, the metric's tolerance, 0.0, 1.0). With a Prepared input they
        may be left out, and a raw other side is then prepared with its settings; given, they must be what the
        Prepared input was prepared with (ParameterError otherwise: they would be ignored).
    threads : int, optional
        Numba threads (default: ``NUMBA_NUM_THREADS``).

    Returns
    -------
    scores : ndarray, float64 (n,)
    matches : ndarray, int32 (n,)
        Matched peaks (binned: shared bins).
    """
    from fastspec.kernels._config import threads as _threads
    from fastspec.kernels._config import n_blocks as _n_blocks
    from fastspec.kernels.topk import pairs_kernel

    pa, pb = _pair_up(a, b, metric, tolerance, mz_power, intensity_power, params, threads)
    if len(pa) != len(pb):
        raise ParameterError(f"score_pairs needs equal lengths, got {len(pa)} and {len(pb)}")
    idx = np.arange(len(pa), dtype=np.int64)
    with _threads(threads):
        return pairs_kernel.pick(len(pa), threads)(pa.kind, idx, idx, *_kernel_args(pa, pb), pa.max_peaks,
                                                   pb.max_peaks, _n_blocks(len(pa)))


@interruptible
def score_matrix(a: Spectra | Prepared, b: Spectra | Prepared | None = None, metric: str | None = None,
                 tolerance: Any = None, mz_power: float | None = None, intensity_power: float | None = None, *,
                 k: int | None = None, threads: int | None = None, min_matches: int = 0,
                 min_score: float = -np.inf, **params: Any):
    """All-against-all scores, dense or top-k per row.

    Parameters
    ----------
    a : Spectra, Prepared or a list of matchms.Spectrum, n spectra (rows)
    b : Spectra, Prepared or a list of matchms.Spectrum, m spectra (columns); ``None`` means ``a``
    metric, tolerance, mz_power, intensity_power, **params
        See :func:`prepare` (metric default ``"cosine"``), as for :func:`score_pairs`.
    k : int, optional
        Keep the best ``k`` columns per row; never allocates n x m.
    threads : int, optional
        Numba threads (default: ``NUMBA_NUM_THREADS``).
    min_matches, min_score
        Top-k only: minimum matched peaks and score for a column to be listed.

    Returns
    -------
    Without ``k``: ``scores`` float64 (n, m), ``matches`` int32 (n, m).
    With ``k``: ``scores`` float64 (n, k), ``indices`` int64 (n, k) (-1: fewer than k listed),
    ``matches`` int32 (n, k); rows sorted by score, ties to the lowest column.

    Notes
    -----
    From 16 rows of A, cosine, modified cosine and neutral-loss cosine go through a peak index over B
    (:mod:`fastspec.kernels.join`) rather than one walk per pair; the results are the same, bit for bit.
    """
    from fastspec.kernels import join
    from fastspec.kernels._config import threads as _threads
    from fastspec.kernels._config import n_blocks as _n_blocks
    from fastspec.kernels.topk import dense_kernel, topk_kernel

    if k is None and (min_matches or min_score != -np.inf):
        raise ParameterError("min_matches / min_score filter the top-k: give k as well (the dense matrix has "
                             "every score)")
    if isinstance(min_matches, bool) or not isinstance(min_matches, (int, np.integer)):  # 2.7 or "3": a mistake
        raise ParameterError(f"min_matches must be an integer, got {min_matches!r}")
    try:
        min_matches, min_score = int(min_matches), float(min_score)
    except (TypeError, ValueError):
        raise ParameterError(f"min_score must be a number, got {min_score!r}") from None
    if min_matches < 0 or math.isnan(min_score):
        raise ParameterError(f"min_matches must be >= 0 and min_score not NaN, got {min_matches}, {min_score}")
    pa, pb = _pair_up(a, b, metric, tolerance, mz_power, intensity_power, params, threads)
    size = len(pa) * len(pb)
    with _threads(threads):
        n_blocks = _n_blocks(len(pa))  # blocks of A's rows, the kernels' prange (for the threads set here)
        if join.joinable(pa.kind, len(pa), pa.max_peaks, pb.max_peaks):  # whole of B: through a peak index
            args = (pa.kind, *_kernel_args(pa, pb))
            if k is None:
                return join.dense_join_kernel.pick(size, threads, n_blocks)(*args, pa.max_peaks, pb.max_peaks,
                                                                            n_blocks)
            return join.topk_join_kernel.pick(size, threads, n_blocks)(
                *args, _check_k(k, len(pb)), int(min_matches), float(min_score), pa.max_peaks, pb.max_peaks, n_blocks)
        if k is None:
            return dense_kernel.pick(size, threads, n_blocks)(pa.kind, *_kernel_args(pa, pb), pa.max_peaks,
                                                              pb.max_peaks, n_blocks)
        k = _check_k(k, len(pb))
        rows = np.arange(len(pa), dtype=np.int64)
        empty = np.zeros(1, np.int64)
        kernel = topk_kernel.pick(size, threads, n_blocks)
        return kernel(pa.kind, rows, empty, empty, True, np.zeros(0, np.int64), np.zeros(0), *_kernel_args(pa, pb), k,
                      int(min_matches), float(min_score), pa.max_peaks, pb.max_peaks, n_blocks)


def topk_candidates(queries: Prepared, library: Prepared, cand_offsets: np.ndarray, cand_ids: np.ndarray, k: int, *,
                    metric: str | None = None, threads: int | None = None, min_matches: int = 0,
                    min_score: float = -np.inf, labels: np.ndarray | None = None,
                    cand_bounds: np.ndarray | None = None, **_ignored: Any):
    """Top-k of each query over its own candidate list (CSR).

    Parameters
    ----------
    queries : Prepared, nq spectra
    library : Prepared, prepared with the same metric and parameters
    cand_offsets : ndarray, int64 (nq+1,)
    cand_ids : ndarray, int64
        Library rows; query ``r``'s candidates are ``cand_ids[cand_offsets[r]:cand_offsets[r+1]]``.
    k : int
    metric : str, optional
        Checked against the prepared metric when given. Other keyword arguments (the preparation
        parameters, passed through by callers) are ignored: the prepared arrays already hold them.
    labels : ndarray, int64 (len(library),), optional
        What to report for each library spectrum instead of its index, and the tie-break order (lowest
        label first): for a library stored in another order than the one callers rank by.
    cand_bounds : ndarray, float64 (len(cand_ids),), optional
        Upper bounds of the candidates' scores, non-increasing within each query (e.g. from
        :func:`fastspec.kernels.fragment.search_bounds`): a query's scoring stops once its k-th score
        beats every bound left. The hits are the same as without them when the bounds hold.

    Returns
    -------
    scores float64 (nq, k), indices int64 (nq, k) into ``library`` or ``labels`` (-1 none), matches int32 (nq, k).
    """
    from fastspec.kernels._config import threads as _threads
    from fastspec.kernels._config import n_blocks as _n_blocks
    from fastspec.kernels.topk import topk_kernel

    if metric is not None and canonical_metric(metric) != queries.metric:
        raise ParameterError(f"queries were prepared for {queries.metric!r}, not {metric!r}")
    if queries.metric != library.metric or queries.params != library.params:
        raise ParameterError("queries and library must be prepared with the same metric and parameters")
    k = _check_k(k)
    off = np.ascontiguousarray(cand_offsets, np.int64)
    ids = np.ascontiguousarray(cand_ids, np.int64)
    if off.shape[0] != len(queries) + 1 or (off.shape[0] and off[-1] != ids.shape[0]):
        raise ParameterError("cand_offsets must have len(queries)+1 entries ending at len(cand_ids)")
    if ids.size and (ids.min() < 0 or ids.max() >= len(library)):
        raise ParameterError("candidate id out of range")
    if labels is None:
        labels = np.zeros(0, np.int64)  # the kernel's "no labels"
    else:
        labels = np.asarray(labels)
        if labels.dtype != np.int64 or labels.ndim != 1 or labels.shape[0] != len(library):
            raise ParameterError("labels must be int64 with one entry per library spectrum")
    if cand_bounds is None:
        cb = np.zeros(0)
    else:
        cb = np.ascontiguousarray(cand_bounds, np.float64)
        if cb.shape != ids.shape:
            raise ParameterError("cand_bounds must have one entry per candidate")
        rises = np.flatnonzero(cb[1:] > cb[:-1]) + 1  # allowed only where a query's list starts
        if rises.shape[0] and not np.isin(rises, off).all():
            raise ParameterError("cand_bounds must not increase within a query's candidates")
    rows = np.arange(len(queries), dtype=np.int64)
    with _threads(threads):
        n_blocks = _n_blocks(len(queries))  # (for the threads set here)
        kernel = topk_kernel.pick(ids.shape[0], threads, n_blocks)
        return kernel(queries.kind, rows, off, ids, False, labels, cb, *_kernel_args(queries, library), k,
                      int(min_matches), float(min_score), queries.max_peaks, library.max_peaks, n_blocks)


def group_candidates(query_keys: np.ndarray, library_keys: np.ndarray, library_mask: np.ndarray | None = None):
    """Candidates sharing a key: for each query, the library rows with the same (non-negative) key.

    Parameters
    ----------
    query_keys : ndarray, int (nq,)
    library_keys : ndarray, int (n,)
        Negative keys (unknown) match nothing.
    library_mask : ndarray, bool (n,), optional
        Only these library rows may be candidates.

    Returns
    -------
    offsets : ndarray, int64 (nq+1,)
    ids : ndarray, int64
        Library rows, ascending within each query.
    """
    return KeyGroups(query_keys, library_keys, library_mask).lists()


class KeyGroups:
    """The candidates of :func:`group_candidates`, counted before they are listed, and listed a run of queries
    at a time (:meth:`chunks`): listed at once, the pairs of a large bucket (a whole polarity's training side
    for every query without a same-formula one, at 2.4M spectra) asked for terabytes.

    Attributes
    ----------
    lengths : ndarray, int64 (nq,)
        Candidates of each query.
    """

    def __init__(self, query_keys: np.ndarray, library_keys: np.ndarray, library_mask: np.ndarray | None = None):
        qk = np.asarray(query_keys, np.int64)
        lk = np.asarray(library_keys, np.int64)
        ok = lk >= 0
        if library_mask is not None:
            ok &= np.asarray(library_mask, bool)
        lrows = np.flatnonzero(ok)
        order = np.argsort(lk[lrows], kind="stable")
        self._rows, sorted_keys = lrows[order], lk[lrows][order]
        self._lo = np.searchsorted(sorted_keys, qk, side="left")
        hi = np.searchsorted(sorted_keys, qk, side="right")
        self.lengths = (np.where(qk >= 0, hi, self._lo) - self._lo).astype(np.int64)

    def lists(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Offsets (int64 (m+1,)) and library rows (int64, ascending within each query) of queries
        ``start:stop``."""
        lo, lengths = self._lo[start:stop], self.lengths[start:stop]
        off = np.zeros(lengths.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=off[1:])
        pos = np.arange(off[-1], dtype=np.int64) - np.repeat(off[:-1] - lo, lengths)
        return off, self._rows[pos]

    def chunks(self, max_pairs: int):
        """``(start, stop, offsets, ids)`` for runs of consecutive queries holding at most ``max_pairs``
        candidates together (a query with more is a run of its own), every query once, in order."""
        n = self.lengths.shape[0]
        ends = np.cumsum(self.lengths)
        start = 0
        while start < n:
            base = int(ends[start - 1]) if start else 0
            stop = max(int(np.searchsorted(ends, base + max_pairs, side="right")), start + 1)
            yield (start, stop, *self.lists(start, stop))
            start = stop


#: k beyond the columns is padding (-1); up to this much of it is allowed, as in library search
_K_PAD_MAX = 10_000


def _check_k(k, n_columns: int | None = None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError(f"k must be a positive integer, got {k!r}")
    if n_columns is not None and k > max(n_columns, _K_PAD_MAX):  # (n, k) outputs: k = 10**9 asks for terabytes
        raise ParameterError(f"k={k} is more than the {n_columns} spectra to choose from")
    return int(k)
