"""Searches on a dask.distributed cluster (``fastspec query --scheduler``, ``search_to_file(client=...)``):
the same hit table as without one, row for row, on real MassBank spectra; a real scheduler and worker
started as processes and reached over TCP; clear errors for a bad scheduler value, a missing extra and a
worker that sees another index."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import fastspec.io as fio
from fastspec import dist
from fastspec.cli import main
from fastspec.errors import FastspecError, IndexChangedError, IndexFormatError, ParameterError
from fastspec.library import Library

distributed = pytest.importorskip("distributed")  # the dist extra: installed by the test command


@pytest.fixture(scope="module")
def case(massbank_mgf, tmp_path_factory):
    """A MassBank library (700 spectra of the sample MGF, no FAISS) and its other 300 spectra as queries,
    written with three unreadable records among them (so that rejected rows sit between chunks)."""
    d = tmp_path_factory.mktemp("dist")
    sp = fio.read(massbank_mgf)
    assert len(sp) >= 1000
    lib = Library.build(sp[:700], d / "lib.fastspec", faiss=False, progress=False, threads=1)
    fio.write(sp[700:1000], str(d / "q.mgf"))
    text = (d / "q.mgf").read_text().split("END IONS\n")
    for i in (3, 120, 121):  # a peak line that is no number: the reader rejects the record
        text[i] = text[i].replace("BEGIN IONS\n", "BEGIN IONS\nnot a peak\n", 1)
    (d / "q.mgf").write_text("END IONS\n".join(text))
    return d, lib


def test_parse_scheduler():
    cores = dist.usable_cores()
    assert dist.parse_scheduler("local") == ("local", None)
    assert dist.parse_scheduler(f"local:{cores}") == ("local", cores)
    assert dist.parse_scheduler("tcp://10.0.0.1:8786") == ("address", None)
    # more local processes than cores only share them out (a review's local:99999999999 ran out of memory)
    for bad in ("", " ", "local:0", "local:x", "local:-1", "local:\u00b2", f"local:{cores + 1}", "local:99999999999"):
        with pytest.raises(ParameterError):
            dist.parse_scheduler(bad)
    assert dist.worker_threads("local:1", None) == cores and dist.worker_threads("local:1", 3) == 3
    assert dist.worker_threads("tcp://h:1", None) is None


def test_payloads_round_trip(massbank_mgf):
    sp = fio.read(massbank_mgf)[:40]
    back = dist.unpack_spectra(dist.pack_spectra(sp))
    for a in ("offsets", "mz", "intensity", "precursor_mz", "charge"):
        assert np.array_equal(getattr(back, a), getattr(sp, a), equal_nan=True), a
    assert back.metadata.equals(sp.metadata)
    empty = dist.unpack_spectra(dist.pack_spectra(sp[:0]))
    assert len(empty) == 0 and empty.metadata.schema == sp.metadata.schema


def _tables_equal(a, b):
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)
    assert pq.read_schema(a).metadata == pq.read_schema(b).metadata  # parameters and read counts too


def test_local_cluster_gives_the_same_table(case):
    import os

    d, lib = case
    before = dict(os.environ)
    with dist.cluster_client("local:2") as client:
        # dask's nannies set their workers' variables (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_) in this
        # process: put back (they turned off retain_freed_memory here and reached child processes)
        assert dict(os.environ) == before
        assert len(client.nthreads()) == 2
        for mode in ("identity", "formula"):
            # small chunks: several on the cluster at once, written back in record order
            kw = dict(mode=mode, chunk_size=37, progress=False, threads=1)
            want = lib.search_to_file(d / "q.mgf", d / f"{mode}_local.parquet", **kw)
            got = lib.search_to_file(d / "q.mgf", d / f"{mode}_dask.parquet", client=client, **kw)
            assert got == want and want["n_queries"] == 300
            assert want["params"]["query_records"]["rejected"] == 3
            _tables_equal(d / f"{mode}_local.parquet", d / f"{mode}_dask.parquet")
        # the workers have theirs
        assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}
    assert dict(os.environ) == before


def test_a_worker_lost_mid_search_changes_nothing(case):
    """A worker killed (SIGKILL) while chunks are on the cluster: its chunks run again on the other worker
    (they travel with their tasks), and the table is the one without a cluster (a review: scattered chunks
    were lost with their worker, failing the whole search)."""
    import os
    import signal

    d, lib = case
    kw = dict(mode="identity", chunk_size=10, threads=1)
    lib.search_to_file(d / "q.mgf", d / "kill_local.tsv", progress=False, **kw)
    with dist.cluster_client("local:2") as client:
        pids = list(client.run(os.getpid).values())
        assert len(pids) == 2

        class KillOnFirstResult:  # a progress bar: called once per chunk whose result is in
            killed = False

            def update(self, n):
                if not self.killed:
                    self.killed = True
                    os.kill(pids[0], signal.SIGKILL)

        bar = KillOnFirstResult()
        lib.search_to_file(d / "q.mgf", d / "kill_dask.tsv", client=client, progress=bar, **kw)
        assert bar.killed
    assert (d / "kill_dask.tsv").read_bytes() == (d / "kill_local.tsv").read_bytes()


def test_cluster_failures_read_as_one_line():
    """What a worker or the cluster raises, as the user reads it (a review: asyncio's TimeoutError, which dask
    raises and Python 3.10 does not count as the builtin one, ended searches whose chunks ran over 2 s; a
    worker without the index read as a lost connection)."""
    import asyncio
    from types import SimpleNamespace

    assert asyncio.TimeoutError in dist._TIMEOUTS and TimeoutError in dist._TIMEOUTS
    run = SimpleNamespace(first=100, n_records=50)
    err = dist._cluster_error(FileNotFoundError(2, "No such library index", "/shared/lib.fastspec"), run)
    assert isinstance(err, FastspecError) and "no library index at /shared/lib.fastspec" in str(err)
    assert "query records 100-149" in str(err)
    assert isinstance(dist._cluster_error(asyncio.TimeoutError(), run), FastspecError)
    bug = KeyError("x")  # anything else passes as it is
    assert dist._cluster_error(bug, run) is bug


def test_code_fingerprint_names_each_module_once():
    fp = dist.code_fingerprint()
    assert len(fp) == 32 and fp == dist.code_fingerprint()


def test_worker_refuses_other_code(case):
    d, lib = case
    chunk = dist.pack_spectra(fio.read(d / "q.mgf")[:5])
    with pytest.raises(FastspecError, match="other fastspec code"):
        dist.search_chunk(str(lib.path), dist.library_digest(lib), "0" * 32, [], None, chunk)


def test_worker_refuses_another_index(case, tmp_path):
    d, _ = case
    sp = fio.read(d / "q.mgf")
    path = tmp_path / "lib.fastspec"
    old = Library.build(sp[:100], path, faiss=False, progress=False, threads=1)
    Library.build(sp[:120], path, faiss=False, progress=False, threads=1, overwrite=True)
    client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0")
    try:
        # the client's own index changed too (rebuilt since it opened it): IndexChangedError, which
        # `fastspec query` answers by opening the new index and searching again
        with pytest.raises(IndexChangedError, match="open it again"):
            old.search_to_file(sp[100:], tmp_path / "h.parquet", client=client, progress=False)
    finally:
        client.close()
    assert not (tmp_path / "h.parquet").exists()  # nothing half-written
    # a worker that sees another index than the client's (another filesystem at the same path)
    new = Library.open(path)
    with pytest.raises(IndexFormatError, match="not the one the client opened"):
        dist.search_chunk(str(path), "0" * 64, dist.code_fingerprint(), [], None, dist.pack_spectra(sp[:3]))
    assert dist.library_digest(new) != dist.library_digest(old)


def test_missing_extra_says_which(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(FastspecError, match=r"fastspec\[dist\]"):
        with dist.cluster_client("local:1"):
            pass


def test_cli_scheduler_option(case):
    d, lib = case
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    res = run("query", d / "q.mgf", "-l", lib.path, "-o", d / "cli_local.tsv", "-q")
    assert res.exit_code == 0, res.output
    res = run("query", d / "q.mgf", "-l", lib.path, "-o", d / "cli_dask.tsv", "--scheduler", "local:1",
              "--chunk-size", "50")
    assert res.exit_code == 0, res.output
    assert "on 1 dask worker (1 threads)" in res.output
    assert (d / "cli_dask.tsv").read_bytes() == (d / "cli_local.tsv").read_bytes()
    for bad, words in (("local:x", "positive number"), ("", "scheduler address")):
        res = run("query", d / "q.mgf", "-l", lib.path, "-o", d / "x.tsv", "--scheduler", bad)
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert [ln for ln in res.output.splitlines() if ln.startswith("Error")] and words in res.output, res.output
    assert not (d / "x.tsv").exists()


def test_real_scheduler_and_worker_over_tcp(case, tmp_path):
    """``dask scheduler`` and ``dask worker`` as their own processes, and ``fastspec query`` as a third,
    reaching them over TCP."""
    d, lib = case
    sched_file = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen(dask_cli + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                          "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(dask_cli + ["worker", address, "--nthreads", "1", "--nworkers", "1",
                                                  "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = tmp_path / "hits.csv"
        proc = subprocess.run([sys.executable, "-m", "fastspec", "query", str(d / "q.mgf"), "-l", str(lib.path),
                               "-o", str(out), "--scheduler", address, "--threads", "1", "--chunk-size", "60"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "on 1 dask worker" in proc.stderr
        want = tmp_path / "want.csv"
        lib.search_to_file(d / "q.mgf", want, chunk_size=60, progress=False)
        assert out.read_bytes() == want.read_bytes()
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
