"""The ``fastconv`` command end to end on tiny runs (digits, one epoch)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fastconv.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small-cnn run shared by the evaluate/predict tests."""
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "32", "--out", str(out), "--quiet",
                 "--threads", "1", "--seed", "3"])
    assert code == 0
    return out


def test_train_writes_checkpoint_metrics_and_curves(trained):
    from PIL import Image

    assert (trained / "model.npz").is_file()
    with Image.open(trained / "curves.png") as picture:
        assert picture.size[0] > 300
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_accuracy"] > 0.3  # one epoch learns something
    assert metrics["train_seconds"] > 0
    for key in ("train_loss", "train_accuracy", "test_loss_per_epoch",
                "test_accuracy_per_epoch", "epoch_seconds", "learning_rate"):
        assert len(metrics[key]) == 1, key
    assert metrics["test_accuracy_per_epoch"][-1] == metrics["test_accuracy"]
    config = metrics["config"]
    assert config["model"] == "small-cnn" and config["dataset"]["name"] == \
        "digits"
    assert config["epochs"] == 1 and config["batch_size"] == 32
    assert config["model_config"]["architecture"] == "small-cnn"
    assert config["threads"] == 1
    assert config["train"]["optimizer"] == "adam"


def test_train_resnet_and_prints_summary(tmp_path, capsys):
    code = main(["train", "--model", "resnet8", "--dataset", "digits",
                 "--epochs", "1", "--out", str(tmp_path), "--quiet",
                 "--optimizer", "sgd", "--lr", "0.05", "--schedule", "step"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "training" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["model_config"]["depth"] == 8


def test_evaluate_prints_accuracy_and_confusion_matrix(trained, capsys):
    assert main(["evaluate", "--checkpoint", str(trained / "model.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert f"accuracy {metrics['test_accuracy']:.4f}" in lines[0]
    matrix_rows = lines[-10:]
    counts = np.array([[int(v) for v in row.split()[1:]]
                       for row in matrix_rows])
    assert counts.shape == (10, 10)
    assert counts.sum() == metrics["test_size"]
    assert np.trace(counts) == metrics["test_correct"]


def test_predict_classifies_a_png(trained, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = (digits.images[0] * 255 / 16).astype(np.uint8)  # a zero
    big = Image.fromarray(255 - image).resize((64, 64), Image.NEAREST)
    big.save(tmp_path / "zero.png")  # dark ink on white, 64x64
    assert main(["predict", "--checkpoint", str(trained / "model.npz"),
                 str(tmp_path / "zero.png"), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'zero.png'}: ")
    assert "(p=" in line and "next:" in line


def test_info_lists_backends_and_versions(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("fastconv ")
    assert "backends available:" in text and "naive" in text
    assert "threads:" in text and "numpy" in text and "numba" in text


@pytest.mark.parametrize("argv, code, message", [
    ([], 2, "a command is required"),
    (["train", "--model", "resnet9"], 2, "unknown model 'resnet9'"),
    (["train", "--epochs", "0"], 2, "expected a positive integer"),
    (["train", "--lr", "-1"], 2, "expected a positive number"),
    (["train", "--dataset", "imagenet"], 2, "invalid choice"),
    (["train", "--bogus"], 2, "unrecognized arguments"),
    (["train", "--dataset", "mnist", "--epochs", "1"], 1,
     "needs --data-dir"),
    (["train", "--backend", "fortran", "--dataset", "digits"], 1,
     "unknown backend 'fortran'"),
    (["train", "--threads", "999", "--dataset", "digits"], 1, "--threads"),
    (["evaluate", "--checkpoint", "/no/such/model.npz"], 1,
     "does not exist"),
    (["evaluate"], 2, "--checkpoint"),
])
def test_bad_arguments_give_one_line(capsys, argv, code, message):
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fastconv: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_corrupt_checkpoint_and_bad_image(trained, tmp_path, capsys):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["evaluate", "--checkpoint",
                 str(tmp_path / "broken.npz")]) == 1
    assert "not a fastconv checkpoint" in capsys.readouterr().err
    (tmp_path / "fake.png").write_text("text")
    assert main(["predict", "--checkpoint", str(trained / "model.npz"),
                 str(tmp_path / "fake.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable image" in err


def test_console_entry_point_in_a_subprocess(tmp_path):
    """As a user runs it: no traceback, non-zero status, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "fastconv.cli", "evaluate", "--checkpoint",
         str(tmp_path / "missing.npz")], capture_output=True, text=True,
        timeout=300, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("fastconv: error:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_reader_that_stops_early_is_not_an_error(tmp_path):
    """`fastconv filter --list-kernels | head -1`: no error line, status 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fastconv.cli", "filter", "--list-kernels"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    process.stdout.close()  # before the child writes a line
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert b"error" not in stderr
