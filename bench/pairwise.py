#!/usr/bin/env python
"""Pairwise similarity throughput: fastspec vs matchms and ms_entropy, in one process run.

Data: ``--n`` (default 2,000) random MassBank spectra with peaks and a precursor, raw (no
preprocessing), from the shared parquet. For every metric:

* fastspec ``score_matrix`` on the all-vs-all ``n x n`` block (4M pairs by default), inputs prepared
  once (preparation timed separately), single-threaded (``threads=1``) and with all threads; best
  of ``--repeat`` runs after a warm-up (numba compilation / cache load is excluded). Modified cosine
  is also timed in top-k mode (``k=10``).
* matchms 0.33 (single-threaded, pure-Python pair loop): ``.pair`` on ``--peer-pairs`` random pairs
  of the block, and ``.matrix`` (best of 2) on a ``--matrix-n`` x ``--matrix-n`` corner of the block,
  after a warm-up that compiles its numba helpers. Reported per pair.
* ms_entropy ``calculate_entropy_similarity`` / ``calculate_unweighted_entropy_similarity`` (its C
  back end, default cleaning) in a loop over ``--peer-pairs`` random pairs of the block, peaks as
  float32 arrays built beforehand.
* Pair loops report the rate of the fastest of 5 equal slices: the machine may be shared, and a
  slice disturbed by other work would otherwise understate the peer.

The MGF parsing ratio vs ``matchms.importing.load_from_mgf`` is taken from bench/results/io.json
(bench/io.py) when present, else measured quickly here.

    python bench/pairwise.py               # defaults, ~1-2 minutes on 2 cores
    python bench/pairwise.py --n 1000      # quicker

Timing runs hold the shared benchmark lock (``$FASTSPEC_BENCH_LOCK``, default ../notes/bench.lock if
that folder exists) so concurrent benchmarks do not disturb each other.
Writes bench/results/pairwise.json and bench/results/pairwise.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("FASTSPEC_SHARED", ROOT.parent / "shared")) / "data" / "massbank"
METRICS = ["cosine", "modified_cosine", "neutral_loss_cosine", "entropy", "unweighted_entropy", "binned_cosine"]
MATCHMS = {"cosine": "CosineGreedy", "modified_cosine": "ModifiedCosineGreedy",
           "neutral_loss_cosine": "NeutralLossesCosine"}
TOLERANCE = {"entropy": 0.02, "unweighted_entropy": 0.02}  # ms_entropy's default; 0.1 Da elsewhere
TARGETS = {"modcos_pairs_per_s_per_core": 5e6, "modcos_vs_matchms_matrix_per_core": 100.0,
           "mgf_vs_load_from_mgf": 10.0}


@contextlib.contextmanager
def bench_lock(path: Path | None):
    """Hold an exclusive flock on ``path`` (the same lock ``flock <path> cmd`` takes)."""
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        t0 = time.perf_counter()
        fcntl.flock(fh, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if waited > 1:
            print(f"waited {waited:.0f} s for {path}", file=sys.stderr)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_chunk_rate(fn, items: list, chunks: int = 5) -> tuple[float, list]:
    """Items per second of the fastest of ``chunks`` equal slices (robust to other load on a shared
    machine), and every result in order."""
    out, best = [], 0.0
    for part in np.array_split(np.arange(len(items)), chunks):
        t0 = time.perf_counter()
        res = [fn(items[t]) for t in part]
        dt_ = time.perf_counter() - t0
        best = max(best, len(part) / dt_ if dt_ > 0 else 0.0)
        out += res
    return best, out


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("fastspec", "numpy", "numba", "matchms", "ms_entropy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None)
            if out[mod] is None and mod == "ms_entropy":
                from ms_entropy.version import __version__ as v
                out[mod] = v
        except ImportError:
            out[mod] = None
    return out


def load(n: int, seed: int):
    from fastspec.io import read

    sp = read(SHARED / "massbank_open.parquet")
    ok = np.flatnonzero(np.isfinite(sp.precursor_mz) & (sp.n_peaks > 0))
    rows = np.sort(np.random.default_rng(seed).choice(ok, size=n, replace=False))
    return sp.take(rows)


def bench_fastspec(sp, metric: str, repeat: int, n_threads: int) -> dict:
    from fastspec.similarity import prepare, score_matrix

    tol = TOLERANCE.get(metric, 0.1)
    t0 = time.perf_counter()
    p = prepare(sp, metric, tol)
    prep_s = time.perf_counter() - t0
    head = p.take(np.arange(min(50, len(sp))))
    for th in (1, n_threads):  # warm-up: numba compile / cache load of every variant timed (serial and
        score_matrix(head, p, threads=th)  # parallel kernels are separate functions)
        score_matrix(head, p, k=10, threads=th)
    n_pairs = len(p) ** 2
    row = {"tolerance": tol, "n_pairs": n_pairs, "prepare_s": prep_s,
           "mean_peaks_prepared": float(np.diff(p.offsets).mean())}
    for label, th in (("1", 1), ("all", n_threads)):
        s = best_of(lambda: score_matrix(p, p, threads=th), repeat)
        row[f"dense_s_threads_{label}"] = s
        row[f"pairs_per_s_threads_{label}"] = n_pairs / s
    if metric == "modified_cosine":
        for label, th in (("1", 1), ("all", n_threads)):
            s = best_of(lambda: score_matrix(p, p, k=10, threads=th), repeat)
            row[f"topk10_pairs_per_s_threads_{label}"] = n_pairs / s
    return row


def bench_matchms(sp, metric: str, n_pairs: int, matrix_n: int, seed: int) -> dict:
    import matchms.similarity as msim
    import pyarrow as pa

    from fastspec.similarity import score_pairs

    sim = getattr(msim, MATCHMS[metric])(tolerance=0.1)
    small = sp.with_metadata(pa.table({"id": pa.array([str(i) for i in range(len(sp))], pa.string())}))
    ms = small.to_matchms()
    rng = np.random.default_rng(seed)
    ia, ib = rng.integers(0, len(sp), n_pairs), rng.integers(0, len(sp), n_pairs)
    # warm-up: matchms' numba helpers are not cached and compile lazily per code path (first pairs with
    # matches, shifted pairs, ...); a few hundred pairs settle them outside the timing
    warm = rng.integers(0, len(sp), (400, 2))
    for a, b in warm:
        sim.pair(ms[a], ms[b])
    sim.matrix(ms[:10], ms[:10], progress_bar=False)
    rate, out = best_chunk_rate(lambda t: sim.pair(ms[ia[t]], ms[ib[t]]), list(range(n_pairs)))
    want = np.array([float(o["score"]) for o in out])
    got, _ = score_pairs(sp.take(ia), sp.take(ib), metric, 0.1)
    sub = ms[:matrix_n]
    matrix_s = best_of(lambda: sim.matrix(sub, sub, progress_bar=False), 2)
    return {"pair_n": n_pairs, "pair_pairs_per_s": rate, "matrix_n": matrix_n * matrix_n, "matrix_s": matrix_s,
            "matrix_pairs_per_s": matrix_n ** 2 / matrix_s, "max_abs_diff_vs_fastspec": float(np.abs(want - got).max())}


def bench_ms_entropy(sp, metric: str, n_pairs: int, seed: int) -> dict:
    import ms_entropy

    from fastspec.similarity import score_pairs

    fn = (ms_entropy.calculate_entropy_similarity if metric == "entropy"
          else ms_entropy.calculate_unweighted_entropy_similarity)
    peaks = [np.ascontiguousarray(np.stack([sp.mz[sp.offsets[i]:sp.offsets[i + 1]],
                                            sp.intensity[sp.offsets[i]:sp.offsets[i + 1]]], 1), dtype=np.float32)
             for i in range(len(sp))]
    rng = np.random.default_rng(seed)
    ia, ib = rng.integers(0, len(sp), n_pairs), rng.integers(0, len(sp), n_pairs)
    rate, out = best_chunk_rate(lambda t: fn(peaks[ia[t]], peaks[ib[t]], ms2_tolerance_in_da=0.02),
                                list(range(n_pairs)))
    got, _ = score_pairs(sp.take(ia), sp.take(ib), metric, 0.02)
    return {"pair_n": n_pairs, "pair_pairs_per_s": rate, "max_abs_diff_vs_fastspec": float(np.abs(np.array(out) - got).max())}


def mgf_ratio(quick: bool) -> dict:
    io_json = RESULTS / "io.json"
    if io_json.exists():
        r = json.loads(io_json.read_text())["mgf"]
        return {"source": "bench/results/io.json", "n_spectra": r["n_spectra"],
                "fastspec_s": r["fastspec_s"], "matchms_s": r.get("matchms_s"),
                "speedup_vs_matchms": r.get("speedup_vs_matchms")}
    if not quick:
        return {}
    import tempfile

    from matchms.importing import load_from_mgf

    from fastspec.io import read

    src = (SHARED / "massbank_sample.mgf").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mgf"
        path.write_bytes(src * 5)
        read(path)
        t_fs = best_of(lambda: read(path), 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_mm = best_of(lambda: list(load_from_mgf(str(path))), 1)
    return {"source": "measured here (5x massbank_sample.mgf)", "fastspec_s": t_fs, "matchms_s": t_mm,
            "speedup_vs_matchms": t_mm / t_fs}


def markdown(res: dict) -> str:
    th = res["threads_all"]
    lines = [
        "# Pairwise similarity throughput",
        "",
        f"{res['date']} - `{res['machine']}` - {res['cpu_count']} CPUs - fastspec {res['versions']['fastspec']}, "
        f"matchms {res['versions']['matchms']}, ms_entropy {res['versions']['ms_entropy']}, "
        f"numba {res['versions']['numba']}",
        "",
        f"fastspec: all-vs-all dense `score_matrix` on {res['n_spectra']:,} raw MassBank spectra "
        f"({res['n_spectra'] ** 2 / 1e6:.2g}M pairs, mean {res['mean_peaks']:.1f} peaks), prepared once. "
        f"Peers: per-pair rates on subsets of the same block (single-threaded; pair loops: fastest of 5 slices). "
        f"Tolerance 0.1 Da (entropy 0.02 Da). fastspec: best of {res['repeat']} runs. "
        f"Load average (1 min) at start/end: {res['loadavg_start'][0]:.2f} / {res['loadavg_end'][0]:.2f} "
        f"(shared machine).",
        "",
        f"| metric | fastspec 1 thread (pairs/s) | fastspec {th} threads (pairs/s) | prepare (s) | "
        "matchms .pair (pairs/s) | matchms .matrix (pairs/s) | ms_entropy loop (pairs/s) | "
        "speed-up per core vs peer matrix/loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for metric in METRICS:
        f = res["fastspec"][metric]
        mm = res["matchms"].get(metric, {})
        me = res["ms_entropy"].get(metric, {})
        peer = mm.get("matrix_pairs_per_s") or me.get("pair_pairs_per_s")
        speed = f"{f['pairs_per_s_threads_1'] / peer:,.0f}x" if peer else "-"
        def rate(d, key):
            return f"{d[key]:,.0f}" if key in d else "-"

        lines.append(
            f"| {metric} | {f['pairs_per_s_threads_1']:,.0f} | {f['pairs_per_s_threads_all']:,.0f} | "
            f"{f['prepare_s']:.3f} | {rate(mm, 'pair_pairs_per_s')} | {rate(mm, 'matrix_pairs_per_s')} | "
            f"{rate(me, 'pair_pairs_per_s')} | {speed} |")
    f = res["fastspec"]["modified_cosine"]
    lines += ["", f"Modified cosine top-10 (no dense matrix): {f['topk10_pairs_per_s_threads_1']:,.0f} pairs/s on 1 "
                  f"thread, {f['topk10_pairs_per_s_threads_all']:,.0f} on {th}.", "",
              "| target | value | status |", "|---|---:|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['name']} | {t['value_str']} | {'met' if t['met'] else 'MISSED' if t['met'] is False else 'n/a'} |")
    lines += ["", "Score agreement on the timed peer pairs (max |fastspec - peer|): " + ", ".join(
        f"{m} {r['max_abs_diff_vs_fastspec']:.1e}" for d in (res["matchms"], res["ms_entropy"]) for m, r in d.items())
        + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="spectra in the all-vs-all block")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-pairs", type=int, default=5000)
    ap.add_argument("--matrix-n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--lock", type=Path, default=Path(os.environ.get("FASTSPEC_BENCH_LOCK", ROOT.parent / "notes" / "bench.lock")))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    lock = args.lock if args.lock.parent.is_dir() else None

    import numba

    sp = load(args.n, args.seed)
    n_threads = int(numba.config.NUMBA_NUM_THREADS)
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip(),
           "cpu_count": os.cpu_count(), "threads_all": n_threads, "versions": versions(),
           "n_spectra": len(sp), "mean_peaks": float(sp.n_peaks.mean()), "seed": args.seed,
           "repeat": args.repeat,
           "fastspec": {}, "matchms": {}, "ms_entropy": {}}
    with bench_lock(lock):
        res["loadavg_start"] = os.getloadavg()
        for metric in METRICS:
            res["fastspec"][metric] = r = bench_fastspec(sp, metric, args.repeat, n_threads)
            print(f"fastspec {metric}: {r['pairs_per_s_threads_1']:,.0f} pairs/s (1 thread), "
                  f"{r['pairs_per_s_threads_all']:,.0f} ({n_threads} threads)", flush=True)
        if not args.no_peers:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for metric in MATCHMS:
                    res["matchms"][metric] = r = bench_matchms(sp, metric, args.peer_pairs, args.matrix_n, args.seed)
                    print(f"matchms {metric}: pair {r['pair_pairs_per_s']:,.0f}/s, matrix "
                          f"{r['matrix_pairs_per_s']:,.0f}/s (max diff {r['max_abs_diff_vs_fastspec']:.1e})", flush=True)
                for metric in ("entropy", "unweighted_entropy"):
                    res["ms_entropy"][metric] = r = bench_ms_entropy(sp, metric, args.peer_pairs, args.seed)
                    print(f"ms_entropy {metric}: {r['pair_pairs_per_s']:,.0f}/s "
                          f"(max diff {r['max_abs_diff_vs_fastspec']:.1e})", flush=True)
        res["mgf"] = mgf_ratio(quick=not args.no_peers)
        res["loadavg_end"] = os.getloadavg()

    mod = res["fastspec"]["modified_cosine"]["pairs_per_s_threads_1"]
    mm = res["matchms"].get("modified_cosine", {}).get("matrix_pairs_per_s")
    mgf = res["mgf"].get("speedup_vs_matchms")
    res["targets"] = [
        {"name": "modified cosine >= 5M pairs/s per core", "value": mod, "value_str": f"{mod / 1e6:.2f}M pairs/s",
         "met": mod >= TARGETS["modcos_pairs_per_s_per_core"]},
        {"name": ">= 100x matchms ModifiedCosineGreedy.matrix per core", "value": mod / mm if mm else None,
         "value_str": f"{mod / mm:,.0f}x" if mm else "-",
         "met": (mod / mm >= TARGETS["modcos_vs_matchms_matrix_per_core"]) if mm else None},
        {"name": "MGF parsing >= 10x matchms load_from_mgf", "value": mgf,
         "value_str": f"{mgf:.1f}x ({res['mgf'].get('source')})" if mgf else "-",
         "met": (mgf >= TARGETS["mgf_vs_load_from_mgf"]) if mgf else None},
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairwise.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (args.out / "pairwise.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
