"""Window arithmetic shared by the Numba conv and pooling kernels.

Both sweep a kernel tap over the output positions of one row: tap offset
``t`` of output position ``o`` reads input ``o * stride - pad + t``. Instead
of testing every read against the input bounds, the kernels ask once per
tap which contiguous range of output positions reads inside the input, and
run a branch-free (vectorisable) loop over just that range.
"""

from __future__ import annotations

import numba
import numpy as np

from fastconv import config

#: Index type for hot loops. With a signed index Numba checks every access
#: for a negative value (to wrap it), which stops LLVM from vectorising the
#: loop (3-4x slower im2col here); the kernels' indices are never negative.
uindex = np.uintp


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def valid_out_range(out_size, in_size, stride, pad_before, tap_offset):
    """[lo, hi) of output positions ``o`` whose input
    ``o * stride - pad_before + tap_offset`` lies in ``[0, in_size)``
    (``lo == hi`` when there are none)."""
    first = pad_before - tap_offset  # need o * stride >= first
    lo = 0 if first <= 0 else (first + stride - 1) // stride
    last = in_size - 1 + pad_before - tap_offset  # need o * stride <= last
    hi = 0 if last < 0 else last // stride + 1
    if hi > out_size:
        hi = out_size
    if lo > hi:
        lo = hi
    return lo, hi


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def tap_ranges(out_size, in_size, stride, pad_before, kernel, dilation):
    """(lo, hi) int64 arrays of ``valid_out_range`` for each of ``kernel``
    taps ``0, dilation, 2 * dilation, ...``."""
    lo = np.empty(kernel, dtype=np.int64)
    hi = np.empty(kernel, dtype=np.int64)
    for tap in range(kernel):
        lo[tap], hi[tap] = valid_out_range(out_size, in_size, stride,
                                           pad_before, tap * dilation)
    return lo, hi
