# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Batch normalisation kernels: per-channel reductions and affine passes.

The arrays are C-contiguous (N, C, L) viewed as N * C rows of L = H * W
elements; row r belongs to channel r % C. A reduction sums each row alone in
double (``normalization.h``: vector partial sums in one fixed order), then
adds the N row results of a channel in order n = 0, 1, ...: the same bits
for any thread count. The affine passes compute in the array's dtype, one row per item.
"""

from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt

ctypedef fused real:
    float
    double

cdef extern from "normalization.h" nogil:
    double fcn_row_sum_float(const float *x, Py_ssize_t n, double centre)
    double fcn_row_sum_double(const double *x, Py_ssize_t n, double centre)
    double fcn_row_squares_float(const float *x, Py_ssize_t n, double centre)
    double fcn_row_squares_double(const double *x, Py_ssize_t n,
                                  double centre)
    void fcn_row_moments_float(const float *x, Py_ssize_t n, double centre,
                               double *sum, double *squares)
    void fcn_row_moments_double(const double *x, Py_ssize_t n, double centre,
                                double *sum, double *squares)
    void fcn_row_grad_sums_float(const float *g, const float *x,
                                 Py_ssize_t n, double *grad_sum,
                                 double *grad_dot)
    void fcn_row_grad_sums_double(const double *g, const double *x,
                                  Py_ssize_t n, double *grad_sum,
                                  double *grad_dot)


cdef inline double _row_sum(const real *x, Py_ssize_t length,
                            double centre) noexcept nogil:
    """sum(x - centre) over one row (normalization.h: its fixed order)."""
    if real is float:
        return fcn_row_sum_float(x, length, centre)
    else:
        return fcn_row_sum_double(x, length, centre)


cdef inline double _row_squares(const real *x, Py_ssize_t length,
                                double centre) noexcept nogil:
    """sum((x - centre) ** 2) over one row."""
    if real is float:
        return fcn_row_squares_float(x, length, centre)
    else:
        return fcn_row_squares_double(x, length, centre)


cdef inline void _row_moments(const real *x, Py_ssize_t length, double centre,
                              double *sum, double *squares) noexcept nogil:
    """sum(x - centre) and sum((x - centre) ** 2) over one row, in one
    pass."""
    if real is float:
        fcn_row_moments_float(x, length, centre, sum, squares)
    else:
        fcn_row_moments_double(x, length, centre, sum, squares)


cdef inline void _row_grad_sums(const real *g, const real *x,
                                Py_ssize_t length, double *grad_sum,
                                double *grad_dot) noexcept nogil:
    """sum(g) and sum(g * x) over one row."""
    if real is float:
        fcn_row_grad_sums_float(g, x, length, grad_sum, grad_dot)
    else:
        fcn_row_grad_sums_double(g, x, length, grad_sum, grad_dot)


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


cdef void _row_affine_relu(const real *x, real *y, Py_ssize_t length,
                           real centre, real scale, real shift) noexcept nogil:
    """_row_affine, then ReLU as relu_forward has it (NaN stays NaN)."""
    cdef Py_ssize_t i
    cdef real value
    for i in range(length):
        value = (x[i] - centre) * scale + shift
        y[i] = 0 if value < 0 else value


cdef void _row_relu_grad(const real *g, const real *x, real *out,
                         Py_ssize_t length, real centre, real scale,
                         real shift) noexcept nogil:
    """out = g where the forward's _row_affine_relu output is positive (or
    NaN), else 0, as relu_backward has it: the output recomputed from x by
    the same expression, not read back. out may be g."""
    cdef Py_ssize_t i
    cdef real value
    for i in range(length):
        value = (x[i] - centre) * scale + shift
        out[i] = 0 if value <= 0 else g[i]


cdef inline void _row_normalise(const real *x, real *y, Py_ssize_t length,
                                real centre, real scale, real shift,
                                bint relu) noexcept nogil:
    """The forward's pass over one row: _row_affine, or with relu
    _row_affine_relu."""
    if relu:
        _row_affine_relu(x, y, length, centre, scale, shift)
    else:
        _row_affine(x, y, length, centre, scale, shift)


cdef void _row_affine2(const real *a, const real *b, real *y,
                       Py_ssize_t length, real a_scale, real centre,
                       real b_scale, real shift) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(length):
        y[i] = a[i] * a_scale + (b[i] - centre) * b_scale + shift


cdef inline double _inverse_std(double variance, double eps) noexcept nogil:
    return 1.0 / sqrt(variance + eps)


# The per-channel factors, as fastconv.backends._normalization forms them
# (weight or bias of length 0: 1 or 0).

cdef inline double _scale(const double[::1] variance,
                          const double[::1] weight, Py_ssize_t c,
                          double eps) noexcept nogil:
    """weight[c] / sqrt(variance[c] + eps)."""
    cdef double scale = _inverse_std(variance[c], eps)
    if weight.shape[0] > 0:
        scale = scale * weight[c]
    return scale


cdef inline double _shift(const double[::1] bias, Py_ssize_t c) noexcept nogil:
    return bias[c] if bias.shape[0] > 0 else 0


cdef inline void _grad_factors(double grad_sum, double grad_dot,
                               const double[::1] mean,
                               const double[::1] variance,
                               const double[::1] weight, Py_ssize_t c,
                               double eps, double count,
                               bint batch_statistics, double *normalised,
                               double *scale, double *x_scale,
                               double *shift) noexcept nogil:
    """grad_weight[c] (the sum of grad times normalised x) and the factors
    of grad_input = grad * scale + (x - mean) * x_scale + shift."""
    cdef double inv_std = _inverse_std(variance[c], eps)
    normalised[0] = (grad_dot - mean[c] * grad_sum) * inv_std
    scale[0] = _scale(variance, weight, c, eps)
    x_scale[0] = 0
    shift[0] = 0
    if batch_statistics:
        x_scale[0] = -scale[0] * inv_std * normalised[0] / count
        shift[0] = -scale[0] * grad_sum / count


def forward(const real[:, :, ::1] x, double[::1] mean, double[::1] variance,
            const double[::1] weight, const double[::1] bias, double eps,
            bint given, real[:, :, ::1] y, bint relu, int num_threads):
    """y = (x - mean) * weight / sqrt(variance + eps) + bias per channel of
    x (N, C, L), the factors formed in double; ``weight`` or ``bias`` of
    length 0: 1 or 0. ``given`` False: the statistics are x's own, written
    into mean and variance first (two passes over the channel, then the
    third while its rows are still in cache). ``relu``: y = relu(that), in
    the same pass. One channel per work item."""
    cdef Py_ssize_t c, n, batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t length = x.shape[2]
    cdef double count = <double>(batch * length), total, m, scale, shift
    for c in prange(channels, nogil=True, schedule="static",
                    num_threads=num_threads):
        if not given:
            total = 0
            for n in range(batch):
                total = total + _row_sum(&x[n, c, 0], length, 0.0)
            m = total / count
            total = 0
            for n in range(batch):
                total = total + _row_squares(&x[n, c, 0], length, m)
            mean[c] = m
            variance[c] = total / count
        m = mean[c]
        scale = _scale(variance, weight, c, eps)
        shift = _shift(bias, c)
        for n in range(batch):
            _row_normalise(&x[n, c, 0], &y[n, c, 0], length, <real>m,
                           <real>scale, <real>shift, relu)


def backward(const real[:, :, ::1] grad_output, const real[:, :, ::1] x,
             const double[::1] mean, const double[::1] variance,
             const double[::1] weight, const double[::1] bias, double eps,
             bint batch_statistics, real[:, :, ::1] grad_input,
             double[::1] grad_weight, double[::1] grad_bias, bint relu,
             int num_threads):
    """The gradients of ``forward`` per channel (one work item each): the
    sums of grad_output and grad_output * x, then (while the channel's rows
    are in cache) grad_input; the factors as ``fastconv.backends.
    _normalization`` forms them. ``batch_statistics``: mean and variance
    were x's own, so the gradient flows through them too. ``relu``: the
    gradients of ``forward`` with relu (``bias`` as there): grad_output
    masked as relu_backward does, into grad_input, which the second pass
    then reads and overwrites."""
    cdef Py_ssize_t c, n, batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t length = x.shape[2]
    cdef double count = <double>(batch * length)
    cdef double row_sum, row_dot, grad_sum, grad_dot, scale
    cdef double normalised, x_scale, shift, relu_scale, relu_shift
    cdef const real *grad
    for c in prange(channels, nogil=True, schedule="static",
                    num_threads=num_threads):
        grad_sum = 0
        grad_dot = 0
        # assigned here so that the region gives each thread its own copy
        # (a variable only passed by address would be shared)
        row_sum = 0
        row_dot = 0
        # the forward's factors, for the ReLU's mask
        relu_scale = _scale(variance, weight, c, eps)
        relu_shift = _shift(bias, c)
        for n in range(batch):
            grad = &grad_output[n, c, 0]
            if relu:
                _row_relu_grad(grad, &x[n, c, 0], &grad_input[n, c, 0],
                               length, <real>mean[c], <real>relu_scale,
                               <real>relu_shift)
                grad = &grad_input[n, c, 0]
            _row_grad_sums(grad, &x[n, c, 0], length, &row_sum, &row_dot)
            grad_sum = grad_sum + row_sum
            grad_dot = grad_dot + row_dot
        # assigned for the same reason
        normalised = 0
        scale = 0
        x_scale = 0
        shift = 0
        _grad_factors(grad_sum, grad_dot, mean, variance, weight, c, eps,
                      count, batch_statistics, &normalised, &scale, &x_scale,
                      &shift)
        grad_weight[c] = normalised
        grad_bias[c] = grad_sum
        for n in range(batch):
            grad = &grad_input[n, c, 0] if relu else &grad_output[n, c, 0]
            if batch_statistics:
                _row_affine2(grad, &x[n, c, 0], &grad_input[n, c, 0], length,
                             <real>scale, <real>mean[c], <real>x_scale,
                             <real>shift)
            else:  # no x term: x_scale is 0, and 0 * inf is NaN
                _row_affine(grad, &grad_input[n, c, 0], length, 0,
                            <real>scale, 0)


cdef inline Py_ssize_t _run_start(Py_ssize_t run, Py_ssize_t runs,
                                  Py_ssize_t batch) noexcept nogil:
    return run * batch // runs


cdef void _add_runs(const double[:, ::1] partial, double *out,
                    double scale) noexcept nogil:
    """out[c] = scale * (sum over runs r, in order, of partial[r, c])."""
    cdef Py_ssize_t r, c
    for c in range(partial.shape[1]):
        out[c] = 0
    for r in range(partial.shape[0]):
        for c in range(partial.shape[1]):
            out[c] += partial[r, c]
    for c in range(partial.shape[1]):
        out[c] *= scale


def moments_by_images(const real[:, :, ::1] x, double[::1] mean,
                      double[::1] variance, double[:, ::1] partial,
                      int num_threads):
    """``moments`` with runs of whole images as work items (``partial``:
    (2 * runs, C) scratch, the runs fixed by the caller, not by the thread
    count): each run's sums per channel, then the runs' in order.

    One pass, where ``moments`` takes two: the sums of d = x - centre and
    of d ** 2 for a centre that is one of the channel's own values (its
    first), var = mean(d ** 2) - mean(d) ** 2 in double. As the centre is
    a sample, (mean - centre) ** 2 is at most count * var, so the
    subtraction loses at most a factor count of double's precision
    (6.6e4 * 1.1e-16 for a batch of 64 x 32 x 32) and nothing of float's.
    A channel whose first value is not finite is summed about 0 instead:
    its mean is then the two-pass mean (the same sums), its variance NaN as
    there."""
    cdef Py_ssize_t run, c, n, batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t length = x.shape[2], runs = partial.shape[0] // 2
    cdef double count = <double>(batch * length), total, squares
    cdef double row_sum, row_squares, centre
    for c in range(channels):
        # the centres, kept in variance until the sums are in
        variance[c] = 0
        if batch and length and isfinite(<double>x[0, c, 0]):
            variance[c] = x[0, c, 0]
    for run in prange(runs, nogil=True, schedule="static",
                      num_threads=num_threads):
        for c in range(channels):
            total = 0
            squares = 0
            centre = variance[c]
            for n in range(_run_start(run, runs, batch),
                           _run_start(run + 1, runs, batch)):
                # assigned here so that each thread has its own copy
                row_sum = 0
                row_squares = 0
                _row_moments(&x[n, c, 0], length, centre, &row_sum,
                             &row_squares)
                total = total + row_sum
                squares = squares + row_squares
            partial[run, c] = total
            partial[runs + run, c] = squares
    _add_runs(partial[:runs], &mean[0], 1.0 / count)
    for c in range(channels):
        # mean holds mean(d) here, variance the centre
        centre = variance[c]
        variance[c] = 0
        for run in range(runs):
            variance[c] += partial[runs + run, c]
        variance[c] = variance[c] / count - mean[c] * mean[c]
        if variance[c] < 0:
            variance[c] = 0  # rounding: a constant channel
        mean[c] = centre + mean[c]


def forward_by_images(const real[:, :, ::1] x, double[::1] mean,
                      double[::1] variance, const double[::1] weight,
                      const double[::1] bias, double eps, bint given,
                      real[:, :, ::1] y, double[:, ::1] partial,
                      double[:, ::1] factors, bint relu, int num_threads):
    """``forward`` with runs of whole images as work items (the statistics
    as ``moments_by_images``; ``factors``: (2, C) scratch): each thread
    reads and writes the images a convolution's items wrote on its core,
    in all three passes."""
    cdef Py_ssize_t run, c, n, batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t length = x.shape[2], runs = partial.shape[0]
    if not given:
        moments_by_images(x, mean, variance, partial, num_threads)
    for c in range(channels):
        factors[0, c] = _scale(variance, weight, c, eps)
        factors[1, c] = _shift(bias, c)
    for run in prange(runs, nogil=True, schedule="static",
                      num_threads=num_threads):
        for n in range(_run_start(run, runs, batch),
                       _run_start(run + 1, runs, batch)):
            for c in range(channels):
                _row_normalise(&x[n, c, 0], &y[n, c, 0], length,
                               <real>mean[c], <real>factors[0, c],
                               <real>factors[1, c], relu)


def backward_by_images(const real[:, :, ::1] grad_output,
                       const real[:, :, ::1] x, const double[::1] mean,
                       const double[::1] variance, const double[::1] weight,
                       const double[::1] bias, double eps,
                       bint batch_statistics, real[:, :, ::1] grad_input,
                       double[::1] grad_weight, double[::1] grad_bias,
                       double[:, ::1] partial, double[:, ::1] factors,
                       bint relu, int num_threads):
    """``backward`` with runs of whole images as work items, as
    ``forward_by_images`` (``partial``: (2 * runs, C): the runs' sums of
    grad_output, then of grad_output * x; ``factors``: (5, C), the last
    two rows the forward's scale and shift for ``relu``)."""
    cdef Py_ssize_t run, c, n, batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t length = x.shape[2], runs = partial.shape[0] // 2
    cdef double count = <double>(batch * length)
    cdef double row_sum, row_dot
    cdef const real *grad
    for c in range(channels):
        factors[3, c] = _scale(variance, weight, c, eps)
        factors[4, c] = _shift(bias, c)
    for run in prange(runs, nogil=True, schedule="static",
                      num_threads=num_threads):
        for c in range(channels):
            partial[run, c] = 0
            partial[runs + run, c] = 0
        for n in range(_run_start(run, runs, batch),
                       _run_start(run + 1, runs, batch)):
            for c in range(channels):
                # assigned here so that each thread has its own copy
                row_sum = 0
                row_dot = 0
                grad = &grad_output[n, c, 0]
                if relu:
                    _row_relu_grad(grad, &x[n, c, 0], &grad_input[n, c, 0],
                                   length, <real>mean[c],
                                   <real>factors[3, c], <real>factors[4, c])
                    grad = &grad_input[n, c, 0]
                _row_grad_sums(grad, &x[n, c, 0], length, &row_sum, &row_dot)
                partial[run, c] += row_sum
                partial[runs + run, c] += row_dot
    _add_runs(partial[:runs], &grad_bias[0], 1.0)
    _add_runs(partial[runs:], &grad_weight[0], 1.0)
    for c in range(channels):
        # grad_weight holds the sums of grad * x until here
        _grad_factors(grad_bias[c], grad_weight[c], mean, variance, weight, c,
                      eps, count, batch_statistics, &grad_weight[c],
                      &factors[0, c], &factors[1, c], &factors[2, c])
    for run in prange(runs, nogil=True, schedule="static",
                      num_threads=num_threads):
        for n in range(_run_start(run, runs, batch),
                       _run_start(run + 1, runs, batch)):
            for c in range(channels):
                grad = (&grad_input[n, c, 0] if relu
                        else &grad_output[n, c, 0])
                if batch_statistics:
                    _row_affine2(grad, &x[n, c, 0], &grad_input[n, c, 0],
                                 length, <real>factors[0, c], <real>mean[c],
                                 <real>factors[1, c], <real>factors[2, c])
                else:
                    _row_affine(grad, &grad_input[n, c, 0], length, 0,
                                <real>factors[0, c], 0)
