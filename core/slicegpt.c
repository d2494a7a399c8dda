/*
** core/slicegpt.c: SliceGPT fusion, PCA, rotation and slicing (see slicegpt.h, ALGORITHMS.md §7).
**
** DESIGN: the model stays an ordinary struct model throughout. Fusion edits weights on the host
** in double (cheap, element-wise); rotations are backend GEMMs in f32 with Q (computed in f64)
** cast to f32, slicing folded into the GEMM shapes. Calibration signals live on the host in the
** ORIGINAL basis at full width, as the reference keeps them: block l is fed X_l Q[:, :r], its
** mid-block signal and output are captured in the original basis (its writing matrices are not
** rotated yet), and each PCA sums x x^T over every token in f64. The stages, their order and
** the shortcut matrices follow the authors' rotate_and_slice_sequential / _parallel exactly.
*/
#include "slicegpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"

#define SG_ROWS_PER_BATCH 8192     /* automatic batch: this many tokens per forward call */
#define SG_REF_EPS 1e-5f           /* the reference's RMSN epsilon */

/* ---- options and counting ---- */

int slicegpt_width(int d, double sparsity, int round_to)
{
    int r = (int)((1.0 - sparsity) * d);
    if (round_to > 1) r -= r % round_to;
    if (r < 1) r = d < round_to ? d : round_to;
    return r > d ? d : r;
}

int slicegpt_check_opts(const struct slicegpt_opts *o, struct slm_err *err)
{
    if (!(o->sparsity >= 0 && o->sparsity < 1))
        return slm_err_set(err, SLM_EINVAL, "/slicegpt/sparsity: must be in [0, 1), got %g", o->sparsity);
    if (o->round_to < 1) return slm_err_set(err, SLM_EINVAL, "/slicegpt/round_to: must be >= 1, got %d", o->round_to);
    return 0;
}

/* Parameters of one sliced block: input width r, output width o. */
static int64_t block_params(const struct model_config *c, bool parallel, int64_t r, int64_t o)
{
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim, f = c->ffn;
    int64_t ab = c->attention_bias, mb = c->mlp_bias, n_in = c->arch == ARCH_LLAMA ? 2 : 1;
    int64_t p = r * q + 2 * r * kv + ab * (q + 2 * kv);          /* q, k, v read r */
    if (parallel) {
        p += q * o + ab * o;                                      /* dense writes o */
        p += r * f + mb * f + f * o + mb * o;                     /* fc1 reads r, fc2 writes o */
        return p + r * o;                                         /* one shortcut */
    }
    p += q * r + ab * r;                                          /* o_proj writes r */
    p += n_in * (r * f + mb * f) + f * o + mb * o;                /* fc1/gate/up, fc2/down */
    return p + r * r + r * o;                                     /* attn and mlp shortcuts */
}

int slicegpt_param_count(int64_t *out, const struct model_config *c, double sparsity, int round_to, struct slm_err *err)
{
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    o.sparsity = sparsity;
    o.round_to = round_to;
    int rc = slicegpt_check_opts(&o, err);
    if (rc) return rc;
    if (c->embed_dim != c->hidden)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SliceGPT: models with project_in/project_out are not supported");
    int64_t d = c->hidden, r = slicegpt_width(c->hidden, sparsity, round_to), V = c->vocab;
    bool par = c->arch == ARCH_PHI;
    int64_t n = V * r + V * d;                                    /* embeddings, untied head */
    if (c->arch == ARCH_OPT) n += (int64_t)(c->max_pos + 2) * r + V;  /* positions, head bias from fusion */
    if (c->arch == ARCH_PHI) n += V;                              /* head bias */
    for (int b = 0; b < c->n_layers; b++) n += block_params(c, par, r, b == c->n_layers - 1 ? d : r);
    *out = n;
    return 0;
}

int64_t slicegpt_model_params(const struct model *m)
{
    const struct model_config *c = &m->cfg;
    int64_t n = (int64_t)c->vocab * m->embed_width;
    if (m->pos_embed) n += (int64_t)(c->max_pos + 2) * (c->embed_dim != c->hidden ? c->hidden : m->embed_width);
    if (m->project_in) n += 2 * (int64_t)c->hidden * c->embed_dim;
    if (m->final_norm_w) n += m->d_head;
    if (m->final_norm_b) n += m->d_head;
    if (!c->tie_word_embeddings) n += (int64_t)c->vocab * (m->project_out ? c->embed_dim : m->d_head);
    if (m->head_b) n += c->vocab;
    for (int b = 0; b < c->n_layers; b++) {
        const struct block *bl = &m->blocks[b];
        bool par = m->block_kind == BLOCK_PARALLEL;
        int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
        /* shapes from the widths, so unloaded blocks count too */
        int shapes[LIN_COUNT][2] = { { q, bl->d_in }, { kv, bl->d_in }, { kv, bl->d_in }, { par ? bl->d_out : bl->d_mid, q },
                                     { c->ffn, par ? bl->d_in : bl->d_mid }, { c->ffn, bl->d_mid }, { bl->d_out, c->ffn } };
        const struct arch_names *nm = m->arch->names;
        for (int r = 0; r < LIN_COUNT; r++) {
            if (!nm->lin[r]) continue;
            n += (int64_t)shapes[r][0] * shapes[r][1];
            bool bias = bl->loaded ? bl->lin[r].b != NULL : (r <= LIN_O ? c->attention_bias : c->mlp_bias);
            if (bias) n += shapes[r][0];
            if (bl->loaded && bl->lin[r].rank) n += (int64_t)bl->lin[r].rank * (bl->lin[r].d_in + bl->lin[r].d_out);
        }
        if (bl->loaded) {
            int n2 = par ? bl->d_in : bl->d_mid;
            n += (bl->norm1_w ? bl->d_in : 0) + (bl->norm1_b ? bl->d_in : 0) + (bl->norm2_w ? n2 : 0) + (bl->norm2_b ? n2 : 0);
            if (bl->shortcut_attn) n += (int64_t)bl->d_in * (par ? bl->d_out : bl->d_mid);
            if (bl->shortcut_mlp) n += (int64_t)bl->d_mid * bl->d_out;
        } else if (m->norm == NORM_LAYER) {
            n += (nm->norm2 ? 4 : 2) * (int64_t)c->hidden;
        } else if (m->norm_divisor == 0) {
            n += (nm->norm2 ? 2 : 1) * (int64_t)c->hidden;
        } else {
            n += (int64_t)bl->d_in * (par ? bl->d_out : bl->d_mid) + (par ? 0 : (int64_t)bl->d_mid * bl->d_out);
        }
    }
    return n;
}

/* ---- host <-> backend helpers ---- */

static int dl(struct model *m, float **out, const float *src, size_t n, struct slm_err *err)
{
    *out = malloc((n ? n : 1) * sizeof(float));
    if (!*out) return slm_err_set(err, SLM_ENOMEM, "SliceGPT: %zu floats", n);
    int rc = kb_download(m->kb, *out, src, n * sizeof(float), err);
    if (rc) { free(*out); *out = NULL; }
    return rc;
}

/* Replace backend buffer *dst by a new one holding host[n]. */
static int ul(struct model *m, float **dst, const float *host, size_t n, struct slm_err *err)
{
    float *p = NULL;
    int rc = kb_alloc(m->kb, (void **)&p, (n ? n : 1) * sizeof(float), err);
    if (!rc) rc = kb_upload(m->kb, p, host, n * sizeof(float), err);
    if (rc) { kb_release(m->kb, p); return rc; }
    kb_release(m->kb, *dst);
    *dst = p;
    return 0;
}

/* ---- fusion (§7.2) ---- */

/* W <- W diag(gamma), b <- b + W_old beta (bias created when beta is given and b is absent). */
static int fold_norm(struct model *m, struct linear *l, const float *gamma, const float *beta, struct slm_err *err)
{
    size_t no = (size_t)l->d_out, ni = (size_t)l->d_in;
    float *w = NULL, *b = NULL;
    int rc = dl(m, &w, l->w, no * ni, err);
    if (rc) return rc;
    if (beta) {
        if (l->b) rc = dl(m, &b, l->b, no, err);
        else if (!(b = calloc(no, sizeof(float)))) rc = slm_err_set(err, SLM_ENOMEM, "SliceGPT: bias of %s", l->name);
        if (rc) goto done;
        for (size_t o = 0; o < no; o++) {
            double s = b[o];
            for (size_t k = 0; k < ni; k++) s += (double)w[o * ni + k] * beta[k];
            b[o] = (float)s;
        }
    }
    if (gamma)
        for (size_t o = 0; o < no; o++)
            for (size_t k = 0; k < ni; k++) w[o * ni + k] = (float)((double)w[o * ni + k] * gamma[k]);
    if ((rc = ul(m, &l->w, w, no * ni, err))) goto done;
    if (b) rc = ul(m, &l->b, b, no, err);
done:
    free(w);
    free(b);
    return rc;
}

/* Make what l writes mean-free over its outputs: W <- W - colmean(W), b <- b - mean(b). */
static int bake_mean(struct model *m, struct linear *l, struct slm_err *err)
{
    size_t no = (size_t)l->d_out, ni = (size_t)l->d_in;
    float *w = NULL, *b = NULL;
    double *mean = calloc(ni, sizeof(double));
    int rc = mean ? dl(m, &w, l->w, no * ni, err) : slm_err_set(err, SLM_ENOMEM, "SliceGPT: mean of %s", l->name);
    if (rc) goto done;
    for (size_t o = 0; o < no; o++)
        for (size_t k = 0; k < ni; k++) mean[k] += w[o * ni + k];
    for (size_t o = 0; o < no; o++)
        for (size_t k = 0; k < ni; k++) w[o * ni + k] = (float)((double)w[o * ni + k] - mean[k] / no);
    if ((rc = ul(m, &l->w, w, no * ni, err))) goto done;
    if (l->b) {
        if ((rc = dl(m, &b, l->b, no, err))) goto done;
        double s = 0;
        for (size_t o = 0; o < no; o++) s += b[o];
        for (size_t o = 0; o < no; o++) b[o] = (float)((double)b[o] - s / no);
        rc = ul(m, &l->b, b, no, err);
    }
done:
    free(mean);
    free(w);
    free(b);
    return rc;
}

static void centre_rows(float *e, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (size_t c = 0; c < cols; c++) s += e[r * cols + c];
        for (size_t c = 0; c < cols; c++) e[r * cols + c] = (float)((double)e[r * cols + c] - s / cols);
    }
}

/* Fold the norm (w, b: backend, may be NULL) into the listed linears, then drop it. */
static int fold_into(struct model *m, float **nw, float **nb, struct linear **ls, int nl, struct slm_err *err)
{
    float *g = NULL, *be = NULL;
    int d = m->cfg.hidden, rc = 0;
    if (*nw && (rc = dl(m, &g, *nw, d, err))) goto done;
    if (*nb && (rc = dl(m, &be, *nb, d, err))) goto done;
    for (int i = 0; i < nl; i++)
        if (ls[i]->w && (rc = fold_norm(m, ls[i], g, be, err))) goto done;
    kb_release(m->kb, *nw);
    kb_release(m->kb, *nb);
    *nw = *nb = NULL;
done:
    free(g);
    free(be);
    return rc;
}

static int check_model(const struct model *m, struct slm_err *err)
{
    if (m->norm_divisor > 0) return slm_err_set(err, SLM_EINVAL, "SliceGPT: the model is already sliced");
    if (m->block_kind == BLOCK_SEQ_POSTNORM)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SliceGPT: post-LayerNorm models (OPT-350M) are not supported");
    if (m->project_in || m->cfg.embed_dim != m->cfg.hidden)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SliceGPT: models with project_in/project_out are not supported");
    return 0;
}

int slicegpt_fuse(struct model *m, bool reference_compat, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    int rc = check_model(m, err);
    if (rc) return rc;
    bool layernorm = m->norm == NORM_LAYER, par = m->block_kind == BLOCK_PARALLEL;
    /* the head is already its own buffer (model_open copies a tied embedding): untie = stop saying tied */
    m->cfg.tie_word_embeddings = false;
    if (layernorm || reference_compat) {
        model_embed_changed(m);
        centre_rows(m->embed, (size_t)c->vocab, (size_t)m->embed_width);
        if (m->pos_embed) centre_rows(m->pos_embed, (size_t)c->max_pos + 2, (size_t)m->embed_width);
    }
    for (int b = 0; b < c->n_layers; b++) {
        struct block *bl = &m->blocks[b];
        if ((rc = model_block_load(m, b, err))) return rc;
        struct linear *attn_in[4] = { &bl->lin[LIN_Q], &bl->lin[LIN_K], &bl->lin[LIN_V], &bl->lin[LIN_FC1] };
        struct linear *mlp_in[2] = { &bl->lin[LIN_FC1], &bl->lin[LIN_UP] };
        if ((rc = fold_into(m, &bl->norm1_w, &bl->norm1_b, attn_in, par ? 4 : 3, err))) return rc;
        if (!par && (rc = fold_into(m, &bl->norm2_w, &bl->norm2_b, mlp_in, 2, err))) return rc;
        if (layernorm && ((rc = bake_mean(m, &bl->lin[LIN_O], err)) || (rc = bake_mean(m, &bl->lin[LIN_FC2], err)))) return rc;
    }
    struct linear head = { .d_out = c->vocab, .d_in = m->d_head, .w = m->head_w, .b = m->head_b };
    snprintf(head.name, sizeof head.name, "%s", m->arch->head);
    struct linear *hl = &head;
    rc = fold_into(m, &m->final_norm_w, &m->final_norm_b, &hl, 1, err);
    m->head_w = head.w;
    m->head_b = head.b;
    if (rc) return rc;
    m->norm = NORM_RMS;
    m->norm_divisor = (float)c->hidden;
    if (reference_compat) m->cfg.norm_eps = SG_REF_EPS;
    return 0;
}

/* ---- PCA (§7.4) ---- */

/* C (upper triangle) += x^T x for x [rows x d] f32; chunk is scratch [64 x d] doubles. */
static void gram_acc(double *C, const float *x, size_t rows, int d, double *chunk)
{
    for (size_t r0 = 0; r0 < rows; r0 += 64) {
        size_t nr = rows - r0 < 64 ? rows - r0 : 64;
        for (size_t i = 0; i < nr * (size_t)d; i++) chunk[i] = x[r0 * d + i];
        for (int i = 0; i < d; i++) {
            double *ci = C + (size_t)i * d;
            for (size_t k = 0; k < nr; k++) {
                const double *xk = chunk + k * d;
                double a = xk[i];
                for (int j = i; j < d; j++) ci[j] += a * xk[j];
            }
        }
    }
}

/* State of one run. Q matrices are host f64 [d x d], eigenvectors as columns, eigenvalues descending. */
struct sg {
    struct model *m;
    const struct slicegpt_opts *o;
    int d, N, T, nseq, batch;
    float *X;              /* host [N x d] signal in the original basis */
    float *hx;             /* host scratch [batch*T x d] */
    double *C, *chunk;     /* [d x d] (upper triangle accumulated), [64 x d] */
    double *Cdev;          /* backend copy of C when the backend has gram_f64, else NULL */
    double *Q, *eig;       /* current basis */
    float *qf;             /* backend f32 copy of Q [d x d] */
    float *xin, *xb;       /* backend [batch*T x d], [batch*T x max width] */
};

/* C += x^T x for x backend [rows x d]; xh: the same rows on the host, or NULL. */
static int gram_add(struct sg *s, const float *x, const float *xh, int rows, struct slm_err *err)
{
    struct kbackend *kb = s->m->kb;
    if (s->Cdev) return kb->iface->gram_f64(kb, s->Cdev, x, rows, s->d, err);
    if (!xh) {
        int rc = kb_download(kb, s->hx, x, (size_t)rows * s->d * sizeof(float), err);
        if (rc) return rc;
        xh = s->hx;
    }
    gram_acc(s->C, xh, (size_t)rows, s->d, s->chunk);
    return 0;
}

static int pca(struct sg *s, const char *stage, struct slm_err *err)
{
    int d = s->d, rc;
    double *a = NULL, *w = NULL, *ah = s->C, tr = 0;
    if (s->Cdev && (rc = kb_download(s->m->kb, ah, s->Cdev, (size_t)d * d * sizeof(double), err))) return rc;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) ah[(size_t)i * d + j] = ah[(size_t)j * d + i];
    for (int i = 0; i < d; i++) tr += ah[(size_t)i * d + i];
    for (int i = 0; i < d; i++) ah[(size_t)i * d + i] += 0.01 * tr / d;
    if (!s->m->kb->iface->eigh_f64) return slm_err_set(err, SLM_EUNSUPPORTED, "SliceGPT: backend %s has no eigh", kb_name(s->m->kb));
    if ((rc = kb_alloc(s->m->kb, (void **)&a, (size_t)d * d * sizeof(double), err)) ||
        (rc = kb_alloc(s->m->kb, (void **)&w, (size_t)d * sizeof(double), err)) ||
        (rc = kb_upload(s->m->kb, a, ah, (size_t)d * d * sizeof(double), err)) ||
        (rc = s->m->kb->iface->eigh_f64(s->m->kb, a, w, d, err)) ||
        (rc = kb_download(s->m->kb, ah, a, (size_t)d * d * sizeof(double), err)) ||
        (rc = kb_download(s->m->kb, s->eig, w, (size_t)d * sizeof(double), err)))
        goto done;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) s->Q[(size_t)i * d + j] = ah[(size_t)i * d + (d - 1 - j)];
    for (int j = 0; j < d / 2; j++) {
        double t = s->eig[j];
        s->eig[j] = s->eig[d - 1 - j];
        s->eig[d - 1 - j] = t;
    }
    for (int j = 0; j < d; j++)
        if (!isfinite(s->eig[j])) { rc = slm_err_set(err, SLM_ENUMERIC, "SliceGPT: PCA %s has a non-finite eigenvalue", stage); goto done; }
    float *qh = malloc((size_t)d * d * sizeof(float));
    if (!qh) { rc = slm_err_set(err, SLM_ENOMEM, "SliceGPT: Q"); goto done; }
    for (size_t i = 0; i < (size_t)d * d; i++) qh[i] = (float)s->Q[i];
    rc = ul(s->m, &s->qf, qh, (size_t)d * d, err);
    free(qh);
    if (!rc && s->o->on_pca && s->o->on_pca(stage, s->eig, d, s->o->payload))
        rc = slm_err_set(err, SLM_ECANCELLED, "SliceGPT cancelled");
    memset(s->C, 0, (size_t)d * d * sizeof(double));
    if (!rc && s->Cdev) rc = kb_upload(s->m->kb, s->Cdev, s->C, (size_t)d * d * sizeof(double), err);
done:
    kb_release(s->m->kb, a);
    kb_release(s->m->kb, w);
    return rc;
}

/* ---- rotation helpers (f32 GEMMs on the backend) ---- */

static int gemm(struct model *m, enum ktrans ta, int M, int N, int K, const float *a, int lda, const float *b, int ldb,
                float *c, int ldc, struct slm_err *err)
{
    struct kgemm_args g = { .ta = ta, .tb = KB_N, .m = M, .n = N, .k = K, .alpha = 1, .beta = 0, .a = a, .lda = lda,
                            .b = b, .ldb = ldb, .c = c, .ldc = ldc, .batch = 1 };
    return m->kb->iface->gemm(m->kb, &g, err);
}

/* Replace backend *p [rows x d] by *p Q[:, :r] [rows x r]. */
static int rot_cols_buf(struct sg *s, float **p, int rows, int r, struct slm_err *err)
{
    float *y = NULL;
    int rc = kb_alloc(s->m->kb, (void **)&y, (size_t)rows * r * sizeof(float), err);
    if (!rc) rc = gemm(s->m, KB_N, rows, r, s->d, *p, s->d, s->qf, s->d, y, r, err);
    if (rc) { kb_release(s->m->kb, y); return rc; }
    kb_release(s->m->kb, *p);
    *p = y;
    return 0;
}

/* Replace backend *p [d x cols] by Q[:, :r]^T *p [r x cols]. */
static int rot_rows_buf(struct sg *s, float **p, int cols, int r, struct slm_err *err)
{
    float *y = NULL;
    int rc = kb_alloc(s->m->kb, (void **)&y, (size_t)r * cols * sizeof(float), err);
    if (!rc) rc = gemm(s->m, KB_T, r, cols, s->d, s->qf, s->d, *p, cols, y, cols, err);
    if (rc) { kb_release(s->m->kb, y); return rc; }
    kb_release(s->m->kb, *p);
    *p = y;
    return 0;
}

/* A linear reading the stream: W <- W Q[:, :r]. */
static int rot_input(struct sg *s, struct linear *l, int r, struct slm_err *err)
{
    if (!l->w) return 0;
    int rc = rot_cols_buf(s, &l->w, l->d_out, r, err);
    if (!rc) l->d_in = r;
    return rc;
}

/* A linear writing the stream: W <- Q[:, :r]^T W, b <- Q[:, :r]^T b. */
static int rot_output(struct sg *s, struct linear *l, int r, struct slm_err *err)
{
    int rc = rot_rows_buf(s, &l->w, l->d_in, r, err);
    if (!rc && l->b) rc = rot_rows_buf(s, &l->b, 1, r, err);
    if (!rc) l->d_out = r;
    return rc;
}

/* New shortcut Q^T[:r, :] [r x d]. */
static int shortcut_init(struct sg *s, float **p, int r, struct slm_err *err)
{
    int d = s->d;
    float *h = malloc((size_t)r * d * sizeof(float));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "SliceGPT: shortcut");
    for (int i = 0; i < r; i++)
        for (int j = 0; j < d; j++) h[(size_t)i * d + j] = (float)s->Q[(size_t)j * d + i];
    int rc = ul(s->m, p, h, (size_t)r * d, err);
    free(h);
    return rc;
}

/* Host table e [rows x d] -> e Q[:, :r] [rows x r] (embeddings). */
static int rot_host(struct sg *s, float **e, size_t rows, int r, struct slm_err *err)
{
    float *dev = NULL, *h = NULL;
    int rc = ul(s->m, &dev, *e, rows * s->d, err);
    if (!rc) rc = rot_cols_buf(s, &dev, (int)rows, r, err);
    if (!rc) rc = dl(s->m, &h, dev, rows * r, err);
    kb_release(s->m->kb, dev);
    if (rc) return rc;
    free(*e);
    *e = h;
    return 0;
}

/* ---- calibration passes ---- */

static int on_mid(int i, const float *h, int rows, int width, void *payload)
{
    struct sg *s = payload;
    struct slm_err e = SLM_ERR_INIT;
    (void)i;
    return width != s->d || gram_add(s, h, NULL, rows, &e);
}

static bool cancelled(const struct sg *s) { return s->o->cancel && *s->o->cancel; }

/* Run block b over every calibration sequence, fed X Q[:, :r_in] (X in the original basis).
** mid: accumulate the mid-block signal; out: accumulate the output and store it back in X. */
static int block_pass(struct sg *s, int b, int r_in, bool mid, bool out, struct slm_err *err)
{
    struct model *m = s->m;
    int d = s->d, rc = 0;
    m->mid_cb = mid ? on_mid : NULL;
    m->mid_payload = s;
    for (int s0 = 0; s0 < s->nseq; s0 += s->batch) {
        if (cancelled(s)) { rc = slm_err_set(err, SLM_ECANCELLED, "SliceGPT cancelled in block %d", b); break; }
        int nb = s->nseq - s0 < s->batch ? s->nseq - s0 : s->batch, rows = nb * s->T;
        float *xh = s->X + (size_t)s0 * s->T * d;
        if ((rc = kb_upload(m->kb, s->xin, xh, (size_t)rows * d * sizeof(float), err)) ||
            (rc = gemm(m, KB_N, rows, r_in, d, s->xin, d, s->qf, d, s->xb, r_in, err)) ||
            (rc = model_block_forward(m, b, s->xb, nb, s->T, NULL, NULL, err)))
            break;
        if (!out) continue;
        if ((rc = kb_download(m->kb, xh, s->xb, (size_t)rows * d * sizeof(float), err)) ||
            (rc = gram_add(s, s->xb, xh, rows, err)))
            break;
    }
    m->mid_cb = NULL;
    m->mid_payload = NULL;
    return rc;
}

/* ---- rotate and slice (§7.5, §7.6) ---- */

static int do_block(struct sg *s, int b, int r, struct slm_err *err)
{
    struct model *m = s->m;
    struct block *bl = &m->blocks[b];
    bool par = m->block_kind == BLOCK_PARALLEL, last = b == m->cfg.n_layers - 1;
    int d = s->d, r_out = last ? d : r, rc;
    char stage[48];
    /* inputs: the previous stage's basis */
    if ((rc = shortcut_init(s, &bl->shortcut_attn, r, err))) return rc;
    enum lin_role in_roles[4] = { LIN_Q, LIN_K, LIN_V, LIN_FC1 };
    for (int i = 0; i < (par ? 4 : 3); i++)
        if ((rc = rot_input(s, &bl->lin[in_roles[i]], r, err))) return rc;
    bl->d_in = r;
    bl->d_mid = d;
    bl->d_out = d;
    if (!par) {
        if ((rc = block_pass(s, b, r, true, false, err))) return rc;
        snprintf(stage, sizeof stage, "layers.%d.mid", b);
        /* the block input basis is still needed to feed the second pass: keep it */
        float *qin = s->qf;
        s->qf = NULL;
        if ((rc = pca(s, stage, err))) goto seq_done;
        float *A = NULL;
        if ((rc = kb_alloc(m->kb, (void **)&A, (size_t)r * r * sizeof(float), err))) goto seq_done;
        if ((rc = gemm(m, KB_N, r, r, d, bl->shortcut_attn, d, s->qf, d, A, r, err))) { kb_release(m->kb, A); goto seq_done; }
        kb_release(m->kb, bl->shortcut_attn);
        bl->shortcut_attn = A;
        if ((rc = rot_output(s, &bl->lin[LIN_O], r, err)) || (rc = shortcut_init(s, &bl->shortcut_mlp, r, err)) ||
            (rc = rot_input(s, &bl->lin[LIN_FC1], r, err)) || (rc = rot_input(s, &bl->lin[LIN_UP], r, err)))
            goto seq_done;
        bl->d_mid = r;
        /* second pass: the block output with the mid stage sliced, fed through the input basis */
        float *qmid = s->qf;
        s->qf = qin;
        qin = NULL;
        rc = block_pass(s, b, r, false, true, err);
        kb_release(m->kb, s->qf);
        s->qf = qmid;
    seq_done:
        kb_release(m->kb, qin);
        if (rc) return rc;
    } else if ((rc = block_pass(s, b, r, false, true, err))) {
        return rc;
    }
    snprintf(stage, sizeof stage, "layers.%d.out", b);
    if ((rc = pca(s, stage, err))) return rc;
    float **sc = par ? &bl->shortcut_attn : &bl->shortcut_mlp;
    int sc_rows = par ? bl->d_in : bl->d_mid;
    float *S = NULL;
    if ((rc = kb_alloc(m->kb, (void **)&S, (size_t)sc_rows * r_out * sizeof(float), err))) return rc;
    if ((rc = gemm(m, KB_N, sc_rows, r_out, d, *sc, d, s->qf, d, S, r_out, err))) { kb_release(m->kb, S); return rc; }
    kb_release(m->kb, *sc);
    *sc = S;
    if ((par && (rc = rot_output(s, &bl->lin[LIN_O], r_out, err))) || (rc = rot_output(s, &bl->lin[LIN_FC2], r_out, err)))
        return rc;
    bl->d_out = r_out;
    return 0;
}

static void sg_free(struct sg *s)
{
    if (s->m) {
        kb_release(s->m->kb, s->qf);
        kb_release(s->m->kb, s->xin);
        kb_release(s->m->kb, s->xb);
        kb_release(s->m->kb, s->Cdev);
    }
    free(s->X);
    free(s->hx);
    free(s->C);
    free(s->chunk);
    free(s->Q);
    free(s->eig);
}

static int config_record(struct model *m, const struct slicegpt_opts *o, struct slm_err *err)
{
    json_t *blocks = json_array(), *sg = NULL;
    if (!blocks) return slm_err_set(err, SLM_ENOMEM, "SliceGPT: config");
    for (int b = 0; b < m->cfg.n_layers; b++)
        json_array_append_new(blocks, json_pack("[i,i,i]", m->blocks[b].d_in, m->blocks[b].d_mid, m->blocks[b].d_out));
    sg = json_pack("{s:i,s:i,s:f,s:f,s:i,s:b,s:o}", "hidden_size", m->cfg.hidden, "embedding_dim", m->embed_width,
                   "norm_eps", (double)m->cfg.norm_eps, "sparsity", o->sparsity, "round_to", o->round_to,
                   "reference_compat", o->reference_compat, "blocks", blocks);
    if (!sg || json_object_set_new(m->config_json, "slicegpt", sg) ||
        json_object_set_new(m->config_json, "tie_word_embeddings", json_false()))
        return slm_err_set(err, SLM_ENOMEM, "SliceGPT: config");
    return 0;
}

int slicegpt_run(struct model *m, const int32_t *ids, int nseq, int seqlen, const struct slicegpt_opts *o,
                 struct slm_err *err)
{
    struct sg s = { 0 };
    const struct model_config *c = &m->cfg;
    int rc = slicegpt_check_opts(o, err);
    if (rc) return rc;
    if ((rc = check_model(m, err))) return rc;
    if (nseq < 1 || seqlen < 1) return slm_err_set(err, SLM_EINVAL, "SliceGPT: no calibration data (%d x %d)", nseq, seqlen);
    if (m->pos_embed && seqlen > c->max_pos)
        return slm_err_set(err, SLM_EINVAL, "SliceGPT: calibration length %d exceeds max_position_embeddings %d", seqlen, c->max_pos);
    s.m = m;
    s.o = o;
    s.d = c->hidden;
    s.T = seqlen;
    s.nseq = nseq;
    s.N = nseq * seqlen;
    s.batch = o->batch > 0 ? o->batch : SG_ROWS_PER_BATCH / seqlen;
    if (s.batch < 1) s.batch = 1;
    if (s.batch > nseq) s.batch = nseq;
    size_t d = (size_t)s.d, brows = (size_t)s.batch * seqlen;
    s.X = malloc((size_t)s.N * d * sizeof(float));
    s.hx = malloc(brows * d * sizeof(float));
    s.C = calloc(d * d, sizeof(double));
    s.chunk = malloc(64 * d * sizeof(double));
    s.Q = malloc(d * d * sizeof(double));
    s.eig = malloc(d * sizeof(double));
    if (!s.X || !s.hx || !s.C || !s.chunk || !s.Q || !s.eig) {
        rc = slm_err_set(err, SLM_ENOMEM, "SliceGPT: calibration signals of %d x %d tokens", nseq, seqlen);
        goto done;
    }
    if ((rc = slicegpt_fuse(m, o->reference_compat, err))) goto done;
    if (m->kb->iface->gram_f64 &&
        ((rc = kb_alloc(m->kb, (void **)&s.Cdev, d * d * sizeof(double), err)) ||
         (rc = kb_upload(m->kb, s.Cdev, s.C, d * d * sizeof(double), err))))
        goto done;
    if ((rc = kb_alloc(m->kb, (void **)&s.xin, brows * d * sizeof(float), err)) ||
        (rc = kb_alloc(m->kb, (void **)&s.xb, brows * model_max_width(m) * sizeof(float), err)))
        goto done;
    /* block-0 input: the (fused) embeddings */
    for (int s0 = 0; s0 < nseq; s0 += s.batch) {
        int nb = nseq - s0 < s.batch ? nseq - s0 : s.batch;
        float *xh = s.X + (size_t)s0 * seqlen * d;
        if ((rc = model_embed(m, s.xb, ids + (size_t)s0 * seqlen, nb, seqlen, err)) ||
            (rc = kb_download(m->kb, xh, s.xb, (size_t)nb * seqlen * d * sizeof(float), err)) ||
            (rc = gram_add(&s, s.xb, xh, nb * seqlen, err)))
            goto done;
    }
    if ((rc = pca(&s, "embed", err))) goto done;
    int r = slicegpt_width(s.d, o->sparsity, o->round_to);
    model_embed_changed(m);   /* the host tables are rotated and sliced from here */
    if ((rc = rot_host(&s, &m->embed, (size_t)c->vocab, r, err))) goto done;
    if (m->pos_embed && (rc = rot_host(&s, &m->pos_embed, (size_t)c->max_pos + 2, r, err))) goto done;
    m->embed_width = r;
    for (int b = 0; b < c->n_layers; b++) {
        if ((rc = do_block(&s, b, r, err))) goto done;
        if (o->progress && o->progress(b + 1, c->n_layers, o->payload)) {
            rc = slm_err_set(err, SLM_ECANCELLED, "SliceGPT cancelled after block %d", b);
            goto done;
        }
    }
    /* head: the last block's output basis, full width */
    if ((rc = rot_cols_buf(&s, &m->head_w, c->vocab, s.d, err))) goto done;
    m->d_head = s.d;
    rc = config_record(m, o, err);
done:
    sg_free(&s);
    return rc;
}

/* ---- loading a sliced checkpoint ---- */

int slicegpt_config_apply(struct model *m, const json_t *config, struct slm_err *err)
{
    const json_t *sg = json_object_get(config, "slicegpt");
    const struct model_config *c = &m->cfg;
    int d = 0, emb = 0;
    double eps = c->norm_eps;
    if (!json_is_object(sg)) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt must be an object");
    const json_t *blocks = json_object_get(sg, "blocks");
    if (json_unpack((json_t *)sg, "{s:i,s:i,s?F}", "hidden_size", &d, "embedding_dim", &emb, "norm_eps", &eps))
        return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt needs hidden_size, embedding_dim (integers)");
    if (d != c->hidden) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.hidden_size %d differs from hidden_size %d", d, c->hidden);
    if (emb < 1 || emb > d) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.embedding_dim %d out of range [1, %d]", emb, d);
    if (!(eps > 0 && eps <= 1)) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.norm_eps out of range (0, 1]");
    if (!json_is_array(blocks) || (int)json_array_size(blocks) != c->n_layers)
        return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.blocks must list %d blocks", c->n_layers);
    if (m->block_kind == BLOCK_SEQ_POSTNORM || c->embed_dim != c->hidden)
        return slm_err_set(err, SLM_EUNSUPPORTED, "config.json: slicegpt on this architecture variant is not supported");
    int prev = emb;
    for (int b = 0; b < c->n_layers; b++) {
        int w[3];
        if (json_unpack(json_array_get(blocks, b), "[iii]", &w[0], &w[1], &w[2]))
            return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.blocks[%d] must be [d_in, d_mid, d_out]", b);
        for (int i = 0; i < 3; i++)
            if (w[i] < 1 || w[i] > d) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.blocks[%d] width %d out of range", b, w[i]);
        if (w[0] != prev) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt.blocks[%d] input %d != previous output %d", b, w[0], prev);
        m->blocks[b].d_in = w[0];
        m->blocks[b].d_mid = m->block_kind == BLOCK_PARALLEL ? w[2] : w[1];
        m->blocks[b].d_out = w[2];
        prev = w[2];
    }
    if (prev != d) return slm_err_set(err, SLM_EFORMAT, "config.json: slicegpt: the last block must write the full hidden size %d", d);
    m->norm = NORM_RMS;
    m->norm_divisor = (float)d;
    m->cfg.norm_eps = (float)eps;
    m->cfg.tie_word_embeddings = false;
    m->embed_width = emb;
    m->d_head = d;
    return 0;
}
