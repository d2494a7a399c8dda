/*
** tests/unit/core/ref_ids.h: what the compression tests share about the SLiM reference runs on
** stories260K: their token-id matrices (ids.safetensors, int64) and the perplexity the reference
** reports (mean over windows of the mean next-token loss). Include after cmocka.h.
*/
#ifndef SLIM_TEST_REF_IDS_H
#define SLIM_TEST_REF_IDS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "core/safetensors.h"

/* Tensor name of dir/ids.safetensors as int32, malloc'd [rows x cols]. */
static inline int32_t *ref_ids_load(const char *dir, const char *name, int *rows, int *cols)
{
    char p[4200];
    struct safetensors *st = NULL;
    struct slm_err err = SLM_ERR_INIT;
    snprintf(p, sizeof p, "%s/ids.safetensors", dir);
    assert_int_equal(safetensors_open(&st, p, &err), 0);
    const struct st_tensor *t = safetensors_find(st, name);
    assert_non_null(t);
    *rows = (int)t->shape[0];
    *cols = (int)t->shape[1];
    int32_t *ids = malloc(sizeof *ids * t->numel);
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + 8 * i, 8);
        ids[i] = (int32_t)v;
    }
    safetensors_close(st);
    return ids;
}

static inline double ref_perplexity(struct model *m, const int32_t *ids, int nw, int T)
{
    float *nll = malloc(sizeof *nll * (T - 1));
    struct slm_err err = SLM_ERR_INIT;
    double sum = 0;
    for (int w = 0; w < nw; w++) {
        assert_int_equal(model_forward(m, ids + (size_t)w * T, 1, T, NULL, nll, NULL, NULL, &err), 0);
        double s = 0;
        for (int t = 0; t < T - 1; t++) s += nll[t];
        sum += s / (T - 1);
    }
    free(nll);
    return exp(sum / nw);
}

#endif
