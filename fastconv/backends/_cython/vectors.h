/* Float vectors for the register-blocked kernels (included by
 * direct_conv.h and depthwise_vectors.h): FC_VL floats per vector (16 with
 * AVX-512, else 8), GCC/clang vector extensions, and the loads, stores,
 * clamps and FC_VL x FC_VL transposes those kernels share. FC_VECTORS_AVAILABLE
 * is 0 where the compiler has no vector extensions (MSVC); the callers then
 * never select a vector path.
 */

#ifndef FASTCONV_VECTORS_H
#define FASTCONV_VECTORS_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define FC_VECTORS_AVAILABLE 1
#if defined(__AVX512F__)
#include <immintrin.h>
#define FC_VL 16          /* floats per vector */
#else
#define FC_VL 8
#if defined(__AVX2__)
#include <immintrin.h>
#define FC_AVX2_MASKS 1   /* partial vectors under vmaskmov masks */
#endif
#endif

typedef float fc_vf __attribute__((vector_size(FC_VL * sizeof(float))));

/* Hold a loaded vector in a register. A register-blocked product loads
 * each input vector once per step for FC_KB multiply-adds; in Winograd's
 * point products (winograd_gemm.h) GCC folded those loads into the
 * multiply-adds as memory operands instead, FC_KB loads of one vector:
 * with AVX2, 16 loads and 12 multiply-adds a step, and the loads, not the
 * multiply-adds, were the limit (Zen 3: the products ran 1.25x faster held
 * in registers). The empty asm makes the value a register's. */
#if defined(FC_AVX2_MASKS)
#define FC_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define FC_IN_REGISTER(v) ((void)0)
#endif

/* GCC's two-vector shuffle picks the even lanes of a stride-2 row (clang
 * spells it differently: it takes the scalar loop). */
#if defined(__GNUC__) && !defined(__clang__)
#define FC_HAVE_SHUFFLE 1
typedef int fc_vi __attribute__((vector_size(FC_VL * sizeof(int))));
#if FC_VL == 16
#define FC_EVEN ((fc_vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, \
                         28, 30})
#else
#define FC_EVEN ((fc_vi){0, 2, 4, 6, 8, 10, 12, 14})
#endif
#else
#define FC_HAVE_SHUFFLE 0
#endif

static inline fc_vf fc_load(const float *p)
{
    fc_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef int fc_vm __attribute__((vector_size(FC_VL * sizeof(int))));

/* The forward's output activation: v clamped to [lo, hi] where `clamp`
 * (ReLU: [0, inf]; ReLU6: [0, 6]); NaN stays NaN, as numpy.clip keeps it
 * (a comparison with NaN is false, so its lanes keep v). */
static inline fc_vf fc_clamp(fc_vf v, int clamp, float lo, float hi)
{
    if (!clamp)
        return v;
    const fc_vf lov = (fc_vf){0} + lo, hiv = (fc_vf){0} + hi;
    fc_vm below = v < lov;
    v = (fc_vf)(((fc_vm)lov & below) | ((fc_vm)v & ~below));
    fc_vm above = v > hiv;
    return (fc_vf)(((fc_vm)hiv & above) | ((fc_vm)v & ~above));
}

/* Lanes of a vector that a store or load touches: `lanes` >= 0 means the
 * first `lanes`; `lanes` < 0 means all but the first -`lanes` (the shifted
 * last vector of a pointwise plane, whose first lanes the vector before it
 * already holds). */
#if FC_VL == 16
static inline __mmask16 fc_mask(int lanes)
{
    return lanes >= 0 ? (__mmask16)((1u << lanes) - 1u)
                      : (__mmask16)(0xFFFFu & ~((1u << -lanes) - 1u));
}
#endif

#if defined(FC_AVX2_MASKS)
/* fc_mask's eight lanes as AVX2 spells a mask: all ones in a lane taken.
 * (A scalar loop through a copy in memory instead kept a tile's sums in
 * memory, not registers: the direct kernel ran at a quarter of its speed.) */
static inline __m256i fc_mask8(int lanes)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return lanes >= 0
        ? _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane)
        : _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(-lanes - 1));
}
#endif

/* Store the lanes of v that `lanes` names at dst. */
static inline void fc_store(float *dst, fc_vf v, int lanes)
{
    if (lanes == FC_VL) {
        memcpy(dst, &v, sizeof v);
        return;
    }
#if FC_VL == 16
    _mm512_mask_storeu_ps(dst, fc_mask(lanes), (__m512)v);
#elif defined(FC_AVX2_MASKS)
    _mm256_maskstore_ps(dst, fc_mask8(lanes), (__m256)v);
#else
    float tmp[FC_VL];
    memcpy(tmp, &v, sizeof v);
    for (int i = lanes >= 0 ? 0 : -lanes; i < (lanes >= 0 ? lanes : FC_VL);
         ++i)
        dst[i] = tmp[i];
#endif
}

/* The lanes at src that `lanes` names, zeros in the others. */
static inline fc_vf fc_load_lanes(const float *src, int lanes)
{
    if (lanes == FC_VL)
        return fc_load(src);
#if FC_VL == 16
    return (fc_vf)_mm512_maskz_loadu_ps(fc_mask(lanes), src);
#elif defined(FC_AVX2_MASKS)
    return (fc_vf)_mm256_maskload_ps(src, fc_mask8(lanes));
#else
    float tmp[FC_VL] = {0};
    for (int i = lanes >= 0 ? 0 : -lanes; i < (lanes >= 0 ? lanes : FC_VL);
         ++i)
        tmp[i] = src[i];
    fc_vf v;
    memcpy(&v, tmp, sizeof v);
    return v;
#endif
}

/* dst[2 j] = v[j] for the first `lanes` (>= 0) lanes, the odd floats
 * between left as they are; `add`: dst[2 j] += v[j]. One phase of a
 * stride-2 row written in place: two vectors spread from v's halves,
 * stored under alternate-lane masks. */
static inline void fc_store_spread2(float *dst, fc_vf v, int lanes, int add)
{
#if FC_VL == 16
    const __m512i low = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2,
                                         1, 1, 0, 0);
    const __m512i high = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12,
                                          11, 11, 10, 10, 9, 9, 8, 8);
    const int first = lanes < 8 ? lanes : 8, second = lanes - first;
    const __mmask16 m0 = (__mmask16)(0x5555u & ((1u << (2 * first)) - 1u));
    const __mmask16 m1 = (__mmask16)(0x5555u & ((1u << (2 * second)) - 1u));
    __m512 a = _mm512_permutexvar_ps(low, (__m512)v);
    __m512 b = _mm512_permutexvar_ps(high, (__m512)v);
    if (add) {
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m0, dst));
        b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m1, dst + 16));
    }
    _mm512_mask_storeu_ps(dst, m0, a);
    _mm512_mask_storeu_ps(dst + 16, m1, b);
#elif defined(FC_AVX2_MASKS)
    const __m256i low = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256i high = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i even = _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0);
    const int first = lanes < 4 ? lanes : 4, second = lanes - first;
    const __m256i m0 = _mm256_and_si256(even, fc_mask8(2 * first));
    const __m256i m1 = _mm256_and_si256(even, fc_mask8(2 * second));
    __m256 a = _mm256_permutevar8x32_ps((__m256)v, low);
    __m256 b = _mm256_permutevar8x32_ps((__m256)v, high);
    if (add) {
        a = _mm256_add_ps(a, _mm256_maskload_ps(dst, m0));
        b = _mm256_add_ps(b, _mm256_maskload_ps(dst + 8, m1));
    }
    _mm256_maskstore_ps(dst, m0, a);
    _mm256_maskstore_ps(dst + 8, m1, b);
#else
    float tmp[FC_VL];
    memcpy(tmp, &v, sizeof v);
    for (int j = 0; j < lanes; ++j)
        dst[2 * j] = add ? dst[2 * j] + tmp[j] : tmp[j];
#endif
}

#if FC_HAVE_SHUFFLE
/* Transpose an FC_VL x FC_VL block held as FC_VL vectors (r[i][j] ->
 * r[j][i]) in rounds of two-vector shuffles: round h swaps the h x h
 * sub-blocks off the diagonal of each 2h x 2h block. FC_T_LO(h, p) is lane
 * p's source (lanes FC_VL and up: the second vector) in the new r[i];
 * r[i + h] takes the lanes h further on. The index vectors are constants
 * (computed in the loop they cost as much as the shuffles). */
#define FC_T_LO(h, p) (((p) / (h) / 2) * 2 * (h) + (p) % (h) \
                       + ((p) / (h) % 2 ? FC_VL : 0))
#if FC_VL == 16
#define FC_T_IDX(h, d) ((fc_vi){ \
    FC_T_LO(h, 0) + d, FC_T_LO(h, 1) + d, FC_T_LO(h, 2) + d, \
    FC_T_LO(h, 3) + d, FC_T_LO(h, 4) + d, FC_T_LO(h, 5) + d, \
    FC_T_LO(h, 6) + d, FC_T_LO(h, 7) + d, FC_T_LO(h, 8) + d, \
    FC_T_LO(h, 9) + d, FC_T_LO(h, 10) + d, FC_T_LO(h, 11) + d, \
    FC_T_LO(h, 12) + d, FC_T_LO(h, 13) + d, FC_T_LO(h, 14) + d, \
    FC_T_LO(h, 15) + d})
#else
#define FC_T_IDX(h, d) ((fc_vi){ \
    FC_T_LO(h, 0) + d, FC_T_LO(h, 1) + d, FC_T_LO(h, 2) + d, \
    FC_T_LO(h, 3) + d, FC_T_LO(h, 4) + d, FC_T_LO(h, 5) + d, \
    FC_T_LO(h, 6) + d, FC_T_LO(h, 7) + d})
#endif
#define FC_T_ROUND(h) do { \
        const fc_vi lo = FC_T_IDX(h, 0), hi = FC_T_IDX(h, h); \
        for (int i = 0; i < FC_VL; ++i) { \
            if (i & (h)) \
                continue; \
            const fc_vf a = r[i], b = r[i + (h)]; \
            r[i] = __builtin_shuffle(a, b, lo); \
            r[i + (h)] = __builtin_shuffle(a, b, hi); \
        } \
    } while (0)
static inline void fc_transpose(fc_vf r[FC_VL])
{
#if FC_VL == 16
    FC_T_ROUND(8);
#endif
    FC_T_ROUND(4);
    FC_T_ROUND(2);
    FC_T_ROUND(1);
}
#endif

#else  /* no vector extensions */
#define FC_VECTORS_AVAILABLE 0
#define FC_VL 1
#endif

#endif
