/* Depthwise 2-D convolution with channels in the vector lanes, float32
 * (included by depthwise.pyx).
 *
 * depthwise.pyx's plane kernel sweeps one channel's rows at a time: on the
 * small planes of a CNN's later layers (14x14, 7x7, stride 2) its rows are
 * a vector or two long and loop overhead is most of its time. Here 16
 * channels share each vector instead, so every row length vectorises fully:
 *
 * A work item is (image, block of 16 channels, run of output rows). Its
 * input rows are first transposed into a zero-padded band, [row][column]
 * [16 channels] (16 x 16 transposes of 16 pixels of 16 planes), so a tap of
 * an output pixel is one vector load at any stride, dilation and padding.
 * Output pixels are then computed FC_DW_PIXELS of a row at a time: that
 * many accumulators, each tap's 16 weights one vector, the taps summed in
 * row-major order from the bias (a fixed order: the bits do not depend on
 * the thread count). The clamp of a fused activation is applied in
 * registers, and the item's outputs, [pixel][16 channels], are transposed
 * back into the 16 output planes.
 *
 * Channels past the last (a block of fewer than 16) hold zeros and are
 * never stored. One filter per channel (out_channels == channels).
 */

#ifndef FASTCONV_DEPTHWISE_VECTORS_H
#define FASTCONV_DEPTHWISE_VECTORS_H

#include "vectors.h"

#define FC_DW_LANES 16    /* channels per block */

/* The geometry of one call, as depthwise.pyx fills it in. */
typedef struct {
    ptrdiff_t channels, in_height, in_width, out_height, out_width;
    ptrdiff_t kernel_h, kernel_w, stride_h, stride_w;
    ptrdiff_t dilation_h, dilation_w, pad_top, pad_left;
    ptrdiff_t padded_w;        /* pad_left + in_width + pad_right */
    ptrdiff_t rows;            /* output rows per item */
    int clamp;                 /* outputs clamped to [lo, hi] */
    float lo, hi;
} fc_dw_geometry;

/* Input rows a run of `rows` output rows reads. */
static inline ptrdiff_t fc_dw_band_rows(const fc_dw_geometry *g,
                                        ptrdiff_t rows)
{
    return (rows - 1) * g->stride_h + (g->kernel_h - 1) * g->dilation_h + 1;
}

/* Floats of one thread's scratch: the band, the item's outputs, and its
 * weights and bias as vectors. */
static inline ptrdiff_t fc_dw_scratch_floats(const fc_dw_geometry *g)
{
    return (fc_dw_band_rows(g, g->rows) * g->padded_w
            + g->rows * g->out_width
            + g->kernel_h * g->kernel_w + 1) * FC_DW_LANES;
}

#if FC_VECTORS_AVAILABLE && FC_VL == 16 && FC_HAVE_SHUFFLE
#define FC_DW_AVAILABLE 1
#define FC_DW_PIXELS 8    /* output pixels of a row per register tile */

/* band[i][col][c] = x plane c, row first + i, column col - pad_left, zero
 * outside the input, for the `band_rows` rows of the item and c < lanes
 * (the other lanes zero). */
static void fc_dw_fill(const fc_dw_geometry *g, const float *x,
                       ptrdiff_t lanes, ptrdiff_t first, ptrdiff_t band_rows,
                       float *band)
{
    const ptrdiff_t width = g->in_width, pw = g->padded_w;
    const ptrdiff_t plane = g->in_height * width;
    const ptrdiff_t lo = first < 0 ? 0 : first;
    const ptrdiff_t hi = first + band_rows > g->in_height ? g->in_height
                                                         : first + band_rows;
    for (ptrdiff_t i = 0; i < band_rows; ++i) {
        float *row = band + i * pw * FC_VL;
        const ptrdiff_t ih = first + i;
        if (ih < lo || ih >= hi) {
            memset(row, 0, (size_t)(pw * FC_VL) * sizeof(float));
            continue;
        }
        memset(row, 0, (size_t)(g->pad_left * FC_VL) * sizeof(float));
        memset(row + (g->pad_left + width) * FC_VL, 0,
               (size_t)((pw - g->pad_left - width) * FC_VL) * sizeof(float));
    }
    if (hi <= lo)
        return;
    /* the rows [lo, hi) are pixels [lo * width, hi * width) of each plane */
    const ptrdiff_t end = hi * width;
    ptrdiff_t ih = lo, iw = 0;
    for (ptrdiff_t p0 = lo * width; p0 < end; p0 += FC_VL) {
        const int n = end - p0 < FC_VL ? (int)(end - p0) : FC_VL;
        fc_vf r[FC_VL];
        for (int c = 0; c < FC_VL; ++c)
            r[c] = c < lanes ? fc_load_lanes(x + c * plane + p0, n)
                             : (fc_vf){0};
        fc_transpose(r);
        for (int i = 0; i < n; ++i) {
            memcpy(band + ((ih - first) * pw + g->pad_left + iw) * FC_VL,
                   &r[i], sizeof r[i]);
            if (++iw == width) {
                iw = 0;
                ++ih;
            }
        }
    }
}

/* Output pixels ow .. ow + P - 1 of the row whose band rows start at top:
 * out[j] = clamp(bias + sum over taps (r, s) of w[r][s] * the input at
 * row r * dilation_h, column (ow + j) * stride_w + s * dilation_w).
 * Inlined into one copy per P, where the sums stay in registers. */
static inline __attribute__((always_inline)) void
fc_dw_pixels(const int P, const fc_dw_geometry *g, const float *top,
             ptrdiff_t ow, const float *w, fc_vf bias, float *out)
{
    const ptrdiff_t step = g->stride_w * FC_VL;
    fc_vf a[FC_DW_PIXELS];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j)
        a[j] = bias;
    for (ptrdiff_t r = 0; r < g->kernel_h; ++r) {
        const float *row = top + r * g->dilation_h * g->padded_w * FC_VL
                           + ow * step;
        for (ptrdiff_t s = 0; s < g->kernel_w; ++s) {
            const fc_vf wv = fc_load(w + (r * g->kernel_w + s) * FC_VL);
            const float *p = row + s * g->dilation_w * FC_VL;
#pragma GCC unroll 8
            for (int j = 0; j < P; ++j)
                a[j] += fc_load(p + j * step) * wv;
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        const fc_vf v = fc_clamp(a[j], g->clamp, g->lo, g->hi);
        memcpy(out + (ow + j) * FC_VL, &v, sizeof v);
    }
}

/* The outputs of `rows` output rows from the band, [pixel][16]. */
static void fc_dw_compute(const fc_dw_geometry *g, const float *band,
                          ptrdiff_t rows, const float *w, fc_vf bias,
                          float *out)
{
    const ptrdiff_t width = g->out_width;
    for (ptrdiff_t t = 0; t < rows; ++t) {
        const float *top = band + t * g->stride_h * g->padded_w * FC_VL;
        float *o = out + t * width * FC_VL;
        ptrdiff_t ow = 0;
        for (; ow + FC_DW_PIXELS <= width; ow += FC_DW_PIXELS)
            fc_dw_pixels(FC_DW_PIXELS, g, top, ow, w, bias, o);
        switch (width - ow) {
        case 7: fc_dw_pixels(7, g, top, ow, w, bias, o); break;
        case 6: fc_dw_pixels(6, g, top, ow, w, bias, o); break;
        case 5: fc_dw_pixels(5, g, top, ow, w, bias, o); break;
        case 4: fc_dw_pixels(4, g, top, ow, w, bias, o); break;
        case 3: fc_dw_pixels(3, g, top, ow, w, bias, o); break;
        case 2: fc_dw_pixels(2, g, top, ow, w, bias, o); break;
        case 1: fc_dw_pixels(1, g, top, ow, w, bias, o); break;
        default: break;
        }
    }
}

/* y plane c (c < lanes), pixels [0, count) = out[pixel][c]; y points at
 * the first plane's first pixel, planes out_plane apart. */
static void fc_dw_store(const float *out, ptrdiff_t count, ptrdiff_t lanes,
                        float *y, ptrdiff_t out_plane)
{
    for (ptrdiff_t q0 = 0; q0 < count; q0 += FC_VL) {
        const int n = count - q0 < FC_VL ? (int)(count - q0) : FC_VL;
        fc_vf r[FC_VL];
        for (int i = 0; i < FC_VL; ++i)
            r[i] = i < n ? fc_load(out + (q0 + i) * FC_VL) : (fc_vf){0};
        fc_transpose(r);
        for (ptrdiff_t c = 0; c < lanes; ++c)
            fc_store(y + c * out_plane + q0, r[c], n);
    }
}

/* One work item: output rows [oh0, oh0 + g->rows) (fewer at the end) of
 * channels [16 * block, 16 * block + 16) of one image. x_image and y_image
 * point at the image's first plane, weight (C, 1, R, S), bias (C,) or
 * NULL; scratch holds fc_dw_scratch_floats(g) floats. */
static void fc_dw_item(const fc_dw_geometry *g, const float *x_image,
                       const float *weight, const float *bias,
                       ptrdiff_t block, ptrdiff_t oh0, float *y_image,
                       float *scratch)
{
    const ptrdiff_t c0 = block * FC_VL;
    const ptrdiff_t lanes = g->channels - c0 < FC_VL ? g->channels - c0
                                                     : FC_VL;
    const ptrdiff_t rows = g->out_height - oh0 < g->rows
                           ? g->out_height - oh0 : g->rows;
    const ptrdiff_t taps = g->kernel_h * g->kernel_w;
    const ptrdiff_t band_rows = fc_dw_band_rows(g, rows);
    float *band = scratch;
    float *out = band + fc_dw_band_rows(g, g->rows) * g->padded_w * FC_VL;
    float *w = out + g->rows * g->out_width * FC_VL;
    float *b = w + taps * FC_VL;
    for (ptrdiff_t c = 0; c < FC_VL; ++c) {
        for (ptrdiff_t t = 0; t < taps; ++t)
            w[t * FC_VL + c] = c < lanes ? weight[(c0 + c) * taps + t] : 0.0f;
        b[c] = c < lanes && bias != NULL ? bias[c0 + c] : 0.0f;
    }
    const ptrdiff_t in_plane = g->in_height * g->in_width;
    const ptrdiff_t out_plane = g->out_height * g->out_width;
    fc_dw_fill(g, x_image + c0 * in_plane, lanes,
               oh0 * g->stride_h - g->pad_top, band_rows, band);
    fc_dw_compute(g, band, rows, w, fc_load(b), out);
    fc_dw_store(out, rows * g->out_width, lanes,
                y_image + c0 * out_plane + oh0 * g->out_width, out_plane);
}

/* The plane kernel's rows at column stride 1, float32, pixels in the
 * lanes: output rows t < rows of one channel from its zero-padded tile
 * (rows pitch floats apart; the scratch holds FC_VL floats past its last
 * row, which the last vector of a row may read into lanes it never
 * stores), y_rows[t * out_w + ow] = clamp(bias + sum over taps (r, s) of
 * w[r][s] * tile[(t * stride_h + r * dilation_h) * pitch + ow + s *
 * dilation_w]), a vector of
 * outputs with every tap summed in registers, in the order of the row
 * sweeps (kernel rows in turn, each row's taps left to right). */
static void fc_dw_plane_rows(const float *tile, ptrdiff_t pitch,
                             ptrdiff_t rows, ptrdiff_t out_w,
                             ptrdiff_t stride_h,
                             ptrdiff_t dilation_h, ptrdiff_t dilation_w,
                             const float *w, ptrdiff_t kernel_h,
                             ptrdiff_t kernel_w, float bias, int clamp,
                             float lo, float hi, float *y_rows)
{
    for (ptrdiff_t t = 0; t < rows; ++t) {
        const float *top = tile + t * stride_h * pitch;
        float *y_row = y_rows + t * out_w;
        for (ptrdiff_t ow = 0; ow < out_w; ow += FC_VL) {
            const int n = out_w - ow < FC_VL ? (int)(out_w - ow) : FC_VL;
            fc_vf a = (fc_vf){0} + bias;
            for (ptrdiff_t r = 0; r < kernel_h; ++r) {
                const float *row = top + r * dilation_h * pitch + ow;
                for (ptrdiff_t s = 0; s < kernel_w; ++s)
                    a += fc_load(row + s * dilation_w) * w[r * kernel_w + s];
            }
            fc_store(y_row + ow, fc_clamp(a, clamp, lo, hi), n);
        }
    }
}

#else
#define FC_DW_AVAILABLE 0
/* never called (depthwise.pyx checks FC_DW_AVAILABLE): the calls compile
 * to nothing */
#define fc_dw_plane_rows(...) ((void)0)
#define fc_dw_item(...) ((void)0)
#endif

#endif
