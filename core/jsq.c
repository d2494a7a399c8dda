/*
** core/jsq.c: JSQ statistics, joint metric and smoothing (see jsq.h, ALGORITHMS.md §3.7).
** DESIGN: the reference's generate_ss() runs one full [L x d_in] x [d_in x d_out] product per
** input column j. Since xbar W_(j)^T = xbar W^T - xbar[:, j] W[:, j]^T, one backend gemm Y =
** xbar W^T and a rank-one correction per (r, j) give the same ranges in O(L d_out d_in): for
** each output r and column j, max_t and min_t of Y[t][r] - xbar[t][j] W[r][j]. That scan runs on
** the host, a few outputs per pass over xbar (vectorized over j, split over threads).
*/
#include "jsq.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

/* ---- clipping (clip_matrix) ---- */

/* k-th smallest (0-based) of a[0..n-1], reordering a (Wirth's selection: the pivot is a[k] itself,
** which bounds both inner scans). */
static float select_kth(float *a, int64_t n, int64_t k)
{
    int64_t l = 0, m = n - 1;
    while (l < m) {
        float x = a[k];
        int64_t i = l, j = m;
        do {
            while (a[i] < x) i++;
            while (x < a[j]) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < k) l = i;
        if (k < i) m = j;
    }
    return a[k];
}

/* |f| as an integer key that orders like the value (NaN above everything, as +inf) */
static inline uint32_t abs_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u &= 0x7fffffffu;
    return u > 0x7f800000u ? 0x7f800000u : u;
}

enum { KEY_SHIFT = 19, KEY_BINS = 1 << (31 - KEY_SHIFT) };   /* exponent + 4 mantissa bits */

int jsq_clip_threshold(float *out, const float *x, size_t n, struct slm_err *err)
{
    /* int(clip_h * numel) in Python's double arithmetic; topk(k)[-1] is the k-th largest */
    size_t k = (size_t)(JSQ_CLIP_FRACTION * (double)n);
    *out = INFINITY;
    if (k == 0) return 0;
    /* radix select: a histogram of the leading key bits finds the bin holding the k-th largest,
    ** then only that bin's values are ordered (two read passes instead of sorting n values) */
    uint32_t hist[KEY_BINS] = { 0 };
    for (size_t i = 0; i < n; i++) hist[abs_key(x[i]) >> KEY_SHIFT]++;
    size_t above = 0;
    int bin = KEY_BINS - 1;
    for (; bin > 0 && above + hist[bin] < k; bin--) above += hist[bin];
    size_t m = hist[bin], c = 0;
    float *a = malloc(sizeof *a * (m ? m : 1));
    if (!a) return slm_err_set(err, SLM_ENOMEM, "JSQ clipping: out of memory");
    for (size_t i = 0; i < n; i++) {
        uint32_t u = abs_key(x[i]);
        if ((int)(u >> KEY_SHIFT) == bin) memcpy(&a[c++], &u, sizeof u);
    }
    *out = select_kth(a, (int64_t)m, (int64_t)(m - (k - above)));
    free(a);
    return 0;
}

int jsq_stats_add(struct jsq_stats *s, float *x, int rows, int d_in, struct slm_err *err)
{
    size_t n = (size_t)rows * d_in;
    float thr;
    int rc;
    if (!s->inp_sum) {
        s->act_scale = malloc(sizeof *s->act_scale * (size_t)d_in);
        s->inp_sum = calloc(n, sizeof *s->inp_sum);
        if (!s->act_scale || !s->inp_sum) return slm_err_set(err, SLM_ENOMEM, "JSQ statistics: out of memory");
        s->rows = rows;
        s->d_in = d_in;
    }
    if (rows != s->rows || d_in != s->d_in)
        return slm_err_set(err, SLM_ESHAPE, "JSQ statistics: input %dx%d after %dx%d", rows, d_in, s->rows, s->d_in);
    if ((rc = jsq_clip_threshold(&thr, x, n, err))) return rc;
    for (size_t i = 0; i < n; i++) x[i] = x[i] > thr ? thr : x[i] < -thr ? -thr : x[i];
    /* Reference bug kept on purpose: stat_tensor() tests `name in act_scales` but stores under
    ** layer_name + '.' + name, so the running max never applies and act_scale is the max over the
    ** LAST calibration sample only. */
    for (int j = 0; j < d_in; j++) s->act_scale[j] = 0;
    for (int t = 0; t < rows; t++)
        for (int j = 0; j < d_in; j++) s->act_scale[j] = fmaxf(s->act_scale[j], fabsf(x[(size_t)t * d_in + j]));
    for (size_t i = 0; i < n; i++) s->inp_sum[i] += x[i];
    s->nseq++;
    return 0;
}

void jsq_stats_free(struct jsq_stats *s)
{
    if (!s) return;
    free(s->act_scale);
    free(s->inp_sum);
    memset(s, 0, sizeof *s);
}

/* ---- the SS term and the joint metric ---- */

enum { SS_ROWS = 8 };   /* outputs per pass over xbar: its rows stay in cache across them */

/* hi[j] / lo[j] <- max / min with y - x[j] w[j]; fixed-width chunks so that -O2 vectorizes it */
static void range_update(float *restrict hi, float *restrict lo, const float *restrict x, const float *restrict w,
                         float y, int n)
{
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            float v = y - x[j + k] * w[j + k];
            hi[j + k] = v > hi[j + k] ? v : hi[j + k];
            lo[j + k] = v < lo[j + k] ? v : lo[j + k];
        }
    for (; j < n; j++) {
        float v = y - x[j] * w[j];
        hi[j] = v > hi[j] ? v : hi[j];
        lo[j] = v < lo[j] ? v : lo[j];
    }
}

/* Row r of SS built as the reference does, one xbar W_(j)^T column at a time: only for outputs
** where an overflowing product would make the rank-one correction inf - inf. */
static void ss_row_direct(float *ss, const float *xbar, const float *wr, int rows, int d_in)
{
    for (int j = 0; j < d_in; j++) {
        float hi = -INFINITY, lo = INFINITY;
        for (int t = 0; t < rows; t++) {
            float v = 0;
            for (int q = 0; q < d_in; q++) v += q == j ? 0 : xbar[(size_t)t * d_in + q] * wr[q];
            hi = v > hi ? v : hi;
            lo = v < lo ? v : lo;
        }
        ss[j] = hi - lo;
    }
}

int jsq_ss(struct kbackend *kb, float *ss, const float *xbar, const float *w, int rows, int d_out, int d_in,
           struct slm_err *err)
{
    size_t nx = (size_t)rows * d_in, nw = (size_t)d_out * d_in, ny = (size_t)rows * d_out;
    float *bx = NULL, *bw = NULL, *by = NULL, *y = malloc(sizeof *y * ny);
    int rc = 0, oom = 0;
    if (!y) return slm_err_set(err, SLM_ENOMEM, "JSQ SS %dx%d: out of memory", d_out, d_in);
    if ((rc = kb_alloc(kb, (void **)&bx, sizeof *bx * nx, err)) || (rc = kb_alloc(kb, (void **)&bw, sizeof *bw * nw, err)) ||
        (rc = kb_alloc(kb, (void **)&by, sizeof *by * ny, err)) || (rc = kb_upload(kb, bx, xbar, sizeof *bx * nx, err)) ||
        (rc = kb_upload(kb, bw, w, sizeof *bw * nw, err)) || (rc = kb_linear(kb, by, bx, bw, NULL, rows, d_out, d_in, err)) ||
        (rc = kb_download(kb, y, by, sizeof *y * ny, err)))
        goto done;
    double xmax = 0;
    for (size_t i = 0; i < nx; i++) xmax = fmax(xmax, fabs(xbar[i]));
#pragma omp parallel if (ny * (size_t)d_in > 4000000)
    {
        float *lo = malloc(sizeof *lo * SS_ROWS * (size_t)d_in);
        if (!lo) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic)
        for (int r0 = 0; r0 < d_out; r0 += SS_ROWS) {
            int nr = d_out - r0 < SS_ROWS ? d_out - r0 : SS_ROWS;
            float *hi = ss + (size_t)r0 * d_in;   /* the maxima live in the output rows */
            if (!lo) continue;
            for (size_t i = 0; i < (size_t)nr * d_in; i++) { hi[i] = -INFINITY; lo[i] = INFINITY; }
            for (int t = 0; t < rows; t++)
                for (int k = 0; k < nr; k++)
                    range_update(hi + (size_t)k * d_in, lo + (size_t)k * d_in, xbar + (size_t)t * d_in,
                                 w + (size_t)(r0 + k) * d_in, y[(size_t)t * d_out + r0 + k], d_in);
            for (int k = 0; k < nr; k++) {
                const float *wr = w + (size_t)(r0 + k) * d_in;
                double wmax = 0;
                bool finite = true;
                for (int j = 0; j < d_in; j++) wmax = fmax(wmax, fabs(wr[j]));
                for (int t = 0; t < rows; t++) finite &= isfinite(y[(size_t)t * d_out + r0 + k]) != 0;
                if (finite && xmax * wmax < FLT_MAX)
                    for (int j = 0; j < d_in; j++) hi[(size_t)k * d_in + j] -= lo[(size_t)k * d_in + j];
                else
                    ss_row_direct(hi + (size_t)k * d_in, xbar, wr, rows, d_in);
            }
            for (size_t i = 0; i < (size_t)nr * d_in; i++)
                if (isinf(hi[i])) hi[i] = JSQ_SS_INF;
        }
        free(lo);
    }
    if (oom) rc = slm_err_set(err, SLM_ENOMEM, "JSQ SS %dx%d: out of memory", d_out, d_in);
done:
    kb_release(kb, bx);
    kb_release(kb, bw);
    kb_release(kb, by);
    free(y);
    return rc;
}

int jsq_metric(struct kbackend *kb, float *metric, const float *w, const float *scaler, const struct jsq_stats *st,
               double mix, int d_out, int d_in, struct slm_err *err)
{
    if (!st->inp_sum || st->nseq < 1 || st->d_in != d_in)
        return slm_err_set(err, SLM_EINTERNAL, "JSQ metric: no calibration statistics for a %dx%d layer", d_out, d_in);
    size_t nx = (size_t)st->rows * d_in;
    float *xbar = malloc(sizeof *xbar * nx);
    if (!xbar) return slm_err_set(err, SLM_ENOMEM, "JSQ metric: out of memory");
    for (size_t i = 0; i < nx; i++) xbar[i] = st->inp_sum[i] / (float)st->nseq;
    int rc = jsq_ss(kb, metric, xbar, w, st->rows, d_out, d_in, err);
    free(xbar);
    if (rc) return rc;
    float fm = (float)mix;
    for (int r = 0; r < d_out; r++)
        for (int j = 0; j < d_in; j++) {
            size_t i = (size_t)r * d_in + j;
            metric[i] = fabsf(w[i]) * sqrtf(scaler[j]) + fm * metric[i];
        }
    return 0;
}

/* ---- smoothing (smooth_ln_fcs, alpha = 0.5) ---- */

void jsq_smooth_factors(float *s, const float *act, const float *const *w, const int *d_out, int nlin, int d_in,
                        bool bf16)
{
    for (int j = 0; j < d_in; j++) s[j] = 0;
    for (int k = 0; k < nlin; k++)
        for (int i = 0; i < d_out[k]; i++)
            for (int j = 0; j < d_in; j++) s[j] = fmaxf(s[j], fabsf(w[k][(size_t)i * d_in + j]));
    float lo = bf16 ? bf16_round(JSQ_SMOOTH_MIN) : JSQ_SMOOTH_MIN;
    for (int j = 0; j < d_in; j++) {
        float ws = fmaxf(s[j], lo), a = bf16 ? bf16_round(act[j]) : act[j];
        float num = sqrtf(a), den = sqrtf(ws);
        if (bf16) { num = bf16_round(num); den = bf16_round(den); }
        float v = num / den;
        if (bf16) v = bf16_round(v);
        s[j] = fmaxf(v, lo);
    }
}

int jsq_check_model(const struct model *m, struct slm_err *err)
{
    if (m->block_kind == BLOCK_PARALLEL)
        return slm_err_set(err, SLM_EUNSUPPORTED, "JSQ: %s blocks run attention and MLP on one shared norm; "
                           "the reference's smoothing supports OPT and LLaMA-style blocks only", m->cfg.model_type);
    if (m->block_kind == BLOCK_SEQ_POSTNORM)
        return slm_err_set(err, SLM_EUNSUPPORTED, "JSQ: %s with post-LayerNorm blocks (do_layer_norm_before=false, "
                           "e.g. OPT-350M) has no norm in front of q/k/v to smooth", m->cfg.model_type);
    if (m->block_kind != BLOCK_SEQ) return slm_err_set(err, SLM_EUNSUPPORTED, "JSQ: unknown block layout");
    return 0;
}

/* One norm and the linears reading its output: factors from the pruned weights, then norm / s
** and columns * s, all on host copies written back to the backend. */
static int smooth_group(struct model *m, struct block *bl, float *nw, float *nb, const enum lin_role *roles, int nrole,
                        const float *act, bool bf16, float *s_out, struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    float *w[LIN_COUNT] = { 0 }, *hn = NULL, *s = NULL;
    int dout[LIN_COUNT], nl = 0, d_in = bl->lin[roles[0]].d_in, rc = 0;
    for (int k = 0; k < nrole; k++) {
        struct linear *l = &bl->lin[roles[k]];
        if (!l->w) continue;
        if (l->d_in != d_in) { rc = slm_err_set(err, SLM_ESHAPE, "JSQ smoothing: %s reads %d inputs, not %d", l->name, l->d_in, d_in); goto done; }
        if (l->rank) { rc = slm_err_set(err, SLM_EUNSUPPORTED, "JSQ smoothing: %s carries adapters", l->name); goto done; }
        size_t n = (size_t)l->d_out * d_in;
        if (!(w[nl] = malloc(sizeof *w[nl] * n))) { rc = slm_err_set(err, SLM_ENOMEM, "JSQ smoothing: out of memory"); goto done; }
        dout[nl] = l->d_out;
        if ((rc = kb_download(kb, w[nl], l->w, sizeof *w[nl] * n, err))) goto done;
        nl++;
    }
    hn = malloc(sizeof *hn * (size_t)d_in);
    s = s_out ? s_out : malloc(sizeof *s * (size_t)d_in);
    if (!hn || !s) { rc = slm_err_set(err, SLM_ENOMEM, "JSQ smoothing: out of memory"); goto done; }
    jsq_smooth_factors(s, act, (const float *const *)w, dout, nl, d_in, bf16);
    float *norm[2] = { nw, nb };
    for (int k = 0; k < 2; k++) {
        if (!norm[k]) continue;
        if ((rc = kb_download(kb, hn, norm[k], sizeof *hn * (size_t)d_in, err))) goto done;
        for (int j = 0; j < d_in; j++) hn[j] = bf16 ? bf16_round(hn[j] / s[j]) : hn[j] / s[j];
        if ((rc = kb_upload(kb, norm[k], hn, sizeof *hn * (size_t)d_in, err))) goto done;
    }
    for (int k = 0, i = 0; k < nrole; k++) {
        struct linear *l = &bl->lin[roles[k]];
        if (!l->w) continue;
        float *h = w[i++];
        for (int r = 0; r < l->d_out; r++)
            for (int j = 0; j < d_in; j++) {
                float *v = &h[(size_t)r * d_in + j];
                *v = bf16 ? bf16_round(*v * s[j]) : *v * s[j];
            }
        if ((rc = kb_upload(kb, l->w, h, sizeof *h * (size_t)l->d_out * d_in, err))) goto done;
    }
done:
    for (int k = 0; k < nl; k++) free(w[k]);
    free(hn);
    if (s != s_out) free(s);
    return rc;
}

int jsq_smooth_block(struct model *m, int b, const float *act_attn, const float *act_mlp, bool bf16,
                     float *s_attn, float *s_mlp, struct slm_err *err)
{
    static const enum lin_role attn[] = { LIN_Q, LIN_K, LIN_V }, mlp[] = { LIN_FC1, LIN_UP };
    struct block *bl = &m->blocks[b];
    int rc = jsq_check_model(m, err);
    if (rc) return rc;
    if (!bl->loaded || !bl->lin[LIN_Q].w || !bl->lin[LIN_FC1].w)
        return slm_err_set(err, SLM_EINVAL, "JSQ smoothing: block %d is not loaded", b);
    if (!bl->norm1_w || !bl->norm2_w)
        return slm_err_set(err, SLM_EUNSUPPORTED, "JSQ smoothing: block %d has no norm weights (folded into the linears?)", b);
    if (bl->lin[LIN_Q].d_in != bl->d_in || bl->lin[LIN_FC1].d_in != bl->d_mid)
        return slm_err_set(err, SLM_ESHAPE, "JSQ smoothing: block %d norm widths do not match its linears", b);
    if ((rc = smooth_group(m, bl, bl->norm1_w, bl->norm1_b, attn, 3, act_attn, bf16, s_attn, err))) return rc;
    return smooth_group(m, bl, bl->norm2_w, bl->norm2_b, mlp, 2, act_mlp, bf16, s_mlp, err);
}
