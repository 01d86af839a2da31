"""``fastspec synth``: write a deterministic synthetic library (and optionally a query set with answers)."""
from __future__ import annotations

import time

import click

from fastspec.cli._common import common_options, handle_errors, refuse_clobbering


@click.command("synth")
@click.option("-n", "--n-spectra", "n_spectra", type=click.IntRange(min=1), default=2_400_000, show_default=True,
              help="Number of spectra.")
@click.option("--molecules", type=click.IntRange(min=1), default=None, help="Distinct molecules (default n/40).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed (same arguments, same bytes).")
@click.option("--seed-library", type=click.Path(dir_okay=False), default=None,
              help="Grow this real library (perturbed copies) instead of pure synthetic spectra.")
@click.option("--polarity", type=click.Choice(["both", "positive", "negative"]), default="both", show_default=True,
              help="Ion modes to generate (or to keep from a seed library).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet, .h5, .mgf or .msp.")
@click.option("--queries", "n_queries", type=click.IntRange(min=1), default=None,
              help="Also write this many queries derived from library spectra (answer in column source_row; "
                   "grown from --seed-library, also seed_row / seed_id: the seed spectrum, whose every copy "
                   "is an answer).")
@click.option("--queries-output", "queries_output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the queries (required with --queries).")
@click.option("--noise", type=click.FloatRange(min=0, max=10), default=1.0, show_default=True,
              help="Query perturbation strength (0: copies, m/z rounded to 1e-5 Da).")
@common_options
@handle_errors
def synth(n_spectra, molecules, seed, seed_library, polarity, output, n_queries, queries_output, noise, threads, quiet):
    """Generate a deterministic synthetic spectral library (NIST scale by default)."""
    from fastspec import synth as gen
    from fastspec.errors import ParameterError

    if (n_queries is None) != (queries_output is None):
        raise ParameterError("--queries and --queries-output go together")
    src = click.get_current_context().get_parameter_source("noise")
    if n_queries is None and src is not None and src is not click.core.ParameterSource.DEFAULT:
        raise ParameterError("--noise applies to the queries (--queries N --queries-output FILE)")
    refuse_clobbering([seed_library], [("--output", output), ("--queries-output", queries_output)])
    from fastspec.io import output_format, write

    for path in (output, queries_output):  # any writable format (.mgf.gz too), checked before generating
        if path is not None:
            output_format(path)
    if n_queries is not None and n_queries > n_spectra:  # before minutes of generating and writing
        raise ParameterError(f"cannot draw {n_queries} queries from a library of {n_spectra} spectra")
    if molecules is not None and seed_library is not None:
        raise ParameterError("--molecules cannot be combined with --seed-library (molecules come from the seed)")
    t0 = time.perf_counter()
    seed_report: dict = {}
    lib = gen.generate(n_spectra, molecules, seed=seed, seed_library=seed_library, polarity=polarity, threads=threads,
                       progress=False if quiet else None, seed_report=seed_report)
    t_gen = time.perf_counter() - t0
    if seed_report and not quiet:
        click.echo(_seed_summary(seed_library, seed_report), err=True)
    write(lib, output)
    msg = f"wrote {len(lib):,} spectra ({int(lib.offsets[-1]):,} peaks) to {output} in {time.perf_counter() - t0:.1f} s " \
          f"(generation {t_gen:.1f} s)"
    if n_queries is not None:
        q, _ = gen.make_queries(lib, n_queries, seed=seed, noise=noise)
        write(q, queries_output)
        msg += f"; {len(q):,} queries to {queries_output}"
    if not quiet:
        click.echo(msg, err=True)


def _seed_summary(path, r: dict) -> str:
    """One line on what a seed library gave: records read, refused and left out by reason, spectra used, and
    those of them that identity / hybrid (no precursor m/z) or formula search (no formula) cannot find."""
    def reasons(d):
        return ", ".join(f"{k}: {v:,}" for k, v in d.items())

    out = f"seed {path}: {r['n_records']:,} records read"
    if r["n_rejected"]:
        out += f", {r['n_rejected']:,} rejected ({reasons(r['rejected'])})"
    if r["left_out"]:
        out += f", left out {reasons(r['left_out'])}"
    out += f"; {r['n_used']:,} spectra used"
    lacks = [f"{r[k]:,} without {what}" for k, what in (("no_precursor", "a precursor m/z (identity / hybrid "
                                                         "search cannot find their copies)"),
                                                        ("no_formula", "a formula, SMILES or InChI (formula search)")) if r[k]]
    return out + (f", of them {'; '.join(lacks)}" if lacks else "")
