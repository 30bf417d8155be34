"""The Cython backend: OpenMP kernels compiled when fastconv is installed.

The kernels live in ``fastconv/backends/_cython/*.pyx`` (built by setup.py,
with OpenMP where the compiler supports it). This module is the thin layer the
registry imports as ``'cython'``: it allocates outputs and scratch buffers,
reads the thread count (``fastconv.get_num_threads()``) and the workspace
bound (``fastconv.config.WORKSPACE_BYTES``) at each call, and holds BLAS to one
thread while the parallel convolution kernels each call it. Arguments arrive
validated and C-contiguous from ``fastconv.functional``; see the contract in
``fastconv.backends``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pathlib

import numpy as np

# fastconv._threads (imported by this) sets OMP_WAIT_POLICY=PASSIVE before
# the extension below loads libgomp, which reads it then.
from fastconv import _dropout_hash, _shapes, _threads, config

try:
    from fastconv.backends._cython import activation as _activation
    from fastconv.backends._cython import conv as _conv
    from fastconv.backends._cython import depthwise as _depthwise
    from fastconv.backends._cython import direct as _direct
    from fastconv.backends._cython import dropout as _dropout
    from fastconv.backends._cython import normalization as _normalization
    from fastconv.backends._cython import pool as _pool
    from fastconv.backends._cython import winograd as _winograd_kernels
except ImportError as exc:  # not compiled (no C compiler at install time)
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

#: Scratch bytes one thread may use for one convolution work item: the
#: im2col matrices of several whole images side by side (so that one GEMM
#: serves them all), or row tiles of one image too big for that.
#: WORKSPACE_BYTES caps all threads' scratch together.
THREAD_SCRATCH_BYTES = 8 * 1024 * 1024

#: Several images share one GEMM when a group's im2col matrix has at least
#: this many times more rows (Cg*R*S) than columns (OH*OW); see _chunk_images.
CHUNK_ASPECT = 8


def _imported_from_source_tree() -> bool:
    """Whether this fastconv is a repository checkout's (``setup.py`` and
    ``pyproject.toml`` beside the package), not an installed copy."""
    root = pathlib.Path(__file__).resolve().parents[2]
    return (root / "setup.py").is_file() and (root / "pyproject.toml").is_file()


def unavailable_reason() -> str | None:
    """None when the compiled kernels import, else why they do not."""
    if _IMPORT_ERROR is None:
        return None
    if _imported_from_source_tree():
        return ("the Cython extension is not built in this source tree "
                f"({pathlib.Path(__file__).resolve().parents[2]}); build in "
                f"place with `pip install -e .`: {_IMPORT_ERROR}")
    return ("the Cython extension was not compiled (reinstall with a C "
            f"compiler): {_IMPORT_ERROR}")


def openmp_enabled() -> bool:
    """True when the kernels were built with OpenMP (else they run serially)."""
    return _IMPORT_ERROR is None and _conv.openmp_enabled()


def _num_threads(threads) -> int:
    """``threads`` (what fastconv._threads gives the call: one for small
    work), or one where the kernels were built without OpenMP."""
    return threads if openmp_enabled() else 1


def _blas_held_to_one_thread(num_threads):
    """Context for a parallel region whose threads each call BLAS: hold BLAS
    to one thread so its own threads do not fight ours for the cores. With
    one thread of ours there is nothing to fight, and the limit (about 0.1
    ms through threadpoolctl) is skipped; BLAS then runs as set_num_threads
    left it."""
    if num_threads > 1:
        return _threads.single_threaded_blas()
    return contextlib.nullcontext()


# --------------------------------------------------------------- convolution

def _col_rows(g):
    """Rows of one group's im2col matrix: Cg * R * S."""
    return (g.in_channels // g.groups) * g.kernel_height * g.kernel_width


def _is_direct(g):
    """A 1x1, stride-1, unpadded conv reads x as its own im2col matrix."""
    return (g.kernel_height == g.kernel_width == 1 and g.stride_h == 1
            and g.stride_w == 1 and g.pad_top == g.pad_left == 0
            and g.pad_bottom == g.pad_right == 0)


def _chunk_images(g, image_bytes, num_threads, budget):
    """Whole images per work item, or 0 to sweep single images in row tiles.

    Chunks pay where a group's im2col matrix has many more rows (Cg*R*S)
    than columns (OH*OW), CHUNK_ASPECT times or more: each GEMM call packs
    the group's weights (Kg, Cg*R*S) afresh, which then costs more than the
    product of one image, and the grad_weight GEMM sums over too few
    columns. Elsewhere single images measured as fast or faster (no copying
    of outputs in and out of the chunk's buffers). ``image_bytes``, one
    image's share of an item's scratch, must fit ``budget``; chunks are
    capped so that every thread gets two items.
    """
    if (image_bytes > budget or _col_rows(g)
            < CHUNK_ASPECT * g.out_height * g.out_width):
        return 0
    per_group = -(-2 * num_threads // g.groups)      # items wanted per group
    return int(max(1, min(budget // image_bytes, -(-g.batch // per_group))))


def _tile_rows(g, itemsize, buffers, budget):
    """Output rows per tile when single images are swept in row tiles:
    ``buffers`` (Cg*R*S, rows*OW) buffers fit ``budget`` (at least 1 row).
    In the 1x1 stride-1 unpadded case nothing is unfolded: whole images."""
    if _is_direct(g):
        return g.out_height
    row_bytes = buffers * _col_rows(g) * g.out_width * itemsize
    return int(max(1, min(g.out_height, budget // row_bytes)))


def _thread_budget(num_threads, reserved=0):
    """Scratch bytes per thread: THREAD_SCRATCH_BYTES, and all threads'
    together within WORKSPACE_BYTES less ``reserved``."""
    shared = max(0, config.WORKSPACE_BYTES - reserved) // num_threads
    return min(THREAD_SCRATCH_BYTES, shared)


#: grad_weight is summed in this many partial sums (fewer when there are
#: fewer work items), each over a fixed run of consecutive work items, then
#: added in order: the result has the same bits for any thread count.
#: More runs balance more threads; each costs one weight-sized buffer.
GRAD_WEIGHT_RUNS = 8


def _grad_weight_runs(g):
    """Partial sums of grad_weight: GRAD_WEIGHT_RUNS, at most one per work
    item (the same item count for either schedule: images x groups, or
    image chunks x groups, which is at least the number of runs wanted
    whenever chunking is on, as chunks give every thread two items)."""
    return max(1, min(GRAD_WEIGHT_RUNS, g.batch * g.groups))


#: Environment variable naming the convolution method, read at each call:
#: ``auto`` (default: by shape, see ``conv2d_method``), ``direct`` (never
#: Winograd: the register-blocked direct kernel or im2col + GEMM, by shape;
#: the most accurate), ``gemm`` (im2col + GEMM only, as float64 always
#: runs) or ``winograd`` (Winograd wherever it applies, whatever the
#: channel counts).
CONV_ALGO_ENV = "FASTCONV_CONV_ALGO"
CONV_ALGOS = ("auto", "direct", "gemm", "winograd")

#: 'auto' runs Winograd F(4x4, 3x3) on a 3x3 stride-1 convolution when both
#: the input and the output channels number at least this many: with fewer,
#: the transforms (per channel and tile) cost more than the multiplications
#: they save.
WINOGRAD_MIN_CHANNELS = 16

#: ... or, where the register-blocked direct kernel can run the call instead
#: (float32), this many for the forward (and the input gradient, a forward
#: convolution; see conv2d_backward), WINOGRAD_MIN_CHANNELS_OVER_DIRECT_
#: BACKWARD for the weight gradient: below them that kernel was faster.
#: Measured 2026-12-02 (Intel Xeon, 2 threads, load 0.6-0.9, float32, ms
#: direct / Winograd, alternated processes; forward, then the backward's two
#: gradients): N64-C16-14x14-K32 0.52 / 0.69; N32-C16-32x32-K16 0.68 /
#: 0.97; N64-C32-8x8-K32 0.33 / 0.34, 0.81 / 0.81; N64-C32-14x14-K64 1.80 /
#: 1.57, 3.58 / 3.84; N32-C32-32x32-K32 2.11 / 1.92, 4.65 / 4.77;
#: N16-C32-28x28-K32 0.99 / 0.94; N64-C32-8x8-K64 0.61 / 0.47, 1.40 / 1.25;
#: N64-C48-14x14-K48 2.39 / 1.65, 4.97 / 3.99; N64-C64-8x8-K64 1.10 /
#: 0.89, 2.66 / 2.16; N32-C128-8x8-K128 2.26 / 1.35, 5.15 / 3.02. (Earlier
#: measurements, on an AMD host and before Winograd's stores became whole
#: vectors, had put both limits at 64 and at 96 on planes of 64 pixels.)
#: With the transforms on whole rows (winograd_tiles.h), re-measured
#: 2026-12-03 on an AMD EPYC (Zen 5) host, forward, ms Winograd / direct,
#: medians of 5 alternated processes, load 1.5-1.7: N64-C16-32x32-K16 1.02
#: / 1.16, N64-C16-14x14-K32 0.42 / 0.44, N32-C16-32x32-K16 0.75 / 0.61,
#: N16-C24-28x28-K24 0.36 / 0.54, N64-C32-8x8-K32 0.25 / 0.30,
#: N64-C32-16x16-K32 0.80 / 0.98; the gradients: N64-C16-32x32-K16 4.96 /
#: 3.16, N64-C32-16x16-K32 2.38 / 2.27, N64-C32-14x14-K64 4.9 / 3.5; the
#: weight gradient alone: N64-C32-14x14-K64 1.40 / 1.41, N64-C32-16x16-K32
#: 1.24 / 1.07 (its limit stays).
WINOGRAD_MIN_CHANNELS_OVER_DIRECT = 24
WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD = 48
#: The same two limits on builds with 8-lane vectors (AVX2), where the
#: direct kernel's tiles are half as wide and Winograd's transforms run on
#: 8-tile groups (winograd_tiles.h). Measured 2026-12-04 (AMD EPYC Zen 3,
#: 2 threads, load 1.2-1.7, medians of 4 alternated processes, ms Winograd
#: / direct; forward, input gradient, weight gradient):
#: N64-C8-32x32-K16 1.54 / 1.18, 1.44 / 1.26, 3.15 / 1.54;
#: N64-C12-28x28-K12 1.09 / 1.31, 1.05 / 1.41, 1.79 / 1.67;
#: N64-C16-32x32-K16 2.11 / 2.42, 2.14 / 2.44, 3.49 / 2.66;
#: N64-C16-14x14-K32 0.80 / 1.12, 0.87 / 1.23, 1.42 / 1.41;
#: N16-C24-28x28-K24 0.70 / 1.37, 0.67 / 1.28, 1.18 / 1.65;
#: N64-C32-14x14-K64 2.21 / 3.70, 2.87 / 4.09, 3.95 / 6.12. The forward's
#: limit is then WINOGRAD_MIN_CHANNELS's.
WINOGRAD_MIN_CHANNELS_OVER_DIRECT_NARROW = 16
WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD_NARROW = 24

#: ... and when the call has at least this many 4x4 output tiles (N times
#: the tiles of a plane). Winograd-domain filters are 4x the filters'
#: bytes and, without a layer's packed copy, transformed on every call: a
#: few tiles do not pay for that. Measured (float32, 2 threads, load 1.0-1.6,
#: noisy; winograd / direct time, filters transformed per call): 6.1 at
#: (1, 512, 7, 7) (4 tiles), 1.5 at (16, 512, 7, 7) (64 tiles), 1.2 at
#: (1, 256, 14, 14) (16 tiles), 0.9 at (1, 128, 28, 28) (49 tiles), 0.6-0.7
#: at (32, 256, 8, 8) (128 tiles). The filter transform has since become
#: 3.5x faster (8.5 to 2.4 ms for 256 x 256 filters), so this errs on the
#: side of the direct method.
WINOGRAD_MIN_CALL_TILES = 128

#: The same with the filters packed by an ``nn.Conv2d`` (transformed once
#: per weight value). Measured as above: 2.5 at (1, 512, 7, 7) (4 tiles),
#: 0.9 at (4, 512, 7, 7) (16 tiles), 0.64 at (1, 256, 14, 14), 0.62 at
#: (16, 512, 7, 7), 0.45 at (32, 256, 8, 8).
WINOGRAD_MIN_CALL_TILES_PACKED = 16

#: Scratch bytes per thread for one Winograd tile block: the transformed
#: inputs V (36, C, T) and products M (K, 36, T) of T tiles, sized to stay
#: in a core's L2 cache; T is kept within [WINOGRAD_MIN_TILES,
#: WINOGRAD_MAX_TILES] (fewer makes the 36 products too narrow).
WINOGRAD_BLOCK_BYTES = 1024 * 1024
WINOGRAD_MIN_TILES = 16
WINOGRAD_MAX_TILES = 256

#: Tiles per block of the weight gradient (V and E of the block shared by
#: the threads, at most WINOGRAD_STAGED_BYTES of them): each of its GEMMs
#: reads and writes a (K, C) sum for a reduction as deep as the block.
#: Measured (float32, 2 threads, noisy, ms at 32 / 64 / 128 / 256 tiles):
#: N32-C256-8x8-K256 13.0 / 8.9 / 8.6 / 8.0, N32-C128-16x16-K128 10.8 /
#: 8.0 / 8.3 / 8.1, N32-C64-32x32-K64 15.7 / 12.7 / 9.5 / 11.2; per-thread
#: runs of tiles, each summing its own copy of dU, took 14.0, 13.2 and 13.6.
WINOGRAD_WEIGHT_GRAD_TILES = 128

#: Where a per-thread block would hold fewer tiles than this (many
#: channels), the threads share blocks of up to WINOGRAD_STAGED_BYTES of V
#: and M instead, stage by stage (winograd_f43_staged): each U[p] is then
#: read once per block rather than once per few tiles.
WINOGRAD_STAGED_BELOW = 20
#: Floats after a block's transformed inputs V that the float32 products
#: (winograd_gemm.h) may read (never use): a vector's width.
WINOGRAD_V_SLACK = 16
WINOGRAD_STAGED_BYTES = 16 * 1024 * 1024

def conv_algorithm() -> str:
    """The method the environment asks for (``FASTCONV_CONV_ALGO``)."""
    value = os.environ.get(CONV_ALGO_ENV)
    if not value:  # the common case, read on every call
        return "auto"
    value = value.strip().lower() or "auto"
    if value not in CONV_ALGOS:
        raise ValueError(
            f"{CONV_ALGO_ENV} must be one of {list(CONV_ALGOS)}, got "
            f"{value!r}")
    return value


def _winograd_applies(g):
    return (g.kernel_height == g.kernel_width == 3 and g.stride_h == 1
            and g.stride_w == 1 and g.dilation_h == 1 and g.dilation_w == 1
            and g.groups == 1)


def _winograd_channels_over_direct(backward=False):
    """The channels from which Winograd serves a float32 call the direct
    kernel could run (the weight gradient's with ``backward``), for this
    build's vector width."""
    if _narrow_lanes():
        return (WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD_NARROW if backward
                else WINOGRAD_MIN_CHANNELS_OVER_DIRECT_NARROW)
    return (WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD if backward
            else WINOGRAD_MIN_CHANNELS_OVER_DIRECT)


def _uses_winograd(g, in_channels, out_channels, out_plane, packed=False,
                   forward_dtype=None, backward=False):
    """Whether a 3x3 stride-1 convolution of these channel counts and output
    plane (the forward's, or the input gradient's, swapped) runs through
    Winograd; ``packed``: its filters are a layer's packed copy;
    ``forward_dtype``: the forward's dtype (the alternative is then the
    register-blocked direct kernel where it applies; otherwise im2col +
    GEMM); ``backward``: for one of the gradients."""
    if not _winograd_applies(g):
        return False
    algorithm = conv_algorithm()
    if algorithm != "auto":
        return algorithm == "winograd"
    if (forward_dtype is not None
            and min(in_channels, out_channels)
            < _winograd_channels_over_direct(backward)
            and _direct_applies(g, forward_dtype)):
        return False
    tiles = g.batch * (-(-out_plane[0] // 4)) * (-(-out_plane[1] // 4))
    min_tiles = (WINOGRAD_MIN_CALL_TILES_PACKED if packed
                 else WINOGRAD_MIN_CALL_TILES)
    return (min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS
            and tiles >= min_tiles)


#: On builds with 8-lane vectors (AVX2) a pointwise layer's forward, input
#: gradient (a pointwise forward) and weight gradient run the GEMM path (x
#: is its own im2col matrix there): OpenBLAS's sgemm beat the 4 x 3-vector
#: direct tile. Measured 2026-12-04 (AMD EPYC Zen 3, AVX2, 2 threads, load
#: 0.7-1.0, medians of 6 alternated processes, ms direct / GEMM, forward
#: and weight gradient): N32-C64-32x32-K64 1x1 3.71 / 3.10 and 5.60 /
#: 4.21; N32-C64-16x16-K128 1x1/2 0.48 / 0.45 and 0.92 / 0.63. (The other
#: weight gradients were mixed: 3x3/2 N32-C64-32x32-K128 14.7 / 13.3, but
#: the 7x7/2 stem 24.7 / 27.5, N64-C32-14x14-K64 5.55 / 7.17,
#: N64-C16-32x32-K32 3x3/2 2.98 / 3.35; they stay direct.) With 16 lanes
#: the direct kernel was faster. The forwards' products have since moved
#: from BLAS to winograd_gemm.h's kernel with packed panels (conv.pyx's
#: _product), and the input gradient from the direct kernel to them (same
#: host, later that day, ms before / after, forward, input gradient:
#: N32-C64-32x32-K64 2.40 / 2.18, 3.55 / 2.40; N32-C128-16x16-K256 3.61 /
#: 3.19, 4.96 / 3.69; N32-C256-8x8-K128 0.99 / 0.81, 1.18 / 0.88).
#: Only from NARROW_POINTWISE_GEMM_MIN_BATCH images: the GEMM path's work
#: items are images, and on one image (mobilenet_v2 at batch 1) the direct
#: kernel was 1.3-3.4x faster (ms, as above, 3 processes: (1, 16, 112,
#: 112) -> 96 0.56 / 1.06, (1, 96, 56, 56) -> 24 0.17 / 0.58, (1, 192, 28,
#: 28) -> 32 0.17 / 0.30; mobilenet_v2 through fastconv.onnx 19.8 / 28.8
#: at batch 1), while at batch 16 GEMM still led ((16, 24, 56, 56) -> 144
#: 5.61 / 4.76, (16, 384, 14, 14) -> 64 2.00 / 1.76).
NARROW_POINTWISE_GEMM = True
NARROW_POINTWISE_GEMM_MIN_BATCH = 8


def _narrow_lanes() -> bool:
    """Whether this build's vectors hold 8 floats (AVX2), not 16."""
    return _direct_parameters()[1] < 16


def _pointwise_gemm(g):
    """Whether a pointwise layer leaves the register-blocked direct kernel
    for the GEMM path (NARROW_POINTWISE_GEMM) in the forward, grad_input
    and grad_weight."""
    return (NARROW_POINTWISE_GEMM and _narrow_lanes()
            and g.batch >= NARROW_POINTWISE_GEMM_MIN_BATCH
            and _direct_pointwise(g) and conv_algorithm() != "direct")


def _uses_blocked_direct(g, dtype):
    """Whether a convolution that is neither Winograd nor depthwise runs
    the register-blocked direct kernel (float32, where it applies; unless
    FASTCONV_CONV_ALGO=gemm) rather than im2col + GEMM. It was faster on
    every float32 shape measured (ms, 2 threads, load 0.3-1, blocked /
    im2col: N32-C3-32x32-K32 3x3 0.75 / 1.17, N64-C1-28x28-K32 0.51 / 0.66,
    N32-C64-32x32-K128 3x3/2 5.8 / 7.4, N8-C3-224x224-K64 7x7/2 8.7 / 15.1,
    N32-C64-32x32-K64 1x1 1.50 / 2.32)."""
    return conv_algorithm() != "gemm" and _direct_applies(g, dtype)


def _uses_blocked_direct_forward(g, dtype):
    """``_uses_blocked_direct`` for a forward convolution and its weight
    gradient (not the phases or transposed convolution of an input
    gradient)."""
    return not _pointwise_gemm(g) and _uses_blocked_direct(g, dtype)


def conv2d_method(g, dtype=np.float32, packed=False) -> str:
    """What ``conv2d_forward`` runs for this geometry (``packed``: with a
    layer's packed filters): ``'depthwise'`` (``'depthwise-vectors'``: 16
    channels to a vector), ``'winograd-f4x4'``,
    ``'direct-blocked'`` (the register-blocked direct kernel), ``'gemm-1x1'``
    (x is its own im2col matrix) or ``'im2col-gemm'``; a 1x1 strided layer
    that runs pointwise on its subsampled input (``_strided_pointwise``):
    ``'subsampled-'`` and the pointwise layer's method."""
    dtype = np.dtype(dtype)
    pointwise = _strided_pointwise(g, dtype)
    if pointwise is not None:
        return "subsampled-" + conv2d_method(pointwise, dtype, packed)
    if _uses_winograd(g, g.in_channels, g.out_channels,
                      (g.out_height, g.out_width), packed, dtype):
        return "winograd-f4x4"
    if _is_depthwise(g):
        return ("depthwise-vectors" if _depthwise_vectors(g, dtype)
                else "depthwise")
    if _uses_blocked_direct_forward(g, dtype):
        return "direct-blocked"
    return "gemm-1x1" if _is_direct(g) else "im2col-gemm"


def winograd_filters(weight, flipped=False):
    """(36, K, C): the Winograd-domain form U[p, k, c] of 3x3 filters
    (K, C, 3, 3), in weight's dtype; ``flipped`` transforms each filter
    rotated by 180 degrees (for the input gradient, which reads it
    channel-transposed)."""
    filters = np.empty((36,) + weight.shape[:2], dtype=weight.dtype)
    _winograd_kernels.winograd_filters_f43(weight, filters, bool(flipped),
                                           _num_threads(_threads.elementwise_threads(filters.size)))
    return filters


def _winograd_block_tiles(total_tiles, in_channels, out_channels, itemsize,
                          num_threads):
    """Tiles per work item: the block's V and M fit WINOGRAD_BLOCK_BYTES,
    and every thread gets two items where there are enough tiles."""
    per_tile = 36 * (in_channels + out_channels) * itemsize
    tiles = WINOGRAD_BLOCK_BYTES // per_tile
    tiles = min(tiles, -(-total_tiles // (2 * num_threads)))
    return int(max(WINOGRAD_MIN_TILES, min(WINOGRAD_MAX_TILES, tiles)))


def _winograd(x, filters, transposed, bias, out_shape, pad_top, pad_left):
    """A 3x3 stride-1 convolution through F(4x4, 3x3): y (out_shape), the
    transformed ``filters`` from ``winograd_filters``; see winograd.pyx.

    Per-thread blocks (each thread transforms, multiplies and writes its
    own tiles) unless they would hold fewer than WINOGRAD_STAGED_BELOW
    tiles: then blocks of up to WINOGRAD_STAGED_BYTES are shared by all
    threads, stage by stage, so that each GEMM spans many tiles."""
    dtype = x.dtype
    in_channels, out_channels = x.shape[1], out_shape[1]
    # as many threads as the direct method's multiply-adds would get
    num_threads = _num_threads(_threads.macs_threads(
        int(np.prod(out_shape)) * in_channels * 9))
    total_tiles = out_shape[0] * (-(-out_shape[2] // 4)) * (
        -(-out_shape[3] // 4))
    per_tile = 36 * (in_channels + out_channels) * dtype.itemsize
    y = np.empty(out_shape, dtype=dtype)
    has_bias = bias is not None
    bias_array = bias if has_bias else np.empty(1, dtype=dtype)
    block_tiles = _winograd_block_tiles(total_tiles, in_channels,
                                        out_channels, dtype.itemsize,
                                        num_threads)
    staged = WINOGRAD_BLOCK_BYTES // per_tile < WINOGRAD_STAGED_BELOW
    with _blas_held_to_one_thread(num_threads):
        if staged:
            block_tiles = int(max(1, min(total_tiles,
                                         WINOGRAD_STAGED_BYTES // per_tile)))
            _winograd_kernels.winograd_f43_staged(
                x, filters, transposed, bias_array, has_bias, y,
                np.empty(36 * in_channels * block_tiles + WINOGRAD_V_SLACK,
                         dtype),
                np.empty(36 * out_channels * block_tiles, dtype), pad_top,
                pad_left, block_tiles, num_threads)
        else:
            workspace = np.empty(
                (num_threads, per_tile // dtype.itemsize * block_tiles),
                dtype=dtype)
            _winograd_kernels.winograd_f43(
                x, filters, transposed, bias_array, has_bias, y, workspace,
                pad_top, pad_left, block_tiles, num_threads)
    return y


#: The register-blocked direct kernel (``_cython/direct_conv.h``) keeps a
#: band of input rows per thread; a call whose band for a single output row
#: would exceed this runs im2col + GEMM instead (which tiles any size).
DIRECT_MAX_BAND_BYTES = 2 * 1024 * 1024

#: Bands are sized for about this many pixel vectors per work item (a few
#: tiles, so that the band copy is shared by several) and at most
#: DIRECT_BAND_BYTES, which keeps a band in a core's L2 cache.
DIRECT_ITEM_VECTORS = 12
DIRECT_BAND_BYTES = 256 * 1024

#: A tile's inputs are read once per chunk of output channels; its channels
#: are taken in blocks whose inputs fit this many bytes (in a core's L1
#: cache), the sums of later blocks added to the outputs of earlier ones.
DIRECT_TILE_BYTES = 16 * 1024


@functools.lru_cache(maxsize=None)
def _direct_parameters():
    """(available, lanes, channels per tile, vectors per tile) of the
    compiled kernel."""
    return _direct.parameters()


def _band_rows(g, rows):
    """Input rows (padding included) that ``rows`` consecutive output rows
    read: a work item's band or tile."""
    return (rows - 1) * g.stride_h + (g.kernel_height - 1) * g.dilation_h + 1


def _direct_band(g, rows):
    """(band rows, columns per phase, floats) of a band for ``rows`` output
    rows."""
    _, lanes, _, _ = _direct_parameters()
    band_rows = _band_rows(g, rows)
    row_len = (-(-g.out_width // lanes) * lanes
               + (g.kernel_width - 1) * g.dilation_w // g.stride_w)
    channels = g.in_channels // g.groups
    return band_rows, row_len, channels * band_rows * g.stride_w * row_len


def _direct_pointwise(g):
    """A 1x1 stride-1 unpadded conv with a plane of at least one vector:
    the kernel reads x itself, over the flattened plane."""
    return _is_direct(g) and (g.out_height * g.out_width
                              >= _direct_parameters()[1])


#: ... and needs this many filters per group: its tiles compute chunks of
#: 8 filters (4 without AVX-512), and with one filter a GEMM (a matrix-vector
#: product) was faster. Measured (2 threads, load 0.3-0.6): grad_input of
#: N64-C1-28x28-K32 3x3 (a convolution with 1 filter), 1.62 ms blocked
#: against 0.60 im2col; with 3 filters (N32-C3-32x32-K32), 0.93 / 1.04.
DIRECT_MIN_FILTERS = 2


def _direct_applies(g, dtype):
    """Whether the register-blocked kernel can run this call: float32, a
    compiler with vector extensions, DIRECT_MIN_FILTERS filters per group
    and a band for one output row within DIRECT_MAX_BAND_BYTES."""
    return (dtype == np.float32 and _direct_parameters()[0]
            and g.out_channels // g.groups >= DIRECT_MIN_FILTERS
            and (_direct_pointwise(g)
                 or _direct_band(g, 1)[2] * 4 <= DIRECT_MAX_BAND_BYTES))


def _direct_rows(g, num_threads):
    """Output rows per work item (pointwise: vectors of the plane): about
    DIRECT_ITEM_VECTORS vectors (more where a tall kernel's band would
    mostly be overlap), the band (pointwise: the input read) within
    DIRECT_BAND_BYTES, and four items per thread where the call has that
    many."""
    _, lanes, _, _ = _direct_parameters()
    images = g.batch * g.groups
    if _direct_pointwise(g):
        vectors = -(-g.out_height * g.out_width // lanes)
        read = (g.in_channels // g.groups) * lanes * 4
        rows = max(1, min(vectors, DIRECT_ITEM_VECTORS,
                          DIRECT_BAND_BYTES // read))
        while (rows > 1 and images * -(-vectors // rows) < 4 * num_threads
               and not _weights_dominate(g, rows * read)):
            rows -= 1
        return _even_runs(vectors, rows)
    per_row = -(-g.out_width // lanes)
    rows = max(1, min(g.out_height, -(-DIRECT_ITEM_VECTORS // per_row)))
    # more rows while the band's overlap with the next item's is more than
    # half its own rows (a tall kernel) and the band stays small
    while (rows < g.out_height
           and _direct_band(g, rows)[0] > 1.5 * rows * g.stride_h
           and _direct_band(g, rows + 1)[2] * 4 <= DIRECT_BAND_BYTES):
        rows += 1
    while rows > 1 and _direct_band(g, rows)[2] * 4 > DIRECT_BAND_BYTES:
        rows -= 1
    while (rows > 1 and images * -(-g.out_height // rows) < 4 * num_threads
           and not _weights_dominate(g, _direct_band(g, rows)[2] * 4)):
        rows -= 1
    return _even_runs(g.out_height, rows)


def _even_runs(total, rows):
    """At most ``rows`` per run, in as many runs as ``rows`` gives but of
    even length: 13 vectors in 5 + 5 + 3 rather than 6 + 6 + 1, whose
    short last item left a thread idle while another ran a full one.
    Measured (pointwise, batch 1, 2 threads, load 0.2-0.5, ms before /
    after): C96-K576 14x14 0.150 / 0.104, C64-K384 14x14 0.072 / 0.051,
    C576-K96 14x14 0.122 / 0.106, C32-K192 28x28 0.054 / 0.048; the same
    where the runs were already even."""
    return -(-total // -(-total // rows))


def _weights_dominate(g, band_bytes):
    """Whether a group's filters outweigh an item's band (a small plane
    with many channels): the threads then share the filters' chunks rather
    than the rows, each item reading only its chunks' weights."""
    weight_bytes = g.out_channels // g.groups * _col_rows(g) * 4
    return weight_bytes >= band_bytes


def _chunk_runs(g, rows, chunks, num_threads, band_bytes):
    """Runs of filter chunks per item: enough for four items per thread
    where the filters outweigh the band (see _weights_dominate), else 1."""
    _, lanes, _, _ = _direct_parameters()
    if _direct_pointwise(g):
        row_runs = -(-(-(-g.out_height * g.out_width // lanes)) // rows)
    else:
        row_runs = -(-g.out_height // rows)
    items = g.batch * g.groups * row_runs
    if items >= 4 * num_threads or not _weights_dominate(g, band_bytes):
        return 1
    return int(max(1, min(chunks, -(-4 * num_threads // items))))


def _pack_chunks(weight, groups, width):
    """(G, chunks, Cg*R*S, width): each group's filters in chunks of
    ``width`` output channels, tap-major, the last chunk zero-padded; one
    pass over the weight (2.2x faster than padding then transposing: 1.4
    against 3.1 ms for 512 x 512 x 3 x 3 here)."""
    filters = weight.shape[0] // groups
    chunks = -(-filters // width)
    taps = weight[0].size
    full = filters // width
    per_group = weight.reshape(groups, filters, taps)
    packed = np.empty((groups, chunks, taps, width), np.float32)
    packed[:, :full] = per_group[:, :full * width].reshape(
        groups, full, width, taps).transpose(0, 1, 3, 2)
    if full < chunks:
        packed[:, full] = 0
        packed[:, full, :, :filters - full * width] = per_group[
            :, full * width:].transpose(0, 2, 1)
    return packed


def pack_direct_weights(weight, groups):
    """The pixel-lane kernel's weight layout (G, chunks, Cg*R*S, KB): chunks
    of KB output channels, whose weights each tap broadcasts."""
    return _pack_chunks(weight, groups, _direct_parameters()[2])


def _direct_tap_offsets(g, band_rows, row_len, phases=None):
    """Offset in the band of tap (c, r, s) from a vector's first input; the
    band holds ``phases`` column phases (the stride, unless given: 1 for
    the channel-lane kernel's band of whole rows)."""
    channels = g.in_channels // g.groups
    if phases is None:
        phases = g.stride_w
    c = np.arange(channels).reshape(-1, 1, 1) * (band_rows * phases * row_len)
    r = np.arange(g.kernel_height).reshape(1, -1, 1) * (
        g.dilation_h * phases * row_len)
    columns = np.arange(g.kernel_width) * g.dilation_w
    s = ((columns % phases) * row_len + columns // phases).reshape(1, 1, -1)
    return (c + r + s).reshape(-1).astype(np.intp)


@functools.lru_cache(maxsize=256)
def _direct_plan(g, num_threads):
    """(rows per item, band rows, band row length, band floats, tap
    offsets, pointwise, taps per channel block, runs of filter chunks) of a
    call; the offsets array is shared, read-only."""
    rows = _direct_rows(g, num_threads)
    pointwise = _direct_pointwise(g)
    _, lanes, per_tile, _ = _direct_parameters()
    if pointwise:
        band_rows, row_len, band_size = 1, 1, 1
        offsets = np.arange(g.in_channels // g.groups, dtype=np.intp) * (
            g.in_height * g.in_width)
        read = rows * (g.in_channels // g.groups) * lanes * 4
    else:
        band_rows, row_len, band_size = _direct_band(g, rows)
        offsets = _direct_tap_offsets(g, band_rows, row_len)
        read = band_size * 4
    offsets.flags.writeable = False
    chunks = -(-(g.out_channels // g.groups) // per_tile)
    return (rows, band_rows, row_len, band_size, offsets, pointwise,
            _direct_block_channels(g, row_len) * g.kernel_height
            * g.kernel_width, _chunk_runs(g, rows, chunks, num_threads, read))


def _direct_block_channels(g, row_len, tile_bytes=None):
    """Channels per block: a tile's inputs of that many channels fit
    ``tile_bytes`` (default DIRECT_TILE_BYTES)."""
    _, lanes, _, per_tile = _direct_parameters()
    if _direct_pointwise(g):
        per_channel = per_tile * lanes * 4
    else:
        per_row = -(-g.out_width // lanes)
        # output rows a tile of per_tile vectors spans (one more where
        # tiles start part way along a row)
        span = min(g.out_height, -(-per_tile // per_row)
                   + (1 if per_tile % per_row else 0))
        per_channel = _band_rows(g, span) * g.stride_w * row_len * 4
    channels = g.in_channels // g.groups
    if tile_bytes is None:
        tile_bytes = DIRECT_TILE_BYTES
    return int(max(1, min(channels, tile_bytes // per_channel)))


#: The channel-vectorised forward (``fc_cv_item`` in direct_conv.h): work
#: items of about this many output pixels (whole rows), and channel blocks
#: whose weights (taps x one chunk of filters) fit this many bytes of L1.
DIRECT_CV_PIXELS = 128
DIRECT_CV_WEIGHT_BYTES = 24 * 1024


def _cv_vectors(g):
    """Vectors of output channels per chunk: 1, 2 or 4 (16 lanes each)."""
    filters = g.out_channels // g.groups
    return 1 if filters <= 16 else 2 if filters <= 32 else 4


def _cv_band(g, rows):
    """(band rows, row length, floats) of a one-phase band for ``rows``."""
    band_rows = _band_rows(g, rows)
    row_len = ((g.out_width - 1) * g.stride_w
               + (g.kernel_width - 1) * g.dilation_w + 1)
    return band_rows, row_len, (g.in_channels // g.groups) * band_rows * (
        row_len)


@functools.lru_cache(maxsize=256)
def _cv_plan(g, num_threads):
    """(rows, band rows, row length, band floats, tap offsets, pointwise
    (never), block taps, runs of chunks) of a channel-vectorised call, as
    ``_direct_plan`` has them."""
    rows = max(1, min(g.out_height, -(-DIRECT_CV_PIXELS // g.out_width)))
    while rows > 1 and _cv_band(g, rows)[2] * 4 > DIRECT_BAND_BYTES:
        rows -= 1
    # too few items for the threads: cut the filters into runs of chunks
    # (each item then reads only its chunks' weights), not the rows
    band_rows, row_len, band_size = _cv_band(g, rows)
    chunks = -(-(g.out_channels // g.groups) // (_cv_vectors(g) * 16))
    chunk_runs = _chunk_runs(g, rows, chunks, num_threads, band_size * 4)
    images = g.batch * g.groups
    while (chunk_runs == 1 and rows > 1
           and images * -(-g.out_height // rows) < 4 * num_threads):
        rows -= 1
        band_rows, row_len, band_size = _cv_band(g, rows)
    offsets = _direct_tap_offsets(g, band_rows, row_len, phases=1)
    offsets.flags.writeable = False
    channels = g.in_channels // g.groups
    taps_per_channel = g.kernel_height * g.kernel_width
    chunk_bytes = taps_per_channel * _cv_vectors(g) * 16 * 4
    block = max(1, min(channels, DIRECT_CV_WEIGHT_BYTES // chunk_bytes))
    return (rows, band_rows, row_len, band_size, offsets, False,
            block * taps_per_channel, chunk_runs)


def pack_cv_weights(weight, groups, vectors):
    """The channel-lane kernel's weight layout (G, chunks, Cg*R*S,
    vectors * 16): chunks of ``vectors`` vectors of output channels."""
    return _pack_chunks(weight, groups, vectors * 16)


#: The weight gradient's work items hold at least this many output pixels,
#: and more (up to DIRECT_WEIGHT_GRAD_MAX_PIXELS) while their output
#: gradients, transposed to (pixel, filter), take at most
#: DIRECT_WEIGHT_GRAD_GT_BYTES: they stay in L1 while every group of taps
#: sweeps them, and longer items share the band's extra rows and the
#: partial sums' stores among more pixels. Measured 2026-12-04 (ms, 2
#: threads, best of two alternations, load 0.3-0.6; 128 / 256 / 512
#: pixels): 16 filters N64-C16-32x32 1.53 / 1.28 / 1.28 (sliding),
#: N64-C8-28x28 0.66 / 0.61 / 0.58; 32 filters N64-C32-16x16 1.28 / 1.20,
#: N64-C16-32x32 3x3/2 0.82 / 0.72; but 64 filters N64-C32-14x14 1.56 /
#: 1.83 (a 64 KiB transposed block), hence the byte limit.
DIRECT_WEIGHT_GRAD_PIXELS = 128
DIRECT_WEIGHT_GRAD_MAX_PIXELS = 512
DIRECT_WEIGHT_GRAD_GT_BYTES = 32 * 1024

#: With few taps (Cg * R * S) grad_weight puts output pixels in the vector
#: lanes (no transposes; see direct_conv.h): at most
#: DIRECT_PIXEL_WEIGHT_GRAD_MAX_TAPS taps on output rows at least
#: DIRECT_PIXEL_WEIGHT_GRAD_MIN_WIDTH wide (narrower rows leave lanes
#: empty), or at most DIRECT_PIXEL_WEIGHT_GRAD_ANY_WIDTH_TAPS on any; work
#: items of about DIRECT_PIXEL_WEIGHT_GRAD_PIXELS pixels. Measured (3x3
#: stride 1, float32, 2 threads, time filters-in-lanes / pixels-in-lanes,
#: K 16-64): 1.1-1.6 at C = 1 on widths 14-56; 1.1-1.4 at C = 3 on 28-56
#: but 0.9 on 14; 0.85-1.2 at C = 4; 0.65-1.0 at C = 8; 0.5-0.9 at C = 16;
#: 1x1 of 16 channels on width 32, 1.36.
DIRECT_PIXEL_WEIGHT_GRAD_MAX_TAPS = 27
DIRECT_PIXEL_WEIGHT_GRAD_MIN_WIDTH = 28
DIRECT_PIXEL_WEIGHT_GRAD_ANY_WIDTH_TAPS = 9
DIRECT_PIXEL_WEIGHT_GRAD_PIXELS = 512


def _pixel_lane_weight_grad(g) -> bool:
    taps = (g.in_channels // g.groups) * g.kernel_height * g.kernel_width
    return taps <= DIRECT_PIXEL_WEIGHT_GRAD_ANY_WIDTH_TAPS or (
        taps <= DIRECT_PIXEL_WEIGHT_GRAD_MAX_TAPS
        and g.out_width >= DIRECT_PIXEL_WEIGHT_GRAD_MIN_WIDTH)


def _weight_grad_slides(g, filter_vectors):
    """Whether the filter-lane weight gradient slides along the rows
    (direct_conv.h's fc_wgrad_slide3): 3-wide filters at column stride 1
    without column dilation and one vector of filters, where the plain tile
    spends a load on every multiply-add. Measured 2026-12-04 (ms, 2
    threads, best of two alternations, load 0.3-0.6, plain / sliding):
    16 filters N64-C16-32x32 1.53 / 1.28, N64-C8-28x28 0.71 / 0.61; a
    two-vector slide (32 filters) was slower: N64-C32-16x16 1.20 / 1.24,
    N32-C32-32x32 2.22 / 2.36."""
    return (_direct.weight_grad_slides() and filter_vectors == 1
            and g.kernel_width == 3 and g.stride_w == 1
            and g.dilation_w == 1)


@functools.lru_cache(maxsize=256)
def _weight_grad_plan(g):
    """(filter vectors, padded filters, padded taps, pointwise, rows per
    item, band rows, band row length, band floats, tap offsets (padded;
    shared, read-only), runs, lane sums, scratch floats per thread) of
    ``_direct_weight_grad``: worked out once per geometry (some 20 us of a
    call otherwise)."""
    _, lanes, _, _ = _direct_parameters()
    filters = g.out_channels // g.groups
    taps = (g.in_channels // g.groups) * g.kernel_height * g.kernel_width
    if _pixel_lane_weight_grad(g):
        filter_vectors = 0
        padded_filters = -(-filters // _direct.weight_grad_pixel_filters()) \
            * _direct.weight_grad_pixel_filters()
        pixels = DIRECT_PIXEL_WEIGHT_GRAD_PIXELS
    else:
        filter_vectors = 1 if filters <= lanes else \
            2 if filters <= 2 * lanes else 4
        padded_filters = -(-filters // (filter_vectors * lanes)) * (
            filter_vectors * lanes)
        pixels = min(DIRECT_WEIGHT_GRAD_MAX_PIXELS, max(
            DIRECT_WEIGHT_GRAD_PIXELS,
            DIRECT_WEIGHT_GRAD_GT_BYTES // (4 * padded_filters)))
    per_group = _direct.weight_grad_taps(filter_vectors)
    padded_taps = -(-taps // per_group) * per_group
    pointwise = _direct_pointwise(g)
    rows = max(1, min(g.out_height, pixels // g.out_width))
    if pointwise:
        band_rows, row_len, band_size = 1, 1, 1
        offsets = np.arange(g.in_channels // g.groups, dtype=np.intp) * (
            g.in_height * g.in_width)
    else:
        while rows > 1 and _direct_band(g, rows)[2] * 4 > DIRECT_BAND_BYTES:
            rows -= 1
        band_rows, row_len, band_size = _direct_band(g, rows)
        offsets = _direct_tap_offsets(g, band_rows, row_len)
    # the padding taps read tap 0's inputs; their sums are dropped
    offsets = np.concatenate(
        [offsets, np.zeros(padded_taps - taps, np.intp)])
    offsets.flags.writeable = False
    items = g.batch * g.groups * -(-g.out_height // rows)
    runs = max(1, min(GRAD_WEIGHT_RUNS, items))
    lane_sums = lanes if filter_vectors == 0 else 1
    scratch = rows * g.out_width * (1 if filter_vectors == 0
                                    else padded_filters)
    return (filter_vectors, padded_filters, padded_taps, pointwise, rows,
            band_rows, row_len, band_size, offsets, runs, lane_sums, scratch)


def _direct_weight_grad(grad_output, x, g):
    """grad_weight through the register-blocked kernel (float32): the
    filters in vector lanes, or with few taps (``_pixel_lane_weight_grad``)
    output pixels in the lanes; per-run partial sums over fixed runs of
    work items (GRAD_WEIGHT_RUNS at most), added in order."""
    (filter_vectors, padded_filters, padded_taps, pointwise, rows, band_rows,
     row_len, band_size, offsets, runs, lane_sums,
     scratch) = _weight_grad_plan(g)
    filters = g.out_channels // g.groups
    taps = (g.in_channels // g.groups) * g.kernel_height * g.kernel_width
    num_threads = _num_threads(_threads.conv_threads(g))
    partials = np.zeros((runs, g.groups, padded_taps,
                         padded_filters * lane_sums), np.float32)
    _direct.conv2d_direct_weight_grad(
        x, grad_output, partials, np.empty((num_threads, band_size),
                                           np.float32),
        np.empty((num_threads, scratch), np.float32),
        offsets, g, g.groups, rows, band_rows, row_len, pointwise,
        filter_vectors, num_threads,
        _weight_grad_slides(g, filter_vectors))
    total = np.empty(partials[0].size, np.float32)
    _conv.sum_rows(partials.reshape(runs, -1), total, num_threads)
    if lane_sums > 1:
        # the lanes of each sum, added in order (a fixed order: numpy's
        # pairwise sum of a shape known here)
        total = total.reshape(-1, lane_sums).sum(axis=1)
    per_group_sums = total.reshape(g.groups, padded_taps, padded_filters)
    return np.ascontiguousarray(
        per_group_sums[:, :taps, :filters].transpose(0, 2, 1)).reshape(
            g.weight_shape)


#: The register-blocked kernel puts output pixels in vector lanes, 16 of one
#: row at a time, unless they would fill less than this fraction of the
#: lanes (rows of 8 fill half): then output channels go in the lanes
#: (``fc_cv_item``). Measured (ms, 2 threads, the two alternating, load
#: 0.8-1; pixels / channels in lanes): N32-C256-8x8-K256 3x3 19.2 / 11.7;
#: where rows fill the lanes the pixel kernel was faster or level
#: (N64-C32-14x14-K64 2.15 / 2.39, N32-C64-32x32-K64 10.3 / 11.9,
#: N32-C64-32x32-K128 3x3/2 5.7 / 5.3, N8-C3-224x224-K64 7x7/2 9.4 / 12.4).
DIRECT_CV_BELOW_LANE_USE = 0.7

#: ... and so do strided layers with at least this many taps (Cg * R * S)
#: and 16 filters per group: their pixel band is split into stride phases,
#: the channel one is not. Measured as above (pixels / channels in lanes):
#: N16-C128-28x28-K256 3x3/2 10.5 / 8.6, N16-C64-56x56-K128 3x3/2 10.8 /
#: 9.0, N32-C32-32x32-K64 3x3/2 1.84 / 1.74, N32-C64-32x32-K128 3x3/2 5.72
#: / 5.75; with 147 taps (the 7x7/2 stem on 3 channels) 9.4 / 13.4.
DIRECT_CV_STRIDED_MIN_TAPS = 256


#: ... and so do rows narrower than a vector (each row's one vector leaves
#: lanes empty) with at least DIRECT_CV_NARROW_MIN_FILTERS filters and
#: DIRECT_CV_NARROW_MIN_CHANNELS channels per group. Measured (ms, 2
#: threads, the two alternating in one process, pixels / channels in
#: lanes): N64-C32-14x14-K64 3x3 1.83 / 1.76, its input gradient (64 -> 32
#: channels) 2.03 / 1.80, N64-C16-14x14-K32 0.62 / 0.45; but with 16
#: filters (that layer's input gradient) 0.65 / 1.58, and N64-C1-28x28-K32
#: 0.26 / 0.35; on rows of 28 and 56 (N16-C128-28x28-K128, N16-C64-56x56-K64)
#: level or slower.
DIRECT_CV_NARROW_MIN_FILTERS = 32
DIRECT_CV_NARROW_MIN_CHANNELS = 16


def _uses_channel_vectors(g):
    """Whether a register-blocked call puts output channels in the lanes."""
    _, lanes, _, _ = _direct_parameters()
    use = g.out_width / (-(-g.out_width // lanes) * lanes)
    strided = (g.stride_w > 1 and _col_rows(g) >= DIRECT_CV_STRIDED_MIN_TAPS
               and g.out_channels // g.groups >= 16)
    narrow = (g.out_width < lanes
              and g.out_channels // g.groups >= DIRECT_CV_NARROW_MIN_FILTERS
              and g.in_channels // g.groups >= DIRECT_CV_NARROW_MIN_CHANNELS)
    return (_direct.channel_vectors_available() and not _direct_pointwise(g)
            and (use < DIRECT_CV_BELOW_LANE_USE or strided or narrow)
            and _cv_band(g, 1)[2] * 4 <= DIRECT_MAX_BAND_BYTES)


def _direct_forward(x, weight, bias, g, packed=None, clamp=None):
    """conv2d through a register-blocked direct kernel (float32): output
    pixels in vector lanes or, for narrow planes and strided layers
    (``_uses_channel_vectors``), output channels; ``clamp`` (lo, hi) or
    None, an activation applied as the outputs are stored."""
    if _uses_channel_vectors(g):
        vectors, plan, key = _cv_vectors(g), _cv_plan, "direct-cv"

        def pack():
            return pack_cv_weights(weight, g.groups, vectors)
    else:
        vectors, plan, key = 0, _direct_plan, "direct"

        def pack():
            return pack_direct_weights(weight, g.groups)
    weights = pack() if packed is None else packed.get(weight, key, pack)
    num_threads = _num_threads(_threads.conv_threads(g))
    (rows, band_rows, row_len, band_size, offsets, pointwise, block_taps,
     chunk_runs) = plan(g, num_threads)
    y = np.empty(g.output_shape, dtype=np.float32)
    has_bias = bias is not None
    bias_array = bias if has_bias else np.empty(1, dtype=np.float32)
    # the channel-lane kernel's per-thread sums: its item's pixels x a chunk
    sums = np.empty((num_threads, max(1, rows * g.out_width * vectors * 16)),
                    np.float32)
    _direct.conv2d_direct(
        x, weights, bias_array, has_bias, y,
        np.empty((num_threads, band_size), np.float32), sums, offsets, g,
        g.groups, rows, band_rows, row_len, pointwise, block_taps,
        chunk_runs, vectors, num_threads, clamp)
    return y


#: This backend's conv2d_forward takes ``clamp`` (see there).
FUSED_CLAMP = True


def _clamp_in_place(y, clamp):
    """y clamped to [lo, hi] in place (the activation of a method that
    does not apply it as it stores), ReLU on the compiled kernel; y as it
    is for ``clamp`` None."""
    if clamp is None:
        return y
    lo, hi = clamp
    if lo == 0 and hi == math.inf:
        if y.size:
            _activation.relu(y.reshape(-1), y.reshape(-1), _num_threads(
                _threads.elementwise_threads(y.size)))
        return y
    return np.clip(y, y.dtype.type(lo), y.dtype.type(hi), out=y)


def _strided_pointwise(g, dtype):
    """The stride-1 geometry of a float32 1x1 strided convolution without
    padding on its subsampled input x[:, :, ::sh, ::sw] (``_subsampled``),
    or None for any other convolution. Such a layer (ResNet's downsampling
    shortcut) then runs as a pointwise one: its band and stride phases read
    every input row and column to use a quarter of them. Measured
    2026-12-04 (ms, 2 threads, the two alternating in one process, load
    0.3-0.5; strided / subsampled, forward and the whole backward):
    ResNet-8's shortcuts N64-C16-32x32-K32 0.27 / 0.20, 0.75 / 0.65 and
    N64-C32-16x16-K64 0.22 / 0.13, 0.74 / 0.51; resnet18's
    N16-C64-56x56-K128 1.90 / 1.00, 3.18 / 2.72; ResNet-50's
    N8-C512-28x28-K1024 7.1 / 6.1, 18.8 / 16.1; level (0.97-1.06) on
    N16-C256-14x14-K512's forward, faster or level on every other shape
    (medians of 20 calls, the better of two alternations)."""
    if (np.dtype(dtype) != np.float32 or g.kernel_height != 1
            or g.kernel_width != 1 or (g.stride_h, g.stride_w) == (1, 1)
            or (g.pad_top, g.pad_left, g.pad_bottom, g.pad_right)
            != (0, 0, 0, 0)):
        return None
    return _shapes.conv_geometry(
        (g.batch, g.in_channels, g.out_height, g.out_width),
        g.weight_shape, (1, 1), (0, 0, 0, 0), (1, 1), g.groups)


def _subsampled(x, g):
    """x[:, :, ::sh, ::sw] as a C-contiguous array, in one parallel pass."""
    out = np.empty((g.batch, g.in_channels, g.out_height, g.out_width),
                   np.float32)
    _direct.subsample(x, out, g.stride_h, g.stride_w,
                      _num_threads(_threads.elementwise_threads(x.size)))
    return out


def conv2d_forward(x, weight, bias, g, packed=None, clamp=None):
    """y (N, K, OH, OW) = conv2d(x, weight) + bias, in x's dtype; with
    ``clamp`` = (lo, hi), then clamped to [lo, hi] (ReLU, ReLU6), as the
    register-blocked and depthwise kernels store their outputs, or in place
    after the other methods.

    ``packed`` (a ``PackedWeights`` or None) keeps the Winograd-domain
    filters between calls while weight keeps its values."""
    pointwise = _strided_pointwise(g, x.dtype)
    if pointwise is not None:
        return conv2d_forward(_subsampled(x, g), weight, bias, pointwise,
                              packed, clamp)
    if _uses_winograd(g, g.in_channels, g.out_channels,
                      (g.out_height, g.out_width), packed is not None,
                      x.dtype):
        if packed is None:
            filters = winograd_filters(weight)
        else:
            filters = packed.get(weight, "winograd-f4x4",
                                 lambda: winograd_filters(weight))
        return _clamp_in_place(_winograd(
            x, filters, False, bias, g.output_shape, g.pad_top, g.pad_left),
            clamp)
    if _is_depthwise(g):
        return _depthwise_forward(x, weight, bias, g, clamp)
    if _uses_blocked_direct_forward(g, x.dtype):
        return _direct_forward(x, weight, bias, g, packed, clamp)
    num_threads = _num_threads(_threads.conv_threads(g))
    dtype = x.dtype
    budget = _thread_budget(num_threads)
    col_rows, filters = _col_rows(g), g.out_channels // g.groups
    plane_out = g.out_height * g.out_width
    chunk_images = _chunk_images(
        g, (col_rows + filters) * plane_out * dtype.itemsize, num_threads,
        budget)
    if chunk_images:
        tile_rows = g.out_height
        work_size = (col_rows + filters) * chunk_images * plane_out
    else:
        tile_rows = _tile_rows(g, dtype.itemsize, 1, budget)
        # With fewer (image, group) pairs than threads, cut images into
        # more tiles so that every thread has work.
        pairs = g.batch * g.groups
        if pairs < num_threads and not _is_direct(g):
            pieces = -(-num_threads // pairs)
            tile_rows = max(1, min(tile_rows, -(-g.out_height // pieces)))
        work_size = 1 if _is_direct(g) else col_rows * tile_rows * g.out_width
    # a pointwise layer's float32 products on the register-blocked kernel
    # (conv.pyx's _product), which packs its panels into the workspace
    pack = (not chunk_images and _is_direct(g) and dtype == np.float32
            and _conv.pointwise_pack_floats(col_rows) > 0)
    if pack:
        work_size = _conv.pointwise_pack_floats(col_rows)
    workspace = np.empty((num_threads, work_size), dtype=dtype)
    y = np.empty(g.output_shape, dtype=dtype)
    has_bias = bias is not None
    bias_array = bias if has_bias else np.empty(1, dtype=dtype)
    with _blas_held_to_one_thread(num_threads):
        _conv.conv2d_forward(x, weight, bias_array, has_bias, y, workspace, g,
                             tile_rows, chunk_images, num_threads, pack,
                             clamp)
    return y


def _winograd_weight_grad(grad_output, x, g, need_bias_grad=True):
    """(grad_weight, grad_bias or None) of a 3x3 stride-1 convolution
    through the Winograd domain (winograd.pyx's winograd_f43_weight_grad:
    blocks of WINOGRAD_WEIGHT_GRAD_TILES tiles shared by the threads, each
    point's sum on one thread): the bits depend on the shape alone."""
    num_threads = _num_threads(_threads.conv_threads(g, passes=2))
    dtype = grad_output.dtype
    in_channels, out_channels = g.in_channels, g.out_channels
    total_tiles = g.batch * (-(-g.out_height // 4)) * (-(-g.out_width // 4))
    per_tile = 36 * (in_channels + out_channels) * dtype.itemsize
    block_tiles = int(max(1, min(total_tiles, WINOGRAD_WEIGHT_GRAD_TILES,
                                 WINOGRAD_STAGED_BYTES // per_tile)))
    domain = np.empty(36 * in_channels * out_channels, dtype)
    with _blas_held_to_one_thread(num_threads):
        _winograd_kernels.winograd_f43_weight_grad(
            x, grad_output, domain,
            np.empty(36 * in_channels * block_tiles, dtype),
            np.empty(36 * out_channels * block_tiles, dtype),
            np.empty((num_threads, block_tiles * in_channels
                      + WINOGRAD_V_SLACK), dtype), g.pad_top, g.pad_left,
            block_tiles, num_threads)
    grad_weight = np.empty(g.weight_shape, dtype)
    _winograd_kernels.winograd_filters_adjoint_f43(domain, grad_weight,
                                                   num_threads)
    return grad_weight, (_bias_grad(grad_output, num_threads)
                         if need_bias_grad else None)


def _bias_grad(grad_output, num_threads):
    """grad_bias: each output channel's sum of grad_output (float64 sums in
    one fixed order, ``normalization.channel_sums``), in its dtype."""
    batch, channels, height, width = grad_output.shape
    sums = np.zeros(channels)
    if grad_output.size:
        _normalization.channel_sums(
            grad_output.reshape(batch * channels, height * width), channels,
            sums, np.empty(batch * channels), num_threads)
    return sums.astype(grad_output.dtype)


def _direct_weight_grad_and_bias(grad_output, x, g, need_bias_grad=True):
    """(grad_weight, grad_bias or None), the weight's through the
    register-blocked kernel."""
    return _direct_weight_grad(grad_output, x, g), (_bias_grad(
        grad_output, _num_threads(_threads.conv_threads(g)))
        if need_bias_grad else None)


def _input_grad_geometry(g):
    """The forward convolution whose output is grad_input of a stride-1
    convolution: grad_output (N, K, OH, OW) correlated with the flipped,
    channel-swapped filters (``_flipped_filters``), padded by the kernel's
    reach less the forward's padding on each side. None for a strided
    convolution, or padding beyond the kernel's reach."""
    if g.stride_h != 1 or g.stride_w != 1:
        return None
    reach_h = (g.kernel_height - 1) * g.dilation_h
    reach_w = (g.kernel_width - 1) * g.dilation_w
    padding = (reach_h - g.pad_top, reach_w - g.pad_left,
               reach_h - g.pad_bottom, reach_w - g.pad_right)
    if min(padding) < 0:
        return None
    return _shapes.conv_geometry(
        g.output_shape,
        (g.in_channels, g.out_channels // g.groups, g.kernel_height,
         g.kernel_width), (1, 1), padding, (g.dilation_h, g.dilation_w),
        g.groups)


def _phase_taps(phase, stride, dilation, pad, kernel):
    """The kernel taps that reach input rows ``phase + stride * i`` of a
    strided convolution, and the offset of the first: (taps in the phase
    convolution's order, offset e of that first tap, the phase
    convolution's dilation). Output row i + e + t * dilation' meets the
    t-th tap; the taps run from the largest kernel index down."""
    taps = [r for r in range(kernel - 1, -1, -1)
            if (phase + pad - r * dilation) % stride == 0]
    if not taps:
        return taps, 0, 1
    step = dilation // math.gcd(stride, dilation)
    return taps, (phase + pad - taps[0] * dilation) // stride, step


def _strided_input_grad(grad_output, weight, g, add_to=None):
    """grad_input of a strided convolution through the register-blocked
    kernel, one stride-1 convolution per phase (a, b) of the input: rows
    a + sh * i and columns b + sw * j receive grad_output correlated with
    the filter taps that reach them (flipped, channels swapped), so the
    phases together do the forward's multiplications once. None where the
    kernel would not run a phase (the caller then uses im2col + GEMM).
    ``add_to`` (float32, x's shape, or None): the phases are added into it
    (the stacked form's result is returned as it is, and added by the
    caller)."""
    phases = []
    for a in range(g.stride_h):
        rows, top, step_h = _phase_taps(a, g.stride_h, g.dilation_h,
                                        g.pad_top, g.kernel_height)
        for b in range(g.stride_w):
            columns, left, step_w = _phase_taps(
                b, g.stride_w, g.dilation_w, g.pad_left, g.kernel_width)
            height = -(-(g.in_height - a) // g.stride_h)
            width = -(-(g.in_width - b) // g.stride_w)
            if not rows or not columns or height <= 0 or width <= 0:
                phases.append((a, b, None, None))
                continue
            pad_top, pad_left = -top, -left
            phase = _shapes.ConvGeometry(
                g.batch, g.out_channels, g.out_height, g.out_width,
                g.in_channels, len(rows), len(columns), 1, 1, pad_top,
                pad_left,
                height - 1 + (len(rows) - 1) * step_h - pad_top
                - g.out_height + 1,
                width - 1 + (len(columns) - 1) * step_w - pad_left
                - g.out_width + 1,
                step_h, step_w, g.groups, height, width)
            if _is_depthwise(phase) or not _uses_blocked_direct(
                    phase, grad_output.dtype):
                return None
            phases.append((a, b, phase, (rows, columns)))
    merged = _merged_phases(phases, g) if MERGED_PHASES else None
    if merged is not None:
        return _merged_phases_input_grad(grad_output, weight, g, phases,
                                         *merged, add_to=add_to)
    stacked = _stacked_phases(phases, g)
    if stacked is not None:
        return _stacked_phases_input_grad(grad_output, weight, g, phases,
                                          *stacked)
    results = []
    for a, b, phase, taps in phases:
        if phase is None:
            results.append(None)
            continue
        results.append(_direct_forward(
            grad_output, _phase_filters(weight, taps, g.groups), None, phase))
    grad_input = np.empty(g.input_shape, grad_output.dtype) \
        if add_to is None else add_to
    _direct.interleave_phases(
        results, grad_input, g.stride_h, g.stride_w,
        _num_threads(_threads.elementwise_threads(grad_input.size)),
        add_to is not None)
    return grad_input


def _phase_filters(weight, taps, groups):
    """The filters of one phase's convolution: (K, Cg, R, S) cut to the
    taps (rows, columns) that reach the phase, in its order, channels
    swapped."""
    rows = np.asarray(taps[0], np.intp)[:, None]
    columns = np.asarray(taps[1], np.intp)[None, :]
    return _swapped_filter_channels(weight[:, :, rows, columns], groups)


def _stacked_phase_filters(weight, phases):
    """The phases' filters (``_phase_filters`` of each, groups 1) stacked
    into one (P * C, K, R', S') array, gathered in one indexing: four
    phases' slicing, swapping and copying one by one took 0.18 ms of
    DCGAN's 1.5 ms conv_transpose2d (64 -> 32 channels, 4x4/2)."""
    rows = np.array([taps[0] for _, _, _, taps in phases], np.intp)
    columns = np.array([taps[1] for _, _, _, taps in phases], np.intp)
    picked = weight[:, :, rows[:, :, None], columns[:, None, :]]
    stacked = np.ascontiguousarray(picked.transpose(2, 1, 0, 3, 4))
    return stacked.reshape((-1, weight.shape[0]) + stacked.shape[3:])


def _stacked_phases(phases, g):
    """Where every phase of a strided input gradient is a convolution with
    the same number of taps and the same dilation (a kernel a whole
    multiple of its stride: 2x2/2 upsampling, DCGAN's 4x4/2, patchify
    layers), one stride-1 convolution with the phases' filters stacked
    computes them all (``_phase_windows``: padded by the most any phase
    is, each phase's plane is a window of its output). Returns (that
    convolution's geometry, each phase's row offsets, column offsets) or
    None (groups, or a phase that no tap reaches)."""
    if g.groups != 1 or any(phase is None for _, _, phase, _ in phases):
        return None
    first = phases[0][2]
    shape = (first.kernel_height, first.kernel_width, first.dilation_h,
             first.dilation_w)
    if any((phase.kernel_height, phase.kernel_width, phase.dilation_h,
            phase.dilation_w) != shape for _, _, phase, _ in phases):
        return None
    windows = _phase_windows(phases, g, first.kernel_height,
                             first.kernel_width, shape[2:])
    if windows is None or not _uses_blocked_direct(windows[0], np.float32):
        return None
    return windows


#: Whether strided input gradients whose phases differ in taps run as one
#: call (``_merged_phases``).
MERGED_PHASES = True
#: The merged phases write into the gradient in place (fc_phase_out) at
#: column strides up to this (a stride-2 phase's vector spread over two
#: under alternate-lane masks); beyond it into planes of their own,
#: interleaved after. 0: never in place.
PHASES_IN_PLACE_MAX_STRIDE = 2
#: ... on builds with 8-lane vectors (AVX2), where the spread stores are
#: vmaskmovps, slow on AMD's cores: measured 2026-12-04 (AMD EPYC Zen 3, 2
#: threads, medians of 5 alternated processes, load 1.3-1.9, ms of the
#: input gradient in place / interleaved after): N32-C64-32x32-K128 3x3/2
#: 11.61 / 10.12, N64-C16-32x32-K32 3x3/2 2.58 / 1.81, N8-C32-56x56-K64
#: 3x3/2 3.05 / 2.30, N16-C64-32x32-K128 4x4/2 8.54 / 8.29,
#: N16-C128-28x28-K256 3x3/2 19.51 / 18.48.
PHASES_IN_PLACE_MAX_STRIDE_NARROW = 0


def _phases_in_place_max_stride():
    """PHASES_IN_PLACE_MAX_STRIDE for this build's vector width."""
    return (PHASES_IN_PLACE_MAX_STRIDE_NARROW if _narrow_lanes()
            else PHASES_IN_PLACE_MAX_STRIDE)
#: The merged phases' channel blocks: a tile's inputs of that many channels
#: fit this many bytes (of L2; DIRECT_TILE_BYTES is L1's). Each phase
#: applies a quarter of the window's taps (a 3x3 stride-2 layer's 1, 2, 2
#: and 4 of 9), so blocks sized for L1 ended their sums every few taps,
#: and each end is a masked load, add and store per output vector.
#: Measured 2026-12-04 (ms, 2 threads, medians of 4 alternations, load
#: 0.9-1.2; L1-sized / 128 KiB): conv_transpose2d 3x3/2 (8, 64, 28, 28) ->
#: 32 channels 1.39 / 1.13, DCGAN's 4x4/2 1.24 / 1.10, the input gradient
#: of N32-C64-32x32-K128 3x3/2 4.53 / 4.22; N64-C16-32x32-K32 0.92 / 0.94.
MERGED_TILE_BYTES = 128 * 1024


def _phase_windows(phases, g, kernel_height, kernel_width, dilation):
    """The stride-1 convolution of grad_output, padded by the most any
    phase is, whose output holds every phase's plane as a window (a
    kernel_height x kernel_width window of taps, each phase's its top-left
    corner), and each window's row and column offsets: (geometry, row
    offsets, column offsets), or None where no padding fits."""
    top = max(phase.pad_top for _, _, phase, _ in phases)
    left = max(phase.pad_left for _, _, phase, _ in phases)
    row_offsets = [top - phase.pad_top for _, _, phase, _ in phases]
    column_offsets = [left - phase.pad_left for _, _, phase, _ in phases]
    height = max(r + phase.out_height
                 for r, (_, _, phase, _) in zip(row_offsets, phases))
    width = max(c + phase.out_width
                for c, (_, _, phase, _) in zip(column_offsets, phases))
    bottom = (height - 1 + (kernel_height - 1) * dilation[0] - top
              - g.out_height + 1)
    right = (width - 1 + (kernel_width - 1) * dilation[1] - left
             - g.out_width + 1)
    if min(top, left, bottom, right) < 0:
        return None
    geometry = _shapes.conv_geometry(
        (g.batch, g.out_channels, g.out_height, g.out_width),
        (len(phases) * g.in_channels, g.out_channels, kernel_height,
         kernel_width), (1, 1), (top, left, bottom, right), dilation, 1)
    if (geometry.out_height, geometry.out_width) != (height, width):
        return None
    return (geometry, np.array(row_offsets, np.intp),
            np.array(column_offsets, np.intp))


def _merged_phases(phases, g):
    """One call of the pixel-lane kernel with taps per chunk of filters
    that computes every phase of a strided input gradient on one band,
    where the phases differ in their taps (a 3x3 stride-2 layer's have 1x1,
    1x2, 2x1 and 2x2) or sit at different offsets (DCGAN's 4x4/2). The
    call's output planes are the phases' own (the largest phase's size):
    phase p, padded pad_p, reads the window rows top - pad_p onward of a
    convolution padded by the most any phase is (top), so its taps sit
    there in a window tall enough for all; likewise the columns. Its C
    output channels must be whole chunks (C a multiple of the tile's
    filters). Returns (geometry, each phase's (row, column) tap offsets in
    the window) or None."""
    _, _, per_tile, _ = _direct_parameters()
    if (g.groups != 1 or g.in_channels % per_tile
            or any(phase is None for _, _, phase, _ in phases)):
        return None
    first = phases[0][2]
    dilation = (first.dilation_h, first.dilation_w)
    if any((phase.dilation_h, phase.dilation_w) != dilation
           for _, _, phase, _ in phases):
        return None
    top = max(phase.pad_top for _, _, phase, _ in phases)
    left = max(phase.pad_left for _, _, phase, _ in phases)
    shifts = [(top - phase.pad_top, left - phase.pad_left)
              for _, _, phase, _ in phases]
    if any(r % dilation[0] or c % dilation[1] for r, c in shifts):
        return None  # a shift between taps of a dilated window
    shifts = [(r // dilation[0], c // dilation[1]) for r, c in shifts]
    kernel_height = max(r + phase.kernel_height
                        for (r, _), (_, _, phase, _) in zip(shifts, phases))
    kernel_width = max(c + phase.kernel_width
                       for (_, c), (_, _, phase, _) in zip(shifts, phases))
    height = max(phase.out_height for _, _, phase, _ in phases)
    width = max(phase.out_width for _, _, phase, _ in phases)
    bottom = (height - 1 + (kernel_height - 1) * dilation[0] - top
              - g.out_height + 1)
    right = (width - 1 + (kernel_width - 1) * dilation[1] - left
             - g.out_width + 1)
    if min(bottom, right) < 0:
        return None
    merged = _shapes.conv_geometry(
        (g.batch, g.out_channels, g.out_height, g.out_width),
        (len(phases) * g.in_channels, g.out_channels, kernel_height,
         kernel_width), (1, 1), (top, left, bottom, right), dilation, 1)
    # narrow planes run better one phase at a time on the channel-lane
    # kernel (measured as below, per phase / merged: N64-C32-16x16-K64
    # 1.15 / 1.62, N16-C128-28x28-K256 7.5 / 8.8, N8-C256-14x14-K512 8.5 /
    # 13.3, all with phases narrower than a vector)
    # (a 1x1 window, every phase one tap at the same place, is the stacked
    # pointwise convolution of _stacked_phases)
    if (not _direct_applies(merged, np.float32) or _direct_pointwise(merged)
            or _uses_channel_vectors(merged)):
        return None
    return merged, shifts


def _merged_phases_input_grad(grad_output, weight, g, phases, merged,
                              shifts, add_to=None):
    """``_strided_input_grad`` where ``_merged_phases`` applies: each
    chunk of a phase's filters applies that phase's taps of the window
    (direct_conv.h's fc_direct_item with chunk_taps), written into the
    gradient in place (column strides up to _phases_in_place_max_stride();
    else into planes of their own, interleaved after), or added into
    ``add_to`` where given: one band and one parallel region instead of one
    per phase. Measured 2026-12-04 (ms, 2
    threads, best of two alternations, load 0.4-0.8; one call per phase /
    merged, 3x3 stride 2): N64-C16-32x32-K32 1.32 / 1.05, N32-C64-32x32-K128
    5.05 / 4.57, N32-C32-32x32-K64 1.75 / 1.54, N16-C64-56x56-K128 8.7 /
    8.6."""
    num_threads = _num_threads(_threads.conv_threads(merged))
    (rows, band_rows, row_len, band_size, offsets, _, block_taps,
     chunk_runs) = _direct_plan(merged, num_threads)
    _, _, per_tile, _ = _direct_parameters()
    window = offsets.reshape(g.out_channels, merged.kernel_height,
                             merged.kernel_width)
    chunk_offsets, chunk_weights, starts, per_channel = [], [], [0], []
    origin, phase_rows, phase_columns = [], [], []
    for (a, b, phase, taps), (row, column) in zip(phases, shifts):
        height, width = phase.kernel_height, phase.kernel_width
        tap_offsets = window[:, row:row + height,
                             column:column + width].reshape(-1)
        # (C, K * taps): the phase's filters, channels swapped, tap-major
        filters = _phase_filters(weight, taps, 1).reshape(g.in_channels, -1)
        for c0 in range(0, g.in_channels, per_tile):
            chunk_offsets.append(tap_offsets)
            chunk_weights.append(filters[c0:c0 + per_tile].T)
            starts.append(starts[-1] + tap_offsets.size)
            per_channel.append(height * width)
            origin.append((c0 * g.in_height + a) * g.in_width + b)
            phase_rows.append(phase.out_height)
            phase_columns.append(phase.out_width)
    packed = np.ascontiguousarray(np.concatenate(chunk_weights))[None, None]
    grad_input = np.empty(g.input_shape, grad_output.dtype) \
        if add_to is None else add_to
    in_place = g.stride_w <= _phases_in_place_max_stride()
    result = grad_input if in_place else np.empty(merged.output_shape,
                                                  np.float32)
    _direct.conv2d_direct(
        grad_output, packed, np.empty(1, np.float32), False, result,
        np.empty((num_threads, band_size), np.float32),
        np.empty((num_threads, 1), np.float32),
        np.ascontiguousarray(np.concatenate(chunk_offsets)), merged, 1, rows,
        band_rows, row_len, False, block_taps, chunk_runs, 0, num_threads,
        chunk_taps=np.array(starts, np.intp),
        chunk_per_channel=np.array(per_channel, np.intp),
        block_channels=_direct_block_channels(merged, row_len,
                                              MERGED_TILE_BYTES),
        phase_out=(np.array(origin, np.intp), np.array(phase_rows, np.intp),
                   np.array(phase_columns, np.intp), g.stride_h, g.stride_w,
                   add_to is not None, merged.output_shape)
        if in_place else None)
    if not in_place:
        at_origin = np.zeros(len(phases), np.intp)
        _direct.interleave_phase_channels(
            result, grad_input, g.stride_h, g.stride_w, at_origin, at_origin,
            _num_threads(_threads.elementwise_threads(grad_input.size)),
            add_to is not None)
    return grad_input


def _stacked_phases_input_grad(grad_output, weight, g, phases, stacked,
                               row_offsets, column_offsets):
    """``_strided_input_grad`` where ``_stacked_phases`` applies: one
    convolution onto sh * sw * C channels (grad_output read once, one
    parallel region), then each phase's window interleaved into place.
    Measured (2 threads, alternating in one process, medians of 15-21,
    against one convolution per phase): conv_transpose2d 128 -> 64
    channels, 2x2 stride 2 on 8 x 28 x 28, 2.03 / 2.39 ms (load 1.2);
    DCGAN's 4x4/2, 64 -> 32 on 16 x 16 x 16, 1.73 / 1.93 ms (load 1.0; the
    stacked planes are 17 x 17 for phases of 16 x 16)."""
    result = _direct_forward(grad_output, _stacked_phase_filters(
        weight, phases), None, stacked)
    grad_input = np.empty(g.input_shape, grad_output.dtype)
    _direct.interleave_phase_channels(
        result, grad_input, g.stride_h, g.stride_w, row_offsets,
        column_offsets,
        _num_threads(_threads.elementwise_threads(grad_input.size)))
    return grad_input


def _swapped_filter_channels(weight, groups):
    """(C, K / G, R, S): each group's filters with input and output
    channels swapped (the filters of the input gradient's convolution,
    before any flip)."""
    filters, channels = weight.shape[0] // groups, weight.shape[1]
    per_group = weight.reshape((groups, filters, channels) + weight.shape[2:])
    return np.ascontiguousarray(
        per_group.transpose(0, 2, 1, 3, 4).reshape(
            (groups * channels, filters) + weight.shape[2:]))


def _flipped_filters(weight, groups):
    """The filters channel-swapped and rotated by 180 degrees: those of a
    stride-1 input gradient's convolution."""
    return _swapped_filter_channels(weight[:, :, ::-1, ::-1], groups)


#: This backend's conv2d_backward takes ``add_input_grad_to`` (see there).
ADDS_INPUT_GRAD = True


def conv2d_backward(grad_output, x, weight, g, need_input_grad, *,
                    need_weight_grad=True, need_bias_grad=True,
                    add_input_grad_to=None):
    """``_conv2d_backward``; with ``add_input_grad_to`` (an array of x's
    shape and dtype) the input gradient is added into that array, which is
    returned as grad_input: a strided layer's phases are added in place as
    they are interleaved (a 1x1 stride-2 shortcut's gradient touches a
    quarter of the input's elements and never writes the zeros of the
    rest), any other method's result is added in one parallel pass."""
    pointwise = _strided_pointwise(g, grad_output.dtype)
    if pointwise is not None:
        # the pointwise convolution's gradients; its input gradient is
        # x[:, :, ::sh, ::sw]'s, spread (or added) into place
        compact, grad_weight, grad_bias = _conv2d_backward(
            grad_output, _subsampled(x, g) if need_weight_grad else None,
            weight, pointwise, need_input_grad,
            need_weight_grad=need_weight_grad, need_bias_grad=need_bias_grad)
        grad_input = None
        if compact is not None:
            grad_input = add_input_grad_to
            if grad_input is None:
                grad_input = np.empty(g.input_shape, np.float32)
            _direct.interleave_phases(
                [compact] + [None] * (g.stride_h * g.stride_w - 1),
                grad_input, g.stride_h, g.stride_w,
                _num_threads(_threads.elementwise_threads(grad_input.size)),
                add_input_grad_to is not None)
        return grad_input, grad_weight, grad_bias
    grad_input, grad_weight, grad_bias = _conv2d_backward(
        grad_output, x, weight, g, need_input_grad,
        need_weight_grad=need_weight_grad, need_bias_grad=need_bias_grad,
        add_input_grad_to=add_input_grad_to)
    target = add_input_grad_to
    if target is not None and grad_input is not None \
            and grad_input is not target:
        if target.size:
            _activation.add_into(
                target.reshape(-1), grad_input.reshape(-1),
                _num_threads(_threads.elementwise_threads(target.size)))
        grad_input = target
    return grad_input, grad_weight, grad_bias


def _conv2d_backward(grad_output, x, weight, g, need_input_grad, *,
                     need_weight_grad=True, need_bias_grad=True,
                     add_input_grad_to=None):
    """(grad_input or None, grad_weight, grad_bias), in grad_output's dtype;
    grad_weight and grad_bias are None (and x may be None) when
    need_weight_grad is False: their GEMMs are then skipped; grad_bias is
    None, and not summed, when need_bias_grad is False.

    grad_input of a stride-1 convolution is the forward convolution of
    grad_output with the flipped filters, channels swapped
    (``_input_grad_geometry``): it runs through Winograd or the
    register-blocked kernel where that forward would; grad_weight is summed
    in GRAD_WEIGHT_RUNS fixed runs of work items, so its bits depend on the
    shape alone.
    """
    grad_input = None
    dtype = grad_output.dtype
    # a stride-1 input gradient is a forward convolution: Winograd or the
    # register-blocked kernel by the forward's rule, on its geometry (from
    # WINOGRAD_MIN_CHANNELS_OVER_DIRECT channels, not the weight
    # gradient's limit: measured 2026-12-03, Zen 5, 2 threads, ms Winograd
    # / direct for the input gradient alone, medians of 5 alternated
    # processes, load 1.7-1.8: N64-C32-14x14-K64 0.85 / 1.34,
    # N64-C32-16x16-K32 0.53 / 0.93, N64-C16-14x14-K32 0.34 / 0.48,
    # N16-C24-28x28-K24 0.33 / 0.47, N64-C16-32x32-K16 0.80 / 0.92)
    transposed = _input_grad_geometry(g) if need_input_grad else None
    winograd_input = need_input_grad and _uses_winograd(
        g if transposed is None else transposed, g.out_channels,
        g.in_channels, (g.in_height, g.in_width),
        forward_dtype=None if transposed is None else dtype)
    if winograd_input:
        grad_input = _winograd(
            grad_output, winograd_filters(weight, flipped=True), True, None,
            g.input_shape, g.kernel_height - 1 - g.pad_top,
            g.kernel_width - 1 - g.pad_left)
    elif (transposed is not None and not _is_depthwise(transposed)
          and _uses_blocked_direct(transposed, dtype)):
        # a pointwise layer's input gradient is a pointwise forward, on
        # GEMM where that forward would be (_pointwise_gemm)
        forward = (conv2d_forward if _pointwise_gemm(transposed)
                   else _direct_forward)
        grad_input = forward(grad_output, _flipped_filters(weight, g.groups),
                             None, transposed)
    elif (need_input_grad and transposed is None and not _is_depthwise(g)
          and _uses_blocked_direct(g, dtype)):
        grad_input = _strided_input_grad(grad_output, weight, g,
                                         add_input_grad_to)
    direct_input = need_input_grad and grad_input is None
    # grad_weight by the forward's rule: Winograd, the register-blocked
    # kernel, or (below) im2col + GEMM
    weight_method = None
    if need_weight_grad and _uses_winograd(
            g, g.in_channels, g.out_channels, (g.out_height, g.out_width),
            forward_dtype=dtype, backward=True):
        weight_method = _winograd_weight_grad
    elif (need_weight_grad and not direct_input and not _is_depthwise(g)
          and _uses_blocked_direct_forward(g, dtype)):
        # (where grad_input needs im2col + GEMM, grad_weight shares its
        # unfolding there, which measured faster than a second pass)
        weight_method = _direct_weight_grad_and_bias
    if weight_method is not None:
        grad_weight, grad_bias = weight_method(grad_output, x, g,
                                               need_bias_grad)
        if direct_input:
            grad_input, _, _ = _conv2d_backward(grad_output, x, weight, g,
                                                True, need_weight_grad=False)
        return grad_input, grad_weight, grad_bias
    if not (direct_input or need_weight_grad):
        return grad_input, None, None
    num_threads = _num_threads(_threads.conv_threads(g, passes=2))
    if x is None:
        x = np.empty((1, 1, 1, 1), dtype=dtype)
    runs = _grad_weight_runs(g) if need_weight_grad else 1
    partials = np.zeros((runs, weight.size if need_weight_grad else 1),
                        dtype=dtype)
    # The work items (and so the order of the sums) are laid out for
    # GRAD_WEIGHT_RUNS // 2 threads whatever the real count, so that the
    # bits do not depend on it; above that many threads the scratch
    # exceeds WORKSPACE_BYTES in proportion.
    layout_threads = max(1, GRAD_WEIGHT_RUNS // 2)
    budget = _thread_budget(layout_threads, reserved=partials.nbytes)
    col_rows, filters = _col_rows(g), g.out_channels // g.groups
    plane_out = g.out_height * g.out_width
    # an item's scratch: col and col_grad, and its output gradients
    chunk_images = _chunk_images(
        g, (2 * col_rows + filters) * plane_out * dtype.itemsize,
        layout_threads, budget)
    if chunk_images:
        tile_rows = g.out_height
        work_size = (2 * col_rows + filters) * chunk_images * plane_out
    else:
        tile_rows = _tile_rows(g, dtype.itemsize, 2, budget)
        work_size = 2 if _is_direct(g) else (
            2 * col_rows * tile_rows * g.out_width)
    workspace = np.empty((num_threads, work_size), dtype=dtype)
    if direct_input:
        grad_input = np.empty(g.input_shape, dtype=dtype)
    with _blas_held_to_one_thread(num_threads):
        _conv.conv2d_backward(
            grad_output, x, weight,
            grad_input if direct_input else np.empty((1, 1, 1, 1), dtype),
            direct_input, bool(need_weight_grad), partials, workspace, g,
            tile_rows, chunk_images, num_threads)
    if not need_weight_grad:
        return grad_input, None, None
    grad_weight = np.empty(g.weight_shape, dtype=dtype)
    _conv.sum_rows(partials, grad_weight.reshape(-1), num_threads)
    return grad_input, grad_weight, (
        _bias_grad(grad_output, num_threads) if need_bias_grad else None)


# ------------------------------------------------------- depthwise convolution

#: A convolution with one input channel per group runs the direct depthwise
#: kernel (``_cython/depthwise.pyx``) when it has at most this many filters
#: per channel; with more, each input plane is a GEMM operand worth its
#: setup (the direct kernel sweeps the tile once per filter). Measured
#: (3x3, padding 1, float32, 2 threads, load 1.3-1.9, time direct / time
#: im2col + GEMM): 0.58 at 1 filter per channel (32x32x56x56), 0.47-0.86 at
#: 2 (one noisy 1.37), 1.05 at 3, 0.72-1.4 at 4, 0.94-1.02 at 8, 1.5-1.9 at
#: 16, 1.4-1.7 at 32.
DEPTHWISE_MAX_MULTIPLIER = 3

#: Target size in bytes of a depthwise work item's zero-padded input tile:
#: planes bigger than this are cut into tiles of output rows, which stay in
#: cache across their R * S sweeps (wide rows take more, see
#: _depthwise_tile_rows). Measured (float32, 2 threads, ms at 16,
#: 32, 64 KiB): 224x224 3x3 1.4-1.6 / 1.8 / 1.6-1.9, 112x112 5x5 1.4-1.5 /
#: 1.8 / 1.8-1.9, 2048x2048 3x3 2.3-2.6 / 2.7 / 2.2-2.4, 2048x2048 9x9
#: 11-12 in all; a whole 2048x2048 plane: 14 ms (3x3).
DEPTHWISE_TILE_BYTES = 16 * 1024


def _is_depthwise(g):
    """One input channel per group, at most DEPTHWISE_MAX_MULTIPLIER
    filters per channel."""
    return (g.in_channels == g.groups
            and g.out_channels <= DEPTHWISE_MAX_MULTIPLIER * g.in_channels)


def _depthwise_tile_rows(g, itemsize, num_threads):
    """Output rows per depthwise work item: the tile of input rows they read
    within DEPTHWISE_TILE_BYTES, but at least enough rows that the kernel's
    overlap with the next tile (its halo, re-copied there) is at most half
    the tile's own rows; and enough items for every thread."""
    padded_w = g.in_width + g.pad_left + g.pad_right
    halo = (g.kernel_height - 1) * g.dilation_h
    input_rows = DEPTHWISE_TILE_BYTES // (padded_w * itemsize)
    rows = max((input_rows - halo - 1) // g.stride_h + 1,
               -(-2 * halo // g.stride_h), 1)
    rows = min(g.out_height, rows)
    planes = g.batch * g.in_channels
    if planes < num_threads:
        pieces = -(-num_threads // planes)
        rows = max(1, min(rows, -(-g.out_height // pieces)))
    return rows


#: Stride-1 depthwise convolutions with output rows at most this wide sweep
#: each tap over a whole tile at once (rather than row by row, in y):
#: narrow rows otherwise spend their time in loop overhead, wide ones pay
#: for the sweep buffer's extra pass. Measured (float32, 2 threads, load
#: 1.4-1.7, time row by row / time tile sweeps): 1.4 at 14x14, 1.03-1.3 at
#: 28x28, 0.99-1.02 at 56x56, 0.8-1.03 at 112x112, 0.79 at 224x224, 0.73
#: at 512x512, 0.72-0.76 at 2048x2048.
DEPTHWISE_TILE_SWEEP_MAX_WIDTH = 64


def _depthwise_tile_sweeps(g):
    """Whether each tap sweeps whole tiles rather than rows (stride 1, rows
    up to DEPTHWISE_TILE_SWEEP_MAX_WIDTH)."""
    return (g.stride_h == 1 and g.stride_w == 1
            and g.out_width <= DEPTHWISE_TILE_SWEEP_MAX_WIDTH)


#: The channel-vector kernel's band (its item's input rows, 16 channels a
#: pixel) is kept within this many bytes, in a core's L1 cache.
DEPTHWISE_VECTOR_BAND_BYTES = 32 * 1024

#: The channel-vector kernel (depthwise_vectors.h) runs float32 depthwise
#: layers with one filter per channel, at least DEPTHWISE_VECTOR_MIN_CHANNELS
#: channels and output rows at most DEPTHWISE_VECTOR_MAX_WIDTH wide at
#: stride 1, DEPTHWISE_VECTOR_MAX_STRIDED_WIDTH when strided. The plane
#: kernel runs the others: on wide rows its vectors of pixels fill, and the
#: vector kernel's transposes (in and out) cost more than they save.
#: Measured (3x3, pad 1, 2 threads, load 0.3-1.2, plane time / vector time;
#: N1 and N16): stride 1: 7x7 C960 2.4 and 2.0; 14x14 C384-576 1.17-1.25
#: and 1.01-1.06, C32-64 1.04-1.2 (N1); 28x28 C192 0.94 and 0.87; wider
#: 0.98-1.0 (the plane kernel's float32 rows at column stride 1 are
#: vectors of pixels too). Strided: to 7x7 C576 3.2 and 3.0; to 14x14 C192
#: 1.9 and 2.0; to 28x28 C144 1.17 and 1.47, C32 1.17; to 56x56 C96 0.94
#: and 1.12. Below 16 channels (lanes left empty) 0.3-0.8.
DEPTHWISE_VECTOR_MIN_CHANNELS = 32
DEPTHWISE_VECTOR_MAX_WIDTH = 14
DEPTHWISE_VECTOR_MAX_STRIDED_WIDTH = 56


def _depthwise_vectors(g, dtype):
    """Whether the channel-vector kernel runs this depthwise call."""
    widest = (DEPTHWISE_VECTOR_MAX_WIDTH if g.stride_h == g.stride_w == 1
              else DEPTHWISE_VECTOR_MAX_STRIDED_WIDTH)
    return (dtype == np.float32 and g.out_channels == g.in_channels
            and g.in_channels >= DEPTHWISE_VECTOR_MIN_CHANNELS
            and g.out_width <= widest and _depthwise.vectors_available())


def _depthwise_vector_rows(g, num_threads):
    """Output rows per channel-vector work item: the band within
    DEPTHWISE_VECTOR_BAND_BYTES, and four items per thread where the call
    has that many."""
    row_bytes = (g.pad_left + g.in_width + g.pad_right) * 16 * 4
    rows = g.out_height
    while (rows > 1 and _band_rows(g, rows) * row_bytes
           > DEPTHWISE_VECTOR_BAND_BYTES):
        rows -= 1
    blocks = g.batch * -(-g.in_channels // 16)
    while rows > 1 and blocks * -(-g.out_height // rows) < 4 * num_threads:
        rows -= 1
    return rows


def _depthwise_forward(x, weight, bias, g, clamp=None):
    """conv2d_forward for _is_depthwise geometries: the direct kernel;
    ``clamp`` (lo, hi) or None, applied to each work item's outputs."""
    num_threads = _num_threads(_threads.conv_threads(g))
    y = np.empty(g.output_shape, dtype=x.dtype)
    if not y.size:
        return y
    has_bias = bias is not None
    bias_array = bias if has_bias else np.empty(1, dtype=x.dtype)
    lo, hi = (0.0, 0.0) if clamp is None else clamp
    if _depthwise_vectors(g, x.dtype):
        _depthwise.depthwise_forward_vectors(
            x, weight, bias_array, has_bias, y, g,
            _depthwise_vector_rows(g, num_threads), num_threads,
            clamp is not None, lo, hi)
    else:
        _depthwise.depthwise_forward(
            x, weight, bias_array, has_bias, y, g,
            _depthwise_tile_rows(g, x.itemsize, num_threads),
            _depthwise_tile_sweeps(g), num_threads, clamp is not None, lo,
            hi)
    return y


# ------------------------------------------------------------------- pooling

def max_pool2d_forward(x, g, return_indices=True):
    """(y, indices int64) of max pooling; indices are flat H*W positions;
    with ``return_indices`` False, (y, None), the indices never written
    out (see MAX_POOL_VALUES_ONLY)."""
    y = np.empty(g.output_shape, dtype=x.dtype)
    indices = (np.empty(g.output_shape, dtype=np.int64) if return_indices
               else None)
    if y.size:
        _pool.max_pool2d_forward(x, y, indices, g,
                                 _num_threads(_threads.pool_threads(g)))
    return y, indices


#: max_pool2d_forward takes ``return_indices=False`` (fastconv.functional
#: passes it for a max_pool2d without indices): the values alone, the
#: stride-2 vector rows keeping no offsets. Measured (float32, 2 threads,
#: load 0.5-1.2, ms with indices / without): (1, 64, 112, 112) 3x3/2 pad 1
#: (resnet18's at batch 1) 0.306 / 0.197, the same at batch 16 3.68 / 2.72,
#: (32, 64, 32, 32) 2x2 0.317 / 0.253, (32, 64, 33, 33) 3x3/2 pad 1 0.921 /
#: 0.779, (64, 32, 28, 28) 2x2 0.278 / 0.219.
MAX_POOL_VALUES_ONLY = True


#: max_pool2d_backward checks its indices' range itself, in the scatter's
#: pass (fastconv.functional then skips its own check, two reductions).
CHECKS_POOL_INDICES = True


def max_pool2d_backward(grad_output, indices, g):
    """grad_input (N, C, H, W): grad_output added at each index; a
    ValueError where an index lies outside the plane."""
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    if grad_input.size:
        if grad_output.size:
            threads = _threads.elementwise_threads(grad_input.size)
            outside = _pool.max_pool2d_backward(
                grad_output, indices, grad_input, _num_threads(threads))
            if outside:
                raise ValueError(
                    f"indices must lie in [0, H*W = {g.in_height * g.in_width}"
                    f") for input_shape {g.input_shape}")
        else:
            grad_input.fill(0)
    return grad_input


def avg_pool2d_forward(x, g, divisors):
    """y = window sums / divisors (the (OH, OW) float64 table)."""
    y = np.empty(g.output_shape, dtype=x.dtype)
    if y.size:
        _pool.avg_pool2d_forward(x, y, np.ascontiguousarray(divisors), g,
                                 _num_threads(_threads.pool_threads(g)))
    return y


def avg_pool2d_backward(grad_output, g, divisors):
    """grad_input (N, C, H, W): each output's grad / divisor over its window."""
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    if grad_input.size:
        _pool.avg_pool2d_backward(grad_output, grad_input,
                                  np.ascontiguousarray(divisors), g,
                                  _num_threads(_threads.pool_threads(g)))
    return grad_input


# ------------------------------------------------------------------- dropout

def dropout_mask(size, threshold, seed, like=None):
    """bool (size,): element i kept iff keep_bits(seed_key(seed), i) >= threshold.

    ``like`` is ignored: the mask is always NumPy here."""
    mask = np.empty(size, dtype=np.bool_)
    if size:
        _dropout.dropout_mask(mask.view(np.uint8),
                              _dropout_hash.seed_key(seed), threshold,
                              _num_threads(_threads.elementwise_threads(size)))
    return mask


def dropout_apply(x, mask, scale):
    """x * mask * scale in x's dtype (a dropped element is 0)."""
    y = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        _dropout.dropout_apply(x.reshape(-1), mask.reshape(-1).view(np.uint8),
                               float(scale), y.reshape(-1),
                               _num_threads(_threads.elementwise_threads(x.size)))
    return y


# ------------------------------------------------- batch norm and activation

def _rows(array):
    """A C-contiguous (N, C, L) array as its (N * C, L) rows."""
    return array.reshape(array.shape[0] * array.shape[1], array.shape[2])


def batch_norm_stats(x):
    batch, channels, length = x.shape
    mean = np.zeros(channels)
    variance = np.zeros(channels)
    if x.size:
        threads = _num_threads(_threads.elementwise_threads(x.size))
        if _bn_by_images(batch):  # the order batch_norm_forward sums in
            _normalization.moments_by_images(
                x, mean, variance, np.empty((2 * _bn_runs(batch), channels)),
                threads)
        else:
            _normalization.moments(_rows(x), channels, mean, variance,
                                   np.empty(batch * channels), threads)
    return mean, variance


#: Batch norm of at least BN_BY_IMAGES_MIN_BATCH images runs with runs of
#: whole images as work items (BN_IMAGE_RUNS runs at most, whatever the
#: thread count: the sums' order depends on the shape alone), so that a
#: thread reads the images the preceding convolution wrote on its core;
#: smaller batches take a channel per item. Measured in ResNet-8's training
#: step (batch 64, 2 threads, ms per step for its nine layers, forward +
#: backward): 9.1-10.4 by images, 11.4-11.5 by channels.
BN_BY_IMAGES_MIN_BATCH = 8
BN_IMAGE_RUNS = 16


def _bn_by_images(batch):
    return batch >= BN_BY_IMAGES_MIN_BATCH


def _bn_runs(batch):
    return min(batch, BN_IMAGE_RUNS)


def _factor(vector):
    """A per-channel float64 vector for the kernels, or none (length 0)."""
    return np.zeros(0) if vector is None else vector


#: This backend's batch_norm_forward and batch_norm_backward take ``relu``
#: (a ReLU after the normalisation, fused into its passes; see
#: fastconv.functional.batch_norm_training).
FUSED_BATCH_NORM_RELU = True


def batch_norm_forward(x, mean, variance, weight, bias, eps, relu=False):
    batch, channels, length = x.shape
    given = mean is not None
    if not given:
        mean, variance = np.zeros(channels), np.zeros(channels)
    y = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        threads = _num_threads(_threads.elementwise_threads(x.size))
        if _bn_by_images(batch):
            _normalization.forward_by_images(
                x, mean, variance, _factor(weight), _factor(bias), eps, given,
                y, np.empty((2 * _bn_runs(batch), channels)),
                np.empty((2, channels)), relu, threads)
        else:
            _normalization.forward(
                x, mean, variance, _factor(weight), _factor(bias), eps, given,
                y, relu, threads)
    return y, mean, variance


def batch_norm_backward(grad_output, x, mean, variance, weight, eps,
                        batch_statistics, bias=None, relu=False):
    channels = x.shape[1]
    grad_input = np.empty(x.shape, dtype=x.dtype)
    grad_weight = np.zeros(channels)
    grad_bias = np.zeros(channels)
    if x.size:
        threads = _num_threads(_threads.elementwise_threads(x.size))
        batch = x.shape[0]
        if _bn_by_images(batch):
            _normalization.backward_by_images(
                grad_output, x, mean, variance, _factor(weight),
                _factor(bias), eps, batch_statistics, grad_input,
                grad_weight, grad_bias,
                np.empty((2 * _bn_runs(batch), channels)),
                np.empty((5, channels)), relu, threads)
        else:
            _normalization.backward(
                grad_output, x, mean, variance, _factor(weight),
                _factor(bias), eps, batch_statistics, grad_input,
                grad_weight, grad_bias, relu, threads)
    return grad_input, grad_weight, grad_bias


def relu_forward(x, residual=None):
    y = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        threads = _num_threads(_threads.elementwise_threads(x.size))
        if residual is None:
            _activation.relu(x.reshape(-1), y.reshape(-1), threads)
        else:
            _activation.add_relu(x.reshape(-1), residual.reshape(-1),
                                 y.reshape(-1), threads)
    return y


def relu_backward(grad_output, y):
    grad_input = np.empty(y.shape, dtype=y.dtype)
    if y.size:
        _activation.relu_backward(
            grad_output.reshape(-1), y.reshape(-1), grad_input.reshape(-1),
            _num_threads(_threads.elementwise_threads(y.size)))
    return grad_input
