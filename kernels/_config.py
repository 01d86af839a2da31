"""One place for numba settings shared by every kernel.

* ``NJIT``: keyword arguments for serial kernels; ``PJIT`` for kernels whose *outer* loop is ``prange``.
* The threading layer is pinned to ``workqueue``: numba's own pthread pool, which cannot clash with the
  OpenMP runtime that faiss-cpu bundles (numba's ``omp`` layer would load a second libgomp). workqueue
  is not re-entrant, so public wrappers run parallel kernels under :data:`PARALLEL_LOCK`.
* ``fastmath`` stays off: scores must agree with matchms/ms_entropy to 1e-6 and reassociated sums
  would change tie-breaking on equal products.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

FASTMATH = False
NJIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
PJIT = dict(NJIT, parallel=True)

#: Serialises parallel kernel calls (workqueue aborts on concurrent parallel regions).
PARALLEL_LOCK = threading.RLock()


def max_threads() -> int:
    """Threads numba may use: ``NUMBA_NUM_THREADS`` or the CPU count."""
    return int(numba.config.NUMBA_NUM_THREADS)


@contextmanager
def threads(n: int | None):
    """Run the enclosed parallel kernels with ``n`` threads (``None``: all of NUMBA_NUM_THREADS)."""
    n_max = max_threads()
    n = n_max if n is None else max(1, min(int(n), n_max))
    with PARALLEL_LOCK:
        old = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            yield n
        finally:
            numba.set_num_threads(old)
