"""Metadata key names: non-ASCII and punctuation-only keys are kept in every format, the MGF and MSP writers
write every column under a key that reads back as the column's snake_case form, and canonical keys are
recognised as before."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest

import fastspec.io as fio
from fastspec.io import meta
from fastspec.spectra import CANONICAL_KEYS, Spectra

WRITABLE = ["mgf", "msp", "tsv", "parquet", "h5"]

# non-ASCII keys, with a plain "key" next to "é_key" (they were merged into one column, one value lost)
UNICODE_KEYS = {"名前": "kept", "é_key": "x", "key": "y", "ÉTAT": "z", "Straße": "s", "नाम": "n",
                "Flow (µL/min)": "0.3"}
UNICODE_SNAKE = {"名前": "名前", "é_key": "é_key", "key": "key", "ÉTAT": "état", "Straße": "straße", "नाम": "नाम",
                 "Flow (µL/min)": "flow_µl_min"}


def _one_spectrum(columns: dict[str, str]) -> Spectra:
    md = pa.table({"id": ["r0"], **{k: [v] for k, v in columns.items()}})
    return Spectra.from_arrays([np.array([100.0, 150.0])], [np.array([1.0, 2.0], np.float32)], precursor_mz=[300.0],
                               metadata=md)


def _values(sp: Spectra) -> dict:
    """The first spectrum's metadata, missing values left out."""
    return {k: v for k, v in sp.metadata.to_pylist()[0].items() if v is not None}


@pytest.mark.parametrize("raw, snake", [
    *UNICODE_SNAKE.items(),
    ("e\u0301tat", "état"),  # decomposed: the same name as the composed spelling
    ("Ünïcode Kéy", "ünïcode_kéy"), ("ΟΔΟΣ", "οδος"), ("x²", "x²"), ("\ufeffkey", "key"), ("a\u00a0b", "a_b"),
    # no letter or digit: the Unicode names of the characters
    ("#", "number_sign"), ("%", "percent_sign"), ("!!!", "exclamation_mark_exclamation_mark_exclamation_mark"),
    ("_", "low_line"), ("- -", "hyphen_minus_hyphen_minus"), ("\x7f", "u007f"), (" ? ", "question_mark"),
    ("", ""), ("  ", ""),  # blank: no name (dropped, as before)
])
def test_snake_keeps_letters_of_any_script(raw, snake):
    assert meta.snake(raw) == snake
    assert meta.snake(snake) == snake  # a snake name is its own (writers rely on it)


def test_ascii_keys_and_aliases_are_named_as_before():
    """The ASCII rule is unchanged: every alias, and keys of letters, digits and punctuation, get the snake
    form they always had, so the alias lookup of canonical keys is the same."""
    def old(key):
        return re.sub(r"[^0-9a-z]+", "_", key.strip().lower()).strip("_")

    aliases = [a for groups in (meta.ALIASES, meta.EXTRA_ALIASES) for canon, al in groups.items() for a in (canon, *al)]
    assert all(a.isascii() for a in aliases)
    for key in aliases + ["Num Peaks", "Some Other-Key", "RTINSECONDS", "2nd_ce", "%RSD", "m/z", "a__b--c"]:
        assert meta.snake(key) == old(key), key
    assert meta.snake.cache_info().maxsize and meta.key_info.cache_info().maxsize  # both cached


@pytest.mark.parametrize("raw, canon", [
    ("PRECURSOR_MZ", "precursor_mz"), ("Ion_Mode", "ion_mode"), ("InChIKey", "inchikey"), ("PEPMASS", "precursor_mz"),
    ("Precursor_type", "adduct"), ("DB#", "id"), ("selected ion m/z", "precursor_mz"),
    ("Collision energy", "collision_energy"),
    ("ac$mass_spectrometry:ion_mode", "ion_mode"), ("\ufeffTITLE", "title"),
])
def test_canonical_keys_are_recognised(raw, canon):
    assert meta.canonical_key(raw) == canon


def test_canonical_keys_in_files_are_recognised(tmp_path):
    (tmp_path / "a.mgf").write_text("BEGIN IONS\nTITLE=t\nPRECURSOR_MZ=301.5\nIon_Mode=negative\n"
                                    "InChIKey=BSYNRYMUTXBXSQ-UHFFFAOYSA-N\n50 1\nEND IONS\n", encoding="utf-8")
    (tmp_path / "a.msp").write_text("Name: t\nPRECURSOR_MZ: 301.5\nIon_Mode: N\nInChIKey: BSYNRYMUTXBXSQ-UHFFFAOYSA-N\n"
                                    "Num Peaks: 1\n50 1\n\n", encoding="utf-8")
    for ext in ("mgf", "msp"):
        sp = fio.read(tmp_path / f"a.{ext}")
        assert sp.precursor_mz.tolist() == [301.5] and sp.column("ion_mode") == ["negative"]
        assert sp.column("inchikey") == ["BSYNRYMUTXBXSQ-UHFFFAOYSA-N"]
        assert sp.column("inchikey14") == ["BSYNRYMUTXBXSQ"]


# ---------------------------------------------------------------------------- reading hand-made files
def test_non_ascii_keys_in_text_files(tmp_path):
    (tmp_path / "a.mgf").write_text("BEGIN IONS\nTITLE=a\n名前=kept\nÉTAT=z\né_key=x\nKEY=y\n%=5\n50 1\nEND IONS\n",
                                    encoding="utf-8")
    (tmp_path / "a.msp").write_text("Name: a\n名前: kept\nÉTAT: z\né_key: x\nkey: y\n%: 5\nNum Peaks: 1\n50 1\n\n",
                                    encoding="utf-8")
    (tmp_path / "a.tsv").write_text("id\tmz\tintensity\t名前\tÉTAT\té_key\tkey\t%\na\t[50.0]\t[1.0]\tkept\tz\tx\ty\t5\n",
                                    encoding="utf-8")
    for ext in ("mgf", "msp", "tsv"):
        got = _values(fio.read(tmp_path / f"a.{ext}"))
        want = ("kept", "z", "x", "y", "5")
        assert (got["名前"], got["état"], got["é_key"], got["key"], got["percent_sign"]) == want, ext


def test_non_ascii_keys_in_typed_tables(tmp_path):
    import h5py
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "mz": [[50.0]], "intensity": [[1.0]],
                             **{k: [v] for k, v in UNICODE_KEYS.items()}, "!!!": ["p"]}), tmp_path / "k.parquet")
    fio.write(_one_spectrum({**UNICODE_KEYS, "!!!": "p"}), tmp_path / "k.h5")
    with h5py.File(tmp_path / "k.h5") as f:  # the file holds the raw names; reading names them
        assert "名前" in json.loads(f["metadata"].attrs["columns"])
    for ext in ("parquet", "h5"):
        got = _values(fio.read(tmp_path / f"k.{ext}"))
        assert {UNICODE_SNAKE[k]: got[UNICODE_SNAKE[k]] for k in UNICODE_KEYS} == \
            {UNICODE_SNAKE[k]: v for k, v in UNICODE_KEYS.items()}, ext
        assert got["exclamation_mark_exclamation_mark_exclamation_mark"] == "p"


def test_harmonise_keeps_non_ascii_and_punctuation_keys():
    got = meta.harmonise({"名前": "a", "é_key": "b", "key": "c", "#": "d", "": "dropped", "PRECURSOR_MZ": "200.5"})
    assert (got["名前"], got["é_key"], got["key"], got["number_sign"]) == ("a", "b", "c", "d")
    assert got["precursor_mz"] == 200.5 and "" not in got


# ---------------------------------------------------------------------------- write -> read
@pytest.mark.parametrize("ext", WRITABLE)
def test_non_ascii_and_punctuation_keys_round_trip(tmp_path, ext):
    cols = {**UNICODE_KEYS, "!!!": "p", "#": "h", "%": "pc", "=": "eq", ":": "co", "_": "u", "-": "m"}
    fio.write(_one_spectrum(cols), tmp_path / f"x.{ext}")
    back, report = fio.read(tmp_path / f"x.{ext}", return_report=True)
    assert report.n_rejected == 0 and back.mz.tolist() == [100.0, 150.0]
    got = _values(back)
    for name, value in cols.items():
        assert got.get(meta.key_info(name)[0]) == value, (ext, name)
    # nothing else: no value under another key, no canonical field filled
    assert set(got) <= {"id", "title", "name", "precursor_mz"} | {meta.key_info(n)[0] for n in cols}


# columns whose names the MGF and MSP writers must escape, each with its own snake form (no two merge)
ESCAPED = {"#note": "A", ";semi": "B", "!bang": "C", "/slash": "D", "SMILES=foo": "E", "eq=key": "F", "co:lon": "G",
           "sp: ace": "H", " lead ": "I", "tab\tkey": "J", "line\nbreak": "K", "cr\r\nkey": "L", "BEGIN IONS": "M",
           "END IONS": "N", "name=x": "O", "2nd_ce": "P", "+1x": "Q", "#": "R", "Straße": "S", "ǅx": "T",
           "nul\x00key": "U", "synon": "$:28BSYNRYMUTXBXSQ-UHFFFAOYSA-N",
           "comments": '"SMILES=CCO" "ion mode=negative"',
           "ch$link": "INCHIKEY: BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "ac$mass_spectrometry": "ION_MODE: negative"}


@pytest.mark.parametrize("ext", ["mgf", "msp", "mgf.gz", "msp.gz"])
def test_written_keys_read_back_under_their_snake_form(tmp_path, ext):
    """From a writer audit: MGF keys starting with a comment marker were written as comment lines (lost); MSP
    keys holding '=' read back as another key ("SMILES=foo: E" as smiles), '#' keys were lost. Every column
    now reads back under its snake form, with its value, and fills no canonical field."""
    fio.write(_one_spectrum(ESCAPED), tmp_path / f"x.{ext}")
    back, report = fio.read(tmp_path / f"x.{ext}", return_report=True)
    assert report.n_rejected == 0 and back.mz.tolist() == [100.0, 150.0] and back.precursor_mz.tolist() == [300.0]
    got = _values(back)
    for name, value in ESCAPED.items():
        assert got.get(meta.key_info(name)[0]) == value, (ext, name)
    assert len({meta.key_info(n)[0] for n in ESCAPED}) == len(ESCAPED)
    for k in CANONICAL_KEYS:
        if k not in ("id", "name", "precursor_mz"):
            assert k not in got, (ext, k)
    assert set(got) <= {"id", "title", "name", "precursor_mz"} | {meta.key_info(n)[0] for n in ESCAPED}


def test_written_key_spellings(tmp_path):
    """The escapes as written: a leading '_' for keys starting like a number or a comment marker (and, in MSP,
    for keys the reader takes apart by name), '_' for separators and line breaks; a key without letters or
    digits under its snake name."""
    fio.write(_one_spectrum(ESCAPED), tmp_path / "x.mgf")
    fio.write(_one_spectrum(ESCAPED), tmp_path / "x.msp")
    mgf = (tmp_path / "x.mgf").read_text(encoding="utf-8").splitlines()
    msp = (tmp_path / "x.msp").read_text(encoding="utf-8").splitlines()
    for line in ("_#NOTE=A", "_;SEMI=B", "_!BANG=C", "_/SLASH=D", "SMILES_FOO=E", "EQ_KEY=F", "CO:LON=G", "LEAD=I",
                 "TAB_KEY=J", "LINE_BREAK=K", "CR_KEY=L", "BEGIN IONS=M", "_2ND_CE=P", "_+1X=Q", "NUMBER_SIGN=R",
                 "Straße=S", "NUL_KEY=U"):
        assert line in mgf, line
    for line in ("_#note: A", ";semi: B", "SMILES_foo: E", "eq_key: F", "co_lon: G", "sp_ ace: H", "lead: I",
                 "tab_key: J", "cr_key: L", "name_x: O", "_2nd_ce: P", "number_sign: R", "Straße: S",
                 "_synon: $:28BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "_ch$link: INCHIKEY: BSYNRYMUTXBXSQ-UHFFFAOYSA-N"):
        assert line in msp, line
    assert not any(line.startswith("#") for line in mgf + msp)


def test_columns_named_like_canonical_keys(tmp_path):
    """A column that harmonises to a canonical key already written is left out, as before; one that
    harmonises to a canonical key not written reads back as that key, escaped or not (``ionmode=`` is an
    ``ion_mode`` column: written ``IONMODE_``)."""
    sp = _one_spectrum({"name": "N", "COMPOUND_NAME": "other", "ionmode=": "negative"})
    for ext in ("mgf", "msp"):
        fio.write(sp, tmp_path / f"x.{ext}")
        back = fio.read(tmp_path / f"x.{ext}")
        assert back.column("name") == ["N"] and back.column("ion_mode") == ["negative"]
        assert "compound_name" not in back.metadata.column_names
