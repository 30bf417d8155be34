"""Numba dropout kernels: the counter-based keep mask and its application.

The hash is ``fastconv._dropout_hash`` (SplitMix64's finaliser) written in
uint64 only: in Numba, uint64 combined with int64 is promoted to float64,
which would silently lose bits, so every constant and the counter are
uint64 before they meet.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import _dropout_hash, config

_CACHE = config.NUMBA_CACHE

_GOLDEN_GAMMA = np.uint64(_dropout_hash.GOLDEN_GAMMA)
_MIX_MULT_1 = np.uint64(_dropout_hash.MIX_MULT_1)
_MIX_MULT_2 = np.uint64(_dropout_hash.MIX_MULT_2)
_SHIFT_27 = np.uint64(27)
_SHIFT_30 = np.uint64(30)
_SHIFT_31 = np.uint64(31)
_SHIFT_32 = np.uint64(32)


@numba.njit(parallel=True, cache=_CACHE)
def dropout_mask_kernel(mask, key, threshold):
    """mask[i] = keep_bits(key, i) >= threshold, for every i (uint64 key
    and threshold; threshold in [0, 2**32])."""
    for i in prange(mask.size):
        z = key + np.uint64(i) * _GOLDEN_GAMMA
        z = (z ^ (z >> _SHIFT_30)) * _MIX_MULT_1
        z = (z ^ (z >> _SHIFT_27)) * _MIX_MULT_2
        z = z ^ (z >> _SHIFT_31)
        mask[np.uintp(i)] = (z >> _SHIFT_32) >= threshold


@numba.njit(parallel=True, cache=_CACHE)
def dropout_apply_kernel(x, mask, scale, y):
    """y[i] = x[i] * scale where mask[i], else 0 (flat arrays; ``scale`` in
    x's dtype). A select, not a branch: it vectorises, and a dropped NaN or
    inf still gives 0 as in the reference."""
    zero = scale - scale  # a 0 of x's dtype (scale is finite)
    for i in prange(x.size):
        # unsigned index: no negative-index wrap check, so it vectorises
        index = np.uintp(i)
        y[index] = x[index] * scale if mask[index] else zero
