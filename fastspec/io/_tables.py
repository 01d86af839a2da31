"""Peaks stored as table columns (parquet, MassSpecGym TSV): list columns or comma-joined strings
-> CSR arrays, vectorised with pyarrow (no Python loop per spectrum)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastspec.errors import FastspecError
from fastspec.io._common import ReadReport, finish_block
from fastspec.spectra import Spectra

MZ_COLUMNS = ("mz", "mzs", "m/z", "mz_array", "m/z array", "masses", "peaks_mz")
INTENSITY_COLUMNS = ("intensity", "intensities", "intensity_array", "intensity array", "peaks_intensity")

REASON_LENGTHS = "m/z and intensity lists differ in length"
REASON_VALUES = "unparsable peak list"


#: Peak column pairs, in the order they are preferred when a table holds more than one of the names: a
#: spectrum's own ``mz`` / ``intensity`` value (an ``MZ=`` line, MS-DIAL's ``INTENSITY:``) sits beside
#: ``mzs`` / ``intensities`` peak lists in fastspec's TSV (its Parquet files name their pair in the
#: schema metadata instead, see :mod:`fastspec.io.parquet`).
PEAK_PAIRS = (("mzs", "intensities"), ("mz", "intensity"), ("peaks_mz", "peaks_intensity"),
              ("mz_array", "intensity_array"), ("m/z array", "intensity array"))


def find_peak_columns(names: list[str], path: str) -> tuple[str, str]:
    """Names of the m/z and intensity columns (case-insensitive match of the usual names; the first
    complete pair of :data:`PEAK_PAIRS`, else the first name of each kind)."""
    low = {n.lower(): n for n in names}
    for a, b in PEAK_PAIRS:
        if a in low and b in low:
            return low[a], low[b]
    mz = next((low[c] for c in MZ_COLUMNS if c in low), None)
    it = next((low[c] for c in INTENSITY_COLUMNS if c in low), None)
    if mz is None or it is None:
        if names and str(names[0]).startswith("#"):  # a '#' header: fastspec's own hit tables have one
            raise FastspecError(f"{path}: its first line is a comment ({str(names[0])[:40]!r}), not a header of "
                                "spectrum columns: a fastspec hit table? Spectra need an m/z and an intensity "
                                "column ('mz'/'mzs' and 'intensity'/'intensities')")
        raise FastspecError(f"{path}: needs an m/z and an intensity column ('mz'/'mzs' and "
                            f"'intensity'/'intensities'); found {', '.join(names[:20])}")
    return mz, it


def _flat_lists(col, where: str = "peak column") -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """(lengths int64 (n,), flattened float64 values, row-has-bad-values bool (n,)) of a list column;
    ``where`` names it in the error (file and column)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _flat_strings(col)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise FastspecError(f"{where} must be a list of numbers or a comma-joined string, not {t}")
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col)
    bad = np.zeros(n, dtype=bool)
    vt = values.type
    if pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_decimal(vt):
        values = values.cast(pa.float64())
    else:
        values, bad_vals = _parse_strings(values.cast(pa.string()))
        if bad_vals.any():
            seg = np.repeat(np.arange(n), lengths)
            bad[np.unique(seg[bad_vals])] = True
    if values.null_count:
        # a null peak value is as bad as NaN: the record is rejected by the peak rules
        values = pc.fill_null(values, np.nan)
    return lengths, values, bad


def _parse_strings(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """float64 values of a string array; unparsable entries -> NaN, flagged."""
    values = pc.utf8_trim_whitespace(values)
    try:
        return pc.cast(values, pa.float64()), np.zeros(len(values), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = np.empty(len(values))
        bad = np.zeros(len(values), bool)
        for i, v in enumerate(values.to_pylist()):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                out[i] = np.nan
                bad[i] = True
        return pa.array(out), bad


def _flat_strings(col: pa.Array) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Comma-joined number strings (MassSpecGym ``mzs``) -> (lengths, values, bad rows)."""
    n = len(col)
    s = pc.utf8_trim_whitespace(col.cast(pa.string()))
    s = pc.replace_substring_regex(s, r"^\[|\]$", "")  # tolerate '[1.0, 2.0]'
    empty = pc.fill_null(pc.equal(s, ""), True)
    parts = pc.split_pattern(pc.if_else(empty, pa.scalar(None, pa.string()), s), ",")
    lengths = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values, bad_vals = _parse_strings(pc.list_flatten(parts))
    bad = np.zeros(n, bool)
    if bad_vals.any():
        seg = np.repeat(np.arange(n), lengths)
        bad[np.unique(seg[bad_vals])] = True
    return lengths, values, bad


def table_spectra(table: pa.Table, path: str, mz_name: str, in_name: str, first_line: int, on_error: str,
                  report: ReadReport, *, text: bool, lines: np.ndarray | None = None,
                  signed_charge: bool = False, records: np.ndarray | None = None) -> Spectra:
    """Spectra from a table with peak columns; rows numbered from ``first_line`` in messages
    (or by ``lines``, one number per row); ``signed_charge``: see :func:`~fastspec.io.meta.harmonise_table`;
    ``records``: see :func:`~fastspec.io._common.finish_block`."""
    n = table.num_rows
    lm, mzv, bad_m = _flat_lists(table.column(mz_name), f"{path}: peak column {mz_name!r}")
    li, inv, bad_i = _flat_lists(table.column(in_name), f"{path}: peak column {in_name!r}")
    errors = np.full(n, None, dtype=object)
    errors[bad_m | bad_i] = REASON_VALUES
    mismatch = lm != li
    errors[mismatch & (errors == None)] = REASON_LENGTHS  # noqa: E711
    mz = mzv.to_numpy(zero_copy_only=False)
    it = inv.to_numpy(zero_copy_only=False)
    if mismatch.any():
        # keep the CSR aligned: drop the peaks of rows whose lists do not pair up
        good_m = np.repeat(~mismatch, lm)
        good_i = np.repeat(~mismatch, li)
        mz, it = mz[good_m], it[good_i]
        lm = np.where(mismatch, 0, lm)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lm, out=offsets[1:])
    if lines is None:
        lines = np.arange(first_line, first_line + n, dtype=np.int64)
    meta = table.drop_columns([mz_name, in_name])
    has_err = (errors != None).any()  # noqa: E711
    return finish_block(report, path, lines, errors if has_err else None, offsets, mz, it, meta, on_error,
                        text=text, signed_charge=signed_charge, records=records)
