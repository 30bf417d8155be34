"""Image filtering on fastconv's kernels: ``filter2d`` and ``convolve2d``.

``filter2d`` is a cross-correlation (what CNN libraries call convolution):

    out[i, j, c] = sum_{r, s} kernel[r, s]
                   * padded[i * stride_h + r, j * stride_w + s, c]

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

How the work is done: every method is a convolution on the selected
backend, with scratch memory within about ``fastconv.config.WORKSPACE_BYTES``
whatever the image size. Methods (``method=``):

``'depthwise'``
    The textbook depthwise conv2d (an R x S kernel, groups = channels), which
    the Numba backend runs as a direct kernel (each tap swept over whole
    rows, no im2col, no scratch). A grayscale image, or a colour one with
    its channels interleaved (kernel columns C values apart) when the column
    stride is 1, goes through it whole, as it lies in memory: conv2d's zero
    padding is the 'zero' boundary, and for the other boundaries only the
    outputs whose windows reach into the padding are recomputed, from small
    padded copies of the image's edges. The default below ``FFT_MIN_TAPS``
    taps, and the only method that keeps an inf or NaN pixel confined to the
    windows that contain it: a band whose 'direct' or 'fft' result is not
    finite is recomputed with it, and a non-finite kernel always uses it.
``'direct'``
    A band of T output rows is one grouped conv2d (groups = channels) whose
    "channels" are the band's input rows and whose 1 x S weight is the kernel
    laid out as a banded matrix: one BLAS GEMM per band and channel. Slower
    than 'depthwise' on the Numba backend now (2.5-6x on 2048^2 float32); kept
    as an option.
``'fft'``
    Each band through a real FFT (``scipy.fft``) times the kernel's
    spectrum: a cost that does not grow with the kernel. The default from
    ``FFT_MIN_TAPS`` taps up (chosen by ``benchmarks/bench_filters.py``).

The band-wise methods cut the output into horizontal bands; each band's
input rows (with the kernel's halo, and the boundary filled in by the padding
rule) are gathered into a small batch, and the batch goes through one
conv2d (or FFT). 'depthwise' runs in bands too where it cannot take the
image whole: a strided view, several channels with a column stride, a
non-finite kernel.
"""

from __future__ import annotations

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

METHODS = ("auto", "direct", "depthwise", "fft")

#: With ``method='auto'``, a kernel with at least this many taps (R * S) goes
#: through the FFT path, a smaller one depthwise. Measured on 2048^2 float32
#: images, gray and RGB, zero and reflect boundaries, 2 threads, Numba
#: backend: depthwise is 1.1-1.4x faster than FFT at 11 x 11 and 13 x 13;
#: at 15 x 15 FFT is 1.0-1.15x faster alone but depthwise 1.3-1.45x faster
#: in benchmarks/bench_filters.py's rotation with SciPy and OpenCV (the FFT
#: suffers more from a busy cache), and a tie goes to depthwise (it rounds
#: like the window sum); from 17 x 17 FFT is as fast or faster (1.1-1.4x).
FFT_MIN_TAPS = 16 * 16

#: Output rows per band of the 'direct' method, for kernels up to 15 rows
#: tall and above (see ``row_block``).
ROW_BLOCK = 16
ROW_BLOCK_LARGE = 32

#: Output rows per band of the 'depthwise' method when it runs in bands
#: (32 to 256 rows time the same within 5% on 2048^2 float32).
BAND_ROWS = 64

#: Output rows per band of the 'fft' method, at least (4 R if taller).
FFT_BAND_ROWS = 256


# ------------------------------------------------------------------ checks

def _float_image(image):
    """(image as (H, W, C), compute dtype, result dtype, was_2d).

    A masked array is refused (the filter would have to decide what a masked
    pixel holds); any other ndarray subclass (``np.matrix``, ``np.memmap``)
    is filtered as the plain ndarray it views.
    """
    _refuse_masked(image, "image")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a numpy.ndarray of shape (H, W) or (H, W, C), got "
            f"{type(image).__name__} (use numpy.asarray first)")
    image = np.asarray(image)  # a subclass as the ndarray it views
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2-D (H, W) or 3-D (H, W, C), got shape "
            f"{image.shape}")
    if min(image.shape) < 1:
        raise ValueError(f"image must have no empty axis, got shape "
                         f"{image.shape}")
    # (a broadcast view can claim any size; the kernels index with int64)
    _validate.at_most_max_axis(image.shape, "every axis of image",
                               image.shape)
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


def _refuse_masked(array, name):
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, which filter2d does not "
            f"take: pass {name}.filled(value) to choose what masked pixels "
            f"hold (or {name}.data to ignore the mask)")


def _float_kernel(kernel, dtype):
    _refuse_masked(kernel, "kernel")
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
    # checked before the copy below, which a broadcast view makes real
    _validate.at_most_max_axis(array.shape, "every axis of kernel",
                               array.shape)
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


def _index_map_at(positions, size, before, after, mode):
    """``_index_map(size, before, after, mode)[positions]`` in memory of
    the order of ``positions`` and the pads, whatever ``size`` (a tall
    broadcast view read at a large stride needs a few rows of an axis of
    millions).

    An axis longer than twice its pads is padded as a stand-in: its first
    and last ``before + after + 1`` indices. Every mode's padding reads
    within that many of an end (reflect, symmetric and edge the near end,
    wrap the far one), so the stand-in's padding is the axis's.
    """
    reach = before + after + 1
    if size <= 2 * reach:
        return _index_map(size, before, after, mode)[positions]
    ends = np.concatenate([np.arange(reach, dtype=np.int64),
                           np.arange(size - reach, size, dtype=np.int64)])
    if mode == "constant":
        padded_ends = np.pad(ends, (before, after), mode="constant",
                             constant_values=-1)
    else:
        padded_ends = np.pad(ends, (before, after), mode=mode)
    inside = positions - before
    leading = positions < before
    trailing = inside >= size
    result = inside.copy()
    result[leading] = padded_ends[positions[leading]]
    result[trailing] = padded_ends[before + 2 * reach
                                   + (inside[trailing] - size)]
    return result


def _choose_method(method, kernel):
    """The method that will run: 'auto' resolved, a non-finite kernel routed.

    The 'direct' and 'fft' methods multiply every pixel of a band by some
    weight, zeros included, and 0 * inf is NaN: only the depthwise method
    keeps an inf or NaN confined to the windows that hold it. A non-finite
    kernel therefore always runs depthwise; with 'direct' or 'fft' a
    non-finite pixel is caught per band, from the band's result (see
    ``_run_bands``).
    """
    if method == "auto":
        method = "fft" if kernel.size >= FFT_MIN_TAPS else "depthwise"
    if not np.isfinite(kernel).all():
        method = "depthwise"
    return method


def row_block(kernel_shape, stride_h, out_width, itemsize):
    """Output rows per band of the 'direct' method.

    Each band is one GEMM row block: T output rows read (T - 1) * stride + R
    input rows, so a taller block wastes more multiplications by zero but
    feeds BLAS a bigger matrix (chosen by benchmarks/bench_filters.py). The
    backend unrolls a band's rows * S taps for every output value; T shrinks
    until every thread's unrolled band fits in WORKSPACE_BYTES.
    """
    from fastconv._threads import get_num_threads

    kernel_height, kernel_width = kernel_shape
    block = ROW_BLOCK_LARGE if kernel_height > 15 else ROW_BLOCK
    block = max(1, block // stride_h)
    per_input_row = kernel_width * out_width * itemsize * get_num_threads()
    while block > 1 and ((block - 1) * stride_h + kernel_height) \
            * per_input_row > config.WORKSPACE_BYTES:
        block //= 2
    return block


# ---------------------------------------------------------- band kernels
#
# Each takes a batch of bands ``(n, C, band_input_rows, padded_width)`` and
# returns ``(n, C, band_rows, out_width)``, the 'valid' strided correlation
# of each band.

class _RowBlockBands:
    scratch_per_input_value = 0     # the backend bounds its own scratch

    """A band of T output rows as one grouped conv2d with a 1 x S kernel.

    The band's input rows become channels: output row t of channel c is
    ``sum_i sum_s band[c, i, j * stride_w + s] * W[c * T + t, i, s]`` with
    ``W[c * T + t, i, s] = kernel[i - t * stride_h, s]`` inside the window and
    0 outside it (a banded, Toeplitz-like weight), groups = C. conv2d turns
    this into one GEMM of (T x rows * S) by (rows * S x out_width) per band
    and channel, which BLAS runs far faster than R * S one-row GEMMs would
    (how im2col backends run a depthwise convolution), multiplications by
    zero included.
    """

    def __init__(self, kernel, channels, stride, backend, out_shape,
                 column_dilation):
        kernel_height, kernel_width = kernel.shape
        out_height, out_width = out_shape
        self.band_rows = min(out_height, row_block(
            kernel.shape, stride[0], out_width * column_dilation,
            kernel.dtype.itemsize))
        input_rows = (self.band_rows - 1) * stride[0] + kernel_height
        block = np.zeros((self.band_rows, input_rows, 1, kernel_width),
                         dtype=kernel.dtype)
        for t in range(self.band_rows):
            first = t * stride[0]
            block[t, first:first + kernel_height, 0, :] = kernel
        self.weight = np.ascontiguousarray(np.broadcast_to(
            block, (channels,) + block.shape).reshape(
                (channels * self.band_rows,) + block.shape[1:]))
        self.channels, self.stride, self.backend = channels, stride, backend
        self.dilation = (1, column_dilation)

    def __call__(self, batch):
        from fastconv.functional import conv2d

        count, channels, input_rows, padded_width = batch.shape
        y = conv2d(batch.reshape(count, channels * input_rows, 1,
                                 padded_width),
                   self.weight, stride=(1, self.stride[1]),
                   dilation=self.dilation, groups=channels,
                   backend=self.backend)
        return y.reshape(count, channels, self.band_rows, y.shape[-1])


class _DepthwiseBands:
    scratch_per_input_value = 0

    """A batch of bands through one depthwise conv2d (R x S, groups = C).

    For what ``_depthwise_in_place`` cannot take whole, and for the bands
    of the other methods whose result is not finite: it alone leaves an inf
    or NaN confined to the windows that hold it.
    """

    def __init__(self, kernel, channels, stride, backend, band_rows,
                 column_dilation):
        self.band_rows = band_rows
        self.weight = np.ascontiguousarray(
            np.broadcast_to(kernel, (channels, 1) + kernel.shape))
        self.channels, self.stride, self.backend = channels, stride, backend
        self.dilation = (1, column_dilation)

    def __call__(self, batch):
        from fastconv.functional import conv2d

        return conv2d(batch, self.weight, stride=self.stride,
                      dilation=self.dilation, groups=self.channels,
                      backend=self.backend)


class _FFTBands:
    """Each band correlated through a real FFT of the band (overlap-save)."""

    #: Scratch per input value of a band, besides the band: rfft2's complex
    #: half-spectrum and irfft2's real result (measured peaks run to about
    #: 1.5 times the estimate: 34 MiB for a 2048^2 RGB image, 31 x 31).
    scratch_per_input_value = 2

    def __init__(self, kernel, channels, stride, band_rows, column_dilation):
        self.band_rows = band_rows
        if column_dilation > 1:  # interleaved channels: stuff the columns
            stuffed = np.zeros((kernel.shape[0], (kernel.shape[1] - 1)
                                * column_dilation + 1), dtype=kernel.dtype)
            stuffed[:, ::column_dilation] = kernel
            kernel = stuffed
        self.kernel, self.stride = kernel, stride
        self.interleave = column_dilation
        self._spectrum_key, self._spectrum = None, None

    @classmethod
    def rows(cls, out_height, kernel_height, stride_h, band_values, itemsize):
        """(output rows per band, whether a band fits WORKSPACE_BYTES).
        Tall bands (``FFT_BAND_ROWS``, at least 4 R): the halo of R - 1 rows
        is recomputed per band; a wide image gets fewer rows, down to about
        2 R (below that the halo's cost dominates)."""
        def band_bytes(rows):
            return ((rows - 1) * stride_h + kernel_height) * band_values * \
                itemsize * (1 + cls.scratch_per_input_value)

        rows = max(FFT_BAND_ROWS, 4 * kernel_height)
        while rows > 2 * kernel_height and band_bytes(rows) > \
                config.WORKSPACE_BYTES:
            rows //= 2
        rows = min(out_height, rows)
        return rows, band_bytes(rows) <= config.WORKSPACE_BYTES

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
        with np.errstate(invalid="ignore", over="ignore"):
            # non-finite bands are recomputed by the caller
            spectrum *= self._spectrum
        full = fft.irfft2(spectrum, s=shape, workers=workers)
        # An FFT at least as long as the band leaves the 'valid' part free of
        # wrap-around.
        valid = full[..., kernel_height - 1:band_height:self.stride[0],
                     kernel_width - 1:band_width]
        if self.interleave == 1:
            return valid[..., ::self.stride[1]]
        # subsample whole pixels of C interleaved values
        pixels = valid.reshape(valid.shape[:-1] + (-1, self.interleave))
        return pixels[..., ::self.stride[1], :].reshape(
            valid.shape[:-1] + (-1,))


# ---------------------------------------------------------------- driver

class _PaddedImage:
    """Rows of the padded image, copied on demand into a band buffer.

    The padded image itself is never built: a band copies its rows from the
    image and fills the padding from the index maps (numpy.pad's rule),
    converting to the band buffer's dtype as it copies (an integer image is
    never converted whole). ``row_map`` and ``col_map`` give the image row
    and column (-1: a zero) of each row and column the bands see: the padded
    image's, or with a large stride only those that outputs read (see
    ``_read_positions``), in which case the columns are gathered.
    """

    def __init__(self, image, row_map, col_map, rows_needed, interleave,
                 gather_columns, left):
        height, width, channels = image.shape
        self.row_map = row_map
        if rows_needed > self.row_map.size:
            # rows past the padded image (the last band's overhang) are zeros
            self.row_map = np.concatenate([self.row_map, np.full(
                rows_needed - self.row_map.size, -1, np.int64)])
        if interleave > 1:
            # pixel p's channels are values p * C ... p * C + C - 1
            col_map = np.where(col_map[:, None] < 0, -1, col_map[:, None]
                               * channels + np.arange(channels)).reshape(-1)
            # a view: _filter interleaves only images whose pixels are C
            # consecutive values
            image = image.reshape(height, width * channels, 1)
            width = width * channels
        self.image, self.width = image, col_map.size
        self.gather = gather_columns
        if gather_columns:
            self.columns, self.zero_columns = np.maximum(col_map, 0), \
                col_map < 0
            return
        # the image's columns run unbroken between the left and right pads
        left = self.left = left * interleave
        # (destination slice, source columns or None for zeros) per side
        self.column_pads = []
        for start, stop in ((0, left), (left + width, col_map.size)):
            if stop > start:
                columns = col_map[start:stop]
                self.column_pads.append((slice(start, stop), None if np.all(
                    columns < 0) else np.maximum(columns, 0), columns < 0))

    def fill(self, start, out):
        """``out`` (C, rows, band_width) = band rows [start, start + rows)."""
        image = self.image
        count = out.shape[1]
        rows = self.row_map[start:start + count]
        zero_rows = rows < 0
        first = int(rows[0])
        if not self.gather and first >= 0 and first + count <= \
                image.shape[0] and np.array_equal(
                    rows, np.arange(first, first + count)):
            source = image[first:first + count]            # a view, no copy
            zero_rows = None
        elif self.gather:
            # only the rows and columns the outputs read, in one gather
            source = image[np.ix_(np.maximum(rows, 0), self.columns)]
        else:
            source = image[np.maximum(rows, 0)]
        if self.gather:
            target, width = out, self.width
        else:
            width = image.shape[1]
            target = out[:, :, self.left:self.left + width]
        if out.shape[0] == 1:
            target[0] = source[:, :, 0]
        else:
            target[...] = source.transpose(2, 0, 1)
        if self.gather:
            if self.zero_columns.any():
                out[:, :, self.zero_columns] = 0
        else:
            for destination, columns, zero_columns in self.column_pads:
                if columns is None:
                    out[:, :, destination] = 0
                    continue
                out[:, :, destination] = source[:, columns].transpose(2, 0, 1)
                if zero_columns.any():
                    out[:, :, destination][:, :, zero_columns] = 0
        if zero_rows is not None and zero_rows.any():
            out[:, zero_rows, :] = 0


def _read_positions(size, kernel, stride, before, after, mode, out_size):
    """(index map, stride) of what the bands see along one axis.

    The index map gives the image index (-1: a zero) of each position. With
    a stride up to the kernel size the outputs read every padded position;
    with a larger one only ``out_size`` windows of ``kernel`` positions, so
    only those are kept, each window after the last, and the stride over
    them becomes ``kernel``: scratch then follows the output, not the input.
    """
    if stride <= kernel:
        return _index_map(size, before, after, mode), stride
    positions = (np.arange(out_size, dtype=np.int64)[:, None] * stride
                 + np.arange(kernel, dtype=np.int64)).reshape(-1)
    return _index_map_at(positions, size, before, after, mode), kernel


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
    default). method: ``'auto'``, ``'direct'``, ``'depthwise'`` or ``'fft'``
    (see the module docstring; non-finite data runs 'depthwise').

    Returns ``(H_out, W_out)`` or ``(H_out, W_out, C)``: float32 for integer
    input, the input's float dtype otherwise (float16 is computed in
    float32). The input is never modified.
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
    stride = _checked_geometry((out_height, out_width), kernel.shape,
                               image3.shape, (top, left, bottom, right),
                               stride)
    # An image not in the compute dtype is converted band by band (an
    # 8192^2 uint8 image would take 256 MiB as float32), unless converting
    # it whole fits the workspace: that is faster (one in-place pass).
    if image3.dtype != compute_dtype and image3.size * \
            compute_dtype.itemsize <= config.WORKSPACE_BYTES // 2:
        image3 = image3.astype(compute_dtype)
    out = _filter(image3, kernel, stride, (top, left, bottom, right), mode,
                  method, backend, (out_height, out_width), result_dtype)
    if was_2d:
        out = out[:, :, 0]
    return out if out.dtype == result_dtype else out.astype(result_dtype)


def _checked_geometry(out_shape, kernel_shape, image_shape, pads, stride):
    """The stride to run with, once the output is known not to be empty.

    A stride past the padded image reads only the first window: clamped to
    the padded size it gives the same result, and keeps the backends' index
    arithmetic in range (a stride of 2**70 reached Numba as an overflow).
    """
    top, left, bottom, right = pads
    if min(out_shape) < 1:
        raise ValueError(
            f"filter2d: the output would be empty: a {kernel_shape[0]}x"
            f"{kernel_shape[1]} kernel does not fit in the {image_shape[0]}x"
            f"{image_shape[1]} image padded by (top, left, bottom, right) = "
            f"{pads}")
    if out_shape[0] * out_shape[1] * image_shape[-1] * 8 > np.iinfo(
            np.intp).max:
        raise ValueError(
            f"filter2d: the output would be {out_shape[0]}x{out_shape[1]}, "
            f"too large for any array: check padding {pads}")
    return (min(stride[0], image_shape[0] + top + bottom),
            min(stride[1], image_shape[1] + left + right))


def _filter(image3, kernel, stride, pads, mode, method, backend, out_shape,
            result_dtype=None):
    """filter2d on checked arguments: (H, W, C) in, (H_out, W_out, C) out.

    ``kernel`` is in the compute dtype, ``image3`` in it or any other real
    dtype (then converted band by band); ``pads`` is (top, left, bottom,
    right) and may be asymmetric (fastconv.dask pads only the sides of a
    block that are the image's edges); ``mode`` is a numpy.pad mode.
    ``result_dtype`` (None: the compute dtype) is what banded results are
    stored in as each band is done (float16 needs no full float32 copy).
    """
    channels = image3.shape[2]
    kernel_height = kernel.shape[0]
    out_height, out_width = out_shape
    chosen = _choose_method(method, kernel)
    top, left, bottom, right = pads
    row_map, band_stride_h = _read_positions(
        image3.shape[0], kernel_height, stride[0], top, bottom, mode,
        out_height)
    col_map, band_stride_w = _read_positions(
        image3.shape[1], kernel.shape[1], stride[1], left, right, mode,
        out_width)
    band_values = col_map.size * channels
    if chosen == "fft":
        fft_rows, fits = _FFTBands.rows(out_height, kernel_height,
                                        band_stride_h, band_values,
                                        kernel.dtype.itemsize)
        if not fits and method == "auto":
            # an image too wide for FFT bands in the workspace: depthwise
            # bands are a few rows tall (in place, no scratch at all)
            chosen = "depthwise"
    method = chosen
    # Colour: rather than split (H, W, C) into planes and interleave the
    # result again (two strided copies), filter the rows as they lie, W * C
    # values long, with the kernel's columns C apart (dilation C). A column
    # stride then needs whole pixels, which only the FFT path subsamples.
    # The interleaved view must be a view: pixels of C consecutive values.
    interleave = channels if channels > 1 and (
        stride[1] == 1 or method == "fft") and (
        image3.strides[1] == channels * image3.strides[2]) else 1
    if method == "depthwise" and _in_place_depthwise_fits(image3, kernel,
                                                          interleave):
        return _depthwise_in_place(image3, kernel, stride, pads, mode,
                                   interleave, backend)
    gather_columns = band_stride_w != stride[1]
    stride = (band_stride_h, band_stride_w)
    band_channels = 1 if interleave > 1 else channels
    if method == "fft":
        bands = _FFTBands(kernel, band_channels, stride, fft_rows,
                          interleave)
    elif method == "depthwise":
        band_rows = _band_rows(out_height, kernel_height, stride[0],
                               band_values, kernel.dtype.itemsize)
        bands = _DepthwiseBands(kernel, band_channels, stride, backend,
                                band_rows, interleave)
    else:
        bands = _RowBlockBands(kernel, band_channels, stride, backend,
                               (out_height, out_width), interleave)
    # Bands whose result is not finite are redone depthwise (see
    # _choose_method): rare, and then only where the data is not finite.
    fallback = None if method == "depthwise" else _DepthwiseBands(
        kernel, band_channels, stride, backend, bands.band_rows, interleave)
    # the last band may run past the image (see _run_bands)
    band_output_rows = -(-out_height // bands.band_rows) * bands.band_rows
    padded = _PaddedImage(image3, row_map, col_map,
                          (band_output_rows - 1) * stride[0] + kernel_height,
                          interleave, gather_columns, left)
    return _run_bands(padded, kernel.dtype, channels, interleave, bands,
                      fallback, stride, kernel_height, out_shape,
                      result_dtype)


def _band_rows(out_height, kernel_height, stride_h, band_values, itemsize):
    """Output rows per depthwise band: ``BAND_ROWS``, fewer where a band's
    input rows would pass half of WORKSPACE_BYTES (a very wide image)."""
    row_bytes = band_values * itemsize
    rows = BAND_ROWS
    while rows > 1 and ((rows - 1) * stride_h + kernel_height) * row_bytes \
            > config.WORKSPACE_BYTES // 2:
        rows //= 2
    return min(out_height, rows)


def _in_place_depthwise_fits(image, kernel, interleave):
    """Whether ``_depthwise_in_place`` can filter this image: its rows are
    the image's own memory, one channel or C interleaved ones.

    A non-finite kernel goes through the bands instead, whose materialised
    zero padding gives 0 * inf = NaN exactly as the definition does (a
    backend that skips padded taps would not).
    """
    return (image.flags.c_contiguous and image.dtype == kernel.dtype
            and (image.shape[2] == 1 or interleave > 1)
            and bool(np.isfinite(kernel).all()))


def _depthwise(x, kernel, stride, pads, interleave, backend):
    """One depthwise conv2d of a (1, 1, rows, values) plane of ``interleave``
    interleaved channels (kernel columns ``interleave`` values apart), zero
    padded by ``pads`` pixels; returns (1, 1, out_rows, out_values)."""
    top, left, bottom, right = pads
    weight = np.ascontiguousarray(kernel).reshape((1, 1) + kernel.shape)
    geometry = _shapes.conv_geometry(
        x.shape, weight.shape, stride,
        (top, left * interleave, bottom, right * interleave),
        (1, interleave), 1)
    return resolve("conv2d_forward", backend).conv2d_forward(x, weight, None,
                                                             geometry)


def _edge_ranges(size, kernel, stride, before, out_size):
    """(first, stop): outputs ``[0, first)`` read padding before the image,
    ``[stop, out_size)`` padding after it, the ones between only the image."""
    first = min(out_size, -(-before // stride))
    stop = -(-(size + before - kernel + 1) // stride)
    return first, max(first, min(out_size, stop))


def _depthwise_in_place(image, kernel, stride, pads, mode, interleave,
                        backend):
    """filter2d as one depthwise conv2d on the image itself, no band copies.

    image (H, W, C) C-contiguous, seen as one (1, 1, H, W * C) plane; with C
    interleaved channels the kernel's columns are C values apart. conv2d pads
    with zeros, which is the whole answer for the 'zero' boundary; for the
    others only the outputs whose windows reach into the padding are wrong,
    and they are recomputed from small padded copies of the edges: full-width
    slabs of rows at the top and bottom, and columns strips at the left and
    right of the rows between. The backend bounds its own scratch (none on
    the Numba backend), so besides the result only the edges are allocated.
    Returns (H_out, W_out, C).
    """
    height, width, channels = image.shape
    y = _depthwise(image.reshape(1, 1, height, width * channels), kernel,
                   stride, pads, interleave, backend)
    out = y.reshape(y.shape[2], -1, channels)
    if mode == "constant" or not any(pads):
        return out
    top, left, bottom, right = pads
    kernel_height, kernel_width = kernel.shape
    out_height, out_width = out.shape[:2]
    row_map = _index_map(height, top, bottom, mode)
    col_map = _index_map(width, left, right, mode)
    first_row, stop_row = _edge_ranges(height, kernel_height, stride[0], top,
                                       out_height)
    first_col, stop_col = _edge_ranges(width, kernel_width, stride[1], left,
                                       out_width)

    def recompute(rows, cols):
        """out[rows, cols] from the padded image's rows and columns that
        those outputs read (a 'valid' correlation of a padded copy)."""
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        padded = np.ascontiguousarray(image[np.ix_(
            row_map[rows.start * stride[0]:(rows.stop - 1) * stride[0]
                    + kernel_height],
            col_map[cols.start * stride[1]:(cols.stop - 1) * stride[1]
                    + kernel_width])])
        part = _depthwise(padded.reshape(1, 1, padded.shape[0], -1), kernel,
                          stride, (0, 0, 0, 0), interleave, backend)
        out[rows, cols] = part.reshape(rows.stop - rows.start, -1, channels)

    every_col = slice(0, out_width)
    recompute(slice(0, first_row), every_col)
    recompute(slice(stop_row, out_height), every_col)
    recompute(slice(first_row, stop_row), slice(0, first_col))
    recompute(slice(first_row, stop_row), slice(stop_col, out_width))
    return out


def _run_bands(padded, dtype, channels, interleave, bands, fallback,
               stride, kernel_height, out_shape, out_dtype=None):
    """Filter ``padded`` (a ``_PaddedImage``) band by band in ``dtype``
    into a new (H_out, W_out, C) array of ``out_dtype`` (None: ``dtype``).

    ``bands`` computes a batch of bands; ``fallback`` (or None) recomputes a
    batch whose result from ``bands`` holds an inf or NaN. With
    ``interleave`` = C > 1 the bands see each row as one channel of W * C
    values (channels interleaved), otherwise C channels of W values.
    """
    out_height, out_width = out_shape
    out = np.empty((out_height, out_width, channels),
                   dtype=dtype if out_dtype is None else out_dtype)
    if interleave > 1:
        out_width, channels = out_width * channels, 1
        out_view = out.reshape(out_height, out_width, 1)
    else:
        out_view = out
    band_rows = bands.band_rows
    band_input_rows = (band_rows - 1) * stride[0] + kernel_height
    band_count = -(-out_height // band_rows)
    # Bands per backend call: one call's gathered input, result and scratch
    # stay within half of WORKSPACE_BYTES; the backend bounds its own scratch
    # (im2col columns) by WORKSPACE_BYTES, so that the whole call stays
    # within about 1.5 WORKSPACE_BYTES beyond the image and the result.
    padded_width = padded.width
    band_bytes = channels * dtype.itemsize * (
        band_input_rows * padded_width * (1 + bands.scratch_per_input_value)
        + band_rows * out_width)
    bands_per_call = max(1, min(band_count,
                                config.WORKSPACE_BYTES // 2 // band_bytes))

    # The last band may run past the image: its extra rows read zeros and
    # their results are dropped, so that every band has one shape.
    batch = np.empty((bands_per_call, channels, band_input_rows,
                      padded_width), dtype=dtype)
    for first_band in range(0, band_count, bands_per_call):
        count = min(bands_per_call, band_count - first_band)
        for i in range(count):
            start = (first_band + i) * band_rows * stride[0]
            padded.fill(start, batch[i])
        result = bands(batch[:count])       # (count, C, band_rows, out_width)
        # One sum finds any inf or NaN (or an overflow, which the fallback
        # reproduces) without a boolean temporary.
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(result.sum())
        if fallback is not None and not finite:
            result = fallback(batch[:count])
        for i in range(count):
            row = (first_band + i) * band_rows
            rows = min(band_rows, out_height - row)
            if channels == 1:
                out_view[row:row + rows, :, 0] = result[i, 0, :rows]
            else:
                out_view[row:row + rows] = result[i, :, :rows].transpose(
                    1, 2, 0)
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
