"""Molecular identities and fingerprints for scoring predicted molecules.

* :func:`molecule_keys` gives every spectrum a molecule identity: the InChIKey first block
  (``inchikey14``), else the first block of ``inchikey``, else one computed from the SMILES with RDKit.
* :class:`FingerprintTable` holds one packed fingerprint per *unique* molecule (uint64 words, see
  :mod:`fastspec.kernels.tanimoto`), so a library of a million spectra of 25k molecules costs 25k
  RDKit calls. It can be saved to / loaded from a directory of ``.npy`` files (no pickle) and is then a
  persistent cache: :func:`fingerprint_molecules` only computes the molecules it does not yet hold.

One structure per molecule: the fingerprint of a key is computed from the first SMILES seen for it.
Tautomers and charge forms share an InChIKey first block but not a SMILES (in MassBank 97 of 5,108
compounds have SMILES whose Morgan Tanimoto against each other is as low as 0.2), so keying by molecule
keeps the same compound at Tanimoto 1.

Invalid structures: a SMILES that RDKit cannot parse (or a missing one) gives an *invalid* entry
(``valid`` False, all bits zero). Its Tanimoto against anything is 0 — except that the evaluation
scores a prediction of the very same molecule key as 1.0 (identity does not need a fingerprint).
The evaluation reports how many structures were invalid.

RDKit is imported lazily, inside the functions that need it.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fastspec.errors import FastspecError, ParameterError

_SPEC_RE = re.compile(r"^\s*morgan(?::(\d+))?(?::(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class FingerprintSpec:
    """Which fingerprint to compute.

    Attributes
    ----------
    kind : str
        Only ``"morgan"`` (RDKit ``rdFingerprintGenerator.GetMorganGenerator``, bit vector).
    radius : int
        Morgan radius (2 = ECFP4-like).
    n_bits : int
        Folded length in bits.
    """

    kind: str = "morgan"
    radius: int = 2
    n_bits: int = 4096

    @classmethod
    def parse(cls, spec: "str | FingerprintSpec") -> "FingerprintSpec":
        """Parse ``"morgan:RADIUS:NBITS"`` (``"morgan"`` alone means ``morgan:2:4096``)."""
        if isinstance(spec, FingerprintSpec):
            return spec
        m = _SPEC_RE.match(str(spec))
        if not m:
            raise ParameterError(f"fingerprint: cannot parse {spec!r}; use e.g. 'morgan:2:4096'")
        radius = int(m.group(1)) if m.group(1) else 2
        n_bits = int(m.group(2)) if m.group(2) else 4096
        if not (0 <= radius <= 10) or not (8 <= n_bits <= 1 << 20):
            raise ParameterError(f"fingerprint: radius must be 0..10 and bits 8..1048576, got {spec!r}")
        return cls("morgan", radius, n_bits)

    def __str__(self) -> str:
        return f"{self.kind}:{self.radius}:{self.n_bits}"

    @property
    def n_words(self) -> int:
        return (self.n_bits + 63) // 64


class FingerprintTable:
    """Packed fingerprints of unique molecules, addressed by molecule key.

    Attributes
    ----------
    spec : FingerprintSpec
    keys : list of str, length m
        Molecule keys (e.g. InChIKey first blocks), unique.
    packed : ndarray, uint64, shape (m, spec.n_words)
    valid : ndarray, bool, shape (m,)
        False when the structure could not be parsed (bits are then all zero).
    """

    def __init__(self, spec: FingerprintSpec, keys: Sequence[str], packed: np.ndarray, valid: np.ndarray):
        packed = np.ascontiguousarray(packed, dtype=np.uint64)
        valid = np.asarray(valid, dtype=bool)
        keys = [str(k) for k in keys]
        if packed.shape != (len(keys), spec.n_words) or valid.shape != (len(keys),):
            raise FastspecError("FingerprintTable: keys, packed and valid disagree in shape")
        self.spec = spec
        self.keys = keys
        self.packed = packed
        self.valid = valid
        self._pos = {k: i for i, k in enumerate(keys)}
        if len(self._pos) != len(keys):
            raise FastspecError("FingerprintTable: duplicate molecule keys")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._pos

    def rows(self, keys: Iterable[str | None]) -> np.ndarray:
        """Row of each key, int64; -1 for unknown keys or None."""
        get = self._pos.get
        return np.fromiter((get(k, -1) if k is not None else -1 for k in keys), dtype=np.int64)

    def extend(self, keys: Sequence[str], packed: np.ndarray, valid: np.ndarray) -> "FingerprintTable":
        """A new table with these keys' fingerprints: new keys appended, known ones replaced."""
        keys = [str(k) for k in keys]
        old = np.array([self._pos.get(k, -1) for k in keys], dtype=np.int64)
        packed, valid = np.asarray(packed, np.uint64), np.asarray(valid, bool)
        base_p, base_v = self.packed.copy(), self.valid.copy()
        known = old >= 0
        base_p[old[known]], base_v[old[known]] = packed[known], valid[known]
        return FingerprintTable(self.spec, self.keys + [k for k, o in zip(keys, old) if o < 0],
                                np.concatenate([base_p, packed[~known]]), np.concatenate([base_v, valid[~known]]))

    # ------------------------------------------------------------------ persistence (.npy only, no pickle)
    def save(self, directory: str | Path) -> None:
        """Write ``<slug>.keys.npy``, ``.bits.npy``, ``.valid.npy`` and ``.json`` into ``directory``."""
        from fastspec._atomic import output_target, write_atomically, write_text_atomically

        d = Path(directory)
        output_target(d)  # refused inside a library index (an append's rebuild would delete it)
        d.mkdir(parents=True, exist_ok=True)
        slug = _slug(self.spec)
        keys = np.array(self.keys, dtype=np.str_) if self.keys else np.zeros(0, dtype="<U1")
        # each file renamed into place when complete, the JSON last: an interrupted save leaves files that
        # load() finds inconsistent (lengths) or a previous complete table, never a torn array
        for name, arr in (("keys", keys), ("bits", self.packed), ("valid", self.valid)):
            write_atomically(d / f"{slug}.{name}.npy", lambda tmp, a=arr: _save_npy(tmp, a))
        write_text_atomically(d / f"{slug}.json", json.dumps({"spec": str(self.spec), "n": len(self.keys)}))

    @classmethod
    def load(cls, directory: str | Path, spec: "str | FingerprintSpec") -> "FingerprintTable":
        """Load a table saved by :meth:`save`; an empty table when the directory holds none for ``spec``."""
        spec = FingerprintSpec.parse(spec)
        d = Path(directory)
        slug = _slug(spec)
        if not (d / f"{slug}.json").exists():
            return cls(spec, [], np.zeros((0, spec.n_words), np.uint64), np.zeros(0, bool))
        try:
            keys = np.load(d / f"{slug}.keys.npy", allow_pickle=False)
            packed = np.load(d / f"{slug}.bits.npy", allow_pickle=False)
            valid = np.load(d / f"{slug}.valid.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FastspecError(f"fingerprint cache {d} is unreadable: {e}") from e
        if not len(keys) == len(packed) == len(valid):  # a save interrupted between its files: start afresh
            return cls(spec, [], np.zeros((0, spec.n_words), np.uint64), np.zeros(0, bool))
        return cls(spec, keys.tolist(), packed, valid)


def _save_npy(path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a path np.save would give a second ".npy"
        np.save(f, arr, allow_pickle=False)


def _slug(spec: FingerprintSpec) -> str:
    return f"{spec.kind}_r{spec.radius}_b{spec.n_bits}"


# ---------------------------------------------------------------------- RDKit helpers
def _rdkit():
    try:
        from rdkit import Chem
    except ImportError as e:  # pragma: no cover - depends on environment
        raise FastspecError("RDKit is missing (a dependency of fastspec): pip install rdkit") from e
    return Chem


@contextlib.contextmanager
def _quiet_rdkit():
    """RDKit's log silenced while inside (invalid SMILES and InChI warnings are counted, not printed),
    and left as the caller had it afterwards (``RDLogger.DisableLog`` would silence it for the process)."""
    from rdkit import rdBase

    block = rdBase.BlockLogs()
    try:
        yield
    finally:
        del block


def mol_from_smiles(smiles: str | None):
    """RDKit molecule or None (missing / unparsable SMILES)."""
    if not smiles or not isinstance(smiles, str):
        return None
    Chem = _rdkit()
    try:
        with _quiet_rdkit():
            return Chem.MolFromSmiles(smiles.strip())
    except Exception:  # RDKit raises a zoo of exception types on odd input
        return None


def compute_fingerprints(smiles: Sequence[str | None], spec: "str | FingerprintSpec" = "morgan:2:4096") -> tuple[np.ndarray, np.ndarray]:
    """Fingerprint each SMILES (no de-duplication: pass unique molecules).

    Returns
    -------
    packed : ndarray, uint64, shape (n, n_words)
    valid : ndarray, bool, shape (n,)
    """
    spec = FingerprintSpec.parse(spec)
    n = len(smiles)
    packed = np.zeros((n, spec.n_words), dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    if n == 0:
        return packed, valid
    _rdkit()
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=spec.radius, fpSize=spec.n_bits)
    rows: list[np.ndarray] = []
    bits: list[np.ndarray] = []
    for i, s in enumerate(smiles):
        mol = mol_from_smiles(s)
        if mol is None:
            continue
        try:
            on = np.asarray(list(gen.GetFingerprint(mol).GetOnBits()), dtype=np.int64)
        except Exception:
            continue
        valid[i] = True
        rows.append(np.full(on.shape[0], i, dtype=np.int64))
        bits.append(on)
    if rows:
        r = np.concatenate(rows)
        b = np.concatenate(bits)
        # set bit b of row r: word b >> 6, bit b & 63 (little-endian layout of kernels.tanimoto)
        np.bitwise_or.at(packed, (r, b >> 6), np.left_shift(np.uint64(1), (b & 63).astype(np.uint64)))
    return packed, valid


def fingerprint_molecules(
    keys: Sequence[str],
    smiles: Sequence[str | None],
    spec: "str | FingerprintSpec" = "morgan:2:4096",
    *,
    table: FingerprintTable | None = None,
    cache_dir: str | Path | None = None,
) -> FingerprintTable:
    """A table holding a fingerprint for every key, computing only the keys not already known.

    Parameters
    ----------
    keys : sequence of str
        Molecule keys (may repeat; each distinct key is fingerprinted once, from its first SMILES that
        RDKit parses: one broken record does not drop the molecule).
    smiles : sequence of str or None
        SMILES aligned with ``keys``.
    spec : str or FingerprintSpec
    table : FingerprintTable, optional
        Start from these precomputed fingerprints (same spec).
    cache_dir : path, optional
        On-disk cache: loaded first, and re-saved when new molecules were computed.
    """
    spec = FingerprintSpec.parse(spec)
    if len(keys) != len(smiles):
        raise FastspecError("keys and smiles differ in length")
    if table is None:
        table = (
            FingerprintTable.load(cache_dir, spec)
            if cache_dir is not None
            else FingerprintTable(spec, [], np.zeros((0, spec.n_words), np.uint64), np.zeros(0, bool))
        )
    elif table.spec != spec:
        raise ParameterError(f"precomputed fingerprints are {table.spec}, requested {spec}")
    # known keys are skipped, unless their cached fingerprint is invalid and a SMILES is at hand (a cache
    # written from a broken first record)
    cands = smiles_by_key((k, s) for k, s in zip(keys, smiles) if k is not None and (k not in table or (
        s and not table.valid[table._pos[k]])))
    if cands:
        new, packed, valid = first_valid(cands, lambda smi: compute_fingerprints(smi, spec))
        changed = any(k not in table for k in new) or bool(valid.any())  # else: known and still invalid
        table = table.extend(new, np.asarray(packed, np.uint64).reshape(len(new), spec.n_words), valid)
        if cache_dir is not None and changed:
            table.save(cache_dir)
    return table


# ---------------------------------------------------------------------- molecule identity
def first_block(inchikey) -> str | None:
    """First 14 characters of an InChIKey (upper case; an ``InChIKey=`` prefix, as some files write it,
    dropped, as the readers do), None when it does not look like one."""
    if not inchikey or not isinstance(inchikey, str):
        return None
    s = inchikey.strip().upper()
    if s.startswith("INCHIKEY") and s[8:].lstrip().startswith("="):
        s = s[8:].lstrip()[1:].lstrip()
    return s[:14] if len(s) >= 14 and s[:14].isalpha() else None


def molecule_keys(
    inchikey14: Sequence | None = None, inchikey: Sequence | None = None, smiles: Sequence | None = None
) -> tuple[list[str | None], int]:
    """One molecule identity per spectrum: the InChIKey first block (connectivity layer).

    Taken from ``inchikey14``, else ``inchikey``, else computed from ``smiles`` with RDKit.

    Returns
    -------
    keys : list of str or None
        None when no identity could be derived.
    n_computed : int
        How many keys had to be computed from SMILES.
    """
    n = max(len(x) for x in (inchikey14, inchikey, smiles) if x is not None) if any(
        x is not None for x in (inchikey14, inchikey, smiles)
    ) else 0
    ik14 = inchikey14 if inchikey14 is not None else [None] * n
    ik = inchikey if inchikey is not None else [None] * n
    smi = smiles if smiles is not None else [None] * n
    keys: list[str | None] = []
    todo: dict[str, None] = {}
    for a, b, s in zip(ik14, ik, smi):
        k = first_block(a) or first_block(b)
        keys.append(k)
        if k is None and s:
            todo[s] = None
    computed = _inchikeys_from_smiles(list(todo)) if todo else {}
    n_computed = 0
    for i, k in enumerate(keys):
        if k is None and smi[i]:
            k = computed.get(smi[i])
            if k is not None:
                keys[i] = k
                n_computed += 1
    return keys, n_computed


def _inchikeys_from_smiles(smiles: list[str]) -> dict[str, str]:
    Chem = _rdkit()
    out = {}
    for s in smiles:
        mol = mol_from_smiles(s)
        if mol is None:
            continue
        try:
            with _quiet_rdkit():
                ik = Chem.MolToInchiKey(mol)
        except Exception:
            ik = ""
        k = first_block(ik)
        if k:
            out[s] = k
    return out


def smiles_by_key(pairs) -> dict:
    """``{key: [distinct non-empty SMILES in order of appearance]}`` of ``(key, smiles)`` pairs (a key
    without any SMILES gets an empty list)."""
    out: dict = {}
    for k, s in pairs:
        seen = out.setdefault(k, [])
        if s and s not in seen:
            seen.append(s)
    return out


def first_valid(cands: dict, compute) -> tuple[list, list, np.ndarray]:
    """Per key, ``compute``'s result for its first SMILES that gives a valid one.

    ``compute(list of SMILES or None) -> (results, valid bool)`` is called on the first candidate of every
    key, then on the next candidate of the keys still invalid, and so on (usually once: most molecules
    have one SMILES, and few of those fail).

    Returns
    -------
    keys : list
    results : list
        One per key (the last one tried when none is valid).
    valid : ndarray, bool
    """
    keys = list(cands)
    results: list = [None] * len(keys)
    valid = np.zeros(len(keys), dtype=bool)
    todo, depth = list(range(len(keys))), 0
    while todo:
        smi = [cands[keys[i]][depth] if depth < len(cands[keys[i]]) else None for i in todo]
        res, ok = compute(smi)
        for j, i in enumerate(todo):
            results[i], valid[i] = res[j], bool(ok[j])
        depth += 1
        todo = [i for i in todo if not valid[i] and depth < len(cands[keys[i]])]
    return keys, results, valid


def mol_from_inchi(inchi: str | None):
    """RDKit molecule of an InChI (``InChI=`` prefix optional) or None (missing / unparsable)."""
    if not inchi or not isinstance(inchi, str):
        return None
    inchi = inchi.strip()
    if not inchi.startswith("InChI="):
        inchi = "InChI=" + inchi
    Chem = _rdkit()
    try:
        with _quiet_rdkit():
            return Chem.MolFromInchi(inchi)
    except Exception:  # as for SMILES
        return None


def map_smiles(smiles: Sequence[str | None], fn, parse=None) -> list:
    """``fn(mol)`` for each SMILES (or other structure text that ``parse`` reads, default
    :func:`mol_from_smiles`), computed once per distinct value; None when empty or unparsable."""
    parse = mol_from_smiles if parse is None else parse
    cache: dict = {}
    out = []
    for s in smiles:
        if not s:
            out.append(None)
            continue
        if s not in cache:
            mol = parse(s)
            if mol is None:
                cache[s] = None
            else:
                with _quiet_rdkit():
                    cache[s] = fn(mol)
        out.append(cache[s])
    return out


def _formula_of(mol):
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    if any(a.GetAtomicNum() == 0 for a in mol.GetAtoms()):
        return None
    # isotopes kept apart ([13C], D, T), as a written formula keeps them: a d8 compound's derived formula was
    # its unlabelled parent's, and it shared that bucket (an audit); an explicit most-abundant isotope ([12C],
    # [1H], [16O]) is the element itself, not a bucket of its own
    natural = [a for a in mol.GetAtoms() if a.GetIsotope() and a.GetIsotope() == _main_isotope(a.GetSymbol())]
    if natural:
        from rdkit import Chem

        mol = Chem.Mol(mol)
        for a in natural:
            mol.GetAtomWithIdx(a.GetIdx()).SetIsotope(0)
    return CalcMolFormula(mol, separateIsotopes=True, abbreviateHIsotopes=True)


def _main_isotope(symbol: str) -> int:
    """Mass number of an element's monoisotopic (most abundant) isotope (0: unknown element)."""
    from fastspec.chem.elements import MONOISOTOPIC

    m = MONOISOTOPIC.get(symbol)
    return int(round(m)) if m else 0


def formulas_from_smiles(smiles: Sequence[str | None]) -> list[str | None]:
    """Molecular formula (Hill order, RDKit; with the charge the SMILES carries, components of a salt
    summed, isotopes apart: ``[2H]C([2H])([2H])O`` is ``CHD3O``) of each SMILES; None when unparsable or when it holds dummy atoms (``*``, R groups: RDKit
    writes ``*2`` into the formula, which is no formula)."""
    _rdkit()
    return map_smiles(smiles, _formula_of)


def smiles_from_inchi(inchi: Sequence[str | None]) -> list[str | None]:
    """Canonical SMILES (RDKit) of each InChI, for records that give a structure only as an InChI (GNPS,
    MoNA exports): fingerprints, scaffolds and molecule keys read SMILES. None when missing or unparsable."""
    Chem = _rdkit()
    return map_smiles(inchi, Chem.MolToSmiles, parse=mol_from_inchi)


def formulas_from_inchi(inchi: Sequence[str | None]) -> list[str | None]:
    """Molecular formula of each InChI, as :func:`formulas_from_smiles` gives it for the structure (RDKit
    applies the InChI's charge and proton layers); None when missing or unparsable."""
    _rdkit()
    return map_smiles(inchi, _formula_of, parse=mol_from_inchi)
