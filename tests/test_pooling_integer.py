"""max_pool2d on integer inputs (uint8, int8, int16, int32, int64).

y keeps the input's dtype, padding counts as the dtype's minimum, ties go to
the first maximum in row-major order and indices are int64 flat H*W
positions, as PyTorch's CPU max_pool2d does; each backend is compared with
the naive reference exactly and the reference with PyTorch. The backward
pass stays float (it takes the indices of an integer pooling as any other).
Each integer dtype compiles its own Numba kernel (about 4 s each, cold), so
every dtype's cases run in one test.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

INTEGER_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64]
DTYPE_IDS = [np.dtype(dtype).name for dtype in INTEGER_DTYPES]

# (x shape, keyword arguments): the unrolled 2x2 and 3x3 paths (strides 1
# and 2, with and without padding), the generic ones (rectangular, dilated,
# stride 3, ceil_mode)
INTEGER_POOLS = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((2, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 8), dict(kernel_size=3, stride=1, padding=1)),
    ((1, 2, 7, 7), dict(kernel_size=2, stride=1, padding=1)),
    ((1, 2, 8, 9), dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1),
                        ceil_mode=True)),
    ((2, 1, 9, 8), dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)),
    ((1, 1, 5, 7), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1))),
]

# value kinds: the dtype's whole range; a few values (most windows tie);
# the dtype's minimum everywhere but a few cells (padded windows whose
# maximum is the minimum report their first in-bounds cell)
KINDS = ["full_range", "ties", "mostly_minimum"]


def integer_input(shape, dtype, kind, seed):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    if kind == "full_range":
        return rng.integers(info.min, info.max, size=shape, endpoint=True,
                            dtype=dtype)
    if kind == "ties":
        return (rng.integers(0, 3, size=shape) + max(info.min, -1)).astype(
            dtype)
    x = np.full(shape, info.min, dtype=dtype)
    x[rng.random(shape) < 0.1] = info.max
    return x


def _cases(dtype):
    for pool, (shape, kwargs) in enumerate(INTEGER_POOLS):
        for kind in KINDS:
            yield (pool, kind), integer_input(shape, dtype, kind,
                                              (pool, KINDS.index(kind))), kwargs


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=DTYPE_IDS)
def test_integer_max_pool_matches_naive(dtype, backend, naive_cache):
    for case, x, kwargs in _cases(dtype):
        original = x.copy()
        y_ref, indices_ref = naive_cache(
            ("integer max_pool2d", np.dtype(dtype).name, case),
            lambda: fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                        backend="naive"))
        y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                         backend=backend)
        assert y.dtype == dtype and indices.dtype == np.int64, case
        np.testing.assert_array_equal(y, y_ref, err_msg=str(case))
        np.testing.assert_array_equal(indices, indices_ref, err_msg=str(case))
        np.testing.assert_array_equal(
            fastconv.max_pool2d(x, **kwargs, backend=backend), y_ref)
        np.testing.assert_array_equal(x, original)  # input untouched


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=DTYPE_IDS)
def test_naive_integer_max_pool_matches_torch(dtype, torch):
    for case, x, kwargs in _cases(dtype):
        y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                         backend="naive")
        y_t, indices_t = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), **kwargs, return_indices=True)
        assert y_t.numpy().dtype == dtype
        np.testing.assert_array_equal(y, y_t.numpy(), err_msg=str(case))
        np.testing.assert_array_equal(indices, indices_t.numpy(),
                                      err_msg=str(case))


def test_int64_max_pool_is_exact(backend):
    """Values that float64 cannot tell apart (2**62 and 2**62 + 1): the
    larger wins, and of two equal ones the first."""
    big = np.int64(2**62)
    x = np.full((1, 1, 4, 4), big, dtype=np.int64)
    x[0, 0, 1, 1] = big + 1
    x[0, 0, 2, 3] = big + 1
    x[0, 0, 3, 2] = big + 1
    y, indices = fastconv.max_pool2d(x, 2, return_indices=True,
                                     backend=backend)
    np.testing.assert_array_equal(y[0, 0], [[big + 1, big], [big, big + 1]])
    np.testing.assert_array_equal(indices[0, 0], [[5, 2], [8, 11]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16], ids=["uint8", "int16"])
def test_integer_padding_is_the_minimum(dtype, backend):
    """A padded window of minimum values reports its first real cell, not a
    padding position; unsigned padding is 0 and never wins."""
    info = np.iinfo(dtype)
    x = np.full((1, 1, 4, 4), info.min, dtype=dtype)
    x[0, 0, 3, 3] = info.min + 1
    y, indices = fastconv.max_pool2d(x, 3, stride=2, padding=1,
                                     return_indices=True, backend=backend)
    np.testing.assert_array_equal(y[0, 0], [[info.min, info.min],
                                            [info.min, info.min + 1]])
    np.testing.assert_array_equal(indices[0, 0], [[0, 1], [4, 15]])


def test_integer_max_pool_backward_is_float(backend, random_array,
                                            assert_close):
    x = integer_input((2, 2, 6, 6), np.int16, "ties", 7)
    y, indices = fastconv.max_pool2d(x, 3, stride=2, padding=1,
                                     return_indices=True, backend=backend)
    grad_output = random_array(y.shape, np.float32, "integer grad")
    grad_input = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend=backend)
    assert grad_input.dtype == np.float32
    expected = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                            backend="naive")
    assert_close(grad_input, expected, np.float32)
    with pytest.raises(TypeError, match="grad_output"):
        fastconv.max_pool2d_backward(y, indices, x.shape, backend=backend)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float16, np.bool_,
                                   np.complex64])
def test_other_dtypes_are_rejected(dtype, backend):
    x = np.zeros((1, 1, 4, 4), dtype=dtype)
    with pytest.raises(TypeError, match=r"\bx\b.*int64"):
        fastconv.max_pool2d(x, 2, backend=backend)


def test_integer_avg_pool_is_rejected(backend):
    with pytest.raises(TypeError, match=r"\bx\b.*float32 or float64"):
        fastconv.avg_pool2d(np.zeros((1, 1, 4, 4), dtype=np.int32), 2,
                            backend=backend)


def test_integer_max_pool_on_cuda_is_a_type_error():
    if "cuda" not in fastconv.available_backends():
        pytest.skip("the CUDA backend is not available here")
    with pytest.raises(TypeError, match="CPU backends only"):
        fastconv.max_pool2d(np.zeros((1, 1, 4, 4), dtype=np.uint8), 2,
                            backend="cuda")
