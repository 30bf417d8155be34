"""fastconv.kernels: the classic kernels' values, and ``get`` / ``names``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastconv import kernels

# name -> the sum of its weights
EXPECTED_SUMS = {
    "identity": 1.0, "sharpen": 1.0, "box_blur": 1.0, "gaussian": 1.0,
    "laplacian": 0.0, "sobel_x": 0.0, "sobel_y": 0.0, "prewitt_x": 0.0,
    "prewitt_y": 0.0, "emboss": 1.0, "outline": 0.0, "unsharp_mask": 1.0,
}


def test_names_lists_every_kernel_function():
    assert kernels.names() == list(EXPECTED_SUMS)
    for name in kernels.names():
        assert callable(getattr(kernels, name))
        assert kernels.describe(name)


@pytest.mark.parametrize("name", list(EXPECTED_SUMS))
def test_every_kernel_is_a_float64_2d_array_with_its_sum(name):
    kernel = kernels.get(name)
    assert isinstance(kernel, np.ndarray)
    assert kernel.dtype == np.float64 and kernel.ndim == 2
    assert kernel.sum() == pytest.approx(EXPECTED_SUMS[name], abs=1e-12)
    np.testing.assert_array_equal(kernel, getattr(kernels, name)())


def test_classic_values():
    np.testing.assert_array_equal(
        kernels.sharpen(), [[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    np.testing.assert_array_equal(
        kernels.identity(), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        kernels.laplacian(), [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        kernels.sobel_x(), [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(kernels.sobel_y(), kernels.sobel_x().T)
    np.testing.assert_array_equal(
        kernels.prewitt_x(), [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]])
    np.testing.assert_array_equal(kernels.prewitt_y(), kernels.prewitt_x().T)
    np.testing.assert_array_equal(
        kernels.outline(), [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(
        kernels.emboss(), [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    np.testing.assert_array_equal(kernels.box_blur(5), np.full((5, 5), 0.04))


@pytest.mark.parametrize("size, sigma", [(3, 0.8), (7, 1.5), (4, 1.0),
                                         (9, None), (1, 2.0)])
def test_gaussian_is_normalised_symmetric_and_gaussian(size, sigma):
    kernel = kernels.gaussian(size, sigma)
    assert kernel.shape == (size, size)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, :], rtol=0, atol=1e-17)
    np.testing.assert_allclose(kernel, kernel[:, ::-1], rtol=0, atol=1e-17)
    np.testing.assert_allclose(kernel, kernel.T, rtol=0, atol=1e-17)
    if sigma is None:  # OpenCV's rule
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size) - (size - 1) / 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    expected = np.exp(-squared / (2 * sigma**2))
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-12)
    if size >= 3:  # peaks in the centre and falls off
        assert kernel[size // 2, size // 2] == kernel.max()
        assert kernel[0, 0] == kernel.min()


def test_unsharp_mask_is_image_plus_amount_times_detail():
    kernel = kernels.unsharp_mask(5, 1.0, 1.5)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    expected = delta + 1.5 * (delta - kernels.gaussian(5, 1.0))
    np.testing.assert_allclose(kernel, expected, rtol=0, atol=1e-15)


def test_sobel_x_is_positive_where_brightness_grows_to_the_right():
    from fastconv.filters import filter2d

    ramp = np.tile(np.arange(8, dtype=np.float64), (6, 1))
    assert np.all(filter2d(ramp, kernels.sobel_x(), padding="valid") > 0)
    assert np.all(filter2d(ramp.T.copy(), kernels.sobel_y(),
                           padding="valid") > 0)


@pytest.mark.parametrize("spec, expected", [
    ("gaussian:7,1.5", lambda: kernels.gaussian(7, 1.5)),
    ("gaussian:5", lambda: kernels.gaussian(5)),
    ("box_blur:5", lambda: kernels.box_blur(5)),
    ("box-blur:4", lambda: kernels.box_blur(4)),
    ("  Sharpen ", kernels.sharpen),
    ("unsharp_mask:3,0.5,2", lambda: kernels.unsharp_mask(3, 0.5, 2)),
    ("gaussian:", lambda: kernels.gaussian()),
])
def test_get_parses_parameters(spec, expected):
    np.testing.assert_array_equal(kernels.get(spec), expected())


@pytest.mark.parametrize("spec, message", [
    ("blurr", "unknown kernel 'blurr'; known kernels are identity, sharpen"),
    ("gaussian:seven", "'seven' in 'gaussian:seven' is not a number"),
    ("gaussian:0", "bad parameters in kernel 'gaussian:0': size must be an "
                   "int from 1 to 1025"),
    ("gaussian:100001,3", "size must be an int from 1 to 1025, got 100001"),
    ("box_blur:1180591620717411303424", "size must be an int from 1 to 1025"),
    ("unsharp_mask:2001", "size must be an int from 1 to 1025"),
    ("gaussian:5,-1", "sigma must be a positive finite number"),
    ("gaussian:2.5", "size must be a positive int"),
    ("sharpen:3", "bad parameters in kernel 'sharpen:3'"),
    ("box_blur:1,2,3", "bad parameters in kernel 'box_blur:1,2,3'"),
    ("unsharp_mask:4", "size must be odd"),
    ("unsharp_mask:5,1,0", "amount must be a positive"),
])
def test_get_rejects_bad_specs_with_one_clear_message(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kernels.get(spec)


def test_get_rejects_non_strings():
    with pytest.raises(TypeError, match="kernel name must be a str"):
        kernels.get(3)


@pytest.mark.parametrize("call, error", [
    (lambda: kernels.box_blur(0), ValueError),
    (lambda: kernels.box_blur(2.0), TypeError),
    (lambda: kernels.box_blur(True), TypeError),
    (lambda: kernels.gaussian(3, 0), ValueError),
    (lambda: kernels.gaussian(3, float("nan")), ValueError),
    (lambda: kernels.gaussian(3, "1"), TypeError),
])
def test_builders_validate_their_arguments(call, error):
    with pytest.raises(error):
        call()


def test_kernel_sizes_are_bounded_before_anything_is_allocated():
    """gaussian:100001 asked for 75 GiB; the bound is checked first."""
    assert kernels.box_blur(kernels.MAX_SIZE).shape == (kernels.MAX_SIZE,) * 2
    with pytest.raises(ValueError, match="from 1 to"):
        kernels.gaussian(kernels.MAX_SIZE + 1)


@pytest.mark.parametrize("size, sigma", [(3, 1e-320), (5, 1e-200),
                                         (4, 1e-320), (4, 1e-3)])
def test_a_vanishing_sigma_gives_the_delta_not_nan(size, sigma):
    kernel = kernels.gaussian(size, sigma)
    assert np.isfinite(kernel).all() and kernel.sum() == 1.0
    centre = slice(size // 2, size // 2 + 1) if size % 2 else \
        slice(size // 2 - 1, size // 2 + 1)
    expected = np.zeros((size, size))
    expected[centre, centre] = 1.0 / expected[centre, centre].size
    np.testing.assert_array_equal(kernel, expected)
