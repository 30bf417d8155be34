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
input patches into its own ``V`` (36, C, T), runs the 36 products into its
own ``M`` (K, 36, T) (float32 on winograd_gemm.h's register-blocked kernel,
float64 on a single-threaded BLAS; M[p] has rows 36 T apart, so that each
filter's 36 points, read together by the output transform, are one run of
memory), and transforms ``M`` back into the output tiles, so the block's
data stays in the thread's cache. Every output element is written by
exactly one item: the result does not depend on the schedule.

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

cdef extern from *:
    """
    /* Cython's prange loops inside one parallel block end without a
     * barrier (they are emitted as `omp for nowait`): a stage that reads
     * what the stage before it wrote waits for every thread here. */
    static inline void fastconv_stage_barrier(void)
    {
    #ifdef _OPENMP
        #pragma omp barrier
    #endif
    }
    """
    void _stage_barrier "fastconv_stage_barrier" () noexcept nogil


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


cdef enum:
    GROUP = 16     # tiles transformed together, one per vector lane
    # the staged stages' channel runs per thread (the transforms' share of
    # each stage: several per thread, so that an uneven run costs little)
    STAGE_RUNS_PER_THREAD = 4


# ------------------------------------------------------------- transforms
#
# The transforms take GROUP consecutive tiles at a time, in tile order
# (along tile rows, then images: a group may span several tile rows and
# images), each tile in its own lane of every local array: gathering a
# tile's patch is per tile, every combination after it runs on whole
# vectors of GROUP tiles however narrow the plane (an 8x8 plane has two
# tiles per tile row, which transformed side by side filled 2 of 16
# lanes). Every intermediate is a local array, which the compiler knows
# aliases nothing, so the loops over tiles vectorise without run-time
# overlap checks.

cdef extern from "winograd_tiles.h" nogil:
    const int WG_TILES_AVAILABLE
    void wg_input_f32(const float *x, Py_ssize_t channels, Py_ssize_t c0,
                      Py_ssize_t c1, Py_ssize_t height, Py_ssize_t width,
                      Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                      Py_ssize_t pad_top, Py_ssize_t pad_left,
                      Py_ssize_t first_tile, Py_ssize_t count, float *v)
    void wg_grad_output_f32(const float *grad, Py_ssize_t filters,
                            Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t height,
                            Py_ssize_t width, Py_ssize_t tiles_h,
                            Py_ssize_t tiles_w, Py_ssize_t first_tile,
                            Py_ssize_t count, float *e)
    void wg_output_f32(const float *m, Py_ssize_t filters, Py_ssize_t k0,
                       Py_ssize_t k1, const float *bias, float *y,
                       Py_ssize_t height, Py_ssize_t width,
                       Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                       Py_ssize_t first_tile, Py_ssize_t count)


cdef struct TileCursor:
    Py_ssize_t n, ty, tx     # image, tile row, tile column


cdef inline void _cursor_at(const WinogradShape *ws, Py_ssize_t tile,
                            TileCursor *at) noexcept nogil:
    cdef Py_ssize_t per_image = ws.tiles_h * ws.tiles_w
    at.n = tile // per_image
    at.ty = (tile % per_image) // ws.tiles_w
    at.tx = tile % ws.tiles_w


cdef inline void _cursor_next(const WinogradShape *ws,
                              TileCursor *at) noexcept nogil:
    at.tx += 1
    if at.tx == ws.tiles_w:
        at.tx = 0
        at.ty += 1
        if at.ty == ws.tiles_h:
            at.ty = 0
            at.n += 1


cdef inline void _gather(const real *plane, Py_ssize_t height,
                         Py_ssize_t width, Py_ssize_t row0, Py_ssize_t col0,
                         Py_ssize_t side, real *lanes,
                         Py_ssize_t q) noexcept nogil:
    """lanes[(i * side + j) * GROUP + q] = plane[row0 + i, col0 + j] for
    i, j < side, zero outside the plane (height x width)."""
    cdef Py_ssize_t i, j, r, col
    cdef const real *src
    if (row0 >= 0 and col0 >= 0 and row0 + side <= height
            and col0 + side <= width):
        for i in range(side):
            src = plane + (row0 + i) * width + col0
            for j in range(side):
                lanes[(i * side + j) * GROUP + q] = src[j]
        return
    for i in range(side):
        r = row0 + i
        for j in range(side):
            col = col0 + j
            lanes[(i * side + j) * GROUP + q] = (
                plane[r * width + col] if 0 <= r < height and 0 <= col < width
                else 0)


cdef inline void _input_1d(const real *d, Py_ssize_t d_stride, real *out,
                           Py_ssize_t out_stride) noexcept nogil:
    """out (6-vectors) = B^T d for the GROUP 6-vectors d, lane by lane:
    element i of lane q at d[i * d_stride + q], out likewise."""
    cdef Py_ssize_t q
    cdef real d0, d1, d2, d3, d4, d5
    for q in range(GROUP):
        d0 = d[q]
        d1 = d[d_stride + q]
        d2 = d[2 * d_stride + q]
        d3 = d[3 * d_stride + q]
        d4 = d[4 * d_stride + q]
        d5 = d[5 * d_stride + q]
        out[q] = <real>4 * d0 - <real>5 * d2 + d4
        out[out_stride + q] = -<real>4 * (d1 + d2) + d3 + d4
        out[2 * out_stride + q] = <real>4 * (d1 - d2) - d3 + d4
        out[3 * out_stride + q] = <real>2 * (d3 - d1) - d2 + d4
        out[4 * out_stride + q] = <real>2 * (d1 - d3) - d2 + d4
        out[5 * out_stride + q] = <real>4 * d1 - <real>5 * d3 + d5


cdef inline void _output_1d(const real *m, Py_ssize_t m_stride, real *out,
                            Py_ssize_t out_stride) noexcept nogil:
    """out (4-vectors) = A^T m for the GROUP 6-vectors m, lane by lane."""
    cdef Py_ssize_t q
    cdef real m0, m1, m2, m3, m4, m5, sum12, diff12, sum34, diff34
    for q in range(GROUP):
        m0 = m[q]
        m1 = m[m_stride + q]
        m2 = m[2 * m_stride + q]
        m3 = m[3 * m_stride + q]
        m4 = m[4 * m_stride + q]
        m5 = m[5 * m_stride + q]
        sum12, diff12 = m1 + m2, m1 - m2
        sum34, diff34 = m3 + m4, m3 - m4
        out[q] = m0 + sum12 + sum34
        out[out_stride + q] = diff12 + <real>2 * diff34
        out[2 * out_stride + q] = sum12 + <real>4 * sum34
        out[3 * out_stride + q] = diff12 + <real>8 * diff34 + m5


cdef inline void _grad_output_1d(const real *y, Py_ssize_t y_stride,
                                 real *out,
                                 Py_ssize_t out_stride) noexcept nogil:
    """out (6-vectors) = A y for the GROUP 4-vectors y, lane by lane (the
    adjoint of _output_1d)."""
    cdef Py_ssize_t q
    cdef real y0, y1, y2, y3
    for q in range(GROUP):
        y0 = y[q]
        y1 = y[y_stride + q]
        y2 = y[2 * y_stride + q]
        y3 = y[3 * y_stride + q]
        out[q] = y0
        out[out_stride + q] = y0 + y1 + y2 + y3
        out[2 * out_stride + q] = y0 - y1 + y2 - y3
        out[3 * out_stride + q] = (y0 + <real>2 * y1 + <real>4 * y2
                                   + <real>8 * y3)
        out[4 * out_stride + q] = (y0 - <real>2 * y1 + <real>4 * y2
                                   - <real>8 * y3)
        out[5 * out_stride + q] = y3


cdef void _input_transform(const real *patch, real *points) noexcept nogil:
    """points[(r * 6 + s) * GROUP + q] = (B^T d B)[r, s] of the GROUP 6x6
    patches d[i, j] = patch[(i * 6 + j) * GROUP + q]."""
    cdef real column[POINTS * GROUP]
    cdef Py_ssize_t j
    for j in range(PATCH):          # B^T down column j
        _input_1d(patch + j * GROUP, PATCH * GROUP, column + j * GROUP,
                  PATCH * GROUP)
    for j in range(PATCH):          # B along row j
        _input_1d(column + j * PATCH * GROUP, GROUP,
                  points + j * PATCH * GROUP, GROUP)


cdef void _output_transform(const real *points,
                            real *result) noexcept nogil:
    """result[(i * 4 + j) * GROUP + q] = (A^T m A)[i, j] of the GROUP 6x6
    products m[r, s] = points[(r * 6 + s) * GROUP + q]."""
    cdef real half[OUT_TILE * PATCH * GROUP]
    cdef Py_ssize_t j
    for j in range(PATCH):          # A^T down column j
        _output_1d(points + j * GROUP, PATCH * GROUP, half + j * GROUP,
                   PATCH * GROUP)
    for j in range(OUT_TILE):       # A along row j
        _output_1d(half + j * PATCH * GROUP, GROUP,
                   result + j * OUT_TILE * GROUP, GROUP)


cdef inline void _store_points(const real *points, Py_ssize_t tiles,
                               real *out,
                               Py_ssize_t point_stride) noexcept nogil:
    """out[p * point_stride + q] = points[p * GROUP + q], q < tiles."""
    cdef Py_ssize_t p, q
    cdef real *dst
    if tiles == GROUP:          # whole vectors (the compiler left the
        for p in range(POINTS):     # masked loop below scalar)
            dst = out + p * point_stride
            for q in range(GROUP):
                dst[q] = points[p * GROUP + q]
        return
    for p in range(POINTS):
        dst = out + p * point_stride
        for q in range(tiles):
            dst[q] = points[p * GROUP + q]


cdef void _input_channel(const WinogradShape *ws, const real *x,
                         Py_ssize_t c, real *v, Py_ssize_t first_tile,
                         Py_ssize_t count) noexcept nogil:
    """V[:, c, :] (V is (36, C, count)) of tiles [first_tile, +count)."""
    cdef real patch[POINTS * GROUP]
    cdef real points[POINTS * GROUP]
    cdef TileCursor at
    cdef Py_ssize_t done = 0, tiles, q, p
    cdef Py_ssize_t plane_in = ws.in_height * ws.in_width
    for p in range(POINTS * GROUP):     # the lanes past a last, short
        patch[p] = 0                    # group hold finite values
    _cursor_at(ws, first_tile, &at)
    while done < count:
        tiles = count - done if count - done < GROUP else GROUP
        for q in range(tiles):
            _gather(x + (at.n * ws.in_channels + c) * plane_in, ws.in_height,
                    ws.in_width, at.ty * OUT_TILE - ws.pad_top,
                    at.tx * OUT_TILE - ws.pad_left, PATCH, patch, q)
            _cursor_next(ws, &at)
        _input_transform(patch, points)
        _store_points(points, tiles, v + c * count + done,
                      ws.in_channels * count)
        done += tiles


cdef void _output_filter(const WinogradShape *ws, const real *m,
                         Py_ssize_t k, real bias_k, real *y,
                         Py_ssize_t first_tile,
                         Py_ssize_t count) noexcept nogil:
    """Output channel k of tiles [first_tile, +count) from M (K, 36,
    count)."""
    cdef real points[POINTS * GROUP]
    cdef real result[OUT_TILE * OUT_TILE * GROUP]
    cdef TileCursor at
    cdef Py_ssize_t done = 0, tiles, q, p, i, j, row0, col0, rows, cols
    cdef Py_ssize_t width = ws.out_width
    cdef Py_ssize_t plane_out = ws.out_height * width
    cdef const real *src
    cdef real *dst
    for p in range(POINTS * GROUP):
        points[p] = 0
    _cursor_at(ws, first_tile, &at)
    while done < count:
        tiles = count - done if count - done < GROUP else GROUP
        for p in range(POINTS):
            src = m + (k * POINTS + p) * count + done
            if tiles == GROUP:  # whole vectors, as in _store_points
                for q in range(GROUP):
                    points[p * GROUP + q] = src[q]
            else:
                for q in range(tiles):
                    points[p * GROUP + q] = src[q]
        _output_transform(points, result)
        for q in range(tiles):
            row0, col0 = at.ty * OUT_TILE, at.tx * OUT_TILE
            rows = ws.out_height - row0
            cols = width - col0
            dst = y + (at.n * ws.out_channels + k) * plane_out \
                + row0 * width + col0
            if rows >= OUT_TILE and cols >= OUT_TILE:   # constant bounds
                for i in range(OUT_TILE):
                    for j in range(OUT_TILE):
                        dst[i * width + j] = result[
                            (i * OUT_TILE + j) * GROUP + q] + bias_k
            else:
                for i in range(min(rows, OUT_TILE)):
                    for j in range(min(cols, OUT_TILE)):
                        dst[i * width + j] = result[
                            (i * OUT_TILE + j) * GROUP + q] + bias_k
            _cursor_next(ws, &at)
        done += tiles


cdef void _input_channels(const WinogradShape *ws, const real *x,
                          Py_ssize_t c0, Py_ssize_t c1, real *v,
                          Py_ssize_t first_tile,
                          Py_ssize_t count) noexcept nogil:
    """V[:, c, :] for channels [c0, c1): float32 by winograd_tiles.h
    (whole rows of tiles at a time, each group's tile positions worked out
    once for all the channels), else channel by channel."""
    cdef Py_ssize_t c
    if real is float and WG_TILES_AVAILABLE:
        wg_input_f32(x, ws.in_channels, c0, c1, ws.in_height, ws.in_width,
                     ws.tiles_h, ws.tiles_w, ws.pad_top, ws.pad_left,
                     first_tile, count, v)
        return
    for c in range(c0, c1):
        _input_channel(ws, x, c, v, first_tile, count)


cdef void _output_filters(const WinogradShape *ws, const real *m,
                          Py_ssize_t k0, Py_ssize_t k1, const real *bias,
                          real *y, Py_ssize_t first_tile,
                          Py_ssize_t count) noexcept nogil:
    """Output channels [k0, k1) (bias NULL: none), as _input_channels."""
    cdef Py_ssize_t k
    if real is float and WG_TILES_AVAILABLE:
        wg_output_f32(m, ws.out_channels, k0, k1, bias, y, ws.out_height,
                      ws.out_width, ws.tiles_h, ws.tiles_w, first_tile,
                      count)
        return
    for k in range(k0, k1):
        _output_filter(ws, m, k, bias[k] if bias != NULL else 0, y,
                       first_tile, count)


cdef extern from "winograd_gemm.h" nogil:
    const int WG_AVAILABLE
    void wg_point_product(const float *u, Py_ssize_t u_k, Py_ssize_t u_c,
                          Py_ssize_t filters, Py_ssize_t depth,
                          const float *v, Py_ssize_t ldv, Py_ssize_t n,
                          float *m, Py_ssize_t ldm, int accumulate,
                          const void *ep, float *pack)
    void wg_transpose(const float *src, Py_ssize_t lds, Py_ssize_t rows,
                      Py_ssize_t cols, float *dst, Py_ssize_t ldd)


cdef inline void _point_product(const WinogradShape *ws, const real *u,
                                bint transposed_weight, const real *v,
                                real *m, Py_ssize_t p,
                                Py_ssize_t count) noexcept nogil:
    """M[:, p] (K, count) = U[p] (K, C) @ V[p] (C, count), single-threaded:
    float32 by winograd_gemm.h's register-blocked kernel (which reads up
    to FC_VL - 1 floats past V[p]'s last row), float64 by BLAS."""
    cdef Py_ssize_t channels = ws.in_channels, filters = ws.out_channels
    if real is float and WG_AVAILABLE:
        wg_point_product(u + p * filters * channels,
                         1 if transposed_weight else channels,
                         filters if transposed_weight else 1, filters,
                         channels, v + p * channels * count, count, count,
                         m + p * count, POINTS * count, 0, NULL, NULL)
    elif transposed_weight:
        gemm_row_major(c'T', c'N', <int>filters, <int>count, <int>channels,
                       <real>1, u + p * filters * channels, <int>filters,
                       v + p * channels * count, <int>count, <real>0,
                       m + p * count, <int>(POINTS * count))
    else:
        gemm_row_major(c'N', c'N', <int>filters, <int>count, <int>channels,
                       <real>1, u + p * filters * channels, <int>channels,
                       v + p * channels * count, <int>count, <real>0,
                       m + p * count, <int>(POINTS * count))


cdef void _block(const WinogradShape *ws, const real *x, const real *u,
                 bint transposed_weight, const real *bias, real *y,
                 real *v, real *m, Py_ssize_t first_tile,
                 Py_ssize_t count) noexcept nogil:
    """Tiles [first_tile, first_tile + count), all on this thread:
    transform, multiply, write."""
    cdef Py_ssize_t p
    _input_channels(ws, x, 0, ws.in_channels, v, first_tile, count)
    for p in range(POINTS):
        _point_product(ws, u, transposed_weight, v, m, p, count)
    _output_filters(ws, m, 0, ws.out_channels, bias, y, first_tile, count)


cdef WinogradShape _winograd_shape(x, y, Py_ssize_t pad_top,
                                   Py_ssize_t pad_left):
    cdef WinogradShape ws
    ws.batch, ws.in_channels = x.shape[0], x.shape[1]
    ws.in_height, ws.in_width = x.shape[2], x.shape[3]
    ws.out_channels = y.shape[1]
    ws.out_height, ws.out_width = y.shape[2], y.shape[3]
    ws.pad_top, ws.pad_left = pad_top, pad_left
    ws.tiles_h = (ws.out_height + OUT_TILE - 1) // OUT_TILE
    ws.tiles_w = (ws.out_width + OUT_TILE - 1) // OUT_TILE
    return ws


def winograd_f43_staged(const real[:, :, :, ::1] x, const real[:, :, ::1] u,
                        bint transposed_weight, const real[::1] bias,
                        bint has_bias, real[:, :, :, ::1] y,
                        real[::1] v_buffer, real[::1] m_buffer,
                        Py_ssize_t pad_top,
                        Py_ssize_t pad_left, Py_ssize_t block_tiles,
                        int num_threads):
    """As ``winograd_f43``, but each block of block_tiles tiles is shared
    by all threads in three stages: input transforms split by channel, the
    36 GEMMs split by point (each GEMM then spans the whole block, and each
    U[p] is read once per block), output transforms split by filter.

    For layers with many channels and few tiles, where per-thread blocks
    would re-read all of U for a handful of tiles. v_buffer (36 * C *
    block_tiles), m_buffer (36 * K * block_tiles).
    """
    cdef WinogradShape ws = _winograd_shape(x, y, pad_top, pad_left)
    cdef Py_ssize_t total = ws.batch * ws.tiles_h * ws.tiles_w
    cdef Py_ssize_t first, count, p, run, c0, c1, k0, k1
    # channel runs: a few per thread, each group's plan made once per run
    cdef Py_ssize_t runs = min(ws.in_channels, ws.out_channels,
                               STAGE_RUNS_PER_THREAD * num_threads)
    cdef const real *x_ptr = &x[0, 0, 0, 0]
    cdef const real *u_ptr = &u[0, 0, 0]
    cdef const real *bias_ptr = &bias[0] if has_bias else NULL
    cdef real *y_ptr = &y[0, 0, 0, 0]
    cdef real *v = &v_buffer[0]
    cdef real *m = &m_buffer[0]
    first = 0
    while first < total:
        count = total - first
        if count > block_tiles:
            count = block_tiles
        with nogil, parallel(num_threads=num_threads):
            for run in prange(runs, schedule="static"):
                # assigned here, so that each thread has its own
                c0 = run * ws.in_channels // runs
                c1 = (run + 1) * ws.in_channels // runs
                _input_channels(&ws, x_ptr, c0, c1, v, first, count)
            _stage_barrier()
            for p in prange(POINTS, schedule="static"):
                _point_product(&ws, u_ptr, transposed_weight, v, m, p, count)
            _stage_barrier()
            for run in prange(runs, schedule="static"):
                k0 = run * ws.out_channels // runs
                k1 = (run + 1) * ws.out_channels // runs
                _output_filters(&ws, m, k0, k1, bias_ptr, y_ptr, first,
                                count)
        first = first + count


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
    36 * (C + K) * block_tiles).
    """
    cdef WinogradShape ws = _winograd_shape(x, y, pad_top, pad_left)
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
    cdef real *v
    with nogil, parallel(num_threads=num_threads):
        v = work_ptr + threadid() * work_stride
        for item in prange(items, schedule="dynamic"):
            first = item * block_tiles
            count = total - first
            if count > block_tiles:
                count = block_tiles
            _block(&ws, x_ptr, u_ptr, transposed_weight, bias_ptr, y_ptr, v,
                   v + v_size, first, count)


# G's and G^T's fractions as products: a division costs several times a
# multiplication, and the filter transforms are nothing but these (the
# products differ from the quotients by at most an ulp of a double, far
# below the float32 results' rounding).
cdef double QUARTER = 0.25
cdef double SIXTH = 1.0 / 6.0
cdef double TWELFTH = 1.0 / 12.0
cdef double TWENTYFOURTH = 1.0 / 24.0


cdef enum:
    FILTER_BLOCK = 64   # filters transformed together, a lane each


cdef inline void _filter_1d(const double *g, Py_ssize_t g_stride,
                            double *out,
                            Py_ssize_t out_stride) noexcept nogil:
    """out (6-vectors) = G g for the FILTER_BLOCK 3-vectors g, lane by
    lane: element j of lane i at g[j * g_stride + i], out likewise."""
    cdef Py_ssize_t i
    cdef double g0, g1, g2
    for i in range(FILTER_BLOCK):
        g0 = g[i]
        g1 = g[g_stride + i]
        g2 = g[2 * g_stride + i]
        out[i] = g0 * QUARTER
        out[out_stride + i] = -(g0 + g1 + g2) * SIXTH
        out[2 * out_stride + i] = -(g0 - g1 + g2) * SIXTH
        out[3 * out_stride + i] = (g0 * TWENTYFOURTH + g1 * TWELFTH
                                   + g2 * SIXTH)
        out[4 * out_stride + i] = (g0 * TWENTYFOURTH - g1 * TWELFTH
                                   + g2 * SIXTH)
        out[5 * out_stride + i] = g2


cdef void _filter_block(const real *taps, Py_ssize_t first, Py_ssize_t count,
                        bint flipped, real *u,
                        Py_ssize_t point_stride) noexcept nogil:
    """u[p * point_stride + first + i] for p < 36, i < count (<=
    FILTER_BLOCK): G g G^T of the 3x3 filters ``taps[(first + i) * 9:]``
    (rotated by 180 degrees when flipped), in double precision, the
    filters side by side in vector lanes (unused lanes zero)."""
    cdef double g[9 * FILTER_BLOCK]              # [tap][lane]
    cdef double t[PATCH * 3 * FILTER_BLOCK]      # G g: [row][column][lane]
    cdef double block[POINTS * FILTER_BLOCK]     # t G^T: [point][lane]
    cdef Py_ssize_t i, j, p
    cdef const real *filter_taps
    for i in range(count):
        filter_taps = taps + (first + i) * 9
        for j in range(9):
            g[j * FILTER_BLOCK + i] = (filter_taps[8 - j] if flipped
                                       else filter_taps[j])
    for j in range(9):
        for i in range(count, FILTER_BLOCK):
            g[j * FILTER_BLOCK + i] = 0
    for j in range(3):              # t (6, 3) = G g, column j
        _filter_1d(g + j * FILTER_BLOCK, 3 * FILTER_BLOCK,
                   t + j * FILTER_BLOCK, 3 * FILTER_BLOCK)
    for j in range(PATCH):          # (6, 6) = t G^T, row j
        _filter_1d(t + j * 3 * FILTER_BLOCK, FILTER_BLOCK,
                   block + j * PATCH * FILTER_BLOCK, FILTER_BLOCK)
    for p in range(POINTS):
        for i in range(count):
            u[p * point_stride + first + i] = <real>block[
                p * FILTER_BLOCK + i]


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


# ------------------------------------------------------- weight gradient
#
# The forward is Y = A^T [U . V] A per tile, U = G g G^T; its adjoint with
# respect to U is dU = sum over tiles of (A dY A^T) . V, and with respect to
# g, dg = G^T dU G. So the weight gradient is, per point p, one GEMM that
# sums over tiles: dU[p] (K, C) += E[p] (K, T) @ V[p]^T (T, C), where
# E = A dY A^T of the output-gradient tiles; then one adjoint filter
# transform per filter.

cdef void _grad_output_transform(const real *tile,
                                 real *points) noexcept nogil:
    """points[(r * 6 + s) * GROUP + q] = (A dY A^T)[r, s] of the GROUP 4x4
    output-gradient tiles dY[i, j] = tile[(i * 4 + j) * GROUP + q]."""
    cdef real column[PATCH * OUT_TILE * GROUP]
    cdef Py_ssize_t j
    for j in range(OUT_TILE):       # A down column j: (6, 4)
        _grad_output_1d(tile + j * GROUP, OUT_TILE * GROUP,
                        column + j * GROUP, OUT_TILE * GROUP)
    for j in range(PATCH):          # A^T along row j: (6, 6)
        _grad_output_1d(column + j * OUT_TILE * GROUP, GROUP,
                        points + j * PATCH * GROUP, GROUP)


cdef void _grad_output_filter(const WinogradShape *ws, const real *grad,
                              Py_ssize_t k, real *e, Py_ssize_t first_tile,
                              Py_ssize_t count) noexcept nogil:
    """E[:, k, :] (E is (36, K, count)) of tiles [first_tile, +count) of
    the output gradient (ws's output shape; zeros past its edge)."""
    cdef real tile[OUT_TILE * OUT_TILE * GROUP]
    cdef real points[POINTS * GROUP]
    cdef TileCursor at
    cdef Py_ssize_t done = 0, tiles, q, p
    cdef Py_ssize_t plane_out = ws.out_height * ws.out_width
    for p in range(OUT_TILE * OUT_TILE * GROUP):
        tile[p] = 0
    _cursor_at(ws, first_tile, &at)
    while done < count:
        tiles = count - done if count - done < GROUP else GROUP
        for q in range(tiles):
            _gather(grad + (at.n * ws.out_channels + k) * plane_out,
                    ws.out_height, ws.out_width, at.ty * OUT_TILE,
                    at.tx * OUT_TILE, OUT_TILE, tile, q)
            _cursor_next(ws, &at)
        _grad_output_transform(tile, points)
        _store_points(points, tiles, e + k * count + done,
                      ws.out_channels * count)
        done += tiles


cdef void _grad_output_filters(const WinogradShape *ws, const real *grad,
                               Py_ssize_t k0, Py_ssize_t k1, real *e,
                               Py_ssize_t first_tile,
                               Py_ssize_t count) noexcept nogil:
    """E[:, k, :] for filters [k0, k1), as _input_channels."""
    cdef Py_ssize_t k
    if real is float and WG_TILES_AVAILABLE:
        wg_grad_output_f32(grad, ws.out_channels, k0, k1, ws.out_height,
                           ws.out_width, ws.tiles_h, ws.tiles_w, first_tile,
                           count, e)
        return
    for k in range(k0, k1):
        _grad_output_filter(ws, grad, k, e, first_tile, count)


cdef inline void _weight_point_product(const real *e, const real *v,
                                       real *du, Py_ssize_t filters,
                                       Py_ssize_t channels, Py_ssize_t count,
                                       bint accumulate,
                                       real *scratch) noexcept nogil:
    """dU[p] (K, C) = (or += with accumulate) E[p] (K, count) @ V[p]^T
    (count, C), single-threaded: float32 by winograd_gemm.h's kernel on
    V[p] transposed into scratch (count * C + FC_VL floats), float64 by
    BLAS."""
    if real is float and WG_AVAILABLE:
        wg_transpose(v, count, channels, count, scratch, channels)
        wg_point_product(e, count, 1, filters, count, scratch, channels,
                         channels, du, channels, accumulate, NULL, NULL)
    else:
        gemm_row_major(c'N', c'T', <int>filters, <int>channels, <int>count,
                       <real>1, e, <int>count, v, <int>count,
                       <real>1 if accumulate else <real>0, du, <int>channels)


def winograd_f43_weight_grad(const real[:, :, :, ::1] x,
                             const real[:, :, :, ::1] grad_output,
                             real[::1] du, real[::1] v_buffer,
                             real[::1] e_buffer, real[:, ::1] scratch,
                             Py_ssize_t pad_top, Py_ssize_t pad_left,
                             Py_ssize_t block_tiles, int num_threads):
    """Winograd-domain weight gradient of y = conv3x3(x) (stride 1): du
    (36 * K * C, every element written) = dU, then
    ``winograd_filters_adjoint_f43`` gives grad_weight.

    x (N, C, H, W); grad_output (N, K, OH, OW). Each block of block_tiles
    tiles is shared by all threads in three stages: input transforms V
    split by channel, output-gradient transforms E by filter, then the 36
    GEMMs dU[p] += E[p] @ V[p]^T by point. Each dU[p] is summed by one
    thread, block after block in tile order, into the one dU: the bits
    depend on the shape and block_tiles alone (not on the thread count),
    and no per-thread copies of dU are written and added, which on layers
    with many channels and few tiles cost more than the GEMMs (8x8 planes,
    256 channels: 14 -> 8.5 ms). v_buffer (36 * C * block_tiles), e_buffer
    (36 * K * block_tiles), scratch (num_threads, block_tiles * C + 16).
    """
    cdef WinogradShape ws = _winograd_shape(x, grad_output, pad_top,
                                            pad_left)
    cdef Py_ssize_t total = ws.batch * ws.tiles_h * ws.tiles_w
    cdef Py_ssize_t channels = ws.in_channels, filters = ws.out_channels
    cdef Py_ssize_t first, count, p, run, c0, c1, k0, k1
    cdef Py_ssize_t runs = min(channels, filters,
                               STAGE_RUNS_PER_THREAD * num_threads)
    cdef const real *x_ptr = &x[0, 0, 0, 0]
    cdef const real *grad_ptr = &grad_output[0, 0, 0, 0]
    cdef real *du_ptr = &du[0]
    cdef real *v = &v_buffer[0]
    cdef real *e = &e_buffer[0]
    cdef real *scratch_ptr = &scratch[0, 0]
    cdef Py_ssize_t scratch_stride = scratch.shape[1]
    first = 0
    while first < total:
        count = total - first
        if count > block_tiles:
            count = block_tiles
        with nogil, parallel(num_threads=num_threads):
            for run in prange(runs, schedule="static"):
                # assigned here, so that each thread has its own
                c0 = run * channels // runs
                c1 = (run + 1) * channels // runs
                _input_channels(&ws, x_ptr, c0, c1, v, first, count)
            _stage_barrier()    # (E does not need V: one rule for all)
            for run in prange(runs, schedule="static"):
                k0 = run * filters // runs
                k1 = (run + 1) * filters // runs
                _grad_output_filters(&ws, grad_ptr, k0, k1, e, first, count)
            _stage_barrier()
            for p in prange(POINTS, schedule="static"):
                _weight_point_product(e + p * filters * count,
                                      v + p * channels * count,
                                      du_ptr + p * filters * channels,
                                      filters, channels, count, first > 0,
                                      scratch_ptr + threadid()
                                      * scratch_stride)
        first = first + count


cdef inline void _filter_adjoint_1d(const double *u, Py_ssize_t u_stride,
                                    double *out,
                                    Py_ssize_t out_stride) noexcept nogil:
    """out (3-vectors) = G^T u for the FILTER_BLOCK 6-vectors u, lane by
    lane: element j of lane i at u[j * u_stride + i], out likewise."""
    cdef Py_ssize_t i
    cdef double u0, u1, u2, u3, u4, u5
    for i in range(FILTER_BLOCK):
        u0 = u[i]
        u1 = u[u_stride + i]
        u2 = u[2 * u_stride + i]
        u3 = u[3 * u_stride + i]
        u4 = u[4 * u_stride + i]
        u5 = u[5 * u_stride + i]
        out[i] = u0 * QUARTER - (u1 + u2) * SIXTH + (u3 + u4) * TWENTYFOURTH
        out[out_stride + i] = (u2 - u1) * SIXTH + (u3 - u4) * TWELFTH
        out[2 * out_stride + i] = (u3 + u4 - u1 - u2) * SIXTH + u5


cdef void _filter_adjoint_block(const real *du, Py_ssize_t point_stride,
                                Py_ssize_t first, Py_ssize_t count,
                                real *grad) noexcept nogil:
    """grad[(first + i) * 9:][:9] (3x3) = G^T u G for i < count (<=
    FILTER_BLOCK), u[p] = du[p * point_stride + first + i], in double
    precision, the filters side by side in vector lanes."""
    cdef double u[POINTS * FILTER_BLOCK]         # [point][lane]
    cdef double t[3 * PATCH * FILTER_BLOCK]      # G^T u: [row][column][lane]
    cdef double g[9 * FILTER_BLOCK]              # t G: [tap][lane]
    cdef Py_ssize_t i, j, p
    for p in range(POINTS):
        for i in range(count):
            u[p * FILTER_BLOCK + i] = du[p * point_stride + first + i]
        for i in range(count, FILTER_BLOCK):
            u[p * FILTER_BLOCK + i] = 0
    for j in range(PATCH):          # t (3, 6) = G^T u, column j
        _filter_adjoint_1d(u + j * FILTER_BLOCK, PATCH * FILTER_BLOCK,
                           t + j * FILTER_BLOCK, PATCH * FILTER_BLOCK)
    for j in range(3):              # g (3, 3) = t G, row j
        _filter_adjoint_1d(t + j * PATCH * FILTER_BLOCK, FILTER_BLOCK,
                           g + j * 3 * FILTER_BLOCK, FILTER_BLOCK)
    for i in range(count):
        for j in range(9):
            grad[(first + i) * 9 + j] = <real>g[j * FILTER_BLOCK + i]


def winograd_filters_adjoint_f43(const real[::1] du, real[:, :, :, ::1] grad,
                                 int num_threads):
    """grad[k, c] = G^T dU[:, k, c] G (3x3) for dU = du as (36, K, C), in
    double precision: the adjoint of ``winograd_filters_f43``."""
    cdef Py_ssize_t pairs = grad.shape[0] * grad.shape[1]
    cdef Py_ssize_t blocks = (pairs + FILTER_BLOCK - 1) // FILTER_BLOCK
    cdef Py_ssize_t block, count
    cdef const real *du_ptr = &du[0]
    cdef real *grad_ptr = &grad[0, 0, 0, 0]
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        count = pairs - block * FILTER_BLOCK
        if count > FILTER_BLOCK:
            count = FILTER_BLOCK
        _filter_adjoint_block(du_ptr, pairs, block * FILTER_BLOCK, count,
                              grad_ptr)
