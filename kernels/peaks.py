"""Peak preprocessing kernels over CSR spectra ``(offsets, mz, intensity)``.

Every public ``*_csr`` function validates its inputs, runs a private numba kernel parallel over spectra
and returns new ``(offsets int64, mz float64, intensity float32)`` arrays (the inputs are never modified).
Input peaks must be sorted by m/z inside each spectrum (as :class:`fastspec.Spectra` guarantees); outputs
stay sorted.

Invalid peaks -- m/z not finite or <= 0, intensity not finite or <= 0 -- are dropped by *every* kernel, so
no step can output NaN, infinite, zero or negative intensities.

Each kernel writes the peaks it keeps for spectrum ``i`` into scratch buffers at ``offsets[i]`` and counts
them; :func:`_compact` then packs the buffers (skipped when nothing was dropped).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastspec.errors import ParameterError
from fastspec.kernels._config import NJIT, pjit
from fastspec.kernels._config import threads as _threads

__all__ = [
    "mz_range_csr",
    "remove_precursor_csr",
    "noise_cut_csr",
    "top_k_csr",
    "merge_peaks_csr",
    "normalize_csr",
    "weight_csr",
    "sanitize_csr",
    "l2_norms_csr",
    "gather_csr",
    "NORMALIZE_MODES",
    "DUPLICATE_MODES",
]

NORMALIZE_MODES = ("max", "sum", "l2")
DUPLICATE_MODES = ("sum", "max", "keep")
_F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------- helpers
@numba.njit(**NJIT)
def _ok(m, x):
    """A peak is valid when m/z and intensity are finite and > 0 (NaN fails every comparison)."""
    return m > 0.0 and m < np.inf and x > 0.0 and x < np.inf


@numba.njit(**NJIT)
def _pack(offsets, counts, new_offsets, buf_mz, buf_int):
    # serial on purpose: destinations never run ahead of sources (new_offsets[i] <= offsets[i]), which
    # holds for one forward pass but not between threads
    for i in range(counts.shape[0]):
        src = offsets[i]
        dst = new_offsets[i]
        if src != dst:
            for j in range(counts[i]):
                buf_mz[dst + j] = buf_mz[src + j]
                buf_int[dst + j] = buf_int[src + j]


@numba.njit(**NJIT)
def _offsets_of(counts, out):
    # the running sum of counts into out[1:] (out[0] = 0); numba, because a one-spectrum query passes
    # through every preprocessing step, where numpy's per-call overhead adds up
    out[0] = 0
    for i in range(counts.shape[0]):
        out[i + 1] = out[i] + counts[i]
    return out[counts.shape[0]]


@numba.njit(**NJIT)
def _offsets_ok(offsets, n_peaks):
    """offsets start at 0, never decrease and end at ``n_peaks``."""
    if offsets[0] != 0 or offsets[offsets.shape[0] - 1] != n_peaks:
        return False
    for i in range(offsets.shape[0] - 1):
        if offsets[i + 1] < offsets[i]:
            return False
    return True


def _compact(offsets, counts, buf_mz, buf_int):
    """Pack the first ``counts[i]`` buffered peaks of every spectrum into CSR arrays, in place.

    ``buf_mz`` and ``buf_int`` must be fresh arrays owned by the caller (nothing else may view them): they
    are packed where they are and shrunk (``ndarray.resize``: a realloc, no copy). Packing into new arrays
    instead allocated and first-touched as many bytes again at every preprocessing step.
    """
    new_offsets = np.empty(offsets.shape[0], dtype=np.int64)
    total = int(_offsets_of(counts, new_offsets))
    if total == offsets[-1]:  # nothing dropped: the buffers are already packed
        return new_offsets, buf_mz, buf_int
    _pack(offsets, counts, new_offsets, buf_mz, buf_int)
    buf_mz.resize(total, refcheck=False)
    buf_int.resize(total, refcheck=False)
    return new_offsets, buf_mz, buf_int


def check_offsets(offsets, *peak_arrays) -> np.ndarray:
    """``offsets`` as int64, checked against the peak arrays (ParameterError): 1-D (n+1,), starting at 0,
    non-decreasing and ending at their common length. A kernel given offsets past its arrays would read
    (or write) outside them."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    shapes = {np.shape(a) for a in peak_arrays}
    if offsets.ndim != 1 or offsets.shape[0] < 1 or len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ParameterError("CSR peaks: offsets (n+1,) and 1-D peak arrays of one length (n_peaks,) expected")
    if not _offsets_ok(offsets, next(iter(shapes))[0]):
        raise ParameterError("CSR peaks: offsets must start at 0, be non-decreasing and end at the number of peaks")
    return offsets


def _check_csr(offsets, mz, intensity):
    offsets = check_offsets(offsets, mz, intensity)
    return offsets, np.ascontiguousarray(mz, dtype=np.float64), np.ascontiguousarray(intensity, dtype=np.float32)


def _run(kernel, offsets, mz, intensity, *args, threads=None):
    """Run a buffer-writing kernel and compact its output."""
    n = offsets.shape[0] - 1
    buf_mz = np.empty_like(mz)
    buf_int = np.empty_like(intensity)
    counts = np.empty(n, dtype=np.int64)
    with _threads(threads):
        kernel.pick(n, threads)(offsets, mz, intensity, *args, buf_mz, buf_int, counts)
        return _compact(offsets, counts, buf_mz, buf_int)


def _finite(name, value, lo=None):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if v != v or (lo is not None and v < lo):
        raise ParameterError(f"{name} must be a number" + (f" >= {lo}" if lo is not None else "") + f", got {value!r}")
    return v


# ---------------------------------------------------------------------------------------- filters
@pjit
def _mz_range(offsets, mz, intensity, lo, hi, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        c = offsets[i]
        for p in range(offsets[i], offsets[i + 1]):
            m = mz[p]
            x = intensity[p]
            if _ok(m, x) and m >= lo and m <= hi:
                buf_mz[c] = m
                buf_int[c] = x
                c += 1
        counts[i] = c - offsets[i]


def mz_range_csr(offsets, mz, intensity, min_mz: float = 0.0, max_mz: float = np.inf, threads: int | None = None):
    """Keep peaks with ``min_mz <= mz <= max_mz`` (both inclusive, as matchms ``select_by_mz``).

    Parameters
    ----------
    offsets : ndarray int64 (n+1,); mz : ndarray float64 (n_peaks,); intensity : ndarray float32 (n_peaks,)
    min_mz, max_mz : float
        Bounds in m/z (Da/charge); ``max_mz`` may be ``inf``.
    threads : int, optional
        Numba threads (default: all).

    Returns
    -------
    offsets, mz, intensity : new CSR arrays
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    lo = _finite("min_mz", min_mz)
    hi = _finite("max_mz", max_mz)
    if hi < lo:
        raise ParameterError(f"max_mz ({hi}) is below min_mz ({lo})")
    return _run(_mz_range, offsets, mz, intensity, lo, hi, threads=threads)


@pjit
def _remove_precursor(offsets, mz, intensity, precursor_mz, window, above, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        c = offsets[i]
        pm = precursor_mz[i]
        known = pm > 0.0 and pm < np.inf
        for p in range(offsets[i], offsets[i + 1]):
            m = mz[p]
            x = intensity[p]
            if not _ok(m, x):
                continue
            if known:
                if above:
                    if m > pm - window:
                        continue
                elif abs(m - pm) <= window:
                    continue
            buf_mz[c] = m
            buf_int[c] = x
            c += 1
        counts[i] = c - offsets[i]


def remove_precursor_csr(offsets, mz, intensity, precursor_mz, window: float = 1.6, above: bool = True,
                         threads: int | None = None):
    """Remove the precursor peak (and, with ``above``, everything heavier).

    Parameters
    ----------
    precursor_mz : ndarray float64 (n,)
        Precursor m/z per spectrum; NaN (unknown) removes nothing from that spectrum.
    window : float
        Da. ``above=True``: drop peaks with ``mz > precursor_mz - window`` (ms_entropy's
        ``precursor_ions_removal_da``, matchms ``remove_peaks_relative_to_precursor_mz(-window)``).
        ``above=False``: drop peaks with ``|mz - precursor_mz| <= window``.
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    pmz = np.ascontiguousarray(precursor_mz, dtype=np.float64)
    if pmz.shape != (offsets.shape[0] - 1,):
        raise ParameterError("precursor_mz must have one value per spectrum")
    w = _finite("window", window, 0.0)
    return _run(_remove_precursor, offsets, mz, intensity, pmz, w, bool(above), threads=threads)


@pjit
def _noise_cut(offsets, mz, intensity, relative, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        top = 0.0
        for p in range(offsets[i], offsets[i + 1]):
            if _ok(mz[p], intensity[p]) and intensity[p] > top:
                top = np.float64(intensity[p])
        c = offsets[i]
        for p in range(offsets[i], offsets[i + 1]):
            m = mz[p]
            x = intensity[p]
            # x / top >= relative, as matchms' select_by_relative_intensity: x >= relative * top dropped a
            # peak exactly on the threshold where the product rounds up (7 of 100 at 0.07)
            if _ok(m, x) and np.float64(x) / top >= relative:
                buf_mz[c] = m
                buf_int[c] = x
                c += 1
        counts[i] = c - offsets[i]


def noise_cut_csr(offsets, mz, intensity, relative: float = 0.01, threads: int | None = None):
    """Keep peaks with ``intensity / max(intensity) >= relative`` in their spectrum (float64, as matchms'
    ``select_by_relative_intensity`` compares).

    ``relative`` is in [0, 1]; 0 keeps every valid peak.
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    r = _finite("relative", relative, 0.0)
    if r > 1.0:
        raise ParameterError(f"relative must be in [0, 1], got {relative!r}")
    return _run(_noise_cut, offsets, mz, intensity, r, threads=threads)


@pjit
def _top_k(offsets, mz, intensity, k, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        c = s
        if e - s <= k:  # fast path, no allocation: keep every valid peak
            for p in range(s, e):
                if _ok(mz[p], intensity[p]):
                    buf_mz[c] = mz[p]
                    buf_int[c] = intensity[p]
                    c += 1
            counts[i] = c - s
            continue
        idx = np.empty(e - s, dtype=np.int64)
        nv = 0
        for p in range(s, e):
            if _ok(mz[p], intensity[p]):
                idx[nv] = p
                nv += 1
        if nv <= k:
            for j in range(nv):
                buf_mz[c] = mz[idx[j]]
                buf_int[c] = intensity[idx[j]]
                c += 1
        else:
            vals = np.empty(nv, dtype=np.float32)
            for j in range(nv):
                vals[j] = intensity[idx[j]]
            # k-th largest intensity by selection (O(n)); every peak above it is kept, and of the peaks
            # equal to it the ones of highest m/z fill the remaining places (stable-argsort semantics)
            thr = np.partition(vals, nv - k)[nv - k]
            n_above = 0
            for j in range(nv):
                if intensity[idx[j]] > thr:
                    n_above += 1
            ties_left = k - n_above
            keep = np.zeros(nv, dtype=np.bool_)
            for j in range(nv - 1, -1, -1):
                x = intensity[idx[j]]
                if x > thr:
                    keep[j] = True
                elif x == thr and ties_left > 0:
                    keep[j] = True
                    ties_left -= 1
            for j in range(nv):
                if keep[j]:
                    buf_mz[c] = mz[idx[j]]
                    buf_int[c] = intensity[idx[j]]
                    c += 1
        counts[i] = c - s


def top_k_csr(offsets, mz, intensity, k: int, threads: int | None = None):
    """Keep the ``k`` most intense peaks of every spectrum (still sorted by m/z).

    Ties on the k-th intensity keep the peaks of higher m/z (the order a stable ascending ``argsort``
    followed by ``[-k:]`` gives, as in matchms ``reduce_to_number_of_peaks`` and ms_entropy).
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError(f"k must be an integer >= 1, got {k!r}")
    return _run(_top_k, offsets, mz, intensity, int(k), threads=threads)


# ---------------------------------------------------------------------------------------- merging
@numba.njit(**NJIT)
def _separated(m, nv, da, ppm):
    """ms_entropy's ``_check_centroid``: every gap >= the tolerance (ppm of the right-hand peak)."""
    for j in range(1, nv):
        d = m[j] - m[j - 1]
        if ppm > 0.0:
            if d < m[j] * ppm * 1e-6:
                return False
        elif d < da:
            return False
    return True


@numba.njit(**NJIT)
def _argsort_stable(w, nv, order):
    """Stable ascending argsort of ``w[:nv]`` into ``order`` (insertion sort for short arrays)."""
    if nv > 24:
        order[:nv] = np.argsort(w[:nv], kind="mergesort")
        return
    for j in range(nv):
        order[j] = j
        k = j
        while k > 0 and w[order[k - 1]] > w[j]:
            order[k] = order[k - 1]
            k -= 1
        order[k] = j


@numba.njit(**NJIT)
def _centroid_pass(m, w, nv, da, ppm, out_m, out_w, order):
    """One ms_entropy ``_centroid_spectrum`` pass in float64, in place; returns the new peak count.

    Each merged peak is stored at the index of the peak that absorbed the others: the live peaks a later
    (weaker) peak absorbs all lie on one side of every earlier window, so reading the results in index
    order gives them sorted by m/z without a second sort.
    """
    _argsort_stable(w, nv, order)
    for j in range(nv):
        out_w[j] = 0.0
    dl = da
    dr = da
    for r in range(nv - 1, -1, -1):  # most intense first; ties: higher m/z first
        idx = order[r]
        if w[idx] <= 0.0:
            continue  # already merged into a more intense peak
        if ppm > 0.0:
            dl = m[idx] * ppm * 1e-6
            dr = m[idx] / (1.0 - ppm * 1e-6) - m[idx]
        lo = idx - 1
        while lo >= 0 and m[idx] - m[lo] <= dl:
            lo -= 1
        lo += 1
        hi = idx + 1
        while hi < nv and m[hi] - m[idx] <= dr:
            hi += 1
        sw = 0.0
        swm = 0.0
        for q in range(lo, hi):
            sw += w[q]
            swm += w[q] * m[q]
            w[q] = 0.0
        out_m[idx] = swm / sw
        out_w[idx] = sw
    cnt = 0
    for j in range(nv):
        if out_w[j] > 0.0:
            m[cnt] = out_m[j]
            w[cnt] = out_w[j]
            cnt += 1
    return cnt


@pjit
def _merge(offsets, mz, intensity, da, ppm, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        # fast path, no allocation: valid peaks already separated (most library spectra)
        c = s
        sep = True
        for p in range(s, e):
            if _ok(mz[p], intensity[p]):
                if c > s:
                    d = mz[p] - buf_mz[c - 1]
                    if (d < mz[p] * ppm * 1e-6) if ppm > 0.0 else (d < da):
                        sep = False
                        break
                buf_mz[c] = mz[p]
                buf_int[c] = intensity[p]
                c += 1
        if sep:
            counts[i] = c - s
            continue
        m = np.empty(e - s, dtype=np.float64)
        w = np.empty(e - s, dtype=np.float64)
        out_m = np.empty(e - s, dtype=np.float64)
        out_w = np.empty(e - s, dtype=np.float64)
        order = np.empty(e - s, dtype=np.int64)
        nv = 0
        for p in range(s, e):
            if _ok(mz[p], intensity[p]):
                m[nv] = mz[p]
                w[nv] = intensity[p]
                nv += 1
        while not _separated(m, nv, da, ppm):
            nv = _centroid_pass(m, w, nv, da, ppm, out_m, out_w, order)
        for j in range(nv):
            buf_mz[s + j] = m[j]
            buf_int[s + j] = min(w[j], _F32_MAX)
        counts[i] = nv


def merge_peaks_csr(offsets, mz, intensity, da: float = 0.0, ppm: float = 0.0, threads: int | None = None):
    """Merge peaks closer than a tolerance (ms_entropy ``centroid_spectrum`` rule, in float64).

    Peaks are visited from the most intense down (ties: higher m/z first); each peak not yet merged absorbs
    every not-yet-merged peak within ``da`` Da (or ``ppm``: left ``mz*ppm*1e-6``, right
    ``mz/(1-ppm*1e-6) - mz``) on either side into one peak at the intensity-weighted mean m/z with the
    summed intensity. Passes repeat until every gap is ``>= da`` (or ``>= ppm`` of the right peak's m/z).
    Exactly one of ``da`` / ``ppm`` should be > 0; both 0 leaves the peaks unchanged.
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    da = _finite("da", da, 0.0)
    ppm = _finite("ppm", ppm, 0.0)
    if da > 0.0 and ppm > 0.0:
        raise ParameterError("give a tolerance in Da or in ppm, not both")
    if ppm >= 1e6:
        raise ParameterError(f"ppm must be < 1e6, got {ppm}")
    return _run(_merge, offsets, mz, intensity, da, ppm, threads=threads)


# ---------------------------------------------------------------------------------------- intensities
@pjit
def _normalize(offsets, mz, intensity, how, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        norm = 0.0
        for p in range(offsets[i], offsets[i + 1]):
            if _ok(mz[p], intensity[p]):
                x = np.float64(intensity[p])
                if how == 0:
                    norm = max(norm, x)
                elif how == 1:
                    norm += x
                else:
                    norm += x * x
        if how == 2:
            norm = np.sqrt(norm)
        c = offsets[i]
        if norm > 0.0:
            for p in range(offsets[i], offsets[i + 1]):
                if _ok(mz[p], intensity[p]):
                    v = np.float32(np.float64(intensity[p]) / norm)
                    if v > 0:  # drop float32 underflow
                        buf_mz[c] = mz[p]
                        buf_int[c] = v
                        c += 1
        counts[i] = c - offsets[i]


def normalize_csr(offsets, mz, intensity, how: str = "max", threads: int | None = None):
    """Scale every spectrum: ``"max"`` (base peak = 1, matchms), ``"sum"`` (total = 1, ms_entropy) or ``"l2"``
    (Euclidean norm = 1). Computed in float64, stored float32."""
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    if how not in NORMALIZE_MODES:
        raise ParameterError(f"how must be one of {NORMALIZE_MODES}, got {how!r}")
    return _run(_normalize, offsets, mz, intensity, NORMALIZE_MODES.index(how), threads=threads)


@pjit
def _weight(offsets, mz, intensity, mz_power, intensity_power, buf_mz, buf_int, counts):
    for i in prange(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        top = 0.0
        for p in range(s, e):
            if _ok(mz[p], intensity[p]):
                top = max(top, (mz[p] ** mz_power) * (np.float64(intensity[p]) ** intensity_power))
        # rescale a spectrum whose weights would overflow float32 (scores are scale-invariant)
        scale = 1.0 / top if top > _F32_MAX else 1.0
        c = s
        for p in range(s, e):
            if _ok(mz[p], intensity[p]):
                v = np.float32((mz[p] ** mz_power) * (np.float64(intensity[p]) ** intensity_power) * scale)
                if v > 0 and v < np.inf:
                    buf_mz[c] = mz[p]
                    buf_int[c] = v
                    c += 1
        counts[i] = c - s


def weight_csr(offsets, mz, intensity, mz_power: float = 0.0, intensity_power: float = 1.0,
               threads: int | None = None):
    """Replace intensities by ``mz**mz_power * intensity**intensity_power`` (matchms weighting).

    Computed in float64. A spectrum whose largest weight exceeds the float32 range is divided by that
    weight; weights that underflow to 0 in float32 are dropped.
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    a = _finite("mz_power", mz_power)
    b = _finite("intensity_power", intensity_power)
    if abs(a) == np.inf or abs(b) == np.inf:
        raise ParameterError("mz_power and intensity_power must be finite")
    return _run(_weight, offsets, mz, intensity, a, b, threads=threads)


# ---------------------------------------------------------------------------------------- sanitize
@pjit
def _sanitize(offsets, mz, intensity, mode, buf_mz, buf_int, counts, n_invalid, n_dup, unsorted):
    for i in prange(offsets.shape[0] - 1):
        c = offsets[i]
        bad = 0
        dup = 0
        acc = 0.0
        unsorted[i] = False
        for p in range(offsets[i], offsets[i + 1]):
            m = mz[p]
            x = intensity[p]
            if not _ok(m, x):
                bad += 1
                continue
            if c > offsets[i] and m < buf_mz[c - 1]:
                unsorted[i] = True  # only possible when NaN m/z hid the disorder from the sort check
            if c > offsets[i] and mode != 2 and buf_mz[c - 1] == m:
                dup += 1
                if mode == 0:
                    acc += np.float64(x)
                    buf_int[c - 1] = min(acc, _F32_MAX)
                elif x > buf_int[c - 1]:
                    buf_int[c - 1] = x
                continue
            buf_mz[c] = m
            buf_int[c] = x
            acc = np.float64(x)
            c += 1
        counts[i] = c - offsets[i]
        n_invalid[i] = bad
        n_dup[i] = dup


def sanitize_csr(offsets, mz, intensity, duplicates: str = "sum", threads: int | None = None):
    """Drop invalid peaks and merge peaks of identical m/z within a spectrum.

    Invalid: m/z NaN, infinite or <= 0; intensity NaN, infinite or <= 0. ``duplicates``: ``"sum"`` (one
    peak with the summed intensity), ``"max"`` (the largest intensity) or ``"keep"`` (leave them).

    Returns
    -------
    offsets, mz, intensity : new CSR arrays
    n_invalid, n_duplicates : ndarray int64 (n,)
        Per spectrum: invalid peaks dropped, duplicate peaks merged away.
    unsorted : ndarray bool (n,)
        Spectra whose valid peaks were not sorted by m/z (their duplicates may be missed; the caller
        sorts and runs again).
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    if duplicates not in DUPLICATE_MODES:
        raise ParameterError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    n = offsets.shape[0] - 1
    n_invalid = np.zeros(n, dtype=np.int64)
    n_dup = np.zeros(n, dtype=np.int64)
    buf_mz = np.empty_like(mz)
    buf_int = np.empty_like(intensity)
    counts = np.empty(n, dtype=np.int64)
    unsorted = np.zeros(n, dtype=np.bool_)
    with _threads(threads):
        _sanitize.pick(n, threads)(offsets, mz, intensity, DUPLICATE_MODES.index(duplicates), buf_mz, buf_int,
                                   counts, n_invalid, n_dup, unsorted)
        new = _compact(offsets, counts, buf_mz, buf_int)
    return (*new, n_invalid, n_dup, unsorted)


# ---------------------------------------------------------------------------------------- weights, gathers
@pjit
def _l2_norms(offsets, w, out):
    for i in prange(out.shape[0]):
        s = 0.0
        for p in range(offsets[i], offsets[i + 1]):  # peak order: the same sum as a bincount over peaks
            x = np.float64(w[p])
            s += x * x
        out[i] = np.sqrt(s)


def l2_norms_csr(offsets: np.ndarray, w: np.ndarray, threads: int | None = None) -> np.ndarray:
    """L2 norm of the peak weights of each spectrum.

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
    w : ndarray, float32 or float64 (n_peaks,)

    Returns
    -------
    ndarray, float64 (n,)
    """
    offsets = check_offsets(offsets, w)
    # float32 weights are read as they are (squared in float64): no float64 copy of every peak
    w = np.asarray(w)
    w = np.ascontiguousarray(w, dtype=w.dtype if w.dtype in (np.float32, np.float64) else np.float64)
    out = np.empty(offsets.shape[0] - 1, dtype=np.float64)
    with _threads(threads):
        _l2_norms.pick(out.shape[0], threads)(offsets, w, out)
    return out


@pjit
def _top_peaks(offsets, mz, intensity, out):
    for i in prange(offsets.shape[0] - 1):
        b1 = -np.inf
        b2 = -np.inf
        v1 = np.inf
        v2 = np.inf
        for p in range(offsets[i], offsets[i + 1]):
            x = intensity[p]
            if x > b1:  # the first of equal maxima
                b2, v2 = b1, v1
                b1, v1 = x, mz[p]
            elif x > b2:
                b2, v2 = x, mz[p]
        out[i, 0] = v1
        out[i, 1] = v2


def top_peaks_mz(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, threads: int | None = None) -> np.ndarray:
    """m/z (Da) of each spectrum's most intense and second most intense peak, float64 (n, 2) (inf: no
    such peak).

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
    mz : ndarray, float64 (n_peaks,)
    intensity : ndarray, float32 or float64 (n_peaks,)
    """
    offsets = check_offsets(offsets, mz, intensity)
    mz = np.ascontiguousarray(mz, dtype=np.float64)
    intensity = np.asarray(intensity)
    intensity = np.ascontiguousarray(intensity, dtype=intensity.dtype if intensity.dtype in (np.float32, np.float64)
                                     else np.float64)
    out = np.empty((offsets.shape[0] - 1, 2), dtype=np.float64)
    with _threads(threads):
        _top_peaks.pick(out.shape[0], threads)(offsets, mz, intensity, out)
    return out


@pjit
def _gather_rows(offsets, mz, intensity, rows, new_offsets, out_mz, out_int):
    for r in prange(rows.shape[0]):
        src = offsets[rows[r]]
        dst = new_offsets[r]
        for j in range(new_offsets[r + 1] - dst):
            out_mz[dst + j] = mz[src + j]
            out_int[dst + j] = intensity[src + j]


def gather_csr(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, rows: np.ndarray,
               threads: int | None = None, intensity_dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peaks of spectra ``rows`` (in that order, repeats allowed) as new CSR arrays.

    One pass straight from (possibly memory-mapped) library arrays: no per-peak index array, which for
    the ~1.3M candidate spectra of 1,000 identity queries at 2.4M cost as much as scoring them.

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
    mz : ndarray, float64 (n_peaks,)
    intensity : ndarray, float32 (n_peaks,)
    rows : ndarray, int64 (r,)
        Spectra to take, ``0 <= rows < n``.

    intensity_dtype : dtype
        float32 (as stored) or float64 (as the scoring kernels read it: saves a conversion pass).

    Returns
    -------
    offsets int64 (r+1,), mz float64, intensity (``intensity_dtype``)
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    offsets = np.asarray(offsets)
    if rows.size and (rows.min() < 0 or rows.max() >= offsets.shape[0] - 1):
        raise ParameterError("gather_csr: row out of range")
    new_offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(offsets[rows + 1] - offsets[rows], out=new_offsets[1:])
    out_mz = np.empty(int(new_offsets[-1]), dtype=np.float64)
    out_int = np.empty(int(new_offsets[-1]), dtype=intensity_dtype)
    with _threads(threads):
        _gather_rows.pick(rows.shape[0], threads)(offsets, mz, intensity, rows, new_offsets, out_mz, out_int)
    return new_offsets, out_mz, out_int
