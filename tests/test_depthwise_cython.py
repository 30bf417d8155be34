"""The Cython backend's direct depthwise conv2d (``_cython/depthwise.pyx``).

One input channel per group (weight (K, 1, R, S)) with at most
``cython_cpu.DEPTHWISE_MAX_MULTIPLIER`` filters per channel runs the direct
kernel rather than im2col + GEMM. Its two inner loops (whole-tile sweeps for
stride 1, row sweeps for any stride) and its row tiles are each forced on
the shared depthwise cases of test_conv2d.py and compared with the naive
reference and PyTorch; filter2d's depthwise method runs through it too.
The channel-vector kernel (``_cython/depthwise_vectors.h``: 16 channels to a
vector, for narrow float32 layers) is forced on the same cases and on
channel counts around its blocks of 16.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_conv2d import DEPTHWISE_BY_ID, DEPTHWISE_IDS, case_inputs

import fastconv
from fastconv import _shapes, filters


@pytest.fixture
def cython_backend():
    from fastconv.backends import is_available

    if not is_available("cython"):
        pytest.skip("the cython backend is not available here")
    from fastconv.backends import cython_cpu

    return cython_cpu


class _CountingKernels:
    """Stands in for the compiled depthwise module, recording which of its
    kernels each call ran ("planes" or "vectors")."""

    def __init__(self, module):
        self.module = module
        self.calls = []

    def depthwise_forward(self, *args):
        self.calls.append("planes")
        return self.module.depthwise_forward(*args)

    def depthwise_forward_vectors(self, *args):
        self.calls.append("vectors")
        return self.module.depthwise_forward_vectors(*args)

    def __getattr__(self, name):
        return getattr(self.module, name)


@pytest.fixture
def depthwise_calls(cython_backend, monkeypatch):
    counting = _CountingKernels(cython_backend._depthwise)
    monkeypatch.setattr(cython_backend, "_depthwise", counting)
    return counting.calls


def _never(g, dtype):
    """Stands in for _depthwise_vectors: the plane kernel always."""
    return False


# (DEPTHWISE_TILE_BYTES, tile sweeps for stride 1): each loop and tiling
LOOPS = {
    "tile_sweeps_whole_planes": (2**40, True),
    "tile_sweeps_small_tiles": (1, True),
    "row_sweeps_whole_planes": (2**40, False),
    "row_sweeps_small_tiles": (1, False),
}


@pytest.mark.parametrize("loops", list(LOOPS))
@pytest.mark.parametrize("case_id", DEPTHWISE_IDS)
def test_cython_depthwise_matches_naive(case_id, loops, dtype, random_array,
                                        cython_backend, depthwise_calls,
                                        monkeypatch, assert_close):
    tile_bytes, tile_sweeps = LOOPS[loops]
    monkeypatch.setattr(cython_backend, "_depthwise_vectors", _never)
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_BYTES", tile_bytes)
    # tile sweeps wherever they apply (stride 1), or never
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_SWEEP_MAX_WIDTH",
                        2**62 if tile_sweeps else -1)
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array,
                                          DEPTHWISE_BY_ID, "depthwise")
    original = x.copy()
    expected = fastconv.conv2d(x, weight, bias, **kwargs, backend="naive")
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend="cython")
    assert depthwise_calls == ["planes"], "conv2d did not run the kernel"
    assert y.dtype == dtype
    assert_close(y, expected, dtype, what=f"depthwise {case_id} {loops}")
    np.testing.assert_array_equal(x, original)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("tile_sweeps", [True, False], ids=["tiles", "rows"])
@pytest.mark.parametrize("case_id", DEPTHWISE_IDS)
def test_cython_depthwise_matches_torch(case_id, tile_sweeps, torch,
                                        random_array, cython_backend,
                                        depthwise_calls, monkeypatch,
                                        assert_close):
    monkeypatch.setattr(cython_backend, "_depthwise_vectors", _never)
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_SWEEP_MAX_WIDTH",
                        2**62 if tile_sweeps else -1)
    x, weight, bias, kwargs = case_inputs(case_id, np.dtype(np.float64),
                                          random_array, DEPTHWISE_BY_ID,
                                          "depthwise")
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias), **kwargs).numpy()
    assert_close(fastconv.conv2d(x, weight, bias, **kwargs, backend="cython"),
                 expected, what=f"depthwise {case_id} vs torch")
    assert depthwise_calls


@pytest.mark.parametrize("tile_rows", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("stride", [(1, 1), (2, 1)])
def test_cython_depthwise_row_tiles_cover_the_plane(tile_rows, stride, dtype,
                                                    random_array,
                                                    cython_backend,
                                                    assert_close):
    """One plane in row tiles of every size (a short last tile included),
    the multiplier's output channels sharing each tile, on both loops."""
    x = random_array((1, 2, 23, 31), dtype, "tiles x")
    weight = random_array((6, 1, 3, 5), dtype, "tiles weight")
    bias = random_array(6, dtype, "tiles bias")
    expected = fastconv.conv2d(x, weight, bias, stride=stride,
                               padding=(1, 2), groups=2, backend="naive")
    g = _shapes.conv_geometry(x.shape, weight.shape, stride, (1, 2, 1, 2),
                              (1, 1), 2)
    for tile_sweeps in ([True, False] if stride == (1, 1) else [False]):
        y = np.full(g.output_shape, np.nan, dtype=dtype)
        cython_backend._depthwise.depthwise_forward(
            x, weight, bias, True, y, g, tile_rows, tile_sweeps,
            fastconv.get_num_threads())
        assert_close(y, expected, dtype,
                     what=f"tiles of {tile_rows} rows, sweeps {tile_sweeps}")


def test_cython_depthwise_tiles(cython_backend, monkeypatch):
    """Big planes are cut into tiles within DEPTHWISE_TILE_BYTES (at least
    one output row); a plane alone is split among the threads."""
    g = _shapes.conv_geometry((1, 1, 2048, 2048), (1, 1, 3, 3), (1, 1),
                              (1, 1, 1, 1), (1, 1), 1)
    padded_w = 2050
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_BYTES", 64 * 1024)
    rows = cython_backend._depthwise_tile_rows(g, 4, 1)
    assert (rows + 2) * padded_w * 4 <= 64 * 1024 < (rows + 3) * padded_w * 4
    # never so few rows that the 2 rows of overlap outweigh them
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_BYTES", 1)
    assert cython_backend._depthwise_tile_rows(g, 4, 1) == 4
    nine = g._replace(kernel_height=9, pad_top=4, pad_bottom=4)
    assert cython_backend._depthwise_tile_rows(nine, 4, 1) == 16
    assert cython_backend._depthwise_tile_rows(
        g._replace(kernel_height=1), 4, 1) == 1
    monkeypatch.undo()
    small = _shapes.conv_geometry((1, 1, 56, 56), (1, 1, 3, 3), (1, 1),
                                  (1, 1, 1, 1), (1, 1), 1)
    assert cython_backend._depthwise_tile_rows(small, 4, 1) == 56
    assert cython_backend._depthwise_tile_rows(small, 4, 2) == 28
    assert cython_backend._depthwise_tile_rows(small._replace(batch=2), 4,
                                               2) == 56


@pytest.mark.parametrize("kind", ["past_the_multiplier_limit",
                                  "two_channels_per_group"])
def test_other_grouped_convolutions_take_im2col(kind, random_array,
                                                cython_backend,
                                                depthwise_calls,
                                                assert_close):
    if kind == "past_the_multiplier_limit":
        filters_per_channel = cython_backend.DEPTHWISE_MAX_MULTIPLIER + 1
        weight_shape, groups = (4 * filters_per_channel, 1, 3, 3), 4
    else:
        weight_shape, groups = (4, 2, 3, 3), 2
    x = random_array((2, 4, 7, 8), np.float64, "not depthwise")
    weight = random_array(weight_shape, np.float64, "not depthwise w")
    y = fastconv.conv2d(x, weight, padding=1, groups=groups,
                        backend="cython")
    assert not depthwise_calls
    assert_close(y, fastconv.conv2d(x, weight, padding=1, groups=groups,
                                    backend="naive"))


def test_filter2d_runs_the_cython_depthwise_kernel(random_array,
                                                   depthwise_calls,
                                                   assert_close):
    image = random_array((40, 37, 3), np.float32, "filter2d image")
    kernel = random_array((5, 4), np.float32, "filter2d kernel")
    for boundary in ("zero", "reflect"):
        expected = filters.filter2d(image, kernel, boundary=boundary,
                                    method="depthwise", backend="naive")
        result = filters.filter2d(image, kernel, boundary=boundary,
                                  method="depthwise", backend="cython")
        assert_close(result, expected, np.float32, what=boundary)
    assert len(depthwise_calls) >= 2


# ------------------------------------------- the channel-vector kernel

@pytest.fixture
def vector_backend(cython_backend, monkeypatch):
    """The cython backend with the channel-vector kernel forced wherever it
    can run (float32, one filter per channel), or skip where it is not
    built (no AVX-512 or no GCC)."""
    if not cython_backend._depthwise.vectors_available():
        pytest.skip("the channel-vector depthwise kernel is not built here")
    monkeypatch.setattr(
        cython_backend, "_depthwise_vectors",
        lambda g, dtype: dtype == np.float32
        and g.out_channels == g.in_channels)
    return cython_backend


def _vector_cases():
    return [case_id for case_id in DEPTHWISE_IDS
            if DEPTHWISE_BY_ID[case_id][2][0] == DEPTHWISE_BY_ID[case_id][1][1]]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("band_bytes", [1, 2**40], ids=["row_items",
                                                        "plane_items"])
@pytest.mark.parametrize("case_id", _vector_cases())
def test_cython_depthwise_vectors_match_naive(case_id, band_bytes,
                                              random_array, vector_backend,
                                              depthwise_calls, monkeypatch,
                                              assert_close):
    monkeypatch.setattr(vector_backend, "DEPTHWISE_VECTOR_BAND_BYTES",
                        band_bytes)
    x, weight, bias, kwargs = case_inputs(case_id, np.dtype(np.float32),
                                          random_array, DEPTHWISE_BY_ID,
                                          "depthwise")
    original = x.copy()
    expected = fastconv.conv2d(x.astype(np.float64), weight.astype(np.float64),
                               None if bias is None else bias.astype(
                                   np.float64), **kwargs, backend="naive")
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend="cython")
    assert depthwise_calls == ["vectors"]
    assert y.dtype == np.float32
    assert_close(y, expected, np.float32, what=f"vectors {case_id}")
    np.testing.assert_array_equal(x, original)


@pytest.mark.parametrize("kernel", ["vectors", "planes"])
@pytest.mark.parametrize("channels", [1, 15, 16, 17, 40, 48])
@pytest.mark.parametrize("stride", [1, 2])
def test_cython_depthwise_vectors_blocks_bias_and_clamp(
        channels, stride, kernel, random_array, vector_backend,
        depthwise_calls, monkeypatch, assert_close):
    """Channel blocks of 16 with a short last block, two images, a bias
    and a fused ReLU6 (clamped in registers, NaN kept), every item's rows
    stored into the right planes; the same through the plane kernel (its
    float32 vector rows at stride 1)."""
    if kernel == "planes":
        monkeypatch.setattr(vector_backend, "_depthwise_vectors", _never)
    x = random_array((2, channels, 13, 11), np.float32, "vec x", channels)
    x[0, 0, 3, 4] = np.nan
    weight = random_array((channels, 1, 3, 3), np.float32, "vec w")
    bias = random_array(channels, np.float32, "vec b")
    g = _shapes.conv_geometry(x.shape, weight.shape, (stride, stride),
                              (1, 1, 1, 1), (1, 1), channels)
    expected = np.clip(fastconv.conv2d(
        x.astype(np.float64), weight.astype(np.float64),
        bias.astype(np.float64), stride=stride, padding=1, groups=channels,
        backend="naive"), 0, 6)
    y = vector_backend.conv2d_forward(x, weight, bias, g, clamp=(0.0, 6.0))
    assert depthwise_calls == [kernel]
    assert np.isnan(y[0, 0]).any() and not np.isnan(y[1]).any()
    assert_close(np.nan_to_num(y, nan=-1), np.nan_to_num(expected, nan=-1),
                 np.float32, what=f"C{channels} stride {stride}")


def test_cython_depthwise_vectors_match_torch(torch, random_array,
                                              vector_backend, assert_close):
    x = random_array((3, 37, 15, 14), np.float32, "vec torch x")
    weight = random_array((37, 1, 5, 3), np.float32, "vec torch w")
    for kwargs in (dict(padding=(2, 1)), dict(stride=(2, 3), padding=1,
                                              dilation=(1, 2))):
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x), torch.from_numpy(weight), groups=37,
            **kwargs).numpy()
        assert_close(fastconv.conv2d(x, weight, groups=37, **kwargs,
                                     backend="cython"),
                     expected, np.float32, what=str(kwargs))


def test_cython_depthwise_vectors_bits_do_not_depend_on_threads(
        random_array, vector_backend):
    x = random_array((2, 50, 14, 14), np.float32, "vec threads x")
    weight = random_array((50, 1, 3, 3), np.float32, "vec threads w")
    results, before = [], fastconv.get_num_threads()
    try:
        for threads in (1, before):
            fastconv.set_num_threads(threads)
            results.append(fastconv.conv2d(x, weight, padding=1, groups=50,
                                           backend="cython"))
    finally:
        fastconv.set_num_threads(before)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_cython_depthwise_vector_rule(cython_backend):
    """Which layers the channel-vector kernel runs (the measured rule at
    DEPTHWISE_VECTOR_MIN_CHANNELS): MobileNetV2's narrow and strided
    layers, not wide planes, few channels, several filters per channel or
    float64."""
    if not cython_backend._depthwise.vectors_available():
        pytest.skip("the channel-vector depthwise kernel is not built here")

    def method(channels, size, stride, filters=None, dtype=np.float32):
        g = _shapes.conv_geometry(
            (1, channels, size, size), (filters or channels, 1, 3, 3),
            (stride, stride), (1, 1, 1, 1), (1, 1), channels)
        return cython_backend.conv2d_method(g, dtype)

    assert method(576, 14, 1) == "depthwise-vectors"
    assert method(960, 7, 1) == "depthwise-vectors"
    assert method(192, 28, 1) == "depthwise"
    assert method(64, 14, 1) == "depthwise-vectors"
    assert method(144, 56, 2) == "depthwise-vectors"
    assert method(32, 112, 1) == "depthwise"
    assert method(144, 56, 1) == "depthwise"
    assert method(64, 28, 2) == "depthwise-vectors"
    assert method(96, 112, 2) == "depthwise-vectors"
    assert method(96, 224, 2) == "depthwise"
    assert method(16, 14, 1) == "depthwise"
    assert method(64, 14, 1, filters=128) == "depthwise"
    assert method(576, 14, 1, dtype=np.float64) == "depthwise"
