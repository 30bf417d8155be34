"""One thread count for Numba, the Cython kernels' OpenMP and BLAS.

``set_num_threads(n)`` applies ``n`` to all three; ``get_num_threads()``
reports it. The default is what Numba picked (``NUMBA_NUM_THREADS``, else the
number of cores). BLAS is governed through threadpoolctl, which sees SciPy's
OpenBLAS (the one Numba's ``np.dot`` calls) only once ``scipy.linalg`` has
been imported, so it is imported here first.

``single_threaded_blas()`` is the context backends wrap around a parallel
region whose threads each call BLAS, so that BLAS's own threads do not
oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import os

# OpenMP worker threads (GNU libgomp, shared by Numba's threading layer and
# the Cython kernels) spin after each parallel region by default. On a
# machine shared with other work a spinning worker uses up its time slice
# and the next short region waits for it to be scheduled again: on the
# 2-core development machine under load, max_pool2d took ~18 ms on 2 threads
# spinning and ~2 ms passive, a SmallCNN training step 320 ms against 156 ms.
# libgomp reads the policy once, when it loads, so it is set here, on
# ``import fastconv``, before any kernel runs; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_state = {"threads": None, "controller": None, "blas_limit": None}


def _controller():
    if _state["controller"] is None:
        import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController()
    return _state["controller"]


def get_num_threads() -> int:
    """Threads the compiled kernels use."""
    if _state["threads"] is None:
        import numba

        _state["threads"] = numba.config.NUMBA_NUM_THREADS
    return _state["threads"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba kernels, OpenMP (Cython) kernels and BLAS."""
    import numba

    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    maximum = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= maximum:
        raise ValueError(
            f"n must be in [1, {maximum}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)
    _state["blas_limit"] = _controller().limit(limits=n, user_api="blas")
    _state["threads"] = n  # the Cython kernels read it at each call


def _blas_libraries():
    return [library for library in _controller().lib_controllers
            if library.user_api == "blas"]


@contextlib.contextmanager
def single_threaded_blas():
    """Hold BLAS to one thread for the enclosed (parallel) region.

    Sets each BLAS library's count directly on the cached controller rather
    than through ``ThreadpoolController.limit``, which re-inspects every
    loaded library on each call (~100 us, noticeable on small convolutions).
    """
    libraries = _blas_libraries()
    previous = [library.num_threads for library in libraries]
    for library in libraries:
        library.set_num_threads(1)
    try:
        yield
    finally:
        for library, count in zip(libraries, previous):
            library.set_num_threads(count)
