/* tests/unit/core/prune.c: magnitude, Wanda and SparseGPT against straightforward double-precision
** formulations: exact N:M patterns, exact sparsity, the OBS updates of a plain reference loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/prune.h"
#include "kernels/kbackend.h"

#define TEST_RNG_SEED 0x9e3779b97f4a7c15ull
#include "../test_util.h"

static struct kbackend *kb;
static int setup(void **state) { (void)state; struct slm_err e = SLM_ERR_INIT; return kbackend_open(&kb, test_backend_name(), &e); }
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

/* prune_weight and prune_sparsegpt on host arrays: their w (and H) go through backend buffers, as
** core/ hands them over. */
static int prune_weight_host(float *w, const float *s, int R, int C, const struct prune_opts *po, uint8_t *mask,
                             struct slm_err *err)
{
    float *d = test_dev_copy(kb, w, sizeof *w * R * C);
    int rc = prune_weight(kb, d, s, R, C, po, mask, err);
    test_dev_back(kb, w, d, sizeof *w * R * C);
    return rc;
}

static int prune_sparsegpt_host(float *w, float *H, int R, int C, const struct prune_opts *po, uint8_t *mask,
                                int8_t *codes, struct quant_params *qp, struct slm_err *err)
{
    float *dw = test_dev_copy(kb, w, sizeof *w * R * C), *dh = test_dev_copy(kb, H, sizeof *H * C * C);
    int rc = prune_sparsegpt(kb, dw, dh, R, C, po, mask, codes, qp, err);
    test_dev_back(kb, w, dw, sizeof *w * R * C);
    test_dev_back(kb, H, dh, sizeof *H * C * C);
    return rc;
}

static void test_core_prune__magnitude_2of4_keeps_largest(void **state)
{
    (void)state;
    enum { R = 8, C = 32 };
    float w[R * C], o[R * C];
    uint8_t mask[R * C];
    for (int i = 0; i < R * C; i++) o[i] = w[i] = nrand();
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.method = PRUNE_MAGNITUDE;
    po.n = 2; po.m = 4;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(prune_weight_host(w, NULL, R, C, &po, mask, &err), 0);
    for (int r = 0; r < R; r++)
        for (int g = 0; g < C; g += 4) {
            int pruned = 0;
            for (int k = 0; k < 4; k++) {
                int i = r * C + g + k;
                pruned += mask[i];
                assert_true(mask[i] ? w[i] == 0 : w[i] == o[i]);
                /* every kept entry is at least as large as every pruned one of its group */
                for (int k2 = 0; k2 < 4; k2++)
                    if (!mask[i] && mask[r * C + g + k2]) assert_true(fabsf(o[i]) >= fabsf(o[r * C + g + k2]));
            }
            assert_int_equal(pruned, 2);
        }
}

static void test_core_prune__magnitude_unstructured_one_threshold(void **state)
{
    (void)state;
    enum { R = 10, C = 30 };
    float w[R * C], o[R * C];
    uint8_t mask[R * C];
    for (int i = 0; i < R * C; i++) o[i] = w[i] = nrand();
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.method = PRUNE_MAGNITUDE;
    po.sparsity = 0.3;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(prune_weight_host(w, NULL, R, C, &po, mask, &err), 0);
    int n = 0;
    float maxp = 0, mink = INFINITY;
    for (int i = 0; i < R * C; i++) {
        n += mask[i];
        if (mask[i]) maxp = fmaxf(maxp, fabsf(o[i]));
        else mink = fminf(mink, fabsf(o[i]));
    }
    assert_int_equal(n, 90 + 1);   /* |W| <= sorted[floor(numel*s)]: floor(300*0.3)+1 with distinct values */
    assert_true(maxp < mink);
}

static void test_core_prune__wanda_rows_exact(void **state)
{
    (void)state;
    enum { R = 6, C = 40 };
    float w[R * C], o[R * C], s[C];
    uint8_t mask[R * C];
    for (int i = 0; i < R * C; i++) o[i] = w[i] = nrand();
    for (int j = 0; j < C; j++) s[j] = (float)(urand() * 4);
    s[3] = 0;
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.sparsity = 0.55;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(prune_weight_host(w, s, R, C, &po, mask, &err), 0);
    for (int r = 0; r < R; r++) {
        int n = 0;
        double maxp = 0, mink = INFINITY;
        for (int c = 0; c < C; c++) {
            double m = fabs(o[r * C + c]) * sqrt(s[c]);
            n += mask[r * C + c];
            if (mask[r * C + c]) maxp = fmax(maxp, m); else mink = fmin(mink, m);
        }
        assert_int_equal(n, 22);           /* floor(40 * 0.55) in every row */
        assert_true(maxp <= mink);
        assert_int_equal(mask[r * C + 3], 1);   /* zero activation energy: metric 0 */
    }
    /* 4:8 is a pattern too */
    memcpy(w, o, sizeof w);
    po.n = 4; po.m = 8; po.sparsity = 0.5;
    assert_int_equal(prune_weight_host(w, s, R, C, &po, mask, &err), 0);
    for (int r = 0; r < R; r++)
        for (int g = 0; g < C; g += 8) {
            int n = 0;
            for (int k = 0; k < 8; k++) n += mask[r * C + g + k];
            assert_int_equal(n, 4);
        }
    po.m = 16; po.n = 8;   /* 40 columns are not groups of 16 */
    assert_int_equal(prune_weight_host(w, s, R, C, &po, mask, &err), -SLM_ESHAPE);
}

static void test_core_prune__shift_zero_metrics(void **state)
{
    (void)state;
    float s[4] = { 0, 0.25f, 3, 0 };
    prune_shift_scaler(s, 4);
    assert_true(s[0] == 0.25f && s[1] == 0.5f && s[2] == 3.25f && s[3] == 0.25f);
    float t[2] = { 0, 0 };
    prune_shift_scaler(t, 2);   /* all zero: the replaced minimum is 1 */
    assert_true(t[0] == 1 && t[1] == 1);
}

/* ---- SparseGPT reference in double precision (§2.3 written out) ---- */

static void ref_sparsegpt(double *W, const double *H0, int R, int C, double p, int n, int m, int B, int bits)
{
    double *H = malloc(sizeof *H * C * C), *U = calloc((size_t)C * C, sizeof *U), *Hi = calloc((size_t)C * C, sizeof *Hi);
    memcpy(H, H0, sizeof *H * C * C);
    double mean = 0, step = 0;
    if (bits) {
        double amax = 0;
        for (int i = 0; i < R * C; i++) amax = fmax(amax, fabs(W[i]));
        step = 2 * amax / ((1 << bits) - 1);
    }
    for (int j = 0; j < C; j++) mean += H[j * C + j];
    for (int j = 0; j < C; j++) H[j * C + j] += 0.01 * mean / C;
    /* H^-1 by Gauss-Jordan, then its upper Cholesky factor U (H^-1 = U^T U) */
    double *A = malloc(sizeof *A * C * 2 * C);
    for (int i = 0; i < C; i++) for (int j = 0; j < 2 * C; j++) A[i * 2 * C + j] = j < C ? H[i * C + j] : (j - C == i);
    for (int c = 0; c < C; c++) {
        double d = A[c * 2 * C + c];
        for (int j = 0; j < 2 * C; j++) A[c * 2 * C + j] /= d;
        for (int i = 0; i < C; i++) if (i != c) {
            double f = A[i * 2 * C + c];
            for (int j = 0; j < 2 * C; j++) A[i * 2 * C + j] -= f * A[c * 2 * C + j];
        }
    }
    for (int i = 0; i < C; i++) for (int j = 0; j < C; j++) Hi[i * C + j] = A[i * 2 * C + C + j];
    for (int i = 0; i < C; i++)
        for (int j = i; j < C; j++) {
            double s = Hi[i * C + j];
            for (int k = 0; k < i; k++) s -= U[k * C + i] * U[k * C + j];
            U[i * C + j] = i == j ? sqrt(s) : s / U[i * C + i];
        }
    /* column by column with immediate updates (blocking only changes rounding, except the
    ** unstructured threshold, which is per block) */
    unsigned char *mk = calloc((size_t)R * C, 1);
    for (int i1 = 0; i1 < C; i1 += B) {
        int i2 = i1 + B < C ? i1 + B : C;
        if (!n && p > 0) {
            int cnt = (i2 - i1) * R;
            double *T = malloc(sizeof *T * cnt), *S = malloc(sizeof *S * cnt);
            for (int r = 0; r < R; r++) for (int c = i1; c < i2; c++) T[r * (i2 - i1) + c - i1] = S[r * (i2 - i1) + c - i1] = W[r * C + c] * W[r * C + c] / (U[c * C + c] * U[c * C + c]);
            for (int a = 0; a < cnt; a++) for (int b = a + 1; b < cnt; b++) if (S[b] < S[a]) { double t = S[a]; S[a] = S[b]; S[b] = t; }
            double thr = S[(int)floor(cnt * p)];
            for (int r = 0; r < R; r++) for (int c = i1; c < i2; c++) mk[r * C + c] = T[r * (i2 - i1) + c - i1] <= thr;
            free(T); free(S);
        }
        for (int c = i1; c < i2; c++) {
            if (n && (c - i1) % m == 0)
                for (int r = 0; r < R; r++) {
                    for (int k = 0; k < m - n; k++) {   /* drop m-n smallest, lower index first on ties */
                        int best = -1;
                        double bv = INFINITY;
                        for (int j = c; j < c + m; j++) {
                            double t = W[r * C + j] * W[r * C + j] / (U[j * C + j] * U[j * C + j]);
                            if (!mk[r * C + j] && t < bv) { bv = t; best = j; }
                        }
                        mk[r * C + best] = 1;
                    }
                }
            for (int r = 0; r < R; r++) {
                double w = W[r * C + c], q = mk[r * C + c] ? 0 : w;
                if (bits && q != 0) {
                    double k = nearbyint(q / step) + 8;
                    k = k < 0 ? 0 : k > 15 ? 15 : k;
                    q = step * (k - 8);
                }
                double e = (w - q) / U[c * C + c];
                W[r * C + c] = q;
                for (int j = c + 1; j < C; j++) W[r * C + j] -= e * U[c * C + j];
            }
        }
    }
    free(mk); free(A); free(H); free(U); free(Hi);
}

static void sparsegpt_case(int n, int m, double p, int bits)
{
    enum { R = 12, C = 32, T = 64 };
    float *X = malloc(sizeof *X * T * C), *w = malloc(sizeof *w * R * C), *H = malloc(sizeof *H * C * C);
    double *Wd = malloc(sizeof *Wd * R * C), *Hd = malloc(sizeof *Hd * C * C);
    uint8_t *mask = malloc(R * C);
    for (int i = 0; i < T * C; i++) X[i] = nrand();
    for (int i = 0; i < R * C; i++) Wd[i] = w[i] = nrand();
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += (double)X[t * C + a] * X[t * C + b];
            Hd[a * C + b] = 2 * s / T;
            H[a * C + b] = (float)Hd[a * C + b];
        }
    for (int a = 0; a < C; a++) for (int b = 0; b < C; b++) Hd[a * C + b] = H[a * C + b];
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.method = PRUNE_SPARSEGPT;
    po.n = n; po.m = m; po.sparsity = p;
    po.blocksize = 16;
    po.optq_bits = bits;
    struct slm_err err = SLM_ERR_INIT;
    int8_t codes[R * C];
    struct quant_params qp = { 0 };
    assert_int_equal(prune_sparsegpt_host(w, H, R, C, &po, mask, bits ? codes : NULL, bits ? &qp : NULL, &err), 0);
    ref_sparsegpt(Wd, Hd, R, C, p, n ? m - n : 0, m, 16, bits);
    int npruned = 0;
    double num = 0, den = 0;
    for (int i = 0; i < R * C; i++) {
        npruned += mask[i];
        if (!bits) assert_int_equal(mask[i], Wd[i] == 0);   /* quantization may also round a kept weight to 0 */
        else if (mask[i]) assert_true(Wd[i] == 0);
        if (!n && p == 0) assert_int_equal(mask[i], 0);
        if (mask[i]) assert_true(w[i] == 0);
        num += (w[i] - Wd[i]) * (w[i] - Wd[i]);
        den += Wd[i] * Wd[i];
        if (bits) assert_true(w[i] == qp.scale[0] * codes[i]);
    }
    assert_true(sqrt(num / den) < 1e-4);
    if (n) {
        assert_int_equal(npruned, R * C * (m - n) / m);
        for (int r = 0; r < R; r++)
            for (int g = 0; g < C; g += m) {
                int k = 0;
                for (int j = 0; j < m; j++) k += mask[r * C + g + j];
                assert_int_equal(k, m - n);
            }
    } else if (p > 0) {
        assert_true(npruned >= (int)(R * C * p) && npruned <= (int)(R * C * p) + 2);
    }
    quant_params_free(&qp);
    free(X); free(w); free(H); free(Wd); free(Hd); free(mask);
}

static void test_core_prune__sparsegpt_2of4_matches_reference(void **state) { (void)state; sparsegpt_case(2, 4, 0.5, 0); }
static void test_core_prune__sparsegpt_unstructured_matches_reference(void **state) { (void)state; sparsegpt_case(0, 0, 0.5, 0); }
static void test_core_prune__sparsegpt_optq_joint_on_grid(void **state) { (void)state; sparsegpt_case(2, 4, 0.5, 4); }
static void test_core_prune__optq_alone(void **state) { (void)state; sparsegpt_case(0, 0, 0.0, 4); }

static void test_core_prune__sparsegpt_dense_is_identity(void **state)
{
    (void)state;
    enum { R = 4, C = 8 };
    float w[R * C], o[R * C], H[C * C];
    for (int i = 0; i < R * C; i++) o[i] = w[i] = nrand();
    for (int i = 0; i < C * C; i++) H[i] = (i % (C + 1) == 0) ? 2.0f : 0.1f;
    H[2 * C + 2] = 0;   /* a dead input: its column is zeroed */
    for (int j = 0; j < C; j++) H[2 * C + j] = H[j * C + 2] = 0;
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.method = PRUNE_SPARSEGPT;
    po.sparsity = 0;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(prune_sparsegpt_host(w, H, R, C, &po, NULL, NULL, NULL, &err), 0);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) assert_true(c == 2 ? w[r * C + c] == 0 : w[r * C + c] == o[r * C + c]);
}

/* ---- the backend's sparsegpt_block against a plain f32 loop over one block ----
** The reference runs column by column over all rows (the op goes row by row), picks N:M groups
** by repeated minimum search and writes every float operation in the documented order, so the
** op must agree with it bit for bit (no tolerance). */

static int float_asc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

struct blk_case { int R, C, i1, i2, n, m, bits, group; double sparsity; };

static float blk_metric(float v, float d) { return v * v / (d * d); }

static void ref_block(float *W, const float *Hv, uint8_t *mk, float *Err, float *step, const struct blk_case *k,
                      float thr)
{
    int C = k->C, cnt = k->i2 - k->i1, ng = k->group > 0 ? (C + k->group - 1) / k->group : 1;
    for (int r = 0; r < k->R; r++)
        for (int i = 0; i < cnt; i++)
            mk[r * cnt + i] = !k->m && blk_metric(W[r * C + k->i1 + i], Hv[(k->i1 + i) * C + k->i1 + i]) <= thr;
    for (int i = 0; i < cnt; i++) {
        int col = k->i1 + i;
        for (int r = 0; r < k->R; r++) {
            if (k->m && i % k->m == 0)
                for (int drop = 0; drop < k->m - k->n; drop++) {
                    int best = -1;
                    float bv = INFINITY;
                    for (int j = i; j < i + k->m; j++) {
                        float t = blk_metric(W[r * C + k->i1 + j], Hv[(k->i1 + j) * C + k->i1 + j]);
                        if (!mk[r * cnt + j] && t < bv) { bv = t; best = j; }
                    }
                    mk[r * cnt + best] = 1;
                }
            float *st = &step[k->group > 0 ? r * ng + col / k->group : k->group == -1 ? r : 0];
            if (k->bits && k->group > 0 && col % k->group == 0) {
                float amax = 0;
                for (int c = col; c < col + k->group && c < C; c++) amax = fmaxf(amax, fabsf(W[r * C + c]));
                *st = 2 * (amax == 0 ? 1 : amax) / (float)((1 << k->bits) - 1);
            }
            float w = W[r * C + col], q = mk[r * cnt + i] ? 0 : w;
            if (k->bits && q != 0) {
                float lv = nearbyintf(q / *st) + (float)(1 << (k->bits - 1));
                lv = fminf(fmaxf(lv, 0), (float)((1 << k->bits) - 1));
                q = *st * (lv - (float)(1 << (k->bits - 1)));
            }
            float e = (w - q) / Hv[col * C + col];
            W[r * C + col] = q;
            for (int c = col + 1; c < k->i2; c++) W[r * C + c] -= e * Hv[col * C + c];
            Err[r * cnt + i] = e;
        }
    }
}

static void sgpt_block_case(const struct blk_case *k)
{
    int R = k->R, C = k->C, cnt = k->i2 - k->i1, ng = k->group > 0 ? (C + k->group - 1) / k->group : 1;
    size_t nstep = k->group > 0 ? (size_t)R * ng : k->group == -1 ? (size_t)R : 1;
    float *W = malloc(sizeof *W * R * C), *Wr = malloc(sizeof *W * R * C), *Hv = calloc((size_t)C * C, sizeof *Hv);
    float *Err = malloc(sizeof *Err * R * cnt), *Errr = malloc(sizeof *Err * R * cnt), *T = malloc(sizeof *T * R * cnt);
    float *step = malloc(sizeof *step * nstep), *stepr = malloc(sizeof *step * nstep);
    uint8_t *mk = malloc((size_t)R * cnt), *mkr = malloc((size_t)R * cnt);
    for (int i = 0; i < R * C; i++) W[i] = Wr[i] = nrand();
    for (int a = 0; a < C; a++)
        for (int b = a; b < C; b++) Hv[a * C + b] = a == b ? 0.5f + (float)urand() : 0.3f * nrand();
    /* ties in the first N:M group of every third row: equal diagonals, equal |w| */
    for (int j = k->i1; j < k->i1 + 4; j++) Hv[j * C + j] = 1;
    for (int r = 0; r < R; r += 3) {
        float v[4] = { 0.5f, -0.5f, 0.5f, 2.0f };
        for (int j = 0; j < 4; j++) W[r * C + k->i1 + j] = Wr[r * C + k->i1 + j] = v[j];
    }
    /* grouped: a block that starts inside a group carries that group's step in (IN/OUT) */
    if (k->bits)
        for (size_t i = 0; i < nstep; i++) step[i] = stepr[i] = 0.05f + 0.2f * (float)urand();
    float thr = -INFINITY;
    struct slm_err err = SLM_ERR_INIT;
    float *dW = test_dev_copy(kb, W, sizeof *W * R * C), *dH = test_dev_copy(kb, Hv, sizeof *Hv * C * C), *dErr = test_dev_copy(kb, Err, sizeof *Err * R * cnt);
    float *dStep = test_dev_copy(kb, step, sizeof *step * nstep);
    uint8_t *dMask = (uint8_t *)test_dev_copy(kb, mk, (size_t)R * cnt);
    struct ksgpt_args a = { .w = dW, .ldw = C, .rows = R, .cols = C, .i1 = k->i1, .i2 = k->i2, .hinv = dH, .ldh = C,
                            .mask = dMask, .ldm = cnt, .err = dErr, .metric = dErr, .n = k->n, .m = k->m, .thr = thr,
                            .bits = k->bits, .group = k->group, .ngroups = ng, .step = dStep };
    if (!k->m && k->sparsity > 0) {
        /* the metric pass, then the threshold as prune_sparsegpt picks it */
        assert_int_equal(kb_sparsegpt_block(kb, &a, &err), 0);
        assert_int_equal(kb_download(kb, T, dErr, sizeof *T * R * cnt, &err), 0);
        for (int r = 0; r < R; r++)
            for (int i = 0; i < cnt; i++)
                assert_true(T[r * cnt + i] == blk_metric(W[r * C + k->i1 + i], Hv[(k->i1 + i) * C + k->i1 + i]));
        qsort(T, (size_t)R * cnt, sizeof *T, float_asc);
        a.thr = thr = T[(size_t)floor(R * cnt * k->sparsity)];
    }
    a.metric = NULL;
    assert_int_equal(kb_sparsegpt_block(kb, &a, &err), 0);
    ref_block(Wr, Hv, mkr, Errr, stepr, k, thr);
    assert_int_equal(kb_download(kb, W, dW, sizeof *W * R * C, &err), 0);
    assert_int_equal(kb_download(kb, Err, dErr, sizeof *Err * R * cnt, &err), 0);
    assert_int_equal(kb_download(kb, mk, dMask, (size_t)R * cnt, &err), 0);
    assert_int_equal(kb_download(kb, step, dStep, sizeof *step * nstep, &err), 0);
    assert_memory_equal(mk, mkr, (size_t)R * cnt);
    assert_memory_equal(W, Wr, sizeof *W * R * C);   /* block columns quantized, the others untouched */
    assert_memory_equal(Err, Errr, sizeof *Err * R * cnt);
    if (k->bits) assert_memory_equal(step, stepr, sizeof *step * nstep);
    int npruned = 0;
    for (int i = 0; i < R * cnt; i++) npruned += mk[i];
    if (k->m) {
        assert_int_equal(npruned, R * cnt / k->m * (k->m - k->n));
        for (int r = 0; r < R; r += 3) assert_true(mk[r * cnt] && mk[r * cnt + 1] && !mk[r * cnt + 2] && !mk[r * cnt + 3]);
    } else {
        assert_true(npruned >= (int)floor(R * cnt * k->sparsity));
    }
    kb_release(kb, dW); kb_release(kb, dH); kb_release(kb, dErr); kb_release(kb, dStep); kb_release(kb, dMask);
    free(W); free(Wr); free(Hv); free(Err); free(Errr); free(T); free(step); free(stepr); free(mk); free(mkr);
}

static void test_core_prune__sgpt_block_2of4(void **state)
{
    (void)state;
    struct blk_case k = { 45, 80, 16, 64, 2, 4, 0, 0, 0.5 };
    sgpt_block_case(&k);
}
static void test_core_prune__sgpt_block_unstructured(void **state)
{
    (void)state;
    struct blk_case k = { 45, 80, 16, 64, 0, 0, 0, 0, 0.5 };
    sgpt_block_case(&k);
}
static void test_core_prune__sgpt_block_optq_per_row_2of4(void **state)
{
    (void)state;
    struct blk_case k = { 45, 80, 16, 64, 2, 4, 4, -1, 0.5 };
    sgpt_block_case(&k);
}
static void test_core_prune__sgpt_block_optq_grouped(void **state)
{
    (void)state;
    /* groups of 24 start at columns 24 and 48 of block [16, 64); the second one reaches past it */
    struct blk_case k = { 45, 80, 16, 64, 0, 0, 3, 24, 0.4 };
    sgpt_block_case(&k);
    struct blk_case t = { 33, 64, 0, 64, 0, 0, 4, 0, 0.0 };   /* OPTQ alone, one step */
    sgpt_block_case(&t);
}

/* prune_weight through the backend's ops (prune_nm; prune_rows; abs_kth + prune_abs_le) and
** through the host loop (a view of kb without them) gives prune_mask_host's mask, and zeroes
** exactly the pruned entries; equal metrics (repeated values) exercise the tie rules. */
static void test_core_prune__backend_ops_match_host(void **state)
{
    (void)state;
    enum { R = 9, C = 48 };
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend plain = *kb;
    struct kbackend_i f = *kb->iface;
    f.prune_nm = NULL;
    f.prune_rows = NULL;
    f.abs_kth = NULL;
    f.prune_abs_le = NULL;
    plain.iface = &f;
    float w[R * C], s[C], hw[R * C];
    uint8_t want[R * C], got[R * C];
    for (int i = 0; i < R * C; i++) w[i] = i % 6 == 1 ? -w[i - 1] : nrand();
    for (int c = 0; c < C; c++) s[c] = c % 4 == 3 ? s[c - 1] : (float)urand() + 0.1f;
    const enum prune_method methods[2] = { PRUNE_MAGNITUDE, PRUNE_WANDA };
    /* N:M, then unstructured at 50%, 30% and 0% */
    const int pat[5][2] = { { 2, 4 }, { 4, 8 }, { 0, 0 }, { 0, 0 }, { 0, 0 } };
    const double unstructured_sparsity[5] = { 0, 0, 0.5, 0.3, 0 };
    for (int mi = 0; mi < 2; mi++)
        for (int p = 0; p < 5; p++) {
            struct prune_opts po = PRUNE_OPTS_INIT;
            po.method = methods[mi];
            po.n = pat[p][0];
            po.m = pat[p][1];
            po.sparsity = po.m ? (double)(po.m - po.n) / po.m : unstructured_sparsity[p];
            assert_true(prune_on_backend(kb, &po) == (kb->iface->prune_nm && kb->iface->prune_rows &&
                                                      kb->iface->abs_kth && kb->iface->prune_abs_le));
            assert_false(prune_on_backend(&plain, &po));
            assert_int_equal(prune_mask_host(want, w, po.method == PRUNE_WANDA ? s : NULL, R, C, &po, &err), 0);
            struct kbackend *kbs[2] = { kb, &plain };
            for (int k = 0; k < 2; k++) {
                float *d = test_dev_copy(kbs[k], w, sizeof w);
                memset(got, 0x77, sizeof got);
                assert_int_equal(prune_weight(kbs[k], d, s, R, C, &po, got, &err), 0);
                assert_int_equal(kb_download(kbs[k], hw, d, sizeof w, &err), 0);
                assert_memory_equal(got, want, sizeof got);
                for (int i = 0; i < R * C; i++) assert_true(hw[i] == (want[i] ? 0.0f : w[i]));
                assert_int_equal(prune_weight(kbs[k], d, s, R, C, &po, NULL, &err), 0);   /* mask optional */
                kb_release(kbs[k], d);
            }
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_prune__magnitude_2of4_keeps_largest),
        cmocka_unit_test(test_core_prune__magnitude_unstructured_one_threshold),
        cmocka_unit_test(test_core_prune__wanda_rows_exact),
        cmocka_unit_test(test_core_prune__shift_zero_metrics),
        cmocka_unit_test(test_core_prune__sparsegpt_2of4_matches_reference),
        cmocka_unit_test(test_core_prune__sparsegpt_unstructured_matches_reference),
        cmocka_unit_test(test_core_prune__sparsegpt_optq_joint_on_grid),
        cmocka_unit_test(test_core_prune__optq_alone),
        cmocka_unit_test(test_core_prune__sparsegpt_dense_is_identity),
        cmocka_unit_test(test_core_prune__sgpt_block_2of4),
        cmocka_unit_test(test_core_prune__sgpt_block_unstructured),
        cmocka_unit_test(test_core_prune__sgpt_block_optq_per_row_2of4),
        cmocka_unit_test(test_core_prune__sgpt_block_optq_grouped),
        cmocka_unit_test(test_core_prune__backend_ops_match_host),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
