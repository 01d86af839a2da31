"""mzML layouts seen in real files from other labs (ProteoWizard msconvert 1.0 to 3.0 for Thermo,
Bruker and SCIEX data, OpenMS-processed SCIEX DDA), each reproduced by one or two hand-written
spectra compared with what pyteomics itself returns."""
from __future__ import annotations

import base64
import gzip

import numpy as np
import pytest

import fastspec.io as fio
from fastspec.errors import FastspecError, ParseError

pytest.importorskip("pyteomics")


def b64(values, dtype="<f8") -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def arrays(mz, it, mz_type="64-bit float", it_type="32-bit float", compression="no compression") -> str:
    mz_dt = "<f8" if mz_type.startswith("64") else "<f4"
    it_dt = "<f8" if it_type.startswith("64") else "<f4"
    return (f'<binaryDataArrayList count="2">'
            f'<binaryDataArray><cvParam accession="MS:1000523" name="{mz_type}" value=""/>'
            f'<cvParam name="{compression}" value=""/><cvParam name="m/z array" value=""/>'
            f"<binary>{b64(mz, mz_dt)}</binary></binaryDataArray>"
            f'<binaryDataArray><cvParam name="{it_type}" value=""/>'
            f'<cvParam name="{compression}" value=""/><cvParam name="intensity array" value=""/>'
            f"<binary>{b64(it, it_dt)}</binary></binaryDataArray></binaryDataArrayList>")


def mzml(spectra: str, ns: str = "http://psi.hupo.org/ms/mzml") -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<mzML xmlns="{ns}" version="1.1.0"><run id="r">'
            f'<spectrumList count="2">{spectra}</spectrumList></run></mzML>\n')


def read(tmp_path, name, text, **kw):
    p = tmp_path / name
    p.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    spectra, report = fio.read(p, return_report=True, **kw)
    report.check()
    return spectra, report


def md(spectra, i):
    return {k: v for k, v in spectra[i].metadata.items() if v is not None}


def pwiz_ms2(index, polarity, charge_cv, mz=(85.0284, 101.0233, 129.0193), it=(120.0, 5400.0, 880.0)):
    """An MS2 spectrum laid out as msconvert 3.0 writes it (Thermo Exactive, 32-bit zlib in the
    original; plain 64/32-bit floats here)."""
    return (f'<spectrum index="{index}" id="controllerType=0 controllerNumber=1 scan={index + 2}" '
            f'defaultArrayLength="{len(mz)}">'
            f'<cvParam name="ms level" value="2"/><cvParam name="{polarity}" value=""/>'
            f'<cvParam name="MSn spectrum" value=""/><cvParam name="centroid spectrum" value=""/>'
            f'<scanList count="1"><cvParam name="no combination" value=""/><scan>'
            f'<cvParam name="scan start time" value="0.616304" unitCvRef="UO" unitAccession="UO:0000010" '
            f'unitName="second"/></scan></scanList>'
            f'<precursorList count="1"><precursor spectrumRef="controllerType=0 controllerNumber=1 scan=1">'
            f'<selectedIonList count="1"><selectedIon>'
            f'<cvParam name="peak intensity" value="1.75429e06"/>{charge_cv}'
            f'<cvParam name="selected ion m/z" value="191.019725"/></selectedIon></selectedIonList>'
            f'<activation><cvParam name="beam-type collision-induced dissociation" value=""/>'
            f'<cvParam name="collision energy" value="35.0"/></activation></precursor></precursorList>'
            f"{arrays(mz, it)}</spectrum>")


@pytest.mark.parametrize("name", ["neg.mzML", "neg.mzML.gz"])
def test_negative_scan_with_unsigned_charge_state(tmp_path, name):
    # ProteoWizard and OpenMS write the charge state unsigned in negative mode ("1" for [M-H]-)
    text = mzml(pwiz_ms2(0, "negative scan", '<cvParam name="charge state" value="1"/>')
                + pwiz_ms2(1, "negative scan", '<cvParam name="charge state" value="-2"/>'))
    s, r = read(tmp_path, name, text)
    assert (r.n_records, r.n_spectra) == (2, 2)
    assert s.charge.tolist() == [-1, -2]
    assert md(s, 0)["ion_mode"] == "negative" and md(s, 0)["precursor_mz"] == 191.019725
    assert md(s, 0)["retention_time"] == 0.616304 and md(s, 0)["fragmentation_mode"] == "HCD"


def test_positive_scan_and_missing_charge_state(tmp_path):
    text = mzml(pwiz_ms2(0, "positive scan", '<cvParam name="charge state" value="2"/>')
                + pwiz_ms2(1, "positive scan", ""))
    s, _ = read(tmp_path, "pos.mzML", text)
    assert s.charge.tolist() == [2, 0]
    assert "charge" not in md(s, 1) and md(s, 1)["ion_mode"] == "positive"


def test_precursor_from_isolation_window_without_selected_ion(tmp_path):
    # OpenMS-processed SCIEX TripleTOF DDA: the precursor has an isolation window and no selected ion
    spectra = (
        '<spectrum id="sample=1 period=1 cycle=2034 experiment=1" index="0" defaultArrayLength="2">'
        '<cvParam name="ms level" value="1"/><cvParam name="positive scan"/>'
        f'{arrays([284.05, 306.03], [5.0, 9.0])}</spectrum>'
        '<spectrum id="sample=1 period=1 cycle=2034 experiment=4" index="1" defaultArrayLength="4">'
        '<cvParam cvRef="MS" accession="MS:1000127" name="centroid spectrum" />'
        '<cvParam cvRef="MS" accession="MS:1000511" name="ms level" value="2" />'
        '<cvParam cvRef="MS" accession="MS:1000130" name="positive scan" />'
        '<scanList count="1"><scan ><cvParam name="scan start time" value="357.21100000002" '
        'unitAccession="UO:0000010" unitName="second" unitCvRef="UO" /></scan></scanList>'
        '<precursorList count="1"><precursor><isolationWindow>'
        '<cvParam name="isolation window target m/z" value="306.035885833318" />'
        '<cvParam name="isolation window lower offset" value="0.5" />'
        '<cvParam name="isolation window upper offset" value="0.5" /></isolationWindow>'
        '<activation><cvParam name="beam-type collision-induced dissociation" /></activation>'
        '</precursor></precursorList>'
        f'{arrays([306.0266, 306.0310, 306.0418, 306.0500], [1012.3, 1580.2, 771.2, 210.2])}</spectrum>')
    s, r = read(tmp_path, "openms.mzML", mzml(spectra))
    assert (r.n_records, r.n_spectra) == (1, 1)
    assert r.warnings["spectra with ms level != 2 skipped"] == 1
    assert s.precursor_mz.tolist() == [306.035885833318]
    assert md(s, 0)["id"] == "sample=1 period=1 cycle=2034 experiment=4"


def test_mzml_1_0_spectrum_description(tmp_path):
    # ProteoWizard 1.0 (2007, LCQ Deca): precursor and scan inside spectrumDescription, selected ion
    # as "m/z", no charge, polarity on the scan, "scan time" in minutes
    spectrum = (
        '<spectrum index="1" id="S2" nativeID="2" defaultArrayLength="3">'
        '<cvParam cvRef="MS" accession="MS:1000511" name="ms level" value="2"/>'
        '<cvParam cvRef="MS" accession="MS:1000580" name="MSn spectrum" value=""/>'
        '<spectrumDescription><cvParam name="centroid mass spectrum" value=""/>'
        '<precursorList count="1"><precursor spectrumRef="S1"><selectedIonList count="1"><selectedIon>'
        '<cvParam cvRef="MS" accession="MS:1000040" name="m/z" value="371.2"/></selectedIon></selectedIonList>'
        '<activation><cvParam name="collision-induced dissociation" value=""/>'
        '<cvParam name="collision energy" value="35"/></activation></precursor></precursorList>'
        '<scan instrumentConfigurationRef="IC1"><cvParam name="positive scan" value=""/>'
        '<cvParam name="scan time" value="0.03816666666666667" unitCvRef="MS" unitAccession="MS:1000038" '
        'unitName="minute"/></scan></spectrumDescription>'
        f'{arrays([146.5324, 258.7521, 354.8289], [2742.0, 2254.0, 28780.0], "32-bit float")}</spectrum>')
    s, _ = read(tmp_path, "v1.0.mzML", mzml(spectrum, "http://psi.hupo.org/schema_revision/mzML_1.0.0"))
    m = md(s, 0)
    assert m["precursor_mz"] == 371.2 and m["ion_mode"] == "positive" and m["collision_energy"] == "35"
    assert m["fragmentation_mode"] == "CID" and m["retention_time"] == pytest.approx(2.29)
    assert s[0].mz.tolist() == pytest.approx([146.5324, 258.7521, 354.8289])


def test_empty_pasef_ms2_scans_are_counted(tmp_path):
    # msconvert 3.0 of Bruker timsTOF data: MS2 scans without precursor and with empty arrays
    empty = ('<spectrum index="{i}" id="frame=1016 scan={n}" defaultArrayLength="0">'
             '<cvParam name="ms level" value="2"/><cvParam name="positive scan" value=""/>'
             '<binaryDataArrayList count="2"><binaryDataArray encodedLength="0">'
             '<cvParam name="64-bit float" value=""/><cvParam name="zlib compression" value=""/>'
             '<cvParam name="m/z array" value=""/><binary></binary></binaryDataArray>'
             '<binaryDataArray encodedLength="0"><cvParam name="32-bit float" value=""/>'
             '<cvParam name="zlib compression" value=""/><cvParam name="intensity array" value=""/>'
             '<binary></binary></binaryDataArray></binaryDataArrayList></spectrum>')
    s, r = read(tmp_path, "pasef.mzML", mzml(empty.format(i=0, n=1) + empty.format(i=1, n=2)))
    assert (r.n_records, r.n_spectra, r.counts_by_reason) == (2, 0, {"no peaks": 2})


def numpress_arrays(mz, it, mz_codec: str, it_codec: str, zlib_too: bool) -> str:
    """Binary arrays as msconvert ``--numpressLinear --numpressSlof`` / ``--numpressPic`` writes them
    (optionally zlib over the numpress bytes)."""
    import zlib

    pynumpress = pytest.importorskip("pynumpress", reason="pynumpress has no wheel for this platform or "
                                     "Python (0.1.5+: CPython 3.11+; scripts/dev.py installs it where one exists)")

    names = {"linear": "MS-Numpress linear prediction compression",
             "slof": "MS-Numpress short logged float compression",
             "pic": "MS-Numpress positive integer compression"}

    def enc(values, codec):
        a = np.asarray(values, np.float64)
        if codec == "linear":
            raw = pynumpress.encode_linear(a, pynumpress.optimal_linear_fixed_point(a))
        elif codec == "slof":
            raw = pynumpress.encode_slof(a, pynumpress.optimal_slof_fixed_point(a))
        else:
            raw = pynumpress.encode_pic(a)
        raw = bytes(raw)
        return base64.b64encode(zlib.compress(raw) if zlib_too else raw).decode()

    def one(values, codec, kind):
        name = names[codec] + (" followed by zlib compression" if zlib_too else "")
        return (f'<binaryDataArray><cvParam name="64-bit float" value=""/><cvParam name="{name}" value=""/>'
                f'<cvParam name="{kind}" value=""/><binary>{enc(values, codec)}</binary></binaryDataArray>')

    return (f'<binaryDataArrayList count="2">{one(mz, mz_codec, "m/z array")}'
            f'{one(it, it_codec, "intensity array")}</binaryDataArrayList>')


@pytest.mark.parametrize("it_codec", ["slof", "pic"])
@pytest.mark.parametrize("zlib_too", [False, True])
def test_numpress_arrays_are_decoded(tmp_path, it_codec, zlib_too):
    # msconvert's --numpressAll (lossy: m/z to ~1e-8 relative, intensities to ~2e-4 (slof) or whole numbers
    # (pic)); needs pynumpress (the numpress extra), without which pyteomics cannot decode them (next test)
    mz, it = (85.0284, 101.0233, 129.0193), (120.0, 5400.0, 880.0)
    spectrum = pwiz_ms2(0, "positive scan", "", mz, it)
    spectrum = spectrum[:spectrum.index("<binaryDataArrayList")] + numpress_arrays(mz, it, "linear", it_codec, zlib_too) + "</spectrum>"
    spectra, report = read(tmp_path, "np.mzML", mzml(spectrum))
    assert report.n_spectra == 1 and spectra[0].precursor_mz == pytest.approx(191.019725)
    np.testing.assert_allclose(spectra[0].mz, mz, rtol=1e-8)
    np.testing.assert_allclose(spectra[0].intensity, it, rtol=1e-3)
    from pyteomics import mzml as pm  # the same values pyteomics decodes

    with pm.MzML(str(tmp_path / "np.mzML")) as f:
        s = next(iter(f))
    np.testing.assert_array_equal(spectra[0].mz, s["m/z array"])
    np.testing.assert_allclose(spectra[0].intensity, s["intensity array"], rtol=1e-6)


@pytest.mark.parametrize("compression", [
    "MS-Numpress linear prediction compression followed by zlib compression",
    "truncation, linear prediction and zlib compression",
])
def test_compression_pyteomics_cannot_decode_is_an_error(tmp_path, monkeypatch, compression):
    # pyteomics would read bytes it cannot decode as raw floats (garbage or a cryptic "buffer size" error
    # that ended the file as "invalid mzML"); numpress is decodable only with pynumpress, whose absence
    # is simulated by taking its decoders out of pyteomics' table
    from pyteomics.auxiliary import utils

    known = utils.BinaryDataArrayTransformer.compression_type_map
    monkeypatch.setattr(utils.BinaryDataArrayTransformer, "compression_type_map",
                        {k: v for k, v in known.items() if "Numpress" not in k})
    spectrum = pwiz_ms2(0, "positive scan", "").replace('name="no compression"', f'name="{compression}"')
    with pytest.raises(FastspecError, match="pynumpress" if "Numpress" in compression else "cannot decode"):
        read(tmp_path, "np.mzML", mzml(spectrum))


def test_profile_spectra_are_counted(tmp_path):
    # a profile-mode MS2 scan is read as given (each sample point a peak) but flagged: search expects centroids
    text = mzml(pwiz_ms2(0, "positive scan", "").replace('name="centroid spectrum"', 'name="profile spectrum"')
                + pwiz_ms2(1, "positive scan", ""))
    s, r = read(tmp_path, "profile.mzML", text)
    assert (r.n_records, r.n_spectra) == (2, 2)
    assert r.warnings == {"profile-mode MS2 spectra read as peaks (centroid them first)": 1}


def _many(n, polarity="positive scan"):
    return "".join(pwiz_ms2(i, polarity, '<cvParam name="charge state" value="1"/>') for i in range(n))


def test_truncated_mzml_keeps_what_was_read_and_positions(tmp_path):
    """An interrupted download: the spectra before the cut come back in order, the rest is one rejected
    record at the position of the first spectrum not read (the hit table's query_index relies on it)."""
    text = mzml(_many(60))
    cut = text[: text.index('<spectrum index="50"') + 200]  # inside spectrum 51
    s, r = read(tmp_path, "cut.mzML", cut)
    assert (r.n_records, r.n_spectra, r.n_rejected) == (s.__len__() + 1, len(s), 1)
    assert len(s) >= 48  # at most the spectra next to the break are lost (lxml drops its chunk)
    assert s.metadata.column("id").to_pylist() == [f"controllerType=0 controllerNumber=1 scan={i + 2}" for i in range(len(s))]
    assert r.rejected_records == [len(s)] and r.rejected[0].line == len(s) + 1
    assert "invalid mzML" in r.rejected[0].reason and "line" in r.rejected[0].reason
    # the same through the rows of Library.build
    from fastspec.library import Library

    lib = Library.build(tmp_path / "cut.mzML", tmp_path / "cut.fastspec", faiss=False)
    assert lib.n_rejected == 1 and len(lib) == len(s)
    assert lib.input_index.tolist() == list(range(len(s)))


def test_truncated_mzml_raises_for_an_earlier_bad_spectrum_first(tmp_path):
    """on_error="raise" raises for the first bad record: a bad spectrum before the break, not the break (an
    audit: the break was raised, spectrum 2 never named)."""
    text = mzml("".join(pwiz_ms2(i, "positive scan", "", it=(120.0, -5.0 if i == 1 else 5400.0, 880.0))
                        for i in range(60)))
    cut = text[: text.index('<spectrum index="50"') + 200]
    for t in (text, cut):
        (tmp_path / "x.mzML").write_text(t)
        with pytest.raises(ParseError, match="spectrum 2: negative intensity"):
            fio.read(tmp_path / "x.mzML", on_error="raise")


@pytest.mark.parametrize("name,data", [("empty.mzML", b""), ("page.mzML", b"<html><body><p>404<br></p></body></html>"),
                                       ("notgz.mzML.gz", b'<?xml version="1.0"?><mzML/>'),
                                       # well-formed XML of another kind: pyteomics reads it as mzML without spectra
                                       ("xhtml.mzML", b"<html><body>404</body></html>"),
                                       ("ids.mzML", b'<?xml version="1.0"?><MzIdentML xmlns="http://psidev.info/psi/pi/mzIdentML/1.2">'
                                                    b"<SequenceCollection/></MzIdentML>")])
def test_unreadable_mzml_is_one_clear_error(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    for on_error in ("skip", "raise"):
        with pytest.raises(FastspecError, match=f"{name}: not readable as mzML"):
            fio.read(p, on_error=on_error)


def test_possible_charge_state_ethcd_and_unequal_arrays(tmp_path):
    ethcd = pwiz_ms2(1, "positive scan", '<cvParam name="charge state" value="2"/>').replace(
        '<cvParam name="beam-type collision-induced dissociation" value=""/>',
        '<cvParam name="electron transfer dissociation" value=""/>'
        '<cvParam name="supplemental beam-type collision-induced dissociation" value=""/>')
    bad = pwiz_ms2(2, "positive scan", "", mz=(85.0, 101.0, 129.0)).replace(
        arrays((85.0, 101.0, 129.0), (120.0, 5400.0, 880.0)), arrays((85.0, 101.0, 129.0), (120.0, 5400.0)))
    text = mzml(pwiz_ms2(0, "positive scan", '<cvParam name="possible charge state" value="3"/>') + ethcd + bad)
    s, r = read(tmp_path, "misc.mzML", text)
    assert s.charge.tolist() == [3, 2] and md(s, 1)["fragmentation_mode"] == "EThcD"
    assert r.counts_by_reason == {"m/z and intensity arrays differ in length": 1} and r.rejected[0].line == 3


def test_ms1_spectrum_without_ms_level_is_skipped(tmp_path):
    ms1 = pwiz_ms2(0, "positive scan", "").replace('<cvParam name="ms level" value="2"/>', "").replace(
        "MSn spectrum", "MS1 spectrum")
    s, r = read(tmp_path, "nolevel.mzML", mzml(ms1 + pwiz_ms2(1, "positive scan", "")))
    assert len(s) == 1 and r.warnings == {"spectra with ms level != 2 skipped": 1}


def test_broken_xml_near_the_start_is_a_rejection(tmp_path):
    """pyteomics parses the file's first KiB for its version: a tag typo there, in a file that starts as
    mzML, is broken XML part-way (a rejection; ParseError under raise), as anywhere later."""
    from fastspec.errors import ParseError

    text = mzml(_many(6))
    i = text.index("</spectrum>") + len("</spectrum>")
    broken = text[:i] + "</spectrun>" + text[i:]
    p = tmp_path / "typo.mzML"
    p.write_text(broken)
    s, r = fio.read(p, return_report=True)
    assert r.n_rejected == 1 and "invalid mzML" in r.rejected[0].reason and r.n_records == len(s) + 1
    with pytest.raises(ParseError):
        fio.read(p, on_error="raise")


def test_etd_with_a_plain_cid_term_and_normalized_collision_energy(tmp_path):
    """Older converters wrote supplemental activation as ETD next to a plain CID term (read as CID before), and
    Thermo files may give only a normalized collision energy (read as none before). From an audit."""
    etcid = pwiz_ms2(0, "positive scan", "").replace(
        '<cvParam name="beam-type collision-induced dissociation" value=""/>',
        '<cvParam name="electron transfer dissociation" value=""/>'
        '<cvParam name="collision-induced dissociation" value=""/>')
    nce = pwiz_ms2(1, "positive scan", "").replace('<cvParam name="collision energy" value="35.0"/>',
                                                   '<cvParam name="normalized collision energy" value="30"/>')
    s, _ = read(tmp_path, "act.mzML", mzml(etcid + nce))
    assert md(s, 0)["fragmentation_mode"] == "ETciD" and md(s, 0)["collision_energy"] == "35"
    assert md(s, 1)["fragmentation_mode"] == "HCD" and md(s, 1)["collision_energy"] == "30% (NCE)"


@pytest.mark.parametrize("damage", ["base64", "zlib", "length"])
def test_spectrum_whose_arrays_do_not_decode_is_rejected_alone(tmp_path, damage):
    """One MS2 spectrum with damaged binary data (an interrupted copy, a buggy converter) is that spectrum's
    rejection at its position; the spectra after it are read (it used to end the file: 3 of 5 lost)."""
    good = "".join(pwiz_ms2(i, "positive scan", '<cvParam name="charge state" value="1"/>') for i in range(5))
    specs = good.split("</spectrum>")[:-1]
    payload = b64((120.0, 5400.0, 880.0), "<f4")
    if damage == "base64":
        bad = specs[1].replace(payload, payload[:-3], 1)
    elif damage == "zlib":
        bad = specs[1].replace('name="no compression"', 'name="zlib compression"')
    else:  # 10 bytes: no multiple of a 4-byte float
        bad = specs[1].replace(payload, base64.b64encode(b"0123456789").decode(), 1)
    assert bad != specs[1]
    text = mzml("</spectrum>".join([specs[0], bad, *specs[2:]]) + "</spectrum>")
    s, r = read(tmp_path, "bad.mzML", text)
    assert (r.n_records, r.n_spectra, r.n_rejected) == (5, 4, 1)
    assert s.ids == [f"controllerType=0 controllerNumber=1 scan={i + 2}" for i in (0, 2, 3, 4)]
    assert r.rejected_records == [1] and r.rejected[0].line == 2
    assert "peak arrays do not decode" in r.rejected[0].reason
    assert np.allclose(s[3].mz, (85.0284, 101.0233, 129.0193))
    with pytest.raises(ParseError, match="bad.mzML.*2.*peak arrays do not decode"):
        fio.read(tmp_path / "bad.mzML", on_error="raise")


def test_spectrum_title_is_kept_and_mgf_output_has_titles(tmp_path):
    """ProteoWizard writes a 'spectrum title' (MS:1000796) on every spectrum of a Thermo run: it was dropped
    (matchms keeps it as title). And fastspec's MGF of spectra without titles had no TITLE lines, so
    pyteomics' default MGF reader (indexed by TITLE) read none of them (an audit): TITLE is the title, else
    the id."""
    from pyteomics import mgf as pmgf

    import fastspec.io as fio

    titled = pwiz_ms2(0, "positive scan", "").replace(
        '<cvParam name="MSn spectrum" value=""/>',
        '<cvParam name="MSn spectrum" value=""/><cvParam name="spectrum title" value="run1.2.2. File:&quot;run1.raw&quot;"/>')
    s, _ = read(tmp_path, "t.mzML", mzml(titled + pwiz_ms2(1, "positive scan", "")))
    assert s.metadata.column("title").to_pylist() == ['run1.2.2. File:"run1.raw"', None]
    fio.write(s, tmp_path / "t.mgf")
    with pmgf.read(str(tmp_path / "t.mgf")) as reader:
        got = [r["params"]["title"] for r in reader]
    assert got == ['run1.2.2. File:"run1.raw"', "controllerType=0 controllerNumber=1 scan=3"]


def test_ethcd_supplemental_collision_energy(tmp_path):
    """EThcD written with a 'supplemental collision energy' and no plain one: the energy was lost (an audit)."""
    ethcd = pwiz_ms2(0, "positive scan", "").replace(
        '<cvParam name="beam-type collision-induced dissociation" value=""/><cvParam name="collision energy" value="35.0"/>',
        '<cvParam name="electron transfer dissociation" value=""/><cvParam name="supplemental beam-type collision-induced '
        'dissociation" value=""/><cvParam name="supplemental collision energy" value="20"/>')
    s, _ = read(tmp_path, "e.mzML", mzml(ethcd))
    assert md(s, 0)["collision_energy"] == "20"
