"""MGF (Mascot Generic Format) reading and writing.

Reading covers the GNPS, MassSpecGym, MZmine and matchms/MassBank dialects: records between
``BEGIN IONS`` and ``END IONS``; ``KEY=value`` lines (keys case-insensitive, harmonised by
:mod:`fastspec.io.meta`); ``PEPMASS`` with an optional second value (precursor intensity) and third (charge, when no ``CHARGE``);
``CHARGE`` as ``1+``, ``2-``, ``+1`` or ``1``; peak lines ``m/z intensity [anything]`` separated
by spaces or tabs (a third column, e.g. an annotation or fragment charge, is ignored); ``#``,
``;``, ``!`` and ``/`` comment lines, blank lines, CRLF line ends, scientific notation,
``.gz`` compression. ``KEY=value`` lines before the first record are global parameters: each
record that does not set a key takes its value (as in pyteomics and matchms); other lines outside
records are ignored and counted.
A record without ``END IONS`` (truncated file, or a new ``BEGIN IONS``) is rejected, and so is one without
``BEGIN IONS`` (a file cut inside a record, a damaged ``BEGIN IONS`` line, a record with CR-only line ends
joined to the lines around it): lines outside records followed by an ``END IONS`` that closes no record, or
a line that only starts with ``BEGIN IONS``, count as one rejected record at their first line that is no
``KEY=value`` line.
"""
from __future__ import annotations

import re
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from fastspec.io import _textscan as ts
from fastspec.io._common import ReadReport
from fastspec.io._text import NUM_PEAKS_KEYS, header_lines, iter_text, peak_blocks, string_column, write_text_records
from fastspec.io.meta import key_info
from fastspec.spectra import CANONICAL_KEYS, Spectra

#: canonical key -> MGF key written
MGF_KEYS = {
    "id": "SPECTRUM_ID",
    "name": "NAME",
    "precursor_mz": "PEPMASS",
    "charge": "CHARGE",
    "ion_mode": "IONMODE",
    "adduct": "ADDUCT",
    "formula": "FORMULA",
    "smiles": "SMILES",
    "inchikey": "INCHIKEY",
    "inchikey14": "INCHIKEY14",
    "instrument_type": "INSTRUMENT_TYPE",
    "instrument": "INSTRUMENT",
    "collision_energy": "COLLISION_ENERGY",
    "fragmentation_mode": "FRAGMENTATION_MODE",
}


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 block_bytes: int = 32 << 20) -> Iterator[Spectra]:
    """Spectra of an MGF file, one per block of text (see :func:`fastspec.io.read`)."""
    return iter_text(path, ts.MGF, on_error=on_error, report=report, progress=progress, block_bytes=block_bytes)


def charge_strings(charge) -> pa.Array:
    """Signed charges as MGF ``1+``/``2-`` strings (null for 0)."""
    import numpy as np

    c = np.asarray(charge, dtype=np.int64)
    s = pa.array(np.abs(c)).cast(pa.string())
    sign = pa.array(np.where(c < 0, "-", "+"))
    out = pc.binary_join_element_wise(s, sign, "")
    return pc.if_else(pa.array(c == 0), pa.scalar(None, pa.string()), out)


def plain_charge_strings(spectra: Spectra) -> pa.Array:
    """Signed charges as ``"1"``, ``"-2"`` (null for 0), with an explicit ``"+"`` only when a
    positive charge sits with a negative ion mode, so reading gives the same charge back."""
    import numpy as np

    c = spectra.charge.astype(np.int64)
    s = pa.array(c, mask=c == 0).cast(pa.string())
    if "ion_mode" in spectra.metadata.column_names:
        neg = pc.fill_null(pc.equal(spectra.metadata.column("ion_mode"), "negative"), False)
        clash = pc.and_(neg, pa.array(c > 0))
        if isinstance(clash, pa.ChunkedArray):
            clash = clash.combine_chunks()
        s = pc.if_else(clash, pc.binary_join_element_wise("+", s, ""), s)
    return s


def metadata_fields(spectra: Spectra, names: dict[str, str], key_style) -> list[tuple[str, pa.Array]]:
    """(label, string values) for every metadata column worth writing, canonical keys first.

    ``precursor_mz`` and ``charge`` come from the Spectra arrays (authoritative); other columns
    whose key harmonises to an already written canonical key, and declared peak counts, are skipped.
    """
    import numpy as np

    md = spectra.metadata
    fields: list[tuple[str, pa.Array]] = []
    written = set()
    for k in CANONICAL_KEYS:
        if k == "precursor_mz":
            p = spectra.precursor_mz
            vals = pa.array(p, pa.float64(), mask=~np.isfinite(p)).cast(pa.string())
        elif k == "charge":
            vals = None
        elif k in md.column_names:
            vals = string_column(md.column(k))
        else:
            continue
        written.add(k)
        # the precursor's field stays when all are missing: CHARGE is written after it, in the same place
        # whichever spectra a chunk of :func:`write_text_records` holds
        if vals is not None and (vals.null_count < len(vals) or k == "precursor_mz"):
            fields.append((names[k], vals))
    for name in md.column_names:
        if name in written:
            continue
        canon, _ = key_info(name)
        if not canon or (canon in written and canon in CANONICAL_KEYS):
            continue  # (a blank name reads as nothing)
        key = key_style(name)
        if name.lower() in NUM_PEAKS_KEYS or key.lower() in NUM_PEAKS_KEYS:
            continue
        vals = string_column(md.column(name))
        if vals.null_count < len(vals):
            fields.append((key, vals))
    return fields


def text_key(name: str, unsafe: re.Pattern, guarded: tuple[str, ...], upper: bool = False,
             reserved: frozenset[str] = frozenset()) -> str:
    """The key a text writer writes for the metadata column ``name``: read back, it gives the column's
    harmonised name (:func:`~fastspec.io.meta.key_info`), never another key.

    Parameters
    ----------
    name : str
        Column name.
    unsafe : re.Pattern
        Characters a key must not hold (the format's key-value separators, whitespace, control
        characters): each run becomes ``_``, which the reader's snake_case form takes for a separator.
    guarded : tuple of str
        First characters that make a line something other than a metadata line (a number: a peak line;
        a comment marker): such a key gets a leading ``_``, which the snake_case form drops.
    upper : bool
        Upper-case the key, where that reads back the same (``ß`` upper-cases to ``SS``).
    reserved : frozenset of str
        Lower-case keys the reader takes apart by name, giving their values to other keys: such a key
        gets a leading ``_`` too.

    Returns
    -------
    str
        The escaped name, else the escaped harmonised name: a name without letters or digits (``#``)
        is harmonised under the names of its characters (``number_sign``), which any format can write.
    """
    target = key_info(name)[0]
    for base in (name, target):
        key = unsafe.sub("_", base.strip())
        if key[:1] in guarded or key.lower() in reserved:
            key = "_" + key
        for k in (key.upper(), key) if upper else (key,):
            if key_info(k)[0] == target:
                return k
    return target  # (not reached: a harmonised name reads back as itself)


#: first characters of a key that make its line a peak line (``2nd_ce=``)
NUMBER_START = tuple("0123456789+-.")
#: characters an MGF key must not hold: the separator '=', and what would end or split its line (control
#: characters, whitespace other than a space)
_MGF_UNSAFE = re.compile(r"(?:[^\S ]|[\x00-\x1f\x7f=])+")
#: ... and first characters it must not have: a number (a peak line), a comment marker (a comment line)
_MGF_GUARDED = NUMBER_START + tuple("#;!/")


def _mgf_key(name: str) -> str:
    # "2nd_ce" -> "_2ND_CE", "#note" -> "_#NOTE", "a=b" -> "A_B": each reads back as the column's snake form
    return text_key(name, _MGF_UNSAFE, _MGF_GUARDED, upper=True)


def write(spectra: Spectra, path: str) -> None:
    """Write spectra as MGF (gzip-compressed for ``.gz``).

    Each record: ``BEGIN IONS``, ``TITLE`` (the ``title`` column, else the id; pyteomics' MGF reader needs
    one), the canonical keys
    under their usual MGF names (``SPECTRUM_ID``, ``NAME``, ``PEPMASS``, ``CHARGE=1+``,
    ``IONMODE``, ``ADDUCT``, ...), the other metadata columns upper-cased, under keys that read back as
    their snake_case names (``#note`` -> ``_#NOTE``, :func:`text_key`), then
    ``m/z intensity`` lines (shortest round-trip decimal form) and ``END IONS``.
    Missing values are not written.
    """
    write_text_records(path, spectra, _records)


def _records(spectra: Spectra, start: int) -> pa.Array:
    """One MGF record string per spectrum (``start``: unused, records depend only on their spectrum)."""
    n = len(spectra)
    fields = metadata_fields(spectra, MGF_KEYS, _mgf_key)
    # TITLE first, CHARGE after PEPMASS, as most tools expect; where a spectrum has no title, its id (pyteomics'
    # default MGF reader indexes records by TITLE: without one it read none of them)
    title = [f for f in fields if f[0] == "TITLE"]
    rest = [f for f in fields if f[0] != "TITLE"]
    ids = next((v for k, v in rest if k == MGF_KEYS["id"]), None)
    if ids is not None:
        title = [("TITLE", pc.coalesce(title[0][1], ids) if title else ids)]
    ch = charge_strings(spectra.charge)
    out = []
    for f in rest:
        out.append(f)
        if f[0] == "PEPMASS":
            out.append(("CHARGE", ch))
    if not any(f[0] == "PEPMASS" for f in rest):
        out.append(("CHARGE", ch))
    fields = title + out
    head = header_lines(fields, "=") if n else None
    peaks = peak_blocks(spectra, " ") if n else pa.array([], pa.string())
    parts = [pa.scalar("BEGIN IONS\n")]
    if head is not None:
        parts.append(head)
    parts += [peaks, pa.scalar("\nEND IONS\n\n")]
    return pc.binary_join_element_wise(*parts, "") if n else pa.array([], pa.string())
