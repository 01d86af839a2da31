"""ESI adducts: parse the usual notations, one canonical spelling, mass shifts, m/z <-> neutral mass.

An adduct ``[nM+A-B]z`` is read as ``n`` copies of the neutral molecule M plus/minus atom groups, with a
signed charge ``z``. Its ion has m/z ``(n * M + shift) / |z|`` where ``shift`` is the summed monoisotopic
mass of the added minus the removed atoms, minus ``z`` electron masses (so ``[M+H]+`` has shift
H - e = 1.007276 Da and ``[M+Cl]-`` has Cl + e = 34.969402 Da).

Notation accepted
-----------------
``[M+H]+``, ``M+H`` (charge inferred), ``[M+H]1+``, ``[M+2H]2+``/``[M+2H]++``/``[M+2H]+2``, ``[2M+Na]+``,
``M-H2O+H``, ``[M+FA-H]-``, ``[M+HCOO]-``, ``[M-H]1-``; terms are formulas (``H2O``, ``CH3COO``, ``NH4``,
``[13C]`` ...) or the usual solvent abbreviations (:data:`ABBREVIATIONS`: ACN, FA, Hac, TFA, DMSO, IsoProp,
MeOH ...) with an optional count (``+2ACN``); ``OAc`` / ``AcO`` / ``Oac`` are acetate (``CH3COO``, never oxygen and
actinium) and ``Ac`` alone acetic acid, as ``Hac`` (``[M+Ac-H]-`` is ``[M+CH3COO]-``). Radical marks (``*``, ``•``, ``.``) are dropped: ``[M]+*`` is
``[M]+`` (same m/z). Without a charge, a notation that names exactly one table adduct (``M+H`` ->
``[M+H]+``) takes its charge; otherwise the charge is inferred from the ionic terms (H, alkali metals, NH4
count +1; halides, formate and acetate -1).

Canonical spelling
------------------
Notations of a tabulated ion (:data:`ADDUCTS`; same ``n``, same net atoms, same charge) get the table
spelling whatever terms they use: ``[M+FA-H]-``, ``[M+HCOOH-H]-``, ``[M+HCO2]-`` and ``[M-H+HCOOH]-`` all
normalise to ``[M+HCOO]-``; ``[M-H2O+H]+`` and ``[M-OH]+`` to ``[M+H-H2O]+``. Other ions keep their terms,
additions first, then losses, each group sorted by term with repeated terms merged, so the order written
does not matter (``[M-C6H10O5+H]+`` and ``[M+H-C6H10O5]+`` are both ``[M+H-C6H10O5]+``), but other terms
for the same net atoms do (``[M-C6H9O5]+`` stays as written); the charge is written ``+``, ``2+``, ``-``,
``2-``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from fastspec.chem.elements import ELECTRON_MASS
from fastspec.chem.formula import FormulaError, _atom_mass, parse_formula
from fastspec.errors import FastspecError

__all__ = [
    "AdductError",
    "Adduct",
    "ADDUCTS",
    "ABBREVIATIONS",
    "parse_adduct",
    "normalize_adduct",
    "normalize_adducts",
    "adduct_polarity",
    "precursor_mz_from_mass",
    "neutral_mass_from_precursor_mz",
    "known_adducts",
]


class AdductError(FastspecError, ValueError):
    """A string is not an adduct notation fastspec can read."""


#: Abbreviations used in adduct names -> formula (the key is the canonical spelling of its group).
ABBREVIATIONS: dict[str, str] = {
    "ACN": "C2H3N",  # acetonitrile
    "FA": "CH2O2",  # formic acid
    "Hac": "C2H4O2",  # acetic acid
    "TFA": "C2HF3O2",  # trifluoroacetic acid
    "DMSO": "C2H6OS",
    "IsoProp": "C3H8O",  # isopropanol
    "MeOH": "CH4O",
    "EtOH": "C2H6O",
}
#: Other spellings of the abbreviations.
_ABBREV_ALIASES = {
    "MeCN": "ACN", "AcN": "ACN", "HAc": "Hac", "HAC": "Hac", "AcOH": "Hac", "IPA": "IsoProp", "iPrOH": "IsoProp",
    "ISOPROP": "IsoProp", "Isoprop": "IsoProp", "IsoPro": "IsoProp", "fa": "FA",
    # acetic acid, as in [M+Ac-H]- (= [M+CH3COO]-); read as a formula, actinium: 526 Da for M = 300
    "Ac": "Hac",
}
#: Group abbreviations spelled as the formula term they stand for: ``OAc`` (acetate) would otherwise read
#: as oxygen + actinium, 243 Da instead of 59. ``Oac`` is a spelling found in public libraries
#: (matchms' ``known_adduct_conversions.csv`` lists ``[M+Oac]`` and ``[M+Oac]-``); as a formula it reads as nothing.
_TERM_ALIASES = {"OAc": "CH3COO", "AcO": "CH3COO", "Oac": "CH3COO",
                 "NaAc": "CH3COONa", "NaOAc": "CH3COONa"}  # sodium acetate (NaAc read as Na + actinium)

#: Charge a term carries when an adduct is written without one (only used to infer the charge).
_TERM_CHARGE = {
    "H": 1, "Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1, "Ag": 1, "NH4": 1,
    "F": -1, "Cl": -1, "Br": -1, "I": -1, "HCOO": -1, "HCO2": -1, "CHO2": -1, "CH3COO": -1, "CH3CO2": -1,
    "C2H3O2": -1, "NO3": -1,
}


@dataclass(frozen=True)
class Adduct:
    """One adduct ion type.

    Attributes
    ----------
    name : str
        Canonical spelling, e.g. ``"[M+H]+"``.
    n : int
        Number of molecules M in the ion (``2`` for ``[2M+Na]+``).
    charge : int
        Signed charge (``+1``, ``-2`` ...).
    mass_shift : float
        Da added to ``n * M`` before dividing by ``|charge|`` (electron masses included).
    composition : tuple of (str, int)
        Net atoms added (negative: removed), sorted; the identity of the adduct together with ``n`` and
        ``charge``.
    """

    name: str
    n: int
    charge: int
    mass_shift: float
    composition: tuple

    @property
    def polarity(self) -> int:
        """+1 for cations, -1 for anions."""
        return 1 if self.charge > 0 else -1

    def mz(self, neutral_mass):
        """Precursor m/z of molecules of monoisotopic mass ``neutral_mass`` (Da; scalar or array)."""
        return (self.n * np.asarray(neutral_mass, dtype=np.float64) + self.mass_shift) / abs(self.charge)

    def neutral_mass(self, precursor_mz):
        """Monoisotopic neutral mass M (Da) of ions observed at ``precursor_mz`` (scalar or array)."""
        return (np.asarray(precursor_mz, dtype=np.float64) * abs(self.charge) - self.mass_shift) / self.n

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------------- the table
#: Canonical spellings of the tabulated adducts (positive, then negative), most common first.
_TABLE_POSITIVE = (
    "[M+H]+", "[M+Na]+", "[M+NH4]+", "[M+K]+", "[M]+", "[M+H-H2O]+", "[M+H-2H2O]+", "[M+H-NH3]+",
    "[2M+H]+", "[2M+Na]+", "[2M+K]+", "[2M+NH4]+", "[M+2H]2+", "[M+3H]3+", "[M+H+Na]2+", "[M+H+K]2+",
    "[M+H+NH4]2+", "[M+2Na]2+", "[M+2H+Na]3+", "[M+H+2Na]3+", "[M+3Na]3+", "[M+Li]+", "[M+Ag]+",
    "[M+2Na-H]+", "[M+2K-H]+", "[M+ACN+H]+", "[M+ACN+Na]+", "[M+2ACN+H]+", "[M+ACN+2H]2+", "[M+2ACN+2H]2+",
    "[M+3ACN+2H]2+", "[M+CH3OH+H]+", "[M+DMSO+H]+", "[M+IsoProp+H]+", "[M+Na-H2O]+", "[2M+ACN+H]+",
    "[2M+ACN+Na]+", "[3M+H]+",
)
_TABLE_NEGATIVE = (
    "[M-H]-", "[M+HCOO]-", "[M+CH3COO]-", "[M+Cl]-", "[M-H2O-H]-", "[M]-", "[M-2H]2-", "[M-3H]3-",
    "[2M-H]-", "[3M-H]-", "[M+Na-2H]-", "[M+K-2H]-", "[M+Br]-", "[M+I]-", "[M+F]-", "[M+TFA-H]-",
    "[2M+HCOO]-", "[2M+CH3COO]-", "[M-CH3]-", "[M-H-CO2]-", "[M+H2O-H]-", "[M+NO3]-",
)


def _signed_charge_text(charge: int) -> str:
    sign = "+" if charge > 0 else "-"
    return sign if abs(charge) == 1 else f"{abs(charge)}{sign}"


_TRANS = str.maketrans({"−": "-", "–": "-", "⁺": "+", "⁻": "-", "²": "2", "³": "3", "*": "", "•": "", "·": "",
                        "∙": "", "'": "", '"': ""})
_HEAD = re.compile(r"^(\d*)M")
_TERM = re.compile(r"([+-])(\d*)([^+-]+)")
_CHARGE_AFTER = re.compile(r"^(?:(\d*)([+-])|([+-])(\d+)|(\++|-+))$")


@lru_cache(maxsize=4096)
def _term_composition(term: str) -> tuple[str, tuple]:
    """Canonical spelling and atom counts of one term (formula or abbreviation)."""
    term = _TERM_ALIASES.get(term, term)
    key = _ABBREV_ALIASES.get(term, term)
    if key in ABBREVIATIONS:
        f = parse_formula(ABBREVIATIONS[key])
        return key, tuple(f.items())
    try:
        f = parse_formula(term)
    except FormulaError as e:
        raise AdductError(f"unknown adduct term {term!r}") from e
    if f.charge:
        raise AdductError(f"adduct term {term!r} must not carry a charge")
    return term, tuple(f.items())


def _split(text: str) -> tuple[str, int | None]:
    """Core ``nM+A-B`` and the explicit charge (None when absent)."""
    s = "".join(text.translate(_TRANS).split())
    s = s.rstrip(".")
    if not s:
        raise AdductError("empty adduct")
    if s.startswith("["):
        close = s.rfind("]")
        if close < 0:
            raise AdductError(f"unbalanced brackets in adduct {text!r}")
        core, tail = s[1:close], s[close + 1:]
        if not tail:
            return core, None
        m = _CHARGE_AFTER.match(tail)
        if not m:
            raise AdductError(f"cannot read the charge {tail!r} of adduct {text!r}")
        if m.group(2):
            q = int(m.group(1) or 1) * (1 if m.group(2) == "+" else -1)
        elif m.group(3):
            q = int(m.group(4)) * (1 if m.group(3) == "+" else -1)
        else:
            q = len(m.group(5)) * (1 if m.group(5)[0] == "+" else -1)
        if q == 0:
            raise AdductError(f"adduct {text!r} has charge 0")
        return core, q
    m = re.search(r"((?<!\+)\++|(?<!-)-+)$", s)  # unbracketed: only a dangling sign is a charge ("M+H+")
    if m:
        return s[: m.start()], len(m.group(1)) * (1 if m.group(1)[0] == "+" else -1)
    return s, None


def _parse_core(core: str, text: str) -> tuple[int, list[tuple[int, int, str]], dict[str, int]]:
    """n, [(sign, count, term)] and net composition of ``nM+A-B``."""
    m = _HEAD.match(core)
    if not m:
        raise AdductError(f"adduct {text!r} must start with 'M' or 'nM'")
    n = int(m.group(1) or 1)
    if n < 1:
        raise AdductError(f"adduct {text!r}: multiplicity must be >= 1")
    pos = m.end()
    terms = []
    comp: dict[str, int] = {}
    for t in _TERM.finditer(core, pos):
        if t.start() != pos:
            break
        pos = t.end()
        sign = 1 if t.group(1) == "+" else -1
        count = int(t.group(2) or 1)
        if count == 0:
            raise AdductError(f"adduct {text!r}: zero count")
        spelling, atoms = _term_composition(t.group(3))
        terms.append((sign, count, spelling))
        for k, v in atoms:
            comp[k] = comp.get(k, 0) + sign * count * v
    if pos != len(core):
        raise AdductError(f"cannot parse adduct {text!r} at {core[pos:]!r}")
    return n, terms, {k: v for k, v in comp.items() if v}


def _infer_charge(terms, text: str) -> int:
    q = sum(sign * count * _TERM_CHARGE.get(term, 0) for sign, count, term in terms)
    if q == 0:
        raise AdductError(f"adduct {text!r} has no charge and none can be inferred; write e.g. '[M+H]+'")
    return q


def _make(name: str, n: int, charge: int, comp: dict[str, int]) -> Adduct:
    shift = sum(v * _atom_mass(k) for k, v in comp.items()) - charge * ELECTRON_MASS
    return Adduct(name, n, charge, shift, tuple(sorted(comp.items())))


def _build_table() -> tuple[dict[str, Adduct], dict[tuple, Adduct], dict[tuple, list[Adduct]]]:
    by_name: dict[str, Adduct] = {}
    by_key: dict[tuple, Adduct] = {}
    by_neutral: dict[tuple, list[Adduct]] = {}
    for name in _TABLE_POSITIVE + _TABLE_NEGATIVE:
        core, q = _split(name)
        n, _, comp = _parse_core(core, name)
        a = _make(name, n, q, comp)
        key = (a.n, a.composition, a.charge)
        assert key not in by_key, name  # two table names for one ion
        by_name[name] = a
        by_key[key] = a
        by_neutral.setdefault((a.n, a.composition), []).append(a)
    return by_name, by_key, by_neutral


#: Canonical name -> :class:`Adduct` for the tabulated ESI adducts.
ADDUCTS, _BY_KEY, _BY_NEUTRAL = _build_table()


def known_adducts(polarity: int | str | None = None) -> list[str]:
    """Canonical names of the tabulated adducts (``polarity`` +1/"positive" or -1/"negative" filters)."""
    if polarity is None:
        return list(ADDUCTS)
    p = polarity
    if isinstance(p, str):
        t = p.strip().lower()
        p = 1 if t in ("positive", "pos", "p", "+", "+1", "1") else -1 if t in ("negative", "neg", "n", "-", "-1") else 0
    if not isinstance(p, (int, float, np.integer, np.floating)) or not p or p != p:  # 0, NaN, "unknown": not
        # read as negative
        raise AdductError(f"polarity must be +1 / 'positive' or -1 / 'negative', got {polarity!r}")
    return [k for k, a in ADDUCTS.items() if a.polarity == (1 if p > 0 else -1)]


@lru_cache(maxsize=1 << 14)
def _parse_str(text: str) -> Adduct:
    if text in ADDUCTS:
        return ADDUCTS[text]
    if re.search(r"[\d⁰¹²³⁴⁵⁶⁷⁸⁹]{10}", text):  # (superscript digits too: they become digits)  # no multiplicity, count or charge is that large (int() refuses 4,300 digits)
        raise AdductError(f"a number of 10 digits or more in adduct {text[:60]!r}")
    core, q = _split(text)
    n, terms, comp = _parse_core(core, text)
    ckey = tuple(sorted(comp.items()))
    if q is None:
        cands = _BY_NEUTRAL.get((n, ckey), [])
        if len(cands) == 1:
            return cands[0]
        q = _infer_charge(terms, text)
    hit = _BY_KEY.get((n, ckey, q))
    if hit is not None:
        return hit
    # additions, then losses, each by term and with repeated terms merged: one spelling per ion whatever
    # the order written ([M-C6H10O5+H]+ and [M+H-C6H10O5]+ are the same ion)
    merged: dict[tuple[int, str], int] = {}
    for s, c, t in terms:
        merged[(s, t)] = merged.get((s, t), 0) + c
    name = "[" + (str(n) if n > 1 else "") + "M" + "".join(
        ("+" if s > 0 else "-") + (str(c) if c > 1 else "") + t
        for (s, t), c in sorted(merged.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ) + "]" + _signed_charge_text(q)
    return _make(name, n, q, comp)


def parse_adduct(adduct: "str | Adduct") -> Adduct:
    """Parse an adduct notation (see the module docstring).

    Raises
    ------
    AdductError
        If the string is empty or not an adduct.
    """
    if isinstance(adduct, Adduct):
        return adduct
    if not isinstance(adduct, str):
        raise AdductError(f"expected an adduct string, got {type(adduct).__name__}")
    return _parse_str(adduct)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def normalize_adduct(adduct: "str | Adduct | None", errors: str = "null") -> str | None:
    """Canonical spelling of an adduct (``"M+H"`` -> ``"[M+H]+"``, ``"[M+FA-H]-"`` -> ``"[M+HCOO]-"``).

    Parameters
    ----------
    adduct : str or None
        Any accepted notation. None, NaN and empty strings give None.
    errors : {"null", "raise"}
        Unreadable notations give None, or raise :class:`AdductError`.
    """
    if _missing(adduct):
        return None
    try:
        return parse_adduct(adduct).name
    except AdductError:
        if errors == "raise":
            raise
        return None


def normalize_adducts(values: Sequence, errors: str = "null") -> list[str | None]:
    """:func:`normalize_adduct` over many values (each distinct value is parsed once)."""
    cache: dict = {}
    out = []
    for v in values:
        if _missing(v):
            out.append(None)
            continue
        if v not in cache:
            cache[v] = normalize_adduct(v, errors)
        out.append(cache[v])
    return out


def adduct_polarity(adduct: "str | Adduct") -> int:
    """+1 for a positive adduct, -1 for a negative one. Raises :class:`AdductError` when unreadable."""
    return parse_adduct(adduct).polarity


def _params(adduct, errors: str) -> tuple[np.ndarray | float, ...]:
    """n, |z|, shift for one adduct or one per element (NaN for unreadable ones with errors='nan')."""
    if errors not in ("raise", "nan"):
        raise AdductError(f"errors must be 'raise' or 'nan', got {errors!r}")

    def one(a):
        try:
            p = parse_adduct(a)
            return float(p.n), float(abs(p.charge)), p.mass_shift
        except AdductError:
            if errors == "raise":
                raise
            return math.nan, math.nan, math.nan

    if isinstance(adduct, (str, Adduct)):
        return one(adduct)
    vals = list(adduct)
    uniq = {v: one(v) for v in dict.fromkeys(vals)}
    arr = np.array([uniq[v] for v in vals], dtype=np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def precursor_mz_from_mass(neutral_mass, adduct, errors: str = "raise"):
    """Precursor m/z ``(n * M + shift) / |z|`` of neutral monoisotopic mass(es) M (Da).

    Parameters
    ----------
    neutral_mass : float or array-like of float
        The mass of M with its atoms neutral. For a permanently charged molecule written as ``[M]+`` (a
        cation formula such as ``C9H14N+``), that is the formula's mass *without* its charge: the adduct's
        shift removes the electron (``formula_mass`` of the cation, which has already removed it, would
        put the m/z 0.549 mDa low).
    adduct : str, Adduct, or sequence of them (one per mass; broadcast like numpy)
    errors : {"raise", "nan"}
        Unreadable adducts raise :class:`AdductError` or give NaN.

    Returns
    -------
    float or ndarray of float64
    """
    n, z, shift = _params(adduct, errors)
    out = (n * np.asarray(neutral_mass, dtype=np.float64) + shift) / z
    return float(out) if np.ndim(out) == 0 else out


def neutral_mass_from_precursor_mz(precursor_mz, adduct, errors: str = "raise"):
    """Neutral monoisotopic mass ``(mz * |z| - shift) / n`` (Da) of precursor m/z value(s).

    Inverse of :func:`precursor_mz_from_mass`; same parameters.
    """
    n, z, shift = _params(adduct, errors)
    out = (np.asarray(precursor_mz, dtype=np.float64) * z - shift) / n
    return float(out) if np.ndim(out) == 0 else out
