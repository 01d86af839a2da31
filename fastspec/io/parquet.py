"""Parquet reading and writing (one row per spectrum).

Reading accepts any table with an m/z and an intensity list column (``mz``/``intensity``, also
``mzs``/``intensities``, or comma-joined strings); every other column is metadata, kept with its
type (aliases harmonised, canonical columns added). The list columns are flattened by pyarrow
straight into CSR arrays, with no Python loop per spectrum. Rows are numbered from 1 in messages.

Writing uses the same schema: ``mz`` list<float64>, ``intensity`` list<float32> (``mzs`` /
``intensities``, else ``peaks_mz`` / ``peaks_intensity``, when the metadata has columns of those names;
the pair is named in the schema metadata, ``peak_columns``), then the metadata columns (``precursor_mz``
float64 and ``charge`` int8 from the Spectra arrays).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError
from fastspec.io._common import ReadReport
from fastspec.io._tables import PEAK_PAIRS, find_peak_columns, table_spectra
from fastspec.spectra import Spectra

SCHEMA_TAG = b"fastspec-spectra/1"


def _open(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise FastspecError(f"{path}: not a readable parquet file: {e}") from e


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """Spectra of a parquet file: the whole table at once, or row batches of ``chunk_size``."""
    pf = _open(path)
    meta = pf.schema_arrow.metadata or {}
    # fastspec's own files hold charges with their sign; other tables may hold 1 in negative mode
    own = meta.get(b"format") == SCHEMA_TAG
    mz_name, in_name = _own_peak_columns(meta, pf.schema_arrow.names) if own else (None, None)
    if mz_name is None:
        mz_name, in_name = find_peak_columns(pf.schema_arrow.names, path)
    try:
        if chunk_size is None:
            yield table_spectra(pf.read(), path, mz_name, in_name, 1, on_error, report, text=False,
                                signed_charge=own)
            return
        row = 1
        for batch in pf.iter_batches(batch_size=int(chunk_size)):
            t = pa.Table.from_batches([batch])
            yield table_spectra(t, path, mz_name, in_name, row, on_error, report, text=False, signed_charge=own)
            row += t.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise FastspecError(f"{path}: cannot read parquet data: {e}") from e


def _own_peak_columns(meta: dict, names: list[str]) -> tuple[str | None, str | None]:
    """The peak columns a fastspec-written file names in its schema metadata (``peak_columns``); files
    written before that key hold them as ``mz`` / ``intensity`` whatever other columns they have."""
    pair = meta.get(b"peak_columns", b"mz,intensity").decode("utf-8", "replace").split(",")
    return (pair[0], pair[1]) if len(pair) == 2 and pair[0] in names and pair[1] in names else (None, None)


def to_table(spectra: Spectra) -> pa.Table:
    """The parquet schema of ``spectra``: peak list columns first, then the metadata."""
    off = spectra.offsets
    if off[-1] < 2**31 - 1:
        offs = pa.array(off.astype(np.int32))
        mk = pa.ListArray.from_arrays
    else:
        offs = pa.array(off)
        mk = pa.LargeListArray.from_arrays
    md = spectra.metadata
    # peaks as mz / intensity, unless the metadata holds a column of that name (a spectrum's own m/z or
    # intensity value): then under the first pair of names it leaves free, recorded in the schema metadata
    # (other readers take the first complete pair of PEAK_PAIRS, mzs / intensities first)
    taken = {n.lower() for n in md.column_names}
    names = next((p for p in (PEAK_PAIRS[1], PEAK_PAIRS[0], PEAK_PAIRS[2]) if not taken & set(p)), None)
    if names is None:
        raise FastspecError("cannot write parquet: the metadata has columns named like every pair of peak "
                            f"columns ({', '.join(sorted(taken & {n for p in PEAK_PAIRS[:3] for n in p}))})")
    cols = {
        names[0]: mk(offs, pa.array(spectra.mz, pa.float64())),
        names[1]: mk(offs, pa.array(spectra.intensity, pa.float32())),
    }
    pmz = spectra.precursor_mz
    ch = spectra.charge
    for name in md.column_names:
        if name in cols:
            continue
        if name == "precursor_mz":
            cols[name] = pa.array(pmz, pa.float64(), mask=~np.isfinite(pmz))
        elif name == "charge":
            cols[name] = pa.array(ch, pa.int8(), mask=ch == 0)
        else:
            c = md.column(name)
            cols[name] = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    cols.setdefault("precursor_mz", pa.array(pmz, pa.float64(), mask=~np.isfinite(pmz)))
    cols.setdefault("charge", pa.array(ch, pa.int8(), mask=ch == 0))
    table = pa.table(cols)
    return table.replace_schema_metadata({b"format": SCHEMA_TAG, b"peak_columns": ",".join(names).encode()})


def write(spectra: Spectra, path: str, row_group_size: int = 65_536) -> None:
    """Write spectra as parquet (zstd-compressed, row groups of ``row_group_size``)."""
    import pyarrow.parquet as pq

    from fastspec._atomic import write_atomically

    table = to_table(spectra)
    # (tmp: a path, or a device opened: pyarrow deletes a path it fails to write, see write_atomically)
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size,
                                                      compression="zstd"), needs_seek="Parquet", direct_file=True)
