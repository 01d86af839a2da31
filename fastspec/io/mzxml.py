"""mzXML reading through pyteomics (imported only when an mzXML file is read).

mzXML (2.x and 3.x, as ProteoWizard, Thermo's ReAdW, MassLynx and MZmine wrote it, and as GNPS/MassIVE
hold many public runs) is read like mzML (:mod:`fastspec.io.mzml`): only MS2 scans are records (nested
in their MS1 scan or not); per scan ``id`` (the scan number), peaks (32- or 64-bit, zlib or not),
``precursor_mz`` / ``charge`` / ``precursor_intensity`` / ``precursor_scan`` from the first
``precursorMz``, ``collision_energy``, ``fragmentation_mode`` from ``activationMethod`` (``CID``,
``HCD``, ``ETD``...), ``ion_mode`` from ``polarity`` and ``retention_time`` in seconds. A charge
written unsigned in a negative scan is negative, as for mzML. Scans marked ``centroided="0"`` are read
as given and counted as profile spectra. Messages number scans by the order in which they end in the
file (1-based; a nested MS2 scan ends before its MS1 scan).
"""
from __future__ import annotations

import math
from typing import Iterator

from fastspec.errors import FastspecError
from fastspec.io._common import ReadReport, sniff_format
from fastspec.io.mzml import XmlDialect, _fmt, _num, iter_xml
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

        class _MzXML(mzxml.MzXML):
            def iterfind(self, path, **kwargs):
                # pyteomics re-orders scans by number, holding each back until the next MS1 scan: a file of
                # MS2 scans alone was kept whole in memory, and broken XML in it lost every scan before
                # the break. Here nested MS2 scans come as they end, before their MS1 scan.
                return xml.XML.iterfind(self, path, **kwargs)

        _READER = _MzXML
    return _READER


def _level(s: dict) -> int | None:
    level = _num(s.get("msLevel"))
    return None if level is None or not math.isfinite(level) else int(level)


def _profile(s: dict) -> bool:
    return s.get("centroided") is False  # pyteomics reads centroided="0" as False; unwritten: None


def _record(s: dict) -> dict:
    md: dict = {"id": str(s["id"]) if s.get("id") is not None else None, "ms_level": 2}
    prec = s.get("precursorMz") or []
    if isinstance(prec, dict):
        prec = [prec]
    if prec:
        p0 = prec[0]
        md["precursor_mz"] = _num(p0.get("precursorMz"))
        z = _num(p0.get("precursorCharge"))
        if z is not None and math.isfinite(z) and z == int(z) and z != 0:
            md["charge"] = str(int(z))  # as text: unsigned is negated in negative mode
        if p0.get("precursorIntensity") is not None:
            md["precursor_intensity"] = _num(p0.get("precursorIntensity"))
        if p0.get("activationMethod"):
            md["fragmentation_mode"] = str(p0["activationMethod"]).strip()
        if p0.get("precursorScanNum") is not None:
            md["precursor_scan"] = str(p0["precursorScanNum"])
    if s.get("collisionEnergy") is not None:
        md["collision_energy"] = _fmt(s["collisionEnergy"])
    pol = str(s.get("polarity") or "").strip()
    if pol in ("+", "-"):
        md["ion_mode"] = "positive" if pol == "+" else "negative"
    rt = s.get("retentionTime")
    if rt is not None:
        v = float(rt)  # pyteomics converts the xs:duration (PT31.5S) to minutes
        md["retention_time"] = v * 60.0 if getattr(rt, "unit_info", "minute") in ("minute", "min") else v
    return md


_MZXML = XmlDialect("mzXML", _level, _profile, _record)


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """MS2 scans of an mzXML file (``.gz`` allowed), ``chunk_size`` at a time (default 10000); broken
    XML and unreadable files as for mzML (:func:`fastspec.io.mzml.iter_spectra`)."""
    try:
        found = sniff_format(path) == "mzxml"
    except (FastspecError, OSError):
        found = False
    if not found:  # pyteomics reads anything else as an mzXML file without scans
        raise FastspecError(f"{path}: not readable as mzXML (no <mzXML> element at its start)")
    yield from iter_xml(path, _reader_class(), _MZXML, on_error=on_error, report=report, chunk_size=chunk_size)
