"""fastconv: compiled CNN kernels (conv2d, pooling, dropout) on NumPy arrays.

Follows PyTorch's conventions (NCHW, weights ``(K, C // groups, R, S)``,
PyTorch's argument names and output-size rules). Backends: ``naive``
(reference loops), ``numba``, ``cython`` and, with a GPU, ``cuda``.
"""

from fastconv import kernels
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
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_backward,
    dropout,
    dropout_backward,
    dropout_mask,
    max_pool2d,
    max_pool2d_backward,
)

__all__ = [
    "__version__",
    "available_backends", "get_backend", "set_backend", "use_backend",
    "unavailable_reasons", "get_num_threads", "set_num_threads", "warmup",
    "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "dropout_mask", "dropout",
    "dropout_backward", "filter2d", "convolve2d", "kernels",
]
