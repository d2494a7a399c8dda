/*
** tests/unit/kernels/cuda.c: every op of the CUDA backend against the CPU backend (the reference)
** on fresh random data. GPU outputs are poisoned with NaN before each run, so an element the
** kernel never writes fails the comparison. Each check is ||gpu - cpu|| / ||cpu|| under the
** tolerance #defined beside its test; factorizations compare invariants (reconstruction, the
** eigen equation, singular values) since vectors are only defined up to sign.
** Exits 77 (skipped) when the build has no CUDA or no device is visible.
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

#include "core/prune.h"
#include "core/quant.h"
#include "kernels/kbackend.h"
#include "kernels/kbackend_impl.h"

struct pair {
    struct kbackend *cpu, *gpu;
};

/* ---- helpers ---- */
static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float frand(void) /* xorshift, uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rand_vec(size_t n)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = frand();
    return v;
}
static float *nan_vec(size_t n)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = NAN;
    return v;
}
/* a device copy of host data (n floats) */
static float *dev_f(struct kbackend *kb, const float *h, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    void *d = NULL;
    assert_int_equal(kb_alloc(kb, &d, (n ? n : 1) * sizeof(float), &err), 0);
    assert_int_equal(kb_upload(kb, d, h, n * sizeof(float), &err), 0);
    return d;
}
/* a device buffer of n floats filled with NaN */
static float *dev_nan(struct kbackend *kb, size_t n)
{
    float *h = nan_vec(n), *d = dev_f(kb, h, n);
    free(h);
    return d;
}
static float *host_of(struct kbackend *kb, const float *d, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    assert_int_equal(kb_download(kb, h, d, n * sizeof(float), &err), 0);
    return h;
}
static double rel_err(const float *out, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(out[i]) || isnan(ref[i])) return INFINITY;
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}
/* SLIM_TEST_VERBOSE=1 prints every measured error, not only failing ones */
static void report(const char *what, double e, double tol)
{
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("SLIM_TEST_VERBOSE") != NULL;
    if (verbose || !(e <= tol)) print_message("  %-40s rel err %.3g (tol %.3g)\n", what, e, tol);
}
/* compare a device result of n floats with the CPU one; prints the error when it fails */
static void expect_close(struct kbackend *gpu, const float *d_out, const float *cpu_out, size_t n, double tol,
                         const char *what)
{
    float *g = host_of(gpu, d_out, n);
    double e = rel_err(g, cpu_out, n);
    report(what, e, tol);
    assert_true(e <= tol);
    free(g);
}

static int setup(void **state)
{
    static struct pair p;
    struct slm_err err = SLM_ERR_INIT;
    if (kbackend_open(&p.cpu, "cpu", &err)) return -1;
    if (kbackend_open(&p.gpu, "cuda", &err)) {
        print_error("cuda backend: %s\n", err.msg);
        return -1;
    }
    *state = &p;
    return 0;
}
static int teardown(void **state)
{
    struct pair *p = *state;
    kbackend_free(p->gpu);
    kbackend_free(p->cpu);
    return 0;
}

/* ---- memory ---- */
static void test_kernels_cuda__memory_pool_and_oom(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    void *a = NULL, *b = NULL;
    assert_int_equal(kb_alloc(p->gpu, &a, 1000, &err), 0);
    kb_release(p->gpu, a);
    assert_int_equal(kb_alloc(p->gpu, &b, 1000, &err), 0); /* same bucket: reused */
    assert_ptr_equal(a, b);
    float h[3] = { 1, 2, 3 }, back[3] = { 0 };
    void *c = NULL;
    assert_int_equal(kb_alloc(p->gpu, &c, sizeof h, &err), 0);
    assert_int_equal(kb_upload(p->gpu, b, h, sizeof h, &err), 0);
    assert_int_equal(p->gpu->iface->copy(p->gpu, c, b, sizeof h, &err), 0);
    assert_int_equal(kb_download(p->gpu, back, c, sizeof h, &err), 0);
    assert_memory_equal(h, back, sizeof h);
    kb_release(p->gpu, b);
    kb_release(p->gpu, c);
    void *huge = NULL;
    size_t n = (size_t)1 << 50; /* 1 PiB */
    assert_int_equal(kb_alloc(p->gpu, &huge, n, &err), -SLM_ENOMEM);
    char want[64];
    snprintf(want, sizeof want, "%zu bytes", n);
    assert_non_null(strstr(err.msg, want));
}

/* ---- GEMM ---- */
#define TOL_GEMM 1e-5
static void gemm_case_ex(struct pair *p, int m, int n, int k, int batch, int ta, int tb, int pad, float beta,
                         int share_b, bool bf16)
{
    struct slm_err err = SLM_ERR_INIT;
    int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    int64_t sa = (int64_t)(ta ? k : m) * lda, sb = share_b ? 0 : (int64_t)(tb ? n : k) * ldb, sc = (int64_t)m * ldc;
    size_t na = (size_t)sa * batch, nb = share_b ? (size_t)(tb ? n : k) * ldb : (size_t)sb * batch,
           nc = (size_t)sc * batch;
    float *a = rand_vec(na), *b = rand_vec(nb), *c = rand_vec(nc);
    if (bf16) {   /* bf16-valued inputs: the GPU may take TF32 tensor cores, exact for them */
        kcpu_round_bf16(a, na);
        kcpu_round_bf16(b, nb);
    }
    float *da = dev_f(p->gpu, a, na), *db = dev_f(p->gpu, b, nb);
    float *dc = beta != 0 ? dev_f(p->gpu, c, nc) : dev_nan(p->gpu, nc);
    struct kgemm_args g = {
        .ta = ta, .tb = tb, .m = m, .n = n, .k = k, .alpha = 0.75f, .beta = beta,
        .a = a, .lda = lda, .stride_a = sa, .b = b, .ldb = ldb, .stride_b = sb,
        .c = c, .ldc = ldc, .stride_c = sc, .batch = batch, .bf16_inputs = bf16,
    };
    assert_int_equal(p->cpu->iface->gemm(p->cpu, &g, &err), 0);
    g.a = da; g.b = db; g.c = dc;
    assert_int_equal(p->gpu->iface->gemm(p->gpu, &g, &err), 0);
    /* padding columns of C are neither written nor compared: copy them over from the CPU side */
    float *gc = host_of(p->gpu, dc, nc);
    for (size_t i = 0; i < nc; i++)
        if ((int)(i % ldc) >= n) gc[i] = c[i];
    char what[96];
    snprintf(what, sizeof what, "gemm%s m=%d n=%d k=%d b=%d ta=%d tb=%d", bf16 ? " bf16-inputs" : "", m, n, k, batch,
             ta, tb);
    double e = rel_err(gc, c, nc);
    report(what, e, TOL_GEMM);
    assert_true(e <= TOL_GEMM);
    free(gc);
    kb_release(p->gpu, da); kb_release(p->gpu, db); kb_release(p->gpu, dc);
    free(a); free(b); free(c);
}

static void gemm_case(struct pair *p, int m, int n, int k, int batch, int ta, int tb, int pad, float beta, int share_b)
{
    gemm_case_ex(p, m, n, k, batch, ta, tb, pad, beta, share_b, false);
}

/* bf16_inputs (TF32 tensor cores on the GPU) must stay within the plain f32 tolerance: bf16 values
** are exact in TF32, so only the summation differs. A path that rounded inputs to TF32 badly, or
** used bf16/fp16 arithmetic, would miss it by orders of magnitude. */
static void test_kernels_cuda__gemm_bf16_inputs_matches_cpu(void **state)
{
    struct pair *p = *state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case_ex(p, 37, 29, 41, 3, ta, tb, 0, 0.0f, 0, true);
            gemm_case_ex(p, 130, 257, 67, 1, ta, tb, 5, 0.5f, 0, true);
        }
    gemm_case_ex(p, 2048, 1024, 4096, 1, 0, 1, 0, 0.0f, 0, true);   /* a LLaMA linear's inner size */
}

static void test_kernels_cuda__gemm_matches_cpu(void **state)
{
    struct pair *p = *state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(p, 1, 1, 1, 1, ta, tb, 0, 0.0f, 0);
            gemm_case(p, 37, 29, 41, 3, ta, tb, 0, 0.0f, 0);
            gemm_case(p, 130, 257, 67, 1, ta, tb, 5, 0.0f, 0);
            gemm_case(p, 64, 96, 300, 4, ta, tb, 3, 0.5f, 1);
        }
    gemm_case(p, 513, 768, 768, 1, 0, 1, 0, 1.0f, 0); /* the nn.Linear shape, accumulating */
}

/* ---- norms ---- */
#define TOL_NORM 1e-5
static void test_kernels_cuda__norms_match_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int shapes[][2] = { { 1, 1 }, { 7, 50 }, { 33, 768 }, { 3, 4097 } };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        size_t n = (size_t)rows * cols;
        float *x = rand_vec(n), *w = rand_vec(cols), *b = rand_vec(cols), *y = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) x[i] = x[i] * 3 + 0.5f; /* a mean away from 0 */
        float *dx = dev_f(p->gpu, x, n), *dw = dev_f(p->gpu, w, cols), *db = dev_f(p->gpu, b, cols);
        for (int variant = 0; variant < 2; variant++) {
            const float *cw = variant ? NULL : w, *cb = variant ? NULL : b;
            const float *gw = variant ? NULL : dw, *gb = variant ? NULL : db;
            float *dy = dev_nan(p->gpu, n);
            assert_int_equal(p->cpu->iface->layernorm(p->cpu, y, x, cw, cb, rows, cols, 1e-5f, &err), 0);
            assert_int_equal(p->gpu->iface->layernorm(p->gpu, dy, dx, gw, gb, rows, cols, 1e-5f, &err), 0);
            char what[64];
            snprintf(what, sizeof what, "layernorm %dx%d%s", rows, cols, variant ? " no affine" : "");
            expect_close(p->gpu, dy, y, n, TOL_NORM, what);
            kb_release(p->gpu, dy);
            dy = dev_nan(p->gpu, n);
            float div = variant ? 64.0f : (float)cols; /* SliceGPT's divisor, then the normal one */
            assert_int_equal(p->cpu->iface->rmsnorm(p->cpu, y, x, cw, rows, cols, div, 1e-6f, &err), 0);
            assert_int_equal(p->gpu->iface->rmsnorm(p->gpu, dy, dx, gw, rows, cols, div, 1e-6f, &err), 0);
            snprintf(what, sizeof what, "rmsnorm %dx%d div=%g", rows, cols, (double)div);
            expect_close(p->gpu, dy, y, n, TOL_NORM, what);
            kb_release(p->gpu, dy);
        }
        /* in place (y == x) */
        float *dxi = dev_f(p->gpu, x, n);
        assert_int_equal(p->cpu->iface->layernorm(p->cpu, y, x, w, b, rows, cols, 1e-5f, &err), 0);
        assert_int_equal(p->gpu->iface->layernorm(p->gpu, dxi, dxi, dw, db, rows, cols, 1e-5f, &err), 0);
        expect_close(p->gpu, dxi, y, n, TOL_NORM, "layernorm in place");
        kb_release(p->gpu, dxi);
        kb_release(p->gpu, dx); kb_release(p->gpu, dw); kb_release(p->gpu, db);
        free(x); free(w); free(b); free(y);
    }
}

/* ---- element-wise ---- */
#define TOL_ELTWISE 1e-6
static void test_kernels_cuda__elementwise_match_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const size_t sizes[] = { 1, 1000, 100003 };
    for (size_t si = 0; si < 3; si++) {
        size_t n = sizes[si];
        float *x = rand_vec(n), *y0 = rand_vec(n), *y = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) x[i] *= 6; /* reach the activations' tails */
        float *dx = dev_f(p->gpu, x, n);
        for (int op = 0; op < 3; op++) {
            memcpy(y, y0, n * sizeof(float));
            float *dy = dev_f(p->gpu, y0, n);
            if (op == 0) {
                assert_int_equal(p->cpu->iface->add(p->cpu, y, x, n, &err), 0);
                assert_int_equal(p->gpu->iface->add(p->gpu, dy, dx, n, &err), 0);
            } else if (op == 1) {
                assert_int_equal(p->cpu->iface->mul(p->cpu, y, x, n, &err), 0);
                assert_int_equal(p->gpu->iface->mul(p->gpu, dy, dx, n, &err), 0);
            } else {
                assert_int_equal(p->cpu->iface->scale(p->cpu, y, -1.7f, n, &err), 0);
                assert_int_equal(p->gpu->iface->scale(p->gpu, dy, -1.7f, n, &err), 0);
            }
            expect_close(p->gpu, dy, y, n, TOL_ELTWISE, op == 0 ? "add" : op == 1 ? "mul" : "scale");
            kb_release(p->gpu, dy);
        }
        for (int act = KACT_RELU; act <= KACT_SILU; act++) {
            float *dy = dev_nan(p->gpu, n);
            assert_int_equal(p->cpu->iface->act(p->cpu, y, x, n, act, &err), 0);
            assert_int_equal(p->gpu->iface->act(p->gpu, dy, dx, n, act, &err), 0);
            char what[48];
            snprintf(what, sizeof what, "act %d n=%zu", act, n);
            expect_close(p->gpu, dy, y, n, TOL_ELTWISE, what);
            kb_release(p->gpu, dy);
        }
        assert_int_equal(p->gpu->iface->act(p->gpu, dx, dx, n, (enum kact)99, &err), -SLM_EINVAL);
        kb_release(p->gpu, dx);
        free(x); free(y0); free(y);
    }
    /* add_bias on a strided matrix: the padding columns must stay untouched */
    int rows = 37, cols = 70, ld = 75;
    size_t n = (size_t)rows * ld;
    float *y = rand_vec(n), *bias = rand_vec(cols);
    float *dy = dev_f(p->gpu, y, n), *db = dev_f(p->gpu, bias, cols);
    assert_int_equal(p->cpu->iface->add_bias(p->cpu, y, bias, rows, cols, ld, &err), 0);
    assert_int_equal(p->gpu->iface->add_bias(p->gpu, dy, db, rows, cols, ld, &err), 0);
    expect_close(p->gpu, dy, y, n, TOL_ELTWISE, "add_bias");
    kb_release(p->gpu, dy); kb_release(p->gpu, db);
    free(y); free(bias);
}

/* bf16 emulation: the rounding is exact arithmetic, so GPU and CPU agree bit for bit */
static void test_kernels_cuda__round_bf16_matches_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    size_t n = 100003;
    float *x = rand_vec(n);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u = (u & 0xffff0000u) | 0x8000u;     /* exact ties */
        memcpy(&x[i], &u, 4);
    }
    float *dx = dev_f(p->gpu, x, n);
    assert_int_equal(p->cpu->iface->round_bf16(p->cpu, x, n, &err), 0);
    assert_int_equal(p->gpu->iface->round_bf16(p->gpu, dx, n, &err), 0);
    float *got = host_of(p->gpu, dx, n);
    assert_memory_equal(got, x, n * sizeof *x);
    kb_release(p->gpu, dx);
    free(got);
    free(x);
}

/* ---- RoPE ---- */
#define TOL_ROPE 1e-5
static void rope_case(struct pair *p, int rows, int T, int nh, int hd, int rot, int ld)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t n = (size_t)rows * ld;
    float *x = rand_vec(n), *inv = malloc(sizeof(float) * rot / 2);
    for (int i = 0; i < rot / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / rot);
    float *dx = dev_f(p->gpu, x, n), *dinv = dev_f(p->gpu, inv, rot / 2);
    assert_int_equal(p->cpu->iface->rope(p->cpu, x, rows, ld, T, nh, hd, rot, inv, &err), 0);
    assert_int_equal(p->gpu->iface->rope(p->gpu, dx, rows, ld, T, nh, hd, rot, dinv, &err), 0);
    char what[64];
    snprintf(what, sizeof what, "rope rows=%d T=%d hd=%d rot=%d", rows, T, hd, rot);
    expect_close(p->gpu, dx, x, n, TOL_ROPE, what);
    kb_release(p->gpu, dx); kb_release(p->gpu, dinv);
    free(x); free(inv);
}

static void test_kernels_cuda__rope_matches_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    rope_case(p, 10, 5, 2, 8, 8, 16);
    rope_case(p, 12, 6, 3, 80, 32, 3 * 80 + 7);    /* partial rotation (Phi), padded rows */
    rope_case(p, 4096, 2048, 4, 128, 128, 3 * 512); /* positions up to 2047, fused qkv stride */
    assert_int_equal(p->gpu->iface->rope(p->gpu, NULL, 1, 8, 1, 1, 8, 3, NULL, &err), -SLM_EINVAL);
}

/* ---- attention ---- */
#define TOL_ATTN 1e-5
static void attn_case(struct pair *p, int B, int T, int H, int Hkv, int hd, int fused)
{
    struct slm_err err = SLM_ERR_INIT;
    /* fused: q, k and v live in one [B*T, (H + 2 Hkv) hd] buffer, as after a fused QKV GEMM */
    int qs = fused ? (H + 2 * Hkv) * hd : H * hd, ks = fused ? qs : Hkv * hd, os = H * hd + (fused ? 3 : 0);
    size_t rows = (size_t)B * T;
    float *q = rand_vec(rows * qs), *k = fused ? q + H * hd : rand_vec(rows * ks),
          *v = fused ? q + (H + Hkv) * hd : rand_vec(rows * ks), *o = nan_vec(rows * os);
    for (size_t i = 0; i < rows * qs; i++) q[i] *= 2; /* peakier softmax */
    float *dq = dev_f(p->gpu, q, rows * qs);
    float *dk = fused ? dq + H * hd : dev_f(p->gpu, k, rows * ks);
    float *dv = fused ? dq + (H + Hkv) * hd : dev_f(p->gpu, v, rows * ks);
    float *dout = dev_nan(p->gpu, rows * os);
    float scale = 1.0f / sqrtf((float)hd);
    struct kattn_args a = { o, os, q, qs, k, v, ks, B, T, H, Hkv, hd, scale };
    assert_int_equal(p->cpu->iface->attention(p->cpu, &a, &err), 0);
    struct kattn_args ga = { dout, os, dq, qs, dk, dv, ks, B, T, H, Hkv, hd, scale };
    int rc = p->gpu->iface->attention(p->gpu, &ga, &err);
    if (rc) print_error("attention: %s\n", err.msg);
    assert_int_equal(rc, 0);
    /* compare the H*hd written columns of each row only */
    float *g = host_of(p->gpu, dout, rows * os);
    float *gc = malloc(sizeof(float) * rows * H * hd), *cc = malloc(sizeof(float) * rows * H * hd);
    for (size_t r = 0; r < rows; r++) {
        memcpy(gc + r * H * hd, g + r * os, sizeof(float) * H * hd);
        memcpy(cc + r * H * hd, o + r * os, sizeof(float) * H * hd);
    }
    double e = rel_err(gc, cc, rows * H * hd);
    char what[96];
    snprintf(what, sizeof what, "attention B=%d T=%d H=%d Hkv=%d hd=%d", B, T, H, Hkv, hd);
    report(what, e, TOL_ATTN);
    assert_true(e <= TOL_ATTN);
    kb_release(p->gpu, dq);
    if (!fused) { kb_release(p->gpu, dk); kb_release(p->gpu, dv); free(k); free(v); }
    kb_release(p->gpu, dout);
    free(q); free(o); free(g); free(gc); free(cc);
}

static void test_kernels_cuda__attention_matches_cpu(void **state)
{
    struct pair *p = *state;
    attn_case(p, 1, 1, 1, 1, 8, 0);
    attn_case(p, 2, 300, 4, 2, 64, 0);   /* GQA, T not a multiple of the tiles */
    attn_case(p, 1, 257, 6, 6, 80, 1);   /* Phi's head dim, fused QKV strides */
    attn_case(p, 1, 1000, 8, 1, 128, 0); /* multi-query, LLaMA's head dim */
    attn_case(p, 1, 70, 2, 2, 256, 1);   /* wide heads and ... */
    attn_case(p, 2, 100, 3, 1, 30, 0);   /* ... head dims not a multiple of 4 take the scalar kernel */
    attn_case(p, 1, 2048, 2, 2, 64, 0);  /* OPT's head dim at the evaluation length */
}

/* The same cases through the chunked cuBLAS path (SLIM_CUDA_ATTN=gemm): several query chunks of
** 512 rows at T = 1000 and 2048, GQA batches, fused-QKV strides. */
static void test_kernels_cuda__attention_gemm_path_matches_cpu(void **state)
{
    const char *old = getenv("SLIM_CUDA_ATTN");
    setenv("SLIM_CUDA_ATTN", "gemm", 1);
    test_kernels_cuda__attention_matches_cpu(state);
    attn_case(*state, 2, 1100, 8, 2, 128, 1);   /* two sequences, GQA 4, three chunks */
    if (old) setenv("SLIM_CUDA_ATTN", old, 1);
    else unsetenv("SLIM_CUDA_ATTN");
}

/* The same cases through the register-tiled kernel (SLIM_CUDA_ATTN=tiled): head dims 64 and 128
** take it (partial last query block, GQA, fused-QKV strides, several key tiles), the others fall
** back to the kernels above. */
static void test_kernels_cuda__attention_tiled_path_matches_cpu(void **state)
{
    const char *old = getenv("SLIM_CUDA_ATTN");
    setenv("SLIM_CUDA_ATTN", "tiled", 1);
    test_kernels_cuda__attention_matches_cpu(state);
    attn_case(*state, 2, 1100, 8, 2, 128, 1);   /* two sequences, GQA 4, fused QKV */
    attn_case(*state, 1, 2048, 4, 4, 128, 0);   /* LLaMA's head dim at the evaluation length */
    attn_case(*state, 3, 65, 2, 1, 64, 1);      /* one row past a query block */
    attn_case(*state, 1, 5, 2, 1, 128, 1);      /* one partial query block */
    if (old) setenv("SLIM_CUDA_ATTN", old, 1);
    else unsetenv("SLIM_CUDA_ATTN");
}

/* ---- cross-entropy ---- */
#define TOL_XENT 1e-5
static void test_kernels_cuda__cross_entropy_matches_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int vocabs[] = { 7, 1000, 50272 };
    for (int vi = 0; vi < 3; vi++) {
        int rows = 9, V = vocabs[vi];
        size_t n = (size_t)rows * V;
        float *l = rand_vec(n), nll[9];
        for (size_t i = 0; i < n; i++) l[i] *= 15;
        int32_t tg[9] = { 0, V - 1, -1, 3 % V, -100, 5 % V, V / 2, 1, 2 % V };
        float *dl = dev_f(p->gpu, l, n), *dn = dev_nan(p->gpu, rows);
        void *dt = NULL;
        assert_int_equal(kb_alloc(p->gpu, &dt, sizeof tg, &err), 0);
        assert_int_equal(kb_upload(p->gpu, dt, tg, sizeof tg, &err), 0);
        assert_int_equal(p->cpu->iface->cross_entropy(p->cpu, nll, l, tg, rows, V, &err), 0);
        assert_int_equal(p->gpu->iface->cross_entropy(p->gpu, dn, dl, dt, rows, V, &err), 0);
        char what[48];
        snprintf(what, sizeof what, "cross_entropy vocab=%d", V);
        expect_close(p->gpu, dn, nll, rows, TOL_XENT, what);
        float *g = host_of(p->gpu, dn, rows);
        assert_true(g[2] == 0.0f && g[4] == 0.0f); /* ignored targets */
        free(g);
        kb_release(p->gpu, dl); kb_release(p->gpu, dn); kb_release(p->gpu, dt);
        free(l);
    }
}

/* ---- factorizations ---- */
/* SPD: A = G G^T / n + I, in f32 and f64 */
static void make_spd(int n, float *a, double *ad)
{
    float *g = rand_vec((size_t)n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double v = i == j ? 1.0 : 0.0;
            for (int q = 0; q < n; q++) v += (double)g[(size_t)i * n + q] * g[(size_t)j * n + q] / n;
            a[(size_t)i * n + j] = (float)v;
            if (ad) ad[(size_t)i * n + j] = v;
        }
    free(g);
}

#define TOL_CHOL 1e-5
#define TOL_INV 1e-4
static void test_kernels_cuda__cholesky_and_inverse_match_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int sizes[] = { 1, 12, 100, 257 };
    for (int si = 0; si < 4; si++) {
        int n = sizes[si];
        size_t nn = (size_t)n * n;
        float *a = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
        make_spd(n, a, NULL);
        memcpy(c, a, nn * sizeof(float));
        float *da = dev_f(p->gpu, a, nn);
        assert_int_equal(p->cpu->iface->cholesky_upper(p->cpu, c, n, &err), 0);
        assert_int_equal(p->gpu->iface->cholesky_upper(p->gpu, da, n, &err), 0);
        char what[48];
        snprintf(what, sizeof what, "cholesky_upper n=%d", n);
        expect_close(p->gpu, da, c, nn, TOL_CHOL, what); /* the factor is unique */
        float *g = host_of(p->gpu, da, nn);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) assert_true(g[(size_t)i * n + j] == 0.0f);
        free(g);
        kb_release(p->gpu, da);

        memcpy(c, a, nn * sizeof(float));
        da = dev_f(p->gpu, a, nn);
        assert_int_equal(p->cpu->iface->spd_inverse(p->cpu, c, n, &err), 0);
        assert_int_equal(p->gpu->iface->spd_inverse(p->gpu, da, n, &err), 0);
        snprintf(what, sizeof what, "spd_inverse n=%d", n);
        expect_close(p->gpu, da, c, nn, TOL_INV, what);
        kb_release(p->gpu, da);
        free(a); free(c);
    }
    float neg[4] = { 1, 2, 2, 1 };
    float *dn = dev_f(p->gpu, neg, 4);
    assert_int_equal(p->gpu->iface->cholesky_upper(p->gpu, dn, 2, &err), -SLM_ENUMERIC);
    slm_err_clear(&err);
    assert_int_equal(kb_upload(p->gpu, dn, neg, sizeof neg, &err), 0);
    assert_int_equal(p->gpu->iface->spd_inverse(p->gpu, dn, 2, &err), -SLM_ENUMERIC);
    kb_release(p->gpu, dn);
}

#define TOL_EIG 1e-10
static void test_kernels_cuda__eigh_satisfies_eigen_equation(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int sizes[] = { 1, 12, 100, 300 };
    for (int si = 0; si < 4; si++) {
        int n = sizes[si];
        size_t nn = (size_t)n * n;
        float *af = malloc(nn * sizeof(float));
        double *a = malloc(nn * sizeof(double)), *v = malloc(nn * sizeof(double)), *w = malloc(n * sizeof(double)),
               *wc = malloc(n * sizeof(double)), *vc = malloc(nn * sizeof(double)), *gw = malloc(n * sizeof(double));
        make_spd(n, af, a);
        for (size_t i = 0; i < nn; i++) a[i] -= (i % (n + 1) == 0) ? 1.5 : 0; /* indefinite: some negative eigenvalues */
        memcpy(vc, a, nn * sizeof(double));
        assert_int_equal(p->cpu->iface->eigh_f64(p->cpu, vc, wc, n, &err), 0);
        void *dv = NULL, *dw = NULL;
        assert_int_equal(kb_alloc(p->gpu, &dv, nn * sizeof(double), &err), 0);
        assert_int_equal(kb_alloc(p->gpu, &dw, n * sizeof(double), &err), 0);
        assert_int_equal(kb_upload(p->gpu, dv, a, nn * sizeof(double), &err), 0);
        assert_int_equal(p->gpu->iface->eigh_f64(p->gpu, dv, dw, n, &err), 0);
        assert_int_equal(kb_download(p->gpu, v, dv, nn * sizeof(double), &err), 0);
        assert_int_equal(kb_download(p->gpu, gw, dw, n * sizeof(double), &err), 0);
        double amax = 0, werr = 0, wn = 0, rerr = 0, oerr = 0;
        for (int i = 0; i < n; i++) {
            amax = fmax(amax, fabs(wc[i]));
            werr += (gw[i] - wc[i]) * (gw[i] - wc[i]);
            wn += wc[i] * wc[i];
            if (i) assert_true(gw[i] >= gw[i - 1]);
        }
        assert_true(sqrt(werr / wn) < TOL_EIG);
        for (int c = 0; c < n; c++) /* A v_c = w_c v_c with v_c the c-th COLUMN; V^T V = I */
            for (int i = 0; i < n; i++) {
                double av = 0, vv = 0;
                for (int q = 0; q < n; q++) {
                    av += a[(size_t)i * n + q] * v[(size_t)q * n + c];
                    vv += v[(size_t)q * n + i] * v[(size_t)q * n + c];
                }
                rerr = fmax(rerr, fabs(av - gw[c] * v[(size_t)i * n + c]));
                oerr = fmax(oerr, fabs(vv - (i == c)));
            }
        char what[64];
        snprintf(what, sizeof what, "eigh n=%d eigenvalues", n);
        report(what, sqrt(werr / wn), TOL_EIG);
        snprintf(what, sizeof what, "eigh n=%d max|Av-wv|/max|w|/n", n);
        report(what, rerr / amax / n, TOL_EIG);
        snprintf(what, sizeof what, "eigh n=%d max|V^TV-I|/n", n);
        report(what, oerr / n, TOL_EIG);
        assert_true(rerr < TOL_EIG * amax * n);
        assert_true(oerr < TOL_EIG * n);
        kb_release(p->gpu, dv); kb_release(p->gpu, dw);
        free(af); free(a); free(v); free(w); free(wc); free(vc); free(gw);
    }
}

#define TOL_SVD 1e-5
static void test_kernels_cuda__svd_reconstructs(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int shapes[][2] = { { 1, 1 }, { 12, 12 }, { 30, 70 }, { 70, 30 }, { 200, 513 }, { 513, 200 } };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int m = shapes[si][0], n = shapes[si][1], r = m < n ? m : n;
        float *a = rand_vec((size_t)m * n), *u = malloc(sizeof(float) * m * r), *s = malloc(sizeof(float) * r),
              *vt = malloc(sizeof(float) * r * n);
        float *da = dev_f(p->gpu, a, (size_t)m * n), *du = dev_nan(p->gpu, (size_t)m * r), *ds = dev_nan(p->gpu, r),
              *dvt = dev_nan(p->gpu, (size_t)r * n);
        assert_int_equal(p->cpu->iface->svd(p->cpu, a, m, n, u, s, vt, &err), 0);
        int rc = p->gpu->iface->svd(p->gpu, da, m, n, du, ds, dvt, &err);
        if (rc) print_error("svd: %s\n", err.msg);
        assert_int_equal(rc, 0);
        expect_close(p->gpu, ds, s, r, TOL_SVD, "svd singular values");
        float *gu = host_of(p->gpu, du, (size_t)m * r), *gs = host_of(p->gpu, ds, r),
              *gvt = host_of(p->gpu, dvt, (size_t)r * n), *rec = malloc(sizeof(float) * m * n);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double v = 0;
                for (int q = 0; q < r; q++) v += (double)gu[(size_t)i * r + q] * gs[q] * gvt[(size_t)q * n + j];
                rec[(size_t)i * n + j] = (float)v;
            }
        double e = rel_err(rec, a, (size_t)m * n);
        char what[64];
        snprintf(what, sizeof what, "svd %dx%d reconstruction", m, n);
        report(what, e, TOL_SVD);
        assert_true(e <= TOL_SVD);
        double oe = 0; /* U^T U = I */
        for (int c1 = 0; c1 < r; c1++)
            for (int c2 = 0; c2 < r; c2++) {
                double d = 0;
                for (int i = 0; i < m; i++) d += (double)gu[(size_t)i * r + c1] * gu[(size_t)i * r + c2];
                oe = fmax(oe, fabs(d - (c1 == c2)));
            }
        assert_true(oe < 1e-4);
        kb_release(p->gpu, da); kb_release(p->gpu, du); kb_release(p->gpu, ds); kb_release(p->gpu, dvt);
        free(a); free(u); free(s); free(vt); free(gu); free(gs); free(gvt); free(rec);
    }
}

/* Gram matrix in f64: both sides form exact f64 products of f32 inputs and sum them in f64 in
** different orders, so the upper triangles agree to f64 rounding; the lower triangle must stay
** as it was (NaN-poisoned here). Accumulates onto a non-zero start; row counts cross the chunk. */
#define TOL_GRAM 1e-12
static void test_kernels_cuda__gram_f64_matches_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const int shapes[][2] = { { 1, 1 }, { 7, 5 }, { 300, 64 }, { 2048, 96 }, { 100, 513 } };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int rows = shapes[si][0], n = shapes[si][1];
        size_t nn = (size_t)n * n;
        float *x = rand_vec((size_t)rows * n);
        double *c0 = malloc(nn * sizeof *c0), *cc = malloc(nn * sizeof *cc), *cg = malloc(nn * sizeof *cg);
        assert_true(c0 && cc && cg);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) c0[(size_t)i * n + j] = j >= i ? 0.25 * (i + j) : NAN;
        memcpy(cc, c0, nn * sizeof *cc);
        assert_int_equal(p->cpu->iface->gram_f64(p->cpu, cc, x, rows, n, &err), 0);
        float *dx = dev_f(p->gpu, x, (size_t)rows * n);
        void *dc = NULL;
        assert_int_equal(kb_alloc(p->gpu, &dc, nn * sizeof *c0, &err), 0);
        assert_int_equal(kb_upload(p->gpu, dc, c0, nn * sizeof *c0, &err), 0);
        int rc = p->gpu->iface->gram_f64(p->gpu, dc, dx, rows, n, &err);
        if (rc) print_error("gram_f64: %s\n", err.msg);
        assert_int_equal(rc, 0);
        assert_int_equal(kb_download(p->gpu, cg, dc, nn * sizeof *cg, &err), 0);
        double num = 0, den = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                size_t k = (size_t)i * n + j;
                if (j < i) { assert_true(isnan(cg[k])); continue; }
                num += (cg[k] - cc[k]) * (cg[k] - cc[k]);
                den += cc[k] * cc[k];
            }
        char what[64];
        snprintf(what, sizeof what, "gram_f64 %dx%d", rows, n);
        report(what, sqrt(num / den), TOL_GRAM);
        assert_true(sqrt(num / den) <= TOL_GRAM);
        kb_release(p->gpu, dx); kb_release(p->gpu, dc);
        free(x); free(c0); free(cc); free(cg);
    }
}

/* ---- SparseGPT's block loop ----
** sparsegpt_block on both backends from the same W, Hinv block and steps. The kernel rounds every
** operation as the CPU does, so masks, W and Err are expected to agree exactly; the tolerances
** leave room only for a rare metric tie broken differently, which changes one row's later columns. */
#define SGPT_TOL 1e-5          /* ||gpu - cpu|| / ||cpu|| of W (block columns) and Err */
#define SGPT_MASK_TOL 1e-3     /* fraction of mask bytes that may differ */
#define SGPT_METRIC_TOL 0      /* w^2 / d^2 is two rounded products and a rounded quotient: exact */
static int float_cmp(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}
struct sgpt_case { const char *what; int rows, cols, i1, i2, n, m, bits, group; double sparsity; };

static void sgpt_case_run(struct pair *p, const struct sgpt_case *k)
{
    struct slm_err err = SLM_ERR_INIT;
    int R = k->rows, C = k->cols, cnt = k->i2 - k->i1, ng = k->group > 0 ? (C + k->group - 1) / k->group : 1;
    size_t nstep = k->group > 0 ? (size_t)R * ng : k->group == -1 ? (size_t)R : 1, nb = (size_t)R * cnt;
    float *W = rand_vec((size_t)R * C), *H = calloc((size_t)C * C, sizeof *H), *step = rand_vec(nstep);
    assert_non_null(H);
    for (int a = 0; a < C; a++)
        for (int b = a; b < C; b++) H[(size_t)a * C + b] = a == b ? 1.0f + 0.5f * frand() : 0.02f * frand();
    for (size_t i = 0; i < nstep; i++) step[i] = 0.1f + 0.05f * frand();
    float *cW = dev_f(p->cpu, W, (size_t)R * C), *gW = dev_f(p->gpu, W, (size_t)R * C);
    float *cH = dev_f(p->cpu, H, (size_t)C * C), *gH = dev_f(p->gpu, H, (size_t)C * C);
    float *cS = dev_f(p->cpu, step, nstep), *gS = dev_f(p->gpu, step, nstep);
    float *cE = dev_nan(p->cpu, nb), *gE = dev_nan(p->gpu, nb);
    uint8_t *poison = malloc(nb), *cm = NULL, *gm = NULL, *hm = malloc(nb), *hg = malloc(nb);
    assert_true(poison && hm && hg);
    memset(poison, 0xAA, nb);
    assert_int_equal(kb_alloc(p->cpu, (void **)&cm, nb, &err), 0);
    assert_int_equal(kb_alloc(p->gpu, (void **)&gm, nb, &err), 0);
    assert_int_equal(kb_upload(p->gpu, gm, poison, nb, &err), 0);
    struct ksgpt_args a = { .w = cW, .ldw = C, .rows = R, .cols = C, .i1 = k->i1, .i2 = k->i2, .hinv = cH, .ldh = C,
                            .mask = cm, .ldm = cnt, .err = cE, .n = k->n, .m = k->m, .thr = -INFINITY,
                            .bits = k->bits, .group = k->group, .ngroups = ng, .step = cS };
    struct ksgpt_args g = a;
    g.w = gW; g.hinv = gH; g.mask = gm; g.err = gE; g.step = gS;
    if (!k->m && k->sparsity > 0) {
        /* the metric pass on both, the threshold from the CPU's (as prune_sparsegpt would pick it) */
        a.metric = cE; g.metric = gE;
        assert_int_equal(kb_sparsegpt_block(p->cpu, &a, &err), 0);
        assert_int_equal(kb_sparsegpt_block(p->gpu, &g, &err), 0);
        float *t = host_of(p->cpu, cE, nb);
        expect_close(p->gpu, gE, t, nb, SGPT_METRIC_TOL, "sparsegpt metric");
        float *sorted = malloc(nb * sizeof *sorted);
        assert_non_null(sorted);
        memcpy(sorted, t, nb * sizeof *t);
        qsort(sorted, nb, sizeof *sorted, float_cmp);
        a.thr = g.thr = sorted[(size_t)floor((double)nb * k->sparsity)];
        a.metric = g.metric = NULL;
        free(t);
        free(sorted);
        float *nanb = nan_vec(nb);
        assert_int_equal(kb_upload(p->gpu, gE, nanb, nb * sizeof *nanb, &err), 0);
        free(nanb);
    }
    assert_int_equal(kb_sparsegpt_block(p->cpu, &a, &err), 0);
    int rc = kb_sparsegpt_block(p->gpu, &g, &err);
    if (rc) print_error("%s: %s\n", k->what, err.msg);
    assert_int_equal(rc, 0);
    float *wc = host_of(p->cpu, cW, (size_t)R * C), *ec = host_of(p->cpu, cE, nb), *sc = host_of(p->cpu, cS, nstep);
    char what[96];
    snprintf(what, sizeof what, "sparsegpt %s: W", k->what);
    expect_close(p->gpu, gW, wc, (size_t)R * C, SGPT_TOL, what);
    snprintf(what, sizeof what, "sparsegpt %s: Err", k->what);
    expect_close(p->gpu, gE, ec, nb, SGPT_TOL, what);
    snprintf(what, sizeof what, "sparsegpt %s: steps", k->what);
    expect_close(p->gpu, gS, sc, nstep, SGPT_TOL, what);
    assert_int_equal(kb_download(p->cpu, hm, cm, nb, &err), 0);
    assert_int_equal(kb_download(p->gpu, hg, gm, nb, &err), 0);
    size_t diff = 0, pruned = 0;
    for (size_t i = 0; i < nb; i++) {
        assert_true(hg[i] <= 1);   /* every byte written */
        diff += hm[i] != hg[i];
        pruned += hm[i];
    }
    snprintf(what, sizeof what, "sparsegpt %s: mask", k->what);
    report(what, (double)diff / nb, SGPT_MASK_TOL);
    assert_true((double)diff / nb <= SGPT_MASK_TOL);
    if (k->m) assert_int_equal(pruned, nb / k->m * (k->m - k->n));
    free(W); free(H); free(step); free(poison); free(hm); free(hg); free(wc); free(ec); free(sc);
    kb_release(p->cpu, cW); kb_release(p->gpu, gW); kb_release(p->cpu, cH); kb_release(p->gpu, gH);
    kb_release(p->cpu, cS); kb_release(p->gpu, gS); kb_release(p->cpu, cE); kb_release(p->gpu, gE);
    kb_release(p->cpu, cm); kb_release(p->gpu, gm);
}

static void test_kernels_cuda__sparsegpt_block_matches_cpu(void **state)
{
    struct pair *p = *state;
    static const struct sgpt_case cases[] = {
        { "2:4", 1000, 384, 128, 256, 2, 4, 0, 0, 0.5 },
        { "unstructured 50%", 1000, 384, 128, 256, 0, 0, 0, 0, 0.5 },
        { "OPTQ 4-bit per row, 2:4", 1000, 384, 128, 256, 2, 4, 4, -1, 0.5 },
        { "OPTQ 4-bit group 128", 1000, 384, 128, 256, 0, 0, 4, 128, 0.0 },
        { "OPTQ 3-bit group 96, unstr 30%", 1000, 384, 128, 256, 0, 0, 3, 96, 0.3 },
        { "OPTQ per tensor, 77 rows, last block", 77, 300, 256, 300, 2, 4, 4, 0, 0.5 },
        { "4:8, Hinv past shared memory (256 cols)", 77, 512, 0, 256, 4, 8, 0, 0, 0.5 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) sgpt_case_run(p, &cases[i]);
}

/* ---- SLiM pruning and quantization ----
** Every element runs the same kernels/kquant.h arithmetic on both sides with IEEE f32 division
** and square root and no FMA contraction, so masks, codes, counts and values are compared for
** bit equality: the tolerance of these tests is 0. Shapes include rows and columns that are no
** multiple of 256 (the block) and groups of 32 and 128. */
static void *dev_bytes(struct kbackend *kb, const void *h, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    void *d = NULL;
    assert_int_equal(kb_alloc(kb, &d, n ? n : 1, &err), 0);
    assert_int_equal(kb_upload(kb, d, h, n, &err), 0);
    return d;
}
static void *host_bytes(struct kbackend *kb, const void *d, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    void *h = malloc(n ? n : 1);
    assert_non_null(h);
    assert_int_equal(kb_download(kb, h, d, n, &err), 0);
    return h;
}

/* N:M (m > 0: n of every m kept) or unstructured per-row (m == 0: k of each row pruned) pruning
** on both backends from the same w and s; masks and weights must agree bit for bit. Equal metrics
** (repeated |w|, +-0, repeated scaler values) exercise the tie rules; nan puts a NaN weight in. */
static void prune_case(struct pair *p, int d_out, int d_in, int n, int m, int k, bool wanda, bool nan)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t sz = (size_t)d_out * d_in;
    float *w = rand_vec(sz), *s = rand_vec(d_in);
    for (size_t i = 1; i < sz; i += 5) w[i] = -w[i - 1];        /* equal metrics inside N:M groups */
    for (size_t i = 0; i + 17 < sz; i += 3) if (!m) w[i + 17] = -w[i];   /* and across a row */
    for (size_t i = 5; i < sz; i += 13) w[i] = i % 2 ? -0.0f : 0.0f;
    if (nan) w[sz / 3] = NAN;
    for (int c = 0; c < d_in; c++) s[c] = fabsf(s[c]) + 1e-3f;
    for (int c = 3; c < d_in; c += 4) s[c] = s[c - (m ? 1 : 3)];
    uint8_t *mask = malloc(sz), *poison = malloc(sz);
    assert_true(mask && poison);
    memset(poison, 0xee, sz);
    float *dw = dev_f(p->gpu, w, sz), *ds = dev_f(p->gpu, s, d_in);
    uint8_t *dm = dev_bytes(p->gpu, poison, sz);
    if (m) {
        assert_int_equal(p->cpu->iface->prune_nm(p->cpu, w, mask, wanda ? s : NULL, d_out, d_in, n, m, &err), 0);
        assert_int_equal(p->gpu->iface->prune_nm(p->gpu, dw, dm, wanda ? ds : NULL, d_out, d_in, n, m, &err), 0);
    } else {
        assert_int_equal(p->cpu->iface->prune_rows(p->cpu, w, mask, wanda ? s : NULL, d_out, d_in, k, &err), 0);
        assert_int_equal(p->gpu->iface->prune_rows(p->gpu, dw, dm, wanda ? ds : NULL, d_out, d_in, k, &err), 0);
    }
    uint8_t *gm = host_bytes(p->gpu, dm, sz);
    float *gw = host_of(p->gpu, dw, sz);
    assert_memory_equal(gm, mask, sz);
    assert_memory_equal(gw, w, sz * sizeof *w);
    kb_release(p->gpu, dw); kb_release(p->gpu, ds); kb_release(p->gpu, dm);
    free(w); free(s); free(mask); free(poison); free(gm); free(gw);
}

static void test_kernels_cuda__prune_nm_matches_cpu(void **state)
{
    struct pair *p = *state;
    prune_case(p, 33, 100, 2, 4, 0, false, false);
    prune_case(p, 33, 100, 2, 4, 0, true, false);
    prune_case(p, 257, 264, 4, 8, 0, true, false);
    prune_case(p, 5, 512, 1, 16, 0, true, false);
    prune_case(p, 9, 40, 2, 4, 0, true, true);    /* a NaN metric in the registers of the 2:4 kernel */
    prune_case(p, 9, 48, 5, 8, 0, false, true);   /* and of the 4:8 one, with another n */
}

/* Unstructured per-row selection: the GPU's radix selection against the CPU's sort. NaN ranks
** first on both sides (kq_order_key). Rows longer than the 256-thread block exercise the chunked
** column-order count of the entries equal to the threshold. */
static void test_kernels_cuda__prune_rows_matches_cpu(void **state)
{
    struct pair *p = *state;
    prune_case(p, 33, 100, 0, 0, 50, false, false);
    prune_case(p, 33, 100, 0, 0, 50, true, true);
    prune_case(p, 17, 1000, 0, 0, 333, true, false);
    prune_case(p, 9, 4099, 0, 0, 2049, true, true);
    prune_case(p, 4, 64, 0, 0, 0, true, false);
    prune_case(p, 4, 64, 0, 0, 64, true, false);
    prune_case(p, 3, 300, 0, 0, 1, false, false);
}

/* Global threshold (abs_kth), magnitude pruning under it and the zero count: bit-equal to the CPU. */
static void test_kernels_cuda__abs_kth_prune_abs_le_count_zeros_match_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    const size_t ns[] = { 1, 7, 1000, 300001 };
    for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
        size_t n = ns[t];
        float *a = rand_vec(n);
        for (size_t i = 0; i + 31 < n; i += 4) a[i + 31] = -a[i];   /* many equal |a| */
        for (size_t i = 3; i < n; i += 29) a[i] = i % 2 ? -0.0f : 0.0f;
        float *da = dev_f(p->gpu, a, n);
        const size_t ks[] = { 0, n / 3, n / 2, n - 1 };
        for (int j = 0; j < 4; j++) {
            float kc = -1, kg = -2;
            assert_int_equal(p->cpu->iface->abs_kth(p->cpu, &kc, a, n, ks[j], &err), 0);
            assert_int_equal(p->gpu->iface->abs_kth(p->gpu, &kg, da, n, ks[j], &err), 0);
            assert_memory_equal(&kg, &kc, sizeof kc);
        }
        float thr;
        assert_int_equal(p->cpu->iface->abs_kth(p->cpu, &thr, a, n, n / 2, &err), 0);
        uint8_t *mask = malloc(n), *poison = malloc(n);
        assert_true(mask && poison);
        memset(poison, 0xee, n);
        uint8_t *dm = dev_bytes(p->gpu, poison, n);
        assert_int_equal(p->cpu->iface->prune_abs_le(p->cpu, a, mask, n, thr, &err), 0);
        assert_int_equal(p->gpu->iface->prune_abs_le(p->gpu, da, dm, n, thr, &err), 0);
        uint8_t *gm = host_bytes(p->gpu, dm, n);
        float *ga = host_of(p->gpu, da, n);
        assert_memory_equal(gm, mask, n);
        assert_memory_equal(ga, a, n * sizeof *a);
        uint64_t zc = 0, zg = 1;
        assert_int_equal(p->cpu->iface->count_zeros(p->cpu, &zc, a, n, &err), 0);
        assert_int_equal(p->gpu->iface->count_zeros(p->gpu, &zg, da, n, &err), 0);
        assert_int_equal(zg, zc);
        assert_true(zc >= n / 2 + 1);
        kb_release(p->gpu, da); kb_release(p->gpu, dm);
        free(a); free(mask); free(poison); free(gm); free(ga);
    }
}

static void absmax_case(struct pair *p, int d_out, int d_in, int grows, int gcols)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t sz = (size_t)d_out * d_in, ng = (size_t)(d_out / grows) * (d_in / gcols);
    float *w = rand_vec(sz), *amax = malloc(ng * sizeof *amax);
    assert_non_null(amax);
    w[sz / 2] = NAN;   /* ignored on both sides */
    float *dw = dev_f(p->gpu, w, sz), *da = dev_nan(p->gpu, ng);
    assert_int_equal(p->cpu->iface->absmax_groups(p->cpu, amax, w, d_out, d_in, grows, gcols, &err), 0);
    assert_int_equal(p->gpu->iface->absmax_groups(p->gpu, da, dw, d_out, d_in, grows, gcols, &err), 0);
    float *ga = host_of(p->gpu, da, ng);
    assert_memory_equal(ga, amax, ng * sizeof *amax);
    kb_release(p->gpu, dw); kb_release(p->gpu, da);
    free(w); free(amax); free(ga);
}

static void test_kernels_cuda__absmax_groups_and_range_match_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    absmax_case(p, 1000, 77, 1000, 77);    /* per tensor */
    absmax_case(p, 300, 77, 1, 77);        /* per row */
    absmax_case(p, 160, 200, 32, 1);       /* G x 1 */
    absmax_case(p, 384, 131, 128, 1);
    absmax_case(p, 37, 384, 1, 32);        /* 1 x G */
    absmax_case(p, 37, 384, 1, 128);
    absmax_case(p, 64, 96, 2, 3);
    size_t n = 1000003;
    float *a = rand_vec(n), lo_hi[2];
    a[17] = NAN;
    a[n - 1] = -3.5f;
    float *da = dev_f(p->gpu, a, n), *dr = dev_nan(p->gpu, 2);
    assert_int_equal(p->cpu->iface->abs_range(p->cpu, lo_hi, a, n, &err), 0);
    assert_int_equal(p->gpu->iface->abs_range(p->gpu, dr, da, n, &err), 0);
    float *g = host_of(p->gpu, dr, 2);
    assert_memory_equal(g, lo_hi, sizeof lo_hi);
    kb_release(p->gpu, da); kb_release(p->gpu, dr);
    free(a); free(g);
}

/* nb 512 and 20000 (SLiM-Quant's bounds; the larger takes opt-in shared memory) and 70000 (more
** bins than shared memory holds: global atomics). Values sit on and just below bin edges. */
static void histogram_case(struct pair *p, size_t n, int nb)
{
    struct slm_err err = SLM_ERR_INIT;
    float *a = rand_vec(n), lo_hi[2], *edge = malloc((nb + 1) * sizeof *edge);
    uint64_t *counts = calloc(nb, sizeof *counts);
    assert_true(edge && counts);
    assert_int_equal(p->cpu->iface->abs_range(p->cpu, lo_hi, a, n, &err), 0);
    float lo = lo_hi[0], hi = lo_hi[1];
    for (int k = 0; k <= nb; k++) edge[k] = lo + (hi - lo) * ((float)k / (float)nb);
    edge[nb] = hi;
    for (size_t i = 0; i + 1 < n && i < 2 * (size_t)nb; i += 2) {
        a[i] = edge[i / 2];
        a[i + 1] = -nextafterf(edge[i / 2 + 1], 0);
    }
    float *da = dev_f(p->gpu, a, n), *de = dev_f(p->gpu, edge, nb + 1);
    uint64_t *dc = dev_bytes(p->gpu, counts, nb * sizeof *counts);
    assert_int_equal(p->cpu->iface->abs_histogram(p->cpu, counts, a, n, lo, hi, edge, nb, &err), 0);
    assert_int_equal(p->gpu->iface->abs_histogram(p->gpu, dc, da, n, lo, hi, de, nb, &err), 0);
    uint64_t *gc = host_bytes(p->gpu, dc, nb * sizeof *counts);
    assert_memory_equal(gc, counts, nb * sizeof *counts);
    kb_release(p->gpu, da); kb_release(p->gpu, de); kb_release(p->gpu, dc);
    free(a); free(edge); free(counts); free(gc);
}

static void test_kernels_cuda__abs_histogram_matches_cpu(void **state)
{
    struct pair *p = *state;
    histogram_case(p, 300001, 512);
    histogram_case(p, 2000003, 20000);
    histogram_case(p, 500001, 70000);
}

/* SLiM-Quant's search on counts [nb] (edges over [0, top]) for bits 2..8: the GPU's alpha is the
** CPU's, bit for bit. */
static void search_case(struct pair *p, const uint64_t *counts, int nb, size_t n, float top)
{
    struct slm_err err = SLM_ERR_INIT;
    float *edge = malloc((nb + 1) * sizeof *edge);
    assert_non_null(edge);
    for (int k = 0; k <= nb; k++) edge[k] = top * ((float)k / (float)nb);
    float *de = dev_f(p->gpu, edge, nb + 1);
    uint64_t *dc = dev_bytes(p->gpu, counts, nb * sizeof *counts);
    for (int bits = 2; bits <= 8; bits++) {
        float a = NAN, g = NAN;
        assert_int_equal(p->cpu->iface->slim_search(p->cpu, &a, counts, edge, nb, n, bits, &err), 0);
        assert_int_equal(p->gpu->iface->slim_search(p->gpu, &g, dc, de, nb, n, bits, &err), 0);
        assert_memory_equal(&g, &a, sizeof a);
    }
    kb_release(p->gpu, de); kb_release(p->gpu, dc);
    free(edge);
}

/* Bell-shaped histograms at SLiM-Quant's bin counts (10- and 11-point coarse grids; 20000 bins
** reach the reference's empty fine range at 6 and 8 bits), few bins, a flat one, a sparse one. */
static void test_kernels_cuda__slim_search_matches_cpu(void **state)
{
    struct pair *p = *state;
    const int nbs[] = { 2, 7, 20, 512, 589, 2359, 16777, 20000 };
    for (size_t c = 0; c < sizeof nbs / sizeof *nbs; c++) {
        int nb = nbs[c];
        uint64_t *counts = calloc(nb, sizeof *counts);
        assert_non_null(counts);
        size_t n = 0;
        for (int i = 0; i < 50 * nb; i++, n++) {
            float v = fabsf(frand() + frand() + frand()) / 3;
            int k = (int)(v * nb);
            counts[k < nb ? k : nb - 1]++;
        }
        search_case(p, counts, nb, n, 1.0f);
        for (int k = 0; k < nb; k++) counts[k] = k % 3 == 0 ? 0 : 1000;   /* flat with empty bins */
        search_case(p, counts, nb, (size_t)1000 * (nb - (nb + 2) / 3), 0.25f);
        free(counts);
    }
}

/* Scale grids as core/quant.c builds them (per tensor sf, G x 1 and 1 x G alphas), with and
** without bf16 rounding and the column scale; quant_dequant must give quant_apply's values back. */
static void quant_case(struct pair *p, int d_out, int d_in, int kind, int grows, int gcols, bool bf16, bool cs)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t sz = (size_t)d_out * d_in, ng = (size_t)(d_out / grows) * (d_in / gcols);
    float *w = rand_vec(sz), *scale = malloc(ng * sizeof *scale), *col = malloc(d_in * sizeof *col);
    int8_t *codes = malloc(sz), *poison = malloc(sz);
    assert_true(scale && col && codes && poison);
    memset(poison, 0x55, sz);
    for (int c = 0; c < d_in; c++) col[c] = c % 50 == 0 ? 2.0f : 1.0f;
    assert_int_equal(p->cpu->iface->absmax_groups(p->cpu, scale, w, d_out, d_in, grows, gcols, &err), 0);
    if (kind == KQ_SF) for (size_t g = 0; g < ng; g++) scale[g] = scale[g] > 0 ? 7.0f / scale[g] : 0;
    scale[0] = 0;   /* a zero scale */
    struct kquant_args q = { kind, 4, bf16, d_out / grows, d_in / gcols, grows, gcols, scale, cs ? col : NULL };
    float *dw = dev_f(p->gpu, w, sz), *dsc = dev_f(p->gpu, scale, ng), *dcol = dev_f(p->gpu, col, d_in);
    int8_t *dq = dev_bytes(p->gpu, poison, sz);
    struct kquant_args dqa = q;
    dqa.scale = dsc;
    dqa.col_scale = cs ? dcol : NULL;
    assert_int_equal(p->cpu->iface->quant_apply(p->cpu, w, codes, d_out, d_in, &q, &err), 0);
    assert_int_equal(p->gpu->iface->quant_apply(p->gpu, dw, dq, d_out, d_in, &dqa, &err), 0);
    float *gw = host_of(p->gpu, dw, sz);
    int8_t *gq = host_bytes(p->gpu, dq, sz);
    assert_memory_equal(gq, codes, sz);
    assert_memory_equal(gw, w, sz * sizeof *w);
    float *dd = dev_nan(p->gpu, sz);
    assert_int_equal(p->gpu->iface->quant_dequant(p->gpu, dd, dq, d_out, d_in, &dqa, &err), 0);
    float *gd = host_of(p->gpu, dd, sz);
    assert_memory_equal(gd, w, sz * sizeof *w);
    kb_release(p->gpu, dw); kb_release(p->gpu, dsc); kb_release(p->gpu, dcol); kb_release(p->gpu, dq);
    kb_release(p->gpu, dd);
    free(w); free(scale); free(col); free(codes); free(poison); free(gw); free(gq); free(gd);
}

static void test_kernels_cuda__quant_apply_dequant_match_cpu(void **state)
{
    struct pair *p = *state;
    quant_case(p, 300, 77, KQ_SF, 300, 77, false, false);
    quant_case(p, 300, 77, KQ_SF, 300, 77, true, true);
    quant_case(p, 300, 77, KQ_SF, 1, 77, true, false);
    quant_case(p, 160, 200, KQ_ALPHA, 32, 1, false, true);
    quant_case(p, 384, 131, KQ_ALPHA, 128, 1, true, false);
    quant_case(p, 37, 384, KQ_ALPHA, 1, 32, false, false);
    quant_case(p, 37, 384, KQ_ALPHA, 1, 128, true, true);
}

/* core's quant_weight and prune_weight on a device weight (only scales, histogram counts, codes
** and the mask cross to the host) against the host path, bit for bit. */
/* apply_mask is a select: exact (tolerance 0). Any non-zero byte prunes; -0, NaN and kept values
** pass through untouched. */
static void test_kernels_cuda__apply_mask_matches_cpu(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    size_t n = 1000003;
    float *w = rand_vec(n);
    uint8_t *mask = malloc(n);
    assert_non_null(mask);
    for (size_t i = 0; i < n; i++) mask[i] = (uint8_t)(i % 3 == 0 ? 0 : i % 3 == 1 ? 1 : (i * 37) & 0xff);
    w[1] = -0.0f;
    w[3] = -0.0f;   /* kept: stays -0 */
    w[6] = NAN;     /* kept */
    w[7] = NAN;     /* pruned */
    float *dw = dev_f(p->gpu, w, n);
    uint8_t *dm = dev_bytes(p->gpu, mask, n);
    assert_int_equal(p->cpu->iface->apply_mask(p->cpu, w, mask, n, &err), 0);
    assert_int_equal(p->gpu->iface->apply_mask(p->gpu, dw, dm, n, &err), 0);
    float *g = host_of(p->gpu, dw, n);
    assert_memory_equal(g, w, n * sizeof *w);
    assert_true(signbit(w[3]) && isnan(w[6]) && w[7] == 0 && !signbit(w[7]));
    kb_release(p->gpu, dw); kb_release(p->gpu, dm);
    free(w); free(mask); free(g);
}

static void test_kernels_cuda__core_quant_and_prune_on_device(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    enum { R = 256, C = 1000 };
    size_t n = (size_t)R * C;
    const struct { enum quant_method m; int g; bool colw, bf16; } cfg[] = {
        { QUANT_SLIM, 0, false, false }, { QUANT_SLIM, 0, false, true }, { QUANT_ABSMAX, 0, false, true },
        { QUANT_ABSMAX, -1, false, false }, { QUANT_ABSMAX, 128, false, true }, { QUANT_ABSMAX, 8, true, false },
    };
    float *w = rand_vec(n), *h = malloc(n * sizeof *h), *col = malloc(C * sizeof *col), *s = rand_vec(C);
    int8_t *qh = malloc(n), *qg = malloc(n);
    uint8_t *mh = malloc(n), *mg = malloc(n);
    assert_true(h && col && qh && qg && mh && mg);
    for (int c = 0; c < C; c++) { col[c] = c % 100 == 0 ? 2.0f : 1.0f; s[c] = fabsf(s[c]) + 1e-3f; }
    for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
        struct quant_opts o = QUANT_OPTS_INIT;
        o.method = cfg[k].m; o.group_size = cfg[k].g; o.column_wise = cfg[k].colw; o.bf16 = cfg[k].bf16;
        struct quant_params ph = { 0 }, pg = { 0 };
        memcpy(h, w, n * sizeof *h);
        assert_int_equal(quant_weight_host(h, R, C, &o, k % 2 ? col : NULL, qh, &ph, &err), 0);
        float *dw = dev_f(p->gpu, w, n);
        assert_int_equal(quant_weight(p->gpu, dw, R, C, &o, k % 2 ? col : NULL, qg, &pg, &err), 0);
        float *g = host_of(p->gpu, dw, n);
        assert_memory_equal(g, h, n * sizeof *h);
        assert_memory_equal(qg, qh, n);
        assert_memory_equal(pg.scale, ph.scale, sizeof *ph.scale * (size_t)ph.rows * ph.cols);
        kb_release(p->gpu, dw);
        free(g);
        quant_params_free(&ph); quant_params_free(&pg);
    }
    struct prune_opts po = PRUNE_OPTS_INIT;
    po.n = 2; po.m = 4;
    assert_int_equal(prune_mask_host(mh, w, s, R, C, &po, &err), 0);
    float *dw = dev_f(p->gpu, w, n);
    assert_int_equal(prune_weight(p->gpu, dw, s, R, C, &po, mg, &err), 0);
    float *g = host_of(p->gpu, dw, n);
    assert_memory_equal(mg, mh, n);
    for (size_t i = 0; i < n; i++) assert_true(g[i] == (mh[i] ? 0.0f : w[i]));
    kb_release(p->gpu, dw);
    free(g); free(w); free(h); free(col); free(s); free(qh); free(qg); free(mh); free(mg);
}

/* Calibration statistics: explicitly rounded f32 / f64 in the CPU's order, so bit for bit.
** Several sequences (the running mean's n), outliers, and a column count that is no multiple of
** the block width. Device buffers start from the CPU's values, not NaN: the op accumulates. */
static void test_kernels_cuda__col_stats_match_cpu_bitwise(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    static const int shape[][2] = { { 1, 1 }, { 37, 150 }, { 512, 4100 } };
    for (size_t k = 0; k < sizeof shape / sizeof shape[0]; k++) {
        int rows = shape[k][0], cols = shape[k][1];
        float *sc = calloc((size_t)cols, sizeof *sc);
        double *as = calloc((size_t)cols, sizeof *as);
        void *dsc = NULL, *das = NULL;
        assert_true(sc && as);
        assert_int_equal(kb_alloc(p->gpu, &dsc, sizeof *sc * cols, &err), 0);
        assert_int_equal(kb_alloc(p->gpu, &das, sizeof *as * cols, &err), 0);
        assert_int_equal(kb_upload(p->gpu, dsc, sc, sizeof *sc * cols, &err), 0);
        assert_int_equal(kb_upload(p->gpu, das, as, sizeof *as * cols, &err), 0);
        for (int s = 0; s < 3; s++) {
            float *x = rand_vec((size_t)rows * cols);
            for (size_t i = 0; i < (size_t)rows * cols; i += 7) x[i] *= 1000;
            float *dx = dev_f(p->gpu, x, (size_t)rows * cols);
            assert_int_equal(p->cpu->iface->col_stats(p->cpu, sc, as, x, rows, cols, s, &err), 0);
            assert_int_equal(p->gpu->iface->col_stats(p->gpu, dsc, das, dx, rows, cols, s, &err), 0);
            kb_release(p->gpu, dx);
            free(x);
        }
        float *gsc = host_of(p->gpu, dsc, (size_t)cols);
        double *gas = malloc(sizeof *gas * cols);
        assert_non_null(gas);
        assert_int_equal(kb_download(p->gpu, gas, das, sizeof *gas * cols, &err), 0);
        assert_memory_equal(gsc, sc, sizeof *sc * cols);
        assert_memory_equal(gas, as, sizeof *as * cols);
        kb_release(p->gpu, dsc); kb_release(p->gpu, das);
        free(sc); free(as); free(gsc); free(gas);
    }
}

/* Embedding gather: a copy, so exact; the CPU reference is the host gather of model_embed. */
static void test_kernels_cuda__gather_rows_exact(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    int V = 1000, cols = 300, rows = 777;
    float *table = rand_vec((size_t)V * cols), *want = malloc(sizeof *want * rows * cols);
    int32_t *ids = malloc(sizeof *ids * rows);
    assert_true(want && ids);
    for (int r = 0; r < rows; r++) {
        ids[r] = r % 5 == 0 ? V - 1 : (int32_t)((uint32_t)fabsf(frand() * 1e6f) % (uint32_t)V);   /* repeats, the last row */
        memcpy(want + (size_t)r * cols, table + (size_t)ids[r] * cols, sizeof *want * cols);
    }
    float *dt = dev_f(p->gpu, table, (size_t)V * cols), *dout = dev_nan(p->gpu, (size_t)rows * cols);
    void *did = NULL;
    assert_int_equal(kb_alloc(p->gpu, &did, sizeof *ids * rows, &err), 0);
    assert_int_equal(kb_upload(p->gpu, did, ids, sizeof *ids * rows, &err), 0);
    assert_int_equal(p->gpu->iface->gather_rows(p->gpu, dout, dt, did, rows, cols, V, &err), 0);
    float *got = host_of(p->gpu, dout, (size_t)rows * cols);
    assert_memory_equal(got, want, sizeof *want * rows * cols);
    kb_release(p->gpu, dt); kb_release(p->gpu, dout); kb_release(p->gpu, did);
    free(table); free(want); free(ids); free(got);
}

/* Accounting of the pool in the bytes asked for (as the CPU counts; the buckets show as cached), its
** peak and reset, the budget's message, and pinned host memory round-tripping exactly (a spilled
** calibration window takes this path). */
static void test_kernels_cuda__mem_stats_budget_and_pinned_host(void **state)
{
    struct pair *p = *state;
    struct slm_err err = SLM_ERR_INIT;
    struct kmem_stats st;
    void *a = NULL, *b = NULL;
    assert_int_equal(kb_mem_stats(p->gpu, &st, true, &err), 0);
    int64_t base = st.in_use;
    assert_true(st.device_total > 0 && st.device_free >= 0 && st.device_free <= st.device_total);
    assert_int_equal(st.limit, 0);
    assert_int_equal(kb_alloc(p->gpu, &a, 3 << 20, &err), 0);   /* 3 MiB: a 4 MiB bucket, 3 MiB counted */
    assert_int_equal(kb_mem_stats(p->gpu, &st, false, &err), 0);
    assert_int_equal(st.in_use, base + (3 << 20));
    assert_int_equal(st.peak, base + (3 << 20));
    kb_release(p->gpu, a);
    assert_int_equal(kb_mem_stats(p->gpu, &st, true, &err), 0);
    assert_int_equal(st.in_use, base);
    assert_true(st.cached >= 4 << 20);   /* kept for reuse */
    assert_int_equal(kb_mem_stats(p->gpu, &st, false, &err), 0);
    assert_int_equal(st.peak, base);
    assert_int_equal(kbackend_set_limit(p->gpu, (size_t)base + (6 << 20), &err), 0);
    /* two 3 MiB buffers fit a 6 MiB budget, as on the CPU, though their buckets take 8 MiB */
    assert_int_equal(kb_alloc(p->gpu, &a, 3 << 20, &err), 0);
    assert_int_equal(kb_alloc(p->gpu, &b, 3 << 20, &err), 0);
    kb_release(p->gpu, a);
    kb_release(p->gpu, b);
    b = NULL;
    assert_int_equal(kb_alloc(p->gpu, &a, 4 << 20, &err), 0);
    assert_int_equal(kb_alloc(p->gpu, &b, 4 << 20, &err), -SLM_ENOMEM);   /* 8 MiB > 6 MiB budget */
    assert_null(b);
    assert_non_null(strstr(err.msg, "cuda: out of device memory allocating 4194304 bytes on cuda:"));
    assert_non_null(strstr(err.msg, " in use by slimd, limit "));
    slm_err_clear(&err);
    kb_release(p->gpu, a);
    assert_int_equal(kbackend_set_limit(p->gpu, 0, &err), 0);
    /* pinned host buffer: device -> pinned -> device -> pageable, bit for bit */
    size_t n = 1 << 16;
    float *src = rand_vec(n), *pinned = NULL, *back = nan_vec(n);
    assert_int_equal(kb_host_alloc(p->gpu, (void **)&pinned, n * sizeof *pinned, &err), 0);
    float *d = dev_f(p->gpu, src, n), *d2 = dev_nan(p->gpu, n);
    assert_int_equal(kb_download(p->gpu, pinned, d, n * sizeof *pinned, &err), 0);
    assert_int_equal(kb_upload(p->gpu, d2, pinned, n * sizeof *pinned, &err), 0);
    assert_int_equal(kb_download(p->gpu, back, d2, n * sizeof *back, &err), 0);
    assert_memory_equal(src, back, n * sizeof *src);
    kb_host_free(p->gpu, pinned);
    kb_release(p->gpu, d);
    kb_release(p->gpu, d2);
    free(src);
    free(back);
}

int main(void)
{
    if (!kbackend_cuda_available()) {
        printf("kernels/cuda: skipped (no CUDA in this build or no visible device)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_cuda__memory_pool_and_oom),
        cmocka_unit_test(test_kernels_cuda__mem_stats_budget_and_pinned_host),
        cmocka_unit_test(test_kernels_cuda__gemm_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__gemm_bf16_inputs_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__norms_match_cpu),
        cmocka_unit_test(test_kernels_cuda__elementwise_match_cpu),
        cmocka_unit_test(test_kernels_cuda__round_bf16_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__rope_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__attention_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__attention_gemm_path_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__attention_tiled_path_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__cross_entropy_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__cholesky_and_inverse_match_cpu),
        cmocka_unit_test(test_kernels_cuda__eigh_satisfies_eigen_equation),
        cmocka_unit_test(test_kernels_cuda__svd_reconstructs),
        cmocka_unit_test(test_kernels_cuda__gram_f64_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__sparsegpt_block_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__prune_nm_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__prune_rows_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__abs_kth_prune_abs_le_count_zeros_match_cpu),
        cmocka_unit_test(test_kernels_cuda__absmax_groups_and_range_match_cpu),
        cmocka_unit_test(test_kernels_cuda__abs_histogram_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__slim_search_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__quant_apply_dequant_match_cpu),
        cmocka_unit_test(test_kernels_cuda__core_quant_and_prune_on_device),
        cmocka_unit_test(test_kernels_cuda__apply_mask_matches_cpu),
        cmocka_unit_test(test_kernels_cuda__col_stats_match_cpu_bitwise),
        cmocka_unit_test(test_kernels_cuda__gather_rows_exact),
    };
    return cmocka_run_group_tests_name("kernels/cuda", tests, setup, teardown);
}
