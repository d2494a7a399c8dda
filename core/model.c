/*
** core/model.c: loading, the generic block forward pass, the head, and saving.
**
** DESIGN: blocks are wired from struct block alone (linears by role, norms, residual widths,
** optional SliceGPT shortcut matrices), so OPT, LLaMA, Phi and their sliced forms share one
** code path. Every op goes through the backend (kernels/kbackend.h). The embedding tables are
** held on the host; a backend that can gather rows gets its own copy on first use, so a batch's
** embeddings are not assembled and uploaded from pageable host memory (25.8 ms of a 121 ms
** LLaMA-7B-shaped forward on an H100).
** Ownership: the model owns all its buffers; the backend is borrowed.
*/
#include "model.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "dtype.h"
#include "quant.h"
#include "safetensors.h"
#include "slicegpt.h"

#define HEAD_CHUNK_ROWS 256    /* logits are produced this many rows at a time (bounded memory) */

/* ---- small helpers ---- */

static int imax(int a, int b) { return a > b ? a : b; }

/* bf16 emulation of an op's output (model_set_bf16); a no-op otherwise */
static int act_round(struct model *m, float *y, size_t n, struct slm_err *err)
{
    return m->act_bf16 ? kb_round_bf16(m->kb, y, n, err) : 0;
}

/* ---- prefetch: one block's tensors as host f32, prepared on a helper thread, and uploaded from
** there too when the backend has a copy stream (upload_async) ---- */

struct block_prefetch {
    int block;
    pthread_t thread;
    bool joined;
    const struct st_model *st;        /* read-only for the thread */
    char prefix[64];
    size_t n;
    const struct st_tensor **t;       /* [n] tensors of the block (float dtypes) */
    float **host;                     /* [n] their f32 copies, NULL where conversion failed or sent */
    struct kbackend *kb;              /* for upload_async / copy_sync only; NULL: no uploads */
    float **dev;                      /* [n] backend buffers taken on the caller's thread, or NULL */
    bool *sent;                       /* [n] dev[i] holds tensor i (written by the thread) */
    bool unsettled;                   /* copy_sync failed: copies may still write into dev */
};

/* The thread: touches only st (immutable mapping), its own arrays and, through upload_async and
** copy_sync, the backend's copy stream. A tensor whose upload fails keeps its host copy, so the
** load falls back to the plain upload. */
static void *prefetch_main(void *arg)
{
    struct block_prefetch *p = arg;
    bool any = false;
    for (size_t i = 0; i < p->n; i++) {
        size_t k = (size_t)p->t[i]->numel;
        float *h = malloc((k ? k : 1) * sizeof *h);
        struct slm_err e = SLM_ERR_INIT;
        if (h && st_tensor_to_f32(h, p->t[i], &e)) {   /* the plain load will report it */
            free(h);
            h = NULL;
        }
        p->host[i] = h;
        if (h && p->dev[i]) any |= p->sent[i] = !p->kb->iface->upload_async(p->kb, p->dev[i], h, k * sizeof *h, &e);
    }
    if (any) {
        struct slm_err e = SLM_ERR_INIT;
        bool landed = !p->kb->iface->copy_sync(p->kb, &e);
        p->unsettled = !landed;
        for (size_t i = 0; i < p->n; i++)
            if (p->sent[i] && landed) {
                free(p->host[i]);
                p->host[i] = NULL;
            } else {
                p->sent[i] = false;
            }
    }
    return NULL;
}

static bool is_float(enum dtype d) { return d == DT_F32 || d == DT_F16 || d == DT_BF16 || d == DT_F64; }

uint64_t model_block_nbytes(const struct model *m, int b)
{
    if (!m->st) return 0;
    char pre[64];
    uint64_t n = 0;
    m->arch->block_prefix(pre, sizeof pre, b);
    size_t pl = strlen(pre);
    for (size_t i = 0; i < st_model_count(m->st); i++) {
        const struct st_tensor *t = st_model_at(m->st, i);
        if (!strncmp(t->name, pre, pl)) n += (uint64_t)t->numel * sizeof(float);
    }
    return n;
}

/* Free p (not running): its host copies and, with release_dev, the backend buffers not handed over. */
static void prefetch_free(struct model *m, struct block_prefetch *p, bool release_dev)
{
    for (size_t i = 0; p->host && i < p->n; i++) free(p->host[i]);
    for (size_t i = 0; p->dev && release_dev && i < p->n; i++) kb_release(m->kb, p->dev[i]);
    free(p->host);
    free(p->dev);
    free(p->sent);
    free(p->t);
    free(p);
}

void model_prefetch_drop(struct model *m)
{
    struct block_prefetch *p = m->prefetch;
    if (!p) return;
    if (!p->joined) pthread_join(p->thread, NULL);
    /* the buffers not handed over go back; after a failed copy_sync only once a second one
    ** succeeds: reusing buffers that copies may still write into would be worse than leaking them
    ** (a device that fails to synchronize is broken anyway) */
    struct slm_err e = SLM_ERR_INIT;
    prefetch_free(m, p, !p->unsettled || !p->kb->iface->copy_sync(p->kb, &e));
    m->prefetch = NULL;
}

/* Whether block b may take its backend memory ahead (two blocks resident for a while): the room
** left (the budget, or the device's free plus cached memory) must hold the block beside reserve,
** what the caller's work on the current block still needs, and at least three times over. */
static bool prefetch_room(struct model *m, int b, uint64_t reserve)
{
    const struct kbackend_i *f = m->kb->iface;
    if (!f->upload_async || !f->copy_sync || !f->copy_after_queued || !f->mem_stats) return false;
    int64_t room = kb_room(m->kb);
    uint64_t need = model_block_nbytes(m, b);
    if (room < 0) return true;   /* nothing bounds the backend's memory */
    return room > 0 && (uint64_t)room / 3 >= need && (uint64_t)room - need >= reserve;
}

/* Backend buffers for the prefetch's tensors, taken here on the caller's thread (the allocator is
** not shared with the thread), then the copy stream ordered after the ops queued so far. All or
** none: without them the thread only converts. */
static void prefetch_take_buffers(struct model *m, struct block_prefetch *p, uint64_t reserve)
{
    struct slm_err e = SLM_ERR_INIT;
    bool ok = prefetch_room(m, p->block, reserve);
    for (size_t i = 0; ok && i < p->n; i++) {
        size_t k = (size_t)p->t[i]->numel;
        ok = !kb_alloc(m->kb, (void **)&p->dev[i], (k ? k : 1) * sizeof(float), &e);
    }
    if (ok && !m->kb->iface->copy_after_queued(m->kb, &e)) {
        p->kb = m->kb;
        return;
    }
    for (size_t i = 0; i < p->n; i++) {
        kb_release(m->kb, p->dev[i]);
        p->dev[i] = NULL;
    }
}

int model_block_prefetch(struct model *m, int b, uint64_t reserve, struct slm_err *err)
{
    (void)err;
    model_prefetch_drop(m);
    if (b < 0 || b >= m->cfg.n_layers || m->blocks[b].loaded || !m->st || m->linear_loader) return 0;
    struct block_prefetch *p = calloc(1, sizeof *p);
    if (!p) return 0;
    p->block = b;
    p->st = m->st;
    m->arch->block_prefix(p->prefix, sizeof p->prefix, b);
    size_t pl = strlen(p->prefix), cap = 0;
    for (size_t i = 0; i < st_model_count(m->st); i++) {
        const struct st_tensor *t = st_model_at(m->st, i);
        if (strncmp(t->name, p->prefix, pl) || !is_float(t->dtype)) continue;
        if (p->n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            const struct st_tensor **nt = realloc(p->t, nc * sizeof *nt);
            if (!nt) goto fail;
            p->t = nt;
            cap = nc;
        }
        p->t[p->n++] = t;
    }
    size_t n1 = p->n ? p->n : 1;
    if (!(p->host = calloc(n1, sizeof *p->host)) || !(p->dev = calloc(n1, sizeof *p->dev)) ||
        !(p->sent = calloc(n1, sizeof *p->sent)))
        goto fail;
    prefetch_take_buffers(m, p, reserve);
    if (pthread_create(&p->thread, NULL, prefetch_main, p)) goto fail;
    m->prefetch = p;
    return 0;
fail:   /* not an error: the block loads the plain way */
    prefetch_free(m, p, true);
    return 0;
}

/* The prefetch's backend buffer for t, handed over (the caller owns it): *filled when the thread
** uploaded t into it; otherwise the caller uploads the host copy there, so a failed upload costs
** no second buffer. NULL when there is none, or when copies may still be landing (a failed
** copy_sync: the buffers stay out of use). */
static float *prefetched_dev(struct model *m, const struct st_tensor *t, bool *filled)
{
    struct block_prefetch *p = m->prefetch;
    *filled = false;
    if (!p || !p->joined || p->unsettled) return NULL;
    for (size_t i = 0; i < p->n; i++)
        if (p->t[i] == t && p->dev[i]) {
            float *d = p->dev[i];
            *filled = p->sent[i];
            p->dev[i] = NULL;
            p->sent[i] = false;
            return d;
        }
    return NULL;
}

/* Host f32 copy of t prepared by the prefetch of the block being loaded, handed over (the caller
** frees it); NULL when there is none. */
static float *prefetched(struct model *m, const struct st_tensor *t)
{
    struct block_prefetch *p = m->prefetch;
    if (!p || !p->joined) return NULL;
    for (size_t i = 0; i < p->n; i++)
        if (p->t[i] == t) {
            float *h = p->host[i];
            p->host[i] = NULL;
            return h;
        }
    return NULL;
}

/* Load tensor name (any float dtype) into new backend memory, checking its shape.
** Missing and !required: *out = NULL, returns 0. */
static int load_tensor(struct model *m, float **out, const char *name, int ndim, const int64_t *shape, bool required,
                       struct slm_err *err)
{
    *out = NULL;
    const struct st_tensor *t = st_model_find(m->st, name);
    if (!t) return required ? slm_err_set(err, SLM_ENOTFOUND, "%s: tensor %s missing", m->dir, name) : 0;
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[64] = "", got[64] = "";
        for (int i = 0; i < ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)shape[i]);
        for (int i = 0; i < t->ndim && i < ST_MAX_DIMS; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
        return slm_err_set(err, SLM_ESHAPE, "tensor %s has shape [%s], expected [%s]", name, got, want);
    }
    size_t n = (size_t)t->numel;
    bool filled;
    float *host, *dev = prefetched_dev(m, t, &filled);
    int rc = 0;
    if (filled) {
        *out = dev;
        return 0;
    }
    host = prefetched(m, t);
    if (!host) {
        if (!(host = malloc((n ? n : 1) * sizeof(float)))) {
            rc = slm_err_set(err, SLM_ENOMEM, "tensor %s: %zu floats", name, n);
            goto done;
        }
        if ((rc = st_tensor_to_f32(host, t, err))) goto done;
    }
    if (!dev && (rc = kb_alloc(m->kb, (void **)&dev, n * sizeof(float), err))) goto done;
    if ((rc = kb_upload(m->kb, dev, host, n * sizeof(float), err))) goto done;
    *out = dev;
    dev = NULL;
done:
    kb_release(m->kb, dev);
    free(host);
    return rc;
}

/* Host copy of a float tensor as f32 (embeddings). */
static int load_host(struct model *m, float **out, const char *name, int64_t rows, int64_t cols, struct slm_err *err)
{
    const struct st_tensor *t = st_model_find(m->st, name);
    *out = NULL;
    if (!t) return slm_err_set(err, SLM_ENOTFOUND, "%s: tensor %s missing", m->dir, name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return slm_err_set(err, SLM_ESHAPE, "tensor %s has the wrong shape (expected [%lld,%lld])", name, (long long)rows,
                           (long long)cols);
    float *h = malloc((size_t)rows * cols * sizeof(float));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "tensor %s: %lld x %lld floats", name, (long long)rows, (long long)cols);
    int rc = st_tensor_to_f32(h, t, err);
    if (rc) { free(h); return rc; }
    *out = h;
    return 0;
}

static void lin_shape(const struct model *m, const struct block *bl, enum lin_role r, int *d_out, int *d_in)
{
    const struct model_config *c = &m->cfg;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    bool par = m->block_kind == BLOCK_PARALLEL;
    int attn_out = par ? bl->d_out : bl->d_mid, mlp_in = par ? bl->d_in : bl->d_mid;
    switch (r) {
    case LIN_Q: *d_out = q; *d_in = bl->d_in; break;
    case LIN_K:
    case LIN_V: *d_out = kv; *d_in = bl->d_in; break;
    case LIN_O: *d_out = attn_out; *d_in = q; break;
    case LIN_FC1:
    case LIN_UP: *d_out = c->ffn; *d_in = mlp_in; break;
    case LIN_FC2: *d_out = bl->d_out; *d_in = c->ffn; break;
    default: *d_out = *d_in = 0;
    }
}

/* ---- blocks ---- */

static int block_round_bf16(struct model *m, struct block *bl, struct slm_err *err)
{
    int rc = 0;
    for (int r = 0; r < LIN_COUNT && !rc; r++) {
        struct linear *l = &bl->lin[r];
        if (l->w) rc = kb_round_bf16(m->kb, l->w, (size_t)l->d_out * l->d_in, err);
        l->w_bf16 = l->w && !rc;
        if (!rc && l->b) rc = kb_round_bf16(m->kb, l->b, (size_t)l->d_out, err);
        if (!rc && l->rank) rc = kb_round_bf16(m->kb, l->lora_l, (size_t)l->d_in * l->rank, err);
        if (!rc && l->rank) rc = kb_round_bf16(m->kb, l->lora_r, (size_t)l->rank * l->d_out, err);
    }
    int n2 = m->block_kind == BLOCK_PARALLEL ? bl->d_in : bl->d_mid;
    bool par = m->block_kind == BLOCK_PARALLEL;
    struct { float *p; size_t n; } v[] = {
        { bl->norm1_w, (size_t)bl->d_in }, { bl->norm1_b, (size_t)bl->d_in }, { bl->norm2_w, (size_t)n2 },
        { bl->norm2_b, (size_t)n2 }, { bl->shortcut_attn, (size_t)bl->d_in * (par ? bl->d_out : bl->d_mid) },
        { bl->shortcut_mlp, (size_t)bl->d_mid * bl->d_out },
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0] && !rc; i++)
        if (v[i].p) rc = kb_round_bf16(m->kb, v[i].p, v[i].n, err);
    return rc;
}

/* The plain load of block b, from the prefetched host copies where there are some. */
static int block_load(struct model *m, int b, struct slm_err *err)
{
    struct block *bl = &m->blocks[b];
    const struct arch_names *nm = m->arch->names;
    char pre[64], name[160];
    int rc = 0;
    m->arch->block_prefix(pre, sizeof pre, b);
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &bl->lin[r];
        if (!nm->lin[r]) continue;
        lin_shape(m, bl, (enum lin_role)r, &l->d_out, &l->d_in);
        snprintf(l->name, sizeof l->name, "%s%s", pre, nm->lin[r]);
        int64_t ws[2] = { l->d_out, l->d_in }, bs[1] = { l->d_out };
        snprintf(name, sizeof name, "%s.weight", l->name);
        if (m->linear_loader) rc = m->linear_loader(m, b, (enum lin_role)r, l, m->linear_loader_payload, err);
        else rc = load_tensor(m, &l->w, name, 2, ws, true, err);
        if (rc) goto fail;
        snprintf(name, sizeof name, "%s.bias", l->name);
        if ((rc = load_tensor(m, &l->b, name, 1, bs, false, err))) goto fail;
        if (m->linear_loader) continue;   /* adapters come from the loader too */
        /* adapters saved by model_save: lora_left [d_in x r], lora_right [r x d_out] */
        snprintf(name, sizeof name, "%s.lora_left", l->name);
        const struct st_tensor *tl = st_model_find(m->st, name);
        if (tl) {
            if (tl->ndim != 2 || tl->shape[0] != l->d_in || tl->shape[1] < 1 || tl->shape[1] > l->d_in) {
                rc = slm_err_set(err, SLM_ESHAPE, "tensor %s has the wrong shape", name);
                goto fail;
            }
            l->rank = (int)tl->shape[1];
            int64_t ls[2] = { l->d_in, l->rank }, rs[2] = { l->rank, l->d_out };
            if ((rc = load_tensor(m, &l->lora_l, name, 2, ls, true, err))) goto fail;
            snprintf(name, sizeof name, "%s.lora_right", l->name);
            if ((rc = load_tensor(m, &l->lora_r, name, 2, rs, true, err))) goto fail;
        }
    }
    int64_t n1[1] = { bl->d_in }, n2[1] = { m->block_kind == BLOCK_PARALLEL ? bl->d_in : bl->d_mid };
    if (nm->norm1) {
        snprintf(name, sizeof name, "%s%s.weight", pre, nm->norm1);
        if ((rc = load_tensor(m, &bl->norm1_w, name, 1, n1, false, err))) goto fail;
        snprintf(name, sizeof name, "%s%s.bias", pre, nm->norm1);
        if ((rc = load_tensor(m, &bl->norm1_b, name, 1, n1, false, err))) goto fail;
    }
    if (nm->norm2) {
        snprintf(name, sizeof name, "%s%s.weight", pre, nm->norm2);
        if ((rc = load_tensor(m, &bl->norm2_w, name, 1, n2, false, err))) goto fail;
        snprintf(name, sizeof name, "%s%s.bias", pre, nm->norm2);
        if ((rc = load_tensor(m, &bl->norm2_b, name, 1, n2, false, err))) goto fail;
    }
    if (m->norm == NORM_LAYER && (!bl->norm1_w || (nm->norm2 && !bl->norm2_w))) {
        rc = slm_err_set(err, SLM_ENOTFOUND, "%s: block %d norm weights missing", m->dir, b);
        goto fail;
    }
    /* SliceGPT shortcut matrices (absent in ordinary checkpoints) */
    bool par = m->block_kind == BLOCK_PARALLEL;
    int64_t sa[2] = { bl->d_in, par ? bl->d_out : bl->d_mid }, sm[2] = { bl->d_mid, bl->d_out };
    snprintf(name, sizeof name, "%sattn_shortcut_Q", pre);
    if ((rc = load_tensor(m, &bl->shortcut_attn, name, 2, sa, false, err))) goto fail;
    snprintf(name, sizeof name, "%smlp_shortcut_Q", pre);
    if (!par && (rc = load_tensor(m, &bl->shortcut_mlp, name, 2, sm, false, err))) goto fail;
    bl->loaded = true;
    if (m->weights_bf16 && (rc = block_round_bf16(m, bl, err))) goto fail;
    return 0;
fail:
    bl->loaded = true; /* so unload frees what was loaded */
    model_block_unload(m, b);
    return rc;
}

int model_block_load(struct model *m, int b, struct slm_err *err)
{
    if (m->blocks[b].loaded) return 0;
    if (!m->st) return slm_err_set(err, SLM_EINVAL, "block %d: model has no weights file to load from", b);
    struct block_prefetch *p = m->prefetch;
    if (p && p->block == b && !p->joined) {
        pthread_join(p->thread, NULL);
        p->joined = true;
    }
    int rc = block_load(m, b, err);
    if (p && p->block == b) model_prefetch_drop(m);
    return rc;
}

void model_block_unload(struct model *m, int b)
{
    struct block *bl = &m->blocks[b];
    if (!bl->loaded) return;
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &bl->lin[r];
        kb_release(m->kb, l->w);
        kb_release(m->kb, l->b);
        kb_release(m->kb, l->lora_l);
        kb_release(m->kb, l->lora_r);
        l->w = l->b = l->lora_l = l->lora_r = NULL;
        l->w_bf16 = false;
        l->rank = 0;
    }
    float **bufs[] = { &bl->norm1_w, &bl->norm1_b, &bl->norm2_w, &bl->norm2_b, &bl->shortcut_attn, &bl->shortcut_mlp };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        kb_release(m->kb, *bufs[i]);
        *bufs[i] = NULL;
    }
    bl->loaded = false;
}

/* ---- open / free ---- */

static int rope_inv_freq(struct model *m, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    int half = c->rot_dim / 2;
    if (half == 0 || c->arch == ARCH_OPT) return 0;
    float *f = malloc(half * sizeof(float));
    if (!f) return slm_err_set(err, SLM_ENOMEM, "rope: out of memory");
    for (int i = 0; i < half; i++) {
        /* transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in f32 */
        float expo = (float)(2 * i) / (float)c->rot_dim;
        f[i] = 1.0f / powf(c->rope_theta, expo);
    }
    if (!strcmp(c->rope_type, "linear")) {
        for (int i = 0; i < half; i++) f[i] /= c->rope_factor;
    } else if (!strcmp(c->rope_type, "llama3")) {
        double old = c->rope_original_max_pos, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
        double lo_wl = old / lo, hi_wl = old / hi;
        for (int i = 0; i < half; i++) {
            double wl = 2 * M_PI / f[i];
            if (wl > lo_wl) {
                f[i] = f[i] / c->rope_factor;
            } else if (wl >= hi_wl) {
                double s = (old / wl - lo) / (hi - lo);
                f[i] = (float)((1 - s) * f[i] / c->rope_factor + s * f[i]);
            }
        }
    }
    int rc = kb_alloc(m->kb, (void **)&m->inv_freq, half * sizeof(float), err);
    if (!rc) rc = kb_upload(m->kb, m->inv_freq, f, half * sizeof(float), err);
    free(f);
    return rc;
}

int model_open(struct model **out, const char *dir, struct kbackend *kb, int flags, struct slm_err *err)
{
    struct model *m = calloc(1, sizeof *m);
    int rc;
    char path[4200];
    if (!m) return slm_err_set(err, SLM_ENOMEM, "model: out of memory");
    m->kb = kb;
    if (strlen(dir) >= sizeof m->dir) { rc = slm_err_set(err, SLM_EINVAL, "model folder path too long"); goto fail; }
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    if ((rc = model_config_load(&m->cfg, dir, err))) goto fail;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    m->config_json = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!m->config_json) { rc = slm_err_set(err, SLM_EFORMAT, "%s: %s", path, je.text); goto fail; }
    m->arch = arch_for_model_type(m->cfg.model_type);
    m->norm = m->arch->norm;
    m->block_kind = m->arch->block_kind(&m->cfg);
    if ((rc = st_model_open(&m->st, dir, err))) goto fail;

    const struct model_config *c = &m->cfg;
    m->embed_width = c->embed_dim;
    m->blocks = calloc(c->n_layers, sizeof *m->blocks);
    if (!m->blocks) { rc = slm_err_set(err, SLM_ENOMEM, "model: %d blocks", c->n_layers); goto fail; }
    for (int b = 0; b < c->n_layers; b++) {
        m->blocks[b].index = b;
        m->blocks[b].d_in = m->blocks[b].d_mid = m->blocks[b].d_out = c->hidden;
    }
    m->d_head = c->hidden;
    if (json_object_get(m->config_json, "slicegpt") && (rc = slicegpt_config_apply(m, m->config_json, err))) goto fail;
    char name[160];
    snprintf(name, sizeof name, "%s.weight", m->arch->embed);
    if ((rc = load_host(m, &m->embed, name, c->vocab, m->embed_width, err))) goto fail;
    if (m->arch->pos_embed) {
        snprintf(name, sizeof name, "%s.weight", m->arch->pos_embed);
        if ((rc = load_host(m, &m->pos_embed, name, (int64_t)c->max_pos + 2,
                                 c->embed_dim != c->hidden ? c->hidden : m->embed_width, err))) goto fail;
    }
    if (c->embed_dim != c->hidden) {
        int64_t pin[2] = { c->hidden, c->embed_dim }, pout[2] = { c->embed_dim, c->hidden };
        if (!m->arch->project_in) { rc = slm_err_set(err, SLM_EFORMAT, "embedding width differs from hidden size"); goto fail; }
        snprintf(name, sizeof name, "%s.weight", m->arch->project_in);
        if ((rc = load_tensor(m, &m->project_in, name, 2, pin, true, err))) goto fail;
        snprintf(name, sizeof name, "%s.weight", m->arch->project_out);
        if ((rc = load_tensor(m, &m->project_out, name, 2, pout, true, err))) goto fail;
    }
    int64_t hs[1] = { c->hidden };
    bool has_final = m->arch->final_norm && !(c->arch == ARCH_OPT && !c->do_layer_norm_before);
    if (has_final) {
        snprintf(name, sizeof name, "%s.weight", m->arch->final_norm);
        if ((rc = load_tensor(m, &m->final_norm_w, name, 1, hs, m->norm == NORM_LAYER, err))) goto fail;
        snprintf(name, sizeof name, "%s.bias", m->arch->final_norm);
        if ((rc = load_tensor(m, &m->final_norm_b, name, 1, hs, false, err))) goto fail;
    }
    int64_t head[2] = { c->vocab, c->embed_dim }, hb[1] = { c->vocab };
    snprintf(name, sizeof name, "%s.weight", m->arch->head);
    bool tied = c->tie_word_embeddings || !st_model_find(m->st, name);
    if (tied && !c->tie_word_embeddings) {
        rc = slm_err_set(err, SLM_ENOTFOUND, "%s: lm_head.weight missing and tie_word_embeddings is false", dir);
        goto fail;
    }
    if (!tied || st_model_find(m->st, name)) {
        if ((rc = load_tensor(m, &m->head_w, name, 2, head, true, err))) goto fail;
    } else {
        snprintf(name, sizeof name, "%s.weight", m->arch->embed);
        if ((rc = load_tensor(m, &m->head_w, name, 2, head, true, err))) goto fail;
    }
    snprintf(name, sizeof name, "%s.bias", m->arch->head);
    if ((rc = load_tensor(m, &m->head_b, name, 1, hb, false, err))) goto fail;
    if ((rc = rope_inv_freq(m, err))) goto fail;
    if (!(flags & MODEL_LAZY_BLOCKS))
        for (int b = 0; b < c->n_layers; b++)
            if ((rc = model_block_load(m, b, err))) goto fail;
    *out = m;
    return 0;
fail:
    model_free(m);
    return rc;
}

/* Row width of pos_embed: the hidden size (OPT-350M adds positions after project_in). */
static int pos_width(const struct model *m)
{
    return m->cfg.embed_dim != m->cfg.hidden ? m->cfg.hidden : m->embed_width;
}

void model_free(struct model *m)
{
    if (!m) return;
    model_prefetch_drop(m);
    if (m->blocks)
        for (int b = 0; b < m->cfg.n_layers; b++) model_block_unload(m, b);
    free(m->blocks);
    free(m->embed);
    free(m->pos_embed);
    model_embed_changed(m);
    float *dev[] = { m->embed_rot, m->project_in, m->project_out, m->final_norm_w, m->final_norm_b,
                     m->head_w, m->head_b, m->inv_freq, m->work, m->head_work };
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) kb_release(m->kb, dev[i]);
    json_decref(m->config_json);
    st_model_close(m->st);
    free(m);
}

int model_max_width(const struct model *m)
{
    int w = imax(m->cfg.hidden, imax(m->embed_width, m->d_head));
    for (int b = 0; b < m->cfg.n_layers; b++)
        w = imax(w, imax(m->blocks[b].d_in, imax(m->blocks[b].d_mid, m->blocks[b].d_out)));
    return w;
}

/* ---- forward ---- */

/* LLaMA's RMSNorm in bf16 rounds twice: w * bf16(x * rsqrt(mean x^2 + eps)), the product
** rounded again. The weight product runs on the host: emulation is an accuracy mode. */
static int rmsnorm_bf16(struct model *m, float *y, const float *x, const float *w, const float *b, int rows, int cols,
                        struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    size_t n = (size_t)rows * cols;
    int rc = kb->iface->rmsnorm(kb, y, x, NULL, rows, cols, m->norm_divisor > 0 ? m->norm_divisor : (float)cols,
                                m->cfg.norm_eps, err);
    if (!rc) rc = kb_round_bf16(kb, y, n, err);
    if (rc) return rc;
    float *h = malloc(sizeof *h * (n + 2 * (size_t)cols));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "rmsnorm (bf16 emulation): %zu floats", n);
    float *hw = h + n, *hb = hw + cols;
    rc = kb_download(kb, h, y, sizeof *h * n, err);
    if (!rc) rc = kb_download(kb, hw, w, sizeof *hw * cols, err);
    if (!rc && b) rc = kb_download(kb, hb, b, sizeof *hb * cols, err);
    for (size_t i = 0; !rc && i < n; i++) {
        float v = bf16_round(hw[i % cols] * h[i]);
        h[i] = b ? bf16_round(v + hb[i % cols]) : v;
    }
    if (!rc) rc = kb_upload(kb, y, h, sizeof *h * n, err);
    free(h);
    return rc;
}

static int norm_apply(struct model *m, float *y, const float *x, const float *w, const float *b, int rows, int cols,
                      struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int rc;
    if (m->act_bf16 && m->norm == NORM_RMS && w) return rmsnorm_bf16(m, y, x, w, b, rows, cols, err);
    if (m->norm == NORM_LAYER) {
        rc = kb->iface->layernorm(kb, y, x, w, b, rows, cols, m->cfg.norm_eps, err);
    } else {
        rc = kb->iface->rmsnorm(kb, y, x, w, rows, cols, m->norm_divisor > 0 ? m->norm_divisor : (float)cols,
                                m->cfg.norm_eps, err);
        if (!rc && b) rc = kb->iface->add_bias(kb, y, b, rows, cols, cols, err);
    }
    return rc ? rc : act_round(m, y, (size_t)rows * cols, err);
}

int model_set_bf16(struct model *m, bool weights, bool activations, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    m->act_bf16 = activations;
    if (!weights || m->weights_bf16) return 0;
    m->weights_bf16 = true;
    int pos_w = pos_width(m);
    int in_w = m->project_in ? c->hidden : m->embed_width;
    /* the host tables are authoritative: round them, the backend copies follow on next use */
    model_embed_changed(m);
    for (size_t i = 0, n = (size_t)c->vocab * m->embed_width; i < n; i++) m->embed[i] = bf16_round(m->embed[i]);
    for (size_t i = 0, n = m->pos_embed ? (size_t)(c->max_pos + 2) * pos_w : 0; i < n; i++)
        m->pos_embed[i] = bf16_round(m->pos_embed[i]);
    struct { float *p; size_t n; } v[] = {
        { m->embed_rot, (size_t)in_w * m->blocks[0].d_in },
        { m->project_in, (size_t)c->hidden * c->embed_dim }, { m->project_out, (size_t)c->embed_dim * c->hidden },
        { m->final_norm_w, (size_t)m->d_head }, { m->final_norm_b, (size_t)m->d_head },
        { m->head_w, (size_t)c->vocab * (m->project_out ? c->embed_dim : m->d_head) }, { m->head_b, (size_t)c->vocab },
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof v / sizeof v[0] && !rc; i++)
        if (v[i].p) rc = kb_round_bf16(m->kb, v[i].p, v[i].n, err);
    for (int b = 0; b < c->n_layers && !rc; b++)
        if (m->blocks[b].loaded) rc = block_round_bf16(m, &m->blocks[b], err);
    return rc;
}

int model_set_input_quant(struct model *m, const char *kind, int bits, int group_size, struct slm_err *err)
{
    if (!kind || !*kind) { m->input_quant[0] = 0; return 0; }
    if (strcmp(kind, "fp8") && strcmp(kind, "int"))
        return slm_err_set(err, SLM_EINVAL, "input quantization '%s' unknown (fp8, int)", kind);
    if (bits < 2 || bits > 8 || (!strcmp(kind, "fp8") && bits != 8) || group_size == 0 || group_size < -1)
        return slm_err_set(err, SLM_EINVAL, "input quantization %s: bits %d / group %d invalid", kind, bits, group_size);
    snprintf(m->input_quant, sizeof m->input_quant, "%s", kind);
    m->input_quant_bits = bits;
    m->input_quant_group = group_size;
    return 0;
}

/* In-place quantize-dequantize of a block linear's input (backend memory). The emulation runs on
** the host; on a device backend the tensor makes a round trip. */
static int input_quant(struct model *m, float *x, int rows, int d, struct slm_err *err)
{
    size_t n = (size_t)rows * d;
    if (!strcmp(kb_name(m->kb), "cpu")) return quant_input_host(x, rows, d, m->input_quant, m->input_quant_bits, m->input_quant_group, err);
    float *h = malloc(n * sizeof(float));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "input quantization: %zu floats", n);
    int rc = kb_download(m->kb, h, x, n * sizeof(float), err);
    if (!rc) rc = quant_input_host(h, rows, d, m->input_quant, m->input_quant_bits, m->input_quant_group, err);
    if (!rc) rc = kb_upload(m->kb, x, h, n * sizeof(float), err);
    free(h);
    return rc;
}

/* y [rows x d_out] = x W^T + b, plus the adapter x L R; t is scratch [rows x rank]. x is a block
** workspace buffer, so input-quantization emulation may rewrite it in place. */
static int lin_fwd(struct model *m, const struct linear *l, float *y, const float *x, float *t, int rows,
                   struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    int rc;
    if (m->input_quant[0] && (rc = input_quant(m, (float *)x, rows, l->d_in, err))) return rc;
    /* under bf16 emulation every activation entering a linear went through act_round */
    struct kgemm_args g = { .ta = KB_N, .tb = KB_T, .m = rows, .n = l->d_out, .k = l->d_in, .alpha = 1, .beta = 0,
                            .a = x, .lda = l->d_in, .b = l->w, .ldb = l->d_in, .c = y, .ldc = l->d_out, .batch = 1,
                            .bf16_inputs = m->act_bf16 && l->w_bf16 && !m->input_quant[0] };
    rc = kb->iface->gemm(kb, &g, err);
    if (!rc && l->b) rc = kb->iface->add_bias(kb, y, l->b, rows, l->d_out, l->d_out, err);
    if (!rc) rc = act_round(m, y, (size_t)rows * l->d_out, err);
    if (rc || !l->rank) return rc;
    struct kgemm_args g1 = { .ta = KB_N, .tb = KB_N, .m = rows, .n = l->rank, .k = l->d_in, .alpha = 1, .beta = 0,
                             .a = x, .lda = l->d_in, .b = l->lora_l, .ldb = l->rank, .c = t, .ldc = l->rank, .batch = 1 };
    struct kgemm_args g2 = { .ta = KB_N, .tb = KB_N, .m = rows, .n = l->d_out, .k = l->rank, .alpha = 1, .beta = 1,
                             .a = t, .lda = l->rank, .b = l->lora_r, .ldb = l->d_out, .c = y, .ldc = l->d_out, .batch = 1 };
    if ((rc = kb->iface->gemm(kb, &g1, err)) || (rc = act_round(m, t, (size_t)rows * l->rank, err)) ||
        (rc = kb->iface->gemm(kb, &g2, err)))
        return rc;
    return act_round(m, y, (size_t)rows * l->d_out, err);
}

/* y [rows x n] = x [rows x k] Q [k x n] */
static int matmul(struct model *m, float *y, const float *x, const float *q, int rows, int k, int n, struct slm_err *err)
{
    struct kgemm_args g = { .ta = KB_N, .tb = KB_N, .m = rows, .n = n, .k = k, .alpha = 1, .beta = 0,
                            .a = x, .lda = k, .b = q, .ldb = n, .c = y, .ldc = n, .batch = 1 };
    int rc = m->kb->iface->gemm(m->kb, &g, err);
    return rc ? rc : act_round(m, y, (size_t)rows * n, err);
}

struct work {
    float *h, *q, *k, *v, *a, *o, *r, *f, *u, *t;
};

static int work_get(struct model *m, struct work *w, int rows, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    size_t R = (size_t)rows, dm = (size_t)model_max_width(m), qd = (size_t)c->n_heads * c->head_dim,
           kvd = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)c->ffn, rank = 1;
    for (int b = 0; b < c->n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++)
            if ((size_t)m->blocks[b].lin[r].rank > rank) rank = (size_t)m->blocks[b].lin[r].rank;
    size_t sizes[10] = { R * dm, R * qd, R * kvd, R * kvd, R * qd, R * dm, R * dm, R * ff, R * ff, R * rank };
    size_t need = 0;
    for (int i = 0; i < 10; i++) need += (sizes[i] + 15) & ~(size_t)15;
    if (m->work_n < need) {
        kb_release(m->kb, m->work);
        m->work = NULL;
        m->work_n = 0;
        int rc = kb_alloc(m->kb, (void **)&m->work, need * sizeof(float), err);
        if (rc) return rc;
        m->work_n = need;
    }
    float **slots[10] = { &w->h, &w->q, &w->k, &w->v, &w->a, &w->o, &w->r, &w->f, &w->u, &w->t };
    float *p = m->work;
    for (int i = 0; i < 10; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    return 0;
}

#define CB(role, x)                                                                                   \
    do {                                                                                              \
        if (cb && bl->lin[role].w && cb(b, role, &bl->lin[role], (x), rows, payload))                 \
            return slm_err_set(err, SLM_ECANCELLED, "cancelled in block %d", b);                      \
    } while (0)

/* transformers' apply_rotary_pos_emb in bf16: cos and sin (f32) cast to bf16, then
** q * cos + rotate_half(q) * sin with every product and the sum rounded. Host emulation. */
static int rope_bf16(struct model *m, float *x, int rows, int ld, int T, int nheads, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    int half = c->rot_dim / 2, hd = c->head_dim;
    size_t n = (size_t)rows * ld;
    float *h = malloc(sizeof *h * (n + (size_t)half));
    if (!h) return slm_err_set(err, SLM_ENOMEM, "rope (bf16 emulation): %zu floats", n);
    float *f = h + n;
    int rc = kb_download(m->kb, h, x, sizeof *h * n, err);
    if (!rc) rc = kb_download(m->kb, f, m->inv_freq, sizeof *f * half, err);
    for (int r = 0; !rc && r < rows; r++) {
        float pos = (float)(r % T);
        for (int i = 0; i < half; i++) {
            float ang = pos * f[i], cs = bf16_round(cosf(ang)), sn = bf16_round(sinf(ang));
            for (int hh = 0; hh < nheads; hh++) {
                float *p = h + (size_t)r * ld + (size_t)hh * hd, a = p[i], b = p[i + half];
                p[i] = bf16_round(bf16_round(a * cs) + bf16_round(-b * sn));
                p[i + half] = bf16_round(bf16_round(b * cs) + bf16_round(a * sn));
            }
        }
    }
    if (!rc) rc = kb_upload(m->kb, x, h, sizeof *h * n, err);
    free(h);
    return rc;
}

static int attention_part(struct model *m, struct block *bl, int b, const float *h, float *o, struct work *w, int B,
                          int T, linear_input_cb cb, void *payload, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    struct kbackend *kb = m->kb;
    int rows = B * T, rc, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    CB(LIN_Q, h);
    CB(LIN_K, h);
    CB(LIN_V, h);
    if ((rc = lin_fwd(m, &bl->lin[LIN_Q], w->q, h, w->t, rows, err)) || (rc = lin_fwd(m, &bl->lin[LIN_K], w->k, h, w->t, rows, err)) ||
        (rc = lin_fwd(m, &bl->lin[LIN_V], w->v, h, w->t, rows, err)))
        return rc;
    if (m->inv_freq && c->rot_dim > 0) {
        if (m->act_bf16) {
            if ((rc = rope_bf16(m, w->q, rows, qd, T, c->n_heads, err)) || (rc = rope_bf16(m, w->k, rows, kvd, T, c->n_kv_heads, err)))
                return rc;
        } else if ((rc = kb->iface->rope(kb, w->q, rows, qd, T, c->n_heads, c->head_dim, c->rot_dim, m->inv_freq, err)) ||
                   (rc = kb->iface->rope(kb, w->k, rows, kvd, T, c->n_kv_heads, c->head_dim, c->rot_dim, m->inv_freq, err))) {
            return rc;
        }
    }
    struct kattn_args a = { .out = w->a, .out_stride = qd, .q = w->q, .q_stride = qd, .k = w->k, .v = w->v,
                            .kv_stride = kvd, .B = B, .T = T, .H = c->n_heads, .Hkv = c->n_kv_heads,
                            .hd = c->head_dim, .scale = 1.0f / sqrtf((float)c->head_dim) };
    if ((rc = kb->iface->attention(kb, &a, err)) || (rc = act_round(m, w->a, (size_t)rows * qd, err))) return rc;
    CB(LIN_O, w->a);
    return lin_fwd(m, &bl->lin[LIN_O], o, w->a, w->t, rows, err);
}

static int mlp_part(struct model *m, struct block *bl, int b, const float *h, float *o, struct work *w, int rows,
                    linear_input_cb cb, void *payload, struct slm_err *err)
{
    struct kbackend *kb = m->kb;
    size_t n = (size_t)rows * m->cfg.ffn;
    int rc;
    CB(LIN_FC1, h);
    if ((rc = lin_fwd(m, &bl->lin[LIN_FC1], w->f, h, w->t, rows, err))) return rc;
    if ((rc = kb->iface->act(kb, w->f, w->f, n, m->cfg.act, err)) || (rc = act_round(m, w->f, n, err))) return rc;
    if (bl->lin[LIN_UP].w) {
        CB(LIN_UP, h);
        if ((rc = lin_fwd(m, &bl->lin[LIN_UP], w->u, h, w->t, rows, err))) return rc;
        if ((rc = kb->iface->mul(kb, w->f, w->u, n, err)) || (rc = act_round(m, w->f, n, err))) return rc;
    }
    CB(LIN_FC2, w->f);
    return lin_fwd(m, &bl->lin[LIN_FC2], o, w->f, w->t, rows, err);
}

/* y += x, the residual add (rounded under bf16 emulation) */
static int add_round(struct model *m, float *y, const float *x, size_t n, struct slm_err *err)
{
    int rc = m->kb->iface->add(m->kb, y, x, n, err);
    return rc ? rc : act_round(m, y, n, err);
}

/* r [rows x dout] = x Q (or a copy of x when Q is NULL and widths agree) */
static int residual(struct model *m, float *r, const float *x, const float *Q, int rows, int din, int dout, struct slm_err *err)
{
    if (Q) return matmul(m, r, x, Q, rows, din, dout, err);
    if (din != dout) return slm_err_set(err, SLM_ESHAPE, "residual width %d -> %d needs a shortcut matrix", din, dout);
    return m->kb->iface->copy(m->kb, r, x, (size_t)rows * din * sizeof(float), err);
}

int model_block_forward(struct model *m, int b, float *x, int B, int T, linear_input_cb cb, void *payload,
                        struct slm_err *err)
{
    if (b < 0 || b >= m->cfg.n_layers) return slm_err_set(err, SLM_EINVAL, "block %d out of range", b);
    struct block *bl = &m->blocks[b];
    struct kbackend *kb = m->kb;
    struct work w;
    int rows = B * T, rc;
    if (!bl->loaded) return slm_err_set(err, SLM_EINVAL, "block %d is not loaded", b);
    if ((rc = work_get(m, &w, rows, err))) return rc;
    size_t nmid = (size_t)rows * bl->d_mid, nout = (size_t)rows * bl->d_out;

    if (m->block_kind == BLOCK_PARALLEL) {
        if ((rc = norm_apply(m, w.h, x, bl->norm1_w, bl->norm1_b, rows, bl->d_in, err)) ||
            (rc = attention_part(m, bl, b, w.h, w.o, &w, B, T, cb, payload, err)) ||
            (rc = residual(m, w.r, x, bl->shortcut_attn, rows, bl->d_in, bl->d_out, err)) ||
            (rc = add_round(m, w.r, w.o, nout, err)) ||
            (rc = mlp_part(m, bl, b, w.h, w.o, &w, rows, cb, payload, err)) ||
            (rc = add_round(m, w.r, w.o, nout, err)))
            return rc;
        return kb->iface->copy(kb, x, w.r, nout * sizeof(float), err);
    }
    bool post = m->block_kind == BLOCK_SEQ_POSTNORM;
    const float *hin = x;
    if (!post) {
        if ((rc = norm_apply(m, w.h, x, bl->norm1_w, bl->norm1_b, rows, bl->d_in, err))) return rc;
        hin = w.h;
    }
    if ((rc = attention_part(m, bl, b, hin, w.o, &w, B, T, cb, payload, err)) ||
        (rc = residual(m, w.r, x, bl->shortcut_attn, rows, bl->d_in, bl->d_mid, err)) ||
        (rc = add_round(m, w.r, w.o, nmid, err)))
        return rc;
    if (m->mid_cb && !post && m->mid_cb(b, w.r, rows, bl->d_mid, m->mid_payload))
        return slm_err_set(err, SLM_ECANCELLED, "cancelled in block %d", b);
    if (post && (rc = norm_apply(m, w.r, w.r, bl->norm1_w, bl->norm1_b, rows, bl->d_mid, err))) return rc;
    hin = w.r;
    if (!post) {
        if ((rc = norm_apply(m, w.h, w.r, bl->norm2_w, bl->norm2_b, rows, bl->d_mid, err))) return rc;
        hin = w.h;
    }
    if ((rc = mlp_part(m, bl, b, hin, w.o, &w, rows, cb, payload, err)) ||
        (rc = residual(m, x, w.r, bl->shortcut_mlp, rows, bl->d_mid, bl->d_out, err)) ||
        (rc = add_round(m, x, w.o, nout, err)))
        return rc;
    if (post && (rc = norm_apply(m, x, x, bl->norm2_w, bl->norm2_b, rows, bl->d_out, err))) return rc;
    return 0;
}

void model_embed_changed(struct model *m)
{
    kb_release(m->kb, m->embed_dev);
    kb_release(m->kb, m->pos_embed_dev);
    m->embed_dev = m->pos_embed_dev = NULL;
}

/* Backend copies of the embedding tables, uploaded once (until model_embed_changed). */
static int embed_tables_dev(struct model *m, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    size_t ne = (size_t)c->vocab * m->embed_width, np = m->pos_embed ? (size_t)(c->max_pos + 2) * pos_width(m) : 0;
    int rc = 0;
    if (m->embed_dev) return 0;
    if ((rc = kb_alloc(m->kb, (void **)&m->embed_dev, sizeof(float) * ne, err)) ||
        (rc = kb_upload(m->kb, m->embed_dev, m->embed, sizeof(float) * ne, err)))
        goto fail;
    if (np && ((rc = kb_alloc(m->kb, (void **)&m->pos_embed_dev, sizeof(float) * np, err)) ||
               (rc = kb_upload(m->kb, m->pos_embed_dev, m->pos_embed, sizeof(float) * np, err))))
        goto fail;
    return 0;
fail:
    model_embed_changed(m);
    return rc;
}

/* out [rows x width] (backend) <- rows ids[r] of a V-row table: gathered by the backend from
** table_dev through dids (backend int32 [rows]), or, without a backend copy, on the host into
** h [rows x width] and uploaded. */
static int embed_rows(struct model *m, float *out, const float *table, const float *table_dev, int V, const int32_t *ids,
                      int32_t *dids, size_t rows, int width, float *h, struct slm_err *err)
{
    if (table_dev) {
        int rc = kb_upload(m->kb, dids, ids, sizeof *ids * rows, err);
        return rc ? rc : m->kb->iface->gather_rows(m->kb, out, table_dev, dids, (int)rows, width, V, err);
    }
    for (size_t r = 0; r < rows; r++) memcpy(h + r * width, table + (size_t)ids[r] * width, width * sizeof(float));
    return kb_upload(m->kb, out, h, rows * width * sizeof(float), err);
}

int model_embed(struct model *m, float *x, const int32_t *ids, int B, int T, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    size_t rows = (size_t)B * T;
    int ew = m->embed_width, rc = 0;
    if (B < 1 || T < 1) return slm_err_set(err, SLM_EINVAL, "embed: empty batch (%d x %d)", B, T);
    if (m->pos_embed && T > c->max_pos)
        return slm_err_set(err, SLM_EINVAL, "sequence length %d exceeds max_position_embeddings %d", T, c->max_pos);
    for (size_t r = 0; r < rows; r++)
        if (ids[r] < 0 || ids[r] >= c->vocab)
            return slm_err_set(err, SLM_EINVAL, "token id %d at position %zu outside the vocabulary [0, %d)", ids[r], r, c->vocab);
    float *host = NULL, *tmp = NULL;
    int32_t *dids = NULL, *pos = NULL;
    bool dev = m->kb->iface->gather_rows != NULL;
    if (dev && (rc = embed_tables_dev(m, err)) == -SLM_ENOMEM) {
        /* the tables do not fit beside the model's work: gather on the host, as without the op */
        slm_err_clear(err);
        rc = 0;
        dev = false;
    }
    if (rc) goto done;
    if (dev) {
        if ((rc = kb_alloc(m->kb, (void **)&dids, sizeof *dids * rows, err))) goto done;
    } else if (!(host = malloc(rows * (size_t)imax(ew, c->hidden) * sizeof(float)))) {
        return slm_err_set(err, SLM_ENOMEM, "embed: %zu rows", rows);
    }
    int width = ew;
    if (m->project_in) {
        if ((rc = kb_alloc(m->kb, (void **)&tmp, rows * ew * sizeof(float), err)) ||
            (rc = embed_rows(m, tmp, m->embed, m->embed_dev, c->vocab, ids, dids, rows, ew, host, err)) ||
            (rc = kb_linear(m->kb, x, tmp, m->project_in, NULL, (int)rows, c->hidden, ew, err)) ||
            (rc = act_round(m, x, rows * c->hidden, err)))
            goto done;
        width = c->hidden;
    } else if ((rc = embed_rows(m, x, m->embed, m->embed_dev, c->vocab, ids, dids, rows, ew, host, err))) {
        goto done;
    }
    if (m->pos_embed) { /* OPT: row = position + 2 */
        if (!(pos = malloc(sizeof *pos * rows))) { rc = slm_err_set(err, SLM_ENOMEM, "embed: %zu positions", rows); goto done; }
        for (size_t r = 0; r < rows; r++) pos[r] = (int32_t)(r % T) + 2;
        kb_release(m->kb, tmp);
        tmp = NULL;
        if ((rc = kb_alloc(m->kb, (void **)&tmp, rows * width * sizeof(float), err)) ||
            (rc = embed_rows(m, tmp, m->pos_embed, m->pos_embed_dev, c->max_pos + 2, pos, dids, rows, width, host, err)) ||
            (rc = add_round(m, x, tmp, rows * width, err)))
            goto done;
    }
    if (m->embed_rot) {
        int d0 = m->blocks[0].d_in;
        kb_release(m->kb, tmp);
        tmp = NULL;
        if ((rc = kb_alloc(m->kb, (void **)&tmp, rows * width * sizeof(float), err)) ||
            (rc = m->kb->iface->copy(m->kb, tmp, x, rows * width * sizeof(float), err)) ||
            (rc = matmul(m, x, tmp, m->embed_rot, (int)rows, width, d0, err)))
            goto done;
    }
done:
    kb_release(m->kb, tmp);
    kb_release(m->kb, dids);
    free(host);
    free(pos);
    return rc;
}

static int final_norm(struct model *m, float *x, int rows, struct slm_err *err)
{
    if (m->cfg.arch == ARCH_OPT && !m->cfg.do_layer_norm_before) return 0; /* OPT-350M has none */
    return norm_apply(m, x, x, m->final_norm_w, m->final_norm_b, rows, m->d_head, err);
}

/* logits [rows x vocab] for x [rows x d_head] already final-normed; y scratch [rows x embed_dim] */
static int head_rows(struct model *m, float *logits, const float *x, float *y, int rows, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    int rc;
    if (m->project_out) {
        if ((rc = kb_linear(m->kb, y, x, m->project_out, NULL, rows, c->embed_dim, m->d_head, err)) ||
            (rc = act_round(m, y, (size_t)rows * c->embed_dim, err)))
            return rc;
        x = y;
    }
    rc = kb_linear(m->kb, logits, x, m->head_w, m->head_b, rows, c->vocab, m->project_out ? c->embed_dim : m->d_head, err);
    return rc ? rc : act_round(m, logits, (size_t)rows * c->vocab, err);
}

int model_head(struct model *m, float *logits, float *x, int B, int T, struct slm_err *err)
{
    int rows = B * T, rc;
    float *y = NULL;
    if ((rc = final_norm(m, x, rows, err))) return rc;
    if (m->project_out && (rc = kb_alloc(m->kb, (void **)&y, (size_t)rows * m->cfg.embed_dim * sizeof(float), err))) return rc;
    rc = head_rows(m, logits, x, y, rows, err);
    kb_release(m->kb, y);
    return rc;
}

/* Final norm, head and per-token loss of x [B*T x d_head] (clobbered); the tail of model_forward. */
static int head_nll(struct model *m, float *x, const int32_t *ids, int B, int T, float *logits, float *nll, hidden_cb hcb,
                    void *payload, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    struct kbackend *kb = m->kb;
    int rows = B * T, rc;
    int chunk = rows < HEAD_CHUNK_ROWS ? rows : HEAD_CHUNK_ROWS;
    float *lg = NULL, *y = NULL, *nl = NULL, *nl_host = NULL;
    int32_t *tg = NULL, *tg_host = NULL;
    if ((rc = final_norm(m, x, rows, err))) return rc;
    if (hcb && hcb(c->n_layers + 1, x, rows, m->d_head, payload)) return slm_err_set(err, SLM_ECANCELLED, "forward cancelled");
    if (!logits && !nll) return 0;
    /* head buffers live with the model: re-allocating ~50 MB per call costs page faults */
    size_t need = (size_t)chunk * c->vocab + (size_t)chunk * c->embed_dim + 2 * (size_t)chunk + 64;
    if (m->head_work_n < need) {
        kb_release(kb, m->head_work);
        m->head_work = NULL;
        m->head_work_n = 0;
        if ((rc = kb_alloc(kb, (void **)&m->head_work, need * sizeof(float), err))) return rc;
        m->head_work_n = need;
    }
    lg = m->head_work;
    y = lg + (size_t)chunk * c->vocab;
    nl = y + (size_t)chunk * c->embed_dim;
    tg = (int32_t *)(nl + chunk + 16);
    nl_host = malloc((size_t)chunk * sizeof(float));
    tg_host = malloc((size_t)chunk * sizeof(int32_t));
    if (!nl_host || !tg_host) { rc = slm_err_set(err, SLM_ENOMEM, "forward: head buffers"); goto done; }
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int nr = rows - r0 < chunk ? rows - r0 : chunk;
        if ((rc = head_rows(m, lg, x + (size_t)r0 * m->d_head, y, nr, err))) goto done;
        if (logits && (rc = kb_download(kb, logits + (size_t)r0 * c->vocab, lg, (size_t)nr * c->vocab * sizeof(float), err)))
            goto done;
        if (!nll) continue;
        for (int i = 0; i < nr; i++) {
            int r = r0 + i;
            tg_host[i] = (r % T) < T - 1 ? ids[r + 1] : -1;
        }
        if ((rc = kb_upload(kb, tg, tg_host, (size_t)nr * sizeof(int32_t), err)) ||
            (rc = kb->iface->cross_entropy(kb, nl, lg, tg, nr, c->vocab, err)) ||
            (rc = kb_download(kb, nl_host, nl, (size_t)nr * sizeof(float), err)))
            goto done;
        for (int i = 0; i < nr; i++) {
            int r = r0 + i, t = r % T;
            if (t < T - 1) nll[(size_t)(r / T) * (T - 1) + t] = nl_host[i];
        }
    }
    rc = kb_sync(kb, err);
done:
    free(nl_host);
    free(tg_host);
    return rc;
}

int model_head_nll(struct model *m, float *x, const int32_t *ids, int B, int T, float *logits, float *nll,
                   struct slm_err *err)
{
    return head_nll(m, x, ids, B, T, logits, nll, NULL, NULL, err);
}

int model_forward(struct model *m, const int32_t *ids, int B, int T, float *logits, float *nll, hidden_cb hcb,
                  void *payload, struct slm_err *err)
{
    const struct model_config *c = &m->cfg;
    struct kbackend *kb = m->kb;
    int rows = B * T, rc, W = model_max_width(m);
    float *x = NULL;
    if (B < 1 || T < 1) return slm_err_set(err, SLM_EINVAL, "forward: empty batch (%d x %d)", B, T);
    if ((rc = kb_alloc(kb, (void **)&x, (size_t)rows * W * sizeof(float), err))) goto done;
    if ((rc = model_embed(m, x, ids, B, T, err))) goto done;
    if (hcb && hcb(0, x, rows, m->blocks[0].d_in, payload)) { rc = slm_err_set(err, SLM_ECANCELLED, "forward cancelled"); goto done; }
    for (int b = 0; b < c->n_layers; b++) {
        bool transient = !m->blocks[b].loaded;
        if (transient && (rc = model_block_load(m, b, err))) goto done;
        rc = model_block_forward(m, b, x, B, T, NULL, NULL, err);
        if (transient) model_block_unload(m, b);
        if (rc) goto done;
        if (hcb && hcb(b + 1, x, rows, m->blocks[b].d_out, payload)) {
            rc = slm_err_set(err, SLM_ECANCELLED, "forward cancelled");
            goto done;
        }
    }
    rc = head_nll(m, x, ids, B, T, logits, nll, hcb, payload, err);
done:
    kb_release(kb, x);
    return rc;
}
