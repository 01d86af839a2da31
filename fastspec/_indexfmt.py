"""On-disk layout of a library index: a directory of ``.npy`` arrays, Parquet metadata and a JSON manifest.

* Every file is listed in ``manifest.json`` with its size, a blake2b checksum of the whole file and a
  cheap checksum of its first and last 64 KiB. :func:`check_files` (run on every open) compares sizes,
  the cheap checksums and the ``.npy`` headers; :func:`verify_files` hashes everything.
* Arrays are read with ``np.load(mmap_mode="r", allow_pickle=False)``: opening costs no I/O beyond the
  headers, and memory grows only with the pages queries touch.
* Builds write into a temporary sibling directory that is renamed into place when complete
  (:class:`AtomicDirectory`), so an interrupted build never leaves a half-written index behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fastspec._atomic import (ACTIVE_TEMPORARIES, absolute_path, aside_prefix, asides_of, naming_output,
                              remove_stale_temporaries,  # noqa: F401
                              temporary_name)
from fastspec.errors import FastspecError, IndexFormatError, IndexWriteError

#: Bumped whenever the layout changes incompatibly; older/newer indexes are refused on open.
#: 2: fragment and neutral-loss entries grouped by polarity (``frag_groups``, ``nl_groups``).
#: 3: their entries name spectra by scan id (``scan_rows.npy``; ``build.scan_order`` "base_peak": by
#: base-peak, then second-peak, then precursor m/z), not by row; version 2 is still read (its entries
#: are rows), but an older fastspec would misread version 3.
FORMAT_VERSION = 3
#: Versions this fastspec opens.
READ_VERSIONS = (2, 3)
FORMAT_NAME = "fastspec-library"
MANIFEST = "manifest.json"
#: The FAISS threshold index (:mod:`fastspec.vectors`), built next to a non-flat ``faiss.index`` of at
#: least ``THETA_MIN`` spectra (its PQ and lists train on the library's own vectors); here so that
#: reading a manifest (``fastspec info``) needs no numba.
THETA_FILE = "faiss_theta.index"
THETA_MIN = 1_000
#: manifest key holding the sha256 of the rest of the manifest
MANIFEST_CHECKSUM = "manifest_sha256"
_EDGE = 65536  # bytes hashed at each end of a file for the cheap open-time check
_CHUNK = 1 << 22


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def file_checksum(path: Path) -> str:
    """blake2b-128 of a whole file (hex)."""
    h = _digest()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def edge_checksum(path: Path, size: int | None = None) -> str:
    """blake2b-128 of the first and last 64 KiB of a file (hex); cheap enough for every open."""
    size = os.path.getsize(path) if size is None else size
    h = _digest()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def describe_file(path: Path) -> dict[str, Any]:
    """Manifest entry of one written file: size, full checksum, edge checksum (+ dtype/shape for .npy)."""
    size = os.path.getsize(path)
    entry: dict[str, Any] = {"size": size, "blake2b": file_checksum(path), "edge": edge_checksum(path, size)}
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        entry["dtype"] = arr.dtype.str
        entry["shape"] = list(arr.shape)
    return entry


def save_array(directory: Path, name: str, arr: np.ndarray) -> None:
    """Write ``arr`` as ``directory/name.npy`` (C order; never pickled)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise TypeError(f"refusing to store object array {name!r}")
    with open(directory / f"{name}.npy", "wb") as f:
        np.save(f, arr, allow_pickle=False)


#: what the OS says when a process runs out of descriptors or memory (pyarrow and faiss pass on its text)
_LIMIT_TEXTS = ("too many open files", "cannot allocate memory")


def resource_error(e: BaseException, path) -> "FastspecError | None":
    """The error for ``e`` when it is this process's limits (out of file descriptors or memory), not a
    damaged index file: a FastspecError saying so; None otherwise."""
    text = str(e).lower()
    if getattr(e, "errno", None) in (errno.EMFILE, errno.ENFILE, errno.ENOMEM) or any(t in text for t in _LIMIT_TEXTS):
        why = getattr(e, "strerror", None) or str(e).splitlines()[0]
        return FastspecError(f"cannot open {path}: {why} (each searched Library holds its files open until "
                             "Library.close() or garbage collection)")
    return None


def _token_error() -> type:
    import tokenize

    return tokenize.TokenError


def load_array(directory: Path, name: str, entry: dict | None = None, mmap: bool = True) -> np.ndarray:
    """Memory-map ``directory/name.npy``; check dtype/shape against the manifest entry if given."""
    path = directory / f"{name}.npy"
    try:
        # np.load refuses mmap of zero-sized arrays on some platforms; load those eagerly
        if mmap and entry is not None and entry.get("shape") and 0 in entry["shape"]:
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise IndexFormatError(f"index file missing: {path}") from None
    except OSError as e:
        limit = resource_error(e, path)
        if limit is not None:
            raise limit from None
        raise IndexFormatError(f"index file unreadable (corrupted?): {path}: {e}") from None
    except (ValueError, EOFError, SyntaxError, _token_error()) as e:  # (a damaged .npy header: numpy parses it)
        raise IndexFormatError(f"index file unreadable (corrupted?): {path}: {e}") from None
    if entry is not None:
        if arr.dtype.str != entry.get("dtype") or list(arr.shape) != list(entry.get("shape", [])):
            raise IndexFormatError(f"index file {path.name} has dtype/shape {arr.dtype.str}{list(arr.shape)}, "
                                   f"manifest says {entry.get('dtype')}{entry.get('shape')}")
    return arr


def file_stats(path: Path, arr: np.ndarray, chunk_bytes: int = 1 << 22) -> tuple[int, int, bool]:
    """Smallest value, largest value and whether the values never decrease, of the memory-mapped ``arr``
    (the data of the ``.npy`` file ``path``), read from the file in chunks rather than through the map:
    checking a 170 MB fragment index then adds nothing to the process's resident memory."""
    n = arr.shape[0]
    chunk = max(1, chunk_bytes // arr.dtype.itemsize)
    start = os.path.getsize(path) - arr.nbytes  # the data follows the header to the end of the file
    lo = hi = last = None
    ascending = True
    with open(path, "rb") as f:
        f.seek(start)
        done = 0
        while done < n:
            part = np.fromfile(f, dtype=arr.dtype, count=min(chunk, n - done))
            if part.shape[0] == 0:
                raise IndexFormatError(f"index file {path.name} is shorter than its header says")
            a, b = int(part.min()), int(part.max())
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
            ascending = ascending and (last is None or part[0] >= last) and not bool((part[1:] < part[:-1]).any())
            last = part[-1]
            done += part.shape[0]
    return (0, -1, True) if lo is None else (lo, hi, ascending)


def _save_and_describe(directory: Path, name: str, arr: np.ndarray) -> dict[str, Any]:
    save_array(directory, name, arr)
    return describe_file(directory / f"{name}.npy")


class ArrayWriter:
    """Saves the ``.npy`` arrays of one directory on a background thread, describing (hashing) each file
    right after writing it, so an index build computes its next structure while the last ones are written.

    Use as a context manager; :meth:`finish` waits for every write and returns the manifest entries.
    At most ``max_pending_bytes`` of arrays wait to be written (``save`` blocks beyond that). A failed
    write re-raises in the caller at the first ``save`` after it failed, or at ``finish``. Leaving the
    block on an error cancels what has not started and waits for the write in progress, even through
    a second Ctrl-C, so that the caller can then remove the directory.
    """

    def __init__(self, directory: Path, max_pending_bytes: int = 1 << 30):
        from concurrent.futures import ThreadPoolExecutor

        self.directory = Path(directory)
        self.max_pending_bytes = int(max_pending_bytes)
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastspec-save")
        self._pending: list = []  # (file name, future, bytes), oldest first
        self._entries: dict[str, dict[str, Any]] = {}

    def save(self, name: str, arr: np.ndarray) -> None:
        """Queue ``arr`` to be written as ``directory/name.npy`` (C order; never pickled)."""
        arr = np.ascontiguousarray(arr)
        if arr.dtype.hasobject:
            raise TypeError(f"refusing to store object array {name!r}")
        while self._pending and self._pending[0][1].done():  # a failed write raises here, not only at finish
            self._collect_oldest()
        while self._pending and sum(b for *_, b in self._pending) + arr.nbytes > self.max_pending_bytes:
            self._collect_oldest()
        self._pending.append((f"{name}.npy", self._ex.submit(_save_and_describe, self.directory, name, arr), arr.nbytes))

    def _collect_oldest(self) -> None:
        fname, fut, _ = self._pending.pop(0)
        self._entries[fname] = fut.result()

    def finish(self) -> dict[str, dict[str, Any]]:
        """Wait for every queued write; manifest entries of the written files (see :func:`describe_file`)."""
        while self._pending:
            self._collect_oldest()
        self._ex.shutdown(wait=True)
        return dict(self._entries)

    def __enter__(self) -> "ArrayWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        else:
            for *_, fut, _ in self._pending:
                fut.cancel()
            self._pending.clear()
            while True:  # a file still being written would reappear in a directory removed meanwhile
                try:
                    self._ex.shutdown(wait=True)
                    break
                except KeyboardInterrupt:
                    continue
        return False


def write_manifest(directory: Path, manifest: dict[str, Any], described: dict[str, dict] | None = None) -> None:
    """Describe every file of ``directory`` (except the manifest) into ``manifest['files']`` and write it.

    ``described``: entries already computed (:meth:`ArrayWriter.finish`); the other files are hashed here.
    """
    described = described or {}
    paths = [p for p in sorted(directory.iterdir()) if p.name != MANIFEST and p.is_file() and p.name not in described]
    from concurrent.futures import ThreadPoolExecutor

    # files not described yet (Parquet metadata, the FAISS index: ~0.5 GB at 2.4M spectra) hashed on every
    # core; hashing releases the GIL
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        found = dict(zip((p.name for p in paths), ex.map(describe_file, paths)))
    found.update(described)
    files = {name: found[name] for name in sorted(found)}
    manifest = dict(manifest)
    manifest["format"] = FORMAT_NAME
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = files
    manifest.pop(MANIFEST_CHECKSUM, None)
    manifest = json.loads(json.dumps(manifest, default=_json_default))  # plain JSON values, as read back
    manifest[MANIFEST_CHECKSUM] = _manifest_digest(manifest)
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=False, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: a manifest is a few kB (the inputs of a build are a file of their own, :data:`INPUTS_FILE`)
_MANIFEST_MAX_BYTES = 64 << 20


def _load_manifest(path: Path) -> Any:
    """The JSON of ``path``, refused (ValueError) unless it is a regular file of sane size: a FIFO or a link to
    ``/dev/urandom`` would hang every open, one to ``/dev/zero`` fill the memory."""
    import stat

    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{MANIFEST} is not a regular file")
        if st.st_size > _MANIFEST_MAX_BYTES:
            raise ValueError(f"{MANIFEST} is {st.st_size:,} bytes, far more than a manifest holds")
        return json.loads(f.read(_MANIFEST_MAX_BYTES + 1).decode("utf-8"))


def aside_index(directory: Path) -> Path | None:
    """The previous index of ``directory`` left aside (``.NAME.old-*``) by a rebuild or append killed between
    the two renames of its swap (:func:`replace_directory`), when ``directory`` holds none; else None."""
    directory = Path(directory)
    parent = directory.parent if str(directory.parent) else Path(".")
    aside = [p for p in asides_of(parent, directory.name) if (p / MANIFEST).exists()] if parent.is_dir() else []
    return aside[-1] if aside else None


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and validate the manifest (format name and version)."""
    directory = Path(directory)
    if not directory.exists():
        aside = aside_index(directory)
        if aside is not None:
            raise IndexFormatError(f"{directory} is missing, but an interrupted rebuild left the previous index "
                                   f"at {aside}: rename it back to use it")
        raise FileNotFoundError(2, "No such library index", str(directory))
    if not directory.is_dir():
        raise IndexFormatError(f"not a library index (not a directory): {directory}")
    path = directory / MANIFEST
    if not path.exists():
        raise IndexFormatError(f"not a library index (no {MANIFEST}): {directory}")
    try:
        manifest = _load_manifest(path)
    except (ValueError, UnicodeDecodeError, RecursionError, IsADirectoryError) as e:
        raise IndexFormatError(f"corrupted manifest in {directory}: "
                               f"{f'{MANIFEST} is a directory' if isinstance(e, IsADirectoryError) else e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"not a fastspec library index: {directory}")
    version = manifest.get("format_version")
    if version not in READ_VERSIONS:
        raise IndexFormatError(
            f"library index {directory} has format version {version!r}, this fastspec reads versions "
            f"{READ_VERSIONS[0]}-{READ_VERSIONS[-1]}; rebuild it with `fastspec index`"
        )
    if not isinstance(manifest.get("files"), dict):
        raise IndexFormatError(f"corrupted manifest in {directory}: no file list")
    digest = manifest.pop(MANIFEST_CHECKSUM, None)
    # counts, shapes and build parameters steer the kernels: an edited manifest could make them read out
    # of bounds (manifests written before the checksum existed have none: format 2 only)
    if digest is None and version >= 3:
        raise IndexFormatError(f"the manifest of {directory} has no checksum (edited?); rebuild the index with "
                               "`fastspec index`")
    if digest is not None and digest != _manifest_digest(manifest):
        raise IndexFormatError(f"the manifest of {directory} was edited or corrupted (its checksum does not "
                               "match); rebuild the index with `fastspec index`")
    what = _schema_fault(manifest)
    if what is not None:  # a format-2 manifest (no checksum), or one edited along with its checksum
        raise IndexFormatError(f"the manifest of {directory} is malformed: {what}; rebuild the index with "
                               "`fastspec index`")
    build = manifest.get("build")
    if digest is None and ("scan_rows.npy" in manifest["files"] or (isinstance(build, dict) and "scan_order" in build)):
        # format 3's scan order, under a format-2 label without the checksum format 3 always has
        raise IndexFormatError(f"the manifest of {directory} says format {version} but describes a format-3 index "
                               "without its checksum (edited?); rebuild the index with `fastspec index`")
    counts = manifest.get("counts")
    if isinstance(counts, dict) and all(isinstance(counts.get(k), int) for k in ("n_read", "n_spectra", "n_rejected")) \
            and counts["n_read"] != counts["n_spectra"] + counts["n_rejected"]:
        raise IndexFormatError(f"the manifest of {directory} is inconsistent: {counts['n_read']} records read, but "
                               f"{counts['n_spectra']} indexed + {counts['n_rejected']} rejected; rebuild the index "
                               "with `fastspec index`")
    shape = (manifest["files"].get("offsets.npy") or {}).get("shape")
    if isinstance(counts, dict) and isinstance(counts.get("n_spectra"), int) and isinstance(shape, list) and shape \
            and shape[0] != counts["n_spectra"] + 1:
        # every per-spectrum array is sized from n_spectra: a count edited along with the checksum
        raise IndexFormatError(f"the manifest of {directory} is inconsistent: {counts['n_spectra']} spectra, but peak "
                               f"offsets for {shape[0] - 1}; rebuild the index with `fastspec index`")
    return manifest


#: files every index has (the peaks and the metadata): a manifest leaving one out would pass `--verify`
CORE_FILES = ("offsets.npy", "mz.npy", "intensity.npy", "precursor_mz.npy", "metadata.parquet")


def _schema_fault(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's structure (the keys and types the code reads), or None."""
    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("build", "counts"):
        if not isinstance(manifest.get(key), dict):
            return f"{key!r} is missing or not an object"
    if "preprocess" not in manifest["build"] or not isinstance(manifest["build"]["preprocess"], (dict, type(None))):
        return "build['preprocess'] is missing or not an object"
    counts = manifest["counts"]
    for key in ("n_read", "n_spectra", "n_rejected"):
        if not whole(counts.get(key)):
            return f"counts[{key!r}] is missing or not a count"
    for key, v in counts.items():
        if key.startswith("n_") and not whole(v):
            return f"counts[{key!r}] = {v!r} is not a count"
        if key in ("rejected", "read_warnings") and not (isinstance(v, dict) and all(map(whole, v.values()))):
            return f"counts[{key!r}] is not an object of counts"
    files = manifest["files"]
    for name, entry in files.items():
        # a name is a plain file of the index: "../other/mz.npy" would be read (and verified) elsewhere
        if not name or name != os.path.basename(name) or name.startswith(".") or "\\" in name:
            return f"file name {name!r} is not a file of the index directory"
        if not (isinstance(entry, dict) and whole(entry.get("size")) and isinstance(entry.get("edge"), str)
                and isinstance(entry.get("blake2b"), str)):
            return f"the entry of {name} lacks its size or checksums"
        if name.endswith(".npy") and not (isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
                                          and all(map(whole, entry["shape"]))):
            return f"the entry of {name} lacks its dtype or shape"
    missing = [n for n in CORE_FILES if n not in files]
    if missing:
        return f"it lists no {', '.join(missing)}"
    return None


def is_index_dir(directory: Path, damaged: bool = False) -> bool:
    """``directory`` holds a fastspec manifest (its ``format`` field, whatever its state otherwise): a
    directory with some other ``manifest.json`` (a web app's, say) is no index, and must not be replaced as
    one. ``damaged``: also a directory whose manifest cannot be read as JSON, or is missing, next to an
    index's files (a damaged index, which the errors tell users to rebuild, with overwrite)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = _load_manifest(path)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return damaged and (Path(directory) / "offsets.npy").exists()
    except FileNotFoundError:
        return damaged and all((Path(directory) / f).is_file() for f in CORE_FILES)
    except OSError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def enclosing_index(path) -> Path | None:
    """The library index directory ``path`` lies in (a file to be written there would corrupt it), or None."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        if d.is_dir() and is_index_dir(d, damaged=True):
            return d
    return None


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), its own checksum left out."""
    text = json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Cheap open-time check: every file present, of the recorded size, with matching edge checksums."""
    for name, entry in manifest["files"].items():
        p = Path(directory) / name
        try:
            size = os.path.getsize(p)
        except OSError:
            raise IndexFormatError(f"library index {directory} is incomplete: {name} is missing") from None
        if size != entry["size"]:
            raise IndexFormatError(
                f"library index {directory} is truncated or corrupted: {name} has {size} bytes, expected {entry['size']}"
            )
        if edge_checksum(p, size) != entry["edge"]:
            raise IndexFormatError(f"library index {directory} is corrupted: checksum mismatch in {name}")


def verify_files(directory: Path, manifest: dict[str, Any], progress=None, names=None) -> None:
    """Full verification: the blake2b checksum of every file (of those ``names`` only, when given). Raises
    IndexFormatError on the first mismatch."""
    check_files(directory, manifest)
    for name, entry in manifest["files"].items():
        if names is not None and name not in names:
            continue
        if file_checksum(Path(directory) / name) != entry["blake2b"]:
            raise IndexFormatError(f"library index {directory} is corrupted: checksum mismatch in {name}")
        if progress is not None:
            progress(name)


class AtomicDirectory:
    """Context manager for building a directory atomically.

    Files are written into a temporary sibling (:func:`fastspec._atomic.temporary_name`); on success it
    replaces ``target`` (an existing target is first moved aside, then deleted); on any exception it is removed.
    A build killed outright (SIGKILL, power loss) cannot clean up: its temporary is removed by the next
    build of the same target once no process with that pid is alive on this host.

    Examples
    --------
    >>> with AtomicDirectory(Path("lib.fastspec"), overwrite=True) as tmp:  # doctest: +SKIP
    ...     save_array(tmp, "mz", mz)
    """

    def __init__(self, target: Path, overwrite: bool = False):
        # absolute: "." (run from inside the index) has no name and is its own parent, so the temporary
        # went inside the index and the final rename failed (EBUSY) after the whole build
        target = absolute_path(target)
        if target.is_symlink() and not target.exists():
            # a link to nothing yet: the index is built where it points, as a file is written through a link
            # (built beside the link, the final rename found the link in the way after the whole build)
            target = Path(os.path.realpath(target))
        elif overwrite and target.is_symlink() and target.is_dir():
            # replace the index the link points to (built beside it: one file system for the rename), as
            # writing to a linked file writes the file; swapping the link itself for a directory would leave
            # the linked index unchanged and the link lost
            target = Path(os.path.realpath(target))
        self.target = target
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self.asides: list[Path] = []

    def __enter__(self) -> Path:
        parent = self.target.parent if str(self.target.parent) else Path(".")
        if not parent.exists():
            raise FileNotFoundError(2, "Output directory does not exist", str(parent))
        if self.target.exists() and not self.overwrite:
            raise IndexFormatError(f"{self.target} already exists (use overwrite=True / --overwrite)")
        if self.target.exists() and not self.target.is_dir():  # never a file (a spectrum file named as output)
            raise IndexFormatError(f"refusing to overwrite {self.target}: it is a file, not a library index")
        remove_stale_temporaries(parent, self.target.name)
        # indexes left aside by a swap killed between its renames, deleted once this one is in place (a swap
        # running now, whose aside appears later, is not among them)
        self.asides = asides_of(parent, self.target.name)
        self.tmp = parent / temporary_name(self.target.name)
        with naming_output(self.target, self.tmp):  # a read-only directory: name the index, not the temporary
            self.tmp.mkdir()
        ACTIVE_TEMPORARIES.add(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            ACTIVE_TEMPORARIES.discard(self.tmp)
            shutil.rmtree(self.tmp, ignore_errors=True)
            why = write_failure(exc)
            if why is not None:  # name the index, not a file in its temporary directory (or nothing at all)
                raise IndexWriteError(getattr(exc, "errno", None), f"I/O error writing the library index "
                                      f"{self.target}: {why}; nothing was written (an index already there is "
                                      "unchanged)") from exc
            return False
        try:
            with index_lock(self.target):
                if not self.overwrite:  # another build may have finished first: never replace it
                    move_into_place(self.tmp, self.target)
                else:
                    replace_directory(self.tmp, self.target)
                for aside in self.asides:  # "--overwrite deletes it", as the refusal without it says
                    shutil.rmtree(aside, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:  # only now: an interrupt while waiting for the lock still removes the finished build
            ACTIVE_TEMPORARIES.discard(self.tmp)
        return False


def write_failure(exc: BaseException | None) -> str | None:
    """What an error writing files says about the device, for a message that names the output: a full disk,
    a quota, a file-size limit, a failed device, or numpy's short write (which carries no errno); None for
    other errors (a missing input, a bug), which pass as they are."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EIO, errno.EROFS):
            return exc.strerror or str(exc)
        if exc.errno == errno.EFBIG:
            return f"{exc.strerror or 'File too large'} (a file-size limit, ulimit -f?)"
        if exc.errno is None and re.search(r"\d+ requested and \d+ written", str(exc)):
            return f"a write stopped short ({exc}; is the disk full, or a file-size limit, ulimit -f, reached?)"
    if isinstance(exc, FastspecError) and "is the disk full" in str(exc):  # the FAISS writer's
        return str(exc)
    return None


#: Index locks held by the running thread (resolved index paths): an append holds its index's lock while its
#: rebuild swaps the directory in, which takes the same lock again. Other threads flock a descriptor of
#: their own, so they wait (or are refused) like another process.
_HELD = threading.local()


@contextmanager
def index_lock(target: Path, wait: bool = True, busy: str = ""):
    """Hold the advisory lock of the index directory ``target`` (``flock`` on the directory itself; no
    lock file is left behind, and nothing to lock when it does not exist yet).

    Appends hold it from the moment they check that the index is still the one they opened until their
    rebuild is in place, and every build takes it to swap its directory in: two appends cannot both
    start from the same index and lose one of them. With ``wait=False`` a lock held elsewhere raises
    IndexFormatError (``busy`` says what was attempted). Where ``flock`` is not available (Windows) it
    runs unlocked; on network file systems it may lock for this host only.
    """
    target = Path(target)
    key = str(target.resolve())
    held = _HELD.__dict__.setdefault("keys", set())
    if key in held:  # re-entered by this thread (an append's own swap)
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    fd = None
    while fcntl is not None:
        try:
            fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # no such directory yet, or not one: nothing to lock
            fd = None
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise IndexFormatError(f"{target} is being appended to or rebuilt by another process (or thread); "
                                   f"{busy or 'try'} again when it is done") from None
        except OSError:  # no locking on this file system
            os.close(fd)
            fd = None
            break
        # the lock belongs to the directory (inode) opened: when the holder swapped a new index in while
        # we waited, ours is the old one, and the new one must be locked instead
        try:
            now = os.stat(key)
        except OSError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
        fd = None
        if now is None:
            break
        if not wait:
            raise IndexFormatError(f"{target} was replaced while it was being locked; {busy or 'try'} again")
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        if fd is not None:
            os.close(fd)  # releases the flock


def move_into_place(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target``, which must not exist: the rename itself refuses a file or a non-empty
    directory there (one that appeared meanwhile included); only an empty directory is replaced."""
    try:
        os.rename(src, target)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise IndexFormatError(f"{target} already exists (another build finished first; use overwrite=True "
                                   "/ --overwrite to replace it)") from None
        raise


def refuse_read_only(directory: Path, what: str) -> None:
    """IndexFormatError when ``directory`` (an index about to be replaced) is not writable: the swap would
    still go through (only its parent must be writable), replacing an index made read-only on purpose and
    leaving the old one's undeletable copy beside it."""
    try:
        owner_write = bool(os.stat(directory).st_mode & stat.S_IWUSR)
    except OSError:  # gone: the open or append reports that (with the aside hint), not "read-only"
        return
    # the mode bits too: root passes os.access whatever they say, and chmod a-w is how users protect one
    if not owner_write or not os.access(directory, os.W_OK | os.X_OK):
        raise IndexFormatError(f"cannot {what} {directory}: the index is read-only (make it writable first, "
                               "or build a new index elsewhere)")


def replace_directory(src: Path, target: Path) -> None:
    """Move ``src`` to ``target``; an existing ``target`` (file or directory) is moved aside first."""
    if not target.exists():
        os.rename(src, target)
        return
    if target.is_dir() and not is_index_dir(target, damaged=True) and any(target.iterdir()):
        raise IndexFormatError(f"refusing to overwrite {target}: it is a non-empty directory that is not a library index")
    trash = target.parent / f"{aside_prefix(target.name)}{uuid.uuid4().hex[:12]}"
    os.rename(target, trash)
    try:
        os.rename(src, target)
    except BaseException:
        os.rename(trash, target)  # put the old index back
        raise
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink()
