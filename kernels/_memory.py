"""Zeroed scratch arrays backed by transparent huge pages, for the kernels' scattered per-spectrum rows.

The bound kernels update per-spectrum rows picked by index entries (``BoundWorkspace.work``: 8 bytes
per library spectrum, 19 MB at 2.4M). With 4 kB pages nearly every such update also misses the TLB
(its second level covers a few MB); 2 MB pages cover the whole array with a handful of entries. Linux
grants them to private anonymous memory marked ``MADV_HUGEPAGE`` (the usual ``madvise`` THP setting);
elsewhere, or when the kernel declines, the array is simply made of normal pages. The OS still zero-fills
lazily, now 2 MB at a time.
"""
from __future__ import annotations

import mmap

import numpy as np

#: Page size asked for, and the least array size worth it (smaller ones are plain numpy arrays).
_HUGE = 2 << 20


def huge_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous zeroed array of ``shape`` and ``dtype``, on 2 MB-aligned huge pages when it is at
    least 2 MB and the platform has ``MADV_HUGEPAGE``, else ``np.zeros``. The array keeps its mapping
    alive (its ``base`` chain ends in the ``mmap``) and is writable."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if nbytes < _HUGE or not hasattr(mmap, "MADV_HUGEPAGE") or not flags:
        return np.zeros(shape, dtype)
    # private: a shared anonymous mapping is shmem, which the THP "madvise" setting leaves on 4 kB pages
    m = mmap.mmap(-1, nbytes + _HUGE, flags=flags)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # pragma: no cover - THP not built in: normal pages
        pass
    raw = np.frombuffer(m, dtype=np.uint8)
    start = (-raw.ctypes.data) % _HUGE  # huge pages back whole aligned 2 MB ranges only
    return raw[start:start + nbytes].view(dtype).reshape(shape)
