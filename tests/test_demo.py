"""``fastspec demo`` end to end at a tiny size."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastspec.cli import main
from fastspec.cli.demo_cmd import MIN_TOP1, MODES, format_summary

ARGS = ["demo", "--n-spectra", "5000", "--n-queries", "60", "--threads", "1"]


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("demo")
    # the compile-ahead process is off by default with one thread: switched on here, it runs for real
    r = CliRunner().invoke(main, ARGS + ["--json", "--quiet", "--workdir", str(wd), "--compile-ahead"])
    return r, wd


def test_demo_json(json_run):
    r, wd = json_run
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["n_spectra"] == 5000 and s["n_queries"] == 60 and s["ok"] is True
    assert not s["errors"]
    assert {"generate", "queries", "build", "open"} <= set(s["stages"])
    assert s["index_bytes"] > 0 and (wd / "demo.fastspec").is_dir()  # --workdir keeps the index
    assert s["compile_ahead"]["exit"] == 0 and s["compile_ahead"]["wait_s"] >= 0
    assert [m for m, _ in MODES] == list(s["modes"])
    for label, m in s["modes"].items():
        assert m["queries"] == 60 and m["qps"] > 0 and m["mean_latency_ms"] > 0, label
        # a few queries come from records holding only their precursor (as real ones do): no peak is left
        # after preprocessing, so no hit
        assert m["with_hit"] >= 0.95, label
        assert m["top1_molecule"] >= MIN_TOP1, label
        assert m["top1_molecule"] >= m["top1_source"], label
        assert m["source_in_topk"] >= max(m["top1_source"], 0.8), label
    # the text summary renders from the same dict
    text = format_summary(s)
    assert "queries/s" in text and "OK" in text and "compiled ahead in a second process: done" in text


def test_demo_text():
    r = CliRunner().invoke(main, ARGS + ["--quiet"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "demo: 5,000 synthetic spectra" in out and "build index" in out
    for label, _ in MODES:
        assert label in out
    assert "sanity" in out and "OK" in out
    assert "compiled ahead" not in out  # one thread: no second process


def test_demo_summary_reports_failure(json_run):
    s = json.loads(json_run[0].stdout)
    s["ok"] = False
    s["errors"] = {"analog": "FastspecError: boom"}
    text = format_summary(s)
    assert "CHECK FAILED" in text and "boom" in text


def test_demo_bad_option():
    r = CliRunner().invoke(main, ["demo", "--n-spectra", "10"])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_hits_are_mapped_back_to_input_rows():
    """Library rows skip rejected input spectra; the demo scores hits by input position."""
    import numpy as np

    from fastspec.cli.demo_cmd import _run_mode

    class Hits:
        # library rows 0..3 hold input rows 0, 2, 3, 4 (input row 1 was rejected)
        indices = np.array([[1, 0], [3, -1]])
        input_indices = np.array([[2, 0], [4, -1]])

    class FakeLibrary:
        def search(self, queries, **kw):
            return Hits()

    out = {"modes": {}, "errors": {}}
    truth = np.array([2, 4])
    molecule = np.array([0, 0, 1, 1, 2])
    _run_mode(out, "identity", FakeLibrary(), [0, 1], truth, molecule, 2, 1, lambda m: None)
    m = out["modes"]["identity"]
    assert m["top1_source"] == 1.0 and m["top1_molecule"] == 1.0 and m["source_in_topk"] == 1.0
