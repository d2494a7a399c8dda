/*
** tests/bench/gpu_forward_bench.c: perplexity-evaluation throughput of slimd's forward pass on a
** model folder (written by transformers' save_pretrained in tests/bench/hf_forward.py), on any
** backend. Token ids are ((t * 7919) mod vocab), the same as hf_forward.py uses, so the mean NLL
** printed here must match transformers' loss on the same folder.
** usage: gpu-forward-bench DIR [--backend cuda] [--seqlen 2048] [--reps 5]
** Prints one line: backend, tokens/s (median of reps after one warm-up), median seconds, mean NLL.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/model.h"
#include "kernels/kbackend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : NULL, *spec = "cuda";
    int T = 2048, reps = 5, rc = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) spec = argv[i + 1];
        else if (!strcmp(argv[i], "--seqlen")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    }
    if (!dir || T < 2 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: gpu-forward-bench DIR [--backend cuda] [--seqlen 2048] [--reps 5]\n");
        return 2;
    }
    struct slm_err err = SLM_ERR_INIT;
    struct kbackend *kb = NULL;
    struct model *m = NULL;
    int32_t *ids = malloc(sizeof(int32_t) * T);
    float *nll = malloc(sizeof(float) * (T - 1));
    double *times = malloc(sizeof(double) * reps);
    if (!ids || !nll || !times) { fprintf(stderr, "gpu-forward-bench: out of memory\n"); goto done; }
    double t0 = now_s();
    if (kbackend_open(&kb, spec, &err) || model_open(&m, dir, kb, 0, &err)) goto fail;
    double t_load = now_s() - t0;
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(((int64_t)t * 7919) % m->cfg.vocab);
    if (model_forward(m, ids, 1, T, NULL, nll, NULL, NULL, &err)) goto fail; /* warm-up */
    for (int r = 0; r < reps; r++) {
        t0 = now_s();
        if (model_forward(m, ids, 1, T, NULL, nll, NULL, NULL, &err)) goto fail;
        times[r] = now_s() - t0;
    }
    qsort(times, reps, sizeof *times, cmp_d);
    double med = times[reps / 2], mean_nll = 0;
    for (int t = 0; t < T - 1; t++) mean_nll += nll[t];
    mean_nll /= T - 1;
    /* where the time goes: one layer's attention and its largest GEMM, alone */
    const struct model_config *c = &m->cfg;
    float *q = NULL, *o = NULL, *w = NULL, *y = NULL;
    size_t qn = (size_t)T * c->n_heads * c->head_dim, kvn = (size_t)T * c->n_kv_heads * c->head_dim;
    if (kb_alloc(kb, (void **)&q, (qn + 2 * kvn) * sizeof(float), &err) || kb_alloc(kb, (void **)&o, qn * sizeof(float), &err) ||
        kb_alloc(kb, (void **)&w, (size_t)c->ffn * c->hidden * sizeof(float), &err) ||
        kb_alloc(kb, (void **)&y, (size_t)T * c->ffn * sizeof(float), &err))
        goto fail;
    {
        size_t wn = (size_t)c->ffn * c->hidden, hn = qn + 2 * kvn > wn ? qn + 2 * kvn : wn;
        float *hq = malloc(hn * sizeof(float));
        if (!hq) goto done;
        for (size_t i = 0; i < hn; i++) hq[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        int up = kb_upload(kb, q, hq, (qn + 2 * kvn) * sizeof(float), &err);
        if (!up) up = kb_upload(kb, w, hq, wn * sizeof(float), &err);
        free(hq);
        if (up) goto fail;
    }
    struct kattn_args at = { o, c->n_heads * c->head_dim, q, c->n_heads * c->head_dim, q + qn, q + qn + kvn,
                             c->n_kv_heads * c->head_dim, 1, T, c->n_heads, c->n_kv_heads, c->head_dim,
                             1.0f / sqrtf((float)c->head_dim) };
    double ta = 0, tg = 0;
    for (int r = 0; r < 11; r++) {
        t0 = now_s();
        if (kb->iface->attention(kb, &at, &err) || kb_sync(kb, &err)) goto fail;
        if (r) ta += now_s() - t0;
        t0 = now_s();
        if (kb_linear(kb, y, q, w, NULL, T, c->ffn, c->hidden, &err) || kb_sync(kb, &err)) goto fail;
        if (r) tg += now_s() - t0;
    }
    ta /= 10, tg /= 10;
    double af = 4.0 * c->n_heads * c->head_dim * (double)T * (T + 1) / 2;
    fprintf(stderr, "  %s: attention/layer %.3f ms (%.1f TFLOP/s causal), gemm %dx%dx%d %.3f ms (%.1f TFLOP/s)\n",
            kb_name(kb), ta * 1e3, af / ta / 1e12, T, c->ffn, c->hidden, tg * 1e3, 2.0 * T * c->ffn * c->hidden / tg / 1e12);
    kb_release(kb, q); kb_release(kb, o); kb_release(kb, w); kb_release(kb, y);
    /* the forward pass by stage: embeddings, blocks, final norm + head (logits of every row) */
    float *x = NULL, *lg = NULL;
    if (kb_alloc(kb, (void **)&x, (size_t)T * model_max_width(m) * sizeof(float), &err) ||
        kb_alloc(kb, (void **)&lg, (size_t)T * c->vocab * sizeof(float), &err))
        goto fail;
    double ts[4];
    ts[0] = now_s();
    if (model_embed(m, x, ids, 1, T, &err) || kb_sync(kb, &err)) goto fail;
    ts[1] = now_s();
    for (int b = 0; b < c->n_layers; b++)
        if (model_block_forward(m, b, x, 1, T, NULL, NULL, &err)) goto fail;
    if (kb_sync(kb, &err)) goto fail;
    ts[2] = now_s();
    if (model_head(m, lg, x, 1, T, &err) || kb_sync(kb, &err)) goto fail;
    ts[3] = now_s();
    fprintf(stderr, "  stages: embed %.2f ms, %d blocks %.2f ms, head %.2f ms (forward with loss %.2f ms)\n",
            (ts[1] - ts[0]) * 1e3, c->n_layers, (ts[2] - ts[1]) * 1e3, (ts[3] - ts[2]) * 1e3, med * 1e3);
    kb_release(kb, x); kb_release(kb, lg);
    struct kmem_stats ms;
    struct slm_err ms_err = SLM_ERR_INIT;
    if (!kb_mem_stats(kb, &ms, false, &ms_err))
        fprintf(stderr, "  memory: peak %.1f MiB of backend memory since open (%.1f MiB cached by the allocator)\n",
                ms.peak / 1048576.0, ms.cached / 1048576.0);
    printf("slimd %-28s %10.0f tokens/s  median %.4f s (min %.4f, %d reps)  mean_nll %.6f  load %.1f s\n",
           kb_name(kb), T / med, med, times[0], reps, mean_nll, t_load);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "gpu-forward-bench: %s\n", err.msg);
done:
    model_free(m);
    kbackend_free(kb);
    free(ids); free(nll); free(times);
    return rc;
}
