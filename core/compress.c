/*
** core/compress.c: the layer-wise SLiM pipeline (see compress.h, ALGORITHMS.md §1, §3.8, §4.8).
** DESIGN: statistics are gathered one calibration sequence at a time (B = 1), so the reference's
** running recurrences over sequences (§1.5) are reproduced exactly: Wanda's scaler_row in f32 and
** L2QER's column sums by the backend's col_stats (the inputs never leave the device, except for
** JSQ, which clips them on the host), downloaded once per linear input when compressed; the
** Hessian (only for SparseGPT / OPTQ, which need it) scaled and accumulated with a backend gemm.
** Linears that read the same input (q/k/v, gate/up) share one statistics slot. The per-layer
** reconstruction error ||X W^T - X W'^T|| / ||X W^T|| is measured on the inputs of the
** first calibration window, kept per slot (a full-H trace would cost d_out d_in^2 per layer).
** Per linear, magnitude / Wanda (N:M or unstructured) with AbsMax / SLiM-Quant keep W in backend
** memory when the backend has the ops (compress_linear_kb); the other methods work on a host copy.
*/
#include "compress.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch.h"
#include "dtype.h"
#include "jsq.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- options from the job spec ---- */

int compress_opts_from_spec(struct compress_opts *o, const struct jobspec *s, struct slm_err *err)
{
    struct compress_opts d = COMPRESS_OPTS_INIT;
    *o = d;
    if (s->method != JS_METHOD_SLIM) return slm_err_set(err, SLM_EINVAL, "compress: the spec's method is not \"slim\"");
    static const enum prune_method pm[] = { PRUNE_NONE, PRUNE_MAGNITUDE, PRUNE_WANDA, PRUNE_SPARSEGPT };
    static const enum quant_method qm[] = { QUANT_NONE, QUANT_ABSMAX, QUANT_SLIM, QUANT_OPTQ };
    static const enum lowrank_method lm[] = { LOWRANK_NONE, LOWRANK_NAIVE, LOWRANK_SLIM, LOWRANK_L2QER };
    o->prune.method = pm[s->pruning.method];
    o->prune.sparsity = s->pruning.sparsity;
    o->prune.n = s->pruning.n;
    o->prune.m = s->pruning.m;
    o->prune.damp = s->pruning.damp;
    o->prune.blocksize = s->pruning.blocksize;
    o->shift_zero_metrics = s->pruning.shift_zero_metrics;
    o->quant.method = qm[s->quantization.method];
    o->quant.bits = s->quantization.bits;
    o->quant.group_size = s->quantization.group_size;
    o->quant.column_wise = s->quantization.column_wise_grouping;
    o->scale_important_weights = s->quantization.scale_important_weights;
    if (o->quant.method == QUANT_OPTQ) {
        o->prune.optq_bits = s->quantization.bits;
        o->prune.optq_group = s->quantization.group_size;
    }
    o->lowrank.method = lm[s->lowrank.method];
    o->lowrank.rank_ratio = s->lowrank.rank_ratio;
    o->lowrank.tile = s->lowrank.tile;
    o->lowrank.pad = s->lowrank.pad;
    o->lowrank.quantize = s->lowrank.quantize;
    o->lowrank.column_wise = s->quantization.column_wise_grouping;
    o->lowrank.bits = s->quantization.bits;
    o->separate_lora = s->lowrank.separate;
    o->jsq.on = s->quantization.joint;
    o->jsq.mixing_factor = s->quantization.mixing_factor;
    o->prune_lora = s->lowrank.prune;
    o->bf16 = o->quant.bf16 = o->lowrank.bf16 = s->precision == JS_PRECISION_BF16;
    return 0;
}

void compress_result_free(struct compress_result *r)
{
    if (!r || !r->lin) return;
    for (int b = 0; b < r->nblocks; b++)
        for (int k = 0; k < LIN_COUNT; k++) {
            struct compressed_linear *c = &r->lin[b][k];
            free(c->mask);
            free(c->codes);
            free(c->col_scale);
            quant_params_free(&c->qp);
            quant_params_free(&c->qpl);
            quant_params_free(&c->qpr);
            free(c->lora_l);
            free(c->lora_r);
        }
    free(r->lin);
    r->lin = NULL;
}

/* ---- statistics (§1.5) ---- */

struct stat_slot {
    int d_in;
    int nseq;              /* sequences accumulated so far (n of the recurrence) */
    float *scaler;         /* backend [d_in] Wanda scaler_row */
    double *abssum;        /* backend [d_in] sum |x| (L2QER) */
    float *h_scaler;       /* host copies, downloaded once calibration is over (stat_host) */
    double *h_abssum;
    int64_t ntok;
    float *H;              /* backend [d_in x d_in], NULL unless the method needs it */
    float *x0;             /* backend [x0_rows x d_in]: inputs of the first window (error figure) */
    int x0_rows;
    struct jsq_stats jsq;  /* JSQ only: clipped-input statistics */
};

struct block_stats {
    struct model *m;
    struct stat_slot slot[LIN_COUNT];
    int slot_of[LIN_COUNT];    /* role -> slot index, -1 none */
    const float *last_x;       /* input of the previous callback in this forward */
    int last_slot;
    float *hx;                 /* JSQ: host scratch [rows x max d_in] */
    size_t hx_n;
    float *bx;                 /* JSQ: backend scratch for the clipped input, hx_n floats */
    volatile sig_atomic_t *cancel;
    struct slm_err *err;
    int rc;
    bool need_h;               /* SparseGPT / OPTQ: gather the Hessian */
    bool jsq;                  /* clip inputs and keep JSQ statistics (scaler_row then sees the clipped x) */
    const struct linear *fail_lin; /* whose input was being added when stats_add failed (error message) */
    int fail_rows;
};

/* Backend statistics of a slot, zeroed. */
static int stat_slot_alloc(struct kbackend *kb, struct stat_slot *s, struct slm_err *err)
{
    size_t d = (size_t)s->d_in;
    void *zero = calloc(d, sizeof(double));
    int rc;
    if (!zero) return slm_err_set(err, SLM_ENOMEM, "calibration statistics: out of memory");
    if (!(rc = kb_alloc(kb, (void **)&s->scaler, sizeof *s->scaler * d, err)) &&
        !(rc = kb_alloc(kb, (void **)&s->abssum, sizeof *s->abssum * d, err)) &&
        !(rc = kb_upload(kb, s->scaler, zero, sizeof *s->scaler * d, err)))
        rc = kb_upload(kb, s->abssum, zero, sizeof *s->abssum * d, err);
    free(zero);
    return rc;
}

/* Host copy of the finished scaler_row and column sums, fetched on first use: the linears that
** share an input share the download. */
static int stat_host(struct kbackend *kb, struct stat_slot *s, struct slm_err *err)
{
    size_t d = (size_t)s->d_in;
    if (s->h_scaler) return 0;
    if (!s->scaler) return slm_err_set(err, SLM_EINTERNAL, "calibration statistics: no input seen");
    float *hs = malloc(sizeof *hs * d);
    double *ha = malloc(sizeof *ha * d);
    int rc;
    if (!hs || !ha) rc = slm_err_set(err, SLM_ENOMEM, "calibration statistics: out of memory");
    else if (!(rc = kb_download(kb, hs, s->scaler, sizeof *hs * d, err)))
        rc = kb_download(kb, ha, s->abssum, sizeof *ha * d, err);
    if (rc) {
        free(hs);
        free(ha);
        return rc;
    }
    s->h_scaler = hs;
    s->h_abssum = ha;
    return 0;
}

/* JSQ's statistics clip x on the host, and scaler_row must see the clipped values: x is
** downloaded, clipped, and uploaded again into bx for col_stats. *xs: the input col_stats reads. */
static int stats_add_jsq(struct block_stats *bs, struct stat_slot *s, const float *x, int rows, const float **xs)
{
    struct kbackend *kb = bs->m->kb;
    size_t n = (size_t)rows * s->d_in;
    int rc;
    if (bs->hx_n < n) {
        free(bs->hx);
        kb_release(kb, bs->bx);
        bs->hx = NULL;
        bs->bx = NULL;
        bs->hx_n = 0;
        if (!(bs->hx = malloc(sizeof *bs->hx * n))) return slm_err_set(bs->err, SLM_ENOMEM, "calibration: out of memory");
        if ((rc = kb_alloc(kb, (void **)&bs->bx, sizeof *bs->bx * n, bs->err))) return rc;
        bs->hx_n = n;
    }
    if ((rc = kb_download(kb, bs->hx, x, sizeof *bs->hx * n, bs->err)) ||
        (rc = jsq_stats_add(&s->jsq, bs->hx, rows, s->d_in, bs->err)) ||
        (rc = kb_upload(kb, bs->bx, bs->hx, sizeof *bs->hx * n, bs->err)))
        return rc;
    *xs = bs->bx;
    return 0;
}

static int stats_add(struct block_stats *bs, struct stat_slot *s, const float *x, int rows)
{
    struct kbackend *kb = bs->m->kb;
    size_t n = (size_t)rows * s->d_in;
    int rc;
    if (!s->scaler) {
        if ((rc = stat_slot_alloc(kb, s, bs->err))) return rc;
        if (bs->need_h && (rc = kb_alloc(kb, (void **)&s->H, sizeof(float) * (size_t)s->d_in * s->d_in, bs->err))) return rc;
        if ((rc = kb_alloc(kb, (void **)&s->x0, sizeof(float) * n, bs->err)) ||
            (rc = kb->iface->copy(kb, s->x0, x, sizeof(float) * n, bs->err)))
            return rc;
        s->x0_rows = rows;
    }
    const float *xs = x;
    if (bs->jsq && (rc = stats_add_jsq(bs, s, x, rows, &xs))) return rc;
    if ((rc = kb_col_stats(kb, s->scaler, s->abssum, xs, rows, s->d_in, s->nseq, bs->err))) return rc;
    float nn = (float)s->nseq;
    s->ntok += rows;
    if (!s->H) {
        s->nseq++;
        return 0;
    }
    /* H <- H n/(n+1) + (2/(n+1)) x^T x. Under bf16 emulation x holds bf16 values (the rounded output
    ** of the op before the linear, as lin_fwd's hint assumes), so the products are exact on TF32
    ** tensor cores: the largest GEMM of SparseGPT / OPTQ runs there, in f32 accumulation. */
    if (s->nseq > 0 && (rc = kb->iface->scale(kb, s->H, nn / (nn + 1), (size_t)s->d_in * s->d_in, bs->err))) return rc;
    struct kgemm_args g = { .ta = KB_T, .tb = KB_N, .m = s->d_in, .n = s->d_in, .k = rows, .alpha = 2.0f / (nn + 1),
                            .beta = s->nseq > 0 ? 1.0f : 0.0f, .a = x, .lda = s->d_in, .b = x, .ldb = s->d_in,
                            .c = s->H, .ldc = s->d_in, .batch = 1,
                            .bf16_inputs = bs->m->act_bf16 && !bs->m->input_quant[0] };
    if ((rc = kb->iface->gemm(kb, &g, bs->err))) return rc;
    s->nseq++;
    return 0;
}

static int stats_cb(int block, enum lin_role role, const struct linear *lin, const float *x, int rows, void *payload)
{
    struct block_stats *bs = payload;
    (void)block;
    (void)lin;
    if (bs->cancel && *bs->cancel) {
        bs->rc = slm_err_set(bs->err, SLM_ECANCELLED, "cancelled");
        return 1;
    }
    if (x == bs->last_x && bs->last_slot >= 0 && bs->slot[bs->last_slot].d_in == lin->d_in) {
        bs->slot_of[role] = bs->last_slot;   /* same input as the previous linear: share */
        return 0;
    }
    int k = bs->slot_of[role];
    if ((bs->rc = stats_add(bs, &bs->slot[k], x, rows))) {
        bs->fail_lin = lin;
        bs->fail_rows = rows;
        return 1;
    }
    bs->last_x = x;
    bs->last_slot = k;
    return 0;
}

static void stats_free(struct block_stats *bs)
{
    for (int k = 0; k < LIN_COUNT; k++) {
        kb_release(bs->m->kb, bs->slot[k].scaler);
        kb_release(bs->m->kb, bs->slot[k].abssum);
        free(bs->slot[k].h_scaler);
        free(bs->slot[k].h_abssum);
        kb_release(bs->m->kb, bs->slot[k].H);
        kb_release(bs->m->kb, bs->slot[k].x0);
        jsq_stats_free(&bs->slot[k].jsq);
        memset(&bs->slot[k], 0, sizeof bs->slot[k]);
    }
    free(bs->hx);
    kb_release(bs->m->kb, bs->bx);
    bs->hx = NULL;
    bs->bx = NULL;
    bs->hx_n = 0;
}

static void stats_init(struct block_stats *bs, struct block *bl)
{
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &bl->lin[r];
        struct stat_slot *s = &bs->slot[r];
        bs->slot_of[r] = l->w ? r : -1;
        if (!l->w) continue;
        s->d_in = l->d_in;   /* buffers come with the first input (shared inputs never allocate) */
    }
}

/* ---- one linear (§3.8, §4.8) ---- */

struct lin_work {
    float *W;      /* dense weight (host) */
    float *Wc;     /* compressed weight (host) */
    float *E;      /* scratch [d_out x d_in] */
    float *s;      /* saliency [d_in] (shifted scaler) */
    float *L, *R;  /* adapters */
    int rank;
};

static void lin_work_free(struct lin_work *w)
{
    free(w->W);
    free(w->Wc);
    free(w->E);
    free(w->s);
    free(w->L);
    free(w->R);
    memset(w, 0, sizeof *w);
}

/* rel. error ||X D^T|| / ||X W^T||, D = W - W_eff, on the kept inputs X (backend [rows x d_in]),
** from backend DW = [D; W] [2 d_out x d_in]. */
static int rel_error_kb(struct kbackend *kb, double *out, const float *DW, const float *X, int rows, int d_out, int d_in,
                        struct slm_err *err)
{
    size_t ny = (size_t)rows * 2 * d_out;
    float *by = NULL, *h = malloc(sizeof *h * ny);
    double *hd = malloc(sizeof *hd * 2 * (size_t)rows);   /* rows x {num, den} */
    double num = 0, den = 0;
    int rc;
    if (!h || !hd) { rc = slm_err_set(err, SLM_ENOMEM, "layer error: out of memory"); goto done; }
    if ((rc = kb_alloc(kb, (void **)&by, sizeof *h * ny, err))) goto done;
    /* Y = X [D; W]^T: the first d_out columns are X D^T, the next X W^T */
    if ((rc = kb_linear(kb, by, X, DW, NULL, rows, 2 * d_out, d_in, err)) || (rc = kb_download(kb, h, by, sizeof *h * ny, err)))
        goto done;
    /* per-row partial sums (in parallel), then added in row order: the same bits on any number
    ** of threads */
#pragma omp parallel for schedule(static) if (ny >= (1 << 16))
    for (int t = 0; t < rows; t++) {
        double pn = 0, pd = 0;
        for (int c = 0; c < d_out; c++) {
            double a = h[(size_t)t * 2 * d_out + c], b = h[(size_t)t * 2 * d_out + d_out + c];
            pn += a * a;
            pd += b * b;
        }
        hd[2 * t] = pn;
        hd[2 * t + 1] = pd;
    }
    for (int t = 0; t < rows; t++) {
        num += hd[2 * t];
        den += hd[2 * t + 1];
    }
    *out = den > 0 ? sqrt(num / den) : 0;
done:
    kb_release(kb, by);
    free(h);
    free(hd);
    return rc;
}

/* rel_error_kb for host W and W_eff [d_out x d_in]: [W - W_eff; W] goes up once. */
static int rel_error(struct kbackend *kb, double *out, const float *W, const float *Weff, const float *X, int rows,
                     int d_out, int d_in, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in;
    float *bd = NULL, *h = malloc(sizeof *h * n * 2);
    int rc;
    if (!h) return slm_err_set(err, SLM_ENOMEM, "layer error: out of memory");
    for (size_t i = 0; i < n; i++) { h[i] = W[i] - Weff[i]; h[n + i] = W[i]; }
    if (!(rc = kb_alloc(kb, (void **)&bd, sizeof *h * n * 2, err)) && !(rc = kb_upload(kb, bd, h, sizeof *h * n * 2, err))) {
        free(h);
        h = NULL;
        rc = rel_error_kb(kb, out, bd, X, rows, d_out, d_in, err);
    }
    kb_release(kb, bd);
    free(h);
    return rc;
}

/* keep_codes: the linear's mask, codes, scales and column scaling become the result's; the
** caller's pointers are left NULL (cs may be NULL when there is none to hand over). */
static void hand_over(struct compressed_linear *cl, uint8_t **mask, int8_t **codes, struct quant_params *qp, float **cs)
{
    cl->mask = *mask;
    *mask = NULL;
    cl->codes = *codes;
    *codes = NULL;
    cl->qp = *qp;
    qp->scale = NULL;
    if (cs) {
        cl->col_scale = *cs;
        *cs = NULL;
    }
}

/* Attach host adapters to the linear as backend buffers. */
static int attach_adapters(struct kbackend *kb, struct linear *l, const float *L, const float *R, int r, struct slm_err *err)
{
    int rc;
    kb_release(kb, l->lora_l);
    kb_release(kb, l->lora_r);
    l->lora_l = l->lora_r = NULL;
    l->rank = 0;
    if (r == 0) return 0;
    if ((rc = kb_alloc(kb, (void **)&l->lora_l, sizeof *L * (size_t)l->d_in * r, err)) ||
        (rc = kb_alloc(kb, (void **)&l->lora_r, sizeof *R * (size_t)r * l->d_out, err)) ||
        (rc = kb_upload(kb, l->lora_l, L, sizeof *L * (size_t)l->d_in * r, err)) ||
        (rc = kb_upload(kb, l->lora_r, R, sizeof *R * (size_t)r * l->d_out, err)))
        return rc;
    l->rank = r;
    return 0;
}

/* Can compress_linear keep the weight in backend memory? Magnitude / Wanda (or no pruning) with
** AbsMax / SLiM-Quant (or none) and no adapters, on a backend with the ops. */
static bool linear_on_backend(struct kbackend *kb, const struct compress_opts *o)
{
    const struct kbackend_i *f = kb->iface;
    bool pruned = o->prune.method != PRUNE_NONE, quant = o->quant.method != QUANT_NONE;
    if (o->lowrank.method != LOWRANK_NONE || o->prune.method == PRUNE_SPARSEGPT || o->quant.method == QUANT_OPTQ)
        return false;
    if ((pruned && !prune_on_backend(kb, &o->prune)) || (quant && !quant_weight_on_backend(kb))) return false;
    return !(pruned && quant && o->prune.method == PRUNE_WANDA) || f->apply_mask;
}

/* compress_linear's paths for which linear_on_backend holds, bit for bit as the host path: W
** stays in backend memory (a backend copy of the dense W serves Wanda's mask and the error
** figure). Only the scaler, the quantizer's scales and, for the checkpoint (keep_codes), the mask
** and codes cross; the dense W comes to the host only for scale_important_weights. */
static int compress_linear_kb(struct model *m, struct linear *l, struct stat_slot *st, const struct compress_opts *o,
                              struct compressed_linear *cl, struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int d_out = l->d_out, d_in = l->d_in, rc;
    size_t n = (size_t)d_out * d_in;
    bool pruned = o->prune.method != PRUNE_NONE, quant = o->quant.method != QUANT_NONE;
    /* Wanda's quantize_first: Q(dense W), then the pruned entries (mask of the dense W) go */
    bool quant_first = pruned && quant && o->prune.method == PRUNE_WANDA;
    float *DW = NULL;   /* backend [2n]: W - W_eff (before that: Wanda's scratch), then the dense W */
    uint8_t *d_mask = NULL, *mask = NULL;
    int8_t *codes = NULL;
    float *s = malloc(sizeof *s * (size_t)d_in), *cs = NULL;
    struct quant_params qp = { 0 };
    if (!s || (pruned && o->keep_codes && !(mask = malloc(n))) || (quant && o->keep_codes && !(codes = malloc(n)))) {
        rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name);
        goto done;
    }
    if ((rc = kb_alloc(kb, (void **)&DW, sizeof *DW * 2 * n, err)) ||
        (rc = kb->iface->copy(kb, DW + n, l->w, sizeof *DW * n, err)) || (rc = stat_host(kb, st, err)))
        goto done;
    memcpy(s, st->h_scaler, sizeof *s * (size_t)d_in);
    if (o->shift_zero_metrics) prune_shift_scaler(s, d_in);
    if (o->scale_important_weights) {
        float *W = malloc(sizeof *W * n);
        if (!W || !(cs = malloc(sizeof *cs * (size_t)d_in))) rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name);
        else if (!(rc = kb_download(kb, W, l->w, sizeof *W * n, err))) rc = quant_important_columns(cs, W, d_out, d_in, s, err);
        free(W);
        if (rc) goto done;
    }
    if (quant_first) {
        if ((rc = kb_alloc(kb, (void **)&d_mask, n, err)) || (rc = kb->iface->copy(kb, DW, l->w, sizeof *DW * n, err)) ||
            (rc = prune_weight_kb(kb, DW, s, d_out, d_in, &o->prune, d_mask, err)) ||
            (rc = quant_weight(kb, l->w, d_out, d_in, &o->quant, cs, codes, &qp, err)) ||
            (rc = kb_apply_mask(kb, l->w, d_mask, n, err)) || (mask && (rc = kb_download(kb, mask, d_mask, n, err))))
            goto done;
        kb_release(kb, d_mask);
        d_mask = NULL;
        for (size_t i = 0; codes && i < n; i++)
            if (mask[i]) codes[i] = 0;
    } else {
        /* magnitude: prune, then quantize the sparse matrix (Wanda without quantization: the same) */
        if ((pruned && (rc = prune_weight(kb, l->w, s, d_out, d_in, &o->prune, mask, err))) ||
            (quant && (rc = quant_weight(kb, l->w, d_out, d_in, &o->quant, cs, codes, &qp, err))))
            goto done;
    }
    if ((rc = attach_adapters(kb, l, NULL, NULL, 0, err))) goto done;
    cl->present = true;
    cl->rank = 0;
    /* D = -W_eff + W: the same bits as W - W_eff */
    if ((rc = kb->iface->copy(kb, DW, l->w, sizeof *DW * n, err)) || (rc = kb->iface->scale(kb, DW, -1.0f, n, err)) ||
        (rc = kb->iface->add(kb, DW, DW + n, n, err)) ||
        (rc = rel_error_kb(kb, &cl->rel_error, DW, st->x0, st->x0_rows, d_out, d_in, err)))
        goto done;
    kb_release(kb, DW);
    DW = NULL;
    if (o->keep_codes) hand_over(cl, &mask, &codes, &qp, &cs);
done:
    kb_release(kb, DW);
    kb_release(kb, d_mask);
    free(s);
    free(mask);
    free(codes);
    free(cs);
    quant_params_free(&qp);
    return rc;
}

static int compress_linear(struct model *m, struct linear *l, struct stat_slot *st, const struct compress_opts *o,
                           struct compressed_linear *cl, struct slm_err *err)
{
    if (linear_on_backend(m->kb, o)) return compress_linear_kb(m, l, st, o, cl, err);
    struct kbackend *kb = m->kb;
    int d_out = l->d_out, d_in = l->d_in, rc = 0;
    size_t n = (size_t)d_out * d_in;
    struct lin_work w = { 0 };
    uint8_t *mask = NULL;
    int8_t *codes = NULL;
    float *Hc = NULL, *cs = NULL;
    struct quant_params qp = { 0 };
    bool pruned = o->prune.method != PRUNE_NONE, quant = o->quant.method != QUANT_NONE;
    bool lora = o->lowrank.method != LOWRANK_NONE;
    w.W = malloc(sizeof *w.W * n);
    w.Wc = malloc(sizeof *w.Wc * n);
    w.s = malloc(sizeof *w.s * (size_t)d_in);
    mask = pruned ? calloc(n, 1) : NULL;
    codes = quant && o->keep_codes ? malloc(n) : NULL;
    if (!w.W || !w.Wc || !w.s || (pruned && !mask) || (quant && o->keep_codes && !codes)) {
        rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name);
        goto done;
    }
    if ((rc = kb_download(kb, w.W, l->w, sizeof *w.W * n, err))) goto done;   /* bf16 already (model_set_bf16) */
    if ((rc = stat_host(kb, st, err))) goto done;
    memcpy(w.s, st->h_scaler, sizeof *w.s * (size_t)d_in);
    if (o->shift_zero_metrics) prune_shift_scaler(w.s, d_in);
    if (o->scale_important_weights) {
        if (!(cs = malloc(sizeof *cs * (size_t)d_in))) { rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name); goto done; }
        if ((rc = quant_important_columns(cs, w.W, d_out, d_in, w.s, err))) goto done;
    }

    if (o->prune.method == PRUNE_SPARSEGPT || o->quant.method == QUANT_OPTQ) {
        /* SparseGPT (+ OPTQ inside the OBS loop), or OPTQ alone: the backend weight is updated */
        struct prune_opts po = o->prune;
        if (o->prune.method != PRUNE_SPARSEGPT) { po.sparsity = 0; po.n = po.m = 0; }
        if ((rc = kb_alloc(kb, (void **)&Hc, sizeof(float) * (size_t)d_in * d_in, err)) ||
            (rc = kb->iface->copy(kb, Hc, st->H, sizeof(float) * (size_t)d_in * d_in, err)))
            goto done;
        if ((rc = prune_sparsegpt(kb, l->w, Hc, d_out, d_in, &po, mask, codes, &qp, err))) goto done;
        if ((rc = kb_download(kb, w.Wc, l->w, sizeof *w.Wc * n, err))) goto done;
        if (o->bf16)
            for (size_t i = 0; i < n; i++) w.Wc[i] = bf16_round(w.Wc[i]);
    } else {
        if (pruned && (rc = prune_mask_host(mask, w.W, o->prune.method == PRUNE_WANDA ? w.s : NULL, d_out, d_in, &o->prune, err)))
            goto done;
        memcpy(w.Wc, w.W, sizeof *w.W * n);
        if (o->prune.method == PRUNE_MAGNITUDE) {
            /* magnitude: prune, then quantize the sparse matrix */
            for (size_t i = 0; i < n; i++) if (mask[i]) w.Wc[i] = 0;
            if (quant && (rc = quant_weight_host(w.Wc, d_out, d_in, &o->quant, cs, codes, &qp, err))) goto done;
        } else {
            /* Wanda path, quantize_first: Q(W dense), then zero the pruned entries */
            if (quant && (rc = quant_weight_host(w.Wc, d_out, d_in, &o->quant, cs, lora ? NULL : codes, &qp, err))) goto done;
            for (size_t i = 0; mask && i < n; i++)
                if (mask[i]) {
                    w.Wc[i] = 0;
                    if (codes && !lora) codes[i] = 0;
                }
            if (lora) {
                const float *d = NULL;
                w.rank = lowrank_rank(d_out, d_in, &o->lowrank);
                w.E = malloc(sizeof *w.E * n);
                w.L = malloc(sizeof *w.L * (size_t)d_in * (w.rank ? w.rank : 1));
                w.R = malloc(sizeof *w.R * (size_t)(w.rank ? w.rank : 1) * d_out);
                if (!w.E || !w.L || !w.R) { rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name); goto done; }
                float *dd = (float *)w.s;   /* reuse: becomes the column scaling of the error */
                if (o->lowrank.method == LOWRANK_SLIM) {
                    bool ok = true;
                    for (int j = 0; j < d_in; j++) ok &= w.s[j] > 0;
                    for (int j = 0; ok && j < d_in; j++) dd[j] = o->bf16 ? bf16_round(sqrtf(w.s[j])) : sqrtf(w.s[j]);
                    d = ok ? dd : NULL;   /* a zero saliency falls back to Naive-LoRA, as the reference */
                } else if (o->lowrank.method == LOWRANK_L2QER) {
                    double mx = 0;
                    for (int j = 0; j < d_in; j++) mx = fmax(mx, st->h_abssum[j]);
                    for (int j = 0; j < d_in; j++)
                        dd[j] = (float)(st->h_abssum[j] > 0 ? st->h_abssum[j] / (mx > 0 ? mx : 1) : 1e-6);
                    d = dd;
                }
                for (size_t i = 0; i < n; i++) w.E[i] = w.W[i] - w.Wc[i];
                if ((rc = lowrank_fit(kb, w.L, w.R, w.E, d, d_out, d_in, w.rank, o->bf16, err))) goto done;
                if (o->prune_lora && w.rank) {
                    /* prune_lora works on L before the D^-1 division (§4.5), on canonical signs: its
                    ** signed selection must not hang on which SVD the backend ran */
                    lowrank_canonical_signs(w.L, w.R, d_out, d_in, w.rank);
                    for (int j = 0; d && j < d_in; j++)
                        for (int c = 0; c < w.rank; c++) w.L[(size_t)j * w.rank + c] *= d[j];
                    if ((rc = lowrank_prune_adapter(kb, w.L, w.R, d_out, d_in, w.rank, o->prune_lora_iters, NULL, NULL, err)))
                        goto done;
                    for (int j = 0; d && j < d_in; j++)
                        for (int c = 0; c < w.rank; c++) w.L[(size_t)j * w.rank + c] /= d[j];
                }
                if ((rc = lowrank_product(kb, w.E, w.L, w.R, d_out, d_in, w.rank, o->bf16, err))) goto done;
                /* final weight Q(M . (W - L R)) with a fresh scale */
                for (size_t i = 0; i < n; i++) w.Wc[i] = mask && mask[i] ? 0 : (o->bf16 ? bf16_round(w.W[i] - w.E[i]) : w.W[i] - w.E[i]);
                quant_params_free(&qp);
                if (quant && (rc = quant_weight_host(w.Wc, d_out, d_in, &o->quant, cs, codes, &qp, err))) goto done;
                if (!o->separate_lora) {
                    for (size_t i = 0; i < n; i++) w.Wc[i] += w.E[i];
                    w.rank = 0;
                }
            }
        }
        if ((rc = kb_upload(kb, l->w, w.Wc, sizeof *w.Wc * n, err))) goto done;
    }
    if ((rc = attach_adapters(kb, l, w.L, w.R, w.rank, err))) goto done;
    cl->present = true;
    cl->rank = w.rank;
    /* effective weight for the error figure: W' + (L R)^T */
    if (w.rank && w.E)
        for (size_t i = 0; i < n; i++) w.E[i] += w.Wc[i];
    if ((rc = rel_error(kb, &cl->rel_error, w.W, w.rank && w.E ? w.E : w.Wc, st->x0, st->x0_rows, d_out, d_in, err))) goto done;
    if (o->keep_codes) hand_over(cl, &mask, &codes, &qp, &cs);
done:
    kb_release(kb, Hc);
    free(mask);
    free(codes);
    free(cs);
    quant_params_free(&qp);
    lin_work_free(&w);
    return rc;
}

/* ---- the block loop (§1.4) ---- */

/* Under bf16 emulation, is every value of a compressed weight bf16? Pruning zeroes bf16 values,
** AbsMax / SLiM-Quant store bf16 levels and a separate adapter leaves Q(M . bf16(W - L R)); the
** SparseGPT/OPTQ updates, merged adapters and JSQ's quantizer leave f32 values. The recompute
** pass may then keep the TF32 hint (struct linear.w_bf16); tests/unit/core/compress.c checks it. */
static bool compressed_stays_bf16(const struct compress_opts *o)
{
    return o->bf16 && !o->jsq.on && o->prune.method != PRUNE_SPARSEGPT && o->quant.method != QUANT_OPTQ &&
           (o->lowrank.method == LOWRANK_NONE || o->separate_lora);
}

static int report(const struct compress_opts *o, const char *stage, int b, int nb, const char *layer, double e,
                  double frac, struct slm_err *err)
{
    if (o->cancel && *o->cancel) return slm_err_set(err, SLM_ECANCELLED, "cancelled");
    if (!o->progress) return 0;
    struct compress_progress p = { stage, b, nb, layer, e, frac };
    return o->progress(&p, o->payload) ? slm_err_set(err, SLM_ECANCELLED, "cancelled") : 0;
}

/* Groups of g rows (row-wise) or g columns (column-wise) must tile a rows x cols matrix. */
static bool groups_tile(int rows, int cols, int g, bool column_wise)
{
    return g <= 0 || (column_wise ? cols % g == 0 : rows % g == 0);
}

int compress_check_model(const struct model *m, const struct compress_opts *o, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    const int shape[LIN_COUNT][2] = { { q, c->hidden }, { kv, c->hidden }, { kv, c->hidden }, { c->hidden, q },
                                      { c->ffn, c->hidden }, { c->ffn, c->hidden }, { c->hidden, c->ffn } };
    bool qlora = o->lowrank.method != LOWRANK_NONE && o->lowrank.quantize && o->separate_lora && o->quant.method != QUANT_NONE;
    for (int r = 0; r < LIN_COUNT; r++) {
        if (!m->arch->names->lin[r]) continue;
        int d_out = shape[r][0], d_in = shape[r][1];
        if (o->quant.method == QUANT_ABSMAX && !groups_tile(d_out, d_in, o->quant.group_size, o->quant.column_wise))
            return slm_err_set(err, SLM_EINVAL, "/quantization/group_size: %d does not divide the %s of %s (%d x %d)",
                               o->quant.group_size, o->quant.column_wise ? "input columns" : "output rows",
                               m->arch->names->lin[r], d_out, d_in);
        if (!qlora) continue;
        int rank = lowrank_rank(d_out, d_in, &o->lowrank), t = o->lowrank.tile;
        /* L' [d_in x rank] and R' [rank x d_out] are group-quantized with tiles of t (§4.6) */
        if (rank && (!groups_tile(d_in, rank, t, o->lowrank.column_wise) || !groups_tile(rank, d_out, t, o->lowrank.column_wise)))
            return slm_err_set(err, SLM_EINVAL, "/lowrank/tile: quantized adapters of %s (%d x %d, rank %d) are not a multiple "
                               "of %d", m->arch->names->lin[r], d_out, d_in, rank, t);
    }
    return 0;
}

static int check_supported(const struct model *m, const struct compress_opts *o, struct slm_err *err)
{
    if (o->version != COMPRESS_OPTS_VERSION) return slm_err_set(err, SLM_EINVAL, "compress_opts: version %d", o->version);
    if (o->lowrank.method != LOWRANK_NONE && (o->prune.method == PRUNE_MAGNITUDE || o->prune.method == PRUNE_SPARSEGPT ||
                                              o->quant.method == QUANT_OPTQ))
        return slm_err_set(err, SLM_EUNSUPPORTED, "adapters need wanda pruning (or none) and absmax / slim-quant");
    if (o->prune_lora && (o->lowrank.method == LOWRANK_NONE || o->prune.n != 2 || o->prune.m != 4 || !o->separate_lora))
        return slm_err_set(err, SLM_EINVAL, "prune_lora needs adapters, 2:4 pruning and separate adapters");
    if (m->block_kind != BLOCK_SEQ && m->block_kind != BLOCK_PARALLEL && m->block_kind != BLOCK_SEQ_POSTNORM)
        return slm_err_set(err, SLM_EUNSUPPORTED, "compress: unknown block layout");
    if (o->jsq.on) {
        if (o->prune.method != PRUNE_WANDA || o->quant.method != QUANT_ABSMAX || o->quant.group_size <= 0)
            return slm_err_set(err, SLM_EINVAL, "JSQ needs wanda pruning and group absmax (group_size > 0)");
        if (o->lowrank.method != LOWRANK_NONE || o->scale_important_weights)
            return slm_err_set(err, SLM_EUNSUPPORTED, "JSQ: adapters and important-weight scaling are not supported");
        if (!(o->jsq.mixing_factor >= 0) || !isfinite(o->jsq.mixing_factor))
            return slm_err_set(err, SLM_EINVAL, "JSQ: mixing factor %g", o->jsq.mixing_factor);
        return jsq_check_model(m, err);
    }
    return 0;
}

/* Adapter quantization happens after every block is done (§4.6): later blocks calibrate with
** full-precision adapters. Adapters of unloaded blocks are quantized in their host copies. */
static int quantize_all_adapters(struct model *m, const struct compress_opts *o, struct compress_result *res,
                                 struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int rc = 0;
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &m->blocks[b].lin[r];
            struct compressed_linear *cl = res && res->lin ? &res->lin[b][r] : NULL;
            bool host = cl && cl->lora_l;
            int rank = host ? cl->rank : l->rank;
            if (!rank) continue;
            size_t nl = (size_t)l->d_in * rank, nr = (size_t)rank * l->d_out;
            float *L = host ? cl->lora_l : malloc(sizeof *L * nl), *R = host ? cl->lora_r : malloc(sizeof *R * nr);
            struct quant_params pl = { 0 }, pr = { 0 };
            if (!L || !R) rc = slm_err_set(err, SLM_ENOMEM, "adapter quantization: out of memory");
            if (!rc && !host) rc = kb_download(kb, L, l->lora_l, sizeof *L * nl, err);
            if (!rc && !host) rc = kb_download(kb, R, l->lora_r, sizeof *R * nr, err);
            if (!rc) rc = lowrank_quantize(L, R, l->d_out, l->d_in, rank, &o->lowrank, &pl, &pr, err);
            if (!rc && l->lora_l) rc = kb_upload(kb, l->lora_l, L, sizeof *L * nl, err);
            if (!rc && l->lora_r) rc = kb_upload(kb, l->lora_r, R, sizeof *R * nr, err);
            if (host) L = R = NULL;   /* the host copies stay with res */
            if (!rc && cl) {
                cl->qpl = pl;
                cl->qpr = pr;
                pl.scale = pr.scale = NULL;
            }
            quant_params_free(&pl);
            quant_params_free(&pr);
            free(L);
            free(R);
            if (rc) return rc;
        }
    return 0;
}

/* ---- block streaming: per-block figures, then the block goes (compress_opts.unload_blocks) ---- */

/* Adds the exact zeros and entries of block b's compressed linears to res (measured sparsity),
** counted where the weights are (kb_count_zeros). */
static int count_zeros(struct model *m, int b, struct compress_result *res, struct slm_err *err)
{
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &m->blocks[b].lin[r];
        if (!l->w) continue;
        size_t n = (size_t)l->d_out * l->d_in;
        uint64_t z;
        int rc = kb_count_zeros(m->kb, &z, l->w, n, err);
        if (rc) return rc;
        res->zeros += (int64_t)z;
        res->weights += (int64_t)n;
    }
    return 0;
}

static uint64_t block_bytes(const struct model *m, const struct block *bl)
{
    uint64_t f = 0;
    for (int r = 0; r < LIN_COUNT; r++) {
        const struct linear *l = &bl->lin[r];
        if (l->w) f += (uint64_t)l->d_out * l->d_in;
        if (l->b) f += (uint64_t)l->d_out;
        f += (uint64_t)l->rank * (l->d_in + l->d_out);
    }
    int d2 = m->block_kind == BLOCK_PARALLEL ? bl->d_in : bl->d_mid;
    f += (uint64_t)(bl->norm1_w != NULL) * bl->d_in + (uint64_t)(bl->norm1_b != NULL) * bl->d_in;
    f += (uint64_t)(bl->norm2_w != NULL) * d2 + (uint64_t)(bl->norm2_b != NULL) * d2;
    if (bl->shortcut_attn) f += (uint64_t)bl->d_in * (m->block_kind == BLOCK_PARALLEL ? bl->d_out : bl->d_mid);
    if (bl->shortcut_mlp) f += (uint64_t)bl->d_mid * bl->d_out;
    return f * sizeof(float);
}

/* Residency peak: the figure that shows whether compression held one block or all of them. */
static void note_resident(const struct model *m, struct compress_result *res)
{
    int n = 0;
    uint64_t bytes = 0;
    for (int b = 0; b < m->cfg.n_layers; b++)
        if (m->blocks[b].loaded) {
            n++;
            bytes += block_bytes(m, &m->blocks[b]);
        }
    if (n > res->peak_blocks) res->peak_blocks = n;
    if (bytes > res->peak_block_bytes) res->peak_block_bytes = bytes;
}

/* Host copies of block b's adapters: they outlive the block and are quantized at the end (§4.6). */
static int keep_adapters(struct model *m, int b, struct compress_result *res, struct slm_err *err)
{
    for (int r = 0; r < LIN_COUNT; r++) {
        const struct linear *l = &m->blocks[b].lin[r];
        struct compressed_linear *cl = &res->lin[b][r];
        if (!l->rank) continue;
        size_t nl = (size_t)l->d_in * l->rank, nr = (size_t)l->rank * l->d_out;
        if (!(cl->lora_l = malloc(sizeof *cl->lora_l * nl)) || !(cl->lora_r = malloc(sizeof *cl->lora_r * nr)))
            return slm_err_set(err, SLM_ENOMEM, "%s: adapters: out of memory", l->name);
        int rc = kb_download(m->kb, cl->lora_l, l->lora_l, sizeof *cl->lora_l * nl, err);
        if (!rc) rc = kb_download(m->kb, cl->lora_r, l->lora_r, sizeof *cl->lora_r * nr, err);
        if (rc) return rc;
        res->host_adapter_bytes += sizeof(float) * (nl + nr);
    }
    return 0;
}

/* Block b is final: figures, the caller's callback, then (unload_blocks) its weights and codes go. */
static int block_done(struct model *m, int b, const struct compress_opts *o, bool adapters_later,
                      struct compress_result *res, struct slm_err *err)
{
    int rc;
    if (res) {
        note_resident(m, res);
        if ((rc = count_zeros(m, b, res, err))) return rc;
        if (o->unload_blocks && adapters_later && (rc = keep_adapters(m, b, res, err))) return rc;
    }
    if (o->on_block && (rc = o->on_block(m, b, res->lin[b], o->block_payload, err)))
        return rc < 0 ? rc : slm_err_set(err, SLM_ECANCELLED, "cancelled");
    if (!o->unload_blocks) return 0;
    model_block_unload(m, b);
    for (int r = 0; res && r < LIN_COUNT; r++) {
        struct compressed_linear *cl = &res->lin[b][r];
        free(cl->mask);
        free(cl->codes);
        free(cl->col_scale);
        cl->mask = NULL;
        cl->codes = NULL;
        cl->col_scale = NULL;
        quant_params_free(&cl->qp);
    }
    return 0;
}

/* ---- JSQ (§3.7, core/jsq.c): joint-metric pruning now, smoothing and quantization after pass 2 ---- */

struct jsq_block {
    float *W[LIN_COUNT];       /* dense host weights: the error figure compares against them */
    uint8_t *mask[LIN_COUNT];
};

static void jsq_block_free(struct jsq_block *jb)
{
    for (int r = 0; r < LIN_COUNT; r++) {
        free(jb->W[r]);
        free(jb->mask[r]);
    }
    memset(jb, 0, sizeof *jb);
}

/* Steps 1-3: mask from the joint metric; the pruned, unquantized weight goes back to the block. */
static int jsq_prune_linear(struct model *m, struct linear *l, struct stat_slot *st, const struct compress_opts *o,
                            struct jsq_block *jb, int r, struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    size_t n = (size_t)l->d_out * l->d_in;
    float *t = malloc(sizeof *t * n);
    int rc;
    jb->W[r] = malloc(sizeof *jb->W[r] * n);
    jb->mask[r] = malloc(n);
    if (!t || !jb->W[r] || !jb->mask[r]) { rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name); goto done; }
    if ((rc = kb_download(kb, jb->W[r], l->w, sizeof *t * n, err)) || (rc = stat_host(kb, st, err))) goto done;
    if ((rc = jsq_metric(kb, t, jb->W[r], st->h_scaler, &st->jsq, o->jsq.mixing_factor, l->d_out, l->d_in, err)) ||
        (rc = prune_mask_metric(jb->mask[r], t, l->d_out, l->d_in, &o->prune, err)))
        goto done;
    for (size_t i = 0; i < n; i++) t[i] = jb->mask[r][i] ? 0 : jb->W[r][i];
    rc = kb_upload(kb, l->w, t, sizeof *t * n, err);
done:
    free(t);
    return rc;
}

/* Step 5 for one smoothed, pruned linear: group AbsMax of the zeros included (pruned entries get
** code 0). s: the smoothing factors of its input columns, or NULL; the error figure undoes them
** (the linear now reads x / s), so it compares like with like against the dense weight. */
static int jsq_quantize_linear(struct model *m, struct linear *l, const struct stat_slot *st, const float *s,
                               struct jsq_block *jb, int r, const struct compress_opts *o, struct compressed_linear *cl,
                               struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int d_out = l->d_out, d_in = l->d_in, rc;
    size_t n = (size_t)d_out * d_in;
    float *w = malloc(sizeof *w * n);
    int8_t *codes = o->keep_codes ? malloc(n) : NULL;
    struct quant_params qp = { 0 };
    if (!w || (o->keep_codes && !codes)) { rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", l->name); goto done; }
    if ((rc = kb_download(kb, w, l->w, sizeof *w * n, err)) ||
        (rc = quant_weight_host(w, d_out, d_in, &o->quant, NULL, codes, &qp, err)) ||
        (rc = kb_upload(kb, l->w, w, sizeof *w * n, err)))
        goto done;
    for (int i = 0; s && i < d_out; i++)
        for (int j = 0; j < d_in; j++) w[(size_t)i * d_in + j] /= s[j];
    if ((rc = rel_error(kb, &cl->rel_error, jb->W[r], w, st->x0, st->x0_rows, d_out, d_in, err))) goto done;
    if (o->keep_codes) hand_over(cl, &jb->mask[r], &codes, &qp, NULL);
done:
    free(w);
    free(codes);
    quant_params_free(&qp);
    return rc;
}

/* Steps 4-5 once pass 2 has propagated the pruned, unquantized block (§1.4). */
static int jsq_finish_block(struct model *m, int b, const struct block_stats *bs, struct jsq_block *jb,
                            const struct compress_opts *o, struct compress_result *res, struct slm_err *err)
{
    struct block *bl = &m->blocks[b];
    int nb = m->cfg.n_layers, rc = 0;
    if (bs->slot_of[LIN_Q] < 0 || bs->slot_of[LIN_FC1] < 0)
        return slm_err_set(err, SLM_EINTERNAL, "JSQ: block %d: no calibration input for q or fc1", b);
    float *s_attn = malloc(sizeof *s_attn * (size_t)bl->lin[LIN_Q].d_in), *s_mlp = malloc(sizeof *s_mlp * (size_t)bl->lin[LIN_FC1].d_in);
    if (!s_attn || !s_mlp) { rc = slm_err_set(err, SLM_ENOMEM, "JSQ: out of memory"); goto done; }
    /* the reference smooths q/k/v with q_proj's act_scale and the MLP with fc1's (gate_proj's) */
    if ((rc = jsq_smooth_block(m, b, bs->slot[bs->slot_of[LIN_Q]].jsq.act_scale, bs->slot[bs->slot_of[LIN_FC1]].jsq.act_scale,
                               o->bf16, s_attn, s_mlp, err)))
        goto done;
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &bl->lin[r];
        if (!l->w) continue;
        const float *s = r <= LIN_V ? s_attn : r == LIN_FC1 || r == LIN_UP ? s_mlp : NULL;
        struct compressed_linear scratch = { 0 }, *cl = res ? &res->lin[b][r] : &scratch;
        if ((rc = jsq_quantize_linear(m, l, &bs->slot[bs->slot_of[r]], s, jb, r, o, cl, err)) ||
            (rc = report(o, "compressing", b, nb, l->name, cl->rel_error, (b + 1.0) / nb, err)))
            goto done;
    }
done:
    free(s_attn);
    free(s_mlp);
    return rc;
}

/* ---- memory strategy (issue #6) ---- */

/* Where a device failure struck: "block 3 of 32, STAGE: cause" (b < 0: "STAGE: cause") in front of
** out-of-memory and CUDA errors, the ones a user answers with a smaller job or a bigger GPU; other
** errors already say what is wrong. Returns rc. */
static int at_stage(struct slm_err *err, int rc, int b, int nb, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int at_stage(struct slm_err *err, int rc, int b, int nb, const char *fmt, ...)
{
    if (!rc || !err || (err->rc != SLM_ENOMEM && err->rc != SLM_ECUDA)) return rc;
    char stage[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(stage, sizeof stage, fmt, ap);
    va_end(ap);
    if (b < 0) slm_err_prefix(err, "%s", stage);
    else slm_err_prefix(err, "block %d of %d, %s", b + 1, nb, stage);
    return rc;
}

/* "q_proj" of "model.layers.3.self_attn.q_proj" */
static const char *short_name(const char *name)
{
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

/* Calibration activations [nsamples x per floats]: in backend memory (dev) when they fit, else in
** host memory (host, pinned where the backend has it) with one window moved in or out at a time.
** Either way a window arrives as the same bytes, so where they live never changes a result. */
struct calib_acts {
    struct kbackend *kb;
    float *dev, *host;
    size_t per;
};

static int acts_get(struct calib_acts *a, float *x, int s, struct slm_err *err)
{
    size_t n = sizeof *x * a->per;
    if (a->dev) return a->kb->iface->copy(a->kb, x, a->dev + (size_t)s * a->per, n, err);
    return kb_upload(a->kb, x, a->host + (size_t)s * a->per, n, err);
}

static int acts_put(struct calib_acts *a, int s, const float *x, struct slm_err *err)
{
    size_t n = sizeof *x * a->per;
    if (a->dev) return a->kb->iface->copy(a->kb, a->dev + (size_t)s * a->per, x, n, err);
    return kb_download(a->kb, a->host + (size_t)s * a->per, x, n, err);
}

static void acts_free(struct calib_acts *a)
{
    kb_release(a->kb, a->dev);
    kb_host_free(a->kb, a->host);
    a->dev = a->host = NULL;
}

/* Backend bytes one block needs beyond its weights while it is compressed, from above: the
** window being pushed through and the forward's workspace (a few rows of the widest stage per
** token), the kept error inputs and, for SparseGPT / OPTQ, the Hessians and their working copies,
** and the error figure's two weight-sized buffers. A heuristic: the allocator has the last word. */
static uint64_t block_working_set(const struct model *m, int seqlen, bool need_h)
{
    const struct model_config *c = &m->cfg;
    uint64_t w = (uint64_t)model_max_width(m), d = (uint64_t)(c->ffn > c->hidden ? c->ffn : c->hidden);
    uint64_t q = (uint64_t)c->n_heads * c->head_dim, wide = w > d ? w : d;
    if (q > wide) wide = q;
    uint64_t f = 8 * (uint64_t)seqlen * wide;                 /* window + forward workspace */
    f += 4 * (uint64_t)seqlen * d;                            /* first-window inputs of the statistics slots */
    f += 3 * wide * d;                                        /* error figure: [D; W] and outputs; Wanda's mask and codes */
    if (need_h) f += 8 * d * d;                               /* Hessians, working copy, SparseGPT scratch */
    return f * sizeof(float);
}

/* Do bytes of activations fit in backend memory beside what the blocks still to load and one
** block's working set need? True when the backend cannot tell (then the allocation decides). */
static bool acts_fit(struct model *m, uint64_t bytes, int seqlen, bool need_h, bool unload_blocks)
{
    int64_t avail = kb_room(m->kb);
    if (avail < 0) return true;   /* host memory without a budget: nothing to plan */
    uint64_t blocks = 0;
    for (int b = 0; b < m->cfg.n_layers; b++) {
        if (m->blocks[b].loaded) continue;
        uint64_t nb = model_block_nbytes(m, b);
        if (unload_blocks) blocks = nb > blocks ? nb : blocks;
        else blocks += nb;
    }
    uint64_t need = bytes + blocks + block_working_set(m, seqlen, need_h);
    return avail > 0 && need <= (uint64_t)avail;
}

static int acts_alloc(struct calib_acts *a, struct model *m, int nsamples, int seqlen, const struct compress_opts *o,
                      bool need_h, struct compress_result *res, struct slm_err *err)
{
    uint64_t bytes = sizeof(float) * a->per * (uint64_t)nsamples;
    bool spill = o->spill > 0 || (o->spill == 0 && !acts_fit(m, bytes, seqlen, need_h, o->unload_blocks));
    int rc = 0;
    if (!spill) {
        struct slm_err e = SLM_ERR_INIT;
        rc = kb_alloc(a->kb, (void **)&a->dev, bytes, &e);
        if (rc == SLM_FAIL(SLM_ENOMEM) && o->spill == 0) spill = true;   /* the estimate was too kind */
        else if (rc) return slm_err_set(err, e.rc, "%s", e.msg);
    }
    if (spill) rc = kb_host_alloc(a->kb, (void **)&a->host, bytes, err);
    if (res) {
        res->calib_bytes = bytes;
        res->calib_spilled = spill;
    }
    return rc;
}

int compress_model(struct model *m, const int32_t *ids, int nsamples, int seqlen, const struct compress_opts *o,
                   struct compress_result *res, struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int nb = m->cfg.n_layers, width = model_max_width(m), rc;
    size_t per = (size_t)seqlen * width;
    float *x = NULL;
    struct calib_acts acts = { .kb = kb, .per = per };
    struct block_stats bs = { .m = m, .cancel = o->cancel, .err = err,
                              .need_h = o->prune.method == PRUNE_SPARSEGPT || o->quant.method == QUANT_OPTQ, .jsq = o->jsq.on };
    struct jsq_block jb = { 0 };
    struct kmem_stats ms;
    struct slm_err ms_err = SLM_ERR_INIT;
    bool have_stats = kb_mem_stats(kb, &ms, true, &ms_err) == 0;   /* the peak counts from here */
    double t0 = now_s();
    struct compress_result local = { 0 };
    bool adapters_later = o->lowrank.method != LOWRANK_NONE && o->lowrank.quantize && o->separate_lora;
    if ((rc = check_supported(m, o, err)) || (rc = compress_check_model(m, o, err))) return rc;
    if (nsamples < 1 || seqlen < 2) return slm_err_set(err, SLM_EINVAL, "compress: %d calibration windows of %d tokens", nsamples, seqlen);
    if ((o->on_block || o->unload_blocks) && !res)
        return slm_err_set(err, SLM_EINVAL, "compress: block streaming needs a compress_result (codes and adapters are handed over in it)");
    if (!res && (o->on_block || o->unload_blocks)) res = &local;   /* the callback and the adapters need one */
    if (res) {
        memset(res, 0, sizeof *res);
        if (!(res->lin = calloc((size_t)nb, sizeof *res->lin))) return slm_err_set(err, SLM_ENOMEM, "compress: out of memory");
        res->nblocks = nb;
        for (int b = 0; b < nb; b++) for (int r = 0; r < LIN_COUNT; r++) res->lin[b][r].role = (enum lin_role)r;
    }
    struct compress_opts oo = *o;
    oo.keep_codes = o->keep_codes && res;
    /* the reference casts the model to bf16 and compresses in bf16; it evaluates in f32 after.
    ** Every block weight is rounded as it loads, so the per-linear steps start from bf16 values. */
    if (o->bf16 && (rc = model_set_bf16(m, true, true, err))) goto done;
    if ((rc = acts_alloc(&acts, m, nsamples, seqlen, o, bs.need_h, res, err)) ||
        (rc = kb_alloc(kb, (void **)&x, sizeof *x * per, err))) {
        at_stage(err, rc, -1, nb, "calibration inputs (%d windows of %d x %d)", nsamples, seqlen, width);
        goto done;
    }
    /* inputs of block 0 */
    for (int s = 0; s < nsamples; s++) {
        if ((rc = report(o, "calibrating", -1, nb, NULL, -1, 0, err))) goto done;
        if ((rc = model_embed(m, x, ids + (size_t)s * seqlen, 1, seqlen, err)) || (rc = acts_put(&acts, s, x, err))) {
            at_stage(err, rc, -1, nb, "calibration inputs (embedding window %d of %d x %d)", s + 1, seqlen, width);
            goto done;
        }
    }
    for (int b = 0; b < nb; b++) {
        struct block *bl = &m->blocks[b];
        if ((rc = model_block_load(m, b, err))) {
            char sz[24];
            at_stage(err, rc, b, nb, "load (%s of weights)", kb_size_str(sz, sizeof sz, model_block_nbytes(m, b)));
            goto done;
        }
        /* the next block pages in and converts (and, with room beside this block's work, uploads)
        ** while this one computes */
        if (o->prefetch >= 0 && b + 1 < nb) model_block_prefetch(m, b + 1, block_working_set(m, seqlen, bs.need_h), err);
        if (res) note_resident(m, res);
        stats_init(&bs, bl);
        /* pass 1: the dense block, hooks gather statistics */
        for (int s = 0; s < nsamples; s++) {
            if ((rc = report(o, "calibrating", b, nb, NULL, -1, (b + 0.3 * s / nsamples) / nb, err))) goto done;
            if ((rc = acts_get(&acts, x, s, err)) ||
                (o->on_block_input && (rc = o->on_block_input(o->input_payload, b, s, x, seqlen, width, err)))) {
                at_stage(err, rc, b, nb, "calibration statistics (window %d, %d x %d)", s + 1, seqlen, width);
                goto done;
            }
            bs.last_x = NULL;
            bs.last_slot = -1;
            bs.rc = 0;
            bs.fail_lin = NULL;
            rc = model_block_forward(m, b, x, 1, seqlen, stats_cb, &bs, err);
            if (bs.rc) rc = bs.rc;
            if (rc) {
                if (bs.fail_lin)
                    at_stage(err, rc, b, nb, "calibration statistics (%s input %dx%d)", short_name(bs.fail_lin->name),
                             bs.fail_rows, bs.fail_lin->d_in);
                else
                    at_stage(err, rc, b, nb, "calibration statistics (forward of window %d, %d x %d)", s + 1, seqlen, width);
                goto done;
            }
        }
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &bl->lin[r];
            if (!l->w) continue;
            struct compressed_linear scratch = { 0 }, *cl = res ? &res->lin[b][r] : &scratch;
            if (bs.slot_of[r] < 0) { rc = slm_err_set(err, SLM_EINTERNAL, "%s: no calibration input seen", l->name); goto done; }
            l->w_bf16 = false;
            if (o->jsq.on) rc = jsq_prune_linear(m, l, &bs.slot[bs.slot_of[r]], &oo, &jb, r, err);
            else rc = compress_linear(m, l, &bs.slot[bs.slot_of[r]], &oo, cl, err);
            l->w_bf16 = !rc && compressed_stays_bf16(o);
            at_stage(err, rc, b, nb, "compress %s (%d x %d)", short_name(l->name), l->d_out, l->d_in);
            if (!rc) rc = report(o, "compressing", b, nb, o->jsq.on ? NULL : l->name, o->jsq.on ? -1 : cl->rel_error,
                                 (b + 0.3 + 0.4 * (r + 1) / LIN_COUNT) / nb, err);
            if (rc) goto done;
        }
        if (!o->jsq.on) stats_free(&bs);   /* JSQ still needs act_scale and the error inputs */
        /* pass 2: recompute the outputs with the compressed block (adapters included) */
        for (int s = 0; s < nsamples; s++) {
            if ((rc = report(o, "compressing", b, nb, NULL, -1, (b + 0.7 + 0.3 * s / nsamples) / nb, err))) goto done;
            if ((rc = acts_get(&acts, x, s, err)) || (rc = model_block_forward(m, b, x, 1, seqlen, NULL, NULL, err)) ||
                (rc = acts_put(&acts, s, x, err))) {
                at_stage(err, rc, b, nb, "recompute pass (window %d, %d x %d)", s + 1, seqlen, width);
                goto done;
            }
        }
        if (o->jsq.on) {
            if ((rc = jsq_finish_block(m, b, &bs, &jb, &oo, res, err))) {
                at_stage(err, rc, b, nb, "JSQ smoothing and quantization");
                goto done;
            }
            jsq_block_free(&jb);
            stats_free(&bs);
        }
        if ((rc = block_done(m, b, o, adapters_later, res, err))) {
            at_stage(err, rc, b, nb, "hand-over of the compressed block");
            goto done;
        }
    }
    if (adapters_later) {
        if ((rc = report(o, "adapters", nb, nb, NULL, -1, 1, err))) goto done;
        if ((rc = quantize_all_adapters(m, o, res, err))) {
            at_stage(err, rc, -1, nb, "adapter quantization");
            goto done;
        }
    }
    if (res) res->seconds = now_s() - t0;
done:
    model_prefetch_drop(m);   /* an error path may leave one in flight */
    if (o->bf16) m->act_bf16 = false;
    stats_free(&bs);
    jsq_block_free(&jb);
    acts_free(&acts);
    kb_release(kb, x);
    if (!rc && res && have_stats && !kb_mem_stats(kb, &ms, false, &ms_err)) res->peak_backend_bytes = (uint64_t)ms.peak;
    if ((rc && res) || res == &local) compress_result_free(res);
    return rc;
}

/* ---- calibration sampler (§1.2): CPython's random ---- */

static void mt_init(struct pyrandom *r, uint32_t s)
{
    r->mt[0] = s;
    for (int i = 1; i < 624; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->mti = 624;
}

void pyrandom_seed(struct pyrandom *r, uint64_t seed)
{
    /* random.seed(int): init_by_array with the 32-bit words of |seed|, least significant first */
    uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    int klen = key[1] ? 2 : 1;
    mt_init(r, 19650218u);
    int i = 1, j = 0;
    for (int k = 624 > klen ? 624 : klen; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++; j++;
        if (i >= 624) { r->mt[0] = r->mt[623]; i = 1; }
        if (j >= klen) j = 0;
    }
    for (int k = 623; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= 624) { r->mt[0] = r->mt[623]; i = 1; }
    }
    r->mt[0] = 0x80000000u;
}

uint32_t pyrandom_u32(struct pyrandom *r)
{
    static const uint32_t mag01[2] = { 0, 0x9908b0dfu };
    uint32_t y;
    if (r->mti >= 624) {
        int k;
        for (k = 0; k < 624 - 397; k++) {
            y = (r->mt[k] & 0x80000000u) | (r->mt[k + 1] & 0x7fffffffu);
            r->mt[k] = r->mt[k + 397] ^ (y >> 1) ^ mag01[y & 1];
        }
        for (; k < 623; k++) {
            y = (r->mt[k] & 0x80000000u) | (r->mt[k + 1] & 0x7fffffffu);
            r->mt[k] = r->mt[k + (397 - 624)] ^ (y >> 1) ^ mag01[y & 1];
        }
        y = (r->mt[623] & 0x80000000u) | (r->mt[0] & 0x7fffffffu);
        r->mt[623] = r->mt[396] ^ (y >> 1) ^ mag01[y & 1];
        r->mti = 0;
    }
    y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

int64_t pyrandom_randint(struct pyrandom *r, int64_t a, int64_t b)
{
    uint64_t n = (uint64_t)(b - a + 1);
    int k = 0;
    while (k < 64 && (n >> k)) k++;       /* bit_length(n) */
    if (k > 32) k = 32;                   /* windows and document counts stay below 2^32 */
    uint32_t v;
    do v = pyrandom_u32(r) >> (32 - k); while (v >= n);
    return a + v;
}

int calib_sample(int32_t **out, const struct calib_docs *docs, int nsamples, int seqlen, int seed, struct slm_err *err)
{
    struct pyrandom r;
    *out = NULL;
    if (docs->ndocs < 1) return slm_err_set(err, SLM_EINVAL, "calibration: no documents");
    int32_t *ids = malloc(sizeof *ids * (size_t)nsamples * seqlen);
    if (!ids) return slm_err_set(err, SLM_ENOMEM, "calibration: out of memory");
    pyrandom_seed(&r, (uint64_t)seed);
    for (int s = 0; s < nsamples; s++) {
        int64_t i = 0;
        int tries = 0;
        do {
            if (++tries > 100000) {
                free(ids);
                return slm_err_set(err, SLM_EINVAL, "calibration: no document longer than %d tokens in 100000 draws", seqlen);
            }
            i = pyrandom_randint(&r, 0, docs->ndocs - 1);
        } while (docs->len[i] <= (size_t)seqlen);
        int64_t j = pyrandom_randint(&r, 0, (int64_t)docs->len[i] - seqlen - 1);
        memcpy(ids + (size_t)s * seqlen, docs->ids[i] + j, sizeof *ids * (size_t)seqlen);
    }
    *out = ids;
    return 0;
}
