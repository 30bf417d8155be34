"""Threads: one count for every kernel, small work on one thread, BLAS kept
off the kernels' cores, and fork.

``set_num_threads(n)`` sets the count the compiled kernels use (the Cython
kernels' OpenMP loops and Numba's ``prange``, in every Python thread) and
BLAS's; ``get_num_threads()`` reports it. The default is Numba's
(``NUMBA_NUM_THREADS``, else the cores this process may run on), found
without importing Numba, which costs a tenth of a second and is not needed
while the Cython kernels serve the calls.

Each kernel call asks ``conv_threads``, ``pool_threads`` or
``elementwise_threads`` how many threads to use: below the minimum work in
``fastconv.config`` (``PARALLEL_MIN_MACS`` and its neighbours) it runs on
the calling thread alone, since waking a second thread costs more than such
a call saves (and, on a busy machine, waiting for a descheduled worker
costs milliseconds).

BLAS: a kernel whose threads each call BLAS holds it to one thread
(``single_threaded_blas``), and the nn layers' own products (``matmul``)
run on one BLAS thread unless they are big: OpenBLAS's worker threads spin
for about 0.1 s after each multi-threaded call, and on the next kernel's
cores that spin made a whole SmallCNN training step 1.5x slower. A user's
own NumPy products keep every BLAS thread.

Fork: GNU OpenMP cannot start threads in a child forked after its thread
pool started (the child hangs), so in such a child every kernel runs on one
thread, as PyTorch does; the parent keeps its threads.
"""

from __future__ import annotations

import contextlib
import os
import threading

from fastconv import config

# OpenMP worker threads (GNU libgomp, shared by Numba's threading layer and
# the Cython kernels) spin after each parallel region by default. On a
# machine shared with other work a spinning worker uses up its time slice
# and the next short region waits for it to be scheduled again: on the
# 2-core development machine under load, max_pool2d took ~18 ms on 2 threads
# spinning and ~2 ms passive, a SmallCNN training step 320 ms against 156 ms.
# Fully passive workers cost a wake-up per region instead: 0.05-0.1 ms on
# this (virtual) machine, more than a small convolution's whole work (a
# (4, 3, 32, 32) x (32, 3, 3, 3) conv2d on 2 threads: 0.13 ms passive,
# 0.046 ms spinning). So workers spin for GOMP_SPINCOUNT_DEFAULT pause
# instructions (about 1 ms here; libgomp's own default, 300,000, is about
# 30 ms) before they sleep: back-to-back kernels, as in a network's forward,
# find them awake, and an idle worker gives its core back within 1 ms.
# Measured with that conv2d (ms on 2 threads at 0 / 300 / 1,000 / 3,000 /
# 10,000 spins): 0.129 / 0.092 / 0.046 / 0.046 / 0.046; a training step
# (``benchmarks/bench_training.py``'s, batch 64), which leaves gaps of
# Python and NumPy work between its kernels, at 1,000 / 10,000 / 30,000
# spins: ResNet-8 76.6 / 70.5 / 69.6 ms (274 / 52 / 9 sleeps a step),
# SmallCNN 16.1 / 14.6 / 13.8 ms; with a busy process on each core SmallCNN
# took 30-41 ms at 1,000 and 31-32 ms at 10,000; a 512^2 sgemm right after
# a conv2d 1.10 ms at 1,000, 1.16-1.22 ms at 10,000 (a worker still
# spinning beside BLAS's threads).
# libgomp reads both once, when it loads, so they are set here, on
# ``import fastconv``, before any kernel runs; values the user set win (and
# a user's own OMP_WAIT_POLICY keeps libgomp's spin count for it).
GOMP_SPINCOUNT_DEFAULT = 10000
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT_DEFAULT))

_state = {
    "threads": None,        # the count set_num_threads chose, else None
    "controller": None,     # threadpoolctl's, built on first use
    "parallel_started": False,  # a kernel ran on more than one thread
    "forked": False,        # this is a child forked after that: one thread
    "blas_limit": None,     # set_num_threads's threadpoolctl limiter
}


def default_num_threads() -> int:
    """Numba's default thread count, computed as Numba does: the integer in
    ``NUMBA_NUM_THREADS``, else the number of cores this process may use."""
    value = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(
                f"NUMBA_NUM_THREADS must be a positive integer, got {value!r}")
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads the compiled kernels use (1 in a child forked after they ran
    on more)."""
    if _state["forked"]:
        return 1
    if _state["threads"] is None:
        _state["threads"] = default_num_threads()
    return _state["threads"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the Cython and Numba kernels (in every Python
    thread) and in BLAS."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    maximum = default_num_threads()
    if not 1 <= n <= maximum:
        raise ValueError(
            f"n must be in [1, {maximum}] (NUMBA_NUM_THREADS, else the "
            f"cores available), got {n}")
    if _state["forked"] and n > 1:
        raise RuntimeError(
            "this process was forked after fastconv's kernels ran on several "
            "threads, and GNU OpenMP cannot start threads in such a child: "
            "it runs them on one thread (n=1); start worker processes with "
            "the 'spawn' or 'forkserver' method to use threads in them")
    # a fresh look at the loaded libraries: one loaded since the last
    # (another package's OpenBLAS) is limited too
    _state["controller"] = None
    _state["blas_limit"] = _controller().limit(limits=n, user_api="blas")
    _state["threads"] = n


_local = threading.local()


@contextlib.contextmanager
def one_thread_here():
    """Run the kernels that this Python thread calls inside the block on one
    thread each (other Python threads keep the process's count): for a pool
    of Python threads that already keeps the cores busy."""
    previous = getattr(_local, "one_thread", False)
    _local.one_thread = True
    try:
        yield
    finally:
        _local.one_thread = previous


def _threads_for(work: int, minimum: int) -> int:
    """One thread for less work than ``minimum`` (or inside
    ``one_thread_here``), else get_num_threads()."""
    if work < minimum or getattr(_local, "one_thread", False):
        return 1
    threads = get_num_threads()
    if threads > 1:
        _state["parallel_started"] = True
    return threads


def macs_threads(macs: int) -> int:
    """Threads for a call of ``macs`` multiply-adds
    (config.PARALLEL_MIN_MACS)."""
    return _threads_for(macs, config.PARALLEL_MIN_MACS)


def conv_threads(g, passes: int = 1) -> int:
    """Threads for a convolution of geometry ``g`` (``passes`` 2 for the
    backward pass), by its multiply-adds (config.PARALLEL_MIN_MACS)."""
    macs = (g.batch * g.out_channels * g.out_height * g.out_width
            * (g.in_channels // g.groups) * g.kernel_height * g.kernel_width)
    return macs_threads(passes * macs)


def pool_threads(g) -> int:
    """Threads for a pooling call (forward or backward) of geometry ``g``,
    by its window taps (config.PARALLEL_MIN_TAPS)."""
    taps = (g.batch * g.channels * g.out_height * g.out_width
            * g.kernel_height * g.kernel_width)
    return _threads_for(taps, config.PARALLEL_MIN_TAPS)


def elementwise_threads(size: int) -> int:
    """Threads for a call that touches each of ``size`` elements once
    (dropout, max-pool scatter), config.PARALLEL_MIN_ELEMENTS."""
    return _threads_for(size, config.PARALLEL_MIN_ELEMENTS)


def _after_fork_in_child():
    # Numba's pool may have started GNU OpenMP's threads too (its 'omp'
    # layer), even if no Cython kernel ran on several threads.
    if _state["parallel_started"] or numba_threading_layer() is not None:
        _state["forked"] = True


def numba_threading_layer():
    """The threading layer Numba started in this process ('omp', 'tbb',
    'workqueue'), or None if no Numba parallel kernel has run (or Numba is
    not imported)."""
    import sys

    numba = sys.modules.get("numba")
    if numba is None:
        return None
    try:
        return numba.threading_layer()
    except ValueError:  # not started yet
        return None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------- BLAS

def _controller():
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        from fastconv import _scipy_blas

        _scipy_blas.load()  # SciPy's OpenBLAS, the one the kernels call
        _state["controller"] = ThreadpoolController()
    return _state["controller"]


def _blas_libraries():
    return [library for library in _controller().lib_controllers
            if library.user_api == "blas"]


@contextlib.contextmanager
def single_threaded_blas():
    """Hold every BLAS library to one thread for the enclosed region.

    Sets each library's count directly on the cached controller rather than
    through ``ThreadpoolController.limit``, which re-inspects every loaded
    library on each call (~100 us, noticeable on small convolutions).
    """
    libraries = _blas_libraries()
    previous = [library.num_threads for library in libraries]
    for library, count in zip(libraries, previous):
        if count != 1:
            library.set_num_threads(1)
    try:
        yield
    finally:
        for library, count in zip(libraries, previous):
            if count != 1:
                library.set_num_threads(count)


def matmul(a, b):
    """``a @ b`` for an nn layer: on one BLAS thread unless it takes at
    least ``config.BLAS_THREADED_MIN_FLOPS`` (the spin of BLAS's idle
    workers after a multi-threaded call would slow the kernels that
    follow by more than a second thread saves on a smaller product)."""
    flops = 2 * a.size * (b.shape[-1] if b.ndim > 1 else 1)
    if flops >= config.BLAS_THREADED_MIN_FLOPS:
        return a @ b
    with single_threaded_blas():
        return a @ b

