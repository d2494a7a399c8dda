/*
** core/quant.c: SLiM-family weight quantizers (see quant.h, ALGORITHMS.md §3).
** The rounding rules differ on purpose, as in the reference: per-tensor / SLiM-Quant round half
** to even after the product w * sf (rounded to bf16 first in bf16 mode); the group quantizer (the
** reference's Triton kernel) casts alpha to fp16 and rounds half toward zero.
** Per-row (and per-column) loops run on OpenMP threads where rows are independent; maxima and
** sums keep their single-thread order, so any thread count gives the same bits.
*/
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

/* Below this many weights a parallel region costs more than the work it spreads. */
#define QUANT_PAR_MIN (1 << 14)

void quant_params_free(struct quant_params *p)
{
    if (!p) return;
    free(p->scale);
    p->scale = NULL;
}

static inline float rb(float x, bool bf16) { return bf16 ? bf16_round(x) : x; }

static inline float clampq(float q, int max_q)
{
    return q < (float)(-max_q - 1) ? (float)(-max_q - 1) : q > (float)max_q ? (float)max_q : q;
}

/* Half toward zero: truncate, then step away from zero only when the fraction exceeds 0.5. */
static inline float round_half_to_zero(float v)
{
    float t = truncf(v);
    if (fabsf(v - t) > 0.5f) t += v > 0 ? 1.0f : -1.0f;
    return t;
}

/* ---- SLiM-Quant (§3.3) ---- */

/* E(i) of the reference's integrate=True objective. */
static double slim_err(const float *pdf, const float *val, int nb, float dx, int i, int bits)
{
    float alpha = val[i], step = alpha / (float)(1 << bits);
    double e = 0;
    for (int k = 0; k < nb; k++) {
        float d = k < i ? val[k] - floorf(val[k] / step) * step : val[k] - alpha;
        e += (double)(pdf[k] * d * d * dx);
    }
    return e;
}

float quant_slim_alpha(const float *a, size_t n, int bits)
{
    if (n == 0) return 0;
    size_t nbz = n / 1000;
    int nb = (int)(nbz < 512 ? 512 : nbz > 20000 ? 20000 : nbz);
    float lo = INFINITY, hi = 0;
    for (size_t i = 0; i < n; i++) {
        float v = fabsf(a[i]);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    float *edge = malloc(sizeof *edge * (size_t)(nb + 1) + sizeof(float) * 2 * (size_t)nb);
    double *cnt = calloc((size_t)nb, sizeof *cnt);
    float alpha = hi;
    if (!edge || !cnt) goto done;   /* allocation failure: fall back to AbsMax's alpha */
    float *pdf = edge + nb + 1, *val = pdf + nb;
    if (hi == lo) { lo -= 0.5f; hi += 0.5f; }   /* torch widens a degenerate range the same way */
    for (int k = 0; k <= nb; k++) edge[k] = lo + (hi - lo) * ((float)k / (float)nb);
    edge[nb] = hi;
    for (size_t i = 0; i < n; i++) {
        float v = fabsf(a[i]);
        int p = (int)((v - lo) * (float)nb / (hi - lo));
        if (p < 0) p = 0;
        if (p > nb - 1) p = nb - 1;
        while (p > 0 && v < edge[p]) p--;
        while (p < nb - 1 && v >= edge[p + 1]) p++;
        cnt[p] += 1;
    }
    for (int k = 0; k < nb; k++) {
        pdf[k] = (float)(cnt[k] / ((double)n * (double)(edge[k + 1] - edge[k])));
        val[k] = (edge[k] + edge[k + 1]) / 2;
    }
    float dx = val[1] - val[0];
    /* coarse grid: every multiple of st below nb, in an 11-slot list (unused: +inf, index 0) */
    int st = nb / 10, idx[11] = { 0 };
    double loss[11];
    int t = 0;
    for (int j = 0; j < 11; j++) {
        loss[j] = INFINITY;
        if (j * st < nb) { idx[j] = j * st; loss[j] = slim_err(pdf, val, nb, dx, idx[j], bits); }
        if (loss[j] < loss[t]) t = j;
    }
    int flo = idx[t > 0 ? t - 1 : 0], fhi = idx[t + 1 < 10 ? t + 1 : 10];
    int best = 0;
    double bl = INFINITY;
    for (int i = flo; i < fhi; i++) {
        double e = slim_err(pdf, val, nb, dx, i, bits);
        if (e < bl) { bl = e; best = i; }
    }
    alpha = val[best];
done:
    free(edge);
    free(cnt);
    return alpha;
}

/* ---- AbsMax / SLiM-Quant fake quantization ---- */

static int params_alloc(struct quant_params *p, enum quant_kind kind, const struct quant_opts *o,
                        int rows, int cols, int grows, int gcols, struct slm_err *err)
{
    p->kind = kind;
    p->bits = o->bits;
    p->rows = rows;
    p->cols = cols;
    p->group_rows = grows;
    p->group_cols = gcols;
    p->bf16 = o->bf16;
    p->scale = malloc(sizeof *p->scale * (size_t)rows * (size_t)cols);
    if (!p->scale) return slm_err_set(err, SLM_ENOMEM, "quantizer scales: out of memory");
    return 0;
}

/* sf = max_q / alpha as the reference computes it: a Python int divided by a 0-d tensor is
** torch's __rtruediv__, reciprocal(alpha) * max_q, each rounded to the tensor's dtype (bf16 for
** AbsMax in a bf16 model). 7 / alpha directly differs in the last bit for some alphas, which moves
** every level of the matrix (fixture check: stories260K layer 0 up_proj, sf 12.5 not 12.5625). */
static float sf_of(float alpha, int max_q, bool bf16)
{
    return alpha > 0 ? rb(rb(1.0f / alpha, bf16) * (float)max_q, bf16) : 0;
}

/* The scale grid for w: per tensor / per row sf, or group alphas. */
static int fit(struct quant_params *p, const float *w, int d_out, int d_in, const struct quant_opts *o,
               struct slm_err *err)
{
    int max_q = quant_max_q(o->bits), rc;
    if (o->method == QUANT_SLIM || (o->method == QUANT_ABSMAX && o->group_size == 0)) {
        if ((rc = params_alloc(p, QK_SF, o, 1, 1, d_out, d_in, err))) return rc;
        float alpha = 0;
        if (o->method == QUANT_SLIM) alpha = quant_slim_alpha(w, (size_t)d_out * d_in, o->bits);
        else for (size_t i = 0; i < (size_t)d_out * d_in; i++) alpha = fmaxf(alpha, fabsf(w[i]));
        /* absmax: sf is a model-dtype scalar; SLiM-Quant computes it in f32 */
        p->scale[0] = sf_of(alpha, max_q, o->method == QUANT_ABSMAX && o->bf16);
        return 0;
    }
    if (o->group_size == -1) {
        if ((rc = params_alloc(p, QK_SF, o, d_out, 1, 1, d_in, err))) return rc;
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= QUANT_PAR_MIN)
        for (int r = 0; r < d_out; r++) {
            float alpha = 0;
            for (int c = 0; c < d_in; c++) alpha = fmaxf(alpha, fabsf(w[(size_t)r * d_in + c]));
            p->scale[r] = alpha > 0 ? rb((float)max_q / alpha, o->bf16) : 0;   /* no reference path: plain division */
        }
        return 0;
    }
    int g = o->group_size;
    int grows = o->column_wise ? 1 : g, gcols = o->column_wise ? g : 1;
    if (d_out % grows || d_in % gcols)
        return slm_err_set(err, SLM_ESHAPE, "group quantization: %dx%d is not a multiple of the %dx%d groups",
                           d_out, d_in, grows, gcols);
    int rows = d_out / grows, cols = d_in / gcols;
    if ((rc = params_alloc(p, QK_ALPHA, o, rows, cols, grows, gcols, err))) return rc;
    for (int i = 0; i < rows * cols; i++) p->scale[i] = 0;
    /* a row-wise group spans grows rows: threads take whole groups of rows, so no scale is shared */
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= QUANT_PAR_MIN)
    for (int gr = 0; gr < rows; gr++)
        for (int r = gr * grows; r < (gr + 1) * grows; r++)
            for (int c = 0; c < d_in; c++) {
                float *a = &p->scale[(size_t)gr * cols + c / gcols];
                *a = fmaxf(*a, fabsf(w[(size_t)r * d_in + c]));
            }
    for (int i = 0; i < rows * cols; i++) p->scale[i] = f16_to_f32(f32_to_f16(p->scale[i]));  /* kernel casts to fp16 */
    return 0;
}

static inline float scale_at(const struct quant_params *p, int r, int c)
{
    return p->scale[(size_t)(r / p->group_rows) * p->cols + c / p->group_cols];
}

/* Code of v under the scale s of p's kind. */
static inline float code_of(const struct quant_params *p, float v, float s, int max_q)
{
    /* + 0.0f turns -0 into +0: the stored code has no sign of zero to give back */
    if (s == 0) return 0;
    if (p->kind == QK_ALPHA) return clampq(round_half_to_zero(v / s * (float)max_q), max_q) + 0.0f;
    /* bf16 model: sf is a CUDA 0-d f32 tensor, cast to the bf16 of the weight for the product
    ** (a same-device tensor, not a wrapped scalar); the dequantization q / sf stays f32 */
    return clampq(nearbyintf(rb(v * rb(s, p->bf16), p->bf16)), max_q) + 0.0f;
}

/* AbsMax and SLiM-Quant values are what the reference stores: bf16, also in its float32 runs
** (fixture check: q / sf in f32, then rounded to bf16, matches every element). OPTQ keeps f32. */
static inline float value_of(const struct quant_params *p, float q, float s, int max_q)
{
    if (s == 0) return 0;
    if (p->kind == QK_ALPHA) return bf16_round(rb(q / (float)max_q, p->bf16) * s);
    if (p->kind == QK_STEP) return s * q;
    return bf16_round(q / s);
}

int quant_weight_host(float *w, int d_out, int d_in, const struct quant_opts *o, const float *col_scale,
                      int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    struct quant_params p = { 0 };
    int rc;
    if (o->version != QUANT_OPTS_VERSION) return slm_err_set(err, SLM_EINVAL, "quant_opts: version %d", o->version);
    if (o->bits < 2 || o->bits > 8) return slm_err_set(err, SLM_EINVAL, "quantization: %d bits (2..8)", o->bits);
    if (o->method != QUANT_ABSMAX && o->method != QUANT_SLIM)
        return slm_err_set(err, SLM_EINVAL, "quant_weight: method %d is not a standalone weight quantizer", o->method);
    if (o->method == QUANT_SLIM && o->group_size != 0)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SLiM-Quant is per tensor (group_size 0)");
    if ((rc = fit(&p, w, d_out, d_in, o, err))) goto done;
    int max_q = quant_max_q(o->bits);
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= QUANT_PAR_MIN)
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            float s = scale_at(&p, r, c), cs = col_scale ? col_scale[c] : 1.0f;
            float q = code_of(&p, cs != 1.0f ? w[i] * cs : w[i], s, max_q);
            if (codes) codes[i] = (int8_t)q;
            float v = value_of(&p, q, s, max_q);
            w[i] = cs != 1.0f ? bf16_round(v / cs) : v;
        }
    if (params) { *params = p; p.scale = NULL; }
done:
    quant_params_free(&p);
    return rc;
}

int quant_dequant_host(float *w, const int8_t *codes, int d_out, int d_in, const struct quant_params *p,
                       const float *col_scale, struct slm_err *err)
{
    if (!p->scale || p->group_rows <= 0 || p->group_cols <= 0 ||
        (int64_t)p->rows * p->group_rows < d_out || (int64_t)p->cols * p->group_cols < d_in)
        return slm_err_set(err, SLM_ESHAPE, "dequantize: scale grid %dx%d does not cover %dx%d", p->rows, p->cols, d_out, d_in);
    int max_q = quant_max_q(p->bits);
    for (int r = 0; r < d_out; r++)
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            float cs = col_scale ? col_scale[c] : 1.0f;
            float v = value_of(p, (float)codes[i], scale_at(p, r, c), max_q);
            w[i] = cs != 1.0f ? bf16_round(v / cs) : v;
        }
    return 0;
}

int quant_weight(struct kbackend *kb, float *w, int d_out, int d_in, const struct quant_opts *o,
                 const float *col_scale, int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    size_t nb = sizeof(float) * (size_t)d_out * d_in;
    float *h = malloc(nb);
    int rc;
    if (!h) return slm_err_set(err, SLM_ENOMEM, "quantize %dx%d: out of memory", d_out, d_in);
    if (!(rc = kb_download(kb, h, w, nb, err)) && !(rc = quant_weight_host(h, d_out, d_in, o, col_scale, codes, params, err)))
        rc = kb_upload(kb, w, h, nb, err);
    free(h);
    return rc;
}

/* ---- §3.4 important columns ---- */

struct colrank { double m; int j; };

static int colrank_desc(const void *a, const void *b)
{
    const struct colrank *x = a, *y = b;
    if (x->m != y->m) return x->m < y->m ? 1 : -1;
    return x->j - y->j;
}

int quant_important_columns(float *col_scale, const float *w, int d_out, int d_in, const float *s,
                            struct slm_err *err)
{
    struct colrank *cr = malloc(sizeof *cr * (size_t)d_in);
    if (!cr) return slm_err_set(err, SLM_ENOMEM, "important columns: out of memory");
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= QUANT_PAR_MIN)
    for (int j = 0; j < d_in; j++) {
        double sum = 0;
        for (int r = 0; r < d_out; r++) sum += fabsf(w[(size_t)r * d_in + j]);
        cr[j].m = (double)s[j] * sum;
        cr[j].j = j;
        col_scale[j] = 1.0f;
    }
    qsort(cr, (size_t)d_in, sizeof *cr, colrank_desc);
    for (int k = 0; k < (int)floor(0.01 * d_in); k++) col_scale[cr[k].j] = 2.0f;
    free(cr);
    return 0;
}

/* ---- OPTQ quantizer parameters (§3.5) ---- */

void quant_optq_fit(float *step, const float *w, int rows, int cols, int ld, bool per_row, int bits)
{
    int n = per_row ? rows : 1;
    for (int k = 0; k < n; k++) {
        float xmax = 0, xmin = 0;
        for (int r = per_row ? k : 0; r < (per_row ? k + 1 : rows); r++)
            for (int c = 0; c < cols; c++) {
                float v = w[(size_t)r * ld + c];
                xmax = fmaxf(xmax, v);
                xmin = fminf(xmin, v);
            }
        xmax = fmaxf(fabsf(xmin), xmax);
        if (xmax == 0) xmax = 1;
        step[k] = 2 * xmax / (float)((1 << bits) - 1);
    }
}

/* ---- activation quantization emulation (§3.6) ---- */

float quant_fp8_round(float x, bool e5m2)
{
    if (isnan(x) || x == 0) return x;
    int mbits = e5m2 ? 2 : 3, emin = e5m2 ? -14 : -6;
    float fmax = e5m2 ? 57344.0f : 448.0f, a = fabsf(x);
    int e;
    frexpf(a, &e);                 /* a = f * 2^e, f in [0.5, 1) -> exponent e-1 */
    int ex = e - 1 < emin ? emin : e - 1;
    float quantum = ldexpf(1.0f, ex - mbits);
    float r = nearbyintf(a / quantum) * quantum;
    if (r > fmax) r = fmax;        /* saturate (the reference rescales first, so this is a guard) */
    return x < 0 ? -r : r;
}

int quant_input_host(float *x, int rows, int d, const char *kind, int bits, int group_size, struct slm_err *err)
{
    size_t n = (size_t)rows * d;
    if (!strcmp(kind, "fp8")) {
        float m = 0;
        for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
        if (m == 0) return 0;
        bool e5 = !(m < 488.0f);   /* the reference's threshold (448 intended) */
        float fmax = e5 ? 57344.0f : 448.0f;
        for (size_t i = 0; i < n; i++) x[i] = quant_fp8_round(x[i] / m * (fmax - 1), e5) / (fmax - 1) * m;
        return 0;
    }
    if (strcmp(kind, "int")) return slm_err_set(err, SLM_EINVAL, "input quantization: unknown kind '%s'", kind);
    if (bits < 2 || bits > 16) return slm_err_set(err, SLM_EINVAL, "input quantization: %d bits", bits);
    size_t g = group_size == -1 ? (size_t)d : (size_t)group_size;
    if (g == 0) return slm_err_set(err, SLM_EINVAL, "input quantization: group size 0");
    int max_q = (1 << (bits - 1)) - 1;
    for (size_t s = 0; s < n; s += g) {
        size_t e = s + g < n ? s + g : n;
        float r = 0;
        for (size_t i = s; i < e; i++) r = fmaxf(r, fabsf(x[i]));
        if (r < 1e-4f * (float)max_q) r = 1;
        for (size_t i = s; i < e; i++) x[i] = clampq(nearbyintf(x[i] * ((float)max_q / r)), max_q) * r / (float)max_q;
    }
    return 0;
}
