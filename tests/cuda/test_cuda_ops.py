"""The CUDA backend against the naive reference, op by op.

Runs under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or on a GPU;
see ``conftest.py``. Shapes are tiny (the simulator runs one Python thread per
CUDA thread) but span several ragged tiles of the 'tiny' launch config.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _dropout_hash, config, functional
from fastconv.backends import cuda as cuda_backend

_UNAVAILABLE = cuda_backend.unavailable_reason()
if _UNAVAILABLE is not None:
    pytest.skip(
        f"CUDA backend unavailable: {_UNAVAILABLE}. These tests need "
        "numba-cuda (pip install \".[cuda]\") and a GPU or Numba's "
        "simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda",
        allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("launch"),
    # The simulator runs the dropout hash on NumPy uint64 scalars, which warn
    # when the (intended) wrap-around multiplication overflows.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]

# (x shape, weight shape, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "basic_bias": ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1, True),
    "same_even_kernel_dilated_groups": ((1, 4, 7, 6), (6, 2, 2, 4), 1, "same",
                                        (1, 2), 2, False),
    "strided_asymmetric": ((2, 2, 9, 8), (5, 2, 3, 2), (2, 3), (2, 0), (2, 1),
                           1, True),
    "depthwise": ((2, 4, 5, 5), (4, 1, 3, 3), 1, 1, 1, 4, True),
    "depthwise_multiplier_strided": ((1, 2, 6, 7), (4, 1, 3, 3), 2, 1, 1, 2,
                                     False),
    "pointwise_one_channel_batch_one": ((1, 1, 4, 4), (3, 1, 1, 1), 1, 0, 1,
                                        1, True),
    "many_filters_ragged_tiles": ((2, 3, 5, 4), (9, 3, 3, 3), 1, 1, 1, 1,
                                  True),
    "valid_strided_dilated": ((1, 2, 9, 9), (3, 2, 3, 3), 2, "valid", 2, 1,
                              False),
    "nested_asymmetric_padding": ((1, 2, 5, 6), (3, 2, 3, 2), (1, 2),
                                  ((2, 0), (1, 3)), 1, 1, True),
}

# (x shape, kernel_size, stride, padding, dilation, ceil_mode)
POOL_CASES = {
    "k3s2p1": ((2, 3, 7, 6), 3, 2, 1, 1, False),
    "rect_dilated_ceil": ((1, 2, 8, 7), (2, 3), (2, 1), 1, (2, 1), True),
    "k2_ceil_ragged": ((2, 1, 5, 5), 2, None, 0, 1, True),
    "overlapping_stride1": ((1, 2, 6, 6), 3, 1, 1, 1, False),
    "ceil_padded": ((1, 2, 6, 5), 3, 2, 1, 1, True),
    "asymmetric_ceil": ((1, 2, 7, 6), 3, 2, ((0, 1), (1, 0)), 1, True),
}


def _conv_args(case, dtype, random_array):
    x_shape, w_shape, stride, padding, dilation, groups, has_bias = CONV_CASES[
        case]
    x = random_array(x_shape, dtype, "cuda-conv-x", case)
    weight = random_array(w_shape, dtype, "cuda-conv-w", case)
    bias = random_array(w_shape[:1], dtype, "cuda-conv-b",
                        case) if has_bias else None
    options = dict(stride=stride, padding=padding, dilation=dilation,
                   groups=groups)
    return x, weight, bias, options


# --------------------------------------------------------------- convolution

def _output_shape(x, weight, options):
    return functional._conv_setup(x, weight, options["stride"],
                                  options["padding"], options["dilation"],
                                  options["groups"])[2].output_shape


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_forward_matches_naive(case, dtype, random_array, naive_cache,
                                      assert_close):
    x, weight, bias, options = _conv_args(case, dtype, random_array)
    x_before = x.copy()
    expected = naive_cache(
        ("cuda-conv-forward", case, np.dtype(dtype).name),
        lambda: fastconv.conv2d(x, weight, bias, backend="naive", **options))
    y = fastconv.conv2d(x, weight, bias, backend="cuda", **options)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    assert_close(y, expected, what=f"conv2d {case}")
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_backward_matches_naive(case, dtype, random_array, naive_cache,
                                       assert_close):
    x, weight, _, options = _conv_args(case, dtype, random_array)
    grad_output = random_array(_output_shape(x, weight, options), dtype,
                               "cuda-conv-gy", case)
    expected = naive_cache(
        ("cuda-conv-backward", case, np.dtype(dtype).name),
        lambda: fastconv.conv2d_backward(grad_output, x, weight,
                                         backend="naive", **options))
    grads = fastconv.conv2d_backward(grad_output, x, weight, backend="cuda",
                                     **options)
    for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                    grads, expected):
        assert actual.dtype == dtype
        assert_close(actual, wanted, what=f"{name} {case}")


@pytest.mark.parametrize("grad_weight_blocks", [1, 10_000],
                         ids=["one_slice", "many_slices"])
def test_conv2d_grad_weight_split_reduction(grad_weight_blocks, random_array,
                                            naive_cache, assert_close,
                                            monkeypatch):
    """grad_weight is the same whether its reduction runs in one slice or is
    split into many partial sums (summed by the second kernel)."""
    case = "basic_bias"
    x, weight, _, options = _conv_args(case, np.float64, random_array)
    monkeypatch.setattr(config, "CUDA_GRAD_WEIGHT_BLOCKS", grad_weight_blocks)
    grad_output = random_array((2, 4, 6, 5), np.float64, "cuda-conv-gy", case)
    expected = naive_cache(
        ("cuda-conv-backward", case, "float64"),
        lambda: fastconv.conv2d_backward(grad_output, x, weight,
                                         backend="naive", **options))
    _, grad_weight, _ = fastconv.conv2d_backward(
        grad_output, x, weight, need_input_grad=False, backend="cuda",
        **options)
    assert_close(grad_weight, expected[1], what="grad_weight")


def test_conv2d_workspace_limit_still_correct(random_array, naive_cache,
                                              assert_close, monkeypatch):
    """A workspace too small for any partial sums falls back to one slice."""
    case = "basic_bias"
    x, weight, _, options = _conv_args(case, np.float64, random_array)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 1)
    monkeypatch.setattr(config, "CUDA_GRAD_WEIGHT_BLOCKS", 10_000)
    grad_output = random_array((2, 4, 6, 5), np.float64, "cuda-conv-gy", case)
    expected = naive_cache(
        ("cuda-conv-backward", case, "float64"),
        lambda: fastconv.conv2d_backward(grad_output, x, weight,
                                         backend="naive", **options))
    grads = fastconv.conv2d_backward(grad_output, x, weight, backend="cuda",
                                     **options)
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted)


def test_conv2d_need_input_grad_false(random_array):
    x, weight, _, options = _conv_args("strided_asymmetric", np.float32,
                                       random_array)
    grad_output = np.ones(fastconv.conv2d(x, weight, backend="cuda",
                                          **options).shape, np.float32)
    grad_input, grad_weight, grad_bias = fastconv.conv2d_backward(
        grad_output, x, weight, need_input_grad=False, backend="cuda",
        **options)
    assert grad_input is None
    assert grad_weight.shape == weight.shape and grad_bias.shape == (5,)


def test_conv2d_backward_directional_finite_difference(random_array):
    """<grad, v> equals the central difference of <conv2d, g> along v, for x,
    weight and bias (float64; two forward calls per direction)."""
    x, weight, bias, options = _conv_args("strided_asymmetric", np.float64,
                                          random_array)
    y = fastconv.conv2d(x, weight, bias, backend="cuda", **options)
    grad_output = random_array(y.shape, np.float64, "cuda-fd-g")
    grads = fastconv.conv2d_backward(grad_output, x, weight, backend="cuda",
                                     **options)
    eps = 1e-6
    arguments = [x, weight, bias]
    for position, gradient in enumerate(grads):
        direction = random_array(arguments[position].shape, np.float64,
                                 "cuda-fd-v", position)
        values = []
        for sign in (1.0, -1.0):
            moved = list(arguments)
            moved[position] = arguments[position] + sign * eps * direction
            values.append(float(np.sum(grad_output * fastconv.conv2d(
                *moved, backend="cuda", **options))))
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(np.sum(gradient * direction))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------- pooling

def _pool_input(case, dtype, random_array):
    return random_array(POOL_CASES[case][0], dtype, "cuda-pool-x", case)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_forward_and_backward_match_naive(case, dtype,
                                                     random_array,
                                                     naive_cache,
                                                     assert_close):
    _, kernel_size, stride, padding, dilation, ceil_mode = POOL_CASES[case]
    x = _pool_input(case, dtype, random_array)
    options = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                   dilation=dilation, ceil_mode=ceil_mode, return_indices=True)
    expected_y, expected_indices = naive_cache(
        ("cuda-maxpool", case, np.dtype(dtype).name),
        lambda: fastconv.max_pool2d(x, backend="naive", **options))
    y, indices = fastconv.max_pool2d(x, backend="cuda", **options)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    assert indices.dtype == np.int64

    grad_output = random_array(y.shape, dtype, "cuda-maxpool-g", case)
    expected = naive_cache(
        ("cuda-maxpool-backward", case, np.dtype(dtype).name),
        lambda: fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                             backend="naive"))
    grad_input = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend="cuda")
    assert grad_input.dtype == dtype
    assert_close(grad_input, expected, what=f"max_pool2d_backward {case}")


def test_max_pool2d_nan_and_infinity_rules():
    """A NaN wins (the last one in a window), an all -inf window returns its
    first in-bounds element, as in PyTorch and the naive reference."""
    x = np.full((1, 1, 4, 6), -np.inf, dtype=np.float32)
    x[0, 0, 0, 3] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 2, 0] = 5.0
    x[0, 0, 3, 5] = np.nan
    x[0, 0, 2, 4] = 7.0
    for options in (dict(kernel_size=2), dict(kernel_size=3, stride=1,
                                              padding=1)):
        expected = fastconv.max_pool2d(x, return_indices=True,
                                       backend="naive", **options)
        actual = fastconv.max_pool2d(x, return_indices=True, backend="cuda",
                                     **options)
        np.testing.assert_array_equal(actual[0], expected[0])
        np.testing.assert_array_equal(actual[1], expected[1])


@pytest.mark.parametrize("count_include_pad", [True, False],
                         ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ["k3s2p1", "k2_ceil_ragged",
                                  "overlapping_stride1", "ceil_padded"])
def test_avg_pool2d_forward_and_backward_match_naive(case, dtype,
                                                     count_include_pad,
                                                     random_array,
                                                     naive_cache,
                                                     assert_close):
    _, kernel_size, stride, padding, _, ceil_mode = POOL_CASES[case]
    x = _pool_input(case, dtype, random_array)
    options = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                   ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    key = (case, np.dtype(dtype).name, count_include_pad)
    expected = naive_cache(
        ("cuda-avgpool",) + key,
        lambda: fastconv.avg_pool2d(x, backend="naive", **options))
    y = fastconv.avg_pool2d(x, backend="cuda", **options)
    assert_close(y, expected, what=f"avg_pool2d {case}")

    grad_output = random_array(y.shape, dtype, "cuda-avgpool-g", case)
    expected = naive_cache(
        ("cuda-avgpool-backward",) + key,
        lambda: fastconv.avg_pool2d_backward(grad_output, x.shape,
                                             backend="naive", **options))
    grad_input = fastconv.avg_pool2d_backward(grad_output, x.shape,
                                              backend="cuda", **options)
    assert grad_input.dtype == dtype
    assert_close(grad_input, expected, what=f"avg_pool2d_backward {case}")


# ------------------------------------------------------------------- dropout

@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_mask_bit_for_bit(p, seed):
    shape = (5, 7, 11)  # 385 elements: the grid-stride loop goes round
    expected = fastconv.dropout_mask(shape, p, seed, backend="naive")
    mask = fastconv.dropout_mask(shape, p, seed, backend="cuda")
    assert mask.dtype == np.bool_ and mask.shape == shape
    np.testing.assert_array_equal(mask, expected)


def test_dropout_mask_matches_python_hash_and_prefix_property():
    seed, p = 987654321, 0.25
    threshold = _dropout_hash.threshold(p)
    key = _dropout_hash.seed_key(seed)
    mask = fastconv.dropout_mask(200, p, seed, backend="cuda")
    expected = [_dropout_hash.keep_bits(key, i) >= threshold
                for i in range(200)]
    np.testing.assert_array_equal(mask, expected)
    shorter = fastconv.dropout_mask(37, p, seed, backend="cuda")
    np.testing.assert_array_equal(shorter, mask[:37])


def test_dropout_mask_empty():
    assert fastconv.dropout_mask((0, 3), 0.5, 1, backend="cuda").shape == (0, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_dropout_and_backward_bit_for_bit(p, dtype, random_array):
    x = random_array((3, 4, 5), dtype, "cuda-dropout-x")
    x[0, 0, :3] = [np.inf, -np.inf, np.nan]  # dropped ones must give 0
    y_expected, mask_expected = fastconv.dropout(x, p, seed=77,
                                                 backend="naive")
    y, mask = fastconv.dropout(x, p, seed=77, backend="cuda")
    np.testing.assert_array_equal(mask, mask_expected)
    np.testing.assert_array_equal(y, y_expected)
    assert y.dtype == dtype
    grad_output = random_array(x.shape, dtype, "cuda-dropout-g")
    np.testing.assert_array_equal(
        fastconv.dropout_backward(grad_output, mask, p, backend="cuda"),
        fastconv.dropout_backward(grad_output, mask, p, backend="naive"))


def test_dropout_not_training_returns_input():
    x = np.ones((2, 3), np.float32)
    y, mask = fastconv.dropout(x, 0.5, training=False, backend="cuda")
    assert y is x and mask is None


# ------------------------------------------------------------- device arrays

def _is_on_device(value) -> bool:
    return not isinstance(value, np.ndarray) and hasattr(value, "copy_to_host")


def test_device_inputs_keep_results_on_device(device, random_array,
                                              assert_close):
    x, weight, bias, options = _conv_args("basic_bias", np.float32,
                                          random_array)
    expected = fastconv.conv2d(x, weight, bias, backend="cuda", **options)
    y = fastconv.conv2d(device.to_device(x), device.to_device(weight),
                        device.to_device(bias), backend="cuda", **options)
    assert _is_on_device(y)
    assert_close(y.copy_to_host(), expected)

    # Mixed host and device inputs: the result stays on the device.
    y_mixed = fastconv.conv2d(device.to_device(x), weight, bias,
                              backend="cuda", **options)
    assert _is_on_device(y_mixed)
    assert_close(y_mixed.copy_to_host(), expected)

    # The device result feeds the next op directly.
    pooled, indices = fastconv.max_pool2d(y, 2, return_indices=True,
                                          backend="cuda")
    assert _is_on_device(pooled) and _is_on_device(indices)
    expected_pooled, expected_indices = fastconv.max_pool2d(
        expected, 2, return_indices=True, backend="cuda")
    np.testing.assert_array_equal(pooled.copy_to_host(), expected_pooled)
    grad_input = fastconv.max_pool2d_backward(pooled, indices, y.shape,
                                              backend="cuda")
    assert _is_on_device(grad_input)
    np.testing.assert_array_equal(
        grad_input.copy_to_host(),
        fastconv.max_pool2d_backward(expected_pooled, expected_indices,
                                     y.shape, backend="cuda"))


def test_device_backward_avgpool_and_dropout(device, random_array,
                                             assert_close):
    x = random_array((2, 3, 6, 5), np.float64, "cuda-device-x")
    grads = fastconv.conv2d_backward(
        device.to_device(np.ones((2, 4, 6, 5))), device.to_device(x),
        device.to_device(random_array((4, 3, 3, 3), np.float64, "w")),
        padding=1, backend="cuda")
    assert all(_is_on_device(g) for g in grads)

    y = fastconv.avg_pool2d(device.to_device(x), 3, 2, 1, backend="cuda")
    assert _is_on_device(y)
    assert_close(y.copy_to_host(), fastconv.avg_pool2d(x, 3, 2, 1,
                                                       backend="naive"))
    grad = fastconv.avg_pool2d_backward(y, x.shape, 3, 2, 1, backend="cuda")
    assert _is_on_device(grad)

    dropped, mask = fastconv.dropout(device.to_device(x), 0.5, seed=3,
                                     backend="cuda")
    expected, expected_mask = fastconv.dropout(x, 0.5, seed=3,
                                               backend="naive")
    assert _is_on_device(dropped)
    np.testing.assert_array_equal(dropped.copy_to_host(), expected)
    # the mask stays on the device too, with the CPU's bits
    assert _is_on_device(mask)
    np.testing.assert_array_equal(mask.copy_to_host(), expected_mask)
    back = fastconv.dropout_backward(device.to_device(x), mask, 0.5,
                                     backend="cuda")
    assert _is_on_device(back)
    np.testing.assert_array_equal(back.copy_to_host(), expected)


def test_non_contiguous_device_input(device, random_array, assert_close):
    # A strided slice (Numba's device arrays transpose only in 2-D).
    wide = random_array((2, 3, 5, 12), np.float32, "cuda-strided")
    strided = device.to_device(wide)[:, :, :, ::2]
    assert not strided.is_c_contiguous()
    y = fastconv.max_pool2d(strided, 2, backend="cuda")
    np.testing.assert_array_equal(
        y.copy_to_host(),
        fastconv.max_pool2d(wide[:, :, :, ::2], 2, backend="naive"))


def test_device_indices_out_of_range_raise(device):
    grad_output = np.ones((1, 1, 2, 2), np.float32)
    indices = device.to_device(np.array([[[[0, 1], [2, 99]]]], np.int64))
    with pytest.raises(ValueError, match="indices must lie in"):
        fastconv.max_pool2d_backward(grad_output, indices, (1, 1, 4, 4),
                                     backend="cuda")


def test_device_array_errors(device):
    x = device.to_device(np.ones((1, 1, 4, 4), np.float32))
    weight = np.ones((1, 1, 3, 3), np.float32)
    if "numba" in fastconv.available_backends():
        with pytest.raises(TypeError, match="x is a GPU array"):
            fastconv.conv2d(x, weight, backend="numba")
    with pytest.raises(TypeError, match="float32 or float64"):
        fastconv.conv2d(device.to_device(np.ones((1, 1, 4, 4), np.int32)),
                        weight, backend="cuda")
    with pytest.raises(ValueError, match="must be 4-D"):
        fastconv.max_pool2d(device.to_device(np.ones((4, 4), np.float32)), 2,
                            backend="cuda")
    with pytest.raises(TypeError, match="share a dtype"):
        fastconv.conv2d(x, weight.astype(np.float64), backend="cuda")
    with pytest.raises(TypeError, match="int64"):
        fastconv.max_pool2d_backward(
            np.ones((1, 1, 2, 2), np.float32),
            device.to_device(np.zeros((1, 1, 2, 2), np.int32)), (1, 1, 4, 4),
            backend="cuda")
    with pytest.raises(TypeError, match="bool"):
        fastconv.dropout_backward(
            x, device.to_device(np.ones((1, 1, 4, 4), np.float32)), 0.5,
            backend="cuda")


# ------------------------------------------------------ launch configuration

def test_another_tile_shape_gives_the_same_results(random_array,
                                                   assert_close, monkeypatch):
    """Kernels are rebuilt for a patched launch configuration (here square
    micro-tiles, one load per thread, a 2-thread reduction)."""
    x, weight, bias, options = _conv_args("many_filters_ragged_tiles",
                                          np.float64, random_array)
    before = fastconv.conv2d(x, weight, bias, backend="cuda", **options)
    grads_before = fastconv.conv2d_backward(np.ones_like(before), x, weight,
                                            backend="cuda", **options)
    for name, value in {"CUDA_CONV_TILE_M": 8, "CUDA_CONV_TILE_N": 4,
                        "CUDA_CONV_TILE_K": 2, "CUDA_CONV_MICRO_M": 4,
                        "CUDA_CONV_MICRO_N": 2, "CUDA_REDUCE_THREADS": 2,
                        "CUDA_THREADS_PER_BLOCK": 8}.items():
        monkeypatch.setattr(config, name, value)
    assert_close(fastconv.conv2d(x, weight, bias, backend="cuda", **options),
                 before)
    grads_after = fastconv.conv2d_backward(np.ones_like(before), x, weight,
                                           backend="cuda", **options)
    for after, previous in zip(grads_after, grads_before):
        assert_close(after, previous)


@pytest.mark.parametrize("name, value, message", [
    ("CUDA_CONV_MICRO_M", 3, "multiples"),
    ("CUDA_REDUCE_THREADS", 6, "power of two"),
    ("CUDA_THREADS_PER_BLOCK", 2048, "1024 threads"),
])
def test_bad_launch_configuration_is_refused(name, value, message,
                                             monkeypatch):
    monkeypatch.setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        fastconv.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2,
                            backend="cuda")


def test_unavailable_reasons(monkeypatch):
    assert cuda_backend.unavailable_reason() is None
    assert "cuda" in fastconv.available_backends()

    class NoGPU:
        @staticmethod
        def is_available():
            return False

    monkeypatch.setattr(cuda_backend, "cuda", NoGPU)
    assert "no CUDA GPU found" in cuda_backend.unavailable_reason()
    monkeypatch.setattr(cuda_backend, "cuda", None)
    monkeypatch.setattr(cuda_backend, "_IMPORT_PROBLEM",
                        "numba-cuda is not installed")
    assert "not installed" in cuda_backend.unavailable_reason()


# ----------------------------------- transposed and 1-D ops (conv2d kernels)

def test_conv2d_backward_without_weight_grad(random_array, assert_close):
    x, weight, _, options = _conv_args("strided_asymmetric", np.float64,
                                       random_array)
    grad_output = random_array(_output_shape(x, weight, options), np.float64,
                               "cuda-nwg", "strided_asymmetric")
    grads = fastconv.conv2d_backward(grad_output, x, weight,
                                     need_weight_grad=False, backend="cuda",
                                     **options)
    expected = fastconv.conv2d_backward(grad_output, x, weight,
                                        backend="naive", **options)
    assert grads[1] is None and grads[2] is None
    assert_close(grads[0], expected[0], what="grad_input")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_matches_naive(dtype, random_array, assert_close):
    x = random_array((2, 4, 3, 4), dtype, "cuda-tconv-x")
    weight = random_array((4, 3, 3, 2), dtype, "cuda-tconv-w")
    bias = random_array((6,), dtype, "cuda-tconv-b")
    options = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                   groups=2, dilation=(1, 2))
    y = fastconv.conv_transpose2d(x, weight, bias, backend="cuda", **options)
    assert_close(y, fastconv.conv_transpose2d(x, weight, bias,
                                              backend="naive", **options),
                 what="conv_transpose2d")
    grad_output = random_array(y.shape, dtype, "cuda-tconv-g")
    grads = fastconv.conv_transpose2d_backward(grad_output, x, weight,
                                               backend="cuda", **options)
    expected = fastconv.conv_transpose2d_backward(grad_output, x, weight,
                                                  backend="naive", **options)
    for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                    grads, expected):
        assert actual.dtype == dtype
        assert_close(actual, wanted, what=name)


def test_1d_ops_match_naive(random_array, assert_close):
    x = random_array((2, 3, 9), np.float64, "cuda-1d-x")
    weight = random_array((4, 3, 3), np.float64, "cuda-1d-w")
    conv = dict(stride=2, padding=(2, 1))
    y = fastconv.conv1d(x, weight, backend="cuda", **conv)
    assert_close(y, fastconv.conv1d(x, weight, backend="naive", **conv))
    grad_output = random_array(y.shape, np.float64, "cuda-1d-g")
    for actual, wanted in zip(
            fastconv.conv1d_backward(grad_output, x, weight, backend="cuda",
                                     **conv),
            fastconv.conv1d_backward(grad_output, x, weight, backend="naive",
                                     **conv)):
        assert_close(actual, wanted)
    pool = dict(kernel_size=3, stride=2, padding=(1, 0), ceil_mode=True)
    y, indices = fastconv.max_pool1d(x, **pool, return_indices=True,
                                     backend="cuda")
    y_ref, indices_ref = fastconv.max_pool1d(x, **pool, return_indices=True,
                                             backend="naive")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    assert_close(fastconv.avg_pool1d(x, **pool, count_include_pad=False,
                                     backend="cuda"),
                 fastconv.avg_pool1d(x, **pool, count_include_pad=False,
                                     backend="naive"))


# ------------------------------------------------- batch norm and activation

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_norm_and_relu_match_naive(dtype, random_array, assert_close):
    x = random_array((3, 2, 5, 3), dtype, "cuda-bn-x") + 2
    weight = random_array((2,), dtype, "cuda-bn-w")
    bias = random_array((2,), dtype, "cuda-bn-b")
    grad = random_array(x.shape, dtype, "cuda-bn-g")
    mean, var = functional.batch_norm_statistics(x, backend="cuda")
    mean_ref, var_ref = functional.batch_norm_statistics(x, backend="naive")
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=1e-12)
    y, mean_t, var_t = functional.batch_norm_training(x, weight, bias,
                                                      backend="cuda")
    np.testing.assert_array_equal(mean_t, mean)
    assert_close(y, functional.batch_norm_training(x, weight, bias,
                                                   backend="naive")[0],
                 what="batch_norm_training")
    assert_close(functional.batch_norm(x, mean, var, weight, bias,
                                       backend="cuda"),
                 functional.batch_norm(x, mean, var, weight, bias,
                                       backend="naive"), what="batch_norm")
    for batch_statistics in (True, False):
        grads = functional.batch_norm_backward(
            grad, x, mean, var, weight, batch_statistics=batch_statistics,
            backend="cuda")
        expected = functional.batch_norm_backward(
            grad, x, mean, var, weight, batch_statistics=batch_statistics,
            backend="naive")
        for actual, wanted in zip(grads, expected):
            assert actual.dtype == dtype
            assert_close(actual, wanted, what="batch_norm_backward")
    y = functional.relu(x - 2, backend="cuda")
    np.testing.assert_array_equal(y, functional.relu(x - 2, backend="naive"))
    np.testing.assert_array_equal(
        functional.relu_backward(grad, y, backend="cuda"),
        functional.relu_backward(grad, y, backend="naive"))
    # relu of a sum (a ResNet block's junction), the sum rounded once
    np.testing.assert_array_equal(
        functional.relu(x - 2, residual=grad, backend="cuda"),
        np.maximum((x - 2) + grad, 0))


def test_batch_norm_and_relu_keep_device_arrays_on_device(device,
                                                          random_array):
    x = random_array((2, 3, 4, 4), np.float32, "cuda-bn-device")
    on_device = device.to_device(x)
    mean, var = functional.batch_norm_statistics(on_device, backend="cuda")
    y = functional.batch_norm(on_device, mean, var, backend="cuda")
    assert not isinstance(y, np.ndarray) and tuple(y.shape) == x.shape
    np.testing.assert_allclose(
        y.copy_to_host(), functional.batch_norm(x, mean, var,
                                                backend="naive"),
        rtol=1e-5, atol=1e-5)
    relu = functional.relu(on_device, backend="cuda")
    assert not isinstance(relu, np.ndarray)
    np.testing.assert_array_equal(relu.copy_to_host(), np.maximum(x, 0))
    summed = functional.relu(on_device, residual=on_device, backend="cuda")
    assert not isinstance(summed, np.ndarray)
    np.testing.assert_array_equal(summed.copy_to_host(), np.maximum(x + x, 0))
