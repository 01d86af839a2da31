"""The ``threads`` contract and what interrupts and forks leave behind (from an audit of threads and
concurrency): ``threads=1`` launches no parallel kernel anywhere (one query none that splits queries),
every public entry point validates its thread count alike, an append interrupted after its swap leaves a
usable object, and a child forked while another thread of the parent held numba's compiler lock can still
load kernels."""
from __future__ import annotations

import collections
import threading

import numpy as np
import pytest

from fastspec import preprocess, synth
from fastspec.errors import ParameterError
from fastspec.kernels import _config
from fastspec.library import Library


@pytest.fixture(scope="module")
def many():
    # above SERIAL_BELOW: parallel builds would be eligible
    return synth.generate(_config.SERIAL_BELOW + 500, seed=5)


def _count_launches(monkeypatch) -> collections.Counter:
    """Kernel name -> parallel builds picked from now on."""
    launched = collections.Counter()
    real = _config.Kernel.pick

    def pick(self, size, threads=None, parts=None):
        k = real(self, size, threads, parts)
        if k is self.parallel:
            launched[self.__name__] += 1
        return k

    monkeypatch.setattr(_config.Kernel, "pick", pick)
    return launched


def test_one_thread_launches_no_parallel_kernel(many, tmp_path, monkeypatch):
    """Preprocessing (ms_entropy's cleaning) and the queries' preparation ran their parallel builds on
    every core under ``threads=1`` (build, append, search, a pipeline): N one-thread workers ran N x cores
    threads and queued on one lock."""
    launched = _count_launches(monkeypatch)
    lib = Library.build(many, tmp_path / "t1.fastspec", threads=1, faiss=False)
    lib.append(many[:_config.SERIAL_BELOW + 10], threads=1)
    for mode in ("identity", "open", "analog", "hybrid", "neutral_loss"):
        lib.search(many, k=3, mode=mode, threads=1)
    preprocess.default_pipeline()(many, threads=1)
    assert not launched, dict(launched)
    lib.search(many, k=3, mode="open", threads=2)  # (the check itself sees parallel launches)
    assert launched or _config.max_threads() == 1


def test_one_query_launches_no_parallel_kernel(many, tmp_path, monkeypatch):
    """A search of one query on every core: its kernels split their outer loop by query, so a parallel
    launch (0.1-0.2 ms) has one block to share out; the serial builds run, whatever the candidates."""
    lib = Library.build(many, tmp_path / "one.fastspec", faiss=False)
    launched = _count_launches(monkeypatch)
    monkeypatch.setattr(_config, "SERIAL_BELOW", 2)  # any two candidates "many" (one spectrum stays one)
    by_query = ("topk_kernel", "_window_bounds_py")  # (the others split spectra or peaks: parallel where many)
    for mode in ("identity", "open", "analog", "hybrid", "neutral_loss"):
        lib.search(many[3], k=3, mode=mode, threads=2, precursor_tolerance="50ppm" if mode == "identity" else None)
    assert not [n for n in launched if n in by_query], dict(launched)
    lib.search(many[:40], k=3, mode="identity", threads=2)  # (the check itself sees parallel launches)
    assert [n for n in launched if n in by_query] or _config.max_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "2", np.bool_(True)])
def test_thread_counts_validated_alike(many, tmp_path, bad):
    lib = Library.build(many[:50], tmp_path / "v.fastspec", faiss=False)
    calls = [lambda: lib.append(many[:5], threads=bad), lambda: lib.peaks(np.arange(3), threads=bad),
             lambda: preprocess.default_pipeline()(many[:5], threads=bad),
             lambda: preprocess.default_pipeline().run(many[:5], threads=bad),
             lambda: Library.build(many[:5], tmp_path / "w.fastspec", threads=bad, faiss=False)]
    for call in calls:
        with pytest.raises(ParameterError, match="threads must be an integer"):
            call()
    assert len(lib) == 50  # the refused append changed nothing


def test_append_interrupted_after_its_swap_leaves_a_usable_object(many, tmp_path, monkeypatch):
    """A Ctrl-C landing while append reopened the index it had just swapped in left the object on the old
    manifest: every later search or append then failed, blaming 'another process'."""
    lib = Library.build(many[:200], tmp_path / "a.fastspec", faiss=False)
    real_open = Library.open.__func__
    state = {"interrupts": 2}  # the reopen and its retry both interrupted: taken on at the next use

    def interrupted_open(cls, path, **kw):
        if state["interrupts"]:
            state["interrupts"] -= 1
            raise KeyboardInterrupt
        return real_open(cls, path, **kw)

    monkeypatch.setattr(Library, "open", classmethod(interrupted_open))
    with pytest.raises(KeyboardInterrupt):
        lib.append(many[200:260])
    monkeypatch.undo()
    assert len(lib) == len(Library.open(lib.path)) > 200  # (its count too, before any search)
    hits = lib.search(many[200:203], k=1, mode="open")  # the appended spectra are there: found as themselves
    assert hits.indices[:, 0].tolist() == [200, 201, 202] and 200 < len(lib) == len(Library.open(lib.path))
    n = len(lib)
    lib.append(many[260:270])
    assert n < len(lib) == len(Library.open(lib.path))


def test_append_interrupted_before_its_swap_changes_nothing(many, tmp_path, monkeypatch):
    lib = Library.build(many[:200], tmp_path / "b.fastspec", faiss=False)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Library, "_append", boom)
    with pytest.raises(KeyboardInterrupt):
        lib.append(many[200:260])
    monkeypatch.undo()
    assert len(lib) == 200 and lib.search(many[:2], k=1, mode="open").indices[:, 0].tolist() == [0, 1]


def _child_loads_kernel(out):
    from numba.core.compiler_lock import global_compiler_lock

    got = global_compiler_lock._lock.acquire(timeout=10)
    out.put(bool(got))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # forking is the test
def test_forked_child_gets_a_free_compiler_lock():
    """A parent thread loading or compiling a kernel at the fork left numba's compiler lock held in the
    child, whose first kernel load then hung for ever."""
    import multiprocessing as mp

    from numba.core.compiler_lock import global_compiler_lock

    held, release = threading.Event(), threading.Event()

    def hold():
        with global_compiler_lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child_loads_kernel, args=(out,))
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
            pytest.fail("the forked child hung")
        assert child.exitcode == 0 and out.get(timeout=10) is True
    finally:
        release.set()
        t.join()


def test_an_interrupt_numba_wrapped_in_systemerror_comes_out_as_keyboardinterrupt(many, tmp_path, monkeypatch):
    """A Ctrl-C landing while a compiled function hands back its result surfaces from numba as
    ``SystemError: CPUDispatcher(...) returned a result with an exception set``; the API's entry points
    raise the KeyboardInterrupt (an ``except KeyboardInterrupt`` missed 9 of 150 interrupted searches)."""
    import fastspec.search as fsearch
    from fastspec import similarity
    from fastspec.errors import interrupts

    def numba_style():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise SystemError("CPUDispatcher(<function k>) returned a result with an exception set") from e

    with pytest.raises(KeyboardInterrupt):
        with interrupts():
            numba_style()
    with pytest.raises(SystemError):  # any other SystemError stays what it is
        with interrupts():
            raise SystemError("something else")
    lib = Library.build(many[:50], tmp_path / "k.fastspec", faiss=False)
    monkeypatch.setattr(fsearch, "_search", lambda *a, **k: numba_style())
    with pytest.raises(KeyboardInterrupt):
        lib.search(many[:2], k=1)
    monkeypatch.setattr(similarity, "_pair_up", lambda *a, **k: numba_style())
    with pytest.raises(KeyboardInterrupt):
        similarity.score_pairs(many[:2], many[:2])


def test_library_and_hits_say_how_to_cross_processes(many, tmp_path):
    """multiprocessing serialises what crosses to a worker through ``__reduce_ex__`` (as ``copy`` does): a
    Library, and Hits holding one, refuse it with what to do instead (fastspec itself never pickles)."""
    import copy

    lib = Library.build(many[:20], tmp_path / "p.fastspec", faiss=False)
    hits = lib.search(many[:2], k=1)
    for obj in (lib, hits):
        with pytest.raises(TypeError, match="Library.open it there"):
            copy.deepcopy(obj)


def test_a_running_append_leaves_concurrent_loads_refusing_a_swapped_index(many, tmp_path, monkeypatch):
    """Marking the append pending for its whole run let a thread loading an array meanwhile take on the
    swapped-in index after reading the old file (wrong hits); only a failed append marks itself."""
    lib = Library.build(many[:200], tmp_path / "r.fastspec", faiss=False)
    seen = []
    real = Library._append

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the swap is done here
        seen.append(self._adopt_pending)
        with pytest.raises(Exception, match="open it again"):  # a load racing the append still refuses
            self._check_unchanged()

    monkeypatch.setattr(Library, "_append", spy)
    lib.append(many[200:230])
    assert seen == [None] and lib._adopt_pending is None and len(lib) == len(Library.open(lib.path))


def test_an_array_loaded_across_a_change_of_index_is_not_kept(many, tmp_path, monkeypatch):
    """A load that began before this object took on another index (its own append, from another thread)
    stored the old index's array in the fresh cache for good: it is loaded again instead."""
    from fastspec import _indexfmt as fmt

    lib = Library.build(many[:50], tmp_path / "g.fastspec", faiss=False)
    loads = []
    real = fmt.load_array

    def load(path, name, entry):
        loads.append(name)
        if len(loads) == 1:
            lib._release()  # what taking on an append does, meanwhile
        return real(path, name, entry)

    monkeypatch.setattr(fmt, "load_array", load)
    lib.array("prec_order")
    assert loads == ["prec_order", "prec_order"] and "prec_order" in lib._arrays


def test_a_failed_append_does_not_adopt_a_later_swap_by_another_process(many, tmp_path, monkeypatch):
    lib = Library.build(many[:200], tmp_path / "f.fastspec", faiss=False)
    lib.search(many[:1], k=1)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # before the swap

    monkeypatch.setattr(Library, "_append", boom)
    with pytest.raises(KeyboardInterrupt):
        lib.append(many[200:210])
    monkeypatch.undo()
    assert lib._adopt_pending is None
    Library.open(lib.path).append(many[200:230])  # another object (another process, say)
    with pytest.raises(Exception, match="open it again"):
        lib.metadata()
