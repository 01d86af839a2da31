"""Precursor-window candidates: the library spectra whose precursor m/z lies in each query's window and
that pass the query's filters (polarity, charge, adduct, instrument), in one pass.

The library side is in precursor order (``prec_sorted`` m/z and the filter codes permuted alike), so a
window is one run of memory and the kept positions are written straight into the CSR output, with
none of the per-candidate temporaries the numpy version built. 2.4M library, 1,000 queries, identity
(about 1,400 candidates per window): 19-30 -> 5-6 us per query, of about 210.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from fastspec.kernels._config import NJIT, pjit, threads as _threads
from fastspec.kernels._intrinsics import prefetch_row
from fastspec.kernels.fragment import _half_width


#: :func:`window_positions` rules: ``|library - query| <= half`` in float64 (matchms' ``PrecursorMzMatch``),
#: or the library m/z rounded to float32 within ``[query - half, query + half]`` (``FlashEntropySearch``'s
#: identity search, which stores them so)
WINDOW_ABS, WINDOW_FLASH = 0, 1


@numba.njit(**NJIT)
def window_positions(sorted_pmz, q_mz, half, floor, qcodes, lcodes, sym, rule):
    """Positions ``t`` whose ``sorted_pmz[t]`` is in query ``r``'s window (``rule``) and at least
    ``floor``, and that pass the filters, per query ``r``.

    Parameters
    ----------
    sorted_pmz : float64 (n,)
        Library precursor m/z, ascending.
    q_mz, half : float64 (nr,)
        Query precursor m/z and window half-widths (m/z); NaN gives an empty window.
    floor : float
        Smallest library m/z in any window (above 0: a precursor of 0 or less is a placeholder).
    qcodes : int32 (nr, f)
        Query filter codes; -1 means no constraint.
    lcodes : int32 (n, f)
        Library filter codes in the order of ``sorted_pmz``.
    sym : bool (f,)
        Filters where an unknown library value (< 0) matches every query.
    rule : int
        :data:`WINDOW_ABS` (``abs(l - q) <= half``) or :data:`WINDOW_FLASH` (``q - half <=
        float32(l) <= q + half``). The two differ only for spectra about ``half`` apart.

    Returns
    -------
    offsets : int64 (nr + 1,)
    positions : int64 (offsets[-1],)
        Kept positions into ``sorted_pmz``, ascending within each query.
    """
    if rule != WINDOW_ABS and rule != WINDOW_FLASH:
        raise ValueError("window_positions: rule must be WINDOW_ABS or WINDOW_FLASH")
    nr = q_mz.shape[0]
    nf = sym.shape[0]
    # the window widened by more than either rule's rounding (float32: 2**-24 of a value), then each tested
    slack = (np.abs(q_mz) + half) * 2.0 ** -23
    lo = np.searchsorted(sorted_pmz, np.maximum(q_mz - half - slack, floor), side="left")
    hi = np.searchsorted(sorted_pmz, q_mz + half + slack, side="right")
    total = 0
    for r in range(nr):
        total += max(hi[r] - lo[r], 0)
    pos = np.empty(total, np.int64)
    offsets = np.zeros(nr + 1, np.int64)
    n = 0
    for r in range(nr):
        q, h = q_mz[r], half[r]
        for t in range(lo[r], hi[r]):
            v = sorted_pmz[t]
            if v < floor:
                continue
            if rule == WINDOW_FLASH:
                v32 = np.float64(np.float32(v))
                if not (q - h <= v32 <= q + h):
                    continue
            elif not (abs(v - q) <= h):
                continue
            ok = True
            for f in range(nf):
                qv = qcodes[r, f]
                lv = lcodes[t, f]
                if not (qv == -1 or lv == qv or (sym[f] and lv < 0)):
                    ok = False
                    break
            if ok:
                pos[n] = t
                n += 1
        offsets[r + 1] = n
    return offsets, pos[:n]


# ------------------------------------------------------------------------------ precursor-block index
def _block_sort_py(p_off, p_mz, p_w, block, out_mz, out_loc, out_w):
    n = p_off.shape[0] - 1
    for b in prange((n + block - 1) // block):
        s0 = b * block
        s1 = min(n, s0 + block)
        e0, e1 = p_off[s0], p_off[s1]
        loc = np.empty(e1 - e0, np.uint16)
        for s in range(s0, s1):
            for p in range(p_off[s], p_off[s + 1]):
                loc[p - e0] = s - s0
        # sorted in float64; float32 rounding is monotone, so the stored values stay sorted
        order = np.argsort(p_mz[e0:e1], kind="mergesort")
        for t in range(e1 - e0):
            src = e0 + order[t]
            out_mz[e0 + t] = np.float32(p_mz[src])
            out_loc[e0 + t] = loc[order[t]]
            for j in range(p_w.shape[0]):
                out_w[j, e0 + t] = p_w[j, src]


_block_sort = pjit(_block_sort_py)


def block_index(p_off: np.ndarray, p_mz: np.ndarray, p_w: np.ndarray, block: int,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The precursor-ordered peaks as a fragment index per block of ``block`` consecutive spectra.

    Block ``b`` holds spectra ``b*block .. (b+1)*block - 1`` (precursor order), whose peaks occupy
    ``p_off[b*block] : p_off[min((b+1)*block, n)]`` as in the peak copy; there they are re-sorted by
    m/z. An identity window spans a few blocks, and each query peak finds its partners in a block by a
    binary search instead of a merge against every candidate.

    Parameters
    ----------
    p_off : int64 (n+1,)
    p_mz : float64 (P,)
        The precursor-ordered peak copy.
    p_w : float32 (nw, P)
        Per-peak scan weights to carry along (e.g. L2-normalised intensities, square roots of entropy
        weights).
    block : int
        Spectra per block, at most 65,536 (the local spectrum number is a uint16).

    Returns
    -------
    mz : float32 (P,)
        Peak m/z, ascending within each block.
    loc : uint16 (P,)
        Spectrum of each peak, counted from the block's first.
    w : float32 (nw, P)
        The weights in the same order.
    """
    if not 1 <= block <= 65536:
        raise ValueError("block must be in 1..65536")
    p_w = np.ascontiguousarray(np.atleast_2d(p_w), np.float32)
    p_total = int(p_off[-1])
    out_mz = np.empty(p_total, np.float32)
    out_loc = np.empty(p_total, np.uint16)
    out_w = np.empty((p_w.shape[0], p_total), np.float32)
    with _threads(threads):
        _block_sort.pick(p_total, threads)(np.asarray(p_off, np.int64), np.asarray(p_mz, np.float64), p_w,
                                           int(block), out_mz, out_loc, out_w)
    return out_mz, out_loc, out_w


@numba.njit(inline="always", **NJIT)
def _lower_bound_u(arr, x, lo, hi):
    """First position in ``arr[lo:hi]`` (sorted; uint64 positions) whose value is >= x.

    Branch-free halving (a select, no jump on the comparison), and the two places the next step may
    read are prefetched: the branchy search mispredicted half its steps, each holding back the next
    load."""
    n = hi - lo
    if n == 0:
        return lo
    base = lo
    while n > np.uint64(1):
        half = n >> np.uint64(1)
        quarter = half >> np.uint64(1)
        prefetch_row(arr, np.int64(base + quarter))
        prefetch_row(arr, np.int64(base + half + quarter))
        base = base + half if arr[base + half] < x else base
        n -= half
    return base + np.uint64(arr[base] < x)


@numba.njit(inline="always", **NJIT)
def _gallop_u(arr, x, lo, hi):
    """First position in ``arr[lo:hi]`` (sorted; uint64 positions) whose value is >= x, searched forward
    from ``lo`` in steps of 1, 2, 4, ... and then by halving the last step (:func:`_lower_bound_u`).

    A query's peaks come in ascending m/z, so in each block the search for the next one starts where
    the last one ended, among cache lines already read; a search over the whole block (~14k peaks at
    2.4M) waits for memory at most of its ~14 halvings."""
    step = np.uint64(1)
    while lo + step < hi and arr[lo + step] < x:
        lo += step
        step <<= np.uint64(1)
    return _lower_bound_u(arr, x, lo, min(lo + step, hi))


#: a block summary holds every (1 << SUMMARY_SHIFT)-th entry of the block index's m/z
SUMMARY_SHIFT = 5


def block_summary(b_mz: np.ndarray) -> np.ndarray:
    """Every 32nd m/z of the block index (``b_mz[::32]``, float32; 4 MB at 2.4M spectra), searched first by
    :func:`window_bounds`: within a block (whose entries are ascending) the summary entries are
    ascending too, and a search through them reads a few cache lines of one small array before the
    last 32 entries, instead of ~12 lines scattered over a block's ~58 kB of m/z."""
    return np.ascontiguousarray(np.asarray(b_mz, np.float32)[:: 1 << SUMMARY_SHIFT])


@numba.njit(inline="always", **NJIT)
def _seek_u(arr, summ, x, lo, hi):
    """:func:`_gallop_u` (first position in ``arr[lo:hi]`` whose value is >= x, ``arr`` ascending there),
    through the summary ``summ`` (:func:`block_summary`) when there is one: the search gallops over the
    summary entries inside ``[lo, hi)``, then halves the at most 32 entries before the first summary
    value >= x."""
    if summ.shape[0] == 0:
        return _gallop_u(arr, x, lo, hi)
    one = np.uint64(1)
    sh = np.uint64(SUMMARY_SHIFT)
    j = (lo + (one << sh) - one) >> sh  # the first summary entry at or after lo
    jh = (hi + (one << sh) - one) >> sh
    if j < jh and summ[j] < x:
        step = one
        while j + step < jh and summ[j + step] < x:
            j += step
            step <<= one
        j = _lower_bound_u(summ, x, j + one, min(j + step, jh))
    # entries before summary entry j - 1's position are < x (or before lo); from j's on, >= x
    a = max(lo, (j - one) << sh) if j > np.uint64(0) else lo
    return _lower_bound_u(arr, x, a, min(j << sh, hi))


@numba.njit(inline="always", **NJIT)
def _gather_kth(ub, cnt, pos, base, c0, c1, m, top, ub_out, cnt_out):
    """Copy the window's bounds and counts (slots ``pos[c0:c1] - base``) to ``ub_out`` / ``cnt_out`` and
    return the ``m``-th largest bound (``m <= c1 - c0``), in one pass: the ``m`` best are kept in
    ``top``, rescanned only when a value enters (a partition would copy the whole run again)."""
    ubase = np.uint64(base)
    jmin = 0
    for j in range(m):
        s = np.uint64(pos[c0 + j]) - ubase
        u = ub[s]
        ub_out[c0 + j] = u
        cnt_out[c0 + j] = cnt[s]
        top[j] = u
        if u < top[jmin]:
            jmin = j
    tmin = top[jmin]
    for t in range(np.uint64(c0 + m), np.uint64(c1)):
        s = np.uint64(pos[t]) - ubase
        u = ub[s]
        ub_out[t] = u
        cnt_out[t] = cnt[s]
        if u > tmin:
            top[jmin] = u
            for j in range(m):
                if top[j] < top[jmin]:
                    jmin = j
            tmin = top[jmin]
    return tmin


def _window_bounds_py(q_off, q_mz, q_w, w_off, pos, p_off, b_mz, b_loc, b_w, b_sum, block, tol_da, tol_ppm, extra,
                      n_first, min_matches, span_max, n_parts, ub_out, cnt_out, first_out, rest_out, kept_out,
                      n_kept):
    nr = w_off.shape[0] - 1
    step = (nr + n_parts - 1) // n_parts
    n_spec = p_off.shape[0] - 1
    for part in prange(n_parts):
        # slots for whole blocks: entries of spectra outside the window land in slots never read
        ub = np.zeros(span_max, np.float64)
        cnt = np.zeros(span_max, np.int32)
        top = np.empty(n_first, np.float64)
        for r in range(part * step, min(nr, (part + 1) * step)):
            c0, c1 = w_off[r], w_off[r + 1]
            rest_out[r] = -np.inf
            if c1 - c0 <= n_first:  # nothing to prune: every candidate is scored
                for t in range(c0, c1):
                    ub_out[t] = np.inf
                    cnt_out[t] = np.iinfo(np.int32).max
                    first_out[t] = True
                    kept_out[t] = pos[t]
                n_kept[r] = c1 - c0
                continue
            b0 = pos[c0] // block
            b1 = pos[c1 - 1] // block + 1
            base = b0 * block
            for t in range(min(n_spec, b1 * block) - base):
                ub[t] = 0.0
                cnt[t] = 0
            for b in range(b0, b1):
                # unsigned positions: numba wraps signed indices around at every access
                e0 = np.uint64(p_off[b * block])
                e1 = np.uint64(p_off[min(n_spec, (b + 1) * block)])
                slot = np.uint64((b - b0) * block)
                e = e0
                last = -np.inf
                for i in range(q_off[r], q_off[r + 1]):
                    x = q_mz[i]
                    qv = q_w[i]
                    h = _half_width(x, tol_da, tol_ppm, x) + extra[r]
                    lo_v, hi_v = x - h, x + h
                    # peaks in ascending m/z: search on from the last one's window (else from the start)
                    e = _seek_u(b_mz, b_sum, lo_v, e if lo_v >= last else e0, e1)
                    last = lo_v
                    f = e
                    while f < e1 and b_mz[f] <= hi_v:
                        s = slot + np.uint64(b_loc[f])
                        ub[s] += qv * b_w[f]
                        cnt[s] += 1
                        f += np.uint64(1)
            # the n_first best bounds are scored first; their k-th exact score decides the rest
            thr = _gather_kth(ub, cnt, pos, base, c0, c1, n_first, top, ub_out, cnt_out)
            rest = -np.inf
            n = c0
            for t in range(c0, c1):
                u = ub_out[t]
                f = (u >= thr) & (u > 0.0)
                first_out[t] = f
                if f:
                    if cnt_out[t] >= min_matches:  # the first round's candidates, from the window's start
                        kept_out[n] = pos[t]
                        n += 1
                else:
                    rest = max(rest, u)
            rest_out[r] = rest
            n_kept[r] = n - c0


_window_bounds = pjit(_window_bounds_py)


class WindowBounds(NamedTuple):
    """What :func:`window_bounds` returns."""

    ub: np.ndarray
    count: np.ndarray
    first: np.ndarray
    rest: np.ndarray
    first_offsets: np.ndarray
    first_positions: np.ndarray


def window_bounds(q_off: np.ndarray, q_mz: np.ndarray, q_w: np.ndarray, w_off: np.ndarray, pos: np.ndarray,
                  p_off: np.ndarray, b_mz: np.ndarray, b_loc: np.ndarray, b_w: np.ndarray, block: int,
                  tol_da: float, tol_ppm: float, n_first: int, extra: np.ndarray | None = None,
                  threads: int | None = None, b_sum: np.ndarray | None = None,
                  min_matches: int = 1) -> WindowBounds:
    """Upper bounds of each query's window candidates, through the precursor-block index.

    A candidate's bound is the sum of ``qv * w`` over every pair of peaks within the (float32-widened)
    tolerance. With L2-normalised weights that bounds greedy cosine, which pairs a subset of them one to
    one (equal, to rounding, for spectra whose peaks are more than two tolerances apart); with square
    roots of sum-normalised entropy weights, entropy similarity (a pair adds ``g(q, l) <= sqrt(q*l)``,
    see :mod:`fastspec.kernels.fragment`). Widened by ``extra`` (the largest precursor difference in the
    window), the pairs also cover modified cosine's shifted ones: a shifted pair within tolerance has
    ``|mz_a - mz_b| <= tol + |shift|``, and a one-to-one assignment uses each peak pair once at most.

    Parameters
    ----------
    q_off : int64 (nr+1,)
    q_mz, q_w : float64 (Q,)
        Query peaks and their scan weights (the kind of ``b_w``).
    w_off : int64 (nr+1,)
    pos : int64 (C,)
        Each query's candidates, as ascending positions in precursor order (:func:`window_positions`).
    p_off : int64 (n+1,)
        Peak offsets of the precursor-ordered copy (also the block boundaries).
    b_mz, b_loc, b_w : the block index (:func:`block_index`) built with ``block``.
    tol_da, tol_ppm : float
        Fragment tolerance (one of them nonzero).
    n_first : int
        Candidates of best bound to score first per query; windows of at most that many are not bounded.
    extra : float64 (nr,), optional
        Added to each query's peak windows (Da; default 0).
    threads : int, optional
    b_sum : float32, optional
        The block index's summary (:func:`block_summary`), to find each query peak's entries faster;
        the same bounds without it.
    min_matches : int
        Counted pairs a first-round candidate needs to be listed in ``first_positions``.

    Returns
    -------
    ub : float64 (C,)
        Upper bounds (``inf`` in unbounded windows).
    count : int32 (C,)
        Peak pairs counted (at least the exact matched-peak count).
    first : bool (C,)
        The ``n_first`` (ties: more) candidates of best positive bound of each bounded window, and every
        candidate of the others.
    rest : float64 (nr,)
        Per window, the largest bound outside ``first`` (-inf where there is none): windows whose
        ``rest`` cannot reach the first round's k-th score need no second look at their candidates.
    first_offsets : int64 (nr+1,)
    first_positions : int64
        CSR of the first round to score: per window, the positions (``pos`` values) of its ``first``
        candidates with at least ``min_matches`` counted pairs, in window order (what
        ``pos[first & (count >= min_matches)]`` holds, window by window, collected in the same pass).
    """
    w_off = np.asarray(w_off, np.int64)
    pos = np.asarray(pos, np.int64)
    nr = w_off.shape[0] - 1
    if b_sum is not None and b_sum.shape[0] != (b_mz.shape[0] + (1 << SUMMARY_SHIFT) - 1) >> SUMMARY_SHIFT:
        raise ValueError("b_sum is not the summary of b_mz (block_summary)")
    blocks = np.zeros(nr, np.int64)
    full = np.flatnonzero(np.diff(w_off) > 0)
    blocks[full] = pos[w_off[full + 1] - 1] // block + 1 - pos[w_off[full]] // block
    ub = np.empty(pos.shape[0], np.float64)
    cnt = np.empty(pos.shape[0], np.int32)
    first = np.empty(pos.shape[0], np.bool_)
    rest = np.empty(nr, np.float64)
    kept = np.empty(pos.shape[0], np.int64)  # window r's first round at kept[w_off[r]:], n_kept[r] long
    n_kept = np.empty(nr, np.int64)
    if b_sum is None:  # read-only, as the index's memory-mapped arrays are: one compiled kernel for both
        b_sum = np.zeros(0, np.float32)
        b_sum.flags.writeable = False
    from fastspec.kernels._config import n_blocks as _n_blocks

    with _threads(threads):
        n_parts = _n_blocks(nr)  # (for the threads set here)
        _window_bounds.pick(pos.shape[0], threads, n_parts)(
            np.asarray(q_off, np.int64), np.asarray(q_mz, np.float64), np.asarray(q_w, np.float64), w_off, pos,
            np.asarray(p_off, np.int64), b_mz, b_loc, b_w,
            np.asarray(b_sum, np.float32), int(block), float(tol_da), float(tol_ppm),
            np.zeros(nr) if extra is None else np.asarray(extra, np.float64), int(n_first), int(min_matches),
            int(blocks.max()) * block if nr else 0, n_parts, ub, cnt, first, rest, kept, n_kept)
    offs = np.zeros(nr + 1, np.int64)
    np.cumsum(n_kept, out=offs[1:])
    take = np.arange(offs[-1]) + np.repeat(w_off[:-1] - offs[:-1], n_kept)
    return WindowBounds(ub, cnt, first, rest, offs, kept[take])


@numba.njit(**NJIT)
def _second_round(w_off, ub, cnt, first, theta, min_matches, rtol, atol, vals, rest):
    nr = w_off.shape[0] - 1
    again = np.zeros(nr, np.bool_)
    n_again = 0
    total = 0
    for r in range(nr):
        if rest[r] * (1.0 + rtol) + atol < theta[r]:  # no candidate outside the first round can reach it
            continue
        for t in range(w_off[r], w_off[r + 1]):
            if not first[t] and cnt[t] >= min_matches and ub[t] * (1.0 + rtol) + atol >= theta[r]:
                again[r] = True
                n_again += 1
                total += w_off[r + 1] - w_off[r]
                break
    rows = np.empty(n_again, np.int64)
    offsets = np.zeros(n_again + 1, np.int64)
    out = np.empty(total, vals.dtype)  # room for every entry of those windows; the kept ones are a prefix
    j = n = 0
    for r in range(nr):
        if not again[r]:
            continue
        for t in range(w_off[r], w_off[r + 1]):
            if not first[t] and cnt[t] >= min_matches and ub[t] * (1.0 + rtol) + atol >= theta[r]:
                out[n] = vals[t]
                n += 1
        rows[j] = r
        j += 1
        offsets[j] = n
    return rows, offsets, out[:n]


def second_round(w_off: np.ndarray, ub: np.ndarray, count: np.ndarray, first: np.ndarray, theta: np.ndarray,
                 min_matches: int, rtol: float, atol: float, vals: np.ndarray,
                 rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows to score again after the first round, and what to score in them.

    Parameters
    ----------
    w_off : int64 (nr+1,)
    ub, count, first : the output of :func:`window_bounds`.
    theta : float64 (nr,)
        Per window, the floor of the final k-th score: the k-th exact score of the first round (-inf
        with fewer than k hits), or the minimum score if higher.
    min_matches : int
    rtol, atol : float
        Slack added to the bounds (float32 rounding) before comparing them with exact scores.
    vals : int64 (C,)
        The candidates (positions in precursor order), one per entry of ``w_off``.
    rest : float64 (nr,), optional
        :func:`window_bounds`' largest bound outside ``first`` per window: windows where it cannot
        reach ``theta`` are passed over without reading their candidates (at 2.4M, two thirds of the
        identity-entropy windows and nearly all cosine ones).

    Returns
    -------
    rows : int64 (nr2,)
        Windows where a candidate outside the first round has a bound reaching ``theta``.
    offsets : int64 (nr2+1,)
    values : int64
        CSR over ``rows``: in each, the candidates outside the first round with enough counted pairs and
        a bound reaching ``theta``, in window order (the caller merges their top-k with the first
        round's). Built in the pass that decides them, with no mask over all candidates (~1,400 per
        query in identity search at 2.4M).
    """
    w_off = np.asarray(w_off, np.int64)
    vals = np.asarray(vals, np.int64)
    if vals.shape[0] != w_off[-1]:
        raise ValueError("vals must hold one entry per CSR entry")
    nr = w_off.shape[0] - 1
    rest = np.full(nr, np.inf) if rest is None else np.asarray(rest, np.float64)
    return _second_round(w_off, ub, count, first, np.asarray(theta, np.float64), int(min_matches), float(rtol),
                         float(atol), vals, rest)
