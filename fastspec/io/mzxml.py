"""mzXML reading through pyteomics (imported only when an mzXML file is read).

mzXML (2.x and 3.x, as ProteoWizard, Thermo's ReAdW, MassLynx and MZmine wrote it, and as GNPS/MassIVE
hold many public runs) is read like mzML (:mod:`fastspec.io.mzml`): only MS2 scans are records, flat
(ProteoWizard, MZmine) or nested in their MS1 scan (ReAdW); a scan without ``msLevel`` is MS2 if it has
a precursor, else MS1 (as ProteoWizard reads it). Per scan: ``id`` (the scan number), peaks (32- or
64-bit, network order unless written otherwise, zlib or not), ``precursor_mz`` / ``charge`` (else the
first of ``possibleCharges``) / ``precursor_intensity`` (not the ``0`` written when unknown) /
``precursor_scan`` from the first ``precursorMz``, ``collision_energy``, ``fragmentation_mode`` from
``activationMethod`` as written (``CID``, ``HCD``, ``ETD``; ``ETD+SA`` as ``ETciD``, mzML's name),
``ion_mode`` from ``polarity`` (else a Thermo ``filterLine``'s sign: ``FTMS - c ESI ...``) and ``retention_time`` in
seconds. A charge written unsigned in a
negative scan is negative, as for mzML. An attribute value that does not parse (``precursorCharge="2+"``)
is left out, not the scan. Scans marked ``centroided="0"`` are read as given and counted as profile
spectra. Messages number scans by the order in which they end in the file (1-based; a nested MS2 scan
ends before its MS1 scan).
"""
from __future__ import annotations

import math
import re
from typing import Iterator

import numpy as np

from fastspec.errors import FastspecError
from fastspec.io._common import ReadReport, sniffed
from fastspec.io.mzml import LenientTypes, StartTolerant, XmlDialect, _fmt, _num, iter_xml
from fastspec.spectra import Spectra


_READER = None


def _reader_class():
    """pyteomics' MzXML reader, yielding scans in the order they end in the file."""
    global _READER
    if _READER is None:
        import warnings

        try:
            with warnings.catch_warnings():
                # pyteomics pulls in psims, which warns about an optional compression plugin
                warnings.simplefilter("ignore", UserWarning)
                from pyteomics import mzxml, xml
        except ImportError as e:
            raise FastspecError("reading mzXML needs pyteomics and lxml: pip install 'fastspec[mzml]'") from e

        class _MzXML(StartTolerant, LenientTypes, mzxml.MzXML):  # the file sniffed as mzXML before it is opened
            def _determine_dtype(self, info):
                # byteOrder is written by every converter but fixed to network order (ProteoWizard reads
                # older files without it that way); precision 32 where it is not written
                info = dict(info)
                info.setdefault("precision", "32")
                info.setdefault("byteOrder", "network")
                return super()._determine_dtype(info)

            def _decode_peaks(self, info):
                # undecoded (iter_xml decodes each scan's peaks itself), pyteomics looks up arrays an empty
                # <peaks/> does not have (a KeyError that ended the file): empty arrays, as when decoding
                peaks = info.get("peaks")
                if not self.decode_binary and isinstance(peaks, (dict, list)):
                    info.pop("peaks")
                    arrays = peaks[0] if isinstance(peaks, list) and peaks else {}
                    for k in self._array_keys:
                        info[k] = arrays.get(k, np.zeros(0)) if isinstance(arrays, dict) else np.zeros(0)
                    return
                super()._decode_peaks(info)

            def _get_info_smart(self, element, **kw):
                # nested scans ended (and were decoded and yielded) before their parent: not again
                if xml._local_name(element) == "scan":
                    for child in [c for c in element if isinstance(c.tag, str) and xml._local_name(c) == "scan"]:
                        element.remove(child)
                return super()._get_info_smart(element, **kw)

            def iterfind(self, path, **kwargs):
                # pyteomics re-orders scans by number, holding each back until the next MS1 scan: a file of
                # MS2 scans alone was kept whole in memory, and broken XML in it lost every scan before
                # the break. Here nested MS2 scans come as they end, before their MS1 scan.
                return xml.XML.iterfind(self, path, **kwargs)

        _READER = _MzXML
    return _READER


def _level(s: dict) -> int | None:
    level = _num(s.get("msLevel"))
    if level is None or not math.isfinite(level):
        return None if s.get("precursorMz") else 1  # ProteoWizard reads a scan without msLevel as MS1
    return int(level)


def _profile(s: dict) -> bool:
    return s.get("centroided") is False  # pyteomics reads centroided="0" as False; unwritten: None


#: activationMethod -> fragmentation_mode where the mzML reader's names differ (ETD+SA: ETD with
#: supplemental CID, which ProteoWizard converts to ETD + CID in mzML)
_ACTIVATION = {"ETD+SA": "ETciD"}


def _record(s: dict) -> dict:
    md: dict = {"id": str(s["id"]) if s.get("id") is not None else None, "ms_level": 2}
    prec = s.get("precursorMz") or []
    if isinstance(prec, dict):
        prec = [prec]
    if prec:
        p0 = prec[0]
        if not isinstance(p0, dict):  # <precursorMz>191.02</precursorMz>: pyteomics gives the bare text
            p0 = {"precursorMz": p0}
        md["precursor_mz"] = _num(p0.get("precursorMz"))
        z = _num(p0.get("precursorCharge"))
        if z is None and p0.get("possibleCharges"):  # mzXML 3.1: "2,3" where the charge is not known
            z = _num(str(p0["possibleCharges"]).split(",")[0])
        if z is not None and math.isfinite(z) and z == int(z) and z != 0:
            md["charge"] = str(int(z))  # as text: unsigned is negated in negative mode
        pi = _num(p0.get("precursorIntensity"))
        if pi:  # ProteoWizard writes the required attribute as "0" where the intensity is not known
            md["precursor_intensity"] = pi
        if p0.get("activationMethod"):
            act = str(p0["activationMethod"]).strip()
            md["fragmentation_mode"] = _ACTIVATION.get(act.upper(), act)
        if p0.get("precursorScanNum") is not None:
            md["precursor_scan"] = str(p0["precursorScanNum"])
    if s.get("collisionEnergy") is not None:
        md["collision_energy"] = _fmt(s["collisionEnergy"])
    pol = str(s.get("polarity") or "").strip()
    if pol not in ("+", "-"):  # Thermo's filter line carries it where the attribute is missing: "FTMS - c ESI ..."
        m = _FILTER_POLARITY.match(str(s.get("filterLine") or ""))
        pol = m.group(1) if m else pol
    if pol in ("+", "-"):
        md["ion_mode"] = "positive" if pol == "+" else "negative"
    rt = s.get("retentionTime")
    v = _num(rt)  # pyteomics converts the xs:duration (PT31.5S) to minutes; unparsable text: None
    if v is not None and math.isfinite(v):
        # (rounded: PT61.5S comes back from minutes as 61.49999999999999)
        md["retention_time"] = round(v * 60.0, 9) if getattr(rt, "unit_info", "minute") in ("minute", "min") else v
    return md


#: a Thermo filter line's polarity, after the analyser: "FTMS - c ESI d Full ms2 445.12@hcd30.00 [...]"
_FILTER_POLARITY = re.compile(r"^\s*(?:[A-Z]{2,5}\s+)?([+-])\s")


_MZXML = XmlDialect("mzXML", _level, _profile, _record)


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """MS2 scans of an mzXML file (``.gz`` allowed), ``chunk_size`` at a time (default 10000); broken
    XML and unreadable files as for mzML (:func:`fastspec.io.mzml.iter_spectra`)."""
    if sniffed(path) != "mzxml":  # pyteomics reads anything else as an mzXML file without scans
        raise FastspecError(f"{path}: not readable as mzXML (no <mzXML> element at its start)")
    yield from iter_xml(path, _reader_class(), _MZXML, on_error=on_error, report=report, chunk_size=chunk_size)
