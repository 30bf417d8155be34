"""Layers with PyTorch's constructor signatures and ``state_dict`` keys.

Convolution, pooling and dropout run on fastconv's kernels
(``fastconv.functional``) on the process's current backend, and so do ReLU
and batch norm; the dense layer is a BLAS product (``fastconv._threads``). Each forward
saves what its backward needs with ``Module.save_for_backward``; a layer may
run several forwards before their backwards (see ``fastconv.nn.module``).

Inputs and output gradients must be NumPy float32 or float64 arrays,
checked like the functional API's: a list, a torch tensor or an integer
array is a TypeError. One deliberate exception: a layer with parameters
computes in its parameters' dtype and casts a float input of the other
float dtype (PyTorch raises there); a layer without parameters computes in
its input's dtype.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastconv import _threads, _validate
from fastconv import functional as F
from fastconv._packed import PackedWeights
from fastconv.nn import init
from fastconv.nn.module import FLOAT_DTYPES, Module, Parameter

__all__ = [
    "Conv2d", "ConvTranspose2d", "Conv1d", "Linear", "ReLU", "Flatten",
    "Identity", "MaxPool2d", "AvgPool2d", "MaxPool1d", "AvgPool1d",
    "AdaptiveAvgPool2d", "Dropout", "BatchNorm2d", "BatchNormReLU2d",
]


def _param_dtype(dtype) -> np.dtype:
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_device(device) -> None:
    if device not in (None, "cpu"):
        raise ValueError(
            f"device must be None or 'cpu' (fastconv layers hold NumPy "
            f"arrays), got {device!r}")


def _as_float_array(x, dtype=None, name="input") -> np.ndarray:
    """x, a float32/float64 ndarray, cast to ``dtype`` when given."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 or float64, got "
            f"{type(x).__module__}.{type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if dtype is not None:
        return x.astype(dtype, copy=False)
    return x


def _grad_array(grad_output, dtype=None) -> np.ndarray:
    return _as_float_array(grad_output, dtype, "grad_output")


def _require_ndim(x, ndim, layer, layout):
    if x.ndim != ndim:
        raise ValueError(
            f"{type(layer).__name__} expects {ndim}-D input {layout}, got "
            f"shape {x.shape}")


def _positive_count(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= value <= _validate.MAX_AXIS:
        raise ValueError(
            f"{name} must be a positive int (at most 2**31 - 1), got "
            f"{value!r}")
    return int(value)


def _stored_padding_2d(padding):
    """(pad_h, pad_w) as PyTorch stores it, or ((top, bottom), (left,
    right)) when the sides differ."""
    top, left, bottom, right = _validate.padding_2d(padding, "padding")
    if (top, left) == (bottom, right):
        return (top, left)
    return ((top, bottom), (left, right))


def _check_padding_mode(padding_mode):
    if padding_mode != "zeros":
        raise ValueError(
            f"padding_mode must be 'zeros' (the only mode fastconv's "
            f"kernels implement), got {padding_mode!r}")


def _channels_and_groups(in_channels, out_channels, groups):
    in_channels = _positive_count(in_channels, "in_channels")
    out_channels = _positive_count(out_channels, "out_channels")
    groups = _positive_count(groups, "groups")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and "
            f"out_channels={out_channels}")
    return in_channels, out_channels, groups


def _single(value, name, minimum):
    """PyTorch's 1-D layer argument: an int or a 1-tuple, stored as a
    1-tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(
                f"{name} must be an int or a 1-tuple, got {value!r}")
        value = value[0]
    return (_validate.pair(value, name, minimum)[0],)


# --------------------------------------------------------------- convolution

class _ConvLayer(Module):
    """What the convolution layers share: the bias as the functional layer
    takes it, the gradients' accumulation and PyTorch's ``extra_repr``."""

    #: attribute -> the values ``extra_repr`` leaves out (PyTorch's defaults)
    _REPR_DEFAULTS: dict = {}

    def _bias_array(self):
        return None if self.bias is None else self.bias.data

    def _accumulate_grads(self, grad_weight, grad_bias):
        self.weight.accumulate_grad(grad_weight)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_bias)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}")
        for name, defaults in self._REPR_DEFAULTS.items():
            value = getattr(self, name)
            if value not in defaults:
                text += f", {name}={value}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Conv2d(_ConvLayer):
    """2-D convolution, as ``torch.nn.Conv2d``.

    weight: (out_channels, in_channels // groups, kH, kW); bias:
    (out_channels,). Initialised like PyTorch (uniform in +-1/sqrt(fan_in))
    from ``generator`` (None: ``fastconv.nn.init``'s default generator).

    ``need_input_grad`` (default True) may be set False on a network's first
    layer: ``backward`` then skips the input gradient and returns None.
    ``backward(grad_output, add_input_grad_to=array)`` adds the input
    gradient into that array and returns it (see
    ``fastconv.functional.conv2d_backward``): a ResNet block sums its
    shortcut's gradient that way.
    """

    _REPR_DEFAULTS = {"padding": ((0, 0), "valid"), "dilation": ((1, 1),)}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *,
                 generator=None):
        super().__init__()
        _check_device(device)
        _check_padding_mode(padding_mode)
        in_channels, out_channels, groups = _channels_and_groups(
            in_channels, out_channels, groups)
        kernel = _validate.pair(kernel_size, "kernel_size", minimum=1)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel
        self.stride = _validate.pair(stride, "stride", minimum=1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair, 'same' or "
                                 f"'valid'; got {padding!r}")
            if padding == "same" and _validate.pair(
                    stride, "stride", minimum=1) != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            self.padding = padding
        else:
            self.padding = _stored_padding_2d(padding)
        self.dilation = _validate.pair(dilation, "dilation", minimum=1)
        self.groups = groups
        self.padding_mode = padding_mode
        self.need_input_grad = True
        weight, bias_values = init.default_weight_and_bias(
            (out_channels, in_channels // groups) + kernel,
            out_channels if bias else None, _param_dtype(dtype), generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_values) if bias else None
        # Forms of the weight the backend computes (Winograd-domain
        # filters), kept while the weight's values stay the same.
        self._packed = PackedWeights()

    def forward(self, x):
        x = _as_float_array(x, self.weight.dtype)
        self.save_for_backward(x)
        return F.conv2d(x, self.weight.data, self._bias_array(), self.stride,
                        self.padding, self.dilation, self.groups,
                        _packed=self._packed)

    def backward(self, grad_output, *, add_input_grad_to=None):
        x, = self.pop_saved()
        grad_output = _grad_array(grad_output, self.weight.dtype)
        grad_input, grad_weight, grad_bias = F.conv2d_backward(
            grad_output, x, self.weight.data, self.stride, self.padding,
            self.dilation, self.groups, need_input_grad=self.need_input_grad,
            need_bias_grad=self.bias is not None,
            add_input_grad_to=add_input_grad_to)
        self._accumulate_grads(grad_weight, grad_bias)
        return grad_input


class ConvTranspose2d(_ConvLayer):
    """Transposed 2-D convolution, as ``torch.nn.ConvTranspose2d``.

    weight: (in_channels, out_channels // groups, kH, kW) (PyTorch's
    layout); bias: (out_channels,). Initialised like PyTorch (uniform in
    +-1/sqrt(fan_in), fan_in from the weight's second axis). ``padding`` is
    an int, a pair or ((top, bottom), (left, right)); ``output_padding``
    must be smaller than stride or dilation. ``forward`` takes no
    ``output_size``. ``need_input_grad`` as in ``Conv2d``.
    """

    _REPR_DEFAULTS = {"padding": ((0, 0),), "output_padding": ((0, 0),),
                      "dilation": ((1, 1),)}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, output_padding=0, groups=1, bias=True,
                 dilation=1, padding_mode="zeros", device=None, dtype=None,
                 *, generator=None):
        super().__init__()
        _check_device(device)
        _check_padding_mode(padding_mode)
        in_channels, out_channels, groups = _channels_and_groups(
            in_channels, out_channels, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _validate.pair(kernel_size, "kernel_size",
                                          minimum=1)
        self.stride = _validate.pair(stride, "stride", minimum=1)
        self.padding = _stored_padding_2d(padding)
        self.output_padding = _validate.pair(output_padding,
                                             "output_padding", minimum=0)
        self.dilation = _validate.pair(dilation, "dilation", minimum=1)
        for extra, step, spacing in zip(self.output_padding, self.stride,
                                        self.dilation):
            if extra >= step and extra >= spacing:
                raise ValueError(
                    f"output_padding must be smaller than stride or "
                    f"dilation, got output_padding={output_padding}")
        self.groups = groups
        self.padding_mode = padding_mode
        self.need_input_grad = True
        weight, bias_values = init.default_weight_and_bias(
            (in_channels, out_channels // groups) + self.kernel_size,
            out_channels if bias else None, _param_dtype(dtype), generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_values) if bias else None

    def forward(self, x):
        x = _as_float_array(x, self.weight.dtype)
        y = F.conv_transpose2d(
            x, self.weight.data, self._bias_array(), self.stride,
            self.padding, self.output_padding, self.groups, self.dilation)
        self.save_for_backward(x)
        return y

    def backward(self, grad_output):
        x, = self.pop_saved()
        grad_input, grad_weight, grad_bias = F.conv_transpose2d_backward(
            _grad_array(grad_output, self.weight.dtype), x, self.weight.data,
            self.stride, self.padding, self.output_padding, self.groups,
            self.dilation, need_input_grad=self.need_input_grad)
        self._accumulate_grads(grad_weight, grad_bias)
        return grad_input


class Conv1d(_ConvLayer):
    """1-D convolution of (N, C, L), as ``torch.nn.Conv1d``.

    weight: (out_channels, in_channels // groups, k); bias:
    (out_channels,); ``padding`` an int, ``(left, right)``, ``'same'`` or
    ``'valid'``. Arguments are stored as PyTorch stores them (1-tuples).
    ``need_input_grad`` as in ``Conv2d``.
    """

    _REPR_DEFAULTS = {"padding": ((0,), "valid"), "dilation": ((1,),)}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *,
                 generator=None):
        super().__init__()
        _check_device(device)
        _check_padding_mode(padding_mode)
        in_channels, out_channels, groups = _channels_and_groups(
            in_channels, out_channels, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _single(kernel_size, "kernel_size", 1)
        self.stride = _single(stride, "stride", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, (left, right), "
                                 f"'same' or 'valid'; got {padding!r}")
            if padding == "same" and self.stride != (1,):
                raise ValueError("padding='same' needs stride 1")
            self.padding = padding
        else:
            left, right = _validate.padding_1d(padding, "padding")
            self.padding = (left,) if left == right else (left, right)
        self.dilation = _single(dilation, "dilation", 1)
        self.groups = groups
        self.padding_mode = padding_mode
        self.need_input_grad = True
        weight, bias_values = init.default_weight_and_bias(
            (out_channels, in_channels // groups) + self.kernel_size,
            out_channels if bias else None, _param_dtype(dtype), generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_values) if bias else None

    def _padding_arg(self):
        if isinstance(self.padding, str) or len(self.padding) == 2:
            return self.padding
        return self.padding[0]

    def forward(self, x):
        x = _as_float_array(x, self.weight.dtype)
        y = F.conv1d(x, self.weight.data, self._bias_array(), self.stride,
                     self._padding_arg(), self.dilation, self.groups)
        self.save_for_backward(x)
        return y

    def backward(self, grad_output):
        x, = self.pop_saved()
        grad_input, grad_weight, grad_bias = F.conv1d_backward(
            _grad_array(grad_output, self.weight.dtype), x, self.weight.data,
            self.stride, self._padding_arg(), self.dilation, self.groups,
            need_input_grad=self.need_input_grad)
        self._accumulate_grads(grad_weight, grad_bias)
        return grad_input


class Linear(Module):
    """Dense layer ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    x: (..., in_features); weight: (out_features, in_features); bias:
    (out_features,). Runs on BLAS through NumPy.
    """

    def __init__(self, in_features, out_features, bias=True, device=None,
                 dtype=None, *, generator=None):
        super().__init__()
        _check_device(device)
        self.in_features = _positive_count(in_features, "in_features")
        self.out_features = _positive_count(out_features, "out_features")
        weight, bias_values = init.default_weight_and_bias(
            (self.out_features, self.in_features),
            self.out_features if bias else None, _param_dtype(dtype),
            generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_values) if bias else None

    def forward(self, x):
        x = _as_float_array(x, self.weight.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects (..., {self.in_features}), got {x.shape}")
        self.save_for_backward(x)
        y = _threads.matmul(x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_output):
        x, = self.pop_saved()
        grad_output = _grad_array(grad_output, self.weight.dtype)
        flat_x = x.reshape(-1, self.in_features)
        flat_grad = grad_output.reshape(-1, self.out_features)
        self.weight.accumulate_grad(_threads.matmul(flat_grad.T, flat_x))
        if self.bias is not None:
            self.bias.accumulate_grad(flat_grad.sum(axis=0))
        return _threads.matmul(flat_grad, self.weight.data).reshape(x.shape)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features="
                f"{self.out_features}, bias={self.bias is not None}")


# -------------------------------------------------------------- elementwise

class ReLU(Module):
    """max(x, 0); the gradient passes where x > 0.

    ``relu(x, residual)`` (fastconv's own argument) is ``max(x + residual,
    0)`` in one pass: a ResNet block's shortcut junction (see
    ``fastconv.functional.relu``); its backward returns the gradient of
    both.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace  # accepted for PyTorch's signature; never in place

    def forward(self, x, residual=None):
        x = _as_float_array(x)
        if residual is not None:
            residual = _as_float_array(residual, name="residual")
        y = F.relu(x, residual=residual)
        self.save_for_backward(y)  # y <= 0 exactly where x (+ residual) <= 0
        return y

    def backward(self, grad_output):
        y, = self.pop_saved()
        return F.relu_backward(_grad_array(grad_output, y.dtype), y)


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, grad_output):
        return grad_output


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        x = _as_float_array(x)
        self.save_for_backward(x.shape)
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])

    def backward(self, grad_output):
        input_shape, = self.pop_saved()
        return _grad_array(grad_output).reshape(input_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ------------------------------------------------------------------ pooling

class _MaxPool(Module):
    """What MaxPool2d and MaxPool1d share; ``_pool`` and ``_pool_backward``
    are their functional pair. Keeps indices for backward."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, x):
        x = _as_float_array(x)
        y, indices = self._pool(x, self.kernel_size, self.stride,
                                self.padding, self.dilation, self.ceil_mode,
                                return_indices=True)
        self.save_for_backward(indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_output):
        indices, input_shape = self.pop_saved()
        return self._pool_backward(_grad_array(grad_output), indices,
                                   input_shape)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}")


class _AvgPool(Module):
    """What AvgPool2d and AvgPool1d share; ``_pool`` and ``_pool_backward``
    are their functional pair."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x):
        x = _as_float_array(x)
        y = self._pool(x, self.kernel_size, self.stride, self.padding,
                       self.ceil_mode, self.count_include_pad)
        self.save_for_backward(x.shape)
        return y

    def backward(self, grad_output):
        input_shape, = self.pop_saved()
        return self._pool_backward(
            _grad_array(grad_output), input_shape, self.kernel_size,
            self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class MaxPool2d(_MaxPool):
    """Max pooling, as ``torch.nn.MaxPool2d``; keeps indices for backward."""

    _pool = staticmethod(F.max_pool2d)
    _pool_backward = staticmethod(F.max_pool2d_backward)


class AvgPool2d(_AvgPool):
    """Average pooling, as ``torch.nn.AvgPool2d`` (no ``divisor_override``)."""

    _pool = staticmethod(F.avg_pool2d)
    _pool_backward = staticmethod(F.avg_pool2d_backward)

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        if divisor_override is not None:
            raise ValueError("divisor_override is not supported")
        super().__init__(kernel_size, stride, padding, ceil_mode,
                         count_include_pad)


class MaxPool1d(_MaxPool):
    """Max pooling of (N, C, L), as ``torch.nn.MaxPool1d``; ``padding`` an
    int or ``(left, right)``."""

    _pool = staticmethod(F.max_pool1d)
    _pool_backward = staticmethod(F.max_pool1d_backward)


class AvgPool1d(_AvgPool):
    """Average pooling of (N, C, L), as ``torch.nn.AvgPool1d``; ``padding``
    an int or ``(left, right)``."""

    _pool = staticmethod(F.avg_pool1d)
    _pool_backward = staticmethod(F.avg_pool1d_backward)


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d`` where the input size is a multiple of
    ``output_size`` (``output_size=1`` is global average pooling); it is then
    an ``avg_pool2d`` with kernel = stride = input size // output size.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _validate.pair(output_size, "output_size",
                                          minimum=1)

    def forward(self, x):
        x = _as_float_array(x)
        if x.ndim != 4:
            raise ValueError(f"AdaptiveAvgPool2d expects (N, C, H, W), got "
                             f"{x.shape}")
        (out_h, out_w), (height, width) = self.output_size, x.shape[2:]
        if height % out_h or width % out_w:
            raise ValueError(
                f"AdaptiveAvgPool2d here needs the input size {height}x{width}"
                f" to be a multiple of output_size {out_h}x{out_w}")
        kernel = (height // out_h, width // out_w)
        self.save_for_backward(x.shape, kernel)
        if (out_h, out_w) == (1, 1):
            # Global pooling: one streaming row sum per (n, c), far cheaper
            # than a pooling kernel's launch on the small final maps.
            batch, channels = x.shape[:2]
            row_sums = np.einsum("ij->i", np.ascontiguousarray(x).reshape(
                batch * channels, -1))
            return (row_sums / (height * width)).astype(x.dtype).reshape(
                batch, channels, 1, 1)
        return F.avg_pool2d(x, kernel, kernel)

    def backward(self, grad_output):
        input_shape, kernel = self.pop_saved()
        grad_output = _grad_array(grad_output)
        if kernel == input_shape[2:]:
            if grad_output.shape != input_shape[:2] + (1, 1):
                raise ValueError(
                    f"grad_output must have shape {input_shape[:2] + (1, 1)}"
                    f", got {grad_output.shape}")
            area = input_shape[2] * input_shape[3]
            return np.repeat(grad_output / grad_output.dtype.type(area),
                             area, axis=3).reshape(input_shape)
        return F.avg_pool2d_backward(grad_output, input_shape, kernel,
                                     kernel)

    def extra_repr(self):
        return f"output_size={self.output_size}"


# ------------------------------------------------------------------ dropout

class Dropout(Module):
    """Inverted dropout on fastconv's counter-based masks.

    Each training-mode call draws a fresh 63-bit seed from the module's own
    generator (a child of ``generator``, or of ``fastconv.nn.init``'s default
    generator), so a seeded run repeats exactly; ``manual_seed`` resets it.
    In eval mode it is the identity.
    """

    def __init__(self, p=0.5, inplace=False, *, generator=None):
        super().__init__()
        self.p = _validate.probability(p)
        self.inplace = inplace  # accepted for PyTorch's signature
        self._generator = np.random.default_rng(
            init.as_generator(generator).integers(2**63))

    def manual_seed(self, seed: int) -> None:
        self._generator = np.random.default_rng(seed)

    def forward(self, x):
        x = _as_float_array(x)
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)  # the identity
            return x
        seed = int(self._generator.integers(2**63))
        y, mask = F.dropout(x, self.p, seed=seed)
        self.save_for_backward(mask)
        return y

    def backward(self, grad_output):
        mask, = self.pop_saved()
        grad_output = _grad_array(grad_output)
        if mask is None:
            return grad_output
        return F.dropout_backward(grad_output, mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


# --------------------------------------------------------------- batch norm

def _data(parameter):
    """A parameter's array, None for an absent one."""
    return None if parameter is None else parameter.data


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``.

    Training mode normalises with the batch statistics (biased variance) and
    updates ``running_mean`` / ``running_var`` (unbiased variance) with
    ``momentum`` (None: cumulative average), counting ``num_batches_tracked``
    (an int64 scalar array). Eval mode uses the running statistics. Runs on
    ``fastconv.functional.batch_norm_training`` (``batch_norm`` in eval
    mode) and ``batch_norm_backward``: statistics reduced in float64, the
    elementwise passes in the compute dtype.
    """

    #: BatchNormReLU2d: a ReLU applied to the output in the same passes.
    _relu = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        _check_device(device)
        self.num_features = _positive_count(num_features, "num_features")
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        dtype = _param_dtype(dtype)
        if affine:
            self.weight = Parameter(np.ones(self.num_features, dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype))
        else:
            self.weight = None
            self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean",
                                 np.zeros(self.num_features, dtype))
            self.register_buffer("running_var",
                                 np.ones(self.num_features, dtype))
            self.register_buffer("num_batches_tracked",
                                 np.array(0, dtype=np.int64))
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None

    def _compute_dtype(self, x):
        if self.weight is not None:
            return self.weight.dtype
        if self.running_mean is not None:
            return self.running_mean.dtype
        return None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = np.array(0, dtype=np.int64)

    def forward(self, x):
        x = np.ascontiguousarray(_as_float_array(x, self._compute_dtype(x)))
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d({self.num_features}) expects (N, "
                f"{self.num_features}, H, W), got {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if count < 2 and self.training:
                raise ValueError(
                    "BatchNorm2d needs more than one value per channel in "
                    f"training mode, got input of shape {x.shape}")
            y, mean, variance = F.batch_norm_training(
                x, _data(self.weight), _data(self.bias), self.eps,
                relu=self._relu)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, variance, count)
        else:
            mean, variance = self.running_mean, self.running_var
            y = F.batch_norm(x, mean, variance, _data(self.weight),
                             _data(self.bias), self.eps, relu=self._relu)
        # x itself is what backward needs (with the statistics it used, and
        # for the ReLU's mask the bias)
        bias = _data(self.bias)
        self.save_for_backward(
            x, mean, variance, use_batch_stats,
            None if bias is None or not self._relu else bias.copy())
        return y

    def _update_running_stats(self, mean, variance, count):
        self.num_batches_tracked = np.array(self.num_batches_tracked + 1,
                                            dtype=np.int64)
        factor = (1.0 / float(self.num_batches_tracked)
                  if self.momentum is None else self.momentum)
        unbiased = variance * (count / (count - 1))
        self.running_mean = ((1 - factor) * self.running_mean
                             + factor * mean).astype(self.running_mean.dtype)
        self.running_var = ((1 - factor) * self.running_var
                            + factor * unbiased).astype(self.running_var.dtype)

    def backward(self, grad_output):
        x, mean, variance, used_batch_stats, bias = self.pop_saved()
        grad_output = np.ascontiguousarray(_grad_array(grad_output, x.dtype))
        grad_input, grad_weight, grad_bias = F.batch_norm_backward(
            grad_output, x, mean, variance, _data(self.weight), self.eps,
            batch_statistics=used_batch_stats, relu=self._relu, bias=bias)
        if self.weight is not None:
            self.weight.accumulate_grad(grad_weight)
            self.bias.accumulate_grad(grad_bias)
        return grad_input

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum="
                f"{self.momentum}, affine={self.affine}, track_running_stats="
                f"{self.track_running_stats}")


class BatchNormReLU2d(BatchNorm2d):
    """``BatchNorm2d`` followed by ``ReLU``, fused (fastconv's own layer;
    ``torch.nn.Sequential(BatchNorm2d(C), ReLU())`` in PyTorch, with the
    same state_dict keys as the BatchNorm2d alone).

    The ReLU is applied as the normalised values are stored, and its
    backward mask is recomputed from the saved input inside the batch
    norm's own two passes (fused on the cython backend; elsewhere the two
    run one after the other): two passes over the activations fewer each
    way. ResNet's blocks use it after their first convolution (ResNet-8's
    training step: see benchmarks/bench_training.py).
    """

    _relu = True
