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


def test_build_model_rejects_unknown_configs():
    with pytest.raises(ValueError, match="unknown model architecture"):
        build_model({"architecture": "vgg"})
    with pytest.raises(ValueError, match="bad small-cnn config"):
        build_model({"architecture": "small-cnn", "colour": "red"})
    with pytest.raises(TypeError, match="no 'config'"):
        save_checkpoint("unused.npz", nn.Linear(2, 2))
