"""Chunked search into a hit table file (``fastspec.stream.search_to_file``, ``fastspec query``): the same
table, row for row, as one ``Library.search`` written at once, whatever the chunk size."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastspec.errors import FastspecError, ParameterError
from fastspec.library import Library
from fastspec.stream import _good_positions
from test_library import massbank_subset

BAD = "BEGIN IONS\nTITLE=broken{}\nPEPMASS=500\n100.0 abc\nEND IONS\n"
BAD_NO_ID = "BEGIN IONS\nPEPMASS=500\n100.0 abc\nEND IONS\n"


@pytest.fixture(scope="module")
def lib(massbank_parquet, tmp_path_factory):
    sp, _ = massbank_subset(massbank_parquet, n_lib=2000, n_query=1, seed=3)
    return Library.build(sp, tmp_path_factory.mktemp("st") / "lib.fastspec", faiss=True, faiss_params={"flat_below": 0})


@pytest.fixture(scope="module")
def query_files(massbank_mgf, massbank_msp, tmp_path_factory):
    """An MGF of over 1 MB (two read blocks at the smallest block size) with bad records at its start, in
    its middle, at a block boundary's neighbourhood and at its end, some without an id; an MSP with one
    bad record; both in a directory too."""
    d = tmp_path_factory.mktemp("q")
    recs = [r + "END IONS\n" for r in massbank_mgf.read_text().split("END IONS\n") if r.strip()]
    half = len(recs) // 2
    # reader warnings in both read blocks (a bad PEPMASS and a wrong NUM PEAKS first, a stray line in the
    # second megabyte): the table's counts list them in one order whatever the block size
    first = recs[0].replace("BEGIN IONS\n", "BEGIN IONS\nNUM PEAKS=999\n", 1)
    first = re.sub(r"PEPMASS=[^\n]*", "PEPMASS=abc", first)
    text = (BAD.format(0) + first + "".join(recs[1:half]) + BAD_NO_ID + BAD.format(1) + "".join(recs[half:-3])
            + "stray line\n" + "".join(recs[-3:]) + BAD.format(2) + BAD_NO_ID)
    mgf = d / "files" / "a.mgf"
    mgf.parent.mkdir()
    mgf.write_text(text)
    msp_text = massbank_msp.read_text()
    cut = msp_text.index("\n\n", len(msp_text) // 2) + 2
    msp = d / "files" / "b.msp"
    msp.write_text(msp_text[:cut] + "Name: broken msp\nPrecursorMZ: 300\nNum Peaks: 2\n100 abc\n200 5\n\n" + msp_text[cut:])
    return mgf, msp


def _same_table(a, b) -> None:
    if a.suffix == ".parquet":
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert ta.schema.remove_metadata() == tb.schema.remove_metadata()
        assert ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))
        assert json.loads(ta.schema.metadata[b"fastspec"]) == json.loads(tb.schema.metadata[b"fastspec"])
    else:
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("chunk", [97, 400, 1_000_000])
@pytest.mark.parametrize("kw", [dict(mode="identity"), dict(mode="open", metric="entropy"),
                                dict(mode="formula", no_neighbour="fallback", same_adduct=True)])
def test_chunked_equals_whole(lib, query_files, tmp_path, chunk, kw):
    mgf, msp = query_files
    queries = [str(mgf), str(msp)]
    suffix = ".parquet" if chunk != 400 else ".tsv"
    whole, chunked = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
    hits = lib.search(queries, k=5, **kw)
    hits.write(whole)
    done = lib.search_to_file(queries, chunked, k=5, chunk_size=chunk, **kw)
    _same_table(whole, chunked)
    assert done["n_queries"] == len(hits) == hits.params["query_records"]["read"]
    assert done["n_with_hits"] == int((hits.indices[:, 0] >= 0).sum())
    assert done["n_skipped"] == int(hits.skipped.sum()) and done["params"] == json.loads(json.dumps(hits.params))
    want = dict(zip(*np.unique(hits.status[hits.skipped].astype(str), return_counts=True)))
    assert done["skipped_by_status"] == {str(k): int(v) for k, v in want.items()}
    assert sum(done["skipped_by_status"].values()) == done["n_skipped"] and done["skipped_by_status"]["rejected"] == 6
    rec = done["params"]["query_records"]
    assert rec["rejected"] == 6 and rec["read"] == rec["rejected"] + int((hits.status != "rejected").sum())
    assert list(tmp_path.iterdir()) == [whole, chunked] or sorted(tmp_path.iterdir()) == sorted([whole, chunked])


def test_directory_and_csv(lib, query_files, tmp_path):
    mgf, _ = query_files
    whole, chunked = tmp_path / "whole.csv", tmp_path / "chunked.csv"
    lib.search(mgf.parent, k=3, mode="open").write(whole)
    lib.search_to_file(mgf.parent, chunked, k=3, mode="open", chunk_size=250)
    _same_table(whole, chunked)
    assert chunked.read_text().startswith("# mode: ")


@pytest.mark.parametrize("name", ["h.tsv.gz", "h.CSV.GZ"])
def test_gzipped_text_tables(lib, query_files, tmp_path, name):
    """A text table named .tsv.gz / .csv.gz is gzipped, chunked or whole, and holds the plain table."""
    import gzip

    mgf, _ = query_files
    plain_name = name[:-3].lower()
    plain, whole, chunked = tmp_path / plain_name, tmp_path / ("w" + name), tmp_path / ("c" + name)
    hits = lib.search(str(mgf), k=3, mode="open")
    hits.write(plain)
    hits.write(whole)
    lib.search_to_file(str(mgf), chunked, k=3, mode="open", chunk_size=250)
    assert whole.read_bytes()[:2] == b"\x1f\x8b" and whole.read_bytes() == chunked.read_bytes()
    assert gzip.decompress(whole.read_bytes()) == plain.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plain.name, whole.name, chunked.name])


def test_table_format_names(tmp_path):
    from fastspec.hits import table_format

    assert table_format("a.parquet") is None and table_format("a.PQ") is None
    assert table_format("a.tsv") == table_format("a.txt.gz") == "\t" and table_format("x.y.csv.gz") == ","
    for bad, shown in (("a.parquet.gz", "'.parquet.gz'"), ("a.gz", "'.gz'"), ("a", "a: no extension to tell the hit table format by: end the name in .parquet"), ("a.mgf", "'.mgf'")):
        with pytest.raises(ParameterError, match=re.escape(shown)):
            table_format(bad)


def test_in_memory_queries_and_formula_list(lib, tmp_path):
    q = lib.spectra(np.arange(0, 60, 2), metadata=True)
    formulas = [f if f else "C6H12O6" for f in q.column("formula")]
    for chunk in (1, 7, 100):
        whole, chunked = tmp_path / f"w{chunk}.parquet", tmp_path / f"c{chunk}.parquet"
        lib.search(q, k=4, mode="formula", formula=formulas).write(whole)
        lib.search_to_file(q, chunked, k=4, mode="formula", formula=formulas, chunk_size=chunk)
        _same_table(whole, chunked)
    with pytest.raises(ParameterError, match="formula"):
        lib.search_to_file(q, tmp_path / "x.parquet", mode="formula", formula=formulas[:-1], chunk_size=7)
    with pytest.raises(ParameterError, match="formula"):
        lib.search_to_file(q, tmp_path / "x.parquet", mode="formula", formula=formulas + ["C2H6O"], chunk_size=7)
    empty = lib.spectra(np.zeros(0, np.int64))
    lib.search_to_file(empty, tmp_path / "e.parquet")
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.num_rows == 0 and b"fastspec" in t.schema.metadata
    assert not (tmp_path / "x.parquet").exists()


def test_errors_leave_no_table(lib, query_files, tmp_path):
    mgf, _ = query_files
    out = tmp_path / "h.parquet"
    out.write_bytes(b"previous")
    with pytest.raises(FastspecError) as err:  # the first bad record stops the search; the old table stays
        lib.search_to_file(str(mgf), out, mode="open", on_error="raise", chunk_size=50)
    assert "a.mgf" in str(err.value)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["h.parquet"]
    with pytest.raises(FileNotFoundError) as err:  # names the query file, not the table
        lib.search_to_file(str(tmp_path / "missing.mgf"), out)
    assert "missing.mgf" in str(err.value)
    with pytest.raises(ParameterError, match="hit table format"):
        lib.search_to_file(str(mgf), tmp_path / "h.xlsx")
    with pytest.raises(ParameterError, match="chunk_size"):
        lib.search_to_file(str(mgf), out, chunk_size=0)
    with pytest.raises(ParameterError):  # search parameters are checked before anything is read
        lib.search_to_file(str(tmp_path / "missing.mgf"), out, k=0)
    with pytest.raises(ParameterError):
        lib.search_to_file(str(mgf), out, no_such_option=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.parquet"]


def test_good_positions():
    assert _good_positions(0, 3, []).tolist() == [0, 1, 2]
    assert _good_positions(0, 3, [0, 2]).tolist() == [1, 3, 4]
    assert _good_positions(5, 2, [1, 5, 6, 9]).tolist() == [7, 8]
    assert _good_positions(5, 2, [7]).tolist() == [5, 6]


def test_cli_query_chunks(lib, query_files, tmp_path):
    from click.testing import CliRunner

    from fastspec.cli import main

    mgf, msp = query_files
    outs = []
    for chunk in ("60", "50000"):
        out = tmp_path / f"h{chunk}.tsv"
        res = CliRunner().invoke(main, ["query", str(mgf), str(msp), "-l", str(lib.path), "-o", str(out), "--mode", "open",
                                        "--chunk-size", chunk, "--threads", "1"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert re.search(r"rejected and not searched", res.output) and "queries/s" in res.output
        outs.append(out)
    _same_table(*outs)


@pytest.mark.parametrize("ext", ["mgf", "msp", "tsv", "parquet", "h5", "json"])
def test_every_format_with_rejected_records(lib, tmp_path, ext):
    """Rejected records keep their place, whichever reader reads the chunks (every fifth record is bad,
    and the last two)."""
    from fastspec import io as fio
    from fastspec.spectra import Spectra

    sp = lib.spectra(np.arange(40), metadata=True)
    bad = np.zeros(len(sp), bool)
    bad[::5] = bad[-2:] = True
    inten = sp.intensity.copy()
    inten[sp.offsets[:-1][bad]] = -1.0  # a negative intensity: the record is rejected
    sp = Spectra(sp.offsets, sp.mz, inten, metadata=sp.metadata, validate=False)
    path = tmp_path / f"q.{ext}"
    if ext == "json":
        fio.write(sp, tmp_path / "q.mgf")
        good = fio.read(tmp_path / "q.mgf")
        recs = [json.dumps({"peaks": [[float(m), float(i)] for m, i in zip(s.mz, s.intensity)], "id": i,
                            **({"precursor_mz": s.precursor_mz} if np.isfinite(s.precursor_mz) else {})})
                for s, i in zip(good, good.ids)]
        for at in (1, 7, len(recs)):  # (a broken first record: not JSON spectra at all)
            recs.insert(at, '{"peaks": [[100.0, "x"]], "precursor_mz": 300')  # broken JSON
        path.write_text("[" + ",\n".join(recs) + "]")
    else:
        fio.write(sp, path)
    whole = tmp_path / "whole.parquet"
    hits = lib.search(str(path), k=3, mode="open")
    hits.write(whole)
    assert (hits.status == "rejected").sum() == 3 if ext == "json" else bad.sum()
    # each rejected row says why (the reader's reason, with the line for the text formats), the others nothing
    table = hits.to_arrow()
    why = table.column("rejected_reason").to_pylist()
    assert [w is not None for w in why] == [st == "rejected" for st in table.column("status").to_pylist()]
    assert all(w and not w.startswith("(") for w in why if w is not None)
    unit = {"mgf": "line", "msp": "line", "tsv": "line", "parquet": "row", "h5": "row", "json": "record"}[ext]
    assert all(re.search(rf"\({unit} \d+\)$", w) for w in why if w is not None), why
    for chunk in (1, 3, 16):
        out = tmp_path / f"c{chunk}.parquet"
        lib.search_to_file(str(path), out, k=3, mode="open", chunk_size=chunk)
        _same_table(whole, out)


@pytest.mark.parametrize("name", ["tiny.mzML", "massbank_record.txt", "mgf_mzmine.mgf", "msp_nist.msp"])
def test_hand_made_files(lib, tmp_path, name):
    from pathlib import Path

    path = Path(__file__).parent / "data" / name
    whole, out = tmp_path / "whole.tsv", tmp_path / "c.tsv"
    lib.search(str(path), k=2, mode="open").write(whole)
    lib.search_to_file(str(path), out, k=2, mode="open", chunk_size=1)
    _same_table(whole, out)


def test_tsv_invalid_rows_keep_their_place(lib, tmp_path, monkeypatch):
    """pyarrow reports a row with the wrong number of fields while parsing its block, ahead of the rows
    before it: it is counted at its own record position whatever the block size."""
    from fastspec import io as fio
    from fastspec.io import _iter_file, tsv
    from fastspec.io._common import ReadReport

    monkeypatch.setattr(tsv, "MIN_BLOCK", 1 << 16)  # blocks of 64 kB: this table's rows over several

    sp = lib.spectra(np.arange(300), metadata=True)
    path = tmp_path / "q.tsv"
    fio.write(sp, path)
    lines = path.read_text().splitlines(True)
    for at in (250, 120, 40, 1):  # after the header: record 0, then 40, 121, 252 once all are in
        lines.insert(at, "only\ttwo\n")
    path.write_text("".join(lines))
    for chunk in (None, 1, 20, 1000):
        rep = ReadReport(path=str(path))
        n = sum(len(b) for b in _iter_file(str(path), None, "skip", rep, None, chunk))
        assert n == 300 and sorted(rep.rejected_records) == [0, 40, 121, 252], chunk
        assert sorted(r.line for r in rep.rejected) == [2, 42, 123, 254]
    # on_error="raise" names the first bad row, whichever kind: bad peaks before a row with too few fields
    lines.insert(30, "x\t100,200\t1\t300\n")  # m/z and intensity lists of different lengths, line 31
    raising = tmp_path / "r.tsv"
    raising.write_text("".join(lines))
    for chunk in (None, 1, 20):
        with pytest.raises(FastspecError, match=r"r\.tsv:2\b"):
            list(_iter_file(str(raising), None, "raise", ReadReport(path=str(raising)), None, chunk))
    del lines[1]  # the invalid row on line 2: the bad peaks on line 30 come first now
    raising.write_text("".join(lines))
    for chunk in (None, 1, 20):
        with pytest.raises(FastspecError, match=r"r\.tsv:30\b"):
            list(_iter_file(str(raising), None, "raise", ReadReport(path=str(raising)), None, chunk))
    whole = tmp_path / "whole.tsv"
    hits = lib.search(str(path), k=2, mode="open")
    hits.write(whole)
    assert np.flatnonzero(hits.status == "rejected").tolist() == [0, 40, 121, 252]
    for chunk in (1, 7, 50_000):
        out = tmp_path / f"c{chunk}.tsv"
        lib.search_to_file(str(path), out, k=2, mode="open", chunk_size=chunk)
        _same_table(whole, out)


def test_filter_counts_merged_in_order(lib, tmp_path):
    q = lib.spectra(np.arange(20), metadata=True)
    md = q.metadata
    inst = [None] * 10 + md.column("instrument_type").to_pylist()[10:]
    add = md.column("adduct").to_pylist()[:10] + [None] * 9 + ["[Cat]+"]
    import pyarrow as pa

    md = md.set_column(md.column_names.index("instrument_type"), "instrument_type", pa.array(inst, pa.string()))
    md = md.set_column(md.column_names.index("adduct"), "adduct", pa.array(add, pa.string()))
    from fastspec.spectra import Spectra

    q = Spectra(q.offsets, q.mz, q.intensity, q.precursor_mz, q.charge, md, validate=False)
    whole, chunked = tmp_path / "w.csv", tmp_path / "c.csv"
    kw = dict(k=2, mode="open", same_adduct=True, same_instrument=True, same_charge=True)
    h = lib.search(q, **kw)
    h.write(whole)
    assert set(h.params["filters_not_applied"]) >= {"adduct", "instrument"}
    lib.search_to_file(q, chunked, chunk_size=10, **kw)
    _same_table(whole, chunked)


def test_write_errors_name_the_output(tmp_path):
    import errno

    from fastspec.hits import write_atomically

    out = tmp_path / "h.parquet"

    def fail(exc):
        def write(tmp):
            tmp.write_bytes(b"partial")
            raise exc(tmp)
        return write

    for make in (lambda tmp: OSError(errno.EFBIG, "Error writing bytes to file. Detail: [errno 27] File too large"),
                 lambda tmp: OSError(errno.ENOSPC, f"Failed to open local file '{tmp}.rows'. Detail: no space"),
                 lambda tmp: OSError(errno.EACCES, "Permission denied", str(tmp))):
        with pytest.raises(OSError) as err:
            write_atomically(out, fail(make))
        assert err.value.filename == str(out) and ".tmp-" not in str(err.value), err.value
    with pytest.raises(FileNotFoundError) as err:  # about another file: left alone
        write_atomically(out, fail(lambda tmp: FileNotFoundError(2, "No such file", str(tmp_path / "q.mgf"))))
    assert err.value.filename == str(tmp_path / "q.mgf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["parquet", "h5", "mgf", "tsv"])
def test_written_files_use_known_temporaries(tmp_path, suffix):
    """Every file fastspec writes goes through a temporary that the CLI's Ctrl-C handler knows (it exits at
    once, so nothing else removes it: parquet and HDF5 writes used a fixed ``X.tmp`` it did not know), and
    the temporaries a killed writer left beside the same output are removed by the next write."""
    import subprocess
    import sys

    from fastspec import _atomic
    from fastspec import io as fio
    from fastspec.spectra import Spectra

    out = tmp_path / f"s.{suffix}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = _atomic.HOST_TAG
    stale = tmp_path / f".{out.name}.tmp-{dead.pid}-{tag}-0123456789ab"
    stale.write_bytes(b"left by a SIGKILL")
    kept = [f".{out.name}.tmp-{os.getpid()}-{tag}-0123456789ab",  # a live writer's
            f".{out.name}.tmp-{dead.pid}-zzzzzz-0123456789ab",  # another host's (its pid means nothing here)
            f".{out.name}.tmp-{dead.pid}-{tag}-05-01.{suffix}"]  # another output's name, not a temporary
    for name in kept:
        (tmp_path / name).write_bytes(b"kept")
    seen = []

    class Spy(set):
        def add(self, p):
            seen.append(p)
            super().add(p)

    sp = Spectra.from_arrays([[50.0, 60.0]], [[1.0, 2.0]], precursor_mz=[100.0], metadata=[{"id": "a"}])
    old = _atomic.ACTIVE_TEMPORARIES
    spy = _atomic.ACTIVE_TEMPORARIES = Spy()
    try:
        fio.write(sp, out)
    finally:
        _atomic.ACTIVE_TEMPORARIES = old
    assert not spy  # known while written, forgotten once renamed
    assert len(seen) == 1 and seen[0].parent == tmp_path and seen[0].name.startswith(f".{out.name}.tmp-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, *kept])
    assert len(fio.read(out)) == 1


def test_index_temporaries_of_older_versions_are_still_removed(tmp_path):
    """An index build directory named before the host tag (``.NAME.tmp-PID-12HEX``) whose process is gone is
    removed by the next build of that index, as it was before; a file of that shape is not touched."""
    import subprocess
    import sys

    from fastspec._atomic import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / f".lib.fastspec.tmp-{dead.pid}-0123456789ab"
    (old / "sub").mkdir(parents=True)
    kept = tmp_path / f".x.tmp-{dead.pid}-0123456789ab"
    kept.write_text("a file")
    remove_stale_temporaries(tmp_path, "lib.fastspec")
    remove_stale_temporaries(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


def test_a_long_output_name_fits_its_temporary(tmp_path):
    """A 240-byte output name is legal; its temporary (longer) must be too, also when the name's characters
    take several bytes each."""
    from fastspec import io as fio
    from fastspec.spectra import Spectra

    sp = Spectra.from_arrays([[50.0]], [[1.0]], precursor_mz=[100.0])
    for stem in ("a" * 230, "\u6570" * 76):  # 230 bytes; 228 bytes in 76 three-byte characters
        for suffix in ("parquet", "mgf"):
            out = tmp_path / f"{stem}.{suffix}"
            fio.write(sp, out)
            assert len(fio.read(out)) == 1
    assert len(list(tmp_path.iterdir())) == 4


def test_parameters_checked_up_front(lib, query_files, tmp_path):
    import inspect

    from fastspec.cli.library_cmds import query
    from fastspec.search import _SearchConfig, search
    from fastspec.stream import DEFAULT_CHUNK

    mgf, _ = query_files
    out = tmp_path / "h.parquet"
    with pytest.raises(ParameterError, match="on_error"):
        lib.search_to_file(str(mgf), out, on_error="bogus")
    with pytest.raises(ParameterError, match=r"'Qq'.*2 such values"):
        lib.search_to_file(str(mgf), out, mode="formula", formula=["C6H12O6", "Xyz", "Qq"] + ["C2H6O"] * 2000)
    assert list(tmp_path.iterdir()) == []
    # search_to_file hands search()'s own arguments to the config by name
    names = list(inspect.signature(_SearchConfig.make).parameters)[1:]
    assert set(names) <= set(inspect.signature(search).parameters)
    assert {p.name: p.default for p in query.params}["chunk_size"] == DEFAULT_CHUNK


def test_a_refused_progress_leaves_no_temporary(lib, query_files, tmp_path, monkeypatch):
    """A text table to a device keeps its rows in a temp file; a refused ``progress`` left it behind (one
    empty ``fastspec-*.rows`` per call in the system's temp directory)."""
    import tempfile

    mgf, _ = query_files
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ParameterError, match="progress"):
        lib.search_to_file(str(mgf), "/dev/null", output_format="tsv", progress="no")
    assert list(tmp_path.iterdir()) == []
    lib.search_to_file(str(mgf), "/dev/null", output_format="tsv", k=1)
    assert list(tmp_path.iterdir()) == []


def test_one_progress_bar_over_the_chunks(lib, query_files, tmp_path, capsys):
    mgf, _ = query_files
    lib.search_to_file(str(mgf), tmp_path / "h.parquet", k=2, mode="identity", chunk_size=300, progress=True)
    err = capsys.readouterr().err
    assert "search" in err and "query" in err
    # one bar counting the searched queries of every chunk (a bar per chunk would start again from 0)
    counts = [int(x) for x in re.findall(r"search: (\d+)", err.replace("\r", "\n"))]
    assert counts and counts == sorted(counts)


def test_outputs_to_devices_pipes_and_symlinks(lib, tmp_path):
    """An output that is a device or a named pipe (/dev/null, /dev/stdout) is written to as it is: renaming
    a temporary over it replaced the device with a regular file (an audit's `evaluate -o /dev/null`, run as
    root, did so to the system's). A symlink's target is replaced and the link kept. Spectrum files
    (text, gzipped too) and hit tables alike."""
    import gzip
    import stat
    import threading

    from fastspec import io as fio
    from fastspec._atomic import write_text_atomically

    got = {}

    def drain(fifo, key):
        with open(fifo, "rb") as f:
            got[key] = f.read()

    q = lib.spectra(np.arange(3), metadata=True)
    for key, write in (("json", lambda p: write_text_atomically(p, '{"a": 1}\n')),
                       ("mgf", lambda p: fio.write(q, p)),
                       ("tsv", lambda p: lib.search(q, k=2, mode="open").write(p))):
        fifo = tmp_path / f"pipe.{key}"
        os.mkfifo(fifo)
        t = threading.Thread(target=drain, args=(fifo, key))
        t.start()
        write(fifo)
        t.join(30)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got[key]
    assert got["json"] == b'{"a": 1}\n' and got["mgf"].startswith(b"BEGIN IONS") and got["tsv"].startswith(b"# mode:")
    # a chunked hit table into a pipe keeps its rows in a temporary file elsewhere, not beside the pipe
    fifo = tmp_path / "chunked.tsv"
    os.mkfifo(fifo)
    t = threading.Thread(target=drain, args=(fifo, "chunked"))
    t.start()
    lib.search_to_file(q, fifo, k=2, mode="open", chunk_size=1)
    t.join(30)
    assert got["chunked"] == got["tsv"] and not (tmp_path / "chunked.tsv.rows").exists()
    target = tmp_path / "real.mgf.gz"
    target.write_bytes(b"old")
    link = tmp_path / "link.mgf.gz"
    link.symlink_to(target.name)
    fio.write(q, link)
    assert link.is_symlink() and gzip.decompress(target.read_bytes()).startswith(b"BEGIN IONS")
    # the gzip header names no (temporary) file and holds no time: the same spectra, the same bytes
    again = tmp_path / "again.mgf.gz"
    fio.write(q, again)
    assert again.read_bytes() == target.read_bytes() and b".tmp-" not in target.read_bytes()


def test_seeking_formats_refuse_pipes_and_terminals(lib, tmp_path):
    """Parquet and HDF5 writers seek: into a pipe they failed after the work ("I/O error: lseek failed"), and
    pyarrow then deleted the path it was given, which for a link to a pipe such as /dev/stdout (as root)
    removed the link itself. They are refused first, one line; the pipe and a link to it stay, /dev/null
    still takes them (an audit)."""
    from fastspec import io as fio
    from fastspec._atomic import check_seekable
    from fastspec.errors import ParameterError

    import threading

    q = lib.spectra(np.arange(3), metadata=True)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)

    def drain():  # a reader, so that a writer opening the pipe (the code before the fix) fails, not blocks
        with open(fifo, "rb") as f:
            f.read()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _refused_everywhere(lib, q, fifo, link)
    finally:
        if reader.is_alive():  # nothing opened the pipe (the refusal opens nothing): release the reader
            with open(fifo, "wb"):
                pass
        reader.join(30)
    assert link.is_symlink() and os.path.samefile(link, fifo) and stat_is_fifo(fifo)
    fio.write(q, "/dev/null", format="parquet")  # a device that seeks
    master, slave = os.openpty()
    try:
        with pytest.raises(ParameterError, match="pipe or terminal"):
            check_seekable(os.ttyname(slave), "Parquet")
    finally:
        os.close(master)
        os.close(slave)


def test_a_failing_parquet_write_keeps_the_device(lib, tmp_path):
    """pyarrow deletes the path it was given when a Parquet write fails: on a device that seeks but fails
    (a full disk behind /dev/stdout, /dev/full) the device node or the link to it was removed (a review).
    Such outputs get the device opened instead; the error stays, the node and the link stay."""
    import stat

    from fastspec import io as fio

    full = tmp_path / "full"
    try:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a node of /dev/full: every write fails
    except (PermissionError, AttributeError):
        pytest.skip("cannot make a device node here (not root)")
    link = tmp_path / "stdout"
    link.symlink_to(full)
    q = lib.spectra(np.arange(3), metadata=True)
    hits = lib.search(q, k=2, mode="open")
    for out in (full, link):
        for write in (lambda p: fio.write(q, p, format="parquet"), lambda p: hits.write(p, output_format="parquet"),
                      lambda p: hits.to_parquet(p)):
            with pytest.raises(OSError):
                write(out)
            assert stat.S_ISCHR(os.stat(full).st_mode) and link.is_symlink()


def _refused_everywhere(lib, q, fifo, link):
    from fastspec import io as fio
    from fastspec.errors import ParameterError

    for out in (fifo, link):
        for fmt, what in (("parquet", "Parquet"), ("hdf5", "HDF5")):
            with pytest.raises(ParameterError, match=f"is a pipe or terminal: {what} files cannot be written"):
                fio.write(q, out, format=fmt)
        with pytest.raises(ParameterError, match="write TSV or CSV"):
            lib.search(q, k=2, mode="open").write(out, output_format="parquet")
        with pytest.raises(ParameterError, match="write TSV or CSV"):
            lib.search_to_file(q, out, k=2, output_format="parquet")


def stat_is_fifo(path) -> bool:
    import stat

    return stat.S_ISFIFO(os.stat(path).st_mode)


def test_output_to_stdout_is_written_through(tmp_path):
    """/dev/stdout is a link to the caller's descriptor: written through, whether it is a pipe (resolving
    the link gave /proc/PID/fd/pipe:[N], a FileNotFoundError) or a file (resolving it replaced that file by
    another inode, which the shell holding the old one then kept writing to, unseen; reopened, as `cp x
/dev/stdout` does, it is truncated like any output)."""
    import subprocess
    import sys

    code = "from fastspec._atomic import write_text_atomically; write_text_atomically('/dev/stdout', 'new\\n')"
    log = tmp_path / "log"
    with open(log, "w") as f:
        inode = os.fstat(f.fileno()).st_ino
        r = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert os.stat(log).st_ino == inode and log.read_text() == "new\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "new\n", r.stderr


def test_input_format_reads_a_pipe_for_build_search_and_search_to_file(tmp_path):
    """``input_format=`` names the format of a pipe (``/dev/stdin``, a FIFO), which cannot be sniffed, for
    Library.build, search and search_to_file; without it the pipe is refused before it is read."""
    import threading

    mgf = "".join(f"BEGIN IONS\nTITLE=s{i}\nPEPMASS={300 + i}\n{100 + i} 1\n{150 + i} 0.5\nEND IONS\n"
                  for i in range(5)).encode()

    def through_fifo(call):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        t = threading.Thread(target=lambda: fifo.write_bytes(mgf))
        t.start()
        try:
            return call(str(fifo))
        finally:
            if t.is_alive():  # the call failed before reading the pipe: release the writer, or join hangs
                with open(fifo, "rb") as f:
                    f.read()
            t.join()
            fifo.unlink()

    lib = through_fifo(lambda f: Library.build(f, tmp_path / "lib.fastspec", faiss=False, input_format="mgf"))
    assert lib.n_spectra == 5 and lib.metadata(columns=["id"]).column("id").to_pylist() == [f"s{i}" for i in range(5)]
    hits = through_fifo(lambda f: lib.search(f, k=1, mode="open", input_format="mgf"))
    assert hits.indices[:, 0].tolist() == [0, 1, 2, 3, 4]
    done = through_fifo(lambda f: lib.search_to_file(f, tmp_path / "h.parquet", k=1, mode="open", input_format="mgf"))
    assert done["n_queries"] == 5 and done["n_with_hits"] == 5
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FastspecError, match="a pipe.*input_format="):
        lib.search(str(fifo), k=1)  # would block on open if it tried to read
