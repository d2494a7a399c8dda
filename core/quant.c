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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "../kernels/kquant.h"

void quant_params_free(struct quant_params *p)
{
    if (!p) return;
    free(p->scale);
    p->scale = NULL;
}

static inline float rb(float x, bool bf16) { return bf16 ? bf16_round(x) : x; }

/* ---- SLiM-Quant (§3.3) ---- */

/* The reference's bin count for n values. */
static int slim_nbins(size_t n)
{
    size_t nbz = n / 1000;
    return (int)(nbz < 512 ? 512 : nbz > 20000 ? 20000 : nbz);
}

/* Bin edges edge [nb + 1] over [*lo, *hi] (widened in place when degenerate). */
static void slim_edges(float *edge, float *lo, float *hi, int nb)
{
    if (*hi == *lo) { *lo -= 0.5f; *hi += 0.5f; }   /* torch widens a degenerate range the same way */
    for (int k = 0; k <= nb; k++) edge[k] = *lo + (*hi - *lo) * ((float)k / (float)nb);
    edge[nb] = *hi;
}

/* Host edges [nb + 1] and zeroed counts [nb] of one SLiM-Quant histogram; NULL: out of memory
** (the caller frees both either way). */
static void slim_buffers(float **edge, uint64_t **counts, int nb)
{
    *edge = malloc(sizeof **edge * (size_t)(nb + 1));
    *counts = calloc((size_t)nb, sizeof **counts);
}

float quant_slim_alpha(const float *a, size_t n, int bits)
{
    if (n == 0) return 0;
    int nb = slim_nbins(n);
    float lo_hi[2], *edge;
    uint64_t *counts;
    kq_abs_range(lo_hi, a, n);
    float lo = lo_hi[0], hi = lo_hi[1], alpha = hi;
    slim_buffers(&edge, &counts, nb);
    if (edge && counts) {   /* allocation failure: AbsMax's alpha */
        slim_edges(edge, &lo, &hi, nb);
        kq_abs_histogram(counts, a, n, lo, hi, edge, nb);
        kq_slim_search_alloc(&alpha, counts, edge, nb, n, bits);
    }
    free(edge);
    free(counts);
    return alpha;
}

/* quant_slim_alpha on backend a [n]: range, histogram and search on the backend (the search over
** downloaded counts on the host where the backend has no slim_search). */
static int slim_alpha_kb(struct kbackend *kb, float *alpha, const float *a, size_t n, int bits, struct slm_err *err)
{
    const struct kbackend_i *f = kb->iface;
    int nb = slim_nbins(n), rc;
    float lo_hi[2], *edge = NULL, *d_range = NULL, *d_edge = NULL;
    uint64_t *counts = NULL, *d_counts = NULL;
    if (n == 0) { *alpha = 0; return 0; }
    slim_buffers(&edge, &counts, nb);
    if (!edge || !counts) { rc = slm_err_set(err, SLM_ENOMEM, "SLiM-Quant: histogram of %d bins", nb); goto done; }
    if ((rc = kb_alloc(kb, (void **)&d_range, sizeof lo_hi, err)) ||
        (rc = kb_alloc(kb, (void **)&d_edge, sizeof *edge * (size_t)(nb + 1), err)) ||
        (rc = kb_alloc(kb, (void **)&d_counts, sizeof *counts * (size_t)nb, err)) ||
        (rc = f->abs_range(kb, d_range, a, n, err)) ||
        (rc = kb_download(kb, lo_hi, d_range, sizeof lo_hi, err)))
        goto done;
    float lo = lo_hi[0], hi = lo_hi[1];
    slim_edges(edge, &lo, &hi, nb);
    if ((rc = kb_upload(kb, d_edge, edge, sizeof *edge * (size_t)(nb + 1), err)) ||
        (rc = kb_upload(kb, d_counts, counts, sizeof *counts * (size_t)nb, err)) ||
        (rc = f->abs_histogram(kb, d_counts, a, n, lo, hi, d_edge, nb, err)))
        goto done;
    if (f->slim_search)
        rc = f->slim_search(kb, alpha, d_counts, d_edge, nb, n, bits, err);
    else if (!(rc = kb_download(kb, counts, d_counts, sizeof *counts * (size_t)nb, err)) &&
             !kq_slim_search_alloc(alpha, counts, edge, nb, n, bits))
        rc = slm_err_set(err, SLM_ENOMEM, "SLiM-Quant: search over %d bins", nb);
done:
    kb_release(kb, d_range);
    kb_release(kb, d_edge);
    kb_release(kb, d_counts);
    free(edge);
    free(counts);
    return rc;
}

/* ---- AbsMax / SLiM-Quant fake quantization ---- */

static int check_quant_opts(const struct quant_opts *o, struct slm_err *err)
{
    if (o->version != QUANT_OPTS_VERSION) return slm_err_set(err, SLM_EINVAL, "quant_opts: version %d", o->version);
    if (o->bits < 2 || o->bits > 8) return slm_err_set(err, SLM_EINVAL, "quantization: %d bits (2..8)", o->bits);
    if (o->method != QUANT_ABSMAX && o->method != QUANT_SLIM)
        return slm_err_set(err, SLM_EINVAL, "quant_weight: method %d is not a standalone weight quantizer", o->method);
    if (o->method == QUANT_SLIM && o->group_size != 0)
        return slm_err_set(err, SLM_EUNSUPPORTED, "SLiM-Quant is per tensor (group_size 0)");
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

/* Allocate p's scale grid for o on a d_out x d_in weight: per tensor / per row sf, or group
** alphas. The grid's blocks are what the maxima of absmax_groups are taken over. */
static int grid_alloc(struct quant_params *p, const struct quant_opts *o, int d_out, int d_in, struct slm_err *err)
{
    enum quant_kind kind = QK_SF;
    int grows = d_out, gcols = d_in;
    if (o->method == QUANT_ABSMAX && o->group_size == -1) {
        grows = 1;
    } else if (o->method == QUANT_ABSMAX && o->group_size > 0) {
        int g = o->group_size;
        kind = QK_ALPHA;
        grows = o->column_wise ? 1 : g;
        gcols = o->column_wise ? g : 1;
        if (d_out % grows || d_in % gcols)
            return slm_err_set(err, SLM_ESHAPE, "group quantization: %dx%d is not a multiple of the %dx%d groups",
                               d_out, d_in, grows, gcols);
    }
    p->kind = kind;
    p->bits = o->bits;
    p->rows = d_out / grows;
    p->cols = d_in / gcols;
    p->group_rows = grows;
    p->group_cols = gcols;
    p->bf16 = o->bf16;
    p->scale = malloc(sizeof *p->scale * (size_t)p->rows * (size_t)p->cols);
    if (!p->scale) return slm_err_set(err, SLM_ENOMEM, "quantizer scales: out of memory");
    return 0;
}

/* Turn p's grid of block maxima |w| (SLiM-Quant: its clipping alpha) into the stored scales. */
static void grid_finish(struct quant_params *p, const struct quant_opts *o)
{
    int max_q = quant_max_q(o->bits);
    size_t ng = (size_t)p->rows * p->cols;
    if (p->kind == QK_ALPHA) {
        for (size_t i = 0; i < ng; i++) p->scale[i] = f16_to_f32(f32_to_f16(p->scale[i]));  /* kernel casts to fp16 */
    } else if (o->group_size == -1) {
        for (size_t r = 0; r < ng; r++)   /* per row: no reference path, plain division */
            p->scale[r] = p->scale[r] > 0 ? rb((float)max_q / p->scale[r], o->bf16) : 0;
    } else {
        /* absmax: sf is a model-dtype scalar; SLiM-Quant computes it in f32 */
        p->scale[0] = sf_of(p->scale[0], max_q, o->method == QUANT_ABSMAX && o->bf16);
    }
}

static struct kquant_args kargs_of(const struct quant_params *p, const float *scale, const float *col_scale)
{
    struct kquant_args a = { (int)p->kind, p->bits, p->bf16, p->rows, p->cols, p->group_rows, p->group_cols,
                             scale, col_scale };
    return a;
}

int quant_weight_host(float *w, int d_out, int d_in, const struct quant_opts *o, const float *col_scale,
                      int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    struct quant_params p = { 0 };
    int rc;
    if ((rc = check_quant_opts(o, err)) || (rc = grid_alloc(&p, o, d_out, d_in, err))) goto done;
    if (o->method == QUANT_SLIM) p.scale[0] = quant_slim_alpha(w, (size_t)d_out * d_in, o->bits);
    else kq_absmax_groups(p.scale, w, d_out, d_in, p.group_rows, p.group_cols);
    grid_finish(&p, o);
    struct kquant_args a = kargs_of(&p, p.scale, col_scale);
    kq_quant(w, codes, d_out, d_in, &a);
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
    struct kquant_args a = kargs_of(p, p->scale, col_scale);
    kq_dequant(w, codes, d_out, d_in, &a);
    return 0;
}

int quant_dequant(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in, const struct quant_params *p,
                  const float *col_scale, struct slm_err *err)
{
    size_t n = (size_t)d_out * d_in, ng = (size_t)p->rows * p->cols;
    float *h = NULL, *d_scale = NULL, *d_cs = NULL;
    int8_t *d_codes = NULL;
    int rc;
    if (!kb->iface->quant_dequant) {
        if (!(h = malloc(sizeof *h * (n ? n : 1)))) return slm_err_set(err, SLM_ENOMEM, "dequantize %dx%d: out of memory", d_out, d_in);
        if (!(rc = quant_dequant_host(h, codes, d_out, d_in, p, col_scale, err))) rc = kb_upload(kb, w, h, sizeof *h * n, err);
        free(h);
        return rc;
    }
    if (!p->scale || p->group_rows <= 0 || p->group_cols <= 0 ||
        (int64_t)p->rows * p->group_rows < d_out || (int64_t)p->cols * p->group_cols < d_in)
        return slm_err_set(err, SLM_ESHAPE, "dequantize: scale grid %dx%d does not cover %dx%d", p->rows, p->cols, d_out, d_in);
    if ((rc = kb_alloc(kb, (void **)&d_codes, n ? n : 1, err)) || (rc = kb_upload(kb, d_codes, codes, n, err)) ||
        (rc = kb_alloc(kb, (void **)&d_scale, sizeof *d_scale * ng, err)) ||
        (rc = kb_upload(kb, d_scale, p->scale, sizeof *d_scale * ng, err)))
        goto done;
    if (col_scale && ((rc = kb_alloc(kb, (void **)&d_cs, sizeof *d_cs * (size_t)d_in, err)) ||
                      (rc = kb_upload(kb, d_cs, col_scale, sizeof *d_cs * (size_t)d_in, err))))
        goto done;
    struct kquant_args a = kargs_of(p, d_scale, d_cs);
    rc = kb->iface->quant_dequant(kb, w, d_codes, d_out, d_in, &a, err);
done:
    kb_release(kb, d_codes);
    kb_release(kb, d_scale);
    kb_release(kb, d_cs);
    return rc;
}

/* quant_weight on a backend with the quantization ops: only the scale grid, the histogram and
** the codes cross to the host. */
static int quant_weight_kb(struct kbackend *kb, float *w, int d_out, int d_in, const struct quant_opts *o,
                           const float *col_scale, int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    const struct kbackend_i *f = kb->iface;
    struct quant_params p = { 0 };
    size_t n = (size_t)d_out * d_in, ng;
    float *d_scale = NULL, *d_cs = NULL;
    int8_t *d_codes = NULL;
    int rc;
    if ((rc = check_quant_opts(o, err)) || (rc = grid_alloc(&p, o, d_out, d_in, err))) goto done;
    ng = (size_t)p.rows * p.cols;
    if ((rc = kb_alloc(kb, (void **)&d_scale, sizeof *d_scale * ng, err))) goto done;
    if (o->method == QUANT_SLIM) rc = slim_alpha_kb(kb, &p.scale[0], w, n, o->bits, err);
    else if (!(rc = f->absmax_groups(kb, d_scale, w, d_out, d_in, p.group_rows, p.group_cols, err)))
        rc = kb_download(kb, p.scale, d_scale, sizeof *p.scale * ng, err);
    if (rc) goto done;
    grid_finish(&p, o);
    if ((rc = kb_upload(kb, d_scale, p.scale, sizeof *p.scale * ng, err))) goto done;
    if (col_scale && ((rc = kb_alloc(kb, (void **)&d_cs, sizeof *d_cs * (size_t)d_in, err)) ||
                      (rc = kb_upload(kb, d_cs, col_scale, sizeof *d_cs * (size_t)d_in, err))))
        goto done;
    if (codes && (rc = kb_alloc(kb, (void **)&d_codes, n, err))) goto done;
    struct kquant_args a = kargs_of(&p, d_scale, d_cs);
    if ((rc = f->quant_apply(kb, w, d_codes, d_out, d_in, &a, err))) goto done;
    if (codes && (rc = kb_download(kb, codes, d_codes, n, err))) goto done;
    if (params) { *params = p; p.scale = NULL; }
done:
    kb_release(kb, d_scale);
    kb_release(kb, d_cs);
    kb_release(kb, d_codes);
    quant_params_free(&p);
    return rc;
}

bool quant_weight_on_backend(const struct kbackend *kb)
{
    const struct kbackend_i *f = kb->iface;
    return f->absmax_groups && f->quant_apply && f->abs_range && f->abs_histogram;
}

int quant_weight(struct kbackend *kb, float *w, int d_out, int d_in, const struct quant_opts *o,
                 const float *col_scale, int8_t *codes, struct quant_params *params, struct slm_err *err)
{
    if (quant_weight_on_backend(kb))
        return quant_weight_kb(kb, w, d_out, d_in, o, col_scale, codes, params, err);
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
#pragma omp parallel for schedule(static) if ((size_t)d_out * d_in >= KQ_PAR_MIN)
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
        step[k] = kb_optq_step(xmin, xmax, bits);
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
        for (size_t i = s; i < e; i++) x[i] = kq_clampq(nearbyintf(x[i] * ((float)max_q / r)), max_q) * r / (float)max_q;
    }
    return 0;
}
