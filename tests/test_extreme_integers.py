"""Extreme integer arguments: a ValueError naming the argument, never an
OverflowError, a Numba typing error, NumPy's "Maximum allowed dimension
exceeded" or a huge allocation.

The limit (``fastconv._validate.MAX_AXIS``) is 2**31 - 1 for every size,
stride, padding, dilation, kernel size and group count, and 2**60 elements
for an array (``MAX_ELEMENTS``). Values up to the limit still work where
the geometry allows.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastconv
from fastconv import _shapes

HUGE = [2**31, 2**40, 2**63, 2**70]

X = np.ones((1, 1, 4, 4))
W = np.ones((1, 1, 3, 3))
ONE = np.ones((1, 1, 1, 1))


def _calls(value):
    """(argument name, call) pairs that pass ``value`` as that argument."""
    return [
        ("stride", lambda b: fastconv.conv2d(X, W, stride=value, backend=b)),
        ("stride", lambda b: fastconv.conv2d(X, W, stride=(1, value),
                                             backend=b)),
        ("padding", lambda b: fastconv.conv2d(X, W, padding=value,
                                              backend=b)),
        ("padding", lambda b: fastconv.conv2d(
            X, W, padding=((0, value), (0, 0)), backend=b)),
        ("dilation", lambda b: fastconv.conv2d(X, W, dilation=value,
                                               backend=b)),
        ("groups", lambda b: fastconv.conv2d(X, W, groups=value, backend=b)),
        ("padding", lambda b: fastconv.conv2d_backward(
            np.ones((1, 1, 2, 2)), X, W, padding=value, backend=b)),
        ("kernel_size", lambda b: fastconv.max_pool2d(X, value, backend=b)),
        ("kernel_size", lambda b: fastconv.max_pool2d(ONE, value, 1,
                                                      value // 2, backend=b)),
        ("stride", lambda b: fastconv.max_pool2d(X, 2, value, backend=b)),
        ("dilation", lambda b: fastconv.max_pool2d(X, 2, 1, 0, value,
                                                   backend=b)),
        ("padding", lambda b: fastconv.avg_pool2d(X, 2, 1, value,
                                                  backend=b)),
        ("kernel_size", lambda b: fastconv.avg_pool2d_backward(
            np.ones((1, 1, 1, 1)), X.shape, value, backend=b)),
        ("input_shape", lambda b: fastconv.avg_pool2d_backward(
            np.ones((1, 1, 1, 1)), (1, 1, value, 2), 2, backend=b)),
        ("input_shape", lambda b: fastconv.max_pool2d_backward(
            np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64),
            (1, value, 1, 1), backend=b)),
        ("shape", lambda b: fastconv.dropout_mask((value, value), 0.5, 1,
                                                  backend=b)),
        ("stride", lambda b: fastconv.filter2d(
            np.ones((4, 4)), np.ones((3, 3)), stride=value, backend=b)),
        ("padding", lambda b: fastconv.filter2d(
            np.ones((4, 4)), np.ones((3, 3)), padding=value, backend=b)),
    ]


@pytest.mark.parametrize("value", HUGE, ids=[f"2^{v.bit_length() - 1}"
                                             for v in HUGE])
def test_huge_arguments_name_the_argument(value, backend):
    """The argument and the bound it broke (a generic "output would be
    empty" message also names kernel_size and dilation: not enough)."""
    for name, call in _calls(value):
        with pytest.raises(ValueError,
                           match=rf"\b{name}\b.*(2\*\*31 - 1|2\*\*60)"):
            call(backend)


def test_issue_example_is_refused_cheaply(backend):
    """The example of issue 10 (reached 10 GB before)."""
    with pytest.raises(ValueError, match=r"kernel_size.*2\*\*31 - 1"):
        fastconv.max_pool2d(ONE, 2**31 + 1, 1, 2**30, backend=backend)


@pytest.mark.parametrize("kernel", [2**20 + 1, 2**31 - 1])
def test_huge_pool_kernel_on_tiny_input(kernel, backend):
    """Padding half a huge kernel on a 1x1 input: one useful tap (cython
    raised an empty MemoryError before: it tabulated every tap)."""
    x = np.full((1, 2, 1, 1), 3.0)
    y, indices = fastconv.max_pool2d(x, kernel, 1, kernel // 2,
                                     return_indices=True, backend=backend)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(indices, np.zeros((1, 2, 1, 1)))
    average = fastconv.avg_pool2d(x, kernel, 1, kernel // 2, backend=backend)
    np.testing.assert_allclose(average, x / (kernel * kernel), rtol=1e-12)
    average = fastconv.avg_pool2d(x, kernel, 1, kernel // 2,
                                  count_include_pad=False, backend=backend)
    np.testing.assert_array_equal(average, x)
    grad = fastconv.avg_pool2d_backward(np.ones((1, 2, 1, 1)), x.shape,
                                        kernel, 1, kernel // 2,
                                        count_include_pad=False,
                                        backend=backend)
    np.testing.assert_array_equal(grad, np.ones_like(x))


def test_largest_values_still_work(backend):
    y = fastconv.conv2d(X, W, stride=2**31 - 1, backend=backend)
    np.testing.assert_array_equal(y, np.full((1, 1, 1, 1), 9.0))
    y = fastconv.max_pool2d(X, 2, 2**31 - 1, backend=backend)
    np.testing.assert_array_equal(y, np.ones((1, 1, 1, 1)))


def test_output_too_long_names_padding(backend):
    with pytest.raises(ValueError, match=r"2\*\*31 - 1.*padding"):
        fastconv.conv2d(X, W, padding=2**31 - 1, backend=backend)


def test_broadcast_view_with_huge_axis_refused_before_copy():
    x = np.broadcast_to(np.ones(1), (1, 1, 2**31, 4))
    with pytest.raises(ValueError, match=r"every axis of x"):
        fastconv.conv2d(x, W, backend="naive")


def test_shape_arithmetic_is_constant_memory():
    """The geometry helpers allocate nothing per tap or kernel size."""
    kernel, pad = 2**31 - 1, 2**30 - 1
    tracemalloc.start()
    try:
        geometry = _shapes.pool_geometry((1, 1, 1, 1), (kernel, kernel),
                                         (1, 1), (pad,) * 4, (1, 1), True)
        assert not _shapes.pool_window_misses_input(geometry)
        trimmed = _shapes.taps_reaching_input(geometry)
        divisors = _shapes.avg_pool_divisors(geometry, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert (trimmed.kernel_height, trimmed.pad_h) == (1, 0)
    assert divisors.shape == (geometry.out_height, geometry.out_width)


def test_trimmed_kernel_gives_the_untrimmed_result():
    """taps_reaching_input changes no output: the naive loops on the trimmed
    and on the named geometry agree on random small sweeps (maxima, indices,
    averages and the average's backward)."""
    from fastconv import functional
    from fastconv.backends import naive

    rng = np.random.default_rng(0)
    checked = trimmed_some = 0
    while checked < 300:
        size = tuple(int(v) for v in rng.integers(1, 6, 2))
        kernel = tuple(int(v) for v in rng.integers(1, 8, 2))
        pads = tuple(int(rng.integers(0, kernel[i % 2] // 2 + 1))
                     for i in range(4))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        ceil_mode = bool(rng.integers(2))
        try:
            geometry = functional._pool_setup(
                (1, 2) + size, kernel, stride, ((pads[0], pads[2]),
                                                (pads[1], pads[3])),
                dilation, ceil_mode, "max_pool2d")
        except ValueError:
            continue
        checked += 1
        trimmed = _shapes.taps_reaching_input(geometry)
        trimmed_some += trimmed != geometry
        x = rng.standard_normal((1, 2) + size)
        for got, want in zip(naive.max_pool2d_forward(x, trimmed),
                             naive.max_pool2d_forward(x, geometry)):
            np.testing.assert_array_equal(got, want)
        if dilation == (1, 1):
            divisors = _shapes.avg_pool_divisors(geometry, False)
            np.testing.assert_allclose(
                naive.avg_pool2d_forward(x, trimmed, divisors),
                naive.avg_pool2d_forward(x, geometry, divisors), rtol=1e-14)
            grad = rng.standard_normal(geometry.output_shape)
            np.testing.assert_allclose(
                naive.avg_pool2d_backward(grad, trimmed, divisors),
                naive.avg_pool2d_backward(grad, geometry, divisors),
                rtol=1e-14)
    assert trimmed_some > 20  # the property was exercised
