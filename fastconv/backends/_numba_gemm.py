"""Row-major GEMM on sub-blocks of flat arrays, callable from Numba kernels.

``np.dot`` in Numba wants whole contiguous 2-D arrays, allocates its result
and has no ``beta``. The convolution kernels need more: multiply a block that
starts at an offset inside a flat buffer with a row stride (leading
dimension) of its own, optionally transposed, and accumulate into the
destination (``beta = 1``). BLAS's ``?gemm`` does all of that, so we call it
through ``numba_xxgemm``, the C helper Numba's own ``np.dot`` uses (it
forwards to SciPy's ``scipy.linalg.cython_blas``, the OpenBLAS that
threadpoolctl governs once ``scipy.linalg`` is imported). Being a named C
symbol rather than a ctypes pointer, it keeps the calling kernels cacheable.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba import types
from numba.np.linalg import ensure_blas

from fastconv import config

ensure_blas()

# int numba_xxgemm(char kind, char transa, char transb, intp m, intp n,
#                  intp k, void *alpha, void *a, intp lda, void *b, intp ldb,
#                  void *beta, void *c, intp ldc)
# -- column-major, as Fortran BLAS
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
    types.voidptr, types.voidptr, types.intp))

_NO_TRANSPOSE = np.int8(ord("N"))
_TRANSPOSE = np.int8(ord("T"))
_SINGLE = np.int8(ord("s"))
_DOUBLE = np.int8(ord("d"))


def _resolve_blas_pointers() -> None:
    """Make Numba's helper look up sgemm and dgemm now, on this thread.

    ``numba_xxgemm`` imports the BLAS function pointer lazily, taking the GIL
    to do so; the first call should not happen on a worker thread of a
    parallel region while the main thread holds the GIL.
    """
    from numba import _helperlib

    prototype = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char,
        ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_ssize_t,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p,
        ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t)
    xxgemm = prototype(_helperlib.c_helpers["xxgemm"])
    for kind, dtype in ((b"s", np.float32), (b"d", np.float64)):
        one = np.ones(1, dtype=dtype)
        result = np.zeros(1, dtype=dtype)
        xxgemm(kind, b"N", b"N", 1, 1, 1, one.ctypes.data, one.ctypes.data, 1,
               one.ctypes.data, 1, result.ctypes.data, result.ctypes.data, 1)
        if result[0] != 1:
            raise RuntimeError(f"BLAS {kind.decode()}gemm self-test failed")


_resolve_blas_pointers()


@numba.njit(cache=config.NUMBA_CACHE, nogil=True)
def gemm(rows, cols, inner,
         a, a_offset, a_stride, a_transposed,
         b, b_offset, b_stride, b_transposed,
         c, c_offset, c_stride, accumulate, scalars):
    """``C = op(A) @ op(B) (+ C)`` on row-major blocks inside flat arrays.

    ``C`` is the ``rows x cols`` block of the 1-D array ``c`` starting at
    ``c_offset`` whose rows are ``c_stride`` elements apart; ``op(A)`` is
    ``rows x inner`` and ``op(B)`` is ``inner x cols``. A block stored
    transposed (``a_transposed``: ``A`` stored ``inner x rows``) is read as
    such without a copy. ``accumulate`` adds to ``C`` instead of overwriting.
    ``scalars`` is ``[0, 1]`` in the arrays' dtype (BLAS takes alpha and beta
    by pointer; the caller allocates it once).

    A row-major matrix is the transpose of the same memory read
    column-major, so ``C^T = op(B)^T op(A)^T`` is what BLAS computes.
    """
    kind = _SINGLE if a.itemsize == 4 else _DOUBLE
    trans_a = _TRANSPOSE if a_transposed else _NO_TRANSPOSE
    trans_b = _TRANSPOSE if b_transposed else _NO_TRANSPOSE
    beta = scalars[1:] if accumulate else scalars[:1]
    _xxgemm(kind, trans_b, trans_a, cols, rows, inner, scalars[1:].ctypes,
            b[b_offset:].ctypes, b_stride, a[a_offset:].ctypes, a_stride,
            beta.ctypes, c[c_offset:].ctypes, c_stride)
