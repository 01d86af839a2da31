"""Memory for the kernels: zeroed scratch arrays on transparent huge pages, and freed arrays kept.

Huge pages (:func:`huge_zeros`): the bound kernels update per-spectrum rows picked by index entries
(``BoundWorkspace.work``: 8 bytes per library spectrum, 19 MB at 2.4M). With 4 kB pages nearly every such
update also misses the TLB (its second level covers a few MB); 2 MB pages cover the whole array with a
handful of entries. Linux grants them to private anonymous memory marked ``MADV_HUGEPAGE`` (the usual
``madvise`` THP setting); elsewhere, or when the kernel declines, the array is simply made of normal
pages. The OS still zero-fills lazily, now 2 MB at a time. Freed arrays kept: :func:`retain_freed_memory`.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys

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


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: arrays up to this size come from the heap (glibc's largest allowed value on 64-bit), and up to
#: ``_TRIM`` of free memory at the heap's top stays with the process
_MMAP, _TRIM = 32 << 20, 256 << 20
_retained: bool | None = None


def retain_freed_memory() -> bool:
    """Let freed arrays of up to 32 MB be reused by the next ones instead of going back to the OS (glibc).

    A search allocates its per-batch arrays afresh (window candidates, bounds, scores: ~30 MB for 1,000
    identity queries at 2.4M). glibc serves allocations above its mmap threshold (128 kB at start) from
    fresh mappings, which the OS hands out page by page, zero-filled, on first touch: on this project's
    VMs that first touch cost ~15% of an identity search (2.4M, 1,000 queries: 0.050-0.052 against
    0.040-0.043 ms per query with the thresholds below). glibc raises the threshold by itself after the
    first large free, so the cost came and went with a process's allocation history; fixing it makes
    searches as fast in every process. Process-wide and set once (the first search calls it); not on
    other C libraries or platforms, not when ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are
    set, and not with ``FASTSPEC_MALLOC=default``. Returns whether the thresholds are set.
    """
    global _retained
    if _retained is not None:
        return _retained
    _retained = False
    if (not sys.platform.startswith("linux") or os.environ.get("FASTSPEC_MALLOC", "").strip().lower() == "default"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # trim first: a heap that keeps 32 MB arrays must not hand its top back after every free
        _retained = bool(mallopt(_M_TRIM_THRESHOLD, _TRIM)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt symbol to speak of)
        _retained = False
    return _retained
