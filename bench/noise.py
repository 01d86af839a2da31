#!/usr/bin/env python
"""Noisy queries: open, analog and hybrid search of real spectra with random noise peaks added, against
ms_entropy's Flash search on the same library, in one process run.

A query whose intensity is spread over hundreds of peaks, most of them matching nothing, gives weak
thresholds: pruned bound search prunes little there (before the dense scan, open entropy ran at 0.53-0.68x
ms_entropy on such queries; docs/performance.md). This benchmark keeps that case measured.

The library is ``bench/search.py``'s: MassBank grown to ``--size`` spectra with ``fastspec.synth`` without
5% of its compounds. Queries: ``--queries`` real spectra of those held-out compounds (with a precursor m/z),
as they are and with ``N`` peaks of uniform random m/z between 50 and the precursor m/z, at 2-50% of the
base peak, added (``--noise``, e.g. ``0,100,400``). fastspec: one ``search`` call per query set (1 thread),
median of ``--repeats``; ms_entropy: one call per query (its cleaning + search), best of ``--repeats``
passes. Peers' index: ``FlashEntropySearch`` over the same (unpreprocessed) library spectra.

    python bench/noise.py                       # 500k library, 40 queries, noise 0,100,400

Writes bench/results/noise.json and bench/results/noise.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search as bs  # noqa: E402  (the library, sizes, versions and ms_entropy calls of the search benchmark)

#: fastspec mode label -> (search keyword arguments, ms_entropy method it is timed against)
MODES = {
    "open-entropy": (dict(mode="open", metric="entropy"), "open"),
    "open-cosine": (dict(mode="open", metric="cosine"), "open"),
    "analog": (dict(mode="analog"), "hybrid"),
    "hybrid": (dict(mode="hybrid", metric="entropy"), "hybrid"),
}


def add_noise(spectra, n_noise: int, seed: int):
    """``spectra`` with ``n_noise`` random peaks added to each (m/z uniform in [50, precursor m/z], intensity
    2-50% of the spectrum's base peak), peaks sorted by m/z."""
    from fastspec.spectra import Spectra

    if n_noise == 0:
        return spectra
    rng = np.random.default_rng(seed)
    mzs, its = [], []
    for i in range(len(spectra)):
        a, b = spectra.offsets[i], spectra.offsets[i + 1]
        mz = np.asarray(spectra.mz[a:b], dtype=np.float64)
        it = np.asarray(spectra.intensity[a:b], dtype=np.float64)
        top = max(float(spectra.precursor_mz[i]), 60.0)
        m2 = np.concatenate([mz, rng.uniform(50.0, top, n_noise)])
        i2 = np.concatenate([it, it.max() * rng.uniform(0.02, 0.5, n_noise)])
        order = np.argsort(m2, kind="stable")
        mzs.append(m2[order])
        its.append(i2[order])
    return Spectra.from_arrays(mzs, its, precursor_mz=np.asarray(spectra.precursor_mz),
                               metadata=spectra.metadata, charge=np.asarray(spectra.charge))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="500k", help="Library size, e.g. 500k or 2.4M.")
    ap.add_argument("--queries", type=int, default=40, help="Held-out real spectra used as queries.")
    ap.add_argument("--noise", default="0,100,400", help="Noise peaks added per query, comma-separated.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(bs.RESULTS / "noise"), help="Output stem (.json and .md are added).")
    a = ap.parse_args(argv)

    from ms_entropy import FlashEntropySearch

    from fastspec.cli.demo_cmd import machine_info
    from fastspec.library import Library, apply_pipeline

    size = bs.parse_size(a.size)
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_info(1),
              "code": bs._code_state(), "versions": bs._versions(), "loadavg_1min_start": os.getloadavg()[0],
              "settings": {"size": size, "queries": a.queries, "tolerance_da": bs.TOLERANCE, "k": bs.K,
                           "repeats": a.repeats, "seed": a.seed}, "rows": []}
    lib_sp, source, held = bs.make_library(size, a.seed, None)
    if held is None:
        raise SystemExit("needs the shared MassBank file (held-out real spectra as queries)")
    report["settings"]["library"] = source
    ok = np.flatnonzero(np.isfinite(held.precursor_mz))
    clean = held.take(np.sort(np.random.default_rng(a.seed + 5).choice(ok, min(a.queries, ok.shape[0]), replace=False)))
    with tempfile.TemporaryDirectory(prefix="fastspec-noise-") as wd:
        t0 = time.perf_counter()
        lib = Library.build(lib_sp, Path(wd) / "lib.fastspec", progress=False)
        report["fastspec_build_s"] = time.perf_counter() - t0
        o, mz, it, pmz = lib_sp.offsets, lib_sp.mz, lib_sp.intensity, lib_sp.precursor_mz
        specs = [{"precursor_mz": float(pmz[i]), "peaks": np.column_stack([mz[o[i]:o[i + 1]], it[o[i]:o[i + 1]]])
                  .astype(np.float32)} for i in np.flatnonzero(np.isfinite(pmz))]
        del lib_sp, o, mz, it, pmz
        t0 = time.perf_counter()
        es = FlashEntropySearch(max_ms2_tolerance_in_da=bs.TOLERANCE)
        es.build_index(specs)
        report["ms_entropy_build_s"] = time.perf_counter() - t0
        del specs
        for n_noise in (int(x) for x in a.noise.split(",")):
            q = add_noise(clean, n_noise, a.seed + 7 + n_noise)
            row = {"noise_peaks": n_noise, "peaks_raw": float(np.diff(q.offsets).mean()),
                   "peaks_preprocessed": float(np.diff(apply_pipeline(lib.pipeline, q, 1).offsets).mean()),
                   "fastspec_ms": {}, "ms_entropy_ms": {}}
            for label, (kw, _) in MODES.items():
                kw = dict(kw, k=bs.K, tolerance=bs.TOLERANCE, threads=1)
                lib.search(q, **kw)  # warm-up (compiles or loads the kernels, touches the index)
                times = []
                for _ in range(max(1, a.repeats)):
                    t0 = time.perf_counter()
                    lib.search(q, **kw)
                    times.append((time.perf_counter() - t0) / len(q) * 1e3)
                row["fastspec_ms"][label] = float(np.median(times))
            qo, qmz, qit, qp = q.offsets, q.mz, q.intensity, q.precursor_mz
            for method in sorted({m for _, m in MODES.values()}):
                passes = []
                for _ in range(max(1, a.repeats)):
                    total = 0.0
                    for i in range(len(q)):
                        peaks = np.column_stack([qmz[qo[i]:qo[i + 1]], qit[qo[i]:qo[i + 1]]]).astype(np.float32)
                        t0 = time.perf_counter()
                        bs._ms_entropy_call(es, method, float(qp[i]),
                                            es.clean_spectrum_for_search(precursor_mz=float(qp[i]), peaks=peaks))
                        total += time.perf_counter() - t0
                    passes.append(total / len(q) * 1e3)
                row["ms_entropy_ms"][method] = float(min(passes))
            row["ratio"] = {label: row["ms_entropy_ms"][m] / row["fastspec_ms"][label]
                            for label, (_, m) in MODES.items()}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    report["loadavg_1min_end"] = os.getloadavg()[0]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))


def to_markdown(r: dict) -> str:
    st, m = r["settings"], r["machine"]
    lines = [
        "# Noisy queries: fastspec against ms_entropy", "",
        f"{r['date']} · {m.get('cpu', '?')} · {m.get('cores', '?')} cores · library {bs.size_label(st['size'])} "
        f"({st.get('library', '?')}), fastspec build {r['fastspec_build_s']:.1f} s, ms_entropy build "
        f"{r['ms_entropy_build_s']:.1f} s · {st['queries']} held-out real spectra, with random noise peaks added · "
        f"k={st['k']}, {st['tolerance_da']} Da · 1 thread · load average (1 min) {r['loadavg_1min_start']:.2f} / "
        f"{r['loadavg_1min_end']:.2f}", "",
        "ms per query; in brackets ms_entropy's time over fastspec's (open modes against its open search, analog "
        "and hybrid against its hybrid search).", "",
        "| noise peaks | peaks raw / preprocessed | open entropy | open cosine | analog | hybrid | ms_entropy open "
        "| ms_entropy hybrid |",
        "|---:|---|---|---|---|---|---:|---:|",
    ]
    for row in r["rows"]:
        f, e, x = row["fastspec_ms"], row["ms_entropy_ms"], row["ratio"]
        cells = [f"{f[k]:.3g} ({x[k]:.2f}x)" for k in MODES]
        lines.append(f"| {row['noise_peaks']} | {row['peaks_raw']:.0f} / {row['peaks_preprocessed']:.0f} | "
                     + " | ".join(cells) + f" | {e['open']:.3g} | {e['hybrid']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
