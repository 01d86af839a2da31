"""Compiling the bound kernel (and the dense scan) in a second process while a command does other work.

On an empty numba cache the bound kernel of open, analog and hybrid search
(:func:`fastspec.kernels.fragment.compile_search_bounds`) takes about 40 s to compile, one core, while
the other idles. ``fastspec demo`` and ``fastspec query`` start that compilation in a second
interpreter when it can help (2+ usable cores and threads, the kernel not in the cache yet) and go on
reading, indexing and compiling the other kernels; the first call of the kernel waits for the second
process (:func:`fastspec.kernels._config.await_compiled`) and numba then loads it from the cache.
A second process that fails, cannot start or takes too long only costs time: this one then compiles
the kernel itself. numba writes each cache file under a temporary name and renames it, so neither
process reads one half written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

#: Seconds after its start that the second process may take before it is stopped and the kernel is
#: compiled here (it takes 37-42 s on this project's 2-core VMs).
AHEAD_TIMEOUT = 300.0
#: The second process: imports fastspec from the parent's ``sys.path`` and refuses to compile another
#: copy of the kernels than the parent's (whose cache the parent would not read).
_AHEAD_CODE = """import json, sys
paths, expected = json.loads(sys.argv[1])
sys.path[:] = paths
from fastspec.kernels import fragment
if fragment.__file__ != expected:
    sys.exit("fastspec.kernels.fragment is %s here, %s in the parent" % (fragment.__file__, expected))
fragment.compile_search_bounds()
from fastspec.kernels import dense
dense.compile_dense_bounds()
"""
#: The names the kernels are registered under (:func:`fastspec.kernels._config.compiling_elsewhere`):
#: the bound kernel, then the dense scan (a few seconds more), both compiled by the second process.
KERNELS = ("search_bounds", "dense_bounds")


def parallel_ok(threads: int | None) -> bool:
    """Whether a second process can compile alongside this one: 2+ usable cores and 2+ threads."""
    from fastspec.kernels._config import max_threads

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(usable, max_threads()) if threads is None else threads
    return usable >= 2 and n >= 2


def uses_bound_kernel(mode: str, metric: str | None, engine: str = "exact", no_neighbour: str = "skip") -> bool:
    """Whether a search may run the bound kernel: exact open, analog and hybrid search with the metrics it
    bounds, and formula search whose queries without a same-formula neighbour fall back to open search.
    (Neutral-loss search runs only the dense scan, which compiles here in a few seconds: waiting for the
    second process to compile the bound kernel first would cost it ~40 s.)"""
    from fastspec.search import _BOUNDED, _DEFAULT_METRIC

    whole = mode in ("open", "analog", "hybrid") or (mode == "formula" and no_neighbour == "fallback")
    return engine == "exact" and whole and (metric or _DEFAULT_METRIC[mode]) in _BOUNDED


def start(log: Callable[[str], None], threads: int | None, *, force: bool = False,
          on_wait: Callable[[float], None] | None = None) -> "CompileAhead | None":
    """Start compiling the bound kernel in a second process when that can help, and register the wait
    for it before the kernel's first call in this process.

    Parameters
    ----------
    log : callable
        One-line messages (waiting, failures).
    threads : int, optional
        The command's thread count (None: all).
    force : bool
        Start it even with one core or thread, or when the kernel is cached already.
    on_wait : callable, optional
        Told the seconds waited when the kernel's first call waits for the process.

    Returns
    -------
    CompileAhead or None
        The process (call :meth:`CompileAhead.stop` when done), or None when not started.
    """
    from fastspec.kernels._config import compiling_elsewhere
    from fastspec.kernels.fragment import search_bounds_cached

    if not force and (not parallel_ok(threads) or search_bounds_cached() is not False):
        return None
    ahead = CompileAhead.start(log)
    if ahead is not None:
        def wait() -> None:
            dt = ahead.wait(log)
            if on_wait is not None:
                on_wait(dt)

        for name in KERNELS:
            compiling_elsewhere(name, wait)
    return ahead


class CompileAhead:
    """The second process (see the module docstring); made by :meth:`start`."""

    def __init__(self, proc: subprocess.Popen, err):
        self._proc = proc
        self._err = err
        self.exit: int | None = None
        self.waited = 0.0
        self._deadline = time.perf_counter() + AHEAD_TIMEOUT

    @classmethod
    def start(cls, log) -> "CompileAhead | None":
        """Start the process; None (one line logged) when it cannot be started."""
        from fastspec.cli._common import ACTIVE_CHILDREN
        from fastspec.kernels import fragment

        err = None
        try:
            err = tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, "-c", _AHEAD_CODE, json.dumps([sys.path, fragment.__file__])],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        except OSError as e:
            if err is not None:
                err.close()
            log(f"compiling ahead not started ({e}); compiling here")
            return None
        ACTIVE_CHILDREN.add(proc)
        return cls(proc, err)

    def wait(self, log) -> float:
        """Wait for the process (until :data:`AHEAD_TIMEOUT` s after its start); return the seconds waited."""
        if self.exit is not None:
            return 0.0
        t0 = time.perf_counter()
        if self._proc.poll() is None:
            log("waiting for the second process compiling the bound kernel")
        try:
            self.exit = self._proc.wait(timeout=max(self._deadline - time.perf_counter(), 0.0))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.exit = self._proc.wait()
        dt = time.perf_counter() - t0
        self.waited += dt
        if self.exit != 0:
            self._err.seek(0)
            tail = self._err.read().decode("utf-8", "replace").strip().splitlines()[-1:]
            log(f"compiling ahead failed (exit {self.exit}{': ' + tail[0] if tail else ''}); compiling here")
        return dt

    def summary(self) -> dict:
        return {"exit": self.exit, "wait_s": self.waited}

    def stop(self) -> None:
        """Stop the process if it still runs, and forget it (the kernel's next call compiles or loads it)."""
        from fastspec.cli._common import ACTIVE_CHILDREN
        from fastspec.kernels._config import compiling_elsewhere

        for name in KERNELS:
            compiling_elsewhere(name, None)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        ACTIVE_CHILDREN.discard(self._proc)
        self._err.close()
