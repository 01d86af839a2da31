"""Chemistry helpers without heavy dependencies: molecular formulas, element masses, ESI adducts.

* :mod:`fastspec.chem.formula` -- parse / Hill-normalise / compare formulas, monoisotopic masses;
* :mod:`fastspec.chem.adducts` -- adduct table, notation normalisation, precursor m/z <-> neutral mass;
* :mod:`fastspec.chem.elements` -- monoisotopic and isotope masses, electron and proton mass.
"""
from __future__ import annotations

from fastspec.chem.adducts import (
    ADDUCTS,
    Adduct,
    AdductError,
    adduct_polarity,
    known_adducts,
    neutral_mass_from_precursor_mz,
    normalize_adduct,
    normalize_adducts,
    parse_adduct,
    precursor_mz_from_mass,
)
from fastspec.chem.elements import ELECTRON_MASS, MONOISOTOPIC, PROTON_MASS
from fastspec.chem.formula import (
    Formula,
    FormulaError,
    canonical_formula,
    canonical_formulas,
    formula_mass,
    formula_masses,
    parse_formula,
    same_formula,
)

__all__ = [
    "ADDUCTS", "Adduct", "AdductError", "adduct_polarity", "known_adducts", "neutral_mass_from_precursor_mz",
    "normalize_adduct", "normalize_adducts", "parse_adduct", "precursor_mz_from_mass",
    "ELECTRON_MASS", "MONOISOTOPIC", "PROTON_MASS",
    "Formula", "FormulaError", "canonical_formula", "canonical_formulas", "formula_mass", "formula_masses",
    "parse_formula", "same_formula",
]
