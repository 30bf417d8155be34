"""Tunables, read once at import; tests and benchmarks may patch them.

Environment variables:

``FASTCONV_BACKEND``
    Default backend name (``auto`` if unset); an unknown name is a
    ValueError naming the variable at the first call.
``FASTCONV_NUMBA_CACHE``
    ``1``/``true``/``yes``/``on`` (the default) or ``0``/``false``/``no``/
    ``off``: whether Numba caches its compiled kernels on disk. Where the cache goes is
    Numba's own ``NUMBA_CACHE_DIR`` (else ``__pycache__`` next to the
    sources, else a per-user cache directory); where none of them is
    writable the kernels are compiled in each process instead, rather than
    the backend failing.
``FASTCONV_KEEP_FREED_MEMORY``
    The same yes/no values (default on): see ``fastconv._memory``.

A yes/no variable with any other value is a ValueError naming it at the
first kernel call (``check_environment``), and one line from the command
line; ``import fastconv`` itself does not raise, so that the command line
can report it without a traceback.
"""

import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable; unset or empty gives ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"environment variable {name}={os.environ[name]!r} must be one of "
        f"{', '.join(_TRUE)} (on) or {', '.join(_FALSE)} (off)")


#: The yes/no settings and their defaults.
YES_NO_SETTINGS = {"FASTCONV_NUMBA_CACHE": True,
                   "FASTCONV_KEEP_FREED_MEMORY": True}


def setting(name: str) -> bool:
    """The value of one of YES_NO_SETTINGS (ValueError naming it when the
    environment holds neither yes nor no)."""
    return _env_flag(name, YES_NO_SETTINGS[name])


def check_environment() -> None:
    """ValueError naming the first of YES_NO_SETTINGS whose value is
    neither yes nor no; where they are all valid, the settings read at
    import that had to wait for them are applied."""
    for name in YES_NO_SETTINGS:
        setting(name)
    from fastconv import _memory
    _memory.keep_freed_memory()


def _numba_cache_usable() -> bool:
    """Whether Numba finds a writable place for the cache files of a
    function in fastconv's installed tree: asks Numba's own cache locators
    (user-given NUMBA_CACHE_DIR, ``__pycache__`` next to the sources, the
    per-user cache directory), which raise where none is writable."""
    try:
        from numba.core.caching import FunctionCache
    except ImportError:  # another Numba: let it decide
        return True
    try:
        FunctionCache(_numba_cache_usable)  # what cache=True builds
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


def __getattr__(name):
    # NUMBA_CACHE (``cache=`` of every Numba kernel) is worked out when the
    # Numba kernels first ask, so that ``import fastconv`` does not import
    # Numba; a test may still set it.
    if name == "NUMBA_CACHE_REQUESTED":  # whether the user asked for it
        return setting("FASTCONV_NUMBA_CACHE")
    if name == "NUMBA_CACHE":
        value = setting("FASTCONV_NUMBA_CACHE") and _numba_cache_usable()
        globals()["NUMBA_CACHE"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# A kernel call with less work than these runs on the calling thread alone:
# waking a second thread costs more than it saves on such a call, and on a
# busy machine waiting for a descheduled worker costs 0.1-10 ms. Each is
# about 100 us of one thread's work here (conv2d ~0.05 ns per multiply-add,
# pooling ~0.5 ns per window tap, dropout ~1 ns per element), where on the
# shared 2-core machine two threads were slower than one up to 2-9x that
# (`python benchmarks/bench_small_calls.py grain`).

#: Multiply-adds of one convolution call (the backward pass counts twice).
PARALLEL_MIN_MACS = 2_000_000

#: Window taps of one pooling call (output elements x kernel area).
PARALLEL_MIN_TAPS = 200_000

#: Elements of one elementwise call (dropout; max-pool's scatter).
PARALLEL_MIN_ELEMENTS = 100_000

#: An nn layer's matrix product (fastconv._threads.matmul) uses BLAS's
#: threads only from this many flops: after a multi-threaded call
#: OpenBLAS's idle workers spin for about 0.1 s on the cores the next
#: kernels need, which cost a SmallCNN training step about 10 ms (28 ms
#: against 18 ms); a second thread saves that much only on products of some
#: 4 GFLOP (20 ms on one thread here).
BLAS_THREADED_MIN_FLOPS = 4_000_000_000

#: Upper bound, in bytes, on the scratch space (im2col columns and the like)
#: one convolution call allocates; backends tile the batch to stay under it.
WORKSPACE_BYTES = 32 * 1024 * 1024

# ---------------------------------------------------------------------- CUDA
# Launch configuration of the CUDA backend (fastconv.backends.cuda), read at
# each call: kernels are compiled for the values in force at their first use,
# so patching one (the simulator tests use tiny tiles) builds a fresh set.

#: Threads per block of the elementwise kernels (pooling, dropout, fills).
CUDA_THREADS_PER_BLOCK = 256

#: At most this many blocks per elementwise launch; the kernels' grid-stride
#: loops cover the rest.
CUDA_MAX_BLOCKS = 4096

#: Implicit-GEMM convolution: a block computes a TILE_M (filters or channels)
#: x TILE_N (pixels or weight taps) tile of the output, stepping TILE_K deep
#: through the reduction via shared memory; each thread keeps a
#: MICRO_M x MICRO_N block of the tile in registers
#: (so (TILE_M // MICRO_M) * (TILE_N // MICRO_N) threads per block).
CUDA_CONV_TILE_M = 64
CUDA_CONV_TILE_N = 64
CUDA_CONV_TILE_K = 8
CUDA_CONV_MICRO_M = 4
CUDA_CONV_MICRO_N = 4

#: grad_weight splits its reduction (batch x output pixels) until about this
#: many blocks are in flight; the partial sums (bounded by WORKSPACE_BYTES)
#: are then added by a second kernel in a fixed order, so no atomics.
CUDA_GRAD_WEIGHT_BLOCKS = 512

#: Threads per block of the grad_bias tree reduction (a power of two).
CUDA_REDUCE_THREADS = 256

#: A convolution GEMM with at most CUDA_CONV_NARROW_ROWS rows (grad_input of
#: a 1- or 3-channel input, depthwise convolutions) runs with this flat tile
#: instead, rather than leave most of a 64-row tile empty.
CUDA_CONV_NARROW_ROWS = 8
CUDA_CONV_NARROW_TILE_M = 4
CUDA_CONV_NARROW_TILE_N = 256
CUDA_CONV_NARROW_MICRO_M = 1
CUDA_CONV_NARROW_MICRO_N = 4
