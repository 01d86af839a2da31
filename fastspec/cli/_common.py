"""Shared CLI plumbing: --threads/--quiet options and turning user mistakes into one clear line."""
from __future__ import annotations

import errno
import functools
import os
import re
import sys
import time
from contextlib import contextmanager

import click

from fastspec.errors import FastspecError


def common_options(f):
    """Add ``--threads`` and ``--quiet`` to a command; they are passed as ``threads`` and ``quiet``."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for numba and faiss (default: all).")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or summaries on stderr.")(f)
    return f


READABLE = ("mgf", "msp", "mzml", "mzxml", "json", "massbank", "tsv", "parquet", "hdf5")


def input_format_option(f):
    """Add ``--input-format`` (passed as ``input_format``): the format of every input file, for a pipe or a
    file whose extension does not say it."""
    return click.option("--input-format", "input_format", type=click.Choice(READABLE), default=None,
                        help="Input format (default: from each input's extension, else sniffed; needed for a "
                             "pipe or '-', standard input).")(f)


def stdin_paths(inputs) -> list[str]:
    """The input paths with ``-`` standing for standard input (``/dev/stdin``); refused (ParameterError)
    where the system has no ``/dev/stdin`` or standard input is a terminal (the command would wait for
    typed spectra)."""
    from fastspec.errors import ParameterError

    out = list(inputs)
    if "-" not in out:
        return out
    if out.count("-") > 1:
        raise ParameterError("'-' (standard input) given more than once")
    if sys.stdin is None:  # fd 0 closed (/dev/stdin then dangles too)
        raise ParameterError("'-' reads spectra from standard input, which is closed: pipe or redirect a file into it")
    if not os.path.exists("/dev/stdin"):
        raise ParameterError("'-' (standard input) needs /dev/stdin, which this system lacks: give a file")
    if sys.stdin.isatty():
        raise ParameterError("'-' reads spectra from standard input, which is a terminal: pipe or redirect a file "
                             "into it")
    return ["/dev/stdin" if p == "-" else p for p in out]


def refuse_clobbering(inputs, outputs) -> None:
    """Refuse (ParameterError, one line) a command whose output would replace one of its input files, or
    whose two outputs are one file: the output is renamed into place once written, and what the input
    held beyond what was read (records skipped as bad, for one) would be gone. An output inside a library
    index directory is refused too (it would replace or join the index's files).

    Parameters
    ----------
    inputs : iterable of str or None
        Files the command reads (None: not given).
    outputs : iterable of (str, str or None)
        ``(option, path)`` of each file the command writes.
    """
    from pathlib import Path

    from fastspec.errors import ParameterError

    from fastspec._indexfmt import enclosing_index

    given = [(o, p) for o, p in outputs if p]
    files = [Path(p) for p in inputs if p and Path(p).is_file()]
    for opt, out in given:
        if str(out) == "-":  # before any work (the writers refuse it too, once the work is done)
            raise ParameterError(f"{opt} -: '-' is no output name here; give a file name (/dev/stdout for "
                                 "a text format)")
        inside = enclosing_index(out)
        if inside is not None:
            raise ParameterError(f"{out} ({opt}) is inside the library index {inside}; writing it there would "
                                 "corrupt the index: choose another output path")
        target = Path(out)
        if target.is_file() and any(os.path.samefile(f, target) for f in files):
            raise ParameterError(f"{out} ({opt}) is also an input; writing it would replace the input: choose "
                                 "another output path")
    seen: dict = {}
    for opt, out in given:
        key = os.path.realpath(out)
        if key in seen:
            raise ParameterError(f"{seen[key]} and {opt} name the same file ({out}); one would replace the other")
        seen[key] = opt


def handle_errors(f):
    """Report FastspecError and OS errors (missing files, permissions, a full disk) as ``Error: ...`` and
    exit 1, never a traceback.

    Set ``FASTSPEC_DEBUG=1`` to see the traceback.
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return _in_worker(f, args, kwargs)
        except UnicodeEncodeError as e:
            # bytes that are not UTF-8, kept by Python as surrogates: pyarrow writes UTF-8 only
            if os.environ.get("FASTSPEC_DEBUG") or e.reason != "surrogates not allowed":
                raise
            raise click.ClickException(_not_utf8(e, [*args, *kwargs.values()])) from None
        except MemoryError as e:
            if os.environ.get("FASTSPEC_DEBUG"):
                raise
            # numpy's "Unable to allocate 93.1 GiB for an array ..." says how much; a bare one says nothing
            why = str(e).split(" for an array")[0] if str(e) else "an allocation failed"
            raise click.ClickException(f"out of memory: {why}; try a smaller input or size") from None
        except (FastspecError, OSError) as e:
            if os.environ.get("FASTSPEC_DEBUG"):
                raise
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                # the reader of a pipe went away (`fastspec query ... -o /dev/stdout | head`): quietly, with
                # the status a process killed by SIGPIPE has, as other Unix tools do
                sys.exit(128 + 13)
            if isinstance(e, FastspecError):
                msg = as_options(str(e))
            elif e.strerror and e.filename:  # missing file, permission, a directory given for a file
                msg = f"{e.strerror}: {e.filename}"
            elif re.search(r"\d+ requested and \d+ written", str(e)):  # numpy's short write: no errno
                msg = f"I/O error: a write stopped short ({e}); is the disk full?"
            else:  # the disk filled up, a read failed (what was half written is removed by then)
                msg = f"I/O error: {e.strerror or e}"
            raise click.ClickException(msg.splitlines()[0] if msg else type(e).__name__) from None

    return wrapper


def as_options(msg: str) -> str:
    """A message of the Python API in the running command's terms: ``name=value`` of a parameter the
    command has as an option, as a word of its own, becomes ``--name value`` (a flag's ``True`` its flag,
    ``False`` its ``--no-`` form), and such a parameter name with an underscore before "applies"
    (``no_neighbour applies to ...``) its option. Paths and pipeline strings are left as they are."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not msg:
        return msg
    opts = {}
    for p in ctx.command.params:
        longs = [o for o in p.opts if o.startswith("--")]
        if isinstance(p, click.Option) and p.name and longs:
            opts[p.name] = (p, longs[0])
    if not opts:
        return msg
    names = "|".join(sorted(map(re.escape, opts), key=len, reverse=True))

    def assigned(m: re.Match) -> str:
        p, opt = opts[m.group(1)]
        value = next(v for v in m.groups()[1:] if v is not None)
        if p.is_flag and value in ("True", "False"):
            if value == "True":
                return opt
            no = [o for o in p.secondary_opts if o.startswith("--")]
            return no[0] if no else f"no {opt}"
        return f"{opt} {value}"

    # a name starts a word (not inside a path, a pipeline string such as 'mz_range:min_mz=5' or a quote)
    msg = re.sub(rf"(?<![^\s(,])({names})=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;)'/]+))(?![\w/])", assigned, msg)
    # a bare name only as the subject of "... applies to" (the API's own phrasing: "nprobe and n_candidates
    # apply to ...", "formula applies to ...")
    bare = "|".join(sorted(map(re.escape, opts), key=len, reverse=True))
    msg = re.sub(rf"(?<![^\s(,])({bare})(?= appl| and [a-z_]+ appl)", lambda m: opts[m.group(1)][1], msg)
    # the API's "use overwrite=True / --overwrite" names both forms: the command's once
    return re.sub(r"(--[\w-]+) / \1(?![\w-])", r"\1", msg)


def _not_utf8(e: UnicodeEncodeError, params: list) -> str:
    """The one line for text that pyarrow could not write: a file name given to the command, if one of
    them holds such bytes, else the text itself (a metadata value read from a file)."""
    def shown(text: str) -> str:
        return os.fsencode(text).decode("utf-8", "backslashreplace")

    flat = [x for p in params for x in (p if isinstance(p, (tuple, list)) else (p,)) if isinstance(x, str)]
    for x in flat:
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return f"{shown(x)}: a file name that is not valid UTF-8; rename it"
    text = e.object if isinstance(e.object, str) else ""
    near = shown(text[max(0, e.start - 30): e.end + 30])
    return f"text that is not valid UTF-8 cannot be written (near '{near}'); fix it in the input"


def _in_worker(f, args, kwargs):
    """Run the command on a worker thread while the main thread waits for it.

    Python raises KeyboardInterrupt in the main thread only, between two bytecodes; raised while a
    compiled (numba) function was handing back its result it could crash the process or surface as a
    SystemError, and an interrupt landing in a lazy import could be lost. Here Ctrl-C (and SIGTERM)
    reach the waiting main thread, which removes the temporaries being written (an index directory,
    a hit table) and exits at once, 130 (143 for SIGTERM), with one line.
    """
    import signal
    import threading

    box: dict = {}
    ctx = click.get_current_context(silent=True)

    def run():
        from click.globals import pop_context, push_context

        if ctx is not None:  # the command's click context, as on the main thread (which options were given)
            push_context(ctx)
        try:
            box["result"] = f(*args, **kwargs)
        except BaseException as e:  # re-raised in the main thread
            box["error"] = e
        finally:
            if ctx is not None:
                pop_context()

    if threading.current_thread() is not threading.main_thread():
        return f(*args, **kwargs)
    worker = threading.Thread(target=run, name="fastspec-command", daemon=True)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        previous = None
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    except (KeyboardInterrupt, _Terminated) as e:
        _abandon(143 if isinstance(e, _Terminated) else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if "error" in box:
        raise box["error"]
    return box.get("result")


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


#: Helper processes a command started (``subprocess.Popen``); killed when the command is interrupted.
ACTIVE_CHILDREN: set = set()


def _abandon(code: int) -> None:
    """Remove what is half written, stop helper processes and leave now (the worker may be inside
    compiled code)."""
    import shutil
    import signal
    import time
    from pathlib import Path

    from fastspec._atomic import ACTIVE_TEMPORARIES

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C (or timeout's signal to the group) must not
        try:                                      # cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # pragma: no cover - not the main thread
            pass

    for proc in list(ACTIVE_CHILDREN):
        try:
            proc.kill()
        except OSError:
            pass
    for p in list(ACTIVE_TEMPORARIES):
        p = Path(p)
        if p.is_dir():
            # renamed first: the build's writer threads can no longer create files in it while it is
            # removed (what survives keeps a name the next build of the target removes)
            gone = p.with_name(p.name + "-abandoned")
            try:
                os.rename(p, gone)
            except OSError:
                gone = p
            for _ in range(20):
                shutil.rmtree(gone, ignore_errors=True)
                if not gone.exists():
                    break
                time.sleep(0.05)
        else:
            try:
                p.unlink()
            except OSError:
                pass
    try:
        click.echo("interrupted", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:  # stderr may be a closed pipe: the exit status still says what happened
        os._exit(code)


class CompileWatch:
    """What :func:`compile_watch` measured: ``seconds`` compiling (cache misses only) or waiting for a
    process compiling ahead (:meth:`add`), ``started`` whether any compilation happened here."""

    def __init__(self, log):
        self.seconds = 0.0
        self.started = False
        self._log = log
        self._depth = 0
        self._t0 = 0.0

    # numba's "numba:compile" events: a kernel compiles the kernels it calls inside its own event, all under
    # numba's global compiler lock, so one depth counter serves every thread
    def on_start(self, event) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
            if not self.started:
                self._log("compiling numba kernels on first use (later runs load them from the cache) ...")
            self.started = True
        self._depth += 1

    def on_end(self, event) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0

    def add(self, seconds: float) -> None:
        """Count time spent waiting for another process compiling a kernel this one needs."""
        self.seconds += seconds

    def note(self) -> str:
        """``"; N s of it compiling numba kernels on first use"`` (empty below half a second)."""
        return f"; {self.seconds:.1f} s of it compiling numba kernels on first use" if self.seconds >= 0.5 else ""


@contextmanager
def compile_watch(log):
    """Watch numba compile inside the block: one line through ``log`` when the first kernel starts
    compiling (on an empty cache a first search can take a minute before any progress), and the seconds
    spent, which a command's summary reports next to its throughput (which includes them). Kernels
    loaded from numba's cache do not count."""
    from numba.core import event

    watch = CompileWatch(log)

    class _Listener(event.Listener):
        def on_start(self, ev):
            watch.on_start(ev)

        def on_end(self, ev):
            watch.on_end(ev)

    listener = _Listener()
    event.register("numba:compile", listener)
    try:
        yield watch
    finally:
        event.unregister("numba:compile", listener)


def make_parents(*paths) -> None:
    """Create the folders output files go into, before the work rather than after it (a finished
    evaluation must not be lost to a missing folder). ``None`` paths are skipped."""
    from pathlib import Path

    for p in paths:
        if p is not None:
            Path(p).resolve().parent.mkdir(parents=True, exist_ok=True)


def prepare_outputs(*paths) -> None:
    """:func:`make_parents`, then refuse now an output that could not be written once the work is done
    (:func:`fastspec._atomic.probe_writable`): a command with several outputs had replaced its first
    before failing on its second (``evaluate -o r.json --markdown`` with ``r.md`` a directory)."""
    from fastspec._atomic import probe_writable

    make_parents(*paths)
    for p in paths:
        if p is not None:
            probe_writable(p)


def check_tolerance_option(value: str | None, name: str = "--tolerance") -> None:
    """Refuse a command-line tolerance that cannot be parsed, or a bare number of 1 or more: without a unit
    it means Da, and a ppm value missing its unit is far more likely than a window of that many Da."""
    if value is None:
        return
    from fastspec.errors import ParameterError
    from fastspec.tolerance import parse_tolerance

    tol = parse_tolerance(value, name)
    if tol.unit == "da" and tol.value >= 1.0 and not any(u in value.lower() for u in ("da", "ppm")):
        what = "precursor window" if "precursor" in name else "fragment m/z tolerance"
        raise ParameterError(f"{name} {value}: a number without a unit means Da, and {tol.value:g} Da is no "
                             f"{what}; write {value}ppm, or {value}da if you mean it")
