"""The stale numba-cache guard in fastspec.kernels._config (numba only re-validates a kernel's own file)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numba

from fastspec.kernels import _config as cfg

TAG = cfg.PY_TAG
MODULES = ["matching", "topk"]


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"stale")


OURS = [f"topk.dense_kernel-57.{TAG}.nbi", f"topk.dense_kernel-57.{TAG}.1.nbc", f"topk.dense_kernel-57.{TAG}.2.nbc",
        f"matching.score_row-120.{TAG}.nbi", f"matching.score_row-120.{TAG}.1.nbc"]
KEPT = [
    f"other.f-1.{TAG}.nbi", f"other.f-1.{TAG}.1.nbc",          # another module sharing the folder
    f"topkx.f-1.{TAG}.nbi",                                     # prefix of ours without the dot
    "topk.dense_kernel-57.py27.nbi", "topk.dense_kernel-57.py27.1.nbc",  # another interpreter's files
    f"topk.dense_kernel-57.{TAG}.nbi.tmp.0123abcd",             # numba write in flight elsewhere
    "topk.cpython-311.pyc", "notes.txt",
]


def _left(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_fingerprint_tracks_kernel_sources(tmp_path):
    (tmp_path / "a.py").write_text("xy")
    (tmp_path / "b.py").write_text("z")
    (tmp_path / "notes.txt").write_text("1")
    fp = cfg.kernel_fingerprint(str(tmp_path))
    assert len(fp) == 40 and int(fp, 16) >= 0
    assert cfg.kernel_fingerprint(str(tmp_path)) == fp
    (tmp_path / "notes.txt").write_text("2")  # not a kernel source
    assert cfg.kernel_fingerprint(str(tmp_path)) == fp
    (tmp_path / "a.py").write_text("x")
    (tmp_path / "b.py").write_text("yz")  # same concatenation, different files
    fp2 = cfg.kernel_fingerprint(str(tmp_path))
    assert fp2 != fp
    (tmp_path / "c.py").write_text("")
    assert cfg.kernel_fingerprint(str(tmp_path)) not in (fp, fp2)
    assert "topk" in cfg.kernel_modules() and "matching" in cfg.kernel_modules()


def test_purge_removes_only_our_stale_files(tmp_path):
    _touch(tmp_path, *OURS, *KEPT)
    assert cfg.purge_stale_cache(str(tmp_path), "f1", MODULES) == len(OURS)
    assert _left(tmp_path) == set(KEPT) | {cfg.STAMP_NAME}
    assert (tmp_path / cfg.STAMP_NAME).read_text().strip() == "f1"
    assert not [n for n in _left(tmp_path) if n.startswith(cfg.STAMP_NAME + ".tmp")]

    # same fingerprint: fresh caches written after the purge stay
    _touch(tmp_path, *OURS)
    assert cfg.purge_stale_cache(str(tmp_path), "f1", MODULES) == 0
    assert set(OURS) <= _left(tmp_path)

    # sources changed: purged again, stamp updated
    assert cfg.purge_stale_cache(str(tmp_path), "f2", MODULES) == len(OURS)
    assert _left(tmp_path) == set(KEPT) | {cfg.STAMP_NAME}
    assert (tmp_path / cfg.STAMP_NAME).read_text().strip() == "f2"


def test_purge_garbage_stamp_counts_as_stale(tmp_path):
    _touch(tmp_path, *OURS)
    (tmp_path / cfg.STAMP_NAME).write_bytes(b"\xff\x00" * 500)
    assert cfg.purge_stale_cache(str(tmp_path), "f1", MODULES) == len(OURS)
    assert (tmp_path / cfg.STAMP_NAME).read_text().strip() == "f1"


def test_purge_missing_folder_is_noop(tmp_path):
    missing = tmp_path / "nope"
    assert cfg.purge_stale_cache(str(missing), "f1", MODULES) == 0
    assert not missing.exists()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert cfg.purge_stale_cache(str(not_a_dir), "f1", MODULES) == 0


def test_purge_unwritable_folder_is_silent(tmp_path, monkeypatch):
    """Read-only folder (simulated: the tests may run as root): no error, no stamp, retried later."""
    _touch(tmp_path, *OURS)

    def denied(*args, **kwargs):
        raise PermissionError(13, "read-only")

    monkeypatch.setattr(os, "unlink", denied)
    monkeypatch.setattr(os, "replace", denied)
    assert cfg.purge_stale_cache(str(tmp_path), "f1", MODULES) == 0
    assert _left(tmp_path) == set(OURS)  # no stamp: a file could not go, so the next import retries
    monkeypatch.undo()

    # files removable but the stamp cannot be written: still silent, no temp file left behind
    monkeypatch.setattr(os, "replace", denied)
    assert cfg.purge_stale_cache(str(tmp_path), "f1", MODULES) == len(OURS)
    assert _left(tmp_path) == set()


def test_concurrent_purges_do_not_crash(tmp_path):
    names = [f"topk.k{i}-{i}.{TAG}.nbi" for i in range(200)] + [f"topk.k{i}-{i}.{TAG}.1.nbc" for i in range(200)]
    _touch(tmp_path, *names, *KEPT)
    barrier = threading.Barrier(6)
    counts, errors = [], []

    def run():
        try:
            barrier.wait()
            counts.append(cfg.purge_stale_cache(str(tmp_path), "f1", MODULES))
        except BaseException as exc:  # noqa: BLE001 - the test reports any escape
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert sum(counts) == len(names)  # every file removed exactly once
    assert _left(tmp_path) == set(KEPT) | {cfg.STAMP_NAME}
    assert (tmp_path / cfg.STAMP_NAME).read_text().strip() == "f1"


def _fake_tree(root: Path) -> Path:
    kdir = root / "kernels"
    kdir.mkdir()
    (kdir / "matching.py").write_text("def score_row(): return 1\n")
    (kdir / "topk.py").write_text("from matching import score_row\n")
    return kdir


def test_guard_on_fake_tree_in_tree_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    kdir = _fake_tree(tmp_path)
    pyc = kdir / "__pycache__"
    _touch(pyc, *OURS, *KEPT)
    done = cfg.guard_kernel_cache(str(kdir))
    assert done[str(pyc)] == len(OURS)
    assert _left(pyc) == set(KEPT) | {cfg.STAMP_NAME}

    _touch(pyc, *OURS)  # "compiled" again with the current sources
    assert cfg.guard_kernel_cache(str(kdir))[str(pyc)] == 0
    assert set(OURS) <= _left(pyc)

    (kdir / "matching.py").write_text("def score_row(): return 2\n")  # only the callee changes
    assert cfg.guard_kernel_cache(str(kdir))[str(pyc)] == len(OURS)
    assert (pyc / cfg.STAMP_NAME).read_text().strip() == cfg.kernel_fingerprint(str(kdir))


def test_guard_follows_numba_cache_dir(tmp_path, monkeypatch):
    """With NUMBA_CACHE_DIR numba caches under <dir>/<folder>_<sha1>; the guard finds and stamps it."""
    kdir = _fake_tree(tmp_path)
    ncd = tmp_path / "numba_cache"
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(ncd))
    dirs = cfg.cache_dirs(str(kdir))
    assert dirs[0] == str(kdir / "__pycache__")
    sub = [Path(d) for d in dirs if Path(d).parent == ncd]
    assert len(sub) == 1 and sub[0].name.startswith("kernels_")
    _touch(sub[0], *OURS, *KEPT)
    done = cfg.guard_kernel_cache(str(kdir))
    assert done[str(sub[0])] == len(OURS)
    assert _left(sub[0]) == set(KEPT) | {cfg.STAMP_NAME}
    assert not (kdir / "__pycache__").exists()  # in-tree folder not created when numba does not use it


def test_guard_survives_broken_numba_internals(tmp_path, monkeypatch):
    from numba.core import caching

    def broken(*args, **kwargs):
        raise AttributeError("numba internals changed")

    monkeypatch.setattr(caching, "FunctionCache", broken)
    monkeypatch.setattr(caching, "UserWideCacheLocator", broken)
    kdir = _fake_tree(tmp_path)
    assert cfg.cache_dirs(str(kdir)) == [str(kdir / "__pycache__")]  # in-tree needs no numba internals
    assert cfg.guard_kernel_cache(str(tmp_path / "missing")) == {}
    monkeypatch.setattr(cfg, "kernel_fingerprint", broken)
    assert cfg.guard_kernel_cache(str(kdir)) == {}


def test_import_purges_numba_cache_dir_end_to_end(tmp_path):
    """Real import in a fresh process: the NUMBA_CACHE_DIR folder is cleaned and stamped, nothing compiles."""
    from numba.core.caching import _CacheLocator

    ncd = tmp_path / "numba_cache"
    sub = ncd / _CacheLocator.get_suitable_cache_subpath(os.path.join(cfg.KERNEL_DIR, "topk.py"))
    _touch(sub, f"topk.dense_kernel-1.{TAG}.nbi", f"topk.dense_kernel-1.{TAG}.1.nbc", f"other.f-1.{TAG}.nbi")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(ncd), NUMBA_DEBUG_CACHE="1")
    res = subprocess.run([sys.executable, "-c", "import fastspec.kernels.topk"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert _left(sub) == {f"other.f-1.{TAG}.nbi", cfg.STAMP_NAME}
    assert (sub / cfg.STAMP_NAME).read_text().strip() == cfg.kernel_fingerprint()
    assert f"removed 2 stale kernel cache files from {str(sub)!r}" in res.stdout
    assert "index saved" not in res.stdout and "data saved" not in res.stdout  # import compiled nothing
