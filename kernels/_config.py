"""One place for numba settings shared by every kernel.

* ``NJIT``: keyword arguments for serial kernels; ``PJIT`` for kernels whose *outer* loop is ``prange``.
  Kernels called from Python with a ``prange`` outer loop are declared with :func:`pjit`, which builds
  them twice: a parallel launch costs 0.1-0.2 ms (measured with workqueue on 2 cores), a serial call
  about a microsecond, so a search for one query would otherwise spend more on launches than on work.
* The threading layer is pinned to ``workqueue``: numba's own pthread pool, which cannot clash with the
  OpenMP runtime that faiss-cpu bundles (numba's ``omp`` layer would load a second libgomp). workqueue
  is not re-entrant, so public wrappers run parallel kernels under :data:`PARALLEL_LOCK`.
* ``fastmath`` stays off: scores must agree with matchms/ms_entropy to 1e-6 and reassociated sums
  would change tie-breaking on equal products.
* Stale-cache guard. numba's ``cache=True`` re-validates a cached kernel against its *own* source file
  only, so ``topk.dense_kernel`` keeps loading machine code built from an old ``matching.score_row``
  after ``matching.py`` alone changed (in a checkout, and after an in-place ``pip install -U``, which
  leaves ``*.nbi``/``*.nbc`` files behind). When this module is imported -- every kernel module
  imports it before decorating anything -- :func:`guard_kernel_cache` hashes all ``kernels/*.py``
  (plus the numba and Python versions) and, in each cache directory numba may use for them, deletes
  this interpreter's cache files of our modules when the hash differs from the one stamped there
  (``fastspec-kernels.<pytag>.stamp``). It costs well under a millisecond, compiles nothing, and any
  error (read-only tree, a concurrent import, changed numba internals) only skips it.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import types
from contextlib import contextmanager

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


def _layer_already_started() -> str | None:
    """The threading layer numba already launched before this module could pin workqueue (the host touched
    ``numba.get_num_threads()`` or ran a parallel kernel first), if it is not workqueue; else None."""
    try:
        from numba.np.ufunc import parallel

        if not getattr(parallel, "_is_initialized", False):
            return None
        layer = numba.threading_layer()
    except Exception:  # noqa: BLE001 - numba internals differ between versions: no check then
        return None
    return None if layer == "workqueue" else layer


if "NUMBA_THREADING_LAYER" not in os.environ and _layer_already_started() == "omp":
    import warnings

    # the layer is chosen once per process: omp's libgomp beside faiss's, and forked children that search
    # abort ("fork() called from a process already using GNU OpenMP") or hang a pool
    warnings.warn("numba's thread pool was started with the 'omp' layer before fastspec's kernels were loaded "
                  "(fastspec.kernels, which a search or a file read loads; a plain `import fastspec` does not), so "
                  "they share it with faiss's OpenMP and forked children that search may abort. `import "
                  "fastspec.kernels` before running other parallel numba code, or set NUMBA_THREADING_LAYER=workqueue.",
                  RuntimeWarning, stacklevel=2)

FASTMATH = False
NJIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
PJIT = dict(NJIT, parallel=True)

#: Serialises parallel kernel calls (workqueue aborts on concurrent parallel regions).
PARALLEL_LOCK = threading.RLock()


def _fresh_locks_in_child() -> None:
    """A child forked while another thread of the parent held a lock (a search running) would wait for it
    forever: the child gets fresh, free locks. numba's compiler lock too: a parent thread loading or
    compiling a kernel (a first call of a serial or parallel build) at the fork left it held in the child,
    whose first kernel load then hung (an audit: 1 fork in 8 while another thread searched)."""
    global PARALLEL_LOCK, _AWAIT_LOCK
    PARALLEL_LOCK = threading.RLock()
    _AWAIT_LOCK = threading.Lock()
    try:
        from numba.core.compiler_lock import global_compiler_lock

        if not global_compiler_lock.is_locked():  # (held by the forking thread itself: leave it)
            global_compiler_lock._lock = threading.RLock()
    except Exception:  # noqa: BLE001 - numba internals moved: no reset, as before
        pass


def check_threads(n, name: str = "threads") -> int | None:
    """``n`` as the public functions take a thread count: None (every core) or an integer >= 1 (more than
    :func:`max_threads` runs on all); anything else (0, -1, 2.5, True, "2") raises ParameterError."""
    if n is None:
        return None
    import numpy as np

    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        from fastspec.errors import ParameterError

        raise ParameterError(f"{name} must be an integer >= 1 (or None for all cores), got {n!r}")
    return int(n)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)


def max_threads() -> int:
    """Threads numba may use: ``NUMBA_NUM_THREADS`` or the CPU count."""
    return int(numba.config.NUMBA_NUM_THREADS)


@contextmanager
def threads(n: int | None):
    """Run the enclosed parallel kernels with ``n`` threads (``None``: all of NUMBA_NUM_THREADS).

    Callers pick kernels with the same ``n`` (:meth:`Kernel.pick`), so one thread means serial builds
    only: numba's count is then left alone and no lock taken. A one-query search enters this about 20
    times; skipping the set/restore made single-query identity calls 3% faster (2.4M library, 0.527 ->
    0.512 ms, interleaved).
    """
    n = capped(n)
    if n == 1:
        yield 1
        return
    with PARALLEL_LOCK, swapped(numba.get_num_threads, numba.set_num_threads, n):
        yield n


def capped(n: int | None) -> int:
    """A thread count: ``n`` within 1 .. :func:`max_threads` (``None``: all of them)."""
    n_max = max_threads()
    return n_max if n is None else max(1, min(int(n), n_max))


@contextmanager
def swapped(get, set_, value):
    """``set_(value)`` for the enclosed block and the old value put back afterwards, with no call when it
    is already ``value`` (a search enters this a dozen times; each set costs a few microseconds)."""
    old = get()
    if old != value:
        set_(value)
    try:
        yield value
    finally:
        if old != value:
            set_(old)


def n_blocks(n_rows: int) -> int:
    """Work blocks for a ``prange`` loop over ``n_rows`` rows: 16 per thread (rows differ a lot in cost),
    each with its own scratch, and never more than the rows. Up to 16 rows need no thread count (a
    one-query search asks a dozen times, and each ``numba.get_num_threads`` call checks the pool)."""
    if n_rows <= 16:
        return max(1, int(n_rows))
    return int(min(n_rows, numba.get_num_threads() * 16))


#: Kernels another process is compiling into numba's cache right now: name -> a callable that waits for
#: it (see :func:`await_compiled`; registered by ``fastspec.cli._ahead``).
_COMPILING_ELSEWHERE: dict = {}
_AWAIT_LOCK = threading.Lock()  # see await_compiled


def compiling_elsewhere(name: str, wait) -> None:
    """Register ``wait()``, which returns once another process has compiled kernel ``name`` into the cache
    (``None``: forget it)."""
    if wait is None:
        _COMPILING_ELSEWHERE.pop(name, None)
    else:
        _COMPILING_ELSEWHERE[name] = wait


def await_compiled(name: str) -> None:
    """Before the first call of kernel ``name``: if another process is compiling it, wait for that (then
    numba loads it from the cache instead of compiling it a second time here). One dict lookup otherwise;
    a thread calling while another waits waits too (under a lock), rather than compiling it alongside."""
    if name not in _COMPILING_ELSEWHERE:
        return
    with _AWAIT_LOCK:
        wait = _COMPILING_ELSEWHERE.get(name)
        if wait is not None:
            try:
                wait()
            finally:
                _COMPILING_ELSEWHERE.pop(name, None)


#: Work items (spectra; candidate pairs for the scoring kernels) below which :meth:`Kernel.pick` runs the
#: serial build.
SERIAL_BELOW = 2048


class Kernel:
    """A kernel whose outer loop is ``prange``, compiled (lazily, cached) both parallel and serial.

    Call ``kernel.pick(size, threads, parts)(*args)``: the serial build for fewer than
    :data:`SERIAL_BELOW` work items, one thread, or a ``prange`` of one iteration (``parts``: the blocks of
    rows a kernel splits its outer loop into, where it does), else the parallel one (run it under
    :func:`threads`). Both come from the same Python function, so they compute the same thing.
    """

    def __init__(self, py_func):
        self.py_func = py_func
        self.__doc__ = py_func.__doc__
        self.__name__ = py_func.__name__
        self.parallel = numba.njit(**PJIT)(py_func)
        self.serial = numba.njit(**NJIT)(_twin(py_func, "_serial"))

    def pick(self, size: int, threads: int | None = None, parts: int | None = None):
        # with one thread the serial build, always: :func:`threads` relies on it. A prange of one block (a
        # search of one query, whatever its candidates) has nothing to share out: a parallel launch
        # costs 0.1-0.2 ms there for nothing
        n = max_threads() if threads is None else min(int(threads), max_threads())
        return self.serial if size < SERIAL_BELOW or n <= 1 or (parts is not None and parts <= 1) else self.parallel


def pjit(py_func) -> Kernel:
    """Decorator: a :class:`Kernel` (parallel and serial builds) of ``py_func``."""
    return Kernel(py_func)


def _twin(py_func, suffix: str):
    """``py_func`` under another qualified name. numba files cached code under the qualified name and
    keys it by bytecode and signature, not by compile options: a serial and a parallel build of the very
    same function would load each other's machine code."""
    twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + suffix,
                              py_func.__defaults__, py_func.__closure__)
    twin.__qualname__ = py_func.__qualname__ + suffix
    twin.__module__ = py_func.__module__
    twin.__doc__ = py_func.__doc__
    return twin


# --------------------------------------------------------------------------- stale-cache guard

#: Folder holding the kernel sources (installed as ``fastspec/kernels``).
KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
#: numba's interpreter tag in cache file names ("py311"). Files of other interpreters sharing the tree
#: are left alone (each interpreter keeps its own stamp), so two Pythons never wipe each other's caches.
PY_TAG = "py%d%d%s" % (sys.version_info[0], sys.version_info[1], getattr(sys, "abiflags", ""))
STAMP_NAME = f"fastspec-kernels.{PY_TAG}.stamp"


def kernel_modules(kernel_dir: str = KERNEL_DIR) -> list[str]:
    """Sorted module names (file stems) of the ``*.py`` files in ``kernel_dir``."""
    return sorted(name[:-3] for name in os.listdir(kernel_dir) if name.endswith(".py"))


def kernel_fingerprint(kernel_dir: str = KERNEL_DIR, modules: list[str] | None = None) -> str:
    """Content hash of the kernel sources.

    Parameters
    ----------
    kernel_dir : str
        Folder of the kernel modules.
    modules : list of str, optional
        Module stems to hash (default: every ``*.py`` in ``kernel_dir``).

    Returns
    -------
    str
        40 hex digits of BLAKE2b over the numba version, ``sys.version`` and, per module in sorted
        order, its name, byte length and bytes.
    """
    if modules is None:
        modules = kernel_modules(kernel_dir)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"numba {numba.__version__}\0python {sys.version}\0".encode())
    for mod in sorted(modules):
        with open(os.path.join(kernel_dir, mod + ".py"), "rb") as f:
            data = f.read()
        # length-prefixed, so moving text from one file to the next still changes the digest
        h.update(b"%s\0%d\0" % (os.fsencode(mod), len(data)))
        h.update(data)
    return h.hexdigest()


def _is_own_cache_file(name: str, prefixes: tuple[str, ...]) -> bool:
    """``<module>.<qualname>-<line>.<PY_TAG>.nbi`` or ``....<PY_TAG>.<n>.nbc`` of one of our modules."""
    if not name.startswith(prefixes):
        return False
    if name.endswith(".nbi"):
        stem = name[:-4]
    elif name.endswith(".nbc"):
        stem, _, number = name[:-4].rpartition(".")
        if not number.isdigit():
            return False
    else:
        return False  # e.g. numba's in-flight "<file>.tmp.<uuid>" of another process
    return stem.endswith("." + PY_TAG)


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a private temp file and ``os.replace`` (readers never see half)."""
    tmp = "%s.tmp.%d.%s" % (path, os.getpid(), os.urandom(4).hex())
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def purge_stale_cache(cache_dir: str, fingerprint: str, modules: list[str] | None = None) -> int:
    """Delete our numba cache files in ``cache_dir`` unless its stamp equals ``fingerprint``.

    Parameters
    ----------
    cache_dir : str
        A numba cache directory (``kernels/__pycache__`` or a ``NUMBA_CACHE_DIR`` / user-wide subfolder).
    fingerprint : str
        Current :func:`kernel_fingerprint`.
    modules : list of str, optional
        Module stems whose ``*.nbi``/``*.nbc`` files are ours (default: :func:`kernel_modules`).
        Files of other modules, other interpreters and anything else in the folder are kept.

    Returns
    -------
    int
        Files removed. A missing or unlistable folder is a no-op (0, nothing created). The stamp is
        (re)written only when every stale file could be removed, so a failure is retried next import.
        Never raises ``OSError``; concurrent callers are safe (losing an unlink race is fine, the stamp
        is replaced atomically, and numba treats a vanished index or data file as "not cached").
    """
    stamp = os.path.join(cache_dir, STAMP_NAME)
    try:
        with open(stamp, "rb") as f:
            if f.read(256).strip() == fingerprint.encode():
                return 0
    except OSError:
        pass  # no (readable) stamp: treat the folder as stale
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return 0
    if modules is None:
        modules = kernel_modules()
    prefixes = tuple(m + "." for m in modules)
    own = [n for n in names if _is_own_cache_file(n, prefixes)]
    # index files first: a process loading concurrently then sees "not cached", not a dangling index
    own.sort(key=lambda n: not n.endswith(".nbi"))
    removed, complete = 0, True
    for name in own:
        try:
            os.unlink(os.path.join(cache_dir, name))
            removed += 1
        except FileNotFoundError:
            pass  # another process removed it first
        except OSError:
            complete = False
    if complete:
        _write_atomic(stamp, fingerprint)
    return removed


def _probe():
    """Stand-in for a kernel when asking numba where the kernels of a folder are cached."""


def cache_dirs(kernel_dir: str = KERNEL_DIR, modules: list[str] | None = None) -> list[str]:
    """Cache directories numba may use for the kernels in ``kernel_dir`` (deduplicated).

    ``<kernel_dir>/__pycache__`` is always listed (computed without numba). numba's current choice
    comes from ``numba.core.caching.FunctionCache`` on a probe function whose code claims to live in
    ``kernel_dir``, i.e. numba's own locator search: ``NUMBA_CACHE_DIR``, else a writable
    ``__pycache__``, else the user-wide cache, honouring ``NUMBA_CACHE_LOCATOR_CLASSES``. Like
    numba's decorator, that search creates the directory. The user-wide directory is added too (it
    holds caches from runs where ``__pycache__`` was read-only); :func:`purge_stale_cache` skips
    folders that do not exist. Failures of numba internals just shorten the list.
    """
    dirs = [os.path.join(kernel_dir, "__pycache__")]
    try:
        from numba.core import caching

        if modules is None:
            modules = kernel_modules(kernel_dir)
        anchor = os.path.join(kernel_dir, modules[0] + ".py")  # numba keys cache dirs by folder only
        probe = types.FunctionType(_probe.__code__.replace(co_filename=anchor), {})
    except Exception:
        return dirs
    try:
        dirs.append(caching.FunctionCache(probe).cache_path)
    except Exception:
        pass
    try:
        dirs.append(caching.UserWideCacheLocator(probe, anchor).get_cache_path())
    except Exception:
        pass
    out, seen = [], set()
    for d in dirs:
        key = os.path.normcase(os.path.abspath(d))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def guard_kernel_cache(kernel_dir: str = KERNEL_DIR) -> dict[str, int]:
    """Drop stale numba caches of the kernels in ``kernel_dir``; never raises.

    Returns
    -------
    dict
        ``{cache_dir: files removed}`` for every directory checked (empty if the guard could not run).
        With ``NUMBA_DEBUG_CACHE=1`` removals are printed like numba's own cache log.
    """
    done: dict[str, int] = {}
    try:
        modules = kernel_modules(kernel_dir)
        fingerprint = kernel_fingerprint(kernel_dir, modules)
        for d in cache_dirs(kernel_dir, modules):
            done[d] = n = purge_stale_cache(d, fingerprint, modules)
            if n and numba.config.DEBUG_CACHE:
                print(f"[cache] fastspec: removed {n} stale kernel cache files from {d!r}")
    except Exception:
        pass  # a cache optimisation must never make `import fastspec.kernels...` fail
    return done


_guard_result = guard_kernel_cache()
