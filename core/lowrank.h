/*
** core/lowrank.h: low-rank adapters that absorb compression error (ALGORITHMS.md §4):
** Naive-LoRA (plain SVD of the error), SLiM-LoRA (SVD of the error with input columns scaled by
** the activation norm sqrt(s_j), undone on L) and L2QER (the same with the mean |activation|).
** Orientation as in the model: y += (x L) R, L [d_in x r], R [r x d_out], so L R ~= E^T for the
** error E = W - W_compressed [d_out x d_in].
** The factorization runs on the backend (svd, or gram_f64 + eigh_f64 + gemm); the rest are host loops on the caller's host
** copies. Ownership: outputs are caller-allocated.
*/
#ifndef SLM_LOWRANK_H
#define SLM_LOWRANK_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "quant.h"
#include "../kernels/kbackend.h"

#define LOWRANK_OPTS_VERSION 1

enum lowrank_method { LOWRANK_NONE = 0, LOWRANK_NAIVE, LOWRANK_SLIM, LOWRANK_L2QER };

struct lowrank_opts {
    int version;
    enum lowrank_method method;
    double rank_ratio;        /* r = floor(rank_ratio * min(d_out, d_in)) */
    int tile;                 /* rank rounded up to a multiple of tile when pad or quantize */
    bool pad;
    bool quantize;            /* group AbsMax of the adapters, groups of tile (§4.6) */
    bool column_wise;         /* adapter groups along columns (follows the weight's flag) */
    int bits;                 /* adapter bit width (= weight bits) */
    bool bf16;                /* emulate the reference's bf16 roundings */
};
#define LOWRANK_OPTS_INIT { LOWRANK_OPTS_VERSION, LOWRANK_SLIM, 0.1, 128, true, false, false, 4, false }

/* The rank of §4.1 (never above min(d_out, d_in)). */
int lowrank_rank(int d_out, int d_in, const struct lowrank_opts *o);

/* Best rank-r factors of E D (D = diag(d), d host [d_in], NULL = identity), then L = D^-1 V S.
** E: host [d_out x d_in]; L: host [d_in x r]; R: host [r x d_out]. With d, the pair minimises
** ||(E - (L R)^T) D||_F over rank r (Eckart-Young in the scaled norm). */
int lowrank_fit(struct kbackend *kb, float *L, float *R, const float *E, const float *d,
                int d_out, int d_in, int r, bool bf16, struct slm_err *err);

/* How lowrank_fit factors: the full thin SVD on the backend (the reference's torch.svd; the CPU
** default), the same SVD by the CPU backend (LAPACK) for an error of at most LOWRANK_HOST_SVD_MAX
** on its smaller side when the backend is another, or the top r eigenpairs of the f64 Gram matrix
** of E D (its smaller side) with the other factor from one GEMM — the default on a GPU backend for
** larger errors when r <= min(d_out, d_in) / 2. All give the best rank-r pair; the Gram path
** differs from LAPACK by f32 rounding and by the arbitrary sign of each singular pair. Small errors
** take LAPACK everywhere because that rounding is enough to move SLiM-Quant's clip (a histogram
** argmin) on a small model, and there the host SVD costs little: a GPU run then keeps the CPU's
** adapters bit for bit. */
#define LOWRANK_HOST_SVD_MAX 512
enum lowrank_svd { LOWRANK_SVD_EXACT = 0, LOWRANK_SVD_GRAM, LOWRANK_SVD_HOST };
enum lowrank_svd lowrank_svd_choice(struct kbackend *kb, int d_out, int d_in, int r);
/* lowrank_fit through the Gram path whatever the backend (needs gram_f64 and eigh_f64). */
int lowrank_fit_gram(struct kbackend *kb, float *L, float *R, const float *E, const float *d,
                     int d_out, int d_in, int r, bool bf16, struct slm_err *err);

/* (L R)^T = R^T L^T [d_out x d_in] into out (host; a backend gemm), rounded to bf16 when bf16. */
int lowrank_product(struct kbackend *kb, float *out, const float *L, const float *R, int d_out, int d_in, int r,
                    bool bf16, struct slm_err *err);

/* §4.6: fake-quantize the stored adapters L' = L sqrt(r), R' = R sqrt(r) with group AbsMax of
** o->tile rows (or columns), then divide by sqrt(r) again so that (x L) R keeps its meaning.
** pl / pr (may be NULL) get the scale grids of L' and R'. */
int lowrank_quantize(float *L, float *R, int d_out, int d_in, int r, const struct lowrank_opts *o,
                     struct quant_params *pl, struct quant_params *pr, struct slm_err *err);

/* Flip each singular pair (column c of L [d_in x r], row c of R [r x d_out]) so that the entry of
** largest magnitude in R's row is positive (the first such entry on ties). L R is unchanged; what
** depends on the signs themselves (prune_lora's signed 2:4 selection) then no longer depends on
** which SVD produced the pair (LAPACK, cuSOLVER or the Gram path choose signs differently). */
void lowrank_canonical_signs(float *L, float *R, int d_out, int d_in, int r);

/* §4.5 prune_lora on L [d_in x r] (host, in place) given R: 2:4 along d_in (groups of 4
** consecutive rows of one rank column) dropping the 2 smallest SIGNED values, as the reference
** does, then iters steps of Adam (lr 1e6 / min(d_in, d_out)^2, linear decay to 1e-4 of it) on
** ||L R - T||_F / ||T||_F with T = L R before masking, re-zeroing the pruned entries after each
** step. mask (host [d_in x r], may be NULL) gets 1 for pruned entries. *loss (may be NULL): the
** final relative error. Gemms run on the backend. */
int lowrank_prune_adapter(struct kbackend *kb, float *L, const float *R, int d_out, int d_in, int r, int iters,
                          uint8_t *mask, double *loss, struct slm_err *err);

#endif
