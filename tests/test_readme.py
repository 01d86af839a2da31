"""The README's examples run as written: its Python block and its command-line block, in a scratch
directory holding small inputs under the names the README uses (real MassBank spectra, a synthetic
library of 2,000 instead of 200,000 spectra)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

import fastspec.io as fio
from fastspec.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks of the README section titled ``section``."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)


def _commands(block: str) -> list[list[str]]:
    """The block's ``fastspec ...`` commands as argument lists (continuation lines joined, comments cut)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            assert args[0] == "fastspec", line
            out.append(args[1:])
    return out


def test_readme_blocks_found():
    assert len(_blocks("Python", "python")) == 1 and len(_blocks("Command line", "bash")) == 1
    assert len(_commands(_blocks("Command line", "bash")[0])) >= 10


def test_readme_python_example_runs(massbank_mgf, massbank_msp, tmp_path, monkeypatch):
    mgf, msp = fio.read(massbank_mgf), fio.read(massbank_msp)
    fio.write(mgf[:300], str(tmp_path / "library.mgf"))
    fio.write(msp[:100], str(tmp_path / "more.msp"))
    fio.write(msp[100:250], str(tmp_path / "queries.msp"))
    fio.write(mgf[300:400], str(tmp_path / "queries.mgf"))
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(_blocks("Python", "python")[0], str(README), "exec"), env)
    n_queries = len(env["queries"])
    assert n_queries == 150 and env["report"].n_rejected == 0
    assert env["hits"].scores.shape == (n_queries, 10) and env["hyb"].indices.shape == (n_queries, 10)
    assert env["nn"].indices.shape == (n_queries, 1) and (env["hits"].indices[:, 0] >= 0).any()
    assert env["done"]["n_queries"] == 100 and pq.read_table(tmp_path / "hits.parquet").num_rows >= 100
    assert env["table"].num_rows >= n_queries and "n_matched" in env["table"].column_names
    # the matchms recipe: its top hits score as matchms CosineGreedy() scores them
    from matchms import Spectrum
    from matchms.similarity import CosineGreedy

    same, lib_raw, q = env["same"], fio.read(tmp_path / "library.mgf"), env["queries"]
    cos = CosineGreedy()
    checked = 0
    for i in range(0, n_queries, 15):
        for j, sc, nm in zip(same.indices[i], same.scores[i], same.matches[i]):
            if j < 0:
                continue
            a = Spectrum(mz=q[i].mz, intensities=q[i].intensity.astype(float), metadata={})
            b = Spectrum(mz=lib_raw[int(j)].mz, intensities=lib_raw[int(j)].intensity.astype(float), metadata={})
            ref = cos.pair(a, b)
            assert abs(float(ref["score"]) - float(sc)) < 1e-6 and int(ref["matches"]) == int(nm)
            checked += 1
    assert checked > 10


def test_readme_command_line_example_runs(massbank_mgf, massbank_msp, massbank_parquet, tmp_path, monkeypatch):
    fio.write(fio.read(massbank_msp)[:200], str(tmp_path / "spectra.msp"))
    mgf = fio.read(massbank_mgf)
    fio.write(mgf[:200], str(tmp_path / "more.mgf"))
    fio.write(mgf[200:260], str(tmp_path / "queries.mgf"))
    fio.write(mgf[260:300], str(tmp_path / "new.mgf"))
    fio.write(mgf[300:500], str(tmp_path / "gnps.mgf"))  # another lab's library to grow
    # a labelled library for the lab commands: the first 1,500 MassBank spectra, as they are stored
    pq.write_table(pq.read_table(massbank_parquet).slice(0, 1500), tmp_path / "massbank.parquet")
    records = (Path(__file__).parent / "data" / "massbank_record.txt").read_text().split("//\n")
    (tmp_path / "MassBank-data").mkdir()
    for i, r in enumerate(x for x in records if x.strip()):
        (tmp_path / "MassBank-data" / f"MSBNK-Test-{i:06d}.txt").write_text(r + "//\n")
    monkeypatch.chdir(tmp_path)
    for args in _commands(_blocks("Command line", "bash")[0]):
        if args[0] == "synth":  # 200,000 spectra take a while: the same command, smaller
            args[args.index("-n") + 1] = "2000"
        res = CliRunner().invoke(main, args + ["--quiet"])
        assert res.exit_code == 0, (args, res.output)
    for name in ("lib.parquet", "big.mgf", "q.mgf", "spectra.mgf", "lib.fastspec", "massbank.fastspec", "hits.parquet", "hits.tsv",
                 "hits.csv.gz", "split.csv", "profile.json", "report.json", "ablation.json", "summary.md",
                 "summary.html"):
        assert (tmp_path / name).exists(), name
