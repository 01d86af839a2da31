"""Fragment-ion and neutral-loss index kernels: exact whole-library top-k through score upper bounds.

The library's peaks are kept twice more, sorted: by fragment m/z (the *fragment index*) and by neutral
loss ``precursor_mz - mz`` (the *neutral-loss index*), each in groups (the library's polarities, each
group sorted) of which a query scans only those it may match, each entry with its spectrum and a scan
weight ``w``:
the L2-normalised cosine weight, or the square root of the sum-normalised entropy weight. Query peaks
get the matching weights ``qv``, so both metrics are bounded by the same products: cosine pairs add
``q*l``; an entropy pair adds ``g(q,l) = (f(q+l) - f(q) - f(l)) / 2 <= sqrt(q*l)`` (f(x) = x log2 x,
and the binary entropy H(p) <= 2 sqrt(p(1-p))). Any one-to-one peak assignment (greedy cosine, modified
cosine, entropy) uses a subset of the pairs within tolerance, so summing ``qv*w`` over every library
peak in the window of every query peak (and, for analog search, every neutral loss in the window of
every query neutral loss) bounds the exact score from above; scan windows are widened by float32 slack
and cover any Da/ppm convention (hybrid search's neutral-loss windows also the float32 rounding of its
losses, which is relative to the precursor m/z, :func:`_loss_half_width`), so the bound never misses a
pair an exact kernel matches.

Pruning (:func:`search_bounds`)
-------------------------------
* Query peaks are scanned by decreasing mass per window entry, ``mass / (c0 + entries)``
  (:data:`_ORDER_SHARE`); the bounds hold for any order. A spectrum the scanned peaks do not reach
  scores at most what the unscanned peaks can add: ``sqrt(Q)`` for cosine (Cauchy-Schwarz, Q their squared mass),
  ``g(Q, 1)`` for entropy (g is jointly concave and 1-homogeneous). Scanning stops once that is below
  ``theta``, a lower bound of the k-th best final score.
* ``theta`` comes from the caller (e.g. exact scores of a first round), from exact scores of the
  spectra with the query's precursor m/z (unless the caller's is already high), and from checkpoints
  over the best partial sums. Lower bounds
  count only pairs every exact kernel matches and need *clean* spectra (peaks more than 2 windows apart
  on both sides), where the pairs within tolerance are already a one-to-one assignment.
* A spectrum first reached through a peak of weight ``w`` scores at most ``qv*w + sqrt(Q_after)*
  sqrt(1 - w**2)`` (entropy: ``g(q, l) + g(Q_after, 1 - l)``); outside the band of weights where that
  reaches ``theta`` the entry is passed over (neutral losses and unclean spectra included), and with
  clean spectra the spectrum is ruled out for later peaks too (except at the last peak scanned for all
  spectra: the later scans read reached spectra only). On the first scanned peak the entries outside
  the band are passed over without reading any per-spectrum state, found by one-byte codes of the
  weights (:func:`quantize_weights`) rather than the float32 weights themselves.
* Reached spectra that can still beat ``theta`` when scanning stops have their bounds completed: the
  remaining peaks are scanned one at a time for them only (their sums moved to compact rows, found by
  rank in the live bitmap, when there are many), and whenever what the unscanned mass can add
  has fallen by a fifth the spectra it can no longer lift to ``theta`` are dropped; once completing the
  survivors from their own peaks costs less than scanning the rest, they are completed that way (one
  pass over each survivor's peaks against a bitmap of the query's windows). Entropy bounds of a
  4M shortlist are then tightened to sums of ``g`` over best partners.

The caller scores the ``M`` candidates with the best bounds exactly and grows ``M`` until the k-th exact
score beats the best bound left out, so results equal a brute-force search (ties: lowest library row).
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange
from numba.cpython.unsafe.numbers import trailing_zeros

from fastspec.kernels._config import NJIT, await_compiled, pjit, threads as _threads
from fastspec.kernels._intrinsics import prefetch_row
from fastspec.kernels._memory import huge_zeros as hz
from fastspec.kernels.peaks import check_offsets
from fastspec.kernels.tanimoto import _popcount

KIND_PRODUCT = 0  #: cosine-like: contribution q*l of L2-normalised weights
KIND_ENTROPY = 1  #: entropy: (f(q+l) - f(q) - f(l)) / 2 with f(x) = x log2 x, sum-normalised weights

#: Relative + absolute slack added to bounds before comparing with exact float64 scores (float32 sums).
BOUND_RTOL = 1e-4
BOUND_ATOL = 1e-6
#: Cost of completing one survivor, per library peak it has (twice that with neutral losses) plus per
#: query peak left, in fragment-index entries scanned: a scanned entry streams through sorted arrays,
#: a completion first waits for the survivor's peaks, scattered over the library. Earlier, with a binary
#: search per query peak, 10 beat 1, 4 and 25. With completion as one pass over the survivor's peaks
#: (2.4M MassBank-grown library, 1 thread, interleaved in one process, median ratios against 10): 20 ->
#: open cosine 0.87, entropy 0.94, analog 0.99; 30 -> 0.84 / 0.96 / 1.03; 2, 3, 5 -> 1.02-1.45.
_COMPLETE_COST = 20.0
#: Phase B drops spectra again once what the unscanned query peaks can add fell to this share of its
#: value at the last drop (0.6 and 0.9 measured no better).
_DROP_AFTER = 0.8
#: From this many spectra reached when the early stop comes, their accumulators are moved to rows
#: ``0..ns`` of a compact array (scan-id order) for the drops and the survivors-only scans; an entry's
#: row is its rank among the reached spectra, read from the bitmap and a per-word prefix count, which
#: stay in the core's cache, where the rows of ``work`` (8 bytes per library spectrum: 19 MB at 2.4M)
#: miss it. 2.4M MassBank-grown library, 1 thread, 300 queries, same hits, interleaved kernel time
#: against scattered rows: open entropy 0.82-0.91x (novel compounds) / 0.87x (library copies), open
#: cosine 0.91x, analog 0.91x; moved after the first drop instead of before it, against scattered rows:
#: open entropy 0.91x, open cosine 0.86-1.0x.
_COMPACT_MIN = 4096
#: Least first partial sum of a reached spectrum (``work[c, 0] > 0`` marks it reached; bounds only grow).
_REACHED = 1e-30
#: Phase A's scans prefetch the ``work`` row of the entry this many candidates ahead
#: (:func:`fastspec.kernels._intrinsics.prefetch_row`). 2.4M MassBank-grown library, 1 thread, 300
#: novel-compound queries, same hits, interleaved kernel time against none: 16 -> open entropy
#: 0.75-0.78x, open cosine 0.82x, analog 0.74x; 32 -> entropy 0.76-0.77x; the whole chunk's rows
#: before its loop -> 0.88x. The same in the survivors-only scans (rows not compacted) and in the
#: drops measured 0.97-1.08x (no gain).
_PREFETCH = 16
#: Completion's hashed cell bitmap of the query's peak windows: 1,024 words (65,536 cells) per side,
#: 16 kB for both, stays in L1 while survivors stream through; collisions only cost a candidate lookup.
_LOOKUP_WORDS = 1024
#: Slack of the neutral-loss cells over float64 rounding of ``v - (pc - qpmz)`` (m/z below 1e5).
_LOOKUP_EPS = 1e-6
#: Window scans take index entries in chunks of this many (16 kB of int32 positions, in L1): a
#: branch-free pass collects the entries worth a look, a second pass handles only those.
_SCAN_CHUNK = 4096
#: The window passes prefetch the entries this many bytes ahead (as many entries of one-byte codes, a
#: quarter as many of int32 scan ids):
#: index arrays are memory maps of 4 kB pages, at whose boundaries the hardware prefetcher stops, so
#: a plain pass over a dense window waits for memory at every page. 2.4M library, live-spectrum pass
#: over 100k-entry windows read once: ~1.8 ns per entry without, 0.8 / 0.65 / 0.6 with 1 / 4 / 8 kB.
_STREAM_AHEAD = 8192
#: Scan order: query peaks by mass / (c0 + entries in their windows), c0 this share of the fragment
#: index (3,000 entries at 2.4M), so that among peaks of sparse windows the heaviest come first, and a
#: peak of a dense window comes after lighter ones that cover the mass the stopping rule needs; when
#: it must still be scanned, the mass left after it is smaller, so its alive band is narrower. 2.4M
#: MassBank-grown library, 1 thread, identical hits, interleaved median ratios of kernel time against
#: heaviest first: c0 = 1,000 / 3,000 / 10,000 / 30,000 -> open cosine 0.87 / 0.86 / 0.87 / 0.89,
#: entropy 0.72 / 0.70 / 0.73 / 0.77, analog 0.94 / 0.93 / 0.93 / 0.95. Deferring further the peaks
#: holding a quarter to three quarters of the query's entries, after all others: 1.00-0.87 (no better).
_ORDER_SHARE = 7e-5
#: A caller's threshold from which the kernel does not look for a better one in the query's precursor
#: window (lower sums of up to 256 spectra there, each a scattered merge: 16% of the kernel's time for
#: open cosine on library copies, whose callers' exact 0.01 Da window already gave ~0.95). 2.4M
#: MassBank-grown library, 1,000 queries, 1 thread, 11 interleaved rounds, identical candidates: open
#: cosine copies 0.90x kernel time, open entropy copies 1.00x, novel compounds 0.99x; skipping whenever
#: the caller gave any threshold: copies 0.85x but novel open cosine 1.06x (their window raised it).
_THETA_GIVEN_ENOUGH = 0.8


# ---------------------------------------------------------------------------------------- peak weights
#: Smallest normal float32: the least weight a peak with a positive weight is stored with (see _stored).
_F32_TINY = float(np.finfo(np.float32).tiny)


@numba.njit(inline="always", **NJIT)
def _stored(x):
    """A weight as stored in float32: a positive one below the smallest normal float32 (a weight ratio
    under ~1e-38 within a spectrum: raw intensities, large ``intensity_power``) keeps that smallest normal,
    as it would otherwise round to 0 (or a subnormal, which processors may flush to 0) and the bound
    kernels pass weightless peaks over, so a pair the exact kernels match (``min_matches``) went uncounted.
    Bounds only grow by it; lower bounds gain at most ~1e-38 per pair, far inside their float32 slack."""
    return _F32_TINY if 0.0 < x < _F32_TINY else x


@numba.njit(inline="always", **NJIT)
def _stored_peak(x):
    """A cosine weight as stored: :func:`_stored`, and a zero-intensity peak (weight 0 at
    ``intensity_power > 0``) gets the smallest normal float32 too, since the exact kernels, like matchms,
    count its pairs as matched peaks (``min_matches``)."""
    return _F32_TINY if 0.0 <= x < _F32_TINY else x


def _cosine_weights_py(offsets, mz, intensity, mz_power, intensity_power, out):
    n = offsets.shape[0] - 1
    # the default powers (0, 1) give the intensity itself (x ** 0.0 == 1.0 and x ** 1.0 == x exactly): a
    # loop of their own, as a ternary around pow() became a select that called pow() for every peak anyway
    plain = mz_power == 0.0 and intensity_power == 1.0
    for i in prange(n):
        a, b = offsets[i], offsets[i + 1]
        s = 0.0
        if plain:
            for p in range(a, b):
                s += np.float64(intensity[p]) * np.float64(intensity[p])
        else:
            for p in range(a, b):
                w = _cos_weight(mz, intensity, p, mz_power, intensity_power)
                s += w * w
        scale = 1.0
        if s == np.inf and not plain:
            # w * w overflowed (weights past ~1e154: float32-max intensities at intensity_power 4), making
            # every weight 0 where the exact kernels, summing fewer peaks (below the precursor), score: the
            # norm again, in units of the largest weight
            for p in range(a, b):
                scale = max(scale, _cos_weight(mz, intensity, p, mz_power, intensity_power))
            s = 0.0
            for p in range(a, b):
                w = _cos_weight(mz, intensity, p, mz_power, intensity_power) / scale
                s += w * w
        norm = np.sqrt(s)
        if not norm > 0:
            for p in range(a, b):
                out[p] = 0.0
        elif plain:
            for p in range(a, b):
                out[p] = _stored_peak(np.float64(intensity[p]) / norm)
        else:
            for p in range(a, b):
                out[p] = _stored_peak(_cos_weight(mz, intensity, p, mz_power, intensity_power) / scale / norm)


@numba.njit(inline="always", **NJIT)
def _cos_weight(mz, intensity, p, mz_power, intensity_power):
    return (mz[p] ** mz_power) * (np.float64(intensity[p]) ** intensity_power)


def _entropy_weights_py(offsets, intensity, weighted, out):
    n = offsets.shape[0] - 1
    for i in prange(n):
        a, b = offsets[i], offsets[i + 1]
        total = 0.0
        for p in range(a, b):
            total += max(np.float64(intensity[p]), 0.0)
        if total <= 0:
            for p in range(a, b):
                out[p] = 0.0
        else:
            _entropy_weights_one(intensity, a, b, total, weighted, out)


@numba.njit(inline="always", **NJIT)
def _entropy_weights_one(intensity, a, b, total, weighted, out):
    ent = 0.0
    for p in range(a, b):
        x = max(np.float64(intensity[p]), 0.0) / total
        if x > 0:
            ent -= x * np.log(x)
    power = 1.0
    if weighted and ent < 3.0:
        power = 0.25 + 0.25 * ent
    s2 = 0.0
    for p in range(a, b):
        x = max(np.float64(intensity[p]), 0.0) / total
        s2 += x ** power if x > 0 else 0.0
    for p in range(a, b):
        x = max(np.float64(intensity[p]), 0.0) / total
        out[p] = _stored((x ** power) / s2) if x > 0 else 0.0


def _below_precursor_py(starts, ends, mz, w, zero, precursor_mz, out, scale):
    n = starts.shape[0]
    for i in prange(n):
        a, b, lim = starts[i], ends[i], precursor_mz[i]
        s = 0.0
        clamped = False
        for p in range(a, b):
            if mz[p] < lim and not zero[p]:  # (a NaN precursor keeps nothing)
                s += np.float64(w[p]) * np.float64(w[p])
                clamped |= 0.0 < w[p] <= _F32_TINY
        # a weight stored at the smallest normal float32 stands for any smaller one (_stored): their ratios
        # are lost, so renormalising could understate a peak's share; such a spectrum (weights 1e38 apart)
        # gets weight 1, every peak's most, instead (scale inf). A zero-intensity peak's stands for 0
        # (_stored_peak): it is left out of the norm, and renormalised stays positive (counted), a bound of 0
        f = np.inf if clamped else (1.0 / np.sqrt(s) if s > 0 else 0.0)
        scale[i] = f
        for p in range(a, b):
            out[p] = _renormalised(w[p], f) if mz[p] < lim else 0.0


@numba.njit(inline="always", **NJIT)
def _renormalised(w, f):
    """``w * f`` as stored, at most 1 (no renormalised weight exceeds it); 1 for a scale of inf."""
    if f == np.inf:
        return 1.0
    return min(_stored(np.float64(w) * f), 1.0)


def _scaled_entries_py(vals, spec, w, scale, out):
    for e in prange(vals.shape[0]):
        # an entry of a peak below its precursor has a loss >= 0 however it was rounded; others may too,
        # and keep a weight they need not (a looser bound, never a missed pair)
        out[e] = _renormalised(w[e], scale[spec[e]]) if vals[e] >= 0 else 0.0


# parallel builds for libraries, serial ones for a few query spectra (see fastspec.kernels._config.pjit)
_cosine_weights = pjit(_cosine_weights_py)
_entropy_weights = pjit(_entropy_weights_py)
_below_precursor = pjit(_below_precursor_py)
_scaled_entries = pjit(_scaled_entries_py)


def below_precursor_weights(starts: np.ndarray, ends: np.ndarray, mz: np.ndarray, w: np.ndarray,
                            precursor_mz: np.ndarray, threads: int | None = None,
                            intensity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine weights renormalised over each spectrum's peaks below its precursor m/z, the weights of
    neutral-loss cosine (matchms' ``NeutralLossesCosine`` with ``ignore_peaks_above_precursor``), as
    upper bounds of them; the other peaks get 0. Equal up to float32 rounding, except in a spectrum with a
    weight stored at the smallest normal float32 (a ratio of 1e38 or more to its largest, see
    ``_stored``), whose peaks below the precursor all get 1.

    Parameters
    ----------
    starts, ends : ndarray, int64 (n,)
        Each spectrum's peaks ``[starts[i], ends[i])`` in ``mz`` / ``w``.
    mz : ndarray, float64 (P,)
        Peak m/z.
    w : ndarray, float32 (P,)
        L2-normalised cosine weights (:func:`peak_weights`, kind ``cosine``).
    precursor_mz : ndarray, float64 (n,)
        Precursor m/z (NaN: no peak kept).
    intensity : ndarray, float32 (P,), optional
        The peaks' intensities: a zero one's weight, stored at the smallest normal float32 so that its
        pairs are counted (``_stored_peak``), is then not taken for a clamped one (without them every
        weight of such a spectrum would be 1, a bound as loose as it gets).

    Returns
    -------
    weights : ndarray, float32 (P,)
        ``min(w * scale, 1)`` for peaks with ``mz < precursor_mz``, else 0.
    scale : ndarray, float64 (n,)
        ``1 / sqrt(sum of w**2 over the peaks kept)`` per spectrum (0 when none is kept; inf for a spectrum
        with a clamped weight).
    """
    n = np.asarray(starts).shape[0]
    n_peaks = np.asarray(mz).shape[0]
    out = np.zeros(n_peaks, dtype=np.float32)
    scale = np.empty(n, dtype=np.float64)
    zero = np.zeros(n_peaks, dtype=np.bool_) if intensity is None else np.asarray(intensity) == 0
    with _threads(threads):
        _below_precursor.pick(n, threads)(_ro(starts, np.int64), _ro(ends, np.int64), _ro(mz, np.float64),
                                          _ro(w, np.float32), zero, _ro(precursor_mz, np.float64), out, scale)
    return out, scale


def scaled_entries(values: np.ndarray, spec: np.ndarray, w: np.ndarray, scale: np.ndarray,
                   threads: int | None = None) -> np.ndarray:
    """Neutral-loss index weights rescaled per spectrum: ``min(w[e] * scale[spec[e]], 1)`` (1 where the
    scale is inf) where the loss ``values[e] >= 0``, else 0; float32, one per entry (``values`` float32
    losses, ``spec`` int32 scan ids, ``w`` float32 cosine weights, ``scale`` float64 by scan id, as
    :func:`below_precursor_weights` returns it)."""
    out = np.empty(np.asarray(values).shape[0], dtype=np.float32)
    with _threads(threads):
        _scaled_entries.pick(out.shape[0], threads)(_ro(values, np.float32), _ro(spec, np.int32), _ro(w, np.float32),
                                                    _ro(scale, np.float64), out)
    return out


def peak_weights(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, kind: str,
                 mz_power: float = 0.0, intensity_power: float = 1.0, threads: int | None = None) -> np.ndarray:
    """Per-peak weights used by the bounds.

    Parameters
    ----------
    offsets, mz, intensity : ndarray
        CSR peaks (int64 (n+1,), float64 (p,), float32 (p,)).
    kind : {"cosine", "entropy", "unweighted_entropy"}
        ``cosine``: ``mz**mz_power * intensity**intensity_power`` divided by its L2 norm per spectrum;
        ``entropy``: intensities normalised to sum 1 with the spectral-entropy weighting of Li et al. 2021
        (exponent ``0.25 + 0.25*S`` when the entropy ``S < 3``), renormalised; ``unweighted_entropy``: sum 1.

    Returns
    -------
    ndarray, float32 (p,)
    """
    # written straight as float32 (the kernels only store into ``out``: the same rounding as computing in
    # float64 and casting, without a float64 array twice the size)
    offsets = check_offsets(offsets, mz, intensity)
    out = np.empty(np.shape(mz)[0], dtype=np.float32)
    with _threads(threads):
        _peak_weights(offsets, mz, intensity, kind, mz_power, intensity_power, out, threads)
    return out


def _peak_weights(offsets, mz, intensity, kind, mz_power, intensity_power, out, threads):
    n = offsets.shape[0] - 1
    offsets = _ro(offsets, np.int64)
    if kind == "cosine":
        _cosine_weights.pick(n, threads)(offsets, _ro(mz, np.float64), _ro(intensity, np.float32),
                                         float(mz_power), float(intensity_power), out)
    elif kind in ("entropy", "unweighted_entropy"):
        _entropy_weights.pick(n, threads)(offsets, _ro(intensity, np.float32), kind == "entropy", out)
    else:
        raise ValueError(f"unknown weight kind {kind!r}")


# ---------------------------------------------------------------------------------------- sorted index
def sorted_peak_index(offsets: np.ndarray, values: np.ndarray, rows_ok: np.ndarray | None = None,
                      groups: np.ndarray | None = None, n_groups: int = 1, precursor_mz: np.ndarray | None = None,
                      threads: int | None = None):
    """Sort all peaks of a CSR set by ``values`` (fragment m/z or neutral loss), optionally group by group.

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
    values : ndarray, float (p,)
        One value per peak.
    rows_ok : ndarray of bool (n,), optional
        Spectra to include (e.g. only those with a known precursor for neutral losses); peaks whose value
        is not finite are then left out too.
    groups : ndarray of int (n,), optional
        A group in ``[0, n_groups)`` per spectrum (the library's polarity): the peaks of group 0 come
        first, sorted, then those of group 1, and so on, so a search can skip groups it may not match.
    n_groups : int
    precursor_mz : ndarray, float64 (n,), optional
        Sort by the neutral loss ``precursor_mz[spectrum] - values`` (Da) instead, computed on the fly
        (in float64, then rounded to float32 like the stored values) rather than as a per-peak array.
    threads : int, optional
        numba threads for the final gather.

    Returns
    -------
    order : ndarray, int64 (q,)
        Peak positions in sorted order (to gather weights).
    sorted_values : ndarray, float32 (q,)
        Sorted within each group; ties in peak order.
    spec : ndarray, int32 (q,)
        Spectrum id of each sorted peak.
    bounds : ndarray, int64 (n_groups + 1,)
        Group ``g`` holds entries ``bounds[g]:bounds[g + 1]``.

    Notes
    -----
    One uint64 key per entry -- the value's order-preserving bits above the peak position -- written
    straight into its group's slice, each slice sorted in place by numpy, then unpacked in one pass.
    That allocates 28 bytes per entry (key, order, values, spec, and a peak-to-spectrum map): an index
    build sorts tens of millions of peaks twice, and fresh memory is not free (on this project's
    sandboxed benchmark host a first touch costs seconds per GB).
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError("sorted_peak_index: offsets must be (n+1,)")
    n = offsets.shape[0] - 1
    vals = np.asarray(values)
    if vals.dtype not in (np.float32, np.float64):
        vals = vals.astype(np.float64)
    p_total = int(offsets[-1])
    if p_total >= 1 << 32:  # pragma: no cover - > 4e9 peaks: positions no longer fit the key's low half
        raise ValueError("sorted_peak_index: more than 2**32 peaks")
    use_rows = rows_ok is not None
    rows = np.ascontiguousarray(rows_ok, dtype=np.bool_) if use_rows else np.ones(1, dtype=np.bool_)
    use_pmz = precursor_mz is not None
    pmz = np.ascontiguousarray(precursor_mz, dtype=np.float64) if use_pmz else np.zeros(1)
    # the kernels read these unchecked
    if (offsets[0] != 0 or vals.shape != (p_total,) or (use_rows and rows.shape != (n,))
            or (use_pmz and pmz.shape != (n,))):
        raise ValueError("sorted_peak_index: offsets must start at 0 and end at len(values); rows_ok and "
                         "precursor_mz need one value per spectrum")
    if groups is None or n_groups <= 1:
        n_groups = 1
        grp = np.zeros(n, dtype=np.int8)
    else:
        grp = np.ascontiguousarray(groups, dtype=np.int8)
        if grp.shape != (n,) or (n and (grp.min() < 0 or grp.max() >= n_groups)):
            raise ValueError(f"sorted_peak_index: groups must be {n} values in [0, {n_groups})")
    counts = np.zeros(n_groups, dtype=np.int64)
    _sort_keys(offsets, vals, pmz, use_pmz, rows, use_rows, grp, counts, np.empty(0, np.uint64), False)
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    key = np.empty(int(bounds[-1]), dtype=np.uint64)
    _sort_keys(offsets, vals, pmz, use_pmz, rows, use_rows, grp, bounds[:-1].copy(), key, True)
    for g in range(n_groups):
        key[bounds[g]:bounds[g + 1]].sort()  # numpy's SIMD sort, in place, GIL released
    order = np.empty(key.shape[0], dtype=np.int64)
    sorted_vals = np.empty(key.shape[0], dtype=np.float32)
    spec = np.empty(key.shape[0], dtype=np.int32)
    peak_spec = np.empty(p_total, dtype=np.int32)
    with _threads(threads):
        _peak_spectra.pick(n, threads)(offsets, peak_spec)
        _unpack_keys.pick(key.shape[0], threads)(key, peak_spec, vals, pmz, use_pmz, order, sorted_vals, spec)
    return order, sorted_vals, spec, bounds


@numba.njit(**NJIT)
def _sort_keys(offsets, values, pmz, use_pmz, rows, use_rows, groups, pos, key, fill):
    """Count the entries of each group into ``pos`` (``fill`` False), or write each entry's key at
    ``pos[group]`` and advance it (``fill`` True; ``pos`` then holds the groups' start positions)."""
    f = np.empty(1, dtype=np.float32)
    u = f.view(np.uint32)  # float32 -> its bits, without a scalar bitcast
    for i in range(offsets.shape[0] - 1):
        if use_rows and not rows[i]:
            continue
        g = groups[i]
        for p in range(offsets[i], offsets[i + 1]):
            v = np.float32(pmz[i] - values[p]) if use_pmz else np.float32(values[p])
            if use_rows and not np.isfinite(v):
                continue
            if fill:
                f[0] = v
                b = u[0]
                # order-preserving: negative floats reversed, positive ones above them
                b = ~b if b >> np.uint32(31) else b | np.uint32(0x80000000)
                key[pos[g]] = (np.uint64(b) << np.uint64(32)) | np.uint64(p)
            pos[g] += 1


@pjit
def _peak_spectra(offsets, out):
    for i in prange(offsets.shape[0] - 1):
        for p in range(offsets[i], offsets[i + 1]):
            out[p] = i


@pjit
def _unpack_keys(key, peak_spec, values, pmz, use_pmz, order, sorted_vals, spec):
    for j in prange(key.shape[0]):
        p = np.int64(key[j] & np.uint64(0xFFFFFFFF))
        i = peak_spec[p]
        order[j] = p
        spec[j] = i
        # recomputed exactly as the key was (same float32 rounding), rather than decoded from its bits
        sorted_vals[j] = np.float32(pmz[i] - values[p]) if use_pmz else np.float32(values[p])


# ---------------------------------------------------------------------------------------- bound search
# small helpers are inlined into the kernels: a numba call with array arguments costs atomic refcounts
@numba.njit(inline="always", **NJIT)
def _lower_bound(arr, x, lo, hi):
    """First position in ``arr[lo:hi]`` (sorted) whose value is >= x."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(inline="always", **NJIT)
def _upper_bound(arr, x, lo, hi):
    """First position in ``arr[lo:hi]`` (sorted) whose value is > x."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(inline="always", **NJIT)
def _entry_range(sorted_vals, rng, qrow, g, lo_v, hi_v):
    """Entries ``p0:p1`` of group ``g`` (``rng[qrow, g]``) with values in ``[lo_v, hi_v]``."""
    e0, e1 = rng[qrow, g, 0], rng[qrow, g, 1]
    p0 = _lower_bound(sorted_vals, lo_v, e0, e1)
    return p0, _upper_bound(sorted_vals, hi_v, p0, e1)


# Helpers taking only scalars are plain njit calls, which LLVM inlines anyway; inlined by numba
# (inline="always") every copy went through its type inference and SSA passes again: _search_bounds
# compiled in 65 s on a cold cache, 45 s without, searches as fast (1M library, interleaved).
@numba.njit(**NJIT)
def _xlog2x(x):
    return x * np.log2(x) if x > 0 else 0.0


@numba.njit(**NJIT)
def _contrib(kind, q, l):
    if kind == 0:
        return q * l
    return 0.5 * (_xlog2x(q + l) - _xlog2x(q) - _xlog2x(l))


@numba.njit(**NJIT)
def _mass(kind, w):
    # the part of a unit "norm" a peak carries: cosine pairs obey sum q*l <= ||q||_2 ||l||_2, entropy
    # pairs g(q,l) <= sqrt(q*l) (binary entropy H(p) <= 2 sqrt(p(1-p))), so sum g <= sqrt(sum q) sqrt(sum l)
    return w * w if kind == 0 else w


@numba.njit(**NJIT)
def _half_width(x, tol_da, tol_ppm, base):
    # superset of any Da/ppm convention (query-, library- or mean-based ppm): upper bounds stay valid;
    # the slack covers float32 rounding of the stored m/z and neutral losses
    if tol_ppm > 0:
        p = tol_ppm * 1e-6
        h = p * base / (1.0 - p)
    else:
        h = tol_da
    return h + 3e-7 * abs(x) + 1e-6


@numba.njit(**NJIT)
def _loss_half_width(y, x, qpmz, tol_da, tol_ppm, base, p_big):
    """:func:`_half_width` of the neutral-loss window around ``y = qpmz - x``, widened by ``p_big > 0``
    (the largest library precursor m/z; 0: not widened) for the hybrid entropy kernel, whose losses are
    ``float32(float32(precursor) - float32(mz))`` on both sides (ms_entropy's): those roundings are
    relative to the precursor and m/z (up to 3e-5 Da each near m/z 1,000), not to the loss, which is all
    ``_half_width``'s slack covers. First-order bound with unit roundoff 2**-24 < 7e-8: query side
    ``|pa| + |ma| + |la|``, library side ``|pb| + |mb| + 2 |lb| <= 2 p_big + 3 |lb|``, window ends ``|la|``."""
    h = _half_width(y, tol_da, tol_ppm, base)
    if p_big > 0:
        h += 7e-8 * (abs(qpmz) + abs(x) + 2.0 * p_big + 6.0 * abs(y)) + 1e-6
    return h


@numba.njit(**NJIT)
def _side_window(side, x, pmz, tol_da, tol_ppm, nl_base, p_big):
    """Scan window of query peak ``x``: its fragment window (side 0) or its neutral-loss window (side 1)."""
    if side == 0:
        h = _half_width(x, tol_da, tol_ppm, x)
        return x - h, x + h
    y = pmz - x
    hn = _loss_half_width(y, x, pmz, tol_da, tol_ppm, max(nl_base, x), p_big)
    return y - hn, y + hn


@numba.njit(**NJIT)
def _certain(a, b, tol_da, tol_ppm):
    # subset of any convention: pairs every exact kernel matches (lower bounds stay valid). The margin
    # mirrors _half_width's slack: the entropy kernels compare float32 m/z (each rounded by up to
    # 6e-8 relative) against a float32 tolerance, so a float64 difference just inside the tolerance
    # can be just outside it there
    if tol_ppm > 0:
        lim = tol_ppm * 1e-6 * min(a, b)
    else:
        lim = tol_da
    return abs(a - b) <= lim * (1.0 - 1e-6) - 3e-7 * max(abs(a), abs(b)) - 1e-6


@numba.njit(**NJIT)
def _rest(kind, q_mass, l_mass):
    """Most that query peaks of total mass ``q_mass`` can add against library peaks of total mass
    ``l_mass``: sqrt(Q*L) for cosine (Cauchy-Schwarz); g(Q, L) for entropy (g is jointly concave and
    1-homogeneous, so a sum of g over pairs is at most g of the sums)."""
    if q_mass <= 0 or l_mass <= 0:
        return 0.0
    if kind == 0:
        return np.sqrt(q_mass * l_mass)
    return _contrib(1, q_mass, l_mass)


@numba.njit(**NJIT)
def _inflate(x):
    return x * (1.0 + BOUND_RTOL) + BOUND_ATOL


@numba.njit(**NJIT)
def _alive_band(kind, q, rest_mass, theta):
    """Scan weights ``w`` a spectrum first reached through this query peak may have and still reach theta.

    The query peak has weight ``q`` (cosine: L2-normalised; entropy: sum-normalised) and the peaks not
    scanned yet mass ``rest_mass``. An assignment that pairs this peak with a library peak of weight ``l``
    (scan weight ``w``: ``l`` for cosine, ``sqrt(l)`` for entropy) and no earlier query peak with
    anything scores at most ``F(l) = c(q, l) + R(rest, 1 - mass(l))`` (:func:`_contrib`, :func:`_rest`;
    assignments are one-to-one, so the other pairs use the rest of the library mass), concave in ``w``
    (cosine: ``q*w + sqrt(rest)*sqrt(1 - w**2)``) or in ``l`` (entropy: a sum of concave functions), so
    ``{F >= theta}`` is an interval. Returns ``(w_lo, w_hi)``, widened so that rounding only keeps more.
    """
    t = (theta - BOUND_ATOL) / (1.0 + BOUND_RTOL)  # _inflate(F) >= theta  <=>  F >= t
    if not t > 0:
        return -1.0, 2.0
    if kind == 0:
        r = np.sqrt(max(rest_mass, 0.0))
        s = q * q + r * r
        if s <= 0 or t * t > s:  # the most any w reaches is sqrt(s)
            return 2.0, -1.0
        d = r * np.sqrt(s - t * t)
        lo = -1.0 if r >= t else (t * q - d) / s  # F(0) = r, F(1) = q
        hi = 2.0 if q >= t else (t * q + d) / s
        return lo - 1e-7, hi + 1e-7
    # entropy: F'(l) = (log2((q + l) / l) - log2((R + 1 - l) / (1 - l))) / 2 vanishes at l = q / (q + R);
    # bisection on each side for the ends of {F >= t}
    top = q / (q + rest_mass) if rest_mass > 0 else 1.0
    if _entropy_first(q, rest_mass, top) < t:
        return 2.0, -1.0
    lo, hi = -1.0, 2.0
    if _entropy_first(q, rest_mass, 0.0) < t:
        lo = np.sqrt(_entropy_edge(q, rest_mass, t, 0.0, top, True)) - 1e-7
    if _entropy_first(q, rest_mass, 1.0) < t:
        hi = np.sqrt(_entropy_edge(q, rest_mass, t, top, 1.0, False)) + 1e-7
    return lo, hi


@numba.njit(**NJIT)
def _entropy_first(q, rest_mass, l):
    """Entropy bound of a spectrum first reached with library weight ``l`` (see :func:`_alive_band`)."""
    return _contrib(1, q, l) + _rest(1, rest_mass, 1.0 - l)


@numba.njit(**NJIT)
def _entropy_edge(q, rest_mass, t, a, b, rising):
    """Where :func:`_entropy_first` crosses ``t`` in ``[a, b]`` (below at ``a`` if ``rising``, else at ``b``);
    the end on the side below ``t``."""
    for _ in range(32):
        mid = 0.5 * (a + b)
        if (_entropy_first(q, rest_mass, mid) < t) == rising:
            a = mid
        else:
            b = mid
    return a if rising else b


@numba.njit(inline="always", **NJIT)
def _scan(sorted_vals, spec, weights, rng, win, qv, work, count, track_count, live, touched, nt, dead, nd,
          prune, mark, fresh, band, ch, ch_b, ch_i, ch_size, min_gap, gap_thr, qrow, q_codes, lib_codes, sym, buf):
    """Add ``qv * w`` for every library peak ``w`` in the window of one query peak.

    The window is ``win = (lo, hi)`` (m/z or neutral loss), searched in each entry range
    ``rng[qrow, g]`` (the index's groups this query may match, each sorted by value).

    A spectrum ``c`` is in one of four states: live (bit ``c`` of ``live`` set: reached before this
    query peak, in ``touched``; ``work[c]`` = partial bound, matched library mass sum(w**2)); not
    reached (``work[c, 0] == 0``); reached at this query peak (``work[c, 0] > 0``, not live yet: the
    caller sets the bit once the peak's windows are scanned; a first sum is at least ``_REACHED``); ruled
    out (``work[c, 0] < 0``, in ``dead``). Most visited peaks belong to spectra that are never reached or
    are ruled out; the bitmap (n/8 bytes) stays in the core's cache, so those entries cost a bit test,
    and ``work`` is read only for entries that could reach or rule out a spectrum (the same row a reach
    then updates: a separate state array cost one more scattered access per reached spectrum, and its
    resets). Scan
    weights are L2-normalised cosine weights, or for entropy the square roots of the sum-normalised
    weights (the entropy of a pair is at most sqrt(q*l)). Summing over all partners, not only the best,
    keeps the bound valid for unclean spectra.

    ``prune`` (``theta`` a valid lower bound): a pairing of this query peak with a library peak of scan
    weight outside ``[w_lo, w_hi]`` (:func:`_alive_band`) by a spectrum that no earlier peak reached
    (not live) leaves it below ``theta``, so such entries are passed over: every assignment scoring
    ``theta`` or more still has all its pairs counted. ``mark`` (clean spectra, no neutral losses: one
    partner per window) also rules the spectrum out for later peaks. ``fresh`` (nothing reached before
    this peak) passes over those entries without reading ``work`` at all (a first pass over each chunk
    of ``buf.shape[0]`` entries collects those in the band into ``buf``, without branches; without
    ``mark``, later peaks do the same with the entries of live spectra added); a spectrum
    skipped like this that a later peak reaches gets a bound that omits this peak, which is harmless
    because the skipped pair belongs to no assignment scoring ``theta`` or more. With ``ch`` the best
    partial sums of clean, eligible spectra are kept in the min-heap ``ch_b/ch_i`` (lower bounds for
    checkpoints). Returns ``(nt, nd, ch_size)``.
    """
    cap = ch_b.shape[0]
    w_lo, w_hi = band
    weights, q8 = weights
    if fresh and not w_lo <= w_hi:  # nothing to reach, nothing live to add to
        return nt, nd, ch_size
    lo8, hi8 = _q8_band(w_lo, w_hi)
    lo_v, hi_v = win
    for g in range(rng.shape[1]):
        p0, p1 = _entry_range(sorted_vals, rng, qrow, g, lo_v, hi_v)
        for q0 in range(p0, p1, buf.shape[0]):
            qe = min(p1, q0 + buf.shape[0])
            picked = fresh or not mark
            nb = _band_candidates(q0, qe, q8, lo8, hi8, spec, live, not fresh, buf, p1) if picked else qe - q0
            for i in range(nb):
                if picked and i + 2 * _PREFETCH < nb:  # the entry itself first (the pass read codes only)
                    pp = q0 + buf[i + 2 * _PREFETCH]
                    prefetch_row(spec, pp)
                    prefetch_row(weights, pp)
                if i + _PREFETCH < nb:
                    prefetch_row(work, spec[q0 + (buf[i + _PREFETCH] if picked else i + _PREFETCH)])
                p = q0 + (buf[i] if picked else i)
                w = np.float64(weights[p])
                out = prune and (w < w_lo or w > w_hi)
                if fresh and (out or not w > 0):  # NaN (a damaged weight file) counts as weightless
                    continue
                c = spec[p]
                nv = qv * w
                if not _is_live(live, c):
                    if not w > 0 or (out and not mark):
                        continue
                    a = work[c, 0]
                    if a < 0:
                        continue
                    if out:
                        if a == 0:
                            work[c, 0] = -1.0
                            dead[nd] = c
                            nd += 1
                        continue
                    if a == 0:
                        touched[nt] = c
                        nt += 1
                        if not prune:
                            _set_live(live, c, True)
                        nv = max(nv, _REACHED)  # an underflowing first sum must still read as reached
                nv += work[c, 0]
                work[c, 0] = nv
                work[c, 1] += w * w
                if track_count:
                    _count_add(count, c, 1)
                if ch and (ch_size < cap or nv > ch_b[0]) and min_gap[c] > gap_thr and \
                        _passes(c, qrow, q_codes, lib_codes, sym):
                    pos = -1
                    for u in range(ch_size):
                        if ch_i[u] == c:
                            pos = u
                            break
                    if pos >= 0:  # a larger key moves away from the root of the min-heap
                        ch_b[pos] = nv
                        _sift_down(ch_b, ch_i, ch_size, pos)
                    else:
                        ch_size = _heap_push(ch_b, ch_i, ch_size, cap, nv, c)
    return nt, nd, ch_size


@numba.njit(inline="always", **NJIT)
def _scan_live(sorted_vals, spec, weights, rng, win, qv, acc, compact, rank, snap, count, track_count, live, qrow,
               buf):
    """Phase B's scan: add ``qv * w`` for the library peaks in window ``win`` of live spectra only.

    The sums go to ``acc`` (``work``, or with ``compact`` the compact rows, see :func:`_compact_row`).

    Of the entries (a few percent of them live), each chunk's live ones are collected first by
    :func:`_live_candidates`: a branch on the live bit is mispredicted at every hit, and each misprediction
    holds back the scattered accumulator loads behind it (open entropy at 2.4M, 1 thread, interleaved,
    same hits: 0.88x time over a branch per entry)."""
    lo_v, hi_v = win
    for g in range(rng.shape[1]):
        p0, p1 = _entry_range(sorted_vals, rng, qrow, g, lo_v, hi_v)
        for q0 in range(p0, p1, buf.shape[0]):
            qe = min(p1, q0 + buf.shape[0])
            for i in range(_live_candidates(q0, qe, spec, live, buf, p1)):
                p = q0 + buf[i]
                c = spec[p]
                w = np.float64(weights[p])
                r = _compact_row(rank, snap, c) if compact else c
                acc[r, 0] += qv * w
                acc[r, 1] += w * w
                if track_count:
                    _count_add(count, c, 1)


_U1, _U6, _U63 = np.uint64(1), np.uint64(6), np.uint64(63)


@numba.njit(inline="always", **NJIT)
def _compact_row(rank, snap, c):
    """Row of spectrum ``c`` in the compact accumulators: how many spectra before it are set in ``snap``
    (the live bitmap when they were compacted; ``rank`` its per-word prefix counts)."""
    u = np.uint64(c)
    wd = u >> _U6
    return rank[wd] + np.int64(_popcount(snap[wd] & ((_U1 << (u & _U63)) - _U1)))


@numba.njit(inline="always", **NJIT)
def _compact_live(live, snap, rank, work, cw, touched, slots):
    """Move the accumulators of the live spectra (all reached, none ruled out) from ``work`` to rows
    ``0..n`` of ``cw`` in scan-id order, clearing ``work``; ``touched[:n]`` becomes those spectra in
    that order and ``slots[:n]`` their rows. One pass over the bitmap; returns ``n``."""
    v = 0
    for wd in range(live.shape[0]):
        x = live[wd]
        snap[wd] = x
        rank[wd] = v
        while x != np.uint64(0):
            c = wd * 64 + np.int64(trailing_zeros(x))
            touched[v] = c
            slots[v] = v
            cw[v, 0] = work[c, 0]
            cw[v, 1] = work[c, 1]
            work[c, 0] = 0.0
            work[c, 1] = 0.0
            v += 1
            x &= x - _U1
    return v


_Q8 = 255.0  #: quantised weights: floor(w * _Q8), clipped to 0..255


def quantize_weights(w: np.ndarray) -> np.ndarray:
    """Scan weights as codes for the band pre-filter of the bound scans (:func:`_band_candidates`).

    Parameters
    ----------
    w : ndarray, float32 (P,)
        Scan weights (``PeakIndex.frag_w`` / ``nl_w``).

    Returns
    -------
    ndarray, uint8 (P,)
        ``floor(w * 255)`` in float64, clipped to 0..255 (NaN: 0). The product and ``floor`` are monotone,
        so a weight within a band has its code within :func:`_q8_band` of it; the scans then test each
        candidate's float32 weight.
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.empty(w.shape[0], dtype=np.uint8)
    _quantize(w, out)
    return out


@numba.njit(**NJIT)
def _quantize(w, out):
    for i in range(w.shape[0]):
        x = np.floor(np.float64(w[i]) * _Q8)
        out[i] = np.uint8(min(x, 255.0)) if x >= 1.0 else np.uint8(0)


@numba.njit(inline="always", **NJIT)
def _q8_band(w_lo, w_hi):
    """Codes of :func:`quantize_weights` a weight in ``[w_lo, w_hi]`` can have (a superset)."""
    lo = min(max(np.floor(w_lo * _Q8), 0.0), 255.0)
    hi = min(max(np.floor(w_hi * _Q8), 0.0), 255.0)
    return np.uint8(lo), np.uint8(hi)


@numba.njit(inline="always", **NJIT)
def _band_candidates(q0, qe, q8, lo8, hi8, spec, live, or_live, buf, p_end):
    """Collect into ``buf``, without branches, the positions (from ``q0``) of the entries ``q0:qe`` whose
    quantised weight ``q8`` is within ``[lo8, hi8]`` (a superset of the weights in the band, see
    :func:`_q8_band`), with ``or_live`` also those of a live spectrum. Returns how many.

    One byte per entry instead of a float32 weight: dense windows stream from memory (a 2.4M library's
    fragment entries without cache reuse: ~0.7 against ~2.5-3 ns per entry). Indices are unsigned
    (numba wraps signed ones around at every access: 1.6x slower passes over cached windows). The
    window (up to ``p_end``) is prefetched ``_STREAM_AHEAD`` bytes ahead (see there)."""
    nb = np.uint64(0)
    base = np.uint64(q0)
    n = np.uint64(qe - q0)
    last = p_end - 1
    for g0 in range(np.uint64(0), n, np.uint64(64)):  # one cache line of codes, four of scan ids
        prefetch_row(q8, min(q0 + np.int64(g0) + _STREAM_AHEAD, last))
        g1 = min(g0 + np.uint64(64), n)
        if or_live:
            for h in range(4):
                prefetch_row(spec, min(q0 + np.int64(g0) + _STREAM_AHEAD // 4 + 16 * h, last))
            for i in range(g0, g1):
                c = q8[base + i]
                u = np.uint64(spec[base + i])
                buf[nb] = i
                nb += np.uint64((c >= lo8) & (c <= hi8)) | \
                    ((live[u >> np.uint64(6)] >> (u & np.uint64(63))) & np.uint64(1))
        else:
            for i in range(g0, g1):
                c = q8[base + i]
                buf[nb] = i
                nb += np.uint64((c >= lo8) & (c <= hi8))
    return np.int64(nb)


@numba.njit(inline="always", **NJIT)
def _live_candidates(q0, qe, spec, live, buf, p_end):
    """Collect into ``buf``, without branches, the positions (from ``q0``) of the entries ``q0:qe`` of live
    spectra, prefetching the window (up to ``p_end``) ahead as :func:`_band_candidates` does. Returns
    how many."""
    nb = np.uint64(0)
    base = np.uint64(q0)
    n = np.uint64(qe - q0)
    last = p_end - 1
    for g0 in range(np.uint64(0), n, np.uint64(16)):  # one cache line of scan ids
        prefetch_row(spec, min(q0 + np.int64(g0) + _STREAM_AHEAD // 4, last))
        for i in range(g0, min(g0 + np.uint64(16), n)):
            u = np.uint64(spec[base + i])
            buf[nb] = i
            nb += (live[u >> np.uint64(6)] >> (u & np.uint64(63))) & np.uint64(1)
    return np.int64(nb)


@numba.njit(inline="always", **NJIT)
def _is_live(live, c):
    u = np.uint64(c)
    return (live[u >> np.uint64(6)] >> (u & np.uint64(63))) & np.uint64(1) != np.uint64(0)


@numba.njit(inline="always", **NJIT)
def _set_live(live, c, on):
    u = np.uint64(c)
    bit = np.uint64(1) << (u & np.uint64(63))
    if on:
        live[u >> np.uint64(6)] |= bit
    else:
        live[u >> np.uint64(6)] &= ~bit


#: the largest pair count ``BoundWorkspace.count`` (uint16) holds: adds saturate there, so that a spectrum
#: with more pairs in the query's windows (unclean spectra, wide tolerances) still passes a minimum of matched
#: peaks up to it instead of wrapping around to a small count and being dropped
_COUNT_MAX = 65535


@numba.njit(inline="always", **NJIT)
def _count_add(count, c, k):
    v = np.int64(count[c]) + k
    count[c] = v if v < _COUNT_MAX else _COUNT_MAX


@numba.njit(inline="always", **NJIT)
def _window_count(sorted_vals, rng, qrow, x, h):
    c = 0
    for g in range(rng.shape[1]):
        e0, e1 = rng[qrow, g, 0], rng[qrow, g, 1]
        c += _lower_bound(sorted_vals, x + h + 1e-12, e0, e1) - _lower_bound(sorted_vals, x - h, e0, e1)
    return c


@numba.njit(**NJIT)
def _worse(b1, i1, b2, i2):
    return b1 < b2 or (b1 == b2 and i1 > i2)


@numba.njit(inline="always", **NJIT)
def _sift_down(hb, hi, size, pos):
    while True:
        l = 2 * pos + 1
        if l >= size:
            return
        r = l + 1
        w = l
        if r < size and _worse(hb[r], hi[r], hb[l], hi[l]):
            w = r
        if _worse(hb[w], hi[w], hb[pos], hi[pos]):
            hb[w], hb[pos] = hb[pos], hb[w]
            hi[w], hi[pos] = hi[pos], hi[w]
            pos = w
        else:
            return


@numba.njit(inline="always", **NJIT)
def _heap_push(hb, hi, size, cap, b, i):
    """Keep the ``cap`` best (value desc, id asc) in a min-heap; returns the new size."""
    if size < cap:
        pos = size
        hb[pos] = b
        hi[pos] = i
        size += 1
        while pos > 0:
            par = (pos - 1) >> 1
            if _worse(hb[pos], hi[pos], hb[par], hi[par]):
                hb[pos], hb[par] = hb[par], hb[pos]
                hi[pos], hi[par] = hi[par], hi[pos]
                pos = par
            else:
                break
        return size
    if _worse(hb[0], hi[0], b, i):
        hb[0] = b
        hi[0] = i
        _sift_down(hb, hi, size, 0)
    return size


@numba.njit(inline="always", **NJIT)
def _passes(c, qrow, q_codes, lib_codes, sym):
    for f in range(sym.shape[0]):
        qc = q_codes[qrow, f]
        if qc == -1:  # query value unknown: no restriction (-2: a value no library spectrum has)
            continue
        lc = lib_codes[c, f]
        if lc == qc:
            continue
        if sym[f] and lc == -1:
            continue
        return False
    return True


@numba.njit(inline="always", **NJIT)
def _cell_on(bits, side, v, inv_w):
    # m/z cell by truncation: monotone in v, which is all the superset test needs
    cell = np.int64(v * inv_w)
    word = bits[side, (cell >> 6) & (_LOOKUP_WORDS - 1)]
    return (word >> np.uint64(cell & 63)) & np.uint64(1) != np.uint64(0)


@numba.njit(inline="always", **NJIT)
def _cells_set(bits, side, lo, hi, inv_w, on):
    for cell in range(np.int64(lo * inv_w), np.int64(hi * inv_w) + 1):
        bit = np.uint64(1) << np.uint64(cell & 63)
        wi = (cell >> 6) & (_LOOKUP_WORDS - 1)
        if on:
            bits[side, wi] |= bit
        else:
            bits[side, wi] &= ~bit


@numba.njit(inline="always", **NJIT)
def _lookup_build(t0, npk, a0, order, q_mz, q_w, qpmz, do_nl, tol_da, tol_ppm, nl_base, bits, lk, p_big):
    """Index query peaks ``order[t0:npk]`` (positive weights) for :func:`_complete`.

    ``lk = (xs, ts, lo, hi, ys, hns, best)``, float64 / int64 arrays of at least ``npk``: per scan
    position ``t`` the fragment window ``lo[t]..hi[t]`` and the neutral loss ``ys[t]`` with its
    half-width ``hns[t]``, computed exactly as a window search computes them; the peaks' m/z sorted
    (``xs``) with their positions (``ts``); ``best`` is scratch. Bit ``side`` 0 / 1 of ``bits`` marks
    the m/z cells a fragment / neutral-loss window covers (cells at least twice the widest half-width,
    hashed into :data:`_LOOKUP_WORDS` words). Returns ``(r, inv_w, h_max, hn_max)``: peaks indexed,
    1 / cell width, widest half-widths. ``_lookup_mark(..., on=False)`` resets ``bits``.
    """
    xs, ts, lo, hi, ys, hns, best = lk
    r = 0
    h_max = 0.0
    hn_max = 0.0
    for t in range(t0, npk):
        j = a0 + order[t]
        if not q_w[j] > 0:
            continue
        x = q_mz[j]
        h = _half_width(x, tol_da, tol_ppm, x)
        lo[t] = x - h
        hi[t] = x + h
        h_max = max(h_max, h)
        if do_nl:
            y = qpmz - x
            hn = _loss_half_width(y, x, qpmz, tol_da, tol_ppm, max(nl_base, x), p_big)
            ys[t] = y
            hns[t] = hn
            hn_max = max(hn_max, hn)
        xs[r] = x
        ts[r] = t
        r += 1
    srt = np.argsort(xs[:r])
    xs[:r] = xs[:r][srt]
    ts[:r] = ts[:r][srt]
    inv_w = 1.0 / max(2.0 * (max(h_max, hn_max) + _LOOKUP_EPS), 1e-3)
    _lookup_mark(bits, lk, r, inv_w, do_nl, True)
    return r, inv_w, h_max, hn_max


@numba.njit(inline="always", **NJIT)
def _lookup_mark(bits, lk, r, inv_w, do_nl, on):
    """Set (``on``) or clear the cells of the ``r`` indexed peaks' windows."""
    xs, ts, lo, hi, ys, hns, best = lk
    for u in range(r):
        t = ts[u]
        _cells_set(bits, 0, lo[t], hi[t], inv_w, on)
        if do_nl:
            _cells_set(bits, 1, xs[u] - hns[t] - _LOOKUP_EPS, xs[u] + hns[t] + _LOOKUP_EPS, inv_w, on)


@numba.njit(inline="always", **NJIT)
def _lookup_hits(lk, r, key, reach, v, w, nl, pc):
    """Raise ``best[t]`` to ``w`` for every indexed query peak whose window holds library m/z ``v``: its
    fragment window (``key = v``), or with ``nl`` its neutral-loss window for library precursor ``pc``
    (``key = v - (pc - qpmz)``). Candidates are the peaks with m/z within ``reach`` of ``key``; the
    test is the window search's own comparison."""
    xs, ts, lo, hi, ys, hns, best = lk
    u = _lower_bound(xs, key - reach, 0, r)
    while u < r and xs[u] <= key + reach:
        t = ts[u]
        if nl:
            # library neutral loss pc - v within hn of the query's qpmz - x  <=>  v within hn of pc - (qpmz - x)
            z = pc - ys[t]
            inside = v >= z - hns[t] and v <= z + hns[t]
        else:
            inside = v >= lo[t] and v <= hi[t]
        if inside and w > best[t]:
            best[t] = w
        u += 1


@numba.njit(inline="always", **NJIT)
def _complete(c, t0, npk, a0, order, q_w, qpmz, l_span, l_mz, l_w, l_pmz, use_nl, kind, bits, lk, lk_info, work,
              count, track):
    """Add to spectrum ``c``'s bound the best contribution of every query peak ``order[t0:npk]``: the
    largest library weight in its fragment window (analog search: or in its neutral-loss window).

    One pass over the library peaks, each tested against the query's cell bitmap (:func:`_lookup_build`
    indexed those peaks), instead of a binary search per query peak (per survivor of an open-cosine
    query at 2.4M: ~2,200 cycles before, mostly mispredicted search branches); the same sums in the
    same order.
    """
    r, inv_w, h_max, hn_max = lk_info
    best = lk[6]
    b0, b1 = l_span[0][c], l_span[1][c]
    pc = l_pmz[c]
    do_nl = use_nl and np.isfinite(pc) and np.isfinite(qpmz)
    shift = pc - qpmz if do_nl else 0.0
    for t in range(t0, npk):
        best[t] = 0.0
    for p in range(b0, b1):
        v = l_mz[p]
        if _cell_on(bits, 0, v, inv_w):
            _lookup_hits(lk, r, v, h_max + _LOOKUP_EPS, v, np.float64(l_w[p]), False, pc)
        if do_nl and _cell_on(bits, 1, v - shift, inv_w):
            _lookup_hits(lk, r, v - shift, hn_max + _LOOKUP_EPS, v, np.float64(l_w[p]), True, pc)
    acc = 0.0
    cnt = 0
    for t in range(t0, npk):
        if best[t] > 0:
            acc += _contrib(kind, np.float64(q_w[a0 + order[t]]), best[t])
            cnt += 1
    work[c, 0] += acc
    if track:
        _count_add(count, c, cnt)


@numba.njit(inline="always", **NJIT)
def _lower_sum(a0, a1, q_mz, q_w, c, l_span, l_mz, l_w, kind, tol_da, tol_ppm):
    """Score of the pairs every exact kernel matches, for a clean query/library pair (a lower bound), and
    their number. A pair with a weightless side (an entropy weight of a zero-intensity peak, which entropy
    never matches; cosine stores such peaks at the smallest normal float32 and counts them) is not
    counted, or ``min_matches`` would let a spectrum short of it raise the threshold."""
    b0, b1 = l_span[0][c], l_span[1][c]
    s = 0.0
    cnt = 0
    p = b0
    for j in range(a0, a1):
        x = q_mz[j]
        lim = tol_da if tol_ppm <= 0 else tol_ppm * 1e-6 * x
        while p < b1 and l_mz[p] < x - lim:
            p += 1
        r = p
        while r < b1 and l_mz[r] <= x + lim:
            if _certain(x, l_mz[r], tol_da, tol_ppm):
                if q_w[j] > 0 and l_w[r] > 0:
                    s += _contrib(kind, np.float64(q_w[j]), np.float64(l_w[r]))
                    cnt += 1
                break
            r += 1
    return s, cnt


@numba.njit(**NJIT)
def _kth_lower(vals, nv, k):
    """The k-th largest of ``vals[:nv]`` lowered by the float32 slack (-inf with fewer than k)."""
    if nv < k:
        return -np.inf
    srt = np.sort(vals[:nv])
    return srt[nv - k] * (1.0 - BOUND_RTOL) - BOUND_ATOL


@numba.njit(inline="always", **NJIT)
def _checkpoint(a0, a1, q_mz, q_w, k, l_span, l_mz, l_w, kind, tol_da, tol_ppm, min_pairs, min_score, ch_i, ch_size,
                vals):
    """Lower bound of the k-th best final score: scores of the pairs every exact kernel matches, for the
    clean spectra with the best partial sums (``ch_i``); -inf when fewer than k qualify."""
    if ch_size < k:
        return -np.inf
    nv = 0
    for u in range(ch_size):
        s, cnt = _lower_sum(a0, a1, q_mz, q_w, ch_i[u], l_span, l_mz, l_w, kind, tol_da, tol_ppm)
        if cnt >= min_pairs and s >= min_score:
            vals[nv] = s
            nv += 1
    return _kth_lower(vals, nv, k)


@numba.njit(inline="always", **NJIT)
def _theta_window(pmz, a0, a1, q_mz, q_w, k, prec_sorted, prec_order, n_prec, l_span, l_mz, l_w, min_gap, gap_thr,
                  kind, tol_da, tol_ppm, qrow, q_codes, lib_codes, sym, min_pairs, min_score, vals):
    """Lower bound of the k-th best score from the spectra with (nearly) the query's precursor m/z: in
    real libraries these are often the best hits, so pruning starts with a high threshold."""
    lo = _lower_bound(prec_sorted, pmz - 0.02, 0, n_prec)
    hi = _lower_bound(prec_sorted, pmz + 0.02 + 1e-9, lo, n_prec)
    nv = 0
    for p in range(lo, min(hi, lo + vals.shape[0])):
        c = prec_order[p]
        if min_gap[c] > gap_thr and _passes(c, qrow, q_codes, lib_codes, sym):
            s, cnt = _lower_sum(a0, a1, q_mz, q_w, c, l_span, l_mz, l_w, kind, tol_da, tol_ppm)
            if cnt >= min_pairs and s >= min_score:
                vals[nv] = s
                nv += 1
    return _kth_lower(vals, nv, k)


@numba.njit(inline="always", **NJIT)
def _peak_cost(x, pmz, do_nl, fr_mz, nl_mz, fr_rng, nl_rng, qrow, tol_da, tol_ppm, nl_base):
    """Index entries a scan of query peak ``x`` visits (fragment window, plus the neutral-loss one)."""
    c = _window_count(fr_mz, fr_rng, qrow, x, _half_width(x, tol_da, tol_ppm, x))
    if do_nl:
        y = pmz - x
        c += _window_count(nl_mz, nl_rng, qrow, y, _half_width(y, tol_da, tol_ppm, max(nl_base, x)))
    return c


@numba.njit(inline="always", **NJIT)
def _drop_hopeless(kind, touched, ns, dead, nd, acc, compact, slots, count, track, live, q_rest, theta, clean_q,
                   min_gap, gap_thr, qrow, q_codes, lib_codes, sym, first):
    """Keep (compacted at the front of ``touched``, and ``slots`` with ``compact``) the reached spectra
    whose partial bound plus what query peaks of mass ``q_rest`` can add still reaches ``theta``; rule
    out the others (live bit and accumulators cleared, listed in ``dead``: no scan reads the state of a
    spectrum that is not live after the early stop). Accumulators are the rows ``c`` of ``acc``, or with
    ``compact`` its rows ``slots[v]``. The first call also applies the filters. Returns ``(ns, nd)``."""
    r1 = _rest(kind, q_rest, 1.0)
    rest = _inflate(r1)
    # entropy: g(q_rest, 1 - m) <= g(q_rest, 1) - m * dg/dl(q_rest, 1) (g is concave in l: the tangent at
    # 1 lies above it), dg/dl(Q, 1) = log2(1 + Q) / 2; no log per spectrum
    slope = 0.5 * np.log2(1.0 + q_rest) if kind == 1 and q_rest > 0 else 0.0
    keep = 0
    for v in range(ns):
        c = touched[v]
        r = slots[v] if compact else c
        a = _inflate(np.float64(acc[r, 0]))
        alive = a + rest >= theta
        # library mass already matched is unavailable to the remaining peaks (clean spectra only). For
        # entropy the tangent (exact g: three logs per spectrum, 1.36x slower open search) left novel-compound
        # queries as fast and made library copies 0.89-0.91x (2.4M, 1 thread, interleaved)
        if alive and clean_q and min_gap[c] > gap_thr:
            m = min(max(np.float64(acc[r, 1]), 0.0), 1.0)
            if kind == 0:
                alive = a + _inflate(_rest(kind, q_rest, 1.0 - m)) >= theta
            else:
                alive = a + _inflate(max(r1 - m * slope, 0.0)) >= theta
        if alive and (not first or _passes(c, qrow, q_codes, lib_codes, sym)):
            touched[keep] = c
            if compact:
                slots[keep] = r
            keep += 1
        else:
            acc[r, 0] = 0.0
            acc[r, 1] = 0.0
            if track:
                count[c] = 0
            _set_live(live, c, False)
            dead[nd] = c
            nd += 1
    return keep, nd


@numba.njit(**NJIT)
def _search_bounds(b, n_blocks, q_rows, q_off, q_mz, q_w, q_pmz, theta_in, fr_mz, fr_spec, fr_w, fr_q8, nl_mz,
                   nl_spec, nl_w, nl_q8, fr_rng, nl_rng, use_nl, l_span, l_mz, l_w, l_pmz, min_gap, prec_sorted, prec_order, n_prec,
                   lib_clean, kind, tol_da, tol_ppm, nl_base, gap_thr, mean_peaks, q_codes, lib_codes, sym, min_pairs,
                   min_score, k, m_cap, order_c0, compact_min, work, count, live, touched, dead, cwork, slots,
                   rank, snap, out_ids, out_bound, out_next, out_stats):
    # one block of queries (t = b, b + n_blocks, ...) with its own scratch; blocks run in Python threads
    # (the kernel releases the GIL): a serial kernel compiles far faster than a parfor of this size
    nq = q_rows.shape[0]
    track = min_pairs > 1
    hb = np.empty(4 * m_cap + 1, dtype=np.float64)
    hi = np.empty(4 * m_cap + 1, dtype=np.int64)
    hb2 = np.empty(4 * m_cap + 1, dtype=np.float64)
    hi2 = np.empty(4 * m_cap + 1, dtype=np.int64)
    cb = np.empty(2 * k, dtype=np.float64)
    ci = np.empty(2 * k, dtype=np.int64)
    cvals = np.empty(max(2 * k, 256), dtype=np.float64)
    bits = np.zeros((2, _LOOKUP_WORDS), dtype=np.uint64)
    sbuf = np.empty(_SCAN_CHUNK, dtype=np.int32)
    max_peaks = 0
    for t in range(b, nq, n_blocks):
        max_peaks = max(max_peaks, q_off[q_rows[t] + 1] - q_off[q_rows[t]])
    lk = (np.empty(max_peaks), np.empty(max_peaks, dtype=np.int64), np.empty(max_peaks), np.empty(max_peaks),
          np.empty(max_peaks), np.empty(max_peaks), np.empty(max_peaks))
    # hybrid search (entropy with neutral losses): its kernel's float32 losses need wider loss windows
    p_big = 0.0
    if kind == 1 and use_nl and n_prec > 0:
        p_big = max(abs(prec_sorted[0]), abs(prec_sorted[n_prec - 1]), 1.0)
    for t in range(b, nq, n_blocks):
        qrow = q_rows[t]
        a0, a1 = q_off[qrow], q_off[qrow + 1]
        npk = a1 - a0
        pmz = q_pmz[qrow]
        do_nl = use_nl and np.isfinite(pmz)
        # scan order: by mass per window entry, decreasing (see _ORDER_SHARE); qsuf[u] = mass of peaks
        # u.. (what they can still add); any order keeps the bounds valid
        neg_mass = np.empty(npk, dtype=np.float64)
        for j in range(npk):
            neg_mass[j] = -_mass(kind, max(np.float64(q_w[a0 + j]), 0.0))
        # index entries in each peak's windows: the scan order and phase B's cost model read them
        costs = np.zeros(npk, dtype=np.float64)
        have_costs = order_c0 > 0 and npk > 1
        if have_costs:
            neg_key = np.empty(npk, dtype=np.float64)
            for j in range(npk):
                if neg_mass[j] < 0:  # weightless peaks are never scanned (key -0.0: last)
                    costs[j] = _peak_cost(q_mz[a0 + j], pmz, do_nl, fr_mz, nl_mz, fr_rng, nl_rng, qrow, tol_da,
                                          tol_ppm, nl_base)
                neg_key[j] = neg_mass[j] / (order_c0 + costs[j])
            order = np.argsort(neg_key, kind="mergesort")
        else:
            order = np.argsort(neg_mass, kind="mergesort")
        qsuf = np.zeros(npk + 1, dtype=np.float64)
        for u in range(npk - 1, -1, -1):
            qsuf[u] = qsuf[u + 1] - neg_mass[order[u]]
        # partial sums are lower bounds, and matched library mass is unavailable to later peaks, only
        # with one partner per peak on both sides (clean spectra, no neutral losses)
        clean_q = not use_nl
        for j in range(a0 + 1, a1):
            if q_mz[j] - q_mz[j - 1] <= gap_thr:
                clean_q = False
        theta = max(theta_in[t], min_score * (1.0 - BOUND_RTOL) - BOUND_ATOL)
        if clean_q and np.isfinite(pmz) and n_prec > 0 and not theta_in[t] >= _THETA_GIVEN_ENOUGH:
            th = _theta_window(pmz, a0, a1, q_mz, q_w, k, prec_sorted, prec_order, n_prec, l_span, l_mz, l_w,
                               min_gap, gap_thr, kind, tol_da, tol_ppm, qrow, q_codes, lib_codes, sym, min_pairs,
                               min_score, cvals)
            if th > theta:
                theta = th
        theta0 = theta
        # ruling spectra out for later peaks needs one partner per window (clean spectra, no neutral losses)
        mark = clean_q and lib_clean
        nt = 0
        nd = 0
        ch_size = 0
        done = 0
        next_ck = 0
        n_ck = 0
        # phase A: scan while a spectrum not reached yet could still beat theta
        while done < npk and _inflate(_rest(kind, qsuf[done], 1.0)) >= theta:
            u = done
            j = a0 + order[u]
            qw = np.float64(q_w[j])
            done += 1
            if qw <= 0:
                continue
            x = q_mz[j]
            qv = qw if kind == 0 else np.sqrt(qw)
            w_lo, w_hi = -1.0, 2.0
            prune = theta > 0
            if prune:
                w_lo, w_hi = _alive_band(kind, qw, qsuf[done], theta)
            # ruling spectra out only serves later peaks of this phase (phase B reads live spectra
            # only): none follows once what the unscanned peaks can add is below theta
            mark_u = mark and _inflate(_rest(kind, qsuf[done], 1.0)) >= theta
            nt0 = nt
            fresh = prune and nt0 == 0
            # the fragment window, then (analog, hybrid) the neutral-loss window: one call site, so that
            # numba inlines the scan once (compile time)
            for side in range(2 if do_nl else 1):
                win = _side_window(side, x, pmz, tol_da, tol_ppm, nl_base, p_big)
                if side == 0:
                    s_mz, s_spec, s_w, s_q8, s_rng = fr_mz, fr_spec, fr_w, fr_q8, fr_rng
                else:
                    s_mz, s_spec, s_w, s_q8, s_rng = nl_mz, nl_spec, nl_w, nl_q8, nl_rng
                nt, nd, ch_size = _scan(s_mz, s_spec, (s_w, s_q8), s_rng, win, qv, work, count, track, live,
                                        touched, nt, dead, nd, prune, mark_u and side == 0, fresh, (w_lo, w_hi),
                                        clean_q and side == 0, cb, ci, ch_size, min_gap, gap_thr, qrow, q_codes,
                                        lib_codes, sym, sbuf)
            if prune:
                for v in range(nt0, nt):
                    _set_live(live, touched[v], True)
            if clean_q and u == next_ck and n_ck < 3 and done < npk and \
                    _inflate(_rest(kind, qsuf[done], 1.0)) >= theta:
                th = _checkpoint(a0, a1, q_mz, q_w, k, l_span, l_mz, l_w, kind, tol_da, tol_ppm, min_pairs,
                                 min_score, ci, ch_size, cvals)
                n_ck += 1
                if th > theta:
                    theta = th
                next_ck = 2 * u + 1
        n_phase_a = done
        nd_mark = nd  # ruled out while scanning (work row -1); later drops clear their rows themselves
        # phase B (only if scanning stopped early): drop reached spectra that cannot beat theta; then scan
        # the remaining peaks one at a time for the survivors only, dropping those the shrinking unscanned
        # mass can no longer lift to theta, until completing the few left by merging with their own
        # peaks costs less than scanning the rest
        ns = nt
        pruned = done < npk
        compact = False
        if pruned:
            # many reached spectra: their accumulators move to compact rows first (see _COMPACT_MIN)
            compact = nt >= compact_min
            acc = cwork if compact else work
            if compact:
                ns = _compact_live(live, snap, rank, work, cwork, touched, slots)  # == nt: all reached are live
            ns, nd = _drop_hopeless(kind, touched, ns, dead, nd, acc, compact, slots, count, track, live,
                                    qsuf[done], theta, clean_q, min_gap, gap_thr, qrow, q_codes, lib_codes, sym, True)
            r_last = _rest(kind, qsuf[done], 1.0)
            rem_scan = 0.0
            for u in range(done, npk):
                jo = order[u]
                if not have_costs and neg_mass[jo] < 0:
                    costs[jo] = _peak_cost(q_mz[a0 + jo], pmz, do_nl, fr_mz, nl_mz, fr_rng, nl_rng, qrow, tol_da,
                                           tol_ppm, nl_base)
                rem_scan += costs[jo]
            while ns > 0 and done < npk and \
                    _COMPLETE_COST * ns * (mean_peaks * (2.0 if do_nl else 1.0) + npk - done) > rem_scan:
                j = a0 + order[done]
                x = q_mz[j]
                rem_scan -= costs[order[done]]
                done += 1
                qw = np.float64(q_w[j])
                if qw <= 0:
                    continue
                qv = qw if kind == 0 else np.sqrt(qw)
                for side in range(2 if do_nl else 1):  # one call site, as in phase A
                    win = _side_window(side, x, pmz, tol_da, tol_ppm, nl_base, p_big)
                    if side == 0:
                        s_mz, s_spec, s_w, s_rng = fr_mz, fr_spec, fr_w, fr_rng
                    else:
                        s_mz, s_spec, s_w, s_rng = nl_mz, nl_spec, nl_w, nl_rng
                    _scan_live(s_mz, s_spec, s_w, s_rng, win, qv, acc, compact, rank, snap, count, track, live, qrow,
                               sbuf)
                # a drop pass reads every survivor's scattered work row, and the survivors' margin
                # shrinks with the unscanned mass: drop again once that bound fell by a fifth (every
                # peak: 2.4M, interleaved, 1.05-1.08x slower open search, 1.02-1.05x analog)
                r_now = _rest(kind, qsuf[done], 1.0) if done < npk else 0.0
                if done < npk and r_now <= _DROP_AFTER * r_last:
                    r_last = r_now
                    ns, nd = _drop_hopeless(kind, touched, ns, dead, nd, acc, compact, slots, count, track,
                                            live, qsuf[done], theta, clean_q, min_gap, gap_thr, qrow, q_codes,
                                            lib_codes, sym, False)
            if compact:  # the survivors' sums back to their rows of work for completion
                for v in range(ns):
                    c = touched[v]
                    work[c, 0] = cwork[slots[v], 0]
                    work[c, 1] = cwork[slots[v], 1]
        # entropy scan bounds use sqrt(q*l) >= g(q,l): keep a shortlist 4x larger and refine it below
        refine = kind == 1
        cap = 4 * m_cap + 1 if refine else m_cap + 1
        size = 0
        fill = pruned and done < npk  # survivors need their unscanned peaks added
        marked = fill  # the query's cells are set in ``bits`` (cleared before the next query)
        lk_info = (0, 1.0, 0.0, 0.0)
        if fill:
            lk_info = _lookup_build(done, npk, a0, order, q_mz, q_w, pmz, do_nl, tol_da, tol_ppm, nl_base, bits, lk, p_big)
        for v in range(ns):
            # the survivors' rows and peaks are scattered: ask for them a few survivors ahead (analog /
            # open cosine / open entropy kernel time 0.80-0.99x / 0.92x / 0.88x, interleaved, noisy)
            if v + 8 < ns:
                prefetch_row(l_span[0], touched[v + 8])
                prefetch_row(work, touched[v + 8])
            if fill and v + 4 < ns:
                c4 = touched[v + 4]
                prefetch_row(l_mz, l_span[0][c4])
                prefetch_row(l_w, l_span[0][c4])
            c = touched[v]
            if fill:
                _complete(c, done, npk, a0, order, q_w, pmz, l_span, l_mz, l_w, l_pmz, use_nl, kind, bits, lk, lk_info,
                          work, count, track)
            bound = _inflate(np.float64(work[c, 0]))
            ok = bound >= theta and (not track or count[c] >= min(min_pairs, _COUNT_MAX))
            if ok and not pruned:
                ok = _passes(c, qrow, q_codes, lib_codes, sym)
            if ok:
                size = _heap_push(hb, hi, size, cap, bound, c)
            work[c, 0] = 0.0
            work[c, 1] = 0.0
            if track:
                count[c] = 0
            _set_live(live, c, False)
        for v in range(nd_mark):
            work[dead[v], 0] = 0.0
        if refine:
            loose_next = -1.0
            if size == cap:  # the best loose bound left out of the shortlist
                loose_next = hb[0]
                size -= 1
                hb[0] = hb[size]
                hi[0] = hi[size]
                _sift_down(hb, hi, size, 0)
            if marked:
                _lookup_mark(bits, lk, lk_info[0], lk_info[1], do_nl, False)
            lk_info = _lookup_build(0, npk, a0, order, q_mz, q_w, pmz, do_nl, tol_da, tol_ppm, nl_base, bits, lk, p_big)
            marked = True
            for v in range(size):
                c = hi[v]
                _complete(c, 0, npk, a0, order, q_w, pmz, l_span, l_mz, l_w, l_pmz, use_nl, kind, bits, lk, lk_info,
                          work, count, False)
                hb2[v] = _inflate(np.float64(work[c, 0]))
                hi2[v] = c
                work[c, 0] = 0.0
            n2 = size
            size = 0
            tight_next = -1.0
            for v in range(n2):
                if hb2[v] >= theta:
                    size = _heap_push(hb, hi, size, m_cap + 1, hb2[v], hi2[v])
            if size == m_cap + 1:
                tight_next = hb[0]
                size -= 1
                hb[0] = hb[size]
                hi[0] = hi[size]
                _sift_down(hb, hi, size, 0)
            nxt = max(loose_next, tight_next)
        else:
            nxt = -1.0
            if size == m_cap + 1:
                nxt = hb[0]
                size -= 1
                hb[0] = hb[size]
                hi[0] = hi[size]
                _sift_down(hb, hi, size, 0)
        if marked:
            _lookup_mark(bits, lk, lk_info[0], lk_info[1], do_nl, False)
        out_stats[t, 0] = nt
        out_stats[t, 1] = n_phase_a
        out_stats[t, 2] = done
        out_stats[t, 3] = ns if pruned else 0
        out_stats[t, 4] = nd
        out_stats[t, 5] = 1 if np.isfinite(theta0) else 0
        out_stats[t, 6] = 1 if pruned and compact else 0
        out_next[t] = nxt
        for e in range(size - 1, 0, -1):  # heap sort: best bounds first, so exact scoring may stop early
            hb[0], hb[e] = hb[e], hb[0]
            hi[0], hi[e] = hi[e], hi[0]
            _sift_down(hb, hi, e, 0)
        for v in range(size):
            out_ids[t, v] = hi[v]
            out_bound[t, v] = hb[v]
        for v in range(size, m_cap):
            out_ids[t, v] = -1
            out_bound[t, v] = -1.0


class BoundWorkspace:
    """Per-thread scratch reused across calls: the kernel leaves ``work``, ``live`` and ``count`` at zero;
    the other arrays are written before they are read.

    ``work`` float32 (blocks, n_library, 2): bound and matched library mass; ``count`` uint16 pairs (only
    with ``min_pairs > 1``); ``live`` uint64 bitmap of the spectra reached before the query peak being
    scanned (the other states are read from ``work``, see :func:`_scan`); ``touched`` / ``dead`` int32
    lists of reached / ruled-out spectra. After an early stop with many spectra reached: ``cwork`` float32
    (blocks, n_library, 2) their accumulators in compact rows, ``slots`` int32 (blocks, n_library) the
    row of each ``touched`` entry, ``snap`` uint64 the bitmap they were compacted from and ``rank`` int64
    its per-word prefix counts. The large arrays are zero-filled lazily by the OS, so only the pages a
    query touches count towards memory; they sit on 2 MB pages where Linux grants them
    (:func:`fastspec.kernels._memory.huge_zeros`: the scattered row updates then rarely miss the TLB;
    2.4M library, 1 thread, 3 interleaved processes per side, same hits: open cosine copies 0.97x,
    open entropy 0.99x, analog novel compounds 0.96x).
    """

    def __init__(self, n_library: int, n_blocks: int):
        self.n_library = int(n_library)
        self.n_blocks = int(n_blocks)
        n = max(self.n_library, 1)
        self.work = hz((self.n_blocks, n, 2), dtype=np.float32)
        self.count = hz((self.n_blocks, n), dtype=np.uint16)
        self.live = np.zeros((self.n_blocks, n // 64 + 1), dtype=np.uint64)
        self.touched = hz((self.n_blocks, n), dtype=np.int32)
        self.dead = hz((self.n_blocks, n), dtype=np.int32)
        self.cwork = hz((self.n_blocks, n, 2), dtype=np.float32)
        self.slots = hz((self.n_blocks, n), dtype=np.int32)
        self.snap = np.zeros((self.n_blocks, n // 64 + 1), dtype=np.uint64)
        self.rank = np.zeros((self.n_blocks, n // 64 + 1), dtype=np.int64)
        self._dense = None
        self._dense_cnt = None

    def dense_acc(self, b: int) -> np.ndarray:
        """Block ``b``'s uint16 (n_library,) accumulators of :func:`fastspec.kernels.dense.dense_bounds`
        (zero between calls), allocated for every block on first use (call it before starting threads)."""
        if self._dense is None:
            self._dense = hz((self.n_blocks, max(self.n_library, 1)), dtype=np.uint16)
        return self._dense[b]

    def dense_cnt(self, b: int) -> np.ndarray:
        """Block ``b``'s uint8 (n_library,) matched-pair counts of the dense scan with a minimum of matched
        peaks (zero between calls; allocated on first use, as :meth:`dense_acc`)."""
        if self._dense_cnt is None:
            self._dense_cnt = hz((self.n_blocks, max(self.n_library, 1)), dtype=np.uint8)
        return self._dense_cnt[b]


class PeakIndex(NamedTuple):
    """Library arrays the bound search reads (all memory-mappable).

    Index entries name spectra by *scan id*: the library row, or with ``scan_rows`` a position in
    that order (``scan_rows[id]`` is the row). The per-spectrum arrays (``starts`` to ``prec_order``)
    are indexed by scan id; the peaks themselves stay in library order. Scan ids that put spectra
    sharing fragments next to each other (:data:`fastspec.library.SCAN_ORDER`) keep the kernel's
    per-spectrum accumulators they update close together in memory, whatever order the library came in.
    """

    frag_mz: np.ndarray  #: float32 (P,), fragment m/z sorted
    frag_spec: np.ndarray  #: int32 (P,), scan ids
    frag_w: np.ndarray  #: float32 (P,), scan weights in fragment order (entropy: square roots)
    nl_mz: np.ndarray  #: float32 (Q,), neutral losses sorted
    nl_spec: np.ndarray  #: int32 (Q,), scan ids
    nl_w: np.ndarray  #: float32 (Q,), scan weights (entropy: square roots)
    starts: np.ndarray  #: int64 (n,), first peak of each spectrum in ``mz`` / ``w``
    ends: np.ndarray  #: int64 (n,), one past its last peak
    mz: np.ndarray  #: float64 (P,), CSR peaks in library order
    w: np.ndarray  #: float32 (P,), weights in CSR order
    precursor_mz: np.ndarray  #: float64 (n,)
    min_gap: np.ndarray  #: float32 (n,), smallest m/z gap between neighbouring peaks (inf for one peak)
    prec_sorted: np.ndarray  #: float64 (n,), precursor m/z sorted (NaN last)
    prec_order: np.ndarray  #: int64 (n,), scan ids in that order
    min_gap_min: float = 0.0  #: smallest entry of ``min_gap`` (is the whole library clean at a tolerance?)
    #: int64 (G+1,): the fragment entries of group g (sorted by m/z) are ``frag_groups[g]:frag_groups[g+1]``
    #: (None: one group)
    frag_groups: np.ndarray | None = None
    nl_groups: np.ndarray | None = None  #: the same for the neutral-loss entries
    scan_rows: np.ndarray | None = None  #: int64 (n,), library row of each scan id (None: ids are rows)
    #: uint8 (P,) / (Q,): ``frag_w`` / ``nl_w`` quantised by :func:`quantize_weights` (None: computed on use)
    frag_q8: np.ndarray | None = None
    nl_q8: np.ndarray | None = None


def search_bounds(
    q_rows: np.ndarray,
    q_offsets: np.ndarray,
    q_mz: np.ndarray,
    q_weights: np.ndarray,
    q_precursor_mz: np.ndarray,
    index: PeakIndex,
    *,
    kind: int,
    use_nl: bool,
    tol_da: float,
    tol_ppm: float,
    k: int,
    m: int,
    workspace: BoundWorkspace,
    theta: np.ndarray | None = None,
    q_codes: np.ndarray | None = None,
    lib_codes: np.ndarray | None = None,
    symmetric: np.ndarray | None = None,
    q_groups: np.ndarray | None = None,
    min_pairs: int = 1,
    min_score: float = 0.0,
    nl_base: float = 0.0,
    threads: int | None = None,
    order_smoothing: float | None = None,
    compact_min: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` library spectra with the highest score upper bounds for each query, with pruning.

    Query peaks are scanned by decreasing mass per window entry. Spectra not reached by the scanned
    peaks cannot score more than the norm of the unscanned ones (Cauchy-Schwarz), so the scan stops
    once that is below ``theta``, a lower bound of the k-th best final score (given, or found at checkpoints from exact scores of the
    best partial sums when both spectra are clean). Library peaks whose weight cannot lift a spectrum
    not reached yet to ``theta`` are passed over (:func:`_alive_band`). The reached spectra that can
    still beat ``theta`` get their bound completed (see the module docstring).

    Parameters
    ----------
    q_rows : ndarray, int64 (nq,)
        Which queries (rows of the query CSR) to process.
    q_offsets, q_mz, q_weights, q_precursor_mz : ndarray
        Query CSR peaks, per-peak weights (float32) of the same kind as the library's, precursor m/z.
    index : PeakIndex
    kind : int
        :data:`KIND_PRODUCT` (cosine; L2-normalised weights) or :data:`KIND_ENTROPY` (sum-normalised).
    use_nl : bool
        Also match neutral losses (modified cosine).
    tol_da, tol_ppm : float
        Fragment tolerance (one of them 0).
    k : int
        Hits wanted (for the lower-bound checkpoints).
    m : int
        Candidates returned per query.
    workspace : BoundWorkspace
    theta : ndarray, float64 (nq,), optional
        Known lower bounds of each query's k-th best score (-inf: unknown).
    q_codes, lib_codes, symmetric : ndarray
        Filter codes (int32 (nq_total, f), (n_library, f) by scan id (``lib_codes[index.scan_rows]`` of
        the codes by row), bool (f,)), -1 unknown. A spectrum passes
        filter ``f`` if the query code is -1, the codes are equal, or ``symmetric[f]`` and its code is -1.
    q_groups : ndarray, bool (nq_total, G), optional
        Which groups of the index (``index.frag_groups``) each query may match; the others are not
        scanned at all. Default: every group.
    min_pairs : int
        Minimum number of query peaks with a partner.
    min_score : float
        Spectra that cannot reach this are dropped.
    nl_base : float
        Largest fragment m/z (sizes ppm neutral-loss windows).
    order_smoothing : float, optional
        Query peaks are scanned by decreasing ``mass / (order_smoothing + window entries)``; 0 scans
        the heaviest first. Default: ``_ORDER_SHARE`` of the fragment entries. Results do not depend on
        it; it must be finite and non-negative.
    compact_min : int, optional
        Spectra reached before the early stop from which their accumulators are compacted (see
        ``_COMPACT_MIN``, the default). The candidates do not depend on it.

    Returns
    -------
    ids : ndarray, int64 (nq, m)
        Candidate library rows (-1 padding at the end), by decreasing bound (equal bounds: lowest scan
        id first, which is not the lowest row when ``index.scan_rows`` is set).
    bounds : ndarray, float64 (nq, m)
        Their upper bounds (slack included; -1 for padding).
    next_bound : ndarray, float64 (nq,)
        The best bound among spectra left out that could still beat ``theta`` (-1 when none).
    stats : ndarray, int64 (nq, 7)
        Spectra reached, query peaks scanned for new spectra, query peaks scanned in all, survivors of the
        early stop, spectra ruled out, whether a precursor-window threshold was found, whether the
        accumulators were compacted (diagnostics).
    """
    q_rows, m, (ids, bounds, nxt, stats) = _outputs(q_rows, m)
    nq = q_rows.shape[0]
    n_total_q = q_offsets.shape[0] - 1
    theta, q_codes, lib_codes, symmetric = _defaults(nq, n_total_q, workspace.n_library, theta, q_codes, lib_codes,
                                                     symmetric)
    c0 = _ORDER_SHARE * index.frag_mz.shape[0] if order_smoothing is None else float(order_smoothing)
    if not (np.isfinite(c0) and c0 >= 0):
        raise ValueError(f"order_smoothing must be finite and >= 0, got {order_smoothing!r}")
    if nq == 0:
        return ids, bounds, nxt, stats
    gap_thr = clean_gap(tol_da, tol_ppm, nl_base)
    ix = index
    n_lib = ix.starts.shape[0]
    mean_peaks = float(ix.mz.shape[0]) / max(n_lib, 1)
    prec_sorted = np.asarray(ix.prec_sorted)
    n_prec = int(np.searchsorted(prec_sorted, np.inf, side="left")) if prec_sorted.shape[0] else 0
    lib_clean = bool(n_lib == 0 or float(ix.min_gap_min) > gap_thr)
    fq8 = quantize_weights(ix.frag_w) if ix.frag_q8 is None else ix.frag_q8
    nq8 = quantize_weights(ix.nl_w) if ix.nl_q8 is None else ix.nl_q8
    f32, f64, i32, i64 = np.float32, np.float64, np.int32, np.int64
    args = (_ro(q_rows, i64), _ro(q_offsets, i64), _ro(q_mz, f64), _ro(q_weights, f32), _ro(q_precursor_mz, f64),
            _ro(theta, f64), _ro(ix.frag_mz, f32), _ro(ix.frag_spec, i32), _ro(ix.frag_w, f32), _ro(fq8, np.uint8),
            _ro(ix.nl_mz, f32), _ro(ix.nl_spec, i32), _ro(ix.nl_w, f32), _ro(nq8, np.uint8),
            _group_ranges(ix.frag_groups, ix.frag_mz.shape[0], q_groups, n_total_q),
            _group_ranges(ix.nl_groups, ix.nl_mz.shape[0], q_groups, n_total_q), bool(use_nl),
            (_ro(ix.starts, i64), _ro(ix.ends, i64)),
            _ro(ix.mz, f64),
            _ro(ix.w, f32), _ro(ix.precursor_mz, f64), _ro(ix.min_gap, f32), _ro(ix.prec_sorted, f64),
            _ro(ix.prec_order, i64), n_prec, lib_clean, int(kind), float(tol_da), float(tol_ppm), float(nl_base),
            gap_thr, mean_peaks, _ro(q_codes, i32), _ro(lib_codes, i32), _ro(symmetric, np.bool_), int(min_pairs),
            float(min_score), int(k), m, float(c0), int(_COMPACT_MIN if compact_min is None else compact_min))
    ws = workspace
    n_blocks = max(1, min(ws.n_blocks, nq, int(threads) if threads else ws.n_blocks))
    await_compiled("search_bounds")  # a process compiling it ahead (fastspec demo / query): load, not compile

    def run(b: int) -> None:
        _search_bounds(b, n_blocks, *args, ws.work[b], ws.count[b], ws.live[b], ws.touched[b], ws.dead[b],
                       ws.cwork[b], ws.slots[b], ws.rank[b], ws.snap[b], ids, bounds, nxt, stats)

    _run_blocks(n_blocks, run, ids, ix.scan_rows)
    return ids, bounds, nxt, stats


def _outputs(q_rows, m: int):
    """A bound kernel's call: ``q_rows`` as int64, ``m`` (at least 1) and its outputs for them (ids
    int64 (nq, m), bounds float64 (nq, m), next bound float64 (nq,), stats int64 (nq, 7))."""
    q_rows = np.ascontiguousarray(q_rows, dtype=np.int64)
    nq = q_rows.shape[0]
    m = max(int(m), 1)
    return q_rows, m, (np.empty((nq, m), dtype=np.int64), np.empty((nq, m), dtype=np.float64),
                       np.empty(nq, dtype=np.float64), np.zeros((nq, 7), dtype=np.int64))


def _defaults(nq: int, n_total_q: int, n_library: int, theta, q_codes, lib_codes, symmetric):
    """A bound kernel's thresholds (-inf when None) and filter codes (no filter when any is None)."""
    if q_codes is None or lib_codes is None or symmetric is None:
        q_codes = np.full((n_total_q, 0), -1, dtype=np.int32)
        lib_codes = np.full((n_library, 0), -1, dtype=np.int32)
        symmetric = np.zeros(0, dtype=np.bool_)
    theta = np.full(nq, -np.inf) if theta is None else np.ascontiguousarray(theta, dtype=np.float64)
    return theta, q_codes, lib_codes, symmetric


def _run_blocks(n_blocks: int, run, ids: np.ndarray, scan_rows) -> None:
    """``run(b)`` for every block of queries, in threads when several (the kernels release the GIL), then
    the candidates' scan ids in ``ids`` turned into library rows."""
    if n_blocks == 1:
        run(0)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=n_blocks) as ex:
            list(ex.map(run, range(n_blocks)))
    if scan_rows is not None:  # scan ids -> library rows
        hit = ids >= 0
        ids[hit] = np.asarray(scan_rows)[ids[hit]]


def compile_search_bounds() -> None:
    """Compile the bound kernel (or load it from numba's on-disk cache) by running it once, tiny.

    :func:`search_bounds` passes every array through :func:`_ro` and every scalar as a Python
    ``int``/``float``/``bool``, so the kernel has one signature whatever the index, the queries and
    the mode (cosine, entropy, analog, hybrid): a one-spectrum index compiles the very build every
    search runs. It is the largest compilation in fastspec (about 40 s on an empty cache), which
    ``fastspec demo`` and ``fastspec query`` start in a second process (:mod:`fastspec.cli._ahead`).
    """
    index = tiny_index()
    search_bounds(np.zeros(1, dtype=np.int64), np.array([0, 2]), index.mz, index.w, index.precursor_mz, index,
                  kind=KIND_PRODUCT, use_nl=False, tol_da=0.01, tol_ppm=0.0, k=1, m=1, workspace=BoundWorkspace(1, 1),
                  threads=1)


def tiny_index() -> PeakIndex:
    """A one-spectrum index (two peaks, m/z 100 and 200, precursor 300) whose peaks double as a query:
    what the compile-ahead calls of the bound kernels run on."""
    mz = np.array([100.0, 200.0])
    w = np.array([0.6, 0.8], dtype=np.float32)
    spec = np.zeros(2, dtype=np.int32)
    one = np.zeros(1, dtype=np.int64)
    pmz = np.array([300.0])
    loss = (pmz[0] - mz[::-1]).astype(np.float32)
    return PeakIndex(frag_mz=mz.astype(np.float32), frag_spec=spec, frag_w=w, nl_mz=loss, nl_spec=spec,
                     nl_w=w[::-1].copy(), starts=one, ends=one + 2, mz=mz, w=w, precursor_mz=pmz,
                     min_gap=np.array([100.0], dtype=np.float32), prec_sorted=pmz, prec_order=one, min_gap_min=100.0)


def search_bounds_cached() -> bool | None:
    """Whether numba's on-disk cache holds the bound kernel for this machine and this source (None when
    that cannot be told: numba's cache internals are read, and any surprise there means "unknown")."""
    import os

    try:
        cache = _search_bounds._cache
        codegen = _search_bounds.targetctx.codegen()
        want = cache._index_key(None, codegen)[1:]  # (machine, source hashes); the signature is the one
        # numba writes the index before the data file: a process stopped in between leaves only the index
        return any(tuple(key[1:]) == want and os.path.exists(os.path.join(cache.cache_path, name))
                   for key, name in cache._cache_file._load_index().items())
    except Exception:  # noqa: BLE001 - numba internals changed: unknown
        return None


def _group_ranges(bounds: np.ndarray | None, size: int, allowed: np.ndarray | None, nq: int) -> np.ndarray:
    """Entry ranges int64 (nq, G, 2) each query scans: its allowed groups, (0, 0) for the others."""
    b = np.array([0, size], dtype=np.int64) if bounds is None else np.asarray(bounds, dtype=np.int64)
    n_groups = b.shape[0] - 1
    ok = np.ones((nq, n_groups), dtype=bool) if allowed is None or bounds is None else np.asarray(allowed, bool)
    if ok.shape != (nq, n_groups):
        raise ValueError(f"q_groups: shape {ok.shape}, expected {(nq, n_groups)}")
    rng = np.zeros((nq, n_groups, 2), dtype=np.int64)
    rng[:, :, 0] = np.where(ok, b[:-1], 0)
    rng[:, :, 1] = np.where(ok, b[1:], 0)
    return _ro(rng, np.int64)


def clean_gap(tol_da: float, tol_ppm: float, nl_base: float) -> float:
    """Two peaks of one spectrum closer than this (m/z) could share a query peak's window: a spectrum
    whose peaks are all further apart is *clean* (its pairs within tolerance are one-to-one). ppm
    windows are sized at ``nl_base``, the largest m/z (at least 1)."""
    top = max(float(nl_base), 1.0)
    return 2.0 * (float(tol_da) if tol_ppm <= 0 else float(tol_ppm) * 1e-6 * top / (1 - float(tol_ppm) * 1e-6)) \
        + 6e-7 * top + 2e-6


def _ro(a, dtype) -> np.ndarray:
    """A read-only C-contiguous view (a copy only if dtype or layout differ): every input array of the
    bound kernel then has one numba type, whether it is a memory map or was computed, so the kernel
    compiles once."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.flags.writeable:
        a = a.view()
        a.setflags(write=False)
    return a


@numba.njit(**NJIT)
def _min_gaps(offsets, mz, out):
    for i in range(offsets.shape[0] - 1):
        g = np.inf
        for p in range(offsets[i] + 1, offsets[i + 1]):
            d = mz[p] - mz[p - 1]
            if d < g:
                g = d
        out[i] = g


def min_peak_gaps(offsets: np.ndarray, mz: np.ndarray) -> np.ndarray:
    """Smallest m/z difference between neighbouring peaks of each spectrum, float32 (n,) (inf: < 2 peaks)."""
    offsets = check_offsets(offsets, mz)
    out = np.empty(offsets.shape[0] - 1, dtype=np.float64)
    _min_gaps(offsets, np.ascontiguousarray(mz, np.float64), out)
    # rounded down so that float32 storage never overstates a gap
    o32 = out.astype(np.float32)
    return np.where(o32.astype(np.float64) > out, np.nextafter(o32, np.float32(-np.inf)), o32).astype(np.float32)


# ---------------------------------------------------------------------------------------- candidate sets
@numba.njit(**NJIT)
def _compact(ids, mark, uniq):
    nu = 0
    for i in range(ids.shape[0]):
        c = ids[i]
        if mark[c] < 0:
            mark[c] = nu
            uniq[nu] = c
            nu += 1
    return nu


@numba.njit(**NJIT)
def _remap(ids, mark, uniq_sorted, out):
    for u in range(uniq_sorted.shape[0]):
        mark[uniq_sorted[u]] = u
    for i in range(ids.shape[0]):
        out[i] = mark[ids[i]]
    for u in range(uniq_sorted.shape[0]):
        mark[uniq_sorted[u]] = -1


def compact_ids(ids: np.ndarray, mark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct library rows of a candidate list and each entry's position among them.

    Parameters
    ----------
    ids : ndarray, int64 (c,)
        Library rows (0 <= id < len(mark)).
    mark : ndarray, int64 (n_library,)
        Scratch filled with -1; left filled with -1 on return (reused across calls, O(c) per call).

    Returns
    -------
    uniq : ndarray, int64 (u,)
        Distinct rows, ascending (so positions keep the library order for tie-breaking).
    local : ndarray, int64 (c,)
        ``uniq[local] == ids``.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    uniq = np.empty(ids.shape[0], dtype=np.int64)
    nu = _compact(ids, mark, uniq)
    uniq = np.sort(uniq[:nu])
    local = np.empty(ids.shape[0], dtype=np.int64)
    _remap(ids, mark, uniq, local)
    return uniq, local
