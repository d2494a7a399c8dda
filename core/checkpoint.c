/*
** core/checkpoint.c: compressed checkpoint writer and loader (see checkpoint.h).
** DESIGN: the writer reads the compression results (masks, integer codes, scale grids) that
** compress_model() kept, never re-derives them from floats, so what is stored is what was
** computed. The loader plugs into model_block_load through model.linear_loader and rebuilds each
** weight with quant_dequant() -- the same arithmetic the quantizers used, on the backend where it
** has the op -- so evaluation of a reloaded model reproduces the in-memory compressed model's
** logits bit for bit.
*/
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch.h"
#include "dtype.h"
#include "arch.h"
#include "fileio.h"
#include "memreport.h"
#include "safetensors.h"

#define SLIMD_TOOL "slimd 0.1.0"

/* ---- bit packing ---- */

static int index_bits(int m)
{
    int b = 0;
    while ((1 << b) < m) b++;
    return b ? b : 1;
}

static void bits_put(uint8_t *dst, size_t i, int nbits, unsigned v)
{
    size_t bit = i * (size_t)nbits;
    for (int k = 0; k < nbits; k++, bit++)
        if (v >> k & 1) dst[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static unsigned bits_get(const uint8_t *src, size_t i, int nbits)
{
    size_t bit = i * (size_t)nbits;
    unsigned v = 0;
    for (int k = 0; k < nbits; k++, bit++) v |= (unsigned)(src[bit / 8] >> (bit % 8) & 1) << k;
    return v;
}

/* codes -> U8 stream of 4-bit (code + 8) or 8-bit (two's complement) values */
static size_t codes_bytes(size_t n, int bits) { return bits <= 4 ? (n + 1) / 2 : n; }

static void codes_pack(uint8_t *dst, const int8_t *c, size_t n, int bits)
{
    memset(dst, 0, codes_bytes(n, bits));
    for (size_t i = 0; i < n; i++) {
        if (bits <= 4) dst[i / 2] |= (uint8_t)(((c[i] + 8) & 0xF) << (4 * (i & 1)));
        else dst[i] = (uint8_t)c[i];
    }
}

static int8_t code_at(const uint8_t *src, size_t i, int bits)
{
    if (bits <= 4) return (int8_t)(((src[i / 2] >> (4 * (i & 1))) & 0xF) - 8);
    return (int8_t)src[i];
}

/* ---- writer ---- */

struct ckw {
    struct st_writer *w;       /* the shard being written */
    char shard[64];            /* its file name */
    json_t *map;               /* tensor name -> shard file (model.safetensors.index.json) */
    struct memreport mr;
    struct slm_err *err;
};

static int record(struct ckw *c, const char *name)
{
    if (json_object_set_new(c->map, name, json_string(c->shard))) return slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory");
    return 0;
}

static int put(struct ckw *c, enum mem_cat cat, const char *pre, const char *suffix, enum dtype dt, int64_t d0, int64_t d1,
               const void *data)
{
    char name[160];
    int64_t shape[2] = { d0, d1 };
    snprintf(name, sizeof name, "%s.%s", pre, suffix);
    c->mr.bytes[cat] += (uint64_t)(d0 * d1) * dtype_traits(dt)->size;
    int rc = st_writer_add(c->w, name, dt, 2, shape, data, c->err);
    return rc ? rc : record(c, name);
}

static json_t *params_json(const struct quant_params *p)
{
    static const char *const kinds[] = { "sf", "alpha", "step" };
    return json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:b}", "kind", kinds[p->kind], "bits", p->bits, "rows", p->rows,
                     "cols", p->cols, "group_rows", p->group_rows, "group_cols", p->group_cols, "bf16", p->bf16);
}

static bool all_bf16(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (bf16_round(v[i]) != v[i]) return false;
    return true;
}

static bool nm_exact(const uint8_t *mask, int d_out, int d_in, int n, int m)
{
    if (!mask || m <= 0 || d_in % m) return false;
    for (int r = 0; r < d_out; r++)
        for (int g = 0; g < d_in; g += m) {
            int kept = 0;
            for (int k = 0; k < m; k++) kept += !mask[(size_t)r * d_in + g + k];
            if (kept != n) return false;
        }
    return true;
}

/* Adapter h (host, L [d_in x rank] or R [rank x d_out] of l): F32, or packed codes + scales when
** they were quantized. */
static int save_adapter(struct ckw *c, const struct linear *l, int rank, const float *h, const struct quant_params *qp,
                        const char *which, json_t *desc)
{
    bool left = !strcmp(which, "lora_left");
    int rows = left ? l->d_in : rank, cols = left ? rank : l->d_out, rc;
    size_t n = (size_t)rows * cols;
    int8_t *codes = NULL;
    uint8_t *pk = NULL;
    char sfx[32];
    if (!qp->scale) {
        rc = put(c, MEM_ADAPTERS, l->name, which, DT_F32, rows, cols, h);
        goto done;
    }
    /* codes of the stored L' = L sqrt(r): recover them from the grid (exact: values are on it) */
    codes = malloc(n);
    pk = malloc(codes_bytes(n, qp->bits));
    if (!codes || !pk) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
    float sr = sqrtf((float)rank);
    int max_q = quant_max_q(qp->bits);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float a = qp->scale[(size_t)(i / qp->group_rows) * qp->cols + j / qp->group_cols];
            float v = h[(size_t)i * cols + j] * sr;
            codes[(size_t)i * cols + j] = (int8_t)(a > 0 ? nearbyintf(v / a * (float)max_q) : 0);
        }
    /* verify the round trip before trusting it; fall back to F32 otherwise */
    float *chk = malloc(sizeof *chk * n);
    if (!chk) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
    rc = quant_dequant_host(chk, codes, rows, cols, qp, NULL, c->err);
    bool same = !rc;
    for (size_t i = 0; same && i < n; i++) same = chk[i] / sr == h[i];
    free(chk);
    if (rc) goto done;
    if (!same) {
        rc = put(c, MEM_ADAPTERS, l->name, which, DT_F32, rows, cols, h);
        goto done;
    }
    codes_pack(pk, codes, n, qp->bits);
    snprintf(sfx, sizeof sfx, "%s.q", which);
    if ((rc = put(c, MEM_ADAPTERS, l->name, sfx, DT_U8, 1, (int64_t)codes_bytes(n, qp->bits), pk))) goto done;
    snprintf(sfx, sizeof sfx, "%s.scale", which);
    if ((rc = put(c, MEM_SCALES, l->name, sfx, DT_F32, qp->rows, qp->cols, qp->scale))) goto done;
    json_object_set_new(desc, which, params_json(qp));
done:
    free(codes);
    free(pk);
    return rc;
}

/* Both adapters of l, backend buffers downloaded on the way. */
static int save_adapters(struct ckw *c, struct kbackend *kb, const struct linear *l, const struct compressed_linear *cl,
                         json_t *desc)
{
    size_t nl = (size_t)l->d_in * l->rank, nr = (size_t)l->rank * l->d_out;
    float *L = malloc(sizeof *L * nl), *R = malloc(sizeof *R * nr);
    int rc = L && R ? 0 : slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory");
    if (!rc) rc = kb_download(kb, L, l->lora_l, sizeof *L * nl, c->err);
    if (!rc) rc = kb_download(kb, R, l->lora_r, sizeof *R * nr, c->err);
    if (!rc) rc = save_adapter(c, l, l->rank, L, &cl->qpl, "lora_left", desc);
    if (!rc) rc = save_adapter(c, l, l->rank, R, &cl->qpr, "lora_right", desc);
    free(L);
    free(R);
    return rc;
}

/* adapters_now false: they are written later, into the adapters shard (quantized at the end). */
static int save_linear(struct ckw *c, struct model *m, struct linear *l, const struct compressed_linear *cl,
                       const struct compress_opts *o, bool adapters_now, json_t *layers)
{
    int d_out = l->d_out, d_in = l->d_in, rc;
    size_t n = (size_t)d_out * d_in;
    float *w = malloc(sizeof *w * n);
    uint8_t *pk = NULL, *idx = NULL;
    int8_t *kc = NULL;
    float *kv = NULL;
    json_t *desc = json_object();
    if (!w || !desc) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
    if ((rc = kb_download(m->kb, w, l->w, sizeof *w * n, c->err))) goto done;
    bool merged = l->rank == 0 && o->lowrank.method != LOWRANK_NONE && !o->separate_lora;
    bool q = cl->codes && cl->qp.scale && !merged;
    bool nm = !merged && nm_exact(cl->mask, d_out, d_in, o->prune.n, o->prune.m);
    int N = o->prune.n, M = o->prune.m;
    size_t nk = nm ? n / M * N : n;     /* stored entries */
    if (q) {
        /* the codes must rebuild the in-memory weight exactly; else store values */
        float *chk = malloc(sizeof *chk * n);
        if (!chk) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
        rc = quant_dequant_host(chk, cl->codes, d_out, d_in, &cl->qp, cl->col_scale, c->err);
        for (size_t i = 0; !rc && q && i < n; i++) q = chk[i] == w[i];
        free(chk);
        if (rc) goto done;
    }
    if (nm) {
        int ib = index_bits(M);
        idx = calloc((nk * (size_t)ib + 7) / 8, 1);
        kc = q ? malloc(nk) : NULL;
        kv = q ? NULL : malloc(sizeof *kv * nk);
        if (!idx || (q && !kc) || (!q && !kv)) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (cl->mask[i]) continue;
            bits_put(idx, k, ib, (unsigned)(i % (size_t)M));
            if (q) kc[k] = cl->codes[i];
            else kv[k] = w[i];
            k++;
        }
        if ((rc = put(c, MEM_SPARSITY, l->name, "idx", DT_U8, 1, (int64_t)((nk * (size_t)ib + 7) / 8), idx))) goto done;
        json_object_set_new(desc, "n", json_integer(N));
        json_object_set_new(desc, "m", json_integer(M));
    }
    if (q) {
        const int8_t *codes = nm ? kc : cl->codes;
        if (!(pk = malloc(codes_bytes(nk, cl->qp.bits)))) { rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
        codes_pack(pk, codes, nk, cl->qp.bits);
        if ((rc = put(c, MEM_WEIGHTS, l->name, "q", DT_U8, 1, (int64_t)codes_bytes(nk, cl->qp.bits), pk))) goto done;
        if ((rc = put(c, MEM_SCALES, l->name, "scale", DT_F32, cl->qp.rows, cl->qp.cols, cl->qp.scale))) goto done;
        if (cl->col_scale && (rc = put(c, MEM_SCALES, l->name, "colscale", DT_F32, 1, d_in, cl->col_scale))) goto done;
        json_object_set_new(desc, "quant", params_json(&cl->qp));
        json_object_set_new(desc, "colscale", json_boolean(cl->col_scale != NULL));
    } else {
        const float *v = nm ? kv : w;
        bool b16 = all_bf16(v, nk);
        char name[160];
        int64_t shape[2] = { 1, (int64_t)nk };
        snprintf(name, sizeof name, "%s.v", l->name);
        c->mr.bytes[MEM_WEIGHTS] += nk * (b16 ? 2 : 4);
        if ((rc = st_writer_add_f32(c->w, name, b16 ? DT_BF16 : DT_F32, 2, shape, v, c->err)) || (rc = record(c, name)))
            goto done;
    }
    json_object_set_new(desc, "enc", json_string(nm ? (q ? "nm_q" : "nm_v") : (q ? "dense_q" : "dense_v")));
    json_object_set_new(desc, "rank", json_integer(l->rank));
    if (l->rank && adapters_now && (rc = save_adapters(c, m->kb, l, cl, desc))) goto done;
    json_object_set_new(layers, l->name, desc);
    desc = NULL;
done:
    json_decref(desc);
    free(w);
    free(pk);
    free(idx);
    free(kc);
    free(kv);
    return rc;
}

/* Is name the weight or adapter of a linear of bl that the checkpoint stores in its own encoding? */
static bool replaced(const struct block *bl, const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".lora_left") && strcmp(dot, ".lora_right"))) return false;
    size_t pl = (size_t)(dot - name);
    for (int r = 0; r < LIN_COUNT; r++) {
        const char *ln = bl->lin[r].name;
        if (bl->lin[r].w && strlen(ln) == pl && !strncmp(ln, name, pl)) return true;
    }
    return false;
}

/* The in-memory f32 of a tensor the linear encodings do not cover, when the model holds one: the
** compression may have rewritten it (JSQ smooths block norms; bf16 emulation rounds every
** weight). *on_host: m->embed / m->pos_embed live on the host, the rest in backend memory. */
static const float *current_of(const struct model *m, const char *name, int b, size_t numel, bool *on_host)
{
    char want[160];
    *on_host = false;
    if (b >= 0) {
        const struct arch_names *nm = m->arch->names;
        const struct block *bl = &m->blocks[b];
        const char *norm[4] = { nm->norm1, nm->norm1, nm->norm2, nm->norm2 }, *sfx[4] = { "weight", "bias", "weight", "bias" };
        const float *v[4] = { bl->norm1_w, bl->norm1_b, bl->norm2_w, bl->norm2_b };
        char pre[64];
        m->arch->block_prefix(pre, sizeof pre, b);
        for (int k = 0; k < 4; k++) {
            if (!norm[k] || !v[k]) continue;
            snprintf(want, sizeof want, "%s%s.%s", pre, norm[k], sfx[k]);
            if (!strcmp(name, want)) return v[k];
        }
        for (int r = 0; r < LIN_COUNT; r++) {
            const struct linear *l = &bl->lin[r];
            snprintf(want, sizeof want, "%s.bias", l->name);
            if (l->b && (size_t)l->d_out == numel && !strcmp(name, want)) return l->b;
        }
        return NULL;
    }
    const struct model_config *c = &m->cfg;
    struct { const char *base, *sfx; const float *v; size_t n; bool host; } t[] = {
        { m->arch->embed, "weight", m->embed, (size_t)c->vocab * m->embed_width, true },
        { m->arch->pos_embed, "weight", m->pos_embed, m->pos_embed ? numel : 0, true },
        { m->arch->final_norm, "weight", m->final_norm_w, (size_t)m->d_head, false },
        { m->arch->final_norm, "bias", m->final_norm_b, (size_t)m->d_head, false },
        { m->arch->head, "weight", m->head_w, (size_t)c->vocab * (m->project_out ? c->embed_dim : m->d_head), false },
        { m->arch->head, "bias", m->head_b, (size_t)c->vocab, false },
        { m->arch->project_in, "weight", m->project_in, (size_t)c->hidden * c->embed_dim, false },
        { m->arch->project_out, "weight", m->project_out, (size_t)c->embed_dim * c->hidden, false },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!t[i].base || !t[i].v || t[i].n != numel) continue;
        snprintf(want, sizeof want, "%s.%s", t[i].base, t[i].sfx);
        if (!strcmp(name, want)) {
            *on_host = t[i].host;
            return t[i].v;
        }
    }
    return NULL;
}

/* Copy a tensor the linear encodings do not cover (b: its block, -1 outside). When the model in
** memory holds something else than the stored bytes, the checkpoint must hold what the
** compressed model computes with: BF16 when every value is a bf16 (bf16 emulation), else F32.
** Untouched tensors keep their stored bytes. */
static int copy_tensor(struct ckw *c, struct model *m, const struct st_tensor *t, int b)
{
    size_t n = (size_t)t->numel;
    bool host;
    const float *cur = t->dtype == DT_F32 || t->dtype == DT_BF16 || t->dtype == DT_F16 ? current_of(m, t->name, b, n, &host) : NULL;
    int rc = 0;
    if (cur) {
        float *h = malloc(sizeof *h * (n ? n : 1)), *src = malloc(sizeof *src * (n ? n : 1));
        if (!h || !src) rc = slm_err_set(c->err, SLM_ENOMEM, "checkpoint: %s: out of memory", t->name);
        if (!rc) {
            if (host) memcpy(h, cur, sizeof *h * n);
            else rc = kb_download(m->kb, h, cur, sizeof *h * n, c->err);
        }
        if (!rc) rc = st_tensor_to_f32(src, t, c->err);
        bool changed = !rc && memcmp(h, src, sizeof *h * n);
        if (changed) {
            enum dtype dt = all_bf16(h, n) ? DT_BF16 : DT_F32;
            c->mr.bytes[MEM_UNCOMPRESSED] += n * dtype_traits(dt)->size;
            rc = st_writer_add_f32(c->w, t->name, dt, t->ndim, t->shape, h, c->err);
        }
        free(h);
        free(src);
        if (rc || changed) return rc;
    }
    c->mr.bytes[MEM_UNCOMPRESSED] += t->nbytes;
    return st_writer_add(c->w, t->name, t->dtype, t->ndim, t->shape, t->data, c->err);
}

/* dir/file.tmp, fsync'd, renamed into place: a reader sees the old file or the whole new one. */
static int write_json(const char *dir, const char *file, const json_t *j, struct slm_err *err)
{
    char p[4200], tmp[4300];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) return slm_err_set(err, SLM_ENOMEM, "%s: out of memory", p);
    FILE *f = fopen(tmp, "wb");
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF && !fflush(f) && !fsync(fileno(f));
    if (f && fclose(f)) ok = false;
    free(text);
    if (!ok || rename(tmp, p)) {
        int e = errno;
        unlink(tmp);
        return slm_err_set(err, SLM_EIO, "%s: %s", p, strerror(e));
    }
    return 0;
}

/* ---- streaming writer: one shard per block ---- */

#define SHARED_SHARD "model-shared.safetensors"
#define ADAPTER_SHARD "model-adapters.safetensors"

struct checkpoint_writer {
    struct model *m;              /* borrowed */
    struct compress_opts o;       /* callbacks not used */
    char dir[4096];
    struct ckw c;
    json_t *layers;               /* P -> encoding (slim_config.json "layers") */
    json_t *files;                /* shard files written so far (abort removes them) */
    char (*prefix)[64];           /* [n_layers] tensor name prefix of each block */
    bool *written;                /* [n_layers] */
    bool *pending;                /* [n_layers x LIN_COUNT] adapters left for the adapters shard */
};

static int shard_open(struct checkpoint_writer *w, const char *file)
{
    char p[4200];
    snprintf(w->c.shard, sizeof w->c.shard, "%s", file);
    snprintf(p, sizeof p, "%s/%s", w->dir, file);
    if (json_array_append_new(w->files, json_string(file))) return slm_err_set(w->c.err, SLM_ENOMEM, "checkpoint: out of memory");
    return st_writer_open(&w->c.w, p, w->c.err);
}

static int shard_finish(struct checkpoint_writer *w)
{
    int rc = st_writer_set_metadata(w->c.w, "format", "pt", w->c.err);
    if (rc) return rc;
    rc = st_writer_finish(w->c.w, w->c.err);
    w->c.w = NULL;
    return rc;
}

/* Index of the block whose tensors name starts with, or -1 (embeddings, final norm, head). */
static int block_of(const struct checkpoint_writer *w, const char *name)
{
    for (int b = 0; b < w->m->cfg.n_layers; b++)
        if (!strncmp(name, w->prefix[b], strlen(w->prefix[b]))) return b;
    return -1;
}

/* Source tensors of block b (b = -1: outside every block) that the compression leaves as stored. */
static int copy_source(struct checkpoint_writer *w, int b)
{
    const struct st_model *st = w->m->st;
    for (size_t i = 0; i < st_model_count(st); i++) {
        const struct st_tensor *t = st_model_at(st, i);
        if (block_of(w, t->name) != b || (b >= 0 && replaced(&w->m->blocks[b], t->name))) continue;
        int rc = copy_tensor(&w->c, w->m, t, b);
        if (rc || (rc = record(&w->c, t->name))) return rc;
    }
    return 0;
}

/* The output folder must not be the model's own: its weights are read while the checkpoint is written. */
static bool same_folder(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

/* slim_config.json marks a complete checkpoint (checkpoint_is): an older one in dir goes first,
** and the new one is written last, so an interrupted write never looks complete. Shards of an
** older checkpoint go too (it may have had more blocks); other files stay. */
static int remove_stale(const char *dir, struct slm_err *err)
{
    static const char *const fixed[] = { "slim_config.json", "model.safetensors.index.json", "model.safetensors",
                                         SHARED_SHARD, ADAPTER_SHARD };
    char p[4200];
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof fixed / sizeof *fixed; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, fixed[i]);
        if (unlink(p) && errno != ENOENT) rc = slm_err_set(err, SLM_EIO, "%s: %s", p, strerror(errno));
    }
    DIR *d = rc ? NULL : opendir(dir);
    struct dirent *e;
    while (d && !rc && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "model-block-", 12) || n < 24 || strcmp(e->d_name + n - 12, ".safetensors")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) && errno != ENOENT) rc = slm_err_set(err, SLM_EIO, "%s: %s", p, strerror(errno));
    }
    if (d) closedir(d);
    return rc;
}

int checkpoint_writer_open(struct checkpoint_writer **out, const char *dir, struct model *m, const struct compress_opts *o,
                           struct slm_err *err)
{
    int nb = m->cfg.n_layers, rc;
    *out = NULL;
    if (!m->st) return slm_err_set(err, SLM_EINVAL, "checkpoint: needs the source weights");
    if (m->linear_loader) return slm_err_set(err, SLM_EUNSUPPORTED, "checkpoint: the model is itself a compressed checkpoint");
    if (strlen(dir) > 4000) return slm_err_set(err, SLM_EINVAL, "checkpoint: folder name too long");
    if (mkdir(dir, 0755) && errno != EEXIST) return slm_err_set(err, SLM_EIO, "%s: %s", dir, strerror(errno));
    if (same_folder(dir, m->dir)) return slm_err_set(err, SLM_EINVAL, "checkpoint: %s is the model's own folder", dir);
    struct checkpoint_writer *w = calloc(1, sizeof *w);
    if (!w) return slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory");
    w->m = m;
    w->o = *o;
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    w->c.err = err;
    w->c.mr.dense_bytes = st_model_nbytes(m->st);
    w->c.map = json_object();
    w->layers = json_object();
    w->files = json_array();
    w->prefix = calloc((size_t)nb, sizeof *w->prefix);
    w->written = calloc((size_t)nb, sizeof *w->written);
    w->pending = calloc((size_t)nb * LIN_COUNT, sizeof *w->pending);
    if (!w->c.map || !w->layers || !w->files || !w->prefix || !w->written || !w->pending) {
        checkpoint_writer_abort(w);
        return slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory");
    }
    for (int b = 0; b < nb; b++) m->arch->block_prefix(w->prefix[b], sizeof w->prefix[b], b);
    if ((rc = remove_stale(dir, err))) {
        checkpoint_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

int checkpoint_writer_add_block(struct checkpoint_writer *w, int b, const struct compressed_linear lin[LIN_COUNT],
                                struct slm_err *err)
{
    struct model *m = w->m;
    char file[64];
    int rc;
    w->c.err = err;
    if (b < 0 || b >= m->cfg.n_layers || w->written[b] || !m->blocks[b].loaded)
        return slm_err_set(err, SLM_EINVAL, "checkpoint: block %d is not loaded or already written", b);
    bool later = w->o.lowrank.method != LOWRANK_NONE && w->o.lowrank.quantize && w->o.separate_lora;
    snprintf(file, sizeof file, "model-block-%05d.safetensors", b);
    if ((rc = shard_open(w, file)) || (rc = copy_source(w, b))) return rc;
    for (int r = 0; r < LIN_COUNT; r++) {
        struct linear *l = &m->blocks[b].lin[r];
        if (!l->w) continue;
        /* adapters quantized after the whole model (§4.6) are not final yet */
        w->pending[b * LIN_COUNT + r] = later && l->rank && !lin[r].qpl.scale;
        if ((rc = save_linear(&w->c, m, l, &lin[r], &w->o, !w->pending[b * LIN_COUNT + r], w->layers))) return rc;
    }
    if ((rc = shard_finish(w))) return rc;
    w->written[b] = true;
    return 0;
}

int checkpoint_writer_block(struct model *m, int b, const struct compressed_linear lin[LIN_COUNT], void *payload,
                            struct slm_err *err)
{
    struct checkpoint_writer *w = payload;
    if (m != w->m) return slm_err_set(err, SLM_EINVAL, "checkpoint: block of another model");
    return checkpoint_writer_add_block(w, b, lin, err);
}

/* The adapters that waited for quantization, from res's host copies or the still-loaded block. */
static int write_pending_adapters(struct checkpoint_writer *w, const struct compress_result *res)
{
    struct model *m = w->m;
    bool any = false;
    int rc = 0;
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++) any |= w->pending[i];
    if (!any) return 0;
    if (!res || !res->lin || res->nblocks != m->cfg.n_layers)
        return slm_err_set(w->c.err, SLM_EINVAL, "checkpoint: adapters pending but no compression results");
    if ((rc = shard_open(w, ADAPTER_SHARD))) return rc;
    for (int b = 0; b < m->cfg.n_layers; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            if (!w->pending[b * LIN_COUNT + r]) continue;
            const struct compressed_linear *cl = &res->lin[b][r];
            const struct linear *l = &m->blocks[b].lin[r];
            json_t *desc = json_object_get(w->layers, l->name);
            if (cl->lora_l && cl->lora_r) {
                if (!(rc = save_adapter(&w->c, l, cl->rank, cl->lora_l, &cl->qpl, "lora_left", desc)))
                    rc = save_adapter(&w->c, l, cl->rank, cl->lora_r, &cl->qpr, "lora_right", desc);
            } else if (m->blocks[b].loaded && l->rank == cl->rank) {
                rc = save_adapters(&w->c, m->kb, l, cl, desc);
            } else {
                rc = slm_err_set(w->c.err, SLM_EINVAL, "checkpoint: adapters of %s are neither loaded nor kept", l->name);
            }
            if (rc) return rc;
        }
    return shard_finish(w);
}

int checkpoint_writer_finish(struct checkpoint_writer *w, const struct compress_result *res, const json_t *spec_raw,
                             const json_t *figures, json_t **memory, struct slm_err *err)
{
    struct model *m = w->m;
    const struct compress_opts *o = &w->o;
    json_t *cfg = NULL, *mem = NULL, *idx = NULL;
    int rc = 0;
    if (memory) *memory = NULL;
    w->c.err = err;
    for (int b = 0; b < m->cfg.n_layers; b++)
        if (!w->written[b]) { rc = slm_err_set(err, SLM_EINVAL, "checkpoint: block %d was never written", b); goto done; }
    if ((rc = write_pending_adapters(w, res))) goto done;
    /* the tensors outside the blocks last: compression may round them in memory (bf16 emulation) */
    if ((rc = shard_open(w, SHARED_SHARD)) || (rc = copy_source(w, -1)) || (rc = shard_finish(w))) goto done;
    if (m->config_json) {
        json_t *cj = json_copy(m->config_json);   /* without the encodings a reloaded checkpoint carries */
        if (!cj) { rc = slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
        json_object_del(cj, "slim_layers");
        rc = write_json(w->dir, "config.json", cj, err);
        json_decref(cj);
        if (rc) goto done;
    }
    const struct model_config *mc = &m->cfg;
    double rr = o->lowrank.method != LOWRANK_NONE ? o->lowrank.rank_ratio : 0;
    int abits = o->lowrank.quantize ? o->lowrank.bits : 16, wbits = o->quant.method != QUANT_NONE ? o->quant.bits : 16;
    double sp = o->prune.method != PRUNE_NONE ? o->prune.sparsity : 0;
    uint64_t total = 0;
    for (int k = 0; k < MEM_COUNT; k++) total += w->c.mr.bytes[k];
    mem = memreport_json(&w->c.mr, memreport_theoretical(mc->n_layers, mc->hidden, mc->ffn, mc->vocab, sp, wbits, rr, abits));
    idx = json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)total, "weight_map", w->c.map);
    cfg = json_pack("{s:s,s:s,s:O,s:O,s:O,s:O}", "format", CHECKPOINT_FORMAT, "tool", SLIMD_TOOL,
                    "spec", spec_raw ? spec_raw : json_null(), "figures", figures ? figures : json_null(),
                    "memory", mem ? mem : json_null(), "layers", w->layers);
    if (!cfg || !mem || !idx) { rc = slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
    if ((rc = write_json(w->dir, "model.safetensors.index.json", idx, err))) goto done;
    if ((rc = write_json(w->dir, "slim_config.json", cfg, err))) goto done;   /* last: the checkpoint is complete */
    json_array_clear(w->files);   /* keep them */
    if (memory) { *memory = mem; mem = NULL; }
done:
    json_decref(cfg);
    json_decref(mem);
    json_decref(idx);
    checkpoint_writer_abort(w);
    return rc;
}

void checkpoint_writer_abort(struct checkpoint_writer *w)
{
    if (!w) return;
    st_writer_abort(w->c.w);
    size_t i;
    json_t *f;
    char p[4200];
    json_array_foreach(w->files, i, f) {
        snprintf(p, sizeof p, "%s/%s", w->dir, json_string_value(f));
        unlink(p);
    }
    if (json_array_size(w->files)) {   /* an index naming removed shards would be a broken model folder */
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", w->dir);
        unlink(p);
    }
    json_decref(w->files);
    json_decref(w->c.map);
    json_decref(w->layers);
    free(w->prefix);
    free(w->written);
    free(w->pending);
    free(w);
}

int checkpoint_save(struct model *m, const struct compress_result *res, const struct compress_opts *o,
                    const char *dir, const json_t *spec_raw, const json_t *figures, json_t **memory,
                    struct slm_err *err)
{
    struct checkpoint_writer *w = NULL;
    int rc;
    if (memory) *memory = NULL;
    if (!res || !res->lin || res->nblocks != m->cfg.n_layers)
        return slm_err_set(err, SLM_EINVAL, "checkpoint: needs the compression results");
    if ((rc = checkpoint_writer_open(&w, dir, m, o, err))) return rc;
    for (int b = 0; b < m->cfg.n_layers; b++)
        if ((rc = checkpoint_writer_add_block(w, b, res->lin[b], err))) {
            checkpoint_writer_abort(w);
            return rc;
        }
    return checkpoint_writer_finish(w, res, spec_raw, figures, memory, err);
}

/* ---- loader ---- */

static int params_from(struct quant_params *p, const json_t *j, struct slm_err *err)
{
    const char *k = json_string_value(json_object_get(j, "kind"));
    memset(p, 0, sizeof *p);
    if (!k) return slm_err_set(err, SLM_EFORMAT, "slim_config.json: quantizer without kind");
    p->kind = !strcmp(k, "sf") ? QK_SF : !strcmp(k, "alpha") ? QK_ALPHA : QK_STEP;
    p->bits = (int)json_integer_value(json_object_get(j, "bits"));
    p->rows = (int)json_integer_value(json_object_get(j, "rows"));
    p->cols = (int)json_integer_value(json_object_get(j, "cols"));
    p->group_rows = (int)json_integer_value(json_object_get(j, "group_rows"));
    p->group_cols = (int)json_integer_value(json_object_get(j, "group_cols"));
    p->bf16 = json_is_true(json_object_get(j, "bf16"));
    if (p->bits < 2 || p->bits > 8 || p->rows < 1 || p->cols < 1 || p->group_rows < 1 || p->group_cols < 1)
        return slm_err_set(err, SLM_EFORMAT, "slim_config.json: bad quantizer description");
    return 0;
}

/* A stored tensor as f32 host data (caller frees), checking its element count. */
static int tensor_f32(float **out, const struct st_model *st, const char *pre, const char *sfx, size_t want,
                      struct slm_err *err)
{
    char name[160];
    snprintf(name, sizeof name, "%s.%s", pre, sfx);
    const struct st_tensor *t = st_model_find(st, name);
    *out = NULL;
    if (!t) return slm_err_set(err, SLM_ENOTFOUND, "checkpoint: tensor %s missing", name);
    if ((size_t)t->numel != want) return slm_err_set(err, SLM_ESHAPE, "checkpoint: %s has %lld values, expected %zu", name, (long long)t->numel, want);
    if (!(*out = malloc(sizeof **out * (want ? want : 1)))) return slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory");
    int rc = st_tensor_to_f32(*out, t, err);
    if (rc) { free(*out); *out = NULL; }
    return rc;
}

static const uint8_t *tensor_u8(const struct st_model *st, const char *pre, const char *sfx, size_t want, struct slm_err *err)
{
    char name[160];
    snprintf(name, sizeof name, "%s.%s", pre, sfx);
    const struct st_tensor *t = st_model_find(st, name);
    if (!t || t->dtype != DT_U8 || t->nbytes != want) {
        slm_err_set(err, t ? SLM_ESHAPE : SLM_ENOTFOUND, "checkpoint: tensor %s missing or of the wrong size", name);
        return NULL;
    }
    return t->data;
}

static int upload_new(struct kbackend *kb, float **dst, const float *h, size_t n, struct slm_err *err)
{
    int rc = kb_alloc(kb, (void **)dst, sizeof *h * n, err);
    if (!rc && (rc = kb_upload(kb, *dst, h, sizeof *h * n, err))) { kb_release(kb, *dst); *dst = NULL; }
    return rc;
}

static int load_adapter(struct model *m, struct linear *l, const json_t *desc, const char *which, float **dst,
                        struct slm_err *err)
{
    bool left = !strcmp(which, "lora_left");
    int rows = left ? l->d_in : l->rank, cols = left ? l->rank : l->d_out, rc;
    size_t n = (size_t)rows * cols;
    json_t *qj = json_object_get(desc, which);
    float *h = NULL, *scale = NULL;
    if (!qj) {
        if ((rc = tensor_f32(&h, m->st, l->name, which, n, err))) return rc;
    } else {
        struct quant_params p;
        char sfx[32];
        int8_t *codes = malloc(n);
        if ((rc = params_from(&p, qj, err))) { free(codes); return rc; }
        snprintf(sfx, sizeof sfx, "%s.scale", which);
        rc = tensor_f32(&scale, m->st, l->name, sfx, (size_t)p.rows * p.cols, err);
        snprintf(sfx, sizeof sfx, "%s.q", which);
        const uint8_t *pk = rc ? NULL : tensor_u8(m->st, l->name, sfx, codes_bytes(n, p.bits), err);
        h = malloc(sizeof *h * n);
        if (!rc && (!pk || !codes || !h)) rc = pk ? slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory") : -SLM_EFORMAT;
        if (!rc) {
            for (size_t i = 0; i < n; i++) codes[i] = code_at(pk, i, p.bits);
            p.scale = scale;
            rc = quant_dequant_host(h, codes, rows, cols, &p, NULL, err);
            float sr = sqrtf((float)l->rank);
            for (size_t i = 0; !rc && i < n; i++) h[i] = h[i] / sr;
        }
        free(codes);
        free(scale);
    }
    if (!rc) rc = upload_new(m->kb, dst, h, n, err);
    free(h);
    return rc;
}

static int ckpt_linear(struct model *m, int block, enum lin_role role, struct linear *l, void *payload, struct slm_err *err)
{
    const json_t *layers = payload;
    const json_t *desc = json_object_get(layers, l->name);
    (void)block;
    (void)role;
    if (!desc) return slm_err_set(err, SLM_ENOTFOUND, "checkpoint: no encoding for %s", l->name);
    const char *enc = json_string_value(json_object_get(desc, "enc"));
    int d_out = l->d_out, d_in = l->d_in, rc = 0;
    int N = (int)json_integer_value(json_object_get(desc, "n")), M = (int)json_integer_value(json_object_get(desc, "m"));
    size_t n = (size_t)d_out * d_in;
    bool nm = enc && !strncmp(enc, "nm_", 3), q = enc && (!strcmp(enc, "nm_q") || !strcmp(enc, "dense_q"));
    if (!enc || (nm && (M < 2 || N < 1 || N >= M || d_in % M)))
        return slm_err_set(err, SLM_EFORMAT, "checkpoint: bad encoding for %s", l->name);
    size_t nk = nm ? n / M * N : n;
    float *w = q ? NULL : calloc(n, sizeof *w), *vals = NULL, *scale = NULL, *cs = NULL;
    int8_t *codes = q ? calloc(n, 1) : NULL;
    size_t *pos = nm ? malloc(sizeof *pos * nk) : NULL;
    if ((!q && !w) || (q && !codes) || (nm && !pos)) { rc = slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory"); goto done; }
    if (nm) {
        int ib = index_bits(M);
        const uint8_t *idx = tensor_u8(m->st, l->name, "idx", (nk * (size_t)ib + 7) / 8, err);
        if (!idx) { rc = -SLM_EFORMAT; goto done; }
        for (size_t k = 0; k < nk; k++) {
            size_t row = k / ((size_t)d_in / M * N), g = (k % ((size_t)d_in / M * N)) / N;
            unsigned off = bits_get(idx, k, ib);
            if (off >= (unsigned)M) { rc = slm_err_set(err, SLM_EFORMAT, "checkpoint: %s: N:M index out of range", l->name); goto done; }
            pos[k] = row * d_in + g * M + off;
        }
    }
    if (q) {
        struct quant_params p;
        if ((rc = params_from(&p, json_object_get(desc, "quant"), err))) goto done;
        const uint8_t *pk = tensor_u8(m->st, l->name, "q", codes_bytes(nk, p.bits), err);
        if (!pk) { rc = -SLM_EFORMAT; goto done; }
        for (size_t k = 0; k < nk; k++) codes[nm ? pos[k] : k] = code_at(pk, k, p.bits);
        if ((rc = tensor_f32(&scale, m->st, l->name, "scale", (size_t)p.rows * p.cols, err))) goto done;
        if (json_is_true(json_object_get(desc, "colscale")) && (rc = tensor_f32(&cs, m->st, l->name, "colscale", (size_t)d_in, err)))
            goto done;
        p.scale = scale;
        /* dequantized where the weight goes: on a GPU only the codes (a byte per weight) cross */
        if ((rc = kb_alloc(m->kb, (void **)&l->w, sizeof *w * n, err))) goto done;
        if ((rc = quant_dequant(m->kb, l->w, codes, d_out, d_in, &p, cs, err))) {
            kb_release(m->kb, l->w);
            l->w = NULL;
            goto done;
        }
    } else {
        if ((rc = tensor_f32(&vals, m->st, l->name, "v", nk, err))) goto done;
        for (size_t k = 0; k < nk; k++) w[nm ? pos[k] : k] = vals[k];
        if ((rc = upload_new(m->kb, &l->w, w, n, err))) goto done;
    }
    l->rank = (int)json_integer_value(json_object_get(desc, "rank"));
    if (l->rank < 0 || l->rank > (d_out < d_in ? d_out : d_in)) { rc = slm_err_set(err, SLM_EFORMAT, "checkpoint: %s: rank", l->name); goto done; }
    if (l->rank && ((rc = load_adapter(m, l, desc, "lora_left", &l->lora_l, err)) ||
                    (rc = load_adapter(m, l, desc, "lora_right", &l->lora_r, err))))
        goto done;
done:
    free(w);
    free(vals);
    free(scale);
    free(cs);
    free(codes);
    free(pos);
    return rc;
}

bool checkpoint_is(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/slim_config.json", dir);
    json_t *j = json_load_file(p, 0, NULL);
    bool ok = j && !strcmp(json_string_value(json_object_get(j, "format")) ? json_string_value(json_object_get(j, "format")) : "", CHECKPOINT_FORMAT);
    json_decref(j);
    return ok;
}

int checkpoint_open(struct model **out, const char *dir, struct kbackend *kb, int flags, struct slm_err *err)
{
    char p[4200];
    json_error_t je;
    struct model *m = NULL;
    int rc;
    *out = NULL;
    snprintf(p, sizeof p, "%s/slim_config.json", dir);
    json_t *cfg = json_load_file(p, 0, &je);
    if (!cfg) return slm_err_set(err, SLM_EFORMAT, "%s:%d: %s", p, je.line, je.text);
    const char *fmt = json_string_value(json_object_get(cfg, "format"));
    json_t *layers = json_object_get(cfg, "layers");
    if (!fmt || strcmp(fmt, CHECKPOINT_FORMAT) || !json_is_object(layers)) {
        json_decref(cfg);
        return slm_err_set(err, SLM_EFORMAT, "%s: not a %s checkpoint", p, CHECKPOINT_FORMAT);
    }
    if ((rc = model_open(&m, dir, kb, MODEL_LAZY_BLOCKS, err))) { json_decref(cfg); return rc; }
    /* a spec with activation quantization evaluates the reloaded model the same way */
    json_t *q = json_object_get(json_object_get(cfg, "spec"), "quantization");
    const char *in = json_string_value(json_object_get(q, "input"));
    if (in && (rc = model_set_input_quant(m, in, (int)json_integer_value(json_object_get(q, "input_bits")),
                                          (int)json_integer_value(json_object_get(q, "input_group_size")), err))) {
        json_decref(cfg);
        model_free(m);
        return rc;
    }
    /* keep the encodings alive with the model: store them inside its config JSON */
    if (!m->config_json || json_object_set(m->config_json, "slim_layers", layers)) {
        json_decref(cfg);
        model_free(m);
        return slm_err_set(err, SLM_ENOMEM, "checkpoint: out of memory");
    }
    json_decref(cfg);
    m->linear_loader = ckpt_linear;
    m->linear_loader_payload = json_object_get(m->config_json, "slim_layers");
    if (!(flags & MODEL_LAZY_BLOCKS))
        for (int b = 0; b < m->cfg.n_layers; b++)
            if ((rc = model_block_load(m, b, err))) { model_free(m); return rc; }
    *out = m;
    return 0;
}
