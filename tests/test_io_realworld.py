"""Quirks seen in real library files from other labs (MS-DIAL, MetaboScape, MoNA, GOLM, SIRIUS, Agilent,
NIST, Progenesis exports), each reproduced by a few hand-written lines."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

import fastspec.io as fio


def read(tmp_path, name, text, **kw):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    spectra, report = fio.read(p, return_report=True, **kw)
    report.check()
    return spectra, report


def md(spectra, i):
    return {k: v for k, v in spectra[i].metadata.items() if v is not None}


def test_mgf_ion_key_is_the_adduct(tmp_path):
    # MS-DIAL's GNPS export writes CHARGE=1+ in negative mode too; only ION= tells the polarity
    text = ("BEGIN IONS\nSCANS=1\nPEPMASS=165.038\nMSLEVEL=2\nCHARGE=1+\nION=[M-H]-\n83.115 6\nEND IONS\n\n"
            "BEGIN IONS\nFEATURE_ID=98\nPEPMASS=872.8334\nCHARGE=2+\nPOLARITY=POS\nION=[M+H+H]2+\n"
            "430.9 23.0\nEND IONS\n")
    s, r = read(tmp_path, "gnps_export.mgf", text)
    assert r.n_spectra == 2
    m0, m1 = md(s, 0), md(s, 1)
    assert m0["adduct"] == "[M-H]-" and m0["ion_mode"] == "negative" and m0["charge"] == -1
    assert s.charge.tolist() == [-1, 2] and r.warnings == {}
    assert m1["adduct"] == "[M+H+H]2+" and m1["ion_mode"] == "positive" and m1["charge"] == 2
    assert "ion" not in s.metadata.column_names


def test_mgf_explicit_adduct_beats_ion(tmp_path):
    text = "BEGIN IONS\nPEPMASS=300\nADDUCT=[M+Na]+\nION=[M+H]+\n100 1\nEND IONS\n"
    s, _ = read(tmp_path, "both.mgf", text)
    assert md(s, 0)["adduct"] == "[M+Na]+"


def test_msp_nist_ms_type_synonym_yields_to_spectrum_type(tmp_path):
    # MoNA exports carry "Synon: $:00in-source" on every record next to "Spectrum_type: MS2"
    text = ("Name: a\nSynon: $:00in-source\nSpectrum_type: MS2\nPrecursorMZ: 223.1\nNum Peaks: 1\n177.06 1.7\n\n"
            "Name: b\nSpectrum_type: MS1\nSynon: $:00in-source\nNum Peaks: 1\n100 1\n\n"
            "Name: c\nSynon: $:00MS2\nNum Peaks: 1\n100 1\n")
    s, r = read(tmp_path, "mona.msp", text)
    assert r.n_spectra == 3
    assert s.metadata.column("ms_level").to_pylist() == ["MS2", "MS1", "MS2"]


def test_msp_golm_structure_synonyms(tmp_path):
    text = ("Name: Glyoxylic acid (1MEOX) (1TMS)\n"
            "Synon: METB N: glyoxylic acid\n"
            "Synon: METB InChI: InChI=1S/C2H2O3/c3-1-2(4)5/h1H,(H,4,5)\n"
            "Synon: METB InChIKey: HHLFWLYXYJOTON-UHFFFAOYSA-N\n"
            "Synon: RI: 986,12\n"
            "Num Peaks: 3\n85:201 86:55 160:1000\n")
    s, _ = read(tmp_path, "golm.msp", text)
    m = md(s, 0)
    assert m["inchikey"] == "HHLFWLYXYJOTON-UHFFFAOYSA-N" and m["inchikey14"] == "HHLFWLYXYJOTON"
    assert m["inchi"] == "InChI=1S/C2H2O3/c3-1-2(4)5/h1H,(H,4,5)"
    assert m["synonyms"] == ["METB N: glyoxylic acid", "RI: 986,12"]
    assert s[0].mz.tolist() == [85.0, 86.0, 160.0]


def test_msp_unquoted_annotation_with_a_colon(tmp_path):
    # LipidBlast / MS-DIAL lipid libraries annotate peaks without quotes, and acyl chains hold a ':'
    # ("C18:1"), which once made the line read as GOLM "mz:int" pairs and the record rejected
    text = ("NAME: PC 34:1\nPRECURSORMZ: 760.5851\nPRECURSORTYPE: [M+H]+\nNum Peaks: 3\n"
            "184.07332\t999\tPrecursor\n478.32920\t50\t[M+H]+ -C18:1 FA\n577.51904\t20\t[M+H]+ -C5H14NO4P 16:0\n\n"
            "NAME: golm\nNum Peaks: 2\n 85:201 86:55\n")
    s, r = read(tmp_path, "lipids.msp", text)
    assert r.n_spectra == 2 and r.n_rejected == 0
    assert s[0].mz.tolist() == [184.07332, 478.3292, 577.51904] and s[0].intensity.tolist() == [999, 50, 20]
    assert s[1].mz.tolist() == [85.0, 86.0] and s[1].intensity.tolist() == [201, 55]


def test_quoted_structure_fields_lose_their_quotes(tmp_path):
    text = ('BEGIN IONS\nPEPMASS=17.03\nINCHI="InChI=1S/CH4/h1H4"\nSMILES="C"\nINCHIKEY="VNWKTOKETHGBQD-UHFFFAOYSA-N"\n'
            'NAME="methane"\n10 1\nEND IONS\n')
    s, _ = read(tmp_path, "quoted.mgf", text)
    m = md(s, 0)
    assert m["smiles"] == "C" and m["inchi"] == "InChI=1S/CH4/h1H4" and m["inchikey14"] == "VNWKTOKETHGBQD"
    assert m["name"] == '"methane"'  # other text is kept as written
    # quoted emptiness is missing, and leaves the field to its fallbacks
    text = ('BEGIN IONS\nPEPMASS=17.03\nSMILES=""\nINCHI="N/A"\nFORMULA=""\nFORMULA_SMILES="CH4"\n'
            'INCHIKEY=" VNWKTOKETHGBQD-UHFFFAOYSA-N "\n10 1\nEND IONS\n')
    s, _ = read(tmp_path, "quoted_empty.mgf", text)
    m = md(s, 0)
    assert "smiles" not in m and "inchi" not in m and m["formula"] == "CH4"
    assert m["inchikey"] == "VNWKTOKETHGBQD-UHFFFAOYSA-N"


@pytest.mark.parametrize("name,head,tool", [("lib.zip", b"PK\x03\x04", "unzip"), ("lib.msp.bz2", b"BZh91AY", "bunzip2")])
def test_archives_are_named_as_such(tmp_path, name, head, tool):
    from fastspec.errors import FastspecError

    (tmp_path / name).write_bytes(head + b"\x00" * 64)
    with pytest.raises(FastspecError, match=f"extract it first \\({tool}\\)"):
        fio.read(tmp_path / name)


def test_stored_zip_is_not_read_as_its_text(tmp_path):
    # a member stored uncompressed shows its MSP text in the first bytes; still an archive
    import zipfile

    from fastspec.errors import FastspecError

    with zipfile.ZipFile(tmp_path / "mona.zip", "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("mona.msp", "Name: a\nPrecursorMZ: 200\nNum Peaks: 1\n100 1\n\nName: b\nNum Peaks: 1\n90 1\n")
    with pytest.raises(FastspecError, match="a zip archive"):
        fio.read(tmp_path / "mona.zip")


def test_mgf_vendor_layouts(tmp_path):
    # SIRIUS: blank line before END IONS; Agilent: trailing blanks after PEPMASS and TITLE;
    # Progenesis: decimal commas in text fields, records without peaks
    text = ("BEGIN IONS\nSCANS=1\nPEPMASS=271.26239013671875\nCHARGE=1\nCOLLISION_ENERGY=0.0\n"
            "81.0694\t113731.75\n83.0851\t49690.87\n\nEND IONS\n"
            "BEGIN IONS\nPEPMASS=156.0422243 \nCHARGE=1+\nTITLE=AQ-II-r001.d, MS/MS of 156.0422243 1+ \n"
            "38.9628\t3709.413\nEND IONS\n"
            "BEGIN IONS\nFEATURE_ID=19\nPEPMASS=165.0381\nCHARGE=1-\nRTINMINUTES=0,74\nEND IONS\n")
    s, r = read(tmp_path, "vendors.mgf", text)
    assert (r.n_records, r.n_spectra, r.counts_by_reason) == (3, 2, {"no peaks": 1})
    assert s.precursor_mz.tolist() == [271.26239013671875, 156.0422243]
    assert s[0].mz.tolist() == [81.0694, 83.0851]
    assert md(s, 1)["id"] == "AQ-II-r001.d, MS/MS of 156.0422243 1+"


def test_msp_nist_and_msdial_layouts(tmp_path):
    # NIST: quoted peak annotations with blanks, "Key:value" without a blank; MS-DIAL: tab in the
    # Comment value, "Num Peaks: 0" (rejected, the next record still read)
    text = ("Name: TKPR/-1\nSynon: $:04632.3525\nSynon: $:03[M-H]-\nSynon: $:0515\nRI:572\n"
            "Num peaks: 3\n228.124 18.68 \"y2-42/-0.0112 4/14\"\n631.976 11.49 \"? 4/14\"\n"
            "632.343 999.00 \"p/-0.0099 14/14\"\n\n"
            "NAME: w/o MS2:L-Isoleucine\nPRECURSORMZ: 133.0997\nComment: \t160\nNum Peaks: 0\n\n"
            "NAME: METHYLGUANIDINE\nPRECURSORMZ: 74.09544\nPRECURSORTYPE: [M+H]+\nComment: \t18\n"
            "Num Peaks: 2\n74.05736\t55\n74.061\t55\n")
    s, r = read(tmp_path, "nist_msdial.msp", text)
    assert (r.n_records, r.n_spectra, r.counts_by_reason) == (3, 2, {"no peaks": 1})
    m0 = md(s, 0)
    assert m0["precursor_mz"] == 632.3525 and m0["adduct"] == "[M-H]-" and m0["collision_energy"] == "15"
    assert m0["ri"] == "572" and m0["ion_mode"] == "negative"
    assert s[0].mz.tolist() == [228.124, 631.976, 632.343]
    m1 = md(s, 1)
    assert m1["name"] == "METHYLGUANIDINE" and m1["comment"] == "18" and m1["charge"] == 1


@pytest.mark.parametrize("text, charges, modes", [
    # the adduct's sign wins over a contradicting CHARGE sign, magnitude kept; no adduct sign: as written
    ("CHARGE=1+\nION=[M-H]-", [-1], ["negative"]),
    ("CHARGE=2+\nADDUCT=[M-2H]2-", [-2], ["negative"]),
    ("CHARGE=1-\nADDUCT=[M+H]+", [1], ["positive"]),
    ("CHARGE=2+\nADDUCT=[M+H]+", [2], ["positive"]),
    ("CHARGE=1+\nADDUCT=M-H", [1], ["positive"]),
    # ... unless the ion mode sides with the adduct (two of three say negative)
    ("CHARGE=1+\nIONMODE=Negative\nADDUCT=M-H", [-1], ["negative"]),
    ("CHARGE=2+\nIONMODE=Negative\nADDUCT=M+FA-H", [-2], ["negative"]),
    ("CHARGE=1-\nIONMODE=Positive\nADDUCT=M+H", [1], ["positive"]),
    ("CHARGE=1-\nIONMODE=Negative\nADDUCT=M+H", [-1], ["negative"]),
    # an adduct taken from the name is stored bracketed: the bracket rule
    ("CHARGE=1+\nNAME=X M-H", [-1], ["negative"]),
    ("CHARGE=1+\nIONMODE=Negative", [1], ["negative"]),
    # an unbracketed adduct (GNPS) gives a missing charge and the sign of an unsigned one
    ("CHARGE=1\nADDUCT=M-H", [-1], ["negative"]),
    ("CHARGE=0\nADDUCT=M-H", [-1], ["negative"]),
    ("CHARGE=0\nIONMODE=Positive\nADDUCT=M+H", [1], ["positive"]),
    ("ADDUCT=[M+2H]++", [2], ["positive"]),
])
def test_mgf_adduct_sign_beats_charge_sign(tmp_path, text, charges, modes):
    s, r = read(tmp_path, "z.mgf", f"BEGIN IONS\nPEPMASS=300.1\n{text}\n100 1\nEND IONS\n")
    assert s.charge.tolist() == charges and s.metadata.column("ion_mode").to_pylist() == modes
    want = {"adduct from name": 1} if "NAME=" in text else {}
    if text == "CHARGE=1+\nIONMODE=Negative":  # nothing settles it: both kept, counted
        want = {"charge sign contradicts the ion mode (both kept; polarity from the ion mode)": 1}
    assert r.n_rejected == 0 and r.warnings == want


def test_msp_gnps_conversion_unbracketed_precursor_type_gives_the_charge(tmp_path):
    # MS-DIAL's MSP conversion of GNPS keeps GNPS's adduct spelling and writes no charge
    text = ("NAME: 3-Des-Microcystein_LR\nPRECURSORMZ: 981.54\nPRECURSORTYPE: M+H\nIONMODE: Positive\n"
            "Num Peaks: 1\n120.08\t5000\n\n"
            "NAME: b\nPRECURSORMZ: 301.1\nPRECURSORTYPE: M+FA-H\nNum Peaks: 1\n100\t1\n")
    s, r = read(tmp_path, "gnps_msdial.msp", text)
    assert s.charge.tolist() == [1, -1] and s.polarity.tolist() == [1, -1]
    assert s.metadata.column("adduct").to_pylist() == ["M+H", "M+FA-H"]  # as written
    assert r.warnings == {}


# the MassSpecGym release layout (columns in its order), values as in the file: full-precision
# intensities, an empty collision_energy, 'nan' where pandas wrote NaN
MSG_HEADER = ("identifier\tmzs\tintensities\tfold\tsmiles\tinchikey\tformula\tprecursor_formula\t"
              "parent_mass\tprecursor_mz\tadduct\tinstrument_type\tcollision_energy\n")
MSG_ROWS = [
    ["MassSpecGymID0000001", "91.0542,125.0233,154.0499,263.1388,280.1648",
     "0.24524524524524524,1.0,0.08108108108108109,0.03903903903903904,0.7457457457457457", "train",
     "CC(=O)N[C@@H](CC1=CC=CC=C1)C(O)=O", "FOMQEMMQSYBVSQ", "C17H21NO4", "C17H22NO4", "303.147058",
     "304.154334", "[M+H]+", "Orbitrap", "30.0"],
    ["MassSpecGymID0000002", "77.0386,105.0335,136.0393", "0.12,1.0,0.5", "val", "OC(=O)c1ccccc1",
     "WPYMKLBDIGXBTP", "C7H6O2", "C7H5O2", "122.036779", "121.029503", "[M-H]-", "QTOF", ""],
    ["MassSpecGymID0000003", "50.5,60.25,55.125", "3.0,2.0,1.0", "test", "C", "VNWKTOKETHGBQD", "CH4", "CH5",
     "16.0313", "nan", "[M+Na]+", "nan", "nan"],
]


def _msg_text(quote: bool) -> str:
    q = (lambda v: '"' + v.replace('"', '""') + '"') if quote else (lambda v: v)
    head = "\t".join(q(c) for c in MSG_HEADER.rstrip("\n").split("\t")) + "\n"
    return head + "".join("\t".join(q(v) for v in row) + "\n" for row in MSG_ROWS)


@pytest.mark.parametrize("variant", ["plain", "gzip", "quoted"])
def test_massspecgym_tsv_every_column_harmonised(tmp_path, variant):
    # "quoted": R's write.table and csv.QUOTE_ALL put every field, header included, in double quotes
    text = _msg_text(variant == "quoted")
    p = tmp_path / ("msg.tsv.gz" if variant == "gzip" else "msg.tsv")
    p.write_bytes(gzip.compress(text.encode()) if variant == "gzip" else text.encode())
    s, r = fio.read(p, return_report=True)
    r.check()
    assert (r.n_records, r.n_spectra, r.n_rejected, r.warnings) == (3, 3, 0, {})
    assert s.ids == ["MassSpecGymID0000001", "MassSpecGymID0000002", "MassSpecGymID0000003"]
    m0, m1, m2 = md(s, 0), md(s, 1), md(s, 2)
    assert m0 == {"id": "MassSpecGymID0000001", "precursor_mz": 304.154334, "charge": 1, "ion_mode": "positive",
                  "adduct": "[M+H]+", "formula": "C17H21NO4", "smiles": "CC(=O)N[C@@H](CC1=CC=CC=C1)C(O)=O",
                  "inchikey": "FOMQEMMQSYBVSQ", "inchikey14": "FOMQEMMQSYBVSQ", "instrument_type": "Orbitrap",
                  "collision_energy": "30.0", "fold": "train", "precursor_formula": "C17H22NO4",
                  "parent_mass": "303.147058"}
    assert m1["charge"] == -1 and m1["ion_mode"] == "negative" and "collision_energy" not in m1
    assert "precursor_mz" not in m2 and "instrument_type" not in m2 and "collision_energy" not in m2
    assert m2["charge"] == 1 and m2["adduct"] == "[M+Na]+" and np.isnan(s.precursor_mz[2])
    assert s[0].mz.tolist() == [91.0542, 125.0233, 154.0499, 263.1388, 280.1648]
    assert s[0].intensity.tolist() == np.float32([0.24524524524524524, 1.0, 0.08108108108108109,
                                                  0.03903903903903904, 0.7457457457457457]).tolist()
    assert s[2].mz.tolist() == [50.5, 55.125, 60.25] and r.n_fixed_unsorted == 1
    for name in ("mzs", "intensities", "identifier"):
        assert name not in s.metadata.column_names


def test_tsv_quotes_inside_values(tmp_path):
    # pandas quotes a value holding a double quote and doubles it; a quote inside a value, or one
    # that is never closed, is kept as it is and does not swallow the next fields or rows
    text = ('identifier\tmzs\tintensities\tname\n'
            '"a"\t"100,200"\t"1,2"\t"Vitamin ""D"""\n'
            'b\t100\t1\t"unclosed\n'
            "c\t150\t1\t5'-\"AMP\"\n")
    s, r = read(tmp_path, "q.tsv", text)
    assert r.n_spectra == 3 and s.ids == ["a", "b", "c"]
    assert s.metadata.column("name").to_pylist() == ['Vitamin "D"', '"unclosed', "5'-\"AMP\""]
    assert s[0].mz.tolist() == [100.0, 200.0]


def test_msp_thermo_comments_quote_only_values(tmp_path):
    # Thermo (mzVault, GC-Orbitrap) libraries: Comments: Key="value, with blanks" Key2="..."; MoNA quotes whole pairs
    text = ('Name: probe\nPrecursorMZ: 100\nComments: ColumnType="DB-5, 30 m" SMILES="C=CC(=O)O" '
            'InChIKey="NIXOWILDQLNWCW-UHFFFAOYSA-N" Native_Metabolite_CAS#="79-10-7" Category="Acid"\nNum Peaks: 1\n55 100\n\n'
            'Name: mona\nPrecursorMZ: 100\nComments: "SMILES=C=CC(=O)O" "computed InChIKey=NIXOWILDQLNWCW-UHFFFAOYSA-N" '
            'loose text\nNum Peaks: 1\n55 100\n')
    s, r = read(tmp_path, "thermo.msp", text)
    m0, m1 = md(s, 0), md(s, 1)
    assert m0["smiles"] == "C=CC(=O)O" and m0["inchikey"] == "NIXOWILDQLNWCW-UHFFFAOYSA-N"
    assert m0["columntype"] == "DB-5, 30 m" and m0["category"] == "Acid" and m0["native_metabolite_cas"] == "79-10-7"
    assert "comment" not in m0
    assert m1["smiles"] == "C=CC(=O)O" and m1["comment"] == "loose text"


def test_mgf_zero_charge_with_sign_gives_polarity(tmp_path):
    # MZmine's SIRIUS export: CHARGE=0- for an uncharged negative-mode feature; an unsigned charge stays positive
    text = ("BEGIN IONS\nFEATURE_ID=7\nPEPMASS=301.0712\nCHARGE=0-\nMSLEVEL=2\n151.0031 1000\nEND IONS\n"
            "BEGIN IONS\nFEATURE_ID=8\nPEPMASS=301.0712\nCHARGE=0+\n151.0031 1000\nEND IONS\n"
            "BEGIN IONS\nFEATURE_ID=9\nPEPMASS=301.0712\nCHARGE=1\n151.0031 1000\nEND IONS\n"
            "BEGIN IONS\nFEATURE_ID=10\nPEPMASS=301.0712\nCHARGE=0\n151.0031 1000\nEND IONS\n")
    s, r = read(tmp_path, "sirius.mgf", text)
    assert s.charge.tolist() == [0, 0, 1, 0]
    assert s.polarity.tolist() == [-1, 1, 1, 0]
    assert s.metadata.column("ion_mode").to_pylist() == ["negative", "positive", "positive", None]
    # MZmine 2's GNPS export writes that bare CHARGE=1 for negative-mode spectra of unknown charge too: the
    # guess is counted, not silent
    assert r.warnings == {"positive ion mode taken from a charge written without sign": 1}


def test_mgf_signed_charge_against_ion_mode_is_counted(tmp_path):
    """A signed charge against the ion mode field with no adduct to settle it keeps both as written (the
    polarity from the ion mode) and is counted, not silent (an audit); an adduct decides as before."""
    text = ("BEGIN IONS\nTITLE=b\nPEPMASS=300.2\nCHARGE=1+\nIONMODE=Negative\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=f\nPEPMASS=300.2\nCHARGE=-1\nIONMODE=positive\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=ok\nPEPMASS=300.2\nCHARGE=1-\nIONMODE=negative\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=h\nPEPMASS=300.2\nCHARGE=1+\nIONMODE=negative\nADDUCT=[M-H]-\n100 10\nEND IONS\n")
    s, r = read(tmp_path, "c.mgf", text)
    assert s.charge.tolist() == [1, -1, -1, -1]
    assert s.polarity.tolist() == [-1, 1, -1, -1]
    assert r.warnings == {"charge sign contradicts the ion mode (both kept; polarity from the ion mode)": 2}


def test_msp_massbank_style_keys_with_subtags(tmp_path):
    """matchms' save_as_msp(style="massbank") writes MassBank tags with their subtag as MSP keys."""
    text = ("CH$NAME: Caffeic acid\nMS$FOCUSED_ION:PRECURSOR_M/Z: 179.0349\nMS$FOCUSED_ION:PRECURSOR_TYPE: [M-H]-\n"
            "AC$MASS_SPECTROMETRY:ION_MODE: negative\nCH$LINK:INCHIKEY: QAIPRVGONGVQAS-DUXPYHPUSA-N\n"
            "AC$MASS_SPECTROMETRY:COLLISION_ENERGY: 35 eV\nACCESSION: AU100601\nNUM PEAKS: 2\n89.0244\t12.5\n"
            "134.0371\t100.0\n\n")
    s, _ = read(tmp_path, "matchms.msp", text)
    m = md(s, 0)
    assert s.precursor_mz.tolist() == [179.0349] and s.polarity.tolist() == [-1] and s.charge.tolist() == [-1]
    assert (m["id"], m["name"], m["adduct"], m["inchikey"], m["collision_energy"]) == \
        ("AU100601", "Caffeic acid", "[M-H]-", "QAIPRVGONGVQAS-DUXPYHPUSA-N", "35 eV")
    # only MassBank's tags that take subtags: a name or an instrument holding a colon stays what it is
    s, _ = read(tmp_path, "colon.msp", text.replace("Caffeic acid", "Tris: buffer substance")
                .replace("ACCESSION", "AC$INSTRUMENT: maXis: Bruker impact II\nACCESSION"))
    assert (md(s, 0)["name"], md(s, 0)["instrument"]) == ("Tris: buffer substance", "maXis: Bruker impact II")
    assert not [c for c in s.metadata.column_names if c.startswith(("ch_name", "ac_instrument"))]


def test_massbank_1x_and_msdial_massbank_export(tmp_path):
    """MassBank 1.x records give ion mode, MS type and energy as AC$ANALYTICAL_CONDITION subtags; MS-DIAL's
    MassBank-format export writes CH$INCHIKEY, MS$FOCUSED_ION: ADDUCT_Ion and AC$COLLISIONENERGY."""
    v1 = ("ACCESSION: KO000001\nRECORD_TITLE: Acetoacetate; LC-ESI-QQ; MS2; CE:10 V; [M-H]-\nCH$NAME: Acetoacetate\n"
          "CH$FORMULA: C4H6O3\nAC$INSTRUMENT_TYPE: LC-ESI-QQ\nAC$ANALYTICAL_CONDITION: MS_TYPE MS2\n"
          "AC$ANALYTICAL_CONDITION: MODE NEGATIVE\nAC$ANALYTICAL_CONDITION: COLLISION_ENERGY 10 V\n"
          "MS$FOCUSED_ION: PRECURSOR_M/Z 101.0244\nPK$NUM_PEAK: 2\nPK$PEAK: m/z int. rel.int.\n  57.3 14064 999\n"
          "  101.3 3432 243\n//\n")
    s, _ = read(tmp_path, "KO000001.txt", v1, format="massbank")
    m = md(s, 0)
    assert s.polarity.tolist() == [-1] and (m["collision_energy"], m["ms_level"]) == ("10 V", "MS2")
    msdial = ("ACCESSION: ......\nRECORD_TITLE: Caffeine\nCH$NAME: Caffeine\nCH$INCHIKEY: RYYVLZVUVIJVGH-UHFFFAOYSA-N\n"
              "MS$FOCUSED_ION: PRECURSOR_M/Z 195.08765\nMS$FOCUSED_ION: ADDUCT_Ion [M+H]+\nAC$COLLISIONENERGY: 35\n"
              "PK$NUM_PEAK: 2\nPK$PEAK: m/z int. rel.int.\n110.07128 1200 120.0\n138.06619 9990 999.0\n//\n")
    s, _ = read(tmp_path, "msdial.txt", msdial, format="massbank")
    m = md(s, 0)
    assert s.polarity.tolist() == [1] and s.charge.tolist() == [1]
    assert (m["adduct"], m["inchikey"], m["collision_energy"]) == ("[M+H]+", "RYYVLZVUVIJVGH-UHFFFAOYSA-N", "35")


def test_mgf_msdial_mascot_export(tmp_path):
    """MS-DIAL's Mascot-format MGF export names the adduct ADDUCTIONNAME and the compound METABOLITENAME."""
    text = ("BEGIN IONS\nTITLE=Caffeine\nRTINMINUTES=6.1\nPEPMASS=195.08765\nMETABOLITENAME=Caffeine\n"
            "ADDUCTIONNAME=[M+H]+\n110.07128 1200\nEND IONS\n\nBEGIN IONS\nTITLE=Unknown\nPEPMASS=179.03501\n"
            "METABOLITENAME=\nADDUCTIONNAME=[M-H]-\n135.04515 999\nEND IONS\n")
    s, _ = read(tmp_path, "msdial.mgf", text.replace("RTINMINUTES=6.1", "RTINMINUTES=6.1\nFragmenation_method=HCD"))
    assert s.polarity.tolist() == [1, -1] and s.charge.tolist() == [1, -1]
    assert md(s, 0)["fragmentation_mode"] == "HCD"  # MZmine 3's misspelt key, read as meant
    assert [md(s, i).get("adduct") for i in (0, 1)] == ["[M+H]+", "[M-H]-"] and md(s, 0)["name"] == "Caffeine"


MGF_GLOBAL = ("COM=Mascot-style header: these apply to every record\r\nCHARGE=1+\nINSTRUMENT_TYPE=LC-ESI-QTOF\n"
              "COLLISION_ENERGY=20\n# a comment\nnot a parameter\nBEGIN IONS\nTITLE=a\nPEPMASS=200.1\n50 10\n"
              "60 20\nEND IONS\nBEGIN IONS\nTITLE=b\nPEPMASS=300.2\nCHARGE=1-\nCOLLISION_ENERGY=40\n70 5\nEND IONS\n"
              "LATE=a parameter after the first record is not global\n")


def test_mgf_global_parameters_fill_unset_keys(tmp_path):
    s, r = read(tmp_path, "mascot.mgf", MGF_GLOBAL)
    assert r.n_spectra == 2
    assert r.warnings == {"global parameters applied": 4, "lines outside records": 2}
    assert s.charge.tolist() == [1, -1] and s.polarity.tolist() == [1, -1]
    m0, m1 = md(s, 0), md(s, 1)
    assert m0["instrument_type"] == m1["instrument_type"] == "LC-ESI-QTOF"
    assert m0["collision_energy"] == "20" and m1["collision_energy"] == "40"  # a record's own value wins
    assert m0["com"] == m1["com"] == "Mascot-style header: these apply to every record"
    assert "late" not in s.metadata.column_names
    # the same whatever the block size (the header may span blocks)
    from fastspec.io import mgf
    from fastspec.io._common import ReadReport

    r2 = ReadReport(path=str(tmp_path / "mascot.mgf"))
    parts = list(mgf.iter_spectra(str(tmp_path / "mascot.mgf"), on_error="raise", report=r2, block_bytes=16))
    assert [p.charge.tolist() for p in parts if len(p)] == [[1], [-1]]
    assert [c for p in parts for c in p.metadata.column("collision_energy").to_pylist()] == ["20", "40"]
    assert r2.warnings == r.warnings


def test_mgf_global_parameters_as_pyteomics(tmp_path):
    # matchms reads MGF through pyteomics, whose use_header applies the same defaults
    mgf = pytest.importorskip("pyteomics.mgf")
    s, _ = read(tmp_path, "mascot.mgf", MGF_GLOBAL)
    ref = list(mgf.read(str(tmp_path / "mascot.mgf"), use_header=True))
    assert [int(sp["params"]["charge"][0]) for sp in ref] == s.charge.tolist()
    assert [sp["params"]["collision_energy"] for sp in ref] == [md(s, i)["collision_energy"] for i in range(2)]


def test_mgf_files_with_bom_concatenated(tmp_path):
    # Windows exports joined with `cat a.mgf b.mgf`: the second file's byte order mark starts a line
    one = "\ufeffBEGIN IONS\r\nTITLE={t}\r\nPEPMASS={p}\r\n100.0 10\r\n150.0 20\r\nEND IONS\r\n"
    s, r = read(tmp_path, "all.mgf", one.format(t="a", p=200.1) + one.format(t="b", p=300.1))
    assert (r.n_records, r.n_spectra, r.warnings) == (2, 2, {})
    assert s.metadata.column("id").to_pylist() == ["a", "b"] and s.precursor_mz.tolist() == [200.1, 300.1]
    s, r = read(tmp_path, "all.msp", "\ufeffName: a\nNum Peaks: 1\n100 1\n\n\ufeffName: b\nNum Peaks: 1\n100 1\n")
    assert s.metadata.column("name").to_pylist() == ["a", "b"]


def test_mgf_cut_off_record_tail_is_no_header(tmp_path):
    """A file split with `split -l` starts inside a record: its key lines are no global parameters (they
    would give every record that compound's name and SMILES), whatever the block size."""
    from fastspec.errors import ParseError
    from fastspec.io import mgf
    from fastspec.io._common import ReadReport

    text = ("NAME=Bortezomib [M+Na]\nSMILES=C1=CN=CC(=N1)C(=O)N\nSPECTRUMID=CCMSLIB00000077995\n95.886879\t236.0\n"
            "END IONS\n\nBEGIN IONS\nPEPMASS=300.1\nCHARGE=1+\nTITLE=feature 7\n150.0 10\n200.0 20\nEND IONS\n")
    s, r = read(tmp_path, "part2.mgf", text)
    assert r.n_spectra == 1 and r.warnings == {"lines outside records": 5}
    # the tail is a record without BEGIN IONS: rejected, at its peak line (the first that is no key line)
    assert [(x.line, x.reason.split(" (")[0]) for x in r.rejected] == [(4, "record without BEGIN IONS")]
    assert md(s, 0)["id"] == "feature 7" and "smiles" not in md(s, 0) and "name" not in md(s, 0)
    r2 = ReadReport(path=str(tmp_path / "part2.mgf"))
    parts = list(mgf.iter_spectra(str(tmp_path / "part2.mgf"), on_error="skip", report=r2, block_bytes=16))
    assert [m for p in parts for m in p.metadata.column("smiles").to_pylist()] == [None]
    assert r2.warnings == r.warnings and r2.counts_by_reason == r.counts_by_reason
    with pytest.raises(ParseError, match="part2.mgf:4: record without BEGIN IONS"):
        list(mgf.iter_spectra(str(tmp_path / "part2.mgf"), on_error="raise", report=ReadReport(), block_bytes=16))
    # a real header after such a tail still applies
    s, r = read(tmp_path, "part3.mgf", text.replace("END IONS\n\nBEGIN", "END IONS\nCHARGE=2+\nINSTRUMENT=QTOF\nBEGIN"))
    assert md(s, 0)["instrument"] == "QTOF" and r.warnings == {"global parameters applied": 2, "lines outside records": 5}


def test_cr_only_line_endings_are_refused(tmp_path):
    from fastspec.errors import ParseError

    for name, text in (("mac.mgf", "BEGIN IONS\rPEPMASS=200\r100 1\rEND IONS\r"), ("mac.msp", "Name: a\rNum Peaks: 1\r100 1\r")):
        p = tmp_path / name
        p.write_bytes(text.encode())
        with pytest.raises(ParseError, match="CR only"):
            fio.read(p)


def test_msp_explicit_lines_beat_synonyms_and_comments(tmp_path):
    # RAMClustR writes "$:04 0" placeholders; an explicit PrecursorMZ / Precursor_type line must win
    text = ("Name: a\nSYNON: $:04 0\nSYNON: $:03[M+H]+\nPrecursorMZ: 301.1410\nPrecursor_type: [M+Na]+\n"
            "Comments: \"precursor m/z=999\" \"adduct=[M+K]+\"\nNum Peaks: 1\n120.08 10\n\n"
            "Name: b\nSYNON: $:04401.2\nSYNON: $:03[M-H]-\nNum Peaks: 1\n120.08 10\n\n"
            "Name: c\nComments: \"precursor_mz=155.5\"\nNum Peaks: 1\n120.08 10\n")
    s, r = read(tmp_path, "synon.msp", text)
    assert s.precursor_mz.tolist() == [301.141, 401.2, 155.5]
    assert s.metadata.column("adduct").to_pylist() == ["[M+Na]+", "[M-H]-", None]
    assert r.warnings == {}


def test_msp_mona_ionization_mode_comment_is_the_polarity(tmp_path):
    # MoNA's MSP Comments name the polarity "ionization mode" ("ionization" is the source, ESI); records
    # without an Ion_mode line (GC-MS, some LC exports) have no other polarity
    text = ('Name: a\nDB#: X1\nComments: "accession=X1" "ionization=ESI" "ms level=MS2" '
            '"precursor m/z=301.1466" "ionization mode=negative"\nNum Peaks: 1\n99.09 1\n\n'
            'Name: b\nIon_mode: P\nComments: "ionization mode=negative"\nNum Peaks: 1\n99.09 1\n')
    s, _ = read(tmp_path, "mona.msp", text)
    assert s.metadata.column("ion_mode").to_pylist() == ["negative", "positive"]
    assert s.polarity.tolist() == [-1, 1]
    assert md(s, 0)["ionization"] == "ESI" and "ionization_mode" not in s.metadata.column_names


def test_msp_nist_cas_line_holds_two_keys(tmp_path):
    text = "Name: Benzene\nCAS#: 71-43-2;  NIST#: 291514\nDB#: 1\nNum Peaks: 2\n(50 70) (78 999)\n"
    s, _ = read(tmp_path, "nist_ei.msp", text)
    m = md(s, 0)
    assert (m["cas"], m["nist"], m["id"]) == ("71-43-2", "291514", "1")


def test_msfinder_mat_blocks_share_the_compound(tmp_path):
    """MS-FINDER / MS-DIAL .mat: the compound's metadata, then an MS1 block and an MS2 block. The MS2
    block is the compound's spectrum (its metadata), the MS1 block is counted as MS1 at index time;
    SPECTRUMTYPE (Centroid) is not the MS level. Same with tiny blocks (the carry across blocks)."""
    from fastspec.io import msp
    from fastspec.io._common import ReadReport

    one = ("NAME: Unknown_{i}\nPRECURSORMZ: 301.14102\nPRECURSORTYPE: [M+H]+\nIONMODE: Positive\n"
           "SPECTRUMTYPE: Centroid\nMSTYPE: MS1\nNum Peaks: 2\n301.14102\t152345\n302.14430\t30120\n"
           "MSTYPE: MS2\nNum Peaks: 2\n120.08112\t1052\n166.08662\t10233\n")
    text = one.format(i=1) + "\n" + one.format(i=2)
    s, r = read(tmp_path, "msfinder.mat", text, format="msp")
    assert r.n_spectra == 4 and r.warnings == {}
    meta = s.metadata
    assert meta.column("ms_level").to_pylist() == ["MS1", "MS2"] * 2
    assert meta.column("name").to_pylist() == ["Unknown_1", "Unknown_1", "Unknown_2", "Unknown_2"]
    assert meta.column("adduct").to_pylist() == ["[M+H]+"] * 4 and s.precursor_mz.tolist() == [301.14102] * 4
    r2 = ReadReport(path=str(tmp_path / "msfinder.mat"))
    parts = [p for p in msp.iter_spectra(str(tmp_path / "msfinder.mat"), on_error="raise", report=r2, block_bytes=40)
             if len(p)]
    assert [n for p in parts for n in p.metadata.column("name").to_pylist()] == meta.column("name").to_pylist()
    assert [x for p in parts for x in p.precursor_mz.tolist()] == [301.14102] * 4


def test_numeric_charge_one_in_negative_mode_is_negative(tmp_path):
    """A pandas/matchms table with charge 1 next to ionmode negative reads as the same row in TSV or MGF
    does (an unsigned charge in negative mode is negative); a negative number keeps its sign."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"mz": [[85.0, 101.0]] * 3, "intensities": [[1.0, 2.0]] * 3, "precursor_mz": [191.02] * 3,
                  "charge": pa.array([1, -2, 1], pa.int64()), "ionmode": ["negative", "negative", "positive"]})
    pq.write_table(t, tmp_path / "neg.parquet")
    s = fio.read(tmp_path / "neg.parquet")
    assert s.charge.tolist() == [-1, -2, 1]
    assert s.metadata.column("ion_mode").to_pylist() == ["negative", "negative", "positive"]


def _rows_by_block(path, fmt, block_bytes):
    from fastspec.io import mgf, msp
    from fastspec.io._common import ReadReport

    rep = ReadReport(path=str(path))
    mod = mgf if fmt == "mgf" else msp
    rows = [m for p in mod.iter_spectra(str(path), on_error="skip", report=rep, block_bytes=block_bytes)
            for m in p.metadata.to_pylist()]
    return [{k: v for k, v in r.items() if v is not None} for r in rows], rep.warnings


@pytest.mark.parametrize("block_bytes", [16, 40, 100, 32 << 20])
def test_msp_dialect_rules_hold_whatever_the_block_size(tmp_path, block_bytes):
    """Review of the .mat / Synon rules: judged per record (not per block), carried across blocks."""
    cases = {
        # a single-compound .mat without a trailing blank line, with a plain synonym (a list column)
        "one.mat": ("NAME: U1\nSYNON: alpha\nPRECURSORMZ: 301.14102\nMSTYPE: MS1\nNum Peaks: 1\n301.14102\t15\n"
                    "MSTYPE: MS2\nNum Peaks: 1\n120.08112\t1052\n",
                    [dict(name="U1", synonyms=["alpha"], ms_level="MS1"), dict(name="U1", synonyms=["alpha"], ms_level="MS2")]),
        # two MSTYPE blocks after the compound: both take its metadata
        "three.mat": ("NAME: U1\nPRECURSORMZ: 301.14102\nMSTYPE: MS1\nNum Peaks: 1\n301.1\t15\nMSTYPE: MS2\n"
                      "Num Peaks: 1\n120.1\t10\nMSTYPE: MS2\nNum Peaks: 1\n121.1\t10\n",
                      [dict(name="U1", ms_level="MS1"), dict(name="U1", ms_level="MS2"), dict(name="U1", ms_level="MS2")]),
        # an MS1 block without peaks: one record, the MS2 block's type and peak count win
        "empty_ms1.mat": ("NAME: U1\nPRECURSORMZ: 301.14102\nSPECTRUMTYPE: Centroid\nMSTYPE: MS1\nNum Peaks: 0\n"
                          "MSTYPE: MS2\nNum Peaks: 2\n120.1\t10\n166.1\t20\n", [dict(name="U1", ms_level="MS2")]),
        # a blank line between: a separate entry, it does not take the previous compound's metadata
        "sep.msp": ("Name: Caffeine\nSMILES: CN1C=NC2=C1C(=O)N(C(=O)N2C)C\nPrecursorMZ: 195.0877\nNum Peaks: 1\n"
                    "138.06 100\n\nMSTYPE: MS2\nNum Peaks: 1\n120.08 10\n",
                    [dict(name="Caffeine"), dict(ms_level="MS2")]),
        # peak lines with '=' in an annotation or a leading '+' still count as peaks before an MSTYPE block
        "eq.mat": ("NAME: X\nPRECURSORMZ: 300.1\nMSTYPE: MS1\nNum Peaks: 1\n+300.1\t20\t\"[M+H]+ ppm=1.2\"\n"
                   "MSTYPE: MS2\nNum Peaks: 1\n120.1\t10\n", [dict(name="X", ms_level="MS1"), dict(name="X", ms_level="MS2")]),
        # Comments "synonyms=bar" is a one-item list like the Synon lines' column, in any block
        "syn.msp": ("Name: A\nSynon: foo\nNum Peaks: 1\n100 5\n\nName: B\nComments: \"synonyms=bar\"\nNum Peaks: 1\n"
                    "100 5\n\nName: C\nNum Peaks: 1\n100 5\n",
                    [dict(name="A", synonyms=["foo"]), dict(name="B", synonyms=["bar"]), dict(name="C")]),
        # explicit beats Synon per record, whatever other records of the block hold
        "ram.msp": ("NAME: m\nPRECURSOR_MZ: 200.1\nNum Peaks: 1\n100 1\n\nName: C1\nSYNON: $:04 0\n"
                    "PrecursorMZ: 301.1410\nSYNON: $:11P\nIONMODE: -\nNum Peaks: 1\n120.08 10\n\n"
                    "Name: C2\nPrecursorMZ: 155.5\nSynon: $:03[M+H]+\nComments: \"precursor type=[M+K]+\"\n"
                    "Num Peaks: 1\n120.08 10\n",
                    [dict(name="m", precursor_mz=200.1), dict(name="C1", precursor_mz=301.141, ion_mode="negative"),
                     dict(name="C2", precursor_mz=155.5, adduct="[M+H]+")]),
    }
    for name, (text, want) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        rows, warnings = _rows_by_block(p, "msp", block_bytes)
        assert len(rows) == len(want), name
        for row, w in zip(rows, want):
            assert {k: row.get(k) for k in w} == w, (name, row)
        if name == "empty_ms1.mat":
            assert warnings == {}  # Num Peaks: the last value (2), no mismatch
        if name == "sep.msp":
            assert "name" not in rows[1] and "precursor_mz" not in rows[1]


def test_mgf_header_after_a_long_preamble(tmp_path):
    text = "#" * 60 + "\n"
    p = tmp_path / "long.mgf"
    p.write_text(text * 20_000 + "CHARGE=2+\nINSTRUMENT=QTOF\nBEGIN IONS\nPEPMASS=300\n100 1\nEND IONS\n")
    for bb in (4096, 32 << 20):
        rows, warnings = _rows_by_block(p, "mgf", bb)
        assert rows[0]["instrument"] == "QTOF" and rows[0]["charge"] == 2
        assert warnings == {"global parameters applied": 2}
    # free text in a header that is no peak line leaves the parameters applied
    p.write_text("COM=my search\nCHARGE=2+\n(c) Lab X 2020\n...\n2020 export\nINSTRUMENT=QTOF\n"
                 "BEGIN IONS\nPEPMASS=300\n100 1\nEND IONS\n")
    rows, warnings = _rows_by_block(p, "mgf", 32 << 20)
    assert rows[0]["instrument"] == "QTOF" and rows[0]["charge"] == 2 and rows[0]["com"] == "my search"
    assert warnings == {"global parameters applied": 3, "lines outside records": 3}


@pytest.mark.parametrize("ext", ["parquet", "h5"])
def test_own_tables_keep_a_charge_sign_that_contradicts_the_ion_mode(tmp_path, ext):
    """fastspec's own Parquet/HDF5 hold signed charges: an explicit CHARGE=1+ in negative mode (no adduct)
    round-trips as 1, while a foreign table's 1 in negative mode is read as unsigned (-1)."""
    s, _ = read(tmp_path, "c.mgf", "BEGIN IONS\nTITLE=a\nPEPMASS=300\nCHARGE=1+\nIONMODE=negative\n100 1\nEND IONS\n")
    assert s.charge.tolist() == [1]
    fio.write(s, tmp_path / f"c.{ext}")
    assert fio.read(tmp_path / f"c.{ext}").charge.tolist() == [1]


def test_mgf_mzmine_library_inchiaux_and_placeholder_feature_id(tmp_path):
    """MZmine's library export (MSnLib) writes the InChIKey as INCHIAUX and FEATURE_ID=-1 in every record. The key
    fills `inchikey` where nothing else gives one (GNPS's other INCHIAUX values, InChI's AuxInfo, do not); -1 is
    the id only where no other alias nor the title gives one, while FBMN's real FEATURE_ID stays the id."""
    rec = "BEGIN IONS\n{}\nPEPMASS=294.20637\nCHARGE=1\n58.0651 12.5\n249.1485 100\nEND IONS\n"
    text = "".join(rec.format(body) for body in (
        "INCHIAUX=UJNSFDHVIBGEJZ-CMRIBGNTSA-N\nFEATURE_ID=-1",
        "INCHIAUX=UJNSFDHVIBGEJZ-CMRIBGNTSA-N\nINCHIKEY=QWYFHHGCZUCMBN-UHFFFAOYSA-O\nFEATURE_ID=-1\nTITLE=t2",
        "INCHIAUX=AuxInfo=1/1/N:1,2/rA:2nCO/rB:s1;/rC:;;\nFEATURE_ID=-1\nTITLE=t3",
        "FEATURE_ID=-1\nSCAN_ID=5",
        "FEATURE_ID=12\nTITLE=fbmn feature",
    ))
    s, r = read(tmp_path, "msnlib.mgf", text)
    assert r.n_spectra == 5 and r.warnings == {"positive ion mode taken from a charge written without sign": 5}
    assert s.column("inchikey") == ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", "QWYFHHGCZUCMBN-UHFFFAOYSA-O", None, None, None]
    assert s.column("inchikey14") == ["UJNSFDHVIBGEJZ", "QWYFHHGCZUCMBN", None, None, None]
    assert s.column("inchiaux")[:3] == ["UJNSFDHVIBGEJZ-CMRIBGNTSA-N", "UJNSFDHVIBGEJZ-CMRIBGNTSA-N",
                                        "AuxInfo=1/1/N:1,2/rA:2nCO/rB:s1;/rC:;;"]
    assert s.ids == ["-1", "t2", "t3", "5", "12"]


def test_msp_msdial_unquoted_comment_pairs(tmp_path):
    """MS-DIAL public libraries, MassBank's RIKEN export and GNPS-to-MSP conversions keep the accession only in
    `Comment: DB#=...; origin=...`: split like MoNA's quoted pairs (an explicit line still wins), but only when
    every ';'-separated part is a key=value pair, so free text holding '=' or ';' stays the comment."""
    rec = "NAME: {n}\nPRECURSORMZ: 166.086\n{c}\nNum Peaks: 1\n120.081\t1000\n\n"
    comments = {
        "a": "COMMENT: DB#=EMBL-MCF_spec98214; origin=EMBL - Metabolomics Core Facility Spectral Library",
        "b": "Comment: DB#=CCMSLIB00000001547; origin=GNPS;",
        "c": "DB#: explicit\nComment: DB#=CCMSLIB00000001548; origin=GNPS",
        "d": "Comment: measured at pH=7; see the lab notes",
        "e": "Comment: ramp 20-40 eV; http://example.org/?a=b",
        "f": "Comment: InChI=InChI=1S/2C2H4O2.Ca/c2*1-2(3)4;/h2*1H3,(H,3,4);/q;+2/p-2",
        "g": "Comment: merged spectrum",
    }
    s, r = read(tmp_path, "msdial.msp", "".join(rec.format(n=n, c=c) for n, c in comments.items()))
    assert r.n_spectra == 7 and r.warnings == {}
    assert s.column("id") == ["EMBL-MCF_spec98214", "CCMSLIB00000001547", "explicit", None, None, None, None]
    assert s.column("origin")[:3] == ["EMBL - Metabolomics Core Facility Spectral Library", "GNPS", "GNPS"]
    assert s.column("comment") == [None, None, None, "measured at pH=7; see the lab notes",
                                   "ramp 20-40 eV; http://example.org/?a=b",
                                   "InChI=InChI=1S/2C2H4O2.Ca/c2*1-2(3)4;/h2*1H3,(H,3,4);/q;+2/p-2", "merged spectrum"]
    assert not {"ph", "http_example_org_a", "inchi"} & set(s.metadata.column_names)


def test_msp_riken_style_comment_and_nist_peptide_comment(tmp_path):
    """MassBank's RIKEN-style export ends its `Comment: DB#=...; origin=...` with free text (mzmine's test file
    massbank_eu.msp_RIKEN): the pairs still count after a leading DB#, the text is the comment. NIST's
    peptide libraries write space-separated pairs with quoted values (mzSpecLib's test data): kept whole as
    the comment, as matchms keeps it (a closing quote used to open a pair: `nreps` = '1/2 Sample=')."""
    pep = ('Single Pep=Tryptic Charge=2 Parent=855.4538 Origfile="a.MGF" Nreps=1/2 Sample="s1" '
           'Protein="p q" Unassign_all=0.28 Filter="FTMS + p"')
    text = ("NAME: Mevastatin\nPRECURSORMZ: 391.2474\n"
            "Comment: DB#=MSBNK-AAFC-AC000857; origin=MassBank; Annotation Penicillium corvianum\n"
            "Num Peaks: 1\n107.0491\t340449.84375\n\n"
            f"Name: PEPTIDE/2\nComment: {pep}\nNum peaks: 1\n143.0823\t14791.5\t\"b2/5.6ppm\"\n\n"
            "Name: mona\nComments: \"SMILES=C=CC(=O)O\" \"a.raw\" \"cas=50-00-0\" tail\nNum peaks: 1\n50 1\n\n"
            "Name: free\nComment: origin=X; Annotation after a pair\nNum peaks: 1\n50 1\n\n"
            # a stray inch mark: the pairs around it are still read (an odd count cannot be read in order)
            'Name: inch\nComments: "SMILES=CC" "column=Hypersil 3" x 150 mm" "cas=50-00-0"\nNum peaks: 1\n50 1\n')
    s, r = read(tmp_path, "riken.msp", text)
    assert (r.n_spectra, r.warnings) == (5, {})
    assert s.column("cas")[4] == "50-00-0" and s.column("column")[4] == "Hypersil 3"
    s = s.take([0, 1, 2, 3])
    assert s.column("id") == ["MSBNK-AAFC-AC000857", None, None, None]
    assert s.column("origin")[0] == "MassBank"
    assert s.column("comment") == ["Annotation Penicillium corvianum", pep, '"a.raw" tail',
                                   "origin=X; Annotation after a pair"]
    assert s.column("smiles")[2] == "C=CC(=O)O" and s.column("cas")[2] == "50-00-0"
    assert not {"nreps", "single_pep", "unassign_all"} & set(s.metadata.column_names)


def test_msp_unquoted_annotation_with_a_semicolon(tmp_path):
    # a ';' after the intensity belongs to an unquoted annotation (MS-DIAL lipids); right after the first two
    # values it still separates pairs, as RIKEN / NIST EI write them
    text = ("NAME: PC 34:1\nPRECURSORMZ: 760.5851\nNum Peaks: 4\n184.0733\t999\tHeadgroup; PC\n"
            "478.3292\t50\t[M+H]+ -C18:1 FA; -H2O\n577.5190 20 a;b\n760.5851\t300\n\n"
            "NAME: pairs\nNum Peaks: 6\n85 100; 86 50;\n87 10;88 5\n89 1 ; 90 2\n")
    s, r = read(tmp_path, "semi.msp", text)
    assert (r.n_spectra, r.n_rejected, r.warnings) == (2, 0, {})
    assert s[0].mz.tolist() == [184.0733, 478.3292, 577.519, 760.5851] and s[0].intensity.tolist() == [999, 50, 20, 300]
    assert s[1].mz.tolist() == [85, 86, 87, 88, 89, 90] and s[1].intensity.tolist() == [100, 50, 10, 5, 1, 2]
    # after a quoted annotation (its closing quote ends it) or a third value that is a number, a ';' still
    # separates pairs
    text = ('Name: q\n85.0284 999 "p-H2O"; 101.06 300 "f1"; 129.05 120 "f2"\n\n'
            "Name: n\n85 100 5; 86 50 3\n")
    s, r = read(tmp_path, "semi2.msp", text)
    assert (r.n_spectra, r.n_rejected, r.warnings) == (2, 0, {})
    assert s[0].mz.tolist() == [85.0284, 101.06, 129.05] and s[0].intensity.tolist() == [999, 300, 120]
    assert s[1].mz.tolist() == [85, 86] and s[1].intensity.tolist() == [100, 50]
    # text made of number characters is still text ("2+", "E", "-", "1-2")
    text = "".join(f"Name: t{i}\n85 100 {a}; {b}\n\n" for i, (a, b) in enumerate(
        [("2+", "b3 ion"), ("E", "Z isomer"), ("-", "loss"), ("1-2", "cleavage"), ('x"y"', "z")]))
    s, r = read(tmp_path, "semi3.msp", text)
    assert (r.n_spectra, r.n_rejected) == (5, 0) and all(sp.mz.tolist() == [85] for sp in s)


def test_msp_mona_computed_structures_fill_smiles_and_inchi(tmp_path):
    """MoNA's MSP export gives the structure of records without a submitted one only as "computed SMILES=..." /
    "computed InChI=..." in Comments, its JSON export as plain SMILES / InChI: the same fields either way. A
    submitted value (a line or a plain pair) wins; the computed ones stay under their own names."""
    import json

    smiles, inchi = "O=C(O)CC(OC(=O)CCC)C[N+](C)(C)C", "InChI=1S/C11H21NO4/c1-5-6-11(15)16-9(7-10(13)14)8-12(2,3)4/h9H"
    computed = f'"computed SMILES={smiles}" "computed InChI=InChI={inchi[6:]}"'
    text = (f"Name: ACar 4:0\nDB#: MoNA-1\nPrecursorMZ: 232.15433\nComments: {computed}\nNum Peaks: 1\n85.0284 999\n\n"
            f"Name: b\nSMILES: CCO\nComments: {computed}\nNum Peaks: 1\n85.0284 999\n\n"
            f'Name: c\nComments: "SMILES=CCN" {computed}\nNum Peaks: 1\n85.0284 999\n')
    s, _ = read(tmp_path, "mona.msp", text)
    assert s.column("smiles") == [smiles, "CCO", "CCN"] and s.column("inchi") == [inchi] * 3
    assert s.column("computed_smiles") == [smiles] * 3
    record = {"id": "MoNA-1", "spectrum": "85.0284:999", "compound": [{"inchi": inchi, "metaData": [
        {"name": "SMILES", "value": smiles, "computed": True}], "names": [{"name": "ACar 4:0"}]}],
        "metaData": [{"name": "precursor m/z", "value": 232.15433}]}
    js, _ = read(tmp_path, "mona.json", json.dumps([record]))
    assert (js.column("smiles"), js.column("inchi")) == (s.column("smiles")[:1], s.column("inchi")[:1])


def _msp_in_blocks(path, text: str, block_bytes: int, keys: tuple):
    """``text`` written to ``path`` and read as MSP in blocks of ``block_bytes``: ([(metadata[k] for k in keys...,
    m/z list)] per spectrum, the read report)."""
    from fastspec.io import msp
    from fastspec.io._common import ReadReport

    path.write_text(text)
    rep = ReadReport(path=str(path))
    parts = [x for x in msp.iter_spectra(str(path), on_error="skip", report=rep, block_bytes=block_bytes) if len(x)]
    return [(*(m[k] for k in keys), sp.mz.tolist()) for x in parts for m, sp in zip(x.metadata.to_pylist(), x)], rep


@pytest.mark.parametrize("block_bytes", [16, 40, 32 << 20])
def test_msp_blank_line_between_num_peaks_and_peaks(tmp_path, block_bytes):
    """Some converters write a blank line after `Num Peaks: N`: with N > 0 and no peak yet it does not end the
    record, unless metadata (the next entry) comes next; whatever the block size."""
    text = ("Name: A\nPrecursorMZ: 100\nNum Peaks: 2\n\n50 1\n60 2\n\n"
            "Name: B\nPrecursorMZ: 200\nNum Peaks: 1\n\n\n70 1\n\n"
            "Name: C\nNum Peaks: 2\n\nDB#: d1\nName: D\nNum Peaks: 1\n80 1\n\n"
            "Name: E\nNum Peaks: 0\n\n90 1\n")
    p = tmp_path / "blank.msp"
    got, rep = _msp_in_blocks(p, text, block_bytes, ("name", "id"))
    assert got == [("A", None, [50, 60]), ("B", None, [70]), ("D", "d1", [80])]
    assert rep.counts_by_reason == {"no peaks": 2}  # C (its declared count: a mismatch) and E
    assert rep.warnings == {"lines outside records": 1, "num_peaks mismatch": 1}
    # a long run of blank lines is judged once (a look ahead per blank line was quadratic in the run)
    p.write_text("Name: A\nNum Peaks: 1\n" + "\n" * 20_000 + "50 1\n\nName: B\nNum Peaks: 1\n" + "\n" * 20_000)
    s = fio.read(p)
    assert len(s) == 1 and s[0].mz.tolist() == [50]


@pytest.mark.parametrize("block_bytes", [16, 40, 32 << 20])
def test_msp_blank_lines_inside_an_entry(tmp_path, block_bytes):
    """Blank lines inside a peak list (while fewer peaks than `Num Peaks`, or no count) or inside the metadata
    (no peaks or count yet, the next line not a new `Name:`) do not cut an entry, as matchms reads them; NIST's
    `[85 100]` / `{85 100}` peak delimiters read as `(85 100)` does. Found by an audit with files as other
    labs' converters write them: the spectra used to be cut, or split in two."""
    import matchms.importing

    text = ("Name: A\nPrecursorMZ: 100\nNum Peaks: 4\n50 10\n60 20\n\n70 30\n80 40\n\n"
            "Name: B\nPrecursorMZ: 200\nPrecursor_type: [M+H]+\n\nNum Peaks: 2\n50 10\n60 20\n\n"
            "Name: C\nPrecursorMZ: 300\n51 1\n\n\n61 2\n\n"
            "Name: D\nNum Peaks: 2\n[85 100] [86 50]\n\nName: E\nNum Peaks: 2\n{85 100}\n\n{86 50}\n\n"
            "Name: F\nNum Peaks: 1\n90 1\n\n91 1\n\nName: G\nPrecursorMZ: 400\n\nName: H\nNum Peaks: 1\n92 1\n")
    p = tmp_path / "blank.msp"
    got, rep = _msp_in_blocks(p, text, block_bytes, ("name", "precursor_mz", "adduct"))
    assert got == [("A", 100, None, [50, 60, 70, 80]), ("B", 200, "[M+H]+", [50, 60]), ("C", 300, None, [51, 61]),
                   ("D", None, None, [85, 86]), ("E", None, None, [85, 86]), ("F", None, None, [90]),
                   ("H", None, None, [92])]
    # F's count is reached: 91 is outside any entry; G (a new Name follows) has no peaks
    assert rep.counts_by_reason == {"no peaks": 1} and rep.warnings == {"lines outside records": 1}
    # a bracketed peak line after a blank line, no count; a block naming another entry is that entry's
    # (its DB# stays with it); nameless blocks are not joined
    more, _ = _msp_in_blocks(p, "Name: A\nPrecursorMZ: 200\n\n(85 100) (86 50)\n\nName: B\nPrecursorMZ: 100\n\n"
                             "DB#: X2\nName: C\nNum Peaks: 1\n50 1\n\nPrecursorMZ: 300\n\nPrecursorMZ: 400\n"
                             "Num Peaks: 1\n60 1\n", block_bytes, ("name", "id", "precursor_mz"))
    assert more == [("A", None, 200, [85, 86]), ("C", "X2", None, [50]), (None, None, 400, [60])]
    # an empty or NA count is none: peaks after a blank line stay
    p.write_text("Name: A\nNum Peaks:\n\n50 1\n60 2\n\nName: B\nNum Peaks: NA\n50 1\n\n60 2\n")
    assert [sp.mz.tolist() for sp in fio.read(p)] == [[50, 60], [50, 60]]
    # a count that is no number is counted too (it used to pass without a word)
    p.write_text("Name: A\nNum Peaks: abc\n50 1\n\nName: B\nNum Peaks: 3\n50 1\n")
    assert fio.read(p, return_report=True)[1].warnings == {"num_peaks unreadable": 1, "num_peaks mismatch": 1}
    # the same entries as matchms (which needs Num Peaks) reads
    p.write_text(text[:text.index("Name: C")])
    theirs = [(sp.get("compound_name"), sp.peaks.mz.tolist()) for sp in matchms.importing.load_from_msp(str(p))]
    assert theirs == [(n, mz) for n, _, _, mz in got[:2]]


def test_reading_from_a_pipe(tmp_path):
    """A named pipe (``/dev/stdin``, a shell's ``<(...)``) with its format given reads as a file does: its
    first bytes are not checked for compression (a pipe cannot seek back to them)."""
    import os
    import threading

    mgf = "BEGIN IONS\nTITLE=a\nPEPMASS=200\n100 1\nEND IONS\n"
    # TSV: its header and rows come from one stream (it was opened twice, and the header read used the pipe up)
    tsv = "\n\nid\tmzs\tintensities\tprecursor_mz\na\t100\t1\t200\n"
    for fmt, data in (("mgf", mgf.encode()), ("tsv", tsv.encode())):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        t = threading.Thread(target=lambda: fifo.write_bytes(data))
        t.start()
        s = fio.read(str(fifo), format=fmt)
        t.join()
        fifo.unlink()
        assert len(s) == 1 and s[0].mz.tolist() == [100] and s.column("id") == ["a"], fmt


def test_a_pipe_without_format_is_refused_not_half_read(tmp_path):
    """Telling a pipe's format would consume its first bytes, and its first records with them: refused,
    with the way out named, before anything is read."""
    import os

    from fastspec.errors import FastspecError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FastspecError, match="a pipe.*format="):
        fio.read(str(fifo))  # would block on open if it tried to read


def test_a_pipe_of_a_seeking_format_is_one_clear_error(tmp_path):
    """mzML, mzXML, Parquet and HDF5 readers seek: a pipe named as one is refused before it is opened, not
    with the reader's own failure ("lseek failed")."""
    import os

    from fastspec.errors import FastspecError

    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    stop = threading.Event()

    def release():  # a reader blocked opening the pipe (the code before the check) gets EOF: a failure, no hang
        while not stop.wait(1):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=release, daemon=True).start()
    try:
        for fmt in ("mzml", "mzxml", "parquet", "hdf5"):
            with pytest.raises(FastspecError, match=f"{fmt} is read from a regular file, not a pipe"):
                fio.read(str(fifo), format=fmt)  # would block on open if it tried to read
    finally:
        stop.set()


def test_a_corrupt_gzip_of_unknown_format_is_one_error(tmp_path):
    """Sniffing a truncated or corrupt gzip file (no known extension) raises FastspecError, not zlib's error."""
    from fastspec.errors import FastspecError

    data = gzip.compress(b"BEGIN IONS\nTITLE=a\nPEPMASS=200\n100 1\nEND IONS\n" * 500)
    flipped = bytearray(data)
    flipped[40] ^= 0xFF
    flipped[41] ^= 0xFF
    for name, blob in (("short.bin", data[:100]), ("flipped.bin", bytes(flipped))):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(FastspecError, match=f"{name}: cannot read"):
            fio.read(tmp_path / name, on_error="raise")
    # with on_error="skip" (the default) a gzip stream that breaks off after its first bytes keeps what came
    # before the break, one rejection counted at it; one broken before any line could be sniffed is an error
    s, r = fio.read(tmp_path / "short.bin", return_report=True)
    assert len(s) > 0 and r.counts_by_reason == {
        "compressed data breaks off here (a truncated or corrupt file): the rest is lost": 1}
    with pytest.raises(FastspecError, match="flipped.bin: cannot read"):
        fio.read(tmp_path / "flipped.bin")


def test_msdial_spectrumtype_is_not_the_ms_level(tmp_path):
    # MS-DIAL writes SPECTRUMTYPE: Centroid / Profile (the data type); NIST's Spectrum_type: MS2 is the MS level
    text = ("NAME: a\nPRECURSORMZ: 301.1234\nSPECTRUMTYPE: Centroid\nNum Peaks: 1\n100.1\t10\n\n"
            "Name: b\nSpectrum_type: MS2\nPrecursorMZ: 301.1234\nNum Peaks: 1\n100.1 10\n\n"
            "NAME: c\nSPECTRUMTYPE: Profile\nMSTYPE: MS1\nNum Peaks: 1\n100.1\t10\n")
    s, _ = read(tmp_path, "msdial.msp", text)
    assert s.column("ms_level") == [None, "MS2", "MS1"]
    assert s.column("spectrumtype") == ["Centroid", None, "Profile"] and "spectrum_type" not in s.metadata.column_names
    s, _ = read(tmp_path, "one.msp", "NAME: a\nSPECTRUMTYPE: Centroid\nNum Peaks: 1\n100.1\t10\n")
    assert "ms_level" not in s.metadata.column_names and s.column("spectrumtype") == ["Centroid"]


@pytest.mark.parametrize("fmt", ["mgf", "msp"])
def test_compressed_content_under_a_spectrum_extension(tmp_path, fmt):
    """A .gz saved without its suffix reads as gzip; an archive under a spectrum extension is refused with the
    archive message, never read as text (a stored zip's first record shares a line with its header)."""
    import bz2
    import zipfile

    from fastspec.errors import FastspecError

    text = ("BEGIN IONS\nTITLE=a\nPEPMASS=200\n100 1\nEND IONS\nBEGIN IONS\nTITLE=b\nPEPMASS=300\n90 1\nEND IONS\n"
            if fmt == "mgf" else "Name: a\nPrecursorMZ: 200\nNum Peaks: 1\n100 1\n\nName: b\nNum Peaks: 1\n90 1\n")
    plain, _ = read(tmp_path, f"plain.{fmt}", text)
    (tmp_path / f"gz.{fmt}").write_bytes(gzip.compress(text.encode()))
    s, r = fio.read(tmp_path / f"gz.{fmt}", return_report=True)
    assert (r.n_spectra, r.warnings) == (2, {}) and s.column("name") == plain.column("name")
    assert [len(c) for c in fio.iter_read(tmp_path / f"gz.{fmt}", chunk_size=1)] == [1, 1]
    with zipfile.ZipFile(tmp_path / f"zip.{fmt}", "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"lib.{fmt}", text)
    (tmp_path / f"bz.{fmt}").write_bytes(bz2.compress(text.encode()))
    for name, kind in ((f"zip.{fmt}", "a zip archive"), (f"bz.{fmt}", "bzip2-compressed")):
        with pytest.raises(FastspecError, match=f"{kind}, which fastspec does not read; extract it first"):
            fio.read(tmp_path / name)


def test_mgf_without_any_record_counts_its_lines(tmp_path):
    # the same accounting with or without a final newline (with one, the last block is not "final")
    for text in ("TITLE=a\nPEPMASS=100\n", "TITLE=a\nPEPMASS=100"):
        s, r = read(tmp_path, "g.mgf", text)
        assert len(s) == 0 and r.warnings == {"global parameters applied": 2}
    # an MSP file named .mgf, a BEGIN_IONS typo: no record, and every line is counted as outside one
    # (the file's last block ends with a line end, so no header is ever applied to a record)
    s, r = read(tmp_path, "msp.mgf", "NAME: x\nPRECURSORMZ: 100\n53.0 10\n54.0 20\n")
    assert len(s) == 0 and r.n_records == 0 and r.warnings == {"lines outside records": 4}
    s, r = read(tmp_path, "typo.mgf", "BEGIN_IONS\nTITLE=a\nPEPMASS=100\n50 10\nEND IONS")
    assert len(s) == 0 and r.warnings == {"lines outside records": 5}


def test_an_empty_or_missing_value_does_not_hide_a_later_one(tmp_path):
    """matchms' problematic_spectra.msp (a GNPS-to-MSP conversion) writes ``MSLEVEL: `` then ``MSLEVEL=2``;
    other converters ``PEPMASS=`` or ``ADDUCT=N/A`` before the real line. The first value won, so an empty
    one dropped the real value without a word (no precursor, no charge). Blank values now yield to any
    other of the same key in the record; alone, they are still missing values."""
    mgf = ("BEGIN IONS\nTITLE=\nTITLE=scan 12\nPEPMASS=\nPEPMASS=200.5\nCHARGE=\nCHARGE=1-\nADDUCT=N/A\n"
           "ADDUCT=[M-H]-\nINSTRUMENT=n/a\n50 10\n60 20\nEND IONS\n")
    s, r = read(tmp_path, "a.mgf", mgf)
    m = md(s, 0)
    assert (m["id"], m["precursor_mz"], m["charge"], m["adduct"]) == ("scan 12", 200.5, -1, "[M-H]-")
    assert "instrument" not in m and r.n_spectra == 1 and not r.warnings
    msp = ("Name: X\nPRECURSORMZ: \nPrecursorMZ: 200.1\nINCHIKEY: N/A\nInChIKey: LFQSCWFLJHTTHZ-UHFFFAOYSA-N\n"
           "MSLEVEL: \nMSLEVEL=2\nComment: first\nComment: second\nNum Peaks: 2\n50 10\n60 20\n")
    s, _ = read(tmp_path, "a.msp", msp)
    m = md(s, 0)
    assert (m["precursor_mz"], m["inchikey"], m["ms_level"]) == (200.1, "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", "2")


def test_msdial5_mgf_num_peaks_colon_line(tmp_path):
    """MS-DIAL 5's MGF export writes an MSP-style ``Num Peaks: 3`` line into every record
    (MsdialCore/Export/SpectraExport.cs): every record was rejected as an unparsable peak line. It is the
    declared count, checked and dropped as MZmine's ``Num peaks=`` is; other ``Key: value`` lines stay errors."""
    rec = ("BEGIN IONS\nSCANS=12\nTITLE=Unknown|ID=12\nPEPMASS=195.0877\nMSLEVEL=2\nION=[M+H]+\nCHARGE=1+\n"
           "RTINMINUTES=3.21\nNum Peaks: {}\n110.0713\t120\n138.0662\t999\n195.0877\t300\nEND IONS\n")
    s, r = read(tmp_path, "msdial5.mgf", rec.format(3) + "\n" + rec.format(5).replace("SCANS=12", "SCANS=13"))
    assert r.n_spectra == 2 and not r.rejected and r.warnings == {"num_peaks mismatch": 1}
    assert s[0].mz.tolist() == [110.0713, 138.0662, 195.0877] and md(s, 0)["adduct"] == "[M+H]+"
    assert "num peaks" not in s.metadata.column_names
    _, r = read(tmp_path, "other.mgf", rec.format(3).replace("Num Peaks: 3", "Comment: 3"))
    assert r.counts_by_reason == {"unparsable peak line": 1}


def test_several_charges_and_mixed_ion_modes_are_counted(tmp_path):
    """Mascot's ``CHARGE=2+ and 3+`` (pyteomics' test.mgf) was read as 2 without a word, and ``IONMODE=both`` /
    ``Positive; Negative`` dropped or read as positive: the first charge is still used but counted, and an ion
    mode naming both polarities is unknown (a query of either polarity may match it), counted too."""
    text = ("CHARGE=2+ and 3+\nBEGIN IONS\nTITLE=a\nPEPMASS=500.2\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=b\nPEPMASS=500.2\nCHARGE=1+\n100 10\nEND IONS\n")
    s, r = read(tmp_path, "c.mgf", text)
    assert s.charge.tolist() == [2, 1] and r.warnings["several charges given (the first used)"] == 1
    text = ("BEGIN IONS\nTITLE=b\nPEPMASS=500.2\nIONMODE=both\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=c\nPEPMASS=500.2\nIONMODE=Positive; Negative\n100 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=d\nPEPMASS=500.2\nIONMODE=Positive\n100 10\nEND IONS\n")
    s, r = read(tmp_path, "m.mgf", text)
    assert s.metadata.column("ion_mode").to_pylist() == [None, None, "positive"]
    assert r.warnings == {"ion mode unreadable or mixed (left unknown)": 2}


def test_global_parameter_n_a_yields_to_a_later_value(tmp_path):
    """Global parameters (before the first BEGIN IONS) follow the records' rule: a missing marker does not
    hide a later real value of the key."""
    text = ("INSTRUMENT=N/A\nINSTRUMENT=QTOF\nCHARGE=1+\nBEGIN IONS\nTITLE=a\nPEPMASS=300.1\n100 10\nEND IONS\n")
    s, r = read(tmp_path, "g.mgf", text)
    assert md(s, 0)["instrument"] == "QTOF" and r.warnings == {"global parameters applied": 3}
