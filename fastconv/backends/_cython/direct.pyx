# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The register-blocked direct convolution (float32): the OpenMP loop over
work items around the C kernel in ``direct_conv.h``, which describes the
method, the band and the packed weight layout.

A work item is (image, group, run of ``rows`` output rows); each output is
written by exactly one item. The caller (``fastconv.backends.cython_cpu``)
validates, packs the weights, sizes the bands and computes the tap offsets;
nothing here checks arguments.
"""

from cython.parallel cimport prange, threadid
from libc.stdlib cimport free, malloc

import numpy as np


cdef class vector_pointers:
    """A C array of float pointers (NULL-filled) owned by Python."""
    cdef const float **data

    def __cinit__(self, Py_ssize_t count):
        self.data = <const float **>malloc(max(count, 1) * sizeof(float *))
        if self.data == NULL:
            raise MemoryError("interleave_phases: no memory for pointers")
        for i in range(count):
            self.data[i] = NULL

    def __dealloc__(self):
        free(self.data)


cdef extern from "direct_conv.h" nogil:
    const int FC_DIRECT_AVAILABLE
    const int FC_VL
    const int FC_KB
    const int FC_VMAX
    int FC_WTAPS(int filter_vectors)
    const int FC_PK
    const int FC_PT

    ctypedef struct fc_direct_geometry:
        Py_ssize_t channels, in_height, in_width
        Py_ssize_t filters, chunks, out_height, out_width
        Py_ssize_t stride_h, stride_w, pad_top, pad_left, dilation_h
        Py_ssize_t taps, block_taps, rows, band_rows, row_len
        int pointwise
        int clamp
        float lo, hi

    ctypedef struct fc_phase_out:
        const Py_ssize_t *origin
        const Py_ssize_t *rows
        const Py_ssize_t *columns
        Py_ssize_t row_pitch, channel_plane
        int spread, add

    void fc_direct_item(const fc_direct_geometry *g, const float *image,
                        const float *weights, const float *bias,
                        const Py_ssize_t *tap_offsets, Py_ssize_t oh0,
                        Py_ssize_t first_chunk, Py_ssize_t last_chunk,
                        float *out, float *band,
                        const Py_ssize_t *chunk_taps,
                        const Py_ssize_t *chunk_per_channel,
                        Py_ssize_t block_channels,
                        const fc_phase_out *phases)
    const int FC_CHANNEL_VECTORS_AVAILABLE
    void fc_cv_item(const fc_direct_geometry *g, const float *image,
                    const float *weights, const float *bias,
                    const Py_ssize_t *tap_offsets, int cv, Py_ssize_t oh0,
                    Py_ssize_t first_chunk, Py_ssize_t last_chunk,
                    float *out, float *band, float *sums)
    void fc_wgrad_item(const fc_direct_geometry *g, const float *image,
                       const float *grad, const Py_ssize_t *tap_offsets,
                       Py_ssize_t padded_taps, Py_ssize_t padded_filters,
                       int wv, int slide, Py_ssize_t oh0, float *band,
                       float *gt, float *partial)
    const int FC_WGRAD_SLIDE_AVAILABLE
    void fc_wgrad_px_item(const fc_direct_geometry *g, const float *image,
                          const float *grad, const Py_ssize_t *tap_offsets,
                          Py_ssize_t padded_taps, Py_ssize_t padded_filters,
                          Py_ssize_t oh0, float *band, float *zeros,
                          float *lane_partial)


def parameters():
    """(available, vector lanes, output channels per tile, vectors per
    tile) as compiled for this CPU; ``available`` is False where the C
    compiler has no vector extensions."""
    return bool(FC_DIRECT_AVAILABLE), FC_VL, FC_KB, FC_VMAX


cdef fc_direct_geometry _geometry(x_shape, Py_ssize_t filters, y_shape,
                                  Py_ssize_t groups, object geometry,
                                  Py_ssize_t taps, Py_ssize_t block_taps,
                                  Py_ssize_t rows, Py_ssize_t band_rows,
                                  Py_ssize_t row_len, bint pointwise):
    cdef fc_direct_geometry g
    g.channels = x_shape[1] // groups
    g.in_height, g.in_width = x_shape[2], x_shape[3]
    g.filters = filters // groups
    g.chunks = (g.filters + FC_KB - 1) // FC_KB
    g.out_height, g.out_width = y_shape[2], y_shape[3]
    g.stride_h, g.stride_w = geometry.stride_h, geometry.stride_w
    g.pad_top, g.pad_left = geometry.pad_top, geometry.pad_left
    g.dilation_h = geometry.dilation_h
    g.taps, g.block_taps = taps, block_taps
    g.rows, g.band_rows, g.row_len = rows, band_rows, row_len
    g.pointwise = pointwise
    g.clamp, g.lo, g.hi = 0, 0, 0
    return g


def conv2d_direct_weight_grad(
        const float[:, :, :, ::1] x, const float[:, :, :, ::1] grad_output,
        float[:, :, :, ::1] partials, float[:, ::1] bands, float[:, ::1] gts,
        const Py_ssize_t[::1] tap_offsets, object geometry, Py_ssize_t groups,
        Py_ssize_t rows, Py_ssize_t band_rows, Py_ssize_t row_len,
        bint pointwise, int filter_vectors, int num_threads,
        bint slide=False):
    """Per-run partial sums of grad_weight: partials (runs, groups, padded
    taps, padded filters), zero on entry; or, with ``filter_vectors`` 0,
    the pixel-lane kernel's (runs, groups, padded taps, padded filters *
    lanes), ``gts`` then rows * out_width floats per thread. The work items
    (image, group, run of ``rows`` output rows) are cut into consecutive
    runs, each summed in order by one thread: the bits depend on the shape
    and the run count alone. ``slide``: 3-wide filters at column stride 1
    without column dilation, one filter vector (``weight_grad_slides``):
    each input broadcast feeds the three taps of its row."""
    cdef fc_direct_geometry g = _geometry(
        x.shape, grad_output.shape[1], grad_output.shape, groups, geometry,
        partials.shape[2], partials.shape[2], rows, band_rows, row_len,
        pointwise)
    cdef Py_ssize_t row_runs = (g.out_height + rows - 1) // rows
    cdef Py_ssize_t items = x.shape[0] * groups * row_runs
    cdef Py_ssize_t runs = partials.shape[0]
    cdef Py_ssize_t run, item, n, group, row_run, thread
    with nogil:
        for run in prange(runs, num_threads=num_threads, schedule="dynamic"):
            thread = threadid()
            for item in range(run * items // runs, (run + 1) * items // runs):
                row_run = item % row_runs
                group = (item // row_runs) % groups
                n = item // (row_runs * groups)
                if filter_vectors == 0:
                    fc_wgrad_px_item(
                        &g, &x[n, group * g.channels, 0, 0],
                        &grad_output[n, group * g.filters, 0, 0],
                        &tap_offsets[0], partials.shape[2],
                        partials.shape[3] // FC_VL, row_run * rows, &bands[thread, 0], &gts[thread, 0],
                        &partials[run, group, 0, 0])
                    continue
                fc_wgrad_item(&g, &x[n, group * g.channels, 0, 0],
                              &grad_output[n, group * g.filters, 0, 0],
                              &tap_offsets[0], partials.shape[2],
                              partials.shape[3], filter_vectors, slide,
                              row_run * rows, &bands[thread, 0],
                              &gts[thread, 0], &partials[run, group, 0, 0])


def channel_vectors_available():
    """Whether the channel-vectorised forward was compiled (AVX-512 and
    GCC's vector shuffles)."""
    return bool(FC_CHANNEL_VECTORS_AVAILABLE)


def weight_grad_taps(int filter_vectors):
    """Taps per group of the weight gradient's tiles with this many vectors
    of filters (1, 2 or 4; 0: the pixel-lane kernel's)."""
    return FC_PT if filter_vectors == 0 else FC_WTAPS(filter_vectors)


def weight_grad_slides():
    """Whether the sliding weight-gradient tiles were compiled."""
    return bool(FC_WGRAD_SLIDE_AVAILABLE)


def weight_grad_pixel_filters():
    """Filters per tile of the pixel-lane weight gradient."""
    return FC_PK


def conv2d_direct(const float[:, :, :, ::1] x, const float[:, :, :, ::1] packed,
                  const float[::1] bias, bint has_bias,
                  float[:, :, :, ::1] y, float[:, ::1] bands,
                  float[:, ::1] sums, const Py_ssize_t[::1] tap_offsets,
                  object geometry, Py_ssize_t groups, Py_ssize_t rows,
                  Py_ssize_t band_rows, Py_ssize_t row_len, bint pointwise,
                  Py_ssize_t block_taps, Py_ssize_t chunk_runs,
                  int channel_vectors, int num_threads, clamp=None,
                  chunk_taps=None, chunk_per_channel=None,
                  Py_ssize_t block_channels=0, phase_out=None):
    """y = conv2d(x, weights) (+ bias) from the packed weights (groups,
    chunks, taps, chunk width): output pixels in the vector lanes
    (``channel_vectors`` 0, chunks of FC_KB filters) or output channels
    (``channel_vectors`` 1, 2 or 4 vectors of them per chunk, ``sums`` one
    row of scratch per thread). ``bands``: one row per thread;
    ``pointwise``: the 1x1 mode without bands, where ``rows`` counts vectors
    of the flattened plane; ``block_taps``: taps per channel block (a
    multiple of R * S). Work items: (image, group, run of ``rows`` rows,
    run of chunks), ``chunk_runs`` runs of chunks. ``clamp``: None or
    (lo, hi), an activation applied as the outputs are stored.

    ``chunk_taps`` (intp, chunks + 1 cumulative starts) and
    ``chunk_per_channel`` (intp, chunks): each chunk of the pixel-lane
    kernel applies taps of its own (fc_direct_item), ``packed`` then (1, 1,
    all chunks' taps, FC_KB) and ``tap_offsets`` the chunks' offsets one
    after the other, in blocks of ``block_channels`` channels; groups 1.

    ``phase_out`` (with ``chunk_taps``): the chunks are phases of a strided
    input gradient and ``y`` is that gradient (N, C, H, W), each chunk's
    outputs written into it in place. A tuple (origin, rows, columns,
    row_stride, column_stride, add, planes): per chunk (intp arrays) the
    offset in an image of y of its phase's output (0, 0) for the chunk's
    first channel, and its phase's rows and columns; the gradient's
    strides (the column stride 1 or 2); ``add``: added to what y holds;
    ``planes``: the shape (N, all chunks' channels, rows, columns) of the
    call's own output, the largest phase's planes, which the geometry
    describes."""
    cdef fc_phase_out phases
    cdef fc_phase_out *phases_ptr = NULL
    cdef const Py_ssize_t[::1] origin, phase_rows, phase_columns
    cdef Py_ssize_t row_stride = 1, spread = 1
    cdef object out_shape = y.shape
    if phase_out is not None:
        (origin, phase_rows, phase_columns, row_stride, spread, add,
         out_shape) = phase_out
    cdef fc_direct_geometry g = _geometry(
        x.shape, out_shape[1], out_shape, groups, geometry, packed.shape[2],
        block_taps, rows, band_rows, row_len, pointwise)
    if clamp is not None:
        g.clamp, g.lo, g.hi = 1, clamp[0], clamp[1]
    cdef const Py_ssize_t[::1] starts
    cdef const Py_ssize_t[::1] per_channel
    cdef const Py_ssize_t *starts_ptr = NULL
    cdef const Py_ssize_t *per_channel_ptr = NULL
    cdef Py_ssize_t chunks = packed.shape[1], k
    if chunk_taps is not None:
        starts, per_channel = chunk_taps, chunk_per_channel
        chunks = per_channel.shape[0]
        if (channel_vectors or groups != 1 or pointwise
                or starts.shape[0] != chunks + 1 or chunks != g.chunks
                or block_channels < 1 or starts[chunks] != packed.shape[2]
                or starts[chunks] > tap_offsets.shape[0]):
            raise ValueError("conv2d_direct: chunk taps do not match")
        for k in range(chunks):
            if (starts[k] < 0 or per_channel[k] < 0
                    or starts[k + 1] - starts[k]
                    != per_channel[k] * g.channels):
                raise ValueError("conv2d_direct: chunk taps do not match")
        starts_ptr = &starts[0]
        per_channel_ptr = &per_channel[0]
    if phase_out is not None:
        if (starts_ptr == NULL or g.clamp or y.shape[0] != x.shape[0]
                or tuple(out_shape)[0] != x.shape[0]):
            raise ValueError("conv2d_direct: phase output does not match")
        _check_phase_out(origin, phase_rows, phase_columns, row_stride,
                         spread, &g, y)
        phases.origin = &origin[0]
        phases.rows = &phase_rows[0]
        phases.columns = &phase_columns[0]
        phases.row_pitch = row_stride * y.shape[3]
        phases.channel_plane = y.shape[2] * y.shape[3]
        phases.spread = spread
        phases.add = bool(add)
        phases_ptr = &phases
    cdef Py_ssize_t row_runs = (g.out_height + rows - 1) // rows
    if pointwise:
        row_runs = ((g.out_height * g.out_width + FC_VL - 1) // FC_VL
                    + rows - 1) // rows
    cdef Py_ssize_t per_run = (chunks + chunk_runs - 1) // chunk_runs
    cdef Py_ssize_t items = x.shape[0] * groups * row_runs * chunk_runs
    cdef Py_ssize_t item, n, group, run, chunk_run
    cdef const float *bias_ptr
    with nogil:
        for item in prange(items, num_threads=num_threads,
                           schedule="guided"):
            chunk_run = item % chunk_runs
            run = (item // chunk_runs) % row_runs
            group = (item // (chunk_runs * row_runs)) % groups
            n = item // (chunk_runs * row_runs * groups)
            bias_ptr = NULL
            if has_bias:
                bias_ptr = &bias[group * g.filters]
            if channel_vectors:
                fc_cv_item(&g, &x[n, group * g.channels, 0, 0],
                           &packed[group, 0, 0, 0], bias_ptr,
                           &tap_offsets[0], channel_vectors, run * rows,
                           chunk_run * per_run, (chunk_run + 1) * per_run,
                           &y[n, group * g.filters, 0, 0],
                           &bands[threadid(), 0], &sums[threadid(), 0])
            else:
                fc_direct_item(&g, &x[n, group * g.channels, 0, 0],
                               &packed[group, 0, 0, 0], bias_ptr,
                               &tap_offsets[0], run * rows,
                               chunk_run * per_run,
                               (chunk_run + 1) * per_run,
                               &y[n, group * g.filters, 0, 0],
                               &bands[threadid(), 0], starts_ptr,
                               per_channel_ptr, block_channels, phases_ptr)


cdef _check_phase_out(const Py_ssize_t[::1] origin,
                      const Py_ssize_t[::1] rows,
                      const Py_ssize_t[::1] columns, Py_ssize_t row_stride,
                      Py_ssize_t spread, const fc_direct_geometry *g,
                      float[:, :, :, ::1] y):
    """ValueError unless every write that conv2d_direct's phase output
    makes stays inside an image of y."""
    cdef Py_ssize_t k, kn, last
    cdef Py_ssize_t image = y.shape[1] * y.shape[2] * y.shape[3]
    if (origin.shape[0] != g.chunks or rows.shape[0] != g.chunks
            or columns.shape[0] != g.chunks or spread not in (1, 2)
            or row_stride < 1):
        raise ValueError("conv2d_direct: phase output does not match")
    for k in range(g.chunks):
        kn = min(FC_KB, g.filters - k * FC_KB)
        if (origin[k] < 0 or not 0 <= rows[k] <= g.out_height
                or not 0 <= columns[k] <= g.out_width):
            raise ValueError("conv2d_direct: phase output does not match")
        if rows[k] == 0 or columns[k] == 0:
            continue
        last = (origin[k] + (rows[k] - 1) * row_stride * y.shape[3]
                + (columns[k] - 1) * spread
                + (kn - 1) * y.shape[2] * y.shape[3])
        if last >= image:
            raise ValueError("conv2d_direct: phase output leaves y")


cdef void _interleave_pair(const float *even, const float *odd,
                           Py_ssize_t even_count, Py_ssize_t odd_count,
                           float *dst, bint accumulate) noexcept nogil:
    """dst[2 j] = even[j], dst[2 j + 1] = odd[j] (even_count is odd_count
    or one more); ``accumulate``: added to dst instead."""
    cdef Py_ssize_t j
    if accumulate:
        for j in range(odd_count):
            dst[2 * j] += even[j]
            dst[2 * j + 1] += odd[j]
        if even_count > odd_count:
            dst[2 * odd_count] += even[odd_count]
        return
    for j in range(odd_count):
        dst[2 * j] = even[j]
        dst[2 * j + 1] = odd[j]
    if even_count > odd_count:
        dst[2 * odd_count] = even[odd_count]


cdef void _interleave(const float **pointers, const Py_ssize_t[:] plane_floats,
                      const Py_ssize_t[:] pitches, const Py_ssize_t[:] widths,
                      Py_ssize_t source_planes, float[:, :, :, ::1] out,
                      Py_ssize_t sh, Py_ssize_t sw, bint accumulate,
                      int num_threads):
    """out[n, c, a::sh, b::sw] = phase k = a * sw + b: row i of its plane
    (n, c) holds widths[k] floats from pointers[k] + (n * source_planes + c)
    * plane_floats[k] + i * pitches[k] (NULL: zeros), in one pass over
    out's rows; ``accumulate``: added to out instead (a NULL phase leaves
    its elements as they are, and rows that no phase reaches are not
    touched)."""
    cdef Py_ssize_t channels = out.shape[1]
    cdef Py_ssize_t planes = out.shape[0] * channels
    cdef Py_ssize_t height = out.shape[2], width = out.shape[3]
    cdef Py_ssize_t row, plane, source, ih, a, b, i, j, k
    cdef const float *src
    cdef float *dst
    with nogil:
        for row in prange(planes * height, num_threads=num_threads,
                          schedule="static"):
            plane = row // height
            source = plane // channels * source_planes + plane % channels
            ih = row % height
            a = ih % sh
            i = ih // sh
            dst = &out[0, 0, 0, 0] + row * width
            if (sw == 2 and pointers[a * 2] != NULL
                    and pointers[a * 2 + 1] != NULL):
                # both column phases at once: one interleaving loop the
                # compiler vectorises (strided stores one phase at a time
                # ran scalar)
                _interleave_pair(
                    pointers[a * 2] + source * plane_floats[a * 2]
                    + i * pitches[a * 2],
                    pointers[a * 2 + 1] + source * plane_floats[a * 2 + 1]
                    + i * pitches[a * 2 + 1],
                    widths[a * 2], widths[a * 2 + 1], dst, accumulate)
                continue
            for b in range(sw):
                k = a * sw + b
                src = pointers[k]
                if src == NULL:
                    if not accumulate:
                        j = b
                        while j < width:
                            dst[j] = 0
                            j = j + sw
                    continue
                src = src + source * plane_floats[k] + i * pitches[k]
                if accumulate:
                    for j in range(widths[k]):
                        dst[b + j * sw] += src[j]
                else:
                    for j in range(widths[k]):
                        dst[b + j * sw] = src[j]


cdef Py_ssize_t _phase_count(Py_ssize_t size, Py_ssize_t stride,
                             Py_ssize_t phase):
    """How many of the indices phase, phase + stride, ... are below size."""
    return (size - phase + stride - 1) // stride if size > phase else 0


cdef void _subsample_row(const float *src, float *dst, Py_ssize_t count,
                         Py_ssize_t step) noexcept nogil:
    """dst[j] = src[j * step] for j < count."""
    cdef Py_ssize_t j
    if step == 2:
        for j in range(count):  # a stride the compiler vectorises
            dst[j] = src[2 * j]
    else:
        for j in range(count):
            dst[j] = src[j * step]


def subsample(const float[:, :, :, ::1] x, float[:, :, :, ::1] out,
              Py_ssize_t sh, Py_ssize_t sw, int num_threads):
    """out = x[:, :, ::sh, ::sw] (out's shape: that view's), one pass over
    out's rows: the input of a 1x1 strided convolution, which then runs as
    a pointwise one."""
    cdef Py_ssize_t planes = out.shape[0] * out.shape[1]
    cdef Py_ssize_t height = out.shape[2], width = out.shape[3]
    if (out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1]
            or height != _phase_count(x.shape[2], sh, 0)
            or width != _phase_count(x.shape[3], sw, 0)):
        raise ValueError("subsample: shapes do not match")
    cdef Py_ssize_t row, plane, i
    cdef Py_ssize_t in_plane = x.shape[2] * x.shape[3], in_width = x.shape[3]
    if planes == 0 or height == 0 or width == 0:
        return
    with nogil:
        for row in prange(planes * height, num_threads=num_threads,
                          schedule="static"):
            plane = row // height
            i = row % height
            _subsample_row(&x[0, 0, 0, 0] + plane * in_plane
                           + i * sh * in_width,
                           &out[0, 0, 0, 0] + row * width, width, sw)


def interleave_phases(list phases, float[:, :, :, ::1] out, Py_ssize_t sh,
                      Py_ssize_t sw, int num_threads, bint accumulate=False):
    """out[:, :, a::sh, b::sw] = phases[a * sw + b] (each (N, C, rows,
    columns) float32, C-contiguous, or None for zeros), in one pass over
    out's rows; ``accumulate``: out[:, :, a::sh, b::sw] += phases[a * sw +
    b] instead, None phases adding nothing."""
    cdef Py_ssize_t count = sh * sw
    if len(phases) != count:
        raise ValueError("interleave_phases needs sh * sw phases")
    cdef vector_pointers sources = vector_pointers(count)
    cdef Py_ssize_t[:] plane_floats = np.zeros(count, np.intp)
    cdef Py_ssize_t[:] widths = np.zeros(count, np.intp)
    cdef float[:, :, :, ::1] phase
    cdef Py_ssize_t p
    for p in range(count):
        if phases[p] is not None:
            phase = phases[p]
            if (phase.shape[0] != out.shape[0]
                    or phase.shape[1] != out.shape[1]
                    or phase.shape[2]
                    != _phase_count(out.shape[2], sh, p // sw)
                    or phase.shape[3]
                    != _phase_count(out.shape[3], sw, p % sw)):
                raise ValueError("interleave_phases: shapes do not match")
            sources.data[p] = &phase[0, 0, 0, 0]
            plane_floats[p] = phase.shape[2] * phase.shape[3]
            widths[p] = phase.shape[3]
    _interleave(sources.data, plane_floats, widths, widths, out.shape[1],
                out, sh, sw, accumulate, num_threads)


def interleave_phase_channels(const float[:, :, :, ::1] phases,
                              float[:, :, :, ::1] out, Py_ssize_t sh,
                              Py_ssize_t sw, const Py_ssize_t[:] row_offsets,
                              const Py_ssize_t[:] column_offsets,
                              int num_threads, bint accumulate=False):
    """out[n, c, a::sh, b::sw] = phases[n, k * C + c, r:, s:] for phase
    k = a * sw + b, r = row_offsets[k], s = column_offsets[k]: the phases
    stacked along the channels of one (N, sh * sw * C, H', W') array (one
    convolution computed them all), each phase's plane a window of it;
    ``accumulate``: added to out instead."""
    cdef Py_ssize_t count = sh * sw, channels = out.shape[1]
    cdef Py_ssize_t p, a, b
    if (phases.shape[0] != out.shape[0]
            or phases.shape[1] != count * channels
            or row_offsets.shape[0] != count
            or column_offsets.shape[0] != count):
        raise ValueError("interleave_phase_channels: shapes do not match")
    for p in range(count):
        a, b = p // sw, p % sw
        if (min(row_offsets[p], column_offsets[p]) < 0
                or row_offsets[p] + _phase_count(out.shape[2], sh, a)
                > phases.shape[2]
                or column_offsets[p] + _phase_count(out.shape[3], sw, b)
                > phases.shape[3]):
            raise ValueError(
                "interleave_phase_channels: a phase's window leaves the "
                "stacked planes")
    cdef vector_pointers sources = vector_pointers(count)
    cdef Py_ssize_t[:] plane_floats = np.full(
        count, phases.shape[2] * phases.shape[3], np.intp)
    cdef Py_ssize_t[:] pitches = np.full(count, phases.shape[3], np.intp)
    cdef Py_ssize_t[:] widths = np.zeros(count, np.intp)
    for p in range(count):
        widths[p] = _phase_count(out.shape[3], sw, p % sw)
        if phases.shape[0] and phases.shape[2] and phases.shape[3]:
            sources.data[p] = (&phases[0, p * channels, 0, 0]
                               + row_offsets[p] * phases.shape[3]
                               + column_offsets[p])
    # phase p's plane (n, c) is plane n * count * C + p * C + c
    _interleave(sources.data, plane_floats, pitches, widths,
                count * channels, out, sh, sw, accumulate, num_threads)
