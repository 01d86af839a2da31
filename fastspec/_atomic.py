"""Atomic writes: every file or index directory fastspec writes is written under a hidden temporary
sibling and renamed into place when complete.

A temporary is named ``.{name}.tmp-{pid}-{host}-{random}`` (:func:`temporary_name`): the writer's pid and
a tag of its host, so that a later writer of the same output can tell the temporaries of writers that were
killed outright (SIGKILL, a crash; Ctrl-C in the CLI removes its own, see :data:`ACTIVE_TEMPORARIES`) from
those of writers still running, here or on another host sharing the directory: only this host's
temporaries whose process is gone are removed (:func:`remove_stale_temporaries`).

Standard library only: the hit tables and the CLI import this without numpy or numba.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import uuid
from pathlib import Path

#: temporaries being written right now (index directories, output files): what an interrupted CLI
#: command removes before it exits (see fastspec.cli._common.handle_errors)
ACTIVE_TEMPORARIES: set = set()

#: this host's tag in temporary names (a hash of its name: hosts sharing a directory keep apart)
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temporary_prefix(name: str) -> str:
    """How the temporaries of an output called ``name`` start: ``.{name}.tmp-``. A long name (over 200
    bytes) is cut to 120 bytes at a character boundary and told apart by a hash of it, so that the
    temporary's own name (32 bytes longer) stays within the file system's 255 bytes whenever ``name``
    does."""
    raw = os.fsencode(name)
    if len(raw) <= 200:
        return f".{name}.tmp-"
    return f".{raw[:120].decode('utf-8', 'ignore')}~{hashlib.sha1(raw).hexdigest()[:12]}.tmp-"


def absolute_path(path) -> Path:
    """``path`` absolute as the operating system resolves it: its parent through ``realpath`` (a symlink
    before a ``..`` is followed first, as the OS does; ``os.path.abspath`` would drop the pair as text and
    name another directory), its last component kept (a symlinked index is handled by its users). ``.``
    and ``..`` resolve whole."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        return Path(os.path.realpath(p))
    return Path(os.path.realpath(p.parent)) / p.name


def aside_prefix(name: str) -> str:
    """How an old index moved aside while ``name`` is replaced is called, less its random tail:
    ``.{name}.old-``, long names cut as in :func:`temporary_prefix` (the aside name is 18 bytes longer)."""
    return temporary_prefix(name)[:-len("tmp-")] + "old-"


def asides_of(parent, name: str) -> list[Path]:
    """The old indexes of ``name`` moved aside in ``parent`` (by a swap, :func:`aside_prefix`), sorted: names
    of exactly that prefix and hex digits, not those of a sibling index whose name merely starts with
    ``name`` (``lib.fastspec.old-x``'s asides begin ``.lib.fastspec.old-`` too)."""
    shape = re.compile(re.escape(aside_prefix(name)) + r"[0-9a-f]+")
    return sorted(Path(e.path) for e in _entries(parent) if shape.fullmatch(e.name))


def temporary_name(name: str) -> str:
    """A fresh temporary name for an output called ``name`` (see the module docstring)."""
    return f"{temporary_prefix(name)}{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex[:12]}"


def remove_stale_temporaries(parent: Path, name: str) -> None:
    """Delete the temporaries of output ``name`` in ``parent`` (index directories, output files and the
    ``.rows`` file a chunked hit table writes beside its own) that this host's writers left when they
    were killed outright: names of exactly :func:`temporary_name`'s shape, this host's tag, and a pid
    that no longer runs (and index build directories named before the tag existed, whose pid no longer
    runs). Another host's, a running writer's, and any other file are left alone. Index
    directories also lose ``.{name}.old-*`` (an old index moved aside) once ``name`` holds an index again."""
    prefix = temporary_prefix(name)
    if (Path(parent) / name / "manifest.json").exists():  # the swap completed: what it moved aside is garbage
        for aside in asides_of(parent, name):
            _remove(aside)
    shape = re.compile(re.escape(prefix) + r"(\d+)-" + HOST_TAG + r"-[0-9a-f]{12}(?:\.rows|-abandoned)?")
    # index build directories named before the host tag existed: removed as they were then
    old_dir = re.compile(re.escape(prefix) + r"(\d+)-[0-9a-f]{12}(?:-abandoned)?")
    for entry in _entries(parent):
        if not entry.name.startswith(prefix):
            continue
        m = shape.fullmatch(entry.name)
        if m is None:
            m = old_dir.fullmatch(entry.name)
            if m is None or not entry.is_dir(follow_symlinks=False):
                continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _remove(Path(entry.path))
        except (OSError, OverflowError):  # alive but not ours (EPERM), or no pid at all: leave it
            pass
        else:
            if _zombie(int(m.group(1))):  # killed, not yet reaped: signal 0 reaches it, yet it writes no more
                _remove(Path(entry.path))


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has exited and waits to be reaped (state Z in ``/proc``; False where there
    is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'
    return stat_line[stat_line.rfind(b")") + 2: stat_line.rfind(b")") + 3] in (b"Z", b"X")


def _entries(parent) -> list:
    try:
        with os.scandir(parent) as it:  # names only: no stat per entry (folders of many outputs)
            return list(it)
    except OSError:  # the directory is unreadable or gone: whatever writes there says why
        return []


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def temporary_sibling(path):
    """A temporary name beside ``path`` (:func:`temporary_name`), yielded as a Path and removed afterwards
    unless renamed away; while it exists the CLI's Ctrl-C handler knows it (:data:`ACTIVE_TEMPORARIES`)
    and removes it. The stale temporaries of ``path`` are removed first
    (:func:`remove_stale_temporaries`): nothing else would."""
    path = Path(path)
    remove_stale_temporaries(path.parent if str(path.parent) else Path("."), path.name)
    tmp = path.with_name(temporary_name(path.name))
    ACTIVE_TEMPORARIES.add(tmp)
    try:
        yield tmp
    finally:
        ACTIVE_TEMPORARIES.discard(tmp)
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def naming_output(path, tmp):
    """Re-raise an OSError about the temporary ``tmp`` as one about ``path``, the file asked for (a full
    disk, no permission); errors about other files (a query file not found) pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno is None or (e.filename is not None and not os.fspath(e.filename).startswith(str(tmp))):
            raise
        # pyarrow puts the path it opened into the message itself (the temporary, or the rows file a
        # chunked CSV/TSV writes beside it: fastspec.stream)
        why = re.sub(re.escape(str(tmp)) + r"(\.rows)?", lambda m: str(path), e.strerror or str(e))
        raise type(e)(e.errno, why, str(path)) from e


def output_target(path) -> tuple[Path, bool]:
    """Where an output named ``path`` is written: ``(target, direct)``. A symlink's target (the link
    stays and the file it names is replaced, as writing through a link does); ``direct`` for an existing
    file that is not a regular one (``/dev/null``, a named pipe, a terminal), which is written to as it
    is: renaming a temporary over it would replace the device with a regular file.

    Refused (ParameterError): ``-`` (a file of that name would be written where standard output was
    meant) and a path inside a library index directory (the file would replace or join the index's)."""
    from fastspec.errors import ParameterError

    if str(path) == "-":
        raise ParameterError("output '-': '-' is no output name here; give a file name (/dev/stdout for a "
                             "text format, named where the name has no extension)")
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # (through links: /dev/stdout to a pipe is a pipe)
    except OSError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return path, True
    if path.is_symlink():
        # /dev/stdout, /dev/fd/N, /proc/self/fd/N: a descriptor's file, which the caller's shell holds
        # open: written through (reopened, as `cp x /dev/stdout` does), never replaced by another file
        if str(path).startswith(("/dev/", "/proc/")) or os.readlink(path).startswith(("/dev/", "/proc/")):
            return path, True
        path = Path(os.path.realpath(path))
    from fastspec._indexfmt import enclosing_index

    inside = enclosing_index(path)
    if inside is not None:
        raise ParameterError(f"{path} is inside the library index {inside}; writing it there would corrupt the "
                             "index (choose another output path)")
    return path, False


def write_atomically(path, write, needs_seek: str | None = None, direct_file: bool = False) -> None:
    """Call ``write(tmp)`` on a :func:`temporary_sibling` of ``path`` and rename it into place, so that an
    interrupted write never leaves a truncated file where a previous one was; the temporary is removed
    on any error, and an OSError names ``path``, not the temporary. A device or pipe is written to
    directly, a symlink's target replaced (:func:`output_target`); ``needs_seek`` names the format of a
    writer that seeks (``"Parquet"``, ``"HDF5"``), refused for a device or pipe that cannot
    (:func:`check_seekable`). ``direct_file``: ``write`` is then handed the device opened (binary), not
    its path, for a writer that deletes the path it was given when it fails (``pyarrow.parquet.
    write_table``: a full disk behind ``/dev/stdout`` or ``/dev/full`` removed the device node or link)."""
    path, direct = output_target(path)
    if direct:
        if needs_seek:
            check_seekable(path, needs_seek)
        with naming_output(path, path):
            if direct_file:
                with open(path, "wb") as f:
                    write(f)
            else:
                write(path)
        return
    with temporary_sibling(path) as tmp, naming_output(path, tmp):
        write(tmp)
        os.replace(tmp, path)


def probe_writable(path) -> None:
    """Fail now, as writing ``path`` would fail later: a directory in its place (ParameterError), or an
    OSError naming it (no permission, a read-only filesystem), found by creating and removing an empty
    temporary beside it. For an output written after the main work, once that work has been committed
    (an index's read report: a failed report after an append made the user append the spectra twice).
    A device or pipe passes."""
    from fastspec.errors import ParameterError

    target, direct = output_target(path)
    if direct:
        return
    if target.is_dir():
        raise ParameterError(f"{path} is a directory; give a file name")
    with temporary_sibling(target) as tmp, naming_output(path, tmp):
        open(tmp, "xb").close()


def check_seekable(path, what: str, instead: str = "a text format") -> None:
    """Refuse (ParameterError) a ``what`` file (Parquet, HDF5: their writers seek) for an output that is
    a pipe, socket or terminal (``/dev/stdout`` piped to another command): the writer failed there only
    once the work was done ("I/O error: lseek failed"), and pyarrow then deletes the path it was given,
    which as root removed ``/dev/stdout`` itself. Regular files and seekable devices (``/dev/null``) pass;
    ``instead`` is what the message suggests."""
    target, direct = output_target(path)
    if direct and not _seekable(target):
        from fastspec.errors import ParameterError

        raise ParameterError(f"{path} is a pipe or terminal: {what} files cannot be written there (their "
                             f"writer seeks); write {instead}")


def _seekable(path) -> bool:
    """Whether the existing non-regular file ``path`` (through links) can seek: not a pipe or socket, and
    a character device only if it seeks (``/dev/null`` does, a terminal does not). Opened without
    blocking and without becoming a controlling terminal."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True  # (gone: the writer reports it)
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return False
    if not stat.S_ISCHR(mode):
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return True  # (the writer reports why it cannot open it)
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
        return not os.isatty(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_output(path, gz: bool = False):
    """A binary file to write an output into (the temporary, or a device :func:`output_target` names),
    through gzip when ``gz``: no file name (``path`` may be a temporary) and mtime 0 in the gzip header,
    so the same content gives the same bytes."""
    with open(path, "wb") as raw:
        if not gz:
            yield raw
            return
        import gzip

        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as f:
            yield f


def write_text_atomically(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`write_atomically`."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
