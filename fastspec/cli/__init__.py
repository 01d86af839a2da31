"""Command-line interface. Subcommands live in their own modules and are imported only when run,
so ``fastspec --help`` stays fast (no numba, faiss or pyarrow import)."""
from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"; each module defines a click.Command
COMMANDS = {
    "demo": "fastspec.cli.demo_cmd:demo",
    "index": "fastspec.cli.library_cmds:index",
    "query": "fastspec.cli.library_cmds:query",
    "info": "fastspec.cli.library_cmds:info",
    "synth": "fastspec.cli.synth_cmd:synth",
    "convert": "fastspec.cli.io_cmds:convert",
    "evaluate": "fastspec.cli.lab_cmds:evaluate",
    "split": "fastspec.cli.lab_cmds:split",
    "ablate": "fastspec.cli.lab_cmds:ablate",
    "report": "fastspec.cli.lab_cmds:report",
}

SHORT_HELP = {
    "demo": "Build a synthetic library, index it, query it in every mode, print throughput.",
    "index": "Build a library index from spectrum files.",
    "query": "Search query spectra against a library index.",
    "info": "Describe (and optionally verify) a library index.",
    "synth": "Generate a deterministic synthetic spectral library.",
    "convert": "Convert between spectrum file formats.",
    "evaluate": "Evaluate the nearest-neighbour baseline on a labelled library.",
    "split": "Write a train/test split file for a labelled library.",
    "ablate": "Run the evaluation over a grid of intensity transforms.",
    "report": "Render report/ablation JSONs to markdown and HTML.",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if _available(n))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        mod, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(mod), attr)

    def invoke(self, ctx):
        # a subcommand's bad option or argument (-k 0, --mode foo, a missing --library) as one line, as
        # every other user mistake is reported, instead of click's usage block; exit status 2 as click's
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help text itself (click >= 8.2)
                raise
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            raise _OneLineUsageError(f"{e.format_message()} (see '{where} --help')") from None

    def format_commands(self, ctx, formatter):
        rows = [(n, SHORT_HELP.get(n, "")) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _OneLineUsageError(click.ClickException):
    """A usage mistake shown as one ``Error: ...`` line, with click's usage-error exit status."""

    exit_code = 2


def _available(name: str) -> bool:
    mod = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(mod) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastspec")
def main():
    """fastspec: fast, exact MS/MS spectral similarity, library search and a fair NN-baseline lab."""


import importlib.util  # noqa: E402  (used by _available; kept after the group for readability)
