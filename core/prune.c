/*
** core/prune.c: magnitude, Wanda and SparseGPT pruning (see prune.h, ALGORITHMS.md §2, §3.5).
** Tie rules: within an N:M group and within a Wanda row, equal metrics drop the lower column
** index first (a stable ascending sort); magnitude unstructured prunes everything <= the
** threshold value, as the reference does.
** Rows are independent in every per-row step, so those loops run on OpenMP threads: each row's
** result is computed exactly as on one thread (no reduction crosses rows).
*/
#include "prune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many weights a parallel region costs more than the per-row work it spreads. */
#define PRUNE_PAR_MIN (1 << 14)

/* ---- helpers ---- */

void prune_shift_scaler(float *s, int n)
{
    float c = INFINITY;
    for (int j = 0; j < n; j++) c = fminf(c, s[j] == 0 ? 1.0f : s[j]);
    for (int j = 0; j < n; j++) s[j] += c;
}

struct keyed { float v; int j; };

static int keyed_asc(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return x->j - y->j;
}

static int float_asc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* In each group of m consecutive entries of metric row t (stride 1), mark the m-n smallest. */
static void nm_row(uint8_t *mask, const float *t, int len, int n, int m)
{
    struct keyed g[256];
    for (int c0 = 0; c0 + m <= len; c0 += m) {
        for (int k = 0; k < m; k++) { g[k].v = t[c0 + k]; g[k].j = k; }
        qsort(g, (size_t)m, sizeof *g, keyed_asc);
        for (int k = 0; k < m - n; k++) mask[c0 + g[k].j] = 1;
    }
}

static int check_opts(const struct prune_opts *o, int d_in, struct slm_err *err)
{
    if (o->version != PRUNE_OPTS_VERSION) return slm_err_set(err, SLM_EINVAL, "prune_opts: version %d", o->version);
    if (!(o->sparsity >= 0 && o->sparsity < 1)) return slm_err_set(err, SLM_EINVAL, "sparsity %g not in [0, 1)", o->sparsity);
    if (o->m) {
        if (o->n <= 0 || o->n >= o->m || o->m > 256) return slm_err_set(err, SLM_EINVAL, "N:M pattern %d:%d", o->n, o->m);
        if (d_in % o->m) return slm_err_set(err, SLM_ESHAPE, "N:M pattern %d:%d: %d input columns", o->n, o->m, d_in);
    }
    return 0;
}

/* ---- magnitude / Wanda ---- */

/* Per-row selection on metric t: N:M groups, or exactly floor(d_in * sparsity) per row in stable
** ascending order (Wanda). */
static int mask_rows(uint8_t *mask, const float *t, int d_out, int d_in, const struct prune_opts *o, struct slm_err *err)
{
    bool par = (size_t)d_out * d_in >= PRUNE_PAR_MIN;
    if (o->m) {
#pragma omp parallel for schedule(static) if (par)
        for (int r = 0; r < d_out; r++) nm_row(mask + (size_t)r * d_in, t + (size_t)r * d_in, d_in, o->n, o->m);
        return 0;
    }
    int k = (int)floor((double)d_in * o->sparsity), nthr = 1;
#ifdef _OPENMP
    if (par) nthr = omp_get_max_threads();
#endif
    struct keyed *rows = malloc(sizeof *rows * (size_t)d_in * nthr);   /* one sort buffer per thread */
    if (!rows) return slm_err_set(err, SLM_ENOMEM, "prune: out of memory");
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthr) if (nthr > 1)
    for (int r = 0; r < d_out; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        struct keyed *row = rows + (size_t)tid * d_in;
        for (int c = 0; c < d_in; c++) { row[c].v = t[(size_t)r * d_in + c]; row[c].j = c; }
        qsort(row, (size_t)d_in, sizeof *row, keyed_asc);
        for (int c = 0; c < k; c++) mask[(size_t)r * d_in + row[c].j] = 1;
    }
    free(rows);
    return 0;
}

int prune_mask_metric(uint8_t *mask, const float *metric, int d_out, int d_in, const struct prune_opts *o,
                      struct slm_err *err)
{
    int rc = check_opts(o, d_in, err);
    if (rc) return rc;
    memset(mask, 0, (size_t)d_out * d_in);
    return mask_rows(mask, metric, d_out, d_in, o, err);
}

int prune_mask_host(uint8_t *mask, const float *w, const float *s, int d_out, int d_in,
                    const struct prune_opts *o, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    float *t = malloc(sizeof *t * n);
    int rc = check_opts(o, d_in, err);
    if (rc) goto done;
    if (!t) { rc = slm_err_set(err, SLM_ENOMEM, "prune %dx%d: out of memory", d_out, d_in); goto done; }
    memset(mask, 0, n);
#pragma omp parallel for schedule(static) if (n >= PRUNE_PAR_MIN)
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            t[i] = s ? fabsf(w[i]) * sqrtf(s[c]) : fabsf(w[i]);
        }
    if (o->m || s) {
        rc = mask_rows(mask, t, d_out, d_in, o, err);
    } else {
        /* magnitude: one threshold for the whole matrix */
        float *sorted = malloc(sizeof *sorted * n);
        if (!sorted) { rc = slm_err_set(err, SLM_ENOMEM, "prune %dx%d: out of memory", d_out, d_in); goto done; }
        memcpy(sorted, t, sizeof *t * n);
        qsort(sorted, n, sizeof *sorted, float_asc);
        size_t k = (size_t)floor((double)n * o->sparsity);
        float thr = sorted[k < n ? k : n - 1];
        free(sorted);
        if (o->sparsity > 0)
            for (size_t i = 0; i < n; i++) mask[i] = t[i] <= thr;
    }
done:
    free(t);
    return rc;
}

int prune_weight(struct kbackend *kb, float *w, const float *s, int d_out, int d_in,
                 const struct prune_opts *o, uint8_t *mask, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    float *h = malloc(sizeof *h * n);
    uint8_t *mk = mask ? mask : malloc(n);
    int rc;
    if (!h || !mk) { rc = slm_err_set(err, SLM_ENOMEM, "prune %dx%d: out of memory", d_out, d_in); goto done; }
    if ((rc = kb_download(kb, h, w, sizeof *h * n, err))) goto done;
    if ((rc = prune_mask_host(mk, h, o->method == PRUNE_WANDA ? s : NULL, d_out, d_in, o, err))) goto done;
    for (size_t i = 0; i < n; i++)
        if (mk[i]) h[i] = 0;
    rc = kb_upload(kb, w, h, sizeof *h * n, err);
done:
    free(h);
    if (mk != mask) free(mk);
    return rc;
}

/* ---- SparseGPT (§2.3) ---- */

struct sgpt {
    int d_out, d_in, bits, group;
    float *W;          /* host [d_out x d_in], mirrors the backend weight between steps */
    float *Hinv;       /* host [d_in x d_in] upper Cholesky factor of H^-1 */
    float *step;       /* OPTQ steps: 1, d_out, or d_out x ngroups */
    int ngroups;
};

static inline float *step_of(struct sgpt *g, int r, int col)
{
    if (g->group > 0) return &g->step[(size_t)r * g->ngroups + col / g->group];
    return &g->step[g->group == -1 ? r : 0];
}

/* Prepare H in place on the backend: dead columns, damping, then H <- chol_upper(H^-1). */
static int sgpt_hinv(struct kbackend *kb, struct sgpt *g, float *H, double damp, struct slm_err *err)
{
    int n = g->d_in, rc;
    size_t nb = sizeof(float) * (size_t)n * n;
    if (!kb->iface->spd_inverse || !kb->iface->cholesky_upper)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SparseGPT needs spd_inverse and cholesky_upper on backend %s", kb_name(kb));
    if ((rc = kb_download(kb, g->Hinv, H, nb, err))) return rc;
    double mean = 0;
    for (int j = 0; j < n; j++) {
        float *d = &g->Hinv[(size_t)j * n + j];
        if (*d == 0) {
            *d = 1;
            for (int r = 0; r < g->d_out; r++) g->W[(size_t)r * n + j] = 0;
        }
        mean += *d;
    }
    float add = (float)(damp * mean / n);
    for (int j = 0; j < n; j++) g->Hinv[(size_t)j * n + j] += add;
    if ((rc = kb_upload(kb, H, g->Hinv, nb, err))) return rc;
    if ((rc = kb->iface->spd_inverse(kb, H, n, err))) return rc;
    if ((rc = kb->iface->cholesky_upper(kb, H, n, err))) return rc;
    return kb_download(kb, g->Hinv, H, nb, err);
}

/* One column block [i1, i2) of the OBS loop on host W; Err (host [d_out x cnt]) gets the scaled errors. */
static int sgpt_block(struct sgpt *g, const struct prune_opts *o, int i1, int i2, float *Err, uint8_t *mblk,
                      uint8_t *mask, struct slm_err *err)
{
    int cnt = i2 - i1, n = g->d_in, d_out = g->d_out;
    float *W = g->W;
    const float *Hv = g->Hinv;
    memset(mblk, 0, (size_t)d_out * cnt);
    if (!o->m && o->sparsity > 0) {
        size_t nt = (size_t)d_out * cnt;
        float *T = malloc(sizeof *T * nt * 2);
        if (!T) return slm_err_set(err, SLM_ENOMEM, "SparseGPT: out of memory");
        for (int r = 0; r < d_out; r++)
            for (int c = 0; c < cnt; c++) {
                float d = Hv[(size_t)(i1 + c) * n + i1 + c], v = W[(size_t)r * n + i1 + c];
                T[(size_t)r * cnt + c] = v * v / (d * d);
            }
        memcpy(T + nt, T, sizeof *T * nt);
        qsort(T + nt, nt, sizeof *T, float_asc);
        size_t k = (size_t)floor((double)nt * o->sparsity);
        float thr = T[nt + (k < nt ? k : nt - 1)];
        for (size_t i = 0; i < nt; i++) mblk[i] = T[i] <= thr;
        free(T);
    }
    for (int i = 0; i < cnt; i++) {
        int col = i1 + i;
        float dd = Hv[(size_t)col * n + col];
        if (o->m && i % o->m == 0) {
            float t[256];
            int mm = i + o->m <= cnt ? o->m : cnt - i;
            for (int r = 0; r < d_out; r++) {
                for (int k = 0; k < mm; k++) {
                    float d = Hv[(size_t)(col + k) * n + col + k], v = W[(size_t)r * n + col + k];
                    t[k] = v * v / (d * d);
                }
                nm_row(mblk + (size_t)r * cnt + i, t, mm, o->n * mm / o->m, mm);
            }
        }
        if (g->group > 0 && col % g->group == 0) {
            int gc = col + g->group <= n ? g->group : n - col;
            for (int r = 0; r < d_out; r++) quant_optq_fit(step_of(g, r, col), W + (size_t)r * n + col, 1, gc, n, false, g->bits);
        }
        for (int r = 0; r < d_out; r++) {
            float w = W[(size_t)r * n + col], q = mblk[(size_t)r * cnt + i] ? 0 : w;
            if (g->bits && q != 0) q = quant_optq_apply(q, *step_of(g, r, col), g->bits);
            float e = (w - q) / dd;
            W[(size_t)r * n + col] = q;
            float *row = W + (size_t)r * n;
            const float *hrow = Hv + (size_t)col * n;
            for (int c = col + 1; c < i2; c++) row[c] -= e * hrow[c];
            Err[(size_t)r * cnt + i] = e;
            if (mask) mask[(size_t)r * n + col] = mblk[(size_t)r * cnt + i];
        }
    }
    return 0;
}

int prune_sparsegpt(struct kbackend *kb, float *w, float *H, int d_out, int d_in, const struct prune_opts *o,
                    uint8_t *mask, int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    struct sgpt g = { d_out, d_in, o->optq_bits, o->optq_group, NULL, NULL, NULL, 0 };
    int B = o->blocksize > 0 ? o->blocksize : 128;
    size_t nw = (size_t)d_out * d_in;
    float *Err = NULL, *errb = NULL;
    uint8_t *mblk = NULL;
    int rc = check_opts(o, d_in, err);
    if (rc) return rc;
    if (o->m && B % o->m) return slm_err_set(err, SLM_EINVAL, "SparseGPT block %d is not a multiple of M=%d", B, o->m);
    if (g.bits && (g.bits < 2 || g.bits > 8)) return slm_err_set(err, SLM_EINVAL, "OPTQ: %d bits", g.bits);
    g.ngroups = g.group > 0 ? (d_in + g.group - 1) / g.group : 1;
    size_t nstep = g.group > 0 ? (size_t)d_out * g.ngroups : g.group == -1 ? (size_t)d_out : 1;
    g.W = malloc(sizeof *g.W * nw);
    g.Hinv = malloc(sizeof *g.Hinv * (size_t)d_in * d_in);
    g.step = malloc(sizeof *g.step * nstep);
    Err = malloc(sizeof *Err * (size_t)d_out * B);
    mblk = malloc((size_t)d_out * B);
    if (!g.W || !g.Hinv || !g.step || !Err || !mblk) { rc = slm_err_set(err, SLM_ENOMEM, "SparseGPT %dx%d: out of memory", d_out, d_in); goto done; }
    if ((rc = kb_alloc(kb, (void **)&errb, sizeof *Err * (size_t)d_out * B, err))) goto done;
    if ((rc = kb_download(kb, g.W, w, sizeof *g.W * nw, err))) goto done;
    /* OPTQ parameters come from the dense weight, before pruning (§3.5) */
    if (g.bits && g.group <= 0) quant_optq_fit(g.step, g.W, d_out, d_in, d_in, g.group == -1, g.bits);
    if ((rc = sgpt_hinv(kb, &g, H, o->damp, err))) goto done;
    for (int i1 = 0; i1 < d_in; i1 += B) {
        int i2 = i1 + B < d_in ? i1 + B : d_in, cnt = i2 - i1;
        if ((rc = sgpt_block(&g, o, i1, i2, Err, mblk, mask, err))) goto done;
        if ((rc = kb_upload(kb, w, g.W, sizeof *g.W * nw, err))) goto done;
        if (i2 < d_in) {
            /* lazy update of the remaining columns: W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:] */
            if ((rc = kb_upload(kb, errb, Err, sizeof *Err * (size_t)d_out * cnt, err))) goto done;
            struct kgemm_args ga = { .ta = KB_N, .tb = KB_N, .m = d_out, .n = d_in - i2, .k = cnt,
                                     .alpha = -1.0f, .beta = 1.0f, .a = errb, .lda = cnt,
                                     .b = H + (size_t)i1 * d_in + i2, .ldb = d_in,
                                     .c = w + i2, .ldc = d_in, .batch = 1 };
            if ((rc = kb->iface->gemm(kb, &ga, err))) goto done;
            if ((rc = kb_download(kb, g.W, w, sizeof *g.W * nw, err))) goto done;
        }
    }
    if (g.bits && (codes || params)) {
        for (int r = 0; r < d_out; r++)
            for (int c = 0; c < d_in; c++) {
                size_t i = (size_t)r * d_in + c;
                float st = *step_of(&g, r, c);
                if (codes) codes[i] = (int8_t)nearbyintf(g.W[i] / st);
            }
        if (params) {
            params->kind = QK_STEP;
            params->bits = g.bits;
            params->rows = g.group == 0 ? 1 : d_out;
            params->cols = g.group > 0 ? g.ngroups : 1;
            params->group_rows = g.group == 0 ? d_out : 1;
            params->group_cols = g.group > 0 ? g.group : d_in;
            params->bf16 = false;
            params->scale = g.step;
            g.step = NULL;   /* now owned by params */
        }
    }
done:
    kb_release(kb, errb);
    free(g.W);
    free(g.Hinv);
    free(g.step);
    free(Err);
    free(mblk);
    return rc;
}
