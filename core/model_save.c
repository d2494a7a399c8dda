/*
** core/model_save.c: write a struct model back as a Hugging Face folder (config.json +
** model.safetensors) in F32, BF16 or F16. Blocks not resident are loaded one at a time, so a
** lazily opened model saves without holding every block at once.
*/
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "arch.h"
#include "model.h"
#include "safetensors.h"

/* Download n floats of backend memory src and add them as tensor name. */
static int add_dev(struct model *m, struct st_writer *w, const char *name, const float *src, int ndim, const int64_t *shape,
                   enum dtype dt, struct slm_err *err)
{
    if (!src) return 0;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "save %s: out of memory", name);
    int rc = kb_download(m->kb, h, src, n * sizeof(float), err);
    if (!rc) rc = st_writer_add_f32(w, name, dt, ndim, shape, h, err);
    free(h);
    return rc;
}

static int add_block(struct model *m, struct st_writer *w, int b, enum dtype dt, struct slm_err *err)
{
    const struct block *bl = &m->blocks[b];
    const struct arch_names *nm = m->arch->names;
    char pre[64], name[200];
    int rc;
    m->arch->block_prefix(pre, sizeof pre, b);
    for (int r = 0; r < LIN_COUNT; r++) {
        const struct linear *l = &bl->lin[r];
        if (!l->w) continue;
        int64_t ws[2] = { l->d_out, l->d_in }, bs[1] = { l->d_out };
        int64_t ls[2] = { l->d_in, l->rank }, rs[2] = { l->rank, l->d_out };
        snprintf(name, sizeof name, "%s.weight", l->name);
        if ((rc = add_dev(m, w, name, l->w, 2, ws, dt, err))) return rc;
        snprintf(name, sizeof name, "%s.bias", l->name);
        if ((rc = add_dev(m, w, name, l->b, 1, bs, dt, err))) return rc;
        if (l->rank) {
            snprintf(name, sizeof name, "%s.lora_left", l->name);
            if ((rc = add_dev(m, w, name, l->lora_l, 2, ls, dt, err))) return rc;
            snprintf(name, sizeof name, "%s.lora_right", l->name);
            if ((rc = add_dev(m, w, name, l->lora_r, 2, rs, dt, err))) return rc;
        }
    }
    int64_t n1[1] = { bl->d_in }, n2[1] = { m->block_kind == BLOCK_PARALLEL ? bl->d_in : bl->d_mid };
    const float *norms[4] = { bl->norm1_w, bl->norm1_b, bl->norm2_w, bl->norm2_b };
    const char *nn[4] = { nm->norm1, nm->norm1, nm->norm2, nm->norm2 }, *suf[4] = { "weight", "bias", "weight", "bias" };
    for (int i = 0; i < 4; i++) {
        if (!norms[i] || !nn[i]) continue;
        snprintf(name, sizeof name, "%s%s.%s", pre, nn[i], suf[i]);
        if ((rc = add_dev(m, w, name, norms[i], 1, i < 2 ? n1 : n2, dt, err))) return rc;
    }
    bool par = m->block_kind == BLOCK_PARALLEL;
    int64_t sa[2] = { bl->d_in, par ? bl->d_out : bl->d_mid }, sm[2] = { bl->d_mid, bl->d_out };
    snprintf(name, sizeof name, "%sattn_shortcut_Q", pre);
    if ((rc = add_dev(m, w, name, bl->shortcut_attn, 2, sa, dt, err))) return rc;
    snprintf(name, sizeof name, "%smlp_shortcut_Q", pre);
    return add_dev(m, w, name, bl->shortcut_mlp, 2, sm, dt, err);
}

static const char *torch_dtype_name(enum dtype dt)
{
    return dt == DT_BF16 ? "bfloat16" : dt == DT_F16 ? "float16" : "float32";
}

int model_save(struct model *m, const char *dir, int dt_int, struct slm_err *err)
{
    enum dtype dt = (enum dtype)dt_int;
    const struct model_config *c = &m->cfg;
    struct st_writer *w = NULL;
    char path[4200], name[200];
    int rc;
    if (dt != DT_F32 && dt != DT_BF16 && dt != DT_F16)
        return slm_err_set(err, SLM_EDTYPE, "save: dtype %s not supported (F32, BF16, F16)", dtype_traits(dt)->name);
    if (mkdir(dir, 0755) && errno != EEXIST) return slm_err_set(err, SLM_EIO, "%s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = st_writer_open(&w, path, err))) return rc;
    if ((rc = st_writer_set_metadata(w, "format", "pt", err))) goto fail;
    int64_t es[2] = { c->vocab, m->embed_width };
    snprintf(name, sizeof name, "%s.weight", m->arch->embed);
    if ((rc = st_writer_add_f32(w, name, dt, 2, es, m->embed, err))) goto fail;
    if (m->pos_embed) {
        int64_t ps[2] = { (int64_t)c->max_pos + 2, m->blocks[0].d_in };
        snprintf(name, sizeof name, "%s.weight", m->arch->pos_embed);
        if ((rc = st_writer_add_f32(w, name, dt, 2, ps, m->pos_embed, err))) goto fail;
    }
    if (m->project_in) {
        int64_t s[2] = { c->hidden, c->embed_dim }, so[2] = { c->embed_dim, c->hidden };
        snprintf(name, sizeof name, "%s.weight", m->arch->project_in);
        if ((rc = add_dev(m, w, name, m->project_in, 2, s, dt, err))) goto fail;
        snprintf(name, sizeof name, "%s.weight", m->arch->project_out);
        if ((rc = add_dev(m, w, name, m->project_out, 2, so, dt, err))) goto fail;
    }
    for (int b = 0; b < c->n_layers; b++) {
        bool transient = !m->blocks[b].loaded;
        if (transient && (rc = model_block_load(m, b, err))) goto fail;
        rc = add_block(m, w, b, dt, err);
        if (transient) model_block_unload(m, b);
        if (rc) goto fail;
    }
    int64_t hs[1] = { m->d_head }, hw[2] = { c->vocab, m->project_out ? c->embed_dim : m->d_head }, hb[1] = { c->vocab };
    if (m->arch->final_norm) {
        snprintf(name, sizeof name, "%s.weight", m->arch->final_norm);
        if ((rc = add_dev(m, w, name, m->final_norm_w, 1, hs, dt, err))) goto fail;
        snprintf(name, sizeof name, "%s.bias", m->arch->final_norm);
        if ((rc = add_dev(m, w, name, m->final_norm_b, 1, hs, dt, err))) goto fail;
    }
    if (!c->tie_word_embeddings) {
        snprintf(name, sizeof name, "%s.weight", m->arch->head);
        if ((rc = add_dev(m, w, name, m->head_w, 2, hw, dt, err))) goto fail;
    }
    snprintf(name, sizeof name, "%s.bias", m->arch->head);
    if ((rc = add_dev(m, w, name, m->head_b, 1, hb, dt, err))) goto fail;
    rc = st_writer_finish(w, err);
    w = NULL;
    if (rc) return rc;

    json_t *cfg = json_deep_copy(m->config_json);
    if (!cfg) return slm_err_set(err, SLM_ENOMEM, "save: config copy");
    json_object_set_new(cfg, "torch_dtype", json_string(torch_dtype_name(dt)));
    if (json_object_get(cfg, "dtype")) json_object_set_new(cfg, "dtype", json_string(torch_dtype_name(dt)));
    snprintf(path, sizeof path, "%s/config.json", dir);
    rc = json_dump_file(cfg, path, JSON_INDENT(2) | JSON_SORT_KEYS) ? slm_err_set(err, SLM_EIO, "%s: cannot write", path) : 0;
    json_decref(cfg);
    return rc;
fail:
    st_writer_abort(w);
    return rc;
}
