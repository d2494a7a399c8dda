/*
** core/safetensors.c: read-only access to .safetensors files, a writer, and model folders.
** Layout: u64 LE header length N, N bytes of JSON header, raw little-endian tensor bytes.
** safetensors_open() maps the file and checks EVERY entry (dtype, shape, byte range inside the
** data region, no overlap, no hole) before any tensor is handed out, so no caller re-checks
** bounds. Ownership: struct safetensors owns the mapping and the names; st_tensor views are
** borrowed and die with safetensors_close().
** Writer: the reference writer's layout (tensors by dtype width descending, then name; header
** compact, "__metadata__" first, entries in data order, padded with spaces to 8 bytes), so files
** match what transformers saves byte for byte and every tensor is aligned in a mapping.
** Model folders: the index is checked entry by entry against the shard it names; tensors a shard
** holds beyond the index are kept (transformers loads whole shards too).
*/
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

_Static_assert(SIZE_MAX >= INT64_MAX, "tensor byte sizes are checked against INT64_MAX and stored in size_t");

struct safetensors {
    const uint8_t *base;              /* file image */
    size_t len;
    void *map;                        /* mmap'd region (NULL for open_mem) */
    size_t map_len;
    struct st_tensor *t;              /* file order: sorted by data offset */
    const struct st_tensor **byname;  /* the same tensors sorted by name, for lookup */
    size_t n;
    char *names;                      /* all names, NUL-separated (owned) */
    json_t *meta;                     /* "__metadata__" object or NULL (owned) */
};

/* ---- reader: header validation ---- */

static int cmp_tptr(const void *a, const void *b)
{
    return strcmp((*(const struct st_tensor *const *)a)->name, (*(const struct st_tensor *const *)b)->name);
}

/* While parsing, t->data holds the byte offset inside the data region (the base is not yet
** known to be valid). Order: offset, then size, so zero-byte tensors sort before their neighbour. */
static int cmp_offset(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    uintptr_t xb = (uintptr_t)x->data, yb = (uintptr_t)y->data;
    if (xb != yb) return xb < yb ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A non-negative JSON integer (jansson integers are int64), or -1. */
static int64_t json_nonneg(const json_t *v)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

static int parse_shape(struct st_tensor *t, const char *name, const json_t *shape, struct slm_err *err)
{
    if (!json_is_array(shape)) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': shape missing or not an array", name);
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': %zu dims is over the limit of %d", name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        const json_t *v = json_array_get(shape, (size_t)i);
        int64_t d = json_nonneg(v);
        if (d < 0)
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': dim %d is %s", name, i,
                               json_is_integer(v) ? "negative" : "not an integer");
        t->shape[i] = d;
        if (d && numel > UINT64_MAX / (uint64_t)d)
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': element count overflows", name);
        numel *= (uint64_t)d;
    }
    size_t esz = dtype_traits(t->dtype)->size;
    if (numel > (uint64_t)INT64_MAX / esz)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': byte size (%" PRIu64 " elements x %zu) overflows", name,
                           numel, esz);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(numel * esz);
    return 0;
}

static int parse_entry(struct st_tensor *t, const char *name, const json_t *v, uint64_t data_len, struct slm_err *err)
{
    if (!json_is_object(v)) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': entry is not an object", name);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': unknown field '%.40s'", name, key);
    }
    const char *dt = json_string_value(json_object_get(v, "dtype"));
    if (!dt) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': dtype missing or not a string", name);
    if (dtype_from_name(&t->dtype, dt))
        return slm_err_set(err, SLM_EDTYPE, "tensor '%.80s': unknown dtype '%.20s'", name, dt);
    int rc = parse_shape(t, name, json_object_get(v, "shape"), err);
    if (rc) return rc;
    const json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets missing or not [begin, end]", name);
    int64_t b = json_nonneg(json_array_get(offs, 0)), e = json_nonneg(json_array_get(offs, 1));
    if (b < 0 || e < 0) return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets are not non-negative integers", name);
    if (e < b)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets end %" PRId64 " before begin %" PRId64, name, e, b);
    if ((uint64_t)e > data_len)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': data_offsets end %" PRId64 " past the data region (%" PRIu64 " bytes)",
                           name, e, data_len);
    if ((uint64_t)(e - b) != (uint64_t)t->nbytes)
        return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s': byte range of %" PRId64 " bytes but shape x dtype needs %zu",
                           name, e - b, t->nbytes);
    t->data = (const void *)(uintptr_t)b;   /* an offset until every range is checked */
    return 0;
}

static int parse_metadata(struct safetensors *st, json_t *v, struct slm_err *err)
{
    if (!json_is_object(v)) return slm_err_set(err, SLM_EFORMAT, "__metadata__ is not an object");
    const char *mk;
    json_t *mv;
    json_object_foreach(v, mk, mv) {
        if (!json_is_string(mv)) return slm_err_set(err, SLM_EFORMAT, "__metadata__ value of '%.40s' is not a string", mk);
    }
    st->meta = json_incref(v);
    return 0;
}

/* The byte ranges, sorted by offset, must tile [0, data_len) exactly: no overlap, no hole. */
static int check_tiling(const struct safetensors *st, uint64_t data_len, struct slm_err *err)
{
    uint64_t at = 0;
    for (size_t i = 0; i < st->n; i++) {
        uint64_t b = (uintptr_t)st->t[i].data;
        if (b < at)
            return slm_err_set(err, SLM_EFORMAT, "tensor '%.80s' overlaps tensor '%.80s'", st->t[i].name, st->t[i - 1].name);
        if (b > at)
            return slm_err_set(err, SLM_EFORMAT, "hole of %" PRIu64 " bytes before tensor '%.80s'", b - at, st->t[i].name);
        at = b + st->t[i].nbytes;
    }
    if (at != data_len)
        return slm_err_set(err, SLM_EFORMAT, "%" PRIu64 " trailing bytes after the last tensor are not covered by any tensor",
                           data_len - at);
    return 0;
}

static int parse_header(struct safetensors *st, struct slm_err *err)
{
    if (st->len < 8) return slm_err_set(err, SLM_EFORMAT, "file is %zu bytes, shorter than the 8-byte header length", st->len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | st->base[i];
    if (hl == 0) return slm_err_set(err, SLM_EFORMAT, "header length is 0");
    if (hl > ST_MAX_HEADER)
        return slm_err_set(err, SLM_EFORMAT, "header length %" PRIu64 " exceeds the %u byte cap", hl, ST_MAX_HEADER);
    if (hl > st->len - 8)   /* st->len >= 8 checked above */
        return slm_err_set(err, SLM_EFORMAT, "header length %" PRIu64 " exceeds file size %zu", hl, st->len);
    const char *h = (const char *)st->base + 8;
    if (h[0] != '{') return slm_err_set(err, SLM_EFORMAT, "header does not start with '{'");
    json_error_t je;
    json_t *root = json_loadb(h, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
    if (!root) return slm_err_set(err, SLM_EFORMAT, "header JSON: %s (at byte %d)", je.text, je.position);
    int rc = 0;
    uint64_t data_len = st->len - 8 - hl;
    if (!json_is_object(root)) { rc = slm_err_set(err, SLM_EFORMAT, "header is not a JSON object"); goto done; }
    size_t cap = json_object_size(root), names_len = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) names_len += strlen(key) + 1;
    st->t = calloc(cap ? cap : 1, sizeof *st->t);
    st->byname = calloc(cap ? cap : 1, sizeof *st->byname);
    st->names = malloc(names_len ? names_len : 1);
    if (!st->t || !st->byname || !st->names) { rc = slm_err_set(err, SLM_ENOMEM, "header: %zu entries", cap); goto done; }
    char *np = st->names;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if ((rc = parse_metadata(st, v, err))) goto done;
            continue;
        }
        if (!key[0]) { rc = slm_err_set(err, SLM_EFORMAT, "tensor with an empty name"); goto done; }
        struct st_tensor *t = &st->t[st->n];
        size_t kl = strlen(key) + 1;
        memcpy(np, key, kl);
        t->name = np;
        np += kl;
        if ((rc = parse_entry(t, t->name, v, data_len, err))) goto done;
        st->n++;
    }
    qsort(st->t, st->n, sizeof *st->t, cmp_offset);
    if ((rc = check_tiling(st, data_len, err))) goto done;
    const uint8_t *data = st->base + 8 + hl;
    for (size_t i = 0; i < st->n; i++) {
        st->t[i].data = data + (uintptr_t)st->t[i].data;
        st->byname[i] = &st->t[i];
    }
    qsort(st->byname, st->n, sizeof *st->byname, cmp_tptr);
done:
    json_decref(root);
    return rc;
}

/* ---- reader: open, lookup, conversion ---- */

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
    bool had_err = err && err->rc != SLM_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return slm_err_set(err, errno == ENOENT ? SLM_ENOTFOUND : SLM_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) { close(fd); return slm_err_set(err, SLM_EIO, "%s: not a regular file", path); }
    size_t len = (size_t)sb.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return slm_err_set(err, SLM_EIO, "%s: mmap: %s", path, strerror(e));
        }
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
        /* prefix the file name once: "x/model.safetensors: tensor 'w': ..." says which file of a model */
        if (err && !had_err) {
            size_t pl = strlen(path), cap = sizeof err->msg;
            if (pl + 2 < cap) {   /* the reason's tail is cut if path + reason exceed the line */
                memmove(err->msg + pl + 2, err->msg, cap - pl - 2);
                memcpy(err->msg, path, pl);
                memcpy(err->msg + pl, ": ", 2);
                err->msg[cap - 1] = 0;
            }
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
    free(st->byname);
    free(st->names);
    free(st);
}

size_t safetensors_count(const struct safetensors *st) { return st->n; }
const struct st_tensor *safetensors_at(const struct safetensors *st, size_t i) { return i < st->n ? &st->t[i] : NULL; }

const struct st_tensor *safetensors_find(const struct safetensors *st, const char *name)
{
    struct st_tensor key = { .name = name };
    const struct st_tensor *kp = &key, **hit = bsearch(&kp, st->byname, st->n, sizeof *st->byname, cmp_tptr);
    return hit ? *hit : NULL;
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
    uint64_t bounce[2048];
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
    json_t *names;     /* set of added names (a hash: models have thousands of tensors) */
    json_t *meta;      /* "__metadata__", insertion order */
};

int st_writer_open(struct st_writer **out, const char *path, struct slm_err *err)
{
    struct st_writer *w = calloc(1, sizeof *w);
    size_t pl = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(pl + 5)) || !(w->meta = json_object()) ||
        !(w->names = json_object())) {
        st_writer_abort(w);
        return slm_err_set(err, SLM_ENOMEM, "%s: out of memory", path);
    }
    snprintf(w->tmp, pl + 5, "%s.tmp", path);
    *out = w;
    return 0;
}

/* Validate and append one tensor, copying src (raw bytes of dt, or f32 values when f32 is set,
** converted to dt). Nothing is added on error. */
static int writer_push(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                       const void *src, bool f32, struct slm_err *err)
{
    if (!name || !name[0] || !strcmp(name, "__metadata__"))
        return slm_err_set(err, SLM_EINVAL, "writer: invalid tensor name '%.80s'", name ? name : "(null)");
    if ((unsigned)dt >= DT_COUNT) return slm_err_set(err, SLM_EDTYPE, "writer: tensor '%.80s': dtype %d unknown", name, (int)dt);
    const struct dtype_traits *tr = dtype_traits(dt);
    if (f32 && !tr->from_f32) return slm_err_set(err, SLM_EDTYPE, "writer: tensor '%.80s': cannot store floats as %s", name, tr->name);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return slm_err_set(err, SLM_EINVAL, "writer: tensor '%.80s': %d dims (at most %d)", name, ndim, ST_MAX_DIMS);
    if (json_object_get(w->names, name)) return slm_err_set(err, SLM_ECONFLICT, "writer: tensor '%.80s' added twice", name);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return slm_err_set(err, SLM_EINVAL, "writer: tensor '%.80s': dim %d is negative", name, i);
        if (shape[i] && numel > UINT64_MAX / (uint64_t)shape[i])
            return slm_err_set(err, SLM_EINVAL, "writer: tensor '%.80s': element count overflows", name);
        numel *= (uint64_t)shape[i];
    }
    if (numel > (uint64_t)INT64_MAX / tr->size) return slm_err_set(err, SLM_EINVAL, "writer: tensor '%.80s': byte size overflows", name);
    size_t nbytes = (size_t)(numel * tr->size);
    if (nbytes && !src) return slm_err_set(err, SLM_EINVAL, "writer: tensor '%.80s': no data for %zu bytes", name, nbytes);
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 64;
        struct st_wentry *ne = realloc(w->e, nc * sizeof *ne);
        if (!ne) return slm_err_set(err, SLM_ENOMEM, "writer: out of memory");
        w->e = ne;
        w->cap = nc;
    }
    struct st_wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->nbytes = nbytes;
    e->name = strdup(name);
    e->data = malloc(nbytes ? nbytes : 1);
    /* the name set also rejects names that are not valid UTF-8, which JSON could not hold */
    if (!e->name || !e->data || json_object_set_new(w->names, name, json_true())) {
        int rc = e->name && e->data ? slm_err_set(err, SLM_EINVAL, "writer: tensor name '%.80s' is not valid UTF-8", name)
                                    : slm_err_set(err, SLM_ENOMEM, "writer: tensor '%.80s': %zu bytes", name, nbytes);
        free(e->name);
        free(e->data);
        return rc;
    }
    if (nbytes && f32) tr->from_f32(e->data, src, (size_t)numel);
    else if (nbytes) memcpy(e->data, src, nbytes);
    e->dt = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    w->n++;
    return 0;
}

int st_writer_add(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape, const void *data,
                  struct slm_err *err)
{
    return writer_push(w, name, dt, ndim, shape, data, false, err);
}

int st_writer_add_f32(struct st_writer *w, const char *name, enum dtype dt, int ndim, const int64_t *shape,
                      const float *data, struct slm_err *err)
{
    return writer_push(w, name, dt, ndim, shape, data, true, err);
}

int st_writer_set_metadata(struct st_writer *w, const char *key, const char *value, struct slm_err *err)
{
    if (!key || !value || json_object_set_new(w->meta, key, json_string(value)))
        return slm_err_set(err, SLM_EINVAL, "writer: metadata '%.40s' is not a valid UTF-8 key and value", key ? key : "(null)");
    return 0;
}

/* The reference writer's order: dtypes in descending order of its Dtype enum (so wider
** elements come first and every tensor starts aligned to its element size), then by name. */
static int dtype_rank(enum dtype dt)
{
    switch (dt) {
    case DT_BOOL: return 0;
    case DT_U8: return 1;
    case DT_I8: return 2;
    case DT_I16: return 3;
    case DT_F16: return 4;
    case DT_BF16: return 5;
    case DT_I32: return 6;
    case DT_F32: return 7;
    case DT_F64: return 8;
    case DT_I64: return 9;
    default: return -1;
    }
}

static int cmp_wentry(const void *a, const void *b)
{
    const struct st_wentry *x = a, *y = b;
    int rx = dtype_rank(x->dt), ry = dtype_rank(y->dt);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
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

/* The header JSON, as the reference writes it: compact, "__metadata__" first (when set), then
** one entry per tensor in data order with keys dtype, shape, data_offsets. Caller frees. */
static char *writer_header(const struct st_writer *w)
{
    char *hdr = NULL;
    json_t *root = json_object();
    bool ok = root != NULL;
    if (ok && json_object_size(w->meta)) ok = !json_object_set(root, "__metadata__", w->meta);
    uint64_t off = 0;
    for (size_t i = 0; ok && i < w->n; i++) {
        const struct st_wentry *e = &w->e[i];
        json_t *shape = json_array();
        ok = shape != NULL;
        for (int d = 0; ok && d < e->ndim; d++) ok = !json_array_append_new(shape, json_integer(e->shape[d]));
        json_t *ent = ok ? json_pack("{s:s,s:O,s:[I,I]}", "dtype", dtype_traits(e->dt)->name, "shape", shape, "data_offsets",
                                     (json_int_t)off, (json_int_t)(off + e->nbytes))
                         : NULL;
        json_decref(shape);
        ok = ent && !json_object_set_new(root, e->name, ent);
        off += e->nbytes;
    }
    if (ok) hdr = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return hdr;
}

/* Best effort: make the rename itself durable. */
static void fsync_parent(const char *path)
{
    char *dup = strdup(path);
    if (!dup) return;
    int fd = open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dup);
}

/* Header padded with spaces to a multiple of 8 bytes (as the reference), data after it. */
int st_writer_finish(struct st_writer *w, struct slm_err *err)
{
    int rc = 0, fd = -1;
    qsort(w->e, w->n, sizeof *w->e, cmp_wentry);
    char *hdr = writer_header(w);
    if (!hdr) { rc = slm_err_set(err, SLM_ENOMEM, "%s: header of %zu tensors", w->path, w->n); goto done; }
    size_t hl = strlen(hdr), pad = (8 - hl % 8) % 8;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)(hl + pad) >> (8 * i));
    fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    bool ok = !write_all(fd, len8, 8) && !write_all(fd, hdr, hl) && !write_all(fd, "        ", pad);
    for (size_t i = 0; ok && i < w->n; i++) ok = !write_all(fd, w->e[i].data, w->e[i].nbytes);
    if (!ok || fsync(fd)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    int crc = close(fd);
    fd = -1;
    if (crc) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->tmp, strerror(errno)); goto done; }
    if (rename(w->tmp, w->path)) { rc = slm_err_set(err, SLM_EIO, "%s: %s", w->path, strerror(errno)); goto done; }
    free(w->tmp);
    w->tmp = NULL;   /* renamed: nothing left for abort to remove */
    fsync_parent(w->path);
done:
    if (fd >= 0) close(fd);
    free(hdr);
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
    json_decref(w->names);
    free(w);
}

/* ---- model folder ---- */

struct st_model {
    struct safetensors **shards;
    size_t nshards;
    const struct st_tensor **all;   /* every tensor, sorted by name */
    size_t n;
    uint64_t nbytes;
};

/* A shard name must stay inside the model folder: a plain file name. */
static bool shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static int model_add_shard(struct st_model *m, const char *dir, const char *file, struct slm_err *err)
{
    char path[4400];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path)
        return slm_err_set(err, SLM_EINVAL, "%.80s...: model path too long", dir);
    struct safetensors **ns = realloc(m->shards, (m->nshards + 1) * sizeof *ns);
    if (!ns) return slm_err_set(err, SLM_ENOMEM, "model: shards");
    m->shards = ns;
    int rc = safetensors_open(&m->shards[m->nshards], path, err);
    if (!rc) m->nshards++;
    return rc;
}

/* Open every shard the index names (each once) and check each listed tensor is in its shard. */
static int model_open_index(struct st_model *m, const char *dir, const char *path, const char *text, size_t len,
                            struct slm_err *err)
{
    json_error_t je;
    json_t *idx = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je), *shard_of = json_object();
    int rc = 0;
    if (!shard_of) { rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", path); goto done; }
    if (!idx) { rc = slm_err_set(err, SLM_EFORMAT, "%s: %s (line %d)", path, je.text, je.line); goto done; }
    json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm)) { rc = slm_err_set(err, SLM_EFORMAT, "%s: weight_map missing or not an object", path); goto done; }
    if (!json_object_size(wm)) { rc = slm_err_set(err, SLM_EFORMAT, "%s: weight_map lists no tensor", path); goto done; }
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v) {
        const char *file = json_string_value(v);
        if (!file || !shard_name_ok(file)) {
            rc = slm_err_set(err, SLM_EFORMAT, "%s: shard of tensor '%.80s' is not a plain file name in the model folder", path, name);
            goto done;
        }
        json_t *slot = json_object_get(shard_of, file);
        if (!slot) {   /* each shard once, however many tensors name it */
            if ((rc = model_add_shard(m, dir, file, err))) goto done;
            if (json_object_set_new(shard_of, file, json_integer((json_int_t)m->nshards - 1))) {
                rc = slm_err_set(err, SLM_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            slot = json_object_get(shard_of, file);
        }
        if (!safetensors_find(m->shards[json_integer_value(slot)], name)) {
            rc = slm_err_set(err, SLM_EFORMAT, "%s: tensor '%.80s' is not in its shard %.80s", path, name, file);
            goto done;
        }
    }
done:
    json_decref(idx);
    json_decref(shard_of);
    return rc;
}

int st_model_open(struct st_model **out, const char *dir, struct slm_err *err)
{
    struct st_model *m = calloc(1, sizeof *m);
    char path[4400], *buf = NULL;
    size_t len;
    int rc;
    if (!m) return slm_err_set(err, SLM_ENOMEM, "model: out of memory");
    if (snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >= (int)sizeof path) {
        rc = slm_err_set(err, SLM_EINVAL, "%.80s...: model path too long", dir);
        goto done;
    }
    rc = file_read_all(path, 64u << 20, &buf, &len, err);
    if (rc == -SLM_ENOTFOUND) {
        slm_err_clear(err);
        rc = model_add_shard(m, dir, "model.safetensors", err);
    } else if (!rc) {
        rc = model_open_index(m, dir, path, buf, len, err);
    }
    if (rc) goto done;
    for (size_t i = 0; i < m->nshards; i++) m->n += safetensors_count(m->shards[i]);
    m->all = malloc((m->n ? m->n : 1) * sizeof *m->all);
    if (!m->all) { rc = slm_err_set(err, SLM_ENOMEM, "%s: index of %zu tensors", dir, m->n); goto done; }
    size_t k = 0;
    for (size_t i = 0; i < m->nshards; i++)
        for (size_t j = 0; j < safetensors_count(m->shards[i]); j++) {
            m->all[k] = safetensors_at(m->shards[i], j);
            m->nbytes += m->all[k++]->nbytes;
        }
    qsort(m->all, m->n, sizeof *m->all, cmp_tptr);
    for (size_t i = 1; i < m->n; i++)
        if (!strcmp(m->all[i]->name, m->all[i - 1]->name)) {
            rc = slm_err_set(err, SLM_EFORMAT, "%s: tensor '%.80s' appears in two shards", dir, m->all[i]->name);
            goto done;
        }
done:
    free(buf);
    if (rc) {
        st_model_close(m);
        return rc;
    }
    *out = m;
    return 0;
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
uint64_t st_model_nbytes(const struct st_model *m) { return m->nbytes; }
