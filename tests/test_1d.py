"""conv1d, max_pool1d, avg_pool1d and their backward passes on every CPU
backend: against the naive reference, the reference against PyTorch,
gradients by finite differences in float64, and the bad-input errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

# (id, x shape, weight shape, keyword arguments, with bias)
CONV_CASES = [
    ("plain_bias", (2, 3, 9), (4, 3, 3), {}, True),
    ("stride2_pad1", (2, 2, 10), (3, 2, 3), dict(stride=2, padding=1), True),
    ("left_right", (1, 2, 7), (2, 2, 4), dict(padding=(3, 1)), False),
    ("same_even_dilated", (2, 2, 8), (3, 2, 2), dict(padding="same",
                                                     dilation=3), True),
    ("valid_groups", (1, 4, 8), (6, 2, 3), dict(padding="valid", groups=2),
     True),
    ("depthwise_tuple_args", (2, 3, 6), (3, 1, 3),
     dict(groups=3, stride=(2,), dilation=(1,), padding=1), False),
    ("pointwise", (2, 3, 5), (2, 3, 1), {}, True),
]
CONV_IDS = [case[0] for case in CONV_CASES]
CONV_BY_ID = {case[0]: case for case in CONV_CASES}

# (id, x shape, keyword arguments); avg cases drop dilation
POOL_CASES = [
    ("k2", (2, 3, 8), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("left_right_ceil", (2, 1, 7), dict(kernel_size=4, stride=3,
                                        padding=(2, 1), ceil_mode=True)),
    ("tuple_args", (1, 2, 6), dict(kernel_size=(3,), stride=(1,),
                                   padding=(1,) * 2)),
]
POOL_IDS = [case[0] for case in POOL_CASES]
POOL_BY_ID = {case[0]: case for case in POOL_CASES}


def _torch_conv1d(torch, x_t, w_t, b_t, kwargs):
    kwargs = dict(kwargs)
    padding = kwargs.get("padding", 0)
    if isinstance(padding, tuple):  # (left, right): pad explicitly
        x_t = torch.nn.functional.pad(x_t, padding)
        kwargs["padding"] = 0
    return torch.nn.functional.conv1d(x_t, w_t, b_t, **kwargs)


def conv_inputs(case_id, dtype, random_array):
    _, x_shape, weight_shape, kwargs, with_bias = CONV_BY_ID[case_id]
    x = random_array(x_shape, dtype, "c1 x", case_id)
    weight = random_array(weight_shape, dtype, "c1 w", case_id)
    bias = (random_array(weight_shape[0], dtype, "c1 b", case_id)
            if with_bias else None)
    return x, weight, bias, kwargs


def conv_reference(case_id, dtype, random_array, naive_cache):
    x, weight, bias, kwargs = conv_inputs(case_id, dtype, random_array)

    def compute():
        y = fastconv.conv1d(x, weight, bias, **kwargs, backend="naive")
        grad_output = random_array(y.shape, dtype, "c1 g", case_id)
        return y, grad_output, fastconv.conv1d_backward(
            grad_output, x, weight, **kwargs, backend="naive")

    return naive_cache(("conv1d", case_id, dtype.name), compute)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case_id", CONV_IDS)
def test_conv1d_matches_naive_and_torch(case_id, dtype, backend, random_array,
                                        naive_cache, assert_close):
    x, weight, bias, kwargs = conv_inputs(case_id, dtype, random_array)
    y_ref, grad_output, grads_ref = conv_reference(case_id, dtype,
                                                   random_array, naive_cache)
    y = fastconv.conv1d(x, weight, bias, **kwargs, backend=backend)
    assert y.dtype == dtype and y.ndim == 3
    assert_close(y, y_ref, dtype, what="conv1d")
    grads = fastconv.conv1d_backward(grad_output, x, weight, **kwargs,
                                     backend=backend)
    for name, grad, want in zip(("grad_input", "grad_weight", "grad_bias"),
                                grads, grads_ref):
        assert grad.dtype == dtype
        assert_close(grad, want, dtype, what=name)
    assert fastconv.conv1d_backward(grad_output, x, weight, **kwargs,
                                    need_input_grad=False,
                                    backend=backend)[0] is None


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case_id", CONV_IDS)
def test_naive_conv1d_matches_torch(case_id, dtype, torch, random_array,
                                    naive_cache, assert_close):
    x, weight, bias, kwargs = conv_inputs(case_id, dtype, random_array)
    y, grad_output, (grad_x, grad_w, grad_b) = conv_reference(
        case_id, dtype, random_array, naive_cache)
    x_t = torch.tensor(x, requires_grad=True)
    w_t = torch.tensor(weight, requires_grad=True)
    b_t = None if bias is None else torch.tensor(bias, requires_grad=True)
    y_t = _torch_conv1d(torch, x_t, w_t, b_t, kwargs)
    y_t.backward(torch.tensor(grad_output))
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_x, x_t.grad.numpy(), dtype, what="grad_input")
    assert_close(grad_w, w_t.grad.numpy(), dtype, what="grad_weight")
    if bias is not None:
        assert_close(grad_b, b_t.grad.numpy(), dtype, what="grad_bias")


def test_conv1d_gradient_finite_differences(compiled_backend, random_array,
                                            finite_difference, assert_close):
    x = random_array((1, 2, 6), np.float64, "fd c1 x")
    weight = random_array((2, 2, 3), np.float64, "fd c1 w")
    options = dict(stride=2, padding=(2, 0))
    y = fastconv.conv1d(x, weight, **options, backend=compiled_backend)
    grad_output = random_array(y.shape, np.float64, "fd c1 g")

    def loss(x_value, weight_value):
        return float(np.sum(fastconv.conv1d(
            x_value, weight_value, **options, backend=compiled_backend)
            * grad_output))

    grad_x, grad_w, _ = fastconv.conv1d_backward(grad_output, x, weight,
                                                 **options,
                                                 backend=compiled_backend)
    assert_close(grad_x, finite_difference(lambda v: loss(v, weight), x),
                 rtol=1e-7)
    assert_close(grad_w, finite_difference(lambda v: loss(x, v), weight),
                 rtol=1e-7)


# -------------------------------------------------------------- pooling

def pool_reference(case_id, dtype, random_array, naive_cache):
    _, x_shape, kwargs = POOL_BY_ID[case_id]
    x = random_array(x_shape, dtype, "p1 x", case_id)

    def compute():
        y, indices = fastconv.max_pool1d(x, **kwargs, return_indices=True,
                                         backend="naive")
        grad_output = random_array(y.shape, dtype, "p1 g", case_id)
        max_grad = fastconv.max_pool1d_backward(grad_output, indices,
                                                x.shape, backend="naive")
        averages = {}
        for include in (True, False):
            averages[include] = (
                fastconv.avg_pool1d(x, **kwargs, count_include_pad=include,
                                    backend="naive"),
                fastconv.avg_pool1d_backward(
                    grad_output, x.shape, **kwargs,
                    count_include_pad=include, backend="naive"))
        return y, indices, grad_output, max_grad, averages

    return x, kwargs, naive_cache(("pool1d", case_id, dtype.name), compute)


@pytest.mark.parametrize("case_id", POOL_IDS)
def test_pool1d_matches_naive(case_id, dtype, backend, random_array,
                              naive_cache, assert_close):
    x, kwargs, (y_ref, indices_ref, grad_output, max_grad_ref,
                averages) = pool_reference(case_id, dtype, random_array,
                                           naive_cache)
    y, indices = fastconv.max_pool1d(x, **kwargs, return_indices=True,
                                     backend=backend)
    assert y.ndim == 3 and indices.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    np.testing.assert_array_equal(
        fastconv.max_pool1d(x, **kwargs, backend=backend), y_ref)
    assert_close(fastconv.max_pool1d_backward(grad_output, indices, x.shape,
                                              backend=backend),
                 max_grad_ref, dtype)
    for include, (avg_ref, grad_ref) in averages.items():
        assert_close(fastconv.avg_pool1d(x, **kwargs,
                                         count_include_pad=include,
                                         backend=backend), avg_ref, dtype)
        assert_close(fastconv.avg_pool1d_backward(
            grad_output, x.shape, **kwargs, count_include_pad=include,
            backend=backend), grad_ref, dtype)


@pytest.mark.parametrize("case_id", POOL_IDS)
def test_naive_pool1d_matches_torch(case_id, dtype, torch, random_array,
                                    naive_cache, assert_close):
    x, kwargs, (y, indices, grad_output, max_grad,
                averages) = pool_reference(case_id, dtype, random_array,
                                           naive_cache)
    functional = torch.nn.functional
    left, right = (kwargs.get("padding", 0),) * 2 if isinstance(
        kwargs.get("padding", 0), int) else kwargs["padding"]
    torch_kwargs = dict(kwargs)
    if left != right:
        # asymmetric: pad explicitly; the last ceil_mode window PyTorch
        # keeps may start in what is right padding here, so cut it off
        torch_kwargs["padding"] = 0
        pads = (left, right)
    else:
        torch_kwargs["padding"] = left
        pads = (0, 0)
    length = y.shape[2]
    grad_t = torch.tensor(grad_output)

    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = functional.max_pool1d(
        functional.pad(x_t, pads, value=-np.inf), **torch_kwargs,
        return_indices=True)
    y_t, indices_t = y_t[:, :, :length], indices_t[:, :, :length]
    y_t.backward(grad_t)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy() - pads[0])
    assert_close(max_grad, x_t.grad.numpy(), dtype, what="max grad")

    x_t = torch.tensor(x, requires_grad=True)
    y_t = functional.avg_pool1d(functional.pad(x_t, pads),
                                **torch_kwargs)[:, :, :length]
    y_t.backward(grad_t)
    assert_close(averages[True][0], y_t.detach().numpy(), dtype)
    assert_close(averages[True][1], x_t.grad.numpy(), dtype)
    if pads == (0, 0):
        x_t = torch.tensor(x, requires_grad=True)
        y_t = functional.avg_pool1d(x_t, **torch_kwargs,
                                    count_include_pad=False)
        y_t.backward(grad_t)
        assert_close(averages[False][0], y_t.detach().numpy(), dtype)
        assert_close(averages[False][1], x_t.grad.numpy(), dtype)


def test_avg_pool1d_gradient_finite_differences(compiled_backend,
                                                random_array,
                                                finite_difference,
                                                assert_close):
    x = random_array((1, 2, 7), np.float64, "fd p1 x")
    options = dict(kernel_size=3, stride=2, padding=(1, 0), ceil_mode=True,
                   count_include_pad=False)
    y = fastconv.avg_pool1d(x, **options, backend=compiled_backend)
    grad_output = random_array(y.shape, np.float64, "fd p1 g")
    numeric = finite_difference(lambda v: float(np.sum(fastconv.avg_pool1d(
        v, **options, backend=compiled_backend) * grad_output)), x)
    assert_close(fastconv.avg_pool1d_backward(grad_output, x.shape,
                                              **options,
                                              backend=compiled_backend),
                 numeric, rtol=1e-7)


# ------------------------------------------------------------ bad input

X = np.zeros((1, 2, 6))
W = np.zeros((3, 2, 3))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: fastconv.conv1d(np.zeros((1, 2, 6, 1)), W), ValueError,
     r"x must be 3-D"),
    (lambda: fastconv.conv1d(X, np.zeros((3, 2, 3, 1))), ValueError,
     r"weight must be 3-D"),
    (lambda: fastconv.conv1d(X.tolist(), W), TypeError, r"numpy.ndarray"),
    (lambda: fastconv.conv1d(X, W, stride=(1, 1)), ValueError,
     r"stride must be an int or a 1-tuple"),
    (lambda: fastconv.conv1d(X, W, padding="full"), ValueError, r"padding"),
    (lambda: fastconv.conv1d(X, W, padding="same", stride=2), ValueError,
     r"stride 1"),
    (lambda: fastconv.conv1d(X, W, padding=(1, -1)), ValueError,
     r"padding"),
    (lambda: fastconv.conv1d(X, W, padding=((1, 1), (1, 1))), TypeError,
     r"padding"),
    (lambda: fastconv.conv1d(X, np.zeros((3, 2, 9))), ValueError,
     r"conv1d: the output would be empty"),
    (lambda: fastconv.conv1d_backward(np.zeros((1, 3, 5)), X, W),
     ValueError, r"grad_output must have shape \(1, 3, 4\)"),
    (lambda: fastconv.max_pool1d(X, 3, padding=2), ValueError,
     r"half of kernel_size"),
    (lambda: fastconv.max_pool1d(X, 3, padding=(0, 2)), ValueError,
     r"half of kernel_size"),
    (lambda: fastconv.max_pool1d(X, 7), ValueError,
     r"max_pool1d: the output would be empty"),
    (lambda: fastconv.max_pool1d(X.astype(np.int8).tolist(), 2), TypeError,
     r"numpy.ndarray"),
    (lambda: fastconv.max_pool1d(np.zeros((2, 6)), 2), ValueError,
     r"3-D"),
    (lambda: fastconv.max_pool1d(X, 2**31), ValueError,
     r"kernel_size.*2\*\*31"),
    (lambda: fastconv.avg_pool1d(X, 2, stride=0), ValueError, r"stride"),
    (lambda: fastconv.avg_pool1d_backward(np.zeros((1, 2, 3)), (1, 2), 2),
     ValueError, r"input_shape must be a 3-tuple"),
    (lambda: fastconv.avg_pool1d_backward(np.zeros((1, 2, 4)), X.shape, 2),
     ValueError, r"grad_output"),
    (lambda: fastconv.max_pool1d_backward(np.zeros((1, 2, 3)),
                                          np.full((1, 2, 3), 6), X.shape),
     ValueError, r"indices must lie in"),
])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
