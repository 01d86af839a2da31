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
