"""batch_norm_statistics / batch_norm / batch_norm_training /
batch_norm_backward and relu /
relu_backward on every CPU backend: against a float64 NumPy reference
written here, the naive loops and PyTorch (when installed), gradients by
finite differences in float64, the same bits for any thread count, and
the errors of bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import functional as F

SHAPES = {
    "nchw": (3, 4, 5, 7),
    "ragged_rows": (2, 3, 17, 1),   # rows not a multiple of the 16 lanes
    "nc": (6, 5),
    "ncl": (2, 3, 33),
    "ncdhw": (2, 2, 3, 2, 3),
    # batches of 8 or more run in runs of images on the Cython backend
    "large_batch": (9, 3, 4, 5),
}


def reference_statistics(x):
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.var(axis=axes)


def channel_view(vector, ndim):
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def reference_forward(x, mean, var, weight, bias, eps):
    x64 = x.astype(np.float64)
    y = (x64 - channel_view(mean, x.ndim)) / np.sqrt(
        channel_view(var, x.ndim) + eps)
    if weight is not None:
        y = y * channel_view(weight.astype(np.float64), x.ndim)
    if bias is not None:
        y = y + channel_view(bias.astype(np.float64), x.ndim)
    return y


def training_loss(x, weight, bias, upstream, eps):
    """sum(upstream * batch_norm(x)) with x's own statistics, float64."""
    mean, var = reference_statistics(x)
    return float(np.sum(upstream * reference_forward(x, mean, var, weight,
                                                     bias, eps)))


def case(random_array, shape, dtype, *seed, offset=0.0):
    x = random_array(shape, dtype, "x", *seed) * 2 + offset
    channels = shape[1]
    weight = random_array((channels,), dtype, "w", *seed)
    bias = random_array((channels,), dtype, "b", *seed)
    return x.astype(dtype), weight, bias


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_statistics_and_forward_match_float64_reference(
        backend, dtype, shape, random_array, assert_close):
    x, weight, bias = case(random_array, shape, dtype, shape)
    before = x.copy()
    mean, var = F.batch_norm_statistics(x, backend=backend)
    expected_mean, expected_var = reference_statistics(x)
    assert mean.dtype == var.dtype == np.float64
    # float64 sums of the float input: rounding of the sums alone
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, expected_var, rtol=1e-12)
    y = F.batch_norm(x, mean, var, weight, bias, 1e-5, backend=backend)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, reference_forward(x, mean, var, weight, bias, 1e-5),
                 dtype=dtype)
    plain = F.batch_norm(x, mean, var, backend=backend)
    assert_close(plain, reference_forward(x, mean, var, None, None, 1e-5),
                 dtype=dtype)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_training_forward_is_statistics_then_batch_norm(backend, dtype, shape,
                                                        random_array):
    x, weight, bias = case(random_array, shape, dtype, "training", shape)
    before = x.copy()
    y, mean, var = F.batch_norm_training(x, weight, bias, 1e-3,
                                         backend=backend)
    expected_mean, expected_var = F.batch_norm_statistics(x, backend=backend)
    np.testing.assert_array_equal(mean, expected_mean)
    np.testing.assert_array_equal(var, expected_var)
    np.testing.assert_array_equal(
        y, F.batch_norm(x, mean, var, weight, bias, 1e-3, backend=backend))
    np.testing.assert_array_equal(x, before)
    plain, _, _ = F.batch_norm_training(x, backend=backend)
    np.testing.assert_array_equal(
        plain, F.batch_norm(x, mean, var, backend=backend))


def test_variance_exact_where_the_mean_dwarfs_the_spread(compiled_backend):
    # one-pass E[x^2] - E[x]^2 loses every digit here; two passes do not
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((8, 3, 16, 16))).astype(np.float32)
    mean, var = F.batch_norm_statistics(x, backend=compiled_backend)
    expected_mean, expected_var = reference_statistics(x)
    np.testing.assert_allclose(var, expected_var, rtol=1e-9)
    y = F.batch_norm(x, mean, var, backend=compiled_backend)
    # centred before scaling: float32 rounding of x - mean, not of 1e4
    np.testing.assert_allclose(
        y, reference_forward(x, mean, var, None, None, 1e-5), atol=2e-3)


def test_statistics_exact_whatever_a_channel_starts_with(compiled_backend):
    """The one-pass statistics of batches of 8 and more (summed about a
    channel's first value) hold double's precision when that value is an
    outlier far from the mean, and give numpy's mean and a NaN variance
    where it is infinite or NaN."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 4, 24, 24))
    x[0, 0, 0, 0] = 1e7            # the centre, 1e7 standard deviations out
    x[:, 1] += 3e4                 # a mean that dwarfs the spread
    x[0, 2, 0, 0] = np.inf
    x[0, 3, 0, 0] = np.nan
    for dtype in (np.float32, np.float64):
        data = x.astype(dtype)
        mean, var = F.batch_norm_statistics(data, backend=compiled_backend)
        with np.errstate(invalid="ignore"):  # inf - inf in numpy's var
            expected_mean, expected_var = reference_statistics(data)
        np.testing.assert_allclose(mean[:2], expected_mean[:2], rtol=1e-12)
        np.testing.assert_allclose(var[:2], expected_var[:2], rtol=1e-9)
        np.testing.assert_array_equal(mean[2:], expected_mean[2:])
        assert np.isnan(var[2:]).all()


@pytest.mark.parametrize("batch_statistics", [True, False],
                         ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_backward_matches_finite_differences(backend, batch_statistics,
                                             affine, random_array,
                                             finite_difference):
    shape = (3, 2, 3, 2)
    x, weight, bias = case(random_array, shape, np.float64, "fd")
    upstream = random_array(shape, np.float64, "upstream")
    if not affine:
        weight = bias = None
    eps = 1e-3
    if batch_statistics:
        mean, var = F.batch_norm_statistics(x, backend=backend)

        def loss_of_x(point):
            return training_loss(point, weight, bias, upstream, eps)
    else:
        mean = random_array((2,), np.float64, "mean")
        var = np.abs(random_array((2,), np.float64, "var")) + 0.5

        def loss_of_x(point):
            return float(np.sum(upstream * reference_forward(
                point, mean, var, weight, bias, eps)))
    grad_input, grad_weight, grad_bias = F.batch_norm_backward(
        upstream, x, mean, var, weight, eps,
        batch_statistics=batch_statistics, backend=backend)
    np.testing.assert_allclose(grad_input, finite_difference(loss_of_x, x),
                               rtol=1e-6, atol=1e-8)
    normalised = reference_forward(x, mean, var, None, None, eps)
    np.testing.assert_allclose(
        grad_weight, np.sum(upstream * normalised, axis=(0, 2, 3)),
        rtol=1e-9)
    np.testing.assert_allclose(grad_bias, upstream.sum(axis=(0, 2, 3)),
                               rtol=1e-9)
    if affine:
        def loss_of_weight(w):
            return float(np.sum(upstream * reference_forward(
                x, mean, var, w, bias, eps)))
        np.testing.assert_allclose(
            grad_weight, finite_difference(loss_of_weight, weight),
            rtol=1e-6)


@pytest.mark.parametrize("shape", [SHAPES["nchw"], SHAPES["ncl"],
                                   SHAPES["large_batch"]],
                         ids=["nchw", "ncl", "large_batch"])
def test_backward_matches_naive(compiled_backend, dtype, shape, random_array,
                                assert_close, naive_cache):
    x, weight, bias = case(random_array, shape, dtype, "naive")
    grad = random_array(shape, dtype, "grad")
    mean, var = reference_statistics(x)
    before = (x.copy(), grad.copy())
    for batch_statistics in (True, False):
        expected = naive_cache(
            ("batch_norm_backward", shape, str(dtype), batch_statistics),
            lambda: F.batch_norm_backward(
                grad, x, mean, var, weight, batch_statistics=batch_statistics,
                backend="naive"))
        actual = F.batch_norm_backward(grad, x, mean, var, weight,
                                       batch_statistics=batch_statistics,
                                       backend=compiled_backend)
        for got, want, what in zip(actual, expected,
                                   ("grad_input", "grad_weight", "grad_bias")):
            assert got.dtype == dtype
            assert_close(got, want, dtype=dtype, what=what)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(grad, before[1])


def test_matches_pytorch(backend, torch):
    rng = np.random.default_rng(11)
    shape = (4, 3, 6, 5)
    x = rng.standard_normal(shape) * 3 + 1
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    upstream = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True,
                                        eps=1e-5)
    ty.backward(torch.tensor(upstream))
    mean, var = F.batch_norm_statistics(x, backend=backend)
    y = F.batch_norm(x, mean, var, weight, bias, backend=backend)
    grads = F.batch_norm_backward(upstream, x, mean, var, weight,
                                  backend=backend)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    for got, want in zip(grads, (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-11)
    # eval mode: the running statistics are constants
    running_mean, running_var = rng.standard_normal(3), rng.random(3) + 0.5
    tx.grad = None
    ty = torch.nn.functional.batch_norm(
        tx, torch.tensor(running_mean), torch.tensor(running_var), tw, tb,
        training=False)
    ty.backward(torch.tensor(upstream))
    y = F.batch_norm(x, running_mean, running_var, weight, bias,
                     backend=backend)
    grad_input, _, _ = F.batch_norm_backward(
        upstream, x, running_mean, running_var, weight,
        batch_statistics=False, backend=backend)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(grad_input, tx.grad.numpy(), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["cython", "numba"])
def test_same_bits_for_any_thread_count(name, restore_num_threads):
    if not fastconv.backends.is_available(name):
        pytest.skip(f"{name} is not available here")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 8, 24, 24)).astype(np.float32) + 3
    grad = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    # every count this machine allows (2 on the development machine)
    for threads in range(1, fastconv._threads.default_num_threads() + 1):
        fastconv.set_num_threads(threads)
        y, mean, var = F.batch_norm_training(x, backend=name)
        grads = F.batch_norm_backward(grad, x, mean, var, backend=name)
        results.append((y, mean, var) + grads)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_empty_batch_normalises_to_empty(backend):
    x = np.zeros((0, 3, 4, 4), np.float32)
    y = F.batch_norm(x, np.zeros(3), np.ones(3), backend=backend)
    assert y.shape == x.shape and y.dtype == np.float32
    grads = F.batch_norm_backward(x, x, np.zeros(3), np.ones(3),
                                  batch_statistics=False, backend=backend)
    assert grads[0].shape == x.shape
    np.testing.assert_array_equal(grads[1], np.zeros(3, np.float32))


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.batch_norm_statistics(x[0, 0, 0]), ValueError,
     "at least 2-D"),
    (lambda x: F.batch_norm_statistics(x[:0]), ValueError,
     "at least one value per channel"),
    (lambda x: F.batch_norm_statistics(x.tolist()), TypeError,
     "numpy.ndarray"),
    (lambda x: F.batch_norm_training(x[:, :, :0]), ValueError,
     "at least one value per channel"),
    (lambda x: F.batch_norm_training(x, np.ones(2)), ValueError,
     r"weight must have shape \(3,\)"),
    (lambda x: F.batch_norm_training(x, eps=float("nan")), ValueError,
     "eps must be finite"),
    (lambda x: F.batch_norm_statistics(x.astype(np.int32)), TypeError,
     "float32 or float64"),
    (lambda x: F.batch_norm(x, np.zeros(2), np.ones(3)), ValueError,
     r"mean must have shape \(3,\)"),
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones((3, 1))), ValueError,
     "var must be 1-D"),
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), np.ones(4)),
     ValueError, r"weight must have shape \(3,\)"),
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), None, np.ones(2)),
     ValueError, r"bias must have shape \(3,\)"),
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), eps=-1.0),
     ValueError, "eps must be finite and >= 0"),
    (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), eps="small"),
     TypeError, "eps must be a real number"),
    (lambda x: F.batch_norm(x, None, np.ones(3)), TypeError,
     "mean must be a numpy.ndarray"),
    (lambda x: F.batch_norm_backward(x[:, :, :2], x, np.zeros(3),
                                     np.ones(3)), ValueError,
     "grad_output must have x's shape"),
    (lambda x: F.batch_norm_backward(x.astype(np.float64), x, np.zeros(3),
                                     np.ones(3)), TypeError,
     "must share a dtype"),
    (lambda x: F.batch_norm_backward(x[:0], x[:0], np.zeros(3), np.ones(3)),
     ValueError, "at least one value per channel"),
    (lambda x: F.relu(x.astype(np.int64)), TypeError, "float32 or float64"),
    (lambda x: F.relu_backward(x[:1], x), ValueError,
     "grad_output must have output's shape"),
    (lambda x: F.relu_backward(x, x.astype(np.float64)), TypeError,
     "must share a dtype"),
])
def test_bad_arguments_raise(backend, call, error, message):
    x = np.ones((2, 3, 4, 4), np.float32)
    with fastconv.use_backend(backend), pytest.raises(error, match=message):
        call(x)


# ---------------------------------------------------------------------- relu

@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (5,), (), (0, 4)],
                         ids=["nchw", "1d", "0d", "empty"])
def test_relu_forward_and_backward(backend, dtype, shape, random_array):
    x = random_array(shape, dtype, "relu", shape)
    grad = random_array(shape, dtype, "relu_grad", shape)
    before = x.copy()
    y = F.relu(x, backend=backend)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, np.where(x < 0, 0, x))
    grad_input = F.relu_backward(grad, y, backend=backend)
    assert grad_input.shape == x.shape and grad_input.dtype == dtype
    np.testing.assert_array_equal(grad_input, np.where(x <= 0, 0, grad))
    np.testing.assert_array_equal(x, before)


def test_relu_special_values_as_pytorch(backend, torch):
    values = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, -1.5, 2.5],
                      np.float32)
    grad = np.array([1, 2, 3, 4, 5, np.nan, np.nan], np.float32)
    tx = torch.tensor(values, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.tensor(grad))
    y = F.relu(values, backend=backend)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    # a NaN gradient where the output is clipped gives 0, and a NaN output
    # passes its gradient, as in PyTorch
    np.testing.assert_array_equal(F.relu_backward(grad, y, backend=backend),
                                  tx.grad.numpy())


def test_relu_non_contiguous_input(backend):
    x = np.arange(-24, 24, dtype=np.float64).reshape(4, 12)[:, ::3]
    np.testing.assert_array_equal(F.relu(x, backend=backend),
                                  np.maximum(x, 0))


# ------------------------------------------------ batch norm + ReLU, fused

@pytest.mark.parametrize("shape", [SHAPES["nchw"], SHAPES["ragged_rows"],
                                   SHAPES["large_batch"]],
                         ids=["nchw", "ragged_rows", "large_batch"])
def test_fused_relu_is_batch_norm_then_relu(backend, dtype, shape,
                                            random_array, assert_close):
    """relu=True (fused on cython, composed elsewhere) against the naive
    batch norm followed by the naive ReLU, forward and backward, with the
    batch's statistics and with given ones; the inputs untouched."""
    x, weight, bias = case(random_array, shape, dtype, "fused")
    grad = random_array(shape, dtype, "fused-grad")
    before = (x.copy(), grad.copy(), weight.copy(), bias.copy())
    y, mean, var = F.batch_norm_training(x, weight, bias, relu=True,
                                         backend=backend)
    plain, want_mean, want_var = F.batch_norm_training(x, weight, bias,
                                                       backend="naive")
    want = F.relu(plain, backend="naive")
    assert y.dtype == dtype
    assert_close(y, want, dtype=dtype, what="y")
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-12)
    assert (y >= 0).all()
    for batch_statistics in (True, False):
        got = F.batch_norm_backward(
            grad, x, mean, var, weight, relu=True, bias=bias,
            batch_statistics=batch_statistics, backend=backend)
        masked = F.relu_backward(grad, F.relu(F.batch_norm(
            x, mean, var, weight, bias, backend="naive"), backend="naive"),
            backend="naive")
        expected = F.batch_norm_backward(
            masked, x, mean, var, weight, batch_statistics=batch_statistics,
            backend="naive")
        for actual, wanted, what in zip(got, expected, (
                "grad_input", "grad_weight", "grad_bias")):
            assert_close(actual, wanted, dtype=dtype, what=what)
    assert_close(F.batch_norm(x, mean, var, weight, bias, relu=True,
                              backend=backend),
                 F.relu(F.batch_norm(x, mean, var, weight, bias,
                                     backend="naive"), backend="naive"),
                 dtype=dtype, what="eval y")
    for array, copy in zip((x, grad, weight, bias), before):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_fused_relu_backward_matches_finite_differences(
        backend, affine, random_array, finite_difference):
    shape = (9, 2, 3, 2)   # 9 images: the cython backend's image runs
    x, weight, bias = case(random_array, shape, np.float64, "fused-fd")
    upstream = random_array(shape, np.float64, "fused-upstream")
    if not affine:
        weight = bias = None
    eps = 1e-3
    mean, var = F.batch_norm_statistics(x, backend=backend)

    def loss_of_x(point):
        m, v = reference_statistics(point)
        return float(np.sum(upstream * np.maximum(
            reference_forward(point, m, v, weight, bias, eps), 0)))

    grad_input, _, grad_bias = F.batch_norm_backward(
        upstream, x, mean, var, weight, eps, relu=True, bias=bias,
        backend=backend)
    np.testing.assert_allclose(grad_input, finite_difference(loss_of_x, x),
                               rtol=1e-6, atol=1e-8)
    positive = reference_forward(x, mean, var, weight, bias, eps) > 0
    np.testing.assert_allclose(
        grad_bias, (upstream * positive).sum(axis=(0, 2, 3)), rtol=1e-9)


def test_fused_relu_keeps_nan_as_relu_does(backend):
    x = np.array([[[1.0, np.nan, -3.0, 2.0]], [[0.5, -1.0, 4.0, 0.0]]],
                 np.float32)
    y, mean, var = F.batch_norm_training(x, relu=True, backend=backend)
    plain, _, _ = F.batch_norm_training(x, backend="naive")
    np.testing.assert_array_equal(y, F.relu(plain, backend="naive"))
    assert np.isnan(y).all()   # a NaN in the channel makes its mean NaN


def test_batch_norm_relu_layer_is_batch_norm_then_relu(random_array):
    """nn.BatchNormReLU2d: BatchNorm2d + ReLU in one layer, the same
    state_dict keys, outputs, gradients and running statistics, in
    training and in eval mode."""
    from fastconv import nn

    shape = (9, 3, 5, 4)
    x = random_array(shape, np.float32, "layer-x")
    grad = random_array(shape, np.float32, "layer-grad")
    fused = nn.BatchNormReLU2d(3)
    pair_bn, pair_relu = nn.BatchNorm2d(3), nn.ReLU()
    for layer in (fused, pair_bn):
        layer.weight.data[...] = random_array((3,), np.float32, "layer-w")
        layer.bias.data[...] = random_array((3,), np.float32, "layer-b")
    assert list(fused.state_dict()) == list(pair_bn.state_dict())
    for training in (True, False):
        fused.train(training)
        pair_bn.train(training)
        y = fused(x)
        want = pair_relu(pair_bn(x))
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
        got_grad = fused.backward(grad)
        want_grad = pair_bn.backward(pair_relu.backward(grad))
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5,
                                   atol=1e-5)
    np.testing.assert_allclose(fused.weight.grad, pair_bn.weight.grad,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.bias.grad, pair_bn.bias.grad,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.running_mean, pair_bn.running_mean)
    np.testing.assert_allclose(fused.running_var, pair_bn.running_var)
