/* Winograd's tile gather and scatter with AVX-512, float32 (included by
 * winograd.pyx).
 *
 * The transforms in winograd.pyx work on WG_GROUP tiles at once, tile q in
 * lane q of every vector: a 6x6 input patch is 36 vectors, element (i, j)
 * of every tile in one. Moving tiles between the planes (rows of
 * consecutive floats) and that layout is a transpose; done a float at a
 * time it took as long as the transforms and the products together (half
 * of a 14x14 layer's Winograd time). Here it is done on whole rows:
 *
 *   gather: row i of the patches of 16 tiles, loaded as 16 masked vectors
 *   (tiles q and q + 8 in the halves of one register; the mask zeroes the
 *   columns outside the plane and the rows outside it load nothing), then
 *   transposed 8 x 8 within each half, which puts column j of all 16 tiles
 *   in register j, lanes in tile order.
 *
 *   scatter: row i of 16 output tiles (4 vectors, one per column) turned
 *   by two rounds of shuffles into 16 four-float rows, each stored under a
 *   mask that stops at the plane's right edge.
 *
 * Tiles are numbered as in winograd.pyx: along tile rows, then images; a
 * group may span tile rows and images. Where AVX-512 (F and VL) is not
 * available WG_TILES_AVAILABLE is 0 and winograd.pyx moves the tiles a
 * float at a time.
 */

#ifndef FASTCONV_WINOGRAD_TILES_H
#define FASTCONV_WINOGRAD_TILES_H

#include <stddef.h>

#define WG_GROUP 16

#if defined(__GNUC__) && defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define WG_TILES_AVAILABLE 1

/* Where the tiles of one group lie: for tile q (lanes q >= tiles: none),
 * the offset of its patch's first element from image 0's plane (the
 * element may lie outside its plane), and per patch row i the masks of the
 * columns that lie inside the plane (zero where the row does not): lo[i][k]
 * for tile k (lanes 0-7), hi[i][k] for tile k + 8 (lanes 8-15). Worked out
 * once per group and used for every channel. */
typedef struct {
    ptrdiff_t offset[WG_GROUP];
    __mmask16 lo[8][8], hi[8][8];
    int tiles;
} wg_group_plan;

/* The plan of the `tiles` tiles from first_tile of planes height x width
 * (images image_stride floats apart), patches side x side (side <= 8)
 * whose first element is (4 ty - row_shift, 4 tx - col_shift). */
static void wg_plan_group(ptrdiff_t first_tile, int tiles, ptrdiff_t tiles_h,
                          ptrdiff_t tiles_w, ptrdiff_t height,
                          ptrdiff_t width, ptrdiff_t image_stride,
                          ptrdiff_t row_shift, ptrdiff_t col_shift, int side,
                          wg_group_plan *plan)
{
    const ptrdiff_t per_image = tiles_h * tiles_w;
    ptrdiff_t n = first_tile / per_image;
    ptrdiff_t ty = first_tile % per_image / tiles_w;
    ptrdiff_t tx = first_tile % tiles_w;
    plan->tiles = tiles;
    for (int q = 0; q < WG_GROUP; ++q) {
        unsigned columns = 0;
        ptrdiff_t row = 0;
        plan->offset[q] = 0;
        if (q < tiles) {
            const ptrdiff_t col = tx * 4 - col_shift;
            row = ty * 4 - row_shift;
            plan->offset[q] = n * image_stride + row * width + col;
            columns = (1u << side) - 1u;
            if (col < 0)
                columns &= ~((1u << (-col < side ? -col : side)) - 1u);
            if (col + side > width)
                columns &= width - col <= 0 ? 0u
                                            : (1u << (width - col)) - 1u;
            if (++tx == tiles_w) {
                tx = 0;
                if (++ty == tiles_h) {
                    ty = 0;
                    ++n;
                }
            }
        }
        for (int i = 0; i < 8; ++i) {
            const int inside = i < side && row + i >= 0 && row + i < height;
            const __mmask16 m = inside ? (__mmask16)columns : 0;
            /* q & 7 rather than q and q - 8: the same slots, but an index
             * GCC can bound (with q - 8 it warned that iteration 8 of
             * this loop would write lo out of bounds) */
            if (q < 8)
                plan->lo[i][q & 7] = m;
            else
                plan->hi[i][q & 7] = (__mmask16)(m << 8);
        }
    }
}

/* Columns j of the 8 x 8 blocks in each half of r[0..7] (row k of the low
 * half's block in r[k] lanes 0-7, of the high half's in lanes 8-15): on
 * return r[j] holds column j of both blocks, lanes 0-7 and 8-15. */
static inline void wg_transpose8x8_halves(__m512 r[8])
{
    __m512 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm512_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm512_shuffle_ps(t[k], t[k + 2], 0xEE);
        u[k + 2] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    /* u[k] (k < 4) holds, per 128-bit block, rows 0-3's column k (blocks
     * 0, 2) or k + 4 (blocks 1, 3); u[k + 4] the same of rows 4-7 */
    const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19,
                                          8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i high = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23,
                                           12, 13, 14, 15, 28, 29, 30, 31);
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm512_permutex2var_ps(u[k], low, u[k + 4]);
        r[k + 4] = _mm512_permutex2var_ps(u[k], high, u[k + 4]);
    }
}

/* Row i of the group's patches from the channel whose image-0 plane is
 * x: r[j] = element (i, j) of every tile's patch, zero outside the plane. */
static inline void wg_gather_row(const float *x, ptrdiff_t width,
                                 const wg_group_plan *plan, int i,
                                 __m512 r[8])
{
    for (int k = 0; k < 8; ++k) {
        const __m512 v = _mm512_maskz_loadu_ps(
            plan->lo[i][k], x + plan->offset[k] + i * width);
        /* tile k + 8's row from lane 8 on */
        r[k] = _mm512_mask_loadu_ps(
            v, plan->hi[i][k], x + plan->offset[k + 8] + i * width - 8);
    }
    wg_transpose8x8_halves(r);
}

/* out = B^T d of six vectors d (F(4x4, 3x3)'s input transform in 1-D). */
static inline void wg_input_1d(const __m512 d[6], __m512 out[6])
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
                 five = _mm512_set1_ps(5.0f);
    const __m512 d4_d2 = _mm512_sub_ps(d[4], d[2]);
    out[0] = _mm512_add_ps(_mm512_fnmadd_ps(five, d[2],
                                            _mm512_mul_ps(four, d[0])), d[4]);
    out[1] = _mm512_fnmadd_ps(four, _mm512_add_ps(d[1], d[2]),
                              _mm512_add_ps(d[3], d[4]));
    out[2] = _mm512_fmadd_ps(four, _mm512_sub_ps(d[1], d[2]),
                             _mm512_sub_ps(d[4], d[3]));
    out[3] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[3], d[1]), d4_d2);
    out[4] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[1], d[3]), d4_d2);
    out[5] = _mm512_add_ps(_mm512_fnmadd_ps(five, d[3],
                                            _mm512_mul_ps(four, d[1])), d[5]);
}

/* out = A^T m of six vectors m (the output transform in 1-D). */
static inline void wg_output_1d(const __m512 m[6], __m512 out[4])
{
    const __m512 sum12 = _mm512_add_ps(m[1], m[2]),
                 diff12 = _mm512_sub_ps(m[1], m[2]),
                 sum34 = _mm512_add_ps(m[3], m[4]),
                 diff34 = _mm512_sub_ps(m[3], m[4]);
    out[0] = _mm512_add_ps(_mm512_add_ps(m[0], sum12), sum34);
    out[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), diff34, diff12);
    out[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), sum34, sum12);
    out[3] = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_set1_ps(8.0f), diff34, diff12), m[5]);
}

/* out = A y of four vectors y (the output gradient's transform in 1-D,
 * the adjoint of wg_output_1d). */
static inline void wg_grad_output_1d(const __m512 y[4], __m512 out[6])
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
                 eight = _mm512_set1_ps(8.0f);
    const __m512 even = _mm512_add_ps(y[0], y[2]),
                 odd = _mm512_add_ps(y[1], y[3]);
    const __m512 even4 = _mm512_fmadd_ps(four, y[2], y[0]),
                 odd8 = _mm512_fmadd_ps(eight, y[3], _mm512_mul_ps(two, y[1]));
    out[0] = y[0];
    out[1] = _mm512_add_ps(even, odd);
    out[2] = _mm512_sub_ps(even, odd);
    out[3] = _mm512_add_ps(even4, odd8);
    out[4] = _mm512_sub_ps(even4, odd8);
    out[5] = y[3];
}

/* 36 vectors of a group's points to dst + p * point_stride (the lanes of
 * its tiles only). */
static inline void wg_store_points(const __m512 points[36], int tiles,
                                   float *dst, ptrdiff_t point_stride)
{
    const __mmask16 keep = (__mmask16)((1u << tiles) - 1u);
    for (int p = 0; p < 36; ++p) {
        if (tiles == WG_GROUP)
            _mm512_storeu_ps(dst + p * point_stride, points[p]);
        else
            _mm512_mask_storeu_ps(dst + p * point_stride, keep, points[p]);
    }
}

/* The 1-D transform of a patch row or column: `side` vectors in, six
 * out (wg_input_1d, side 6; wg_grad_output_1d, side 4). */
typedef void (*wg_transform_1d)(const __m512 *in, __m512 *out);

/* dst[:, c, :] for planes c in [c0, c1) of tiles [first_tile, first_tile
 * + count): dst (36, planes, count) = T d T^T of each tile's side x side
 * patch d, whose first element is (4 ty - row_shift, 4 tx - col_shift),
 * zero outside the plane, T the 6 x side matrix of `transform` (applied
 * along each gathered row, then down each column). src (N, planes,
 * height, width). Inlined into its two callers, where side and transform
 * are constants. */
static inline __attribute__((always_inline)) void
wg_patch_points(const float *src, ptrdiff_t planes, ptrdiff_t c0,
                ptrdiff_t c1, ptrdiff_t height, ptrdiff_t width,
                ptrdiff_t tiles_h, ptrdiff_t tiles_w, ptrdiff_t row_shift,
                ptrdiff_t col_shift, const int side,
                const wg_transform_1d transform, ptrdiff_t first_tile,
                ptrdiff_t count, float *dst)
{
    const ptrdiff_t plane = height * width;
    wg_group_plan plan;
    for (ptrdiff_t done = 0; done < count; done += WG_GROUP) {
        const int tiles = count - done < WG_GROUP ? (int)(count - done)
                                                  : WG_GROUP;
        wg_plan_group(first_tile + done, tiles, tiles_h, tiles_w, height,
                      width, planes * plane, row_shift, col_shift, side,
                      &plan);
        for (ptrdiff_t c = c0; c < c1; ++c) {
            __m512 rows[6][6], points[36];
            for (int i = 0; i < side; ++i) {    /* along each row */
                __m512 r[8];
                wg_gather_row(src + c * plane, width, &plan, i, r);
                transform(r, rows[i]);
            }
            for (int s = 0; s < 6; ++s) {       /* down each column */
                __m512 column[6], out[6];
                for (int i = 0; i < side; ++i)
                    column[i] = rows[i][s];
                transform(column, out);
                for (int r = 0; r < 6; ++r)
                    points[r * 6 + s] = out[r];
            }
            wg_store_points(points, tiles, dst + c * count + done,
                            planes * count);
        }
    }
}

/* V[:, c, :] for channels [c0, c1) of tiles [first_tile, first_tile +
 * count): V (36, channels, count) = B^T d B of each tile's 6x6 input patch
 * d, whose first element is (4 ty - pad_top, 4 tx - pad_left), zero
 * outside the plane. x (N, channels, height, width). */
static void wg_input_f32(const float *x, ptrdiff_t channels, ptrdiff_t c0,
                         ptrdiff_t c1, ptrdiff_t height, ptrdiff_t width,
                         ptrdiff_t tiles_h, ptrdiff_t tiles_w,
                         ptrdiff_t pad_top, ptrdiff_t pad_left,
                         ptrdiff_t first_tile, ptrdiff_t count, float *v)
{
    wg_patch_points(x, channels, c0, c1, height, width, tiles_h, tiles_w,
                    pad_top, pad_left, 6, wg_input_1d, first_tile, count, v);
}

/* E[:, k, :] for filters [k0, k1) of tiles [first_tile, first_tile +
 * count): E (36, filters, count) = A g A^T of each tile's 4x4 output
 * gradient g (zero past the plane's edge). grad (N, filters, height,
 * width). */
static void wg_grad_output_f32(const float *grad, ptrdiff_t filters,
                               ptrdiff_t k0, ptrdiff_t k1, ptrdiff_t height,
                               ptrdiff_t width, ptrdiff_t tiles_h,
                               ptrdiff_t tiles_w, ptrdiff_t first_tile,
                               ptrdiff_t count, float *e)
{
    wg_patch_points(grad, filters, k0, k1, height, width, tiles_h, tiles_w,
                    0, 0, 4, wg_grad_output_1d, first_tile, count, e);
}

/* Output channels [k0, k1) of tiles [first_tile, first_tile + count): y's
 * 4x4 tile = A^T m A of the tile's products m (M (filters, 36, count)),
 * plus bias[k] where bias is not NULL, the part inside the plane. y (N,
 * filters, height, width). */
static void wg_output_f32(const float *m, ptrdiff_t filters, ptrdiff_t k0,
                          ptrdiff_t k1, const float *bias, float *y,
                          ptrdiff_t height, ptrdiff_t width,
                          ptrdiff_t tiles_h, ptrdiff_t tiles_w,
                          ptrdiff_t first_tile, ptrdiff_t count)
{
    const ptrdiff_t plane = height * width;
    wg_group_plan plan;
    for (ptrdiff_t done = 0; done < count; done += WG_GROUP) {
        const int tiles = count - done < WG_GROUP ? (int)(count - done)
                                                  : WG_GROUP;
        const __mmask16 lanes = (__mmask16)((1u << tiles) - 1u);
        /* plan->lo/hi[i][q] here: the columns of tile q's row i to store */
        wg_plan_group(first_tile + done, tiles, tiles_h, tiles_w, height,
                      width, filters * plane, 0, 0, 4, &plan);
        for (ptrdiff_t k = k0; k < k1; ++k) {
            const float *src = m + k * 36 * count + done;
            __m512 half[4][6];
            for (int s = 0; s < 6; ++s) {       /* A^T down each column */
                __m512 column[6], out[4];
                for (int r = 0; r < 6; ++r)
                    column[r] = _mm512_maskz_loadu_ps(
                        lanes, src + (r * 6 + s) * count);
                wg_output_1d(column, out);
                for (int i = 0; i < 4; ++i)
                    half[i][s] = out[i];
            }
            const __m512 b = _mm512_set1_ps(bias ? bias[k] : 0.0f);
            float *dst = y + k * plane;
            for (int i = 0; i < 4; ++i) {       /* A along each row */
                __m512 c[4], t[4], u[4];
                wg_output_1d(half[i], c);
                for (int j = 0; j < 4; ++j)
                    c[j] = _mm512_add_ps(c[j], b);
                t[0] = _mm512_unpacklo_ps(c[0], c[1]);
                t[1] = _mm512_unpackhi_ps(c[0], c[1]);
                t[2] = _mm512_unpacklo_ps(c[2], c[3]);
                t[3] = _mm512_unpackhi_ps(c[2], c[3]);
                /* u[r], 128-bit block blk: row i of tile 4 blk + r */
                u[0] = _mm512_shuffle_ps(t[0], t[2], 0x44);
                u[1] = _mm512_shuffle_ps(t[0], t[2], 0xEE);
                u[2] = _mm512_shuffle_ps(t[1], t[3], 0x44);
                u[3] = _mm512_shuffle_ps(t[1], t[3], 0xEE);
                for (int q = 0; q < tiles; ++q) {
                    const __mmask16 keep = q < 8 ? plan.lo[i][q]
                                                 : plan.hi[i][q - 8] >> 8;
                    /* the four floats of block q / 4 to lanes 0-3 of the
                     * row's address: a 512-bit masked store from 4 (q / 4)
                     * floats before it */
                    _mm512_mask_storeu_ps(
                        dst + plan.offset[q] + i * width - 4 * (q >> 2),
                        (__mmask16)(keep << (4 * (q >> 2))), u[q & 3]);
                }
            }
        }
    }
}

#else
#define WG_TILES_AVAILABLE 0
/* never called: winograd.pyx checks WG_TILES_AVAILABLE */
static void wg_input_f32(const float *x, ptrdiff_t channels, ptrdiff_t c0,
                         ptrdiff_t c1, ptrdiff_t height, ptrdiff_t width,
                         ptrdiff_t tiles_h, ptrdiff_t tiles_w,
                         ptrdiff_t pad_top, ptrdiff_t pad_left,
                         ptrdiff_t first_tile, ptrdiff_t count, float *v)
{
    (void)x; (void)channels; (void)c0; (void)c1; (void)height; (void)width;
    (void)tiles_h; (void)tiles_w; (void)pad_top; (void)pad_left;
    (void)first_tile; (void)count; (void)v;
}
static void wg_grad_output_f32(const float *grad, ptrdiff_t filters,
                               ptrdiff_t k0, ptrdiff_t k1, ptrdiff_t height,
                               ptrdiff_t width, ptrdiff_t tiles_h,
                               ptrdiff_t tiles_w, ptrdiff_t first_tile,
                               ptrdiff_t count, float *e)
{
    (void)grad; (void)filters; (void)k0; (void)k1; (void)height;
    (void)width; (void)tiles_h; (void)tiles_w; (void)first_tile;
    (void)count; (void)e;
}
static void wg_output_f32(const float *m, ptrdiff_t filters, ptrdiff_t k0,
                          ptrdiff_t k1, const float *bias, float *y,
                          ptrdiff_t height, ptrdiff_t width,
                          ptrdiff_t tiles_h, ptrdiff_t tiles_w,
                          ptrdiff_t first_tile, ptrdiff_t count)
{
    (void)m; (void)filters; (void)k0; (void)k1; (void)bias; (void)y;
    (void)height; (void)width; (void)tiles_h; (void)tiles_w;
    (void)first_tile; (void)count;
}
#endif

#endif
