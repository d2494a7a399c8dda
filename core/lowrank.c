/*
** core/lowrank.c: Naive-LoRA, SLiM-LoRA and L2QER adapters (see lowrank.h, ALGORITHMS.md §4).
*/
#include "lowrank.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

static inline float rb(float x, bool bf16) { return bf16 ? bf16_round(x) : x; }

int lowrank_rank(int d_out, int d_in, const struct lowrank_opts *o)
{
    int mn = d_out < d_in ? d_out : d_in;
    int r = (int)floor(o->rank_ratio * mn);
    if ((o->pad || o->quantize) && o->tile > 0 && r % o->tile) r += o->tile - r % o->tile;
    return r < mn ? r : mn;
}

/* L = D^-1 V_r S_r (bf16(S) x bf16(V), then / bf16(d)), R = U_r^T, from the host factors U [d_out x ldu],
** S [>= r], Vt [>= r rows x d_in]. */
static void factors_to_adapters(float *L, float *R, const float *U, int ldu, const float *S, const float *Vt,
                                const float *d, int d_out, int d_in, int r, bool bf16)
{
    for (int j = 0; j < d_in; j++) {
        float dj = d ? rb(d[j], bf16) : 1.0f;
        for (int c = 0; c < r; c++) {
            float v = rb(rb(S[c], bf16) * rb(Vt[(size_t)c * d_in + j], bf16), bf16);
            L[(size_t)j * r + c] = d ? rb(v / dj, bf16) : v;
        }
    }
    for (int c = 0; c < r; c++)
        for (int i = 0; i < d_out; i++) R[(size_t)c * d_out + i] = rb(U[(size_t)i * ldu + c], bf16);
}

/* E D as a host matrix, transposed (d_in x d_out) when trans. */
static void scaled_error(float *h, const float *E, const float *d, int d_out, int d_in, bool trans)
{
    for (int i = 0; i < d_out; i++)
        for (int j = 0; j < d_in; j++) {
            float v = d ? E[(size_t)i * d_in + j] * d[j] : E[(size_t)i * d_in + j];
            h[trans ? (size_t)j * d_out + i : (size_t)i * d_in + j] = v;
        }
}

/* Full thin SVD on the backend (LAPACK sgesdd / cuSOLVER gesvd): the reference's torch.svd. */
static int fit_exact(struct kbackend *kb, float *L, float *R, const float *E, const float *d,
                     int d_out, int d_in, int r, bool bf16, struct slm_err *err)
{
    int k = d_out < d_in ? d_out : d_in, rc;
    size_t ne = (size_t)d_out * d_in;
    float *h = malloc(sizeof *h * (ne + (size_t)d_out * k + k + (size_t)k * d_in));
    float *be = NULL, *bu = NULL, *bs = NULL, *bv = NULL;
    if (!h) return slm_err_set(err, SLM_ENOMEM, "low-rank %dx%d: out of memory", d_out, d_in);
    if (!kb->iface->svd) { rc = slm_err_set(err, SLM_EUNSUPPORTED, "backend %s has no SVD", kb_name(kb)); goto done; }
    float *U = h + ne, *S = U + (size_t)d_out * k, *Vt = S + k;
    scaled_error(h, E, d, d_out, d_in, false);
    if ((rc = kb_alloc(kb, (void **)&be, sizeof *h * ne, err)) ||
        (rc = kb_alloc(kb, (void **)&bu, sizeof *h * (size_t)d_out * k, err)) ||
        (rc = kb_alloc(kb, (void **)&bs, sizeof *h * (size_t)k, err)) ||
        (rc = kb_alloc(kb, (void **)&bv, sizeof *h * (size_t)k * d_in, err)))
        goto done;
    if ((rc = kb_upload(kb, be, h, sizeof *h * ne, err))) goto done;
    if ((rc = kb->iface->svd(kb, be, d_out, d_in, bu, bs, bv, err))) goto done;
    if ((rc = kb_download(kb, U, bu, sizeof *h * (size_t)d_out * k, err)) ||
        (rc = kb_download(kb, S, bs, sizeof *h * (size_t)k, err)) ||
        (rc = kb_download(kb, Vt, bv, sizeof *h * (size_t)k * d_in, err)))
        goto done;
    factors_to_adapters(L, R, U, k, S, Vt, d, d_out, d_in, r, bf16);
done:
    kb_release(kb, be);
    kb_release(kb, bu);
    kb_release(kb, bs);
    kb_release(kb, bv);
    free(h);
    return rc;
}

int lowrank_fit_gram(struct kbackend *kb, float *L, float *R, const float *E, const float *d,
                     int d_out, int d_in, int r, bool bf16, struct slm_err *err)
{
    /* X = E D, or its transpose when that makes the Gram matrix the smaller one: n = min(d_out, d_in) */
    bool trans = d_in > d_out;
    int rows = trans ? d_in : d_out, n = trans ? d_out : d_in, rc;
    size_t nx = (size_t)rows * n, nn = (size_t)n * n;
    float *hx = malloc(sizeof *hx * nx), *hv = malloc(sizeof *hv * (size_t)n * (r ? r : 1));
    float *hy = malloc(sizeof *hy * (size_t)rows * (r ? r : 1)), *S = malloc(sizeof *S * (r ? r : 1));
    float *Vt = NULL;
    double *hg = calloc(nn, sizeof *hg), *hw = malloc(sizeof *hw * n);
    float *bx = NULL, *bv = NULL, *by = NULL;
    double *bg = NULL, *bw = NULL;
    if (!hx || !hv || !hy || !S || !hg || !hw) { rc = slm_err_set(err, SLM_ENOMEM, "low-rank %dx%d: out of memory", d_out, d_in); goto done; }
    if (!kb->iface->gram_f64 || !kb->iface->eigh_f64) {
        rc = slm_err_set(err, SLM_EUNSUPPORTED, "backend %s has no gram_f64/eigh_f64", kb_name(kb));
        goto done;
    }
    scaled_error(hx, E, d, d_out, d_in, trans);
    if ((rc = kb_alloc(kb, (void **)&bx, sizeof *hx * nx, err)) || (rc = kb_alloc(kb, (void **)&bg, sizeof *hg * nn, err)) ||
        (rc = kb_alloc(kb, (void **)&bw, sizeof *hw * n, err)) ||
        (rc = kb_alloc(kb, (void **)&bv, sizeof *hv * (size_t)n * (r ? r : 1), err)) ||
        (rc = kb_alloc(kb, (void **)&by, sizeof *hy * (size_t)rows * (r ? r : 1), err)))
        goto done;
    /* G = X^T X in f64: the top singular values of X are those of G's top eigenpairs, to f64 accuracy */
    if ((rc = kb_upload(kb, bx, hx, sizeof *hx * nx, err)) || (rc = kb_upload(kb, bg, hg, sizeof *hg * nn, err)) ||
        (rc = kb->iface->gram_f64(kb, bg, bx, rows, n, err)) || (rc = kb->iface->eigh_f64(kb, bg, bw, n, err)) ||
        (rc = kb_download(kb, hg, bg, sizeof *hg * nn, err)) || (rc = kb_download(kb, hw, bw, sizeof *hw * n, err)))
        goto done;
    /* eigenvalues ascend; eigenvector j is column j: take the last r, largest first */
    for (int c = 0; c < r; c++) {
        int j = n - 1 - c;
        S[c] = (float)sqrt(hw[j] > 0 ? hw[j] : 0);
        for (int i = 0; i < n; i++) hv[(size_t)i * r + c] = (float)hg[(size_t)i * n + j];
    }
    if (r) {
        /* the other side: X V_r = U_r S_r (columns with S = 0 stay 0: they add nothing to L R) */
        struct kgemm_args g = { .ta = KB_N, .tb = KB_N, .m = rows, .n = r, .k = n, .alpha = 1, .beta = 0, .a = bx,
                                .lda = n, .b = bv, .ldb = r, .c = by, .ldc = r, .batch = 1 };
        if ((rc = kb_upload(kb, bv, hv, sizeof *hv * (size_t)n * r, err)) || (rc = kb->iface->gemm(kb, &g, err)) ||
            (rc = kb_download(kb, hy, by, sizeof *hy * (size_t)rows * r, err)))
            goto done;
        for (size_t i = 0; i < (size_t)rows; i++)
            for (int c = 0; c < r; c++) hy[i * r + c] = S[c] > 0 ? hy[i * r + c] / S[c] : 0.0f;
    }
    /* not transposed: V = eigenvectors, U = X V / S; transposed: U = eigenvectors, V = X^T U / S */
    float *Ur = trans ? hv : hy, *Vr = trans ? hy : hv;   /* [d_out x r], [d_in x r] */
    if (!(Vt = malloc(sizeof *Vt * (size_t)(r ? r : 1) * d_in))) { rc = slm_err_set(err, SLM_ENOMEM, "low-rank: out of memory"); goto done; }
    for (int c = 0; c < r; c++)
        for (int j = 0; j < d_in; j++) Vt[(size_t)c * d_in + j] = Vr[(size_t)j * r + c];
    factors_to_adapters(L, R, Ur, r, S, Vt, d, d_out, d_in, r, bf16);
done:
    kb_release(kb, bx);
    kb_release(kb, bg);
    kb_release(kb, bw);
    kb_release(kb, bv);
    kb_release(kb, by);
    free(hx);
    free(hv);
    free(hy);
    free(S);
    free(Vt);
    free(hg);
    free(hw);
    return rc;
}

enum lowrank_svd lowrank_svd_choice(struct kbackend *kb, int d_out, int d_in, int r)
{
    int k = d_out < d_in ? d_out : d_in;
    /* On a GPU a full gesvd of a 4096 x 11008 error costs seconds per linear; the top 10% of the
    ** spectrum comes from one f64 Gram matrix and one syevd at a fraction of that. The CPU keeps
    ** the reference's full SVD (LAPACK is fast there and it is bit-compatible with the fixtures). */
    if (!strcmp(kb_name(kb), "cpu")) return LOWRANK_SVD_EXACT;
    if (k <= LOWRANK_HOST_SVD_MAX) return LOWRANK_SVD_HOST;
    if (kb->iface->gram_f64 && kb->iface->eigh_f64 && 2 * r <= k) return LOWRANK_SVD_GRAM;
    return LOWRANK_SVD_EXACT;
}

int lowrank_fit(struct kbackend *kb, float *L, float *R, const float *E, const float *d,
                int d_out, int d_in, int r, bool bf16, struct slm_err *err)
{
    int k = d_out < d_in ? d_out : d_in;
    if (r < 0 || r > k) return slm_err_set(err, SLM_EINVAL, "low-rank: rank %d for %dx%d", r, d_out, d_in);
    enum lowrank_svd how = lowrank_svd_choice(kb, d_out, d_in, r);
    if (how == LOWRANK_SVD_GRAM) return lowrank_fit_gram(kb, L, R, E, d, d_out, d_in, r, bf16, err);
    if (how == LOWRANK_SVD_HOST) {
        struct kbackend *cpu = NULL;
        int rc = kbackend_open(&cpu, "cpu", err);
        if (!rc) {
            rc = fit_exact(cpu, L, R, E, d, d_out, d_in, r, bf16, err);
            kbackend_free(cpu);
        }
        return rc;
    }
    return fit_exact(kb, L, R, E, d, d_out, d_in, r, bf16, err);
}

int lowrank_product(struct kbackend *kb, float *out, const float *L, const float *R, int d_out, int d_in, int r,
                    bool bf16, struct slm_err *err)
{
    size_t no = (size_t)d_out * d_in;
    float *bl = NULL, *br = NULL, *bo = NULL;
    int rc;
    if (r == 0) { memset(out, 0, sizeof *out * no); return 0; }
    if ((rc = kb_alloc(kb, (void **)&bl, sizeof *L * (size_t)d_in * r, err)) ||
        (rc = kb_alloc(kb, (void **)&br, sizeof *R * (size_t)r * d_out, err)) ||
        (rc = kb_alloc(kb, (void **)&bo, sizeof *out * no, err)))
        goto done;
    if ((rc = kb_upload(kb, bl, L, sizeof *L * (size_t)d_in * r, err)) ||
        (rc = kb_upload(kb, br, R, sizeof *R * (size_t)r * d_out, err)))
        goto done;
    struct kgemm_args g = { .ta = KB_T, .tb = KB_T, .m = d_out, .n = d_in, .k = r, .alpha = 1, .beta = 0,
                            .a = br, .lda = d_out, .b = bl, .ldb = r, .c = bo, .ldc = d_in, .batch = 1 };
    if ((rc = kb->iface->gemm(kb, &g, err)) || (rc = kb_download(kb, out, bo, sizeof *out * no, err))) goto done;
    if (bf16)
        for (size_t i = 0; i < no; i++) out[i] = bf16_round(out[i]);
done:
    kb_release(kb, bl);
    kb_release(kb, br);
    kb_release(kb, bo);
    return rc;
}

/* Scale by sqrt(r), group-quantize as a [rows x cols] matrix, scale back. */
static int quant_stored(float *a, int rows, int cols, int r, const struct lowrank_opts *o,
                        struct quant_params *p, struct slm_err *err)
{
    struct quant_opts q = QUANT_OPTS_INIT;
    float sr = sqrtf((float)r);
    q.method = QUANT_ABSMAX;
    q.bits = o->bits;
    q.group_size = o->tile;
    q.column_wise = o->column_wise;
    q.bf16 = o->bf16;
    size_t n = (size_t)rows * cols;
    for (size_t i = 0; i < n; i++) a[i] = rb(a[i] * sr, o->bf16);
    int rc = quant_weight_host(a, rows, cols, &q, NULL, NULL, p, err);
    for (size_t i = 0; i < n; i++) a[i] = a[i] / sr;
    return rc;
}

int lowrank_quantize(float *L, float *R, int d_out, int d_in, int r, const struct lowrank_opts *o,
                     struct quant_params *pl, struct quant_params *pr, struct slm_err *err)
{
    int rc;
    if (r == 0) return 0;
    if ((rc = quant_stored(L, d_in, r, r, o, pl, err))) return rc;
    return quant_stored(R, r, d_out, r, o, pr, err);
}

/* ---- prune_lora (§4.5) ---- */

void lowrank_canonical_signs(float *L, float *R, int d_out, int d_in, int r)
{
    for (int c = 0; c < r; c++) {
        float *rc = R + (size_t)c * d_out;
        int top = 0;
        for (int i = 1; i < d_out; i++)
            if (fabsf(rc[i]) > fabsf(rc[top])) top = i;
        if (!(rc[top] < 0)) continue;
        for (int i = 0; i < d_out; i++) rc[i] = -rc[i];
        for (int j = 0; j < d_in; j++) L[(size_t)j * r + c] = -L[(size_t)j * r + c];
    }
}

/* c = a [m x k] b [k x n] (+ beta c), all backend, row-major; ta/tb transpose a/b as stored. */
static int mm(struct kbackend *kb, float *c, const float *a, enum ktrans ta, int lda, const float *b, enum ktrans tb, int ldb,
              int m, int n, int k, float beta, struct slm_err *err)
{
    struct kgemm_args g = { .ta = ta, .tb = tb, .m = m, .n = n, .k = k, .alpha = 1, .beta = beta, .a = a, .lda = lda,
                            .b = b, .ldb = ldb, .c = c, .ldc = n, .batch = 1 };
    return kb->iface->gemm(kb, &g, err);
}

int lowrank_prune_adapter(struct kbackend *kb, float *L, const float *R, int d_out, int d_in, int r, int iters,
                          uint8_t *mask, double *loss, struct slm_err *err)
{
    size_t nl = (size_t)d_in * r, nt = (size_t)d_in * d_out;
    float *bl = NULL, *br = NULL, *bt = NULL, *bg = NULL, *g = malloc(sizeof *g * nl), *e = malloc(sizeof *e * nt);
    double *m1 = calloc(nl, sizeof *m1), *m2 = calloc(nl, sizeof *m2);
    uint8_t *mk = mask ? mask : malloc(nl);
    int rc = 0;
    if (!g || !e || !m1 || !m2 || !mk) { rc = slm_err_set(err, SLM_ENOMEM, "prune_lora: out of memory"); goto done; }
    if (d_in % 4) { rc = slm_err_set(err, SLM_ESHAPE, "prune_lora: %d rows of L are not groups of 4", d_in); goto done; }
    /* mask: per rank column, per group of 4 rows, the 2 smallest signed values (lower row first on ties) */
    memset(mk, 0, nl);
    for (int c = 0; c < r; c++)
        for (int g0 = 0; g0 < d_in; g0 += 4)
            for (int k = 0; k < 2; k++) {
                int best = -1;
                for (int j = g0; j < g0 + 4; j++)
                    if (!mk[(size_t)j * r + c] && (best < 0 || L[(size_t)j * r + c] < L[(size_t)best * r + c])) best = j;
                mk[(size_t)best * r + c] = 1;
            }
    if ((rc = kb_alloc(kb, (void **)&bl, sizeof *L * nl, err)) || (rc = kb_alloc(kb, (void **)&br, sizeof *R * (size_t)r * d_out, err)) ||
        (rc = kb_alloc(kb, (void **)&bt, sizeof *L * nt, err)) || (rc = kb_alloc(kb, (void **)&bg, sizeof *L * nl, err)))
        goto done;
    if ((rc = kb_upload(kb, bl, L, sizeof *L * nl, err)) || (rc = kb_upload(kb, br, R, sizeof *R * (size_t)r * d_out, err)))
        goto done;
    /* target T = L R (dense L) */
    if ((rc = mm(kb, bt, bl, KB_N, r, br, KB_N, d_out, d_in, d_out, r, 0, err)) || (rc = kb_download(kb, e, bt, sizeof *e * nt, err)))
        goto done;
    double tn = 0;
    for (size_t i = 0; i < nt; i++) tn += (double)e[i] * e[i];
    tn = sqrt(tn);
    float *T = e;   /* host copy of the target, kept */
    float *E = NULL;
    if (!(E = malloc(sizeof *E * nt))) { rc = slm_err_set(err, SLM_ENOMEM, "prune_lora: out of memory"); goto done; }
    int mn = d_in < d_out ? d_in : d_out;
    double lr0 = 1e6 / ((double)mn * mn), b1 = 0.9, b2 = 0.999, eps = 1e-8, f = 0;
    for (size_t i = 0; i < nl; i++) if (mk[i]) L[i] = 0;
    for (int t = 1; t <= iters + 1 && !rc; t++) {
        /* E = L R - T, f = ||E|| / ||T||, G = E R^T / (||E|| ||T||) */
        if ((rc = kb_upload(kb, bl, L, sizeof *L * nl, err)) || (rc = mm(kb, bt, bl, KB_N, r, br, KB_N, d_out, d_in, d_out, r, 0, err)) ||
            (rc = kb_download(kb, E, bt, sizeof *E * nt, err)))
            break;
        double en = 0;
        for (size_t i = 0; i < nt; i++) { E[i] -= T[i]; en += (double)E[i] * E[i]; }
        en = sqrt(en);
        f = tn > 0 ? en / tn : 0;
        if (t > iters || en == 0) break;
        if ((rc = kb_upload(kb, bt, E, sizeof *E * nt, err)) || (rc = mm(kb, bg, bt, KB_N, d_out, br, KB_T, d_out, d_in, r, d_out, 0, err)) ||
            (rc = kb_download(kb, g, bg, sizeof *g * nl, err)))
            break;
        double lr = lr0 * (1.0 + (1e-4 - 1.0) * (double)(t - 1) / iters), sc = 1.0 / (en * tn);
        for (size_t i = 0; i < nl; i++) {
            double gi = g[i] * sc;
            m1[i] = b1 * m1[i] + (1 - b1) * gi;
            m2[i] = b2 * m2[i] + (1 - b2) * gi * gi;
            double mh = m1[i] / (1 - pow(b1, t)), vh = m2[i] / (1 - pow(b2, t));
            L[i] = mk[i] ? 0.0f : (float)(L[i] - lr * mh / (sqrt(vh) + eps));
        }
    }
    free(E);
    if (!rc && loss) *loss = f;
done:
    kb_release(kb, bl);
    kb_release(kb, br);
    kb_release(kb, bt);
    kb_release(kb, bg);
    free(g);
    free(e);
    free(m1);
    free(m2);
    if (mk != mask) free(mk);
    return rc;
}
