"""Optimizer rules and schedules on hand-checked values (no PyTorch needed;
tests/nn/test_nn_torch_parity.py compares with PyTorch when installed)."""

import math

import numpy as np
import pytest

from fastconv import nn, optim


def parameter(values, grad):
    p = nn.Parameter(np.array(values, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_sgd_plain_momentum_and_weight_decay():
    p = parameter([1.0, -2.0], [0.5, 0.5])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -2.05])

    p = parameter([1.0], [1.0])
    sgd = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    sgd.step()  # g = 1 + 0.5 * 1 = 1.5; buf = 1.5
    np.testing.assert_allclose(p.data, [0.85])
    p.grad = np.array([1.0])
    sgd.step()  # g = 1 + 0.425 = 1.425; buf = 0.9 * 1.5 + 1.425
    np.testing.assert_allclose(p.data, [0.85 - 0.1 * (1.35 + 1.425)])


def test_adam_first_step_is_lr_times_sign():
    p = parameter([0.0, 0.0, 0.0], [3.0, -0.001, 0.0])
    optim.Adam([p], lr=0.01).step()
    # bias-corrected m / sqrt(v) = g / |g| on the first step
    np.testing.assert_allclose(p.data, [-0.01, 0.01, 0.0], rtol=1e-5)


def test_adamw_decays_weights_without_gradient_scaling():
    p = parameter([2.0], [0.0])
    optim.AdamW([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(p.data, [2.0 * (1 - 0.05)])
    q = parameter([2.0], [0.0])
    optim.Adam([q], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(q.data, [2.0 - 0.1], rtol=1e-6)  # sign(wd*p)


def test_parameters_without_grad_are_skipped_and_dtype_kept():
    moving = nn.Parameter(np.ones(2, np.float32))
    moving.grad = np.ones(2, np.float32)
    still = nn.Parameter(np.ones(2, np.float32))
    adam = optim.Adam([moving, still], lr=0.1)
    adam.step()
    np.testing.assert_array_equal(still.data, [1, 1])
    assert moving.data.dtype == np.float32 and moving.data[0] < 1
    adam.zero_grad()
    assert moving.grad is None


def test_parameter_groups_have_their_own_lr():
    a, b = parameter([1.0], [1.0]), parameter([1.0], [1.0])
    sgd = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    sgd.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.5])


def test_optimizer_errors():
    p = parameter([1.0], [1.0])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="Parameter"):
        optim.Adam([np.zeros(3)])


def test_cosine_and_step_schedules():
    sgd = optim.SGD([parameter([0.0], [0.0])], lr=1.0)
    cosine = optim.CosineAnnealingLR(sgd, T_max=4)
    seen = [cosine.get_last_lr()[0]]
    for _ in range(4):
        cosine.step()
        seen.append(sgd.param_groups[0]["lr"])
    np.testing.assert_allclose(seen, [1.0, (1 + math.cos(math.pi / 4)) / 2,
                                      0.5, (1 - math.cos(math.pi / 4)) / 2,
                                      0.0], atol=1e-15)
    sgd = optim.SGD([parameter([0.0], [0.0])], lr=1.0)
    step = optim.make_scheduler("step", sgd, total_steps=9)
    seen = []
    for _ in range(9):
        seen.append(step.get_last_lr()[0])
        step.step()
    np.testing.assert_allclose(seen, [1] * 3 + [0.1] * 3 + [0.01] * 3)
    constant = optim.make_scheduler("none", sgd, total_steps=5)
    constant.step()
    assert constant.get_last_lr() == [1.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.make_scheduler("linear", sgd, 5)
