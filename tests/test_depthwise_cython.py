"""The Cython backend's direct depthwise conv2d (``_cython/depthwise.pyx``).

One input channel per group (weight (K, 1, R, S)) with at most
``cython_cpu.DEPTHWISE_MAX_MULTIPLIER`` filters per channel runs the direct
kernel rather than im2col + GEMM. Its two inner loops (whole-tile sweeps for
stride 1, row sweeps for any stride) and its row tiles are each forced on
the shared depthwise cases of test_conv2d.py and compared with the naive
reference and PyTorch; filter2d's depthwise method runs through it too.
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
    """Stands in for the compiled depthwise module, counting its calls."""

    def __init__(self, module):
        self.module = module
        self.calls = []

    def depthwise_forward(self, *args):
        self.calls.append(args)
        return self.module.depthwise_forward(*args)


@pytest.fixture
def depthwise_calls(cython_backend, monkeypatch):
    counting = _CountingKernels(cython_backend._depthwise)
    monkeypatch.setattr(cython_backend, "_depthwise", counting)
    return counting.calls


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
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_BYTES", tile_bytes)
    # tile sweeps wherever they apply (stride 1), or never
    monkeypatch.setattr(cython_backend, "DEPTHWISE_TILE_SWEEP_MAX_WIDTH",
                        2**62 if tile_sweeps else -1)
    x, weight, bias, kwargs = case_inputs(case_id, dtype, random_array,
                                          DEPTHWISE_BY_ID, "depthwise")
    original = x.copy()
    expected = fastconv.conv2d(x, weight, bias, **kwargs, backend="naive")
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend="cython")
    assert len(depthwise_calls) == 1, "conv2d did not run the direct kernel"
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
