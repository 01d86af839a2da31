"""Shared CLI plumbing: --threads/--quiet options and turning user mistakes into one clear line."""
from __future__ import annotations

import functools
import os
import sys

import click

from fastspec.errors import FastspecError


def common_options(f):
    """Add ``--threads`` and ``--quiet`` to a command; they are passed as ``threads`` and ``quiet``."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for numba and faiss (default: all).")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or summaries on stderr.")(f)
    return f


def handle_errors(f):
    """Report FastspecError / missing files as ``Error: ...`` and exit 2, never a traceback.

    Set ``FASTSPEC_DEBUG=1`` to see the traceback.
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (FastspecError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            if os.environ.get("FASTSPEC_DEBUG"):
                raise
            msg = str(e) if isinstance(e, FastspecError) else f"{e.strerror}: {e.filename}"
            raise click.ClickException(msg.splitlines()[0] if msg else type(e).__name__) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
