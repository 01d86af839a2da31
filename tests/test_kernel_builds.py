"""Every ``@pjit`` kernel has a parallel and a serial build (``Kernel.pick``); both must give the same
results, and each must be a build of its own (numba's cache must not hand one the other's code)."""
from __future__ import annotations

import numpy as np
import pytest

from fastspec import preprocess, similarity
from fastspec.io import read
from fastspec.kernels import _config
from fastspec.kernels import entropy as ek
from fastspec.kernels import fragment as fk
from fastspec.kernels import peaks as pk
from fastspec.kernels import tanimoto as tk
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


#: ``@pjit`` kernels of row-wise peak processing, entropy normalisation, Tanimoto and the sorted peak index
#: that the pass above never runs in parallel (its public entry points are called here directly)
ROW_KERNELS = {
    "peaks._remove_precursor": pk._remove_precursor, "peaks._noise_cut": pk._noise_cut, "peaks._top_k": pk._top_k,
    "peaks._merge": pk._merge, "peaks._normalize": pk._normalize, "peaks._weight": pk._weight,
    "peaks._top_peaks": pk._top_peaks, "peaks._gather_rows": pk._gather_rows,
    "entropy._normalize_kernel": ek._normalize_kernel, "tanimoto._pairs": tk._pairs, "tanimoto._max_csr": tk._max_csr,
    "fragment._peak_spectra": fk._peak_spectra, "fragment._unpack_keys": fk._unpack_keys,
}


def _run_row_kernels(sp):
    """Every public entry point of ``ROW_KERNELS`` on raw MassBank peaks (2 threads); every output array."""
    off, mz, it, pmz = sp.offsets, sp.mz, sp.intensity, sp.precursor_mz
    n = len(sp)
    rng = np.random.default_rng(5)
    out = []
    out += pk.remove_precursor_csr(off, mz, it, pmz, 1.6, True, threads=2)
    out += pk.remove_precursor_csr(off, mz, it, pmz, 5.0, False, threads=2)
    out += pk.noise_cut_csr(off, mz, it, 0.05, threads=2)
    for k in (1, 5, 20):
        out += pk.top_k_csr(off, mz, it, k, threads=2)
    merged = pk.merge_peaks_csr(off, mz, it, da=0.5, threads=2)
    assert merged[0][-1] < off[-1]  # spectra took the merging path, not only the already-separated one
    out += merged
    out += pk.merge_peaks_csr(off, mz, it, ppm=300.0, threads=2)
    for how in ("max", "sum", "l2"):
        out += pk.normalize_csr(off, mz, it, how, threads=2)
    out += pk.weight_csr(off, mz, it, 1.0, 0.5, threads=2)
    out.append(pk.top_peaks_mz(off, mz, it, threads=2))
    out += pk.gather_csr(off, mz, it, rng.integers(0, n, 3 * n), threads=2)
    out += ek.prepare_entropy(off, mz, it, tol_da=0.02, tol_ppm=0.0, clean=False, threads=2)
    fp = rng.integers(0, 2**63, size=(60, 3), dtype=np.uint64)
    fp[::7] = 0  # empty fingerprints: Tanimoto 0
    ia, ib = rng.integers(0, 60, 500), rng.integers(0, 60, 500)
    out.append(tk.tanimoto_pairs(fp, ia, fp[::-1].copy(), ib, threads=2))
    cand_off = np.concatenate([[0], np.cumsum(rng.integers(0, 12, 60))])
    out += tk.max_tanimoto_csr(fp, np.arange(60), cand_off, rng.integers(0, 60, cand_off[-1]), fp, threads=2)
    groups = (np.asarray(sp.polarity) > 0).astype(np.int8)
    out += fk.sorted_peak_index(off, mz, groups=groups, n_groups=2, threads=2)
    out += fk.sorted_peak_index(off, mz, rows_ok=np.isfinite(pmz), groups=groups, n_groups=2, precursor_mz=pmz,
                                threads=2)
    return out


def test_row_kernels_parallel_and_serial_builds_agree(spectra, monkeypatch):
    """The parallel build of each kernel in ``ROW_KERNELS`` runs (SERIAL_BELOW 0) and gives the serial
    build's output bit for bit."""
    if _config.max_threads() < 2:
        pytest.skip("one numba thread: the parallel builds are never picked")
    calls = {}

    def spy(name, build, fn):
        def run(*args):
            calls[name, build] = calls.get((name, build), 0) + 1
            return fn(*args)
        return run

    for name, kern in ROW_KERNELS.items():
        assert isinstance(kern, _config.Kernel), name
        monkeypatch.setattr(kern, "parallel", spy(name, "parallel", kern.parallel))
        monkeypatch.setattr(kern, "serial", spy(name, "serial", kern.serial))
    monkeypatch.setattr(_config, "SERIAL_BELOW", 0)
    par = _run_row_kernels(spectra)
    assert sorted(n for n, b in calls if b == "parallel") == sorted(ROW_KERNELS) and not any(
        b == "serial" for _, b in calls), calls
    calls.clear()
    monkeypatch.setattr(_config, "SERIAL_BELOW", 1 << 62)
    ser = _run_row_kernels(spectra)
    assert sorted(n for n, b in calls if b == "serial") == sorted(ROW_KERNELS) and not any(
        b == "parallel" for _, b in calls), calls
    assert len(par) == len(ser)
    for i, (a, b) in enumerate(zip(par, ser)):
        assert a.dtype == b.dtype, i
        np.testing.assert_array_equal(a, b, err_msg=str(i))


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
