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
    for (size_t w0 = 0; w0 < nwin; w0 += bs) {
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
