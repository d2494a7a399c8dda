/* tests/unit/core/checkpoint.c: compress stories260K, save the compressed checkpoint, load it back:
** logits identical bit for bit, the memory report adds up to the bytes on disk, N:M stored as
** kept values + indices, the theoretical formula reproduces the paper's OPT-125M figures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../test_util.h"
#include "core/checkpoint.h"
#include "core/eval.h"
#include "core/job.h"
#include "core/memreport.h"
#include "core/safetensors.h"

static struct kbackend *kb;
static char model_dir[4096];

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    snprintf(model_dir, sizeof model_dir, "%s/stories260K", test_data_dir());
    return kbackend_open(&kb, test_backend_name(), &e);
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

/* configurations both the whole-model writer and the streamed one are checked with */
static const struct ck ck_slim_q = { PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, true, true, false };
static const struct ck ck_sparsegpt = { PRUNE_SPARSEGPT, 0, 0, QUANT_OPTQ, -1, LOWRANK_NONE, false, true, false };
static const struct ck ck_l2qer = { PRUNE_NONE, 0, 0, QUANT_ABSMAX, 4, LOWRANK_L2QER, false, true, false };

static bool g_prune_lora;   /* round_trip: prune the adapters too (§4.5) */
static bool g_bf16;         /* bf16 emulation (precision "bf16"): every weight rounded in memory */

static float *logits_of(struct model *m, const int32_t *ids, int T)
{
    float *lg = malloc(sizeof *lg * (size_t)T * m->cfg.vocab);
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_forward(m, ids, 1, T, lg, NULL, NULL, NULL, &err), 0);
    return lg;
}

/* Tensor bytes of every shard the index names (a shard file = 8 + header + data). */
static uint64_t stored_on_disk(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    json_t *idx = json_load_file(p, 0, NULL), *seen = json_object();
    assert_non_null(idx);
    uint64_t total = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(idx, "weight_map"), k, v) {
        const char *file = json_string_value(v);
        if (json_object_get(seen, file)) continue;
        json_object_set_new(seen, file, json_true());
        snprintf(p, sizeof p, "%s/%s", dir, file);
        FILE *f = fopen(p, "rb");
        uint64_t hl = 0;
        struct stat st;
        assert_non_null(f);
        assert_int_equal(fread(&hl, 8, 1, f), 1);
        fclose(f);
        assert_int_equal(stat(p, &st), 0);
        total += (uint64_t)st.st_size - 8 - hl;
    }
    assert_int_equal(total, (uint64_t)json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")));
    json_decref(seen);
    json_decref(idx);
    return total;
}

static void rm_folder(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[4200];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d) closedir(d);
    rmdir(dir);
}

static void opts_of(struct compress_opts *o, const struct ck *c)
{
    struct compress_opts d = COMPRESS_OPTS_INIT;
    *o = d;
    o->prune.method = c->pm;
    o->prune.n = c->n;
    o->prune.m = c->m;
    o->prune.sparsity = c->pm == PRUNE_NONE ? 0 : 0.5;
    o->quant.method = c->qm;
    o->quant.group_size = c->group;
    o->scale_important_weights = c->important;
    if (c->qm == QUANT_OPTQ) { o->prune.optq_bits = 4; o->prune.optq_group = c->group; }
    o->lowrank.method = c->lm;
    o->lowrank.tile = 4;
    o->lowrank.quantize = c->quantize_lora;
    o->separate_lora = c->separate;
    o->shift_zero_metrics = true;
    o->keep_codes = true;
    o->prune_lora = g_prune_lora;
    o->prune_lora_iters = 50;
    o->bf16 = o->quant.bf16 = o->lowrank.bf16 = g_bf16;
}

static void round_trip(const struct ck *c, const char *tag)
{
    enum { NS = 4, T = 32 };
    struct model *m = NULL, *r = NULL;
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[NS * T];
    for (int i = 0; i < NS * T; i++) ids[i] = 1 + (i * 37 + i / 7) % 500;
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_opts o;
    opts_of(&o, c);
    struct compress_result res;
    int rc = compress_model(m, ids, NS, T, &o, &res, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    if (g_prune_lora) {
        /* every adapter L has 2 zeros in each group of 4 consecutive rows of a rank column */
        for (int b = 0; b < m->cfg.n_layers; b++)
            for (int k = 0; k < LIN_COUNT; k++) {
                struct linear *l = &m->blocks[b].lin[k];
                if (!l->rank) continue;
                float *L = malloc(sizeof *L * l->d_in * l->rank);
                assert_int_equal(kb_download(kb, L, l->lora_l, sizeof *L * l->d_in * l->rank, &err), 0);
                for (int q = 0; q < l->rank; q++)
                    for (int g = 0; g < l->d_in; g += 4) {
                        int z = 0;
                        for (int j = g; j < g + 4; j++) z += L[j * l->rank + q] == 0;
                        assert_true(z >= 2);
                    }
                free(L);
            }
    }
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
    /* a backend without quant_dequant gets its weights rebuilt on the host: the same logits */
    struct kbackend plain = *kb;
    struct kbackend_i f = *kb->iface;
    struct model *r2 = NULL;
    f.quant_dequant = NULL;
    plain.iface = &f;
    assert_int_equal(checkpoint_open(&r2, dir, &plain, 0, &err), 0);
    float *b2 = logits_of(r2, ids, T);
    assert_memory_equal(a, b2, sizeof *a * T * m->cfg.vocab);
    free(b2);
    model_free(r2);
    /* the report counts exactly the tensor bytes of the shards */
    uint64_t stored = (uint64_t)json_integer_value(json_object_get(mem, "stored_bytes"));
    assert_int_equal(stored, stored_on_disk(dir));
    double ratio = json_real_value(json_object_get(mem, "ratio"));
    fprintf(stderr, "%-36s stored %llu of %llu bytes (ratio %.3f)\n", tag, (unsigned long long)stored,
            (unsigned long long)json_integer_value(json_object_get(mem, "dense_bytes")), ratio);
    if (c->qm != QUANT_NONE && c->separate) assert_true(ratio < (c->pm != PRUNE_NONE ? 0.5 : 0.7));
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
    rm_folder(dir);
}

static void test_core_checkpoint__slim_quantized_adapters(void **state)
{
    (void)state;
    round_trip(&ck_slim_q, "wanda 2:4 slim-quant slim-lora^Q");
}
static void test_core_checkpoint__sparsegpt_optq(void **state)
{
    (void)state;
    round_trip(&ck_sparsegpt, "sparsegpt 50% + optq per row");
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

static void test_core_checkpoint__prune_lora(void **state)
{
    (void)state;
    struct ck c = { PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, false, true, false };
    g_prune_lora = true;
    round_trip(&c, "wanda 2:4 slim-quant slim-lora, prune_lora");
    g_prune_lora = false;
}

static void test_core_checkpoint__l2qer(void **state)
{
    (void)state;
    round_trip(&ck_l2qer, "group absmax + L2QER adapters");
}

/* ---- job_run end to end: a byte-level tokenizer (256 byte symbols, no merges: every id < 256
** fits stories260K's vocabulary) over a copy of stories260K ---- */

static void write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", from_dir, name);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    write_file(to_dir, name, buf, (size_t)n);
    free(buf);
}

static void byte_vocab(const char *dir)
{
    json_t *v = json_object();
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)extra++;
        char u[4] = { 0 };
        if (cp < 0x80) u[0] = (char)cp;
        else { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); }
        json_object_set_new(v, u, json_integer(b));
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    assert_int_equal(json_dump_file(v, p, 0), 0);
    json_decref(v);
    write_file(dir, "merges.txt", "#version: 0.2\n", 14);
}

/* The end-to-end job's spec and folders: the output, the model copy, the data files. */
static void job_folders_free(struct jobspec *spec, const char *odir, const char *mdir, const char *ddir)
{
    char line[4200];
    jobspec_free(spec);
    rm_folder(odir);
    rm_folder(mdir);
    snprintf(line, sizeof line, "%s/calib.jsonl", ddir);
    unlink(line);
    snprintf(line, sizeof line, "%s/evaltext.txt", ddir);
    unlink(line);
    rmdir(ddir);
}

/* input: NULL, or an activation-quantization kind ("fp8", "int") evaluated after compression.
** limit_mb: NULL, or a SLIM_MEM_LIMIT_MB too small for one block: the job must fail with
** -SLM_ENOMEM and a message naming the block, the stage and the sizes. */
static void job_end_to_end(const char *input, int input_bits, const char *limit_mb)
{
    char mdir[] = "/tmp/slim-e2e-model-XXXXXX", ddir[] = "/tmp/slim-e2e-data-XXXXXX", odir[4200];
    assert_non_null(mkdtemp(mdir));
    assert_non_null(mkdtemp(ddir));
    snprintf(odir, sizeof odir, "%s/out", mdir);
    copy_file(model_dir, mdir, "config.json");
    copy_file(model_dir, mdir, "model.safetensors");
    byte_vocab(mdir);
    /* calibration documents (C4's JSON lines) and an evaluation text */
    char line[400], text[20000];
    size_t tl = 0;
    FILE *f;
    snprintf(line, sizeof line, "%s/calib.jsonl", ddir);
    assert_non_null(f = fopen(line, "w"));
    for (int d = 0; d < 6; d++) {
        fprintf(f, "{\"text\": \"");
        for (int k = 0; k < 12; k++) fprintf(f, "Story %d part %d: the little cat saw a red ball and ran after it. ", d, k);
        fprintf(f, "\"}\n");
    }
    fclose(f);
    for (int k = 0; k < 60 && tl + 200 < sizeof text; k++)
        tl += (size_t)snprintf(text + tl, sizeof text - tl, "Once upon a time %d, a dog found a big stick in the park. ", k);
    write_file(ddir, "evaltext.txt", text, tl);
    json_t *doc = json_pack("{s:{s:s},s:{s:s,s:s},s:{s:s},s:{s:s,s:i,s:i},s:{s:[s],s:i}}",
                            "model", "source", "file:///unused",
                            "pruning", "method", "wanda", "pattern", "2:4",
                            "quantization", "method", "slim-quant",
                            "calibration", "dataset", "calib", "nsamples", 4, "seqlen", 64,
                            "eval", "perplexity", "evaltext", "seqlen", 64);
    if (input) {
        json_t *q = json_object_get(doc, "quantization");
        json_object_set_new(q, "input", json_string(input));
        json_object_set_new(q, "input_bits", json_integer(input_bits));
    }
    struct jobspec spec;
    char path[128];
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobspec_parse(&spec, doc, path, sizeof path, &err), 0);
    json_decref(doc);
    /* the job on the backend under test: the reload below evaluates on it and must agree to 1e-12 */
    struct job_ctx ctx = { .model_dir = mdir, .out_dir = odir, .data_dir = ddir, .device = test_backend_name() };
    json_t *metrics = NULL;
    if (limit_mb) {
        spec.eval.baseline = false;   /* the failure comes from compression, not the baseline */
        setenv("SLIM_MEM_LIMIT_MB", limit_mb, 1);
    }
    int rc = job_run(&spec, &ctx, &metrics, &err);
    if (rc) fprintf(stderr, "job: %s\n", err.msg);
    if (limit_mb) {
        unsetenv("SLIM_MEM_LIMIT_MB");
        assert_int_equal(rc, -SLM_ENOMEM);
        assert_int_equal(err.rc, SLM_ENOMEM);
        assert_null(metrics);
        assert_true(strncmp(err.msg, "compressing: block 1 of 5, load (", 33) == 0);
        assert_non_null(strstr(err.msg, "out of backend memory allocating"));
        assert_non_null(strstr(err.msg, ", limit 200.0 KiB)"));
        assert_false(checkpoint_is(odir));   /* no half-written checkpoint left */
        job_folders_free(&spec, odir, mdir, ddir);
        return;
    }
    assert_int_equal(rc, 0);
    json_t *ppl = json_object_get(json_object_get(metrics, "perplexity"), "evaltext");
    double before = json_real_value(json_object_get(ppl, "before")), after = json_real_value(json_object_get(ppl, "after"));
    fprintf(stderr, "job end to end: ppl %.3f -> %.3f, memory ratio %.3f\n", before, after,
            json_real_value(json_object_get(json_object_get(metrics, "memory"), "ratio")));
    assert_true(isfinite(after) && after > 1);
    assert_true(json_is_array(json_object_get(json_object_get(metrics, "compression"), "layers")));
    /* the job streams blocks into the checkpoint: one resident at a time */
    json_t *res = json_object_get(json_object_get(metrics, "compression"), "resident");
    assert_int_equal(json_integer_value(json_object_get(res, "peak_blocks")), 1);
    assert_true(json_integer_value(json_object_get(res, "peak_block_bytes")) > 0);
    double sp = json_real_value(json_object_get(json_object_get(metrics, "compression"), "measured_sparsity"));
    assert_true(sp >= 0.5 && sp < 0.6);   /* 2:4, plus codes that round to zero */
    /* the saved checkpoint evaluates to the same perplexity (same ids, same windows) */
    struct model *r = NULL;
    struct tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(checkpoint_open(&r, odir, kb, 0, &err), 0);
    assert_int_equal(tokenizer_open(&tok, mdir, &err), 0);
    assert_int_equal(tokenizer_encode(tok, text, tl, true, &ids, &n, &err), 0);
    struct eval_opts eo = EVAL_OPTS_INIT;
    struct eval_result er;
    eo.seqlen = 64;
    assert_int_equal(eval_perplexity(r, ids, n, &eo, &er, &err), 0);
    assert_true(er.ppl == after || fabs(er.ppl / after - 1) < 1e-12);
    free(er.window_nll);
    free(ids);
    tokenizer_free(tok);
    model_free(r);
    json_decref(metrics);
    job_folders_free(&spec, odir, mdir, ddir);
}

static void test_core_checkpoint__job_end_to_end(void **state) { (void)state; job_end_to_end(NULL, 0, NULL); }

/* SLIM_MEM_LIMIT_MB below one block: a clear job failure, never a crash */
static void test_core_checkpoint__job_out_of_memory(void **state)
{
    (void)state;
    if (strcmp(test_backend_name(), "cpu")) skip();   /* the message checked is the CPU allocator's */
    job_end_to_end(NULL, 0, "0.1953125");   /* 200 KiB: the model's head and one block do not both fit */
}

/* activation quantization is applied after compression and again when the checkpoint is
** reopened: the reloaded model must reproduce the job's "after" perplexity exactly */
static void test_core_checkpoint__job_with_input_quantization(void **state)
{
    (void)state;
    job_end_to_end("int", 4, NULL);
    job_end_to_end("fp8", 8, NULL);
}

/* ---- streaming: compress_model hands each block to the writer and unloads it ---- */

struct stream_probe {
    struct checkpoint_writer *w;
    int calls;
};

static int probe_block(struct model *m, int b, const struct compressed_linear lin[LIN_COUNT], void *payload,
                       struct slm_err *err)
{
    struct stream_probe *p = payload;
    int loaded = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) loaded += m->blocks[i].loaded;
    assert_int_equal(loaded, 1);
    assert_true(m->blocks[b].loaded);
    assert_int_equal(b, p->calls);
    p->calls++;
    return checkpoint_writer_block(m, b, lin, p->w, err);
}

/* A checkpoint written block by block (one block resident) reloads to the logits of the same
** compression kept whole in memory, bit for bit. */
static void streamed_matches_in_memory(const struct ck *c, const char *tag)
{
    enum { NS = 4, T = 32 };
    struct model *m = NULL, *s = NULL, *r = NULL;
    struct slm_err err = SLM_ERR_INIT;
    int32_t ids[NS * T];
    for (int i = 0; i < NS * T; i++) ids[i] = 1 + (i * 53 + i / 5) % 500;
    struct compress_opts o;
    opts_of(&o, c);
    struct compress_result whole, streamed;
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    int rc = compress_model(m, ids, NS, T, &o, &whole, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    float *a = logits_of(m, ids, T);
    assert_int_equal(whole.peak_blocks, m->cfg.n_layers);

    char dir[] = "/tmp/slim-stream-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct stream_probe p = { NULL, 0 };
    assert_int_equal(model_open(&s, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    assert_int_equal(checkpoint_writer_open(&p.w, dir, s, &o, &err), 0);
    o.on_block = probe_block;
    o.block_payload = &p;
    o.unload_blocks = true;
    rc = compress_model(s, ids, NS, T, &o, &streamed, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(p.calls, s->cfg.n_layers);
    for (int b = 0; b < s->cfg.n_layers; b++) assert_false(s->blocks[b].loaded);
    assert_int_equal(streamed.peak_blocks, 1);
    assert_true(streamed.peak_block_bytes > 0 && streamed.peak_block_bytes < whole.peak_block_bytes);
    assert_int_equal(streamed.zeros, whole.zeros);
    assert_int_equal(streamed.weights, whole.weights);
    for (int b = 0; b < s->cfg.n_layers; b++)
        for (int k = 0; k < LIN_COUNT; k++) {
            assert_null(streamed.lin[b][k].codes);   /* freed once written */
            assert_true(streamed.lin[b][k].rel_error == whole.lin[b][k].rel_error);
            assert_int_equal(streamed.lin[b][k].rank, whole.lin[b][k].rank);
        }
    json_t *mem = NULL;
    rc = checkpoint_writer_finish(p.w, &streamed, NULL, NULL, &mem, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal((uint64_t)json_integer_value(json_object_get(mem, "stored_bytes")), stored_on_disk(dir));
    char adapters[4200];
    snprintf(adapters, sizeof adapters, "%s/model-adapters.safetensors", dir);
    assert_int_equal(access(adapters, R_OK) == 0, c->quantize_lora && c->separate && c->lm != LOWRANK_NONE);

    assert_int_equal(checkpoint_open(&r, dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    float *b = logits_of(r, ids, T);
    assert_memory_equal(a, b, sizeof *a * T * m->cfg.vocab);
    fprintf(stderr, "%-36s streamed: peak %d block(s), %llu bytes (whole: %d, %llu)\n", tag, streamed.peak_blocks,
            (unsigned long long)streamed.peak_block_bytes, whole.peak_blocks, (unsigned long long)whole.peak_block_bytes);
    json_decref(mem);
    free(a);
    free(b);
    compress_result_free(&whole);
    compress_result_free(&streamed);
    model_free(m);
    model_free(s);
    model_free(r);
    rm_folder(dir);
}

static void test_core_checkpoint__streamed_quantized_adapters(void **state)
{
    (void)state;
    streamed_matches_in_memory(&ck_slim_q, "wanda 2:4 slim-quant slim-lora^Q");
}
static void test_core_checkpoint__streamed_adapters_with_blocks(void **state)
{
    (void)state;
    streamed_matches_in_memory(&ck_l2qer, "group absmax + L2QER adapters");
}
static void test_core_checkpoint__streamed_sparsegpt(void **state)
{
    (void)state;
    streamed_matches_in_memory(&ck_sparsegpt, "sparsegpt 50% + optq per row");
}

/* One spec of the published tables' matrix through compress -> save -> reload: logits finite and
** identical after the reload, the measured sparsity and the stored encodings as the spec says, the
** memory report equal to the bytes on disk. */
static void matrix_case(const char *prune, const char *pattern, const char *quant, const char *lowrank, bool qlora,
                        int *ran, int *refused)
{
    enum { NS = 4, T = 32 };
    char tag[160];
    snprintf(tag, sizeof tag, "%s %s + %s + %s%s", prune, pattern, quant, lowrank, qlora ? "^Q" : "");
    json_t *doc = json_pack("{s:{s:s},s:{s:s,s:s},s:{s:s,s:i},s:{s:s,s:b,s:i}}", "model", "source", "file:///unused",
                            "pruning", "method", prune, "pattern", pattern, "quantization", "method", quant, "bits", 4,
                            "lowrank", "method", lowrank, "quantize", qlora, "tile", 4);
    if (!strcmp(quant, "absmax")) json_object_set_new(json_object_get(doc, "quantization"), "group_size", json_integer(4));
    if (!strcmp(quant, "optq")) json_object_set_new(json_object_get(doc, "quantization"), "group_size", json_integer(-1));
    if (!strcmp(lowrank, "none")) json_object_del(doc, "lowrank");
    if (!strcmp(quant, "none")) json_object_del(json_object_get(doc, "quantization"), "bits");
    struct jobspec spec;
    struct slm_err err = SLM_ERR_INIT;
    if (jobspec_parse(&spec, doc, NULL, 0, &err)) {   /* a combination the reference rejects */
        if (getenv("VERBOSE")) fprintf(stderr, "  %-44s refused: %s\n", tag, err.msg);
        json_decref(doc);
        ++*refused;
        return;
    }
    json_decref(doc);
    struct compress_opts o;
    assert_int_equal(compress_opts_from_spec(&o, &spec, &err), 0);
    o.keep_codes = true;
    struct model *m = NULL, *r = NULL;
    int32_t ids[NS * T];
    for (int i = 0; i < NS * T; i++) ids[i] = 1 + (i * 41 + i / 3) % 500;
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    struct compress_result res;
    int rc = compress_model(m, ids, NS, T, &o, &res, &err);
    if (rc) fprintf(stderr, "%s: %s\n", tag, err.msg);
    assert_int_equal(rc, 0);
    float *a = logits_of(m, ids, T);
    for (size_t i = 0; i < (size_t)T * m->cfg.vocab; i++) assert_true(isfinite(a[i]));
    double sp = (double)res.zeros / (double)res.weights;
    assert_true(sp >= 0.5 && sp < 0.75);   /* half pruned, plus codes that round to zero */
    char dir[] = "/tmp/slim-matrix-XXXXXX";
    assert_non_null(mkdtemp(dir));
    json_t *mem = NULL;
    assert_int_equal(checkpoint_save(m, &res, &o, dir, spec.raw, NULL, &mem, &err), 0);
    assert_int_equal((uint64_t)json_integer_value(json_object_get(mem, "stored_bytes")), stored_on_disk(dir));
    assert_int_equal(checkpoint_open(&r, dir, kb, 0, &err), 0);
    float *b = logits_of(r, ids, T);
    assert_memory_equal(a, b, sizeof *a * T * m->cfg.vocab);
    /* every linear stored as the spec says: N:M positions for 2:4, 4-bit codes when quantized */
    char p[4200];
    snprintf(p, sizeof p, "%s/slim_config.json", dir);
    json_t *cfg = json_load_file(p, 0, NULL), *desc;
    const char *name;
    assert_non_null(cfg);
    int nlayers = 0;
    json_object_foreach(json_object_get(cfg, "layers"), name, desc) {
        const char *enc = json_string_value(json_object_get(desc, "enc"));
        assert_non_null(enc);
        if (!strcmp(pattern, "2:4")) assert_int_equal(strncmp(enc, "nm_", 3), 0);
        assert_int_equal(enc[strlen(enc) - 1] == 'q', strcmp(quant, "none") != 0);
        if (strcmp(quant, "none")) assert_int_equal(json_integer_value(json_object_get(json_object_get(desc, "quant"), "bits")), 4);
        assert_int_equal(json_integer_value(json_object_get(desc, "rank")) > 0, strcmp(lowrank, "none") != 0);
        nlayers++;
    }
    assert_int_equal(nlayers, 7 * m->cfg.n_layers);
    fprintf(stderr, "  %-44s sparsity %.3f, ratio %.3f\n", tag, sp, json_real_value(json_object_get(mem, "ratio")));
    ++*ran;
    json_decref(cfg);
    json_decref(mem);
    free(a);
    free(b);
    compress_result_free(&res);
    model_free(m);
    model_free(r);
    jobspec_free(&spec);
    rm_folder(dir);
}

/* ALGORITHMS.md §9's tables: magnitude / wanda / sparsegpt x 2:4 / 50% x 4-bit absmax / slim-quant /
** optq (or none) x no / naive / slim adapters, quantized or not. */
static void test_core_checkpoint__published_matrix(void **state)
{
    (void)state;
    static const char *const prune[] = { "magnitude", "wanda", "sparsegpt" }, *const pattern[] = { "2:4", "unstructured" },
                      *const quant[] = { "none", "absmax", "slim-quant", "optq" }, *const lowrank[] = { "none", "naive", "slim" };
    int ran = 0, refused = 0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int q = 0; q < 4; q++)
                for (int l = 0; l < 3; l++)
                    for (int z = 0; z < (l ? 2 : 1); z++) matrix_case(prune[a], pattern[b], quant[q], lowrank[l], z, &ran, &refused);
    fprintf(stderr, "published matrix: %d combinations run, %d refused by validation\n", ran, refused);
    /* every pruning method with every quantizer it takes, wanda with every adapter kind */
    assert_true(ran >= 30);
}

/* bf16 emulation rounds the embeddings, norms and head in memory: the checkpoint stores those
** (not the source bytes), so the reload still gives the in-memory logits bit for bit. */
static void test_core_checkpoint__streamed_bf16(void **state)
{
    (void)state;
    g_bf16 = true;
    streamed_matches_in_memory(&ck_slim_q, "bf16: wanda 2:4 slim-quant slim-lora^Q");
    round_trip(&ck_sparsegpt, "bf16: sparsegpt 50% + optq per row");
    g_bf16 = false;
}

/* An interrupted write (a block never handed over) leaves no checkpoint behind. */
static void test_core_checkpoint__abort_leaves_no_checkpoint(void **state)
{
    (void)state;
    struct model *m = NULL;
    struct checkpoint_writer *w = NULL;
    struct slm_err err = SLM_ERR_INIT;
    struct compress_opts o = COMPRESS_OPTS_INIT;
    char dir[] = "/tmp/slim-abort-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    /* an older checkpoint in the folder stops being one as soon as a new write starts */
    write_file(dir, "slim_config.json", "{\"format\": \"" CHECKPOINT_FORMAT "\"}", strlen(CHECKPOINT_FORMAT) + 14);
    write_file(dir, "model-block-00099.safetensors", "x", 1);
    assert_true(checkpoint_is(dir));
    assert_int_equal(checkpoint_writer_open(&w, dir, m, &o, &err), 0);
    assert_false(checkpoint_is(dir));
    char old[4200];
    snprintf(old, sizeof old, "%s/model-block-00099.safetensors", dir);
    assert_int_equal(access(old, F_OK), -1);
    /* block 0 is not loaded: refused */
    struct compressed_linear lin[LIN_COUNT] = { 0 };
    assert_int_equal(checkpoint_writer_add_block(w, 0, lin, &err), -SLM_EINVAL);
    slm_err_clear(&err);
    assert_int_equal(checkpoint_writer_finish(w, NULL, NULL, NULL, NULL, &err), -SLM_EINVAL);
    assert_false(checkpoint_is(dir));
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(n, 0);   /* the shared shard is gone too */
    /* the model's own folder is refused as output */
    assert_int_equal(checkpoint_writer_open(&w, model_dir, m, &o, &err), -SLM_EINVAL);
    model_free(m);
    rmdir(dir);
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
        cmocka_unit_test(test_core_checkpoint__prune_lora),
        cmocka_unit_test(test_core_checkpoint__l2qer),
        cmocka_unit_test(test_core_checkpoint__job_end_to_end),
        cmocka_unit_test(test_core_checkpoint__job_with_input_quantization),
        cmocka_unit_test(test_core_checkpoint__job_out_of_memory),
        cmocka_unit_test(test_core_checkpoint__streamed_quantized_adapters),
        cmocka_unit_test(test_core_checkpoint__streamed_adapters_with_blocks),
        cmocka_unit_test(test_core_checkpoint__streamed_sparsegpt),
        cmocka_unit_test(test_core_checkpoint__streamed_bf16),
        cmocka_unit_test(test_core_checkpoint__published_matrix),
        cmocka_unit_test(test_core_checkpoint__abort_leaves_no_checkpoint),
        cmocka_unit_test(test_core_checkpoint__rejects_foreign_folder),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
