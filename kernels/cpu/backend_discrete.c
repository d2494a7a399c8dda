/*
** kernels/cpu/backend_discrete.c: "cpu-discrete", the CPU backend behind a wall, for tests. Its
** memory is not the host's: every buffer lies in one reserved arena and is mapped PROT_NONE except
** while an op it was handed to runs, so host code that reads or writes backend memory directly
** (legal on "cpu", a bug on a GPU) faults at the line that does it, and so does an op touching a
** buffer outside its arguments. The ops are
** the CPU backend's, plus those a GPU backend has and the CPU lacks (gather_rows and the copy-stream
** trio), and the name is not "cpu", so core/ takes the paths it takes on CUDA. Results equal the
** CPU's except where core/ itself chooses differently off the CPU (adapters of errors wider than
** LOWRANK_HOST_SVD_MAX come from the Gram matrix).
** SLIM_TEST_DEVICE=cpu-discrete runs the unit tests on it; core/gpu_parity compares it with "cpu".
** Each op checks its arguments against kbackend.h: every backend pointer must lie, with the extent
** the op reads or writes, inside one live buffer, and host-side arguments (an upload's source, a
** download's destination, scalar results) outside the arena; a violation aborts the test with the
** op, the argument and the cause (host pointer, released buffer, past the end). Buffers come filled
** with 0xff bytes (NaN as floats) and are refilled on release, as a GPU's allocator hands out
** whatever was there: reading what nobody wrote shows up in the results.
** Linux only (mmap, mprotect). Released buffers keep their memory for a later buffer that
** fits: fine for the small models of the tests it serves. Releasing a pointer that is not a live
** buffer aborts the test. The target of an upload_async must have been allocated before the last
** copy_after_queued, and is off limits to ops and to release until copy_sync. Not caught: the rest
** of CUDA's asynchrony: every op here has finished when it returns, so only uploads are checked as
** a GPU runs them: one from host_alloc's (pinned) memory reads its source late, which must then
** hold what it held at the call until the next download or sync. Nor struct fields an op ignores.
*/
#include "../kbackend.h"
#include "../kbackend_impl.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define DISC_RESERVE ((size_t)1 << 40)   /* address space of the arena; nothing is committed up front */
#define DISC_PAGE 4096                   /* buffers start on pages */
#define DISC_ALIGN ((size_t)2 << 20)     /* the arena's start */

/* A buffer of the arena: live (n bytes asked for) or spare (released, kept for a later buffer that
** fits its span: the smallest such spare is taken whole). */
struct disc_buf {
    unsigned char *p;
    size_t n, span;
    uint64_t seq;            /* live: its allocation's number (disc_ctx.nallocs then) */
    int opens;               /* live: ops using it now; its span is read-write while > 0 */
};

/* An upload from pinned memory, which a GPU may still be reading after the call returns: what
** its source held then, to compare at the next download or sync. */
struct disc_pend {
    const unsigned char *src;
    unsigned char *was;
    size_t n;
};

struct disc_ctx {
    struct kbackend *cpu;    /* the ops */
    unsigned char *map;      /* the reservation, DISC_RESERVE + DISC_ALIGN bytes */
    unsigned char *base;     /* its first DISC_ALIGN boundary: the arena starts here */
    size_t top;              /* bytes of the arena handed out so far */
    struct disc_buf *live, *spare, *flying;   /* flying: upload_async targets not yet waited for */
    size_t nlive, caplive, nspare, capspare, nflying, capflying;
    pthread_mutex_t lock;
    size_t in_use, peak, limit;
    struct disc_buf *pinned;  /* host_alloc's blocks ("pinned": uploads from them read late) */
    struct disc_pend *pend;   /* uploads from pinned memory since the last download or sync */
    size_t npinned, cappinned, npend, cappend;
    uint64_t nallocs;        /* allocations so far */
    uint64_t ordered;        /* nallocs at the last copy_after_queued */
};

static struct disc_ctx *dctx(struct kbackend *kb) { return kb->ctx; }

/* A checking backend that cannot keep its promises stops the test loudly, where it happens. */
static void disc_die(const char *what)
{
    fprintf(stderr, "cpu-discrete: %s\n", what);
    abort();
}

/* The buffers the calling thread's op has opened (disc_dev), closed again by disc_done. Ops run on
** the thread that calls them and may overlap across threads (the prefetch thread uploads). */
#define DISC_MAX_ARGS 16
static _Thread_local struct {
    unsigned char *p[DISC_MAX_ARGS];
    int n;
} disc_opened;

/* Make a span read-write or walled again. A failing mprotect to PROT_NONE leaves it open: tests
** then lose their check but not their data; one to read-write would fault the op: stop the test. */
static void disc_protect(unsigned char *p, size_t span, bool open)
{
    if (mprotect(p, span, open ? PROT_READ | PROT_WRITE : PROT_NONE) && open) disc_die("mprotect: cannot open a buffer");
}

/* The live buffer whose span holds p, or NULL (spans never overlap). Newest first: releases and
** uploads mostly follow allocations. Called with the lock held. */
static struct disc_buf *disc_span_of(struct disc_ctx *d, const void *p)
{
    const unsigned char *c = p;
    for (size_t i = d->nlive; i-- > 0;)
        if (c >= d->live[i].p && c < d->live[i].p + d->live[i].span) return &d->live[i];
    return NULL;
}

/* The op has returned: wall in again what it opened. */
static void disc_done(struct disc_ctx *d)
{
    pthread_mutex_lock(&d->lock);
    for (int k = 0; k < disc_opened.n; k++) {
        struct disc_buf *b = disc_span_of(d, disc_opened.p[k]);
        if (--b->opens == 0) disc_protect(b->p, b->span, false);
    }
    disc_opened.n = 0;
    pthread_mutex_unlock(&d->lock);
}

static const char *disc_name(struct kbackend *kb) { (void)kb; return "cpu-discrete"; }

static void disc_free(struct kbackend *kb)
{
    struct disc_ctx *d = dctx(kb);
    if (d) {
        kbackend_free(d->cpu);
        if (d->map) munmap(d->map, DISC_RESERVE + DISC_ALIGN);
        free(d->live);
        free(d->spare);
        free(d->flying);
        for (size_t i = 0; i < d->npend; i++) free(d->pend[i].was);
        free(d->pend);
        for (size_t i = 0; i < d->npinned; i++) free(d->pinned[i].p);
        free(d->pinned);
        pthread_mutex_destroy(&d->lock);
    }
    free(d);
    free(kb);
}

/* Room for one more entry of elem bytes in the table *t [len of *cap]; false when it cannot grow. */
static bool tbl_room(void **t, size_t len, size_t *cap, size_t elem)
{
    if (len < *cap) return true;
    size_t c = *cap ? 2 * *cap : 64;
    void *g = realloc(*t, elem * c);
    if (!g) return false;
    *t = g;
    *cap = c;
    return true;
}

/* Append b to the table t [*len of *cap]; false when it cannot grow. */
static bool buf_push(struct disc_buf **t, size_t *len, size_t *cap, struct disc_buf b)
{
    if (!tbl_room((void **)t, *len, cap, sizeof b)) return false;
    (*t)[(*len)++] = b;
    return true;
}

/* Whether [p, p + n) overlaps the target of an upload_async that copy_sync has not waited for: on
** a GPU the copy stream may still be writing there. Called with the lock held. */
static bool disc_flying(const struct disc_ctx *d, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < d->nflying; i++)
        if (p < d->flying[i].p + d->flying[i].n && d->flying[i].p < p + n) return true;
    return false;
}

/* Fill a buffer with 0xff bytes: NaN as f32 and f64, 255 as a mask byte, -1 as a code, 2^64 - 1 as
** a count. A GPU's allocator hands out what the last owner left, so an op that reads a buffer
** nobody wrote, or one already released, must not find zeros there that happen to work. */
static void disc_poison(unsigned char *p, size_t n, size_t span)
{
    if (!n) return;
    disc_protect(p, span, true);
    memset(p, 0xff, n);
    disc_protect(p, span, false);
}

static int disc_alloc(struct kbackend *kb, void **out, size_t n, struct slm_err *err)
{
    struct disc_ctx *d = dctx(kb);
    int rc = 0;
    if (n > DISC_RESERVE) return slm_err_set(err, SLM_ENOMEM, "cpu-discrete: cannot allocate %zu bytes", n);
    /* at least one page, so that every buffer has its own address */
    size_t span = n ? (n + DISC_PAGE - 1) / DISC_PAGE * DISC_PAGE : DISC_PAGE;
    pthread_mutex_lock(&d->lock);
    /* the smallest spare that holds it; the buffer keeps that spare's whole span */
    size_t k = d->nspare;
    for (size_t i = 0; i < d->nspare; i++)
        if (d->spare[i].span >= span && (k == d->nspare || d->spare[i].span < d->spare[k].span)) k = i;
    if (k < d->nspare) span = d->spare[k].span;
    if (d->limit && (n > d->limit || d->in_use > d->limit - n)) {
        rc = kmem_oom(err, "cpu-discrete", "backend", NULL, n, d->in_use, d->limit, -1, -1);
    } else if (k == d->nspare && span > DISC_RESERVE - d->top) {
        rc = slm_err_set(err, SLM_ENOMEM, "cpu-discrete: arena exhausted allocating %zu bytes", n);
    } else {
        unsigned char *p = k < d->nspare ? d->spare[k].p : d->base + d->top;
        if (!buf_push(&d->live, &d->nlive, &d->caplive, (struct disc_buf){ p, n, span, ++d->nallocs, 0 })) {
            rc = slm_err_set(err, SLM_ENOMEM, "cpu-discrete: out of memory");
        } else {
            if (k < d->nspare) {
                d->spare[k] = d->spare[--d->nspare];
            } else {
                d->top += span;
            }
            d->in_use += n;
            if (d->in_use > d->peak) d->peak = d->in_use;
            *out = p;
        }
    }
    pthread_mutex_unlock(&d->lock);
    if (!rc) disc_poison(*out, n, span);
    return rc;
}

static void disc_release(struct kbackend *kb, void *p)
{
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    struct disc_buf *l = disc_span_of(d, p);
    if (!l || l->p != p) disc_die("release of a pointer that is not a live buffer (released twice, or not ours)");
    if (disc_flying(d, p, l->n ? l->n : 1)) disc_die("release of a buffer that upload_async is still filling (no copy_sync yet)");
    if (l->opens) disc_die("release of a buffer that an op is using");
    struct disc_buf b = *l;
    *l = d->live[--d->nlive];
    d->in_use -= b.n;
    pthread_mutex_unlock(&d->lock);
    disc_poison(b.p, b.n, b.span);   /* no longer live: no op touches it, no allocation hands it out yet */
    pthread_mutex_lock(&d->lock);
    buf_push(&d->spare, &d->nspare, &d->capspare, b);   /* no room to remember it: not reused */
    pthread_mutex_unlock(&d->lock);
}

static int disc_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    *out = (struct kmem_stats){ (int64_t)d->in_use, (int64_t)d->peak, 0, (int64_t)d->limit, -1, -1 };
    if (reset_peak) d->peak = d->in_use;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

static int disc_set_limit(struct kbackend *kb, size_t bytes, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    d->limit = bytes;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

/* ---- what the ops may touch ---- */

/* An op's argument `arg` of n bytes at p must lie inside one live buffer: a host pointer, a
** released buffer or a range past a buffer's end is what a GPU answers with an illegal address, or
** worse, with another buffer's data. That buffer is opened for the op (disc_done walls it in
** again), and only it: an op touching a buffer it was not handed faults too. n = 0 checks and
** opens nothing (an empty range is never read). */
static void disc_dev(struct disc_ctx *d, const char *op, const char *arg, const void *p, size_t n)
{
    if (n == 0) return;
    const unsigned char *c = p;
    pthread_mutex_lock(&d->lock);
    struct disc_buf *b = disc_span_of(d, c);
    size_t have = b && (size_t)(c - b->p) < b->n ? b->n - (size_t)(c - b->p) : 0;   /* bytes from c to its end */
    bool ok = n <= have, flying = disc_flying(d, c, n);
    if (ok && !flying) {
        if (disc_opened.n == DISC_MAX_ARGS) disc_die("an op with more buffer arguments than DISC_MAX_ARGS");
        if (b->opens++ == 0) disc_protect(b->p, b->span, true);
        disc_opened.p[disc_opened.n++] = b->p;
        pthread_mutex_unlock(&d->lock);
        return;
    }
    bool arena = c >= d->base && c < d->base + d->top, live = b != NULL;
    pthread_mutex_unlock(&d->lock);
    char msg[256];
    if (ok) snprintf(msg, sizeof msg, "%s: %s (%zu bytes) is still being filled by upload_async (no copy_sync yet)", op, arg, n);
    else if (!arena) snprintf(msg, sizeof msg, "%s: %s is a host pointer (%p, %zu bytes), not backend memory", op, arg, p, n);
    else if (live) snprintf(msg, sizeof msg, "%s: %s runs past the end of its buffer (%zu bytes asked, %zu left)", op, arg, n, have);
    else snprintf(msg, sizeof msg, "%s: %s (%zu bytes) is a released buffer", op, arg, n);
    disc_die(msg);
}

/* An op's host-side argument (an upload's source, a download's destination, a scalar result) must
** not be backend memory: on a GPU the host cannot address it. */
static void disc_host(struct disc_ctx *d, const char *op, const char *arg, const void *p)
{
    const unsigned char *c = p;
    if (c >= d->base && c < d->base + DISC_RESERVE) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s: %s is backend memory, where host memory is expected", op, arg);
        disc_die(msg);
    }
}

/* Bytes of a strided matrix: rows of cols elements, ld apart. */
static size_t disc_mat(size_t rows, size_t cols, size_t ld, size_t elem)
{
    return rows && cols ? ((rows - 1) * ld + cols) * elem : 0;
}

/* A batch of strided matrices, stride elements apart (0: one shared matrix). */
static size_t disc_batch(int batch, int64_t stride, size_t rows, size_t cols, size_t ld)
{
    size_t one = disc_mat(rows, cols, ld, sizeof(float));
    return one && batch > 1 && stride > 0 ? one + (size_t)(batch - 1) * (size_t)stride * sizeof(float) : one;
}

#define F(n) ((size_t)(n) * sizeof(float))
#define U(n) ((size_t)(n) * sizeof(uint8_t))
#define D(n) ((size_t)(n) * sizeof(double))
#define Z(rows, cols) ((size_t)(rows) * (size_t)(cols))
#define DEV(arg, n) disc_dev(d, op, #arg, arg, n)
#define HOST(arg) disc_host(d, op, #arg, arg)

/* Each op's arguments, as kbackend.h states them. */
static void chk_upload(struct disc_ctx *d, const char *op, void *dst, const void *src, size_t n) { DEV(dst, n); HOST(src); }
static void chk_download(struct disc_ctx *d, const char *op, void *dst, const void *src, size_t n) { HOST(dst); DEV(src, n); }
static void chk_copy(struct disc_ctx *d, const char *op, void *dst, const void *src, size_t n) { DEV(dst, n); DEV(src, n); }
static void chk_gemm(struct disc_ctx *d, const char *op, const struct kgemm_args *a)
{
    size_t m = (size_t)a->m, n = (size_t)a->n, k = (size_t)a->k;
    disc_dev(d, op, "a", a->a, disc_batch(a->batch, a->stride_a, a->ta == KB_N ? m : k, a->ta == KB_N ? k : m, a->lda));
    disc_dev(d, op, "b", a->b, disc_batch(a->batch, a->stride_b, a->tb == KB_N ? k : n, a->tb == KB_N ? n : k, a->ldb));
    disc_dev(d, op, "c", a->c, disc_batch(a->batch, a->stride_c, m, n, a->ldc));
}
static void chk_norm(struct disc_ctx *d, const char *op, float *y, const float *x, const float *w, const float *b, int rows,
                     int cols)
{
    DEV(y, F(Z(rows, cols)));
    DEV(x, F(Z(rows, cols)));
    if (w) DEV(w, F(cols));
    if (b) DEV(b, F(cols));
}
static void chk_add_bias(struct disc_ctx *d, const char *op, float *y, const float *bias, int rows, int cols, int ld)
{
    DEV(y, disc_mat(rows, cols, ld, sizeof(float)));
    DEV(bias, F(cols));
}
static void chk_yx(struct disc_ctx *d, const char *op, float *y, const float *x, size_t n) { DEV(y, F(n)); if (x) DEV(x, F(n)); }
static void chk_rope(struct disc_ctx *d, const char *op, float *x, int rows, int ld, int nheads, int hd, int rot_dim,
                     const float *inv_freq)
{
    DEV(x, disc_mat(rows, (size_t)nheads * hd, ld, sizeof(float)));
    DEV(inv_freq, F(rot_dim / 2));
}
static void chk_attention(struct disc_ctx *d, const char *op, const struct kattn_args *a)
{
    size_t rows = (size_t)a->B * a->T;
    disc_dev(d, op, "out", a->out, disc_mat(rows, (size_t)a->H * a->hd, a->out_stride, sizeof(float)));
    disc_dev(d, op, "q", a->q, disc_mat(rows, (size_t)a->H * a->hd, a->q_stride, sizeof(float)));
    disc_dev(d, op, "k", a->k, disc_mat(rows, (size_t)a->Hkv * a->hd, a->kv_stride, sizeof(float)));
    disc_dev(d, op, "v", a->v, disc_mat(rows, (size_t)a->Hkv * a->hd, a->kv_stride, sizeof(float)));
}
static void chk_sparsegpt_block(struct disc_ctx *d, const char *op, const struct ksgpt_args *a)
{
    size_t cnt = (size_t)(a->i2 - a->i1);
    size_t nstep = a->group == 0 ? 1 : a->group < 0 ? (size_t)a->rows : Z(a->rows, a->ngroups);
    disc_dev(d, op, "hinv", a->hinv, disc_mat(a->cols, a->cols, a->ldh, sizeof(float)));
    disc_dev(d, op, "w", a->w, disc_mat(a->rows, a->cols, a->ldw, sizeof(float)));
    if (a->metric) {
        disc_dev(d, op, "metric", a->metric, F(Z(a->rows, cnt)));
        return;
    }
    disc_dev(d, op, "mask", a->mask, disc_mat(a->rows, cnt, a->ldm, 1));
    disc_dev(d, op, "err", a->err, F(Z(a->rows, cnt)));
    if (a->bits) disc_dev(d, op, "step", a->step, F(nstep));
}
static void chk_wms(struct disc_ctx *d, const char *op, float *w, uint8_t *mask, const float *s, int d_out, int d_in)
{
    DEV(w, F(Z(d_out, d_in)));
    DEV(mask, U(Z(d_out, d_in)));
    if (s) DEV(s, F(d_in));
}
static void chk_quant(struct disc_ctx *d, const char *op, float *w, const int8_t *codes, int d_out, int d_in,
                      const struct kquant_args *q)
{
    DEV(w, F(Z(d_out, d_in)));
    if (codes) DEV(codes, U(Z(d_out, d_in)));
    disc_dev(d, op, "scale", q->scale, F(Z(q->rows, q->cols)));
    if (q->col_scale) disc_dev(d, op, "col_scale", q->col_scale, F(d_in));
}

/* ---- pinned host memory: uploads from it are checked as a GPU reads them, late ---- */

static int disc_host_alloc(struct kbackend *kb, void **out, size_t n, struct slm_err *err)
{
    struct disc_ctx *d = dctx(kb);
    unsigned char *p = malloc(n ? n : 1);
    bool kept = false;
    if (p) {
        pthread_mutex_lock(&d->lock);
        kept = buf_push(&d->pinned, &d->npinned, &d->cappinned, (struct disc_buf){ p, n, n, 0, 0 });
        pthread_mutex_unlock(&d->lock);
    }
    if (!kept) {
        free(p);
        return slm_err_set(err, SLM_ENOMEM, "cpu-discrete: out of host memory allocating %zu bytes", n);
    }
    *out = p;
    return 0;
}

/* The uploads from pinned memory inside [lo, hi) (all: lo = NULL, hi = UINTPTR_MAX) have landed:
** their sources must still hold what they held at the call. Called with the lock held. */
static void disc_land(struct disc_ctx *d, const unsigned char *lo, const unsigned char *hi)
{
    for (size_t i = d->npend; i-- > 0;) {
        struct disc_pend *e = &d->pend[i];
        if (e->src < lo || e->src >= hi) continue;
        if (memcmp(e->src, e->was, e->n))
            disc_die("the pinned source of an upload changed before the next download or sync (a GPU copies it late)");
        free(e->was);
        d->pend[i] = d->pend[--d->npend];
    }
}

/* As cudaFreeHost after the backend's streams are synchronized: pending uploads land first. */
static void disc_host_free(struct kbackend *kb, void *p)
{
    struct disc_ctx *d = dctx(kb);
    if (!p) return;
    pthread_mutex_lock(&d->lock);
    size_t k = d->npinned;
    while (k > 0 && d->pinned[k - 1].p != p) k--;
    if (k == 0) disc_die("host_free of a pointer that host_alloc did not return");
    disc_land(d, p, (unsigned char *)p + d->pinned[k - 1].n);
    d->pinned[k - 1] = d->pinned[--d->npinned];
    pthread_mutex_unlock(&d->lock);
    free(p);
}

/* Remember an upload whose source lies in pinned memory. */
static void disc_pend_upload(struct disc_ctx *d, const void *src, size_t n)
{
    const unsigned char *c = src;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; n && i < d->npinned; i++) {
        if (c < d->pinned[i].p || c >= d->pinned[i].p + d->pinned[i].n) continue;
        unsigned char *was = malloc(n);
        struct disc_pend e = { c, was, n };
        if (!was || !tbl_room((void **)&d->pend, d->npend, &d->cappend, sizeof e))
            disc_die("out of memory remembering a pinned upload");
        memcpy(was, c, n);
        d->pend[d->npend++] = e;
        break;
    }
    pthread_mutex_unlock(&d->lock);
}

/* A download or sync: every upload from pinned memory has landed by now. */
static void disc_land_all(struct disc_ctx *d)
{
    pthread_mutex_lock(&d->lock);
    disc_land(d, NULL, (const unsigned char *)UINTPTR_MAX);
    pthread_mutex_unlock(&d->lock);
}

/* ---- the CPU's ops, with the wall down and their arguments checked ---- */

#define DISC_OP(op, params, check, ...)                            \
    static int disc_##op params                                    \
    {                                                              \
        struct disc_ctx *d = dctx(kb);                             \
        check;                                                     \
        int rc = d->cpu->iface->op(d->cpu, __VA_ARGS__);           \
        disc_done(d);                                              \
        return rc;                                                 \
    }
#define OPN(name) const char *op = #name; (void)op

DISC_OP(upload, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err),
        { chk_upload(d, "upload", dst, src, n); disc_pend_upload(d, src, n); }, dst, src, n, err)
DISC_OP(download, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err),
        { chk_download(d, "download", dst, src, n); disc_land_all(d); }, dst, src, n, err)
DISC_OP(copy, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err),
        chk_copy(d, "copy", dst, src, n), dst, src, n, err)
DISC_OP(sync, (struct kbackend *kb, struct slm_err *err), disc_land_all(d), err)
DISC_OP(gemm, (struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err), chk_gemm(d, "gemm", a), a, err)
DISC_OP(layernorm, (struct kbackend *kb, float *y, const float *x, const float *w, const float *b, int rows, int cols,
                    float eps, struct slm_err *err),
        chk_norm(d, "layernorm", y, x, w, b, rows, cols), y, x, w, b, rows, cols, eps, err)
DISC_OP(rmsnorm, (struct kbackend *kb, float *y, const float *x, const float *w, int rows, int cols, float divisor,
                  float eps, struct slm_err *err),
        chk_norm(d, "rmsnorm", y, x, w, NULL, rows, cols), y, x, w, rows, cols, divisor, eps, err)
DISC_OP(add_bias, (struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld, struct slm_err *err),
        chk_add_bias(d, "add_bias", y, bias, rows, cols, ld), y, bias, rows, cols, ld, err)
DISC_OP(add, (struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err), chk_yx(d, "add", y, x, n),
        y, x, n, err)
DISC_OP(mul, (struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err), chk_yx(d, "mul", y, x, n),
        y, x, n, err)
DISC_OP(act, (struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err),
        chk_yx(d, "act", y, x, n), y, x, n, act, err)
DISC_OP(scale, (struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err), chk_yx(d, "scale", y, NULL, n),
        y, s, n, err)
DISC_OP(rope, (struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
               const float *inv_freq, struct slm_err *err),
        chk_rope(d, "rope", x, rows, ld, nheads, hd, rot_dim, inv_freq), x, rows, ld, T, nheads, hd, rot_dim, inv_freq, err)
DISC_OP(attention, (struct kbackend *kb, const struct kattn_args *a, struct slm_err *err),
        chk_attention(d, "attention", a), a, err)
DISC_OP(cross_entropy, (struct kbackend *kb, float *nll, const float *logits, const int32_t *targets, int rows,
                        int vocab, struct slm_err *err),
        { OPN(cross_entropy); DEV(nll, F(rows)); DEV(logits, F(Z(rows, vocab))); DEV(targets, (size_t)rows * 4); },
        nll, logits, targets, rows, vocab, err)
DISC_OP(eigh_f64, (struct kbackend *kb, double *a, double *w, int n, struct slm_err *err),
        { OPN(eigh_f64); DEV(a, D(Z(n, n))); DEV(w, D(n)); }, a, w, n, err)
DISC_OP(cholesky_upper, (struct kbackend *kb, float *a, int n, struct slm_err *err),
        { OPN(cholesky_upper); DEV(a, F(Z(n, n))); }, a, n, err)
DISC_OP(spd_inverse, (struct kbackend *kb, float *a, int n, struct slm_err *err),
        { OPN(spd_inverse); DEV(a, F(Z(n, n))); }, a, n, err)
DISC_OP(svd, (struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt, struct slm_err *err),
        {
            OPN(svd);
            int r = m < n ? m : n;
            DEV(a, F(Z(m, n)));
            DEV(u, F(Z(m, r)));
            DEV(s, F(r));
            DEV(vt, F(Z(r, n)));
        },
        a, m, n, u, s, vt, err)
DISC_OP(gram_f64, (struct kbackend *kb, double *c, const float *x, int rows, int n, struct slm_err *err),
        { OPN(gram_f64); DEV(c, D(Z(n, n))); DEV(x, F(Z(rows, n))); }, c, x, rows, n, err)
DISC_OP(round_bf16, (struct kbackend *kb, float *y, size_t n, struct slm_err *err), chk_yx(d, "round_bf16", y, NULL, n),
        y, n, err)
DISC_OP(sparsegpt_block, (struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err),
        chk_sparsegpt_block(d, "sparsegpt_block", a), a, err)
DISC_OP(prune_nm, (struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n, int m,
                   struct slm_err *err),
        chk_wms(d, "prune_nm", w, mask, s, d_out, d_in), w, mask, s, d_out, d_in, n, m, err)
DISC_OP(absmax_groups, (struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows, int gcols,
                        struct slm_err *err),
        {
            OPN(absmax_groups);
            DEV(w, F(Z(d_out, d_in)));
            if (grows > 0 && gcols > 0) DEV(amax, F(Z(d_out / grows, d_in / gcols)));
        },
        amax, w, d_out, d_in, grows, gcols, err)
DISC_OP(abs_range, (struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err),
        { OPN(abs_range); DEV(lo_hi, F(2)); DEV(a, F(n)); }, lo_hi, a, n, err)
DISC_OP(abs_histogram, (struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                        const float *edge, int nb, struct slm_err *err),
        { OPN(abs_histogram); DEV(counts, (size_t)nb * 8); DEV(a, F(n)); DEV(edge, F(nb + 1)); },
        counts, a, n, lo, hi, edge, nb, err)
DISC_OP(quant_apply, (struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in, const struct kquant_args *q,
                      struct slm_err *err),
        chk_quant(d, "quant_apply", w, codes, d_out, d_in, q), w, codes, d_out, d_in, q, err)
DISC_OP(quant_dequant, (struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                        const struct kquant_args *q, struct slm_err *err),
        chk_quant(d, "quant_dequant", w, codes, d_out, d_in, q), w, codes, d_out, d_in, q, err)
DISC_OP(col_stats, (struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                    struct slm_err *err),
        { OPN(col_stats); DEV(scaler, F(cols)); DEV(abssum, D(cols)); DEV(x, F(Z(rows, cols))); },
        scaler, abssum, x, rows, cols, nseq, err)
DISC_OP(apply_mask, (struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err),
        { OPN(apply_mask); DEV(w, F(n)); DEV(mask, U(n)); }, w, mask, n, err)
DISC_OP(prune_rows, (struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                     struct slm_err *err),
        chk_wms(d, "prune_rows", w, mask, s, d_out, d_in), w, mask, s, d_out, d_in, k, err)
DISC_OP(abs_kth, (struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err),
        { OPN(abs_kth); HOST(kth); DEV(a, F(n)); }, kth, a, n, k, err)
DISC_OP(prune_abs_le, (struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err),
        { OPN(prune_abs_le); DEV(w, F(n)); DEV(mask, U(n)); }, w, mask, n, thr, err)
DISC_OP(count_zeros, (struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err),
        { OPN(count_zeros); HOST(count); DEV(a, F(n)); }, count, a, n, err)
DISC_OP(slim_search, (struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb, size_t n,
                      int bits, struct slm_err *err),
        { OPN(slim_search); HOST(alpha); DEV(counts, (size_t)nb * 8); DEV(edge, F(nb + 1)); },
        alpha, counts, edge, nb, n, bits, err)

/* ---- what a GPU backend has and the CPU lacks ---- */

static int disc_gather_rows(struct kbackend *kb, float *out, const float *table, const int32_t *ids, int rows, int cols,
                            int V, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    const char *op = "gather_rows";
    DEV(out, F(Z(rows, cols)));
    DEV(table, F(Z(V, cols)));
    DEV(ids, (size_t)rows * sizeof *ids);
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * cols;
        if (ids[r] < 0 || ids[r] >= V) for (int c = 0; c < cols; c++) o[c] = NAN;
        else memcpy(o, table + (size_t)ids[r] * cols, sizeof *o * (size_t)cols);
    }
    disc_done(d);
    return 0;
}

/* On a GPU the copy stream now waits for every op queued so far: buffers allocated before this
** call may take upload_async, whatever their memory held for those ops. */
static int disc_copy_after_queued(struct kbackend *kb, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    d->ordered = d->nallocs;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

/* A synchronous copy from the prefetch thread, beside the ops of the main thread; its target must
** come from before the last copy_after_queued and stays off limits to ops and release until
** copy_sync, as on a GPU's copy stream. */
static int disc_upload_async(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    struct disc_buf *b = disc_span_of(d, dst);
    bool unordered = b && b->seq > d->ordered;
    pthread_mutex_unlock(&d->lock);
    /* its memory may have been another buffer's, still read by queued ops the copy would overtake */
    if (unordered) disc_die("upload_async into a buffer allocated after the last copy_after_queued");
    int rc = disc_upload(kb, dst, src, n, err);
    if (rc || !n) return rc;
    pthread_mutex_lock(&d->lock);
    bool kept = buf_push(&d->flying, &d->nflying, &d->capflying, (struct disc_buf){ dst, n, n, 0, 0 });
    pthread_mutex_unlock(&d->lock);
    return kept ? 0 : slm_err_set(err, SLM_ENOMEM, "cpu-discrete: out of memory");
}

static int disc_copy_sync(struct kbackend *kb, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    d->nflying = 0;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

static const struct kbackend_i disc_iface = {
    .name = disc_name,
    .free = disc_free,
    .alloc = disc_alloc,
    .release = disc_release,
    .upload = disc_upload,
    .download = disc_download,
    .copy = disc_copy,
    .sync = disc_sync,
    .gemm = disc_gemm,
    .layernorm = disc_layernorm,
    .rmsnorm = disc_rmsnorm,
    .add_bias = disc_add_bias,
    .add = disc_add,
    .mul = disc_mul,
    .act = disc_act,
    .scale = disc_scale,
    .rope = disc_rope,
    .attention = disc_attention,
    .cross_entropy = disc_cross_entropy,
    .eigh_f64 = disc_eigh_f64,
    .cholesky_upper = disc_cholesky_upper,
    .spd_inverse = disc_spd_inverse,
    .svd = disc_svd,
    .gram_f64 = disc_gram_f64,
    .round_bf16 = disc_round_bf16,
    .sparsegpt_block = disc_sparsegpt_block,
    .prune_nm = disc_prune_nm,
    .absmax_groups = disc_absmax_groups,
    .abs_range = disc_abs_range,
    .abs_histogram = disc_abs_histogram,
    .quant_apply = disc_quant_apply,
    .quant_dequant = disc_quant_dequant,
    .col_stats = disc_col_stats,
    .gather_rows = disc_gather_rows,
    .mem_stats = disc_mem_stats,
    .set_limit = disc_set_limit,
    .host_alloc = disc_host_alloc,
    .host_free = disc_host_free,
    .apply_mask = disc_apply_mask,
    .prune_rows = disc_prune_rows,
    .abs_kth = disc_abs_kth,
    .prune_abs_le = disc_prune_abs_le,
    .count_zeros = disc_count_zeros,
    .copy_after_queued = disc_copy_after_queued,
    .upload_async = disc_upload_async,
    .copy_sync = disc_copy_sync,
    .slim_search = disc_slim_search,
};

int kbackend_discrete_open(struct kbackend **out, struct slm_err *err)
{
    struct kbackend *kb = calloc(1, sizeof *kb);
    struct disc_ctx *d = calloc(1, sizeof *d);
    int rc;
    *out = NULL;
    if (!kb || !d) {
        free(kb);
        free(d);
        return slm_err_set(err, SLM_ENOMEM, "cpu-discrete: out of memory");
    }
    pthread_mutex_init(&d->lock, NULL);
    kb->api_version = KBACKEND_API_VERSION;
    kb->iface = &disc_iface;
    kb->ctx = d;
    if ((rc = kbackend_cpu_open(&d->cpu, err))) { disc_free(kb); return rc; }
    void *map = mmap(NULL, DISC_RESERVE + DISC_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        rc = slm_err_set(err, SLM_ENOMEM, "cpu-discrete: reserving the arena: %s", strerror(errno));
        disc_free(kb);
        return rc;
    }
    d->map = map;
    d->base = (unsigned char *)(((uintptr_t)map + DISC_ALIGN - 1) / DISC_ALIGN * DISC_ALIGN);
    *out = kb;
    return 0;
}
