"""Native MassBank record files (``MSBNK-...txt``): fields, sniffing, gzip, several files, bad records,
block boundaries, the round trip through MGF and ``fastspec index``."""
from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_fuzz_io import check_read, mutate

import fastspec.io as fio
from fastspec.cli import main
from fastspec.errors import ParseError
from fastspec.io import _textscan as ts
from fastspec.io import massbank
from fastspec.spectra import Spectra

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "massbank_record.txt"

MINIMAL = ("ACCESSION: MSBNK-Test-TS000001\nRECORD_TITLE: x\nCH$NAME: Caffeine\n"
           "MS$FOCUSED_ION: PRECURSOR_M/Z 195.0877\nPK$NUM_PEAK: 2\nPK$PEAK: m/z int. rel.int.\n"
           "  110.0713 200 201\n  138.066 999 999\n//\n")


def record(acc: str, peaks: str, num_peak: int | None = None, extra: str = "") -> str:
    n = "" if num_peak is None else f"PK$NUM_PEAK: {num_peak}\n"
    return (f"ACCESSION: {acc}\nCH$NAME: {acc.lower()}\n{extra}MS$FOCUSED_ION: PRECURSOR_M/Z 300.1\n"
            f"{n}PK$PEAK: m/z int. rel.int.\n{peaks}//\n")


def peaks(s: Spectra, i: int) -> tuple[list, list]:
    a, b = s.offsets[i], s.offsets[i + 1]
    return s.mz[a:b].tolist(), s.intensity[a:b].tolist()


def test_fixture_fields():
    s, r = fio.read(FIXTURE, return_report=True)
    r.check()
    assert r.format == "massbank" and (r.n_records, r.n_spectra, r.n_rejected) == (3, 3, 0)
    assert r.warnings == {}
    md = s.metadata
    col = lambda k: md.column(k).to_pylist()  # noqa: E731
    assert s.ids == ["MSBNK-Fastspec_Test-FT000101", "MSBNK-Fastspec_Test-FT000102", "MSBNK-Fastspec_Test-FT000103"]
    # PK$ANNOTATION lines (110.0713 ... 195.0877 with formulas) are not peaks; rel.int. is not read
    assert peaks(s, 0) == ([83.0604, 110.0713, 138.0662, 195.0877], [1520.5, 25310.0, 125800.0, 40210.25])
    assert peaks(s, 1)[0] == [87.0088, 111.0088, 129.0193, 173.0092, 191.0197]
    assert s.precursor_mz.tolist() == [195.0877, 191.0197, 205.0972]
    assert s.charge.tolist() == [1, -1, 1]
    assert col("ion_mode") == ["positive", "negative", "positive"]
    assert col("adduct") == ["[M+H]+", "[M-H]-", "[M+H]+"]
    assert col("formula") == ["C8H10N4O2", "C6H8O7", "C11H12N2O2"]
    assert col("inchikey") == ["RYYVLZVUVIJVGH-UHFFFAOYSA-N", "KRKNYBCHXYNGOX-UHFFFAOYSA-N",
                               "QIVBCDIJIAJPQS-VIFPVBQESA-N"]
    assert col("inchikey14")[0] == "RYYVLZVUVIJVGH"
    assert col("name") == ["Caffeine", "Citric acid", "L-Tryptophan"]
    assert col("synonyms") == [["1,3,7-Trimethylxanthine", "1,3,7-trimethyl-3,7-dihydro-1H-purine-2,6-dione"],
                               ["2-Hydroxypropane-1,2,3-tricarboxylic acid"], None]
    assert col("collision_energy") == ["20 eV", "10 eV", "35 % (nominal)"]
    assert col("fragmentation_mode") == ["CID", "HCD", None]  # N/A is missing
    assert col("instrument_type") == ["LC-ESI-QTOF", "LC-ESI-QFT", "LC-ESI-ITFT"]
    assert col("instrument")[1] == "Q Exactive Plus, Thermo Scientific"
    assert col("smiles")[0] == "CN1C=NC2=C1C(=O)N(C)C(=O)N2C"
    assert col("inchi")[0] == "InChI=1S/C8H10N4O2/c1-10-4-9-6-5(10)7(13)12(3)8(14)11(6)2/h4H,1-3H3"
    assert col("exact_mass") == ["194.08038", "192.02700", "204.08988"]
    assert col("ms_level") == ["MS2"] * 3
    assert col("title")[1] == "Citric acid; LC-ESI-QFT; MS2; CE: 10 eV; [M-H]-"
    assert col("splash")[0].startswith("splash10-0002")
    assert col("ch_link_cas")[0] == "58-08-2"
    # iterative tags are joined; a line starting with two blanks continues the value
    assert col("ac_chromatography_solvent")[0] == "A water with 0.1% formic acid; B acetonitrile with 0.1% formic acid"
    assert col("comment")[0].endswith("MassBank-web; CONFIDENCE standard compound")  # '//' inside a URL
    assert col("comment")[2] == ("a comment written over two lines, the second one indented by two blanks "
                                 "as the record format allows")
    assert "pk_num_peak" not in md.column_names and "pk_annotation" not in md.column_names


def test_gzip_copy(tmp_path):
    gz = tmp_path / "MSBNK-records.txt.gz"
    gz.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    a, b = fio.read(FIXTURE), fio.read(gz)
    assert np.array_equal(a.mz, b.mz) and np.array_equal(a.intensity, b.intensity)
    assert a.metadata.equals(b.metadata)
    assert fio.detect_format(str(gz)) == "massbank"


def test_sniffed_and_explicit_format(tmp_path):
    p = tmp_path / "MSBNK-Fastspec_Test-FT000101.txt"
    shutil.copy(FIXTURE, p)
    assert fio.detect_format(str(p)) == "massbank"
    assert fio.detect_format("anything.dat", "massbank") == "massbank"
    assert fio.detect_format(str(p), "MassBank") == "massbank"
    assert len(fio.read(p)) == 3 and len(fio.read(p, format="massbank")) == 3
    # only CH$NAME / PK$PEAK in the first bytes (no ACCESSION first) still sniffs as MassBank, not MSP
    q = tmp_path / "noaccession"
    q.write_text("RECORD_TITLE: x\nCH$NAME: Caffeine\nPK$PEAK: m/z int. rel.int.\n  138.066 100 999\n//\n")
    assert fio.detect_format(str(q)) == "massbank"
    assert fio.read(q).column("name") == ["Caffeine"]


def test_minimal_record_reads(tmp_path):
    """A bare record (was refused before MassBank records were read)."""
    p = tmp_path / "MSBNK-X.txt"
    p.write_text(MINIMAL)
    s, r = fio.read(p, return_report=True)
    assert (r.n_records, r.n_spectra) == (1, 1) and r.warnings == {}
    assert s.ids == ["MSBNK-Test-TS000001"] and s.precursor_mz.tolist() == [195.0877]
    assert peaks(s, 0) == ([110.0713, 138.066], [200.0, 999.0])


def test_directory_of_record_files(tmp_path):
    """MassBank-data layout: one record per file, the files passed as a list."""
    texts = [t + "//\n" for t in FIXTURE.read_text().split("//\n") if t.strip()]
    assert len(texts) == 3
    folder = tmp_path / "Fastspec_Test"
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f"MSBNK-Fastspec_Test-FT00010{i + 1}.txt").write_text(t)
    files = sorted(folder.glob("MSBNK-*.txt"))
    s, r = fio.read(files, return_report=True)
    whole = fio.read(FIXTURE)
    assert r.format == "massbank" and len(r.files) == 3 and r.n_spectra == 3
    assert s.ids == whole.ids and np.array_equal(s.mz, whole.mz)
    assert [f.rejected for f in r.files] == [[], [], []]


BAD = (record("MSBNK-T-1", "  100 10 10\n  150 20 20\n", 2)             # line 1, good
       + record("MSBNK-T-2", "  100 10 10\n  100 abc 5\n", 2)           # bad peak on line 15
       + record("MSBNK-T-3", "  100\n", 1)                               # single value, line 22
       + "ACCESSION: MSBNK-T-4\nCH$NAME: no peaks\nPK$NUM_PEAK: 0\n//\n"  # line 24: no PK$PEAK
       + record("MSBNK-T-5", "  100 -5 1\n")                              # line 28, negative intensity
       + record("MSBNK-T-6", "  42,0338 12,5 999\n")                      # decimal commas, line 38
       + record("MSBNK-T-7", "  100 10 10\n  120 0 0\n  90 5 5\n", 3))   # zero dropped, sorted


def test_bad_records_skip_and_raise(tmp_path):
    p = tmp_path / "MSBNK-bad.txt"
    p.write_text(BAD)
    s, r = fio.read(p, return_report=True)
    r.check()
    assert s.ids == ["MSBNK-T-1", "MSBNK-T-7"]
    assert [(x.line, x.reason) for x in r.rejected] == [
        (15, "unparsable peak line"), (22, "peak line with a single value"), (24, "no peaks"),
        (28, "negative intensity"), (38, ts.ERROR_REASONS[ts.E_DECIMAL_COMMA]),
    ]
    assert all(x.path == str(p) for x in r.rejected)
    assert r.n_zero_intensity == 1 and r.n_fixed_unsorted == 1
    assert peaks(s, 1) == ([90.0, 100.0, 120.0], [5.0, 10.0, 0.0])
    assert r.warnings == {}  # PK$NUM_PEAK counts the peaks as written, the zero-intensity one included
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert e.value.path == str(p) and e.value.line == 15
    assert f"{p}:15" in str(e.value)


def test_na_peak_block_is_no_peaks(tmp_path):
    """Merged records write "PK$NUM_PEAK: N/A" and "  N/A" under PK$PEAK (a MassBank-web test record): that is
    a record without peaks, not a peak line with a single value (an audit)."""
    p = tmp_path / "MSBNK-na.txt"
    p.write_text(record("MSBNK-T-NA", "  N/A\n").replace("PK$PEAK:", "PK$NUM_PEAK: N/A\nPK$PEAK:")
                 + record("MSBNK-T-OK", "  100 10 999\n"))
    s, r = fio.read(p, return_report=True)
    assert s.ids == ["MSBNK-T-OK"] and r.counts_by_reason == {"no peaks": 1}


def test_num_peak_mismatch_is_a_warning(tmp_path):
    p = tmp_path / "MSBNK-n.txt"
    p.write_text(record("MSBNK-N-1", "  100 10 1\n  150 20 2\n  160 30 3\n", 5)
                 + record("MSBNK-N-2", "  100 10 1\n", 1)
                 + record("MSBNK-N-3", "  100 10 1\n", "many"))  # unparsable count: not checked
    s, r = fio.read(p, return_report=True)
    assert len(s) == 3 and np.diff(s.offsets).tolist() == [3, 1, 1]
    assert r.warnings == {"num_peaks mismatch": 1} and r.n_rejected == 0


def test_layout_variants(tmp_path):
    """No '//' at the end, CRLF, peaks without rel.int., tabs, junk after the last record."""
    text = (record("MSBNK-V-1", "  100 10\n\t150\t20\t2\n") + "ACCESSION: MSBNK-V-2\nPK$PEAK: m/z int. rel.int.\n"
            "  200 5 999\n")
    p = tmp_path / "v.txt"
    p.write_text(text)
    s, r = fio.read(p, return_report=True)
    assert s.ids == ["MSBNK-V-1", "MSBNK-V-2"] and r.warnings == {}
    assert peaks(s, 0) == ([100.0, 150.0], [10.0, 20.0]) and peaks(s, 1) == ([200.0], [5.0])
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(FIXTURE.read_bytes().replace(b"\n", b"\r\n"))
    a, b = fio.read(FIXTURE), fio.read(crlf)
    assert np.array_equal(a.mz, b.mz) and a.metadata.equals(b.metadata)
    junk = tmp_path / "junk.txt"
    junk.write_text(MINIMAL + "\n\nsome trailing words\n")
    s, r = fio.read(junk, return_report=True)
    assert len(s) == 1 and r.n_records == 1 and r.warnings == {"lines outside records": 1}


def test_small_blocks_and_chunks_give_the_same_result(tmp_path):
    p = tmp_path / "many.txt"
    p.write_text(FIXTURE.read_text() * 3 + BAD)
    whole, r1 = fio.read(p, return_report=True)
    r2 = fio.ReadReport()
    parts = list(massbank.iter_spectra(str(p), on_error="skip", report=r2, chunk_size=4, block_bytes=64))
    r2.check()
    assert len(parts) == 4  # 16 records, 4 at a time (rejected records leave their chunk shorter)
    cat = Spectra.concat(parts)
    assert cat.ids == whole.ids and np.array_equal(cat.mz, whole.mz)
    assert [(x.line, x.reason) for x in r1.rejected] == [(x.line, x.reason) for x in r2.rejected]
    assert r1.warnings == r2.warnings
    chunks = list(fio.iter_read(p, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 1] and Spectra.concat(chunks).ids == whole.ids


def test_round_trip_through_mgf(tmp_path):
    s = fio.read(FIXTURE)
    out = tmp_path / "records.mgf"
    fio.write(s, out)
    back = fio.read(out)
    assert np.array_equal(s.offsets, back.offsets) and np.array_equal(s.mz, back.mz)
    assert np.array_equal(s.intensity, back.intensity)
    assert np.array_equal(s.precursor_mz, back.precursor_mz) and np.array_equal(s.charge, back.charge)
    for k in ("id", "name", "adduct", "ion_mode", "formula", "inchikey", "collision_energy"):
        assert back.column(k) == s.column(k), k


def test_cli_index(tmp_path):
    out = tmp_path / "lib.fastspec"
    res = CliRunner().invoke(main, ["index", str(FIXTURE), "-o", str(out), "--no-faiss", "--threads", "1"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "indexed 3 spectra (0 rejected)" in res.output


def test_mutated_records_never_crash(tmp_path):
    """Fuzzing as for MGF/MSP: spectra or a FastspecError, and a report that adds up."""
    rng = random.Random(99)
    seeds = [FIXTURE.read_bytes(), BAD.encode(), MINIMAL.encode()]
    for case in range(80):
        path = tmp_path / f"case{case}.txt"
        path.write_bytes(mutate(rng.choice(seeds), rng))
        check_read(path, "massbank")
