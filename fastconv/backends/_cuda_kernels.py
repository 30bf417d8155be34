"""The numba.cuda kernels behind ``fastconv.backends.cuda``.

Kernels are built by factories, once per dtype and launch configuration
(``LaunchConfig``, read from ``fastconv.config``), and compiled eagerly for
one explicit signature each, so that what ``compile_ptx`` checks is exactly
what runs. All arrays reach the kernels flattened (1-D, C-contiguous) and the
index arithmetic is written out; geometry travels as a tuple of int64.

Two deliberate constraints shape the code:

- No ``cuda.jit(device=True)`` helpers. numba-cuda compiles a device function
  for the *current device's* compute capability, so a kernel that calls one
  cannot be compiled to PTX on a machine without a GPU (the check CI runs).
  The one convolution kernel therefore takes its role (forward, grad_input,
  grad_weight) as a constant closed over by the factory; the branches of the
  other roles fold away at compile time.
- Every accumulation is race free: each output element of the convolution
  GEMMs belongs to one thread; grad_weight splits its long reduction across
  blocks into separate partial buffers that a second kernel sums in a fixed
  order; grad_bias is a shared-memory tree per channel; avg_pool2d's backward
  is a gather. Only max_pool2d's backward scatters, with ``cuda.atomic.add``
  (its windows are not known there, only the argmax indices).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import cuda
from numba import types as nbtypes

from fastconv import _dropout_hash

# Roles of the implicit-GEMM convolution kernel.
FORWARD, GRAD_INPUT, GRAD_WEIGHT = 0, 1, 2

_NUMBA_FLOAT = {np.dtype(np.float32): nbtypes.float32,
                np.dtype(np.float64): nbtypes.float64}

_GOLDEN_GAMMA = np.uint64(_dropout_hash.GOLDEN_GAMMA)
_MIX_MULT_1 = np.uint64(_dropout_hash.MIX_MULT_1)
_MIX_MULT_2 = np.uint64(_dropout_hash.MIX_MULT_2)
_SHIFT_27, _SHIFT_30, _SHIFT_31, _SHIFT_32 = (np.uint64(s)
                                              for s in (27, 30, 31, 32))

CONV_GEOMETRY_LENGTH = 17
POOL_GEOMETRY_LENGTH = 14


class LaunchConfig(NamedTuple):
    """The launch configuration kernels are built for (see fastconv.config)."""

    threads_per_block: int
    max_blocks: int
    conv_tile_m: int
    conv_tile_n: int
    conv_tile_k: int
    conv_micro_m: int
    conv_micro_n: int
    reduce_threads: int
    narrow_rows: int
    narrow_tile_m: int
    narrow_tile_n: int
    narrow_micro_m: int
    narrow_micro_n: int

    def check(self) -> None:
        if self.conv_tile_m % self.conv_micro_m or (
                self.conv_tile_n % self.conv_micro_n) or (
                self.narrow_tile_m % self.narrow_micro_m) or (
                self.narrow_tile_n % self.narrow_micro_n):
            raise ValueError(
                "CUDA_CONV_[NARROW_]TILE_M/N must be multiples of "
                f"CUDA_CONV_[NARROW_]MICRO_M/N, got {self}")
        if max(self.conv_threads, self.for_rows(0).conv_threads,
               self.threads_per_block, self.reduce_threads) > 1024:
            raise ValueError(f"more than 1024 threads per block: {self}")
        if self.reduce_threads & (self.reduce_threads - 1):
            raise ValueError(
                f"CUDA_REDUCE_THREADS must be a power of two, got "
                f"{self.reduce_threads}")
        if min(self) < 1:
            raise ValueError(f"launch configuration values must be >= 1: {self}")

    def for_rows(self, rows: int) -> "LaunchConfig":
        """The configuration a convolution GEMM of ``rows`` rows runs with:
        the narrow tile when rows are few (first layers, depthwise), so that
        threads are not spent on rows that do not exist."""
        if rows > self.narrow_rows:
            return self
        return self._replace(
            conv_tile_m=self.narrow_tile_m, conv_tile_n=self.narrow_tile_n,
            conv_micro_m=self.narrow_micro_m, conv_micro_n=self.narrow_micro_n)

    @property
    def conv_threads(self) -> int:
        return (self.conv_tile_m // self.conv_micro_m) * (
            self.conv_tile_n // self.conv_micro_n)


def conv_geometry_tuple(g) -> tuple:
    """A ConvGeometry as the int tuple the convolution kernel unpacks."""
    return (g.batch, g.in_channels, g.in_height, g.in_width, g.out_channels,
            g.kernel_height, g.kernel_width, g.stride_h, g.stride_w, g.pad_top,
            g.pad_left, g.dilation_h, g.dilation_w, g.out_height, g.out_width,
            g.in_channels // g.groups, g.out_channels // g.groups)


def pool_geometry_tuple(g) -> tuple:
    """A PoolGeometry as the int tuple the pooling kernels unpack."""
    return (g.batch, g.channels, g.in_height, g.in_width, g.out_height,
            g.out_width, g.kernel_height, g.kernel_width, g.stride_h,
            g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)


# --------------------------------------------------------------- convolution

def _make_conv_gemm(role, dtype, launch: LaunchConfig):
    """Implicit GEMM over one group: out[rows, cols] = A[rows, depth] @ B[depth, cols].

    ============  ==================  ====================  ===================
    role          rows                cols                  depth (reduction)
    ============  ==================  ====================  ===================
    FORWARD       filters of group    (n, oh, ow)           (c, r, s)
    GRAD_INPUT    channels of group   (n, ih, iw)           (k, r, s)
    GRAD_WEIGHT   filters of group    (c, r, s)             (n, oh, ow), split
    ============  ==================  ====================  ===================

    A and B are never materialised: each tile is gathered from x, weight or
    grad_output into shared memory (zero where the window is in the padding,
    or, for GRAD_INPUT, where no output position maps onto the input pixel:
    the col2im step becomes a gather, so no two threads write one element).
    Grid: (col tiles, row tiles, groups * splits); block: conv_threads.
    """
    acc_type = _NUMBA_FLOAT[dtype]
    tile_m, tile_n, tile_k = launch.conv_tile_m, launch.conv_tile_n, launch.conv_tile_k
    micro_m, micro_n = launch.conv_micro_m, launch.conv_micro_n
    threads_m = tile_m // micro_m
    threads_n = tile_n // micro_n
    threads = threads_m * threads_n
    a_loads = -(-tile_k * tile_m // threads)
    b_loads = -(-tile_k * tile_n // threads)
    # Neighbouring threads load neighbouring addresses: A is contiguous along
    # the reduction in every role; B along its columns, except for
    # GRAD_WEIGHT, whose reduction runs along output pixels.
    b_depth_fastest = role == GRAD_WEIGHT
    # +1 column of padding: the depth-fastest stores hit distinct banks.
    # (Shapes must be compile-time constants, hence computed out here.)
    a_tile_shape = (tile_k, tile_m + 1)
    b_tile_shape = (tile_k, tile_n + 1)
    micro_shape = (micro_m, micro_n)
    zero = dtype.type(0)

    def conv_gemm(a, b, out, bias, has_bias, geometry, rows, cols, depth,
                  depth_per_split, splits):
        (batch, in_channels, in_height, in_width, out_channels, kernel_h,
         kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h,
         dilation_w, out_height, out_width, channels_per_group,
         filters_per_group) = geometry
        kernel_area = kernel_h * kernel_w
        in_plane = in_height * in_width
        out_plane = out_height * out_width

        thread = cuda.threadIdx.x
        thread_row = thread // threads_n
        thread_col = thread - thread_row * threads_n
        row_start = cuda.blockIdx.y * tile_m
        col_start = cuda.blockIdx.x * tile_n
        group = cuda.blockIdx.z // splits
        split = cuda.blockIdx.z - group * splits
        depth_begin = split * depth_per_split
        depth_end = min(depth, depth_begin + depth_per_split)

        a_tile = cuda.shared.array(a_tile_shape, acc_type)
        b_tile = cuda.shared.array(b_tile_shape, acc_type)
        acc = cuda.local.array(micro_shape, acc_type)
        a_frag = cuda.local.array(micro_m, acc_type)
        b_frag = cuda.local.array(micro_n, acc_type)
        for i in range(micro_m):
            for j in range(micro_n):
                acc[i, j] = zero

        for step in range(depth_begin, depth_end, tile_k):
            for load in range(a_loads):
                element = thread + load * threads
                if element < tile_k * tile_m:
                    kk = element % tile_k
                    m = element // tile_k
                    d = step + kk
                    row = row_start + m
                    value = zero
                    if d < depth_end and row < rows:
                        if role == FORWARD:
                            value = a[(group * filters_per_group + row) * depth
                                      + d]
                        elif role == GRAD_INPUT:
                            k_local = d // kernel_area
                            rs = d - k_local * kernel_area
                            value = a[((group * filters_per_group + k_local)
                                       * channels_per_group + row)
                                      * kernel_area + rs]
                        else:
                            n = d // out_plane
                            p = d - n * out_plane
                            value = a[(n * out_channels + group
                                       * filters_per_group + row) * out_plane
                                      + p]
                    a_tile[kk, m] = value
            for load in range(b_loads):
                element = thread + load * threads
                if element < tile_k * tile_n:
                    if b_depth_fastest:
                        kk = element % tile_k
                        c = element // tile_k
                    else:
                        c = element % tile_n
                        kk = element // tile_n
                    d = step + kk
                    col = col_start + c
                    value = zero
                    if d < depth_end and col < cols:
                        if role == GRAD_INPUT:
                            k_local = d // kernel_area
                            rs = d - k_local * kernel_area
                            r = rs // kernel_w
                            s = rs - r * kernel_w
                            n = col // in_plane
                            p = col - n * in_plane
                            ih = p // in_width
                            iw = p - ih * in_width
                            # Output rows whose window puts tap r on row ih.
                            th = ih + pad_top - r * dilation_h
                            tw = iw + pad_left - s * dilation_w
                            if (th >= 0 and tw >= 0 and th % stride_h == 0
                                    and tw % stride_w == 0):
                                oh = th // stride_h
                                ow = tw // stride_w
                                if oh < out_height and ow < out_width:
                                    value = b[((n * out_channels + group
                                                * filters_per_group + k_local)
                                               * out_height + oh) * out_width
                                              + ow]
                        else:
                            # x gathered at (filter tap, output pixel).
                            if role == FORWARD:
                                tap = d
                                pixel = col
                            else:
                                tap = col
                                pixel = d
                            c_local = tap // kernel_area
                            rs = tap - c_local * kernel_area
                            r = rs // kernel_w
                            s = rs - r * kernel_w
                            n = pixel // out_plane
                            p = pixel - n * out_plane
                            oh = p // out_width
                            ow = p - oh * out_width
                            ih = oh * stride_h - pad_top + r * dilation_h
                            iw = ow * stride_w - pad_left + s * dilation_w
                            if 0 <= ih < in_height and 0 <= iw < in_width:
                                value = b[((n * in_channels + group
                                            * channels_per_group + c_local)
                                           * in_height + ih) * in_width + iw]
                    b_tile[kk, c] = value
            cuda.syncthreads()
            for kk in range(tile_k):
                for i in range(micro_m):
                    a_frag[i] = a_tile[kk, thread_row + i * threads_m]
                for j in range(micro_n):
                    b_frag[j] = b_tile[kk, thread_col + j * threads_n]
                for i in range(micro_m):
                    for j in range(micro_n):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()

        for i in range(micro_m):
            row = row_start + thread_row + i * threads_m
            if row < rows:
                for j in range(micro_n):
                    col = col_start + thread_col + j * threads_n
                    if col < cols:
                        value = acc[i, j]
                        if role == FORWARD:
                            k = group * filters_per_group + row
                            if has_bias:
                                value += bias[k]
                            n = col // out_plane
                            p = col - n * out_plane
                            out[(n * out_channels + k) * out_plane + p] = value
                        elif role == GRAD_INPUT:
                            n = col // in_plane
                            p = col - n * in_plane
                            out[(n * in_channels + group * channels_per_group
                                 + row) * in_plane + p] = value
                        else:
                            out[(split * out_channels + group
                                 * filters_per_group + row) * cols + col] = value

    arrays = nbtypes.Array(acc_type, 1, "C")
    argtypes = (arrays, arrays, arrays, arrays, nbtypes.int64,
                nbtypes.UniTuple(nbtypes.int64, CONV_GEOMETRY_LENGTH),
                nbtypes.int64, nbtypes.int64, nbtypes.int64, nbtypes.int64,
                nbtypes.int64)
    return conv_gemm, argtypes


def _make_sum_splits(dtype, launch: LaunchConfig):
    """out[i] = sum over s of partial[s * size + i], in a fixed order."""
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def sum_splits(partial, out, splits, size):
        for index in range(cuda.grid(1), size, cuda.gridsize(1)):
            total = zero
            for split in range(splits):
                total += partial[split * size + index]
            out[index] = total

    arrays = nbtypes.Array(acc_type, 1, "C")
    return sum_splits, (arrays, arrays, nbtypes.int64, nbtypes.int64)


def _make_bias_grad(dtype, launch: LaunchConfig):
    """grad_bias[k] = sum of grad_output[:, k]: one block per channel, tree sum."""
    acc_type = _NUMBA_FLOAT[dtype]
    threads = launch.reduce_threads
    zero = dtype.type(0)

    def bias_grad(grad_output, grad_bias, batch, channels, plane):
        k = cuda.blockIdx.x
        thread = cuda.threadIdx.x
        partial = cuda.shared.array(threads, acc_type)
        total = zero
        for element in range(thread, batch * plane, threads):
            n = element // plane
            p = element - n * plane
            total += grad_output[(n * channels + k) * plane + p]
        partial[thread] = total
        cuda.syncthreads()
        width = threads // 2
        while width > 0:
            if thread < width:
                partial[thread] += partial[thread + width]
            cuda.syncthreads()
            width //= 2
        if thread == 0:
            grad_bias[k] = partial[0]

    arrays = nbtypes.Array(acc_type, 1, "C")
    return bias_grad, (arrays, arrays, nbtypes.int64, nbtypes.int64,
                       nbtypes.int64)


# ------------------------------------------------------------------- pooling

def _make_max_pool_forward(dtype, launch: LaunchConfig):
    """One thread per output element (grid-stride loop)."""
    acc_type = _NUMBA_FLOAT[dtype]
    negative_infinity = dtype.type(-math.inf)

    def max_pool_forward(x, y, indices, geometry):
        (batch, channels, in_height, in_width, out_height, out_width, kernel_h,
         kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
         dilation_w) = geometry
        total = batch * channels * out_height * out_width
        for index in range(cuda.grid(1), total, cuda.gridsize(1)):
            ow = index % out_width
            rest = index // out_width
            oh = rest % out_height
            plane = rest // out_height
            base = plane * in_height * in_width
            best = negative_infinity
            best_index = -1
            for r in range(kernel_h):
                ih = oh * stride_h - pad_h + r * dilation_h
                if 0 <= ih < in_height:
                    for s in range(kernel_w):
                        iw = ow * stride_w - pad_w + s * dilation_w
                        if 0 <= iw < in_width:
                            value = x[base + ih * in_width + iw]
                            # PyTorch's rule: a NaN wins, and so does the
                            # first in-bounds element of an all -inf window.
                            if (best_index < 0 or value > best
                                    or math.isnan(value)):
                                best = value
                                best_index = ih * in_width + iw
            y[index] = best
            indices[index] = best_index

    arrays = nbtypes.Array(acc_type, 1, "C")
    return max_pool_forward, (
        arrays, arrays, nbtypes.Array(nbtypes.int64, 1, "C"),
        nbtypes.UniTuple(nbtypes.int64, POOL_GEOMETRY_LENGTH))


def _make_max_pool_backward(dtype, launch: LaunchConfig):
    """Scatter grad_output to its argmax; overlapping windows add atomically.

    An index outside its plane is skipped and flagged in ``error[0]`` (device
    indices cannot be range-checked on the host without a copy).
    """
    acc_type = _NUMBA_FLOAT[dtype]

    def max_pool_backward(grad_output, indices, grad_input, in_plane,
                          out_plane, total, error):
        for index in range(cuda.grid(1), total, cuda.gridsize(1)):
            position = indices[index]
            if 0 <= position < in_plane:
                plane = index // out_plane
                cuda.atomic.add(grad_input, plane * in_plane + position,
                                grad_output[index])
            else:
                error[0] = 1

    arrays = nbtypes.Array(acc_type, 1, "C")
    return max_pool_backward, (
        arrays, nbtypes.Array(nbtypes.int64, 1, "C"), arrays, nbtypes.int64,
        nbtypes.int64, nbtypes.int64, nbtypes.Array(nbtypes.int32, 1, "C"))


def _make_avg_pool_forward(dtype, launch: LaunchConfig):
    """One thread per output element; divides by the precomputed divisor table."""
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def avg_pool_forward(x, y, divisors, geometry):
        (batch, channels, in_height, in_width, out_height, out_width, kernel_h,
         kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
         dilation_w) = geometry
        total_outputs = batch * channels * out_height * out_width
        for index in range(cuda.grid(1), total_outputs, cuda.gridsize(1)):
            ow = index % out_width
            rest = index // out_width
            oh = rest % out_height
            plane = rest // out_height
            base = plane * in_height * in_width
            total = zero
            for r in range(kernel_h):
                ih = oh * stride_h - pad_h + r
                if 0 <= ih < in_height:
                    for s in range(kernel_w):
                        iw = ow * stride_w - pad_w + s
                        if 0 <= iw < in_width:
                            total += x[base + ih * in_width + iw]
            y[index] = total / divisors[oh * out_width + ow]

    arrays = nbtypes.Array(acc_type, 1, "C")
    return avg_pool_forward, (
        arrays, arrays, arrays,
        nbtypes.UniTuple(nbtypes.int64, POOL_GEOMETRY_LENGTH))


def _make_avg_pool_backward(dtype, launch: LaunchConfig):
    """One thread per input element, gathering the windows that cover it."""
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def avg_pool_backward(grad_output, grad_input, divisors, geometry):
        (batch, channels, in_height, in_width, out_height, out_width, kernel_h,
         kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
         dilation_w) = geometry
        total_inputs = batch * channels * in_height * in_width
        for index in range(cuda.grid(1), total_inputs, cuda.gridsize(1)):
            iw = index % in_width
            rest = index // in_width
            ih = rest % in_height
            plane = rest // in_height
            base = plane * out_height * out_width
            # Windows oh cover ih iff oh*stride - pad <= ih < that + kernel.
            first = ih + pad_h - kernel_h + 1
            oh_first = 0 if first <= 0 else (first + stride_h - 1) // stride_h
            oh_last = min(out_height - 1, (ih + pad_h) // stride_h)
            first = iw + pad_w - kernel_w + 1
            ow_first = 0 if first <= 0 else (first + stride_w - 1) // stride_w
            ow_last = min(out_width - 1, (iw + pad_w) // stride_w)
            total = zero
            for oh in range(oh_first, oh_last + 1):
                for ow in range(ow_first, ow_last + 1):
                    position = oh * out_width + ow
                    total += grad_output[base + position] / divisors[position]
            grad_input[index] = total

    arrays = nbtypes.Array(acc_type, 1, "C")
    return avg_pool_backward, (
        arrays, arrays, arrays,
        nbtypes.UniTuple(nbtypes.int64, POOL_GEOMETRY_LENGTH))


# ---------------------------------------------------------- dropout and fill

def _make_dropout_mask(launch: LaunchConfig):
    """mask[i] = top 32 bits of mix64(key + i * golden) >= threshold (uint64)."""

    def dropout_mask(mask, size, key, threshold):
        for index in range(cuda.grid(1), size, cuda.gridsize(1)):
            z = key + np.uint64(index) * _GOLDEN_GAMMA
            z = (z ^ (z >> _SHIFT_30)) * _MIX_MULT_1
            z = (z ^ (z >> _SHIFT_27)) * _MIX_MULT_2
            z = z ^ (z >> _SHIFT_31)
            mask[index] = (z >> _SHIFT_32) >= threshold

    return dropout_mask, (nbtypes.Array(nbtypes.boolean, 1, "C"),
                          nbtypes.int64, nbtypes.uint64, nbtypes.uint64)


def _make_dropout_apply(dtype, launch: LaunchConfig):
    """y = x * scale where kept, else 0 (a select: 0 * inf would be NaN)."""
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def dropout_apply(x, mask, y, scale, size):
        for index in range(cuda.grid(1), size, cuda.gridsize(1)):
            y[index] = x[index] * scale if mask[index] else zero

    arrays = nbtypes.Array(acc_type, 1, "C")
    return dropout_apply, (arrays, nbtypes.Array(nbtypes.boolean, 1, "C"),
                           arrays, acc_type, nbtypes.int64)


# ------------------------------------------------- batch norm and activation

def _make_bn_row_sums(dtype, launch: LaunchConfig):
    """rows[r] = sum over row r (length elements) of x - centres[r % C],
    or of its square when ``squares`` is 1; float64, one thread per row in
    order (the channel totals are added on the host, n in order)."""
    acc_type = _NUMBA_FLOAT[dtype]

    def bn_row_sums(x, centres, rows, length, squares):
        channels = centres.size
        for r in range(cuda.grid(1), rows.size, cuda.gridsize(1)):
            centre = centres[r % channels]
            total = 0.0
            for i in range(r * length, (r + 1) * length):
                difference = x[i] - centre
                total += difference * difference if squares else difference
            rows[r] = total

    doubles = nbtypes.Array(nbtypes.float64, 1, "C")
    return bn_row_sums, (nbtypes.Array(acc_type, 1, "C"), doubles, doubles,
                         nbtypes.int64, nbtypes.int64)


def _make_bn_row_grad_sums(dtype, launch: LaunchConfig):
    """sums[r], dots[r] = sum(g) and sum(g * x) over row r (float64)."""
    acc_type = _NUMBA_FLOAT[dtype]

    def bn_row_grad_sums(grad_output, x, sums, dots, length):
        for r in range(cuda.grid(1), sums.size, cuda.gridsize(1)):
            total = 0.0
            dot = 0.0
            for i in range(r * length, (r + 1) * length):
                value = nbtypes.float64(grad_output[i])
                total += value
                dot += value * x[i]
            sums[r] = total
            dots[r] = dot

    arrays = nbtypes.Array(acc_type, 1, "C")
    doubles = nbtypes.Array(nbtypes.float64, 1, "C")
    return bn_row_grad_sums, (arrays, arrays, doubles, doubles, nbtypes.int64)


def _make_bn_affine(dtype, launch: LaunchConfig):
    """y = a * a_scale[c] + (b - centre[c]) * b_scale[c] + shift[c] (c the
    element's channel, rows of ``length``); without b (``has_b`` 0):
    y = (a - centre[c]) * b_scale[c] + shift[c]."""
    acc_type = _NUMBA_FLOAT[dtype]

    def bn_affine(a, a_scale, b, centre, b_scale, shift, y, length, has_b):
        channels = shift.size
        for index in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            c = (index // length) % channels
            if has_b:
                y[index] = (a[index] * a_scale[c]
                            + (b[index] - centre[c]) * b_scale[c] + shift[c])
            else:
                y[index] = (a[index] - centre[c]) * b_scale[c] + shift[c]

    arrays = nbtypes.Array(acc_type, 1, "C")
    return bn_affine, (arrays, arrays, arrays, arrays, arrays, arrays, arrays,
                       nbtypes.int64, nbtypes.int64)


def _make_relu(dtype, launch: LaunchConfig):
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def relu(x, y):
        for index in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[index] = zero if x[index] < zero else x[index]

    arrays = nbtypes.Array(acc_type, 1, "C")
    return relu, (arrays, arrays)


def _make_add_relu(dtype, launch: LaunchConfig):
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def add_relu(x, residual, y):
        for index in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            value = x[index] + residual[index]
            y[index] = zero if value < zero else value

    arrays = nbtypes.Array(acc_type, 1, "C")
    return add_relu, (arrays, arrays, arrays)


def _make_relu_backward(dtype, launch: LaunchConfig):
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def relu_backward(grad_output, y, grad_input):
        for index in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            grad_input[index] = zero if y[index] <= zero else grad_output[index]

    arrays = nbtypes.Array(acc_type, 1, "C")
    return relu_backward, (arrays, arrays, arrays)


def _make_fill_zero(dtype, launch: LaunchConfig):
    acc_type = _NUMBA_FLOAT[dtype]
    zero = dtype.type(0)

    def fill_zero(out, size):
        for index in range(cuda.grid(1), size, cuda.gridsize(1)):
            out[index] = zero

    return fill_zero, (nbtypes.Array(acc_type, 1, "C"), nbtypes.int64)


# ------------------------------------------------------------------ building

_FLOAT_FACTORIES = {
    "conv_forward": functools.partial(_make_conv_gemm, FORWARD),
    "conv_grad_input": functools.partial(_make_conv_gemm, GRAD_INPUT),
    "conv_grad_weight": functools.partial(_make_conv_gemm, GRAD_WEIGHT),
    "sum_splits": _make_sum_splits,
    "bias_grad": _make_bias_grad,
    "max_pool_forward": _make_max_pool_forward,
    "max_pool_backward": _make_max_pool_backward,
    "avg_pool_forward": _make_avg_pool_forward,
    "avg_pool_backward": _make_avg_pool_backward,
    "dropout_apply": _make_dropout_apply,
    "fill_zero": _make_fill_zero,
    "bn_row_sums": _make_bn_row_sums,
    "bn_row_grad_sums": _make_bn_row_grad_sums,
    "bn_affine": _make_bn_affine,
    "relu": _make_relu,
    "add_relu": _make_add_relu,
    "relu_backward": _make_relu_backward,
}

KERNEL_NAMES = tuple(_FLOAT_FACTORIES) + ("dropout_mask",)


def kernel_source(name: str, dtype, launch: LaunchConfig):
    """(Python function, argument types) of one kernel; ``dtype`` is ignored
    for the dtype-free ``dropout_mask``."""
    if name == "dropout_mask":
        return _make_dropout_mask(launch)
    return _FLOAT_FACTORIES[name](np.dtype(dtype), launch)


@functools.lru_cache(maxsize=None)
def kernel(name: str, dtype, launch: LaunchConfig):
    """The compiled kernel ``name`` for float ``dtype`` under ``launch``."""
    function, argtypes = kernel_source(name, dtype, launch)
    return cuda.jit(nbtypes.void(*argtypes))(function)


def compile_all_ptx(cc=(9, 0), launch: LaunchConfig | None = None) -> dict:
    """Compile every kernel, float32 and float64, to PTX for ``cc``.

    Needs libNVVM and NVRTC but no GPU. Returns ``{(name, dtype): ptx}``.
    """
    if launch is None:
        from fastconv.backends.cuda import launch_config
        launch = launch_config()
    launch.check()
    result = {}
    for name in KERNEL_NAMES:
        dtypes = ("float32",) if name == "dropout_mask" else ("float32",
                                                               "float64")
        # The convolution GEMMs also run with the narrow tile.
        variants = {"": launch}
        if name.startswith("conv_"):
            variants["narrow"] = launch.for_rows(0)
        for dtype in dtypes:
            for variant, config in variants.items():
                function, argtypes = kernel_source(name, dtype, config)
                ptx, _ = cuda.compile_ptx(function, argtypes, cc=cc)
                result[(name + (f"[{variant}]" if variant else ""),
                        dtype)] = ptx
    return result
