"""CLI of the lab: evaluate, split, ablate and report through click's CliRunner on a MassBank subset."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("rdkit")

from fastspec.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def library(massbank_parquet, tmp_path_factory):
    """A small positive+negative MassBank subset as parquet (whole formula groups, so buckets are populated)."""
    t = pq.read_table(massbank_parquet)
    formulas = t.column("formula").to_pylist()
    uniq = sorted({f for f in formulas if f})
    keep = set(np.random.default_rng(11).permutation(uniq)[: len(uniq) // 15].tolist())
    rows = np.flatnonzero([f in keep for f in formulas])[:900]
    path = tmp_path_factory.mktemp("lab") / "lib.parquet"
    pq.write_table(t.take(pa.array(rows)), path)
    return path


def invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res


def test_evaluate_cli(library, tmp_path):
    out = tmp_path / "new" / "r.json"  # output folders are made before the evaluation runs
    pred = tmp_path / "pred" / "p.parquet"
    res = invoke("evaluate", "--library", library, "--split", "inchikey", "--preset", "khoo2026", "--ion-mode", "positive",
                 "--bootstrap", "50", "-o", out, "--markdown", "--predictions", pred)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["config"]["preset"] == "khoo2026" and rep["config"]["split"] == "inchikey"
    assert rep["split_profile"]["molecule_overlap"] == 0.0
    assert rep["n_test"] >= rep["n_scored"]
    assert (tmp_path / "new" / "r.md").exists()
    assert pq.read_table(pred).num_rows == rep["n_test"]
    assert "mean_tanimoto_all=" in res.output  # the summary line (stderr)
    # explicit options override the preset
    res = invoke("evaluate", "-l", library, "--preset", "khoo2026", "--intensity-power", "0", "--bootstrap", "0", "-q")
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    assert rep["config"]["intensity_power"] == 0.0 and rep["config"]["metric"] == "binned_cosine"


def test_evaluate_cli_errors(library, tmp_path):
    res = CliRunner().invoke(main, ["evaluate", "-l", str(tmp_path / "nope.mgf")])
    assert res.exit_code != 0 and "Error" in res.output and "Traceback" not in res.output
    # the markdown summary goes next to the JSON: -o x.md would have replaced the JSON with it
    res = invoke("evaluate", "-l", library, "-o", tmp_path / "r.md", "--markdown", "--bootstrap", "0", "-q")
    assert res.exit_code != 0 and "report JSON" in res.output and not (tmp_path / "r.md").exists()
    # a library without any structure: one line, not an IndexError
    t = pq.read_table(library)
    t = t.drop_columns([c for c in ("smiles", "inchi", "inchikey", "inchikey14") if c in t.column_names])
    pq.write_table(t, tmp_path / "nostruct.parquet")
    res = invoke("evaluate", "-l", tmp_path / "nostruct.parquet", "--bootstrap", "0", "-q")
    assert res.exit_code != 0 and "molecule" in res.output and "Traceback" not in res.output
    # ablate's single-value powers would be dropped (its grids set them)
    res = invoke("ablate", "-l", library, "--intensity-power", "0.5", "-o", tmp_path / "a.json", "-q")
    assert res.exit_code != 0 and "--intensity-powers" in res.output
    assert "--intensity-power " not in invoke("ablate", "--help").output  # nor offered by its help
    # report of a file that is not text
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00binary")
    res = invoke("report", tmp_path / "bin.json", "-o", tmp_path / "r2.md")
    assert res.exit_code != 0 and "not a JSON text file" in res.output
    res = CliRunner().invoke(main, ["evaluate", "-l", str(library), "--split", "instrument:NOPE"])
    assert res.exit_code != 0 and "no spectrum has instrument_type" in res.output


def test_lab_options_that_would_be_ignored_are_refused(library, massbank_mgf, tmp_path):
    """From an audit of the lab commands: options a run would ignore are refused up front, split specs are
    checked before ablate runs the first split's grid, a split file's typo'd labels are not dropped
    silently, valid JSON of another shape is one line in report, and figures never replace an input."""
    q = massbank_mgf
    for args, why in (
            (["evaluate", "-l", library, "--queries", q, "--split", "scaffold"], "--split does not apply with --queries"),
            (["evaluate", "-l", library, "--queries", q, "--test-fraction", "0.5"], "--test-fraction does not apply"),
            (["ablate", "-l", library, "--queries", q, "--split", "l2s", "-o", tmp_path / "a.json"], "--queries"),
            (["ablate", "-l", library, "--query-embeddings", tmp_path / "e.npy", "-o", tmp_path / "a.json"],
             "--query-embeddings go with --queries"),
            (["evaluate", "-l", library, "--split", "instrument:LC-ESI-QFT", "--test-fraction", "0.3"],
             "--test-fraction does not apply"),
            (["evaluate", "-l", library, "--split", "random", "--l2s-iterations", "3"], "applies to --split l2s"),
            # split's predictor options count only for l2s (evaluate's are the baseline's own)
            (["split", "-l", library, "--split", "random", "--metric", "cosine", "--fingerprint", "none", "-o",
              tmp_path / "s.csv"], "--metric, --fingerprint apply to --split l2s only"),
            (["split", "-l", library, "-o", tmp_path / "s.csv.bz2"], "a split file is named"),
            (["split", "-l", library, "-o", tmp_path / "s.xyz"], "a split file is named"),
            (["ablate", "-l", library, "--split", "random", "--split", "ce:40-20", "-o", tmp_path / "a.json"],
             "LOW > HIGH"),
            (["ablate", "-l", library, "--split", "random", "--split", "bogus", "-o", tmp_path / "a.json"],
             "unknown split 'bogus'")):
        res = invoke(*args, "-q")
        assert res.exit_code == 1 and why in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "a.json").exists() and not list(tmp_path.glob("s.*"))
    # gzipped and .pq split files are what they say, and read back
    for name in ("s.csv.gz", "s.tsv.gz", "s.pq"):
        assert invoke("split", "-l", library, "-o", tmp_path / name, "-q").exit_code == 0
        head = (tmp_path / name).read_bytes()[:4]
        assert head[:2] == b"\x1f\x8b" if name.endswith(".gz") else head == b"PAR1"
        res = invoke("evaluate", "-l", library, "--split", f"file:{tmp_path / name}", "--bootstrap", "0", "-q")
        assert res.exit_code == 0, res.output
    # a split file whose labels hold a typo
    sfile = tmp_path / "typo.csv"
    assert invoke("split", "-l", library, "--split", "random", "-o", sfile, "-q").exit_code == 0
    text = sfile.read_text()
    assert '"test"' in text
    sfile.write_text(text.replace('"test"', '"tset"', 3))
    res = invoke("evaluate", "-l", library, "--split", f"file:{sfile}", "--bootstrap", "0", "-q")
    assert res.exit_code == 1 and "'tset'" in res.output
    # (a NaN label is a gap, as an empty one: numpy columns written to parquet hold NaN, not null)
    t = pa.table({"index": pa.array(range(len(pq.read_table(library))), pa.int64())})
    labels = np.where(np.arange(t.num_rows) % 5 == 0, 1.0, 0.0)
    labels[1] = np.nan
    pq.write_table(t.append_column("split", pa.array(labels, pa.float64(), from_pandas=False)), tmp_path / "nan.parquet")
    res = invoke("evaluate", "-l", library, "--split", f"file:{tmp_path / 'nan.parquet'}", "--bootstrap", "0", "-q")
    assert res.exit_code == 0, res.output
    # report: valid JSON of another shape; an input inside the figure folder
    for doc in ({"rows": None}, {"rows": 5}, {"config": None, "n_test": "x"}):
        (tmp_path / "w.json").write_text(json.dumps(doc))
        res = invoke("report", tmp_path / "w.json", "-o", tmp_path / "w.md", "-q")
        assert res.exit_code == 1 and "Traceback" not in res.output and res.output.startswith("Error: "), doc
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "score_hist.png").write_text("{}")
    res = invoke("report", figs / "score_hist.png", "-o", tmp_path / "f.md", "--figures", figs, "-q")
    assert res.exit_code == 1 and "holds an input" in res.output and (figs / "score_hist.png").read_text() == "{}"


def test_split_then_file_evaluate(library, tmp_path):
    sfile = tmp_path / "splits" / "split.csv"
    prof = tmp_path / "profiles" / "profile.json"
    res = invoke("split", "-l", library, "--split", "scaffold", "-o", sfile, "--profile", prof)
    assert res.exit_code == 0, res.output
    p = json.loads(prof.read_text())
    assert {"test_share", "molecule_overlap", "unseen_formula_share", "shift"} <= set(p)
    out = tmp_path / "r.json"
    res = invoke("evaluate", "-l", library, "--split", f"file:{sfile}", "--metric", "cosine", "--bootstrap", "0", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["split_profile"]["n_test"] == p["n_test"]
    # a split file that names only part of the library (one of another library, say) says so on stderr;
    # the summary line names the policy and gives both exact-match rates
    lines = sfile.read_text().splitlines()
    part = tmp_path / "part.csv"
    part.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
    res = invoke("evaluate", "-l", library, "--split", f"file:{part}", "--metric", "cosine", "--bootstrap", "0",
                 "-o", tmp_path / "part.json")
    assert res.exit_code == 0, res.output
    n_out = json.loads((tmp_path / "part.json").read_text())["split_profile"]["n_excluded"]
    assert n_out > 0 and f"{n_out:,} of " in res.output and "in neither part of the split" in res.output
    assert "no_neighbour=skip" in res.output and "exact_all=" in res.output


def _metrics(path):
    rep = json.loads(path.read_text())
    return {k: rep[k] for k in ("n_test", "n_scored", "coverage", "mean_tanimoto", "mean_tanimoto_all")}


def test_split_files_mean_the_same_spectra(library, tmp_path):
    """A split file written with --ion-mode numbers spectra by their position in the library file, so it
    evaluates the same with or without --ion-mode, also when ids repeat (then only the index says which
    spectrum a row is). It numbered the filtered rows before: read without the filter, an
    InChIKey-disjoint file became 64% leaky and took in negative-mode spectra."""
    t = pq.read_table(library)
    ids = t.column("id").to_pylist()
    ids[1] = ids[0]
    dup = tmp_path / "dup.parquet"
    pq.write_table(t.set_column(t.column_names.index("id"), "id", pa.array(ids)), dup)
    sfile = tmp_path / "s.csv"
    assert invoke("split", "-l", dup, "--split", "inchikey", "--ion-mode", "positive", "-o", sfile, "-q").exit_code == 0
    runs = {}
    for mode in ("positive", "both"):
        out = tmp_path / f"{mode}.json"
        res = invoke("evaluate", "-l", dup, "--split", f"file:{sfile}", "--ion-mode", mode, "--preset", "khoo2026",
                     "--bootstrap", "0", "-o", out, "-q")
        assert res.exit_code == 0, res.output
        runs[mode] = _metrics(out)
        assert json.loads(out.read_text())["leakage"] == 0.0
    assert runs["positive"] == runs["both"]
    # an index column that is not whole numbers is one clear error
    bad = tmp_path / "bad.csv"
    bad.write_text("index,split\n0,train\n1.5,test\n")
    res = CliRunner().invoke(main, ["evaluate", "-l", str(dup), "--split", f"file:{bad}", "--bootstrap", "0", "-q"])
    assert res.exit_code != 0 and "whole numbers" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["evaluate", "-l", str(dup), "--split", "random:foo", "-q"])
    assert res.exit_code != 0 and "takes no argument" in res.output


def test_l2s_split_file_equals_evaluate(library, tmp_path):
    """`fastspec split --split l2s` takes evaluate's predictor options, so its file is the split evaluate
    makes itself (with --bucket formula+adduct only half the test ids matched before)."""
    opts = ["--bucket", "formula+adduct", "--tolerance", "0.02", "--metric", "cosine", "--ion-mode", "positive"]
    sfile = tmp_path / "l2s.csv"
    res = invoke("split", "-l", library, "--split", "l2s", *opts, "-o", sfile, "-q")
    assert res.exit_code == 0, res.output
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for split, out in (("l2s", a), (f"file:{sfile}", b)):
        res = invoke("evaluate", "-l", library, "--split", split, *opts, "--bootstrap", "0", "-o", out, "-q")
        assert res.exit_code == 0, res.output
    assert _metrics(a) == _metrics(b)
    # ... also with another fingerprint (the l2s predictor's Tanimoto; split used to take the default)
    fp = ["--fingerprint", "morgan:2:2048"]
    res = invoke("split", "-l", library, "--split", "l2s", *opts, *fp, "-o", sfile, "-q")
    assert res.exit_code == 0, res.output
    for split, out in (("l2s", a), (f"file:{sfile}", b)):
        res = invoke("evaluate", "-l", library, "--split", split, *opts, *fp, "--bootstrap", "0", "-o", out, "-q")
        assert res.exit_code == 0, res.output
    assert _metrics(a) == _metrics(b)


def test_ablate_and_report(library, tmp_path):
    out = tmp_path / "abl" / "abl.json"
    res = invoke("ablate", "-l", library, "--split", "random", "--split", "inchikey", "--metric", "cosine",
                 "--intensity-powers", "0,1", "--mz-powers", "0", "--bootstrap", "0", "--ion-mode", "positive", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    abl = json.loads(out.read_text())
    assert len(abl["rows"]) == 2 * 3
    assert {r["config"].get("library") for r in abl["rows"]} == {str(library)}  # every split's rows, not the first's
    assert {"split", "intensity_power", "mz_power", "shuffle", "mean_tanimoto"} <= set(abl["rows"][0])
    assert len(abl["intensity_blind"]) == 2
    md, html = tmp_path / "rep" / "report.md", tmp_path / "html" / "report.html"
    rep_json = tmp_path / "r.json"
    invoke("evaluate", "-l", library, "--metric", "cosine", "--bootstrap", "0", "-o", rep_json, "-q")
    res = invoke("report", out, rep_json, "-o", md, "--html", html)
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "Intensity ablation" in text and "Summary" in text
    assert "| coverage |" in text and "| n_test |" in text  # split x setting table carries n and coverage
    # what n_test leaves out is in the summary: spectra set aside by the split, test and training exclusions
    assert "excluded (split / test / train)" in text
    summary = [ln for ln in text.splitlines() if ln.startswith("| inchikey |")]
    assert summary and summary[0].split(" | ")[3].count("/") == 2
    # how the labels were read (formulas derived, normalized energies), once per library
    assert text.count("Labels, before the ion-mode filter: library: ") == 1
    figs = list((tmp_path / "rep" / "report_figures").glob("*.png"))
    assert figs and all(f.stat().st_size < 200_000 for f in figs)
    h = html.read_text()
    assert "data:image/png;base64," in h and "<table>" in h
    res = CliRunner().invoke(main, ["ablate", "-l", str(library), "--intensity-powers", "a,b", "-o", str(out)])
    assert res.exit_code != 0 and "intensity-powers" in res.output
    # a JSON that looks like a report but lacks what the tables read: one line, not a KeyError
    cut = json.loads(rep_json.read_text())
    del cut["n_scored"]
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    res = CliRunner().invoke(main, ["report", str(tmp_path / "cut.json"), "-o", str(tmp_path / "c.md")])
    assert res.exit_code != 0 and "without n_scored" in res.output and "Traceback" not in res.output


def test_report_groups_note_counts_in_the_singular():
    """"the others hold 1 test spectra" read wrong (an audit): one spectrum, one value, in the singular."""
    from fastspec.report import _groups

    g = {"n_test": 1, "coverage": 1.0, "mean_tanimoto": 0.5, "mean_tanimoto_all": 0.5, "exact_match_rate": 0.0}
    notes = [b.text for b in _groups(("random", {"n_test": 2, "groups": {"ion_mode": {"positive": g}}}))
             if b.kind == "p"]
    assert notes == ["The most frequent value; the others hold 1 test spectrum (the JSON report lists up to 20 values)."]
    notes = [b.text for b in _groups(("random", {"n_test": 5, "groups": {"ion_mode": {"positive": g, "negative": g}}}))
             if b.kind == "p"]
    assert notes == ["The 2 most frequent values; the others hold 3 test spectra (the JSON report lists up to 20 "
                     "values)."]
