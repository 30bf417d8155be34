"""BatchNorm2d in float32 (the dtype the fast passes run in) against
PyTorch in float64, including inputs whose mean dwarfs their spread, and
the saved-value semantics of the in-place passes."""

import copy

import numpy as np
import pytest

from fastconv import nn

torch = pytest.importorskip("torch")


def torch_float64_reference(x, grad, mine, training):
    layer = torch.nn.BatchNorm2d(x.shape[1]).double()
    with torch.no_grad():
        for name, value in mine.state_dict().items():
            getattr(layer, name).copy_(torch.from_numpy(
                np.asarray(value).astype(np.float64)))
    layer.train(training)
    x_torch = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    y = layer(x_torch)
    y.backward(torch.from_numpy(grad.astype(np.float64)))
    return (y.detach().numpy(), x_torch.grad.numpy(),
            layer.weight.grad.numpy(), layer.bias.grad.numpy(),
            layer.running_mean.numpy(), layer.running_var.numpy())


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("offset, spread", [(0.0, 1.0), (30.0, 0.5)])
@pytest.mark.parametrize("training", [True, False])
def test_float32_batch_norm_matches_float64_pytorch(offset, spread, training):
    rng = np.random.default_rng(7)
    shape = (8, 5, 6, 7)
    x = (rng.standard_normal(shape) * spread + offset
         + rng.uniform(-3, 3, (1, 5, 1, 1))).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    layer = nn.BatchNorm2d(5)
    layer.weight.data = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    layer.bias.data = rng.standard_normal(5).astype(np.float32)
    # Eval mode normalises with running statistics near the batch's own.
    layer.running_mean = (x.mean(axis=(0, 2, 3)) + 0.1).astype(np.float32)
    layer.running_var = (x.var(axis=(0, 2, 3)) * 1.2).astype(np.float32)
    reference_state = copy.deepcopy(layer)
    x_before = x.copy()
    layer.train(training)
    y = layer(x)
    grad_x = layer.backward(grad)
    np.testing.assert_array_equal(x, x_before)  # the input is not mutated
    assert y.dtype == grad_x.dtype == np.float32
    expected = torch_float64_reference(x, grad, reference_state, training)
    # float32 rounding of x and of the sums of grad * x grows with
    # |x| / spread (up to 66 here); measured: 7.6e-6 for the weight's
    # gradient at 66 (PyTorch's float32 layer: 7e-7), 1e-7 at 1.
    bound = 1e-6 * max(1.0, (offset + 3) / spread / 3)
    for actual, reference in zip(
            (y, grad_x, layer.weight.grad, layer.bias.grad,
             layer.running_mean, layer.running_var), expected):
        assert relative_error(actual, reference) < bound


def test_two_forwards_then_two_backwards_match_separate_calls():
    rng = np.random.default_rng(8)
    first, second = (rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
                     for _ in range(2))
    grad_first, grad_second = (rng.standard_normal(first.shape).astype(
        np.float32) for _ in range(2))
    shared = nn.BatchNorm2d(3)
    shared(first)
    shared(second)
    grad_x_second = shared.backward(grad_second)
    grad_x_first = shared.backward(grad_first)
    for x, grad, grad_x in ((first, grad_first, grad_x_first),
                            (second, grad_second, grad_x_second)):
        alone = nn.BatchNorm2d(3)
        alone(x)
        np.testing.assert_allclose(grad_x, alone.backward(grad), rtol=1e-6,
                                   atol=1e-6)
    np.testing.assert_allclose(
        shared.weight.grad,
        _weight_grad(first, grad_first) + _weight_grad(second, grad_second),
        rtol=1e-5, atol=1e-5)


def _weight_grad(x, grad):
    layer = nn.BatchNorm2d(x.shape[1])
    layer(x)
    layer.backward(grad)
    return layer.weight.grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_average_pooling_matches_pytorch(dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    grad = rng.standard_normal((3, 4, 1, 1)).astype(dtype)
    layer = nn.AdaptiveAvgPool2d(1)
    y = layer(x)
    grad_x = layer.backward(grad)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    y_torch = torch.nn.AdaptiveAvgPool2d(1)(x_torch)
    y_torch.backward(torch.from_numpy(grad))
    assert y.dtype == grad_x.dtype == dtype
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=tolerance,
                               atol=tolerance)
    np.testing.assert_allclose(grad_x, x_torch.grad.numpy(), rtol=tolerance,
                               atol=tolerance)
    layer(x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        layer.backward(np.ones((3, 4, 2, 1), dtype))
