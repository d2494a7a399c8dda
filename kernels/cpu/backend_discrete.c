/*
** kernels/cpu/backend_discrete.c: "cpu-discrete", the CPU backend behind a wall, for tests. Its
** memory is not the host's: every buffer lies in one reserved arena that is mapped PROT_NONE
** except while one of the backend's own ops runs, so host code that reads or writes backend
** memory directly (legal on "cpu", a bug on a GPU) faults at the line that does it. The ops are
** the CPU backend's, plus those a GPU backend has and the CPU lacks (gather_rows and the copy-stream
** trio), and the name is not "cpu", so core/ takes the paths it takes on CUDA. Results equal the
** CPU's except where core/ itself chooses differently off the CPU (adapters of errors wider than
** LOWRANK_HOST_SVD_MAX come from the Gram matrix).
** SLIM_TEST_DEVICE=cpu-discrete runs the unit tests on it; core/gpu_parity compares it with "cpu".
** Linux only (mmap, mprotect, madvise). Released buffers keep their memory for a later buffer that
** fits: fine for the small models of the tests it serves. Releasing a pointer that is not a live
** buffer aborts the test. Not caught: host pointers handed to ops (the ops read host memory
** fine), and a released buffer read by an op (it keeps its contents until reused).
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
#define DISC_HUGE ((size_t)2 << 20)      /* the wall moves in whole huge pages */

/* A buffer of the arena: live (n bytes asked for) or spare (released, kept for a later buffer that
** fits its span: the smallest such spare is taken whole). */
struct disc_buf {
    unsigned char *p;
    size_t n, span;
};

struct disc_ctx {
    struct kbackend *cpu;    /* the ops */
    unsigned char *map;      /* the reservation, DISC_RESERVE + DISC_HUGE bytes */
    unsigned char *base;     /* its first huge-page boundary: the arena starts here */
    size_t top;              /* bytes of the arena handed out so far */
    struct disc_buf *live, *spare;
    size_t nlive, caplive, nspare, capspare;
    pthread_mutex_t lock;
    int open;                /* ops in flight: the used arena is readable and writable while > 0 */
    size_t in_use, peak, limit;
};

static struct disc_ctx *dctx(struct kbackend *kb) { return kb->ctx; }

/* The walled region: the used arena rounded up to huge pages. The arena asks for transparent huge
** pages, so the wall's mprotect touches a few page-table entries, not one per 4 KiB page: it runs
** twice per op. Sizes live in host tables, never in the arena, so nothing splits those pages. */
static size_t disc_walled(const struct disc_ctx *d) { return (d->top + DISC_HUGE - 1) / DISC_HUGE * DISC_HUGE; }

/* A checking backend that cannot keep its promises stops the test loudly, where it happens. */
static void disc_die(const char *what)
{
    fprintf(stderr, "cpu-discrete: %s\n", what);
    abort();
}

/* The wall comes down while any op runs (ops may overlap: the prefetch thread uploads) and goes
** back up after the last. A failing mprotect to PROT_NONE leaves the arena open: tests then lose
** their check but not their data; one to read-write would fault the op, so it stops the test. */
static void disc_open(struct disc_ctx *d)
{
    pthread_mutex_lock(&d->lock);
    if (d->open++ == 0 && d->top && mprotect(d->base, disc_walled(d), PROT_READ | PROT_WRITE))
        disc_die("mprotect: cannot open the arena");
    pthread_mutex_unlock(&d->lock);
}

static void disc_close(struct disc_ctx *d)
{
    pthread_mutex_lock(&d->lock);
    if (--d->open == 0 && d->top) mprotect(d->base, disc_walled(d), PROT_NONE);
    pthread_mutex_unlock(&d->lock);
}

static const char *disc_name(struct kbackend *kb) { (void)kb; return "cpu-discrete"; }

static void disc_free(struct kbackend *kb)
{
    struct disc_ctx *d = dctx(kb);
    if (d) {
        kbackend_free(d->cpu);
        if (d->map) munmap(d->map, DISC_RESERVE + DISC_HUGE);
        free(d->live);
        free(d->spare);
        pthread_mutex_destroy(&d->lock);
    }
    free(d);
    free(kb);
}

/* Append b to the table t [*len of *cap]; false when it cannot grow. */
static bool buf_push(struct disc_buf **t, size_t *len, size_t *cap, struct disc_buf b)
{
    if (*len == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        struct disc_buf *g = realloc(*t, sizeof *g * c);
        if (!g) return false;
        *t = g;
        *cap = c;
    }
    (*t)[(*len)++] = b;
    return true;
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
        if (!buf_push(&d->live, &d->nlive, &d->caplive, (struct disc_buf){ p, n, span })) {
            rc = slm_err_set(err, SLM_ENOMEM, "cpu-discrete: out of memory");
        } else {
            if (k < d->nspare) {
                d->spare[k] = d->spare[--d->nspare];
            } else {
                d->top += span;
                if (d->open && mprotect(d->base, disc_walled(d), PROT_READ | PROT_WRITE))
                    disc_die("mprotect: cannot open a new buffer");
            }
            d->in_use += n;
            if (d->in_use > d->peak) d->peak = d->in_use;
            *out = p;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

static void disc_release(struct kbackend *kb, void *p)
{
    struct disc_ctx *d = dctx(kb);
    pthread_mutex_lock(&d->lock);
    size_t k = d->nlive;
    while (k > 0 && d->live[k - 1].p != p) k--;   /* the newest first: releases mostly follow allocations */
    if (k == 0) disc_die("release of a pointer that is not a live buffer (released twice, or not ours)");
    struct disc_buf b = d->live[k - 1];
    d->live[k - 1] = d->live[--d->nlive];
    d->in_use -= b.n;
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

/* ---- the CPU's ops, with the wall down ---- */

#define DISC_OP(op, params, ...)                                   \
    static int disc_##op params                                    \
    {                                                              \
        struct disc_ctx *d = dctx(kb);                             \
        disc_open(d);                                              \
        int rc = d->cpu->iface->op(d->cpu, __VA_ARGS__);           \
        disc_close(d);                                             \
        return rc;                                                 \
    }

DISC_OP(upload, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err), dst, src, n, err)
DISC_OP(download, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err), dst, src, n, err)
DISC_OP(copy, (struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err), dst, src, n, err)
DISC_OP(sync, (struct kbackend *kb, struct slm_err *err), err)
DISC_OP(gemm, (struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err), a, err)
DISC_OP(layernorm, (struct kbackend *kb, float *y, const float *x, const float *w, const float *b, int rows, int cols,
                    float eps, struct slm_err *err), y, x, w, b, rows, cols, eps, err)
DISC_OP(rmsnorm, (struct kbackend *kb, float *y, const float *x, const float *w, int rows, int cols, float divisor,
                  float eps, struct slm_err *err), y, x, w, rows, cols, divisor, eps, err)
DISC_OP(add_bias, (struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld, struct slm_err *err),
        y, bias, rows, cols, ld, err)
DISC_OP(add, (struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err), y, x, n, err)
DISC_OP(mul, (struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err), y, x, n, err)
DISC_OP(act, (struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err), y, x, n, act, err)
DISC_OP(scale, (struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err), y, s, n, err)
DISC_OP(rope, (struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
               const float *inv_freq, struct slm_err *err), x, rows, ld, T, nheads, hd, rot_dim, inv_freq, err)
DISC_OP(attention, (struct kbackend *kb, const struct kattn_args *a, struct slm_err *err), a, err)
DISC_OP(cross_entropy, (struct kbackend *kb, float *nll, const float *logits, const int32_t *targets, int rows,
                        int vocab, struct slm_err *err), nll, logits, targets, rows, vocab, err)
DISC_OP(eigh_f64, (struct kbackend *kb, double *a, double *w, int n, struct slm_err *err), a, w, n, err)
DISC_OP(cholesky_upper, (struct kbackend *kb, float *a, int n, struct slm_err *err), a, n, err)
DISC_OP(spd_inverse, (struct kbackend *kb, float *a, int n, struct slm_err *err), a, n, err)
DISC_OP(svd, (struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt, struct slm_err *err),
        a, m, n, u, s, vt, err)
DISC_OP(gram_f64, (struct kbackend *kb, double *c, const float *x, int rows, int n, struct slm_err *err), c, x, rows, n, err)
DISC_OP(round_bf16, (struct kbackend *kb, float *y, size_t n, struct slm_err *err), y, n, err)
DISC_OP(sparsegpt_block, (struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err), a, err)
DISC_OP(prune_nm, (struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n, int m,
                   struct slm_err *err), w, mask, s, d_out, d_in, n, m, err)
DISC_OP(absmax_groups, (struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows, int gcols,
                        struct slm_err *err), amax, w, d_out, d_in, grows, gcols, err)
DISC_OP(abs_range, (struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err), lo_hi, a, n, err)
DISC_OP(abs_histogram, (struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                        const float *edge, int nb, struct slm_err *err), counts, a, n, lo, hi, edge, nb, err)
DISC_OP(quant_apply, (struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in, const struct kquant_args *q,
                      struct slm_err *err), w, codes, d_out, d_in, q, err)
DISC_OP(quant_dequant, (struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                        const struct kquant_args *q, struct slm_err *err), w, codes, d_out, d_in, q, err)
DISC_OP(col_stats, (struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                    struct slm_err *err), scaler, abssum, x, rows, cols, nseq, err)
DISC_OP(apply_mask, (struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err), w, mask, n, err)
DISC_OP(prune_rows, (struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                     struct slm_err *err), w, mask, s, d_out, d_in, k, err)
DISC_OP(abs_kth, (struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err), kth, a, n, k, err)
DISC_OP(prune_abs_le, (struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err),
        w, mask, n, thr, err)
DISC_OP(count_zeros, (struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err), count, a, n, err)
DISC_OP(slim_search, (struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb, size_t n,
                      int bits, struct slm_err *err), alpha, counts, edge, nb, n, bits, err)

/* ---- what a GPU backend has and the CPU lacks ---- */

static int disc_gather_rows(struct kbackend *kb, float *out, const float *table, const int32_t *ids, int rows, int cols,
                            int V, struct slm_err *err)
{
    (void)err;
    struct disc_ctx *d = dctx(kb);
    disc_open(d);
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * cols;
        if (ids[r] < 0 || ids[r] >= V) for (int c = 0; c < cols; c++) o[c] = NAN;
        else memcpy(o, table + (size_t)ids[r] * cols, sizeof *o * (size_t)cols);
    }
    disc_close(d);
    return 0;
}

static int disc_copy_after_queued(struct kbackend *kb, struct slm_err *err) { (void)kb; (void)err; return 0; }

/* A synchronous copy from the prefetch thread, beside the ops of the main thread. */
static int disc_upload_async(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    return disc_upload(kb, dst, src, n, err);
}

static int disc_copy_sync(struct kbackend *kb, struct slm_err *err) { (void)kb; (void)err; return 0; }

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
    .host_alloc = NULL,
    .host_free = NULL,
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
    void *map = mmap(NULL, DISC_RESERVE + DISC_HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        rc = slm_err_set(err, SLM_ENOMEM, "cpu-discrete: reserving the arena: %s", strerror(errno));
        disc_free(kb);
        return rc;
    }
    d->map = map;
    d->base = (unsigned char *)(((uintptr_t)map + DISC_HUGE - 1) / DISC_HUGE * DISC_HUGE);
    madvise(d->base, DISC_RESERVE, MADV_HUGEPAGE);   /* a hint: without it the wall is only slower */
    *out = kb;
    return 0;
}
