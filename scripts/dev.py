#!/usr/bin/env python3
"""Set up a private virtual environment and run fastspec's main job or its test suite.

    python3 scripts/dev.py demo [DEMO ARGS...]   # install fastspec, run `fastspec demo`
    python3 scripts/dev.py test [PYTEST ARGS...] # install fastspec[test,...], run the whole test suite

Only needs Python >= 3.10 with the standard ``venv`` module. The environment lives in ``.venv`` at the
repository root (override with ``FASTSPEC_VENV``); re-running reuses it and only reinstalls when
pyproject.toml changed.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("FASTSPEC_VENV", ROOT / ".venv"))
EXTRAS = {"demo": "", "test": "[test,chem,mzml,plot,dist]"}
#: optional packages installed where a wheel exists (the tests that need one skip elsewhere, saying so)
BEST_EFFORT = {"demo": [], "test": ["pynumpress>=0.1.5"]}


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _ensure_env(extras: str, optional: list[str]) -> None:
    if not _bin("python").exists():
        print(f"[dev] creating virtual environment in {VENV}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    stamp_key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode() + " ".join(optional).encode()).hexdigest()
    stamp = VENV / f".fastspec-installed-{stamp_key[:16]}"
    if stamp.exists():
        return
    py = str(_bin("python"))
    print(f"[dev] installing fastspec{extras} (editable) into {VENV}", file=sys.stderr, flush=True)
    subprocess.check_call([py, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools>=77", "wheel"])
    subprocess.check_call([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}{extras}"])
    for pkg in optional:  # wheels only: a failing source build would cost minutes and prove nothing
        # (pip's own "ERROR: Could not find a version" lines would read as a failed set-up: not shown)
        if subprocess.call([py, "-m", "pip", "install", "-q", "--only-binary=:all:", pkg],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            print(f"[dev] {pkg} has no wheel for this platform (Python {sys.version_info.major}."
                  f"{sys.version_info.minor}); the tests that need it skip", file=sys.stderr)
    stamp.touch()


#: pytest options that need one process (a debugger, output not captured): no workers with them
_SERIAL = ("--pdb", "--trace", "-s", "--capture=no")


def _workers(args: list[str]) -> list[str]:
    """pytest-xdist options for the suite: two worker processes where there are two cores or more; none
    when the caller chose (``-n``, ``--numprocesses``, xdist disabled with ``-p no:xdist`` in the
    arguments or ``PYTEST_ADDOPTS``), asked for a debugger or uncaptured output, or on one core. From a
    fresh clone with a cold numba cache (2026-12-07, AMD EPYC VM, 2 cores): one process 8:14 of tests
    (9:19 wall with the install), two workers 4:07 (4:53): much of a cold run is numba compiling, one
    kernel at a time."""
    every = list(args) + shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    chosen = any("no:xdist" in a or a.startswith(("-n", "--numprocesses")) or a in _SERIAL for a in every)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [] if chosen or cores < 2 else ["-n", "2"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    _ensure_env(EXTRAS[cmd], BEST_EFFORT[cmd])
    env = dict(os.environ)
    if cmd == "demo":
        return subprocess.call([str(_bin("fastspec")), "demo", *rest], env=env)
    code = subprocess.call([str(_bin("python")), "-m", "pytest", "-q", *_workers(rest), *rest], cwd=ROOT, env=env)
    if code == 5:  # pytest collected nothing: never let that pass as a green run
        print("[dev] pytest collected no tests", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
