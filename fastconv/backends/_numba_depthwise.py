"""Numba direct depthwise conv2d forward: no im2col, no BLAS.

For a convolution whose groups each hold one input channel
(``in_channels == groups``), with ``multiplier = out_channels // groups``
filters per group, output channel ``k`` reads input channel
``k // multiplier`` through its own R x S filter. An im2col GEMM per group
would then be R * S one-row GEMMs, where BLAS spends its time on overhead;
this kernel instead sweeps each tap over whole output rows:

    y_row[ow] += weight[k, 0, r, s] * x_row[ow * stride_w + s * dilation_w - pad_left]

for ``ow`` in the tap's valid range (``_numba_windows.tap_ranges``, computed
once per call), so padding costs no branch and LLVM vectorises the loop.
Each output row is summed in place (it stays in L1 while its R * S taps go
over it), in the input dtype.

Shapes, flat in C order: x (N, C, H, W), weight (K, 1, R, S), bias (K,) or
zero-length (no bias), y (N, K, OH, OW).
"""

from __future__ import annotations

import numba
from numba import prange

from fastconv import config
from fastconv.backends._numba_windows import tap_ranges, uindex

_u = uindex  # unsigned: no negative-index checks, so the loops vectorise


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def _add_tap(y, dst, x, src, weight, lo, hi, stride_w):
    """y[dst + ow] += weight * x[src + ow * stride_w] for ow in [lo, hi)."""
    if stride_w == 1:
        for ow in range(lo, hi):
            y[_u(dst + ow)] += weight * x[_u(src + ow)]
    else:
        for ow in range(lo, hi):
            y[_u(dst + ow)] += weight * x[_u(src + ow * stride_w)]


@numba.njit(parallel=True, cache=config.NUMBA_CACHE)
def depthwise_forward_kernel(x, weight, bias, y, g, tile_rows):
    """y = depthwise conv(x, weight) + bias, all flat (see module docstring).

    Work items are (image, output channel, tile of ``tile_rows`` output rows),
    spread over the threads by ``prange``; a tile shorter than a plane lets a
    single plane use every thread.
    """
    in_h, in_w = g.in_height, g.in_width
    out_h, out_w = g.out_height, g.out_width
    out_channels = g.out_channels
    multiplier = out_channels // g.in_channels
    taps_r, taps_s = g.kernel_height, g.kernel_width
    stride_h, stride_w = g.stride_h, g.stride_w
    dilation_h, dilation_w = g.dilation_h, g.dilation_w
    pad_top, pad_left = g.pad_top, g.pad_left
    lo, hi = tap_ranges(out_w, in_w, stride_w, pad_left, taps_s, dilation_w)
    tiles_per_plane = (out_h + tile_rows - 1) // tile_rows
    n_items = g.batch * out_channels * tiles_per_plane
    has_bias = bias.size > 0
    for item in prange(n_items):
        plane = item // tiles_per_plane
        oh_start = (item % tiles_per_plane) * tile_rows
        oh_stop = min(out_h, oh_start + tile_rows)
        image = plane // out_channels
        k = plane % out_channels
        x_plane = (image * g.in_channels + k // multiplier) * in_h * in_w
        first_weight = k * taps_r * taps_s
        for oh in range(oh_start, oh_stop):
            dst = (plane * out_h + oh) * out_w
            if has_bias:
                value = bias[k]
                for ow in range(out_w):
                    y[_u(dst + ow)] = value
            else:
                for ow in range(out_w):
                    y[_u(dst + ow)] = 0
            for r in range(taps_r):
                ih = oh * stride_h - pad_top + r * dilation_h
                if ih < 0 or ih >= in_h:
                    continue
                # may be negative; every index read from it is not
                row = x_plane + ih * in_w - pad_left
                for s in range(taps_s):
                    _add_tap(y, dst, x, row + s * dilation_w,
                             weight[first_weight + r * taps_s + s],
                             lo[s], hi[s], stride_w)
