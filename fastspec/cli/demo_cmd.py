"""``fastspec demo``: synthetic library -> index -> every search mode, with throughput and a sanity check.

The whole run, numba compilation on an empty cache included, is meant to take under two minutes on
two cores at the default 200k spectra. Each search mode first runs once untimed on the same queries
(which compiles its kernels or loads them from the cache); that warm-up time is reported apart from
the throughput.

On a cold numba cache most of the run is compilation, one core at a time. With two or more usable
cores and threads, while numba's cache does not hold it yet (``--compile-ahead`` forces it), a second
process compiles the largest kernel, the bound kernel of open, analog and hybrid search, while this
one generates and indexes the library and compiles identity search (:mod:`fastspec.cli._ahead`);
this one waits for it before its first timed search, so that no throughput is measured while it
compiles.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import click

from fastspec.cli._common import common_options, handle_errors

#: (label, search keyword arguments) of the demo's searches, in order.
MODES: list[tuple[str, dict]] = [
    ("identity", dict(mode="identity", metric="cosine")),
    ("formula", dict(mode="formula", metric="cosine")),
    ("open-cosine", dict(mode="open", metric="cosine")),
    ("open-entropy", dict(mode="open", metric="entropy")),
    ("analog", dict(mode="analog")),
    ("analog-faiss", dict(mode="analog", engine="faiss")),
    ("hybrid", dict(mode="hybrid")),
    ("neutral-loss", dict(mode="neutral_loss")),
]
#: Share of queries whose top hit must be a spectrum of the query's molecule, in every mode. (The source
#: spectrum itself need not be first: a molecule has several near-identical spectra, e.g. the same adduct at
#: neighbouring collision energies, and the query noise includes a collision-energy-like tilt.) Not 100%: as
#: in real libraries, some spectra hold only a few peaks (the precursor, common fragment ions such as
#: tropylium), which other molecules' spectra match as well; 200k spectra: 88-98% by mode.
MIN_TOP1 = 0.8


@click.command("demo")
@click.option("--n-spectra", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Synthetic library size.")
@click.option("--n-queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Queries per mode (perturbed copies of library spectra).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the synthetic library and its queries.")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the index here (default: a temporary directory, removed afterwards).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary instead of text.")
@click.option("--compile-ahead/--no-compile-ahead", default=None,
              help="Compile the bound kernel of open, analog and hybrid search in a second process while the "
                   "index is built (default: with 2+ cores and threads, when it is not in numba's cache yet).")
@common_options
@handle_errors
def demo(n_spectra, n_queries, seed, k, workdir, as_json, compile_ahead, threads, quiet):
    """Build a synthetic library, index it, query it in every mode and print throughput."""
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with _workdir(workdir) as wd:
        summary = run_demo(n_spectra=n_spectra, n_queries=n_queries, seed=seed, k=k, workdir=wd, threads=threads,
                           log=log, progress=False if quiet else None, compile_ahead=compile_ahead)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if not summary["ok"]:
        raise SystemExit(1)


@contextmanager
def _workdir(path: str | None):
    if path is not None:
        from fastspec._indexfmt import enclosing_index
        from fastspec.errors import ParameterError

        inside = enclosing_index(path)
        if inside is not None:  # a rebuild or append of that index would delete the demo's files
            raise ParameterError(f"--workdir {path} is inside the library index {inside}: choose another directory")
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="fastspec-demo-") as tmp:
        yield Path(tmp)


# ====================================================================================== the run
def run_demo(*, n_spectra: int = 200_000, n_queries: int = 1000, seed: int = 0, k: int = 10, workdir: Path,
             threads: int | None = None, log: Callable[[str], None] = lambda m: None,
             progress: bool | None = False, compile_ahead: bool | None = False) -> dict:
    """Run the demo and return its summary (rendered by :func:`format_summary`).

    A search mode that raises a :class:`~fastspec.errors.FastspecError` is recorded under ``errors``
    (and makes ``ok`` false) instead of aborting the other modes. ``compile_ahead``: True starts the
    second process that compiles the bound kernel (see the module docstring), None only where it can
    help (:func:`fastspec.cli._ahead.start`); the time waited for it counts in the warm-up of the mode
    that waited.
    """
    t_start = time.perf_counter()
    n_queries = min(n_queries, n_spectra)
    out: dict[str, Any] = {"fastspec_version": _version(), "machine": machine_info(threads),
                           "n_spectra": n_spectra, "n_queries": n_queries, "seed": seed, "k": k,
                           "stages": {}, "modes": {}, "errors": {}}
    ahead = None
    if compile_ahead is not False:
        from fastspec.cli import _ahead

        ahead = _ahead.start(log, threads, force=bool(compile_ahead))
    try:
        _run_all(out, ahead, n_spectra, n_queries, seed, k, workdir, threads, log, progress)
    finally:
        if ahead is not None:
            ahead.stop()
    out["total_s"] = time.perf_counter() - t_start
    out["ok"] = not out["errors"] and all(m["top1_molecule"] >= MIN_TOP1 for m in out["modes"].values())
    return out


def _run_all(out, ahead, n_spectra, n_queries, seed, k, workdir, threads, log, progress):
    import numpy as np

    from fastspec import synth
    from fastspec.library import Library

    with _timed(out, "generate", log, f"generating {n_spectra:,} synthetic spectra"):
        lib = synth.generate(n_spectra, seed=seed, threads=threads, progress=progress)
    out["n_peaks"] = int(lib.offsets[-1])
    molecule = np.asarray(lib.metadata.column("molecule"))
    out["n_molecules"] = int(np.unique(molecule).shape[0])
    with _timed(out, "queries", log, f"deriving {n_queries:,} queries with known sources"):
        queries, truth = synth.make_queries(lib, n_queries, seed=seed + 1)
    path = workdir / "demo.fastspec"
    with _timed(out, "build", log, f"indexing into {path}"):
        Library.build(lib, path, faiss=True, threads=threads, progress=progress, overwrite=True)
    with _timed(out, "open", log, None):
        library = Library.open(path)
    out["index_bytes"] = _du(path)
    out["build_spectra_per_s"] = len(lib) / out["stages"]["build"]
    out["n_indexed"], out["n_rejected"] = len(library), library.n_rejected
    for label, kw in MODES:
        _run_mode(out, label, library, queries, truth, molecule, k, threads, log, ahead=ahead, **kw)
    if ahead is not None:
        ahead.wait(log)  # every mode failed before its timed run: still report it
        out["compile_ahead"] = ahead.summary()


def _run_mode(out, label, library, queries, truth, molecule, k, threads, log, ahead=None, **kw):
    import numpy as np

    from fastspec.errors import FastspecError

    nq = len(queries)
    log(f"searching: {label}")
    try:
        t0 = time.perf_counter()
        # the same call untimed first: kernels pick serial or parallel builds by input size, so only the
        # full query set compiles exactly what the timed run uses (on a cold numba cache)
        library.search(queries, k=k, threads=threads, progress=False, **kw)
        if ahead is not None:  # no timed run while the other process compiles (nor a compile here)
            ahead.wait(log)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = library.search(queries, k=k, threads=threads, progress=False, **kw)
        dt = time.perf_counter() - t0
    except FastspecError as e:
        out["errors"][label] = f"{type(e).__name__}: {e}"
        log(f"  failed: {e}")
        return
    idx = hits.input_indices  # library rows skip rejected spectra; truth is in input positions
    top = idx[:, 0]
    found = top >= 0
    out["modes"][label] = {
        "params": dict(kw),
        "queries": nq,
        "seconds": dt,
        "warmup_s": warm,
        "qps": nq / dt if dt > 0 else float("inf"),
        "mean_latency_ms": 1e3 * dt / nq,
        "with_hit": float(found.mean()),
        "top1_molecule": float(np.where(found, molecule[np.maximum(top, 0)] == molecule[truth], False).mean()),
        "top1_source": float((top == truth).mean()),
        "source_in_topk": float((idx == truth[:, None]).any(axis=1).mean()),
    }


@contextmanager
def _timed(out: dict, name: str, log, msg: str | None):
    if msg:
        log(msg)
    t0 = time.perf_counter()
    yield
    out["stages"][name] = time.perf_counter() - t0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _version() -> str:
    from fastspec._version import __version__

    return __version__


def machine_info(threads: int | None = None) -> dict:
    """CPU, cores, memory and library versions (shared with the benchmarks)."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import numba

        numba_v = numba.__version__
    except ImportError:  # pragma: no cover
        numba_v = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "memory_bytes": mem,
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba_v,
            "platform": platform.platform()}


# ====================================================================================== output
def format_summary(s: dict) -> str:
    """The human-readable summary printed by ``fastspec demo``."""
    st = s["stages"]
    lines = [f"fastspec {s['fastspec_version']} demo: {s['n_spectra']:,} synthetic spectra "
             f"({s['n_molecules']:,} molecules, {s['n_peaks']:,} peaks), {s['n_queries']:,} queries, "
             f"k={s['k']}, {s['machine']['cores']} cores",
             f"  generate      {st['generate']:7.2f} s",
             f"  build index   {st['build']:7.2f} s  ({s['build_spectra_per_s']:,.0f} spectra/s, "
             f"{s['index_bytes'] / 2**20:,.0f} MiB on disk, {s['n_indexed']:,} indexed, {s['n_rejected']:,} rejected)",
             f"  open index    {st['open'] * 1e3:7.1f} ms",
             *_ahead_line(s.get("compile_ahead")),
             "",
             f"  {'mode':<14}{'queries/s':>11}{'mean ms':>10}{'top-1 molecule':>16}{'source in top-k':>17}{'warm-up s':>11}"]
    for label, m in s["modes"].items():
        lines.append(f"  {label:<14}{m['qps']:>11,.0f}{m['mean_latency_ms']:>10.3f}{m['top1_molecule']:>16.1%}"
                     f"{m['source_in_topk']:>17.1%}{m['warmup_s']:>11.2f}")
    for name, why in s["errors"].items():
        lines.append(f"  {name:<14}FAILED: {why}")
    verdict = "OK" if s["ok"] else "CHECK FAILED"
    lines += ["", f"sanity: the top hit is a spectrum of the query's molecule for >= {MIN_TOP1:.0%} of queries in every "
                  f"mode: {verdict}; total {s['total_s']:.1f} s (warm-up includes numba compilation on a cold cache)"]
    return "\n".join(lines)


def _ahead_line(ahead: dict | None) -> list[str]:
    if ahead is None:
        return []
    how = "done" if ahead["exit"] == 0 else f"failed (exit {ahead['exit']}), compiled here"
    return [f"  bound kernel compiled ahead in a second process: {how}, {ahead['wait_s']:.2f} s waited for it"]
