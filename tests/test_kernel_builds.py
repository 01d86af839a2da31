"""Every ``@pjit`` kernel has a parallel and a serial build (``Kernel.pick``); both must give the same
results, and each must be a build of its own (numba's cache must not hand one the other's code)."""
from __future__ import annotations

import numpy as np
import pytest

from fastspec import preprocess, similarity
from fastspec.io import read
from fastspec.kernels import _config
from fastspec.kernels.fragment import below_precursor_weights, peak_weights, scaled_entries
from fastspec.kernels.tanimoto import tanimoto_matrix
from fastspec.vectors import nearest_lists, spectrum_vectors


@pytest.fixture(scope="module")
def spectra(massbank_parquet):
    sp = read(massbank_parquet)
    rng = np.random.default_rng(3)
    return sp.take(np.sort(rng.choice(len(sp), 120, replace=False)))


def _run_all(sp):
    """A pass through the kernels with parallel and serial builds; returns every output array."""
    pp = preprocess.default_pipeline()(sp)
    out = [pp.offsets, pp.mz, pp.intensity]
    for metric in ("cosine", "modified_cosine", "entropy"):
        p = similarity.prepare(pp, metric, 0.02)
        s, m = similarity.score_matrix(p, p, metric, threads=2)
        ts, ti, tm = similarity.score_matrix(p, p, metric, k=5, threads=2)
        ps, pm = similarity.score_pairs(p, p.take(np.arange(len(p))[::-1]), metric, threads=2)
        out += [s, m, ts, ti, tm, ps, pm, p.w]
    out.append(peak_weights(pp.offsets, pp.mz, pp.intensity, "cosine", threads=2))
    out.append(peak_weights(pp.offsets, pp.mz, pp.intensity, "entropy", threads=2))
    nl_w, scale = below_precursor_weights(pp.offsets[:-1], pp.offsets[1:], pp.mz, out[-2], pp.precursor_mz, threads=2)
    seg = np.repeat(np.arange(len(pp), dtype=np.int32), np.diff(pp.offsets))
    out += [nl_w, scale, scaled_entries((pp.precursor_mz[seg] - pp.mz).astype(np.float32), seg, out[-2], scale,
                                        threads=2)]
    fp = np.random.default_rng(0).integers(0, 2**63, size=(40, 4), dtype=np.uint64)
    out.append(tanimoto_matrix(fp, threads=2))
    vec = spectrum_vectors(pp, None, threads=2)
    out += [vec, nearest_lists(vec, np.ascontiguousarray(vec[::9].T), threads=2)]
    return out


def test_parallel_and_serial_builds_agree(spectra, monkeypatch):
    if _config.max_threads() < 2:
        pytest.skip("one numba thread: the parallel builds are never picked")
    monkeypatch.setattr(_config, "SERIAL_BELOW", 0)  # every kernel call parallel (2 threads)
    par = _run_all(spectra)
    monkeypatch.setattr(_config, "SERIAL_BELOW", 1 << 62)  # every kernel call serial
    ser = _run_all(spectra)
    assert len(par) == len(ser)
    for a, b in zip(par, ser):
        np.testing.assert_array_equal(a, b)


def test_pick_rules():
    k = _config.Kernel(lambda x: x)
    assert k.pick(1, threads=2) is k.serial
    assert k.pick(10 ** 9, threads=1) is k.serial
    assert k.pick(10 ** 9, threads=2) is (k.parallel if _config.max_threads() >= 2 else k.serial)
    assert k.pick(10 ** 9, threads=10 ** 6) is (k.parallel if _config.max_threads() >= 2 else k.serial)
    # distinct qualified names: numba files cached machine code under them
    assert k.serial.py_func.__qualname__ != k.parallel.py_func.__qualname__
    assert k.serial.targetoptions.get("parallel") is None and k.parallel.targetoptions["parallel"]


def test_threads_context():
    """One thread: serial builds only, numba's count untouched (no set/restore per kernel call); more:
    the count is set inside and restored after."""
    import numba

    before = numba.get_num_threads()
    with _config.threads(1) as n:
        assert n == 1 and numba.get_num_threads() == before
    with _config.threads(0) as n:
        assert n == 1
    if _config.max_threads() >= 2:
        numba.set_num_threads(1)
        try:
            with _config.threads(2) as n:
                assert n == 2 and numba.get_num_threads() == 2
            assert numba.get_num_threads() == 1
        finally:
            numba.set_num_threads(before)
