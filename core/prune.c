/*
** core/prune.c: magnitude, Wanda and SparseGPT pruning (see prune.h, ALGORITHMS.md §2, §3.5).
** Tie rules: within an N:M group and within a Wanda row, equal metrics drop the lower column
** index first (a stable ascending sort; N:M through kq_nm_pruned, shared with the backends'
** prune_nm); magnitude unstructured prunes everything <= the threshold value, as the reference does.
** Rows are independent in every per-row step, so those loops run on OpenMP threads: each row's
** result is computed exactly as on one thread (no reduction crosses rows).
*/
#include "prune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kquant.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- helpers ---- */

void prune_shift_scaler(float *s, int n)
{
    float c = INFINITY;
    for (int j = 0; j < n; j++) c = fminf(c, s[j] == 0 ? 1.0f : s[j]);
    for (int j = 0; j < n; j++) s[j] += c;
}

/* In each group of m consecutive entries of metric row t (stride 1), mark the m-n smallest. */
static void nm_row(uint8_t *mask, const float *t, int len, int n, int m)
{
    for (int c0 = 0; c0 + m <= len; c0 += m)
        for (int k = 0; k < m; k++)
            if (kq_nm_pruned(t + c0, k, m, n)) mask[c0 + k] = 1;
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

/* Entries pruned per row by unstructured Wanda. */
static int rows_pruned(int d_in, const struct prune_opts *o)
{
    return (int)floor((double)d_in * o->sparsity);
}

/* Rank (from 0) of a global threshold among n metrics (magnitude, SparseGPT's unstructured
** blocks): floor(n * sparsity), the last entry at most; everything <= it goes, as the reference's
** sort-and-compare. */
static size_t threshold_rank(size_t n, double sparsity)
{
    size_t k = (size_t)floor((double)n * sparsity);
    return k < n ? k : n - 1;
}

/* o as the metric runs it: Wanda without a scaler row ranks |w| alone, i.e. magnitude. */
static struct prune_opts metric_opts(const struct prune_opts *o, const float *s)
{
    struct prune_opts e = *o;
    if (e.method == PRUNE_WANDA && !s) e.method = PRUNE_MAGNITUDE;
    return e;
}

/* Per-row selection on metric t: N:M groups, or exactly floor(d_in * sparsity) per row in stable
** ascending order (Wanda; kq_select_rows, the CPU backend's prune_rows). */
static int mask_rows(uint8_t *mask, const float *t, int d_out, int d_in, const struct prune_opts *o, struct slm_err *err)
{
    if (o->m) {
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
        for (int r = 0; r < d_out; r++) nm_row(mask + (size_t)r * d_in, t + (size_t)r * d_in, d_in, o->n, o->m);
        return 0;
    }
    return kq_select_rows(mask, t, d_out, d_in, rows_pruned(d_in, o), err);
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
    kq_prune_metrics(t, w, s, d_out, d_in);
    if (o->m || s) {
        rc = mask_rows(mask, t, d_out, d_in, o, err);
    } else {
        /* magnitude: one threshold for the whole matrix */
        if (o->sparsity > 0 && n) {
            uint32_t *keys = malloc(sizeof *keys * n);
            if (!keys) { rc = slm_err_set(err, SLM_ENOMEM, "prune %dx%d: out of memory", d_out, d_in); goto done; }
            float thr = kq_kth_abs(keys, t, n, threshold_rank(n, o->sparsity));
            free(keys);
            for (size_t i = 0; i < n; i++) mask[i] = t[i] <= thr;
        }
    }
done:
    free(t);
    return rc;
}

bool prune_on_backend(struct kbackend *kb, const struct prune_opts *o)
{
    const struct kbackend_i *f = kb->iface;
    if (o->method != PRUNE_MAGNITUDE && o->method != PRUNE_WANDA) return false;
    if (o->m) return f->prune_nm != NULL;
    return o->method == PRUNE_WANDA ? f->prune_rows != NULL : f->abs_kth && f->prune_abs_le;
}

int prune_weight_kb(struct kbackend *kb, float *w, const float *s, int d_out, int d_in, const struct prune_opts *o0,
                    uint8_t *d_mask, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    float *d_s = NULL, thr = -1;   /* |w| <= -1 holds for no weight: sparsity 0 prunes nothing */
    const struct prune_opts eo = metric_opts(o0, s), *o = &eo;
    int rc = check_opts(o, d_in, err);
    if (rc) return rc;
    if (!prune_on_backend(kb, o))
        return slm_err_set(err, SLM_EUNSUPPORTED, "prune: method %d, %s pattern: no op on backend %s", (int)o->method,
                           o->m ? "N:M" : "unstructured", kb_name(kb));
    bool wanda = o->method == PRUNE_WANDA;
    if (wanda && ((rc = kb_alloc(kb, (void **)&d_s, sizeof *d_s * (size_t)d_in, err)) ||
                  (rc = kb_upload(kb, d_s, s, sizeof *d_s * (size_t)d_in, err))))
        goto done;
    if (o->m) rc = kb->iface->prune_nm(kb, w, d_mask, d_s, d_out, d_in, o->n, o->m, err);
    else if (wanda) rc = kb->iface->prune_rows(kb, w, d_mask, d_s, d_out, d_in, rows_pruned(d_in, o), err);
    else if (!n) rc = 0;
    else if (!(o->sparsity > 0) || !(rc = kb_abs_kth(kb, &thr, w, n, threshold_rank(n, o->sparsity), err)))
        rc = kb->iface->prune_abs_le(kb, w, d_mask, n, thr, err);
done:
    kb_release(kb, d_s);
    return rc;
}

int prune_weight(struct kbackend *kb, float *w, const float *s, int d_out, int d_in,
                 const struct prune_opts *o, uint8_t *mask, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    int rc;
    struct prune_opts eo = metric_opts(o, s);
    if (prune_on_backend(kb, &eo)) {
        uint8_t *d_mask = NULL;
        if (!(rc = kb_alloc(kb, (void **)&d_mask, n, err)) &&
            !(rc = prune_weight_kb(kb, w, s, d_out, d_in, o, d_mask, err)) && mask)
            rc = kb_download(kb, mask, d_mask, n, err);
        kb_release(kb, d_mask);
        return rc;
    }
    float *h = malloc(sizeof *h * n);
    uint8_t *mk = mask ? mask : malloc(n);
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

/* Prepare H in place on the backend: dead columns (H_jj = 0) get H_jj = 1 and are flagged in
** dead [n] (the caller zeroes them in W), damping, then H <- chol_upper(H^-1). Only H's round
** trip for the damping crosses to the host; the factorizations run on the backend. */
static int sgpt_hinv(struct kbackend *kb, float *H, int n, double damp, uint8_t *dead, int *ndead, struct slm_err *err)
{
    size_t nb = sizeof(float) * (size_t)n * n;
    int rc;
    if (!kb->iface->spd_inverse || !kb->iface->cholesky_upper)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SparseGPT needs spd_inverse and cholesky_upper on backend %s", kb_name(kb));
    float *h = malloc(nb);
    if (!h) return slm_err_set(err, SLM_ENOMEM, "SparseGPT: out of memory for a %d x %d Hessian", n, n);
    if ((rc = kb_download(kb, h, H, nb, err))) goto done;
    double mean = 0;
    *ndead = 0;
    for (int j = 0; j < n; j++) {
        float *d = &h[(size_t)j * n + j];
        dead[j] = *d == 0;
        if (dead[j]) { *d = 1; ++*ndead; }
        mean += *d;
    }
    float add = (float)(damp * mean / n);
    for (int j = 0; j < n; j++) h[(size_t)j * n + j] += add;
    if ((rc = kb_upload(kb, H, h, nb, err))) goto done;
    if ((rc = kb->iface->spd_inverse(kb, H, n, err))) goto done;
    rc = kb->iface->cholesky_upper(kb, H, n, err);
done:
    free(h);
    return rc;
}

/* Zero the dead input columns of backend w and fit OPTQ's per-tensor / per-row steps from the
** dense weight (§3.5): both need W on the host once, so only then is it downloaded. */
static int sgpt_prepare_w(struct kbackend *kb, float *w, int d_out, int d_in, const uint8_t *dead, int ndead,
                          const struct prune_opts *o, float *step, struct slm_err *err)
{
    bool fit = o->optq_bits && o->optq_group <= 0;
    if (!fit && !ndead) return 0;
    size_t nw = (size_t)d_out * d_in;
    float *h = malloc(sizeof *h * nw);
    int rc;
    if (!h) return slm_err_set(err, SLM_ENOMEM, "SparseGPT %dx%d: out of memory", d_out, d_in);
    if ((rc = kb_download(kb, h, w, sizeof *h * nw, err))) goto done;
    if (fit) quant_optq_fit(step, h, d_out, d_in, d_in, o->optq_group == -1, o->optq_bits);
    if (ndead) {
        for (int r = 0; r < d_out; r++)
            for (int j = 0; j < d_in; j++)
                if (dead[j]) h[(size_t)r * d_in + j] = 0;
        rc = kb_upload(kb, w, h, sizeof *h * nw, err);
    }
done:
    free(h);
    return rc;
}

/* The unstructured threshold of block [i1, i2): the floor(numel * sparsity)-th smallest metric,
** selected on the backend (kb_abs_kth: the metrics are >= 0, so |t| is t). */
static int sgpt_threshold(struct kbackend *kb, struct ksgpt_args *a, double sparsity, struct slm_err *err)
{
    size_t nt = (size_t)a->rows * (a->i2 - a->i1);
    float *metric = a->err;   /* the block's err buffer is free until the loop runs */
    int rc;
    a->metric = metric;
    rc = kb_sparsegpt_block(kb, a, err);
    a->metric = NULL;
    if (rc) return rc;
    return kb_abs_kth(kb, &a->thr, metric, nt, threshold_rank(nt, sparsity), err);
}

int prune_sparsegpt(struct kbackend *kb, float *w, float *H, int d_out, int d_in, const struct prune_opts *o,
                    uint8_t *mask, int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    int B = o->blocksize > 0 ? o->blocksize : 128, bits = o->optq_bits, group = o->optq_group, ndead = 0;
    size_t nw = (size_t)d_out * d_in;
    bool unstructured = !o->m && o->sparsity > 0;
    float *step = NULL, *hostw = NULL, *errb = NULL, *stepb = NULL;
    uint8_t *dead = NULL, *maskb = NULL;
    int rc = check_opts(o, d_in, err);
    if (rc) return rc;
    if (o->m && B % o->m) return slm_err_set(err, SLM_EINVAL, "SparseGPT block %d is not a multiple of M=%d", B, o->m);
    if (bits && (bits < 2 || bits > 8)) return slm_err_set(err, SLM_EINVAL, "OPTQ: %d bits", bits);
    if (!kb->iface->sparsegpt_block)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SparseGPT needs sparsegpt_block on backend %s", kb_name(kb));
    int ngroups = group > 0 ? (d_in + group - 1) / group : 1;
    size_t nstep = group > 0 ? (size_t)d_out * ngroups : group == -1 ? (size_t)d_out : 1;
    /* the whole mask stays on the backend when the caller wants it, else one block's */
    size_t nmask = mask ? nw : (size_t)d_out * B;
    step = malloc(sizeof *step * nstep);
    dead = malloc((size_t)d_in);
    if (!step || !dead) { rc = slm_err_set(err, SLM_ENOMEM, "SparseGPT %dx%d: out of memory", d_out, d_in); goto done; }
    if ((rc = kb_alloc(kb, (void **)&errb, sizeof *errb * (size_t)d_out * B, err)) ||
        (rc = kb_alloc(kb, (void **)&maskb, nmask, err)) ||
        (rc = kb_alloc(kb, (void **)&stepb, sizeof *stepb * nstep, err)))
        goto done;
    if ((rc = sgpt_hinv(kb, H, d_in, o->damp, dead, &ndead, err))) goto done;
    if ((rc = sgpt_prepare_w(kb, w, d_out, d_in, dead, ndead, o, step, err))) goto done;
    if (bits && group <= 0 && (rc = kb_upload(kb, stepb, step, sizeof *step * nstep, err))) goto done;
    for (int i1 = 0; i1 < d_in; i1 += B) {
        int i2 = i1 + B < d_in ? i1 + B : d_in, cnt = i2 - i1;
        struct ksgpt_args a = { .w = w, .ldw = d_in, .rows = d_out, .cols = d_in, .i1 = i1, .i2 = i2,
                                .hinv = H, .ldh = d_in, .mask = mask ? maskb + i1 : maskb, .ldm = mask ? d_in : cnt,
                                .err = errb, .n = o->n, .m = o->m, .thr = -INFINITY,
                                .bits = bits, .group = group, .ngroups = ngroups, .step = stepb };
        if (unstructured && (rc = sgpt_threshold(kb, &a, o->sparsity, err))) goto done;
        if ((rc = kb_sparsegpt_block(kb, &a, err))) goto done;
        if (i2 < d_in) {
            /* lazy update of the remaining columns: W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:] */
            struct kgemm_args ga = { .ta = KB_N, .tb = KB_N, .m = d_out, .n = d_in - i2, .k = cnt,
                                     .alpha = -1.0f, .beta = 1.0f, .a = errb, .lda = cnt,
                                     .b = H + (size_t)i1 * d_in + i2, .ldb = d_in,
                                     .c = w + i2, .ldc = d_in, .batch = 1 };
            if ((rc = kb->iface->gemm(kb, &ga, err))) goto done;
        }
    }
    if (mask && (rc = kb_download(kb, mask, maskb, nw, err))) goto done;
    if (bits && (codes || params)) {
        if (group > 0 && (rc = kb_download(kb, step, stepb, sizeof *step * nstep, err))) goto done;
        if (codes) {
            if (!(hostw = malloc(sizeof *hostw * nw))) { rc = slm_err_set(err, SLM_ENOMEM, "SparseGPT %dx%d: out of memory", d_out, d_in); goto done; }
            if ((rc = kb_download(kb, hostw, w, sizeof *hostw * nw, err))) goto done;
            for (int r = 0; r < d_out; r++)
                for (int c = 0; c < d_in; c++) {
                    float st = step[group > 0 ? (size_t)r * ngroups + c / group : group == -1 ? (size_t)r : 0];
                    codes[(size_t)r * d_in + c] = (int8_t)nearbyintf(hostw[(size_t)r * d_in + c] / st);
                }
        }
        if (params) {
            params->kind = QK_STEP;
            params->bits = bits;
            params->rows = group == 0 ? 1 : d_out;
            params->cols = group > 0 ? ngroups : 1;
            params->group_rows = group == 0 ? d_out : 1;
            params->group_cols = group > 0 ? group : d_in;
            params->bf16 = false;
            params->scale = step;
            step = NULL;   /* now owned by params */
        }
    }
done:
    kb_release(kb, errb);
    kb_release(kb, maskb);
    kb_release(kb, stepb);
    free(step);
    free(dead);
    free(hostw);
    return rc;
}
