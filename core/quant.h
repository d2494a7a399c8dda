/*
** core/quant.h: weight quantizers of the SLiM family (ALGORITHMS.md §3): AbsMax per tensor, per
** output channel and in groups (G rows x 1 column by default, 1 x G with column_wise), SLiM-Quant
** (histogram-weighted clipping search), the OPTQ/GPTQ scalar quantizer used inside the OBS loop
** (core/prune.c), the AWQ-like important-column scaling and activation-quantization emulation.
** All quantizers are symmetric with the integer grid [-2^(b-1), 2^(b-1)-1] and "fake-quantize":
** the weight keeps dequantized values (AbsMax / SLiM-Quant: rounded to bf16, as the reference
** stores them; OPTQ: f32); the integer codes and the parameters come back for the
** checkpoint so that dequantizing them reproduces the same floats bit for bit.
**
** Two layers: quant_weight() works on backend memory (with the backend's quantization ops when
** it has them, else kb_download / kb_upload around the host loops); the *_host functions work on
** host arrays and are what prune.c and lowrank.c call on matrices they already hold on the host.
** Both run the scalar arithmetic of kernels/kquant.h, so they agree bit for bit.
** Ownership: struct quant_params owns its scale array (quant_params_free).
*/
#ifndef SLM_QUANT_H
#define SLM_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "../kernels/kbackend.h"

#define QUANT_OPTS_VERSION 1

enum quant_method { QUANT_NONE = 0, QUANT_ABSMAX, QUANT_SLIM, QUANT_OPTQ };

struct quant_opts {
    int version;
    enum quant_method method;
    int bits;                 /* 2..8 */
    int group_size;           /* 0 per tensor, -1 per output row, > 0 groups of G (AbsMax only) */
    bool column_wise;         /* groups are 1 x G along the inputs (Marlin layout) */
    bool bf16;                /* emulate the reference's bf16 roundings (its own setting) */
};
#define QUANT_OPTS_INIT { QUANT_OPTS_VERSION, QUANT_ABSMAX, 4, 0, false, false }

/* How the stored scale turns a code q back into a weight (same float arithmetic as quantizing);
** the values are the backend ops' enum kquant_kind. */
enum quant_kind {
    QK_SF = KQ_SF,        /* per tensor (rows = cols = 1) or per row (rows = d_out): w = q / sf */
    QK_ALPHA = KQ_ALPHA,  /* groups: w = q / max_q * alpha; rows x cols grid of groups */
    QK_STEP = KQ_STEP     /* OPTQ: w = step * q; per tensor or per row */
};

struct quant_params {
    enum quant_kind kind;
    int bits;
    int rows, cols;           /* shape of the scale grid */
    int group_rows, group_cols;  /* elements of W covered by one scale (1 x d_in, G x 1, 1 x G, ...) */
    bool bf16;
    float *scale;             /* host [rows x cols] */
};

void quant_params_free(struct quant_params *p);

static inline int quant_max_q(int bits) { return (1 << (bits - 1)) - 1; }

/* Fake-quantize w [d_out x d_in] (host) in place with method ABSMAX or SLIM. col_scale (host
** [d_in], may be NULL) is the AWQ-like emulation of §3.4: parameters come from the unscaled w,
** column j is multiplied by col_scale[j] before quantizing and divided after. codes (host
** [d_out x d_in], may be NULL) receive the integers; params (may be NULL) the scales. */
int quant_weight_host(float *w, int d_out, int d_in, const struct quant_opts *o, const float *col_scale,
                      int8_t *codes, struct quant_params *params, struct slm_err *err);

/* The same on backend memory. */
int quant_weight(struct kbackend *kb, float *w, int d_out, int d_in, const struct quant_opts *o,
                 const float *col_scale, int8_t *codes, struct quant_params *params, struct slm_err *err);

/* True when quant_weight runs on the backend's ops (no host copy of w). */
bool quant_weight_on_backend(const struct kbackend *kb);

/* Rebuild a weight from codes and params exactly as quant_weight_host left it (col_scale: the
** same array that was used, or NULL). */
int quant_dequant_host(float *w, const int8_t *codes, int d_out, int d_in, const struct quant_params *p,
                       const float *col_scale, struct slm_err *err);

/* quant_dequant_host into backend w [d_out x d_in] (allocated by the caller) from host codes,
** p's host scale grid and host col_scale: on the backend's quant_dequant op where it has one (only
** the codes, a byte per weight, and the scales cross), else on the host with the floats uploaded.
** The same bits either way. */
int quant_dequant(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in, const struct quant_params *p,
                  const float *col_scale, struct slm_err *err);

/* SLiM-Quant's clipping value for the |values| of a (n floats), §3.3, bit for bit the search of
** the reference (bins, coarse grid of 10/11 points, fine grid [lo, hi)). */
float quant_slim_alpha(const float *a, size_t n, int bits);

/* §3.4: col_scale[j] = 2 for the floor(0.01 d_in) columns with the largest s_j * sum_i |W_ij|,
** 1 elsewhere. s: host [d_in] (Wanda scaler_row). */
int quant_important_columns(float *col_scale, const float *w, int d_out, int d_in, const float *s,
                            struct slm_err *err);

/* OPTQ scalar quantizer (§3.5): step per row (per_row) or one for the whole w [rows x cols, ld]. */
void quant_optq_fit(float *step, const float *w, int rows, int cols, int ld, bool per_row, int bits);
static inline float quant_optq_apply(float x, float step, int bits) { return kb_optq_apply(x, step, bits); }

/* Activation quantization emulation (§3.6) in place on host x [rows x d]: "fp8" (bits 8, one
** scale for the whole tensor) or "int" (bits, groups of group_size consecutive elements of the
** flattened tensor, or per token with group_size -1). */
int quant_input_host(float *x, int rows, int d, const char *kind, int bits, int group_size, struct slm_err *err);

/* Round to the nearest E4M3 (fn, max 448) or E5M2 (max 57344) value, ties to even, saturating. */
float quant_fp8_round(float x, bool e5m2);

#endif
