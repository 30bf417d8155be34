"""Reading an ONNX file safely: sizes checked before anything is allocated.

A model file is hostile input. Before the ``onnx`` package materialises a
tensor, every initializer and ``Constant`` value is checked: a supported
element type, non-negative dims, and stored data whose length matches the
declared dims exactly (so a 20-byte file cannot declare a 1 TB weight and
have it allocated). External data files are refused (the model must be
self-contained), and the file itself must fit protobuf's 2 GiB limit.
"""

from __future__ import annotations

import math
import os

import numpy as np

#: Largest model file read (protobuf cannot parse more than 2 GiB).
MAX_MODEL_BYTES = 2**31 - 1

#: The ONNX opsets (default domain) whose operator semantics are
#: implemented here. Versions below 9 changed BatchNormalization, Upsample
#: and broadcasting in ways not handled.
MIN_OPSET = 9


def require_onnx():
    """The ``onnx`` module, or an ImportError naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "fastconv.onnx needs the 'onnx' package: pip install "
            "\".[onnx]\" (from a clone) or pip install onnx") from None
    return onnx


def _element_types():
    """ONNX TensorProto element type -> (NumPy dtype, TensorProto field that
    holds the values when there is no raw_data)."""
    from onnx import TensorProto

    return {
        TensorProto.FLOAT: (np.dtype(np.float32), "float_data"),
        TensorProto.DOUBLE: (np.dtype(np.float64), "double_data"),
        TensorProto.INT64: (np.dtype(np.int64), "int64_data"),
        TensorProto.INT32: (np.dtype(np.int32), "int32_data"),
        TensorProto.INT16: (np.dtype(np.int16), "int32_data"),
        TensorProto.INT8: (np.dtype(np.int8), "int32_data"),
        TensorProto.UINT8: (np.dtype(np.uint8), "int32_data"),
        TensorProto.BOOL: (np.dtype(np.bool_), "int32_data"),
    }


def element_dtype(elem_type: int) -> np.dtype | None:
    """The NumPy dtype of an ONNX element type, None if unsupported."""
    entry = _element_types().get(elem_type)
    return None if entry is None else entry[0]


def element_type_name(elem_type: int) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def read_model_bytes(source) -> bytes:
    """The serialized model from a path or from bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"ONNX model file {path!r} does not exist")
        size = os.path.getsize(path)
        if size > MAX_MODEL_BYTES:
            raise ValueError(
                f"ONNX model file {path!r} is {size} bytes; at most "
                f"{MAX_MODEL_BYTES} (protobuf's limit) can be read")
        with open(path, "rb") as handle:
            # the size it had, plus one byte to see it grow (a read of
            # MAX_MODEL_BYTES reserves 2 GiB whatever the file holds)
            data = handle.read(size + 1)
        if len(data) != size:
            raise ValueError(
                f"ONNX model file {path!r} changed while it was read (it "
                f"had {size} bytes); read it again once it is written")
    else:
        raise TypeError(
            "model must be a path (str or os.PathLike) or the model's bytes, "
            f"got {type(source).__name__}")
    if not data:
        raise ValueError("the ONNX model is empty (0 bytes)")
    if len(data) > MAX_MODEL_BYTES:
        raise ValueError(f"the ONNX model is over {MAX_MODEL_BYTES} bytes")
    return data


def parse_model(data: bytes):
    """An ``onnx.ModelProto`` from bytes; a clear ValueError if they are not
    one (truncated, corrupt, not ONNX at all)."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ValueError(
            f"not a valid ONNX model (truncated or corrupt file?): "
            f"{exc}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ValueError(
            "not a valid ONNX model (truncated or corrupt file?): it has no "
            "graph nodes")
    return model


def default_opset(model) -> int:
    """The model's opset of the default ("ai.onnx") domain, checked."""
    import onnx.defs

    versions = [entry.version for entry in model.opset_import
                if entry.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError("the ONNX model imports no default-domain opset")
    opset = int(versions[0])
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"unsupported ONNX opset {opset}: fastconv.onnx runs opsets "
            f"{MIN_OPSET} to {newest}")
    return opset


def check_tensor(tensor, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Check a TensorProto's declared size against the data it carries,
    before anything is allocated. Returns its dtype and shape."""
    from onnx import TensorProto

    name = f"{where} {tensor.name!r}" if tensor.name else where
    if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
        raise ValueError(
            f"{name} keeps its data in an external file; fastconv.onnx "
            f"reads self-contained models only (save with "
            f"save_as_external_data=False)")
    if tensor.HasField("segment"):
        raise ValueError(f"{name} is a segmented tensor (not supported)")
    entry = _element_types().get(tensor.data_type)
    if entry is None:
        raise ValueError(
            f"{name} has element type "
            f"{element_type_name(tensor.data_type)}, not supported")
    dtype, field = entry
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{name} declares negative dims {list(dims)}")
    count = math.prod(dims)
    if tensor.raw_data:
        expected = count * dtype.itemsize
        if len(tensor.raw_data) != expected:
            raise ValueError(
                f"{name} declares dims {list(dims)} ({expected} bytes of "
                f"{dtype}) but carries {len(tensor.raw_data)} bytes")
    else:
        stored = len(getattr(tensor, field))
        other_fields = [other for other in ("float_data", "double_data",
                                            "int64_data", "int32_data",
                                            "uint64_data", "string_data")
                        if other != field and len(getattr(tensor, other))]
        if stored != count or other_fields:
            raise ValueError(
                f"{name} declares dims {list(dims)} ({count} values of "
                f"{dtype}) but carries {stored} values")
    return dtype, dims


def tensor_to_array(tensor, where: str) -> np.ndarray:
    """The values of a TensorProto, after ``check_tensor``."""
    from onnx import numpy_helper

    dtype, dims = check_tensor(tensor, where)
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array, dtype=dtype).reshape(dims)
