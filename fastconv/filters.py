"""Image filtering on fastconv's kernels: ``filter2d`` and ``convolve2d``.

``filter2d`` is a cross-correlation (what CNN libraries call convolution):

    out[i, j, c] = sum_{r, s} padded[i * stride_h + r, j * stride_w + s, c] * kernel[r, s]

``convolve2d`` is the true convolution, the same sum with the kernel flipped
in both axes (``kernel[::-1, ::-1]``); for the symmetric kernels (blur,
Gaussian, Laplacian, sharpen) the two agree.

``padded`` is the image extended by ``padding`` with what ``boundary`` says
lies outside it, exactly as ``numpy.pad`` would extend it:

============  ================  ====================================
boundary      numpy.pad mode    a row ``a b c d`` extended by 2
============  ================  ====================================
'zero'        'constant' (0)    ``0 0 | a b c d | 0 0``
'reflect'     'reflect'         ``c b | a b c d | c b``  (OpenCV's default)
'symmetric'   'symmetric'       ``b a | a b c d | d c``
'replicate'   'edge'            ``a a | a b c d | d d``
'wrap'        'wrap'            ``c d | a b c d | a b``
============  ================  ====================================

How the work is done: the image is cut into horizontal bands of output rows;
each band's input rows (with the kernel's halo, and the boundary filled in
from the padding rule) are gathered into a small batch, and the batch goes
through one depthwise ``fastconv.functional.conv2d`` (channels as C, groups =
C) on the selected backend, so scratch memory stays within
``fastconv.config.WORKSPACE_BYTES`` whatever the image size. A kernel of rank
one (box, Gaussian, Sobel, Prewitt) is run as a column pass then a row pass
(R + S taps instead of R * S); a large kernel that is not separable goes
through an FFT of each band (``scipy.fft``), whose cost does not grow with the
kernel. ``method=`` forces one of the three.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv import _shapes, _validate, config
from fastconv.backends import resolve

__all__ = ["filter2d", "convolve2d", "BOUNDARIES", "METHODS"]

#: boundary name -> numpy.pad mode
BOUNDARIES = {
    "zero": "constant",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "wrap": "wrap",
}

METHODS = ("auto", "direct", "separable", "fft")

#: With ``method='auto'``, a kernel that is not separable and has at least
#: this many taps (R * S) goes through the FFT path. Chosen by
#: ``benchmarks/bench_filters.py`` (see docs/filtering.md).
FFT_MIN_TAPS = 15 * 15

#: With ``method='auto'``, a rank-one kernel with at least this many taps runs
#: as a column pass then a row pass.
SEPARABLE_MIN_TAPS = 5 * 5

#: Output rows per band (fewer for small images, so that every thread gets a
#: band); a band's scratch stays in cache while the backend works on it.
BAND_ROWS = 64


# ------------------------------------------------------------------ checks

def _float_image(image):
    """(image as (H, W, C), compute dtype, result dtype, was_2d)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a numpy.ndarray of shape (H, W) or (H, W, C), got "
            f"{type(image).__name__} (use numpy.asarray first)")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2-D (H, W) or 3-D (H, W, C), got shape "
            f"{image.shape}")
    if min(image.shape) < 1:
        raise ValueError(f"image must have no empty axis, got shape "
                         f"{image.shape}")
    kind = image.dtype.kind
    if kind == "f":
        result_dtype = image.dtype
        # float16 and long double are computed in the nearest kernel dtype.
        compute_dtype = (np.dtype(np.float64) if image.dtype.itemsize > 4
                         else np.dtype(np.float32))
    elif kind in "uib":
        result_dtype = compute_dtype = np.dtype(np.float32)
    else:
        raise TypeError(
            f"image must have a real numeric dtype (integer or float), got "
            f"{image.dtype}")
    was_2d = image.ndim == 2
    return (image[:, :, None] if was_2d else image), compute_dtype, \
        result_dtype, was_2d


def _float_kernel(kernel, dtype):
    try:
        array = np.asarray(kernel)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"kernel must be a 2-D array of numbers: {exc}") from None
    if array.dtype.kind not in "uifb":
        raise TypeError(
            f"kernel must be a 2-D array of real numbers, got dtype "
            f"{array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"kernel must be 2-D (R, S), got shape {array.shape}")
    if min(array.shape) < 1:
        raise ValueError(f"kernel must be non-empty, got shape {array.shape}")
    return array.astype(dtype)


def _padding(padding, kernel_shape):
    """(top, left, bottom, right) from 'same', 'valid', an int or a pair."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            top, bottom = _shapes.same_padding(kernel_shape[0], 1)
            left, right = _shapes.same_padding(kernel_shape[1], 1)
            return (top, left, bottom, right)
        raise ValueError(
            f"padding must be 'same', 'valid', an int or a pair of ints; got "
            f"{padding!r}")
    pad_h, pad_w = _validate.pair(padding, "padding", minimum=0)
    return (pad_h, pad_w, pad_h, pad_w)


def _boundary_mode(boundary):
    if not isinstance(boundary, str) or boundary not in BOUNDARIES:
        raise ValueError(
            f"boundary must be one of {list(BOUNDARIES)}, got {boundary!r}")
    return BOUNDARIES[boundary]


def _method(method):
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got "
                         f"{method!r}")
    return method


# ------------------------------------------------------------- the plan

def _index_map(size, before, after, mode):
    """Source index of every padded position along one axis (-1: a zero).

    Padding an ``arange`` with ``numpy.pad`` gives numpy.pad's own rule,
    including pads wider than the axis.
    """
    positions = np.arange(size, dtype=np.int64)
    if mode == "constant":
        return np.pad(positions, (before, after), mode="constant",
                      constant_values=-1)
    return np.pad(positions, (before, after), mode=mode)


def _separable_factors(kernel):
    """(column (R,), row (S,)) with outer(column, row) == kernel, or None.

    A kernel counts as separable when its rank-one approximation is exact to
    the rounding of its dtype.
    """
    if min(kernel.shape) < 2:
        return None
    work = kernel.astype(np.float64)
    if not np.all(np.isfinite(work)):
        return None
    u, singular, vt = np.linalg.svd(work)
    if singular[0] == 0.0:
        return None
    tolerance = 4 * np.finfo(kernel.dtype).eps * singular[0]
    if singular[1] > tolerance:
        return None
    scale = math.sqrt(singular[0])
    column, row = u[:, 0] * scale, vt[0] * scale
    if np.abs(np.outer(column, row) - work).max() > tolerance * max(
            kernel.shape):
        return None
    return column.astype(kernel.dtype), row.astype(kernel.dtype)


def _choose_method(method, kernel, factors):
    taps = kernel.size
    if method == "auto":
        if factors is not None and taps >= SEPARABLE_MIN_TAPS:
            return "separable"
        return "fft" if taps >= FFT_MIN_TAPS else "direct"
    if method == "separable" and factors is None:
        raise ValueError(
            "method='separable' needs a rank-one kernel (an outer product of "
            "a column and a row), and this kernel is not one")
    return method


# ---------------------------------------------------------- band kernels

class _DirectBands:
    """A batch of bands through one depthwise conv2d."""

    def __init__(self, kernel, channels, stride, backend):
        self.weight = np.ascontiguousarray(
            np.broadcast_to(kernel, (channels, 1) + kernel.shape))
        self.channels, self.stride, self.backend = channels, stride, backend

    def scratch_per_output_row(self, out_width, padded_width, itemsize):
        # the backend's im2col columns for one output row
        return self.weight.shape[2] * self.weight.shape[3] * out_width * \
            itemsize * self.channels

    def __call__(self, batch):
        from fastconv.functional import conv2d

        return conv2d(batch, self.weight, stride=self.stride,
                      groups=self.channels, backend=self.backend)


class _SeparableBands:
    """A column pass (R x 1) then a row pass (1 x S), both depthwise conv2d."""

    def __init__(self, factors, channels, stride, backend):
        column, row = factors
        self.column_weight = np.ascontiguousarray(np.broadcast_to(
            column[:, None], (channels, 1, column.size, 1)))
        self.row_weight = np.ascontiguousarray(np.broadcast_to(
            row[None, :], (channels, 1, 1, row.size)))
        self.channels, self.stride, self.backend = channels, stride, backend

    def scratch_per_output_row(self, out_width, padded_width, itemsize):
        # the intermediate row plus both passes' im2col columns
        taps = self.column_weight.shape[2] + self.row_weight.shape[3]
        return (padded_width * (1 + taps)) * itemsize * self.channels

    def __call__(self, batch):
        from fastconv.functional import conv2d

        columns_done = conv2d(batch, self.column_weight,
                              stride=(self.stride[0], 1),
                              groups=self.channels, backend=self.backend)
        return conv2d(columns_done, self.row_weight,
                      stride=(1, self.stride[1]), groups=self.channels,
                      backend=self.backend)


class _FFTBands:
    """Each band correlated through a real FFT of the band (overlap-save)."""

    def __init__(self, kernel, channels, stride):
        self.kernel, self.stride = kernel, stride
        self._spectrum_key, self._spectrum = None, None

    def scratch_per_output_row(self, out_width, padded_width, itemsize):
        # a complex half-spectrum row and a real result row, per channel
        from scipy import fft

        width = fft.next_fast_len(padded_width, real=True)
        return (width // 2 + 1) * 2 * itemsize * 3 + width * itemsize

    def __call__(self, batch):
        from scipy import fft

        from fastconv._threads import get_num_threads

        kernel_height, kernel_width = self.kernel.shape
        band_height, band_width = batch.shape[-2:]
        shape = (fft.next_fast_len(band_height, real=True),
                 fft.next_fast_len(band_width, real=True))
        if self._spectrum_key != shape:
            # correlation = convolution with the flipped kernel
            self._spectrum = fft.rfft2(self.kernel[::-1, ::-1], s=shape)
            self._spectrum_key = shape
        workers = get_num_threads()
        spectrum = fft.rfft2(batch, s=shape, workers=workers)
        spectrum *= self._spectrum
        full = fft.irfft2(spectrum, s=shape, workers=workers)
        # An FFT at least as long as the band leaves the 'valid' part free of
        # wrap-around.
        valid = full[..., kernel_height - 1:band_height,
                     kernel_width - 1:band_width]
        return valid[..., ::self.stride[0], ::self.stride[1]]


# ---------------------------------------------------------------- driver

def _gather_band(image, rows, col_map, left, out):
    """Fill ``out`` (C, len(rows), padded_width) with the padded image rows.

    ``rows`` are source rows, -1 for a zero row; ``col_map`` the source column
    of every padded column, -1 for a zero column.
    """
    width = image.shape[1]
    valid_rows = rows >= 0
    first = int(rows[0])
    if (valid_rows.all() and int(rows[-1]) - first == rows.size - 1
            and (rows.size == 1 or np.all(np.diff(rows) == 1))):
        source = image[first:first + rows.size]          # a view, no copy
    else:
        source = image[np.where(valid_rows, rows, 0)]
    out[:, :, left:left + width] = source.transpose(2, 0, 1)
    for start, stop in ((0, left), (left + width, col_map.size)):
        if stop > start:
            columns = col_map[start:stop]
            out[:, :, start:stop] = source[:, np.maximum(columns, 0)
                                           ].transpose(2, 0, 1)
            out[:, :, start:stop][:, :, columns < 0] = 0
    if not valid_rows.all():
        out[:, ~valid_rows, :] = 0


def filter2d(image, kernel, *, stride=1, padding="same", boundary="zero",
             backend=None, method="auto"):
    """Cross-correlate a grayscale or colour image with a 2-D kernel.

    image: ``(H, W)`` or ``(H, W, C)``, any real dtype; every channel is
    filtered on its own with the same kernel. kernel: ``(R, S)`` array-like.
    stride: int or pair; the result equals the stride-1 result subsampled at
    ``[::stride_h, ::stride_w]``. padding: ``'same'`` (output H x W at
    stride 1, odd and even kernels centred as PyTorch's ``padding='same'``:
    an even kernel's extra row/column of padding goes after), ``'valid'``
    (no padding), or an int/pair of rows/columns added on each side.
    boundary: what the padding holds (``'zero'``, ``'reflect'``,
    ``'symmetric'``, ``'replicate'``, ``'wrap'``; see the module docstring).
    backend: the fastconv backend the convolutions run on (None: the current
    default). method: ``'auto'``, ``'direct'``, ``'separable'`` (rank-one
    kernels only) or ``'fft'``.

    Returns ``(H_out, W_out)`` or ``(H_out, W_out, C)``: float32 for integer
    input, the input's float dtype otherwise.
    """
    image3, compute_dtype, result_dtype, was_2d = _float_image(image)
    kernel = _float_kernel(kernel, compute_dtype)
    stride = _validate.pair(stride, "stride", minimum=1)
    top, left, bottom, right = _padding(padding, kernel.shape)
    mode = _boundary_mode(boundary)
    method = _method(method)
    if backend is not None:
        resolve("conv2d_forward", backend)  # a bad name fails before any work

    height, width, channels = image3.shape
    kernel_height, kernel_width = kernel.shape
    out_height = _shapes.conv_output_size(height, kernel_height, stride[0],
                                          top, bottom, 1)
    out_width = _shapes.conv_output_size(width, kernel_width, stride[1], left,
                                         right, 1)
    _validate.nonempty_output(out_height, out_width, "filter2d")

    factors = _separable_factors(kernel) if method in (
        "auto", "separable") else None
    method = _choose_method(method, kernel, factors)
    if method == "fft":
        bands = _FFTBands(kernel, channels, stride)
    elif method == "separable":
        bands = _SeparableBands(factors, channels, stride, backend)
    else:
        bands = _DirectBands(kernel, channels, stride, backend)

    if image3.dtype != compute_dtype:
        # one conversion of the whole image is cheaper than one per band
        image3 = image3.astype(compute_dtype)
    out = _run_bands(image3, bands, stride, (top, left, bottom, right), mode,
                     (kernel_height, kernel_width), (out_height, out_width))
    if was_2d:
        out = out[:, :, 0]
    return out if out.dtype == result_dtype else out.astype(result_dtype)


def _run_bands(image, bands, stride, pads, mode, kernel_shape, out_shape):
    """Filter ``image`` (H, W, C) band by band into a new (H_out, W_out, C)."""
    top, left, bottom, right = pads
    height, width, channels = image.shape
    kernel_height, _ = kernel_shape
    out_height, out_width = out_shape
    itemsize = image.dtype.itemsize
    row_map = _index_map(height, top, bottom, mode)
    col_map = _index_map(width, left, right, mode)
    padded_width = col_map.size

    # Output rows per band and bands per backend call, so that one call's
    # gathered input, result and scratch stay within WORKSPACE_BYTES.
    from fastconv._threads import get_num_threads

    per_output_row = channels * itemsize * (
        stride[0] * padded_width + out_width) + bands.scratch_per_output_row(
            out_width, padded_width, itemsize)
    rows_per_call = max(1, config.WORKSPACE_BYTES // per_output_row)
    band_rows = max(1, min(BAND_ROWS, rows_per_call,
                           -(-out_height // get_num_threads())))
    if isinstance(bands, _FFTBands):
        # FFT bands are as tall as the budget allows: the halo is overhead.
        band_rows = max(1, min(out_height, rows_per_call,
                               max(BAND_ROWS, 4 * kernel_height)))
    bands_per_call = max(1, rows_per_call // band_rows)
    band_count = -(-out_height // band_rows)
    band_input_rows = (band_rows - 1) * stride[0] + kernel_height

    # The last band may run past the image: its extra rows read zeros and
    # their results are dropped, so that every band has one shape.
    needed = (band_count * band_rows - 1) * stride[0] + kernel_height
    if needed > row_map.size:
        row_map = np.concatenate(
            [row_map, np.full(needed - row_map.size, -1, np.int64)])

    out = np.empty((out_height, out_width, channels), dtype=image.dtype)
    batch = np.empty((min(bands_per_call, band_count), channels,
                      band_input_rows, padded_width), dtype=image.dtype)
    for first_band in range(0, band_count, bands_per_call):
        count = min(bands_per_call, band_count - first_band)
        for i in range(count):
            start = (first_band + i) * band_rows * stride[0]
            _gather_band(image, row_map[start:start + band_input_rows],
                         col_map, left, batch[i])
        result = bands(batch[:count])       # (count, C, band_rows, out_width)
        for i in range(count):
            row = (first_band + i) * band_rows
            rows = min(band_rows, out_height - row)
            out[row:row + rows] = result[i, :, :rows].transpose(1, 2, 0)
    return out


def convolve2d(image, kernel, *, stride=1, padding="same", boundary="zero",
               backend=None, method="auto"):
    """True 2-D convolution: ``filter2d`` with the kernel flipped in both axes.

    ``convolve2d(image, k, ...) == filter2d(image, k[::-1, ::-1], ...)`` for
    every argument; see ``filter2d`` for their meaning. With an even kernel
    and ``padding='same'`` the extra padding still goes after (bottom/right),
    applied to the flipped kernel.
    """
    _, compute_dtype, _, _ = _float_image(image)
    flipped = _float_kernel(kernel, compute_dtype)[::-1, ::-1]
    return filter2d(image, flipped, stride=stride, padding=padding,
                    boundary=boundary, backend=backend, method=method)
