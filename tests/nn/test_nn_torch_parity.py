"""Parity with PyTorch (skipped when it is not installed), in float64.

Weights move both ways through ``state_dict`` (fastconv -> torch and torch
-> fastconv); forward outputs, every parameter gradient and the input
gradient, batch-norm running statistics in train and eval mode, the loss,
every optimizer and the schedules must agree to float64 rounding.
"""

import numpy as np
import pytest

from fastconv import nn, optim
from fastconv.models import ResNet, SmallCNN

torch = pytest.importorskip("torch")
tnn = torch.nn

RTOL = 1e-10


# ------------------------------------------------------- reference networks

class TorchSmallCNN(tnn.Module):
    """SmallCNN written in PyTorch, with the same attribute names."""

    def __init__(self, in_channels, num_classes, image_size, channels,
                 hidden, dropout):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.relu1 = tnn.ReLU()
        self.pool1 = tnn.MaxPool2d(2)
        self.conv2 = tnn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.relu2 = tnn.ReLU()
        self.pool2 = tnn.MaxPool2d(2)
        self.flatten = tnn.Flatten()
        self.dropout = tnn.Dropout(dropout)
        features = channels[1] * (image_size // 4) ** 2
        layers = [self.conv1, self.relu1, self.pool1, self.conv2, self.relu2,
                  self.pool2, self.flatten, self.dropout]
        if hidden:
            self.fc1 = tnn.Linear(features, hidden)
            self.relu3 = tnn.ReLU()
            self.dropout2 = tnn.Dropout(dropout)
            layers += [self.fc1, self.relu3, self.dropout2]
            features = hidden
        self.fc = tnn.Linear(features, num_classes)
        self.sequence = layers + [self.fc]

    def forward(self, x):
        for layer in self.sequence:
            x = layer(x)
        return x


class TorchBasicBlock(tnn.Module):
    """torchvision's BasicBlock (names conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inplanes, planes, 1, stride, bias=False),
                tnn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class TorchResNet(tnn.Module):
    """The CIFAR ResNet with torchvision's names (conv1, bn1, layerK, fc)."""

    def __init__(self, depth, in_channels, num_classes, widths):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = tnn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(widths[0])
        self.relu = tnn.ReLU()
        inplanes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), 1):
            layer = []
            for index in range(blocks):
                layer.append(TorchBasicBlock(inplanes, planes,
                                             stride if index == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{stage}", tnn.Sequential(*layer))
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------- helpers

def to_torch_state(state):
    return {key: torch.from_numpy(np.array(value)) for key, value in
            state.items()}


def to_numpy_state(state):
    return {key: value.detach().numpy() for key, value in state.items()}


def assert_same_state(fastconv_model, torch_model, rtol=RTOL):
    mine = fastconv_model.state_dict()
    theirs = to_numpy_state(torch_model.state_dict())
    assert list(mine) == list(theirs)
    for key in theirs:
        assert mine[key].shape == theirs[key].shape, key
        assert mine[key].dtype == theirs[key].dtype, key
        np.testing.assert_allclose(mine[key], theirs[key], rtol=rtol,
                                   atol=1e-12, err_msg=key)


def forward_backward_both(fastconv_model, torch_model, x, targets):
    """Run loss + backward on both; compare logits, loss, grads."""
    loss_fn = nn.CrossEntropyLoss()
    fastconv_model.zero_grad()
    logits = fastconv_model(x)
    loss = loss_fn(logits, targets)
    grad_input = fastconv_model.backward(loss_fn.backward())

    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    torch_model.zero_grad()
    torch_logits = torch_model(x_torch)
    torch_loss = tnn.functional.cross_entropy(torch_logits,
                                              torch.from_numpy(targets))
    torch_loss.backward()

    np.testing.assert_allclose(logits, torch_logits.detach().numpy(),
                               rtol=RTOL, atol=1e-12, err_msg="logits")
    np.testing.assert_allclose(loss, torch_loss.item(), rtol=RTOL)
    torch_parameters = dict(torch_model.named_parameters())
    names = [name for name, _ in fastconv_model.named_parameters()]
    assert names == list(torch_parameters)
    for name, parameter in fastconv_model.named_parameters():
        np.testing.assert_allclose(
            parameter.grad, torch_parameters[name].grad.numpy(), rtol=1e-9,
            atol=1e-12, err_msg=f"grad of {name}")
    np.testing.assert_allclose(grad_input, x_torch.grad.numpy(), rtol=1e-9,
                               atol=1e-12, err_msg="input gradient")


# ------------------------------------------------------------------ models

@pytest.mark.parametrize("hidden", [0, 6])
def test_small_cnn_matches_pytorch_both_ways(hidden):
    rng = np.random.default_rng(hidden)
    config = dict(in_channels=2, num_classes=4, image_size=8,
                  channels=(3, 5), hidden=hidden, dropout=0.5)
    mine = SmallCNN(**config, generator=rng).double()
    mine.conv1.need_input_grad = True
    torch.manual_seed(hidden)
    theirs = TorchSmallCNN(**config).double()
    x = rng.standard_normal((3, 2, 8, 8))
    targets = np.array([0, 3, 1])
    # Dropout masks come from different generators: compare in eval mode,
    # where dropout is the identity in both (and backward passes through).
    mine.eval()
    theirs.eval()

    theirs.load_state_dict(to_torch_state(mine.state_dict()))  # ours -> torch
    forward_backward_both(mine, theirs, x, targets)

    torch.manual_seed(100 + hidden)
    fresh = TorchSmallCNN(**config).double().eval()
    mine.load_state_dict(to_numpy_state(fresh.state_dict()))  # torch -> ours
    assert_same_state(mine, fresh)
    forward_backward_both(mine, fresh, x, targets)


def test_resnet_state_dict_keys_match_pytorch():
    mine = ResNet(14, in_channels=3, num_classes=10)
    theirs = TorchResNet(14, 3, 10, (16, 32, 64))
    mine_state = mine.state_dict()
    their_state = theirs.state_dict()
    assert list(mine_state) == list(their_state)
    for key, value in their_state.items():
        assert mine_state[key].shape == tuple(value.shape), key
    assert "layer2.0.downsample.0.weight" in mine_state
    assert "layer1.0.downsample.0.weight" not in mine_state
    assert mine_state["layer3.1.bn2.num_batches_tracked"].dtype == np.int64


def test_resnet_train_and_eval_match_pytorch_with_running_stats():
    rng = np.random.default_rng(1)
    mine = ResNet(8, in_channels=1, num_classes=3, widths=(2, 3, 4),
                  generator=rng).double()
    mine.conv1.need_input_grad = True
    torch.manual_seed(1)
    theirs = TorchResNet(8, 1, 3, (2, 3, 4)).double()
    # Random BN affine parameters and running stats, copied torch -> ours.
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    mine.load_state_dict(to_numpy_state(theirs.state_dict()))
    targets = np.array([0, 2, 1, 1])
    for step in range(3):  # training mode: batch stats, running updates
        x = rng.standard_normal((4, 1, 8, 8))
        forward_backward_both(mine, theirs, x, targets)
    assert_same_state(mine, theirs, rtol=1e-9)
    assert mine.state_dict()["bn1.num_batches_tracked"] == 3
    mine.eval()
    theirs.eval()
    forward_backward_both(mine, theirs, rng.standard_normal((2, 1, 8, 8)),
                          np.array([1, 0]))
    assert_same_state(mine, theirs, rtol=1e-9)  # eval changes no statistic
    theirs.load_state_dict(to_torch_state(mine.state_dict()))  # back again


@pytest.mark.parametrize("momentum, affine, track", [
    (0.1, True, True), (None, True, True), (0.3, False, True),
    (0.1, True, False)])
def test_batch_norm_matches_pytorch(momentum, affine, track):
    rng = np.random.default_rng(2)
    mine = nn.BatchNorm2d(3, eps=1e-3, momentum=momentum, affine=affine,
                          track_running_stats=track).double()
    theirs = tnn.BatchNorm2d(3, eps=1e-3, momentum=momentum, affine=affine,
                             track_running_stats=track).double()
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for mode in ("train", "train", "train", "eval"):
        mine.train(mode == "train")
        theirs.train(mode == "train")
        x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
        grad = rng.standard_normal(x.shape)
        y = mine(x)
        dx = mine.backward(grad)
        x_torch = torch.from_numpy(x).requires_grad_(True)
        y_torch = theirs(x_torch)
        y_torch.backward(torch.from_numpy(grad))
        np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=RTOL,
                                   atol=1e-12)
        np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=1e-9,
                                   atol=1e-12)
        if affine:
            np.testing.assert_allclose(mine.weight.grad,
                                       theirs.weight.grad.numpy(), rtol=1e-9)
            mine.zero_grad()
            theirs.zero_grad()
        assert_same_state(mine, theirs)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_layers_match_pytorch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 7))
    cases = [
        (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=2,
                   groups=2), tnn.Conv2d(4, 6, (3, 2), stride=(2, 1),
                                         padding=(1, 0), dilation=2,
                                         groups=2)),
        (nn.Conv2d(4, 3, 4, padding="same", bias=False),
         tnn.Conv2d(4, 3, 4, padding="same", bias=False)),
        (nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
         tnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
        (nn.AvgPool2d(2, padding=1, count_include_pad=False),
         tnn.AvgPool2d(2, padding=1, count_include_pad=False)),
        (nn.Flatten(), tnn.Flatten()),
        (nn.ReLU(), tnn.ReLU()),
    ]
    for mine, theirs in cases:
        mine.double()
        theirs.double()
        theirs.load_state_dict(to_torch_state(mine.state_dict()))
        y = mine(x)
        x_torch = torch.from_numpy(x).requires_grad_(True)
        y_torch = theirs(x_torch)
        grad = rng.standard_normal(y.shape)
        dx = mine.backward(grad)
        y_torch.backward(torch.from_numpy(grad))
        what = type(mine).__name__
        np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=RTOL,
                                   atol=1e-12, err_msg=what)
        np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=RTOL,
                                   atol=1e-12, err_msg=what)
        for name, parameter in mine.named_parameters():
            np.testing.assert_allclose(
                parameter.grad, dict(theirs.named_parameters())[name].grad,
                rtol=RTOL, atol=1e-12, err_msg=f"{what}.{name}")


def test_linear_on_extra_leading_dims_matches_pytorch():
    rng = np.random.default_rng(4)
    mine = nn.Linear(5, 3).double()
    theirs = tnn.Linear(5, 3).double()
    theirs.load_state_dict(to_torch_state(mine.state_dict()))
    x = rng.standard_normal((2, 4, 5))
    grad = rng.standard_normal((2, 4, 3))
    x_torch = torch.from_numpy(x).requires_grad_(True)
    theirs(x_torch).backward(torch.from_numpy(grad))
    np.testing.assert_allclose(mine(x), theirs(torch.from_numpy(x))
                               .detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(mine.backward(grad), x_torch.grad.numpy(),
                               rtol=RTOL)
    np.testing.assert_allclose(mine.weight.grad, theirs.weight.grad.numpy(),
                               rtol=RTOL)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_pytorch(smoothing, reduction):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 4)) * 3
    targets = rng.integers(0, 4, 6)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction,
                                  label_smoothing=smoothing)
    loss = loss_fn(logits, targets)
    logits_torch = torch.from_numpy(logits).requires_grad_(True)
    torch_loss = tnn.functional.cross_entropy(
        logits_torch, torch.from_numpy(targets), reduction=reduction,
        label_smoothing=smoothing)
    torch_loss.backward()
    np.testing.assert_allclose(loss, torch_loss.item(), rtol=RTOL)
    np.testing.assert_allclose(loss_fn.backward(), logits_torch.grad.numpy(),
                               rtol=RTOL, atol=1e-15)


# -------------------------------------------------------------- optimizers

OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=5e-3, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("name, options", OPTIMIZER_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in
                              enumerate(OPTIMIZER_CASES)])
def test_optimizer_matches_pytorch(name, options):
    rng = np.random.default_rng(6)
    shapes = [(3, 4), (5,), (2, 1, 3, 3)]
    initial = [rng.standard_normal(shape) for shape in shapes]
    mine_params = [nn.Parameter(value) for value in initial]
    their_params = [torch.from_numpy(value.copy()).requires_grad_(True)
                    for value in initial]
    mine = getattr(optim, name)(mine_params, **options)
    theirs = getattr(torch.optim, name)(their_params, foreach=False,
                                        **options)
    for step in range(6):
        for mine_param, their_param in zip(mine_params, their_params):
            grad = rng.standard_normal(mine_param.shape)
            if step == 3 and mine_param is mine_params[1]:
                continue  # no gradient this step: the parameter must stay
            mine_param.grad = grad
            their_param.grad = torch.from_numpy(grad.copy())
        mine.step()
        theirs.step()
        mine.zero_grad()
        theirs.zero_grad()
        for mine_param, their_param in zip(mine_params, their_params):
            np.testing.assert_allclose(
                mine_param.data, their_param.detach().numpy(), rtol=1e-12,
                atol=1e-14, err_msg=f"{name} step {step}")


def test_schedules_match_pytorch():
    def pair(make_mine, make_theirs, steps=25):
        mine_optimizer = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.3)
        their_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                          lr=0.3)
        mine, theirs = make_mine(mine_optimizer), make_theirs(their_optimizer)
        for _ in range(steps):
            np.testing.assert_allclose(mine.get_last_lr(),
                                       theirs.get_last_lr(), rtol=1e-9,
                                       atol=1e-15)
            their_optimizer.step()
            mine.step()
            theirs.step()

    pair(lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
             o, T_max=10, eta_min=0.01), steps=10)
    pair(lambda o: optim.StepLR(o, step_size=4, gamma=0.5),
         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4,
                                                   gamma=0.5))
