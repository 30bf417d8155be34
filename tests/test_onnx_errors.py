"""Bad models and bad inputs: each a clear ValueError or TypeError at load
(or call) time, never a crash, a wrong answer or unbounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastconv.onnx  # noqa: E402

FLOAT = TensorProto.FLOAT


def graph_model(nodes, initializers=(), inputs=None, outputs=("y",),
                opset=17, check=True):
    """A serialized model with float inputs {name: shape} and outputs."""
    inputs = inputs or {"x": [1, 2, 6, 6]}
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info(name, FLOAT, shape)
         for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, [1, 3, 6, 6])
         for name in outputs], list(initializers))
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def conv_model():
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(
            np.float32), "w")
    return graph_model([helper.make_node("Conv", ["x", "w"], ["c"],
                                         pads=[1] * 4),
                        helper.make_node("Relu", ["c"], ["y"])], [weight])


def test_valid_model_loads():
    model = fastconv.onnx.load(conv_model())
    assert model(np.ones((1, 2, 6, 6), np.float32)).shape == (1, 3, 6, 6)


def test_truncated_files_are_value_errors(tmp_path):
    data = conv_model()
    for cut in sorted(set(range(1, len(data), max(1, len(data) // 60)))
                      | {len(data) - 1}):
        with pytest.raises(ValueError):
            fastconv.onnx.load(data[:cut])
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        fastconv.onnx.load(path)


@pytest.mark.parametrize("data", [b"", b"not an onnx model at all\n",
                                  bytes(range(256)) * 4])
def test_not_a_model(data):
    with pytest.raises(ValueError):
        fastconv.onnx.load(data)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fastconv.onnx.load(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path"):
        fastconv.onnx.load(42)
    with pytest.raises(ValueError, match="unknown backend"):
        fastconv.onnx.load(conv_model(), backend="tpu")


def test_every_unknown_operator_named_once():
    nodes = [helper.make_node("FooBar", ["x"], ["a"]),
             helper.make_node("FooBar", ["a"], ["b"]),
             helper.make_node("LRN", ["b"], ["c"], size=3),
             helper.make_node("FusedConv", ["c"], ["y"],
                              domain="com.microsoft")]
    data = graph_model(nodes, check=False)
    with pytest.raises(ValueError) as info:
        fastconv.onnx.load(data)
    message = str(info.value)
    assert "FooBar (2 nodes)" in message
    assert "LRN (1 node)" in message
    assert "com.microsoft.FusedConv (1 node)" in message


def test_every_unsupported_attribute_named_at_load():
    weight = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "indices"],
                         kernel_shape=[2, 2]),
        helper.make_node("ConvTranspose", ["p", "w"], ["t"],
                         output_shape=[6, 6], name="upsample"),
        helper.make_node("AveragePool", ["t"], ["a"], kernel_shape=[2, 2],
                         dilations=[2, 2]),
        helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT16),
    ]
    data = graph_model(nodes, [weight], inputs={"x": [1, 2, 6, 6]},
                       opset=19)
    with pytest.raises(ValueError) as info:
        fastconv.onnx.load(data)
    message = str(info.value)
    for expected in ("MaxPool node", "the Indices output",
                     "ConvTranspose node 'upsample'", "output_shape",
                     "AveragePool node", "dilations=[2, 2]", "FLOAT16"):
        assert expected in message, (expected, message)


def test_training_mode_batch_norm_and_3d_conv_refused():
    channels = [numpy_helper.from_array(np.ones(2, np.float32), name)
                for name in ("s", "b", "m", "v")]
    nodes = [helper.make_node("BatchNormalization",
                              ["x", "s", "b", "m", "v"], ["y"],
                              training_mode=1)]
    with pytest.raises(ValueError, match="training mode"):
        fastconv.onnx.load(graph_model(nodes, channels))
    weight = numpy_helper.from_array(np.ones((3, 2, 1, 1, 1), np.float32),
                                     "w")
    data = graph_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [weight], inputs={"x": [1, 2, 4, 4, 4]}, check=False)
    with pytest.raises(ValueError, match="weight must be a 3-D or 4-D"):
        fastconv.onnx.load(data)


def huge_tensor(dims, **data):
    tensor = TensorProto()
    tensor.name = "w"
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend(dims)
    for field, value in data.items():
        if field == "raw_data":
            tensor.raw_data = value
        else:
            getattr(tensor, field).extend(value)
    return tensor


@pytest.mark.parametrize("tensor, match", [
    (huge_tensor([2**20, 2**20], raw_data=b"\0" * 16), "carries 16 bytes"),
    (huge_tensor([2**40], float_data=[1.0, 2.0]), "carries 2 values"),
    (huge_tensor([2**62, 2**62], raw_data=b"\0" * 4), "declares dims"),
    (huge_tensor([3, -1, 3, 3], raw_data=b""), "negative dims"),
], ids=["raw", "float-data", "overflowing", "negative"])
def test_huge_declared_initializer_is_refused_without_allocating(tensor,
                                                                 match):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    data = graph_model(nodes, [tensor], check=False)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            fastconv.onnx.load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak} bytes while refusing"


def test_huge_constant_node_value_is_refused():
    tensor = huge_tensor([2**30, 2**10], raw_data=b"\0" * 8)
    nodes = [helper.make_node("Constant", [], ["k"], value=tensor),
             helper.make_node("Add", ["x", "k"], ["y"])]
    with pytest.raises(ValueError, match="declares dims"):
        fastconv.onnx.load(graph_model(nodes, check=False))


def test_external_data_is_refused():
    tensor = huge_tensor([3, 2, 3, 3])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    data = graph_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [tensor], check=False)
    with pytest.raises(ValueError, match="external file"):
        fastconv.onnx.load(data)


def test_hostile_pads_are_bounded():
    pads = numpy_helper.from_array(
        np.array([0, 0, 2**20, 2**20, 0, 0, 2**20, 2**20], np.int64), "pads")
    model = fastconv.onnx.load(graph_model(
        [helper.make_node("Pad", ["x", "pads"], ["y"])], [pads]))
    with pytest.raises(ValueError, match="would allocate"):
        model(np.ones((1, 2, 6, 6), np.float32))


@pytest.mark.parametrize("opset", [8, 10_000])
def test_unsupported_opset(opset):
    data = graph_model([helper.make_node("Relu", ["x"], ["y"])],
                       opset=opset, check=False)
    with pytest.raises(ValueError, match="unsupported ONNX opset"):
        fastconv.onnx.load(data)


def test_graph_reading_a_missing_value():
    data = graph_model([helper.make_node("Add", ["x", "nowhere"], ["y"])],
                       check=False)
    with pytest.raises(ValueError, match="nowhere"):
        fastconv.onnx.load(data)


def test_bad_feeds():
    model = fastconv.onnx.load(conv_model())
    good = np.ones((1, 2, 6, 6), np.float32)
    with pytest.raises(TypeError, match="float32"):
        model(good.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 6, 6\)"):
        model(np.ones((1, 2, 5, 6), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        model(good.tolist())
    with pytest.raises(ValueError, match="unknown model inputs"):
        model.run({"x": good, "z": good})
    with pytest.raises(ValueError, match="missing model inputs"):
        model.run({})
    with pytest.raises(TypeError, match="dict"):
        model.run([good])
    with pytest.raises(ValueError, match="repeat"):
        model.profile({"x": good}, repeat=0)


def test_multi_input_model_needs_run():
    data = graph_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       inputs={"a": [1, 3, 6, 6], "b": [1, 3, 6, 6]})
    model = fastconv.onnx.load(data)
    with pytest.raises(TypeError, match="model.run"):
        model(np.ones((1, 3, 6, 6), np.float32))
    ones = np.ones((1, 3, 6, 6), np.float32)
    np.testing.assert_array_equal(model.run({"a": ones, "b": ones})["y"], 2)


def test_missing_onnx_package_is_named(monkeypatch):
    import sys

    from fastconv.cli import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails
    with pytest.raises(ImportError, match=r"fastconv\[onnx\]|\.\[onnx\]"):
        fastconv.onnx.load(b"\x08\x07")
    assert main(["profile", "model.onnx"]) == 1


def test_reading_a_small_file_reserves_no_more_than_it(tmp_path):
    """The reader asked for MAX_MODEL_BYTES + 1 bytes at once, which
    reserves 2 GiB for any file (an out-of-memory error under an address
    space cap instead of 'not a valid ONNX model')."""
    from fastconv.onnx import _reader

    path = tmp_path / "small.onnx"
    path.write_bytes(b"not an onnx model at all\n" * 4)
    tracemalloc.start()
    try:
        data = _reader.read_model_bytes(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes()
    assert peak < 2**20, f"{peak} bytes traced reading a 100-byte file"


def test_a_file_that_grows_while_read_is_refused(tmp_path, monkeypatch):
    """The reader reads the size it saw plus one byte; more means the file
    changed under it (an exporter still writing), which is named rather
    than parsed as a truncated model."""
    import os

    from fastconv.onnx import _reader

    path = tmp_path / "growing.onnx"
    path.write_bytes(b"x" * 100)
    real_getsize = os.path.getsize
    monkeypatch.setattr(_reader.os.path, "getsize",
                        lambda p: real_getsize(p) - 10)
    with pytest.raises(ValueError, match="changed while it was read"):
        _reader.read_model_bytes(path)
