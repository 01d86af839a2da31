"""Numba kernels over flat CSR peak arrays, imported as ``fastspec.kernels``."""
