/*
** core/config.c: config.json -> struct model_config. Common keys are read here, the
** architecture's own keys by its adapter. Every value is type- and range-checked, because a
** config is user input: a negative head count must be an error, never a crash later.
*/
#include "arch.h"
#include "fileio.h"
#include "model.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_DIM (1 << 20)        /* any width or count above this is a corrupt config */

int cfg_int(const json_t *root, const char *key, int *out, struct slm_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return slm_err_set(err, SLM_EFORMAT, "config.json: %s must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < INT_MIN || x > INT_MAX) return slm_err_set(err, SLM_EFORMAT, "config.json: %s out of range", key);
    *out = (int)x;
    return 0;
}

int cfg_float(const json_t *root, const char *key, float *out, struct slm_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return slm_err_set(err, SLM_EFORMAT, "config.json: %s must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || fabs(x) > FLT_MAX)   /* beyond float range the conversion is undefined */
        return slm_err_set(err, SLM_EFORMAT, "config.json: %s is not a finite float", key);
    *out = (float)x;
    return 0;
}

int cfg_bool(const json_t *root, const char *key, bool *out, struct slm_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return slm_err_set(err, SLM_EFORMAT, "config.json: %s must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

int cfg_act(const json_t *root, const char *key, enum kact *out, struct slm_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    const char *s = json_string_value(v);
    if (!s) return slm_err_set(err, SLM_EFORMAT, "config.json: %s must be a string", key);
    if (!strcmp(s, "relu")) *out = KACT_RELU;
    else if (!strcmp(s, "gelu")) *out = KACT_GELU_ERF;
    else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast"))
        *out = KACT_GELU_TANH;
    else if (!strcmp(s, "silu") || !strcmp(s, "swish")) *out = KACT_SILU;
    else
        return slm_err_set(err, SLM_EUNSUPPORTED, "config.json: %s '%s' is not supported (relu, gelu, gelu_new, silu)",
                           key, s);
    return 0;
}

int cfg_rope(struct model_config *c, const json_t *root, struct slm_err *err)
{
    int rc;
    /* transformers 4: rope_theta + rope_scaling at top level; 5: rope_parameters {...} */
    if ((rc = cfg_float(root, "rope_theta", &c->rope_theta, err))) return rc;
    const json_t *sc = json_object_get(root, "rope_parameters");
    if (!sc || json_is_null(sc)) sc = json_object_get(root, "rope_scaling");
    if (!sc || json_is_null(sc)) return 0;
    if (!json_is_object(sc)) return slm_err_set(err, SLM_EFORMAT, "config.json: rope_scaling must be an object");
    if ((rc = cfg_float(sc, "rope_theta", &c->rope_theta, err))) return rc;
    const char *type = json_string_value(json_object_get(sc, "rope_type"));
    if (!type) type = json_string_value(json_object_get(sc, "type"));
    if (!type) type = "default";
    if (strcmp(type, "default") && strcmp(type, "llama3") && strcmp(type, "linear"))
        return slm_err_set(err, SLM_EUNSUPPORTED, "config.json: rope_type '%s' is not supported (default, linear, llama3)", type);
    snprintf(c->rope_type, sizeof c->rope_type, "%s", type);
    if ((rc = cfg_float(sc, "factor", &c->rope_factor, err)) || (rc = cfg_float(sc, "low_freq_factor", &c->rope_low_freq_factor, err)) ||
        (rc = cfg_float(sc, "high_freq_factor", &c->rope_high_freq_factor, err)) ||
        (rc = cfg_int(sc, "original_max_position_embeddings", &c->rope_original_max_pos, err)))
        return rc;
    float prf = 0;
    if ((rc = cfg_float(sc, "partial_rotary_factor", &prf, err))) return rc;
    if (prf != 0 && !(prf > 0 && prf <= 1))
        return slm_err_set(err, SLM_EFORMAT, "config.json: partial_rotary_factor must be in (0, 1]");
    if (prf > 0) c->rot_dim = (int)(prf * (float)c->head_dim);
    if (!strcmp(type, "llama3") &&
        (c->rope_factor <= 0 || c->rope_low_freq_factor <= 0 || c->rope_high_freq_factor <= c->rope_low_freq_factor ||
         c->rope_original_max_pos <= 0))
        return slm_err_set(err, SLM_EFORMAT, "config.json: llama3 rope_scaling needs factor, low/high_freq_factor and original_max_position_embeddings");
    if (!strcmp(type, "linear") && c->rope_factor <= 0)
        return slm_err_set(err, SLM_EFORMAT, "config.json: linear rope_scaling needs factor > 0");
    return 0;
}

static int check_dim(const char *name, int v, int min, struct slm_err *err)
{
    if (v < min || v > CFG_MAX_DIM)
        return slm_err_set(err, SLM_EFORMAT, "config.json: %s = %d is out of range [%d, %d]", name, v, min, CFG_MAX_DIM);
    return 0;
}

int model_config_parse(struct model_config *c, const char *text, size_t len, struct slm_err *err)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    if (!root)
        return slm_err_set(err, SLM_EFORMAT, "config.json: %s at line %d column %d", je.text, je.line, je.column);
    if (!json_is_object(root)) { rc = slm_err_set(err, SLM_EFORMAT, "config.json: not a JSON object"); goto done; }

    memset(c, 0, sizeof *c);
    c->bos_token_id = c->eos_token_id = c->pad_token_id = -1;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    snprintf(c->rope_type, sizeof c->rope_type, "default");
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!mt) { rc = slm_err_set(err, SLM_EFORMAT, "config.json: model_type missing or not a string"); goto done; }
    const struct arch_ops *a = arch_for_model_type(mt);
    if (!a) {
        rc = slm_err_set(err, SLM_EUNSUPPORTED, "model_type '%.40s' is not supported (supported: %s)", mt, arch_supported_list());
        goto done;
    }
    c->arch = a->id;
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    if ((rc = cfg_int(root, "vocab_size", &c->vocab, err)) || (rc = cfg_int(root, "hidden_size", &c->hidden, err)) ||
        (rc = cfg_int(root, "num_hidden_layers", &c->n_layers, err)) ||
        (rc = cfg_int(root, "num_attention_heads", &c->n_heads, err)) ||
        (rc = cfg_int(root, "max_position_embeddings", &c->max_pos, err)) ||
        (rc = cfg_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, err)))
        goto done;
    c->n_kv_heads = c->n_heads;
    if ((rc = cfg_int(root, "num_key_value_heads", &c->n_kv_heads, err))) goto done;
    if ((rc = check_dim("vocab_size", c->vocab, 1, err)) || (rc = check_dim("hidden_size", c->hidden, 1, err)) ||
        (rc = check_dim("num_hidden_layers", c->n_layers, 1, err)) ||
        (c->n_layers > 65536 && (rc = slm_err_set(err, SLM_EFORMAT, "config.json: num_hidden_layers %d is over 65536", c->n_layers))) ||
        (rc = check_dim("num_attention_heads", c->n_heads, 1, err)) ||
        (rc = check_dim("num_key_value_heads", c->n_kv_heads, 1, err)) ||
        (rc = check_dim("max_position_embeddings", c->max_pos, 1, err)))
        goto done;
    c->head_dim = c->hidden / c->n_heads;
    if ((rc = cfg_int(root, "head_dim", &c->head_dim, err))) goto done;
    if ((rc = check_dim("head_dim", c->head_dim, 1, err))) goto done;
    if ((int64_t)c->n_heads * c->head_dim > CFG_MAX_DIM) {
        rc = slm_err_set(err, SLM_EFORMAT, "config.json: %d heads x head_dim %d is over %d", c->n_heads, c->head_dim, CFG_MAX_DIM);
        goto done;
    }
    if (c->n_heads % c->n_kv_heads) {
        rc = slm_err_set(err, SLM_EFORMAT, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                         c->n_heads, c->n_kv_heads);
        goto done;
    }
    c->rot_dim = c->head_dim;
    c->embed_dim = c->hidden;
    if ((rc = cfg_int(root, "bos_token_id", &c->bos_token_id, err)) || (rc = cfg_int(root, "eos_token_id", &c->eos_token_id, err)) ||
        (rc = cfg_int(root, "pad_token_id", &c->pad_token_id, err)))
        goto done;
    if ((rc = a->parse_config(c, root, err))) goto done;
    if ((rc = check_dim("intermediate size", c->ffn, 1, err)) || (rc = check_dim("embedding width", c->embed_dim, 1, err)))
        goto done;
    if (c->rot_dim < 0 || c->rot_dim > c->head_dim || (c->rot_dim & 1)) {
        rc = slm_err_set(err, SLM_EFORMAT, "config.json: rotary dims %d invalid for head_dim %d", c->rot_dim, c->head_dim);
        goto done;
    }
    if (!(c->norm_eps > 0) || c->norm_eps > 1) {
        rc = slm_err_set(err, SLM_EFORMAT, "config.json: norm epsilon %g out of range (0, 1]", (double)c->norm_eps);
        goto done;
    }
    if (!(c->rope_theta > 0)) { rc = slm_err_set(err, SLM_EFORMAT, "config.json: rope_theta must be > 0"); goto done; }
done:
    json_decref(root);
    return rc;
}

int model_config_load(struct model_config *out, const char *dir, struct slm_err *err)
{
    char path[4200], *buf;
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = file_read_all(path, 16u << 20, &buf, &len, err);
    if (rc) return rc;
    rc = model_config_parse(out, buf, len, err);
    free(buf);
    return rc;
}

int64_t model_config_param_count(const struct model_config *c)
{
    int64_t d = c->hidden, hd = c->head_dim, q = (int64_t)c->n_heads * hd, kv = (int64_t)c->n_kv_heads * hd;
    int64_t per = 0, glob = 0;
    switch (c->arch) {
    case ARCH_OPT:
        per = (d * q + q) + 2 * (d * kv + kv) + (q * d + d) + (d * c->ffn + c->ffn) + (c->ffn * d + d) + 4 * d;
        glob = (int64_t)c->vocab * c->embed_dim + (int64_t)(c->max_pos + 2) * d;
        if (c->embed_dim != d) glob += 2 * (int64_t)d * c->embed_dim;
        if (c->do_layer_norm_before) glob += 2 * d;
        if (!c->tie_word_embeddings) glob += (int64_t)c->vocab * c->embed_dim;
        break;
    case ARCH_LLAMA:
        per = d * q + 2 * d * kv + q * d + 3 * d * c->ffn + 2 * d;
        if (c->attention_bias) per += q + 2 * kv;
        glob = (int64_t)c->vocab * d * (c->tie_word_embeddings ? 1 : 2) + d;
        break;
    case ARCH_PHI:
        per = (d * q + q) + 2 * (d * kv + kv) + (q * d + d) + (d * c->ffn + c->ffn) + (c->ffn * d + d) + 2 * d;
        glob = (int64_t)c->vocab * d * (c->tie_word_embeddings ? 1 : 2) + c->vocab + 2 * d;
        break;
    default:
        return 0;
    }
    return per * c->n_layers + glob;
}
