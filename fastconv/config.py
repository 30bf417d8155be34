"""Tunables, read once at import; tests and benchmarks may patch them.

Environment variables:

``FASTCONV_BACKEND``
    Default backend name (``auto`` if unset).
``FASTCONV_NUMBA_CACHE``
    ``0`` turns Numba's on-disk cache off (default on). Where the cache goes
    is Numba's own ``NUMBA_CACHE_DIR``; with a read-only site-packages Numba
    falls back to a per-user cache directory by itself.
"""

import os


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


#: Cache compiled Numba kernels on disk (``cache=True``).
NUMBA_CACHE = _env_flag("FASTCONV_NUMBA_CACHE", True)

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
