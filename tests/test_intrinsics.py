"""The prefetch intrinsic: compiles for the array and index types the kernels use, changes no result,
and emits a prefetch instruction on x86."""
import platform

import numba
import numpy as np
import pytest

from fastspec.kernels._intrinsics import prefetch_row


@numba.njit
def _gather_with_prefetch(a, idx):
    s = 0.0
    for i in range(idx.shape[0]):
        if i + 4 < idx.shape[0]:
            prefetch_row(a, idx[i + 4])
        s += a[idx[i]] if a.ndim == 1 else a[idx[i], 0]
    return s


@pytest.mark.parametrize("shape", [(1000,), (1000, 2)])
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_prefetch_changes_nothing(shape, idx_dtype):
    rng = np.random.default_rng(0)
    a = rng.random(shape).astype(np.float32)
    idx = rng.integers(0, shape[0], 300).astype(idx_dtype)
    ref = float(np.sum((a if a.ndim == 1 else a[:, 0])[idx].astype(np.float64)))
    assert _gather_with_prefetch(a, idx) == pytest.approx(ref, rel=1e-12)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction name")
def test_prefetch_emits_an_instruction():
    a, idx = np.zeros((8, 2), np.float32), np.arange(8, dtype=np.int32)
    _gather_with_prefetch(a, idx)
    asm = _gather_with_prefetch.inspect_asm(_gather_with_prefetch.signatures[-1])
    assert "prefetch" in asm
