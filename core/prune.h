/*
** core/prune.h: pruning of one linear layer (ALGORITHMS.md §2): magnitude, Wanda and SparseGPT
** (with OPTQ/GPTQ quantization inside the OBS loop, §3.5), unstructured or N:M.
** N:M means "keep N of every M consecutive input columns of a row" (2:4 keeps 2).
** Masks are host byte arrays [d_out x d_in], 1 = pruned, 0 = kept.
** Weights, statistics and Hessians live in backend memory. Magnitude and Wanda run on host copies
** (kb_download / kb_upload) unless the backend has the ops (prune_on_backend: prune_nm,
** prune_rows, abs_kth / prune_abs_le);
** SparseGPT runs entirely on the backend (cholesky_upper, spd_inverse, sparsegpt_block, gemm): W
** crosses to the host only to fit OPTQ's per-tensor / per-row steps or zero dead inputs (once,
** before the loop) and to produce codes (once, after it).
*/
#ifndef SLM_PRUNE_H
#define SLM_PRUNE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "quant.h"
#include "../kernels/kbackend.h"

#define PRUNE_OPTS_VERSION 1

enum prune_method { PRUNE_NONE = 0, PRUNE_MAGNITUDE, PRUNE_WANDA, PRUNE_SPARSEGPT };

struct prune_opts {
    int version;
    enum prune_method method;
    double sparsity;          /* fraction pruned; for N:M it must be (M-N)/M */
    int n, m;                 /* keep n of m; 0:0 = unstructured */
    double damp;              /* SparseGPT percdamp */
    int blocksize;            /* SparseGPT / OPTQ column block */
    /* OPTQ inside SparseGPT (or alone with sparsity 0): bits 0 = off */
    int optq_bits;
    int optq_group;           /* 0 one step per tensor, -1 per row, > 0 refit every G columns */
};
#define PRUNE_OPTS_INIT { PRUNE_OPTS_VERSION, PRUNE_WANDA, 0.5, 0, 0, 0.01, 128, 0, 0 }

/* Wanda's shift_zero_metrics (§2.2) in place on host s [n]: s += min(s with zeros -> 1). */
void prune_shift_scaler(float *s, int n);

/* Mask of magnitude (s NULL) or Wanda (s = host scaler_row [d_in]) pruning of host w. */
int prune_mask_host(uint8_t *mask, const float *w, const float *s, int d_out, int d_in,
                    const struct prune_opts *o, struct slm_err *err);

/* Wanda's per-row selection on any metric (host [d_out x d_in], smaller = pruned first): N:M
** groups, or floor(d_in * sparsity) per row. JSQ (core/jsq.c) uses it with its joint metric. */
int prune_mask_metric(uint8_t *mask, const float *metric, int d_out, int d_in, const struct prune_opts *o,
                      struct slm_err *err);

/* Magnitude / Wanda on backend w: compute the mask (mask may be NULL) and zero the pruned
** entries. s: host [d_in] or NULL for magnitude. Runs on the backend when prune_on_backend holds;
** otherwise the selection runs on a host copy. */
int prune_weight(struct kbackend *kb, float *w, const float *s, int d_out, int d_in,
                 const struct prune_opts *o, uint8_t *mask, struct slm_err *err);

/* Whether kb has the ops for o's magnitude / Wanda selection: prune_nm (N:M), prune_rows
** (unstructured Wanda), abs_kth and prune_abs_le (unstructured magnitude). */
bool prune_on_backend(struct kbackend *kb, const struct prune_opts *o);

/* prune_weight with the mask left in backend memory: d_mask (backend [d_out x d_in], the
** caller's) gets 1 where w was zeroed, 0 elsewhere. -SLM_EUNSUPPORTED unless prune_on_backend
** (then prune_weight's host path is the way). */
int prune_weight_kb(struct kbackend *kb, float *w, const float *s, int d_out, int d_in, const struct prune_opts *o,
                    uint8_t *d_mask, struct slm_err *err);

/* SparseGPT (`fasterprune`) on backend w [d_out x d_in] with backend Hessian H [d_in x d_in]
** (clobbered: it holds the upper Cholesky factor of H^-1 on return). mask (host, may be NULL)
** gets the pruned entries. With o->optq_bits, the kept weights are quantized inside the loop;
** codes (host [d_out x d_in], may be NULL) and params (may be NULL; kind QK_STEP) describe them.
** Unstructured pruning downloads each block's metric [d_out x blocksize] to pick its threshold.
** -SLM_EUNSUPPORTED when the backend lacks sparsegpt_block or the factorizations. */
int prune_sparsegpt(struct kbackend *kb, float *w, float *H, int d_out, int d_in, const struct prune_opts *o,
                    uint8_t *mask, int8_t *codes, struct quant_params *params, struct slm_err *err);

#endif
