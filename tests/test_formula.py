"""Molecular formulas: Hill notation, hydrates, charges, isotopes, masses, refusals, real MassBank formulas."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from fastspec.chem import formula as F
from fastspec.chem.elements import ELECTRON_MASS, ISOTOPES, MONOISOTOPIC, PROTON_MASS
from fastspec.errors import FastspecError


@pytest.mark.parametrize("text, hill", [
    ("C6H12O6", "C6H12O6"),
    ("H12C6O6", "C6H12O6"),
    ("O6C6H12", "C6H12O6"),
    ("CH4", "CH4"),
    ("C2H5OH", "C2H6O"),
    ("NaCl", "ClNa"),              # no carbon: alphabetical
    ("H2O", "H2O"),
    ("H2SO4", "H2O4S"),
    ("ClH", "ClH"),
    ("BrC6H5", "C6H5Br"),           # carbon: C, H, then alphabetical
    ("C9H16ClN4", "C9H16ClN4"),
    ("Ca(OH)2", "CaH2O2"),
    ("K4[Fe(CN)6]", "C6FeK4N6"),
    ("(CH3)3N", "C3H9N"),
    ("C6H12O6.H2O", "C6H14O7"),     # hydrates
    ("C6H12O6·2H2O", "C6H16O8"),
    ("CuSO4*5H2O", "CuH10O9S"),
    ("C12H22O11 . 2 H2O", "C12H26O13"),
    ("2H2O", "H4O2"),
    ("[C5H5N]+", "C5H5N+"),         # charges
    ("C5H6N+", "C5H6N+"),
    ("C6H5O7-3", "C6H5O7-3"),
    ("[C6H5O7]3-", "C6H5O7-3"),
    ("C6H5O7 3-", "C6H5O7-3"),
    ("[C9H16ClN4]+", "C9H16ClN4+"),
    ("C2H3O2-", "C2H3O2-"),
    ("Ca++", "Ca+2"),
    ("[Ca]2+", "Ca+2"),
    ("C5H6N+1", "C5H6N+"),
    ("C9H16ClN4+", "C9H16ClN4+"),   # unbracketed: digits are counts, the sign alone is the charge
    ("Fe2+", "Fe2+"),
    ("Fe+2", "Fe+2"),
    ("2[NH4]+.[SO4]2-", "H8N2O4S"),  # salt: charges add up to 0
    ("CD3Cl", "CD3Cl"),             # isotopes
    ("C[2H]3Cl", "CD3Cl"),
    ("HDO", "HDO"),
    ("[13C]H4", "[13C]H4"),
    ("C5[13C]H12O6", "C5[13C]H12O6"),
    ("[13C]6H12O6", "[13C]6H12O6"),
    ("H2[18O]", "H2[18O]"),
    ("C2H6O", "C2H6O"),
    ("C₆H₁₂O₆", "C6H12O6"),          # unicode subscripts
    ("C0H4", "H4"),
])
def test_canonical(text, hill):
    assert F.canonical_formula(text) == hill
    assert F.canonical_formula(hill) == hill  # idempotent
    assert str(F.parse_formula(text)) == hill


def test_parse_returns_counts_and_charge():
    f = F.parse_formula("[C5H5N]+")
    assert dict(f) == {"C": 5, "H": 5, "N": 1} and f.charge == 1
    f = F.parse_formula("CD3Cl")
    assert dict(f) == {"C": 1, "[2H]": 3, "Cl": 1} and f.charge == 0
    assert F.parse_formula("C6H5O7-3").charge == -3
    assert F.parse_formula("C6H12O6") == F.parse_formula("C6H12O6")
    assert F.parse_formula("C5H6N+") != F.parse_formula("C5H6N")


@pytest.mark.parametrize("a, b, same", [
    ("C6H12O6.H2O", "C6H14O7", True),
    ("H12C6O6", "C6H12O6", True),
    ("[C5H6N]+", "C5H6N+", True),
    ("C5H6N+", "C5H6N", False),
    ("C6H12O6", "C6H12O7", False),
    ("CD4", "CH4", False),
    ("[2H]2O", "D2O", True),
])
def test_same_formula(a, b, same):
    assert F.same_formula(a, b) is same


def test_masses():
    h, c, o, n = MONOISOTOPIC["H"], MONOISOTOPIC["C"], MONOISOTOPIC["O"], MONOISOTOPIC["N"]
    assert F.formula_mass("C6H12O6") == pytest.approx(180.0633881, abs=1e-6)  # glucose, monoisotopic
    assert F.formula_mass("H2O") == pytest.approx(18.0105647, abs=1e-6)
    assert F.formula_mass("C8H10N4O2") == pytest.approx(194.0803756, abs=1e-6)  # caffeine
    assert F.formula_mass("C5H6N+") == pytest.approx(5 * c + 6 * h + n - ELECTRON_MASS, abs=1e-9)
    assert F.formula_mass("C6H5O7-3") == pytest.approx(6 * c + 5 * h + 7 * o + 3 * ELECTRON_MASS, abs=1e-9)
    assert F.formula_mass("CD4") == pytest.approx(c + 4 * 2.0141017778, abs=1e-9)
    assert F.formula_mass("[13C]H4") - F.formula_mass("CH4") == pytest.approx(1.0033548, abs=1e-6)
    assert F.formula_mass("C6H12O6.H2O") == pytest.approx(F.formula_mass("C6H14O7"), abs=1e-9)
    # proton = H atom - electron
    assert h - ELECTRON_MASS == pytest.approx(PROTON_MASS, abs=1e-7)
    assert F.formula_masses(["H2O", None, "xx"]) == [pytest.approx(18.0105647, abs=1e-6), None, None]


def test_element_tables():
    assert len(MONOISOTOPIC) == 92
    for el, m in MONOISOTOPIC.items():
        assert m in ISOTOPES[el].values()
    assert MONOISOTOPIC["C"] == 12.0
    assert MONOISOTOPIC["Cl"] == pytest.approx(34.96885268, abs=1e-8)


@pytest.mark.parametrize("bad", [
    "", "   ", "abc", "c6h6", "Xx2", "C6H12O6)", "(C6H12O6", "C6H12O6.", ".H2O", "[99C]", "[13Xx]",
    "12", "H2O-H2O", "C6H6+-", "(C6H10O5)n", "()", "[]+", "+", "C6H12O6?", "C6 H12 O6 x",
    "M+H", "[M+H]+", "C6H6+2-", "[C6H6",
])
def test_refusals(bad):
    with pytest.raises(F.FormulaError):
        F.parse_formula(bad)
    with pytest.raises(FastspecError):
        F.canonical_formula(bad)


@pytest.mark.parametrize("bad", [None, 42, 3.5, b"H2O"])
def test_refuses_non_strings(bad):
    with pytest.raises(F.FormulaError):
        F.parse_formula(bad)


def test_canonical_formulas_vectorised():
    vals = ["H12C6O6", None, float("nan"), "", "garbage!", "H12C6O6", "[C5H5N]+"]
    assert F.canonical_formulas(vals) == ["C6H12O6", None, None, None, None, "C6H12O6", "C5H5N+"]
    assert F.canonical_formulas(vals, errors="keep")[4] == "garbage!"
    with pytest.raises(F.FormulaError):
        F.canonical_formulas(vals, errors="raise")
    with pytest.raises(F.FormulaError):
        F.canonical_formulas(vals, errors="bogus")


_ELEMENTS = ["C", "H", "N", "O", "P", "S", "Cl", "Br", "Na", "K", "F", "I", "Si", "Se", "B"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_ELEMENTS), st.integers(1, 40), min_size=1, max_size=7),
       st.integers(-3, 3), st.randoms(use_true_random=False))
def test_roundtrip_any_order(counts, charge, rnd):
    items = list(counts.items())
    rnd.shuffle(items)
    text = "".join(f"{e}{n}" for e, n in items)
    if charge:
        text = f"[{text}]{abs(charge) if abs(charge) > 1 else ''}{'+' if charge > 0 else '-'}"
    f = F.parse_formula(text)
    assert dict(f) == counts and f.charge == charge
    hill = F.canonical_formula(text)
    assert F.parse_formula(hill) == f
    expect = sum(n * MONOISOTOPIC[e] for e, n in counts.items()) - charge * ELECTRON_MASS
    assert F.formula_mass(text) == pytest.approx(expect, rel=1e-12)
    # Hill order
    body = hill.rstrip("+-0123456789") if charge else hill
    import re

    syms = re.findall(r"[A-Z][a-z]?", body)
    if "C" in counts:
        assert syms[0] == "C" and (("H" not in counts) or syms[1] == "H")
        rest = [s for s in syms if s not in ("C", "H")]
    else:
        rest = syms
    assert rest == sorted(rest)


def test_massbank_formulas_parse(massbank_parquet):
    import pyarrow.parquet as pq

    vals = pq.read_table(massbank_parquet, columns=["formula"]).column("formula").to_pylist()
    canon = F.canonical_formulas(vals)
    present = [v for v in vals if v]
    ok = sum(1 for v, c in zip(vals, canon) if v and c is not None)
    assert ok > 0.99 * len(present)
    # canonical forms are fixed points and keep the charge of bracketed cations
    distinct = {c for c in canon if c}
    assert all(F.canonical_formula(c) == c for c in distinct)
    assert F.canonical_formulas(["[C9H16ClN4]+"]) == ["C9H16ClN4+"]
    assert math.isclose(len(distinct), len({v for v in present}), rel_tol=0.05)


def test_superscript_charges_whitespace_between_counts_and_isotopes_from_smiles():
    """From a chemistry audit: a superscript charge is a charge (C6H5O7³⁻ read as O73-, 1244 Da); whitespace
    between two numbers is refused (C6H12O6 2H2O merged into C6H14O63); a formula derived from an isotope-
    labelled SMILES keeps its isotopes, as a written one does (a d3 compound shared its parent's bucket)."""
    from fastspec.chem.formula import FormulaError, canonical_formula, formula_mass
    from fastspec.fingerprints import formulas_from_inchi, formulas_from_smiles

    assert canonical_formula("C6H5O7³⁻") == canonical_formula("C6H5O7 3-") == "C6H5O7-3"
    assert canonical_formula("Fe²⁺") == canonical_formula("[Fe]2+") == "Fe+2"
    assert canonical_formula("C6H5O7³-") == canonical_formula("C6H5O7⁻³") == "C6H5O7-3"
    assert canonical_formula("¹³CH4") == "[13C]H4" and canonical_formula("C5¹³CH12O6") == "C5[13C]H12O6"
    with pytest.raises(FormulaError, match="superscript"):
        canonical_formula("C2H4O2²")  # never an atom count
    assert formula_mass("C6H5O7³⁻") == pytest.approx(189.0052, abs=1e-4)
    with pytest.raises(FormulaError, match="whitespace between two numbers"):
        canonical_formula("C6H12O6 2H2O")
    assert canonical_formula("C6 H12 O6") == "C6H12O6"
    assert formulas_from_smiles(["[2H]C([2H])([2H])O", "[13CH3]O", "CO"]) == ["CHD3O", "[13C]H4O", "CH4O"]
    assert canonical_formula(formulas_from_smiles(["[2H]C([2H])([2H])O"])[0]) == canonical_formula("CD3OH")
    assert formulas_from_inchi(["InChI=1S/CH4O/c1-2/h2H,1H3/i1D3"]) == ["CHD3O"]
    # an explicit most-abundant isotope is the element (no bucket of its own)
    assert formulas_from_smiles(["[12CH4]", "[1H]C([1H])([1H])[1H]", "[37Cl]C"]) == ["CH4", "CH4", "CH3[37Cl]"]
