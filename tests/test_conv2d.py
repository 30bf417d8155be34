"""conv2d and conv2d_backward on every CPU backend.

Each backend is compared with the naive reference on a fixed grid of
geometries (stride, asymmetric padding, 'same' with even kernels, dilation,
groups, depthwise, batch 1, one channel, odd sizes, bias or not) and on
hypothesis-drawn ones; the naive reference itself is compared with PyTorch;
gradients are checked by central finite differences in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv

# PyTorch warns that 'same' with even kernels copies the input; that is fine.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# (id, x shape, weight shape, keyword arguments, with bias). Shapes stay small:
# the naive reference is pure Python loops.
CONV_CASES = [
    ("plain_bias", (2, 3, 7, 7), (4, 3, 3, 3), {}, True),
    ("batch1_one_channel", (1, 1, 5, 6), (1, 1, 3, 3), {}, False),
    ("stride2_pad1", (2, 3, 9, 9), (4, 3, 3, 3), dict(stride=2, padding=1), True),
    ("stride_pair_odd", (1, 2, 9, 8), (3, 2, 3, 2),
     dict(stride=(2, 3), padding=(1, 0)), False),
    ("pad_h_only", (1, 2, 7, 6), (2, 2, 3, 3), dict(padding=(2, 0)), True),
    ("pad_w_only_stride_w", (2, 1, 5, 7), (3, 1, 2, 3),
     dict(padding=(0, 1), stride=(1, 2)), False),
    ("dilation2_pad2", (2, 2, 9, 9), (3, 2, 3, 3), dict(dilation=2, padding=2),
     True),
    ("dilation_pair", (1, 2, 8, 9), (2, 2, 2, 3),
     dict(dilation=(3, 1), stride=(2, 1), padding=(0, 1)), False),
    ("groups2", (1, 4, 6, 6), (4, 2, 3, 3), dict(groups=2, padding=1), True),
    ("groups2_one_filter_each", (2, 4, 7, 5), (2, 2, 3, 3),
     dict(groups=2, stride=2), False),
    ("depthwise", (2, 4, 7, 7), (4, 1, 3, 3), dict(groups=4, padding=1), True),
    ("depthwise_multiplier_dilated", (1, 2, 6, 6), (4, 1, 3, 3),
     dict(groups=2, dilation=2, padding=2), False),
    ("depthwise_everything", (1, 3, 7, 7), (6, 1, 3, 3),
     dict(groups=3, stride=2, padding=(1, 2), dilation=(1, 2)), True),
    ("same_odd_kernel", (2, 3, 6, 5), (2, 3, 3, 3), dict(padding="same"), True),
    # Even kernels: 'same' puts the extra row/column at the bottom/right.
    ("same_even_kernel", (1, 2, 6, 7), (3, 2, 2, 4), dict(padding="same"), True),
    ("same_even_dilated", (1, 2, 7, 6), (2, 2, 2, 2),
     dict(padding="same", dilation=(3, 2)), False),
    ("valid_rect_kernel", (2, 2, 6, 7), (3, 2, 3, 2), dict(padding="valid"), True),
    ("kernel1_stride2", (2, 3, 7, 6), (4, 3, 1, 1), dict(stride=2), True),
    # Some windows lie wholly in the padding: their output is the bias.
    ("pad_exceeds_kernel", (1, 2, 4, 4), (2, 2, 3, 3), dict(padding=3), True),
    ("kernel_equals_input", (2, 3, 5, 5), (2, 3, 5, 5), {}, True),
    ("odd_filters_rect", (2, 3, 7, 5), (5, 3, 3, 1), dict(padding=(1, 0)), True),
    ("single_row_input", (1, 2, 1, 9), (2, 2, 1, 3), dict(stride=(1, 2)), False),
    ("stride_exceeds_kernel", (1, 2, 9, 9), (2, 2, 2, 2),
     dict(stride=3, padding=1), True),
]
CASE_IDS = [case[0] for case in CONV_CASES]
CASES_BY_ID = {case[0]: case for case in CONV_CASES}


def case_inputs(case_id, dtype, random_array, cases=None, label="conv"):
    """x, weight, bias (or None) and the keyword arguments of one case of
    ``cases`` (default ``CASES_BY_ID``); ``label`` seeds the values."""
    cases = CASES_BY_ID if cases is None else cases
    _, x_shape, weight_shape, kwargs, with_bias = cases[case_id]
    x = random_array(x_shape, dtype, f"{label} x", case_id)
    weight = random_array(weight_shape, dtype, f"{label} weight", case_id)
    bias = (random_array(weight_shape[0], dtype, f"{label} bias", case_id)
            if with_bias else None)
    return x, weight, bias, kwargs


def naive_forward(case_id, dtype, random_array, naive_cache):
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array)
    return naive_cache(
        ("conv2d", case_id, dtype.name),
        lambda: fastconv.conv2d(x, weight, bias, **kwargs, backend="naive"))


def case_grad_output(case_id, dtype, random_array, naive_cache):
    output_shape = naive_forward(case_id, dtype, random_array, naive_cache).shape
    return random_array(output_shape, dtype, "conv grad_output", case_id)


def naive_backward(case_id, dtype, random_array, naive_cache):
    x, weight, _, kwargs = case_inputs(case_id, dtype, random_array)
    grad_output = case_grad_output(case_id, dtype, random_array, naive_cache)
    return naive_cache(
        ("conv2d_backward", case_id, dtype.name),
        lambda: fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                         backend="naive"))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_forward_matches_naive(case_id, dtype, backend, random_array,
                               naive_cache, assert_close):
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array)
    expected = naive_forward(case_id, dtype, random_array, naive_cache)
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend=backend)
    assert y.dtype == dtype
    assert_close(y, expected, dtype, what=f"conv2d on {backend}")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_backward_matches_naive(case_id, dtype, backend, random_array,
                                naive_cache, assert_close):
    x, weight, _, kwargs = case_inputs(case_id, dtype, random_array)
    grad_output = case_grad_output(case_id, dtype, random_array, naive_cache)
    expected = naive_backward(case_id, dtype, random_array, naive_cache)
    grads = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                     backend=backend)
    for name, grad, want in zip(("grad_input", "grad_weight", "grad_bias"),
                                grads, expected):
        assert grad.dtype == dtype, name
        assert_close(grad, want, dtype, what=f"{name} on {backend}")

    # A first layer skips grad_input; the other two must not change.
    skipped = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                       need_input_grad=False, backend=backend)
    assert skipped[0] is None
    assert_close(skipped[1], expected[1], dtype, what="grad_weight, no input")
    assert_close(skipped[2], expected[2], dtype, what="grad_bias, no input")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_naive_matches_torch(case_id, dtype, torch, random_array, naive_cache,
                             assert_close):
    """The reference itself, forward and backward, against PyTorch autograd."""
    functional = torch.nn.functional
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array)
    grad_output = case_grad_output(case_id, dtype, random_array, naive_cache)
    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True)
    bias_t = None if bias is None else torch.tensor(bias, requires_grad=True)
    y_t = functional.conv2d(x_t, weight_t, bias_t, **kwargs)
    y_t.backward(torch.tensor(grad_output))

    y = naive_forward(case_id, dtype, random_array, naive_cache)
    grad_input, grad_weight, grad_bias = naive_backward(
        case_id, dtype, random_array, naive_cache)
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_input, x_t.grad.numpy(), dtype, what="grad_input vs torch")
    assert_close(grad_weight, weight_t.grad.numpy(), dtype,
                 what="grad_weight vs torch")
    expected_grad_bias = (grad_output.astype(np.float64).sum(axis=(0, 2, 3))
                          if bias_t is None else bias_t.grad.numpy())
    assert_close(grad_bias, expected_grad_bias, dtype, what="grad_bias vs torch")


@pytest.mark.parametrize("case_id", ["plain_bias", "same_even_kernel",
                                     "depthwise_everything", "dilation_pair"])
def test_backend_matches_torch(case_id, dtype, backend, torch, random_array,
                               assert_close):
    """Each backend directly against PyTorch on a few representative cases."""
    functional = torch.nn.functional
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array)
    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True)
    bias_t = None if bias is None else torch.tensor(bias)
    y_t = functional.conv2d(x_t, weight_t, bias_t, **kwargs)
    grad_output = random_array(tuple(y_t.shape), dtype, "torch grad", case_id)
    y_t.backward(torch.tensor(grad_output))

    y = fastconv.conv2d(x, weight, bias, **kwargs, backend=backend)
    grad_input, grad_weight, _ = fastconv.conv2d_backward(
        grad_output, x, weight, **kwargs, backend=backend)
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_input, x_t.grad.numpy(), dtype, what="grad_input vs torch")
    assert_close(grad_weight, weight_t.grad.numpy(), dtype,
                 what="grad_weight vs torch")


# Small float64 cases for finite differences (two forward calls per element).
FINITE_DIFFERENCE_CASES = [
    ("stride2_asym_pad", (1, 2, 5, 5), (2, 2, 3, 3),
     dict(stride=2, padding=(1, 2))),
    ("dilation_groups", (1, 4, 5, 6), (2, 2, 2, 2),
     dict(dilation=2, groups=2, padding=1)),
    ("same_even_batch2", (2, 1, 4, 5), (2, 1, 2, 2), dict(padding="same")),
    ("depthwise_stride_w", (1, 3, 4, 5), (3, 1, 3, 3),
     dict(groups=3, padding=1, stride=(1, 2))),
]


@pytest.mark.parametrize(
    "case", FINITE_DIFFERENCE_CASES, ids=[c[0] for c in FINITE_DIFFERENCE_CASES])
def test_backward_matches_finite_differences(case, backend, random_array,
                                             finite_difference, assert_close):
    case_id, x_shape, weight_shape, kwargs = case
    float64 = np.dtype(np.float64)
    x = random_array(x_shape, float64, "fd x", case_id)
    weight = random_array(weight_shape, float64, "fd weight", case_id)
    bias = random_array(weight_shape[0], float64, "fd bias", case_id)
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend=backend)
    # Loss = <y, grad_output>, whose gradient the backward pass computes.
    grad_output = random_array(y.shape, float64, "fd grad_output", case_id)

    def loss(x_value, weight_value, bias_value):
        out = fastconv.conv2d(x_value, weight_value, bias_value, **kwargs,
                              backend=backend)
        return float(np.sum(out * grad_output))

    grad_input, grad_weight, grad_bias = fastconv.conv2d_backward(
        grad_output, x, weight, **kwargs, backend=backend)
    numeric_input = finite_difference(lambda v: loss(v, weight, bias), x)
    numeric_weight = finite_difference(lambda v: loss(x, v, bias), weight)
    numeric_bias = finite_difference(lambda v: loss(x, weight, v), bias)
    assert_close(grad_input, numeric_input, rtol=1e-6, what="grad_input")
    assert_close(grad_weight, numeric_weight, rtol=1e-6, what="grad_weight")
    assert_close(grad_bias, numeric_bias, rtol=1e-6, what="grad_bias")


# ------------------------------------------------------- randomised geometry

@st.composite
def conv_geometries(draw):
    """(x shape, weight shape, keyword arguments, with bias), never empty."""
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding_kind == "same":
        stride = 1
        padding, pad_totals = "same", (0, 0)  # 'same' never shrinks the input
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if padding_kind == "valid":
            padding, pad_totals = "valid", (0, 0)
        elif padding_kind == "int":
            padding = draw(st.integers(0, 2))
            pad_totals = (2 * padding, 2 * padding)
        else:
            padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
            pad_totals = (2 * padding[0], 2 * padding[1])
    sizes = []
    for axis in range(2):
        effective_kernel = dilation[axis] * (kernel[axis] - 1) + 1
        smallest = max(1, effective_kernel - pad_totals[axis])
        if padding_kind == "same":
            smallest = 1
        sizes.append(smallest + draw(st.integers(0, 4)))
    batch = draw(st.integers(1, 2))
    x_shape = (batch, in_channels, *sizes)
    weight_shape = (out_channels, in_channels // groups, *kernel)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation,
                  groups=groups)
    return x_shape, weight_shape, kwargs, draw(st.booleans())


def _random_inputs(geometry, dtype, seed):
    x_shape, weight_shape, kwargs, with_bias = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(weight_shape).astype(dtype)
    bias = rng.standard_normal(weight_shape[0]).astype(dtype) if with_bias else None
    return x, weight, bias, kwargs, rng


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=conv_geometries(), seed=st.integers(0, 2**32 - 1))
def test_random_geometry_matches_naive(geometry, seed, dtype,
                                       compiled_backend, assert_close):
    x, weight, bias, kwargs, rng = _random_inputs(geometry, dtype, seed)
    expected = fastconv.conv2d(x, weight, bias, **kwargs, backend="naive")
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend=compiled_backend)
    assert_close(y, expected, dtype, what="y")
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    expected_grads = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                              backend="naive")
    grads = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                     backend=compiled_backend)
    for name, grad, want in zip(("grad_input", "grad_weight", "grad_bias"),
                                grads, expected_grads):
        assert_close(grad, want, dtype, what=name)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=conv_geometries(), seed=st.integers(0, 2**32 - 1))
def test_random_geometry_naive_matches_torch(geometry, seed, torch,
                                             assert_close):
    functional = torch.nn.functional
    x, weight, bias, kwargs, rng = _random_inputs(geometry, np.float64, seed)
    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True)
    y_t = functional.conv2d(x_t, weight_t,
                            None if bias is None else torch.tensor(bias),
                            **kwargs)
    grad_output = rng.standard_normal(tuple(y_t.shape))
    y_t.backward(torch.tensor(grad_output))
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend="naive")
    grad_input, grad_weight, grad_bias = fastconv.conv2d_backward(
        grad_output, x, weight, **kwargs, backend="naive")
    assert_close(y, y_t.detach().numpy(), what="y")
    assert_close(grad_input, x_t.grad.numpy(), what="grad_input")
    assert_close(grad_weight, weight_t.grad.numpy(), what="grad_weight")
    assert_close(grad_bias, grad_output.sum(axis=(0, 2, 3)), what="grad_bias")


def test_same_padding_even_kernel_pads_bottom_right(backend):
    """With a 2x2 kernel of ones, 'same' sums x[i:i+2, j:j+2] (extra pad after)."""
    x = np.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    weight = np.ones((1, 1, 2, 2))
    y = fastconv.conv2d(x, weight, padding="same", backend=backend)
    padded = np.pad(x[0, 0], ((0, 1), (0, 1)))
    expected = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:]
                + padded[1:, 1:])
    np.testing.assert_array_equal(y[0, 0], expected)


def test_identity_kernel_returns_input(dtype, backend):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(dtype)
    weight = np.zeros((3, 3, 3, 3), dtype=dtype)
    for channel in range(3):
        weight[channel, channel, 1, 1] = 1.0
    y = fastconv.conv2d(x, weight, padding=1, backend=backend)
    np.testing.assert_array_equal(y, x)


# ------------------------------------------ Numba's direct depthwise kernel
#
# One input channel per group (weight (K, 1, R, S)) runs the Numba backend's
# direct kernel (fastconv.backends._numba_depthwise) rather than im2col + GEMM.

DEPTHWISE_CASES = [
    # (id, x shape, weight shape, keyword arguments, with bias)
    ("plain", (2, 3, 9, 10), (3, 1, 3, 3), dict(groups=3, padding=1), True),
    ("stride2", (2, 4, 11, 12), (4, 1, 3, 3),
     dict(groups=4, stride=2, padding=1), False),
    ("stride_pair_dilated", (1, 2, 13, 14), (2, 1, 3, 2),
     dict(groups=2, stride=(2, 3), dilation=(2, 3), padding=(2, 1)), True),
    ("dilated_rows", (1, 3, 10, 9), (3, 1, 3, 4),
     dict(groups=3, dilation=(2, 1), padding=(2, 1)), True),
    ("same_even_kernel", (1, 2, 7, 8), (2, 1, 4, 2),
     dict(groups=2, padding="same"), True),
    ("same_dilated", (2, 2, 8, 9), (2, 1, 3, 5),
     dict(groups=2, padding="same", dilation=(1, 2)), False),
    ("multiplier3", (2, 2, 7, 8), (6, 1, 3, 3),
     dict(groups=2, padding=(1, 2)), True),
    ("single_plane", (1, 1, 17, 19), (1, 1, 5, 5), dict(padding=2), True),
    ("single_plane_strided", (1, 1, 16, 21), (1, 1, 3, 4),
     dict(stride=(3, 2), padding=(0, 3)), False),
    ("image_smaller_than_kernel", (1, 2, 2, 3), (2, 1, 5, 5),
     dict(groups=2, padding=3), True),
    ("window_in_padding_only", (1, 1, 1, 1), (1, 1, 3, 3),
     dict(padding=4), True),
    ("kernel_wider_than_row", (2, 3, 4, 2), (3, 1, 1, 7),
     dict(groups=3, padding=(0, 3)), False),
    ("valid_1x1", (2, 3, 5, 6), (3, 1, 1, 1), dict(groups=3), True),
    ("long_kernel_rows", (1, 2, 6, 40), (4, 1, 2, 11),
     dict(groups=2, padding=(1, 5), dilation=(1, 2)), True),
]
DEPTHWISE_IDS = [case[0] for case in DEPTHWISE_CASES]
DEPTHWISE_BY_ID = {case[0]: case for case in DEPTHWISE_CASES}


@pytest.fixture
def numba_backend():
    from fastconv.backends import is_available

    if not is_available("numba"):
        pytest.skip("the numba backend is not available here")
    from fastconv.backends import numba_cpu

    return numba_cpu


@pytest.fixture
def depthwise_calls(numba_backend, monkeypatch):
    """Counts the calls of the direct depthwise kernel, so a test can check
    that its conv2d did not run on the im2col path."""
    calls = []
    kernel = numba_backend.depthwise_forward_kernel

    def counted(*args):
        calls.append(args[4])  # the geometry
        return kernel(*args)

    monkeypatch.setattr(numba_backend, "depthwise_forward_kernel", counted)
    return calls


def depthwise_inputs(case_id, dtype, random_array):
    return case_inputs(case_id, dtype, random_array, DEPTHWISE_BY_ID,
                       "depthwise")


@pytest.mark.parametrize("loops", ["tap_by_tap", "fused_taps",
                                   "padded_planes"])
@pytest.mark.parametrize("case_id", DEPTHWISE_IDS)
def test_numba_depthwise_kernel_matches_naive(case_id, loops, dtype,
                                              random_array, numba_backend,
                                              depthwise_calls, monkeypatch,
                                              assert_close):
    # Every inner loop on every case it applies to: rows one tap at a time,
    # three taps per sweep (normally from rows 512 wide), and whole
    # zero-padded planes (stride 1 only; normally up to 128 x 128).
    monkeypatch.setattr(numba_backend, "DEPTHWISE_FUSED_TAPS_MIN_WIDTH",
                        0 if loops == "fused_taps" else 2**62)
    monkeypatch.setattr(numba_backend, "DEPTHWISE_PADDED_PLANE_MAX",
                        2**62 if loops == "padded_planes" else 0)
    x, weight, bias, kwargs = depthwise_inputs(case_id, dtype, random_array)
    expected = fastconv.conv2d(x, weight, bias, **kwargs, backend="naive")
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend="numba")
    assert len(depthwise_calls) == 1, "conv2d did not run the direct kernel"
    assert y.dtype == dtype
    assert_close(y, expected, dtype, what=f"depthwise {case_id}")


def test_numba_depthwise_matches_torch(torch, random_array, numba_backend,
                                       depthwise_calls, assert_close):
    x, weight, bias, kwargs = depthwise_inputs("stride_pair_dilated",
                                               np.dtype(np.float64),
                                               random_array)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
        **kwargs).numpy()
    assert_close(fastconv.conv2d(x, weight, bias, **kwargs, backend="numba"),
                 expected, what="depthwise vs torch")
    assert depthwise_calls


@pytest.mark.parametrize("tile_rows", [1, 2, 3, 7, 100])
def test_numba_depthwise_row_tiles_cover_the_plane(tile_rows, dtype,
                                                   random_array,
                                                   numba_backend,
                                                   assert_close):
    """A single plane split into row tiles (what two or more threads get),
    whatever the thread count of this machine: every tile size, a last tile
    shorter than the others included, gives the whole result."""
    from fastconv import _shapes

    x = random_array((1, 1, 23, 31), dtype, "tiles x")
    weight = random_array((1, 1, 3, 5), dtype, "tiles weight")
    bias = random_array(1, dtype, "tiles bias")
    expected = fastconv.conv2d(x, weight, bias, stride=(2, 1),
                               padding=(1, 2), backend="naive")
    g = numba_backend._as_ints(_shapes.conv_geometry(
        x.shape, weight.shape, (2, 1), (1, 2, 1, 2), (1, 1), 1))
    y = np.full(g.output_shape, np.nan, dtype=dtype)
    numba_backend.depthwise_forward_kernel(
        x.reshape(-1), weight.reshape(-1), bias, y.reshape(-1), g, tile_rows,
        True, False)
    assert_close(y, expected, dtype, what=f"tiles of {tile_rows} rows")


def test_numba_depthwise_splits_a_single_plane_among_threads(numba_backend):
    from fastconv import _shapes

    g = _shapes.conv_geometry((1, 1, 2048, 2048), (1, 1, 3, 3), (1, 1),
                              (1, 1, 1, 1), (1, 1), 1)
    assert numba_backend._depthwise_tile_rows(g, 2) == 1024
    assert numba_backend._depthwise_tile_rows(g, 1) == 2048
    # 3 planes on 2 threads: 6 half planes share evenly; 32 planes do already
    g3 = g._replace(in_channels=3, out_channels=3, groups=3)
    assert numba_backend._depthwise_tile_rows(g3, 2) == 1024
    g32 = g._replace(batch=32)
    assert numba_backend._depthwise_tile_rows(g32, 2) == 2048


def test_numba_depthwise_takes_strided_input(dtype, random_array,
                                             numba_backend, depthwise_calls,
                                             assert_close):
    base = random_array((2, 6, 15, 16), dtype, "strided depthwise")
    x = base[:, ::2, 1::2, ::-1]                 # (2, 3, 7, 16), not contiguous
    weight = random_array((3, 1, 3, 3), dtype, "strided depthwise weight")
    expected = fastconv.conv2d(np.ascontiguousarray(x), weight, padding=1,
                               groups=3, backend="naive")
    y = fastconv.conv2d(x, weight, padding=1, groups=3, backend="numba")
    assert depthwise_calls
    assert_close(y, expected, dtype, what="strided input")


def test_numba_depthwise_keeps_a_non_finite_pixel_in_its_windows(
        numba_backend, depthwise_calls):
    """The kernel skips padded taps and multiplies only real pixels, so an
    inf pixel makes inf or NaN exactly the outputs whose windows hold it."""
    x = np.ones((1, 1, 9, 9))
    x[0, 0, 4, 6] = np.inf
    weight = np.ones((1, 1, 3, 3))
    y = fastconv.conv2d(x, weight, padding=1, backend="numba")
    expected_bad = np.zeros((9, 9), dtype=bool)
    expected_bad[3:6, 5:8] = True
    np.testing.assert_array_equal(~np.isfinite(y[0, 0]), expected_bad)
    assert depthwise_calls


def test_many_filters_per_channel_use_im2col(random_array, numba_backend,
                                             depthwise_calls, assert_close):
    """Above DEPTHWISE_MAX_MULTIPLIER filters per input channel (an MNIST
    first layer: 1 channel, 32 filters) the GEMM path is the faster one."""
    multiplier = numba_backend.DEPTHWISE_MAX_MULTIPLIER + 1
    x = random_array((2, 2, 6, 6), np.dtype(np.float64), "multiplier x")
    weight = random_array((2 * multiplier, 1, 3, 3), np.dtype(np.float64),
                          "multiplier w")
    y = fastconv.conv2d(x, weight, padding=1, groups=2, backend="numba")
    assert not depthwise_calls
    assert_close(y, fastconv.conv2d(x, weight, padding=1, groups=2,
                                    backend="naive"), what="im2col path")
    fastconv.conv2d(x, weight[:2 * (multiplier - 1)], padding=1, groups=2,
                    backend="numba")
    assert len(depthwise_calls) == 1


def test_grouped_conv_with_several_channels_per_group_uses_im2col(
        random_array, numba_backend, depthwise_calls, assert_close):
    x = random_array((1, 4, 6, 6), np.dtype(np.float64), "grouped x")
    weight = random_array((4, 2, 3, 3), np.dtype(np.float64), "grouped w")
    y = fastconv.conv2d(x, weight, padding=1, groups=2, backend="numba")
    assert not depthwise_calls
    assert_close(y, fastconv.conv2d(x, weight, padding=1, groups=2,
                                    backend="naive"), what="groups=2")


def _check_need_bias_grad(shape, weight_shape, stride, dtype, backend,
                          random_array, count_calls):
    x = random_array(shape, dtype, "nbg-x", shape)
    weight = random_array(weight_shape, dtype, "nbg-w", shape) * 0.1
    grad = random_array(fastconv.conv2d(x, weight, stride=stride, padding=1,
                                        backend=backend).shape, dtype,
                        "nbg-g", shape)
    full = fastconv.conv2d_backward(grad, x, weight, stride, 1,
                                    backend=backend)
    sums = None
    if backend in ("cython", "auto") and fastconv.backends.is_available(
            "cython"):
        from fastconv.backends import cython_cpu
        sums = count_calls(cython_cpu, "_bias_grad")
    without = fastconv.conv2d_backward(grad, x, weight, stride, 1,
                                       need_bias_grad=False, backend=backend)
    assert without[2] is None
    np.testing.assert_array_equal(without[0], full[0])
    np.testing.assert_array_equal(without[1], full[1])
    if sums is not None:
        assert sums["count"] == 0
    frozen = fastconv.conv2d_backward(grad, x, weight, stride, 1,
                                      need_weight_grad=False, backend=backend)
    assert frozen[1] is None and frozen[2] is None


@pytest.mark.parametrize("stride", [1, 2])
def test_need_bias_grad_false_returns_none_and_the_same_rest(
        stride, dtype, backend, random_array, count_calls):
    """A layer without bias skips its gradient's sum; grad_input and
    grad_weight are the bits of the full call (direct, im2col, strided)."""
    _check_need_bias_grad((2, 4, 9, 9), (6, 4, 3, 3), stride, dtype, backend,
                          random_array, count_calls)


def test_need_bias_grad_false_on_winograd_layers(dtype, compiled_backend,
                                                 random_array, count_calls):
    _check_need_bias_grad((2, 64, 10, 10), (64, 64, 3, 3), 1, dtype,
                          compiled_backend, random_array, count_calls)
