"""JSON spectrum libraries, one hand-made fixture per dialect: a GNPS library export (``peaks_json`` as a
string, GNPS's key names), a matchms ``save_as_json`` file (written by matchms itself) and a MoNA JSON
export (``spectrum`` text, ``metaData`` lists, a nested ``compound``); compared with matchms'
``load_from_json`` where it reads the file."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import fastspec.io as fio
from fastspec.errors import FastspecError, ParseError

GNPS = [
    {"spectrum_id": "CCMSLIB00000001547", "source_file": "fastspec_test_gnps_layout.mgf",
     "ms_level": "2", "peaks_json": "[[120.0813,5000.0],[245.1102,12000.0],[512.3375,3000.0]]",
     "Compound_Name": "3-Des-Microcystein_LR", "Ion_Source": "LC-ESI", "Instrument": "qTof", "Adduct": "M+H",
     "Precursor_MZ": "981.54", "Charge": "0", "Smiles": "CC(C)CC1NC(=O)C(C)NC(=O)C(=C)N(C)C(=O)CCC(NC(=O)C(C)C(NC(=O)C(CCCNC(N)=N)NC1=O)C(O)=O)C(O)=O",
     "INCHI": "N/A", "Ion_Mode": "Positive", "Library_Class": "1"},
    {"spectrum_id": "CCMSLIB00000001548", "ms_level": "2", "peaks_json": "[[81.0, 10.0],[113.1, 200.0]]",
     "Compound_Name": "Neg example", "Adduct": "[M-H]-", "Precursor_MZ": "145.05", "Charge": "-1",
     "Ion_Mode": "Negative", "Smiles": "OC(=O)CCC(=O)C(O)=O"},
]

MONA = [
    {"compound": [{"inchi": "InChI=1S/C6H12O6/c7-1-2-3(8)4(9)5(10)6(11)12-2/h2-11H,1H2",
                   "inchiKey": "WQZGKKKJIJFFOK-GASJEMHNSA-N",
                   "metaData": [{"name": "SMILES", "value": "OCC1OC(O)C(O)C(O)C1O"},
                                {"name": "molecular formula", "value": "C6H12O6"},
                                {"name": "total exact mass", "value": 180.0634}],
                   "names": [{"name": "D-Glucose", "score": 0}]}],
     "id": "MoNA000001",
     "metaData": [{"name": "precursor m/z", "value": 179.0561}, {"name": "precursor type", "value": "[M-H]-"},
                  {"name": "ionization mode", "value": "negative"}, {"name": "collision energy", "value": "20 eV"},
                  {"name": "instrument type", "value": "LC-ESI-QTOF"}],
     "spectrum": "59.0133:100 71.0133:45.5 89.0244:80.25",
     "score": {"score": 3.9}},
]


def _write(path, records, lines=False):
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records, indent=1)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
    return path


def _md(s, i):
    return {k: v for k, v in s[i].metadata.items() if v is not None}


@pytest.mark.parametrize("name", ["gnps.json", "gnps.json.gz"])
def test_gnps_export(tmp_path, name):
    s, r = fio.read(_write(tmp_path / name, GNPS), return_report=True)
    r.check()
    assert (r.n_records, len(s)) == (2, 2)
    m = _md(s, 0)
    assert m["id"] == "CCMSLIB00000001547" and m["name"] == "3-Des-Microcystein_LR" and m["precursor_mz"] == 981.54
    assert m["ion_mode"] == "positive" and m["adduct"] == "M+H" and m["smiles"].startswith("CC(C)CC1")
    assert s[0].mz.tolist() == [120.0813, 245.1102, 512.3375] and s[0].intensity.tolist() == [5000.0, 12000.0, 3000.0]
    assert _md(s, 1)["ion_mode"] == "negative" and _md(s, 1)["charge"] == -1
    matchms = pytest.importorskip("matchms.importing")
    theirs = list(matchms.load_from_json(str(_write(tmp_path / "plain.json", GNPS))))
    for i, t in enumerate(theirs):
        np.testing.assert_allclose(s[i].mz, t.peaks.mz)
        np.testing.assert_allclose(s[i].intensity, t.peaks.intensities, rtol=1e-7)
        assert s.precursor_mz[i] == pytest.approx(t.get("precursor_mz"))


def test_gnps_computed_formula_and_inchikey(tmp_path):
    """GNPS exports carry no plain formula or InChIKey, only the ones GNPS computed from the structure
    (``Formula_smiles`` / ``InChIKey_inchi`` ...): they fill ``formula`` and ``inchikey``, skipping N/A, and
    never override a record's own."""
    recs = [dict(GNPS[0], InChIKey_smiles="DIDLWIPCWUSYPF-UHFFFAOYSA-N", InChIKey_inchi="", Formula_smiles="C48H72N10O12",
                 Formula_inchi=""),
            dict(GNPS[1], InChIKey_smiles="N/A", InChIKey_inchi="BSYNRYMUTXBXSQ-UHFFFAOYSA-N", Formula_smiles="N/A",
                 Formula_inchi="C5H6O5"),
            dict(GNPS[1], formula="C5H6O5", Formula_smiles="C9H8O4")]
    s = fio.read(_write(tmp_path / "g.json", recs))
    assert s.column("formula") == ["C48H72N10O12", "C5H6O5", "C5H6O5"]
    assert s.column("inchikey14")[:2] == ["DIDLWIPCWUSYPF", "BSYNRYMUTXBXSQ"] and s.column("inchikey")[2] is None


def test_matchms_save_as_json_round_trip(tmp_path):
    pytest.importorskip("matchms")
    from matchms import Spectrum
    from matchms.exporting import save_as_json

    spectra = [Spectrum(mz=np.array([50.0, 100.5, 150.25]), intensities=np.array([0.1, 1.0, 0.5]),
                        metadata={"precursor_mz": 200.1, "ionmode": "positive", "compound_name": "one",
                                  "smiles": "CCO", "adduct": "[M+H]+", "spectrum_id": "s1"}),
               Spectrum(mz=np.array([70.0, 80.0]), intensities=np.array([3.0, 4.0]),
                        metadata={"precursor_mz": 120.0, "ionmode": "negative", "compound_name": "two"})]
    path = tmp_path / "mm.json"
    save_as_json(spectra, str(path))
    s = fio.read(path)
    assert len(s) == 2 and s[0].mz.tolist() == [50.0, 100.5, 150.25] and s.precursor_mz.tolist() == [200.1, 120.0]
    assert _md(s, 0)["name"] == "one" and _md(s, 0)["id"] == "s1" and _md(s, 1)["ion_mode"] == "negative"


def test_mona_export(tmp_path):
    s, r = fio.read(_write(tmp_path / "mona.json", MONA), return_report=True)
    r.check()
    m = _md(s, 0)
    assert m["id"] == "MoNA000001" and m["name"] == "D-Glucose" and m["precursor_mz"] == 179.0561
    assert m["ion_mode"] == "negative" and m["adduct"] == "[M-H]-" and m["formula"] == "C6H12O6"
    assert m["inchikey"] == "WQZGKKKJIJFFOK-GASJEMHNSA-N" and m["smiles"] == "OCC1OC(O)C(O)C(O)C1O"
    assert m["exact_mass"] == "180.0634"  # "total exact mass", as MoNA's MSP export's "exact mass"
    assert s[0].mz.tolist() == [59.0133, 71.0133, 89.0244] and s[0].intensity.tolist() == [100.0, 45.5, 80.25]


def test_json_lines_bad_records_and_counts(tmp_path):
    recs = [GNPS[0], {"spectrum_id": "nopeaks", "Precursor_MZ": "100"}, [1, 2],
            {"spectrum_id": "bad", "peaks_json": "[[1, 2, 3"}, GNPS[1]]
    p = _write(tmp_path / "lines.json", recs, lines=True)
    s, r = fio.read(p, return_report=True)
    assert len(s) == 2 and r.n_records == 5 and r.n_rejected == 3 and r.n_spectra + r.n_rejected == r.n_records
    assert [x.line for x in r.rejected] == [2, 3, 4]
    assert "no peaks" in r.rejected[0].reason and "JSON object" in r.rejected[1].reason
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert e.value.line == 2


def test_broken_json_keeps_what_was_read(tmp_path):
    text = json.dumps(GNPS * 30)
    cut = text[: text.index('"CCMSLIB00000001548"', len(text) // 2) + 40]  # inside a record
    p = tmp_path / "cut.json"
    p.write_text(cut)
    s, r = fio.read(p, return_report=True)
    assert len(s) >= 29 and r.n_rejected == 1 and r.n_records == len(s) + 1
    assert "invalid JSON" in r.rejected[0].reason and r.rejected[0].line == len(s) + 1
    with pytest.raises(ParseError):
        fio.read(p, on_error="raise")


@pytest.mark.parametrize("indent", [None, 1])
@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("where", [1, 17, 38])
def test_broken_record_in_an_array_is_one_rejection(tmp_path, monkeypatch, indent, chunk, where):
    """Broken JSON inside an array is one bad record; the records after it are read (GNPS exports on one
    line, MoNA pretty-printed with nested objects, which are not taken for records), also when the next
    record lies beyond the buffer (a tiny read size)."""
    from fastspec.io import jsonspec

    if chunk:
        monkeypatch.setattr(jsonspec, "_CHUNK", chunk)
    recs = [dict(GNPS[i % 2], spectrum_id=f"S{i}") if i % 3 else dict(MONA[0], id=f"S{i}") for i in range(40)]
    parts = [json.dumps(r, indent=indent) for r in recs]
    parts[where] = parts[where].replace('"', "", 3)  # a key without its quotes: broken JSON
    p = tmp_path / "broken.json"
    p.write_text("[" + ",\n".join(parts) + "]")
    s, r = fio.read(p, return_report=True)
    r.check()
    assert r.n_records == 40 and r.n_rejected == 1 and len(s) == 39
    assert r.rejected[0].line == where + 1 and "invalid JSON" in r.rejected[0].reason
    assert s.ids == [f"S{i}" for i in range(40) if i != where]
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert e.value.line == where + 1


def test_broken_text_to_the_end_and_nested_objects(tmp_path):
    # the last record broken: nothing to go on with; a broken record whose nested objects follow "},":
    # they are not spectra, so the reading goes on at the next record, not inside the broken one
    last = "[" + json.dumps(GNPS[0]) + ", " + json.dumps(GNPS[1])[:-5] + "]"
    p = tmp_path / "last.json"
    p.write_text(last)
    s, r = fio.read(p, return_report=True)
    assert len(s) == 1 and r.n_records == 2 and r.n_rejected == 1
    broken = json.dumps(MONA[0]).replace('"id"', "id")
    p.write_text("[" + json.dumps(GNPS[0]) + ", " + broken + ", " + json.dumps(GNPS[1]) + "]")
    s, r = fio.read(p, return_report=True)
    assert len(s) == 2 and r.n_records == 3 and r.n_rejected == 1 and s.ids[1] == "CCMSLIB00000001548"


@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_review_resync_stays_at_the_top_level(tmp_path, monkeypatch, chunk):
    """After broken JSON the reading goes on at a record of the array itself: not at a spectrum-like object
    nested in the broken record (whose list's "]" would then end the file), after a stray "}" or "]", in a
    second array appended to the first, and past a record nested too deeply for the decoder."""
    from fastspec.io import jsonspec

    if chunk:
        monkeypatch.setattr(jsonspec, "_CHUNK", chunk)
    g = [json.dumps(dict(GNPS[i % 2], spectrum_id=f"S{i}")) for i in range(4)]
    cases = {
        "nested": ("[" + ", ".join([g[0], '{"x": tru, "refs": [' + g[1] + ", " + g[1] + "]}", g[2], g[3]]) + "]",
                   ["S0", "S2", "S3"], 4),
        "brace": ("[" + ", ".join([g[0], g[1] + "}", g[2], g[3]]) + "]", ["S0", "S1", "S2", "S3"], 5),
        "bracket": ("[" + ", ".join([g[0], g[1] + "]", g[2], g[3]]) + "]", ["S0", "S1", "S2", "S3"], 5),
        "appended": ("[" + ", ".join(g[:2]) + "]\n[" + ", ".join(g[2:]) + "]\n", ["S0", "S1", "S2", "S3"], 4),
        "broken before appended": ("[" + ", ".join([g[0], '{"x": tru}', g[1]]) + "]\n[" + ", ".join(g[2:]) + "]",
                                   ["S0", "S1", "S2", "S3"], 5),
        "deep": ("[" + ", ".join([g[0], '{"deep": ' + "[" * 50000 + "]" * 50000 + "}", g[2]]) + "]", ["S0", "S2"], 3),
    }
    for name, (text, ids, n_records) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        s, r = fio.read(p, return_report=True)
        r.check()
        assert (s.ids, r.n_records) == (ids, n_records), name


def test_gnps_cleaned_tuples_and_nested_metadata(tmp_path):
    """Two mzmine test dialects: GNPS "cleaned" exports write `peaks_json` as Python tuples (matchms reads them
    with ast.literal_eval; they were rejected as unreadable), and mzmine's GNPS JSON nests the metadata under
    "metadata" (it was dropped without a word: no precursor, no polarity)."""
    recs = [{"spectrum_id": "t1", "Precursor_MZ": "981.54", "Ion_Mode": "Positive",
             "peaks_json": "[(278.049927, 35793.0), (640.06665, 0.0), (940.099915, 1264261.0),]"},
            {"metadata": {"NAME": "10(11)-EpDPE", "CHARGE": "1", "PEPMASS": "343.2279", "ADDUCT": "[M-H]-",
                          "IONMODE": "Negative", "SPECTRUMID": "X1", "nested": {"deeper": "ignored"}},
             "SPECTRUMID": "own key wins", "peaks": [[105.07, 15.0], [343.23, 15.0]]}]
    s, r = fio.read(_write(tmp_path / "mzmine.json", recs), return_report=True)
    r.check()
    assert (len(s), r.n_rejected) == (2, 0)
    assert s[0].mz.tolist() == [278.049927, 640.06665, 940.099915] and s[0].intensity.tolist() == [35793.0, 0.0, 1264261.0]
    m = _md(s, 1)
    assert (m["precursor_mz"], m["charge"], m["ion_mode"], m["adduct"], m["name"], m["id"]) == (
        343.2279, -1, "negative", "[M-H]-", "10(11)-EpDPE", "own key wins")
    bad = [{"peaks_json": "[(1.0, 2.0), (oops)]"}]
    s, r = fio.read(_write(tmp_path / "bad.json", bad), return_report=True, on_error="skip")
    assert (len(s), r.n_rejected) == (0, 1) and "unreadable peaks" in next(iter(r.counts_by_reason))


def test_not_json_spectra_is_one_clear_error(tmp_path):
    p = tmp_path / "page.json"
    p.write_text("<html><body>404</body></html>")
    with pytest.raises(FastspecError, match="page.json: not readable as JSON spectra"):
        fio.read(p)


def test_sniffed_and_directory_inputs(tmp_path):
    from fastspec.library import Library

    d = tmp_path / "lib"
    d.mkdir()
    _write(d / "gnps.json", GNPS)
    (d / "settings.json").write_text(json.dumps({"tolerance": 0.02}))  # not spectra: left out
    assert fio.detect_format(str(_write(tmp_path / "noext", MONA))) == "json"
    lib = Library.build(d, tmp_path / "l.fastspec", faiss=False, progress=False)
    assert len(lib) == 2 and [f["records"] for f in lib.input_files] == [2]


def test_review_bom_then_whitespace_and_jsonl_resync(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf\n" + json.dumps(GNPS).encode())
    assert len(fio.read(p)) == 2  # was: the whole array taken as one record and rejected
    lines = [json.dumps(GNPS[0]), '{"spectrum_id": "cut", "peaks_json": ', json.dumps(GNPS[1]), json.dumps(GNPS[0])]
    p = tmp_path / "lines.json"
    p.write_text("\n".join(lines) + "\n")
    s, r = fio.read(p, return_report=True)
    assert len(s) == 3 and r.n_records == 4 and [x.line for x in r.rejected] == [2]  # was: 1 spectrum, 2 records


def test_review_raise_names_first_bad_record(tmp_path):
    p = tmp_path / "order.json"
    p.write_text('[' + json.dumps(GNPS[0]) + ', {"spectrum_id": "nopeaks"}, ' + json.dumps(GNPS[1]) + ', {"a": ]')
    with pytest.raises(ParseError) as e:
        fio.read(p, on_error="raise")
    assert e.value.line == 2  # was 4 (the broken JSON), skipping the earlier bad record


def test_review_directory_sniffing(tmp_path):
    from fastspec.library import _expand_directories

    d = tmp_path / "lib"
    d.mkdir()
    (d / "hits.json").write_text(json.dumps([{"query": "q1", "spectrum": "CCMSLIB1", "compound": "caffeine"}]))
    (d / "params.json").write_text(json.dumps({"metric": "cosine", "compound": "x", "peaks": {"max": 100}}))
    mona = dict(MONA[0], compound=[dict(MONA[0]["compound"][0], molFile="x" * 6000)])
    (d / "mona.json").write_text(json.dumps([{k: mona[k] for k in ("id", "metaData", "compound", "spectrum")}]))
    gnps = dict(GNPS[0], Compound_Name="y" * 5000)
    (d / "gnps.json").write_text(json.dumps([{k: gnps[k] for k in ("spectrum_id", "Compound_Name", "peaks_json")}]))
    # an extension with a suffix (mzmine's "massbank.msp_NIST") counts when the content is of its format
    (d / "lib.msp_NIST").write_text("NAME: a\nPRECURSORMZ: 100\nNum Peaks: 1\n50 1\n")
    (d / "notes.msp_old").write_text("not a spectrum file\n")
    # a backup beside its file is no library tag: its spectra would be read twice
    (d / "lib.msp_old").write_text("NAME: a\nPRECURSORMZ: 100\nNum Peaks: 1\n50 1\n")
    (d / "lib.msp_BAK").write_text("NAME: a\nPRECURSORMZ: 100\nNum Peaks: 1\n50 1\n")
    (d / "v.msp_MoNA_v2").write_text("NAME: a\nPRECURSORMZ: 100\nNum Peaks: 1\n50 1\n")
    files, skipped = _expand_directories([d])
    assert sorted(f.rsplit("/", 1)[1] for f in files) == ["gnps.json", "lib.msp_NIST", "mona.json", "v.msp_MoNA_v2"]
    assert skipped == 5


def test_review_not_gzip_is_a_fastspec_error(tmp_path):
    p = tmp_path / "x.json.gz"
    p.write_text(json.dumps(GNPS))
    with pytest.raises(FastspecError, match="cannot read"):
        fio.read(p)


def test_lone_surrogate_escapes_become_replacement_characters(tmp_path):
    """``"\\udcff"`` is legal JSON text but no UTF-8 writer takes the lone surrogate it decodes to: it reads
    as U+FFFD, as bytes that are not UTF-8 do in the text formats; a real pair stays one character."""
    p = tmp_path / "s.json"
    p.write_text('[{"name": "caffeine \\udcff", "smiles": "\\ud83d\\ude00", "precursor_mz": 195.08, '
                 '"peaks_json": [[100.0, 1.0]]}]')
    s = fio.read(p)
    assert s.column("name") == ["caffeine \ufffd"] and s.column("smiles") == ["\U0001F600"]
    fio.write(s, tmp_path / "s.parquet")
    assert fio.read(tmp_path / "s.parquet").column("name") == ["caffeine \ufffd"]


def test_boolean_peak_values_are_rejected(tmp_path):
    """numpy reads JSON true / false as 1 / 0: a peak at m/z 1.0 was accepted (an audit). Such a record is
    rejected, counted with its reason; 0 and 1 as numbers are still values."""
    recs = [{"spectrum_id": "t", "precursor_mz": 200, "peaks_json": [[True, 10], [60, 5]]},
            {"spectrum_id": "s", "precursor_mz": 200, "peaks_json": "[[60, false], [70, 5]]"},
            {"spectrum_id": "ok", "precursor_mz": 200, "peaks_json": [[1, 1], [60, 0]]},
            {"spectrum_id": "flag", "precursor_mz": 200, "peaks_json": [[100.5, 1, True], [60, 5, False]]}]
    p = tmp_path / "b.json"
    p.write_text(json.dumps(recs))
    s, r = fio.read(p, return_report=True)
    assert s.ids == ["ok", "flag"] and s[0].mz.tolist() == [1.0, 60.0]  # (a third column is no peak value)
    assert r.counts_by_reason == {"unreadable peaks (peaks hold true / false, not numbers)": 2}


def test_mona_repeated_comments_are_joined(tmp_path):
    """MoNA keeps one metaData item per COMMENT line of the source record: the second was lost (an audit of
    record AU100601); they are joined with '; ' as the MassBank reader joins them."""
    rec = [{"id": "AU100601", "spectrum": "100:10 200:5", "metaData": [
        {"name": "comment", "value": "CONFIDENCE standard compound"}, {"name": "comment", "value": "INTERNAL_ID 1006"},
        {"name": "precursor m/z", "value": 301.1}, {"name": "precursor m/z", "value": 999.0}]}]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(rec))
    s = fio.read(p)
    assert s.metadata.column("comment").to_pylist() == ["CONFIDENCE standard compound; INTERNAL_ID 1006"]
    assert s.precursor_mz.tolist() == [301.1]  # other names: the first value
