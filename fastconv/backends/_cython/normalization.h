/* Row reductions of the batch-norm kernels (normalization.pyx), in double.
 *
 * Each row is summed in FCN_PARTS partial sums of FCN_DL doubles (lane l of
 * part q takes elements i with i % (FCN_PARTS * FCN_DL) == q * FCN_DL + l),
 * then the tail, then the partials lane by lane in order: one fixed order,
 * which the vector units can run (a single dependent add chain waits 4
 * cycles an element, and GCC does not reorder a floating-point sum itself).
 * GCC's vector extensions where available, else the same order in scalars.
 */
#ifndef FASTCONV_NORMALIZATION_H
#define FASTCONV_NORMALIZATION_H

#include <stddef.h>
#include <string.h>

/* Lane l of part q sums the elements i with i % FCN_STEP == q * FCN_DL +
 * l: with AVX-512 four parts of 8 doubles, else eight of 4 (a native AVX2
 * vector; GCC moved wider vectors through memory a quarter at a time: a 4
 * MB batch norm's moments took 0.67 ms where its normalising pass took
 * 0.08). Either way lane l of the flattened parts takes the elements with
 * i % 32 == l, and the parts are totalled in that flat order: the same
 * sums, the same bits. */
#define FCN_STEP 32
#if defined(__AVX512F__)
#define FCN_DL 8      /* doubles per vector */
#else
#define FCN_DL 4
#endif
#define FCN_PARTS (FCN_STEP / FCN_DL)   /* independent vector sums */

#if defined(__GNUC__) || defined(__clang__)
typedef double fcn_vd __attribute__((vector_size(FCN_DL * sizeof(double))));
typedef float fcn_vf __attribute__((vector_size(FCN_DL * sizeof(float))));

static inline fcn_vd fcn_load_float(const float *p)
{
    fcn_vf v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fcn_vd);
}

static inline fcn_vd fcn_load_double(const double *p)
{
    fcn_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline double fcn_total(const fcn_vd *parts, double tail)
{
    double lanes[FCN_PARTS][FCN_DL];
    memcpy(lanes, parts, sizeof lanes);
    double total = tail;
    for (int q = 0; q < FCN_PARTS; ++q)
        for (int l = 0; l < FCN_DL; ++l)
            total += lanes[q][l];
    return total;
}

/* The parts of a row's sums that one sweep of the row keeps in registers
 * (two sums of four vectors: 8 of AVX2's 16 registers); each lane's sum
 * runs over the same elements in the same order however many sweeps. */
#define FCN_SWEEP_PARTS 4

/* sum(x - centre), sum((x - centre)^2), both in one pass (moments), or
 * sum(g), sum(g * x) over a row, for float and double rows. The parts
 * [p0, p0 + FCN_SWEEP_PARTS) of the vector sums are formed in one sweep of
 * the row's whole steps, in local vectors (an array whose address is taken
 * stays in memory), then stored in s[] (and q[]). */
#define FCN_SWEEP(BODY)                                                      \
    for (int p0 = 0; p0 < FCN_PARTS; p0 += FCN_SWEEP_PARTS) {                \
        fcn_vd a[FCN_SWEEP_PARTS], b[FCN_SWEEP_PARTS];                       \
        for (int p = 0; p < FCN_SWEEP_PARTS; ++p)                            \
            a[p] = b[p] = (fcn_vd){0};                                       \
        for (ptrdiff_t i = 0; i < whole; i += FCN_STEP)                      \
            for (int p = 0; p < FCN_SWEEP_PARTS; ++p) {                      \
                const ptrdiff_t at = i + (p0 + p) * FCN_DL;                  \
                BODY                                                         \
            }                                                                \
        for (int p = 0; p < FCN_SWEEP_PARTS; ++p) {                          \
            s[p0 + p] = a[p];                                                \
            q[p0 + p] = b[p];                                                \
        }                                                                    \
    }
#define FCN_DEFINE(T, LOAD)                                                  \
static double fcn_row_sum_##T(const T *x, ptrdiff_t n, double centre)        \
{                                                                            \
    fcn_vd s[FCN_PARTS], q[FCN_PARTS];                                       \
    const fcn_vd c = centre - (fcn_vd){0};                                   \
    const ptrdiff_t whole = n - n % FCN_STEP;                                \
    FCN_SWEEP(a[p] += LOAD(x + at) - c;)                                     \
    (void)q;                                                                 \
    double tail = 0;                                                         \
    for (ptrdiff_t i = whole; i < n; ++i)                                    \
        tail += (double)x[i] - centre;                                       \
    return fcn_total(s, tail);                                               \
}                                                                            \
static double fcn_row_squares_##T(const T *x, ptrdiff_t n, double centre)    \
{                                                                            \
    fcn_vd s[FCN_PARTS], q[FCN_PARTS];                                       \
    const fcn_vd c = centre - (fcn_vd){0};                                   \
    const ptrdiff_t whole = n - n % FCN_STEP;                                \
    FCN_SWEEP(const fcn_vd d = LOAD(x + at) - c; a[p] += d * d;)             \
    (void)q;                                                                 \
    double tail = 0;                                                         \
    for (ptrdiff_t i = whole; i < n; ++i) {                                  \
        const double d = (double)x[i] - centre;                              \
        tail += d * d;                                                       \
    }                                                                        \
    return fcn_total(s, tail);                                               \
}                                                                            \
static void fcn_row_moments_##T(const T *x, ptrdiff_t n, double centre,     \
                                double *sum, double *squares)                \
{                                                                            \
    fcn_vd s[FCN_PARTS], q[FCN_PARTS];                                       \
    const fcn_vd c = centre - (fcn_vd){0};                                   \
    const ptrdiff_t whole = n - n % FCN_STEP;                                \
    FCN_SWEEP(const fcn_vd d = LOAD(x + at) - c; a[p] += d; b[p] += d * d;)  \
    double tail_sum = 0, tail_squares = 0;                                   \
    for (ptrdiff_t i = whole; i < n; ++i) {                                  \
        const double d = (double)x[i] - centre;                              \
        tail_sum += d;                                                       \
        tail_squares += d * d;                                               \
    }                                                                        \
    *sum = fcn_total(s, tail_sum);                                           \
    *squares = fcn_total(q, tail_squares);                                   \
}                                                                            \
static void fcn_row_grad_sums_##T(const T *g, const T *x, ptrdiff_t n,       \
                                  double *grad_sum, double *grad_dot)        \
{                                                                            \
    fcn_vd s[FCN_PARTS], q[FCN_PARTS];                                       \
    const ptrdiff_t whole = n - n % FCN_STEP;                                \
    FCN_SWEEP(const fcn_vd gv = LOAD(g + at); a[p] += gv;                    \
              b[p] += gv * LOAD(x + at);)                                    \
    double tail_sum = 0, tail_dot = 0;                                       \
    for (ptrdiff_t i = whole; i < n; ++i) {                                  \
        tail_sum += (double)g[i];                                            \
        tail_dot += (double)g[i] * (double)x[i];                             \
    }                                                                        \
    *grad_sum = fcn_total(s, tail_sum);                                      \
    *grad_dot = fcn_total(q, tail_dot);                                      \
}
FCN_DEFINE(float, fcn_load_float)
FCN_DEFINE(double, fcn_load_double)

#else  /* no vector extensions (MSVC): the same order, lane by lane */
#define FCN_DEFINE(T)                                                        \
static double fcn_row_sum_##T(const T *x, ptrdiff_t n, double centre)        \
{                                                                            \
    double s[FCN_STEP] = {0}, total = 0;                                     \
    ptrdiff_t i = 0;                                                         \
    for (; i + FCN_STEP <= n; i += FCN_STEP)                                 \
        for (int j = 0; j < FCN_STEP; ++j)                                   \
            s[j] += (double)x[i + j] - centre;                               \
    for (; i < n; ++i)                                                       \
        total += (double)x[i] - centre;                                      \
    for (int j = 0; j < FCN_STEP; ++j)                                       \
        total += s[j];                                                       \
    return total;                                                            \
}                                                                            \
static double fcn_row_squares_##T(const T *x, ptrdiff_t n, double centre)    \
{                                                                            \
    double s[FCN_STEP] = {0}, total = 0;                                     \
    ptrdiff_t i = 0;                                                         \
    for (; i + FCN_STEP <= n; i += FCN_STEP)                                 \
        for (int j = 0; j < FCN_STEP; ++j) {                                 \
            const double d = (double)x[i + j] - centre;                      \
            s[j] += d * d;                                                   \
        }                                                                    \
    for (; i < n; ++i) {                                                     \
        const double d = (double)x[i] - centre;                              \
        total += d * d;                                                      \
    }                                                                        \
    for (int j = 0; j < FCN_STEP; ++j)                                       \
        total += s[j];                                                       \
    return total;                                                            \
}                                                                            \
static void fcn_row_moments_##T(const T *x, ptrdiff_t n, double centre,     \
                                double *sum, double *squares)                \
{                                                                            \
    double s[FCN_STEP] = {0}, q[FCN_STEP] = {0}, ts = 0, tq = 0;             \
    ptrdiff_t i = 0;                                                         \
    for (; i + FCN_STEP <= n; i += FCN_STEP)                                 \
        for (int j = 0; j < FCN_STEP; ++j) {                                 \
            const double d = (double)x[i + j] - centre;                      \
            s[j] += d;                                                       \
            q[j] += d * d;                                                   \
        }                                                                    \
    for (; i < n; ++i) {                                                     \
        const double d = (double)x[i] - centre;                              \
        ts += d;                                                             \
        tq += d * d;                                                         \
    }                                                                        \
    for (int j = 0; j < FCN_STEP; ++j) {                                     \
        ts += s[j];                                                          \
        tq += q[j];                                                          \
    }                                                                        \
    *sum = ts;                                                               \
    *squares = tq;                                                           \
}                                                                            \
static void fcn_row_grad_sums_##T(const T *g, const T *x, ptrdiff_t n,       \
                                  double *grad_sum, double *grad_dot)        \
{                                                                            \
    double s[FCN_STEP] = {0}, d[FCN_STEP] = {0}, ts = 0, td = 0;             \
    ptrdiff_t i = 0;                                                         \
    for (; i + FCN_STEP <= n; i += FCN_STEP)                                 \
        for (int j = 0; j < FCN_STEP; ++j) {                                 \
            s[j] += (double)g[i + j];                                        \
            d[j] += (double)g[i + j] * (double)x[i + j];                     \
        }                                                                    \
    for (; i < n; ++i) {                                                     \
        ts += (double)g[i];                                                  \
        td += (double)g[i] * (double)x[i];                                   \
    }                                                                        \
    for (int j = 0; j < FCN_STEP; ++j) {                                     \
        ts += s[j];                                                          \
        td += d[j];                                                          \
    }                                                                        \
    *grad_sum = ts;                                                          \
    *grad_dot = td;                                                          \
}
FCN_DEFINE(float)
FCN_DEFINE(double)
#endif

#endif
