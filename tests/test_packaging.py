"""Import hygiene, packaging layout and repository rules."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["numba", "faiss", "rdkit", "pyteomics", "dask", "distributed", "matplotlib", "matchms", "ms_entropy", "h5py"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(','.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    return set(out.split(","))


def test_import_fastspec_is_light():
    mods = _modules_after("import fastspec")
    loaded = [m for m in HEAVY if m in mods]
    assert not loaded, f"import fastspec pulled in {loaded}"


def test_submodules_are_attributes_on_first_use():
    """``fastspec.preprocess`` / ``help(fastspec.search.search)`` work after a bare ``import fastspec``
    (as the README uses them), importing the module only then; every listed submodule exists."""
    import importlib.util

    import fastspec

    for name in fastspec._SUBMODULES:
        assert importlib.util.find_spec(f"fastspec.{name}") is not None, name
    code = "import fastspec\nassert 'fastspec.preprocess' not in __import__('sys').modules\n" \
           "print(fastspec.preprocess.default_pipeline, fastspec.hits.HIT_COLUMNS[0], fastspec.search.search)"
    mods = _modules_after(code)
    assert "fastspec.preprocess" in mods and "fastspec.search" in mods


def test_cli_help_is_light():
    code = "import sys; sys.argv=['fastspec','--help']\nfrom fastspec.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    mods = _modules_after(code)
    loaded = [m for m in HEAVY + ["pyarrow", "numpy"] if m in mods]
    assert not loaded, f"fastspec --help pulled in {loaded}"


def test_cli_info_is_light(tmp_path):
    """``fastspec info`` reads the manifest and the metadata: no numba, faiss or other heavy module."""
    import numpy as np

    from fastspec.library import Library
    from fastspec.spectra import Spectra

    rng = np.random.default_rng(0)
    sp = Spectra.from_arrays([np.sort(rng.uniform(50, 500, 8)) for _ in range(40)], [rng.uniform(1, 100, 8)] * 40,
                             precursor_mz=rng.uniform(300, 600, 40))
    lib = Library.build(sp, tmp_path / "l.fastspec", faiss=True, progress=False)
    code = (f"import sys; sys.argv=['fastspec','info',{str(lib.path)!r}]\nfrom fastspec.cli import main\ntry:\n"
            "    main()\nexcept SystemExit:\n    pass")
    loaded = [m for m in HEAVY if m in _modules_after(code)]
    assert not loaded, f"fastspec info pulled in {loaded}"


def test_kernels_mapped_into_package():
    import fastspec.kernels

    assert Path(fastspec.kernels.__file__).resolve().parent == (REPO / "kernels").resolve()


def test_wheel_contains_kernels(tmp_path):
    """The package-dir mapping must also hold in a built wheel, not only in the editable install."""
    pytest.importorskip("setuptools")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        if os.environ.get("CI"):  # scripts/dev.py installs setuptools and wheel, so CI must build it
            pytest.fail(f"wheel build failed: {res.stderr[-500:]}")
        pytest.skip(f"cannot build a wheel here: {res.stderr[-300:]}")
    wheel = next(tmp_path.glob("fastspec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastspec/kernels/__init__.py" in names
    assert "fastspec/kernels/_config.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    assert not any(n.startswith("tests/") for n in names)


def _py_files():
    for folder in ("fastspec", "kernels", "bench"):
        yield from (REPO / folder).rglob("*.py")


def test_no_pickle():
    for path in _py_files():
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") for n in names), path
        assert "allow_pickle=True" not in text, path


def test_numba_functions_use_shared_config():
    """Every njit in kernels/ takes its options from kernels/_config (cache=True, no fastmath drift);
    ``@pjit`` is _config's own decorator (parallel and serial builds with those options)."""
    for path in (REPO / "kernels").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef,)):
                for dec in node.decorator_list:
                    call = dec if isinstance(dec, ast.Call) else None
                    name = ast.unparse(call.func if call else dec)
                    if name == "pjit":
                        continue
                    if name.endswith("njit") or name.endswith("jit"):
                        assert call is not None, f"{path.name}:{node.name} uses bare @{name}"
                        kw = [k.arg for k in call.keywords]
                        assert None in kw or "cache" in kw, f"{path.name}:{node.name} lacks **NJIT/**PJIT"


def test_a_threading_layer_started_before_fastspec_is_warned_about():
    """The workqueue pin takes effect only if numba's pool has not started: a host that started it with
    omp first gets a warning (forked children that search then abort or hang a pool: an audit)."""
    code = ("import warnings, numba; numba.get_num_threads(); layer = numba.threading_layer()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); import fastspec.kernels.topk\n"
            "print(layer, any('omp' in str(x.message) for x in w))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[1] == str(out[0] == "omp")
    code = "import warnings; warnings.simplefilter('error'); import fastspec.kernels.topk, numba; print(numba.config.THREADING_LAYER)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip() == "workqueue"


def test_dev_script_runs_the_suite_on_two_workers(monkeypatch):
    """scripts/dev.py test adds ``-n 2`` (pytest-xdist, a test extra) on two cores or more, unless the
    caller chose workers or disabled xdist."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastspec_dev_script", REPO / "scripts" / "dev.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert dev._workers([]) == ["-n", "2"]
    assert dev._workers(["tests/test_search.py", "-k", "identity"]) == ["-n", "2"]
    for chosen in (["-n", "4"], ["-n4"], ["--numprocesses=3"], ["--numprocesses", "1"], ["-p", "no:xdist"],
                   ["-pno:xdist"], ["--pdb"], ["--trace"], ["-s"], ["--capture=no"]):
        assert dev._workers(chosen) == []
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:xdist")
    assert dev._workers([]) == []
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 3")
    assert dev._workers([]) == []
    monkeypatch.delenv("PYTEST_ADDOPTS")
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert dev._workers([]) == []
