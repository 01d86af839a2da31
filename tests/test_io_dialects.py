"""One hand-made fixture per dialect (tests/data): peaks and harmonised metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastspec.io as fio
from fastspec.spectra import CANONICAL_KEYS

DATA = Path(__file__).parent / "data"


def read(name, **kw):
    spectra, report = fio.read(DATA / name, return_report=True, **kw)
    report.check()
    assert list(spectra.metadata.column_names[: len(CANONICAL_KEYS)]) == list(CANONICAL_KEYS)
    return spectra, report


def md(spectra, i):
    return {k: v for k, v in spectra[i].metadata.items() if v is not None}


def peaks(spectra, i):
    return spectra[i].mz.tolist(), spectra[i].intensity.tolist()


def test_mgf_gnps():
    # hand-written records in the layout of a GNPS library MGF (invented peaks)
    s, r = read("mgf_gnps.mgf")
    assert (r.n_records, r.n_spectra, r.n_rejected) == (2, 2, 0)
    assert peaks(s, 0) == ([120.0813, 245.1102, 512.3375, 963.5301], [5000.0, 12000.0, 3000.0, 1500.0])
    m = md(s, 0)
    assert m["id"] == "CCMSLIB00000001547"
    assert m["name"] == "Hoiamide B M+H"  # kept as written
    assert m["adduct"] == "[M+H]+"  # GNPS library MGFs give the adduct only as the name's last word
    assert m["precursor_mz"] == 981.54
    assert m["charge"] == 1  # CHARGE=0 (unknown): from the adduct
    assert m["ion_mode"] == "positive"
    assert m["instrument_type"] == "LC-ESI-qTof"  # SOURCE_INSTRUMENT
    assert m["ms_level"] == "2"
    assert m["scans"] == "1" and m["submituser"] == "testuser"
    assert "inchi" not in m and "pubmed" not in m  # N/A -> missing
    m1 = md(s, 1)
    assert m1["charge"] == -1  # CHARGE=1 without sign, IONMODE=negative
    assert m1["ion_mode"] == "negative" and m1["adduct"] == "[M-H]-"
    assert s.charge.tolist() == [1, -1]
    assert r.warnings == {"adduct from name": 2}
    assert s.polarity.tolist() == [1, -1]


def test_mgf_massspecgym():
    s, _ = read("mgf_massspecgym.mgf")
    m = md(s, 0)
    assert m["id"] == "MassSpecGymID0000001"
    assert m["inchikey"] == "CBQJSKKFNMDLON" and m["inchikey14"] == "CBQJSKKFNMDLON"
    assert m["precursor_mz"] == 208.0968
    assert m["charge"] == 1 and m["ion_mode"] == "positive"  # from the adduct
    assert m["adduct"] == "[M+H]+"
    assert m["formula"] == "C11H13NO3"
    assert m["precursor_formula"] == "C11H14NO3"
    assert m["parent_mass"] == "207.0895"
    assert m["instrument_type"] == "Orbitrap"
    assert m["collision_energy"] == "30.0"
    assert m["fold"] == "train" and m["simulation_challenge"] == "True"
    assert peaks(s, 0)[0] == [91.0542, 120.0808, 162.0913]
    m1 = md(s, 1)
    assert m1["charge"] == -1 and m1["ion_mode"] == "negative"
    assert "collision_energy" not in m1  # empty value


def test_mgf_mzmine():
    s, r = read("mgf_mzmine.mgf")
    assert r.warnings.get("num_peaks mismatch") == 1  # second record declares 4, has 2
    m = md(s, 0)
    assert m["id"] == "1"  # FEATURE_ID
    assert m["precursor_mz"] == 286.1438
    assert m["precursor_intensity"] == 15230.5  # PEPMASS second value
    assert m["charge"] == 1 and m["ion_mode"] == "positive"
    assert m["rtinseconds"] == "125.4" and m["filename"] == "sample_01.mzML"
    assert "num_peaks" not in s.metadata.column_names
    m1 = md(s, 1)
    assert m1["charge"] == -2 and m1["ion_mode"] == "negative"  # CHARGE=2-
    assert "precursor_intensity" not in m1
    assert peaks(s, 1) == ([151.0037, 178.9986], [500.0, 7000.0])


def test_mgf_crlf_no_title_comments_scientific_unsorted():
    assert b"\r\n" in (DATA / "mgf_crlf_notitle.mgf").read_bytes()  # the fixture must keep its CRLF ends
    s, r = read("mgf_crlf_notitle.mgf")
    # third record has no peaks -> rejected; the COM= line before the first record is a global parameter
    assert (r.n_records, r.n_spectra, r.n_rejected) == (3, 2, 1)
    assert r.counts_by_reason == {"no peaks": 1}
    assert r.rejected[0].line == 20
    assert r.warnings == {"global parameters applied": 1}
    assert set(s.metadata.column("com").to_pylist()) == {"global parameters before the first record apply to every record"}
    assert r.n_fixed_unsorted == 1 and r.n_zero_intensity == 1 and r.n_with_duplicate_mz == 1
    # 1.5e2 -> 150; the zero peak kept; third column ignored; stable sort keeps duplicate order
    assert peaks(s, 0) == ([100.25, 100.25, 120.5, 150.0], [50.5, 10.0, 0.0, 300.0])
    m = md(s, 0)
    assert m["id"] == "crlf-1" and m["precursor_mz"] == 500.25 and m["precursor_intensity"] == 12000.0
    assert m["charge"] == 1 and m["ion_mode"] == "positive"
    assert "title" not in s.metadata.column_names
    m1 = md(s, 1)
    assert m1["precursor_mz"] == 250.1 and m1["charge"] == -2 and m1["ion_mode"] == "negative"
    assert "id" not in m1
    assert peaks(s, 1) == ([300.0], [0.5])


def test_msp_nist():
    s, r = read("msp_nist.msp")
    assert r.n_spectra == 2
    # "85 100; 86 50;" on one line, tab-separated and quoted annotations ignored
    assert peaks(s, 0) == ([85.0, 86.0, 103.0542, 121.0284, 147.0441], [100.0, 50.0, 20.0, 7.5, 15.0])
    m = md(s, 0)
    assert m["id"] == "NIST-0001" and m["name"] == "Hydroxychalcone"
    assert m["synonyms"] == ["2'-hydroxychalcone"]
    assert m["adduct"] == "[M+H]+"  # Synon: $:03
    assert m["inchikey"] == "UDOOPSJCRMKSGL-ZHACJKMWSA-N" and m["inchikey14"] == "UDOOPSJCRMKSGL"  # $:28
    assert m["instrument_type"] == "Q-TOF" and m["collision_energy"] == "35" and m["ms_level"] == "in-source"
    assert m["ion_mode"] == "positive" and m["charge"] == 1
    assert m["precursor_mz"] == 225.091
    assert m["smiles"] == "O=C(C=Cc1ccccc1O)c1ccccc1"  # from the Comments blob
    assert m["computed_smiles"] == "O=C(C=CC=1C=CC=CC1O)C=2C=CC=CC2"
    assert m["comment"] == "NIST Mass Spectrometry Data Center"
    m1 = md(s, 1)
    assert m1["precursor_mz"] == 250.6558 and m1["charge"] == 2 and m1["adduct"] == "[M+2H]2+"


def test_msp_msdial():
    s, r = read("msp_msdial.msp")
    m = md(s, 0)
    assert m["name"] == "Caffeic acid" and m["id"] == "MSDIAL-0001"  # from the unquoted Comment pairs
    assert m["precursor_mz"] == 179.035 and m["adduct"] == "[M-H]-"
    assert m["charge"] == -1 and m["ion_mode"] == "negative"
    assert m["formula"] == "C9H8O4" and m["inchikey14"] == "QAIPRVGONGVQAS"
    assert m["instrument_type"] == "LC-ESI-QTOF" and m["instrument"] == "Sciex TripleTOF 6600"
    assert m["collision_energy"] == "35"
    assert m["ontology"] == "Hydroxycinnamic acids" and m["retentiontime"] == "5.32" and m["ccs"] == "134.2"
    assert m["origin"] == "RIKEN" and "comment" not in m
    assert peaks(s, 0) == ([89.0395, 134.0371, 135.0445], [12.0, 100.0, 40.0])
    assert peaks(s, 1) == ([91.0542, 120.0811], [100.0, 10.0])  # unsorted -> sorted
    assert r.n_fixed_unsorted == 1
    assert md(s, 1)["ion_mode"] == "positive"


def test_msp_massbank_export():
    # a hand-written record in the layout of MassBank's MSP export (invented peaks and accession)
    s, _ = read("msp_massbank.msp")
    m = md(s, 0)
    assert m["id"] == "MSBNK-Fastspec_Test-MSP00001" and m["name"] == "4-Hydroxybenzoic acid"
    assert m["precursor_mz"] == 139.039
    # from the quoted "key=value" pairs of Comments:
    assert m["smiles"] == "OC(=O)c1ccc(O)cc1"
    assert m["inchi"].startswith("InChI=1S/C7H6O3")
    assert m["instrument_type"] == "LC-ESI-ITFT" and m["instrument"] == "Q-Exactive Orbitrap Thermo Scientific"
    assert m["ion_mode"] == "positive" and m["adduct"] == "[M+H]+" and m["charge"] == 1
    assert m["fragmentation_mode"] == "HCD" and m["collision_energy"] == "10(NCE)"
    assert m["exact_mass"] == "138.03169" and m["license"] == "CC0" and m["ms_level"] == "MS2"
    assert m["splash"].startswith("splash10-")
    assert m["synonyms"] == ["p-hydroxybenzoic acid"]
    mz, it = peaks(s, 0)
    assert mz == [65.0386, 93.0335, 95.0491, 121.0284, 139.039]
    assert it[0] == np.float32(1200.5)


def test_massspecgym_tsv():
    s, r = read("massspecgym.tsv")
    assert (r.n_records, r.n_spectra) == (3, 3)
    assert r.n_fixed_unsorted == 1
    m = md(s, 0)
    assert m["id"] == "MassSpecGymID0000001" and m["precursor_mz"] == 208.0968
    assert m["inchikey14"] == "CBQJSKKFNMDLON" and m["adduct"] == "[M+H]+" and m["charge"] == 1
    assert m["fold"] == "train" and m["parent_mass"] == "207.0895" and m["precursor_formula"] == "C11H14NO3"
    assert s[0].mz.tolist() == [91.0542, 120.0808, 162.0913]
    assert np.array_equal(s[0].intensity, np.float32([0.2454, 1.0, 0.0812]))
    assert "collision_energy" not in md(s, 1)
    assert peaks(s, 2) == ([50.5, 55.125, 60.25], [3.0, 1.0, 2.0])
    # the same spectra as the MGF flavour of MassSpecGym
    g = fio.read(DATA / "mgf_massspecgym.mgf")
    assert np.array_equal(g.mz, s.mz[: len(g.mz)]) and g.ids == s.ids[:2]


def test_mzml():
    pytest.importorskip("pyteomics")
    s, r = read("tiny.mzML")
    assert (r.n_records, r.n_spectra) == (2, 2)  # the MS1 scan is not a record
    assert r.warnings["spectra with ms level != 2 skipped"] == 1
    assert r.n_zero_intensity == 1
    m = md(s, 0)
    assert m["id"] == "scan=2" and m["precursor_mz"] == 195.0877 and m["charge"] == 1
    assert m["ion_mode"] == "positive" and m["fragmentation_mode"] == "HCD" and m["collision_energy"] == "30"
    assert m["precursor_intensity"] == 100000.0 and m["retention_time"] == pytest.approx(36.0)
    assert peaks(s, 0) == ([50.1, 75.25, 120.0], [5.0, 100.0, 0.0])
    m1 = md(s, 1)
    assert m1["charge"] == -1 and m1["ion_mode"] == "negative" and m1["fragmentation_mode"] == "CID"


@pytest.mark.parametrize("name", ["mgf_gnps.mgf", "msp_nist.msp", "massspecgym.tsv"])
def test_gzip_same_as_plain(tmp_path, name):
    import gzip

    gz = tmp_path / (name + ".gz")
    gz.write_bytes(gzip.compress((DATA / name).read_bytes()))
    a = fio.read(DATA / name)
    b = fio.read(gz)
    assert np.array_equal(a.mz, b.mz) and a.metadata.equals(b.metadata)


def test_format_sniffed_without_extension(tmp_path):
    for name, fmt in (("mgf_gnps.mgf", "mgf"), ("msp_nist.msp", "msp"), ("massspecgym.tsv", "tsv"),
                      ("tiny.mzML", "mzml")):
        p = tmp_path / f"{fmt}.txt"
        p.write_bytes((DATA / name).read_bytes())
        assert fio.detect_format(str(p)) == fmt
    assert len(fio.read(tmp_path / "mgf.txt")) == 2
    assert len(fio.read(tmp_path / "mgf.txt", format="mgf")) == 2


def test_msp_layout_variants(tmp_path):
    """GOLM mz:int pairs, "mz: int" lines, several pairs per line, no blank line between records, repeated
    Name:."""
    text = (
        "Name: colon\nNum Peaks: 3\n85: 100\n86:\t50\n87.5: 2.5e1; 88: 1\n\n"  # "mz: int", also in groups
        "Name: golm\nNum Peaks: 3\n70:10 71:5 73:999\n"          # GOLM pairs; next record follows at once
        "Name: multi\nPrecursorMZ: 300\n85 100 86 50 87 25\n"     # all-numeric line of three pairs
        "Name: nopeaks\n"                                          # a second Name: closes a record w/o peaks
        "Name: semicolons\n10 1; 20 2; 30 3;\n\n\n"
        "Name: annotated\n40\t4\t\"a b\"\n41 5 x-y\n"
    )
    p = tmp_path / "v.msp"
    p.write_text(text)
    s, r = fio.read(p, return_report=True)
    assert s.column("name") == ["colon", "golm", "multi", "semicolons", "annotated"]
    assert r.counts_by_reason == {"no peaks": 1} and r.rejected[0].line == 13
    assert peaks(s, 0) == ([85.0, 86.0, 87.5, 88.0], [100.0, 50.0, 25.0, 1.0])
    assert peaks(s, 1) == ([70.0, 71.0, 73.0], [10.0, 5.0, 999.0])
    assert peaks(s, 2) == ([85.0, 86.0, 87.0], [100.0, 50.0, 25.0])
    assert peaks(s, 3) == ([10.0, 20.0, 30.0], [1.0, 2.0, 3.0])
    assert peaks(s, 4) == ([40.0, 41.0], [4.0, 5.0])


def test_msp_gnps_key_equals_lines_and_stray_text(tmp_path):
    """GNPS MSP exports write MGF-style ``KEY=value`` lines among the metadata (matchms' own test file
    problematic_spectra.msp, which matchms refuses whole): they are metadata. A line of plain text among an
    entry's metadata makes the entry unparsable, whole: it used to start a new entry, whose peaks were
    kept without the name, precursor and ids written above the line."""
    text = ("NAME: HYDROXYPHENYLLACTATE M-H\r\nPRECURSORMZ: 181.050994873047\r\nIONMODE: Negative\r\nMSLEVEL: \r\n"
            "CHARGE=-1\r\nMSLEVEL=2\r\nSEQ=*..*\r\nSPECTRUMID=CCMSLIB00005463540\r\nCOMMENT: \r\nNum Peaks:2\r\n"
            "57.993649\t2301.143799\r\n58.669075\t0\r\n\r\n"
            "Name: stray\nPrecursorMZ: 200\nsome text without a colon\nComments: \"SMILES=CCO\"\nNum Peaks: 1\n100 10\n\n"
            "Name: B\nPrecursorMZ: 300\nNum Peaks: 1\n120 5\n")
    p = tmp_path / "gnps.msp"
    p.write_text(text)
    s, r = fio.read(p, return_report=True)
    r.check()
    assert r.n_records == 3 and s.column("name") == ["HYDROXYPHENYLLACTATE M-H", "B"]
    assert [(x.line, x.reason) for x in r.rejected] == [(16, "unparsable peak line")]
    m = md(s, 0)
    assert m["id"] == "CCMSLIB00005463540" and m["precursor_mz"] == 181.050994873047 and m["charge"] == -1
    assert m["ion_mode"] == "negative" and m["seq"] == "*..*"
    assert peaks(s, 0) == ([57.993649, 58.669075], [float(np.float32(2301.143799)), 0.0])
    # NAME= names an entry as Name: does (a second one starts the next entry); a bare InChI= line keeps
    # its prefix; a quoted or other non-peak line among the metadata rejects its entry whole
    p.write_text("Name: A\nPrecursorMZ: 100\n\nNAME=B\nPRECURSORMZ=200\nInChI=1S/C2H4O2/c1-2(3)4/h1H3,(H,3,4)\n"
                 "Num Peaks: 1\n85 100\n\nNAME=C\nPRECURSORMZ=300\nNAME=D\nPRECURSORMZ=400\nNum Peaks: 1\n86 10\n\n"
                 "Name: E\n\"SMILES=CCO\"\nNum Peaks: 1\n87 1\n")
    s, r = fio.read(p, return_report=True)
    r.check()
    assert s.column("name") == ["B", "D"] and s.precursor_mz.tolist() == [200.0, 400.0]
    assert md(s, 0)["inchi"] == "InChI=1S/C2H4O2/c1-2(3)4/h1H3,(H,3,4)"
    assert sorted((x.line, x.reason) for x in r.rejected) == [(1, "no peaks"), (10, "no peaks"), (18, "unparsable peak line")]


@pytest.mark.parametrize("fmt", ["mgf", "msp"])
def test_windows_encoded_text_and_bom(tmp_path, fmt):
    """Windows software writes cp1252 ("caf\\xe9ine") and sometimes a UTF-8 BOM: both read, nothing lost."""
    if fmt == "mgf":
        body = b"\xef\xbb\xbfBEGIN IONS\r\nTITLE=t1\r\nNAME=caf\xe9ine \xb5g\r\nPEPMASS=195.0877\r\n138.066 100\r\nEND IONS\r\n"
    else:
        body = b"\xef\xbb\xbfName: caf\xe9ine \xb5g\r\nPrecursorMZ: 195.0877\r\nNum Peaks: 1\r\n138.066\t100\r\n"
    path = tmp_path / f"win.{fmt}"
    path.write_bytes(body)
    spectra, report = fio.read(path, return_report=True)
    report.check()
    assert len(spectra) == 1 and report.n_rejected == 0
    assert spectra.metadata.column("name").to_pylist() == ["caf\u00e9ine \u00b5g"]
    assert spectra.precursor_mz.tolist() == [195.0877]


def test_pepmass_intensity_zero_is_unknown(tmp_path):
    # GNPS writes "PEPMASS=mz 0.0" when the precursor intensity is not known, as mzXML writes 0
    p = tmp_path / "g.mgf"
    p.write_text("BEGIN IONS\nPEPMASS=300.1 0.0\n100 1\nEND IONS\nBEGIN IONS\nPEPMASS=300.1 2500\n100 1\nEND IONS\n")
    s = fio.read(p)
    assert s.metadata.column("precursor_intensity").to_pylist() == [None, 2500.0]


def test_pepmass_third_value_is_the_charge(tmp_path):
    """``PEPMASS=983.6 1234 2+`` (pyteomics' test_pepmass.mgf): the third value is the charge, as pyteomics
    and matchms read it; a CHARGE line wins over it."""
    p = tmp_path / "c.mgf"
    p.write_text("BEGIN IONS\nPEPMASS=983.6 1234 2+\n100 1\nEND IONS\n"
                 "BEGIN IONS\nPEPMASS=983.6 1234 2+\nCHARGE=3+\n100 1\nEND IONS\n"
                 "BEGIN IONS\nPEPMASS=983.6 1234\n100 1\nEND IONS\n"
                 "BEGIN IONS\nPEPMASS=983.6 1234 1-\n100 1\nEND IONS\n")
    s = fio.read(p)
    assert s.charge.tolist() == [2, 3, 0, -1] and s.polarity.tolist() == [1, 1, 0, -1]
    assert s.precursor_mz.tolist() == [983.6] * 4
    # a file-wide CHARGE fills only records without a charge of their own, PEPMASS's included
    p.write_text("CHARGE=2+\nBEGIN IONS\nPEPMASS=300.1 1234 3+\n100 1\nEND IONS\nBEGIN IONS\nPEPMASS=300.1\n100 1\nEND IONS\n")
    assert fio.read(p).charge.tolist() == [3, 2]
    # ... and a global PEPMASS charge too, in whichever order the header lines come (as pyteomics reads it)
    for header in ("PEPMASS=300 1 2+\nCHARGE=3+\n", "CHARGE=3+\nPEPMASS=300 1 2+\n"):
        p.write_text(header + "BEGIN IONS\n100 1\nEND IONS\n")
        assert fio.read(p).charge.tolist() == [2]
    # a table's integer charge column with gaps takes PEPMASS's charges there
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"mz": [[100.0]] * 3, "intensity": [[1.0]] * 3, "pepmass": ["300.1 5 2+", "300.1 5 1-", "300.1"],
                             "charge": pa.array([3, None, None], pa.int64())}), tmp_path / "c.parquet")
    assert fio.read(tmp_path / "c.parquet").charge.tolist() == [3, -1, 0]
    for col in (pa.array([3, None, None], pa.uint8()), pa.array([3.0, np.nan, None])):  # unsigned; NaN gaps
        pq.write_table(pa.table({"mz": [[100.0]] * 3, "intensity": [[1.0]] * 3,
                                 "pepmass": ["300.1 5 2+", "300.1 5 1-", "300.1"], "charge": col}), tmp_path / "c.parquet")
        assert fio.read(tmp_path / "c.parquet").charge.tolist() == [3, -1, 0]


@pytest.mark.parametrize("extra,want", [("", ["17", "18"]), ("FEATURE_ID={n}\n", ["f17", "f18"]),
                                        ("TITLE=t{n}\n", ["tt17", "tt18"])])
def test_mgf_scans_is_the_id_of_last_resort(tmp_path, extra, want):
    """GNPS feature-based molecular networking MGFs give a spectrum's feature only as SCANS: it is the id
    (not the position, which silently shifted every join to the feature table), after any id key or TITLE."""
    text = "".join(f"BEGIN IONS\n{extra.format(n=('f' if 'FEATURE' in extra else 't') + str(n))}SCANS={n}\n"
                   f"PEPMASS=195.0877\nCHARGE=1+\nMSLEVEL=2\n110.07 10\n138.06 20\nEND IONS\n" for n in (17, 18))
    p = tmp_path / "fbmn.mgf"
    p.write_text(text)
    s = fio.read(p)
    assert s.ids == want
    assert s.metadata.column("scans").to_pylist() == ["17", "18"]


def test_mgf_scans_placeholder_is_no_id(tmp_path):
    """MZmine / SIRIUS write SCANS=-1 in every record: no id (positions), as FEATURE_ID=-1."""
    p = tmp_path / "mz.mgf"
    p.write_text("".join(f"BEGIN IONS\nSCANS={s}\nPEPMASS=100\n50 1\nEND IONS\n" for s in ("-1", "-1", "7")))
    assert fio.read(p).ids == ["0", "1", "7"]
