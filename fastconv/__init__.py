"""fastconv: compiled CNN kernels (conv2d, pooling, dropout, batch norm,
ReLU) on NumPy arrays.

Follows PyTorch's conventions (NCHW, weights ``(K, C // groups, R, S)``,
PyTorch's argument names and output-size rules). Backends: ``naive``
(reference loops), ``numba``, ``cython`` and, with a GPU, ``cuda``.

The subpackages ``fastconv.nn``, ``optim``, ``models``, ``data`` and
``kernels`` load on first use (``import fastconv`` is enough to reach them),
so that ``import fastconv`` stays as cheap as the kernels' own imports.
"""

import importlib

from fastconv import _memory
from fastconv._threads import get_num_threads, set_num_threads
from fastconv._version import __version__
from fastconv._warmup import warmup
from fastconv.backends import (
    available_backends,
    get_backend,
    set_backend,
    unavailable_reasons,
    use_backend,
)
from fastconv.filters import convolve2d, filter2d
from fastconv.functional import (
    avg_pool1d,
    avg_pool1d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    batch_norm,
    batch_norm_backward,
    batch_norm_statistics,
    batch_norm_training,
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    dropout,
    dropout_backward,
    dropout_mask,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
    relu,
    relu_backward,
)

#: Subpackages imported on first attribute access (PEP 562).
_LAZY_SUBMODULES = ("nn", "optim", "models", "data", "kernels", "onnx")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        # import_module binds the submodule on this package, so this runs
        # once per name
        return importlib.import_module(f"fastconv.{name}")
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


# Kernels return fresh arrays and use scratch of a few MiB per call; keep
# the pages that frees in the process instead of faulting them in again on
# the next call (fastconv._memory says why, what it costs and how to opt
# out): a conv2d_backward of (32, 64, 32, 32) took 35 ms with the faults
# (about 3,000 per call) and 17.5 ms without, on 2 threads here.
_memory.keep_freed_memory()

__all__ = [
    "__version__",
    "available_backends", "get_backend", "set_backend", "use_backend",
    "unavailable_reasons", "get_num_threads", "set_num_threads", "warmup",
    "conv2d", "conv2d_backward", "conv_transpose2d",
    "conv_transpose2d_backward", "conv1d", "conv1d_backward", "max_pool2d",
    "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_pool1d",
    "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward",
    "dropout_mask", "dropout", "dropout_backward", "batch_norm_statistics",
    "batch_norm", "batch_norm_training", "batch_norm_backward", "relu",
    "relu_backward",
    "filter2d", "convolve2d",
    "kernels",
]
