/* tests/unit/core/compress.c: the layer-wise pipeline against the SLiM reference run on
** stories260K (tests/data/slim-reference-stories260K, from fixtures/slim-reference-stories260K):
** masks identical and weights within 1e-3 relative for the float32 runs, perplexity within 0.5%;
** bf16 runs by tolerance. Also the calibration sampler against CPython's random. */
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
#include "core/compress.h"
#include "core/dtype.h"
#include "core/safetensors.h"
#include "ref_ids.h"

static struct kbackend *kb;
static char data_dir[4000], ref_dir[4096], model_dir[4096];

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    snprintf(data_dir, sizeof data_dir, "%s", test_data_dir());
    return kbackend_open(&kb, test_backend_name(), &e);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static void test_core_compress__pyrandom_matches_cpython(void **state)
{
    (void)state;
    struct pyrandom r;
    pyrandom_seed(&r, 0);
    /* python3: random.seed(0); getrandbits(32) x2; randint(0, 356316); randint(0, 999) */
    assert_int_equal(pyrandom_u32(&r), 3626764237u);
    assert_int_equal(pyrandom_u32(&r), 1654615998u);
    assert_int_equal(pyrandom_randint(&r, 0, 356316), 220500);
    assert_int_equal(pyrandom_randint(&r, 0, 999), 41);
    pyrandom_seed(&r, 42);
    static const int want[8] = { 1, 0, 4, 3, 3, 2, 1, 8 };
    for (int i = 0; i < 8; i++) assert_int_equal(pyrandom_randint(&r, 0, 9), want[i]);
    pyrandom_seed(&r, (1ull << 40) + 5);
    assert_int_equal(pyrandom_u32(&r), 2166296868u);
}

static void test_core_compress__sampler_windows(void **state)
{
    (void)state;
    int32_t d0[5] = { 1, 2, 3, 4, 5 }, d1[20], d2[3] = { 7, 8, 9 };
    for (int i = 0; i < 20; i++) d1[i] = 100 + i;
    int32_t *ids[3] = { d0, d1, d2 };
    size_t len[3] = { 5, 20, 3 };
    struct calib_docs docs = { 3, ids, len };
    int32_t *out = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(calib_sample(&out, &docs, 4, 8, 0, &err), 0);
    for (int s = 0; s < 4; s++) {
        /* only document 1 is strictly longer than 8: windows are consecutive ids of it */
        assert_true(out[s * 8] >= 100 && out[s * 8] <= 100 + 20 - 8 - 1);
        for (int t = 1; t < 8; t++) assert_int_equal(out[s * 8 + t], out[s * 8] + t);
    }
    free(out);
    assert_int_equal(calib_sample(&out, &docs, 1, 20, 0, &err), -SLM_EINVAL);
}

static void test_core_compress__calibration_documents(void **state)
{
    (void)state;
    char dir[4200];
    struct tokenizer *tok = NULL;
    struct slm_err err = SLM_ERR_INIT;
    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", data_dir);
    assert_int_equal(tokenizer_open(&tok, dir, &err), 0);
    static const char jsonl[] = "{\"text\": \"Hello world.\", \"url\": \"x\"}\n{\"text\": \"Second\\ndocument here\"}\n\n";
    static const char paras[] = "First paragraph\nstill first.\n\nSecond one.\n\n\nThird.";
    struct calib_docs d;
    assert_int_equal(calib_docs_from_text(&d, tok, jsonl, sizeof jsonl - 1, &err), 0);
    assert_int_equal(d.ndocs, 2);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(tokenizer_encode(tok, "Second\ndocument here", 20, true, &ids, &n, &err), 0);
    assert_int_equal(d.len[1], n);
    assert_memory_equal(d.ids[1], ids, n * sizeof *ids);
    free(ids);
    calib_docs_free(&d);
    assert_int_equal(calib_docs_from_text(&d, tok, paras, sizeof paras - 1, &err), 0);
    assert_int_equal(d.ndocs, 3);
    calib_docs_free(&d);
    static const char bad[] = "{\"txt\": 1}\n";
    assert_int_equal(calib_docs_from_text(&d, tok, bad, sizeof bad - 1, &err), -SLM_EFORMAT);
    tokenizer_free(tok);
}

/* Shapes a spec cannot handle fail before any work, naming the field and the layer. */
static void test_core_compress__shape_checks_before_work(void **state)
{
    (void)state;
    char dir[4200];
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    snprintf(dir, sizeof dir, "%s/stories260K", data_dir);   /* hidden 64, ffn 172 */
    assert_int_equal(model_open(&m, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_opts o = COMPRESS_OPTS_INIT;
    o.prune.method = PRUNE_WANDA;
    o.prune.n = 2, o.prune.m = 4, o.prune.sparsity = 0.5;
    o.quant.method = QUANT_ABSMAX;
    o.quant.group_size = 4;                 /* divides 64 and 172 */
    assert_int_equal(compress_check_model(m, &o, &err), 0);
    o.quant.group_size = 128;               /* row-wise groups of 128 over 64 output rows */
    assert_int_equal(compress_check_model(m, &o, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "/quantization/group_size"));
    int32_t ids[2 * 16] = { 1 };
    assert_int_equal(compress_model(m, ids, 2, 16, &o, NULL, &err), -SLM_EINVAL);   /* before any block loads */
    for (int b = 0; b < m->cfg.n_layers; b++) assert_false(m->blocks[b].loaded);
    slm_err_clear(&err);   /* the first error of a slm_err is kept */
    o.quant.method = QUANT_SLIM;
    o.quant.group_size = 0;
    o.lowrank.method = LOWRANK_SLIM;
    o.lowrank.quantize = true;
    o.lowrank.tile = 16;                    /* down_proj's L' has 172 rows */
    assert_int_equal(compress_check_model(m, &o, &err), -SLM_EINVAL);
    assert_non_null(strstr(err.msg, "/lowrank/tile"));
    assert_non_null(strstr(err.msg, "down_proj"));
    o.lowrank.tile = 4;
    assert_int_equal(compress_check_model(m, &o, &err), 0);
    model_free(m);
}

/* ---- the TF32 hint after compression ----
** Under bf16 emulation a compressed weight keeps struct linear.w_bf16 (GEMMs may use TF32, exact
** for bf16 operands) only when every value is bf16: checked value by value on stories260K. */
static int bf16_mark_case(enum prune_method pm, enum quant_method qm, enum lowrank_method lm, bool separate)
{
    char dir[4200];
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[4 * 32];
    for (int i = 0; i < 4 * 32; i++) ids[i] = (i * 97 + 7) % 500 + 3;
    snprintf(dir, sizeof dir, "%s/stories260K", data_dir);
    assert_int_equal(model_open(&m, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_opts o = COMPRESS_OPTS_INIT;
    o.prune.method = pm;
    o.prune.n = 2, o.prune.m = 4, o.prune.sparsity = 0.5;
    o.quant.method = qm;
    o.quant.bf16 = true;
    if (qm == QUANT_OPTQ) o.prune.optq_bits = 4;
    o.lowrank.method = lm;
    o.lowrank.tile = 4;
    o.lowrank.bf16 = true;
    o.separate_lora = separate;
    o.bf16 = true;
    assert_int_equal(compress_model(m, ids, 4, 32, &o, NULL, &err), 0);
    int marked = 0;
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &m->blocks[b].lin[r];
            if (!l->w || !l->w_bf16) continue;
            size_t n = (size_t)l->d_out * l->d_in;
            float *h = malloc(sizeof *h * n);
            assert_non_null(h);
            assert_int_equal(kb_download(kb, h, l->w, sizeof *h * n, &err), 0);
            for (size_t i = 0; i < n; i++) assert_true(bf16_round(h[i]) == h[i]);
            free(h);
            marked++;
        }
    model_free(m);
    return marked;
}

static void test_core_compress__bf16_mark_only_on_bf16_weights(void **state)
{
    (void)state;
    enum { ALL = 5 * 7 };   /* stories260K's linears */
    assert_int_equal(bf16_mark_case(PRUNE_WANDA, QUANT_NONE, LOWRANK_NONE, true), ALL);
    assert_int_equal(bf16_mark_case(PRUNE_WANDA, QUANT_SLIM, LOWRANK_NONE, true), ALL);
    assert_int_equal(bf16_mark_case(PRUNE_MAGNITUDE, QUANT_ABSMAX, LOWRANK_NONE, true), ALL);
    assert_int_equal(bf16_mark_case(PRUNE_WANDA, QUANT_SLIM, LOWRANK_SLIM, true), ALL);
    assert_int_equal(bf16_mark_case(PRUNE_WANDA, QUANT_SLIM, LOWRANK_NAIVE, false), 0);   /* merged: f32 sums */
    assert_int_equal(bf16_mark_case(PRUNE_SPARSEGPT, QUANT_OPTQ, LOWRANK_NONE, true), 0);
}

/* ---- the backend flow ---- */

/* compress_linear keeps W in backend memory when the backend has the pruning / quantization
** ops, and runs the host loops without them: a view of kb with those ops NULL (the vtable
** copied, as tests/unit/core/quant.c does) must give the same bits. Counting wrappers show the
** backend flow ran, and that it moved fewer bytes across than the host one. */
static const struct kbackend_i *flow_real;
static int flow_apply_mask_calls, flow_prune_calls;
static uint64_t flow_moved;

static int flow_apply_mask(struct kbackend *k, float *w, const uint8_t *mask, size_t n, struct slm_err *err)
{
    flow_apply_mask_calls++;
    return flow_real->apply_mask(k, w, mask, n, err);
}
static int flow_prune_nm(struct kbackend *k, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n, int m,
                         struct slm_err *err)
{
    flow_prune_calls++;
    return flow_real->prune_nm(k, w, mask, s, d_out, d_in, n, m, err);
}
static int flow_prune_rows(struct kbackend *k, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n,
                           struct slm_err *err)
{
    flow_prune_calls++;
    return flow_real->prune_rows(k, w, mask, s, d_out, d_in, n, err);
}
static int flow_prune_abs_le(struct kbackend *k, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err)
{
    flow_prune_calls++;
    return flow_real->prune_abs_le(k, w, mask, n, thr, err);
}
static int flow_upload(struct kbackend *k, void *dst, const void *src, size_t nbytes, struct slm_err *err)
{
    flow_moved += nbytes;
    return flow_real->upload(k, dst, src, nbytes, err);
}
static int flow_download(struct kbackend *k, void *dst, const void *src, size_t nbytes, struct slm_err *err)
{
    flow_moved += nbytes;
    return flow_real->download(k, dst, src, nbytes, err);
}

/* What one compress_model run leaves: the final weights beside the compress_result. */
struct flow_out {
    struct model *m;
    struct compress_result res;
    float *w[64][LIN_COUNT];
    uint64_t moved;
};

static void flow_run(struct flow_out *out, struct kbackend *view, const char *model, const struct compress_opts *o)
{
    char dir[4200];
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[4 * 32];
    uint32_t x = 12345;
    for (int i = 0; i < 4 * 32; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = (int32_t)((x >> 8) % 500) + 3;
    }
    snprintf(dir, sizeof dir, "%s/%s", data_dir, model);
    assert_int_equal(model_open(&out->m, dir, view, MODEL_LAZY_BLOCKS, &err), 0);
    assert_true(out->m->cfg.n_layers <= 64);
    flow_moved = 0;
    int rc = compress_model(out->m, ids, 4, 32, o, &out->res, &err);
    if (rc) fprintf(stderr, "%s: %s\n", model, err.msg);
    assert_int_equal(rc, 0);
    out->moved = flow_moved;
    for (int b = 0; b < out->m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &out->m->blocks[b].lin[r];
            if (!l->w) continue;
            size_t n = (size_t)l->d_out * l->d_in;
            assert_non_null(out->w[b][r] = malloc(sizeof(float) * n));
            assert_int_equal(kb_download(kb, out->w[b][r], l->w, sizeof(float) * n, &err), 0);
        }
}

static void flow_free(struct flow_out *out)
{
    for (int b = 0; b < out->m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) free(out->w[b][r]);
    compress_result_free(&out->res);
    model_free(out->m);
}

/* m: 4 for 2:4, 0 for unstructured 50% */
static void flow_case(const char *model, enum prune_method pm, int m, enum quant_method qm, int group, bool bf16,
                      bool important)
{
    struct kbackend ops = *kb, plain = *kb;
    struct kbackend_i fo = *kb->iface, fp = *kb->iface;
    flow_real = kb->iface;
    fo.apply_mask = fp.apply_mask ? flow_apply_mask : NULL;
    fo.prune_nm = fp.prune_nm ? flow_prune_nm : NULL;
    fo.prune_rows = fp.prune_rows ? flow_prune_rows : NULL;
    fo.prune_abs_le = fp.prune_abs_le ? flow_prune_abs_le : NULL;
    fo.upload = fp.upload = flow_upload;
    fo.download = fp.download = flow_download;
    fp.prune_nm = NULL;
    fp.prune_rows = NULL;
    fp.abs_kth = NULL;
    fp.prune_abs_le = NULL;
    fp.absmax_groups = NULL;
    fp.abs_range = NULL;
    fp.abs_histogram = NULL;
    fp.quant_apply = NULL;
    fp.quant_dequant = NULL;
    fp.apply_mask = NULL;
    ops.iface = &fo;
    plain.iface = &fp;
    if (!kb->iface->prune_nm || !kb->iface->prune_rows || !kb->iface->abs_kth || !kb->iface->prune_abs_le ||
        !kb->iface->apply_mask || !quant_weight_on_backend(kb)) {
        fprintf(stderr, "backend %s lacks the pruning / quantization ops: skipped\n", kb_name(kb));
        skip();
    }
    struct compress_opts o = COMPRESS_OPTS_INIT;
    o.prune.method = pm;
    o.prune.n = m ? m / 2 : 0, o.prune.m = m, o.prune.sparsity = 0.5;
    o.quant.method = qm;
    o.quant.group_size = group;
    o.quant.bits = 4;
    o.quant.bf16 = o.bf16 = bf16;
    o.lowrank.method = LOWRANK_NONE;
    o.shift_zero_metrics = true;
    o.scale_important_weights = important;
    o.keep_codes = true;
    struct flow_out a = { 0 }, h = { 0 };
    flow_apply_mask_calls = flow_prune_calls = 0;
    flow_run(&a, &ops, model, &o);
    int nlin = 0;
    for (int b = 0; b < a.m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) nlin += a.m->blocks[b].lin[r].w != NULL;
    /* Wanda + quantization: the mask of a dense copy, applied after quantizing; magnitude: pruned in place */
    assert_int_equal(flow_prune_calls, nlin);
    assert_int_equal(flow_apply_mask_calls, pm == PRUNE_WANDA ? nlin : 0);
    flow_run(&h, &plain, model, &o);
    fprintf(stderr, "flow %s: %d linears, %.1f KiB moved with the ops, %.1f KiB without\n", model, nlin,
            a.moved / 1024.0, h.moved / 1024.0);
    assert_true(a.moved < h.moved);
    for (int b = 0; b < a.m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            const struct linear *l = &a.m->blocks[b].lin[r];
            if (!l->w) continue;
            size_t n = (size_t)l->d_out * l->d_in;
            const struct compressed_linear *x = &a.res.lin[b][r], *y = &h.res.lin[b][r];
            assert_memory_equal(a.w[b][r], h.w[b][r], sizeof(float) * n);
            assert_memory_equal(&x->rel_error, &y->rel_error, sizeof x->rel_error);
            assert_true(x->present && y->present && x->rank == 0 && y->rank == 0);
            assert_true(x->mask && y->mask && x->codes && y->codes);
            assert_memory_equal(x->mask, y->mask, n);
            assert_memory_equal(x->codes, y->codes, n);
            assert_true(x->qp.kind == y->qp.kind && x->qp.bits == y->qp.bits && x->qp.rows == y->qp.rows &&
                        x->qp.cols == y->qp.cols && x->qp.group_rows == y->qp.group_rows &&
                        x->qp.group_cols == y->qp.group_cols && x->qp.bf16 == y->qp.bf16);
            assert_memory_equal(x->qp.scale, y->qp.scale, sizeof(float) * x->qp.rows * x->qp.cols);
            assert_true(!x->col_scale == !important && !y->col_scale == !important);
            if (important) assert_memory_equal(x->col_scale, y->col_scale, sizeof(float) * l->d_in);
            /* Wanda: codes of pruned entries are 0, as the checkpoint writer expects */
            for (size_t i = 0; i < n; i++)
                if (x->mask[i]) assert_int_equal(x->codes[i], 0);
        }
    flow_free(&a);
    flow_free(&h);
}

/* Under bf16 emulation the Hessian GEMMs (x^T x of bf16-valued linear inputs) carry the TF32
** hint, as the forward's linears do; in f32 none does. The CPU ignores the hint. */
static const struct kbackend_i *hess_base;
static int hess_calls, hess_hinted;
static int hess_gemm(struct kbackend *k, const struct kgemm_args *a, struct slm_err *err)
{
    if (a->ta == KB_T && a->tb == KB_N && a->a == a->b && a->m == a->n) {
        hess_calls++;
        hess_hinted += a->bf16_inputs;
    }
    return hess_base->gemm(k, a, err);
}

static void test_core_compress__hessian_gemm_hint_under_bf16(void **state)
{
    (void)state;
    struct kbackend_i f = *kb->iface;
    struct kbackend view = *kb;
    hess_base = kb->iface;
    f.gemm = hess_gemm;
    view.iface = &f;
    char dir[4200];
    int32_t ids[2 * 16];
    for (int i = 0; i < 2 * 16; i++) ids[i] = (i * 37 + 5) % 500 + 3;
    snprintf(dir, sizeof dir, "%s/stories260K", data_dir);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        struct model *m = NULL;
        struct slm_err err = SLM_ERR_INIT;
        struct compress_opts o = COMPRESS_OPTS_INIT;
        o.prune.method = PRUNE_SPARSEGPT;
        o.prune.n = 2, o.prune.m = 4, o.prune.sparsity = 0.5;
        o.prune.blocksize = 32;
        o.lowrank.method = LOWRANK_NONE;
        o.bf16 = bf16;
        assert_int_equal(model_open(&m, dir, &view, MODEL_LAZY_BLOCKS, &err), 0);
        hess_calls = hess_hinted = 0;
        assert_int_equal(compress_model(m, ids, 2, 16, &o, NULL, &err), 0);
        assert_true(hess_calls >= 2 * 4 * m->cfg.n_layers);   /* 2 windows x 4 distinct inputs per block */
        assert_int_equal(hess_hinted, bf16 ? hess_calls : 0);
        model_free(m);
    }
}

static void test_core_compress__backend_flow_magnitude_2of4_absmax(void **state)
{
    (void)state;
    flow_case("stories260K", PRUNE_MAGNITUDE, 4, QUANT_ABSMAX, 0, false, false);
    flow_case("stories260K", PRUNE_MAGNITUDE, 4, QUANT_ABSMAX, 0, true, true);
}

static void test_core_compress__backend_flow_wanda_2of4_slimquant(void **state)
{
    (void)state;
    flow_case("stories260K", PRUNE_WANDA, 4, QUANT_SLIM, 0, true, false);
    flow_case("stories260K", PRUNE_WANDA, 4, QUANT_SLIM, 0, false, true);
}

static void test_core_compress__backend_flow_unstructured(void **state)
{
    (void)state;
    flow_case("stories260K", PRUNE_WANDA, 0, QUANT_SLIM, 0, true, false);
    flow_case("stories260K", PRUNE_WANDA, 0, QUANT_ABSMAX, 0, false, true);
    flow_case("stories260K", PRUNE_MAGNITUDE, 0, QUANT_ABSMAX, 0, false, true);
}

static void test_core_compress__backend_flow_wanda_2of4_group_absmax(void **state)
{
    (void)state;
    char p[4200];
    /* stories260K's 64 / 32 / 172 rows take groups of 4; groups of 128 need the fixture OPT
    ** (hidden 256, ffn 1024), which only the full fixture set has */
    flow_case("stories260K", PRUNE_WANDA, 4, QUANT_ABSMAX, 4, true, true);
    snprintf(p, sizeof p, "%s/slim-reference/model/config.json", data_dir);
    if (access(p, R_OK)) {
        fprintf(stderr, "slim-reference/model: not in %s, group 128 skipped\n", data_dir);
        return;
    }
    flow_case("slim-reference/model", PRUNE_WANDA, 4, QUANT_ABSMAX, 128, true, false);
}

/* ---- parity with the reference ---- */

struct cfg {
    const char *name;
    enum prune_method pm;
    int n, m;
    enum quant_method qm;
    int group;
    enum lowrank_method lm;
    bool quantize_lora;
    bool bf16;
    bool opt;          /* the fixture's random OPT (slim-reference/) instead of stories260K */
    bool pad;          /* pad_lora (implied by quantize_lora) */
    bool rank_deficient;   /* fc2 has more inputs (1024) than calibration tokens (512): see below */
};

static double summary_ppl(const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/summary.json", ref_dir);
    json_t *j = json_load_file(p, 0, NULL);
    assert_non_null(j);
    double v = json_number_value(json_object_get(json_object_get(j, name), "ppl"));
    json_decref(j);
    return v;
}

static void run_cfg(const struct cfg *c)
{
    char p[4200];
    struct safetensors *ref = NULL;
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    snprintf(ref_dir, sizeof ref_dir, "%s/%s", data_dir, c->opt ? "slim-reference" : "slim-reference-stories260K");
    snprintf(model_dir, sizeof model_dir, "%s/%s", data_dir, c->opt ? "slim-reference/model" : "stories260K");
    snprintf(p, sizeof p, "%s/%s.safetensors", ref_dir, c->name);
    if (access(p, R_OK)) {
        /* only part of the fixtures is copied into tests/data; point SLIM_TEST_DATA at the full set */
        fprintf(stderr, "%s: not in %s, skipped\n", c->name, ref_dir);
        skip();
    }
    assert_int_equal(safetensors_open(&ref, p, &err), 0);
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    int nc, T, ne, Te;
    int32_t *cal = ref_ids_load(ref_dir, "calibration_ids", &nc, &T), *ev = ref_ids_load(ref_dir, "eval_ids", &ne, &Te);
    struct compress_opts o = COMPRESS_OPTS_INIT;
    o.prune.method = c->pm;
    o.prune.n = c->n;
    o.prune.m = c->m;
    o.prune.sparsity = 0.5;
    o.prune.blocksize = 256;   /* SLiM passes weight_tile_size (CLI default 256) as SparseGPT's block */
    o.quant.method = c->qm;
    o.quant.group_size = c->group;
    o.quant.bits = 4;
    o.quant.bf16 = c->bf16;
    o.lowrank.method = c->lm;
    o.lowrank.pad = c->pad;
    o.lowrank.tile = 128;
    o.lowrank.quantize = c->quantize_lora;
    o.lowrank.bf16 = c->bf16;
    o.bf16 = c->bf16;
    o.shift_zero_metrics = true;    /* prune_and_quantize's default: a pure-python check of block 0 matches only with it */
    o.keep_codes = true;
    struct compress_result res;
    int rc = compress_model(m, cal, nc, T, &o, &res, &err);
    if (rc) fprintf(stderr, "%s: %s\n", c->name, err.msg);
    assert_int_equal(rc, 0);
    long mism = 0, total = 0, mism_qkv0 = 0;
    double worst = 0;
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            struct linear *l = &m->blocks[b].lin[r];
            if (!l->w) continue;
            snprintf(p, sizeof p, "%s.weight", l->name);
            const struct st_tensor *t = safetensors_find(ref, p);
            assert_non_null(t);
            size_t n = (size_t)l->d_out * l->d_in;
            float *want = malloc(sizeof *want * n), *got = malloc(sizeof *got * n);
            assert_int_equal(st_tensor_to_f32(want, t, &err), 0);
            assert_int_equal(kb_download(kb, got, l->w, sizeof *got * n, &err), 0);
            double num = 0, den = 0;
            for (size_t i = 0; i < n; i++) {
                num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
                den += (double)want[i] * want[i];
                if (res.lin[b][r].mask) {
                    /* quantized: a kept weight may round to 0, so only "pruned here, kept there" and
                    ** "zero there, non-zero here" are mask disagreements */
                    bool pruned = res.lin[b][r].mask[i];
                    total++;
                    bool bad = c->qm == QUANT_NONE ? pruned != (want[i] == 0) : pruned ? want[i] != 0 : want[i] == 0 && got[i] != 0;
                    mism += bad;
                    mism_qkv0 += bad && b == 0 && r <= LIN_V;
                }
            }
            double rel = sqrt(num / den);
            /* the reported layer error is a fraction: compressed layers lose something, not everything */
            assert_true(res.lin[b][r].rel_error > 0 && res.lin[b][r].rel_error < 1);
            if (getenv("VERBOSE")) fprintf(stderr, "  %s rel %.3e\n", l->name, rel);
            if (rel > worst) worst = rel;
            free(want);
            free(got);
        }
    double ppl = ref_perplexity(m, ev, ne, Te), want_ppl = summary_ppl(c->name);
    double dppl = fabs(ppl / want_ppl - 1);
    fprintf(stderr, "parity %-42s mask mismatches %ld/%ld  worst weight rel %.2e  ppl %.4f vs %.4f (%.3f%%)\n",
            c->name, mism, total, worst, ppl, want_ppl, 100 * dppl);
    if (c->rank_deficient && !c->bf16) {
        /* SparseGPT on fc2 of the fixture OPT: its Hessian has rank <= 512 < 1024, so H^-1 is
        ** set by the damping alone and LAPACK vs torch rounding in the Cholesky factors moves
        ** OBS decisions (block 0: every other layer matches to 1e-6, fc2 to 5e-2). */
        assert_true(mism <= 3 * total / 100);   /* measured 2.2% (2:4), counting both directions */
        assert_true(dppl < 0.005);
    } else if (!c->bf16) {
        assert_int_equal(mism, 0);
        assert_true(worst < 1e-3);
        assert_true(dppl < 0.005);
    } else {
        /* bf16 reference, bf16 emulation (model_set_bf16): weight-only paths (magnitude + AbsMax)
        ** match exactly; with activations, cuBLAS's summation order moves a few bf16 roundings, so
        ** near-tie mask decisions flip from the first MLP on (block 0 attention matches exactly)
        ** and chaotic 2:4 models amplify them. With adapters, the fresh SLiM-Quant scale of
        ** M.(W - LR) sits on a near-flat error curve and moves by bins. Measured (stories260K /
        ** fixture OPT): masks <= 4.8% (SparseGPT 2:4; the reference's own f32 and bf16 runs differ
        ** on 10%), <= 1.2% otherwise; ppl <= 2.4% without adapters, <= 12.7% with. */
        assert_true(mism <= (c->pm == PRUNE_SPARSEGPT ? 7 : 2) * total / 100);   /* fixture OPT 2:4 (rank-deficient fc2): 5.8% */
        assert_true(worst < 0.5);
        /* From the first BLAS product on, which bf16 roundings fall differently depends on the BLAS
        ** kernel's summation order (OpenBLAS Haswell vs another core type moved SparseGPT 2:4 from
        ** 0.97% to 2.4%), so perplexity is held to the spread the reference's own f32 and bf16
        ** runs show (up to 9.6%), not to 0.5%. What needs no BLAS is exact on any machine: block
        ** 0's q/k/v read the embeddings through the norm, so Wanda's masks there must match (with
        ** adapters the fresh scale of M(W - LR) decides which kept weights round to zero). */
        assert_true(dppl < (c->lm == LOWRANK_NONE ? 0.05 : 0.25));   /* adapters: 17.5% seen with OpenBLAS Sandybridge */
        if (c->pm == PRUNE_WANDA && c->lm == LOWRANK_NONE) assert_int_equal(mism_qkv0, 0);
        if (c->pm == PRUNE_MAGNITUDE) {
            assert_int_equal(mism, 0);
            assert_true(worst == 0);
        }
    }
    compress_result_free(&res);
    free(cal);
    free(ev);
    model_free(m);
    safetensors_close(ref);
}

static const struct cfg cfgs[] = {
    { "wanda_2of4_f32", PRUNE_WANDA, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, false, false, false },
    { "wanda_unstr50_f32", PRUNE_WANDA, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, false, false, false, false },
    { "magnitude_unstr50_absmax4_f32", PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE, false, false, false, false, false },
    { "sparsegpt_2of4_f32", PRUNE_SPARSEGPT, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, false, false, false },
    { "sparsegpt_unstr50_f32", PRUNE_SPARSEGPT, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, false, false, false, false },
    { "wanda_2of4_slimquant4_slimlora_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, false, true, false, false, false },
    { "magnitude_2of4_f32", PRUNE_MAGNITUDE, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, false, false, false },
    { "wanda_2of4_bf16", PRUNE_WANDA, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, false, false, false },
    { "wanda_2of4_slimquant4_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NONE, false, true, false, false, false },
    { "wanda_2of4_slimquant4_naivelora_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NAIVE, false, true, false, false, false },
    { "magnitude_unstr50_absmax4_bf16", PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE, false, true, false, false, false },
    { "sparsegpt_2of4_bf16", PRUNE_SPARSEGPT, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, false, false, false },
    { "magnitude_2of4_bf16", PRUNE_MAGNITUDE, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, false, false, false },
    { "wanda_unstr50_bf16", PRUNE_WANDA, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, true, false, false, false },
    { "sparsegpt_unstr50_bf16", PRUNE_SPARSEGPT, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, true, false, false, false },
    { "magnitude_2of4_bf16", PRUNE_MAGNITUDE, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, true, false, false },
    { "magnitude_unstr50_absmax4_bf16", PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE, false, true, true, false, false },
    { "wanda_2of4_bf16", PRUNE_WANDA, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, true, false, false },
    { "wanda_unstr50_bf16", PRUNE_WANDA, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, true, true, false, false },
    { "sparsegpt_2of4_bf16", PRUNE_SPARSEGPT, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, true, false, true },
    { "sparsegpt_unstr50_bf16", PRUNE_SPARSEGPT, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, true, true, false, true },
    /* the random OPT of slim-reference/ (6 MB per file: not copied, runs with the full fixture set) */
    { "magnitude_2of4_f32", PRUNE_MAGNITUDE, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, true, false, false },
    { "magnitude_unstr50_absmax4_f32", PRUNE_MAGNITUDE, 0, 0, QUANT_ABSMAX, 0, LOWRANK_NONE, false, false, true, false, false },
    { "wanda_2of4_f32", PRUNE_WANDA, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, true, false, false },
    { "wanda_unstr50_f32", PRUNE_WANDA, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, false, true, false, false },
    { "sparsegpt_2of4_f32", PRUNE_SPARSEGPT, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false, true, false, true },
    { "sparsegpt_unstr50_f32", PRUNE_SPARSEGPT, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, false, true, false, true },
    { "wanda_2of4_groupabsmax4_bf16", PRUNE_WANDA, 2, 4, QUANT_ABSMAX, 128, LOWRANK_NONE, false, true, true, false, false },
    { "wanda_2of4_slimquant4_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NONE, false, true, true, false, false },
    { "wanda_2of4_slimquant4_slimlora_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, false, true, true, false, false },
    { "wanda_2of4_slimquant4_naivelora_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NAIVE, false, true, true, false, false },
    { "wanda_2of4_slimquant4_slimlora_q_bf16", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, true, true, true, true, false },
};

#define NCFG (sizeof cfgs / sizeof cfgs[0])

static void test_core_compress__parity(void **state) { run_cfg(*state); }

int main(void)
{
    /* one named test per fixture configuration: test_core_compress__parity[_opt]_<config> */
    static char names[NCFG][96];
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_core_compress__pyrandom_matches_cpython),
        cmocka_unit_test(test_core_compress__sampler_windows),
        cmocka_unit_test(test_core_compress__calibration_documents),
        cmocka_unit_test(test_core_compress__shape_checks_before_work),
        cmocka_unit_test(test_core_compress__bf16_mark_only_on_bf16_weights),
        cmocka_unit_test(test_core_compress__backend_flow_magnitude_2of4_absmax),
        cmocka_unit_test(test_core_compress__backend_flow_wanda_2of4_slimquant),
        cmocka_unit_test(test_core_compress__hessian_gemm_hint_under_bf16),
        cmocka_unit_test(test_core_compress__backend_flow_unstructured),
        cmocka_unit_test(test_core_compress__backend_flow_wanda_2of4_group_absmax),
    };
    enum { NFIXED = sizeof fixed / sizeof fixed[0] };
    struct CMUnitTest tests[NFIXED + NCFG];
    memcpy(tests, fixed, sizeof fixed);
    for (size_t i = 0; i < NCFG; i++) {
        snprintf(names[i], sizeof names[i], "test_core_compress__parity%s_%s", cfgs[i].opt ? "_opt" : "", cfgs[i].name);
        tests[NFIXED + i] = (struct CMUnitTest){ .name = names[i], .test_func = test_core_compress__parity,
                                            .initial_state = (void *)&cfgs[i] };
    }
    return _cmocka_run_group_tests("t-core-compress", tests, NFIXED + NCFG, setup, teardown);
}
