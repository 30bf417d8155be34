"""Checkpoints: one ``.npz`` file with the weights and the model's config.

Layout (plain NumPy, readable with ``np.load(path)`` and no fastconv):

``config``
    a 0-d unicode array holding JSON: ``{"format": 1, "model": {...},
    "dtype": "float32", "metadata": {...}}``; ``model`` is the ``config`` dict
    of a bundled model (``architecture`` plus its constructor arguments), or
    null for any other ``nn.Module`` (state only: ``load_checkpoint(path,
    model=module)`` restores it into a module the caller builds);
    ``metadata`` anything the caller adds (the dataset, its normalisation,
    class names, metrics).
``state/<key>``
    one array per ``state_dict`` entry, PyTorch's keys
    (``state/conv1.weight``, ``state/bn1.running_mean``...).

No pickles. Files are treated as hostile: before any array is read or any
model is built, the config is checked field by field against the ranges in
``LIMITS``, the state it implies is bounded by ``MAX_STATE_BYTES``, and every
member's name, ``.npy`` header (dtype, shape) and the zip's declared size are
checked against that state. Arrays are then read exactly to their declared
size, and the zip's CRC is checked. Any failure is a ValueError naming the
file and what is wrong.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
import zipfile
from collections import OrderedDict

import numpy as np

from fastconv.models.resnet import ResNet
from fastconv.models.small_cnn import SmallCNN

FORMAT_VERSION = 1
_STATE_PREFIX = "state/"
_CONFIG_MEMBER = "config.npy"

#: Largest state (all arrays together, in bytes) a checkpoint may hold unless
#: ``max_bytes=`` says otherwise; also the largest model a config may imply.
MAX_STATE_BYTES = 2 * 1024**3
#: Largest ``config`` member: JSON with the config and the metadata.
MAX_CONFIG_BYTES = 16 * 1024**2
#: Largest number of zip members (each costs a ZipInfo while reading).
MAX_MEMBERS = 100_000
#: Deepest ResNet a config (or ``fastconv train --model``) may ask for: the
#: deepest network of He et al. (2016), ResNet-1202.
MAX_RESNET_DEPTH = 1202

#: Inclusive ranges of the integer fields of the bundled models' configs.
LIMITS = {
    "in_channels": (1, 65536),
    "num_classes": (1, 1_000_000),
    "image_size": (4, 65536),
    "channels": (1, 65536),
    "widths": (1, 65536),
    "hidden": (0, 1 << 20),
    "depth": (8, MAX_RESNET_DEPTH),
}
_FLOAT_DTYPES = ("float32", "float64")
_READ_CHUNK = 16 * 1024**2
_KIND_NAMES = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}

__all__ = ["build_model", "save_checkpoint", "load_checkpoint",
           "read_checkpoint", "check_model_config", "MAX_STATE_BYTES",
           "MAX_RESNET_DEPTH", "LIMITS"]


# ----------------------------------------------------------- model configs

def _int_field(config, name, where, multiple_of=1, key=None):
    value = config[name]
    low, high = LIMITS[key or name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{where}: {name} must be an integer in "
                         f"[{low}, {high}], got {value!r}")
    if not low <= value <= high or value % multiple_of:
        rule = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise ValueError(f"{where}: {name} must be an integer in "
                         f"[{low}, {high}]{rule}, got {value!r}")
    return int(value)


def _int_list_field(config, name, where, length):
    value = config[name]
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"{where}: {name} must be a list of {length} "
                         f"integers, got {value!r}")
    return [_int_field({name: item}, name, where) for item in value]


_DEFAULTS = {
    "small-cnn": dict(in_channels=1, num_classes=10, image_size=28,
                      channels=[32, 64], hidden=0, dropout=0.25),
    "resnet": dict(depth=8, in_channels=3, num_classes=10,
                   widths=[16, 32, 64]),
}


def check_model_config(config, where="model config") -> dict:
    """The bundled model's config, every field checked; raises ValueError.

    ``config`` is a ``model.config`` dict (``architecture`` plus constructor
    arguments; missing arguments take the constructor's defaults). Integer
    fields must lie in ``LIMITS``, the dropout in [0, 1], and the state the
    config implies within ``MAX_STATE_BYTES`` (float32). ``where`` starts
    each message (the file name). Returns a complete copy.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the model config must be a JSON object, "
                         f"got {type(config).__name__}")
    architecture = config.get("architecture")
    if architecture not in _DEFAULTS:
        raise ValueError(f"{where}: unknown model architecture "
                         f"{architecture!r} (expected 'small-cnn' or "
                         "'resnet')")
    unknown = sorted(set(config) - set(_DEFAULTS[architecture])
                     - {"architecture"}, key=str)
    if unknown:
        raise ValueError(f"{where}: bad {architecture} config: unknown "
                         f"fields {unknown}")
    checked = dict(_DEFAULTS[architecture], **config)
    checked["in_channels"] = _int_field(checked, "in_channels", where)
    checked["num_classes"] = _int_field(checked, "num_classes", where)
    if architecture == "small-cnn":
        checked["image_size"] = _int_field(checked, "image_size", where, 4)
        checked["channels"] = _int_list_field(checked, "channels", where, 2)
        checked["hidden"] = _int_field(checked, "hidden", where)
        dropout = checked["dropout"]
        if isinstance(dropout, bool) or not isinstance(
                dropout, numbers.Real) or not 0 <= dropout <= 1:
            raise ValueError(f"{where}: dropout must be a number in [0, 1], "
                             f"got {dropout!r}")
    else:
        depth = _int_field(checked, "depth", where)
        if (depth - 2) % 6:
            raise ValueError(f"{where}: depth must be 6n+2 (8, 14, 20, 32, "
                             f"...), got {depth}")
        checked["widths"] = _int_list_field(checked, "widths", where, 3)
    values = sum(math.prod(shape) for shape, _ in
                 _bundled_state(checked, "float32").values())
    if values * 4 > MAX_STATE_BYTES:
        raise ValueError(
            f"{where}: the {architecture} config asks for "
            f"{values:,} weights ({_bytes(values * 4)}), more than the "
            f"{_bytes(MAX_STATE_BYTES)} a checkpoint may hold")
    return checked


def _bundled_state(config, dtype):
    """key -> (shape, dtype name) of a checked bundled config's state_dict,
    computed from the config without building the model (a test checks it
    against the built model's ``state_dict``)."""
    state = OrderedDict()

    def conv(name, out_channels, in_channels, size, bias):
        state[name + ".weight"] = ((out_channels, in_channels, size, size),
                                   dtype)
        if bias:
            state[name + ".bias"] = ((out_channels,), dtype)

    def linear(name, out_features, in_features):
        state[name + ".weight"] = ((out_features, in_features), dtype)
        state[name + ".bias"] = ((out_features,), dtype)

    def batch_norm(name, channels):
        for field in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{field}"] = ((channels,), dtype)
        state[name + ".num_batches_tracked"] = ((), "int64")

    classes = config["num_classes"]
    if config["architecture"] == "small-cnn":
        first, second = config["channels"]
        conv("conv1", first, config["in_channels"], 3, True)
        conv("conv2", second, first, 3, True)
        features = second * (config["image_size"] // 4) ** 2
        if config["hidden"]:
            linear("fc1", config["hidden"], features)
            features = config["hidden"]
        linear("fc", classes, features)
        return state
    widths = config["widths"]
    conv("conv1", widths[0], config["in_channels"], 3, False)
    batch_norm("bn1", widths[0])
    inplanes = widths[0]
    for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), 1):
        for index in range((config["depth"] - 2) // 6):
            prefix = f"layer{stage}.{index}"
            conv(prefix + ".conv1", planes, inplanes, 3, False)
            batch_norm(prefix + ".bn1", planes)
            conv(prefix + ".conv2", planes, planes, 3, False)
            batch_norm(prefix + ".bn2", planes)
            if (stride if index == 0 else 1) != 1 or inplanes != planes:
                conv(prefix + ".downsample.0", planes, inplanes, 1, False)
                batch_norm(prefix + ".downsample.1", planes)
            inplanes = planes
    linear("fc", classes, widths[2])
    return state


def build_model(config: dict):
    """A freshly initialised model from a ``model.config`` dict (checked by
    ``check_model_config``: a bad or oversized config is a ValueError)."""
    config = check_model_config(config)
    architecture = config.pop("architecture")
    if architecture == "small-cnn":
        return SmallCNN(**config)
    return ResNet(**config)


def _bytes(count) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else \
                f"{count:.1f} {unit}"
        count /= 1024
    return ""  # pragma: no cover


# ------------------------------------------------------------------- save

def _is_bundled(model) -> bool:
    return isinstance(model, (SmallCNN, ResNet))


def save_checkpoint(path, model, metadata: dict | None = None) -> None:
    """Write ``model``'s state (and config, and ``metadata``) to ``path``.

    ``model`` is a bundled network (``SmallCNN``, ``ResNet``: the file
    rebuilds it) or any ``fastconv.nn.Module`` (the file holds its state;
    ``load_checkpoint(path, model=module)`` restores it into a module built
    the same way). ``metadata`` must be JSON-serialisable. The file is
    written to a temporary name and renamed, so a crash never leaves half a
    checkpoint.
    """
    from fastconv.nn import Module

    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got "
                        f"{type(model).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got "
                        f"{type(metadata).__name__}")
    dtype = model.dtype
    header = {"format": FORMAT_VERSION,
              "model": model.config if _is_bundled(model) else None,
              "dtype": None if dtype is None else str(dtype),
              "metadata": metadata or {}}
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    arrays = {"config": np.array(text)}
    for key, value in model.state_dict().items():
        arrays[_STATE_PREFIX + key] = value
    path = os.fspath(path)
    temporary = path + ".tmp"
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ------------------------------------------------------------------- read

class _Member:
    """One ``.npy`` member of the archive, read only after its header has
    been checked against what the caller expects."""

    def __init__(self, archive, info, path):
        self.archive, self.info, self.path = archive, info, path

    def header(self):
        """(shape, fortran_order, dtype, header_bytes) without the data."""
        name = self.info.filename
        try:
            with self.archive.open(self.info) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran, dtype = \
                        np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, fortran, dtype = \
                        np.lib.format.read_array_header_2_0(stream)
                else:
                    raise ValueError(f".npy format {version} is not "
                                     "supported")
                return shape, fortran, dtype, stream.tell()
        except (ValueError, TypeError, SyntaxError, EOFError,
                zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{self.path}: member {name!r} is corrupt or "
                             f"not a .npy array: {exc}") from None

    def read(self, shape, fortran, dtype, header_bytes):
        """The array, read to exactly its declared size; the CRC checked."""
        name = self.info.filename
        array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        buffer = memoryview(array.reshape(-1, order="A").view(np.uint8))
        try:
            with self.archive.open(self.info) as stream:
                stream.read(header_bytes)
                done = 0
                while done < len(buffer):
                    chunk = stream.read(min(_READ_CHUNK, len(buffer) - done))
                    if not chunk:
                        raise ValueError("the data ends early")
                    buffer[done:done + len(chunk)] = chunk
                    done += len(chunk)
                # Reading past the end checks the CRC and finds extra data.
                if stream.read(1):
                    raise ValueError("it holds more data than its header "
                                     "says")
        except (ValueError, EOFError, zipfile.BadZipFile, OSError,
                RuntimeError) as exc:
            raise ValueError(f"{self.path}: member {name!r} is corrupt: "
                             f"{exc}") from None
        return array


def _open_archive(path):
    """The zip file's members by name; clear errors for what is not one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path} is a directory, not a fastconv checkpoint "
                         "(.npz)")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path} is a single .npy array, not a fastconv "
                         "checkpoint (.npz)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError,
            EOFError) as exc:
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): not a "
                         f"readable zip archive ({exc})") from None
    return archive


def _members(archive, path):
    """config member and {state key: member}, names and sizes checked."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"{path}: {len(infos)} members, more than the "
                         f"{MAX_MEMBERS} a checkpoint may have")
    config, state, unexpected = None, OrderedDict(), []
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise ValueError(f"{path}: member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED,
                                      zipfile.ZIP_DEFLATED):
            raise ValueError(f"{path}: member {name!r} uses an unsupported "
                             f"compression method ({info.compress_type})")
        member = _Member(archive, info, path)
        if name == _CONFIG_MEMBER and config is None:
            config = member
        elif name.startswith(_STATE_PREFIX) and name.endswith(".npy"):
            key = name[len(_STATE_PREFIX):-len(".npy")]
            if key in state:
                raise ValueError(f"{path}: member {name!r} appears twice")
            state[key] = member
        elif name == _CONFIG_MEMBER:
            raise ValueError(f"{path}: member {name!r} appears twice")
        else:
            unexpected.append(name)
    if config is None:
        raise ValueError(f"{path} is not a fastconv checkpoint: it has no "
                         "'config' entry")
    if unexpected:
        raise ValueError(f"{path}: unexpected members {unexpected[:10]} (a "
                         "checkpoint holds 'config' and 'state/...' arrays)")
    return config, state


def _read_header(member, path):
    """The checkpoint's JSON header, size and type checked first."""
    if member.info.file_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: the config entry declares "
                         f"{_bytes(member.info.file_size)}, more than "
                         f"{_bytes(MAX_CONFIG_BYTES)}")
    shape, fortran, dtype, header_bytes = member.header()
    if dtype.kind != "U" or shape != ():
        raise ValueError(f"{path}: the config entry must be a 0-d unicode "
                         f"array, got dtype {dtype} shape {shape}")
    if header_bytes + dtype.itemsize != member.info.file_size:
        raise ValueError(f"{path}: the config entry's size does not match "
                         "its header")
    text = str(member.read(shape, fortran, dtype, header_bytes)[()])
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint config: "
                         f"{str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: unreadable checkpoint config: expected a "
                         f"JSON object, got {type(header).__name__}")
    version = header.get("format")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r} is not "
                         f"supported (expected {FORMAT_VERSION})")
    if "model" not in header:
        raise ValueError(f"{path}: unreadable checkpoint config: no 'model' "
                         "field")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata must be a JSON object, got "
                         f"{type(metadata).__name__}")
    dtype_name = header.get("dtype")
    if header["model"] is not None and dtype_name not in _FLOAT_DTYPES:
        raise ValueError(f"{path}: dtype must be one of {_FLOAT_DTYPES}, "
                         f"got {dtype_name!r}")
    return header


def _expected_state(header, model, path):
    """key -> (shape, dtype) that the file's state must hold."""
    if model is not None:
        return OrderedDict((key, (value.shape, value.dtype.name))
                           for key, value in model.state_dict().items())
    if header["model"] is None:
        raise ValueError(f"{path} holds the state of a custom module, not a "
                         "bundled model: build the module and pass it as "
                         "load_checkpoint(path, model=module)")
    config = check_model_config(header["model"], f"{path}: model")
    return _bundled_state(config, header["dtype"])


def _check_dtype(found, expected, key, path):
    """A member's dtype must be a real number of the expected kind (float
    for float state, integer for integer state: never complex, object,
    string or structured)."""
    expected = np.dtype(expected)
    if found.hasobject or found.fields is not None or found.subdtype:
        ok = False
    elif expected.kind == "f":
        ok = found.kind == "f" and found.itemsize in (4, 8)
    elif expected.kind in "iu":
        ok = found.kind in "iu" and found.itemsize <= 8
    else:
        ok = found.kind == expected.kind
    if not ok:
        raise ValueError(f"{path}: state {key!r} has dtype {found}, expected "
                         f"{expected} (a real {_KIND_NAMES[expected.kind]} "
                         "type)")


def _read_state(members, expected, path, max_bytes):
    """Every member checked from its header, then read."""
    missing = [key for key in expected if key not in members]
    unexpected = [key for key in members if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}"
                         + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}"
                         + (" ..." if len(unexpected) > 10 else ""))
        raise ValueError(f"{path}: the state does not match the model: "
                         + "; ".join(parts))
    for key, (shape, _) in expected.items():
        # 8-byte values and a large header at most: checked from the zip's
        # directory, before a byte of the member is decompressed
        declared = members[key].info.file_size
        if declared > math.prod(shape) * 8 + 65536:
            raise ValueError(f"{path}: state {key!r} declares "
                             f"{_bytes(declared)} in the zip, more than its "
                             f"shape {tuple(shape)} needs")
    headers = {}
    total = 0
    for key, (shape, dtype) in expected.items():
        member = members[key]
        found_shape, fortran, found_dtype, header_bytes = member.header()
        _check_dtype(found_dtype, dtype, key, path)
        if tuple(found_shape) != tuple(shape):
            raise ValueError(f"{path}: state {key!r} has shape "
                             f"{tuple(found_shape)}, expected {tuple(shape)}")
        nbytes = math.prod(shape) * found_dtype.itemsize
        if member.info.file_size != header_bytes + nbytes:
            raise ValueError(
                f"{path}: state {key!r} declares {member.info.file_size} "
                f"bytes in the zip, but its header says "
                f"{header_bytes + nbytes}")
        total += nbytes
        headers[key] = (found_shape, fortran, found_dtype, header_bytes)
    if total > max_bytes:
        raise ValueError(f"{path}: the state holds {_bytes(total)}, more than "
                         f"max_bytes={max_bytes}")
    return OrderedDict((key, members[key].read(*headers[key]))
                       for key in expected)


def read_checkpoint(path, model=None, *, max_bytes=None):
    """``(model, metadata)`` from a checkpoint.

    Without ``model``: the bundled network the file describes, built from
    its config, in eval mode and the dtype it was saved in. With ``model``
    (any ``nn.Module``): the file's state is loaded into it (keys and shapes
    must equal ``model.state_dict()``'s; values are cast to its dtypes; its
    train/eval mode is left as it is) and it is returned. ``max_bytes``
    (default ``MAX_STATE_BYTES``) bounds the state read. Everything is
    checked before it is allocated; a bad file is a ValueError naming it.
    """
    if model is not None:
        from fastconv.nn import Module

        if not isinstance(model, Module):
            raise TypeError(f"model must be a fastconv.nn.Module or None, "
                            f"got {type(model).__name__}")
    if max_bytes is None:
        max_bytes = MAX_STATE_BYTES
    elif isinstance(max_bytes, bool) or not isinstance(
            max_bytes, numbers.Integral) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
    path = os.fspath(path)
    with _open_archive(path) as archive:
        config_member, state_members = _members(archive, path)
        header = _read_header(config_member, path)
        expected = _expected_state(header, model, path)
        state = _read_state(state_members, expected, path, int(max_bytes))
    if model is None:
        model = build_model(header["model"])
        if header["dtype"] == "float64":
            model.double()
        model.eval()
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return model, header.get("metadata", {})


def load_checkpoint(path, model=None, *, max_bytes=None):
    """The model saved in ``path`` (see ``read_checkpoint``): a bundled
    network in eval mode and its saved dtype, or ``model`` with the file's
    state loaded into it."""
    return read_checkpoint(path, model, max_bytes=max_bytes)[0]
