"""The Numba CPU backend: ``@njit(parallel=True, cache=...)`` kernels.

This module is the thin layer that implements the backend primitives (see
``fastconv.backends``): it allocates outputs, picks tile sizes and thread
chunks, and hands flat views to the kernels in ``_numba_conv``,
``_numba_pool`` and ``_numba_dropout``.

Keeping compiled specialisations few: every kernel sees 1-D C-contiguous
arrays, Python ints and the geometry named tuple (all int64), so each one is
compiled once per dtype (float32, float64); "no bias" is a zero-length array
rather than None, which would add an Optional signature.

conv2d is im2col + BLAS GEMM: each thread takes a contiguous chunk of
(image, output-row tile) items, unrolls a tile into its own column buffer
and calls a single-threaded GEMM per group. The column buffers of all
threads together stay within ``fastconv.config.WORKSPACE_BYTES`` (read at
each call) by shrinking the tile. A 1x1, stride-1, unpadded convolution
needs no unrolling: the image already is the column matrix.

A convolution with one input channel per group (depthwise, with any channel
multiplier) skips im2col and BLAS: ``_numba_depthwise`` sweeps each kernel
tap over whole output rows, with no scratch beyond a small padded plane per
work item. Its backward pass is the im2col one.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fastconv import _dropout_hash, _threads, config
from fastconv._threads import single_threaded_blas
from fastconv.backends import _normalization
from fastconv.backends._numba_activation import (
    add_relu_kernel,
    relu_backward_kernel,
    relu_kernel,
)
from fastconv.backends._numba_conv import (
    conv2d_backward_kernel,
    conv2d_forward_kernel,
)
from fastconv.backends._numba_depthwise import depthwise_forward_kernel
from fastconv.backends._numba_dropout import (
    dropout_apply_kernel,
    dropout_mask_kernel,
)
from fastconv.backends._numba_normalization import (
    affine_kernel,
    row_grad_sums_kernel,
    row_sums_kernel,
)
from fastconv.backends._numba_pool import (
    avg_pool2d_backward_kernel,
    avg_pool2d_forward_kernel,
    max_pool2d_backward_kernel,
    max_pool2d_forward_kernel,
)

__all__ = [
    "conv2d_forward", "conv2d_backward", "max_pool2d_forward",
    "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "dropout_mask", "dropout_apply", "batch_norm_stats", "batch_norm_forward",
    "batch_norm_backward", "relu_forward", "relu_backward",
]


#: The depthwise kernel sweeps three taps at once over output rows at least
#: this wide (fewer loads and stores of the row); narrower rows go tap by tap,
#: the edge loops of a fused sweep costing more than it saves there. Measured
#: (float32, 2 threads, time tap by tap / time fused): 0.7-0.95 at widths
#: 56-224, 1.0-1.3 at 512, 1.1-1.4 at 2048.
DEPTHWISE_FUSED_TAPS_MIN_WIDTH = 512


#: Stride-1 planes of at most this many values, padding included, go
#: through the depthwise kernel whole: copied into a zero-padded plane, each
#: tap one sweep over every output row at once. Row by row, a narrow plane
#: pays R * S short loops per row. Measured (float32, 2 threads, time row by
#: row / time padded): 9-10x at 14x14 and 28x28, 3x at 56x56, 2.3x at
#: 112x112, 1.05-1.3x at 224x224, 0.93x at 512x512.
DEPTHWISE_PADDED_PLANE_MAX = 256 * 256


#: A convolution with one input channel per group runs the direct depthwise
#: kernel when it has at most this many filters per channel; with more, each
#: input plane is one GEMM operand worth its setup. Measured (3x3, float32,
#: 2 threads, time direct / time im2col + GEMM): 0.7-0.75 at 8 filters per
#: channel, 0.8-1.1 at 16, 1.0-1.15 at 32 (an MNIST first layer: 1 channel,
#: 32 filters).
DEPTHWISE_MAX_MULTIPLIER = 8


def unavailable_reason() -> str | None:
    """None when Numba's parallel kernels can run here, else why not.

    A threading layer the user asked for (``NUMBA_THREADING_LAYER``, e.g.
    ``tbb`` without TBB installed) is started here, so that its failure
    makes this backend unavailable, and 'auto' falls back, rather than
    raising from a kernel call. Numba's default choice always finds one.
    """
    if numba.config.THREADING_LAYER == "default":
        return None
    try:
        numba.get_num_threads()  # starts the threading layer
    except ValueError as exc:
        first_line = str(exc).splitlines()[0]
        return (f"NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER!r}: "
                f"{first_line}")
    return None


def _use_threads(threads: int) -> int:
    """Set Numba's thread count for this call to ``threads`` (what
    fastconv._threads gives it: one for small work), in the calling thread:
    Numba keeps one count per thread, so a count set in another thread does
    not hold here. Returns it."""
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def _as_ints(geometry):
    """The geometry with plain Python ints, so the kernels see one type."""
    return type(geometry)(*(int(value) for value in geometry))


def _flat(array):
    return np.ascontiguousarray(array).reshape(-1)


def _is_pointwise(g) -> bool:
    """1x1 kernel, stride 1, no padding: x's planes are the column matrix."""
    return (g.kernel_height == 1 and g.kernel_width == 1 and g.stride_h == 1
            and g.stride_w == 1 and g.pad_top == 0 and g.pad_left == 0
            and g.pad_bottom == 0 and g.pad_right == 0)


def _tile_rows(g, itemsize: int, n_chunks: int, buffers_per_chunk: int) -> int:
    """Output rows per im2col tile so that every chunk's buffers together fit
    in ``config.WORKSPACE_BYTES`` (at least one row, at most the image)."""
    taps = g.in_channels * g.kernel_height * g.kernel_width
    bytes_per_row = taps * g.out_width * itemsize * buffers_per_chunk
    rows = config.WORKSPACE_BYTES // max(1, n_chunks * bytes_per_row)
    return max(1, min(g.out_height, rows))


# --------------------------------------------------------------- convolution

def _is_depthwise(g) -> bool:
    """One input channel per group (weight (K, 1, R, S)) and at most
    DEPTHWISE_MAX_MULTIPLIER filters per channel."""
    return (g.in_channels == g.groups
            and g.out_channels <= DEPTHWISE_MAX_MULTIPLIER * g.in_channels)


def _depthwise_tile_rows(g, n_threads: int) -> int:
    """Output rows per work item of the depthwise kernel: whole planes, or
    tiles of a plane when the planes do not divide evenly among threads."""
    planes = g.batch * g.out_channels
    tiles_per_plane = n_threads // math.gcd(planes, n_threads)
    return max(1, math.ceil(g.out_height / tiles_per_plane))


def _depthwise_padded_planes(g, n_threads: int) -> bool:
    """Whether the depthwise kernel sweeps whole zero-padded planes: stride
    1, a padded plane of at most DEPTHWISE_PADDED_PLANE_MAX values, and a
    plane for every thread (whole planes are not split among threads)."""
    padded = ((g.in_height + g.pad_top + g.pad_bottom)
              * (g.in_width + g.pad_left + g.pad_right))
    return (g.stride_h == 1 and g.stride_w == 1
            and padded <= DEPTHWISE_PADDED_PLANE_MAX
            and g.batch * g.out_channels >= n_threads)


def conv2d_forward(x, weight, bias, g, packed=None):
    """y (N, K, OH, OW) = conv2d(x, weight) + bias, in x's dtype."""
    g = _as_ints(g)
    _use_threads(_threads.conv_threads(g))
    if _is_depthwise(g):
        return _depthwise_forward(x, weight, bias, g)
    return _im2col_forward(x, weight, bias, g)


def _depthwise_forward(x, weight, bias, g):
    y = np.empty(g.output_shape, dtype=x.dtype)
    if bias is None:
        bias = np.empty(0, dtype=x.dtype)
    n_threads = numba.get_num_threads()
    padded_planes = _depthwise_padded_planes(g, n_threads)
    tile_rows = g.out_height if padded_planes else _depthwise_tile_rows(
        g, n_threads)
    depthwise_forward_kernel(
        _flat(x), _flat(weight), _flat(bias), y.reshape(-1), g, tile_rows,
        g.out_width >= DEPTHWISE_FUSED_TAPS_MIN_WIDTH, padded_planes)
    return y


def _im2col_forward(x, weight, bias, g):
    y = np.empty(g.output_shape, dtype=x.dtype)
    direct = _is_pointwise(g)
    n_threads = numba.get_num_threads()
    if direct:
        tile_rows = g.out_height
    else:
        tile_rows = _tile_rows(g, x.itemsize, n_threads, 1)
    if g.batch < n_threads:  # split images into row tiles to use every thread
        per_image = math.ceil(n_threads / g.batch)
        tile_rows = min(tile_rows, math.ceil(g.out_height / per_image))
    tiles_per_image = math.ceil(g.out_height / tile_rows)
    n_chunks = min(n_threads, g.batch * tiles_per_image)
    if bias is None:
        bias = np.empty(0, dtype=x.dtype)
    with single_threaded_blas():
        conv2d_forward_kernel(_flat(x), _flat(weight), _flat(bias),
                              y.reshape(-1), g, tile_rows, n_chunks, direct)
    return y


def conv2d_backward(grad_output, x, weight, g, need_input_grad, *,
                    need_weight_grad=True, need_bias_grad=True):
    """(grad_input or None, grad_weight, grad_bias), each in grad_output's
    dtype; grad_weight and grad_bias are None (and x may be None) when
    ``need_weight_grad`` is False: the kernel then skips their GEMMs."""
    g = _as_ints(g)
    dtype = grad_output.dtype
    direct = _is_pointwise(g)
    need_input_grad = bool(need_input_grad)
    need_weight_grad = bool(need_weight_grad)
    if x is None:
        x = np.empty((1, 1, 1, 1), dtype=dtype)
    n_chunks = min(_use_threads(_threads.conv_threads(g, passes=2)), g.batch)
    if direct:
        tile_rows = g.out_height
    else:
        buffers = int(need_input_grad) + int(need_weight_grad)
        tile_rows = _tile_rows(g, dtype.itemsize, n_chunks, max(1, buffers))
    if not need_input_grad:
        grad_input = np.empty(0, dtype=dtype)
    elif direct:  # written by a GEMM, not accumulated
        grad_input = np.empty(g.input_shape, dtype=dtype)
    else:
        grad_input = np.zeros(g.input_shape, dtype=dtype)
    weight_parts = weight.size if need_weight_grad else 0
    bias_parts = g.out_channels if need_weight_grad else 0
    grad_weight_parts = np.zeros((n_chunks, weight_parts), dtype=dtype)
    grad_bias_parts = np.zeros((n_chunks, bias_parts), dtype=np.float64)
    with single_threaded_blas():
        conv2d_backward_kernel(
            _flat(grad_output), _flat(x), _flat(weight),
            grad_input.reshape(-1),
            grad_weight_parts, grad_bias_parts, g, tile_rows, n_chunks, direct,
            need_input_grad, need_weight_grad)
    grad_input = grad_input if need_input_grad else None
    if not need_weight_grad:
        return grad_input, None, None
    grad_weight = grad_weight_parts.sum(axis=0).reshape(weight.shape)
    # (the fused kernel sums the bias gradient anyway; dropped if unasked)
    grad_bias = grad_bias_parts.sum(axis=0).astype(dtype) \
        if need_bias_grad else None
    return grad_input, grad_weight, grad_bias


# ------------------------------------------------------------------- pooling

def max_pool2d_forward(x, g):
    """(y, indices): window maxima (x's dtype: float32, float64 or an integer
    dtype) and their int64 flat positions inside each input H*W plane, both
    (N, C, OH, OW)."""
    g = _as_ints(g)
    y = np.empty(g.output_shape, dtype=x.dtype)
    indices = np.empty(g.output_shape, dtype=np.int64)
    n_chunks = max(1, min(_use_threads(_threads.pool_threads(g)),
                          g.batch * g.channels))
    # padding counts as -inf, or as an integer dtype's minimum (each integer
    # dtype compiles its own kernel at its first call)
    lowest = x.dtype.type(-np.inf if x.dtype.kind == "f"
                          else np.iinfo(x.dtype).min)
    max_pool2d_forward_kernel(_flat(x), y.reshape(-1), indices.reshape(-1), g,
                              n_chunks, lowest)
    return y, indices


def max_pool2d_backward(grad_output, indices, g):
    """grad_input (N, C, H, W): grad_output scatter-added to ``indices``."""
    g = _as_ints(g)
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    _use_threads(_threads.elementwise_threads(grad_input.size))
    max_pool2d_backward_kernel(_flat(grad_output),
                               _flat(indices.astype(np.int64, copy=False)),
                               grad_input.reshape(-1), g)
    return grad_input


def avg_pool2d_forward(x, g, divisors):
    """y (N, C, OH, OW): window sums over the in-bounds taps / divisors."""
    g = _as_ints(g)
    y = np.empty(g.output_shape, dtype=x.dtype)
    divisors = np.ascontiguousarray(divisors, dtype=np.float64)
    _use_threads(_threads.pool_threads(g))
    avg_pool2d_forward_kernel(_flat(x), y.reshape(-1), divisors, g)
    return y


def avg_pool2d_backward(grad_output, g, divisors):
    """grad_input (N, C, H, W): each output's gradient / divisor, spread over
    its window's in-bounds taps."""
    g = _as_ints(g)
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    divisors = np.ascontiguousarray(divisors, dtype=np.float64)
    _use_threads(_threads.pool_threads(g))
    avg_pool2d_backward_kernel(_flat(grad_output), grad_input.reshape(-1),
                               divisors, g)
    return grad_input


# ------------------------------------------------------------------- dropout

def dropout_mask(size, threshold, seed, like=None):
    """bool (size,): element i kept iff keep_bits(seed_key(seed), i) >=
    threshold (``fastconv._dropout_hash``). ``like`` is ignored: the mask is
    always NumPy here."""
    mask = np.empty(int(size), dtype=np.bool_)
    _use_threads(_threads.elementwise_threads(int(size)))
    dropout_mask_kernel(mask, np.uint64(_dropout_hash.seed_key(seed)),
                        np.uint64(threshold))
    return mask


def dropout_apply(x, mask, scale):
    """x * mask * scale in x's dtype and shape (0 where dropped)."""
    y = np.empty(x.shape, dtype=x.dtype)
    _use_threads(_threads.elementwise_threads(x.size))
    dropout_apply_kernel(_flat(x), _flat(mask), x.dtype.type(scale),
                         y.reshape(-1))
    return y


# ------------------------------------------------- batch norm and activation

def _channel_totals(rows, channels):
    """(C,) sums of the (N * C,) row results, n = 0, 1, ... in order."""
    return rows.reshape(-1, channels).sum(axis=0)


def batch_norm_stats(x):
    batch, channels, length = x.shape
    count = batch * length
    flat = x.reshape(-1)
    rows = np.empty(batch * channels)
    _use_threads(_threads.elementwise_threads(x.size))
    row_sums_kernel(flat, length, np.zeros(channels), False, rows)
    mean = _channel_totals(rows, channels) / count
    row_sums_kernel(flat, length, mean, True, rows)
    return mean, _channel_totals(rows, channels) / count


def batch_norm_forward(x, mean, variance, weight, bias, eps):
    if mean is None:
        mean, variance = batch_norm_stats(x)
    scale, shift = _normalization.forward_factors(variance, weight, bias, eps)
    dtype = x.dtype
    y = np.empty(x.shape, dtype=dtype)
    _use_threads(_threads.elementwise_threads(x.size))
    affine_kernel(x.reshape(-1), scale.astype(dtype), np.empty(0, dtype),
                  mean.astype(dtype), scale.astype(dtype), shift.astype(dtype),
                  x.shape[2], y.reshape(-1))
    return y, mean, variance


def batch_norm_backward(grad_output, x, mean, variance, weight, eps,
                        batch_statistics):
    batch, channels, length = x.shape
    sums = np.empty(batch * channels)
    dots = np.empty(batch * channels)
    _use_threads(_threads.elementwise_threads(x.size))
    row_grad_sums_kernel(grad_output.reshape(-1), x.reshape(-1), length,
                         sums, dots)
    grad_weight, grad_bias, scale, x_scale, shift = \
        _normalization.backward_factors(
            _channel_totals(sums, channels), _channel_totals(dots, channels),
            mean, variance, weight, eps, batch * length, batch_statistics)
    dtype = x.dtype
    grad_input = np.empty(x.shape, dtype=dtype)
    if batch_statistics:
        affine_kernel(grad_output.reshape(-1), scale.astype(dtype),
                      x.reshape(-1), mean.astype(dtype), x_scale.astype(dtype),
                      shift.astype(dtype), length, grad_input.reshape(-1))
    else:  # grad * scale: no x term (x_scale is 0, and 0 * inf is NaN)
        zeros = np.zeros(channels, dtype)
        affine_kernel(grad_output.reshape(-1), zeros, np.empty(0, dtype),
                      zeros, scale.astype(dtype), zeros, length,
                      grad_input.reshape(-1))
    return grad_input, grad_weight, grad_bias


def relu_forward(x, residual=None):
    y = np.empty(x.shape, dtype=x.dtype)
    _use_threads(_threads.elementwise_threads(x.size))
    if residual is None:
        relu_kernel(x.reshape(-1), x.dtype.type(0), y.reshape(-1))
    else:
        add_relu_kernel(x.reshape(-1), residual.reshape(-1),
                        x.dtype.type(0), y.reshape(-1))
    return y


def relu_backward(grad_output, y):
    grad_input = np.empty(y.shape, dtype=y.dtype)
    _use_threads(_threads.elementwise_threads(y.size))
    relu_backward_kernel(grad_output.reshape(-1), y.reshape(-1),
                         y.dtype.type(0), grad_input.reshape(-1))
    return grad_input
