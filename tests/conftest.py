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


@pytest.fixture(scope="session")
def hlib(massbank_parquet, tmp_path_factory):
    """A 4,000-spectrum MassBank library (both polarities, default preprocessing) and 60 queries: real
    spectra not in it, and library spectra with their precursor moved (losses then differ from
    fragments). For hybrid and neutral-loss search."""
    import numpy as np

    import fastspec
    from fastspec.library import Library
    from fastspec.spectra import Spectra

    sp = fastspec.read(massbank_parquet)
    rng = np.random.default_rng(11)
    ok = np.flatnonzero(np.isfinite(sp.precursor_mz) & (sp.polarity != 0))
    pick = rng.choice(ok, 4060, replace=False)
    lib = Library.build(sp.take(pick[:4000]), tmp_path_factory.mktemp("hyb") / "h.fastspec", faiss=False,
                        progress=False)
    moved = sp.take(pick[:20])
    moved = Spectra.from_arrays([moved[i].mz for i in range(20)], [moved[i].intensity for i in range(20)],
                                precursor_mz=moved.precursor_mz + 14.0157,
                                metadata={"ion_mode": ["positive" if p > 0 else "negative" for p in moved.polarity]})
    return lib, Spectra.concat([sp.take(pick[4000:4040]), moved])


@pytest.fixture(scope="session")
def hlib_flash(hlib):
    """``hlib``'s positive spectra indexed by ms_entropy's FlashEntropySearch from the same stored (clean)
    peaks, and its positive queries preprocessed as the library preprocesses them: (the index, the library
    row of each spectrum in the index's order, the queries)."""
    import numpy as np

    me = pytest.importorskip("ms_entropy")
    from fastspec.library import apply_pipeline

    lib, queries = hlib
    rows = np.flatnonzero(lib.polarity > 0)
    libsp = lib.spectra()
    specs = [{"precursor_mz": float(libsp.precursor_mz[r]),
              "peaks": np.column_stack([libsp[r].mz, libsp[r].intensity]).astype(np.float32), "row": int(r)}
             for r in rows]
    es = me.FlashEntropySearch(max_ms2_tolerance_in_da=0.02)
    row_of = np.array([s["row"] for s in es.build_index(specs)])
    return es, row_of, apply_pipeline(lib.pipeline, queries.take(np.flatnonzero(queries.polarity > 0)))
