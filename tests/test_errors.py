"""Every bad input raises ValueError or TypeError naming the argument.

Validation happens before dispatch, but each case still runs with every
backend name, so that no backend-specific path skips a check.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

F64 = np.float64
X = np.zeros((2, 4, 6, 6))               # N, C, H, W
WEIGHT = np.zeros((3, 4, 3, 3))           # K, C, R, S
BIAS = np.zeros(3)
Y_SHAPE = (2, 3, 4, 4)                    # conv2d(X, WEIGHT)
POOLED = np.zeros((2, 4, 3, 3))           # max_pool2d(X, 2)
INDICES = np.zeros((2, 4, 3, 3), dtype=np.int64)


def conv(**changes):
    """conv2d with one argument changed from a valid call."""
    kwargs = dict(x=X, weight=WEIGHT, bias=BIAS)
    kwargs.update(changes)
    return lambda backend: fastconv.conv2d(**kwargs, backend=backend)


def conv_backward(**changes):
    kwargs = dict(grad_output=np.zeros(Y_SHAPE), x=X, weight=WEIGHT)
    kwargs.update(changes)
    return lambda backend: fastconv.conv2d_backward(**kwargs, backend=backend)


def max_pool(**changes):
    kwargs = dict(x=X, kernel_size=2)
    kwargs.update(changes)
    return lambda backend: fastconv.max_pool2d(**kwargs, backend=backend)


def max_pool_backward(**changes):
    kwargs = dict(grad_output=POOLED, indices=INDICES, input_shape=X.shape)
    kwargs.update(changes)
    return lambda backend: fastconv.max_pool2d_backward(**kwargs,
                                                        backend=backend)


def avg_pool(**changes):
    kwargs = dict(x=X, kernel_size=2)
    kwargs.update(changes)
    return lambda backend: fastconv.avg_pool2d(**kwargs, backend=backend)


def avg_pool_backward(**changes):
    kwargs = dict(grad_output=POOLED, input_shape=X.shape, kernel_size=2)
    kwargs.update(changes)
    return lambda backend: fastconv.avg_pool2d_backward(**kwargs,
                                                        backend=backend)


def dropout(**changes):
    kwargs = dict(x=X, p=0.5, seed=0)
    kwargs.update(changes)
    return lambda backend: fastconv.dropout(**kwargs, backend=backend)


def dropout_mask(**changes):
    kwargs = dict(shape=(3, 4), p=0.5, seed=0)
    kwargs.update(changes)
    return lambda backend: fastconv.dropout_mask(**kwargs, backend=backend)


def dropout_backward(**changes):
    kwargs = dict(grad_output=X, mask=np.ones(X.shape, dtype=bool), p=0.5)
    kwargs.update(changes)
    return lambda backend: fastconv.dropout_backward(**kwargs, backend=backend)


# (id, call, exception, regex the message must match). The regex names the
# argument at a word boundary, so "x" does not match inside "expected".
ERROR_CASES = [
    # ---- conv2d: ndim
    ("conv_x_3d", conv(x=X[0]), ValueError, r"\bx\b.*4-D"),
    ("conv_x_5d", conv(x=X[None]), ValueError, r"\bx\b.*4-D"),
    ("conv_weight_3d", conv(weight=WEIGHT[0]), ValueError, r"\bweight\b"),
    ("conv_bias_2d", conv(bias=BIAS[None]), ValueError, r"\bbias\b"),
    # ---- conv2d: channels, groups, bias length
    ("conv_channel_mismatch", conv(weight=np.zeros((3, 3, 3, 3))), ValueError,
     r"\bweight\b"),
    ("conv_groups_not_dividing_channels",
     conv(weight=np.zeros((3, 1, 3, 3)), bias=None, groups=3), ValueError,
     r"\bgroups\b"),
    ("conv_groups_not_dividing_filters",
     conv(weight=np.zeros((3, 2, 3, 3)), bias=None, groups=2), ValueError,
     r"\bgroups\b"),
    ("conv_groups_weight_mismatch",
     conv(weight=np.zeros((4, 4, 3, 3)), bias=None, groups=2), ValueError,
     r"\bweight\b"),
    ("conv_groups_zero", conv(groups=0), ValueError, r"\bgroups\b"),
    ("conv_groups_float", conv(groups=1.0), TypeError, r"\bgroups\b"),
    ("conv_bias_length", conv(bias=np.zeros(4)), ValueError, r"\bbias\b"),
    # ---- conv2d: dtypes
    ("conv_x_int", conv(x=X.astype(np.int64)), TypeError, r"\bx\b.*float"),
    ("conv_x_float16", conv(x=X.astype(np.float16)), TypeError, r"\bx\b"),
    ("conv_x_list", conv(x=X.tolist()), TypeError, r"\bx\b"),
    ("conv_weight_int", conv(weight=WEIGHT.astype(np.int32)), TypeError,
     r"\bweight\b"),
    ("conv_weight_complex", conv(weight=WEIGHT.astype(np.complex128)),
     TypeError, r"\bweight\b"),
    ("conv_dtype_mismatch", conv(weight=WEIGHT.astype(np.float32)), TypeError,
     r"\bweight\b"),
    ("conv_bias_dtype_mismatch", conv(bias=BIAS.astype(np.float32)), TypeError,
     r"\bbias\b"),
    ("conv_bias_int", conv(bias=BIAS.astype(np.int64)), TypeError, r"\bbias\b"),
    # ---- conv2d: stride, dilation, padding
    ("conv_stride_zero", conv(stride=0), ValueError, r"\bstride\b"),
    ("conv_stride_negative", conv(stride=-1), ValueError, r"\bstride\b"),
    ("conv_stride_pair_zero", conv(stride=(1, 0)), ValueError, r"\bstride\b"),
    ("conv_stride_triple", conv(stride=(1, 1, 1)), ValueError, r"\bstride\b"),
    ("conv_stride_float", conv(stride=1.5), TypeError, r"\bstride\b"),
    ("conv_dilation_zero", conv(dilation=0), ValueError, r"\bdilation\b"),
    ("conv_dilation_pair_negative", conv(dilation=(2, -1)), ValueError,
     r"\bdilation\b"),
    ("conv_padding_negative", conv(padding=-1), ValueError, r"\bpadding\b"),
    ("conv_padding_pair_negative", conv(padding=(0, -2)), ValueError,
     r"\bpadding\b"),
    ("conv_padding_unknown_string", conv(padding="full"), ValueError,
     r"\bpadding\b"),
    ("conv_padding_wrong_case", conv(padding="SAME"), ValueError, r"\bpadding\b"),
    ("conv_same_with_stride", conv(padding="same", stride=2), ValueError,
     r"same.*stride|stride.*same"),
    ("conv_same_with_stride_pair", conv(padding="same", stride=(1, 2)),
     ValueError, r"same.*stride|stride.*same"),
    # ---- conv2d: empty output or empty axes
    ("conv_output_empty", conv(x=np.zeros((1, 4, 2, 2))), ValueError, r"empty"),
    ("conv_output_empty_dilated", conv(dilation=3), ValueError, r"empty"),
    ("conv_output_empty_stride_pair", conv(x=np.zeros((1, 4, 2, 9))),
     ValueError, r"empty"),
    ("conv_empty_batch", conv(x=np.zeros((0, 4, 6, 6))), ValueError, r"\bx\b"),
    ("conv_empty_filters", conv(weight=np.zeros((0, 4, 3, 3)), bias=None),
     ValueError, r"\bweight\b"),
    # ---- conv2d_backward
    ("conv_backward_grad_shape", conv_backward(grad_output=np.zeros((2, 3, 4, 5))),
     ValueError, r"\bgrad_output\b"),
    ("conv_backward_grad_3d", conv_backward(grad_output=np.zeros((2, 3, 4))),
     ValueError, r"\bgrad_output\b"),
    ("conv_backward_grad_dtype",
     conv_backward(grad_output=np.zeros(Y_SHAPE, dtype=np.float32)),
     TypeError, r"\bgrad_output\b"),
    ("conv_backward_grad_int", conv_backward(grad_output=np.zeros(Y_SHAPE, int)),
     TypeError, r"\bgrad_output\b"),
    ("conv_backward_x_3d", conv_backward(x=X[0]), ValueError, r"\bx\b"),
    ("conv_backward_channel_mismatch",
     conv_backward(weight=np.zeros((3, 2, 3, 3))), ValueError, r"\bweight\b"),
    ("conv_backward_stride_zero", conv_backward(stride=0), ValueError,
     r"\bstride\b"),
    ("conv_backward_same_stride", conv_backward(padding="same", stride=2),
     ValueError, r"same"),
    # ---- max_pool2d
    ("max_x_3d", max_pool(x=X[0]), ValueError, r"\bx\b"),
    ("max_x_uint16", max_pool(x=X.astype(np.uint16)), TypeError, r"\bx\b"),
    ("max_x_float16", max_pool(x=X.astype(np.float16)), TypeError, r"\bx\b"),
    ("max_kernel_zero", max_pool(kernel_size=0), ValueError, r"\bkernel_size\b"),
    ("max_kernel_pair_negative", max_pool(kernel_size=(2, -1)), ValueError,
     r"\bkernel_size\b"),
    ("max_kernel_float", max_pool(kernel_size=2.0), TypeError,
     r"\bkernel_size\b"),
    ("max_stride_zero", max_pool(stride=0), ValueError, r"\bstride\b"),
    ("max_dilation_zero", max_pool(dilation=0), ValueError, r"\bdilation\b"),
    ("max_padding_negative", max_pool(padding=-1), ValueError, r"\bpadding\b"),
    ("max_padding_over_half", max_pool(kernel_size=3, padding=2), ValueError,
     r"\bpadding\b.*half"),
    ("max_padding_over_half_kernel1", max_pool(kernel_size=1, padding=1),
     ValueError, r"\bpadding\b"),
    ("max_padding_over_half_one_axis",
     max_pool(kernel_size=(3, 4), padding=(2, 0)), ValueError, r"\bpadding\b"),
    ("max_padding_string", max_pool(padding="same"), TypeError, r"\bpadding\b"),
    ("max_output_empty", max_pool(kernel_size=7), ValueError, r"empty"),
    ("max_output_empty_dilated", max_pool(kernel_size=3, dilation=3),
     ValueError, r"empty"),
    ("max_window_misses_input",
     max_pool(x=np.zeros((1, 1, 1, 3)), kernel_size=2, stride=1, padding=1,
              dilation=2), ValueError, r"\bdilation\b"),
    # ---- max_pool2d_backward
    ("max_backward_grad_3d", max_pool_backward(grad_output=POOLED[0]),
     ValueError, r"\bgrad_output\b"),
    ("max_backward_grad_int", max_pool_backward(grad_output=INDICES),
     TypeError, r"\bgrad_output\b"),
    ("max_backward_indices_float",
     max_pool_backward(indices=INDICES.astype(np.float64)), TypeError,
     r"\bindices\b"),
    ("max_backward_indices_list", max_pool_backward(indices=INDICES.tolist()),
     TypeError, r"\bindices\b"),
    ("max_backward_indices_bool",
     max_pool_backward(indices=INDICES.astype(bool)), TypeError, r"\bindices\b"),
    ("max_backward_indices_shape",
     max_pool_backward(indices=INDICES[:, :, :2]), ValueError, r"\bindices\b"),
    ("max_backward_indices_too_large",
     max_pool_backward(indices=INDICES + 36), ValueError, r"\bindices\b"),
    ("max_backward_indices_negative",
     max_pool_backward(indices=INDICES - 1), ValueError, r"\bindices\b"),
    ("max_backward_input_shape_3", max_pool_backward(input_shape=(2, 4, 6)),
     ValueError, r"\binput_shape\b"),
    ("max_backward_input_shape_channels",
     max_pool_backward(input_shape=(2, 5, 6, 6)), ValueError,
     r"\binput_shape\b"),
    ("max_backward_input_shape_zero",
     max_pool_backward(input_shape=(2, 4, 0, 6)), ValueError,
     r"\binput_shape\b"),
    # ---- avg_pool2d
    ("avg_x_3d", avg_pool(x=X[0]), ValueError, r"\bx\b"),
    ("avg_x_int", avg_pool(x=X.astype(np.int64)), TypeError, r"\bx\b"),
    ("avg_kernel_zero", avg_pool(kernel_size=0), ValueError, r"\bkernel_size\b"),
    ("avg_stride_negative", avg_pool(stride=-2), ValueError, r"\bstride\b"),
    ("avg_padding_negative", avg_pool(padding=(-1, 0)), ValueError,
     r"\bpadding\b"),
    ("avg_padding_over_half", avg_pool(kernel_size=2, padding=2), ValueError,
     r"\bpadding\b.*half"),
    ("avg_output_empty", avg_pool(kernel_size=(7, 2)), ValueError, r"empty"),
    # ---- avg_pool2d_backward
    ("avg_backward_grad_shape", avg_pool_backward(grad_output=POOLED[:, :, :2]),
     ValueError, r"\bgrad_output\b"),
    ("avg_backward_grad_3d", avg_pool_backward(grad_output=POOLED[0]),
     ValueError, r"\bgrad_output\b"),
    ("avg_backward_grad_float16",
     avg_pool_backward(grad_output=POOLED.astype(np.float16)), TypeError,
     r"\bgrad_output\b"),
    ("avg_backward_input_shape", avg_pool_backward(input_shape=(2, 4, 6)),
     ValueError, r"\binput_shape\b"),
    ("avg_backward_padding_over_half", avg_pool_backward(padding=2),
     ValueError, r"\bpadding\b"),
    ("avg_backward_kernel_zero", avg_pool_backward(kernel_size=0), ValueError,
     r"\bkernel_size\b"),
    # ---- dropout
    ("dropout_p_negative", dropout(p=-0.1), ValueError, r"\bp\b"),
    ("dropout_p_above_one", dropout(p=1.5), ValueError, r"\bp\b"),
    ("dropout_p_nan", dropout(p=float("nan")), ValueError, r"\bp\b"),
    ("dropout_p_inf", dropout(p=float("inf")), ValueError, r"\bp\b"),
    ("dropout_p_string", dropout(p="0.5"), TypeError, r"\bp\b"),
    ("dropout_p_none", dropout(p=None), TypeError, r"\bp\b"),
    ("dropout_p_bad_in_eval", dropout(p=2.0, training=False), ValueError,
     r"\bp\b"),
    ("dropout_x_int", dropout(x=X.astype(np.int64)), TypeError, r"\bx\b"),
    ("dropout_x_float16", dropout(x=X.astype(np.float16)), TypeError, r"\bx\b"),
    ("dropout_x_list", dropout(x=[1.0, 2.0]), TypeError, r"\bx\b"),
    ("dropout_seed_negative", dropout(seed=-1), ValueError, r"\bseed\b"),
    ("dropout_seed_too_large", dropout(seed=2**64), ValueError, r"\bseed\b"),
    ("dropout_seed_float", dropout(seed=1.5), TypeError, r"\bseed\b"),
    # ---- dropout_mask
    ("mask_p_negative", dropout_mask(p=-1e-9), ValueError, r"\bp\b"),
    ("mask_p_nan", dropout_mask(p=float("nan")), ValueError, r"\bp\b"),
    ("mask_shape_negative", dropout_mask(shape=(3, -1)), ValueError,
     r"\bshape\b"),
    ("mask_shape_float", dropout_mask(shape=(3, 2.0)), TypeError, r"\bshape\b"),
    ("mask_shape_string", dropout_mask(shape="3"), TypeError, r"\bshape\b"),
    ("mask_seed_none", dropout_mask(seed=None), TypeError, r"\bseed\b"),
    ("mask_seed_negative", dropout_mask(seed=-5), ValueError, r"\bseed\b"),
    # ---- dropout_backward
    ("dropout_backward_mask_float",
     dropout_backward(mask=np.ones(X.shape)), TypeError, r"\bmask\b"),
    ("dropout_backward_mask_shape",
     dropout_backward(mask=np.ones((2, 4, 6), dtype=bool)), ValueError,
     r"\bmask\b"),
    ("dropout_backward_grad_int", dropout_backward(grad_output=X.astype(int)),
     TypeError, r"\bgrad_output\b"),
    ("dropout_backward_p_above_one", dropout_backward(p=1.01), ValueError,
     r"\bp\b"),
]


@pytest.mark.parametrize("call, exception, pattern",
                         [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_bad_input_raises(call, exception, pattern, backend):
    with pytest.raises(exception, match=pattern):
        call(backend)


def test_error_cases_are_otherwise_valid(backend):
    """The baseline calls that the cases above modify are themselves valid."""
    assert fastconv.conv2d(X, WEIGHT, BIAS, backend=backend).shape == Y_SHAPE
    assert fastconv.conv2d_backward(np.zeros(Y_SHAPE), X, WEIGHT,
                                    backend=backend)[0].shape == X.shape
    y, indices = fastconv.max_pool2d(X, 2, return_indices=True, backend=backend)
    assert y.shape == POOLED.shape
    fastconv.max_pool2d_backward(POOLED, INDICES, X.shape, backend=backend)
    fastconv.max_pool2d_backward(POOLED, INDICES + 35, X.shape, backend=backend)
    assert fastconv.avg_pool2d(X, 2, backend=backend).shape == POOLED.shape
    fastconv.avg_pool2d_backward(POOLED, X.shape, 2, backend=backend)
    fastconv.dropout(X, 0.5, seed=0, backend=backend)
    fastconv.dropout(X, 0.5, seed=2**64 - 1, backend=backend)
    fastconv.dropout_mask((3, 4), 0.5, 0, backend=backend)
    fastconv.dropout_backward(X, np.ones(X.shape, dtype=bool), 0.5,
                              backend=backend)
    # Padding of exactly half the kernel is allowed (PyTorch's bound).
    fastconv.max_pool2d(X, (3, 4), padding=(1, 2), backend=backend)
    fastconv.avg_pool2d(X, 2, padding=1, backend=backend)


@pytest.mark.parametrize("bad_name", ["bogus", "Numba", ""])
def test_unknown_backend_name_lists_valid_names(bad_name):
    with pytest.raises(ValueError, match="valid backends") as excinfo:
        fastconv.conv2d(X, WEIGHT, backend=bad_name)
    for name in ("auto", "naive", "numba", "cython", "cuda"):
        assert repr(name) in str(excinfo.value)


def test_backend_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"\bbackend\b"):
        fastconv.max_pool2d(X, 2, backend=1)


def test_remembered_conv_geometry_never_hides_a_check():
    """conv2d remembers the checked geometry of plain int/tuple arguments:
    a failing call fails every time, a bool or a list still takes the full
    checks, and a NumPy integer the uncached path with the same result."""
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    expected = fastconv.conv2d(x, w, stride=2, padding=1)
    fastconv.conv2d(x, w, stride=1, padding=1)  # warm the key True equals
    for _ in range(2):
        with pytest.raises(ValueError, match="padding"):
            fastconv.conv2d(x, w, padding=-1)
        with pytest.raises(TypeError, match="stride"):
            fastconv.conv2d(x, w, stride=True, padding=1)
        np.testing.assert_array_equal(
            fastconv.conv2d(x, w, stride=np.int64(2), padding=(1, 1)),
            expected)
        np.testing.assert_array_equal(
            fastconv.conv2d(x, w, stride=[2, 2], padding=[1, 1]), expected)
    with pytest.raises(ValueError, match="groups"):
        fastconv.conv2d(x, w, stride=2, padding=1, groups=2)
