"""mzML reading through pyteomics (imported only when an mzML file is read).

Only MS2 spectra are records (other MS levels are skipped and counted in the report's warnings).
Per spectrum: ``id`` (the mzML native id), peaks from the m/z and intensity arrays, precursor
from the first selected ion (``selected ion m/z``, ``charge state``, ``peak intensity`` ->
``precursor_intensity``), ``collision_energy`` and ``fragmentation_mode`` (``HCD``, ``CID``,
``ETD``...) from the activation, ``ion_mode`` from the scan polarity, ``retention_time`` in
seconds. Messages number spectra by their position in the file (1-based), not by line.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError, ParseError
from fastspec.io._common import ReadReport, finish_block, open_binary
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


def _record(s: dict) -> dict:
    md: dict = {"id": str(s.get("id")) if s.get("id") is not None else None, "ms_level": 2}
    prec = (s.get("precursorList") or {}).get("precursor") or []
    if prec:
        p0 = prec[0]
        ions = (p0.get("selectedIonList") or {}).get("selectedIon") or []
        if ions:
            ion = ions[0]
            md["precursor_mz"] = _num(ion.get("selected ion m/z"))
            if ion.get("charge state") is not None:
                md["charge"] = int(ion["charge state"])
            if ion.get("peak intensity") is not None:
                md["precursor_intensity"] = _num(ion.get("peak intensity"))
        act = p0.get("activation") or {}
        if act.get("collision energy") is not None:
            md["collision_energy"] = _fmt(act.get("collision energy"))
        for k in act:
            if k in DISSOCIATION:
                md["fragmentation_mode"] = DISSOCIATION[k]
                break
            if isinstance(k, str) and k.endswith("dissociation"):
                md["fragmentation_mode"] = k
        if p0.get("spectrumRef") is not None:
            md["precursor_scan"] = str(p0["spectrumRef"])
    pos, neg = "positive scan" in s, "negative scan" in s
    if pos != neg:
        md["ion_mode"] = "positive" if pos else "negative"
    scans = (s.get("scanList") or {}).get("scan") or []
    if scans and scans[0].get("scan start time") is not None:
        rt = scans[0]["scan start time"]
        unit = getattr(rt, "unit_info", None)
        v = float(rt)
        md["retention_time"] = v * 60.0 if unit in ("minute", "min") else v
    return md


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v) -> str:
    f = _num(v)
    if f is None:
        return str(v)
    return str(int(f)) if f == int(f) else repr(f)


def _block(path, mzs, ints, rows, lines, on_error, report) -> Spectra:
    lengths = np.fromiter((m.shape[0] for m in mzs), dtype=np.int64, count=len(mzs))
    offsets = np.zeros(len(mzs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    mz = np.concatenate(mzs) if mzs else np.zeros(0)
    it = np.concatenate(ints) if ints else np.zeros(0)
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    meta = pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})
    return finish_block(report, path, np.asarray(lines, np.int64), None, offsets, mz, it, meta, on_error, text=False)


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """MS2 spectra of an mzML file (``.gz`` allowed), ``chunk_size`` at a time (default 10000)."""
    mzml = _pyteomics_mzml()
    step = int(chunk_size or 10_000)
    fh, _ = open_binary(path)
    mzs, ints, rows, lines = [], [], [], []
    skipped = 0
    position = 0
    try:
        reader = mzml.MzML(fh, use_index=False, decode_binary=True)
        it = iter(reader)
        while True:
            try:
                s = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - lxml/pyteomics raise many kinds on broken XML
                why = f"invalid mzML ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})".rstrip()
                if on_error == "raise":
                    raise ParseError(why, path, position + 1) from e
                report.reject(position + 1, why, path)
                break
            position = int(s.get("index", position)) + 1
            level = s.get("ms level")
            if level is not None and int(level) != 2:
                skipped += 1
                continue
            m = np.asarray(s.get("m/z array", np.zeros(0)), dtype=np.float64)
            i = np.asarray(s.get("intensity array", np.zeros(0)), dtype=np.float64)
            if m.shape != i.shape:
                m, i = np.zeros(0), np.zeros(0)
            mzs.append(m)
            ints.append(i)
            rows.append(_record(s))
            lines.append(position)
            if len(rows) >= step:
                yield _block(path, mzs, ints, rows, lines, on_error, report)
                mzs, ints, rows, lines = [], [], [], []
        if rows:
            yield _block(path, mzs, ints, rows, lines, on_error, report)
    finally:
        report.warn("spectra with ms level != 2 skipped", skipped)
        fh.close()
