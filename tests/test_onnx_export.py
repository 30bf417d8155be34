"""fastconv.onnx.export: fastconv.nn models written as ONNX, run back by
onnxruntime and by fastconv.onnx.load with the model's own outputs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import fastconv.onnx  # noqa: E402
from fastconv import nn  # noqa: E402
from fastconv.models import ResNet, SmallCNN  # noqa: E402


def with_random_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean = rng.normal(0, 0.1, size).astype(np.float32)
            module.running_var = rng.uniform(0.5, 1.5, size).astype(
                np.float32)
            module.weight.data = rng.uniform(0.5, 1.5, size).astype(
                np.float32)
            module.bias.data = rng.normal(0, 0.1, size).astype(np.float32)
    return model.eval()


MODELS = {
    "small-cnn": (lambda: SmallCNN(1, 10, 16, channels=(4, 8), hidden=12),
                  (1, 16, 16)),
    "resnet8": (lambda: ResNet(8, 3, 10, widths=(4, 8, 16)), (3, 16, 16)),
    "sequential": (lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding="same"), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3, dilation=1),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.AvgPool2d(2, 1, padding=1, count_include_pad=False),
        nn.Conv2d(6, 4, 2, padding="valid", bias=False), nn.Identity(),
        nn.Dropout(0.3), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5)), (3, 13, 13)),
    "decoder": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=((1, 0), (0, 1))), nn.ReLU(),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                           groups=2),
        nn.BatchNorm2d(6),
        nn.ConvTranspose2d(6, 3, (2, 3), stride=(1, 2),
                           padding=((0, 1), (1, 0)), dilation=(2, 1))),
        (2, 7, 6)),
    "1d": (lambda: nn.Sequential(
        nn.Conv1d(3, 4, 5, padding=(2, 1), stride=2), nn.ReLU(),
        nn.MaxPool1d(3, 2, padding=1, ceil_mode=True),
        nn.Conv1d(4, 4, 3, padding="same", groups=2, dilation=2),
        nn.AvgPool1d(2, padding=1, count_include_pad=False), nn.Flatten(),
        nn.Linear(16, 3)), (3, 23)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_through_onnxruntime_and_back(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    nn.init.manual_seed(0)
    build, sample_shape = MODELS[name]
    model = with_random_statistics(build())
    path = tmp_path / f"{name}.onnx"
    fastconv.onnx.export(model, path, (1,) + sample_shape)
    session = ort.InferenceSession(str(path),
                                   providers=["CPUExecutionProvider"])
    loaded = fastconv.onnx.load(path)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal(
            (batch,) + sample_shape).astype(np.float32)
        expected = model(x)
        scale = float(np.abs(expected).max())
        from_onnxruntime = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(from_onnxruntime, expected, rtol=1e-4,
                                   atol=1e-5 * scale)
        np.testing.assert_allclose(loaded(x), expected, rtol=1e-4,
                                   atol=1e-5 * scale)


def test_export_leaves_the_model_alone(tmp_path):
    nn.init.manual_seed(1)
    model = SmallCNN(1, 10, 8, channels=(2, 4))
    before = {key: value.copy() for key, value in model.state_dict().items()}
    assert model.training
    proto = fastconv.onnx.export(model, tmp_path / "m.onnx", (2, 1, 8, 8),
                                 dynamic_batch=False)
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 1, 8, 8]


def test_float64_model_exports_as_double(tmp_path):
    nn.init.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).double()
    fastconv.onnx.export(model, tmp_path / "m.onnx", (1, 1, 5, 5))
    loaded = fastconv.onnx.load(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 5))
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-12)


class Custom(nn.Module):
    def forward(self, x):
        return x


def test_export_errors(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match="cannot export a Custom"):
        fastconv.onnx.export(nn.Sequential(nn.ReLU(), Custom()), path,
                             (1, 1, 4, 4))
    with pytest.raises(TypeError, match="fastconv.nn.Module"):
        fastconv.onnx.export(object(), path, (1, 1, 4, 4))
    with pytest.raises(ValueError, match="input_shape"):
        fastconv.onnx.export(nn.ReLU(), path, (1, 4))
    with pytest.raises(ValueError, match="track_running_stats"):
        fastconv.onnx.export(
            nn.BatchNorm2d(1, track_running_stats=False), path, (1, 1, 4, 4))
    with pytest.raises(TypeError, match="path"):
        fastconv.onnx.export(nn.ReLU(), 3, (1, 1, 4, 4))
    assert not path.exists()
