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
    r = CliRunner().invoke(main, ARGS + ["--json", "--quiet", "--workdir", str(wd)])
    return r, wd


def test_demo_json(json_run):
    r, wd = json_run
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["n_spectra"] == 5000 and s["n_queries"] == 60 and s["ok"] is True
    assert not s["skipped"]
    assert {"generate", "queries", "build", "open"} <= set(s["stages"])
    assert s["index_bytes"] > 0 and (wd / "demo.fastspec").is_dir()  # --workdir keeps the index
    assert [m for m, _ in MODES] == list(s["modes"])
    for label, m in s["modes"].items():
        assert m["queries"] == 60 and m["qps"] > 0 and m["mean_latency_ms"] > 0, label
        assert m["top1_source"] >= MIN_TOP1, label
        assert m["top1_molecule"] >= m["top1_source"], label
    # the text summary renders from the same dict
    text = format_summary(s)
    assert "queries/s" in text and "OK" in text


def test_demo_text():
    r = CliRunner().invoke(main, ARGS + ["--quiet"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "demo: 5,000 synthetic spectra" in out and "build index" in out
    for label, _ in MODES:
        assert label in out
    assert "sanity" in out and "OK" in out


def test_demo_bad_option():
    r = CliRunner().invoke(main, ["demo", "--n-spectra", "10"])
    assert r.exit_code != 0 and "Traceback" not in r.output
