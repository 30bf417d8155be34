# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Max and average pooling kernels, parallel over planes.

Every (image, channel) plane is independent, so OpenMP threads take whole
planes and no two threads ever write the same element (the backward scatters
included). The window of output (oh, ow) covers rows
``oh * stride_h - pad_h + r * dilation_h`` and likewise columns; the part of
each window inside the input is precomputed once per call as index ranges
(``Taps``), so the inner loops carry no bounds tests.

Max pooling takes float32, float64 and the integer dtypes (uint8, int8,
int16, int32, int64; padding counts as the dtype's minimum). Square 2x2 and
3x3 windows without dilation, the ones CNNs use, run unrolled over whole
output rows (``_max_2x2_row``, ``_max_3x3_row``): every tap of a window in
a register, the winner picked by selects, in loops the C compiler
vectorises; a plane with padding is first copied into a scratch plane
filled with the dtype's minimum so that every window is whole. Other float32
windows fold each tap into a whole run of windows at once (``_max_run``);
the rest goes window by window (``_max_window``). All follow
``fastconv/backends/naive.py``'s index and NaN rules exactly.

Average pooling (float32, float64) sweeps each tap over a whole output row
(``_avg_row``, ``_avg_row_backward``), summing in float64 in the
reference's order.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from libc.math cimport INFINITY
from libc.stdint cimport (INT8_MIN, INT16_MIN, INT32_MIN, INT64_MIN, int8_t,
                          int16_t, int32_t, int64_t, uint8_t)

ctypedef fused real:
    float
    double

# what max pooling takes
ctypedef fused pool_value:
    float
    double
    uint8_t
    int8_t
    int16_t
    int32_t
    int64_t


cdef enum:
    # Max pooling folds windows of one output row in runs of this many (a
    # multiple of 8), their running maxima and tap numbers on the stack.
    RUN = 256


cdef struct Taps:
    # For each output position o along one axis: kernel taps [first[o],
    # stop[o]) land inside the input, tap t reading index start[o] + t *
    # dilation. Outputs [full_first, full_stop) have every tap inside.
    Py_ssize_t *start
    Py_ssize_t *first
    Py_ssize_t *stop
    Py_ssize_t full_first, full_stop


cdef int _taps_fill(Taps *taps, Py_ssize_t out_size, Py_ssize_t in_size,
                    Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                    Py_ssize_t dilation) except -1:
    cdef Py_ssize_t o, start, first, stop
    taps.start = <Py_ssize_t *>malloc(3 * out_size * sizeof(Py_ssize_t))
    if taps.start == NULL:
        raise MemoryError()
    taps.first = taps.start + out_size
    taps.stop = taps.first + out_size
    taps.full_first, taps.full_stop = out_size, out_size
    for o in range(out_size):
        start = o * stride - pad
        first = 0
        if start < 0:
            first = (-start + dilation - 1) // dilation
        if start + (kernel - 1) * dilation < in_size:
            stop = kernel
        elif in_size - 1 - start < 0:
            stop = 0
        else:
            stop = (in_size - 1 - start) // dilation + 1
        if stop < first:
            stop = first
        taps.start[o], taps.first[o], taps.stop[o] = start, first, stop
        # windows only move right, so the full ones are one contiguous run
        if first == 0 and stop == kernel:
            if taps.full_first == out_size:
                taps.full_first = o
            taps.full_stop = o + 1
    if taps.full_stop < taps.full_first:
        taps.full_stop = taps.full_first
    return 0


cdef struct Window:
    Taps rows, cols
    Py_ssize_t kernel_h, kernel_w, dilation_h, dilation_w, stride_w
    Py_ssize_t in_h, in_w, out_h, out_w, stride_h, pad_h, pad_w
    # the extent the windows cover, padding included
    Py_ssize_t padded_h, padded_w
    # tap t = r * kernel_w + s lies tap_offset[t] after its window's first
    # (top-left) tap in the flat plane
    Py_ssize_t *tap_offset
    # _max_run's row phases: each phase_stride floats apart (room for RUN
    # windows past any tap's start); column tap s reads from phases +
    # tap_phase_offset[s]
    Py_ssize_t phase_stride
    Py_ssize_t *tap_phase_offset


cdef class _Window:
    """A pooling geometry's Window (its tables freed with this object)."""
    cdef Window w

    def __cinit__(self, g):
        cdef Py_ssize_t r, s
        self.w.rows.start = NULL
        self.w.cols.start = NULL
        self.w.tap_offset = NULL
        self.w.tap_phase_offset = NULL
        _taps_fill(&self.w.rows, g.out_height, g.in_height, g.kernel_height,
                   g.stride_h, g.pad_h, g.dilation_h)
        _taps_fill(&self.w.cols, g.out_width, g.in_width, g.kernel_width,
                   g.stride_w, g.pad_w, g.dilation_w)
        self.w.kernel_h, self.w.kernel_w = g.kernel_height, g.kernel_width
        self.w.dilation_h, self.w.dilation_w = g.dilation_h, g.dilation_w
        self.w.stride_w = g.stride_w
        self.w.in_h, self.w.in_w = g.in_height, g.in_width
        self.w.out_h, self.w.out_w = g.out_height, g.out_width
        self.w.stride_h, self.w.pad_h, self.w.pad_w = (g.stride_h, g.pad_h,
                                                       g.pad_w)
        self.w.padded_h = ((g.out_height - 1) * g.stride_h
                           + (g.kernel_height - 1) * g.dilation_h + 1)
        self.w.padded_w = ((g.out_width - 1) * g.stride_w
                           + (g.kernel_width - 1) * g.dilation_w + 1)
        self.w.tap_offset = <Py_ssize_t *>malloc(
            g.kernel_height * g.kernel_width * sizeof(Py_ssize_t))
        self.w.tap_phase_offset = <Py_ssize_t *>malloc(
            g.kernel_width * sizeof(Py_ssize_t))
        if self.w.tap_offset == NULL or self.w.tap_phase_offset == NULL:
            raise MemoryError()
        for r in range(g.kernel_height):
            for s in range(g.kernel_width):
                self.w.tap_offset[r * g.kernel_width + s] = (
                    r * g.dilation_h * g.in_width + s * g.dilation_w)
        self.w.phase_stride = (
            RUN + (g.kernel_width - 1) * g.dilation_w // g.stride_w + 1)
        for s in range(g.kernel_width):
            self.w.tap_phase_offset[s] = (
                (s * g.dilation_w) % g.stride_w * self.w.phase_stride
                + (s * g.dilation_w) // g.stride_w)

    def __dealloc__(self):
        free(self.w.rows.start)
        free(self.w.cols.start)
        free(self.w.tap_offset)
        free(self.w.tap_phase_offset)


# ---------------------------------------------------------------- max pool

cdef inline pool_value _lowest(pool_value like) noexcept nogil:
    """What padding counts as: -inf, or the integer dtype's minimum."""
    if pool_value is float or pool_value is double:
        return -INFINITY
    elif pool_value is uint8_t:
        return 0
    elif pool_value is int8_t:
        return INT8_MIN
    elif pool_value is int16_t:
        return INT16_MIN
    elif pool_value is int32_t:
        return INT32_MIN
    else:
        return INT64_MIN


cdef inline bint _beats(pool_value value, pool_value best) noexcept nogil:
    """Whether a later tap replaces the best so far: larger, or a NaN."""
    return (value > best) | (value != value)


cdef inline void _max_window(const pool_value *x_plane, Py_ssize_t in_w,
                             const Taps *rows, const Taps *cols,
                             Py_ssize_t dil_h, Py_ssize_t dil_w,
                             Py_ssize_t oh, Py_ssize_t ow,
                             pool_value *best_out,
                             long long *position_out) noexcept nogil:
    """One window, any position: the reference's rule.

    A NaN always wins and a later NaN replaces an earlier one; otherwise the
    first strictly greater element; a window of -inf keeps its first
    in-bounds element (integers: a window of the dtype's minimum); a window
    wholly in the padding gives -inf (the minimum) and -1.
    Written with selects (compiled to maxss and cmov): comparisons on random
    data mispredict as branches. NaNs are tracked apart so that best stays a
    plain max.
    """
    cdef Py_ssize_t r, s, ih, position
    cdef pool_value value, best = _lowest(best_out[0])
    cdef Py_ssize_t best_position = -1, nan_position = -1
    cdef bint greater
    if rows.first[oh] < rows.stop[oh] and cols.first[ow] < cols.stop[ow]:
        # start at the first in-bounds tap, with -inf (the minimum)
        best_position = ((rows.start[oh] + rows.first[oh] * dil_h) * in_w
                         + cols.start[ow] + cols.first[ow] * dil_w)
        for r in range(rows.first[oh], rows.stop[oh]):
            ih = rows.start[oh] + r * dil_h
            for s in range(cols.first[ow], cols.stop[ow]):
                position = ih * in_w + cols.start[ow] + s * dil_w
                value = x_plane[position]
                greater = value > best
                best_position = position if greater else best_position
                best = value if greater else best
                nan_position = position if value != value else nan_position
        if nan_position >= 0:
            best_position = nan_position
            best = x_plane[nan_position]
    best_out[0], position_out[0] = best, best_position


cdef void _split_phases(const float *row, Py_ssize_t span, Py_ssize_t stride,
                        float *phases, Py_ssize_t phase_stride) noexcept nogil:
    """phases[q * phase_stride + m] = row[q + m * stride] for q + m * stride
    < span: a strided row becomes ``stride`` contiguous ones."""
    cdef Py_ssize_t q, m, pairs
    cdef float *odd = phases + phase_stride
    if stride == 1:
        for m in range(span):
            phases[m] = row[m]
    elif stride == 2:
        # a loop the compiler vectorises with shuffles
        pairs = span // 2
        for m in range(pairs):
            phases[m] = row[2 * m]
            odd[m] = row[2 * m + 1]
        if span % 2:
            phases[pairs] = row[2 * pairs]
    else:
        for q in range(stride):
            m = 0
            while m * stride + q < span:
                phases[q * phase_stride + m] = row[m * stride + q]
                m += 1


cdef void _max_run(const float *x_plane, Py_ssize_t in_w,
                   const Window *window, Py_ssize_t oh,
                   Py_ssize_t run_start, Py_ssize_t count, float *phases,
                   float *y_row, long long *idx_row) noexcept nogil:
    """Windows run_start .. run_start+count-1 of output row oh, whose columns
    all lie inside the input (rows may be clipped by the padding).

    The same rule as _max_window, vectorised across the run: each tap is
    folded into all the run's windows at once with selects. The winning tap
    number is kept as a float (exact below 2**24) so that every lane is a
    float32 (SSE2 cannot mix lane widths); positions are computed at the
    end. The taps of window j in one input row lie at row[j * stride + s *
    dilation]; the row is first copied into its ``stride`` phases (phase q,
    at phases + q * phase_stride, holds row[q + m * stride]) so that each
    tap reads a contiguous stretch, and so that the loops may run on to a
    multiple of 8 windows (reading stale phase entries, results dropped)
    without a scalar remainder.
    """
    cdef const Taps *rows = &window.rows
    cdef const Taps *cols = &window.cols
    cdef Py_ssize_t span = (count - 1) * window.stride_w + (
        window.kernel_w - 1) * window.dilation_w + 1
    cdef Py_ssize_t padded = (count + 7) & ~(<Py_ssize_t>7)
    cdef Py_ssize_t r, s, j, ih, first_tap_position
    cdef const float *tap_values
    cdef const float *next_values
    cdef float run_best[RUN]
    cdef float run_tap[RUN]
    cdef float value, tap, next_tap, best, best_tap
    cdef bint take
    # start: -inf at the first in-bounds tap, as the reference does
    tap = <float>(rows.first[oh] * window.kernel_w)
    for j in range(padded):
        run_best[j] = -INFINITY
        run_tap[j] = tap
    for r in range(rows.first[oh], rows.stop[oh]):
        ih = rows.start[oh] + r * window.dilation_h
        _split_phases(x_plane + ih * in_w + cols.start[run_start], span,
                      window.stride_w, phases, window.phase_stride)
        # taps in pairs: one load and store of the running best per pair
        s = 0
        while s + 1 < window.kernel_w:
            tap_values = phases + window.tap_phase_offset[s]
            next_values = phases + window.tap_phase_offset[s + 1]
            tap = <float>(r * window.kernel_w + s)
            next_tap = tap + 1
            for j in range(padded):
                best, best_tap = run_best[j], run_tap[j]
                value = tap_values[j]
                take = (value > best) | (value != value)
                best = value if take else best
                best_tap = tap if take else best_tap
                value = next_values[j]
                take = (value > best) | (value != value)
                run_best[j] = value if take else best
                run_tap[j] = next_tap if take else best_tap
            s += 2
        if s < window.kernel_w:
            tap_values = phases + window.tap_phase_offset[s]
            tap = <float>(r * window.kernel_w + s)
            for j in range(padded):
                value = tap_values[j]
                take = (value > run_best[j]) | (value != value)
                run_best[j] = value if take else run_best[j]
                run_tap[j] = tap if take else run_tap[j]
    first_tap_position = rows.start[oh] * in_w + cols.start[run_start]
    for j in range(count):
        y_row[run_start + j] = run_best[j]
        idx_row[run_start + j] = (first_tap_position + j * window.stride_w
                                  + window.tap_offset[<Py_ssize_t>run_tap[j]])


cdef void _max_pool_plane(const pool_value *x_plane, Py_ssize_t in_w,
                          Py_ssize_t out_h, Py_ssize_t out_w,
                          const Window *window, float *phases,
                          pool_value *y_plane,
                          long long *idx_plane) noexcept nogil:
    """Max pooling of one plane: runs of windows whose columns are inside
    through _max_run (float32, when ``phases`` scratch is given), the rest
    (left and right borders) one by one."""
    cdef const Taps *rows = &window.rows
    cdef const Taps *cols = &window.cols
    cdef Py_ssize_t oh, ow, run_start, count
    cdef Py_ssize_t first = cols.full_first, stop = cols.full_stop
    cdef pool_value *y_row
    cdef long long *idx_row
    for oh in range(out_h):
        y_row = y_plane + oh * out_w
        idx_row = idx_plane + oh * out_w
        ow = 0
        if pool_value is float:
            if (phases != NULL and first < stop
                    and rows.first[oh] < rows.stop[oh]):
                for ow in range(first):
                    _max_window(x_plane, in_w, rows, cols, window.dilation_h,
                                window.dilation_w, oh, ow, &y_row[ow],
                                &idx_row[ow])
                run_start = first
                while run_start < stop:
                    count = min(<Py_ssize_t>RUN, stop - run_start)
                    _max_run(x_plane, in_w, window, oh, run_start, count,
                             phases, y_row, idx_row)
                    run_start += count
                ow = stop
        for ow in range(ow, out_w):
            _max_window(x_plane, in_w, rows, cols, window.dilation_h,
                        window.dilation_w, oh, ow, &y_row[ow], &idx_row[ow])


# Square 2x2 and 3x3 windows, dilation 1, over one output row: window j's
# top-left tap is source[j * step] (rows ``source_w`` apart: x itself, or a
# copy padded with the dtype's minimum) and its plane position in x is
# first_index + j * step (rows ``in_w`` apart). The taps go in the
# reference's row-major order through selects (``_beats``): every tap in a
# register and no branch, so the compiler vectorises across the row; the
# call sites pass ``step`` 1 and 2 as constants, so that the loads vectorise
# (contiguous, or split into even and odd lanes). A padding tap (the
# minimum) never beats a real one, except where the window's maximum is the
# minimum itself: the caller redoes those (``_redo_padded``). Offsets are
# int32, as wide as a float32 lane.
#
# (Measured alternatives, slower on the 17-window rows of a 33x33 plane:
# copying each row into its stride_w column phases first, for contiguous
# loads, or computing runs of a multiple of 8 windows into stack buffers.
# What stays slow here: 3x3 stride 2 rows of exactly 16 windows, which the
# vectoriser leaves to its scalar loop, since a strided load with a gap
# needs a scalar last iteration.)

cdef extern from "pool_rows.h" nogil:
    const int FC_POOL_ROWS_AVAILABLE
    void fc_max_s2_row_f32(const float *top, Py_ssize_t source_w,
                           Py_ssize_t count, int kernel,
                           long long first_index, int in_w, float *y_row,
                           long long *idx_row)


cdef inline void _max_2x2_row(const pool_value *source, Py_ssize_t source_w,
                              Py_ssize_t count, Py_ssize_t step,
                              long long first_index, int in_w,
                              pool_value *y_row,
                              long long *idx_row) noexcept nogil:
    cdef const pool_value *below = source + source_w
    cdef Py_ssize_t j
    cdef pool_value best, value
    cdef int offset
    cdef bint take
    for j in range(count):
        best = source[j * step]
        offset = 0
        value = source[j * step + 1]
        take = _beats(value, best)
        best = value if take else best
        offset = 1 if take else offset
        value = below[j * step]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w if take else offset
        value = below[j * step + 1]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w + 1 if take else offset
        y_row[j] = best
        idx_row[j] = first_index + j * step + offset


cdef inline void _max_3x3_row(const pool_value *source, Py_ssize_t source_w,
                              Py_ssize_t count, Py_ssize_t step,
                              long long first_index, int in_w,
                              pool_value *y_row,
                              long long *idx_row) noexcept nogil:
    cdef const pool_value *middle = source + source_w
    cdef const pool_value *bottom = middle + source_w
    cdef Py_ssize_t j
    cdef pool_value best, value
    cdef int offset, in_w2 = 2 * in_w
    cdef bint take
    for j in range(count):
        best = source[j * step]
        offset = 0
        value = source[j * step + 1]
        take = _beats(value, best)
        best = value if take else best
        offset = 1 if take else offset
        value = source[j * step + 2]
        take = _beats(value, best)
        best = value if take else best
        offset = 2 if take else offset
        value = middle[j * step]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w if take else offset
        value = middle[j * step + 1]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w + 1 if take else offset
        value = middle[j * step + 2]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w + 2 if take else offset
        value = bottom[j * step]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w2 if take else offset
        value = bottom[j * step + 1]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w2 + 1 if take else offset
        value = bottom[j * step + 2]
        take = _beats(value, best)
        best = value if take else best
        offset = in_w2 + 2 if take else offset
        y_row[j] = best
        idx_row[j] = first_index + j * step + offset


cdef inline void _max_unrolled_row(const pool_value *source,
                                   Py_ssize_t source_w, Py_ssize_t count,
                                   Py_ssize_t kernel, Py_ssize_t step,
                                   long long first_index, int in_w,
                                   pool_value *y_row, long long *idx_row,
                                   bint values_only) noexcept nogil:
    """_max_2x2_row or _max_3x3_row, with ``step`` 1 and 2 as constants
    (float32 at stride 2: pool_rows.h's vector rows where it is built,
    which skip the indices for ``values_only``; the others write them to
    idx_row all the same)."""
    if pool_value is float and step == 2 and FC_POOL_ROWS_AVAILABLE:
        fc_max_s2_row_f32(source, source_w, count, <int>kernel, first_index,
                          in_w, y_row, NULL if values_only else idx_row)
        return
    if kernel == 2:
        if step == 2:
            _max_2x2_row(source, source_w, count, 2, first_index, in_w,
                         y_row, idx_row)
        elif step == 1:
            _max_2x2_row(source, source_w, count, 1, first_index, in_w,
                         y_row, idx_row)
        else:
            _max_2x2_row(source, source_w, count, step, first_index, in_w,
                         y_row, idx_row)
    else:
        if step == 2:
            _max_3x3_row(source, source_w, count, 2, first_index, in_w,
                         y_row, idx_row)
        elif step == 1:
            _max_3x3_row(source, source_w, count, 1, first_index, in_w,
                         y_row, idx_row)
        else:
            _max_3x3_row(source, source_w, count, step, first_index, in_w,
                         y_row, idx_row)


cdef inline void _redo_padded(const pool_value *x_plane, const Window *window,
                              Py_ssize_t oh, Py_ssize_t ow_start,
                              Py_ssize_t ow_stop, pool_value lowest,
                              pool_value *y_row,
                              long long *idx_row) noexcept nogil:
    """Windows ow_start .. ow_stop-1 of row oh whose maximum is the minimum
    (where a padding tap may have won): the reference's loop."""
    cdef Py_ssize_t ow
    cdef bint redo = False
    for ow in range(ow_start, ow_stop):
        redo |= y_row[ow] == lowest
    if not redo:
        return
    for ow in range(ow_start, ow_stop):
        if y_row[ow] == lowest:
            _max_window(x_plane, window.in_w, &window.rows, &window.cols, 1,
                        1, oh, ow, &y_row[ow], &idx_row[ow])


cdef inline bint _needs_padding(const Window *window) noexcept nogil:
    """Whether some window reaches outside the input (padding, ceil_mode)."""
    return (window.pad_h > 0 or window.pad_w > 0
            or window.padded_h > window.in_h or window.padded_w > window.in_w)


cdef void _max_pool_plane_unrolled(const pool_value *x_plane,
                                   const Window *window, pool_value *padded,
                                   pool_value *y_plane, long long *idx_plane,
                                   bint values_only) noexcept nogil:
    """Max pooling of one plane with a square 2x2 or 3x3 window, dilation 1,
    every row through _max_unrolled_row. ``padded`` (NULL where every window
    lies inside the input): padded_h x padded_w scratch whose cells outside
    the input hold the minimum; the plane is copied into it."""
    cdef const Taps *rows = &window.rows
    cdef const Taps *cols = &window.cols
    cdef Py_ssize_t in_w = window.in_w, out_w = window.out_w
    cdef Py_ssize_t kernel = window.kernel_h
    cdef Py_ssize_t source_w = in_w, ih, copy_rows, copy_cols, oh
    cdef long long first_index
    cdef const pool_value *source = x_plane
    cdef pool_value *y_row
    cdef long long *idx_row
    cdef pool_value lowest = _lowest(x_plane[0])
    if padded != NULL:
        source_w = window.padded_w
        copy_rows = min(window.in_h, window.padded_h - window.pad_h)
        copy_cols = min(in_w, window.padded_w - window.pad_w)
        for ih in range(copy_rows):
            memcpy(padded + (ih + window.pad_h) * source_w + window.pad_w,
                   x_plane + ih * in_w, copy_cols * sizeof(pool_value))
        source = padded
    for oh in range(window.out_h):
        first_index = (oh * window.stride_h - window.pad_h) * in_w - window.pad_w
        y_row = y_plane + oh * out_w
        idx_row = idx_plane + oh * out_w
        _max_unrolled_row(source + oh * window.stride_h * source_w, source_w,
                          out_w, kernel, window.stride_w, first_index,
                          <int>in_w, y_row, idx_row, values_only)
        if padded == NULL:
            continue
        if rows.first[oh] > 0 or rows.stop[oh] < kernel:
            _redo_padded(x_plane, window, oh, 0, out_w, lowest, y_row, idx_row)
        else:  # only the columns that reach into the padding
            _redo_padded(x_plane, window, oh, 0, cols.full_first, lowest,
                         y_row, idx_row)
            _redo_padded(x_plane, window, oh, cols.full_stop, out_w, lowest,
                         y_row, idx_row)


cdef void _max_pool_plane_widened(const pool_value *x_plane,
                                  const Window *window, int32_t *wide,
                                  pool_value *y_plane,
                                  long long *idx_plane) noexcept nogil:
    """_max_pool_plane_unrolled for uint8, int8 and int16: the plane is
    widened into an int32 scratch plane (``wide``: padded_h x padded_w, its
    cells outside the input holding the minimum, then a row of out_w) and
    pooled there. With 1- or 2-byte lanes the vectoriser takes 16-32
    windows per step, more than a CNN row has, and ran the rows scalar (5x
    slower than int32 here)."""
    cdef const Taps *rows = &window.rows
    cdef const Taps *cols = &window.cols
    cdef Py_ssize_t in_w = window.in_w, out_w = window.out_w
    cdef Py_ssize_t kernel = window.kernel_h, pitch = window.padded_w
    cdef Py_ssize_t ih, iw, oh, j
    cdef Py_ssize_t copy_rows = min(window.in_h, window.padded_h - window.pad_h)
    cdef Py_ssize_t copy_cols = min(in_w, window.padded_w - window.pad_w)
    cdef int32_t *row_best = wide + window.padded_h * pitch
    cdef int32_t *target
    cdef const pool_value *source
    cdef long long first_index
    cdef pool_value *y_row
    cdef long long *idx_row
    cdef pool_value lowest = _lowest(x_plane[0])
    cdef bint padding = _needs_padding(window)
    for ih in range(copy_rows):
        target = wide + (ih + window.pad_h) * pitch + window.pad_w
        source = x_plane + ih * in_w
        for iw in range(copy_cols):
            target[iw] = <int32_t>source[iw]
    for oh in range(window.out_h):
        first_index = (oh * window.stride_h - window.pad_h) * in_w - window.pad_w
        y_row = y_plane + oh * out_w
        idx_row = idx_plane + oh * out_w
        _max_unrolled_row(<const int32_t *>(wide + oh * window.stride_h * pitch),
                          pitch, out_w, kernel, window.stride_w, first_index,
                          <int>in_w, row_best, idx_row, False)
        for j in range(out_w):
            y_row[j] = <pool_value>row_best[j]
        if not padding:
            continue
        if rows.first[oh] > 0 or rows.stop[oh] < kernel:
            _redo_padded(x_plane, window, oh, 0, out_w, lowest, y_row, idx_row)
        else:
            _redo_padded(x_plane, window, oh, 0, cols.full_first, lowest,
                         y_row, idx_row)
            _redo_padded(x_plane, window, oh, cols.full_stop, out_w, lowest,
                         y_row, idx_row)


def max_pool2d_forward(const pool_value[:, :, :, ::1] x,
                       pool_value[:, :, :, ::1] y,
                       long long[:, :, :, ::1] indices, g, int num_threads):
    """y, indices = max over each window (PyTorch's NaN and -inf rules, as
    the reference: see ``_max_window``); indices are flat H*W positions.
    With ``indices`` None only y is written: float32 stride-2 rows keep no
    offsets at all, and the other rows put theirs in one plane of scratch
    per thread."""
    cdef _Window window = _Window(g)
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t in_h = x.shape[2], in_w = x.shape[3]
    cdef Py_ssize_t out_h = y.shape[2], out_w = y.shape[3]
    cdef Py_ssize_t in_plane = in_h * in_w, out_plane = out_h * out_w
    cdef const pool_value *x_base = &x[0, 0, 0, 0]
    cdef pool_value *y_base = &y[0, 0, 0, 0]
    cdef bint values_only = indices is None
    cdef long long *idx_base = NULL if values_only else &indices[0, 0, 0, 0]
    cdef long long *idx_scratch = NULL
    cdef Py_ssize_t phase_size = window.w.stride_w * window.w.phase_stride
    cdef Py_ssize_t kernel = window.w.kernel_h
    cdef bint unrolled = (kernel == window.w.kernel_w
                          and (kernel == 2 or kernel == 3)
                          and window.w.dilation_h == 1
                          and window.w.dilation_w == 1
                          and 2 * in_w + 2 < (<Py_ssize_t>1 << 31))
    cdef bint needs_padding = unrolled and _needs_padding(&window.w)
    cdef Py_ssize_t padded_size = window.w.padded_h * window.w.padded_w
    # runs keep tap numbers in floats
    cdef bint use_runs = (pool_value is float and not unrolled
                          and window.w.kernel_h * window.w.kernel_w
                          <= (<Py_ssize_t>1 << 24))
    cdef pool_value lowest = _lowest(x_base[0])
    cdef Py_ssize_t plane, i
    cdef float *phases
    cdef pool_value *scratch
    # 1- and 2-byte integers go through an int32 copy of each plane
    cdef bint widen = unrolled and (pool_value is uint8_t or pool_value is int8_t
                                    or pool_value is int16_t)
    cdef Py_ssize_t wide_size = padded_size + out_w
    cdef int32_t *wide
    cdef long long *idx_plane
    if values_only:
        idx_scratch = <long long *>malloc(
            num_threads * out_plane * sizeof(long long))
        if idx_scratch == NULL:
            raise MemoryError()
    with nogil, parallel(num_threads=num_threads):
        # zeroed once: runs read (and drop) entries past what they copied
        phases = <float *>calloc(phase_size, sizeof(float)) if use_runs \
            else NULL
        scratch = NULL
        wide = NULL
        if widen:
            wide = <int32_t *>malloc(wide_size * sizeof(int32_t))
            if wide != NULL:
                for i in range(wide_size):
                    wide[i] = <int32_t>lowest
        if needs_padding and not widen:
            scratch = <pool_value *>malloc(padded_size * sizeof(pool_value))
            if scratch != NULL:
                for i in range(padded_size):
                    scratch[i] = lowest
        for plane in prange(planes, schedule="static"):
            idx_plane = (idx_scratch + threadid() * out_plane if values_only
                         else idx_base + plane * out_plane)
            # without scratch (malloc failed) the generic path
            if wide != NULL:
                _max_pool_plane_widened(
                    x_base + plane * in_plane, &window.w, wide,
                    y_base + plane * out_plane, idx_plane)
            elif (unrolled and not widen
                  and (scratch != NULL or not needs_padding)):
                _max_pool_plane_unrolled(
                    x_base + plane * in_plane, &window.w, scratch,
                    y_base + plane * out_plane, idx_plane, values_only)
            else:
                _max_pool_plane(x_base + plane * in_plane, in_w, out_h, out_w,
                                &window.w, phases, y_base + plane * out_plane,
                                idx_plane)
        free(phases)
        free(scratch)
        free(wide)
    free(idx_scratch)


def max_pool2d_backward(const real[:, :, :, ::1] grad_output,
                        const long long[:, :, :, ::1] indices,
                        real[:, :, :, ::1] grad_input, int num_threads):
    """grad_input = scatter-add of grad_output at indices (zeroed here).
    Returns how many indices lie outside [0, H*W): those are skipped (the
    caller raises), checked in the same pass as the scatter rather than in
    two reductions before it."""
    cdef Py_ssize_t planes = grad_input.shape[0] * grad_input.shape[1]
    cdef Py_ssize_t in_plane = grad_input.shape[2] * grad_input.shape[3]
    cdef Py_ssize_t out_plane = grad_output.shape[2] * grad_output.shape[3]
    cdef const real *grad_base = &grad_output[0, 0, 0, 0]
    cdef const long long *idx_base = &indices[0, 0, 0, 0]
    cdef real *grad_input_base = &grad_input[0, 0, 0, 0]
    cdef Py_ssize_t plane, p, outside = 0
    cdef unsigned long long limit = <unsigned long long>in_plane
    cdef real *target
    cdef const real *grad
    cdef const long long *idx
    for plane in prange(planes, nogil=True, schedule="static",
                        num_threads=num_threads):
        target = grad_input_base + plane * in_plane
        grad = grad_base + plane * out_plane
        idx = idx_base + plane * out_plane
        memset(target, 0, in_plane * sizeof(real))
        for p in range(out_plane):
            # a negative index is a huge unsigned one
            if <unsigned long long>idx[p] < limit:
                target[idx[p]] += grad[p]
            else:
                outside += 1
    return outside


# ---------------------------------------------------------------- avg pool
#
# Each plane is first converted into a float64 scratch plane padded with
# zeros (``_avg_fill_plane``; padded_h x padded_w, the extent the windows
# cover), so that every window is whole and every loop runs over a whole
# output row without bounds: adding a zero leaves a float64 sum exactly as
# it was, so the sums are the reference's, tap by tap in its order. Square
# 2x2 and 3x3 windows sum all their taps in one sweep of the row
# (``_avg_2x2_row``, ``_avg_3x3_row``); other windows go tap by tap. The
# backward spreads each output's share over a zeroed float64 scratch plane
# tap by tap, then rounds its inner part into grad_input once; windows that
# neither overlap nor reach outside the input write grad_input directly.


cdef struct AvgScratch:
    # per thread: a padded float64 plane, then a row of out_w, ``pitch``
    # doubles apart in all (whole cache lines: threads sharing a line made
    # the sweeps several times slower)
    double *buffer
    Py_ssize_t plane_size, pitch


cdef int _avg_scratch_alloc(AvgScratch *scratch, const Window *window,
                            Py_ssize_t threads) except -1:
    scratch.plane_size = window.padded_h * window.padded_w
    scratch.pitch = (scratch.plane_size + window.out_w + 7) // 8 * 8 + 8
    scratch.buffer = <double *>calloc(threads * scratch.pitch, sizeof(double))
    if scratch.buffer == NULL:
        raise MemoryError()
    return 0


cdef inline void _avg_fill_plane(const real *x_plane, const Window *window,
                                 double *padded) noexcept nogil:
    """padded (zero outside the input, set once) = x_plane, in float64."""
    cdef Py_ssize_t in_w = window.in_w, ih, iw
    cdef Py_ssize_t copy_rows = min(window.in_h, window.padded_h - window.pad_h)
    cdef Py_ssize_t copy_cols = min(in_w, window.padded_w - window.pad_w)
    cdef double *target
    cdef const real *source
    for ih in range(copy_rows):
        target = padded + (ih + window.pad_h) * window.padded_w + window.pad_w
        source = x_plane + ih * in_w
        for iw in range(copy_cols):
            target[iw] = source[iw]


cdef inline void _avg_2x2_row(const double *top, Py_ssize_t pitch,
                              Py_ssize_t count, Py_ssize_t step,
                              double *totals) noexcept nogil:
    cdef const double *below = top + pitch
    cdef Py_ssize_t j
    for j in range(count):
        totals[j] = (top[j * step] + top[j * step + 1] + below[j * step]
                     + below[j * step + 1])


cdef inline void _avg_3x3_row(const double *top, Py_ssize_t pitch,
                              Py_ssize_t count, Py_ssize_t step,
                              double *totals) noexcept nogil:
    cdef const double *middle = top + pitch
    cdef const double *bottom = middle + pitch
    cdef Py_ssize_t j
    for j in range(count):
        totals[j] = (top[j * step] + top[j * step + 1] + top[j * step + 2]
                     + middle[j * step] + middle[j * step + 1]
                     + middle[j * step + 2] + bottom[j * step]
                     + bottom[j * step + 1] + bottom[j * step + 2])


cdef inline void _avg_taps_row(const double *top, Py_ssize_t pitch,
                               Py_ssize_t count, Py_ssize_t kernel_h,
                               Py_ssize_t kernel_w, Py_ssize_t step,
                               double *totals) noexcept nogil:
    """Any window, tap by tap over the row."""
    cdef Py_ssize_t j, r, s
    cdef const double *tap
    for j in range(count):
        totals[j] = 0
    for r in range(kernel_h):
        for s in range(kernel_w):
            tap = top + r * pitch + s
            for j in range(count):
                totals[j] += tap[j * step]


cdef void _avg_row_sums(const double *top, const Window *window,
                        double *totals) noexcept nogil:
    """totals[ow] = sum of window (oh, ow) whose top-left tap is top[ow *
    stride_w] in the padded plane; constant strides 1 and 2 let the loads
    vectorise."""
    cdef Py_ssize_t pitch = window.padded_w, count = window.out_w
    cdef Py_ssize_t step = window.stride_w
    if window.kernel_h == window.kernel_w == 2:
        if step == 2:
            _avg_2x2_row(top, pitch, count, 2, totals)
        elif step == 1:
            _avg_2x2_row(top, pitch, count, 1, totals)
        else:
            _avg_2x2_row(top, pitch, count, step, totals)
    elif window.kernel_h == window.kernel_w == 3:
        if step == 2:
            _avg_3x3_row(top, pitch, count, 2, totals)
        elif step == 1:
            _avg_3x3_row(top, pitch, count, 1, totals)
        else:
            _avg_3x3_row(top, pitch, count, step, totals)
    else:
        _avg_taps_row(top, pitch, count, window.kernel_h, window.kernel_w,
                      step, totals)


def avg_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                       const double[:, ::1] divisors, g, int num_threads):
    """y = (sum of each window's in-bounds elements) / divisors[oh, ow],
    summed in float64 in the reference's order."""
    cdef _Window window = _Window(g)
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t in_plane = x.shape[2] * x.shape[3]
    cdef Py_ssize_t out_h = y.shape[2], out_w = y.shape[3]
    cdef Py_ssize_t row_step = window.w.stride_h * window.w.padded_w
    cdef const real *x_base = &x[0, 0, 0, 0]
    cdef real *y_base = &y[0, 0, 0, 0]
    cdef const double *div_base = &divisors[0, 0]
    cdef Py_ssize_t plane, oh, ow
    cdef double *padded
    cdef double *totals
    cdef real *y_row
    cdef AvgScratch scratch
    _avg_scratch_alloc(&scratch, &window.w, num_threads)
    try:
        for plane in prange(planes, nogil=True, schedule="static",
                            num_threads=num_threads):
            padded = scratch.buffer + threadid() * scratch.pitch
            totals = padded + scratch.plane_size
            _avg_fill_plane(x_base + plane * in_plane, &window.w, padded)
            for oh in range(out_h):
                _avg_row_sums(padded + oh * row_step, &window.w, totals)
                y_row = y_base + (plane * out_h + oh) * out_w
                for ow in range(out_w):
                    y_row[ow] = <real>(totals[ow] / div_base[oh * out_w + ow])
    finally:
        free(scratch.buffer)


cdef inline void _assign_tap(real *target, const double *shares,
                             Py_ssize_t count, Py_ssize_t step) noexcept nogil:
    """target[j * step] = shares[j] for j < count (constant strides 1 and 2
    vectorise the stores)."""
    cdef Py_ssize_t j
    if step == 2:
        for j in range(count):
            target[j * 2] = <real>shares[j]
    elif step == 1:
        for j in range(count):
            target[j] = <real>shares[j]
    else:
        for j in range(count):
            target[j * step] = <real>shares[j]


def avg_pool2d_backward(const real[:, :, :, ::1] grad_output,
                        real[:, :, :, ::1] grad_input,
                        const double[:, ::1] divisors, g, int num_threads):
    """grad_input = each grad_output / divisor spread over its window's
    in-bounds elements (overlapping windows add up, in float64, rounded to
    the dtype once)."""
    cdef _Window window = _Window(g)
    cdef Py_ssize_t planes = grad_input.shape[0] * grad_input.shape[1]
    cdef Py_ssize_t in_h = grad_input.shape[2], in_w = grad_input.shape[3]
    cdef Py_ssize_t out_h = grad_output.shape[2], out_w = grad_output.shape[3]
    cdef Py_ssize_t pitch = window.w.padded_w, step = window.w.stride_w
    cdef Py_ssize_t kernel_h = window.w.kernel_h, kernel_w = window.w.kernel_w
    cdef Py_ssize_t pad_h = window.w.pad_h, pad_w = window.w.pad_w
    cdef Py_ssize_t padded_h = window.w.padded_h
    cdef const real *grad_base = &grad_output[0, 0, 0, 0]
    cdef real *target_base = &grad_input[0, 0, 0, 0]
    cdef const double *div_base = &divisors[0, 0]
    cdef Py_ssize_t plane, oh, ow, r, s, ih, iw, copy_cols
    cdef const real *grad_row
    cdef real *target
    cdef double *padded
    cdef double *shares
    cdef double *tap
    cdef AvgScratch scratch
    # windows that neither overlap nor leave the input: grad_input written
    # directly, one share per element
    cdef bint disjoint = (window.w.stride_h >= kernel_h and step >= kernel_w
                          and not _needs_padding(&window.w))
    _avg_scratch_alloc(&scratch, &window.w, num_threads)
    copy_cols = min(in_w, pitch - pad_w)
    try:
        for plane in prange(planes, nogil=True, schedule="static",
                            num_threads=num_threads):
            padded = scratch.buffer + threadid() * scratch.pitch
            shares = padded + scratch.plane_size
            target = target_base + plane * in_h * in_w
            if disjoint:
                memset(target, 0, in_h * in_w * sizeof(real))
            else:
                memset(padded, 0, scratch.plane_size * sizeof(double))
            for oh in range(out_h):
                grad_row = grad_base + (plane * out_h + oh) * out_w
                for ow in range(out_w):
                    shares[ow] = grad_row[ow] / div_base[oh * out_w + ow]
                if disjoint:  # each element in one window at most: assign
                    for r in range(kernel_h):
                        for s in range(kernel_w):
                            _assign_tap(target + (oh * window.w.stride_h + r)
                                        * in_w + s, shares, out_w, step)
                    continue
                for r in range(kernel_h):
                    for s in range(kernel_w):
                        tap = padded + (oh * window.w.stride_h + r) * pitch + s
                        for ow in range(out_w):
                            tap[ow * step] += shares[ow]
            if disjoint:
                continue
            for ih in range(in_h):
                if ih + pad_h < padded_h:
                    for iw in range(copy_cols):
                        target[ih * in_w + iw] = <real>padded[
                            (ih + pad_h) * pitch + iw + pad_w]
                    for iw in range(copy_cols, in_w):
                        target[ih * in_w + iw] = 0
                else:
                    memset(target + ih * in_w, 0, in_w * sizeof(real))
    finally:
        free(scratch.buffer)
