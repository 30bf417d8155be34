"""Writing fastconv.nn models as ONNX graphs (built with ``onnx.helper``).

The graph is the model's inference computation: BatchNorm2d with its
running statistics, Dropout as the identity, whatever mode the model is in
(the model itself is not touched). Supported: ``Sequential`` stacks of
Conv2d, ConvTranspose2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d, Conv1d, MaxPool1d, AvgPool1d, Flatten, Linear, Dropout
and Identity, and the bundled SmallCNN and ResNet (with its BasicBlocks).
"""

from __future__ import annotations

import os

import numpy as np

from fastconv import _shapes, _validate
from fastconv.onnx._reader import require_onnx

#: The opset written (onnxruntime 1.17 and later run it).
EXPORT_OPSET = 17
#: IR version 8 is what opset 17 was released with; older runtimes reject
#: newer IR versions.
EXPORT_IR_VERSION = 8


class _GraphWriter:
    """Collects nodes and initializers while the model is walked; each
    ``emit`` returns the output value name and its (N, ...) shape."""

    def __init__(self, dtype):
        import onnx

        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.elem_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes = []
        self.initializers = []
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def constant(self, stem: str, array) -> str:
        name = self.fresh(stem)
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                              name))
        return name

    def node(self, op_type: str, inputs, stem: str, **attributes) -> str:
        output = self.fresh(stem)
        self.nodes.append(self.onnx.helper.make_node(
            op_type, list(inputs), [output], name=output, **attributes))
        return output


# ------------------------------------------------------------ module writers

def _write_sequence(writer, modules, value, shape):
    for module in modules:
        value, shape = _write(writer, module, value, shape)
    return value, shape


def _conv_pads(layer, shape):
    """(top, left, bottom, right) of a Conv2d layer's padding."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        top, bottom = _shapes.same_padding(layer.kernel_size[0],
                                           layer.dilation[0])
        left, right = _shapes.same_padding(layer.kernel_size[1],
                                           layer.dilation[1])
        return (top, left, bottom, right)
    return _validate.padding_2d(layer.padding)


def _write_conv(writer, layer, value, shape):
    top, left, bottom, right = _conv_pads(layer, shape)
    inputs = [value, writer.constant("weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(writer.constant("bias", layer.bias.data))
    output = writer.node(
        "Conv", inputs, "conv", kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride), dilations=list(layer.dilation),
        pads=[top, left, bottom, right], group=layer.groups)
    height = _shapes.conv_output_size(shape[2], layer.kernel_size[0],
                                      layer.stride[0], top, bottom,
                                      layer.dilation[0])
    width = _shapes.conv_output_size(shape[3], layer.kernel_size[1],
                                     layer.stride[1], left, right,
                                     layer.dilation[1])
    return output, (shape[0], layer.out_channels, height, width)


def _write_conv_transpose(writer, layer, value, shape):
    top, left, bottom, right = _validate.padding_2d(layer.padding)
    inputs = [value, writer.constant("weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(writer.constant("bias", layer.bias.data))
    output = writer.node(
        "ConvTranspose", inputs, "convtranspose",
        kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
        dilations=list(layer.dilation), pads=[top, left, bottom, right],
        output_padding=list(layer.output_padding), group=layer.groups)
    sizes = [
        (size - 1) * stride - before - after + dilation * (kernel - 1)
        + extra + 1
        for size, stride, before, after, dilation, kernel, extra in zip(
            shape[2:], layer.stride, (top, left), (bottom, right),
            layer.dilation, layer.kernel_size, layer.output_padding)]
    return output, (shape[0], layer.out_channels, *sizes)


def _single(value, name):
    """A 1-D layer's int-or-1-tuple argument as an int."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    return _validate.pair(value, name, minimum=0)[0]


def _pads_1d(padding):
    """(left, right) of a 1-D layer's padding: an int, (p,) or (l, r)."""
    if isinstance(padding, (tuple, list)):
        padding = padding[0] if len(padding) == 1 else tuple(padding)
    return _validate.padding_1d(padding)


def _write_conv1d(writer, layer, value, shape):
    (kernel,), (stride,), (dilation,) = (layer.kernel_size, layer.stride,
                                         layer.dilation)
    if layer.padding == "same":
        left, right = _shapes.same_padding(kernel, dilation)
    elif layer.padding == "valid":
        left, right = 0, 0
    else:
        left, right = _pads_1d(layer.padding)
    inputs = [value, writer.constant("weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(writer.constant("bias", layer.bias.data))
    output = writer.node("Conv", inputs, "conv1d", kernel_shape=[kernel],
                         strides=[stride], dilations=[dilation],
                         pads=[left, right], group=layer.groups)
    length = _shapes.conv_output_size(shape[2], kernel, stride, left, right,
                                      dilation)
    return output, (shape[0], layer.out_channels, length)


def _write_pool1d(writer, layer, value, shape):
    kernel = _single(layer.kernel_size, "kernel_size")
    stride = _single(layer.stride, "stride")
    left, right = _pads_1d(layer.padding)
    ceil_mode = bool(layer.ceil_mode)
    attributes = dict(kernel_shape=[kernel], strides=[stride],
                      pads=[left, right], ceil_mode=int(ceil_mode))
    dilation = 1
    if hasattr(layer, "count_include_pad"):
        op_type = "AveragePool"
        attributes["count_include_pad"] = int(bool(layer.count_include_pad))
    else:
        if layer.return_indices:
            raise ValueError("a MaxPool1d with return_indices=True cannot be "
                             "exported (its indices are not ONNX's)")
        op_type = "MaxPool"
        dilation = _single(layer.dilation, "dilation")
        attributes["dilations"] = [dilation]
    length = _shapes.pool_output_size(shape[2], kernel, stride, left, right,
                                      dilation, ceil_mode)
    return writer.node(op_type, [value], op_type.lower(), **attributes), \
        (shape[0], shape[1], length)


def _write_batch_norm(writer, layer, value, shape):
    if not layer.track_running_stats:
        raise ValueError(
            "a BatchNorm2d with track_running_stats=False normalises with "
            "batch statistics even in eval mode; it has no ONNX inference "
            "form")
    channels = layer.num_features
    gamma = layer.weight.data if layer.weight is not None else np.ones(
        channels, writer.dtype)
    beta = layer.bias.data if layer.bias is not None else np.zeros(
        channels, writer.dtype)
    inputs = [value] + [writer.constant(stem, np.asarray(array,
                                                         writer.dtype))
                        for stem, array in (("bn_scale", gamma),
                                            ("bn_bias", beta),
                                            ("bn_mean", layer.running_mean),
                                            ("bn_var", layer.running_var))]
    output = writer.node("BatchNormalization", inputs, "batchnorm",
                         epsilon=float(layer.eps))
    if layer._relu:  # a BatchNormReLU2d
        output = writer.node("Relu", [output], "relu")
    return output, shape


def _pool_arguments(layer):
    kernel = _validate.pair(layer.kernel_size, "kernel_size", minimum=1)
    stride = _validate.pair(layer.stride, "stride", minimum=1)
    top, left, bottom, right = _validate.padding_2d(layer.padding)
    return kernel, stride, (top, left, bottom, right)


def _pooled_shape(shape, kernel, stride, pads, dilation, ceil_mode):
    top, left, bottom, right = pads
    height = _shapes.pool_output_size(shape[2], kernel[0], stride[0], top,
                                      bottom, dilation[0], ceil_mode)
    width = _shapes.pool_output_size(shape[3], kernel[1], stride[1], left,
                                     right, dilation[1], ceil_mode)
    return (shape[0], shape[1], height, width)


def _write_max_pool(writer, layer, value, shape):
    if layer.return_indices:
        raise ValueError("a MaxPool2d with return_indices=True cannot be "
                         "exported (its indices are not ONNX's)")
    kernel, stride, pads = _pool_arguments(layer)
    dilation = _validate.pair(layer.dilation, "dilation", minimum=1)
    output = writer.node(
        "MaxPool", [value], "maxpool", kernel_shape=list(kernel),
        strides=list(stride), pads=list(pads), dilations=list(dilation),
        ceil_mode=int(bool(layer.ceil_mode)))
    return output, _pooled_shape(shape, kernel, stride, pads, dilation,
                                 bool(layer.ceil_mode))


def _write_avg_pool(writer, layer, value, shape):
    kernel, stride, pads = _pool_arguments(layer)
    output = writer.node(
        "AveragePool", [value], "avgpool", kernel_shape=list(kernel),
        strides=list(stride), pads=list(pads),
        ceil_mode=int(bool(layer.ceil_mode)),
        count_include_pad=int(bool(layer.count_include_pad)))
    return output, _pooled_shape(shape, kernel, stride, pads, (1, 1),
                                 bool(layer.ceil_mode))


def _write_adaptive_avg_pool(writer, layer, value, shape):
    out_h, out_w = layer.output_size
    if (out_h, out_w) == (1, 1):
        return writer.node("GlobalAveragePool", [value], "gap"), \
            (shape[0], shape[1], 1, 1)
    if shape[2] % out_h or shape[3] % out_w:
        raise ValueError(
            f"AdaptiveAvgPool2d({layer.output_size}) of a {shape[2]}x"
            f"{shape[3]} input is not an even pooling; it cannot be exported")
    kernel = [shape[2] // out_h, shape[3] // out_w]
    return writer.node("AveragePool", [value], "avgpool", kernel_shape=kernel,
                       strides=kernel), (shape[0], shape[1], out_h, out_w)


def _write_flatten(writer, layer, value, shape):
    rank = len(shape)
    start, end = layer.start_dim % rank, layer.end_dim % rank
    if end != rank - 1:
        raise ValueError(
            f"Flatten(start_dim={layer.start_dim}, end_dim={layer.end_dim}) "
            f"cannot be exported (only flattening to the last dim)")
    flat = int(np.prod(shape[start:]))
    if start == 0:
        raise ValueError("Flatten(start_dim=0) would merge the batch; it "
                         "cannot be exported")
    return writer.node("Flatten", [value], "flatten", axis=start), \
        tuple(shape[:start]) + (flat,)


def _write_linear(writer, layer, value, shape):
    if len(shape) != 2:
        raise ValueError(
            f"only a Linear on (N, features) can be exported, got an input of "
            f"shape {shape}")
    inputs = [value, writer.constant("fc_weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(writer.constant("fc_bias", layer.bias.data))
    return writer.node("Gemm", inputs, "gemm", transB=1), \
        (shape[0], layer.out_features)


def _write_basic_block(writer, block, value, shape):
    main, main_shape = _write_sequence(
        writer, [block.conv1, block.bn1, block.conv2, block.bn2],
        value, shape)
    shortcut = value
    if block.downsample is not None:
        shortcut, _ = _write(writer, block.downsample, value, shape)
    total = writer.node("Add", [main, shortcut], "add")
    return _write(writer, block.relu2, total, main_shape)


def _writers():
    from fastconv import nn
    from fastconv.models import BasicBlock, ResNet, SmallCNN

    def relu(writer, layer, value, shape):
        return writer.node("Relu", [value], "relu"), shape

    def identity(writer, layer, value, shape):
        return value, shape

    def sequential(writer, module, value, shape):
        return _write_sequence(writer, list(module), value, shape)

    def bundled(writer, model, value, shape):
        # The bundled models run their layers in this list (forward's order).
        return _write_sequence(writer, model._sequence, value, shape)

    return {
        nn.Conv2d: _write_conv, nn.ConvTranspose2d: _write_conv_transpose,
        nn.Conv1d: _write_conv1d, nn.MaxPool1d: _write_pool1d,
        nn.AvgPool1d: _write_pool1d,
        nn.BatchNorm2d: _write_batch_norm,
        nn.BatchNormReLU2d: _write_batch_norm,
        nn.ReLU: relu, nn.Identity: identity, nn.Dropout: identity,
        nn.MaxPool2d: _write_max_pool, nn.AvgPool2d: _write_avg_pool,
        nn.AdaptiveAvgPool2d: _write_adaptive_avg_pool,
        nn.Flatten: _write_flatten, nn.Linear: _write_linear,
        nn.Sequential: sequential, SmallCNN: bundled, ResNet: bundled,
        BasicBlock: _write_basic_block,
    }


def _write(writer, module, value, shape):
    writer_function = _writers().get(type(module))
    if writer_function is None:
        names = sorted(cls.__name__ for cls in _writers())
        raise TypeError(
            f"cannot export a {type(module).__name__}; exportable modules: "
            + ", ".join(names))
    return writer_function(writer, module, value, shape)


def _input_shape(value):
    """(N, C, H, W), or (N, C, L) for a model of 1-D layers."""
    if not isinstance(value, (tuple, list)) or len(value) not in (3, 4):
        raise ValueError(
            f"input_shape must be (N, C, H, W) or (N, C, L), got {value!r}")
    if len(value) == 3:
        return _validate.shape4(tuple(value) + (1,), "input_shape")[:3]
    return _validate.shape4(tuple(value), "input_shape")


def export(model, path, input_shape, *, input_name="input",
           output_name="output", dynamic_batch=True):
    """Write ``model`` (a fastconv.nn Module) to ``path`` as an ONNX model.

    ``input_shape`` is the (N, C, H, W) (or (N, C, L) for 1-D layers) the
    graph is built for; with
    ``dynamic_batch`` (default) the batch dim is left free (``"N"``), so
    any batch size runs. The graph computes the model's inference output
    (BatchNorm2d from running statistics, Dropout as the identity) in the
    parameters' dtype. Returns the ``onnx.ModelProto`` it wrote.

    Raises TypeError for a module that cannot be exported (the message
    lists those that can) and ValueError for a layer configuration with no
    ONNX form.
    """
    onnx = require_onnx()
    from fastconv import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    shape = _input_shape(input_shape)
    dtype = model.dtype or np.dtype(np.float32)
    writer = _GraphWriter(dtype)
    output, output_shape = _write(writer, model, input_name, shape)
    if output == input_name:
        output = writer.node("Identity", [input_name], "identity")
    writer.nodes[-1].output[0] = output_name
    batch = "N" if dynamic_batch else shape[0]
    graph = onnx.helper.make_graph(
        writer.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info(input_name, writer.elem_type,
                                            [batch] + list(shape[1:]))],
        [onnx.helper.make_tensor_value_info(
            output_name, writer.elem_type,
            [batch] + list(output_shape[1:]))],
        writer.initializers)
    proto = onnx.helper.make_model(
        graph, producer_name="fastconv",
        opset_imports=[onnx.helper.make_opsetid("", EXPORT_OPSET)])
    proto.ir_version = EXPORT_IR_VERSION
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))
    return proto
