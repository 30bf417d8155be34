"""Inputs are never modified, and non-contiguous inputs give the same results.

Every op runs on C-contiguous inputs and on views with the same values
(transposed, strided slices, Fortran order, negative strides); the inputs are
compared with copies taken before the call, and the outputs must not alias
the inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

LAYOUTS = ["contiguous", "transposed", "strided", "fortran", "reversed"]


def as_layout(array, layout):
    """A view (or Fortran copy) holding ``array``'s values in another layout."""
    if layout == "contiguous":
        return np.ascontiguousarray(array)
    if layout == "transposed":
        # Stored with the last two axes swapped, shown in the original order.
        return np.ascontiguousarray(np.swapaxes(array, -1, -2)).swapaxes(-1, -2) \
            if array.ndim >= 2 else as_layout(array, "strided")
    if layout == "strided":
        padded = np.zeros(tuple(2 * size for size in array.shape), array.dtype)
        view = padded[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "reversed":
        flipped = np.ascontiguousarray(array[..., ::-1])
        return flipped[..., ::-1]
    raise ValueError(layout)


def _ops():
    """(name, function(backend, *arrays) -> outputs, input builder)."""
    rng = np.random.default_rng(42)
    x = rng.standard_normal((2, 4, 7, 6))
    weight = rng.standard_normal((6, 2, 3, 2))
    bias = rng.standard_normal(6)
    conv_kwargs = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    y = fastconv.conv2d(x, weight, bias, **conv_kwargs, backend="naive")
    grad_y = rng.standard_normal(y.shape)
    pooled, indices = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True,
                                          backend="naive")
    grad_pooled = rng.standard_normal(pooled.shape)
    averaged = fastconv.avg_pool2d(x, 2, 1, 1, ceil_mode=True, backend="naive")
    grad_averaged = rng.standard_normal(averaged.shape)
    mask = fastconv.dropout_mask(x.shape, 0.3, 5, backend="naive")
    return [
        ("conv2d", lambda b, x, w, bias: fastconv.conv2d(
            x, w, bias, **conv_kwargs, backend=b), (x, weight, bias)),
        ("conv2d_backward", lambda b, g, x, w: fastconv.conv2d_backward(
            g, x, w, **conv_kwargs, backend=b), (grad_y, x, weight)),
        ("max_pool2d", lambda b, x: fastconv.max_pool2d(
            x, 3, 2, 1, return_indices=True, backend=b), (x,)),
        ("max_pool2d_backward", lambda b, g, i: fastconv.max_pool2d_backward(
            g, i, x.shape, backend=b), (grad_pooled, indices)),
        ("avg_pool2d", lambda b, x: fastconv.avg_pool2d(
            x, 2, 1, 1, ceil_mode=True, backend=b), (x,)),
        ("avg_pool2d_backward", lambda b, g: fastconv.avg_pool2d_backward(
            g, x.shape, 2, 1, 1, ceil_mode=True, backend=b), (grad_averaged,)),
        ("dropout", lambda b, x: fastconv.dropout(x, 0.3, seed=5, backend=b),
         (x,)),
        ("dropout_backward", lambda b, g, m: fastconv.dropout_backward(
            g, m, 0.3, backend=b), (x, mask)),
    ]


OPS = _ops()
OP_IDS = [op[0] for op in OPS]


def _outputs(result):
    """The arrays a call returned, as a flat tuple (None entries dropped)."""
    items = result if isinstance(result, tuple) else (result,)
    return tuple(item for item in items if item is not None)


def _cast(array, dtype):
    return array.astype(dtype) if array.dtype.kind == "f" else array


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_inputs_unchanged_and_layout_does_not_matter(op, layout, dtype,
                                                     backend, naive_cache,
                                                     assert_close):
    name, function, arrays = op
    arrays = tuple(_cast(array, dtype) for array in arrays)
    contiguous_result = naive_cache(
        ("layouts", name, dtype.name, backend),
        lambda: _outputs(function(backend, *arrays)))
    inputs = tuple(as_layout(array, layout) for array in arrays)
    for given, original in zip(inputs, arrays):
        np.testing.assert_array_equal(given, original)
    if layout != "contiguous":
        assert not all(given.flags.c_contiguous for given in inputs)
    copies = tuple(given.copy() for given in inputs)

    result = _outputs(function(backend, *inputs))

    for index, (given, copy) in enumerate(zip(inputs, copies)):
        np.testing.assert_array_equal(given, copy,
                                      err_msg=f"{name} changed input {index}")
    for output in result:
        for given in inputs:
            assert not np.shares_memory(output, given), f"{name} aliases input"
    assert len(result) == len(contiguous_result)
    for got, want in zip(result, contiguous_result):
        assert got.dtype == want.dtype
        if want.dtype.kind in "bi":
            np.testing.assert_array_equal(got, want)
        else:
            assert got.dtype == dtype
            assert_close(got, want, dtype,
                         rtol=1e-6 if dtype == np.float32 else 1e-13)
