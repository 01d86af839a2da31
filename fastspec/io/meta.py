"""Metadata harmonisation: map the usual key aliases onto fastspec's canonical keys.

Every reader funnels its metadata through :func:`harmonise_table`, so MGF, MSP, mzML, TSV,
parquet and HDF5 files give the same column names and value conventions:

* keys are matched case-insensitively against :data:`ALIASES` (built from the conventions of
  NIST, MassBank, GNPS, MS-DIAL, MZmine, MassSpecGym and matchms'
  ``known_key_conversions.csv``) and renamed to the canonical key
  (:data:`fastspec.spectra.CANONICAL_KEYS`); any other key is kept, lower-cased snake_case
  (``"Num Peaks"`` -> ``num_peaks``, ``"ÉTAT"`` -> ``état``; a key without letters or digits under the
  names of its characters, ``"#"`` -> ``number_sign``: :func:`snake`);
* ``precursor_mz`` is a float64 (NaN/null when unknown or not a positive finite number);
  a second ``PEPMASS`` value goes to ``precursor_intensity``, a third (``2+``) is the charge unless a
  ``CHARGE`` line gives one;
* ``charge`` is a signed int8 (``"2-"``, ``"-2"`` and ``"2"`` in negative mode all give -2);
  missing charges are taken from the adduct (``[M+2H]2+`` -> 2, GNPS's ``M+H`` -> 1); a sign contradicting
  a bracketed adduct's takes the adduct's (``CHARGE=1+`` with ``[M-H]-`` -> -1), as does an unsigned charge
  an unbracketed adduct's (``CHARGE=1`` with ``M-H`` -> -1), or a signed one when the ion-mode field
  sides with the adduct (``CHARGE=1+``, ``IONMODE=Negative``, ``M-H`` -> -1);
* ``ion_mode`` is ``"positive"``/``"negative"`` (from the ion-mode field, else the adduct's
  trailing sign, else the charge sign, also a sign written with charge 0: MZmine's SIRIUS export writes
  ``CHARGE=0-`` for uncharged negative-mode features; an unsigned charge counts as positive, as the MGF
  convention has it);
* ``inchikey`` is upper-case, ``inchikey14`` its first block (also when only the block is given);
* some keys fill a field only where nothing else does (:data:`FILL_FROM`), some only with values of the
  right form (:data:`VALUE_PATTERNS`), and an ``id`` of ``-1`` gives way to any other id source;
* every canonical column is always present (null when unknown), canonical columns first.

The functions work on whole :class:`pyarrow.Table` columns (vectorised; per-row Python only
over the *distinct* values of small-cardinality columns such as charge or ion mode), and
:func:`harmonise` does the same for one dict.
"""
from __future__ import annotations

import functools
import math
import re
import unicodedata
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.spectra import CANONICAL_KEYS

_F32_MAX = float(np.finfo(np.float32).max)  # (the library index stores m/z and neutral losses as float32)

#: canonical key -> accepted aliases (lower-case, as written in files), highest priority first.
#: The canonical key itself always has top priority.
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("spectrum_id", "spectrumid", "db#", "accession", "identifier", "feature_id",
           "spectrum id", "massbank_id", "nist_id", "scan_id"),
    "name": ("compound_name", "compoundname", "compound name", "ch$name", "molecule_name",
             "metabolitename"),  # (MS-DIAL's Mascot-format MGF export)
    "precursor_mz": ("precursormz", "precursor_m/z", "precursor m/z", "ms$focused_ion:precursor_m/z",
                     "precursor_mass", "precursormass", "selected_ion_mz", "selected ion m/z", "precursor",
                     "pepmass"),
    "charge": ("precursor_charge", "precursorcharge", "ac$mass_spectrometry:charge", "charge state", "charge_state"),
    "ion_mode": ("ionmode", "ion mode", "ionpolarity", "ionpol", "polarity", "ion_polarity",
                 "ac$mass_spectrometry:ion_mode", "scan_polarity",
                 "ac$analytical_condition:mode",  # MassBank 1.x records
                 # MoNA's polarity field ("ionization mode=negative" in MSP Comments); plain "ionization"
                 # is the source (ESI, APCI) and stays its own key
                 "ionization mode", "ionisation mode"),
    "adduct": ("precursor_type", "precursortype", "precursor type", "ms$focused_ion:precursor_type",
               "adduct_type", "ion_type", "ms$focused_ion:ion_type",
               "ac$analytical_condition:precursor_type",  # MassBank 1.x records
               # MS-DIAL's exports: MassBank format (MS$FOCUSED_ION: ADDUCT_Ion), Mascot-format MGF
               "ms$focused_ion:adduct_ion", "adductionname",
               # MZmine (SIRIUS export), MetaboScape, MS-DIAL and Progenesis GNPS MGFs write ION=[M-H]-
               "ion"),
    "formula": ("molecular_formula", "molecularformula", "ch$formula"),
    "smiles": ("ch$smiles", "smiles_string", "canonical_smiles", "canonicalsmiles"),
    "inchikey": ("inchi_key", "inchikey_full", "ch$link:inchikey", "std_inchikey", "stdinchikey",
                 "ch$inchikey",  # (MS-DIAL's MassBank-format export)
                 "synon_metb_inchikey", "synon: metb inchikey"),
    "inchikey14": ("inchikey_14", "inchikey_first_block", "short_inchikey", "inchikey_planar"),
    "instrument_type": ("instrumenttype", "instrument type", "ac$instrument_type", "source_instrument",
                        "instrument_kind"),
    "instrument": ("ac$instrument", "instrument_name", "instrumentname"),
    "collision_energy": ("collisionenergy", "collision energy", "colenergy", "collision_energies",
                         "ac$mass_spectrometry:collision_energy",
                         "ac$analytical_condition:collision_energy",  # MassBank 1.x records
                         "ac$collisionenergy"),  # (MS-DIAL's MassBank-format export)
    "fragmentation_mode": ("fragmentationmode", "fragmentation mode", "fragmentation", "fragmentation_method",
                           "activation", "ac$mass_spectrometry:fragmentation_mode", "special_fragmentation",
                           "dissociation_method",
                           "fragmenation_method"),  # (sic: MZmine 3's library MGF export writes this key)
}

#: harmonised non-canonical keys (kept under this name, never dropped)
EXTRA_ALIASES: dict[str, tuple[str, ...]] = {
    # MSTYPE (MS1/MS2) before SPECTRUMTYPE, which MS-FINDER/MS-DIAL use for Centroid/Profile
    "ms_level": ("mslevel", "ms level", "mstype", "ms_type", "spectrum_type", "spectrumtype",
                 "ac$mass_spectrometry:ms_type", "ac$analytical_condition:ms_type"),
    "inchi": ("stdinchi", "ch$iupac", "inchi_string", "synon_metb_inchi", "synon: metb inchi"),
    "exact_mass": ("exactmass", "exact mass", "ch$exact_mass", "monoisotopic_mass", "total exact mass"),
}

#: canonical key -> keys whose values fill it where a record has none of its own, first given first; kept
#: under their own names too. GNPS library exports carry no plain formula or InChIKey, only the ones GNPS
#: computed from the record's SMILES and InChI (which can disagree: the SMILES' comes first, as the
#: formula the library derives from a SMILES does). MZmine's library export (MSnLib) writes the InChIKey as
#: ``INCHIAUX`` (MassSpecGym's MGF as ``INCHI_AUX``), a submitted value, so it comes before the computed ones; MoNA's MSP export writes the
#: structure of records without a submitted one only as ``"computed SMILES=..."`` / ``"computed InChI=..."``
#: (its JSON export gives them as plain SMILES and InChI). Unlike aliases they never hide a value given in
#: another form (an MSP ``Synon: $:28`` InChIKey, a ``Comments`` formula).
FILL_FROM: dict[str, tuple[str, ...]] = {
    "formula": ("formula_smiles", "formula_inchi"),
    "inchikey": ("inchiaux", "inchi_aux", "inchikey_smiles", "inchikey_inchi"),
    "smiles": ("computed_smiles",),
    "inchi": ("computed_inchi",),
}

#: a value that names an MS level: ``MS2``, ``ms1``, ``MS``, ``MSn``, ``2``
_MS_LEVEL_VALUE = r"(?i)^\s*(ms\s*([0-9]+|n)?|[0-9]+)\s*$"

#: (snake-case) aliases and :data:`FILL_FROM` keys that count only for values matching a pattern; the other
#: values stay under the key's own name. GNPS also writes InChI's AuxInfo as ``INCHIAUX``; MS-DIAL writes
#: ``SPECTRUMTYPE: Centroid`` (or ``Profile``) where NIST writes ``Spectrum_type: MS2``.
VALUE_PATTERNS: dict[str, str] = {
    "inchiaux": r"^[A-Z]{14}-[A-Z]{10}-[A-Z]$",
    "inchi_aux": r"^[A-Z]{14}-[A-Z]{10}-[A-Z]$",  # MassSpecGym's MGF
    "spectrum_type": _MS_LEVEL_VALUE,
    "spectrumtype": _MS_LEVEL_VALUE,
}

#: ``id`` values that mean none where another alias or the title gives one: MSnLib (mzmine) library MGFs
#: write ``FEATURE_ID=-1`` in every record (FBMN files, where FEATURE_ID is the id, never write -1)
ID_PLACEHOLDERS = ("-1",)

#: string values that mean "unknown" in text formats (compared case-insensitively, ``Na`` aside:
#: :func:`missing_marker`)
MISSING_MARKERS = frozenset({"", "n/a", "na", "nan", "none", "null", "-", "?", "unknown", "nil"})

#: NIST ``Synon: $:NN`` codes (lib2nist MS/MS synonym fields) -> key
NIST_SYNON_CODES: dict[str, str] = {
    # an ms_level alias; it gives way to an explicit line: MoNA writes "$:00in-source" next to
    # "Spectrum_type: MS2" (synonym values fill only what no explicit line gives)
    "00": "ms_type",
    "03": "adduct",
    "04": "precursor_mz",
    "05": "collision_energy",
    "06": "instrument_type",
    "07": "instrument",
    "09": "chromatography",
    "10": "ionization",
    "11": "ion_mode",
    "12": "collision_gas",
    "14": "scan_range",
    "16": "cone_voltage",
    "17": "sample",
    "28": "inchikey",
}

_STRING_CANONICAL = tuple(k for k in CANONICAL_KEYS if k not in ("precursor_mz", "charge"))


# snake forms too generic to be taken as aliases ("DB#" is an id, a column "db" is not)
_NO_SNAKE_ALIAS = frozenset({"db"})


def _build_lookup() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for groups in (ALIASES, EXTRA_ALIASES):
        for canon, aliases in groups.items():
            table[canon] = (canon, 0)
            for prio, a in enumerate(aliases, start=1):
                table.setdefault(a, (canon, prio))
                if snake(a) not in _NO_SNAKE_ALIAS:
                    table.setdefault(snake(a), (canon, prio))
    return table


_SNAKE_RE = re.compile(r"[^0-9a-z]+")


@functools.lru_cache(maxsize=8192)
def snake(key: str) -> str:
    """Lower-case snake_case form of a raw metadata key (``"Num Peaks"`` -> ``"num_peaks"``).

    Letters, digits and combining marks of any script are kept, lower-cased and NFC-normalised
    (``"ÉTAT"`` -> ``"état"``, ``"名前"`` -> ``"名前"``); every run of other characters (spaces,
    punctuation, symbols) becomes one ``_``, none at either end. A key without letters or digits is named
    after the Unicode names of its characters, whitespace aside (``"#"`` -> ``"number_sign"``, ``"!!"``
    -> ``"exclamation_mark_exclamation_mark"``, ``"_"`` -> ``"low_line"``; a character without a name
    gives ``u`` and its code point, ``"\\x7f"`` -> ``"u007f"``): such a column is kept, under a name
    every format can write. An empty or blank key gives ``""``.
    """
    low = key.strip().lower()
    if low.isascii():  # nearly every key: the ASCII rule is the general one restricted to ASCII
        s = _SNAKE_RE.sub("_", low).strip("_")
    else:
        low = unicodedata.normalize("NFC", low)  # a decomposed "é" is the composed one
        s = "_".join("".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in low).split())
    if s or not low:
        return s
    return "_".join(snake(unicodedata.name(c, f"u{ord(c):04x}")) for c in low if not c.isspace())


@functools.lru_cache(maxsize=4096)
def key_info(raw_key: str) -> tuple[str, int]:
    """Harmonised name of ``raw_key`` and its alias priority (0 = the canonical name itself).

    Unknown keys map to their snake_case form (:func:`snake`) with priority 0; an empty result (a blank
    key) means "drop".
    """
    low = raw_key.strip().lower()
    hit = _LOOKUP.get(low)
    if hit is None:
        s = snake(low)
        hit = _LOOKUP.get(s, (s, 0))
    return hit


def canonical_key(raw_key: str) -> str:
    """Harmonised name of one metadata key (see :data:`ALIASES`)."""
    return key_info(raw_key)[0]


# ---------------------------------------------------------------------------- value parsers
_CHARGE_RE = re.compile(r"^\s*(?:([+-])\s*)?(\d+)\s*([+-]?)")  # (one way to split spaces: linear time)
# (each run of spaces split one way: two \s* side by side took quadratic time on a long run)
_ADDUCT_CHARGE_RE = re.compile(r"\](?:\s*(\d+))?\s*([+-])(?:\s*\*)?\s*$")


def _charge_after_bracket(text: str) -> bool:
    """A charge written after the closing bracket, in any form the adduct parser reads ("]2+", "]++", "]-1",
    "]+*"): a sign after the last ``]``, with no bracket after it (a pattern for it took quadratic time on a
    long run of signs)."""
    i = text.rfind("]")
    tail = text[i + 1:]
    return i >= 0 and "[" not in tail and ("+" in tail or "-" in tail)


_SEVERAL_CHARGES = r"\d\s*[+-]?\s*(?:,|;|/|\band\b|\bor\b|\s)\s*[+-]?\s*\d"


def _count(counts: dict, what: str, mask: pa.Array) -> None:
    """Add the number of true values of ``mask`` (nulls: false) to the warning count ``what``."""
    k = int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)
    if k:
        counts[what] = counts.get(what, 0) + k


def parse_charge(value: Any) -> tuple[int, bool]:
    """Signed charge and whether the sign was written explicitly.

    ``"1+"`` -> (1, True); ``"2-"`` -> (-2, True); ``"+1"`` -> (1, True); ``"1"`` -> (1, False);
    ``"2+ and 3+"`` -> (2, True). Unparsable or out of int8 range -> (0, False).
    """
    if value is None:
        return 0, False
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = int(value)
        return (v, True) if -127 <= v <= 127 else (0, False)
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return 0, False
        return parse_charge(int(value))
    m = _CHARGE_RE.match(str(value))
    if not m:
        return 0, False
    pre, digits, post = m.groups()
    if len(digits.lstrip("0")) > 3:  # beyond 127 anyway (int() refuses 4,300 digits: a file's 5,000-digit charge)
        return 0, False
    v = int(digits)
    if v > 127:
        return 0, False
    sign = pre or post
    return (-v if sign == "-" else v), bool(sign)


def _written_sign(value: Any) -> int:
    """The sign written with a charge text (+1 / -1), 0 without one; ``"0-"`` (MZmine's SIRIUS export
    of an uncharged negative-mode feature) -> -1 although the charge is 0."""
    m = _CHARGE_RE.match(str(value)) if isinstance(value, str) else None
    if not m:
        return 0
    sign = m.group(1) or m.group(3)
    return -1 if sign == "-" else (1 if sign == "+" else 0)


def adduct_charge(adduct: Any) -> tuple[int, bool]:
    """Signed charge an adduct implies, and whether it is written after a closing bracket.

    Any notation :mod:`fastspec.chem.adducts` reads counts, so GNPS-style ``M+H`` (``PRECURSORTYPE: M+H`` in
    MS-DIAL's conversions of GNPS) -> (1, False), ``M-H`` -> (-1, False), ``[M+2H]++`` -> (2, True),
    ``[M-H]-1`` -> (-1, True), ``[M]+•`` -> (1, True). One it cannot read keeps the charge written after its
    last bracket (two adducts ``[M+H]+ [M+Na]+`` -> (1, True)); else (0, False).
    """
    if not adduct:
        return 0, False
    text = str(adduct).strip()
    from fastspec.chem.adducts import AdductError, parse_adduct

    try:
        q = parse_adduct(text).charge
    except AdductError:
        m = _ADDUCT_CHARGE_RE.search(text)
        if not m:
            return 0, False
        if m.group(1) and len(m.group(1).lstrip("0")) > 3:  # beyond 127 anyway (int() refuses 4,300 digits)
            return 0, False
        q = int(m.group(1)) if m.group(1) else 1
        q = -q if m.group(2) == "-" else q
    if q == 0 or abs(q) > 127:
        return 0, False
    return q, _charge_after_bracket(text)


def charge_from_adduct(adduct: Any) -> int:
    """Signed charge written after a bracketed adduct (``[M+H]+`` -> 1, ``[M-2H]2-`` -> -2, ``[M+2H]++``
    -> 2), else 0 (``M+H``: see :func:`adduct_charge`)."""
    q, written = adduct_charge(adduct)
    return q if written else 0


def parse_ion_mode(value: Any) -> str | None:
    """``"positive"``, ``"negative"`` or None (P/N, pos/neg, +/-, POSITIVE, 'positive scan'...)."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if not s:
        return None
    if s in ("p", "pos", "positive", "+", "positive scan", "positive ion mode", "1", "+1", "esi+", "esi +",
             "esi(+)", "esi pos", "esi positive", "(+)"):
        return "positive"
    if s in ("n", "neg", "negative", "-", "negative scan", "negative ion mode", "-1", "esi-", "esi -",
             "esi(-)", "esi neg", "esi negative", "(-)"):
        return "negative"
    if "pos" in s and "neg" in s:  # "Positive; Negative" (polarity switching), "pos/neg": either, so unknown
        return None
    if s.startswith("pos"):
        return "positive"
    if s.startswith("neg"):
        return "negative"
    compact = "".join(s.split())  # "ESI (-)", "ESI ( + )"
    if compact in ("esi(+)", "esi+", "(+)"):
        return "positive"
    if compact in ("esi(-)", "esi-", "(-)"):
        return "negative"
    return None


def parse_float(value: Any) -> float:
    """A float, or NaN when the value is missing or unparsable (first whitespace-separated token)."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    s = str(value).strip().split()
    if not s:
        return math.nan
    try:
        return float(s[0].rstrip(","))
    except ValueError:
        return math.nan


_IK_RE = re.compile(r"^[A-Z]{14}(-[A-Z]{10}-[A-Z])?$")
_IK14_RE = re.compile(r"^([A-Z]{14})(?:-|$)")


def inchikey14_of(inchikey: Any) -> str | None:
    """First block of an InChIKey (also accepts the 14-letter block alone), else None."""
    if not inchikey:
        return None
    m = _IK14_RE.match(re.sub(r"^INCHIKEY\s*=\s*", "", str(inchikey).strip().upper()))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------- table harmonisation
def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Any column as a string array (lists/structs as their Python repr would be lossy: JSON)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if _is_string(col.type):
        return col.cast(pa.string())
    if pa.types.is_dictionary(col.type):
        return _as_string(col.dictionary_decode())
    if pa.types.is_floating(col.type):
        # repr keeps the exact value (arrow's cast would too, but writes 'nan' for NaN)
        vals = col.to_pylist()
        return pa.array([None if v is None or v != v else repr(v) for v in vals], pa.string())
    try:
        return col.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import json

        return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                         for v in col.to_pylist()], pa.string())


def missing_marker(text: pa.Array, signs: bool = False) -> pa.Array:
    """bool per value of trimmed ``text``: one of :data:`MISSING_MARKERS`, compared case-insensitively but
    for ``Na`` (sodium, as a formula or a compound's name, is a value; ``NA``, ``na`` are markers); false for
    a null. ``signs``: ``-`` is a value, as in a polarity field (``POLARITY=-``)."""
    markers = _MARKERS_SIGNS if signs else _MARKERS
    return pc.or_(pc.is_in(pc.utf8_lower(text), value_set=pa.array(sorted(markers), pa.string())),
                  pc.is_in(text, value_set=pa.array(sorted(_NA_CASES), pa.string())))


#: :func:`missing_marker`'s markers after lower-casing (``na`` is not one: ``Na`` is sodium), those where
#: ``-`` is a value too, and the cases of ``NA`` that are markers
_MARKERS = MISSING_MARKERS - {"na"}
_MARKERS_SIGNS = MISSING_MARKERS - {"-", "na"}
_NA_CASES = frozenset({"NA", "na", "nA"})


#: Up to this many values :func:`_trim_missing` works in Python: one spectrum's metadata (a matchms
#: ``Spectrum`` searched one per call) has ~15 columns, and three Arrow kernels per column took ~0.8 ms
_FEW_VALUES = 16


def _trim_missing(arr: pa.Array, signs: bool = False) -> pa.Array:
    """Trim whitespace; missing markers (:func:`missing_marker`) become null."""
    if len(arr) <= _FEW_VALUES:
        vals = arr.to_pylist()
        # ASCII only: Arrow lower-cases "İ" to "i" and Python to "i̇" ("NİL" is a marker to Arrow); whitespace
        # is the same set for both
        if all(v is None or v.isascii() for v in vals):
            markers = _MARKERS_SIGNS if signs else _MARKERS
            trimmed = [None if v is None else v.strip() for v in vals]
            out = pa.array([None if t is None or t.lower() in markers or t in _NA_CASES else t for t in trimmed],
                           pa.string())
            return pa.chunked_array([out], pa.string()) if isinstance(arr, pa.ChunkedArray) else out
    arr = pc.utf8_trim_whitespace(arr)
    is_missing = missing_marker(arr, signs)
    return pc.if_else(is_missing, pa.scalar(None, pa.string()), arr)


def _map_distinct(arr: pa.Array, fn, out_type: pa.DataType) -> pa.Array:
    """Apply a Python function to the distinct values only (small-cardinality columns)."""
    if len(arr) == 0:
        return pa.array([], out_type)
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    mapped = pa.array([fn(v) for v in enc.dictionary.to_pylist()], out_type)
    idx = enc.indices
    if len(mapped) == 0:
        return pa.nulls(len(arr), out_type)
    return mapped.take(idx)


def _to_float(arr: pa.Array) -> np.ndarray:
    """float64 numpy of a column (first token of strings; unparsable -> NaN)."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        # unsafe: integers beyond 2**53 round (a precursor m/z of 2**60 is garbage either way) instead of raising
        return arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    s = _as_string(arr)
    s = pc.utf8_trim_whitespace(s)
    try:
        return pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([parse_float(v) for v in s.to_pylist()], dtype=np.float64)


def pepmass_value(parts: pa.Array, i: int) -> pa.Array:
    """The ``i``-th whitespace-separated value of each PEPMASS (``parts``: their split lists), null where
    there is none."""
    return pc.list_element(pc.if_else(pc.greater(pc.fill_null(pc.list_value_length(parts), 0), i), parts,
                                      pa.scalar([None] * (i + 1), parts.type)), i)


def pepmass_parts(arr) -> pa.Array:
    """PEPMASS strings split at whitespace (a list per value)."""
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(_as_string(arr)))


def _pepmass_split(arr: pa.Array) -> tuple[pa.Array, pa.Array | None, pa.Array | None]:
    """PEPMASS 'mz [intensity [charge]]' -> (mz string column, intensity float column or None, charge
    string column or None: the third value, e.g. ``2+``, which pyteomics and matchms read as the charge too;
    where a record also has a ``CHARGE`` line, that line wins here, PEPMASS's value there)."""
    parts = pepmass_parts(arr)
    first = pepmass_value(parts, 0)
    n_parts = pc.fill_null(pc.list_value_length(parts), 0)
    if not pc.any(pc.greater(n_parts, 1)).as_py():
        return first, None, None
    vals = _to_float(pepmass_value(parts, 1))
    third = pepmass_value(parts, 2) if pc.any(pc.greater(n_parts, 2)).as_py() else None
    # GNPS writes "PEPMASS=mz 0.0" for an unknown intensity (as mzXML's precursorIntensity="0")
    return first, pa.array(vals, pa.float64(), mask=np.isnan(vals) | (vals == 0)), third


def _merge_charges(col: pa.Array, charges: pa.Array) -> pa.Array:
    """A charge column with its gaps filled from PEPMASS charge strings (``2+``): strings for a string
    column; for a numeric one, signed float64 (an unsigned column could not hold ``2-``) with NaN as a gap
    too (the charge normalisation reads numeric columns as float64 anyway)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not _is_numeric(col.type):
        return pc.coalesce(_as_string(col), _as_string(charges))
    vals = [None if v is None else parse_charge(v)[0] for v in _as_string(charges).to_pylist()]
    pep = pa.array([None if v is None or v == 0 else float(v) for v in vals], pa.float64())
    own = col.cast(pa.float64(), safe=False)
    own = pc.if_else(pc.is_nan(own), pa.scalar(None, pa.float64()), own)
    return pc.coalesce(own, pep)


@functools.lru_cache(maxsize=1)
def _canonical_types() -> dict[str, pa.DataType]:
    t = {k: pa.string() for k in CANONICAL_KEYS}
    t["precursor_mz"] = pa.float64()
    t["charge"] = pa.int8()
    return t


def harmonise_table(table: pa.Table, *, text: bool = True, merge_aliases: bool | None = None,
                    counts: dict | None = None, signed_charge: bool = False) -> pa.Table:
    """Harmonise the metadata columns of a table (one row per spectrum).

    Parameters
    ----------
    table : pyarrow.Table
        Raw metadata; column names as found in the file (any case).
    text : bool
        The values come from a text format: strings are trimmed and missing markers
        (``""``, ``"N/A"``, ``"nan"``, ...) become null in every string column. Otherwise (typed
        tables) only in the canonical string columns but ``id`` (adduct, instrument, name, ...); other
        columns are kept as they are.
    merge_aliases : bool, optional
        Drop alias columns once merged into their canonical key. Default: ``text``. With False
        (typed tables such as parquet), alias columns are dropped only when the canonical key
        was absent (a rename); when both exist, the alias column is kept as it is.
    signed_charge : bool
        A numeric charge column holds signed charges (fastspec's own Parquet and HDF5 files): their sign
        is kept unless the adduct contradicts it as for a signed charge in text. Otherwise (other
        tables) a positive number next to a negative ion mode is read as the unsigned charge of text
        formats and negated.
    counts : dict, optional
        Receives warning counts (``"bad precursor_mz"``: values present but not a positive
        finite number).

    Returns
    -------
    pyarrow.Table
        Canonical columns first (always all of :data:`CANONICAL_KEYS`, typed: ``precursor_mz``
        float64, ``charge`` int8, the rest strings), then the other columns in input order.
    """
    if merge_aliases is None:
        merge_aliases = text
    n = table.num_rows
    id_held = None
    groups: dict[str, list[tuple[int, int, str]]] = {}
    order: list[str] = []
    for pos, raw in enumerate(table.column_names):
        name, prio = key_info(raw)
        if not name:
            continue
        groups.setdefault(name, []).append((prio, pos, raw))
        if name not in order:
            order.append(name)
    out: dict[str, pa.Array] = {}
    extra_first: dict[str, pa.Array] = {}
    for name in order:
        members = sorted(groups[name])
        arrays = []
        for prio, pos, raw in members:
            col = table.column(pos)
            if isinstance(col, pa.ChunkedArray) and (name in CANONICAL_KEYS or len(members) > 1):
                col = col.combine_chunks()
            # typed tables (Parquet, HDF5, matchms metadata) too: "N/A" in an instrument or adduct column is
            # no instrument, not one that matches nothing (same_instrument dropped every hit); ids as given
            typed = not text and name in _STRING_CANONICAL and name != "id"
            if typed and pa.types.is_dictionary(col.type) and _is_string(col.type.value_type):
                col = col.dictionary_decode()  # (pandas categoricals)
            if _is_string(col.type) and (text or typed):
                col = _trim_missing(col.cast(pa.string()), signs=name == "ion_mode")
            elif text and pa.types.is_null(col.type):
                col = col.cast(pa.string())
            if name == "precursor_mz" and snake(raw) == "pepmass":
                col, intensity, pep_charge = _pepmass_split(col)
                if intensity is not None:
                    extra_first["precursor_intensity"] = intensity
                if pep_charge is not None:  # a CHARGE line wins where there is one (below)
                    extra_first["charge"] = pep_charge
            arrays.append((prio, raw, col))
        canonical_present = any(prio == 0 for prio, _, _ in arrays)
        keep_separate = []
        if not merge_aliases and canonical_present:
            # typed table with both e.g. adduct and precursor_type: keep the alias as it is
            keep_separate = [(raw, col) for prio, raw, col in arrays if prio != 0]
            arrays = [a for a in arrays if a[0] == 0]
        arrays = _split_patterned(arrays, keep_separate)
        if name == "id":
            arrays, id_held = _set_aside_placeholders(arrays)
        if name == "precursor_mz" and len(arrays) > 1:
            out[name] = _first_valid_precursor([c for _, _, c in arrays])
        elif arrays:  # none left: the group held only values that are not this key's (SPECTRUMTYPE: Centroid)
            out[name] = _coalesce([c for _, _, c in arrays], name in CANONICAL_KEYS)
        for raw, col in keep_separate:
            alt = snake(raw)
            if alt in out or alt == name:
                alt = alt + "_raw"
            out[alt] = col
    for k, v in extra_first.items():
        if k == "charge" and k in out and not pa.types.is_null(out[k].type):
            out[k] = _merge_charges(out[k], v)
        else:
            out.setdefault(k, v)
    _unquote_structures(out)
    _fill_from(out)
    _normalise_canonical(out, n, counts, signed_charge)
    if id_held is not None:  # a placeholder id only where nothing else, the title included, gives one
        out["id"] = pc.coalesce(out["id"], id_held)
    # canonical first, typed; then others in order
    types = _canonical_types()
    fields, arrays = [], []
    for k in CANONICAL_KEYS:
        arr = out.pop(k)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        fields.append(pa.field(k, types[k]))
        arrays.append(arr.cast(types[k]) if arr.type != types[k] else arr)
    for k, v in out.items():
        if pa.types.is_null(v.type):
            v = v.cast(pa.string())
        fields.append(pa.field(k, v.type))
        arrays.append(v)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


#: Structure fields (and the keys they are filled from) that lose double quotes wrapped around the whole
#: value (INCHI="InChI=1S/..." in some MGF exports); none of them can hold a '"' of its own.
_UNQUOTED = ("smiles", "inchi", "inchikey", "formula", *{k for v in FILL_FROM.values() for k in v})


def _split_by_pattern(col: pa.Array, pattern: str) -> tuple[pa.Array | None, pa.Array | None]:
    """(the values of ``col`` matching ``pattern``, the others), each with nulls elsewhere, None when it
    holds no value; a column that is not text counts as matching."""
    if not _is_string(col.type) or col.null_count == len(col):
        return col, None
    ok = pc.fill_null(pc.match_substring_regex(col, pattern), True)  # a null is null on either side
    if pc.all(ok).as_py():
        return col, None
    if not pc.any(pc.and_(ok, pc.is_valid(col))).as_py():
        return None, col
    null = pa.scalar(None, col.type)
    return pc.if_else(ok, col, null), pc.if_else(ok, null, col)


def _split_patterned(arrays: list, keep_separate: list) -> list:
    """Members of an alias group without the values :data:`VALUE_PATTERNS` does not let them give; those
    are appended to ``keep_separate`` (kept under the alias's own name)."""
    kept = []
    for prio, raw, col in arrays:
        pattern = VALUE_PATTERNS.get(snake(raw)) if prio else None
        if pattern is not None and not pa.types.is_null(col.type):
            col, other = _split_by_pattern(col, pattern)
            if other is not None:
                keep_separate.append((raw, other))
            if col is None:
                continue
        kept.append((prio, raw, col))
    return kept


def _set_aside_placeholders(arrays: list) -> tuple[list, pa.Array | None]:
    """``id`` members without their :data:`ID_PLACEHOLDERS` values, and those values (None if there are
    none), which give an id only where nothing else does."""
    kept, held = [], []
    for prio, raw, col in arrays:
        if not pa.types.is_null(col.type):
            s = _as_string(col)
            ph = pc.fill_null(pc.is_in(pc.utf8_trim_whitespace(s), value_set=pa.array(ID_PLACEHOLDERS)), False)
            if pc.any(ph).as_py():
                null = pa.scalar(None, pa.string())
                held.append(pc.if_else(ph, s, null))
                col = pc.if_else(ph, null, s)
        kept.append((prio, raw, col))
    if not held:
        return arrays, None
    return kept, (pc.coalesce(*held) if len(held) > 1 else held[0])


def _unquote_structures(out: dict[str, pa.Array]) -> None:
    """Strip quotes wrapped around structure values, then trim again and null the missing markers
    (``SMILES=""``, ``INCHI="N/A"``), before any is used to fill another (:func:`_fill_from`)."""
    for k in _UNQUOTED:
        a = out.get(k)
        if a is not None and pa.types.is_string(a.type) and a.null_count < len(a):
            out[k] = _trim_missing(pc.replace_substring_regex(a, r'^\s*"(.*)"\s*$', r"\1"))


def _fill_from(out: dict[str, pa.Array]) -> None:
    """Fill canonical columns from their :data:`FILL_FROM` keys where null (``N/A`` and the like count as
    missing there, typed tables included; so do values a :data:`VALUE_PATTERNS` pattern rejects)."""
    for canon, sources in FILL_FROM.items():
        given = []
        for k in sources:
            if k in out and not pa.types.is_null(out[k].type):
                vals = _trim_missing(_as_string(out[k]))
                if k in VALUE_PATTERNS:
                    vals = _split_by_pattern(vals, VALUE_PATTERNS[k])[0]
                if vals is not None:
                    given.append(vals)
        if not given:
            continue
        own = out.get(canon)
        if own is not None and not pa.types.is_null(own.type):
            given.insert(0, _as_string(own))
        out[canon] = pc.coalesce(*given) if len(given) > 1 else given[0]


def _first_valid_precursor(arrays: list[pa.Array]) -> pa.Array:
    """Precursor m/z from several aliases (highest priority first): per record the first value that is a
    positive finite number within float32's range, so an unusable ``PRECURSOR_MZ=0`` does not hide a good
    ``PEPMASS``. A record
    whose aliases hold values but none usable gets NaN (counted as ``bad precursor_mz`` later), one
    without any value null."""
    n = len(arrays[0])
    out = np.full(n, np.nan)
    have = np.zeros(n, bool)
    given = np.zeros(n, bool)
    for a in arrays:
        if pa.types.is_null(a.type):
            continue
        v = _to_float(a)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(v) & (v > 0) & (v <= _F32_MAX) & ~have
        out[ok] = v[ok]
        have |= ok
        given |= np.asarray(a.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return pa.array(out, pa.float64(), mask=~given)


def _coalesce(arrays: list[pa.Array], canonical: bool) -> pa.Array:
    if len(arrays) == 1:
        return arrays[0]
    types = {a.type for a in arrays if not pa.types.is_null(a.type)}
    if len(types) > 1 or canonical:
        arrays = [_as_string(a) if not pa.types.is_null(a.type) else a.cast(pa.string()) for a in arrays]
    elif types:
        t = types.pop()
        arrays = [a.cast(t) for a in arrays]
    return pc.coalesce(*arrays)


def _normalise_canonical(out: dict[str, pa.Array], n: int, counts: dict | None, signed_charge: bool = False) -> None:
    """Type and normalise the canonical columns in place (adds missing ones as nulls)."""
    for k in _STRING_CANONICAL:
        if k in out:
            a = out[k]
            out[k] = _as_string(a) if not pa.types.is_null(a.type) else pa.nulls(n, pa.string())
        else:
            out[k] = pa.nulls(n, pa.string())
    # precursor m/z: positive finite float (within float32's range, as the index stores losses), else null
    if "precursor_mz" in out and not pa.types.is_null(out["precursor_mz"].type):
        raw = out["precursor_mz"]
        pmz = _to_float(raw)
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(pmz) & (pmz > 0) & (pmz <= _F32_MAX))
        if counts is not None:
            given = ~np.asarray(raw.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
                # "N/A", "" in a table's string column mean missing, as they do in text formats (which
                # null them before this); not a bad value to warn about
                marker = missing_marker(pc.utf8_trim_whitespace(raw))
                given &= ~np.asarray(pc.fill_null(marker, False).to_numpy(zero_copy_only=False), dtype=bool)
            nbad = int(np.count_nonzero(bad & given))
            if nbad:
                counts["bad precursor_mz"] = counts.get("bad precursor_mz", 0) + nbad
        pmz[bad] = np.nan
        out["precursor_mz"] = pa.array(pmz, pa.float64(), mask=np.isnan(pmz))
    else:
        out["precursor_mz"] = pa.nulls(n, pa.float64())
    # ion mode from the field
    mode = _map_distinct(out["ion_mode"], parse_ion_mode, pa.string()) if n else out["ion_mode"]
    if n and counts is not None:  # a value given but naming no one polarity ("both", "Positive; Negative")
        _count(counts, "ion mode unreadable or mixed (left unknown)",
               pc.and_(pc.is_valid(out["ion_mode"]), pc.is_null(mode)))
    adduct = out["adduct"] = _adduct_from_name(out["adduct"], out["name"], counts) if n else out["adduct"]
    # charge: parsed value + whether the sign was explicit (+ the sign written with a zero charge)
    zero_sign = np.zeros(n, np.int16)
    if "charge" in out and not pa.types.is_null(out["charge"].type) and n:
        craw = out["charge"]
        if _is_numeric(craw.type):
            vals = craw.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # (2**60: 0, not ArrowInvalid)
            vals = np.where(np.isfinite(vals) & (np.abs(vals) <= 127) & (vals == np.round(vals)), vals, 0)
            charge = np.nan_to_num(vals).astype(np.int16)
            # in other tables a number carries a sign only when negative: 1 next to a negative ion mode
            # is read as the unsigned 1 of a text file would be (pandas tables with charge 1 in negative mode)
            explicit = np.ones(n, bool) if signed_charge else charge < 0
        else:
            parsed = _map_distinct(_as_string(craw),
                                   lambda v: [parse_charge(v)[0], int(parse_charge(v)[1]), _written_sign(v)],
                                   pa.list_(pa.int16()))
            if counts is not None:  # Mascot's "2+ and 3+", "2+,3+": the first is used
                _count(counts, "several charges given (the first used)",
                       pc.match_substring_regex(_as_string(craw), _SEVERAL_CHARGES))
            flat = pc.fill_null(pc.list_flatten(pc.fill_null(parsed, pa.scalar([0, 0, 0], parsed.type))), 0)
            triples = flat.to_numpy(zero_copy_only=False).reshape(n, 3)
            charge = triples[:, 0].astype(np.int16)
            explicit = triples[:, 1].astype(bool)
            zero_sign = np.where(charge == 0, triples[:, 2], 0)
    else:
        charge = np.zeros(n, np.int16)
        explicit = np.zeros(n, bool)
    # the adduct's charge (any notation the adduct parser reads) and whether it is written after a bracket
    if n:
        pairs = _map_distinct(adduct, lambda v: [int(x) for x in adduct_charge(v)], pa.list_(pa.int16()))
        flat = pc.fill_null(pc.list_flatten(pc.fill_null(pairs, pa.scalar([0, 0], pairs.type))), 0)
        pairs_np = flat.to_numpy(zero_copy_only=False).reshape(n, 2)
        add_charge, add_written = pairs_np[:, 0].astype(np.int16), pairs_np[:, 1].astype(bool)
    else:
        add_charge, add_written = np.zeros(0, np.int16), np.zeros(0, bool)
    mode_np = np.asarray(pc.fill_null(mode, "").to_numpy(zero_copy_only=False), dtype=object) if n else np.zeros(0, object)
    is_pos = mode_np == "positive"
    is_neg = mode_np == "negative"
    # charge from the adduct when unknown
    fill = (charge == 0) & (add_charge != 0)
    charge = np.where(fill, add_charge, charge)
    explicit = explicit | fill
    # a positive charge written without sign in negative mode is negative
    charge = np.where(is_neg & (charge > 0) & ~explicit, -charge, charge)
    # a charge whose sign contradicts the adduct's takes the adduct's sign, magnitude kept: always for a
    # sign written after a bracket (MS-DIAL GNPS exports write CHARGE=1+ next to ION=[M-H]-), for M-H only
    # when the charge was written without a sign (GNPS writes Charge 1 for M-H too) or the ion mode
    # agrees with the adduct (CHARGE=1+, IONMODE=Negative, M-H: two of three say negative)
    mode_agrees = (is_neg & (add_charge < 0)) | (is_pos & (add_charge > 0))
    charge = np.where((add_written | ~explicit | mode_agrees) & (charge * add_charge < 0), -charge, charge)
    # ion mode from the bracketed adduct's sign, else the charge sign (by now the adduct's unless written)
    unknown = ~(is_pos | is_neg)
    sign = np.where(add_written, np.sign(add_charge), np.where(charge != 0, np.sign(charge), zero_sign))
    if counts is not None and n:
        # polarity from a bare "CHARGE=1" alone, as matchms reads it: MZmine 2's GNPS export writes that for
        # negative-mode spectra of unknown charge too (and such queries never match negative spectra)
        guessed = int(np.count_nonzero(unknown & ~add_written & (charge > 0) & ~explicit & (add_charge == 0)))
        if guessed:
            key = "positive ion mode taken from a charge written without sign"
            counts[key] = counts.get(key, 0) + guessed
        # a signed charge against the ion mode field, no adduct to settle it (CHARGE=1+ with IONMODE=Negative):
        # both kept as written (polarity follows the ion mode; --same-charge compares magnitudes), counted
        clash = int(np.count_nonzero(((is_pos & (charge < 0)) | (is_neg & (charge > 0))) & (add_charge == 0)))
        if clash:
            key = "charge sign contradicts the ion mode (both kept; polarity from the ion mode)"
            counts[key] = counts.get(key, 0) + clash
    mode_np = np.where(unknown & (sign > 0), "positive", np.where(unknown & (sign < 0), "negative", mode_np))
    mode_arr = pa.array(mode_np.tolist() if n else [], pa.string())
    out["ion_mode"] = pc.if_else(pc.equal(mode_arr, ""), pa.scalar(None, pa.string()), mode_arr) if n else pa.nulls(0, pa.string())
    out["charge"] = pa.array(charge.astype(np.int8), pa.int8(), mask=charge == 0)
    # inchikey upper-case; inchikey14 given or derived
    ik = out["inchikey"]
    if n and ik.null_count < n:
        ik = pc.replace_substring_regex(pc.utf8_upper(ik), r"^INCHIKEY\s*=\s*", "")  # "InChIKey=..." as written
        out["inchikey"] = ik
        derived = pc.struct_field(pc.extract_regex(ik, r"^(?P<k>[A-Z]{14})(?:-|$)"), [0])
        given = out["inchikey14"]
        given = pc.utf8_upper(given) if given.null_count < n else given
        out["inchikey14"] = pc.coalesce(given, derived)
    # id falls back to the title (MGF TITLE is the spectrum's label by convention), then to SCANS (GNPS
    # feature-based molecular networking MGFs link a spectrum to its feature table row by it alone)
    for key in ("title", "scans"):
        if key in out and n and not pa.types.is_null(out[key].type):
            vals = _as_string(out[key])
            if key == "scans":  # MZmine / SIRIUS write SCANS=-1 in every record: no id (as FEATURE_ID=-1)
                ph = pc.fill_null(pc.is_in(pc.utf8_trim_whitespace(vals), value_set=pa.array(ID_PLACEHOLDERS)), False)
                vals = pc.if_else(ph, pa.scalar(None, pa.string()), vals)
            out["id"] = pc.coalesce(out["id"], vals)


#: An adduct written as the last word of a name ("Hoiamide B M+H", "... [M-H]-"): M, optionally after a
#: count and an opening bracket, then a sign or the closing bracket.
_NAME_ADDUCT_RE = r"(?:^|\s)(?P<a>\[?[0-9]*M[-+\]][^\s]*)$"


def _adduct_from_name(adduct: pa.Array, name: pa.Array, counts: dict | None) -> pa.Array:
    """Fill missing adducts from the last word of the name when it reads as one (GNPS library MGFs give
    the adduct only there: ``NAME=Hoiamide B M+H``), in its canonical spelling (``[M+H]+``); the name is
    kept as written. Counted as ``"adduct from name"``."""
    need = pc.and_(adduct.is_null(), name.is_valid())
    if not pc.any(need).as_py():
        return adduct
    word = pc.struct_field(pc.extract_regex(pc.if_else(need, name, pa.scalar(None, pa.string())), _NAME_ADDUCT_RE),
                           [0])
    if word.null_count == len(word):
        return adduct
    from fastspec.chem.adducts import normalize_adduct

    derived = _map_distinct(word, normalize_adduct, pa.string())  # unreadable words -> null
    got = int(pc.sum(derived.is_valid()).as_py() or 0)
    if not got:
        return adduct
    if counts is not None:
        counts["adduct from name"] = counts.get("adduct from name", 0) + got
    return pc.coalesce(adduct, derived)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def harmonise(record: Mapping[str, Any], *, text: bool = True) -> dict[str, Any]:
    """Harmonise one metadata dict (same rules as :func:`harmonise_table`).

    >>> harmonise({"PEPMASS": "301.1 5000", "CHARGE": "1-", "INCHIKEY": "GVGYEFKIHJTNQZ-RFQIPJPRSA-N"})["charge"]
    -1
    """
    cols = {}
    for k, v in record.items():
        if isinstance(v, (list, tuple, dict)):
            cols[k] = pa.array([v])
        else:
            cols[k] = pa.array([None if v is None else (v if text is False else str(v))])
    table = pa.table(cols) if cols else pa.table({"id": pa.nulls(1, pa.string())})
    return harmonise_table(table, text=text).to_pylist()[0]


_LOOKUP = _build_lookup()

__all__ = [
    "ALIASES",
    "EXTRA_ALIASES",
    "MISSING_MARKERS",
    "missing_marker",
    "NIST_SYNON_CODES",
    "adduct_charge",
    "canonical_key",
    "charge_from_adduct",
    "harmonise",
    "harmonise_table",
    "inchikey14_of",
    "key_info",
    "parse_charge",
    "parse_float",
    "parse_ion_mode",
    "snake",
]
