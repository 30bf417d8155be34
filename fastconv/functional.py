"""The public kernels: validate, normalise, compute geometry, dispatch.

Conventions follow PyTorch: NCHW arrays, weights ``(K, C // groups, R, S)``,
the same argument names and output-size rules. Arrays are NumPy float32 or
float64; results have the input's dtype. Inputs are never modified and may be
non-contiguous. On ``backend='cuda'`` GPU arrays (``__cuda_array_interface__``)
pass too; see ``fastconv.backends.cuda`` for where results then live.
"""

from __future__ import annotations

import secrets

import numpy as np

from fastconv import _dropout_hash, _shapes, _validate
from fastconv.backends import resolve

__all__ = [
    "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "dropout_mask", "dropout",
    "dropout_backward",
]


def _takes_device_arrays(primitive, backend, *values) -> bool:
    """Whether GPU arrays may pass validation in this call: only when one was
    given and the backend the call resolves to accepts them (cuda). Calls on
    NumPy arrays never get here past the first check."""
    if not any(_validate.is_device_array(value) for value in values):
        return False
    return getattr(resolve(primitive, backend), "ACCEPTS_DEVICE_ARRAYS", False)


# --------------------------------------------------------------- convolution

def _conv_padding(padding, kernel, dilation, stride):
    """(top, left, bottom, right) from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs stride 1, got stride={stride}")
            top, bottom = _shapes.same_padding(kernel[0], dilation[0])
            left, right = _shapes.same_padding(kernel[1], dilation[1])
            return (top, left, bottom, right)
        raise ValueError(
            f"padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
    pad_h, pad_w = _validate.pair(padding, "padding", minimum=0)
    return (pad_h, pad_w, pad_h, pad_w)


def _conv_setup(x, weight, stride, padding, dilation, groups, device=False):
    x = _validate.float_array(x, "x", ndim=4, device=device)
    weight = _validate.float_array(weight, "weight", ndim=4, device=device)
    _validate.same_dtype(x, "x", weight, "weight")
    groups = _validate.positive_int(groups, "groups")
    stride = _validate.pair(stride, "stride", minimum=1)
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    in_channels, out_channels = x.shape[1], weight.shape[0]
    if in_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels "
            f"(x.shape[1]={in_channels})")
    if out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels "
            f"(weight.shape[0]={out_channels})")
    if weight.shape[1] * groups != in_channels:
        raise ValueError(
            f"weight.shape[1] must be x.shape[1] // groups = "
            f"{in_channels // groups}, got weight of shape {weight.shape}")
    if min(weight.shape) < 1 or min(x.shape) < 1:
        raise ValueError(
            f"x and weight must have no empty axis, got {x.shape} and "
            f"{weight.shape}")
    pads = _conv_padding(padding, weight.shape[2:], dilation, stride)
    geometry = _shapes.conv_geometry(x.shape, weight.shape, stride, pads,
                                     dilation, groups)
    _validate.nonempty_output(geometry.out_height, geometry.out_width, "conv2d")
    return x, weight, geometry


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           *, backend=None, _packed=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W); weight: (K, C // groups, R, S); bias: (K,) or None.
    padding: int, pair, ``'valid'`` or ``'same'`` (stride 1 only).
    Returns y: (N, K, H_out, W_out) in x's dtype.
    """
    device = _takes_device_arrays("conv2d_forward", backend, x, weight, bias)
    x, weight, geometry = _conv_setup(x, weight, stride, padding, dilation,
                                      groups, device)
    if bias is not None:
        bias = _validate.float_array(bias, "bias", ndim=1, device=device)
        _validate.same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != geometry.out_channels:
            raise ValueError(
                f"bias must have length {geometry.out_channels} (weight.shape[0])"
                f", got {bias.shape[0]}")
    # _packed: nn.Conv2d's fastconv._packed.PackedWeights (or None), where
    # a backend may keep forms of the weight it computes (never stale).
    return resolve("conv2d_forward", backend).conv2d_forward(
        x, weight, bias, geometry, packed=_packed)


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1,
                    groups=1, *, need_input_grad=True, backend=None):
    """Gradients of ``conv2d`` with respect to x, weight and bias.

    Returns ``(grad_input, grad_weight, grad_bias)`` with the shapes of x,
    weight and (K,). ``need_input_grad=False`` skips grad_input (returned as
    None), which a network's first layer does not need.
    """
    device = _takes_device_arrays("conv2d_backward", backend, grad_output, x,
                                  weight)
    x, weight, geometry = _conv_setup(x, weight, stride, padding, dilation,
                                      groups, device)
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=4,
                                        device=device)
    _validate.same_dtype(x, "x", grad_output, "grad_output")
    _validate.grad_shape(grad_output, geometry.output_shape)
    return resolve("conv2d_backward", backend).conv2d_backward(
        grad_output, x, weight, geometry, bool(need_input_grad))


# ------------------------------------------------------------------- pooling

def _pool_setup(input_shape, kernel_size, stride, padding, dilation,
                ceil_mode, what):
    kernel = _validate.pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None or stride == () else _validate.pair(
        stride, "stride", minimum=1)
    pads = _validate.pair(padding, "padding", minimum=0)
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding={padding}"
            f" for kernel_size={kernel_size}")
    geometry = _shapes.pool_geometry(input_shape, kernel, stride, pads,
                                     dilation, bool(ceil_mode))
    _validate.nonempty_output(geometry.out_height, geometry.out_width, what)
    if _shapes.pool_window_misses_input(geometry):
        raise ValueError(
            f"{what}: with dilation={dilation} and padding={padding} some "
            f"window has no element inside the {input_shape[2]}x"
            f"{input_shape[3]} input")
    return geometry


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode=False, return_indices=False, *, backend=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf and may be at most half the kernel; NaN propagates.
    With ``return_indices`` also returns int64 indices, each the flat position
    of the maximum inside its input H*W plane (PyTorch's convention).
    """
    device = _takes_device_arrays("max_pool2d_forward", backend, x)
    x = _validate.float_array(x, "x", ndim=4, device=device)
    geometry = _pool_setup(tuple(x.shape), kernel_size, stride, padding,
                           dilation, ceil_mode, "max_pool2d")
    y, indices = resolve("max_pool2d_forward", backend).max_pool2d_forward(
        x, geometry)
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_output, indices, input_shape, *, backend=None):
    """Gradient of ``max_pool2d``: grad_output scattered to ``indices``.

    Where windows overlap, gradients landing on one input element add up.
    """
    device = _takes_device_arrays("max_pool2d_backward", backend, grad_output,
                                  indices)
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=4,
                                        device=device)
    input_shape = _validate.shape4(input_shape, "input_shape")
    if device and _validate.is_device_array(indices):
        # Range-checked by the backend: a host check would copy them back.
        if _validate.dtype_of(indices) != np.int64:
            raise TypeError(
                "indices on the GPU must be int64 (from max_pool2d(..., "
                f"return_indices=True)), got {_validate.dtype_of(indices)}")
    elif not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu":
        raise TypeError("indices must be an integer numpy.ndarray (from "
                        "max_pool2d(..., return_indices=True))")
    if tuple(indices.shape) != tuple(grad_output.shape):
        raise ValueError(
            f"indices must have grad_output's shape {tuple(grad_output.shape)}"
            f", got {tuple(indices.shape)}")
    if tuple(grad_output.shape[:2]) != input_shape[:2]:
        raise ValueError(
            f"input_shape {input_shape} must match grad_output's N and C "
            f"{tuple(grad_output.shape[:2])}")
    plane = input_shape[2] * input_shape[3]
    if isinstance(indices, np.ndarray):
        if indices.size and (indices.min() < 0 or indices.max() >= plane):
            raise ValueError(
                f"indices must lie in [0, H*W = {plane}) for input_shape "
                f"{input_shape}")
        indices = np.ascontiguousarray(indices, dtype=np.int64)
    # Only the shapes matter to the scatter; stride etc. are not needed.
    geometry = _shapes.PoolGeometry(
        *input_shape, 1, 1, 1, 1, 0, 0, 1, 1, *grad_output.shape[2:])
    return resolve("max_pool2d_backward", backend).max_pool2d_backward(
        grad_output, indices, geometry)


def _avg_setup(input_shape, kernel_size, stride, padding, ceil_mode,
               count_include_pad):
    geometry = _pool_setup(input_shape, kernel_size, stride, padding, 1,
                           ceil_mode, "avg_pool2d")
    divisors = _shapes.avg_pool_divisors(geometry, bool(count_include_pad))
    return geometry, divisors


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, backend=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``."""
    device = _takes_device_arrays("avg_pool2d_forward", backend, x)
    x = _validate.float_array(x, "x", ndim=4, device=device)
    geometry, divisors = _avg_setup(tuple(x.shape), kernel_size, stride,
                                    padding, ceil_mode, count_include_pad)
    return resolve("avg_pool2d_forward", backend).avg_pool2d_forward(
        x, geometry, divisors)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None,
                        padding=0, ceil_mode=False, count_include_pad=True, *,
                        backend=None):
    """Gradient of ``avg_pool2d`` with respect to its input."""
    device = _takes_device_arrays("avg_pool2d_backward", backend, grad_output)
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=4,
                                        device=device)
    input_shape = _validate.shape4(input_shape, "input_shape")
    geometry, divisors = _avg_setup(input_shape, kernel_size, stride, padding,
                                    ceil_mode, count_include_pad)
    _validate.grad_shape(grad_output, geometry.output_shape)
    return resolve("avg_pool2d_backward", backend).avg_pool2d_backward(
        grad_output, geometry, divisors)


# ------------------------------------------------------------------- dropout

def _mask_shape(shape):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)) or any(
            isinstance(s, bool) or not isinstance(s, (int, np.integer))
            for s in shape):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(
            f"shape must have non-negative sizes, got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def dropout_mask(shape, p, seed, *, backend=None):
    """Boolean keep-mask (True = kept) with drop probability ``p``.

    Element i of the flattened (C-order) mask depends only on (seed, i, p):
    every backend and thread count gives the same mask, and the mask of a
    larger array starts with the mask of a smaller one.
    """
    shape = _mask_shape(shape)
    p = _validate.probability(p)
    seed = _validate.seed(seed)
    size = _shapes.numel(shape)
    mask = resolve("dropout_mask", backend).dropout_mask(
        size, _dropout_hash.threshold(p), seed)
    return mask.reshape(shape)


def _keep_scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def dropout(x, p=0.5, *, seed=None, training=True, backend=None):
    """Inverted dropout: ``(y, mask)`` with ``y = x * mask / (1 - p)``.

    ``training=False`` returns ``(x, None)``; ``p=1`` gives zeros;
    ``seed=None`` draws a fresh seed.
    """
    p = _validate.probability(p)
    device = _takes_device_arrays("dropout_apply", backend, x)
    contiguous_x = _validate.float_array(x, "x", device=device)
    if not training:
        return x, None
    x = contiguous_x
    seed = secrets.randbits(64) if seed is None else _validate.seed(seed)
    module = resolve("dropout_mask", backend)
    shape = tuple(x.shape)
    # like=x: a device backend keeps the mask where x is
    mask = module.dropout_mask(_shapes.numel(shape), _dropout_hash.threshold(p),
                               seed, like=x).reshape(shape)
    y = resolve("dropout_apply", backend).dropout_apply(x, mask, _keep_scale(p))
    return y, mask


def dropout_backward(grad_output, mask, p, *, backend=None):
    """Gradient of ``dropout``: ``grad_output * mask / (1 - p)``."""
    device = _takes_device_arrays("dropout_apply", backend, grad_output, mask)
    grad_output = _validate.float_array(grad_output, "grad_output",
                                        device=device)
    p = _validate.probability(p)
    if device and _validate.is_device_array(mask):
        if _validate.dtype_of(mask) != np.bool_:
            raise TypeError("mask must be a bool array (from dropout), got "
                            f"dtype {_validate.dtype_of(mask)}")
    elif not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError("mask must be a bool numpy.ndarray (from dropout)")
    if tuple(mask.shape) != tuple(grad_output.shape):
        raise ValueError(
            f"mask must have grad_output's shape {tuple(grad_output.shape)}, "
            f"got {tuple(mask.shape)}")
    if isinstance(mask, np.ndarray):
        mask = np.ascontiguousarray(mask)
    return resolve("dropout_apply", backend).dropout_apply(
        grad_output, mask, _keep_scale(p))
