"""``fastspec index | query | info``: build, search and describe library indexes."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import click

from fastspec.cli import _ahead
from fastspec.cli._common import (check_tolerance_option, common_options, compile_watch, handle_errors,
                                  input_format_option, make_parents, refuse_clobbering, stdin_paths)

_MODES = ["identity", "formula", "open", "analog", "hybrid", "neutral_loss"]
_METRICS = ["cosine", "modified_cosine", "entropy", "unweighted_entropy", "binned_cosine", "neutral_loss_cosine"]


def _log(quiet: bool):
    return (lambda msg: None) if quiet else _echo_err


def _echo_err(msg: str) -> None:
    """A line on stderr; above a running tqdm bar, not into its line (the compile notice during a build)."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
        tqdm.tqdm.write(msg, file=sys.stderr)
    else:
        click.echo(msg, err=True)


def _pipeline_from_options(no_preprocess, preprocess, min_mz, max_mz, remove_precursor, noise, top_k):
    """The library Pipeline (or None) from the command-line options."""
    from fastspec.errors import ParameterError

    tweaks = {k: v for k, v in (("min_mz", min_mz), ("max_mz", max_mz), ("remove_precursor", remove_precursor),
                                ("noise", noise), ("top_k", top_k)) if v is not None}
    if no_preprocess:
        if preprocess or tweaks:
            raise ParameterError("--no-preprocess cannot be combined with other preprocessing options")
        return None
    from fastspec import preprocess as pp
    from fastspec.library import resolve_pipeline

    if preprocess:
        if tweaks:
            raise ParameterError("give either --preprocess STRING or the individual preprocessing options, not both")
        return resolve_pipeline(preprocess)
    if not tweaks:
        return pp.default_pipeline()
    return _default_with(pp, tweaks)


def _default_with(pp, tweaks: dict):
    """The default pipeline with some parameters changed (through its config, so every step keeps its order)."""
    import inspect

    sig = inspect.signature(pp.default_pipeline)
    accepted = {k: v for k, v in tweaks.items() if k in sig.parameters}
    if len(accepted) == len(tweaks):
        return pp.default_pipeline(**accepted)
    from fastspec.errors import ParameterError

    missing = sorted(set(tweaks) - set(accepted))
    raise ParameterError(f"preprocessing options not supported by this build: {', '.join(missing)}; use --preprocess STRING")


@click.command("index")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Index directory to create (e.g. lib.fastspec).")
@click.option("--preprocess", "preprocess", default=None, help="Preprocessing pipeline as a string, steps "
              "'name:key=value,...' joined by ';' (e.g. 'mz_range:min=50;top_k:k=100'; steps and parameters: "
              "help(fastspec.preprocess)).")
@click.option("--no-preprocess", is_flag=True, help="Index peaks as read, only sorted (file records with bad peak values are rejected "
                   "and counted; zero-intensity peaks kept, as matchms keeps them).")
@click.option("--min-mz", type=float, default=None, help="Drop peaks below this m/z.")
@click.option("--max-mz", type=float, default=None, help="Drop peaks above this m/z.")
@click.option("--remove-precursor", type=float, default=None, help="Drop peaks with m/z >= precursor m/z - WINDOW (default 1.6) where that bound is positive: the "
              "default pipeline's ms_entropy cleaning step, which drops the bound itself (the standalone "
              "remove_precursor step of --preprocess keeps it, as matchms does).")
@click.option("--noise", type=float, default=None, help="Drop peaks below this fraction of the base peak.")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=None, help="Keep the K most intense peaks.")
@click.option("--faiss/--no-faiss", default=None, help="Also build a FAISS index (for --engine faiss)  [default: --faiss].")
@click.option("--on-error", type=click.Choice(["skip", "raise"]), default="skip", show_default=True, help="Unreadable records.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index.")
@click.option("--append", is_flag=True, help="Add the inputs to the existing index OUTPUT (preprocessed as its "
              "spectra were; the index is rebuilt and swapped in atomically).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the read report as JSON here: each rejected record's file, line and reason "
                   "(the first 10,000), counts per file, the index's counts, and the spectra read but "
                   "not indexed (MS1, no peaks after preprocessing: file, record number, id; the first 100 "
                   "per reason).")
@input_format_option
@common_options
@handle_errors
def index(inputs, output, preprocess, no_preprocess, min_mz, max_mz, remove_precursor, noise, top_k, faiss, on_error,
          overwrite, append, report_path, input_format, threads, quiet):
    """Build a library index from spectrum files (MGF, MSP, mzML, mzXML, MassBank records, Parquet, ...) or
    directories of them, or add them to one (--append). '-' reads standard input (with --input-format)."""
    from fastspec.errors import ParameterError
    from fastspec.library import Library

    from fastspec.io import ReadReport

    log = _log(quiet)
    t0 = time.perf_counter()
    inputs = stdin_paths(inputs)
    if report_path:
        here, out = os.path.abspath(report_path), os.path.abspath(output)
        if here == out or here.startswith(os.path.join(out, "")):
            raise ParameterError(f"--report {report_path} is inside the index {output}: choose another path")
        refuse_clobbering(inputs, [("--report", report_path)])
        make_parents(report_path)
        from fastspec._atomic import probe_writable

        probe_writable(report_path)  # written after the index is: a failure then would leave the user unsure
    read_report = ReadReport() if report_path else None
    if append:
        given = [o for o, v in (("--overwrite", overwrite or None), ("--preprocess", preprocess),
                                ("--no-preprocess", no_preprocess or None), ("--min-mz", min_mz), ("--max-mz", max_mz),
                                ("--remove-precursor", remove_precursor), ("--noise", noise), ("--top-k", top_k),
                                ("--faiss/--no-faiss", faiss)) if v is not None]
        if given:
            raise ParameterError(f"--append keeps the index's recorded preprocessing and FAISS settings: drop "
                                 f"{', '.join(given)}")
        lib = Library.open(output)
        n0, r0, why0 = lib.n_spectra, lib.n_rejected, dict(lib.rejected)
        warn0 = dict(lib.info().get("read_warnings") or {})
        with compile_watch(log) as compiled:
            lib.append(inputs, on_error=on_error, threads=threads, progress=False if quiet else None,
                       allow_empty=False, input_format=input_format, report=read_report)
        what, n_new, n_rej = "appended", lib.n_spectra - n0, lib.n_rejected - r0
    else:
        from pathlib import Path

        from fastspec._indexfmt import enclosing_index

        if output == "-":  # a directory named '-'
            raise ParameterError("-o -: an index is a directory; give its path")
        inside = enclosing_index(Path(os.path.abspath(output)).parent)
        if inside is not None:  # before reading anything (Library.build refuses it too)
            raise ParameterError(f"{output} is inside the library index {inside}: choose another output path")
        pipeline = _pipeline_from_options(no_preprocess, preprocess, min_mz, max_mz, remove_precursor, noise, top_k)
        make_parents(output)  # as query, convert and synth do
        with compile_watch(log) as compiled:
            lib = Library.build(inputs, output, preprocess=pipeline, faiss=faiss is not False, on_error=on_error,
                                threads=threads, progress=False if quiet else None, overwrite=overwrite,
                                allow_empty=False, input_format=input_format, report=read_report)
        what, n_new, n_rej = "indexed", lib.n_spectra, lib.n_rejected
        warn0 = {}
    dt = time.perf_counter() - t0
    if report_path:
        from fastspec._atomic import write_text_atomically
        from fastspec.errors import FastspecError

        info = lib.info()
        doc = {"read": read_report.to_dict(),
               "index": {**{k: info.get(k) for k in ("path", "n_spectra", "n_read", "n_rejected", "rejected")},
                         "left_out": lib.left_out},
               what: {"spectra": n_new, "rejected": n_rej}}
        try:
            write_text_atomically(report_path, json.dumps(doc, indent=1, default=str))
        except OSError as e:  # (probed before the work; a disk filled meanwhile) the index stands: say so
            raise FastspecError(f"{output} was {what} ({n_new:,} spectra, {n_rej:,} rejected; do not "
                                f"{'append them again' if append else 'build it again'}), but the report "
                                f"{report_path} could not be written: {e.strerror or e}") from e
    rej = ", ".join(f"{r}: {c:,}" for r, c in lib.rejected.items())
    # an append's own rejections: the index's counts less those it held before
    new_rej = ", ".join(f"{r}: {c - why0.get(r, 0):,}" for r, c in lib.rejected.items() if c > why0.get(r, 0)) \
        if append else rej
    # an append's own reader warnings: the index's totals less those it held before (as for rejections)
    warnings = {w: c - warn0.get(w, 0) for w, c in (lib.info().get("read_warnings") or {}).items()
                if c > warn0.get(w, 0)}
    _log_warnings(log, warnings)
    log(f"{what} {n_new:,} spectra ({n_rej:,} rejected{': ' + new_rej if new_rej else ''}) "
        f"{'to' if append else 'into'} {output} in {dt:.1f} s{compiled.note()}"
        + (f"; it holds {lib.n_spectra:,} ({lib.n_rejected:,} rejected{': ' + rej if rej else ''})" if append else ""))


def _log_warnings(log, warnings: dict | None) -> None:
    """The reader's counted oddities (lines outside records, unparsable precursor m/z, ...), one line."""
    if warnings:
        log("reader warnings: " + ", ".join(f"{k}: {v}" for k, v in warnings.items()))


@click.command("query")
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--library", "-l", "library", required=True, type=click.Path(), help="Library index directory.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Hit table (.parquet, .tsv or .csv; .tsv.gz / .csv.gz gzipped).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query.")
@click.option("--mode", type=click.Choice(_MODES), default="identity", show_default=True,
              help="identity: library spectra within --precursor-tolerance; formula: those of the query's formula; "
                   "open: the whole library, exactly; analog: modified cosine over the whole library; hybrid, "
                   "neutral_loss: ms_entropy's hybrid and neutral-loss searches, exactly.")
@click.option("--metric", type=click.Choice(_METRICS), default=None, help="Similarity [default: cosine; modified_cosine for analog; entropy for hybrid and neutral_loss (ms_entropy's hybrid and neutral-loss searches)].")
@click.option("--tolerance", default=None, help="Fragment tolerance, e.g. 0.02da or 10ppm (binned_cosine: the bin "
                                                "width, Da; with --preset, in place of the preset's)  [default: 0.02da; with --preset, the "
                                                "preset's bins].")
@click.option("--preset", type=click.Choice(["khoo2026"]), default=None,
              help="binned_cosine bins of the Khoo & Barzilay NN baseline (0.25 Da to 2,000 Da, base peak and "
                   "precursor peak 100) [default: bins of --tolerance].")
@click.option("--precursor-tolerance", default=None, help="Identity-mode precursor window  [default: 0.01da].")
@click.option("--engine", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: every mode, exact top-k; faiss: candidates from the index's FAISS vectors (--nprobe, "
                   "--n-candidates) rescored exactly, open / analog / hybrid only, recall below 1.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="FAISS: inverted lists visited.")
@click.option("--n-candidates", type=click.IntRange(min=1), default=None, help="FAISS: candidates rescored per query.")
@click.option("--no-neighbour", "no_neighbour", type=click.Choice(["skip", "fallback", "empty"]), default="skip", show_default=True,
              help="Formula mode, no same-formula library spectrum.")
@click.option("--formula", default=None, help="Formula mode: formula for all queries (default: from their metadata).")
@click.option("--same-adduct", is_flag=True, help="Only library spectra with the query's adduct.")
@click.option("--same-charge", is_flag=True, help="Only library spectra with the query's charge.")
@click.option("--same-instrument", is_flag=True, help="Only library spectra with the query's instrument type.")
@click.option("--min-matches", type=click.IntRange(min=0), default=0, show_default=True, help="Minimum matched peaks.")
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Minimum score.")
@click.option("--mz-power", type=float, default=0.0, show_default=True,
              help="Peak weight m/z exponent (cosine metrics; matchms' mz_power).")
@click.option("--intensity-power", type=float, default=1.0, show_default=True,
              help="Peak weight intensity exponent (cosine metrics; matchms' intensity_power).")
@click.option("--on-error", type=click.Choice(["skip", "raise"]), default="skip", show_default=True, help="Unreadable query records.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Queries read, searched and written at a time (memory holds one chunk's spectra and hits).")
@input_format_option
@click.option("--output-format", type=click.Choice(["parquet", "tsv", "csv", "tsv.gz", "csv.gz"], case_sensitive=False),
              default=None,
              help="Hit table format (default: from --output's extension; needed for a name without one, such as "
                   "/dev/stdout).")
@click.option("--scheduler", default=None, metavar="ADDRESS|local[:N]",
              help="Search the chunks on a dask.distributed cluster: a scheduler's address (tcp://host:8786), or "
                   "'local' / 'local:N' for N worker processes on this machine. Every worker opens the index at the "
                   "same path (a shared filesystem); --threads is then each worker's. Needs fastspec[dist].")
@common_options
@handle_errors
def query(queries, library, output, k, mode, metric, tolerance, preset, precursor_tolerance, engine, nprobe, n_candidates,
          no_neighbour, formula, same_adduct, same_charge, same_instrument, min_matches, min_score, mz_power,
          intensity_power, on_error, chunk_size, input_format, output_format, scheduler, threads, quiet):
    """Search query spectra against a library index and write the hit table. '-' reads the queries from standard
    input (with --input-format)."""
    from fastspec.errors import IndexChangedError, ParameterError
    from fastspec.library import Library, sort_input

    from fastspec.hits import table_kind

    log = _log(quiet)
    queries = stdin_paths(queries)
    sort_input(queries, on_error)  # a missing query file is refused before anything compiles (one line)
    table_kind(output, output_format)  # a wrong extension is refused before the search
    for name, value in (("--tolerance", tolerance), ("--precursor-tolerance", precursor_tolerance)):
        if not (name == "--tolerance" and metric == "binned_cosine"):  # 1 Da bins are a normal setting
            check_tolerance_option(value, name)
    make_parents(output)  # before the search, not after it
    if preset is not None and metric != "binned_cosine":
        raise ParameterError("--preset applies to --metric binned_cosine")
    metric_params = {"preset": preset} if preset else {}
    if preset is not None and tolerance is not None:  # the bin width, as `fastspec evaluate --preset` takes it
        from fastspec.tolerance import parse_tolerance

        tol = parse_tolerance(tolerance, "--tolerance")
        if tol.unit != "da":
            raise ParameterError(f"--tolerance {tolerance} with --preset is the bin width, in Da")
        metric_params["bin_width"] = tol.value
        tolerance = None
    if precursor_tolerance is not None and mode != "identity":  # it would be recorded, yet filter nothing
        raise ParameterError("--precursor-tolerance applies to --mode identity")
    if scheduler is not None:
        from fastspec.dist import parse_scheduler

        parse_scheduler(scheduler)  # a malformed value is refused before the index is opened
    # what goes to Library.search_to_file as it is (threads may change below, for a cluster's workers)
    search_kw = dict(k=k, chunk_size=chunk_size, mode=mode, metric=metric, tolerance=tolerance,
                     precursor_tolerance=precursor_tolerance, engine=engine, nprobe=nprobe, n_candidates=n_candidates,
                     no_neighbour=no_neighbour, formula=formula, same_adduct=same_adduct, same_charge=same_charge,
                     same_instrument=same_instrument, min_matches=min_matches, min_score=min_score, mz_power=mz_power,
                     intensity_power=intensity_power, on_error=on_error, input_format=input_format,
                     output_format=output_format, **metric_params)
    lib = Library.open(library)
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler is not None:
            from fastspec.dist import cluster_client, worker_threads

            client = stack.enter_context(cluster_client(scheduler))
            threads = worker_threads(scheduler, threads)
        for attempt in range(_SWAPPED_TRIES):
            try:
                return _query(lib, queries, output, search_kw, threads, quiet, client, log)
            except IndexChangedError:
                # an append or rebuild by another process swapped the index in mid-search (nothing was written:
                # the table appears only once complete); the new index is as valid: search it from the start
                if attempt + 1 == _SWAPPED_TRIES or not all(os.path.isfile(q) or os.path.isdir(q) for q in queries):
                    raise  # (a pipe or standard input cannot be read twice)
                log(f"{library} was rebuilt or appended to by another process during the search: searching the "
                    "new index from the start")
                lib = Library.open(library)


#: searches of one `fastspec query` when the index keeps being swapped under it (another process appending)
_SWAPPED_TRIES = 3


def _query(lib, queries: list, output: str, search_kw: dict, threads, quiet: bool, client, log):
    """`fastspec query` once its options passed their checks: search (``search_kw``: the options for
    :meth:`Library.search_to_file`), write, and say what happened."""
    from fastspec.errors import ParameterError

    t0 = time.perf_counter()
    # a chunk of queries at a time, straight into the table: memory stays bounded however many queries
    with compile_watch(log) as compiled:
        ahead = []

        def start_ahead(p: dict) -> None:  # once the parameters passed their checks, before any query is read
            # (on a cluster the workers compile, each from numba's cache where it has one)
            if client is None and _ahead.uses_bound_kernel(p["mode"], p["metric"], p["engine"], p["no_neighbour"]):
                # its ~40 s compile beside the reading and the rest
                ahead.extend(a for a in [_ahead.start(log, threads, on_wait=compiled.add)] if a is not None)

        try:
            done = lib.search_to_file(queries if len(queries) > 1 else queries[0], output, **search_kw,
                                      threads=threads, client=client, progress=False if quiet else None,
                                      on_validated=start_ahead)
        finally:
            for a in ahead:
                a.stop()
    dt = time.perf_counter() - t0
    params, n = done["params"], done["n_queries"]
    rec = params.get("query_records") or {}
    _log_warnings(log, rec.get("warnings"))
    if rec.get("rejected"):
        why = ", ".join(f"{r}: {c}" for r, c in rec["rejected_by_reason"].items())
        if rec["rejected"] == rec.get("read"):  # as `fastspec index` and `convert` refuse such input
            raise ParameterError(f"every query record was rejected ({rec['rejected']}: {why}); nothing was "
                                 f"searched ({output} lists them, status 'rejected')")
        log(f"{rec['read']} query records read, {rec['rejected']} rejected and not searched ({why})")
    for name, c in (params.get("filters_not_applied") or {}).items():
        why = [f"{c[r]} {r}" for r in ("missing", "unreadable") if c.get(r)]
        eg = f", e.g. {', '.join(map(repr, c['unreadable_examples']))}" if c.get("unreadable_examples") else ""
        what = "a readable adduct" if name == "adduct" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        n_out = c.get("missing", 0) + c.get("unreadable", 0)
        log(f"--same-{name} not applied to {n_out} quer{'y' if n_out == 1 else 'ies'} without "
            f"{what} of their own ({', '.join(why)}{eg}): they match "
            f"library spectra of any {name}")
    by = done.get("skipped_by_status") or {}
    why = f" ({', '.join(f'{st} {c}' for st, c in by.items())})" if by else ""
    no_hit = n - done["n_with_hits"] - done["n_skipped"]  # searched, nothing passed: one row each too
    log(f"{n} queries, {done['n_with_hits']} with hits, {no_hit} without a hit, {done['n_skipped']} skipped{why}; "
        f"{dt:.2f} s ({n / dt if dt > 0 else 0:.0f} queries/s{compiled.note()}{_cluster_note(client)}); "
        f"wrote {output}")


def _cluster_note(client) -> str:
    """``", on 4 dask workers (4 threads)"`` for a search on a cluster, else ``""``."""
    if client is None:
        return ""
    nthreads = client.nthreads()
    return f", on {len(nthreads)} dask worker{'s' if len(nthreads) != 1 else ''} ({sum(nthreads.values())} threads)"


def _derived_formulas(d: dict) -> str:
    """" (N from their SMILES, M from their InChI)" when formulas were derived from structures."""
    parts = [f"{d[k]} spectra's from their {w}" for k, w in (("n_formula_from_smiles", "SMILES"),
                                                             ("n_formula_from_inchi", "InChI")) if d.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


@click.command("info")
@click.argument("library", type=click.Path())
@click.option("--verify", is_flag=True, help="Check the checksum of every file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@handle_errors
def info(library, verify, as_json, threads, quiet):
    """Describe (and optionally verify) a library index."""
    from fastspec.errors import IndexChangedError
    from fastspec.library import Library

    lib = Library.open(library)
    for attempt in range(_SWAPPED_TRIES if verify else 0):
        try:
            lib.verify(progress=False if quiet else None)
            break
        except IndexChangedError:  # an append or rebuild swapped a new index in meanwhile: verify that one
            if attempt + 1 == _SWAPPED_TRIES:
                raise
            lib = Library.open(library)
    d = lib.info()
    d["verified"] = True if verify else None  # (a failed check is an error: false would read as one)
    if as_json:
        click.echo(json.dumps(d, indent=1, default=str))
        return
    lines = [
        f"library         {d['path']}",
        f"format version  {d['format_version']} (fastspec {d['fastspec_version']}, created {d['created']})",
        f"spectra         {d['n_spectra']:,} indexed, {d['n_read']:,} read, {d['n_rejected']:,} rejected",
    ]
    for reason, c in sorted(d["rejected"].items(), key=lambda x: -x[1]):
        lines.append(f"  rejected      {c:,}: {reason}")
    for what, c in sorted((d.get("read_warnings") or {}).items(), key=lambda x: -x[1]):
        lines.append(f"  read warning  {c:,}: {what}")
    inputs, n_inputs = d.get("input_files") or [], d.get("n_input_files", 0)
    shown = inputs if len(inputs) >= n_inputs else inputs[:10] + [None] + inputs[10:]  # the first and last few
    what = {"memory": "(spectra given in memory)", "unknown": "(not recorded)"}
    for f in shown:
        lines.append(f"  input         ... {n_inputs - len(inputs)} more" if f is None else
                     f"  input         {f['records']:,} record{'s' if f['records'] != 1 else ''}: "
                     f"{f['path'] if f['path'] is not None else what.get(f['source'], f['source'])}")
    lines += [
        f"peaks           {d['n_peaks']:,}",
        f"polarity        {d['n_positive']:,} positive, {d['n_negative']:,} negative"
        + (f", {d['n_unknown_polarity']:,} unknown" if d.get("n_unknown_polarity") else ""),
        f"formulas        {d['n_formulas']:,}" + _derived_formulas(d),
        f"preprocessing   {json.dumps(d['preprocess']) if d['preprocess'] is not None else 'none (peaks as read)'}",
        f"faiss           {d['faiss']['index'] if d['faiss'] else 'no'}"
        + (f", thresholds {d['faiss']['theta']['index']}" if d["faiss"] and d["faiss"].get("theta") else ""),
        "search arrays   " + (", ".join(k for k, v in d["search_arrays"].items() if v) or "none")
        + ("" if all(d["search_arrays"].values()) else
           f" (missing: {', '.join(k for k, v in d['search_arrays'].items() if not v)}: searches take a slower "
           "path to the same hits)"),
        f"size            {d['size_bytes'] / 1e6:.1f} MB in {d['files']} files",
    ]
    if verify:
        lines.append("verified        all checksums match")
    click.echo("\n".join(lines))
