"""Shape arithmetic: the one place that knows output sizes and padding rules.

Every rule here follows PyTorch (``torch.nn.functional.conv2d``, ``max_pool2d``,
``avg_pool2d``).  The functional layer turns user arguments into one of the
geometry records below; backends receive the record's fields and never derive
a size themselves.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class ConvGeometry(NamedTuple):
    """Everything a backend needs to run one 2-D convolution.

    Padding may be asymmetric (PyTorch's ``'same'`` with an even kernel puts the
    extra row/column at the bottom/right), so each side is stored.
    """

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel_height: int
    kernel_width: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int
    dilation_h: int
    dilation_w: int
    groups: int
    out_height: int
    out_width: int

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups,
                self.kernel_height, self.kernel_width)


class PoolGeometry(NamedTuple):
    """Everything a backend needs to run one 2-D pooling window sweep.

    Window (oh, ow) covers rows ``oh * stride_h - pad_h + r * dilation_h``
    (r < kernel_height) and likewise columns: ``pad_h`` and ``pad_w`` are the
    padding above and left of the input, where the first window starts.
    ``pad_bottom`` and ``pad_right`` (the padding below and right, which may
    differ) only set the output size, already in ``out_height`` and
    ``out_width``. The kernel a backend receives may be shorter than the
    one named by the call (see ``taps_reaching_input``).
    """

    batch: int
    channels: int
    in_height: int
    in_width: int
    kernel_height: int
    kernel_width: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    out_height: int
    out_width: int
    pad_bottom: int = 0
    pad_right: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.in_height, self.in_width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_height, self.out_width)


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int,
                     pad_after: int, dilation: int) -> int:
    """Output length of one convolved axis (PyTorch's floor rule)."""
    effective_kernel = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - effective_kernel) // stride + 1


def same_padding(kernel: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that keeps a stride-1 axis its size.

    Odd totals put the extra element after, as PyTorch's ``padding='same'`` does.
    """
    total = dilation * (kernel - 1)
    before = total // 2
    return before, total - before


def pool_output_size(size: int, kernel: int, stride: int, pad_before: int,
                     pad_after: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of one pooled axis, PyTorch's rule including ceil_mode.

    With ``ceil_mode`` the last window may hang over the end, but it must start
    inside the input or the padding before it; otherwise it is dropped.
    """
    effective_kernel = dilation * (kernel - 1) + 1
    span = size + pad_before + pad_after - effective_kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_before:
            out -= 1
    else:
        out = span // stride + 1
    return out


def conv_geometry(input_shape, weight_shape, stride, padding, dilation,
                  groups) -> ConvGeometry:
    """Build a ConvGeometry from normalised arguments.

    ``padding`` is ``(top, left, bottom, right)``; ``stride`` and ``dilation``
    are pairs. Validation of the values happens before this call.
    """
    batch, in_channels, in_height, in_width = input_shape
    out_channels, _, kernel_height, kernel_width = weight_shape
    pad_top, pad_left, pad_bottom, pad_right = padding
    out_height = conv_output_size(in_height, kernel_height, stride[0], pad_top,
                                  pad_bottom, dilation[0])
    out_width = conv_output_size(in_width, kernel_width, stride[1], pad_left,
                                 pad_right, dilation[1])
    return ConvGeometry(batch, in_channels, in_height, in_width, out_channels,
                        kernel_height, kernel_width, stride[0], stride[1],
                        pad_top, pad_left, pad_bottom, pad_right,
                        dilation[0], dilation[1], groups, out_height, out_width)


def conv_transpose_geometry(input_shape, weight_shape, stride, padding,
                            dilation, groups, output_padding):
    """The conv2d whose input gradient a transposed convolution is.

    ``input_shape`` (N, C_in, H, W) and ``weight_shape`` (C_in, C_out //
    groups, R, S) are the transposed convolution's; ``padding`` is (top,
    left, bottom, right), the others pairs. Its output is (N, C_out, H_out,
    W_out) with ``H_out = (H - 1) * stride - top - bottom + dilation * (R -
    1) + 1 + output_padding`` (PyTorch's rule). Returns ``(geometry,
    (uncovered_rows, uncovered_cols))``: ``geometry`` is a conv2d from
    (N, C_out, H_out - uncovered_rows, ...) to (N, C_in, H, W) with the same
    weight; the last ``uncovered`` rows/columns of the output, which
    output_padding adds past every window, get no contribution (zeros, then
    the bias). Every pad of the geometry is >= 0 and its output size rule
    gives exactly H and W.
    """
    batch, in_channels, height, width = input_shape
    _, filters_per_group, kernel_height, kernel_width = weight_shape
    pad_top, pad_left, pad_bottom, pad_right = padding

    def axis(size, kernel, step, before, after, spacing, extra):
        full = ((size - 1) * step - before - after + spacing * (kernel - 1)
                + 1 + extra)
        uncovered = max(0, extra - after)
        # the covered part with padding after - extra + uncovered >= 0:
        # (covered + before + after' - effective kernel) = (size - 1) * step
        return full - uncovered, after - extra + uncovered, uncovered

    covered_h, after_h, uncovered_h = axis(
        height, kernel_height, stride[0], pad_top, pad_bottom, dilation[0],
        output_padding[0])
    covered_w, after_w, uncovered_w = axis(
        width, kernel_width, stride[1], pad_left, pad_right, dilation[1],
        output_padding[1])
    geometry = conv_geometry(
        (batch, filters_per_group * groups, covered_h, covered_w),
        weight_shape, stride, (pad_top, pad_left, after_h, after_w),
        dilation, groups)
    return geometry, (uncovered_h, uncovered_w)


def pool_geometry(input_shape, kernel_size, stride, padding, dilation,
                  ceil_mode) -> PoolGeometry:
    """Build a PoolGeometry from normalised arguments: ``padding`` is ``(top,
    left, bottom, right)``, the others pairs. The kernel is the one named."""
    batch, channels, in_height, in_width = input_shape
    pad_top, pad_left, pad_bottom, pad_right = padding
    out_height = pool_output_size(in_height, kernel_size[0], stride[0],
                                  pad_top, pad_bottom, dilation[0], ceil_mode)
    out_width = pool_output_size(in_width, kernel_size[1], stride[1],
                                 pad_left, pad_right, dilation[1], ceil_mode)
    return PoolGeometry(batch, channels, in_height, in_width, kernel_size[0],
                        kernel_size[1], stride[0], stride[1], pad_top,
                        pad_left, dilation[0], dilation[1], out_height,
                        out_width, pad_bottom, pad_right)


def _window_misses(position, size, kernel, dilation) -> bool:
    """Whether no tap ``position + t * dilation`` (t < kernel) is in [0, size)."""
    first_inside = 0 if position >= 0 else -(position // dilation)
    return (first_inside >= kernel
            or position + first_inside * dilation >= size)


def _axis_misses(out_size, size, kernel, stride, pad, dilation) -> bool:
    """Whether some window of one axis has no tap inside the input.

    O(1): the first window is the one most likely to lie wholly in the
    padding before, the last the one most likely to start past the end. A
    window between them can only skip over the whole input when dilation >
    size, and then (kernel >= 2, padding at most half the kernel) the span
    ``size + pads - dilation * (kernel - 1) - 1`` is negative: there is one
    window, checked already. A kernel of 1 has a single tap per window.
    """
    return (_window_misses(-pad, size, kernel, dilation)
            or _window_misses((out_size - 1) * stride - pad, size, kernel,
                              dilation))


def pool_window_misses_input(geometry: PoolGeometry) -> bool:
    """Whether some pooling window has no tap inside the input.

    Only dilation makes this possible (padding is at most half the kernel):
    e.g. height 1, kernel 2, dilation 2, padding 1 puts the taps at rows -1
    and 1. Such a window has no maximum to point an index at.
    """
    g = geometry
    return (_axis_misses(g.out_height, g.in_height, g.kernel_height,
                         g.stride_h, g.pad_h, g.dilation_h)
            or _axis_misses(g.out_width, g.in_width, g.kernel_width,
                            g.stride_w, g.pad_w, g.dilation_w))


def _axis_reaching_taps(out_size, size, kernel, stride, pad, dilation):
    """(first tap, tap count, padding before) of one axis, trimmed to the
    taps that some window can land inside the input with."""
    # tap t lands in [-pad + t * dilation, last_start + t * dilation]
    last_start = (out_size - 1) * stride - pad
    last_tap = min(kernel - 1, (size - 1 + pad) // dilation)
    first_tap = max(0, -(last_start // dilation)) if last_start < 0 else 0
    first_tap = min(first_tap, pad // dilation, last_tap)
    return first_tap, last_tap - first_tap + 1, pad - first_tap * dilation


def taps_reaching_input(geometry: PoolGeometry) -> PoolGeometry:
    """The same window sweep with each kernel axis trimmed to the taps that
    can land inside the input for some window.

    The windows' positions, the outputs and (for max pooling) the winners
    are unchanged: a trimmed tap is in the padding or past the input for
    every window. It bounds a backend's per-tap work and tables by the input
    rather than the kernel (a kernel of 2**20 + 1 with padding 2**19 on a 1x1
    input has one useful tap). Average pooling divides by the table of
    ``avg_pool_divisors`` computed from the untrimmed geometry.
    """
    g = geometry
    _, kernel_h, pad_h = _axis_reaching_taps(
        g.out_height, g.in_height, g.kernel_height, g.stride_h, g.pad_h,
        g.dilation_h)
    _, kernel_w, pad_w = _axis_reaching_taps(
        g.out_width, g.in_width, g.kernel_width, g.stride_w, g.pad_w,
        g.dilation_w)
    return g._replace(kernel_height=kernel_h, kernel_width=kernel_w,
                      pad_h=pad_h, pad_w=pad_w)


def avg_pool_divisors(geometry: PoolGeometry, count_include_pad: bool):
    """Per-output-position divisor of avg_pool2d, shape (out_height, out_width).

    PyTorch's rule: with ``count_include_pad`` a window is clipped to the padded
    input (its padding before and after on each axis; the part that ceil_mode
    lets run past the padding is not counted); without it, to the real input.
    Backends divide by this table instead of re-deriving the rule. Memory is
    the table's and two of its axes; nothing per tap.
    """
    import numpy as np

    g = geometry

    def axis_counts(out_size, stride, pad_before, pad_after, kernel, size):
        start = np.arange(out_size, dtype=np.int64) * stride - pad_before
        end = np.minimum(start + kernel, size + pad_after)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        return np.maximum(end - start, 0)

    rows = axis_counts(g.out_height, g.stride_h, g.pad_h, g.pad_bottom,
                       g.kernel_height, g.in_height)
    cols = axis_counts(g.out_width, g.stride_w, g.pad_w, g.pad_right,
                       g.kernel_width, g.in_width)
    return np.outer(rows, cols).astype(np.float64)


def numel(shape) -> int:
    return math.prod(shape)
