"""Numba pooling kernels, parallel over (image, channel) planes.

Arrays are flat (1-D, C order) views of NCHW arrays; plane ``q`` of x is
``x[q * H * W:(q + 1) * H * W]`` and likewise for the outputs. Each plane is
handled by one thread, so the backward scatter-adds never race.

Window loops run across a whole output row in the inner loop (so LLVM can
vectorise them) and visit each window's taps in the reference's row-major
order, so ties, NaNs and float64 sums come out as the reference's:

- max pooling with 2x2 and 3x3 windows (dilation 1, any stride, padding
  and ceil_mode) uses unrolled loops over a -inf padded copy of the plane
  (``_max_2x2``, ``_max_3x3``), and redoes the rare windows whose maximum
  is NaN or -inf with the reference's loop (``_max_window``);
- every other window goes tap by tap over the row (``_max_row``, and the
  average pooling kernels), each tap's in-bounds output columns given by
  ``tap_ranges`` so the loops need no bounds tests.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import config
from fastconv.backends._numba_windows import tap_ranges, uindex as _u

_CACHE = config.NUMBA_CACHE


@numba.njit(cache=_CACHE, nogil=True)
def _max_row(x, x_base, y, indices, y_row, oh, col_lo, col_hi, g, lowest):
    """Max pool output row ``oh`` for any geometry, tap by tap over the
    row (``col_lo``/``col_hi``: each kernel column's in-bounds output
    columns, from ``tap_ranges``)."""
    for ow in range(g.out_width):
        y[_u(y_row + ow)] = lowest
        indices[_u(y_row + ow)] = -1
    for r in range(g.kernel_height):
        ih = oh * g.stride_h - g.pad_h + r * g.dilation_h
        if ih < 0 or ih >= g.in_height:
            continue
        for s in range(g.kernel_width):
            lo = col_lo[s]
            # plane position read by output column lo
            first = (ih * g.in_width + lo * g.stride_w - g.pad_w
                     + s * g.dilation_w)
            for j in range(col_hi[s] - lo):
                position = first + j * g.stride_w
                value = x[_u(x_base + position)]
                best = y[_u(y_row + lo + j)]
                best_index = indices[_u(y_row + lo + j)]
                # larger, a NaN, or the window's first in-bounds tap
                take = (value > best) | (value != value) | (best_index < 0)
                y[_u(y_row + lo + j)] = value if take else best
                indices[_u(y_row + lo + j)] = (position if take
                                               else best_index)


@numba.njit(cache=_CACHE, nogil=True)
def _max_window(x, x_base, oh, ow, g, lowest):
    """(max, index) of one window, the reference's loop."""
    best = lowest
    best_index = -1
    top = oh * g.stride_h - g.pad_h
    left = ow * g.stride_w - g.pad_w
    for r in range(g.kernel_height):
        ih = top + r * g.dilation_h
        if ih < 0 or ih >= g.in_height:
            continue
        for s in range(g.kernel_width):
            iw = left + s * g.dilation_w
            if iw < 0 or iw >= g.in_width:
                continue
            value = x[_u(x_base + ih * g.in_width + iw)]
            if value > best or value != value or best_index < 0:
                best = value
                best_index = ih * g.in_width + iw
    return best, best_index


# 2x2 and 3x3 windows (dilation 1) get unrolled loops over a row of outputs:
# every tap in a register, the maximum by np.maximum (which keeps the
# earlier argument on ties and propagates NaN), then the offset of the first
# tap equal to it picked by comparisons (earlier taps assigned last). All
# branch-free, so LLVM vectorises across output columns. (Updating y and
# indices in place tap by tap, as _max_row does, becomes masked stores,
# which are slow on this CPU; int32 offsets keep the selects as wide as the
# float32 values.)
#
# Output column j reads the window whose top-left tap is at
# ``source[source_start + j * step]`` (rows ``source_width`` apart: x itself,
# or a copy padded with -inf) and whose plane position in x is
# ``index_start + j * step`` (rows ``in_w`` apart). Padding taps are -inf
# (an integer dtype's minimum), so they never beat an in-bounds tap; a window
# whose maximum is that or NaN matches no tap reliably and is redone by the
# caller.

@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _max_2x2(source, source_start, source_width, y, indices, y_row, count,
             index_start, in_w, step):
    below = np.int32(in_w)
    for j in range(count):
        p = source_start + j * step
        q = p + source_width
        a = source[_u(p)]
        b = source[_u(p + 1)]
        c = source[_u(q)]
        d = source[_u(q + 1)]
        best = np.maximum(np.maximum(a, b), np.maximum(c, d))
        offset = below + np.int32(1)
        offset = below if c == best else offset
        offset = np.int32(1) if b == best else offset
        offset = np.int32(0) if a == best else offset
        y[_u(y_row + j)] = best
        indices[_u(y_row + j)] = index_start + j * step + offset


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _max_3x3(source, source_start, source_width, y, indices, y_row, count,
             index_start, in_w, step):
    row_1 = np.int32(in_w)
    row_2 = np.int32(2 * in_w)
    for j in range(count):
        p = source_start + j * step  # top row of the window
        q = p + source_width  # middle row
        r = q + source_width  # bottom row
        a = source[_u(p)]
        b = source[_u(p + 1)]
        c = source[_u(p + 2)]
        d = source[_u(q)]
        e = source[_u(q + 1)]
        f = source[_u(q + 2)]
        u = source[_u(r)]
        v = source[_u(r + 1)]
        w = source[_u(r + 2)]
        best = np.maximum(
            np.maximum(np.maximum(a, b), np.maximum(c, d)),
            np.maximum(np.maximum(e, f), np.maximum(np.maximum(u, v), w)))
        offset = row_2 + np.int32(2)
        offset = row_2 + np.int32(1) if v == best else offset
        offset = row_2 if u == best else offset
        offset = row_1 + np.int32(2) if f == best else offset
        offset = row_1 + np.int32(1) if e == best else offset
        offset = row_1 if d == best else offset
        offset = np.int32(2) if c == best else offset
        offset = np.int32(1) if b == best else offset
        offset = np.int32(0) if a == best else offset
        y[_u(y_row + j)] = best
        indices[_u(y_row + j)] = index_start + j * step + offset


@numba.njit(cache=_CACHE, nogil=True)
def _pad_plane(x, x_base, g, padded, padded_height, padded_width):
    """Copy one plane into ``padded`` (``padded_height x padded_width``,
    flat) at offset (pad_h, pad_w); rows and columns past what the windows
    reach are left out, and the rest of ``padded`` is left as it was (-inf
    or the integer minimum, filled once per buffer)."""
    rows = min(g.in_height, padded_height - g.pad_h)
    cols = min(g.in_width, padded_width - g.pad_w)
    for ih in range(rows):
        source = x_base + ih * g.in_width
        target = (ih + g.pad_h) * padded_width + g.pad_w
        for iw in range(cols):
            padded[_u(target + iw)] = x[_u(source + iw)]


@numba.njit(cache=_CACHE, nogil=True)
def _max_pool_planes(x, y, indices, g, first_plane, stop_plane, lowest):
    """max_pool2d_forward_kernel on planes ``[first_plane, stop_plane)``."""
    in_w = g.in_width
    out_w = g.out_width
    in_pixels = g.in_height * in_w
    out_pixels = g.out_height * out_w
    kernel = g.kernel_height
    step = g.stride_w
    unrolled = (kernel == g.kernel_width and (kernel == 2 or kernel == 3)
                and g.dilation_h == 1 and g.dilation_w == 1
                and 2 * in_w + 2 < 2**31)
    # the extent the windows cover, padding included
    padded_height = (g.out_height - 1) * g.stride_h + kernel
    padded_width = (g.out_width - 1) * g.stride_w + kernel
    needs_padding = (g.pad_h > 0 or g.pad_w > 0 or padded_height > g.in_height
                     or padded_width > in_w)
    col_lo, col_hi = tap_ranges(out_w, in_w, g.stride_w, g.pad_w,
                                g.kernel_width, g.dilation_w)
    padded = np.full(padded_height * padded_width
                     if unrolled and needs_padding else 0, lowest,
                     dtype=x.dtype)
    for plane in range(first_plane, stop_plane):
        x_base = plane * in_pixels
        if not unrolled:
            for oh in range(g.out_height):
                _max_row(x, x_base, y, indices,
                         plane * out_pixels + oh * out_w, oh, col_lo,
                         col_hi, g, lowest)
            continue
        if needs_padding:
            _pad_plane(x, x_base, g, padded, padded_height, padded_width)
            source, source_base, source_width = padded, 0, padded_width
        else:
            source, source_base, source_width = x, x_base, in_w
        for oh in range(g.out_height):
            y_row = plane * out_pixels + oh * out_w
            source_start = source_base + oh * g.stride_h * source_width
            index_start = (oh * g.stride_h - g.pad_h) * in_w - g.pad_w
            # a constant stride lets LLVM vectorise the loads (each variant
            # costs seconds of compile time: only the common stride 2 has one)
            if kernel == 2:
                if step == 2:
                    _max_2x2(source, source_start, source_width, y, indices,
                             y_row, out_w, index_start, in_w, 2)
                else:
                    _max_2x2(source, source_start, source_width, y, indices,
                             y_row, out_w, index_start, in_w, step)
            else:
                if step == 2:
                    _max_3x3(source, source_start, source_width, y, indices,
                             y_row, out_w, index_start, in_w, 2)
                else:
                    _max_3x3(source, source_start, source_width, y, indices,
                             y_row, out_w, index_start, in_w, step)
            # windows whose maximum is NaN or the minimum: the reference's
            # loop
            redo = False
            for ow in range(out_w):
                redo |= not y[_u(y_row + ow)] > lowest
            if not redo:
                continue
            for ow in range(out_w):
                if y[_u(y_row + ow)] > lowest:
                    continue
                value, index = _max_window(x, x_base, oh, ow, g, lowest)
                y[_u(y_row + ow)] = value
                indices[_u(y_row + ow)] = index


@numba.njit(parallel=True, cache=_CACHE)
def max_pool2d_forward_kernel(x, y, indices, g, n_chunks, lowest):
    """y, indices (flat, (N, C, OH, OW)) = max and argmax of each window.

    x and y: float32, float64 or an integer dtype; ``lowest``: what padding
    counts as, -inf or the integer dtype's minimum, in x's dtype. The rule
    is the reference's: the first in-bounds tap starts the window (so an all
    -inf window reports its first in-bounds position), a larger value
    replaces it (ties keep the earlier one) and a NaN always replaces it, so
    the last NaN of a window wins. A window with no in-bounds tap gives
    ``lowest`` and index -1. Planes are split into ``n_chunks`` contiguous
    runs, one per thread. (The work is a serial function called from the
    parallel loop: Numba's parallel passes are slow on a large body.)
    """
    planes = g.batch * g.channels
    for chunk in prange(n_chunks):
        _max_pool_planes(x, y, indices, g, chunk * planes // n_chunks,
                         (chunk + 1) * planes // n_chunks, lowest)


@numba.njit(parallel=True, cache=_CACHE)
def max_pool2d_backward_kernel(grad_output, indices, grad_input, g):
    """grad_input (flat, (N, C, H, W), overwritten) = scatter-add of
    grad_output to the plane positions in ``indices`` (each in [-H*W, H*W);
    the public API only lets [0, H*W) through)."""
    in_pixels = g.in_height * g.in_width
    out_pixels = g.out_height * g.out_width
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        y_base = plane * out_pixels
        for i in range(x_base, x_base + in_pixels):
            grad_input[_u(i)] = 0
        for o in range(y_base, y_base + out_pixels):
            index = indices[_u(o)]
            if index < 0:  # -1 (a window of padding only) counts from the
                index += in_pixels  # plane's end, as the reference's divmod
            grad_input[_u(x_base + index)] += grad_output[_u(o)]


@numba.njit(parallel=True, cache=_CACHE)
def avg_pool2d_forward_kernel(x, y, divisors, g):
    """y (flat) = sum of each window's in-bounds taps / divisors[oh, ow]
    (summed in float64, tap by tap in the reference's order)."""
    in_w = g.in_width
    out_w = g.out_width
    in_pixels = g.in_height * in_w
    out_pixels = g.out_height * out_w
    stride_w = g.stride_w
    col_lo, col_hi = tap_ranges(out_w, in_w, stride_w, g.pad_w,
                                g.kernel_width, 1)
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        totals = np.empty(out_w, dtype=np.float64)
        for oh in range(g.out_height):
            totals[:] = 0.0
            for r in range(g.kernel_height):
                ih = oh * g.stride_h - g.pad_h + r
                if ih < 0 or ih >= g.in_height:
                    continue
                for s in range(g.kernel_width):
                    start = x_base + ih * in_w - g.pad_w + s
                    for ow in range(col_lo[s], col_hi[s]):
                        totals[_u(ow)] += x[_u(start + ow * stride_w)]
            y_row = plane * out_pixels + oh * out_w
            for ow in range(out_w):
                y[_u(y_row + ow)] = totals[_u(ow)] / divisors[oh, ow]


@numba.njit(parallel=True, cache=_CACHE)
def avg_pool2d_backward_kernel(grad_output, grad_input, divisors, g):
    """grad_input (flat, overwritten): each window's in-bounds taps receive
    grad_output / divisors[oh, ow] (the share in float64, accumulated in
    the array's dtype)."""
    in_w = g.in_width
    out_w = g.out_width
    in_pixels = g.in_height * in_w
    out_pixels = g.out_height * out_w
    stride_w = g.stride_w
    col_lo, col_hi = tap_ranges(out_w, in_w, stride_w, g.pad_w,
                                g.kernel_width, 1)
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        shares = np.empty(out_w, dtype=np.float64)
        for i in range(x_base, x_base + in_pixels):
            grad_input[_u(i)] = 0
        for oh in range(g.out_height):
            y_row = plane * out_pixels + oh * out_w
            for ow in range(out_w):
                shares[_u(ow)] = grad_output[_u(y_row + ow)] / divisors[oh, ow]
            for r in range(g.kernel_height):
                ih = oh * g.stride_h - g.pad_h + r
                if ih < 0 or ih >= g.in_height:
                    continue
                for s in range(g.kernel_width):
                    start = x_base + ih * in_w - g.pad_w + s
                    for ow in range(col_lo[s], col_hi[s]):
                        grad_input[_u(start + ow * stride_w)] += shares[_u(ow)]
