"""CIFAR-10's "python version" batches (Krizhevsky, 2009).

Each batch file (``data_batch_1`` ... ``data_batch_5``, ``test_batch``) is a
pickled dict: ``data`` a (N, 3072) uint8 array (1024 red, then green, then
blue values of a 32x32 image, row-major), ``labels`` a list of N ints in
[0, 10). ``batches.meta`` holds ``label_names``. The files sit in
``DATA_DIR/cifar-10-batches-py/``, directly in ``DATA_DIR``, or inside
``DATA_DIR/cifar-10-python.tar.gz`` as downloaded.

A pickle can run code when loaded, so these are read with an unpickler that
builds only dicts, lists, strings, numbers and NumPy arrays; anything else,
a truncated file or a wrong layout is a ValueError naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)
#: Largest batch file read from the tarball (each of CIFAR-10's is 31 MB);
#: a few MB of gzip can hold a tar member of gigabytes.
MAX_BATCH_BYTES = 256 * 1024**2
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
               "horse", "ship", "truck")

__all__ = ["read_cifar_batch", "load_cifar10", "LABEL_NAMES"]


def _latin1_encode(text, encoding="latin1"):
    """What a protocol-2 pickle written by Python 3 calls to rebuild bytes
    (``_codecs.encode(text, 'latin1')``); no other codec is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def _numpy_globals():
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module_name, "_reconstruct")] = np.ndarray.__reduce__(
            np.zeros(1))[0]
        allowed[(module_name, "scalar")] = np.float64(0).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer
    for module_name in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module_name, "_frombuffer")] = from_buffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, refuses anything else."""

    _allowed = None

    def find_class(self, module, name):
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _numpy_globals()
        try:
            return _ArrayUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (a CIFAR batch holds only "
                "arrays, lists and strings)") from None


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        content = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise ValueError(f"{name}: not a readable CIFAR batch pickle "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{name}: a CIFAR batch must be a pickled dict, got "
                         f"{type(content).__name__}")
    # Python 2 pickles read with encoding='bytes' have bytes keys.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value
            for key, value in content.items()}


def parse_cifar_batch(raw: bytes, name: str = "<bytes>"):
    """``(images, labels)`` from a batch's bytes: images (N, 3, 32, 32)
    uint8, labels (N,) int64."""
    content = _unpickle(raw, name)
    label_key = "labels" if "labels" in content else "fine_labels"
    if "data" not in content or label_key not in content:
        raise ValueError(f"{name}: a CIFAR batch needs 'data' and 'labels' "
                         f"entries, found {sorted(content)}")
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or \
            data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        described = (f"{data.dtype} {data.shape}" if isinstance(
            data, np.ndarray) else type(data).__name__)
        raise ValueError(f"{name}: 'data' must be a (N, 3072) uint8 array, "
                         f"got {described}")
    try:
        labels = np.asarray(content[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: 'labels' must be a list of ints") from None
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{name}: {labels.size} labels for {data.shape[0]} "
                         "images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(LABEL_NAMES)):
        raise ValueError(f"{name}: labels must lie in [0, 10), found "
                         f"[{labels.min()}, {labels.max()}]")
    return data.reshape((-1,) + IMAGE_SHAPE), labels


def read_cifar_batch(path):
    """``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` from one batch
    file."""
    with open(path, "rb") as handle:
        raw = handle.read()
    return parse_cifar_batch(raw, os.fspath(path))


def _batch_reader(data_dir):
    """A function name -> bytes over the folder, the bare files, or the
    tarball, whichever ``data_dir`` holds."""
    data_dir = os.fspath(data_dir)
    for folder in (os.path.join(data_dir, FOLDER), data_dir):
        if os.path.isfile(os.path.join(folder, TEST_BATCH)):
            def read(name, folder=folder):
                path = os.path.join(folder, name)
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"CIFAR-10 batch {path} is missing")
                with open(path, "rb") as handle:
                    return handle.read(), path
            return read
    archive = os.path.join(data_dir, ARCHIVE)
    if os.path.isfile(archive):
        try:
            tar = tarfile.open(archive, "r:gz")
            members = {os.path.basename(member.name): member
                       for member in tar.getmembers() if member.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"{archive}: unreadable archive ({exc})") from None

        def read(name):
            if name not in members:
                raise ValueError(f"{archive} has no {name}")
            if members[name].size > MAX_BATCH_BYTES:
                # the tar header's size, checked before decompressing it
                raise ValueError(
                    f"{archive}:{name} declares {members[name].size} bytes, "
                    f"more than a CIFAR batch's ~31 MB (MAX_BATCH_BYTES)")
            return tar.extractfile(members[name]).read(), f"{archive}:{name}"
        return read
    raise FileNotFoundError(
        f"no CIFAR-10 python batches in {data_dir!r}: expected "
        f"{FOLDER}/{TEST_BATCH}, {TEST_BATCH} or {ARCHIVE} (download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)")


def load_cifar10(data_dir):
    """``(train_images, train_labels, test_images, test_labels)``: uint8
    (N, 3, 32, 32) images and int64 labels, 50000 + 10000 for the full
    set (any number of images per batch is accepted)."""
    read = _batch_reader(data_dir)
    train = [parse_cifar_batch(*read(name)) for name in TRAIN_BATCHES]
    test_images, test_labels = parse_cifar_batch(*read(TEST_BATCH))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels
