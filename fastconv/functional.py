"""The public kernels: validate, normalise, compute geometry, dispatch.

Conventions follow PyTorch: NCHW arrays, weights ``(K, C // groups, R, S)``,
the same argument names and output-size rules. Arrays are NumPy float32 or
float64; results have the input's dtype. Inputs are never modified and may be
non-contiguous. On ``backend='cuda'`` GPU arrays (``__cuda_array_interface__``)
pass too; see ``fastconv.backends.cuda`` for where results then live.
"""

from __future__ import annotations

import functools
import secrets

import numpy as np

from fastconv import _dropout_hash, _shapes, _validate
from fastconv.backends import resolve

__all__ = [
    "conv2d", "conv2d_backward", "conv_transpose2d",
    "conv_transpose2d_backward", "conv1d", "conv1d_backward", "max_pool2d",
    "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_pool1d",
    "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward",
    "dropout_mask", "dropout", "dropout_backward", "batch_norm_statistics",
    "batch_norm", "batch_norm_training", "batch_norm_backward", "relu",
    "relu_backward",
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
    """(top, left, bottom, right) from an int, a pair (pad_h, pad_w),
    ((top, bottom), (left, right)), 'valid' or 'same'."""
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
            f"padding must be an int, a pair, ((top, bottom), (left, right)),"
            f" 'valid' or 'same'; got {padding!r}")
    return _validate.padding_2d(padding, "padding")


def _conv_setup(x, weight, stride, padding, dilation, groups, device=False,
                what="conv2d"):
    x = _validate.float_array(x, "x", ndim=4, device=device)
    weight = _validate.float_array(weight, "weight", ndim=4, device=device)
    _validate.same_dtype(x, "x", weight, "weight")
    arguments = (tuple(x.shape), tuple(weight.shape), stride, padding,
                 dilation, groups, what)
    if all(_plain(value) for value in (stride, padding, dilation, groups)):
        # a layer's calls repeat: their checked geometry is remembered (a
        # failing check raises every time; lru_cache keeps only results)
        return x, weight, _cached_conv_geometry(*arguments)
    return x, weight, _conv_geometry(*arguments)


def _plain(value) -> bool:
    """An int, a string, or (nested) tuples of ints: an argument that can
    key a cache and means the same thing each time (not a bool, a NumPy
    integer or a list, which take the full checks)."""
    if type(value) is int or type(value) is str:
        return True
    return type(value) is tuple and all(
        type(item) is int or (type(item) is tuple
                              and all(type(v) is int for v in item))
        for item in value)


def _conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups,
                   what):
    """The checked ConvGeometry of a convolution's arguments."""
    groups = _validate.positive_int(groups, "groups")
    stride = _validate.pair(stride, "stride", minimum=1)
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    in_channels, out_channels = x_shape[1], weight_shape[0]
    if in_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels "
            f"(x.shape[1]={in_channels})")
    if out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels "
            f"(weight.shape[0]={out_channels})")
    if weight_shape[1] * groups != in_channels:
        raise ValueError(
            f"weight.shape[1] must be x.shape[1] // groups = "
            f"{in_channels // groups}, got weight of shape {weight_shape}")
    if min(weight_shape) < 1 or min(x_shape) < 1:
        raise ValueError(
            f"x and weight must have no empty axis, got {x_shape} and "
            f"{weight_shape}")
    pads = _conv_padding(padding, weight_shape[2:], dilation, stride)
    geometry = _shapes.conv_geometry(x_shape, weight_shape, stride, pads,
                                     dilation, groups)
    _validate.nonempty_output(geometry.out_height, geometry.out_width, what)
    _check_conv_planes(geometry, what)
    return geometry


_cached_conv_geometry = functools.lru_cache(maxsize=1024)(_conv_geometry)


def _check_conv_planes(geometry, what):
    _validate.array_size(geometry.output_shape, f"{what}'s output")
    _validate.array_size(geometry.input_shape, f"{what}'s input")
    for height, width in ((geometry.out_height, geometry.out_width),
                          (geometry.in_height, geometry.in_width)):
        if height * width > _validate.MAX_AXIS:
            # the GEMMs address a plane with int32 leading dimensions
            raise ValueError(
                f"{what}: a plane of {height}x{width} has more than "
                f"2**31 - 1 elements")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           *, backend=None, _packed=None, _clamp=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W); weight: (K, C // groups, R, S); bias: (K,) or None.
    padding: an int, a pair ``(pad_h, pad_w)``, ``((top, bottom), (left,
    right))`` as in ``numpy.pad``, ``'valid'`` or ``'same'`` (stride 1 only;
    an odd total puts the extra row/column at the bottom/right).
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
    module = resolve("conv2d_forward", backend)
    if _clamp is None:
        return module.conv2d_forward(x, weight, bias, geometry, packed=_packed)
    # _clamp: (lo, hi), an activation (ReLU, ReLU6) the ONNX runner fuses;
    # a backend that can applies it as it stores the output (FUSED_CLAMP)
    if getattr(module, "FUSED_CLAMP", False):
        return module.conv2d_forward(x, weight, bias, geometry,
                                     packed=_packed, clamp=_clamp)
    y = module.conv2d_forward(x, weight, bias, geometry, packed=_packed)
    return np.clip(y, y.dtype.type(_clamp[0]), y.dtype.type(_clamp[1]),
                   out=y)


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1,
                    groups=1, *, need_input_grad=True, need_weight_grad=True,
                    need_bias_grad=True, add_input_grad_to=None,
                    backend=None):
    """Gradients of ``conv2d`` with respect to x, weight and bias.

    Returns ``(grad_input, grad_weight, grad_bias)`` with the shapes of x,
    weight and (K,), in x's dtype. ``need_input_grad=False`` skips
    grad_input (returned as None), which a network's first layer does not
    need; ``need_weight_grad=False`` returns None for grad_weight and
    grad_bias (a frozen layer); ``need_bias_grad=False`` returns None for
    grad_bias alone (a layer without bias).

    ``add_input_grad_to`` (fastconv's own argument): a writeable
    C-contiguous numpy array of x's shape and dtype that the input gradient
    is added into, in place, and returned as grad_input: the gradient of
    an input that reaches the loss along two paths (a ResNet block's input,
    through the block and its shortcut), without a second array and a
    separate add. Ignored (left as it is) with ``need_input_grad=False``.
    """
    device = _takes_device_arrays("conv2d_backward", backend, grad_output, x,
                                  weight)
    x, weight, geometry = _conv_setup(x, weight, stride, padding, dilation,
                                      groups, device)
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=4,
                                        device=device)
    _validate.same_dtype(x, "x", grad_output, "grad_output")
    _validate.grad_shape(grad_output, geometry.output_shape)
    need_weight_grad = bool(need_weight_grad)
    need_bias_grad = need_weight_grad and bool(need_bias_grad)
    need_input_grad = bool(need_input_grad)
    target = None
    if add_input_grad_to is not None and need_input_grad:
        target = _validate.accumulator(add_input_grad_to,
                                       "add_input_grad_to", x,
                                       (grad_output, weight))
    module = resolve("conv2d_backward", backend)
    extra = {}
    if target is not None and getattr(module, "ADDS_INPUT_GRAD", False):
        extra["add_input_grad_to"] = target
    grad_input, grad_weight, grad_bias = module.conv2d_backward(
        grad_output, x, weight, geometry, need_input_grad,
        need_weight_grad=need_weight_grad, need_bias_grad=need_bias_grad,
        **extra)
    if target is not None and grad_input is not target:
        np.add(target, grad_input, out=target)
        grad_input = target
    if not need_weight_grad:
        grad_weight = None
    if not need_bias_grad:
        grad_bias = None
    return grad_input, grad_weight, grad_bias


# --------------------------------------------------- transposed convolution

def _transpose_setup(x, weight, stride, padding, output_padding, groups,
                     dilation, what):
    """x, weight and the conv2d geometry whose input gradient the
    transposed convolution is, with the output rows/columns it leaves
    uncovered (see ``_shapes.conv_transpose_geometry``)."""
    x = _validate.float_array(x, "x", ndim=4)
    weight = _validate.float_array(weight, "weight", ndim=4)
    _validate.same_dtype(x, "x", weight, "weight")
    groups = _validate.positive_int(groups, "groups")
    stride = _validate.pair(stride, "stride", minimum=1)
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    if isinstance(padding, str):
        raise TypeError(
            f"padding of {what} must be an int, a pair or ((top, bottom), "
            f"(left, right)); got {padding!r}")
    pads = _validate.padding_2d(padding, "padding")
    output_padding = _validate.pair(output_padding, "output_padding",
                                    minimum=0)
    for extra, step, spacing in zip(output_padding, stride, dilation):
        if extra >= step and extra >= spacing:
            raise ValueError(
                f"output_padding must be smaller than stride or dilation, got"
                f" output_padding={output_padding} for stride={stride} and "
                f"dilation={dilation}")
    in_channels = x.shape[1]
    if weight.shape[0] != in_channels:
        raise ValueError(
            f"weight must be (C_in, C_out // groups, R, S) with C_in = "
            f"x.shape[1] = {in_channels}, got weight of shape {weight.shape}")
    if in_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels "
            f"(x.shape[1]={in_channels})")
    if min(weight.shape) < 1 or min(x.shape) < 1:
        raise ValueError(
            f"x and weight must have no empty axis, got {x.shape} and "
            f"{weight.shape}")
    _validate.at_most_max_axis((weight.shape[1] * groups,),
                               "weight.shape[1] * groups", weight.shape)
    geometry, uncovered = _shapes.conv_transpose_geometry(
        x.shape, weight.shape, stride, pads, dilation, groups,
        output_padding)
    out_height = geometry.in_height + uncovered[0]
    out_width = geometry.in_width + uncovered[1]
    _validate.nonempty_output(out_height, out_width, what)
    if geometry.in_height < 1 or geometry.in_width < 1:
        raise ValueError(
            f"{what}: padding={padding} cuts away every output row or column"
            f" that x reaches")
    _check_conv_planes(geometry, what)
    _validate.array_size((x.shape[0], geometry.in_channels, out_height,
                          out_width), f"{what}'s output")
    return x, weight, geometry, uncovered


def _extend_uncovered(values, uncovered):
    """``values`` (N, C, H, W) with ``uncovered`` (rows, columns) of zeros
    appended at the bottom and right."""
    if uncovered == (0, 0):
        return values
    batch, channels, height, width = values.shape
    extended = np.zeros((batch, channels, height + uncovered[0],
                         width + uncovered[1]), dtype=values.dtype)
    extended[:, :, :height, :width] = values
    return extended


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0,
                     output_padding=0, groups=1, dilation=1, *, backend=None):
    """Transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    x: (N, C_in, H, W); weight: (C_in, C_out // groups, R, S) (PyTorch's
    layout); bias: (C_out,) or None. Output (N, C_out, H_out, W_out) in x's
    dtype with ``H_out = (H - 1) * stride - pad_top - pad_bottom + dilation *
    (R - 1) + output_padding + 1``, likewise W_out. padding: an int, a pair or
    ((top, bottom), (left, right)): rows and columns cut from the full
    output; output_padding (each smaller than stride or dilation) adds rows
    and columns at the bottom/right. It is the input gradient of
    ``conv2d`` and runs on conv2d's backward kernels. NumPy arrays only.
    """
    x, weight, geometry, uncovered = _transpose_setup(
        x, weight, stride, padding, output_padding, groups, dilation,
        "conv_transpose2d")
    if bias is not None:
        bias = _validate.float_array(bias, "bias", ndim=1)
        _validate.same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != geometry.in_channels:
            raise ValueError(
                f"bias must have length C_out = {geometry.in_channels} "
                f"(weight.shape[1] * groups), got {bias.shape[0]}")
    y, _, _ = resolve("conv2d_backward", backend).conv2d_backward(
        x, None, weight, geometry, True, need_weight_grad=False)
    y = _extend_uncovered(y, uncovered)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(grad_output, x, weight, stride=1, padding=0,
                              output_padding=0, groups=1, dilation=1, *,
                              need_input_grad=True, backend=None):
    """Gradients of ``conv_transpose2d`` with respect to x, weight and bias.

    Returns ``(grad_input, grad_weight, grad_bias)`` with the shapes of x,
    weight and (C_out,), in x's dtype; ``need_input_grad=False`` returns
    None for grad_input. grad_input is conv2d of grad_output with the same
    weight; grad_weight is conv2d's weight gradient with the roles of input
    and output gradient swapped.
    """
    x, weight, geometry, uncovered = _transpose_setup(
        x, weight, stride, padding, output_padding, groups, dilation,
        "conv_transpose2d_backward")
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=4)
    _validate.same_dtype(x, "x", grad_output, "grad_output")
    batch, channels, height, width = geometry.input_shape
    _validate.grad_shape(grad_output, (batch, channels, height + uncovered[0],
                                       width + uncovered[1]))
    # the uncovered rows/columns depend on the bias alone
    covered = np.ascontiguousarray(grad_output[:, :, :height, :width])
    grad_input = None
    if need_input_grad:
        grad_input = resolve("conv2d_forward", backend).conv2d_forward(
            covered, weight, None, geometry)
    _, grad_weight, _ = resolve("conv2d_backward", backend).conv2d_backward(
        x, covered, weight, geometry, False, need_bias_grad=False)
    grad_bias = grad_output.sum(axis=(0, 2, 3), dtype=np.float64).astype(
        x.dtype)
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------- 1-D convolution

def _single(value, name, minimum):
    """An int or a 1-sequence of one, in [minimum, MAX_AXIS]."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple, got "
                             f"{value!r}")
        value = value[0]
    return _validate.pair(value, name, minimum)[0]


def _conv1d_args(x, weight, stride, padding, dilation):
    """x and weight with an H of 1, and the 2-D stride, padding, dilation."""
    x = _validate.float_array(x, "x", ndim=3)
    weight = _validate.float_array(weight, "weight", ndim=3)
    stride = _single(stride, "stride", 1)
    dilation = _single(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(
                f"padding must be an int, a pair (left, right), 'valid' or "
                f"'same'; got {padding!r}")
        if padding == "same" and stride != 1:
            raise ValueError(
                f"padding='same' needs stride 1, got stride={stride}")
        pads = padding
    else:
        left, right = _validate.padding_1d(padding, "padding")
        pads = ((0, 0), (left, right))
    return x[:, :, None, :], weight[:, :, None, :], (1, stride), pads, (
        1, dilation)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           *, backend=None):
    """1-D cross-correlation, as ``torch.nn.functional.conv1d``.

    x: (N, C, L); weight: (K, C // groups, R); bias: (K,) or None.
    padding: an int, ``(left, right)``, ``'valid'`` or ``'same'`` (stride 1;
    an odd total puts the extra element on the right). Returns (N, K,
    L_out) in x's dtype. Runs on the 2-D kernels with H = 1; NumPy arrays
    only.
    """
    x, weight, stride, pads, dilation = _conv1d_args(x, weight, stride,
                                                     padding, dilation)
    x, weight, geometry = _conv_setup(x, weight, stride, pads, dilation,
                                      groups, what="conv1d")
    if bias is not None:
        bias = _validate.float_array(bias, "bias", ndim=1)
        _validate.same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != geometry.out_channels:
            raise ValueError(
                f"bias must have length {geometry.out_channels} (weight.shape[0])"
                f", got {bias.shape[0]}")
    y = resolve("conv2d_forward", backend).conv2d_forward(x, weight, bias,
                                                          geometry)
    return y[:, :, 0, :]


def conv1d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1,
                    groups=1, *, need_input_grad=True, backend=None):
    """Gradients of ``conv1d``: ``(grad_input, grad_weight, grad_bias)`` with
    the shapes of x (N, C, L), weight (K, C // groups, R) and (K,);
    ``need_input_grad=False`` returns None for grad_input."""
    x, weight, stride, pads, dilation = _conv1d_args(x, weight, stride,
                                                     padding, dilation)
    x, weight, geometry = _conv_setup(x, weight, stride, pads, dilation,
                                      groups, what="conv1d_backward")
    grad_output = _validate.float_array(grad_output, "grad_output", ndim=3)
    _validate.same_dtype(x, "x", grad_output, "grad_output")
    _validate.grad_shape(grad_output, (geometry.batch, geometry.out_channels,
                                       geometry.out_width))
    grad_input, grad_weight, grad_bias = resolve(
        "conv2d_backward", backend).conv2d_backward(
            grad_output[:, :, None, :], x, weight, geometry,
            bool(need_input_grad))
    if grad_input is not None:
        grad_input = grad_input[:, :, 0, :]
    return grad_input, grad_weight[:, :, 0, :], grad_bias


# ------------------------------------------------------------------- pooling

def _no_stride(stride) -> bool:
    """Whether a pooling's stride is left out (None or an empty tuple, as
    PyTorch takes it): the kernel size then. Compared by type first, so
    that a NumPy integer or array is checked as a stride, not broadcast
    against ()."""
    return stride is None or (isinstance(stride, (tuple, list))
                              and len(stride) == 0)


def _pool_setup(input_shape, kernel_size, stride, padding, dilation,
                ceil_mode, what):
    """The pooling geometry as the call names it (checked: padding at most
    half the kernel on each side, a non-empty output, every window reaching
    into the input)."""
    kernel = _validate.pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if _no_stride(stride) else _validate.pair(
        stride, "stride", minimum=1)
    pads = _validate.padding_2d(padding, "padding")
    dilation = _validate.pair(dilation, "dilation", minimum=1)
    half = (kernel[0] // 2, kernel[1] // 2)
    if max(pads[0], pads[2]) > half[0] or max(pads[1], pads[3]) > half[1]:
        raise ValueError(
            f"padding must be at most half of kernel_size on each side, got "
            f"padding={padding} for kernel_size={kernel_size}")
    geometry = _shapes.pool_geometry(input_shape, kernel, stride, pads,
                                     dilation, bool(ceil_mode))
    _validate.nonempty_output(geometry.out_height, geometry.out_width, what)
    _validate.array_size(geometry.output_shape, f"{what}'s output")
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
    of the maximum inside its input H*W plane (PyTorch's convention). x may
    also be uint8, int8, int16, int32 or int64 (CPU backends): y keeps the
    dtype, padding counts as its minimum and ties go to the first maximum.
    """
    device = _takes_device_arrays("max_pool2d_forward", backend, x)
    x = _validate.max_pool_array(x, "x", ndim=4, device=device)
    if (x.dtype in _validate.INTEGER_MAX_POOL_DTYPES and getattr(
            resolve("max_pool2d_forward", backend), "ACCEPTS_DEVICE_ARRAYS",
            False)):
        raise TypeError(
            f"x has dtype {x.dtype}: integer max pooling runs on the CPU "
            f"backends only (backend='cuda' takes float32 or float64)")
    geometry = _pool_setup(tuple(x.shape), kernel_size, stride, padding,
                           dilation, ceil_mode, "max_pool2d")
    module = resolve("max_pool2d_forward", backend)
    geometry = _shapes.taps_reaching_input(geometry)
    if not return_indices and getattr(module, "MAX_POOL_VALUES_ONLY", False):
        return module.max_pool2d_forward(x, geometry, return_indices=False)[0]
    y, indices = module.max_pool2d_forward(x, geometry)
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
    module = resolve("max_pool2d_backward", backend)
    if isinstance(indices, np.ndarray):
        # (a backend that range-checks as it scatters raises the same error)
        if (not getattr(module, "CHECKS_POOL_INDICES", False) and indices.size
                and (indices.min() < 0 or indices.max() >= plane)):
            raise ValueError(
                f"indices must lie in [0, H*W = {plane}) for input_shape "
                f"{input_shape}")
        indices = np.ascontiguousarray(indices, dtype=np.int64)
    # Only the shapes matter to the scatter; stride etc. are not needed.
    geometry = _shapes.PoolGeometry(
        *input_shape, 1, 1, 1, 1, 0, 0, 1, 1, *grad_output.shape[2:])
    return module.max_pool2d_backward(grad_output, indices, geometry)


def _avg_setup(input_shape, kernel_size, stride, padding, ceil_mode,
               count_include_pad):
    """(geometry for the backend, divisor table) of an average pooling."""
    geometry = _pool_setup(input_shape, kernel_size, stride, padding, 1,
                           ceil_mode, "avg_pool2d")
    divisors = _shapes.avg_pool_divisors(geometry, bool(count_include_pad))
    return _shapes.taps_reaching_input(geometry), divisors


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


# --------------------------------------------------------------- 1-D pooling
#
# An (N, C, L) sweep is the 2-D one on (N, C, 1, L) with a kernel of height
# 1; indices are then positions along L, as PyTorch's. The 1-D arguments
# are checked first (messages name the 1-D call), the 2-D function runs.

def _unit_height(value, name):
    """An ndarray (N, C, L) as an (N, C, 1, L) view (dtype checked later)."""
    if not isinstance(value, np.ndarray):
        _validate.float_array(value, name)  # raises the TypeError
    if value.ndim != 3:
        raise ValueError(
            f"{name} must be 3-D (N, C, L), got shape {value.shape} "
            f"({value.ndim}-D)")
    return value[:, :, None, :]


def _shape3(value, name):
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be a 3-tuple (N, C, L), got {value!r}")
    batch, channels, length = _validate.shape4((1,) + tuple(value), name)[1:]
    return (batch, channels, 1, length)


def _pool1d_args(input_shape, kernel_size, stride, padding, dilation,
                 ceil_mode, what):
    """The 2-D (kernel, stride, padding, dilation) of a 1-D pooling, after
    checking it as the 1-D call names it."""
    kernel = _single(kernel_size, "kernel_size", 1)
    stride = kernel if _no_stride(stride) else _single(
        stride, "stride", 1)
    left, right = _validate.padding_1d(padding, "padding")
    dilation = _single(dilation, "dilation", 1)
    if max(left, right) > kernel // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size on each side, got "
            f"padding={padding} for kernel_size={kernel_size}")
    args = ((1, kernel), (1, stride), ((0, 0), (left, right)), (1, dilation))
    _pool_setup(input_shape, *args, ceil_mode, what)
    return args


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode=False, return_indices=False, *, backend=None):
    """Max pooling of (N, C, L), as ``torch.nn.functional.max_pool1d``.

    padding: an int or ``(left, right)``, each at most half the kernel
    (-inf). Returns (N, C, L_out) in x's dtype, and with ``return_indices``
    int64 positions along L. NumPy arrays only.
    """
    x4 = _unit_height(x, "x")
    kernel, stride, padding, dilation = _pool1d_args(
        x4.shape, kernel_size, stride, padding, dilation, ceil_mode,
        "max_pool1d")
    result = max_pool2d(x4, kernel, stride, padding, dilation, ceil_mode,
                        return_indices, backend=backend)
    if return_indices:
        return result[0][:, :, 0, :], result[1][:, :, 0, :]
    return result[:, :, 0, :]


def max_pool1d_backward(grad_output, indices, input_shape, *, backend=None):
    """Gradient of ``max_pool1d``: grad_output (N, C, L_out) added at
    ``indices`` into (N, C, L) = ``input_shape``."""
    grad_output = _unit_height(grad_output, "grad_output")
    if isinstance(indices, np.ndarray):
        indices = _unit_height(indices, "indices")
    input_shape = _shape3(input_shape, "input_shape")
    return max_pool2d_backward(grad_output, indices, input_shape,
                               backend=backend)[:, :, 0, :]


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, backend=None):
    """Average pooling of (N, C, L), as ``torch.nn.functional.avg_pool1d``;
    padding an int or ``(left, right)``. Returns (N, C, L_out) in x's dtype.
    NumPy arrays only."""
    x4 = _unit_height(x, "x")
    kernel, stride, padding, _ = _pool1d_args(
        x4.shape, kernel_size, stride, padding, 1, ceil_mode, "avg_pool1d")
    return avg_pool2d(x4, kernel, stride, padding, ceil_mode,
                      count_include_pad, backend=backend)[:, :, 0, :]


def avg_pool1d_backward(grad_output, input_shape, kernel_size, stride=None,
                        padding=0, ceil_mode=False, count_include_pad=True, *,
                        backend=None):
    """Gradient of ``avg_pool1d``: (N, C, L) = ``input_shape``."""
    grad_output = _unit_height(grad_output, "grad_output")
    input_shape = _shape3(input_shape, "input_shape")
    kernel, stride, padding, _ = _pool1d_args(
        input_shape, kernel_size, stride, padding, 1, ceil_mode,
        "avg_pool1d_backward")
    return avg_pool2d_backward(grad_output, input_shape, kernel, stride,
                               padding, ceil_mode, count_include_pad,
                               backend=backend)[:, :, 0, :]


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
    shape = tuple(int(s) for s in shape)
    _validate.array_size(shape, "shape")
    return shape


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
    shape = tuple(x.shape)  # x's own: float_array makes a 0-d array 1-d
    x = contiguous_x
    seed = secrets.randbits(64) if seed is None else _validate.seed(seed)
    module = resolve("dropout_mask", backend)
    # like=x: a device backend keeps the mask where x is
    mask = module.dropout_mask(_shapes.numel(shape), _dropout_hash.threshold(p),
                               seed, like=x).reshape(x.shape)
    y = resolve("dropout_apply", backend).dropout_apply(x, mask, _keep_scale(p))
    return y.reshape(shape), mask.reshape(shape)


def dropout_backward(grad_output, mask, p, *, backend=None):
    """Gradient of ``dropout``: ``grad_output * mask / (1 - p)``."""
    device = _takes_device_arrays("dropout_apply", backend, grad_output, mask)
    shape = tuple(getattr(grad_output, "shape", ()))  # 0-d stays 0-d
    grad_output = _validate.float_array(grad_output, "grad_output",
                                        device=device)
    p = _validate.probability(p)
    if device and _validate.is_device_array(mask):
        if _validate.dtype_of(mask) != np.bool_:
            raise TypeError("mask must be a bool array (from dropout), got "
                            f"dtype {_validate.dtype_of(mask)}")
    elif not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError("mask must be a bool numpy.ndarray (from dropout)")
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"mask must have grad_output's shape {shape}, "
            f"got {tuple(mask.shape)}")
    if isinstance(mask, np.ndarray):
        mask = np.ascontiguousarray(mask)
    return resolve("dropout_apply", backend).dropout_apply(
        grad_output, mask.reshape(grad_output.shape), _keep_scale(p)
    ).reshape(shape)


# ------------------------------------------------------ batch normalisation

def _channel_rows(x, name, device):
    """x, an (N, C, ...) float array, as C-contiguous (N, C, L) rows (a
    device array keeps its shape: the device backend reshapes it)."""
    shape = tuple(getattr(x, "shape", ()))
    x = _validate.float_array(x, name, device=device)
    if len(shape) < 2:
        raise ValueError(f"{name} must be (N, C, ...), at least 2-D, got "
                         f"shape {shape}")
    if isinstance(x, np.ndarray):
        x = x.reshape(shape[0], shape[1], _shapes.numel(shape[2:]))
    return x, shape


def _channel_vector(value, name, channels, optional=False):
    """A (C,) host float array as float64; None stays None if ``optional``."""
    if value is None and optional:
        return None
    value = _validate.float_array(value, name, ndim=1)
    if value.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) (x's "
                         f"channels), got {value.shape}")
    return value.astype(np.float64)


def _eps(value):
    if isinstance(value, bool) or not isinstance(value, (int, float,
                                                         np.floating,
                                                         np.integer)):
        raise TypeError(f"eps must be a real number, got {value!r}")
    value = float(value)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"eps must be finite and >= 0, got {value}")
    return value


def _per_channel_count(shape, name):
    count = shape[0] * _shapes.numel(shape[2:])
    if count == 0:
        raise ValueError(f"{name} must have at least one value per channel, "
                         f"got shape {shape}")
    return count


def batch_norm_statistics(x, *, backend=None):
    """``(mean, var)`` of each channel of ``x`` (N, C, ...) over every axis
    but 1: float64 ``(C,)`` arrays, ``var`` biased (what training-mode
    batch norm normalises with; PyTorch's running variance is the unbiased
    ``var * count / (count - 1)``).

    Two passes (the mean of the squares of x - mean: exact where the mean
    dwarfs the spread), sums in float64 in one fixed order on each backend,
    so the same bits for any thread count. ``x`` needs a value per channel.
    """
    device = _takes_device_arrays("batch_norm_stats", backend, x)
    x, shape = _channel_rows(x, "x", device)
    _per_channel_count(shape, "x")
    return resolve("batch_norm_stats", backend).batch_norm_stats(x)


def _fuses_batch_norm_relu(module) -> bool:
    """Whether a backend's batch_norm_forward / batch_norm_backward take
    ``relu`` (FUSED_BATCH_NORM_RELU); the others get a ReLU pass beside."""
    return getattr(module, "FUSED_BATCH_NORM_RELU", False)


def _batch_norm_forward(backend, x, mean, var, weight, bias, eps, relu):
    """The backend's batch_norm_forward, with ``relu`` fused where the
    backend fuses it, else a relu_forward after."""
    module = resolve("batch_norm_forward", backend)
    if not relu:
        return module.batch_norm_forward(x, mean, var, weight, bias, eps)
    if _fuses_batch_norm_relu(module):
        return module.batch_norm_forward(x, mean, var, weight, bias, eps,
                                         relu=True)
    y, mean, var = module.batch_norm_forward(x, mean, var, weight, bias, eps)
    return resolve("relu_forward", backend).relu_forward(y), mean, var


def batch_norm(x, mean, var, weight=None, bias=None, eps=1e-5, *,
               relu=False, backend=None):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel (axis 1
    of ``x``, (N, C, ...)), in x's dtype: ``torch.nn.functional.batch_norm``
    with the statistics given (what eval mode runs; ``batch_norm_training``
    normalises with x's own).

    ``mean``, ``var``, ``weight``, ``bias``: (C,) float arrays; ``weight``
    None means 1, ``bias`` None 0. One pass over x: ``(x - mean[c]) *
    scale[c] + shift[c]``, the per-channel factors formed in float64.
    ``relu=True``: ``relu`` of that, in the same pass where the backend
    fuses the two (cython), else a second one.
    """
    device = _takes_device_arrays("batch_norm_forward", backend, x)
    x, shape = _channel_rows(x, "x", device)
    channels = shape[1]
    eps = _eps(eps)
    mean = _channel_vector(mean, "mean", channels)
    var = _channel_vector(var, "var", channels)
    weight = _channel_vector(weight, "weight", channels, optional=True)
    bias = _channel_vector(bias, "bias", channels, optional=True)
    y, _, _ = _batch_norm_forward(backend, x, mean, var, weight, bias, eps,
                                  bool(relu))
    return y.reshape(shape)


def batch_norm_training(x, weight=None, bias=None, eps=1e-5, *,
                        relu=False, backend=None):
    """Batch norm with x's own statistics (training mode): ``(y, mean,
    var)``, ``mean`` and ``var`` as ``batch_norm_statistics`` gives them
    (float64, var biased). The same result as those two calls, in one
    call that normalises each channel while its values are in cache.
    ``relu=True``: ``y`` is ``relu`` of the normalised x, as in
    ``batch_norm``.
    """
    device = _takes_device_arrays("batch_norm_forward", backend, x)
    x, shape = _channel_rows(x, "x", device)
    channels = shape[1]
    eps = _eps(eps)
    _per_channel_count(shape, "x")
    weight = _channel_vector(weight, "weight", channels, optional=True)
    bias = _channel_vector(bias, "bias", channels, optional=True)
    y, mean, var = _batch_norm_forward(backend, x, None, None, weight, bias,
                                       eps, bool(relu))
    return y.reshape(shape), mean, var


def batch_norm_backward(grad_output, x, mean, var, weight=None, eps=1e-5, *,
                        batch_statistics=True, relu=False, bias=None,
                        backend=None):
    """Gradients of ``batch_norm``: ``(grad_input, grad_weight,
    grad_bias)``, the last two (C,) in x's dtype (the gradients a weight of
    ones and a bias of zeros would get when ``weight`` is None).

    ``batch_statistics=True``: ``mean`` and ``var`` were x's own
    (``batch_norm_training``, training mode), and the gradient flows
    through them too; False: they were constants (running statistics).
    Two passes: the per-channel sums of grad_output and grad_output * x,
    then ``grad * a[c] + (x - mean[c]) * b[c] + d[c]`` (the factors in
    ``fastconv.backends._normalization``). ``relu=True``: the gradients of
    ``batch_norm(..., relu=True)`` with this ``bias`` (None: 0):
    grad_output is first masked as ``relu_backward`` masks it, the
    normalised x recomputed rather than passed (fused into the two passes
    where the backend fuses them).
    """
    device = _takes_device_arrays("batch_norm_backward", backend,
                                  grad_output, x)
    x, shape = _channel_rows(x, "x", device)
    grad_output, grad_shape = _channel_rows(grad_output, "grad_output",
                                            device)
    if grad_shape != shape:
        raise ValueError(f"grad_output must have x's shape {shape}, got "
                         f"{grad_shape}")
    _validate.same_dtype(grad_output, "grad_output", x, "x")
    channels = shape[1]
    eps = _eps(eps)
    mean = _channel_vector(mean, "mean", channels)
    var = _channel_vector(var, "var", channels)
    weight = _channel_vector(weight, "weight", channels, optional=True)
    bias = _channel_vector(bias, "bias", channels, optional=True)
    batch_statistics = bool(batch_statistics)
    if batch_statistics:
        _per_channel_count(shape, "x")
    module = resolve("batch_norm_backward", backend)
    if relu and _fuses_batch_norm_relu(module):
        grad_input, grad_weight, grad_bias = module.batch_norm_backward(
            grad_output, x, mean, var, weight, eps, batch_statistics,
            bias=bias, relu=True)
    else:
        if relu:  # the normalised x again, then ReLU's mask from it
            normalised, _, _ = _batch_norm_forward(
                backend, x, mean, var, weight, bias, eps, False)
            grad_output = resolve("relu_backward", backend).relu_backward(
                grad_output, normalised)
        grad_input, grad_weight, grad_bias = module.batch_norm_backward(
            grad_output, x, mean, var, weight, eps, batch_statistics)
    dtype = _validate.dtype_of(x)
    return (grad_input.reshape(shape), grad_weight.astype(dtype),
            grad_bias.astype(dtype))


def relu(x, *, residual=None, backend=None):
    """``max(x, 0)`` elementwise in x's dtype and shape; NaN stays NaN.

    ``residual`` (an array of x's shape and dtype; fastconv's own
    argument): ``max(x + residual, 0)`` in one pass, the sum rounded once
    as ``numpy.add`` rounds it: a ResNet block's shortcut junction. Its
    gradient, ``relu_backward`` of the output, is the gradient of both x
    and residual."""
    device = _takes_device_arrays("relu_forward", backend, x)
    shape = tuple(getattr(x, "shape", ()))
    x = _validate.float_array(x, "x", device=device)
    module = resolve("relu_forward", backend)
    if residual is None:
        return module.relu_forward(x).reshape(shape)
    residual_shape = tuple(getattr(residual, "shape", ()))
    if hasattr(residual, "shape") and residual_shape != shape:
        # (before float_array's copy: a broadcast view may name any shape)
        raise ValueError(f"residual must have x's shape {shape}, got "
                         f"{residual_shape}")
    residual = _validate.float_array(residual, "residual", device=device)
    _validate.same_dtype(x, "x", residual, "residual")
    return module.relu_forward(x, residual.reshape(x.shape)).reshape(shape)


def relu_backward(grad_output, output, *, backend=None):
    """Gradient of ``relu`` from its ``output``: 0 where ``output <= 0``
    (also where grad_output is NaN there), else ``grad_output`` (a NaN
    output passes it, as in PyTorch)."""
    device = _takes_device_arrays("relu_backward", backend, grad_output,
                                  output)
    shape = tuple(getattr(output, "shape", ()))
    output = _validate.float_array(output, "output", device=device)
    grad_output = _validate.float_array(grad_output, "grad_output",
                                        device=device)
    if tuple(grad_output.shape) != tuple(output.shape):
        raise ValueError(f"grad_output must have output's shape {shape}, "
                         f"got {tuple(grad_output.shape)}")
    _validate.same_dtype(grad_output, "grad_output", output, "output")
    return resolve("relu_backward", backend).relu_backward(
        grad_output, output).reshape(shape)
