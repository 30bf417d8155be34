"""ConvTranspose2d, Conv1d, MaxPool1d, AvgPool1d against PyTorch; modules
called several times before backward (the saved-value stack); eval mode's
flat memory; layer input validation.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import nn

RTOL = 1e-10


def _to_torch_state(torch, state):
    return {key: torch.from_numpy(np.array(value)) for key, value in
            state.items()}


def _new_layer_pairs(tnn):
    """(fastconv layer, PyTorch layer, input shape) with the same arguments."""
    return [
        (nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                            output_padding=(1, 0), groups=2, dilation=(1, 2)),
         tnn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                             output_padding=(1, 0), groups=2,
                             dilation=(1, 2)), (2, 4, 5, 4)),
        (nn.ConvTranspose2d(3, 2, 4, stride=2, bias=False),
         tnn.ConvTranspose2d(3, 2, 4, stride=2, bias=False), (1, 3, 3, 3)),
        (nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2),
         tnn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9)),
        (nn.Conv1d(4, 3, 4, padding="same", dilation=2, bias=False),
         tnn.Conv1d(4, 3, 4, padding="same", dilation=2, bias=False),
         (2, 4, 9)),
        (nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True),
         tnn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 8)),
        (nn.AvgPool1d(2, padding=1, count_include_pad=False),
         tnn.AvgPool1d(2, padding=1, count_include_pad=False), (2, 3, 7)),
    ]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_new_layers_match_pytorch(torch):
    rng = np.random.default_rng(11)
    for mine, theirs, shape in _new_layer_pairs(torch.nn):
        what = type(mine).__name__
        mine.double()
        theirs.double()
        assert list(mine.state_dict()) == list(theirs.state_dict()), what
        for key, value in theirs.state_dict().items():
            assert mine.state_dict()[key].shape == tuple(value.shape), key
        theirs.load_state_dict(_to_torch_state(torch, mine.state_dict()))
        x = rng.standard_normal(shape)
        y = mine(x)
        x_torch = torch.from_numpy(x).requires_grad_(True)
        y_torch = theirs(x_torch)
        grad = rng.standard_normal(y.shape)
        dx = mine.backward(grad)
        y_torch.backward(torch.from_numpy(grad))
        np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=RTOL,
                                   atol=1e-12, err_msg=what)
        np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=RTOL,
                                   atol=1e-12, err_msg=what)
        for name, parameter in mine.named_parameters():
            np.testing.assert_allclose(
                parameter.grad, dict(theirs.named_parameters())[name].grad,
                rtol=RTOL, atol=1e-12, err_msg=f"{what}.{name}")


def test_pytorch_weights_load_into_new_layers(torch):
    """torch -> fastconv: a PyTorch state_dict loads and gives PyTorch's
    output (the weight layouts agree)."""
    rng = np.random.default_rng(12)
    for mine, theirs, shape in _new_layer_pairs(torch.nn):
        mine.double()
        theirs.double()
        mine.load_state_dict({key: value.detach().numpy() for key, value in
                              theirs.state_dict().items()})
        x = rng.standard_normal(shape)
        np.testing.assert_allclose(
            mine(x), theirs(torch.from_numpy(x)).detach().numpy(),
            rtol=RTOL, atol=1e-12, err_msg=type(mine).__name__)


def test_initialisation_bounds_follow_pytorch():
    """fan_in of a transposed weight (C_in, C_out // groups, R, S) is
    C_out // groups * R * S, as PyTorch computes it."""
    layer = nn.ConvTranspose2d(8, 2, 3, generator=0)
    bound = 1 / np.sqrt(2 * 9)
    assert layer.weight.shape == (8, 2, 3, 3)
    assert np.abs(layer.weight.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.8 * bound
    assert nn.Conv1d(3, 5, 4).weight.shape == (5, 3, 4)


# ------------------------------------------------- several forwards, then backward

def _shared_network(module_cls=nn.Sequential):
    """A conv layer used twice in one network (the same Parameter)."""
    conv = nn.Conv2d(2, 2, 3, padding=1, generator=1)
    network = module_cls(conv, nn.ReLU(), conv, nn.MaxPool2d(2))
    return conv, network.double()


def test_shared_layer_gradients_match_pytorch(torch):
    conv, network = _shared_network()
    theirs = torch.nn.Conv2d(2, 2, 3, padding=1).double()
    theirs.load_state_dict(_to_torch_state(torch, conv.state_dict()))
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 6, 6))
    y = network(x)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    y_torch = torch.nn.functional.max_pool2d(
        theirs(torch.relu(theirs(x_torch))), 2)
    grad = rng.standard_normal(y.shape)
    dx = network.backward(grad)
    y_torch.backward(torch.from_numpy(grad))
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=RTOL,
                               atol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, theirs.weight.grad.numpy(),
                               rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, theirs.bias.grad.numpy(),
                               rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("layer", [
    lambda: nn.Conv2d(2, 3, 3, generator=2),
    lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, generator=2),
    lambda: nn.MaxPool2d(2),
    lambda: nn.AvgPool2d(2),
    lambda: nn.ReLU(),
    lambda: nn.BatchNorm2d(2),
    lambda: nn.Dropout(0.5, generator=3),
    lambda: nn.Flatten(),
], ids=["conv", "conv_transpose", "max_pool", "avg_pool", "relu",
        "batch_norm", "dropout", "flatten"])
def test_backwards_consume_forwards_last_in_first_out(layer):
    """Two forwards, two backwards in reverse: each backward gives the
    gradient of its own forward, as if each ran alone."""
    rng = np.random.default_rng(14)
    x1, x2 = rng.standard_normal((2, 2, 2, 6, 6))
    shared = layer().double()
    alone = layer().double()
    alone.load_state_dict(shared.state_dict())
    if isinstance(shared, nn.Dropout):
        shared.manual_seed(5)
        alone.manual_seed(5)
    y1 = shared(x1)
    y2 = shared(x2)
    g1, g2 = rng.standard_normal(y1.shape), rng.standard_normal(y2.shape)
    dx2 = shared.backward(g2)
    dx1 = shared.backward(g1)
    np.testing.assert_array_equal(alone(x1), y1)
    np.testing.assert_allclose(alone.backward(g1), dx1, rtol=1e-12)
    np.testing.assert_array_equal(alone(x2), y2)
    np.testing.assert_allclose(alone.backward(g2), dx2, rtol=1e-12)
    for (name, mine), (_, single) in zip(shared.named_parameters(),
                                         alone.named_parameters()):
        np.testing.assert_allclose(mine.grad, single.grad, rtol=1e-12,
                                   err_msg=name)
    with pytest.raises(RuntimeError, match="nothing saved"):
        shared.backward(g1)


def test_backward_without_forward_is_a_clear_error():
    for layer in (nn.Conv1d(1, 1, 1), nn.MaxPool1d(2), nn.AvgPool1d(2),
                  nn.ConvTranspose2d(1, 1, 1), nn.CrossEntropyLoss()):
        with pytest.raises(RuntimeError, match=r"backward called before "
                                               r"forward.*nothing saved"):
            layer.backward(np.zeros((1, 1, 1)))


def test_eval_mode_keeps_only_the_latest_forward():
    """Memory stays flat in an inference loop: each module keeps one call's
    values (a layer used twice in one forward keeps only its second: the
    backward of a network that shares layers needs training mode)."""
    _, network = _shared_network()
    network.eval()
    rng = np.random.default_rng(15)
    for _ in range(5):
        network(rng.standard_normal((1, 2, 6, 6)))
    for module in network.modules():
        assert len(module.__dict__["_saved_for_backward"]) <= 1


def test_backward_right_after_an_eval_forward(torch):
    conv = nn.Conv2d(2, 3, 3, generator=6)
    network = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2)).double().eval()
    theirs = torch.nn.Conv2d(2, 3, 3).double()
    theirs.load_state_dict(_to_torch_state(torch, conv.state_dict()))
    rng = np.random.default_rng(17)
    network(rng.standard_normal((1, 2, 6, 6)))
    x = rng.standard_normal((1, 2, 6, 6))
    y = network(x)
    dx = network.backward(np.ones_like(y))
    x_torch = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.avg_pool2d(torch.relu(theirs(x_torch)), 2).sum(
    ).backward()
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=RTOL,
                               atol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, theirs.weight.grad.numpy(),
                               rtol=RTOL, atol=1e-12)


def test_eval_mode_backward_of_the_latest_forward_is_its_gradient():
    layer = nn.Conv1d(2, 2, 3, generator=4).double().eval()
    rng = np.random.default_rng(16)
    x = rng.standard_normal((1, 2, 7))
    layer(rng.standard_normal((1, 2, 7)))
    y = layer(x)
    grad = rng.standard_normal(y.shape)
    dx = layer.backward(grad)
    expected, _, _ = fastconv.conv1d_backward(grad, x, layer.weight.data)
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


def test_training_forwards_stack_until_consumed():
    layer = nn.ReLU()
    for _ in range(3):
        layer(np.ones((2, 2)))
    assert len(layer.__dict__["_saved_for_backward"]) == 3
    for _ in range(3):
        layer.backward(np.ones((2, 2)))
    assert not layer.__dict__["_saved_for_backward"]


# ----------------------------------------------------------- input checks

def _every_layer():
    return [
        nn.Conv2d(1, 1, 1), nn.ConvTranspose2d(1, 1, 1), nn.Conv1d(1, 1, 1),
        nn.Linear(1, 1), nn.ReLU(), nn.Flatten(), nn.MaxPool2d(1),
        nn.AvgPool2d(1), nn.MaxPool1d(1), nn.AvgPool1d(1),
        nn.AdaptiveAvgPool2d(1), nn.Dropout(0.5), nn.BatchNorm2d(1),
    ]


def test_layers_refuse_lists_and_integer_arrays():
    for layer in _every_layer():
        what = type(layer).__name__
        with pytest.raises(TypeError, match=r"numpy.ndarray.*list"):
            layer([[[[1.0]]]])
        with pytest.raises(TypeError, match=r"float32 or float64.*int64"):
            layer(np.ones((1, 1, 1, 1), dtype=np.int64))
        assert not layer.__dict__["_saved_for_backward"], what


def test_layers_refuse_torch_tensors(torch):
    for layer in _every_layer():
        with pytest.raises(TypeError, match=r"numpy.ndarray.*torch.*Tensor"):
            layer(torch.ones((1, 1, 1, 1)))


def test_backward_refuses_a_list_gradient():
    layer = nn.Conv2d(1, 1, 1)
    layer(np.ones((1, 1, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=r"grad_output must be a numpy"):
        layer.backward([[[[1.0, 1.0], [1.0, 1.0]]]])


def test_float_input_is_cast_to_the_parameters_dtype():
    """The documented exception: a float64 input into a float32 layer."""
    layer = nn.Conv1d(1, 1, 1)
    assert layer(np.ones((1, 1, 3))).dtype == np.float32


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
     ValueError, r"output_padding must be smaller"),
    (lambda: nn.ConvTranspose2d(3, 2, 3, groups=2), ValueError, r"groups"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect"),
     ValueError, r"padding_mode"),
    (lambda: nn.Conv1d(2, 2, (3, 3)), ValueError,
     r"kernel_size must be an int or a 1-tuple"),
    (lambda: nn.Conv1d(2, 2, 3, padding="full"), ValueError, r"padding"),
    (lambda: nn.Conv1d(2, 2, 3, stride=2, padding="same"), ValueError,
     r"stride 1"),
    (lambda: nn.Conv1d(2**31, 2, 3), ValueError, r"in_channels"),
])
def test_new_layer_constructor_errors(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_asymmetric_padding_in_conv_layers():
    layer = nn.Conv2d(1, 1, 3, padding=((1, 0), (0, 2)))
    assert layer.padding == ((1, 0), (0, 2))
    assert layer(np.ones((1, 1, 4, 4), np.float32)).shape == (1, 1, 3, 4)
    assert nn.Conv2d(1, 1, 3, padding=((1, 1), (2, 2))).padding == (1, 2)
    assert nn.Conv1d(1, 1, 3, padding=(2, 0))(
        np.ones((1, 1, 4), np.float32)).shape == (1, 1, 4)


def test_import_fastconv_is_enough_for_the_subpackages():
    import subprocess
    import sys

    code = ("import sys, fastconv; "
            "assert 'fastconv.nn' not in sys.modules; "
            "assert 'fastconv.kernels' not in sys.modules; "
            "fastconv.nn.Conv2d; fastconv.optim.SGD; fastconv.models.ResNet; "
            "fastconv.data; fastconv.kernels; "
            "assert 'fastconv.onnx' not in sys.modules; "
            "fastconv.onnx.load; "
            "assert 'onnx' not in sys.modules; "  # the parser loads at load()
            "assert 'nn' in dir(fastconv) and 'onnx' in dir(fastconv)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
