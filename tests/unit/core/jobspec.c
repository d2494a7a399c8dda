/* tests/unit/core/jobspec.c: job spec validation: good specs get their defaults, bad specs name
** the exact JSON pointer of the field to change. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/compress.h"
#include "core/jobspec.h"

#define MODEL "\"model\":{\"source\":\"hf://facebook/opt-125m\"}"

/* Parse text; return rc, copy the reported pointer into path. */
static int parse(struct jobspec *s, const char *text, char *path, size_t n, struct slm_err *err)
{
    json_error_t je;
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    assert_non_null(doc);
    int rc = jobspec_parse(s, doc, path, n, err);
    json_decref(doc);
    return rc;
}

static void test_core_jobspec__defaults_filled(void **state)
{
    (void)state;
    struct jobspec s;
    struct slm_err err = SLM_ERR_INIT;
    char path[128];
    assert_int_equal(parse(&s, "{" MODEL "}", path, sizeof path, &err), 0);
    assert_int_equal(s.method, JS_METHOD_SLIM);
    assert_string_equal(s.model.revision, "main");
    assert_int_equal(s.pruning.method, JS_PRUNE_NONE);
    assert_int_equal(s.quantization.method, JS_QUANT_NONE);
    assert_int_equal(s.lowrank.method, JS_LOWRANK_NONE);
    assert_string_equal(s.calibration.dataset, "c4");
    assert_int_equal(s.calibration.nsamples, 128);
    assert_int_equal(s.calibration.seqlen, 2048);
    assert_int_equal(s.calibration.seed, 0);
    assert_int_equal(s.eval.n_perplexity, 1);
    assert_string_equal(s.eval.perplexity[0], "wikitext2");
    assert_int_equal(s.eval.seqlen, 2048);
    assert_true(s.eval.baseline);
    assert_int_equal(s.eval.batch, 1);
    assert_int_equal(s.device, JS_DEVICE_AUTO);
    assert_non_null(s.raw);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.raw, "calibration"), "dataset")), "c4");
    assert_string_equal(path, "");
    jobspec_free(&s);
}

static void test_core_jobspec__headline_config(void **state)
{
    (void)state;
    struct jobspec s;
    struct slm_err err = SLM_ERR_INIT;
    const char *t = "{" MODEL ",\"method\":\"slim\","
        "\"pruning\":{\"method\":\"wanda\",\"sparsity\":0.5,\"pattern\":\"2:4\"},"
        "\"quantization\":{\"method\":\"slim-quant\",\"bits\":4,\"group_size\":0},"
        "\"lowrank\":{\"method\":\"slim\",\"rank_ratio\":0.1,\"quantize\":true,\"tile\":128},"
        "\"calibration\":{\"dataset\":\"c4\",\"nsamples\":8,\"seqlen\":64,\"seed\":3},"
        "\"eval\":{\"perplexity\":[\"wikitext2\",\"c4\"],\"seqlen\":64,\"baseline\":false},\"device\":\"cpu\"}";
    assert_int_equal(parse(&s, t, NULL, 0, &err), 0);
    assert_int_equal(s.pruning.method, JS_PRUNE_WANDA);
    assert_int_equal(s.pruning.n, 2);
    assert_int_equal(s.pruning.m, 4);
    assert_true(s.pruning.shift_zero_metrics);
    assert_true(fabs(s.pruning.damp - 0.01) < 1e-15);
    assert_int_equal(s.pruning.blocksize, 128);
    assert_int_equal(s.quantization.method, JS_QUANT_SLIM);
    assert_int_equal(s.lowrank.method, JS_LOWRANK_SLIM);
    assert_true(s.lowrank.quantize);
    assert_true(s.lowrank.separate);
    assert_true(s.lowrank.pad);
    assert_int_equal(s.calibration.seed, 3);
    assert_int_equal(s.eval.n_perplexity, 2);
    assert_string_equal(s.eval.perplexity[1], "c4");
    assert_false(s.eval.baseline);
    assert_int_equal(s.device, JS_DEVICE_CPU);
    /* the canonical document parses again to the same spec */
    struct jobspec s2;
    assert_int_equal(jobspec_parse(&s2, s.raw, NULL, 0, &err), 0);
    assert_true(json_equal(s.raw, s2.raw));
    jobspec_free(&s2);
    jobspec_free(&s);
}

static void test_core_jobspec__more_good_specs(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{" MODEL ",\"pruning\":{\"method\":\"magnitude\",\"pattern\":\"2:4\"}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"4:8\",\"shift_zero_metrics\":false}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"1:3\"}}",
        "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\",\"sparsity\":0.7,\"blocksize\":64,\"damp\":0.05}}",
        "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\",\"pattern\":\"2:4\"},\"quantization\":{\"method\":\"optq\",\"group_size\":-1}}",
        "{" MODEL ",\"quantization\":{\"method\":\"optq\",\"group_size\":128}}",
        "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"group_size\":0,\"bits\":8}}",
        "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"column_wise_grouping\":true}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsity\":0.5},\"quantization\":{\"method\":\"absmax\",\"joint\":true}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":0}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":1000,\"column_wise_grouping\":true}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"quantization\":{\"method\":\"slim-quant\",\"scale_important_weights\":true}}",
        "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input\":\"fp8\"}}",
        "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input\":\"int\",\"input_bits\":4,\"input_group_size\":128}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"lowrank\":{\"method\":\"naive\",\"prune\":true}}",
        "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"lowrank\":{\"method\":\"slim\",\"separate\":false,\"pad\":false}}",
        "{" MODEL ",\"quantization\":{\"method\":\"absmax\"},\"lowrank\":{\"method\":\"l2qer\"}}",
        "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":0.25}}",
        "{" MODEL ",\"precision\":\"bf16\",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"quantization\":{\"method\":\"slim-quant\"}}",
        "{" MODEL ",\"method\":\"eval\",\"eval\":{\"perplexity\":[]}}",
        "{\"version\":1,\"model\":{\"source\":\"file:///models/opt\",\"revision\":\"abc\"}}",
        "{\"model\":{\"source\":\"/models/opt\"},\"quantization\":{\"method\":\"none\",\"input\":null}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        struct jobspec s;
        struct slm_err err = SLM_ERR_INIT;
        int rc = parse(&s, good[i], NULL, 0, &err);
        if (rc) fprintf(stderr, "spec %zu: %s\n", i, err.msg);
        assert_int_equal(rc, 0);
        struct jobspec s2;
        rc = jobspec_parse(&s2, s.raw, NULL, 0, &err);
        if (rc) fprintf(stderr, "canonical %zu: %s\n", i, err.msg);
        assert_int_equal(rc, 0);
        assert_true(json_equal(s.raw, s2.raw));
        jobspec_free(&s2);
        jobspec_free(&s);
    }
}

/* JSQ's mixing factor: default 2.1, given values kept, in the canonical document only with joint */
static void test_core_jobspec__jsq_mixing_factor(void **state)
{
    (void)state;
    struct jobspec s;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(parse(&s, "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},"
                               "\"quantization\":{\"method\":\"absmax\",\"joint\":true}}", NULL, 0, &err), 0);
    assert_true(s.quantization.joint);
    assert_true(s.quantization.mixing_factor == 2.1);
    json_t *q = json_object_get(s.raw, "quantization");
    assert_true(json_real_value(json_object_get(q, "mixing_factor")) == 2.1);
    jobspec_free(&s);
    assert_int_equal(parse(&s, "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},"
                               "\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":0.75}}", NULL, 0, &err), 0);
    assert_true(s.quantization.mixing_factor == 0.75);
    struct compress_opts o;
    assert_int_equal(compress_opts_from_spec(&o, &s, &err), 0);
    assert_true(o.jsq.on);
    assert_true(o.jsq.mixing_factor == 0.75);
    jobspec_free(&s);
    assert_int_equal(parse(&s, "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\"}}",
                           NULL, 0, &err), 0);
    assert_null(json_object_get(json_object_get(s.raw, "quantization"), "mixing_factor"));
    assert_int_equal(compress_opts_from_spec(&o, &s, &err), 0);
    assert_false(o.jsq.on);
    jobspec_free(&s);
}

static void test_core_jobspec__slicegpt_defaults(void **state)
{
    (void)state;
    struct jobspec s;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(parse(&s, "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":0.3}}", NULL, 0, &err), 0);
    assert_string_equal(s.calibration.dataset, "wikitext2");
    assert_int_equal(s.calibration.seed, 42);
    assert_int_equal(s.slicegpt.round_to, 8);
    assert_null(json_object_get(s.raw, "pruning"));
    jobspec_free(&s);
}

struct bad { const char *spec, *ptr; };

static void test_core_jobspec__bad_specs_name_the_field(void **state)
{
    (void)state;
    static const struct bad bad[] = {
        { "[]", "" },
        { "{}", "/model" },
        { "{\"model\":{}}", "/model/source" },
        { "{\"model\":{\"source\":\"ftp://x\"}}", "/model/source" },
        { "{\"model\":{\"source\":\"hf://opt\"}}", "/model/source" },
        { "{" MODEL ",\"modle\":1}", "/modle" },
        { "{" MODEL ",\"a/b~c\":1}", "/a~1b~0c" },
        { "{" MODEL ",\"version\":2}", "/version" },
        { "{" MODEL ",\"method\":\"gptq\"}", "/method" },
        { "{" MODEL ",\"device\":\"tpu\"}", "/device" },
        { "{" MODEL ",\"precision\":\"fp16\"}", "/precision" },
        { "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\"},\"quantization\":{\"method\":\"absmax\"}}", "/quantization/method" },
        { "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\"},\"quantization\":{\"method\":\"slim-quant\"}}", "/quantization/method" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"precision\":\"bf16\",\"slicegpt\":{\"sparsity\":0.25}}", "/precision" },
        { "{" MODEL ",\"pruning\":[]}", "/pruning" },
        { "{" MODEL ",\"pruning\":{}}", "/pruning/method" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsty\":0.5}}", "/pruning/sparsty" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsity\":1.0}}", "/pruning/sparsity" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsity\":\"0.5\"}}", "/pruning/sparsity" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsity\":0}}", "/pruning/sparsity" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"sparsity\":0.6,\"pattern\":\"2:4\"}}", "/pruning/sparsity" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"4:2\"}}", "/pruning/pattern" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4x\"}}", "/pruning/pattern" },
        { "{" MODEL ",\"pruning\":{\"method\":\"none\",\"sparsity\":0.5}}", "/pruning/sparsity" },
        { "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\",\"blocksize\":0}}", "/pruning/blocksize" },
        { "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\",\"damp\":-0.1}}", "/pruning/damp" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"shift_zero_metrics\":1}}", "/pruning/shift_zero_metrics" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"bits\":16}}", "/quantization/bits" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"bits\":4.0}}", "/quantization/bits" },
        { "{" MODEL ",\"quantization\":{\"method\":\"slim-quant\",\"group_size\":128}}", "/quantization/group_size" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"group_size\":-2}}", "/quantization/group_size" },
        { "{" MODEL ",\"quantization\":{\"method\":\"optq\",\"column_wise_grouping\":true}}", "/quantization/column_wise_grouping" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"optq\"}}", "/quantization/method" },
        { "{" MODEL ",\"quantization\":{\"method\":\"none\",\"bits\":4}}", "/quantization/bits" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input\":\"fp4\"}}", "/quantization/input" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input\":\"fp8\",\"input_bits\":4}}", "/quantization/input_bits" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input_bits\":4}}", "/quantization/input_bits" },
        { "{" MODEL ",\"quantization\":{\"method\":\"absmax\",\"input\":\"int\",\"input_group_size\":0}}", "/quantization/input_group_size" },
        { "{" MODEL ",\"pruning\":{\"method\":\"magnitude\"},\"quantization\":{\"method\":\"absmax\",\"scale_important_weights\":true}}", "/quantization/scale_important_weights" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"slim-quant\",\"joint\":true}}", "/quantization/joint" },
        { "{" MODEL ",\"pruning\":{\"method\":\"sparsegpt\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true}}", "/quantization/joint" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"group_size\":0,\"joint\":true}}", "/quantization/joint" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":-0.5}}", "/quantization/mixing_factor" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":1001}}", "/quantization/mixing_factor" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"mixing_factor\":\"2.1\"}}", "/quantization/mixing_factor" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"mixing_factor\":2.1}}", "/quantization/mixing_factor" },
        { "{" MODEL ",\"quantization\":{\"method\":\"none\",\"mixing_factor\":2.1}}", "/quantization/mixing_factor" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true,\"scale_important_weights\":true}}", "/quantization/scale_important_weights" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\",\"joint\":true},\"lowrank\":{\"method\":\"slim\"}}", "/lowrank/method" },
        { "{" MODEL ",\"lowrank\":{\"method\":\"slim\"}}", "/lowrank/method" },
        { "{" MODEL ",\"pruning\":{\"method\":\"magnitude\"},\"lowrank\":{\"method\":\"naive\"}}", "/lowrank/method" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"lowrank\":{\"method\":\"slim\",\"rank_ratio\":0}}", "/lowrank/rank_ratio" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"lowrank\":{\"method\":\"slim\",\"rank_ratio\":1.5}}", "/lowrank/rank_ratio" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"lowrank\":{\"method\":\"slim\",\"prune\":true}}", "/lowrank/prune" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"4:8\"},\"lowrank\":{\"method\":\"slim\",\"prune\":true}}", "/lowrank/prune" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\",\"pattern\":\"2:4\"},\"lowrank\":{\"method\":\"slim\",\"prune\":true,\"separate\":false}}", "/lowrank/prune" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"lowrank\":{\"method\":\"slim\",\"quantize\":true}}", "/lowrank/quantize" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"slim-quant\"},\"lowrank\":{\"method\":\"slim\",\"quantize\":true,\"tile\":0}}", "/lowrank/tile" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"slim-quant\"},\"lowrank\":{\"method\":\"slim\",\"quantize\":true,\"tile\":1}}", "/lowrank/tile" },
        { "{" MODEL ",\"lowrank\":{\"method\":\"none\",\"tile\":128}}", "/lowrank/tile" },
        { "{" MODEL ",\"pruning\":{\"method\":\"wanda\"},\"quantization\":{\"method\":\"absmax\"},\"lowrank\":{\"method\":\"l2qer\"}}", "/lowrank/method" },
        { "{" MODEL ",\"method\":\"slicegpt\"}", "/slicegpt" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{}}", "/slicegpt/sparsity" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":1}}", "/slicegpt/sparsity" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":-0.1}}", "/slicegpt/sparsity" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":0.2},\"pruning\":{\"method\":\"wanda\"}}", "/pruning" },
        { "{" MODEL ",\"method\":\"slicegpt\",\"slicegpt\":{\"sparsity\":0.2},\"quantization\":{\"method\":\"absmax\"}}", "/quantization" },
        { "{" MODEL ",\"slicegpt\":{\"sparsity\":0.2}}", "/slicegpt" },
        { "{" MODEL ",\"method\":\"eval\",\"calibration\":{}}", "/calibration" },
        { "{" MODEL ",\"method\":\"eval\",\"lowrank\":{\"method\":\"none\"}}", "/lowrank" },
        { "{" MODEL ",\"calibration\":{\"dataset\":\"../etc/passwd\"}}", "/calibration/dataset" },
        { "{" MODEL ",\"calibration\":{\"nsamples\":0}}", "/calibration/nsamples" },
        { "{" MODEL ",\"calibration\":{\"seqlen\":1}}", "/calibration/seqlen" },
        { "{" MODEL ",\"calibration\":{\"seed\":-1}}", "/calibration/seed" },
        { "{" MODEL ",\"eval\":{\"perplexity\":\"wikitext2\"}}", "/eval/perplexity" },
        { "{" MODEL ",\"eval\":{\"perplexity\":[\"wikitext2\",3]}}", "/eval/perplexity/1" },
        { "{" MODEL ",\"eval\":{\"perplexity\":[\"c4\",\"c4\"]}}", "/eval/perplexity/1" },
        { "{" MODEL ",\"eval\":{\"batch\":0}}", "/eval/batch" },
        { "{" MODEL ",\"eval\":{\"baseline\":\"yes\"}}", "/eval/baseline" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct jobspec s;
        struct slm_err err = SLM_ERR_INIT;
        char path[128] = "junk";
        int rc = parse(&s, bad[i].spec, path, sizeof path, &err);
        if (rc != -SLM_EINVAL || strcmp(path, bad[i].ptr))
            fprintf(stderr, "spec %zu: rc %d path '%s' msg '%s' (want '%s')\n", i, rc, path, err.msg, bad[i].ptr);
        assert_int_equal(rc, -SLM_EINVAL);
        assert_string_equal(path, bad[i].ptr);
        /* the message starts with the pointer ("/" for the root) and gives a reason */
        const char *want = bad[i].ptr[0] ? bad[i].ptr : "/";
        assert_int_equal(strncmp(err.msg, want, strlen(want)), 0);
        assert_true(strlen(err.msg) > strlen(want) + 3);
        assert_null(s.raw);   /* failure leaves nothing to free */
        jobspec_free(&s);
    }
}

static void test_core_jobspec__capabilities(void **state)
{
    (void)state;
    json_t *c = jobspec_capabilities();
    assert_non_null(c);
    json_t *pm = json_object_get(json_object_get(c, "pruning"), "methods");
    assert_int_equal(json_array_size(pm), 4);
    assert_string_equal(json_string_value(json_array_get(pm, 3)), "sparsegpt");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(c, "calibration"), "defaults"), "nsamples")), 128);
    json_decref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_jobspec__defaults_filled),
        cmocka_unit_test(test_core_jobspec__headline_config),
        cmocka_unit_test(test_core_jobspec__more_good_specs),
        cmocka_unit_test(test_core_jobspec__slicegpt_defaults),
        cmocka_unit_test(test_core_jobspec__jsq_mixing_factor),
        cmocka_unit_test(test_core_jobspec__bad_specs_name_the_field),
        cmocka_unit_test(test_core_jobspec__capabilities),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
