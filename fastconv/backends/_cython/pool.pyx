# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Max and average pooling kernels, float32/float64, parallel over planes.

Every (image, channel) plane is independent, so OpenMP threads take whole
planes and no two threads ever write the same element (the backward scatters
included). The window of output (oh, ow) covers rows
``oh * stride_h - pad_h + r * dilation_h`` and likewise columns; the part of
each window inside the input is precomputed once per call as index ranges
(``_Taps``), so the inner loops carry no bounds tests.
"""

from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from libc.math cimport INFINITY

ctypedef fused real:
    float
    double


cdef struct Taps:
    # For each output position along one axis: kernel taps [first, stop)
    # land inside the input; the tap t reads input index start + t * dilation.
    Py_ssize_t *start
    Py_ssize_t *first
    Py_ssize_t *stop


cdef int _taps_fill(Taps *taps, Py_ssize_t out_size, Py_ssize_t in_size,
                    Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                    Py_ssize_t dilation) except -1:
    cdef Py_ssize_t o, start, first, stop
    taps.start = <Py_ssize_t *>malloc(3 * out_size * sizeof(Py_ssize_t))
    if taps.start == NULL:
        raise MemoryError()
    taps.first = taps.start + out_size
    taps.stop = taps.first + out_size
    for o in range(out_size):
        start = o * stride - pad
        first = 0
        if start < 0:
            first = (-start + dilation - 1) // dilation
        if start + (kernel - 1) * dilation < in_size:
            stop = kernel
        elif in_size - 1 - start < 0:
            stop = 0
        else:
            stop = (in_size - 1 - start) // dilation + 1
        if stop < first:
            stop = first
        taps.start[o], taps.first[o], taps.stop[o] = start, first, stop
    return 0


cdef class _Window:
    """Both axes' tap ranges for one pooling geometry (freed with it)."""
    cdef Taps rows, cols

    def __cinit__(self, g):
        self.rows.start = NULL
        self.cols.start = NULL
        _taps_fill(&self.rows, g.out_height, g.in_height, g.kernel_height,
                   g.stride_h, g.pad_h, g.dilation_h)
        _taps_fill(&self.cols, g.out_width, g.in_width, g.kernel_width,
                   g.stride_w, g.pad_w, g.dilation_w)

    def __dealloc__(self):
        free(self.rows.start)
        free(self.cols.start)


# ---------------------------------------------------------------- max pool

def max_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                       long long[:, :, :, ::1] indices, g, int num_threads):
    """y, indices = max over each window (PyTorch's NaN and -inf rules).

    A NaN always wins and a later NaN replaces an earlier one; a window of
    -inf keeps its first in-bounds element; a window wholly in the padding
    gives -inf and index -1 (the validated geometry never makes one).
    """
    cdef _Window window = _Window(g)
    cdef Taps rows = window.rows, cols = window.cols
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t in_h = x.shape[2], in_w = x.shape[3]
    cdef Py_ssize_t out_h = y.shape[2], out_w = y.shape[3]
    cdef Py_ssize_t dil_h = g.dilation_h, dil_w = g.dilation_w
    cdef const real *x_base = &x[0, 0, 0, 0]
    cdef real *y_base = &y[0, 0, 0, 0]
    cdef long long *idx_base = &indices[0, 0, 0, 0]
    cdef Py_ssize_t plane, oh, ow, r, s, ih, position, best_position
    cdef Py_ssize_t row_first, row_stop, col_first, col_stop, col_start
    cdef const real *x_plane
    cdef real value, best
    cdef bint take
    for plane in prange(planes, nogil=True, schedule="static",
                        num_threads=num_threads):
        x_plane = x_base + plane * in_h * in_w
        for oh in range(out_h):
            row_first, row_stop = rows.first[oh], rows.stop[oh]
            for ow in range(out_w):
                col_first, col_stop = cols.first[ow], cols.stop[ow]
                col_start = cols.start[ow]
                best = -INFINITY
                best_position = -1
                if row_first < row_stop and col_first < col_stop:
                    # start from the first in-bounds tap, as the reference
                    ih = rows.start[oh] + row_first * dil_h
                    best_position = ih * in_w + col_start + col_first * dil_w
                    best = x_plane[best_position]
                    for r in range(row_first, row_stop):
                        ih = rows.start[oh] + r * dil_h
                        for s in range(col_first, col_stop):
                            position = ih * in_w + col_start + s * dil_w
                            value = x_plane[position]
                            # select, not branch: the comparison is random
                            take = (value > best) | (value != value)
                            best = value if take else best
                            best_position = position if take else best_position
                y_base[(plane * out_h + oh) * out_w + ow] = best
                idx_base[(plane * out_h + oh) * out_w + ow] = best_position


def max_pool2d_backward(const real[:, :, :, ::1] grad_output,
                        const long long[:, :, :, ::1] indices,
                        real[:, :, :, ::1] grad_input, int num_threads):
    """grad_input = scatter-add of grad_output at indices (zeroed here)."""
    cdef Py_ssize_t planes = grad_input.shape[0] * grad_input.shape[1]
    cdef Py_ssize_t in_plane = grad_input.shape[2] * grad_input.shape[3]
    cdef Py_ssize_t out_plane = grad_output.shape[2] * grad_output.shape[3]
    cdef const real *grad_base = &grad_output[0, 0, 0, 0]
    cdef const long long *idx_base = &indices[0, 0, 0, 0]
    cdef real *grad_input_base = &grad_input[0, 0, 0, 0]
    cdef Py_ssize_t plane, p
    cdef real *target
    cdef const real *grad
    cdef const long long *idx
    for plane in prange(planes, nogil=True, schedule="static",
                        num_threads=num_threads):
        target = grad_input_base + plane * in_plane
        grad = grad_base + plane * out_plane
        idx = idx_base + plane * out_plane
        memset(target, 0, in_plane * sizeof(real))
        for p in range(out_plane):
            target[idx[p]] += grad[p]


# ---------------------------------------------------------------- avg pool

def avg_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                       const double[:, ::1] divisors, g, int num_threads):
    """y = (sum of each window's in-bounds elements) / divisors[oh, ow].

    Sums are accumulated in float64, as the reference does.
    """
    cdef _Window window = _Window(g)
    cdef Taps rows = window.rows, cols = window.cols
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t in_h = x.shape[2], in_w = x.shape[3]
    cdef Py_ssize_t out_h = y.shape[2], out_w = y.shape[3]
    cdef const real *x_base = &x[0, 0, 0, 0]
    cdef real *y_base = &y[0, 0, 0, 0]
    cdef const double *div_base = &divisors[0, 0]
    cdef Py_ssize_t plane, oh, ow, r, s, col_start
    cdef Py_ssize_t row_first, row_stop, col_first, col_stop
    cdef const real *x_row
    cdef double total
    for plane in prange(planes, nogil=True, schedule="static",
                        num_threads=num_threads):
        for oh in range(out_h):
            row_first, row_stop = rows.first[oh], rows.stop[oh]
            for ow in range(out_w):
                col_first, col_stop = cols.first[ow], cols.stop[ow]
                col_start = cols.start[ow]
                total = 0
                for r in range(row_first, row_stop):
                    x_row = x_base + (plane * in_h + rows.start[oh] + r) * in_w
                    for s in range(col_first, col_stop):
                        total = total + x_row[col_start + s]
                y_base[(plane * out_h + oh) * out_w + ow] = <real>(
                    total / div_base[oh * out_w + ow])


def avg_pool2d_backward(const real[:, :, :, ::1] grad_output,
                        real[:, :, :, ::1] grad_input,
                        const double[:, ::1] divisors, g, int num_threads):
    """grad_input = each grad_output / divisor spread over its window's
    in-bounds elements (zeroed here; overlapping windows add up)."""
    cdef _Window window = _Window(g)
    cdef Taps rows = window.rows, cols = window.cols
    cdef Py_ssize_t planes = grad_input.shape[0] * grad_input.shape[1]
    cdef Py_ssize_t in_h = grad_input.shape[2], in_w = grad_input.shape[3]
    cdef Py_ssize_t out_h = grad_output.shape[2], out_w = grad_output.shape[3]
    cdef const real *grad_base = &grad_output[0, 0, 0, 0]
    cdef real *target_base = &grad_input[0, 0, 0, 0]
    cdef const double *div_base = &divisors[0, 0]
    cdef Py_ssize_t plane, oh, ow, r, s, col_start
    cdef Py_ssize_t row_first, row_stop, col_first, col_stop
    cdef real *target_row
    cdef real share
    for plane in prange(planes, nogil=True, schedule="static",
                        num_threads=num_threads):
        memset(target_base + plane * in_h * in_w, 0,
               in_h * in_w * sizeof(real))
        for oh in range(out_h):
            row_first, row_stop = rows.first[oh], rows.stop[oh]
            for ow in range(out_w):
                col_first, col_stop = cols.first[ow], cols.stop[ow]
                col_start = cols.start[ow]
                share = <real>(grad_base[(plane * out_h + oh) * out_w + ow]
                               / div_base[oh * out_w + ow])
                for r in range(row_first, row_stop):
                    target_row = target_base + (
                        plane * in_h + rows.start[oh] + r) * in_w
                    for s in range(col_first, col_stop):
                        target_row[col_start + s] += share
