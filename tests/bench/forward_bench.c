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
#include "bench_opt.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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
