# Included by the kernels that call BLAS (conv.pyx, winograd.pyx): each
# extension module fetches SciPy's single-precision and double-precision
# gemm from ``scipy.linalg.cython_blas`` at import, so that building needs
# no SciPy headers. Needs ``real`` (the float/double fused type) defined.

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer


ctypedef void (*sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                          float *alpha, float *a, int *lda, float *b, int *ldb,
                          float *beta, float *c, int *ldc) noexcept nogil
ctypedef void (*dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                          double *alpha, double *a, int *lda, double *b,
                          int *ldb, double *beta, double *c,
                          int *ldc) noexcept nogil

cdef sgemm_fn _sgemm = NULL
cdef dgemm_fn _dgemm = NULL


cdef void *_capsule_pointer(object capsule) except NULL:
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


def _load_blas():
    global _sgemm, _dgemm
    from fastconv import _scipy_blas  # without all of scipy.linalg's import

    exported = _scipy_blas.load().__pyx_capi__
    _sgemm = <sgemm_fn>_capsule_pointer(exported["sgemm"])
    _dgemm = <dgemm_fn>_capsule_pointer(exported["dgemm"])


_load_blas()


cdef inline void gemm_row_major(char trans_a, char trans_b, int m, int n,
                                int k, real alpha, const real *a, int lda,
                                const real *b, int ldb, real beta, real *c,
                                int ldc) noexcept nogil:
    """C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major.

    BLAS is column-major, where a row-major matrix reads as its transpose, so
    this asks BLAS for C^T = op(B)^T @ op(A)^T: operands swapped, m and n
    swapped, transposition flags unchanged.
    """
    if real is float:
        _sgemm(&trans_b, &trans_a, &n, &m, &k, &alpha, <float *>b, &ldb,
               <float *>a, &lda, &beta, c, &ldc)
    else:
        _dgemm(&trans_b, &trans_a, &n, &m, &k, &alpha, <double *>b, &ldb,
               <double *>a, &lda, &beta, c, &ldc)
