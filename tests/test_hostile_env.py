"""What an audit of hostile environments found (a full disk, a file-size limit, a second output that
cannot be written, an index swapped in by another process, dangling links, killed runs): one clear error
naming the output, nothing half-written, nothing committed that the error would make the user redo."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastspec.io as fio
from fastspec.cli import main
from fastspec.errors import IndexChangedError, IndexFormatError, IndexWriteError
from fastspec.library import Library


@pytest.fixture(scope="module")
def spectra(massbank_mgf):
    return fio.read(massbank_mgf)[:200]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_hdf5_that_may_not_fit_is_built_in_memory(spectra, tmp_path, monkeypatch):
    """HDF5 (h5py 3.16 / HDF5 2.0) crashed the process (a segfault) when a write failed for want of space:
    where the file might not fit it is built in memory and written by Python, whose failure is an OSError."""
    from fastspec.io import hdf5

    direct = tmp_path / "direct.h5"
    fio.write(spectra, str(direct))
    monkeypatch.setattr(hdf5, "_surely_fits", lambda path, need: False)
    buffered = tmp_path / "buffered.h5"
    fio.write(spectra, str(buffered))
    a, b = fio.read(str(direct)), fio.read(str(buffered))
    assert np.array_equal(a.mz, b.mz) and np.array_equal(a.offsets, b.offsets) and a.metadata.equals(b.metadata)
    assert hdf5._size_bound(spectra) > direct.stat().st_size
    # a dictionary column is stored as text per row: the bound counts its values, not its codes (a review:
    # 13.3 MB written against a bound of 8.6)
    import pyarrow as pa

    n = 20000
    words = pa.array(["x" * 300 + str(i) for i in range(50)])
    codes = pa.array(np.arange(n, dtype=np.int32) % 50)
    sp = spectra.__class__(np.arange(n + 1, dtype=np.int64), np.full(n, 100.0), np.ones(n), np.full(n, 200.0),
                           metadata=pa.table({"c": pa.DictionaryArray.from_arrays(codes, words)}))
    fio.write(sp, str(tmp_path / "dict.h5"))
    assert hdf5._size_bound(sp) > (tmp_path / "dict.h5").stat().st_size
    if os.path.exists("/dev/full"):  # every write fails there: an OSError, in a child process that must not crash
        code = (f"import fastspec.io as fio\ns = fio.read({str(direct)!r})\n"
                "try:\n    fio.write(s, '/dev/full', format='hdf5')\nexcept OSError as e:\n    print('OSError', e.errno)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.split() == ["OSError", str(errno.ENOSPC)], proc.stderr[-2000:]


def test_a_full_disk_names_the_index(tmp_path):
    from fastspec._indexfmt import AtomicDirectory

    target = tmp_path / "lib.fastspec"
    for exc, words in ((OSError(errno.ENOSPC, "No space left on device", "x.npy"), "No space left"),
                       (OSError(errno.EFBIG, "File too large"), "file-size limit"),
                       (OSError("1000 requested and 10 written"), "stopped short")):
        with pytest.raises(IndexWriteError, match=words) as err:
            with AtomicDirectory(target) as tmp:
                (tmp / "a.npy").write_bytes(b"x")
                raise exc
        assert str(target) in str(err.value) and not os.listdir(tmp_path)
        assert isinstance(err.value, OSError) and isinstance(err.value, IndexFormatError)
        assert err.value.errno == exc.errno
    with pytest.raises(KeyError):  # other errors pass as they are
        with AtomicDirectory(target):
            raise KeyError("bug")


def test_report_that_cannot_be_written_is_refused_before_the_append(spectra, tmp_path):
    """`index --append --report R` appended, then failed on R: retried, the spectra went in twice."""
    fio.write(spectra[:100], str(tmp_path / "a.mgf"))
    fio.write(spectra[100:], str(tmp_path / "b.mgf"))
    lib = tmp_path / "lib.fastspec"
    assert _cli("index", tmp_path / "a.mgf", "-o", lib, "-q", "--no-faiss").exit_code == 0
    n = Library.open(lib).n_spectra
    (tmp_path / "report.json").mkdir()  # a directory where the report should go
    res = _cli("index", tmp_path / "b.mgf", "-o", lib, "--append", "--report", tmp_path / "report.json", "-q")
    assert res.exit_code != 0 and "is a directory" in res.output and "Traceback" not in res.output
    assert Library.open(lib).n_spectra == n  # nothing appended
    res = _cli("index", tmp_path / "b.mgf", "-o", lib, "--append", "--report", tmp_path / "r.json", "-q")
    assert res.exit_code == 0 and json.loads((tmp_path / "r.json").read_text())["appended"]["spectra"] > 0


def test_second_output_is_checked_before_the_work(spectra, tmp_path):
    """`evaluate -o r.json --markdown` replaced r.json, then failed on r.md (a directory)."""
    fio.write(spectra, str(tmp_path / "lab.mgf"))
    (tmp_path / "r.json").write_text("OLD")
    (tmp_path / "r.md").mkdir()
    res = _cli("evaluate", "--library", tmp_path / "lab.mgf", "--split", "random", "-o", tmp_path / "r.json",
               "--markdown", "-q")
    assert res.exit_code != 0 and "r.md is a directory" in res.output
    assert (tmp_path / "r.json").read_text() == "OLD"


def test_verify_of_a_swapped_index_is_no_corruption(spectra, tmp_path):
    path = tmp_path / "lib.fastspec"
    Library.build(spectra[:50], path, faiss=False, progress=False)
    old = Library.open(path)
    Library.open(path).append(spectra[50:60], progress=False)  # (another process, as far as `old` knows)
    with pytest.raises(IndexChangedError, match="open it again"):
        old.verify()
    Library.open(path).verify()


def test_dangling_link_and_a_left_aside_index(spectra, tmp_path):
    """An index output that is a link to nothing yet is built where it points (it failed after the whole
    build); --overwrite after a swap killed between its renames deletes the index left aside, as its message
    says."""
    link = tmp_path / "lib.fastspec"
    link.symlink_to(tmp_path / "real.fastspec")
    Library.build(spectra[:20], link, faiss=False, progress=False)
    assert link.is_symlink() and (tmp_path / "real.fastspec" / "manifest.json").exists()
    lib = tmp_path / "other.fastspec"
    Library.build(spectra[:20], lib, faiss=False, progress=False)
    aside = tmp_path / ".other.fastspec.old-0123456789ab"
    os.rename(lib, aside)  # killed between the renames: the old index aside, none in place
    sibling = tmp_path / ".other.fastspec.old-x.old-0123456789ab"  # the aside of an index named other.fastspec.old-x
    Library.build(spectra[:10], tmp_path / "other.fastspec.old-x", faiss=False, progress=False)
    os.rename(tmp_path / "other.fastspec.old-x", sibling)
    with pytest.raises(IndexFormatError, match="rename it back"):
        Library.build(spectra[:30], lib, faiss=False, progress=False)
    Library.build(spectra[:30], lib, faiss=False, progress=False, overwrite=True)
    assert not aside.exists() and Library.open(lib).n_spectra + Library.open(lib).n_rejected == 30
    assert sibling.exists()
    Library.build(spectra[:25], lib, faiss=False, progress=False, overwrite=True)  # (the index there: the other path)
    assert sibling.exists()
    with pytest.raises(IndexFormatError, match=r"\.other\.fastspec\.old-x\.old-"):  # its own aside, named
        Library.open(tmp_path / "other.fastspec.old-x")


def test_temporaries_of_a_killed_unreaped_writer_are_stale(tmp_path):
    from fastspec._atomic import HOST_TAG, _zombie, remove_stale_temporaries, temporary_prefix

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while not _zombie(child.pid) and time.time() < deadline:  # exited, not reaped yet
        time.sleep(0.05)
    assert _zombie(child.pid)
    left = tmp_path / f"{temporary_prefix('h.tsv')}{child.pid}-{HOST_TAG}-0123456789ab"
    left.write_text("half")
    alive = tmp_path / f"{temporary_prefix('h.tsv')}{os.getpid()}-{HOST_TAG}-0123456789ab"
    alive.write_text("writing")
    remove_stale_temporaries(tmp_path, "h.tsv")
    assert not left.exists() and alive.exists()
    child.wait()
    assert not _zombie(os.getpid()) and not _zombie(child.pid)
    Path(alive).unlink()
