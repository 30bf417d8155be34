"""Numba pooling kernels, parallel over (image, channel) planes.

Arrays are flat (1-D, C order) views of NCHW arrays; plane ``q`` of x is
``x[q * H * W:(q + 1) * H * W]`` and likewise for the outputs. Each plane is
handled by one thread, so the backward scatter-adds never race.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import config

_CACHE = config.NUMBA_CACHE


@numba.njit(cache=_CACHE, nogil=True)
def _window_range(out_index, stride, pad, kernel, dilation, in_size):
    """[lo, hi) of the kernel taps of window ``out_index`` that fall inside
    the input (taps outside are padding)."""
    start = out_index * stride - pad
    lo = 0
    if start < 0:
        lo = (-start + dilation - 1) // dilation
    hi = kernel
    last = in_size - 1 - start  # need tap * dilation <= last
    if last < 0:
        hi = 0
    elif (kernel - 1) * dilation > last:
        hi = last // dilation + 1
    if lo > hi:
        lo = hi
    return start, lo, hi


@numba.njit(parallel=True, cache=_CACHE)
def max_pool2d_forward_kernel(x, y, indices, g):
    """y, indices (flat, (N, C, OH, OW)) = max and argmax of each window.

    The rule is the reference's: the first in-bounds tap starts the window
    (so an all -inf window reports its first in-bounds position), a larger
    value replaces it (ties keep the earlier one) and a NaN always replaces
    it, so the last NaN of a window wins. A window with no in-bounds tap
    gives -inf and index -1.
    """
    in_pixels = g.in_height * g.in_width
    out_pixels = g.out_height * g.out_width
    negative_infinity = np.full(1, -np.inf, dtype=x.dtype)[0]
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        y_base = plane * out_pixels
        for oh in range(g.out_height):
            h_start, r_lo, r_hi = _window_range(
                oh, g.stride_h, g.pad_h, g.kernel_height, g.dilation_h,
                g.in_height)
            for ow in range(g.out_width):
                w_start, s_lo, s_hi = _window_range(
                    ow, g.stride_w, g.pad_w, g.kernel_width, g.dilation_w,
                    g.in_width)
                best_value = negative_infinity
                best_index = -1
                for r in range(r_lo, r_hi):
                    row = (h_start + r * g.dilation_h) * g.in_width
                    for s in range(s_lo, s_hi):
                        index = row + w_start + s * g.dilation_w
                        value = x[x_base + index]
                        if (value > best_value or value != value
                                or best_index < 0):
                            best_value = value
                            best_index = index
                y[y_base + oh * g.out_width + ow] = best_value
                indices[y_base + oh * g.out_width + ow] = best_index


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
            grad_input[i] = 0
        for o in range(y_base, y_base + out_pixels):
            index = indices[o]
            if index < 0:  # -1 (a window of padding only) counts from the
                index += in_pixels  # plane's end, as the reference's divmod
            grad_input[x_base + index] += grad_output[o]


@numba.njit(parallel=True, cache=_CACHE)
def avg_pool2d_forward_kernel(x, y, divisors, g):
    """y (flat) = sum of each window's in-bounds taps / divisors[oh, ow]
    (summed in float64, as the reference does)."""
    in_pixels = g.in_height * g.in_width
    out_pixels = g.out_height * g.out_width
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        y_base = plane * out_pixels
        for oh in range(g.out_height):
            h_start, r_lo, r_hi = _window_range(
                oh, g.stride_h, g.pad_h, g.kernel_height, 1, g.in_height)
            for ow in range(g.out_width):
                w_start, s_lo, s_hi = _window_range(
                    ow, g.stride_w, g.pad_w, g.kernel_width, 1, g.in_width)
                total = 0.0
                for r in range(r_lo, r_hi):
                    row = x_base + (h_start + r) * g.in_width + w_start
                    for s in range(s_lo, s_hi):
                        total += x[row + s]
                y[y_base + oh * g.out_width + ow] = total / divisors[oh, ow]


@numba.njit(parallel=True, cache=_CACHE)
def avg_pool2d_backward_kernel(grad_output, grad_input, divisors, g):
    """grad_input (flat, overwritten): each window's in-bounds taps receive
    grad_output / divisors[oh, ow] (accumulated in the array's dtype)."""
    in_pixels = g.in_height * g.in_width
    out_pixels = g.out_height * g.out_width
    for plane in prange(g.batch * g.channels):
        x_base = plane * in_pixels
        y_base = plane * out_pixels
        for i in range(x_base, x_base + in_pixels):
            grad_input[i] = 0
        for oh in range(g.out_height):
            h_start, r_lo, r_hi = _window_range(
                oh, g.stride_h, g.pad_h, g.kernel_height, 1, g.in_height)
            for ow in range(g.out_width):
                w_start, s_lo, s_hi = _window_range(
                    ow, g.stride_w, g.pad_w, g.kernel_width, 1, g.in_width)
                share = grad_output[y_base + oh * g.out_width + ow] / divisors[
                    oh, ow]
                for r in range(r_lo, r_hi):
                    row = x_base + (h_start + r) * g.in_width + w_start
                    for s in range(s_lo, s_hi):
                        grad_input[row + s] += share
