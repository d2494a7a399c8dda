/* tests/unit/core/lowrank.c: adapters are optimal for the (scaled) error: the residual equals the
** Eckart-Young bound computed with a double-precision SVD; rank rounding; adapter quantization. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lowrank.h"

#define TEST_RNG_SEED 0x2545f4914f6cdd1dull
#include "../test_util.h"

static struct kbackend *kb;
static int setup(void **state) { (void)state; struct slm_err e = SLM_ERR_INIT; return kbackend_open(&kb, test_backend_name(), &e); }
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static void test_core_lowrank__rank_rounding(void **state)
{
    (void)state;
    struct lowrank_opts o = LOWRANK_OPTS_INIT;
    assert_int_equal(lowrank_rank(768, 768, &o), 128);      /* OPT-125M: floor(76.8) padded to 128 */
    assert_int_equal(lowrank_rank(4096, 11008, &o), 512);
    assert_int_equal(lowrank_rank(2560, 10240, &o), 256);
    o.pad = false;
    assert_int_equal(lowrank_rank(768, 3072, &o), 76);
    assert_int_equal(lowrank_rank(64, 172, &o), 6);
    assert_int_equal(lowrank_rank(32, 64, &o), 3);
    o.quantize = true;                                       /* quantized adapters pad too */
    assert_int_equal(lowrank_rank(768, 3072, &o), 128);
    assert_int_equal(lowrank_rank(64, 172, &o), 64);         /* never above min(d_out, d_in) */
}

/* sum of squared singular values of A [m x n] beyond the first r, in double */
static double tail_energy(const double *A, int m, int n, int r)
{
    int k = m < n ? m : n;
    double *a = malloc(sizeof *a * m * n), *s = malloc(sizeof *s * k), *sup = malloc(sizeof *sup * k);
    memcpy(a, A, sizeof *a * m * n);
    assert_int_equal(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', m, n, a, n, s, NULL, 1, NULL, 1, sup), 0);
    double t = 0;
    for (int i = r; i < k; i++) t += s[i] * s[i];
    free(a); free(s); free(sup);
    return t;
}

typedef int (*fit_fn)(struct kbackend *, float *, float *, const float *, const float *, int, int, int, bool,
                      struct slm_err *);

/* E [R x C]: wide (d_in > d_out) or tall; fit is lowrank_fit or the Gram path */
static void eckart_young(bool scaled, fit_fn fit, int R, int C)
{
    enum { MAXN = 30 * 20, RK = 5 };
    float E[MAXN], d[30], L[30 * RK], Rm[RK * 30], P[MAXN];
    double Ad[MAXN];
    assert_true(R * C <= MAXN && R <= 30 && C <= 30);
    for (int i = 0; i < R * C; i++) E[i] = nrand();
    for (int j = 0; j < C; j++) d[j] = (float)(0.2 + 3 * urand());
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(fit(kb, L, Rm, E, scaled ? d : NULL, R, C, RK, false, &err), 0);
    assert_int_equal(lowrank_product(kb, P, L, Rm, R, C, RK, false, &err), 0);
    double res = 0;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            double dj = scaled ? d[j] : 1;
            double diff = ((double)E[i * C + j] - P[i * C + j]) * dj;
            res += diff * diff;
            Ad[i * C + j] = E[i * C + j] * dj;
        }
    double bound = tail_energy(Ad, R, C, RK);
    assert_true(fabs(res - bound) <= 1e-4 * bound);
    /* the pair really is L [d_in x r] and R [r x d_out]: x L R ~= x E^T on a probe */
    double y1 = 0, y2 = 0;
    for (int i = 0; i < R; i++) {
        double a = 0, b = 0;
        for (int j = 0; j < C; j++) {
            a += (double)P[i * C + j] * (j + 1);
            for (int c = 0; c < RK; c++) b += (double)(j + 1) * L[j * RK + c] * Rm[c * R + i];
        }
        y1 += a; y2 += b;
    }
    assert_true(fabs(y1 - y2) < 1e-3 * (fabs(y1) + 1));
}

static void test_core_lowrank__naive_is_optimal(void **state) { (void)state; eckart_young(false, lowrank_fit, 20, 30); }
static void test_core_lowrank__slim_optimal_in_scaled_norm(void **state) { (void)state; eckart_young(true, lowrank_fit, 20, 30); }
/* the GPU default (top eigenpairs of the f64 Gram matrix) reaches the same bound, on either side */
static void test_core_lowrank__gram_path_optimal(void **state)
{
    (void)state;
    eckart_young(false, lowrank_fit, 30, 20);
    eckart_young(true, lowrank_fit, 30, 20);
    eckart_young(false, lowrank_fit_gram, 20, 30);
    eckart_young(true, lowrank_fit_gram, 20, 30);
    eckart_young(false, lowrank_fit_gram, 30, 20);
    eckart_young(true, lowrank_fit_gram, 30, 20);
}

/* the Gram path and the full SVD give the same product L R (the pair's signs may differ) */
static void test_core_lowrank__gram_matches_exact_svd(void **state)
{
    (void)state;
    enum { R = 48, C = 64, RK = 8 };
    static float E[R * C], d[C], L1[C * RK], R1[RK * C], L2[C * RK], R2[RK * C], P1[R * C], P2[R * C];   /* either side */
    /* a decaying spectrum, so the rank-8 subspace is well separated */
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            double v = 0;
            for (int c = 0; c < 16; c++) v += pow(0.7, c) * sin(0.37 * (c + 1) * (i + 1) + c) * cos(0.23 * (c + 2) * (j + 1));
            E[i * C + j] = (float)(v + 1e-3 * nrand());
        }
    for (int j = 0; j < C; j++) d[j] = (float)(0.5 + urand());
    struct slm_err err = SLM_ERR_INIT;
    for (int t = 0; t < 2; t++) {   /* the wide matrix, then its transpose as a tall one */
        int dout = t ? C : R, din = t ? R : C;
        float *Et = E;
        static float T[R * C];
        if (t) {
            for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) T[j * R + i] = E[i * C + j];
            Et = T;
        }
        assert_int_equal(lowrank_fit(kb, L1, R1, Et, t ? NULL : d, dout, din, RK, false, &err), 0);
        assert_int_equal(lowrank_fit_gram(kb, L2, R2, Et, t ? NULL : d, dout, din, RK, false, &err), 0);
        assert_int_equal(lowrank_product(kb, P1, L1, R1, dout, din, RK, false, &err), 0);
        assert_int_equal(lowrank_product(kb, P2, L2, R2, dout, din, RK, false, &err), 0);
        double num = 0, den = 0;
        for (int i = 0; i < R * C; i++) { num += ((double)P1[i] - P2[i]) * (P1[i] - P2[i]); den += (double)P1[i] * P1[i]; }
        assert_true(sqrt(num / den) < 1e-5);   /* f32 rounding of two different factorizations */
    }
    bool cpu = !strcmp(kb_name(kb), "cpu");
    assert_int_equal(lowrank_svd_choice(kb, 4096, 11008, 512), cpu ? LOWRANK_SVD_EXACT : LOWRANK_SVD_GRAM);
    assert_int_equal(lowrank_svd_choice(kb, 4096, 11008, 3000), LOWRANK_SVD_EXACT);   /* rank above half */
    assert_int_equal(lowrank_svd_choice(kb, 512, 2048, 64), cpu ? LOWRANK_SVD_EXACT : LOWRANK_SVD_HOST);
    assert_int_equal(lowrank_svd_choice(kb, 2048, 513, 64), cpu ? LOWRANK_SVD_EXACT : LOWRANK_SVD_GRAM);
}

/* The tests below this point draw from their own stream, so the shared one (and the data of the
** tests after them) stays what it was. */
static uint64_t local_rng = 0x9e3779b97f4a7c15ull;
static double local_urand(void)
{
    local_rng ^= local_rng << 13; local_rng ^= local_rng >> 7; local_rng ^= local_rng << 17;
    return (double)(local_rng >> 11) / 9007199254740992.0;
}

/* Off the CPU, small errors are factored by the CPU backend's LAPACK: the adapters are the CPU
** run's bit for bit (cpu-discrete stands in for a GPU: its own svd op would give the same bits here,
** so a view whose svd fails proves the host took the work). */
static int failing_svd(struct kbackend *k, const float *a, int m, int n, float *u, float *s, float *vt, struct slm_err *err)
{
    (void)k; (void)a; (void)m; (void)n; (void)u; (void)s; (void)vt;
    return slm_err_set(err, SLM_EUNSUPPORTED, "no svd here");
}

static void test_core_lowrank__small_errors_take_the_host_svd(void **state)
{
    (void)state;
    enum { R = 48, C = 80, RK = 8 };
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend *cpu, *dev;
    assert_int_equal(kbackend_open(&cpu, "cpu", &err), 0);
    assert_int_equal(kbackend_open(&dev, "cpu-discrete", &err), 0);
    struct kbackend_i f = *dev->iface;
    f.svd = failing_svd;
    struct kbackend view = *dev;
    view.iface = &f;
    static float E[R * C], d[C], L1[C * RK], R1[RK * R], L2[C * RK], R2[RK * R];
    for (int i = 0; i < R * C; i++) E[i] = (float)(2 * local_urand() - 1);
    for (int j = 0; j < C; j++) d[j] = 0.5f + (float)local_urand();
    assert_int_equal(lowrank_svd_choice(&view, R, C, RK), LOWRANK_SVD_HOST);
    assert_int_equal(lowrank_fit(cpu, L1, R1, E, d, R, C, RK, true, &err), 0);
    assert_int_equal(lowrank_fit(&view, L2, R2, E, d, R, C, RK, true, &err), 0);
    assert_memory_equal(L1, L2, sizeof L1);
    assert_memory_equal(R1, R2, sizeof R1);
    kbackend_free(dev);
    kbackend_free(cpu);
}

/* Canonical signs: two factorizations that differ by the sign of some singular pairs become the
** same bits, so prune_lora's signed selection gives the same mask. */
static void test_core_lowrank__canonical_signs(void **state)
{
    (void)state;
    enum { R = 24, C = 40, RK = 6 };
    struct slm_err err = SLM_ERR_INIT;
    static float E[R * C], L1[C * RK], R1[RK * R], L2[C * RK], R2[RK * R];
    static uint8_t m1[C * RK], m2[C * RK];
    for (int i = 0; i < R * C; i++) E[i] = (float)(2 * local_urand() - 1);
    assert_int_equal(lowrank_fit(kb, L1, R1, E, NULL, R, C, RK, false, &err), 0);
    memcpy(L2, L1, sizeof L1);
    memcpy(R2, R1, sizeof R1);
    for (int c = 0; c < RK; c += 2) {   /* another SVD's signs */
        for (int i = 0; i < R; i++) R2[c * R + i] = -R2[c * R + i];
        for (int j = 0; j < C; j++) L2[j * RK + c] = -L2[j * RK + c];
    }
    lowrank_canonical_signs(L1, R1, R, C, RK);
    lowrank_canonical_signs(L2, R2, R, C, RK);
    assert_memory_equal(L1, L2, sizeof L1);
    assert_memory_equal(R1, R2, sizeof R1);
    for (int c = 0; c < RK; c++) {
        int top = 0;
        for (int i = 1; i < R; i++) if (fabsf(R1[c * R + i]) > fabsf(R1[c * R + top])) top = i;
        assert_true(R1[c * R + top] > 0);
    }
    assert_int_equal(lowrank_prune_adapter(kb, L1, R1, R, C, RK, 3, m1, NULL, &err), 0);
    assert_int_equal(lowrank_prune_adapter(kb, L2, R2, R, C, RK, 3, m2, NULL, &err), 0);
    assert_memory_equal(m1, m2, sizeof m1);
}

static void test_core_lowrank__quantized_adapters_on_grid(void **state)
{
    (void)state;
    enum { DO = 8, DI = 16, RK = 4 };
    float L[DI * RK], Rm[RK * DO];
    for (int i = 0; i < DI * RK; i++) L[i] = nrand();
    for (int i = 0; i < RK * DO; i++) Rm[i] = nrand();
    struct lowrank_opts o = LOWRANK_OPTS_INIT;
    o.tile = 4;
    o.quantize = true;
    struct quant_params pl = { 0 }, pr = { 0 };
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(lowrank_quantize(L, Rm, DO, DI, RK, &o, &pl, &pr, &err), 0);
    /* stored L' = L * sqrt(r) sits on its group grid: groups of 4 rows of one column */
    assert_int_equal(pl.rows, DI / 4);
    assert_int_equal(pl.cols, RK);
    for (int j = 0; j < DI; j++)
        for (int c = 0; c < RK; c++) {
            double k = L[j * RK + c] * 2.0 / pl.scale[(j / 4) * RK + c] * 7;
            assert_true(fabs(k - nearbyint(k)) < 0.03);   /* bf16 storage of the grid values */
        }
    assert_int_equal(pr.rows, RK / 4);
    assert_int_equal(pr.cols, DO);
    quant_params_free(&pl);
    quant_params_free(&pr);
}

static void test_core_lowrank__prune_lora(void **state)
{
    (void)state;
    enum { DO = 48, DI = 64, RK = 8 };
    float L[DI * RK], Rm[RK * DO], L0[DI * RK];
    uint8_t mask[DI * RK];
    for (int i = 0; i < DI * RK; i++) L0[i] = L[i] = nrand();
    for (int i = 0; i < RK * DO; i++) Rm[i] = nrand() * 0.1f;
    struct slm_err err = SLM_ERR_INIT;
    double f0 = 0, f = 0;
    /* zero steps: the loss of plain masking */
    assert_int_equal(lowrank_prune_adapter(kb, L, Rm, DO, DI, RK, 0, mask, &f0, &err), 0);
    memcpy(L, L0, sizeof L);
    assert_int_equal(lowrank_prune_adapter(kb, L, Rm, DO, DI, RK, 200, mask, &f, &err), 0);
    for (int c = 0; c < RK; c++)
        for (int g = 0; g < DI; g += 4) {
            int k = 0;
            for (int j = g; j < g + 4; j++) {
                k += mask[j * RK + c];
                if (mask[j * RK + c]) {
                    assert_true(L[j * RK + c] == 0);
                    /* dropped by SIGNED value: every dropped entry <= every kept one of its group */
                    for (int j2 = g; j2 < g + 4; j2++)
                        if (!mask[j2 * RK + c]) assert_true(L0[j * RK + c] <= L0[j2 * RK + c]);
                }
            }
            assert_int_equal(k, 2);
        }
    fprintf(stderr, "prune_lora: relative error %.4f after masking, %.4f after Adam\n", f0, f);
    assert_true(f0 > 0.3);
    assert_true(isfinite(f) && f < f0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_lowrank__rank_rounding),
        cmocka_unit_test(test_core_lowrank__naive_is_optimal),
        cmocka_unit_test(test_core_lowrank__slim_optimal_in_scaled_norm),
        cmocka_unit_test(test_core_lowrank__gram_path_optimal),
        cmocka_unit_test(test_core_lowrank__gram_matches_exact_svd),
        cmocka_unit_test(test_core_lowrank__small_errors_take_the_host_svd),
        cmocka_unit_test(test_core_lowrank__canonical_signs),
        cmocka_unit_test(test_core_lowrank__quantized_adapters_on_grid),
        cmocka_unit_test(test_core_lowrank__prune_lora),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
