/* Winograd's tile gather and scatter on whole vectors, float32 (included
 * by winograd.pyx): AVX-512 (16 tiles per group) or AVX2 with FMA (8).
 *
 * The transforms in winograd.pyx work on groups of tiles at once, tile q
 * in lane q of every vector: a 6x6 input patch is 36 vectors, element
 * (i, j) of every tile in one. Moving tiles between the planes (rows of
 * consecutive floats) and that layout is a transpose; done a float at a
 * time it took as long as the transforms and the products together (half
 * of a 14x14 layer's Winograd time). Here it is done on whole rows:
 *
 *   gather: row i of the patches of a group's tiles, one masked load per
 *   tile (the mask zeroes the columns outside the plane and the rows
 *   outside it load nothing), then transposed 8 x 8, which puts column j
 *   of all the tiles in register j, lanes in tile order. With AVX-512,
 *   tiles q and q + 8 share a register, one in each half.
 *
 *   scatter: row i of the group's output tiles (4 vectors, one per
 *   column) turned by two rounds of shuffles into four-float rows, each
 *   stored under a mask that stops at the plane's right edge.
 *
 * Everything between the two (the 1-D transforms, the walk over
 * channels) is written once on wg_v, the vector of WG_GROUP floats; only
 * the plan's masks, the gather, the stores and the scatter differ by
 * instruction set.
 *
 * Tiles are numbered as in winograd.pyx: along tile rows, then images; a
 * group may span tile rows and images. Where neither instruction set is
 * available WG_TILES_AVAILABLE is 0 and winograd.pyx moves the tiles a
 * float at a time.
 */

#ifndef FASTCONV_WINOGRAD_TILES_H
#define FASTCONV_WINOGRAD_TILES_H

#include <stddef.h>

#if defined(__GNUC__) && defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define WG_TILES_AVAILABLE 1
#define WG_AVX512 1
#define WG_GROUP 16
typedef __m512 wg_v;

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

/* Row i of tile q: `columns` (bit j: column j) lie inside the plane. */
static inline void wg_plan_row(wg_group_plan *plan, int i, int q,
                               unsigned columns)
{
    /* q & 7 rather than q and q - 8: the same slots, but an index GCC can
     * bound (with q - 8 it warned that the plan's loop would write lo out
     * of bounds) */
    if (q < 8)
        plan->lo[i][q & 7] = (__mmask16)columns;
    else
        plan->hi[i][q & 7] = (__mmask16)(columns << 8);
}

static inline wg_v wg_add(wg_v a, wg_v b) { return _mm512_add_ps(a, b); }
static inline wg_v wg_sub(wg_v a, wg_v b) { return _mm512_sub_ps(a, b); }
static inline wg_v wg_mul(wg_v a, wg_v b) { return _mm512_mul_ps(a, b); }
/* a b + c and c - a b */
static inline wg_v wg_fmadd(wg_v a, wg_v b, wg_v c)
{
    return _mm512_fmadd_ps(a, b, c);
}
static inline wg_v wg_fnmadd(wg_v a, wg_v b, wg_v c)
{
    return _mm512_fnmadd_ps(a, b, c);
}
static inline wg_v wg_set1(float a) { return _mm512_set1_ps(a); }
/* Per 128-bit block: unpacklo a0 b0 a1 b1, unpackhi a2 b2 a3 b3;
 * shuffle_lo a0 a1 b0 b1, shuffle_hi a2 a3 b2 b3. */
static inline wg_v wg_unpacklo(wg_v a, wg_v b)
{
    return _mm512_unpacklo_ps(a, b);
}
static inline wg_v wg_unpackhi(wg_v a, wg_v b)
{
    return _mm512_unpackhi_ps(a, b);
}
static inline wg_v wg_shuffle_lo(wg_v a, wg_v b)
{
    return _mm512_shuffle_ps(a, b, 0x44);
}
static inline wg_v wg_shuffle_hi(wg_v a, wg_v b)
{
    return _mm512_shuffle_ps(a, b, 0xEE);
}

/* the first `tiles` lanes from src, zero in the others */
static inline wg_v wg_load_lanes(const float *src, int tiles)
{
    return _mm512_maskz_loadu_ps((__mmask16)((1u << tiles) - 1u), src);
}

/* the first `tiles` lanes of v to dst */
static inline void wg_store_lanes(float *dst, wg_v v, int tiles)
{
    if (tiles == WG_GROUP)
        _mm512_storeu_ps(dst, v);
    else
        _mm512_mask_storeu_ps(dst, (__mmask16)((1u << tiles) - 1u), v);
}

#elif defined(__GNUC__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define WG_TILES_AVAILABLE 1
#define WG_AVX2 1
#define WG_GROUP 8
typedef __m256 wg_v;

/* As with AVX-512, but one mask per tile and row, as AVX2 spells a mask
 * (all ones in a lane taken), and the same as bits for the scatter. */
typedef struct {
    ptrdiff_t offset[WG_GROUP];
    __m256i mask[8][WG_GROUP];
    unsigned char bits[8][WG_GROUP];
    int tiles;
} wg_group_plan;

static inline void wg_plan_row(wg_group_plan *plan, int i, int q,
                               unsigned columns)
{
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    plan->bits[i][q] = (unsigned char)columns;
    plan->mask[i][q] = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32((int)columns), lane), lane);
}

static inline wg_v wg_add(wg_v a, wg_v b) { return _mm256_add_ps(a, b); }
static inline wg_v wg_sub(wg_v a, wg_v b) { return _mm256_sub_ps(a, b); }
static inline wg_v wg_mul(wg_v a, wg_v b) { return _mm256_mul_ps(a, b); }
static inline wg_v wg_fmadd(wg_v a, wg_v b, wg_v c)
{
    return _mm256_fmadd_ps(a, b, c);
}
static inline wg_v wg_fnmadd(wg_v a, wg_v b, wg_v c)
{
    return _mm256_fnmadd_ps(a, b, c);
}
static inline wg_v wg_set1(float a) { return _mm256_set1_ps(a); }
static inline wg_v wg_unpacklo(wg_v a, wg_v b)
{
    return _mm256_unpacklo_ps(a, b);
}
static inline wg_v wg_unpackhi(wg_v a, wg_v b)
{
    return _mm256_unpackhi_ps(a, b);
}
static inline wg_v wg_shuffle_lo(wg_v a, wg_v b)
{
    return _mm256_shuffle_ps(a, b, 0x44);
}
static inline wg_v wg_shuffle_hi(wg_v a, wg_v b)
{
    return _mm256_shuffle_ps(a, b, 0xEE);
}

static inline __m256i wg_first_lanes(int tiles)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(tiles),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline wg_v wg_load_lanes(const float *src, int tiles)
{
    return tiles == WG_GROUP ? _mm256_loadu_ps(src)
                             : _mm256_maskload_ps(src, wg_first_lanes(tiles));
}

static inline void wg_store_lanes(float *dst, wg_v v, int tiles)
{
    if (tiles == WG_GROUP)
        _mm256_storeu_ps(dst, v);
    else
        _mm256_maskstore_ps(dst, wg_first_lanes(tiles), v);
}

#else
#define WG_TILES_AVAILABLE 0
#endif

#if WG_TILES_AVAILABLE
/* The 4 x 4 transpose within each 128-bit block of r[0..3]: lane j of
 * block blk of u[k] is lane k of block blk of r[j]. The first two rounds
 * of the 8 x 8 transposes, and all of the scatter's. */
static inline void wg_transpose4_blocks(const wg_v r[4], wg_v u[4])
{
    const wg_v t0 = wg_unpacklo(r[0], r[1]), t1 = wg_unpackhi(r[0], r[1]),
               t2 = wg_unpacklo(r[2], r[3]), t3 = wg_unpackhi(r[2], r[3]);
    u[0] = wg_shuffle_lo(t0, t2);
    u[1] = wg_shuffle_hi(t0, t2);
    u[2] = wg_shuffle_lo(t1, t3);
    u[3] = wg_shuffle_hi(t1, t3);
}
#endif

/* The instruction set's gather and scatter, on wg_transpose4_blocks. */
#if defined(WG_AVX512)

/* Columns j of the 8 x 8 blocks in each half of r[0..7] (row k of the low
 * half's block in r[k] lanes 0-7, of the high half's in lanes 8-15): on
 * return r[j] holds column j of both blocks, lanes 0-7 and 8-15. */
static inline void wg_transpose8x8_halves(__m512 r[8])
{
    __m512 u[8];
    wg_transpose4_blocks(r, u);
    wg_transpose4_blocks(r + 4, u + 4);
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

/* Row i of the group's output tiles, c[j] = column j of every tile's row
 * (lane q: tile q), to the plane whose image-0 plane is dst, the columns
 * inside the plane only. */
static inline void wg_scatter_row(const wg_v c[4], const wg_group_plan *plan,
                                  int i, float *dst, ptrdiff_t width)
{
    __m512 u[4];
    wg_transpose4_blocks(c, u);     /* u[r], 128-bit block blk: row i of
                                     * tile 4 blk + r */
    for (int q = 0; q < plan->tiles; ++q) {
        const __mmask16 keep = q < 8 ? plan->lo[i][q]
                                     : plan->hi[i][q - 8] >> 8;
        /* the four floats of block q / 4 to lanes 0-3 of the row's
         * address: a 512-bit masked store from 4 (q / 4) floats before it */
        _mm512_mask_storeu_ps(
            dst + plan->offset[q] + i * width - 4 * (q >> 2),
            (__mmask16)(keep << (4 * (q >> 2))), u[q & 3]);
    }
}

#elif defined(WG_AVX2)

/* r[j] = column j of the 8 x 8 block whose row k is r[k]. */
static inline void wg_transpose8x8(__m256 r[8])
{
    __m256 u[8];
    wg_transpose4_blocks(r, u);
    wg_transpose4_blocks(r + 4, u + 4);
    /* u[k] (k < 4): column k of rows 0-3 in the low half, column k + 4 in
     * the high one; u[k + 4] the same of rows 4-7 */
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

static inline void wg_gather_row(const float *x, ptrdiff_t width,
                                 const wg_group_plan *plan, int i,
                                 __m256 r[8])
{
    for (int k = 0; k < 8; ++k)
        r[k] = _mm256_maskload_ps(x + plan->offset[k] + i * width,
                                  plan->mask[i][k]);
    wg_transpose8x8(r);
}

static inline void wg_scatter_row(const wg_v c[4], const wg_group_plan *plan,
                                  int i, float *dst, ptrdiff_t width)
{
    __m256 u[4];
    wg_transpose4_blocks(c, u);     /* u[r]: row i of tile r in the low
                                     * half, of tile r + 4 in the high */
    for (int q = 0; q < plan->tiles; ++q) {
        const __m128 row = q < 4 ? _mm256_castps256_ps128(u[q & 3])
                                 : _mm256_extractf128_ps(u[q & 3], 1);
        float *at = dst + plan->offset[q] + i * width;
        /* the columns inside the plane are the first 0-4 (no vmaskmovps:
         * a masked store is slow on AMD's cores) */
        switch (plan->bits[i][q]) {
        case 0xF:
            _mm_storeu_ps(at, row);
            break;
        case 0x7:
            _mm_storel_pi((__m64 *)at, row);
            _mm_store_ss(at + 2, _mm_movehl_ps(row, row));
            break;
        case 0x3:
            _mm_storel_pi((__m64 *)at, row);
            break;
        case 0x1:
            _mm_store_ss(at, row);
            break;
        default:
            break;
        }
    }
}

#endif

#if WG_TILES_AVAILABLE

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
            wg_plan_row(plan, i, q, inside ? columns : 0u);
        }
    }
}

/* out = B^T d of six vectors d (F(4x4, 3x3)'s input transform in 1-D). */
static inline void wg_input_1d(const wg_v d[6], wg_v out[6])
{
    const wg_v two = wg_set1(2.0f), four = wg_set1(4.0f),
               five = wg_set1(5.0f);
    const wg_v d4_d2 = wg_sub(d[4], d[2]);
    out[0] = wg_add(wg_fnmadd(five, d[2], wg_mul(four, d[0])), d[4]);
    out[1] = wg_fnmadd(four, wg_add(d[1], d[2]), wg_add(d[3], d[4]));
    out[2] = wg_fmadd(four, wg_sub(d[1], d[2]), wg_sub(d[4], d[3]));
    out[3] = wg_fmadd(two, wg_sub(d[3], d[1]), d4_d2);
    out[4] = wg_fmadd(two, wg_sub(d[1], d[3]), d4_d2);
    out[5] = wg_add(wg_fnmadd(five, d[3], wg_mul(four, d[1])), d[5]);
}

/* out = A^T m of six vectors m (the output transform in 1-D). */
static inline void wg_output_1d(const wg_v m[6], wg_v out[4])
{
    const wg_v sum12 = wg_add(m[1], m[2]), diff12 = wg_sub(m[1], m[2]),
               sum34 = wg_add(m[3], m[4]), diff34 = wg_sub(m[3], m[4]);
    out[0] = wg_add(wg_add(m[0], sum12), sum34);
    out[1] = wg_fmadd(wg_set1(2.0f), diff34, diff12);
    out[2] = wg_fmadd(wg_set1(4.0f), sum34, sum12);
    out[3] = wg_add(wg_fmadd(wg_set1(8.0f), diff34, diff12), m[5]);
}

/* out = A y of four vectors y (the output gradient's transform in 1-D,
 * the adjoint of wg_output_1d). */
static inline void wg_grad_output_1d(const wg_v y[4], wg_v out[6])
{
    const wg_v two = wg_set1(2.0f), four = wg_set1(4.0f),
               eight = wg_set1(8.0f);
    const wg_v even = wg_add(y[0], y[2]), odd = wg_add(y[1], y[3]);
    const wg_v even4 = wg_fmadd(four, y[2], y[0]),
               odd8 = wg_fmadd(eight, y[3], wg_mul(two, y[1]));
    out[0] = y[0];
    out[1] = wg_add(even, odd);
    out[2] = wg_sub(even, odd);
    out[3] = wg_add(even4, odd8);
    out[4] = wg_sub(even4, odd8);
    out[5] = y[3];
}

/* The 1-D transform of a patch row or column: `side` vectors in, six
 * out (wg_input_1d, side 6; wg_grad_output_1d, side 4). */
typedef void (*wg_transform_1d)(const wg_v *in, wg_v *out);

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
            wg_v rows[6][6];
            float *out_c = dst + c * count + done;
            for (int i = 0; i < side; ++i) {    /* along each row */
                wg_v r[8];
                wg_gather_row(src + c * plane, width, &plan, i, r);
                transform(r, rows[i]);
            }
            for (int s = 0; s < 6; ++s) {       /* down each column */
                wg_v column[6], out[6];
                for (int i = 0; i < side; ++i)
                    column[i] = rows[i][s];
                transform(column, out);
                for (int r = 0; r < 6; ++r)     /* point (r, s) */
                    wg_store_lanes(out_c + (r * 6 + s) * planes * count,
                                   out[r], tiles);
            }
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
        /* the plan's masks here: the columns of tile q's row i to store */
        wg_plan_group(first_tile + done, tiles, tiles_h, tiles_w, height,
                      width, filters * plane, 0, 0, 4, &plan);
        for (ptrdiff_t k = k0; k < k1; ++k) {
            const float *src = m + k * 36 * count + done;
            wg_v half[4][6];
            for (int s = 0; s < 6; ++s) {       /* A^T down each column */
                wg_v column[6], out[4];
                for (int r = 0; r < 6; ++r)
                    column[r] = wg_load_lanes(src + (r * 6 + s) * count,
                                              tiles);
                wg_output_1d(column, out);
                for (int i = 0; i < 4; ++i)
                    half[i][s] = out[i];
            }
            const wg_v b = wg_set1(bias ? bias[k] : 0.0f);
            for (int i = 0; i < 4; ++i) {       /* A along each row */
                wg_v c[4];
                wg_output_1d(half[i], c);
                for (int j = 0; j < 4; ++j)
                    c[j] = wg_add(c[j], b);
                wg_scatter_row(c, &plan, i, y + k * plane, width);
            }
        }
    }
}

#else
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
