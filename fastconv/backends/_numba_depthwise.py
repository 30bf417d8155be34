"""Numba direct depthwise conv2d forward: no im2col, no BLAS.

For a convolution whose groups each hold one input channel
(``in_channels == groups``), with ``multiplier = out_channels // groups``
filters per group, output channel ``k`` reads input channel
``k // multiplier`` through its own R x S filter. An im2col GEMM per group
would then be R * S one-row GEMMs, where BLAS spends its time on overhead;
this kernel instead sweeps each tap over whole output rows:

    y_row[ow] += weight[k, 0, r, s]
                 * x_row[ow * stride_w + s * dilation_w - pad_left]

for ``ow`` in the tap's valid range (``_numba_windows.tap_ranges``, computed
once per call), so padding costs no branch and LLVM vectorises the loop.
Each output row is summed in place (it stays in L1 while its R * S taps go
over it), in the input dtype. On rows at least
``numba_cpu.DEPTHWISE_FUSED_TAPS_MIN_WIDTH`` wide, three taps share one
sweep (one load and store of the row per three products), and a kernel
row's last two taps share one.

Small stride-1 planes (``numba_cpu.DEPTHWISE_PADDED_PLANE_MAX``) go another
way: copied into a zero-padded plane, where each tap is a single sweep over
all output rows at once (``_padded_plane_forward``), rather than R * S
short loops per row whose loop overhead would dominate.

Shapes, flat in C order: x (N, C, H, W), weight (K, 1, R, S), bias (K,) or
zero-length (no bias), y (N, K, OH, OW).
"""

from __future__ import annotations

import numba
import numpy as np
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


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def _add_three_taps(y, dst, x, src, dilation_w, w0, w1, w2, lo, hi,
                    stride_w):
    """Three adjacent taps (``dilation_w`` apart) in one sweep over [lo, hi):
    one load and store of y per three products."""
    src1 = src + dilation_w
    src2 = src1 + dilation_w
    if stride_w == 1:
        for ow in range(lo, hi):
            y[_u(dst + ow)] += (w0 * x[_u(src + ow)] + w1 * x[_u(src1 + ow)]
                                + w2 * x[_u(src2 + ow)])
    else:
        for ow in range(lo, hi):
            i = ow * stride_w
            y[_u(dst + ow)] += (w0 * x[_u(src + i)] + w1 * x[_u(src1 + i)]
                                + w2 * x[_u(src2 + i)])


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def _add_two_taps(y, dst, x, src, dilation_w, w0, w1, lo, hi, stride_w):
    """Two adjacent taps (``dilation_w`` apart) in one sweep over [lo, hi)."""
    src1 = src + dilation_w
    if stride_w == 1:
        for ow in range(lo, hi):
            y[_u(dst + ow)] += w0 * x[_u(src + ow)] + w1 * x[_u(src1 + ow)]
    else:
        for ow in range(lo, hi):
            i = ow * stride_w
            y[_u(dst + ow)] += w0 * x[_u(src + i)] + w1 * x[_u(src1 + i)]


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def _add_fused_taps(y, dst, x, src, dilation_w, weight, first_weight, lo, hi,
                    s, count, stride_w):
    """Taps s .. s + count - 1 (``count`` 2 or 3) of one kernel row: fused
    where all of them are valid, one by one on the edges where only some
    are."""
    both_lo, both_hi = lo[s], hi[s]
    for t in range(1, count):
        both_lo = max(both_lo, lo[s + t])
        both_hi = min(both_hi, hi[s + t])
    both_hi = max(both_lo, both_hi)
    for t in range(count):
        tap_src = src + t * dilation_w
        tap_weight = weight[first_weight + t]
        _add_tap(y, dst, x, tap_src, tap_weight, lo[s + t],
                 max(lo[s + t], min(hi[s + t], both_lo)), stride_w)
        _add_tap(y, dst, x, tap_src, tap_weight,
                 min(hi[s + t], max(lo[s + t], both_hi)), hi[s + t], stride_w)
    if count == 3:
        _add_three_taps(y, dst, x, src, dilation_w, weight[first_weight],
                        weight[first_weight + 1], weight[first_weight + 2],
                        both_lo, both_hi, stride_w)
    else:
        _add_two_taps(y, dst, x, src, dilation_w, weight[first_weight],
                      weight[first_weight + 1], both_lo, both_hi, stride_w)


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def _padded_plane_forward(x, x_plane, weight, first_weight, value, y, y_plane,
                          g):
    """One whole stride-1 plane through a zero-padded copy of its input.

    In the padded copy (rows Wp = W + pad_left + pad_right values long) tap
    (r, s) of output (oh, ow) reads ``p + r * dilation_h * Wp + s *
    dilation_w`` with ``p = oh * Wp + ow``: every tap is one sweep of all
    output rows at once, computed Wp wide (the columns past OW are thrown
    away), which for small planes beats R * S short sweeps per row.
    ``value`` is the bias (or 0).
    """
    in_h, in_w = g.in_height, g.in_width
    out_h, out_w = g.out_height, g.out_width
    taps_r, taps_s = g.kernel_height, g.kernel_width
    padded_w = in_w + g.pad_left + g.pad_right
    padded = np.zeros((in_h + g.pad_top + g.pad_bottom) * padded_w,
                      dtype=x.dtype)
    for ih in range(in_h):
        src = x_plane + ih * in_w
        dst = (ih + g.pad_top) * padded_w + g.pad_left
        for iw in range(in_w):
            padded[_u(dst + iw)] = x[_u(src + iw)]
    span = (out_h - 1) * padded_w + out_w
    wide = np.empty(span, dtype=x.dtype)
    for p in range(span):
        wide[_u(p)] = value
    for r in range(taps_r):
        row = r * g.dilation_h * padded_w
        s = 0
        while s + 2 < taps_s:
            w = first_weight + r * taps_s + s
            _add_three_taps(wide, 0, padded, row + s * g.dilation_w,
                            g.dilation_w, weight[w], weight[w + 1],
                            weight[w + 2], 0, span, 1)
            s += 3
        if s + 1 < taps_s:
            w = first_weight + r * taps_s + s
            _add_two_taps(wide, 0, padded, row + s * g.dilation_w,
                          g.dilation_w, weight[w], weight[w + 1], 0, span, 1)
            s += 2
        for s in range(s, taps_s):
            _add_tap(wide, 0, padded, row + s * g.dilation_w,
                     weight[first_weight + r * taps_s + s], 0, span, 1)
    for oh in range(out_h):
        src = oh * padded_w
        dst = y_plane + oh * out_w
        for ow in range(out_w):
            y[_u(dst + ow)] = wide[_u(src + ow)]


@numba.njit(parallel=True, cache=config.NUMBA_CACHE)
def depthwise_forward_kernel(x, weight, bias, y, g, tile_rows, fuse_taps,
                             padded_planes):
    """y = depthwise conv(x, weight) + bias, all flat (see module docstring).

    Work items are (image, output channel, tile of ``tile_rows`` output rows),
    spread over the threads by ``prange``; a tile shorter than a plane lets a
    single plane use every thread. ``fuse_taps``: three (or two) taps per
    row sweep.
    ``padded_planes`` (stride 1 and ``tile_rows == out_height`` only): each
    plane through a zero-padded copy (``_padded_plane_forward``).
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
    zero = np.zeros(1, dtype=x.dtype)[0]  # the bias of no bias, typed
    for item in prange(n_items):
        plane = item // tiles_per_plane
        oh_start = (item % tiles_per_plane) * tile_rows
        oh_stop = min(out_h, oh_start + tile_rows)
        image = plane // out_channels
        k = plane % out_channels
        x_plane = (image * g.in_channels + k // multiplier) * in_h * in_w
        first_weight = k * taps_r * taps_s
        value = bias[k] if has_bias else zero
        if padded_planes:  # stride 1, whole planes (tile_rows == out_h)
            _padded_plane_forward(x, x_plane, weight, first_weight, value, y,
                                  plane * out_h * out_w, g)
            continue
        for oh in range(oh_start, oh_stop):
            dst = (plane * out_h + oh) * out_w
            for ow in range(out_w):
                y[_u(dst + ow)] = value
            for r in range(taps_r):
                ih = oh * stride_h - pad_top + r * dilation_h
                if ih < 0 or ih >= in_h:
                    continue
                # may be negative; every index read from it is not
                row = x_plane + ih * in_w - pad_left
                s = 0
                while fuse_taps and s + 1 < taps_s:  # triples, then a pair
                    count = min(3, taps_s - s)
                    _add_fused_taps(y, dst, x, row + s * dilation_w,
                                    dilation_w, weight,
                                    first_weight + r * taps_s + s, lo, hi, s,
                                    count, stride_w)
                    s += count
                for s in range(s, taps_s):
                    _add_tap(y, dst, x, row + s * dilation_w,
                             weight[first_weight + r * taps_s + s],
                             lo[s], hi[s], stride_w)
