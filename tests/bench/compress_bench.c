/*
** tests/bench/compress_bench.c: wall time of the SLiM compression methods, beside the time of one
** dense forward pass over the same calibration tokens measured in the same run. Not a test.
** By default an OPT-125M-shaped random model on the CPU backend with 8 x 512 calibration tokens;
** --model DIR times any checkpoint folder (the LLaMA-2-7B-shaped one of gpu_compress_bench.sh),
** --backend cuda runs on the GPU. Each line gives the backend's peak memory during compression
** (compress_result.peak_backend_bytes); SLIM_MEM_LIMIT_MB sets a backend budget as in jobs.
** usage: compress-bench [--layers N] [--nsamples S] [--seqlen T] [--dir TMPDIR | --model DIR]
**                       [--backend cpu|cuda] [--forward-samples K] [--only NAME[,NAME...]] [--bf16 1]
** --forward-samples K times the dense forward over the first K windows only (0: skip) and scales it
** to all S in the "x dense forward" column; --only keeps the configurations named (comma-separated,
** whole names, or parts of names). --bf16 1 compresses in the reference's bf16 precision (the job
** spec's "precision": "bf16"): on a GPU its linears then run on TF32 tensor cores, exact for bf16.
*/
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_opt.h"
#include "core/compress.h"
#include "core/model.h"
#include "kernels/kbackend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct bcfg {
    const char *name;
    enum prune_method pm;
    int n, m;
    enum quant_method qm;
    int group;
    enum lowrank_method lm;
    bool qlora;
    bool jsq;
};

static const struct bcfg cfgs[] = {
    { "magnitude 2:4 + absmax-4", PRUNE_MAGNITUDE, 2, 4, QUANT_ABSMAX, 0, LOWRANK_NONE, false, false },
    { "wanda 2:4", PRUNE_WANDA, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false },
    { "wanda 50%", PRUNE_WANDA, 0, 0, QUANT_NONE, 0, LOWRANK_NONE, false, false },
    { "wanda 2:4 + group absmax-4", PRUNE_WANDA, 2, 4, QUANT_ABSMAX, 128, LOWRANK_NONE, false, false },
    { "wanda 2:4 + slim-quant-4", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NONE, false, false },
    { "wanda 2:4 + slim-quant + naive-lora", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_NAIVE, false, false },
    { "wanda 2:4 + slim-quant + slim-lora", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, false, false },
    { "wanda 2:4 + slim-quant + slim-lora^Q", PRUNE_WANDA, 2, 4, QUANT_SLIM, 0, LOWRANK_SLIM, true, false },
    { "sparsegpt 2:4", PRUNE_SPARSEGPT, 2, 4, QUANT_NONE, 0, LOWRANK_NONE, false, false },
    { "sparsegpt 50% + optq-4", PRUNE_SPARSEGPT, 0, 0, QUANT_OPTQ, 0, LOWRANK_NONE, false, false },
    { "sparsegpt 2:4 + optq-4", PRUNE_SPARSEGPT, 2, 4, QUANT_OPTQ, 0, LOWRANK_NONE, false, false },
    { "jsq 2:4 + group absmax-4", PRUNE_WANDA, 2, 4, QUANT_ABSMAX, 128, LOWRANK_NONE, false, true },
};

/* Is the configuration name picked by --only? A part equal to a configuration's whole name picks
** exactly that one (names nest: "... slim-lora" is a prefix of "... slim-lora^Q"); otherwise parts
** pick every name containing them. NULL: all. */
static bool selected(const char *name, const char *only)
{
    if (!only) return true;
    char buf[512];
    bool exact = false, hit = false, sub = false;
    snprintf(buf, sizeof buf, "%s", only);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) exact |= !strcmp(cfgs[k].name, t);
        hit |= !strcmp(name, t);
        sub |= strstr(name, t) != NULL;
    }
    return exact ? hit : sub;
}

int main(int argc, char **argv)
{
    int layers = 12, S = 8, T = 512, fwd_samples = -1, bf16 = 0;
    const char *dir = "/tmp/slim-bench-opt125m", *only = NULL, *model_dir = NULL, *spec = "cpu";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--layers")) layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--nsamples")) S = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seqlen")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) model_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--backend")) spec = argv[i + 1];
        else if (!strcmp(argv[i], "--forward-samples")) fwd_samples = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--bf16")) bf16 = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--only")) only = argv[i + 1];
        else { fprintf(stderr, "compress-bench: unknown option %s\n", argv[i]); return 2; }
    }
    if (S < 1 || T < 2) { fprintf(stderr, "compress-bench: --nsamples >= 1 and --seqlen >= 2\n"); return 2; }
    if (fwd_samples < 0 || fwd_samples > S) fwd_samples = S;
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend *kb;
    struct model *m = NULL;
    if (kbackend_open(&kb, spec, &err) || kbackend_limit_from_env(kb, &err)) {
        fprintf(stderr, "compress-bench: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "backend %s; cpu: %s\n", kb_name(kb), kbackend_cpu_info());
    if (!model_dir) {
        char cfg[600];
        snprintf(cfg, sizeof cfg, "%s/config.json", dir);
        if (access(cfg, R_OK) && make_opt125m(dir, layers, &err)) { fprintf(stderr, "compress-bench: %s\n", err.msg); return 1; }
        model_dir = dir;
    }
    int32_t *ids = malloc(sizeof *ids * (size_t)S * T);
    if (!ids) return 1;

    /* dense forward over the calibration tokens, same run, all blocks resident (a lazily opened
    ** model would reload every block for every window) */
    if (model_open(&m, model_dir, kb, 0, &err)) { fprintf(stderr, "compress-bench: %s\n", err.msg); return 1; }
    for (size_t i = 0; i < (size_t)S * T; i++) ids[i] = (int32_t)((i * 7919u + 13) % (unsigned)m->cfg.vocab);
    double t0 = now_s();
    for (int s = 0; s < fwd_samples; s++)
        if (model_forward(m, ids + (size_t)s * T, 1, T, NULL, NULL, NULL, NULL, &err)) { fprintf(stderr, "compress-bench: %s\n", err.msg); return 1; }
    double t_fwd = fwd_samples ? (now_s() - t0) * S / fwd_samples : 0;
    layers = m->cfg.n_layers;
    model_free(m);
    m = NULL;
    printf("compress-bench (%s, %s, %d layers, %d x %d calibration tokens, %s)\n", kb_name(kb), model_dir, layers, S, T,
           bf16 ? "bf16 precision" : "f32");
    if (fwd_samples)
        printf("  %-40s %9.2f s%s\n", "dense forward over the calibration set", t_fwd,
               fwd_samples < S ? "  (scaled from the first windows)" : "");
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const struct bcfg *c = &cfgs[k];
        if (!selected(c->name, only)) continue;
        struct compress_opts o = COMPRESS_OPTS_INIT;
        o.prune.method = c->pm;
        o.prune.n = c->n;
        o.prune.m = c->m;
        o.prune.sparsity = 0.5;
        o.quant.method = c->qm;
        o.quant.group_size = c->group;
        if (c->qm == QUANT_OPTQ) o.prune.optq_bits = 4;
        o.lowrank.method = c->lm;
        o.lowrank.quantize = c->qlora;
        o.shift_zero_metrics = !c->jsq;
        o.jsq.on = c->jsq;
        o.unload_blocks = true;   /* as jobs run: one block resident */
        o.bf16 = bf16 != 0;
        struct compress_result res;
        if (model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err)) { fprintf(stderr, "compress-bench: %s\n", err.msg); return 1; }
        t0 = now_s();
        int rc = compress_model(m, ids, S, T, &o, &res, &err);
        double dt = now_s() - t0;
        model_free(m);
        m = NULL;
        if (rc) { printf("  %-40s failed: %s\n", c->name, err.msg); slm_err_clear(&err); continue; }
        printf("  %-40s %9.2f s", c->name, dt);
        if (fwd_samples) printf("  (%.1fx the forward pass", dt / t_fwd);
        printf("%speak %d block(s) resident", fwd_samples ? ", " : "  (", res.peak_blocks);
        printf(", peak backend %.2f GiB%s)\n", res.peak_backend_bytes / 1073741824.0,
               res.calib_spilled ? ", activations spilled to host" : "");
        compress_result_free(&res);
        fflush(stdout);
    }
    free(ids);
    kbackend_free(kb);
    return 0;
}
