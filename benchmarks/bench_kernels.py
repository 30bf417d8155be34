"""pytest-benchmark suite for the kernels: conv2d, max/avg pooling, dropout.

    pytest benchmarks/bench_kernels.py --benchmark-only
    pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-save=base
    pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-compare

Every op runs on each compiled CPU backend and, when installed, on PyTorch
(same thread count, float32); the naive loops run only on the scaled-down
shapes of ``cases.NAIVE_*``, where the compiled backends and PyTorch run too.
Benchmarks are grouped by op and shape, so each group of the table compares
the implementations on one workload. The same calls are timed side by side
by ``benchmarks/report.py``, which prints the ratios to PyTorch.
"""

from __future__ import annotations

import pytest

from cases import (
    CONV_OPS,
    CONV_SHAPES,
    DEPTHWISE_CONV_SHAPES,
    DROPOUT_OPS,
    DROPOUT_SHAPES,
    NAIVE_CONV_SHAPE,
    NAIVE_DROPOUT_SHAPE,
    NAIVE_POOL_SHAPES,
    POOL_OPS,
    POOL_SHAPES,
    fastconv_call,
    make_arrays,
    torch_call,
)

# A conv call takes up to a few hundred ms: a fixed, small number of rounds
# keeps the suite to a few minutes. Pooling and dropout take about a
# millisecond and get pytest-benchmark's own calibration instead.
CONV_ROUNDS = 5
NAIVE_CONV_ROUNDS = 1
NAIVE_ROUNDS = 3


def _label(shape) -> str:
    return shape.label


def _time(benchmark, op, shape, implementation, function, rounds=None):
    benchmark.group = f"{op} {shape.label}"
    benchmark.extra_info.update(op=op, shape=shape.label,
                                implementation=implementation)
    if rounds is None:
        benchmark(function)
    else:
        benchmark.pedantic(function, rounds=rounds, iterations=1,
                           warmup_rounds=1 if rounds > 1 else 0)


def _shape_params(shapes):
    return pytest.mark.parametrize("shape", shapes, ids=_label)


# --------------------------------------------------------------- convolution

CONV_CASES = CONV_SHAPES + DEPTHWISE_CONV_SHAPES + (NAIVE_CONV_SHAPE,)


@_shape_params(CONV_CASES)
@pytest.mark.parametrize("op", CONV_OPS)
def test_conv2d(benchmark, op, shape, cpu_backend):
    function = fastconv_call(op, shape, make_arrays(shape), cpu_backend)
    _time(benchmark, op, shape, cpu_backend, function, rounds=CONV_ROUNDS)


@_shape_params(CONV_CASES)
@pytest.mark.parametrize("op", CONV_OPS)
def test_conv2d_torch(benchmark, op, shape, torch):
    function = torch_call(op, shape, make_arrays(shape), torch)
    _time(benchmark, op, shape, "torch", function, rounds=CONV_ROUNDS)


@_shape_params((NAIVE_CONV_SHAPE,))
@pytest.mark.parametrize("op", CONV_OPS)
def test_conv2d_naive(benchmark, op, shape):
    function = fastconv_call(op, shape, make_arrays(shape), "naive")
    _time(benchmark, op, shape, "naive", function, rounds=NAIVE_CONV_ROUNDS)


# ------------------------------------------------------------------- pooling

POOL_CASES = POOL_SHAPES + NAIVE_POOL_SHAPES


@_shape_params(POOL_CASES)
@pytest.mark.parametrize("op", POOL_OPS)
def test_pool2d(benchmark, op, shape, cpu_backend):
    function = fastconv_call(op, shape, make_arrays(shape), cpu_backend)
    _time(benchmark, op, shape, cpu_backend, function)


@_shape_params(POOL_CASES)
@pytest.mark.parametrize("op", POOL_OPS)
def test_pool2d_torch(benchmark, op, shape, torch):
    function = torch_call(op, shape, make_arrays(shape), torch)
    _time(benchmark, op, shape, "torch", function)


@_shape_params(NAIVE_POOL_SHAPES)
@pytest.mark.parametrize("op", POOL_OPS)
def test_pool2d_naive(benchmark, op, shape):
    function = fastconv_call(op, shape, make_arrays(shape), "naive")
    _time(benchmark, op, shape, "naive", function, rounds=NAIVE_ROUNDS)


# ------------------------------------------------------------------- dropout

DROPOUT_CASES = DROPOUT_SHAPES + (NAIVE_DROPOUT_SHAPE,)


@_shape_params(DROPOUT_CASES)
@pytest.mark.parametrize("op", DROPOUT_OPS)
def test_dropout(benchmark, op, shape, cpu_backend):
    function = fastconv_call(op, shape, make_arrays(shape), cpu_backend)
    _time(benchmark, op, shape, cpu_backend, function)


@_shape_params(DROPOUT_CASES)
@pytest.mark.parametrize("op", DROPOUT_OPS)
def test_dropout_torch(benchmark, op, shape, torch):
    function = torch_call(op, shape, make_arrays(shape), torch)
    _time(benchmark, op, shape, "torch", function)


@_shape_params((NAIVE_DROPOUT_SHAPE,))
@pytest.mark.parametrize("op", DROPOUT_OPS)
def test_dropout_naive(benchmark, op, shape):
    function = fastconv_call(op, shape, make_arrays(shape), "naive")
    _time(benchmark, op, shape, "naive", function, rounds=NAIVE_ROUNDS)
