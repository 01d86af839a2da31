"""mzML reading through pyteomics (imported only when an mzML file is read).

Only MS2 spectra are records (other MS levels are skipped and counted in the report's warnings).
Profile-mode MS2 spectra are read as given, every sample point a peak, and counted in the warnings.
Per spectrum: ``id`` (the mzML native id), peaks from the m/z and intensity arrays, precursor
from the first selected ion (``selected ion m/z``, ``charge state``, ``peak intensity`` ->
``precursor_intensity``; without a selected ion m/z, as OpenMS writes some SCIEX DDA files, the
isolation window target m/z), ``collision_energy`` and ``fragmentation_mode`` (``HCD``, ``CID``,
``ETD``...) from the activation, ``ion_mode`` from the scan polarity, ``retention_time`` in
seconds. Converters (ProteoWizard, OpenMS) write the charge state unsigned in negative mode too,
so an unsigned charge in a negative scan is negative. mzML 1.0 files (precursor and scan inside
``spectrumDescription``, selected ion as ``m/z``, ``scan time``) are read the same way.
Messages number spectra by their position in the file (1-based), not by line.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError, ParseError
from fastspec.io._common import ReadReport, finish_block, open_binary, sniffed
from fastspec.spectra import Spectra

#: activation cvParam names -> fragmentation_mode
DISSOCIATION = {
    "beam-type collision-induced dissociation": "HCD",
    "higher energy beam-type collision-induced dissociation": "HCD",
    "collision-induced dissociation": "CID",
    "trap-type collision-induced dissociation": "CID",
    "in-source collision-induced dissociation": "ISCID",
    "low-energy collision-induced dissociation": "CID",
    "electron transfer dissociation": "ETD",
    "electron capture dissociation": "ECD",
    "electron activated dissociation": "EAD",
    "infrared multiphoton dissociation": "IRMPD",
    "ultraviolet photodissociation": "UVPD",
    "supplemental beam-type collision-induced dissociation": "EThcD",
    "supplemental collision-induced dissociation": "ETciD",
}


def _pyteomics_mzml():
    import warnings

    try:
        with warnings.catch_warnings():
            # pyteomics pulls in psims, which warns about an optional compression plugin
            warnings.simplefilter("ignore", UserWarning)
            from pyteomics import mzml
    except ImportError as e:
        raise FastspecError("reading mzML needs pyteomics and lxml: pip install 'fastspec[mzml]'") from e
    return mzml


class UnsupportedCompression(FastspecError):
    """Binary arrays in a compression the installed pyteomics cannot decode (MS-Numpress without
    pynumpress): pyteomics would otherwise read the compressed bytes as raw floats."""


_READER = None


class StartTolerant:
    """Mixin for a pyteomics XML reader of a file already sniffed as its format: broken XML within the
    first few KiB (which pyteomics parses in its constructor for the version) is then broken XML part-way,
    a rejection in :func:`iter_xml`, not an unreadable file."""

    def _get_version_info(self):
        from lxml import etree

        try:
            return super()._get_version_info()
        except etree.XMLSyntaxError:
            return None, None


class LenientTypes:
    """Mixin for a pyteomics XML reader: an element whose values do not all convert to their schema types
    (mzXML's ``precursorCharge="2+"``, an mzML term written twice, which pyteomics gives as a list, or
    ``"inf"`` for an integer) keeps the values that do not convert as written, for the reader to judge, where
    pyteomics' error ended the whole file as broken XML."""

    def _convert_types(self, name, info):
        from pyteomics.auxiliary import PyteomicsError

        failed = (PyteomicsError, TypeError, ValueError, OverflowError)
        given = dict(info)
        try:
            super()._convert_types(name, info)
        except failed:
            info.clear()
            info.update(given)
            for key, value in given.items():  # on failure, value by value
                one = {key: value}
                try:
                    super()._convert_types(name, one)
                except failed:
                    continue
                info[key] = one[key]


def _reader_class(tolerant: bool = False):
    """pyteomics' MzML reader, refusing binary arrays in a compression it does not know (``tolerant``: with
    :class:`StartTolerant`)."""
    global _READER
    if _READER is None:
        mzml = _pyteomics_mzml()

        class _MzML(LenientTypes, mzml.MzML):
            def _determine_compression(self, info):
                found = super()._determine_compression(info)
                if found == "no compression":
                    names = [k for k in info if isinstance(k, str)]
                    extra = info.get("name")
                    if isinstance(extra, str):
                        names.append(extra)
                    elif isinstance(extra, (list, tuple, set)):
                        names += [n for n in extra if isinstance(n, str)]
                    for name in names:
                        if "compression" in name.lower() and name != "no compression":
                            hint = " (pip install pynumpress, or fastspec[numpress])" if "numpress" in name.lower() else ""
                            raise UnsupportedCompression(f"binary arrays use {name!r}, which pyteomics "
                                                         f"cannot decode here{hint}")
                return found

        strict = _MzML if hasattr(mzml.MzML, "_determine_compression") else mzml.MzML
        _READER = (strict, type("_MzMLStartTolerant", (StartTolerant, strict), {}))
    return _READER[bool(tolerant)]


def _record(s: dict) -> dict:
    md: dict = {"id": str(s.get("id")) if s.get("id") is not None else None, "ms_level": 2}
    if s.get("spectrum title") is not None:  # MS:1000796, ProteoWizard writes one per spectrum (matchms keeps it)
        md["title"] = str(s["spectrum title"])
    desc = s.get("spectrumDescription") or {}  # mzML 1.0
    prec = (s.get("precursorList") or desc.get("precursorList") or {}).get("precursor") or []
    if prec:
        p0 = prec[0]
        ions = (p0.get("selectedIonList") or {}).get("selectedIon") or []
        ion = ions[0] if ions else {}
        pmz = ion.get("selected ion m/z", ion.get("m/z"))
        if pmz is None:
            pmz = (p0.get("isolationWindow") or {}).get("isolation window target m/z")
        md["precursor_mz"] = _num(_first(pmz))
        # "possible charge state" where the converter could not tell (possibly several: the first)
        zv = ion.get("charge state", ion.get("possible charge state"))
        if isinstance(zv, (list, tuple)):
            zv = zv[0] if zv else None
        if zv is not None:
            # as text: unsigned (as converters write it) is negated in negative mode
            z = _num(zv)
            if z is not None and math.isfinite(z) and z == int(z):
                md["charge"] = str(int(z))
        if ion.get("peak intensity") is not None:
            pi = _num(_first(ion.get("peak intensity")))
            md["precursor_intensity"] = pi if pi else None  # 0: not measured (as mzXML, MGF)
        act = p0.get("activation") or {}
        if act.get("collision energy") is not None:
            md["collision_energy"] = _fmt(_first(act.get("collision energy")))
        elif act.get("normalized collision energy") is not None:  # (Thermo's NCE, in %)
            md["collision_energy"] = f"{_fmt(_first(act.get('normalized collision energy')))}% (NCE)"
        elif act.get("supplemental collision energy") is not None:  # EThcD / ETciD: the supplemental activation's
            md["collision_energy"] = _fmt(_first(act.get("supplemental collision energy")))
        etd = False
        for k in act:
            if k in DISSOCIATION:
                mode = DISSOCIATION[k]
                # ETD with a plain CID / HCD term next to it: older converters' spelling of supplemental
                # activation (EThcD / ETciD)
                md["fragmentation_mode"] = {"CID": "ETciD", "HCD": "EThcD"}.get(mode, mode) if etd else mode
                if k != "electron transfer dissociation":
                    break  # ETD may come with supplemental activation: EThcD, read on
                etd = True
            elif isinstance(k, str) and k.endswith("dissociation"):
                md["fragmentation_mode"] = k
        if p0.get("spectrumRef") is not None:
            md["precursor_scan"] = str(p0["spectrumRef"])
    scans = (s.get("scanList") or {}).get("scan") or desc.get("scan") or []
    if isinstance(scans, dict):
        scans = [scans]
    scan = scans[0] if scans else {}
    pos, neg = "positive scan" in s, "negative scan" in s
    if not (pos or neg):
        pos, neg = "positive scan" in scan, "negative scan" in scan
    if pos != neg:
        md["ion_mode"] = "positive" if pos else "negative"
    rt = _first(scan.get("scan start time", scan.get("scan time")))
    v = _num(rt)
    if v is not None and math.isfinite(v):  # (a value that is no number is left out, as mzXML's reader does)
        md["retention_time"] = v * 60.0 if getattr(rt, "unit_info", None) in ("minute", "min") else v
    return md


def _first(v):
    """A cvParam's value; the first where one is written twice (pyteomics then gives a list of them)."""
    if isinstance(v, (list, tuple)):
        return v[0] if v else None
    return v


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v) -> str:
    f = _num(v)
    if f is None or not math.isfinite(f):  # ("inf" / "nan": int() of them raised)
        return str(v)
    return str(int(f)) if f == int(f) else repr(f)


_ARRAYS_DIFFER = "m/z and intensity arrays differ in length"


def _block(path, mzs, ints, rows, lines, on_error, report) -> Spectra:
    lengths = np.fromiter((m.shape[0] for m in mzs), dtype=np.int64, count=len(mzs))
    offsets = np.zeros(len(mzs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    mz = np.concatenate(mzs) if mzs else np.zeros(0)
    it = np.concatenate(ints) if ints else np.zeros(0)
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    keys.pop("_error", None)
    meta = pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})
    errors = None
    if any("_error" in r for r in rows):
        errors = np.array([r.get("_error") for r in rows], dtype=object)
    return finish_block(report, path, np.asarray(lines, np.int64), errors, offsets, mz, it, meta, on_error, text=False)


class _SmallReads:
    """A binary file handing lxml at most 4 KiB per read. lxml's iterparse drops the elements of the
    chunk in which it meets broken XML (a truncated download, a tag typo); with its default 32 KiB
    chunks that lost up to ~30 valid spectra before the break, in 4 KiB chunks at most the one or two
    that end next to it (a Python call per 4 KiB: nothing next to pyteomics' own decoding)."""

    def __init__(self, fh, size: int = 4096):
        self._fh, self._size = fh, size

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(self._size if n is None or n < 0 else min(n, self._size))

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _decoded(s: dict, key: str) -> np.ndarray:
    """A spectrum's binary array ``key`` as float64 (pyteomics' undecoded record, or already an array;
    missing: empty). A 1-D result is required: a byte count that is no multiple of the value size, a
    damaged zlib stream or base64 text raise."""
    a = s.get(key)
    if a is None:
        return np.zeros(0)
    if hasattr(a, "decode") and hasattr(a, "compression"):  # pyteomics' binary_array_record
        if not a.data:  # <binary></binary> (msconvert's empty PASEF scans): what pyteomics' decoding gives
            return np.zeros(0)
        a = a.decode()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{key} has shape {a.shape}")
    return a


def _decoded_pair(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """The m/z and intensity arrays of a spectrum (:func:`_decoded`); mzXML's two records share one
    interleaved ``<peaks>`` payload, decoded once here (it was decoded for each)."""
    m, i = s.get("m/z array"), s.get("intensity array")
    shared = (m is not None and i is not None and hasattr(m, "source") and getattr(m, "data", None)
              and m.data is getattr(i, "data", None) and hasattr(m.source, "_finalize_record_conversion"))
    if shared:
        raw = m.source.decode_data_array(m.data, m.compression, m.dtype)
        out = []
        for rec in (m, i):
            a = np.asarray(m.source._finalize_record_conversion(raw, rec), dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"{rec.key} has shape {a.shape}")
            out.append(a)
        return out[0], out[1]
    return _decoded(s, "m/z array"), _decoded(s, "intensity array")


def _xml_error(e: Exception) -> str:
    """``ExceptionType: first line of its message``."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip()


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """MS2 spectra of an mzML file (``.gz`` allowed), ``chunk_size`` at a time (default 10000).

    Broken XML part-way (a truncated download) ends the file: the spectra before it are returned and
    the rest counts as one rejected record at the position of the first spectrum not read, its reason
    naming the XML line (``on_error="raise"``: a :class:`ParseError` there), also when the break lies in
    the first KiB of a file whose start reads as mzML. A file that does not start as mzML (empty, an
    HTML page, not gzip despite ``.gz``, XML whose root element is not ``mzML``) is a :class:`FastspecError`.
    """
    found = sniffed(path)
    if found == "mzxml":  # pyteomics reads an mzXML file as an mzML file without spectra
        raise FastspecError(f"{path}: an mzXML file, not mzML (name it .mzXML or pass format='mzxml')")
    if found is None:  # and any other XML document (mzIdentML, an HTML page) as one without spectra
        root = _root_element(path)
        if root is not None and root not in ("mzML", "indexedmzML"):
            raise FastspecError(f"{path}: not readable as mzML (its root element is <{root}>, not <mzML>)")
    yield from iter_xml(path, _reader_class(tolerant=found == "mzml"), _MZML, on_error=on_error, report=report,
                        chunk_size=chunk_size)


def _root_element(path: str) -> str | None:
    """Local name of the XML document's root element (None: not well-formed before it, or unreadable;
    the reader then says why)."""
    try:
        from lxml import etree
    except ImportError:  # the mzml extra is missing: the reader says so
        return None
    try:
        fh, _ = open_binary(path)
    except (OSError, FastspecError):
        return None
    try:
        with fh:
            for _, el in etree.iterparse(fh, events=("start",), recover=False, resolve_entities=False,
                                         no_network=True, huge_tree=False):
                return etree.QName(el).localname
    except Exception:  # noqa: BLE001 - lxml, gzip and zlib raise many kinds
        return None
    return None


class XmlDialect(NamedTuple):
    """What differs between the XML formats pyteomics reads for :func:`iter_xml`."""

    name: str  #: in messages ("invalid mzML (...)")
    ms_level: Callable[[dict], int | None]  #: a spectrum's MS level (None: not written)
    profile: Callable[[dict], bool]  #: whether it is a profile-mode spectrum
    record: Callable[[dict], dict]  #: its metadata


def _mzml_level(s: dict) -> int | None:
    level = _num(_first(s.get("ms level")))
    if level is None or not math.isfinite(level) or level != int(level):
        # not written, or no whole number ("abc", "2.5": as not written, as mzXML's reader reads them)
        return 1 if "MS1 spectrum" in s else None  # the spectrum type, where no ms level is written
    return int(level)


def _mzml_profile(s: dict) -> bool:
    desc = s.get("spectrumDescription") or {}
    return "profile spectrum" in s or "profile mass spectrum" in desc or "profile spectrum" in desc


_MZML = XmlDialect("mzML", _mzml_level, _mzml_profile, _record)


def iter_xml(path: str, reader_class, dialect: XmlDialect, *, on_error: str, report: ReadReport,
             chunk_size: int | None = None) -> Iterator[Spectra]:
    """MS2 spectra of an XML file read by a pyteomics reader (``reader_class``), ``chunk_size`` at a time
    (default 10000); see :func:`iter_spectra`. Records are numbered by their position among all the
    file's spectra (pyteomics' ``index`` where it gives one)."""
    step = int(chunk_size or 10_000)
    fh, _ = open_binary(path)
    mzs, ints, rows, lines = [], [], [], []
    skipped = 0
    profile = 0
    position = 0
    try:
        try:  # pyteomics parses the start of the file here (its version)
            # arrays decoded here, per spectrum: one that does not decode is that spectrum's rejection,
            # not (as an error of pyteomics' iteration) the end of the file
            reader = reader_class(_SmallReads(fh), use_index=False, decode_binary=False)
        except UnsupportedCompression as e:
            raise UnsupportedCompression(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - lxml, gzip and pyteomics raise many kinds
            raise FastspecError(f"{path}: not readable as {dialect.name} ({_xml_error(e)})") from None
        it = iter(reader)
        while True:
            try:
                s = next(it)
            except StopIteration:
                break
            except UnsupportedCompression as e:  # a file-level problem, not a bad record
                raise UnsupportedCompression(f"{path}: {e}") from None
            except Exception as e:  # noqa: BLE001 - lxml/pyteomics raise many kinds on broken XML
                why = f"invalid {dialect.name} ({_xml_error(e)})"
                if on_error == "raise":
                    if rows:  # a bad spectrum before the break is the first error (raised there)
                        _block(path, mzs, ints, rows, lines, on_error, report)
                    raise ParseError(why, path, position + 1, unit="spectrum") from e
                if rows:  # the spectra read so far come first, so the rejection's position is theirs + 1
                    yield _block(path, mzs, ints, rows, lines, on_error, report)
                    mzs, ints, rows, lines = [], [], [], []
                report.reject(position + 1, why, path)
                break
            position = int(s.get("index", position)) + 1
            level = dialect.ms_level(s)
            if level is not None and level != 2:
                skipped += 1
                continue
            if dialect.profile(s):
                profile += 1  # read as given: every sample point becomes a peak
            row = dialect.record(s)
            try:
                m, i = _decoded_pair(s)
            except UnsupportedCompression as e:
                raise UnsupportedCompression(f"{path}: {e}") from None
            except Exception as e:  # noqa: BLE001 - base64, zlib, numpy and pyteomics raise many kinds
                m, i = np.zeros(0), np.zeros(0)
                row["_error"] = f"peak arrays do not decode ({_xml_error(e)})"
            if m.shape != i.shape:  # also a missing intensity array
                m, i = np.zeros(0), np.zeros(0)
                row["_error"] = _ARRAYS_DIFFER
            mzs.append(m)
            ints.append(i)
            rows.append(row)
            lines.append(position)
            if len(rows) >= step:
                yield _block(path, mzs, ints, rows, lines, on_error, report)
                mzs, ints, rows, lines = [], [], [], []
        if rows:
            yield _block(path, mzs, ints, rows, lines, on_error, report)
    finally:
        report.warn("spectra with ms level != 2 skipped", skipped)
        report.warn("profile-mode MS2 spectra read as peaks (centroid them first)", profile)
        fh.close()
