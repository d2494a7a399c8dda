/*
** tests/unit/core/gpu_parity.c: issue #6's "same answers" — every SLiM configuration, SliceGPT and
** the dense perplexity run on the CPU backend (the reference) and on the CUDA backend from the
** same calibration and evaluation ids (stories260K's reference ids; the fixture OPT of
** slim-reference/ too when SLIM_TEST_DATA holds it), and the results compared:
**   masks       identical, except entries whose CPU metric lies within PARITY_TIE_REL (relative) of
**               the other side of the selection boundary (an N:M group, a Wanda row, magnitude's
**               matrix threshold, SparseGPT's block threshold or group at its decision time); in
**               SparseGPT only the flips of a row's first differing group or block, since its later
**               columns are decided on weights that decision updated, and within PARITY_SGPT_TIE_REL;
**               under bf16 within PARITY_BF16_TIE_REL (bf16 roundings inside a block);
**   weights     final effective weights (dequantized, adapters merged or not) ||gpu - cpu|| / ||cpu||
**               <= PARITY_W_TOL over the rows whose masks agree;
**   codes       quantized weights and adapters: codes differ by at most one step, in at most
**               PARITY_CODE_FLIP_FRAC of the entries (an ulp before rounding moves a value across a
**               boundary now and then); weights are compared over the rows where none moved;
**   adapters    the product L R within PARITY_LR_TOL, for linears whose masks and codes agree (errors up to
**               LOWRANK_HOST_SVD_MAX wide are factored by LAPACK on every backend; wider ones by the
**               Gram path off the CPU, whose f32 rounding and signs differ);
**   perplexity  on the evaluation windows within PARITY_PPL_TOL (relative);
**   prune_lora  only W's masks and the device's L being 2:4: its Adam is chaotic (see run_cfg).
** The CPU metric comes from a spy: the CPU backend's vtable with col_stats, download and
** sparsegpt_block wrapped, which records the Wanda scalers as compress_linear downloads them and
** rebuilds SparseGPT's metric at each decision (CPU backend memory is host memory). Exits 77
** (skipped) without a visible GPU. --selftest (or SLIM_PARITY_SELFTEST=1) runs it all with "cpu" against
** "cpu" (registered as a unit test; about 10 s on 2 cores): the harness must then see no difference at all, so it is
** exercised end to end without a GPU. --dut NAME compares another backend with the CPU under the
** GPU's tolerances: "cpu-discrete" (registered as a unit test) runs core/'s device paths on memory
** the host cannot touch. SLIM_PARITY_TIE_REL overrides PARITY_TIE_REL to explore;
** every comparison prints the largest boundary gap among flipped entries.
** Teacher forcing: the compared DUT run takes the CPU run's calibration inputs at every block
** (compress_opts.on_block_input), so each block's masks, weights and adapters are compared from the
** same inputs; free-running, an ulp of difference in one block cascades through the later ones
** (bf16 roundings, quantization codes and near-tie masks move, and the next block sees it). The
** DUT's free-running perplexity is printed beside (SLIM_PARITY_FREE=1; the default against cuda).
** SLIM_PARITY_ONLY=SUBSTRING runs only the cases whose name holds it.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../test_util.h"
#include "core/compress.h"
#include "core/dtype.h"
#include "core/slicegpt.h"
#include "kernels/kquant.h"
#include "ref_ids.h"

#define PARITY_TIE_REL 1e-6    /* issue #6: "identical N:M masks where ties cannot occur" */
#define PARITY_W_TOL 1e-3      /* issue #6: dequantized weights within 1e-3 relative */
#define PARITY_LR_TOL 1e-3     /* adapters' product L R, as the weights */
#define PARITY_CODE_FLIP_FRAC 1e-3   /* quantized weights and adapters: codes an ulp moved across a boundary */
#define PARITY_PPL_TOL 0.002   /* issue #6: perplexity within 0.2% */
/* SparseGPT decides each group on weights every earlier column of its row updated (OBS), through
** the inverse Hessian and the update GEMMs, whose f32 roundings differ between backends: on the
** fixture OPT (rows of 1024) the first differing decision of a row came at gaps up to 1.7e-3 on
** cuemu (2026-12-07). A wrong selection differs by far more (an N:M group's runner-up: ~0.1-1). */
#define PARITY_SGPT_TIE_REL 1e-2
/* Under bf16 emulation a linear's input inside a block (o_proj's, fc2's) is rounded to bf16 after
** an attention or MLP sum an ulp apart, so now and then an element moves by a bf16 step and its
** column's Wanda scaler by ~1e-6: the fixture OPT's masks flipped at gaps up to 4.6e-6 on cuemu. */
#define PARITY_BF16_TIE_REL 1e-4

static bool selftest;
static double tie_rel = PARITY_TIE_REL;
static double band;   /* the tie band of the case running: tie_rel, or wider for SparseGPT and bf16 */
static const char *dut_name;
static struct kbackend *kb_cpu, *kb_dut;
static bool free_running;   /* also run the DUT on its own block inputs and print its perplexity */
static char data_dir[4000];

/* ---- the reference's metric at its selection boundary ----
** gap[i]: how far entry i's metric lies from the other side of the boundary of its selection
** set, relative (0 = a tie); a GPU decision may differ from the CPU's only where gap <= band
** (the case's tie band). */

/* Sets where a pruned entry's rebuilt metric exceeds a kept one's (beyond the rounding of the
** rebuild): the metric does not explain the CPU's own mask, so the harness reads the wrong thing. */
static long inversions;
#define REBUILD_REL 1e-5

static void boundary_gaps(float *gap, const float *t, const uint8_t *mask, size_t n)
{
    double maxp = -INFINITY, mink = INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (mask[i]) maxp = fmax(maxp, t[i]);
        else mink = fmin(mink, t[i]);
    }
    if (maxp > mink + REBUILD_REL * fabs(mink)) inversions++;
    for (size_t i = 0; i < n; i++) {
        double other = mask[i] ? mink : maxp;
        gap[i] = isinf(other) ? INFINITY : (float)(fabs(t[i] - other) / fmax(fabs(other), 1e-30));
    }
}

/* Selection sets of magnitude / Wanda on metric t [d_out x d_in]: N:M groups, Wanda's rows,
** magnitude's whole matrix (prune_mask_host). */
static void selection_gaps(float *gap, const float *t, const uint8_t *mask, int d_out, int d_in, const struct prune_opts *po)
{
    size_t n = (size_t)d_out * d_in;
    if (po->m)
        for (size_t g = 0; g < n; g += (size_t)po->m) boundary_gaps(gap + g, t + g, mask + g, (size_t)po->m);
    else if (po->method == PRUNE_WANDA)
        for (int r = 0; r < d_out; r++) boundary_gaps(gap + (size_t)r * d_in, t + (size_t)r * d_in, mask + (size_t)r * d_in, (size_t)d_in);
    else
        boundary_gaps(gap, t, mask, n);
}

/* ---- the spy on the CPU backend ---- */

struct gapmat { int rows, cols; float *gap; };
static struct {
    struct kbackend kb;
    struct kbackend_i f;
    const struct kbackend_i *real;
    const float *scaler[32];        /* scaler buffers col_stats saw lately */
    int ncols[32], nscaler;
    float **snap;                   /* scaler snapshots, in the order compress_linear downloads them */
    int *snap_cols, nsnap;
    struct gapmat *sg;              /* SparseGPT: one per linear, in compression order */
    int nsg;
} spy;

static int spy_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                         struct slm_err *err)
{
    int k = 0;
    while (k < spy.nscaler && spy.scaler[k] != scaler) k++;
    if (k == 32) {   /* full: forget the oldest */
        memmove(spy.scaler, spy.scaler + 1, sizeof spy.scaler[0] * 31);
        memmove(spy.ncols, spy.ncols + 1, sizeof spy.ncols[0] * 31);
        k = 31;
    } else if (k == spy.nscaler) {
        spy.nscaler++;
    }
    spy.scaler[k] = scaler;
    spy.ncols[k] = cols;
    return spy.real->col_stats(kb, scaler, abssum, x, rows, cols, nseq, err);
}

/* A released scaler's memory may come back as another buffer of the same size. */
static void spy_release(struct kbackend *kb, void *p)
{
    for (int k = 0; k < spy.nscaler; k++)
        if (spy.scaler[k] == p) {
            memmove(spy.scaler + k, spy.scaler + k + 1, sizeof spy.scaler[0] * (size_t)(spy.nscaler - k - 1));
            memmove(spy.ncols + k, spy.ncols + k + 1, sizeof spy.ncols[0] * (size_t)(spy.nscaler - k - 1));
            spy.nscaler--;
            break;
        }
    spy.real->release(kb, p);
}

static int spy_download(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err)
{
    int rc = spy.real->download(kb, dst, src, nbytes, err);
    for (int k = 0; !rc && k < spy.nscaler; k++)
        if (spy.scaler[k] == src && nbytes == sizeof(float) * (size_t)spy.ncols[k]) {
            spy.snap = realloc(spy.snap, sizeof *spy.snap * (size_t)(spy.nsnap + 1));
            spy.snap_cols = realloc(spy.snap_cols, sizeof *spy.snap_cols * (size_t)(spy.nsnap + 1));
            assert_non_null(spy.snap);
            assert_non_null(spy.snap_cols);
            spy.snap[spy.nsnap] = malloc(nbytes);
            assert_non_null(spy.snap[spy.nsnap]);
            memcpy(spy.snap[spy.nsnap], dst, nbytes);
            spy.snap_cols[spy.nsnap++] = spy.ncols[k];
            break;
        }
    return rc;
}

static float sgpt_metric_d(double v, double d) { return (float)(v * v / (d * d)); }

/* The OBS loop decides an N:M group on W as it stands when the loop reaches the group's first
** column; that W is rebuilt from the op's outputs: column c leaves q_c (the new W) and
** e_c = (w_c - q_c) / d_c, and every later column j of the block was moved by -e_c Hinv[c][j]. */
static int spy_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err)
{
    if (a->metric) return spy.real->sparsegpt_block(kb, a, err);
    int cnt = a->i2 - a->i1;
    if (a->i1 == 0) {
        spy.sg = realloc(spy.sg, sizeof *spy.sg * (size_t)(spy.nsg + 1));
        assert_non_null(spy.sg);
        struct gapmat g = { a->rows, a->cols, malloc(sizeof(float) * (size_t)a->rows * a->cols) };
        assert_non_null(g.gap);
        for (size_t i = 0; i < (size_t)a->rows * a->cols; i++) g.gap[i] = INFINITY;
        spy.sg[spy.nsg++] = g;
    }
    struct gapmat *g = &spy.sg[spy.nsg - 1];
    float *t = malloc(sizeof *t * (size_t)a->rows * cnt);
    assert_non_null(t);
    const float *H = a->hinv;
    size_t ldh = (size_t)a->ldh;
    if (!a->m)   /* unstructured: the metric at the block's start against the threshold */
        for (int r = 0; r < a->rows; r++)
            for (int i = 0; i < cnt; i++) {
                int c = a->i1 + i;
                t[(size_t)r * cnt + i] = sgpt_metric_d(a->w[(size_t)r * a->ldw + c], H[c * ldh + c]);
            }
    int rc = spy.real->sparsegpt_block(kb, a, err);
    if (rc) { free(t); return rc; }
    for (int r = 0; r < a->rows; r++) {
        const float *row = a->w + (size_t)r * a->ldw, *e = a->err + (size_t)r * cnt;
        const uint8_t *mk = a->mask + (size_t)r * a->ldm;
        float *gr = g->gap + (size_t)r * g->cols + a->i1, *tr = t + (size_t)r * cnt;
        if (!a->m) {
            if (!isfinite(a->thr)) continue;   /* OPTQ alone: nothing pruned */
            for (int i = 0; i < cnt; i++) {
                gr[i] = (float)(fabs(tr[i] - a->thr) / fmax(fabs(a->thr), 1e-30));
                inversions += gr[i] > REBUILD_REL && mk[i] != (tr[i] <= a->thr);
            }
            continue;
        }
        for (int i0 = 0; i0 < cnt; i0 += a->m) {
            for (int j = i0; j < i0 + a->m; j++) {
                int c = a->i1 + j;
                double w = (double)row[c] + (double)e[j] * H[c * ldh + c];
                for (int k = i0; k < j; k++) w += (double)e[k] * H[(a->i1 + k) * ldh + c];
                tr[j] = sgpt_metric_d(w, H[c * ldh + c]);
            }
            boundary_gaps(gr + i0, tr + i0, mk + i0, (size_t)a->m);
        }
    }
    free(t);
    return 0;
}

static void spy_reset(void)
{
    for (int i = 0; i < spy.nsnap; i++) free(spy.snap[i]);
    for (int i = 0; i < spy.nsg; i++) free(spy.sg[i].gap);
    free(spy.snap);
    free(spy.snap_cols);
    free(spy.sg);
    spy.snap = NULL, spy.snap_cols = NULL, spy.sg = NULL;
    spy.nsnap = spy.nsg = 0;
}

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    snprintf(data_dir, sizeof data_dir, "%s", test_data_dir());
    if (kbackend_open(&kb_cpu, "cpu", &e) || kbackend_open(&kb_dut, dut_name, &e)) {
        fprintf(stderr, "gpu_parity: %s\n", e.msg);
        return -1;
    }
    spy.kb = *kb_cpu;
    spy.real = kb_cpu->iface;
    spy.f = *kb_cpu->iface;
    spy.f.col_stats = spy_col_stats;
    spy.f.download = spy_download;
    spy.f.release = spy_release;
    spy.f.sparsegpt_block = spy_sparsegpt_block;
    spy.kb.iface = &spy.f;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    spy_reset();
    kbackend_free(kb_dut);
    kbackend_free(kb_cpu);
    return 0;
}

/* ---- comparisons ---- */

static float *fetch(struct kbackend *kb, const float *p, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    float *h = malloc(sizeof *h * (n ? n : 1));
    assert_non_null(h);
    assert_int_equal(kb_download(kb, h, p, sizeof *h * n, &err), 0);
    return h;
}

/* ||b - a|| / ||a|| over the rows of [rows x cols] that skip does not flag (skip may be NULL). */
static double rel_diff_rows(const float *a, const float *b, int rows, int cols, const uint8_t *skip_row)
{
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++) {
        if (skip_row && skip_row[r]) continue;
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            double d = (double)b[i] - a[i];
            num += d * d;
            den += (double)a[i] * a[i];
        }
    }
    if (num == 0) return 0;
    return den > 0 ? sqrt(num / den) : INFINITY;
}

/* Product (L R)[d_in x d_out] of an adapter in double. */
static double *adapter_product(struct kbackend *kb, const struct linear *l)
{
    size_t ni = (size_t)l->d_in, no = (size_t)l->d_out, r = (size_t)l->rank;
    float *L = fetch(kb, l->lora_l, ni * r), *R = fetch(kb, l->lora_r, r * no);
    double *P = calloc(ni * no, sizeof *P);
    assert_non_null(P);
    for (size_t i = 0; i < ni; i++)
        for (size_t k = 0; k < r; k++)
            for (size_t j = 0; j < no; j++) P[i * no + j] += (double)L[i * r + k] * R[k * no + j];
    free(L);
    free(R);
    return P;
}

/* Quantized adapters: entries of the CPU's (a) and the device's (b) stored factor [rows x cols] whose
** codes differ. The stored factor is deq(F sqrt(r)) / sqrt(r) (lowrank_quantize), so a code step is
** alpha / (max_q sqrt(r)). An ulp of difference before quantization moves a value across a rounding
** boundary now and then: that entry differs by one step (*flips); more than one step has no such
** explanation (*beyond). */
static void code_flips(const float *a, const float *b, const struct quant_params *q, int rows, int cols, int rank,
                       long *flips, long *beyond)
{
    assert_int_equal(q->kind, QK_ALPHA);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float alpha = q->scale[(size_t)(i / q->group_rows) * q->cols + j / q->group_cols];
            double step = alpha / (quant_max_q(q->bits) * sqrt((double)rank));
            double d = fabs((double)b[(size_t)i * cols + j] - a[(size_t)i * cols + j]);
            if (d > 0.5 * step) ++*flips;
            if (d > 1.5 * step) ++*beyond;
        }
}

struct tally {
    long code_flips, code_beyond, code_entries;   /* quantized adapters */
    long wcode_flips, wcode_beyond, wcode_entries;   /* quantized weights (rows with a mask flip left out) */
    long l24_groups, l24_short;     /* prune_lora: groups of 4 of the device's L, those with < 2 zeros */
    int code_linears;               /* linears with a flipped adapter code: their L R not compared */
    long flips, unexplained, entries;
    long cascaded;                  /* SparseGPT: flips after the first of their row, not checked */
    double worst_gap_flipped;       /* largest boundary gap among flipped entries */
    double worst_w, worst_lr;       /* over linears whose masks agree (rows: weights) */
    int tie_linears;                /* linears with an allowed flip: adapters not compared */
};

/* Mask of the CPU (a) and the device (b) for one linear, gap from the CPU metric (may be NULL:
** no metric known, every flip is unexplained). Fills flipped_row [d_out]. */
static void compare_mask(struct tally *t, const uint8_t *a, const uint8_t *b, const float *gap, int d_out, int d_in,
                         uint8_t *flipped_row, int unit)
{
    for (int r = 0; r < d_out; r++) {
        int first_unit = -1;
        flipped_row[r] = 0;
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            t->entries++;
            if (a[i] == b[i]) continue;
            t->flips++;
            /* unit > 0 (SparseGPT): a row's columns are decided unit by unit (an N:M group, a block
            ** of columns), each on weights the earlier decisions updated (OBS), so the units after
            ** the one of a row's first flip follow from it */
            if (unit > 0 && first_unit >= 0 && c / unit != first_unit) {
                t->cascaded++;
                continue;
            }
            if (unit > 0) first_unit = c / unit;
            flipped_row[r] = 1;
            double g = gap ? gap[i] : INFINITY;
            if (g > t->worst_gap_flipped) t->worst_gap_flipped = g;
            if (!(g <= band)) t->unexplained++;
        }
    }
}

/* Harness self-check: a flip at a tie is explained, one away from it is not, weights differ. */
static void test_core_gpu_parity__harness_flags_differences(void **state)
{
    (void)state;
    band = PARITY_TIE_REL;
    const float t[8] = { 1.0f, 2.0f, 2.0000005f, 9.0f, 0.5f, 3.0f, 4.0f, 5.0f };
    const uint8_t cpu[8] = { 1, 1, 0, 0, 1, 1, 0, 0 };
    uint8_t dev[8] = { 1, 0, 1, 0, 1, 1, 0, 0 }, flipped[2];
    float gap[8];
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.method = PRUNE_MAGNITUDE, po.n = 2, po.m = 4;
    selection_gaps(gap, t, cpu, 2, 4, &po);
    assert_true(gap[1] <= 1e-6 && gap[2] <= 1e-6);   /* 2 vs 2.0000005: a tie at 1e-6 */
    assert_int_equal(inversions, 0);
    const uint8_t wrong[4] = { 0, 1, 1, 0 };          /* 1.0 kept while 2.0 pruned */
    float gw[4];
    boundary_gaps(gw, t, wrong, 4);
    assert_int_equal(inversions, 1);
    inversions = 0;
    assert_true(gap[0] > 0.4 && gap[3] > 3);
    struct tally tl = { 0 };
    compare_mask(&tl, cpu, dev, gap, 2, 4, flipped, 0);
    assert_int_equal(tl.flips, 2);
    assert_int_equal(tl.unexplained, 0);
    assert_true(flipped[0] && !flipped[1]);
    dev[5] = 0;   /* group 2: 3.0 kept instead of pruned while 4.0 is pruned: no tie */
    compare_mask(&tl, cpu, dev, gap, 2, 4, flipped, 0);
    assert_int_equal(tl.unexplained, 1);
    compare_mask(&tl, cpu, dev, NULL, 2, 4, flipped, 0);   /* no metric known: every flip counts */
    assert_int_equal(tl.unexplained, 1 + 3);
    /* SparseGPT's rows: only a row's first flip needs a tie, the rest of the row follows from it */
    dev[3] = 1;   /* row 0: the tie flip at columns 1 and 2, then column 3, far from any tie */
    struct tally ts = { 0 };
    compare_mask(&ts, cpu, dev, gap, 2, 4, flipped, 2);   /* units {0, 1}, {2, 3}: columns 2 and 3 follow */
    assert_int_equal(ts.flips, 4);
    assert_int_equal(ts.cascaded, 2);
    assert_int_equal(ts.unexplained, 1);   /* row 1's lone flip, the first of its row, at no tie */
    memset(&ts, 0, sizeof ts);
    compare_mask(&ts, cpu, dev, gap, 2, 4, flipped, 4);   /* one unit: every flip of row 0 is checked */
    assert_int_equal(ts.cascaded, 0);
    assert_int_equal(ts.unexplained, 2);
    /* rows: Wanda's per-row sets; the matrix: magnitude's one threshold */
    po.n = po.m = 0;
    po.method = PRUNE_WANDA;
    selection_gaps(gap, t, cpu, 2, 4, &po);
    assert_true(gap[4] > 0.5 && gap[2] <= 1e-6);
    po.method = PRUNE_MAGNITUDE;
    const uint8_t thr[8] = { 1, 0, 0, 0, 1, 0, 0, 0 };   /* t <= 1.0 */
    selection_gaps(gap, t, thr, 2, 4, &po);
    assert_true(fabs(gap[1] - 1.0) < 1e-6 && fabs(gap[4] - 0.75) < 1e-6);   /* from 1.0, the largest pruned; from 2.0 */
    const float w0[4] = { 1, 2, 3, 4 }, w1[4] = { 1, 2, 3, 4.004f };
    assert_true(rel_diff_rows(w0, w0, 2, 2, NULL) == 0);
    assert_true(rel_diff_rows(w0, w1, 2, 2, NULL) > 5e-4);
    const uint8_t skip[2] = { 0, 1 };
    assert_true(rel_diff_rows(w0, w1, 2, 2, skip) == 0);
}

/* ---- one configuration on both backends ---- */

struct cfg {
    const char *name;
    enum prune_method pm;
    int n, m;
    enum quant_method qm;
    int group;                 /* AbsMax group size, or OPTQ's group (-1 per row) */
    enum lowrank_method lm;
    bool qlora, separate, bf16, jsq;
    bool opt;                  /* the fixture OPT (slim-reference/, with the full fixture set) */
    bool prune_lora;           /* §4.5: L pruned 2:4 and refit by Adam */
};

static void opts_of(struct compress_opts *o, const struct cfg *c)
{
    struct compress_opts d = COMPRESS_OPTS_INIT;
    *o = d;
    o->prune.method = c->pm;
    o->prune.n = c->n;
    o->prune.m = c->m;
    o->prune.sparsity = c->pm == PRUNE_NONE ? 0 : c->m ? (double)(c->m - c->n) / c->m : 0.5;
    o->prune.blocksize = c->opt ? 256 : 32;   /* stories260K: several SparseGPT blocks per linear */
    o->quant.method = c->qm;
    o->quant.bits = 4;
    o->quant.group_size = c->qm == QUANT_OPTQ ? 0 : c->group;
    if (c->qm == QUANT_OPTQ) { o->prune.optq_bits = 4; o->prune.optq_group = c->group; }
    o->lowrank.method = c->lm;
    o->lowrank.tile = c->opt ? 128 : 4;
    o->lowrank.quantize = c->qlora;
    o->separate_lora = c->separate;
    o->prune_lora = c->prune_lora;
    o->shift_zero_metrics = true;
    o->jsq.on = c->jsq;
    o->bf16 = o->quant.bf16 = o->lowrank.bf16 = c->bf16;
    o->keep_codes = true;
}

struct side {
    struct model *m;
    struct compress_result res;
    double ppl;
};

static void paths_of(const struct cfg *c, char *model_dir, size_t nm, char *ids_dir, size_t ni)
{
    snprintf(model_dir, nm, "%s/%s", data_dir, c && c->opt ? "slim-reference/model" : "stories260K");
    snprintf(ids_dir, ni, "%s/%s", data_dir, c && c->opt ? "slim-reference" : "slim-reference-stories260K");
    char p[4200];
    snprintf(p, sizeof p, "%s/ids.safetensors", ids_dir);
    if (access(model_dir, R_OK) || access(p, R_OK)) {
        fprintf(stderr, "%s or %s missing (point SLIM_TEST_DATA at the full fixture set), skipped\n", model_dir, p);
        skip();
    }
}

/* Teacher forcing: the CPU run records every block's calibration inputs and the DUT's run takes
** them instead of its own, so each block is compared from the same inputs. Free-running, a
** difference in block b (an attention sum an ulp apart that moves a bf16 rounding, a quantization
** code, a near-tie of a mask, prune_lora's Adam) cascades into every later block. */
static struct forced {
    float **x;      /* [block * windows + window], rows x width floats */
    int nb, nw;
    bool replay;    /* false: record (CPU run); true: overwrite the DUT's inputs */
} forced;

static int forced_input(void *payload, int b, int s, float *x, int rows, int width, struct slm_err *err)
{
    struct forced *f = payload;
    size_t n = (size_t)rows * width;
    if (b >= f->nb || s >= f->nw) return slm_err_set(err, SLM_EINTERNAL, "forced inputs: block %d window %d", b, s);
    float **slot = &f->x[(size_t)b * f->nw + s];
    if (!f->replay) {
        if (!*slot && !(*slot = malloc(sizeof **slot * n))) return slm_err_set(err, SLM_ENOMEM, "forced inputs");
        return kb_download(kb_cpu, *slot, x, sizeof **slot * n, err);
    }
    if (!*slot) return slm_err_set(err, SLM_EINTERNAL, "no CPU input recorded for block %d window %d", b, s);
    return kb_upload(kb_dut, x, *slot, sizeof **slot * n, err);
}

static void forced_free(void)
{
    for (int i = 0; forced.x && i < forced.nb * forced.nw; i++) free(forced.x[i]);
    free(forced.x);
    memset(&forced, 0, sizeof forced);
}

static void run_side(struct side *s, struct kbackend *kb, const char *model_dir, const struct compress_opts *o,
                     const int32_t *cal, int nc, int T, const int32_t *ev, int ne, int Te, const char *tag)
{
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_open(&s->m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    int rc = compress_model(s->m, cal, nc, T, o, &s->res, &err);
    if (rc) fprintf(stderr, "%s (%s): %s\n", tag, kb_name(kb), err.msg);
    assert_int_equal(rc, 0);
    s->ppl = ref_perplexity(s->m, ev, ne, Te);
}

/* Gap matrix of linear (b, r) from the spy's records; NULL when the method's metric is not
** rebuilt (JSQ's joint metric): then masks must agree exactly. *snap_i / *sg_i walk the records. */
static float *reference_gaps(const struct cfg *c, const struct compress_opts *o, struct model *dense, int b, int r,
                             const uint8_t *mask, int *snap_i, int *sg_i)
{
    const struct linear *l = &dense->blocks[b].lin[r];
    size_t n = (size_t)l->d_out * l->d_in;
    if (c->jsq || !mask) return NULL;
    float *gap = malloc(sizeof *gap * n);
    assert_non_null(gap);
    if (c->pm == PRUNE_SPARSEGPT) {
        assert_true(*sg_i < spy.nsg);
        const struct gapmat *g = &spy.sg[(*sg_i)++];
        assert_int_equal(g->rows, l->d_out);
        assert_int_equal(g->cols, l->d_in);
        memcpy(gap, g->gap, sizeof *gap * n);
        return gap;
    }
    float *w = fetch(dense->kb, l->w, n), *t = malloc(sizeof *t * n), *s = NULL;
    assert_non_null(t);
    if (c->pm == PRUNE_WANDA) {
        assert_true(*snap_i >= 1 && *snap_i <= spy.nsnap);
        assert_int_equal(spy.snap_cols[*snap_i - 1], l->d_in);
        s = malloc(sizeof *s * (size_t)l->d_in);
        assert_non_null(s);
        memcpy(s, spy.snap[*snap_i - 1], sizeof *s * (size_t)l->d_in);
        if (o->shift_zero_metrics) prune_shift_scaler(s, l->d_in);
    }
    for (size_t i = 0; i < n; i++) t[i] = kq_prune_metric(w[i], s, (int)(i % (size_t)l->d_in));
    selection_gaps(gap, t, mask, l->d_out, l->d_in, &o->prune);
    free(w);
    free(t);
    free(s);
    return gap;
}

/* Linears that read the same input share one calibration slot (LLaMA / OPT: q, k, v; gate, up):
** compress_linear downloads a slot's scaler once, at its first linear. */
static int input_group(enum lin_role r)
{
    return r <= LIN_V ? 0 : r == LIN_O ? 1 : r <= LIN_UP ? 2 : 3;
}

static void run_cfg(const struct cfg *c)
{
    char model_dir[4096], ids_dir[4096];
    paths_of(c, model_dir, sizeof model_dir, ids_dir, sizeof ids_dir);
    band = c->pm == PRUNE_SPARSEGPT ? fmax(tie_rel, PARITY_SGPT_TIE_REL) : c->bf16 ? fmax(tie_rel, PARITY_BF16_TIE_REL) : tie_rel;
    struct slm_err err = SLM_ERR_INIT;
    int nc, T, ne, Te;
    int32_t *cal = ref_ids_load(ids_dir, "calibration_ids", &nc, &T), *ev = ref_ids_load(ids_dir, "eval_ids", &ne, &Te);
    struct compress_opts o;
    opts_of(&o, c);
    struct side a = { 0 }, b = { 0 };
    spy_reset();
    inversions = 0;
    /* the DUT free-running first (informational: what a user of each backend gets), then the
    ** CPU recording its block inputs and the DUT fed them: the compared pair */
    double free_ppl = -1;
    if (free_running) {
        struct side f = { 0 };
        run_side(&f, kb_dut, model_dir, &o, cal, nc, T, ev, ne, Te, c->name);
        free_ppl = f.ppl;
        compress_result_free(&f.res);
        model_free(f.m);
    }
    forced.nb = 256;
    forced.nw = nc;
    forced.x = calloc((size_t)forced.nb * nc, sizeof *forced.x);
    assert_non_null(forced.x);
    struct compress_opts oa = o, ob = o;
    oa.on_block_input = ob.on_block_input = forced_input;
    oa.input_payload = ob.input_payload = &forced;
    run_side(&a, &spy.kb, model_dir, &oa, cal, nc, T, ev, ne, Te, c->name);
    forced.replay = true;
    run_side(&b, kb_dut, model_dir, &ob, cal, nc, T, ev, ne, Te, c->name);
    forced_free();

    /* the dense weights the CPU compressed, for magnitude / Wanda metrics */
    struct model *dense = NULL;
    assert_int_equal(model_open(&dense, model_dir, kb_cpu, 0, &err), 0);
    if (c->bf16) assert_int_equal(model_set_bf16(dense, true, false, &err), 0);

    struct tally t = { 0 };
    int snap_i = 0, sg_i = 0;
    for (int bl = 0; bl < a.m->cfg.n_layers; bl++) {
        int prev_group = -1;
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *la = &a.m->blocks[bl].lin[r], *lb = &b.m->blocks[bl].lin[r];
            if (!la->w) continue;
            if (input_group(r) != prev_group) snap_i++, prev_group = input_group(r);
            const struct compressed_linear *ca = &a.res.lin[bl][r], *cb = &b.res.lin[bl][r];
            int d_out = la->d_out, d_in = la->d_in;
            size_t n = (size_t)d_out * d_in;
            uint8_t *flipped = calloc((size_t)d_out, 1);
            assert_non_null(flipped);
            assert_int_equal(ca->mask != NULL, cb->mask != NULL);
            if (ca->mask) {
                float *gap = reference_gaps(c, &o, dense, bl, r, ca->mask, &snap_i, &sg_i);
                compare_mask(&t, ca->mask, cb->mask, gap, d_out, d_in, flipped,
                             c->pm != PRUNE_SPARSEGPT ? 0 : o.prune.m ? o.prune.m : o.prune.blocksize);
                free(gap);
            }
            /* weight codes, as the adapters' below: an ulp before a rounding (bf16, then the code)
            ** moves one by one step now and then; its row is then left out of the weights */
            assert_int_equal(ca->codes != NULL, cb->codes != NULL);
            if (ca->codes) {
                for (int i = 0; i < d_out; i++) {
                    bool moved = false;
                    for (int j = 0; j < d_in && !flipped[i]; j++) {
                        int dc = abs(ca->codes[(size_t)i * d_in + j] - cb->codes[(size_t)i * d_in + j]);
                        if (!dc) continue;
                        t.wcode_flips++;
                        t.wcode_beyond += dc > 1;
                        moved = true;
                    }
                    if (moved) flipped[i] = 1;
                }
                t.wcode_entries += (long)n;
            }
            bool any_flip = false;
            for (int i = 0; i < d_out; i++) any_flip |= flipped[i];
            float *wa = fetch(a.m->kb, la->w, n), *wb = fetch(b.m->kb, lb->w, n);
            double rw = rel_diff_rows(wa, wb, d_out, d_in, flipped);
            if (getenv("VERBOSE")) fprintf(stderr, "  %-36s w rel %.2e%s\n", la->name, rw, any_flip ? " (tie rows left out)" : "");
            if (rw > t.worst_w) t.worst_w = rw;
            assert_int_equal(la->rank, lb->rank);
            if (la->rank && any_flip) t.tie_linears++;
            long cf = 0;
            if (la->rank && !any_flip && ca->qpl.scale && cb->qpl.scale) {   /* a mask flip refits them */
                size_t nl = (size_t)d_in * la->rank, nr = (size_t)la->rank * d_out;
                float *La = fetch(a.m->kb, la->lora_l, nl), *Lb = fetch(b.m->kb, lb->lora_l, nl);
                float *Ra = fetch(a.m->kb, la->lora_r, nr), *Rb = fetch(b.m->kb, lb->lora_r, nr);
                code_flips(La, Lb, &ca->qpl, d_in, la->rank, la->rank, &cf, &t.code_beyond);
                code_flips(Ra, Rb, &ca->qpr, la->rank, d_out, la->rank, &cf, &t.code_beyond);
                t.code_flips += cf;
                t.code_entries += (long)(nl + nr);
                if (cf) t.code_linears++;
                if (cf && getenv("VERBOSE")) fprintf(stderr, "  %-36s %ld adapter codes flipped\n", la->name, cf);
                free(La);
                free(Lb);
                free(Ra);
                free(Rb);
            }
            if (c->prune_lora && lb->rank) {   /* the device did prune L 2:4 along d_in */
                float *Lb = fetch(b.m->kb, lb->lora_l, (size_t)d_in * lb->rank);
                for (int k = 0; k < lb->rank; k++)
                    for (int g = 0; g + 4 <= d_in; g += 4) {
                        int z = 0;
                        for (int j = g; j < g + 4; j++) z += Lb[(size_t)j * lb->rank + k] == 0;
                        t.l24_groups++;
                        t.l24_short += z < 2;
                    }
                free(Lb);
            }
            if (la->rank && !any_flip && !cf) {
                double *pa = adapter_product(a.m->kb, la), *pb = adapter_product(b.m->kb, lb), num = 0, den = 0;
                for (size_t i = 0; i < n; i++) {
                    num += (pb[i] - pa[i]) * (pb[i] - pa[i]);
                    den += pa[i] * pa[i];
                }
                double rl = num == 0 ? 0 : den > 0 ? sqrt(num / den) : INFINITY;
                if (getenv("VERBOSE")) fprintf(stderr, "  %-36s L.R rel %.2e (rank %d)\n", la->name, rl, la->rank);
                if (rl > t.worst_lr) t.worst_lr = rl;
                free(pa);
                free(pb);
            }
            free(wa);
            free(wb);
            free(flipped);
        }
    }
    if (c->pm == PRUNE_WANDA && !c->jsq) assert_int_equal(snap_i, spy.nsnap);   /* one snapshot per slot */
    if (c->pm == PRUNE_SPARSEGPT) assert_int_equal(sg_i, spy.nsg);
    assert_int_equal(inversions, 0);   /* the rebuilt metrics select the CPU's masks */
    double dppl = fabs(b.ppl / a.ppl - 1);
    if (t.cascaded)
        fprintf(stderr, "parity %-44s %ld of the flips follow an earlier flip in their row (SparseGPT's updates)\n",
                c->name, t.cascaded);
    fprintf(stderr, "parity %-44s %s vs cpu: mask flips %ld/%ld (%ld beyond the tie band %.0e, largest gap %.2e)  "
            "weights %.2e  L.R %.2e%s  ppl %.5f vs %.5f (%.4f%%)\n",
            c->name, dut_name, t.flips, t.entries, t.unexplained, band, t.flips ? t.worst_gap_flipped : 0.0,
            t.worst_w, t.worst_lr, t.tie_linears ? " (tie linears left out)" : "", b.ppl, a.ppl, 100 * dppl);
    if (t.wcode_flips)
        fprintf(stderr, "parity %-44s %s weight codes: %ld of %ld moved (%ld by more than one step), their rows' "
                "weights left out\n", c->name, dut_name, t.wcode_flips, t.wcode_entries, t.wcode_beyond);
    if (t.code_entries)
        fprintf(stderr, "parity %-44s %s adapter codes: %ld of %ld flipped (%ld by more than one step), L.R of %d "
                "linears left out\n", c->name, dut_name, t.code_flips, t.code_entries, t.code_beyond, t.code_linears);
    if (free_ppl >= 0)
        fprintf(stderr, "parity %-44s %s free-running (own block inputs): ppl %.5f (%.4f%% from the cpu)\n", c->name,
                dut_name, free_ppl, 100 * fabs(free_ppl / a.ppl - 1));
    if (selftest) {
        /* the same backend twice: no difference at all, or the harness is not comparing like with like */
        assert_int_equal(t.flips, 0);
        assert_true(t.worst_w == 0 && t.worst_lr == 0 && b.ppl == a.ppl);
    }
    assert_int_equal(t.unexplained, 0);
    assert_int_equal(t.code_beyond, 0);
    assert_true(t.code_flips <= PARITY_CODE_FLIP_FRAC * t.code_entries);
    if (c->prune_lora) {
        /* prune_lora's Adam (the reference's lr = 1e6 / min(d_in, d_out)^2: 244 on stories260K) is
        ** chaotic: an ulp anywhere gives other adapters, and W follows (Q(M . (W - L R))). The CPU alone
        ** moves this case's ppl from 65.81 to 70.72 with the OpenBLAS thread count. Compared: W's masks
        ** (above) and the device's L being 2:4; weights (and their codes), L R and ppl are printed only. */
        fprintf(stderr, "parity %-44s prune_lora: %ld of %ld groups of L 2:4 on the device; weights, L.R and ppl "
                "not compared (chaotic)\n", c->name, t.l24_groups - t.l24_short, t.l24_groups);
        assert_true(t.l24_groups > 0);
        assert_int_equal(t.l24_short, 0);
    } else {
        assert_int_equal(t.wcode_beyond, 0);
        assert_true(t.wcode_flips <= PARITY_CODE_FLIP_FRAC * t.wcode_entries);
        assert_true(t.worst_w <= PARITY_W_TOL);
        assert_true(t.worst_lr <= PARITY_LR_TOL);
        assert_true(dppl <= PARITY_PPL_TOL);
    }
    compress_result_free(&a.res);
    compress_result_free(&b.res);
    model_free(a.m);
    model_free(b.m);
    model_free(dense);
    spy_reset();
    free(cal);
    free(ev);
}

/* The matrix of compress.c's and checkpoint.c's parity tests, stories260K unless .opt. */
static const struct cfg cfgs[] = {
    /* name                                  prune            n  m  quant        grp lowrank        qlora  sep    bf16   jsq    opt    plora */
    { "magnitude_2of4_f32",                  PRUNE_MAGNITUDE, 2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "magnitude_unstr50_absmax4_f32",       PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "wanda_2of4_f32",                      PRUNE_WANDA,     2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "wanda_unstr50_f32",                   PRUNE_WANDA,     0, 0, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "sparsegpt_2of4_f32",                  PRUNE_SPARSEGPT, 2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "sparsegpt_unstr50_f32",               PRUNE_SPARSEGPT, 0, 0, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "wanda_2of4_groupabsmax4_f32",         PRUNE_WANDA,     2, 4, QUANT_ABSMAX, 4, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "wanda_2of4_slimquant4_f32",           PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "sparsegpt_unstr50_optq4row_f32",      PRUNE_SPARSEGPT, 0, 0, QUANT_OPTQ,  -1, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "optq4row_f32",                        PRUNE_NONE,      0, 0, QUANT_OPTQ,  -1, LOWRANK_NONE,  false, true,  false, false, false, false },
    { "wanda_2of4_slimquant4_naivelora_f32", PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_NAIVE, false, true,  false, false, false, false },
    { "wanda_2of4_slimquant4_slimlora_f32",  PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  false, true,  false, false, false, false },
    { "wanda_2of4_slimquant4_slimlora_q_f32",PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  true,  true,  false, false, false, false },
    { "wanda_2of4_absmax4_naivelora_merged", PRUNE_WANDA,     2, 4, QUANT_ABSMAX, 0, LOWRANK_NAIVE, false, false, false, false, false, false },
    { "groupabsmax4_l2qer_f32",              PRUNE_NONE,      0, 0, QUANT_ABSMAX, 4, LOWRANK_L2QER, false, true,  false, false, false, false },
    { "jsq_wanda_2of4_groupabsmax4_f32",     PRUNE_WANDA,     2, 4, QUANT_ABSMAX, 4, LOWRANK_NONE,  false, true,  false, true,  false, false },
    { "wanda_2of4_slimquant4_slimlora_prunelora_f32", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, false, true, false, false, false, true },
    { "magnitude_unstr50_absmax4_bf16",      PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE,  false, true,  true,  false, false, false },
    { "wanda_2of4_bf16",                     PRUNE_WANDA,     2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  true,  false, false, false },
    { "sparsegpt_2of4_bf16",                 PRUNE_SPARSEGPT, 2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  true,  false, false, false },
    { "wanda_2of4_slimquant4_slimlora_bf16", PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  false, true,  true,  false, false, false },
    { "wanda_2of4_slimquant4_slimlora_q_bf16",PRUNE_WANDA,    2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  true,  true,  true,  false, false, false },
    /* the fixture OPT (fc2 reads 1024 inputs: SparseGPT's blocks of 256, adapters' tile 128) */
    { "wanda_2of4_f32",                      PRUNE_WANDA,     2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, true, false },
    { "sparsegpt_2of4_f32",                  PRUNE_SPARSEGPT, 2, 4, QUANT_NONE,   0, LOWRANK_NONE,  false, true,  false, false, true, false },
    { "magnitude_unstr50_absmax4_f32",       PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE,  false, true,  false, false, true, false },
    { "wanda_2of4_slimquant4_slimlora_bf16", PRUNE_WANDA,     2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  false, true,  true,  false, true, false },
    { "wanda_2of4_slimquant4_slimlora_q_bf16",PRUNE_WANDA,    2, 4, QUANT_SLIM,   0, LOWRANK_SLIM,  true,  true,  true,  false, true, false },
};
#define NCFG (sizeof cfgs / sizeof cfgs[0])

static void test_core_gpu_parity__compress(void **state) { run_cfg(*state); }

/* ---- perplexity alone: the dense model, and SliceGPT at 25% ---- */

static double side_ppl(struct kbackend *kb, const char *model_dir, double slicing, const int32_t *cal, int nc, int T,
                       const int32_t *ev, int ne, int Te)
{
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_open(&m, model_dir, kb, 0, &err), 0);
    if (slicing > 0) {
        struct slicegpt_opts so = SLICEGPT_OPTS_INIT;
        so.sparsity = slicing;
        int rc = slicegpt_run(m, cal, nc, T, &so, &err);
        if (rc) fprintf(stderr, "slicegpt (%s): %s\n", kb_name(kb), err.msg);
        assert_int_equal(rc, 0);
    }
    double p = ref_perplexity(m, ev, ne, Te);
    model_free(m);
    return p;
}

static void ppl_case(bool opt, double slicing)
{
    char model_dir[4096], ids_dir[4096];
    struct cfg c = { .opt = opt };
    paths_of(&c, model_dir, sizeof model_dir, ids_dir, sizeof ids_dir);
    int nc, T, ne, Te;
    int32_t *cal = ref_ids_load(ids_dir, "calibration_ids", &nc, &T), *ev = ref_ids_load(ids_dir, "eval_ids", &ne, &Te);
    double pa = side_ppl(kb_cpu, model_dir, slicing, cal, nc, T, ev, ne, Te);
    double pb = side_ppl(kb_dut, model_dir, slicing, cal, nc, T, ev, ne, Te), d = fabs(pb / pa - 1);
    fprintf(stderr, "parity %-44s %s vs cpu: ppl %.5f vs %.5f (%.4f%%)\n", slicing > 0 ? "slicegpt 25%" : "dense",
            dut_name, pb, pa, 100 * d);
    if (selftest) assert_true(pa == pb);
    assert_true(d <= PARITY_PPL_TOL);
    free(cal);
    free(ev);
}

static void test_core_gpu_parity__dense_perplexity(void **state) { (void)state; ppl_case(false, 0); }
static void test_core_gpu_parity__slicegpt_25(void **state) { (void)state; ppl_case(false, 0.25); }
static void test_core_gpu_parity__opt_dense_perplexity(void **state) { (void)state; ppl_case(true, 0); }
static void test_core_gpu_parity__opt_slicegpt_25(void **state) { (void)state; ppl_case(true, 0.25); }

int main(int argc, char **argv)
{
    const char *st = getenv("SLIM_PARITY_SELFTEST"), *tr = getenv("SLIM_PARITY_TIE_REL"), *fr = getenv("SLIM_PARITY_FREE");
    selftest = (st && atoi(st) > 0) || (argc > 1 && !strcmp(argv[1], "--selftest"));
    if (tr) tie_rel = atof(tr);
    if (argc > 2 && !strcmp(argv[1], "--dut")) {
        dut_name = argv[2];   /* e.g. cpu-discrete: the device paths of core/, under the GPU's tolerances */
    } else if (!selftest && !kbackend_cuda_available()) {
        printf("core/gpu_parity: skipped (no CUDA in this build or no visible device)\n");
        return 77;
    } else {
        dut_name = selftest ? "cpu" : "cuda";
    }
    /* on by default against a GPU, where the figure is news; SLIM_PARITY_FREE=0/1 decides */
    free_running = fr && *fr ? atoi(fr) > 0 : !strcmp(dut_name, "cuda");
    static char names[NCFG][112];
    struct CMUnitTest tests[5 + NCFG];
    size_t nt = 0;
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_core_gpu_parity__harness_flags_differences);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_core_gpu_parity__dense_perplexity);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_core_gpu_parity__slicegpt_25);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_core_gpu_parity__opt_dense_perplexity);
    tests[nt++] = (struct CMUnitTest)cmocka_unit_test(test_core_gpu_parity__opt_slicegpt_25);
    for (size_t i = 0; i < NCFG; i++) {
        snprintf(names[i], sizeof names[i], "test_core_gpu_parity__%s%s", cfgs[i].opt ? "opt_" : "", cfgs[i].name);
        tests[nt++] = (struct CMUnitTest){ .name = names[i], .test_func = test_core_gpu_parity__compress,
                                           .initial_state = (void *)&cfgs[i] };
    }
    /* SLIM_PARITY_ONLY=SUBSTRING: only the cases whose name contains it (a rerun of one failure) */
    const char *only = getenv("SLIM_PARITY_ONLY");
    if (only && *only) {
        size_t kept = 0;
        for (size_t i = 0; i < nt; i++)
            if (strstr(tests[i].name, only)) tests[kept++] = tests[i];
        nt = kept;
    }
    static char group[96];
    snprintf(group, sizeof group, "core/gpu_parity (%s vs cpu%s)", dut_name, selftest ? ", selftest" : "");
    return _cmocka_run_group_tests(group, tests, nt, setup, teardown);
}
