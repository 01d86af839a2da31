"""``fastspec index | query | info`` end to end (click's CliRunner and one real subprocess)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fastspec.cli import main
from fastspec.errors import ParameterError
from fastspec.library import Library
from fastspec.hits import HIT_COLUMNS


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def assert_clean_error(res, *words):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, res.output
    for w in words:
        assert w.lower() in lines[0].lower(), res.output


@pytest.fixture(scope="module")
def index(massbank_mgf, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lib.fastspec"
    res = run("index", massbank_mgf, "-o", out, "--no-faiss", "--quiet", "--threads", "1")
    assert res.output == ""
    return out


def test_info_json_and_verify(index):
    d = json.loads(run("info", index, "--json").output)
    assert d["n_spectra"] > 900 and d["n_rejected"] >= 0 and d["format_version"] >= 1
    assert d["n_read"] == d["n_spectra"] + d["n_rejected"]
    assert d["verified"] is None  # not checked (false read as a failed check)
    assert json.loads(run("info", index, "--json", "--verify", "-q").output)["verified"] is True
    text = run("info", index, "--verify", "-q").output
    assert "verified" in text and "spectra" in text
    # the input file and its records, in the text and the JSON
    assert d["n_input_files"] == 1 and d["input_files"][0]["records"] == d["n_read"]
    assert f"input         {d['n_read']:,} records: {d['input_files'][0]['path']}" in text
    # a fresh index holds every optional search structure, and says so
    assert d["search_arrays"] and all(d["search_arrays"].values())
    assert "search arrays   precursor_copy, window_blocks" in text and "missing" not in text


def test_hit_table_names_library_files(index, massbank_mgf, tmp_path):
    """fastspec query's hit table says which input file each hit came from."""
    out = tmp_path / "hits.parquet"
    run("query", massbank_mgf, "--library", index, "-o", out, "-k", 2, "--mode", "open", "--threads", "1", "--quiet")
    table = pq.read_table(out)
    files = {f for f, i in zip(table.column("library_file").to_pylist(), table.column("library_index").to_pylist())
             if i is not None}
    assert files == {str(massbank_mgf)}


@pytest.mark.parametrize("mode,ext", [("identity", "parquet"), ("open", "tsv"), ("analog", "csv")])
def test_query_writes_every_query(index, massbank_mgf, tmp_path, mode, ext):
    out = tmp_path / f"hits.{ext}"
    res = run("query", massbank_mgf, "--library", index, "-o", out, "-k", 3, "--mode", mode, "--tolerance", "0.02da",
              "--threads", "1")
    assert "queries" in res.output  # summary on stderr (mixed into output by CliRunner)
    if ext == "parquet":
        table = pq.read_table(out)
        assert json.loads(table.schema.metadata[b"fastspec"])["mode"] == mode
    else:
        import pyarrow.csv as pcsv

        lines = out.read_text().splitlines()
        header = [ln for ln in lines if ln.startswith("#")]
        assert any("mode" in ln for ln in header)
        table = pcsv.read_csv(out, read_options=pcsv.ReadOptions(skip_rows=len(header)),
                              parse_options=pcsv.ParseOptions(delimiter="\t" if ext == "tsv" else ","))
    assert set(HIT_COLUMNS) <= set(table.column_names)
    n = json.loads(run("info", index, "--json").output)["n_read"]
    assert len(set(table.column("query_index").to_pylist())) == n
    ranks = [r for r in table.column("rank").to_pylist() if r is not None]
    assert ranks and max(ranks) <= 3
    # the summary's counts add up to the queries: with hits + without a hit + skipped (by status)
    m = re.search(r"(\d+) queries, (\d+) with hits, (\d+) without a hit, (\d+) skipped", res.output)
    assert m and int(m[1]) == int(m[2]) + int(m[3]) + int(m[4])
    status = table.column("status").to_pylist()
    assert int(m[3]) == len({q for q, st in zip(table.column("query_index").to_pylist(), status) if st == "no_hit"})


def test_query_binned_cosine_preset(index, massbank_mgf, tmp_path):
    """The NN baseline's metric over the whole library (inverted bin index), parameters in the file."""
    out = tmp_path / "hits.parquet"
    run("query", massbank_mgf, "-l", index, "-o", out, "-k", 2, "--mode", "open", "--metric", "binned_cosine",
        "--preset", "khoo2026", "-q")
    table = pq.read_table(out)
    params = json.loads(table.schema.metadata[b"fastspec"])
    assert params["metric"] == "binned_cosine" and params["metric_params"] == {"preset": "khoo2026"}
    assert table.column("score").null_count < table.num_rows
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", out, "--preset", "khoo2026", ok=False),
                       "binned_cosine")
    # --tolerance with the preset is the bin width, as in `fastspec evaluate` (it was ignored, yet recorded)
    wide = tmp_path / "wide.parquet"
    run("query", massbank_mgf, "-l", index, "-o", wide, "-k", 2, "--mode", "open", "--metric", "binned_cosine",
        "--preset", "khoo2026", "--tolerance", "1da", "-q")
    p2 = json.loads(pq.read_table(wide).schema.metadata[b"fastspec"])
    assert p2["metric_params"] == {"preset": "khoo2026", "bin_width": 1.0} and p2["tolerance"] is None
    assert params["tolerance"] is None  # the preset's bins: no tolerance was used
    assert pq.read_table(wide).column("score").to_pylist() != table.column("score").to_pylist()
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", wide, "--mode", "open", "--metric",
                           "binned_cosine", "--preset", "khoo2026", "--tolerance", "10ppm", ok=False), "bin width")


def test_index_options(massbank_mgf, tmp_path):
    raw = tmp_path / "raw.fastspec"
    run("index", massbank_mgf, "-o", raw, "--no-preprocess", "--no-faiss", "-q")
    assert json.loads(run("info", raw, "--json").output)["preprocess"] is None
    tuned = tmp_path / "tuned.fastspec"
    run("index", massbank_mgf, "-o", tuned, "--min-mz", 60, "--noise", 0.02, "--no-faiss", "-q")
    default = tmp_path / "default.fastspec"
    run("index", massbank_mgf, "-o", default, "--no-faiss", "-q")
    p_tuned = json.loads(run("info", tuned, "--json").output)["preprocess"]
    p_default = json.loads(run("info", default, "--json").output)["preprocess"]
    assert p_tuned is not None and p_tuned != p_default
    assert_clean_error(run("index", massbank_mgf, "-o", tmp_path / "x", "--no-preprocess", "--min-mz", 5, ok=False),
                       "no-preprocess")
    assert_clean_error(run("index", massbank_mgf, "-o", default, "-q", ok=False), "exists")
    run("index", massbank_mgf, "-o", default, "-q", "--overwrite", "--no-faiss")


def test_index_append(massbank_mgf, tmp_path):
    """fastspec index --append adds files to an index (Library.append: preprocessed as its spectra were,
    rows after the old ones), the counts adding up; preprocessing options with it are refused."""
    records = massbank_mgf.read_text().split("END IONS\n")
    (tmp_path / "a.mgf").write_text("END IONS\n".join(records[:40]) + "END IONS\n")
    (tmp_path / "b.mgf").write_text("END IONS\n".join(records[40:70]) + "END IONS\n")
    lib = tmp_path / "ap.fastspec"
    run("index", tmp_path / "a.mgf", "-o", lib, "-q", "--no-faiss")
    before = json.loads(run("info", lib, "--json").output)
    res = run("index", tmp_path / "b.mgf", "-o", lib, "--append")
    d = json.loads(run("info", lib, "--json", "--verify").output)
    assert (d["n_read"], d["n_spectra"] + d["n_rejected"]) == (70, 70)
    n_rej = d["n_rejected"] - before["n_rejected"]
    assert f"appended {d['n_spectra'] - before['n_spectra']} spectra ({n_rej} rejected" in res.output
    # the append's own rejections, with their reasons (the index's counts less those it held before)
    new = {r: c - before["rejected"].get(r, 0) for r, c in d["rejected"].items() if c > before["rejected"].get(r, 0)}
    assert sum(new.values()) == n_rej
    assert (f"({n_rej} rejected: " + ", ".join(f"{r}: {c}" for r, c in new.items()) + ")" if n_rej else
            f"({n_rej} rejected)") in res.output
    both = Library.build([tmp_path / "a.mgf", tmp_path / "b.mgf"], tmp_path / "both.fastspec", faiss=False)
    assert (d["n_spectra"], d["n_rejected"]) == (both.n_spectra, both.n_rejected)
    ids = Library.open(lib).metadata(columns=["id"]).column("id").to_pylist()
    assert ids == both.metadata(columns=["id"]).column("id").to_pylist()
    for opt in (["--top-k", "5"], ["--min-mz", "0"], ["--no-faiss"]):  # they would be ignored
        assert_clean_error(run("index", tmp_path / "b.mgf", "-o", lib, "--append", *opt, ok=False), opt[0])
    assert_clean_error(run("index", tmp_path / "b.mgf", "-o", tmp_path / "none.fastspec", "--append", ok=False))


def test_user_mistakes_are_one_line(index, massbank_mgf, tmp_path):
    assert_clean_error(run("index", tmp_path / "missing.mgf", "-o", tmp_path / "l", ok=False), "missing.mgf")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--tolerance", "0.02xx",
                           ok=False), "tolerance")
    # a bare 10 is 10 Da: almost always a ppm value without its unit
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--tolerance", "10",
                           ok=False), "10ppm")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--precursor-tolerance",
                           "-1", ok=False), "non-negative")
    assert_clean_error(run("query", massbank_mgf, "-l", tmp_path / "nolib", "-o", tmp_path / "h.parquet", ok=False))
    (tmp_path / "notanindex").mkdir()
    assert_clean_error(run("query", massbank_mgf, "-l", tmp_path / "notanindex", "-o", tmp_path / "h.parquet", ok=False),
                       "index")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.xlsx", ok=False), "format")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--engine", "faiss",
                           ok=False), "faiss")
    assert_clean_error(run("info", tmp_path / "nolib", ok=False))
    assert_clean_error(run("query", tmp_path / "missing.mgf", "-l", index, "-o", tmp_path / "h.parquet", ok=False),
                       "missing.mgf")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--metric", "entropy",
                           "--mode", "analog", ok=False), "analog")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--mode", "open",
                           "--tolerance", "1000000ppm", ok=False), "1e6")
    # the API's words in the command's: options, not keyword arguments
    res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--mode", "open", "--no-neighbour",
              "fallback", ok=False)
    assert_clean_error(res, "--no-neighbour applies to --mode formula")
    for extra, why in ((["--nprobe", "4"], "--nprobe and --n-candidates apply to --engine faiss"),
                       (["--formula", "C6H6"], "--formula applies to --mode formula")):
        assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", *extra, ok=False), why)
    assert_clean_error(run("index", index, "-o", tmp_path / "again.fastspec", ok=False), "--append")
    res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--mode", "neutral_loss", "--metric",
              "cosine", ok=False)
    assert_clean_error(res, "--mode open, --metric neutral_loss_cosine")
    assert "metric=" not in res.output and "mode=" not in res.output
    # ... but not inside paths or pipeline strings
    odd = tmp_path / "threads=4" / "min_mz.msp"
    odd.parent.mkdir()
    odd.write_text("Name: x\nNum Peaks: 1\n100 abc\n")
    assert_clean_error(run("index", odd, "-o", tmp_path / "o.fastspec", ok=False), "threads=4/min_mz.msp:3")
    assert_clean_error(run("index", massbank_mgf, "-o", tmp_path / "o.fastspec", "--preprocess",
                           "mz_range:min_mz=500,max_mz=100", ok=False), "min_mz")
    # the same bare-number rule in the lab commands
    assert_clean_error(run("evaluate", "-l", massbank_mgf, "--tolerance", "10", ok=False), "10ppm")
    # ... but there a binned_cosine --tolerance is a bin width: 1 Da bins are a normal setting
    res = run("evaluate", "-l", massbank_mgf, "--metric", "binned_cosine", "--tolerance", "1", "--bootstrap", "0",
              "--fingerprint", "none", "-q", ok=False)
    assert "no fragment m/z tolerance" not in res.output
    # the message names what the option sets
    res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--precursor-tolerance", "10", ok=False)
    assert_clean_error(res, "10 Da is no precursor window")
    # only identity search has a precursor window: refused elsewhere, and recorded only there
    res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.tsv", "--mode", "open", "--precursor-tolerance",
              "5ppm", ok=False)
    assert_clean_error(res, "--precursor-tolerance applies to --mode identity")
    run("query", massbank_mgf, "-l", index, "-o", tmp_path / "o.tsv", "--mode", "open", "-q")
    run("query", massbank_mgf, "-l", index, "-o", tmp_path / "i.tsv", "-q")
    assert "# precursor_tolerance: null" in (tmp_path / "o.tsv").read_text()
    assert '# precursor_tolerance: "0.01da"' in (tmp_path / "i.tsv").read_text()
    # an input file named as the index is never replaced by it
    copy = tmp_path / "copy.mgf"
    copy.write_bytes(massbank_mgf.read_bytes())
    assert_clean_error(run("index", copy, "-o", copy, "--overwrite", ok=False))
    assert copy.read_bytes() == massbank_mgf.read_bytes()
    # ... nor a query file by the hit table
    import fastspec.io as fio

    out = tmp_path / "q.parquet"  # queries in a format a hit table can have
    fio.write(fio.read(massbank_mgf)[:5], str(out))
    before = out.read_bytes()
    for q in (out, tmp_path / "." / "q.parquet", tmp_path):  # given, or found in a directory given
        assert_clean_error(run("query", q, "-l", index, "-o", out, "--mode", "open", ok=False), "query files")
    assert out.read_bytes() == before
    # click's own checks (ranges, choices, missing options) are one line too, with click's exit status 2
    for bad in (["-k", "0"], ["--mode", "foo"], ["--metric", "foo"], ["--on-error", "bogus"]):
        res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.tsv", *bad, ok=False)
        assert_clean_error(res, bad[0], "--help")
        assert res.exit_code == 2 and "Usage:" not in res.output
    assert_clean_error(run("query", massbank_mgf, "-o", tmp_path / "h.tsv", ok=False), "--library")
    assert_clean_error(run("nosuchcommand", ok=False), "nosuchcommand")
    # a formula-mode option outside formula mode would be recorded, yet do nothing
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.tsv", "--mode", "open",
                           "--no-neighbour", "fallback", ok=False), "formula")
    # synth's two outputs in one file: the queries would replace the library
    assert_clean_error(run("synth", "-n", "100", "-o", tmp_path / "s.parquet", "--queries", "5", "--queries-output",
                           tmp_path / "s.parquet", ok=False), "same file")
    assert not (tmp_path / "s.parquet").exists()


def test_a_hit_table_name_without_extension_says_what_to_do(index, massbank_mgf, tmp_path):
    """A name without an extension (as /dev/null has) was refused as "unknown hit table format '(none)'";
    the line names the output and the extensions that tell the format (an audit)."""
    for out in ("/dev/null", tmp_path / "hits"):
        res = run("query", massbank_mgf, "-l", index, "-o", out, "--mode", "open", ok=False)
        assert_clean_error(res, f"{out}: no extension to tell the hit table format by", ".parquet, .tsv or .csv")
        assert "(none)" not in res.output
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.gz", ok=False), "'.gz'")


def test_output_format_names_the_hit_table_format(index, massbank_mgf, tmp_path):
    """--output-format writes a table whose name does not say its format: /dev/null, as the README promises
    for devices (it was refused: "unknown hit table format '(none)'"), or any name (an audit)."""
    import gzip

    run("query", massbank_mgf, "-l", index, "-o", "/dev/null", "--output-format", "tsv", "-k", "2", "-q")
    run("query", massbank_mgf, "-l", index, "-o", tmp_path / "hits", "--output-format", "tsv.gz", "-k", "2", "-q")
    text = gzip.decompress((tmp_path / "hits").read_bytes()).decode()
    assert text.startswith("# ") and "\"query_index\"\t\"query_id\"" in text
    # a table extension that says otherwise is refused (the file would be misread by its name; a review),
    # the format is not case-sensitive, and the Python API takes it too
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.tsv", "--output-format", "parquet",
                           ok=False), "extension names another format", "'parquet'")
    assert not (tmp_path / "h.tsv").exists()
    run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.TSV", "--output-format", "TSV", "-k", "2", "-q")
    assert (tmp_path / "h.TSV").read_text().startswith("# ")
    with Library.open(index) as lib:
        done = lib.search_to_file(massbank_mgf, tmp_path / "api", k=2, output_format="csv", progress=False)
        assert done["n_queries"] > 0 and (tmp_path / "api").read_text().splitlines()[-1].count(",") > 5
        hits = lib.search(massbank_mgf, k=2, progress=False)
        hits.write(tmp_path / "w", output_format="parquet")
        assert pq.read_table(tmp_path / "w").num_rows == hits.to_arrow().num_rows
        with pytest.raises(ParameterError, match="output_format must be one of"):
            hits.write(tmp_path / "x", output_format="xlsx")
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h2", "--output-format", "xlsx",
                           ok=False), "xlsx")
    # a pipe takes text tables only: Parquet's writer seeks, and failed after the search ("lseek failed")
    import threading

    import fastspec.io as fio

    fifo = tmp_path / "p.parquet"
    os.mkfifo(fifo)

    def drain():  # a reader, so that a writer opening the pipe (a regression) fails instead of blocking
        with open(fifo, "rb") as f:
            f.read()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def no_read(*a, **k):
        raise AssertionError("read before the output was checked")

    orig = fio.read
    try:
        assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", fifo, ok=False), "is a pipe", "tsv or csv")
        # convert too, before it reads its input (it had read it all first)
        fio.read = no_read
        for fmt in ("parquet", "hdf5"):
            assert_clean_error(run("convert", massbank_mgf, fifo, "--format", fmt, ok=False), "is a pipe",
                               "mgf, msp or tsv")
    finally:
        fio.read = orig
        if reader.is_alive():  # nothing opened the pipe (the refusals open nothing): release the reader
            with open(fifo, "wb"):
                pass
        reader.join(30)
    assert stat_is_fifo(fifo)


def test_synth_has_no_short_option_beside_quiet(tmp_path):
    """synth's queries output was also "-q-out", beside -q (--quiet): "-q q.parquet" read as quiet and a stray
    argument. It is --queries-output only (an audit)."""
    res = run("synth", "--help")
    assert "--queries-output" in res.output and "-q-out" not in res.output
    res = run("synth", "-n", "100", "-o", tmp_path / "s.parquet", "--queries", "5", "-q-out", tmp_path / "q.parquet",
              ok=False)
    assert res.exit_code == 2 and "No such option" in res.output and not (tmp_path / "s.parquet").exists()


def test_an_output_name_that_is_not_utf8_is_one_line(tmp_path):
    """Bytes that are not UTF-8 in an output name (kept by Python as surrogates) are refused by pyarrow;
    the user gets one line, and nothing is left behind."""
    src = tmp_path / "a.mgf"
    src.write_text("BEGIN IONS\nTITLE=a\nPEPMASS=100\n50 10\nEND IONS\n")
    res = run("convert", src, str(tmp_path) + "/c\udcff.parquet", ok=False)
    assert_clean_error(res, "not valid UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mgf"]
    # the same bytes in a text value (the JSON reader now replaces them; any other source) are not blamed on a
    # file name that is fine
    import click

    from fastspec.cli._common import handle_errors

    @handle_errors
    def write(path):
        "caffeine \udcff".encode("utf-8")

    with pytest.raises(click.ClickException, match=r"text that is not valid UTF-8 cannot be written \(near 'caffeine \\xff'\)"):
        write("fine.parquet")


def test_no_command_writes_over_its_input(tmp_path):
    """An output that is one of the command's inputs (also through a symlink), or two outputs in one file, is
    refused before anything is written: convert IN IN used to replace IN, and the records skipped as bad
    were gone with it."""
    import os

    text = ("BEGIN IONS\nTITLE=good\nPEPMASS=100\n50 10\nEND IONS\n"
            "BEGIN IONS\nTITLE=bad\nPEPMASS=200\n50,5 10\nEND IONS\n")
    src = tmp_path / "a.mgf"
    src.write_text(text)
    os.symlink(src, tmp_path / "link.mgf")
    for out in (src, tmp_path / "link.mgf"):
        assert_clean_error(run("convert", src, out, ok=False), "also an input")
    assert_clean_error(run("convert", src, tmp_path / "o.mgf", "--report", tmp_path / "o.mgf", ok=False), "same file")
    assert src.read_text() == text and not (tmp_path / "o.mgf").exists()
    # every record bad: an empty output would hide it (index refuses the same input); an empty input is fine
    (tmp_path / "bad.mgf").write_text(text.split("END IONS\n", 1)[1])
    assert_clean_error(run("convert", tmp_path / "bad.mgf", tmp_path / "e.msp", ok=False), "bad.mgf:4")
    assert not (tmp_path / "e.msp").exists()
    import fastspec.io as fio

    (tmp_path / "none.mgf").write_text("")
    run("convert", tmp_path / "none.mgf", tmp_path / "e.parquet")
    assert len(fio.read(tmp_path / "e.parquet")) == 0
    lib = tmp_path / "l.parquet"
    run("convert", src, lib)
    before = lib.read_bytes()
    for args in (["evaluate", "-l", lib, "-o", lib], ["evaluate", "-l", lib, "--split", f"file:{lib}", "-o", lib],
                 ["split", "-l", lib, "-o", lib], ["ablate", "-l", lib, "-o", lib], ["report", lib, "-o", lib],
                 ["synth", "-n", "100", "--seed-library", lib, "-o", lib]):
        assert_clean_error(run(*args, ok=False), "also an input")
    assert lib.read_bytes() == before


def test_no_command_writes_into_a_library_index(index, massbank_mgf, tmp_path):
    """A hit table (or a converted file, synthetic spectra...) written inside a library index directory would
    replace or join its files: refused, as is replacing a directory whose manifest.json is not an index's
    (--overwrite used to delete a web app's folder). Found by an audit of the index lifecycle."""
    import shutil

    lib = tmp_path / "lib.fastspec"
    shutil.copytree(index, lib)
    for args in (["query", massbank_mgf, "-l", lib, "-o", lib / "metadata.parquet"],
                 ["query", massbank_mgf, "-l", index, "-o", lib / "sub" / "hits.tsv"],
                 ["convert", massbank_mgf, lib / "metadata.parquet"],
                 ["synth", "-n", "100", "-o", lib / "metadata.parquet"],
                 ["index", massbank_mgf, "-o", lib / "nested.fastspec"],
                 ["evaluate", "-l", massbank_mgf, "--fingerprint-cache", lib / "fp"],
                 ["split", "-l", massbank_mgf, "-o", tmp_path / "s.csv", "--split", "l2s", "--fingerprint-cache", lib / "fp"]):
        assert_clean_error(run(*args, ok=False), "inside the library index")
    assert_clean_error(run("demo", "--n-spectra", 100, "--workdir", lib, ok=False), "inside the library index")
    run("info", lib, "--verify")
    with pytest.raises(ParameterError, match="inside the library index"):
        Library.open(index).search_to_file(massbank_mgf, lib / "inputs.parquet")
    # through the Python API too (an append's rebuild would delete such a file)
    import fastspec.io as fio

    hits = Library.open(index).search(fio.read(massbank_mgf).take([0]), k=1)
    for write in (lambda: hits.write(lib / "x.tsv"), lambda: hits.to_parquet(lib / "x.parquet"),
                  lambda: fio.write(fio.read(massbank_mgf).take([0]), lib / "x.mgf"),
                  lambda: Library.build(massbank_mgf, lib / "nested.fastspec", faiss=False)):
        with pytest.raises(ParameterError, match="inside the library index"):
            write()
    assert not list(lib.glob("x.*")) and not (lib / "nested.fastspec").exists()
    app = tmp_path / "webapp"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "pwa"}')
    (app / "index.html").write_text("hi")
    assert_clean_error(run("index", massbank_mgf, "-o", app, "--overwrite", "--no-faiss", ok=False),
                       "not a library index")
    assert (app / "index.html").read_text() == "hi"
    # ... but a damaged index (its manifest cut short) is still replaced, as its error message advises
    (lib / "manifest.json").write_text((lib / "manifest.json").read_text()[:50])
    assert_clean_error(run("info", lib, ok=False), "corrupted")
    run("index", massbank_mgf, "-o", lib, "--overwrite", "--no-faiss", "-q")
    run("info", lib, "--verify")


def test_bad_query_records_follow_on_error(index, massbank_mgf, tmp_path):
    good = massbank_mgf.read_text().split("END IONS")[0] + "END IONS\n"
    bad = "BEGIN IONS\nTITLE=broken\nPEPMASS=not-a-number\n100.0 abc\nEND IONS\n"
    untitled = "\n".join(ln for ln in good.splitlines() if not ln.startswith(("TITLE=", "SPECTRUM_ID="))) + "\n"
    path = tmp_path / "q.mgf"
    path.write_text(good + bad + good + untitled)
    out = tmp_path / "h.parquet"
    run("query", path, "-l", index, "-o", out, "--on-error", "skip", "-q")
    # every record keeps its row, in file order; the rejected one says so
    table = pq.read_table(out)
    assert len(set(table.column("query_index").to_pylist())) == 4
    rows = table.filter(pc.equal(table.column("query_index"), 1))
    assert rows.column("status").to_pylist() == ["rejected"] and rows.column("library_index").null_count == 1
    assert rows.column("query_id").to_pylist() == ["broken"]  # named by its TITLE, like the others
    # a record without an id is named by its position among the records read, its query_index
    last = table.filter(pc.equal(table.column("query_index"), 3))
    assert set(last.column("query_id").to_pylist()) == {"3"}
    # nothing is lost silently: the skipped record is counted on stderr and in the table's parameters
    res = run("query", path, "-l", index, "-o", tmp_path / "h.tsv", "--on-error", "skip")
    assert "4 query records read, 1 rejected and not searched" in res.output
    header = [ln for ln in (tmp_path / "h.tsv").read_text().splitlines() if ln.startswith("# query_records")]
    assert json.loads(header[0].split(": ", 1)[1]) == {"read": 4, "rejected": 1,
                                                       "rejected_by_reason": {"unparsable peak line": 1},
                                                       "warnings": {}}
    assert_clean_error(run("query", path, "-l", index, "-o", out, "--on-error", "raise", "-q", ok=False))


def test_files_without_records_and_reader_warnings(index, massbank_mgf, tmp_path):
    # a typo (or a wrong format) leaves no record: an error naming the file, not an empty library
    typo = tmp_path / "typo.mgf"
    typo.write_text(massbank_mgf.read_text().replace("BEGIN IONS", "BEGIN_IONS"))
    n = massbank_mgf.read_text().count("BEGIN IONS")
    assert_clean_error(run("index", typo, "-o", tmp_path / "t.fastspec", ok=False), "typo.mgf:1",
                       f"all {n} records were rejected", "record without BEGIN IONS")
    # an MGF file named .msp: its content says what it is
    named = tmp_path / "named.msp"
    named.write_text(massbank_mgf.read_text())
    assert_clean_error(run("index", named, "-o", tmp_path / "t.fastspec", ok=False), "named.msp", "read as msp",
                       "its content looks like mgf")
    # the same file as queries: an error too, not a table of rejected rows and exit 0 (whatever --on-error)
    assert_clean_error(run("query", named, "-l", index, "-o", tmp_path / "h.tsv", ok=False), "named.msp",
                       "records were rejected (read as msp", "its content looks like mgf")
    assert not (tmp_path / "h.tsv").exists()
    # records of the right format rejected for their values: no hint (MassBank-style MSP sniffs as MassBank)
    neg = tmp_path / "neg.msp"
    neg.write_text("CH$NAME: a\nMS$FOCUSED_ION:PRECURSOR_M/Z: 179.03\nNum Peaks: 1\n100 -5\n")
    res = run("index", neg, "-o", tmp_path / "t.fastspec", ok=False)
    assert_clean_error(res, "negative intensity")
    assert "looks like" not in res.output
    blank = tmp_path / "blank.msp"  # MGF without peaks read as MSP: its KEY=value lines start a record (GNPS
    blank.write_text("BEGIN IONS\nTITLE=a\nPEPMASS=200\nEND IONS\n")  # writes such lines into MSP), rejected
    assert_clean_error(run("index", blank, "-o", tmp_path / "t.fastspec", ok=False), "the one record was rejected",
                       "its content looks like mgf: give it the extension of that format")
    assert not (tmp_path / "t.fastspec").exists()
    # records that are all rejected: the same, with the counts (and an existing index is kept)
    bad = tmp_path / "bad.mgf"
    bad.write_text("BEGIN IONS\nTITLE=a\nPEPMASS=500\n100.0 abc\nEND IONS\nBEGIN IONS\nTITLE=b\nPEPMASS=500\n"
                   "END IONS\n")
    assert_clean_error(run("index", bad, "-o", tmp_path / "b.fastspec", ok=False), "no spectrum to index",
                       "all 2 records were rejected", "unparsable peak line: 1")
    assert not (tmp_path / "b.fastspec").exists()
    kept = tmp_path / "k.fastspec"
    run("index", massbank_mgf, "-o", kept, "--no-faiss", "-q")
    assert_clean_error(run("index", bad, "-o", kept, "--overwrite", ok=False), "no spectrum to index")
    before = json.loads(run("info", kept, "--json").output)
    assert before["n_spectra"] > 0
    # appending them: the same refusal, with this input's own counts, and the index unchanged
    manifest = (kept / "manifest.json").read_bytes()
    assert_clean_error(run("index", bad, "-o", kept, "--append", ok=False), "no spectrum to append",
                       "all 2 records were rejected", "unparsable peak line: 1", "the index is unchanged")
    assert (kept / "manifest.json").read_bytes() == manifest
    lib = Library.open(kept)  # the API keeps counting them unless told otherwise
    lib.append(bad)
    assert (lib.n_spectra, lib.n_rejected) == (before["n_spectra"], before["n_rejected"] + 2)
    assert_clean_error(run("query", typo, "-l", index, "-o", tmp_path / "h.tsv", ok=False),
                       "every query record was rejected", "record without BEGIN IONS")
    # counted oddities are shown, kept in the manifest and in the hit table's parameters
    odd = tmp_path / "odd.mgf"
    odd.write_text("BEGIN IONS\nTITLE=x\nPEPMASS=abc\n100 10\n120 5\nEND IONS\n" + massbank_mgf.read_text())
    res = run("index", odd, "-o", tmp_path / "o.fastspec", "--no-faiss")
    assert "reader warnings: bad precursor_mz: 1" in res.output
    assert json.loads(run("info", tmp_path / "o.fastspec", "--json").output)["read_warnings"] == {"bad precursor_mz": 1}
    res = run("query", odd, "-l", index, "-o", tmp_path / "h.tsv")
    assert "reader warnings: bad precursor_mz: 1" in res.output
    header = [ln for ln in (tmp_path / "h.tsv").read_text().splitlines() if ln.startswith("# query_records")]
    assert json.loads(header[0].split(": ", 1)[1])["warnings"] == {"bad precursor_mz": 1}
    assert_clean_error(run("query", odd, "-l", index, "-o", tmp_path / "f.tsv", "--mode", "formula", "--formula",
                           "XYZ", ok=False), "formula", "XYZ")


def test_a_full_disk_is_one_line(massbank_mgf, tmp_path, monkeypatch):
    """A write that fails (disk full, a file-size limit: numpy then says only how many bytes it wrote)
    is one line and a nonzero exit, with nothing left behind; it was a traceback."""
    from fastspec import _indexfmt

    real = _indexfmt.save_array

    def full(directory, name, arr):
        if name == "frag_mz":
            raise OSError("706363 requested and 255984 written")
        real(directory, name, arr)

    monkeypatch.setattr(_indexfmt, "save_array", full)
    assert_clean_error(run("index", massbank_mgf, "-o", tmp_path / "l.fastspec", "--no-faiss", ok=False),
                       "I/O error", "written")
    monkeypatch.setattr(_indexfmt, "save_array", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert_clean_error(run("index", massbank_mgf, "-o", tmp_path / "l.fastspec", "--no-faiss", ok=False),
                       "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_existing_or_unwritable_output_is_named_once(index, massbank_mgf, tmp_path, monkeypatch):
    """The API's "(use overwrite=True / --overwrite)" reads "(use --overwrite)" on the command line; a
    directory the index cannot be created in is named by the output asked for, not the hidden temporary."""
    res = run("index", massbank_mgf, "-o", index, "--no-faiss", ok=False)
    assert_clean_error(res, "already exists")
    assert "(use --overwrite)" in res.output and "overwrite=True" not in res.output
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if ".tmp-" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = run("index", massbank_mgf, "-o", tmp_path / "ro" / "lib.fastspec", "--no-faiss", ok=False)
    assert_clean_error(res, "Permission denied", str(tmp_path / "ro" / "lib.fastspec"))
    assert ".tmp-" not in res.output


def test_real_subprocess(index, massbank_mgf, tmp_path):
    """``python -m fastspec query`` in a fresh interpreter writes the hits the API returns."""
    from fastspec.library import Library

    out = tmp_path / "hits.parquet"
    proc = subprocess.run([sys.executable, "-m", "fastspec", "query", str(massbank_mgf), "-l", str(index), "-o", str(out),
                           "--mode", "open", "--metric", "entropy", "-k", "3", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "queries" in proc.stderr  # the summary goes to stderr
    table = pq.read_table(out)
    hits = Library.open(index).search(str(massbank_mgf), k=3, mode="open", metric="entropy")
    got = table.filter(pc.is_valid(table.column("rank")))
    q, r = got.column("query_index").to_numpy(), got.column("rank").to_numpy() - 1
    np.testing.assert_array_equal(got.column("library_index").to_numpy(), hits.indices[q, r])
    np.testing.assert_allclose(got.column("score").to_numpy(), hits.scores[q, r])
    assert len(set(table.column("query_index").to_pylist())) == len(hits)
    proc = subprocess.run([sys.executable, "-m", "fastspec", "info", str(index) + "-missing"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.startswith("Error")


def test_standard_input_as_dash(index, massbank_mgf, tmp_path):
    """``-`` reads spectra from standard input (a pipe: its format named) for index and query, as the file
    would be read; without --input-format a pipe is one clear line, with the option named."""
    data = Path(massbank_mgf).read_bytes()
    lib = tmp_path / "piped.fastspec"
    proc = subprocess.run([sys.executable, "-m", "fastspec", "index", "-", "--input-format", "mgf", "-o", str(lib),
                           "--no-faiss", "--threads", "1", "-q"], input=data, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    piped, built = Library.open(lib), Library.open(index)
    assert (piped.n_spectra, piped.n_rejected) == (built.n_spectra, built.n_rejected)
    np.testing.assert_array_equal(piped.spectra().mz, built.spectra().mz)
    out = tmp_path / "hits.parquet"
    proc = subprocess.run([sys.executable, "-m", "fastspec", "query", "-", "--input-format", "mgf", "-l", str(index),
                           "-o", str(out), "-k", "2", "--threads", "1", "-q"], input=data, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits = Library.open(index).search(str(massbank_mgf), k=2)
    table = pq.read_table(out)
    got = table.filter(pc.equal(table.column("rank"), 1))
    np.testing.assert_array_equal(got.column("library_index").to_numpy(),
                                  hits.indices[got.column("query_index").to_numpy(), 0])
    assert len(set(table.column("query_index").to_pylist())) == len(hits)
    proc = subprocess.run([sys.executable, "-m", "fastspec", "query", "-", "-l", str(index), "-o", str(out)],
                          input=data, capture_output=True, text=False, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in err and "--input-format" in err, err
    import os

    proc = subprocess.run([sys.executable, "-m", "fastspec", "query", "-", "--input-format", "mgf", "-l", str(index),
                           "-o", str(out)], capture_output=True, text=True, timeout=300, stdin=None,
                          preexec_fn=lambda: os.close(0))  # standard input closed
    assert proc.returncode != 0 and "standard input, which is closed" in proc.stderr, proc.stderr


def test_ctrl_c_is_one_line_and_leaves_nothing_half_written(massbank_parquet, tmp_path):
    """SIGINT at some point of an index build: exit 130 with "interrupted" (or, if the build was already
    done, a complete index), never a traceback or a crash, and no temporary left next to the target."""
    import signal
    import time

    out = tmp_path / "lib.fastspec"
    proc = subprocess.Popen([sys.executable, "-m", "fastspec", "index", str(massbank_parquet), "-o", str(out),
                             "--no-faiss", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_end = time.time() + 120
    # interrupt while the build writes its temporary directory (the case that must leave nothing)
    while time.time() < t_end and proc.poll() is None and not any(p.name.startswith(".lib.fastspec.tmp")
                                                                   for p in tmp_path.iterdir()):
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "Error" not in err, err
    assert proc.returncode in (0, 130), (proc.returncode, err)
    if proc.returncode == 130:
        assert err.strip().endswith("interrupted")
    assert [p.name for p in tmp_path.iterdir() if p.name != "lib.fastspec"] == []
    if out.exists():
        from fastspec.library import Library

        Library.open(out, verify=True)


def test_formula_override_is_recorded(index, massbank_mgf, tmp_path):
    """A formula given for every query (``--formula``) goes into the table's parameters: without it, the
    table would read as a search with each query's own formula."""
    out = tmp_path / "h.tsv"
    run("query", massbank_mgf, "-l", index, "-o", out, "--mode", "formula", "--formula", "C8H14ClN5", "-q")
    header = [ln for ln in out.read_text().splitlines() if ln.startswith("#")]
    assert any(ln.startswith("# formula:") and "C8H14ClN5" in ln for ln in header), header
    run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.parquet", "--mode", "formula", "-q")
    meta = json.loads(pq.read_schema(tmp_path / "h.parquet").metadata[b"fastspec"])
    assert "formula" not in meta


def test_query_takes_peak_weight_powers(index, massbank_mgf, tmp_path):
    """--mz-power / --intensity-power (matchms' names): the table equals the Python search with the same
    powers and records them; entropy refuses them in one line, naming the options."""
    out = tmp_path / "h.parquet"
    run("query", massbank_mgf, "-l", index, "-o", out, "--mode", "open", "--mz-power", "1", "--intensity-power", "0.5",
        "-k", "3", "-q", "--threads", "1")
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"fastspec"])
    assert (meta["mz_power"], meta["intensity_power"]) == (1.0, 0.5)
    with Library.open(index) as lib:
        hits = lib.search(massbank_mgf, k=3, mode="open", mz_power=1, intensity_power=0.5, threads=1)
        want = hits.to_arrow()
    np.testing.assert_array_equal(table.column("library_index").to_numpy(zero_copy_only=False),
                                  want.column("library_index").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(table.column("score").to_numpy(zero_copy_only=False),
                                  want.column("score").to_numpy(zero_copy_only=False))
    res = run("query", massbank_mgf, "-l", index, "-o", tmp_path / "e.parquet", "--mode", "open", "--metric", "entropy",
              "--intensity-power", "0.5", "-q", ok=False)
    assert_clean_error(res, "--intensity-power")


def test_output_directory_k_and_seed_mistakes(index, massbank_mgf, tmp_path):
    # the hit table's directory is made before the search; a rewrite replaces the table whole
    out = tmp_path / "new" / "dir" / "h.tsv"
    run("query", massbank_mgf, "-l", index, "-o", out, "-k", "2", "-q")
    first = out.read_text()
    run("query", massbank_mgf, "-l", index, "-o", out, "-k", "1", "-q")
    assert out.read_text() != first and [p.name for p in out.parent.iterdir()] == ["h.tsv"]
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", tmp_path / "h.tsv", "-k", "1000000000",
                           ok=False), "k=")
    assert_clean_error(run("synth", "-n", "100", "-o", tmp_path / "s.parquet", "--seed", "-1", ok=False), "seed")
    # every command's --seed, and synth's --noise (overflows, then gigabytes of noise peaks, beyond 10)
    for args in (["demo", "--seed", "-1"], ["split", "-l", massbank_mgf, "-o", tmp_path / "s.csv", "--seed", "-1"],
                 ["synth", "-n", "100", "-o", tmp_path / "s.parquet", "--queries", "3", "--queries-output",
                  tmp_path / "q.mgf", "--noise", "1e12"]):
        assert_clean_error(run(*args, ok=False), args[-2])
    # fastspec index makes the index's parent directory too, as query, convert and synth do
    run("index", massbank_mgf, "-o", tmp_path / "made" / "for" / "lib.fastspec", "-q", "--no-faiss")
    assert (tmp_path / "made" / "for" / "lib.fastspec" / "manifest.json").exists()


def test_index_a_directory_of_spectrum_files(massbank_mgf, tmp_path):
    """A directory (e.g. a MassBank-data clone, one record per file) is read recursively, in path order;
    files that are not spectra (README, licence) are left out and counted."""
    from pathlib import Path

    import fastspec.io as fio
    from fastspec.library import Library

    records = (Path(__file__).parent / "data" / "massbank_record.txt").read_text().split("//\n")
    records = [r + "//\n" for r in records if r.strip()]
    root = tmp_path / "MassBank-data"
    for i, r in enumerate(records):
        sub = root / f"Contributor{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"MSBNK-Test-{i:06d}.txt").write_text(r)
    (root / "README.md").write_text("# Name: not a spectrum\n")
    # notes or code that merely mention record tags are no records (a record starts with ACCESSION:),
    # compressed or not
    import gzip

    (root / "NOTES").write_text("Records hold CH$NAME: and PK$PEAK: lines; see the spec.\n")
    (root / "NOTES.gz").write_bytes(gzip.compress(b"Records hold CH$NAME: and PK$PEAK: lines.\n"))
    (root / "extra.mgf").write_text(massbank_mgf.read_text())
    (root / ".git").mkdir()
    (root / ".git" / "x.mgf").write_text("junk")
    # tables without peak columns beside the spectra (a sample sheet, an earlier hit table) are left out
    # too; a table with peak columns is read
    (root / "samples.tsv").write_text("sample\tgroup\nA\t1\n")
    pq.write_table(pa.table({"query_id": ["q"], "score": [0.5]}), root / "hits.parquet")
    res = run("index", root, "-o", tmp_path / "d.fastspec", "--no-faiss")
    assert "files in input directories not read (not spectrum files): 5" in res.output
    lib = Library.open(tmp_path / "d.fastspec")
    files = sorted([str(p) for p in root.rglob("MSBNK-*.txt")]) + [str(root / "extra.mgf")]
    ref = fio.read(sorted(files, key=lambda f: (Path(f).parent != root, f)))
    assert lib.manifest["counts"]["n_read"] == len(records) + len(fio.read(massbank_mgf)) == len(ref)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run("index", empty, "-o", tmp_path / "e.fastspec", ok=False), "no spectrum file")
    tables = tmp_path / "tables"
    tables.mkdir()
    fio.write(fio.read(massbank_mgf)[:3], str(tables / "a.tsv"))
    (tables / "sheet.tsv").write_text("sample\tgroup\nA\t1\n")
    (tables / "broken.parquet").write_text("not parquet")  # unreadable: read, so that the error says why
    assert_clean_error(run("index", tables, "-o", tmp_path / "t.fastspec", ok=False), "broken.parquet")
    (tables / "broken.parquet").unlink()
    res = run("index", tables, "-o", tmp_path / "t.fastspec", "--no-faiss")
    assert "not spectrum files): 1" in res.output and "indexed 3 spectra" in res.output
    # a table given by name is read whatever it holds: its missing peak columns are the error
    assert_clean_error(run("index", tables / "sheet.tsv", "-o", tmp_path / "s.fastspec", ok=False), "m/z")


def test_directory_symlinks_are_followed(tmp_path):
    """An input directory's symlinked subdirectories are read (each real directory once: a link to an
    ancestor does not loop); os.walk skipped them without a word."""
    from fastspec.library import Library

    rec = "BEGIN IONS\nTITLE={}\nPEPMASS=200\n50 10\n60 5\nEND IONS\n"
    root, other = tmp_path / "lib", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    (root / "top.mgf").write_text(rec.format("top"))
    (other / "more.mgf").write_text("".join(rec.format(f"linked{i}") for i in range(3)))
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # an ancestor: read once
    res = run("index", root, "-o", tmp_path / "a.fastspec", "--no-faiss")
    assert "indexed 4 spectra" in res.output
    assert Library.open(tmp_path / "a.fastspec").manifest["counts"]["n_read"] == 4


def test_index_report_names_every_rejected_record(massbank_mgf, tmp_path):
    """`fastspec index --report r.json` (and --append) writes where each rejected record is: file, line and
    reason, per-file counts, and the index's counts (the summary line gives counts only); Library.build and
    append fill a ReadReport given as ``report=``."""
    import json

    import fastspec.io as fio
    from fastspec.io import ReadReport
    from fastspec.library import Library

    bad = tmp_path / "bad.mgf"
    bad.write_text("BEGIN IONS\nTITLE=a\nPEPMASS=200\n50 10\nEND IONS\nBEGIN IONS\nTITLE=b\nPEPMASS=200\n50 abc\n"
                   "END IONS\nBEGIN IONS\nTITLE=c\nPEPMASS=200\n50 -1\nEND IONS\n")
    lib = tmp_path / "r.fastspec"
    run("index", bad, massbank_mgf, "-o", lib, "--no-faiss", "--report", tmp_path / "rep" / "r.json")
    doc = json.loads((tmp_path / "rep" / "r.json").read_text())
    assert [tuple(r) for r in doc["read"]["rejected"]] == [(9, "unparsable peak line", str(bad)),
                                                         (14, "negative intensity", str(bad))]
    assert [(f["path"], f["n_records"], f["n_rejected"]) for f in doc["read"]["files"]][0] == (str(bad), 3, 2)
    info = Library.open(lib).info()
    assert doc["index"]["n_read"] == info["n_read"] == doc["read"]["n_records"]
    assert doc["index"]["n_spectra"] + doc["index"]["n_rejected"] == doc["index"]["n_read"]
    run("index", bad, "-o", lib, "--append", "--report", tmp_path / "r2.json")
    doc = json.loads((tmp_path / "r2.json").read_text())
    assert doc["appended"] == {"spectra": 1, "rejected": 2} and doc["read"]["n_records"] == 3
    assert_clean_error(run("index", bad, "-o", tmp_path / "x.fastspec", "--report", tmp_path / "x.fastspec" / "r.json",
                           ok=False), "inside the index")
    assert_clean_error(run("index", bad, "-o", tmp_path / "y.fastspec", "--report", bad, ok=False), "input")
    assert_clean_error(run("index", bad, "-o", tmp_path / "y.fastspec", "--report", tmp_path / "y.fastspec", ok=False),
                       "inside the index")
    assert not (tmp_path / "y.fastspec").exists()  # refused before the build
    rep = ReadReport()
    Library.build([str(bad)], tmp_path / "z.fastspec", faiss=False, report=rep)
    assert (rep.n_records, rep.n_spectra, rep.n_rejected, [r.line for r in rep.rejected]) == (3, 1, 2, [9, 14])
    rep = ReadReport()
    Library.open(tmp_path / "z.fastspec").append(fio.read(massbank_mgf)[:5], report=rep)
    assert (rep.n_records, rep.n_spectra, rep.n_rejected) == (5, 5, 0)


def test_index_report_names_spectra_read_but_not_indexed(tmp_path):
    """Spectra the build leaves out (an MS1 record, no peaks after preprocessing) are named with their file,
    record number and id in `fastspec index --report` and Library.left_out, not only counted (an audit:
    46 MassBank spectra dropped without a way to find them); an append keeps the earlier ones and numbers
    its own in its own file."""
    a = tmp_path / "a.mgf"
    a.write_text("BEGIN IONS\nTITLE=ms1\nMSLEVEL=1\n100 10\nEND IONS\n"
                 "BEGIN IONS\nTITLE=ok\nPEPMASS=300\n100 10\n150 20\nEND IONS\n"
                 "BEGIN IONS\nTITLE=above\nPEPMASS=120\n150 20\nEND IONS\n")
    b = tmp_path / "b.mgf"
    b.write_text("BEGIN IONS\nTITLE=ok2\nPEPMASS=300\n100 10\nEND IONS\n"
                 "BEGIN IONS\nTITLE=above2\nPEPMASS=120\n150 20\nEND IONS\n")
    lib = tmp_path / "l.fastspec"
    run("index", a, "-o", lib, "--no-faiss", "--report", tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    want = [{"path": str(a), "record": 1, "input": 0, "id": "ms1", "reason": "MS1 spectrum (ms_level 1)"},
            {"path": str(a), "record": 3, "input": 2, "id": "above", "reason": "no peaks after preprocessing"}]
    assert doc["index"]["left_out"] == want == Library.open(lib).left_out
    assert doc["index"]["n_spectra"] + doc["index"]["n_rejected"] == doc["index"]["n_read"] == 3
    run("index", b, "-o", lib, "--append", "--report", tmp_path / "r2.json")
    got = json.loads((tmp_path / "r2.json").read_text())["index"]["left_out"]
    assert got == Library.open(lib).left_out == want + [
        {"path": str(b), "record": 2, "input": 4, "id": "above2", "reason": "no peaks after preprocessing"}]


def test_unlistable_subdirectory_is_an_error(tmp_path):
    """A subdirectory of an input directory that cannot be listed (or entered) is an error naming it,
    not a silent gap in the input. As root, run without the capabilities that override permissions."""
    import os
    import shutil
    import subprocess
    import sys

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: permissions are not enforced")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    root = tmp_path / "lib"
    (root / "locked").mkdir(parents=True)
    rec = "BEGIN IONS\nTITLE=x\nPEPMASS=200\n50 10\n60 5\nEND IONS\n"
    (root / "top.mgf").write_text(rec)
    (root / "locked" / "x.mgf").write_text(rec)
    try:
        for mode, words in ((0o100, "cannot list this directory"), (0, "cannot read this directory")):
            (root / "locked").chmod(mode)  # 0o100: may be entered, not listed
            res = subprocess.run([*prefix, sys.executable, "-m", "fastspec", "index", str(root), "-o",
                                  str(tmp_path / "b.fastspec"), "--no-faiss"], capture_output=True, text=True,
                                 timeout=300)
            assert res.returncode == 1, res.stderr
            assert words in res.stderr and "locked" in res.stderr and "Traceback" not in res.stderr, res.stderr
            assert not (tmp_path / "b.fastspec").exists()
    finally:
        (root / "locked").chmod(0o700)


def test_same_adduct_not_applied_is_reported(index, massbank_mgf, tmp_path):
    """Queries whose adduct is missing or unreadable are searched without --same-adduct: stderr and the
    table's parameters say how many and why."""
    first = massbank_mgf.read_text().split("END IONS")[0] + "END IONS\n"
    lines = [ln for ln in first.splitlines() if not ln.upper().startswith(("PRECURSOR_TYPE=", "ADDUCT=", "ION="))]
    bare = "\n".join(lines) + "\n"
    odd = bare.replace("BEGIN IONS\n", "BEGIN IONS\nADDUCT=[Cat]+\n", 1)
    path = tmp_path / "q.mgf"
    path.write_text(first + bare + odd)
    out = tmp_path / "h.tsv"
    res = run("query", path, "-l", index, "-o", out, "--mode", "open", "--same-adduct", "--threads", "1")
    assert "--same-adduct not applied to 2 queries without a readable adduct of their own (1 missing, " \
           "1 unreadable, e.g. '[Cat]+')" in res.output
    header = [ln for ln in out.read_text().splitlines() if ln.startswith("# filters_not_applied")]
    assert json.loads(header[0].split(": ", 1)[1]) == {"adduct": {"missing": 1, "unreadable": 1,
                                                                  "unreadable_examples": ["[Cat]+"]}}


def test_a_short_write_says_the_disk_may_be_full():
    """numpy's short write (a full disk while an index array is saved) carries no errno: the one line says
    what likely happened instead of numpy's bare byte counts."""
    import click

    from fastspec.cli._common import handle_errors

    @handle_errors
    def save():
        raise OSError("446257 requested and 202720 written")

    with pytest.raises(click.ClickException, match=r"stopped short \(446257 requested and 202720 written\); is the disk full"):
        save()


def test_readme_read_csv_recipe_gives_the_parquet_table(tmp_path):
    """The README's pandas recipe reads a TSV/CSV hit table back as the Parquet table holds it: numeric-looking
    ids ('00399') stay text, float32 scores float32, 'NA' a name (a writer audit: without dtype= pandas read
    the ids as numbers and no row compared equal)."""
    pd = pytest.importorskip("pandas")
    from fastspec.spectra import Spectra

    mz = [np.array([50.0, 80.0, 120.0]), np.array([50.0, 81.0, 120.0]), np.array([60.0, 80.0])]
    it = [np.array([1.0, 2.0, 3.0], np.float32)] * 2 + [np.array([1.0, 1.0], np.float32)]
    lib_sp = Spectra.from_arrays(mz, it, precursor_mz=[200.0, 200.0, 150.0],
                                 metadata={"id": ["00001", "00399", "NA"], "name": ["NA", "a,b \"c\"", "x"],
                                           "smiles": ["C#N", "CC(=O)O", None], "ion_mode": ["positive"] * 3})
    lib = Library.build(lib_sp, tmp_path / "l.fastspec", faiss=False, progress=False)
    q = lib_sp.with_metadata(pa.table({"id": ["007", "010", "1e5"], "ion_mode": ["positive"] * 3}))
    hits = lib.search(q, k=2, mode="open")
    want = hits.to_arrow().to_pandas()
    for ext, sep in (("csv", ","), ("tsv", "\t")):
        hits.write(tmp_path / f"h.{ext}")
        got = pd.read_csv(tmp_path / f"h.{ext}", sep=sep, comment="#", keep_default_na=False, na_values=[""],
                          dtype={"query_id": str, "library_id": str, "name": str, "smiles": str, "score": "float32"})
        for col in ("query_id", "library_id", "name", "smiles", "score"):
            assert got[col].tolist() == want[col].tolist() or (
                got[col].isna().tolist() == want[col].isna().tolist()
                and got[col].dropna().tolist() == want[col].dropna().tolist()), (ext, col)


def test_a_closed_pipe_ends_quietly():
    """`fastspec query ... -o /dev/stdout | head`: the reader going away ends the command quietly with
    SIGPIPE's status, as Unix tools do, not with "Error: Broken pipe"."""
    import click

    from fastspec.cli._common import handle_errors

    @click.command()
    @handle_errors
    def cmd():
        raise BrokenPipeError(32, "Broken pipe", "/dev/stdout")

    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 141 and res.output == ""


def fio_read(path):
    import fastspec.io as fio

    return fio.read(path)


def test_more_user_mistakes(index, massbank_mgf, tmp_path):
    """From a user audit: `-o -` wrote a file named '-'; `convert --format msp out.mgf` wrote MSP into .mgf;
    `convert --report` into a missing folder failed after writing the output; `evaluate --predictions p.csv`
    wrote Parquet into .csv; a query file whose every record is rejected exited 0; a seed library in
    another format than its name said got "no usable spectra"."""
    assert_clean_error(run("query", massbank_mgf, "-l", index, "-o", "-", "--output-format", "tsv", ok=False),
                       "/dev/stdout")
    assert_clean_error(run("convert", massbank_mgf, "-", "--format", "mgf", ok=False), "/dev/stdout")
    assert not (Path.cwd() / "-").exists()
    assert_clean_error(run("convert", massbank_mgf, tmp_path / "o.mgf", "--format", "msp", ok=False),
                       "extension names mgf")
    run("convert", massbank_mgf, tmp_path / "o", "--format", "msp", "-q")  # no extension: the format given
    run("convert", massbank_mgf, tmp_path / "c.mgf", "--report", tmp_path / "new" / "r.json", "-q")
    assert json.loads((tmp_path / "new" / "r.json").read_text())["n_spectra"] > 0
    assert_clean_error(run("evaluate", "-l", massbank_mgf, "--predictions", tmp_path / "p.csv", ok=False),
                       "parquet")
    bad = tmp_path / "bad.mgf"
    bad.write_text("BEGIN IONS\nPEPMASS=100\n50 0\nEND IONS\n")
    assert_clean_error(run("query", bad, "-l", index, "-o", tmp_path / "h.tsv", ok=False), "every query record")
    # synth writes what convert writes (.mgf.gz was refused), and refuses a name it cannot write before generating
    run("synth", "-n", 50, "-o", tmp_path / "s.mgf.gz", "-q")
    assert len(fio_read(tmp_path / "s.mgf.gz")) == 50
    assert_clean_error(run("synth", "-n", 50, "-o", tmp_path / "s.json", ok=False), "writing json is not supported")
    (tmp_path / "seed.msp").write_text(Path(massbank_mgf).read_text())
    assert_clean_error(run("synth", "-n", 10, "--seed-library", tmp_path / "seed.msp", "-o", tmp_path / "s.mgf",
                           ok=False), "looks like mgf")


def test_append_prints_its_own_reader_warnings(tmp_path):
    """From an audit: ``index --append`` printed the index's reader warnings so far (an earlier input's
    stray line) as this input's; it prints what this append added, as it does for rejections."""
    rec = "BEGIN IONS\nTITLE={t}\nPEPMASS=300\n100 1\n150 2\nEND IONS\n"
    (tmp_path / "stray.mgf").write_text(rec.format(t="a") + "stray line\n" + rec.format(t="b"))
    (tmp_path / "clean.mgf").write_text(rec.format(t="c"))
    lib = tmp_path / "lib.fastspec"
    assert "lines outside records: 1" in run("index", tmp_path / "stray.mgf", "-o", lib, "--no-faiss").output
    out = run("index", tmp_path / "clean.mgf", "-o", lib, "--append").output
    assert "reader warnings" not in out and "appended 1 spectra" in out
    assert "lines outside records: 1" in run("index", tmp_path / "stray.mgf", "-o", lib, "--append").output


def stat_is_fifo(path) -> bool:
    import stat

    return stat.S_ISFIFO(os.stat(path).st_mode)
