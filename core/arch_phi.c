/*
** core/arch_phi.c: Phi-2. One LayerNorm feeds attention and MLP in parallel, partial rotary
** (the first partial_rotary_factor * head_dim dims), gelu_new, biases everywhere, untied head
** with a bias.
*/
#include <stdio.h>
#include <string.h>

#include "arch.h"

static int phi_parse(struct model_config *c, const json_t *root, struct slm_err *err)
{
    int rc;
    c->act = KACT_GELU_TANH;
    c->attention_bias = c->mlp_bias = true;
    float prf = 0.5f;
    bool qk_ln = false;
    if ((rc = cfg_int(root, "intermediate_size", &c->ffn, err)) || (rc = cfg_float(root, "layer_norm_eps", &c->norm_eps, err)) ||
        (rc = cfg_act(root, "hidden_act", &c->act, err)) || (rc = cfg_float(root, "partial_rotary_factor", &prf, err)) ||
        (rc = cfg_bool(root, "qk_layernorm", &qk_ln, err)))
        return rc;
    if (qk_ln) return slm_err_set(err, SLM_EUNSUPPORTED, "config.json: Phi with qk_layernorm is not supported");
    if (!(prf > 0) || prf > 1) return slm_err_set(err, SLM_EFORMAT, "config.json: partial_rotary_factor must be in (0, 1]");
    c->rot_dim = (int)(prf * (float)c->head_dim);
    return cfg_rope(c, root, err); /* rope_parameters may carry partial_rotary_factor too */
}

static void phi_prefix(char *buf, size_t n, int b) { snprintf(buf, n, "model.layers.%d.", b); }

static enum block_kind phi_block_kind(const struct model_config *c) { (void)c; return BLOCK_PARALLEL; }

static const struct arch_names phi_names = {
    .lin = { [LIN_Q] = "self_attn.q_proj", [LIN_K] = "self_attn.k_proj", [LIN_V] = "self_attn.v_proj",
             [LIN_O] = "self_attn.dense", [LIN_FC1] = "mlp.fc1", [LIN_FC2] = "mlp.fc2" },
    .norm1 = "input_layernorm",
    .norm2 = NULL,
};

const struct arch_ops arch_phi = {
    .name = "phi",
    .id = ARCH_PHI,
    .parse_config = phi_parse,
    .block_prefix = phi_prefix,
    .names = &phi_names,
    .embed = "model.embed_tokens",
    .final_norm = "model.final_layernorm",
    .head = "lm_head",
    .norm = NORM_LAYER,
    .block_kind = phi_block_kind,
};
