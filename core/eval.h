/*
** core/eval.h: perplexity with the WikiText-2 protocol of ALGORITHMS.md §6 — the text is
** tokenized once, cut into non-overlapping windows of seqlen tokens (tail dropped), each window
** scored on its own (L-1 predictions), ppl = exp(mean over windows of the window's mean NLL).
*/
#ifndef SLM_EVAL_H
#define SLM_EVAL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

struct eval_opts {
    int version;
    int seqlen;                     /* window length L */
    int batch;                      /* windows per forward call */
    int max_windows;                /* 0 = all */
    /* called after each batch; non-zero return cancels */
    int (*progress)(int done, int total, void *payload);
    void *payload;
    volatile sig_atomic_t *cancel;
};
#define EVAL_OPTS_INIT { 1, 2048, 1, 0, NULL, NULL, NULL }

struct eval_result {
    double ppl;
    double mean_nll;
    int nwindows;
    int64_t ntokens;                /* tokens scored through the model (nwindows * seqlen) */
    double seconds;
    double *window_nll;             /* [nwindows] mean NLL per window, malloc'd (caller frees) */
};

/* Score ids[0..n). -SLM_EINVAL if fewer than seqlen tokens. */
int eval_perplexity(struct model *m, const int32_t *ids, size_t n, const struct eval_opts *o, struct eval_result *out,
                    struct slm_err *err);

/* Read a JSON file of token ids: a flat array, or an array of arrays (concatenated), or an object
** holding such an array in "ids". *ids malloc'd. */
int eval_load_ids_json(const char *path, int32_t **ids, size_t *n, struct slm_err *err);

#endif
