"""fastconv.filters: filter2d / convolve2d against independent references.

References:

* ``numpy_reference``: ``numpy.pad`` with the boundary's mode, then every
  window summed with ``sliding_window_view`` and ``einsum``, then ``[::s]``:
  the definition in the docstring, written a second way;
* ``scipy.ndimage.correlate`` on a real photograph (scikit-learn's
  ``china.jpg``), with the mode names translated and ``origin`` set so that
  an even kernel is centred as PyTorch's ``padding='same'`` centres it;
* PyTorch's ``conv2d(padding='same')`` when installed.

The photograph cases need a compiled backend (the naive loops would take
minutes); while none is available they skip, and the same comparisons run on
a small crop with the naive backend.
"""

from __future__ import annotations

import itertools
import tracemalloc
import zlib

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastconv
from fastconv import filters, kernels
from fastconv.filters import convolve2d, filter2d

BOUNDARIES = list(filters.BOUNDARIES)
SCIPY_MODE = {"zero": "constant", "reflect": "mirror", "symmetric": "reflect",
              "replicate": "nearest", "wrap": "wrap"}
COMPILED = [name for name in fastconv.available_backends()
            if name not in ("naive", "cuda")]
needs_compiled = pytest.mark.skipif(
    not COMPILED, reason="no compiled CPU backend (numba/cython) is available "
                         "yet; the naive-backend crop tests cover the logic")

# every named kernel, with its parameters spelled as the CLI spells them
KERNEL_SPECS = kernels.names() + ["gaussian:7,1.5", "box_blur:4",
                                  "gaussian:15,3"]


# ----------------------------------------------------------------- references

def numpy_reference(image, kernel, stride=(1, 1), pads=None,
                    boundary="zero"):
    """filter2d by definition: numpy.pad, every window summed, subsampled."""
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    rows, cols = kernel.shape
    if pads is None:  # 'same', PyTorch's centring
        pads = ((rows - 1) // 2, (cols - 1) // 2, rows // 2, cols // 2)
    top, left, bottom, right = pads
    width = [(top, bottom), (left, right)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, width, mode=filters.BOUNDARIES[boundary])
    windows = sliding_window_view(padded, kernel.shape, axis=(0, 1))
    subscripts = "ijrs,rs->ij" if image.ndim == 2 else "ijcrs,rs->ijc"
    return np.einsum(subscripts, windows, kernel)[::stride[0], ::stride[1]]


def scipy_same(image, kernel, boundary):
    """scipy.ndimage.correlate, centred like PyTorch's padding='same'."""
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.asarray(image, dtype=np.float64)
    # scipy centres a kernel of n taps on tap n // 2, PyTorch on (n - 1) // 2
    origin = [(n - 1) // 2 - n // 2 for n in kernel.shape]
    if image.ndim == 2:
        return ndimage.correlate(image, kernel, mode=SCIPY_MODE[boundary],
                                 origin=origin)
    return np.stack([ndimage.correlate(image[..., c], kernel,
                                       mode=SCIPY_MODE[boundary],
                                       origin=origin)
                     for c in range(image.shape[2])], axis=-1)


def close(actual, expected, dtype=np.float64):
    """Equal to rounding, relative to the largest value."""
    rtol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-10
    scale = max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------- photos

@pytest.fixture(scope="module")
def photo():
    """The real photograph scikit-learn ships: (427, 640, 3) uint8."""
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_sample_image("china.jpg")


@pytest.fixture(scope="module")
def photo_small(photo):
    """Every third pixel: (143, 214, 3) uint8, for the compiled backends."""
    return np.ascontiguousarray(photo[::3, ::3])


@pytest.fixture(scope="module")
def photo_crop(photo):
    """A 14 x 18 crop with detail (roof edges), for the naive backend."""
    return np.ascontiguousarray(photo[100:114, 300:318])


def gray(image):
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@needs_compiled
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_named_kernels_on_photo_match_scipy(photo_small, spec, boundary):
    kernel = kernels.get(spec)
    colour = filter2d(photo_small, kernel, boundary=boundary, backend="auto")
    assert colour.dtype == np.float32 and colour.shape == photo_small.shape
    close(colour, scipy_same(photo_small, kernel, boundary), np.float32)
    luminance = gray(photo_small)
    result = filter2d(luminance, kernel, boundary=boundary, backend="auto")
    assert result.dtype == np.float64
    close(result, scipy_same(luminance, kernel, boundary))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("spec", kernels.names() + ["box_blur:4"])
def test_named_kernels_on_photo_crop_match_scipy_on_naive(photo_crop, spec,
                                                          boundary):
    kernel = kernels.get(spec)
    result = filter2d(photo_crop, kernel, boundary=boundary, backend="naive")
    close(result, scipy_same(photo_crop, kernel, boundary), np.float32)


@needs_compiled
@pytest.mark.parametrize("stride", [2, (2, 3), 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_strided_photo_is_the_subsampled_result(photo_small, stride, boundary):
    kernel = kernels.get("gaussian:6,1.2")  # even: the asymmetric centring
    step = stride if isinstance(stride, tuple) else (stride, stride)
    full = filter2d(photo_small, kernel, boundary=boundary)
    strided = filter2d(photo_small, kernel, stride=stride, boundary=boundary)
    # equal to float32 rounding (the GEMMs differ in shape, so sum in a
    # different order)
    close(strided, full[::step[0], ::step[1]], np.float32)
    close(strided, scipy_same(photo_small, kernel,
                              boundary)[::step[0], ::step[1]], np.float32)


@needs_compiled
@pytest.mark.parametrize("spec", ["sharpen", "sobel_x", "box_blur:4",
                                  "gaussian:7,1.5"])
def test_valid_photo_is_the_interior_of_same(photo_small, spec):
    kernel = kernels.get(spec)
    rows, cols = kernel.shape
    top, left = (rows - 1) // 2, (cols - 1) // 2
    height, width = photo_small.shape[:2]
    valid = filter2d(photo_small, kernel, padding="valid")
    assert valid.shape == (height - rows + 1, width - cols + 1, 3)
    expected = scipy_same(photo_small, kernel, "zero")[
        top:top + valid.shape[0], left:left + valid.shape[1]]
    close(valid, expected, np.float32)
    # and strided 'valid' subsamples it
    close(filter2d(photo_small, kernel, padding="valid", stride=(3, 2)),
          valid[::3, ::2], np.float32)


@needs_compiled
def test_colour_channels_are_filtered_independently(photo_small):
    kernel = kernels.sharpen()
    colour = filter2d(photo_small, kernel, boundary="reflect")
    for channel in range(3):
        np.testing.assert_array_equal(
            colour[..., channel],
            filter2d(photo_small[..., channel], kernel, boundary="reflect"))


# ---------------------------------------------- every backend, every option

SMALL_CASES = [
    # (image shape, kernel shape, stride, padding)
    ((9, 11), (3, 3), 1, "same"),
    ((10, 8, 2), (4, 4), 1, "same"),
    ((7, 12), (2, 5), (2, 3), "same"),
    ((12, 7, 3), (5, 2), 2, "valid"),
    ((8, 9), (1, 1), 1, "same"),
    ((6, 10), (3, 4), (1, 2), (2, 1)),
    ((5, 6), (7, 3), 1, 4),      # pads wider than the image (reflect twice)
    ((11, 9), (6, 6), 3, (0, 2)),
    # strides past the kernel: only the windows outputs read are gathered
    ((13, 17), (2, 3), (4, 5), "same"),
    ((12, 16, 3), (3, 2), (4, 3), "same"),
    ((9, 14, 2), (1, 1), 3, (1, 2)),
]


@pytest.mark.parametrize("method", ["direct", "depthwise", "fft"])
@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_every_backend_and_method_matches_the_definition(backend, dtype,
                                                         case, method):
    image_shape, kernel_shape, stride, padding = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    image = rng.standard_normal(image_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape)
    step = stride if isinstance(stride, tuple) else (stride, stride)
    rows, cols = kernel_shape
    if padding == "same":
        pads = ((rows - 1) // 2, (cols - 1) // 2, rows // 2, cols // 2)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        pad_h, pad_w = padding if isinstance(padding, tuple) else (padding,) * 2
        pads = (pad_h, pad_w, pad_h, pad_w)
    for boundary in BOUNDARIES:
        result = filter2d(image, kernel, stride=stride, padding=padding,
                          boundary=boundary, backend=backend, method=method)
        assert result.dtype == dtype
        close(result, numpy_reference(image, kernel, step, pads, boundary),
              dtype)


LAYOUTS = {
    "fortran": np.asfortranarray,
    "reversed-view": lambda image: image[::-1, ::-1][::-1, ::-1],
    "column-view": lambda image: np.repeat(image, 2, axis=1)[:, ::2],
    "broadcast-rows": lambda image: np.broadcast_to(image[:1], image.shape),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", ["direct", "depthwise", "fft"])
@pytest.mark.parametrize("case", SMALL_CASES[-4:], ids=str)
def test_any_layout_or_integer_dtype_matches_the_definition(
        compiled_backend, case, method, layout):
    image_shape, kernel_shape, stride, padding = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    integers = rng.integers(0, 256, image_shape, dtype=np.uint8)
    kernel = rng.standard_normal(kernel_shape)
    step = stride if isinstance(stride, tuple) else (stride, stride)
    rows, cols = kernel_shape
    if padding == "same":
        pads = ((rows - 1) // 2, (cols - 1) // 2, rows // 2, cols // 2)
    else:
        pad_h, pad_w = padding if isinstance(padding, tuple) else (padding,) * 2
        pads = (pad_h, pad_w, pad_h, pad_w)
    for image in (LAYOUTS[layout](integers),
                  LAYOUTS[layout](integers.astype(np.float32))):
        for boundary in ("zero", "reflect", "wrap"):
            result = filter2d(image, kernel, stride=stride, padding=padding,
                              boundary=boundary, backend=compiled_backend,
                              method=method)
            assert result.dtype == np.float32
            close(result, numpy_reference(image, kernel, step, pads,
                                          boundary), np.float32)


# The depthwise method filters the image in place (one conv2d of the whole
# image, zero padded, then the outputs that read padding recomputed from
# padded copies of the edges): every boundary, stride, asymmetric pads (as
# fastconv.dask passes them), images smaller than the kernel, colour.
IN_PLACE_CASES = [
    # (image shape, kernel shape, stride, (top, left, bottom, right))
    ((13, 17), (3, 3), (1, 1), (1, 1, 1, 1)),
    ((13, 17, 3), (5, 4), (1, 1), (2, 1, 2, 2)),
    ((16, 15), (3, 5), (2, 3), (1, 2, 1, 2)),
    ((16, 15, 2), (4, 3), (3, 1), (0, 1, 3, 0)),
    ((12, 14), (3, 3), (1, 1), (0, 0, 2, 2)),      # one-sided, as dask edges
    ((4, 5), (7, 6), (1, 1), (3, 2, 3, 3)),        # image smaller than kernel
    ((3, 2, 3), (5, 5), (2, 1), (4, 4, 4, 4)),     # pads wider than the image
    ((20, 9), (1, 9), (1, 1), (0, 4, 0, 4)),
]


@pytest.mark.parametrize("case", IN_PLACE_CASES, ids=str)
def test_depthwise_in_place_matches_the_definition(compiled_backend, case,
                                                   monkeypatch):
    image_shape, kernel_shape, stride, pads = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    image = rng.standard_normal(image_shape)
    kernel = rng.standard_normal(kernel_shape)
    image3 = image if image.ndim == 3 else image[:, :, None]
    in_place = []
    original = filters._depthwise_in_place
    monkeypatch.setattr(filters, "_depthwise_in_place", lambda *args: (
        in_place.append(1), original(*args))[1])
    rows, cols = (-(-(image_shape[axis] + pads[axis] + pads[axis + 2]
                      - kernel_shape[axis] + 1) // stride[axis])
                  for axis in (0, 1))
    for boundary in BOUNDARIES:
        result = filters._filter(image3, kernel, stride, pads,
                                 filters.BOUNDARIES[boundary], "depthwise",
                                 compiled_backend, (rows, cols))
        expected = numpy_reference(image, kernel, stride, pads, boundary)
        close(result if image.ndim == 3 else result[:, :, 0], expected)
    assert len(in_place) == len(BOUNDARIES)


def test_auto_runs_small_kernels_depthwise_in_place(monkeypatch):
    """'auto' below FFT_MIN_TAPS taps: no band is gathered at all."""
    def no_bands(*args):
        raise AssertionError("filter2d gathered bands")

    monkeypatch.setattr(filters, "_run_bands", no_bands)
    rng = np.random.default_rng(5)
    image = rng.random((40, 30, 3)).astype(np.float32)
    kernel = rng.standard_normal((5, 5))
    for boundary in BOUNDARIES:
        close(filter2d(image, kernel, boundary=boundary),
              numpy_reference(image, kernel, boundary=boundary), np.float32)


def test_a_non_finite_kernel_with_zero_padding_follows_the_definition():
    """0 * inf is NaN: the padding's zeros times an inf weight give NaN on
    the border, as numpy.pad and a window sum do, on every method."""
    image = np.random.default_rng(2).random((9, 8))
    kernel = np.ones((3, 3))
    kernel[1, 0] = np.inf
    expected = numpy_reference(image, kernel)
    for method in ("auto", "direct", "depthwise", "fft"):
        result = filter2d(image, kernel, method=method)
        np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
        np.testing.assert_array_equal(result, expected)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_same_matches_torch_for_odd_and_even_kernels(torch):
    rng = np.random.default_rng(7)
    image = rng.standard_normal((13, 10))
    for shape in [(3, 3), (4, 4), (2, 5), (6, 3)]:
        kernel = rng.standard_normal(shape)
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(image)[None, None],
            torch.from_numpy(kernel)[None, None], padding="same")[0, 0].numpy()
        close(filter2d(image, kernel), expected)


# OpenCV's border names for ours; cv2.filter2D rejects BORDER_WRAP.
CV2_BORDER = {"zero": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT_101",
              "symmetric": "BORDER_REFLECT", "replicate": "BORDER_REPLICATE"}


@needs_compiled
@pytest.mark.parametrize("boundary", sorted(CV2_BORDER))
def test_photo_matches_opencv_filter2d(photo_small, boundary):
    """OpenCV's filter2D is the usual alternative; it agrees on every border
    it has. Its anchor ``((S - 1) // 2, (R - 1) // 2)`` centres even kernels
    as PyTorch's 'same' does (its default anchor, S // 2, does not)."""
    cv2 = pytest.importorskip("cv2")
    image = photo_small.astype(np.float64)
    rng = np.random.default_rng(11)
    for shape in [(3, 3), (5, 5), (4, 4), (3, 6)]:
        kernel = rng.standard_normal(shape)
        anchor = ((shape[1] - 1) // 2, (shape[0] - 1) // 2)
        expected = cv2.filter2D(image, -1, kernel, anchor=anchor,
                                borderType=getattr(cv2, CV2_BORDER[boundary]))
        close(filter2d(image, kernel, boundary=boundary), expected)


@pytest.mark.parametrize("method", ["direct", "depthwise", "fft"])
def test_methods_agree_on_a_larger_image(method):
    backend = COMPILED[0] if COMPILED else "naive"
    size = (61, 47) if COMPILED else (19, 13)
    rng = np.random.default_rng(3)
    image = rng.standard_normal(size + (2,)).astype(np.float32)
    kernel = rng.standard_normal((9, 8))
    reference = numpy_reference(image, kernel, boundary="reflect")
    close(filter2d(image, kernel, boundary="reflect", method=method,
                   backend=backend), reference, np.float32)


@needs_compiled
@pytest.mark.parametrize("size", [31, 33])
def test_large_kernels_take_the_fft_path_and_stay_accurate(photo_small, size,
                                                           monkeypatch):
    kernel = kernels.gaussian(size, size / 5)
    luminance = gray(photo_small)
    chosen = []
    original = filters._FFTBands.__call__

    def spy(self, batch):
        chosen.append(batch.shape)
        return original(self, batch)

    monkeypatch.setattr(filters._FFTBands, "__call__", spy)
    result = filter2d(luminance, kernel, boundary="symmetric")
    assert chosen, "a 31x31 kernel should run through the FFT path"
    close(result, scipy_same(luminance, kernel, "symmetric"))


def test_tiny_workspace_and_bands_change_nothing(monkeypatch):
    """Many bands, many backend calls, a last band past the image."""
    rng = np.random.default_rng(11)
    image = rng.standard_normal((29, 17, 2))
    kernel = rng.standard_normal((4, 3))
    backend = COMPILED[0] if COMPILED else "naive"
    expected = {method: filter2d(image, kernel, stride=(2, 1),
                                 boundary="wrap", method=method,
                                 backend=backend)
                for method in ("direct", "depthwise", "fft")}
    monkeypatch.setattr(fastconv.config, "WORKSPACE_BYTES", 1)
    monkeypatch.setattr(filters, "ROW_BLOCK", 3)
    monkeypatch.setattr(filters, "BAND_ROWS", 2)
    monkeypatch.setattr(filters, "FFT_BAND_ROWS", 5)
    for method, before in expected.items():
        after = filter2d(image, kernel, stride=(2, 1), boundary="wrap",
                         method=method, backend=backend)
        close(after, before)
        close(after, numpy_reference(image, kernel, (2, 1), boundary="wrap"))


def test_convolve2d_flips_the_kernel():
    ndimage = pytest.importorskip("scipy.ndimage")
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(5)
    image = rng.standard_normal((12, 15))
    kernel = rng.standard_normal((3, 5))
    result = convolve2d(image, kernel, boundary="replicate")
    close(result, filter2d(image, kernel[::-1, ::-1], boundary="replicate"))
    close(result, ndimage.convolve(image, kernel, mode="nearest"))
    close(convolve2d(image, kernel),
          signal.convolve2d(image, kernel, mode="same"))
    close(convolve2d(image, kernel, padding="valid"),
          signal.convolve2d(image, kernel, mode="valid"))
    even = rng.standard_normal((4, 4))
    close(convolve2d(image, even, stride=2),
          filter2d(image, even[::-1, ::-1], stride=2))


def test_symmetric_kernels_give_the_same_result_both_ways():
    image = np.random.default_rng(2).standard_normal((10, 10))
    for spec in ["gaussian:5,1", "sharpen", "laplacian", "box_blur:3"]:
        kernel = kernels.get(spec)
        close(convolve2d(image, kernel), filter2d(image, kernel))


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype_in, dtype_out", [
    (np.uint8, np.float32), (np.int16, np.float32), (np.int64, np.float32),
    (np.bool_, np.float32), (np.float32, np.float32),
    (np.float64, np.float64), (np.float16, np.float16)])
def test_result_dtype(dtype_in, dtype_out):
    image = (np.arange(30).reshape(5, 6) % 7).astype(dtype_in)
    result = filter2d(image, kernels.box_blur(3), backend="naive")
    assert result.dtype == dtype_out
    expected = numpy_reference(image.astype(np.float64), kernels.box_blur(3))
    rtol = 2e-3 if dtype_out == np.float16 else 2e-6
    np.testing.assert_allclose(result, expected, rtol=rtol, atol=rtol)


def test_input_is_unchanged_and_may_be_a_strided_view():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((20, 18, 3)).astype(np.float32)
    before = base.copy()
    view = base[::2, ::-1, 1:]
    kernel = [[1, 2], [3, 4], [5, 6]]  # a list is accepted too
    result = filter2d(view, kernel, boundary="symmetric", backend="naive")
    np.testing.assert_array_equal(base, before)
    close(result, numpy_reference(view, np.array(kernel, float),
                                  boundary="symmetric"), np.float32)


def test_uint8_photo_values_are_not_wrapped_or_clipped(photo_crop):
    # sharpen overshoots 0..255; the float32 result must keep it
    result = filter2d(photo_crop, kernels.sharpen(), backend="naive")
    reference = numpy_reference(photo_crop, kernels.sharpen())
    close(result, reference, np.float32)
    assert result.min() < 0 or result.max() > 255


# ------------------------------------------------------------- non-finite

@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_non_finite_pixel_stays_in_its_windows(bad_value):
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.ones((16, 16))
    image[7, 9] = bad_value
    kernel = np.full((3, 3), 1.0)
    for method in ("auto", "direct", "fft"):
        result = filter2d(image, kernel, method=method)
        expected = ndimage.correlate(image, kernel, mode="constant")
        np.testing.assert_array_equal(np.isfinite(result),
                                      np.isfinite(expected))
        finite = np.isfinite(expected)
        close(result[finite], expected[finite])


def test_a_non_finite_kernel_weight_runs_depthwise():
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.random.default_rng(1).random((12, 14))
    kernel = np.ones((3, 3))
    kernel[0, 2] = np.inf
    expected = ndimage.correlate(image, kernel, mode="reflect")
    for method in ("direct", "fft"):
        np.testing.assert_array_equal(
            filter2d(image, kernel, boundary="symmetric", method=method),
            expected)


# ---------------------------------------------------------------- memory

@needs_compiled
@pytest.mark.parametrize("size, method", [(9, "auto"), (31, "auto")])
def test_large_image_runs_in_about_input_plus_output(size, method):
    """4096 x 4096 float32: peak Python-visible memory <= in + out + 2 work."""
    image = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    kernel = kernels.gaussian(size, size / 4)
    image_bytes = image.nbytes
    filter2d(image[:64, :64], kernel, method=method)  # compile outside
    tracemalloc.start()
    try:
        result = filter2d(image, kernel, method=method)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.shape == image.shape
    extra = peak - result.nbytes
    assert extra <= 2 * fastconv.config.WORKSPACE_BYTES + 16 * 2**20, (
        f"scratch peaked at {extra / 2**20:.0f} MiB beyond the output for a "
        f"{image_bytes / 2**20:.0f} MiB image")


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call, error, message", [
    (lambda: filter2d([[1.0, 2.0]], np.ones((1, 1))), TypeError,
     "image must be a numpy.ndarray"),
    (lambda: filter2d(np.ones((2, 2, 2, 2)), np.ones((1, 1))), ValueError,
     "image must be 2-D"),
    (lambda: filter2d(np.ones(5), np.ones((1, 1))), ValueError,
     "image must be 2-D"),
    (lambda: filter2d(np.ones((0, 4)), np.ones((1, 1))), ValueError,
     "image must have no empty axis"),
    (lambda: filter2d(np.ones((3, 3), complex), np.ones((1, 1))), TypeError,
     "image must have a real numeric dtype"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1, 1))), ValueError,
     r"kernel must be 2-D \(R, S\)"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((0, 3))), ValueError,
     "kernel must be non-empty"),
    (lambda: filter2d(np.ones((3, 3)), [["a"]]), TypeError,
     "kernel must be a 2-D array of real numbers"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), stride=0),
     ValueError, "stride must be positive"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), stride=1.5),
     TypeError, "stride must be an int"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), padding="full"),
     ValueError, "padding must be 'same', 'valid', an int or a pair"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), padding=-1),
     ValueError, "padding must be >= 0"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), boundary="mirror"),
     ValueError, "boundary must be one of"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), method="magic"),
     ValueError, "method must be one of"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((1, 1)), backend="gpu9"),
     ValueError, "unknown backend 'gpu9'"),
    (lambda: filter2d(np.ones((3, 3)), np.ones((5, 5)), padding="valid"),
     ValueError, "filter2d: the output would be empty"),
    (lambda: convolve2d(np.ones((3, 3)), np.ones((2,))), ValueError,
     "kernel must be 2-D"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_every_boundary_name_is_documented():
    for name in BOUNDARIES:
        assert f"'{name}'" in filters.__doc__
    assert list(itertools.chain(BOUNDARIES)) == [
        "zero", "reflect", "symmetric", "replicate", "wrap"]


# ------------------------------------------- odd inputs and large strides

def test_masked_arrays_are_refused_on_every_backend(backend):
    """The mask was ignored on some backends and gave NaN on another."""
    image = np.ma.masked_array(np.ones((5, 5)), mask=np.eye(5, dtype=bool))
    with pytest.raises(TypeError, match="image is a numpy.ma.MaskedArray.*"
                                        "filled"):
        filter2d(image, np.ones((3, 3)), backend=backend)
    with pytest.raises(TypeError, match="kernel is a numpy.ma.MaskedArray"):
        filter2d(np.ones((5, 5)), np.ma.masked_array(np.ones((3, 3))),
                 backend=backend)
    with pytest.raises(TypeError, match="MaskedArray"):
        convolve2d(image, np.ones((3, 3)), backend=backend)


@pytest.mark.filterwarnings(
    "ignore:the matrix subclass:PendingDeprecationWarning")
def test_ndarray_subclasses_are_filtered_as_plain_arrays(backend, tmp_path):
    values = np.arange(30.0).reshape(5, 6)
    kernel = kernels.sobel_x()
    expected = filter2d(values, kernel, backend=backend)
    matrix = filter2d(np.matrix(values), np.matrix(kernel), backend=backend)
    assert type(matrix) is np.ndarray
    np.testing.assert_array_equal(matrix, expected)
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+",
                                       dtype=np.float64, shape=(5, 6))
    mapped[...] = values
    np.testing.assert_array_equal(filter2d(mapped, kernel, backend=backend),
                                  expected)


@pytest.mark.parametrize("stride", [2**31 - 1, (1, 2**31 - 1), (2**20, 3)])
def test_a_stride_past_the_image_reads_the_first_window(backend, stride):
    image = np.arange(35.0).reshape(5, 7)
    result = filter2d(image, kernels.box_blur(3), stride=stride,
                      backend=backend)
    full = filter2d(image, kernels.box_blur(3), backend=backend)
    pair = stride if isinstance(stride, tuple) else (stride, stride)
    # the strided path sums in another order than the full one
    np.testing.assert_allclose(result, full[::pair[0], ::pair[1]],
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("stride", [2**70, (1, 2**63), (2**40, 3)])
def test_a_stride_past_the_index_type_names_the_stride(stride):
    with pytest.raises(ValueError, match=r"stride must be at most 2\*\*31"):
        filter2d(np.ones((5, 7)), kernels.box_blur(3), stride=stride)


@pytest.mark.parametrize("padding", [2**40, (0, 2**70)])
def test_a_padding_past_the_index_type_names_the_padding(padding):
    with pytest.raises(ValueError, match=r"padding must be at most 2\*\*31"):
        filter2d(np.ones((4, 4)), np.ones((3, 3)), padding=padding)


def test_an_unrepresentable_output_names_the_padding():
    with pytest.raises(ValueError, match="too large for any array: check "
                                         "padding"):
        filter2d(np.ones((4, 4)), np.ones((3, 3)), padding=2**31 - 1)


def test_an_empty_output_says_why_without_negative_sizes():
    with pytest.raises(ValueError, match=r"a 20x20 kernel does not fit in "
                                         r"the 16x16 image") as caught:
        filter2d(np.ones((16, 16)), np.ones((20, 20)), padding="valid")
    assert "-" not in str(caught.value).split("padded")[0]


def gathered_reference(image, kernel, stride, boundary):
    """The definition on only the windows the strided outputs read (for
    images too large for numpy_reference)."""
    rows, cols = kernel.shape
    pads = ((rows - 1) // 2, (cols - 1) // 2, rows // 2, cols // 2)
    maps = [filters._index_map(image.shape[axis], pads[axis], pads[axis + 2],
                               filters.BOUNDARIES[boundary])
            for axis in (0, 1)]
    outs = [(maps[axis].size - kernel.shape[axis]) // stride + 1
            for axis in (0, 1)]
    result = np.zeros(tuple(outs) + image.shape[2:])
    for r in range(rows):
        for s in range(cols):
            row_index = maps[0][np.arange(outs[0]) * stride + r]
            col_index = maps[1][np.arange(outs[1]) * stride + s]
            taps = image[np.ix_(np.maximum(row_index, 0),
                                np.maximum(col_index, 0))].astype(np.float64)
            taps[row_index < 0] = 0
            taps[:, col_index < 0] = 0
            result += kernel[r, s] * taps
    return result


def scratch_of(call, result_bytes):
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - result.nbytes


LAYOUT_CASES = {
    # name: (image maker, stride); the issue measured 252 MiB, a 15.8 GiB
    # band attempt and 511 MiB for the first three at full size
    "fortran-2048-stride-64": (lambda: np.asfortranarray(
        np.random.default_rng(1).random((2048, 2048), np.float32)), 64),
    "broadcast-65536-stride-1024": (lambda: np.broadcast_to(
        np.random.default_rng(2).random(65536).astype(np.float32),
        (65536, 65536)), 1024),
    "uint8-2048": (lambda: np.random.default_rng(3).integers(
        0, 256, (2048, 2048), dtype=np.uint8), 1),
    "uint8-rgb-strided-view": (lambda: np.random.default_rng(4).integers(
        0, 256, (1024, 3072, 3), dtype=np.uint8)[:, ::3], 5),
    "float16-2048": (lambda: np.random.default_rng(5).random(
        (2048, 2048)).astype(np.float16), 3),
    # stride 1: the float32 result was kept whole until the end (256 MiB
    # for 8192^2)
    "float16-2048-stride-1": (lambda: np.random.default_rng(5).random(
        (2048, 2048)).astype(np.float16), 1),
    # a tall view at a large stride: the row map covered every row (257 MiB
    # for a 2^24 x 2^24 view)
    "broadcast-tall-stride-2^20": (lambda: np.broadcast_to(
        np.random.default_rng(6).random((1, 64)).astype(np.float32),
        (2**24, 64)), 2**20),
}


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_scratch_follows_the_output_for_any_layout_and_stride(
        monkeypatch, compiled_backend, case, boundary):
    """Scratch stays within 2 WORKSPACE_BYTES (patched to 4 MiB here) for
    strided, broadcast, Fortran-order and non-float images: rows and columns
    no output reads are never copied, and conversion is band by band."""
    monkeypatch.setattr(fastconv.config, "WORKSPACE_BYTES", 4 * 2**20)
    make, stride = LAYOUT_CASES[case]
    image = make()
    kernel = kernels.gaussian(5, 1.0)

    def call():
        return filter2d(image, kernel, stride=stride, boundary=boundary,
                        backend=compiled_backend)

    call()  # Numba compiles (or loads) its kernels outside the measurement
    result, scratch = scratch_of(call, None)
    assert scratch <= 2 * fastconv.config.WORKSPACE_BYTES, (
        f"{scratch / 2**20:.1f} MiB of scratch for a "
        f"{result.nbytes / 2**20:.2f} MiB result")
    check = result if result.ndim == 2 else result[..., 1]
    plane = image if image.ndim == 2 else image[..., 1]
    rows = min(check.shape[0], 8)
    expected = gathered_reference(plane[:rows * stride + 8], kernel, stride,
                                  boundary)[:rows - 2]
    tolerance = 2e-3 if image.dtype == np.float16 else 1e-4
    np.testing.assert_allclose(check[:rows - 2], expected, rtol=tolerance,
                               atol=tolerance * 255)


@pytest.mark.skipif("numba" not in fastconv.available_backends(),
                    reason="the scratch bound is the numba direct kernel's")
@pytest.mark.parametrize("method", ["auto", "fft"])
def test_large_kernels_on_a_wide_image_stay_within_the_workspace(method):
    """FFT bands of 256 rows of a 65536-wide image took 360 MiB: a wide
    image gets shorter bands, and 'auto' filters it depthwise when even
    those would not fit. Depthwise here is the numba backend's direct
    kernel (no scratch); the cython backend's conv2d tiles its im2col
    columns by whole output rows, R * S * W values per thread (see the
    README's Guarantees)."""
    image = np.asfortranarray(
        np.random.default_rng(6).random((40, 65536), np.float32))
    kernel = kernels.gaussian(17, 3.0)
    rows, fits = filters._FFTBands.rows(40, 17, 1, 65536 + 16, 4)
    assert rows <= 2 * 17 and not fits   # down to about 2 R, still too wide
    result, scratch = scratch_of(lambda: filter2d(
        image, kernel, method=method, backend="numba"), None)
    if method == "auto":
        assert scratch <= 2 * fastconv.config.WORKSPACE_BYTES, scratch
    close(result[:, :64], numpy_reference(image[:, :96], kernel)[:, :64],
          np.float32)


@pytest.mark.parametrize("mode", ["constant", "reflect", "symmetric", "edge",
                                  "wrap"])
def test_index_map_at_positions_equals_the_whole_map(mode):
    """filters._index_map_at (the positions a large stride reads, without
    a map of the whole axis) against numpy.pad's map, pads wider than the
    axis included."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        size = int(rng.integers(1, 80))
        before, after = (int(v) for v in rng.integers(0, 25, 2))
        whole = filters._index_map(size, before, after, mode)
        positions = rng.integers(0, whole.size, 40)
        np.testing.assert_array_equal(
            filters._index_map_at(positions, size, before, after, mode),
            whole[positions])


@pytest.mark.parametrize("which", ["image", "kernel"])
def test_axes_past_the_index_bound_are_refused_before_any_copy(which):
    """A broadcast view can claim 2^31 rows; converting it was an 8 GiB
    (kernel) or 16 GiB (index map) allocation."""
    huge = np.broadcast_to(np.uint8(1), (2**31, 8))
    image, kernel = (huge, np.ones((3, 3))) if which == "image" else (
        np.ones((8, 8), np.float32), huge)
    with pytest.raises(ValueError, match=rf"axis of {which}.*2\*\*31 - 1"):
        filter2d(image, kernel)
