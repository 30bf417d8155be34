/* A register-blocked direct 2-D convolution, float32 (included by direct.pyx).
 *
 * Output pixels are computed a vector at a time: FC_VL consecutive pixels of
 * one output row. A tile is up to FC_VMAX such vectors times FC_KB output
 * channels, FC_VMAX * FC_KB accumulators that stay in registers while every
 * tap (c, r, s) of the filters is applied: per tap, FC_VMAX vector loads of
 * input and FC_KB weights broadcast from memory feed FC_VMAX * FC_KB fused
 * multiply-adds. Nothing like an im2col matrix is written.
 *
 * The input of one work item (a run of output rows of one image and group)
 * is first copied into a per-thread "band": every input row the item reads,
 * zero-padded, and for a stride s split into s phases (columns q, q + s,
 * q + 2s, ...), so that the inputs of FC_VL consecutive output pixels are
 * FC_VL consecutive floats for any stride, dilation and padding. Band layout:
 * [channel][row][phase][column], with row_len columns per phase. The offset
 * of tap (c, r, s) from a vector's first input is then the same for every
 * vector, and the caller passes the table of them (tap_offsets).
 *
 * A pointwise convolution (1x1, stride 1, no padding) reads x itself, with
 * no band: its vectors run over the whole flattened plane (rows need no
 * padding), the last one shifted back to end at the plane's end (it stores
 * only the lanes past the vector before it).
 *
 * Weights arrive packed (fastconv.backends.cython_cpu._pack_direct): per
 * group, chunks of FC_KB output channels, each chunk [tap][FC_KB], zero-padded
 * to a whole chunk. Each output is summed over taps in one fixed order, by
 * one thread: the bits do not depend on the thread count or the schedule.
 */

#ifndef FASTCONV_DIRECT_CONV_H
#define FASTCONV_DIRECT_CONV_H

#include <stddef.h>
#include <string.h>

#include "vectors.h"

#if FC_VECTORS_AVAILABLE
#define FC_DIRECT_AVAILABLE 1
#if FC_VL == 16
#define FC_KB 8           /* output channels per tile */
#else
#define FC_KB 4           /* 16 registers: 12 accumulators and 3 inputs */
#endif
#define FC_VMAX 3         /* vectors per tile */

/* For V vectors whose first inputs are base[v] (input[v][t]: FC_VL floats
 * at base[v] + off[t]) and the FC_KB filters of one chunk (w[t][k]):
 * out[k][v] = sum over taps t of input[v][t] * w[t][k], plus bias[k] where
 * bias is not NULL, stored for the first kn filters at dst[v] + k * plane
 * (lanes[v] floats; `spread` 2: lane j at 2 j, fc_store_spread2); with
 * `accumulate`, added to what is stored there (the sums of earlier channel
 * blocks) instead of the bias. Inlined into one copy per V, where the
 * loops over k and v unroll and the sums stay in registers. */
static inline __attribute__((always_inline)) void
fc_tile(const int V, const float *const *base, const ptrdiff_t *off,
        ptrdiff_t taps, const float *w, float *const *dst, const int *lanes,
        ptrdiff_t plane, ptrdiff_t kn, const float *bias, int accumulate,
        int clamp, float lo, float hi, int spread)
{
    /* the loops around the tap loop unrolled by pragma, as in fc_cv_tile:
     * the sums then stay in registers from start to store */
    fc_vf a[FC_KB][FC_VMAX];
#pragma GCC unroll 8
    for (int k = 0; k < FC_KB; ++k)
#pragma GCC unroll 3
        for (int v = 0; v < V; ++v)
            a[k][v] = (fc_vf){0};
    for (ptrdiff_t t = 0; t < taps; ++t) {
        const ptrdiff_t o = off[t];
        const float *wt = w + t * FC_KB;
        fc_vf in[FC_VMAX];
        for (int v = 0; v < V; ++v)
            in[v] = fc_load(base[v] + o);
        for (int k = 0; k < FC_KB; ++k) {
            const float wk = wt[k];
            for (int v = 0; v < V; ++v)
                a[k][v] += in[v] * wk;
        }
    }
#pragma GCC unroll 8
    for (int k = 0; k < FC_KB; ++k) {
        if (k >= kn)
            break;
        const float b = bias ? bias[k] : 0.0f;
#pragma GCC unroll 3
        for (int v = 0; v < V; ++v) {
            float *d = dst[v] + k * plane;
            if (spread == 2) {
                /* a phase of a stride-2 input gradient (fc_phase_out):
                 * clamp is never set there */
                fc_store_spread2(d, accumulate ? a[k][v] : a[k][v] + b,
                                 lanes[v], accumulate);
                continue;
            }
            fc_store(d, fc_clamp(accumulate
                                 ? a[k][v] + fc_load_lanes(d, lanes[v])
                                 : a[k][v] + b, clamp, lo, hi), lanes[v]);
        }
    }
}

#define FC_TILE_ARGS const float *const *b, const ptrdiff_t *o, ptrdiff_t t, \
    const float *w, float *const *d, const int *l, ptrdiff_t p, ptrdiff_t kn, \
    const float *bias, int acc, int c, float lo, float hi, int sp
static void fc_tile1(FC_TILE_ARGS) { fc_tile(1, b, o, t, w, d, l, p, kn, bias, acc, c, lo, hi, sp); }
static void fc_tile2(FC_TILE_ARGS) { fc_tile(2, b, o, t, w, d, l, p, kn, bias, acc, c, lo, hi, sp); }
static void fc_tile3(FC_TILE_ARGS) { fc_tile(3, b, o, t, w, d, l, p, kn, bias, acc, c, lo, hi, sp); }

#else  /* no vector extensions (MSVC): the caller never selects this path */
#define FC_WTAPS(WV) 1
#define FC_DIRECT_AVAILABLE 0
#define FC_KB 1
#define FC_VMAX 1
#endif

/* The geometry of one call, as direct.pyx fills it in. */
typedef struct {
    ptrdiff_t channels;        /* Cg: input channels of a group */
    ptrdiff_t in_height, in_width;
    ptrdiff_t filters;         /* Kg: output channels of a group */
    ptrdiff_t chunks;          /* ceil(Kg / FC_KB) */
    ptrdiff_t out_height, out_width;
    ptrdiff_t stride_h, stride_w, pad_top, pad_left, dilation_h;
    ptrdiff_t taps;            /* Cg * R * S */
    ptrdiff_t block_taps;      /* taps per channel block (whole channels) */
    ptrdiff_t rows;            /* output rows (pointwise: vectors) per item */
    int pointwise;             /* 1x1, stride 1, no padding, plane >= FC_VL */
    ptrdiff_t band_rows;       /* input rows per band: (rows-1)*sh + (R-1)*dh + 1 */
    ptrdiff_t row_len;         /* band columns per phase */
    int clamp;                 /* outputs clamped to [lo, hi] (an activation) */
    float lo, hi;
} fc_direct_geometry;

/* Channels ahead that fc_fill_band prefetches. */
#define FC_FILL_AHEAD 2

/* Columns [*lo, *hi) of phase q of a band row that hold inputs (the
 * others are padding): dst[j] = src[j * sw + q - pad_left]. */
static inline void fc_phase_columns(const fc_direct_geometry *g, ptrdiff_t q,
                                    ptrdiff_t *lo, ptrdiff_t *hi)
{
    const ptrdiff_t sw = g->stride_w, len = g->row_len, width = g->in_width;
    const ptrdiff_t shift = q - g->pad_left;
    ptrdiff_t a = shift < 0 ? (-shift + sw - 1) / sw : 0;
    ptrdiff_t b = width - shift <= 0 ? 0 : (width - shift + sw - 1) / sw;
    if (a > len) a = len;
    if (b > len) b = len;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* n zeros at dst: a loop for the few padding columns of a row (a library
 * call costs more), memset beyond. */
static inline void fc_zero(float *dst, ptrdiff_t n)
{
    if (n > 16) {
        memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    for (ptrdiff_t j = 0; j < n; ++j)
        dst[j] = 0.0f;
}

/* Phases whose columns fc_fill_band works out once per call (two
 * divisions per row and phase were a tenth of a small layer's band fill). */
#define FC_PHASES_CACHED 8

/* Copy the input rows of the item starting at output row oh0 into band. */
static void fc_fill_band(const fc_direct_geometry *g, const float *image,
                         ptrdiff_t oh0, float *band)
{
    const ptrdiff_t sw = g->stride_w, len = g->row_len, width = g->in_width;
    const ptrdiff_t first = oh0 * g->stride_h - g->pad_top;
    ptrdiff_t lo_q[FC_PHASES_CACHED], hi_q[FC_PHASES_CACHED];
    for (ptrdiff_t q = 0; q < sw && q < FC_PHASES_CACHED; ++q)
        fc_phase_columns(g, q, &lo_q[q], &hi_q[q]);
    for (ptrdiff_t c = 0; c < g->channels; ++c) {
        const float *plane = image + c * g->in_height * width;
        for (ptrdiff_t i = 0; i < g->band_rows; ++i) {
            float *dst = band + (c * g->band_rows + i) * sw * len;
            const ptrdiff_t ih = first + i;
            if (ih < 0 || ih >= g->in_height) {
                memset(dst, 0, (size_t)(sw * len) * sizeof(float));
                continue;
            }
            const float *src = plane + ih * width;
            if (c + FC_FILL_AHEAD < g->channels) {
                /* the same row FC_FILL_AHEAD channels on: the rows of a
                 * channel are too short a stream for the hardware's
                 * prefetchers, and reading x missed the cache on most
                 * loads (a third of a strided weight gradient's time) */
                const char *ahead = (const char *)(
                    src + FC_FILL_AHEAD * g->in_height * width);
                for (ptrdiff_t b = 0; b < width * (ptrdiff_t)sizeof(float);
                     b += 64)
                    __builtin_prefetch(ahead + b);
            }
            for (ptrdiff_t q = 0; q < sw; ++q, dst += len) {
                /* dst[j] = src[j * sw + q - pad_left], zero outside */
                const ptrdiff_t shift = q - g->pad_left;
                ptrdiff_t lo, hi;
                if (q < FC_PHASES_CACHED) {
                    lo = lo_q[q];
                    hi = hi_q[q];
                } else {
                    fc_phase_columns(g, q, &lo, &hi);
                }
#if FC_VL == 16
                if (sw == 1 && len <= 2 * FC_VL) {
                    /* a short row's inputs at [lo, hi), zeros around them,
                     * a vector at a time under masks (three small library
                     * calls per row cost a tenth of a 14x14 layer; longer
                     * rows copied so were no faster) */
                    for (ptrdiff_t j = 0; j < len; j += FC_VL) {
                        const ptrdiff_t a = lo > j ? lo : j;
                        const ptrdiff_t b = hi < j + FC_VL ? hi : j + FC_VL;
                        __mmask16 in = 0;
                        if (b > a)
                            in = (__mmask16)(((1u << (b - a)) - 1u)
                                             << (a - j));
                        const __m512 v = _mm512_maskz_loadu_ps(
                            in, src + j + shift);
                        const int n = len - j < FC_VL ? (int)(len - j)
                                                      : FC_VL;
                        fc_store(dst + j, (fc_vf)v, n);
                    }
                    continue;
                }
#endif
                fc_zero(dst, lo);
                if (sw == 1) {
                    memcpy(dst + lo, src + lo + shift,
                           (size_t)(hi - lo) * sizeof(float));
                } else {
                    ptrdiff_t j = lo;
#if FC_HAVE_SHUFFLE && FC_VL == 16
                    /* stride 2: the even lanes of two vectors, loaded
                     * under masks that stop at the row's last input */
                    for (; sw == 2 && j < hi; j += FC_VL) {
                        const int n = hi - j < FC_VL ? (int)(hi - j) : FC_VL;
                        const int inputs = 2 * n - 1;
                        const float *pair = src + 2 * j + shift;
                        const int first = inputs < FC_VL ? inputs : FC_VL;
                        fc_vf even = __builtin_shuffle(
                            fc_load_lanes(pair, first),
                            fc_load_lanes(pair + FC_VL, inputs - first),
                            FC_EVEN);
                        fc_store(dst + j, even, n);
                    }
#endif
                    for (; j < hi; ++j)
                        dst[j] = src[j * sw + shift];
                }
                fc_zero(dst + hi, len - hi);
            }
        }
    }
}

/* Where fc_direct_item writes the phases of a strided input gradient:
 * output (i, j) of chunk k, channel c of its FC_KB, at out + origin[k] +
 * i * row_pitch + j * spread + c * channel_plane, for i < rows[k] and
 * j < columns[k] (the phase's own plane; the call's planes are the
 * largest phase's). spread: the stride along the rows, 1 or 2; add: added
 * to what out holds. */
typedef struct {
    const ptrdiff_t *origin, *rows, *columns;
    ptrdiff_t row_pitch, channel_plane;
    int spread, add;
} fc_phase_out;

/* Output rows [oh0, oh0 + rows) (fewer at the bottom) of one image and
 * group (pointwise: vectors [oh0, oh0 + rows) of the flattened plane),
 * filter chunks [first_chunk, last_chunk):
 * image (Cg, H, W), out (Kg, OH, OW), weights (chunks, taps, FC_KB), bias
 * (Kg) or NULL. band: this thread's scratch (unused when pointwise).
 *
 * With chunk_taps (not NULL) each chunk has taps of its own, a subset of
 * the kernel's (R, S) window for every channel: chunk k applies the taps
 * [chunk_taps[k], chunk_taps[k + 1]) of tap_offsets and of weights
 * ([tap][FC_KB] rows, chunk after chunk), chunk_per_channel[k] of them per
 * channel, channel-major, in blocks of block_channels channels. The
 * phases of a strided layer's input gradient, which read the same output
 * gradients through different taps, then run as one call on one band.
 *
 * With `phases` (not NULL; with chunk_taps) each chunk's outputs are one
 * phase of a strided input gradient, written into that gradient in place
 * (out is its image: no planes of the call's own, no interleaving pass):
 * fc_phase_out has where. */
static void fc_direct_item(const fc_direct_geometry *g, const float *image,
                           const float *weights, const float *bias,
                           const ptrdiff_t *tap_offsets, ptrdiff_t oh0,
                           ptrdiff_t first_chunk, ptrdiff_t last_chunk,
                           float *out, float *band,
                           const ptrdiff_t *chunk_taps,
                           const ptrdiff_t *chunk_per_channel,
                           ptrdiff_t block_channels,
                           const fc_phase_out *phases)
{
#if FC_DIRECT_AVAILABLE
    const ptrdiff_t plane = g->out_height * g->out_width;
    ptrdiff_t ow_vectors, vectors;
    if (g->pointwise) {
        ow_vectors = 1;
        vectors = (plane + FC_VL - 1) / FC_VL - oh0;
    } else {
        ow_vectors = (g->out_width + FC_VL - 1) / FC_VL;
        vectors = (g->out_height - oh0) * ow_vectors;
    }
    if (vectors > g->rows * ow_vectors) vectors = g->rows * ow_vectors;
    if (!g->pointwise)
        fc_fill_band(g, image, oh0, band);
    const ptrdiff_t blocks = chunk_taps
        ? (g->channels + block_channels - 1) / block_channels
        : (g->taps + g->block_taps - 1) / g->block_taps;
    for (ptrdiff_t block = 0; block < blocks; ++block) {
        const ptrdiff_t t0 = block * g->block_taps;
        const ptrdiff_t tn = g->taps - t0 < g->block_taps ? g->taps - t0
                                                          : g->block_taps;
        const ptrdiff_t c0 = block * block_channels;
        const ptrdiff_t cn = g->channels - c0 < block_channels
                             ? g->channels - c0 : block_channels;
        for (ptrdiff_t u = 0; u < vectors; u += FC_VMAX) {
            const int V = vectors - u < FC_VMAX ? (int)(vectors - u) : FC_VMAX;
            const float *base[FC_VMAX];
            float *dst[FC_VMAX];
            int lanes[FC_VMAX];
            for (int v = 0; v < V && g->pointwise; ++v) {
                ptrdiff_t pixel = (oh0 + u + v) * FC_VL;
                lanes[v] = FC_VL;
                if (pixel > plane - FC_VL) {
                    /* shifted back to end at the plane's end; it writes
                     * only the lanes the vector before it does not */
                    lanes[v] = (int)(pixel - (plane - FC_VL));
                    lanes[v] = lanes[v] ? -lanes[v] : FC_VL;
                    pixel = plane - FC_VL;
                }
                base[v] = image + pixel;
                dst[v] = out + pixel;
            }
            for (int v = 0; v < V && !g->pointwise; ++v) {
                const ptrdiff_t i = (u + v) / ow_vectors;
                ptrdiff_t ow = (u + v) % ow_vectors * FC_VL;
                lanes[v] = g->out_width - ow < FC_VL ? (int)(g->out_width - ow)
                                                     : FC_VL;
                if (lanes[v] < FC_VL && g->out_width >= FC_VL && !phases) {
                    /* a row's last, partial vector shifted back to end
                     * where the row does: a whole vector stored (the lanes
                     * it shares with the vector before it hold the same
                     * sums), not a masked one: with AVX2 (vmaskmovps) on
                     * Zen 3, N64-C1-28x28-K32 took 0.54 ms masked, 0.45
                     * shifted. Summing onto earlier channel blocks, only
                     * the lanes the vector before it does not store
                     * (lanes -s: all but the first s). */
                    lanes[v] = block > 0 ? -(FC_VL - lanes[v]) : FC_VL;
                    ow = g->out_width - FC_VL;
                }
                base[v] = band + i * g->stride_h * g->stride_w * g->row_len
                          + ow;
                dst[v] = out + (oh0 + i) * g->out_width + ow;
            }
            /* the tile's inputs stay in L1 while every chunk of filters
             * is applied to them */
            for (ptrdiff_t chunk = first_chunk;
                 chunk < last_chunk && chunk < g->chunks; ++chunk) {
                const float *w;
                const ptrdiff_t *offsets;
                ptrdiff_t taps;
                if (chunk_taps) {
                    const ptrdiff_t first = chunk_taps[chunk]
                                            + c0 * chunk_per_channel[chunk];
                    w = weights + first * FC_KB;
                    offsets = tap_offsets + first;
                    taps = cn * chunk_per_channel[chunk];
                } else {
                    w = weights + (chunk * g->taps + t0) * FC_KB;
                    offsets = tap_offsets + t0;
                    taps = tn;
                }
                const ptrdiff_t k0 = chunk * FC_KB;
                const ptrdiff_t kn = g->filters - k0 < FC_KB ? g->filters - k0
                                                             : FC_KB;
                const float *b = bias && block == 0 ? bias + k0 : NULL;
                float *d[FC_VMAX];
                int *l = lanes, phase_lanes[FC_VMAX];
                ptrdiff_t pitch = plane;
                int accumulate = block > 0, spread = 1;
                if (phases) {
                    for (int v = 0; v < V; ++v) {
                        const ptrdiff_t i = oh0 + (u + v) / ow_vectors;
                        const ptrdiff_t ow = (u + v) % ow_vectors * FC_VL;
                        const ptrdiff_t left = phases->columns[chunk] - ow;
                        d[v] = out + phases->origin[chunk]
                               + i * phases->row_pitch + ow * phases->spread;
                        phase_lanes[v] = i >= phases->rows[chunk] || left <= 0
                                         ? 0 : left < FC_VL ? (int)left
                                                            : FC_VL;
                    }
                    l = phase_lanes;
                    pitch = phases->channel_plane;
                    accumulate = accumulate || phases->add;
                    spread = phases->spread;
                } else {
                    for (int v = 0; v < V; ++v)
                        d[v] = dst[v] + k0 * plane;
                }
                /* the activation once the last channel block is summed */
                const int clamp = g->clamp && block == blocks - 1;
                if (V == 3)
                    fc_tile3(base, offsets, taps, w, d, l, pitch, kn, b,
                             accumulate, clamp, g->lo, g->hi, spread);
                else if (V == 2)
                    fc_tile2(base, offsets, taps, w, d, l, pitch, kn, b,
                             accumulate, clamp, g->lo, g->hi, spread);
                else
                    fc_tile1(base, offsets, taps, w, d, l, pitch, kn, b,
                             accumulate, clamp, g->lo, g->hi, spread);
            }
        }
    }
#else
    (void)g; (void)image; (void)weights; (void)bias; (void)tap_offsets;
    (void)oh0; (void)first_chunk; (void)last_chunk; (void)out; (void)band;
    (void)chunk_taps; (void)chunk_per_channel; (void)block_channels;
    (void)phases;
#endif
}

/* ------------------------------------------- channel-vectorised forward
 *
 * The same convolution with the output channels in the vector lanes: a tile
 * is FC_CP pixels x FC_CV vectors of output channels (any pixels of the
 * item, so that narrow rows and strides waste no lanes), and per tap FC_CV
 * vectors of weights meet FC_CP inputs broadcast from the band. The band
 * here has one phase (stride_w = 1 in its geometry): pixel (i, ow) reads
 * band + i * sh * row_len + ow * sw + tap offset. The weights are packed
 * [chunk][tap][FC_CV * FC_VL]. Tiles write their sums pixel-major into
 * `sums` (the item's pixels x one chunk's channels, accumulated over channel
 * blocks); the chunk is then transposed 16 x 16 into the output planes,
 * where an item's pixels are contiguous (whole rows), with the bias.
 */
#if FC_DIRECT_AVAILABLE && FC_HAVE_SHUFFLE && FC_VL == 16
#define FC_CHANNEL_VECTORS_AVAILABLE 1

static inline __attribute__((always_inline)) void
fc_cv_tile(const int CV, const int CP, const float *const *base,
           const ptrdiff_t *off, ptrdiff_t taps, const float *w,
           float *sums, int accumulate)
{
    /* the loops unrolled by pragma: otherwise GCC zeroes the array with a
     * memset and spills the sums to the stack before storing them */
    fc_vf a[24];
#pragma GCC unroll 24
    for (int i = 0; i < CV * CP; ++i)
        a[i] = (fc_vf){0};
    for (ptrdiff_t t = 0; t < taps; ++t) {
        const ptrdiff_t o = off[t];
        fc_vf wv[4];
        for (int v = 0; v < CV; ++v)
            wv[v] = fc_load(w + (t * CV + v) * FC_VL);
        for (int p = 0; p < CP; ++p) {
            const float xp = base[p][o];
            for (int v = 0; v < CV; ++v)
                a[p * CV + v] += wv[v] * xp;
        }
    }
#pragma GCC unroll 24
    for (int p = 0; p < CP; ++p)
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
            float *d = sums + (p * CV + v) * FC_VL;
            fc_vf sum = accumulate ? fc_load(d) + a[p * CV + v]
                                   : a[p * CV + v];
            memcpy(d, &sum, sizeof sum);
        }
}

#define FC_CV_ARGS const float *const *b, const ptrdiff_t *o, ptrdiff_t t, \
    const float *w, float *s, int acc
/* CV vectors x 24 / CV pixels, and the tails of fewer pixels */
#define FC_CV_DEFINE(CV, CP) \
    static void fc_cv_##CV##_##CP(FC_CV_ARGS) \
    { fc_cv_tile(CV, CP, b, o, t, w, s, acc); }
FC_CV_DEFINE(4, 6) FC_CV_DEFINE(4, 5) FC_CV_DEFINE(4, 4) FC_CV_DEFINE(4, 3)
FC_CV_DEFINE(4, 2) FC_CV_DEFINE(4, 1)
FC_CV_DEFINE(2, 12) FC_CV_DEFINE(2, 8) FC_CV_DEFINE(2, 4) FC_CV_DEFINE(2, 2)
FC_CV_DEFINE(2, 1)
FC_CV_DEFINE(1, 24) FC_CV_DEFINE(1, 16) FC_CV_DEFINE(1, 8) FC_CV_DEFINE(1, 4)
FC_CV_DEFINE(1, 2) FC_CV_DEFINE(1, 1)

typedef void (*fc_cv_fn)(FC_CV_ARGS);

/* The largest tile of CV vectors with at most `pixels` pixels. */
static inline fc_cv_fn fc_cv_pick(int cv, ptrdiff_t pixels, int *taken)
{
    static const int counts4[] = {6, 5, 4, 3, 2, 1};
    static const fc_cv_fn fns4[] = {fc_cv_4_6, fc_cv_4_5, fc_cv_4_4,
                                    fc_cv_4_3, fc_cv_4_2, fc_cv_4_1};
    static const int counts2[] = {12, 8, 4, 2, 1};
    static const fc_cv_fn fns2[] = {fc_cv_2_12, fc_cv_2_8, fc_cv_2_4,
                                    fc_cv_2_2, fc_cv_2_1};
    static const int counts1[] = {24, 16, 8, 4, 2, 1};
    static const fc_cv_fn fns1[] = {fc_cv_1_24, fc_cv_1_16, fc_cv_1_8,
                                    fc_cv_1_4, fc_cv_1_2, fc_cv_1_1};
    const int *counts = cv == 4 ? counts4 : cv == 2 ? counts2 : counts1;
    const fc_cv_fn *fns = cv == 4 ? fns4 : cv == 2 ? fns2 : fns1;
    int i = 0;
    while (counts[i] > pixels)
        ++i;
    *taken = counts[i];
    return fns[i];
}
#else
#define FC_CHANNEL_VECTORS_AVAILABLE 0
#endif

/* One item of the channel-vectorised forward: output rows [oh0, oh0 +
 * rows) of one image and group, chunks [first_chunk, last_chunk) of its
 * filters (a small plane with many filters is cut by chunks, so that each
 * weight is read once per call rather than once per row). weights:
 * (chunks, taps, cv * FC_VL);
 * sums: this thread's (rows * OW, cv * FC_VL) scratch. */
static void fc_cv_item(const fc_direct_geometry *g, const float *image,
                       const float *weights, const float *bias,
                       const ptrdiff_t *tap_offsets, int cv, ptrdiff_t oh0,
                       ptrdiff_t first_chunk, ptrdiff_t last_chunk,
                       float *out, float *band, float *sums)
{
#if FC_CHANNEL_VECTORS_AVAILABLE
    ptrdiff_t rows = g->out_height - oh0;
    if (rows > g->rows) rows = g->rows;
    const ptrdiff_t width = g->out_width, plane = g->out_height * width;
    const ptrdiff_t pixels = rows * width, cw = cv * FC_VL;
    const ptrdiff_t chunks = (g->filters + cw - 1) / cw;
    if (last_chunk > chunks) last_chunk = chunks;
    const ptrdiff_t pitch = g->stride_h * g->row_len;
    fc_direct_geometry one_phase = *g;       /* the band keeps whole rows */
    one_phase.stride_w = 1;
    fc_fill_band(&one_phase, image, oh0, band);
    for (ptrdiff_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
        const float *w = weights + chunk * g->taps * cw;
        for (ptrdiff_t t0 = 0; t0 < g->taps; t0 += g->block_taps) {
            const ptrdiff_t tn = g->taps - t0 < g->block_taps
                                 ? g->taps - t0 : g->block_taps;
            for (ptrdiff_t f = 0; f < pixels;) {
                int taken;
                const fc_cv_fn tile = fc_cv_pick(cv, pixels - f, &taken);
                const float *base[24];
                /* pixel f + p is (i, ow): stepped, not divided (a
                 * division per pixel cost a tenth of the item) */
                ptrdiff_t i = f / width, ow = f % width;
                for (int p = 0; p < taken; ++p) {
                    base[p] = band + i * pitch + ow * g->stride_w;
                    if (++ow == width) {
                        ow = 0;
                        ++i;
                    }
                }
                tile(base, tap_offsets + t0, tn, w + t0 * cw, sums + f * cw,
                     t0 > 0);
                f += taken;
            }
        }
        /* sums (pixel, channel) -> out[k][oh0 * width + pixel] */
        for (ptrdiff_t k0 = 0; k0 < cw; k0 += FC_VL) {
            const ptrdiff_t kn = g->filters - chunk * cw - k0;
            if (kn <= 0)
                break;
            for (ptrdiff_t p0 = 0; p0 < pixels; p0 += FC_VL) {
                const int n = pixels - p0 < FC_VL ? (int)(pixels - p0) : FC_VL;
                fc_vf r[FC_VL];
                for (int j = 0; j < FC_VL; ++j)
                    r[j] = j < n ? fc_load(sums + (p0 + j) * cw + k0)
                                 : (fc_vf){0};
                fc_transpose(r);
                for (int k = 0; k < FC_VL && k < kn; ++k) {
                    const ptrdiff_t channel = chunk * cw + k0 + k;
                    const float b = bias ? bias[channel] : 0.0f;
                    fc_store(out + channel * plane + oh0 * width + p0,
                             fc_clamp(r[k] + b, g->clamp, g->lo, g->hi), n);
                }
            }
        }
    }
#else
    (void)g; (void)image; (void)weights; (void)bias; (void)tap_offsets;
    (void)cv; (void)oh0; (void)first_chunk; (void)last_chunk; (void)out;
    (void)band; (void)sums;
#endif
}

/* ------------------------------------------------------ weight gradient
 *
 * grad_weight[k, t] = sum over images and output pixels of
 * grad_output[k, pixel] * input of tap t at that pixel. The filters are the
 * vector lanes here: each work item first copies its pixels' output
 * gradients into gt ([pixel][padded filters], zero-padded to whole chunks),
 * (transposed 16 x 16 at a time), then for a chunk of FC_WV vectors of filters and a group of FC_WTAPS taps
 * holds FC_WV * FC_WTAPS sums in registers over all the item's pixels: per
 * pixel, FC_WV vector loads of gt and FC_WTAPS inputs broadcast from the
 * band feed FC_WV * FC_WTAPS multiply-adds, and no sum runs across lanes.
 * The sums are added into the item's run's partial (taps x padded filters).
 * Tap groups are padded to whole groups by the caller (the extra taps read
 * tap 0's inputs; their sums land in padding rows of the partial).
 */
#if FC_DIRECT_AVAILABLE
#define FC_WTAPS_MAX 24

/* A weight-gradient tile's WV x WT sums: zeroed, and at the end added into
 * the partial (row j of taps, partial_ld floats apart). The tap loops are
 * unrolled by pragma: GCC's own limit (16 iterations) left the 24 sums of
 * WV = 1 in memory, a store and a reload per multiply-add (5x slower). */
static inline __attribute__((always_inline)) void
fc_wgrad_zero(const int WV, const int WT, fc_vf a[4][FC_WTAPS_MAX])
{
    for (int v = 0; v < WV; ++v)
#pragma GCC unroll 24
        for (int j = 0; j < WT; ++j)
            a[v][j] = (fc_vf){0};
}

static inline __attribute__((always_inline)) void
fc_wgrad_add(const int WV, const int WT, fc_vf a[4][FC_WTAPS_MAX],
             float *partial, ptrdiff_t partial_ld)
{
#pragma GCC unroll 24
    for (int j = 0; j < WT; ++j)
        for (int v = 0; v < WV; ++v) {
            float *d = partial + j * partial_ld + v * FC_VL;
            fc_vf sum = fc_load(d) + a[v][j];
            memcpy(d, &sum, sizeof sum);
        }
}

static inline __attribute__((always_inline)) void
fc_wgrad_tile(const int WV, const int WT, const float *gt, ptrdiff_t gt_ld,
              const float *base, ptrdiff_t rows, ptrdiff_t width,
              ptrdiff_t pitch, const ptrdiff_t *off, float *partial,
              ptrdiff_t partial_ld)
{
    fc_vf a[4][FC_WTAPS_MAX];
    fc_wgrad_zero(WV, WT, a);
    ptrdiff_t o[FC_WTAPS_MAX];
#pragma GCC unroll 24
    for (int j = 0; j < WT; ++j)
        o[j] = off[j];
    for (ptrdiff_t i = 0; i < rows; ++i) {
        const float *row = base + i * pitch;
        const float *grad = gt + i * width * gt_ld;
        for (ptrdiff_t p = 0; p < width; ++p, grad += gt_ld) {
            fc_vf gv[4];
            for (int v = 0; v < WV; ++v)
                gv[v] = fc_load(grad + v * FC_VL);
#pragma GCC unroll 24
            for (int j = 0; j < WT; ++j) {
                const float xj = row[p + o[j]];
                for (int v = 0; v < WV; ++v)
                    a[v][j] += gv[v] * xj;
            }
        }
    }
    fc_wgrad_add(WV, WT, a, partial, partial_ld);
}

/* The same sums for 3-wide filters at column stride 1 (no column
 * dilation), sliding along each row: the taps (c, r, 0..2) of one input row
 * read the same band element x[u] at output pixels u, u - 1 and u - 2, so
 * one broadcast of x[u] feeds three multiply-adds, with the output
 * gradients of those three pixels held in registers (zero outside the
 * row). Per band column: WV vector loads and WT / 3 broadcasts for WV * WT
 * multiply-adds, where the tile above broadcasts once per multiply-add
 * (for WV = 1 a load per multiply-add: the load ports, not the FMAs, set
 * its pace). The sums are added in a different order than the tile
 * above, but in one fixed order. The tap group's taps are (c, r, s) with
 * s = t % 3: off[3 m] is where row pair m's s = 0 tap lies. */
static inline __attribute__((always_inline)) void
fc_wgrad_slide3(const int WV, const int WT, const float *gt, ptrdiff_t gt_ld,
                const float *base, ptrdiff_t rows, ptrdiff_t width,
                ptrdiff_t pitch, const ptrdiff_t *off, float *partial,
                ptrdiff_t partial_ld)
{
    enum { MAX_PAIRS = FC_WTAPS_MAX / 3 };
    const int pairs = WT / 3;
    fc_vf a[4][FC_WTAPS_MAX];   /* a[v][3 m + s] */
    fc_wgrad_zero(WV, WT, a);
    ptrdiff_t o[MAX_PAIRS];
#pragma GCC unroll 8
    for (int m = 0; m < pairs; ++m)
        o[m] = off[3 * m];
    for (ptrdiff_t i = 0; i < rows; ++i) {
        const float *row = base + i * pitch;
        const float *grad = gt + i * width * gt_ld;
        /* g[v][s]: the gradients of pixel u - s */
        fc_vf g0[4], g1[4], g2[4];
        for (int v = 0; v < WV; ++v)
            g1[v] = g2[v] = (fc_vf){0};
        for (ptrdiff_t u = 0; u < width + 2; ++u) {
            for (int v = 0; v < WV; ++v)
                g0[v] = u < width ? fc_load(grad + u * gt_ld + v * FC_VL)
                                  : (fc_vf){0};
#pragma GCC unroll 8
            for (int m = 0; m < pairs; ++m) {
                const float xm = row[u + o[m]];
                for (int v = 0; v < WV; ++v) {
                    a[v][3 * m] += g0[v] * xm;
                    a[v][3 * m + 1] += g1[v] * xm;
                    a[v][3 * m + 2] += g2[v] * xm;
                }
            }
            for (int v = 0; v < WV; ++v) {
                g2[v] = g1[v];
                g1[v] = g0[v];
            }
        }
    }
    fc_wgrad_add(WV, WT, a, partial, partial_ld);
}

#define FC_WGRAD_ARGS const float *gt, ptrdiff_t gt_ld, const float *base, \
    ptrdiff_t rows, ptrdiff_t width, ptrdiff_t pitch, const ptrdiff_t *off, \
    float *partial, ptrdiff_t partial_ld
#if FC_VL == 16
/* 4 x 6, 2 x 12 and 1 x 24 sums (of 32 registers) */
#define FC_WTAPS(WV) ((WV) == 4 ? 6 : (WV) == 2 ? 12 : 24)
#else
#define FC_WTAPS(WV) ((WV) == 4 ? 3 : (WV) == 2 ? 6 : 12)
#endif
static void fc_wgrad4(FC_WGRAD_ARGS)
{ fc_wgrad_tile(4, FC_WTAPS(4), gt, gt_ld, base, rows, width, pitch, off, partial, partial_ld); }
static void fc_wgrad2(FC_WGRAD_ARGS)
{ fc_wgrad_tile(2, FC_WTAPS(2), gt, gt_ld, base, rows, width, pitch, off, partial, partial_ld); }
static void fc_wgrad1(FC_WGRAD_ARGS)
{ fc_wgrad_tile(1, FC_WTAPS(1), gt, gt_ld, base, rows, width, pitch, off, partial, partial_ld); }
#if FC_VL == 16
/* sliding, one vector of filters: 8 x 3 sums and 3 gradients (with two
 * vectors, 4 x 3 x 2 sums and 6 gradients, it measured slower than the
 * plain tile: cython_cpu._weight_grad_slides) */
#define FC_WGRAD_SLIDE_AVAILABLE 1
static void fc_wgrad_slide1(FC_WGRAD_ARGS)
{ fc_wgrad_slide3(1, FC_WTAPS(1), gt, gt_ld, base, rows, width, pitch, off, partial, partial_ld); }
#endif
#endif
#ifndef FC_WGRAD_SLIDE_AVAILABLE
#define FC_WGRAD_SLIDE_AVAILABLE 0
#endif

#if FC_DIRECT_AVAILABLE
/* The inputs of a weight-gradient work item starting at output row oh0:
 * its rows (fewer at the bottom), and where tap 0 of its first pixel lies
 * (*base) with the distance between its output rows' inputs (*pitch): the
 * image itself in the pointwise mode, else the band, filled here. */
static ptrdiff_t fc_wgrad_inputs(const fc_direct_geometry *g,
                                 const float *image, ptrdiff_t oh0,
                                 float *band, const float **base,
                                 ptrdiff_t *pitch)
{
    ptrdiff_t rows = g->out_height - oh0;
    if (rows > g->rows) rows = g->rows;
    if (g->pointwise) {
        *base = image + oh0 * g->out_width;
        *pitch = g->out_width;
    } else {
        fc_fill_band(g, image, oh0, band);
        *base = band;
        *pitch = g->stride_h * g->stride_w * g->row_len;
    }
    return rows;
}
#endif

/* One work item of the weight gradient: output rows [oh0, oh0 + rows) of
 * one image and group. grad: that image's and group's (Kg, OH, OW) output
 * gradients; partial: (padded taps, padded filters); wv: filter vectors per
 * chunk (1, 2 or 4: padded filters are a multiple of wv * FC_VL); gt: this
 * thread's scratch for the item's transposed output gradients. */
static void fc_wgrad_item(const fc_direct_geometry *g, const float *image,
                          const float *grad, const ptrdiff_t *tap_offsets,
                          ptrdiff_t padded_taps, ptrdiff_t padded_filters,
                          int wv, int slide, ptrdiff_t oh0, float *band,
                          float *gt, float *partial)
{
#if FC_DIRECT_AVAILABLE
    const float *base;
    ptrdiff_t pitch;
    const ptrdiff_t rows = fc_wgrad_inputs(g, image, oh0, band, &base, &pitch);
    const ptrdiff_t width = g->out_width, plane = g->out_height * width;
    /* gt[chunk][pixel][k]: grad[chunk * cw + k][oh0 * width + pixel], zeros
     * past the filters; each chunk's block is contiguous */
    const ptrdiff_t pixels = rows * width, cw = wv * FC_VL;
    const float *first = grad + oh0 * width;
    for (ptrdiff_t k0 = 0; k0 < padded_filters; k0 += FC_VL) {
        float *block = gt + k0 / cw * pixels * cw + k0 % cw;
#if FC_HAVE_SHUFFLE && FC_VL == 16
        for (ptrdiff_t p0 = 0; p0 < pixels; p0 += FC_VL) {
            const int n = pixels - p0 < FC_VL ? (int)(pixels - p0) : FC_VL;
            fc_vf r[FC_VL];
            for (int i = 0; i < FC_VL; ++i)
                r[i] = k0 + i < g->filters
                       ? fc_load_lanes(first + (k0 + i) * plane + p0, n)
                       : (fc_vf){0};
            fc_transpose(r);
            for (int j = 0; j < n; ++j)
                memcpy(block + (p0 + j) * cw, &r[j], sizeof r[j]);
        }
#else
        for (ptrdiff_t k = 0; k < FC_VL; ++k)
            for (ptrdiff_t p = 0; p < pixels; ++p)
                block[p * cw + k] = k0 + k < g->filters
                                    ? first[(k0 + k) * plane + p] : 0.0f;
#endif
    }
    const ptrdiff_t taps_per = wv == 4 ? FC_WTAPS(4) : wv == 2 ? FC_WTAPS(2)
                                                              : FC_WTAPS(1);
    for (ptrdiff_t k0 = 0; k0 < padded_filters; k0 += cw) {
        const float *chunk = gt + k0 / cw * pixels * cw;
        for (ptrdiff_t t0 = 0; t0 < padded_taps; t0 += taps_per) {
            float *part = partial + t0 * padded_filters + k0;
#if FC_WGRAD_SLIDE_AVAILABLE
            if (slide && wv == 1) {
                fc_wgrad_slide1(chunk, cw, base, rows, width, pitch,
                                tap_offsets + t0, part, padded_filters);
                continue;
            }
#else
            (void)slide;
#endif
            if (wv == 4)
                fc_wgrad4(chunk, cw, base, rows, width, pitch,
                          tap_offsets + t0, part, padded_filters);
            else if (wv == 2)
                fc_wgrad2(chunk, cw, base, rows, width, pitch,
                          tap_offsets + t0, part, padded_filters);
            else
                fc_wgrad1(chunk, cw, base, rows, width, pitch,
                          tap_offsets + t0, part, padded_filters);
        }
    }
#else
    (void)g; (void)image; (void)grad; (void)tap_offsets; (void)padded_taps;
    (void)padded_filters; (void)wv; (void)slide; (void)oh0; (void)band;
    (void)gt; (void)partial;
#endif
}

/* ------------------------------------- weight gradient, pixels in lanes
 *
 * For few taps (Cg * R * S) the transposes above cost as much as the
 * multiply-adds. Here the lanes are FC_VL output pixels of one row, read
 * from grad_output as it lies: a tile holds FC_PK filters x FC_PT taps sums
 * (one vector each); per vector of pixels it loads FC_PK output-gradient
 * vectors and FC_PT input vectors (from the band, shifted by the tap) for
 * FC_PK * FC_PT multiply-adds. Lanes past a row's end are masked to zero in
 * both. The tile adds its vectors into the run's lane partial (padded taps,
 * padded filters, FC_VL), whose lanes the caller sums in order at the end.
 * Filters past Kg read the zero row `zeros` (padded filters are a multiple
 * of FC_PK); padded taps (a multiple of FC_PT) read tap 0's inputs and
 * their sums land in padding rows.
 */
#if FC_DIRECT_AVAILABLE
#if FC_VL == 16
#define FC_PK 8   /* 24 sums, 3 inputs, 1 gradient: 28 of 32 registers */
#else
#define FC_PK 4   /* 12 sums, 3 inputs, 1 gradient: 16 registers */
#endif
#define FC_PT 3

static void fc_wgrad_px_tile(const float *const *grad_rows,
                             const float *base, ptrdiff_t rows,
                             ptrdiff_t width, ptrdiff_t pitch,
                             const ptrdiff_t *off, float *lane_partial,
                             ptrdiff_t padded_filters)
{
    fc_vf a[FC_PK][FC_PT];
#pragma GCC unroll 8
    for (int k = 0; k < FC_PK; ++k)
#pragma GCC unroll 3
        for (int t = 0; t < FC_PT; ++t)
            a[k][t] = (fc_vf){0};
    for (ptrdiff_t i = 0; i < rows; ++i) {
        const float *row = base + i * pitch;
        const ptrdiff_t gi = i * width;
        for (ptrdiff_t p0 = 0; p0 < width; p0 += FC_VL) {
            const int n = width - p0 < FC_VL ? (int)(width - p0) : FC_VL;
            fc_vf xv[FC_PT];
#pragma GCC unroll 3
            for (int t = 0; t < FC_PT; ++t)
                xv[t] = n == FC_VL ? fc_load(row + p0 + off[t])
                                   : fc_load_lanes(row + p0 + off[t], n);
#pragma GCC unroll 8
            for (int k = 0; k < FC_PK; ++k) {
                const float *gp = grad_rows[k] + gi + p0;
                const fc_vf gv = n == FC_VL ? fc_load(gp)
                                            : fc_load_lanes(gp, n);
#pragma GCC unroll 3
                for (int t = 0; t < FC_PT; ++t)
                    a[k][t] += gv * xv[t];
            }
        }
    }
#pragma GCC unroll 3
    for (int t = 0; t < FC_PT; ++t)
#pragma GCC unroll 8
        for (int k = 0; k < FC_PK; ++k) {
            float *d = lane_partial + (t * padded_filters + k) * FC_VL;
            fc_vf sum = fc_load(d) + a[k][t];
            memcpy(d, &sum, sizeof sum);
        }
}
#else
#define FC_PK 1
#define FC_PT 1
#endif

/* One work item of the pixel-lane weight gradient: output rows [oh0, oh0 +
 * rows) of one image and group, as fc_wgrad_item; zeros: this thread's
 * scratch of rows * out_width floats (zeroed here), the rows of padding
 * filters; lane_partial: (padded taps, padded filters, FC_VL). */
static void fc_wgrad_px_item(const fc_direct_geometry *g, const float *image,
                             const float *grad, const ptrdiff_t *tap_offsets,
                             ptrdiff_t padded_taps, ptrdiff_t padded_filters,
                             ptrdiff_t oh0, float *band, float *zeros,
                             float *lane_partial)
{
#if FC_DIRECT_AVAILABLE
    const float *base;
    ptrdiff_t pitch;
    const ptrdiff_t rows = fc_wgrad_inputs(g, image, oh0, band, &base, &pitch);
    const ptrdiff_t width = g->out_width, plane = g->out_height * width;
    memset(zeros, 0, (size_t)(rows * width) * sizeof(float));
    for (ptrdiff_t k0 = 0; k0 < padded_filters; k0 += FC_PK) {
        const float *grad_rows[FC_PK];
        for (int k = 0; k < FC_PK; ++k)
            grad_rows[k] = k0 + k < g->filters
                           ? grad + (k0 + k) * plane + oh0 * width : zeros;
        for (ptrdiff_t t0 = 0; t0 < padded_taps; t0 += FC_PT)
            fc_wgrad_px_tile(grad_rows, base, rows, width, pitch,
                             tap_offsets + t0,
                             lane_partial + (t0 * padded_filters + k0)
                             * FC_VL, padded_filters);
    }
#else
    (void)g; (void)image; (void)grad; (void)tap_offsets; (void)padded_taps;
    (void)padded_filters; (void)oh0; (void)band; (void)zeros;
    (void)lane_partial;
#endif
}

#endif
