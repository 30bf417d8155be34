"""Loading an ONNX graph into a plan of kernels, and running the plan.

Everything that can be decided once is decided at load time: operator and
attribute support (one error naming every node that cannot run), the
topological order, constant folding (initializers, Constant nodes, shape
subgraphs over static shapes), folding BatchNormalization into the
preceding convolution, fusing a convolution with its activation, and a
liveness plan saying after which step each value is freed and which inputs
a step may overwrite. Running is then one pass over the plan.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import NamedTuple

import numpy as np

from fastconv.onnx import _ops, _reader


class NodeTiming(NamedTuple):
    """Time of one step of the plan (``profile``): ``name`` and ``op_type``
    of its node, ``fused`` the op types folded into it, ``seconds`` the
    median over the repeats, ``kind`` what the kernel computes where that
    says more than the op type (a convolution's ``'3x3/2'``, ``'1x1'``,
    ``'3x3 depthwise'``; else '')."""

    name: str
    op_type: str
    fused: tuple
    seconds: float
    kind: str = ""


class _Step:
    """One kernel call of the plan."""

    __slots__ = ("name", "op_type", "kernel", "inputs", "outputs", "fused",
                 "writable", "frees")

    def __init__(self, node, kernel):
        self.name = node.name
        self.op_type = node.op_type
        self.kernel = kernel
        self.inputs = tuple(node.inputs)
        self.outputs = tuple(node.outputs)
        self.fused = ()
        self.writable = ()
        self.frees = ()


# --------------------------------------------------------------- load steps

def _attribute_value(attribute, node_label):
    """A node attribute as a Python value (tensors checked, then arrays)."""
    from onnx import AttributeProto, helper

    kind = attribute.type
    if kind in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise _ops.Unsupported(
            f"attribute {attribute.name!r} holds a subgraph (control flow "
            f"is not supported)")
    if kind in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS,
                AttributeProto.TENSORS, AttributeProto.TYPE_PROTO,
                AttributeProto.TYPE_PROTOS):
        raise _ops.Unsupported(
            f"attribute {attribute.name!r} of type "
            f"{AttributeProto.AttributeType.Name(kind)}")
    if kind == AttributeProto.TENSOR:
        return _reader.tensor_to_array(attribute.t,
                                       f"{node_label} attribute "
                                       f"{attribute.name!r}")
    value = helper.get_attribute_value(attribute)
    if kind == AttributeProto.STRING:
        return value.decode("utf-8", "replace")
    if kind == AttributeProto.STRINGS:
        return [v.decode("utf-8", "replace") for v in value]
    return value


def _node_text(op_type, name, outputs) -> str:
    """How errors name a node: by its name, else by its outputs."""
    return f"{op_type} node {name!r}" if name else \
        f"{op_type} node (outputs {list(outputs)})"


def _check_operators(graph) -> None:
    """One error naming every node type that cannot run, before anything
    else is built."""
    unsupported = Counter()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            unsupported[f"{node.domain}.{node.op_type}"] += 1
        elif node.op_type not in _ops.OPS:
            unsupported[node.op_type] += 1
    if unsupported:
        listed = ", ".join(f"{op} ({count} node{'s' * (count > 1)})"
                           for op, count in sorted(unsupported.items()))
        raise ValueError(
            f"unsupported ONNX operators: {listed}. fastconv.onnx runs: "
            + ", ".join(sorted(_ops.OPS)))


def _run_checker(model) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"invalid ONNX model: {first}") from None


def _value_shape(value_info):
    """(dims, elem_type) of a ValueInfoProto's tensor type; dims are ints,
    symbol strings or None; dims None when the rank is unknown."""
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return None, None
    if not tensor_type.HasField("shape"):
        return None, tensor_type.elem_type
    dims = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims), tensor_type.elem_type


def _static_shapes(model) -> dict:
    """Value name -> shape tuple from ONNX shape inference (best effort: an
    empty dict where inference fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is an optimisation only
        return {}
    shapes = {}
    graph = inferred.graph
    for value_info in list(graph.value_info) + list(graph.input) + list(
            graph.output):
        dims, _ = _value_shape(value_info)
        if dims is not None:
            shapes[value_info.name] = dims
    return shapes


def _topological_order(nodes, available) -> list:
    """Nodes in an order where every input is produced before use (stable:
    the file's order when it already is one). A missing input or a cycle is
    a ValueError."""
    producers = {}
    for index, node in enumerate(nodes):
        for name in node.outputs:
            if name:
                if name in producers or name in available:
                    raise ValueError(
                        f"invalid ONNX model: value {name!r} is produced "
                        f"twice")
                producers[name] = index
    waiting = [0] * len(nodes)
    users = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for name in set(node.inputs):
            if not name or name in available:
                continue
            if name not in producers:
                label = _node_text(node.op_type, node.name, node.outputs)
                raise ValueError(
                    f"invalid ONNX model: {label} reads {name!r}, which no "
                    f"node, input or initializer provides (a truncated "
                    f"file?)")
            waiting[index] += 1
            users[producers[name]].append(index)
    import heapq

    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ValueError("invalid ONNX model: the graph has a cycle")
    return order


def _consumers(steps, graph_outputs):
    """Value name -> number of reads (graph outputs count as one)."""
    counts = Counter(graph_outputs)
    for step in steps:
        for name in step.inputs:
            if name:
                counts[name] += 1
    return counts


def _fuse(steps, graph_outputs, backend=None):
    """Fold inference BatchNormalization into the Conv before it, then an
    activation into the Conv before it, where the Conv's output has no
    other reader; then a Relu into the Add before it (``_fuse_add_relu``).
    Returns the shorter plan."""
    for follower_types in (("BatchNormalization",),
                           _ops.FUSABLE_ACTIVATIONS):
        producer_of = {}
        for index, step in enumerate(steps):
            for name in step.outputs:
                producer_of[name] = index
        reads = _consumers(steps, graph_outputs)
        removed = set()
        for step in steps:
            if step.op_type not in follower_types or not step.inputs:
                continue
            source = producer_of.get(step.inputs[0])
            if source is None:
                continue
            conv = steps[source]
            if not isinstance(conv.kernel, _ops.ConvKernel) or \
                    reads[step.inputs[0]] != 1:
                continue
            if conv.kernel.activation is not None:
                continue  # nothing folds past an activation
            if step.op_type == "BatchNormalization":
                _fold_batch_norm(conv.kernel, step.kernel)
            else:
                conv.kernel.activation = step.kernel.function
            conv.outputs = step.outputs
            conv.fused = conv.fused + (step.op_type,)
            removed.add(id(step))
        steps = [step for step in steps if id(step) not in removed]
    return _fuse_add_relu(steps, graph_outputs, backend)


def _fuse_add_relu(steps, graph_outputs, backend):
    """Relu(Add(a, b)) where the sum has no other reader becomes one step
    (``_ops.AddReluKernel``): resnet's residual junctions, one pass over
    the activations instead of two."""
    producer_of = {name: index for index, step in enumerate(steps)
                   for name in step.outputs}
    reads = _consumers(steps, graph_outputs)
    removed = set()
    for step in steps:
        if step.op_type != "Relu" or not step.inputs:
            continue
        source = producer_of.get(step.inputs[0])
        if source is None or reads[step.inputs[0]] != 1:
            continue
        add = steps[source]
        if add.op_type != "Add" or add.fused or len(add.inputs) != 2:
            continue
        add.kernel = _ops.AddReluKernel(backend)
        add.outputs = step.outputs
        add.fused = ("Relu",)
        removed.add(id(step))
    return [step for step in steps if id(step) not in removed]


def _fold_batch_norm(conv_kernel, affine_kernel) -> None:
    """weight * scale and bias * scale + shift, per output channel, computed
    in float64 and stored in the weight's dtype."""
    weight = conv_kernel.weight
    scale, shift = affine_kernel.scale, affine_kernel.shift
    conv_kernel.weight = np.ascontiguousarray(
        (weight.astype(np.float64) * scale[:, None, None, None])
        .astype(weight.dtype))
    bias = 0.0 if conv_kernel.bias is None else conv_kernel.bias.astype(
        np.float64)
    conv_kernel.bias = (bias * scale + shift).astype(weight.dtype)


def _plan_memory(steps, graph_inputs, constants, graph_outputs) -> set:
    """Fill each step's ``frees`` (values dead after it) and ``writable``
    (inputs it may overwrite: the value dies at this step, nothing alive
    after it shares its memory, and it is neither a constant, a graph input
    nor read twice by the step).

    Returns the graph outputs to copy before handing them out: those that
    share memory with a constant, a graph input or an earlier output.
    """
    forever = len(steps)
    last_use = {}
    for index, step in enumerate(steps):
        for name in step.inputs:
            if name:
                last_use[name] = index
    for name in graph_outputs:
        last_use[name] = forever
    # Memory owner of each value: view outputs share their input's owner;
    # constants and graph inputs are never written.
    owner = {name: None for name in list(constants) + list(graph_inputs)}
    for step in steps:
        for position, name in enumerate(step.outputs):
            if not name:
                continue
            if step.kernel.view and position == 0 and step.inputs:
                owner[name] = owner.get(step.inputs[0])
            else:
                owner[name] = name
    owner_last_use = {}
    for name, root in owner.items():
        if root is not None:
            owner_last_use[root] = max(owner_last_use.get(root, -1),
                                       last_use.get(name, -1))
    freed = set()
    for index, step in enumerate(steps):
        counts = Counter(step.inputs)
        step.writable = tuple(
            bool(name) and counts[name] == 1 and last_use.get(name) == index
            and owner.get(name) is not None
            and owner_last_use[owner[name]] == index
            for name in step.inputs)
        dead = [name for name in set(step.inputs) | set(step.outputs)
                if name and name not in freed and name not in constants
                and last_use.get(name, -1) <= index]
        freed.update(dead)
        step.frees = tuple(dead)
    to_copy, seen = set(), set()
    for name in graph_outputs:
        root = owner.get(name)
        if root is None or root in seen:
            to_copy.add(name)
        seen.add(root)
    return to_copy


# ------------------------------------------------------------------ the model

class OnnxModel:
    """An ONNX graph ready to run on fastconv's kernels.

    ``model(x)`` runs a single-input graph and returns its output (a tuple
    of outputs when the graph has several); ``model.run({name: array})``
    returns ``{output name: array}``. Inputs are NumPy arrays of the dtype
    and rank the model declares (fixed dims must match, symbolic ones such
    as a batch size are free); they are never modified. ``backend`` (None:
    the process default at call time) picks the convolution and pooling
    kernels.
    """

    def __init__(self, steps, constants, inputs, outputs, copied_outputs,
                 backend, opset, producer):
        self._steps = steps
        self._constants = constants
        self._inputs = inputs      # name -> (dims, dtype)
        self._output_names = outputs
        self.backend = backend
        self.opset = opset
        self.producer = producer
        self._copied_outputs = copied_outputs

    @property
    def input_names(self) -> list:
        return list(self._inputs)

    @property
    def output_names(self) -> list:
        return list(self._output_names)

    @property
    def input_shapes(self) -> dict:
        """Input name -> declared shape (ints, or a str / None for a free
        dim)."""
        return {name: dims for name, (dims, _) in self._inputs.items()}

    @property
    def input_dtypes(self) -> dict:
        return {name: dtype for name, (_, dtype) in self._inputs.items()}

    @property
    def op_counts(self) -> dict:
        """Operator type -> number of steps in the plan (after folding and
        fusion; a fused step counts as e.g. ``Conv+Relu``)."""
        return dict(Counter("+".join((step.op_type,) + step.fused)
                            for step in self._steps))

    def __repr__(self) -> str:
        return (f"OnnxModel(inputs={self.input_shapes}, outputs="
                f"{self.output_names}, steps={len(self._steps)}, opset="
                f"{self.opset})")

    def __call__(self, x):
        if len(self._inputs) != 1:
            raise TypeError(
                f"the model has {len(self._inputs)} inputs "
                f"({self.input_names}); call model.run({{name: array}})")
        result = self.run({self.input_names[0]: x})
        outputs = [result[name] for name in self._output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def run(self, feeds) -> dict:
        """Run the graph on ``feeds`` ({input name: ndarray}); returns
        {output name: ndarray}."""
        return self._execute(self._check_feeds(feeds), None)

    def profile(self, feeds, repeat: int = 5) -> list:
        """Per-step wall time: ``NodeTiming`` per step of the plan, in
        execution order, each the median of ``repeat`` runs (after one
        warm-up run)."""
        if isinstance(repeat, bool) or not isinstance(repeat, int) or \
                repeat < 1:
            raise ValueError(f"repeat must be a positive int, got {repeat!r}")
        feeds = self._check_feeds(feeds)
        self._execute(feeds, None)
        samples = [[] for _ in self._steps]
        for _ in range(repeat):
            self._execute(feeds, samples)
        return [NodeTiming(step.name, step.op_type, step.fused,
                           float(np.median(times)), step.kernel.kind())
                for step, times in zip(self._steps, samples)]

    # ---------------------------------------------------------------- running

    def _check_feeds(self, feeds) -> dict:
        if not isinstance(feeds, dict):
            raise TypeError(
                f"feeds must be a dict {{input name: numpy.ndarray}}, got "
                f"{type(feeds).__name__}")
        unknown = sorted(set(feeds) - set(self._inputs), key=str)
        if unknown:
            raise ValueError(f"unknown model inputs {unknown}; the model's "
                             f"inputs are {self.input_names}")
        missing = [name for name in self._inputs if name not in feeds]
        if missing:
            raise ValueError(f"missing model inputs {missing}")
        checked = {}
        for name, (dims, dtype) in self._inputs.items():
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                raise TypeError(
                    f"input {name!r} must be a numpy.ndarray, got "
                    f"{type(value).__name__}")
            if value.dtype != dtype:
                raise TypeError(
                    f"input {name!r} must have dtype {dtype} (as the model "
                    f"declares), got {value.dtype}")
            if dims is not None:
                if value.ndim != len(dims) or any(
                        isinstance(d, int) and d != s
                        for d, s in zip(dims, value.shape)):
                    shown = tuple(d if isinstance(d, int) else "?"
                                  for d in dims)
                    raise ValueError(
                        f"input {name!r} must have shape {shown} (as the "
                        f"model declares), got {value.shape}")
            if value.size == 0:
                raise ValueError(f"input {name!r} is empty (shape "
                                 f"{value.shape})")
            checked[name] = value
        return checked

    def _execute(self, feeds, samples) -> dict:
        values = dict(self._constants)
        values.update(feeds)
        for index, step in enumerate(self._steps):
            arguments = [values[name] if name else None
                         for name in step.inputs]
            started = time.perf_counter() if samples is not None else 0.0
            try:
                results = step.kernel(arguments, step.writable)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{_step_text(step)}: {exc}") from None
            if samples is not None:
                samples[index].append(time.perf_counter() - started)
            for name, result in zip(step.outputs, results):
                if name:
                    values[name] = result
            for name in step.frees:
                del values[name]
        # The caller may modify what it gets: an output sharing memory with
        # a constant, an input or another output is copied.
        return {name: np.array(values[name], copy=True)
                if name in self._copied_outputs else values[name]
                for name in self._output_names}


def _step_text(step) -> str:
    return _node_text("+".join((step.op_type,) + step.fused), step.name,
                      step.outputs)


# ------------------------------------------------------------------- loading

def _check_backend(backend):
    if backend is not None:
        from fastconv.backends import resolve

        resolve("conv2d_forward", backend)  # raises for a bad name
    return backend


def build_model(model, backend=None, fuse=True) -> OnnxModel:
    """An OnnxModel from a parsed ``onnx.ModelProto``."""
    backend = _check_backend(backend)
    opset = _reader.default_opset(model)
    graph = model.graph
    _check_operators(graph)
    if len(graph.sparse_initializer):
        raise ValueError("sparse initializers are not supported")
    constants = {}
    for tensor in graph.initializer:
        constants[tensor.name] = _reader.tensor_to_array(tensor,
                                                         "initializer")

    inputs = {}
    for value_info in graph.input:
        if value_info.name in constants:
            continue
        dims, elem_type = _value_shape(value_info)
        dtype = _reader.element_dtype(elem_type) if elem_type else None
        if dtype is None or dtype.kind != "f":
            raise ValueError(
                f"model input {value_info.name!r} has element type "
                f"{_reader.element_type_name(elem_type or 0)}; fastconv.onnx"
                f" takes float32 or float64 inputs")
        inputs[value_info.name] = (dims, dtype)
    if not inputs:
        raise ValueError("the model has no inputs")
    output_names = [value_info.name for value_info in graph.output]
    if not output_names:
        raise ValueError("the model has no outputs")

    errors = []
    nodes = []
    for proto in graph.node:
        label = _node_text(proto.op_type, proto.name, proto.output)
        try:
            attrs = {attribute.name: _attribute_value(attribute, label)
                     for attribute in proto.attribute}
        except _ops.Unsupported as exc:
            errors.append(f"{label}: {exc}")
            attrs = None  # reported; not built
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        nodes.append(_ops.Node(proto.name, proto.op_type,
                               tuple(proto.input), tuple(proto.output),
                               attrs))
    _run_checker(model)  # after the tensor checks: those say more
    nodes = _topological_order(nodes, set(constants) | set(inputs))
    for name in output_names:
        if name not in constants and name not in inputs and not any(
                name in node.outputs for node in nodes):
            raise ValueError(f"invalid ONNX model: output {name!r} is not "
                             f"produced by any node")

    shapes = _static_shapes(model)
    for name, (dims, _) in inputs.items():
        shapes.setdefault(name, dims)
    context = _ops.BuildContext(opset, backend, constants.get)
    steps = []
    for node in nodes:
        if node.attrs is None:
            continue
        label = _node_text(node.op_type, node.name, node.outputs)
        try:
            kernel = _ops.build(node, context)
        except _ops.Unsupported as exc:
            errors.append(f"{label}: {exc}")
            continue
        folded = _fold_constant(node, kernel, constants, shapes, label)
        if not folded:
            steps.append(_Step(node, kernel))
    if errors:
        raise ValueError("the model uses what fastconv.onnx cannot run: "
                         + "; ".join(errors))

    steps = _drop_unused(steps, output_names)
    if fuse:
        steps = _fuse(steps, output_names, backend)
    copied_outputs = _plan_memory(steps, inputs, constants, output_names)
    used = {name for step in steps for name in step.inputs} | set(
        output_names)
    constants = {name: value for name, value in constants.items()
                 if name in used}
    return OnnxModel(steps, constants, inputs, output_names, copied_outputs,
                     backend, opset,
                     f"{model.producer_name} {model.producer_version}".strip())


def _fold_constant(node, kernel, constants, shapes, label) -> bool:
    """Run a node at load time when its inputs are all constants (or it is
    a Shape of a statically known shape); its outputs become constants."""
    present = [name for name in node.inputs if name]
    if node.op_type == "Shape":
        dims = shapes.get(node.inputs[0])
        if dims is None or not all(isinstance(d, int) for d in dims):
            return False
        # Only the shape matters: a zero-strided array of it, no memory.
        arguments = [np.broadcast_to(np.zeros((), np.uint8), dims)]
    elif all(name in constants for name in present):
        arguments = [constants[name] if name else None
                     for name in node.inputs]
    else:
        return False
    try:
        results = kernel(arguments, (False,) * len(arguments))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{label}: {exc}") from None
    for name, result in zip(node.outputs, results):
        if name:
            constants[name] = np.asarray(result)
    return True


def _drop_unused(steps, output_names) -> list:
    """Steps whose outputs nothing reads (dead after folding) removed."""
    needed = set(output_names)
    kept = []
    for step in reversed(steps):
        if any(name in needed for name in step.outputs if name):
            kept.append(step)
            needed.update(name for name in step.inputs if name)
    return kept[::-1]


def load(source, *, backend=None, fuse=True) -> OnnxModel:
    """Load an ONNX model from a path or from its bytes.

    ``backend`` (None: the process default at call time) runs the
    convolutions and pooling. ``fuse`` (default True) folds inference
    BatchNormalization into the preceding convolution and runs an
    activation that follows a convolution in place on its output.

    Raises ValueError for a file that is not a valid, self-contained ONNX
    model (truncated, corrupt, a tensor whose declared size does not match
    its data), an opset outside the supported range, or nodes this
    implementation cannot run (all of them named in one message), and
    ImportError when the ``onnx`` package is missing.
    """
    _reader.require_onnx()
    data = _reader.read_model_bytes(source)
    return build_model(_reader.parse_model(data), backend, fuse)
