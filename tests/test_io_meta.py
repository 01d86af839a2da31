"""Metadata harmonisation (fastspec.io.meta)."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspec.io import meta
from fastspec.spectra import CANONICAL_KEYS


@pytest.mark.parametrize("raw, canon", [
    ("PEPMASS", "precursor_mz"), ("PrecursorMZ", "precursor_mz"), ("PRECURSORMZ", "precursor_mz"),
    ("precursor_mz", "precursor_mz"), ("Precursor_type", "adduct"), ("PRECURSORTYPE", "adduct"),
    ("ADDUCT", "adduct"), ("IONMODE", "ion_mode"), ("ion_mode", "ion_mode"), ("Ion_mode", "ion_mode"),
    ("INSTRUMENTTYPE", "instrument_type"), ("Instrument_type", "instrument_type"),
    ("SOURCE_INSTRUMENT", "instrument_type"), ("COLLISIONENERGY", "collision_energy"),
    ("Collision_energy", "collision_energy"), ("SMILES", "smiles"), ("INCHIKEY", "inchikey"),
    ("InChIKey", "inchikey"), ("Formula", "formula"), ("FORMULA", "formula"), ("NAME", "name"),
    ("Name", "name"), ("COMPOUND_NAME", "name"), ("SPECTRUMID", "id"), ("SPECTRUM_ID", "id"), ("DB#", "id"),
    ("IDENTIFIER", "id"), ("FEATURE_ID", "id"), ("CHARGE", "charge"), ("MSLEVEL", "ms_level"),
    ("Num Peaks", "num_peaks"), ("Some Other-Key", "some_other_key"), ("db", "db"), ("TITLE", "title"),
])
def test_aliases(raw, canon):
    assert meta.canonical_key(raw) == canon


def test_matchms_conversions_covered():
    """Every matchms synonym that targets one of our canonical keys maps to it here too."""
    import csv
    from pathlib import Path

    matchms = pytest.importorskip("matchms")
    path = Path(matchms.__file__).parent / "data" / "known_key_conversions.csv"
    target = {"adduct": "adduct", "charge": "charge", "collision_energy": "collision_energy",
              "formula": "formula", "fragmentation_mode": "fragmentation_mode", "inchikey": "inchikey",
              "instrument": "instrument", "instrument_type": "instrument_type", "ionmode": "ion_mode",
              "compound_name": "name", "precursor_mz": "precursor_mz", "smiles": "smiles",
              "spectrum_id": "id", "inchi": "inchi", "ms_level": "ms_level"}
    with open(path, encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        want = target.get(row["matchms_default"])
        if want:
            assert meta.canonical_key(row["known_synonym"]) == want, row


@pytest.mark.parametrize("value, expected", [
    ("1+", (1, True)), ("2-", (-2, True)), ("+1", (1, True)), ("-3", (-3, True)), ("1", (1, False)),
    (" 2 ", (2, False)), ("2+ and 3+", (2, True)), ("0", (0, False)), ("abc", (0, False)), (None, (0, False)),
    (-1, (-1, True)), (2.0, (2, True)), (1000, (0, False)), ("999+", (0, False)),
])
def test_parse_charge(value, expected):
    assert meta.parse_charge(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("P", "positive"), ("N", "negative"), ("Positive", "positive"), ("NEGATIVE", "negative"),
    ("pos", "positive"), ("neg", "negative"), ("+", "positive"), ("-", "negative"), ("", None),
    ("x", None), (None, None), ("ESI+", "positive"), ("ESI(-)", "negative"), ("esi -", "negative"),
    ("ESI", None), ("ESI (-)", "negative"), ("ESI ( + )", "positive"),
])
def test_parse_ion_mode(value, expected):
    assert meta.parse_ion_mode(value) == expected


@pytest.mark.parametrize("adduct, charge", [
    ("[M+H]+", 1), ("[M-H]-", -1), ("[M+2H]2+", 2), ("[M-2H]2-", -2), ("[M+Na]+", 1), ("M+H", 0), (None, 0),
    ("[M]+*", 1), ("[M+2H]++", 2), ("[M-H]-1", -1), ("[M]+\u2022", 1), ("[M+H]+ [M+Na]+", 1), ("[M+H]", 0),
])
def test_charge_from_adduct(adduct, charge):
    assert meta.charge_from_adduct(adduct) == charge


@pytest.mark.parametrize("adduct, expected", [
    ("M+H", (1, False)), ("M-H", (-1, False)), ("M+FA-H", (-1, False)), ("[M+H-H2O]", (1, False)),
    ("[M+2H]++", (2, True)), ("[M-H]-/[M-Ser]-", (-1, True)), ("M", (0, False)), ("ESI", (0, False)), (None, (0, False)),
])
def test_adduct_charge_reads_any_adduct_notation(adduct, expected):
    assert meta.adduct_charge(adduct) == expected


def test_inchikey14():
    assert meta.inchikey14_of("GVGYEFKIHJTNQZ-RFQIPJPRSA-N") == "GVGYEFKIHJTNQZ"
    assert meta.inchikey14_of("gvgyefkihjtnqz") == "GVGYEFKIHJTNQZ"
    assert meta.inchikey14_of("not a key") is None
    assert meta.inchikey14_of("InChIKey=GVGYEFKIHJTNQZ-RFQIPJPRSA-N") == "GVGYEFKIHJTNQZ"  # as some files write it


def test_inchikey_prefix_and_sodium():
    """A value written "InChIKey=..." loses the prefix (its first block is derived); "Na" (sodium) is a formula
    and a name, not the missing marker "NA" / "na". Found by an audit of other labs' exports."""
    t = pa.table({"inchikey": ["InChIKey=GVGYEFKIHJTNQZ-RFQIPJPRSA-N", "inchikey = gvgyefkihjtnqz-rfqipjprsa-n", None],
                  "formula": ["Na", "NA", "na"], "name": ["Na", "N/A", " na "]})
    h = meta.harmonise_table(t)
    assert h.column("inchikey").to_pylist() == ["GVGYEFKIHJTNQZ-RFQIPJPRSA-N"] * 2 + [None]
    assert h.column("inchikey14").to_pylist() == ["GVGYEFKIHJTNQZ"] * 2 + [None]
    assert h.column("formula").to_pylist() == ["Na", None, None]
    assert h.column("name").to_pylist() == ["Na", None, None]
    from fastspec.fingerprints import first_block  # in-memory metadata reaches the lab's molecule keys as given

    assert [first_block(k) for k in ("InChIKey=GVGYEFKIHJTNQZ-RFQIPJPRSA-N", "INCHIKEYABCDEF-UHFFFAOYSA-N")] == [
        "GVGYEFKIHJTNQZ", "INCHIKEYABCDEF"]


def test_harmonise_record():
    h = meta.harmonise({"PEPMASS": "301.1 5000", "CHARGE": "1", "Ion_mode": "N", "InChIKey": "gvgyefkihjtnqz-rfqipjprsa-n",
                        "Num Peaks": "3", "Precursor_type": "[M-H]-", "My Key": "x", "SMILES": "N/A"})
    assert h["precursor_mz"] == 301.1 and h["precursor_intensity"] == 5000.0
    assert h["charge"] == -1 and h["ion_mode"] == "negative"
    assert h["inchikey"] == "GVGYEFKIHJTNQZ-RFQIPJPRSA-N" and h["inchikey14"] == "GVGYEFKIHJTNQZ"
    assert h["adduct"] == "[M-H]-" and h["my_key"] == "x" and h["smiles"] is None
    assert list(h)[: len(CANONICAL_KEYS)] == list(CANONICAL_KEYS)


def test_sign_is_a_polarity_not_a_missing_value():
    t = pa.table({"polarity": ["-", "+", " - ", "n/a"], "smiles": ["-", "CCO", "?", "C"]})
    h = meta.harmonise_table(t)
    assert h.column("ion_mode").to_pylist() == ["negative", "positive", "negative", None]
    assert h.column("smiles").to_pylist() == [None, "CCO", None, "C"]


def test_precedence_and_bad_precursor():
    counts = {}
    t = pa.table({"pepmass": ["100.5", "abc", None, "-3"], "precursor_mz": [None, None, "200.25", None]})
    h = meta.harmonise_table(t, counts=counts)
    assert h.column("precursor_mz").to_pylist() == [100.5, None, 200.25, None]
    assert counts == {"bad precursor_mz": 2}
    assert "pepmass" not in h.column_names  # merged alias columns are dropped in text mode


def test_typed_tables_keep_alias_columns():
    t = pa.table({"adduct": ["[M+H]+"], "precursor_type": ["M+H"], "charge": pa.array([1], pa.int8())})
    h = meta.harmonise_table(t, text=False)
    assert h.column("adduct").to_pylist() == ["[M+H]+"]
    assert h.column("precursor_type").to_pylist() == ["M+H"]
    t2 = pa.table({"precursor_type": ["[M-H]-"]})
    h2 = meta.harmonise_table(t2, text=False)
    assert "precursor_type" not in h2.column_names and h2.column("adduct").to_pylist() == ["[M-H]-"]
    assert h2.column("charge").to_pylist() == [-1]


def test_id_falls_back_to_title():
    h = meta.harmonise_table(pa.table({"title": ["scan 1", "scan 2"], "spectrumid": ["A", None]}))
    assert h.column("id").to_pylist() == ["A", "scan 2"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12),
                       st.one_of(st.none(), st.text(max_size=20), st.integers(-300, 300), st.floats(allow_nan=True)),
                       max_size=8))
def test_harmonise_never_crashes(record):
    h = meta.harmonise(record)
    assert set(CANONICAL_KEYS) <= set(h)
    assert h["charge"] is None or -127 <= h["charge"] <= 127
    p = h["precursor_mz"]
    assert p is None or (math.isfinite(p) and p > 0)
    assert h["ion_mode"] in (None, "positive", "negative")


@pytest.mark.parametrize("name,adduct,want", [
    ("Hoiamide B M+H", None, "[M+H]+"),
    ("Tryptophan [M-H]-", None, "[M-H]-"),
    ("Leucine 2M+Na", None, "[2M+Na]+"),
    ("Proline M-H2O+H", None, "[M+H-H2O]+"),
    ("Caffeine M+H", "[M+Na]+", "[M+Na]+"),  # a written adduct wins
    ("M-Cresol", None, None),  # a word that only starts like an adduct
    ("Vitamin M", None, None),
    ("Spectral Match to Caffeine from NIST14", None, None),
    ("Acid M+Xx", None, None),  # not a formula
    (None, None, None),
])
def test_adduct_from_the_names_last_word(name, adduct, want):
    table = pa.table({"name": pa.array([name], pa.string()), "precursor_type": pa.array([adduct], pa.string())})
    counts: dict = {}
    out = meta.harmonise_table(table, counts=counts)
    assert out.column("adduct").to_pylist() == [want]
    assert counts.get("adduct from name", 0) == (1 if want is not None and adduct is None else 0)


@pytest.mark.parametrize("values,want,bad", [
    (("0", "195.08"), 195.08, 0),  # an unusable higher-priority alias does not hide a good PEPMASS
    (("180.06", "195.08"), 180.06, 0),  # both usable: priority order
    (("abc", None), math.nan, 1),  # given, none usable: NaN, counted
    ((None, "-5"), math.nan, 1),
    ((None, None), None, 0),
])
def test_precursor_from_the_first_usable_alias(values, want, bad):
    table = pa.table({"precursor_mz": pa.array([values[0]], pa.string()), "pepmass": pa.array([values[1]], pa.string())})
    counts: dict = {}
    got = meta.harmonise_table(table, counts=counts).column("precursor_mz").to_pylist()[0]
    if want is None or (isinstance(want, float) and math.isnan(want)):
        assert got is None
    else:
        assert got == want
    assert counts.get("bad precursor_mz", 0) == bad


def test_gnps_computed_keys_fill_only_what_is_missing(tmp_path):
    """``Formula_smiles`` / ``InChIKey_inchi`` ... fill formula and InChIKey where a record has none in any
    form: an MSP ``Synon: $:28`` InChIKey or a ``Comments`` formula wins; ``N/A`` is missing in typed tables
    too; the keys stay under their own names."""
    import pyarrow.parquet as pq

    import fastspec.io as fio

    msp = tmp_path / "a.msp"
    msp.write_text("Name: A\nSynon: $:28WQZGKKKJIJFFOK-GASJEMHNSA-N\nInChIKey_smiles: BSYNRYMUTXBXSQ-UHFFFAOYSA-N\n"
                   'Comments: "formula=C6H12O6"\nFormula_smiles: C9H8O4\nPrecursorMZ: 181.07\nNum Peaks: 1\n100 1\n\n'
                   "Name: B\nInChIKey_smiles: BSYNRYMUTXBXSQ-UHFFFAOYSA-N\nFormula_smiles: C9H8O4\nPrecursorMZ: 181.07\n"
                   "Num Peaks: 1\n100 1\n")
    s = fio.read(msp)
    assert s.column("inchikey") == ["WQZGKKKJIJFFOK-GASJEMHNSA-N", "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"]
    assert s.column("formula") == ["C6H12O6", "C9H8O4"] and s.column("formula_smiles") == ["C9H8O4"] * 2
    pq.write_table(pa.table({"mz": [[100.0]] * 2, "intensity": [[1.0]] * 2, "formula_smiles": ["N/A", "C9H8O4"],
                             "formula_inchi": ["C5H6O5", None], "inchikey_inchi": ["BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "n/a"]}),
                   tmp_path / "b.parquet")
    s = fio.read(tmp_path / "b.parquet")
    assert s.column("formula") == ["C5H6O5", "C9H8O4"] and s.column("inchikey") == ["BSYNRYMUTXBXSQ-UHFFFAOYSA-N", None]


def test_value_patterned_keys():
    """INCHIAUX fills `inchikey` only with an InChIKey, Spectrum_type / SPECTRUMTYPE give `ms_level` only an MS
    level (MS-DIAL's Centroid stays `spectrumtype`), and a -1 id gives way to any other id source."""
    t = pa.table({"inchiaux": ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", "AuxInfo=1/1/N:1", "ujnsfdhvibgejz-cmribgntsa-n", None],
                  "spectrumtype": ["MS2", "Centroid", " 2 ", None],
                  "feature_id": ["-1", "-1", "7", "-1"], "title": [None, "t", None, None],
                  "scan_id": [None, None, None, "5"]})
    h = meta.harmonise_table(t)
    assert h.column("inchikey").to_pylist() == ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", None, None, None]
    assert h.column("inchiaux").to_pylist() == t.column("inchiaux").to_pylist()
    assert h.column("ms_level").to_pylist() == ["MS2", None, "2", None]
    assert h.column("spectrumtype").to_pylist() == [None, "Centroid", None, None]
    assert h.column("id").to_pylist() == ["-1", "t", "7", "5"]
    assert meta.harmonise({"Spectrum_type": "MSn"})["ms_level"] == "MSn"
    # MassSpecGym's MGF spells it INCHI_AUX
    t2 = pa.table({"inchi_aux": ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", "AuxInfo=1/1/N:1"]})
    assert meta.harmonise_table(t2).column("inchikey").to_pylist() == ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", None]
    assert "ms_level" not in meta.harmonise({"SpectrumType": "Profile"})


def test_huge_integer_charge_and_precursor_do_not_raise():
    """Integers beyond 2**53 in a typed table (a garbage column in a Parquet file or a pandas frame) are read
    without an ArrowInvalid from a safe float cast: an out-of-range charge is unknown (0), a precursor m/z
    the nearest float."""
    t = pa.table({"charge": pa.array([2 ** 60, -2 ** 63, 2], pa.int64()),
                  "precursor_mz": pa.array([2 ** 60, 300, 2 ** 62 + 1], pa.int64())})
    h = meta.harmonise_table(t, text=False)
    assert [v or 0 for v in h["charge"].to_pylist()] == [0, 0, 2]
    assert h["precursor_mz"].to_pylist() == [float(2 ** 60), 300.0, float(2 ** 62)]
    u = meta.harmonise_table(pa.table({"charge": pa.array([2 ** 64 - 1, 1], pa.uint64())}), text=False)
    assert [v or 0 for v in u["charge"].to_pylist()] == [0, 1]


_MARKER_PIECES = ["", " ", "\t", "\n", "\x1c", "N", "A", "a", "n", "/", "-", "?", "null", "NULL", "None", "nan", "NaN",
                  "Na", "nA", "unknown", "nil", "x", "İ", "K", "é", "\u00a0", "\u2003"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.sampled_from(_MARKER_PIECES), max_size=4).map("".join)),
                min_size=1, max_size=meta._FEW_VALUES), st.booleans())
def test_trim_missing_of_few_values_as_of_many(values, signs):
    """Up to _FEW_VALUES values are trimmed and judged in Python (a matchms Spectrum's metadata searched one
    per call), more with Arrow kernels: the same values come out (Arrow lower-cases 'İ' to 'i': non-ASCII
    values go to Arrow either way)."""
    few = meta._trim_missing(pa.array(values, pa.string()), signs).to_pylist()
    many = meta._trim_missing(pa.array(values * (meta._FEW_VALUES + 1), pa.string()), signs).to_pylist()
    assert few == many[:len(values)]
    chunked = meta._trim_missing(pa.chunked_array([pa.array(values, pa.string())]), signs)
    assert isinstance(chunked, pa.ChunkedArray) and chunked.to_pylist() == few
