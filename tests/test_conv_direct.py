"""The Cython backend's register-blocked direct convolution
(``_cython/direct_conv.h``), which 'auto' runs for float32 convolutions that
are neither Winograd nor depthwise.

Every case asserts that the kernel ran (a counting wrapper), then compares
it with the naive reference in float64 and with PyTorch when installed, on
randomised shapes that cross its edges: partial vectors and chunks of
output channels, bands with padding, strides and dilations, groups, the
pointwise mode and its shifted last vector.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _shapes

cython_cpu = pytest.importorskip("fastconv.backends.cython_cpu")
if cython_cpu.unavailable_reason() is not None:
    pytest.skip(cython_cpu.unavailable_reason(), allow_module_level=True)
if not cython_cpu._direct_parameters()[0]:
    pytest.skip("the direct kernel needs a C compiler with vector extensions",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def pointwise_on_the_direct_kernel(monkeypatch):
    """Pointwise layers on the direct kernel on every build (an AVX2 build
    gives their forward and weight gradient to GEMM by default:
    cython_cpu.NARROW_POINTWISE_GEMM, tested on its own below)."""
    monkeypatch.setattr(cython_cpu, "NARROW_POINTWISE_GEMM", False)


@pytest.fixture
def direct_calls(monkeypatch, count_calls):
    """Counts the calls of the direct path: {'count': n}."""
    monkeypatch.delenv(cython_cpu.CONV_ALGO_ENV, raising=False)
    return count_calls(cython_cpu, "_direct_forward")


@pytest.fixture
def weight_grad_calls(monkeypatch, count_calls):
    """Counts the calls of the direct weight gradient: {'count': n}."""
    monkeypatch.delenv(cython_cpu.CONV_ALGO_ENV, raising=False)
    return count_calls(cython_cpu, "_direct_weight_grad")


def _geometry(x, weight, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, int):
        padding = (padding,) * 4
    return _shapes.conv_geometry(x.shape, weight.shape, (stride, stride),
                                 padding, (dilation, dilation), groups)


def _random_case(rng):
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    # one channel per group (and few filters) is depthwise, its own kernel
    channels = groups * int(rng.integers(2, 7))
    filters = groups * int(rng.integers(cython_cpu.DIRECT_MIN_FILTERS, 21))
    kernel = int(rng.choice([1, 2, 3, 5, 7]))
    stride = int(rng.integers(1, 4))
    dilation = int(rng.choice([1, 1, 2]))
    reach = (kernel - 1) * dilation + 1
    padding = tuple(int(p) for p in rng.integers(0, kernel, size=4))
    height = int(rng.integers(max(1, reach - padding[0] - padding[2]), 24))
    width = int(rng.integers(max(1, reach - padding[1] - padding[3]), 40))
    batch = int(rng.integers(1, 4))
    return (batch, channels, height, width, filters, kernel, stride, padding,
            dilation, groups)


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_match_the_naive_reference(seed, direct_calls):
    rng = np.random.default_rng(seed)
    (batch, channels, height, width, filters, kernel, stride, padding,
     dilation, groups) = _random_case(rng)
    x = rng.standard_normal((batch, channels, height, width))
    weight = rng.standard_normal((filters, channels // groups, kernel,
                                  kernel))
    bias = rng.standard_normal(filters) if seed % 2 else None
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    g = _geometry(x, weight, stride, padding, dilation, groups)
    # (a 1x1 strided layer without padding runs pointwise on its
    # subsampled input, through the same kernel)
    assert cython_cpu.conv2d_method(g) in ("direct-blocked",
                                           "subsampled-direct-blocked")
    expected = fastconv.conv2d(x, weight, bias, stride=stride, padding=pads,
                               dilation=dilation, groups=groups,
                               backend="naive")
    got = fastconv.conv2d(
        x.astype(np.float32), weight.astype(np.float32),
        None if bias is None else bias.astype(np.float32), stride=stride,
        padding=pads, dilation=dilation, groups=groups, backend="cython")
    assert direct_calls["count"] == 1
    assert got.dtype == np.float32 and got.shape == expected.shape
    scale = np.abs(expected).max() + 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("case", [
    # (N, C, H, W, K, kernel, stride, padding): the benchmark's shapes, small
    (2, 3, 32, 32, 32, 3, 1, 1),
    (2, 64, 16, 16, 40, 3, 2, 1),
    (2, 1, 28, 28, 32, 3, 1, 1),
    (1, 3, 45, 45, 16, 7, 2, 3),
    (3, 17, 9, 7, 9, 1, 1, 0),          # pointwise, shifted last vector
    (2, 5, 3, 4, 11, 1, 1, 0),          # pointwise, plane < one vector
    (1, 8, 20, 20, 8, 1, 2, 0),         # strided 1x1
])
def test_against_pytorch(case, direct_calls):
    torch = pytest.importorskip("torch")
    batch, channels, height, width, filters, kernel, stride, padding = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((batch, channels, height, width)).astype(
        np.float32)
    weight = rng.standard_normal((filters, channels, kernel, kernel)).astype(
        np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    got = fastconv.conv2d(x, weight, bias, stride=stride, padding=padding,
                          backend="cython")
    assert direct_calls["count"] == 1
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
        stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_same_bits_for_any_thread_count(monkeypatch, direct_calls):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 24, 19, 37)).astype(np.float32)
    weight = rng.standard_normal((20, 24, 3, 3)).astype(np.float32)
    results = []
    for threads in (1, 2, 3, 5):
        # the thread count the kernel gets, whatever the machine's cores
        monkeypatch.setattr(cython_cpu, "_num_threads",
                            lambda _, n=threads: n)
        for _ in range(2):
            results.append(fastconv.conv2d(x, weight, stride=2, padding=1,
                                           backend="cython"))
    assert direct_calls["count"] == len(results)
    for result in results[1:]:
        assert np.array_equal(result, results[0])


def test_nan_and_inf_propagate_like_the_reference(direct_calls):
    x = np.ones((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 0, 5, 5] = np.inf
    weight = np.ones((3, 2, 3, 3), np.float32)
    got = fastconv.conv2d(x, weight, padding=1, backend="cython")
    expected = fastconv.conv2d(x.astype(np.float64),
                               weight.astype(np.float64), padding=1,
                               backend="naive")
    assert direct_calls["count"] == 1
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))


def test_input_and_weight_are_not_modified(direct_calls):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 10, 10)).astype(np.float32)
    weight = rng.standard_normal((9, 4, 3, 3)).astype(np.float32)
    x_copy, weight_copy = x.copy(), weight.copy()
    fastconv.conv2d(x, weight, padding=2, dilation=2, backend="cython")
    assert direct_calls["count"] == 1
    assert np.array_equal(x, x_copy) and np.array_equal(weight, weight_copy)


def test_gemm_switch_float64_one_filter_and_huge_bands_run_im2col(monkeypatch,
                                                           direct_calls):
    x = np.ones((1, 4, 12, 12), np.float32)
    weight = np.ones((8, 4, 3, 3), np.float32)
    g = _geometry(x, weight, 2, 1)
    monkeypatch.setenv(cython_cpu.CONV_ALGO_ENV, "gemm")
    assert cython_cpu.conv2d_method(g) == "im2col-gemm"
    via_gemm = fastconv.conv2d(x, weight, stride=2, padding=1,
                               backend="cython")
    assert direct_calls["count"] == 0
    monkeypatch.setenv(cython_cpu.CONV_ALGO_ENV, "direct")
    assert cython_cpu.conv2d_method(g) == "direct-blocked"
    np.testing.assert_allclose(
        fastconv.conv2d(x, weight, stride=2, padding=1, backend="cython"),
        via_gemm, rtol=1e-6)
    assert direct_calls["count"] == 1
    assert cython_cpu.conv2d_method(g, np.float64) == "im2col-gemm"
    one_filter = _geometry(x, weight[:1], 2, 1)
    assert cython_cpu.conv2d_method(one_filter) == "im2col-gemm"
    monkeypatch.setattr(cython_cpu, "DIRECT_MAX_BAND_BYTES", 64)
    assert cython_cpu.conv2d_method(g) == "im2col-gemm"


def test_layer_never_serves_stale_packed_weights(direct_calls):
    rng = np.random.default_rng(5)
    layer = fastconv.nn.Conv2d(6, 10, 3, stride=2, padding=1)
    x = rng.standard_normal((2, 6, 11, 11)).astype(np.float32)
    with fastconv.use_backend("cython"):
        first = layer(x)
        layer.weight.data *= 2                     # in place, as optimizers do
        second = layer(x)
    assert direct_calls["count"] == 2
    expected = fastconv.conv2d(x, layer.weight.data, layer.bias.data,
                               stride=2, padding=1, backend="naive")
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, second)


def test_bands_stay_within_their_budget():
    """_direct_rows keeps a band of several rows within DIRECT_BAND_BYTES
    (a wide, deep layer gets one row per item)."""
    x = np.zeros((1, 512, 40, 300), np.float32)
    weight = np.zeros((8, 512, 3, 3), np.float32)
    g = _geometry(x, weight, 1, 1)
    for threads in (1, 2, 8):
        rows = cython_cpu._direct_rows(g, threads)
        assert rows >= 1
        if rows > 1:
            assert (cython_cpu._direct_band(g, rows)[2] * 4
                    <= cython_cpu.DIRECT_BAND_BYTES)


@pytest.mark.parametrize("shape", [(1, 96, 14, 14, 576), (1, 576, 14, 14, 96),
                                   (1, 64, 28, 28, 128), (2, 32, 9, 31, 16)])
def test_work_items_are_even(shape):
    """The rows (pointwise: vectors) of a plane are cut into runs of even
    length: no run is more than one shorter than another, and there are
    no more runs than the budgets alone would make."""
    batch, channels, height, width, filters = shape
    for kernel in (1, 3):
        x = np.zeros((batch, channels, height, width), np.float32)
        weight = np.zeros((filters, channels, kernel, kernel), np.float32)
        g = _geometry(x, weight, 1, kernel // 2)
        lanes = cython_cpu._direct_parameters()[1]
        total = (-(-height * width // lanes) if cython_cpu._direct_pointwise(g)
                 else height)
        for threads in (1, 2, 4):
            rows = cython_cpu._direct_rows(g, threads)
            runs = -(-total // rows)
            assert total - (runs - 1) * rows >= rows - runs, (kernel, rows)
            assert cython_cpu._even_runs(total, rows) == rows
    assert cython_cpu._even_runs(13, 6) == 5
    assert cython_cpu._even_runs(12, 6) == 6
    assert cython_cpu._even_runs(7, 100) == 7


def _check_input_gradient(rng, x, weight, conv, direct_calls):
    """cython's float32 grad_input through the direct path against the
    naive float64 reference."""
    grad_output = rng.standard_normal(
        fastconv.conv2d(x, weight, **conv, backend="naive").shape)
    expected, _, _ = fastconv.conv2d_backward(grad_output, x, weight, **conv,
                                              backend="naive")
    got, _, _ = fastconv.conv2d_backward(
        grad_output.astype(np.float32), x.astype(np.float32),
        weight.astype(np.float32), **conv, backend="cython")
    assert direct_calls["count"] >= 1
    scale = np.abs(expected).max() + 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("seed", range(12))
def test_stride1_input_gradient_runs_the_kernel(seed, direct_calls):
    """grad_input of a stride-1 convolution is the forward convolution of
    grad_output with the flipped filters (channels swapped per group)."""
    rng = np.random.default_rng(100 + seed)
    groups = int(rng.choice([1, 2]))
    channels = groups * int(rng.integers(2, 6))
    filters = groups * int(rng.integers(2, 12))
    kernel = int(rng.choice([1, 3, 5]))
    dilation = int(rng.choice([1, 2]))
    reach = (kernel - 1) * dilation
    padding = tuple(int(p) for p in rng.integers(0, reach + 1, size=4))
    x = rng.standard_normal((2, channels, 13 + reach, 21 + reach))
    weight = rng.standard_normal((filters, channels // groups, kernel,
                                  kernel))
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    conv = dict(padding=pads, dilation=dilation, groups=groups)
    _check_input_gradient(rng, x, weight, conv, direct_calls)


@pytest.mark.parametrize("layout", ["filter_lanes", "pixel_lanes"])
@pytest.mark.parametrize("seed", range(12))
def test_weight_gradient_runs_the_kernel(seed, layout, monkeypatch,
                                        weight_grad_calls):
    """grad_weight through the register-blocked kernel, in each layout
    (filters in vector lanes, taps broadcast from the band; or output
    pixels in the lanes, rows masked at their ends), against the naive
    reference, with the same bits for any thread count."""
    pixel_lanes = layout == "pixel_lanes"
    monkeypatch.setattr(cython_cpu, "_pixel_lane_weight_grad",
                        lambda g: pixel_lanes)
    rng = np.random.default_rng(200 + seed)
    (batch, channels, height, width, filters, kernel, stride, padding,
     dilation, groups) = _random_case(rng)
    x = rng.standard_normal((batch, channels, height, width))
    weight = rng.standard_normal((filters, channels // groups, kernel,
                                  kernel))
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    conv = dict(stride=stride, padding=pads, dilation=dilation,
                groups=groups)
    grad_output = rng.standard_normal(
        fastconv.conv2d(x, weight, **conv, backend="naive").shape)
    _, expected, expected_bias = fastconv.conv2d_backward(
        grad_output, x, weight, **conv, backend="naive")
    g = _geometry(x, weight, stride, padding, dilation, groups)
    args = (grad_output.astype(np.float32), x.astype(np.float32), g)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(cython_cpu, "_num_threads",
                            lambda _, n=threads: n)
        grad_weight, grad_bias = cython_cpu._direct_weight_grad_and_bias(
            *args)
        results.append(grad_weight)
    assert weight_grad_calls["count"] == 3
    scale = np.abs(expected).max() + 1
    np.testing.assert_allclose(results[0], expected, rtol=0,
                               atol=4e-6 * scale)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=1e-5,
                               atol=1e-5)
    for result in results[1:]:
        assert np.array_equal(result, results[0])


def test_backward_without_input_gradient_uses_the_weight_kernel(
        weight_grad_calls):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
    weight = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    grad_output = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    grad_input, grad_weight, _ = fastconv.conv2d_backward(
        grad_output, x, weight, padding=1, backend="cython")
    assert weight_grad_calls["count"] == 1 and grad_input.shape == x.shape
    _, expected, _ = fastconv.conv2d_backward(
        grad_output.astype(np.float64), x.astype(np.float64),
        weight.astype(np.float64), padding=1, backend="naive")
    np.testing.assert_allclose(grad_weight, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("seed", range(16))
def test_strided_input_gradient_runs_one_convolution_per_phase(seed,
                                                              direct_calls):
    """grad_input of a strided convolution: one stride-1 convolution of
    grad_output per phase of the input (the taps that reach it), the phases
    interleaved; phases no tap reaches are zero."""
    rng = np.random.default_rng(300 + seed)
    groups = int(rng.choice([1, 2]))
    channels = groups * int(rng.integers(2, 6))
    filters = groups * int(rng.integers(2, 12))
    kernel = int(rng.choice([1, 2, 3, 5, 7]))
    stride = int(rng.integers(2, 5))
    dilation = int(rng.choice([1, 2, 3]))
    reach = (kernel - 1) * dilation
    padding = tuple(int(p) for p in rng.integers(0, kernel, size=4))
    x = rng.standard_normal((2, channels, int(rng.integers(reach + 1, 30)),
                             int(rng.integers(reach + 1, 40))))
    weight = rng.standard_normal((filters, channels // groups, kernel,
                                  kernel))
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    conv = dict(stride=stride, padding=pads, dilation=dilation,
                groups=groups)
    _check_input_gradient(rng, x, weight, conv, direct_calls)


@pytest.mark.parametrize("lanes_in", ["pixels", "channels"])
@pytest.mark.parametrize("seed", range(20))
def test_both_lane_layouts_match_the_reference(seed, lanes_in, monkeypatch,
                                               direct_calls):
    """Output pixels or output channels in the vector lanes (forced): the
    same convolution either way."""
    if (lanes_in == "channels"
            and not cython_cpu._direct.channel_vectors_available()):
        pytest.skip("the channel-vectorised kernel needs AVX-512")
    monkeypatch.setattr(cython_cpu, "DIRECT_CV_BELOW_LANE_USE",
                        2.0 if lanes_in == "channels" else 0.0)
    monkeypatch.setattr(cython_cpu, "DIRECT_CV_STRIDED_MIN_TAPS",
                        0 if lanes_in == "channels" else 10 ** 9)
    rng = np.random.default_rng(400 + seed)
    (batch, channels, height, width, filters, kernel, stride, padding,
     dilation, groups) = _random_case(rng)
    filters = groups * int(rng.integers(2, 40))
    x = rng.standard_normal((batch, channels, height, width))
    weight = rng.standard_normal((filters, channels // groups, kernel,
                                  kernel))
    bias = rng.standard_normal(filters)
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    conv = dict(stride=stride, padding=pads, dilation=dilation,
                groups=groups)
    g = _geometry(x, weight, stride, padding, dilation, groups)
    expected_cv = (lanes_in == "channels"
                   and not cython_cpu._direct_pointwise(g))
    assert cython_cpu._uses_channel_vectors(g) == expected_cv
    expected = fastconv.conv2d(x, weight, bias, **conv, backend="naive")
    got = fastconv.conv2d(x.astype(np.float32), weight.astype(np.float32),
                          bias.astype(np.float32), **conv, backend="cython")
    assert direct_calls["count"] == 1
    scale = np.abs(expected).max() + 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("shape, filters, kernel, stride", [
    ((1, 64, 5, 5), 200, 3, 1),       # channels in lanes (rows of 5)
    ((1, 48, 20, 20), 96, 3, 1),      # pixels in lanes
    ((1, 64, 9, 9), 72, 3, 2),
    ((1, 256, 7, 7), 512, 1, 1),      # pointwise
])
def test_small_planes_with_many_filters_split_the_filters(
        shape, filters, kernel, stride, direct_calls):
    """Where a group's filters outweigh an item's band, the threads share
    the filter chunks (each item reads only its own) instead of the rows."""
    rng = np.random.default_rng(sum(shape) + filters)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = (rng.standard_normal((filters, shape[1], kernel, kernel))
              / np.sqrt(shape[1] * kernel * kernel)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    padding = kernel // 2
    g = _geometry(x, weight, stride, padding)
    if cython_cpu._uses_channel_vectors(g):
        chunk_runs = cython_cpu._cv_plan(g, 2)[-1]
    else:
        chunk_runs = cython_cpu._direct_plan(g, 2)[-1]
    assert chunk_runs > 1
    got = fastconv.conv2d(x, weight, bias, stride=stride, padding=padding,
                          backend="cython")
    assert direct_calls["count"] == 1
    expected = fastconv.conv2d(x.astype(np.float64), weight.astype(np.float64),
                               bias.astype(np.float64), stride=stride,
                               padding=padding, backend="naive")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_constant_weight_skips_the_comparison_while_read_only():
    from fastconv._packed import PackedWeights

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    packed = PackedWeights(constant=weight)
    assert not weight.flags.writeable
    computed = []

    def compute():
        computed.append(1)
        return weight * 2

    np.testing.assert_array_equal(packed.get(weight, "k", compute), weight * 2)
    packed.get(weight, "k", compute)
    assert len(computed) == 1
    # made writeable and changed: compared again, recomputed
    weight.flags.writeable = True
    weight[0, 0] = 100
    np.testing.assert_array_equal(packed.get(weight, "k", compute)[0, 0], 200)
    assert len(computed) == 2
    # another array with the same values is compared, not trusted
    other = weight.copy()
    other[1, 1] = -1
    packed.get(other, "k", compute)
    assert len(computed) == 3


@pytest.mark.parametrize("plane", [(5, 5), (3, 7), (4, 4), (6, 9)])
def test_pointwise_shifted_last_vector_with_channel_blocks(plane,
                                                           direct_calls):
    """A pointwise plane that is not a whole number of vectors, with enough
    channels for several channel blocks: the shifted last vector must add
    each block's sums once (it writes only the lanes past the vector before
    it)."""
    rng = np.random.default_rng(plane[0] * 10 + plane[1])
    x = rng.standard_normal((2, 300) + plane).astype(np.float32)
    weight = (rng.standard_normal((12, 300, 1, 1)) / 17).astype(np.float32)
    g = _geometry(x, weight)
    assert cython_cpu._direct_pointwise(g)
    assert cython_cpu._direct_plan(g, 2)[6] < 300       # several blocks
    got = fastconv.conv2d(x, weight, backend="cython")
    assert direct_calls["count"] == 1
    expected = fastconv.conv2d(x.astype(np.float64), weight.astype(np.float64),
                               backend="naive")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, weight_shape, pixel_lanes", [
    ((3, 1, 28, 29), (32, 1, 3, 3), True),    # an MNIST first layer
    ((2, 3, 30, 32), (13, 3, 3, 3), True),    # RGB, filters not whole tiles
    ((2, 3, 14, 14), (16, 3, 3, 3), False),   # narrow rows: filter lanes
    ((2, 16, 32, 32), (24, 16, 1, 1), True),  # 1x1 of 16 channels
    ((2, 16, 20, 20), (16, 16, 3, 3), False),
])
def test_weight_gradient_layout_rule(shape, weight_shape, pixel_lanes,
                                     count_calls):
    """The rule picks the pixel-lane layout for few taps on wide rows, and
    either layout gives the reference's gradient."""
    calls = count_calls(cython_cpu._direct, "conv2d_direct_weight_grad")
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    padding = weight_shape[2] // 2
    g = _geometry(x, weight, padding=padding)
    assert cython_cpu._pixel_lane_weight_grad(g) is pixel_lanes
    grad_output = rng.standard_normal(g.output_shape).astype(np.float32)
    _, grad_weight, _ = fastconv.conv2d_backward(
        grad_output, x, weight, padding=padding, need_input_grad=False,
        backend="cython")
    assert calls["count"] == 1
    _, expected, _ = fastconv.conv2d_backward(
        grad_output.astype(np.float64), x.astype(np.float64),
        weight.astype(np.float64), padding=padding, need_input_grad=False,
        backend="numba")
    np.testing.assert_allclose(grad_weight, expected, rtol=0,
                               atol=2e-6 * (np.abs(expected).max() + 1))


@pytest.mark.parametrize("clamp", [(0.0, float("inf")), (0.0, 6.0),
                                   (-0.5, 0.25)], ids=["relu", "relu6",
                                                       "clip"])
@pytest.mark.parametrize("shape, weight_shape, stride, dtype", [
    ((2, 5, 11, 19), (12, 5, 3, 3), 1, np.float32),     # pixel lanes
    ((2, 40, 6, 6), (40, 40, 3, 3), 2, np.float32),     # channel lanes
    ((2, 70, 5, 7), (9, 70, 1, 1), 1, np.float32),      # pointwise, blocks
    ((2, 300, 9, 9), (20, 300, 3, 3), 1, np.float32),   # channel blocks
    ((2, 64, 12, 12), (64, 64, 3, 3), 1, np.float32),   # Winograd, after
    ((2, 6, 13, 9), (6, 1, 3, 3), 2, np.float32),       # depthwise
    ((2, 5, 11, 19), (12, 5, 3, 3), 1, np.float64),     # im2col, as stored
    ((8, 24, 6, 10), (16, 24, 1, 1), 1, np.float32),    # GEMM path (AVX2)
])
def test_fused_clamp_matches_conv_then_clip(shape, weight_shape, stride,
                                            dtype, clamp):
    """conv2d's private _clamp (the ONNX runner's fused ReLU / Clip): the
    register-blocked kernel clamps as it stores, after the last channel
    block, the depthwise kernel per work item, the GEMM path as it adds
    the bias (a pointwise float32 layer's in the product's stores),
    Winograd in place after; NaN stays NaN."""
    rng = np.random.default_rng(sum(shape) + int(stride))
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 1, 1] = np.nan
    weight = rng.standard_normal(weight_shape).astype(dtype) * 0.1
    bias = rng.standard_normal(weight_shape[0]).astype(dtype)
    padding = weight_shape[2] // 2
    groups = shape[1] // weight_shape[1]
    plain = fastconv.conv2d(x, weight, bias, stride, padding, groups=groups,
                            backend="cython")
    fused = fastconv.functional.conv2d(x, weight, bias, stride, padding,
                                       groups=groups, backend="cython",
                                       _clamp=clamp)
    assert np.isnan(fused).any()
    np.testing.assert_array_equal(fused, np.clip(plain, *clamp))
    for other in ("naive", "numba"):
        if fastconv.backends.is_available(other) and other != "naive" or (
                other == "naive" and x.size < 2000):
            np.testing.assert_allclose(
                fastconv.functional.conv2d(x, weight, bias, stride, padding,
                                           groups=groups, backend=other,
                                           _clamp=clamp),
                fused, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    # (x shape, filters, stride, groups): odd and even sides, unequal
    # strides, groups, a single pixel
    ((2, 4, 9, 9), 6, (2, 2), 1), ((2, 6, 8, 11), 8, (2, 3), 2),
    ((1, 8, 7, 7), 8, (3, 3), 8), ((3, 16, 1, 1), 32, (2, 2), 1),
])
def test_strided_pointwise_runs_on_the_subsampled_input(case, count_calls):
    """A 1x1 strided convolution without padding runs as a pointwise one on
    x[:, :, ::sh, ::sw] forward and backward; with padding it stays on the
    strided kernel. Both against the naive reference in float64."""
    x_shape, filters, stride, groups = case
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal(
        (filters, x_shape[1] // groups, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    g = _shapes.conv_geometry(x.shape, weight.shape, stride, (0, 0, 0, 0),
                              (1, 1), groups)
    assert cython_cpu.conv2d_method(g).startswith("subsampled-")
    padded = _shapes.conv_geometry(x.shape, weight.shape, stride,
                                   (1, 0, 0, 0), (1, 1), groups)
    assert not cython_cpu.conv2d_method(padded).startswith("subsampled-")
    subsamples = count_calls(cython_cpu, "_subsampled")
    y = fastconv.conv2d(x, weight, bias, stride, groups=groups,
                        backend="cython")
    wide = [a.astype(np.float64) for a in (x, weight, bias)]
    expected = fastconv.conv2d(*wide, stride, groups=groups, backend="naive")
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    grad_output = rng.standard_normal(y.shape).astype(np.float32)
    mine = fastconv.conv2d_backward(grad_output, x, weight, stride,
                                    groups=groups, backend="cython")
    reference = fastconv.conv2d_backward(
        grad_output.astype(np.float64), wide[0], wide[1], stride,
        groups=groups, backend="naive")
    for got, want in zip(mine, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert subsamples["count"] == 2
    # the input gradient is zero where no output reached
    reached = np.zeros(x_shape, bool)
    reached[..., ::stride[0], ::stride[1]] = True
    assert not mine[0][~reached].any()


@pytest.mark.parametrize("case", [
    # (x shape, filters, stride, padding (top, left, bottom, right)):
    # taps not a whole number of tile groups, rows narrower and wider than
    # a vector, a row stride, asymmetric padding, one column
    ((2, 5, 9, 11), 16, (1, 1), (1, 1, 1, 1)),
    ((1, 9, 6, 37), 7, (2, 1), (0, 2, 1, 0)),
    ((3, 2, 5, 3), 12, (1, 1), (1, 0, 1, 0)),
    ((2, 16, 8, 1), 16, (1, 1), (1, 1, 1, 1)),
])
def test_sliding_weight_gradient_matches_the_naive_reference(
        case, weight_grad_calls):
    """3-wide filters at column stride 1 with at most 16 filters: the
    weight gradient's tiles slide along the rows (fc_wgrad_slide3)."""
    if not cython_cpu._direct.weight_grad_slides():
        pytest.skip("the sliding weight gradient needs 16-lane vectors")
    x_shape, filters, stride, padding = case
    rng = np.random.default_rng(sum(x_shape) + filters)
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal((filters, x_shape[1], 3, 3))
    g = _shapes.conv_geometry(x.shape, weight.shape, stride, padding,
                              (1, 1), 1)
    assert cython_cpu._weight_grad_slides(g, 1)
    pads = ((padding[0], padding[2]), (padding[1], padding[3]))
    y = fastconv.conv2d(x, weight, stride=stride, padding=pads,
                        backend="naive")
    grad_output = rng.standard_normal(y.shape)
    expected = fastconv.conv2d_backward(grad_output, x, weight, stride, pads,
                                        backend="naive")[1]
    got = fastconv.conv2d_backward(
        grad_output.astype(np.float32), x.astype(np.float32),
        weight.astype(np.float32), stride, pads, need_input_grad=False,
        backend="cython")[1]
    assert weight_grad_calls["count"] == 1
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def _phases_in_place(monkeypatch, in_place):
    """Merged phases written in place at column strides up to 2 on any
    build (in_place), or never."""
    for name in ("PHASES_IN_PLACE_MAX_STRIDE",
                 "PHASES_IN_PLACE_MAX_STRIDE_NARROW"):
        monkeypatch.setattr(cython_cpu, name, 2 if in_place else 0)


@pytest.mark.parametrize("case", [
    # (x shape, filters, kernel, stride, padding, dilation): phases of
    # different tap counts and planes a vector wide or more; odd heights; a
    # stride of 3; phases at different offsets (padding 0: their taps sit
    # a row and a column apart in the window)
    ((2, 8, 18, 32), 12, 3, 2, 1, 1),
    ((1, 16, 33, 46), 8, 5, 2, 2, 1),
    ((2, 8, 20, 48), 6, 5, 3, 2, 1),
    ((1, 8, 41, 62), 10, 3, 2, 0, 1),
    # rows only: phases written in place at a column stride of 1
    ((1, 8, 21, 64), 12, 3, (2, 1), 1, 1),
])
@pytest.mark.parametrize("in_place", [True, False])
def test_merged_phases_match_the_naive_reference(case, in_place, count_calls,
                                                 monkeypatch):
    """A strided input gradient whose phases differ in taps runs as one
    call with taps per chunk of filters (``_merged_phases``), alone or
    added into an array; against the naive reference in float64. Written
    into the gradient in place (column strides 1 and 2) or interleaved
    from planes of their own, the same bits."""
    _phases_in_place(monkeypatch, in_place)
    x_shape, filters, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(sum(x_shape) + kernel)
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal((filters, x_shape[1], kernel, kernel))
    y = fastconv.conv2d(x, weight, stride=stride, padding=padding,
                        dilation=dilation, backend="naive")
    grad_output = rng.standard_normal(y.shape)
    expected = fastconv.conv2d_backward(
        grad_output, x, weight, stride, padding, dilation,
        need_weight_grad=False, backend="naive")[0]
    merged = count_calls(cython_cpu, "_merged_phases_input_grad")
    args = (grad_output.astype(np.float32), x.astype(np.float32),
            weight.astype(np.float32), stride, padding, dilation)
    got = fastconv.conv2d_backward(*args, need_weight_grad=False,
                                   backend="cython")[0]
    start = rng.standard_normal(x_shape).astype(np.float32)
    added = start.copy()
    fastconv.conv2d_backward(*args, need_weight_grad=False,
                             add_input_grad_to=added, backend="cython")
    assert merged["count"] == 2
    tolerance = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=tolerance)
    np.testing.assert_array_equal(added, start + got)
    if in_place:
        _phases_in_place(monkeypatch, False)
        interleaved = fastconv.conv2d_backward(
            *args, need_weight_grad=False, backend="cython")[0]
        np.testing.assert_array_equal(got, interleaved)


def test_phases_written_in_place_stay_inside_the_gradient(monkeypatch):
    """conv2d_direct refuses a phase output whose writes would leave the
    gradient it writes into (a phase's origin, rows or columns past its
    end), or a column stride other than 1 or 2."""
    seen = {}
    real = cython_cpu._direct.conv2d_direct

    def keep(*args, **kwargs):
        seen.update(args=args, kwargs=dict(kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(cython_cpu._direct, "conv2d_direct", keep)
    _phases_in_place(monkeypatch, True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 18, 32)).astype(np.float32)
    weight = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    grad_output = rng.standard_normal((1, 12, 9, 16)).astype(np.float32)
    fastconv.conv2d_backward(grad_output, x, weight, 2, 1,
                             need_weight_grad=False, backend="cython")
    args, kwargs = seen["args"], seen["kwargs"]
    origin, rows, columns, row_stride, spread, add, planes = \
        kwargs["phase_out"]
    real(*args, **kwargs)  # as the library calls it: accepted
    bad = [(origin + x.size, rows, columns, row_stride, spread),
           (origin, rows + 1, columns, row_stride, spread),
           (origin, rows, columns + 1, row_stride, spread),
           (origin, rows, columns, row_stride + 1, spread),
           (origin, rows, columns, row_stride, 3),
           (origin[:-1], rows, columns, row_stride, spread)]
    for o, r, c, pitch, step in bad:
        kwargs["phase_out"] = (np.ascontiguousarray(o), r, c, pitch, step,
                               add, planes)
        with pytest.raises(ValueError, match="phase output"):
            real(*args, **kwargs)


def test_merged_phases_need_whole_chunks_of_channels(count_calls):
    """Input channels that are not whole chunks of the tile's filters (or
    groups, or phases narrower than a vector where the channel-lane kernel
    is built to run them) keep one call per phase."""
    merged = count_calls(cython_cpu, "_merged_phases_input_grad")
    rng = np.random.default_rng(1)
    cases = [((2, 6, 20, 32), 1), ((2, 16, 20, 32), 2)]
    if cython_cpu._direct.channel_vectors_available():
        cases.append(((2, 16, 12, 12), 1))
    for x_shape, groups in cases:
        x = rng.standard_normal(x_shape).astype(np.float32)
        weight = rng.standard_normal(
            (8, x_shape[1] // groups, 3, 3)).astype(np.float32)
        grad_output = rng.standard_normal(
            fastconv.conv2d(x, weight, stride=2, padding=1,
                            groups=groups).shape).astype(np.float32)
        got = fastconv.conv2d_backward(grad_output, x, weight, 2, 1,
                                       groups=groups, need_weight_grad=False,
                                       backend="cython")[0]
        expected = fastconv.conv2d_backward(
            grad_output.astype(np.float64), x.astype(np.float64),
            weight.astype(np.float64), 2, 1, groups=groups,
            need_weight_grad=False, backend="numba")[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert merged["count"] == 0


@pytest.mark.parametrize("stride", [1, 2])
def test_narrow_lanes_give_pointwise_layers_to_gemm(monkeypatch, stride):
    """With 8-lane vectors (an AVX2 build) 'auto' runs a pointwise layer's
    forward, input gradient (a pointwise forward) and weight gradient
    through the GEMM path (NARROW_POINTWISE_GEMM;
    FASTCONV_CONV_ALGO=direct keeps the direct kernel), with 16 lanes on the
    direct kernel; either way the results match the naive reference."""
    monkeypatch.setattr(cython_cpu, "NARROW_POINTWISE_GEMM", True)
    rng = np.random.default_rng(stride)
    x = rng.standard_normal(
        (cython_cpu.NARROW_POINTWISE_GEMM_MIN_BATCH, 16, 12, 10))
    weight = rng.standard_normal((24, 16, 1, 1))
    g = _geometry(x, weight, stride)
    narrow = cython_cpu._narrow_lanes()
    prefix = "subsampled-" if stride > 1 else ""
    assert cython_cpu.conv2d_method(g) == prefix + (
        "gemm-1x1" if narrow else "direct-blocked")
    # one image short of the limit: the direct kernel on any build
    assert cython_cpu.conv2d_method(_geometry(
        x[1:], weight, stride)) == prefix + "direct-blocked"
    monkeypatch.setenv(cython_cpu.CONV_ALGO_ENV, "direct")
    assert cython_cpu.conv2d_method(g) == prefix + "direct-blocked"
    monkeypatch.delenv(cython_cpu.CONV_ALGO_ENV)
    expected = fastconv.conv2d(x, weight, stride=stride, backend="naive")
    got = fastconv.conv2d(x.astype(np.float32), weight.astype(np.float32),
                          stride=stride, backend="cython")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    grad_output = rng.standard_normal(expected.shape)
    expected_input, expected_weight, _ = fastconv.conv2d_backward(
        grad_output, x, weight, stride, backend="naive")
    got_input, got_weight, _ = fastconv.conv2d_backward(
        grad_output.astype(np.float32), x.astype(np.float32),
        weight.astype(np.float32), stride, backend="cython")
    np.testing.assert_allclose(got_weight, expected_weight, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(got_input, expected_input, rtol=1e-5,
                               atol=1e-5)
