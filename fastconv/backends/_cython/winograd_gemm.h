/* The 36 matrix products of Winograd F(4x4, 3x3), float32, register-blocked
 * (included by winograd.pyx; conv.pyx runs a pointwise layer's products on
 * the same kernel, with packed panels and its bias and activation in the
 * stores: wg_point_product's `pack` and `ep`).
 *
 * Each is M (K, n) = U (K, C) @ V (C, n) for one point of the 6x6 domain:
 * V the transformed inputs of n tiles (rows of channels, row stride ldv),
 * M the products (row stride ldm), U the transformed filters read through
 * two strides, u_k between filters and u_c between channels, so that the
 * forward's U (K, C) and the input gradient's U^T (its (C', K') array read
 * transposed) need no repacking. A tile is WG_KB filters x up to FC_VMAX
 * vectors of FC_VL tiles: the sums stay in registers over the whole depth
 * C, per channel FC_VMAX vector loads of V and WG_KB broadcast weights
 * feeding WG_KB * FC_VMAX fused multiply-adds (the layout of the direct
 * kernel's tile, direct_conv.h, whose vector helpers this uses). Tiles run
 * over n outermost, so that a panel of V (C x FC_VMAX * FC_VL floats: in
 * L1 up to about 200 channels, in L2 beyond) is reused by every filter
 * block.
 *
 * Unpacked, the vector loads of a panel's last, partial vector read up to
 * FC_VL - 1 floats past the row's last tile (the caller leaves that much
 * room after V); those lanes are never stored. Each output is summed over C in one
 * order, by one thread.
 *
 * BLAS took 1.4x longer on these shapes, plus its packing copies (SciPy's
 * OpenBLAS running its AVX2 Haswell kernels, as it does where the
 * environment sets OPENBLAS_CORETYPE=Haswell or it does not know the CPU).
 * float64 and builds without vector extensions call BLAS.
 */

#ifndef FASTCONV_WINOGRAD_GEMM_H
#define FASTCONV_WINOGRAD_GEMM_H

/* for its vector type and helpers only: its kernels go unused here */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include "direct_conv.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define WG_AVAILABLE FC_DIRECT_AVAILABLE
#define WG_KB FC_KB

/* What a product's stores add and clamp (a pointwise layer's bias and
 * activation, conv.pyx): bias[k] where bias is not NULL, then [lo, hi]
 * where clamp is set. */
typedef struct {
    const float *bias;
    int clamp;
    float lo, hi;
} wg_epilogue;

#if FC_DIRECT_AVAILABLE

static inline __attribute__((always_inline)) void
wg_tile(const int NV, const float *const *u_rows, ptrdiff_t u_c,
        ptrdiff_t depth, const float *v, ptrdiff_t ldv, float *m,
        ptrdiff_t ldm, int kn, int last_lanes, int accumulate,
        const wg_epilogue *ep, const float *bias)
{
    fc_vf a[WG_KB][FC_VMAX];
#pragma GCC unroll 8
    for (int k = 0; k < WG_KB; ++k)
#pragma GCC unroll 3
        for (int j = 0; j < NV; ++j)
            a[k][j] = (fc_vf){0};
    for (ptrdiff_t c = 0; c < depth; ++c) {
        const float *vc = v + c * ldv;
        fc_vf in[FC_VMAX];
        for (int j = 0; j < NV; ++j) {
            in[j] = fc_load(vc + j * FC_VL);
            FC_IN_REGISTER(in[j]);
        }
        const ptrdiff_t uc = c * u_c;
        for (int k = 0; k < WG_KB; ++k) {
            const float w = u_rows[k][uc];
            for (int j = 0; j < NV; ++j)
                a[k][j] += in[j] * w;
        }
    }
#pragma GCC unroll 8
    for (int k = 0; k < WG_KB; ++k) {
        if (k >= kn)
            break;
        const float b = ep && ep->bias ? bias[k] : 0.0f;
#pragma GCC unroll 3
        for (int j = 0; j < NV; ++j) {
            float *d = m + k * ldm + j * FC_VL;
            const int lanes = j == NV - 1 ? last_lanes : FC_VL;
            fc_vf r = accumulate ? a[k][j] + fc_load_lanes(d, lanes)
                                 : a[k][j];
            if (ep)
                r = fc_clamp(r + b, ep->clamp, ep->lo, ep->hi);
            fc_store(d, r, lanes);
        }
    }
}

#define WG_TILE_ARGS const float *const *r, ptrdiff_t uc, ptrdiff_t d, \
    const float *v, ptrdiff_t lv, float *m, ptrdiff_t lm, int kn, int ll, \
    int acc, const wg_epilogue *ep, const float *b
static void wg_tile1(WG_TILE_ARGS) { wg_tile(1, r, uc, d, v, lv, m, lm, kn, ll, acc, ep, b); }
static void wg_tile2(WG_TILE_ARGS) { wg_tile(2, r, uc, d, v, lv, m, lm, kn, ll, acc, ep, b); }
static void wg_tile3(WG_TILE_ARGS) { wg_tile(3, r, uc, d, v, lv, m, lm, kn, ll, acc, ep, b); }

/* M (filters, n) = U (filters, depth) @ V (depth, n), or M += that with
 * `accumulate`, then what `ep` says (NULL: nothing) applied as it is
 * stored; U[k][c] at u[k * u_k + c * u_c]. With `pack` (room for
 * depth * FC_VMAX * FC_VL floats; NULL: V is read in place, past its
 * last column as the file's comment says), each panel of V is first
 * copied there, zero past n: then no float past V's n columns is read,
 * and a V whose rows lie a multiple of 4 KiB apart (a pointwise layer's
 * planes) does not evict its own panel from L1, whose sets such rows
 * share. */
static void wg_point_product(const float *u, ptrdiff_t u_k, ptrdiff_t u_c,
                             ptrdiff_t filters, ptrdiff_t depth,
                             const float *v, ptrdiff_t ldv, ptrdiff_t n,
                             float *m, ptrdiff_t ldm, int accumulate,
                             const wg_epilogue *ep, float *pack)
{
    const ptrdiff_t panel = FC_VMAX * FC_VL;
    for (ptrdiff_t n0 = 0; n0 < n; n0 += panel) {
        const ptrdiff_t width = n - n0 < panel ? n - n0 : panel;
        const int vectors = (int)((width + FC_VL - 1) / FC_VL);
        const int last = (int)(width - (vectors - 1) * FC_VL);
        const float *src = v + n0;
        ptrdiff_t ld = ldv;
        if (pack) {
            const ptrdiff_t padded = (ptrdiff_t)vectors * FC_VL;
            for (ptrdiff_t c = 0; c < depth; ++c) {
                const float *from = src + c * ldv;
                float *to = pack + c * padded;
                if (width == panel) {   /* whole vectors, not a libc call */
                    for (int j = 0; j < FC_VMAX; ++j)
                        fc_store(to + j * FC_VL, fc_load(from + j * FC_VL),
                                 FC_VL);
                    continue;
                }
                for (int j = 0; j < vectors; ++j) {
                    const int lanes = j == vectors - 1 ? last : FC_VL;
                    fc_store(to + j * FC_VL,
                             fc_load_lanes(from + j * FC_VL, lanes), FC_VL);
                }
            }
            src = pack;
            ld = padded;
        }
        for (ptrdiff_t k0 = 0; k0 < filters; k0 += WG_KB) {
            const int kn = (int)(filters - k0 < WG_KB ? filters - k0 : WG_KB);
            const float *rows[WG_KB];
            /* rows past the last filter repeat it (their sums are not
             * stored) rather than read past U */
            for (int k = 0; k < WG_KB; ++k)
                rows[k] = u + (k0 + (k < kn ? k : kn - 1)) * u_k;
            float *dst = m + k0 * ldm + n0;
            const float *bias = ep && ep->bias ? ep->bias + k0 : NULL;
            if (vectors == 3)
                wg_tile3(rows, u_c, depth, src, ld, dst, ldm, kn, last,
                         accumulate, ep, bias);
            else if (vectors == 2)
                wg_tile2(rows, u_c, depth, src, ld, dst, ldm, kn, last,
                         accumulate, ep, bias);
            else
                wg_tile1(rows, u_c, depth, src, ld, dst, ldm, kn, last,
                         accumulate, ep, bias);
        }
    }
}

/* dst (cols, rows) = src (rows, cols) transposed; row strides lds, ldd.
 * The weight gradient's products sum over tiles, so its V[p] (C, tiles)
 * is multiplied as V[p]^T (tiles, C): channels along the vectors. */
static inline void wg_transpose(const float *src, ptrdiff_t lds, ptrdiff_t rows,
                         ptrdiff_t cols, float *dst, ptrdiff_t ldd)
{
#if FC_HAVE_SHUFFLE
    for (ptrdiff_t i0 = 0; i0 < rows; i0 += FC_VL) {
        const int height = (int)(rows - i0 < FC_VL ? rows - i0 : FC_VL);
        for (ptrdiff_t j0 = 0; j0 < cols; j0 += FC_VL) {
            const int width = (int)(cols - j0 < FC_VL ? cols - j0 : FC_VL);
            fc_vf r[FC_VL];
            for (int i = 0; i < FC_VL; ++i)
                r[i] = i < height ? fc_load_lanes(src + (i0 + i) * lds + j0,
                                                  width)
                                  : (fc_vf){0};
            fc_transpose(r);
            for (int j = 0; j < width; ++j)
                fc_store(dst + (j0 + j) * ldd + i0, r[j], height);
        }
    }
#else
    for (ptrdiff_t i = 0; i < rows; ++i)
        for (ptrdiff_t j = 0; j < cols; ++j)
            dst[j * ldd + i] = src[i * lds + j];
#endif
}

#else  /* no vector extensions: winograd.pyx calls BLAS instead */
static void wg_point_product(const float *u, ptrdiff_t u_k, ptrdiff_t u_c,
                             ptrdiff_t filters, ptrdiff_t depth,
                             const float *v, ptrdiff_t ldv, ptrdiff_t n,
                             float *m, ptrdiff_t ldm, int accumulate,
                             const wg_epilogue *ep, float *pack)
{
    (void)ep; (void)pack; (void)u; (void)u_k; (void)u_c; (void)filters; (void)depth; (void)v;
    (void)ldv; (void)n; (void)m; (void)ldm; (void)accumulate;
}
static inline void wg_transpose(const float *src, ptrdiff_t lds, ptrdiff_t rows,
                         ptrdiff_t cols, float *dst, ptrdiff_t ldd)
{
    (void)src; (void)lds; (void)rows; (void)cols; (void)dst; (void)ldd;
}
#endif

#endif
