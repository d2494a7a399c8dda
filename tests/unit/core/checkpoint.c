/* tests/unit/core/checkpoint.c: compress stories260K, save the compressed checkpoint, load it back:
** logits identical bit for bit, the memory report adds up to the bytes on disk, N:M stored as
** kept values + indices, the theoretical formula reproduces the paper's OPT-125M figures. */
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
#include <sys/stat.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/memreport.h"
#include "core/safetensors.h"

static struct kbackend *kb;
static char model_dir[4096];

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    const char *d = getenv("SLIM_TEST_DATA");
    snprintf(model_dir, sizeof model_dir, "%s/stories260K", d ? d : "tests/data");
    return kbackend_open(&kb, "cpu", &e);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static void test_core_checkpoint__theoretical_formula(void **state)
{
    (void)state;
    /* ALGORITHMS.md §5.2: OPT-125M 0.398 / 0.502 / 0.424, LLaMA-2-7B 0.147 / 0.307 / 0.187 */
    assert_true(fabs(memreport_theoretical(12, 768, 3072, 50272, 0.5, 4, 0, 16) - 0.398) < 0.001);
    assert_true(fabs(memreport_theoretical(12, 768, 3072, 50272, 0.5, 4, 0.1, 16) - 0.502) < 0.001);
    assert_true(fabs(memreport_theoretical(12, 768, 3072, 50272, 0.5, 4, 0.1, 4) - 0.424) < 0.001);
    assert_true(fabs(memreport_theoretical(32, 4096, 11008, 32000, 0.5, 4, 0.1, 16) - 0.307) < 0.002);
}

struct ck {
    enum prune_method pm;
    int n, m;
    enum quant_method qm;
    int group;
    enum lowrank_method lm;
    bool quantize_lora, separate, important;
};

static float *logits_of(struct model *m, const int32_t *ids, int T)
{
    float *lg = malloc(sizeof *lg * (size_t)T * m->cfg.vocab);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_forward(m, ids, 1, T, lg, NULL, NULL, NULL, &err), 0);
    return lg;
}

static void round_trip(const struct ck *c, const char *tag)
{
    enum { NS = 4, T = 32 };
    struct model *m = NULL, *r = NULL;
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[NS * T];
    for (int i = 0; i < NS * T; i++) ids[i] = 1 + (i * 37 + i / 7) % 500;
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_opts o = COMPRESS_OPTS_INIT;
    o.prune.method = c->pm;
    o.prune.n = c->n;
    o.prune.m = c->m;
    o.prune.sparsity = c->pm == PRUNE_NONE ? 0 : 0.5;
    o.quant.method = c->qm;
    o.quant.group_size = c->group;
    o.scale_important_weights = c->important;
    if (c->qm == QUANT_OPTQ) { o.prune.optq_bits = 4; o.prune.optq_group = c->group; }
    o.lowrank.method = c->lm;
    o.lowrank.tile = 4;
    o.lowrank.quantize = c->quantize_lora;
    o.separate_lora = c->separate;
    o.shift_zero_metrics = true;
    o.keep_codes = true;
    struct compress_result res;
    int rc = compress_model(m, ids, NS, T, &o, &res, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    float *a = logits_of(m, ids, T);
    char dir[] = "/tmp/slim-ckpt-XXXXXX";
    assert_non_null(mkdtemp(dir));
    json_t *mem = NULL;
    rc = checkpoint_save(m, &res, &o, dir, NULL, NULL, &mem, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    assert_true(checkpoint_is(dir));
    rc = checkpoint_open(&r, dir, kb, 0, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    float *b = logits_of(r, ids, T);
    assert_memory_equal(a, b, sizeof *a * T * m->cfg.vocab);
    /* the report counts exactly the tensor bytes of the file (file = 8 + header + data) */
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *f = fopen(p, "rb");
    uint64_t hl = 0;
    assert_int_equal(fread(&hl, 8, 1, f), 1);
    fclose(f);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    uint64_t stored = (uint64_t)json_integer_value(json_object_get(mem, "stored_bytes"));
    assert_int_equal(stored, (uint64_t)st.st_size - 8 - hl);
    double ratio = json_real_value(json_object_get(mem, "ratio"));
    fprintf(stderr, "%-36s stored %llu of %llu bytes (ratio %.3f)\n", tag, (unsigned long long)stored,
            (unsigned long long)json_integer_value(json_object_get(mem, "dense_bytes")), ratio);
    if (c->qm != QUANT_NONE && c->separate) assert_true(ratio < 0.5);
    if (c->m && c->separate) {   /* merged adapters make the weight dense: nothing to index */
        json_t *bd = json_object_get(mem, "breakdown");
        assert_true(json_integer_value(json_object_get(bd, "sparsity_metadata")) > 0);
    }
    json_decref(mem);
    free(a);
    free(b);
    compress_result_free(&res);
    model_free(m);
    model_free(r);
    const char *files[] = { "model.safetensors", "config.json", "slim_config.json" };
    for (int i = 0; i < 3; i++) { snprintf(p, sizeof p, "%s/%s", dir, files[i]); unlink(p); }
    rmdir(dir);
}

static void test_core_checkpoint__slim_quantized_adapters(void **state)
{
    (void)state;
    struct ck c = { PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, true, true, false };
    round_trip(&c, "wanda 2:4 slim-quant slim-lora^Q");
}
static void test_core_checkpoint__sparsegpt_optq(void **state)
{
    (void)state;
    struct ck c = { PRUNE_SPARSEGPT, 0, 0, QUANT_OPTQ, -1, LOWRANK_NONE, false, true, false };
    round_trip(&c, "sparsegpt 50% + optq per row");
}
static void test_core_checkpoint__nm_values(void **state)
{
    (void)state;
    struct ck c = { PRUNE_MAGNITUDE, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, true, false };
    round_trip(&c, "magnitude 2:4, no quantization");
}
static void test_core_checkpoint__group_absmax_important(void **state)
{
    (void)state;
    struct ck c = { PRUNE_WANDA, 0, 0, QUANT_ABSMAX, 4, LOWRANK_NONE, false, true, true };
    round_trip(&c, "wanda 50% group absmax + AWQ-like");
}
static void test_core_checkpoint__merged_naive(void **state)
{
    (void)state;
    struct ck c = { PRUNE_WANDA, 2, 4, QUANT_ABSMAX, 0, LOWRANK_NAIVE, false, false, false };
    round_trip(&c, "wanda 2:4 absmax naive-lora merged");
}

static void test_core_checkpoint__rejects_foreign_folder(void **state)
{
    (void)state;
    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_false(checkpoint_is(model_dir));
    assert_int_equal(checkpoint_open(&m, model_dir, kb, 0, &err), -SLM_EFORMAT);
    assert_null(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_checkpoint__theoretical_formula),
        cmocka_unit_test(test_core_checkpoint__slim_quantized_adapters),
        cmocka_unit_test(test_core_checkpoint__sparsegpt_optq),
        cmocka_unit_test(test_core_checkpoint__nm_values),
        cmocka_unit_test(test_core_checkpoint__group_absmax_important),
        cmocka_unit_test(test_core_checkpoint__merged_naive),
        cmocka_unit_test(test_core_checkpoint__rejects_foreign_folder),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
