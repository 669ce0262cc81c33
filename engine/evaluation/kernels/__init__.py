"""numba kernels: quality control, windows, derived metrics and level evaluation."""
