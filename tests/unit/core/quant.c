/* tests/unit/core/quant.c: weight quantizers against straightforward double-precision formulations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/quant.h"

#define TEST_RNG_SEED 88172645463325252ull
#include "../test_util.h"
static void fill(float *w, size_t n, float s) { for (size_t i = 0; i < n; i++) w[i] = s * nrand(); }

static void test_core_quant__per_tensor_absmax_on_grid(void **state)
{
    (void)state;
    enum { R = 16, C = 24 };
    float w[R * C], o[R * C];
    int8_t q[R * C];
    fill(w, R * C, 0.05f);
    memcpy(o, w, sizeof w);
    struct quant_opts opt = QUANT_OPTS_INIT;
    struct quant_params p = { 0 };
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_weight_host(w, R, C, &opt, NULL, q, &p, &err), 0);
    double amax = 0;
    for (int i = 0; i < R * C; i++) amax = fmax(amax, fabs(o[i]));
    float sf = 7.0f / (float)amax;
    assert_true(p.kind == QK_SF && p.rows == 1 && p.cols == 1);
    assert_true(p.scale[0] == sf);
    int seen_max = 0;
    for (int i = 0; i < R * C; i++) {
        double k = nearbyint((double)o[i] * sf);
        k = k < -8 ? -8 : k > 7 ? 7 : k;
        assert_int_equal(q[i], (int)k);
        assert_true(w[i] == bf16_round((float)k / sf));   /* stored as bf16, like the reference */
        assert_true(fabs(w[i] - o[i]) <= 0.5 / sf + 0.004 * fabs(o[i]) + 1e-7);
        if (fabs(k) == 7) seen_max = 1;
    }
    assert_true(seen_max);
    /* dequantizing codes + params gives the same floats */
    float d[R * C];
    assert_int_equal(quant_dequant_host(d, q, R, C, &p, NULL, &err), 0);
    assert_memory_equal(d, w, sizeof w);
    quant_params_free(&p);
}

static void test_core_quant__per_channel_scales(void **state)
{
    (void)state;
    enum { R = 8, C = 32 };
    float w[R * C], o[R * C];
    fill(w, R * C, 1);
    for (int c = 0; c < C; c++) w[3 * C + c] *= 100;   /* one loud row must not coarsen the others */
    memcpy(o, w, sizeof w);
    struct quant_opts opt = QUANT_OPTS_INIT;
    opt.group_size = -1;
    opt.bits = 8;
    struct quant_params p = { 0 };
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_weight_host(w, R, C, &opt, NULL, NULL, &p, &err), 0);
    assert_int_equal(p.rows, R);
    for (int r = 0; r < R; r++) {
        double amax = 0;
        for (int c = 0; c < C; c++) amax = fmax(amax, fabs(o[r * C + c]));
        assert_true(p.scale[r] == 127.0f / (float)amax);
        for (int c = 0; c < C; c++) {
            double k = nearbyint((double)o[r * C + c] * p.scale[r]);
            assert_true(w[r * C + c] == bf16_round((float)k / p.scale[r]));
        }
    }
    quant_params_free(&p);
}

static void check_groups(bool column_wise)
{
    enum { R = 8, C = 12, G = 4 };
    float w[R * C], o[R * C];
    int8_t q[R * C];
    fill(w, R * C, 0.1f);
    memcpy(o, w, sizeof w);
    struct quant_opts opt = QUANT_OPTS_INIT;
    opt.group_size = G;
    opt.column_wise = column_wise;
    struct quant_params p = { 0 };
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_weight_host(w, R, C, &opt, NULL, q, &p, &err), 0);
    assert_int_equal(p.kind, QK_ALPHA);
    assert_int_equal(p.rows, column_wise ? R : R / G);
    assert_int_equal(p.cols, column_wise ? C / G : C);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            /* the group of (r, c): G rows of one column, or G columns of one row */
            double amax = 0;
            for (int k = 0; k < G; k++) {
                int rr = column_wise ? r : r / G * G + k, cc = column_wise ? c / G * G + k : c;
                amax = fmax(amax, fabs(o[rr * C + cc]));
            }
            float alpha = f16_to_f32(f32_to_f16((float)amax));
            assert_true(p.scale[column_wise ? r * (C / G) + c / G : (r / G) * C + c] == alpha);
            double v = o[r * C + c] / alpha * 7.0, t = trunc(v);
            if (fabs(v - t) > 0.5) t += v > 0 ? 1 : -1;
            t = t < -8 ? -8 : t > 7 ? 7 : t;
            assert_int_equal(q[r * C + c], (int)t);
            assert_true(w[r * C + c] == bf16_round((float)t / 7.0f * alpha));
        }
    float d[R * C];
    assert_int_equal(quant_dequant_host(d, q, R, C, &p, NULL, &err), 0);
    assert_memory_equal(d, w, sizeof w);
    quant_params_free(&p);
}

static void test_core_quant__row_wise_groups(void **state) { (void)state; check_groups(false); }
static void test_core_quant__column_wise_groups(void **state) { (void)state; check_groups(true); }

static void test_core_quant__group_shape_error(void **state)
{
    (void)state;
    float w[6 * 8] = { 0 };
    struct quant_opts opt = QUANT_OPTS_INIT;
    opt.group_size = 4;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_weight_host(w, 6, 8, &opt, NULL, NULL, NULL, &err), -SLM_ESHAPE);
}

/* The search of §3.3 written out in double precision. */
static double ref_slim_alpha(const float *w, size_t n, int bits)
{
    size_t nbz = n / 1000;
    int nb = (int)(nbz < 512 ? 512 : nbz > 20000 ? 20000 : nbz);
    double lo = INFINITY, hi = 0;
    for (size_t i = 0; i < n; i++) { lo = fmin(lo, fabs(w[i])); hi = fmax(hi, fabs(w[i])); }
    double width = (hi - lo) / nb, *pdf = calloc((size_t)nb, sizeof *pdf), *val = calloc((size_t)nb, sizeof *val);
    for (size_t i = 0; i < n; i++) {
        int k = (int)((fabs(w[i]) - lo) / width);
        pdf[k < nb ? k : nb - 1] += 1.0 / (n * width);
    }
    for (int k = 0; k < nb; k++) val[k] = lo + (k + 0.5) * width;
    double best_e[11];
    int idx[11] = { 0 }, st = nb / 10, t = 0;
    for (int j = 0; j < 11; j++) {
        best_e[j] = INFINITY;
        if (j * st >= nb) continue;
        idx[j] = j * st;
        double a = val[idx[j]], step = a / (1 << bits), e = 0;
        for (int k = 0; k < nb; k++) {
            double d = k < idx[j] ? val[k] - floor(val[k] / step) * step : val[k] - a;
            e += pdf[k] * d * d * width;
        }
        best_e[j] = e;
        if (e < best_e[t]) t = j;
    }
    int flo = idx[t > 0 ? t - 1 : 0], fhi = idx[t + 1 < 10 ? t + 1 : 10], bi = 0;
    double be = INFINITY;
    for (int i = flo; i < fhi; i++) {
        double a = val[i], step = a / (1 << bits), e = 0;
        for (int k = 0; k < nb; k++) {
            double d = k < i ? val[k] - floor(val[k] / step) * step : val[k] - a;
            e += pdf[k] * d * d * width;
        }
        if (e < be) { be = e; bi = i; }
    }
    double a = val[bi];
    free(pdf);
    free(val);
    return a;
}

/* A linear large enough for the search to spread its candidates over threads (2000 bins, up to
** 400 fine candidates): the same choice as the double-precision reference, within a bin. */
static void test_core_quant__slim_quant_search_large(void **state)
{
    (void)state;
    enum { N = 2000 * 1000 };
    float *w = malloc(sizeof *w * N);
    assert_non_null(w);
    fill(w, N, 0.02f);
    w[12345] = 0.3f;
    float a = quant_slim_alpha(w, N, 4), b = quant_slim_alpha(w, N, 4);
    double ra = ref_slim_alpha(w, N, 4), width = 0.3 / 2000;
    assert_true(a == b);
    assert_true(fabs(a - ra) <= 1.01 * width);
    free(w);
}

static void test_core_quant__slim_quant_search(void **state)
{
    (void)state;
    enum { R = 64, C = 96 };
    float *w = malloc(sizeof *w * R * C), *o = malloc(sizeof *o * R * C);
    int8_t *q = malloc(R * C);
    fill(w, R * C, 0.02f);
    w[5] = 0.4f;   /* an outlier: SLiM-Quant must clip well below it */
    memcpy(o, w, sizeof *w * R * C);
    float a = quant_slim_alpha(w, R * C, 4);
    double ra = ref_slim_alpha(w, R * C, 4), width = 0.4 / 512;
    assert_true(fabs(a - ra) <= 1.01 * width);
    assert_true(a < 0.2f && a > 0.01f);
    struct quant_opts opt = QUANT_OPTS_INIT;
    opt.method = QUANT_SLIM;
    struct quant_params p = { 0 };
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_weight_host(w, R, C, &opt, NULL, q, &p, &err), 0);
    assert_true(p.scale[0] == 7.0f / a);
    for (int i = 0; i < R * C; i++) {
        assert_true(w[i] == bf16_round((float)q[i] / p.scale[0]));
        assert_true(q[i] >= -8 && q[i] <= 7);
    }
    assert_int_equal(q[5], 7);   /* the outlier clips */
    quant_params_free(&p);
    opt.group_size = 128;
    assert_int_equal(quant_weight_host(o, R, C, &opt, NULL, NULL, NULL, &err), -SLM_EUNSUPPORTED);
    free(w);
    free(o);
    free(q);
}

static void test_core_quant__important_columns_get_finer_grid(void **state)
{
    (void)state;
    enum { R = 16, C = 200 };
    float *w = malloc(sizeof *w * R * C), *o = malloc(sizeof *o * R * C), s[C], cs[C];
    fill(w, R * C, 0.05f);
    for (int j = 0; j < C; j++) s[j] = (float)(1 + urand());
    s[17] = 50;
    s[123] = 40;
    memcpy(o, w, sizeof *w * R * C);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_important_columns(cs, w, R, C, s, &err), 0);
    int n2 = 0;
    for (int j = 0; j < C; j++) n2 += cs[j] == 2.0f;
    assert_int_equal(n2, 2);   /* floor(0.01 * 200) */
    assert_true(cs[17] == 2.0f && cs[123] == 2.0f);
    struct quant_opts opt = QUANT_OPTS_INIT;
    struct quant_params p = { 0 };
    assert_int_equal(quant_weight_host(w, R, C, &opt, cs, NULL, &p, &err), 0);
    for (int r = 0; r < R; r++) {
        double k = nearbyint((double)o[r * C + 17] * 2 * p.scale[0]);   /* half-step grid on column 17 */
        k = k < -8 ? -8 : k > 7 ? 7 : k;
        assert_true(w[r * C + 17] == bf16_round(bf16_round((float)k / p.scale[0]) / 2));
        k = nearbyint((double)o[r * C + 5] * p.scale[0]);
        k = k < -8 ? -8 : k > 7 ? 7 : k;
        assert_true(w[r * C + 5] == bf16_round((float)k / p.scale[0]));
    }
    quant_params_free(&p);
    free(w);
    free(o);
}

static void test_core_quant__optq_quantizer(void **state)
{
    (void)state;
    float w[2 * 4] = { 0.1f, -0.3f, 0.2f, 0.0f, 1.0f, 0.5f, -0.25f, 0.75f }, st[2];
    quant_optq_fit(st, w, 2, 4, 4, true, 4);
    assert_true(fabsf(st[0] - 0.6f / 15) < 1e-7f);
    assert_true(fabsf(st[1] - 2.0f / 15) < 1e-7f);
    /* levels -8..7 times step: the largest positive level is 14/15 of absmax */
    assert_true(fabsf(quant_optq_apply(1.0f, st[1], 4) - 7 * st[1]) < 1e-6f);
    assert_true(fabsf(quant_optq_apply(-1.05f, st[1], 4) - -8 * st[1]) < 1e-6f);
    assert_true(quant_optq_apply(0.0f, st[1], 4) == 0.0f);
    quant_optq_fit(st, w, 2, 4, 4, false, 4);
    assert_true(fabsf(st[0] - 2.0f / 15) < 1e-7f);
}

static void test_core_quant__input_emulation(void **state)
{
    (void)state;
    assert_true(quant_fp8_round(448.0f, false) == 448.0f);
    assert_true(quant_fp8_round(1.0625f, false) == 1.0f);     /* tie to even */
    assert_true(quant_fp8_round(1.1875f, false) == 1.25f);    /* tie to even (1.25 has even mantissa) */
    assert_true(quant_fp8_round(-3.3f, true) == -3.5f);       /* E5M2: 2 mantissa bits */
    assert_true(quant_fp8_round(1e-9f, false) == 0.0f);
    enum { T = 3, D = 8 };
    float x[T * D], o[T * D];
    fill(x, T * D, 2);
    memcpy(o, x, sizeof x);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(quant_input_host(x, T, D, "int", 4, -1, &err), 0);
    for (int t = 0; t < T; t++) {
        double r = 0;
        for (int d = 0; d < D; d++) r = fmax(r, fabs(o[t * D + d]));
        for (int d = 0; d < D; d++) {
            double k = x[t * D + d] * 7 / r;
            assert_true(fabs(k - nearbyint(k)) < 1e-4);
        }
    }
    memcpy(x, o, sizeof x);
    assert_int_equal(quant_input_host(x, T, D, "fp8", 8, -1, &err), 0);
    for (int i = 0; i < T * D; i++) assert_true(fabsf(x[i] - o[i]) <= 0.07f * fabsf(o[i]) + 1e-6f);
    assert_int_equal(quant_input_host(x, T, D, "fp4", 4, -1, &err), -SLM_EINVAL);
}

/* A view of kb without the quantization ops: quant_weight's download / host loop / upload path. */
static void without_quant_ops(struct kbackend *view, struct kbackend_i *f, struct kbackend *kb)
{
    *f = *kb->iface;
    f->absmax_groups = NULL;
    f->abs_range = NULL;
    f->abs_histogram = NULL;
    f->quant_apply = NULL;
    f->quant_dequant = NULL;
    *view = *kb;
    view->iface = f;
}

/* quant_weight on backend memory (through the backend's ops, without them, and without the search
** op alone) gives the bits, codes and scales of quant_weight_host, which the tests above check
** against the formulas. */
static void backend_case(struct kbackend *kb, int R, int C, enum quant_method m, int g, bool colw, bool bf16, bool cs)
{
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend plain, host_search = *kb;
    struct kbackend_i f, fs = *kb->iface;
    without_quant_ops(&plain, &f, kb);
    fs.slim_search = NULL;   /* the backend's histogram, the host's search */
    host_search.iface = &fs;
    size_t n = (size_t)R * C;
    float *w = malloc(n * sizeof *w), *h = malloc(n * sizeof *h), *col = malloc(C * sizeof *col);
    int8_t *qh = malloc(n), *qb = malloc(n);
    assert_true(w && h && col && qh && qb);
    fill(w, n, 0.05f);
    w[3] = 0.2f;   /* an outlier moves SLiM-Quant's alpha below the max */
    for (int c = 0; c < C; c++) col[c] = c % 7 == 0 ? 2.0f : 1.0f;
    struct quant_opts o = QUANT_OPTS_INIT;
    o.method = m;
    o.group_size = g;
    o.column_wise = colw;
    o.bf16 = bf16;
    struct quant_params ph = { 0 };
    memcpy(h, w, n * sizeof *h);
    assert_int_equal(quant_weight_host(h, R, C, &o, cs ? col : NULL, qh, &ph, &err), 0);
    struct kbackend *kbs[3] = { kb, &plain, &host_search };
    for (int k = 0; k < 3; k++) {
        struct quant_params pb = { 0 };
        float *d = test_dev_copy(kbs[k], w, n * sizeof *d);
        memset(qb, 0x5a, n);
        assert_int_equal(quant_weight(kbs[k], d, R, C, &o, cs ? col : NULL, qb, &pb, &err), 0);
        float *back = malloc(n * sizeof *back);
        assert_non_null(back);
        assert_int_equal(kb_download(kbs[k], back, d, n * sizeof *d, &err), 0);
        assert_memory_equal(back, h, n * sizeof *h);
        assert_memory_equal(qb, qh, n);
        assert_true(pb.kind == ph.kind && pb.rows == ph.rows && pb.cols == ph.cols &&
                    pb.group_rows == ph.group_rows && pb.group_cols == ph.group_cols && pb.bf16 == ph.bf16);
        assert_memory_equal(pb.scale, ph.scale, sizeof *pb.scale * (size_t)pb.rows * pb.cols);
        free(back);
        kb_release(kbs[k], d);
        quant_params_free(&pb);
    }
    quant_params_free(&ph);
    free(w); free(h); free(col); free(qh); free(qb);
}

static void test_core_quant__backend_ops_match_host(void **state)
{
    (void)state;
    struct kbackend *kb;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(kbackend_open(&kb, test_backend_name(), &err), 0);
    backend_case(kb, 24, 40, QUANT_ABSMAX, 0, false, false, false);
    backend_case(kb, 24, 40, QUANT_ABSMAX, 0, false, true, true);
    backend_case(kb, 1, 40, QUANT_ABSMAX, 0, false, true, false);   /* one row: per tensor, not per row */
    backend_case(kb, 24, 40, QUANT_ABSMAX, -1, false, false, true);
    backend_case(kb, 1, 40, QUANT_ABSMAX, -1, false, true, false);
    backend_case(kb, 32, 40, QUANT_ABSMAX, 8, false, true, true);
    backend_case(kb, 24, 64, QUANT_ABSMAX, 32, true, false, false);
    backend_case(kb, 64, 300, QUANT_SLIM, 0, false, false, false);
    backend_case(kb, 64, 300, QUANT_SLIM, 0, false, true, true);
    kbackend_free(kb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_quant__per_tensor_absmax_on_grid),
        cmocka_unit_test(test_core_quant__per_channel_scales),
        cmocka_unit_test(test_core_quant__row_wise_groups),
        cmocka_unit_test(test_core_quant__column_wise_groups),
        cmocka_unit_test(test_core_quant__group_shape_error),
        cmocka_unit_test(test_core_quant__slim_quant_search),
        cmocka_unit_test(test_core_quant__slim_quant_search_large),
        cmocka_unit_test(test_core_quant__important_columns_get_finer_grid),
        cmocka_unit_test(test_core_quant__optq_quantizer),
        cmocka_unit_test(test_core_quant__input_emulation),
        cmocka_unit_test(test_core_quant__backend_ops_match_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
