"""Torchvision-style CNNs exported by PyTorch, run by fastconv.onnx.

torchvision cannot be imported next to the CPU torch here, so the four
architectures are rebuilt below as small torch.nn modules (the same blocks:
BasicBlock with BN and a strided 1x1 shortcut; inverted residuals with a
depthwise 3x3 and ReLU6; fire modules with concat; VGG's conv-ReLU stacks),
with random weights and batch-norm statistics, exported with
``torch.onnx.export(..., dynamo=False)``, and checked against PyTorch and
onnxruntime at batch 1 and 8. ``benchmarks/bench_onnx.py`` builds the
full-size resnet18 and mobilenet_v2 from the same functions.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
nn = torch.nn

import fastconv.onnx  # noqa: E402

# torch.onnx.export(dynamo=False) warns that it is the legacy exporter.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings(
        "ignore:The feature will be removed:DeprecationWarning")]


# ------------------------------------------------------------ architectures

class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNet18(nn.Module):
    """resnet18's layout: 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 blocks,
    global average pool, fc. ``view_flatten`` flattens with
    ``x.reshape(x.size(0), -1)`` (a Shape/Gather/Concat/Reshape subgraph in
    ONNX) instead of ``torch.flatten``."""

    def __init__(self, width=64, num_classes=1000, view_flatten=False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, inplanes = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**stage
            blocks += [BasicBlock(inplanes, planes, stride),
                       BasicBlock(planes, planes, 1)]
            inplanes = planes
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.view_flatten = view_flatten

    def forward(self, x):
        x = self.avgpool(self.layers(self.stem(x)))
        x = x.reshape(x.size(0), -1) if self.view_flatten else \
            torch.flatten(x, 1)
        return self.fc(x)


def _conv_bn_relu6(inp, out, kernel, stride, groups=1):
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, out, stride, expand_ratio):
        super().__init__()
        hidden = inp * expand_ratio
        layers = [] if expand_ratio == 1 else [_conv_bn_relu6(inp, hidden, 1,
                                                              1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


#: mobilenet_v2's (expansion t, channels c, repeats n, stride s) table.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                         (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, stem=32, last=1280,
                 settings=MOBILENET_V2_SETTINGS):
        super().__init__()
        layers = [_conv_bn_relu6(3, stem, 3, 2)]
        inp = stem
        for expand, channels, repeats, stride in settings:
            for index in range(repeats):
                layers.append(InvertedResidual(inp, channels,
                                               stride if index == 0 else 1,
                                               expand))
                inp = channels
        layers.append(_conv_bn_relu6(inp, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2),
                                        nn.Linear(last, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    def __init__(self, inp, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inp, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)),
                          torch.relu(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """squeezenet1_1's layout with every width divided by ``divisor``."""

    def __init__(self, num_classes=1000, divisor=1):
        super().__init__()

        def w(channels):
            return channels // divisor

        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, w(64), 3, 2), nn.ReLU(inplace=True), pool,
            Fire(w(64), w(16), w(64), w(64)),
            Fire(w(128), w(16), w(64), w(64)), pool,
            Fire(w(128), w(32), w(128), w(128)),
            Fire(w(256), w(32), w(128), w(128)), pool,
            Fire(w(256), w(48), w(192), w(192)),
            Fire(w(384), w(48), w(192), w(192)),
            Fire(w(384), w(64), w(256), w(256)),
            Fire(w(512), w(64), w(256), w(256)))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(w(512), num_classes, 1),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class VGG11(nn.Module):
    """vgg11's conv stack (configuration A) with widths divided by
    ``divisor``, global average pooling and the three-layer classifier."""

    def __init__(self, num_classes=1000, divisor=1, hidden=4096):
        super().__init__()
        layers, inp = [], 3
        for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512,
                     512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(inp, item // divisor, 3, padding=1),
                           nn.ReLU(inplace=True)]
                inp = item // divisor
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(inp, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)),
                                             1))


def randomize_batch_norm(model, seed=0):
    """Random but well-scaled BN statistics and affine parameters, so that
    folding them is visible in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(
                    0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(
                    0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(
                    0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
    return model.eval()


def export_to_bytes(model, input_shape, **options) -> bytes:
    """``torch.onnx.export`` (the TorchScript exporter) with a free batch."""
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(input_shape),), buffer, dynamo=False,
        input_names=["input"], output_names=["logits"], opset_version=17,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, **options)
    return buffer.getvalue()


# -------------------------------------------------------------------- tests

SMALL_MODELS = {
    "resnet18": (lambda: ResNet18(width=8, num_classes=10), 32),
    "resnet18-view-flatten": (
        lambda: ResNet18(width=8, num_classes=10, view_flatten=True), 32),
    "mobilenet_v2": (lambda: MobileNetV2(
        num_classes=10, stem=8, last=64,
        settings=((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (4, 24, 1, 1))),
        32),
    "squeezenet1_1": (lambda: SqueezeNet11(num_classes=10, divisor=8), 48),
    "vgg11": (lambda: VGG11(num_classes=10, divisor=8, hidden=64), 32),
}


def assert_matches(actual, expected, what):
    """float32 agreement: within 1e-4 of the output's scale."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == np.float32, what
    scale = float(np.abs(expected).max()) + 1e-6
    error = float(np.abs(actual - expected).max())
    assert error <= 1e-4 * scale + 1e-6, (
        f"{what}: max error {error:.3g} for outputs of scale {scale:.3g}")


@pytest.fixture(scope="module", params=sorted(SMALL_MODELS))
def exported(request):
    """(torch model, ONNX bytes, fastconv model, image size) per model."""
    torch.manual_seed(0)
    build, size = SMALL_MODELS[request.param]
    model = randomize_batch_norm(build())
    data = export_to_bytes(model, (1, 3, size, size))
    return request.param, model, data, fastconv.onnx.load(data), size


@pytest.mark.parametrize("batch", [1, 8])
def test_matches_pytorch_and_onnxruntime(exported, batch):
    name, torch_model, data, model, size = exported
    x = np.random.default_rng(batch).standard_normal(
        (batch, 3, size, size)).astype(np.float32)
    before = x.copy()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    actual = model(x)
    np.testing.assert_array_equal(x, before)  # input untouched
    assert_matches(actual, expected, f"{name} vs PyTorch")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input": x})[0]
    assert_matches(actual, reference, f"{name} vs onnxruntime")
    assert model.run({"input": x})["logits"].shape == (batch, 10)


def test_plan_folds_and_fuses(exported):
    name, _, _, model, _ = exported
    counts = model.op_counts
    assert "BatchNormalization" not in counts, counts
    fused = sum(count for op, count in counts.items()
                if op in ("Conv+Relu", "Conv+Clip"))
    assert fused > 0, counts
    if name == "resnet18-view-flatten":
        # The batch size is free, so Shape/Gather run; the rest folded.
        assert "Reshape" in counts


def test_unfolded_batch_norm_and_unfused_plan_agree():
    """A PyTorch export without its own constant folding keeps the
    BatchNormalization nodes; fastconv's folding and fusion give the same
    outputs as running every node as it stands."""
    torch.manual_seed(1)
    model = randomize_batch_norm(ResNet18(width=4, num_classes=5), seed=1)
    data = export_to_bytes(model, (1, 3, 32, 32), do_constant_folding=False,
                           training=torch.onnx.TrainingMode.PRESERVE)
    plain = fastconv.onnx.load(data, fuse=False)
    fused = fastconv.onnx.load(data)
    assert "BatchNormalization" in plain.op_counts
    assert "BatchNormalization" not in fused.op_counts
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(
        np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_matches(plain(x), expected, "unfused")
    assert_matches(fused(x), expected, "fused")


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_backend_argument_runs_every_backend(backend):
    if backend not in fastconv.available_backends():
        pytest.skip(f"{backend} is not available here")
    torch.manual_seed(2)
    model = randomize_batch_norm(MobileNetV2(
        num_classes=4, stem=8, last=16,
        settings=((1, 8, 1, 1), (6, 8, 2, 2))))
    data = export_to_bytes(model, (1, 3, 16, 16))
    loaded = fastconv.onnx.load(data, backend=backend)
    assert loaded.backend == backend
    x = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(
        np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_matches(loaded(x), expected, backend)


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
@pytest.mark.parametrize("name", ["resnet18-view-flatten", "mobilenet_v2",
                                  "squeezenet1_1"])
def test_exports_at_other_opsets(name, opset):
    """Clip's bounds as attributes (opset 9) or inputs, Squeeze/Unsqueeze
    axes as attributes or inputs, ReduceMean and Pad forms across opsets."""
    torch.manual_seed(0)
    build, size = SMALL_MODELS[name]
    model = randomize_batch_norm(build())
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, 3, size, size),), buffer, dynamo=False,
        input_names=["input"], output_names=["logits"], opset_version=opset,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    x = np.random.default_rng(opset).standard_normal(
        (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    loaded = fastconv.onnx.load(buffer.getvalue())
    assert loaded.opset == opset
    assert_matches(loaded(x), expected, f"{name} at opset {opset}")
