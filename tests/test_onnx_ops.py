"""Hand-built ONNX graphs (onnx.helper) for what torchvision's exports do
not use: asymmetric and SAME padding, 1-D and transposed convolutions,
the other activations, NHWC (Keras-style) graphs, shape operators, legacy
opsets. Each is run by fastconv.onnx and by onnxruntime, outputs compared;
a few also against a NumPy formula."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastconv.onnx  # noqa: E402

FLOAT = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=None, opset=17):
    """Serialized model: ``inputs`` {name: shape} (float32), ``outputs``
    {name: element type or (element type, shape)}, ``initializers``
    {name: array}."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, FLOAT, shape)
         for name, shape in inputs.items()],
        [helper.make_tensor_value_info(
            name, *(spec if isinstance(spec, tuple) else (spec, None)))
         for name, spec in outputs.items()],
        [numpy_helper.from_array(np.asarray(value), name)
         for name, value in (initializers or {}).items()])
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    # The outputs were declared without shapes; shape inference fills them
    # in (the checker requires one).
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(
        np.float32)


def run_both(data, feeds, **load_options):
    """(fastconv outputs, onnxruntime outputs) as dicts."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    reference = dict(zip(names, session.run(None, feeds)))
    copies = {name: value.copy() for name, value in feeds.items()}
    actual = fastconv.onnx.load(data, **load_options).run(feeds)
    for name, value in feeds.items():
        np.testing.assert_array_equal(value, copies[name])
    return actual, reference


def assert_same(data, feeds, **load_options):
    actual, reference = run_both(data, feeds, **load_options)
    assert set(actual) == set(reference)
    for name, expected in reference.items():
        assert actual[name].shape == expected.shape, name
        assert actual[name].dtype == expected.dtype, name
        np.testing.assert_allclose(actual[name], expected, rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    return actual


def single(op_type, x_shape, initializers=None, inputs=(), opset=17,
           output_type=FLOAT, **attributes):
    """A one-node graph reading x (and named initializers)."""
    node = helper.make_node(op_type, ["x", *inputs], ["y"], **attributes)
    return make_model([node], {"x": x_shape}, {"y": output_type},
                      initializers, opset)


# --------------------------------------------------------------- convolution

CONV_CASES = {
    "asymmetric-pads-groups-dilation": dict(
        x=(2, 4, 11, 10), w=(6, 2, 3, 3), pads=[1, 0, 2, 1], strides=[2, 1],
        dilations=[1, 2], group=2),
    "same-upper-even-kernel-stride2": dict(
        x=(1, 3, 9, 8), w=(4, 3, 4, 4), auto_pad="SAME_UPPER",
        strides=[2, 2]),
    "same-lower": dict(x=(1, 3, 7, 7), w=(4, 3, 2, 3),
                       auto_pad="SAME_LOWER"),
    "valid": dict(x=(2, 3, 8, 9), w=(5, 3, 3, 2), auto_pad="VALID"),
    "depthwise": dict(x=(2, 6, 9, 9), w=(6, 1, 3, 3), pads=[1, 1, 1, 1],
                      group=6),
    "1d-asymmetric": dict(x=(2, 3, 17), w=(4, 3, 5), pads=[3, 1],
                          strides=[2]),
    "1d-same": dict(x=(1, 2, 10), w=(3, 2, 4), auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case):
    spec = dict(CONV_CASES[case])
    x_shape, w_shape = spec.pop("x"), spec.pop("w")
    weight = random(*w_shape, seed=1)
    bias = random(w_shape[0], seed=2)
    data = single("Conv", x_shape, {"w": weight, "b": bias}, ["w", "b"],
                  **spec)
    assert_same(data, {"x": random(*x_shape)})


@pytest.mark.parametrize("spec", [
    dict(x=(2, 4, 5, 6), w=(4, 3, 3, 3), strides=[2, 2],
         pads=[1, 0, 0, 1], output_padding=[1, 0]),
    dict(x=(1, 4, 4, 4), w=(4, 2, 3, 2), strides=[2, 3], group=2,
         dilations=[2, 1]),
    dict(x=(2, 3, 7), w=(3, 2, 4), strides=[2], pads=[1, 2]),
], ids=["stride2-asymmetric-output-padding", "groups-dilation", "1d"])
def test_conv_transpose(spec):
    spec = dict(spec)
    x_shape, w_shape = spec.pop("x"), spec.pop("w")
    groups = spec.get("group", 1)
    data = single("ConvTranspose", x_shape,
                  {"w": random(*w_shape, seed=1),
                   "b": random(w_shape[1] * groups, seed=2)}, ["w", "b"],
                  **spec)
    assert_same(data, {"x": random(*x_shape)})


def batch_norm_initializers(channels, seed=5):
    rng = np.random.default_rng(seed)
    return {"scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            "bias": rng.normal(0, 0.1, channels).astype(np.float32),
            "mean": rng.normal(0, 0.1, channels).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, channels).astype(np.float32)}


def test_batch_norm_folded_into_conv_and_standalone():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("BatchNormalization",
                              ["c", "scale", "bias", "mean", "var"], ["y"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization",
                              ["r", "scale3", "bias3", "mean3", "var3"],
                              ["z"])]
    initializers = {"w": random(4, 3, 3, 3, seed=1),
                    **batch_norm_initializers(4)}
    initializers.update({f"{key}3": value for key, value in
                         batch_norm_initializers(3, seed=6).items()})
    data = make_model(nodes, {"x": (2, 3, 6, 6)}, {"y": FLOAT, "z": FLOAT},
                      initializers)
    model = fastconv.onnx.load(data)
    assert model.op_counts["Conv+BatchNormalization"] == 1
    assert model.op_counts["BatchNormalization"] == 1
    assert_same(data, {"x": random(2, 3, 6, 6)})
    assert_same(data, {"x": random(2, 3, 6, 6)}, fuse=False)


# --------------------------------------------------------------- activations

@pytest.mark.parametrize("op_type, attributes, opset", [
    ("Relu", {}, 17), ("LeakyRelu", {"alpha": 0.1}, 17),
    ("Sigmoid", {}, 17), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17),
    ("HardSwish", {}, 17), ("Clip", {"min": 0.0, "max": 6.0}, 9),
    ("Softmax", {"axis": 1}, 11), ("Softmax", {"axis": 1}, 13),
    ("Softmax", {}, 13), ("Identity", {}, 17),
])
def test_unary(op_type, attributes, opset):
    data = single(op_type, (2, 3, 4, 5), opset=opset, **attributes)
    x = random(2, 3, 4, 5) * 5
    actual = assert_same(data, {"x": x})
    if op_type == "HardSwish":
        np.testing.assert_allclose(
            actual["y"], x * np.clip(x / 6 + 0.5, 0, 1), rtol=1e-5,
            atol=1e-6)


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (None, 1.0), (-1.0, None)])
def test_clip_with_bound_inputs(bounds):
    names = [("lo" if bounds[0] is not None else ""),
             ("hi" if bounds[1] is not None else "")]
    initializers = {name: np.float32(value)
                    for name, value in zip(("lo", "hi"), bounds)
                    if value is not None}
    data = single("Clip", (2, 3, 4), initializers, names)
    assert_same(data, {"x": random(2, 3, 4) * 4})


def test_conv_fused_activations_match_unfused():
    nodes, initializers = [], {}
    value = "x"
    for index, (op_type, attributes) in enumerate([
            ("Relu", {}), ("Clip", {}), ("LeakyRelu", {"alpha": 0.2}),
            ("HardSwish", {}), ("HardSigmoid", {}), ("Sigmoid", {})]):
        initializers[f"w{index}"] = random(3, 3, 3, 3, seed=index) * 0.5
        nodes.append(helper.make_node("Conv", [value, f"w{index}"],
                                      [f"c{index}"], pads=[1] * 4))
        inputs = [f"c{index}"] + (["lo", "hi"] if op_type == "Clip" else [])
        nodes.append(helper.make_node(op_type, inputs, [f"a{index}"],
                                      **attributes))
        value = f"a{index}"
    initializers.update(lo=np.float32(0), hi=np.float32(6))
    nodes[-1].output[0] = "y"
    data = make_model(nodes, {"x": (2, 3, 8, 8)}, {"y": FLOAT},
                      initializers)
    assert len(fastconv.onnx.load(data).op_counts) == 6  # all six fused
    feeds = {"x": random(2, 3, 8, 8)}
    assert_same(data, feeds)
    assert_same(data, feeds, fuse=False)


def test_add_then_relu_runs_as_one_step():
    """Relu(Add(a, b)) with the sum read once is one step (a residual
    junction) and equals the two ops, also where Add broadcasts; a sum
    read twice keeps both steps."""
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"]),
             helper.make_node("Add", ["x", "c"], ["t"]),
             helper.make_node("Relu", ["t"], ["z"]),
             helper.make_node("Add", ["r", "x"], ["u"]),
             helper.make_node("Relu", ["u"], ["v"]),
             helper.make_node("Mul", ["u", "c"], ["w"])]
    data = make_model(nodes, {"x": (2, 3, 4, 5), "r": (2, 3, 4, 5)},
                      {"y": FLOAT, "z": FLOAT, "v": FLOAT, "w": FLOAT},
                      {"c": random(1, 3, 1, 1, seed=4)})
    model = fastconv.onnx.load(data)
    fused = [step.fused for step in model._steps if step.op_type == "Add"]
    assert sorted(fused) == [(), ("Relu",), ("Relu",)]
    assert model.op_counts.get("Relu") == 1
    feeds = {"x": random(2, 3, 4, 5), "r": random(2, 3, 4, 5, seed=1)}
    actual = assert_same(data, feeds)
    unfused = fastconv.onnx.load(data, fuse=False).run(feeds)
    for name in actual:
        np.testing.assert_array_equal(actual[name], unfused[name])
    np.testing.assert_array_equal(
        actual["y"], np.maximum(feeds["x"] + feeds["r"], 0))


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_binary_broadcasting(op_type):
    nodes = [helper.make_node(op_type, ["x", "c"], ["y"]),
             helper.make_node(op_type, ["s", "x"], ["z"])]
    initializers = {"c": random(1, 3, 1, 1, seed=3) + 2,
                    "s": np.float32(1.5)}
    data = make_model(nodes, {"x": (2, 3, 4, 5)}, {"y": FLOAT, "z": FLOAT},
                      initializers)
    assert_same(data, {"x": random(2, 3, 4, 5) + 4})


def test_integer_division_truncates_like_onnx():
    # Shape(x) = [2, 3, 7, 5]; -7 // 2 floors to -4, ONNX truncates to -3.
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Mul", ["shape", "minus"], ["negative"]),
             helper.make_node("Div", ["negative", "two"], ["y"])]
    data = make_model(nodes, {"x": (2, 3, 7, 5)}, {"y": TensorProto.INT64},
                      {"minus": np.array(-1, np.int64),
                       "two": np.array(2, np.int64)})
    actual = assert_same(data, {"x": random(2, 3, 7, 5)})
    np.testing.assert_array_equal(actual["y"], [-1, -1, -3, -2])


# ------------------------------------------------------------------ pooling

POOL_CASES = {
    "max-same-upper": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2],
                                       auto_pad="SAME_UPPER")),
    "max-asymmetric": ("MaxPool", dict(kernel_shape=[3, 2],
                                       pads=[0, 1, 1, 0], strides=[2, 1])),
    "max-ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2],
                                 pads=[1, 1, 1, 1], ceil_mode=1)),
    "max-dilated": ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2])),
    "max-pads-over-half": ("MaxPool", dict(kernel_shape=[3, 3],
                                           pads=[2, 2, 2, 2])),
    "avg-exclude-pad-asymmetric": ("AveragePool", dict(
        kernel_shape=[3, 3], pads=[1, 0, 0, 1], strides=[2, 2])),
    "avg-include-pad-same-lower": ("AveragePool", dict(
        kernel_shape=[2, 3], auto_pad="SAME_LOWER", count_include_pad=1)),
    "avg-ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2],
                                     ceil_mode=1)),
    "avg-include-pad-over-half": ("AveragePool", dict(
        kernel_shape=[3, 3], pads=[2, 1, 2, 1], count_include_pad=1)),
    "max-1d": ("MaxPool", dict(kernel_shape=[3], strides=[2], pads=[1, 0])),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(case):
    op_type, attributes = POOL_CASES[case]
    shape = (2, 3, 9) if case.endswith("1d") else (2, 3, 9, 8)
    assert_same(single(op_type, shape, **attributes), {"x": random(*shape)})


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 4, 9), (1, 2, 1, 1)])
@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op_type, shape):
    assert_same(single(op_type, shape), {"x": random(*shape)})


# --------------------------------------------------------- Keras-style graph

def test_keras_style_nhwc_graph():
    """NHWC input, Transpose to NCHW, 'SAME' strided conv with HardSwish,
    depthwise SAME conv with ReLU6 (Clip), ReduceMean over H and W,
    MatMul + Add, Softmax: what tf2onnx writes for a small Keras CNN."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"],
                         auto_pad="SAME_UPPER", strides=[2, 2],
                         kernel_shape=[3, 3]),
        helper.make_node("HardSwish", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], auto_pad="SAME_UPPER",
                         group=8, kernel_shape=[3, 3]),
        helper.make_node("Clip", ["c2", "zero", "six"], ["a2"]),
        helper.make_node("ReduceMean", ["a2"], ["pooled"], axes=[2, 3],
                         keepdims=0),
        helper.make_node("MatMul", ["pooled", "dense"], ["logits0"]),
        helper.make_node("Add", ["logits0", "dense_bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    initializers = {"w1": random(8, 3, 3, 3, seed=1),
                    "b1": random(8, seed=2), "w2": random(8, 1, 3, 3, seed=3),
                    "zero": np.float32(0), "six": np.float32(6),
                    "dense": random(8, 5, seed=4),
                    "dense_bias": random(5, seed=5)}
    data = make_model(nodes, {"x": ("N", 10, 9, 3)}, {"y": (FLOAT, ["N", 5])},
                      initializers, opset=14)
    for batch in (1, 4):
        actual = assert_same(data, {"x": random(batch, 10, 9, 3)})
        np.testing.assert_allclose(actual["y"].sum(axis=1), 1, rtol=1e-5)


# ------------------------------------------------------------- shape ops

def test_shape_subgraph_with_free_batch():
    """PyTorch's x.view(x.size(0), -1) pattern plus Slice, Cast, Squeeze,
    Unsqueeze, Concat and Gather with a negative index."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"],
                         axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"],
                         ["sliced"]),
        helper.make_node("Gather", ["x", "last"], ["gathered"], axis=3),
        helper.make_node("Squeeze", ["gathered", "axis1"], ["squeezed"]),
        helper.make_node("Cast", ["shape"], ["shape_float"], to=FLOAT),
        helper.make_node("Flatten", ["x"], ["flat2"], axis=2),
        helper.make_node("Reshape", ["x", "keep"], ["kept"]),
    ]
    initializers = {
        "zero": np.array(0, np.int64), "axis0": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
        "starts": np.array([1, -3], np.int64),
        "ends": np.array([3, 100], np.int64),
        "axes": np.array([1, 3], np.int64), "last": np.array([-1], np.int64),
        "axis1": np.array([-1], np.int64),
        "keep": np.array([0, 0, -1], np.int64)}
    data = make_model(nodes, {"x": ("N", 3, 4, 5)},
                      {name: FLOAT for name in ("flat", "sliced", "squeezed",
                                                "shape_float", "flat2",
                                                "kept")},
                      initializers)
    for batch in (1, 3):
        assert_same(data, {"x": random(batch, 3, 4, 5)})


def test_static_shape_subgraph_folds_at_load():
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"]),
             helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"],
                              axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    data = make_model(nodes, {"x": (2, 3, 4, 5)}, {"y": FLOAT},
                      {"zero": np.array(0, np.int64),
                       "axis0": np.array([0], np.int64),
                       "minus_one": np.array([-1], np.int64)})
    model = fastconv.onnx.load(data)
    assert model.op_counts == {"Reshape": 1}
    assert_same(data, {"x": random(2, 3, 4, 5)})


def test_legacy_attribute_forms():
    """Opset 11: Squeeze/Unsqueeze/ReduceMean axes as attributes, Pad's pads
    as an input; opset 9 Pad with attributes."""
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1],
                              keepdims=1)]
    data = make_model(nodes, {"x": (2, 3, 4)}, {"s": FLOAT, "m": FLOAT},
                      opset=11)
    assert_same(data, {"x": random(2, 3, 4)})
    data = single("Pad", (2, 3, 4, 4), opset=9, mode="constant",
                  pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5)
    assert_same(data, {"x": random(2, 3, 4, 4)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    pads = np.array([0, 0, 2, -1, 0, 1, 1, 2], np.int64)
    inputs = ["pads"] + (["value"] if mode == "constant" else [])
    data = single("Pad", (2, 3, 5, 6), {"pads": pads,
                                        "value": np.float32(1.5)},
                  inputs, mode=mode)
    assert_same(data, {"x": random(2, 3, 5, 6)})


def test_pad_with_axes_and_reduce_mean_opset18():
    nodes = [helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"]),
             helper.make_node("ReduceMean", ["p", "raxes"], ["y"],
                              keepdims=0)]
    data = make_model(nodes, {"x": (2, 3, 4, 5)}, {"y": FLOAT},
                      {"pads": np.array([1, 0, 2, 3], np.int64),
                       "axes": np.array([1, 3], np.int64),
                       "raxes": np.array([-1, 2], np.int64)}, opset=18)
    assert_same(data, {"x": random(2, 3, 4, 5)})


def test_gemm_and_matmul():
    nodes = [helper.make_node("Gemm", ["x", "b", "c"], ["y"], transA=1,
                              alpha=0.5, beta=2.0),
             helper.make_node("MatMul", ["y", "m"], ["z"])]
    data = make_model(nodes, {"x": (6, 4)}, {"y": FLOAT, "z": FLOAT},
                      {"b": random(6, 5, seed=1), "c": random(1, 5, seed=2),
                       "m": random(5, 3, seed=3)})
    assert_same(data, {"x": random(6, 4)})


def test_dropout_constant_identity_outputs_are_copies():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]),
             helper.make_node("Identity", ["x"], ["same"]),
             helper.make_node("Constant", [], ["k"],
                              value_floats=[1.0, 2.0, 3.0]),
             helper.make_node("Add", ["d", "k"], ["y"])]
    data = make_model(nodes, {"x": (2, 3)},
                      {"y": FLOAT, "same": FLOAT, "mask": TensorProto.BOOL,
                       "k": FLOAT})
    x = random(2, 3)
    original = x.copy()
    outputs = assert_same(data, {"x": x})
    model = fastconv.onnx.load(data)
    first = model.run({"x": x})
    for value in first.values():
        value[...] = 0  # the caller owns what it gets
    np.testing.assert_array_equal(x, original)
    second = model.run({"x": x})
    np.testing.assert_array_equal(second["same"], original)
    np.testing.assert_array_equal(second["k"], [1, 2, 3])
    np.testing.assert_allclose(second["y"], original + [1, 2, 3])
    np.testing.assert_array_equal(outputs["mask"], True)


def test_in_place_plan_respects_aliases():
    """The conv output is read by a Reshape (a view) and by Relu; Relu must
    not overwrite it while the view is alive, and Add may reuse a dying
    buffer only when nothing else shares it."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Reshape", ["c", "flat_shape"], ["view"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "flat_shape"], ["rview"]),
             helper.make_node("Add", ["view", "rview"], ["sum"]),
             helper.make_node("Mul", ["sum", "sum"], ["y"])]
    data = make_model(nodes, {"x": (2, 3, 5, 5)}, {"y": FLOAT},
                      {"w": random(4, 3, 3, 3, seed=1),
                       "flat_shape": np.array([2, -1], np.int64)})
    assert_same(data, {"x": random(2, 3, 5, 5)})


def test_backend_argument_reaches_the_kernels(backend):
    data = single("Conv", (1, 2, 6, 6), {"w": random(3, 2, 3, 3, seed=1)},
                  ["w"], pads=[0, 1, 1, 0], strides=[2, 1])
    x = random(1, 2, 6, 6)
    reference = fastconv.onnx.load(data, backend="naive")(x)
    np.testing.assert_allclose(fastconv.onnx.load(data, backend=backend)(x),
                               reference, rtol=1e-5, atol=1e-6)


def test_profile_reports_every_step():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2]),
             helper.make_node("Conv", ["p", "dw"], ["d"], group=3),
             helper.make_node("GlobalAveragePool", ["d"], ["y"])]
    data = make_model(nodes, {"x": (1, 2, 9, 9)}, {"y": FLOAT},
                      {"w": random(3, 2, 3, 3), "dw": random(3, 1, 1, 1)})
    model = fastconv.onnx.load(data)
    timings = model.profile({"x": random(1, 2, 9, 9)}, repeat=3)
    assert [(t.op_type, t.fused, t.kind) for t in timings] == [
        ("Conv", ("Relu",), "3x3/2x1"), ("MaxPool", (), ""),
        ("Conv", (), "1x1 depthwise"), ("GlobalAveragePool", (), "")]
    assert all(t.seconds > 0 for t in timings)


def test_global_average_pool_mean_matches_numpy():
    """The BLAS mean of GlobalAveragePool against np.mean: float32 and
    float64, a transposed (non-contiguous) view, NaN and infinity carried
    through, integers and empty planes through np.mean itself."""
    from fastconv.onnx._ops import _spatial_mean

    x = np.random.default_rng(3).standard_normal((3, 4, 5, 6))
    views = [x, x.astype(np.float32), x.transpose(0, 1, 3, 2),
             x[:, :, ::2, :]]
    special = x.copy()
    special[0, 1, 2, 3] = np.nan
    special[1, 2, 0, 0] = np.inf
    views.append(special)
    for view in views:
        before = view.copy()
        got = _spatial_mean(view, axis=(2, 3), keepdims=True)
        expected = np.mean(view, axis=(2, 3), keepdims=True)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(view, before)
    integers = np.arange(24).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(
        _spatial_mean(integers, axis=(2, 3), keepdims=True),
        np.mean(integers, axis=(2, 3), keepdims=True))
