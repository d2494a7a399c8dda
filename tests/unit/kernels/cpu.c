/* tests/unit/kernels/cpu.c: the CPU backend against straightforward double-precision loops. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/kbackend.h"
#include "kernels/kbackend_impl.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* xorshift, uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rand_vec(size_t n)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = frand();
    return v;
}
static double rel_err(const float *out, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(out[i])) return INFINITY;
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int setup(void **state)
{
    struct kbackend *kb;
    struct slm_err err = SLM_ERR_INIT;
    if (kbackend_open(&kb, "cpu", &err)) return -1;
    *state = kb;
    return 0;
}
static int teardown(void **state) { kbackend_free(*state); return 0; }

static void test_kernels_cpu__gemm_all_transposes(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int m = 37, n = 29, k = 41, batch = 3;
    float *a = rand_vec((size_t)batch * m * k), *b = rand_vec((size_t)batch * k * n);
    float *c = malloc(sizeof(float) * batch * m * n);
    double *ref = malloc(sizeof(double) * batch * m * n);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            struct kgemm_args g = {
                .ta = ta, .tb = tb, .m = m, .n = n, .k = k, .alpha = 0.5f, .beta = 0.0f,
                .a = a, .lda = ta ? m : k, .stride_a = (int64_t)m * k,
                .b = b, .ldb = tb ? k : n, .stride_b = (int64_t)k * n,
                .c = c, .ldc = n, .stride_c = (int64_t)m * n, .batch = batch,
            };
            for (int i = 0; i < batch * m * n; i++) c[i] = NAN;
            assert_int_equal(kb->iface->gemm(kb, &g, &err), 0);
            for (int bi = 0; bi < batch; bi++)
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int p = 0; p < k; p++) {
                            float av = ta ? a[bi * m * k + p * m + i] : a[bi * m * k + i * k + p];
                            float bv = tb ? b[bi * k * n + j * k + p] : b[bi * k * n + p * n + j];
                            s += (double)av * bv;
                        }
                        ref[bi * m * n + i * n + j] = 0.5 * s;
                    }
            assert_true(rel_err(c, ref, (size_t)batch * m * n) < 1e-6);
        }
    free(a); free(b); free(c); free(ref);
}

static void test_kernels_cpu__norms(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int rows = 9, cols = 50;
    float *x = rand_vec((size_t)rows * cols), *w = rand_vec(cols), *b = rand_vec(cols);
    float *y = malloc(sizeof(float) * rows * cols);
    double *ref = malloc(sizeof(double) * rows * cols);
    assert_int_equal(kb->iface->layernorm(kb, y, x, w, b, rows, cols, 1e-5f, &err), 0);
    for (int r = 0; r < rows; r++) {
        double mu = 0, var = 0;
        for (int c = 0; c < cols; c++) mu += x[r * cols + c];
        mu /= cols;
        for (int c = 0; c < cols; c++) var += (x[r * cols + c] - mu) * (x[r * cols + c] - mu);
        var /= cols;
        for (int c = 0; c < cols; c++) ref[r * cols + c] = (x[r * cols + c] - mu) / sqrt(var + 1e-5) * w[c] + b[c];
    }
    assert_true(rel_err(y, ref, (size_t)rows * cols) < 1e-6);
    /* RMSNorm with a divisor other than cols (sliced models) */
    assert_int_equal(kb->iface->rmsnorm(kb, y, x, w, rows, cols, 64.0f, 1e-6f, &err), 0);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < cols; c++) ss += (double)x[r * cols + c] * x[r * cols + c];
        for (int c = 0; c < cols; c++) ref[r * cols + c] = x[r * cols + c] / sqrt(ss / 64.0 + 1e-6) * w[c];
    }
    assert_true(rel_err(y, ref, (size_t)rows * cols) < 1e-6);
    free(x); free(w); free(b); free(y); free(ref);
}

static void test_kernels_cpu__attention_causal_gqa(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int B = 2, T = 300, H = 4, Hkv = 2, hd = 8; /* T > chunk exercises the chunked path */
    int qs = H * hd, ks = Hkv * hd;
    float *q = rand_vec((size_t)B * T * qs), *k = rand_vec((size_t)B * T * ks), *v = rand_vec((size_t)B * T * ks);
    float *o = malloc(sizeof(float) * B * T * qs);
    double *ref = calloc((size_t)B * T * qs, sizeof(double)), *p = malloc(sizeof(double) * T);
    for (int i = 0; i < B * T * qs; i++) o[i] = NAN;
    struct kattn_args a = { o, qs, q, qs, k, v, ks, B, T, H, Hkv, hd, 0.35f };
    assert_int_equal(kb->iface->attention(kb, &a, &err), 0);
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qq = q + ((size_t)bb * T + t) * qs + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const float *kk = k + ((size_t)bb * T + j) * ks + (h / 2) * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)qq[d] * kk[d];
                    p[j] = 0.35 * s;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                for (int j = 0; j <= t; j++)
                    for (int d = 0; d < hd; d++)
                        ref[((size_t)bb * T + t) * qs + h * hd + d] += p[j] / sum * v[((size_t)bb * T + j) * ks + (h / 2) * hd + d];
            }
    assert_true(rel_err(o, ref, (size_t)B * T * qs) < 1e-5);
    free(q); free(k); free(v); free(o); free(ref); free(p);
}

static void test_kernels_cpu__rope_rotate_half(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int T = 5, rows = 10, nh = 2, hd = 8, rot = 4, ld = nh * hd;
    float *x = rand_vec((size_t)rows * ld), *x0 = malloc(sizeof(float) * rows * ld);
    memcpy(x0, x, sizeof(float) * rows * ld);
    float inv[2] = { 1.0f, 0.01f };
    double *ref = malloc(sizeof(double) * rows * ld);
    assert_int_equal(kb->iface->rope(kb, x, rows, ld, T, nh, hd, rot, inv, &err), 0);
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < nh; h++)
            for (int d = 0; d < hd; d++) {
                const float *p = x0 + r * ld + h * hd;
                double v = p[d];
                if (d < rot) {
                    int fi = d < rot / 2 ? d : d - rot / 2;
                    double ang = (double)(float)((r % T) * inv[fi]);
                    double rh = d < rot / 2 ? -p[d + rot / 2] : p[d - rot / 2];
                    v = p[d] * cos(ang) + rh * sin(ang);
                }
                ref[r * ld + h * hd + d] = v;
            }
    assert_true(rel_err(x, ref, (size_t)rows * ld) < 1e-6);
    assert_int_equal(kb->iface->rope(kb, x, rows, ld, T, nh, hd, 3, inv, &err), -SLM_EINVAL);
    free(x); free(x0); free(ref);
}

static void test_kernels_cpu__cross_entropy_and_acts(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int rows = 4, V = 100;
    float *l = rand_vec((size_t)rows * V), nll[4];
    int32_t tg[4] = { 3, 99, 0, -1 };
    double ref[4];
    for (int i = 0; i < V * rows; i++) l[i] *= 20;
    assert_int_equal(kb->iface->cross_entropy(kb, nll, l, tg, rows, V, &err), 0);
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int j = 0; j < V; j++) s += exp((double)l[r * V + j]);
        ref[r] = tg[r] < 0 ? 0 : log(s) - l[r * V + tg[r]];
    }
    assert_true(rel_err(nll, ref, 4) < 1e-6);
    assert_true(fabsf(kcpu_act1(1.0f, KACT_GELU_TANH) - 0.8411920071f) < 1e-6f);
    assert_true(fabsf(kcpu_act1(1.0f, KACT_GELU_ERF) - 0.8413447460f) < 1e-6f);
    assert_true(fabsf(kcpu_act1(-2.0f, KACT_SILU) - (-0.2384058440f)) < 1e-6f);
    assert_true(kcpu_act1(-2.0f, KACT_RELU) == 0.0f);
    free(l);
}

static void test_kernels_cpu__factorizations(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    int n = 12;
    float *g = rand_vec((size_t)n * n), a[144], u[144], s[12], vt[144];
    double ad[144], w[12];
    for (int i = 0; i < n; i++) /* A = G G^T + n I: SPD */
        for (int j = 0; j < n; j++) {
            double v = i == j ? n : 0;
            for (int p = 0; p < n; p++) v += (double)g[i * n + p] * g[j * n + p];
            a[i * n + j] = (float)v;
            ad[i * n + j] = v;
        }
    float a0[144];
    memcpy(a0, a, sizeof a);
    assert_int_equal(kb->iface->cholesky_upper(kb, a, n, &err), 0);
    for (int i = 0; i < n; i++) /* U^T U == A */
        for (int j = 0; j < n; j++) {
            double v = 0;
            for (int p = 0; p < n; p++) v += (double)a[p * n + i] * a[p * n + j];
            assert_true(fabs(v - a0[i * n + j]) < 1e-3 * fabs(a0[i * n + i]));
        }
    assert_int_equal(kb->iface->eigh_f64(kb, ad, w, n, &err), 0);
    for (int i = 1; i < n; i++) assert_true(w[i] >= w[i - 1]);
    for (int c = 0; c < n; c++) /* A v = lambda v, eigenvectors as columns */
        for (int i = 0; i < n; i++) {
            double av = 0;
            for (int p = 0; p < n; p++) av += (double)a0[i * n + p] * ad[p * n + c];
            assert_true(fabs(av - w[c] * ad[i * n + c]) < 1e-3 * w[n - 1]);
        }
    assert_int_equal(kb->iface->svd(kb, a0, n, n, u, s, vt, &err), 0);
    for (int i = 0; i < n; i++) assert_true(fabs(s[i] - w[n - 1 - i]) < 1e-3 * w[n - 1]);
    float neg[4] = { 1, 2, 2, 1 };
    assert_int_equal(kb->iface->cholesky_upper(kb, neg, 2, &err), -SLM_ENUMERIC);
    free(g);
}

/* round_bf16 against "the nearer of the two bf16 neighbours, ties to the even one", in double */
static float bf16_nearest(float x)
{
    uint32_t u, lo, hi;
    memcpy(&u, &x, 4);
    lo = u & 0xffff0000u;
    hi = lo + 0x10000u;
    float fl, fh;
    memcpy(&fl, &lo, 4);
    memcpy(&fh, &hi, 4);
    double dl = fabs((double)x - fl), dh = fabs((double)fh - x);
    if (isinf(fh)) dh = dl + 1;     /* the largest bf16 magnitudes: 0x7f7f... rounds up only past half an ulp */
    if (dl < dh || (dl == dh && !(lo & 0x10000u))) return fl;
    return fh;
}

static void test_kernels_cpu__round_bf16(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    enum { N = 4096 };
    float x[N], want[N];
    uint64_t s = 7;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;    /* exact ties */
        memcpy(&x[i], &u, 4);
        if (isnan(x[i]) || isinf(x[i])) x[i] = 1.5f;
        want[i] = bf16_nearest(x[i]);
    }
    assert_int_equal(kb->iface->round_bf16(kb, x, N, &err), 0);
    for (int i = 0; i < N; i++) assert_true(x[i] == want[i] || (x[i] == 0 && want[i] == 0));
    float nanv = NAN;
    assert_int_equal(kb_round_bf16(kb, &nanv, 1, &err), 0);
    assert_true(isnan(nanv));
}

/* ---- SLiM pruning and quantization ops ---- */

/* N:M (m > 0) or unstructured per-row (m == 0, k pruned per row) with metric |w| * sqrt(s) (or
** |w|): the reference ranks each entry in its group (N:M) or row by (metric, column) in double,
** so equal metrics prune the lower column first; -0 ties with +0. Ties are built in by repeating
** |w| and scaler values. */
static void prune_case(struct kbackend *kb, int d_out, int d_in, int n, int m, int k, bool wanda)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t sz = (size_t)d_out * d_in;
    float *w = rand_vec(sz), *w0 = malloc(sz * sizeof *w), *s = rand_vec(d_in);
    uint8_t *mask = malloc(sz);
    assert_non_null(w0);
    assert_non_null(mask);
    for (int c = 0; c < d_in; c++) s[c] = fabsf(s[c]) + 0.01f;
    for (size_t i = 0; i < sz; i += 7) w[i + 1 < sz ? i + 1 : i] = -w[i];   /* equal |w| in a group */
    for (size_t i = 0; !m && i + 3 < sz; i += 5) w[i + 3] = -w[i];          /* and across a row */
    for (size_t i = 2; !m && i < sz; i += 11) w[i] = i % 2 ? -0.0f : 0.0f;
    if (wanda) for (int c = 1; c < d_in; c += 5) s[c] = s[c - 1];
    memcpy(w0, w, sz * sizeof *w);
    memset(mask, 0xee, sz);
    if (m) assert_int_equal(kb->iface->prune_nm(kb, w, mask, wanda ? s : NULL, d_out, d_in, n, m, &err), 0);
    else assert_int_equal(kb->iface->prune_rows(kb, w, mask, wanda ? s : NULL, d_out, d_in, k, &err), 0);
    int span = m ? m : d_in, drop = m ? m - n : k;
    for (int r = 0; r < d_out; r++) {
        int pruned_in_row = 0;
        for (int c = 0; c < d_in; c++) {
            size_t i = (size_t)r * d_in + c;
            int g0 = c / span * span, before = 0;
            double mi = fabs((double)w0[i]) * (wanda ? sqrt((double)s[c]) : 1);
            for (int j = g0; j < g0 + span; j++) {
                double mj = fabs((double)w0[(size_t)r * d_in + j]) * (wanda ? sqrt((double)s[j]) : 1);
                before += mj < mi || (mj == mi && j < c);
            }
            int pruned = before < drop;
            assert_int_equal(mask[i], pruned);
            assert_true(w[i] == (pruned ? 0.0f : w0[i]));
            pruned_in_row += pruned;
        }
        assert_int_equal(pruned_in_row, m ? d_in / m * drop : k);
    }
    free(w); free(w0); free(s); free(mask);
}

static void test_kernels_cpu__prune_nm(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    prune_case(kb, 5, 24, 2, 4, 0, false);
    prune_case(kb, 7, 40, 2, 4, 0, true);
    prune_case(kb, 3, 64, 3, 8, 0, true);
    prune_case(kb, 2, 32, 1, 16, 0, true);
    float w[6] = { 0 };
    uint8_t mk[6];
    assert_int_equal(kb->iface->prune_nm(kb, w, mk, NULL, 1, 6, 2, 4, &err), -SLM_EINVAL);
}

static int float_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void test_kernels_cpu__prune_rows_abs_kth_count_zeros(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    prune_case(kb, 6, 40, 0, 0, 20, false);
    prune_case(kb, 5, 37, 0, 0, 13, true);
    prune_case(kb, 3, 16, 0, 0, 0, true);
    prune_case(kb, 3, 16, 0, 0, 16, true);
    float w[6] = { 0 };
    uint8_t mk[6];
    assert_int_equal(kb->iface->prune_rows(kb, w, mk, NULL, 1, 6, 7, &err), -SLM_EINVAL);

    /* abs_kth against a sort of |a|; prune_abs_le and count_zeros against loops here */
    enum { N = 1001 };
    float *a = rand_vec(N), sorted[N], kth;
    for (int i = 0; i < N; i += 9) a[i + 1 < N ? i + 1 : i] = -a[i];
    a[5] = -0.0f;
    a[6] = 0.0f;
    for (int i = 0; i < N; i++) sorted[i] = fabsf(a[i]);
    qsort(sorted, N, sizeof *sorted, float_cmp);
    const size_t ks[] = { 0, 1, 2, 500, 777, N - 1 };
    for (size_t t = 0; t < sizeof ks / sizeof *ks; t++) {
        kth = -1;
        assert_int_equal(kb->iface->abs_kth(kb, &kth, a, N, ks[t], &err), 0);
        assert_true(kth == sorted[ks[t]]);
        assert_false(signbit(kth));
    }
    assert_int_equal(kb->iface->abs_kth(kb, &kth, a, N, N, &err), -SLM_EINVAL);
    float b[N];
    uint8_t m[N];
    uint64_t z = 99;
    memcpy(b, a, sizeof b);
    assert_int_equal(kb->iface->prune_abs_le(kb, b, m, N, sorted[400], &err), 0);
    int np = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(m[i], fabsf(a[i]) <= sorted[400]);
        assert_true(b[i] == (m[i] ? 0.0f : a[i]));
        np += m[i];
    }
    assert_int_equal(np, 401);
    assert_int_equal(kb->iface->count_zeros(kb, &z, b, N, &err), 0);
    assert_int_equal(z, 401);
    assert_int_equal(kb->iface->count_zeros(kb, &z, a, N, &err), 0);
    assert_int_equal(z, 2);
    free(a);
}

static void test_kernels_cpu__absmax_groups_and_range(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    enum { R = 12, C = 20 };
    float *w = rand_vec(R * C), amax[R * C], lo_hi[2];
    w[7] = NAN;   /* ignored, as fmaxf does */
    const int shapes[][2] = { { R, C }, { 1, C }, { 4, 1 }, { 1, 5 }, { 3, 2 } };
    for (int k = 0; k < 5; k++) {
        int gr = shapes[k][0], gc = shapes[k][1], cols = C / gc;
        assert_int_equal(kb->iface->absmax_groups(kb, amax, w, R, C, gr, gc, &err), 0);
        for (int g = 0; g < (R / gr) * cols; g++) {
            double want = 0;
            for (int r = g / cols * gr; r < (g / cols + 1) * gr; r++)
                for (int c = g % cols * gc; c < (g % cols + 1) * gc; c++)
                    if (!isnan(w[r * C + c])) want = fmax(want, fabs((double)w[r * C + c]));
            assert_true(amax[g] == (float)want);
        }
    }
    assert_int_equal(kb->iface->absmax_groups(kb, amax, w, R, C, 5, 1, &err), -SLM_ESHAPE);
    assert_int_equal(kb->iface->abs_range(kb, lo_hi, w, R * C, &err), 0);
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < R * C; i++)
        if (!isnan(w[i])) { lo = fmin(lo, fabs((double)w[i])); hi = fmax(hi, fabs((double)w[i])); }
    assert_true(lo_hi[0] == (float)lo && lo_hi[1] == (float)hi);
    free(w);
}

/* Every |a| lands in the bin k with edge[k] <= |a| < edge[k + 1] (the last bin also holds hi).
** Values are put exactly on edges and just below them, where the f32 estimate can be off by one. */
static void test_kernels_cpu__abs_histogram(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    enum { N = 5000, NB = 37 };
    float *a = rand_vec(N), edge[NB + 1], lo_hi[2];
    uint64_t counts[NB], want[NB] = { 0 };
    assert_int_equal(kb->iface->abs_range(kb, lo_hi, a, N, &err), 0);
    float lo = lo_hi[0], hi = lo_hi[1];
    for (int k = 0; k <= NB; k++) edge[k] = lo + (hi - lo) * ((float)k / (float)NB);
    edge[NB] = hi;
    for (int i = 0; i < 2 * NB; i++) a[i] = i % 2 ? edge[i / 2] : nextafterf(edge[i / 2 + 1], 0);
    for (int i = 0; i < N; i++) {
        float v = fabsf(a[i]);
        int k = 0;
        while (k < NB - 1 && v >= edge[k + 1]) k++;
        want[k]++;
    }
    for (int k = 0; k < NB; k++) counts[k] = 1;   /* the op adds */
    assert_int_equal(kb->iface->abs_histogram(kb, counts, a, N, lo, hi, edge, NB, &err), 0);
    for (int k = 0; k < NB; k++) assert_true(counts[k] == want[k] + 1);
    free(a);
}

/* SLiM-Quant's search as ALGORITHMS.md §3.3 writes it, one thread, the op's f32 terms summed in
** f64: the 11-slot coarse lists (unused: loss +inf, index 0), the first minimum of each list. */
static float ref_slim_search(const uint64_t *counts, const float *edge, int nb, size_t n, int bits)
{
    float *pdf = malloc(sizeof *pdf * nb), *val = malloc(sizeof *val * nb);
    assert_true(pdf && val);
    for (int k = 0; k < nb; k++) {
        pdf[k] = (float)((double)counts[k] / ((double)n * (double)(edge[k + 1] - edge[k])));
        val[k] = (edge[k] + edge[k + 1]) / 2;
    }
    float dx = val[1] - val[0];
    int st = nb / 10, I[11] = { 0 }, t = 0;
    double L[11];
    for (int j = 0; j < 11; j++) {
        L[j] = INFINITY;
        if (j * st >= nb) continue;
        I[j] = j * st;
        float a = val[I[j]], step = a / (float)(1 << bits);
        double e = 0;
        for (int k = 0; k < nb; k++) {
            float d = k < I[j] ? val[k] - floorf(val[k] / step) * step : val[k] - a;
            e += (double)(pdf[k] * d * d * dx);
        }
        L[j] = e;
    }
    for (int j = 1; j < 11; j++)
        if (L[j] < L[t]) t = j;
    int lo = I[t > 0 ? t - 1 : 0], hi = I[t + 1 < 10 ? t + 1 : 10], best = 0;
    double bl = INFINITY;
    for (int i = lo; i < hi; i++) {
        float a = val[i], step = a / (float)(1 << bits);
        double e = 0;
        for (int k = 0; k < nb; k++) {
            float d = k < i ? val[k] - floorf(val[k] / step) * step : val[k] - a;
            e += (double)(pdf[k] * d * d * dx);
        }
        if (e < bl) { bl = e; best = i; }
    }
    float alpha = val[best];
    free(pdf);
    free(val);
    return alpha;
}

/* The search op against the reference on histograms of bell-shaped values with an outlier (bin
** counts of real sizes, 10- and 11-point coarse grids), a uniform histogram whose best coarse point
** is the last of 10 (the reference's empty fine range: bin 0), and bad arguments. */
static void test_kernels_cpu__slim_search(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int nbs[] = { 2, 7, 20, 512, 589, 2359, 20000 };
    for (size_t c = 0; c < sizeof nbs / sizeof *nbs; c++) {
        int nb = nbs[c];
        size_t n = 0;
        float *edge = malloc(sizeof *edge * (nb + 1));
        uint64_t *counts = calloc(nb, sizeof *counts);
        assert_true(edge && counts);
        for (int k = 0; k <= nb; k++) edge[k] = 0.5f * ((float)k / (float)nb);
        for (int i = 0; i < 50 * nb; i++) {   /* |sum of 3 uniforms| / 6: a bell's half in [0, 0.5) */
            float v = fabsf(frand() + frand() + frand()) / 6;
            int k = (int)(v / 0.5f * nb);
            counts[k < nb ? k : nb - 1]++;
            n++;
        }
        counts[nb - 1]++;   /* the outlier at the top */
        n++;
        for (int bits = 2; bits <= 8; bits += 2) {
            float a = NAN;
            assert_int_equal(kb->iface->slim_search(kb, &a, counts, edge, nb, n, bits, &err), 0);
            float want = ref_slim_search(counts, edge, nb, n, bits);
            assert_memory_equal(&a, &want, sizeof a);
            if (nb >= 512 && bits <= 4) assert_true(a > 0.25f && a < 0.45f);   /* clips the tail, not the bulk */
        }
        free(edge);
        free(counts);
    }
    enum { NB = 20 };
    float edge[NB + 1], a = NAN;
    uint64_t counts[NB];
    for (int k = 0; k <= NB; k++) edge[k] = (float)k / NB;
    for (int k = 0; k < NB; k++) counts[k] = 100;
    assert_int_equal(kb->iface->slim_search(kb, &a, counts, edge, NB, 100 * NB, 4, &err), 0);
    assert_true(a == (edge[0] + edge[1]) / 2);
    assert_true(a == ref_slim_search(counts, edge, NB, 100 * NB, 4));
    assert_int_equal(kb->iface->slim_search(kb, &a, counts, edge, 1, 100, 4, &err), -SLM_EINVAL);
    assert_int_equal(kb->iface->slim_search(kb, &a, counts, edge, NB, 0, 4, &err), -SLM_EINVAL);
    assert_int_equal(kb->iface->slim_search(kb, &a, counts, edge, NB, 100, 9, &err), -SLM_EINVAL);
}

/* quant_apply / quant_dequant against the formulas of core/quant.h written out: per-tensor sf
** (round half even of w * sf, value q / sf) and G x 1 group alphas (half toward zero of
** w / alpha * max_q, value q / max_q * alpha), values stored as bf16; the column scale multiplies
** before and divides after. */
static float ref_quant(float w, float s, float cs, int kind, int max_q, float *code)
{
    float x = w * cs, q;
    if (s == 0) { *code = 0; return 0; }
    if (kind == KQ_ALPHA) {
        float t = x / s * (float)max_q;
        q = truncf(t);
        if (fabsf(t - q) > 0.5f) q += t > 0 ? 1 : -1;
    } else {
        q = nearbyintf(x * s);
    }
    q = q < -max_q - 1 ? -max_q - 1 : q > max_q ? max_q : q;
    *code = q + 0.0f;
    float v = kind == KQ_ALPHA ? bf16_nearest(q / (float)max_q * s) : bf16_nearest(q / s);
    return cs != 1.0f ? bf16_nearest(v / cs) : v;
}

static void test_kernels_cpu__quant_apply_dequant(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    enum { R = 8, C = 12 };
    float *w = rand_vec(R * C), w0[R * C], back[R * C], cs[C], alpha[R / 4 * C];
    int8_t codes[R * C];
    for (int c = 0; c < C; c++) cs[c] = c % 5 == 0 ? 2.0f : 1.0f;
    for (int g = 0; g < R / 4 * C; g++) alpha[g] = 0.25f + 0.05f * g;
    alpha[3] = 0;   /* an all-zero group */
    float sf = 7.3f;
    for (int kind = KQ_SF; kind <= KQ_ALPHA; kind++) {
        struct kquant_args q = { kind, 4, false, kind == KQ_SF ? 1 : R / 4, kind == KQ_SF ? 1 : C,
                                 kind == KQ_SF ? R : 4, kind == KQ_SF ? C : 1, kind == KQ_SF ? &sf : alpha, cs };
        memcpy(w0, w, sizeof w0);
        memset(codes, 0x55, sizeof codes);
        assert_int_equal(kb->iface->quant_apply(kb, w0, codes, R, C, &q, &err), 0);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                float code, s = kind == KQ_SF ? sf : alpha[r / 4 * C + c];
                float v = ref_quant(w[r * C + c], s, cs[c], kind, 7, &code);
                assert_int_equal(codes[r * C + c], (int)code);
                assert_true(w0[r * C + c] == v);
            }
        assert_int_equal(kb->iface->quant_dequant(kb, back, codes, R, C, &q, &err), 0);
        assert_memory_equal(back, w0, sizeof back);
        q.rows = 0;
        assert_int_equal(kb->iface->quant_apply(kb, w0, codes, R, C, &q, &err), -SLM_EINVAL);
    }
    free(w);
}

/* Wanda's scaler_row and L2QER's column sums exactly as the pipeline defined them: column by
** column, rows in order, f32 squares and sums, f64 |x| sums. The op must give these bits. */
static void col_stats_ref(float *scaler, double *abssum, const float *x, int rows, int cols, int nseq)
{
    float nn = (float)nseq;
    for (int j = 0; j < cols; j++) {
        float sq = 0;
        for (int t = 0; t < rows; t++) {
            float v = x[(size_t)t * cols + j];
            sq += v * v;
            abssum[j] += fabsf(v);
        }
        scaler[j] = scaler[j] * nn / (nn + 1) + sq / (nn + 1);
    }
}

static void col_stats_case(struct kbackend *kb, int rows, int cols, int nseq)
{
    struct slm_err err = SLM_ERR_INIT;
    float *sc = calloc((size_t)cols, sizeof *sc), *sc_ref = calloc((size_t)cols, sizeof *sc_ref);
    double *as = calloc((size_t)cols, sizeof *as), *as_ref = calloc((size_t)cols, sizeof *as_ref);
    assert_true(sc && sc_ref && as && as_ref);
    for (int s = 0; s < nseq; s++) {
        float *x = rand_vec((size_t)rows * cols);
        for (size_t i = 0; i < (size_t)rows * cols; i += 7) x[i] *= 1000;   /* outliers, as activations have */
        col_stats_ref(sc_ref, as_ref, x, rows, cols, s);
        assert_int_equal(kb_col_stats(kb, sc, as, x, rows, cols, s, &err), 0);
        free(x);
    }
    assert_memory_equal(sc, sc_ref, sizeof *sc * cols);
    assert_memory_equal(as, as_ref, sizeof *as * cols);
    free(sc); free(sc_ref); free(as); free(as_ref);
}


static void test_kernels_cpu__col_stats_bit_exact(void **state)
{
    struct kbackend *kb = *state;
    col_stats_case(kb, 37, 150, 3);     /* a partial column strip */
    col_stats_case(kb, 1, 64, 2);
    col_stats_case(kb, 2048, 8200, 1);  /* above the threshold where the op runs on OpenMP threads */
    /* a backend without the op: kb_col_stats' host round trip gives the same bits */
    struct kbackend_i iface = *kb->iface;
    iface.col_stats = NULL;
    struct kbackend bare = { kb->api_version, &iface, kb->ctx };
    col_stats_case(&bare, 19, 70, 4);
}

/* apply_mask: +0 where the byte is non-zero, the value's bits elsewhere; the wrapper says when a
** backend lacks the op. */
static void test_kernels_cpu__apply_mask(void **state)
{
    struct kbackend *kb = *state;
    struct slm_err err = SLM_ERR_INIT;
    float w[8] = { 1.5f, -0.0f, -2.0f, NAN, -0.0f, 3.0f, NAN, -7.0f };
    const uint8_t mask[8] = { 0, 1, 255, 0, 0, 2, 1, 0 };
    const float want[8] = { 1.5f, 0.0f, 0.0f, NAN, -0.0f, 0.0f, 0.0f, -7.0f };
    assert_int_equal(kb_apply_mask(kb, w, mask, 8, &err), 0);
    for (int i = 0; i < 8; i++) {
        assert_true(isnan(want[i]) ? isnan(w[i]) : w[i] == want[i]);
        assert_int_equal(!!signbit(w[i]), !!signbit(want[i]));
    }
    struct kbackend_i iface = *kb->iface;
    iface.apply_mask = NULL;
    struct kbackend bare = { kb->api_version, &iface, kb->ctx };
    assert_int_equal(kb_apply_mask(&bare, w, mask, 8, &err), -SLM_EUNSUPPORTED);
}

/* cpu-discrete: the ops work on its memory, host code touching it faults (in a child process),
** sizes past its arena and over its budget fail cleanly, and reused spans keep the accounting. */
static void test_kernels_cpu__discrete_backend_walls_its_memory(void **state)
{
    (void)state;
    struct kbackend *d;
    struct slm_err err = SLM_ERR_INIT;
    struct kmem_stats st;
    assert_int_equal(kbackend_open(&d, "cpu-discrete", &err), 0);
    assert_string_equal(kb_name(d), "cpu-discrete");
    float h[6] = { 1, 2, 3, 4, 5, 6 }, g[6], *a = NULL, *b = NULL;
    assert_int_equal(kb_alloc(d, (void **)&a, sizeof h, &err), 0);
    assert_int_equal(kb_upload(d, a, h, sizeof h, &err), 0);
    assert_int_equal(d->iface->scale(d, a, 2.0f, 6, &err), 0);
    assert_int_equal(kb_download(d, g, a, sizeof g, &err), 0);
    for (int i = 0; i < 6; i++) assert_true(g[i] == 2 * h[i]);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {   /* the child reads backend memory from host code: must die of SIGSEGV */
        signal(SIGSEGV, SIG_DFL);   /* not cmocka's handler (ASan's may still report and exit 1) */
        volatile float v = a[0];
        (void)v;
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true((WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) || (WIFEXITED(status) && WEXITSTATUS(status) != 0));
    assert_int_equal(kb_alloc(d, (void **)&b, (size_t)1 << 42, &err), -SLM_ENOMEM);
    kb_release(d, a);
    assert_int_equal(kb_alloc(d, (void **)&a, 3 * sizeof(float), &err), 0);   /* reuses the span */
    assert_int_equal(kb_mem_stats(d, &st, false, &err), 0);
    assert_true(st.in_use == 3 * sizeof(float) && st.device_total == -1);
    assert_int_equal(kbackend_set_limit(d, 100, &err), 0);
    assert_int_equal(kb_alloc(d, (void **)&b, 100, &err), -SLM_ENOMEM);
    assert_int_equal(kbackend_set_limit(d, 0, &err), 0);
    kb_release(d, a);
    kbackend_free(d);
}

/* One misuse of cpu-discrete's ops, each a bug a GPU would answer with an illegal address or with
** another buffer's data: a is a live buffer of 6 floats, gone a released one. */
static void discrete_misuse(int which, struct kbackend *d, float *a, float *gone)
{
    struct slm_err err = SLM_ERR_INIT;
    float host[8] = { 0 };
    struct kgemm_args g = { KB_N, KB_T, 2, 2, 3, 1, 0, a, 3, 0, a, 4 /* row 1 of b past a's end */, 0, host, 2, 0, 1, false };
    switch (which) {
    case 0: d->iface->scale(d, host, 2.0f, 6, &err); break;          /* a host array */
    case 1: d->iface->add(d, a, a, 7, &err); break;                  /* one float past the end */
    case 2: d->iface->scale(d, gone, 2.0f, 1, &err); break;          /* a released buffer */
    case 3: kb_download(d, a, a, 4, &err); break;                    /* into backend memory */
    case 4: kb_upload(d, host, a, 4, &err); break;                   /* onto host memory */
    case 5: g.c = a + 2; d->iface->gemm(d, &g, &err); break;          /* b's second row runs past a */
    case 6:                                                           /* an op on an upload still in flight */
        d->iface->upload_async(d, a, host, 4, &err);
        d->iface->scale(d, a, 2.0f, 6, &err);
        break;
    case 7: d->iface->upload_async(d, a, host, 4, &err); kb_release(d, a); break;   /* its release */
    case 9: {                                                         /* a pinned source changed too early */
        float *pin = NULL;
        kb_host_alloc(d, (void **)&pin, 16, &err);
        memset(pin, 0, 16);
        kb_upload(d, a, pin, 16, &err);
        pin[1] = 1;
        kb_sync(d, &err);
        break;
    }
    case 8: {                                                         /* a buffer newer than the ordering */
        float *fresh = NULL;
        kb_alloc(d, (void **)&fresh, 16, &err);
        d->iface->upload_async(d, fresh, host, 16, &err);
        break;
    }
    default: break;
    }
}

/* cpu-discrete checks every op's arguments (the op, the argument and the cause, then abort) and
** hands out buffers full of NaN, as a GPU hands out whatever was there. */
static void test_kernels_cpu__discrete_backend_checks_op_arguments(void **state)
{
    (void)state;
    struct kbackend *d;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(kbackend_open(&d, "cpu-discrete", &err), 0);
    float h[6] = { 1, 2, 3, 4, 5, 6 }, g[6], *a = NULL, *gone = NULL, *c = NULL;
    assert_int_equal(kb_alloc(d, (void **)&a, sizeof h, &err), 0);
    assert_int_equal(kb_download(d, g, a, sizeof g, &err), 0);
    for (int i = 0; i < 6; i++) assert_true(isnan(g[i]));   /* nobody wrote it */
    assert_int_equal(kb_upload(d, a, h, sizeof h, &err), 0);
    assert_int_equal(kb_alloc(d, (void **)&gone, sizeof h, &err), 0);
    assert_int_equal(kb_upload(d, gone, h, sizeof h, &err), 0);
    /* a legal strided gemm inside a: C [2 x 2] <- A [2 x 2] (rows 3 apart) times B^T, B = A */
    struct kgemm_args ok = { KB_N, KB_T, 2, 2, 2, 1, 0, a, 3, 0, a, 3, 0, NULL, 2, 0, 1, false };
    assert_int_equal(kb_alloc(d, (void **)&c, 4 * sizeof(float), &err), 0);   /* before gone's span is free */
    kb_release(d, gone);
    ok.c = c;
    assert_int_equal(d->iface->gemm(d, &ok, &err), 0);
    assert_int_equal(d->iface->copy_after_queued(d, &err), 0);   /* c may take upload_async from here */
    assert_int_equal(d->iface->upload_async(d, c, h, 4 * sizeof(float), &err), 0);   /* legal once waited for */
    assert_int_equal(d->iface->copy_sync(d, &err), 0);
    assert_int_equal(d->iface->scale(d, c, 1.0f, 4, &err), 0);
    float *pin = NULL;   /* pinned: changing it is fine once a sync or download has passed */
    assert_int_equal(kb_host_alloc(d, (void **)&pin, sizeof h, &err), 0);
    memcpy(pin, h, sizeof h);
    assert_int_equal(kb_upload(d, c, pin, 4 * sizeof(float), &err), 0);
    assert_int_equal(kb_download(d, g, c, 4 * sizeof(float), &err), 0);
    pin[0] = 9;
    assert_int_equal(kb_upload(d, c, pin, 4 * sizeof(float), &err), 0);
    kb_host_free(d, pin);   /* after its upload landed */
    assert_int_equal(kb_download(d, g, c, 4 * sizeof(float), &err), 0);
    assert_true(g[0] == 9 && g[3] == h[3]);
    for (int which = 0; which < 10; which++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            signal(SIGABRT, SIG_DFL);
            freopen("/dev/null", "w", stderr);   /* the message is for a failing test's log, not this one's */
            discrete_misuse(which, d, a, gone);
            _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT)) fail_msg("misuse %d was not refused", which);
    }
    assert_int_equal(kb_alloc(d, (void **)&gone, sizeof h, &err), 0);   /* the released span again */
    assert_int_equal(kb_download(d, g, gone, sizeof g, &err), 0);
    for (int i = 0; i < 6; i++) assert_true(isnan(g[i]));   /* not the 1..6 it held before */
    kb_release(d, gone);
    kb_release(d, c);
    kb_release(d, a);
    kbackend_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_cpu__gemm_all_transposes),
        cmocka_unit_test(test_kernels_cpu__norms),
        cmocka_unit_test(test_kernels_cpu__attention_causal_gqa),
        cmocka_unit_test(test_kernels_cpu__rope_rotate_half),
        cmocka_unit_test(test_kernels_cpu__cross_entropy_and_acts),
        cmocka_unit_test(test_kernels_cpu__factorizations),
        cmocka_unit_test(test_kernels_cpu__round_bf16),
        cmocka_unit_test(test_kernels_cpu__prune_nm),
        cmocka_unit_test(test_kernels_cpu__prune_rows_abs_kth_count_zeros),
        cmocka_unit_test(test_kernels_cpu__absmax_groups_and_range),
        cmocka_unit_test(test_kernels_cpu__abs_histogram),
        cmocka_unit_test(test_kernels_cpu__slim_search),
        cmocka_unit_test(test_kernels_cpu__quant_apply_dequant),
        cmocka_unit_test(test_kernels_cpu__col_stats_bit_exact),
        cmocka_unit_test(test_kernels_cpu__apply_mask),
        cmocka_unit_test(test_kernels_cpu__discrete_backend_walls_its_memory),
        cmocka_unit_test(test_kernels_cpu__discrete_backend_checks_op_arguments),
    };
    return cmocka_run_group_tests_name("kernels/cpu", tests, setup, teardown);
}
