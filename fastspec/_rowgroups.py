"""Random row access to a Parquet table through a bounded cache of decoded row groups.

A library's hit table needs a few metadata rows per query, scattered over the file. Parquet can only
decode whole row groups (column chunks), so each lookup used to decode one group per hit: 2.4M-spectrum
library, 65,536-row groups, 8 string columns, 10 hits: 110-200 ms per query, against ~1 ms for the
search itself. Groups are now smaller (``_METADATA_ROW_GROUP`` in :mod:`fastspec.library`) and kept
once decoded, string columns dictionary-encoded (a quarter of their plain size here), least recently
used first out past a byte budget.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa

#: Decoded (row group, column) arrays kept per open library, in bytes (the 8 hit-table columns of the
#: 2.4M MassBank-grown library take ~110 MB in all).
CACHE_BYTES = 256 << 20


class RowGroupReader:
    """Rows of a Parquet file by position, decoding each (row group, column) once.

    Parameters
    ----------
    path : str or Path
        The Parquet file (row group sizes are read from its footer).
    cache_bytes : int
        Budget of decoded arrays kept; least recently used ones are dropped past it.
    """

    def __init__(self, path: "str | Path", cache_bytes: int = CACHE_BYTES):
        import pyarrow.parquet as pq

        with pq.ParquetFile(str(path)) as plain:
            schema = plain.schema_arrow
        strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        # dictionary pages decode straight to dictionary arrays; results are cast back to the schema's type
        self._pf = pq.ParquetFile(str(path), read_dictionary=strings, page_checksum_verification=True)
        self.schema = schema
        meta = self._pf.metadata
        #: first row of each row group, and the total (int64 (G+1,))
        self.starts = np.zeros(meta.num_row_groups + 1, dtype=np.int64)
        np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], out=self.starts[1:])
        self._budget = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, str], pa.Array] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, rows: np.ndarray, columns: list[str]) -> pa.Table:
        """Rows ``rows`` (int64 positions, any order, repeats allowed) of ``columns`` (all in the schema),
        with the schema's types."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[0] and (rows.min() < 0 or rows.max() >= self.starts[-1]):
            raise IndexError(f"rows must be in [0, {self.starts[-1]})")
        groups_of = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(groups_of, kind="stable")
        sorted_groups = groups_of[order]
        groups, starts = np.unique(sorted_groups, return_index=True)
        bounds = np.r_[starts, rows.shape[0]]
        arrays = self._arrays(groups, columns)
        out = {}
        for c in columns:
            typ = self.schema.field(c).type
            pieces = []
            for j, g in enumerate(groups):
                local = rows[order[bounds[j]:bounds[j + 1]]] - self.starts[g]
                pieces.append(arrays[(int(g), c)].take(pa.array(local, pa.int64())).cast(typ))
            col = pa.concat_arrays(pieces) if pieces else pa.array([], typ)
            # pieces are in group order: back to the caller's order
            out[c] = col.take(pa.array(np.argsort(order, kind="stable"), pa.int64())) if rows.shape[0] else col
        return pa.table(out, schema=pa.schema([self.schema.field(c) for c in columns], metadata=self.schema.metadata))

    def _arrays(self, groups: np.ndarray, columns: list[str]) -> dict[tuple[int, str], pa.Array]:
        got: dict[tuple[int, str], pa.Array] = {}
        with self._lock:
            for g in groups.tolist():
                missing = []
                for c in columns:
                    arr = self._cache.get((g, c))
                    if arr is None:
                        missing.append(c)
                    else:
                        self._cache.move_to_end((g, c))
                        got[(g, c)] = arr
                if missing:
                    part = self._pf.read_row_group(g, columns=missing)
                    for c in missing:
                        arr = part.column(c).combine_chunks()
                        got[(g, c)] = arr
                        self._cache[(g, c)] = arr
                        self._bytes += arr.nbytes
            # least recently used out past the budget (``got`` keeps this call's arrays alive meanwhile)
            while self._bytes > self._budget and self._cache:
                self._bytes -= self._cache.popitem(last=False)[1].nbytes
        return got
