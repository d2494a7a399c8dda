/*
** tests/bench/slicegpt_bench.c: SliceGPT wall time on an OPT-125M-shaped random model beside the
** forward-pass time over the same calibration tokens, in the same run; and, with --stories DIR,
** stories260K perplexity at slicing 0/10/25/30% in both fusion modes (calibration = ids[0:512]
** as 8 x 64, evaluation = the next 20 windows of 64, as the SliceGPT reference fixture).
** usage: slicegpt-bench [--nsamples N] [--seqlen T] [--layers L] [--sparsity S] [--dir TMPDIR] [--device cpu|cuda]
**        slicegpt-bench --stories tests/data
** Prints figures; not a test.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/eval.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/slicegpt.h"
#include "kernels/kbackend.h"
#include "bench_opt.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int bench_opt(int nsamples, int T, int layers, double sparsity, const char *tmp, struct kbackend *kb)
{
    struct slm_err err = SLM_ERR_INIT;
    struct model *m = NULL;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/opt125m-shaped", tmp);
    if (make_opt125m(dir, layers, &err) || model_open(&m, dir, kb, 0, &err)) {
        fprintf(stderr, "slicegpt-bench: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = malloc(sizeof *ids * (size_t)nsamples * T);
    float *nll = malloc(sizeof *nll * (size_t)(T - 1));
    for (size_t i = 0; i < (size_t)nsamples * T; i++) ids[i] = (int32_t)(3 + next() % 50000);
    double t0 = now_s();
    for (int s = 0; s < nsamples; s++)
        if (model_forward(m, ids + (size_t)s * T, 1, T, NULL, nll, NULL, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    double t_fwd = now_s() - t0;
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    o.sparsity = sparsity;
    t0 = now_s();
    if (slicegpt_run(m, ids, nsamples, T, &o, &err)) { fprintf(stderr, "slicegpt-bench: %s\n", err.msg); return 1; }
    double t_sg = now_s() - t0;
    t0 = now_s();
    for (int s = 0; s < nsamples; s++)
        if (model_forward(m, ids + (size_t)s * T, 1, T, NULL, nll, NULL, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    double t_fwd2 = now_s() - t0;
    printf("OPT-125M-shaped random model (%d blocks), %d x %d calibration tokens, sparsity %.2f, backend %s\n", layers,
           nsamples, T, sparsity, kb_name(kb));
    printf("| what | seconds |\n|---|---|\n");
    printf("| dense forward pass over the calibration tokens (with loss) | %.2f |\n", t_fwd);
    printf("| SliceGPT (fusion + %d PCAs + rotation/slicing) | %.2f |\n", 1 + 2 * layers, t_sg);
    printf("| sliced forward pass over the same tokens | %.2f |\n", t_fwd2);
    printf("SliceGPT / dense forward = %.2f\n", t_sg / t_fwd);
    free(ids);
    free(nll);
    model_free(m);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) != 0;
}

/* int64 ids tensor -> int32 */
static int32_t *ids_of(const struct safetensors *st, const char *name, size_t *n)
{
    const struct st_tensor *t = safetensors_find(st, name);
    if (!t || t->dtype != DT_I64) return NULL;
    int32_t *ids = malloc(sizeof *ids * (size_t)t->numel);
    for (int64_t i = 0; ids && i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + i * 8, 8);
        ids[i] = (int32_t)v;
    }
    *n = (size_t)t->numel;
    return ids;
}

/* data = tests/data: the model in data/stories260K, the reference's ids in data/slicegpt/stories260K */
static int bench_stories(const char *data, struct kbackend *kb)
{
    struct slm_err err = SLM_ERR_INIT;
    char path[600], dir[600];
    struct safetensors *st = NULL;
    size_t nc = 0, ne = 0;
    snprintf(path, sizeof path, "%s/slicegpt/stories260K/ids.safetensors", data);
    snprintf(dir, sizeof dir, "%s/stories260K", data);
    if (safetensors_open(&st, path, &err)) { fprintf(stderr, "slicegpt-bench: %s\n", err.msg); return 1; }
    int32_t *cal = ids_of(st, "calibration_ids", &nc), *ev = ids_of(st, "eval_ids", &ne);
    safetensors_close(st);
    if (!cal || !ev || nc != 512) { fprintf(stderr, "slicegpt-bench: %s: unexpected ids\n", path); return 1; }
    double levels[] = { 0, 0.1, 0.25, 0.3 };
    printf("stories260K: calibration ids[0:512] as 8 x 64, perplexity on ids[512:1792] as 20 windows of 64\n");
    printf("| slicing | exact mode | reference-compatible mode |\n|---|---|---|\n");
    for (int l = 0; l < 4; l++) {
        double ppl[2];
        for (int mode = 0; mode < 2; mode++) {
            struct model *m = NULL;
            struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
            struct eval_opts eo = EVAL_OPTS_INIT;
            struct eval_result r;
            o.sparsity = levels[l];
            o.reference_compat = mode == 1;
            eo.seqlen = 64;
            eo.batch = 20;
            if (model_open(&m, dir, kb, 0, &err) || slicegpt_run(m, cal, 8, 64, &o, &err) ||
                eval_perplexity(m, ev, ne, &eo, &r, &err)) {
                fprintf(stderr, "slicegpt-bench: %s\n", err.msg);
                return 1;
            }
            ppl[mode] = r.ppl;
            free(r.window_nll);
            model_free(m);
        }
        printf("| %.0f%% | %.4f | %.4f |\n", levels[l] * 100, ppl[0], ppl[1]);
    }
    free(cal);
    free(ev);
    return 0;
}

int main(int argc, char **argv)
{
    int nsamples = 16, T = 2048, layers = 12;
    double sparsity = 0.25;
    const char *tmp = "/tmp", *stories = NULL, *device = "cpu";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--nsamples")) nsamples = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seqlen")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--layers")) layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--sparsity")) sparsity = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir")) tmp = argv[i + 1];
        else if (!strcmp(argv[i], "--stories")) stories = argv[i + 1];
        else if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else { fprintf(stderr, "slicegpt-bench: unknown option %s\n", argv[i]); return 2; }
    }
    if (nsamples < 1 || T < 2 || T > 2048 || layers < 1) { fprintf(stderr, "slicegpt-bench: bad sizes\n"); return 2; }
    struct kbackend *kb;
    struct slm_err err = SLM_ERR_INIT;
    if (kbackend_open(&kb, device, &err)) { fprintf(stderr, "slicegpt-bench: %s\n", err.msg); return 1; }
    int rc = stories ? bench_stories(stories, kb) : bench_opt(nsamples, T, layers, sparsity, tmp, kb);
    kbackend_free(kb);
    return rc;
}
