"""Tanimoto similarity of packed binary fingerprints (uint64 words, popcount in numba).

A fingerprint of ``n_bits`` bits is stored as ``ceil(n_bits / 64)`` little-endian uint64 words
(bit ``b`` is bit ``b % 64`` of word ``b // 64``); see :func:`pack_bits`.
Tanimoto is ``|a & b| / |a | b|`` and, as in RDKit, 0.0 when both fingerprints are empty.
"""
from __future__ import annotations

import numba
import numpy as np

from fastspec.errors import ParameterError
from fastspec.kernels._config import NJIT, pjit
from fastspec.kernels._config import threads as _threads

# SWAR popcount constants; kept as uint64 so numba never promotes the arithmetic to float64
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


# ---------------------------------------------------------------------- numba kernels
@numba.njit(**NJIT)
def _popcount(x):
    x = x - ((x >> _S1) & _M1)
    x = (x & _M2) + ((x >> _S2) & _M2)
    x = (x + (x >> _S4)) & _M4
    return (x * _H01) >> _S56


@numba.njit(**NJIT)
def _row_counts(fp):
    n, w = fp.shape
    out = np.zeros(n, dtype=np.int32)
    for i in range(n):
        c = 0
        for j in range(w):
            c += _popcount(fp[i, j])
        out[i] = c
    return out


@numba.njit(**NJIT)
def _tani(a, ca, b, cb):
    """Tanimoto of two packed rows given their popcounts."""
    inter = 0
    for j in range(a.shape[0]):
        inter += _popcount(a[j] & b[j])
    union = ca + cb - inter
    if union == 0:
        return 0.0
    return inter / union


@pjit
def _pairs(fa, ca, ia, fb, cb, ib):
    m = ia.shape[0]
    out = np.empty(m, dtype=np.float64)
    for r in numba.prange(m):
        i = ia[r]
        j = ib[r]
        out[r] = _tani(fa[i], ca[i], fb[j], cb[j])
    return out


@pjit
def _matrix(fa, ca, fb, cb):
    na = fa.shape[0]
    nb = fb.shape[0]
    out = np.empty((na, nb), dtype=np.float64)
    for i in numba.prange(na):
        for j in range(nb):
            out[i, j] = _tani(fa[i], ca[i], fb[j], cb[j])
    return out


@pjit
def _max_csr(fa, ca, ia, offsets, cand, fb, cb):
    n = ia.shape[0]
    best = np.full(n, -1.0)
    arg = np.full(n, -1, dtype=np.int64)
    for r in numba.prange(n):
        i = ia[r]
        for p in range(offsets[r], offsets[r + 1]):
            j = cand[p]
            t = _tani(fa[i], ca[i], fb[j], cb[j])
            if t > best[r]:
                best[r] = t
                arg[r] = j
    return best, arg


# ---------------------------------------------------------------------- public API
def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a 0/1 matrix into uint64 words.

    Parameters
    ----------
    bits : ndarray, shape (n, n_bits), any integer or bool dtype
        Non-zero means the bit is set.

    Returns
    -------
    ndarray, uint64, shape (n, ceil(n_bits / 64)), C-contiguous
    """
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ParameterError(f"pack_bits expects a 2-D array, got shape {bits.shape}")
    n, nb = bits.shape
    words = (nb + 63) // 64
    padded = np.zeros((n, words * 64), dtype=np.uint8)
    padded[:, :nb] = bits != 0
    packed = np.packbits(padded, axis=1, bitorder="little")  # (n, words*8) uint8, LSB first
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).reshape(n, words)


def unpack_bits(packed: np.ndarray, n_bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 0/1 matrix of shape (n, n_bits)."""
    packed = _as_packed(packed, "packed")
    n, words = packed.shape
    out = np.unpackbits(packed.astype("<u8").view(np.uint8).reshape(n, words * 8), axis=1, bitorder="little")
    return out[:, : (words * 64 if n_bits is None else n_bits)]


def popcounts(fp: np.ndarray) -> np.ndarray:
    """Set bits per fingerprint, int32 (n,)."""
    return _row_counts(_as_packed(fp, "fp"))


def tanimoto_pairs(
    fa: np.ndarray, ia: np.ndarray, fb: np.ndarray | None = None, ib: np.ndarray | None = None, *, threads: int | None = None
) -> np.ndarray:
    """Tanimoto of row pairs ``(fa[ia[r]], fb[ib[r]])``.

    Parameters
    ----------
    fa, fb : ndarray, uint64, shape (na, w) and (nb, w)
        Packed fingerprints (``fb`` defaults to ``fa``).
    ia, ib : ndarray of int, shape (m,)
        Row indices into ``fa`` and ``fb``.

    Returns
    -------
    ndarray, float64, shape (m,)
    """
    fa = _as_packed(fa, "fa")
    fb = fa if fb is None else _as_packed(fb, "fb")
    _same_width(fa, fb)
    ia = _as_index(ia, fa.shape[0], "ia")
    ib = _as_index(ib, fb.shape[0], "ib")
    if ia.shape != ib.shape:
        raise ParameterError("ia and ib must have the same length")
    with _threads(threads):
        return _pairs.pick(ia.shape[0], threads)(fa, _row_counts(fa), ia, fb, _row_counts(fb), ib)


def tanimoto_matrix(fa: np.ndarray, fb: np.ndarray | None = None, *, threads: int | None = None) -> np.ndarray:
    """All-pairs Tanimoto, float64 (na, nb). One-vs-many: pass ``fa`` with a single row."""
    fa = _as_packed(fa, "fa")
    fb = fa if fb is None else _as_packed(fb, "fb")
    _same_width(fa, fb)
    with _threads(threads):
        return _matrix.pick(fa.shape[0] * fb.shape[0], threads)(fa, _row_counts(fa), fb, _row_counts(fb))


def tanimoto_one_vs_many(q: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Tanimoto of one packed fingerprint (w,) against every row of ``fb`` (n, w); float64 (n,)."""
    q = np.asarray(q)
    return tanimoto_matrix(q.reshape(1, -1), fb)[0]


def max_tanimoto_csr(
    fa: np.ndarray, ia: np.ndarray, offsets: np.ndarray, cand: np.ndarray, fb: np.ndarray, *, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best Tanimoto of ``fa[ia[r]]`` over the candidate rows ``fb[cand[offsets[r]:offsets[r+1]]]``.

    Returns
    -------
    best : ndarray, float64 (m,)
        Maximum Tanimoto; -1.0 when a row has no candidate.
    arg : ndarray, int64 (m,)
        Row of ``fb`` that attains it (first on ties), -1 when none.
    """
    fa = _as_packed(fa, "fa")
    fb = _as_packed(fb, "fb")
    _same_width(fa, fb)
    ia = _as_index(ia, fa.shape[0], "ia")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.shape != (ia.shape[0] + 1,):
        raise ParameterError("offsets must have len(ia) + 1 entries")
    cand = _as_index(cand, fb.shape[0], "cand")
    if offsets[0] != 0 or offsets[-1] != cand.shape[0]:
        raise ParameterError("offsets must start at 0 and end at len(cand)")
    with _threads(threads):
        return _max_csr.pick(cand.shape[0], threads)(fa, _row_counts(fa), ia, offsets, cand, fb, _row_counts(fb))


# ---------------------------------------------------------------------- validation helpers
def _as_packed(fp, name: str) -> np.ndarray:
    fp = np.asarray(fp)
    if fp.ndim != 2 or fp.dtype != np.uint64:
        raise ParameterError(f"{name} must be a 2-D uint64 array of packed fingerprints, got {fp.dtype} {fp.shape}")
    return np.ascontiguousarray(fp)


def _same_width(fa: np.ndarray, fb: np.ndarray) -> None:
    if fa.shape[1] != fb.shape[1]:
        raise ParameterError(f"fingerprint widths differ: {fa.shape[1]} vs {fb.shape[1]} words")


def _as_index(idx, n: int, name: str) -> np.ndarray:
    idx = np.ascontiguousarray(idx, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ParameterError(f"{name}: row index out of range for {n} fingerprints")
    return idx
