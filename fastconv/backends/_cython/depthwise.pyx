# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Direct depthwise conv2d forward, float32/float64: no im2col, no BLAS.

For a convolution whose groups each hold one input channel
(``in_channels == groups``), with ``multiplier = out_channels // groups``
filters per group, output channel ``k`` reads input channel
``k // multiplier`` through its own R x S filter. Work items are (image,
input channel, tile of ``tile_rows`` output rows), spread over OpenMP
threads; an item serves all ``multiplier`` output channels of its input
channel. Each item first copies the input rows its tile reads into a
zero-padded tile of the thread's scratch (rows ``padded_w = W + pad_left +
pad_right`` values long), so no loop below tests a bound:

* stride 1 and narrow rows (``_sweep_tile``, when the caller asks): output
  (t, ow) of the tile reads tile position ``p + r * dilation_h * padded_w +
  s * dilation_w`` with ``p = t * padded_w + ow``, so each tap is one sweep over every output row of the
  tile at once, computed ``padded_w`` wide (the columns past OW are
  dropped when the rows are copied out): long loops, where R * S short
  ones per row would spend their time in loop overhead on small planes;
* otherwise (``_sweep_rows``, any stride): each tap sweeps one output row,
  in y;
* but float32 at column stride 1 (where depthwise_vectors.h is built:
  ``fc_dw_plane_rows``): a vector of 16 outputs of a row at a time, every
  tap summed in registers, then stored (1.0-1.6x the sweeps: 1.6 on
  MobileNetV2's 28x28 and 14x14 layers at batch 16, 1.15-1.25 at 112x112
  and 56x56, 1.1 on 224x224 and 512x512 planes).

Taps of a kernel row go in threes (then a pair, then one) per sweep: one
load and store of the accumulator per three products. The accumulator starts
at the bias and adds the taps in the dtype, kernel row by kernel row.

Shapes, C-contiguous: x (N, C, H, W), weight (K, 1, R, S), bias (K,) (read
only when ``has_bias``), y (N, K, OH, OW).
"""

from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

cdef extern from "depthwise_vectors.h" nogil:
    const int FC_DW_AVAILABLE
    const int FC_DW_LANES
    ctypedef struct fc_dw_geometry:
        Py_ssize_t channels, in_height, in_width, out_height, out_width
        Py_ssize_t kernel_h, kernel_w, stride_h, stride_w
        Py_ssize_t dilation_h, dilation_w, pad_top, pad_left
        Py_ssize_t padded_w, rows
        int clamp
        float lo, hi
    Py_ssize_t fc_dw_scratch_floats(const fc_dw_geometry *g)
    void fc_dw_item(const fc_dw_geometry *g, const float *x_image,
                    const float *weight, const float *bias, Py_ssize_t block,
                    Py_ssize_t oh0, float *y_image, float *scratch)
    void fc_dw_plane_rows(const float *tile, Py_ssize_t pitch,
                          Py_ssize_t rows, Py_ssize_t out_w,
                          Py_ssize_t stride_h, Py_ssize_t dilation_h,
                          Py_ssize_t dilation_w, const float *w,
                          Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                          float bias, int clamp, float lo, float hi,
                          float *y_rows)

ctypedef fused real:
    float
    double


cdef inline void _add_taps(real *acc, const real *src, Py_ssize_t count,
                           Py_ssize_t step, Py_ssize_t dilation,
                           const real *w, Py_ssize_t taps) noexcept nogil:
    """acc[j] += sum of w[t] * src[j * step + t * dilation] over t < taps
    (1, 2 or 3), for j < count."""
    cdef Py_ssize_t j
    cdef real w0 = w[0], w1, w2
    cdef const real *src1 = src + dilation
    cdef const real *src2 = src1 + dilation
    if taps == 3:
        w1, w2 = w[1], w[2]
        for j in range(count):
            acc[j] += (w0 * src[j * step] + w1 * src1[j * step]
                       + w2 * src2[j * step])
    elif taps == 2:
        w1 = w[1]
        for j in range(count):
            acc[j] += w0 * src[j * step] + w1 * src1[j * step]
    else:
        for j in range(count):
            acc[j] += w0 * src[j * step]


cdef inline void _add_kernel_row(real *acc, const real *src, Py_ssize_t count,
                                 Py_ssize_t step, Py_ssize_t dilation,
                                 const real *w,
                                 Py_ssize_t kernel_w) noexcept nogil:
    """One kernel row's taps (w[0 .. kernel_w-1]) in threes, a pair, one;
    constant steps 1 and 2 let the loads vectorise."""
    cdef Py_ssize_t s = 0, taps
    while s < kernel_w:
        taps = min(<Py_ssize_t>3, kernel_w - s)
        if step == 1:
            _add_taps(acc, src + s * dilation, count, 1, dilation, w + s, taps)
        elif step == 2:
            _add_taps(acc, src + s * dilation, count, 2, dilation, w + s, taps)
        else:
            _add_taps(acc, src + s * dilation, count, step, dilation, w + s,
                      taps)
        s += taps


cdef inline void _copy_tile(const real *x_plane, Py_ssize_t in_h,
                            Py_ssize_t in_w, Py_ssize_t first_row,
                            Py_ssize_t rows, Py_ssize_t padded_w,
                            Py_ssize_t pad_left, real *tile) noexcept nogil:
    """tile row i (i < rows) = input row first_row + i, at column pad_left;
    rows outside the input are zeroed, and the side columns (zero since the
    scratch was allocated) are never written."""
    cdef Py_ssize_t i, ih
    for i in range(rows):
        ih = first_row + i
        if 0 <= ih < in_h:
            memcpy(tile + i * padded_w + pad_left, x_plane + ih * in_w,
                   in_w * sizeof(real))
        else:
            memset(tile + i * padded_w, 0, padded_w * sizeof(real))


cdef void _sweep_tile(const real *tile, Py_ssize_t padded_w, Py_ssize_t rows,
                      Py_ssize_t out_w, Py_ssize_t dilation_h,
                      Py_ssize_t dilation_w, const real *w,
                      Py_ssize_t kernel_h, Py_ssize_t kernel_w, real value,
                      real *wide, real *y_rows) noexcept nogil:
    """Stride 1: every tap one sweep over all ``rows`` output rows of the
    tile, ``padded_w`` wide, then the rows copied into y (rows out_w apart)."""
    cdef Py_ssize_t span = (rows - 1) * padded_w + out_w, j, r, t
    for j in range(span):
        wide[j] = value
    for r in range(kernel_h):
        _add_kernel_row(wide, tile + r * dilation_h * padded_w, span, 1,
                        dilation_w, w + r * kernel_w, kernel_w)
    for t in range(rows):
        memcpy(y_rows + t * out_w, wide + t * padded_w, out_w * sizeof(real))


cdef void _sweep_rows(const real *tile, Py_ssize_t padded_w, Py_ssize_t rows,
                      Py_ssize_t out_w, Py_ssize_t stride_h,
                      Py_ssize_t stride_w, Py_ssize_t dilation_h,
                      Py_ssize_t dilation_w, const real *w,
                      Py_ssize_t kernel_h, Py_ssize_t kernel_w, real value,
                      real *y_rows) noexcept nogil:
    """Any stride: each tap sweeps one output row at a time, in y."""
    cdef Py_ssize_t t, r, ow
    cdef real *y_row
    for t in range(rows):
        y_row = y_rows + t * out_w
        for ow in range(out_w):
            y_row[ow] = value
        for r in range(kernel_h):
            _add_kernel_row(y_row, tile + (t * stride_h + r * dilation_h)
                            * padded_w, out_w, stride_w, dilation_w,
                            w + r * kernel_w, kernel_w)


cdef void _clamp_block(real *y, Py_ssize_t count, real lo,
                       real hi) noexcept nogil:
    """y clamped to [lo, hi] in place (a fused activation); NaN stays."""
    cdef Py_ssize_t i
    cdef real v
    for i in range(count):
        v = y[i]
        v = lo if v < lo else v
        y[i] = hi if v > hi else v


def depthwise_forward(const real[:, :, :, ::1] x,
                      const real[:, :, :, ::1] weight,
                      const real[::1] bias, bint has_bias,
                      real[:, :, :, ::1] y, g, Py_ssize_t tile_rows,
                      bint tile_sweeps, int num_threads, bint clamp=False,
                      double lo=0, double hi=0):
    """y = depthwise conv(x, weight) + bias (see the module docstring);
    ``tile_rows`` output rows per work item; ``tile_sweeps`` (stride 1
    only): each tap one sweep over a whole tile; ``clamp``: each item's
    outputs then clamped to [lo, hi] while in cache (a fused activation)."""
    cdef Py_ssize_t batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t in_h = x.shape[2], in_w = x.shape[3]
    cdef Py_ssize_t out_channels = y.shape[1]
    cdef Py_ssize_t out_h = y.shape[2], out_w = y.shape[3]
    cdef Py_ssize_t kernel_h = weight.shape[2], kernel_w = weight.shape[3]
    cdef Py_ssize_t multiplier = out_channels // channels
    cdef Py_ssize_t stride_h = g.stride_h, stride_w = g.stride_w
    cdef Py_ssize_t dilation_h = g.dilation_h, dilation_w = g.dilation_w
    cdef Py_ssize_t pad_top = g.pad_top, pad_left = g.pad_left
    cdef Py_ssize_t padded_w = in_w + pad_left + g.pad_right
    cdef Py_ssize_t tiles = (out_h + tile_rows - 1) // tile_rows
    cdef Py_ssize_t items = batch * channels * tiles
    # input rows a tile reads, and the sweep buffer of a stride-1 tile
    cdef Py_ssize_t tile_in_rows = ((tile_rows - 1) * stride_h
                                    + (kernel_h - 1) * dilation_h + 1)
    cdef Py_ssize_t wide_size = tile_rows * padded_w if tile_sweeps else 0
    # whole cache lines per thread, and a vector past the tile for the
    # vector rows' last loads
    cdef Py_ssize_t pitch = (tile_in_rows * padded_w + wide_size + 31) // 16 * 16
    # float32 at column stride 1: depthwise_vectors.h's rows, every tap of a
    # vector of outputs summed in registers
    cdef bint vector_rows = (real is float and FC_DW_AVAILABLE
                             and stride_w == 1)
    cdef const real *x_base = &x[0, 0, 0, 0]
    cdef const real *w_base = &weight[0, 0, 0, 0]
    cdef real *y_base = &y[0, 0, 0, 0]
    cdef real *scratch = <real *>calloc(num_threads * pitch, sizeof(real))
    cdef Py_ssize_t item, plane, image, channel, oh_start, rows, m, k
    cdef real *tile
    cdef real *wide
    cdef real *y_row
    cdef const real *w_k
    cdef real value
    if scratch == NULL:
        raise MemoryError()
    try:
        for item in prange(items, nogil=True, schedule="static",
                           num_threads=num_threads):
            tile = scratch + threadid() * pitch
            wide = tile + tile_in_rows * padded_w
            plane = item // tiles
            oh_start = (item % tiles) * tile_rows
            rows = min(tile_rows, out_h - oh_start)
            image = plane // channels
            channel = plane % channels
            _copy_tile(x_base + plane * in_h * in_w, in_h, in_w,
                       oh_start * stride_h - pad_top,
                       (rows - 1) * stride_h + (kernel_h - 1) * dilation_h + 1,
                       padded_w, pad_left, tile)
            for m in range(multiplier):
                k = channel * multiplier + m
                w_k = w_base + k * kernel_h * kernel_w
                value = bias[k] if has_bias else 0
                y_row = y_base + ((image * out_channels + k) * out_h
                                  + oh_start) * out_w
                if real is float and vector_rows:
                    fc_dw_plane_rows(tile, padded_w, rows, out_w, stride_h,
                                     dilation_h, dilation_w, w_k, kernel_h,
                                     kernel_w, value, clamp, <float>lo,
                                     <float>hi, y_row)
                    continue
                if tile_sweeps:
                    _sweep_tile(tile, padded_w, rows, out_w, dilation_h,
                                dilation_w, w_k, kernel_h, kernel_w, value,
                                wide, y_row)
                else:
                    _sweep_rows(tile, padded_w, rows, out_w, stride_h,
                                stride_w, dilation_h, dilation_w, w_k,
                                kernel_h, kernel_w, value, y_row)
                if clamp:
                    _clamp_block(y_row, rows * out_w, <real>lo, <real>hi)
    finally:
        free(scratch)


def vectors_available():
    """Whether depthwise_forward_vectors is built (AVX-512 and GCC)."""
    return FC_DW_AVAILABLE != 0


def depthwise_forward_vectors(const float[:, :, :, ::1] x,
                              const float[:, :, :, ::1] weight,
                              const float[::1] bias, bint has_bias,
                              float[:, :, :, ::1] y, g, Py_ssize_t rows,
                              int num_threads, bint clamp=False,
                              double lo=0, double hi=0):
    """y = depthwise conv(x, weight) + bias, float32, one filter per
    channel, with 16 channels in each vector (depthwise_vectors.h); work
    items are (image, block of 16 channels, ``rows`` output rows)."""
    if not FC_DW_AVAILABLE:
        raise RuntimeError("the channel-vector depthwise kernel is not built")
    cdef fc_dw_geometry geo
    geo.channels = x.shape[1]
    geo.in_height = x.shape[2]
    geo.in_width = x.shape[3]
    geo.out_height = y.shape[2]
    geo.out_width = y.shape[3]
    geo.kernel_h = weight.shape[2]
    geo.kernel_w = weight.shape[3]
    geo.stride_h = g.stride_h
    geo.stride_w = g.stride_w
    geo.dilation_h = g.dilation_h
    geo.dilation_w = g.dilation_w
    geo.pad_top = g.pad_top
    geo.pad_left = g.pad_left
    geo.padded_w = g.pad_left + geo.in_width + g.pad_right
    geo.rows = rows
    geo.clamp = clamp
    geo.lo = <float>lo
    geo.hi = <float>hi
    cdef Py_ssize_t blocks = (geo.channels + FC_DW_LANES - 1) // FC_DW_LANES
    cdef Py_ssize_t runs = (geo.out_height + rows - 1) // rows
    cdef Py_ssize_t per_image = blocks * runs
    cdef Py_ssize_t items = x.shape[0] * per_image
    cdef Py_ssize_t in_image = geo.channels * geo.in_height * geo.in_width
    cdef Py_ssize_t out_image = geo.channels * geo.out_height * geo.out_width
    cdef Py_ssize_t pitch = (fc_dw_scratch_floats(&geo) + 15) // 16 * 16
    cdef const float *x_base = &x[0, 0, 0, 0]
    cdef const float *w_base = &weight[0, 0, 0, 0]
    cdef const float *b_base = &bias[0] if has_bias else NULL
    cdef float *y_base = &y[0, 0, 0, 0]
    cdef float *scratch = <float *>malloc(num_threads * pitch * sizeof(float))
    cdef Py_ssize_t item, image, rest
    if scratch == NULL:
        raise MemoryError()
    try:
        for item in prange(items, nogil=True, schedule="static",
                           num_threads=num_threads):
            image = item // per_image
            rest = item % per_image
            fc_dw_item(&geo, x_base + image * in_image, w_base, b_base,
                       rest // runs, (rest % runs) * rows,
                       y_base + image * out_image,
                       scratch + threadid() * pitch)
    finally:
        free(scratch)
