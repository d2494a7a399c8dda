/*
** core/jsq.h: JSQ, joint sparsification and quantization (Guo et al., ICML 2024) as the SLiM
** reference runs it (prune_method=joint_pq, ALGORITHMS.md §3.7). The pipeline (core/compress.c)
** calls these pieces around its block loop:
**   pass 1   jsq_stats_add() clips every calibration input of a linear and keeps act_scale and
**            the running sum of the clipped inputs (Wanda's scaler_row is then taken from the
**            clipped input too, as in the reference);
**   prune    jsq_metric() = |W| sqrt(scaler) + mix * SS, then Wanda's per-row selection;
**   pass 2   block outputs are recomputed pruned but unquantized;
**   smooth   jsq_smooth_block(): SmoothQuant (alpha 0.5) on the norms in front of q/k/v and fc1
**            (gate/up), which leaves the block's function unchanged;
**   quantize group AbsMax of the smoothed, pruned weights (core/quant.c).
** Reference quirks kept on purpose (each one is commented where it happens): act_scale is the max
** over the LAST calibration sample only; the clip threshold is the floor(0.01 n)-th largest |x|.
** Matrices are host f32, row-major; the SS product runs on the backend (kbackend.h).
*/
#ifndef SLM_JSQ_H
#define SLM_JSQ_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"
#include "model.h"
#include "../kernels/kbackend.h"

#define JSQ_CLIP_FRACTION 0.01   /* clip_matrix(x, abs=True, clip_l=0, clip_h=1e-2) */
#define JSQ_SS_INF 100.0f        /* generate_ss replaces +-inf ranges by 100 */
#define JSQ_SMOOTH_MIN 1e-5f     /* clamp of the weight maxima and of the smoothing factors */

/* Statistics of one linear input (shared by linears that read the same input). Ownership: the
** arrays are the struct's (jsq_stats_free). */
struct jsq_stats {
    int rows, d_in;
    int nseq;               /* sequences summed into inp_sum */
    float *act_scale;       /* [d_in] max_t |x_tj| of the last sequence seen (reference bug) */
    float *inp_sum;         /* [rows x d_in] sum over sequences of the clipped inputs */
};

/* *out = the floor(0.01 n)-th largest |x_i| (1-based rank), the reference's clip threshold;
** +inf when that rank is 0 (n < 100: the reference would fail on an empty top-k, here nothing
** is clipped). NaN counts as larger than everything, as in torch.topk. */
int jsq_clip_threshold(float *out, const float *x, size_t n, struct slm_err *err);

/* Clip host x [rows x d_in] in place (clamp to +-threshold over the whole matrix), then record it:
** act_scale is overwritten, inp_sum accumulated. Shapes must not change between calls. */
int jsq_stats_add(struct jsq_stats *s, float *x, int rows, int d_in, struct slm_err *err);
void jsq_stats_free(struct jsq_stats *s);

/* SS [d_out x d_in] (host): SS[r][j] = max_t - min_t of (xbar W_(j)^T)[t][r], W_(j) = w with input
** column j zeroed, xbar host [rows x d_in], w host [d_out x d_in]; +-inf -> 100. Computed exactly
** as the rank-one correction (xbar W^T)[t][r] - xbar[t][j] W[r][j] of one backend gemm, i.e.
** O(rows d_out d_in) instead of the reference's d_in full products. */
int jsq_ss(struct kbackend *kb, float *ss, const float *xbar, const float *w, int rows, int d_out, int d_in,
           struct slm_err *err);

/* Joint metric (host [d_out x d_in]): |W| sqrt(scaler) + mix * SS(inp_sum / nseq, W). scaler:
** Wanda's scaler_row of the clipped inputs, unshifted (joint_pq does not shift zero metrics). */
int jsq_metric(struct kbackend *kb, float *metric, const float *w, const float *scaler, const struct jsq_stats *st,
               double mix, int d_out, int d_in, struct slm_err *err);

/* SmoothQuant factors with alpha = 0.5 for the nlin weights w[k] (host [d_out[k] x d_in]) that
** read one norm's output: s_j = max(sqrt(act_j) / sqrt(max(max_k max_i |w_k[i][j]|, 1e-5)), 1e-5).
** bf16: emulate the reference's model-dtype arithmetic (act cast to bf16, each op rounded). */
void jsq_smooth_factors(float *s, const float *act, const float *const *w, const int *d_out, int nlin, int d_in,
                        bool bf16);

/* Smooth block b in place (backend memory): the attention-input norm (weight and bias) is
** divided by s_attn and the input columns of q/k/v multiplied by it; likewise the MLP-input norm
** with fc1 (and up). act_attn / act_mlp: act_scale of the q and fc1 inputs. s_attn [q d_in] and
** s_mlp [fc1 d_in] (host, may be NULL) receive the factors. -SLM_EUNSUPPORTED for blocks without
** their own norm in front of each (see jsq_check_model) or with folded norms (SliceGPT). */
int jsq_smooth_block(struct model *m, int b, const float *act_attn, const float *act_mlp, bool bf16,
                     float *s_attn, float *s_mlp, struct slm_err *err);

/* Can JSQ's smoothing run on m's blocks? Only pre-norm sequential blocks (OPT, LLaMA family):
** Phi-2's parallel block has one norm for attention and MLP (the reference raises TypeError), and
** OPT-350M's post-LN puts no norm in front of q/k/v (the reference would smooth the wrong norms
** and change the model). */
int jsq_check_model(const struct model *m, struct slm_err *err);

#endif
