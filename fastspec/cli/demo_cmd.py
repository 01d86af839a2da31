"""``fastspec demo``: synthetic library -> index -> every search mode, with throughput and a sanity check.

The whole run (including numba compilation on a cold cache) is meant to take under two minutes on
two cores at the default 200k spectra. Each search mode is warmed up on a few queries first, so the
reported throughput excludes compilation; the warm-up time is reported separately.
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
]
#: Fraction of queries that must find their source spectrum at rank 1 for a mode to pass.
MIN_TOP1 = 0.8
_WARMUP = 16


@click.command("demo")
@click.option("--n-spectra", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Synthetic library size.")
@click.option("--n-queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Queries per mode (perturbed copies of library spectra).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the index here (default: a temporary directory, removed afterwards).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary instead of text.")
@common_options
@handle_errors
def demo(n_spectra, n_queries, seed, k, workdir, as_json, threads, quiet):
    """Build a synthetic library, index it, query it in every mode and print throughput."""
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with _workdir(workdir) as wd:
        summary = run_demo(n_spectra=n_spectra, n_queries=n_queries, seed=seed, k=k, workdir=wd, threads=threads, log=log)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))
    if not summary["ok"]:
        raise SystemExit(1)


@contextmanager
def _workdir(path: str | None):
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="fastspec-demo-") as tmp:
        yield Path(tmp)


# ====================================================================================== the run
def run_demo(*, n_spectra: int = 200_000, n_queries: int = 1000, seed: int = 0, k: int = 10,
             workdir: Path, threads: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run the demo and return its summary (see :func:`format_summary`).

    Stages that need a part of fastspec missing from this build are recorded as ``skipped`` with the
    reason rather than failing the demo.
    """
    import numpy as np

    from fastspec import synth

    t_start = time.perf_counter()
    n_queries = min(n_queries, n_spectra)
    out: dict[str, Any] = {"fastspec_version": _version(), "machine": machine_info(threads),
                           "n_spectra": n_spectra, "n_queries": n_queries, "seed": seed, "k": k,
                           "stages": {}, "modes": {}, "skipped": {}}
    with _timed(out, "generate", log, f"generating {n_spectra:,} synthetic spectra"):
        lib = synth.generate(n_spectra, seed=seed, threads=threads)
    out["n_peaks"] = int(lib.offsets[-1])
    out["n_molecules"] = int(np.unique(np.asarray(lib.metadata.column("molecule"))).shape[0])
    with _timed(out, "queries", log, f"deriving {n_queries:,} queries"):
        queries, truth = synth.make_queries(lib, n_queries, seed=seed + 1)
    _io_roundtrip(out, queries, workdir, log)

    library = _build(out, lib, workdir, threads, log)
    if library is not None:
        for label, kw in MODES:
            _run_mode(out, label, library, queries, truth, lib, k, threads, log, **kw)
    else:
        _score_fallback(out, lib, queries, truth, threads, log)
    out["total_s"] = time.perf_counter() - t_start
    # OK: every mode ran and found the source at rank 1 for most queries
    checked = [m for m in out["modes"].values() if m.get("top1_source") is not None]
    out["ok"] = bool(checked) and not out["skipped"] and all(m["top1_source"] >= MIN_TOP1 for m in checked)
    return out


def _run_mode(out, label, library, queries, truth, lib, k, threads, log, **kw):
    import numpy as np

    from fastspec.errors import FastspecError

    nq = len(queries)
    log(f"searching: {label}")
    try:
        t0 = time.perf_counter()
        library.search(queries[: min(_WARMUP, nq)], k=k, threads=threads, **kw)  # compiles the kernels
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = library.search(queries, k=k, threads=threads, **kw)
        dt = time.perf_counter() - t0
    except (FastspecError, ImportError, AttributeError, NotImplementedError) as e:
        out["skipped"][label] = f"{type(e).__name__}: {e}"
        log(f"  skipped: {e}")
        return
    top = np.asarray(hits.indices)[:, 0]
    found = top >= 0
    mol_lib = np.asarray(lib.metadata.column("molecule"))
    out["modes"][label] = {
        "params": {k_: v for k_, v in kw.items()},
        "queries": nq,
        "seconds": dt,
        "warmup_s": warm,
        "qps": nq / dt if dt > 0 else float("inf"),
        "mean_latency_ms": 1e3 * dt / nq,
        "with_hit": float(found.mean()),
        "top1_source": float((top == truth).mean()),
        "top1_molecule": float(np.where(found, mol_lib[np.maximum(top, 0)] == mol_lib[truth], False).mean()),
    }


def _build(out, lib, workdir: Path, threads, log):
    try:
        from fastspec.library import Library
    except ImportError as e:
        out["skipped"]["library"] = f"fastspec.library not available: {e}"
        return None
    path = workdir / "demo.fastspec"
    try:
        with _timed(out, "build", log, f"indexing into {path}"):
            Library.build(lib, path, faiss=True, threads=threads, progress=False, overwrite=True)
        with _timed(out, "open", log, None):
            library = Library.open(path)
    except (ImportError, AttributeError, NotImplementedError) as e:
        out["skipped"]["library"] = f"{type(e).__name__}: {e}"
        log(f"  library unavailable: {e}")
        return None
    out["index_bytes"] = _du(path)
    out["build_spectra_per_s"] = len(lib) / out["stages"]["build"]
    return library


def _io_roundtrip(out, queries, workdir: Path, log):
    """Write the queries as MGF and read them back (exercises fastspec.io)."""
    try:
        from fastspec.io import read, write
    except ImportError as e:
        out["skipped"]["io"] = f"fastspec.io not available: {e}"
        return
    path = workdir / "queries.mgf"
    with _timed(out, "io_roundtrip", log, f"writing and reading {path.name}"):
        write(queries, str(path))
        back = read(str(path))
    out["io_roundtrip_ok"] = len(back) == len(queries)


def _score_fallback(out, lib, queries, truth, threads, log):
    """Without a library index: brute-force cosine of a few queries against a slice of the library."""
    import numpy as np

    try:
        from fastspec.similarity import score_matrix
    except ImportError as e:
        out["skipped"]["score"] = f"fastspec.similarity not available: {e}"
        return
    nq = min(len(queries), 100)
    # the library slice around the queries' sources, so the top-1 check is meaningful
    rows = np.unique(np.concatenate([truth[:nq], np.arange(min(len(lib), 20_000))]))
    refs = lib.take(rows)
    log(f"scoring {nq} queries x {len(refs):,} spectra (no library index in this build)")
    t0 = time.perf_counter()
    s = np.asarray(score_matrix(queries[:nq], refs, metric="cosine", tolerance=0.02))
    dt = time.perf_counter() - t0
    s = s[0] if s.ndim == 3 else s
    best = rows[np.argmax(s, axis=1)]
    out["modes"]["brute-force-cosine"] = {
        "queries": nq, "seconds": dt, "qps": nq / dt, "mean_latency_ms": 1e3 * dt / nq,
        "pairs_per_s": nq * len(refs) / dt, "top1_source": float((best == truth[:nq]).mean()),
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
             f"({s.get('n_molecules', 0):,} molecules, {s['n_peaks']:,} peaks), {s['n_queries']:,} queries, "
             f"k={s['k']}, {s['machine']['cores']} cores"]
    lines.append(f"  generate      {st.get('generate', 0):7.2f} s")
    if "build" in st:
        lines.append(f"  build index   {st['build']:7.2f} s  ({s['build_spectra_per_s']:,.0f} spectra/s, "
                     f"{s['index_bytes'] / 2**20:,.0f} MiB on disk)")
        lines.append(f"  open index    {st['open'] * 1e3:7.1f} ms")
    if "io_roundtrip" in st:
        lines.append(f"  MGF write+read of the queries {st['io_roundtrip']:.2f} s")
    if s["modes"]:
        lines.append("")
        lines.append(f"  {'mode':<14}{'queries/s':>11}{'mean ms':>10}{'top-1 source':>14}{'top-1 molecule':>16}{'warm-up s':>11}")
        for label, m in s["modes"].items():
            mol = m.get("top1_molecule")
            lines.append(f"  {label:<14}{m['qps']:>11,.0f}{m['mean_latency_ms']:>10.3f}{m['top1_source']:>14.1%}"
                         f"{'' if mol is None else format(mol, '.1%'):>16}{m.get('warmup_s', 0):>11.2f}")
    for name, why in s["skipped"].items():
        lines.append(f"  skipped {name}: {why}")
    verdict = "OK" if s["ok"] else ("INCOMPLETE (stages skipped)" if s["skipped"] else "CHECK FAILED")
    lines.append("")
    lines.append(f"sanity: queries find their source spectrum at rank 1 in >= {MIN_TOP1:.0%} of cases in every mode: "
                 f"{verdict}; total {s['total_s']:.1f} s")
    return "\n".join(lines)
