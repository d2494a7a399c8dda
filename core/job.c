/*
** core/job.c: one job spec, end to end, on a local model folder (see job.h).
** Stages: loading -> (calibrating/compressing -> saving) -> evaluating. Methods plug in through
** the method table below; evaluation and reporting are shared by all of them.
*/
#include "job.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "checkpoint.h"
#include "compress.h"
#include "eval.h"
#include "fileio.h"
#include "model.h"
#include "safetensors.h"
#include "slicegpt.h"
#include "tokenizer.h"
#include "../kernels/kbackend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct job_state {
    const struct jobspec *spec;
    const struct job_ctx *ctx;
    double stage_lo, stage_hi;      /* slice of overall progress this stage covers */
    const char *stage;
    /* token ids of each evaluation dataset, tokenized once for the before and after runs */
    int32_t *eval_ids[JOBSPEC_MAX_EVAL];
    size_t eval_n[JOBSPEC_MAX_EVAL];
};

static int report(struct job_state *js, double frac_in_stage, int block, int nblocks, const char *msg)
{
    const struct job_ctx *c = js->ctx;
    if (c->cancel && *c->cancel) return 1;
    if (!c->progress) return 0;
    struct job_progress p = { js->stage, block, nblocks, js->stage_lo + (js->stage_hi - js->stage_lo) * frac_in_stage, msg };
    return c->progress(&p, c->payload);
}

static int eval_progress(int done, int total, void *payload)
{
    char msg[96];
    snprintf(msg, sizeof msg, "window %d of %d", done, total);
    return report(payload, (double)done / total, -1, -1, msg);
}

/* Resolve a dataset name to a text file: an existing path, else DATA_DIR/NAME.txt. */
static int dataset_path(char *out, size_t n, const struct job_ctx *ctx, const char *name, struct slm_err *err)
{
    struct stat st;
    if (strchr(name, '/') && stat(name, &st) == 0 && S_ISREG(st.st_mode)) {
        snprintf(out, n, "%s", name);
        return 0;
    }
    if (strchr(name, '/') || strstr(name, ".."))
        return slm_err_set(err, SLM_ENOTFOUND, "dataset '%s' not found", name);
    snprintf(out, n, "%s/%s.txt", ctx->data_dir ? ctx->data_dir : ".", name);
    if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) return 0;
    return slm_err_set(err, SLM_ENOTFOUND, "dataset '%s': %s not found", name, out);
}

/* Perplexity of m on every dataset of the spec; adds {name: value} into obj. */
static int eval_all(struct job_state *js, struct model *m, struct tokenizer *tok, json_t *obj, struct slm_err *err)
{
    const struct jobspec *s = js->spec;
    for (int i = 0; i < s->eval.n_perplexity; i++) {
        int rc;
        if (!js->eval_ids[i]) {
            char path[4200], *text = NULL;
            size_t len = 0;
            if ((rc = dataset_path(path, sizeof path, js->ctx, s->eval.perplexity[i], err)) ||
                (rc = file_read_all(path, (size_t)1 << 32, &text, &len, err)))
                return rc;
            rc = tokenizer_encode(tok, text, len, true, &js->eval_ids[i], &js->eval_n[i], err);
            free(text);
            if (rc) return rc;
        }
        struct eval_opts o = EVAL_OPTS_INIT;
        struct eval_result r;
        o.seqlen = s->eval.seqlen;
        o.batch = s->eval.batch > 0 ? s->eval.batch : 1;
        o.progress = eval_progress;
        o.payload = js;
        o.cancel = js->ctx->cancel;
        if ((rc = eval_perplexity(m, js->eval_ids[i], js->eval_n[i], &o, &r, err))) return rc;
        json_object_set_new(obj, s->eval.perplexity[i],
                            json_pack("{s:f,s:i,s:I,s:f}", "perplexity", r.ppl, "windows", r.nwindows, "tokens",
                                      (json_int_t)r.ntokens, "seconds", r.seconds));
        free(r.window_nll);
    }
    return 0;
}

/* ---- method "slim" (core/compress.h) ---- */

static int compress_progress(const struct compress_progress *p, void *payload)
{
    struct job_state *js = payload;
    char msg[200];
    if (p->layer) snprintf(msg, sizeof msg, "%s: relative error %.4g", p->layer, p->rel_error);
    else snprintf(msg, sizeof msg, "%s block %d of %d", p->stage, p->block + 1, p->nblocks);
    return report(js, p->fraction, p->block, p->nblocks, msg);
}

/* Calibration text: DATA_DIR/NAME.jsonl (C4's JSON lines), else what dataset_path finds. */
static int calib_path(char *out, size_t n, const struct job_ctx *ctx, const char *name, struct slm_err *err)
{
    struct stat st;
    if (!strchr(name, '/') && !strstr(name, "..")) {
        snprintf(out, n, "%s/%s.jsonl", ctx->data_dir ? ctx->data_dir : ".", name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) return 0;
    }
    return dataset_path(out, n, ctx, name, err);
}

/* Compress and evaluate. With an output folder, each block goes to the checkpoint writer as soon
** as it is compressed and is then dropped (one block resident), and the "after" figures come from
** the written checkpoint, its blocks loaded one at a time; without one, the compressed model stays
** in memory. */
static int job_compress_slim(struct job_state *js, struct model *m, struct tokenizer **tok, json_t *out, json_t *timings,
                             json_t *ppl_after, struct slm_err *err)
{
    const struct job_ctx *ctx = js->ctx;
    char path[4200];
    json_t *fig = NULL, *mem = NULL;
    struct compress_result cr = { 0 };
    struct compress_opts co;
    struct checkpoint_writer *w = NULL;
    struct model *r = NULL, *after = m;
    int rc;
    if ((rc = compress_opts_from_spec(&co, js->spec, err))) return rc;
    if (!*tok && (rc = tokenizer_open(tok, ctx->model_dir, err))) return rc;
    if ((rc = calib_path(path, sizeof path, ctx, js->spec->calibration.dataset, err))) return rc;
    js->stage = "compressing";
    js->stage_lo = 0.25;
    js->stage_hi = 0.8;
    double t = now_s();
    if (ctx->out_dir && (rc = checkpoint_writer_open(&w, ctx->out_dir, m, &co, err))) return rc;
    struct compress_hooks h = { compress_progress, js, ctx->cancel, w ? checkpoint_writer_block : NULL, w };
    if ((rc = compress_run(m, js->spec, *tok, path, &h, w ? &cr : NULL, &fig, err))) goto done;
    json_object_set_new(out, "compression", fig);
    json_object_set_new(timings, "compressing", json_real(now_s() - t));
    if (w) {
        js->stage = "saving";
        js->stage_lo = js->stage_hi = 0.8;
        if (report(js, 0, -1, -1, "finishing the compressed checkpoint")) { rc = slm_err_set(err, SLM_ECANCELLED, "cancelled"); goto done; }
        t = now_s();
        rc = checkpoint_writer_finish(w, &cr, js->spec->raw, fig, &mem, err);
        w = NULL;   /* freed by finish */
        /* the tokenizer travels with the checkpoint: `slim eval OUT --text` works on it alone */
        if (!rc) rc = tokenizer_copy_files(ctx->model_dir, ctx->out_dir, NULL, err);
        if (rc) goto done;
        json_object_set_new(out, "memory", mem);   /* the measured report replaces the dense figure */
        json_object_set_new(timings, "saving", json_real(now_s() - t));
        /* activation quantization comes with the checkpoint's spec (checkpoint_open) */
        if ((rc = checkpoint_open(&r, ctx->out_dir, m->kb, MODEL_LAZY_BLOCKS, err))) goto done;
        after = r;
    } else {
        /* activation quantization is an evaluation-time emulation, applied after compression (§3.6) */
        const struct jobspec *s = js->spec;
        if (s->quantization.input &&
            (rc = model_set_input_quant(m, s->quantization.input, s->quantization.input_bits, s->quantization.input_group_size, err)))
            goto done;
    }
    js->stage = "evaluating";
    js->stage_lo = 0.8;
    js->stage_hi = 1.0;
    t = now_s();
    if ((rc = eval_all(js, after, *tok, ppl_after, err))) goto done;
    json_object_set_new(timings, "evaluating", json_real(now_s() - t));
done:
    checkpoint_writer_abort(w);
    compress_result_free(&cr);
    model_free(r);
    return rc;
}

/* ---- SliceGPT ---- */

/* nsamples windows of seqlen tokens from the calibration dataset, starts drawn uniformly with a
** seeded generator (splitmix64). A NAME.json dataset holds token ids (eval_load_ids_json); any
** other is text, tokenized once. *out malloc'd [nsamples x seqlen]. */
static int calib_ids(struct job_state *js, struct tokenizer *tok, int32_t **out, struct slm_err *err)
{
    const struct jobspec *s = js->spec;
    char path[4200], *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL, *w = NULL;
    int rc;
    *out = NULL;
    const char *name = s->calibration.dataset ? s->calibration.dataset : "wikitext2";
    if ((rc = dataset_path(path, sizeof path, js->ctx, name, err))) {
        char alt[4200];
        struct slm_err e2 = SLM_ERR_INIT;
        snprintf(alt, sizeof alt, "%s/%s.json", js->ctx->data_dir ? js->ctx->data_dir : ".", name);
        if (strchr(name, '/') || eval_load_ids_json(alt, &ids, &n, &e2)) return rc;
        slm_err_clear(err);
        rc = 0;
    } else if (strlen(path) > 5 && !strcmp(path + strlen(path) - 5, ".json")) {
        if ((rc = eval_load_ids_json(path, &ids, &n, err))) return rc;
    } else {
        if (!tok) return slm_err_set(err, SLM_ENOTFOUND, "calibration: the model folder has no tokenizer");
        if ((rc = file_read_all(path, (size_t)1 << 32, &text, &len, err))) return rc;
        rc = tokenizer_encode(tok, text, len, false, &ids, &n, err);
        free(text);
        if (rc) return rc;
    }
    size_t T = (size_t)s->calibration.seqlen, N = (size_t)s->calibration.nsamples;
    if (n < T) {
        rc = slm_err_set(err, SLM_EINVAL, "/calibration/seqlen: dataset '%s' has %zu tokens, fewer than %zu", name, n, T);
        goto done;
    }
    if (!(w = malloc(N * T * sizeof *w))) { rc = slm_err_set(err, SLM_ENOMEM, "calibration: %zu x %zu ids", N, T); goto done; }
    uint64_t st = (uint64_t)s->calibration.seed;
    for (size_t i = 0; i < N; i++) {
        uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        size_t start = (size_t)(z % (uint64_t)(n - T + 1));
        memcpy(w + i * T, ids + start, T * sizeof *w);
    }
    *out = w;
done:
    free(ids);
    return rc;
}

static int sg_progress(int block, int nblocks, void *payload)
{
    char msg[64];
    snprintf(msg, sizeof msg, "block %d of %d rotated and sliced", block, nblocks);
    return report(payload, (double)block / nblocks, block - 1, nblocks, msg);
}

/* Compress m in place with SliceGPT and save it to ctx->out_dir; adds "memory" and "artifacts". */
static int run_slicegpt(struct job_state *js, struct model *m, struct tokenizer *tok, json_t *out, json_t *timings,
                        struct slm_err *err)
{
    const struct jobspec *s = js->spec;
    int32_t *ids = NULL;
    int rc;
    double t = now_s();
    js->stage = "calibrating";
    if (report(js, 0, -1, -1, "reading calibration data")) return slm_err_set(err, SLM_ECANCELLED, "cancelled");
    if ((rc = calib_ids(js, tok, &ids, err))) return rc;
    struct slicegpt_opts o = SLICEGPT_OPTS_INIT;
    o.sparsity = s->slicegpt.sparsity;
    o.round_to = s->slicegpt.round_to;
    o.reference_compat = s->slicegpt.reference_compat;
    o.progress = sg_progress;
    o.payload = js;
    o.cancel = js->ctx->cancel;
    int64_t before = slicegpt_model_params(m);
    uint64_t bytes_before = st_model_nbytes(m->st);
    js->stage = "compressing";
    rc = slicegpt_run(m, ids, s->calibration.nsamples, s->calibration.seqlen, &o, err);
    free(ids);
    if (rc) return rc;
    json_object_set_new(timings, "compressing", json_real(now_s() - t));
    js->stage = "saving";
    t = now_s();
    if (report(js, 0, -1, -1, "writing model.safetensors")) return slm_err_set(err, SLM_ECANCELLED, "cancelled");
    enum dtype dt = st_model_count(m->st) ? st_model_at(m->st, 0)->dtype : DT_F32;
    if (dt != DT_BF16 && dt != DT_F16) dt = DT_F32;
    if (!js->ctx->out_dir) return slm_err_set(err, SLM_EINVAL, "job: no output folder for the compressed model");
    if ((rc = model_save(m, js->ctx->out_dir, dt, err)) || (rc = tokenizer_copy_files(js->ctx->model_dir, js->ctx->out_dir, NULL, err)))
        return rc;
    json_object_set_new(timings, "saving", json_real(now_s() - t));
    char path[4200];
    struct stat stt;
    snprintf(path, sizeof path, "%s/model.safetensors", js->ctx->out_dir);
    int64_t after = slicegpt_model_params(m), bytes_after = stat(path, &stt) == 0 ? (int64_t)stt.st_size : -1;
    json_object_set_new(out, "memory", json_pack("{s:I,s:I,s:I,s:I,s:i}", "params_before", (json_int_t)before, "params_after",
                                                 (json_int_t)after, "bytes_before", (json_int_t)bytes_before, "bytes_after",
                                                 (json_int_t)bytes_after, "kept_width", m->embed_width));
    json_object_set_new(out, "artifacts", json_pack("[s,s]", "model.safetensors", "config.json"));
    return 0;
}

int job_run(const struct jobspec *spec, const struct job_ctx *ctx, json_t **metrics, struct slm_err *err)
{
    struct job_state js = { .spec = spec, .ctx = ctx, .stage_lo = 0, .stage_hi = 0.05, .stage = "loading" };
    struct kbackend *kb = NULL;
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    json_t *out = json_object(), *timings = json_object(), *ppl_before = json_object(), *ppl_after = json_object();
    int rc = 0;
    double t0 = now_s();
    *metrics = NULL;
    if (!out || !timings || !ppl_before || !ppl_after) { rc = slm_err_set(err, SLM_ENOMEM, "job: metrics"); goto done; }
    const char *device = ctx->device ? ctx->device
                                     : spec->device == JS_DEVICE_CPU ? "cpu" : spec->device == JS_DEVICE_CUDA ? "cuda" : "auto";
    if (report(&js, 0, -1, -1, "opening backend")) { rc = slm_err_set(err, SLM_ECANCELLED, "cancelled"); goto done; }
    if ((rc = kbackend_open(&kb, device, err))) goto done;
    /* a budget below the device's memory (SLIM_MEM_LIMIT_MB): shared GPUs, and OOM tests on the CPU */
    if ((rc = kbackend_limit_from_env(kb, err))) goto done;
    rc = checkpoint_is(ctx->model_dir) ? checkpoint_open(&m, ctx->model_dir, kb, MODEL_LAZY_BLOCKS, err)
                                       : model_open(&m, ctx->model_dir, kb, MODEL_LAZY_BLOCKS, err);
    if (rc) goto done;
    if (spec->eval.n_perplexity > 0 && (rc = tokenizer_open(&tok, ctx->model_dir, err))) goto done;
    if (!tok && spec->method == JS_METHOD_SLICEGPT && tokenizer_open(&tok, ctx->model_dir, err)) {
        tok = NULL;          /* calibration from an ids file needs none; calib_ids says so otherwise */
        slm_err_clear(err);
    }
    if (spec->method == JS_METHOD_SLIM) {
        /* what the model's shapes rule out fails before the baseline evaluation */
        struct compress_opts co;
        if ((rc = compress_opts_from_spec(&co, spec, err)) || (rc = compress_check_model(m, &co, err))) goto done;
    }
    json_object_set_new(out, "device", json_string(kb_name(kb)));
    json_object_set_new(out, "architecture", json_string(m->cfg.model_type));
    json_object_set_new(timings, "loading", json_real(now_s() - t0));

    bool compress = spec->method != JS_METHOD_EVAL;
    if (spec->eval.baseline || !compress) {
        js.stage = "evaluating";
        js.stage_lo = 0.05;
        js.stage_hi = compress ? 0.25 : 1.0;
        double t = now_s();
        if ((rc = eval_all(&js, m, tok, ppl_before, err))) goto done;
        json_object_set_new(timings, compress ? "evaluating_baseline" : "evaluating", json_real(now_s() - t));
    }
    if (compress && spec->method == JS_METHOD_SLICEGPT) {
        js.stage_lo = js.stage_hi > 0.05 ? js.stage_hi : 0.05;
        js.stage_hi = 0.8;
        if ((rc = run_slicegpt(&js, m, tok, out, timings, err))) goto done;
        js.stage = "evaluating";
        js.stage_lo = 0.8;
        js.stage_hi = 1.0;
        double t = now_s();
        if ((rc = eval_all(&js, m, tok, ppl_after, err))) goto done;
        json_object_set_new(timings, "evaluating", json_real(now_s() - t));
    } else if (compress) {
        if ((rc = job_compress_slim(&js, m, &tok, out, timings, ppl_after, err))) goto done;
    }
    json_t *ppl = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(ppl_before, k, v) {
        json_t *e = json_object();
        json_object_set(e, "before", json_object_get(v, "perplexity"));
        json_t *a = json_object_get(ppl_after, k);
        if (a) json_object_set(e, "after", json_object_get(a, "perplexity"));
        json_object_set(e, "windows", json_object_get(v, "windows"));
        json_object_set_new(ppl, k, e);
    }
    json_object_foreach(ppl_after, k, v) {  /* datasets without a baseline */
        if (json_object_get(ppl, k)) continue;
        json_object_set_new(ppl, k, json_pack("{s:O,s:O}", "after", json_object_get(v, "perplexity"), "windows",
                                              json_object_get(v, "windows")));
    }
    json_object_set_new(out, "perplexity", ppl);
    if (!json_object_get(out, "memory"))
        json_object_set_new(out, "memory", json_pack("{s:I}", "dense_bytes", (json_int_t)st_model_nbytes(m->st)));
    json_object_set_new(timings, "total", json_real(now_s() - t0));
    json_object_set(out, "timings_s", timings);
    *metrics = out;
    out = NULL;
done:
    /* device trouble is answered with a smaller job or a bigger GPU: say in which stage it struck */
    if (rc && err && (err->rc == SLM_ENOMEM || err->rc == SLM_ECUDA)) slm_err_prefix(err, "%s", js.stage);
    for (int i = 0; i < JOBSPEC_MAX_EVAL; i++) free(js.eval_ids[i]);
    json_decref(out);
    json_decref(timings);
    json_decref(ppl_before);
    json_decref(ppl_after);
    tokenizer_free(tok);
    model_free(m);
    kbackend_free(kb);
    return rc;
}
