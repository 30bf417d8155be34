"""Numba conv2d kernels: im2col / col2im around BLAS GEMMs.

Arrays arrive flattened (1-D, C order) so that a GEMM operand is just an
offset and a row stride into one buffer (see ``_numba_gemm.gemm``). Shapes:

- x: (N, C, H, W), weight: (K, C // groups, R, S), y: (N, K, OH, OW);
- the column buffer of one tile of output rows ``[oh_start, oh_stop)`` of one
  image is ``(C * R * S, tile_pixels)`` with ``tile_pixels = rows * OW``;
  its row ``(c * R + r) * S + s`` holds the input pixel that kernel tap
  ``(r, s)`` of channel ``c`` sees from each output pixel of the tile (zero
  where that falls in the padding). Group ``grp`` owns the contiguous rows
  ``[grp * CRS_g, (grp + 1) * CRS_g)``, so each group's GEMM reads a block.

Work is split into one chunk per thread (``prange(n_chunks)``), each with its
own scratch, so scratch is bounded by ``n_chunks`` tiles whatever N is, and
the BLAS calls inside run single-threaded (the caller holds BLAS to one
thread).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastconv import config
from fastconv.backends._numba_gemm import gemm
from fastconv.backends._numba_windows import uindex, valid_out_range

_CACHE = config.NUMBA_CACHE
_u = uindex  # unsigned: no negative-index checks in hot loops


@numba.njit(cache=_CACHE, nogil=True)
def im2col_tile(x, image, oh_start, oh_stop, g, cols):
    """Fill ``cols`` (flat, ``(C*R*S, (oh_stop - oh_start) * OW)``), the
    columns of output rows ``[oh_start, oh_stop)`` of image ``image``."""
    in_h, in_w = g.in_height, g.in_width
    out_w = g.out_width
    stride_w = g.stride_w
    tile_pixels = (oh_stop - oh_start) * out_w
    for c in range(g.in_channels):
        plane = (image * g.in_channels + c) * in_h * in_w
        for r in range(g.kernel_height):
            for s in range(g.kernel_width):
                row = (c * g.kernel_height + r) * g.kernel_width + s
                tap_w = s * g.dilation_w - g.pad_left
                ow_lo, ow_hi = valid_out_range(out_w, in_w, g.stride_w,
                                               g.pad_left, s * g.dilation_w)
                for oh in range(oh_start, oh_stop):
                    dst = row * tile_pixels + (oh - oh_start) * out_w
                    ih = oh * g.stride_h - g.pad_top + r * g.dilation_h
                    if ih < 0 or ih >= in_h:
                        for ow in range(out_w):
                            cols[_u(dst + ow)] = 0
                        continue
                    src = plane + ih * in_w + tap_w
                    for ow in range(ow_lo):
                        cols[_u(dst + ow)] = 0
                    if stride_w == 1:
                        for ow in range(ow_lo, ow_hi):
                            cols[_u(dst + ow)] = x[_u(src + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            cols[_u(dst + ow)] = x[_u(src + ow * stride_w)]
                    for ow in range(ow_hi, out_w):
                        cols[_u(dst + ow)] = 0


@numba.njit(cache=_CACHE, nogil=True)
def col2im_tile(cols, image, oh_start, oh_stop, g, grad_input):
    """Scatter-add a tile's column gradients back onto image ``image``."""
    in_h, in_w = g.in_height, g.in_width
    out_w = g.out_width
    stride_w = g.stride_w
    tile_pixels = (oh_stop - oh_start) * out_w
    for c in range(g.in_channels):
        plane = (image * g.in_channels + c) * in_h * in_w
        for r in range(g.kernel_height):
            for s in range(g.kernel_width):
                row = (c * g.kernel_height + r) * g.kernel_width + s
                tap_w = s * g.dilation_w - g.pad_left
                ow_lo, ow_hi = valid_out_range(out_w, in_w, g.stride_w,
                                               g.pad_left, s * g.dilation_w)
                for oh in range(oh_start, oh_stop):
                    ih = oh * g.stride_h - g.pad_top + r * g.dilation_h
                    if ih < 0 or ih >= in_h:
                        continue
                    src = row * tile_pixels + (oh - oh_start) * out_w
                    dst = plane + ih * in_w + tap_w
                    if stride_w == 1:
                        for ow in range(ow_lo, ow_hi):
                            grad_input[_u(dst + ow)] += cols[_u(src + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            grad_input[_u(dst + ow * stride_w)] += cols[
                                _u(src + ow)]


@numba.njit(parallel=True, cache=_CACHE)
def conv2d_forward_kernel(x, weight, bias, y, g, tile_rows, n_chunks, direct):
    """y = conv(x, weight) + bias, all flat.

    ``bias`` has length K or 0 (no bias). ``tile_rows`` output rows form one
    GEMM tile; ``direct`` (1x1, stride 1, no padding) uses x itself as the
    column matrix. Tiles are spread over ``n_chunks`` threads.
    """
    groups = g.groups
    out_channels = g.out_channels
    filters_per_group = out_channels // groups
    taps_per_group = weight.size // out_channels  # C/groups * R * S
    taps = taps_per_group * groups
    out_pixels = g.out_height * g.out_width
    in_pixels = g.in_height * g.in_width
    tiles_per_image = (g.out_height + tile_rows - 1) // tile_rows
    n_items = g.batch * tiles_per_image
    buffer_size = 0 if direct else taps * tile_rows * g.out_width
    for chunk in prange(n_chunks):
        cols = np.empty(buffer_size, dtype=x.dtype)
        scalars = np.zeros(2, dtype=x.dtype)
        scalars[1] = 1
        for item in range(chunk * n_items // n_chunks,
                          (chunk + 1) * n_items // n_chunks):
            image = item // tiles_per_image
            oh_start = (item % tiles_per_image) * tile_rows
            oh_stop = min(g.out_height, oh_start + tile_rows)
            tile_pixels = (oh_stop - oh_start) * g.out_width
            pixel_offset = oh_start * g.out_width
            if direct:
                source = x
                source_offset = (image * g.in_channels * in_pixels
                                 + pixel_offset)
                source_stride = in_pixels
            else:
                im2col_tile(x, image, oh_start, oh_stop, g, cols)
                source = cols
                source_offset = 0
                source_stride = tile_pixels
            for grp in range(groups):
                first_filter = grp * filters_per_group
                gemm(filters_per_group, tile_pixels, taps_per_group,
                     weight, first_filter * taps_per_group, taps_per_group,
                     False,
                     source,
                     source_offset + grp * taps_per_group * source_stride,
                     source_stride, False,
                     y, (image * out_channels + first_filter) * out_pixels
                     + pixel_offset, out_pixels, False, scalars)
            if bias.size:
                for k in range(out_channels):
                    start = ((image * out_channels + k) * out_pixels
                             + pixel_offset)
                    value = bias[k]
                    for p in range(start, start + tile_pixels):
                        y[_u(p)] += value


@numba.njit(parallel=True, cache=_CACHE)
def conv2d_backward_kernel(grad_output, x, weight, grad_input,
                           grad_weight_parts, grad_bias_parts, g, tile_rows,
                           n_chunks, direct, need_input_grad,
                           need_weight_grad):
    """Weight and bias gradients (unless ``need_weight_grad`` is False:
    then x, grad_weight_parts and grad_bias_parts are not touched) and
    (optionally) input gradients, all flat.

    Each chunk owns whole images, so its col2im scatter never races with
    another chunk's. It accumulates its own ``grad_weight_parts[chunk]``
    (``K * C/groups*R*S``, zero on entry) and ``grad_bias_parts[chunk]``
    (``K``, float64, zero on entry); the caller sums the parts.
    ``grad_input`` must be zero on entry unless ``direct`` (then it is
    overwritten); it is ignored when ``need_input_grad`` is False.
    """
    groups = g.groups
    out_channels = g.out_channels
    filters_per_group = out_channels // groups
    taps_per_group = weight.size // out_channels
    taps = taps_per_group * groups
    channels_per_group = g.in_channels // groups
    out_pixels = g.out_height * g.out_width
    in_pixels = g.in_height * g.in_width
    tiles_per_image = (g.out_height + tile_rows - 1) // tile_rows
    tile_size = 0 if direct else taps * tile_rows * g.out_width
    buffer_size = tile_size if need_weight_grad else 0
    grad_buffer_size = tile_size if need_input_grad else 0
    for chunk in prange(n_chunks):
        cols = np.empty(buffer_size, dtype=x.dtype)
        grad_cols = np.empty(grad_buffer_size, dtype=x.dtype)
        grad_weight = grad_weight_parts[chunk]
        scalars = np.zeros(2, dtype=x.dtype)
        scalars[1] = 1
        for image in range(chunk * g.batch // n_chunks,
                           (chunk + 1) * g.batch // n_chunks):
            for k in range(out_channels if need_weight_grad else 0):
                start = (image * out_channels + k) * out_pixels
                total = 0.0
                for p in range(start, start + out_pixels):
                    total += grad_output[_u(p)]
                grad_bias_parts[chunk, k] += total
            for tile in range(tiles_per_image):
                oh_start = tile * tile_rows
                oh_stop = min(g.out_height, oh_start + tile_rows)
                tile_pixels = (oh_stop - oh_start) * g.out_width
                pixel_offset = oh_start * g.out_width
                if direct:
                    source = x
                    source_offset = (image * g.in_channels * in_pixels
                                     + pixel_offset)
                    source_stride = in_pixels
                else:
                    if need_weight_grad:
                        im2col_tile(x, image, oh_start, oh_stop, g, cols)
                    source = cols
                    source_offset = 0
                    source_stride = tile_pixels
                for grp in range(groups):
                    first_filter = grp * filters_per_group
                    grad_offset = ((image * out_channels + first_filter)
                                   * out_pixels + pixel_offset)
                    weight_offset = first_filter * taps_per_group
                    if need_weight_grad:
                        # grad_weight_g += grad_out_g (Kg x P) @ cols_g^T
                        #                  (P x CRSg)
                        gemm(filters_per_group, taps_per_group, tile_pixels,
                             grad_output, grad_offset, out_pixels, False,
                             source, source_offset
                             + grp * taps_per_group * source_stride,
                             source_stride, True, grad_weight, weight_offset,
                             taps_per_group, True, scalars)
                    if not need_input_grad:
                        continue
                    # grad_cols_g (CRSg x P) = weight_g^T @ grad_out_g
                    if direct:
                        gemm(taps_per_group, tile_pixels, filters_per_group,
                             weight, weight_offset, taps_per_group, True,
                             grad_output, grad_offset, out_pixels, False,
                             grad_input,
                             (image * g.in_channels + grp * channels_per_group)
                             * in_pixels + pixel_offset, in_pixels, False,
                             scalars)
                    else:
                        gemm(taps_per_group, tile_pixels, filters_per_group,
                             weight, weight_offset, taps_per_group, True,
                             grad_output, grad_offset, out_pixels, False,
                             grad_cols, grp * taps_per_group * tile_pixels,
                             tile_pixels, False, scalars)
                if need_input_grad and not direct:
                    col2im_tile(grad_cols, image, oh_start, oh_stop, g,
                                grad_input)
