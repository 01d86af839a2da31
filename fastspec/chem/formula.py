"""Molecular formulas: parse, write in Hill notation, compare, monoisotopic mass.

Accepted syntax (whitespace is ignored, except that it may separate a trailing charge)
-------------------------------------------------------------------------------------
* elements with counts: ``C6H12O6``; counts of 0 are allowed and dropped; every symbol must be a known
  element (H .. U).
* groups in parentheses or square brackets with a count: ``Ca(OH)2``, ``K4[Fe(CN)6]``.
* isotopes: ``[13C]``, ``[15N]2``, ``[2H]``; ``D`` and ``T`` are shorthands for ``[2H]`` and ``[3H]``.
  Isotope-labelled atoms are kept apart from the natural element (``C5[13C]H12O6`` is not ``C6H12O6``)
  and use the exact mass of that isotope.
* components (hydrates, salts) joined by ``.``, ``·``, ``•``, ``⋅`` or ``*``, each with an optional leading
  multiplier: ``C6H12O6.H2O``, ``CuSO4·5H2O``, ``C12H22O11.2H2O``. Components are summed.
* a trailing charge on the formula or on a component: ``C5H6N+``, ``C2H3O2-``, ``C6H5O7-3``, ``[C5H5N]+``,
  ``[C6H5O7]3-``, ``Ca++``, ``C6H5O7 3-`` (space-separated). Without brackets, digits before the sign are
  atom counts (PubChem / RDKit convention): ``C9H16ClN4+`` is N4 with charge +1, and ``Fe2+`` is Fe2 with
  charge +1 -- write ``[Fe]2+`` or ``Fe+2`` for the iron(II) ion.
* ``.`` between two digits separates components (``C6H12O6.2H2O``); fractional counts do not exist.
* Unicode subscript/superscript digits and the minus sign ``−`` are read as ASCII; a trailing charge in
  superscripts is a charge (``C6H5O7³⁻``, ``C6H5O7³-``, ``Fe²⁺`` is iron(II)), superscript digits before an
  element its mass number (``¹³CH4``), and any other superscript digit an error. Whitespace between two numbers
  (``C6H12O6 2H2O``) is refused rather than merging them.

Anything else (lower-case symbols, unknown elements, ``(C6H10O5)n``, unbalanced brackets, empty strings)
raises :class:`FormulaError`.

Canonical form (Hill system)
----------------------------
With carbon present: C, then H, then the other elements alphabetically; without carbon: all elements
alphabetically. An isotope follows its natural element, by mass number; ``[2H]``/``[3H]`` are written
``D``/``T`` (as RDKit's ``CalcMolFormula`` does). Counts of 1 are omitted. The charge is appended as
``+``/``-`` for +-1 and ``+2``/``-3`` otherwise (PubChem / RDKit style), e.g. ``C5H6N+``, ``C6H5O7-3``.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Iterable, Sequence

from fastspec.chem.elements import ELECTRON_MASS, HYDROGEN_ISOTOPE_SYMBOLS, ISOTOPES, MONOISOTOPIC
from fastspec.errors import FastspecError

__all__ = [
    "FormulaError",
    "Formula",
    "parse_formula",
    "canonical_formula",
    "formula_mass",
    "same_formula",
    "canonical_formulas",
    "formula_masses",
]


class FormulaError(FastspecError, ValueError):
    """A string is not a molecular formula fastspec can read."""


class Formula(dict):
    """Atom counts (``{"C": 6, "H": 12, "[13C]": 1}``) plus a signed ``charge``.

    A plain ``dict`` of positive ints keyed by element symbol (``"C"``) or isotope (``"[13C]"``, ``"[2H]"``);
    equality also compares the charge. ``str()`` gives the canonical Hill formula.
    """

    __slots__ = ("charge",)

    def __init__(self, counts: dict | None = None, charge: int = 0):
        super().__init__({k: v for k, v in (counts or {}).items() if v})
        self.charge = int(charge)

    def __eq__(self, other) -> bool:
        if isinstance(other, Formula):
            return dict.__eq__(self, other) and self.charge == other.charge
        return NotImplemented if not isinstance(other, dict) else (self.charge == 0 and dict.__eq__(self, other))

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # mutable, like dict

    @property
    def mass(self) -> float:
        """Monoisotopic mass (Da), minus one electron mass per positive charge."""
        return sum(n * _atom_mass(k) for k, n in self.items()) - self.charge * ELECTRON_MASS

    def hill(self) -> str:
        """Canonical Hill-notation string with charge suffix."""
        return _render(self, self.charge)

    def __str__(self) -> str:
        return self.hill()

    def __repr__(self) -> str:
        return f"Formula({dict(self)!r}, charge={self.charge})"


# ---------------------------------------------------------------------- parsing
_TRANS = str.maketrans({
    **{chr(0x2080 + i): str(i) for i in range(10)},  # subscripts
    **{c: str(i) for i, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")},  # superscripts
    "⁺": "+", "⁻": "-", "−": "-", "–": "-",
    "·": ".", "•": ".", "⋅": ".", "∙": ".", "*": ".",
})
_TOKEN = re.compile(r"\[(\d+)([A-Z][a-z]?)\]|([A-Z][a-z]?)|(\d+)|([(\[])|([)\]])")
_CHARGE_SIGN_FIRST = re.compile(r"([+-])(\d+)$")
# (each run matched from its start only: searched from every position inside a long run of '+', digits or
# spaces, these took quadratic time)
_CHARGE_SIGNS = re.compile(r"((?<!\+)\++|(?<!-)-+)$")
_CHARGE_COUNT_FIRST = re.compile(r"(?<!\d)(\d+)([+-])$")
_SPACED_CHARGE = re.compile(r"(?<!\s)\s+(\d*[+-]|[+-]\d*)\s*$")
_OPEN_FOR = {")": "(", "]": "["}


def _atom_mass(key: str) -> float:
    if key[0] == "[":
        a, el = _split_isotope(key)
        return ISOTOPES[el][a]
    return MONOISOTOPIC[key]


def _split_isotope(key: str) -> tuple[int, str]:
    m = re.fullmatch(r"\[(\d+)([A-Z][a-z]?)\]", key)
    return int(m.group(1)), m.group(2)


def _isotope_key(a: int, el: str, text: str) -> str:
    if el not in ISOTOPES:
        raise FormulaError(f"unknown element {el!r} in formula {text!r}")
    if a not in ISOTOPES[el]:
        raise FormulaError(f"unknown isotope {a}{el} in formula {text!r}")
    return f"[{a}{el}]"


def _split_charge(comp: str, text: str) -> tuple[str, int]:
    """Body and signed charge of one component."""
    m = _CHARGE_SIGN_FIRST.search(comp)
    if m:
        return comp[: m.start()], (1 if m.group(1) == "+" else -1) * int(m.group(2))
    m = _CHARGE_COUNT_FIRST.search(comp)
    if m and comp[: m.start()].endswith("]"):  # "[C6H5O7]3-"; unbracketed digits are atom counts
        return comp[: m.start()], (1 if m.group(2) == "+" else -1) * int(m.group(1))
    m = _CHARGE_SIGNS.search(comp)
    if m:
        s = m.group(1)
        return comp[: m.start()], len(s) if s[0] == "+" else -len(s)
    return comp, 0


def _parse_body(body: str, text: str) -> dict[str, int]:
    """Atom counts of a formula body without charge (groups, isotopes, counts)."""
    stack: list[dict[str, int]] = [{}]
    opens: list[str] = []
    last: dict[str, int] | None = None  # counts of the item a following number multiplies
    pos = 0
    for m in _TOKEN.finditer(body):
        if m.start() != pos:
            raise FormulaError(f"cannot parse formula {text!r} at {body[pos:m.start()]!r}")
        pos = m.end()
        iso_a, iso_el, el, num, opn, cls = m.groups()
        if num is not None:
            if last is None:
                raise FormulaError(f"misplaced number {num!r} in formula {text!r}")
            k = int(num)
            top = stack[-1]
            for key, n in last.items():  # `last` was already added once: add (k - 1) more
                top[key] = top.get(key, 0) + n * (k - 1)
            last = None
            continue
        if opn is not None:
            stack.append({})
            opens.append(opn)
            last = None
            continue
        if cls is not None:
            if not opens or opens[-1] != _OPEN_FOR[cls]:
                raise FormulaError(f"unbalanced brackets in formula {text!r}")
            opens.pop()
            group = stack.pop()
            if not group:
                raise FormulaError(f"empty group in formula {text!r}")
            top = stack[-1]
            for key, n in group.items():
                top[key] = top.get(key, 0) + n
            last = group
            continue
        if iso_el is not None:
            key = _isotope_key(int(iso_a), iso_el, text)
        elif el in MONOISOTOPIC:
            key = el
        elif el in HYDROGEN_ISOTOPE_SYMBOLS:
            key = f"[{HYDROGEN_ISOTOPE_SYMBOLS[el]}H]"
        else:
            raise FormulaError(f"unknown element {el!r} in formula {text!r}")
        top = stack[-1]
        top[key] = top.get(key, 0) + 1
        last = {key: 1}
    if pos != len(body):
        raise FormulaError(f"cannot parse formula {text!r} at {body[pos:]!r}")
    if opens:
        raise FormulaError(f"unbalanced brackets in formula {text!r}")
    return stack[0]


def _parse_cached(text: str) -> tuple[tuple[tuple[str, int], ...], int]:
    if not isinstance(text, str):
        raise FormulaError(f"expected a formula string, got {type(text).__name__}")
    return _parse_str(text)


_SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹"
#: superscript digits are never atom counts: next to a trailing sign (``C6H5O7³⁻``, ``Fe²⁺``, ``C6H5O7³-``,
#: ``Fe⁺²``) a charge, before an element symbol (``¹³CH4``) its mass number
#: (a run of superscripts matched from its start only: searched from inside a long run, quadratic time)
_SUP_CHARGE = re.compile(rf"(?:(?<![{_SUP}])([{_SUP}]+)([⁺⁻+\-−])|([⁺⁻+\-−])([{_SUP}]+))\s*$")
_SUP_ISOTOPE = re.compile(rf"(?<![{_SUP}])([{_SUP}]+)([A-Z][a-z]?)")
_SUP_DIGITS = str.maketrans({c: str(i) for i, c in enumerate(_SUP)})


def _superscripts(text: str) -> str:
    """``text`` with superscript charges spaced as charges and superscript mass numbers as isotopes."""
    m = _SUP_CHARGE.search(text)
    if m:
        digits, sign = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        text = f"{text[: m.start()]} {digits.translate(_SUP_DIGITS)}{sign}"
    text = _SUP_ISOTOPE.sub(lambda g: f"[{g.group(1).translate(_SUP_DIGITS)}{g.group(2)}]", text)
    if any(c in _SUP for c in text):
        raise FormulaError(f"superscript digits in formula {text!r} are neither a charge nor a mass number")
    return text


#: whitespace between two digits ("C6H12O6 2H2O"): removed, it merged counts into a wrong formula
_DIGITS_SPACED = re.compile(r"\d\s+\d")


#: a run of 10 digits or more: no count, mass number or charge is that large, and int() refuses over 4,300
_LONG_NUMBER = re.compile(rf"[\d{_SUP}]{{10}}")  # (superscript digits too: they become digits)


@lru_cache(maxsize=1 << 17)
def _parse_str(text: str) -> tuple[tuple[tuple[str, int], ...], int]:
    if _LONG_NUMBER.search(text):  # (int() of a 5,000-digit count raised a plain ValueError from a file's value)
        raise FormulaError(f"a number of 10 digits or more in formula {text[:60]!r}")
    if any(c in _SUP for c in text):
        text = _superscripts(text)
    s = text.translate(_TRANS).strip()
    m = _SPACED_CHARGE.search(s)
    tail = ""
    if m:  # "C6H5O7 3-": a charge separated by whitespace is unambiguous
        tail, s = m.group(1), s[: m.start()]
        tail = tail if tail[0] in "+-" else tail[-1] + tail[:-1]
    if _DIGITS_SPACED.search(s):
        raise FormulaError(f"whitespace between two numbers in formula {text!r} (a hydrate is written "
                           "'C6H12O6.2H2O')")
    s = "".join(s.split()) + tail
    if not s:
        raise FormulaError(f"empty formula {text!r}")
    counts: dict[str, int] = {}
    charge = 0
    for comp in s.split("."):
        if not comp:
            raise FormulaError(f"empty component in formula {text!r}")
        mult = 1
        lead = re.match(r"\d+", comp)
        if lead:
            mult = int(lead.group(0))
            comp = comp[lead.end():]
        body, q = _split_charge(comp, text)
        if not body:
            raise FormulaError(f"no atoms in formula {text!r}")
        for key, n in _parse_body(body, text).items():
            counts[key] = counts.get(key, 0) + mult * n
        charge += mult * q
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        raise FormulaError(f"no atoms in formula {text!r}")
    return tuple(counts.items()), charge


def parse_formula(text: str) -> Formula:
    """Parse a molecular formula.

    Parameters
    ----------
    text : str
        A formula in the syntax described in the module docstring.

    Returns
    -------
    Formula
        A ``dict`` of atom counts keyed by element (``"C"``) or isotope (``"[13C]"``; ``D`` becomes
        ``"[2H]"``), with the signed charge in ``.charge``.

    Raises
    ------
    FormulaError
        If ``text`` is not a formula.
    """
    items, charge = _parse_cached(text)
    return Formula(dict(items), charge)


def _sort_key(key: str, has_carbon: bool) -> tuple:
    a, el = _split_isotope(key) if key[0] == "[" else (0, key)
    if has_carbon:
        return (0 if el == "C" else 1 if el == "H" else 2, el, a)
    return (el, a)


def _symbol(key: str) -> str:
    if key == "[2H]":
        return "D"
    if key == "[3H]":
        return "T"
    return key


def _charge_suffix(charge: int) -> str:
    if charge == 0:
        return ""
    sign = "+" if charge > 0 else "-"
    return sign if abs(charge) == 1 else f"{sign}{abs(charge)}"


def _render(counts: dict[str, int], charge: int) -> str:
    has_carbon = any(k == "C" or k.endswith("C]") for k in counts)
    keys = sorted(counts, key=lambda k: _sort_key(k, has_carbon))
    return "".join(_symbol(k) + (str(counts[k]) if counts[k] != 1 else "") for k in keys) + _charge_suffix(charge)


def canonical_formula(text: str) -> str:
    """Canonical Hill formula of ``text`` (see the module docstring), e.g. ``"[C5H5N]+"`` -> ``"C5H5N+"``.

    Raises
    ------
    FormulaError
        If ``text`` is not a formula.
    """
    items, charge = _parse_cached(text)
    return _render_cached(items, charge)


@lru_cache(maxsize=1 << 17)
def _render_cached(items: tuple, charge: int) -> str:
    return _render(dict(items), charge)


def formula_mass(text: str | Formula) -> float:
    """Monoisotopic mass (Da) of a formula; each positive charge removes one electron mass (negative adds)."""
    f = text if isinstance(text, Formula) else parse_formula(text)
    return f.mass


def same_formula(a: str | Formula, b: str | Formula) -> bool:
    """True when two formulas have the same atoms and charge (``"C6H12O6.H2O" == "C6H14O7"``).

    Raises
    ------
    FormulaError
        If either is not a formula.
    """
    fa = a if isinstance(a, Formula) else parse_formula(a)
    fb = b if isinstance(b, Formula) else parse_formula(b)
    return fa == fb


#: NaN and infinity as text (pandas' missing value turned into a string): no formula, though "NaN" would read
#: as N + Na and "INF" as F + I + N
_NONFINITE_TEXT = frozenset(f"{sign}{word}" for sign in ("", "+", "-") for word in ("nan", "inf", "infinity"))


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (
        isinstance(v, str) and (not v.strip() or v.strip().lower() in _NONFINITE_TEXT))


def _map_unique(values: Iterable, func, errors: str) -> list:
    if errors not in ("null", "raise", "keep"):
        raise FormulaError(f"errors must be 'null', 'raise' or 'keep', got {errors!r}")
    cache: dict = {}
    out = []
    for v in values:
        if _is_missing(v):
            out.append(None)
            continue
        try:
            r = cache[v]
        except KeyError:
            try:
                r = func(v if isinstance(v, str) else str(v))
            except FormulaError:
                if errors == "raise":
                    raise
                r = v if errors == "keep" else None
            cache[v] = r
        out.append(r)
    return out


def canonical_formulas(values: Sequence, errors: str = "null") -> list[str | None]:
    """Canonical Hill formulas of many values, computed once per distinct value.

    Parameters
    ----------
    values : sequence of str or None
        Formulas; None, NaN (also as text: "NaN", "inf") and empty strings give None.
    errors : {"null", "raise", "keep"}
        Unparsable values become None, raise :class:`FormulaError`, or are returned unchanged.

    Returns
    -------
    list of str or None
        Same length as ``values``.
    """
    return _map_unique(values, canonical_formula, errors)


def formula_masses(values: Sequence, errors: str = "null") -> "list[float | None]":
    """Monoisotopic masses of many formulas (None for missing/unparsable ones with ``errors="null"``)."""
    return _map_unique(values, formula_mass, errors)
