"""The nearest-neighbour (NN) baseline: predict a spectrum's molecule by copying the molecule of the
most similar *training* spectrum inside the same bucket (same canonical formula, optionally adduct),
always within the same polarity.

Two parts:

* :class:`LabData` — the harmonised labels of a library (molecule key, canonical formula, adduct,
  polarity, instrument type, collision-energy bin, fingerprint rows), computed once per library with
  vectorised / unique-value code paths so that it stays cheap at a million spectra.
* :func:`nn_search` — the formula-bucketed kNN search (via :mod:`fastspec.similarity`) with the
  no-neighbour policies, returning a :class:`NNResult`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.errors import ParameterError
from fastspec.spectra import Spectra

#: Collision-energy bin edges, one set for each kind of energy: absolute (eV, V, or no unit written) and
#: normalized (NCE %), which public libraries mix (a third of MassBank's spectra give NCE %) and which
#: are not comparable; normalized energies get bins of their own ("NCE 20-40", see :func:`ce_bin_labels`).
CE_EDGES = (20.0, 40.0, 60.0, 100.0)
#: a collision energy written as normalized: "30 % (nominal)", "NCE 35", "NCE35", "35 (nominal)",
#: "normalized ..." -- unless it also names an absolute unit ("10 eV, 5% offset")
_NORMALIZED_RE = re.compile(r"%|(?<![a-z])nce(?![a-z])|nominal|(?<![a-z])normali[sz]ed", re.IGNORECASE)
_ABSOLUTE_RE = re.compile(r"\d\s*(?:e?v|kev)(?![a-z])", re.IGNORECASE)
BUCKETS = ("formula", "formula+adduct", "none")
POLICIES = ("skip", "fallback", "zero")
METRICS = ("binned_cosine", "cosine", "modified_cosine", "entropy")


# ====================================================================== labels
def _col(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    return table.column(name) if name in table.column_names else None


def _map_unique(col: pa.ChunkedArray | None, fn, n: int) -> list:
    """Apply ``fn`` to each distinct non-null string value once; a list aligned with the rows."""
    if col is None:
        return [None] * n
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string(), safe=False) if not pa.types.is_dictionary(arr.type) else arr.dictionary_decode()
    enc = arr.dictionary_encode()
    mapped = [fn(v) for v in enc.dictionary.to_pylist()]
    lookup = np.empty(len(mapped) + 1, dtype=object)
    lookup[:-1] = mapped
    lookup[-1] = None
    idx = enc.indices.cast(pa.int64()).fill_null(len(mapped)).to_numpy(zero_copy_only=False)
    return lookup[idx].tolist()


def _clean_str(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


#: an unsigned number, "5", "5.5" or ".5", with one way to match each text: "\d*\.?\d+" split a run of n
#: digits n ways, and a text that then failed tried them all (quadratic in a collision-energy value)
_UNUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_NUM_RE = re.compile(rf"[-+]?{_UNUM}(?:[eE][-+]?\d+)?")
# a ramp or steps: numbers joined by '-' (with units between, not glued to a word: "MS2-20"), or three or
# more joined by ',' ("stepped 15,30,45", "15, 30, 45, 60, 70 or 90"; two could be a decimal comma)
_STEPS_RE = re.compile(rf"(?<![A-Za-z0-9.]){_UNUM}(?:(?:\s*(?:(?:%|[a-zA-Z]+)\s*)?-\s*{_UNUM})+"
                       rf"|(?:\s*,\s*{_UNUM}){{2,}}(?:\s*(?:,\s*)?(?:or|and)\s+{_UNUM})?"
                       rf"|(?:\s*,\s*{_UNUM})+\s*(?:,\s*)?(?:or|and)\s+{_UNUM})")
_PLAIN_NUM_RE = re.compile(_UNUM)
# an energy that depends on the precursor m/z ("scaled 80 (m/z=200) to 110 (m/z=120)", "scaled by m/z"):
# no one energy
_MZ_DEPENDENT_RE = re.compile(r"m/z|(?<![a-z])mz(?![a-z])", re.IGNORECASE)


def _parse_ce(text) -> float:
    """Collision energy as a number: the mean of a ``LOW-HIGH`` ramp or of stepped energies (``20-30-40``,
    ``15,30,45``; NaN when they fall: an m/z-dependent formula), else the first number; NaN when there is
    none or the text makes the energy depend on m/z."""
    if text is None:
        return math.nan
    s = str(text)
    if _MZ_DEPENDENT_RE.search(s):
        return math.nan
    # the ramp's or steps' numbers are the text's first, after a word or with units ("Ramp 22.8-34.2 eV",
    # "Ramp 20%-70% (nominal)", "10 eV - 30 eV", "HCD 20-30-40", as MSP / MGF / record files write them)
    steps = _STEPS_RE.search(s)
    if steps and not any(c.isdigit() for c in s[:steps.start()]):
        vals = [float(v) for v in _PLAIN_NUM_RE.findall(steps.group(0))]
        # a falling "ramp" is a formula ("160-0.41mz or 15 (mz>350)", 10 MassBank spectra): no one energy
        return sum(vals) / len(vals) if all(a <= b for a, b in zip(vals, vals[1:])) else math.nan
    m = _NUM_RE.search(s)
    return float(m.group(0)) if m else math.nan


def _is_normalized(text) -> bool:
    """Whether a collision-energy text gives a normalized energy (NCE %), see ``_NORMALIZED_RE``."""
    if text is None:
        return False
    t = str(text)
    return _NORMALIZED_RE.search(t) is not None and _ABSOLUTE_RE.search(t) is None


def ce_bin_labels(ce: np.ndarray, edges: Sequence[float] = CE_EDGES,
                  normalized: np.ndarray | None = None) -> list[str]:
    """Bin labels for CE values (NaN unknown): ``"<20"``, ``"20-40"``, ..., ``">=100"`` for absolute
    energies, ``"NCE <20"``, ``"NCE 20-40"``, ... for normalized ones (``normalized`` true), ``"unknown"``.

    Parameters
    ----------
    ce : ndarray, float64 (n,)
        Collision energies in their recorded unit (eV / V, or NCE % where ``normalized``).
    normalized : ndarray of bool (n,), optional
        Which energies are normalized (NCE %); None: none.
    """
    names = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])] + [f">={edges[-1]:g}"]
    nb = len(names)
    names += [f"NCE {v}" for v in names] + ["unknown"]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), ce, side="right")
    if normalized is not None:
        idx = idx + nb * np.asarray(normalized, dtype=bool)
    idx = np.where(np.isnan(ce), len(names) - 1, idx)
    return [names[i] for i in idx]


@dataclass
class LabData:
    """Harmonised labels of a library, one entry per spectrum.

    Attributes
    ----------
    spectra : Spectra
    mol : list of str or None
        Molecule key (InChIKey first block); None when unknown.
    smiles : list of str or None
    formula : list of str or None
        Canonical neutral formula (``fastspec.chem.formula.canonical_formula``); derived from the
        SMILES when the record has none.
    adduct : list of str or None
        Normalised adduct (``fastspec.chem.adducts.normalize_adduct``).
    polarity : ndarray, int8 (n,)
        +1, -1, or 0 unknown (spectra of unknown polarity are only compared with each other).
    instrument_type : list of str or None
    ce : ndarray, float64 (n,)
        Collision energy (NaN unknown) in its recorded unit; ``ce_bin`` its bin label, ``ce_normalized``
        whether it is a normalized energy (NCE %: a ``ce_unit`` column of ``%``, or a text such as
        ``30 % (nominal)`` or ``NCE 35``), binned apart from absolute energies (eV, V, no unit).
    fp_row : ndarray, int64 (n,) or None
        Row of each spectrum's molecule in ``fps`` (-1 none), after :meth:`attach_fingerprints`.
    source_index : ndarray, int64 (n,)
        Position of each spectrum in the library it was built from (kept through :meth:`take`).
    n_source : int
        Spectra in the library it was built from (``len(spectra)`` before any :meth:`take`).
    """

    spectra: Spectra
    mol: list
    smiles: list
    formula: list
    adduct: list
    polarity: np.ndarray
    instrument_type: list
    ce: np.ndarray
    ce_bin: list
    counts: dict = field(default_factory=dict)
    fps: Any = None
    fp_row: np.ndarray | None = None
    source_index: np.ndarray | None = None
    n_source: int | None = None
    _mol_code: np.ndarray | None = None
    ce_normalized: np.ndarray | None = None

    def __post_init__(self):
        if self.source_index is None:
            self.source_index = np.arange(len(self.spectra), dtype=np.int64)
        if self.ce_normalized is None:
            self.ce_normalized = np.zeros(len(self.spectra), dtype=bool)
        if self.n_source is None:
            self.n_source = len(self.spectra)

    @classmethod
    def build(cls, spectra: Spectra, *, derive_formula: bool = True) -> "LabData":
        """Extract and harmonise the labels of ``spectra`` (no fingerprints yet).

        Zero-intensity peaks (readers keep them, as matchms does) are dropped and counted
        (``n_zero_intensity_dropped``): they are not observed fragments, and binary peaks
        (``intensity_power=0``, the intensity ablation) would weigh them as much as any other."""
        from fastspec.chem.adducts import normalize_adduct
        from fastspec.chem.formula import canonical_formulas
        from fastspec.fingerprints import (first_block, formulas_from_inchi, formulas_from_smiles, molecule_keys,
                                           smiles_from_inchi)

        md = spectra.metadata
        n = len(spectra)
        smiles = _map_unique(_col(md, "smiles"), _clean_str, n)
        inchi = _map_unique(_col(md, "inchi"), _clean_str, n)
        # a structure given only as an InChI: its SMILES, so that it is fingerprinted and has a scaffold (it
        # was an invalid structure: excluded from test, Tanimoto 0 as a prediction, a scaffold group of its own)
        only_inchi = [i for i in range(n) if not smiles[i] and inchi[i]]
        n_smiles_from_inchi = 0
        if only_inchi:
            for i, smi in zip(only_inchi, smiles_from_inchi([inchi[i] for i in only_inchi])):
                if smi:
                    smiles[i] = smi
                    n_smiles_from_inchi += 1
        mol = _map_unique(_col(md, "inchikey14"), first_block, n)
        if any(m is None for m in mol):
            ik = _map_unique(_col(md, "inchikey"), first_block, n)
            mol = [a if a is not None else b for a, b in zip(mol, ik)]
        missing = [i for i, m in enumerate(mol) if m is None and smiles[i]]
        n_from_smiles = 0
        if missing:
            keys, n_from_smiles = molecule_keys(None, None, [smiles[i] for i in missing])
            for i, k in zip(missing, keys):
                mol[i] = k

        def canon(v):
            try:  # "NaN" / "inf" are missing, as for the library's buckets (canonical_formulas), not N + Na
                return canonical_formulas([v])[0]
            except Exception:  # unparsable formula: treated as missing (counted)
                return None

        formula = _map_unique(_col(md, "formula"), canon, n)
        n_derived = {}
        if derive_formula:  # from the SMILES, else the InChI (GNPS records often give only an InChI)
            for key, structure, derive in (("smiles", smiles, formulas_from_smiles),
                                           ("inchi", inchi, formulas_from_inchi)):
                missing = [i for i in range(n) if formula[i] is None and structure[i]]
                derived = derive([structure[i] for i in missing]) if missing else []
                for i, f in zip(missing, derived):
                    formula[i] = canon(f) if f is not None else None
                n_derived[key] = sum(formula[i] is not None for i in missing)

        from fastspec.io.meta import MISSING_MARKERS

        def norm_adduct(v):
            # unreadable: kept as written (a bucket of its own), not dropped (normalize_adduct gives None); a
            # missing marker ("N/A", "nan", "unknown" in a table's column) is missing, not a bucket
            text = _clean_str(v)
            if text is None or text.lower() in MISSING_MARKERS:
                return None
            try:
                return normalize_adduct(text) or text
            except Exception:
                return text

        adduct = _map_unique(_col(md, "adduct"), norm_adduct, n)
        instrument = _map_unique(_col(md, "instrument_type"), _clean_str, n)
        ce, ce_norm = _ce_values(md, n)
        counts = {
            "n_spectra": n,
            "n_no_molecule": sum(m is None for m in mol),
            "n_molecule_from_smiles": n_from_smiles,
            "n_smiles_from_inchi": n_smiles_from_inchi,
            "n_no_formula": sum(f is None for f in formula),
            "n_formula_from_smiles": n_derived.get("smiles", 0),
            "n_formula_from_inchi": n_derived.get("inchi", 0),
        }
        counts["n_ce_normalized"] = int((ce_norm & ~np.isnan(ce)).sum())
        zero = np.asarray(spectra.intensity) == 0
        counts["n_zero_intensity_dropped"] = int(zero.sum())
        spectra = spectra.keep_peaks(~zero)
        return cls(spectra, mol, smiles, formula, adduct, spectra.polarity, instrument, ce,
                   ce_bin_labels(ce, normalized=ce_norm), counts, ce_normalized=ce_norm)

    def __len__(self) -> int:
        return len(self.spectra)

    # ------------------------------------------------------------------ molecules
    @property
    def mol_code(self) -> np.ndarray:
        """Molecule keys as int64 codes (-1 unknown); codes are private to this LabData."""
        if self._mol_code is None:
            self._mol_code = factorize([self.mol])[0]
        return self._mol_code

    def attach_fingerprints(self, spec="morgan:2:4096", *, table=None, cache_dir=None) -> "LabData":
        """Fingerprint every distinct molecule once; sets ``fps`` and ``fp_row``. Returns self."""
        from fastspec.fingerprints import FingerprintSpec, fingerprint_molecules

        if table is None and self.fps is not None and self.fps.spec == FingerprintSpec.parse(spec):
            table = self.fps  # already fingerprinted (e.g. reused across splits): nothing to compute
        self.fps = fingerprint_molecules(self.mol, self.smiles, spec, table=table, cache_dir=cache_dir)
        self.fp_row = self.fps.rows(self.mol)
        return self

    def take(self, rows: np.ndarray) -> "LabData":
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
        return LabData(
            self.spectra.take(rows),
            pick(self.mol),
            pick(self.smiles),
            pick(self.formula),
            pick(self.adduct),
            self.polarity[rows],
            pick(self.instrument_type),
            self.ce[rows],
            pick(self.ce_bin),
            dict(self.counts),
            self.fps,
            None if self.fp_row is None else self.fp_row[rows],
            self.source_index[rows],
            self.n_source,
            ce_normalized=self.ce_normalized[rows],
        )

    def field(self, name: str) -> list:
        """A label column by name (``instrument_type``, ``adduct``, ``ce_bin``, ``formula``, ``mol``)."""
        if name not in ("instrument_type", "adduct", "ce_bin", "formula", "mol", "smiles"):
            raise ParameterError(f"unknown label field {name!r}")
        return getattr(self, name)


def _ce_values(md: pa.Table, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Collision energies, float64 (n,) (NaN unknown), and which are normalized (NCE %), bool (n,): from
    ``ce_min`` / ``ce_max`` (their mean) and ``ce_unit`` columns where present (MassBank's), else parsed
    from ``collision_energy``."""
    unit = _col(md, "ce_unit")
    text = _col(md, "collision_energy")
    normalized = np.zeros(n, dtype=bool)
    for c in (unit, text):
        if c is not None and not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)):
            normalized |= np.array(_map_unique(c, _is_normalized, n), dtype=object) == True  # noqa: E712 (None: no)
    lo, hi = _col(md, "ce_min"), _col(md, "ce_max")
    out = np.full(n, np.nan)
    if lo is not None:
        a = pc.cast(lo, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        b = pc.cast(hi, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64) if hi is not None else a
        b = np.where(np.isnan(b), a, b)
        out = 0.5 * (a + b)
    col = _col(md, "collision_energy")
    if col is not None and np.isnan(out).any():
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            parsed = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            parsed = np.array(_map_unique(col, _parse_ce, n), dtype=object)
            parsed = np.array([math.nan if v is None else v for v in parsed], dtype=np.float64)
        out = np.where(np.isnan(out), parsed, out)
    return out, normalized


def factorize(columns: Sequence[Sequence]) -> tuple[np.ndarray, list]:
    """Joint integer codes of one or more aligned key columns.

    Parameters
    ----------
    columns : sequence of sequences
        Several lists (possibly of different lengths: e.g. library and queries) whose values share one
        code space. ``None`` stays -1.

    Returns
    -------
    codes : ndarray, int64, concatenation of all columns' codes
    uniques : list of the distinct values, code order
    """
    arrays = [pa.array(list(c), pa.string()) if not isinstance(c, pa.Array) else c for c in columns]
    arr = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
    enc = arr.dictionary_encode()
    codes = enc.indices.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=True)
    return codes, enc.dictionary.to_pylist()


def bucket_keys(lab: LabData, bucket: str) -> pa.Array:
    """String bucket key per spectrum: polarity, plus formula (and adduct); null = no bucket."""
    if bucket not in BUCKETS:
        raise ParameterError(f"bucket must be one of {', '.join(BUCKETS)}; got {bucket!r}")
    pol = pc.cast(pa.array(lab.polarity.astype(np.int8)), pa.string())
    parts = [pol]
    if bucket in ("formula", "formula+adduct"):
        parts.append(pa.array(lab.formula, pa.string()))
    if bucket == "formula+adduct":
        parts.append(pa.array(lab.adduct, pa.string()))
    if len(parts) == 1:
        return pol
    return pc.binary_join_element_wise(*parts, "|")  # null if any part is null


# ====================================================================== search configuration
@dataclass(frozen=True)
class SearchConfig:
    """How the NN baseline searches and predicts.

    Attributes
    ----------
    metric : {"binned_cosine", "cosine", "modified_cosine", "entropy"}
    tolerance : float or str
        Fragment tolerance (Da float or ``"10ppm"``); for binned_cosine the bin width.
    mz_power, intensity_power : float
        Peak weights ``mz**mz_power * intensity**intensity_power`` (matchms naming); ignored by
        entropy unless set explicitly.
    bucket : {"formula", "formula+adduct", "none"}
        Candidate restriction (always also same polarity).
    no_neighbour : {"skip", "fallback", "zero"}
        Test spectra without a same-bucket training spectrum: ``skip`` leaves them unscored, ``fallback``
        searches all training spectra of the same polarity (a spectrum of unknown polarity: those of unknown
        polarity; with none it stays unscored, counted in ``n_test`` but not ``n_scored``), ``zero`` scores
        them 0.
    vote : int
        1 = copy the top-1 neighbour's molecule; k > 1 = the molecule with the highest summed score
        among the top-k neighbours (ties: the better-ranked molecule).
    search_k : int
        Neighbours retrieved per query (for hit@k and voting).
    shuffle_intensities : bool
        Control: permute intensities within every spectrum (seeded by ``shuffle_seed``).
    metric_params : tuple of (name, value)
        Extra keyword arguments for :func:`fastspec.similarity.prepare` (e.g. the khoo2026 preset).
    """

    metric: str = "modified_cosine"
    tolerance: Any = 0.01
    mz_power: float = 0.0
    intensity_power: float = 1.0
    bucket: str = "formula"
    no_neighbour: str = "skip"
    vote: int = 1
    search_k: int = 50
    shuffle_intensities: bool = False
    shuffle_seed: int = 0
    metric_params: tuple = ()
    preset: str | None = None

    def validate(self) -> "SearchConfig":
        if self.metric not in METRICS:
            raise ParameterError(f"metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.bucket not in BUCKETS:
            raise ParameterError(f"bucket must be one of {', '.join(BUCKETS)}; got {self.bucket!r}")
        if self.no_neighbour not in POLICIES:
            raise ParameterError(f"no_neighbour must be one of {', '.join(POLICIES)}; got {self.no_neighbour!r}")
        if int(self.vote) < 1 or int(self.search_k) < int(self.vote):
            raise ParameterError(f"vote must be between 1 and the {int(self.search_k)} neighbours retrieved per query "
                                 f"(search_k), got {self.vote}")
        for name in ("mz_power", "intensity_power"):
            v = getattr(self, name)
            # numpy scalars too (np.float32 is no float); stored as a float, so that reports stay JSON
            if not (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    and math.isfinite(v) and v >= 0):
                raise ParameterError(f"{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        from fastspec.tolerance import parse_tolerance

        parse_tolerance(self.tolerance)
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["metric_params"] = dict(self.metric_params)
        d["tolerance"] = str(self.tolerance)
        return d

    def replace(self, **kw) -> "SearchConfig":
        return replace(self, **kw)


#: khoo2026 preset (Khoo & Barzilay, Nat Metab 2026): binned cosine, 0.25 Da bins to 2000 Da, base
#: peak scaled to 100, intensities summed per bin, a peak of 100 at the precursor m/z; same formula;
#: no neighbour -> skip; top-1 with ties to the lowest library row.
KHOO2026 = SearchConfig(
    metric="binned_cosine",
    tolerance=0.25,
    mz_power=0.0,
    intensity_power=1.0,
    bucket="formula",
    no_neighbour="skip",
    vote=1,
    metric_params=(("preset", "khoo2026"),),
    preset="khoo2026",
)
PRESETS = {"khoo2026": KHOO2026}


# ====================================================================== search
@dataclass
class NNResult:
    """Neighbours of each query.

    Attributes
    ----------
    neighbours : ndarray, int64 (nq, search_k)
        Library rows (positions in the library LabData), best first; -1 padding.
    scores : ndarray, float64 (nq, search_k)
    covered : ndarray, bool (nq,)
        The query has at least one library spectrum in its bucket.
    n_candidates : ndarray, int64 (nq,)
        Library spectra in the query's bucket.
    fallback : ndarray, bool (nq,)
        The neighbours come from the polarity-wide fallback search.
    """

    neighbours: np.ndarray
    scores: np.ndarray
    covered: np.ndarray
    n_candidates: np.ndarray
    fallback: np.ndarray


def shuffle_intensities(spectra: Spectra, seed: int) -> Spectra:
    """Permute the intensities within each spectrum (m/z untouched); seeded, vectorised."""
    n_peaks = spectra.offsets[-1]
    seg = np.repeat(np.arange(len(spectra), dtype=np.int64), np.diff(spectra.offsets))
    rng = np.random.default_rng(seed)
    # one sort of (spectrum, random 32-bit key) packed in a uint64 keeps every peak inside its own
    # spectrum's range (np.lexsort on two keys is ~20x slower at 30M peaks)
    key = (seg.astype(np.uint64) << np.uint64(32)) | rng.integers(0, 1 << 32, size=n_peaks, dtype=np.uint64)
    order = np.argsort(key)
    return spectra.with_peaks(spectra.offsets, spectra.mz, spectra.intensity[order])


def _metric_kwargs(cfg: SearchConfig) -> dict:
    kw = dict(cfg.metric_params)
    kw.update(tolerance=cfg.tolerance, mz_power=cfg.mz_power, intensity_power=cfg.intensity_power)
    return kw


def prepare_side(spectra: Spectra, cfg: SearchConfig, seed_offset: int = 0):
    """Prepared spectra for the similarity kernel (shuffle control applied first)."""
    from fastspec import similarity

    if cfg.shuffle_intensities:
        spectra = shuffle_intensities(spectra, cfg.shuffle_seed + seed_offset)
    return similarity.prepare(spectra, cfg.metric, **_metric_kwargs(cfg))


def nn_search(
    queries: LabData,
    library: LabData,
    cfg: SearchConfig,
    *,
    query_rows: np.ndarray | None = None,
    library_rows: np.ndarray | None = None,
    prepared: tuple | None = None,
    threads: int | None = None,
) -> NNResult:
    """Top ``cfg.search_k`` library neighbours of each query inside its bucket (same polarity).

    Parameters
    ----------
    queries, library : LabData
        May be the same object (a split of one library).
    query_rows, library_rows : ndarray of int64, optional
        Subsets (e.g. test and train rows). Returned neighbour indices are positions in ``library``
        (not in ``library_rows``).
    prepared : (prepared_queries, prepared_library), optional
        Output of :func:`prepare_side` for the *whole* ``queries`` / ``library`` (reused across splits).
    """
    from fastspec import similarity

    cfg.validate()
    qrows = np.arange(len(queries), dtype=np.int64) if query_rows is None else np.asarray(query_rows, np.int64)
    lrows = np.arange(len(library), dtype=np.int64) if library_rows is None else np.asarray(library_rows, np.int64)
    if prepared is None:
        # one library split into test and train is prepared once (both sides share the arrays)
        pq_ = prepare_side(queries.spectra, cfg, 0)
        pl_ = pq_ if queries is library else prepare_side(library.spectra, cfg, 1)
    else:
        pq_, pl_ = prepared
    nq = qrows.shape[0]
    k = int(cfg.search_k)
    neigh = np.full((nq, k), -1, dtype=np.int64)
    scores = np.zeros((nq, k), dtype=np.float64)
    fallback = np.zeros(nq, dtype=bool)

    # bucket codes shared by both sides; a library mask restricts candidates to lrows
    mask = np.zeros(len(library), dtype=bool)
    mask[lrows] = True
    qkeys, lkeys = _joint_codes(bucket_keys(queries, cfg.bucket), bucket_keys(library, cfg.bucket))
    groups = similarity.KeyGroups(qkeys[qrows], lkeys, library_mask=mask)
    n_cand = groups.lengths
    covered = n_cand > 0
    _topk_in_groups(groups, np.arange(nq, dtype=np.int64), qrows, pq_, pl_, cfg, threads, neigh, scores)
    if cfg.no_neighbour == "fallback" and (~covered).any():
        miss = np.flatnonzero(~covered)
        qp, lp = _joint_codes(bucket_keys(queries, "none"), bucket_keys(library, "none"))
        _topk_in_groups(similarity.KeyGroups(qp[qrows[miss]], lp, library_mask=mask), miss, qrows[miss], pq_, pl_, cfg,
                        threads, neigh, scores)
        fallback[miss] = neigh[miss, 0] >= 0
    return NNResult(neigh, scores, covered, n_cand, fallback)


#: candidate pairs listed at once by :func:`nn_search` (~16 bytes each): a bucket as large as a polarity's
#: whole training side, for every test spectrum without a same-formula one, asked for terabytes at 2.4M
PAIRS_PER_CHUNK = 1 << 25


def _topk_in_groups(groups, at: np.ndarray, rows: np.ndarray, pq_, pl_, cfg: SearchConfig, threads, neigh: np.ndarray,
                    scores: np.ndarray) -> None:
    """Top ``cfg.search_k`` of each query ``rows[i]`` among its ``groups`` candidates into ``neigh[at[i]]`` /
    ``scores[at[i]]``, a run of queries at a time (at most :data:`PAIRS_PER_CHUNK` pairs listed)."""
    from fastspec import similarity

    kw = _metric_kwargs(cfg)
    for start, stop, offs, cand in groups.chunks(PAIRS_PER_CHUNK):
        if cand.shape[0] == 0:
            continue
        s, idx, _ = similarity.topk_candidates(_take_prepared(pq_, rows[start:stop]), pl_, offs, cand,
                                               int(cfg.search_k), metric=cfg.metric, threads=threads, **kw)
        neigh[at[start:stop]] = idx
        scores[at[start:stop]] = s


def _joint_codes(a: pa.Array, b: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    codes, _ = factorize([a, b])
    return codes[: len(a)], codes[len(a) :]


def _take_prepared(prepared, rows: np.ndarray):
    """Rows of a prepared query set (identity when ``rows`` is everything, in order)."""
    n = len(prepared)
    if rows.shape[0] == n and (n == 0 or (rows[0] == 0 and np.all(np.diff(rows) == 1))):
        return prepared
    return prepared.take(rows)


def predict_molecules(result: NNResult, library_mol_code: np.ndarray, vote: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The predicted library row per query (top-1, or the representative of the voted molecule).

    Returns
    -------
    row : ndarray, int64 (nq,)
        Library position whose molecule is predicted (-1 none).
    score : ndarray, float64 (nq,)
        Its similarity score (top-1) or summed vote score.
    """
    nb = result.neighbours
    if vote <= 1:
        return nb[:, 0].copy(), np.where(nb[:, 0] >= 0, result.scores[:, 0], 0.0)
    nq = nb.shape[0]
    row = np.full(nq, -1, dtype=np.int64)
    best = np.zeros(nq)
    top = nb[:, :vote]
    sc = result.scores[:, :vote]
    for q in range(nq):  # vote is small (<= search_k); queries with no neighbour skipped quickly
        if top[q, 0] < 0:
            continue
        tally: dict[int, float] = {}
        first: dict[int, int] = {}
        for r in range(top.shape[1]):
            j = top[q, r]
            if j < 0:
                break
            m = int(library_mol_code[j])
            tally[m] = tally.get(m, 0.0) + sc[q, r]
            first.setdefault(m, j)
        # highest total, ties to the molecule seen first (dict order = rank order)
        m_best = max(tally, key=lambda m: tally[m])
        row[q] = first[m_best]
        best[q] = tally[m_best]
    return row, best
