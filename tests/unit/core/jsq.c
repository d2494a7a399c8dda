/* tests/unit/core/jsq.c: JSQ (core/jsq.c, ALGORITHMS.md §3.7) piece by piece against
** straightforward double-precision formulations written here -- the clip threshold, the SS term
** (xbar W_(j)^T built explicitly for every j), the smoothing factors -- plus: smoothing leaves a
** block's function unchanged (OPT LayerNorm with bias, LLaMA RMSNorm with gate/up), the JSQ mask
** has the exact N:M pattern / per-row sparsity, and an end-to-end JSQ compression of stories260K
** whose saved checkpoint reloads to identical logits. There is no reference fixture for JSQ (the
** SLiM reference was never run with prune_method=joint_pq for tests/data). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEST_RNG_SEED 0x6a5171ull
#include "../test_util.h"
#include "core/checkpoint.h"
#include "core/jsq.h"
#include "core/safetensors.h"
#include "ref_ids.h"

static struct kbackend *kb;
static char data_dir[4000], ref_dir[4096];

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    snprintf(data_dir, sizeof data_dir, "%s", test_data_dir());
    snprintf(ref_dir, sizeof ref_dir, "%s/slim-reference-stories260K", data_dir);
    return kbackend_open(&kb, test_backend_name(), &e);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* ---- clipping ---- */

static double ref_threshold(const float *x, size_t n)
{
    size_t k = (size_t)(0.01 * (double)n);
    if (k == 0) return INFINITY;
    double *a = malloc(sizeof *a * n);
    for (size_t i = 0; i < n; i++) a[i] = fabs((double)x[i]);
    qsort(a, n, sizeof *a, cmp_desc);
    double t = a[k - 1];   /* torch.topk(|x|, k)[0][-1] */
    free(a);
    return t;
}

static void test_core_jsq__clip_threshold(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    static const size_t sizes[] = { 100, 199, 1000, 4096, 12345 };
    for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++) {
        size_t n = sizes[c];
        float *x = malloc(sizeof *x * n);
        for (size_t i = 0; i < n; i++) x[i] = nrand() * (urand() < 0.02 ? 20.0f : 1.0f);
        if (c == 2)   /* many ties around the threshold */
            for (size_t i = 0; i < n; i++) x[i] = (float)((int)(x[i] * 2)) / 2;
        if (c == 3)   /* everything in one narrow range: the selection, not the histogram, decides */
            for (size_t i = 0; i < n; i++) x[i] = (urand() < 0.5 ? -1 : 1) * (1 + (float)urand() * 0.05f);
        float thr;
        assert_int_equal(jsq_clip_threshold(&thr, x, n, &err), 0);
        assert_true((double)thr == ref_threshold(x, n));
        free(x);
    }
    /* fewer than 100 values: rank 0, nothing clipped (the reference's top-k would be empty) */
    float few[50], thr;
    for (int i = 0; i < 50; i++) few[i] = nrand();
    assert_int_equal(jsq_clip_threshold(&thr, few, 50, &err), 0);
    assert_true(isinf(thr) && thr > 0);
}

/* Clipping before the statistics; act_scale from the last sample only (the reference's bug). */
static void test_core_jsq__stats_clip_and_last_sample(void **state)
{
    (void)state;
    enum { L = 20, D = 10, N = L * D };
    struct slm_err err = SLM_ERR_INIT;
    struct jsq_stats st = { 0 };
    float x[3][N], orig[3][N];
    double sum[N] = { 0 };
    for (int s = 0; s < 3; s++) {
        double scale = s == 1 ? 0.1 : 1.0 + s;   /* the last sample is not the largest */
        for (int i = 0; i < N; i++) orig[s][i] = x[s][i] = (float)(nrand() * scale);
        double thr = ref_threshold(orig[s], N);
        assert_int_equal(jsq_stats_add(&st, x[s], L, D, &err), 0);
        int clipped = 0;
        for (int i = 0; i < N; i++) {
            double want = fmin(fmax(orig[s][i], -thr), thr);
            assert_true((double)x[s][i] == want);
            clipped += x[s][i] != orig[s][i];
            sum[i] += want;
        }
        assert_true(clipped >= 1 && clipped <= N / 100);   /* ties at the threshold stay as they are */
    }
    assert_int_equal(st.nseq, 3);
    for (int i = 0; i < N; i++) assert_true(fabs(st.inp_sum[i] - sum[i]) <= 1e-5 * (1 + fabs(sum[i])));
    for (int j = 0; j < D; j++) {
        double mx = 0;
        for (int t = 0; t < L; t++) mx = fmax(mx, fabs(x[2][t * D + j]));
        assert_true((double)st.act_scale[j] == mx);
    }
    float wrong[L * 3];
    assert_int_equal(jsq_stats_add(&st, wrong, L, 3, &err), -SLM_ESHAPE);
    jsq_stats_free(&st);
}

/* ---- the SS term and the metric ---- */

/* SS[r][j] = range over t of (xbar W_(j)^T)[t][r], W_(j) built explicitly, in double. */
static void ref_ss(double *ss, const float *xbar, const float *w, int L, int d_out, int d_in)
{
    double *wj = malloc(sizeof *wj * d_out * d_in);
    for (int j = 0; j < d_in; j++) {
        for (int i = 0; i < d_out * d_in; i++) wj[i] = w[i];
        for (int r = 0; r < d_out; r++) wj[r * d_in + j] = 0;
        for (int r = 0; r < d_out; r++) {
            double hi = -INFINITY, lo = INFINITY;
            for (int t = 0; t < L; t++) {
                double v = 0;
                for (int c = 0; c < d_in; c++) v += (double)xbar[t * d_in + c] * wj[r * d_in + c];
                hi = fmax(hi, v);
                lo = fmin(lo, v);
            }
            ss[r * d_in + j] = hi - lo;
        }
    }
    free(wj);
}

static void test_core_jsq__ss_matches_explicit_products(void **state)
{
    (void)state;
    enum { L = 16, DI = 12, DO = 8 };
    struct slm_err err = SLM_ERR_INIT;
    float x[L * DI], w[DO * DI], ss[DO * DI];
    double want[DO * DI];
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < L * DI; i++) x[i] = nrand() * (rep == 2 && i % DI == 3 ? 30.0f : 1.0f);
        for (int i = 0; i < DO * DI; i++) w[i] = nrand() * 0.3f;
        assert_int_equal(jsq_ss(kb, ss, x, w, L, DO, DI, &err), 0);
        ref_ss(want, x, w, L, DO, DI);
        double worst = 0;
        for (int i = 0; i < DO * DI; i++) worst = fmax(worst, fabs(ss[i] - want[i]) / (1 + fabs(want[i])));
        assert_true(worst < 1e-5);
    }
    /* an overflowing product: the range is +inf, which the reference replaces by 100 */
    for (int i = 0; i < DO * DI; i++) w[i] = 0.5f + (float)urand();
    for (int c = 0; c < DI; c++) x[c] = 3e38f;
    assert_int_equal(jsq_ss(kb, ss, x, w, L, DO, DI, &err), 0);
    for (int i = 0; i < DO * DI; i++) assert_true(ss[i] == 100.0f);
}

static void test_core_jsq__metric(void **state)
{
    (void)state;
    enum { L = 16, DI = 12, DO = 8, NS = 3 };
    struct slm_err err = SLM_ERR_INIT;
    struct jsq_stats st = { 0 };
    float x[L * DI], xbar[L * DI], w[DO * DI], scaler[DI], metric[DO * DI];
    double ss[DO * DI], sum[L * DI] = { 0 };
    for (int s = 0; s < NS; s++) {
        for (int i = 0; i < L * DI; i++) x[i] = nrand();
        assert_int_equal(jsq_stats_add(&st, x, L, DI, &err), 0);
        for (int i = 0; i < L * DI; i++) sum[i] += x[i];   /* x is the clipped input now */
    }
    for (int i = 0; i < L * DI; i++) xbar[i] = (float)(sum[i] / NS);
    for (int i = 0; i < DO * DI; i++) w[i] = nrand();
    for (int j = 0; j < DI; j++) scaler[j] = (float)urand() * 4;
    assert_int_equal(jsq_metric(kb, metric, w, scaler, &st, 2.1, DO, DI, &err), 0);
    ref_ss(ss, xbar, w, L, DO, DI);
    for (int r = 0; r < DO; r++)
        for (int j = 0; j < DI; j++) {
            double want = fabs(w[r * DI + j]) * sqrt(scaler[j]) + 2.1 * ss[r * DI + j];
            assert_true(fabs(metric[r * DI + j] - want) <= 1e-5 * (1 + want));
        }
    jsq_stats_free(&st);
}

/* ---- the mask ---- */

static void test_core_jsq__mask_pattern(void **state)
{
    (void)state;
    enum { DO = 16, DI = 24 };
    struct slm_err err = SLM_ERR_INIT;
    float t[DO * DI];
    uint8_t mask[DO * DI];
    for (int i = 0; i < DO * DI; i++) t[i] = (float)urand() + (i % 7 == 0 ? 1.0f : 0.0f);
    struct prune_opts o = PRUNE_OPTS_INIT;
    /* 2:4 and 1:3: exactly N kept per group, and each kept value beats each pruned one */
    static const int nm[][2] = { { 2, 4 }, { 1, 3 }, { 4, 8 } };
    for (int c = 0; c < 3; c++) {
        o.n = nm[c][0];
        o.m = nm[c][1];
        o.sparsity = (double)(o.m - o.n) / o.m;
        assert_int_equal(prune_mask_metric(mask, t, DO, DI, &o, &err), 0);
        for (int r = 0; r < DO; r++)
            for (int g = 0; g < DI; g += o.m) {
                int kept = 0;
                float lo_kept = INFINITY, hi_pruned = -INFINITY;
                for (int k = g; k < g + o.m; k++) {
                    float v = t[r * DI + k];
                    if (mask[r * DI + k]) hi_pruned = fmaxf(hi_pruned, v);
                    else { kept++; lo_kept = fminf(lo_kept, v); }
                }
                assert_int_equal(kept, o.n);
                assert_true(hi_pruned <= lo_kept);
            }
    }
    /* unstructured: floor(d_in * sparsity) per row, the smallest */
    o.n = o.m = 0;
    o.sparsity = 0.3;
    assert_int_equal(prune_mask_metric(mask, t, DO, DI, &o, &err), 0);
    for (int r = 0; r < DO; r++) {
        int pruned = 0;
        float lo_kept = INFINITY, hi_pruned = -INFINITY;
        for (int k = 0; k < DI; k++) {
            float v = t[r * DI + k];
            if (mask[r * DI + k]) { pruned++; hi_pruned = fmaxf(hi_pruned, v); }
            else lo_kept = fminf(lo_kept, v);
        }
        assert_int_equal(pruned, (int)floor(DI * 0.3));
        assert_true(hi_pruned <= lo_kept);
    }
}

/* ---- smoothing ---- */

static void test_core_jsq__smooth_factors(void **state)
{
    (void)state;
    enum { DI = 10 };
    int dout[2] = { 3, 5 };
    float w0[3 * DI], w1[5 * DI], act[DI], s[DI];
    for (int i = 0; i < 3 * DI; i++) w0[i] = nrand();
    for (int i = 0; i < 5 * DI; i++) w1[i] = nrand();
    for (int j = 0; j < DI; j++) act[j] = (float)exp(2 * nrand());
    act[0] = 0;                               /* -> clamped to 1e-5 */
    for (int i = 0; i < 3; i++) w0[i * DI + 1] = 0;
    for (int i = 0; i < 5; i++) w1[i * DI + 1] = 0;   /* dead column: weight max clamped to 1e-5 */
    const float *w[2] = { w0, w1 };
    jsq_smooth_factors(s, act, w, dout, 2, DI, false);
    for (int j = 0; j < DI; j++) {
        double mx = 0;
        for (int i = 0; i < 3; i++) mx = fmax(mx, fabs(w0[i * DI + j]));
        for (int i = 0; i < 5; i++) mx = fmax(mx, fabs(w1[i * DI + j]));
        double want = fmax(sqrt(act[j]) / sqrt(fmax(mx, 1e-5)), 1e-5);
        assert_true(fabs(s[j] - want) <= 1e-6 * want);
    }
    assert_true(fabs(s[0] - 1e-5) < 1e-12);
    /* bf16 emulation: close to the f32 factors, every factor a bf16 value */
    float sb[DI];
    jsq_smooth_factors(sb, act, w, dout, 2, DI, true);
    for (int j = 1; j < DI; j++) assert_true(fabs(sb[j] - s[j]) <= 2e-2 * s[j]);
}

static float *block_out(struct model *m, const float *x, int T, int width)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t cap = (size_t)T * model_max_width(m);
    float *bx = NULL, *h = malloc(sizeof *h * (size_t)T * width);
    assert_int_equal(kb_alloc(kb, (void **)&bx, sizeof *bx * cap, &err), 0);
    assert_int_equal(kb_upload(kb, bx, x, sizeof *x * (size_t)T * width, &err), 0);
    assert_int_equal(model_block_forward(m, 0, bx, 1, T, NULL, NULL, &err), 0);
    assert_int_equal(kb_download(kb, h, bx, sizeof *h * (size_t)T * width, &err), 0);
    kb_release(kb, bx);
    return h;
}

static void smooth_keeps_function(const char *name)
{
    enum { T = 12 };
    char dir[4200];
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    snprintf(dir, sizeof dir, "%s/%s", data_dir, name);
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    struct block *bl = &m->blocks[0];
    int d = bl->d_in, dm = bl->lin[LIN_FC1].d_in;
    float *x = malloc(sizeof *x * T * d), *a1 = malloc(sizeof *a1 * d), *a2 = malloc(sizeof *a2 * dm);
    float *s1 = malloc(sizeof *s1 * d), *s2 = malloc(sizeof *s2 * dm), *n1 = malloc(sizeof *n1 * d), *n1b = malloc(sizeof *n1b * d);
    for (int i = 0; i < T * d; i++) x[i] = nrand();
    for (int j = 0; j < d; j++) a1[j] = (float)exp(1.5 * nrand());   /* factors well away from 1 */
    for (int j = 0; j < dm; j++) a2[j] = (float)exp(1.5 * nrand());
    assert_int_equal(kb_download(kb, n1, bl->norm1_w, sizeof *n1 * d, &err), 0);
    float *before = block_out(m, x, T, bl->d_out);
    assert_int_equal(jsq_smooth_block(m, 0, a1, a2, false, s1, s2, &err), 0);
    float *after = block_out(m, x, T, bl->d_out);
    double worst = 0, scale = 0, moved = 0;
    for (int i = 0; i < T * bl->d_out; i++) {
        worst = fmax(worst, fabs((double)after[i] - before[i]));
        scale = fmax(scale, fabs(before[i]));
    }
    assert_int_equal(kb_download(kb, n1b, bl->norm1_w, sizeof *n1b * d, &err), 0);
    for (int j = 0; j < d; j++) {
        assert_true(fabsf(n1b[j] - n1[j] / s1[j]) <= 1e-6f * fabsf(n1[j] / s1[j]));
        moved = fmax(moved, fabs(log(s1[j])));
    }
    fprintf(stderr, "%-10s block 0 smoothed: max |s| log %.2f, output change %.2e of %.2e\n", name, moved, worst, scale);
    assert_true(moved > 0.5);            /* the test is not vacuous */
    assert_true(worst <= 1e-5 * scale);
    free(x); free(a1); free(a2); free(s1); free(s2); free(n1); free(n1b); free(before); free(after);
    model_free(m);
}

static void test_core_jsq__smoothing_keeps_opt_block(void **state) { (void)state; smooth_keeps_function("tiny-opt"); }
static void test_core_jsq__smoothing_keeps_llama_block(void **state) { (void)state; smooth_keeps_function("tiny-llama"); }

static void test_core_jsq__unsupported_layouts(void **state)
{
    (void)state;
    static const char *const names[] = { "tiny-phi", "tiny-opt350m" };
    for (int i = 0; i < 2; i++) {
        char dir[4200];
        struct model *m = NULL;
        struct slm_err err = SLM_ERR_INIT;
        snprintf(dir, sizeof dir, "%s/%s", data_dir, names[i]);
        assert_int_equal(model_open(&m, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
        int32_t ids[2 * 16];
        for (int k = 0; k < 32; k++) ids[k] = 3 + k;
        struct compress_opts o = COMPRESS_OPTS_INIT;
        o.jsq.on = true;
        o.quant.group_size = 4;
        o.lowrank.method = LOWRANK_NONE;
        assert_int_equal(compress_model(m, ids, 2, 16, &o, NULL, &err), -SLM_EUNSUPPORTED);
        assert_non_null(strstr(err.msg, "JSQ"));
        assert_non_null(strstr(err.msg, i == 0 ? "phi" : "opt"));
        model_free(m);
    }
}

/* ---- end to end on stories260K ---- */

static int progress_layers;
static int count_layers(const struct compress_progress *p, void *payload)
{
    (void)payload;
    if (p->layer) {
        progress_layers++;
        assert_true(p->rel_error > 0 && p->rel_error < 1);
    }
    return 0;
}

static double compress_stories(const struct compress_opts *base, bool jsq, int n, int m_, struct model **out,
                               struct compress_result *res)
{
    char dir[4200];
    struct slm_err err = SLM_ERR_INIT;
    int nc, T, ne, Te;
    int32_t *cal = ref_ids_load(ref_dir, "calibration_ids", &nc, &T), *ev = ref_ids_load(ref_dir, "eval_ids", &ne, &Te);
    snprintf(dir, sizeof dir, "%s/stories260K", data_dir);
    assert_int_equal(model_open(out, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_opts o = *base;
    o.prune.method = PRUNE_WANDA;
    o.prune.n = n;
    o.prune.m = m_;
    o.prune.sparsity = m_ ? (double)(m_ - n) / m_ : 0.5;
    o.quant.method = QUANT_ABSMAX;
    o.quant.group_size = 4;
    o.quant.bits = 4;
    o.lowrank.method = LOWRANK_NONE;
    o.jsq.on = jsq;
    o.keep_codes = true;
    o.progress = count_layers;
    progress_layers = 0;
    int rc = compress_model(*out, cal, nc, T, &o, res, &err);
    if (rc) fprintf(stderr, "compress: %s\n", err.msg);
    assert_int_equal(rc, 0);
    double ppl = ref_perplexity(*out, ev, ne, Te);
    free(cal);
    free(ev);
    return ppl;
}

static void check_masks(struct model *m, const struct compress_result *res, int n, int mm)
{
    struct slm_err err = SLM_ERR_INIT;
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &m->blocks[b].lin[r];
            if (!l->w) continue;
            const uint8_t *mask = res->lin[b][r].mask;
            assert_non_null(mask);
            assert_non_null(res->lin[b][r].codes);
            size_t nw = (size_t)l->d_out * l->d_in;
            float *w = malloc(sizeof *w * nw);
            assert_int_equal(kb_download(kb, w, l->w, sizeof *w * nw, &err), 0);
            for (int i = 0; i < l->d_out; i++) {
                int pruned = 0;
                for (int j = 0; j < l->d_in; j++) {
                    size_t k = (size_t)i * l->d_in + j;
                    if (mask[k]) { assert_true(w[k] == 0); assert_int_equal(res->lin[b][r].codes[k], 0); }
                    pruned += mask[k];
                    if (mm && j % mm == mm - 1) {
                        int g = 0;
                        for (int q = j - mm + 1; q <= j; q++) g += mask[(size_t)i * l->d_in + q];
                        assert_int_equal(g, mm - n);
                    }
                }
                assert_int_equal(pruned, mm ? l->d_in / mm * (mm - n) : l->d_in / 2);
            }
            free(w);
        }
}

static void test_core_jsq__end_to_end_stories_checkpoint(void **state)
{
    (void)state;
    struct compress_opts base = COMPRESS_OPTS_INIT;
    struct compress_result rw, rj;
    struct model *mw = NULL, *mj = NULL, *mr = NULL, *md = NULL;
    struct slm_err err = SLM_ERR_INIT;
    char dir[4200];
    int ne, Te;
    int32_t *ev = ref_ids_load(ref_dir, "eval_ids", &ne, &Te);
    snprintf(dir, sizeof dir, "%s/stories260K", data_dir);
    assert_int_equal(model_open(&md, dir, kb, 0, &err), 0);
    double dense = ref_perplexity(md, ev, ne, Te);
    double pw = compress_stories(&base, false, 2, 4, &mw, &rw);
    double pj = compress_stories(&base, true, 2, 4, &mj, &rj);
    int nlin = 0;
    for (int r = 0; r < LIN_COUNT; r++) nlin += mj->blocks[0].lin[r].w != NULL;
    assert_int_equal(progress_layers, nlin * mj->cfg.n_layers);   /* one figure per layer */
    fprintf(stderr, "stories260K ppl: dense %.3f, wanda 2:4 + group absmax4 %.3f, JSQ 2:4 + group absmax4 %.3f\n",
            dense, pw, pj);
    assert_true(isfinite(pj) && pj > dense && pj < 4 * pw);
    check_masks(mj, &rj, 2, 4);
    /* the JSQ mask is not Wanda's: the SS term moved decisions */
    long differ = 0, total = 0;
    for (int b = 0; b < mj->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            if (!rj.lin[b][r].mask) continue;
            size_t n = (size_t)mj->blocks[b].lin[r].d_out * mj->blocks[b].lin[r].d_in;
            for (size_t i = 0; i < n; i++) differ += rj.lin[b][r].mask[i] != rw.lin[b][r].mask[i];
            total += (long)n;
        }
    fprintf(stderr, "JSQ vs Wanda masks: %ld of %ld entries differ\n", differ, total);
    assert_true(differ > 0);

    /* checkpoint: smoothed norms are stored from memory, the reload computes the same logits */
    char ck[] = "/tmp/slim-jsq-XXXXXX";
    assert_non_null(mkdtemp(ck));
    struct compress_opts o = base;
    o.prune.method = PRUNE_WANDA;
    o.prune.n = 2;
    o.prune.m = 4;
    o.quant.method = QUANT_ABSMAX;
    o.quant.group_size = 4;
    o.lowrank.method = LOWRANK_NONE;
    o.jsq.on = true;
    int rc = checkpoint_save(mj, &rj, &o, ck, NULL, NULL, NULL, &err);
    if (rc) fprintf(stderr, "save: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(checkpoint_open(&mr, ck, kb, 0, &err), 0);
    enum { T = 32 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = ev[i];
    float *a = malloc(sizeof *a * T * mj->cfg.vocab), *b = malloc(sizeof *b * T * mj->cfg.vocab);
    assert_int_equal(model_forward(mj, ids, 1, T, a, NULL, NULL, NULL, &err), 0);
    assert_int_equal(model_forward(mr, ids, 1, T, b, NULL, NULL, NULL, &err), 0);
    assert_memory_equal(a, b, sizeof *a * T * mj->cfg.vocab);
    /* and they are the smoothed norms, not the source's */
    int d = md->blocks[0].d_in;
    float *n0 = malloc(sizeof *n0 * d), *n1 = malloc(sizeof *n1 * d);
    assert_int_equal(kb_download(kb, n0, md->blocks[0].norm1_w, sizeof *n0 * d, &err), 0);
    assert_int_equal(kb_download(kb, n1, mr->blocks[0].norm1_w, sizeof *n1 * d, &err), 0);
    assert_true(memcmp(n0, n1, sizeof *n0 * d) != 0);
    free(n0);
    free(n1);
    free(a);
    free(b);
    char p[4300];
    const char *files[] = { "model.safetensors", "config.json", "slim_config.json" };
    for (int i = 0; i < 3; i++) { snprintf(p, sizeof p, "%s/%s", ck, files[i]); unlink(p); }
    rmdir(ck);
    compress_result_free(&rw);
    compress_result_free(&rj);
    model_free(mw);
    model_free(mj);
    model_free(mr);
    model_free(md);
    free(ev);
}

static void test_core_jsq__end_to_end_unstructured(void **state)
{
    (void)state;
    struct compress_opts base = COMPRESS_OPTS_INIT;
    struct compress_result res;
    struct model *m = NULL;
    double ppl = compress_stories(&base, true, 0, 0, &m, &res);
    fprintf(stderr, "stories260K JSQ 50%% unstructured + group absmax4: ppl %.3f\n", ppl);
    assert_true(isfinite(ppl));
    check_masks(m, &res, 0, 0);
    compress_result_free(&res);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_jsq__clip_threshold),
        cmocka_unit_test(test_core_jsq__stats_clip_and_last_sample),
        cmocka_unit_test(test_core_jsq__ss_matches_explicit_products),
        cmocka_unit_test(test_core_jsq__metric),
        cmocka_unit_test(test_core_jsq__mask_pattern),
        cmocka_unit_test(test_core_jsq__smooth_factors),
        cmocka_unit_test(test_core_jsq__smoothing_keeps_opt_block),
        cmocka_unit_test(test_core_jsq__smoothing_keeps_llama_block),
        cmocka_unit_test(test_core_jsq__unsupported_layouts),
        cmocka_unit_test(test_core_jsq__end_to_end_stories_checkpoint),
        cmocka_unit_test(test_core_jsq__end_to_end_unstructured),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
