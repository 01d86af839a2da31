"""HDF5 (h5py) reading and writing: a chunked, compressed CSR layout for millions of spectra.

Layout (``format_version`` 1; see ``docs/formats.md``)::

    /                     attrs: format = "fastspec-spectra", format_version = 1,
                                 n_spectra, n_peaks
    /offsets              int64   (n+1,)     peaks of spectrum i: [offsets[i], offsets[i+1])
    /mz                   float64 (n_peaks,) sorted within each spectrum
    /intensity            float32 (n_peaks,)
    /precursor_mz         float64 (n,)       NaN when unknown
    /charge               int8    (n,)       0 when unknown
    /metadata             group; attrs: columns (names in order)
    /metadata/<name>/     one group per column; attrs: kind, arrow_type, arrow_schema (the type as an
                          Arrow IPC schema of one field "v", opaque bytes; files before it lack it)
        kind "string":    data uint8 (UTF-8 bytes), offsets int64 (n+1,)
        kind "number"/"bool": values (n,) numeric (bool as uint8)
        kind "binary":    data uint8 (the bytes), offsets int64 (n+1,) (binary columns)
        kind "json":      like "string", one JSON document per row (lists, structs, ...)
        valid             bool (n,), present only when the column has nulls

Every array dataset is chunked (64k elements) and gzip-compressed with the shuffle filter, so
any row range reads without touching the rest (:func:`iter_spectra` reads ``chunk_size`` rows at
a time). Column names are stored percent-encoded when they contain ``/`` or ``.``.
"""
from __future__ import annotations

import json
import os
from typing import Iterator
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError
from fastspec.io._common import ReadReport, finish_block
from fastspec.spectra import Spectra

FORMAT = "fastspec-spectra"
FORMAT_VERSION = 1
CHUNK = 1 << 16
_COMP = dict(compression="gzip", compression_opts=4, shuffle=True)
#: characters kept as they are in HDF5 group names of metadata columns ('/' and '%' are encoded)
_SAFE = " _-()[]$:#,;=+*'@!?&^~`<>|{}\"\\"


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise FastspecError("HDF5 support needs h5py: pip install h5py") from e
    return h5py


def _dataset(group, name: str, data: np.ndarray) -> None:
    n = data.shape[0]
    if n == 0:
        group.create_dataset(name, data=data)
        return
    group.create_dataset(name, data=data, chunks=(min(CHUNK, n),), **_COMP)


def _string_buffers(arr: pa.Array, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets (n+1) starting at 0) of a string array (``binary``: of a binary array, its
    bytes); nulls are empty."""
    arr = arr.cast(pa.large_binary() if binary else pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + n + 1] if n else np.zeros(1, np.int64)
    data = (np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8))
    data = data[offs[0]: offs[-1]] if n else np.zeros(0, np.uint8)
    offs = offs - offs[0]
    return np.ascontiguousarray(data), np.ascontiguousarray(offs, dtype=np.int64)


def _key(name: str) -> str:
    """A metadata column's HDF5 name: percent-encoded (``/`` and ``%``; HDF5 paths), and ``.``, ``..`` and
    ``""``, which HDF5 cannot name, spelled ``%2E``, ``%2E%2E``, ``%_`` (quote() never writes those)."""
    return {"": "%_", ".": "%2E", "..": "%2E%2E"}.get(name, quote(name, safe=_SAFE))


def _write_column(group, name: str, col) -> None:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    g = group.create_group(_key(name))
    g.attrs["arrow_type"] = str(t)
    # the type itself, as an Arrow IPC schema (nested types such as list<int64> or structs have no spelling
    # the reader could parse back; a batch whose rows are all null would otherwise come out as text)
    g.attrs["arrow_schema"] = np.void(pa.schema([pa.field("v", t)]).serialize().to_pybytes())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        g.attrs["kind"] = "number"
        np_t = t.to_pandas_dtype()
        fill = np.nan if pa.types.is_floating(t) else 0
        vals = col.fill_null(fill).to_numpy(zero_copy_only=False).astype(np_t, copy=False)
        _dataset(g, "values", np.ascontiguousarray(vals))
    elif pa.types.is_boolean(t):
        g.attrs["kind"] = "bool"
        vals = col.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8)
        _dataset(g, "values", vals)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        g.attrs["kind"] = "string"
        data, offs = _string_buffers(col.cast(pa.string()))
        _dataset(g, "data", data)
        _dataset(g, "offsets", offs)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        g.attrs["kind"] = "binary"  # as bytes: JSON would keep only their Python repr
        data, offs = _string_buffers(col, binary=True)
        _dataset(g, "data", data)
        _dataset(g, "offsets", offs)
    else:
        g.attrs["kind"] = "json"
        docs = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
        data, offs = _string_buffers(docs)
        _dataset(g, "data", data)
        _dataset(g, "offsets", offs)
    if col.null_count:
        _dataset(g, "valid", ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool))


def write(spectra: Spectra, path: str) -> None:
    """Write spectra in the HDF5 layout of this module (atomically: temp file, then rename)."""
    from fastspec._atomic import write_atomically

    write_atomically(path, lambda tmp: _write_file(spectra, tmp), needs_seek="HDF5")


def _write_file(spectra: Spectra, tmp) -> None:
    """The HDF5 layout of :func:`write`, into the file ``tmp`` (renamed into place by the caller).

    HDF5 (2.0, through h5py 3.16) crashes the process when a write fails for want of space (a full disk,
    ``ulimit -f``: a segfault after pages of "Exception ignored" messages), also through a Python file
    object. Where the file might not fit, it is built in memory and written with Python's own I/O, whose
    failure is an ordinary OSError; where it surely fits, HDF5 writes it directly. (A disk quota is not
    seen by that check: a write over one may still crash.)"""
    if _surely_fits(tmp, _size_bound(spectra)):
        _write_h5(spectra, tmp)
        return
    import io

    buf = io.BytesIO()
    _write_h5(spectra, buf)
    with open(tmp, "wb") as out:
        out.write(buf.getbuffer())


def _size_bound(spectra: Spectra) -> int:
    """More bytes than the HDF5 file of ``spectra`` can take: the arrays and metadata uncompressed (gzip
    grows incompressible chunks only a little), the string offsets, and room for HDF5's own structures."""
    md = spectra.metadata
    arrays = spectra.offsets.nbytes + spectra.mz.nbytes + spectra.intensity.nbytes + spectra.precursor_mz.nbytes \
        + spectra.charge.nbytes
    per_column = 8 * (len(spectra) + 1) + len(spectra)  # string offsets and a validity mask
    meta = sum(_column_bound(md.column(i), len(spectra)) for i in range(md.num_columns))
    return int(1.1 * (arrays + meta + md.num_columns * per_column)) + (4 << 20)


def _column_bound(col, n: int) -> int:
    """More bytes than one metadata column takes in the file: its Arrow bytes for numbers and strings;
    for what is stored as JSON text (dictionary, nested, temporal columns), the decoded values' bytes
    four times over plus 32 per row (quotes, brackets, keys, digits of a timestamp)."""
    t = col.type
    if pa.types.is_dictionary(t):  # each row's value written out, not its code
        col = col.cast(t.value_type)
        t = t.value_type
    plain = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t) \
        or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
    return int(col.nbytes) if plain else 4 * int(col.nbytes) + 32 * n


def _surely_fits(path, need: int) -> bool:
    """Whether ``need`` bytes surely fit at ``path``: the free space of its filesystem (for this user) and
    the file-size limit (``ulimit -f``) allow them; never for a device."""
    import resource
    import stat

    try:
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a device (/dev/full fails every write): built in memory
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except OSError:
        return False
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return need <= st.f_bavail * st.f_frsize and (soft == resource.RLIM_INFINITY or need <= soft)


def _write_h5(spectra: Spectra, target) -> None:
    """The layout itself, into ``target``: a path, or a binary file object (h5py writes through it)."""
    h5py = _h5py()
    with h5py.File(target, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["n_spectra"] = len(spectra)
        f.attrs["n_peaks"] = int(spectra.offsets[-1])
        _dataset(f, "offsets", spectra.offsets.astype(np.int64))
        _dataset(f, "mz", spectra.mz.astype(np.float64))
        _dataset(f, "intensity", spectra.intensity.astype(np.float32))
        _dataset(f, "precursor_mz", spectra.precursor_mz.astype(np.float64))
        _dataset(f, "charge", spectra.charge.astype(np.int8))
        g = f.create_group("metadata")
        md = spectra.metadata
        names = list(md.column_names)
        g.attrs["columns"] = json.dumps(names)
        for name in names:
            col = md.column(name)
            if name == "precursor_mz":
                p = spectra.precursor_mz
                col = pa.array(p, pa.float64(), mask=~np.isfinite(p))
            elif name == "charge":
                col = pa.array(spectra.charge, pa.int8(), mask=spectra.charge == 0)
            _write_column(g, name, col)


def _read_strings(g, a: int, b: int, binary: bool = False) -> pa.Array:
    offs = g["offsets"][a: b + 1].astype(np.int64)
    data = g["data"][offs[0]: offs[-1]] if b > a else np.zeros(0, np.uint8)
    offs = offs - offs[0]
    arr = pa.Array.from_buffers(pa.large_binary() if binary else pa.large_string(), b - a,
                                [None, pa.py_buffer(np.ascontiguousarray(offs)),
                                 pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))])
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid as e:
        raise FastspecError(f"corrupt {'binary' if binary else 'string'} column {g.name}: {e}") from e
    if offs[-1] >= 2**31 - 1:
        return arr
    return arr.cast(pa.binary() if binary else pa.string())


def _read_column(g, a: int, b: int) -> pa.Array:
    kind = g.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    valid = g["valid"][a:b].astype(bool) if "valid" in g else None
    mask = None if valid is None else ~valid
    if kind == "number":
        return _as_stored_type(pa.array(g["values"][a:b], mask=mask), g)
    if kind == "bool":
        return pa.array(g["values"][a:b].astype(bool), mask=mask)
    if kind == "binary":
        arr = _read_strings(g, a, b, binary=True)
        if mask is not None and len(arr):
            import pyarrow.compute as pc

            arr = pc.if_else(pa.array(valid), arr, pa.scalar(None, arr.type))
        return _as_stored_type(arr, g)
    if kind in ("string", "json"):
        arr = _read_strings(g, a, b)
        if mask is not None and len(arr):
            import pyarrow.compute as pc

            arr = pc.if_else(pa.array(valid), arr, pa.scalar(None, arr.type))
        if kind == "json":
            vals = [None if v is None else json.loads(v) for v in arr.to_pylist()]
            t = _arrow_type(g)
            try:
                return pa.array(vals, type=t) if t is not None else pa.array(vals)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                plain = pa.array(vals)
                if t is not None:  # timestamps, dates, decimals: written as their text, cast back
                    try:
                        return plain.cast(t)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                        pass
                return plain
        return arr
    raise FastspecError(f"unknown metadata column kind {kind!r} in {g.name}")


def _as_stored_type(arr: pa.Array, g) -> pa.Array:
    """``arr`` cast to the column's stored Arrow type (int8, fixed-size binary, ...) where it differs and casts."""
    t = _arrow_type(g)
    if t is not None and t != arr.type:
        try:
            return arr.cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return arr


def _arrow_type(g) -> pa.DataType | None:
    """The column's Arrow type: from its stored schema, else (files written before it) from the type's name
    for the types spelled in the table below; None when unknown."""
    raw = g.attrs.get("arrow_schema")
    if raw is not None:
        try:
            return pa.ipc.read_schema(pa.py_buffer(bytes(np.asarray(raw).tobytes()))).field("v").type
        except (pa.ArrowInvalid, ValueError, KeyError):
            pass
    name = g.attrs.get("arrow_type")
    if name is None:
        return None
    if isinstance(name, bytes):
        name = name.decode()
    simple = {
        "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
        "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
        "float": pa.float32(), "float32": pa.float32(), "double": pa.float64(), "float64": pa.float64(),
        "halffloat": pa.float16(), "string": pa.string(), "large_string": pa.large_string(), "bool": pa.bool_(),
        "list<item: string>": pa.list_(pa.string()), "list<element: string>": pa.list_(pa.field("element", pa.string())),
    }
    return simple.get(name)


#: what h5py raises on a damaged file (its C library's errors come as OSError, RuntimeError, KeyError, ...)
_DAMAGED = (OSError, RuntimeError, KeyError, ValueError)


def _open(path: str):
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FastspecError(f"{path}: not a readable HDF5 file: {e}") from e
    try:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise FastspecError(f"{path}: not a fastspec HDF5 spectra file (format attribute {fmt!r})")
        ver = int(f.attrs.get("format_version", 0))
        if ver > FORMAT_VERSION:
            raise FastspecError(f"{path}: HDF5 format_version {ver} is newer than this fastspec ({FORMAT_VERSION})")
        for k in ("offsets", "mz", "intensity"):
            if k not in f:
                raise FastspecError(f"{path}: missing dataset /{k}")
    except FastspecError:
        f.close()
        raise
    except _DAMAGED as e:  # a damaged file's attributes or links (a fuzzer: RuntimeError, OSError escaped)
        f.close()
        raise FastspecError(f"{path}: cannot read HDF5 data: {e}") from e
    return f


def iter_spectra(path: str, *, on_error: str, report: ReadReport, progress: bool | None = None,
                 chunk_size: int | None = None) -> Iterator[Spectra]:
    """Spectra of a fastspec HDF5 file: all rows, or ``chunk_size`` rows at a time."""
    from fastspec.io._common import Progress

    f = _open(path)
    try:
        offsets_ds = f["offsets"]
        n = offsets_ds.shape[0] - 1
        if n < 0:
            raise FastspecError(f"{path}: empty /offsets")
        names = json.loads(f["metadata"].attrs.get("columns", "[]")) if "metadata" in f else []
        step = n if chunk_size is None else int(chunk_size)
        bar = Progress(os.path.getsize(path), progress, f"reading {path}")
        try:
            for a in range(0, max(n, 1) if n else 0, max(step, 1)):
                b = min(n, a + step)
                off = offsets_ds[a: b + 1].astype(np.int64)
                if off.shape[0] != b - a + 1 or np.any(np.diff(off) < 0) or off[0] < 0 \
                        or off[-1] > f["mz"].shape[0]:
                    raise FastspecError(f"{path}: corrupt /offsets near row {a + 1}")
                mz = f["mz"][off[0]: off[-1]]
                it = f["intensity"][off[0]: off[-1]]
                cols = {}
                for name in names:
                    cols[name] = _read_column(f["metadata"][_key(name)], a, b)
                meta = pa.table(cols) if cols else pa.table({"_": pa.nulls(b - a)}).drop_columns(["_"])
                if "precursor_mz" in f and "precursor_mz" not in cols:
                    p = f["precursor_mz"][a:b]
                    meta = meta.append_column("precursor_mz", pa.array(p, mask=np.isnan(p)))
                if "charge" in f and "charge" not in cols:
                    c = f["charge"][a:b]
                    meta = meta.append_column("charge", pa.array(c, pa.int8(), mask=c == 0))
                lines = np.arange(a + 1, b + 1, dtype=np.int64)
                yield finish_block(report, path, lines, None, off - off[0], mz, it, meta, on_error, text=False,
                                   signed_charge=True)  # written by fastspec: charges carry their sign
                bar.to(int(os.path.getsize(path) * b / max(n, 1)))
        finally:
            bar.close()
    except _DAMAGED as e:
        if isinstance(e, FastspecError):
            raise
        raise FastspecError(f"{path}: cannot read HDF5 data: {e}") from e
    finally:
        f.close()
