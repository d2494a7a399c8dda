/*
** kernels/kquant.h: the scalar arithmetic of SLiM's per-linear pruning and quantization, written
** once for core/prune.c and core/quant.c (host arrays), the CPU backend's ops and the CUDA
** kernels (kernels/cuda/quant_cuda.cu), so that every path yields the same bits.
** In device code the products, quotients and sums go through __fmul_rn / __fdiv_rn / __fadd_rn /
** __fsub_rn: nvcc would otherwise contract a * b + c into an FMA (-fmad=true is its default).
** Header-only (static inline): kernels/ does not link core/, and core/ has no backend here.
*/
#ifndef SLM_KQUANT_H
#define SLM_KQUANT_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kbackend.h"

#ifdef __CUDACC__
#define KQ_FN __host__ __device__ static inline
#else
#define KQ_FN static inline
#endif

#ifdef __CUDA_ARCH__
#define KQ_MUL(a, b) __fmul_rn((a), (b))
#define KQ_DIV(a, b) __fdiv_rn((a), (b))
#define KQ_ADD(a, b) __fadd_rn((a), (b))
#define KQ_SUB(a, b) __fsub_rn((a), (b))
#else
#define KQ_MUL(a, b) ((a) * (b))
#define KQ_DIV(a, b) ((a) / (b))
#define KQ_ADD(a, b) ((a) + (b))
#define KQ_SUB(a, b) ((a) - (b))
#endif

/* Nearest bfloat16 as f32: round to nearest even, NaN stays a quiet NaN (core/dtype.c's
** f32_to_bf16 and kcpu_round_bf16 round the same way). */
KQ_FN float kq_bf16(float x)
{
    uint32_t u;
#ifdef __CUDA_ARCH__
    u = __float_as_uint(x);
#else
    memcpy(&u, &x, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) u = (u | 0x00400000u) & 0xffff0000u;
    else u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    memcpy(&x, &u, 4);
    return x;
#endif
}

KQ_FN float kq_rb(float x, bool bf16) { return bf16 ? kq_bf16(x) : x; }

/* ---- pruning (ALGORITHMS.md §2.1, §2.2) ---- */

/* Magnitude (s NULL) or Wanda metric |w| * sqrt(s[c]); s is the shifted scaler row. */
KQ_FN float kq_prune_metric(float w, const float *s, int c)
{
    return s ? KQ_MUL(fabsf(w), sqrtf(s[c])) : fabsf(w);
}

/* Whether entry k of an N:M group t [m] is pruned: the m - n smallest go, equal values drop the
** lower index first. This is the position of k in a stable ascending sort: the entries before it
** are those smaller, and those equal at a lower index. A NaN metric sorts first (nothing compares
** below or equal to it) and is never counted before another entry. */
KQ_FN bool kq_nm_pruned(const float *t, int k, int m, int n)
{
    int before = 0;
    for (int j = 0; j < m && before < m - n; j++)
        before += t[j] < t[k] || (t[j] == t[k] && j < k);
    return before < m - n;
}

/* The bits of v (no aliasing through pointers: host memcpy, device intrinsic). */
KQ_FN uint32_t kq_bits(float v)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(v);
#else
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
#endif
}

/* Order key of a metric for the unstructured selections: ascending as the floats, -0 equal to +0,
** every NaN first, so a NaN metric is pruned (as kq_nm_pruned prunes one; there a NaN also
** counts before no other entry, so its group may lose one more). Sorting by (key, column) is the
** host path's stable ascending sort, and a total order even when a metric is NaN. */
KQ_FN uint32_t kq_order_key(float v)
{
    if (v != v) return 0;
    if (v == 0) return 0x80000000u;
    uint32_t u = kq_bits(v);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* Order key of |v| for the global thresholds (abs_kth): the bits without the sign, so NaN ranks
** above +inf and -0 equals +0. */
KQ_FN uint32_t kq_abs_key(float v) { return kq_bits(v) & 0x7fffffffu; }

/* ---- AbsMax / SLiM-Quant fake quantization (§3.1 - §3.4) ---- */

KQ_FN float kq_clampq(float q, int max_q)
{
    return q < (float)(-max_q - 1) ? (float)(-max_q - 1) : q > (float)max_q ? (float)max_q : q;
}

/* Half toward zero (the reference's Triton group kernel): truncate, then step away from zero only
** when the fraction exceeds 0.5. */
KQ_FN float kq_round_half_to_zero(float v)
{
    float t = truncf(v);
    if (fabsf(KQ_SUB(v, t)) > 0.5f) t = KQ_ADD(t, v > 0 ? 1.0f : -1.0f);
    return t;
}

/* Code of v under scale s of kind (enum kquant_kind). + 0 turns -0 into +0: the stored code has
** no sign of zero to give back. KQ_SF in a bf16 model: sf is cast to the weight's bf16 for the
** product, and the product rounded to bf16 (the reference's tensor arithmetic). */
KQ_FN float kq_code(float v, float s, int kind, int max_q, bool bf16)
{
    if (s == 0) return 0;
    if (kind == KQ_ALPHA) return KQ_ADD(kq_clampq(kq_round_half_to_zero(KQ_MUL(KQ_DIV(v, s), (float)max_q)), max_q), 0.0f);
    return KQ_ADD(kq_clampq(nearbyintf(kq_rb(KQ_MUL(v, kq_rb(s, bf16)), bf16)), max_q), 0.0f);
}

/* Weight of code q: AbsMax and SLiM-Quant values are stored as bf16 (as the reference, also in
** its f32 runs), OPTQ's (KQ_STEP) stay f32. */
KQ_FN float kq_value(float q, float s, int kind, int max_q, bool bf16)
{
    if (s == 0) return 0;
    if (kind == KQ_ALPHA) return kq_bf16(KQ_MUL(kq_rb(KQ_DIV(q, (float)max_q), bf16), s));
    if (kind == KQ_STEP) return KQ_MUL(s, q);
    return kq_bf16(KQ_DIV(q, s));
}

KQ_FN float kq_scale_at(const struct kquant_args *a, int r, int c)
{
    return a->scale[(size_t)(r / a->group_rows) * a->cols + c / a->group_cols];
}

/* Quantize element (r, c) of value w: the AWQ-like column scale cs multiplies before and divides
** after (§3.4). *code gets the integer; returns the new weight. */
KQ_FN float kq_quant1(float w, int r, int c, const struct kquant_args *a, float *code)
{
    int max_q = (1 << (a->bits - 1)) - 1;
    float s = kq_scale_at(a, r, c), cs = a->col_scale ? a->col_scale[c] : 1.0f;
    float q = kq_code(cs != 1.0f ? KQ_MUL(w, cs) : w, s, a->kind, max_q, a->bf16);
    float v = kq_value(q, s, a->kind, max_q, a->bf16);
    *code = q;
    return cs != 1.0f ? kq_bf16(KQ_DIV(v, cs)) : v;
}

KQ_FN float kq_dequant1(int8_t code, int r, int c, const struct kquant_args *a)
{
    int max_q = (1 << (a->bits - 1)) - 1;
    float cs = a->col_scale ? a->col_scale[c] : 1.0f;
    float v = kq_value((float)code, kq_scale_at(a, r, c), a->kind, max_q, a->bf16);
    return cs != 1.0f ? kq_bf16(KQ_DIV(v, cs)) : v;
}

/* ---- SLiM-Quant histogram (§3.3) ---- */

/* Bin of v among nb bins with edges edge [nb + 1] spanning [lo, hi]: the f32 estimate
** (v - lo) * nb / (hi - lo), clamped, then moved until edge[p] <= v < edge[p + 1] (the last bin
** also takes v == hi), as torch.histc. */
KQ_FN int kq_hist_bin(float v, float lo, float hi, int nb, const float *edge)
{
    int p = (int)KQ_DIV(KQ_MUL(KQ_SUB(v, lo), (float)nb), KQ_SUB(hi, lo));
    if (p < 0) p = 0;
    if (p > nb - 1) p = nb - 1;
    while (p > 0 && v < edge[p]) p--;
    while (p < nb - 1 && v >= edge[p + 1]) p++;
    return p;
}

/* ---- SLiM-Quant clipping search (§3.3) ---- */

/* Density of bin k of counts [nb] over n values with edges edge [nb + 1]. */
KQ_FN float kq_slim_pdf(const uint64_t *counts, const float *edge, int k, size_t n)
{
    return (float)((double)counts[k] / ((double)n * (double)KQ_SUB(edge[k + 1], edge[k])));
}

/* Centre of bin k. */
KQ_FN float kq_slim_val(const float *edge, int k) { return KQ_DIV(KQ_ADD(edge[k], edge[k + 1]), 2.0f); }

/* E(i) of the reference's integrate=True objective for the clip at val[i]: one sequential sum in
** f64 of f32 terms, so every backend (one thread per candidate) gives its bits. */
KQ_FN double kq_slim_err(const float *pdf, const float *val, int nb, float dx, int i, int bits)
{
    float alpha = val[i], step = KQ_DIV(alpha, (float)(1 << bits));
    double e = 0;
    for (int k = 0; k < nb; k++) {
        float d = k < i ? KQ_SUB(val[k], KQ_MUL(floorf(KQ_DIV(val[k], step)), step)) : KQ_SUB(val[k], alpha);
        e += (double)KQ_MUL(KQ_MUL(KQ_MUL(pdf[k], d), d), dx);
    }
    return e;
}

/* The coarse grid: bins 0, st, 2 st, ... below nb (st = nb / 10) in idx [11]; returns how many
** (the rest of idx stays 0, as the reference's 11-slot list). */
KQ_FN int kq_slim_grid(int idx[11], int nb)
{
    int st = nb / 10, nc = 0;
    for (int j = 0; j < 11; j++) idx[j] = 0;
    for (int j = 0; j < 11 && j * st < nb; j++) idx[nc++] = j * st;
    return nc;
}

/* The fine range [*flo, *fhi) around the best coarse loss coarse [11] (unused slots +inf; the first
** strict minimum). *fhi may fall below *flo (a best slot 9 whose next slot is unused): no fine
** candidate, and the search answers bin 0, as the reference. */
KQ_FN void kq_slim_fine_range(const double coarse[11], const int idx[11], int *flo, int *fhi)
{
    int t = 0;
    for (int j = 0; j < 11; j++)
        if (coarse[j] < coarse[t]) t = j;
    *flo = idx[t > 0 ? t - 1 : 0];
    *fhi = idx[t + 1 < 10 ? t + 1 : 10];
}

/* ---- argument checks of the ops, the same on every backend (host code) ---- */
static inline int kq_check_nm(int d_out, int d_in, int n, int m, struct slm_err *err)
{
    if (n <= 0 || n >= m || m > 256 || d_in % m || d_out < 0)
        return slm_err_set(err, SLM_EINVAL, "prune_nm: pattern %d:%d on %dx%d", n, m, d_out, d_in);
    return 0;
}

static inline int kq_check_rows(int d_out, int d_in, int k, struct slm_err *err)
{
    if (d_out < 0 || d_in < 0 || k < 0 || k > d_in)
        return slm_err_set(err, SLM_EINVAL, "prune_rows: %d of %d columns per row on %dx%d", k, d_in, d_out, d_in);
    return 0;
}

static inline int kq_check_kth(size_t n, size_t k, struct slm_err *err)
{
    if (k >= n) return slm_err_set(err, SLM_EINVAL, "abs_kth: rank %zu of %zu values", k, n);
    return 0;
}

static inline int kq_check_groups(int d_out, int d_in, int grows, int gcols, struct slm_err *err)
{
    if (d_out < 0 || d_in < 0 || grows <= 0 || gcols <= 0 || d_out % grows || d_in % gcols)
        return slm_err_set(err, SLM_ESHAPE, "absmax_groups: %dx%d is not a multiple of %dx%d", d_out, d_in, grows, gcols);
    return 0;
}

static inline int kq_check_quant(const struct kquant_args *q, int d_out, int d_in, struct slm_err *err)
{
    if (q->bits < 2 || q->bits > 8 || q->group_rows <= 0 || q->group_cols <= 0 || d_out < 0 || d_in < 0 ||
        (int64_t)q->rows * q->group_rows < d_out || (int64_t)q->cols * q->group_cols < d_in)
        return slm_err_set(err, SLM_EINVAL, "quantize: %d bits, scale grid %dx%d of %dx%d does not cover %dx%d",
                           q->bits, q->rows, q->cols, q->group_rows, q->group_cols, d_out, d_in);
    return 0;
}

static inline int kq_check_bins(int nb, struct slm_err *err)
{
    return nb > 0 ? 0 : slm_err_set(err, SLM_EINVAL, "abs_histogram: %d bins", nb);
}

static inline int kq_check_search(int nb, size_t n, int bits, struct slm_err *err)
{
    if (nb < 2 || n == 0 || bits < 2 || bits > 8)
        return slm_err_set(err, SLM_EINVAL, "slim_search: %d bins over %zu values at %d bits", nb, n, bits);
    return 0;
}

/* ---- host loops: core's host path and the CPU backend's ops ----
** Rows (or whole groups of rows) are independent, so the loops run on OpenMP threads above
** KQ_PAR_MIN elements; each element is computed exactly as on one thread. */
#ifndef __CUDACC__

#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many weights a parallel region costs more than the work it spreads. */
#define KQ_PAR_MIN (1 << 14)

/* mask / w of one N:M-pruned row: metric of w [len] (s: shifted scaler [len] or NULL). */
static inline void kq_prune_nm_row(float *w, uint8_t *mask, const float *s, int len, int n, int m, bool zero)
{
    float t[256];
    for (int c0 = 0; c0 + m <= len; c0 += m) {
        for (int k = 0; k < m; k++) t[k] = kq_prune_metric(w[c0 + k], s, c0 + k);
        for (int k = 0; k < m; k++) {
            mask[c0 + k] = kq_nm_pruned(t, k, m, n);
            if (zero && mask[c0 + k]) w[c0 + k] = 0;
        }
    }
}

/* t [d_out x d_in] = the pruning metric of w (kq_prune_metric under s, NULL: magnitude). */
static inline void kq_prune_metrics(float *t, const float *w, const float *s, int d_out, int d_in)
{
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) t[(size_t)r * d_in + c] = kq_prune_metric(w[(size_t)r * d_in + c], s, c);
}

/* A metric and its column: the unstructured per-row sort's item. */
struct kq_keyed { uint32_t key; int j; };

static inline int kq_keyed_asc(const void *a, const void *b)
{
    const struct kq_keyed *x = (const struct kq_keyed *)a, *y = (const struct kq_keyed *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

/* Unstructured per-row selection (Wanda): in each row of the metric t [d_out x d_in], mask gets 1
** at the k smallest (kq_order_key; equal ones the lower column first: a stable ascending sort)
** and 0 elsewhere. One sort buffer per thread; -SLM_ENOMEM without it. */
static inline int kq_select_rows(uint8_t *mask, const float *t, int d_out, int d_in, int k, struct slm_err *err)
{
    bool par = (size_t)d_out * d_in >= KQ_PAR_MIN;
    int nthr = 1;
#ifdef _OPENMP
    if (par) nthr = omp_get_max_threads();
#endif
    struct kq_keyed *rows = (struct kq_keyed *)malloc(sizeof *rows * ((size_t)d_in * nthr + 1));
    if (!rows) return slm_err_set(err, SLM_ENOMEM, "prune: out of memory for %d sort buffers of %d", nthr, d_in);
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthr) if (nthr > 1)
    for (int r = 0; r < d_out; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        struct kq_keyed *row = rows + (size_t)tid * d_in;
        uint8_t *mr = mask + (size_t)r * d_in;
        for (int c = 0; c < d_in; c++) {
            row[c].key = kq_order_key(t[(size_t)r * d_in + c]);
            row[c].j = c;
        }
        qsort(row, (size_t)d_in, sizeof *row, kq_keyed_asc);
        memset(mr, 0, (size_t)d_in);
        for (int c = 0; c < k; c++) mr[row[c].j] = 1;
    }
    free(rows);
    return 0;
}

/* The k-th smallest (0-based, k < n) of |a[i]| over a [n] by kq_abs_key (NaN above +inf);
** keys [n] is the caller's scratch. Three-way quickselect, O(n) expected. */
static inline float kq_kth_abs(uint32_t *keys, const float *a, size_t n, size_t k)
{
    for (size_t i = 0; i < n; i++) keys[i] = kq_abs_key(a[i]);
    size_t lo = 0, hi = n;   /* the answer lies in keys[lo, hi) */
    uint64_t x = 0x9e3779b97f4a7c15ull ^ n;
    uint32_t p;
    for (;;) {
        if (hi - lo == 1) { p = keys[lo]; break; }
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p = keys[lo + x % (hi - lo)];
        size_t lt = lo, i = lo, gt = hi;   /* [lo, lt) < p, [lt, i) == p, [gt, hi) > p */
        while (i < gt) {
            uint32_t v = keys[i];
            if (v < p) { keys[i] = keys[lt]; keys[lt++] = v; i++; }
            else if (v > p) { keys[i] = keys[--gt]; keys[gt] = v; }
            else i++;
        }
        if (k < lt) hi = lt;
        else if (k >= gt) lo = gt;
        else break;
    }
    float v;
    memcpy(&v, &p, 4);
    return v;
}

/* How many of a [n] are 0 (either sign). */
static inline uint64_t kq_count_zeros(const float *a, size_t n)
{
    uint64_t z = 0;
#pragma omp parallel for reduction(+ : z) schedule(static) if (n >= KQ_PAR_MIN)
    for (size_t i = 0; i < n; i++) z += a[i] == 0;
    return z;
}

/* Magnitude under a global threshold: mask[i] = |w[i]| <= thr, and w[i] = 0 there. */
static inline void kq_prune_abs_le(float *w, uint8_t *mask, size_t n, float thr)
{
#pragma omp parallel for schedule(static) if (n >= KQ_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        mask[i] = fabsf(w[i]) <= thr;
        if (mask[i]) w[i] = 0;
    }
}

/* amax [(d_out / grows) x (d_in / gcols)] = max |w| of each grows x gcols group; NaN ignored. */
static inline void kq_absmax_groups(float *amax, const float *w, int d_out, int d_in, int grows, int gcols)
{
    int cols = d_in / gcols, rows = d_out / grows;
    for (size_t i = 0; i < (size_t)rows * cols; i++) amax[i] = 0;
    /* a thread takes whole groups of rows, so no maximum is shared between threads */
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
    for (int gr = 0; gr < rows; gr++)
        for (int r = gr * grows; r < (gr + 1) * grows; r++)
            for (int c = 0; c < d_in; c++) {
                float *a = &amax[(size_t)gr * cols + c / gcols];
                *a = fmaxf(*a, fabsf(w[(size_t)r * d_in + c]));
            }
}

/* lo_hi = { min |a|, max |a| } over n floats, NaN ignored; { +inf, 0 } when empty. */
static inline void kq_abs_range(float *lo_hi, const float *a, size_t n)
{
    float lo = INFINITY, hi = 0;
    for (size_t i = 0; i < n; i++) {
        float v = fabsf(a[i]);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    lo_hi[0] = lo;
    lo_hi[1] = hi;
}

static inline void kq_abs_histogram(uint64_t *counts, const float *a, size_t n, float lo, float hi,
                                    const float *edge, int nb)
{
    for (size_t i = 0; i < n; i++) counts[kq_hist_bin(fabsf(a[i]), lo, hi, nb, edge)]++;
}

static inline void kq_quant(float *w, int8_t *codes, int d_out, int d_in, const struct kquant_args *a)
{
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            float q;
            w[i] = kq_quant1(w[i], r, c, a, &q);
            if (codes) codes[i] = (int8_t)q;
        }
}

static inline void kq_dequant(float *w, const int8_t *codes, int d_out, int d_in, const struct kquant_args *a)
{
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) w[(size_t)r * d_in + c] = kq_dequant1(codes[(size_t)r * d_in + c], r, c, a);
}

/* SLiM-Quant's clip over the histogram counts [nb] of n values with edges edge [nb + 1]: the coarse
** grid, then every bin of the fine range, the first strict minimum (bin 0 when none is finite).
** Scratch pdf, val [nb] floats and loss [nb] doubles (a fine range spans at most 2 nb / 10 bins).
** Candidates are independent sequential sums, so OpenMP threads give the single-thread bits; the
** search is the costly part of SLiM-Quant on large linears (8e7 terms at 20000 bins). */
static inline float kq_slim_search(const uint64_t *counts, const float *edge, float *pdf, float *val, double *loss,
                                   int nb, size_t n, int bits)
{
    for (int k = 0; k < nb; k++) {
        pdf[k] = kq_slim_pdf(counts, edge, k, n);
        val[k] = kq_slim_val(edge, k);
    }
    float dx = val[1] - val[0];
    int idx[11], nc = kq_slim_grid(idx, nb), flo, fhi;
    double coarse[11];
    for (int j = 0; j < 11; j++) coarse[j] = INFINITY;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)nc * nb >= KQ_PAR_MIN * 16)
    for (int j = 0; j < nc; j++) coarse[j] = kq_slim_err(pdf, val, nb, dx, idx[j], bits);
    kq_slim_fine_range(coarse, idx, &flo, &fhi);
#pragma omp parallel for schedule(dynamic, 8) if ((size_t)(fhi - flo) * nb >= KQ_PAR_MIN * 16)
    for (int i = flo; i < fhi; i++) loss[i - flo] = kq_slim_err(pdf, val, nb, dx, i, bits);
    int best = 0;
    double bl = INFINITY;
    for (int i = flo; i < fhi; i++)
        if (loss[i - flo] < bl) { bl = loss[i - flo]; best = i; }
    return val[best];
}

/* kq_slim_search with its scratch allocated here; false when out of memory (*alpha untouched). */
static inline bool kq_slim_search_alloc(float *alpha, const uint64_t *counts, const float *edge, int nb, size_t n,
                                        int bits)
{
    double *loss = (double *)malloc(sizeof *loss * (size_t)nb + sizeof(float) * 2 * (size_t)nb);
    if (!loss) return false;
    float *pdf = (float *)(loss + nb);
    *alpha = kq_slim_search(counts, edge, pdf, pdf + nb, loss, nb, n, bits);
    free(loss);
    return true;
}

#endif /* !__CUDACC__ */
#endif
