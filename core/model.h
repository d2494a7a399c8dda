/*
** core/model.h: a Hugging Face causal LM held for inference and block-wise compression.
**
** model_open() reads config.json, picks the architecture adapter (core/arch_*.c), maps the
** safetensors and converts weights to f32 in backend memory. Blocks can be resident all at once
** (evaluation) or loaded one at a time (compression of models larger than device memory).
** Every block is described generically (struct block): a set of linears by role, two norms and,
** for SliceGPT-sliced models, per-block residual widths and shortcut matrices; the forward pass
** in model.c runs any of them, so no shared code asks "is this LLaMA?".
**
** Ownership: struct model owns every weight buffer (backend memory) and the mapping; the backend
** is borrowed and must outlive the model.
*/
#ifndef SLM_MODEL_H
#define SLM_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "../kernels/kbackend.h"

struct st_model;
struct st_writer;

enum arch_id { ARCH_OPT = 0, ARCH_LLAMA, ARCH_PHI, ARCH_COUNT };
enum norm_kind { NORM_LAYER = 0, NORM_RMS };
/* Where a block runs attention and MLP: one after the other (OPT, LLaMA), or both on the same
** normed input (Phi-2). OPT-350M's post-LN is BLOCK_SEQ_POSTNORM. */
enum block_kind { BLOCK_SEQ = 0, BLOCK_PARALLEL, BLOCK_SEQ_POSTNORM };

struct model_config {
    enum arch_id arch;
    char model_type[32];
    int vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, max_pos;
    int embed_dim;                  /* OPT word_embed_proj_dim (project_in/out when != hidden) */
    bool tie_word_embeddings;
    bool do_layer_norm_before;      /* OPT */
    float norm_eps;
    enum kact act;
    /* rotary (LLaMA, Phi) */
    float rope_theta;
    int rot_dim;                    /* rotated dims per head (Phi: partial_rotary_factor * head_dim) */
    char rope_type[16];             /* "default", "llama3", "linear" */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    bool attention_bias, mlp_bias;
    int bos_token_id, eos_token_id, pad_token_id;  /* -1 when absent */
};

/* Parse config.json text. Unknown model_type -> -SLM_EUNSUPPORTED naming the supported ones. */
int model_config_parse(struct model_config *out, const char *json, size_t len, struct slm_err *err);
int model_config_load(struct model_config *out, const char *dir, struct slm_err *err);
/* Parameter count of the dense model described by cfg (embeddings and head counted once if tied). */
int64_t model_config_param_count(const struct model_config *cfg);

/* Roles of the linears in a block. LLaMA: FC1 = gate_proj, UP = up_proj, FC2 = down_proj.
** OPT/Phi: FC1 = fc1, FC2 = fc2, no UP. Phi's O is self_attn.dense. */
enum lin_role { LIN_Q = 0, LIN_K, LIN_V, LIN_O, LIN_FC1, LIN_UP, LIN_FC2, LIN_COUNT };

struct linear {
    char name[96];          /* full HF tensor prefix, e.g. "model.layers.3.self_attn.q_proj" */
    int d_out, d_in;
    float *w;               /* backend [d_out x d_in], NULL if the role is absent */
    float *b;               /* backend [d_out] or NULL */
    /* optional low-rank adapter (SLiM): y += (x L) R, L [d_in x rank], R [rank x d_out] */
    int rank;
    float *lora_l, *lora_r;
    /* every value of w is bf16-representable: set when bf16 emulation rounds the loaded weight,
    ** cleared by whoever rewrites w unless it knows the new values are bf16 too. Lets the forward
    ** pass use TF32 tensor cores, exact for such inputs (kgemm_args.bf16_inputs). */
    bool w_bf16;
};

struct block {
    int index;
    bool loaded;
    struct linear lin[LIN_COUNT];
    float *norm1_w, *norm1_b;       /* attention-input norm (Phi: the only norm); NULL if folded */
    float *norm2_w, *norm2_b;       /* MLP-input norm; unused for BLOCK_PARALLEL */
    /* SliceGPT: residual stream widths (all = hidden for an unsliced model) */
    int d_in, d_mid, d_out;         /* block input, after attention (SEQ), block output */
    float *shortcut_attn;           /* [d_in x d_mid]: residual after attention is x Q1 + attn; NULL = identity.
                                    ** PARALLEL blocks: [d_in x d_out], the only shortcut (x Q + attn + mlp) */
    float *shortcut_mlp;            /* [d_mid x d_out]; NULL = identity; unused for PARALLEL blocks */
};

struct model {
    struct model_config cfg;
    const struct arch_ops *arch;
    struct kbackend *kb;            /* borrowed */
    struct st_model *st;            /* weights on disk (mapped); NULL for a model built in memory */
    char dir[4096];
    enum norm_kind norm;            /* LayerNorm, or RMSNorm after SliceGPT fusion */
    enum block_kind block_kind;
    float norm_divisor;             /* RMSNorm mean divisor: 0 = row width; SliceGPT: original hidden */
    /* embeddings: the host tables are authoritative; a backend with gather_rows gathers from its
    ** own copies (embed_dev / pos_embed_dev below), the others on the host, then upload */
    float *embed;                   /* host [vocab x embed_dim] */
    float *pos_embed;               /* host [(max_pos + 2) x hidden] (OPT), else NULL */
    float *embed_rot;               /* backend [embed_dim x d_in(block 0)] SliceGPT rotation, or NULL */
    float *project_in, *project_out;/* backend, OPT-350M style, or NULL */
    float *final_norm_w, *final_norm_b;   /* backend; NULL when absent or folded */
    float *head_w, *head_b;         /* backend [vocab x d_head], head_b may be NULL */
    int d_head;                     /* input width of the head (= last block's d_out) */
    float *inv_freq;                /* backend [rot_dim/2] */
    struct block *blocks;           /* cfg.n_layers */
    /* --- added after the first contract --- */
    int embed_width;                /* row width of embed/pos_embed as held (SliceGPT may slice it) */
    struct json_t *config_json;     /* config.json as read (owned); model_save writes it back */
    float *work;                    /* backend workspace for model_block_forward, work_n floats */
    size_t work_n;
    float *head_work;               /* backend workspace for the head in model_forward */
    size_t head_work_n;
    /* --- added for compressed checkpoints (core/checkpoint.c) --- */
    /* When set, model_block_load asks it for every linear's weight and adapter (l->w, l->rank,
    ** l->lora_l, l->lora_r, backend memory owned by the block) instead of reading NAME.weight. */
    int (*linear_loader)(struct model *m, int block, enum lin_role role, struct linear *l, void *payload,
                         struct slm_err *err);
    void *linear_loader_payload;
    /* --- activation-quantization emulation (model_set_input_quant) --- */
    char input_quant[8];            /* "" = off, "fp8", "int" */
    int input_quant_bits, input_quant_group;
    /* --- added for SliceGPT --- */
    /* Observer of the residual stream between attention and MLP of sequential blocks (the
    ** input of the second norm) in model_block_forward: i = block index, h backend memory
    ** [rows x d_mid]. NULL = none; non-zero return cancels. */
    int (*mid_cb)(int i, const float *h, int rows, int width, void *payload);
    void *mid_payload;
    /* --- bf16 emulation (model_set_bf16) --- */
    bool weights_bf16;              /* every weight is rounded to bf16 (resident ones and on load) */
    bool act_bf16;                  /* the forward pass rounds each op's output to bf16 */
    /* --- device-side embedding gather (backends with gather_rows) --- */
    float *embed_dev;               /* backend copy of embed, uploaded on first model_embed, or NULL */
    float *pos_embed_dev;           /* backend copy of pos_embed (OPT), or NULL */
    /* --- block prefetch (model_block_prefetch) --- */
    struct block_prefetch *prefetch;   /* the one in flight or done and not yet used; NULL none */
};

/* Emulate a model cast to bfloat16, as the SLiM reference runs (ALGORITHMS.md §1.1).
** weights: round every weight held now and every block loaded later to bf16 (sticky: the
** rounding cannot be undone). activations: round the output of every op of the forward pass
** (norms, linears, RoPE, attention, activations, residual adds) to bf16, like torch's bf16 ops
** with f32 accumulation inside; switch it off to evaluate the bf16 weights in f32. */
int model_set_bf16(struct model *m, bool weights, bool activations, struct slm_err *err);

/* Activation-quantization emulation (ALGORITHMS.md §3.6): when kind is set ("fp8" or "int"), the
** input of every block linear is replaced in place by its quantize-dequantize copy before use,
** as the reference's forward pre-hook does (so linears sharing an input see it re-quantized). */
int model_set_input_quant(struct model *m, const char *kind, int bits, int group_size, struct slm_err *err);

enum { MODEL_LAZY_BLOCKS = 1 };     /* model_open flag: leave blocks unloaded */

/* Open the model folder dir on backend kb. *out is the caller's (model_free). */
int model_open(struct model **out, const char *dir, struct kbackend *kb, int flags, struct slm_err *err);
void model_free(struct model *m);

/* Load / drop one block's weights in backend memory (no-op if already so). */
int model_block_load(struct model *m, int b, struct slm_err *err);
void model_block_unload(struct model *m, int b);

/* Start preparing block b's tensors as host f32 on a helper thread (the costly part of a load:
** paging the mapping in and converting), so that the caller can keep computing with the backend;
** the next model_block_load(m, b) waits for it and only uploads. Where the backend has a copy
** stream (upload_async) and room for a second block (a third of the room left must hold it, and
** reserve bytes, what the caller's work before that load still needs, must fit beside it), the
** block's backend buffers are taken here and the thread uploads into them as well, beside the
** caller's ops; model_block_load then just takes them over. The thread reads the immutable
** mapping and writes only its own buffers (and the backend's copy stream); everything else stays
** on the caller's thread, and model_block_load, model_prefetch_drop and model_free join it, so no
** state is shared unjoined.
** The result is bit-identical to a plain load (same conversion, same order of upload). One at a
** time: a new call drops the previous one. A no-op for a block already loaded, a model without
** weights file or with a linear_loader (compressed checkpoints read their own tensors). A
** failure to start the thread is not an error: the load just happens the plain way. */
int model_block_prefetch(struct model *m, int b, uint64_t reserve, struct slm_err *err);
/* Join and free a pending prefetch (an error path, or a change of plan). */
void model_prefetch_drop(struct model *m);
/* f32 bytes of block b's tensors in the weights file (what a load will take in backend memory,
** for budgeting before loading); 0 for a model without weights file. */
uint64_t model_block_nbytes(const struct model *m, int b);

/* Called with the input of every linear of a block during model_block_forward (statistics for
** compression). x is backend memory [rows x lin->d_in]; return non-zero to cancel. */
typedef int (*linear_input_cb)(int block, enum lin_role role, const struct linear *lin,
                               const float *x, int rows, void *payload);

/* x: backend [B*T x emb width] <- embeddings of ids (host int32 [B*T]), positions 0..T-1 per row. */
int model_embed(struct model *m, float *x, const int32_t *ids, int B, int T, struct slm_err *err);
/* Drops the backend copies of the embedding tables, so that the next model_embed uploads them
** again: call whenever m->embed / m->pos_embed or m->embed_width change. */
void model_embed_changed(struct model *m);
/* In place: x holds [B*T x d_in] packed rows on entry and [B*T x d_out] packed rows on return;
** its capacity must be B*T x model_max_width(m) floats. cb may be NULL. */
int model_block_forward(struct model *m, int b, float *x, int B, int T, linear_input_cb cb, void *payload,
                        struct slm_err *err);
/* Final norm (+ project_out) and head: x [B*T x d_head] -> logits backend [B*T x vocab]. x is clobbered. */
int model_head(struct model *m, float *logits, float *x, int B, int T, struct slm_err *err);

/* Observer of hidden states during model_forward: i = 0 embeddings, i = b+1 after block b,
** i = n_layers + 1 after the final norm. h is backend memory [B*T x width]. */
typedef int (*hidden_cb)(int i, const float *h, int rows, int width, void *payload);

/* Whole forward pass on host ids [B*T]. Outputs (host, may be NULL): logits [B*T x vocab],
** nll [B*(T-1)] per-token loss of the next token. Blocks must be resident or loadable. */
int model_forward(struct model *m, const int32_t *ids, int B, int T, float *logits, float *nll,
                  hidden_cb hcb, void *payload, struct slm_err *err);

/* The tail of model_forward: final norm, head and per-token loss of hidden states x (backend
** [B*T x model_max_width], clobbered) of the windows ids [B*T]. logits / nll as model_forward. */
int model_head_nll(struct model *m, float *x, const int32_t *ids, int B, int T, float *logits, float *nll,
                   struct slm_err *err);

/* Largest row width any stage of the forward pass needs (for sizing activation buffers). */
int model_max_width(const struct model *m);

/* Write the model (all blocks are loaded transiently if needed) as dir/model.safetensors in
** dtype dt (F32/BF16/F16) plus dir/config.json. Tensor names follow the HF layout. */
int model_save(struct model *m, const char *dir, int dt, struct slm_err *err);

#endif
