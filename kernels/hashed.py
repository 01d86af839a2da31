"""Kernels of the hashed spectrum vectors behind ``engine="faiss"`` (:mod:`fastspec.vectors` validates,
converts and calls them): the vectors themselves and the assignment of vectors to inverted lists."""
from __future__ import annotations

import numba
import numpy as np

from fastspec.kernels._config import pjit


@pjit
def _vectors(offsets, mz, intensity, dim, bin_width, offset, power, out):
    n = offsets.shape[0] - 1
    base = offsets[0]  # offsets may be a slice of a larger CSR set (a chunk of rows, peaks not copied)
    for i in numba.prange(n):
        for d in range(dim):  # zeroed here, in parallel: ``out`` is a reused, uninitialised buffer
            out[i, d] = 0.0
        for p in range(offsets[i] - base, offsets[i + 1] - base):
            b = np.int64(np.floor((mz[p] + offset) / bin_width))
            h = (np.uint64(b) * np.uint64(11400714819323198485)) >> np.uint64(40)
            slot = np.int64(h % np.uint64(dim))
            x = np.float64(intensity[p])
            if x > 0:
                out[i, slot] += x ** power
        s = 0.0
        for d in range(dim):
            s += np.float64(out[i, d]) * out[i, d]
        if s > 0:
            inv = 1.0 / np.sqrt(s)
            for d in range(dim):
                out[i, d] = out[i, d] * inv


#: rows per block of :func:`_nearest_lists` (each block has its own accumulator row)
_ASSIGN_BLOCK = 256


@pjit
def _nearest_lists(x, centroids_t, out):
    # inner products with every centroid from each row's nonzero slots only: a spectrum fills ~20 of 256
    # slots, so this does a tenth of the dense product's work. FAISS's own assignment (a dense product
    # with every centroid) took 39 of a 2.4M build's 87 s; MassBank x 4 (258k vectors, 1,549 lists),
    # 2 threads: FAISS 4.30 s, this 0.93 s, the same lists
    n, dim = x.shape
    nlist = centroids_t.shape[1]
    for blk in numba.prange((n + _ASSIGN_BLOCK - 1) // _ASSIGN_BLOCK):
        acc = np.empty(nlist, dtype=np.float32)
        for i in range(blk * _ASSIGN_BLOCK, min(n, (blk + 1) * _ASSIGN_BLOCK)):
            acc[:] = 0.0
            finite = True
            for d in range(dim):
                v = x[i, d]
                if v != 0.0:
                    finite = finite and np.isfinite(v)
                    row = centroids_t[d]
                    for c in range(nlist):
                        acc[c] += v * row[c]
            best = 0
            for c in range(1, nlist):
                if acc[c] > acc[best]:
                    best = c
            out[i] = best if finite else -1  # as FAISS: a vector of NaN/inf goes into no list
