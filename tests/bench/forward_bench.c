/*
** tests/bench/forward_bench.c: forward-pass throughput of an OPT-125M-shaped random model at
** seqlen 2048 on the CPU backend, beside OpenBLAS sgemm GFLOP/s measured in the same run.
** usage: forward-bench [--layers N] [--seqlen T] [--reps R] [--dir TMPDIR]
** Prints one table; the target is forward GFLOP/s >= 60% of sgemm GFLOP/s. Not a test.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/model.h"
#include "core/safetensors.h"
#include "kernels/kbackend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return ((rng >> 40) * (1.0f / 16777216.0f) - 0.5f) * 0.04f;
}

static int add_rand(struct st_writer *w, const char *name, int64_t r, int64_t c, struct slm_err *err)
{
    size_t n = (size_t)r * (c ? c : 1);
    float *d = malloc(n * sizeof(float));
    if (!d) return slm_err_set(err, SLM_ENOMEM, "bench: alloc");
    for (size_t i = 0; i < n; i++) d[i] = frand();
    if (strstr(name, "layer_norm.weight")) for (size_t i = 0; i < n; i++) d[i] = 1.0f + d[i];
    int64_t shape[2] = { r, c };
    int rc = st_writer_add_f32(w, name, DT_F32, c ? 2 : 1, shape, d, err);
    free(d);
    return rc;
}

/* Write an OPT-125M-shaped model with random weights into dir. */
static int make_opt125m(const char *dir, int layers, struct slm_err *err)
{
    const int d = 768, ffn = 3072, V = 50272, P = 2048;
    char path[600], name[128];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return slm_err_set(err, SLM_EIO, "%s: cannot write", path);
    fprintf(f, "{\"model_type\":\"opt\",\"architectures\":[\"OPTForCausalLM\"],\"hidden_size\":%d,\"ffn_dim\":%d,"
               "\"num_hidden_layers\":%d,\"num_attention_heads\":12,\"vocab_size\":%d,\"max_position_embeddings\":%d,"
               "\"word_embed_proj_dim\":%d,\"do_layer_norm_before\":true,\"activation_function\":\"relu\","
               "\"tie_word_embeddings\":true}\n", d, ffn, layers, V, P, d);
    fclose(f);
    struct st_writer *w;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_open(&w, path, err);
    if (rc) return rc;
    rc = add_rand(w, "model.decoder.embed_tokens.weight", V, d, err);
    if (!rc) rc = add_rand(w, "model.decoder.embed_positions.weight", P + 2, d, err);
    if (!rc) rc = add_rand(w, "model.decoder.final_layer_norm.weight", d, 0, err);
    if (!rc) rc = add_rand(w, "model.decoder.final_layer_norm.bias", d, 0, err);
    static const char *lin[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2" };
    for (int b = 0; b < layers && !rc; b++) {
        for (int i = 0; i < 6 && !rc; i++) {
            int o = i == 4 ? ffn : d, in = i == 5 ? ffn : d;
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.weight", b, lin[i]);
            rc = add_rand(w, name, o, in, err);
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.bias", b, lin[i]);
            if (!rc) rc = add_rand(w, name, o, 0, err);
        }
        static const char *ln[] = { "self_attn_layer_norm", "final_layer_norm" };
        for (int i = 0; i < 2 && !rc; i++) {
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.weight", b, ln[i]);
            rc = add_rand(w, name, d, 0, err);
            snprintf(name, sizeof name, "model.decoder.layers.%d.%s.bias", b, ln[i]);
            if (!rc) rc = add_rand(w, name, d, 0, err);
        }
    }
    if (rc) { st_writer_abort(w); return rc; }
    return st_writer_finish(w, err);
}

int main(int argc, char **argv)
{
    int layers = 12, T = 2048, reps = 2;
    const char *dir = "/tmp/slim-bench-opt125m";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--layers")) layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seqlen")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
    }
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend *kb;
    struct model *m;
    if (kbackend_open(&kb, "cpu", &err)) { fprintf(stderr, "forward-bench: %s\n", err.msg); return 1; }
    fprintf(stderr, "cpu: %s\n", kbackend_cpu_info());
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) && make_opt125m(dir, layers, &err)) { fprintf(stderr, "forward-bench: %s\n", err.msg); return 1; }
    if (model_open(&m, dir, kb, 0, &err)) { fprintf(stderr, "forward-bench: %s\n", err.msg); return 1; }
    layers = m->cfg.n_layers;

    /* sgemm reference: the shape of fc1 at this sequence length */
    int M = T, N = 3072, K = 768;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * N * K), *c = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) a[i] = frand();
    for (int i = 0; i < N * K; i++) b[i] = frand();
    double best_g = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        kb_linear(kb, c, a, b, NULL, M, N, K, &err);
        double g = 2.0 * M * N * K / (now_s() - t0) / 1e9;
        best_g = g > best_g ? g : best_g;
    }

    int32_t *ids = malloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 7919u) % m->cfg.vocab);
    float *nll = malloc(sizeof(float) * (T - 1));
    double best_t = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (model_forward(m, ids, 1, T, NULL, nll, NULL, NULL, &err)) { fprintf(stderr, "forward-bench: %s\n", err.msg); return 1; }
        double dt = now_s() - t0;
        best_t = dt < best_t ? dt : best_t;
    }
    /* useful FLOPs: linears, causal attention (QK^T and PV over the lower triangle), head */
    double d = m->cfg.hidden, ffn = m->cfg.ffn, V = m->cfg.vocab;
    double lin = 2.0 * T * layers * (4 * d * d + 2 * d * ffn);
    double attn = 2.0 * 2.0 * layers * d * (double)T * (T + 1) / 2;
    double head = 2.0 * T * d * V;
    double flops = lin + attn + head;
    double fg = flops / best_t / 1e9;
    printf("forward-bench (cpu, OPT-125M-shaped, %d layers, seqlen %d, batch 1)\n", layers, T);
    printf("  %-28s %10.1f tokens/s\n", "forward throughput", T / best_t);
    printf("  %-28s %10.1f GFLOP/s  (%.1f GFLOP per window, %.3f s)\n", "forward achieved", fg, flops / 1e9, best_t);
    printf("  %-28s %10.1f GFLOP/s  (%dx%dx%d)\n", "OpenBLAS sgemm", best_g, M, N, K);
    printf("  %-28s %10.1f %%  (target >= 60%%)\n", "forward / sgemm", 100 * fg / best_g);
    free(a); free(b); free(c); free(ids); free(nll);
    model_free(m);
    kbackend_free(kb);
    return 0;
}
