#!/usr/bin/env python
"""Spectrum file reading benchmark: fastspec vs matchms (and pyteomics) in the same process run.

* MGF: the shared MassBank sample (1000 spectra) repeated in memory to ``--repeat`` copies in a temp
  file (default 30 -> 30,000 spectra); fastspec.io.read (best of 3 after a warm-up that compiles the
  numba scanner), matchms ``load_from_mgf`` (default metadata harmonisation, as users call it),
  pyteomics ``mgf.MGF`` iteration (peaks and params only, no harmonisation).
* MSP: the shared sample (500 spectra) repeated likewise; fastspec vs matchms ``load_from_msp``.
* parquet: the shared 64,463-spectrum MassBank parquet, fastspec.io.read (best of 3).
* write: fastspec writing the parquet spectra as MGF, parquet and HDF5 (one run each).

    python bench/io.py                 # defaults
    python bench/io.py --repeat 60     # 60,000 MGF spectra

Writes bench/results/io.json and bench/results/io.md. Target: MGF read >= 10x matchms load_from_mgf.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("FASTSPEC_SHARED", ROOT.parent / "shared")) / "data" / "massbank"
TARGET = 10.0


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_text(kind: str, src: Path, repeat: int, tmp: Path, peers: bool) -> dict:
    import fastspec.io as fio

    data = src.read_bytes()
    path = tmp / f"bench.{kind}"
    path.write_bytes((data if data.endswith(b"\n\n") else data + b"\n") * repeat)
    fio.read(path)  # warm-up: numba compiles (or loads its cache)
    t_fs, sp = timed(lambda: fio.read(path), 3)
    row = {"file_mb": path.stat().st_size / 1e6, "n_spectra": len(sp), "fastspec_s": t_fs,
           "fastspec_spectra_per_s": len(sp) / t_fs}
    if peers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "mgf":
                    from matchms.importing import load_from_mgf as load
                else:
                    from matchms.importing import load_from_msp as load
                t_mm, ref = timed(lambda: list(load(str(path))), 3)  # best of 3, as fastspec
            row.update(matchms_s=t_mm, matchms_n=len(ref), speedup_vs_matchms=t_mm / t_fs)
        except ImportError as e:
            row["matchms"] = f"skipped: {e}"
        if kind == "mgf":
            try:
                from pyteomics import mgf

                def pyteo():
                    with mgf.MGF(str(path), convert_arrays=1) as r:
                        return sum(1 for _ in r)

                t_py, n_py = timed(pyteo, 3)
                row.update(pyteomics_s=t_py, pyteomics_n=n_py, speedup_vs_pyteomics=t_py / t_fs)
            except ImportError as e:
                row["pyteomics"] = f"skipped: {e}"
    return row


def bench_parquet(src: Path, tmp: Path) -> dict:
    import fastspec.io as fio

    fio.read(src)
    t_read, sp = timed(lambda: fio.read(src), 3)
    row = {"n_spectra": len(sp), "n_peaks": int(sp.offsets[-1]), "read_s": t_read}
    for ext in ("mgf", "parquet", "h5"):
        out = tmp / f"write.{ext}"
        t_w, _ = timed(lambda: fio.write(sp, out))
        t_r, back = timed(lambda: fio.read(out))
        assert len(back) == len(sp)
        row[f"write_{ext}_s"] = t_w
        row[f"read_{ext}_s"] = t_r
        row[f"{ext}_mb"] = out.stat().st_size / 1e6
    return row


def markdown(res: dict) -> str:
    m, s, p = res["mgf"], res.get("msp", {}), res.get("parquet", {})
    lines = [
        "# Spectrum file reading",
        "",
        f"{res['date']} - {res['machine']} - fastspec {res['versions']['fastspec']}, matchms "
        f"{res['versions'].get('matchms')}, pyteomics {res['versions'].get('pyteomics')}",
        "",
        "| file | spectra | fastspec (s) | spectra/s | matchms (s) | speed-up | pyteomics (s) | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def num(r, key, fmt):
        return format(r[key], fmt) if key in r else "-"

    for name, r in (("MGF", m), ("MSP", s)):
        if not r:
            continue
        lines.append(
            f"| {name} ({r['file_mb']:.0f} MB) | {r['n_spectra']:,} | {r['fastspec_s']:.3f} | "
            f"{r['fastspec_spectra_per_s']:,.0f} | {num(r, 'matchms_s', '.2f')} | "
            f"{num(r, 'speedup_vs_matchms', '.1f')}x | {num(r, 'pyteomics_s', '.2f')} | "
            f"{num(r, 'speedup_vs_pyteomics', '.1f')}x |".replace("-x", "-"))
    if p:
        lines += [
            "",
            f"MassBank parquet, {p['n_spectra']:,} spectra / {p['n_peaks']:,} peaks: read {p['read_s']:.3f} s.",
            "",
            "| format | write (s) | read (s) | size (MB) |",
            "|---|---:|---:|---:|",
        ]
        for ext in ("mgf", "parquet", "h5"):
            lines.append(f"| {ext} | {p[f'write_{ext}_s']:.2f} | {p[f'read_{ext}_s']:.3f} | {p[f'{ext}_mb']:.1f} |")
    sp = m.get("speedup_vs_matchms")
    if sp is not None:
        lines += ["", f"Target MGF >= {TARGET:.0f}x matchms `load_from_mgf`: "
                      f"{'met' if sp >= TARGET else 'MISSED'} ({sp:.1f}x)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30, help="copies of the 1000-spectrum MGF (default 30)")
    ap.add_argument("--no-peers", action="store_true", help="skip matchms / pyteomics")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import fastspec

    versions = {"fastspec": fastspec.__version__, "python": sys.version.split()[0]}
    from importlib import metadata

    for mod in ("matchms", "pyteomics", "numpy", "pyarrow", "numba", "h5py"):
        try:
            versions[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            versions[mod] = None
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
           "versions": versions, "repeat": args.repeat}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res["mgf"] = bench_text("mgf", SHARED / "massbank_sample.mgf", args.repeat, tmp, not args.no_peers)
        print(f"mgf: {res['mgf']}", file=sys.stderr)
        res["msp"] = bench_text("msp", SHARED / "massbank_sample.msp", max(1, args.repeat // 2), tmp,
                                not args.no_peers)
        print(f"msp: {res['msp']}", file=sys.stderr)
        res["parquet"] = bench_parquet(SHARED / "massbank_open.parquet", tmp)
        print(f"parquet: {res['parquet']}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "io.json").write_text(json.dumps(res, indent=1))
    (args.out / "io.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
