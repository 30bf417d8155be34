"""The ONNX operators fastconv runs, one builder per operator type.

A builder takes a ``Node`` (its attributes already checked against the
operator's accepted names) and the load-time ``BuildContext`` and returns a
``Kernel``; it raises ``Unsupported`` for an attribute value or an input it
cannot run, so that the loader reports every such node at once, before
anything runs. Convolution and pooling go through ``fastconv.functional``
(so ``backend=`` picks their kernels); the cheap elementwise, shape and
dense operators are NumPy.

A kernel is called as ``kernel(inputs, writable)``: ``inputs`` the input
arrays in the node's order (None for an omitted optional input),
``writable`` a tuple of bools saying which of them the kernel may
overwrite (the loader's liveness plan: the value dies here and nothing else
shares its memory). It returns a list with one array per output.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from fastconv import _threads
from fastconv import functional as F
from fastconv._packed import PackedWeights

#: Largest array (bytes) an operator whose output size comes from the model
#: (Pad, explicit padding) may allocate: a hostile pads attribute is an
#: error, not an out-of-memory kill.
MAX_ARRAY_BYTES = 8 * 2**30


class Unsupported(Exception):
    """A node this implementation cannot run (message says why)."""


class Node(NamedTuple):
    """One ONNX node: ``inputs``/``outputs`` are value names ('' = omitted)."""

    name: str
    op_type: str
    inputs: tuple
    outputs: tuple
    attrs: dict


class BuildContext(NamedTuple):
    """What a builder may know at load time."""

    opset: int
    backend: object
    constant: Callable  # name -> ndarray or None


class Kernel:
    """Base of the runnable kernels.

    ``view``: the output may share memory with input 0 (reshapes,
    identities), so the liveness plan treats them as one buffer.
    """

    view = False

    def __call__(self, inputs, writable):
        raise NotImplementedError

    def kind(self) -> str:
        """A short description for profiles ('' when the op type says
        it all)."""
        return ""


class FunctionKernel(Kernel):
    """A kernel from a plain function of the input arrays."""

    def __init__(self, function, view=False):
        self.function = function
        self.view = view

    def __call__(self, inputs, writable):
        result = self.function(*inputs)
        return list(result) if isinstance(result, tuple) else [result]


# name -> (accepted attribute names with defaults, builder)
OPS: dict[str, tuple[dict, Callable]] = {}


def op(name: str, **defaults):
    """Register ``builder`` for operator ``name``; ``defaults`` lists every
    attribute it accepts (any other is reported as unsupported)."""
    def register(builder):
        OPS[name] = (defaults, builder)
        return builder
    return register


def node_attributes(node: Node) -> dict:
    """The node's attributes over the operator's defaults; an attribute the
    operator does not accept raises ``Unsupported``."""
    defaults, _ = OPS[node.op_type]
    unknown = sorted(set(node.attrs) - set(defaults))
    if unknown:
        raise Unsupported(
            "attribute " + ", ".join(repr(name) for name in unknown)
            + " not supported")
    return {**defaults, **node.attrs}


def build(node: Node, context: BuildContext) -> Kernel:
    attrs = node_attributes(node)
    return OPS[node.op_type][1](node, attrs, context)


# ------------------------------------------------------------------ helpers

def _input(node, index):
    """The name of input ``index``, '' if absent."""
    return node.inputs[index] if index < len(node.inputs) else ""


def _constant_input(node, index, context, what, required=True):
    """A constant (initializer or folded) input, or Unsupported."""
    name = _input(node, index)
    if not name:
        if required:
            raise Unsupported(f"needs its {what} input")
        return None
    value = context.constant(name)
    if value is None:
        raise Unsupported(f"its {what} must be a constant (an initializer)")
    return value


def _int_list(values, what):
    if values is None:
        return None
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _axes_from_input_or_attr(node, attrs, context, input_index):
    """``axes`` from the attribute (older opsets) or a constant input."""
    if "axes" in node.attrs:
        return _int_list(attrs["axes"], "axes")
    if _input(node, input_index):
        return _int_list(_constant_input(node, input_index, context, "axes"),
                         "axes")
    return None


def _normalize_axis(axis, rank, what="axis"):
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def _check_allocation(shape, dtype, what):
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_ARRAY_BYTES:
        raise ValueError(
            f"{what} would allocate {size} bytes (shape {tuple(shape)}); "
            f"at most {MAX_ARRAY_BYTES} are allowed")


# --------------------------------------------------------------- activations
#
# Each activation is ``function(x, out)``: ``out`` is x itself (in place) or
# None (a new array). Conv kernels call the same functions on their fresh
# output, which is how a convolution fuses with its activation.

def _relu(x, out):
    return np.maximum(x, x.dtype.type(0), out=out)


# What a convolution may apply as it stores its output: [lo, hi]
_relu.clamp = (0.0, math.inf)


def _make_leaky_relu(alpha):
    def leaky_relu(x, out):
        negative = x < 0
        result = np.array(x, copy=True) if out is None else x
        result[negative] *= x.dtype.type(alpha)
        return result
    return leaky_relu


def _make_clip(low, high):
    def clip(x, out):
        if low is None and high is None:
            return x.copy() if out is None else x
        lo = None if low is None else x.dtype.type(low)
        hi = None if high is None else x.dtype.type(high)
        return np.clip(x, lo, hi, out=out)
    clip.clamp = (-math.inf if low is None else float(low),
                  math.inf if high is None else float(high))
    return clip


def _sigmoid(x, out):
    from scipy.special import expit

    return expit(x, out=out) if out is not None else expit(x)


def _make_hard_sigmoid(alpha, beta):
    def hard_sigmoid(x, out):
        result = np.multiply(x, x.dtype.type(alpha), out=out)
        result += x.dtype.type(beta)
        return np.clip(result, x.dtype.type(0), x.dtype.type(1), out=result)
    return hard_sigmoid


def _make_hard_swish(alpha=1.0 / 6.0, beta=0.5):
    gate = _make_hard_sigmoid(alpha, beta)

    def hard_swish(x, out):
        factor = gate(x, None)
        return np.multiply(x, factor, out=out)
    return hard_swish


class ActivationKernel(Kernel):
    """An elementwise activation; in place when its input may be written."""

    def __init__(self, function):
        self.function = function

    def __call__(self, inputs, writable):
        x = inputs[0]
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            raise TypeError(f"expects a float tensor, got {_describe(x)}")
        in_place = writable[0] and x.flags.writeable and x.flags.c_contiguous
        return [self.function(x, x if in_place else None)]


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


@op("Relu")
def _build_relu(node, attrs, context):
    return ActivationKernel(_relu)


@op("LeakyRelu", alpha=0.01)
def _build_leaky_relu(node, attrs, context):
    return ActivationKernel(_make_leaky_relu(float(attrs["alpha"])))


@op("Sigmoid")
def _build_sigmoid(node, attrs, context):
    return ActivationKernel(_sigmoid)


@op("HardSigmoid", alpha=0.2, beta=0.5)
def _build_hard_sigmoid(node, attrs, context):
    return ActivationKernel(_make_hard_sigmoid(float(attrs["alpha"]),
                                               float(attrs["beta"])))


@op("HardSwish")
def _build_hard_swish(node, attrs, context):
    return ActivationKernel(_make_hard_swish())


@op("Clip", min=None, max=None)
def _build_clip(node, attrs, context):
    if context.opset < 11:
        low, high = attrs["min"], attrs["max"]
    else:
        low = _constant_input(node, 1, context, "min", required=False)
        high = _constant_input(node, 2, context, "max", required=False)
        for bound, what in ((low, "min"), (high, "max")):
            if bound is not None and np.size(bound) != 1:
                raise Unsupported(f"{what} must be a scalar")
        low = None if low is None else np.asarray(low).reshape(()).item()
        high = None if high is None else np.asarray(high).reshape(()).item()
    return ActivationKernel(_make_clip(low, high))


# -------------------------------------------------------- binary elementwise

class BinaryKernel(Kernel):
    """NumPy broadcasting binary op (ONNX's multidirectional broadcasting
    is NumPy's), written into a dying input when the shapes allow."""

    def __init__(self, ufunc, commutative):
        self.ufunc = ufunc
        self.commutative = commutative

    def __call__(self, inputs, writable):
        a, b = inputs
        for index in ((0, 1) if self.commutative else (0,)):
            target = inputs[index]
            other = inputs[1 - index]
            if (writable[index] and isinstance(target, np.ndarray)
                    and target.flags.writeable
                    and np.result_type(a, b) == target.dtype
                    and np.broadcast_shapes(np.shape(a), np.shape(b))
                    == target.shape):
                return [self.ufunc(*((target, other) if index == 0 else
                                     (other, target)), out=target)]
        return [self.ufunc(a, b)]


def _divide(a, b, out=None):
    """ONNX Div: true division for floats, truncation toward zero for
    integers (NumPy's // floors)."""
    a, b = np.asarray(a), np.asarray(b)
    if np.result_type(a, b).kind in "iu":
        if np.any(b == 0):
            raise ValueError("integer division by zero")
        quotient = np.abs(a) // np.abs(b)
        return np.multiply(np.sign(a) * np.sign(b), quotient, out=out)
    return np.divide(a, b, out=out)


@op("Add")
def _build_add(node, attrs, context):
    return BinaryKernel(np.add, commutative=True)


class AddReluKernel(Kernel):
    """Relu(Add(a, b)) where the sum has no other reader (a residual
    block's junction): ``fastconv.functional.relu(a, residual=b)``, one
    parallel pass, for two float tensors of one shape and dtype; NumPy's
    add then maximum otherwise (broadcasting, integers), the same values
    (the sum rounded once, NaN kept)."""

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, inputs, writable):
        a, b = inputs
        if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.shape == b.shape and a.dtype == b.dtype
                and a.dtype in (np.float32, np.float64)):
            return [F.relu(a, residual=b, backend=self.backend)]
        total = np.add(a, b)
        if not isinstance(total, np.ndarray) or total.dtype.kind != "f":
            raise TypeError(f"Relu expects a float tensor, got "
                            f"{_describe(total)}")
        return [np.maximum(total, total.dtype.type(0), out=total)]


@op("Sub")
def _build_sub(node, attrs, context):
    return BinaryKernel(np.subtract, commutative=False)


@op("Mul")
def _build_mul(node, attrs, context):
    return BinaryKernel(np.multiply, commutative=True)


@op("Div")
def _build_div(node, attrs, context):
    return BinaryKernel(_divide, commutative=False)


# ------------------------------------------------------- padding and windows

def resolve_pads(auto_pad, pads, in_sizes, extents, strides):
    """Per spatial axis ``(before, after)`` padding from ONNX's ``auto_pad``
    / ``pads`` (``pads`` is [x1_begin, x2_begin, ..., x1_end, x2_end]).

    SAME_UPPER / SAME_LOWER give ceil(in / stride) outputs, the odd extra
    element after (UPPER) or before (LOWER); ``extents`` are the dilated
    kernel sizes.
    """
    rank = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for size, extent, stride in zip(in_sizes, extents, strides):
            total = max((-(-size // stride) - 1) * stride + extent - size, 0)
            small, large = total // 2, total - total // 2
            result.append((small, large) if auto_pad == "SAME_UPPER"
                          else (large, small))
        return result
    if auto_pad == "VALID" or pads is None:
        return [(0, 0)] * rank
    return [(pads[axis], pads[axis + rank]) for axis in range(rank)]


class WindowAttributes(NamedTuple):
    """Conv / pool attributes in one normalised form."""

    rank: int            # spatial rank, 1 or 2
    kernel: tuple        # kernel sizes
    strides: tuple
    dilations: tuple
    auto_pad: str
    pads: list | None    # ONNX order, or None

    def extents(self):
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel,
                                                     self.dilations))

    def axis_pads(self, spatial_sizes):
        return resolve_pads(self.auto_pad, self.pads, spatial_sizes,
                            self.extents(), self.strides)


def _window_attributes(attrs, kernel, what):
    rank = len(kernel)
    if rank not in (1, 2):
        raise Unsupported(f"{rank}-D {what} (only 1-D and 2-D run here)")
    if any(k < 1 for k in kernel):
        raise Unsupported(f"kernel_shape {list(kernel)} must be positive")

    def per_axis(name, default):
        values = attrs.get(name)
        values = [default] * rank if values is None else _int_list(values,
                                                                   name)
        if len(values) != rank or min(values) < 1:
            raise Unsupported(f"{name}={values} must be {rank} positive ints")
        return tuple(values)

    auto_pad = attrs["auto_pad"]
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    pads = _int_list(attrs.get("pads"), "pads")
    if pads is not None:
        if auto_pad != "NOTSET":
            raise Unsupported("both pads and auto_pad are set")
        if len(pads) != 2 * rank or min(pads) < 0:
            raise Unsupported(f"pads={pads} must be {2 * rank} ints >= 0")
    return WindowAttributes(rank, tuple(kernel), per_axis("strides", 1),
                            per_axis("dilations", 1), auto_pad, pads)


def _as_2d(x, rank):
    """(N, C, L) as (N, C, 1, L) for the 2-D kernels; 2-D input unchanged."""
    return x[:, :, None, :] if rank == 1 else x


def _pads_2d(axis_pads, rank):
    """Per-axis pads of a 1-D or 2-D window as the 2-D (H, W) pair list."""
    return [(0, 0)] + list(axis_pads) if rank == 1 else list(axis_pads)


def _pad_explicitly(x, pads_2d, value):
    """x (N, C, H, W) padded by ``pads_2d`` [(top, bottom), (left, right)]
    with ``value``."""
    shape = x.shape[:2] + tuple(size + before + after for size, (before, after)
                                in zip(x.shape[2:], pads_2d))
    _check_allocation(shape, x.dtype, "explicit padding")
    return np.pad(x, [(0, 0), (0, 0)] + list(pads_2d), constant_values=value)


def _split_pads(pads_2d, limits):
    """(padding the pooling kernels take, the excess to pad explicitly):
    each side is capped at ``limits`` (half the kernel on that axis)."""
    taken, rest = [], []
    for (before, after), limit in zip(pads_2d, limits):
        taken.append((min(before, limit), min(after, limit)))
        rest.append((before - taken[-1][0], after - taken[-1][1]))
    return tuple(taken), rest


def _check_spatial(x, rank, what):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} expects an array, got {_describe(x)}")
    if x.ndim != rank + 2:
        raise ValueError(
            f"{what} expects a {rank + 2}-D (N, C, spatial...) input, got "
            f"shape {x.shape}")


# --------------------------------------------------------------- convolution

class ConvKernel(Kernel):
    """Conv on fastconv.functional.conv2d, with an optional fused
    activation applied in place to the convolution's fresh output.

    ``weight`` (K, C // groups, kH, kW) and ``bias`` (K,) are held in the
    2-D layout (a 1-D convolution is a 2-D one of height 1); the loader
    folds a following BatchNormalization into them. Like ``nn.Conv2d`` it
    keeps the forms of its (constant) weight that a backend computes, such
    as Winograd-domain filters, between runs.
    """

    def __init__(self, window, weight, bias, groups, backend):
        self.window = window
        self.weight = np.ascontiguousarray(
            weight if window.rank == 2 else weight[:, :, None, :])
        # the model's own constant: its forms are never recomputed
        self.packed = PackedWeights(constant=self.weight)
        self.bias = bias
        self.groups = groups
        self.backend = backend
        self.activation = None
        self.activation_name = None

    def __call__(self, inputs, writable):
        x = inputs[0]
        window = self.window
        _check_spatial(x, window.rank, "Conv")
        pads = _pads_2d(window.axis_pads(x.shape[2:]), window.rank)
        x2 = _as_2d(x, window.rank)
        stride = (1,) * (2 - window.rank) + window.strides
        dilation = (1,) * (2 - window.rank) + window.dilations
        # ReLU and Clip are applied by the convolution as it stores
        clamp = getattr(self.activation, "clamp", None)
        y = F.conv2d(x2, self.weight, self.bias, stride, tuple(pads),
                     dilation, self.groups, backend=self.backend,
                     _packed=self.packed, _clamp=clamp)
        if self.activation is not None and clamp is None:
            y = self.activation(y, y)
        return [y[:, :, 0, :] if window.rank == 1 else y]

    def kind(self) -> str:
        kernel = "x".join(str(k) for k in self.window.kernel)
        strides = set(self.window.strides)
        text = kernel + ("" if strides == {1} else "/" + "x".join(
            str(s) for s in self.window.strides))
        if self.groups > 1:
            text += " depthwise" if self.weight.shape[1] == 1 else \
                f" groups={self.groups}"
        return text


def _kernel_shape(attrs, weight):
    kernel = _int_list(attrs.get("kernel_shape"), "kernel_shape")
    if kernel is None:
        kernel = list(weight.shape[2:])
    if list(kernel) != list(weight.shape[2:]):
        raise Unsupported(f"kernel_shape={kernel} does not match the weight "
                          f"of shape {list(weight.shape)}")
    return kernel


def _float_weight(node, context, what):
    weight = _constant_input(node, 1, context, what)
    if weight.dtype.kind != "f" or weight.ndim not in (3, 4):
        raise Unsupported(f"{what} must be a 3-D or 4-D float tensor, got "
                          f"{_describe(weight)}")
    if weight.dtype not in (np.float32, np.float64):
        raise Unsupported(f"{what} dtype {weight.dtype}")
    return weight


def _optional_bias(node, context, weight, length):
    bias = _constant_input(node, 2, context, "bias", required=False)
    if bias is None:
        return None
    if bias.shape != (length,):
        raise Unsupported(f"bias of shape {bias.shape}, expected ({length},)")
    return np.ascontiguousarray(bias, dtype=weight.dtype)


@op("Conv", auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
    pads=None, strides=None)
def _build_conv(node, attrs, context):
    weight = _float_weight(node, context, "weight")
    window = _window_attributes(attrs, _kernel_shape(attrs, weight), "Conv")
    groups = int(attrs["group"])
    if groups < 1 or weight.shape[0] % groups:
        raise Unsupported(f"group={groups} must divide the {weight.shape[0]}"
                          f" output channels")
    bias = _optional_bias(node, context, weight, weight.shape[0])
    return ConvKernel(window, np.ascontiguousarray(weight), bias, groups,
                      context.backend)


class ConvTransposeKernel(Kernel):
    """ConvTranspose on fastconv.functional.conv_transpose2d.

    weight (C_in, C_out // groups, kH, kW), PyTorch's and ONNX's layout;
    ONNX's ``pads`` are the rows and columns cut from the full output.
    """

    def __init__(self, window, weight, bias, groups, output_padding,
                 backend):
        self.window = window
        self.weight = weight if window.rank == 2 else weight[:, :, None, :]
        self.bias = bias
        self.groups = groups
        self.output_padding = output_padding
        self.backend = backend

    def __call__(self, inputs, writable):
        x = inputs[0]
        window = self.window
        _check_spatial(x, window.rank, "ConvTranspose")
        fill = (1,) * (2 - window.rank)
        pads = _pads_2d([(window.pads[axis], window.pads[axis + window.rank])
                         for axis in range(window.rank)]
                        if window.pads else [(0, 0)] * window.rank,
                        window.rank)
        y = F.conv_transpose2d(
            _as_2d(x, window.rank), self.weight, self.bias,
            fill + window.strides, tuple(pads),
            (0,) * (2 - window.rank) + self.output_padding, self.groups,
            fill + window.dilations, backend=self.backend)
        return [y[:, :, 0, :] if window.rank == 1 else y]


@op("ConvTranspose", auto_pad="NOTSET", dilations=None, group=1,
    kernel_shape=None, output_padding=None, output_shape=None, pads=None,
    strides=None)
def _build_conv_transpose(node, attrs, context):
    weight = _float_weight(node, context, "weight")
    window = _window_attributes(attrs, _kernel_shape(attrs, weight),
                                "ConvTranspose")
    if attrs["output_shape"] is not None:
        raise Unsupported("attribute 'output_shape' (give pads instead)")
    if window.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={window.auto_pad!r}")
    groups = int(attrs["group"])
    output_padding = _int_list(attrs["output_padding"], "output_padding") \
        or [0] * window.rank
    if len(output_padding) != window.rank or any(
            not 0 <= o < max(s, d) for o, s, d in zip(
                output_padding, window.strides, window.dilations)):
        raise Unsupported(f"output_padding={output_padding} must be smaller "
                          f"than the stride or the dilation")
    bias = _optional_bias(node, context, weight, weight.shape[1] * groups)
    return ConvTransposeKernel(window, np.ascontiguousarray(weight), bias,
                               groups, tuple(output_padding),
                               context.backend)


# ------------------------------------------------------------- batch norm

class ChannelAffineKernel(Kernel):
    """y = x * scale + shift per channel (axis 1): inference-mode
    BatchNormalization with its statistics folded into two vectors."""

    def __init__(self, scale, shift):
        self.scale = scale
        self.shift = shift

    def __call__(self, inputs, writable):
        x = inputs[0]
        if not isinstance(x, np.ndarray) or x.ndim < 2 or \
                x.shape[1] != self.scale.shape[0]:
            raise ValueError(
                f"BatchNormalization expects (N, {self.scale.shape[0]}, ...)"
                f", got {_describe(x)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = self.scale.astype(x.dtype).reshape(shape)
        shift = self.shift.astype(x.dtype).reshape(shape)
        if writable[0] and x.flags.writeable:
            np.multiply(x, scale, out=x)
            return [np.add(x, shift, out=x)]
        return [x * scale + shift]


@op("BatchNormalization", epsilon=1e-5, momentum=0.9, training_mode=0)
def _build_batch_norm(node, attrs, context):
    if int(attrs["training_mode"]) != 0 or len(
            [name for name in node.outputs if name]) > 1:
        raise Unsupported("training mode (running statistics outputs)")
    gamma, beta, mean, var = (_constant_input(node, index, context, what)
                              for index, what in ((1, "scale"), (2, "B"),
                                                  (3, "mean"), (4, "var")))
    if not (gamma.ndim == beta.ndim == mean.ndim == var.ndim == 1) or len(
            {gamma.shape, beta.shape, mean.shape, var.shape}) != 1:
        raise Unsupported("scale, B, mean and var must be 1-D of one length")
    scale = gamma.astype(np.float64) / np.sqrt(
        var.astype(np.float64) + float(attrs["epsilon"]))
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return ChannelAffineKernel(scale, shift)


# ------------------------------------------------------------------ pooling

class PoolKernel(Kernel):
    """MaxPool / AveragePool on fastconv.functional's pooling kernels.

    Padding the kernels cannot take (over half the kernel on a side)
    is applied explicitly first: -inf for max, zeros for an average that
    counts padded cells (count_include_pad=1), which is then the same sum
    over the same divisor.
    """

    def __init__(self, window, reduction, ceil_mode, count_include_pad,
                 backend):
        self.window = window
        self.reduction = reduction
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.backend = backend

    def __call__(self, inputs, writable):
        x = inputs[0]
        window = self.window
        what = "MaxPool" if self.reduction == "max" else "AveragePool"
        _check_spatial(x, window.rank, what)
        if x.dtype.kind != "f":
            raise TypeError(f"{what} expects a float tensor, got {x.dtype}")
        pads = _pads_2d(window.axis_pads(x.shape[2:]), window.rank)
        kernel = (1,) * (2 - window.rank) + window.kernel
        taken, rest = _split_pads(pads, [k // 2 for k in kernel])
        x2 = _as_2d(x, window.rank)
        if any(before or after for before, after in rest):
            # Over half the kernel: the kernels' limit. Pad the excess
            # explicitly where that gives the same windows and divisors.
            if self.ceil_mode or (self.reduction == "avg"
                                  and not self.count_include_pad):
                raise ValueError(
                    f"{what}: padding {pads} over half the kernel with "
                    f"ceil_mode or count_include_pad=0 is not supported")
            x2 = _pad_explicitly(x2, rest,
                                 -np.inf if self.reduction == "max" else 0)
        stride = (1,) * (2 - window.rank) + window.strides
        if self.reduction == "max":
            dilation = (1,) * (2 - window.rank) + window.dilations
            y = F.max_pool2d(x2, kernel, stride, taken, dilation,
                             self.ceil_mode, backend=self.backend)
        else:
            y = F.avg_pool2d(x2, kernel, stride, taken, self.ceil_mode,
                             self.count_include_pad, backend=self.backend)
        return [y[:, :, 0, :] if window.rank == 1 else y]


def _pool_kernel_shape(attrs):
    kernel = _int_list(attrs["kernel_shape"], "kernel_shape")
    if kernel is None:
        raise Unsupported("needs kernel_shape")
    return kernel


@op("MaxPool", auto_pad="NOTSET", ceil_mode=0, dilations=None,
    kernel_shape=None, pads=None, storage_order=0, strides=None)
def _build_max_pool(node, attrs, context):
    window = _window_attributes(attrs, _pool_kernel_shape(attrs), "MaxPool")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise Unsupported("the Indices output")
    ceil_mode = bool(attrs["ceil_mode"])
    _check_static_pads(window, ceil_mode, True)
    return PoolKernel(window, "max", ceil_mode, True, context.backend)


@op("AveragePool", auto_pad="NOTSET", ceil_mode=0, count_include_pad=0,
    dilations=None, kernel_shape=None, pads=None, strides=None)
def _build_average_pool(node, attrs, context):
    window = _window_attributes(attrs, _pool_kernel_shape(attrs),
                                "AveragePool")
    if window.dilations != (1,) * window.rank:
        raise Unsupported(f"dilations={list(window.dilations)}")
    ceil_mode = bool(attrs["ceil_mode"])
    count_include_pad = bool(attrs["count_include_pad"])
    _check_static_pads(window, ceil_mode, count_include_pad)
    return PoolKernel(window, "avg", ceil_mode, count_include_pad,
                      context.backend)


def _check_static_pads(window, ceil_mode, counts_padding):
    """Explicit pads the pooling kernels cannot run are a load-time error."""
    if window.pads is None:
        if window.auto_pad.startswith("SAME") and ceil_mode:
            raise Unsupported("auto_pad SAME with ceil_mode")
        return
    axis_pads = [(window.pads[axis], window.pads[axis + window.rank])
                 for axis in range(window.rank)]
    over_half = any(max(pad) > k // 2
                    for pad, k in zip(axis_pads, window.kernel))
    if over_half and (ceil_mode or not counts_padding):
        raise Unsupported(
            f"pads={window.pads} (over half the kernel) with "
            + ("ceil_mode=1" if ceil_mode else "count_include_pad=0"))


class GlobalPoolKernel(Kernel):
    def __init__(self, reduce):
        self.reduce = reduce

    def __call__(self, inputs, writable):
        x = inputs[0]
        if not isinstance(x, np.ndarray) or x.ndim < 3:
            raise ValueError(f"global pooling expects (N, C, spatial...), "
                             f"got {_describe(x)}")
        axes = tuple(range(2, x.ndim))
        return [self.reduce(x, axis=axes, keepdims=True)]


def _spatial_mean(x, axis, keepdims):
    """np.mean over the trailing (spatial) axes, keeping them, for floats
    as one matrix-vector product with 1/plane (BLAS: 0.19 ms against
    np.mean's 0.45 on MobileNetV2's (16, 1280, 7, 7) here)."""
    plane = math.prod(x.shape[2:])
    if x.dtype.kind != "f" or plane == 0:
        return np.mean(x, axis=axis, keepdims=keepdims)
    rows = x.reshape(-1, plane)
    means = _threads.matmul(rows, np.full(plane, 1.0 / plane, x.dtype))
    return means.reshape(x.shape[:2] + (1,) * (x.ndim - 2))


@op("GlobalAveragePool")
def _build_global_average_pool(node, attrs, context):
    return GlobalPoolKernel(_spatial_mean)


@op("GlobalMaxPool")
def _build_global_max_pool(node, attrs, context):
    return GlobalPoolKernel(np.max)


# ----------------------------------------------------------- dense and misc

class GemmKernel(Kernel):
    """Y = alpha * A' @ B' + beta * C, B' pre-transposed once at load."""

    def __init__(self, alpha, beta, trans_a, matrix_b, bias):
        self.alpha = alpha
        self.beta = beta
        self.trans_a = trans_a
        self.matrix_b = matrix_b  # (K, M), contiguous
        self.bias = bias

    def __call__(self, inputs, writable):
        a = inputs[0]
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            raise ValueError(f"Gemm expects a 2-D A, got {_describe(a)}")
        a = a.T if self.trans_a else a
        if a.shape[1] != self.matrix_b.shape[0]:
            raise ValueError(f"Gemm: A of shape {a.shape} does not fit B of "
                             f"shape {self.matrix_b.shape}")
        y = _threads.matmul(a, self.matrix_b.astype(a.dtype, copy=False))
        if self.alpha != 1.0:
            y *= a.dtype.type(self.alpha)
        if self.bias is not None:
            y += self.bias.astype(a.dtype, copy=False)
        return [y]


@op("Gemm", alpha=1.0, beta=1.0, transA=0, transB=0)
def _build_gemm(node, attrs, context):
    matrix_b = _constant_input(node, 1, context, "B")
    if matrix_b.ndim != 2:
        raise Unsupported(f"B must be 2-D, got shape {matrix_b.shape}")
    if attrs["transB"]:
        matrix_b = matrix_b.T
    bias = _constant_input(node, 2, context, "C", required=False)
    beta = float(attrs["beta"])
    if bias is not None:
        bias = bias * bias.dtype.type(beta) if beta != 1.0 else bias
        if bias.ndim > 2:
            raise Unsupported(f"C of shape {bias.shape}")
    return GemmKernel(float(attrs["alpha"]), beta, bool(attrs["transA"]),
                      np.ascontiguousarray(matrix_b), bias)


@op("MatMul")
def _build_matmul(node, attrs, context):
    return FunctionKernel(_threads.matmul)


def _softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted, axis=axis, keepdims=True)
    return shifted


@op("Softmax", axis=None)
def _build_softmax(node, attrs, context):
    legacy = context.opset < 13
    axis = attrs["axis"]
    axis = (1 if legacy else -1) if axis is None else int(axis)

    def softmax(x):
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            raise TypeError(f"Softmax expects a float tensor, got "
                            f"{_describe(x)}")
        dim = _normalize_axis(axis, x.ndim)
        if legacy:  # opset < 13: softmax over the flattened dims >= axis
            flat = x.reshape(math.prod(x.shape[:dim]), -1)
            return _softmax(flat, 1).reshape(x.shape)
        return _softmax(x, dim)
    return FunctionKernel(softmax)


@op("Dropout", ratio=0.5, seed=None)
def _build_dropout(node, attrs, context):
    if _input(node, 2):
        training = context.constant(_input(node, 2))
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise Unsupported("training_mode must be a constant false")
    want_mask = len(node.outputs) > 1 and bool(node.outputs[1])

    def dropout(x, *unused):
        return (x, np.ones(np.shape(x), np.bool_)) if want_mask else x
    return FunctionKernel(dropout, view=True)


@op("Identity")
def _build_identity(node, attrs, context):
    return FunctionKernel(lambda x: x, view=True)


@op("Constant", value=None, value_float=None, value_floats=None,
    value_int=None, value_ints=None)
def _build_constant(node, attrs, context):
    given = [name for name in ("value", "value_float", "value_floats",
                               "value_int", "value_ints")
             if attrs[name] is not None]
    if len(given) != 1:
        raise Unsupported("needs exactly one value attribute")
    name = given[0]
    value = attrs[name]  # the loader turned a TensorProto into an array
    if name == "value":
        array = value
    elif name.startswith("value_float"):
        array = np.asarray(value, dtype=np.float32)
    else:
        array = np.asarray(value, dtype=np.int64)
    return FunctionKernel(lambda: array)


# ------------------------------------------------------------ shape ops

def _reshape_target(shape, target, allow_zero):
    target = [int(v) for v in np.asarray(target).reshape(-1)]
    if not allow_zero:
        target = [shape[i] if v == 0 and i < len(shape) else v
                  for i, v in enumerate(target)]
    if target.count(-1) > 1:
        raise ValueError(f"Reshape: shape {target} has more than one -1")
    return tuple(target)


@op("Reshape", allowzero=0)
def _build_reshape(node, attrs, context):
    allow_zero = bool(attrs["allowzero"])

    def reshape(x, target):
        return np.reshape(x, _reshape_target(np.shape(x), target, allow_zero))
    return FunctionKernel(reshape, view=True)


@op("Flatten", axis=1)
def _build_flatten(node, attrs, context):
    axis = int(attrs["axis"])

    def flatten(x):
        dim = axis % x.ndim if axis < 0 else axis
        if dim > x.ndim:
            raise ValueError(f"Flatten axis {axis} for rank {x.ndim}")
        return np.reshape(x, (math.prod(x.shape[:dim]), -1))
    return FunctionKernel(flatten, view=True)


@op("Transpose", perm=None)
def _build_transpose(node, attrs, context):
    perm = _int_list(attrs["perm"], "perm")

    def transpose(x):
        if perm is not None and sorted(perm) != list(range(x.ndim)):
            raise ValueError(f"Transpose perm {perm} for rank {x.ndim}")
        return np.transpose(x, perm)
    return FunctionKernel(transpose, view=True)


@op("Squeeze", axes=None)
def _build_squeeze(node, attrs, context):
    axes = _axes_from_input_or_attr(node, attrs, context, 1)

    def squeeze(x, *unused):
        if axes is None:
            return np.squeeze(x)
        dims = tuple(_normalize_axis(a, np.ndim(x)) for a in axes)
        if any(np.shape(x)[d] != 1 for d in dims):
            raise ValueError(f"Squeeze axes {axes} of shape {np.shape(x)} "
                             f"are not all 1")
        return np.squeeze(x, axis=dims)
    return FunctionKernel(squeeze, view=True)


@op("Unsqueeze", axes=None)
def _build_unsqueeze(node, attrs, context):
    axes = _axes_from_input_or_attr(node, attrs, context, 1)
    if axes is None:
        raise Unsupported("needs axes")

    def unsqueeze(x, *unused):
        rank = np.ndim(x) + len(axes)
        dims = sorted(_normalize_axis(a, rank) for a in axes)
        if len(set(dims)) != len(dims):
            raise ValueError(f"Unsqueeze axes {axes} repeat")
        result = np.asarray(x)
        for dim in dims:
            result = np.expand_dims(result, dim)
        return result
    return FunctionKernel(unsqueeze, view=True)


@op("Concat", axis=None)
def _build_concat(node, attrs, context):
    if attrs["axis"] is None:
        raise Unsupported("needs axis")
    axis = int(attrs["axis"])

    def concat(*parts):
        parts = [np.asarray(p) for p in parts if p is not None]
        return np.concatenate(parts, axis=_normalize_axis(axis,
                                                          parts[0].ndim))
    return FunctionKernel(concat)


@op("Shape", start=0, end=None)
def _build_shape(node, attrs, context):
    start, end = int(attrs["start"]), attrs["end"]

    def shape(x):
        dims = np.shape(x)
        stop = len(dims) if end is None else int(end)
        return np.asarray(dims[slice(start, stop)], dtype=np.int64)
    return FunctionKernel(shape)


@op("Gather", axis=0)
def _build_gather(node, attrs, context):
    axis = int(attrs["axis"])

    def gather(data, indices):
        data, indices = np.asarray(data), np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"Gather indices must be integers, got "
                            f"{indices.dtype}")
        dim = _normalize_axis(axis, data.ndim)
        size = data.shape[dim]
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise ValueError(f"Gather indices out of range for axis size "
                             f"{size}")
        return np.take(data, np.where(indices < 0, indices + size, indices),
                       axis=dim)
    return FunctionKernel(gather)


@op("Slice", starts=None, ends=None, axes=None)
def _build_slice(node, attrs, context):
    legacy = context.opset < 10

    def slice_(data, starts=None, ends=None, axes=None, steps=None):
        if legacy:
            starts, ends, axes = attrs["starts"], attrs["ends"], attrs["axes"]
        starts = _int_list(starts, "starts")
        ends = _int_list(ends, "ends")
        axes = list(range(len(starts))) if axes is None else _int_list(
            axes, "axes")
        steps = [1] * len(starts) if steps is None else _int_list(steps,
                                                                  "steps")
        index = [slice(None)] * np.ndim(data)
        for start, stop, axis, step in zip(starts, ends, axes, steps):
            if step == 0:
                raise ValueError("Slice step 0")
            index[_normalize_axis(axis, np.ndim(data))] = slice(
                start, stop, step)
        return np.asarray(data)[tuple(index)]
    return FunctionKernel(slice_, view=True)


@op("Cast", to=None, saturate=1)
def _build_cast(node, attrs, context):
    from fastconv.onnx._reader import element_dtype, element_type_name

    to = int(attrs["to"] or 0)
    target = element_dtype(to)
    if target is None:
        raise Unsupported(f"cast to {element_type_name(to)}")
    return FunctionKernel(lambda x: np.asarray(x).astype(target), view=False)


@op("Pad", mode="constant", pads=None, value=0.0)
def _build_pad(node, attrs, context):
    mode = attrs["mode"]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    numpy_modes = {"constant": "constant", "reflect": "reflect",
                   "edge": "edge", "wrap": "wrap"}
    if mode not in numpy_modes or (mode == "wrap" and context.opset < 19):
        raise Unsupported(f"mode={mode!r}")
    legacy = context.opset < 11
    if legacy:
        pads = _int_list(attrs["pads"], "pads")
        fill = float(attrs["value"])
        axes = None
    else:
        pads = _int_list(_constant_input(node, 1, context, "pads"), "pads")
        fill = _constant_input(node, 2, context, "constant_value",
                               required=False)
        fill = 0 if fill is None else np.asarray(fill).reshape(-1)[0].item()
        axes = _int_list(_constant_input(node, 3, context, "axes",
                                         required=False), "axes")
    if pads is None or len(pads) % 2:
        raise Unsupported(f"pads={pads}")

    def pad(x, *unused):
        x = np.asarray(x)
        dims = list(range(x.ndim)) if axes is None else [
            _normalize_axis(a, x.ndim) for a in axes]
        if len(pads) != 2 * len(dims):
            raise ValueError(f"Pad: {len(pads)} pads for {len(dims)} axes")
        widths = [(0, 0)] * x.ndim
        for position, dim in enumerate(dims):
            widths[dim] = (pads[position], pads[position + len(dims)])
        # Negative pads crop first.
        crop = tuple(slice(max(-before, 0), x.shape[d] - max(-after, 0))
                     for d, (before, after) in enumerate(widths))
        x = x[crop]
        widths = [(max(before, 0), max(after, 0)) for before, after in widths]
        shape = [size + before + after
                 for size, (before, after) in zip(x.shape, widths)]
        _check_allocation(shape, x.dtype, "Pad")
        if mode == "constant":
            return np.pad(x, widths, constant_values=x.dtype.type(fill))
        if mode == "reflect" and any(
                max(w) >= size for w, size in zip(widths, x.shape)
                if max(w)):
            raise ValueError("Pad reflect: pads must be smaller than the "
                             "axis")
        return np.pad(x, widths, mode=numpy_modes[mode])
    return FunctionKernel(pad)


@op("ReduceMean", axes=None, keepdims=1, noop_with_empty_axes=0)
def _build_reduce_mean(node, attrs, context):
    axes = _axes_from_input_or_attr(node, attrs, context, 1)
    keepdims = bool(attrs["keepdims"])
    noop = bool(attrs["noop_with_empty_axes"])

    def reduce_mean(x, *unused):
        x = np.asarray(x)
        if not axes:
            if noop:
                return x
            return np.mean(x, keepdims=keepdims)
        dims = tuple(sorted({_normalize_axis(a, x.ndim) for a in axes}))
        return np.mean(x, axis=dims, keepdims=keepdims)
    # noop_with_empty_axes returns its input: treated as a view.
    return FunctionKernel(reduce_mean, view=True)


#: Unary activations the loader may fuse into a preceding Conv.
FUSABLE_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid",
                       "HardSwish")
