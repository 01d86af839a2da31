#!/usr/bin/env python
"""How much a synthetic library looks like a real one: ``fastspec.synth`` against MassBank.

The pure synthetic generator (``synth.generate`` without a seed library) at MassBank's size and
spectra-per-molecule ratio (64,463 spectra, 5,107 molecules) and at the demo's settings (200k spectra,
40 per molecule), side by side with the shared MassBank library, raw peaks as stored: peaks per
spectrum (and their growth with the precursor mass), fragment m/z, how concentrated the intensity is,
precursor-dominated spectra, fragments and neutral losses shared across molecules, formula buckets,
spectra per molecule and adducts.

    python bench/synth_realism.py

Writes bench/results/synth_realism.json and bench/results/synth_realism.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MASSBANK = Path(os.environ.get("FASTSPEC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / \
    "data" / "massbank" / "massbank_open.parquet"
QUANTILES = (5, 25, 50, 75, 95)
#: neutral losses checked as "a peak at precursor m/z - loss" (Da)
LOSSES = {"H2O": 18.010565, "NH3": 17.026549, "CO2": 43.989829}


def _quantiles(x) -> list[float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return [float(v) for v in np.percentile(x, QUANTILES)] if x.size else [float("nan")] * len(QUANTILES)


def library_stats(spectra, molecule, formula, adduct, conditions=()) -> dict:
    """Distribution figures of one library (raw peaks as given); ``molecule``, ``formula``, ``adduct``:
    one label per spectrum (None unknown)."""
    off = np.asarray(spectra.offsets)
    mz = np.asarray(spectra.mz, np.float64)
    it = np.asarray(spectra.intensity, np.float64)
    pmz = np.asarray(spectra.precursor_mz, np.float64)
    n = np.diff(off)
    ns = n.shape[0]
    seg = np.repeat(np.arange(ns), n)
    has = n > 0
    out: dict = {"n_spectra": ns, "peaks_per_spectrum": _quantiles(n), "peaks_mean": float(n.mean()),
                 "share_le_3_peaks": float((n <= 3).mean())}
    out["median_peaks_by_precursor"] = {
        f"{lo}-{hi}": float(np.median(n[(pmz >= lo) & (pmz < hi)])) if ((pmz >= lo) & (pmz < hi)).any() else None
        for lo, hi in ((0, 200), (300, 400), (600, 900))}
    out["fragment_mz"] = _quantiles(mz)
    out["share_mz_below_50"] = float((mz < 50).mean())
    p = pmz[seg]
    out["mz_over_precursor"] = _quantiles(mz / p)
    # the precursor: present (within 0.01), and the base peak
    base = np.zeros(ns)
    base[has] = np.maximum.reduceat(it, off[:-1][has])
    rel = it / np.where(base[seg] > 0, base[seg], np.nan)
    at_prec = np.abs(mz - p) <= 0.01
    known = np.isfinite(pmz) & has
    present = np.bincount(seg[at_prec], minlength=ns) > 0
    is_base = np.bincount(seg[at_prec & (rel >= 1.0)], minlength=ns) > 0
    out["share_precursor_peak"] = float(present[known].mean())
    out["share_precursor_base_peak"] = float(is_base[known].mean())
    out["share_peaks_below_1pct_of_base"] = float((rel < 0.01).mean())
    # intensity concentration: peaks holding 90% of the total, and the spectral entropy (nats)
    tot = np.bincount(seg, weights=it, minlength=ns)
    order = np.lexsort((-it, seg))
    cum = np.cumsum(it[order])
    start = np.concatenate([[0.0], cum])[off[:-1]]
    before = cum - it[order] - start[seg]
    need90 = np.bincount(seg, weights=(before < 0.9 * tot[seg]).astype(np.float64), minlength=ns)
    out["median_peaks_holding_90pct"] = float(np.median(need90[has]))
    pr = it / np.where(tot[seg] > 0, tot[seg], np.nan)
    ent = np.maximum(-np.bincount(seg, weights=np.where(pr > 0, pr * np.log(pr), 0.0), minlength=ns), 0.0)
    out["spectral_entropy"] = _quantiles(ent[has])
    for name, loss in LOSSES.items():
        hit = np.abs(mz - (p - loss)) <= 0.01
        out[f"share_{name}_loss_peak"] = float((np.bincount(seg[hit], minlength=ns) > 0).mean())
    # fragments shared across molecules: (molecule, 0.01 Da bin) pairs in bins that >= 5% of molecules hold
    mol = np.array(["" if m is None else str(m) for m in molecule], dtype=object)
    known_mol = mol != ""
    mcode = np.full(ns, -1, np.int64)
    mcode[known_mol] = np.unique(mol[known_mol], return_inverse=True)[1]
    n_mol = int(mcode.max()) + 1
    kp = known_mol[seg]  # peaks of spectra with a molecule key
    pairs = np.unique(mcode[seg[kp]] * (1 << 24) + np.rint(mz[kp] * 100).astype(np.int64))
    bins, per_bin = np.unique(pairs % (1 << 24), return_counts=True)
    share = per_bin / n_mol
    lookup = dict(zip(bins.tolist(), share.tolist()))
    out["share_pairs_in_bins_of_5pct_molecules"] = float(np.mean([lookup[b] >= 0.05 for b in (pairs % (1 << 24)).tolist()]))
    out["most_shared_bin"] = {"mz": float(bins[share.argmax()]) / 100, "share_of_molecules": float(share.max())}
    # formula buckets and spectra per molecule
    f = np.array(["" if x is None else str(x) for x in formula], dtype=object)
    ok = (f != "") & (mol != "")
    fcode = np.unique(f[ok], return_inverse=True)[1].astype(np.int64)
    fm = np.unique(fcode * (1 << 32) + mcode[ok])  # (formula, molecule) pairs
    mol_per_formula = np.bincount(fm >> 32)
    out["molecules"] = n_mol
    out["formulas"] = int(mol_per_formula.shape[0])
    out["share_formulas_with_isomers"] = float((mol_per_formula > 1).mean())
    out["largest_formula_bucket"] = int(mol_per_formula.max())
    out["share_spectra_in_bucket_with_another_molecule"] = float((mol_per_formula[fcode] > 1).mean())
    spm = np.bincount(mcode[known_mol])
    out["spectra_per_molecule"] = _quantiles(spm)
    out["spectra_per_molecule_cv"] = float(spm.std() / spm.mean())
    out["share_molecules_with_one_spectrum"] = float((spm == 1).mean())
    a = np.array(["" if x is None else str(x) for x in adduct], dtype=object)
    names, counts = np.unique(a, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:5]
    out["adducts"] = {str(names[i]) or "(none)": float(counts[i] / ns) for i in top}
    # spectra of a molecule at a condition (adduct, instrument type, collision energy as written) another
    # of its spectra has too: replicates rather than spectra "at different collision energies and adducts"
    cols = [mol, a] + [np.array(["" if x is None else str(x) for x in c], dtype=object) for c in conditions]
    keys = [tuple(row) for row in zip(*cols)]
    from collections import Counter

    seen = Counter(k for k, known in zip(keys, known_mol) if known)
    out["share_spectra_in_repeated_conditions"] = float(
        sum(v for v in seen.values() if v > 1) / max(1, int(np.count_nonzero(known_mol))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from fastspec import synth
    from fastspec.io import read
    from fastspec.library import canonical_formulas

    libs = {}
    t0 = time.perf_counter()
    if MASSBANK.exists():
        mb = read(str(MASSBANK), progress=False)
        libs["MassBank"] = library_stats(mb, mb.column("inchikey14"), canonical_formulas(mb.column("formula")),
                                         mb.column("adduct"), (mb.column("instrument_type"), mb.column("collision_energy")))
        size = (len(mb), len({k for k in mb.column("inchikey14") if k}))
    else:
        size = (64_463, 5_107)
    for label, n, m in ((f"synth {size[0]:,} / {size[1]:,} molecules", size[0], size[1]),
                        ("synth 200,000 (demo)", 200_000, None)):
        lib = synth.generate(n, n_molecules=m, seed=args.seed, threads=args.threads)
        libs[label] = library_stats(lib, lib.column("molecule"), canonical_formulas(lib.column("formula")),
                                    lib.column("adduct"), (lib.column("instrument_type"), lib.column("collision_energy")))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "seconds": time.perf_counter() - t0, "libraries": libs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synth_realism.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "synth_realism.md").write_text(to_markdown(report))
    print(to_markdown(report))


def _fmt(v) -> str:
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def to_markdown(report: dict) -> str:
    libs = report["libraries"]
    names = list(libs)
    keys = list(next(iter(libs.values())))
    lines = [f"# Synthetic libraries against MassBank ({report['date']})", "",
             "Raw peaks as stored or generated. Quantiles are 5 / 25 / 50 / 75 / 95%. `python bench/synth_realism.py`.", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(libs[n].get(k)) for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
