# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Winograd F(4x4, 3x3) convolution, float32/float64 (Lavin & Gray, 2016).

A 3x3, stride-1, dilation-1, ungrouped convolution computes each 4x4 output
tile from the 6x6 input patch under it as::

    Y = A^T [ sum over c of U[k, c] * V[c] ] A,   V[c] = B^T d[c] B,
    U[k, c] = G g[k, c] G^T

with 36 multiplications per channel pair and tile instead of 144. For the
36 points p of the 6x6 Winograd domain the sum over c is one matrix product::

    M[p] (K, T) = U[p] (K, C) @ V[p] (C, T)

over a block of T tiles. One work item is one block of consecutive tiles
(tiles run along output rows, then images); a thread transforms the block's
input patches into its own ``V`` (36, C, T), runs the 36 GEMMs into its own
``M`` (36, K, T) with a single-threaded BLAS, and transforms ``M`` back into
the output tiles, so the block's data stays in the thread's cache. Every
output element is written by exactly one item: the result does not depend
on the schedule.

The filters arrive transformed (``U``, (36, K, C), computed by the caller
once per weight value). ``transposed_weight`` reads ``U`` as (36, C', K')
and multiplies by its transpose: the input gradient of a 3x3 stride-1
convolution is this convolution of grad_output with the flipped filters,
channels swapped, and the caller passes the same transformed array with the
taps reversed instead of copying it.

The caller (``fastconv.backends.cython_cpu``) validates, chooses the block
size, allocates outputs and workspaces; nothing here checks arguments.
"""

from cython.parallel cimport parallel, prange, threadid

ctypedef fused real:
    float
    double

include "_blas.pxi"

cdef enum:
    OUT_TILE = 4     # output tile side
    PATCH = 6        # input patch side: OUT_TILE + 3 - 1
    POINTS = 36      # PATCH * PATCH


cdef struct WinogradShape:
    Py_ssize_t batch, in_channels, in_height, in_width
    Py_ssize_t out_channels, out_height, out_width
    Py_ssize_t pad_top, pad_left
    Py_ssize_t tiles_h, tiles_w


cdef void _input_segment(const real *plane, Py_ssize_t height,
                         Py_ssize_t width, Py_ssize_t row0, Py_ssize_t col0,
                         Py_ssize_t tiles, real *scratch, real *out,
                         Py_ssize_t point_stride) noexcept nogil:
    """B^T d B of ``tiles`` side-by-side 6x6 patches of one plane (height x
    width), the first with its corner at (row0, col0), the next 4 columns
    on; zeros outside the plane (the padding). Point p of tile q goes to
    out[p * point_stride + q]. scratch: 12 * (4 * tiles + 2) elements.

    The six input rows are copied into a zero-padded strip and combined
    down the columns for the whole strip at once (patches overlap by two
    columns), then along each patch's row: both loops run over contiguous
    or evenly strided memory, which the compiler vectorises.
    """
    cdef Py_ssize_t span = OUT_TILE * tiles + 2
    cdef real *strip = scratch
    cdef real *column = scratch + PATCH * span
    cdef Py_ssize_t i, j, q, r, first, stop
    cdef const real *src
    cdef real *dst
    cdef real d0, d1, d2, d3, d4, d5
    for i in range(PATCH):
        dst = strip + i * span
        r = row0 + i
        first = -col0 if col0 < 0 else 0
        stop = width - col0 if width - col0 < span else span
        if r < 0 or r >= height or stop <= first:
            for j in range(span):
                dst[j] = 0
            continue
        src = plane + r * width + col0
        for j in range(first):
            dst[j] = 0
        for j in range(first, stop):
            dst[j] = src[j]
        for j in range(stop, span):
            dst[j] = 0
    for j in range(span):           # B^T down the columns
        d0 = strip[j]
        d1 = strip[span + j]
        d2 = strip[2 * span + j]
        d3 = strip[3 * span + j]
        d4 = strip[4 * span + j]
        d5 = strip[5 * span + j]
        column[j] = <real>4 * d0 - <real>5 * d2 + d4
        column[span + j] = -<real>4 * (d1 + d2) + d3 + d4
        column[2 * span + j] = <real>4 * (d1 - d2) - d3 + d4
        column[3 * span + j] = <real>2 * (d3 - d1) - d2 + d4
        column[4 * span + j] = <real>2 * (d1 - d3) - d2 + d4
        column[5 * span + j] = <real>4 * d1 - <real>5 * d3 + d5
    for i in range(PATCH):          # B along each patch's row
        src = column + i * span
        dst = out + i * PATCH * point_stride
        for q in range(tiles):
            d0 = src[OUT_TILE * q]
            d1 = src[OUT_TILE * q + 1]
            d2 = src[OUT_TILE * q + 2]
            d3 = src[OUT_TILE * q + 3]
            d4 = src[OUT_TILE * q + 4]
            d5 = src[OUT_TILE * q + 5]
            dst[q] = <real>4 * d0 - <real>5 * d2 + d4
            dst[point_stride + q] = -<real>4 * (d1 + d2) + d3 + d4
            dst[2 * point_stride + q] = <real>4 * (d1 - d2) - d3 + d4
            dst[3 * point_stride + q] = <real>2 * (d3 - d1) - d2 + d4
            dst[4 * point_stride + q] = <real>2 * (d1 - d3) - d2 + d4
            dst[5 * point_stride + q] = <real>4 * d1 - <real>5 * d3 + d5


cdef void _output_segment(const real *m, Py_ssize_t point_stride,
                          Py_ssize_t tiles, real bias, real *scratch,
                          real *out, Py_ssize_t width, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    """A^T m A + bias of ``tiles`` side-by-side output tiles of one plane
    (point p of tile q at m[p * point_stride + q]); the top-left rows x
    cols of the 4 x (4 * tiles) result go to ``out`` (row stride width).
    scratch: 40 * tiles elements. Vectorised over the tiles, like
    ``_input_segment``."""
    cdef real *half = scratch                       # (4, 6, tiles)
    cdef real *strip = scratch + OUT_TILE * PATCH * tiles   # (4, 4 * tiles)
    cdef Py_ssize_t span = OUT_TILE * tiles
    cdef Py_ssize_t i, j, q
    cdef const real *src
    cdef real *dst
    cdef real m0, m1, m2, m3, m4, m5, sum12, diff12, sum34, diff34
    for j in range(PATCH):          # A^T down the columns
        src = m + j * point_stride
        dst = half + j * tiles
        for q in range(tiles):
            m0 = src[q]
            m1 = src[PATCH * point_stride + q]
            m2 = src[2 * PATCH * point_stride + q]
            m3 = src[3 * PATCH * point_stride + q]
            m4 = src[4 * PATCH * point_stride + q]
            m5 = src[5 * PATCH * point_stride + q]
            sum12, diff12 = m1 + m2, m1 - m2
            sum34, diff34 = m3 + m4, m3 - m4
            dst[q] = m0 + sum12 + sum34
            dst[PATCH * tiles + q] = diff12 + <real>2 * diff34
            dst[2 * PATCH * tiles + q] = sum12 + <real>4 * sum34
            dst[3 * PATCH * tiles + q] = diff12 + <real>8 * diff34 + m5
    for i in range(OUT_TILE):       # A along each tile's row
        src = half + i * PATCH * tiles
        dst = strip + i * span
        for q in range(tiles):
            m0 = src[q]
            m1 = src[tiles + q]
            m2 = src[2 * tiles + q]
            m3 = src[3 * tiles + q]
            m4 = src[4 * tiles + q]
            m5 = src[5 * tiles + q]
            sum12, diff12 = m1 + m2, m1 - m2
            sum34, diff34 = m3 + m4, m3 - m4
            dst[OUT_TILE * q] = m0 + sum12 + sum34 + bias
            dst[OUT_TILE * q + 1] = diff12 + <real>2 * diff34 + bias
            dst[OUT_TILE * q + 2] = sum12 + <real>4 * sum34 + bias
            dst[OUT_TILE * q + 3] = diff12 + <real>8 * diff34 + m5 + bias
    for i in range(rows):
        src = strip + i * span
        dst = out + i * width
        for j in range(cols):
            dst[j] = src[j]


cdef void _block(const WinogradShape *ws, const real *x, const real *u,
                 bint transposed_weight, const real *bias, real *y,
                 real *v, real *m, real *scratch, Py_ssize_t first_tile,
                 Py_ssize_t count) noexcept nogil:
    """Tiles [first_tile, first_tile + count): transform, multiply, write.

    The block is walked in segments: runs of tiles along one tile row of
    one image, which the segment transforms handle together."""
    cdef Py_ssize_t channels = ws.in_channels, filters = ws.out_channels
    cdef Py_ssize_t tiles_per_image = ws.tiles_h * ws.tiles_w
    cdef Py_ssize_t plane_in = ws.in_height * ws.in_width
    cdef Py_ssize_t plane_out = ws.out_height * ws.out_width
    cdef Py_ssize_t t, tile, n, ty, tx, c, k, p, rows, cols, segment
    cdef real bias_k
    cdef real *out
    t = 0
    while t < count:
        tile = first_tile + t
        n = tile // tiles_per_image
        ty = (tile % tiles_per_image) // ws.tiles_w
        tx = tile % ws.tiles_w
        segment = ws.tiles_w - tx
        if segment > count - t:
            segment = count - t
        for c in range(channels):
            _input_segment(x + (n * channels + c) * plane_in, ws.in_height,
                           ws.in_width, ty * OUT_TILE - ws.pad_top,
                           tx * OUT_TILE - ws.pad_left, segment, scratch,
                           v + c * count + t, channels * count)
        t += segment
    for p in range(POINTS):
        # M[p] (K, count) = U[p] (K, C) @ V[p] (C, count)
        if transposed_weight:
            gemm_row_major(c'T', c'N', <int>filters, <int>count,
                           <int>channels, <real>1, u + p * filters * channels,
                           <int>filters, v + p * channels * count, <int>count,
                           <real>0, m + p * filters * count, <int>count)
        else:
            gemm_row_major(c'N', c'N', <int>filters, <int>count,
                           <int>channels, <real>1, u + p * filters * channels,
                           <int>channels, v + p * channels * count,
                           <int>count, <real>0, m + p * filters * count,
                           <int>count)
    t = 0
    while t < count:
        tile = first_tile + t
        n = tile // tiles_per_image
        ty = (tile % tiles_per_image) // ws.tiles_w
        tx = tile % ws.tiles_w
        segment = ws.tiles_w - tx
        if segment > count - t:
            segment = count - t
        rows = ws.out_height - ty * OUT_TILE
        if rows > OUT_TILE:
            rows = OUT_TILE
        cols = ws.out_width - tx * OUT_TILE
        if cols > OUT_TILE * segment:
            cols = OUT_TILE * segment
        out = y + n * filters * plane_out + ty * OUT_TILE * ws.out_width + (
            tx * OUT_TILE)
        for k in range(filters):
            bias_k = bias[k] if bias != NULL else 0
            _output_segment(m + k * count + t, filters * count, segment,
                            bias_k, scratch, out + k * plane_out,
                            ws.out_width, rows, cols)
        t += segment


def scratch_size(Py_ssize_t out_width):
    """Elements of per-thread scratch the segment transforms need, beyond
    V and M, for output rows of ``out_width``."""
    cdef Py_ssize_t tiles_w = (out_width + OUT_TILE - 1) // OUT_TILE
    cdef Py_ssize_t input_part = 2 * PATCH * (OUT_TILE * tiles_w + 2)
    cdef Py_ssize_t output_part = (OUT_TILE * PATCH + OUT_TILE * OUT_TILE) * (
        tiles_w)
    return max(input_part, output_part)


def winograd_f43(const real[:, :, :, ::1] x, const real[:, :, ::1] u,
                 bint transposed_weight, const real[::1] bias, bint has_bias,
                 real[:, :, :, ::1] y, real[:, ::1] workspace,
                 Py_ssize_t pad_top, Py_ssize_t pad_left,
                 Py_ssize_t block_tiles, int num_threads):
    """y = conv3x3(x, filters) (+ bias), stride 1, through F(4x4, 3x3).

    x (N, C, H, W); y (N, K, OH, OW), every element written; u the
    transformed filters, (36, K, C), or (36, C, K) when transposed_weight;
    pad_top/pad_left place the first patch at (-pad_top, -pad_left) (any
    bottom/right padding is implied by OH, OW). workspace (num_threads,
    36 * (C + K) * block_tiles + scratch_size(OW)).
    """
    cdef WinogradShape ws
    ws.batch, ws.in_channels = x.shape[0], x.shape[1]
    ws.in_height, ws.in_width = x.shape[2], x.shape[3]
    ws.out_channels = y.shape[1]
    ws.out_height, ws.out_width = y.shape[2], y.shape[3]
    ws.pad_top, ws.pad_left = pad_top, pad_left
    ws.tiles_h = (ws.out_height + OUT_TILE - 1) // OUT_TILE
    ws.tiles_w = (ws.out_width + OUT_TILE - 1) // OUT_TILE
    cdef Py_ssize_t total = ws.batch * ws.tiles_h * ws.tiles_w
    cdef Py_ssize_t items = (total + block_tiles - 1) // block_tiles
    cdef Py_ssize_t item, first, count
    cdef const real *x_ptr = &x[0, 0, 0, 0]
    cdef const real *u_ptr = &u[0, 0, 0]
    cdef const real *bias_ptr = &bias[0] if has_bias else NULL
    cdef real *y_ptr = &y[0, 0, 0, 0]
    cdef real *work_ptr = &workspace[0, 0]
    cdef Py_ssize_t work_stride = workspace.shape[1]
    cdef Py_ssize_t v_size = POINTS * ws.in_channels * block_tiles
    cdef Py_ssize_t m_size = POINTS * ws.out_channels * block_tiles
    cdef real *v
    with nogil, parallel(num_threads=num_threads):
        v = work_ptr + threadid() * work_stride
        for item in prange(items, schedule="dynamic"):
            first = item * block_tiles
            count = total - first
            if count > block_tiles:
                count = block_tiles
            _block(&ws, x_ptr, u_ptr, transposed_weight, bias_ptr, y_ptr, v,
                   v + v_size, v + v_size + m_size, first, count)


cdef inline void _filter_1d(const double *g, Py_ssize_t g_stride,
                            double *out, Py_ssize_t out_stride) noexcept nogil:
    """out (6-vector) = G g for a 3-vector g."""
    cdef double g0 = g[0], g1 = g[g_stride], g2 = g[2 * g_stride]
    out[0] = g0 / 4
    out[out_stride] = -(g0 + g1 + g2) / 6
    out[2 * out_stride] = -(g0 - g1 + g2) / 6
    out[3 * out_stride] = g0 / 24 + g1 / 12 + g2 / 6
    out[4 * out_stride] = g0 / 24 - g1 / 12 + g2 / 6
    out[5 * out_stride] = g2


cdef enum:
    FILTER_BLOCK = 64   # filters transformed together: whole cache lines out


cdef void _filter_block(const real *taps, Py_ssize_t first, Py_ssize_t count,
                        bint flipped, real *u,
                        Py_ssize_t point_stride) noexcept nogil:
    """u[p * point_stride + first + i] for p < 36, i < count: G g G^T of
    the 3x3 filters ``taps[(first + i) * 9:]`` (rotated by 180 degrees when
    flipped), in double precision, written point by point (contiguous runs
    of ``count``)."""
    cdef double g[9]
    cdef double t[18]
    cdef double block[FILTER_BLOCK * POINTS]
    cdef Py_ssize_t i, j, p
    cdef const real *filter_taps
    for i in range(count):
        filter_taps = taps + (first + i) * 9
        for j in range(9):
            g[j] = filter_taps[8 - j] if flipped else filter_taps[j]
        for j in range(3):          # t (6, 3) = G g
            _filter_1d(g + j, 3, t + j, 3)
        for j in range(PATCH):      # (6, 6) = t G^T
            _filter_1d(t + j * 3, 1, block + i * POINTS + j * PATCH, 1)
    for p in range(POINTS):
        for i in range(count):
            u[p * point_stride + first + i] = <real>block[i * POINTS + p]


def winograd_filters_f43(const real[:, :, :, ::1] weight, real[:, :, ::1] u,
                         bint flipped, int num_threads):
    """u[p, k, c] = (G g G^T)[p] of each 3x3 filter g = weight[k, c]
    (rotated by 180 degrees when flipped), computed in double precision.

    weight (K, C, 3, 3); u (36, K, C), every element written.
    """
    cdef Py_ssize_t pairs = weight.shape[0] * weight.shape[1]
    cdef Py_ssize_t blocks = (pairs + FILTER_BLOCK - 1) // FILTER_BLOCK
    cdef Py_ssize_t block, count
    cdef const real *taps = &weight[0, 0, 0, 0]
    cdef real *u_ptr = &u[0, 0, 0]
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        count = pairs - block * FILTER_BLOCK
        if count > FILTER_BLOCK:
            count = FILTER_BLOCK
        _filter_block(taps, block * FILTER_BLOCK, count, flipped, u_ptr,
                      pairs)
