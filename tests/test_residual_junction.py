"""The pieces of a residual block's shortcut junction on every CPU backend:
``relu(x, residual=r)`` (relu of the sum in one pass) and
``conv2d_backward(..., add_input_grad_to=t)`` (the input gradient added
into t in place) on every method the Cython backend has for it, against
the unfused operations; and their bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import functional as F
from fastconv.backends import resolve

# ---------------------------------------------------------- relu(x + r)


@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (5,), (), (0, 4),
                                   (3, 5, 70, 70)],
                         ids=["nchw", "1d", "0d", "empty", "blocks"])
def test_relu_of_a_sum_is_add_then_relu(backend, dtype, shape,
                                        random_array):
    x = random_array(shape, dtype, "x", shape)
    residual = random_array(shape, dtype, "r", shape)
    before = (x.copy(), residual.copy())
    y = F.relu(x, residual=residual, backend=backend)
    assert y.shape == x.shape and y.dtype == dtype
    # the sum rounded once, as numpy rounds it
    np.testing.assert_array_equal(y, np.maximum(x + residual, 0))
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(residual, before[1])
    assert not np.shares_memory(y, x) and not np.shares_memory(y, residual)


def test_relu_of_a_sum_keeps_nan_and_infinities(backend):
    x = np.array([np.nan, 1.0, np.inf, -np.inf, 2.0, -3.0], np.float32)
    r = np.array([1.0, np.nan, -np.inf, 1.0, -2.0, 1.0], np.float32)
    with np.errstate(invalid="ignore"):
        expected = np.maximum(x + r, 0)
    np.testing.assert_array_equal(F.relu(x, residual=r, backend=backend),
                                  expected)


def test_relu_of_a_sum_refuses_bad_residuals(backend):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        F.relu(x, residual=np.ones((3, 2), np.float32), backend=backend)
    with pytest.raises(TypeError, match="residual and x|x and residual"):
        F.relu(x, residual=np.ones((2, 3), np.float64), backend=backend)
    with pytest.raises(TypeError, match="residual must be a numpy.ndarray"):
        F.relu(x, residual=[[1, 2, 3], [4, 5, 6]], backend=backend)
    # a broadcast view naming a huge shape is refused before any copy
    huge = np.broadcast_to(np.float32(1), (2 ** 20, 2 ** 20))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        F.relu(x, residual=huge, backend=backend)


def test_relu_module_with_a_residual_backward_is_the_masked_gradient():
    from fastconv import nn

    rng = np.random.default_rng(3)
    x, r, g = (rng.standard_normal((2, 3, 4, 4)) for _ in range(3))
    layer = nn.ReLU()
    y = layer(x, r)
    np.testing.assert_array_equal(y, np.maximum(x + r, 0))
    np.testing.assert_array_equal(layer.backward(g),
                                  np.where(x + r > 0, g, 0))


# ------------------------------------------- conv2d_backward's accumulator

#: (x shape, weight shape, stride, padding, groups): what the Cython
#: backend runs for the input gradient on each (see the ids).
ACCUMULATE_CASES = {
    "winograd": ((8, 32, 16, 16), (32, 32, 3, 3), 1, 1, 1),
    "direct-3x3": ((2, 4, 9, 9), (6, 4, 3, 3), 1, 1, 1),
    "phases-3x3-s2": ((2, 4, 9, 10), (6, 4, 3, 3), 2, 1, 1),
    "phases-1x1-s2": ((2, 16, 8, 8), (32, 16, 1, 1), 2, 0, 1),
    "stacked-2x2-s2": ((2, 4, 8, 8), (6, 4, 2, 2), 2, 0, 1),
    "phases-3x3-s3": ((1, 3, 11, 11), (5, 3, 3, 3), 3, 1, 1),
    "groups": ((2, 8, 7, 7), (8, 2, 3, 3), 2, 1, 4),
    "depthwise": ((2, 8, 7, 7), (8, 1, 3, 3), 1, 1, 8),
}


@pytest.mark.parametrize("case", list(ACCUMULATE_CASES))
def test_input_gradient_added_in_place_equals_the_sum(backend, dtype, case,
                                                      random_array):
    x_shape, w_shape, stride, padding, groups = ACCUMULATE_CASES[case]
    if backend == "naive" and x_shape[1] > 8:
        x_shape = (1, 4) + x_shape[2:]
        w_shape = (8 if case == "phases-1x1-s2" else 4, 4) + w_shape[2:]
    x = random_array(x_shape, dtype, "x", case)
    weight = random_array(w_shape, dtype, "w", case)
    y = F.conv2d(x, weight, stride=stride, padding=padding, groups=groups,
                 backend=backend)
    grad_output = random_array(y.shape, dtype, "g", case)
    grad_input, grad_weight, grad_bias = F.conv2d_backward(
        grad_output, x, weight, stride, padding, groups=groups,
        backend=backend)
    start = random_array(x_shape, dtype, "t", case)
    target = start.copy()
    inputs = (grad_output.copy(), x.copy(), weight.copy())
    added, added_weight, added_bias = F.conv2d_backward(
        grad_output, x, weight, stride, padding, groups=groups,
        add_input_grad_to=target, backend=backend)
    assert added is target
    # each element is start + grad_input, rounded once
    np.testing.assert_array_equal(target, start + grad_input)
    np.testing.assert_array_equal(added_weight, grad_weight)
    np.testing.assert_array_equal(added_bias, grad_bias)
    for array, copy in zip((grad_output, x, weight), inputs):
        np.testing.assert_array_equal(array, copy)


def test_winograd_case_runs_winograd(random_array, count_calls):
    cython_cpu = resolve("conv2d_backward", "cython")
    calls = count_calls(cython_cpu, "_winograd")
    x_shape, w_shape, stride, padding, _ = ACCUMULATE_CASES["winograd"]
    x = random_array(x_shape, np.float32, "x")
    grad_output = random_array(x_shape, np.float32, "g")
    F.conv2d_backward(grad_output, x, random_array(w_shape, np.float32, "w"),
                      stride, padding, need_weight_grad=False,
                      add_input_grad_to=np.zeros(x_shape, np.float32),
                      backend="cython")
    assert calls["count"] == 1


def test_strided_accumulation_leaves_the_unreached_elements(random_array):
    """A 1x1 stride-2 convolution's input gradient reaches x[..., ::2, ::2]
    only: the rest of the accumulator keeps its values bit for bit (NaN
    and infinities included: nothing is added there, not even a 0)."""
    x = random_array((2, 16, 8, 8), np.float32, "x")
    weight = random_array((32, 16, 1, 1), np.float32, "w")
    grad_output = random_array((2, 32, 4, 4), np.float32, "g")
    target = np.full(x.shape, np.nan, np.float32)
    target[..., 1::2, :] = -np.inf
    unreached = np.ones(x.shape, bool)
    unreached[..., ::2, ::2] = False
    before = target.copy()
    F.conv2d_backward(grad_output, x, weight, 2, add_input_grad_to=target,
                      backend="cython")
    np.testing.assert_array_equal(target[unreached], before[unreached])
    assert np.isnan(target[..., ::2, ::2]).all()


def test_strided_accumulation_runs_in_the_interleave(random_array,
                                                     count_calls):
    """On the Cython backend the strided phases are added as they are
    interleaved: no separate whole-array add."""
    cython_cpu = resolve("conv2d_backward", "cython")
    adds = count_calls(cython_cpu._activation, "add_into")
    x = random_array((2, 16, 8, 8), np.float32, "x")
    weight = random_array((32, 16, 1, 1), np.float32, "w")
    grad_output = random_array((2, 32, 4, 4), np.float32, "g")
    F.conv2d_backward(grad_output, x, weight, 2,
                      add_input_grad_to=np.zeros(x.shape, np.float32),
                      backend="cython")
    assert adds["count"] == 0
    F.conv2d_backward(grad_output[:, :, :, :], x[:, :, ::2, ::2].copy(),
                      weight, 1,
                      add_input_grad_to=np.zeros((2, 16, 4, 4), np.float32),
                      backend="cython")
    assert adds["count"] == 1


def test_accumulator_is_ignored_without_the_input_gradient(backend):
    x = np.ones((1, 2, 5, 5))
    weight = np.ones((3, 2, 3, 3))
    target = np.full(x.shape, 7.0)
    grad_input, grad_weight, _ = F.conv2d_backward(
        np.ones((1, 3, 3, 3)), x, weight, need_input_grad=False,
        add_input_grad_to=target, backend=backend)
    assert grad_input is None and grad_weight is not None
    np.testing.assert_array_equal(target, 7.0)


def test_bad_accumulators_are_refused(backend):
    x = np.ones((1, 2, 5, 5), np.float32)
    weight = np.ones((3, 2, 3, 3), np.float32)
    grad_output = np.ones((1, 3, 3, 3), np.float32)

    def call(target):
        F.conv2d_backward(grad_output, x, weight, add_input_grad_to=target,
                          backend=backend)

    with pytest.raises(TypeError, match="add_input_grad_to must be a numpy"):
        call([[0.0]])
    with pytest.raises(ValueError, match="shape .* and dtype"):
        call(np.zeros((1, 2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="shape .* and dtype"):
        call(np.zeros(x.shape, np.float64))
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        call(np.zeros((1, 2, 5, 10), np.float32)[..., ::2])
    read_only = np.zeros(x.shape, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        call(read_only)
    with pytest.raises(ValueError, match="must not share memory"):
        call(x)
    # a 1x1 convolution's grad_output has x's shape: it cannot be the target
    same = np.ones((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        F.conv2d_backward(same, x, np.ones((2, 2, 1, 1), np.float32),
                          add_input_grad_to=same, backend=backend)
