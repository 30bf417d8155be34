"""Checkpoints: .npz round trip, readable without fastconv, clear errors."""

import json
import subprocess
import tempfile
import sys
import textwrap

import numpy as np
import pytest

from fastconv import nn
from fastconv.models import (ResNet, SmallCNN, build_model, load_checkpoint,
                             read_checkpoint, save_checkpoint)
from fastconv.models.checkpoint import _bundled_state


def perturb_running_stats(model, rng):
    model.train()
    model(rng.standard_normal((4, model.config["in_channels"], 8, 8))
          .astype(model.dtype))


@pytest.mark.parametrize("make", [
    lambda: SmallCNN(in_channels=1, num_classes=4, image_size=8,
                     channels=(3, 5), hidden=7),
    lambda: ResNet(8, in_channels=3, num_classes=5, widths=(2, 3, 4)),
], ids=["small-cnn", "resnet8"])
def test_round_trip_restores_weights_buffers_and_outputs(tmp_path, make):
    rng = np.random.default_rng(0)
    nn.init.manual_seed(1)
    model = make()
    perturb_running_stats(model, rng)
    model.eval()
    path = tmp_path / "model.npz"
    save_checkpoint(path, model, metadata={"note": "hello", "accuracy": 0.5})
    loaded, metadata = read_checkpoint(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert metadata == {"note": "hello", "accuracy": 0.5}
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
        assert loaded.state_dict()[key].dtype == value.dtype
    x = rng.standard_normal((2, model.config["in_channels"], 8, 8)).astype(
        np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert type(load_checkpoint(str(path))) is type(model)


def test_float64_models_come_back_in_float64(tmp_path):
    model = SmallCNN(image_size=8, channels=(2, 2)).double()
    save_checkpoint(tmp_path / "m.npz", model)
    assert load_checkpoint(tmp_path / "m.npz").dtype == np.float64


def test_checkpoint_is_plain_numpy_without_pickles(tmp_path):
    model = ResNet(8, 1, 3, widths=(2, 2, 2))
    save_checkpoint(tmp_path / "m.npz", model, {"dataset": "x"})
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        header = json.loads(str(archive["config"]))
        assert header["model"] == model.config
        assert header["format"] == 1
        assert archive["state/layer2.0.downsample.0.weight"].shape == (
            2, 2, 1, 1)


def test_loadable_in_a_fresh_process(tmp_path):
    """Only fastconv.models is needed: no training code, no pickles."""
    model = SmallCNN(image_size=8, channels=(2, 3))
    model.eval()
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    np.save(tmp_path / "expected.npy", model(x))
    save_checkpoint(tmp_path / "m.npz", model)
    script = textwrap.dedent(f"""
        import numpy as np
        from fastconv.models import load_checkpoint
        model = load_checkpoint({str(tmp_path / 'm.npz')!r})
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
        expected = np.load({str(tmp_path / 'expected.npy')!r})
        np.testing.assert_array_equal(model(x), expected)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    model = SmallCNN(image_size=8, channels=(2, 2))
    good = tmp_path / "good.npz"
    save_checkpoint(good, model)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a fastconv checkpoint"):
        load_checkpoint(truncated)

    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a fastconv checkpoint"):
        load_checkpoint(text)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ValueError, match="no 'config' entry"):
        load_checkpoint(foreign)

    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy"):
        load_checkpoint(single)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")

    # the right config with a weight of the wrong shape
    with np.load(good) as archive:
        arrays = dict(archive)
    arrays["state/fc.weight"] = np.zeros((10, 3), np.float32)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **arrays)
    with pytest.raises(ValueError, match="fc.weight.*shape"):
        load_checkpoint(wrong)


def test_build_model_rejects_unknown_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown model architecture"):
        build_model({"architecture": "vgg"})
    with pytest.raises(ValueError, match="bad small-cnn config"):
        build_model({"architecture": "small-cnn", "colour": "red"})
    with pytest.raises(TypeError, match="fastconv.nn.Module"):
        save_checkpoint(tmp_path / "unused.npz", {"weight": np.zeros(2)})
    assert not (tmp_path / "unused.npz").exists()


@pytest.mark.parametrize("config", [
    dict(architecture="small-cnn", in_channels=3, num_classes=4,
         image_size=12, channels=[2, 5], hidden=0, dropout=0.1),
    dict(architecture="small-cnn", in_channels=1, num_classes=7,
         image_size=8, channels=[3, 2], hidden=6, dropout=0.0),
    dict(architecture="resnet", depth=8, in_channels=1, num_classes=3,
         widths=[2, 3, 4]),
    dict(architecture="resnet", depth=14, in_channels=2, num_classes=5,
         widths=[2, 2, 2]),
], ids=["small-cnn", "small-cnn-hidden", "resnet8", "resnet14-equal-widths"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_implied_by_a_config_is_the_built_models(config, dtype):
    """The shapes checked before building are those the model will have."""
    model = build_model(config)
    if dtype == "float64":
        model.double()
    built = {key: (value.shape, value.dtype.name)
             for key, value in model.state_dict().items()}
    assert dict(_bundled_state(config, dtype)) == built


class TwoLayers(nn.Module):
    """A user's own module: no config, a buffer besides the parameters."""

    def __init__(self, width=3):
        super().__init__()
        self.first = nn.Conv2d(1, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        features = self.norm(self.first(x)).mean(axis=(2, 3))
        return self.head(features)


def test_any_module_round_trips_into_a_module_the_user_builds(tmp_path):
    rng = np.random.default_rng(4)
    nn.init.manual_seed(2)
    saved = TwoLayers()
    saved.train()
    saved(rng.standard_normal((2, 1, 5, 5)).astype(np.float32))  # BN stats
    path = tmp_path / "mine.npz"
    save_checkpoint(path, saved, metadata={"epoch": 3})
    nn.init.manual_seed(9)
    target = TwoLayers()
    target.train()
    loaded, metadata = read_checkpoint(path, model=target)
    assert loaded is target and metadata == {"epoch": 3}
    assert target.training  # the caller's mode is left alone
    for key, value in saved.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)
    saved.eval()
    target.eval()
    x = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(target(x), saved(x))
    assert load_checkpoint(path, model=TwoLayers()) is not None


def test_module_state_without_a_module_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "mine.npz", TwoLayers())
    with pytest.raises(ValueError, match="mine.npz.*model=module"):
        load_checkpoint(tmp_path / "mine.npz")


def test_module_state_must_match_the_module_from_the_headers(tmp_path):
    save_checkpoint(tmp_path / "mine.npz", TwoLayers(width=3))
    target = TwoLayers(width=4)
    before = target.state_dict()
    with pytest.raises(ValueError, match=r"first.weight.*shape \(3, 1, 3, 3\)"
                       r", expected \(4, 1, 3, 3\)"):
        load_checkpoint(tmp_path / "mine.npz", model=target)
    for key, value in target.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        load_checkpoint(tmp_path / "mine.npz", model=nn.Linear(3, 2))
    with pytest.raises(TypeError, match="model must be a fastconv.nn.Module"):
        load_checkpoint(tmp_path / "mine.npz", model="TwoLayers")


def test_a_bundled_checkpoint_loads_into_a_model_the_user_builds(tmp_path):
    model = SmallCNN(image_size=8, channels=(2, 3))
    save_checkpoint(tmp_path / "m.npz", model)
    target = SmallCNN(image_size=8, channels=(2, 3)).double()
    load_checkpoint(tmp_path / "m.npz", model=target)
    assert target.dtype == np.float64  # cast to the module's dtype
    np.testing.assert_array_equal(target.fc.weight.data,
                                  model.fc.weight.data.astype(np.float64))


def test_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "m.npz", nn.Linear(2, 2),
                        metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []
