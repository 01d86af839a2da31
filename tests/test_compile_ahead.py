"""Compiling the bound kernel in a second process (``fastspec.cli._ahead``), the compile registry of
``fastspec.kernels._config`` and the CLI's compile-time note (``fastspec.cli._common.compile_watch``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from fastspec import search_fragment
from fastspec.cli import _ahead, _common, main
from fastspec.kernels import _config
from fastspec.kernels import fragment as fk


def test_failure_only_costs_time(monkeypatch):
    """A second process that fails is reported in one line; the caller goes on (and compiles itself)."""
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: popen(
        [sys.executable, "-c", "import sys; sys.exit('no compiler today')"], **kw))
    logged = []
    ahead = _ahead.start(logged.append, None, force=True)
    assert ahead._proc in _common.ACTIVE_CHILDREN and set(_ahead.KERNELS) <= set(_config._COMPILING_ELSEWHERE)
    for name in _ahead.KERNELS:
        _config.await_compiled(name)  # what each kernel's first call does
        assert name not in _config._COMPILING_ELSEWHERE  # waited once, then forgotten
    ahead.stop()
    assert ahead._proc not in _common.ACTIVE_CHILDREN
    assert ahead.summary()["exit"] == 1
    assert logged[-1] == "compiling ahead failed (exit 1: no compiler today); compiling here"
    from fastspec.cli.demo_cmd import _ahead_line

    assert "failed (exit 1), compiled here" in _ahead_line(ahead.summary())[0]


def test_that_cannot_start_is_skipped(monkeypatch):
    def refuse(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(subprocess, "Popen", refuse)
    logged = []
    assert _ahead.start(logged.append, None, force=True) is None
    assert logged[-1].startswith("compiling ahead not started (") and logged[-1].endswith("compiling here")
    assert not set(_ahead.KERNELS) & set(_config._COMPILING_ELSEWHERE)


def test_stop_forgets_the_wait_and_kills_the_process(monkeypatch):
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], **kw))
    ahead = _ahead.start(lambda m: None, None, force=True)
    ahead.stop()
    assert ahead._proc.returncode is not None and not set(_ahead.KERNELS) & set(_config._COMPILING_ELSEWHERE)


def test_not_started_where_it_cannot_help(monkeypatch):
    monkeypatch.setattr(fk, "search_bounds_cached", lambda: True)
    assert _ahead.start(lambda m: None, None) is None  # cached already
    monkeypatch.setattr(fk, "search_bounds_cached", lambda: None)
    assert _ahead.start(lambda m: None, None) is None  # cannot tell
    monkeypatch.setattr(fk, "search_bounds_cached", lambda: False)
    assert _ahead.start(lambda m: None, 1) is None  # one thread
    assert not _ahead.parallel_ok(1)


def test_uses_bound_kernel():
    assert _ahead.uses_bound_kernel("open", None) and _ahead.uses_bound_kernel("open", "entropy")
    assert _ahead.uses_bound_kernel("analog", None) and _ahead.uses_bound_kernel("hybrid", None)
    assert not _ahead.uses_bound_kernel("analog", None, "faiss")
    assert not _ahead.uses_bound_kernel("open", "binned_cosine")
    assert not _ahead.uses_bound_kernel("identity", None) and not _ahead.uses_bound_kernel("formula", None)
    # neutral-loss search runs only the dense scan: it would wait for the bound kernel's compilation
    assert not _ahead.uses_bound_kernel("neutral_loss", None)
    # formula search falls back to open search for queries without a same-formula neighbour
    assert _ahead.uses_bound_kernel("formula", None, "exact", "fallback")
    assert not _ahead.uses_bound_kernel("formula", "binned_cosine", "exact", "fallback")


def test_a_waiting_thread_makes_the_others_wait(monkeypatch):
    """A second thread calling the kernel while the first waits for the other process waits as well
    (it would otherwise compile the kernel alongside); the wait runs once and is then forgotten."""
    import threading

    release, calls, done = threading.Event(), [], []
    _config.compiling_elsewhere("k", lambda: calls.append(1) or release.wait(10))
    try:
        ts = [threading.Thread(target=lambda: (_config.await_compiled("k"), done.append(1))) for _ in range(2)]
        for t in ts:
            t.start()
        time.sleep(0.2)
        assert calls == [1] and done == []  # one waits inside, the other at the lock
        release.set()
        for t in ts:
            t.join(10)
        assert calls == [1] and done == [1, 1] and "k" not in _config._COMPILING_ELSEWHERE
    finally:
        _config.compiling_elsewhere("k", None)


def test_query_starts_nothing_before_its_parameters_pass(massbank_mgf, tmp_path, monkeypatch):
    """A refused parameter (hybrid search takes a Da tolerance) stops the command before the second
    process starts; formula search with --no-neighbour fallback starts it."""
    lib = tmp_path / "lib.fastspec"
    assert CliRunner().invoke(main, ["index", str(massbank_mgf), "-o", str(lib), "--no-faiss", "--quiet"]).exit_code == 0
    started = []
    monkeypatch.setattr(_ahead, "start", lambda log, threads, **kw: started.append(1))
    args = ["query", str(massbank_mgf), "--library", str(lib), "-o", str(tmp_path / "h.tsv"), "--quiet"]
    res = CliRunner().invoke(main, args + ["--mode", "hybrid", "--tolerance", "10ppm"])
    assert res.exit_code != 0 and "Da tolerance" in res.output and started == []
    assert CliRunner().invoke(main, args + ["--mode", "formula"]).exit_code == 0 and started == []
    assert CliRunner().invoke(main, args + ["--mode", "formula", "--no-neighbour", "fallback"]).exit_code == 0
    assert started == [1]


def test_search_bounds_cached_after_compiling():
    fk.compile_search_bounds()  # compiled or loaded: numba's cache holds it now
    assert fk.search_bounds_cached() is True


def test_imports_the_parent_s_own_fastspec(tmp_path):
    """The second process searches the parent's sys.path (not a ``fastspec/`` in the working directory)
    and refuses to compile another copy of the kernels than the parent's."""
    fake = tmp_path / "fastspec"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the working directory copy')\n")
    r = subprocess.run([sys.executable, "-c", _ahead._AHEAD_CODE, json.dumps([sys.path, "/elsewhere/fragment.py"])],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"fastspec.kernels.fragment is {fk.__file__} here, /elsewhere/fragment.py in the parent" in r.stderr


def test_query_waits_for_the_second_process_and_finds_the_same_hits(massbank_mgf, tmp_path, monkeypatch):
    """``fastspec query --mode open`` with the kernel reported uncached: the second process runs for real,
    the search waits for it at the kernel's first call, the hits are those of a plain search, and
    nothing is left behind."""
    lib = tmp_path / "lib.fastspec"
    assert CliRunner().invoke(main, ["index", str(massbank_mgf), "-o", str(lib), "--no-faiss", "--quiet"]).exit_code == 0
    plain = tmp_path / "plain.parquet"
    args = ["query", str(massbank_mgf), "--library", str(lib), "--mode", "open", "--threads", "2"]
    assert CliRunner().invoke(main, args + ["-o", str(plain), "--quiet"]).exit_code == 0
    started, waited = [], []
    real_start, real_wait = _ahead.CompileAhead.start, _ahead.CompileAhead.wait
    monkeypatch.setattr(fk, "search_bounds_cached", lambda: False)
    # weak thresholds (fewer than k spectra in most precursor windows here) would take the dense scan,
    # which never calls the bound kernel
    monkeypatch.setattr(search_fragment, "_DENSE_BELOW", dict.fromkeys(search_fragment._DENSE_BELOW, -np.inf))
    monkeypatch.setattr(_ahead.CompileAhead, "start", classmethod(
        lambda cls, log: started.append(1) or real_start.__func__(cls, log)))
    monkeypatch.setattr(_ahead.CompileAhead, "wait", lambda self, log: waited.append(1) or real_wait(self, log))
    ahead_out = tmp_path / "ahead.parquet"
    res = CliRunner().invoke(main, args + ["-o", str(ahead_out)])
    assert res.exit_code == 0, res.output
    # started once, and the kernel's first call waited for it (before loading the kernel itself)
    assert started == [1] and waited == [1] and "compiling ahead failed" not in res.output
    assert pq.read_table(ahead_out).equals(pq.read_table(plain))
    assert not _common.ACTIVE_CHILDREN and not _config._COMPILING_ELSEWHERE


def test_compile_watch_counts_compilation_and_says_so_once():
    import numba

    @numba.njit(cache=False)
    def fresh(x):
        return x * 2 + 1

    logged = []
    with _common.compile_watch(logged.append) as w:
        fresh(3)
        fresh(4)  # compiled already: no event
        fresh(2.5)  # a second signature: compiles again, no second note
    assert w.started and w.seconds > 0
    assert logged == ["compiling numba kernels on first use (later runs load them from the cache) ..."]
    w.add(2.0)
    assert w.note() == f"; {w.seconds:.1f} s of it compiling numba kernels on first use"
    quiet = _common.CompileWatch(logged.append)
    assert quiet.note() == "" and not quiet.started


def test_interrupted_command_kills_its_helper_processes():
    """SIGTERM / Ctrl-C leave through ``_abandon`` (os._exit): the helpers registered in ACTIVE_CHILDREN go too."""
    code = ("import subprocess, sys\n"
            "from fastspec.cli import _common\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "_common.ACTIVE_CHILDREN.add(p)\n"
            "print(p.pid, flush=True)\n"
            "_common._abandon(143)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 143 and "interrupted" in r.stderr
    pid = int(r.stdout.split()[0])

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead
        except FileNotFoundError:
            return False
        except OSError:  # pragma: no cover - no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True

    for _ in range(100):
        if not alive():
            break
        time.sleep(0.05)
    assert not alive()
