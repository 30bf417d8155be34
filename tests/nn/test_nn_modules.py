"""Module bookkeeping: registration, state_dict, dtype casts, modes, errors."""

from collections import OrderedDict

import numpy as np
import pytest

from fastconv import nn
from fastconv.models import ResNet, SmallCNN


def tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, generator=0), nn.BatchNorm2d(2),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(2 * 2 * 2, 3, generator=1))


def test_sequential_keys_and_shapes_follow_pytorch():
    state = tiny_cnn().state_dict()
    assert list(state) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
        "1.running_var", "1.num_batches_tracked", "6.weight", "6.bias"]
    assert state["0.weight"].shape == (2, 1, 3, 3)
    assert state["6.weight"].shape == (3, 8)
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == ()


def test_named_parameters_and_grads_are_numpy():
    model = tiny_cnn()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight",
                     "6.bias"]
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(
        np.float32)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), np.array([0, 2]))
    model.backward(loss_fn.backward())
    for _, parameter in model.named_parameters():
        assert isinstance(parameter.data, np.ndarray)
        assert parameter.grad.shape == parameter.data.shape
        assert parameter.grad.dtype == np.float32
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_gradients_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2, generator=0)
    x = np.ones((4, 3), np.float32)
    layer(x)
    layer.backward(np.ones((4, 2), np.float32))
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(layer.weight.grad, 2 * first)


def test_state_dict_round_trip_and_copies():
    model = tiny_cnn()
    state = model.state_dict()
    state["0.weight"][...] = 0  # a copy: the model is not changed
    assert np.any(model.state_dict()["0.weight"] != 0)
    other = tiny_cnn()
    other.load_state_dict(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)


def test_load_state_dict_casts_into_parameter_dtype():
    model = tiny_cnn()
    state = {key: value.astype(np.float64) if value.dtype == np.float32
             else value for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.state_dict()["0.weight"].dtype == np.float32
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_load_state_dict_errors_are_clear_and_change_nothing():
    model = tiny_cnn()
    before = model.state_dict()
    state = model.state_dict()
    del state["0.bias"]
    state["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\].*"
                       r"unexpected keys \['extra'\]"):
        model.load_state_dict(state)
    bad_shape = model.state_dict()
    bad_shape["6.weight"] = np.zeros((3, 9), np.float32)
    bad_shape["0.weight"] = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"6.weight.*\(3, 9\).*\(3, 8\)"):
        model.load_state_dict(bad_shape)
    for key, value in before.items():  # nothing was half-loaded
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_load_state_dict_non_strict_reports_keys():
    model = tiny_cnn()
    state = model.state_dict()
    del state["6.bias"]
    state["surplus"] = np.ones(2)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["6.bias"]
    assert result.unexpected_keys == ["surplus"]


def test_double_and_float_cast_parameters_and_float_buffers():
    model = tiny_cnn().double()
    assert model.dtype == np.float64
    state = model.state_dict()
    assert state["1.running_mean"].dtype == np.float64
    assert state["1.num_batches_tracked"].dtype == np.int64
    x = np.zeros((2, 1, 4, 4), np.float32)
    assert model(x).dtype == np.float64  # compute dtype follows parameters
    model.float()
    assert model(x.astype(np.float64)).dtype == np.float32


def test_train_eval_reach_every_submodule():
    model = ResNet(8, 1, 3, widths=(2, 2, 2))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_dropout_is_seeded_and_identity_in_eval():
    x = np.ones((4, 50), np.float32)
    first = nn.Dropout(0.5, generator=7)
    second = nn.Dropout(0.5, generator=7)
    np.testing.assert_array_equal(first(x), second(x))  # same seed, same mask
    assert not np.array_equal(first(x), first(x))  # a fresh mask per call
    kept = first(x)
    assert set(np.unique(kept)) <= {0.0, 2.0}  # inverted scaling 1/(1-p)
    grad = first.backward(np.ones_like(x))
    np.testing.assert_array_equal(grad, kept)  # the same mask and scale
    first.eval()
    np.testing.assert_array_equal(first(x), x)
    np.testing.assert_array_equal(first.backward(x), x)


def test_dropout_manual_seed_repeats_masks():
    layer = nn.Dropout(0.3)
    x = np.ones((3, 40))
    layer.manual_seed(5)
    a = layer(x)
    layer.manual_seed(5)
    np.testing.assert_array_equal(layer(x), a)


def test_init_is_seedable_and_pytorch_shaped():
    nn.init.manual_seed(3)
    a = SmallCNN().state_dict()
    nn.init.manual_seed(3)
    b = SmallCNN().state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    conv = nn.Conv2d(16, 32, 3, generator=0)
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(conv.weight.data).max() <= bound
    assert np.abs(conv.bias.data).max() <= bound
    # uniform on [-b, b] has std b / sqrt(3)
    assert abs(conv.weight.data.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert conv.weight.dtype == np.float32


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="device"):
        nn.Linear(3, 4, device="cuda:0")
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="p must be"):
        nn.Dropout(1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(3, 4).backward(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="Linear expects"):
        nn.Linear(3, 4)(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="multiple of output_size"):
        nn.AdaptiveAvgPool2d(2)(np.ones((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="more than one value"):
        nn.BatchNorm2d(2)(np.ones((1, 2, 1, 1), np.float32))
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNet(9)
    with pytest.raises(TypeError, match="Sequential takes Modules"):
        nn.Sequential(lambda x: x)


def test_sequential_from_ordered_dict_and_indexing():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1),
                                      act=nn.ReLU()))
    assert list(model.state_dict()) == ["conv.weight", "conv.bias"]
    assert isinstance(model[1], nn.ReLU)
    assert len(model) == 2
    assert isinstance(model[:1], nn.Sequential)


def test_cross_entropy_value_gradient_and_errors():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, np.array([0, 2]))
    assert np.isfinite(loss)  # stable for huge logits
    np.testing.assert_allclose(loss, np.log(3) / 2)
    grad = loss_fn.backward()
    expected = np.array([[0, 0, 0], [1 / 3, 1 / 3, -2 / 3]]) / 2
    np.testing.assert_allclose(grad, expected, atol=1e-12)
    with pytest.raises(ValueError, match="targets must lie"):
        loss_fn(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets must be integer"):
        loss_fn(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="none")


def test_repr_lists_children():
    text = repr(SmallCNN())
    assert "conv1): Conv2d(1, 32, kernel_size=(3, 3)" in text
    assert "fc): Linear(in_features=3136, out_features=10" in text
