"""Searches spread over a dask.distributed cluster (the ``dist`` extra): ``fastspec query --scheduler``,
``Library.search_to_file(..., client=...)``.

The client reads the query files and writes the hit table, in record order, as without a cluster; the
workers search the chunks of queries (``chunk_size`` spectra each), a few chunks ahead of the writing.
Each worker process opens the library index by its path, once, so every machine must see the index at
the same path (a shared filesystem), and a worker refuses an index whose manifest differs from the one
the client opened (another build, or one appended to since). A chunk crosses the network as one
``.npz`` of plain arrays (peaks, precursors, the metadata as Arrow IPC bytes) and its hits come back the
same way, read with ``allow_pickle=False``: spectra and hits are never pickled (dask pickles the task
itself: this module's function by name and the search parameters). The hit table equals a search
without a cluster row for row (the same code searches each chunk). The client holds up to
:data:`AHEAD_PER_THREAD` chunks per worker thread in memory, with their hits.

dask is imported here only, when a cluster is asked for.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import io
import json
import logging
import os
import warnings
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from fastspec.errors import FastspecError, IndexFormatError, ParameterError

#: chunks searched or waiting on the cluster per worker thread, beyond the one being written: enough to
#: keep every worker busy while the client reads and writes, few enough to bound the client's memory
AHEAD_PER_THREAD = 2

#: what dask raises when a wait runs out: asyncio's TimeoutError, not the builtin one before Python 3.11
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)

#: seconds to wait for a cluster's first worker before giving up (a scheduler without workers would
#: otherwise hold the search forever)
WORKER_WAIT_S = 60.0


def _dask():
    try:
        import distributed
    except ImportError as e:
        raise FastspecError("searching on a dask cluster needs dask.distributed: pip install 'fastspec[dist]'") from e
    return distributed


def parse_scheduler(scheduler: str) -> tuple[str, int | None]:
    """``("local", n_workers)`` for ``local`` / ``local:N`` (N worker processes on this machine; None: one
    per core), else ``("address", None)`` for a scheduler address (``tcp://host:8786``, ``host:8786``).

    Raises
    ------
    ParameterError
        An empty value, or ``local:`` followed by anything but a positive integer of at most the usable
        cores (:func:`usable_cores`).
    """
    s = str(scheduler).strip()
    if not s:
        raise ParameterError("--scheduler: give a dask scheduler address (tcp://host:8786) or local[:N]")
    if s == "local" or s.startswith("local:"):
        n = s[len("local:"):] if s != "local" else ""
        if n == "":
            return "local", None
        if not (n.isascii() and n.isdigit()) or int(n) < 1:
            raise ParameterError(f"--scheduler {scheduler}: local:N takes a positive number of worker processes")
        if int(n) > usable_cores():  # more processes than cores only share them out (local:64 was a typo)
            raise ParameterError(f"--scheduler {scheduler}: this machine has {usable_cores()} usable cores; "
                                 f"give local:N with N at most that")
        return "local", int(n)
    return "address", None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as the kernels count them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class cluster_client:
    """``with cluster_client(scheduler) as client:`` a dask ``Client`` for ``scheduler`` (see
    :func:`parse_scheduler`): connected to a running scheduler, or on a local cluster of worker processes
    (one thread each) that is shut down on exit.

    Parameters
    ----------
    scheduler : str
        ``local``, ``local:N`` or a scheduler address.

    dask's own loggers are silenced meanwhile (a lost worker or scheduler is logged with tracebacks; the
    search reports it in one line) and restored on exit.

    Raises
    ------
    FastspecError
        dask.distributed is not installed, the scheduler cannot be reached, or no worker joins within
        :data:`WORKER_WAIT_S` seconds.
    """

    def __init__(self, scheduler: str):
        self.scheduler = scheduler
        self.kind, self.n_workers = parse_scheduler(scheduler)
        self.client = self.cluster = None
        self._environ: dict | None = None

    def __enter__(self):
        distributed = _dask()
        # dask logs a lost worker or scheduler with tracebacks, each of its loggers at its own level; the
        # search says what happened in one line
        names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
        self._levels = {n: logging.getLogger(n).level for n in names}
        for n in names:
            logging.getLogger(n).setLevel(logging.CRITICAL)
        level = logging.CRITICAL
        try:
            if self.kind == "local":
                n = self.n_workers or usable_cores()
                # no dashboard: it needs bokeh, and nobody looks at it during one command; the scheduler's
                # health-check server still wants port 8787 and moves to another when it is taken, saying so
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Port .* is already in use")
                    self._environ = dict(os.environ)
                    self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                            dashboard_address=None, silence_logs=level)
                # dask's nannies set their workers' environment in this process (MALLOC_TRIM_THRESHOLD_,
                # OMP_NUM_THREADS=1, ...): it turned off retain_freed_memory and reached child processes
                _restore_environ(self._environ)
                self.client = distributed.Client(self.cluster)
            else:
                self.client = distributed.Client(self.scheduler, timeout="20s")
        except (OSError, *_TIMEOUTS) as e:
            self.__exit__(None, None, None)
            raise FastspecError(f"cannot reach the dask scheduler at {self.scheduler}: {e}") from None
        except ValueError as e:  # foo, tcp://, http://host:8786, host:notaport
            self.__exit__(None, None, None)
            raise ParameterError(f"--scheduler {self.scheduler}: not a dask scheduler address "
                                 f"(tcp://host:8786): {e}") from None
        except BaseException:  # (an interrupt, a worker process failing to start): shut down, levels back
            self.__exit__(None, None, None)
            raise
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (OSError, *_TIMEOUTS):
            self.__exit__(None, None, None)
            raise FastspecError(f"no dask worker joined the scheduler at {self.scheduler} within "
                                f"{WORKER_WAIT_S:.0f} s") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.client

    def __exit__(self, *exc):
        for what in (self.client, self.cluster):
            if what is not None:
                try:
                    what.close()
                except Exception:  # shutting down after an error: the error is what the caller sees
                    pass
        self.client = self.cluster = None
        if self._environ is not None:  # (again: a restarted worker sets it once more)
            _restore_environ(self._environ)
            self._environ = None
        for n, lv in getattr(self, "_levels", {}).items():
            logging.getLogger(n).setLevel(lv)
        return False


def _restore_environ(before: dict) -> None:
    """``os.environ`` as it was (``before``): variables added since removed, changed ones set back."""
    for key in [k for k in os.environ if k not in before]:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def worker_threads(scheduler: str, threads: int | None) -> int | None:
    """numba / faiss threads per worker: as given, else for ``local:N`` the cores shared out among the N
    processes (N processes each starting a thread per core would fight over the cores), else None (each
    worker uses its machine's cores)."""
    if threads is not None:
        return threads
    kind, n = parse_scheduler(scheduler)
    if kind == "local" and n is not None:
        return max(1, usable_cores() // n)
    if kind == "local":
        return 1  # one process per core
    return None


# ------------------------------------------------------------------------------------------ payloads
def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unnpz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _text(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def _untext(a: np.ndarray) -> Any:
    return json.loads(a.tobytes().decode())


def pack_spectra(raw) -> bytes:
    """A chunk of query spectra as ``.npz`` bytes: CSR peaks, precursors, charges, and the metadata as
    Arrow IPC bytes."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, raw.metadata.schema) as w:
        w.write_table(raw.metadata)
    return _npz(offsets=raw.offsets, mz=raw.mz, intensity=raw.intensity, precursor_mz=raw.precursor_mz,
                charge=raw.charge, metadata=np.frombuffer(sink.getvalue(), np.uint8))


def unpack_spectra(data: bytes):
    """:func:`pack_spectra`'s inverse."""
    import pyarrow as pa

    from fastspec.spectra import Spectra

    d = _unnpz(data)
    meta = pa.ipc.open_stream(pa.py_buffer(d["metadata"].tobytes())).read_all()
    # the peaks were sorted and checked when the client read them
    return Spectra(d["offsets"], d["mz"], d["intensity"], d["precursor_mz"], d["charge"], meta, validate=False)


def pack_found(found) -> bytes:
    """A chunk's search result (:class:`fastspec.search._Found`) as ``.npz`` bytes."""
    status = np.asarray([str(s) for s in found.status], dtype=str)
    return _npz(scores=found.scores, indices=found.indices, matches=found.matches, status=status,
                fallback=found.fallback, extra=_text({"unfiltered": found.unfiltered, "formulas": found.formulas}))


def unpack_found(data: bytes):
    """:func:`pack_found`'s inverse."""
    from fastspec.search import _Found

    d = _unnpz(data)
    extra = _untext(d["extra"])
    status = np.asarray(d["status"].tolist() if d["status"].size else [], dtype=object)
    return _Found(d["scores"], d["indices"], d["matches"], status, d["fallback"].astype(bool), extra["unfiltered"],
                  extra["formulas"])


# ------------------------------------------------------------------------------------------ workers
#: per worker process: index path -> (manifest digest, Library), opened by the first chunk that needs it
_OPEN: dict = {}


def library_digest(library) -> str:
    """The sha256 of the library's manifest: what a worker compares with the index it opens."""
    from fastspec._indexfmt import _manifest_digest

    return _manifest_digest(library.manifest)


def _worker_library(path: str, digest: str):
    from fastspec.library import Library

    held = _OPEN.get(path)
    if held is not None and held[0] == digest:
        return held[1]
    lib = Library.open(path)
    if library_digest(lib) != digest:
        import socket

        # (not IndexChangedError: a worker on another filesystem sees another index however often it looks)
        raise IndexFormatError(f"the library index at {path} on worker {socket.gethostname()} is not the one the "
                               "client opened (another build, or rebuilt or appended to since): every worker "
                               "must see the same index at the same path")
    _OPEN[path] = (digest, lib)
    return lib


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """fastspec's version and a hash of its Python sources (kernels included): a worker running other
    code than the client could give other hits without a word."""
    import hashlib
    from pathlib import Path

    import fastspec
    from fastspec.kernels import _config

    # each file once, named as the module it is: a wheel installs kernels/ inside the package, an editable
    # install maps it from the repository's top level (the same commit hashed differently either way)
    pkg, kdir = Path(fastspec.__file__).parent, Path(_config.__file__).parent
    files = {"fastspec/" + f.relative_to(pkg).as_posix(): f for f in pkg.rglob("*.py")
             if f.relative_to(pkg).parts[0] != "kernels"}
    files.update({"fastspec/kernels/" + f.relative_to(kdir).as_posix(): f for f in kdir.rglob("*.py")})
    h = hashlib.blake2b(fastspec.__version__.encode(), digest_size=16)
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes())
    return h.hexdigest()


def search_chunk(path: str, digest: str, code: str, cfg_args: list, formula, chunk: bytes) -> bytes:
    """Run on a worker: search one packed chunk of query spectra (:func:`pack_spectra`) against the index
    at ``path`` (whose manifest must have the sha256 ``digest``) with the search configuration ``cfg_args``
    (:meth:`fastspec.search._SearchConfig.make`'s arguments after the library), running the client's code
    (``code``: :func:`code_fingerprint`); returns the packed result (:func:`pack_found`)."""
    from fastspec.search import _search_spectra, _SearchConfig

    if code != code_fingerprint():
        import socket

        import fastspec

        raise FastspecError(f"the dask worker on {socket.gethostname()} runs other fastspec code than the client "
                            f"(fastspec {fastspec.__version__} there): install the same fastspec everywhere")
    lib = _worker_library(path, digest)
    cfg = _SearchConfig.cached(lib, *cfg_args)
    return pack_found(_search_spectra(lib, cfg, unpack_spectra(chunk), formula, False))


# ------------------------------------------------------------------------------------------ client
#: seconds between looks at the cluster while a chunk's result is awaited
_POLL_S = 2.0

#: statuses of queries that were not searched (no peaks left, MS1 or MSn records): a search's progress bar
#: counts the others
_NOT_SEARCHED = ("no_peaks", "ms1", "msn")


def search_runs(client, library, cfg_args: list, runs: Iterable[tuple], bar=None) -> Iterator[tuple]:
    """Search each ``(run, formula)`` of ``runs`` (:func:`fastspec.stream._runs`' runs with their formula
    argument) on the cluster and yield ``(run, found)`` in the order of ``runs``, keeping
    :data:`AHEAD_PER_THREAD` chunks per worker thread submitted ahead of the one yielded.

    A chunk travels with its task (not scattered to one worker), so when a worker dies dask runs it again
    on another (up to its ``distributed.scheduler.allowed-failures``, 3 by default). ``bar``: a tqdm bar
    advanced by each chunk's searched queries once its result is in. Chunks still on the cluster when the
    caller stops (an error, an interrupt) are cancelled.

    Raises
    ------
    FastspecError
        The cluster lost its workers (none left for :data:`WORKER_WAIT_S` seconds), a chunk's task killed
        its workers too often, the scheduler went away; or a worker's own refusal (another index at the
        path, other fastspec code).
    """
    path = str(library.path)
    digest, code = library_digest(library), code_fingerprint()
    _await_workers(client)
    ahead = max(1, AHEAD_PER_THREAD * sum(client.nthreads().values()))
    pending: collections.deque = collections.deque()

    def submit(run, formula):
        try:
            with warnings.catch_warnings():  # the chunk is the task's data on purpose (see above)
                warnings.filterwarnings("ignore", message="Sending large graph")
                return client.submit(search_chunk, path, digest, code, cfg_args, formula, pack_spectra(run.raw),
                                     pure=False)
        except Exception as e:
            raise _cluster_error(e, run) from e

    def result(run, fut):
        try:
            data = _wait(client, fut, run)
        except IndexFormatError:  # a worker saw another index: if the client's changed too, an append swapped
            library._check_unchanged()  # it meanwhile (IndexChangedError: `fastspec query` starts again)
            raise
        found = unpack_found(data)
        if bar is not None:
            bar.update(int(np.isin(found.status, _NOT_SEARCHED, invert=True).sum()))
        return run, found

    try:
        for run, formula in runs:
            # nothing to search in an empty run (an empty input, or every record rejected): searched here
            fut = None if len(run.raw) == 0 else submit(run, formula)
            pending.append((run, formula, fut))
            while len(pending) > ahead:
                yield _done(*pending.popleft(), library, cfg_args, result)
        while pending:
            yield _done(*pending.popleft(), library, cfg_args, result)
    finally:
        for _, _, fut in pending:
            if fut is not None:
                fut.cancel()


def _await_workers(client) -> None:
    """Wait up to :data:`WORKER_WAIT_S` seconds for a worker (a client of the caller's on a cluster without
    any: its chunks would wait for ever)."""
    if client.nthreads():
        return
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (OSError, *_TIMEOUTS):
        raise FastspecError(f"no dask worker joined the cluster within {WORKER_WAIT_S:.0f} s") from None


def _wait(client, fut, run) -> bytes:
    """``fut``'s result, watching the cluster meanwhile: without any worker for :data:`WORKER_WAIT_S`
    seconds it would never come."""
    import time

    from distributed import wait

    alone = None
    while not fut.done():
        try:
            wait(fut, timeout=_POLL_S)
            continue
        except _TIMEOUTS:  # still running: is any worker left to run it?
            pass
        except Exception as e:  # the scheduler went away
            raise _cluster_error(e, run) from e
        try:
            workers = client.nthreads()
        except Exception as e:
            raise _cluster_error(e, run) from e
        if workers:
            alone = None
        elif alone is None:
            alone = time.monotonic()
        elif time.monotonic() - alone > WORKER_WAIT_S:
            raise FastspecError(f"the dask cluster has had no worker for {WORKER_WAIT_S:.0f} s (all lost?); "
                                f"query records {run.first}-{run.first + run.n_records - 1} were not searched")
    try:
        return fut.result()
    except (FastspecError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise _cluster_error(e, run) from e


def _cluster_error(e: BaseException, run) -> BaseException:
    """The cluster's own failures as one FastspecError naming the query records; other errors (a bug in a
    worker's search) as they are."""
    where = f"query records {run.first}-{run.first + run.n_records - 1}"
    name = type(e).__name__
    if isinstance(e, FileNotFoundError):  # raised on a worker: its machine lacks the index at that path
        return FastspecError(f"a dask worker found no library index at {e.filename or e} searching {where}: every "
                             "worker must see the index at the client's path (its resolved path, links followed)")
    why = " ".join(str(e).split())[:300]  # dask's messages run over several lines
    if name == "KilledWorker":
        return FastspecError(f"dask workers died searching {where}, as often as the scheduler allows (out of "
                             f"memory?): {why}")
    if type(e).__module__.split(".")[0] in ("distributed", "tornado") or \
            isinstance(e, (OSError, *_TIMEOUTS, asyncio.CancelledError)):
        return FastspecError(f"the dask cluster failed searching {where} (scheduler or connection lost?): "
                             f"{name}: {why}")
    return e


def _done(run, formula, fut, library, cfg_args: list, result: Callable):
    if fut is not None:
        return result(run, fut)
    from fastspec.search import _search_spectra, _SearchConfig

    return run, _search_spectra(library, _SearchConfig.cached(library, *cfg_args), run.raw, formula, False)
