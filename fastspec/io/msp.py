"""MSP (NIST text library format) reading and writing.

Reading covers the NIST, MS-DIAL/RIKEN and MassBank-export dialects:

* records are separated by blank lines (a metadata line right after peaks, or a second
  ``Name:``, also starts a new record); ``Key: value`` lines, keys case-insensitive and
  harmonised by :mod:`fastspec.io.meta` (``PrecursorMZ``/``PRECURSORMZ``, ``Precursor_type``/
  ``PRECURSORTYPE``, ``Ion_mode``/``IONMODE``, ``DB#``, ``INSTRUMENTTYPE``, ...);
* ``Synon:`` lines: plain synonyms go to a ``synonyms`` list column; NIST-encoded ones
  (``Synon: $:03[M+H]+``, ``$:28<InChIKey>``, ...) to their key (:data:`~fastspec.io.meta.NIST_SYNON_CODES`);
* ``Comments:`` blobs of quoted ``"key=value"`` pairs become metadata (``"SMILES=..."`` ->
  ``smiles``), as do MS-DIAL's unquoted ``Comment: DB#=...; origin=...`` when every part is such a pair;
  free text stays in ``comment``;
* GNPS exports' MGF-style ``KEY=value`` lines among the metadata (``CHARGE=-1``, ``SPECTRUMID=...``) are
  metadata (``NAME=`` names the entry); a line of other text there, not starting like a number, makes the
  whole entry unparsable (it no longer starts a new one);
* ``Num Peaks`` missing or wrong: the peaks are trusted, a wrong count is counted as a warning;
* blank lines inside an entry, where converters write them: peaks after blank lines stay in the entry
  while it has fewer than its ``Num Peaks`` (or declares none); metadata after blank lines does too, in an
  entry without peaks or ``Num Peaks`` yet, unless it is a new ``Name:``;
* peaks separated by spaces, tabs, commas or semicolons, several per line (``85 100; 86 50;``), or
  wrapped in NIST's delimiters (``(85 100) [86 50] {87 20}``),
  quoted annotations (``85 100 "p-H2O/-1.2ppm"``) and unquoted ones after the intensity ignored, GOLM
  ``mz:int`` pairs.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.io import _textscan as ts
from fastspec.io._common import ReadReport
from fastspec.io._text import header_lines, iter_text, peak_blocks, string_column, write_text_records
from fastspec.io.massbank import SUBTAG_TAGS
from fastspec.io.mgf import NUMBER_START, metadata_fields, plain_charge_strings, text_key
from fastspec.spectra import Spectra

#: canonical key -> MSP key written (NIST / MassBank style)
MSP_KEYS = {
    "id": "DB#",
    "name": "Name",
    "precursor_mz": "PrecursorMZ",
    "charge": "Charge",
    "ion_mode": "Ion_mode",
    "adduct": "Precursor_type",
    "formula": "Formula",
    "smiles": "SMILES",
    "inchikey": "InChIKey",
    "inchikey14": "InChIKey14",
    "instrument_type": "Instrument_type",
    "instrument": "Instrument",
    "collision_energy": "Collision_energy",
    "fragmentation_mode": "Fragmentation_mode",
}


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 block_bytes: int = 32 << 20) -> Iterator[Spectra]:
    """Spectra of an MSP file, one per block of text (see :func:`fastspec.io.read`)."""
    return iter_text(path, ts.MSP, on_error=on_error, report=report, progress=progress, block_bytes=block_bytes)


#: characters an MSP key must not hold: its separator ':', the '=' of GNPS-style ``KEY=value`` lines (a key
#: ``SMILES=foo`` read back as smiles), and what would end or split its line (control characters,
#: whitespace other than a space)
_MSP_UNSAFE = re.compile(r"(?:[^\S ]|[\x00-\x1f\x7f:=])+")
#: ... and first characters it must not have: a number (a peak line), '#' (a comment line)
_MSP_GUARDED = NUMBER_START + ("#",)
#: keys the reader takes apart by name (``Synon: $:28...``, ``Comments: "SMILES=..."``, ``CH$LINK: INCHIKEY: ...``
#: give their values to other keys); ``comment``, the free text read from ``Comments``, is written as it is
_MSP_RESERVED = frozenset({"synon", "synonym", "comments"} | {t.lower() for t in SUBTAG_TAGS})


def _msp_key(name: str) -> str:
    # "2nd_ce" -> "_2nd_ce", "#note" -> "_#note", "a=b" -> "a_b", "synon" -> "_synon": each reads back as the
    # column's snake form
    return text_key(name, _MSP_UNSAFE, _MSP_GUARDED, reserved=_MSP_RESERVED)


def write(spectra: Spectra, path: str) -> None:
    """Write spectra as MSP (gzip-compressed for ``.gz``).

    Each record: ``Name:`` (the name, else the id), the canonical keys under NIST names
    (``DB#``, ``PrecursorMZ``, ``Precursor_type``, ``Charge`` signed, ``Ion_mode: P/N``, ...),
    other metadata columns as ``key: value``, under keys that read back as their snake_case names
    (``a=b`` -> ``a_b``, :func:`~fastspec.io.mgf.text_key`; lists such as ``synonyms`` as one ``Synon:``
    line per element), ``Num Peaks:``, tab-separated ``m/z intensity`` lines and a blank line.
    """
    write_text_records(path, spectra, _records)


def _records(spectra: Spectra, start: int) -> pa.Array:
    """One MSP record string per spectrum; ``start`` (the first one's row in the file) numbers the
    ``Name:`` of spectra without a name or id."""
    n = len(spectra)
    md = spectra.metadata
    names = dict(MSP_KEYS)
    fields = metadata_fields(spectra.with_metadata(md.drop_columns([c for c in ("synonyms",) if c in md.column_names])),
                             names, _msp_key)
    out = []
    ids = string_column(md.column("id")) if "id" in md.column_names else pa.array([str(i) for i in range(start, start + n)])
    name_vals = None
    for label, vals in fields:
        if label == "Name":
            name_vals = vals
            continue
        if label == "Ion_mode":
            vals = pc.if_else(pc.equal(vals, "positive"), "P", pc.if_else(pc.equal(vals, "negative"), "N", vals))
        out.append((label, vals))
    name_vals = pc.coalesce(name_vals, ids) if name_vals is not None else ids
    charge = plain_charge_strings(spectra)
    # Charge after PrecursorMZ
    ordered = [("Name", name_vals)]
    if "synonyms" in md.column_names:
        syn = md.column("synonyms").combine_chunks()
        if pa.types.is_list(syn.type) or pa.types.is_large_list(syn.type):
            # one line per synonym: line breaks inside one folded (a "Synon: evil\n50 999" made a peak line)
            syn = pc.replace_substring_regex(pc.binary_join(syn.cast(pa.list_(pa.string())), "\x1f"), r"[\r\n]+", " ")
            syn = pc.replace_substring(syn, "\x1f", "\nSynon: ")
            syn = pc.if_else(pc.equal(syn, ""), pa.scalar(None, pa.string()), syn)
        else:
            syn = string_column(syn)
        ordered.append(("Synon", syn))
    for label, vals in out:
        ordered.append((label, vals))
        if label == "PrecursorMZ":
            ordered.append(("Charge", charge))
    if not any(lab == "PrecursorMZ" for lab, _ in out):
        ordered.append(("Charge", charge))
    counts = pa.array(np.diff(spectra.offsets)).cast(pa.string())
    ordered.append(("Num Peaks", counts))
    head = header_lines(ordered, ": ")
    return pc.binary_join_element_wise(head, peak_blocks(spectra, "\t"), pa.scalar("\n\n"), "")
