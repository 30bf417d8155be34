/* Max pooling rows with AVX-512, float32 (included by pool.pyx).
 *
 * One output row of a 2x2 window at stride 2, 16 windows at a time: the
 * two input rows are loaded as whole vectors (masked at the row's end),
 * split into their even and odd columns by two permutes each, and the
 * four taps compared in the reference's order (top-left, top-right,
 * bottom-left, bottom-right; a tap replaces the best so far when it is
 * larger or a NaN, as _beats in pool.pyx). The winning tap's offset stays
 * an int32 lane until the int64 indices are formed, two vectors of 8.
 *
 * The loop that GCC vectorises from pool.pyx's scalar rows needs 16
 * windows per step and ran the 14- and 7-window rows of a 28x28 plane
 * scalar; masks let every width run here. Where AVX-512 (F and VL) is not
 * available FC_POOL_ROWS_AVAILABLE is 0 and pool.pyx's rows run.
 */

#ifndef FASTCONV_POOL_ROWS_H
#define FASTCONV_POOL_ROWS_H

#include <stddef.h>

#if defined(__GNUC__) && defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define FC_POOL_ROWS_AVAILABLE 1

/* The lanes of best that `value` replaces: larger, or a NaN. */
static inline __mmask16 fc_pool_beats(__m512 value, __m512 best)
{
    return _mm512_cmp_ps_mask(value, best, _CMP_GT_OQ)
           | _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
}

/* y_row[j], idx_row[j] for windows j < count of a 2x2, stride-2 row:
 * window j's taps are top[2j], top[2j + 1], top[2j + source_w],
 * top[2j + source_w + 1], and its top-left tap's plane position is
 * first_index + 2j (rows in_w apart in the plane). */
static void fc_max2x2s2_row_f32(const float *top, ptrdiff_t source_w,
                                ptrdiff_t count, long long first_index,
                                int in_w, float *y_row, long long *idx_row)
{
    const float *bottom = top + source_w;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16,
                                           18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i right = _mm512_set1_epi32(1);
    const __m512i below = _mm512_set1_epi32(in_w);
    const __m512i below_right = _mm512_set1_epi32(in_w + 1);
    const __m512i lane2 = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    for (ptrdiff_t j = 0; j < count; j += 16) {
        const ptrdiff_t n = count - j < 16 ? count - j : 16;
        /* 2n inputs per row: lanes [0, 2n) of the pair of vectors */
        const __mmask16 first = n >= 8 ? (__mmask16)0xFFFF
                                       : (__mmask16)((1u << (2 * n)) - 1u);
        const __mmask16 second = n <= 8 ? (__mmask16)0
                                 : n == 16 ? (__mmask16)0xFFFF
                                 : (__mmask16)((1u << (2 * n - 16)) - 1u);
        const float *t = top + 2 * j, *b = bottom + 2 * j;
        const __m512 t0 = _mm512_maskz_loadu_ps(first, t);
        const __m512 t1 = _mm512_maskz_loadu_ps(second, t + 16);
        const __m512 b0 = _mm512_maskz_loadu_ps(first, b);
        const __m512 b1 = _mm512_maskz_loadu_ps(second, b + 16);
        __m512 best = _mm512_permutex2var_ps(t0, even, t1);
        __m512i offset = _mm512_setzero_si512();
        __m512 value = _mm512_permutex2var_ps(t0, odd, t1);
        __mmask16 take = fc_pool_beats(value, best);
        best = _mm512_mask_blend_ps(take, best, value);
        offset = _mm512_mask_blend_epi32(take, offset, right);
        value = _mm512_permutex2var_ps(b0, even, b1);
        take = fc_pool_beats(value, best);
        best = _mm512_mask_blend_ps(take, best, value);
        offset = _mm512_mask_blend_epi32(take, offset, below);
        value = _mm512_permutex2var_ps(b0, odd, b1);
        take = fc_pool_beats(value, best);
        best = _mm512_mask_blend_ps(take, best, value);
        offset = _mm512_mask_blend_epi32(take, offset, below_right);
        const __mmask16 out = (__mmask16)((1u << n) - 1u);
        _mm512_mask_storeu_ps(y_row + j, out, best);
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

#else
#define FC_POOL_ROWS_AVAILABLE 0
/* never called: pool.pyx checks FC_POOL_ROWS_AVAILABLE */
static void fc_max2x2s2_row_f32(const float *top, ptrdiff_t source_w,
                                ptrdiff_t count, long long first_index,
                                int in_w, float *y_row, long long *idx_row)
{
    (void)top; (void)source_w; (void)count; (void)first_index; (void)in_w;
    (void)y_row; (void)idx_row;
}
#endif

#endif
