"""Load or compile every kernel ahead of first use."""

from __future__ import annotations

import time


def _auto_backends():
    """The backends 'auto' runs for some primitive here, in registry order."""
    from fastconv.backends import PRIMITIVES, backend_name, resolve

    names = []
    for primitive in PRIMITIVES:
        name = backend_name(resolve(primitive, "auto"))
        if name not in names:
            names.append(name)
    return tuple(names)


def warmup(backends=None) -> float:
    """Run each primitive once on tiny float32 and float64 inputs.

    ``backends``: names of backends to warm, default the ones ``'auto'``
    runs here (the Cython kernels, compiled at install: this only loads
    them and BLAS, some 0.05 s). ``warmup(["numba"])`` compiles every Numba
    kernel, or loads it from Numba's on-disk cache, so that the first
    ``backend='numba'`` call does not pay for it: a minute or more with an
    empty cache, about a second from a warm one; run it once where the
    package is installed (a Docker image build, say) to fill the cache.
    Returns the seconds it took. An unavailable backend name is a
    ValueError.
    """
    import numpy as np

    from fastconv import functional as F
    from fastconv.backends import is_available

    start = time.perf_counter()
    if backends is None:
        backends = _auto_backends()
    for name in backends:
        if not is_available(name):
            raise ValueError(
                f"backends must name backends available here (see "
                f"fastconv.available_backends()), got {name!r}")
        for dtype in (np.float32, np.float64):
            x = np.ones((1, 2, 5, 5), dtype=dtype)
            weight = np.ones((2, 2, 3, 3), dtype=dtype)
            bias = np.zeros(2, dtype=dtype)
            y = F.conv2d(x, weight, bias, padding=1, backend=name)
            # one input channel per group: the depthwise kernel (Numba)
            F.conv2d(x, weight[:, :1], bias, padding=1, groups=2,
                     backend=name)
            F.conv2d_backward(y, x, weight, padding=1, backend=name)
            pooled, indices = F.max_pool2d(x, 2, return_indices=True,
                                           backend=name)
            F.max_pool2d_backward(pooled, indices, x.shape, backend=name)
            averaged = F.avg_pool2d(x, 2, backend=name)
            F.avg_pool2d_backward(averaged, x.shape, 2, backend=name)
            y, mask = F.dropout(x, 0.5, seed=0, backend=name)
            F.dropout_backward(y, mask, 0.5, backend=name)
            F.batch_norm_statistics(x, backend=name)
            _, mean, var = F.batch_norm_training(x, backend=name)
            F.batch_norm(x, mean, var, backend=name)
            F.batch_norm_backward(x, x, mean, var, backend=name)
            F.relu_backward(x, F.relu(x, backend=name), backend=name)
            F.relu(x, residual=x, backend=name)
    return time.perf_counter() - start
