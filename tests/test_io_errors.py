"""Bad records, peak rules, number parsing, format errors and the ``convert`` command."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastspec.io as fio
from fastspec.errors import FastspecError, ParameterError, ParseError
from fastspec.io import _textscan as ts

DATA = Path(__file__).parent / "data"


def mgf(*records: str) -> str:
    return "".join(f"BEGIN IONS\n{r.strip()}\nEND IONS\n\n" for r in records)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = "PEPMASS=200.5\nSPECTRUM_ID=good\n100 10\n150 20"


@pytest.mark.parametrize("body, reason", [
    ("PEPMASS=1\n100 abc", "unparsable peak line"),
    ("PEPMASS=1\n100", "peak line with a single value"),
    ("PEPMASS=1\nrandom words here", "unparsable peak line"),
    ("PEPMASS=1\n100 nan", "non-finite peak value"),
    ("PEPMASS=1\ninf 5", "non-finite peak value"),
    ("PEPMASS=1\n100 1e999", "non-finite peak value"),
    ("PEPMASS=1\n100 1e39", "non-finite peak value"),  # beyond float32
    ("PEPMASS=1\n1e39 5", "non-finite peak value"),  # an m/z too (the index stores float32 m/z)
    ("PEPMASS=1\n100 -5", "negative intensity"),
    ("PEPMASS=1\n0 5", "m/z not positive"),
    ("PEPMASS=1\n-100 5", "m/z not positive"),
    ("PEPMASS=1", "no peaks"),
    ("PEPMASS=1\n100 0\n101 0", "no peaks"),
    # a locale-bound export: read with ',' as a separator these would be other peaks
    ("PEPMASS=195,0877\n42,0338 12,5", "peak line with decimal commas (e.g. 42,0338)"),
    ("PEPMASS=195\n42,0338\t12", "peak line with decimal commas (e.g. 42,0338)"),
    # a spreadsheet export: read with ',' as a separator, 1,000 would be the intensity 1
    ("PEPMASS=195\n100.0 1,000", "peak line with a thousands separator (e.g. 1,000)"),
    ("PEPMASS=1195\n1,034.5 20", "peak line with a thousands separator (e.g. 1,000)"),
])
def test_bad_record_skip_and_raise(tmp_path, body, reason):
    p = write(tmp_path, "bad.mgf", mgf(GOOD, body, GOOD))
    sp, report = fio.read(p, return_report=True)
    assert (report.n_records, report.n_spectra, report.n_rejected) == (3, 2, 1)
    assert report.counts_by_reason == {reason: 1}
    line = report.rejected[0].line
    assert 8 <= line <= 10  # the bad record starts on line 8 (parse errors: the offending line)
    assert sp.ids == ["good", "good"]
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert e.value.path == str(p) and e.value.line == line and reason in str(e.value)
    assert str(e.value).startswith(f"{p}:{line}:")


@pytest.mark.parametrize("ext", ["mgf", "msp", "mgf.gz"])
@pytest.mark.parametrize("bad, reason", [
    ("120 -30", "negative intensity"),
    ("nan nan", "non-finite peak value"),
    ("120 inf", "non-finite peak value"),
    ("120 1e39", "non-finite peak value"),
    ("0 30", "m/z not positive"),
])
def test_a_bad_peak_value_is_named_at_its_line(tmp_path, ext, bad, reason):
    """A record rejected for a peak's value is named at that peak's line, as an unparsable peak line is,
    not where the record starts (an audit: ``neg.mgf:1: negative intensity``); MSP lines of several pairs
    too, and in a file read in blocks."""
    import gzip
    import importlib

    from fastspec.io._common import ReadReport

    if ext == "msp":
        rec = "Name: {0}\nPrecursorMZ: 200\nNum Peaks: {1}\n{2}\n"
        text = "\n".join([rec.format("a", 2, "100 10; 150 20"),
                          rec.format("b", 6, "100 10; 110 20\n" + bad + "; 130 40\n140 50; 150 60"),
                          rec.format("c", 2, "100 10; 150 20")])
    else:
        text = mgf(GOOD, "PEPMASS=200\nSPECTRUM_ID=bad\n100 10\n110 20\n" + bad + "\n130 40", GOOD)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(bad))
    p = tmp_path / f"neg.{ext}"
    p.write_bytes(gzip.compress(text.encode()) if ext.endswith(".gz") else text.encode())
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert str(e.value) == f"{p}:{line}: {reason}"
    sp, report = fio.read(p, return_report=True)
    assert len(sp) == 2 and [(r.line, r.reason) for r in report.rejected] == [(line, reason)]
    # read in small blocks (the record in a later block than the file's first lines)
    reader = importlib.import_module(f"fastspec.io.{ext[:3]}")
    with pytest.raises(ParseError, match=f":{line}: "):
        list(reader.iter_spectra(str(p), on_error="raise", report=ReadReport(), block_bytes=40))


def test_peak_lines_are_looked_up_for_a_files_first_rejections(tmp_path):
    """Finding a peak's line rescans its record, so a file's first PEAK_LINE_LOOKUPS rejections get it and
    later ones their record's first line (a review: all 10,000 listed made a file of rejected 2,000-peak
    records read 5x slower); raising names the peak's line."""
    from fastspec.io._common import PEAK_LINE_LOOKUPS

    n = PEAK_LINE_LOOKUPS + 20
    text = "".join("BEGIN IONS\nPEPMASS=200\n100 1\n110 -1\nEND IONS\n" for _ in range(n))
    p = write(tmp_path, "many.mgf", text)
    _, report = fio.read(p, return_report=True)
    lines = [r.line for r in report.rejected]
    assert lines == [5 * j + 4 for j in range(PEAK_LINE_LOOKUPS)] + [5 * j + 1 for j in range(PEAK_LINE_LOOKUPS, n)]
    with pytest.raises(ParseError, match=r"many.mgf:4: negative intensity"):
        fio.read(p, on_error="raise")


def test_the_peak_a_rule_rejects_names_the_line(tmp_path):
    """Non-finite values win over a negative intensity before them (the rules' order): the line named is
    that of the peak the reason is about; a record without peaks keeps its first line."""
    p = write(tmp_path, "r.mgf", mgf(GOOD, "PEPMASS=2\n100 -1\n110 5\n120 nan", "PEPMASS=3\n100 0"))
    _, report = fio.read(p, return_report=True)
    assert [(r.line, r.reason) for r in report.rejected] == [(12, "non-finite peak value"), (15, "no peaks")]


def test_unterminated_records(tmp_path):
    text = "BEGIN IONS\nPEPMASS=1\n100 1\nBEGIN IONS\nPEPMASS=2\n100 2\nEND IONS\nBEGIN IONS\nPEPMASS=3\n100 3\n"
    sp, report = fio.read(write(tmp_path, "t.mgf", text), return_report=True)
    assert len(sp) == 1 and sp.precursor_mz.tolist() == [2.0]
    assert report.counts_by_reason == {"record not terminated (missing END IONS)": 2}
    assert [r.line for r in report.rejected] == [1, 8]


def test_records_without_begin_ions_are_rejected_not_lost(tmp_path):
    """A record whose BEGIN IONS line is damaged, or whose CR-only line ends join it to the next record's
    BEGIN IONS line, is counted as rejected at its first line (whatever the block size), and raises with
    on_error="raise": before, its lines were only "lines outside records" and the next record was lost too."""
    from fastspec.io import mgf

    lf = "BEGIN IONS\nTITLE={}\nPEPMASS=200\n50 10\n60 20\nEND IONS\n".format
    cr = "BEGIN IONS\rTITLE=cr\rPEPMASS=200\r50 10\r60 20\rEND IONS\r"
    cases = {
        "cr.mgf": (lf("a") + cr + "\n" + lf("b") + cr + lf("c"), ["a", "b"], [7, 14]),
        "typo.mgf": (lf("a") + lf("b").replace("BEGIN IONS", "BEGIN IOMS") + lf("c")
                     + lf("d").replace("BEGIN IONS", "BEGIN\0IONS") + "END IONS\n" + lf("e"), ["a", "c", "e"], [7, 19]),
        "stray_end.mgf": (lf("a") + "END IONS\n" + lf("b"), ["a", "b"], []),  # a doubled END IONS loses nothing
    }
    for name, (text, kept, bad_lines) in cases.items():
        path = tmp_path / name
        path.write_bytes(text.encode())
        s, r = fio.read(path, return_report=True)
        assert s.metadata.column("id").to_pylist() == kept
        assert [x.line for x in r.rejected] == bad_lines and r.n_records == len(kept) + len(bad_lines)
        assert all(x.reason.startswith("record without BEGIN IONS") for x in r.rejected)
        for block in (16, 64, 1 << 20):
            r2 = fio.ReadReport()
            list(mgf.iter_spectra(str(path), on_error="skip", report=r2, block_bytes=block))
            assert [(x.line, x.reason) for x in r2.rejected] == [(x.line, x.reason) for x in r.rejected]
            assert r2.warnings == r.warnings
        if bad_lines:
            with pytest.raises(ParseError, match=f"{name}:{bad_lines[0]}: record without BEGIN IONS"):
                fio.read(path, on_error="raise")


def test_peak_rules(tmp_path):
    text = mgf("SPECTRUM_ID=a\n300 1\n100 5\n200 0\n100 7",  # unsorted, zero, duplicate
               "SPECTRUM_ID=b\nPEPMASS=abc\n50 1",  # unusable precursor -> NaN, kept
               "SPECTRUM_ID=c\n50 1")  # no precursor -> NaN, kept
    sp, report = fio.read(write(tmp_path, "r.mgf", text), return_report=True)
    assert sp.ids == ["a", "b", "c"]
    # the zero-intensity peak kept, as matchms keeps it
    assert sp[0].mz.tolist() == [100.0, 100.0, 200.0, 300.0] and sp[0].intensity.tolist() == [5.0, 7.0, 0.0, 1.0]
    assert report.n_fixed_unsorted == 1 and report.n_zero_intensity == 1
    assert report.n_with_duplicate_mz == 1
    assert np.isnan(sp.precursor_mz).all()
    assert report.warnings["bad precursor_mz"] == 1
    # a record of zero intensities only is rejected, and its unsorted peaks are not counted as sorted
    sp, report = fio.read(write(tmp_path, "z.mgf", mgf("SPECTRUM_ID=a\n100 1", "SPECTRUM_ID=b\n200 0\n100 0")),
                          return_report=True)
    assert sp.ids == ["a"] and report.counts_by_reason == {"no peaks": 1}
    assert report.n_fixed_unsorted == 0 and report.n_zero_intensity == 0
    # an m/z below float32's range is 0 once stored: rejected as the README says, not kept (an audit), while
    # the smallest float32 m/z is a value
    sp, report = fio.read(write(tmp_path, "t.mgf", mgf("SPECTRUM_ID=a\n1e-50 10\n60 5", "SPECTRUM_ID=b\n1e-45 1\n60 5")),
                          return_report=True)
    assert sp.ids == ["b"] and report.counts_by_reason == {"m/z not positive": 1}


@pytest.mark.parametrize("large", [False, True])
def test_missing_markers_in_a_table_precursor_column_are_not_bad_values(tmp_path, large):
    """"N/A", "" or "nan" in a Parquet string column are missing, as in MGF / MSP / TSV; only a value that
    is not a number ("abc") counts as ``bad precursor_mz``."""
    import pyarrow.parquet as pq

    vals = pa.array(["N/A", "", " nan ", "NA", "abc", None, "201.5"], pa.large_string() if large else pa.string())
    pq.write_table(pa.table({"mz": [[100.0]] * 7, "intensity": [[1.0]] * 7, "precursor_mz": vals}), tmp_path / "p.parquet")
    sp, report = fio.read(tmp_path / "p.parquet", return_report=True)
    assert report.warnings == {"bad precursor_mz": 1}
    assert np.isnan(sp.precursor_mz[:6]).all() and sp.precursor_mz[6] == 201.5


def test_missing_markers_in_a_table_string_column_are_missing(tmp_path):
    """"N/A" / "null" / "" in a Parquet file's adduct, instrument or name column are missing values, as in
    text formats (instrument "N/A" made same_instrument drop a query's every hit, silently); other columns
    keep what they hold."""
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"mz": [[100.0]] * 3, "intensity": [[1.0]] * 3, "precursor_mz": [200.0] * 3,
                             "instrument_type": ["N/A", " null ", "Orbitrap"], "adduct": ["", "[M+H]+", "None"],
                             "name": ["NA", "Na", "x"], "comment": ["N/A", "", "y"]}), tmp_path / "p.parquet")
    sp = fio.read(tmp_path / "p.parquet")
    assert sp.column("instrument_type") == [None, None, "Orbitrap"]
    assert sp.column("adduct") == [None, "[M+H]+", None]
    assert sp.column("name") == [None, "Na", "x"]  # sodium is a name
    assert sp.column("comment") == ["N/A", "", "y"]
    # pandas categoricals (dictionary columns) alike; ids are kept as given (a review)
    pq.write_table(pa.table({"mz": [[100.0]] * 3, "intensity": [[1.0]] * 3, "id": [" c ", "NA", "none"],
                             "instrument_type": pa.array(["N/A", "Orbitrap", "N/A"]).dictionary_encode()}),
                   tmp_path / "c.parquet")
    sp = fio.read(tmp_path / "c.parquet")
    assert sp.column("instrument_type") == [None, "Orbitrap", None] and sp.ids == [" c ", "NA", "none"]
    # fastspec's own files alike: spectra made in memory are written as given (a review)
    from fastspec.spectra import Spectra

    mem = Spectra.from_arrays([[100.0], [101.0]], [[1.0], [1.0]],
                              metadata=pa.table({"id": ["a", "b"], "instrument_type": ["N/A", " Orbitrap "]}))
    for ext in ("parquet", "h5"):
        fio.write(mem, tmp_path / f"own.{ext}")
        assert fio.read(tmp_path / f"own.{ext}").column("instrument_type") == [None, "Orbitrap"], ext


def test_same_rules_in_every_format(tmp_path):
    """A NaN peak, a negative intensity and a record without a positive intensity are rejected alike
    everywhere; a zero-intensity peak beside a positive one is kept."""
    from fastspec.spectra import Spectra

    mzs = [np.array([100.0, 200.0]), np.array([100.0, np.nan]), np.array([100.0, 150.0]), np.array([80.0]),
           np.array([90.0, 95.0])]
    ints = [np.array([1.0, 2.0]), np.array([1.0, 1.0]), np.array([1.0, -1.0]), np.array([0.0]),
            np.array([3.0, 0.0])]
    sp = Spectra(np.array([0, 2, 4, 6, 7, 9]), np.concatenate(mzs), np.concatenate(ints).astype(np.float32),
                 validate=False)
    expected = {"non-finite peak value": 1, "negative intensity": 1, "no peaks": 1}
    for ext in ("mgf", "msp", "tsv", "parquet", "h5"):
        p = tmp_path / f"x.{ext}"
        fio.write(sp, p)
        back, report = fio.read(p, return_report=True)
        assert report.counts_by_reason == expected, ext
        assert back.ids == ["0", "4"], ext
        assert back[1].mz.tolist() == [90.0, 95.0] and back[1].intensity.tolist() == [3.0, 0.0], ext
        assert report.n_zero_intensity == 1, ext
        # rejected records keep their place and id, so that a hit table can still name them
        assert report.rejected_records == [1, 2, 3] and report.rejected_ids == ["1", "2", "3"], ext
    # several files: positions count every record read before, ids follow
    _, report = fio.read([tmp_path / "x.mgf", tmp_path / "x.msp"], return_report=True)
    assert report.rejected_records == [1, 2, 3, 6, 7, 8]
    assert report.rejected_ids == ["1", "2", "3"] * 2


def test_tsv_bad_rows(tmp_path):
    header = "identifier\tmzs\tintensities\tprecursor_mz\n"
    rows = ["a\t100,200\t1,2\t300", "b\t100,200\t1\t300", "c\t100\t1", "d\t1x0\t1\t5", "e\t\t\t5", "f\t50\t5\t60"]
    p = write(tmp_path, "b.tsv", header + "\n".join(rows) + "\n")
    sp, report = fio.read(p, return_report=True)
    assert sp.ids == ["a", "f"]
    assert report.counts_by_reason == {"m/z and intensity lists differ in length": 1, "wrong number of fields": 1,
                                       "unparsable peak list": 1, "no peaks": 1}
    lines = {r.reason: r.line for r in report.rejected}
    assert lines["m/z and intensity lists differ in length"] == 3
    assert lines["wrong number of fields"] == 4
    assert lines["unparsable peak list"] == 5
    assert lines["no peaks"] == 6
    with pytest.raises(ParseError):
        fio.read(p, on_error="raise")


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_tsv_bad_rows_on_the_files_lines_past_empty_lines(tmp_path, eol):
    """Rejections name the file's own lines when empty lines (which pyarrow skips and leaves out of its
    row numbers) come before them: an audit opened line 3 for a bad row on line 4."""
    header = "identifier\tmzs\tintensities\tprecursor_mz"
    rows = ["", header, "", "a\t100,200\t1,2\t300", "b\t\t\t300", "", "", "c\t100\t1", "d\t50\t5\t60",
            "e\t100,200\t1\t300", ""]
    p = tmp_path / "b.tsv"
    p.write_bytes(eol.join(rows).encode())
    sp, report = fio.read(p, return_report=True)
    assert sp.ids == ["a", "d"]
    assert {r.reason: r.line for r in report.rejected} == {
        "no peaks": 5, "wrong number of fields": 8, "m/z and intensity lists differ in length": 10}
    assert sorted(report.rejected_records) == [1, 2, 4]
    with pytest.raises(ParseError, match=r"b\.tsv:5: no peaks"):
        fio.read(p, on_error="raise")


@pytest.mark.parametrize("before", ["\ufeff\n", "  \n", "\n \t\r\n\n", "\ufeff \n\n"])
def test_tsv_blank_lines_before_the_header(tmp_path, before):
    """Blank lines before the header, whitespace-only or after a BOM, are skipped as empty lines: pyarrow
    took a whitespace-only line as the header (every row then rejected) and a BOM alone as one (a review);
    rejections still name the file's lines."""
    head = before.count("\n")
    text = before + "identifier\tmzs\tintensities\nA\t100,200\t1,2\nB\t100\t1,2\n"
    p = tmp_path / "h.tsv"
    p.write_bytes(text.encode())
    sp, report = fio.read(p, return_report=True)
    assert sp.ids == ["A"]
    assert [(r.line, r.reason) for r in report.rejected] == [(head + 3, "m/z and intensity lists differ in length")]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7])
def test_tsv_empty_lines_found_across_blocks(tmp_path, cut):
    """Empty lines are counted however the text arrives in blocks (a ``\\r\\n`` or two breaks split across
    two): the reader's line map against a count over the whole text."""
    from fastspec.io.tsv import _CleanUtf8

    text = b"\nh\r\n\r\nx\n\n\ny\r\n \nz\r\n\r\n\r\n\r\rw\n"
    p = tmp_path / "t.tsv"
    p.write_bytes(text)
    r = _CleanUtf8(str(p))
    while r.read(cut):
        pass
    r.close()
    lines = text.split(b"\n")[:-1]
    empty = [i + 1 for i, ln in enumerate(lines) if ln in (b"", b"\r")]
    assert r.empty_lines().tolist() == empty == [1, 3, 5, 6, 10, 11]
    kept = [i + 1 for i, ln in enumerate(lines) if ln not in (b"", b"\r")]
    np.testing.assert_array_equal(r.file_lines(np.arange(1, len(kept) + 1)), kept)


def test_parquet_bad_rows(tmp_path):
    import pyarrow.parquet as pq

    t = pa.table({"mzs": pa.array([[100.0, 200.0], None, [1.0, 2.0], [5.0]], pa.list_(pa.float64())),
                  "intensities": pa.array([[1.0, 2.0], None, [1.0], [None]], pa.list_(pa.float32())),
                  "id": ["a", "b", "c", "d"]})
    pq.write_table(t, tmp_path / "x.parquet")
    sp, report = fio.read(tmp_path / "x.parquet", return_report=True)
    assert sp.ids == ["a"]
    assert report.counts_by_reason == {"no peaks": 1, "m/z and intensity lists differ in length": 1,
                                       "non-finite peak value": 1}
    assert sorted(r.line for r in report.rejected) == [2, 3, 4]
    pq.write_table(pa.table({"x": [1]}), tmp_path / "y.parquet")
    with pytest.raises(FastspecError, match="m/z"):
        fio.read(tmp_path / "y.parquet")


def test_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        fio.read(tmp_path / "missing.mgf")
    with pytest.raises(ParameterError):
        fio.read(DATA / "mgf_gnps.mgf", on_error="ignore")
    with pytest.raises(ParameterError):
        list(fio.iter_read(DATA / "mgf_gnps.mgf", chunk_size=0))
    with pytest.raises(FastspecError, match="format"):
        fio.read(DATA / "mgf_gnps.mgf", format="xlsx")
    junk = write(tmp_path, "junk.bin", "hello world\n")
    with pytest.raises(FastspecError, match="cannot tell"):
        fio.read(junk)
    fake = write(tmp_path, "fake.h5", "not hdf5")
    with pytest.raises(FastspecError):
        fio.read(fake)
    fakepq = write(tmp_path, "fake.parquet", "not parquet")
    with pytest.raises(FastspecError):
        fio.read(fakepq)
    badgz = write(tmp_path, "x.mgf.gz", "not gzip data")
    with pytest.raises(FastspecError):
        fio.read(badgz)


def test_msp_decimal_commas_quoted_colons_and_plain_commas(tmp_path):
    euro = write(tmp_path, "euro.msp", "NAME: euro\nPRECURSORMZ: 195,0877\nNum Peaks: 2\n42,0338\t12,5\n69,0447\t30,1\n\n"
                 "Name: ok\nPrecursorMZ: 100.5\nNum Peaks: 2\n42.0338,12.5\n69.0447, 30\n")
    sp, report = fio.read(euro, return_report=True)
    assert report.counts_by_reason == {"peak line with decimal commas (e.g. 42,0338)": 1}
    assert report.rejected[0].line == 4
    assert sp.column("name") == ["ok"] and sp.mz.tolist() == [42.0338, 69.0447] and sp.intensity.tolist() == [12.5, 30]
    # thousands separators next to a '.' (spreadsheet exports): rejected, not read as intensity 1
    thou = write(tmp_path, "thou.msp", "Name: t\nPrecursorMZ: 500\nNum Peaks: 2\n100.0 1,000\n200.0 2,500\n\n"
                 "Name: ok\nPrecursorMZ: 500\nNum Peaks: 2\n100.0,1000\n200.0 2500 \"a,123\"\n")
    sp, report = fio.read(thou, return_report=True)
    assert report.counts_by_reason == {"peak line with a thousands separator (e.g. 1,000)": 1}
    assert report.rejected[0].line == 4
    assert sp.column("name") == ["ok"] and sp.intensity.tolist() == [1000, 2500]
    # ':' and ';' inside a quoted annotation are text, not GOLM pairs or peak groups
    annot = write(tmp_path, "annot.msp", 'Name: a\nPrecursorMZ: 300.1\nNum Peaks: 3\n100.1\t50\t"C5H6O2+:1.2ppm"\n'
                  '150.2\t100\t"p-H2O;x"\n200.3\t20\n')
    sp, report = fio.read(annot, return_report=True)
    assert report.n_rejected == 0 and sp.mz.tolist() == [100.1, 150.2, 200.3]


def test_msp_explicit_lines_win_over_comments_whatever_follows(tmp_path):
    a = ('Name: A\nSMILES: CCO\nComments: "SMILES=OCC" "InChIKey=LFQSCWFLJHTTHZ-UHFFFAOYSA-N"\nPrecursorMZ: 47.0491\n'
         "Num Peaks: 2\n29.0386 100\n31.0178 50\n\n")
    b = "Name: B\nSMILES: CCCO\nPrecursorMZ: 61.0648\nNum Peaks: 2\n29.0386 100\n43.0542 50\n\n"
    alone = fio.read(write(tmp_path, "a.msp", a))
    both = fio.read(write(tmp_path, "ab.msp", a + b))
    assert alone.column("smiles") == ["CCO"] and both.column("smiles") == ["CCO", "CCCO"]
    assert both.column("inchikey") == ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N", None]


def test_wide_encodings_and_massbank_records_are_refused(tmp_path):
    text = mgf(GOOD)
    for enc in ("utf-16", "utf-16-le"):
        p = tmp_path / f"{enc}.mgf"
        p.write_bytes(text.encode(enc))
        with pytest.raises(ParseError, match="UTF-16") as e:
            fio.read(p)
        assert e.value.path == str(p)
    # MassBank records are read now (tests/test_io_massbank.py); a UTF-16 one is refused like the rest
    record = write(tmp_path, "MSBNK-X.txt", "")
    record.write_bytes("ACCESSION: MSBNK-Test-TS000001\nCH$NAME: Caffeine\nPK$PEAK: m/z int. rel.int.\n"
                       "  138.066 100 999\n//\n".encode("utf-16"))
    with pytest.raises(ParseError, match="UTF-16"):
        fio.read(record, format="massbank")


def test_hdf5_foreign_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FastspecError, match="not a fastspec"):
        fio.read(tmp_path / "other.h5")


def test_progress_bar(tmp_path, capsys):
    fio.read(DATA / "mgf_gnps.mgf", progress=True)
    fio.write(fio.read(DATA / "mgf_gnps.mgf"), tmp_path / "p.h5")
    fio.read(tmp_path / "p.h5", progress=True)
    assert "B" in capsys.readouterr().err  # tqdm byte counter on stderr


def test_report_summary_and_dict(tmp_path):
    _, report = fio.read(DATA / "mgf_crlf_notitle.mgf", return_report=True)
    s = report.summary()
    assert "3 records: 2 spectra, 1 rejected (no peaks: 1)" in s
    d = report.to_dict()
    assert d["n_records"] == 3 and d["rejected"][0][1] == "no peaks"
    assert report.reasons == {"no peaks": 1}


# ---------------------------------------------------------------------------- number parsing
def _scan_values(tokens: list[str]) -> np.ndarray:
    text = "BEGIN IONS\n" + "".join(f"{t} {t}\n" for t in tokens) + "END IONS\n"
    r = ts.scan(text.encode(), ts.MGF)
    assert r.rec_err.tolist() == [0]
    return r.mz


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_numbers_parse_like_python_float(values):
    tokens = [repr(v) for v in values] + [f"{v:.17e}" for v in values] + [f"{v:.3f}" for v in values]
    assert _scan_values(tokens).tolist() == [float(t) for t in tokens]


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[+-]?([0-9]{1,25}(\.[0-9]{0,25})?|\.[0-9]{1,25})([eE][+-]?[0-9]{1,3})?", fullmatch=True))
def test_decimal_strings_parse_like_python_float(token):
    assert _scan_values([token]).tolist() == [float(token)]


def test_special_numbers():
    got = _scan_values(["nan", "NaN", "inf", "-Infinity", "1.", ".5", "+3", "1E2", "007"])
    want = [float(x) for x in ["nan", "NaN", "inf", "-Infinity", "1.", ".5", "+3", "1E2", "007"]]
    assert np.array_equal(got, want, equal_nan=True)
    for bad in ["1..2", "1e", "e5", "--1", "1_000", "0x10", "1,5"]:
        r = ts.scan(f"BEGIN IONS\n{bad} 5\nEND IONS\n".encode(), ts.MGF)
        assert r.rec_err.tolist() != [0] or r.mz.shape[0] == 1, bad


# ---------------------------------------------------------------------------- CLI
def test_convert_command(tmp_path):
    from click.testing import CliRunner

    from fastspec.cli import main

    runner = CliRunner()
    out = tmp_path / "out.parquet"
    res = runner.invoke(main, ["convert", str(DATA / "mgf_gnps.mgf"), str(DATA / "msp_nist.msp"), str(out),
                               "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert len(fio.read(out)) == 4
    assert "4 spectra" in res.output
    res = runner.invoke(main, ["convert", "-q", str(out), str(tmp_path / "o.txt"), "--format", "msp"])
    assert res.exit_code == 0 and len(fio.read(tmp_path / "o.txt", format="msp")) == 4
    bad = write(tmp_path, "bad.mgf", "BEGIN IONS\n100 1\n")
    res = runner.invoke(main, ["convert", "--on-error", "raise", str(bad), str(tmp_path / "x.mgf")])
    assert res.exit_code != 0 and "bad.mgf:1" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["convert", str(tmp_path / "nope.mgf"), str(tmp_path / "x.mgf")])
    assert res.exit_code != 0 and "No such file" in res.output
    # a file with no record at all is a mistake (a BEGIN_IONS typo), not an empty input; an empty file is one
    typo = write(tmp_path, "typo.mgf", "BEGIN_IONS\nPEPMASS=100\n50 10\nEND IONS\n")
    res = runner.invoke(main, ["convert", str(typo), str(tmp_path / "t.mgf")])
    assert res.exit_code != 0 and "every record was rejected" in res.output and "typo.mgf:1" in res.output
    assert "record without BEGIN IONS" in res.output
    assert not (tmp_path / "t.mgf").exists()
    keys = write(tmp_path, "keys.mgf", "TITLE=a\nPEPMASS=100\n")  # global parameters only
    res = runner.invoke(main, ["convert", str(keys), str(tmp_path / "k.mgf")])
    assert res.exit_code != 0 and "no spectrum records found" in res.output and not (tmp_path / "k.mgf").exists()
    empty = write(tmp_path, "empty.mgf", "\n")
    res = runner.invoke(main, ["convert", str(empty), str(tmp_path / "e.mgf")])
    assert res.exit_code == 0 and len(fio.read(tmp_path / "e.mgf")) == 0


def test_a_hit_table_given_as_spectra_says_so(tmp_path):
    """fastspec's own TSV hit table (a '#' header, no peak columns) read as spectra: the error names the comment
    line for what it is instead of listing it as the columns found (an audit's note)."""
    p = tmp_path / "hits.tsv"
    p.write_text('# mode: "identity"\nquery_index\tquery_id\n0\ta\n')
    with pytest.raises(FastspecError, match="first line is a comment.*hit table"):
        fio.read(p)


def test_precursor_beyond_float32_is_unknown(tmp_path):
    """A precursor m/z float32 cannot hold (the index's neutral losses are float32) reads as unknown, with
    the warning of other unusable values; given in memory, preprocessing makes it unknown too."""
    from fastspec.library import apply_pipeline
    from fastspec.spectra import Spectra

    sp, report = fio.read(write(tmp_path, "p.mgf", mgf("PEPMASS=1e39\n100 5", "PEPMASS=3.4e38\n100 5",
                                                       "PRECURSOR_MZ=1e39\nPEPMASS=195.08\n100 5")),
                          return_report=True)
    assert np.isnan(sp.precursor_mz[0]) and sp.precursor_mz[1] == 3.4e38
    assert sp.precursor_mz[2] == 195.08  # an unusable alias does not hide a usable one
    assert report.warnings.get("bad precursor_mz") == 1
    mem = Spectra(np.array([0, 2, 3]), np.array([100.0, 1e39, 50.0]), np.ones(3, np.float32), np.array([1e39, 300.0]))
    out = apply_pipeline(None, mem)
    assert out.offsets.tolist() == [0, 1, 2] and out.mz.tolist() == [100.0, 50.0]
    assert np.isnan(out.precursor_mz[0]) and out.precursor_mz[1] == 300.0


def test_positions_are_not_written_as_lines(tmp_path):
    """Formats without meaningful lines number records by position: messages say which ("row 2",
    "spectrum 2"), so that a position is not read as a line (an audit read mzML's ``file:2:`` as line 2)."""
    from fastspec.io._common import first_rejection
    from fastspec.spectra import Spectra

    sp = Spectra(np.array([0, 1, 2]), np.array([100.0, 100.0]), np.array([1.0, -1.0], np.float32), validate=False)
    fio.write(sp, tmp_path / "x.parquet")
    with pytest.raises(ParseError, match=r"x\.parquet: row 2: negative intensity") as e:
        fio.read(tmp_path / "x.parquet", on_error="raise")
    assert e.value.line == 2 and e.value.unit == "row"
    _, report = fio.read(tmp_path / "x.parquet", return_report=True)
    assert first_rejection(report).endswith("x.parquet: row 2: negative intensity")
    # a report reused over several reads keeps no per-file formats: the file's own format says it
    from fastspec.io._common import ReadReport

    shared = ReadReport()
    fio.read(tmp_path / "x.parquet", report=shared)
    assert first_rejection(shared).endswith("x.parquet: row 2: negative intensity")
    fio.write(sp, tmp_path / "x.mgf")  # text formats keep path:line
    with pytest.raises(ParseError, match=r"x\.mgf:\d+: negative intensity"):
        fio.read(tmp_path / "x.mgf", on_error="raise")


@pytest.mark.parametrize("kind", ["json", "jsonl", "tsv"])
def test_truncated_gzip_json_and_tsv(tmp_path, kind):
    """A cut-off .json.gz was refused whole even with on_error="skip" and a cut-off .tsv.gz ended in a bare
    EOFError (SIGABRT from a pipe; an audit): the records before the break are read, the break is one
    rejection after them, "raise" raises naming the file; a failed CRC check at the end loses no record."""
    import gzip
    import json

    recs = [{"spectrum_id": f"s{i}", "peaks_json": [[50 + j, j + 1] for j in range(30)]} for i in range(2000)]
    if kind == "tsv":
        text = "identifier\tmzs\tintensities\n" + "".join(
            f"s{i}\t" + ",".join(str(50 + j) for j in range(30)) + "\t" + ",".join(str(j + 1) for j in range(30)) + "\n"
            for i in range(2000))
    else:
        text = json.dumps(recs) if kind == "json" else "\n".join(json.dumps(r) for r in recs)
    z = gzip.compress(text.encode())
    ext = "tsv.gz" if kind == "tsv" else "json.gz"
    whole, cut, crc = (tmp_path / f"{name}.{ext}" for name in ("whole", "cut", "crc"))
    whole.write_bytes(z)
    cut.write_bytes(z[: len(z) // 2])
    bad = bytearray(z)
    bad[-6] ^= 0xFF  # the trailer's CRC
    crc.write_bytes(bytes(bad))
    s, r = fio.read(cut, return_report=True)
    n = len(s)
    assert 500 < n < 1500 and s.ids == [f"s{i}" for i in range(n)]
    assert all(len(x.mz) == 30 for x in s)  # no row shortened by the break
    assert r.n_records == n + 1 and r.counts_by_reason == {
        "compressed data breaks off here (a truncated or corrupt file): the rest is lost": 1}
    with pytest.raises(FastspecError, match="cut"):
        fio.read(cut, on_error="raise")
    s, r = fio.read(crc, return_report=True)
    assert len(s) == 2000 and r.n_rejected == 1
    assert len(fio.read(whole)) == 2000
    if kind == "tsv":  # cut right after the header line: no row, the break one rejection (was EOFError)
        head = gzip.compress(text[: text.index("\n") + 1].encode())
        (tmp_path / "head.tsv.gz").write_bytes(head[:-4])
        s, r = fio.read(tmp_path / "head.tsv.gz", return_report=True)
        assert len(s) == 0 and [x.line for x in r.rejected] == [2]


def test_truncated_gzip_keeps_the_records_before_the_break(tmp_path):
    """An interrupted download of a .mgf.gz failed the whole read, even with on_error="skip" (an audit):
    now the records before the break are read and one rejection is counted at the break's line, whatever
    the block size; "raise" still raises. A gzip stream on a pipe is read (it was taken for plain text)."""
    import gzip
    import json
    import subprocess
    import sys

    from fastspec.io import mgf

    text = "".join(f"BEGIN IONS\nTITLE=r{i}\nPEPMASS={200 + i * 0.37:.4f}\n{50 + i % 97}.1 10\n{120 + i % 89}.3 "
                   f"{i % 1000 + 1}\nEND IONS\n" for i in range(3000))
    z = gzip.compress(text.encode())
    path = tmp_path / "cut.mgf.gz"
    path.write_bytes(z[: int(len(z) * 0.9)])
    s, r = fio.read(path, return_report=True)
    n = len(s)
    assert 2000 < n < 3000 and s.ids == [f"r{i}" for i in range(n)]
    assert r.n_rejected == 1 and r.rejected[0].line == 6 * n + 1
    assert r.rejected[0].reason.startswith("compressed data breaks off here")
    for block in (100, 4096):
        r2 = fio.ReadReport()
        parts = list(mgf.iter_spectra(str(path), on_error="skip", report=r2, block_bytes=block))
        assert sum(len(p) for p in parts) == n and [(x.line, x.reason) for x in r2.rejected] == \
            [(x.line, x.reason) for x in r.rejected]
    with pytest.raises(FastspecError, match="cannot read"):
        fio.read(path, on_error="raise")
    # MSP has no end marker: the entry the data breaks off in is not read as complete
    spectra = fio.read(path)
    fio.write(spectra, str(tmp_path / "a.msp"))
    zm = gzip.compress((tmp_path / "a.msp").read_bytes())
    cut = tmp_path / "cut.msp.gz"
    cut.write_bytes(zm[: len(zm) // 2])
    s2, r3 = fio.read(cut, return_report=True)
    got = {sid: sp.mz.tolist() for sid, sp in zip(s2.ids, s2)}
    ref = {sid: sp.mz.tolist() for sid, sp in zip(spectra.ids, spectra)}
    assert r3.n_rejected == 1 and all(got[k] == ref[k] for k in got) and 0 < len(got) < len(ref)
    # a gzip stream on a pipe, also one whose first write is a single byte, and a truncated one: read as the
    # file is (a review: the pipe lost every record of its block; one byte sent first read as no record)
    src = tmp_path / "q.mgf"
    src.write_text(text[: text.index("BEGIN IONS", 500)])
    conv = f"{sys.executable} -m fastspec convert - {tmp_path / 'p.mgf'} --input-format mgf --report {tmp_path / 'r.json'}"
    for feed in (f"gzip -c {src}", f"gzip -c {src} > {tmp_path / 'q.gz'}; (head -c 1 {tmp_path / 'q.gz'}; sleep 0.3; "
                 f"tail -c +2 {tmp_path / 'q.gz'})", f"cat {path}"):
        res = subprocess.run(f"{feed} | {conv}", shell=True, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        got = json.loads((tmp_path / "r.json").read_text())
        ref = fio.read(path if feed.startswith("cat") else src, return_report=True)[1]
        assert (got["n_records"], got["n_spectra"], got["counts_by_reason"]) == \
            (ref.n_records, ref.n_spectra, ref.counts_by_reason)


# ------------------------------------------------------------------ from a fuzzer (2026-12-08)
def test_long_digit_runs_are_read_in_linear_time(tmp_path):
    """The peak-line pattern split a run of n digits n ways and tried them all when the line then failed: a
    20,000-digit line took 14 s to reject (MSP's last line of a record, MGF's lines before the first). At
    60,000 digits this test would take minutes again; it asserts what is read, not a time."""
    line = b"1" * 60_000 + b"x\n"
    msp = tmp_path / "r.msp"
    msp.write_bytes(b"Name: a\nNum Peaks: 1\n50 10\n" + line + b"\nName: b\nNum Peaks: 1\n60 10\n")
    sp, rep = fio.read(msp, return_report=True)
    assert rep.n_records == len(sp) + rep.n_rejected and "b" in sp.metadata.column("name").to_pylist()
    mgf = tmp_path / "r.mgf"
    mgf.write_bytes(line + b"BEGIN IONS\nTITLE=a\n50 10\nEND IONS\n")
    assert fio.read(mgf).ids == ["a"]


def test_tsv_with_cr_only_line_ends_is_refused(tmp_path):
    """pyarrow ends rows at a bare \\r while the header is read up to a \\n: the names and columns disagreed
    and a ValueError escaped; now the error MGF and MSP give for such files, in both modes."""
    p = tmp_path / "c.tsv"
    p.write_bytes(b"mzs\tintensities\tid\r100.5\t10\tA\r")
    for on_error in ("skip", "raise"):
        with pytest.raises(ParseError, match=r"c\.tsv:1: lines end in CR only"):
            fio.read(p, on_error=on_error)


@pytest.mark.parametrize("old,new,field,want", [
    ('name="scan start time" value="0.6"', 'name="scan start time" value="abc"', "retention_time", None),
    ('name="scan start time" value="0.6"', 'name="scan start time" value=""', "retention_time", None),
    ('name="scan start time" value="0.6" unitCvRef="PSI-MS" unitAccession="UO:0000031" unitName="minute"/>',
     'name="scan start time" value="0.6" unitCvRef="PSI-MS" unitAccession="UO:0000031" unitName="minute"/>'
     '<cvParam cvRef="PSI-MS" accession="MS:1000016" name="scan start time" value="0.9" unitCvRef="PSI-MS" '
     'unitAccession="UO:0000031" unitName="minute"/>', "retention_time", 36.0),
    ('name="ms level" value="2"/>', 'name="ms level" value="abc"/>', "ms_level", 2),
    ('name="ms level" value="2"/>', 'name="ms level" value="2"/><cvParam cvRef="PSI-MS" accession="MS:1000511" '
     'name="ms level" value="2"/>', "ms_level", 2),
    ('name="collision energy" value="30.0"', 'name="collision energy" value="inf"', "collision_energy", "inf"),
    ('name="collision energy" value="30.0"', 'name="collision energy" value="nan"', "collision_energy", None),
    # pyteomics' own type conversion failed on these and ended the file as broken XML (one rejection, the
    # spectra after it lost): a charge state written twice (a list), or one that is no integer
    ('name="charge state" value="1"/>', 'name="charge state" value="1"/><cvParam cvRef="PSI-MS" '
     'accession="MS:1000041" name="charge state" value="1"/>', "charge", 1),
    ('name="charge state" value="1"/>', 'name="charge state" value="inf"/>', "charge", None),
])
def test_mzml_values_that_are_no_numbers(tmp_path, old, new, field, want):
    """A retention time, MS level or collision energy that is no number (or written twice: pyteomics gives a
    list) let ValueError / TypeError / OverflowError escape the mzML reader; such a value is left out now (a
    second one: the first is read), as the mzXML reader does."""
    text = (DATA / "tiny.mzML").read_text()
    assert old in text
    p = tmp_path / "t.mzML"
    p.write_text(text.replace(old, new, 1))
    for on_error in ("skip", "raise"):
        sp, rep = fio.read(p, on_error=on_error, return_report=True)
        assert len(sp) == 2 and rep.n_rejected == 0
        assert sp.metadata.column(field).to_pylist()[0] == want


def test_damaged_hdf5_is_a_fastspec_error(tmp_path):
    """Single flipped bits in a fastspec HDF5 file let h5py's RuntimeError / OSError escape (its links,
    heaps and attributes read outside the guarded open): every one is a FastspecError now, or reads."""
    import random

    p = tmp_path / "v.h5"
    fio.write(fio.read(DATA / "mgf_gnps.mgf"), p)
    data = p.read_bytes()
    rng = random.Random(3)
    q = tmp_path / "c.h5"
    for _ in range(150):
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        q.write_bytes(bytes(b))
        for on_error in ("skip", "raise"):
            try:
                fio.read(q, on_error=on_error)
            except FastspecError:
                pass


def test_tsv_long_rows_in_small_chunks(tmp_path):
    """A row longer than the parser's block was refused ("straddling object straddles two block
    boundaries", no line) when chunks were small, read whole: blocks hold at least 16 MB now."""
    from fastspec.spectra import Spectra

    rng = np.random.default_rng(0)
    mz = [np.sort(rng.uniform(50, 1000, 20_000)), np.array([100.0, 200.0])]
    sp = Spectra.from_arrays(mz, [rng.uniform(1, 100, m.shape[0]) for m in mz], precursor_mz=[500.0, 300.0])
    p = tmp_path / "long.tsv"
    fio.write(sp, p)
    whole = fio.read(p)
    parts = list(fio.iter_read(p, chunk_size=1))
    assert [len(c) for c in parts] == [1, 1]
    np.testing.assert_array_equal(np.concatenate([c.mz for c in parts]), whole.mz)
    # the reader itself hands a block on chunk_size rows at a time (search_to_file's runs end at its blocks:
    # 16 MB blocks made runs of ~18,000 queries out of chunk_size=100, a review)
    from fastspec.io import _iter_file
    from fastspec.io._common import ReadReport

    blocks = list(_iter_file(str(p), None, "skip", ReadReport(path=str(p)), None, 1))
    assert [len(b) for b in blocks] == [1, 1]


def test_huge_numbers_and_space_runs_in_values(tmp_path):
    """A review of the fuzzer's fixes: 5,000-digit charges, adduct charges and formula counts let Python's
    int() ValueError (over 4,300 digits) escape the reader; a comment's quoted text of 3,000 spaces took 29 s
    (a pattern splitting the spaces many ways). Both read now: the values are no charge / adduct / formula."""
    digits = "1" * 5000
    p = tmp_path / "h.msp"
    p.write_text(f"Name: a\nCharge: {digits}+\nPrecursor_type: [M+H]{digits}+\nFormula: C{digits}H4\n"
                 f"Comments: \"{' ' * 3000}x\nNum Peaks: 1\n50 10\n\nName: b\nPrecursor_type: M{'+' * 20000}\n"
                 f"Num Peaks: 1\n60 10\n")
    sp, rep = fio.read(p, return_report=True)
    assert len(sp) == 2 and rep.n_rejected == 0
    assert sp.charge.tolist() == [0, 0]
    from fastspec.chem.adducts import AdductError, parse_adduct
    from fastspec.chem.formula import FormulaError, parse_formula

    with pytest.raises(AdductError, match="10 digits or more"):
        parse_adduct(f"[M+H]{digits}+")
    with pytest.raises(FormulaError, match="10 digits or more"):
        parse_formula(f"C{digits}H4")
    # superscript digits become digits: the same guard (a review: "³" * 5000 got past it)
    sup = "³" * 5000
    with pytest.raises(FormulaError, match="10 digits or more"):
        parse_formula(f"C6H5O7{sup}⁻")
    with pytest.raises(AdductError, match="10 digits or more"):
        parse_adduct(f"[M+H]{sup}+")
    q = tmp_path / "s.msp"
    q.write_text(f"Name: a\nPrecursor_type: [M+H]{sup}+\nFormula: C6H5O7{sup}⁻\nNum Peaks: 1\n50 10\n")
    assert len(fio.read(q)) == 1
