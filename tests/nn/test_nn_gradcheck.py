"""Whole-network backward passes against central finite differences (float64).

Every gradient the modules compute by hand (parameters and input) is compared
with (f(a + eps) - f(a - eps)) / (2 eps) of the scalar loss, at a seeded
random sample of entries per array so the check stays fast. Dropout is
re-seeded before every forward pass so that each evaluation uses the same
mask; batch norm runs in training mode (batch statistics).
"""

import numpy as np
import pytest

from fastconv import nn
from fastconv.models import BasicBlock, ResNet, SmallCNN

EPS = 1e-6
ENTRIES_PER_ARRAY = 12


def sampled_finite_difference(loss_of, array, rng, count=ENTRIES_PER_ARRAY):
    """(flat indices, central differences) of ``loss_of()`` w.r.t. ``array``
    (perturbed in place and restored) at up to ``count`` random entries."""
    flat = array.reshape(-1)
    indices = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    estimates = []
    for index in indices:
        original = flat[index]
        flat[index] = original + EPS
        above = loss_of()
        flat[index] = original - EPS
        below = loss_of()
        flat[index] = original
        estimates.append((above - below) / (2 * EPS))
    return indices, np.array(estimates)


def check_network(model, x, loss_of_output, rng):
    """Compare model.backward's parameter and input gradients with finite
    differences of ``loss_of_output(model(x))``."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]

    def loss_and_grad(compute_grad=False):
        for dropout in dropouts:
            dropout.manual_seed(1234)
        output = model(x)
        loss, grad_output = loss_of_output(output)
        if compute_grad:
            model.zero_grad()
            return loss, model.backward(grad_output)
        return loss

    _, grad_input = loss_and_grad(compute_grad=True)
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    checked = 0
    for name, parameter in model.named_parameters():
        indices, numeric = sampled_finite_difference(
            loss_and_grad, parameter.data, rng)
        np.testing.assert_allclose(
            analytic[name].reshape(-1)[indices], numeric, rtol=1e-5,
            atol=1e-7, err_msg=f"gradient of {name}")
        checked += 1
    assert checked == len(analytic)
    indices, numeric = sampled_finite_difference(loss_and_grad, x, rng,
                                                 count=30)
    np.testing.assert_allclose(grad_input.reshape(-1)[indices], numeric,
                               rtol=1e-5, atol=1e-7, err_msg="input gradient")


def cross_entropy_of(targets):
    loss_fn = nn.CrossEntropyLoss()

    def loss_of_output(logits):
        return loss_fn(logits, targets), loss_fn.backward()
    return loss_of_output


def projection_of(weights):
    """loss = sum(output * weights): every output element gets a distinct
    gradient."""
    def loss_of_output(output):
        return float(np.sum(output * weights)), weights.copy()
    return loss_of_output


@pytest.mark.parametrize("hidden", [0, 5])
def test_small_cnn_gradients(hidden):
    rng = np.random.default_rng(10 + hidden)
    model = SmallCNN(in_channels=2, num_classes=3, image_size=8,
                     channels=(3, 4), hidden=hidden, dropout=0.3,
                     generator=rng).double()
    model.conv1.need_input_grad = True
    x = rng.standard_normal((3, 2, 8, 8))
    check_network(model, x, cross_entropy_of(np.array([0, 2, 1])), rng)


def test_small_cnn_first_layer_skips_input_gradient():
    model = SmallCNN(image_size=8, channels=(2, 2))
    model(np.zeros((1, 1, 8, 8), np.float32))
    assert model.backward(np.ones((1, 10), np.float32)) is None
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("stride, in_planes, planes", [(2, 2, 3), (1, 3, 3)])
def test_basic_block_gradients(stride, in_planes, planes):
    rng = np.random.default_rng(stride)
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False,
                      generator=rng),
            nn.BatchNorm2d(planes))
    block = BasicBlock(in_planes, planes, stride, downsample,
                       generator=rng).double()
    # Non-trivial BN affine parameters, so their gradients are exercised.
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = rng.uniform(0.5, 1.5, module.num_features)
            module.bias.data = rng.uniform(-0.5, 0.5, module.num_features)
    x = rng.standard_normal((3, in_planes, 6, 6))
    out_size = 6 // stride
    weights = rng.standard_normal((3, planes, out_size, out_size))
    check_network(block, x, projection_of(weights), rng)


def test_tiny_resnet_gradients_in_training_mode():
    rng = np.random.default_rng(3)
    model = ResNet(8, in_channels=1, num_classes=3, widths=(2, 3, 4),
                   generator=rng).double()
    model.conv1.need_input_grad = True
    x = rng.standard_normal((4, 1, 8, 8))
    check_network(model, x, cross_entropy_of(np.array([0, 1, 2, 1])), rng)


def test_batch_norm_eval_mode_gradients():
    rng = np.random.default_rng(4)
    layer = nn.BatchNorm2d(3).double()
    layer.running_mean = rng.standard_normal(3)
    layer.running_var = rng.uniform(0.5, 2.0, 3)
    layer.weight.data = rng.uniform(0.5, 1.5, 3)
    layer.eval()
    x = rng.standard_normal((2, 3, 3, 3))
    check_network(layer, x, projection_of(rng.standard_normal(x.shape)), rng)


def test_avg_pool_and_flatten_gradients():
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, generator=rng), nn.ReLU(),
                          nn.AvgPool2d(2, stride=1, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 3, generator=rng)).double()
    x = rng.standard_normal((2, 2, 6, 6))
    check_network(model, x, cross_entropy_of(np.array([2, 0])), rng)
