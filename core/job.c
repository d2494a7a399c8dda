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
        char path[4200], *text = NULL;
        size_t len = 0, n = 0;
        int32_t *ids = NULL;
        int rc;
        if ((rc = dataset_path(path, sizeof path, js->ctx, s->eval.perplexity[i], err)) || (rc = file_read_all(path, (size_t)1 << 32, &text, &len, err)))
            return rc;
        rc = tokenizer_encode(tok, text, len, true, &ids, &n, err);
        free(text);
        if (rc) return rc;
        struct eval_opts o = EVAL_OPTS_INIT;
        struct eval_result r;
        o.seqlen = s->eval.seqlen;
        o.batch = s->eval.batch > 0 ? s->eval.batch : 1;
        o.progress = eval_progress;
        o.payload = js;
        o.cancel = js->ctx->cancel;
        rc = eval_perplexity(m, ids, n, &o, &r, err);
        free(ids);
        if (rc) return rc;
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

/* Compress, save the checkpoint when an output folder is given, evaluate the compressed model. */
static int job_compress_slim(struct job_state *js, struct model *m, struct tokenizer **tok, json_t *out, json_t *timings,
                             json_t *ppl_after, struct slm_err *err)
{
    const struct job_ctx *ctx = js->ctx;
    char path[4200];
    json_t *fig = NULL, *mem = NULL;
    struct compress_result cr = { 0 };
    struct compress_opts co;
    int rc;
    if ((rc = compress_opts_from_spec(&co, js->spec, err))) return rc;
    if (!*tok && (rc = tokenizer_open(tok, ctx->model_dir, err))) return rc;
    if ((rc = calib_path(path, sizeof path, ctx, js->spec->calibration.dataset, err))) return rc;
    js->stage = "compressing";
    js->stage_lo = 0.25;
    js->stage_hi = 0.8;
    double t = now_s();
    if ((rc = compress_run(m, js->spec, *tok, path, compress_progress, js, ctx->cancel, &cr, &fig, err))) return rc;
    json_object_set_new(out, "compression", fig);
    json_object_set_new(timings, "compressing", json_real(now_s() - t));
    if (ctx->out_dir) {
        js->stage = "saving";
        js->stage_lo = js->stage_hi = 0.8;
        if (report(js, 0, -1, -1, "writing the compressed checkpoint")) rc = slm_err_set(err, SLM_ECANCELLED, "cancelled");
        t = now_s();
        if (!rc) rc = checkpoint_save(m, &cr, &co, ctx->out_dir, js->spec->raw, fig, &mem, err);
        if (!rc) json_object_set_new(out, "memory", mem);   /* the measured report replaces the dense figure */
        json_object_set_new(timings, "saving", json_real(now_s() - t));
    }
    compress_result_free(&cr);
    if (rc) return rc;
    js->stage = "evaluating";
    js->stage_lo = 0.8;
    js->stage_hi = 1.0;
    t = now_s();
    if ((rc = eval_all(js, m, *tok, ppl_after, err))) return rc;
    json_object_set_new(timings, "evaluating", json_real(now_s() - t));
    return 0;
}

int job_run(const struct jobspec *spec, const struct job_ctx *ctx, json_t **metrics, struct slm_err *err)
{
    struct job_state js = { spec, ctx, 0, 0.05, "loading" };
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
    if ((rc = model_open(&m, ctx->model_dir, kb, MODEL_LAZY_BLOCKS, err))) goto done;
    if (spec->eval.n_perplexity > 0 && (rc = tokenizer_open(&tok, ctx->model_dir, err))) goto done;
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
    if (compress) {
        if (spec->method != JS_METHOD_SLIM) {
            rc = slm_err_set(err, SLM_EUNSUPPORTED, "method 'slicegpt' is not available in this build");
            goto done;
        }
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
    json_object_set_new(out, "perplexity", ppl);
    if (!json_object_get(out, "memory"))
        json_object_set_new(out, "memory", json_pack("{s:I}", "dense_bytes", (json_int_t)st_model_nbytes(m->st)));
    json_object_set_new(timings, "total", json_real(now_s() - t0));
    json_object_set(out, "timings_s", timings);
    *metrics = out;
    out = NULL;
done:
    json_decref(out);
    json_decref(timings);
    json_decref(ppl_before);
    json_decref(ppl_after);
    tokenizer_free(tok);
    model_free(m);
    kbackend_free(kb);
    return rc;
}
