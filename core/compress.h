/*
** core/compress.h: the SLiM layer-wise compression pipeline (ALGORITHMS.md §1, §4.8).
** Calibration windows (from token ids, or drawn from documents with the reference's sampler),
** then block by block: gather per-linear statistics on the DENSE block through the
** linear_input_cb hook, compress every linear (prune / quantize / adapters), recompute the block's
** outputs with the compressed weights and feed them to the next block. Progress goes out per
** layer and per block (with the layer's reconstruction error ||X W^T - X W'^T|| / ||X W^T||, X the
** layer's inputs in the first calibration window, W' including adapters); the
** cancel flag is checked between samples and layers. JSQ (opts.jsq, core/jsq.h) keeps the loop but
** changes the order inside a block: prune on its joint metric, recompute the outputs (pruned,
** unquantized), then smooth the norms and quantize.
** Ownership: the model is borrowed and modified in place (compressed weights and adapters replace
** the dense ones in its blocks, or go to compress_opts.on_block and are dropped with
** unload_blocks); struct compress_result is the caller's (compress_result_free).
*/
#ifndef SLM_COMPRESS_H
#define SLM_COMPRESS_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "jobspec.h"
#include "lowrank.h"
#include "model.h"
#include "prune.h"
#include "quant.h"
#include "tokenizer.h"

#define COMPRESS_OPTS_VERSION 1

struct compress_progress {
    const char *stage;        /* "calibrating", "compressing", "adapters" */
    int block, nblocks;
    const char *layer;        /* HF name of the linear just compressed, or NULL */
    double rel_error;         /* ||X W^T - X W'^T|| / ||X W^T|| of that layer on the first window, or -1 */
    double fraction;          /* of the whole compression, [0, 1] */
};

/* Return non-zero to cancel. */
typedef int (*compress_progress_cb)(const struct compress_progress *p, void *payload);

/* What the checkpoint needs to store one compressed linear compactly. */
struct compressed_linear {
    enum lin_role role;
    uint8_t *mask;                 /* host [d_out x d_in], 1 = pruned; NULL when not pruned */
    int8_t *codes;                 /* host [d_out x d_in] integer codes; NULL when not quantized */
    struct quant_params qp;        /* scales of codes (scale NULL when not quantized) */
    float *col_scale;              /* host [d_in] AWQ-like factors, or NULL */
    struct quant_params qpl, qpr;  /* adapter scales (scale NULL unless quantized adapters) */
    double rel_error;
    /* --- added for block streaming (compress_opts.unload_blocks) --- */
    bool present;                  /* the block has this role */
    int rank;                      /* adapter rank as compressed (0: none or merged) */
    float *lora_l, *lora_r;        /* host copies [d_in x rank], [rank x d_out] kept while the block is
                                   ** unloaded and its adapters await quantization (§4.6); else NULL */
};

/* Called once block b is compressed and its calibration outputs recomputed; the block is loaded
** and lin describes its linears. Adapters are still full precision when they are quantized at the
** end (§4.6). Returns 0, a negative slm_rc with err set, or a positive value to cancel. */
typedef int (*compress_block_cb)(struct model *m, int block, const struct compressed_linear lin[LIN_COUNT],
                                 void *payload, struct slm_err *err);

struct compress_result {
    int nblocks;
    struct compressed_linear (*lin)[LIN_COUNT];   /* [nblocks][LIN_COUNT]; role absent: all NULL */
    double seconds;
    /* --- added for block streaming: figures gathered per block, before any unloading --- */
    int64_t zeros, weights;        /* exact zeros / entries of the compressed linears (measured sparsity) */
    int peak_blocks;               /* most blocks resident at once during compression */
    uint64_t peak_block_bytes;     /* backend bytes of block weights (linears, adapters, norms) at that peak */
    uint64_t host_adapter_bytes;   /* host copies of adapters awaiting quantization (lora_l, lora_r) */
    /* --- memory strategy (issue #6) --- */
    uint64_t peak_backend_bytes;   /* most backend memory in use during compression (kb_mem_stats; 0 unknown) */
    uint64_t calib_bytes;          /* calibration activations [nsamples x seqlen x width] f32 */
    bool calib_spilled;            /* they lived in host memory (compress_opts.spill) */
};

struct compress_opts {
    int version;
    struct prune_opts prune;       /* method PRUNE_NONE: no pruning */
    struct quant_opts quant;       /* method QUANT_NONE: no weight quantization */
    struct lowrank_opts lowrank;   /* method LOWRANK_NONE: no adapters */
    bool shift_zero_metrics;
    bool scale_important_weights;
    bool separate_lora;            /* false: merge L R into a dense weight */
    bool bf16;                     /* round weights to bf16 first and emulate the reference's bf16 steps */
    bool keep_codes;               /* fill compress_result with masks / codes / scales */
    compress_progress_cb progress;
    void *payload;
    volatile sig_atomic_t *cancel;
    bool prune_lora;               /* §4.5: 2:4 on L, then Adam (needs separate adapters) */
    int prune_lora_iters;          /* reference: 1000 */
    /* --- block streaming (left zero by COMPRESS_OPTS_INIT: off) --- */
    compress_block_cb on_block;    /* NULL: none */
    void *block_payload;
    bool unload_blocks;            /* after on_block, unload the block and free its codes and masks in the
                                   ** result; adapters awaiting quantization stay on the host (lora_l/r) */
    struct {                       /* JSQ (§3.7, core/jsq.h): needs wanda + group absmax, no adapters */
        bool on;
        double mixing_factor;      /* weight of the SS term; reference default 2.1 */
    } jsq;
    /* --- memory strategy (issue #6; zero = automatic) --- */
    int spill;                     /* calibration activations: 0 in backend memory when they fit beside one
                                   ** block's working set (kb_mem_stats: budget or device free), else in
                                   ** pinned host memory, one window moved at a time; 1 always host; -1 never */
    int prefetch;                  /* 0: while block b computes, a helper thread prepares block b+1's host
                                   ** tensors (model_block_prefetch); -1: plain loads */
    /* --- tests (NULL: none) --- */
    /* Called with each calibration window as block b's statistics pass takes it (x: backend memory,
    ** rows x width), before the block runs on it; it may read x or overwrite it. A comparison of two
    ** backends feeds both the same inputs this way, so that a difference in one block does not
    ** cascade into the next. Nonzero fails the compression with that code. */
    int (*on_block_input)(void *payload, int b, int window, float *x, int rows, int width, struct slm_err *err);
    void *input_payload;
};
#define COMPRESS_OPTS_INIT { COMPRESS_OPTS_VERSION, PRUNE_OPTS_INIT, QUANT_OPTS_INIT, LOWRANK_OPTS_INIT, \
                             false, false, true, false, false, NULL, NULL, NULL, false, 1000, NULL, NULL, false, { false, 2.1 }, 0, 0, \
                             NULL, NULL }

/* Map a validated job spec (method "slim") to options. */
int compress_opts_from_spec(struct compress_opts *o, const struct jobspec *spec, struct slm_err *err);

/* Shapes the grouped quantizers need (group AbsMax, quantized adapters), checked on m's config
** before any work: a model the spec cannot handle fails at once, not after hours of calibration.
** compress_model calls it too. -SLM_EINVAL naming the spec field and the layer. */
int compress_check_model(const struct model *m, const struct compress_opts *o, struct slm_err *err);

/* Compress m in place with calibration windows ids [nsamples x seqlen] (host). The model may be
** opened with MODEL_LAZY_BLOCKS: each block is loaded when reached and stays loaded (it holds
** the compressed weights) unless o->unload_blocks, when only the block being compressed is
** resident and o->on_block must take its weights away (e.g. checkpoint_writer_block). res may be
** NULL (then codes are not kept). Memory (issue #6): weights stay in the mapping until their
** block loads (prefetched on a helper thread while the previous block computes); the calibration
** activations stay in backend memory when they fit, else in host memory (o->spill), with the same
** results bit for bit. Out of memory (-SLM_ENOMEM) and device errors name the block, the stage
** and its sizes in err ("block 3 of 32, compress q_proj (4096 x 4096): cuda: out of device ...").
** res->peak_backend_bytes is the backend's peak during the call (kb_mem_stats, peak reset on
** entry). */
int compress_model(struct model *m, const int32_t *ids, int nsamples, int seqlen, const struct compress_opts *o,
                   struct compress_result *res, struct slm_err *err);

void compress_result_free(struct compress_result *r);

/* ---- calibration windows (§1.2) ---- */

/* CPython's random module: MT19937 seeded like random.seed(int), randint(a, b). */
struct pyrandom { uint32_t mt[624]; int mti; };
void pyrandom_seed(struct pyrandom *r, uint64_t seed);
uint32_t pyrandom_u32(struct pyrandom *r);
int64_t pyrandom_randint(struct pyrandom *r, int64_t a, int64_t b);

/* Tokenized documents in file order. */
struct calib_docs {
    int ndocs;
    int32_t **ids;                 /* [ndocs], each with BOS as the tokenizer adds it */
    size_t *len;
};

/* The reference's sampler: for each sample draw documents until one is strictly longer than
** seqlen, then a window start. out: malloc'd [nsamples x seqlen]. -SLM_EINVAL when no document
** is long enough (after 100000 draws). */
int calib_sample(int32_t **out, const struct calib_docs *docs, int nsamples, int seqlen, int seed, struct slm_err *err);

/* Split text into documents and tokenize each (BOS as the tokenizer adds it): JSON lines with a
** "text" field when the text starts with '{' (C4's format), else paragraphs separated by blank
** lines. Documents keep file order. */
int calib_docs_from_text(struct calib_docs *out, struct tokenizer *tok, const char *text, size_t len,
                         struct slm_err *err);
void calib_docs_free(struct calib_docs *d);

/* ---- one call for job_run and `slim compress` ---- */

/* Callbacks of compress_run. on_block set: each block goes to it, then is unloaded
** (compress_opts.unload_blocks), so only one block is resident. */
struct compress_hooks {
    compress_progress_cb progress;
    void *payload;
    volatile sig_atomic_t *cancel;
    compress_block_cb on_block;
    void *block_payload;
};

/* Compress m (method "slim" spec) with calibration windows drawn from the text file calib_path
** by the §1.2 sampler (spec->calibration). *figures (new reference, may be NULL) gets
** {"seconds", "calibration": {...}, "layers": [{"name", "rel_error"}...], "measured_sparsity",
** "resident": {"peak_blocks", "peak_block_bytes", "host_adapter_bytes", "peak_backend_bytes",
** "calibration_bytes", "calibration_spilled"}}. res (may be NULL) keeps codes and masks for the checkpoint writer. */
int compress_run(struct model *m, const struct jobspec *spec, struct tokenizer *tok, const char *calib_path,
                 const struct compress_hooks *hooks, struct compress_result *res, json_t **figures,
                 struct slm_err *err);

#endif
