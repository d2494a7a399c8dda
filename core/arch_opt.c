/*
** core/arch_opt.c: OPT (125M ... 66B). Learned positions offset by 2, tied head, ReLU MLP,
** pre-LN except OPT-350M (do_layer_norm_before false: post-LN and no final LayerNorm), and
** project_in/out when word_embed_proj_dim differs from hidden_size.
*/
#include <stdio.h>
#include <string.h>

#include "arch.h"

static int opt_parse(struct model_config *c, const json_t *root, struct slm_err *err)
{
    int rc;
    c->act = KACT_RELU;
    c->do_layer_norm_before = true;
    c->tie_word_embeddings = true;
    c->rot_dim = 0;
    c->attention_bias = c->mlp_bias = true;
    bool enable_bias = true;
    if ((rc = cfg_int(root, "ffn_dim", &c->ffn, err)) || (rc = cfg_int(root, "word_embed_proj_dim", &c->embed_dim, err)) ||
        (rc = cfg_bool(root, "do_layer_norm_before", &c->do_layer_norm_before, err)) ||
        (rc = cfg_act(root, "activation_function", &c->act, err)) ||
        (rc = cfg_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, err)) ||
        (rc = cfg_bool(root, "enable_bias", &enable_bias, err)))
        return rc;
    bool remove_final = false, affine = true;
    if ((rc = cfg_bool(root, "_remove_final_layer_norm", &remove_final, err)) ||
        (rc = cfg_bool(root, "layer_norm_elementwise_affine", &affine, err)))
        return rc;
    if (remove_final && c->do_layer_norm_before)
        return slm_err_set(err, SLM_EUNSUPPORTED, "config.json: OPT with _remove_final_layer_norm is not supported");
    if (c->n_kv_heads != c->n_heads)
        return slm_err_set(err, SLM_EFORMAT, "config.json: OPT has no grouped KV heads");
    if (c->hidden % c->n_heads)
        return slm_err_set(err, SLM_EFORMAT, "config.json: hidden_size %d not divisible by %d heads", c->hidden, c->n_heads);
    c->attention_bias = c->mlp_bias = enable_bias;
    c->norm_eps = 1e-5f;
    return 0;
}

static void opt_prefix(char *buf, size_t n, int b) { snprintf(buf, n, "model.decoder.layers.%d.", b); }

static enum block_kind opt_block_kind(const struct model_config *c)
{
    return c->do_layer_norm_before ? BLOCK_SEQ : BLOCK_SEQ_POSTNORM;
}

static const struct arch_names opt_names = {
    .lin = { [LIN_Q] = "self_attn.q_proj", [LIN_K] = "self_attn.k_proj", [LIN_V] = "self_attn.v_proj",
             [LIN_O] = "self_attn.out_proj", [LIN_FC1] = "fc1", [LIN_FC2] = "fc2" },
    .norm1 = "self_attn_layer_norm",
    .norm2 = "final_layer_norm",
};

const struct arch_ops arch_opt = {
    .name = "opt",
    .id = ARCH_OPT,
    .parse_config = opt_parse,
    .block_prefix = opt_prefix,
    .names = &opt_names,
    .embed = "model.decoder.embed_tokens",
    .pos_embed = "model.decoder.embed_positions",
    .final_norm = "model.decoder.final_layer_norm",
    .head = "lm_head",
    .project_in = "model.decoder.project_in",
    .project_out = "model.decoder.project_out",
    .norm = NORM_LAYER,
    .block_kind = opt_block_kind,
};
