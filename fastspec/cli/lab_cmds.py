"""``fastspec evaluate | split | ablate | report``: the nearest-neighbour baseline lab."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from fastspec.cli._common import (check_tolerance_option, common_options, handle_errors, prepare_outputs,
                                  refuse_clobbering)

_METRICS = ["binned_cosine", "cosine", "modified_cosine", "entropy"]


def _split_options(f):
    # applied bottom-up: the last line below is the first option in --help
    f = click.option("--l2s-policy", type=click.Choice(["fallback", "skip"]), default="fallback", show_default=True,
                     help="l2s: the NN predictor's answer without a same-bucket neighbour (skip = counted as 0).")(f)
    f = click.option("--l2s-patience", type=click.IntRange(min=1), default=2, show_default=True, help="l2s: iterations without improvement.")(f)
    f = click.option("--l2s-iterations", type=click.IntRange(min=1), default=8, show_default=True, help="l2s: maximum iterations.")(f)
    f = click.option("--molecule-disjoint", is_flag=True, help="Also drop training spectra whose molecule is in test.")(f)
    f = click.option("--ion-mode", type=click.Choice(["positive", "negative", "both"]), default="both", show_default=True,
                     help="Use only spectra of this polarity (searches are always within one polarity).")(f)
    f = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the split (evaluate and ablate: also of the bootstrap intervals).")(f)
    f = click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
                     help="Share of spectra in test (random, inchikey, formula, scaffold, l2s).")(f)
    return f


def _search_options(f):
    # applied bottom-up: the last line below is the first option in --help
    f = click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Bootstrap resamples for the CIs.")(f)
    f = click.option("--fingerprint-cache", type=click.Path(file_okay=False), default=None, help="Directory of a persistent fingerprint cache.")(f)
    f = click.option("--fingerprint", default="morgan:2:4096", show_default=True, help="Fingerprint for Tanimoto, or 'none'.")(f)
    f = click.option("--vote", type=click.IntRange(min=1), default=None, help="Top-k vote (1 = copy the top-1 molecule).")(f)
    f = click.option("--no-neighbour", "no_neighbour", type=click.Choice(["skip", "fallback", "zero"]), default=None,
                     help="Test spectra without a same-bucket training spectrum [default: skip].")(f)
    f = click.option("--bucket", type=click.Choice(["formula", "formula+adduct", "none"]), default=None,
                     help="Candidates: same canonical formula (+adduct), or all (always same polarity) [default: formula].")(f)
    f = click.option("--intensity-power", type=float, default=None, help="Peak weight intensity exponent [default: 1].")(f)
    f = click.option("--mz-power", type=float, default=None, help="Peak weight m/z exponent [default: 0].")(f)
    f = click.option("--tolerance", default=None, help="Fragment tolerance: Da ('0.01') or ppm ('10ppm') [default: 0.01].")(f)
    f = click.option("--metric", type=click.Choice(_METRICS), default=None, help="Spectral similarity [default: modified_cosine].")(f)
    f = click.option("--preset", type=click.Choice(["khoo2026"]), default=None,
                     help="Paper-faithful settings (explicit options override them).")(f)
    return f


def _search_kwargs(kw: dict) -> dict:
    _check_lab_tolerance(kw)
    return {k: kw.pop(k) for k in ("preset", "metric", "tolerance", "mz_power", "intensity_power", "bucket", "no_neighbour", "vote")}


def _check_lab_tolerance(kw: dict) -> None:
    """The bare-number rule for --tolerance, except where it is a bin width (binned cosine, the khoo2026
    preset's metric): 1 Da bins are a normal setting there."""
    binned = kw.get("metric") == "binned_cosine" or (kw.get("metric") is None and kw.get("preset") is not None)
    if not binned:
        check_tolerance_option(kw.get("tolerance"))


def _logger(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def _l2s(kw: dict, quiet: bool) -> dict:
    return {"max_iter": kw.pop("l2s_iterations"), "patience": kw.pop("l2s_patience"), "policy": kw.pop("l2s_policy"),
            "progress": False if quiet else None}  # a bar over its iterations on a terminal


def _run_kwargs(kw: dict) -> dict:
    """The split / fingerprint / bootstrap options shared by ``evaluate`` and ``ablate``."""
    names = ("test_fraction", "seed", "molecule_disjoint", "ion_mode", "fingerprint", "fingerprint_cache")
    out = {n: kw.pop(n) for n in names}
    out["n_bootstrap"] = kw.pop("bootstrap")
    return out


def _summary_line(rep: dict) -> str:
    """One line: n, coverage and the no-neighbour policy first (the means are over scored or all test
    spectra, and which spectra are scored depends on the policy), then the means both ways."""
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return (
        f"n_test={rep['n_test']} n_scored={rep['n_scored']} coverage={f(rep['coverage'])} "
        f"no_neighbour={(rep.get('config') or {}).get('no_neighbour', 'skip')} "
        f"mean_tanimoto={f(rep['mean_tanimoto'])} mean_tanimoto_all={f(rep['mean_tanimoto_all'])} "
        f"exact={f(rep['exact_match_rate'])} exact_all={f(rep.get('exact_match_rate_all'))} leakage={f(rep['leakage'])}"
    )


def _excluded_line(rep: dict) -> str | None:
    """Library spectra in neither part of the split (a split file of another library leaves most out)."""
    prof = rep.get("split_profile") or {}
    n_out = int(prof.get("n_excluded") or 0)
    if not n_out:
        return None
    n_all = n_out + int(prof.get("n_train") or 0) + int(prof.get("n_test") or 0)
    return (f"{n_out:,} of {n_all:,} library spectra ({n_out / n_all:.1%}) are in neither part of the split and "
            f"were left out")


def _given(*names: str) -> list[str]:
    """The options among ``names`` (parameter names) set on the command line, as ``--option`` words."""
    ctx = click.get_current_context()
    out = []
    for name in names:
        src = ctx.get_parameter_source(name)
        if src is not None and src is not click.core.ParameterSource.DEFAULT:
            out.append("--split" if name in ("split_spec", "splits") else "--" + name.replace("_", "-"))
    return out


_L2S = ("l2s_iterations", "l2s_patience", "l2s_policy")


def _check_split_options(specs, queries) -> None:
    """Options that would be ignored are refused: a split (and its options) with --queries, whose queries
    are the test set and the whole library trains; --test-fraction with splits that do not draw; the l2s
    options without an l2s split. The split specs themselves are checked now (ablate runs one after
    another: a typo in the last came after the others' whole grids)."""
    from fastspec.errors import ParameterError
    from fastspec.splits import check_split_spec

    if queries is not None:
        extra = _given("split_spec" if "split_spec" in click.get_current_context().params else "splits",
                       "test_fraction", *_L2S)
        if extra:
            raise ParameterError(f"{', '.join(extra)} {_apply(extra, 'does not apply', 'do not apply')} with --queries "
                                 "(the queries are the test set; the whole library trains)")
        return
    kinds = [check_split_spec(s) for s in specs]
    if not any(k in ("random", "inchikey", "formula", "scaffold", "l2s") for k in kinds) and _given("test_fraction"):
        raise ParameterError(f"--test-fraction does not apply to split {', '.join(map(str, specs))} (its test set "
                             "is given, not drawn)")
    # split's own options for the l2s predictor (evaluate and ablate use theirs for the NN baseline itself)
    l2s_only = _L2S + (("metric", "preset", "tolerance", "bucket", "fingerprint", "fingerprint_cache")
                       if click.get_current_context().command.name == "split" else ())
    if "l2s" not in kinds and _given(*l2s_only):
        extra = _given(*l2s_only)
        raise ParameterError(f"{', '.join(extra)} {_apply(extra, 'applies', 'apply')} to --split l2s only")


def _apply(options: list, one: str, several: str) -> str:
    """The verb for a list of options ("--x applies", "--x, --y apply")."""
    return one if len(options) == 1 else several


def _split_files(specs) -> list[str]:
    """The split files named by ``file:PATH`` split specs (inputs a command must not overwrite)."""
    parts = [str(s).partition(":") for s in specs if s]
    return [arg for kind, _, arg in parts if kind.strip().lower() == "file"]  # as make_split reads the spec


@click.command("evaluate")
@click.option("--library", "-l", required=True, type=click.Path(dir_okay=False), help="Labelled library (any readable format).")
@click.option("--queries", type=click.Path(dir_okay=False), default=None, help="External test set searched against the whole library.")
@click.option("--split", "split_spec", default="random", show_default=True,
              help="random|inchikey|formula|scaffold|instrument:V|adduct:V|ce:LOW-HIGH[%]|column:NAME|file:PATH|l2s")
@_split_options
@_search_options
@click.option("--shuffle-intensities", is_flag=True, default=None, help="Control: permute intensities within each spectrum.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Report JSON (default: stdout).")
@click.option("--markdown", is_flag=True,
              help="Also write a markdown summary next to -o (as .md); without -o, print it instead of the JSON.")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None, help="Per-query predictions (parquet).")
@common_options
@handle_errors
def evaluate(library, queries, split_spec, output, markdown, predictions, threads, quiet, **kw):
    """Evaluate the nearest-neighbour baseline: copy the molecule of the most similar training spectrum
    with the same formula (and polarity) and score it by fingerprint Tanimoto."""
    from fastspec.evaluate import evaluate as run_evaluate
    from fastspec.evaluate import write_json

    from fastspec.errors import ParameterError

    if markdown and output and Path(output).suffix.lower() == ".md":  # the summary would replace the JSON
        raise ParameterError("-o is the report JSON; --markdown writes its summary next to it as .md: give -o "
                             "another name (report.json)")
    md = str(Path(output).with_suffix(".md")) if markdown and output else None
    _check_split_options([split_spec], queries)
    refuse_clobbering([library, queries, *_split_files([split_spec])],
                      [("--output", output), ("--predictions", predictions), ("--markdown", md),
                       ("--fingerprint-cache", kw.get("fingerprint_cache"))])
    if predictions and os.path.splitext(predictions)[1].lower() not in ("", ".parquet", ".pq"):
        from fastspec.errors import ParameterError  # a .csv of Parquet bytes would not read back as CSV

        raise ParameterError(f"--predictions {predictions}: predictions are written as Parquet; name the file .parquet")
    prepare_outputs(output, predictions, md)
    if predictions:  # Parquet: refused for a pipe before the evaluation, not after it
        from fastspec._atomic import check_seekable

        check_seekable(predictions, "Parquet", "them to a file")
    search = _search_kwargs(kw)
    l2s = _l2s(kw, quiet)
    rep = run_evaluate(
        library,
        split_spec,
        queries=queries,
        **search,
        shuffle_intensities=kw.pop("shuffle_intensities"),
        **_run_kwargs(kw),
        l2s_options=l2s,
        predictions=predictions,
        threads=threads,
        log=_logger(quiet),
    )
    if output:
        write_json(rep, output)
    if markdown:
        from fastspec.report import report_markdown

        text = report_markdown([rep])
        if output:
            from fastspec._atomic import write_text_atomically

            write_text_atomically(Path(output).with_suffix(".md"), text)
        else:
            click.echo(text)
    if not output and not markdown:
        from fastspec.evaluate import _clean

        click.echo(json.dumps(_clean(rep), indent=1))
    if not quiet:
        note = _excluded_line(rep)
        if note:
            click.echo(note, err=True)
        click.echo(_summary_line(rep), err=True)


@click.command("split")
@click.option("--library", "-l", required=True, type=click.Path(dir_okay=False), help="Labelled library (any readable format).")
@click.option("--split", "split_spec", default="random", show_default=True,
              help="random|inchikey|formula|scaffold|instrument:V|adduct:V|ce:LOW-HIGH[%]|column:NAME|file:PATH|l2s")
@_split_options
@click.option("--metric", type=click.Choice(_METRICS), default=None, help="l2s: similarity of the NN predictor.")
@click.option("--preset", type=click.Choice(["khoo2026"]), default=None, help="l2s: NN predictor preset.")
@click.option("--tolerance", default=None, help="l2s: fragment tolerance of the NN predictor (as in evaluate).")
@click.option("--bucket", type=click.Choice(["formula", "formula+adduct", "none"]), default=None,
              help="l2s: candidates of the NN predictor (as in evaluate) [default: formula].")
@click.option("--fingerprint", default="morgan:2:4096", show_default=True,
              help="l2s: fingerprint of the NN predictor's Tanimoto (as in evaluate; 'none': exact molecule match only).")
@click.option("--fingerprint-cache", type=click.Path(file_okay=False), default=None,
              help="l2s: directory of a persistent fingerprint cache.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Split file (.csv, .tsv, .parquet; .csv.gz, .tsv.gz, .pq).")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None, help="Also write the split profile JSON.")
@common_options
@handle_errors
def split(library, split_spec, output, profile_path, fingerprint, fingerprint_cache, threads, quiet, **kw):
    """Write a train/test split file (columns index, id, split) and print its profile."""
    from fastspec.baseline import LabData
    from fastspec.evaluate import _clean, _filter_mode, load_spectra, rejected_note, search_config, write_json
    from fastspec.splits import make_split, split_format, split_profile, write_split

    _check_split_options([split_spec], None)
    split_format(output)  # before the split is made (an l2s split takes minutes)
    refuse_clobbering([library, *_split_files([split_spec])], [("--output", output), ("--profile", profile_path),
                                                              ("--fingerprint-cache", fingerprint_cache)])
    prepare_outputs(output, profile_path)

    rejected: dict = {}
    lab = load_spectra(library, rejected)
    if rejected:
        _logger(quiet)(f"{library}:{rejected_note(rejected)}")
    lab = _filter_mode(lab if isinstance(lab, LabData) else LabData.build(lab), kw.pop("ion_mode"))
    # the predictor evaluate's l2s uses (its metric, tolerance and buckets at the reference peak weights),
    # so that `split --split l2s` writes the split evaluate makes
    _check_lab_tolerance(kw)
    cfg = search_config(kw.pop("preset"), **{k: kw.pop(k) for k in ("metric", "tolerance", "bucket")})
    cfg = cfg.replace(intensity_power=1.0, mz_power=0.0, shuffle_intensities=False)
    if split_spec.strip().lower() == "l2s" and fingerprint not in (None, "", "none"):
        # evaluate attaches its --fingerprint before l2s runs; the split file must be that split
        lab.attach_fingerprints(fingerprint, cache_dir=fingerprint_cache)
    sp = make_split(
        lab,
        split_spec,
        test_fraction=kw.pop("test_fraction"),
        seed=kw.pop("seed"),
        molecule_disjoint=kw.pop("molecule_disjoint"),
        l2s_options=_l2s(kw, quiet),
        search=cfg,
        threads=threads,
    )
    # index = position in the library file, so the file means the same spectra with or without --ion-mode
    write_split(sp, output, lab.spectra, lab.source_index)
    prof = split_profile(lab, sp.assignment)
    if sp.info:
        prof["split_info"] = sp.info
    if profile_path:
        write_json(prof, profile_path)
    if not quiet:
        click.echo(
            f"{split_spec}: train={prof['n_train']} test={prof['n_test']} excluded={prof['n_excluded']} "
            f"test_share={prof['test_share']:.3f} molecule_overlap={prof['molecule_overlap']:.3f} "
            f"unseen_formula_share={prof['unseen_formula_share']:.3f}",
            err=True,
        )
        click.echo(json.dumps(_clean(prof["shift"]), indent=1), err=True)


@click.command("ablate")
@click.option("--library", "-l", required=True, type=click.Path(dir_okay=False), help="Labelled library (any readable format).")
@click.option("--queries", type=click.Path(dir_okay=False), default=None, help="External test set (instead of splits).")
@click.option("--split", "splits", multiple=True, default=["random"], show_default=True, help="Split spec; repeat for several.")
@_split_options
@_search_options
@click.option("--intensity-powers", default="0,0.25,0.5,1,2", show_default=True, help="Comma-separated grid.")
@click.option("--mz-powers", default="0,1", show_default=True, help="Comma-separated grid.")
@click.option("--no-shuffle", is_flag=True, help="Skip the intensity-shuffle control.")
@click.option("--embeddings", type=click.Path(dir_okay=False), default=None, help="External embeddings .npy, one row per library spectrum.")
@click.option("--query-embeddings", type=click.Path(dir_okay=False), default=None, help="Embeddings .npy for --queries.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Ablation JSON.")
@common_options
@handle_errors
def ablate(library, queries, splits, intensity_powers, mz_powers, no_shuffle, embeddings, query_embeddings, output, threads, quiet, **kw):
    """Evaluate over a grid of intensity transforms (+ shuffle control) for each split."""
    from fastspec.ablation import ablate as run_ablate
    from fastspec.errors import ParameterError

    def grid(text: str, name: str) -> list[float]:
        try:
            vals = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ParameterError(f"{name}: expected comma-separated numbers, got {text!r}") from None
        if not vals:
            raise ParameterError(f"{name}: empty grid")
        return vals

    _check_split_options(splits, queries)
    if query_embeddings is not None and queries is None:
        raise ParameterError("--query-embeddings go with --queries (the embeddings of those spectra)")
    refuse_clobbering([library, queries, embeddings, query_embeddings, *_split_files(splits)],
                      [("--output", output), ("--fingerprint-cache", kw.get("fingerprint_cache"))])
    prepare_outputs(output)
    search = _search_kwargs(kw)
    for name in ("intensity_power", "mz_power"):  # the grids set them; a single value would be dropped
        if search.get(name) is not None:
            flag = "--" + name.replace("_", "-")
            raise ParameterError(f"{flag} does not apply to ablate: its grid {flag}s sets the values")
    out = run_ablate(
        library,
        splits,
        queries=queries,
        **{k: v for k, v in search.items() if k not in ("intensity_power", "mz_power")},
        intensity_powers=grid(intensity_powers, "--intensity-powers"),
        mz_powers=grid(mz_powers, "--mz-powers"),
        shuffle=not no_shuffle,
        embeddings=embeddings,
        query_embeddings=query_embeddings,
        **_run_kwargs(kw),
        l2s_options=_l2s(kw, quiet),
        output=output,
        threads=threads,
        log=_logger(quiet),
    )
    if not quiet:
        click.echo(f"{len(out['rows'])} rows -> {output}", err=True)


# the grids set ablate's powers: its --help does not offer the single-value options (refused if given)
for _p in ablate.params:
    if _p.name in ("intensity_power", "mz_power"):
        _p.hidden = True


@click.command("report")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Markdown output.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Also a self-contained HTML file.")
@click.option("--figures", "figure_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG figures (default: <output stem>_figures).")
@click.option("--title", default="Nearest-neighbour baseline evaluation", show_default=True)
@click.option("--note", "notes", multiple=True, help="A paragraph under the title (repeatable).")
@common_options
@handle_errors
def report(inputs, output, html_path, figure_dir, title, notes, threads, quiet):
    """Render report/ablation JSONs as markdown (+ PNG figures) and HTML."""
    from fastspec.report import render

    from fastspec.errors import ParameterError

    refuse_clobbering(inputs, [("--output", output), ("--html", html_path)])
    figures = Path(figure_dir) if figure_dir else Path(output).with_name(Path(output).stem + "_figures")
    held = [i for i in inputs if Path(i).resolve().parent == figures.resolve()]
    if held:  # the figures' names are fixed: one could replace an input
        raise ParameterError(f"the figure folder {figures} holds an input ({held[0]}): choose another --figures")
    prepare_outputs(output, html_path)
    try:
        res = render(list(inputs), output, html_path, title=title, figure_dir=figure_dir, notes=notes)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as e:
        # valid JSON of another shape ({"rows": null}, a config of null): the inputs, not fastspec
        import os

        if os.environ.get("FASTSPEC_DEBUG"):
            raise
        raise ParameterError(f"cannot render {', '.join(map(str, inputs))}: {type(e).__name__}: {e} (not reports "
                             "written by fastspec evaluate / ablate?)") from None
    if not quiet:
        click.echo(f"wrote {output}" + (f" and {html_path}" if html_path else "") + f" ({res['figures']} figures)", err=True)
        from fastspec.report import _pyplot

        if _pyplot() is None:
            click.echo("no figures: matplotlib is not installed (pip install 'fastspec[plot]')", err=True)
