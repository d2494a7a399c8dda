/*
** core/slicegpt.h: SliceGPT (ALGORITHMS.md §7): make the network invariant to rotations of the
** residual stream (fusion), rotate every stage of the stream into the principal components of
** its calibration signal, and delete the least significant coordinates.
**
** Two fusion modes: exact (default; slicing 0 leaves the model's function unchanged for every
** architecture) and reference_compat (what the authors' code does: token embeddings mean-centred
** for every architecture and the norm epsilon fixed at 1e-5, which changes RMSNorm models).
**
** The result is an ordinary struct model with NORM_RMS (divisor = the original hidden size), no
** norm weights, per-block widths and shortcut matrices; model_save() writes it and model_open()
** reads it back through the "slicegpt" object the run adds to config.json.
** Ownership: every function works in place on a caller-owned model; nothing is retained.
*/
#ifndef SLM_SLICEGPT_H
#define SLM_SLICEGPT_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

struct slicegpt_opts {
    int version;
    double sparsity;            /* removed fraction of the hidden size, in [0, 1) */
    int round_to;               /* kept width rounded down to a multiple of this (8) */
    bool reference_compat;      /* the authors' fusion (see above) */
    int batch;                  /* calibration sequences per forward call; 0 = automatic */
    /* after each block (block = index done, of nblocks); non-zero return cancels */
    int (*progress)(int block, int nblocks, void *payload);
    /* every PCA: stage "embed", "layers.<i>.mid", "layers.<i>.out"; eigenvalues descending,
    ** damping included; non-zero return cancels */
    int (*on_pca)(const char *stage, const double *eig, int n, void *payload);
    void *payload;
    volatile sig_atomic_t *cancel;   /* may be NULL; non-zero = stop soon */
};
#define SLICEGPT_OPTS_INIT { 1, 0.0, 8, false, 0, NULL, NULL, NULL, NULL }

/* Kept width r = int((1 - sparsity) * d) rounded down to a multiple of round_to (at least
** round_to when d allows, and never 0). */
int slicegpt_width(int d, double sparsity, int round_to);

/* -SLM_EINVAL naming the field when sparsity is outside [0, 1) or round_to < 1. */
int slicegpt_check_opts(const struct slicegpt_opts *o, struct slm_err *err);

/* Parameters of the model cfg describes after fusion and slicing (shapes only, no weights):
** embeddings and every reading matrix at the kept width, the last block's output and the
** untied head at full width, shortcut matrices, no norm parameters. */
int slicegpt_param_count(int64_t *out, const struct model_config *cfg, double sparsity, int round_to,
                         struct slm_err *err);

/* Parameters a model holds now (tied head counted once). */
int64_t slicegpt_model_params(const struct model *m);

/* Step 1 alone: fold norms into the adjacent linears, centre what writes the residual stream
** (LayerNorm models), untie the head, switch to NORM_RMS. Loads every block. */
int slicegpt_fuse(struct model *m, bool reference_compat, struct slm_err *err);

/* The whole method: fusion, then PCA rotation and slicing on calibration ids [nseq x seqlen]
** (host, row-major). On success m is the sliced model and m->config_json carries the
** "slicegpt" description model_save() writes. */
int slicegpt_run(struct model *m, const int32_t *ids, int nseq, int seqlen, const struct slicegpt_opts *o,
                 struct slm_err *err);

/* model_open() hook: apply config.json's "slicegpt" object (per-block widths, norm) to a model
** whose blocks are not loaded yet. */
int slicegpt_config_apply(struct model *m, const json_t *config, struct slm_err *err);

#endif
