# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""ReLU forward (of x, or of x + a residual) and backward, and an in-place
add, on flat arrays, one block of elements per item.

Forward keeps NaN (as ``numpy.maximum``); backward gives 0 where the
forward's output is <= 0 and passes the gradient elsewhere, NaN outputs
included (as PyTorch's threshold_backward); a select, so that a NaN
gradient on a clipped element is 0.
"""

from cython.parallel cimport prange

ctypedef fused real:
    float
    double

#: Elements per work item.
DEF BLOCK = 8192


cdef void _relu_block(const real *x, real *y, Py_ssize_t start,
                      Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, stop):
        y[i] = <real>0 if x[i] < 0 else x[i]


cdef void _add_relu_block(const real *x, const real *r, real *y,
                          Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i
    cdef real value
    for i in range(start, stop):
        value = x[i] + r[i]
        y[i] = <real>0 if value < 0 else value


cdef void _add_block(real *y, const real *x, Py_ssize_t start,
                     Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, stop):
        y[i] += x[i]


cdef void _relu_grad_block(const real *g, const real *y, real *out,
                           Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, stop):
        out[i] = <real>0 if y[i] <= 0 else g[i]


def relu(const real[::1] x, real[::1] y, int num_threads):
    """y = x where x >= 0 or NaN, else 0."""
    cdef Py_ssize_t block, size = x.shape[0]
    cdef Py_ssize_t blocks = (size + BLOCK - 1) // BLOCK
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        _relu_block(&x[0], &y[0], block * BLOCK,
                    min(size, (block + 1) * BLOCK))


def add_relu(const real[::1] x, const real[::1] residual, real[::1] y,
             int num_threads):
    """y = relu(x + residual), the sum rounded once (as numpy's add then
    maximum); y may be x or residual."""
    cdef Py_ssize_t block, size = x.shape[0]
    cdef Py_ssize_t blocks = (size + BLOCK - 1) // BLOCK
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        _add_relu_block(&x[0], &residual[0], &y[0], block * BLOCK,
                        min(size, (block + 1) * BLOCK))


def add_into(real[::1] y, const real[::1] x, int num_threads):
    """y += x, elementwise."""
    cdef Py_ssize_t block, size = y.shape[0]
    cdef Py_ssize_t blocks = (size + BLOCK - 1) // BLOCK
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        _add_block(&y[0], &x[0], block * BLOCK,
                   min(size, (block + 1) * BLOCK))


def relu_backward(const real[::1] grad_output, const real[::1] y,
                  real[::1] grad_input, int num_threads):
    """grad_input = 0 where y <= 0, else grad_output."""
    cdef Py_ssize_t block, size = y.shape[0]
    cdef Py_ssize_t blocks = (size + BLOCK - 1) // BLOCK
    for block in prange(blocks, nogil=True, schedule="static",
                        num_threads=num_threads):
        _relu_grad_block(&grad_output[0], &y[0], &grad_input[0],
                         block * BLOCK, min(size, (block + 1) * BLOCK))
