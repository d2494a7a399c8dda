/* tests/unit/core/memory.c: the memory strategy of compression (issue #6) on stories260K.
** Backend accounting and budgets; error prefixes; calibration activations spilled to host memory
** and blocks prefetched on a helper thread give the very same compressed weights as the plain
** run; a budget smaller than one block fails with -SLM_ENOMEM naming the stage and the sizes,
** one that holds a block but not the model compresses with streaming, to the same weights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "core/compress.h"
#include "core/model.h"

static struct kbackend *kb;
static char model_dir[4096];

static int setup(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    snprintf(model_dir, sizeof model_dir, "%s/stories260K", test_data_dir());
    return kbackend_open(&kb, test_backend_name(), &e);
}
static int teardown(void **state) { (void)state; kbackend_free(kb); return 0; }

static void test_core_memory__err_prefix(void **state)
{
    (void)state;
    struct slm_err e = SLM_ERR_INIT;
    assert_int_equal(slm_err_prefix(&e, "block %d", 1), 0);   /* no error: nothing to prefix */
    assert_string_equal(e.msg, "");
    slm_err_set(&e, SLM_ENOMEM, "inner cause");
    assert_int_equal(slm_err_prefix(&e, "block %d of %d, load", 2, 5), -SLM_ENOMEM);
    assert_string_equal(e.msg, "block 2 of 5, load: inner cause");
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(slm_err_prefix(&e, "%s", big), -SLM_ENOMEM);   /* cut, still terminated */
    assert_int_equal(strlen(e.msg), sizeof e.msg - 1);
    assert_true(slm_err_prefix(NULL, "x") == 0);
}

/* The CPU backend counts what it hands out (so these figures are exact there) and enforces a budget. */
static void test_core_memory__cpu_accounting_and_budget(void **state)
{
    (void)state;
    struct kbackend *c = NULL;
    struct slm_err err = SLM_ERR_INIT;
    struct kmem_stats st;
    void *a = NULL, *b = NULL, *h = NULL;
    assert_int_equal(kbackend_open(&c, "cpu", &err), 0);
    assert_int_equal(kb_mem_stats(c, &st, false, &err), 0);
    int64_t base = st.in_use;
    assert_int_equal(st.device_total, -1);
    assert_int_equal(st.device_free, -1);
    assert_int_equal(kb_alloc(c, &a, 1000, &err), 0);
    assert_int_equal((uintptr_t)a % 64, 0);
    memset(a, 1, 1000);
    assert_int_equal(kb_alloc(c, &b, 3000, &err), 0);
    assert_int_equal(kb_mem_stats(c, &st, false, &err), 0);
    assert_int_equal(st.in_use, base + 4000);
    assert_int_equal(st.peak, base + 4000);
    kb_release(c, b);
    assert_int_equal(kb_mem_stats(c, &st, true, &err), 0);   /* read, then reset the peak */
    assert_int_equal(st.in_use, base + 1000);
    assert_int_equal(st.peak, base + 4000);
    assert_int_equal(kb_mem_stats(c, &st, false, &err), 0);
    assert_int_equal(st.peak, base + 1000);
    /* budget: 1500 bytes above the base; the second 1000 bytes do not fit */
    assert_int_equal(kbackend_set_limit(c, (size_t)base + 1500, &err), 0);
    b = NULL;
    assert_int_equal(kb_alloc(c, &b, 1000, &err), -SLM_ENOMEM);
    assert_null(b);
    char want[200], x[24], y[24];
    snprintf(want, sizeof want, "cpu: out of backend memory allocating 1000 bytes (%s in use by slimd, limit %s)",
             kb_size_str(x, sizeof x, (uint64_t)base + 1000), kb_size_str(y, sizeof y, (uint64_t)base + 1500));
    assert_string_equal(err.msg, want);
    slm_err_clear(&err);
    assert_int_equal(kb_alloc(c, &b, 500, &err), 0);   /* exactly at the budget */
    assert_int_equal(kb_mem_stats(c, &st, false, &err), 0);
    assert_int_equal(st.limit, base + 1500);
    kb_release(c, b);
    kb_release(c, a);
    assert_int_equal(kbackend_set_limit(c, 0, &err), 0);
    assert_int_equal(kb_alloc(c, &a, 1 << 20, &err), 0);
    kb_release(c, a);
    /* host staging memory is not backend memory */
    assert_int_equal(kb_host_alloc(c, &h, 4096, &err), 0);
    memset(h, 0, 4096);
    assert_int_equal(kb_mem_stats(c, &st, false, &err), 0);
    assert_int_equal(st.in_use, base);
    kb_host_free(c, h);
    assert_string_equal(kb_size_str(x, sizeof x, 512), "512 B");
    assert_string_equal(kb_size_str(x, sizeof x, 3 << 20), "3.00 MiB");
    assert_string_equal(kb_size_str(x, sizeof x, (uint64_t)40 << 30), "40.0 GiB");
    kbackend_free(c);
}

/* ---- compressing with a capture of every block's final weights ---- */

struct capture {
    int nb;
    float *w[8][LIN_COUNT], *ll[8][LIN_COUNT], *lr[8][LIN_COUNT];
    size_t nw[8][LIN_COUNT], nl[8][LIN_COUNT], nr[8][LIN_COUNT];
};

static float *fetch(struct model *m, const float *p, size_t n)
{
    struct slm_err err = SLM_ERR_INIT;
    float *h = malloc(sizeof *h * (n ? n : 1));
    assert_non_null(h);
    assert_int_equal(kb_download(m->kb, h, p, sizeof *h * n, &err), 0);
    return h;
}

static int capture_block(struct model *m, int b, const struct compressed_linear lin[LIN_COUNT], void *payload,
                         struct slm_err *err)
{
    (void)lin;
    (void)err;
    struct capture *c = payload;
    assert_true(b < 8);
    for (int r = 0; r < LIN_COUNT; r++) {
        const struct linear *l = &m->blocks[b].lin[r];
        if (!l->w) continue;
        c->nw[b][r] = (size_t)l->d_out * l->d_in;
        c->w[b][r] = fetch(m, l->w, c->nw[b][r]);
        if (!l->rank) continue;
        c->nl[b][r] = (size_t)l->d_in * l->rank;
        c->nr[b][r] = (size_t)l->rank * l->d_out;
        c->ll[b][r] = fetch(m, l->lora_l, c->nl[b][r]);
        c->lr[b][r] = fetch(m, l->lora_r, c->nr[b][r]);
    }
    c->nb = b + 1;
    return 0;
}

static void capture_free(struct capture *c)
{
    for (int b = 0; b < 8; b++)
        for (int r = 0; r < LIN_COUNT; r++) {
            free(c->w[b][r]);
            free(c->ll[b][r]);
            free(c->lr[b][r]);
        }
    memset(c, 0, sizeof *c);
}

static void assert_same_weights(const struct capture *a, const struct capture *b)
{
    assert_int_equal(a->nb, b->nb);
    assert_true(a->nb > 0);
    for (int k = 0; k < a->nb; k++)
        for (int r = 0; r < LIN_COUNT; r++) {
            assert_int_equal(a->nw[k][r], b->nw[k][r]);
            assert_int_equal(a->nl[k][r], b->nl[k][r]);
            if (a->nw[k][r]) assert_memory_equal(a->w[k][r], b->w[k][r], sizeof(float) * a->nw[k][r]);
            if (a->nl[k][r]) assert_memory_equal(a->ll[k][r], b->ll[k][r], sizeof(float) * a->nl[k][r]);
            if (a->nr[k][r]) assert_memory_equal(a->lr[k][r], b->lr[k][r], sizeof(float) * a->nr[k][r]);
        }
}

enum { CFG_SLIM_LORA = 0, CFG_SPARSEGPT_OPTQ };

static void opts_of(struct compress_opts *o, int cfg)
{
    struct compress_opts d = COMPRESS_OPTS_INIT;
    *o = d;
    o->prune.n = 2;
    o->prune.m = 4;
    o->shift_zero_metrics = true;
    if (cfg == CFG_SLIM_LORA) {   /* Wanda 2:4 + SLiM-Quant + SLiM-LoRA kept separate */
        o->prune.method = PRUNE_WANDA;
        o->quant.method = QUANT_SLIM;
        o->lowrank.method = LOWRANK_SLIM;
        o->separate_lora = true;
    } else {                      /* SparseGPT + OPTQ: the Hessians take backend memory */
        o->lowrank.method = LOWRANK_NONE;
        o->prune.method = PRUNE_SPARSEGPT;
        o->prune.n = o->prune.m = 0;
        o->prune.sparsity = 0.5;
        o->quant.method = QUANT_OPTQ;
        o->quant.group_size = -1;
        o->prune.optq_bits = 4;
        o->prune.optq_group = -1;
    }
}

struct run {
    int rc;
    struct slm_err err;
    struct compress_result res;
    struct capture cap;
    int64_t base;          /* backend bytes in use with the model open, before compressing */
};

/* Compress stories260K (lazy blocks) with o; limit_above: budget in bytes above what the open
** model holds (0: none). The capture sees every block as final. */
static struct kbackend *run_kb;   /* the backend run_compress opens the model on: kb unless set */

static void run_compress(struct run *r, const struct compress_opts *o0, int ns, int T, size_t limit_above)
{
    struct model *m = NULL;
    struct kmem_stats st;
    struct compress_opts o = *o0;
    int32_t *ids = malloc(sizeof *ids * (size_t)ns * T);
    assert_non_null(ids);
    for (int i = 0; i < ns * T; i++) ids[i] = 1 + (i * 53 + i / 7) % 500;
    memset(r, 0, sizeof *r);
    assert_int_equal(model_open(&m, model_dir, run_kb ? run_kb : kb, MODEL_LAZY_BLOCKS, &r->err), 0);
    assert_int_equal(kb_mem_stats(kb, &st, false, &r->err), 0);
    r->base = st.in_use;
    if (limit_above) assert_int_equal(kbackend_set_limit(kb, (size_t)st.in_use + limit_above, &r->err), 0);
    o.on_block = capture_block;
    o.block_payload = &r->cap;
    o.keep_codes = true;
    r->rc = compress_model(m, ids, ns, T, &o, &r->res, &r->err);
    if (getenv("MEMTEST_VERBOSE"))
        fprintf(stderr, "run: base %lld peak %llu rc %d spilled %d\n", (long long)r->base,
                (unsigned long long)r->res.peak_backend_bytes, r->rc, r->res.calib_spilled);
    struct slm_err e = SLM_ERR_INIT;
    assert_int_equal(kbackend_set_limit(kb, 0, &e), 0);
    model_free(m);
    free(ids);
}

static void run_free(struct run *r)
{
    compress_result_free(&r->res);
    capture_free(&r->cap);
}

static void assert_same_result(const struct run *a, const struct run *b)
{
    assert_int_equal(a->rc, 0);
    assert_int_equal(b->rc, 0);
    assert_same_weights(&a->cap, &b->cap);
    assert_int_equal(a->res.zeros, b->res.zeros);
    for (int k = 0; k < a->res.nblocks; k++)
        for (int r = 0; r < LIN_COUNT; r++) assert_true(a->res.lin[k][r].rel_error == b->res.lin[k][r].rel_error);
}

/* Activations in host memory, one window moved at a time: the same weights and errors, bit for bit. */
static void spill_matches(int cfg)
{
    struct compress_opts o;
    struct run resident, spilled;
    opts_of(&o, cfg);
    o.spill = -1;
    run_compress(&resident, &o, 4, 32, 0);
    o.spill = 1;
    run_compress(&spilled, &o, 4, 32, 0);
    if (spilled.rc) fprintf(stderr, "spilled: %s\n", spilled.err.msg);
    assert_same_result(&resident, &spilled);
    assert_false(resident.res.calib_spilled);
    assert_true(spilled.res.calib_spilled);
    assert_int_equal(resident.res.calib_bytes, (uint64_t)4 * 32 * 64 * sizeof(float));
    assert_int_equal(spilled.res.calib_bytes, resident.res.calib_bytes);
    /* the activations left backend memory: the peak drops by about their size */
    assert_true(resident.res.peak_backend_bytes > spilled.res.peak_backend_bytes);
    fprintf(stderr, "spill: peak %llu -> %llu backend bytes\n", (unsigned long long)resident.res.peak_backend_bytes,
            (unsigned long long)spilled.res.peak_backend_bytes);
    run_free(&resident);
    run_free(&spilled);
}

static void test_core_memory__spill_is_bit_identical(void **state) { (void)state; spill_matches(CFG_SLIM_LORA); }
static void test_core_memory__spill_is_bit_identical_sparsegpt(void **state) { (void)state; spill_matches(CFG_SPARSEGPT_OPTQ); }

/* Block blk of a and of b hold the same bytes (linears and the first norm). */
static void assert_same_block(struct model *a, struct model *b, int blk)
{
    for (int r = 0; r < LIN_COUNT; r++) {
        const struct linear *la = &a->blocks[blk].lin[r], *lb = &b->blocks[blk].lin[r];
        if (!la->w) continue;
        size_t n = (size_t)la->d_out * la->d_in;
        float *ha = fetch(a, la->w, n), *hb = fetch(b, lb->w, n);
        assert_memory_equal(ha, hb, sizeof *ha * n);
        free(ha);
        free(hb);
    }
    float *na = fetch(a, a->blocks[blk].norm1_w, 64), *nb = fetch(b, b->blocks[blk].norm1_w, 64);
    assert_memory_equal(na, nb, sizeof *na * 64);
    free(na);
    free(nb);
}

/* Blocks prepared on the helper thread load to the same bytes as plain loads. */
static void test_core_memory__prefetch_is_bit_identical(void **state)
{
    (void)state;
    struct compress_opts o;
    struct run plain, pre;
    opts_of(&o, CFG_SLIM_LORA);
    o.prefetch = -1;
    run_compress(&plain, &o, 4, 32, 0);
    o.prefetch = 0;
    o.unload_blocks = true;   /* prefetch while streaming, the case it is for */
    run_compress(&pre, &o, 4, 32, 0);
    assert_same_result(&plain, &pre);
    run_free(&plain);
    run_free(&pre);

    /* model level: a prefetched block equals a plain load; one never used is freed with the model */
    struct model *a = NULL, *b = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_open(&a, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    assert_int_equal(model_open(&b, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    assert_int_equal(model_block_prefetch(b, 2, 0, &err), 0);
    assert_non_null(b->prefetch);
    assert_int_equal(model_block_load(b, 1, &err), 0);   /* another block: the prefetch waits */
    assert_non_null(b->prefetch);
    assert_int_equal(model_block_load(b, 2, &err), 0);
    assert_null(b->prefetch);                             /* used up */
    assert_int_equal(model_block_load(a, 2, &err), 0);
    assert_same_block(a, b, 2);
    assert_int_equal(model_block_prefetch(b, 3, 0, &err), 0);
    assert_int_equal(model_block_prefetch(b, 4, 0, &err), 0);   /* drops the previous one */
    assert_int_equal(model_block_prefetch(b, 2, 0, &err), 0);   /* loaded already: nothing to do */
    assert_null(b->prefetch);
    assert_int_equal(model_block_prefetch(b, 4, 0, &err), 0);
    model_free(a);
    model_free(b);                                          /* joins the pending one */
}

/* The prefetch thread's uploads (upload_async on the copy stream): used when the backend has the
** ops and room for a second block, and every way they can fail falls back to the plain upload of
** the host copy, to the same bytes. A view of kb counts the calls and injects the failures. */
static const struct kbackend_i *up_real;
static int up_calls, up_fail_every, up_sync_fails;

/* The CPU backend has no copy stream (a copy there overlaps nothing): for it the view's ops are a
** plain memcpy (its memory is the host's), which still drives model.c's whole prefetch path. */
static int up_upload_async(struct kbackend *k, void *dst, const void *src, size_t n, struct slm_err *err)
{
    int call = __atomic_add_fetch(&up_calls, 1, __ATOMIC_SEQ_CST);   /* the prefetch thread calls it */
    if (up_fail_every && call % up_fail_every == 0) return slm_err_set(err, SLM_ECUDA, "injected upload failure");
    if (up_real->upload_async) return up_real->upload_async(k, dst, src, n, err);
    memcpy(dst, src, n);
    return 0;
}
static int up_copy_sync(struct kbackend *k, struct slm_err *err)
{
    if (up_sync_fails > 0 && up_sync_fails--) return slm_err_set(err, SLM_ECUDA, "injected sync failure");
    return up_real->copy_sync ? up_real->copy_sync(k, err) : 0;
}
static int up_copy_after_queued(struct kbackend *k, struct slm_err *err)
{
    return up_real->copy_after_queued ? up_real->copy_after_queued(k, err) : 0;
}

/* kb seen through the counting / failing copy-stream ops. */
static bool up_view(struct kbackend *view, struct kbackend_i *f)
{
    *view = *kb;
    *f = *kb->iface;
    if (!f->upload_async && strcmp(kb_name(kb), "cpu")) return false;
    up_real = kb->iface;
    f->upload_async = up_upload_async;
    f->copy_sync = up_copy_sync;
    f->copy_after_queued = up_copy_after_queued;
    view->iface = f;
    return true;
}

/* tight: a budget with room for b's load but not for a prefetch (a third of it < a block) */
static void prefetched_load_matches(struct kbackend *view, int fail_every, int sync_fails, bool tight, bool expect_calls)
{
    struct model *a = NULL, *b = NULL;
    struct slm_err err = SLM_ERR_INIT;
    struct kmem_stats st;
    up_calls = 0;
    up_fail_every = fail_every;
    up_sync_fails = sync_fails;
    assert_int_equal(model_open(&a, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    assert_int_equal(model_open(&b, model_dir, view, MODEL_LAZY_BLOCKS, &err), 0);
    /* a's block first: what a load takes, as the backend counts it, sizes the budget */
    assert_int_equal(kb_mem_stats(kb, &st, false, &err), 0);
    int64_t before_load = st.in_use;
    assert_int_equal(model_block_load(a, 2, &err), 0);
    assert_int_equal(kb_mem_stats(kb, &st, false, &err), 0);
    if (tight) {   /* room for b's load, but a third of it is less than a block */
        assert_true(st.in_use - before_load + 65536 < 3 * (int64_t)model_block_nbytes(a, 2));
        assert_int_equal(kbackend_set_limit(kb, (size_t)(2 * st.in_use - before_load + 65536), &err), 0);
    }
    int64_t a_load = st.in_use - before_load, before_prefetch = st.in_use;
    assert_int_equal(model_block_prefetch(b, 2, 0, &err), 0);
    assert_int_equal(model_block_load(b, 2, &err), 0);
    assert_int_equal(kbackend_set_limit(kb, 0, &err), 0);
    /* b's block holds exactly what a's does: no buffer of the prefetch is left over, whether it
    ** was filled, refilled by the fallback, or given back after a second sync */
    assert_int_equal(kb_mem_stats(kb, &st, false, &err), 0);
    assert_int_equal(st.in_use - before_prefetch, a_load);
    if (expect_calls ? up_calls == 0 : up_calls != 0) fprintf(stderr, "%d upload_async calls\n", up_calls);
    assert_true(expect_calls ? up_calls > 0 : up_calls == 0);
    assert_same_block(a, b, 2);
    /* a prefetch never used gives its buffers back */
    assert_int_equal(kb_mem_stats(kb, &st, false, &err), 0);
    int64_t before = st.in_use;
    assert_int_equal(model_block_prefetch(b, 3, 0, &err), 0);
    model_prefetch_drop(b);
    assert_int_equal(kb_mem_stats(kb, &st, false, &err), 0);
    assert_int_equal(st.in_use, before);
    model_free(a);
    model_free(b);
}

static void test_core_memory__prefetch_uploads_beside_the_ops(void **state)
{
    (void)state;
    struct kbackend view;
    struct kbackend_i f;
    if (!up_view(&view, &f)) {
        fprintf(stderr, "backend %s has no upload_async: skipped\n", kb_name(kb));
        skip();
    }
    prefetched_load_matches(&view, 0, 0, false, true);   /* every tensor through the copy stream */
    prefetched_load_matches(&view, 3, 0, false, true);   /* every third upload fails: those load the plain way */
    /* the copies' sync fails: all load the plain way, and the unused buffers go back once a
    ** second sync succeeds */
    prefetched_load_matches(&view, 0, 1, false, true);
    prefetched_load_matches(&view, 0, 0, true, false);   /* no room for a second block: no uploads */
    /* without the ops: the thread only converts */
    f.upload_async = NULL;
    f.copy_sync = NULL;
    f.copy_after_queued = NULL;
    prefetched_load_matches(&view, 0, 0, false, false);
}

/* Taking block b+1's buffers ahead must not cost the run its budget: block b's own work comes
** first (model_block_prefetch's reserve). Under the peak of a run without prefetch, and a little
** above it, the run with uploads beside the ops compresses too, to the same weights. */
static void prefetch_within_budget(int cfg)
{
    struct kbackend view;
    struct kbackend_i f;
    struct compress_opts o;
    struct run plain, pre;
    if (!up_view(&view, &f)) {
        fprintf(stderr, "backend %s has no upload_async: skipped\n", kb_name(kb));
        skip();
    }
    up_calls = up_fail_every = up_sync_fails = 0;
    opts_of(&o, cfg);
    o.spill = -1;
    o.unload_blocks = true;
    o.prefetch = -1;
    run_compress(&plain, &o, 4, 32, 0);
    assert_int_equal(plain.rc, 0);
    size_t need = (size_t)(plain.res.peak_backend_bytes - plain.base);
    o.prefetch = 0;
    run_kb = &view;
    for (size_t extra = 0; extra <= 256 * 1024; extra += 32 * 1024) {
        run_compress(&pre, &o, 4, 32, need + extra);
        if (pre.rc) fprintf(stderr, "budget %zu + %zu: %s\n", need, extra, pre.err.msg);
        assert_same_result(&plain, &pre);
        run_free(&pre);
    }
    run_compress(&pre, &o, 4, 32, 0);   /* unlimited: the uploads do happen */
    assert_same_result(&plain, &pre);
    assert_true(up_calls > 0);
    run_free(&pre);
    run_kb = NULL;
    run_free(&plain);
}

static void test_core_memory__prefetch_within_budget(void **state) { (void)state; prefetch_within_budget(CFG_SLIM_LORA); }
static void test_core_memory__prefetch_within_budget_sparsegpt(void **state)
{
    (void)state;
    prefetch_within_budget(CFG_SPARSEGPT_OPTQ);
}

/* A budget that holds one block compresses the model with streaming, to the weights of the
** unlimited run; the same budget without streaming, or one smaller than a block, fails with
** -SLM_ENOMEM naming the block, the stage and the sizes. */
static void test_core_memory__budget_streams_or_fails_clearly(void **state)
{
    (void)state;
    struct compress_opts o;
    struct run free_run, streamed, whole, tiny;
    opts_of(&o, CFG_SPARSEGPT_OPTQ);
    o.spill = -1;
    o.unload_blocks = true;
    run_compress(&free_run, &o, 4, 32, 0);
    assert_int_equal(free_run.rc, 0);
    assert_int_equal(free_run.res.peak_blocks, 1);
    size_t need = (size_t)(free_run.res.peak_backend_bytes - (uint64_t)free_run.base);
    run_compress(&streamed, &o, 4, 32, need);   /* exactly the streamed peak */
    if (streamed.rc) fprintf(stderr, "streamed: %s\n", streamed.err.msg);
    assert_same_result(&free_run, &streamed);
    assert_true(streamed.res.peak_backend_bytes <= (uint64_t)streamed.base + need);

    o.unload_blocks = false;   /* all five blocks stay: more than the budget */
    o.on_block = NULL;
    run_compress(&whole, &o, 4, 32, need);
    fprintf(stderr, "whole model under the streaming budget: %s\n", whole.err.msg);
    assert_int_equal(whole.rc, -SLM_ENOMEM);
    assert_non_null(strstr(whole.err.msg, " of 5, "));
    /* "out of backend memory" on the CPU, "out of device memory" on a GPU */
    assert_non_null(strstr(whole.err.msg, "out of "));
    assert_non_null(strstr(whole.err.msg, " memory allocating "));

    struct model *m = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(model_open(&m, model_dir, kb, MODEL_LAZY_BLOCKS, &err), 0);
    uint64_t block = model_block_nbytes(m, 0), acts = (uint64_t)4 * 32 * 64 * sizeof(float);
    model_free(m);
    assert_true(block > 100000);   /* stories260K: 7 linears + 2 norms of a 64-wide LLaMA block */
    o.unload_blocks = true;
    run_compress(&tiny, &o, 4, 32, (size_t)(acts + 32 * 64 * sizeof(float) + block / 2));
    fprintf(stderr, "budget below one block: %s\n", tiny.err.msg);
    assert_int_equal(tiny.rc, -SLM_ENOMEM);
    char sz[24], want[96];
    snprintf(want, sizeof want, "block 1 of 5, load (%s of weights): cpu: out of backend memory allocating ",
             kb_size_str(sz, sizeof sz, block));
    if (!strcmp(kb_name(kb), "cpu")) assert_true(strncmp(tiny.err.msg, want, strlen(want)) == 0);
    else assert_true(strncmp(tiny.err.msg, "block 1 of 5, load (", 20) == 0);
    assert_non_null(strstr(tiny.err.msg, ", limit "));
    run_free(&free_run);
    run_free(&streamed);
    run_free(&whole);
    run_free(&tiny);
}

/* Under a budget the activations do not fit beside a block: automatic spilling keeps them on the
** host and the job runs to the same weights; forbidding it fails naming the calibration inputs. */
static void test_core_memory__auto_spill_under_budget(void **state)
{
    (void)state;
    enum { NS = 64, T = 128 };   /* 2 MiB of activations: more than a block and its working set */
    struct compress_opts o;
    struct run ref, host, autos, never;
    opts_of(&o, CFG_SPARSEGPT_OPTQ);
    o.unload_blocks = true;
    o.spill = -1;
    run_compress(&ref, &o, NS, T, 0);
    o.spill = 1;
    run_compress(&host, &o, NS, T, 0);
    assert_int_equal(host.rc, 0);
    size_t budget = (size_t)(host.res.peak_backend_bytes - (uint64_t)host.base);
    assert_true(budget < (size_t)NS * T * 64 * sizeof(float));
    o.spill = 0;
    run_compress(&autos, &o, NS, T, budget);
    if (autos.rc) fprintf(stderr, "auto: %s\n", autos.err.msg);
    assert_same_result(&ref, &autos);
    assert_true(autos.res.calib_spilled);
    assert_false(ref.res.calib_spilled);   /* no budget on the CPU: they stay in backend memory */
    o.spill = -1;
    run_compress(&never, &o, NS, T, budget);
    fprintf(stderr, "activations forced into a small budget: %s\n", never.err.msg);
    assert_int_equal(never.rc, -SLM_ENOMEM);
    assert_true(strncmp(never.err.msg, "calibration inputs (64 windows of 128 x 64): ", 45) == 0);
    run_free(&ref);
    run_free(&host);
    run_free(&autos);
    run_free(&never);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_memory__err_prefix),
        cmocka_unit_test(test_core_memory__cpu_accounting_and_budget),
        cmocka_unit_test(test_core_memory__spill_is_bit_identical),
        cmocka_unit_test(test_core_memory__spill_is_bit_identical_sparsegpt),
        cmocka_unit_test(test_core_memory__prefetch_is_bit_identical),
        cmocka_unit_test(test_core_memory__prefetch_uploads_beside_the_ops),
        cmocka_unit_test(test_core_memory__prefetch_within_budget),
        cmocka_unit_test(test_core_memory__prefetch_within_budget_sparsegpt),
        cmocka_unit_test(test_core_memory__budget_streams_or_fails_clearly),
        cmocka_unit_test(test_core_memory__auto_spill_under_budget),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
