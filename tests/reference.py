"""Naive pure-Python reference implementations of every fastspec similarity kernel.

Deliberately slow and obvious: plain loops over Python lists, no numba, no vectorisation, so the
tests can check the fast kernels (:mod:`fastspec.kernels.matching`, :mod:`fastspec.kernels.topk`)
against an implementation whose correctness can be read off the page.

Conventions (the same as :mod:`fastspec.similarity`)
-----------------------------------------------------
* Spectrum ``a`` is matchms's ``reference`` (``spec1``) and ms_entropy's ``peaks_a``; ``b`` is the
  query. Peaks are given as m/z and intensity lists, m/z sorted ascending.
* A tolerance is ``(value, unit)`` with unit ``"da"`` or ``"ppm"``; a ppm window is
  ``mz_a * ppm * 1e-6`` around each peak of ``a`` (and around ``precursor_mz(a)`` for the
  modified-cosine fallback test).
* Peak weights are ``mz**mz_power * intensity**intensity_power``.
"""
from __future__ import annotations

import math

__all__ = [
    "window", "weights", "collect_pairs", "greedy", "cosine", "modified_cosine", "neutral_loss_cosine",
    "binned_vector", "binned_cosine", "hashed_vector", "entropy_weight", "entropy_similarity", "score", "topk", "cosine_bound",
    "neutral_loss_weights",
]


def window(mz_a: float, tol: float, unit: str) -> float:
    """Half-width (Da) of the matching window around a peak of spectrum ``a``."""
    return mz_a * tol * 1e-6 if unit == "ppm" else tol


def weights(mz, intensity, mz_power: float, intensity_power: float) -> list[float]:
    """Peak weights ``mz**mz_power * intensity**intensity_power`` (float64)."""
    return [float(m) ** mz_power * float(i) ** intensity_power for m, i in zip(mz, intensity)]


def collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit, shift=0.0) -> list[tuple[int, int, float]]:
    """Every (i, j, w_a[i] * w_b[j]) with ``|mz_b[j] + shift - mz_a[i]|`` within the window of ``mz_a[i]``.

    Listed for i ascending, then j ascending: the order matchms's ``find_matches`` produces (its
    ``lowest_idx`` skip only avoids comparisons that would fail anyway).
    """
    pairs = []
    for i in range(len(mz_a)):
        t = window(float(mz_a[i]), tol, unit)
        low, high = float(mz_a[i]) - t, float(mz_a[i]) + t
        for j in range(len(mz_b)):
            mz2 = float(mz_b[j]) + shift
            if low <= mz2 <= high:
                pairs.append((i, j, w_a[i] * w_b[j]))
    return pairs


def greedy(pairs) -> tuple[float, int]:
    """matchms's greedy assignment: stable ascending sort by product, reversed, then first come first served.

    Reversing a stable ascending sort puts the pair collected *later* first among equal products.
    """
    ascending = sorted(range(len(pairs)), key=lambda t: pairs[t][2])  # Python's sort is stable
    used_a, used_b = set(), set()
    total, n = 0.0, 0
    for t in reversed(ascending):
        i, j, p = pairs[t]
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            total += p
            n += 1
    return total, n


def _norm(w) -> float:
    return math.sqrt(sum(x * x for x in w))


def _finish(pairs, w_a, w_b) -> tuple[float, int]:
    den = _norm(w_a) * _norm(w_b)
    if not pairs or not den > 0:
        return 0.0, 0
    total, n = greedy(pairs)
    return total / den, n


def cosine(mz_a, int_a, mz_b, int_b, tol=0.1, unit="da", mz_power=0.0, intensity_power=1.0) -> tuple[float, int]:
    """matchms ``CosineGreedy.pair(a, b)`` -> (score, matched peaks)."""
    w_a = weights(mz_a, int_a, mz_power, intensity_power)
    w_b = weights(mz_b, int_b, mz_power, intensity_power)
    return _finish(collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit), w_a, w_b)


def cosine_bound(mz_a, int_a, mz_b, int_b, tol=0.1, unit="da") -> tuple[float, int]:
    """Upper bound of the greedy cosine: the sum over *every* pair within tolerance (not one-to-one) of
    the L2-normalised intensity products -> (bound, number of pairs)."""
    w_a = weights(mz_a, int_a, 0.0, 1.0)
    w_b = weights(mz_b, int_b, 0.0, 1.0)
    pairs = collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit)
    den = _norm(w_a) * _norm(w_b)
    return (sum(p for _, _, p in pairs) / den if den > 0 else 0.0), len(pairs)


def modified_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol=0.1, unit="da", mz_power=0.0,
                    intensity_power=1.0) -> tuple[float, int]:
    """matchms ``ModifiedCosineGreedy.pair(a, b)``.

    Plain cosine when the precursor shift ``pmz_a - pmz_b`` is within the tolerance (ppm: of ``pmz_a``)
    or when a precursor is unknown (NaN; matchms would raise). Otherwise the unshifted pairs followed
    by the pairs with ``mz_b + shift``.
    """
    if math.isnan(pmz_a) or math.isnan(pmz_b) or abs(pmz_a - pmz_b) <= window(pmz_a, tol, unit):
        return cosine(mz_a, int_a, mz_b, int_b, tol, unit, mz_power, intensity_power)
    w_a = weights(mz_a, int_a, mz_power, intensity_power)
    w_b = weights(mz_b, int_b, mz_power, intensity_power)
    pairs = collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit) + collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit,
                                                                             pmz_a - pmz_b)
    return _finish(pairs, w_a, w_b)


def neutral_loss_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol=0.1, unit="da", mz_power=0.0,
                        intensity_power=1.0, ignore_peaks_above_precursor=True) -> tuple[float, int]:
    """matchms ``NeutralLossesCosine.pair(a, b)``; 0 when a precursor is unknown (NaN).

    Peaks at or above the own precursor are dropped first (also from the norms), then peaks are
    paired with ``mz_b + (pmz_a - pmz_b)``, i.e. equal neutral losses.
    """
    if math.isnan(pmz_a) or math.isnan(pmz_b):
        return 0.0, 0
    if ignore_peaks_above_precursor:
        keep_a = [k for k in range(len(mz_a)) if mz_a[k] < pmz_a]
        keep_b = [k for k in range(len(mz_b)) if mz_b[k] < pmz_b]
        mz_a, int_a = [mz_a[k] for k in keep_a], [int_a[k] for k in keep_a]
        mz_b, int_b = [mz_b[k] for k in keep_b], [int_b[k] for k in keep_b]
    w_a = weights(mz_a, int_a, mz_power, intensity_power)
    w_b = weights(mz_b, int_b, mz_power, intensity_power)
    return _finish(collect_pairs(mz_a, w_a, mz_b, w_b, tol, unit, pmz_a - pmz_b), w_a, w_b)


def neutral_loss_weights(mz, intensity, pmz, mz_power=0.0, intensity_power=1.0) -> list[float]:
    """Neutral-loss cosine's per-peak weights as its score uses them: ``weights`` of the peaks below
    the precursor divided by their L2 norm, 0 for the others (all 0 without a precursor)."""
    w = weights(mz, intensity, mz_power, intensity_power)
    kept = [not math.isnan(pmz) and float(m) < pmz for m in mz]
    norm = math.sqrt(sum(x * x for x, k in zip(w, kept) if k))
    return [x / norm if k and norm > 0 else 0.0 for x, k in zip(w, kept)]


KHOO2026 = {"bin_width": 0.25, "max_mz": 2000.0, "base_peak": 100.0, "precursor_peak": 100.0}


def binned_vector(mz, intensity, pmz, bin_width, max_mz=None, base_peak=None, precursor_peak=None, mz_power=0.0,
                  intensity_power=1.0) -> dict[int, float]:
    """Sparse binned vector {bin: summed weight}.

    Steps: scale the most intense peak to ``base_peak``; add a peak of ``precursor_peak`` at the
    precursor m/z (if known); weight every peak (``mz**mz_power * value**intensity_power``); sum the
    weights per bin ``floor(mz / bin_width)``, keeping bins ``0 <= bin < floor(max_mz / bin_width)``.
    """
    vals = [float(x) for x in intensity]
    pos = [float(m) for m in mz]
    if base_peak is not None and vals:
        top = max(vals)
        if top > 0:
            vals = [v / top * base_peak for v in vals]
    if precursor_peak is not None and not math.isnan(pmz):
        pos.append(float(pmz))
        vals.append(float(precursor_peak))
    n_bins = math.floor(max_mz / bin_width) if max_mz is not None else None
    vec: dict[int, float] = {}
    for m, v in zip(pos, vals):
        b = math.floor(m / bin_width)
        if b < 0 or (n_bins is not None and b >= n_bins):
            continue
        vec[b] = vec.get(b, 0.0) + m ** mz_power * v ** intensity_power
    return vec


def binned_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, bin_width=0.1, max_mz=None, base_peak=None,
                  precursor_peak=None, mz_power=0.0, intensity_power=1.0, preset=None) -> tuple[float, int]:
    """Cosine of two binned vectors -> (score, shared bins)."""
    opts = dict(bin_width=bin_width, max_mz=max_mz, base_peak=base_peak, precursor_peak=precursor_peak)
    if preset == "khoo2026":
        opts = dict(KHOO2026)
    va = binned_vector(mz_a, int_a, pmz_a, mz_power=mz_power, intensity_power=intensity_power, **opts)
    vb = binned_vector(mz_b, int_b, pmz_b, mz_power=mz_power, intensity_power=intensity_power, **opts)
    shared = [k for k in va if k in vb]
    den = _norm(list(va.values())) * _norm(list(vb.values()))
    if not va or not vb or not den > 0:
        return 0.0, 0
    return sum(va[k] * vb[k] for k in shared) / den, len(shared)


def hashed_vector(mz, intensity, dim=256, bin_width=1.0, offset=0.3, intensity_power=0.5) -> list[float]:
    """The FAISS vector of one spectrum: ``intensity ** intensity_power`` summed into nominal-mass bins
    ``floor((mz + offset) / bin_width)``, bins hashed into ``dim`` slots (Fibonacci hashing: the bin
    times 2**64 / golden ratio, modulo 2**64, top 24 bits), then L2-normalised."""
    vec = [0.0] * dim
    for m, v in zip(mz, intensity):
        if v > 0:
            b = math.floor((m + offset) / bin_width)
            slot = (((b % 2 ** 64) * 11400714819323198485) % 2 ** 64 >> 40) % dim
            vec[slot] += float(v) ** intensity_power
    n = _norm(vec)
    return [x / n for x in vec] if n > 0 else vec


def nearest_centroid(vec, centroids) -> int:
    """The inverted list of a vector in an inner-product IVF index: the centroid of largest inner
    product, the lowest index among equal ones."""
    best, best_v = 0, -math.inf
    for c, cen in enumerate(centroids):
        v = sum(float(a) * float(b) for a, b in zip(vec, cen))
        if v > best_v:
            best, best_v = c, v
    return best


def entropy_weight(intensity) -> list[float]:
    """ms_entropy's entropy weighting of sum-normalised intensities (identity when entropy >= 3)."""
    x = [float(v) for v in intensity]
    s = -sum(v * math.log(v) for v in x)
    if s >= 3:
        return x
    p = 0.25 + 0.25 * s
    y = [v ** p for v in x]
    tot = sum(y)
    return [v / tot for v in y]


def entropy_similarity(mz_a, int_a, mz_b, int_b, tol=0.02, unit="da", weighted=True, flash=False) -> tuple[float, int]:
    """(Un)weighted entropy similarity of two *already cleaned* spectra -> (score, matched peaks).

    Peaks with m/z or intensity <= 0 are dropped and intensities normalised to sum 1 (what
    ``prepare(..., clean=False)`` does), the entropy weight applied when ``weighted``, then
    ms_entropy's two-pointer walk: a peak of ``a`` and one of ``b`` match when
    ``|mz_a - mz_b| <= window(mz_a)``; both pointers advance after a match. Float64 arithmetic
    (ms_entropy and fastspec use float32, so compare with ~1e-5). With ``flash`` (Da), a peak of ``b``
    matches a peak of ``a`` when ``float32(mz_a) - float32(tol) <= float32(mz_b) <= float32(mz_a) +
    float32(tol)``, each end rounded to float32 (FlashEntropySearch's windows under NumPy 2).
    """
    import numpy as np

    def side(ma, mb, t):  # -1: b below a's window, 1: above, 0: inside
        if flash and unit == "da":
            a32, b32, t32 = np.float32(ma), np.float32(mb), np.float32(tol)
            return -1 if b32 < np.float32(a32 - t32) else 1 if b32 > np.float32(a32 + t32) else 0
        d = ma - mb
        return -1 if d > t else 1 if d < -t else 0

    def norm(mz, inten):
        keep = [(float(m), float(v)) for m, v in zip(mz, inten) if m > 0 and v > 0]
        tot = sum(v for _, v in keep)
        mz = [m for m, _ in keep]
        x = [v / tot for _, v in keep] if tot > 0 else []
        return mz, (entropy_weight(x) if weighted and x else x)

    mz_a, x_a = norm(mz_a, int_a)
    mz_b, x_b = norm(mz_b, int_b)
    a = b = n = 0
    sim = 0.0
    while a < len(mz_a) and b < len(mz_b):
        where = side(mz_a[a], mz_b[b], window(mz_a[a], tol, unit))
        if where > 0:
            a += 1
        elif where < 0:
            b += 1
        else:
            ia, ib = x_a[a], x_b[b]
            sim += (ia + ib) * math.log2(ia + ib) - ia * math.log2(ia) - ib * math.log2(ib)
            n += 1
            a += 1
            b += 1
    return min(max(sim / 2.0, 0.0), 1.0), n



def hybrid_entropy_similarity(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol=0.02, weighted=True) -> tuple[float, int]:
    """ms_entropy's hybrid search score of two *already cleaned* spectra (peaks more than 2 x ``tol``
    apart) -> (score, contributing peaks of a), read off ``FlashEntropySearch.search_hybrid``: each peak of
    ``a`` adds its term with a peak of ``b`` in its fragment window; a peak without one adds its term with
    a peak of ``b`` whose neutral loss ``float32(pmz) - mz`` lies in the window of its own loss, unless
    that peak of ``b`` lies in the fragment window of any peak of ``a``. Windows as Flash's (float32 ends,
    both included); float64 sums."""
    import numpy as np

    f32 = np.float32
    t32 = f32(tol)

    def inside(x, y):  # y in the float32 window around x
        return f32(x - t32) <= y <= f32(x + t32)

    def norm(mz, inten):
        keep = [(float(m), float(v)) for m, v in zip(mz, inten) if m > 0 and v > 0]
        tot = sum(v for _, v in keep)
        x = [v / tot for _, v in keep] if tot > 0 else []
        return [f32(m) for m, _ in keep], (entropy_weight(x) if weighted and x else x)

    mz_a, x_a = norm(mz_a, int_a)
    mz_b, x_b = norm(mz_b, int_b)
    losses = math.isfinite(pmz_a) and math.isfinite(pmz_b)
    nl_a = [f32(f32(pmz_a) - m) for m in mz_a] if losses else []
    nl_b = [f32(f32(pmz_b) - m) for m in mz_b] if losses else []
    as_fragment = [any(inside(ma, mb) for ma in mz_a) for mb in mz_b]
    sim, n = 0.0, 0
    for i, ma in enumerate(mz_a):
        partner = next((j for j, mb in enumerate(mz_b) if inside(ma, mb)), None)
        if partner is None and losses:
            partner = next((j for j, lb in enumerate(nl_b) if inside(nl_a[i], lb) and not as_fragment[j]), None)
        if partner is not None:
            ia, ib = x_a[i], x_b[partner]
            sim += (ia + ib) * math.log2(ia + ib) - ia * math.log2(ia) - ib * math.log2(ib)
            n += 1
    return min(max(sim / 2.0, 0.0), 1.0), n

def neutral_loss_entropy_similarity(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol=0.02,
                                    weighted=True) -> tuple[float, int]:
    """ms_entropy's neutral-loss search score of two *already cleaned* spectra -> (score, matched losses),
    read off ``FlashEntropySearch.neutral_loss_search``: peaks normalised (and weighted) as for
    :func:`entropy_similarity`, each then placed at its loss ``float32(float32(pmz) - float32(mz))``;
    a loss of ``b`` matches one of ``a`` inside Flash's float32 window around it, one to one in ascending
    loss order (clean spectra have one candidate per window). No losses without both precursors (NaN, or
    0 or less); float64 sums."""
    import numpy as np

    f32 = np.float32
    t32 = f32(tol)

    def losses(mz, inten, pmz):
        keep = [(float(m), float(v)) for m, v in zip(mz, inten) if m > 0 and v > 0]
        tot = sum(v for _, v in keep)
        x = [v / tot for _, v in keep] if tot > 0 else []
        x = entropy_weight(x) if weighted and x else x
        if not (math.isfinite(pmz) and pmz > 0):  # 0: a placeholder, as library search reads it
            return []
        return sorted((f32(f32(pmz) - f32(m)), w) for (m, _), w in zip(keep, x))

    la, lb = losses(mz_a, int_a, pmz_a), losses(mz_b, int_b, pmz_b)
    a = b = n = 0
    sim = 0.0
    while a < len(la) and b < len(lb):
        ya, yb = la[a][0], lb[b][0]
        if yb > f32(ya + t32):
            a += 1
        elif yb < f32(ya - t32):
            b += 1
        else:
            ia, ib = la[a][1], lb[b][1]
            sim += (ia + ib) * math.log2(ia + ib) - ia * math.log2(ia) - ib * math.log2(ib)
            n += 1
            a += 1
            b += 1
    return min(max(sim / 2.0, 0.0), 1.0), n


def score(metric, mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol, unit="da", mz_power=0.0, intensity_power=1.0,
          **params) -> tuple[float, int]:
    """Dispatch on a fastspec metric name (entropy metrics: already-cleaned peaks)."""
    if metric == "cosine":
        return cosine(mz_a, int_a, mz_b, int_b, tol, unit, mz_power, intensity_power)
    if metric == "modified_cosine":
        return modified_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol, unit, mz_power, intensity_power)
    if metric == "neutral_loss_cosine":
        return neutral_loss_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, tol, unit, mz_power, intensity_power,
                                   **params)
    if metric == "binned_cosine":
        params.setdefault("bin_width", tol)
        return binned_cosine(mz_a, int_a, pmz_a, mz_b, int_b, pmz_b, mz_power=mz_power,
                             intensity_power=intensity_power, **params)
    if metric in ("entropy", "unweighted_entropy"):
        return entropy_similarity(mz_a, int_a, mz_b, int_b, tol, unit, weighted=metric == "entropy",
                                  flash=bool(params.get("flash", False)))
    raise ValueError(metric)


def topk(scores, matches, k, min_matches=0, min_score=-math.inf) -> tuple[list, list, list]:
    """Best ``k`` entries of one row: score descending, ties to the lowest index; -1 / 0 padding.

    Entries with fewer than ``min_matches`` matches or a score below ``min_score`` are left out.
    """
    keep = [j for j in range(len(scores)) if matches[j] >= min_matches and scores[j] >= min_score]
    keep.sort(key=lambda j: (-scores[j], j))
    keep = keep[:k]
    pad = k - len(keep)
    return ([float(scores[j]) for j in keep] + [0.0] * pad, keep + [-1] * pad,
            [int(matches[j]) for j in keep] + [0] * pad)
