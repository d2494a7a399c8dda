/*
** tests/unit/core/forward.c: the forward pass against Hugging Face transformers' own outputs
** (tests/data/<model>/reference.safetensors): every hidden state and the logits within 1e-5
** relative, the mean NLL within 1e-5 relative; the bf16 re-save loads and matches to bf16
** precision; bad configs give specific errors.
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

#include "../test_util.h"

#include "core/eval.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/slicegpt.h"
#include "kernels/kbackend.h"

static struct kbackend *kb;

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

struct ref {
    struct safetensors *st;
    int B, T;
    int32_t *ids;
};

static void ref_open(struct ref *r, const char *model)
{
    char path[512];
    struct slm_err err = SLM_ERR_INIT;
    snprintf(path, sizeof path, "%s/%s/reference.safetensors", test_data_dir(), model);
    assert_int_equal(safetensors_open(&r->st, path, &err), 0);
    const struct st_tensor *t = safetensors_find(r->st, "input_ids");
    assert_non_null(t);
    assert_int_equal(t->dtype, DT_I64);
    r->B = (int)t->shape[0];
    r->T = (int)t->shape[1];
    r->ids = malloc(sizeof(int32_t) * t->numel);
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + i * 8, 8);
        r->ids[i] = (int32_t)v;
    }
}

static float *ref_f32(struct ref *r, const char *name, size_t *n)
{
    const struct st_tensor *t = safetensors_find(r->st, name);
    assert_non_null(t);
    float *f = malloc(sizeof(float) * t->numel);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(st_tensor_to_f32(f, t, &err), 0);
    *n = (size_t)t->numel;
    return f;
}

/* hidden-state observer: compares our state i with the reference's, for the first `rows` rows */
struct hctx {
    struct ref *r;
    struct kbackend *kb;
    int n_layers, rows_ref;
    double worst;
    int checked;
};

static int on_hidden(int i, const float *h, int rows, int width, void *payload)
{
    struct hctx *c = payload;
    int hf = i <= c->n_layers - 1 ? i : (i == c->n_layers + 1 ? c->n_layers : -1);
    if (hf < 0) return 0; /* last block's pre-norm output: transformers does not report it */
    char name[32];
    snprintf(name, sizeof name, "hidden_%d", hf);
    size_t n;
    float *ref = ref_f32(c->r, name, &n);
    size_t cmp = (size_t)c->rows_ref * width;
    assert_true(cmp <= n && cmp <= (size_t)rows * width);
    float *got = malloc(sizeof(float) * cmp);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(kb_download(c->kb, got, h, cmp * sizeof(float), &err), 0);
    double e = rel_err(got, ref, cmp);
    if (e > 1e-5) print_error("%s: rel err %.3g\n", name, e);
    assert_true(e <= 1e-5);
    c->worst = e > c->worst ? e : c->worst;
    c->checked++;
    free(got);
    free(ref);
    return 0;
}

static double json_num(const char *model, const char *key)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/reference.json", test_data_dir(), model);
    json_t *j = json_load_file(path, 0, NULL);
    assert_non_null(j);
    double v = json_number_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

/* Run the model on the reference ids (first `nseq` sequences) and compare everything. */
static void check_model(const char *model, int nseq_cmp)
{
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m;
    struct ref r;
    snprintf(dir, sizeof dir, "%s/%s", test_data_dir(), model);
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    ref_open(&r, model);
    size_t nl, nn;
    float *ref_logits = ref_f32(&r, "logits", &nl), *ref_nll = ref_f32(&r, "nll", &nn);
    int V = m->cfg.vocab, B = r.B, T = r.T;
    float *logits = malloc(sizeof(float) * (size_t)B * T * V), *nll = malloc(sizeof(float) * (size_t)B * (T - 1));
    struct hctx hc = { &r, kb, m->cfg.n_layers, nseq_cmp * T, 0, 0 };
    assert_int_equal(model_forward(m, r.ids, B, T, logits, nll, on_hidden, &hc, &err), 0);
    assert_int_equal(hc.checked, m->cfg.n_layers + 1);
    size_t cmp = (size_t)nseq_cmp * T * V;
    assert_true(cmp <= nl);
    double el = rel_err(logits, ref_logits, cmp);
    assert_true(el <= 1e-5);
    assert_int_equal(nn, (size_t)B * (T - 1));
    double s = 0;
    for (size_t i = 0; i < nn; i++) s += nll[i];
    double mean = s / nn, want = json_num(model, "mean_nll");
    assert_true(fabs(mean - want) <= 1e-5 * fabs(want));
    assert_true(rel_err(nll, ref_nll, nn) <= 1e-5);
    free(logits);
    free(nll);
    free(ref_logits);
    free(ref_nll);
    free(r.ids);
    safetensors_close(r.st);
    model_free(m);
}

static int setup(void **state)
{
    (void)state;
    struct slm_err err = SLM_ERR_INIT;
    return kbackend_open(&kb, test_backend_name(), &err);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static void test_core_forward__opt_matches_transformers(void **state) { (void)state; check_model("tiny-opt", 2); }
static void test_core_forward__llama_gqa_matches_transformers(void **state) { (void)state; check_model("tiny-llama", 2); }
static void test_core_forward__phi_partial_rotary_matches_transformers(void **state) { (void)state; check_model("tiny-phi", 2); }
static void test_core_forward__stories260k_matches_transformers(void **state) { (void)state; check_model("stories260K", 2); }
/* OPT-350M wiring (post-LN, no final norm, project_in/out); reference from tools/make-opt350m-fixture.py */
static void test_core_forward__opt350m_postln_projections(void **state) { (void)state; check_model("tiny-opt350m", 2); }

static void test_core_forward__stories260k_perplexity_protocol(void **state)
{
    (void)state;
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m;
    struct ref r;
    snprintf(dir, sizeof dir, "%s/stories260K", test_data_dir());
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    ref_open(&r, "stories260K");
    struct eval_opts o = EVAL_OPTS_INIT;
    struct eval_result res;
    o.seqlen = r.T;
    o.batch = 4;
    /* the reference windows laid end to end, plus a tail shorter than a window that must be dropped */
    size_t n = (size_t)r.B * r.T + 17;
    int32_t *ids = malloc(n * sizeof *ids);
    memcpy(ids, r.ids, (size_t)r.B * r.T * sizeof *ids);
    for (size_t i = (size_t)r.B * r.T; i < n; i++) ids[i] = 5;
    assert_int_equal(eval_perplexity(m, ids, n, &o, &res, &err), 0);
    assert_int_equal(res.nwindows, r.B);
    double want = json_num("stories260K", "ppl");
    assert_true(fabs(res.ppl - want) <= 1e-5 * want);
    /* blocks loaded on demand: evaluated block-major (each block once per chunk of windows),
    ** the same numbers as the resident model with one window per forward, bit for bit */
    struct model *lazy;
    struct eval_result res1, resl;
    assert_int_equal(model_open(&lazy, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    o.batch = 1;
    assert_int_equal(eval_perplexity(m, ids, n, &o, &res1, &err), 0);
    assert_int_equal(eval_perplexity(lazy, ids, n, &o, &resl, &err), 0);
    assert_int_equal(resl.nwindows, res1.nwindows);
    assert_memory_equal(resl.window_nll, res1.window_nll, sizeof *res1.window_nll * res1.nwindows);
    assert_true(resl.ppl == res1.ppl);
    for (int b = 0; b < lazy->cfg.n_layers; b++) assert_false(lazy->blocks[b].loaded);
    assert_null(lazy->prefetch);   /* each block's prefetch was taken over by its load */
    free(res1.window_nll);
    free(resl.window_nll);
    model_free(lazy);
    free(res.window_nll);
    o.seqlen = (int)n + 1;
    assert_int_equal(eval_perplexity(m, ids, n, &o, &res, &err), -SLM_EINVAL);
    free(ids);
    free(r.ids);
    safetensors_close(r.st);
    model_free(m);
}

/* Re-save in bf16 with our writer, reload: matches the reference to bf16 precision. */
static void resave_bf16(const char *model, double tol)
{
    char dir[512], tmp[] = "/tmp/slim-bf16-XXXXXX";
    struct slm_err err = SLM_ERR_INIT;
    struct model *m, *m2;
    struct ref r;
    snprintf(dir, sizeof dir, "%s/%s", test_data_dir(), model);
    assert_non_null(mkdtemp(tmp));
    assert_int_equal(model_open(&m, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    assert_int_equal(model_save(m, tmp, DT_BF16, &err), 0);
    assert_int_equal(model_open(&m2, tmp, kb, 0, &err), 0);
    struct st_model *st;
    assert_int_equal(st_model_open(&st, tmp, &err), 0);
    for (size_t i = 0; i < st_model_count(st); i++) assert_int_equal(st_model_at(st, i)->dtype, DT_BF16);
    st_model_close(st);
    ref_open(&r, model);
    size_t nl;
    float *ref_logits = ref_f32(&r, "logits", &nl);
    int V = m->cfg.vocab;
    float *logits = malloc(sizeof(float) * (size_t)2 * r.T * V);
    assert_int_equal(model_forward(m2, r.ids, 2, r.T, logits, NULL, NULL, NULL, &err), 0);
    double e = rel_err(logits, ref_logits, (size_t)2 * r.T * V);
    assert_true(e > 1e-7);  /* it really is rounded */
    assert_true(e <= tol);
    free(logits);
    free(ref_logits);
    free(r.ids);
    safetensors_close(r.st);
    model_free(m);
    model_free(m2);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

static void test_core_forward__bf16_resave_round_trip(void **state)
{
    (void)state;
    resave_bf16("tiny-opt", 2e-2);
    resave_bf16("tiny-llama", 2e-2);
    resave_bf16("tiny-phi", 2e-2);
    resave_bf16("stories260K", 2e-2);
}

static void expect_config_error(const char *json, enum slm_rc rc, const char *needle)
{
    struct model_config c;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_config_parse(&c, json, strlen(json), &err), -(int)rc);
    if (!strstr(err.msg, needle)) print_error("message '%s' lacks '%s'\n", err.msg, needle);
    assert_non_null(strstr(err.msg, needle));
}

static void test_core_forward__config_errors_are_specific(void **state)
{
    (void)state;
    expect_config_error("{\"model_type\": \"gpt_neox\"}", SLM_EUNSUPPORTED, "opt, llama, mistral, qwen2, phi");
    expect_config_error("[1,2]", SLM_EFORMAT, "not a JSON object");
    expect_config_error("{\"model_type\": \"llama\"", SLM_EFORMAT, "config.json");
    expect_config_error("{\"model_type\": 3}", SLM_EFORMAT, "model_type");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":-4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8}",
                        SLM_EFORMAT, "num_attention_heads");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"num_key_value_heads\":3,\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8}",
                        SLM_EFORMAT, "multiple of num_key_value_heads");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":\"64\"}", SLM_EFORMAT, "hidden_size must be an integer");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8,\"hidden_act\":\"mish\"}",
                        SLM_EUNSUPPORTED, "mish");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8,"
                        "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":2}}",
                        SLM_EUNSUPPORTED, "yarn");
    expect_config_error("{\"model_type\":\"opt\",\"model_type\":\"llama\"}", SLM_EFORMAT, "duplicate");
    /* found by the config fuzzer: a factor this large overflowed the float -> int conversion */
    expect_config_error("{\"model_type\":\"phi\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8,"
                        "\"rope_parameters\":{\"partial_rotary_factor\":1.0e95}}",
                        SLM_EFORMAT, "partial_rotary_factor");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8,\"rms_norm_eps\":1e300}",
                        SLM_EFORMAT, "rms_norm_eps");
    expect_config_error("{\"model_type\":\"phi\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"vocab_size\":10,\"max_position_embeddings\":8,\"intermediate_size\":8,\"qk_layernorm\":true}",
                        SLM_EUNSUPPORTED, "qk_layernorm");
}

static void test_core_forward__llama3_config_loads(void **state)
{
    (void)state;
    const char *j = "{\"model_type\":\"llama\",\"hidden_size\":4096,\"num_hidden_layers\":32,\"num_attention_heads\":32,"
                    "\"num_key_value_heads\":8,\"vocab_size\":128256,\"max_position_embeddings\":131072,"
                    "\"intermediate_size\":14336,\"rms_norm_eps\":1e-05,\"rope_theta\":500000.0,"
                    "\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                    "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},\"tie_word_embeddings\":false}";
    struct model_config c;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_config_parse(&c, j, strlen(j), &err), 0);
    assert_string_equal(c.rope_type, "llama3");
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 128);
    /* LLaMA-3.1-8B has 8,030,261,248 parameters */
    assert_int_equal(model_config_param_count(&c), 8030261248LL);
}

/* Activation-quantization emulation: the finer the grid, the closer to the dense logits; off again
** restores them exactly; bad settings are refused. */
static void test_core_forward__input_quantization_emulation(void **state)
{
    (void)state;
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m;
    struct ref r;
    snprintf(dir, sizeof dir, "%s/tiny-llama", test_data_dir());
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    ref_open(&r, "tiny-llama");
    size_t nl;
    float *ref = ref_f32(&r, "logits", &nl), *lg = malloc(sizeof(float) * nl);
    const struct { const char *kind; int bits, group; } cfgs[] = { { "int", 8, -1 }, { "fp8", 8, -1 }, { "int", 4, 16 }, { "int", 2, -1 } };
    double e[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(model_set_input_quant(m, cfgs[i].kind, cfgs[i].bits, cfgs[i].group, &err), 0);
        assert_int_equal(model_forward(m, r.ids, r.B, r.T, lg, NULL, NULL, NULL, &err), 0);
        e[i] = rel_err(lg, ref, nl);
        print_message("input quantization %s %d bits group %d: logits rel err %.3g\n", cfgs[i].kind, cfgs[i].bits, cfgs[i].group, e[i]);
        assert_true(e[i] > 1e-6 && isfinite(e[i]));
    }
    assert_true(e[0] < 0.1);                   /* 8-bit per-token stays close (random tiny model: 0.037) */
    assert_true(e[0] < e[2] && e[2] < e[3]);   /* coarser grids move further */
    assert_int_equal(model_set_input_quant(m, NULL, 0, 0, &err), 0);
    assert_int_equal(model_forward(m, r.ids, r.B, r.T, lg, NULL, NULL, NULL, &err), 0);
    assert_true(rel_err(lg, ref, nl) <= 1e-5);
    assert_int_equal(model_set_input_quant(m, "fp4", 4, -1, &err), -SLM_EINVAL);
    assert_int_equal(model_set_input_quant(m, "fp8", 4, -1, &err), -SLM_EINVAL);
    assert_int_equal(model_set_input_quant(m, "int", 8, 0, &err), -SLM_EINVAL);
    free(lg);
    free(ref);
    free(r.ids);
    safetensors_close(r.st);
    model_free(m);
}

static void test_core_forward__rejects_bad_ids_and_lengths(void **state)
{
    (void)state;
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m;
    snprintf(dir, sizeof dir, "%s/tiny-opt", test_data_dir());
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    int32_t ids[4] = { 1, 2, 600, 3 };
    float nll[3];
    assert_int_equal(model_forward(m, ids, 1, 4, NULL, nll, NULL, NULL, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "outside the vocabulary"));
    int32_t *longer = calloc(200, sizeof *longer); /* OPT: beyond max_position_embeddings (128) */
    slm_err_clear(&err);
    assert_int_equal(model_forward(m, longer, 1, 200, NULL, NULL, NULL, NULL, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    free(longer);
    model_free(m);
    slm_err_clear(&err);
    assert_int_equal(model_open(&m, "/nonexistent-model-dir", kb, 0, &err), -SLM_ENOTFOUND);
}

/* ---- device-side embedding gather (kbackend.h gather_rows) ---- */

/* The op as a device backend would do it, on the CPU backend's memory: the CPU backend itself
** leaves it NULL, so this is how model_embed's backend path (a table copy per model, refreshed
** when the host table changes) runs here. */
static int test_gather_rows(struct kbackend *b, float *out, const float *table, const int32_t *ids, int rows, int cols,
                            int V, struct slm_err *err)
{
    (void)b; (void)err;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            out[(size_t)r * cols + c] = ids[r] >= 0 && ids[r] < V ? table[(size_t)ids[r] * cols + c] : NAN;
    return 0;
}

/* logits of ids [B x T] on m and on g (same model, gathering backend): bit for bit */
static void expect_same_logits(struct model *m, struct model *g, const int32_t *ids, int B, int T, const char *what)
{
    struct slm_err err = SLM_ERR_INIT;
    size_t n = (size_t)B * T * m->cfg.vocab;
    float *a = malloc(sizeof *a * n), *b = malloc(sizeof *b * n);
    assert_true(a && b);
    assert_int_equal(model_forward(m, ids, B, T, a, NULL, NULL, NULL, &err), 0);
    assert_int_equal(model_forward(g, ids, B, T, b, NULL, NULL, NULL, &err), 0);
    if (memcmp(a, b, sizeof *a * n)) print_error("%s: logits differ with the backend gather\n", what);
    assert_memory_equal(a, b, sizeof *a * n);
    free(a);
    free(b);
}

static void gather_case(struct kbackend *gk, const char *model, bool slice)
{
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *m, *g;
    snprintf(dir, sizeof dir, "%s/%s", test_data_dir(), model);
    assert_int_equal(model_open(&m, dir, kb, 0, &err), 0);
    assert_int_equal(model_open(&g, dir, gk, 0, &err), 0);
    enum { B = 2, T = 16, NCAL = 4 };
    int32_t ids[B * T], cal[NCAL * T];
    for (int i = 0; i < B * T; i++) ids[i] = (i * 37 + 11) % m->cfg.vocab;
    for (int i = 0; i < NCAL * T; i++) cal[i] = (i * 53 + 5) % m->cfg.vocab;
    expect_same_logits(m, g, ids, B, T, model);
    assert_non_null(g->embed_dev);      /* the copy is made and kept */
    if (slice) {   /* rewrites the host tables (centred, rotated, sliced): the copy must follow */
        struct slicegpt_opts so = SLICEGPT_OPTS_INIT;
        so.sparsity = 0.25;
        assert_int_equal(slicegpt_run(m, cal, NCAL, T, &so, &err), 0);
        assert_int_equal(slicegpt_run(g, cal, NCAL, T, &so, &err), 0);
        expect_same_logits(m, g, ids, B, T, "after SliceGPT");
    }
    /* rounds the host tables in place */
    assert_int_equal(model_set_bf16(m, true, false, &err), 0);
    assert_int_equal(model_set_bf16(g, true, false, &err), 0);
    expect_same_logits(m, g, ids, B, T, "after bf16 rounding");
    model_free(m);
    model_free(g);
}

/* A backend too full for the embedding table's copy gathers on the host instead of failing. */
static void gather_fallback_case(struct kbackend *gk)
{
    char dir[512];
    struct slm_err err = SLM_ERR_INIT;
    struct model *g;
    struct kmem_stats ms;
    enum { T = 16 };
    int32_t ids[T];
    float *x = NULL, *want = NULL, *got = NULL;
    snprintf(dir, sizeof dir, "%s/tiny-llama", test_data_dir());
    assert_int_equal(model_open(&g, dir, gk, 0, &err), 0);
    size_t n = (size_t)T * g->cfg.hidden;
    for (int i = 0; i < T; i++) ids[i] = (i * 37 + 11) % g->cfg.vocab;
    assert_int_equal(kb_alloc(gk, (void **)&x, n * sizeof *x, &err), 0);
    assert_true((want = malloc(n * sizeof *want)) && (got = malloc(n * sizeof *got)));
    assert_int_equal(model_embed(g, x, ids, 1, T, &err), 0);   /* through the backend copy */
    assert_int_equal(kb_download(gk, want, x, n * sizeof *x, &err), 0);
    model_embed_changed(g);
    assert_null(g->embed_dev);
    assert_int_equal(kb_mem_stats(gk, &ms, false, &err), 0);
    assert_true((size_t)g->cfg.vocab * g->embed_width * sizeof(float) > 1024);
    assert_int_equal(kbackend_set_limit(gk, (size_t)ms.in_use + 1024, &err), 0);   /* no room for the table */
    assert_int_equal(model_embed(g, x, ids, 1, T, &err), 0);
    assert_null(g->embed_dev);
    assert_int_equal(kb_download(gk, got, x, n * sizeof *x, &err), 0);
    assert_memory_equal(got, want, n * sizeof *got);
    assert_int_equal(kbackend_set_limit(gk, 0, &err), 0);
    kb_release(gk, x);
    free(want);
    free(got);
    model_free(g);
}

static void test_core_forward__backend_embedding_gather_is_exact(void **state)
{
    (void)state;
    struct kbackend_i iface = *kb->iface;
    if (!iface.gather_rows) iface.gather_rows = test_gather_rows;   /* a backend with the op keeps its own */
    struct kbackend gk = { kb->api_version, &iface, kb->ctx };
    gather_case(&gk, "tiny-opt", true);        /* learned positions */
    gather_case(&gk, "tiny-opt350m", false);   /* project_in, positions after it */
    gather_case(&gk, "tiny-llama", true);
    gather_fallback_case(&gk);
}


/* The TF32 hint (kgemm_args.bf16_inputs) is given exactly when both GEMM operands are bf16 values:
** bf16 weights and activations, no input-quantization emulation in between. A CPU backend that
** counts the hints stands in for the GPU (it ignores them, so the logits must not change). */
static const struct kbackend_i *hint_base;
static int hint_calls, hint_set;
static int hint_gemm(struct kbackend *k, const struct kgemm_args *a, struct slm_err *err)
{
    hint_calls++;
    hint_set += a->bf16_inputs;
    return hint_base->gemm(k, a, err);
}

static int hint_forward(struct kbackend *hk, bool bf16, bool iquant)
{
    struct slm_err err = SLM_ERR_INIT;
    struct model *m = NULL;
    char dir[512];
    int32_t ids[16];
    float nll[15];
    snprintf(dir, sizeof dir, "%s/stories260K", test_data_dir());
    assert_int_equal(model_open(&m, dir, hk, 0, &err), 0);
    for (int t = 0; t < 16; t++) ids[t] = (t * 37 + 5) % m->cfg.vocab;
    if (bf16) assert_int_equal(model_set_bf16(m, true, true, &err), 0);
    if (iquant) assert_int_equal(model_set_input_quant(m, "int", 8, -1, &err), 0);
    hint_calls = hint_set = 0;
    assert_int_equal(model_forward(m, ids, 1, 16, NULL, nll, NULL, NULL, &err), 0);
    model_free(m);
    return hint_set;
}

static void test_core_forward__bf16_gemm_hint_only_on_bf16_operands(void **state)
{
    (void)state;
    struct kbackend_i iface = *kb->iface;
    hint_base = kb->iface;
    iface.gemm = hint_gemm;
    struct kbackend hk = { kb->api_version, &iface, kb->ctx };
    assert_int_equal(hint_forward(&hk, false, false), 0);
    int n = hint_forward(&hk, true, false);
    assert_int_equal(n, 5 * 7);   /* stories260K: 5 blocks x 7 linears; the head and attention get none */
    assert_true(hint_calls > n);
    assert_int_equal(hint_forward(&hk, true, true), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_forward__opt_matches_transformers),
        cmocka_unit_test(test_core_forward__llama_gqa_matches_transformers),
        cmocka_unit_test(test_core_forward__phi_partial_rotary_matches_transformers),
        cmocka_unit_test(test_core_forward__stories260k_matches_transformers),
        cmocka_unit_test(test_core_forward__opt350m_postln_projections),
        cmocka_unit_test(test_core_forward__stories260k_perplexity_protocol),
        cmocka_unit_test(test_core_forward__bf16_resave_round_trip),
        cmocka_unit_test(test_core_forward__config_errors_are_specific),
        cmocka_unit_test(test_core_forward__llama3_config_loads),
        cmocka_unit_test(test_core_forward__input_quantization_emulation),
        cmocka_unit_test(test_core_forward__rejects_bad_ids_and_lengths),
        cmocka_unit_test(test_core_forward__backend_embedding_gather_is_exact),
        cmocka_unit_test(test_core_forward__bf16_gemm_hint_only_on_bf16_operands),
    };
    return cmocka_run_group_tests_name("core/forward", tests, setup, teardown);
}
