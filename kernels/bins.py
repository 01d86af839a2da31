"""Whole-library binned cosine through an inverted bin index.

Binned cosine compares fixed-width bins exactly (no tolerance), so a library spectrum scores above zero
only if it shares a bin with the query. The library's binned vectors (prepared by
:func:`fastspec.similarity.prepare_csr`, L2-normalised here) are transposed once into postings -- per
bin, the spectra holding it and their normalised bin values, spectra ascending -- and a query adds
``q_b * l_b`` over the postings of its bins, as ms_entropy's Flash search does over peaks. The kernel
keeps each query's k best sums (top-k inside the kernel, never an n x n_lib matrix) and returns every
spectrum within a rounding margin of the k-th; the caller scores those exactly, so hits, ties and
shared-bin counts are brute force's. Before this, open search with binned cosine scored every library
spectrum: 0.64 s per query on a 2.4M library.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastspec.kernels._config import NJIT, SERIAL_BELOW, max_threads, pjit, threads as _threads
from fastspec.kernels.fragment import _heap_push, _passes

#: Postings values are float32 (half the memory of float64 at 60M postings); each normalised product
#: is then off by at most ~1.2e-7 relative and a query's sum (at most 1) by well under 1e-6.
MARGIN = 1e-5
#: The kernel sums in float32 (sum and count of a spectrum in 8 bytes: 2.4M MassBank-grown library,
#: one thread, 300 queries, khoo2026 bins 7.63 -> 6.44 ms, 0.02 Da bins 2.84 -> 2.41 ms against float64
#: sums with int32 counts in two arrays). A sum of n products of unit vectors' entries is then off by at
#: most (n + 2) units of float32 rounding (2**-24: the query value's rounding, the product's, n - 1
#: additions, each relative to a total of at most 1), on the k-th best sum as on any other.
F32_UNIT = 2.0 ** -24


def slack(n_query_bins: int) -> float:
    """How far below a query's k-th (and ``min_score``) a returned sum may lie: :data:`MARGIN` plus
    twice the float32 summation error of a query with that many bins (candidate and k-th each off)."""
    return MARGIN + 2.0 * (n_query_bins + 2) * F32_UNIT


@numba.njit(**NJIT)
def _count(bins, n_bins, counts):
    for p in range(bins.shape[0]):
        b = bins[p]
        if 0 <= b < n_bins:
            counts[b] += 1


@numba.njit(**NJIT)
def _fill(offsets, bins, values, first_spectrum, cursor, ends, out_spec, out_val):
    # False (nothing written past a bin's end) when the chunk holds more of a bin than was counted
    n_bins = cursor.shape[0]
    for s in range(offsets.shape[0] - 1):
        for p in range(offsets[s], offsets[s + 1]):
            b = bins[p]
            if 0 <= b < n_bins:
                t = cursor[b]
                if t >= ends[b]:
                    return False
                out_spec[t] = first_spectrum + s
                out_val[t] = values[p]
                cursor[b] = t + 1
    return True


# ---------------------------------------------------------------------------------------- binning
#: Exponents :func:`bin_peaks` takes: those numpy's ``ndarray ** scalar`` computes exactly (ones, copy,
#: sqrt, square), so the weights equal the numpy reference's bit for bit. numpy's SIMD pow() for other
#: exponents can differ from libm's in the last bit. (0: the ablation grid's first power; the sort-based
#: path took ~5x the memory, 3.3 GB more at 2.4M in a lab audit.)
EXACT_POWERS = (0.0, 0.5, 1.0, 2.0)


@numba.njit(inline="always", **NJIT)
def _power(x, e):
    if e == 0.0:
        return 1.0  # (x ** 0 is 1 for every x, 0 and nan included, as numpy gives it)
    if e == 1.0:
        return x
    if e == 0.5:
        return np.sqrt(x)
    return x * x


@numba.njit(inline="always", **NJIT)
def _bin_weight(x, v, mz_power, intensity_power):
    w = _power(v, intensity_power)
    return w if mz_power == 0.0 else _power(x, mz_power) * w


@numba.njit(inline="always", **NJIT)
def _emit(fill, out_bins, out_vals, start, n, b, v):
    if fill:
        out_bins[start + n] = b
        out_vals[start + n] = v
    return n + 1


@numba.njit(inline="always", **NJIT)
def _bin_one(i, offsets, mz, intensity, precursor_mz, bin_width, max_bin, use_base, base_peak, use_prec,
             precursor_peak, mz_power, intensity_power, fill, start, out_bins, out_vals):
    """Bins of spectrum ``i`` (ascending), written from ``start`` when ``fill``; returns how many, or -1
    when its m/z are not ascending (the caller then bins the slow way).

    Each bin sums the weights of its peaks in m/z order, then the precursor peak's: the order in which
    the reference sums them (``np.bincount`` over peaks, then precursor peaks), so the sums are equal.
    """
    a, b = offsets[i], offsets[i + 1]
    div = 1.0
    if use_base:  # intensities relative to the base peak, scaled to base_peak
        mx = 0.0
        for p in range(a, b):
            if intensity[p] > mx:
                mx = intensity[p]
        div = mx if mx > 0 else 1.0
    pend = False  # a precursor peak still to place
    pb = 0.0
    pv = 0.0
    if use_prec:
        x = precursor_mz[i]
        pb = np.floor(x / bin_width) + 0.0  # + 0.0: bin -0.0 (m/z -0.0) is bin 0
        if pb >= 0 and pb < max_bin:  # NaN precursor m/z: no peak
            pend = True
            pv = _bin_weight(x, precursor_peak, mz_power, intensity_power)
    n = 0
    cur = -1.0
    acc = 0.0
    last_mz = -np.inf
    for p in range(a, b + 1):  # p == b: an end marker past every bin, which closes the last ones
        w = 0.0
        bb = np.inf
        if p < b:
            x = mz[p]
            if x < last_mz:
                return -1
            if x == x:  # NaN m/z (no bin) must not hide a descent around it
                last_mz = x
            bb = np.floor(x / bin_width) + 0.0
            if not (bb >= 0 and bb < max_bin):
                continue
            v = np.float64(intensity[p])
            if use_base:
                v = v / div * base_peak
            w = _bin_weight(x, v, mz_power, intensity_power)
            if bb == cur:
                acc += w
                continue
        if cur >= 0:  # close the current bin (the precursor peak last, if it falls in it)
            if pend and pb == cur:
                acc += pv
                pend = False
            n = _emit(fill, out_bins, out_vals, start, n, cur, acc)
        if pend and pb < bb:  # the precursor peak's bin comes before this one
            n = _emit(fill, out_bins, out_vals, start, n, pb, 0.0 + pv)
            pend = False
        cur = bb
        acc = 0.0 + w
    return n


@pjit
def _bin_rows(offsets, mz, intensity, precursor_mz, bin_width, max_bin, use_base, base_peak, use_prec,
              precursor_peak, mz_power, intensity_power, fill, out_offsets, out_bins, out_vals, counts):
    for i in prange(offsets.shape[0] - 1):
        c = _bin_one(i, offsets, mz, intensity, precursor_mz, bin_width, max_bin, use_base, base_peak, use_prec,
                     precursor_peak, mz_power, intensity_power, fill, out_offsets[i], out_bins, out_vals)
        if not fill:
            counts[i] = c


def bin_peaks(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, precursor_mz: np.ndarray,
              bin_width: float, max_mz: float | None = None, base_peak: float | None = None,
              precursor_peak: float | None = None, mz_power: float = 0.0, intensity_power: float = 1.0,
              threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Binned vectors of CSR spectra: per spectrum, its occupied bins ``floor(mz / bin_width)`` (ascending)
    and the summed weights ``mz**mz_power * intensity**intensity_power`` of its peaks in each.

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
    mz : ndarray, float64 (P,)
        Fragment m/z (Da), ascending within each spectrum.
    intensity : ndarray, float (P,)
    precursor_mz : ndarray, float64 (n,)
        Used only with ``precursor_peak`` (NaN: no precursor peak).
    bin_width : float
        Da, positive.
    max_mz : float, optional
        Only bins below ``floor(max_mz / bin_width)``; negative bins are always left out.
    base_peak : float, optional
        Intensities are first divided by the spectrum's largest and multiplied by this.
    precursor_peak : float, optional
        A peak of this intensity is added at the precursor m/z (after the base-peak scaling).
    mz_power, intensity_power : float
        ``intensity_power`` one of :data:`EXACT_POWERS`; ``mz_power`` 0 or one of them.
    threads : int, optional

    Returns
    -------
    (offsets int64 (n+1,), bins float64 (B,), values float64 (B,)), or None when some spectrum's m/z are
    not ascending.
    """
    offsets = np.ascontiguousarray(offsets, np.int64)
    mz = np.ascontiguousarray(mz, np.float64)
    intensity = np.ascontiguousarray(intensity, np.float64)
    pmz = np.ascontiguousarray(precursor_mz, np.float64)
    n = offsets.shape[0] - 1
    if n < 0 or int(offsets[-1]) != mz.shape[0] or mz.shape != intensity.shape or pmz.shape[0] != n:
        raise ValueError("bin_peaks: offsets, m/z, intensities and precursor m/z do not match")
    bw = float(bin_width)
    if not bw > 0:
        raise ValueError("bin_width must be positive")
    if float(intensity_power) not in EXACT_POWERS or float(mz_power) not in (0.0,) + EXACT_POWERS:
        raise ValueError(f"bin_peaks: powers must be in {EXACT_POWERS} (mz_power also 0), got "
                         f"{mz_power!r} / {intensity_power!r}")
    max_bin = np.inf if max_mz is None else float(np.floor(float(max_mz) / bw))
    args = (offsets, mz, intensity, pmz, bw, max_bin, base_peak is not None,
            0.0 if base_peak is None else float(base_peak), precursor_peak is not None,
            0.0 if precursor_peak is None else float(precursor_peak), float(mz_power), float(intensity_power))
    counts = np.empty(n, np.int64)
    out_off = np.zeros(n + 1, np.int64)
    empty = np.empty(0)
    kernel = _bin_rows.pick(n, threads)
    with _threads(threads):
        kernel(*args, False, out_off, empty, empty, counts)
        if n and counts.min() < 0:
            return None
        np.cumsum(counts, out=out_off[1:])
        bins = np.empty(int(out_off[-1]), np.float64)
        vals = np.empty(int(out_off[-1]), np.float64)
        kernel(*args, True, out_off, bins, vals, counts)
    return out_off, bins, vals


class BinPostings:
    """Postings of binned vectors: bin ``b`` holds ``spectra[bin_offsets[b]:bin_offsets[b + 1]]``
    (int32, ascending) with normalised values ``values[...]`` (float32).

    Build it with :meth:`add` over consecutive chunks of spectra (counting pass), :meth:`finish`
    (allocation), :meth:`add` again over the same chunks in the same order (filling pass), so a library
    of millions of spectra never needs all its binned vectors in memory twice.
    """

    def __init__(self, n_bins: int, n_spectra: int):
        self.n_bins = int(n_bins)
        self.n_spectra = int(n_spectra)
        self._counts = np.zeros(self.n_bins, np.int64)
        self.bin_offsets: np.ndarray | None = None
        self.spectra: np.ndarray | None = None
        self.values: np.ndarray | None = None
        self._cursor: np.ndarray | None = None
        self._next = 0

    def add(self, offsets: np.ndarray, bins: np.ndarray, values: np.ndarray) -> None:
        """Count (before :meth:`finish`) or fill (after) one chunk of consecutive spectra.

        Parameters
        ----------
        offsets : int64 (c+1,)
            CSR offsets of the chunk (from 0).
        bins : int32 (P,)
            Bin ids, unique within each spectrum; ids outside ``[0, n_bins)`` are left out.
        values : float32 (P,)
            Bin values, already divided by the spectrum's L2 norm.
        """
        offsets = np.ascontiguousarray(offsets, np.int64)
        bins = np.ascontiguousarray(bins, np.int32)
        if self.bin_offsets is None:
            _count(bins, self.n_bins, self._counts)
            return
        if self._cursor is None or self._next + offsets.shape[0] - 1 > self.n_spectra:
            raise ValueError("more spectra filled than the postings hold")
        if not _fill(offsets, bins, np.ascontiguousarray(values, np.float32), self._next, self._cursor,
                     self.bin_offsets[1:], self.spectra, self.values):
            raise ValueError("the filling pass holds more entries of a bin than the counting pass")
        if self._next + offsets.shape[0] - 1 == self.n_spectra:
            if not np.array_equal(self._cursor, self.bin_offsets[1:]):
                raise ValueError("the filling pass holds fewer entries than the counting pass")
            self._counts = self._cursor = None  # 16 bytes per bin, not needed for searching
        self._next += offsets.shape[0] - 1

    def finish(self) -> None:
        """End the counting pass: allocate the postings."""
        self.bin_offsets = np.zeros(self.n_bins + 1, np.int64)
        np.cumsum(self._counts, out=self.bin_offsets[1:])
        total = int(self.bin_offsets[-1])
        self.spectra = np.empty(total, np.int32)
        self.values = np.empty(total, np.float32)
        self._cursor = self.bin_offsets[:-1].copy()
        if self.n_spectra == 0:
            self._counts = self._cursor = None

    @property
    def complete(self) -> bool:
        return self.bin_offsets is not None and self._next == self.n_spectra

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.bin_offsets, self.spectra, self.values, self._counts, self._cursor)
                   if a is not None)


def _binned_candidates_py(q_off, q_bins, q_vals, rows, b_off, p_spec, p_val, k, min_matches, min_score, q_codes,
                          lib_codes, sym, acc, touched, t_val, t_cnt, heap_b, heap_i, out_start, out_ids, out_n):
    n_blocks = acc.shape[0]
    n_bins = b_off.shape[0] - 1
    nr = rows.shape[0]
    for blk in prange(n_blocks):
        a, tch, tv, tc = acc[blk], touched[blk], t_val[blk], t_cnt[blk]
        hb, hi = heap_b[blk], heap_i[blk]
        for r in range(blk, nr, n_blocks):
            q = rows[r]
            room = out_start[r + 1] - out_start[r]
            sl = MARGIN + 2.0 * (q_off[q + 1] - q_off[q] + 2) * F32_UNIT  # slack(), inlined
            floor = min_score - sl
            nt = 0
            for j in range(q_off[q], q_off[q + 1]):
                b = np.int64(q_bins[j])
                if b < 0 or b >= n_bins:
                    continue
                qv = q_vals[j]
                for p in range(b_off[b], b_off[b + 1]):
                    c = p_spec[p]
                    if a[c, 1] == 0:
                        tch[nt] = c
                        nt += 1
                    a[c, 1] += 1.0
                    a[c, 0] += np.float32(qv) * p_val[p]
            # one scattered pass: sums and counts move next to the touched list and the accumulators are
            # zeroed for the next query; the selection below then reads memory in order, and the filter
            # codes (scattered too) only for the few sums that would enter the top-k
            for t in range(nt):
                c = tch[t]
                tv[t] = a[c, 0]
                tc[t] = np.int32(a[c, 1])  # exact: counts stay far below 2**24
                a[c, 0] = 0.0
                a[c, 1] = 0.0
            # the k best eligible sums: their k-th, less the rounding margin, bounds what is returned
            size = 0
            for t in range(nt):
                v = tv[t]
                c = tch[t]
                if tc[t] >= min_matches and v >= floor and (size < k or v > hb[0] or (v == hb[0] and c < hi[0])) \
                        and _passes(c, r, q_codes, lib_codes, sym):
                    size = _heap_push(hb, hi, size, k, v, c)
            lim = max(hb[0] - sl, floor) if size == k else floor
            n = 0
            for t in range(nt):
                if tv[t] >= lim and tc[t] >= min_matches and _passes(tch[t], r, q_codes, lib_codes, sym):
                    if n < room:
                        out_ids[out_start[r] + n] = tch[t]
                    n += 1
            out_n[r] = n


_binned_candidates = pjit(_binned_candidates_py)


class BinWorkspace:
    """Per-thread scratch of :func:`binned_candidates`, kept between calls: accumulators by library row
    (float32 sum and shared-bin count side by side; left zeroed after every query) and the touched rows
    with their sums and counts in touch order, each of the library's length."""

    def __init__(self, n_library: int, n_blocks: int):
        self.n_blocks = int(n_blocks)
        # sum and count side by side: a posting updates one cache line, not two
        self.acc = np.zeros((self.n_blocks, max(n_library, 1), 2), np.float32)
        self.touched = np.empty((self.n_blocks, max(n_library, 1)), np.int32)
        self.t_val = np.empty((self.n_blocks, max(n_library, 1)), np.float64)
        self.t_cnt = np.empty((self.n_blocks, max(n_library, 1)), np.int32)


def binned_candidates(q_offsets: np.ndarray, q_bins: np.ndarray, q_values: np.ndarray, rows: np.ndarray,
                      postings: BinPostings, k: int, *, min_matches: int = 1, min_score: float = 0.0,
                      q_codes: np.ndarray | None = None, lib_codes: np.ndarray | None = None,
                      sym: np.ndarray | None = None, workspace: BinWorkspace | None = None,
                      threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Library spectra that may be among each query's top-k by binned cosine, as a CSR.

    Parameters
    ----------
    q_offsets : int64 (nq+1,)
    q_bins : (Q,) integer-valued
        Query bin ids (unique within a spectrum), as :func:`fastspec.similarity.prepare_csr` makes them.
    q_values : float64 (Q,)
        Query bin values divided by the query's L2 norm.
    rows : int64 (nr,)
        Queries to search.
    postings : BinPostings
        The library's postings (:meth:`BinPostings.finish` called and filled).
    k : int
        Hits wanted per query (>= 1).
    min_matches : int
        Fewest shared bins of a hit (at least 1: a spectrum sharing no bin is never returned).
    min_score : float
        Lowest score of a hit.
    q_codes, lib_codes, sym : int32 (nr, f), int32 (n_lib, f), bool (f,), optional
        Filter codes, as in :func:`fastspec.kernels.window.window_positions` (``q_codes`` row ``r`` is
        query ``rows[r]``); none by default.
    workspace : BinWorkspace, optional
        Reused accumulators (allocated per call otherwise).
    threads : int, optional

    Returns
    -------
    offsets : int64 (nr+1,)
    ids : int64 (offsets[-1],)
        Per query, every library spectrum passing the filters, with ``min_matches`` shared bins and a
        normalised dot product within :func:`slack` of ``min_score`` and of the k-th best: a superset
        of the exact top-k, ties included.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if not postings.complete:
        raise ValueError("postings are not complete")
    rows = np.ascontiguousarray(rows, np.int64)
    nr = rows.shape[0]
    n_lib = postings.n_spectra
    if q_codes is None:
        q_codes, lib_codes, sym = (np.zeros((nr, 0), np.int32), np.zeros((max(n_lib, 1), 0), np.int32),
                                   np.zeros(0, np.bool_))
    n_blocks = max(1, min(nr, workspace.n_blocks if workspace is not None else
                          (max_threads() if threads is None else min(int(threads), max_threads()))))
    if workspace is None or workspace.acc.shape[1] < n_lib:
        workspace = BinWorkspace(n_lib, n_blocks)
    n_blocks = min(n_blocks, workspace.n_blocks)
    heap_b = np.empty((n_blocks, k), np.float64)
    heap_i = np.empty((n_blocks, k), np.int64)
    q = (np.ascontiguousarray(q_offsets, np.int64), np.ascontiguousarray(q_bins, np.float64),
         np.ascontiguousarray(q_values, np.float64))
    q_codes = np.ascontiguousarray(q_codes, np.int32)
    lib_side = (np.ascontiguousarray(lib_codes, np.int32), np.ascontiguousarray(sym, np.bool_))
    ws = (workspace.acc[:n_blocks], workspace.touched[:n_blocks],
          workspace.t_val[:n_blocks], workspace.t_cnt[:n_blocks], heap_b, heap_i)
    room = max(4 * k, 64)
    todo = np.arange(nr)
    start = np.arange(nr + 1, dtype=np.int64) * room
    counts = np.zeros(nr, np.int64)
    parts: dict[int, np.ndarray] = {}
    while todo.size:  # a second round, sized by the first's counts, for queries with more near-ties
        out_ids = np.empty(int(start[-1]), np.int64)
        out_n = np.zeros(todo.size, np.int64)
        with _threads(threads) as nt:
            # each query is a pass over postings (milliseconds at millions of spectra): two make a
            # parallel launch worth it
            kern = _binned_candidates.pick(SERIAL_BELOW if todo.size > 1 else 1, nt)
            kern(*q, rows[todo], postings.bin_offsets, postings.spectra, postings.values, int(k),
                 max(1, int(min_matches)), float(min_score), q_codes[todo], *lib_side, *ws, start, out_ids, out_n)
        fit = out_n <= np.diff(start)
        for j in np.flatnonzero(fit):
            parts[int(todo[j])] = out_ids[start[j]: start[j] + out_n[j]]
        counts[todo[fit]] = out_n[fit]
        todo = todo[~fit]
        start = np.zeros(todo.size + 1, np.int64)
        np.cumsum(out_n[~fit], out=start[1:])
    offsets = np.zeros(nr + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    ids = np.concatenate([parts[r] for r in range(nr)]) if nr else np.zeros(0, np.int64)
    return offsets, ids
