"""Pair scoring kernels: greedy cosine, modified cosine, neutral-loss cosine, binned cosine, entropy.

Everything works on *prepared* CSR arrays (see :func:`fastspec.similarity.prepare`): per spectrum the
peaks ``[off[i], off[i+1])`` with ``pos`` (m/z, neutral loss or bin id, float64) and a weight ``w``
(float64), a norm per spectrum and the precursor m/z. One function, :func:`score_row`, scores spectrum
``i`` of side A against a list of spectra of side B for any metric ``kind``; the batch drivers in
:mod:`fastspec.kernels.topk` call it from their parallel outer loops, once per row, with per-thread
scratch tuples (see :func:`new_buffers`).

matchms parity (CosineGreedy / ModifiedCosineGreedy / NeutralLossesCosine 0.33)
------------------------------------------------------------------------------
* Candidate pairs are those matchms ``find_matches`` collects: for each peak of A (ascending m/z), the
  peaks of B with ``mz_a - tol <= mz_b + shift <= mz_a + tol``; modified cosine adds the shifted pairs
  after the unshifted ones. Products are ``w_a * w_b`` with ``w = mz**mz_power * intensity**intensity_power``.
* Pairs are taken greedily by descending product. matchms reverses a stable ascending sort, so among
  equal products the pair collected *later* wins. Every pair carries its rank in matchms' collection
  order (``(scan * n_a + p) * n_b + q``), which makes the order strict and lets pairs be collected in
  any order.
* Modified cosine falls back to plain cosine when ``|pmz_a - pmz_b| <= tol`` (as matchms does); when a
  precursor is unknown (NaN) it also falls back to plain cosine (matchms would raise).
* ppm tolerances (not in matchms) use the window ``mz_a * ppm * 1e-6`` around each peak of A.

Why it is fast
--------------
* Collection walks the peaks of B only: spectrum ``i`` of A is recorded once per row as a bitset over
  m/z bins at least one tolerance wide, each peak setting its bin and both neighbours, so a peak of B
  (shifted or not) that hits no set bit cannot match and costs one bit test -- no data-dependent merge
  loop and its branch mispredictions. Hits are verified exactly against the A peaks.
* The greedy step never sorts conflict-free pairs (a pair whose two peaks occur in no other pair is
  always taken). The rest is matched by rounds of *locally dominant* pairs -- pairs heavier than every
  pair they share a peak with -- which under a strict order select exactly the greedy matching (each is
  taken by greedy; removing their peaks leaves greedy's problem on the remainder). Rounds are capped; a
  heap finishes whatever is left in greedy order.
* Scratch lives in few arrays (rows of 2-D arrays, see :func:`new_buffers`): numba increfs and decrefs
  every array argument of a function it does not inline, an atomic operation each, and ``_greedy`` runs
  once per conflicting pair. Going from nine arrays to three: raw MassBank 2,000 x 2,000, 0.1 Da, 1
  thread, alternating runs: modified cosine 3.6-4.0M -> 4.0-4.9M pairs/s, cosine 7.5-8.2M -> 10.4-10.7M;
  identity search (2.4M library) 0.23-0.32 -> 0.20-0.28 ms per query.
"""
from __future__ import annotations

import numba
import numpy as np

from fastspec.kernels._config import NJIT
from fastspec.kernels.entropy import entropy_pair, hybrid_entropy_pair

COSINE = 0
MODIFIED_COSINE = 1
NEUTRAL_LOSS = 2
BINNED = 3
ENTROPY = 4
ENTROPY_FLASH = 5  #: entropy, peaks matched in FlashEntropySearch's float32 windows (see entropy_pair)
ENTROPY_HYBRID = 6  #: ms_entropy's hybrid search: fragments, else neutral losses (see hybrid_entropy_pair)

_NBINS = 1 << 16  # bins of the per-row bitset (8 KiB: stays in L1)
_MAX_ROUNDS = 24  # locally-dominant rounds before the heap takes over (long monotone chains)
_ONE = np.uint64(1)
_SIX = np.uint64(6)
_LOW6 = np.uint64(63)
PI, PJ, PK, ORDER = 0, 1, 2, 3  # rows of the pair array
CA, CB, BA, BB = 0, 1, 2, 3  # rows of the per-peak array


@numba.njit(**NJIT)
def new_buffers(max_peaks_a, max_peaks_b, capacity):
    """Per-thread scratch, one tuple: pair arrays (grown on demand), per-peak counters, the row bitset.

    ``(pairs, pv, peaks, bits)``: per pair (int64 (4, ``capacity``)) the peak of A, the peak of B, the
    collection rank and a work order (rows ``PI, PJ, PK, ORDER``), and its product (float64); per peak
    (int64 (4, max peaks)) counts/flags for A and B and best-pair stamps for A and B (rows ``CA, CB, BA,
    BB``), all zero between calls; the bitset of the current row of A. Rows of two arrays rather than
    eight arrays: numba increfs every array argument on entry of a function it does not inline, which
    cost :func:`_greedy` 18 atomic operations per call.
    """
    width = max(max_peaks_a, max_peaks_b, 1)
    return (np.empty((4, capacity), np.int64), np.empty(capacity, np.float64), np.zeros((4, width), np.int64),
            np.zeros(_NBINS // 64, np.uint64))


@numba.njit(**NJIT)
def grow(buf, need):
    """The same buffers with room for ``need`` pairs (per-peak arrays and bitset kept)."""
    return np.empty((4, need), np.int64), np.empty(need, np.float64), buf[2], buf[3]


@numba.njit(**NJIT)
def bin_inverse(pos_a, tol_da, tol_ppm):
    """1 / bin width for the row bitsets: at least one tolerance (any match is then in the same or a
    neighbouring bin), and wide enough that every position of A fits in the bitset."""
    top = 0.0
    for x in pos_a:
        if x > top:
            top = x
    tol = tol_da if tol_ppm <= 0.0 else top * tol_ppm * 1e-6
    width = max(tol * (1.0 + 1e-6) + 1e-9, top / (_NBINS - 4))
    return 1.0 / width


@numba.njit(**NJIT)
def _bin(x, inv_w):
    """Bin of position ``x``, clamped into the bitset (clamping only adds candidates, never loses one)."""
    # 0.0 first: max() keeps its first argument unless the second is larger, so a NaN position (a
    # corrupted index) lands in bin 0 instead of int(NaN), an index far outside the bitset (a segfault)
    return int(min(max(0.0, x * inv_w), _NBINS - 1.0))


@numba.njit(**NJIT)
def mark_row(kind, buf, pos_a, a0, a1, inv_w, on):
    """Record (``on``) or erase the peaks ``[a0, a1)`` of A in the row bitset (peak-matching kinds only)."""
    if kind == BINNED or kind == ENTROPY or kind == ENTROPY_FLASH or kind == ENTROPY_HYBRID:
        return
    bits = buf[3]
    for p in range(a0, a1):
        k = _bin(pos_a[p], inv_w)
        for kk in range(max(k - 1, 0), min(k + 2, _NBINS)):
            if on:
                bits[kk >> 6] |= _ONE << np.uint64(kk & 63)
            else:
                bits[kk >> 6] = np.uint64(0)


@numba.njit(**NJIT)
def _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, shift, scan, bits, inv_w, pi, pj, pk, pv, n):
    """Append the pairs within tolerance with their matchms rank; returns the new pair count.

    Pairs past the buffers' capacity are counted, not written: a count above capacity tells the caller
    how much room to make (the exact need -- not the (peaks of A) x (peaks of B) worst case, which is
    tens of GB for two 30,000-peak spectra)."""
    cap = pi.shape[0]
    na = a1 - a0
    nb = b1 - b0
    lowest = a0  # first A peak whose window does not end below the current (ascending) B position
    for q in range(b0, b1):
        # unsigned indices: numba then skips its negative-index wrap-around code in this hot loop
        y = pos_b[np.uint64(q)] + shift
        k = np.uint64(_bin(y, inv_w))
        if (bits[k >> _SIX] >> (k & _LOW6)) & _ONE:
            if tol_ppm <= 0.0:
                while lowest < a1 and pos_a[lowest] + tol_da < y:
                    lowest += 1
            else:
                while lowest < a1 and pos_a[lowest] + pos_a[lowest] * tol_ppm * 1e-6 < y:
                    lowest += 1
            p = lowest
            while p < a1:
                x = pos_a[p]
                if x - (tol_da if tol_ppm <= 0.0 else x * tol_ppm * 1e-6) > y:
                    break
                if n < cap:
                    pi[n] = p - a0
                    pj[n] = q - b0
                    pv[n] = w_a[p] * w_b[q]
                    pk[n] = (scan * na + (p - a0)) * nb + (q - b0)
                n += 1
                p += 1
    return n


@numba.njit(inline="always", **NJIT)
def _heavier(pv, pairs, e, f):
    """Pair ``e`` comes before pair ``f`` in greedy order (larger product; later collected on ties)."""
    return pv[e] > pv[f] or (pv[e] == pv[f] and pairs[PK, e] > pairs[PK, f])


@numba.njit(inline="always", **NJIT)
def _sift(pairs, start, end, pv):
    """Restore the max-heap property of the work order ``pairs[ORDER, start:end]`` below ``start``."""
    root = start
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _heavier(pv, pairs, pairs[ORDER, child + 1], pairs[ORDER, child]):
            child += 1
        if not _heavier(pv, pairs, pairs[ORDER, child], pairs[ORDER, root]):
            return
        pairs[ORDER, root], pairs[ORDER, child] = pairs[ORDER, child], pairs[ORDER, root]
        root = child


def _greedy_py(pairs, pv, peaks, n):
    """Greedy one-to-one assignment of the first ``n`` pairs (n >= 2) -> (sum of products, matched pairs).

    ``pairs``, ``pv``, ``peaks``: the arrays of :func:`new_buffers`.
    """
    for t in range(n):
        peaks[CA, pairs[PI, t]] += 1
        peaks[CB, pairs[PJ, t]] += 1
    total = 0.0
    used = 0
    m = 0
    for t in range(n):
        if peaks[CA, pairs[PI, t]] == 1 and peaks[CB, pairs[PJ, t]] == 1:  # shares no peak: always taken
            total += pv[t]
            used += 1
        else:
            pairs[ORDER, m] = t
            m += 1
    for t in range(n):
        peaks[CA, pairs[PI, t]] = 0
        peaks[CB, pairs[PJ, t]] = 0
    # CA/CB now flag matched peaks; BA/BB hold each peak's heaviest live pair as round * (n + 1) + pair,
    # so a stamp from an earlier round reads as empty and nothing needs clearing between rounds
    rnd = 0
    while m > 0 and rnd < _MAX_ROUNDS:
        rnd += 1
        base = rnd * (n + 1)
        live = 0
        for s in range(m):
            e = pairs[ORDER, s]
            a, b = pairs[PI, e], pairs[PJ, e]
            if peaks[CA, a] != 0 or peaks[CB, b] != 0:
                continue
            pairs[ORDER, live] = e
            live += 1
            f = peaks[BA, a] - base
            if f < 0 or _heavier(pv, pairs, e, f):
                peaks[BA, a] = base + e
            f = peaks[BB, b] - base
            if f < 0 or _heavier(pv, pairs, e, f):
                peaks[BB, b] = base + e
        m = live
        for s in range(m):
            e = pairs[ORDER, s]
            a, b = pairs[PI, e], pairs[PJ, e]
            if peaks[BA, a] == base + e and peaks[BB, b] == base + e:
                total += pv[e]
                used += 1
                peaks[CA, a] = 1
                peaks[CB, b] = 1
    if m > 0:  # what the rounds left, in greedy order
        for s in range(m // 2 - 1, -1, -1):
            _sift(pairs, s, m, pv)
        for end in range(m - 1, -1, -1):
            e = pairs[ORDER, 0]
            pairs[ORDER, 0] = pairs[ORDER, end]
            _sift(pairs, 0, end, pv)
            a, b = pairs[PI, e], pairs[PJ, e]
            if peaks[CA, a] == 0 and peaks[CB, b] == 0:
                total += pv[e]
                used += 1
                peaks[CA, a] = 1
                peaks[CB, b] = 1
    for t in range(n):
        a, b = pairs[PI, t], pairs[PJ, t]
        peaks[CA, a] = 0
        peaks[CB, b] = 0
        peaks[BA, a] = 0
        peaks[BB, b] = 0
    return total, used


_greedy = numba.njit(**NJIT)(_greedy_py)
#: the same step inlined into its caller (the join kernels): a call passing three arrays costs six
#: reference-count operations, and the join calls it about once per spectrum pair with conflicts
greedy_inline = numba.njit(inline="always", **NJIT)(_greedy_py)


@numba.njit(**NJIT)
def few_pairs(i0, j0, k0, v0, i1, j1, k1, v1, n, den):
    """(score, matched peaks) of a spectrum pair from ``n <= 2`` candidate pairs (peak of A, peak of B,
    rank, product; ``den``: the product of the norms, > 0): both pairs, or the greedy-first one if they
    share a peak. Scalars only, so that the call costs no reference counting. :func:`score_row` spells
    the same rule out inline: calling this from there slowed identity search by about 7%."""
    if n == 1:
        return v0 / den, 1
    if n == 2:
        if i0 != i1 and j0 != j1:
            return (v0 + v1) / den, 2
        return (v0 if v0 > v1 or (v0 == v1 and k0 > k1) else v1) / den, 1
    return 0.0, 0


@numba.njit(**NJIT)
def _binned(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1):
    """Dot product of two sparse binned vectors (sorted unique bin ids) and the shared-bin count."""
    a, b = a0, b0
    total = 0.0
    shared = 0
    while a < a1 and b < b1:
        if pos_a[a] < pos_b[b]:
            a += 1
        elif pos_a[a] > pos_b[b]:
            b += 1
        else:
            total += w_a[a] * w_b[b]
            shared += 1
            a += 1
            b += 1
    return total, shared


@numba.njit(**NJIT)
def score_row(kind, i, cand, c0, c1, all_b, off_a, pos_a, w_a, norm_a, pmz_a, off_b, pos_b, w_b, norm_b, pmz_b,
              tol_da, tol_ppm, inv_w, buf, out_s, out_m):
    """Score spectrum ``i`` of A against ``B[j]`` for ``j = cand[t]`` (or ``j = t`` when ``all_b``),
    ``c0 <= t < c1``, into ``out_s[t - c0]`` (float64) and ``out_m[t - c0]`` (matched peaks, int32).

    ``buf`` comes from :func:`new_buffers`; ``inv_w`` from :func:`bin_inverse` over A. Returns the
    buffers, grown if a pair list did not fit. One call per row keeps the per-pair work free of call
    overhead (a numba call passing a dozen arrays costs about as much as scoring a pair). Empty spectra
    and zero norms score 0 with 0 matches.
    """
    a0, a1 = off_a[i], off_a[i + 1]
    mark_row(kind, buf, pos_a, a0, a1, inv_w, True)
    # unpacked once per row: taking arrays out of the tuple per pair costs reference counting
    pairs, pv, peaks, bits = buf
    pi, pj, pk = pairs[PI], pairs[PJ], pairs[PK]
    pa = pmz_a[i]
    t = c0
    while t < c1:
        j = t if all_b else cand[t]
        b0, b1 = off_b[j], off_b[j + 1]
        score = 0.0
        used = 0
        if a1 == a0 or b1 == b0:
            pass
        elif kind == BINNED:
            den = norm_a[i] * norm_b[j]
            if den > 0:  # (a zero norm: 0 with 0 matches, as the other metrics give)
                dot, used = _binned(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1)
                score = dot / den
        elif kind == ENTROPY or kind == ENTROPY_FLASH:
            score, used = entropy_pair(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, kind == ENTROPY_FLASH)
        elif kind == ENTROPY_HYBRID:
            score, used = hybrid_entropy_pair(pos_a, w_a, a0, a1, pa, pos_b, w_b, b0, b1, pmz_b[j], tol_da, peaks)
        elif norm_a[i] * norm_b[j] > 0 and not (kind == NEUTRAL_LOSS and not (pa == pa and pmz_b[j] == pmz_b[j])):
            pb = pmz_b[j]
            shift = pa - pb
            shifted = False
            if kind == MODIFIED_COSINE and pa == pa and pb == pb:
                shifted = abs(shift) > (tol_da if tol_ppm <= 0.0 else pa * tol_ppm * 1e-6)
            n = _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm,
                         shift if kind == NEUTRAL_LOSS else 0.0, 0, bits, inv_w, pi, pj, pk, pv, 0)
            if shifted:
                n = _collect(pos_a, w_a, a0, a1, pos_b, w_b, b0, b1, tol_da, tol_ppm, shift, 1, bits, inv_w,
                             pi, pj, pk, pv, n)
            if n > pi.shape[0]:  # the pair list did not fit: make room for all of it and score the pair again
                buf = grow(buf, max(n, 2 * pi.shape[0]))  # at least doubling: a row of ever larger pairs
                pairs, pv = buf[0], buf[1]
                pi, pj, pk = pairs[PI], pairs[PJ], pairs[PK]
                continue
            if n == 1:
                score, used = pv[0] / (norm_a[i] * norm_b[j]), 1
            elif n == 2:  # common for raw spectra: both pairs, or the greedy-first one if they share a peak
                if pi[0] != pi[1] and pj[0] != pj[1]:
                    score, used = (pv[0] + pv[1]) / (norm_a[i] * norm_b[j]), 2
                else:
                    score, used = pv[0 if _heavier(pv, pairs, 0, 1) else 1] / (norm_a[i] * norm_b[j]), 1
            elif n > 2:
                total, used = _greedy(pairs, pv, peaks, n)
                score = total / (norm_a[i] * norm_b[j])
        out_s[t - c0] = score
        out_m[t - c0] = used
        t += 1
    mark_row(kind, buf, pos_a, a0, a1, inv_w, False)
    return buf
