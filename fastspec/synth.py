"""Deterministic synthetic MS/MS libraries at NIST scale, and query sets with known answers.

Two generators share one perturbation model (:func:`perturb`):

* **Pure synthetic** (:func:`generate` without ``seed_library``): ``n_molecules`` fictional CHNOPS
  molecules, each with a pool of fragments whose intensities depend on collision energy; every spectrum
  is one molecule at one adduct, collision energy and instrument. Molecules in one formula bucket
  (isomers) and mass-neighbour "analogs" inherit part of a parent's fragments (shifted by the mass
  difference above a cut), so identity, formula, open and analog search all have meaningful answers.
  Its shapes are set against MassBank (the ``_POOL`` ... ``_TOP_PEAKS`` constants;
  ``bench/synth_realism.py`` compares them): pools grow faster than the molecule's mass, so small
  molecules give few peaks; abundances are skewed, so a few peaks hold most of the intensity; the
  precursor ion dominates at low energy; molecules share common neutral losses (H2O, NH3, CO2, ...) and
  fragment ions (tropylium, phenyl, ...); some records keep only their few strongest peaks and some
  carry scores of noise peaks; spectra per molecule vary as much as MassBank's (one spectrum for ~15%
  of molecules at its ratio).
* **Grown from a real library** (``seed_library=``): every output spectrum is a perturbed copy of a
  real spectrum (m/z jitter of a few ppm, intensity noise, a collision-energy-like tilt of the
  intensities, dropped and added peaks) with a new id and the source's metadata.

Everything is vectorised numpy over fixed-size chunks, each with its own ``SeedSequence`` child, so the
same arguments give byte-identical output whatever ``threads`` is.

Synthetic metadata (pure mode)
------------------------------
``id`` ``SYN0000000``..., ``name`` ``synthetic compound <molecule>``, ``formula`` a Hill formula
(heavy-atom counts and DBE plausible), ``smiles`` a *valid but fictional* SMILES (an acyclic chain of
the formula's heavy atoms in a molecule-specific order; its hydrogens do not match the formula and it
is not a real structure), ``inchikey`` ``XXXXXXXXXXXXXX-YYYYYYYYSA-N`` with random but unique per
molecule blocks (well-formed, not the InChIKey of the SMILES), ``inchikey14`` its first block,
``adduct``, ``ion_mode``, ``charge``, ``precursor_mz``, ``instrument_type``, ``fragmentation_mode``,
``collision_energy`` (float: eV for CID instruments, normalised % for HCD), and the ground truth
``molecule`` (int64 molecule index) and ``family`` (int64: the parent molecule, or itself).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra, _gather_index, _segment_ids

__all__ = ["generate", "make_queries", "perturb", "ADDUCTS"]

#: Spectra generated per chunk (fixed: chunking must not depend on threads, for determinism).
CHUNK = 1 << 15

# monoisotopic masses (Da)
_E = 0.000548579909
_PROTON = 1.007276466621
_MASS = {"C": 12.0, "H": 1.00782503207, "N": 14.0030740048, "O": 15.99491461956, "P": 30.97376163, "S": 31.97207100}
_NA, _K, _CL = 22.9897692809, 38.96370668, 34.96885268
_H2O = 2 * _MASS["H"] + _MASS["O"]

#: name -> (ion mode, positive-mode weight inside its polarity, multiplier of M, fragment-ion shift Da).
#: Fragments of adduct ions are mostly protonated / deprotonated (NH4+, formate, acetate, chloride lose
#: the adduct first); Na+/K+ adducts keep the metal on fragments.
ADDUCTS: dict[str, tuple[str, float, int, float]] = {
    "[M+H]+": ("positive", 0.66, 1, _PROTON),
    "[M+Na]+": ("positive", 0.12, 1, _NA - _E),
    "[M+NH4]+": ("positive", 0.06, 1, _PROTON),
    "[M+H-H2O]+": ("positive", 0.06, 1, _PROTON),
    "[2M+H]+": ("positive", 0.04, 2, _PROTON),
    "[M]+": ("positive", 0.03, 1, -_E),
    "[M+K]+": ("positive", 0.03, 1, _K - _E),
    "[M-H]-": ("negative", 0.78, 1, -_PROTON),
    "[M-H2O-H]-": ("negative", 0.06, 1, -_PROTON),
    "[M+HCOO]-": ("negative", 0.07, 1, -_PROTON),
    "[M+CH3COO]-": ("negative", 0.05, 1, -_PROTON),
    "[M+Cl]-": ("negative", 0.04, 1, -_PROTON),
}

# fallback precursor m/z offsets (used when fastspec.chem.adducts is not available)
_ADDUCT_DELTA = {
    "[M+H]+": _PROTON, "[M+Na]+": _NA - _E, "[M+NH4]+": _MASS["N"] + 4 * _MASS["H"] - _E,
    "[M+H-H2O]+": _PROTON - _H2O, "[2M+H]+": _PROTON, "[M]+": -_E, "[M+K]+": _K - _E,
    "[M-H]-": -_PROTON, "[M-H2O-H]-": -_PROTON - _H2O,
    "[M+HCOO]-": _MASS["C"] + _MASS["H"] + 2 * _MASS["O"] + _E,
    "[M+CH3COO]-": 2 * _MASS["C"] + 3 * _MASS["H"] + 2 * _MASS["O"] + _E, "[M+Cl]-": _CL + _E,
}

#: instrument_type -> (weight, fragmentation mode, collision energies, energy giving full fragmentation)
_INSTRUMENTS = {
    "LC-ESI-QFT": (0.50, "HCD", (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 70, 80, 90, 100), 90.0),
    "LC-ESI-QTOF": (0.36, "CID", (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60), 55.0),
    "LC-ESI-ITFT": (0.10, "CID", (15, 25, 35, 45, 55, 65), 60.0),
    "LC-ESI-QQQ": (0.04, "CID", (10, 20, 30, 40, 50), 50.0),
}

_MZ_SCALE = 1e5  # output m/z is rounded to 1e-5 Da (what libraries record); also the exact sort key


# ====================================================================================== public API
def generate(
    n_spectra: int = 2_400_000,
    n_molecules: int | None = None,
    seed: int = 0,
    seed_library: "Spectra | str | os.PathLike | None" = None,
    polarity: str = "both",
    *,
    threads: int | None = None,
    progress: bool | None = False,
    seed_report: dict | None = None,
) -> Spectra:
    """A deterministic synthetic spectral library.

    Parameters
    ----------
    n_spectra : int
        Number of spectra (default 2.4M, NIST23 MS/MS scale).
    n_molecules : int, optional
        Number of distinct molecules (pure synthetic mode only); default ``n_spectra // 40``.
    seed : int
        Seed of the numpy ``Generator`` tree; the same arguments give byte-identical output.
    seed_library : Spectra or path, optional
        Grow this real library instead: each output spectrum is a perturbed copy of one of its MS2
        spectra (every source used about equally often, copies adjacent; MS1 / MSn records, spectra
        without peaks and those of the other polarity left out), keeping its metadata plus
        ``source_id`` and ``source_row`` (the seed spectrum's id and row among the spectra read).
    polarity : {"both", "positive", "negative"}
        Ion modes to generate (or to keep from the seed library).
    threads : int, optional
        Worker threads over chunks (output does not depend on it).
    progress : bool, optional
        tqdm progress bar over chunks on stderr (None: only when stderr is a terminal).
    seed_report : dict, optional
        With ``seed_library``, filled with what was made of it: ``n_records``, ``n_rejected`` and
        ``rejected`` (reason -> count, records the reader refused), ``left_out`` (reason -> count),
        ``n_used``, and among those used ``no_precursor`` and ``no_formula`` (identity and hybrid
        search cannot find copies without a precursor m/z, formula search those without a formula, SMILES or
        InChI).

    Returns
    -------
    Spectra
        ``n_spectra`` spectra, peaks sorted, m/z (Da) rounded to 1e-5, base peak intensity 999 in pure
        mode; see the module docstring for the metadata columns.
    """
    n_spectra = _check_count(n_spectra, "n_spectra")
    _check_memory(n_spectra)
    if polarity not in ("both", "positive", "negative"):
        raise ParameterError(f"polarity must be 'both', 'positive' or 'negative', got {polarity!r}")
    if seed_library is not None:
        if n_molecules is not None:
            raise ParameterError("n_molecules cannot be combined with seed_library (molecules come from the seed)")
        return _grow(n_spectra, seed, seed_library, polarity, threads, progress, seed_report)
    n_molecules = max(1, n_spectra // 40) if n_molecules is None else _check_count(n_molecules, "n_molecules")
    if n_molecules > n_spectra:
        raise ParameterError(f"n_molecules ({n_molecules}) cannot exceed n_spectra ({n_spectra})")
    return _synthesize(n_spectra, n_molecules, seed, polarity, threads, progress)


def make_queries(
    library: Any,
    n: int = 1000,
    seed: int = 0,
    noise: float = 1.0,
    *,
    rows: np.ndarray | None = None,
) -> tuple[Spectra, np.ndarray]:
    """Query spectra derived from library spectra, with the answer known.

    Parameters
    ----------
    library : Spectra or fastspec.Library
        The library the queries are drawn from (a Library yields its stored, preprocessed peaks).
    n : int
        Number of queries (distinct library rows, drawn uniformly; at most ``len(library)``).
    seed : int
        Seed; same arguments, same queries.
    noise : float
        Perturbation strength: 0 gives copies (m/z rounded to 1e-5 Da, as every output); 1 (default)
        jitters m/z by ~3 ppm, precursor m/z by ~2 ppm, multiplies intensities by lognormal noise (sigma
        0.2), tilts them like a collision energy change, drops ~10% of the peaks (never the base peak)
        and adds ~1 noise peak; the effects scale with it, up to 10.
    rows : ndarray of int, optional
        Use these library rows instead of drawing ``n``.

    Returns
    -------
    queries : Spectra
        With the source's metadata, ``id`` ``Q0000000``..., ``source_row`` (int64) and ``source_id`` (the
        library row and id each query was derived from). From a grown library (``seed_library``), also
        ``seed_row`` / ``seed_id``: the seed spectrum that row copies, shared by all its copies in the
        library (score answers by it, or by molecule: the copies are equally good answers).
    truth : ndarray, int64, shape (n,)
        Library row each query was derived from (molecules: the ``inchikey14`` / ``molecule`` columns).
    """
    if not 0 <= noise <= 10:  # (at 10: m/z jitter 30 ppm, 10 added peaks a spectrum; beyond, overflows)
        raise ParameterError(f"noise must be within 0-10, got {noise}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51E7]))
    n_lib = len(library)
    if rows is None:
        n = _check_count(n, "n")
        if n > n_lib:
            raise ParameterError(f"cannot draw {n} queries from a library of {n_lib} spectra")
        rows = np.sort(rng.choice(n_lib, size=n, replace=False))
    else:  # the answers the caller gets back: whole row numbers of this library, or an error
        from fastspec.library import _as_rows  # the rule of Library's own row arguments

        rows = _as_rows(rows, n_lib, "rows (library rows)")
    rows = np.asarray(rows, dtype=np.int64)
    source = _library_rows(library, rows)
    out = perturb(source, seed=rng, **_noise_params(noise))
    md = source.metadata
    ids = _prefixed_ids("Q", len(rows))
    # a grown library's rows name their seed spectrum: kept as seed_id / seed_row, since every copy of that
    # seed spectrum (about n / seed size of them) is as right an answer as the row the query was drawn from
    for theirs, ours in (("source_id", "seed_id"), ("source_row", "seed_row")):
        if theirs in md.column_names:
            md = _set_column(md, ours, md.column(theirs))
    md = _set_column(md, "source_id", pa.array(source.ids, pa.string()))
    md = _set_column(md, "source_row", pa.array(rows, pa.int64()))
    md = _set_column(md, "id", ids)
    if "precursor_mz" in md.column_names:
        md = _set_column(md, "precursor_mz", pa.array(out.precursor_mz, pa.float64()))
    return out.with_metadata(md), rows


def perturb(
    spectra: Spectra,
    seed: "int | np.random.Generator" = 0,
    *,
    ppm: float = 3.0,
    intensity_noise: float = 0.2,
    tilt: float = 0.3,
    drop: float = 0.1,
    add: float = 1.0,
    precursor_ppm: float = 2.0,
) -> Spectra:
    """Realistic measurement noise on spectra (same metadata, new peaks and precursor m/z).

    Parameters
    ----------
    spectra : Spectra
    seed : int or numpy.random.Generator
    ppm : float
        m/z jitter (ppm): a per-spectrum calibration offset of ``ppm/2`` plus per-peak noise ``ppm/2``.
    intensity_noise : float
        Sigma of the lognormal multiplicative intensity noise.
    tilt : float
        Sigma of a per-spectrum exponent ``g``; intensities are multiplied by ``(mz / precursor)**g``,
        which mimics a change of collision energy.
    drop : float
        Probability of dropping each peak (the base peak is always kept).
    add : float
        Mean number of added noise peaks per spectrum (Poisson; m/z uniform below the precursor,
        intensity 0.2-3% of the base peak).
    precursor_ppm : float
        Precursor m/z jitter (ppm, Gaussian sigma).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(np.random.SeedSequence(int(seed)))
    n = len(spectra)
    pmz = spectra.precursor_mz.copy()
    if precursor_ppm:
        pmz *= 1.0 + rng.normal(0.0, precursor_ppm * 1e-6, n)
    parts = []
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        o = spectra.offsets[lo : hi + 1]
        sl = slice(o[0], o[-1])
        parts.append(_perturb_csr(rng, o - o[0], spectra.mz[sl], spectra.intensity[sl], pmz[lo:hi],
                                  ppm, intensity_noise, tilt, drop, np.full(hi - lo, float(add))))
    offsets, mz, inten = _concat_csr(parts) if parts else (np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.float32))
    return Spectra(offsets, mz, inten, pmz, spectra.charge, spectra.metadata, validate=False)


# ====================================================================================== pure synthetic
def _synthesize(n: int, m: int, seed: int, polarity: str, threads: int | None, progress: bool | None = False) -> Spectra:
    ss = np.random.SeedSequence([int(seed), 0x5E17])
    s_mol, s_spec, s_chunks = ss.spawn(3)
    mol = _molecules(np.random.default_rng(s_mol), m, polarity)
    spec = _spectrum_plan(np.random.default_rng(s_spec), n, mol)
    chunk_seeds = s_chunks.spawn((n + CHUNK - 1) // CHUNK)

    def work(i: int):
        lo, hi = i * CHUNK, min(n, (i + 1) * CHUNK)
        return _synth_chunk(np.random.default_rng(chunk_seeds[i]), mol, spec, lo, hi)

    parts = _run_chunks(work, len(chunk_seeds), threads, progress, "synthesizing")
    offsets, mz, inten = _concat_csr(parts)
    md = _synthetic_metadata(mol, spec, seed)
    return Spectra(offsets, mz, inten, spec["pmz"], spec["charge"], md, validate=False)


def _molecules(rng: np.random.Generator, m: int, polarity: str) -> dict:
    """Formulas, masses, families, adduct preferences and fragment pools of ``m`` molecules."""
    formula_of, counts = _formulas(rng, m)
    elems = np.array([_MASS[e] for e in "CHNOPS"])
    mass = counts @ elems  # (F,)
    # molecules of one formula are not adjacent in molecule order
    formula_of = formula_of[rng.permutation(m)]
    mmass = mass[formula_of]
    parent = _parents(rng, formula_of, mmass)
    # polarity availability: positive only / negative only / both
    if polarity == "both":
        pol_set = rng.choice(3, size=m, p=[0.55, 0.12, 0.33]).astype(np.int8)  # 0 pos, 1 neg, 2 both
    else:
        pol_set = np.full(m, 0 if polarity == "positive" else 1, np.int8)
    names = list(ADDUCTS)
    pos = np.array([ADDUCTS[a][0] == "positive" for a in names])
    w = np.array([ADDUCTS[a][1] for a in names])
    # weighted random ranking of the adducts per molecule (Efraimidis-Spirakis keys); rank 0 is preferred
    keys = rng.exponential(size=(m, len(names))) / w
    rank_pos = np.argsort(np.where(pos, keys, np.inf), axis=1, kind="stable")[:, : int(pos.sum())]
    rank_neg = np.argsort(np.where(~pos, keys, np.inf), axis=1, kind="stable")[:, : int((~pos).sum())]
    pool = _fragment_pools(rng, mmass, parent, counts[formula_of])
    return dict(m=m, counts=counts, formula_of=formula_of, mass=mmass, parent=parent, pol_set=pol_set,
                rank_pos=rank_pos.astype(np.int8), rank_neg=rank_neg.astype(np.int8),
                prec_abund=rng.lognormal(*_PREC_ABUND, m), **pool)


def _formulas(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Molecule -> formula index, and the formulas' CHNOPS counts (F, 6) int64.

    Bucket sizes (isomers per formula) follow a Zipf law: most formulas have one molecule, some dozens.
    """
    sizes = []
    total = 0
    max_bucket = int(np.clip(m // _BUCKET_CAP_PER, 8, 300))
    while total < m:
        s = np.minimum(rng.zipf(_BUCKET_ZIPF, size=max(16, m // 2)), max_bucket)
        sizes.append(s)
        total += int(s.sum())
    sizes = np.concatenate(sizes)
    cut = int(np.searchsorted(np.cumsum(sizes), m))
    sizes = sizes[: cut + 1].copy()
    sizes[-1] -= int(sizes.sum()) - m
    n_f = sizes.shape[0]
    counts = _unique_formulas(rng, n_f)
    # larger buckets at common masses: give the biggest buckets to formulas near the median mass
    mass = counts @ np.array([_MASS[e] for e in "CHNOPS"])
    typical = np.argsort(np.abs(np.log(mass / np.median(mass))) + rng.normal(0, 0.3, n_f), kind="stable")
    sizes_sorted = np.sort(sizes)[::-1]
    bucket = np.empty(n_f, np.int64)
    bucket[typical] = sizes_sorted
    formula_of = np.repeat(np.arange(n_f, dtype=np.int64), bucket)
    return formula_of, counts


#: Neutral-mass distribution of the molecules' formulas (lognormal; Da): median and log-sigma.
_MASS_MEDIAN, _MASS_SIGMA = 300.0, 0.42

# Realism knobs of the pure synthetic mode, set against MassBank (64k spectra; bench/synth_realism.py
# and bench/results/synth_realism.md): peaks per spectrum and their growth with the precursor mass,
# how concentrated the intensity is, precursor-dominated spectra, shared fragments and losses, spectra
# per molecule, adducts and formula buckets.
#: fragment pool per molecule: lognormal around A * (M / 300) ** B, log-sigma C
_POOL = (11.0, 3.0, 1.4)
#: log-sigma of the fragments' base abundances (larger: fewer peaks hold most of the intensity)
_ABUND_SIGMA = 2.3
#: width (normalised energy) of a fragment's intensity window around its best energy
_ENERGY_WIDTH = 0.4
#: the precursor ion's abundance (lognormal mu, sigma) and its decay with normalised energy exp(-k e)
_PREC_ABUND = (6.0, 1.8)
_PREC_DECAY = 12.0
#: no fragment below this neutral mass (Da): instruments' low-mass cut-off
_MIN_FRAGMENT = 38.0
#: neutral losses (Da), the share of molecules showing each, and the CHNOPS atoms it needs
_LOSSES = (
    (18.010565, 0.28, (0, 2, 0, 1, 0, 0)),   # H2O
    (17.026549, 0.25, (0, 3, 1, 0, 0, 0)),   # NH3
    (27.994915, 0.12, (1, 0, 0, 1, 0, 0)),   # CO
    (43.989829, 0.15, (1, 0, 0, 2, 0, 0)),   # CO2
    (46.005479, 0.15, (1, 2, 0, 2, 0, 0)),   # HCOOH
    (32.026215, 0.05, (1, 4, 0, 1, 0, 0)),   # CH3OH
    (28.031300, 0.05, (2, 4, 0, 0, 0, 0)),   # C2H4
)
#: common fragment ions (m/z of the protonated ion), most common first, and their mean number per molecule
_COMMON_IONS = (65.03860, 91.05423, 77.03858, 105.07042, 79.05423, 55.05423, 93.06988, 107.04914, 69.06988,
                57.06988, 95.08553, 81.06988, 119.04914, 67.05423, 121.06479, 115.05423, 128.06205, 130.06513,
                144.08078, 152.06205, 165.06988, 58.06513, 72.08078, 86.09643, 84.08078, 98.09643, 145.06479)
_COMMON_PER_MOLECULE = 8.0
#: spectra per molecule: gamma weights of this shape (1 / sqrt(shape) is their coefficient of variation)
_PER_MOLECULE_SHAPE = 0.65
#: a spectrum takes its molecule's r-th preferred adduct with probability p (1-p)^r
_ADDUCT_RANK_P = 0.88
#: isomers per formula: Zipf exponent, and the largest bucket m // this (within 8-300)
_BUCKET_ZIPF, _BUCKET_CAP_PER = 2.7, 250
#: detection threshold per spectrum, relative to the base peak (log-uniform between these)
_DETECT = (0.003, 0.05)
#: log-sigma of the per-spectrum rate of noise peaks (median 1)
_NOISE_SIGMA = 2.0
#: share of records that keep only their strongest peaks, and p of the geometric number they keep
_TOP_PEAKS = (0.2, 0.3)


def _unique_formulas(rng: np.random.Generator, n_f: int) -> np.ndarray:
    """``n_f`` distinct plausible CHNOPS formulas, (n_f, 6) int64, neutral masses ~100-1000 Da.

    Candidates are drawn around lognormal target masses; duplicates are dropped. Plain rejection would
    shift the masses upwards as ``n_f`` grows (light formulas run out first), so a pool of about
    ``3 n_f`` distinct candidates is drawn and ``n_f`` of them are kept by weighted sampling without
    replacement, with weights (target density / pool density) that give every library size the same
    mass distribution as far as the pool allows.
    """
    want = 3 * n_f + 64
    pool = np.zeros((0, 6), np.int64)
    seen = np.zeros(0, np.int64)
    for _ in range(64):  # the pool grows geometrically; 64 rounds is far more than ever needed
        if pool.shape[0] >= want:
            break
        cand = _draw_formulas(rng, max(256, 2 * (want - pool.shape[0])))
        code = _formula_code(cand)
        code, first = np.unique(code, return_index=True)
        cand = cand[first]
        new = ~np.isin(code, seen)
        pool = np.concatenate([pool, cand[new]])
        seen = np.concatenate([seen, code[new]])
    if pool.shape[0] < n_f:  # pragma: no cover - the candidate space is far larger than any n_f
        raise FastspecError(f"could not draw {n_f} distinct formulas")
    logm = np.log(pool @ np.array([_MASS[e] for e in "CHNOPS"]))
    z = (logm - np.log(_MASS_MEDIAN)) / _MASS_SIGMA
    target = np.exp(-0.5 * z * z)
    edges = np.linspace(logm.min(), logm.max() + 1e-9, 81)
    b = np.searchsorted(edges, logm, side="right") - 1
    density = np.bincount(b, minlength=80)[b]
    keys = rng.exponential(size=pool.shape[0]) * density / np.maximum(target, 1e-300)
    keep = np.sort(np.argpartition(keys, n_f - 1)[:n_f])
    return pool[keep]


def _draw_formulas(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` plausible CHNOPS formulas (may repeat), (k, 6) int64, around lognormal target masses."""
    target = np.clip(rng.lognormal(np.log(_MASS_MEDIAN), _MASS_SIGMA, k), 90.0, 1600.0)
    n_ = rng.poisson(target / 240.0)
    o = rng.poisson(target / 85.0)
    p = (rng.random(k) < 0.04).astype(np.int64)
    s = rng.poisson(0.12, k)
    o = np.maximum(o, 3 * p)  # phosphates carry oxygens
    rest = target - n_ * 14.0 - o * 16.0 - p * 31.0 - s * 32.0
    h_per_c = rng.uniform(0.7, 2.0, k)
    c = np.maximum(1, np.rint(rest / (12.0 + 1.008 * h_per_c))).astype(np.int64)
    h_max = 2 * c + n_ + p + 2
    h = np.clip(np.rint(c * h_per_c).astype(np.int64), 0, h_max)
    h += (h + n_ + p) % 2  # integer double-bond equivalents
    h = np.where(h > h_max, h - 2, h)
    ok = (h >= 0) & (c >= 1)
    return np.stack([c, h, n_, o, p, s], axis=1)[ok]


def _formula_code(c: np.ndarray) -> np.ndarray:
    """Pack CHNOPS counts into one int64 (C<2^12, H<2^12, N<2^8, O<2^8, P<2^6, S<2^6)."""
    c = np.minimum(c, [4095, 4095, 255, 255, 63, 63])
    return (((((c[:, 0] << 12 | c[:, 1]) << 8 | c[:, 2]) << 8 | c[:, 3]) << 6 | c[:, 4]) << 6) | c[:, 5]


def _parents(rng: np.random.Generator, formula_of: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Parent molecule (-1: none): an isomer of the same formula, else a mass neighbour (an analog)."""
    m = formula_of.shape[0]
    idx = np.arange(m, dtype=np.int64)
    # first molecule of each formula bucket
    order = np.argsort(formula_of, kind="stable")
    fo = formula_of[order]
    start = np.ones(m, bool)
    start[1:] = fo[1:] != fo[:-1]
    first = np.empty(m, np.int64)
    first[order] = order[np.maximum.accumulate(np.where(start, np.arange(m), 0))]
    parent = np.full(m, -1, np.int64)
    isomer = (first != idx) & (rng.random(m) < 0.6)
    parent[isomer] = first[isomer]
    # analogs: a molecule a few places away in mass order
    by_mass = np.argsort(mass, kind="stable")
    pos = np.empty(m, np.int64)
    pos[by_mass] = idx
    step = rng.integers(1, 25, m) * np.where(rng.random(m) < 0.5, -1, 1)
    nb = by_mass[np.clip(pos + step, 0, m - 1)]
    analog = (parent < 0) & (rng.random(m) < 0.4) & (nb != idx)
    parent[analog] = nb[analog]
    return parent


def _fragment_pools(rng: np.random.Generator, mass: np.ndarray, parent: np.ndarray, counts: np.ndarray) -> dict:
    """Per-molecule fragment pools (CSR over molecules, sorted by neutral fragment mass).

    Each fragment has a neutral mass ``f`` (``_MIN_FRAGMENT`` <= f < M), a base abundance and the
    normalised collision energy at which it is most intense (small fragments need more energy). Pools
    grow faster than linearly with the molecule's mass (``_POOL``): small molecules give few peaks.
    Children inherit ~60% of their parent's own fragments; those above a random cut carry the
    modification and shift by the mass difference. Besides its own fragments a molecule may lose a
    common neutral (``_LOSSES``: M - H2O, ...; strong at low energy) and show common fragment ions
    (``_COMMON_IONS``: tropylium, phenyl, ...), which real libraries share across molecules. ``counts``:
    each molecule's CHNOPS counts (losses need their atoms).
    """
    m = mass.shape[0]
    has_parent = parent >= 0
    k = rng.lognormal(np.log(_POOL[0] * (mass / 300.0) ** _POOL[1]), _POOL[2])
    k = np.where(has_parent, 0.6 * k, k)
    k = np.clip(np.rint(k), 1, 300).astype(np.int64)
    own_mol = np.repeat(np.arange(m, dtype=np.int64), k)
    t = own_mol.shape[0]
    frac = rng.beta(2.0, 2.3, t)
    nominal = np.rint(frac * mass[own_mol])
    f = nominal * (1.0 + rng.uniform(-0.0002, 0.0009, t))
    abund = rng.lognormal(0.0, _ABUND_SIGMA, t)
    opt = np.clip(1.0 - frac + rng.normal(0.0, 0.25, t), -0.2, 1.4)
    own_off = np.zeros(m + 1, np.int64)
    np.cumsum(k, out=own_off[1:])
    # inherited fragments
    kids = np.flatnonzero(has_parent)
    pk, inh_off = _gather_index(own_off, parent[kids])
    inh_mol = np.repeat(kids, np.diff(inh_off))
    keep = rng.random(pk.shape[0]) < 0.6
    pk, inh_mol = pk[keep], inh_mol[keep]
    cut = rng.uniform(0.2, 0.9, m)
    pmass = mass[own_mol[pk]]
    shifted = f[pk] / pmass > cut[inh_mol]
    f_inh = f[pk] + np.where(shifted, mass[inh_mol] - pmass, 0.0)
    # common neutral losses (M - loss), each with its chance and the atoms it needs
    loss_mol, loss_f = [], []
    for (loss, chance, need) in _LOSSES:
        has = np.all(counts >= np.asarray(need), axis=1) & (rng.random(m) < chance)
        loss_mol.append(np.flatnonzero(has))
        loss_f.append(mass[has] - loss)
    loss_mol, loss_f = np.concatenate(loss_mol), np.concatenate(loss_f)
    n_loss = loss_mol.shape[0]
    # common fragment ions: several per molecule, popular ones more often (Zipf-like weights); protonated
    # ions, so only spectra whose fragments carry a proton show them (_synth_chunk)
    ions = np.asarray(_COMMON_IONS) - _PROTON  # neutral masses: the adduct's fragment shift adds the charge
    n_common = rng.poisson(_COMMON_PER_MOLECULE, m)
    com_mol = np.repeat(np.arange(m, dtype=np.int64), n_common)
    pop = 1.0 / np.arange(1, ions.shape[0] + 1) ** 0.5
    com_f = ions[rng.choice(ions.shape[0], size=com_mol.shape[0], p=pop / pop.sum())]
    mol_all = np.concatenate([own_mol, inh_mol, loss_mol, com_mol])
    common = np.concatenate([np.zeros(own_mol.shape[0] + inh_mol.shape[0] + n_loss, bool),
                             np.ones(com_mol.shape[0], bool)])
    f_all = np.concatenate([f, f_inh, loss_f, com_f])
    a_all = np.concatenate([abund, abund[pk] * rng.lognormal(0.0, 0.3, pk.shape[0]),
                            rng.lognormal(1.0, 1.0, n_loss), rng.lognormal(0.5, 1.0, com_mol.shape[0])])
    o_all = np.concatenate([opt, opt[pk], rng.normal(0.1, 0.15, n_loss),  # losses: gentle fragmentation
                            np.clip(rng.normal(0.8, 0.25, com_mol.shape[0]), -0.2, 1.4)])
    order = np.lexsort((f_all, mol_all))
    mol_all, f_all, a_all, o_all, common = mol_all[order], f_all[order], a_all[order], o_all[order], common[order]
    ok = (f_all >= _MIN_FRAGMENT) & (f_all < mass[mol_all] - 1.0)
    # one fragment per 0.05 Da inside a molecule (keeps peaks of one spectrum apart)
    close = np.zeros(ok.shape[0], bool)
    close[1:] = (mol_all[1:] == mol_all[:-1]) & (np.diff(f_all) < 0.05)
    ok &= ~close
    mol_all, f_all, a_all, o_all, common = mol_all[ok], f_all[ok], a_all[ok], o_all[ok], common[ok]
    off = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(mol_all, minlength=m), out=off[1:])
    return dict(pool_off=off, pool_f=f_all, pool_abund=a_all.astype(np.float32), pool_opt=o_all.astype(np.float32),
                pool_common=common)


def _spectrum_plan(rng: np.random.Generator, n: int, mol: dict) -> dict:
    """Per-spectrum molecule, adduct, instrument, collision energy, precursor and detection threshold."""
    m = mol["m"]
    # ~n/m spectra per molecule, heavy-ish spread, every molecule at least one
    w = rng.gamma(_PER_MOLECULE_SHAPE, 1.0, m)
    per = 1 + rng.multinomial(n - m, w / w.sum())
    smol = np.repeat(np.arange(m, dtype=np.int64), per)
    pol_set = mol["pol_set"][smol]
    negative = (pol_set == 1) | ((pol_set == 2) & (rng.random(n) < 0.35))
    names = list(ADDUCTS)
    rank = np.minimum(rng.geometric(_ADDUCT_RANK_P, n) - 1, mol["rank_pos"].shape[1] - 1)
    add_pos = mol["rank_pos"][smol, rank]
    rank = np.minimum(rank, mol["rank_neg"].shape[1] - 1)
    add_neg = mol["rank_neg"][smol, rank]
    adduct = np.where(negative, add_neg, add_pos).astype(np.int8)
    inst_names = list(_INSTRUMENTS)
    p = np.array([v[0] for v in _INSTRUMENTS.values()])
    inst = rng.choice(len(inst_names), size=n, p=p / p.sum()).astype(np.int8)
    ce = np.empty(n)
    _draw_energies(rng, inst, np.ones(n, bool), ce)
    p_inst = p / p.sum()
    # a molecule's spectra at different conditions, as libraries record them: drawn with replacement,
    # 66% of spectra repeated a (molecule, adduct, instrument, energy) of another (MassBank: 27%). Repeats
    # draw their energy again, then (later rounds) their instrument too; the adducts stay as drawn, so at
    # 40 spectra per molecule 48% still repeat one (bench/synth_realism.py)
    for round_ in range(_CONDITION_ROUNDS):
        again = _repeated(smol, adduct, inst, ce)
        if not again.any():
            break
        if round_ >= _CONDITION_ROUNDS // 2:
            inst[again] = rng.choice(len(inst_names), size=int(again.sum()), p=p_inst)
        _draw_energies(rng, inst, again, ce)
    full = np.array([v[3] for v in _INSTRUMENTS.values()], float)
    e_norm = ce / full[inst]
    mult = np.array([ADDUCTS[a][2] for a in names], float)[adduct]
    delta = _precursor_deltas(names)[adduct]
    pmz = mult * mol["mass"][smol] + delta
    charge = np.where(negative, -1, 1).astype(np.int8)
    thr = np.exp(rng.uniform(np.log(_DETECT[0]), np.log(_DETECT[1]), n))
    # mean number of noise peaks (Poisson rate) per spectrum: most records few, some scores (MassBank's
    # 95th percentile of peaks per spectrum is 92)
    noise = np.minimum(rng.lognormal(0.0, _NOISE_SIGMA, n), 300.0)
    # records that keep only their few strongest peaks (curated or low-resolution entries), noise-free
    top = np.where(rng.random(n) < _TOP_PEAKS[0], rng.geometric(_TOP_PEAKS[1], n), 0)
    noise[top > 0] = 0.0
    return dict(n=n, mol=smol, adduct=adduct, inst=inst, ce=ce, e_norm=e_norm, pmz=pmz, charge=charge,
                thr=thr, noise=noise, top=top, names=names, inst_names=inst_names)


#: rounds of drawing the conditions of repeated spectra again (see _spectrum_plan)
_CONDITION_ROUNDS = 8


def _draw_energies(rng: np.random.Generator, inst: np.ndarray, which: np.ndarray, ce: np.ndarray) -> None:
    """Collision energies of the spectra ``which`` (bool mask), each from its instrument's levels."""
    for i, (_, _, levels, _) in enumerate(_INSTRUMENTS.values()):
        sel = which & (inst == i)
        ce[sel] = rng.choice(np.asarray(levels, float), size=int(sel.sum()))


def _repeated(smol: np.ndarray, adduct: np.ndarray, inst: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """Spectra whose (molecule, adduct, instrument, energy) an earlier spectrum has (bool mask)."""
    order = np.lexsort((ce, inst, adduct, smol))
    same = np.zeros(smol.shape[0], bool)
    if smol.shape[0] > 1:
        a, b = order[1:], order[:-1]
        same[a] = (smol[a] == smol[b]) & (adduct[a] == adduct[b]) & (inst[a] == inst[b]) & (ce[a] == ce[b])
    return same


def _precursor_deltas(names: Sequence[str]) -> np.ndarray:
    """Precursor m/z minus mult*M per adduct, from fastspec.chem.adducts when available."""
    try:
        from fastspec.chem.adducts import precursor_mz_from_mass
    except ImportError:
        precursor_mz_from_mass = None
    out = np.empty(len(names))
    for i, a in enumerate(names):
        d = None
        if precursor_mz_from_mass is not None:
            try:  # linear in M: the value at M=0 is the offset
                d = float(precursor_mz_from_mass(0.0, a))
            except (FastspecError, TypeError, ValueError, KeyError):
                d = None
        out[i] = _ADDUCT_DELTA[a] if d is None else d
    return out


def _synth_chunk(rng: np.random.Generator, mol: dict, spec: dict, lo: int, hi: int):
    """Peaks (offsets, mz, intensity) of spectra ``lo:hi``."""
    smol = spec["mol"][lo:hi]
    ns = hi - lo
    pk, off = _gather_index(mol["pool_off"], smol)
    seg = _segment_ids(off)
    names = spec["names"]
    shift = np.array([ADDUCTS[a][3] for a in names])[spec["adduct"][lo:hi]]
    pmz = spec["pmz"][lo:hi]
    e = spec["e_norm"][lo:hi]
    frag_mz = mol["pool_f"][pk] + shift[seg]
    z = (e[seg] - mol["pool_opt"][pk]) / _ENERGY_WIDTH
    inten = mol["pool_abund"][pk] * np.exp(-0.5 * z * z) * rng.lognormal(0.0, 0.35, pk.shape[0])
    inten[frag_mz >= pmz[seg] - 0.5] = 0.0  # fragments must lie below the precursor
    # the common ions are protonated ones: spectra of other fragment charges ([M-H]-, Na+ / K+ adducts, M+)
    # leave them out
    inten[mol["pool_common"][pk] & (np.abs(shift[seg] - _PROTON) > 1e-6)] = 0.0
    # the precursor ion itself, strong at low energy; appended last so each spectrum stays sorted
    prec_int = mol["prec_abund"][smol] * np.exp(-_PREC_DECAY * e) * rng.lognormal(0.0, 0.35, ns)
    total = off[-1] + ns
    pos_prec = off[1:] + np.arange(1, ns + 1)
    is_prec = np.zeros(total, bool)
    is_prec[pos_prec - 1] = True
    all_mz = np.empty(total)
    all_int = np.empty(total)
    all_mz[is_prec], all_int[is_prec] = pmz, prec_int
    all_mz[~is_prec], all_int[~is_prec] = frag_mz, inten
    off2 = off + np.arange(ns + 1)
    seg2 = _segment_ids(off2)
    base = np.maximum.reduceat(all_int, off2[:-1])
    rel = all_int / base[seg2]
    keep = rel >= spec["thr"][lo:hi][seg2]
    top = spec["top"][lo:hi]
    capped = np.flatnonzero(keep & (top[seg2] > 0))
    if capped.shape[0]:  # those records keep their `top` strongest peaks only (ties: the lower m/z)
        cs = seg2[capped]
        order = np.lexsort((-rel[capped], cs))
        first = np.searchsorted(cs[order], cs[order], side="left")  # each spectrum's first position
        rank = np.arange(order.shape[0]) - first
        keep[capped[order[rank >= top[cs[order]]]]] = False
    counts = np.bincount(seg2[keep], minlength=ns)
    o3 = np.zeros(ns + 1, np.int64)
    np.cumsum(counts, out=o3[1:])
    mz, it = all_mz[keep], (rel[keep] * 999.0).astype(np.float32)
    # measurement: calibration error, per-peak jitter, electronic noise peaks
    return _perturb_csr(rng, o3, mz, it, pmz, 3.0, 0.0, 0.0, 0.0, spec["noise"][lo:hi], add_scale=999.0)


def _synthetic_metadata(mol: dict, spec: dict, seed: int) -> pa.Table:
    n, m = spec["n"], mol["m"]
    smol = spec["mol"]
    formulas = _hill(mol["counts"])
    # keys from the seed as well as the number of molecules: libraries of two seeds hold different compounds,
    # which must not share InChIKeys (anything joining by inchikey14 would take them for one molecule)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), m, 0x1C4E]))
    ik14 = _unique_letters(rng, m, 14)
    ik_mid = _letters(rng, m, 8)
    inchikey = [f"{a}-{b}SA-N" for a, b in zip(ik14, ik_mid)]
    smiles = _pseudo_smiles(rng, mol["counts"][mol["formula_of"]])
    mol_names = pc.binary_join_element_wise("synthetic compound ", pa.array(np.arange(m)).cast(pa.string()), "")
    take = pa.array(smol, pa.int64())
    fam = np.where(mol["parent"] >= 0, mol["parent"], np.arange(m))
    inst_ft = [v[1] for v in _INSTRUMENTS.values()]
    negative = spec["charge"] < 0
    return pa.table({
        "id": _prefixed_ids("SYN", n),
        "name": mol_names.take(take),
        "formula": pa.array(formulas, pa.string()).take(pa.array(mol["formula_of"][smol])),
        "smiles": pa.array(smiles, pa.string()).take(take),
        "inchikey": pa.array(inchikey, pa.string()).take(take),
        "inchikey14": pa.array(ik14, pa.string()).take(take),
        "adduct": _decode(spec["adduct"], spec["names"]),
        "ion_mode": _decode(negative.astype(np.int8), ["positive", "negative"]),
        "charge": pa.array(spec["charge"], pa.int8()),
        "precursor_mz": pa.array(spec["pmz"], pa.float64()),
        "instrument_type": _decode(spec["inst"], spec["inst_names"]),
        "fragmentation_mode": _decode(spec["inst"], inst_ft),
        "collision_energy": pa.array(spec["ce"], pa.float64()),
        "molecule": pa.array(smol, pa.int64()),
        "family": pa.array(fam[smol], pa.int64()),
    })


def _hill(counts: np.ndarray) -> list[str]:
    """Hill formula strings (C, H, then alphabetical) of (F, 6) CHNOPS counts."""
    sym = "CHNOPS"
    out = []
    for row in counts.tolist():
        out.append("".join(s + (str(c) if c > 1 else "") for s, c in zip(sym, row) if c > 0))
    return out


def _letters(rng: np.random.Generator, m: int, width: int) -> np.ndarray:
    codes = rng.integers(0, 26, (m, width), dtype=np.uint8) + np.uint8(65)
    return np.frombuffer(codes.tobytes(), dtype=f"S{width}").astype(str)


def _unique_letters(rng: np.random.Generator, m: int, width: int) -> np.ndarray:
    out = _letters(rng, m, width)
    while True:  # collisions are astronomically rare; redraw the later duplicates
        _, first = np.unique(out, return_index=True)
        dup = np.setdiff1d(np.arange(m), first)
        if dup.size == 0:
            return out
        out[dup] = _letters(rng, dup.size, width)


def _pseudo_smiles(rng: np.random.Generator, counts: np.ndarray) -> list[str]:
    """A valid acyclic SMILES per molecule: the formula's heavy atoms as a shuffled chain (fictional)."""
    heavy = np.array(["C", "N", "O", "P", "S"])
    cols = counts[:, [0, 2, 3, 4, 5]]
    lens = cols.sum(axis=1)
    atoms = np.repeat(np.tile(heavy, counts.shape[0]), cols.ravel())
    off = np.zeros(lens.shape[0] + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    # shuffle inside each molecule but start with a carbon (sorted-by-key with carbon first)
    key = rng.random(atoms.shape[0]) + np.repeat(np.arange(lens.shape[0]), lens) * 2.0
    first_c = off[:-1]
    atoms_sorted = atoms[np.argsort(key, kind="stable")]
    # the chain starts at a carbon: swap the first carbon of each molecule to the front
    s = "".join(atoms_sorted.tolist())
    out = []
    for i in range(lens.shape[0]):
        chunk = s[first_c[i] : off[i + 1]]
        j = chunk.find("C")
        if j > 0:
            chunk = "C" + chunk[:j] + chunk[j + 1 :]
        # O-O, S-S... chains are odd but valid; every 4th atom becomes a one-atom branch (a leaf) when its
        # neighbour in the chain can take a third bond (C, N, P)
        out.append("".join(f"({a})" if t % 4 == 3 and t < len(chunk) - 1 and chunk[t - 1] in "CNP" else a
                           for t, a in enumerate(chunk)))
    return out


# ====================================================================================== grown from a real library
def _grow(n: int, seed: int, seed_library: Any, polarity: str, threads: int | None,
          progress: bool | None = False, report: dict | None = None) -> Spectra:
    from fastspec.library import REASON_MS1, REASON_MSN, _ms_stages

    src, read = _load(seed_library)
    # as an index leaves them out: an MS1 or MSn spectrum grown into 'MS2' copies (no ms_level is kept)
    ms1, msn = _ms_stages(src.metadata)
    cols = [c for c in SEED_COLUMNS if c in src.metadata.column_names]
    if cols:  # 2.4M copies of every provenance column would cost gigabytes
        md = src.metadata.select(cols)
        if "inchi" in cols and "formula" in cols:  # the InChI only where it must give the formula
            md = _set_column(md, "inchi", pc.if_else(pa.array(_parsed_formula(md)),
                                                     pa.scalar(None, md.column("inchi").type), md.column("inchi")))
        src = src.with_metadata(md)
    empty = src.n_peaks == 0
    other = np.zeros(len(src), bool) if polarity == "both" else \
        src.polarity != (1 if polarity == "positive" else -1)
    keep = ~(ms1 | msn | empty | other)
    left_out = {k: int(v) for k, v in ((REASON_MS1, ms1.sum()), (REASON_MSN, msn.sum()),
                                       ("no peak of positive intensity", (empty & ~ms1 & ~msn).sum()),
                                       (f"not {polarity}", (other & ~empty & ~ms1 & ~msn).sum())) if v}
    if report is not None:
        report.update(n_records=len(src) if read is None else read.n_records,
                      n_rejected=0 if read is None else read.n_rejected,
                      rejected={} if read is None else dict(read.counts_by_reason),
                      left_out=left_out,
                      n_used=int(keep.sum()),
                      no_precursor=int((keep & ~np.isfinite(src.precursor_mz)).sum()),
                      no_formula=int((keep & ~_has_formula(src.metadata)).sum()))
    # rows and ids of the seed library as given: source_row / source_id name spectra of the caller's
    # library, not of the filtered copy drawn from here
    kept, seed_ids = np.flatnonzero(keep), src.ids
    src = src.take(kept) if not keep.all() else src
    if len(src) == 0:
        why = "; ".join(f"{k}: {v:,}" for k, v in left_out.items())
        raise FastspecError("the seed library has no usable spectra (MS2, non-empty, of the requested polarity)"
                            + (f": left out {why}" if why else ""))
    _check_memory(n, float(src.n_peaks.mean()))  # (a seed of many-peak spectra grows larger copies)
    ss = np.random.SeedSequence([int(seed), 0x9A0F])
    s_rows, s_chunks = ss.spawn(2)
    rng = np.random.default_rng(s_rows)
    n_src = len(src)
    reps = -(-n // n_src)
    rows = np.concatenate([rng.permutation(n_src) for _ in range(reps)])[:n] if reps > 1 else rng.permutation(n_src)[:n]
    rows = np.sort(rows)  # copies of one source spectrum stay adjacent, like spectra of one compound
    chunk_seeds = s_chunks.spawn((n + CHUNK - 1) // CHUNK)
    params = _noise_params(1.0)

    def work(i: int):
        lo, hi = i * CHUNK, min(n, (i + 1) * CHUNK)
        r = np.random.default_rng(chunk_seeds[i])
        part = src.take(rows[lo:hi])
        out = perturb(part, r, **params)
        return out.offsets, out.mz, out.intensity, out.precursor_mz

    parts = _run_chunks(work, len(chunk_seeds), threads, progress, "growing")
    offsets, mz, inten = _concat_csr([p[:3] for p in parts])
    pmz = np.concatenate([p[3] for p in parts])
    md = src.metadata.take(pa.array(rows, pa.int64()))
    md = _set_column(md, "source_id", pa.array(seed_ids, pa.string()).take(pa.array(kept[rows], pa.int64())))
    md = _set_column(md, "source_row", pa.array(kept[rows], pa.int64()))
    md = _set_column(md, "id", _prefixed_ids("SYN", n))
    if "precursor_mz" in md.column_names:
        md = _set_column(md, "precursor_mz", pa.array(pmz, pa.float64()))
    return Spectra(offsets, mz, inten, pmz, src.charge[rows], md, validate=False)


#: Metadata columns kept from a seed library (canonical keys, the InChI where no formula is given, from which an
#: index takes the formula (GNPS exports: SMILES=N/A, an InChI), provenance and licence).
SEED_COLUMNS = (
    "id", "name", "precursor_mz", "charge", "ion_mode", "adduct", "formula", "smiles", "inchi", "inchikey",
    "inchikey14", "instrument_type", "instrument", "collision_energy", "fragmentation_mode", "exact_mass", "license",
)


def _parsed_formula(md: pa.Table) -> np.ndarray:
    """bool (n,): a formula that parses (an index takes the others' from the SMILES, else the InChI)."""
    if "formula" not in md.column_names:
        return np.zeros(md.num_rows, bool)
    from fastspec.library import canonical_formulas

    return np.array([f is not None for f in canonical_formulas(md.column("formula").to_pylist())], bool)


def _has_formula(md: pa.Table) -> np.ndarray:
    """bool (n,): a formula an index finds: one that parses, else a SMILES or InChI to take it from."""
    has = _parsed_formula(md)
    for col in ("smiles", "inchi"):
        if col in md.column_names:
            has |= np.asarray(md.column(col).is_valid().to_numpy(zero_copy_only=False), bool)
    return has


def _load(source: Any) -> tuple[Spectra, Any]:
    """A Spectra from a Spectra or any file :func:`fastspec.io.read` accepts, without zero-intensity peaks
    (readers keep them, as matchms does; they are no observed fragments to resample, and noise would
    leave them at 0), and the read report (None for spectra given in memory)."""
    report = None
    if isinstance(source, Spectra):
        sp = source
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        from fastspec import io as fio
        from fastspec.library import _refuse_empty

        sp, report = fio.read(path, return_report=True)
        _refuse_empty(report)  # an MGF file named .msp: say so, not "no usable spectra"
    return sp.keep_peaks(np.asarray(sp.intensity) != 0), report


# ====================================================================================== shared machinery
def _perturb_csr(rng, offsets, mz, intensity, pmz, ppm, intensity_noise, tilt, drop, add_rate, add_scale=None):
    """Noise on one chunk of CSR peaks; returns sorted (offsets, mz rounded to 1e-5, intensity float32).

    ``add_scale``: intensity of the base peak for added peaks (None: each spectrum's own maximum).
    """
    ns = offsets.shape[0] - 1
    seg = _segment_ids(offsets)
    mz = np.asarray(mz, np.float64)
    inten = np.asarray(intensity, np.float64)
    pm = np.where(np.isfinite(pmz), pmz, np.nan)
    if ppm:
        mz = mz * (1.0 + (rng.normal(0.0, ppm / 2, ns)[seg] + rng.normal(0.0, ppm / 2, mz.shape[0])) * 1e-6)
    if intensity_noise or tilt:
        if intensity_noise:
            inten = inten * rng.lognormal(0.0, intensity_noise, mz.shape[0])
        if tilt:
            ref = pm.copy()
            top = _seg_max(mz, seg, ns)
            ref = np.where(np.isfinite(ref) & (ref > 0), ref, top)
            g = rng.normal(0.0, tilt, ns)
            inten = inten * np.power(np.maximum(mz / ref[seg], 1e-3), g[seg])
    if drop and mz.shape[0]:
        base = _seg_max(inten, seg, ns)
        keep = (rng.random(mz.shape[0]) >= drop) | (inten >= base[seg])
        mz, inten, seg = mz[keep], inten[keep], seg[keep]
    n_add = rng.poisson(add_rate) if np.any(add_rate > 0) else np.zeros(ns, np.int64)
    n_add[~np.isfinite(pm)] = 0  # nowhere sensible to put them without a precursor
    if n_add.sum():
        aseg = np.repeat(np.arange(ns, dtype=np.int64), n_add)
        hi = pm[aseg] - 1.0
        lo_ = np.minimum(50.0, 0.3 * hi)
        amz = lo_ + rng.random(aseg.shape[0]) * np.maximum(hi - lo_, 0.0)
        if add_scale is None:
            scale = _seg_max(inten, seg, ns)[aseg]
        else:
            scale = np.full(aseg.shape[0], float(add_scale))
        aint = scale * np.exp(rng.uniform(np.log(0.002), np.log(0.03), aseg.shape[0]))
        ok = (amz > 1.0) & (aint > 0)
        mz = np.concatenate([mz, amz[ok]])
        inten = np.concatenate([inten, aint[ok]])
        seg = np.concatenate([seg, aseg[ok]])
    # exact sort by (spectrum, m/z rounded to 1e-5): integer keys; stable timsort is ~linear on the
    # nearly sorted input
    q = np.rint(np.maximum(mz, 0.0) * _MZ_SCALE).astype(np.int64)
    if q.size and (q.max() >= (1 << 31) or ns >= (1 << 31)):
        order = np.lexsort((q, seg))
    else:
        order = np.argsort((seg << 31) | q, kind="stable")
    q, inten, seg = q[order], inten[order], seg[order]
    # two peaks of one spectrum at one rounded m/z (an added noise peak on a fragment, jittered peaks
    # meeting): libraries as read hold none; the first in the sort (a fragment before noise) stays
    dup = np.zeros(q.shape[0], bool)
    dup[1:] = (q[1:] == q[:-1]) & (seg[1:] == seg[:-1])
    if dup.any():
        q, inten, seg = q[~dup], inten[~dup], seg[~dup]
    out_off = np.zeros(ns + 1, np.int64)
    np.cumsum(np.bincount(seg, minlength=ns), out=out_off[1:])
    return out_off, q / _MZ_SCALE, inten.astype(np.float32)


def _seg_max(values: np.ndarray, seg: np.ndarray, ns: int) -> np.ndarray:
    """Per-segment maximum for segment ids in non-decreasing order (0 for empty segments)."""
    counts = np.bincount(seg, minlength=ns)
    out = np.zeros(ns)
    nonempty = np.flatnonzero(counts)
    if nonempty.size:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[nonempty] = np.maximum.reduceat(values, starts[nonempty])
    return out


def _noise_params(noise: float) -> dict:
    return dict(ppm=3.0 * noise, intensity_noise=0.2 * noise, tilt=0.3 * noise, drop=min(0.1 * noise, 0.9),
                add=1.0 * noise, precursor_ppm=2.0 * noise)


def _concat_csr(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offs = [parts[0][0]]
    shift = parts[0][0][-1]
    for p in parts[1:]:
        offs.append(p[0][1:] + shift)
        shift += p[0][-1]
    return np.concatenate(offs), np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _run_chunks(work, n_chunks: int, threads: int | None, progress: bool | None = False, desc: str = "") -> list:
    """``[work(i) for i in range(n_chunks)]`` on a thread pool (numpy releases the GIL), in order."""
    import sys

    n_workers = min(n_chunks, threads or os.cpu_count() or 1)
    bar = None
    from fastspec.io._common import wants_progress

    if wants_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks, desc=desc, unit="chunk", file=sys.stderr, leave=False)
    pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
    try:
        out = []
        for r in (pool.map if pool is not None else map)(work, range(n_chunks)):
            out.append(r)
            if bar is not None:
                bar.update()
        return out
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()


def _library_rows(library: Any, rows: np.ndarray) -> Spectra:
    if isinstance(library, Spectra):
        return library.take(rows)
    if callable(getattr(library, "spectra", None)):  # a fastspec.Library
        return library.spectra(rows, metadata=True)
    raise ParameterError(f"library must be a Spectra or a fastspec.Library, got {type(library).__name__}")


def _prefixed_ids(prefix: str, n: int) -> pa.Array:
    width = max(7, len(str(max(n - 1, 0))))
    digits = pc.utf8_lpad(pa.array(np.arange(n, dtype=np.int64)).cast(pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _decode(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(names), pa.string())).cast(pa.string())


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


#: peak memory of generating a library, per spectrum (bytes; pure and grown modes, peaks, metadata and the
#: working arrays: 100k -> 300k spectra measured 0.5 -> 0.75 GB and 0.63 -> 0.8 GB, 2.4M ~3.3 GB)
_BYTES_PER_SPECTRUM = 1400
#: ... at this many peaks per spectrum (MassBank's mean, ~25); each peak more costs ``_BYTES_PER_PEAK`` (a seed
#: of 231 peaks per spectrum measured ~4.2 kB per spectrum grown, 50k -> 150k spectra: 0.75 -> 1.17 GB)
_PEAKS_PER_SPECTRUM = 25
_BYTES_PER_PEAK = 14


def _check_memory(n: int, peaks_per_spectrum: float | None = None) -> None:
    """Refuse a size whose generation could not fit in this machine's memory, before allocating: numpy
    would fail with a MemoryError only after filling it (grown mode builds its plan in Python objects).
    ``peaks_per_spectrum``: a seed library's mean, once it is read."""
    from fastspec._sysmem import physical_memory

    total = physical_memory()
    if total is None:  # not POSIX: numpy's own error then
        return
    extra = 0.0 if peaks_per_spectrum is None else max(0.0, peaks_per_spectrum - _PEAKS_PER_SPECTRUM) * _BYTES_PER_PEAK
    need = n * (_BYTES_PER_SPECTRUM + extra)
    if need > total:
        raise ParameterError(f"{n:,} spectra need about {need / 2**30:,.0f} GiB of memory to generate; this machine "
                             f"has {total / 2**30:,.0f} GiB")


def _check_count(v: Any, name: str) -> int:
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer, got {v!r}") from None
    if iv < 1 or iv != v:
        raise ParameterError(f"{name} must be a positive integer, got {v!r}")
    return iv
