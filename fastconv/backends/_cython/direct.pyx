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


cdef extern from "direct_conv.h" nogil:
    const int FC_DIRECT_AVAILABLE
    const int FC_VL
    const int FC_KB
    const int FC_VMAX

    ctypedef struct fc_direct_geometry:
        Py_ssize_t channels, in_height, in_width
        Py_ssize_t filters, chunks, out_height, out_width
        Py_ssize_t stride_h, stride_w, pad_top, pad_left, dilation_h
        Py_ssize_t taps, block_taps, rows, band_rows, row_len
        int pointwise

    void fc_direct_item(const fc_direct_geometry *g, const float *image,
                        const float *weights, const float *bias,
                        const Py_ssize_t *tap_offsets, Py_ssize_t oh0,
                        float *out, float *band)


def parameters():
    """(available, vector lanes, output channels per tile, vectors per
    tile) as compiled for this CPU; ``available`` is False where the C
    compiler has no vector extensions."""
    return bool(FC_DIRECT_AVAILABLE), FC_VL, FC_KB, FC_VMAX


def conv2d_direct(const float[:, :, :, ::1] x, const float[:, :, :, ::1] packed,
                  const float[::1] bias, bint has_bias,
                  float[:, :, :, ::1] y, float[:, ::1] bands,
                  const Py_ssize_t[::1] tap_offsets, object geometry,
                  Py_ssize_t groups, Py_ssize_t rows, Py_ssize_t band_rows,
                  Py_ssize_t row_len, bint pointwise, Py_ssize_t block_taps,
                  int num_threads):
    """y = conv2d(x, weights) (+ bias) from the packed weights
    (groups, chunks, taps, FC_KB); ``bands``: one (band) row per thread;
    ``pointwise``: the 1x1 mode without bands, where ``rows`` counts
    vectors of the flattened plane; ``block_taps``: taps per channel block
    (a multiple of R * S)."""
    cdef fc_direct_geometry g
    g.channels = x.shape[1] // groups
    g.in_height, g.in_width = x.shape[2], x.shape[3]
    g.filters = y.shape[1] // groups
    g.chunks = packed.shape[1]
    g.out_height, g.out_width = y.shape[2], y.shape[3]
    g.stride_h, g.stride_w = geometry.stride_h, geometry.stride_w
    g.pad_top, g.pad_left = geometry.pad_top, geometry.pad_left
    g.dilation_h = geometry.dilation_h
    g.taps = packed.shape[2]
    g.block_taps = block_taps
    g.rows, g.band_rows, g.row_len = rows, band_rows, row_len
    g.pointwise = pointwise
    cdef Py_ssize_t row_runs = (g.out_height + rows - 1) // rows
    if pointwise:
        row_runs = ((g.out_height * g.out_width + FC_VL - 1) // FC_VL
                    + rows - 1) // rows
    cdef Py_ssize_t items = x.shape[0] * groups * row_runs
    cdef Py_ssize_t item, n, group, run
    cdef const float *bias_ptr
    with nogil:
        for item in prange(items, num_threads=num_threads,
                           schedule="guided"):
            run = item % row_runs
            group = (item // row_runs) % groups
            n = item // (row_runs * groups)
            bias_ptr = NULL
            if has_bias:
                bias_ptr = &bias[group * g.filters]
            fc_direct_item(&g, &x[n, group * g.channels, 0, 0],
                           &packed[group, 0, 0, 0], bias_ptr,
                           &tap_offsets[0], run * rows,
                           &y[n, group * g.filters, 0, 0],
                           &bands[threadid(), 0])
