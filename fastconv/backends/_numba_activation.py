"""Numba ReLU kernels on flat arrays (selects, so that they vectorise).

``zero`` is a 0 of the arrays' dtype, passed in: a select between two
values of one type keeps the loop in that type.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import config

_CACHE = config.NUMBA_CACHE


@numba.njit(parallel=True, cache=_CACHE)
def relu_kernel(x, zero, y):
    """y = x where x >= 0 or NaN, else 0."""
    for i in prange(x.size):
        index = np.uintp(i)
        y[index] = zero if x[index] < zero else x[index]


@numba.njit(parallel=True, cache=_CACHE)
def add_relu_kernel(x, residual, zero, y):
    """y = relu(x + residual), the sum rounded once."""
    for i in prange(x.size):
        index = np.uintp(i)
        value = x[index] + residual[index]
        y[index] = zero if value < zero else value


@numba.njit(parallel=True, cache=_CACHE)
def relu_backward_kernel(grad_output, y, zero, grad_input):
    """grad_input = 0 where y <= 0, else grad_output."""
    for i in prange(y.size):
        index = np.uintp(i)
        grad_input[index] = zero if y[index] <= zero else grad_output[index]
