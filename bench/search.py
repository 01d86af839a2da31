#!/usr/bin/env python
"""Library search benchmark (issue section 5): build, open, memory, per-mode speed, FAISS recall, peers.

The library is grown from the shared MassBank parquet with ``fastspec.synth`` (``seed_library``; pure
synthetic when the shared folder is absent) to each size. Queries are perturbed copies of library
spectra (``synth.make_queries``), so every query has a known source.

Each phase runs in its own subprocess so its peak RSS (``VmHWM``) is clean:

* ``build``     generate the library, ``Library.build`` (with FAISS), write the queries; build time, index
                size on disk, peak RSS (includes the in-memory input spectra, as when reading a file).
* ``query``     ``Library.open`` (time), then every mode: batch throughput (one ``search`` call for all
                queries) and single-query-call latency (mean, median, p99) on a subset; FAISS recall@10 and
                @100 against exact search for each ``nprobe``; peak RSS while querying.
* ``ms_entropy`` ``FlashEntropySearch``: index build time and RSS, identity / open / hybrid per-query
                latency (one Python call per query, as its API works; top-k extraction included).
* ``matchms``   ``ModifiedCosineGreedy`` brute force on a library subset, extrapolated to the full library
                (marked ``extrapolated``); ``FlashSimilarity`` (matchms >= 0.33) ``.matrix`` on a subset,
                extrapolated likewise.

    python bench/search.py                       # quick: 100k spectra
    python bench/search.py --sizes 100k,1M       # also 1M
    python bench/search.py --sizes 2.4M --no-peers

Writes bench/results/search.json and bench/results/search.md (date, machine, targets met/missed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MASSBANK = Path(os.environ.get("FASTSPEC_SHARED", ROOT.parent / "shared")) / "data" / "massbank" / "massbank_open.parquet"

TOLERANCE = 0.02  # fragment tolerance, Da (all engines)
PRECURSOR_TOLERANCE = 0.01  # identity precursor window, Da
K = 10

#: label -> search keyword arguments (fastspec)
MODES = {
    "identity": dict(mode="identity", metric="cosine"),
    "formula": dict(mode="formula", metric="cosine"),
    "open-cosine": dict(mode="open", metric="cosine"),
    "open-entropy": dict(mode="open", metric="entropy"),
    "analog": dict(mode="analog"),
}
#: exact mode whose FAISS counterpart is measured (recall is against it)
FAISS_MODES = {"analog": dict(mode="analog"), "open-cosine": dict(mode="open", metric="cosine")}
NPROBES = (1, 4, 16, 64)


# ====================================================================================== helpers
def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(round(float(t[:-1] if mult > 1 else t) * mult))


def size_label(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def rss() -> dict:
    """Current and peak resident set size of this process (bytes)."""
    out = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM", "VmRSS")):
                    key = "peak_rss" if line.startswith("VmHWM") else "rss"
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def latency_stats(seconds: np.ndarray) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "n": int(ms.shape[0])}


def make_library(n: int, seed: int, threads: int | None):
    from fastspec import synth

    if MASSBANK.exists():
        return synth.generate(n, seed=seed, seed_library=MASSBANK, threads=threads), "massbank-grown"
    return synth.generate(n, seed=seed, threads=threads), "synthetic"


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[0])
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


# ====================================================================================== phases (subprocesses)
def phase_build(a) -> dict:
    from fastspec import synth
    from fastspec.io import write
    from fastspec.library import Library

    t0 = time.perf_counter()
    lib, source = make_library(a.size, a.seed, a.threads)
    t_gen = time.perf_counter() - t0
    queries, truth = synth.make_queries(lib, a.queries, seed=a.seed + 1)
    wd = Path(a.workdir)
    write(queries, str(wd / "queries.parquet"))
    np.save(wd / "truth.npy", truth)
    # a hit counts as the source when it is the source row or another copy of the same seed spectrum
    src = lib.metadata.column("source_row") if "source_row" in lib.metadata.column_names else None
    np.save(wd / "klass.npy", np.arange(len(lib), dtype=np.int64) if src is None else np.asarray(src, dtype=np.int64))
    base = rss()
    t0 = time.perf_counter()
    Library.build(lib, wd / "lib.fastspec", faiss=True, threads=a.threads, progress=False, overwrite=True)
    t_build = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (wd / "lib.fastspec").rglob("*") if f.is_file())
    return {"source": source, "n_spectra": len(lib), "n_peaks": int(lib.offsets[-1]), "generate_s": t_gen,
            "build_s": t_build, "build_s_per_million": t_build / (len(lib) / 1e6), "index_bytes": size,
            "rss_before_build": base["rss"], **{f"build_{k}": v for k, v in rss().items()}}


def _read_queries(wd: Path):
    """Queries, and the 'source class' of each query and of every library row (see phase_build)."""
    from fastspec.io import read

    klass = np.load(wd / "klass.npy")
    return read(str(wd / "queries.parquet")), klass[np.load(wd / "truth.npy")], klass


def top1_source(top: np.ndarray, qclass: np.ndarray, klass: np.ndarray) -> float:
    top = np.asarray(top)
    return float(np.where(top >= 0, klass[np.maximum(top, 0)] == qclass, False).mean())


def phase_query(a) -> dict:
    from fastspec.library import Library

    wd = Path(a.workdir)
    queries, qclass, klass = _read_queries(wd)
    t0 = time.perf_counter()
    lib = Library.open(wd / "lib.fastspec")
    t_open = time.perf_counter() - t0
    out = {"open_s": t_open, "threads": a.threads, "modes": {}, "faiss": {}}
    common = dict(k=K, tolerance=TOLERANCE, precursor_tolerance=PRECURSOR_TOLERANCE, threads=a.threads)
    n_lat = min(a.latency_queries, len(queries))
    exact_hits = {}
    for label, kw in MODES.items():
        try:
            lib.search(queries[:8], **common, **kw)  # compile / warm caches
            t0 = time.perf_counter()
            hits = lib.search(queries, **common, **kw)
            dt_ = time.perf_counter() - t0
            lat = []
            for i in range(n_lat):
                t1 = time.perf_counter()
                lib.search(queries[i : i + 1], **common, **kw)
                lat.append(time.perf_counter() - t1)
        except Exception as e:  # a mode missing from this build is reported, not fatal
            out["modes"][label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        top = np.asarray(hits.indices)[:, 0]
        out["modes"][label] = {"qps": len(queries) / dt_, "batch_mean_ms": 1e3 * dt_ / len(queries),
                               "single_call": latency_stats(np.array(lat)), "top1_source": top1_source(top, qclass, klass)}
        exact_hits[label] = hits
    for label, kw in FAISS_MODES.items():
        try:
            exact = lib.search(queries, **dict(common, k=100), **kw)
        except Exception as e:
            out["faiss"][label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        rows = []
        for nprobe in NPROBES:
            try:
                lib.search(queries[:8], **dict(common, k=100), engine="faiss", nprobe=nprobe, **kw)
                t0 = time.perf_counter()
                approx = lib.search(queries, **dict(common, k=100), engine="faiss", nprobe=nprobe, **kw)
                dt_ = time.perf_counter() - t0
            except Exception as e:
                rows.append({"nprobe": nprobe, "error": f"{type(e).__name__}: {e}"})
                continue
            rows.append({"nprobe": nprobe, "qps": len(queries) / dt_, "batch_mean_ms": 1e3 * dt_ / len(queries),
                         "recall@10": recall(exact.scores, approx.scores, 10),
                         "recall@100": recall(exact.scores, approx.scores, 100)})
        out["faiss"][label] = rows
    out.update({f"query_{k}": v for k, v in rss().items()})
    return out


def recall(exact_scores: np.ndarray, approx_scores: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: the share of the exact top-k whose score the approximate top-k reaches.

    For each query, count the approximate hits (rescored exactly) scoring at least the exact k-th score;
    divide by the number of exact hits with a positive score (at most k). Queries without exact hits
    are left out.
    """
    ex = np.asarray(exact_scores, np.float64)[:, :k]
    ap = np.asarray(approx_scores, np.float64)[:, :k]
    n_true = (ex > 0).sum(axis=1)
    kth = np.where(n_true > 0, ex[np.arange(ex.shape[0]), np.maximum(n_true - 1, 0)], np.inf)
    got = np.minimum(((ap >= kth[:, None] - 1e-6) & (ap > 0)).sum(axis=1), n_true)
    has = n_true > 0
    return float(got[has].sum() / n_true[has].sum()) if has.any() else float("nan")


def phase_ms_entropy(a) -> dict:
    from ms_entropy import FlashEntropySearch

    lib, _ = make_library(a.size, a.seed, a.threads)
    queries, qclass, klass = _read_queries(Path(a.workdir))
    ok = np.flatnonzero(np.isfinite(lib.precursor_mz))
    o, mz, it, pmz = lib.offsets, lib.mz, lib.intensity, lib.precursor_mz
    # ms_entropy's input: a list of dicts (its metadata store pickles them; that is ms_entropy's code)
    specs = [{"precursor_mz": float(pmz[i]), "peaks": np.column_stack([mz[o[i]:o[i + 1]], it[o[i]:o[i + 1]]]).astype(np.float32),
              "row": int(i)} for i in ok]
    del lib
    base = rss()
    t0 = time.perf_counter()
    es = FlashEntropySearch(max_ms2_tolerance_in_da=TOLERANCE)
    sorted_specs = es.build_index(specs)
    t_build = time.perf_counter() - t0
    after = rss()
    row_of = np.array([s["row"] for s in sorted_specs], dtype=np.int64)
    del specs, sorted_specs
    out = {"n_indexed": int(row_of.shape[0]), "build_s": t_build, "build_s_per_million": t_build / (row_of.shape[0] / 1e6),
           "rss_before_build": base["rss"], "build_peak_rss": after["peak_rss"], "rss_after_build": after["rss"], "modes": {}}
    nq = min(a.peer_queries, len(queries))
    qo, qmz, qit, qp = queries.offsets, queries.mz, queries.intensity, queries.precursor_mz
    for method in ("identity", "open", "hybrid"):
        lat, top1 = [], []
        for i in range(nq):
            if not np.isfinite(qp[i]):
                continue
            peaks = np.column_stack([qmz[qo[i]:qo[i + 1]], qit[qo[i]:qo[i + 1]]]).astype(np.float32)
            t1 = time.perf_counter()
            peaks = es.clean_spectrum_for_search(precursor_mz=float(qp[i]), peaks=peaks)
            if method == "identity":
                s = es.identity_search(precursor_mz=float(qp[i]), peaks=peaks, ms1_tolerance_in_da=PRECURSOR_TOLERANCE,
                                       ms2_tolerance_in_da=TOLERANCE)
            elif method == "open":
                s = es.open_search(peaks=peaks, ms2_tolerance_in_da=TOLERANCE)
            else:
                s = es.hybrid_search(precursor_mz=float(qp[i]), peaks=peaks, ms2_tolerance_in_da=TOLERANCE)
            best = topk(np.asarray(s), K)
            lat.append(time.perf_counter() - t1)
            top1.append(klass[row_of[best[0]]] == qclass[i] if s[best[0]] > 0 else False)
        out["modes"][method] = {**latency_stats(np.array(lat)), "qps": len(lat) / float(np.sum(lat)),
                                "top1_source": float(np.mean(top1))}
    out["query_peak_rss"] = rss()["peak_rss"]
    return out


def phase_matchms(a) -> dict:
    import matchms
    from matchms.similarity import ModifiedCosineGreedy

    lib, _ = make_library(a.size, a.seed, a.threads)
    queries, _, _ = _read_queries(Path(a.workdir))
    rng = np.random.default_rng(a.seed)
    # modified cosine needs precursor m/z: only spectra that have one
    has = np.flatnonzero(np.isfinite(lib.precursor_mz))
    n_ref = min(a.matchms_refs, has.shape[0])
    ref_rows = np.sort(rng.choice(has, n_ref, replace=False))
    refs = lib.take(ref_rows).to_matchms()
    q_rows = np.flatnonzero(np.isfinite(queries.precursor_mz))[: a.matchms_queries]
    qs = queries.take(q_rows).to_matchms()
    out = {"matchms_version": matchms.__version__, "n_refs": n_ref, "n_queries": len(qs), "extrapolated": True}
    mc = ModifiedCosineGreedy(tolerance=TOLERANCE)
    mc.matrix(refs[:20], qs[:1], progress_bar=False)  # numba warm-up
    t0 = time.perf_counter()
    mc.matrix(refs, qs, progress_bar=False)
    dt_ = time.perf_counter() - t0
    pairs_s = n_ref * len(qs) / dt_
    out["modified_cosine_greedy"] = {"pairs_per_s": pairs_s, "extrapolated_ms_per_query": 1e3 * len(lib) / pairs_s,
                                     "extrapolated": True}
    try:
        from matchms.similarity import FlashSimilarity
    except ImportError:
        out["flash_similarity"] = {"error": f"not in matchms {matchms.__version__}"}
        return out
    # FlashSimilarity.matrix(references, queries) indexes its *second* argument and streams the first:
    # the library subset is indexed, the query spectra streamed through it
    n_flash = min(a.flash_refs, has.shape[0])
    flash_lib = lib.take(np.sort(rng.choice(has, n_flash, replace=False))).to_matchms()
    fq = queries.take(np.flatnonzero(np.isfinite(queries.precursor_mz))[: a.peer_queries]).to_matchms()
    out["flash_refs"] = n_flash
    for label, kw in (("fragment", dict(matching_mode="fragment")), ("hybrid", dict(matching_mode="hybrid"))):
        fs = FlashSimilarity(score_type="spectral_entropy", tolerance=TOLERANCE, **kw)
        fs.matrix(fq[:2], flash_lib[:50], n_jobs=1)  # numba warm-up
        t0 = time.perf_counter()
        fs.matrix(fq[:1], flash_lib, n_jobs=1)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        fs.matrix(fq, flash_lib, n_jobs=1)
        t_all = time.perf_counter() - t0
        per_q = max(t_all - t_one, 1e-9) / max(len(fq) - 1, 1)
        out[f"flash_similarity_{label}"] = {"index_build_s": t_one - per_q, "ms_per_query_on_subset": 1e3 * per_q,
                                            "extrapolated_ms_per_query": 1e3 * per_q * len(lib) / n_flash,
                                            "extrapolated": True}
    return out


PHASES = {"build": phase_build, "query": phase_query, "ms_entropy": phase_ms_entropy, "matchms": phase_matchms}


# ====================================================================================== driver
def run_phase(name: str, a, size: int, workdir: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--size", str(size), "--workdir", str(workdir),
           "--seed", str(a.seed), "--queries", str(a.queries), "--latency-queries", str(a.latency_queries),
           "--peer-queries", str(a.peer_queries), "--matchms-refs", str(a.matchms_refs),
           "--matchms-queries", str(a.matchms_queries), "--flash-refs", str(a.flash_refs)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    print(f"[{size_label(size)}] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, TQDM_DISABLE="1"))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    res = workdir / f"{name}.json"
    if p.returncode != 0 or not res.exists():
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout).strip() else f"exit {p.returncode}"}
    out = json.loads(res.read_text())
    out["wall_s"] = wall
    print(f"[{size_label(size)}] {name} done in {wall:.1f} s", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k", help="Comma-separated library sizes, e.g. 100k,1M,2.4M.")
    ap.add_argument("--queries", type=int, default=1000, help="Queries for fastspec batch throughput and recall.")
    ap.add_argument("--latency-queries", type=int, default=200, help="Single-call latency sample (fastspec).")
    ap.add_argument("--peer-queries", type=int, default=200, help="Queries for ms_entropy (one call each).")
    ap.add_argument("--matchms-refs", type=int, default=5000, help="Library subset for matchms brute force.")
    ap.add_argument("--matchms-queries", type=int, default=5)
    ap.add_argument("--flash-refs", type=int, default=50_000, help="Library subset indexed by matchms FlashSimilarity.")
    ap.add_argument("--threads", type=int, default=None, help="fastspec threads (default: all cores).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peers", action="store_true", help="Skip ms_entropy and matchms.")
    ap.add_argument("--timeout", type=float, default=3600.0, help="Per-phase timeout (s).")
    ap.add_argument("--out", default=str(RESULTS / "search"), help="Output stem (.json and .md are added).")
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.phase:
        if a.threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
        res = PHASES[a.phase](a)
        (Path(a.workdir) / f"{a.phase}.json").write_text(json.dumps(res, indent=1, default=float))
        return

    from fastspec.cli.demo_cmd import machine_info

    sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_info(a.threads),
              "versions": _versions(), "settings": {"tolerance_da": TOLERANCE, "precursor_tolerance_da": PRECURSOR_TOLERANCE,
                                                    "k": K, "queries": a.queries, "threads": a.threads,
                                                    "library": "massbank-grown" if MASSBANK.exists() else "synthetic"},
              "sizes": {}}
    for size in sizes:
        wd = Path(tempfile.mkdtemp(prefix=f"fastspec-bench-{size_label(size)}-"))
        try:
            entry = {"build": run_phase("build", a, size, wd, a.timeout)}
            if "error" not in entry["build"]:
                entry["query"] = run_phase("query", a, size, wd, a.timeout)
                if not a.no_peers:
                    entry["ms_entropy"] = run_phase("ms_entropy", a, size, wd, a.timeout)
                    entry["matchms"] = run_phase("matchms", a, size, wd, a.timeout)
            report["sizes"][size_label(size)] = entry
        finally:
            shutil.rmtree(wd, ignore_errors=True)
    report["targets"] = evaluate_targets(report)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float))
    out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))


def _versions() -> dict:
    out = {}
    for name in ("fastspec", "numpy", "numba", "faiss", "ms_entropy", "matchms"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None)
        except ImportError:
            out[name] = None
    return out


# ====================================================================================== targets and output
def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _at(report, preferred: str):
    """(size label, entry) of the preferred size, else the largest measured one."""
    sizes = report["sizes"]
    if preferred in sizes:
        return preferred, sizes[preferred]
    if not sizes:
        return None, None
    label = max(sizes, key=parse_size)
    return label, sizes[label]


def evaluate_targets(report) -> list[dict]:
    """The issue's targets, each met / missed / not measured, with the figures used."""
    t = []

    def add(name, size, ok, figures):
        t.append({"target": name, "size": size, "status": "not measured" if ok is None else ("met" if ok else "missed"),
                  "figures": figures})

    lbl, e = _at(report, "2.4M")
    for metric in ("open-entropy", "open-cosine"):
        ms = _get(e, "query", "modes", metric, "batch_mean_ms")
        peer = _get(e, "ms_entropy", "modes", "open", "mean_ms")
        ok = None if ms is None else (ms <= 0.5 and (peer is None or peer / ms >= 3))
        add(f"{metric}: mean <= 0.5 ms at 2.4M and >= 3x ms_entropy open", lbl, ok,
            {"fastspec_ms": ms, "ms_entropy_open_ms": peer, "ratio": None if not (ms and peer) else peer / ms})
    ms = _get(e, "query", "modes", "analog", "batch_mean_ms")
    peer = _get(e, "ms_entropy", "modes", "hybrid", "mean_ms")
    add("analog top-10: mean <= 5 ms and >= 5x ms_entropy hybrid", lbl,
        None if ms is None else (ms <= 5 and (peer is None or peer / ms >= 5)),
        {"fastspec_ms": ms, "ms_entropy_hybrid_ms": peer, "ratio": None if not (ms and peer) else peer / ms})
    qps = _get(e, "query", "modes", "identity", "qps")
    ms = _get(e, "query", "modes", "identity", "batch_mean_ms")
    peer = _get(e, "ms_entropy", "modes", "identity", "mean_ms")
    ratio = None if not (ms and peer) else peer / ms
    add("identity: >= 20x ms_entropy or >= 20k queries/s", lbl,
        None if qps is None else (qps >= 20_000 or (ratio is not None and ratio >= 20)),
        {"fastspec_qps": qps, "ms_entropy_identity_ms": peer, "ratio": ratio})
    per_m = [(l, _get(v, "build", "build_s_per_million")) for l, v in report["sizes"].items()]
    per_m = [(l, x) for l, x in per_m if x is not None]
    add("build <= 30 s per million spectra", ",".join(l for l, _ in per_m),
        None if not per_m else all(x <= 30 for _, x in per_m), {l: x for l, x in per_m})
    opens = [(l, _get(v, "query", "open_s")) for l, v in report["sizes"].items()]
    opens = [(l, x) for l, x in opens if x is not None]
    add("open <= 1 s", ",".join(l for l, _ in opens), None if not opens else all(x <= 1 for _, x in opens),
        {l: x for l, x in opens})
    lbl1, e1 = _at(report, "1M")
    r = _get(e1, "query", "query_peak_rss")
    add("RSS while querying <= 1.5 GB at 1M", lbl1, None if r is None else r <= 1.5e9, {"peak_rss_bytes": r})
    rows = _get(e, "query", "faiss", "analog") or []
    exact_ms = _get(e, "query", "modes", "analog", "batch_mean_ms")
    good = [x for x in rows if isinstance(x, dict) and x.get("recall@10", 0) >= 0.99]
    fastest = min(good, key=lambda x: x["batch_mean_ms"]) if good else None
    ok = None if not rows or exact_ms is None else bool(fastest and fastest["batch_mean_ms"] < exact_ms)
    add("FAISS recall@10 >= 0.99 at a speed beating exact analog", lbl, ok,
        {"exact_analog_ms": exact_ms, "best": fastest})
    return t


def _f(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def to_markdown(r) -> str:
    m = r["machine"]
    L = [f"# Library search benchmark", "",
         f"{r['date']} · {m['cpu']} · {m['cores']} cores · threads={r['settings']['threads'] or 'all'} · "
         f"library: {r['settings']['library']} · tolerance {TOLERANCE} Da, precursor {PRECURSOR_TOLERANCE} Da, k={K}", "",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), ""]
    for lbl, e in r["sizes"].items():
        b, q = e.get("build", {}), e.get("query", {})
        L += [f"## {lbl} spectra", ""]
        if "error" in b:
            L += [f"build failed: {b['error']}", ""]
            continue
        L += ["| | fastspec | ms_entropy |", "|---|---|---|",
              f"| build (s) | {_f(b.get('build_s'))} | {_f(_get(e, 'ms_entropy', 'build_s'))} |",
              f"| build s / million | {_f(b.get('build_s_per_million'))} | {_f(_get(e, 'ms_entropy', 'build_s_per_million'))} |",
              f"| build peak RSS (GB) | {_f(_gb(b.get('build_peak_rss')))} | {_f(_gb(_get(e, 'ms_entropy', 'build_peak_rss')))} |",
              f"| index on disk (MB) | {_f(b.get('index_bytes', 0) / 1e6, '.0f')} | — |",
              f"| open (s) | {_f(q.get('open_s'))} | — |",
              f"| peak RSS while querying (GB) | {_f(_gb(q.get('query_peak_rss')))} | {_f(_gb(_get(e, 'ms_entropy', 'query_peak_rss')))} |", ""]
        if "error" in q:
            L += [f"query phase failed: {q['error']}", ""]
        L += ["| mode | q/s (batch) | mean ms (batch) | single call mean / median / p99 ms | top-1 = source |",
              "|---|---|---|---|---|"]
        for mode, v in (q.get("modes") or {}).items():
            if "error" in v:
                L.append(f"| {mode} | error: {v['error']} | | | |")
                continue
            sc = v["single_call"]
            L.append(f"| {mode} | {v['qps']:,.0f} | {v['batch_mean_ms']:.3f} | {sc['mean_ms']:.2f} / {sc['median_ms']:.2f} / "
                     f"{sc['p99_ms']:.2f} | {v['top1_source']:.1%} |")
        for mode, v in (_get(e, "ms_entropy", "modes") or {}).items():
            L.append(f"| ms_entropy {mode} | {v['qps']:,.0f} | — | {v['mean_ms']:.2f} / {v['median_ms']:.2f} / {v['p99_ms']:.2f} | "
                     f"{v['top1_source']:.1%} |")
        mm = e.get("matchms") or {}
        for key, n_key in (("modified_cosine_greedy", "n_refs"), ("flash_similarity_fragment", "flash_refs"),
                           ("flash_similarity_hybrid", "flash_refs")):
            v = mm.get(key)
            if v and "extrapolated_ms_per_query" in v:
                L.append(f"| matchms {key} (extrapolated from {mm[n_key]:,} refs) | {1e3 / v['extrapolated_ms_per_query']:,.2f} | "
                         f"{v['extrapolated_ms_per_query']:,.1f} | — | — |")
        if "error" in mm:
            L.append(f"| matchms | error: {mm['error']} | | | |")
        if "error" in (e.get("ms_entropy") or {}):
            L.append(f"| ms_entropy | error: {e['ms_entropy']['error']} | | | |")
        L.append("")
        for mode, rows in (q.get("faiss") or {}).items():
            if isinstance(rows, dict):
                L += [f"FAISS {mode}: {rows.get('error')}", ""]
                continue
            exact = _get(q, "modes", mode, "batch_mean_ms")
            L += [f"FAISS ({mode}, exact {_f(exact)} ms/query):", "", "| nprobe | q/s | mean ms | recall@10 | recall@100 |",
                  "|---|---|---|---|---|"]
            for x in rows:
                if "error" in x:
                    L.append(f"| {x['nprobe']} | error: {x['error']} | | | |")
                else:
                    L.append(f"| {x['nprobe']} | {x['qps']:,.0f} | {x['batch_mean_ms']:.3f} | {x['recall@10']:.4f} | {x['recall@100']:.4f} |")
            L.append("")
    L += ["## Targets", "", "| target | size | status | figures |", "|---|---|---|---|"]
    for t in r.get("targets", []):
        figs = ", ".join(f"{k}={_fig(v)}" for k, v in t["figures"].items())
        L.append(f"| {t['target']} | {t['size'] or '—'} | **{t['status']}** | {figs} |")
    L += ["", "Batch = one `search` call for all queries (per-query mean = time / queries). Single call = one query per call,",
          "including Python overhead. ms_entropy: one Python call per query (clean + search + top-k), single thread.",
          "matchms figures are extrapolated linearly from a library subset. Peak RSS is VmHWM of the phase's own process",
          "(build includes the in-memory input spectra)."]
    return "\n".join(L) + "\n"


def _gb(x):
    return None if x is None else x / 1e9


def _fig(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fig(x)}" for k, x in v.items()) + "}"
    return str(v)


if __name__ == "__main__":
    main()
