"""Run ONNX models on fastconv's kernels, and export fastconv models to ONNX.

``load(path_or_bytes, *, backend=None)`` returns an ``OnnxModel``:
``model(x)`` for a single-input graph, ``model.run({name: array})`` for any,
``model.profile(feeds)`` for per-node times. ``export(model, path,
input_shape)`` writes a ``fastconv.nn`` model (SmallCNN, ResNet, a
Sequential of the layers) as an ONNX file that onnxruntime runs.

The ``onnx`` package (``pip install ".[onnx]"``) parses and writes the
files; nothing here imports onnxruntime.
"""

from fastconv.onnx._export import export
from fastconv.onnx._model import NodeTiming, OnnxModel, load
from fastconv.onnx._ops import OPS as _OPS

#: The ONNX operator types ``load`` runs.
SUPPORTED_OPERATORS = tuple(sorted(_OPS))

__all__ = ["load", "export", "OnnxModel", "NodeTiming",
           "SUPPORTED_OPERATORS"]
