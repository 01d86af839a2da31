"""The shared MassBank files: expected counts, agreement between formats and with matchms."""
from __future__ import annotations

import numpy as np
import pytest

import fastspec.io as fio
from fastspec.spectra import CANONICAL_KEYS


@pytest.fixture(scope="module")
def parquet_spectra(massbank_parquet):
    sp, report = fio.read(massbank_parquet, return_report=True)
    return sp, report


def test_parquet_counts_and_metadata(parquet_spectra, massbank_parquet):
    import pyarrow.parquet as pq

    sp, report = parquet_spectra
    report.check()
    assert (report.n_records, len(sp), report.n_rejected) == (64_463, 64_463, 0)
    # all source columns kept (peaks become the CSR arrays)
    source = set(pq.read_schema(massbank_parquet).names) - {"mz", "intensity"}
    assert source <= set(sp.metadata.column_names)
    assert list(sp.metadata.column_names[: len(CANONICAL_KEYS)]) == list(CANONICAL_KEYS)
    assert sp.metadata.column("precursor_type").null_count < len(sp)  # alias kept next to adduct
    assert int((sp.polarity == 1).sum()) == 47_846 and int((sp.polarity == -1).sum()) == 16_617
    assert int((sp.charge == -2).sum()) == 20
    assert np.isnan(sp.precursor_mz).sum() == 1_999
    assert report.n_zero_intensity == 676
    # sorted within each spectrum
    d = np.diff(sp.mz)
    seg = np.repeat(np.arange(len(sp)), np.diff(sp.offsets))
    assert not (d < 0)[seg[1:] == seg[:-1]].any()


def test_parquet_chunked_equals_whole(parquet_spectra, massbank_parquet):
    sp, _ = parquet_spectra
    report = fio.ReadReport()
    n = 0
    for chunk in fio.iter_read(massbank_parquet, chunk_size=20_000, report=report):
        assert np.array_equal(chunk.mz, sp.mz[sp.offsets[n]: sp.offsets[n + len(chunk)]])
        n += len(chunk)
    assert n == len(sp) and report.check().n_spectra == len(sp)


@pytest.mark.parametrize("which, expected", [("mgf", 1000), ("msp", 500)])
def test_text_files_agree_with_parquet(parquet_spectra, massbank_mgf, massbank_msp, which, expected):
    path = massbank_mgf if which == "mgf" else massbank_msp
    sp, report = fio.read(path, return_report=True)
    report.check()
    assert (len(sp), report.n_rejected) == (expected, 0)
    ref, _ = parquet_spectra
    row = {sid: i for i, sid in enumerate(ref.ids)}
    idx = np.array([row[s] for s in sp.ids])
    other = ref.take(idx)
    assert np.array_equal(sp.offsets, other.offsets)
    assert np.array_equal(sp.mz, other.mz)
    assert np.array_equal(sp.intensity, other.intensity)
    assert np.array_equal(sp.precursor_mz, other.precursor_mz, equal_nan=True)
    assert np.array_equal(sp.charge, other.charge)
    for key in ("ion_mode", "adduct", "formula", "smiles", "inchikey", "inchikey14", "name", "instrument_type",
                "instrument", "collision_energy"):
        assert sp.column(key) == other.column(key), key


def test_mgf_matches_matchms(massbank_mgf):
    pytest.importorskip("matchms")
    from matchms.importing import load_from_mgf

    sp = fio.read(massbank_mgf)
    ref = list(load_from_mgf(str(massbank_mgf)))
    assert len(ref) == len(sp)
    for i, r in enumerate(ref):
        assert np.array_equal(sp[i].mz, r.peaks.mz)  # zero-intensity peaks included, as matchms keeps them
        assert np.array_equal(sp[i].intensity, r.peaks.intensities.astype(np.float32))
        assert sp[i].precursor_mz == r.get("precursor_mz")
        assert sp[i].charge == (r.get("charge") or 0)
        assert sp[i].get("inchikey") == r.get("inchikey")
