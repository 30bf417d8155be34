/* Max pooling rows with AVX-512 or AVX2, float32 (included by pool.pyx).
 *
 * One output row of a 2x2 or 3x3 window at stride 2, 16 windows at a
 * time: each input row is loaded as whole vectors (masked at the row's
 * end) and split into its even and odd columns (and, for 3x3, the even
 * columns two further on) by permutes, and the taps compared in the
 * reference's row-major order (a tap replaces the best so far when it is
 * larger or a NaN, as _beats in pool.pyx). The winning tap's offset stays
 * an int32 lane until the int64 indices are formed, two vectors of 8.
 *
 * The loop that GCC vectorises from pool.pyx's scalar rows needs 16
 * windows per step (17 for 3x3 at stride 2, whose last tap reads one
 * column further): it ran the 14- and 7-window rows of a 28x28 plane, and
 * the 16-window rows of a padded 32x32 plane's 3x3/2 pooling, scalar;
 * masks let every width run here. With AVX2 alone the same rows run 8
 * windows at a time; where neither is available FC_POOL_ROWS_AVAILABLE is
 * 0 and pool.pyx's rows run.
 */

#ifndef FASTCONV_POOL_ROWS_H
#define FASTCONV_POOL_ROWS_H

#include <stddef.h>

#include "vectors.h"   /* FC_AVX2_MASKS, fc_mask8 */

#if defined(__GNUC__) && defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define FC_POOL_ROWS_AVAILABLE 1

/* The lanes of best that `value` replaces: larger, or a NaN. */
static inline __mmask16 fc_pool_beats(__m512 value, __m512 best)
{
    return _mm512_cmp_ps_mask(value, best, _CMP_GT_OQ)
           | _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
}

/* Lanes [0, m) of the pair of vectors from src (zero beyond); m <= 32. */
static inline void fc_pool_load_pair(const float *src, ptrdiff_t m,
                                     __m512 *low, __m512 *high)
{
    const __mmask16 first = m >= 16 ? (__mmask16)0xFFFF
                                    : (__mmask16)((1u << m) - 1u);
    const __mmask16 second = m <= 16 ? (__mmask16)0
                             : m == 32 ? (__mmask16)0xFFFF
                             : (__mmask16)((1u << (m - 16)) - 1u);
    *low = _mm512_maskz_loadu_ps(first, src);
    *high = _mm512_maskz_loadu_ps(second, src + 16);
}

/* y_row[j], and idx_row[j] where with_indices, for windows j < count of a
 * kernel x kernel (2 or 3), stride-2 row: window j's taps are top[2j + r *
 * source_w + s] for r, s < kernel, taken in row-major order, and its
 * top-left tap's plane position is first_index + 2j (rows in_w apart in
 * the plane). */
static inline __attribute__((always_inline)) void
fc_max_s2_row(const float *top, ptrdiff_t source_w, ptrdiff_t count,
              int kernel, long long first_index, int in_w, float *y_row,
              long long *idx_row, const int with_indices)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16,
                                           18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lane2 = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    for (ptrdiff_t j = 0; j < count; j += 16) {
        const ptrdiff_t n = count - j < 16 ? count - j : 16;
        __m512 best = _mm512_setzero_ps();
        __m512i offset = _mm512_setzero_si512();
        for (int r = 0; r < kernel; ++r) {
            const float *row = top + r * source_w + 2 * j;
            /* the row's columns 2j, 2j + 1 (and 2j + 2) of windows j < n:
             * 2n floats, split into even and odd lanes; for 3x3 the 2n - 1
             * floats from two columns on (the last window's third column
             * is row[2n]; row[2n + 1] may lie past the plane) */
            __m512 low, high, columns[3];
            fc_pool_load_pair(row, 2 * n, &low, &high);
            columns[0] = _mm512_permutex2var_ps(low, even, high);
            columns[1] = _mm512_permutex2var_ps(low, odd, high);
            if (kernel == 3) {
                fc_pool_load_pair(row + 2, 2 * n - 1, &low, &high);
                columns[2] = _mm512_permutex2var_ps(low, even, high);
            }
            for (int s = 0; s < kernel; ++s) {
                if (r == 0 && s == 0) {     /* the first tap: the best */
                    best = columns[0];
                    continue;
                }
                const __mmask16 take = fc_pool_beats(columns[s], best);
                best = _mm512_mask_blend_ps(take, best, columns[s]);
                if (with_indices)
                    offset = _mm512_mask_blend_epi32(
                        take, offset, _mm512_set1_epi32(r * in_w + s));
            }
        }
        const __mmask16 out = (__mmask16)((1u << n) - 1u);
        _mm512_mask_storeu_ps(y_row + j, out, best);
        if (!with_indices)
            continue;
        const __m512i base = _mm512_add_epi64(
            _mm512_set1_epi64(first_index + 2 * j), lane2);
        const __m512i low = _mm512_add_epi64(
            base, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(offset)));
        const __m512i high = _mm512_add_epi64(
            _mm512_add_epi64(base, _mm512_set1_epi64(16)),
            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(offset, 1)));
        _mm512_mask_storeu_epi64(idx_row + j, (__mmask8)(out & 0xFF), low);
        _mm512_mask_storeu_epi64(idx_row + j + 8, (__mmask8)(out >> 8), high);
    }
}

#elif defined(FC_AVX2_MASKS)
#define FC_POOL_ROWS_AVAILABLE 1

/* The AVX2 rows: the same taps in the same order, 8 windows at a time,
 * partial vectors under vmaskmov masks (GCC's vectorised scalar rows left
 * a 28x28 plane's 14-window rows mostly scalar). */

/* The even floats of src[0, m) in *even and, where odd is not NULL, the
 * odd ones in *odd; m <= 16, zeros beyond. */
static inline void fc_pool_split8(const float *src, ptrdiff_t m,
                                  __m256 *even, __m256 *odd)
{
    const ptrdiff_t second = m > 8 ? m - 8 : 0;
    const __m256 low = m >= 8 ? _mm256_loadu_ps(src)
                              : _mm256_maskload_ps(src, fc_mask8((int)m));
    const __m256 high = second == 8
        ? _mm256_loadu_ps(src + 8)
        : _mm256_maskload_ps(src + 8, fc_mask8((int)second));
    /* per 128-bit half: low's two picks, then high's; then the halves'
     * middle 64-bit quarters swapped */
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(low, high, 0x88)), 0xD8));
    if (odd != NULL)
        *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(
            _mm256_castps_pd(_mm256_shuffle_ps(low, high, 0xDD)), 0xD8));
}

static inline __attribute__((always_inline)) void
fc_max_s2_row(const float *top, ptrdiff_t source_w, ptrdiff_t count,
              int kernel, long long first_index, int in_w, float *y_row,
              long long *idx_row, const int with_indices)
{
    for (ptrdiff_t j = 0; j < count; j += 8) {
        const ptrdiff_t n = count - j < 8 ? count - j : 8;
        __m256 best = _mm256_setzero_ps();
        __m256 offset = _mm256_setzero_ps();   /* int32 lanes */
        for (int r = 0; r < kernel; ++r) {
            const float *row = top + r * source_w + 2 * j;
            __m256 columns[3];
            fc_pool_split8(row, 2 * n, &columns[0], &columns[1]);
            if (kernel == 3)
                fc_pool_split8(row + 2, 2 * n - 1, &columns[2], NULL);
            for (int s = 0; s < kernel; ++s) {
                if (r == 0 && s == 0) {
                    best = columns[0];
                    continue;
                }
                const __m256 take = _mm256_or_ps(
                    _mm256_cmp_ps(columns[s], best, _CMP_GT_OQ),
                    _mm256_cmp_ps(columns[s], columns[s], _CMP_UNORD_Q));
                best = _mm256_blendv_ps(best, columns[s], take);
                if (with_indices)
                    offset = _mm256_blendv_ps(
                        offset,
                        _mm256_castsi256_ps(_mm256_set1_epi32(r * in_w + s)),
                        take);
            }
        }
        if (n == 8)
            _mm256_storeu_ps(y_row + j, best);
        else
            _mm256_maskstore_ps(y_row + j, fc_mask8((int)n), best);
        if (!with_indices)
            continue;
        const __m256i lanes = _mm256_castps_si256(offset);
        const __m256i base = _mm256_add_epi64(
            _mm256_set1_epi64x(first_index + 2 * j),
            _mm256_setr_epi64x(0, 2, 4, 6));
        const __m256i low = _mm256_add_epi64(
            base, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(lanes)));
        const __m256i high = _mm256_add_epi64(
            _mm256_add_epi64(base, _mm256_set1_epi64x(8)),
            _mm256_cvtepi32_epi64(_mm256_extracti128_si256(lanes, 1)));
        long long *dst = idx_row + j;
        if (n == 8) {
            _mm256_storeu_si256((__m256i *)dst, low);
            _mm256_storeu_si256((__m256i *)(dst + 4), high);
        } else {
            /* 64-bit lane i is taken where int32 lanes 2i, 2i + 1 are */
            _mm256_maskstore_epi64(dst, fc_mask8((int)(2 * n)), low);
            _mm256_maskstore_epi64(dst + 4,
                                   fc_mask8(n > 4 ? (int)(2 * (n - 4)) : 0),
                                   high);
        }
    }
}

#else
#define FC_POOL_ROWS_AVAILABLE 0
#endif

#if FC_POOL_ROWS_AVAILABLE
/* fc_max_s2_row, with idx_row NULL for the values alone (no offsets kept:
 * 1.3-1.5x faster). */
static void fc_max_s2_row_f32(const float *top, ptrdiff_t source_w,
                              ptrdiff_t count, int kernel,
                              long long first_index, int in_w, float *y_row,
                              long long *idx_row)
{
    if (idx_row != NULL)
        fc_max_s2_row(top, source_w, count, kernel, first_index, in_w,
                      y_row, idx_row, 1);
    else
        fc_max_s2_row(top, source_w, count, kernel, first_index, in_w,
                      y_row, idx_row, 0);
}
#else
/* never called: pool.pyx checks FC_POOL_ROWS_AVAILABLE */
static void fc_max_s2_row_f32(const float *top, ptrdiff_t source_w,
                              ptrdiff_t count, int kernel,
                              long long first_index, int in_w, float *y_row,
                              long long *idx_row)
{
    (void)top; (void)source_w; (void)count; (void)kernel; (void)first_index;
    (void)in_w; (void)y_row; (void)idx_row;
}
#endif

#endif
