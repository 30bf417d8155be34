"""fastconv.nn, the training loop and ``fastconv train`` on the CUDA backend.

The layers call the core ops on the current backend with NumPy arrays, so on
'cuda' each op copies its operands to the device and its result back. These
tests check that a network computes the same thing there as on the CPU: the
same logits, the same gradients (dropout masks included: they are drawn from
the same counter-based hash), the same weights after a few training steps,
and the command line end to end. Networks and images are tiny because the
simulator runs one Python thread per CUDA thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.backends import cuda as cuda_backend

_UNAVAILABLE = cuda_backend.unavailable_reason()
if _UNAVAILABLE is not None:
    pytest.skip(
        f"CUDA backend unavailable: {_UNAVAILABLE}. These tests need "
        "numba-cuda (pip install \".[cuda]\") and a GPU or Numba's "
        "simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda",
        allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("launch"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

CPU_BACKEND = "numba"
IMAGE_SIZE = 8


def _tiny_small_cnn(seed=0):
    from fastconv.models import SmallCNN

    return SmallCNN(in_channels=1, num_classes=3, image_size=IMAGE_SIZE,
                    channels=(2, 3), dropout=0.25, generator=seed)


def _tiny_resnet(seed=0):
    from fastconv.models import ResNet

    return ResNet(depth=8, in_channels=1, num_classes=3, widths=(2, 2, 4),
                  generator=seed)


def _forward_backward(model, x, labels, backend):
    """(logits, loss, model.backward's result, {name: grad}) of one step."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.manual_seed(99)  # the same masks on both backends
    loss_fn = nn.CrossEntropyLoss()
    with fastconv.use_backend(backend):
        model.train()
        model.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, labels)
        grad_input = model.backward(loss_fn.backward())
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    return logits, loss, grad_input, grads


@pytest.mark.parametrize("build", [_tiny_small_cnn, _tiny_resnet],
                         ids=["small-cnn", "resnet8"])
def test_network_step_on_cuda_matches_cpu(build, random_array):
    x = random_array((3, 1, IMAGE_SIZE, IMAGE_SIZE), np.float64, "nn-x")
    labels = np.array([0, 2, 1])
    expected = _forward_backward(build().double(), x, labels, CPU_BACKEND)
    actual = _forward_backward(build().double(), x, labels, "cuda")
    for what, got, want in zip(("logits", "loss"), actual[:2], expected[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12,
                                   err_msg=what)
    # The first conv skips its input gradient unless asked for one.
    assert actual[2] is None and expected[2] is None
    assert actual[3].keys() == expected[3].keys()
    for name in expected[3]:
        np.testing.assert_allclose(actual[3][name], expected[3][name],
                                   rtol=1e-10, atol=1e-12, err_msg=name)
    assert any(np.abs(g).max() > 0 for g in actual[3].values())


def _tiny_dataset(seed=5):
    """12 train / 6 test 8x8 one-channel images of 3 classes."""
    from fastconv.data.datasets import Dataset, Normalization

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 17, size=(18, 1, IMAGE_SIZE, IMAGE_SIZE))
    labels = rng.integers(0, 3, size=18)
    normalization = Normalization.fit(raw[:12], 16.0)
    return Dataset("tiny", normalization.apply(raw[:12]), labels[:12],
                   normalization.apply(raw[12:]), labels[12:],
                   ("a", "b", "c"), normalization)


def test_fit_on_cuda_ends_with_the_cpu_weights():
    """Three Adam steps of a ResNet-8 (batch norm, shortcuts, global average
    pooling) through ``fit``: the weights agree with a CPU run."""
    from fastconv.models.training import TrainConfig, fit

    dataset = _tiny_dataset()
    config = TrainConfig(epochs=1, batch_size=4, lr=1e-2, augment_shift=1,
                         seed=3)
    weights = {}
    for backend in (CPU_BACKEND, "cuda"):
        model = _tiny_resnet()
        with fastconv.use_backend(backend):
            history = fit(model, dataset, config, progress=False,
                          log=lambda line: None)
        assert len(history.train_loss) == 1
        weights[backend] = model.state_dict()
    for name, value in weights[CPU_BACKEND].items():
        np.testing.assert_allclose(weights["cuda"][name], value, rtol=2e-4,
                                   atol=1e-5, err_msg=name)
    initial = _tiny_resnet().state_dict()
    assert not np.allclose(weights["cuda"]["conv1.weight"],
                           initial["conv1.weight"])


@pytest.fixture
def restore_backend():
    previous = fastconv.get_backend()
    yield
    fastconv.set_backend(previous)


def test_train_command_with_backend_cuda(tmp_path, monkeypatch,
                                         restore_backend, capsys):
    """``fastconv train --backend cuda`` end to end, with the digits loader
    and the model swapped for tiny ones (1,797 images and 32/64-channel
    convolutions take minutes on the simulator)."""
    from fastconv import cli, data

    monkeypatch.setattr(data, "load_dataset",
                        lambda name, data_dir=None: _tiny_dataset())
    monkeypatch.setattr(cli, "_build_model",
                        lambda name, dataset, seed: _tiny_small_cnn(seed))
    code = cli.main(["train", "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "6", "--backend", "cuda", "--quiet",
                 "--out", str(tmp_path)])
    assert code == 0
    assert "cuda" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["backend"] == "cuda"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (tmp_path / "model.npz").is_file()
