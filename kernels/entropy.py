"""Spectral entropy kernels that reproduce ms_entropy 1.5.3 (its compiled C back end) bit for bit.

ms_entropy's ``clean_spectrum`` / ``calculate_entropy_similarity`` run C code on interleaved float32
``[mz, intensity]`` arrays. These kernels keep every quantity that code keeps in ``float`` in float32 and
every quantity it promotes to ``double`` in float64 before storing it back to float32, in the same order.
The arithmetic follows the machine code of the 1.5.3 wheel, which differs in four places from the C source
now on GitHub (``languages/c``): neighbours count as "too close" when ``diff <= min_difference`` (source:
``<``); merged intensities and intensity*m/z products are summed in double; the right-hand ppm window is
``mz*ppm / (1e6 - ppm)``; the weight normaliser is ``1.0f / sum`` in float.

* m/z is rounded to float32 first; all tolerances are float32.
* ppm tolerance at m/z ``x``: ``float32(float64(float32(x * ppm)) * 1e-6)``.
* Centroiding repeats while two neighbouring peaks are too close. Each pass visits peaks by decreasing
  intensity in the order of ms_entropy's Lomuto quicksort (last element pivot, ``>= pivot`` goes left), so
  ties resolve identically; a visited peak absorbs every peak within the window (merged peaks get
  intensity 0 but keep their m/z, which still bounds later scans) and moves to the intensity-weighted m/z.
  Then peaks are re-sorted by m/z (stably, like glibc's merge-sort ``qsort``) and zero intensities dropped.
* Noise cut ``intensity < noise_threshold * max``; top-k by the same quicksort; sequential float32 sum
  normalisation; entropy weighting with ``logf``/``powf``; similarity with ``log2f`` (numba calls the same
  libm functions, so these agree to the bit).

Public functions take CSR spectra ``(offsets int64 (n+1,), mz float64 (n_peaks,), intensity float32
(n_peaks,))`` and never modify their inputs. :func:`entropy_pair` is a plain njit function for use
inside other kernels.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastspec.errors import ParameterError
from fastspec.kernels._config import NJIT, pjit
from fastspec.kernels._config import n_blocks as _n_blocks
from fastspec.kernels._config import threads as _threads
from fastspec.kernels.peaks import _check_csr, _compact, _finite

__all__ = ["clean_csr", "entropy_weight_csr", "prepare_entropy", "entropy_pair"]

_F32 = np.float32
_ZERO = np.float32(0.0)
#: Explicit quicksort stack (pairs). Always pushing the larger part bounds the depth by log2(n) + 1.
_STACK = 2 * 66
#: Centroid passes that fail to remove a peak before giving up (the C loop would spin forever there).
_MAX_IDLE_PASSES = 4


# ---------------------------------------------------------------------------------------- helpers
@numba.njit(**NJIT)
def _ppm_delta(mz, ppm):
    """C: ``float d = mz * ppm * 1e-6`` -- the product in float, the scaling in double, stored to float."""
    return np.float32(np.float64(mz * ppm) * 1e-6)


@numba.njit(**NJIT)
def _argsort_desc(x, n, order, stack):
    """``order[:n]`` = indices of ``x[:n]`` by decreasing value, exactly as ms_entropy's recursive Lomuto
    quicksort leaves them (identity start, pivot = last element, ``>= pivot`` moves left).

    The sub-ranges are disjoint, so processing them from an explicit stack instead of recursing gives the
    same permutation.
    """
    for i in range(n):
        order[i] = i
    top = 0
    if n > 1:
        stack[0] = 0
        stack[1] = n - 1
        top = 2
    while top > 0:
        top -= 2
        lo = stack[top]
        hi = stack[top + 1]
        while lo < hi:
            pivot = x[order[hi]]
            i = lo - 1
            for j in range(lo, hi):
                if x[order[j]] >= pivot:
                    i += 1
                    t = order[i]
                    order[i] = order[j]
                    order[j] = t
            p = i + 1
            t = order[p]
            order[p] = order[hi]
            order[hi] = t
            # continue with the smaller part, keep the larger one for later
            if p - lo < hi - p:
                stack[top] = p + 1
                stack[top + 1] = hi
                hi = p - 1
            else:
                stack[top] = lo
                stack[top + 1] = p - 1
                lo = p + 1
            top += 2


@numba.njit(**NJIT)
def _sort_drop_zero(m, x, n):
    """Keep peaks with intensity > 0, sorted by m/z, stable for equal m/z; return their number.

    Same result as the C code's ``qsort`` (glibc: stable merge sort) with key (intensity <= 0, m/z)
    followed by truncation. Insertion sort: the peaks are nearly sorted every time this runs.
    """
    k = 0
    for i in range(n):
        if x[i] > 0:
            m[k] = m[i]
            x[k] = x[i]
            k += 1
    for i in range(1, k):
        mi = m[i]
        if m[i - 1] <= mi:
            continue
        xi = x[i]
        j = i
        while j > 0 and m[j - 1] > mi:
            m[j] = m[j - 1]
            x[j] = x[j - 1]
            j -= 1
        m[j] = mi
        x[j] = xi
    return k


@numba.njit(**NJIT)
def _need_centroid(m, n, d_da, d_ppm):
    for i in range(n - 1):
        d = d_da
        if d_ppm > 0:
            d = _ppm_delta(m[i + 1], d_ppm)
        # ms_entropy 1.5.3's binary tests "<=" (its C source on GitHub reads "<")
        if m[i + 1] - m[i] <= d:
            return True
    return False


@numba.njit(**NJIT)
def _centroid(m, x, n, d_da, d_ppm, order, stack):
    """One centroid pass over ``m[:n], x[:n]`` (sorted by m/z); returns the new peak count."""
    _argsort_desc(x, n, order, stack)
    left = d_da
    right = d_da
    for k in range(n):
        idx = order[k]
        mi = m[idx]
        if d_ppm > 0:
            # mz*ppm in float, then mz*ppm*1e-6 (left) and mz*ppm/(1e6 - ppm) (right) in double
            mp = np.float64(mi * d_ppm)
            left = np.float32(mp * 1e-6)
            right = np.float32(mp / (1e6 - np.float64(d_ppm)))
        if x[idx] > 0:
            lo = idx - 1
            while lo >= 0 and mi - m[lo] <= left:
                lo -= 1
            hi = idx + 1
            while hi < n and m[hi] - mi <= right:
                hi += 1
            # sums in double of float intensities and float products, as the 1.5.3 binary
            s = 0.0
            ws = 0.0
            for q in range(lo + 1, hi):
                s += np.float64(x[q])
                ws += np.float64(x[q] * m[q])
                x[q] = _ZERO
            m[idx] = np.float32(ws / s) if s > 0 else _ZERO
            x[idx] = np.float32(s)
    return _sort_drop_zero(m, x, n)


@numba.njit(**NJIT)
def _normalize_sum(x, n):
    s = _ZERO
    for i in range(n):
        s += x[i]
    if s == np.inf:
        # the float32 sum overflowed (finite intensities near 3.4e38; ms_entropy then scores NaN): scale by
        # the largest first, so the spectrum keeps a finite score; sums that fit are left bit for bit alone
        top = _ZERO
        for i in range(n):
            top = max(top, x[i])
        s = _ZERO
        for i in range(n):
            x[i] = x[i] / top
            s += x[i]
    if s > 0:
        for i in range(n):
            x[i] = x[i] / s


@numba.njit(**NJIT)
def _clean_one(m, x, n, min_mz, max_mz, noise, d_da, d_ppm, max_peak_num, normalize, order, stack):
    """ms_entropy ``clean_spectrum`` on ``m[:n], x[:n]`` (float32, modified in place); returns the count."""
    if min_mz < 0:
        min_mz = _ZERO
    for i in range(n):
        if m[i] <= min_mz or (max_mz > 0 and m[i] >= max_mz):
            x[i] = _ZERO
    n = _sort_drop_zero(m, x, n)

    idle = 0
    while _need_centroid(m, n, d_da, d_ppm):
        n_new = _centroid(m, x, n, d_da, d_ppm, order, stack)
        idle = idle + 1 if n_new == n else 0
        n = n_new
        if idle >= _MAX_IDLE_PASSES:
            break

    if noise > 0:
        top = _ZERO
        for i in range(n):
            if x[i] > top:
                top = x[i]
        thr = noise * top
        for i in range(n):
            if x[i] < thr:
                x[i] = _ZERO

    if max_peak_num > 0 and max_peak_num < n:
        _argsort_desc(x, n, order, stack)
        for k in range(max_peak_num, n):
            x[order[k]] = _ZERO
    n = _sort_drop_zero(m, x, n)

    if normalize:
        _normalize_sum(x, n)
    return n


@numba.njit(**NJIT)
def _weight_one(x, n):
    """ms_entropy C ``apply_weight_to_intensity`` on ``x[:n]`` (float32, in place)."""
    s = _ZERO
    for i in range(n):
        if x[i] > 0:
            s += x[i]
    ent = _ZERO
    if s != 0:
        for i in range(n):
            if x[i] > 0:
                p = x[i] / s
                ent -= p * np.log(p)
    if ent < 3:
        w = np.float32(0.25 + 0.25 * np.float64(ent))
        s = _ZERO
        for i in range(n):
            x[i] = np.power(x[i], w)
            s += x[i]
        if s > 0:
            r = np.float32(1.0) / s  # float division in the 1.5.3 binary
            for i in range(n):
                x[i] = x[i] * r


@numba.njit(**NJIT)
def _block(n, n_blocks, b):
    return b * n // n_blocks, (b + 1) * n // n_blocks


@numba.njit(**NJIT)
def _block_width(offsets, s0, s1):
    w = 0
    for i in range(s0, s1):
        w = max(w, offsets[i + 1] - offsets[i])
    return w


# ---------------------------------------------------------------------------------------- kernels
@pjit
def _clean_kernel(offsets, mz, intensity, max_mz, min_mz, noise, d_da, d_ppm, max_peak_num, normalize,
                  n_blocks, out_mz, out_int, counts):
    n = offsets.shape[0] - 1
    for b in prange(n_blocks):
        s0, s1 = _block(n, n_blocks, b)
        w = _block_width(offsets, s0, s1)
        m = np.empty(w, dtype=np.float32)
        x = np.empty(w, dtype=np.float32)
        order = np.empty(w, dtype=np.int64)
        stack = np.empty(_STACK, dtype=np.int64)
        for i in range(s0, s1):
            p0 = offsets[i]
            k = offsets[i + 1] - p0
            for j in range(k):
                mj = np.float32(mz[p0 + j])
                xj = intensity[p0 + j]
                # NaN/inf would make the C sort ill-defined; such peaks are dropped up front
                ok = mj < np.inf and xj < np.inf and mj == mj and xj == xj
                m[j] = mj if ok else _ZERO
                x[j] = xj if ok else _ZERO
            k = _clean_one(m, x, k, min_mz, max_mz[i], noise, d_da, d_ppm, max_peak_num, normalize,
                           order, stack)
            for j in range(k):
                out_mz[p0 + j] = m[j]
                out_int[p0 + j] = x[j]
            counts[i] = k


@pjit
def _weight_kernel(offsets, x):
    for i in prange(offsets.shape[0] - 1):
        p0 = offsets[i]
        _weight_one(x[p0:offsets[i + 1]], offsets[i + 1] - p0)


@pjit
def _normalize_kernel(offsets, mz, intensity, out_mz, out_int, counts):
    """Drop invalid peaks, round m/z to float32 and normalise each spectrum to sum 1 in float32."""
    for i in prange(offsets.shape[0] - 1):
        c = offsets[i]
        for p in range(offsets[i], offsets[i + 1]):
            mj = np.float32(mz[p])
            xj = intensity[p]
            if mj > 0 and mj < np.inf and xj > 0 and xj < np.inf:
                out_mz[c] = mj
                out_int[c] = xj
                c += 1
        counts[i] = c - offsets[i]
        _normalize_sum(out_int[offsets[i]:c], c - offsets[i])


@numba.njit(**NJIT)
def entropy_pair(mz_a, w_a, a0, a1, mz_b, w_b, b0, b1, tol_da, tol_ppm, flash=False):
    """Entropy similarity of peaks ``[a0, a1)`` of spectrum a and ``[b0, b1)`` of spectrum b.

    The two-pointer walk of ms_entropy's C ``calculate_unweighted_entropy_similarity`` (called by the
    weighted version after weighting): float32 accumulation of ``f(a+b) - f(a) - f(b)`` with
    ``f(v) = v * log2f(v)``, halved and clamped to [0, 1]. Each peak matches at most once.

    With ``flash`` (Da tolerances), peaks match as in ``FlashEntropySearch``'s index instead: a peak of
    b within ``float32(a - tol) <= b <= float32(a + tol)`` of a peak ``a`` (ends included, in float32),
    where the pair function tests ``|float32(a - b)| <= tol``. Pairs almost exactly ``tol`` apart
    (MassBank's 4-decimal m/z 0.0200 apart, 0.020004 in float32) can fall on either side.

    Parameters
    ----------
    mz_a, w_a : ndarray float32 (or float64 holding float32 values)
        m/z and (weighted, sum-normalised) intensities from :func:`prepare_entropy`; sorted by m/z.
    a0, a1 : int
        Peak range of spectrum a.
    mz_b, w_b, b0, b1 :
        Same for spectrum b.
    tol_da : float32
        Tolerance in Da (used when ``tol_ppm <= 0``).
    tol_ppm : float32
        Tolerance in ppm of the a-peak's m/z when > 0.
    flash : bool
        FlashEntropySearch's windows around a's peaks (only with ``tol_ppm <= 0``).

    Returns
    -------
    score : float64
        The float32 similarity widened to float64.
    n_matched : int64
        Matched peak pairs.
    """
    tda = np.float32(tol_da)
    tppm = np.float32(tol_ppm)
    sim = _ZERO
    n = 0
    a = a0
    b = b0
    while a < a1 and b < b1:
        # explicit float32: callers may hold the (float32-exact) values in float64 arrays
        ma = np.float32(mz_a[a])
        mb = np.float32(mz_b[b])
        if tppm > 0:
            tda = _ppm_delta(tppm, ma)
        if flash and tppm <= 0:
            below = mb < ma - tda  # float32 - float32: ma - tda is rounded to float32, as numpy does it
            above = mb > ma + tda
        else:
            delta = ma - mb
            below = delta > tda
            above = delta < -tda
        if above:
            a += 1
        elif below:
            b += 1
        else:
            sim += _g32(w_a[a], w_b[b])
            n += 1
            a += 1
            b += 1
    return _finish32(sim), n


@numba.njit(inline="always", **NJIT)
def _g32(wa, wb):
    """One matched pair's ``f(a+b) - f(a) - f(b)``, ``f(v) = v * log2f(v)``, in float32 as ms_entropy's C;
    ``f(0) = 0`` (a weight that underflowed to 0 in float32 gave ``0 * -inf``: NaN)."""
    pa = np.float32(wa)
    pb = np.float32(wb)
    pab = pa + pb
    fab = pab * np.log2(pab) if pab > 0 else _ZERO
    fa = pa * np.log2(pa) if pa > 0 else _ZERO
    fb = pb * np.log2(pb) if pb > 0 else _ZERO
    return fab - fa - fb


@numba.njit(inline="always", **NJIT)
def _finish32(sim):
    """The float32 sum of :func:`_g32` halved and clamped to [0, 1], widened to float64."""
    sim = sim / np.float32(2.0)
    if sim < 0:
        sim = _ZERO
    elif sim > 1:
        sim = np.float32(1.0)
    return np.float64(sim)


@numba.njit(**NJIT)
def hybrid_entropy_pair(mz_a, w_a, a0, a1, pmz_a, mz_b, w_b, b0, b1, pmz_b, tol_da, scratch):
    """ms_entropy's hybrid entropy similarity (``FlashEntropySearch.hybrid_search``) of spectrum a (the
    query) against spectrum b, with Flash's float32 windows (Da).

    Each peak of a adds the entropy term of its fragment partner: a peak of b within ``float32(x - tol)
    .. float32(x + tol)`` of its m/z ``x``. A peak of a without one adds that of its neutral-loss partner
    instead: a peak of b whose loss ``float32(float32(pmz_b) - mz)`` lies in the same window around a's
    loss ``float32(float32(pmz_a) - x)``, unless that peak of b lies in the fragment window of any peak of
    a (Flash matches it as a fragment ion then). The terms are summed in float32 in a's peak order, as
    Flash accumulates them (it adds a zero for a peak's discarded loss), halved and clamped like
    :func:`entropy_pair`. On clean spectra (peaks more than 2 x tolerance apart) every window holds one
    peak at most; otherwise partners are taken one to one in m/z order (fragments), as
    :func:`entropy_pair` takes them, then in loss order among the peaks of a without a fragment partner
    and the peaks of b in no fragment window of a (losses). Without a finite precursor m/z on either side only
    fragments match (Flash needs both).

    Parameters
    ----------
    mz_a, w_a, a0, a1, mz_b, w_b, b0, b1 :
        As for :func:`entropy_pair` (sum-normalised weighted intensities, m/z sorted).
    pmz_a, pmz_b : float
        Precursor m/z of a and b.
    tol_da : float
        Tolerance, Da.
    scratch : int64 (>= 3, >= max(a1 - a0, b1 - b0))
        Zeros; left as found.

    Returns
    -------
    score : float64
    n_matched : int64
        Peaks of a that contributed (fragment or neutral loss).
    """
    tda = np.float32(tol_da)
    frag, inwin, loss = scratch[0], scratch[1], scratch[2]
    # fragment partners (1 + offset in b; 0: none), one to one in m/z order as entropy_pair(flash=True)
    a, b = a0, b0
    while a < a1 and b < b1:
        ma = np.float32(mz_a[a])
        mb = np.float32(mz_b[b])
        if mb > ma + tda:
            a += 1
        elif mb < ma - tda:
            b += 1
        else:
            frag[a - a0] = b - b0 + 1
            a += 1
            b += 1
    # peaks of b inside any fragment window of a: the first window not ending below mb is the only one
    # that can hold it (window ends rise with m/z)
    a = a0
    for b in range(b0, b1):
        mb = np.float32(mz_b[b])
        while a < a1 and np.float32(mz_a[a]) + tda < mb:
            a += 1
        if a < a1 and np.float32(mz_a[a]) - tda <= mb:
            inwin[b - b0] = 1
    # neutral-loss partners: losses rise as m/z falls, so both walks go down
    if np.isfinite(pmz_a) and np.isfinite(pmz_b):
        pa32 = np.float32(pmz_a)
        pb32 = np.float32(pmz_b)
        a, b = a1 - 1, b1 - 1
        while a >= a0 and b >= b0:
            # only peaks that can use a loss take part: a peak of a with a fragment partner, or a peak of
            # b inside a fragment window, would only withhold a partner from another peak
            if frag[a - a0] > 0:
                a -= 1
                continue
            if inwin[b - b0] != 0:
                b -= 1
                continue
            la = pa32 - np.float32(mz_a[a])
            lb = pb32 - np.float32(mz_b[b])
            if lb < la - tda:
                b -= 1
            elif lb > la + tda:
                a -= 1
            else:
                loss[a - a0] = b - b0 + 1
                a -= 1
                b -= 1
    sim = _ZERO
    n = 0
    for a in range(a0, a1):
        f, nl = frag[a - a0], loss[a - a0]
        if f > 0:
            sim += _g32(w_a[a], w_b[b0 + f - 1])
            n += 1
        elif nl > 0 and inwin[nl - 1] == 0:
            sim += _g32(w_a[a], w_b[b0 + nl - 1])
            n += 1
        frag[a - a0] = 0
        loss[a - a0] = 0
    for b in range(b1 - b0):
        inwin[b] = 0
    return _finish32(sim), n


# ---------------------------------------------------------------------------------------- public API
def clean_csr(offsets, mz, intensity, precursor_mz=None, *, min_mz: float = -1.0, max_mz: float = -1.0,
              noise_threshold: float = 0.01, min_ms2_difference_in_da: float = 0.05,
              min_ms2_difference_in_ppm: float = -1.0, max_peak_num: int = -1, normalize_intensity: bool = True,
              precursor_ions_removal_da: float | None = None, threads: int | None = None):
    """ms_entropy ``clean_spectrum`` applied to every spectrum of a CSR batch.

    Steps (as the C code): drop peaks with ``mz <= max(min_mz, 0)`` or (``max_mz > 0``) ``mz >= max_mz``
    and intensity <= 0; centroid until no two peaks are closer than the minimum difference; drop
    ``intensity < noise_threshold * max``; keep the ``max_peak_num`` most intense; normalise to sum 1.
    Peaks with NaN/inf m/z or intensity are dropped first (the C code has no defined result for them).

    Parameters
    ----------
    offsets : ndarray int64 (n+1,)
    mz : ndarray float64 (n_peaks,)
        Sorted within each spectrum (unsorted input is sorted, slowly).
    intensity : ndarray float32 (n_peaks,)
    precursor_mz : ndarray float64 (n,), optional
        Needed with ``precursor_ions_removal_da``.
    min_mz, max_mz : float
        m/z bounds (Da); ``max_mz <= 0`` means none.
    noise_threshold : float
        Relative to the spectrum's highest peak; <= 0 disables.
    min_ms2_difference_in_da, min_ms2_difference_in_ppm : float
        Centroid distance; ppm is used when > 0, else Da. One of them must be >= 0.
    max_peak_num : int
        <= 0: no limit.
    normalize_intensity : bool
    precursor_ions_removal_da : float, optional
        If set, a spectrum with a finite precursor m/z uses ``max_mz = precursor_mz -
        precursor_ions_removal_da`` (as ms_entropy's ``FlashEntropySearch.clean_spectrum_for_search``), or
        the given ``max_mz`` where that is lower.
    threads : int, optional
        Numba threads (default: all).

    Returns
    -------
    offsets : ndarray int64 (n+1,)
    mz : ndarray float64 (n_out,)
        The float32 m/z values (centroided m/z are float32 weighted means) widened to float64.
    intensity : ndarray float32 (n_out,)
    """
    offsets, mz, intensity = _check_csr(offsets, mz, intensity)
    n = offsets.shape[0] - 1
    d_da = _finite("min_ms2_difference_in_da", min_ms2_difference_in_da)
    d_ppm = _finite("min_ms2_difference_in_ppm", min_ms2_difference_in_ppm)
    if d_da < 0 and d_ppm < 0:
        raise ParameterError("either min_ms2_difference_in_da or min_ms2_difference_in_ppm must be >= 0")
    lo = _finite("min_mz", min_mz)
    hi = _finite("max_mz", max_mz)
    noise = _finite("noise_threshold", noise_threshold)
    top_k = int(max_peak_num) if max_peak_num is not None else -1
    hi_each = np.full(n, hi, dtype=np.float64)
    if precursor_ions_removal_da is not None:
        if precursor_mz is None:
            raise ParameterError("precursor_ions_removal_da needs precursor_mz")
        pmz = np.ascontiguousarray(precursor_mz, dtype=np.float64)
        if pmz.shape != (n,):
            raise ParameterError("precursor_mz must have one value per spectrum")
        cut = _finite("precursor_ions_removal_da", precursor_ions_removal_da)
        pc = pmz - cut  # Python double, then float in C: same here
        # a cut that is a limit (> 0) applies with a max_mz given too: the lower of the two (the cut alone
        # used to replace max_mz: entropy_clean(max_mz=200) kept 450 for a precursor of 500, an audit)
        use = np.isfinite(pc) & (pc > 0)
        hi_each[use] = np.minimum(hi, pc[use]) if hi > 0 else pc[use]
    hi_each = hi_each.astype(np.float32)
    out_mz = np.empty(mz.shape[0], dtype=np.float64)
    out_int = np.empty(mz.shape[0], dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)
    with _threads(threads):
        if n:
            _clean_kernel.pick(n, threads)(offsets, mz, intensity, hi_each, _F32(lo), _F32(noise), _F32(d_da),
                                           _F32(d_ppm), top_k, bool(normalize_intensity), _n_blocks(n), out_mz,
                                           out_int, counts)
        return _compact(offsets, counts, out_mz, out_int)


def entropy_weight_csr(offsets, intensity, threads: int | None = None):
    """ms_entropy's C ``apply_weight_to_intensity`` per spectrum.

    With spectral entropy ``S`` (natural log, of the intensities rescaled to sum 1) below 3, intensities
    become ``I ** (0.25 + 0.25 S)`` renormalised to sum 1; otherwise they are left unchanged. Input
    should be cleaned (positive intensities): like the C code, zero stays zero but negative values give NaN.

    Parameters
    ----------
    offsets : ndarray int64 (n+1,)
    intensity : ndarray float32 (n_peaks,)
    threads : int, optional

    Returns
    -------
    ndarray float32 (n_peaks,)
        Weighted intensities (a new array).
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    x = np.array(intensity, dtype=np.float32, copy=True)
    _check_csr(offsets, np.zeros(x.shape[0]), x)
    if offsets.shape[0] > 1:
        with _threads(threads):
            _weight_kernel.pick(offsets.shape[0] - 1, threads)(offsets, x)
    return x


def prepare_entropy(offsets, mz, intensity, *, tol_da: float, tol_ppm: float, clean: bool = True,
                    weighted: bool = True, threads: int | None = None):
    """Peaks ready for :func:`entropy_pair`, as ms_entropy's similarity functions prepare them.

    ``calculate_entropy_similarity(p, q, ms2_tolerance_in_da=tol_da, ms2_tolerance_in_ppm=tol_ppm)``
    cleans each spectrum with minimum peak distance ``2 * tol_da`` Da (or ``2 * tol_ppm`` ppm when
    ``tol_ppm > 0``; both doubled in float32), noise threshold 0.01 and sum normalisation, then applies the
    entropy weight (``weighted=False``: ``calculate_unweighted_entropy_similarity``).

    Parameters
    ----------
    offsets, mz, intensity : CSR spectra (int64, float64, float32)
    tol_da : float
        Da tolerance (ms_entropy default 0.02); ignored when ``tol_ppm > 0``; pass -1 in ppm mode.
    tol_ppm : float
        ppm tolerance; <= 0 selects Da mode.
    clean : bool
        False: peaks are taken as already clean -- invalid peaks (<= 0, NaN) are dropped and each spectrum
        is normalised to sum 1 in float32, nothing else.
    weighted : bool
        Apply the entropy weight.
    threads : int, optional

    Returns
    -------
    offsets : ndarray int64 (n+1,)
    mz : ndarray float32 (n_out,)
    intensity : ndarray float32 (n_out,)
        Sum-normalised (and weighted) intensities.
    """
    da = _finite("tol_da", tol_da)
    ppm = _finite("tol_ppm", tol_ppm)
    if ppm <= 0 and da < 0:
        raise ParameterError("either tol_da or tol_ppm must be >= 0")
    if clean:
        # 2 * float tolerance in C: exact doubling of the float32 value
        o, m, x = clean_csr(offsets, mz, intensity, min_ms2_difference_in_da=float(_F32(2) * _F32(da)),
                            min_ms2_difference_in_ppm=float(_F32(2) * _F32(ppm)), noise_threshold=0.01,
                            max_peak_num=-1, normalize_intensity=True, threads=threads)
        m32 = m.astype(np.float32)
    else:
        offsets, mz, intensity = _check_csr(offsets, mz, intensity)
        n = offsets.shape[0] - 1
        buf_m = np.empty(mz.shape[0], dtype=np.float32)
        buf_x = np.empty(mz.shape[0], dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        with _threads(threads):
            if n:
                _normalize_kernel.pick(n, threads)(offsets, mz, intensity, buf_m, buf_x, counts)
        o = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=o[1:])
        if o[-1] == mz.shape[0] and np.array_equal(o, offsets):  # no peak dropped (stored library peaks)
            m32, x = buf_m, buf_x
        else:
            keep = np.repeat(np.arange(n, dtype=np.int64), counts)
            idx = offsets[:-1][keep] + (np.arange(o[-1], dtype=np.int64) - o[:-1][keep])
            m32 = buf_m[idx]
            x = buf_x[idx]
    if weighted and x.shape[0]:
        with _threads(threads):
            _weight_kernel.pick(o.shape[0] - 1, threads)(o, x)
    return o, np.ascontiguousarray(m32), np.ascontiguousarray(x, dtype=np.float32)
