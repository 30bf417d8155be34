"""The naive backend: plain Python loops, written to be obviously correct.

This is the reference every other backend is tested against and the baseline
benchmarks compare with. It favours clarity over speed on purpose: one loop
per index, one line per formula, sums accumulated in Python floats (float64).
Use it on small shapes only.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv import _dropout_hash
from fastconv.backends import _normalization


def _input_position(out_index, stride, pad, kernel_index, dilation):
    return out_index * stride - pad + kernel_index * dilation


def conv2d_forward(x, weight, bias, g, packed=None):
    y = np.zeros(g.output_shape, dtype=x.dtype)
    channels_per_group = g.in_channels // g.groups
    filters_per_group = g.out_channels // g.groups
    for n in range(g.batch):
        for k in range(g.out_channels):
            group = k // filters_per_group
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    total = 0.0 if bias is None else float(bias[k])
                    for c_local in range(channels_per_group):
                        c = group * channels_per_group + c_local
                        for r in range(g.kernel_height):
                            ih = _input_position(oh, g.stride_h, g.pad_top, r,
                                                 g.dilation_h)
                            if not 0 <= ih < g.in_height:
                                continue
                            for s in range(g.kernel_width):
                                iw = _input_position(ow, g.stride_w, g.pad_left,
                                                     s, g.dilation_w)
                                if not 0 <= iw < g.in_width:
                                    continue
                                total += float(x[n, c, ih, iw]) * float(
                                    weight[k, c_local, r, s])
                    y[n, k, oh, ow] = total
    return y


def conv2d_backward(grad_output, x, weight, g, need_input_grad=True, *,
                    need_weight_grad=True, need_bias_grad=True):
    grad_input = np.zeros(g.input_shape, dtype=np.float64)
    grad_weight = np.zeros(g.weight_shape, dtype=np.float64)
    channels_per_group = g.in_channels // g.groups
    filters_per_group = g.out_channels // g.groups
    for n in range(g.batch):
        for k in range(g.out_channels):
            group = k // filters_per_group
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    grad = float(grad_output[n, k, oh, ow])
                    for c_local in range(channels_per_group):
                        c = group * channels_per_group + c_local
                        for r in range(g.kernel_height):
                            ih = _input_position(oh, g.stride_h, g.pad_top, r,
                                                 g.dilation_h)
                            if not 0 <= ih < g.in_height:
                                continue
                            for s in range(g.kernel_width):
                                iw = _input_position(ow, g.stride_w, g.pad_left,
                                                     s, g.dilation_w)
                                if not 0 <= iw < g.in_width:
                                    continue
                                grad_input[n, c, ih, iw] += grad * float(
                                    weight[k, c_local, r, s])
                                if need_weight_grad:
                                    grad_weight[k, c_local, r, s] += (
                                        grad * float(x[n, c, ih, iw]))
    grad_bias = np.zeros(g.out_channels, dtype=np.float64)
    for n in range(g.batch):
        for k in range(g.out_channels):
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    grad_bias[k] += float(grad_output[n, k, oh, ow])
    dtype = grad_output.dtype
    if not need_weight_grad:
        return grad_input.astype(dtype) if need_input_grad else None, None, None
    return (grad_input.astype(dtype) if need_input_grad else None,
            grad_weight.astype(dtype),
            grad_bias.astype(dtype) if need_bias_grad else None)


def max_pool2d_forward(x, g):
    y = np.empty(g.output_shape, dtype=x.dtype)
    indices = np.empty(g.output_shape, dtype=np.int64)
    # what padding counts as; values are compared in x's dtype (exact for
    # int64 too)
    lowest = (-math.inf if x.dtype.kind == "f"
              else np.iinfo(x.dtype).min)
    for n in range(g.batch):
        for c in range(g.channels):
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    best_value = lowest
                    best_index = -1
                    for r in range(g.kernel_height):
                        ih = _input_position(oh, g.stride_h, g.pad_h, r,
                                             g.dilation_h)
                        if not 0 <= ih < g.in_height:
                            continue
                        for s in range(g.kernel_width):
                            iw = _input_position(ow, g.stride_w, g.pad_w, s,
                                                 g.dilation_w)
                            if not 0 <= iw < g.in_width:
                                continue
                            value = x[n, c, ih, iw]
                            # PyTorch's rule: a NaN wins, and so does the
                            # first in-bounds element of an all -inf window
                            # (of the dtype's minimum).
                            if (best_index < 0 or value > best_value
                                    or value != value):
                                best_value = value
                                best_index = ih * g.in_width + iw
                    y[n, c, oh, ow] = best_value
                    indices[n, c, oh, ow] = best_index
    return y, indices


def max_pool2d_backward(grad_output, indices, g):
    grad_input = np.zeros(g.input_shape, dtype=np.float64)
    for n in range(g.batch):
        for c in range(g.channels):
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    index = int(indices[n, c, oh, ow])
                    ih, iw = divmod(index, g.in_width)
                    grad_input[n, c, ih, iw] += float(grad_output[n, c, oh, ow])
    return grad_input.astype(grad_output.dtype)


def avg_pool2d_forward(x, g, divisors):
    y = np.empty(g.output_shape, dtype=x.dtype)
    for n in range(g.batch):
        for c in range(g.channels):
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    total = 0.0
                    for r in range(g.kernel_height):
                        ih = _input_position(oh, g.stride_h, g.pad_h, r, 1)
                        if not 0 <= ih < g.in_height:
                            continue
                        for s in range(g.kernel_width):
                            iw = _input_position(ow, g.stride_w, g.pad_w, s, 1)
                            if 0 <= iw < g.in_width:
                                total += float(x[n, c, ih, iw])
                    y[n, c, oh, ow] = total / divisors[oh, ow]
    return y


def avg_pool2d_backward(grad_output, g, divisors):
    grad_input = np.zeros(g.input_shape, dtype=np.float64)
    for n in range(g.batch):
        for c in range(g.channels):
            for oh in range(g.out_height):
                for ow in range(g.out_width):
                    share = float(grad_output[n, c, oh, ow]) / divisors[oh, ow]
                    for r in range(g.kernel_height):
                        ih = _input_position(oh, g.stride_h, g.pad_h, r, 1)
                        if not 0 <= ih < g.in_height:
                            continue
                        for s in range(g.kernel_width):
                            iw = _input_position(ow, g.stride_w, g.pad_w, s, 1)
                            if 0 <= iw < g.in_width:
                                grad_input[n, c, ih, iw] += share
    return grad_input.astype(grad_output.dtype)


def dropout_mask(size, threshold, seed, like=None):
    key = _dropout_hash.seed_key(seed)
    mask = np.empty(size, dtype=np.bool_)
    for i in range(size):
        mask[i] = _dropout_hash.keep_bits(key, i) >= threshold
    return mask


def dropout_apply(x, mask, scale):
    flat_x = x.reshape(-1)
    flat_mask = mask.reshape(-1)
    y = np.empty(flat_x.shape, dtype=x.dtype)
    for i in range(flat_x.size):
        y[i] = flat_x[i] * scale if flat_mask[i] else 0.0
    return y.reshape(x.shape)


def batch_norm_stats(x):
    batch, channels, length = x.shape
    count = batch * length
    mean = np.zeros(channels)
    variance = np.zeros(channels)
    for c in range(channels):
        total = 0.0
        for n in range(batch):
            for i in range(length):
                total += float(x[n, c, i])
        mean[c] = total / count
        squares = 0.0
        for n in range(batch):
            for i in range(length):
                squares += (float(x[n, c, i]) - mean[c]) ** 2
        variance[c] = squares / count
    return mean, variance


def _channel_affine(a, a_scale, b, mean, b_scale, shift):
    """a * a_scale[c] + (b - mean[c]) * b_scale[c] + shift[c] (b None: the
    term left out), the factors rounded to a's dtype first."""
    dtype = a.dtype
    a_scale, b_scale, mean, shift = (np.asarray(v).astype(dtype)
                                     for v in (a_scale, b_scale, mean, shift))
    y = np.empty(a.shape, dtype=dtype)
    batch, channels, length = a.shape
    for n in range(batch):
        for c in range(channels):
            for i in range(length):
                value = a[n, c, i] * a_scale[c] + shift[c]
                if b is not None:
                    value = value + (b[n, c, i] - mean[c]) * b_scale[c]
                y[n, c, i] = value
    return y


def batch_norm_forward(x, mean, variance, weight, bias, eps):
    if mean is None:
        mean, variance = batch_norm_stats(x)
    scale, shift = _normalization.forward_factors(variance, weight, bias, eps)
    centred = x - mean.astype(x.dtype).reshape(1, -1, 1)
    return _channel_affine(centred, scale, None, mean, scale, shift), mean, \
        variance


def batch_norm_backward(grad_output, x, mean, variance, weight, eps,
                        batch_statistics):
    batch, channels, length = x.shape
    grad_sum = np.zeros(channels)
    grad_dot = np.zeros(channels)
    for c in range(channels):
        for n in range(batch):
            for i in range(length):
                grad_sum[c] += float(grad_output[n, c, i])
                grad_dot[c] += float(grad_output[n, c, i]) * float(x[n, c, i])
    grad_weight, grad_bias, scale, x_scale, shift = \
        _normalization.backward_factors(grad_sum, grad_dot, mean, variance,
                                        weight, eps, batch * length,
                                        batch_statistics)
    grad_input = _channel_affine(grad_output, scale,
                                 x if batch_statistics else None, mean,
                                 x_scale, shift)
    return grad_input, grad_weight, grad_bias


def relu_forward(x, residual=None):
    flat_x = x.reshape(-1)
    flat_residual = None if residual is None else residual.reshape(-1)
    y = np.empty(flat_x.shape, dtype=x.dtype)
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as numpy's add
        for i in range(flat_x.size):
            value = flat_x[i] if flat_residual is None else \
                flat_x[i] + flat_residual[i]
            y[i] = 0.0 if value < 0 else value
    return y.reshape(x.shape)


def relu_backward(grad_output, y):
    flat_grad = grad_output.reshape(-1)
    flat_y = y.reshape(-1)
    grad_input = np.empty(flat_y.shape, dtype=grad_output.dtype)
    for i in range(flat_y.size):
        grad_input[i] = 0.0 if flat_y[i] <= 0 else flat_grad[i]
    return grad_input.reshape(y.shape)
