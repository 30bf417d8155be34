"""What the kernel benchmarks measure: the shapes, the inputs and the calls.

Shared by the pytest-benchmark suite (``bench_kernels.py``) and the ratio
table (``report.py``), so both time exactly the same thing.

Each op is a zero-argument callable that runs it once:

``fastconv_call(op, shape, arrays, backend)`` for ``op`` in ``FASTCONV_OPS``
and ``torch_call(op, shape, arrays, torch)`` for ``op`` in ``TORCH_OPS``,
with ``arrays = make_arrays(shape)``. Inputs are float32 NCHW, drawn from a
seeded generator; outputs are thrown away.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

import fastconv
from fastconv import _shapes

#: One seed for every input array, so that runs are comparable.
SEED = 20240601
#: The dropout seed (fixed: a fresh ``secrets`` draw would only add noise).
DROPOUT_SEED = 12345


class ConvShape(NamedTuple):
    """A square conv2d case, as the issue lists them: (N, C, H, W, K, kernel,
    stride, pad), and groups (1 unless given; C for a depthwise conv)."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1

    @property
    def input_shape(self):
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups,
                self.kernel, self.kernel)

    @property
    def output_shape(self):
        size = [_shapes.conv_output_size(side, self.kernel, self.stride,
                                         self.padding, self.padding, 1)
                for side in (self.height, self.width)]
        return (self.batch, self.out_channels, *size)

    @property
    def label(self) -> str:
        return (f"N{self.batch}-C{self.in_channels}-{self.height}x{self.width}"
                f"-K{self.out_channels}-k{self.kernel}-s{self.stride}"
                f"-p{self.padding}"
                + (f"-g{self.groups}" if self.groups != 1 else ""))


class PoolShape(NamedTuple):
    """A square pooling case: input (N, C, H, W), kernel, stride, padding."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: int
    stride: int
    padding: int

    @property
    def input_shape(self):
        return (self.batch, self.channels, self.height, self.width)

    @property
    def output_shape(self):
        size = [_shapes.pool_output_size(side, self.kernel, self.stride,
                                         self.padding, self.padding, 1,
                                         False)
                for side in (self.height, self.width)]
        return (self.batch, self.channels, *size)

    @property
    def label(self) -> str:
        return (f"N{self.batch}-C{self.channels}-{self.height}x{self.width}"
                f"-k{self.kernel}-s{self.stride}-p{self.padding}")


class DropoutShape(NamedTuple):
    """A dropout case: input (N, C, H, W) and drop probability p."""

    batch: int
    channels: int
    height: int
    width: int
    p: float

    @property
    def input_shape(self):
        return (self.batch, self.channels, self.height, self.width)

    @property
    def label(self) -> str:
        return (f"N{self.batch}-C{self.channels}-{self.height}x{self.width}"
                f"-p{self.p}")


#: The issue's conv2d shape list; the performance floors are geometric means
#: over it.
CONV_SHAPES = tuple(ConvShape(*case) for case in (
    (32, 3, 32, 32, 32, 3, 1, 1),
    (32, 64, 32, 32, 64, 3, 1, 1),
    (32, 128, 16, 16, 128, 3, 1, 1),
    (32, 256, 8, 8, 256, 3, 1, 1),
    (32, 64, 32, 32, 128, 3, 2, 1),
    (64, 1, 28, 28, 32, 3, 1, 1),
    (64, 32, 14, 14, 64, 3, 1, 1),
    (8, 3, 224, 224, 64, 7, 2, 3),
    (32, 64, 32, 32, 64, 1, 1, 0),
))
#: A depthwise conv2d (groups = C, MobileNet's 3 x 3 stage at 56 x 56),
#: timed by bench_kernels.py beside the list above; not in ``shapes_for``,
#: so report.py's geometric means and rankings stay over the issue's list.
DEPTHWISE_CONV_SHAPES = (ConvShape(32, 64, 56, 56, 64, 3, 1, 1, groups=64),)
POOL_SHAPES = (
    PoolShape(32, 64, 32, 32, kernel=2, stride=2, padding=0),
    PoolShape(32, 64, 32, 32, kernel=3, stride=2, padding=1),
)
DROPOUT_SHAPES = (DropoutShape(32, 64, 32, 32, p=0.5),)

# The naive loops run about a million multiply-adds a second, so they get
# scaled-down versions of the shapes above (one naive round stays under
# about 2 s); speedups over naive compare both sides on these same shapes.
NAIVE_CONV_SHAPE = ConvShape(1, 16, 16, 16, 16, 3, 1, 1)
NAIVE_POOL_SHAPES = (
    PoolShape(2, 16, 32, 32, kernel=2, stride=2, padding=0),
    PoolShape(2, 16, 32, 32, kernel=3, stride=2, padding=1),
)
NAIVE_DROPOUT_SHAPE = DropoutShape(2, 16, 32, 32, p=0.5)

CONV_OPS = ("conv2d_forward", "conv2d_forward_backward")
POOL_OPS = ("max_pool2d_forward", "max_pool2d_backward",
            "avg_pool2d_forward", "avg_pool2d_backward")
DROPOUT_OPS = ("dropout",)

#: Every op timed on fastconv. The ops named like a backend primitive
#: (``fastconv.backends.PRIMITIVES``) isolate that primitive
#: (report.py --fastest); ``conv2d_forward_backward`` and ``dropout`` are what
#: a training step calls.
FASTCONV_OPS = CONV_OPS + ("conv2d_backward",) + POOL_OPS + DROPOUT_OPS + (
    "dropout_mask", "dropout_apply")
#: The ops with a PyTorch counterpart.
TORCH_OPS = CONV_OPS + POOL_OPS + DROPOUT_OPS

def shapes_for(op: str, naive: bool = False) -> tuple:
    """The shapes an op is measured on (the scaled-down ones for naive)."""
    if op.startswith("conv2d"):
        return (NAIVE_CONV_SHAPE,) if naive else CONV_SHAPES
    if op.startswith(("max_pool2d", "avg_pool2d")):
        return NAIVE_POOL_SHAPES if naive else POOL_SHAPES
    if op.startswith("dropout"):
        return (NAIVE_DROPOUT_SHAPE,) if naive else DROPOUT_SHAPES
    raise ValueError(f"unknown op {op!r}")


def compiled_cpu_backends() -> list[str]:
    """The available backends other than the naive reference and CUDA."""
    return [name for name in fastconv.available_backends()
            if name not in ("naive", "cuda")]


def make_arrays(shape, dtype=np.float32) -> dict[str, np.ndarray]:
    """Seeded inputs for one shape: ``x`` always, plus ``weight``, ``bias``
    and ``grad_output`` for conv, ``grad_output`` for pooling (float32)."""
    rng = np.random.default_rng(SEED)
    arrays = {"x": rng.standard_normal(shape.input_shape, dtype=dtype)}
    if isinstance(shape, ConvShape):
        fan_in = shape.in_channels // shape.groups * shape.kernel ** 2
        arrays["weight"] = (rng.standard_normal(shape.weight_shape, dtype=dtype)
                            / np.sqrt(fan_in, dtype=dtype))
        arrays["bias"] = rng.standard_normal(shape.out_channels, dtype=dtype)
    if isinstance(shape, (ConvShape, PoolShape)):
        arrays["grad_output"] = rng.standard_normal(shape.output_shape,
                                                    dtype=dtype)
    return arrays


def fastconv_call(op: str, shape, arrays, backend: str) -> Callable[[], object]:
    """A callable that runs ``op`` once on fastconv's ``backend``.

    Whatever the op needs besides ``arrays`` (pooling indices, a dropout
    mask) is computed here, outside the timed call.
    """
    x = arrays["x"]
    if isinstance(shape, ConvShape):
        weight, bias = arrays["weight"], arrays["bias"]
        grad_output = arrays["grad_output"]
        conv = dict(stride=shape.stride, padding=shape.padding,
                    groups=shape.groups, backend=backend)
        if op == "conv2d_forward":
            return lambda: fastconv.conv2d(x, weight, bias, **conv)
        if op == "conv2d_backward":
            return lambda: fastconv.conv2d_backward(grad_output, x, weight,
                                                    **conv)
        if op == "conv2d_forward_backward":
            def forward_backward():
                fastconv.conv2d(x, weight, bias, **conv)
                return fastconv.conv2d_backward(grad_output, x, weight, **conv)
            return forward_backward
    elif isinstance(shape, PoolShape):
        pool = dict(kernel_size=shape.kernel, stride=shape.stride,
                    padding=shape.padding)
        grad_output = arrays["grad_output"]
        if op == "max_pool2d_forward":
            return lambda: fastconv.max_pool2d(x, **pool, return_indices=True,
                                               backend=backend)
        if op == "max_pool2d_backward":
            _, indices = fastconv.max_pool2d(x, **pool, return_indices=True,
                                             backend=backend)
            return lambda: fastconv.max_pool2d_backward(
                grad_output, indices, x.shape, backend=backend)
        if op == "avg_pool2d_forward":
            return lambda: fastconv.avg_pool2d(x, **pool, backend=backend)
        if op == "avg_pool2d_backward":
            return lambda: fastconv.avg_pool2d_backward(
                grad_output, x.shape, **pool, backend=backend)
    elif isinstance(shape, DropoutShape):
        p = shape.p
        if op == "dropout":
            return lambda: fastconv.dropout(x, p, seed=DROPOUT_SEED,
                                            backend=backend)
        if op == "dropout_mask":
            return lambda: fastconv.dropout_mask(x.shape, p, DROPOUT_SEED,
                                                 backend=backend)
        if op == "dropout_apply":
            # dropout_backward is the apply primitive alone (no mask draw).
            mask = fastconv.dropout_mask(x.shape, p, DROPOUT_SEED,
                                         backend=backend)
            return lambda: fastconv.dropout_backward(x, mask, p,
                                                     backend=backend)
    raise ValueError(f"op {op!r} does not apply to {type(shape).__name__}")


def torch_call(op: str, shape, arrays, torch) -> Callable[[], object]:
    """A callable that runs ``op`` once in PyTorch (CPU, float32).

    Forward-only ops run under ``torch.no_grad()``; the backward ops call
    ATen's backward kernels directly, so that autograd bookkeeping is not
    counted against PyTorch; forward+backward goes through autograd, as a
    training step would.
    """
    functional = torch.nn.functional
    x = torch.from_numpy(arrays["x"])
    if isinstance(shape, ConvShape):
        weight = torch.from_numpy(arrays["weight"])
        bias = torch.from_numpy(arrays["bias"])
        grad_output = torch.from_numpy(arrays["grad_output"])
        conv = dict(stride=shape.stride, padding=shape.padding,
                    groups=shape.groups)
        if op == "conv2d_forward":
            def forward():
                with torch.no_grad():
                    return functional.conv2d(x, weight, bias, **conv)
            return forward
        if op == "conv2d_forward_backward":
            leaves = [t.detach().clone().requires_grad_(True)
                      for t in (x, weight, bias)]

            def forward_backward():
                y = functional.conv2d(*leaves, **conv)
                return torch.autograd.grad(y, leaves, grad_output)
            return forward_backward
    elif isinstance(shape, PoolShape):
        kernel, stride = [shape.kernel] * 2, [shape.stride] * 2
        padding, dilation = [shape.padding] * 2, [1, 1]
        grad_output = torch.from_numpy(arrays["grad_output"])
        if op == "max_pool2d_forward":
            def max_forward():
                with torch.no_grad():
                    return functional.max_pool2d(
                        x, kernel, stride, padding, return_indices=True)
            return max_forward
        if op == "max_pool2d_backward":
            with torch.no_grad():
                _, indices = functional.max_pool2d(x, kernel, stride, padding,
                                                   return_indices=True)
            return lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                grad_output, x, kernel, stride, padding, dilation, False,
                indices)
        if op == "avg_pool2d_forward":
            def avg_forward():
                with torch.no_grad():
                    return functional.avg_pool2d(x, kernel, stride, padding)
            return avg_forward
        if op == "avg_pool2d_backward":
            return lambda: torch.ops.aten.avg_pool2d_backward(
                grad_output, x, kernel, stride, padding, False, True, None)
    elif isinstance(shape, DropoutShape):
        if op == "dropout":
            def dropout():
                with torch.no_grad():
                    return functional.dropout(x, shape.p, training=True)
            return dropout
    raise ValueError(f"op {op!r} has no PyTorch counterpart for "
                     f"{type(shape).__name__}")
