/*
** core/arch_llama.c: the LLaMA family (LLaMA-2/3, Mistral, SmolLM, Qwen2-style): RMSNorm, RoPE
** in HF's rotate-half layout (with llama3/linear rope scaling), GQA, SwiGLU, untied head unless
** tie_word_embeddings. Qwen2 puts biases on q/k/v: biases load whenever the file has them.
*/
#include <stdio.h>
#include <string.h>

#include "arch.h"

static int llama_parse(struct model_config *c, const json_t *root, struct slm_err *err)
{
    int rc;
    c->act = KACT_SILU;
    c->norm_eps = 1e-6f;
    if ((rc = cfg_int(root, "intermediate_size", &c->ffn, err)) || (rc = cfg_float(root, "rms_norm_eps", &c->norm_eps, err)) ||
        (rc = cfg_act(root, "hidden_act", &c->act, err)) || (rc = cfg_bool(root, "attention_bias", &c->attention_bias, err)) ||
        (rc = cfg_bool(root, "mlp_bias", &c->mlp_bias, err)))
        return rc;
    c->rot_dim = c->head_dim;
    if ((rc = cfg_rope(c, root, err))) return rc;
    c->rot_dim = c->head_dim; /* LLaMA rotates every dim of a head */
    return 0;
}

static void llama_prefix(char *buf, size_t n, int b) { snprintf(buf, n, "model.layers.%d.", b); }

static enum block_kind llama_block_kind(const struct model_config *c) { (void)c; return BLOCK_SEQ; }

static const struct arch_names llama_names = {
    .lin = { [LIN_Q] = "self_attn.q_proj", [LIN_K] = "self_attn.k_proj", [LIN_V] = "self_attn.v_proj",
             [LIN_O] = "self_attn.o_proj", [LIN_FC1] = "mlp.gate_proj", [LIN_UP] = "mlp.up_proj",
             [LIN_FC2] = "mlp.down_proj" },
    .norm1 = "input_layernorm",
    .norm2 = "post_attention_layernorm",
};

const struct arch_ops arch_llama = {
    .name = "llama",
    .id = ARCH_LLAMA,
    .parse_config = llama_parse,
    .block_prefix = llama_prefix,
    .names = &llama_names,
    .embed = "model.embed_tokens",
    .final_norm = "model.norm",
    .head = "lm_head",
    .norm = NORM_RMS,
    .block_kind = llama_block_kind,
};
