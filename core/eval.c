/* core/eval.c: perplexity over non-overlapping windows (see eval.h). */
#include "eval.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Activations kept per chunk of windows when blocks are not resident (eval_block_major). */
#define EVAL_CHUNK_BYTES ((size_t)1 << 30)

/* Windows per chunk of block-major evaluation: EVAL_CHUNK_BYTES of activations, or up to a quarter
** of the backend's room where that is known and larger (kb_room: a device's free memory, or a
** budget), so that each block loads (and a checkpoint's dequantizes) once per chunk, as few times
** as memory allows. The numbers do not depend on it: every window goes through the same ops. */
static size_t chunk_windows(struct model *m, size_t per, size_t nwin)
{
    size_t bytes = EVAL_CHUNK_BYTES;
    int64_t room = kb_room(m->kb);
    if (room / 4 > (int64_t)bytes) bytes = (size_t)(room / 4);
    size_t K = bytes / (per * sizeof(float));
    return K < 1 ? 1 : K > nwin ? nwin : K;
}

/* Windows w0..w0+nk through a model whose blocks load on demand: block-major, so each block is
** loaded (and, for a checkpoint, dequantized) once per chunk instead of once per window. Same
** ops per window as model_forward with B = 1, so the same numbers bit for bit. nll: [L-1]. */
static int eval_chunk(struct model *m, const int32_t *ids, size_t w0, int nk, int L, float *x, size_t per, float *nll,
                      double *wn, struct slm_err *err)
{
    int rc = 0;
    for (int k = 0; k < nk && !rc; k++) rc = model_embed(m, x + (size_t)k * per, ids + (w0 + k) * (size_t)L, 1, L, err);
    for (int b = 0; b < m->cfg.n_layers && !rc; b++) {
        bool transient = !m->blocks[b].loaded;
        if (transient && (rc = model_block_load(m, b, err))) break;
        /* the next block pages in (and, with a copy stream, uploads) while this one computes */
        if (transient && b + 1 < m->cfg.n_layers && !m->blocks[b + 1].loaded)
            model_block_prefetch(m, b + 1, 8 * (uint64_t)per * sizeof(float), err);   /* a window's forward workspace */
        for (int k = 0; k < nk && !rc; k++) rc = model_block_forward(m, b, x + (size_t)k * per, 1, L, NULL, NULL, err);
        if (transient) model_block_unload(m, b);
    }
    if (rc) model_prefetch_drop(m);
    for (int k = 0; k < nk && !rc; k++) {
        if ((rc = model_head_nll(m, x + (size_t)k * per, ids + (w0 + k) * (size_t)L, 1, L, NULL, nll, err))) break;
        double s = 0;
        for (int t = 0; t < L - 1; t++) s += nll[t];
        wn[w0 + k] = s / (L - 1);
    }
    return rc;
}

int eval_perplexity(struct model *m, const int32_t *ids, size_t n, const struct eval_opts *o, struct eval_result *out,
                    struct slm_err *err)
{
    int L = o->seqlen, bs = o->batch > 0 ? o->batch : 1;
    if (L < 2) return slm_err_set(err, SLM_EINVAL, "eval: seqlen %d must be at least 2", L);
    size_t nwin = n / (size_t)L;
    if (o->max_windows > 0 && nwin > (size_t)o->max_windows) nwin = (size_t)o->max_windows;
    if (nwin == 0) return slm_err_set(err, SLM_EINVAL, "eval: %zu tokens is fewer than one window of %d", n, L);
    if (nwin > INT32_MAX) return slm_err_set(err, SLM_EINVAL, "eval: too many windows");
    double *wn = malloc(nwin * sizeof(double));
    float *nll = malloc((size_t)bs * (L - 1) * sizeof(float));
    int rc = 0;
    if (!wn || !nll) { rc = slm_err_set(err, SLM_ENOMEM, "eval: buffers"); goto fail; }
    double t0 = now_s(), sum = 0;
    bool resident = true;
    for (int b = 0; b < m->cfg.n_layers; b++) resident &= m->blocks[b].loaded;
    if (!resident) {
        /* blocks load on demand (a model larger than memory, a compressed checkpoint) */
        size_t per = (size_t)L * model_max_width(m), K = chunk_windows(m, per, nwin);
        float *x = NULL;
        if ((rc = kb_alloc(m->kb, (void **)&x, sizeof *x * per * K, err))) goto fail;
        for (size_t w0 = 0; w0 < nwin && !rc; w0 += K) {
            int nk = (int)(nwin - w0 < K ? nwin - w0 : K);
            if (o->cancel && *o->cancel) rc = slm_err_set(err, SLM_ECANCELLED, "evaluation cancelled");
            if (!rc) rc = eval_chunk(m, ids, w0, nk, L, x, per, nll, wn, err);
            if (!rc && o->progress && o->progress((int)(w0 + nk), (int)nwin, o->payload))
                rc = slm_err_set(err, SLM_ECANCELLED, "evaluation cancelled");
        }
        kb_release(m->kb, x);
        if (rc) goto fail;
        for (size_t w = 0; w < nwin; w++) sum += wn[w];
    }
    for (size_t w0 = 0; resident && w0 < nwin; w0 += bs) {
        if (o->cancel && *o->cancel) { rc = slm_err_set(err, SLM_ECANCELLED, "evaluation cancelled"); goto fail; }
        int nb = (int)(nwin - w0 < (size_t)bs ? nwin - w0 : (size_t)bs);
        if ((rc = model_forward(m, ids + w0 * L, nb, L, NULL, nll, NULL, NULL, err))) goto fail;
        for (int b = 0; b < nb; b++) {
            double s = 0;
            for (int t = 0; t < L - 1; t++) s += nll[(size_t)b * (L - 1) + t];
            wn[w0 + b] = s / (L - 1);
            sum += wn[w0 + b];
        }
        if (o->progress && o->progress((int)(w0 + nb), (int)nwin, o->payload)) {
            rc = slm_err_set(err, SLM_ECANCELLED, "evaluation cancelled");
            goto fail;
        }
    }
    out->mean_nll = sum / nwin;
    out->ppl = exp(out->mean_nll);
    out->nwindows = (int)nwin;
    out->ntokens = (int64_t)nwin * L;
    out->seconds = now_s() - t0;
    out->window_nll = wn;
    free(nll);
    if (!isfinite(out->ppl)) return slm_err_set(err, SLM_ENUMERIC, "eval: perplexity is not finite (mean NLL %g)", out->mean_nll);
    return 0;
fail:
    free(wn);
    free(nll);
    return rc;
}

static int append_ids(const json_t *arr, int32_t **ids, size_t *n, size_t *cap, struct slm_err *err)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (json_is_array(v)) {
            int rc = append_ids(v, ids, n, cap, err);
            if (rc) return rc;
            continue;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return slm_err_set(err, SLM_EFORMAT, "ids: element %zu is not a token id", i);
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 1024;
            int32_t *p = realloc(*ids, nc * sizeof(int32_t));
            if (!p) return slm_err_set(err, SLM_ENOMEM, "ids: out of memory");
            *ids = p;
            *cap = nc;
        }
        (*ids)[(*n)++] = (int32_t)json_integer_value(v);
    }
    return 0;
}

int eval_load_ids_json(const char *path, int32_t **ids, size_t *n, struct slm_err *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return slm_err_set(err, SLM_EFORMAT, "%s: %s (line %d)", path, je.text, je.line);
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    /* {"ids": [...], ...} as the fixtures store them, or the array itself */
    const json_t *arr = json_is_object(root) ? json_object_get(root, "ids") : root;
    int rc = json_is_array(arr) ? append_ids(arr, ids, n, &cap, err)
                                : slm_err_set(err, SLM_EFORMAT, "%s: expected a JSON array of token ids, or an object with one in \"ids\"", path);
    json_decref(root);
    if (rc) { free(*ids); *ids = NULL; *n = 0; }
    return rc;
}
