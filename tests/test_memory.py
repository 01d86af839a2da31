"""Huge-page scratch arrays (fastspec.kernels._memory)."""
import numpy as np
import pytest

from fastspec.kernels._memory import _HUGE, huge_zeros


@pytest.mark.parametrize("shape,dtype", [((2, 600_000, 2), np.float32), ((3, 1_000_000), np.int32),
                                         ((10,), np.uint16), ((0, 5), np.float64)])
def test_huge_zeros_is_a_zeroed_writable_c_array(shape, dtype):
    a = huge_zeros(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
    assert not a.any()
    if a.size:
        a[(slice(None),) * (a.ndim - 1) + (-1,)] = 7  # the last byte is inside the mapping
        assert int(a.sum()) == 7 * (a.size // a.shape[-1])
    if a.nbytes >= _HUGE:
        assert a.ctypes.data % _HUGE == 0  # huge pages back whole aligned 2 MB ranges


def test_huge_zeros_outlives_its_maker():
    a = huge_zeros((1 << 20,), np.float32)[10:20]  # a view: the mapping stays alive through .base
    import gc

    gc.collect()
    a[:] = 1.5
    assert a.sum() == 15.0


def test_retain_freed_memory_once_and_opt_out(monkeypatch):
    """The malloc thresholds are set once per process (glibc on Linux), and never when the user asked for
    glibc's own behaviour or set its environment variables."""
    import sys

    from fastspec.kernels import _memory

    monkeypatch.setattr(_memory, "_retained", None)
    monkeypatch.setenv("FASTSPEC_MALLOC", "default")
    assert _memory.retain_freed_memory() is False
    monkeypatch.setattr(_memory, "_retained", None)
    monkeypatch.delenv("FASTSPEC_MALLOC")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert _memory.retain_freed_memory() is False
    monkeypatch.setattr(_memory, "_retained", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # (a shell's own; dask's is put back, test_dist)
    got = _memory.retain_freed_memory()
    assert got is _memory.retain_freed_memory()  # remembered
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert got is True
