/*
** core/safetensors.c: read-only access to .safetensors files, a writer, and model folders.
** Layout: u64 LE header length N, N bytes of JSON header, raw little-endian tensor bytes.
** safetensors_open() maps the file and checks EVERY entry (dtype, shape, byte range inside the
** data region, no overlap, no hole) before any tensor is handed out, so no caller re-checks
** bounds. Ownership: struct safetensors owns the mapping and the names; st_tensor views are
** borrowed and die with safetensors_close().
*/
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

struct safetensors {
    const uint8_t *base;       /* file image */
    size_t len;
    void *map;                 /* mmap'd region (NULL for open_mem) */
    size_t map_len;
    struct st_tensor *t;       /* sorted by name for lookup */
    size_t n;
    char *names;               /* all names, NUL-separated (owned) */
    json_t *meta;              /* "__metadata__" object or NULL (owned) */
};

/* ---- reader ---- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

struct range { uint64_t b, e; const char *name; };

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

/* A non-negative integer that fits in 63 bits, or -1. */
static int64_t json_u63(const json_t *v)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

static int parse_entry(struct st_tensor *t, struct range *r, const char *name, const json_t *v,
                       uint64_t data_len, struct slm_err *err)
{
    if (!json_is_object(v)) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': entry is not an object", name);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': unknown field '%.40s'", name, key);
    }
    const char *dt = json_string_value(json_object_get(v, "dtype"));
    const json_t *shape = json_object_get(v, "shape"), *offs = json_object_get(v, "data_offsets");
    if (!dt) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': dtype missing or not a string", name);
    if (dtype_from_name(&t->dtype, dt))
        return slm_err_set(err, SLM_EDTYPE, "tensor '%.80s': unknown dtype '%.20s'", name, dt);
    if (!json_is_array(shape)) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': shape missing or not an array", name);
    if (json_array_size(shape) > ST_MAX_DIMS)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': %zu dims is over the limit of %d", name,
                           json_array_size(shape), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        int64_t d = json_u63(json_array_get(shape, i));
        if (d < 0) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': dim %d is not a non-negative integer", name, i);
        t->shape[i] = d;
        if (d && numel > UINT64_MAX / (uint64_t)d)
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': element count overflows", name);
        numel *= (uint64_t)d;
    }
    size_t esz = dtype_traits(t->dtype)->size;
    if (numel > (uint64_t)INT64_MAX / esz) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': byte size overflows", name);
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets must be [begin, end]", name);
    int64_t b = json_u63(json_array_get(offs, 0)), e = json_u63(json_array_get(offs, 1));
    if (b < 0 || e < 0) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets are not non-negative integers", name);
    if (e < b) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets end %lld before begin %lld", name, (long long)e, (long long)b);
    if ((uint64_t)e > data_len)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets end %lld past the data region (%llu bytes)", name,
                           (long long)e, (unsigned long long)data_len);
    if ((uint64_t)(e - b) != numel * esz)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': %lld bytes but shape x dtype needs %llu", name,
                           (long long)(e - b), (unsigned long long)(numel * esz));
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(e - b);
    t->data = (const void *)(uintptr_t)b;   /* an offset until the data region is known */
    r->b = (uint64_t)b;
    r->e = (uint64_t)e;
    return 0;
}

static int parse_header(struct safetensors *st, struct slm_err *err)
{
    if (st->len < 8) return slm_err_set(err, SLM_EFORMAT, "file is %zu bytes, shorter than the 8-byte header length", st->len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | st->base[i];
    if (hl == 0) return slm_err_set(err, SLM_EFORMAT, "header length is 0");
    if (hl > ST_MAX_HEADER) return slm_err_set(err, SLM_EFORMAT, "header length %llu exceeds the %u byte cap", (unsigned long long)hl, ST_MAX_HEADER);
    if (hl > st->len - 8)
        return slm_err_set(err, SLM_EFORMAT, "header length %llu exceeds file size %zu", (unsigned long long)hl, st->len);
    const char *h = (const char *)st->base + 8;
    if (h[0] != '{') return slm_err_set(err, SLM_EFORMAT, "header does not start with '{'");
    json_error_t je;
    json_t *root = json_loadb(h, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
    if (!root) return slm_err_set(err, SLM_EFORMAT, "header JSON: %s (column %d)", je.text, je.column);
    int rc = 0;
    struct range *rg = NULL;
    uint64_t data_len = st->len - 8 - hl;
    if (!json_is_object(root)) { rc = slm_err_set(err, SLM_EFORMAT, "header is not a JSON object"); goto done; }
    size_t cap = json_object_size(root), names_len = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) names_len += strlen(key) + 1;
    st->t = calloc(cap ? cap : 1, sizeof *st->t);
    rg = calloc(cap ? cap : 1, sizeof *rg);
    st->names = malloc(names_len ? names_len : 1);
    if (!st->t || !rg || !st->names) { rc = slm_err_set(err, SLM_ENOMEM, "header: %zu entries", cap); goto done; }
    char *np = st->names;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) { rc = slm_err_set(err, SLM_EFORMAT, "__metadata__ is not an object"); goto done; }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) { rc = slm_err_set(err, SLM_EFORMAT, "__metadata__ value of '%.40s' is not a string", mk); goto done; }
            }
            st->meta = json_incref(v);
            continue;
        }
        if (!key[0]) { rc = slm_err_set(err, SLM_EFORMAT, "tensor with an empty name"); goto done; }
        struct st_tensor *t = &st->t[st->n];
        size_t kl = strlen(key) + 1;
        memcpy(np, key, kl);
        t->name = np;
        np += kl;
        if ((rc = parse_entry(t, &rg[st->n], t->name, v, data_len, err))) goto done;
        rg[st->n].name = t->name;
        st->n++;
    }
    /* the byte ranges must tile the data region exactly: sorted, no overlap, no hole */
    qsort(rg, st->n, sizeof *rg, cmp_range);
    uint64_t at = 0;
    for (size_t i = 0; i < st->n; i++) {
        if (rg[i].b < at) { rc = slm_err_set(err, SLM_EFORMAT, "tensor '%.80s' overlaps the previous tensor", rg[i].name); goto done; }
        if (rg[i].b > at) { rc = slm_err_set(err, SLM_EFORMAT, "hole of %llu bytes before tensor '%.80s'", (unsigned long long)(rg[i].b - at), rg[i].name); goto done; }
        at = rg[i].e;
    }
    if (at != data_len) { rc = slm_err_set(err, SLM_EFORMAT, "%llu trailing bytes after the last tensor", (unsigned long long)(data_len - at)); goto done; }
    const uint8_t *data = st->base + 8 + hl;
    for (size_t i = 0; i < st->n; i++) st->t[i].data = data + (uintptr_t)st->t[i].data;
    qsort(st->t, st->n, sizeof *st->t, cmp_name);
done:
    free(rg);
    json_decref(root);
    return rc;
}

int safetensors_open_mem(struct safetensors **out, const void *buf, size_t len, struct slm_err *err)
{
    struct safetensors *st = calloc(1, sizeof *st);
    if (!st) return slm_err_set(err, SLM_ENOMEM, "safetensors: out of memory");
    st->base = buf;
    st->len = len;
    int rc = parse_header(st, err);
    if (rc) { safetensors_close(st); return rc; }
    *out = st;
    return 0;
}

int safetensors_open(struct safetensors **out, const char *path, struct slm_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return slm_err_set(err, errno == ENOENT ? SLM_ENOTFOUND : SLM_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) { close(fd); return slm_err_set(err, SLM_EIO, "%s: not a regular file", path); }
    size_t len = (size_t)sb.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) { close(fd); return slm_err_set(err, SLM_EIO, "%s: mmap: %s", path, strerror(errno)); }
    }
    close(fd);
    struct safetensors *st = calloc(1, sizeof *st);
    if (!st) { if (map) munmap(map, len); return slm_err_set(err, SLM_ENOMEM, "safetensors: out of memory"); }
    st->map = map;
    st->map_len = len;
    st->base = map;
    st->len = len;
    int rc = parse_header(st, err);
    if (rc) {
        /* prefix the file name once: "model.safetensors: tensor 'x': ..." reads better than a bare reason */
        if (err) {
            char msg[sizeof err->msg + 4200];
            snprintf(msg, sizeof msg, "%s: %s", path, err->msg);
            memcpy(err->msg, msg, sizeof err->msg - 1);
            err->msg[sizeof err->msg - 1] = 0;
        }
        safetensors_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

void safetensors_close(struct safetensors *st)
{
    if (!st) return;
    if (st->map) munmap(st->map, st->map_len);
    json_decref(st->meta);
    free(st->t);
    free(st->names);
    free(st);
}

size_t safetensors_count(const struct safetensors *st) { return st->n; }
const struct st_tensor *safetensors_at(const struct safetensors *st, size_t i) { return i < st->n ? &st->t[i] : NULL; }

const struct st_tensor *safetensors_find(const struct safetensors *st, const char *name)
{
    struct st_tensor key = { .name = name };
    return bsearch(&key, st->t, st->n, sizeof *st->t, cmp_name);
}

const char *safetensors_metadata(const struct safetensors *st, const char *key)
{
    return st->meta ? json_string_value(json_object_get(st->meta, key)) : NULL;
}

int st_tensor_to_f32(float *dst, const struct st_tensor *t, struct slm_err *err)
{
    const struct dtype_traits *tr = dtype_traits(t->dtype);
    if (!tr->to_f32) return slm_err_set(err, SLM_EDTYPE, "tensor '%.80s': %s does not convert to float", t->name, tr->name);
    /* mapped data may be unaligned for its type: convert through an aligned bounce buffer */
    enum { CH = 4096 };
    uint64_t bounce[CH];
    size_t per = sizeof bounce / tr->size;
    for (size_t i = 0; i < (size_t)t->numel; i += per) {
        size_t n = (size_t)t->numel - i < per ? (size_t)t->numel - i : per;
        memcpy(bounce, (const uint8_t *)t->data + i * tr->size, n * tr->size);
        tr->to_f32(dst + i, bounce, n);
    }
    return 0;
}

/* ---- writer ---- */

struct st_wentry {
    char *name;
    enum dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    void *data;
    size_t nbytes;
};

struct st_writer {
    char *path, *tmp;
    struct st_wentry *e;
    size_t n, cap;
    json_t *meta;
};

int st_writer_open(struct st_writer **out, const char *path, struct slm_err *err)
{
    struct st_writer *w = calloc(1, sizeof *w);
    size_t pl = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(pl + 5)) || !(w->meta = json_object())) {
        st_writer_abort(w);
        return slm_err_set(err, SLM_ENOMEM, "%s: out of memory", path);
    }
    snprintf(w->tmp, pl + 5, "%s.tmp", path);
    *out = w;
    return 0;
}

static int writer_push(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                       struct st_wentry **out, struct slm_err *err)
{
    if (!name[0] || !strcmp(name, "__metadata__")) return slm_err_set(err, SLM_EINVAL, "writer: invalid tensor name '%s'", name);
    if (ndim < 0 || ndim > ST_MAX_DIMS) return slm_err_set(err, SLM_EINVAL, "writer: %s has %d dims", name, ndim);
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) return slm_err_set(err, SLM_ECONFLICT, "writer: tensor %s added twice", name);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return slm_err_set(err, SLM_EINVAL, "writer: %s has a negative dim", name);
        if (shape[i] && numel > UINT64_MAX / (uint64_t)shape[i]) return slm_err_set(err, SLM_EINVAL, "writer: %s too large", name);
        numel *= (uint64_t)shape[i];
    }
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 64;
        struct st_wentry *ne = realloc(w->e, nc * sizeof *ne);
        if (!ne) return slm_err_set(err, SLM_ENOMEM, "writer: out of memory");
        w->e = ne;
        w->cap = nc;
    }
    struct st_wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->nbytes = (size_t)numel * dtype_traits(dt)->size;
    e->name = strdup(name);
    e->data = malloc(e->nbytes ? e->nbytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return slm_err_set(err, SLM_ENOMEM, "writer: %s: %zu bytes", name, e->nbytes);
    }
    e->dt = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    w->n++;
    *out = e;
    return 0;
}

int st_writer_add(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape, const void *data,
                  struct slm_err *err)
{
    struct st_wentry *e;
    int rc = writer_push(w, name, dt, ndim, shape, &e, err);
    if (!rc && e->nbytes) memcpy(e->data, data, e->nbytes);
    return rc;
}

int st_writer_add_f32(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                      const float *data, struct slm_err *err)
{
    if (!dtype_traits(dt)->from_f32) return slm_err_set(err, SLM_EDTYPE, "writer: %s: cannot store floats as %s", name, dtype_traits(dt)->name);
    struct st_wentry *e;
    int rc = writer_push(w, name, dt, ndim, shape, &e, err);
    if (!rc) dtype_traits(dt)->from_f32(e->data, data, e->nbytes / dtype_traits(dt)->size);
    return rc;
}

int st_writer_set_metadata(struct st_writer *w, const char *key, const char *value, struct slm_err *err)
{
    if (json_object_set_new(w->meta, key, json_string(value))) return slm_err_set(err, SLM_EINVAL, "writer: metadata %s", key);
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Tensors are laid out in insertion order; the header lists them sorted by name (jansson's
** JSON_SORT_KEYS), as the reference writer's output does. Header padded with spaces to 8 bytes. */
int st_writer_finish(struct st_writer *w, struct slm_err *err)
{
    int rc = 0, fd = -1;
    char *hdr = NULL;
    json_t *root = json_object();
    if (!root) { rc = slm_err_set(err, SLM_ENOMEM, "writer: header"); goto done; }
    if (json_object_size(w->meta)) json_object_set(root, "__metadata__", w->meta);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        struct st_wentry *e = &w->e[i];
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        json_object_set_new(root, e->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", dtype_traits(e->dt)->name, "shape", shape, "data_offsets",
                                      (json_int_t)off, (json_int_t)(off + e->nbytes)));
        off += e->nbytes;
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    if (!hdr) { rc = slm_err_set(err, SLM_ENOMEM, "writer: header text"); goto done; }
    size_t hl = strlen(hdr), pad = (8 - hl % 8) % 8;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)(hl + pad) >> (8 * i));
    fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    bool ok = !write_all(fd, len8, 8) && !write_all(fd, hdr, hl) && !write_all(fd, "        ", pad);
    for (size_t i = 0; ok && i < w->n; i++) ok = !write_all(fd, w->e[i].data, w->e[i].nbytes);
    if (!ok || fsync(fd)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    if (close(fd)) { fd = -1; rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    fd = -1;
    if (rename(w->tmp, w->path)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->path, strerror(errno)); goto done; }
done:
    if (fd >= 0) close(fd);
    free(hdr);
    json_decref(root);
    if (rc) unlink(w->tmp);
    free(w->tmp);
    w->tmp = NULL;
    st_writer_abort(w);
    return rc;
}

void st_writer_abort(struct st_writer *w)
{
    if (!w) return;
    if (w->tmp) unlink(w->tmp);
    for (size_t i = 0; i < w->n; i++) { free(w->e[i].name); free(w->e[i].data); }
    free(w->e);
    free(w->path);
    free(w->tmp);
    json_decref(w->meta);
    free(w);
}

/* ---- model folder ---- */

struct st_model {
    struct safetensors **shards;
    size_t nshards;
    const struct st_tensor **all;   /* every tensor, sorted by name */
    size_t n;
};

static int cmp_tptr(const void *a, const void *b)
{
    return strcmp((*(const struct st_tensor *const *)a)->name, (*(const struct st_tensor *const *)b)->name);
}

/* A shard name must stay inside the model folder: a plain file name. */
static int shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static int model_add_shard(struct st_model *m, const char *dir, const char *file, struct slm_err *err)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    struct safetensors **ns = realloc(m->shards, (m->nshards + 1) * sizeof *ns);
    if (!ns) return slm_err_set(err, SLM_ENOMEM, "model: shards");
    m->shards = ns;
    int rc = safetensors_open(&m->shards[m->nshards], path, err);
    if (!rc) m->nshards++;
    return rc;
}

int st_model_open(struct st_model **out, const char *dir, struct slm_err *err)
{
    struct st_model *m = calloc(1, sizeof *m);
    char path[4400], *buf = NULL;
    size_t len;
    json_t *idx = NULL, *opened = json_object();
    int rc;
    if (!m || !opened) { free(m); json_decref(opened); return slm_err_set(err, SLM_ENOMEM, "model: out of memory"); }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    rc = file_read_all(path, 64u << 20, &buf, &len, err);
    if (rc == -SLM_ENOTFOUND) {
        slm_err_clear(err);
        if ((rc = model_add_shard(m, dir, "model.safetensors", err))) goto fail;
    } else if (rc) {
        goto fail;
    } else {
        json_error_t je;
        idx = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
        if (!idx) { rc = slm_err_set(err, SLM_EFORMAT, "%s: %s", path, je.text); goto fail; }
        json_t *wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm)) { rc = slm_err_set(err, SLM_EFORMAT, "%s: weight_map missing or not an object", path); goto fail; }
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v) {
            const char *file = json_string_value(v);
            if (!file || !shard_name_ok(file)) {
                rc = slm_err_set(err, SLM_EFORMAT, "%s: shard name for '%.80s' is not a plain file name in the folder", path, k);
                goto fail;
            }
            if (!json_object_get(opened, file)) { /* each shard once, however many tensors name it */
                json_object_set_new(opened, file, json_true());
                if ((rc = model_add_shard(m, dir, file, err))) goto fail;
            }
        }
    }
    for (size_t i = 0; i < m->nshards; i++) m->n += safetensors_count(m->shards[i]);
    m->all = malloc((m->n ? m->n : 1) * sizeof *m->all);
    if (!m->all) { rc = slm_err_set(err, SLM_ENOMEM, "model: index"); goto fail; }
    size_t k = 0;
    for (size_t i = 0; i < m->nshards; i++)
        for (size_t j = 0; j < safetensors_count(m->shards[i]); j++) m->all[k++] = safetensors_at(m->shards[i], j);
    qsort(m->all, m->n, sizeof *m->all, cmp_tptr);
    for (size_t i = 1; i < m->n; i++)
        if (!strcmp(m->all[i]->name, m->all[i - 1]->name)) {
            rc = slm_err_set(err, SLM_EFORMAT, "%s: tensor '%.80s' appears in two shards", dir, m->all[i]->name);
            goto fail;
        }
    if (idx) { /* every tensor the index names must be where it says */
        const char *name;
        json_t *v;
        json_object_foreach(json_object_get(idx, "weight_map"), name, v) {
            if (!st_model_find(m, name)) { rc = slm_err_set(err, SLM_EFORMAT, "%s: tensor '%.80s' listed in the index is in no shard", dir, name); goto fail; }
        }
    }
    json_decref(idx);
    json_decref(opened);
    free(buf);
    *out = m;
    return 0;
fail:
    json_decref(idx);
    json_decref(opened);
    free(buf);
    st_model_close(m);
    return rc;
}

void st_model_close(struct st_model *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->nshards; i++) safetensors_close(m->shards[i]);
    free(m->shards);
    free(m->all);
    free(m);
}

const struct st_tensor *st_model_find(const struct st_model *m, const char *name)
{
    struct st_tensor key = { .name = name };
    const struct st_tensor *kp = &key, **hit = bsearch(&kp, m->all, m->n, sizeof *m->all, cmp_tptr);
    return hit ? *hit : NULL;
}

size_t st_model_count(const struct st_model *m) { return m->n; }
const struct st_tensor *st_model_at(const struct st_model *m, size_t i) { return i < m->n ? m->all[i] : NULL; }

uint64_t st_model_nbytes(const struct st_model *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->n; i++) n += m->all[i]->nbytes;
    return n;
}
