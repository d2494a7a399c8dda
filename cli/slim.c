/*
** cli/slim.c: the offline tool. Same core and job spec as the daemon, no daemon needed.
**   slim info MODEL_DIR
**   slim eval MODEL_DIR (--text FILE [--tokenizer DIR] | --ids FILE.json) [--seqlen N] [--batch B]
**             [--max-windows K] [--device auto|cpu|cuda[:N]] [--json]
**   slim compress MODEL_DIR SPEC.json OUT_DIR [--device D] [--data-dir DIR]
** Exit status: 0 ok, 1 the work failed, 2 bad usage.
*/
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/eval.h"
#include "core/fileio.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "kernels/kbackend.h"
#include "slim_cmds.h"

static int usage(void)
{
    fprintf(stderr,
            "usage: slim info MODEL_DIR\n"
            "       slim eval MODEL_DIR (--text FILE [--tokenizer DIR] | --ids FILE.json) [--seqlen N]\n"
            "                 [--batch B] [--max-windows K] [--device auto|cpu|cuda[:N]] [--json]\n"
            "       slim compress MODEL_DIR SPEC.json OUT_DIR [--device D] [--data-dir DIR]\n");
    return 2;
}

static int fail(const char *what, const struct slm_err *err)
{
    fprintf(stderr, "slim %s: %s\n", what, err->msg[0] ? err->msg : slm_strerror(err->rc));
    return 1;
}

int slim_open_backend(struct kbackend **kb, const char *device, struct slm_err *err)
{
    int rc = kbackend_open(kb, device, err);
    if (rc == 0 && (rc = kbackend_limit_from_env(*kb, err))) {   /* SLIM_MEM_LIMIT_MB, as jobs */
        kbackend_free(*kb);
        *kb = NULL;
        return rc;
    }
    if (rc == 0 && !strcmp(kb_name(*kb), "cpu")) fprintf(stderr, "slim: cpu backend: %s\n", kbackend_cpu_info());
    else if (rc == 0) fprintf(stderr, "slim: backend %s\n", kb_name(*kb));
    return rc;
}

static int cmd_info(int argc, char **argv)
{
    if (argc != 1) return usage();
    struct slm_err err = SLM_ERR_INIT;
    struct model_config c;
    struct st_model *st;
    if (model_config_load(&c, argv[0], &err) || st_model_open(&st, argv[0], &err)) return fail("info", &err);
    int64_t params = 0, by_dtype[DT_COUNT] = { 0 };
    for (size_t i = 0; i < st_model_count(st); i++) {
        const struct st_tensor *t = st_model_at(st, i);
        params += t->numel;
        by_dtype[t->dtype] += t->numel;
    }
    printf("model        %s\n", argv[0]);
    printf("architecture %s\n", c.model_type);
    printf("layers       %d\n", c.n_layers);
    printf("hidden       %d (ffn %d, heads %d, kv heads %d, head dim %d)\n", c.hidden, c.ffn, c.n_heads, c.n_kv_heads, c.head_dim);
    printf("vocab        %d\n", c.vocab);
    /* a SliceGPT folder holds sliced shapes, a SLiM checkpoint packed codes: say so beside the counts */
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", argv[0]);
    json_t *cj = json_load_file(p, 0, NULL), *sg = json_object_get(cj, "slicegpt");
    snprintf(p, sizeof p, "%s/slim_config.json", argv[0]);
    json_t *sc = checkpoint_is(argv[0]) ? json_load_file(p, 0, NULL) : NULL, *mem = json_object_get(sc, "memory");
    printf("parameters   %lld %s (%lld by the dense config)\n", (long long)params, sc ? "stored tensor elements (codes packed into U8)" : "stored",
           (long long)model_config_param_count(&c));
    if (sg)
        printf("sliced       SliceGPT %.0f%%: residual width %lld of %lld\n", 100 * json_number_value(json_object_get(sg, "sparsity")),
               (long long)json_integer_value(json_object_get(sg, "embedding_dim")),
               (long long)json_integer_value(json_object_get(sg, "hidden_size")));
    if (mem)
        printf("compressed   %lld of %lld dense bytes (ratio %.3f; the reference's formula: %.3f)\n",
               (long long)json_integer_value(json_object_get(mem, "stored_bytes")),
               (long long)json_integer_value(json_object_get(mem, "dense_bytes")), json_real_value(json_object_get(mem, "ratio")),
               json_real_value(json_object_get(mem, "theoretical_ratio")));
    json_decref(cj);
    json_decref(sc);
    printf("dtype       ");
    for (int d = 0; d < DT_COUNT; d++)
        if (by_dtype[d]) printf(" %s:%lld", dtype_traits((enum dtype)d)->name, (long long)by_dtype[d]);
    printf("\nbytes        %llu\n", (unsigned long long)st_model_nbytes(st));
    st_model_close(st);
    return 0;
}

static int progress_bar(int done, int total, void *payload)
{
    double *t0 = payload;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double el = ts.tv_sec + ts.tv_nsec * 1e-9 - *t0;
    int w = 30, fill = total ? done * w / total : w;
    fprintf(stderr, "\r[%.*s%*s] %d/%d windows %.1fs", fill, "##############################", w - fill, "", done, total, el);
    if (done == total) fputc('\n', stderr);
    return 0;
}

static int cmd_eval(int argc, char **argv)
{
    const char *dir = NULL, *text = NULL, *tokdir = NULL, *idsf = NULL, *device = "auto";
    int json = 0;
    struct eval_opts o = EVAL_OPTS_INIT;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (a[0] == '-' && !v) return usage();
        if (!strcmp(a, "--text")) text = v;
        else if (!strcmp(a, "--tokenizer")) tokdir = v;
        else if (!strcmp(a, "--ids")) idsf = v;
        else if (!strcmp(a, "--seqlen")) o.seqlen = atoi(v);
        else if (!strcmp(a, "--batch")) o.batch = atoi(v);
        else if (!strcmp(a, "--max-windows")) o.max_windows = atoi(v);
        else if (!strcmp(a, "--device")) device = v;
        else if (a[0] != '-' && !dir) { dir = a; continue; }
        else return usage();
        i++;
    }
    if (!dir || (!text == !idsf) || o.seqlen < 2 || o.batch < 1 || o.max_windows < 0) return usage();
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend *kb = NULL;
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    char *buf = NULL;
    int rc = 1;
    if (idsf) {
        if (eval_load_ids_json(idsf, &ids, &n, &err)) goto done;
    } else {
        size_t len;
        if (tokenizer_open(&tok, tokdir ? tokdir : dir, &err) || file_read_all(text, (size_t)1 << 32, &buf, &len, &err) ||
            tokenizer_encode(tok, buf, len, true, &ids, &n, &err))
            goto done;
    }
    /* a compressed checkpoint (slim_config.json) is dequantized on the fly */
    if (slim_open_backend(&kb, device, &err) ||
        (checkpoint_is(dir) ? checkpoint_open(&m, dir, kb, 0, &err) : model_open(&m, dir, kb, 0, &err)))
        goto done;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t0 = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (isatty(2) && !json) { o.progress = progress_bar; o.payload = &t0; }
    struct eval_result r;
    if (eval_perplexity(m, ids, n, &o, &r, &err)) goto done;
    if (json) {
        printf("{\"perplexity\": %.6f, \"mean_nll\": %.8f, \"windows\": %d, \"seqlen\": %d, \"tokens\": %lld, "
               "\"seconds\": %.3f, \"tokens_per_s\": %.1f, \"device\": \"%s\"}\n",
               r.ppl, r.mean_nll, r.nwindows, o.seqlen, (long long)r.ntokens, r.seconds, r.ntokens / r.seconds, kb_name(kb));
    } else {
        printf("perplexity  %.4f\n", r.ppl);
        printf("windows     %d x %d tokens (%zu tokens in, tail dropped)\n", r.nwindows, o.seqlen, n);
        printf("throughput  %.1f tokens/s (%.2f s on %s)\n", r.ntokens / r.seconds, r.seconds, kb_name(kb));
    }
    free(r.window_nll);
    rc = 0;
done:
    if (rc) fail("eval", &err);
    free(buf);
    free(ids);
    tokenizer_free(tok);
    model_free(m);
    kbackend_free(kb);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "compress")) return slim_cmd_compress(argc - 2, argv + 2);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) { usage(); return 0; }
    fprintf(stderr, "slim: unknown command '%s'\n", argv[1]);
    return usage();
}
