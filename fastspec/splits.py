"""Train/test splits of a labelled library and their profile.

A split is an int8 assignment per spectrum: :data:`TRAIN` (0), :data:`TEST` (1) or :data:`EXCLUDED` (-1).
Specs understood by :func:`make_split` (and ``fastspec split`` / ``fastspec evaluate --split``):

``random``
    spectrum-level random split (the same molecule can be on both sides).
``inchikey``
    molecule-disjoint: whole InChIKey first-block groups go to one side.
``formula``
    formula-disjoint: whole canonical-formula groups go to one side; spectra without a formula are
    excluded. No test spectrum has a same-formula training spectrum, so the formula-bucket NN baseline
    covers none of them and its ``no_neighbour`` policy alone decides the result.
``scaffold``
    Bemis-Murcko-scaffold-disjoint (RDKit ``MurckoScaffold``). All acyclic molecules share the empty
    scaffold and form one group; molecules whose SMILES cannot be parsed are grouped by their own key.
``instrument:VALUE`` / ``adduct:VALUE``
    condition shift: test = spectra whose instrument type / adduct equals VALUE (case-insensitive;
    comma-separated values allowed), train = all others.
``ce:LOW-HIGH``, ``ce:LOW-HIGH%``
    test = absolute collision energies (eV, V or no unit written) in [LOW, HIGH], or with ``%`` (or
    ``nce``) normalized ones (NCE %, see :class:`fastspec.baseline.LabData`); spectra without a CE, or
    with an energy of the other kind, stay in train.
``column:NAME``
    a metadata column holding ``train``/``test`` (or booleans / 1/0, true = test); anything else excluded.
``file:PATH``
    a split file written by :func:`write_split` (CSV/TSV/parquet with ``id`` and/or ``index`` and ``split``).
``l2s``
    learning-to-split adapted to a CPU (:func:`l2s_split`).

Group splits fill the test side greedily with groups in a seeded random order, skipping groups that
would overshoot the target, so the test share lands close to ``test_fraction``. That order is drawn
over the sorted group labels, so the same spectra read in another order get the same group split for
a seed; ``random`` (row-level) and ``l2s`` (its predictor fingerprints each molecule from its first
parsable SMILES and breaks nearest-neighbour ties by row) still depend on the order of the rows.
``molecule_disjoint=True`` additionally drops (excludes) training spectra whose molecule is in test,
for any split kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from fastspec._atomic import write_atomically
from fastspec.baseline import LabData, SearchConfig, factorize
from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra

TRAIN, TEST, EXCLUDED = 0, 1, -1
SHIFT_FIELDS = ("instrument_type", "adduct", "ce_bin")
SPLIT_KINDS = ("random", "inchikey", "formula", "scaffold", "instrument", "adduct", "ce", "column", "file", "l2s")


@dataclass
class Split:
    """A train/test assignment.

    Attributes
    ----------
    assignment : ndarray, int8 (n,)
        0 train, 1 test, -1 excluded.
    spec : str
        The spec it was made from (e.g. ``"scaffold"``, ``"instrument:LC-ESI-QTOF"``).
    params : dict
        test_fraction, seed and kind-specific settings.
    info : dict
        Extra diagnostics (l2s iteration history).
    """

    assignment: np.ndarray
    spec: str
    params: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def train(self) -> np.ndarray:
        """Training rows, int64 ascending."""
        return np.flatnonzero(self.assignment == TRAIN)

    @property
    def test(self) -> np.ndarray:
        """Test rows, int64 ascending."""
        return np.flatnonzero(self.assignment == TEST)

    def __len__(self) -> int:
        return self.assignment.shape[0]


# ====================================================================== basic splitters
def random_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Spectrum-level random assignment (int8 (n,)); exactly ``round(test_fraction * n)`` test rows."""
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    a = np.zeros(n, dtype=np.int8)
    a[rng.permutation(n)[: int(round(test_fraction * n))]] = TEST
    return a


def group_split(groups: Sequence, test_fraction: float = 0.2, seed: int = 0, eligible: np.ndarray | None = None) -> np.ndarray:
    """Group-disjoint assignment: every group lies entirely in train or in test.

    Parameters
    ----------
    groups : sequence of hashable or None, length n
        Group label per spectrum; None = its own singleton group.
    eligible : ndarray of bool (n,), optional
        Rows to assign; the others are EXCLUDED.
    """
    _check_fraction(test_fraction)
    n = len(groups)
    codes = _group_codes(groups)
    elig = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    a = np.full(n, EXCLUDED, dtype=np.int8)
    a[elig] = TRAIN
    if not elig.any():
        return a
    g = codes[elig]
    uniq, inv, sizes = np.unique(g, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(uniq.shape[0])
    target = int(round(test_fraction * g.shape[0]))
    chosen = _greedy_fill(sizes[order], target)
    is_test_group = np.zeros(uniq.shape[0], bool)
    is_test_group[order[chosen]] = True
    sub = np.where(is_test_group[inv], TEST, TRAIN).astype(np.int8)
    a[elig] = sub
    return a


def _greedy_fill(sizes: np.ndarray, target: int) -> np.ndarray:
    """Positions (in the given order) of groups taken into test: take while it fits, skip the rest."""
    take = []
    total = 0
    for i, s in enumerate(sizes.tolist()):
        if total >= target:
            break
        if total + s <= target:
            take.append(i)
            total += s
    if not take and sizes.shape[0] > 1:  # every group is larger than the target: take the smallest
        take.append(int(np.argmin(sizes)))
    return np.asarray(take, dtype=np.int64)


def _group_codes(groups: Sequence) -> np.ndarray:
    """int64 codes in the order of the group labels (sorted), so that a seeded split of the same spectra
    does not depend on the order they were read in; None values get unique codes of their own, after
    the labelled groups, in row order."""
    codes, uniq = factorize([[None if g is None else str(g) for g in groups]])
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[sorted(range(len(uniq)), key=uniq.__getitem__)] = np.arange(len(uniq), dtype=np.int64)
    none = codes < 0
    codes[~none] = rank[codes[~none]]
    codes[none] = len(uniq) + np.arange(int(none.sum()))
    return codes


def _check_fraction(f: float) -> None:
    if not (0.0 < float(f) < 1.0):
        raise ParameterError(f"test fraction must be in (0, 1), got {f!r}")


def scaffolds(smiles: Sequence[str | None]) -> list[str | None]:
    """Bemis-Murcko scaffold SMILES per entry (``""`` for acyclic molecules, None when unparsable).

    Without stereochemistry: the ring systems of stereoisomers (steroid cores, tropanes, nucleosides) are
    one scaffold, so a scaffold-disjoint split cannot put them on both sides.
    """
    from fastspec.fingerprints import map_smiles

    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    def scaffold(mol):
        try:
            return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol), isomericSmiles=False)
        except Exception:  # RDKit raises assorted errors on exotic molecules: no scaffold, not a crash
            return None

    return map_smiles(smiles, scaffold)


def molecule_scaffolds(lab: LabData) -> list[str | None]:
    """Scaffold per spectrum, computed from one structure per molecule key (the first SMILES seen that
    RDKit parses, so it follows row order). The scaffold split groups through :func:`scaffold_groups`
    instead, which joins every scaffold of every SMILES of a molecule."""
    from fastspec.fingerprints import first_valid, smiles_by_key

    def compute(smi):
        out = scaffolds(smi)
        return out, [v is not None for v in out]

    keys, found, _ = first_valid(smiles_by_key((m, s) for m, s in zip(lab.mol, lab.smiles) if m is not None), compute)
    scaf = dict(zip(keys, found))
    return [scaf.get(m) if m is not None else None for m in lab.mol]


def scaffold_groups(lab: LabData) -> list[str | None]:
    """Scaffold-split group per spectrum: molecules that share a scaffold through any of their SMILES are
    one group (a molecule stored under two tautomeric SMILES, e.g. a hydroxypyridine and its pyridone,
    has two scaffolds, and a split on one SMILES per molecule let the other ring system appear on both
    sides). Labelled by the smallest scaffold SMILES in the group, so that labels, and the seeded split
    over them, do not depend on the order the spectra were read in; molecules without a parsable
    structure are their own group (``mol:KEY``); None where the spectrum has no molecule key."""
    from fastspec.fingerprints import smiles_by_key

    cands = smiles_by_key((m, s) for m, s in zip(lab.mol, lab.smiles) if m is not None)
    keys = list(cands)
    flat = [smi for k in keys for smi in cands[k]]
    every = scaffolds(flat) if flat else []
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    at = 0
    for k in keys:
        node = "mol:" + str(k)
        parent.setdefault(node, node)
        for sc in every[at:at + len(cands[k])]:
            if sc is not None:
                union(node, "scaf:" + sc)
        at += len(cands[k])
    label: dict[str, str] = {}  # component root -> label: its smallest scaffold
    for sc in set(every) - {None}:
        root = find("scaf:" + sc)
        if root not in label or sc < label[root]:
            label[root] = sc
    out: list[str | None] = []
    for m in lab.mol:
        if m is None:
            out.append(None)
            continue
        root = find("mol:" + str(m))
        out.append(label.get(root, f"mol:{m}"))
    return out


def _match_values(values: Sequence, wanted: str, normalise=None) -> np.ndarray:
    norm = normalise or (lambda v: v)
    targets = {str(norm(w.strip())).lower() for w in wanted.split(",") if w.strip()}
    if not targets:
        raise ParameterError("condition split needs a value, e.g. instrument:LC-ESI-QTOF")
    lut: dict = {}
    out = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if v not in lut:
            lut[v] = str(v).lower() in targets
        out[i] = lut[v]
    return out


def check_split_spec(spec: str) -> str:
    """The kind of a split spec, checked as far as it can be without the library (its kind, arguments,
    a ``ce:`` range, a ``file:`` that exists): a list of specs is checked before the first is run.
    ParameterError (FileNotFoundError for a missing split file) otherwise."""
    kind, _, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind not in SPLIT_KINDS:
        raise ParameterError(f"unknown split {spec!r}; use one of {', '.join(SPLIT_KINDS)} (e.g. instrument:VALUE)")
    if kind in ("random", "inchikey", "formula", "scaffold", "l2s") and arg.strip():
        raise ParameterError(f"{kind} split takes no argument, got {spec!r}")
    if kind in ("instrument", "adduct", "column", "file") and not arg.strip():
        raise ParameterError(f"{kind} split needs a value: {kind}:VALUE")
    if kind == "ce":
        _parse_range(arg)
    if kind == "file" and not Path(arg).exists():
        raise FileNotFoundError(2, "No such file or directory", arg)
    return kind


def _parse_range(text: str) -> tuple[float, float, bool]:
    """``LOW-HIGH`` (absolute energies, eV / V / no unit) or ``LOW-HIGH%`` / ``LOW%-HIGH%`` / ``...nce``
    (normalized ones): low, high, whether normalized."""
    import re

    num = r"([-+]?(?:\d+(?:\.\d+)?|\.\d+))\s*(%|nce|ev|v)?"
    m = re.match(rf"^\s*{num}\s*(?:-|:|\.\.)\s*{num}\s*$", text, re.IGNORECASE)
    if not m:
        raise ParameterError(f"ce split: expected LOW-HIGH (eV; e.g. ce:10-30) or LOW-HIGH% (NCE; e.g. "
                             f"ce:20-40%), got {text!r}")
    lo, hi = float(m.group(1)), float(m.group(3))
    units = {u.lower() for u in (m.group(2), m.group(4)) if u}
    normalized = bool(units & {"%", "nce"})
    if normalized and units & {"ev", "v"}:
        raise ParameterError(f"ce split: {text!r} mixes a normalized (%) and an absolute (eV / V) energy")
    if lo > hi:
        raise ParameterError(f"ce split: LOW > HIGH in {text!r}")
    return lo, hi, normalized


def column_assignment(values: Sequence) -> np.ndarray:
    """Assignment from a column of ``train``/``test`` strings, booleans or 1/0 (true = test; also 1.0 / 0.0, as
    pandas writes a column of ones and zeros with a gap)."""
    a = np.full(len(values), EXCLUDED, dtype=np.int8)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            a[i] = TEST if v else TRAIN
            continue
        if isinstance(v, (float, np.floating)) and v in (0.0, 1.0):
            v = int(v)
        s = str(v).strip().lower()
        if s in ("test", "1", "1.0", "true", "t", "yes"):
            a[i] = TEST
        elif s in ("train", "training", "0", "0.0", "false", "f", "no"):
            a[i] = TRAIN
    return a


# ====================================================================== split files
#: split file name endings -> (format, gzip)
SPLIT_SUFFIXES = {".parquet": ("parquet", False), ".pq": ("parquet", False), ".csv": ("csv", False),
                  ".tsv": ("tsv", False), ".tab": ("tsv", False), ".csv.gz": ("csv", True),
                  ".tsv.gz": ("tsv", True), ".tab.gz": ("tsv", True)}


def split_format(path: str | Path) -> tuple[str, bool]:
    """``(format, gzip)`` of a split file from its name (:data:`SPLIT_SUFFIXES`); another ending is a
    :class:`ParameterError` (it was written as plain CSV, whatever it said: ``.csv.gz``, ``.pq``)."""
    name = Path(path).name.lower()
    for suffix in sorted(SPLIT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return SPLIT_SUFFIXES[suffix]
    raise ParameterError(f"{path}: a split file is named .csv, .tsv, .parquet (or .csv.gz, .tsv.gz, .pq)")


def write_split(split: Split, path: str | Path, spectra: Spectra, index: np.ndarray | None = None) -> None:
    """Write ``index``, ``id``, ``split`` (train/test/excluded) as CSV, TSV or parquet (by extension,
    :func:`split_format`; ``.gz``: gzip-compressed text).

    ``index`` (int64 (n,), default ``0..n-1``): each spectrum's position among the library file's spectra
    read (records the reader rejects are not counted), e.g. ``LabData.source_index`` after an ``ion_mode``
    filter, so that the file means the same spectra whether it is read with that filter or without (ids
    do not when they repeat).
    """
    names = np.array(["excluded", "train", "test"])[split.assignment.astype(np.int64) + 1]
    idx = np.arange(len(split), dtype=np.int64) if index is None else np.asarray(index, np.int64)
    table = pa.table(
        {"index": pa.array(idx), "id": pa.array(spectra.ids, pa.string()), "split": pa.array(names.tolist(), pa.string())}
    )
    path = Path(path)
    fmt, gz = split_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        write_atomically(path, lambda tmp: pq.write_table(table, tmp), needs_seek="Parquet", direct_file=True)
    else:
        import pyarrow.csv as pcsv

        opts = pcsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ",")

        def write(tmp):
            if not gz:
                return pcsv.write_csv(table, str(tmp), opts)
            with pa.CompressedOutputStream(str(tmp), "gzip") as out:
                pcsv.write_csv(table, out, opts)

        write_atomically(path, write)


def read_split(path: str | Path, spectra: Spectra, index: np.ndarray | None = None) -> np.ndarray:
    """Assignment for ``spectra`` from a split file.

    Rows are matched by ``id`` when the file has an ``id`` column and both the library's ids and the
    file's are unique, else by ``index``: positions in the library file, which ``index`` gives for
    ``spectra`` (default ``0..n-1``; ``LabData.source_index`` after an ``ion_mode`` filter; ids that
    repeat in the file, as scan numbers of two polarities do, cannot say which spectrum a row means, even
    where the filtered library's ids are unique). Spectra not listed are excluded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    fmt, _ = split_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            delim = "\t" if fmt == "tsv" else ","
            table = pcsv.read_csv(  # (a .gz name is decompressed)
                path,
                parse_options=pcsv.ParseOptions(delimiter=delim),
                convert_options=pcsv.ConvertOptions(column_types={"id": pa.string(), "split": pa.string()}),
            )
    except (pa.ArrowInvalid, OSError) as e:
        raise FastspecError(f"cannot read split file {path}: {e}") from e
    if "split" not in table.column_names:
        raise FastspecError(f"split file {path} has no 'split' column")
    labels = table.column("split").to_pylist()
    values = column_assignment(labels)
    unknown = sorted({str(v) for v, a in zip(labels, values) if a == EXCLUDED and v is not None
                      and not (isinstance(v, float) and math.isnan(v))  # a gap, as None
                      and str(v).strip().lower() not in ("excluded", "")})
    if unknown:  # a typo ('tset') would drop those rows from the test set without a word
        raise FastspecError(f"split file {path}: 'split' values must be train, test or excluded, found "
                            f"{', '.join(repr(u) for u in unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    n = len(spectra)
    out = np.full(n, EXCLUDED, dtype=np.int8)
    # the library's own ids (Spectra.ids numbers spectra without one by position, which an ion-mode filter
    # shifts: no match by id then)
    real = spectra.column("id")
    ids = [None if v is None or str(v) == "" else str(v) for v in real]
    file_ids = table.column("id").to_pylist() if "id" in table.column_names else None
    listed = [str(k) for k in file_ids if k is not None and str(k) != ""] if file_ids is not None else []
    by_id = (file_ids is not None and None not in ids and len(set(ids)) == n and len(set(listed)) == len(listed))
    if file_ids is not None and not by_id and "index" not in table.column_names:
        raise FastspecError(f"split file {path}: its ids repeat, or the library's are missing or repeat, and it has "
                            "no 'index' column, so rows cannot be matched to spectra")
    if by_id:
        pos = {k: i for i, k in enumerate(ids)}
        hit = [pos.get(str(k), -1) if k is not None else -1 for k in file_ids]
        if not any(h >= 0 for h in hit):
            raise FastspecError(f"split file {path}: none of its ids occur in the library")
        for h, v in zip(hit, values):
            if h >= 0:
                out[h] = v
        return out
    if "index" not in table.column_names:
        raise FastspecError(f"split file {path}: needs an 'index' column (library ids are not unique)")
    col = table.column("index")
    if not pa.types.is_integer(col.type) or col.null_count:
        raise FastspecError(f"split file {path}: the 'index' column must hold whole numbers (library positions), "
                            f"found {col.type}{' with empty values' if col.null_count else ''}")
    idx = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    if index is None:
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise FastspecError(f"split file {path}: index out of range for a library of {n} spectra")
        rows, keep = idx, np.ones(idx.shape[0], bool)
    else:
        # positions of the whole file; spectra filtered out (another ion mode) are simply not here
        order = np.argsort(np.asarray(index, np.int64), kind="stable")
        ranked = np.asarray(index, np.int64)[order]
        at = np.minimum(np.searchsorted(ranked, idx), max(n - 1, 0))
        keep = ranked[at] == idx if n else np.zeros(idx.shape[0], bool)
        if idx.size and not keep.any():
            raise FastspecError(f"split file {path}: none of its indexes are spectra of this library")
        rows = order[at[keep]]
    if file_ids is not None:  # a row's id, where both sides have one, must be that spectrum's
        fid = [file_ids[r] for r in np.flatnonzero(keep)]
        bad = [(str(f), ids[r]) for f, r in zip(fid, rows.tolist())
               if f is not None and str(f) != "" and ids[r] is not None and str(f) != ids[r]]
        if bad:
            raise FastspecError(f"split file {path}: {len(bad)} rows name another spectrum than the one at their "
                                f"index (first: id {bad[0][0]!r}, library {bad[0][1]!r}); was the library file "
                                "changed since the split was written?")
    out[rows] = np.asarray(values)[keep]
    return out


# ====================================================================== dispatcher
def make_split(
    data: LabData | Spectra,
    spec: str = "random",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    molecule_disjoint: bool = False,
    l2s_options: dict | None = None,
    search: SearchConfig | None = None,
    threads: int | None = None,
) -> Split:
    """Build a :class:`Split` from a spec string (see the module docstring)."""
    lab = data if isinstance(data, LabData) else LabData.build(data)
    kind = check_split_spec(spec)
    arg = str(spec).partition(":")[2]
    n = len(lab)
    known = np.array([m is not None for m in lab.mol], bool)
    params: dict[str, Any] = {"kind": kind, "seed": seed}
    info: dict[str, Any] = {}
    if kind == "random":
        a = random_split(n, test_fraction, seed)
        params["test_fraction"] = test_fraction
    elif kind == "inchikey":
        a = group_split(lab.mol, test_fraction, seed, eligible=known)
        params["test_fraction"] = test_fraction
    elif kind == "formula":
        a = group_split(lab.formula, test_fraction, seed, eligible=np.array([f is not None for f in lab.formula], bool))
        params["test_fraction"] = test_fraction
        info["n_formulas"] = len({f for f in lab.formula if f is not None})
    elif kind == "scaffold":
        groups = scaffold_groups(lab)
        a = group_split(groups, test_fraction, seed, eligible=known)
        params["test_fraction"] = test_fraction
        info["n_scaffolds"] = len({g for g in groups if g is not None})
    elif kind in ("instrument", "adduct"):
        if kind == "adduct":
            from fastspec.chem.adducts import normalize_adduct

            def norm(v):
                try:
                    return normalize_adduct(v) or v
                except Exception:
                    return v

            is_test = _match_values(lab.adduct, arg, norm)
        else:
            is_test = _match_values(lab.instrument_type, arg)
        if not is_test.any():
            field_ = "instrument_type" if kind == "instrument" else "adduct"
            seen = sorted({str(v) for v in lab.field(field_) if v is not None})[:12]
            raise ParameterError(f"{kind} split: no spectrum has {field_} {arg!r}; values include {', '.join(seen)}")
        a = np.where(is_test, TEST, TRAIN).astype(np.int8)
        params["value"] = arg
    elif kind == "ce":
        lo, hi, normalized = _parse_range(arg)
        in_range = (lab.ce >= lo) & (lab.ce <= hi)
        # normalized (NCE %) and absolute (eV) energies are not comparable: a range selects one kind
        is_test = in_range & (lab.ce_normalized == normalized)
        if not is_test.any():
            kind_, other_kind = ("a normalized (NCE %)", "an absolute") if normalized else ("an absolute", "a normalized")
            other = int((in_range & (lab.ce_normalized != normalized)).sum())
            hint = (f"; {other} spectra have {other_kind} energy in that range "
                    f"(write ce:{lo:g}-{hi:g}{'' if normalized else '%'})") if other else ""
            raise ParameterError(f"ce split: no spectrum has {kind_} collision energy in [{lo:g}, {hi:g}]{hint}")
        a = np.where(is_test, TEST, TRAIN).astype(np.int8)
        params.update(low=lo, high=hi, energies="normalized" if normalized else "absolute")
    elif kind == "column":
        if not arg or arg not in lab.spectra.metadata.column_names:
            raise ParameterError(f"column split: no metadata column {arg!r}")
        a = column_assignment(lab.spectra.column(arg))
        params["column"] = arg
    elif kind == "file":
        a = read_split(arg, lab.spectra, lab.source_index)
        params["path"] = arg
    elif kind == "l2s":
        opts = dict(l2s_options or {})
        res = l2s_split(lab, test_fraction=test_fraction, seed=seed, search=search, threads=threads, **opts)
        a, info = res.assignment, res.info
        # (the progress bar is how it ran, not what it is)
        params.update(test_fraction=test_fraction, **{k: v for k, v in opts.items()
                                                      if not isinstance(v, np.ndarray) and k != "progress"})
    else:  # check_split_spec knows every kind
        raise AssertionError(kind)
    a = np.asarray(a, dtype=np.int8)
    if molecule_disjoint:
        a = enforce_molecule_disjoint(a, lab.mol)
        params["molecule_disjoint"] = True
    if not (a == TEST).any() or not (a == TRAIN).any():
        raise FastspecError(f"split {spec!r} left an empty train or test side")
    return Split(a, str(spec), params, info)


def enforce_molecule_disjoint(assignment: np.ndarray, mol: Sequence) -> np.ndarray:
    """Exclude training spectra whose molecule also occurs in test."""
    codes = _group_codes(mol)
    a = assignment.copy()
    in_test = np.zeros(codes.max() + 1 if codes.size else 0, bool)
    in_test[codes[a == TEST]] = True
    drop = (a == TRAIN) & in_test[codes]
    a[drop] = EXCLUDED
    return a


# ====================================================================== profile
def split_profile(lab: LabData, assignment: np.ndarray, top: int = 3) -> dict:
    """Describe a split of one library (see :func:`profile_between` for the keys)."""
    a = np.asarray(assignment)
    prof = profile_between(lab, np.flatnonzero(a == TRAIN), lab, np.flatnonzero(a == TEST), top=top)
    prof["n_excluded"] = int((a == EXCLUDED).sum())
    return prof


def profile_between(train: LabData, train_rows: np.ndarray, test: LabData, test_rows: np.ndarray, top: int = 3) -> dict:
    """Describe a train/test pair (the same or two different libraries).

    Returns
    -------
    dict with ``n_train``, ``n_test``, ``n_excluded``, ``test_share`` (test / (train + test)),
    ``n_test_molecules``, ``molecule_overlap`` (share of distinct test molecules that also occur in
    train), ``molecule_overlap_spectra`` (share of test spectra whose molecule occurs in train),
    ``unseen_formula_share`` (share of test spectra whose polarity+formula has no training spectrum;
    a missing formula counts as unseen) and ``shift``: per field (instrument_type, adduct, ce_bin)
    ``tvd``, the total-variation distance between the train and test value distributions, and
    ``over_represented``, the ``top`` test values most over-represented relative to train
    (value, test_share, train_share).
    """
    train_rows = np.asarray(train_rows, np.int64)
    test_rows = np.asarray(test_rows, np.int64)
    n_tr, n_te = int(train_rows.size), int(test_rows.size)
    train_mols = {train.mol[i] for i in train_rows.tolist()} - {None}
    test_mol_list = [test.mol[i] for i in test_rows.tolist() if test.mol[i] is not None]
    test_mols = set(test_mol_list)
    overlap = len(test_mols & train_mols) / len(test_mols) if test_mols else 0.0
    overlap_sp = float(np.mean([m in train_mols for m in test_mol_list])) if test_mol_list else 0.0

    def fkey(lab, i):
        f = lab.formula[i]
        return None if f is None else (int(lab.polarity[i]), f)

    train_f = {fkey(train, i) for i in train_rows.tolist()}
    unseen = [(k is None or k not in train_f) for k in (fkey(test, i) for i in test_rows.tolist())]
    shift = {}
    for f in SHIFT_FIELDS:
        tv = [train.field(f)[i] for i in train_rows.tolist()]
        te = [test.field(f)[i] for i in test_rows.tolist()]
        shift[f] = _shift(tv + te, np.arange(n_tr + n_te) < n_tr, np.arange(n_tr + n_te) >= n_tr, top)
    return {
        "n_train": n_tr,
        "n_test": n_te,
        "n_excluded": 0,
        "test_share": n_te / (n_tr + n_te) if n_tr + n_te else 0.0,
        "n_test_molecules": len(test_mols),
        "molecule_overlap": overlap,
        "molecule_overlap_spectra": overlap_sp,
        "unseen_formula_share": float(np.mean(unseen)) if unseen else 0.0,
        "shift": shift,
    }


def _shift(values: Sequence, tr: np.ndarray, te: np.ndarray, top: int) -> dict:
    labels = ["unknown" if v is None else str(v) for v in values]
    codes, uniq = factorize([labels])
    k = len(uniq)
    p_tr = np.bincount(codes[tr], minlength=k).astype(float)
    p_te = np.bincount(codes[te], minlength=k).astype(float)
    p_tr /= max(p_tr.sum(), 1.0)
    p_te /= max(p_te.sum(), 1.0)
    diff = p_te - p_tr
    order = np.argsort(-diff, kind="stable")[:top]
    over = [
        {"value": uniq[i], "test_share": round(float(p_te[i]), 4), "train_share": round(float(p_tr[i]), 4)}
        for i in order
        if diff[i] > 0
    ]
    return {"tvd": float(0.5 * np.abs(diff).sum()), "over_represented": over}


# ====================================================================== learning to split
def l2s_features(lab: LabData) -> np.ndarray:
    """Splitter features per spectrum, float64 (n, d), standardised.

    Metadata: one-hot instrument type (12 most common + other), adduct (8 + other), CE bin,
    precursor m/z, log peak count. Molecule: log counts of C H N O S P and halogens from the
    canonical formula, fingerprint density and 16 block popcounts of the fingerprint (when attached).
    """
    n = len(lab)
    cols: list[np.ndarray] = []
    for values, k in ((lab.instrument_type, 12), (lab.adduct, 8), (lab.ce_bin, 8)):
        cols.append(_one_hot(values, k))
    pmz = np.nan_to_num(lab.spectra.precursor_mz.astype(float), nan=float(np.nanmedian(lab.spectra.precursor_mz)) if n and np.isfinite(lab.spectra.precursor_mz).any() else 0.0)
    cols.append(pmz[:, None])
    cols.append(np.log1p(lab.spectra.n_peaks.astype(float))[:, None])
    cols.append(_formula_counts(lab.formula))
    if lab.fps is not None and lab.fp_row is not None:
        cols.append(_fp_blocks(lab.fps.packed, lab.fp_row, 16))
    X = np.hstack(cols).astype(np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    return (X - mu) / sd


def _one_hot(values: Sequence, k: int) -> np.ndarray:
    labels = ["" if v is None else str(v) for v in values]
    codes, uniq = factorize([labels])
    counts = np.bincount(codes, minlength=len(uniq))
    keep = np.argsort(-counts, kind="stable")[:k]
    remap = np.full(len(uniq), len(keep), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    out = np.zeros((len(values), len(keep) + 1))
    out[np.arange(len(values)), remap[codes]] = 1.0
    return out


_ELEMENTS = ("C", "H", "N", "O", "S", "P", "F", "Cl", "Br", "I")


def _formula_counts(formulas: Sequence[str | None]) -> np.ndarray:
    import re

    pat = re.compile(r"([A-Z][a-z]?)(\d*)")
    cache: dict[str, np.ndarray] = {}
    out = np.zeros((len(formulas), len(_ELEMENTS)))
    for i, f in enumerate(formulas):
        if not f:
            continue
        if f not in cache:
            v = np.zeros(len(_ELEMENTS))
            for el, num in pat.findall(f):
                if el in _ELEMENTS:
                    v[_ELEMENTS.index(el)] += int(num) if num else 1
            cache[f] = np.log1p(v)
        out[i] = cache[f]
    return out


def _fp_blocks(packed: np.ndarray, rows: np.ndarray, n_blocks: int) -> np.ndarray:
    words = packed.shape[1]
    per = max(1, words // n_blocks)
    counts = np.bitwise_count(packed).astype(np.float64)  # (m, words)
    blocks = np.add.reduceat(counts, np.arange(0, words, per), axis=1)
    dens = counts.sum(axis=1, keepdims=True)
    feats = np.hstack([np.log1p(dens), blocks / np.maximum(dens, 1.0)])
    out = np.zeros((rows.shape[0], feats.shape[1]))
    ok = rows >= 0
    out[ok] = feats[rows[ok]]
    return out


def _fit_logistic(X: np.ndarray, y: np.ndarray, w0: np.ndarray | None, l2: float = 1.0, iters: int = 15) -> np.ndarray:
    """Ridge logistic regression with soft targets y in [0, 1] by Newton steps; weights (d+1,) with bias."""
    Xb = np.hstack([X, np.ones((X.shape[0], 1))])
    d = Xb.shape[1]
    w = np.zeros(d) if w0 is None else w0.copy()
    reg = np.full(d, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Xb @ w, -30, 30)))
        g = Xb.T @ (p - y) + reg * w
        h = (Xb * (p * (1 - p))[:, None]).T @ Xb + np.diag(reg + 1e-6)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def _iteration_bar(progress: bool | None, total: int):
    """A tqdm bar on stderr over ``total`` l2s iterations, or None."""
    import sys

    from fastspec.io._common import wants_progress

    if not wants_progress(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="l2s", unit="iteration", file=sys.stderr, leave=False)


def l2s_split(
    lab: LabData,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 8,
    patience: int = 2,
    l2: float = 1.0,
    search: SearchConfig | None = None,
    fingerprint: str = "morgan:2:4096",
    policy: str = "fallback",
    threads: int | None = None,
    progress: bool | None = False,
) -> Split:
    """Learning-to-split on a CPU: find a molecule-disjoint split on which the NN baseline does worst.

    Each iteration (i) evaluates the NN baseline (the predictor: ``search``'s metric and buckets, top-1)
    on the current test side — per test spectrum the Tanimoto of its predicted molecule; (ii) fits the
    splitter, a ridge logistic regression over :func:`l2s_features`, to the hardness ``1 - Tanimoto`` of
    the test spectra; (iii) scores every spectrum, averages the scores per molecule (InChIKey first
    block) and fills the test side with the highest-scoring molecules up to ``test_fraction`` (seeded
    tiny noise breaks ties). It stops after ``max_iter`` iterations or ``patience`` iterations without
    a lower test Tanimoto, and returns the hardest split seen.

    Parameters
    ----------
    policy : {"fallback", "skip"}
        What the predictor does for a test spectrum without a same-bucket training spectrum.
        ``fallback`` (default) searches all training spectra of its polarity, so the predictor answers
        (like a generative model) every test spectrum with a training spectrum of its polarity (unknown
        polarity: of unknown polarity) and hardness is graded; ``skip`` scores such spectra 0, which
        drives the splitter towards formula-disjoint splits (test coverage near 0).
    progress : bool, optional
        A tqdm bar over the iterations on stderr (None: when stderr is a terminal); each iteration
        searches the whole test side (a minute or more on all of MassBank).

    Returns
    -------
    Split
        ``info["history"]``: per iteration test_share, mean_tanimoto_all (every test spectrum; no
        prediction = 0) and coverage (same-bucket training spectrum exists).
    """
    from fastspec.baseline import nn_search, predict_molecules, prepare_side
    from fastspec.evaluate import prediction_tanimoto

    _check_fraction(test_fraction)
    if policy not in ("fallback", "skip"):
        raise ParameterError(f"l2s policy must be 'fallback' or 'skip', got {policy!r}")
    if int(max_iter) < 1 or int(patience) < 1:
        raise ParameterError("l2s needs max_iter >= 1 and patience >= 1")
    cfg = (search or SearchConfig()).replace(no_neighbour=policy, vote=1, search_k=1)
    if lab.fps is None:
        lab.attach_fingerprints(fingerprint)
    known = np.array([m is not None for m in lab.mol], bool)
    n_known = int(known.sum())
    if n_known < 10:
        raise FastspecError("l2s needs at least 10 spectra with a known molecule")
    X = l2s_features(lab)
    codes = _group_codes(lab.mol)
    rng = np.random.default_rng(seed)
    prepared = prepare_side(lab.spectra, cfg)
    a = group_split(lab.mol, test_fraction, seed, eligible=known)
    best_a, best_obj, since_best = a.copy(), math.inf, 0
    history = []
    w = None
    bar = _iteration_bar(progress, max_iter)
    try:
        for it in range(max_iter):
            if bar is not None:
                bar.update(1)
            test = np.flatnonzero(a == TEST)
            train = np.flatnonzero(a == TRAIN)
            res = nn_search(lab, lab, cfg, query_rows=test, library_rows=train, prepared=(prepared, prepared), threads=threads)
            row, _ = predict_molecules(res, lab.mol_code)
            tani = prediction_tanimoto(lab, test, lab, row)
            tani = np.where(row >= 0, tani, 0.0)
            obj = float(tani.mean()) if tani.size else 0.0
            history.append(
                {"iteration": it, "test_share": test.size / max(test.size + train.size, 1), "mean_tanimoto_all": obj, "coverage": float(res.covered.mean()) if test.size else 0.0}
            )
            if obj < best_obj - 1e-9:
                best_obj, best_a, since_best = obj, a.copy(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
            if it == max_iter - 1:
                break
            w = _fit_logistic(X[test], 1.0 - tani, w, l2=l2)
            logit = np.hstack([X, np.ones((X.shape[0], 1))]) @ w
            # per-molecule mean score; tiny noise breaks ties reproducibly
            k = codes.max() + 1
            msum = np.bincount(codes[known], weights=logit[known], minlength=k)
            mcnt = np.bincount(codes[known], minlength=k)
            mscore = np.where(mcnt > 0, msum / np.maximum(mcnt, 1), -np.inf) + rng.normal(0, 1e-6, k)
            order = np.argsort(-mscore, kind="stable")
            order = order[mcnt[order] > 0]
            chosen = order[_greedy_fill(mcnt[order], int(round(test_fraction * n_known)))]
            is_test = np.zeros(k, bool)
            is_test[chosen] = True
            a = np.full(len(lab), EXCLUDED, np.int8)
            a[known] = np.where(is_test[codes[known]], TEST, TRAIN)
    finally:
        if bar is not None:
            bar.close()
    info = {"history": history, "best_mean_tanimoto_all": best_obj, "iterations": len(history), "policy": policy,
            "predictor": {"metric": cfg.metric, "bucket": cfg.bucket, "tolerance": str(cfg.tolerance)}}
    return Split(best_a, "l2s", {"test_fraction": test_fraction, "seed": seed, "max_iter": max_iter, "patience": patience,
                                 "policy": policy}, info)
