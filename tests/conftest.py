"""Shared test fixtures. Real MassBank data is read from ../shared/data/massbank (or $FASTSPEC_SHARED)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared data folder: $FASTSPEC_SHARED, else ``<repo>/../shared``."""
    env = os.environ.get("FASTSPEC_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def massbank_dir() -> Path:
    return shared_dir() / "data" / "massbank"


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data missing in CI: {path}")
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def massbank_parquet() -> Path:
    return _require(massbank_dir() / "massbank_open.parquet")


@pytest.fixture(scope="session")
def massbank_mgf() -> Path:
    return _require(massbank_dir() / "massbank_sample.mgf")


@pytest.fixture(scope="session")
def massbank_msp() -> Path:
    return _require(massbank_dir() / "massbank_sample.msp")
