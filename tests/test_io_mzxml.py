"""mzXML, hand-written in the layouts real converters use (ReAdW 3.x: MS2 scans nested in their MS1 scan,
network-order 32-bit pairs; 64-bit zlib; ProteoWizard and MZmine 2.x: flat scans; negative mode with an
unsigned charge), each compared with what pyteomics itself returns, and the odd values a reviewer found
that crashed the reader or lost the rest of the file."""
from __future__ import annotations

import base64
import gzip
import zlib

import numpy as np
import pytest

import fastspec.io as fio
from fastspec.errors import FastspecError, ParseError

pytest.importorskip("pyteomics")

MZ, IT = (85.0284, 101.0233, 129.0193), (120.0, 5400.0, 880.0)


def peaks(mz, it, precision=32, compress=False) -> str:
    pairs = np.empty(2 * len(mz), dtype=">f4" if precision == 32 else ">f8")
    pairs[0::2], pairs[1::2] = mz, it
    raw = pairs.tobytes()
    if compress:
        raw = zlib.compress(raw)
    return (f'<peaks compressionType="{"zlib" if compress else "none"}" compressedLen="{len(raw) if compress else 0}" '
            f'precision="{precision}" byteOrder="network" contentType="m/z-int">{base64.b64encode(raw).decode()}</peaks>')


def ms2(num, polarity="+", charge="1", extra="", precision=32, compress=False, inner="", mz=MZ, it=IT) -> str:
    z = f' precursorCharge="{charge}"' if charge is not None else ""
    return (f'<scan num="{num}" scanType="Full" centroided="1" msLevel="2" peaksCount="{len(mz)}" polarity="{polarity}" '
            f'retentionTime="PT{30 + num}.5S" collisionEnergy="35.0"{extra}>'
            f'<precursorMz precursorScanNum="{num - 1}" precursorIntensity="1.75429e06"{z} activationMethod="CID">'
            f"191.019725</precursorMz>{peaks(mz, it, precision, compress)}{inner}</scan>")


def ms1(num, inner="") -> str:
    return (f'<scan num="{num}" scanType="Full" centroided="1" msLevel="1" peaksCount="2" polarity="+" '
            f'retentionTime="PT{30 + num}S">{peaks((150.0, 191.0197), (1e5, 1e6))}{inner}</scan>')


def mzxml(scans: str) -> str:
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n'
            '<mzXML xmlns="http://sashimi.sourceforge.net/schema_revision/mzXML_3.2">'
            f'<msRun scanCount="9">{scans}</msRun></mzXML>\n')


def read(tmp_path, name, text, **kw):
    p = tmp_path / name
    p.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return fio.read(p, return_report=True, **kw)


def md(spectra, i):
    return {k: v for k, v in spectra[i].metadata.items() if v is not None}


@pytest.mark.parametrize("name", ["run.mzXML", "run.mzxml.gz"])
@pytest.mark.parametrize("precision,compress", [(32, False), (64, True)])
def test_nested_ms2_scans_as_pyteomics_reads_them(tmp_path, name, precision, compress):
    text = mzxml(ms1(1, ms2(2, precision=precision, compress=compress)) + ms1(3, ms2(4, "-", "1", precision=precision)))
    s, r = read(tmp_path, name, text)
    r.check()
    assert (r.n_records, r.n_spectra, r.warnings["spectra with ms level != 2 skipped"]) == (2, 2, 2)
    m = md(s, 0)
    assert m["id"] == "2" and m["precursor_mz"] == 191.019725 and m["charge"] == 1 and m["ion_mode"] == "positive"
    assert m["collision_energy"] == "35" and m["fragmentation_mode"] == "CID" and m["precursor_scan"] == "1"
    assert m["precursor_intensity"] == 1754290.0 and m["retention_time"] == pytest.approx(32.5)
    # a charge written unsigned in a negative scan is negative (as converters write mzML too)
    assert md(s, 1)["charge"] == -1 and md(s, 1)["ion_mode"] == "negative"
    from pyteomics import mzxml as px

    (tmp_path / "plain.mzXML").write_text(text)
    with px.MzXML(str(tmp_path / "plain.mzXML"), use_index=False) as f:
        want = [x for x in f if x["msLevel"] == 2]
    for i, w in enumerate(want):
        np.testing.assert_array_equal(s[i].mz, w["m/z array"])
        np.testing.assert_array_equal(s[i].intensity, w["intensity array"])


def test_flat_scans_without_charge_profile_and_unequal_peaks(tmp_path):
    # MZmine 2.x writes scans one after another; a profile scan is read as given and counted
    profile = ms2(3).replace('centroided="1"', 'centroided="0"')
    text = mzxml(ms1(1) + ms2(2, charge=None) + profile)
    s, r = read(tmp_path, "flat.mzXML", text)
    assert len(s) == 2 and "charge" not in md(s, 0) and r.warnings["profile-mode MS2 spectra read as peaks (centroid them first)"] == 1
    assert s.ids == ["2", "3"]


def test_format_sniffed_and_indexed(tmp_path):
    from fastspec.library import Library

    p = tmp_path / "run.xml"
    p.write_text(mzxml(ms1(1, ms2(2)) + ms2(3, mz=(60.0, 85.0284), it=(10.0, 99.0))))
    assert fio.detect_format(str(p)) == "mzxml"
    lib = Library.build(p, tmp_path / "lib.fastspec", faiss=False)
    assert len(lib) == 2 and lib.input_index.tolist() == [0, 1]
    hits = lib.search(fio.read(p)[:1], k=2, mode="identity", metric="cosine")
    assert hits.indices[0, 0] == 0 and hits.scores[0, 0] == pytest.approx(1.0)


def test_truncated_mzxml_keeps_what_was_read(tmp_path):
    text = mzxml("".join(ms2(i) for i in range(2, 62)))
    cut = text[: text.index('<scan num="52"') + 100]
    s, r = read(tmp_path, "cut.mzXML", cut)
    assert (r.n_records, r.n_rejected) == (len(s) + 1, 1) and len(s) >= 45
    assert s.ids == [str(i) for i in range(2, 2 + len(s))]
    assert "invalid mzXML" in r.rejected[0].reason and r.rejected[0].line == len(s) + 1
    with pytest.raises(ParseError):
        fio.read(tmp_path / "cut.mzXML", on_error="raise")


@pytest.mark.parametrize("data", [b"", b"<html><body>404</body></html>"])
def test_unreadable_mzxml_is_one_clear_error(tmp_path, data):
    p = tmp_path / "bad.mzXML"
    p.write_bytes(data)
    with pytest.raises(FastspecError, match="bad.mzXML: not readable as mzXML"):
        fio.read(p)


def test_precursor_without_attributes_and_odd_values(tmp_path):
    # <precursorMz> with text only (pyteomics gives a bare string), unparsable retentionTime / charge:
    # a raw AttributeError / ValueError without the file name, or the rest of the file lost
    bare = ms2(2).replace('<precursorMz precursorScanNum="1" precursorIntensity="1.75429e06" precursorCharge="1" '
                          'activationMethod="CID">', "<precursorMz>")
    odd = ms2(3, charge="2+").replace('retentionTime="PT33.5S"', 'retentionTime=""')
    s, r = read(tmp_path, "odd.mzXML", mzxml(bare + odd + ms2(4)))
    r.check()
    assert s.ids == ["2", "3", "4"] and md(s, 0)["precursor_mz"] == 191.019725
    assert "retention_time" not in md(s, 1) and md(s, 2)["retention_time"] == pytest.approx(34.5)


def test_peaks_without_byte_order_or_precision(tmp_path):
    # byteOrder is fixed to network order (ProteoWizard reads files without it so); precision defaults to 32
    text = mzxml(ms2(2).replace(' byteOrder="network"', "") + ms2(3).replace('precision="32" ', ""))
    s, r = read(tmp_path, "old.mzXML", text)
    assert len(s) == 2 and np.allclose(s[1].mz, MZ, rtol=1e-6)


def test_possible_charges_missing_ms_level_and_etd_sa(tmp_path):
    scan2 = ms2(2, charge=None).replace('activationMethod="CID"', 'activationMethod="ETD+SA" possibleCharges="2,3"')
    no_level = ms1(3).replace(' msLevel="1"', "")
    s, r = read(tmp_path, "x.mzXML", mzxml(scan2 + no_level))
    assert len(s) == 1 and md(s, 0)["charge"] == 2 and md(s, 0)["fragmentation_mode"] == "ETciD"
    assert r.warnings["spectra with ms level != 2 skipped"] == 1


def test_broken_xml_near_the_start_is_a_rejection(tmp_path):
    text = mzxml("".join(ms2(i) for i in range(2, 9))).replace('</scan><scan num="4"', '</scna><scan num="4"')
    s, r = read(tmp_path, "typo.mzXML", text)
    assert r.n_rejected == 1 and "invalid mzXML" in r.rejected[0].reason
    with pytest.raises(ParseError):
        fio.read(tmp_path / "typo.mzXML", on_error="raise")


def test_sniffing_takes_the_root_element(tmp_path):
    p = tmp_path / "c.xml"
    p.write_text(mzxml(ms2(2)).replace("<msRun", "<!-- also writes <mzML> --><msRun"))
    assert fio.detect_format(str(p)) == "mzxml"
    q = tmp_path / "misnamed.mzML"
    q.write_text(mzxml(ms2(2)))
    with pytest.raises(FastspecError, match="an mzXML file"):
        fio.read(q)


def test_scan_whose_peaks_do_not_decode_is_rejected_alone(tmp_path):
    """Damaged <peaks> in one MS2 scan (or in an MS1 scan, skipped anyway) cost that scan only; it used to
    end the file."""
    scans = [ms2(i) for i in range(2, 7)]
    payload = peaks(MZ, IT).split(">")[1].split("<")[0]
    scans[1] = scans[1].replace(payload, payload[:-3])
    bad_ms1 = ms1(7).replace(peaks((150.0, 191.0197), (1e5, 1e6)).split(">")[1].split("<")[0], "QUJD")
    s, r = read(tmp_path, "bad.mzXML", mzxml("".join(scans) + bad_ms1 + ms2(8)))
    assert (r.n_records, r.n_spectra, r.n_rejected) == (6, 5, 1)
    assert s.ids == ["2", "4", "5", "6", "8"]
    assert r.rejected[0].line == 2 and "peak arrays do not decode" in r.rejected[0].reason
    assert np.allclose(s[4].mz, MZ)
    # an empty <peaks/> (peaksCount="0") is an empty scan, counted as such
    empty = ms2(3).replace(peaks(MZ, IT).split(">")[1].split("<")[0], "")
    s, r = read(tmp_path, "empty.mzXML", mzxml(ms2(2) + empty + ms2(4)))
    assert (len(s), r.n_records, r.counts_by_reason) == (2, 3, {"no peaks": 1})


def test_polarity_from_the_filter_line_and_exact_retention_times(tmp_path):
    """A scan without a polarity attribute but with Thermo's filter line ("FTMS - c ESI ...") was read as
    positive (from its unsigned charge); PT61.5S came back as 61.49999999999999 s (an audit)."""
    no_pol = ms2(1, charge="1", extra=' filterLine="FTMS - c ESI d Full ms2 445.12@hcd30.00 [50.00-460.00]"')
    no_pol = no_pol.replace(' polarity="+"', "")
    s, _ = read(tmp_path, "f.mzXML", mzxml(no_pol + ms2(2, polarity="+")))
    assert md(s, 0)["ion_mode"] == "negative" and s.charge.tolist() == [-1, 1]
    assert [md(s, i)["retention_time"] for i in range(2)] == [31.5, 32.5]
