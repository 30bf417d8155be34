# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""GEMM-based 2-D convolution kernels (forward and backward), float32/float64.

Layout: x (N, C, H, W), weight (K, C/G, R, S), y (N, K, OH, OW), all
C-contiguous. For one image ``n`` and group ``g`` the convolution is one matrix
product::

    y[n, g]  (Kg, OH*OW) = weight[g] (Kg, Cg*R*S) @ col (Cg*R*S, OH*OW)

where ``col`` is the im2col unfolding of ``x[n, g]`` (x itself for a 1x1
stride-1 unpadded conv). Work items are spread over OpenMP threads; each
thread unfolds into its own slice of ``workspace`` and calls a
single-threaded BLAS gemm (SciPy's, fetched at import from
``scipy.linalg.cython_blas``, so building needs no SciPy headers; the caller
holds BLAS to one thread around these calls). Two schedules:

* tiles: an item is (image, group, tile of ``tile_rows`` output rows). A tile
  of y is a strided block of y (row stride OH*OW), which BLAS writes in
  place; tiles keep ``col`` inside the workspace the caller allotted
  (``fastconv.config.WORKSPACE_BYTES``) however big the image.
* chunks: an item is (group, ``chunk_images`` whole images) whose unfoldings
  sit side by side, so one GEMM serves them all; for small images with many
  channels BLAS would otherwise spend more time packing the weights than
  multiplying.

Backward: grad_weight is summed in a fixed number of partials, each over a
fixed run of work items in order, then the partials are added in order
(``sum_rows``): no two threads write the same memory, and the bits do not
depend on the thread count or on which thread ran which run. grad_input
is a GEMM then the col2im scatter, one image per thread at a time.

The caller (``fastconv.backends.cython_cpu``) validates, allocates outputs
and workspaces and chooses the schedule; nothing here checks arguments.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memset

ctypedef fused real:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTCONV_HAVE_OPENMP 1
    #else
    #define FASTCONV_HAVE_OPENMP 0
    #endif
    """
    const int FASTCONV_HAVE_OPENMP

cdef extern from "winograd_gemm.h" nogil:
    const int WG_AVAILABLE
    const int FC_VL
    const int FC_VMAX
    ctypedef struct wg_epilogue:
        const float *bias
        int clamp
        float lo, hi
    void wg_point_product(const float *u, Py_ssize_t u_k, Py_ssize_t u_c,
                          Py_ssize_t filters, Py_ssize_t depth,
                          const float *v, Py_ssize_t ldv, Py_ssize_t n,
                          float *m, Py_ssize_t ldm, int accumulate,
                          const wg_epilogue *ep, float *pack)


def openmp_enabled():
    """True when this extension was compiled with OpenMP (parallel kernels)."""
    return bool(FASTCONV_HAVE_OPENMP)


include "_blas.pxi"


# ------------------------------------------------------------ geometry

cdef struct ConvShape:
    Py_ssize_t batch, in_channels, in_height, in_width
    Py_ssize_t out_channels, kernel_height, kernel_width
    Py_ssize_t stride_h, stride_w, pad_top, pad_left
    Py_ssize_t dilation_h, dilation_w, groups, out_height, out_width
    Py_ssize_t group_channels      # Cg = C / G
    Py_ssize_t group_filters       # Kg = K / G
    Py_ssize_t col_rows            # Cg * R * S
    bint direct                    # 1x1, stride 1, no padding: col is x itself
    bint pack_pointwise            # direct float32: col packs the product
    bint clamp                     # outputs clamped to [lo, hi] as stored
    double lo, hi


cdef ConvShape _conv_shape(g):
    """The C view of a ``fastconv._shapes.ConvGeometry``."""
    cdef ConvShape cs
    cs.batch, cs.in_channels = g.batch, g.in_channels
    cs.in_height, cs.in_width = g.in_height, g.in_width
    cs.out_channels = g.out_channels
    cs.kernel_height, cs.kernel_width = g.kernel_height, g.kernel_width
    cs.stride_h, cs.stride_w = g.stride_h, g.stride_w
    cs.pad_top, cs.pad_left = g.pad_top, g.pad_left
    cs.dilation_h, cs.dilation_w = g.dilation_h, g.dilation_w
    cs.groups = g.groups
    cs.out_height, cs.out_width = g.out_height, g.out_width
    cs.group_channels = g.in_channels // g.groups
    cs.group_filters = g.out_channels // g.groups
    cs.col_rows = cs.group_channels * g.kernel_height * g.kernel_width
    cs.direct = (g.kernel_height == 1 and g.kernel_width == 1
                 and g.stride_h == 1 and g.stride_w == 1
                 and g.pad_top == 0 and g.pad_left == 0
                 and g.pad_bottom == 0 and g.pad_right == 0)
    cs.pack_pointwise = False
    cs.clamp, cs.lo, cs.hi = False, 0, 0
    return cs


cdef inline void _valid_columns(const ConvShape *cs, Py_ssize_t s,
                                Py_ssize_t *offset, Py_ssize_t *first,
                                Py_ssize_t *stop) noexcept nogil:
    """For kernel column s: iw = ow * stride_w + offset lies inside the
    input exactly for ow in [first, stop)."""
    cdef Py_ssize_t off = s * cs.dilation_w - cs.pad_left
    cdef Py_ssize_t lo = 0, hi
    if off < 0:
        lo = (-off + cs.stride_w - 1) // cs.stride_w
    if cs.in_width - 1 - off < 0:
        hi = 0
    else:
        hi = (cs.in_width - 1 - off) // cs.stride_w + 1
    if hi > cs.out_width:
        hi = cs.out_width
    if lo > cs.out_width:
        lo = cs.out_width
    if hi < lo:
        hi = lo
    offset[0], first[0], stop[0] = off, lo, hi


cdef void _im2col(const ConvShape *cs, const real *image, Py_ssize_t row_start,
                  Py_ssize_t row_count, real *col,
                  Py_ssize_t col_ld) noexcept nogil:
    """Unfold output rows [row_start, row_start + row_count) of one group.

    image: the group's Cg input planes (Cg, H, W); col: (Cg*R*S,
    row_count*OW) with row stride col_ld, zeros where a tap falls in the
    padding.
    """
    cdef Py_ssize_t width = cs.out_width
    cdef Py_ssize_t c, r, s, i, ow, ih, offset, first, stop
    cdef Py_ssize_t stride_w = cs.stride_w
    cdef const real *plane
    cdef const real *src
    cdef real *dst
    cdef Py_ssize_t row = 0
    for c in range(cs.group_channels):
        plane = image + c * cs.in_height * cs.in_width
        for r in range(cs.kernel_height):
            for s in range(cs.kernel_width):
                _valid_columns(cs, s, &offset, &first, &stop)
                for i in range(row_count):
                    dst = col + row * col_ld + i * width
                    ih = ((row_start + i) * cs.stride_h - cs.pad_top
                          + r * cs.dilation_h)
                    if ih < 0 or ih >= cs.in_height:
                        memset(dst, 0, width * sizeof(real))
                        continue
                    src = plane + ih * cs.in_width + offset
                    for ow in range(first):
                        dst[ow] = 0
                    if stride_w == 1:
                        for ow in range(first, stop):
                            dst[ow] = src[ow]
                    else:
                        for ow in range(first, stop):
                            dst[ow] = src[ow * stride_w]
                    for ow in range(stop, width):
                        dst[ow] = 0
                row += 1


cdef void _col2im_add(const ConvShape *cs, const real *col,
                      Py_ssize_t col_ld, Py_ssize_t row_start,
                      Py_ssize_t row_count, real *image) noexcept nogil:
    """The adjoint of ``_im2col``: add col's entries (row stride col_ld)
    back onto the Cg input planes ``image`` (padding taps are dropped)."""
    cdef Py_ssize_t width = cs.out_width
    cdef Py_ssize_t c, r, s, i, ow, ih, offset, first, stop
    cdef Py_ssize_t stride_w = cs.stride_w
    cdef real *plane
    cdef real *dst
    cdef const real *src
    cdef Py_ssize_t row = 0
    for c in range(cs.group_channels):
        plane = image + c * cs.in_height * cs.in_width
        for r in range(cs.kernel_height):
            for s in range(cs.kernel_width):
                _valid_columns(cs, s, &offset, &first, &stop)
                for i in range(row_count):
                    ih = ((row_start + i) * cs.stride_h - cs.pad_top
                          + r * cs.dilation_h)
                    if ih < 0 or ih >= cs.in_height:
                        continue
                    src = col + row * col_ld + i * width
                    dst = plane + ih * cs.in_width + offset
                    if stride_w == 1:
                        for ow in range(first, stop):
                            dst[ow] += src[ow]
                    else:
                        for ow in range(first, stop):
                            dst[ow * stride_w] += src[ow]
                row += 1


# ------------------------------------------------------------- forward

cdef inline bint _product(const ConvShape *cs, const real *weight,
                          const real *columns, Py_ssize_t ld_columns,
                          Py_ssize_t width, real *out, Py_ssize_t ld_out,
                          real *pack, const real *bias) noexcept nogil:
    """out (Kg, width) = weight (Kg, Cg*R*S) @ columns (Cg*R*S, width);
    True where bias (the group's, or NULL) and the clamp were applied as
    it was stored.

    With ``pack`` (float32, pointwise layers: room for Cg * FC_VMAX *
    FC_VL floats) on winograd_gemm.h's register-blocked kernel, each panel
    of columns copied into pack first, the bias and clamp in its stores
    (BLAS's packing copies of the weights cost as much as the product of a
    pointwise layer's few channels); else on BLAS."""
    cdef wg_epilogue ep
    if real is float and WG_AVAILABLE:
        if pack != NULL:
            ep.bias = bias
            ep.clamp = cs.clamp
            ep.lo, ep.hi = <float>cs.lo, <float>cs.hi
            wg_point_product(weight, cs.col_rows, 1, cs.group_filters,
                             cs.col_rows, columns, ld_columns, width, out,
                             ld_out, 0, &ep, pack)
            return True
    gemm_row_major(c'N', c'N', <int>cs.group_filters, <int>width,
                   <int>cs.col_rows, <real>1, weight, <int>cs.col_rows,
                   columns, <int>ld_columns, <real>0, out, <int>ld_out)
    return False


cdef inline void _finish_row(const ConvShape *cs, real *row,
                             const real *source, Py_ssize_t n,
                             real bias_k) noexcept nogil:
    """row[p] = source[p] + bias_k, clamped where cs.clamp, p < n."""
    cdef Py_ssize_t p
    cdef real lo = <real>cs.lo, hi = <real>cs.hi, v
    if not cs.clamp:
        for p in range(n):
            row[p] = source[p] + bias_k
        return
    for p in range(n):
        v = source[p] + bias_k
        row[p] = lo if v < lo else (hi if v > hi else v)


cdef void _forward_tile(const ConvShape *cs, const real *x, const real *weight,
                        const real *bias, real *y, real *col,
                        Py_ssize_t item, Py_ssize_t tile_rows,
                        Py_ssize_t tiles) noexcept nogil:
    """One work item: output rows of one tile, one group, one image."""
    cdef Py_ssize_t tile = item % tiles
    cdef Py_ssize_t group = (item // tiles) % cs.groups
    cdef Py_ssize_t n = item // (tiles * cs.groups)
    cdef Py_ssize_t row_start = tile * tile_rows
    cdef Py_ssize_t row_count = cs.out_height - row_start
    cdef Py_ssize_t plane_out = cs.out_height * cs.out_width
    cdef Py_ssize_t k, p, tile_width
    cdef const real *image = x + (n * cs.in_channels
                                  + group * cs.group_channels) * (
                                      cs.in_height * cs.in_width)
    cdef real *out = y + (n * cs.out_channels + group * cs.group_filters) * (
        plane_out) + row_start * cs.out_width
    cdef const real *columns
    cdef int ld_columns
    cdef real *out_row
    cdef real bias_k
    if row_count > tile_rows:
        row_count = tile_rows
    tile_width = row_count * cs.out_width
    if cs.direct:
        # 1x1 taps of a stride-1 unpadded conv: the input planes are col.
        columns = image + row_start * cs.out_width
        ld_columns = <int>plane_out
    else:
        _im2col(cs, image, row_start, row_count, col, tile_width)
        columns = col
        ld_columns = <int>tile_width
    if _product(cs, weight + group * cs.group_filters * cs.col_rows,
                columns, ld_columns, tile_width, out, plane_out,
                col if cs.pack_pointwise else NULL,
                bias + group * cs.group_filters if bias != NULL else NULL):
        return
    if bias != NULL or cs.clamp:
        for k in range(cs.group_filters):
            bias_k = bias[group * cs.group_filters + k] if bias != NULL \
                else 0
            out_row = out + k * plane_out
            _finish_row(cs, out_row, out_row, tile_width, bias_k)


cdef void _forward_images(const ConvShape *cs, const real *x,
                          const real *weight, const real *bias, real *y,
                          real *col, real *out_block, Py_ssize_t item,
                          Py_ssize_t chunk_images) noexcept nogil:
    """One work item: group g of up to chunk_images whole images at once.

    Their unfoldings sit side by side in col (Cg*R*S, count*P), P = OH*OW,
    so that one GEMM serves them all: BLAS packs the group's weights once
    per call, which for small images costs as much as the product itself.
    The product lands in out_block (Kg, count*P) and is copied out to y.
    """
    cdef Py_ssize_t group = item % cs.groups
    cdef Py_ssize_t n0 = (item // cs.groups) * chunk_images
    cdef Py_ssize_t count = cs.batch - n0
    cdef Py_ssize_t plane_in = cs.in_height * cs.in_width
    cdef Py_ssize_t plane_out = cs.out_height * cs.out_width
    cdef Py_ssize_t width, i, k, p
    cdef real *target
    cdef const real *source
    cdef real bias_k
    if count > chunk_images:
        count = chunk_images
    if count == 1:
        # one image: GEMM straight into y (the tile of the whole image)
        _forward_tile(cs, x, weight, bias, y, col, n0 * cs.groups + group,
                      cs.out_height, 1)
        return
    width = count * plane_out
    for i in range(count):
        _im2col(cs, x + ((n0 + i) * cs.in_channels
                         + group * cs.group_channels) * plane_in,
                0, cs.out_height, col + i * plane_out, width)
    gemm_row_major(c'N', c'N', <int>cs.group_filters, <int>width,
                   <int>cs.col_rows, <real>1,
                   weight + group * cs.group_filters * cs.col_rows,
                   <int>cs.col_rows, col, <int>width, <real>0, out_block,
                   <int>width)
    for i in range(count):
        for k in range(cs.group_filters):
            bias_k = bias[group * cs.group_filters + k] if bias != NULL \
                else 0
            source = out_block + k * width + i * plane_out
            target = y + ((n0 + i) * cs.out_channels
                          + group * cs.group_filters + k) * plane_out
            _finish_row(cs, target, source, plane_out, bias_k)


def pointwise_pack_floats(Py_ssize_t channels):
    """The floats _product packs a pointwise layer's panels into, or 0
    where the register-blocked kernel is not built."""
    return channels * FC_VMAX * FC_VL if WG_AVAILABLE else 0


def conv2d_forward(const real[:, :, :, ::1] x, const real[:, :, :, ::1] weight,
                   const real[::1] bias, bint has_bias,
                   real[:, :, :, ::1] y, real[:, ::1] workspace, g,
                   Py_ssize_t tile_rows, Py_ssize_t chunk_images,
                   int num_threads, bint pack_pointwise=False,
                   clamp=None):
    """y = conv2d(x, weight) (+ bias when has_bias), written into y,
    clamped to clamp = (lo, hi) as it is (None: not).

    Two schedules. With chunk_images >= 1, work items are (group, up to
    chunk_images whole images) and workspace is (num_threads, col +
    out_block) = (num_threads, (Cg*R*S + Kg) * chunk_images*OH*OW). With
    chunk_images == 0, items are (image, group, tile of tile_rows output
    rows) and workspace is (num_threads, Cg*R*S * tile_rows*OW). A 1x1
    stride-1 unpadded conv reads a lone image in place (its col is x);
    with pack_pointwise (float32, single images: workspace rows of
    pointwise_pack_floats(Cg) floats) its products run on winograd_gemm.h's
    kernel (_product).
    """
    cdef ConvShape cs = _conv_shape(g)
    cs.pack_pointwise = pack_pointwise and chunk_images == 0 and cs.direct
    if clamp is not None:
        cs.clamp, cs.lo, cs.hi = True, clamp[0], clamp[1]
    cdef Py_ssize_t tiles = (cs.out_height + tile_rows - 1) // tile_rows
    cdef Py_ssize_t chunks = (cs.batch + chunk_images - 1) // chunk_images \
        if chunk_images > 0 else cs.batch * tiles
    cdef Py_ssize_t items = chunks * cs.groups
    cdef Py_ssize_t item
    cdef const real *x_ptr = &x[0, 0, 0, 0]
    cdef const real *weight_ptr = &weight[0, 0, 0, 0]
    cdef const real *bias_ptr = &bias[0] if has_bias else NULL
    cdef real *y_ptr = &y[0, 0, 0, 0]
    cdef real *work_ptr = &workspace[0, 0]
    cdef Py_ssize_t work_stride = workspace.shape[1]
    cdef Py_ssize_t col_size = cs.col_rows * chunk_images * (
        cs.out_height * cs.out_width)
    cdef real *col
    with nogil, parallel(num_threads=num_threads):
        col = work_ptr + threadid() * work_stride
        for item in prange(items, schedule="dynamic"):
            if chunk_images > 0:
                _forward_images(&cs, x_ptr, weight_ptr, bias_ptr, y_ptr, col,
                                col + col_size, item, chunk_images)
            else:
                _forward_tile(&cs, x_ptr, weight_ptr, bias_ptr, y_ptr, col,
                              item, tile_rows, tiles)


# ------------------------------------------------------------ backward

cdef void _backward_image(const ConvShape *cs, const real *grad_output,
                          const real *x, const real *weight,
                          real *grad_input, real *grad_weight_partial,
                          real *col, real *col_grad, Py_ssize_t item,
                          Py_ssize_t tile_rows, bint need_input_grad,
                          bint need_weight_grad) noexcept nogil:
    """One work item: image n, group g, all its tiles (in order, so the
    col2im scatter of one image is never shared between threads).

    grad_weight_partial (K, Cg*R*S) is this thread's private sum.
    """
    cdef Py_ssize_t group = item % cs.groups
    cdef Py_ssize_t n = item // cs.groups
    cdef Py_ssize_t plane_in = cs.in_height * cs.in_width
    cdef Py_ssize_t plane_out = cs.out_height * cs.out_width
    cdef Py_ssize_t input_offset = (n * cs.in_channels
                                    + group * cs.group_channels) * plane_in
    cdef const real *image = x + input_offset
    cdef real *image_grad = grad_input + input_offset if need_input_grad \
        else NULL
    cdef const real *grad_image = grad_output + (
        n * cs.out_channels + group * cs.group_filters) * plane_out
    cdef const real *weight_group = weight + group * cs.group_filters * (
        cs.col_rows)
    cdef real *partial_group = grad_weight_partial + group * (
        cs.group_filters * cs.col_rows)
    cdef Py_ssize_t row_start, row_count, tile_width
    cdef const real *grad_tile
    cdef const real *columns
    cdef int ld_columns
    if need_input_grad and not cs.direct:
        memset(image_grad, 0, cs.group_channels * plane_in * sizeof(real))
    row_start = 0
    while row_start < cs.out_height:
        row_count = cs.out_height - row_start
        if row_count > tile_rows:
            row_count = tile_rows
        tile_width = row_count * cs.out_width
        grad_tile = grad_image + row_start * cs.out_width
        if cs.direct:
            columns = image + row_start * cs.out_width
            ld_columns = <int>plane_in
        elif need_weight_grad:
            _im2col(cs, image, row_start, row_count, col, tile_width)
            columns = col
            ld_columns = <int>tile_width
        if need_weight_grad:
            # grad_weight[g] (Kg, CgRS) += grad_tile (Kg, P) @ columns^T
            gemm_row_major(c'N', c'T', <int>cs.group_filters,
                           <int>cs.col_rows, <int>tile_width, <real>1,
                           grad_tile, <int>plane_out, columns, ld_columns,
                           <real>1, partial_group, <int>cs.col_rows)
        if need_input_grad:
            # col_grad (CgRS, P) = weight[g]^T (CgRS, Kg) @ grad_tile (Kg, P)
            if cs.direct:
                gemm_row_major(c'T', c'N', <int>cs.col_rows, <int>tile_width,
                               <int>cs.group_filters, <real>1, weight_group,
                               <int>cs.col_rows, grad_tile, <int>plane_out,
                               <real>0, image_grad + row_start * cs.out_width,
                               <int>plane_in)
            else:
                gemm_row_major(c'T', c'N', <int>cs.col_rows, <int>tile_width,
                               <int>cs.group_filters, <real>1, weight_group,
                               <int>cs.col_rows, grad_tile, <int>plane_out,
                               <real>0, col_grad, <int>tile_width)
                _col2im_add(cs, col_grad, tile_width, row_start, row_count,
                            image_grad)
        row_start += row_count


cdef void _backward_images(const ConvShape *cs, const real *grad_output,
                           const real *x, const real *weight,
                           real *grad_input, real *grad_weight_partial,
                           real *col, real *col_grad, real *grad_block,
                           Py_ssize_t item, Py_ssize_t chunk_images,
                           bint need_input_grad,
                           bint need_weight_grad) noexcept nogil:
    """One work item: group g of up to chunk_images whole images at once.

    Their unfoldings sit side by side in col (Cg*R*S, count*P), P = OH*OW,
    and their output gradients in grad_block (Kg, count*P), so that the
    grad_weight GEMM sums over count*P columns in one call (per image, P
    can be as small as 64, which BLAS runs slowly).
    """
    cdef Py_ssize_t group = item % cs.groups
    cdef Py_ssize_t n0 = (item // cs.groups) * chunk_images
    cdef Py_ssize_t count = cs.batch - n0
    cdef Py_ssize_t plane_in = cs.in_height * cs.in_width
    cdef Py_ssize_t plane_out = cs.out_height * cs.out_width
    cdef Py_ssize_t width, i, k, p
    cdef const real *weight_group = weight + group * cs.group_filters * (
        cs.col_rows)
    cdef real *partial_group = grad_weight_partial + group * (
        cs.group_filters * cs.col_rows)
    cdef const real *source
    cdef real *target
    cdef real *image_grad
    if count > chunk_images:
        count = chunk_images
    width = count * plane_out
    for i in range(count):
        if need_weight_grad:
            _im2col(cs, x + ((n0 + i) * cs.in_channels
                             + group * cs.group_channels) * plane_in,
                    0, cs.out_height, col + i * plane_out, width)
        for k in range(cs.group_filters):
            source = grad_output + ((n0 + i) * cs.out_channels
                                    + group * cs.group_filters + k) * plane_out
            target = grad_block + k * width + i * plane_out
            for p in range(plane_out):
                target[p] = source[p]
    if need_weight_grad:
        # grad_weight[g] (Kg, CgRS) += grad_block (Kg, W) @ col^T (W, CgRS)
        gemm_row_major(c'N', c'T', <int>cs.group_filters, <int>cs.col_rows,
                       <int>width, <real>1, grad_block, <int>width, col,
                       <int>width, <real>1, partial_group, <int>cs.col_rows)
    if not need_input_grad:
        return
    # col_grad (CgRS, W) = weight[g]^T (CgRS, Kg) @ grad_block (Kg, W)
    gemm_row_major(c'T', c'N', <int>cs.col_rows, <int>width,
                   <int>cs.group_filters, <real>1, weight_group,
                   <int>cs.col_rows, grad_block, <int>width, <real>0,
                   col_grad, <int>width)
    for i in range(count):
        image_grad = grad_input + ((n0 + i) * cs.in_channels
                                   + group * cs.group_channels) * plane_in
        memset(image_grad, 0, cs.group_channels * plane_in * sizeof(real))
        _col2im_add(cs, col_grad + i * plane_out, width, 0, cs.out_height,
                    image_grad)


def conv2d_backward(const real[:, :, :, ::1] grad_output,
                    const real[:, :, :, ::1] x,
                    const real[:, :, :, ::1] weight,
                    real[:, :, :, ::1] grad_input, bint need_input_grad,
                    bint need_weight_grad, real[:, ::1] grad_weight_partials,
                    real[:, ::1] workspace, g, Py_ssize_t tile_rows,
                    Py_ssize_t chunk_images, int num_threads):
    """Accumulate the input and weight gradients of conv2d.

    Two schedules. With chunk_images >= 1, work items are (group, up to
    chunk_images whole images) and workspace is (num_threads, col + col_grad
    + grad_block) = (num_threads, (2*Cg*R*S + Kg) * chunk_images*OH*OW).
    With chunk_images == 0, items are (image, group), each swept in tiles of
    tile_rows output rows, and workspace is (num_threads, 2 * Cg*R*S *
    tile_rows*OW).

    grad_input: uninitialised, x's shape (every element is written); ignored,
    and may be any (1, 1, 1, 1) array, when need_input_grad is False.
    grad_weight_partials: (P, K*Cg*R*S) zeros, P <= the number of items;
    the items are cut into P runs of consecutive items, and run j adds its
    items' contributions, in item order, to row j (the caller then sums the
    rows in order, ``sum_rows``). The bits of the sum depend on P and the
    shape, never on the thread count or the schedule. Not touched when
    need_weight_grad is False.
    """
    cdef ConvShape cs = _conv_shape(g)
    cdef Py_ssize_t chunks = (cs.batch + chunk_images - 1) // chunk_images \
        if chunk_images > 0 else cs.batch
    cdef Py_ssize_t items = chunks * cs.groups
    cdef Py_ssize_t runs = grad_weight_partials.shape[0]
    cdef Py_ssize_t run, item, stop
    cdef const real *grad_output_ptr = &grad_output[0, 0, 0, 0]
    cdef const real *x_ptr = &x[0, 0, 0, 0]
    cdef const real *weight_ptr = &weight[0, 0, 0, 0]
    cdef real *grad_input_ptr = &grad_input[0, 0, 0, 0]
    cdef real *partials_ptr = &grad_weight_partials[0, 0]
    cdef Py_ssize_t partial_stride = grad_weight_partials.shape[1]
    cdef real *work_ptr = &workspace[0, 0]
    cdef Py_ssize_t work_stride = workspace.shape[1]
    cdef Py_ssize_t col_size = cs.col_rows * chunk_images * (
        cs.out_height * cs.out_width) if chunk_images > 0 \
        else work_stride // 2
    cdef real *col
    cdef real *partial
    with nogil, parallel(num_threads=num_threads):
        col = work_ptr + threadid() * work_stride
        for run in prange(runs, schedule="dynamic"):
            partial = partials_ptr + run * partial_stride
            item = run * items // runs
            stop = (run + 1) * items // runs
            while item < stop:
                if chunk_images > 0:
                    _backward_images(&cs, grad_output_ptr, x_ptr, weight_ptr,
                                     grad_input_ptr, partial, col,
                                     col + col_size, col + 2 * col_size, item,
                                     chunk_images, need_input_grad,
                                     need_weight_grad)
                else:
                    _backward_image(&cs, grad_output_ptr, x_ptr, weight_ptr,
                                    grad_input_ptr, partial, col,
                                    col + col_size, item, tile_rows,
                                    need_input_grad, need_weight_grad)
                item = item + 1


def sum_rows(const real[:, ::1] rows, real[::1] total, int num_threads):
    """total[j] = sum over i of rows[i, j] (the per-thread partial sums)."""
    cdef Py_ssize_t i, j
    cdef Py_ssize_t count = rows.shape[0], width = rows.shape[1]
    cdef real acc
    for j in prange(width, nogil=True, schedule="static",
                    num_threads=num_threads):
        acc = 0
        for i in range(count):
            acc = acc + rows[i, j]
        total[j] = acc


