"""Asymmetric padding ``((top, bottom), (left, right))``, as in numpy.pad.

conv2d, max_pool2d and avg_pool2d (and their backward passes) on every CPU
backend against the naive reference; the reference against PyTorch, which
takes only symmetric padding, so there the input is padded explicitly
(zeros for convolution and average pooling, -inf for max pooling) and the
gradients cropped back. Bad padding arguments are tested at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

# (id, x shape, weight shape, padding, keyword arguments)
CONV_CASES = [
    ("top_only", (2, 2, 5, 6), (3, 2, 3, 3), ((2, 0), (0, 0)), {}),
    ("all_sides_differ", (1, 3, 6, 5), (2, 3, 3, 2), ((1, 2), (0, 3)), {}),
    ("strided_dilated", (2, 2, 9, 8), (2, 2, 3, 3), ((0, 3), (2, 1)),
     dict(stride=(2, 3), dilation=(2, 1))),
    ("depthwise", (1, 3, 6, 6), (3, 1, 3, 3), ((1, 0), (2, 1)),
     dict(groups=3)),
    ("grouped_pointwise", (2, 4, 5, 4), (4, 2, 1, 1), ((0, 1), (1, 0)),
     dict(groups=2)),
]
CONV_IDS = [case[0] for case in CONV_CASES]
CONV_BY_ID = {case[0]: case for case in CONV_CASES}

# (id, x shape, kernel_size, stride, padding, ceil_mode); every side is at
# most half the kernel, as pooling requires.
POOL_CASES = [
    ("bottom_right", (2, 2, 7, 6), 3, 2, ((0, 1), (0, 1)), False),
    ("top_left_ceil", (1, 3, 6, 7), (3, 2), 2, ((1, 0), (1, 0)), True),
    ("rect_stride1", (2, 1, 5, 6), (2, 3), 1, ((1, 0), (0, 1)), False),
    ("ceil_bottom", (1, 2, 8, 5), 4, 3, ((0, 2), (1, 2)), True),
]
POOL_IDS = [case[0] for case in POOL_CASES]
POOL_BY_ID = {case[0]: case for case in POOL_CASES}


def _numpy_pad_width(padding):
    (top, bottom), (left, right) = padding
    return ((0, 0), (0, 0), (top, bottom), (left, right))


def _torch_pad(padding):
    """torch.nn.functional.pad's order: (left, right, top, bottom)."""
    (top, bottom), (left, right) = padding
    return (left, right, top, bottom)


def _crop(grad, padding, shape):
    (top, _), (left, _) = padding
    return grad[:, :, top:top + shape[2], left:left + shape[3]]


# --------------------------------------------------------------- conv2d

def conv_inputs(case_id, dtype, random_array):
    _, x_shape, weight_shape, padding, kwargs = CONV_BY_ID[case_id]
    x = random_array(x_shape, dtype, "pad conv x", case_id)
    weight = random_array(weight_shape, dtype, "pad conv w", case_id)
    bias = random_array(weight_shape[0], dtype, "pad conv b", case_id)
    return x, weight, bias, padding, kwargs


def conv_reference(case_id, dtype, random_array, naive_cache):
    x, weight, bias, padding, kwargs = conv_inputs(case_id, dtype,
                                                   random_array)

    def compute():
        y = fastconv.conv2d(x, weight, bias, padding=padding, **kwargs,
                            backend="naive")
        grad_output = random_array(y.shape, dtype, "pad conv g", case_id)
        grads = fastconv.conv2d_backward(grad_output, x, weight,
                                         padding=padding, **kwargs,
                                         backend="naive")
        return y, grad_output, grads

    return naive_cache(("pad conv", case_id, dtype.name), compute)


@pytest.mark.parametrize("case_id", CONV_IDS)
def test_conv_asymmetric_matches_naive(case_id, dtype, backend, random_array,
                                       naive_cache, assert_close):
    x, weight, bias, padding, kwargs = conv_inputs(case_id, dtype,
                                                   random_array)
    y_ref, grad_output, grads_ref = conv_reference(case_id, dtype,
                                                   random_array, naive_cache)
    y = fastconv.conv2d(x, weight, bias, padding=padding, **kwargs,
                        backend=backend)
    assert_close(y, y_ref, dtype, what="conv2d")
    grads = fastconv.conv2d_backward(grad_output, x, weight, padding=padding,
                                     **kwargs, backend=backend)
    for name, grad, want in zip(("grad_input", "grad_weight", "grad_bias"),
                                grads, grads_ref):
        assert_close(grad, want, dtype, what=name)


@pytest.mark.parametrize("case_id", CONV_IDS)
def test_naive_conv_asymmetric_matches_torch(case_id, dtype, torch,
                                             random_array, naive_cache,
                                             assert_close):
    x, weight, bias, padding, kwargs = conv_inputs(case_id, dtype,
                                                   random_array)
    y, grad_output, (grad_x, grad_w, grad_b) = conv_reference(
        case_id, dtype, random_array, naive_cache)
    functional = torch.nn.functional
    x_t = torch.tensor(x, requires_grad=True)
    w_t = torch.tensor(weight, requires_grad=True)
    b_t = torch.tensor(bias, requires_grad=True)
    y_t = functional.conv2d(functional.pad(x_t, _torch_pad(padding)), w_t,
                            b_t, **kwargs)
    y_t.backward(torch.tensor(grad_output))
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_x, x_t.grad.numpy(), dtype, what="grad_input vs torch")
    assert_close(grad_w, w_t.grad.numpy(), dtype, what="grad_weight")
    assert_close(grad_b, b_t.grad.numpy(), dtype, what="grad_bias")


def test_conv_asymmetric_equals_explicit_padding(compiled_backend,
                                                 random_array, assert_close):
    """conv2d with ((t, b), (l, r)) is conv2d of the numpy.pad-ded input."""
    x = random_array((1, 2, 5, 6), np.float64, "explicit pad x")
    weight = random_array((2, 2, 2, 3), np.float64, "explicit pad w")
    padding = ((3, 1), (0, 2))
    padded = np.pad(x, _numpy_pad_width(padding))
    assert_close(
        fastconv.conv2d(x, weight, padding=padding, backend=compiled_backend),
        fastconv.conv2d(padded, weight, backend=compiled_backend))


def test_conv_asymmetric_gradient_finite_differences(compiled_backend,
                                                     random_array,
                                                     finite_difference,
                                                     assert_close):
    x = random_array((1, 2, 4, 3), np.float64, "fd pad x")
    weight = random_array((2, 2, 2, 3), np.float64, "fd pad w")
    padding = ((0, 2), (1, 0))
    y = fastconv.conv2d(x, weight, padding=padding, stride=(1, 2),
                        backend=compiled_backend)
    grad_output = random_array(y.shape, np.float64, "fd pad g")

    def loss(x_value, weight_value):
        return float(np.sum(fastconv.conv2d(
            x_value, weight_value, padding=padding, stride=(1, 2),
            backend=compiled_backend) * grad_output))

    grad_x, grad_w, _ = fastconv.conv2d_backward(
        grad_output, x, weight, padding=padding, stride=(1, 2),
        backend=compiled_backend)
    assert_close(grad_x, finite_difference(lambda v: loss(v, weight), x),
                 rtol=1e-7)
    assert_close(grad_w, finite_difference(lambda v: loss(x, v), weight),
                 rtol=1e-7)


def test_symmetric_nested_padding_equals_pair(backend, random_array):
    x = random_array((1, 1, 5, 5), np.float64, "nested pair x")
    weight = random_array((1, 1, 3, 3), np.float64, "nested pair w")
    np.testing.assert_array_equal(
        fastconv.conv2d(x, weight, padding=((1, 1), (2, 2)), backend=backend),
        fastconv.conv2d(x, weight, padding=(1, 2), backend=backend))
    np.testing.assert_array_equal(
        fastconv.max_pool2d(x, 3, 1, ((1, 1), (0, 0)), backend=backend),
        fastconv.max_pool2d(x, 3, 1, (1, 0), backend=backend))


# -------------------------------------------------------------- pooling

def pool_inputs(case_id, dtype, random_array):
    _, x_shape, kernel, stride, padding, ceil_mode = POOL_BY_ID[case_id]
    x = random_array(x_shape, dtype, "pad pool x", case_id)
    return x, dict(kernel_size=kernel, stride=stride, padding=padding,
                   ceil_mode=ceil_mode)


def pool_reference(case_id, dtype, random_array, naive_cache):
    x, kwargs = pool_inputs(case_id, dtype, random_array)

    def compute():
        y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                         backend="naive")
        grad_output = random_array(y.shape, dtype, "pad pool g", case_id)
        max_grad = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                                backend="naive")
        averages = {}
        for include in (True, False):
            avg = fastconv.avg_pool2d(x, **kwargs, count_include_pad=include,
                                      backend="naive")
            avg_grad = fastconv.avg_pool2d_backward(
                grad_output, x.shape, **kwargs, count_include_pad=include,
                backend="naive")
            averages[include] = (avg, avg_grad)
        return y, indices, grad_output, max_grad, averages

    return naive_cache(("pad pool", case_id, dtype.name), compute)


@pytest.mark.parametrize("case_id", POOL_IDS)
def test_pools_asymmetric_match_naive(case_id, dtype, backend, random_array,
                                      naive_cache, assert_close):
    x, kwargs = pool_inputs(case_id, dtype, random_array)
    y_ref, indices_ref, grad_output, max_grad_ref, averages = pool_reference(
        case_id, dtype, random_array, naive_cache)
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=backend)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    assert_close(fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend=backend),
                 max_grad_ref, dtype, what="max grad")
    for include, (avg_ref, avg_grad_ref) in averages.items():
        assert_close(fastconv.avg_pool2d(x, **kwargs,
                                         count_include_pad=include,
                                         backend=backend),
                     avg_ref, dtype, what=f"avg include_pad={include}")
        assert_close(fastconv.avg_pool2d_backward(
            grad_output, x.shape, **kwargs, count_include_pad=include,
            backend=backend), avg_grad_ref, dtype,
            what=f"avg grad include_pad={include}")


@pytest.mark.parametrize("case_id", POOL_IDS)
def test_naive_pools_asymmetric_match_torch(case_id, dtype, torch,
                                            random_array, naive_cache,
                                            assert_close):
    """PyTorch on the explicitly padded input: -inf for max pooling; for
    average pooling zeros (count_include_pad=True), and without counting
    the padding the ratio of the pooled input to the pooled in-input mask.

    With ceil_mode a last window that would start in the bottom/right
    padding is dropped (PyTorch's and ONNX's rule); on an explicitly padded
    input that padding is input, so PyTorch's output may be one longer
    there: it is cut off."""
    x, kwargs = pool_inputs(case_id, dtype, random_array)
    y, indices, grad_output, max_grad, averages = pool_reference(
        case_id, dtype, random_array, naive_cache)
    functional = torch.nn.functional
    padding = kwargs.pop("padding")
    pads = _torch_pad(padding)
    grad_t = torch.tensor(grad_output)

    out_h, out_w = y.shape[2:]

    def cut(y_t):
        assert 0 <= y_t.shape[2] - out_h <= 1 and 0 <= y_t.shape[3] - out_w <= 1
        return y_t[:, :, :out_h, :out_w]

    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = (cut(out) for out in functional.max_pool2d(
        functional.pad(x_t, pads, value=-np.inf), **kwargs,
        return_indices=True))
    y_t.backward(grad_t)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    padded_width = x.shape[3] + pads[0] + pads[1]
    rows, cols = np.divmod(indices_t.numpy(), padded_width)
    np.testing.assert_array_equal(
        indices, (rows - pads[2]) * x.shape[3] + cols - pads[0])
    assert_close(max_grad, x_t.grad.numpy(), dtype, what="max grad")

    x_t = torch.tensor(x, requires_grad=True)
    y_t = cut(functional.avg_pool2d(functional.pad(x_t, pads), **kwargs))
    y_t.backward(grad_t)
    assert_close(averages[True][0], y_t.detach().numpy(), dtype, what="avg")
    assert_close(averages[True][1], x_t.grad.numpy(), dtype, what="avg grad")

    x_t = torch.tensor(x, requires_grad=True)
    inside = functional.pad(torch.ones_like(x_t), pads)
    y_t = cut(functional.avg_pool2d(functional.pad(x_t, pads), **kwargs)
              / functional.avg_pool2d(inside, **kwargs))
    y_t.backward(grad_t)
    assert_close(averages[False][0], y_t.detach().numpy(), dtype,
                 what="avg without padding")
    assert_close(averages[False][1], x_t.grad.numpy(), dtype,
                 what="avg grad without padding")


def test_avg_divisors_count_each_side():
    """count_include_pad counts the padded cells of each side separately."""
    x = np.ones((1, 1, 2, 2))
    y = fastconv.avg_pool2d(x, 2, 1, ((1, 0), (0, 1)), backend="naive")
    # windows cover rows -1..0 / 0..1 and columns 0..1 / 1..2
    np.testing.assert_array_equal(y[0, 0], [[0.5, 0.25], [1.0, 0.5]])
    y = fastconv.avg_pool2d(x, 2, 1, ((1, 0), (0, 1)),
                            count_include_pad=False, backend="naive")
    np.testing.assert_array_equal(y[0, 0], np.ones((2, 2)))


# ------------------------------------------------------------ bad input

X = np.zeros((1, 1, 6, 6))
W = np.zeros((1, 1, 3, 3))


@pytest.mark.parametrize("padding, error, pattern", [
    (((1, 2),), ValueError, r"\bpadding\b"),
    (((1, 2), (3,)), ValueError, r"\bpadding\b"),
    (((1, 2), (3, 4, 5)), ValueError, r"\bpadding\b"),
    (((1, 2), 3), ValueError, r"\bpadding\b"),
    ((1, (2, 3)), ValueError, r"\bpadding\b"),
    (((1, -1), (0, 0)), ValueError, r"\bpadding\b.*>= 0"),
    (((0, 0), (0.5, 1)), TypeError, r"\bpadding\b"),
    (((0, 0), (True, 1)), TypeError, r"\bpadding\b"),
    ((np.zeros((2, 2), dtype=int),), ValueError, r"\bpadding\b"),
])
def test_bad_nested_padding(padding, error, pattern):
    with pytest.raises(error, match=pattern):
        fastconv.conv2d(X, W, padding=padding, backend="naive")
    with pytest.raises(error, match=pattern):
        fastconv.max_pool2d(X, 3, padding=padding, backend="naive")
    with pytest.raises(error, match=pattern):
        fastconv.avg_pool2d_backward(np.zeros((1, 1, 2, 2)), X.shape, 3,
                                     padding=padding, backend="naive")


@pytest.mark.parametrize("padding", [((0, 2), (0, 0)), ((2, 0), (1, 1)),
                                     ((0, 0), (1, 2))])
def test_pool_padding_over_half_on_one_side(padding):
    with pytest.raises(ValueError, match=r"half of kernel_size on each side"):
        fastconv.max_pool2d(X, 3, padding=padding, backend="naive")
    with pytest.raises(ValueError, match=r"half of kernel_size on each side"):
        fastconv.avg_pool2d(X, 3, padding=padding, backend="naive")
