"""``fastconv predict --onnx`` and ``fastconv profile``."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastconv.cli import main  # noqa: E402


def classifier_model(path, nhwc=False, classes=4, size=8):
    """Conv-ReLU-GlobalAveragePool-Flatten-Gemm over a 3-channel image
    (``size`` a str: a free height and width)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    shape = ["N", 3, size, size]
    if nhwc:
        nodes.insert(0, helper.make_node("Transpose", ["image"], ["nchw"],
                                         perm=[0, 3, 1, 2]))
        shape = ["N", size, size, 3]
    else:
        nodes[0].input[0] = "image"
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["N", classes])],
        [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(
            np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((classes, 6)).astype(
             np.float32), "fc")])
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(1).integers(
        0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_predict_onnx(tmp_path, image, capsys, nhwc):
    model = classifier_model(tmp_path / "m.onnx", nhwc=nhwc)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    assert main(["predict", "--onnx", str(model), str(image), "--size", "8",
                 "--labels", str(labels), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and "next:" in line
    assert any(name in line for name in ("cat", "dog", "bird", "fish"))


def test_predict_matches_the_model(tmp_path, image, capsys):
    """The printed class is the argmax of the model's output on the
    preprocessed image."""
    import fastconv.onnx
    from fastconv.data import load_image

    path = classifier_model(tmp_path / "m.onnx")
    assert main(["predict", "--onnx", str(path), str(image), "--size", "8",
                 "--mean", "0.5", "--std", "0.25"]) == 0
    printed = capsys.readouterr().out.split(": ", 1)[1].split(" ", 1)[0]
    pixels = (load_image(image, 3, 8, invert=False) - 0.5) / 0.25
    logits = fastconv.onnx.load(path)(pixels.astype(np.float32))
    assert printed == str(int(np.argmax(logits)))


@pytest.fixture
def restore_backend():
    """--backend sets the process default; put it back afterwards."""
    import fastconv

    previous = fastconv.get_backend()
    yield
    fastconv.set_backend(previous)


def test_profile(tmp_path, capsys, restore_backend):
    path = classifier_model(tmp_path / "m.onnx")
    assert main(["profile", str(path), "--size", "8", "--batch", "2",
                 "--repeat", "2", "--backend", "numba"]) == 0
    out = capsys.readouterr().out
    assert "Conv+Relu" in out and "GlobalAveragePool" in out
    assert "(2, 3, 8, 8)" in out


@pytest.mark.parametrize("argv, message", [
    (["profile", "missing.onnx"], "does not exist"),
    (["profile", "{free}"], "give --size"),
    (["predict", "--onnx", "{free}", "{image}"], "give --size"),
    (["predict", "--onnx", "{model}", "{image}", "--size", "9"],
     "fixed at 8x8"),
    (["predict", "--onnx", "{model}", "{image}", "--size", "8", "--labels",
      "{image}"], "--labels"),
    (["predict", "--onnx", "{model}", "{image}", "--size", "8", "--mean",
      "1,2"], "--mean needs 1 or 3"),
    (["predict", "--onnx", "{image}", "{image}"], "not a valid ONNX model"),
    (["predict", "{image}"], "--checkpoint --onnx is required"),
])
def test_errors_are_one_line(tmp_path, image, capsys, argv, message):
    model = classifier_model(tmp_path / "m.onnx")
    free = classifier_model(tmp_path / "free.onnx", size="S")
    argv = [part.format(model=model, free=free, image=image)
            for part in argv]
    assert main(argv) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastconv: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err
