"""``fastspec convert``: read spectrum files in any supported format and write them in another."""
from __future__ import annotations

import time

import click

from fastspec.cli._common import (common_options, handle_errors, input_format_option, make_parents, refuse_clobbering,
                                  stdin_paths)

_WRITABLE = ("mgf", "msp", "tsv", "parquet", "hdf5")


@click.command("convert")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.argument("output", nargs=1, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(_WRITABLE), default=None,
              help="Output format (default: from OUTPUT's extension; .gz compresses text).")
@input_format_option
@click.option("--on-error", "on_error", type=click.Choice(["skip", "raise"]), default="skip", show_default=True,
              help="Bad records: skip and count them, or stop at the first with its file and line.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the read report (counts, rejected records) as JSON here.")
@common_options
@handle_errors
def convert(inputs, output, fmt, input_format, on_error, report_path, threads, quiet):
    """Convert spectra: INPUTS... (mgf, msp, mzML, mzXML, JSON, MassBank records, tsv, parquet, h5) -> OUTPUT (mgf, msp, tsv,
    parquet, h5).

    Several inputs are concatenated. Metadata keys are harmonised; bad records are skipped and
    counted unless --on-error raise.
    """
    from fastspec.io import output_format, read, write

    inputs = stdin_paths(inputs)
    refuse_clobbering(inputs, [("OUTPUT", output), ("--report", report_path)])
    output_format(output, fmt)  # a format it cannot write there is refused before the input is read
    make_parents(output, report_path)  # before the work, not after it
    t0 = time.perf_counter()
    spectra, report = read(list(inputs), format=input_format, on_error=on_error,
                           progress=False if quiet else None, return_report=True)
    from fastspec.library import _refuse_empty

    _refuse_empty(report, blank_ok=True)  # a file of other text (a BEGIN_IONS typo) is no empty input
    if len(spectra) == 0 and report.n_rejected:  # every record was bad: an empty output would hide it
        from fastspec.errors import FastspecError
        from fastspec.io._common import first_rejection

        raise FastspecError(f"every record was rejected ({report.n_rejected}; first: {first_rejection(report)}); "
                            f"nothing written to {output}")
    write(spectra, output, format=fmt)
    if report_path:
        import json

        from fastspec._atomic import write_text_atomically

        write_text_atomically(report_path, json.dumps(report.to_dict(), indent=1, default=str))
    if not quiet:
        click.echo(f"{len(spectra):,} spectra -> {output} in {time.perf_counter() - t0:.2f}s; "
                   f"{report.summary()}", err=True)
