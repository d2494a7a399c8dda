/*
** tests/unit/core/slicegpt.c: SliceGPT against the authors' code and against transformers.
** - exact mode, slicing 0: the function of tiny-opt/llama/phi and stories260K is unchanged
**   (logits vs tests/data/<model>/reference.safetensors, relative 1e-5);
** - reference-compatible mode vs tests/data/slicegpt/<model>/ref<P>.safetensors (the authors'
**   code, see tests/data/slicegpt/README.md) at 0/10/25/30%: eigenvalues of every PCA, logits,
**   per-window NLL, perplexity, parameter counts, and at 25% every tensor after sign alignment;
** - parameter counts of OPT-125M, LLaMA-2-7B, Phi-2 from their configs alone;
** - a sliced checkpoint reloads to identical logits; bad options are rejected;
** - the job runner's "slicegpt" method: progress per block, memory report, cancel.
** With SLIM_TEST_DATA pointing at a folder from tools/make-slicegpt-fixtures.py --full, the same
** checks run on the untrimmed fixture (every tensor at every level, the slim-reference OPT).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kbackend.h"
#include "../test_util.h"

#include "core/job.h"
#include "core/jobspec.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "core/safetensors.h"
#include "core/slicegpt.h"

static struct kbackend *kb;

/* ---- small readers ---- */

static float *st_f32(const struct safetensors *st, const char *name, size_t *n)
{
    const struct st_tensor *t = safetensors_find(st, name);
    if (!t) print_error("tensor %s missing\n", name);
    assert_non_null(t);
    float *f = malloc(sizeof(float) * (t->numel ? t->numel : 1));
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(st_tensor_to_f32(f, t, &err), 0);
    if (n) *n = (size_t)t->numel;
    return f;
}

static int32_t *st_ids(const struct safetensors *st, const char *name, int *rows, int *cols)
{
    const struct st_tensor *t = safetensors_find(st, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, DT_I64);
    *rows = (int)t->shape[0];
    *cols = (int)t->shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * t->numel);
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + i * 8, 8);
        ids[i] = (int32_t)v;
    }
    return ids;
}

static struct safetensors *open_st(const char *model, const char *file)
{
    char path[512];
    struct slm_err err = SLM_ERR_INIT;
    struct safetensors *st;
    snprintf(path, sizeof path, "%s/%s/%s", test_data_dir(), model, file);
    if (safetensors_open(&st, path, &err)) print_error("%s: %s\n", path, err.msg);
    assert_non_null(st);
    return st;
}

static struct model *open_model(const char *name)
{
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m = NULL;
    snprintf(dir, sizeof dir, "%s/%s", test_data_dir(), name);
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    return m;
}

static double rel_err(const float *out, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) return INFINITY;
        num += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- parameter counts from configs ---- */

static int64_t count_config(const char *file, double s)
{
    char path[512];
    snprintf(path, sizeof path, "%s/slicegpt/configs/%s", test_data_dir(), file);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    struct model_config c;
    struct slm_err err = SLM_ERR_INIT;
    if (model_config_parse(&c, buf, n, &err)) print_error("%s: %s\n", file, err.msg);
    assert_int_equal(err.rc, 0);
    int64_t out = 0;
    assert_int_equal(slicegpt_param_count(&out, &c, s, 8, &err), 0);
    return out;
}

static void test_core_slicegpt__param_counts_from_configs(void **state)
{
    (void)state;
    assert_int_equal(count_config("opt-125m.json", 0.20), 147250880LL);
    assert_int_equal(count_config("opt-125m.json", 0.25), 141239200LL);
    assert_int_equal(count_config("opt-125m.json", 0.30), 133790840LL);
    assert_int_equal(count_config("phi-2.json", 0.20), 2391772160LL);
    assert_int_equal(count_config("phi-2.json", 0.25), 2244947200LL);
    assert_int_equal(count_config("phi-2.json", 0.30), 2099138048LL);
    assert_int_equal(count_config("llama-2-7b.json", 0.20), 6105940928LL);
    assert_int_equal(count_config("llama-2-7b.json", 0.25), 5704777728LL);
    assert_int_equal(count_config("llama-2-7b.json", 0.30), 5292914432LL);
}

static void test_core_slicegpt__widths_round_down(void **state)
{
    (void)state;
    int d[] = { 768, 2048, 2560, 4096, 5120, 7168, 9216, 8192 };
    int want[][4] = { { 688, 608, 576, 536 }, { 1840, 1632, 1536, 1432 }, { 2304, 2048, 1920, 1792 }, { 3680, 3272, 3072, 2864 },
                      { 4608, 4096, 3840, 3584 }, { 6448, 5728, 5376, 5016 }, { 8288, 7368, 6912, 6448 }, { 7368, 6552, 6144, 5728 } };
    double s[] = { 0.1, 0.2, 0.25, 0.3 };
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) assert_int_equal(slicegpt_width(d[i], s[j], 8), want[i][j]);
    assert_int_equal(slicegpt_width(64, 0, 8), 64);
}

static void test_core_slicegpt__rejects_sparsity_outside_unit_interval(void **state)
{
    (void)state;
    double bad[] = { -0.1, 1.0, 1.5, NAN };
    for (int i = 0; i < 4; i++) {
        struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
        struct slm_err err = SLM_ERR_INIT;
        o.sparsity = bad[i];
        assert_int_equal(slicegpt_check_opts(&o, &err), -SLM_EINVAL);
        assert_non_null(strstr(err.msg, "/slicegpt/sparsity"));
        int64_t n;
        struct model_config c = { 0 };
        slm_err_clear(&err);
        assert_int_equal(slicegpt_param_count(&n, &c, bad[i], 8, &err), -SLM_EINVAL);
    }
    /* the job spec: a 400 naming the field */
    const char *docs[] = { "1.0", "-0.25", "1.5" };
    for (int i = 0; i < 3; i++) {
        char doc[512], path[64] = "";
        snprintf(doc, sizeof doc, "{\"version\":1,\"model\":{\"source\":\"/m\"},\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":%s}}",
                 docs[i]);
        json_t *j = json_loads(doc, 0, NULL);
        struct jobspec spec;
        struct slm_err err = SLM_ERR_INIT;
        assert_non_null(j);
        assert_int_equal(jobspec_parse(&spec, j, path, sizeof path, &err), -SLM_EINVAL);
        assert_string_equal(path, "/slicegpt/sparsity");
        json_decref(j);
    }
    struct model *m = open_model("tiny-opt");
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[8] = { 5, 6, 7, 8, 9, 10, 11, 12 };
    o.sparsity = 1.0;
    assert_int_equal(slicegpt_run(m, ids, 1, 8, &o, &err), -SLM_EINVAL);
    model_free(m);
}

static void test_core_slicegpt__gram_f64_accumulates_upper_triangle(void **state)
{
    (void)state;
    enum { R = 300, N = 7 };   /* more rows than one dsyrk chunk */
    float *x = malloc(sizeof(float) * R * N);
    double c[N * N], want[N * N];
    uint32_t z = 12345;
    for (int i = 0; i < R * N; i++) {
        z = z * 1664525u + 1013904223u;
        x[i] = (float)((z >> 8) * (1.0 / 16777216.0) - 0.5) * 3.0f;
    }
    for (int i = 0; i < N * N; i++) c[i] = want[i] = (i % N >= i / N) ? 1.0 : -7.0;   /* accumulates onto what is there */
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++)
            for (int j = i; j < N; j++) want[i * N + j] += (double)x[r * N + i] * x[r * N + j];
    struct slm_err err = SLM_ERR_INIT;
    assert_non_null(kb->iface->gram_f64);
    double *dc = test_dev_copy(kb, c, sizeof c);
    float *dx = test_dev_copy(kb, x, sizeof(float) * R * N);
    assert_int_equal(kb->iface->gram_f64(kb, dc, dx, R, N, &err), 0);
    test_dev_back(kb, c, dc, sizeof c);
    kb_release(kb, dx);
    for (int i = 0; i < N * N; i++) assert_true(fabs(c[i] - want[i]) <= 1e-12 * (1 + fabs(want[i])));
    free(x);
}

/* ---- exact mode: slicing 0 keeps the function ---- */

static void check_exact_zero(const char *model)
{
    struct model *m = open_model(model);
    struct safetensors *ref;
    char sub[128];
    snprintf(sub, sizeof sub, "slicegpt/%s", model);
    struct safetensors *cal = open_st(sub, "ids.safetensors");
    int nc, tc;
    int32_t *cids = st_ids(cal, "calibration_ids", &nc, &tc);
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    struct slm_err err = SLM_ERR_INIT;
    if (slicegpt_run(m, cids, nc, tc, &o, &err)) print_error("%s: %s\n", model, err.msg);
    assert_int_equal(err.rc, 0);
    ref = open_st(model, "reference.safetensors");
    int B, T;
    int32_t *ids = st_ids(ref, "input_ids", &B, &T);
    size_t nl;
    float *want = st_f32(ref, "logits", &nl);
    int V = m->cfg.vocab, nb = (int)(nl / ((size_t)T * V));
    float *logits = malloc(sizeof(float) * (size_t)nb * T * V);
    assert_int_equal(model_forward(m, ids, nb, T, logits, NULL, NULL, NULL, &err), 0);
    double e = rel_err(logits, want, (size_t)nb * T * V);
    if (e > 1e-5) print_error("%s: logits rel err %.3g\n", model, e);
    assert_true(e <= 1e-5);
    free(logits);
    free(want);
    free(ids);
    free(cids);
    safetensors_close(ref);
    safetensors_close(cal);
    model_free(m);
}

static void test_core_slicegpt__exact_zero_keeps_function(void **state)
{
    (void)state;
    check_exact_zero("tiny-opt");
    check_exact_zero("tiny-llama");
    check_exact_zero("tiny-phi");
    check_exact_zero("stories260K");
}

/* ---- reference-compatible mode against the authors' code ---- */

struct eig_ctx {
    const struct safetensors *ref;
    int checked;
    double worst;
};

static int on_pca(const char *stage, const double *eig, int n, void *payload)
{
    struct eig_ctx *c = payload;
    char name[96];
    snprintf(name, sizeof name, "pca.%s.eigenvalues", stage);
    const struct st_tensor *t = safetensors_find(c->ref, name);
    if (!t) print_error("no reference for %s\n", name);
    assert_non_null(t);
    assert_int_equal(t->dtype, DT_F64);
    assert_int_equal(t->numel, n);
    for (int i = 0; i < n; i++) {
        double want;
        memcpy(&want, (const char *)t->data + (size_t)i * 8, 8);
        double e = fabs(eig[i] - want) / fabs(want);
        if (e > c->worst) c->worst = e;
        if (e > 2e-5) print_error("%s[%d]: %.9g vs %.9g\n", name, i, eig[i], want);
        assert_true(e <= 2e-5);
    }
    c->checked++;
    return 0;
}

/* every tensor of the reference vs ours, after per-column sign alignment (fixture README §3) */
struct axis_sign {
    char basis[48];
    double *dot;
};

static int basis_index(struct axis_sign *bs, int *nb, const char *name, int d)
{
    for (int i = 0; i < *nb; i++)
        if (!strcmp(bs[i].basis, name)) return i;
    snprintf(bs[*nb].basis, sizeof bs[*nb].basis, "%s", name);
    bs[*nb].dot = calloc((size_t)d, sizeof(double));
    return (*nb)++;
}

static double compare_tensors(const char *model, const struct safetensors *ref, const char *ours_dir, int d)
{
    char path[600];
    struct slm_err err = SLM_ERR_INIT;
    struct safetensors *ours;
    snprintf(path, sizeof path, "%s/model.safetensors", ours_dir);
    assert_int_equal(safetensors_open(&ours, path, &err), 0);
    snprintf(path, sizeof path, "%s/slicegpt/%s/summary.json", test_data_dir(), model);
    json_t *summ = json_load_file(path, 0, NULL);
    assert_non_null(summ);
    json_t *axes = json_object_get(summ, "rotated_axes");
    struct axis_sign bs[256];
    int nb = 0;
    /* pass 1: sign votes from every tensor with exactly one rotated axis */
    const char *name;
    json_t *ax;
    json_object_foreach(axes, name, ax) {
        if (json_array_size(ax) != 1) continue;
        int axis = (int)json_integer_value(json_array_get(json_array_get(ax, 0), 0));
        int bi = basis_index(bs, &nb, json_string_value(json_array_get(json_array_get(ax, 0), 1)), d);
        const struct st_tensor *t = safetensors_find(ref, name);
        assert_non_null(t);
        size_t n;
        float *r = st_f32(ref, name, &n), *o = st_f32(ours, name, NULL);
        size_t rows = t->ndim == 2 ? (size_t)t->shape[0] : 1, cols = t->ndim == 2 ? (size_t)t->shape[1] : (size_t)t->shape[0];
        if (t->ndim == 1) axis = 1;
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < cols; j++) bs[bi].dot[axis == 0 ? i : j] += (double)r[i * cols + j] * o[i * cols + j];
        free(r);
        free(o);
    }
    /* pass 2: flip and compare every tensor */
    int compared = 0;
    double worst = 0;
    json_object_foreach(axes, name, ax) {
        const struct st_tensor *t = safetensors_find(ref, name), *u = safetensors_find(ours, name);
        if (!u) print_error("%s: our model has no %s\n", model, name);
        assert_non_null(u);
        assert_int_equal(t->ndim, u->ndim);
        for (int i = 0; i < t->ndim; i++) assert_int_equal(t->shape[i], u->shape[i]);
        size_t n;
        float *r = st_f32(ref, name, &n), *o = st_f32(ours, name, NULL);
        size_t rows = t->ndim == 2 ? (size_t)t->shape[0] : 1, cols = t->ndim == 2 ? (size_t)t->shape[1] : (size_t)t->shape[0];
        double *sgn[2] = { NULL, NULL };
        for (size_t k = 0; k < json_array_size(ax); k++) {
            int axis = (int)json_integer_value(json_array_get(json_array_get(ax, k), 0));
            if (t->ndim == 1) axis = 1;
            sgn[axis] = bs[basis_index(bs, &nb, json_string_value(json_array_get(json_array_get(ax, k), 1)), d)].dot;
        }
        double mx = 0, diff = 0;
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < cols; j++) {
                double v = o[i * cols + j];
                if (sgn[0] && sgn[0][i] < 0) v = -v;
                if (sgn[1] && sgn[1][j] < 0) v = -v;
                double rv = r[i * cols + j];
                mx = fmax(mx, fabs(rv));
                diff = fmax(diff, fabs(v - rv));
            }
        double rel = diff / (mx > 0 ? mx : 1);
        if (rel > 2e-3) print_error("%s %s: max diff %.3g of max %.3g\n", model, name, diff, mx);
        assert_true(rel <= 2e-3);
        worst = fmax(worst, rel);
        compared++;
        free(r);
        free(o);
    }
    assert_true(compared > 10);
    for (int i = 0; i < nb; i++) free(bs[i].dot);
    json_decref(summ);
    safetensors_close(ours);
    return worst;
}

static double summary_num(const char *model, const char *level, const char *key)
{
    char path[512];
    snprintf(path, sizeof path, "%s/slicegpt/%s/summary.json", test_data_dir(), model);
    json_t *j = json_load_file(path, 0, NULL);
    assert_non_null(j);
    json_t *v = level ? json_object_get(json_object_get(json_object_get(j, "levels"), level), key) : json_object_get(j, key);
    assert_non_null(v);
    double x = json_number_value(v);
    json_decref(j);
    return x;
}

/* per-window NLL, perplexity and the first logits rows of m on eval_ids vs the given tensors */
/* returns the largest |logit - reference| */
static double check_function(const char *model, struct model *m, const struct safetensors *ref, const char *logits_name,
                             const char *nll_name, double ppl_want, double logit_tol, double nll_tol)
{
    char sub[128];
    snprintf(sub, sizeof sub, "slicegpt/%s", model);
    struct safetensors *ids_st = open_st(sub, "ids.safetensors");
    int B, T, V = m->cfg.vocab;
    int32_t *ids = st_ids(ids_st, "eval_ids", &B, &T);
    float *logits = malloc(sizeof(float) * (size_t)B * T * V), *nll = malloc(sizeof(float) * (size_t)B * (T - 1));
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_forward(m, ids, B, T, logits, nll, NULL, NULL, &err), 0);
    size_t nl, nw;
    float *want_l = st_f32(ref, logits_name, &nl), *want_n = st_f32(ref, nll_name, &nw);
    assert_int_equal(nw, (size_t)B);
    double worst = 0;
    for (size_t i = 0; i < nl; i++) worst = fmax(worst, fabs((double)logits[i] - want_l[i]));
    if (worst > logit_tol) print_error("%s %s: logits max abs diff %.3g\n", model, logits_name, worst);
    assert_true(worst <= logit_tol);
    double mean = 0;
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int t = 0; t < T - 1; t++) s += nll[(size_t)b * (T - 1) + t];
        s /= T - 1;
        if (fabs(s - want_n[b]) > nll_tol) print_error("%s window %d: nll %.8f vs %.8f\n", model, b, s, want_n[b]);
        assert_true(fabs(s - want_n[b]) <= nll_tol);
        mean += s / B;
    }
    if (ppl_want > 0) {
        double ppl = exp(mean);
        if (fabs(ppl - ppl_want) > 2e-5 * ppl_want) print_error("%s: ppl %.6f vs %.6f\n", model, ppl, ppl_want);
        assert_true(fabs(ppl - ppl_want) <= 2e-5 * ppl_want);
    }
    free(logits);
    free(nll);
    free(want_l);
    free(want_n);
    free(ids);
    safetensors_close(ids_st);
    return worst;
}

static void check_reference(const char *model)
{
    static const int levels[] = { 0, 10, 25, 30 };
    char sub[128], file[64], level[16];
    snprintf(sub, sizeof sub, "slicegpt/%s", model);
    struct safetensors *cal = open_st(sub, "ids.safetensors");
    int nc, tc;
    int32_t *cids = st_ids(cal, "calibration_ids", &nc, &tc);
    for (int li = 0; li < 4; li++) {
        struct model *m = open_model(model);
        struct slm_err err = SLM_ERR_INIT;
        snprintf(file, sizeof file, "ref%d.safetensors", levels[li]);
        struct safetensors *ref = open_st(sub, file);
        struct eig_ctx ec = { ref, 0, 0 };
        struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
        o.sparsity = levels[li] / 100.0;
        o.reference_compat = true;
        o.on_pca = on_pca;
        o.payload = &ec;
        int64_t fused = 0;
        if (slicegpt_run(m, cids, nc, tc, &o, &err)) print_error("%s %d%%: %s\n", model, levels[li], err.msg);
        assert_int_equal(err.rc, 0);
        (void)fused;
        /* every PCA the reference made, and no other */
        int stages = 0;
        for (size_t i = 0; i < safetensors_count(ref); i++)
            if (!strncmp(safetensors_at(ref, i)->name, "pca.", 4)) stages++;
        assert_int_equal(ec.checked, stages);
        snprintf(level, sizeof level, "%.2f", levels[li] / 100.0);
        assert_int_equal(slicegpt_model_params(m), (int64_t)summary_num(model, level, "params_sliced"));
        double lw = check_function(model, m, ref, "eval_logits", "eval_nll", summary_num(model, level, "ppl"), 1e-3, 5e-5),
               tw = -1;
        if (safetensors_find(ref, "lm_head.weight")) {
            char tmp[] = "/tmp/slim-sg-XXXXXX";
            assert_non_null(mkdtemp(tmp));
            assert_int_equal(model_save(m, tmp, DT_F32, &err), 0);
            tw = compare_tensors(model, ref, tmp, m->cfg.hidden);
            rm_rf(tmp);
        }
        print_message("%s %d%%: eigenvalues rel %.2g, logits abs %.2g, tensors rel-to-max %.2g\n", model, levels[li], ec.worst,
                      lw, tw);
        safetensors_close(ref);
        model_free(m);
    }
    free(cids);
    safetensors_close(cal);
}

static void test_core_slicegpt__reference_opt(void **state) { (void)state; check_reference("tiny-opt"); }
static void test_core_slicegpt__reference_llama_gqa(void **state) { (void)state; check_reference("tiny-llama"); }
static void test_core_slicegpt__reference_phi_parallel(void **state) { (void)state; check_reference("tiny-phi"); }
static void test_core_slicegpt__reference_stories260k(void **state) { (void)state; check_reference("stories260K"); }

/* LLaMA: the reference's fusion changes the function; compare with its fused model at 0% */
static void check_fused(const char *model)
{
    char sub[128];
    snprintf(sub, sizeof sub, "slicegpt/%s", model);
    struct safetensors *fused = open_st(sub, "fused.safetensors");
    struct model *m = open_model(model);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(slicegpt_fuse(m, true, &err), 0);
    check_function(model, m, fused, "fused.eval_logits", "fused.eval_nll", summary_num(model, NULL, "fused_ppl"), 1e-4, 5e-5);
    model_free(m);
    safetensors_close(fused);
}

static void test_core_slicegpt__reference_fusion_llama(void **state)
{
    (void)state;
    check_fused("tiny-llama");
    check_fused("stories260K");
    check_fused("tiny-opt");
    check_fused("tiny-phi");
}

/* The slim-reference OPT (d = 256) is not committed (7 MB); it runs when SLIM_TEST_DATA points at a
** folder made by tools/make-slicegpt-fixtures.py --full, which also makes every level of the other
** models compare every tensor. */
static void test_core_slicegpt__reference_slim_reference_model(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/slim-reference-model/config.json", test_data_dir());
    if (access(path, R_OK)) skip();
    check_reference("slim-reference-model");
    check_fused("slim-reference-model");
}

/* ---- sliced checkpoints ---- */

static void check_reload(const char *model, double s)
{
    char sub[128], tmp[] = "/tmp/slim-sg-XXXXXX";
    snprintf(sub, sizeof sub, "slicegpt/%s", model);
    struct safetensors *cal = open_st(sub, "ids.safetensors");
    int nc, tc;
    int32_t *cids = st_ids(cal, "calibration_ids", &nc, &tc);
    struct model *m = open_model(model), *m2 = NULL;
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    struct slm_err err = SLM_ERR_INIT;
    o.sparsity = s;
    assert_int_equal(slicegpt_run(m, cids, nc, tc, &o, &err), 0);
    int64_t want = 0;   /* the model in memory and the shape-only count agree */
    assert_int_equal(slicegpt_param_count(&want, &m->cfg, s, 8, &err), 0);
    assert_int_equal(slicegpt_model_params(m), want);
    assert_non_null(mkdtemp(tmp));
    assert_int_equal(model_save(m, tmp, DT_F32, &err), 0);
    if (model_open(&m2, tmp, kb, MODEL_LAZY_BLOCKS, &err)) print_error("%s: %s\n", model, err.msg);
    assert_int_equal(err.rc, 0);
    assert_int_equal(slicegpt_model_params(m2), slicegpt_model_params(m));
    int V = m->cfg.vocab;
    float *a = malloc(sizeof(float) * (size_t)2 * tc * V), *b = malloc(sizeof(float) * (size_t)2 * tc * V);
    assert_int_equal(model_forward(m, cids, 2, tc, a, NULL, NULL, NULL, &err), 0);
    assert_int_equal(model_forward(m2, cids, 2, tc, b, NULL, NULL, NULL, &err), 0);
    assert_memory_equal(a, b, sizeof(float) * (size_t)2 * tc * V);
    /* the reloaded model is sliced: a second SliceGPT run on it is refused */
    model_free(m2);
    assert_int_equal(model_open(&m2, tmp, kb, 0, &err), 0);
    assert_int_equal(slicegpt_run(m2, cids, nc, tc, &o, &err), -SLM_EINVAL);
    free(a);
    free(b);
    free(cids);
    safetensors_close(cal);
    model_free(m);
    model_free(m2);
    rm_rf(tmp);
}

static void test_core_slicegpt__sliced_checkpoint_reloads(void **state)
{
    (void)state;
    check_reload("tiny-opt", 0.25);
    check_reload("tiny-llama", 0.3);
    check_reload("tiny-phi", 0.1);
}

static void test_core_slicegpt__cancel_flag_stops(void **state)
{
    (void)state;
    char sub[128];
    snprintf(sub, sizeof sub, "slicegpt/%s", "tiny-llama");
    struct safetensors *cal = open_st(sub, "ids.safetensors");
    int nc, tc;
    int32_t *cids = st_ids(cal, "calibration_ids", &nc, &tc);
    struct model *m = open_model("tiny-llama");
    volatile sig_atomic_t stop = 1;
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    struct slm_err err = SLM_ERR_INIT;
    o.sparsity = 0.25;
    o.cancel = &stop;
    assert_int_equal(slicegpt_run(m, cids, nc, tc, &o, &err), -SLM_ECANCELLED);
    free(cids);
    safetensors_close(cal);
    model_free(m);
}

/* ---- the job runner: method "slicegpt" ---- */

struct prog { int blocks, last_block; bool cancel_at_first; };

static int on_progress(const struct job_progress *p, void *payload)
{
    struct prog *g = payload;
    if (!strcmp(p->stage, "compressing") && p->block >= 0) {
        g->blocks++;
        g->last_block = p->block;
        if (g->cancel_at_first) return 1;
    }
    return 0;
}

static void run_job(const char *spec_json, const char *data, struct prog *g, int want_rc, json_t **metrics, char *out_dir)
{
    char model[512], doc[2048];
    snprintf(model, sizeof model, "%s/stories260K", test_data_dir());
    snprintf(doc, sizeof doc, "%s", spec_json);
    json_t *j = json_loads(doc, 0, NULL);
    assert_non_null(j);
    struct jobspec spec;
    struct slm_err err = SLM_ERR_INIT;
    char path[128];
    if (jobspec_parse(&spec, j, path, sizeof path, &err)) print_error("spec: %s\n", err.msg);
    assert_int_equal(err.rc, 0);
    struct job_ctx ctx = { .model_dir = model, .out_dir = out_dir, .data_dir = data, .device = test_backend_name(),
                           .progress = on_progress, .payload = g };
    int rc = job_run(&spec, &ctx, metrics, &err);
    if (rc != want_rc) print_error("job: %d %s\n", rc, err.msg);
    assert_int_equal(rc, want_rc);
    jobspec_free(&spec);
    json_decref(j);
}

static void test_core_slicegpt__job_runs_saves_and_cancels(void **state)
{
    (void)state;
    char tmp[] = "/tmp/slim-sgjob-XXXXXX", ids_path[600], out[640];
    assert_non_null(mkdtemp(tmp));
    snprintf(ids_path, sizeof ids_path, "%s/ids.json", tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    struct safetensors *cal = open_st("slicegpt/stories260K", "ids.safetensors");
    int nc, tc;
    int32_t *cids = st_ids(cal, "calibration_ids", &nc, &tc);
    FILE *f = fopen(ids_path, "w");
    assert_non_null(f);
    fputc('[', f);
    for (int i = 0; i < nc * tc; i++) fprintf(f, "%s%d", i ? "," : "", cids[i]);
    fputs("]\n", f);
    fclose(f);
    const char *spec = "{\"version\":1,\"model\":{\"source\":\"/models/stories260K\"},\"method\":\"slicegpt\","
                       "\"slicegpt\":{\"sparsity\":0.25},\"calibration\":{\"dataset\":\"ids\",\"nsamples\":4,\"seqlen\":64},"
                       "\"eval\":{\"perplexity\":[],\"baseline\":false},\"device\":\"cpu\"}";
    struct prog g = { 0, -1, false };
    json_t *metrics = NULL;
    run_job(spec, tmp, &g, 0, &metrics, out);
    assert_int_equal(g.blocks, 5);
    assert_int_equal(g.last_block, 4);
    json_t *mem = json_object_get(metrics, "memory");
    assert_non_null(mem);
    assert_int_equal(json_integer_value(json_object_get(mem, "params_after")), 253824);
    assert_int_equal(json_integer_value(json_object_get(mem, "kept_width")), 48);
    assert_true(json_integer_value(json_object_get(mem, "bytes_after")) > 253824 * 4);
    json_decref(metrics);
    /* the saved checkpoint opens as a sliced model */
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_open(&m, out, kb, 0, &err), 0);
    assert_int_equal(m->embed_width, 48);
    assert_int_equal(slicegpt_model_params(m), 253824);
    model_free(m);
    /* cancelled from the progress callback after the first block */
    struct prog c = { 0, -1, true };
    metrics = NULL;
    run_job(spec, tmp, &c, -SLM_ECANCELLED, &metrics, out);
    assert_int_equal(c.blocks, 1);
    assert_null(metrics);
    free(cids);
    safetensors_close(cal);
    rm_rf(tmp);
}

static int setup(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    return kbackend_open(&kb, test_backend_name(), &err);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_slicegpt__param_counts_from_configs),
        cmocka_unit_test(test_core_slicegpt__widths_round_down),
        cmocka_unit_test(test_core_slicegpt__gram_f64_accumulates_upper_triangle),
        cmocka_unit_test(test_core_slicegpt__rejects_sparsity_outside_unit_interval),
        cmocka_unit_test(test_core_slicegpt__exact_zero_keeps_function),
        cmocka_unit_test(test_core_slicegpt__reference_fusion_llama),
        cmocka_unit_test(test_core_slicegpt__reference_opt),
        cmocka_unit_test(test_core_slicegpt__reference_llama_gqa),
        cmocka_unit_test(test_core_slicegpt__reference_phi_parallel),
        cmocka_unit_test(test_core_slicegpt__reference_stories260k),
        cmocka_unit_test(test_core_slicegpt__reference_slim_reference_model),
        cmocka_unit_test(test_core_slicegpt__sliced_checkpoint_reloads),
        cmocka_unit_test(test_core_slicegpt__cancel_flag_stops),
        cmocka_unit_test(test_core_slicegpt__job_runs_saves_and_cancels),
    };
    return cmocka_run_group_tests_name("core/slicegpt", tests, setup, teardown);
}
