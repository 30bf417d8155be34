# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Batch normalisation kernels: per-channel reductions and affine passes.

The arrays are C-contiguous (N, C, L) viewed as N * C rows of L = H * W
elements; row r belongs to channel r % C. A reduction sums each row alone in
double (ROW_LANES partial sums, one fixed order), then adds the N row
results of a channel in order n = 0, 1, ...: the same bits for any thread
count. The affine passes compute in the array's dtype, one row per item.
"""

from cython.parallel cimport prange

ctypedef fused real:
    float
    double

#: Partial sums per row: enough independent additions for the vector units
#: (one dependent add chain would take 4 cycles an element).
DEF ROW_LANES = 16


cdef inline double _finish(double *partial, double tail) noexcept nogil:
    cdef int j
    cdef double total = tail
    for j in range(ROW_LANES):
        total += partial[j]
    return total


cdef double _row_sum(const real *x, Py_ssize_t length,
                     double centre) noexcept nogil:
    """sum(x - centre) over one row."""
    cdef double partial[ROW_LANES]
    cdef double tail = 0
    cdef Py_ssize_t i, j, body = length - length % ROW_LANES
    for j in range(ROW_LANES):
        partial[j] = 0
    for i in range(0, body, ROW_LANES):
        for j in range(ROW_LANES):
            partial[j] += <double>x[i + j] - centre
    for i in range(body, length):
        tail += <double>x[i] - centre
    return _finish(partial, tail)


cdef double _row_squares(const real *x, Py_ssize_t length,
                         double centre) noexcept nogil:
    """sum((x - centre) ** 2) over one row."""
    cdef double partial[ROW_LANES]
    cdef double tail = 0, d
    cdef Py_ssize_t i, j, body = length - length % ROW_LANES
    for j in range(ROW_LANES):
        partial[j] = 0
    for i in range(0, body, ROW_LANES):
        for j in range(ROW_LANES):
            d = <double>x[i + j] - centre
            partial[j] += d * d
    for i in range(body, length):
        d = <double>x[i] - centre
        tail += d * d
    return _finish(partial, tail)


cdef void _row_grad_sums(const real *g, const real *x, Py_ssize_t length,
                         double *grad_sum, double *grad_dot) noexcept nogil:
    """sum(g) and sum(g * x) over one row."""
    cdef double sums[ROW_LANES]
    cdef double dots[ROW_LANES]
    cdef double tail_sum = 0, tail_dot = 0, value
    cdef Py_ssize_t i, j, body = length - length % ROW_LANES
    for j in range(ROW_LANES):
        sums[j] = 0
        dots[j] = 0
    for i in range(0, body, ROW_LANES):
        for j in range(ROW_LANES):
            value = <double>g[i + j]
            sums[j] += value
            dots[j] += value * <double>x[i + j]
    for i in range(body, length):
        value = <double>g[i]
        tail_sum += value
        tail_dot += value * <double>x[i]
    grad_sum[0] = _finish(sums, tail_sum)
    grad_dot[0] = _finish(dots, tail_dot)


cdef void _add_rows(const double *rows, Py_ssize_t batch, Py_ssize_t channels,
                    double *out) noexcept nogil:
    """out[c] = sum over n of rows[n * channels + c], n in order."""
    cdef Py_ssize_t n, c
    for c in range(channels):
        out[c] = 0
    for n in range(batch):
        for c in range(channels):
            out[c] += rows[n * channels + c]


def channel_sums(const real[:, ::1] x, Py_ssize_t channels,
                 double[::1] sums, double[::1] rows, int num_threads):
    """Per-channel sums of x viewed as (N * C, L) rows (a convolution's
    bias gradient; the first pass of ``moments``). ``rows`` is scratch of
    N * C doubles."""
    cdef Py_ssize_t r, count = x.shape[0], length = x.shape[1]
    for r in prange(count, nogil=True, schedule="static",
                    num_threads=num_threads):
        rows[r] = _row_sum(&x[r, 0], length, 0.0)
    _add_rows(&rows[0], count // channels, channels, &sums[0])


def moments(const real[:, ::1] x, Py_ssize_t channels, double[::1] mean,
            double[::1] variance, double[::1] rows, int num_threads):
    """Per-channel mean and biased variance of x viewed as (N * C, L) rows,
    in two passes (the squares of x - mean, exact where the mean dwarfs
    the spread). ``rows`` is scratch of N * C doubles."""
    cdef Py_ssize_t r, c, count = x.shape[0], length = x.shape[1]
    cdef Py_ssize_t batch = count // channels
    cdef double elements = <double>(batch * length)
    channel_sums(x, channels, mean, rows, num_threads)
    for c in range(channels):
        mean[c] = mean[c] / elements
    for r in prange(count, nogil=True, schedule="static",
                    num_threads=num_threads):
        rows[r] = _row_squares(&x[r, 0], length, mean[r % channels])
    _add_rows(&rows[0], batch, channels, &variance[0])
    for c in range(channels):
        variance[c] = variance[c] / elements


def grad_sums(const real[:, ::1] grad_output, const real[:, ::1] x,
              Py_ssize_t channels, double[::1] grad_sum, double[::1] grad_dot,
              double[:, ::1] rows, int num_threads):
    """Per-channel sum(grad_output) and sum(grad_output * x), one pass over
    both. ``rows`` is (2, N * C) doubles of scratch."""
    cdef Py_ssize_t r, count = x.shape[0], length = x.shape[1]
    for r in prange(count, nogil=True, schedule="static",
                    num_threads=num_threads):
        _row_grad_sums(&grad_output[r, 0], &x[r, 0], length, &rows[0, r],
                       &rows[1, r])
    _add_rows(&rows[0, 0], count // channels, channels, &grad_sum[0])
    _add_rows(&rows[1, 0], count // channels, channels, &grad_dot[0])


cdef void _row_affine(const real *x, real *y, Py_ssize_t length, real centre,
                      real scale, real shift) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(length):
        y[i] = (x[i] - centre) * scale + shift


cdef void _row_affine2(const real *a, const real *b, real *y,
                       Py_ssize_t length, real a_scale, real centre,
                       real b_scale, real shift) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(length):
        y[i] = a[i] * a_scale + (b[i] - centre) * b_scale + shift


def affine(const real[:, ::1] x, const real[::1] centre,
           const real[::1] scale, const real[::1] shift, real[:, ::1] y,
           int num_threads):
    """y = (x - centre[c]) * scale[c] + shift[c] on (N * C, L) rows (C =
    len(scale))."""
    cdef Py_ssize_t r, c, count = x.shape[0], length = x.shape[1]
    cdef Py_ssize_t channels = scale.shape[0]
    for r in prange(count, nogil=True, schedule="static",
                    num_threads=num_threads):
        c = r % channels
        _row_affine(&x[r, 0], &y[r, 0], length, centre[c], scale[c],
                    shift[c])


def affine2(const real[:, ::1] a, const real[:, ::1] b,
            const real[::1] a_scale, const real[::1] centre,
            const real[::1] b_scale, const real[::1] shift, real[:, ::1] y,
            int num_threads):
    """y = a * a_scale[c] + (b - centre[c]) * b_scale[c] + shift[c] on
    (N * C, L) rows."""
    cdef Py_ssize_t r, c, count = a.shape[0], length = a.shape[1]
    cdef Py_ssize_t channels = shift.shape[0]
    for r in prange(count, nogil=True, schedule="static",
                    num_threads=num_threads):
        c = r % channels
        _row_affine2(&a[r, 0], &b[r, 0], &y[r, 0], length, a_scale[c],
                     centre[c], b_scale[c], shift[c])
