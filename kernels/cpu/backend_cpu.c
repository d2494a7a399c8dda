/*
** kernels/cpu/backend_cpu.c: the CPU backend, and the reference every other backend is tested
** against. GEMMs go to OpenBLAS (cblas_sgemm), factorizations to LAPACKE, element-wise and row
** ops are plain loops parallelised with OpenMP. Memory is ordinary host memory.
** Memory accounting: every kb_alloc buffer carries its size in a 64-byte header in front of it
** (alignment kept), so kb_release can subtract it; a budget (set_limit) fails allocations that
** would exceed it, which lets tests drive the out-of-memory paths on the CPU.
** Ownership: ctx holds a scratch buffer for attention scores, grown on demand, freed with kb.
*/
#include "../kbackend.h"
#include "../kbackend_impl.h"
#include "../kquant.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

struct cpu_ctx {
    float *scratch;      /* attention scores, one [chunk x T] block per thread */
    size_t scratch_n;
    uint64_t in_use, peak, limit;   /* bytes of live kb_alloc buffers; limit 0 = none */
};

#define CPU_HDR 64       /* size header in front of each buffer; keeps the 64-byte alignment */

static const char *cpu_name(struct kbackend *kb) { (void)kb; return "cpu"; }

static void cpu_free(struct kbackend *kb)
{
    struct cpu_ctx *c = kb->ctx;
    if (c) free(c->scratch);
    free(c);
    free(kb);
}

static int cpu_alloc(struct kbackend *kb, void **out, size_t n, struct slm_err *err)
{
    struct cpu_ctx *c = kb->ctx;
    if (c->limit && (n > c->limit || c->in_use > c->limit - n))
        return kmem_oom(err, "cpu", "backend", NULL, n, c->in_use, c->limit, -1, -1);
    /* 64-byte alignment keeps BLAS and vector loops on full cache lines */
    size_t rounded = (n + 63) & ~(size_t)63;
    if (rounded < n || rounded > SIZE_MAX - CPU_HDR) return slm_err_set(err, SLM_ENOMEM, "cpu: cannot allocate %zu bytes", n);
    unsigned char *p = aligned_alloc(64, rounded + CPU_HDR);
    if (!p) return slm_err_set(err, SLM_ENOMEM, "cpu: cannot allocate %zu bytes", n);
    memcpy(p, &n, sizeof n);
    c->in_use += n;
    if (c->in_use > c->peak) c->peak = c->in_use;
    *out = p + CPU_HDR;
    return 0;
}

static void cpu_release(struct kbackend *kb, void *p)
{
    struct cpu_ctx *c = kb->ctx;
    unsigned char *h = (unsigned char *)p - CPU_HDR;
    size_t n;
    memcpy(&n, h, sizeof n);
    c->in_use -= n;
    free(h);
}

static int cpu_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err)
{
    (void)err;
    struct cpu_ctx *c = kb->ctx;
    *out = (struct kmem_stats){ (int64_t)c->in_use, (int64_t)c->peak, 0, (int64_t)c->limit, -1, -1 };
    if (reset_peak) c->peak = c->in_use;
    return 0;
}

static int cpu_set_limit(struct kbackend *kb, size_t bytes, struct slm_err *err)
{
    (void)err;
    ((struct cpu_ctx *)kb->ctx)->limit = bytes;
    return 0;
}

static int cpu_memcpy(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    if (n) memmove(dst, src, n);
    return 0;
}

static int cpu_sync(struct kbackend *kb, struct slm_err *err) { (void)kb; (void)err; return 0; }

static int cpu_gemm(struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err)
{
    (void)kb;
    if (a->m < 0 || a->n < 0 || a->k < 0 || a->batch < 1)
        return slm_err_set(err, SLM_EINVAL, "gemm: bad sizes m=%d n=%d k=%d batch=%d", a->m, a->n, a->k, a->batch);
    for (int i = 0; i < a->batch; i++)
        cblas_sgemm(CblasRowMajor, a->ta == KB_T ? CblasTrans : CblasNoTrans,
                    a->tb == KB_T ? CblasTrans : CblasNoTrans, a->m, a->n, a->k, a->alpha,
                    a->a + i * a->stride_a, a->lda, a->b + i * a->stride_b, a->ldb, a->beta,
                    a->c + i * a->stride_c, a->ldc);
    return 0;
}

static int cpu_layernorm(struct kbackend *kb, float *y, const float *x, const float *w, const float *b,
                         int rows, int cols, float eps, struct slm_err *err)
{
    (void)kb; (void)err;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        double mean = 0, var = 0;
        for (int c = 0; c < cols; c++) mean += xr[c];
        mean /= cols;
        for (int c = 0; c < cols; c++) { double d = xr[c] - mean; var += d * d; }
        var /= cols;
        float inv = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
        for (int c = 0; c < cols; c++) {
            float v = (xr[c] - m) * inv;
            if (w) v *= w[c];
            if (b) v += b[c];
            yr[c] = v;
        }
    }
    return 0;
}

static int cpu_rmsnorm(struct kbackend *kb, float *y, const float *x, const float *w, int rows, int cols,
                       float divisor, float eps, struct slm_err *err)
{
    (void)kb; (void)err;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        double ss = 0;
        for (int c = 0; c < cols; c++) ss += (double)xr[c] * xr[c];
        float inv = (float)(1.0 / sqrt(ss / divisor + eps));
        for (int c = 0; c < cols; c++) yr[c] = w ? w[c] * (xr[c] * inv) : xr[c] * inv;
    }
    return 0;
}

static int cpu_add_bias(struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld,
                        struct slm_err *err)
{
    (void)kb; (void)err;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) y[(size_t)r * ld + c] += bias[c];
    return 0;
}

static int cpu_add(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    for (size_t i = 0; i < n; i++) y[i] += x[i];
    return 0;
}

static int cpu_mul(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    for (size_t i = 0; i < n; i++) y[i] *= x[i];
    return 0;
}

static int cpu_scale(struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    for (size_t i = 0; i < n; i++) y[i] *= s;
    return 0;
}

/* Same rounding as core/dtype.c f32_to_bf16 (kernels do not link core/). */
void kcpu_round_bf16(float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = kq_bf16(y[i]);
}

static int cpu_round_bf16(struct kbackend *kb, float *y, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    kcpu_round_bf16(y, n);
    return 0;
}

float kcpu_act1(float v, enum kact act)
{
    switch (act) {
    case KACT_RELU: return v > 0 ? v : 0;
    case KACT_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    case KACT_GELU_ERF: return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    case KACT_SILU: return v / (1.0f + expf(-v));
    }
    return v;
}

static int cpu_act(struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err)
{
    (void)kb;
    if ((unsigned)act > KACT_SILU) return slm_err_set(err, SLM_EINVAL, "act: unknown activation %d", (int)act);
    for (size_t i = 0; i < n; i++) y[i] = kcpu_act1(x[i], act);
    return 0;
}

static int cpu_rope(struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
                    const float *inv_freq, struct slm_err *err)
{
    (void)kb;
    if (rot_dim <= 0 || rot_dim > hd || (rot_dim & 1) || T <= 0)
        return slm_err_set(err, SLM_EINVAL, "rope: bad rot_dim %d for head_dim %d", rot_dim, hd);
    int half = rot_dim / 2;
    for (int r = 0; r < rows; r++) {
        float pos = (float)(r % T);
        for (int i = 0; i < half; i++) {
            float ang = pos * inv_freq[i];
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < nheads; h++) {
                float *p = x + (size_t)r * ld + (size_t)h * hd;
                float a = p[i], b = p[i + half];
                p[i] = a * c - b * s;
                p[i + half] = b * c + a * s;
            }
        }
    }
    return 0;
}

/* Scores are computed in row chunks so that the causal upper triangle is mostly skipped and the
** scratch stays [chunk x T] per thread. Heads are spread over OpenMP threads, each running
** single-threaded sgemm: one parallel region per call, because alternating OpenMP regions with
** OpenBLAS's own threads makes each wait on the other's spinning workers. */
#define ATTN_CHUNK 256
/* Below this many multiply-adds a parallel region costs more (idle workers spin, competing with
** OpenBLAS's threads) than it saves: small models run these ops on one thread. */
#define KCPU_PAR_MIN (1 << 24)

/* Columns are processed in strips of KCPU_STRIP, each strip walking the rows in order: every
** column sees exactly the sequence of f32 / f64 operations of the plain column-by-column loop the
** statistics were defined with (so any strip width or thread count gives the same bits), while
** the reads stay row-contiguous. */
#define KCPU_STRIP 64

void kcpu_col_stats(float *scaler, double *abssum, const float *x, int rows, int cols, int nseq)
{
    float nn = (float)nseq;
    int nstrip = (cols + KCPU_STRIP - 1) / KCPU_STRIP;
#pragma omp parallel for schedule(static) if ((double)rows * cols >= KCPU_PAR_MIN)
    for (int st = 0; st < nstrip; st++) {
        int j0 = st * KCPU_STRIP, nw = cols - j0 < KCPU_STRIP ? cols - j0 : KCPU_STRIP;
        float sq[KCPU_STRIP] = { 0 };
        double as[KCPU_STRIP];
        for (int k = 0; k < nw; k++) as[k] = abssum[j0 + k];
        for (int t = 0; t < rows; t++) {
            const float *xr = x + (size_t)t * cols + j0;
            for (int k = 0; k < nw; k++) {
                float v = xr[k];
                sq[k] += v * v;
                as[k] += fabsf(v);
            }
        }
        for (int k = 0; k < nw; k++) {
            scaler[j0 + k] = scaler[j0 + k] * nn / (nn + 1) + sq[k] / (nn + 1);
            abssum[j0 + k] = as[k];
        }
    }
}

static int cpu_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                         struct slm_err *err)
{
    (void)kb;
    if (rows < 0 || cols < 0) return slm_err_set(err, SLM_EINVAL, "col_stats: bad shape %d x %d", rows, cols);
    kcpu_col_stats(scaler, abssum, x, rows, cols, nseq);
    return 0;
}

static void attn_head(const struct kattn_args *a, int b, int h, float *S, float *inv)
{
    int T = a->T, chunk = T < ATTN_CHUNK ? T : ATTN_CHUNK, g = a->H / a->Hkv;
    const float *q = a->q + (size_t)b * T * a->q_stride + (size_t)h * a->hd;
    const float *k = a->k + (size_t)b * T * a->kv_stride + (size_t)(h / g) * a->hd;
    const float *v = a->v + (size_t)b * T * a->kv_stride + (size_t)(h / g) * a->hd;
    float *o = a->out + (size_t)b * T * a->out_stride + (size_t)h * a->hd;
    for (int r0 = 0; r0 < T; r0 += chunk) {
        int nr = T - r0 < chunk ? T - r0 : chunk, ncol = r0 + nr;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, ncol, a->hd, a->scale,
                    q + (size_t)r0 * a->q_stride, a->q_stride, k, a->kv_stride, 0.0f, S, ncol);
        for (int i = 0; i < nr; i++) {
            float *s = S + (size_t)i * ncol;
            int last = r0 + i; /* inclusive causal limit */
            float mx = -INFINITY;
            for (int j = 0; j <= last; j++) mx = s[j] > mx ? s[j] : mx;
            float sum = 0;
            for (int j = 0; j <= last; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
            inv[i] = 1.0f / sum;   /* normalise the output row instead of the T scores */
            for (int j = last + 1; j < ncol; j++) s[j] = 0.0f;
        }
        float *orow = o + (size_t)r0 * a->out_stride;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, a->hd, ncol, 1.0f, S, ncol,
                    v, a->kv_stride, 0.0f, orow, a->out_stride);
        for (int i = 0; i < nr; i++)
            for (int d = 0; d < a->hd; d++) orow[(size_t)i * a->out_stride + d] *= inv[i];
    }
}

static int cpu_attention(struct kbackend *kb, const struct kattn_args *a, struct slm_err *err)
{
    struct cpu_ctx *c = kb->ctx;
    if (a->Hkv <= 0 || a->H % a->Hkv)
        return slm_err_set(err, SLM_EINVAL, "attention: %d heads not a multiple of %d kv heads", a->H, a->Hkv);
    int T = a->T, chunk = T < ATTN_CHUNK ? T : ATTN_CHUNK, nthr = 1;
#ifdef _OPENMP
    if ((double)a->B * a->H * T * T * a->hd >= KCPU_PAR_MIN) nthr = omp_get_max_threads();
#endif
    size_t per = (size_t)chunk * T + ATTN_CHUNK, need = per * nthr;  /* scores + row scales */
    if (c->scratch_n < need) {
        free(c->scratch);
        c->scratch = malloc(need * sizeof(float));
        c->scratch_n = c->scratch ? need : 0;
        if (!c->scratch) return slm_err_set(err, SLM_ENOMEM, "attention: scratch of %zu floats", need);
    }
    int blas_threads = openblas_get_num_threads(), jobs = a->B * a->H;
    if (nthr > 1) openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr)
    for (int j = 0; j < jobs; j++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *S = c->scratch + per * tid;
        attn_head(a, j / a->H, j % a->H, S, S + (size_t)chunk * T);
    }
    if (nthr > 1) openblas_set_num_threads(blas_threads);
    return 0;
}

static int cpu_cross_entropy(struct kbackend *kb, float *nll, const float *logits, const int32_t *targets,
                             int rows, int vocab, struct slm_err *err)
{
    (void)kb; (void)err;
#pragma omp parallel for schedule(static) if ((double)rows * vocab >= KCPU_PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *l = logits + (size_t)r * vocab;
        int t = targets[r];
        if (t < 0 || t >= vocab) { nll[r] = 0; continue; }
        float mx = -INFINITY;
        for (int j = 0; j < vocab; j++) mx = l[j] > mx ? l[j] : mx;
        /* expf of values <= 0 is exact to an ulp; the sum is kept in double */
        double sum = 0;
        for (int j = 0; j < vocab; j++) sum += expf(l[j] - mx);
        nll[r] = (float)(log(sum) + mx - l[t]);
    }
    return 0;
}

static int cpu_eigh_f64(struct kbackend *kb, double *a, double *w, int n, struct slm_err *err)
{
    (void)kb;
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, a, n, w);
    if (info != 0) return slm_err_set(err, SLM_ENUMERIC, "eigh: dsyevd info=%d (n=%d)", (int)info, n);
    return 0;
}

static int cpu_gram_f64(struct kbackend *kb, double *c, const float *x, int rows, int n, struct slm_err *err)
{
    (void)kb;
    enum { CHUNK = 256 };   /* rows converted to f64 per dsyrk call */
    double *xd = malloc((size_t)CHUNK * n * sizeof(double));
    if (!xd) return slm_err_set(err, SLM_ENOMEM, "gram: %d x %d doubles", CHUNK, n);
    for (int r0 = 0; r0 < rows; r0 += CHUNK) {
        int nr = rows - r0 < CHUNK ? rows - r0 : CHUNK;
        const float *xs = x + (size_t)r0 * n;
        for (size_t i = 0; i < (size_t)nr * n; i++) xd[i] = xs[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, nr, 1.0, xd, n, 1.0, c, n);
    }
    free(xd);
    return 0;
}

static int cpu_cholesky_upper(struct kbackend *kb, float *a, int n, struct slm_err *err)
{
    (void)kb;
    lapack_int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', n, a, n);
    if (info > 0) return slm_err_set(err, SLM_ENUMERIC, "cholesky: matrix not positive definite (minor %d of %d)", (int)info, n);
    if (info < 0) return slm_err_set(err, SLM_EINVAL, "cholesky: spotrf argument %d", (int)-info);
    for (int i = 1; i < n; i++) memset(a + (size_t)i * n, 0, (size_t)i * sizeof(float));
    return 0;
}

static int cpu_spd_inverse(struct kbackend *kb, float *a, int n, struct slm_err *err)
{
    (void)kb;
    lapack_int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', n, a, n);
    if (info > 0) return slm_err_set(err, SLM_ENUMERIC, "spd_inverse: matrix not positive definite (minor %d of %d)", (int)info, n);
    info = LAPACKE_spotri(LAPACK_ROW_MAJOR, 'U', n, a, n);
    if (info != 0) return slm_err_set(err, SLM_ENUMERIC, "spd_inverse: spotri info=%d", (int)info);
    for (int i = 1; i < n; i++) /* mirror the upper triangle */
        for (int j = 0; j < i; j++) a[(size_t)i * n + j] = a[(size_t)j * n + i];
    return 0;
}

static int cpu_svd(struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt,
                   struct slm_err *err)
{
    (void)kb;
    int r = m < n ? m : n;
    float *tmp = malloc((size_t)m * n * sizeof(float));
    if (!tmp) return slm_err_set(err, SLM_ENOMEM, "svd: %dx%d copy", m, n);
    memcpy(tmp, a, (size_t)m * n * sizeof(float));
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, tmp, n, s, u, r, vt, n);
    free(tmp);
    if (info != 0) return slm_err_set(err, SLM_ENUMERIC, "svd: sgesdd info=%d (%dx%d)", (int)info, m, n);
    return 0;
}

/* ---- SLiM pruning and quantization: the loops of kernels/kquant.h, as core's host path ---- */

static int cpu_prune_nm(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in,
                        int n, int m, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_nm(d_out, d_in, n, m, err);
    if (rc) return rc;
    for (int r = 0; r < d_out; r++)
        kq_prune_nm_row(w + (size_t)r * d_in, mask + (size_t)r * d_in, s, d_in, n, m, true);
    return 0;
}

static int cpu_absmax_groups(struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows,
                             int gcols, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_groups(d_out, d_in, grows, gcols, err);
    if (rc) return rc;
    kq_absmax_groups(amax, w, d_out, d_in, grows, gcols);
    return 0;
}

static int cpu_abs_range(struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    kq_abs_range(lo_hi, a, n);
    return 0;
}

static int cpu_abs_histogram(struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                             const float *edge, int nb, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_bins(nb, err);
    if (rc) return rc;
    kq_abs_histogram(counts, a, n, lo, hi, edge, nb);
    return 0;
}

static int cpu_quant_apply(struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in,
                           const struct kquant_args *q, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_quant(q, d_out, d_in, err);
    if (!rc) kq_quant(w, codes, d_out, d_in, q);
    return rc;
}

static int cpu_quant_dequant(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                             const struct kquant_args *q, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_quant(q, d_out, d_in, err);
    if (!rc) kq_dequant(w, codes, d_out, d_in, q);
    return rc;
}

/* ---- the compress flow ---- */

static int cpu_apply_mask(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) w[i] = 0;
    return 0;
}

/* ---- unstructured pruning and measured sparsity ---- */

static int cpu_prune_rows(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                          struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    int rc = kq_check_rows(d_out, d_in, k, err);
    if (rc || !n) return rc;
    float *t = malloc(sizeof *t * n);
    if (!t) return slm_err_set(err, SLM_ENOMEM, "prune_rows %dx%d: out of memory", d_out, d_in);
    kq_prune_metrics(t, w, s, d_out, d_in);
    if (!(rc = kq_select_rows(mask, t, d_out, d_in, k, err))) rc = cpu_apply_mask(kb, w, mask, n, err);
    free(t);
    return rc;
}

static int cpu_abs_kth(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_kth(n, k, err);
    if (rc) return rc;
    uint32_t *keys = malloc(sizeof *keys * n);
    if (!keys) return slm_err_set(err, SLM_ENOMEM, "abs_kth: %zu keys: out of memory", n);
    *kth = kq_kth_abs(keys, a, n, k);
    free(keys);
    return 0;
}

static int cpu_prune_abs_le(struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err)
{
    (void)kb; (void)err;
    kq_prune_abs_le(w, mask, n, thr);
    return 0;
}

static int cpu_count_zeros(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err)
{
    (void)kb; (void)err;
    *count = kq_count_zeros(a, n);
    return 0;
}

static int cpu_slim_search(struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb,
                           size_t n, int bits, struct slm_err *err)
{
    (void)kb;
    int rc = kq_check_search(nb, n, bits, err);
    if (rc) return rc;
    if (!kq_slim_search_alloc(alpha, counts, edge, nb, n, bits))
        return slm_err_set(err, SLM_ENOMEM, "slim_search: scratch of %d bins", nb);
    return 0;
}

static const struct kbackend_i cpu_iface = {
    .name = cpu_name,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .layernorm = cpu_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .add_bias = cpu_add_bias,
    .add = cpu_add,
    .mul = cpu_mul,
    .act = cpu_act,
    .scale = cpu_scale,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .cross_entropy = cpu_cross_entropy,
    .eigh_f64 = cpu_eigh_f64,
    .cholesky_upper = cpu_cholesky_upper,
    .spd_inverse = cpu_spd_inverse,
    .svd = cpu_svd,
    .gram_f64 = cpu_gram_f64,
    .round_bf16 = cpu_round_bf16,
    /* --- added for GPU SparseGPT (optional) --- */
    .sparsegpt_block = kcpu_sparsegpt_block,
    /* --- added for GPU SLiM pruning and quantization (optional) --- */
    .prune_nm = cpu_prune_nm,
    .absmax_groups = cpu_absmax_groups,
    .abs_range = cpu_abs_range,
    .abs_histogram = cpu_abs_histogram,
    .quant_apply = cpu_quant_apply,
    .quant_dequant = cpu_quant_dequant,
    /* --- added for GPU calibration statistics and embedding gather (optional) --- */
    .col_stats = cpu_col_stats,
    .gather_rows = NULL,   /* host memory: model_embed gathers from the host table directly */
    /* --- added for memory accounting and budgets (optional) --- */
    .mem_stats = cpu_mem_stats,
    .set_limit = cpu_set_limit,
    .host_alloc = NULL,       /* plain malloc (kb_host_alloc's fallback): host memory is all there is */
    .host_free = NULL,
    /* --- added for the GPU compress flow (optional) --- */
    .apply_mask = cpu_apply_mask,
    /* --- added for GPU unstructured pruning and measured sparsity (optional) --- */
    .prune_rows = cpu_prune_rows,
    .abs_kth = cpu_abs_kth,
    .prune_abs_le = cpu_prune_abs_le,
    .count_zeros = cpu_count_zeros,
    /* --- added for block uploads overlapped with compute (optional) --- */
    /* none: host memory is backend memory, a copy would overlap nothing and only hold a second
    ** block against the budget */
    .copy_after_queued = NULL,
    .upload_async = NULL,
    .copy_sync = NULL,
    /* --- added for SLiM-Quant's search on the backend (optional) --- */
    .slim_search = cpu_slim_search,
};

int kbackend_cpu_open(struct kbackend **out, struct slm_err *err)
{
    struct kbackend *kb = calloc(1, sizeof *kb);
    struct cpu_ctx *c = calloc(1, sizeof *c);
    if (!kb || !c) {
        free(kb);
        free(c);
        return slm_err_set(err, SLM_ENOMEM, "cpu backend: out of memory");
    }
    kb->api_version = KBACKEND_API_VERSION;
    kb->iface = &cpu_iface;
    kb->ctx = c;
    *out = kb;
    return 0;
}

const char *kbackend_cpu_info(void)
{
    static char buf[256];
    char *cfg = openblas_get_config();
    char *core = openblas_get_corename();
    int threads = openblas_get_num_threads();
    snprintf(buf, sizeof buf, "%s; core=%s; threads=%d", cfg ? cfg : "?", core ? core : "?", threads);
    return buf;
}
