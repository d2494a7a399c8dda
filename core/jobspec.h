/*
** core/jobspec.h: the job spec (DESIGN.md), one JSON document for the REST API, slimctl and slim.
** jobspec_parse() validates the WHOLE document before any work starts: unknown fields, wrong
** types, values out of range and combinations the reference implementations reject are errors
** that name the offending field as a JSON pointer ("/pruning/sparsity").
** Ownership: struct jobspec holds copies of every string; jobspec_free() releases them.
*/
#ifndef SLM_JOBSPEC_H
#define SLM_JOBSPEC_H

#include <stdbool.h>
#include <jansson.h>

#include "err.h"

#define JOBSPEC_VERSION 1
#define JOBSPEC_MAX_EVAL 16     /* datasets in /eval/perplexity */

enum js_method { JS_METHOD_SLIM = 0, JS_METHOD_SLICEGPT, JS_METHOD_EVAL };
enum js_prune { JS_PRUNE_NONE = 0, JS_PRUNE_MAGNITUDE, JS_PRUNE_WANDA, JS_PRUNE_SPARSEGPT };
enum js_quant { JS_QUANT_NONE = 0, JS_QUANT_ABSMAX, JS_QUANT_SLIM, JS_QUANT_OPTQ };
enum js_lowrank { JS_LOWRANK_NONE = 0, JS_LOWRANK_NAIVE, JS_LOWRANK_SLIM, JS_LOWRANK_L2QER };
enum js_device { JS_DEVICE_AUTO = 0, JS_DEVICE_CPU, JS_DEVICE_CUDA };
/* bf16: emulate the SLiM reference's bfloat16 pipeline (weights and every op's output rounded to
** bf16 while compressing; evaluation in f32 on the bf16 weights), to reproduce its numbers. */
enum js_precision { JS_PRECISION_F32 = 0, JS_PRECISION_BF16 };

struct jobspec {
    int version;
    struct { char *source; char *revision; } model;
    enum js_method method;
    struct {
        enum js_prune method;
        double sparsity;
        int n, m;                   /* N:M pattern; 0:0 = unstructured */
        bool shift_zero_metrics;
        double damp;                /* SparseGPT percdamp */
        int blocksize;              /* SparseGPT/OPTQ block */
    } pruning;
    struct {
        enum js_quant method;
        int bits;
        int group_size;             /* 0 = per tensor, -1 = per output channel, >0 = groups */
        bool column_wise_grouping;
        bool scale_important_weights;  /* AWQ-like (SLiM-Quant^O) */
        bool joint;                 /* JSQ */
        double mixing_factor;       /* JSQ: weight of the SS term in the pruning metric */
        char *input;                /* activation quantization emulation: NULL, "fp8", "int" ... */
        int input_bits, input_group_size;
    } quantization;
    struct {
        enum js_lowrank method;
        double rank_ratio;
        bool quantize;
        int tile;
        bool separate;
        bool prune;                 /* prune_lora */
        bool pad;
    } lowrank;
    struct { double sparsity; int round_to; bool reference_compat; } slicegpt;
    struct { char *dataset; int nsamples, seqlen, seed; } calibration;
    struct { char **perplexity; int n_perplexity; int seqlen; bool baseline; int batch; } eval;
    enum js_device device;
    enum js_precision precision;
    json_t *raw;                    /* the validated document, defaults filled in (owned) */
};

/* Parse and validate doc (borrowed). On failure returns -SLM_EINVAL with err->msg starting with
** the JSON pointer of the field, e.g. "/pruning/sparsity: must be in [0, 1)", and copies that
** pointer into path (may be NULL) so the API can put it in problem+json. */
int jobspec_parse(struct jobspec *out, const json_t *doc, char *path, size_t path_len, struct slm_err *err);
void jobspec_free(struct jobspec *s);

/* The defaults and accepted values, for GET /v1/capabilities (new reference, caller's). */
json_t *jobspec_capabilities(void);

#endif
