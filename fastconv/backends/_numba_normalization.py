"""Numba batch normalisation kernels on (N * C, L) rows, flat arrays.

A reduction sums each row alone in float64 (row r belongs to channel
r % C); the caller adds a channel's N row results in order, so the bits do
not depend on the thread count. ``fastmath={'reassoc'}`` lets LLVM keep
several partial sums in vector lanes: a fixed order still, chosen at
compile time.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import config

_CACHE = config.NUMBA_CACHE


@numba.njit(parallel=True, cache=_CACHE, fastmath={"reassoc"})
def row_sums_kernel(x, length, centres, squares, rows):
    """rows[r] = sum over row r of (x - centres[r % C]), or of its square
    when ``squares`` (C = len(centres))."""
    channels = centres.size
    for r in prange(rows.size):
        start = r * length
        centre = centres[r % channels]
        total = 0.0
        if squares:
            for i in range(start, start + length):
                difference = np.float64(x[i]) - centre
                total += difference * difference
        else:
            for i in range(start, start + length):
                total += np.float64(x[i]) - centre
        rows[r] = total


@numba.njit(parallel=True, cache=_CACHE, fastmath={"reassoc"})
def row_grad_sums_kernel(grad_output, x, length, sums, dots):
    """sums[r], dots[r] = sum(g) and sum(g * x) over row r."""
    for r in prange(sums.size):
        start = r * length
        total = 0.0
        dot = 0.0
        for i in range(start, start + length):
            value = np.float64(grad_output[i])
            total += value
            dot += value * np.float64(x[i])
        sums[r] = total
        dots[r] = dot


@numba.njit(parallel=True, cache=_CACHE)
def affine_kernel(a, a_scale, b, centre, b_scale, shift, length, y):
    """y = a * a_scale[c] + (b - centre[c]) * b_scale[c] + shift[c] per
    row; b empty: y = (a - centre[c]) * b_scale[c] + shift[c]."""
    channels = shift.size
    rows = y.size // length if length else 0
    for r in prange(rows):
        c = r % channels
        start = r * length
        if b.size:
            for i in range(start, start + length):
                y[i] = a[i] * a_scale[c] + (b[i] - centre[c]) * b_scale[c] \
                    + shift[c]
        else:
            for i in range(start, start + length):
                y[i] = (a[i] - centre[c]) * b_scale[c] + shift[c]
