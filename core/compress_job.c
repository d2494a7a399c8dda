/*
** core/compress_job.c: compression as a job step (see compress.h): calibration documents from a
** text file through the model's tokenizer, the §1.2 sampler, compress_model(), figures.
** Separate from compress.c so that users of the matrix-level pipeline do not link the tokenizer.
*/
#include "compress.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fileio.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- calibration documents ---- */

void calib_docs_free(struct calib_docs *d)
{
    if (!d) return;
    for (int i = 0; i < d->ndocs; i++) free(d->ids[i]);
    free(d->ids);
    free(d->len);
    memset(d, 0, sizeof *d);
}

static int docs_push(struct calib_docs *d, int *cap, struct tokenizer *tok, const char *s, size_t n, struct slm_err *err)
{
    if (d->ndocs == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        int32_t **ni = realloc(d->ids, sizeof *ni * (size_t)nc);
        if (!ni) return slm_err_set(err, SLM_ENOMEM, "calibration documents: out of memory");
        d->ids = ni;
        size_t *nl = realloc(d->len, sizeof *nl * (size_t)nc);
        if (!nl) return slm_err_set(err, SLM_ENOMEM, "calibration documents: out of memory");
        d->len = nl;
        *cap = nc;
    }
    int rc = tokenizer_encode(tok, s, n, true, &d->ids[d->ndocs], &d->len[d->ndocs], err);
    if (!rc) d->ndocs++;
    return rc;
}

int calib_docs_from_text(struct calib_docs *out, struct tokenizer *tok, const char *text, size_t len,
                         struct slm_err *err)
{
    int cap = 0, rc = 0;
    memset(out, 0, sizeof *out);
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t')) i++;
    bool jsonl = i < len && text[i] == '{';
    int line = 0;
    while (i < len && !rc) {
        line++;
        if (jsonl) {
            const char *nl = memchr(text + i, '\n', len - i);
            size_t e = nl ? (size_t)(nl - text) : len;
            if (e > i) {
                json_error_t je;
                json_t *o = json_loadb(text + i, e - i, 0, &je);
                json_t *t = o ? json_object_get(o, "text") : NULL;
                if (!json_is_string(t)) rc = slm_err_set(err, SLM_EFORMAT, "calibration line %d: not a JSON object with a \"text\" string", line);
                else rc = docs_push(out, &cap, tok, json_string_value(t), json_string_length(t), err);
                json_decref(o);
            }
            i = e + 1;
        } else {
            const char *sep = NULL;
            for (size_t k = i; k + 1 < len; k++)
                if (text[k] == '\n' && text[k + 1] == '\n') { sep = text + k; break; }
            size_t e = sep ? (size_t)(sep - text) : len;
            if (e > i) rc = docs_push(out, &cap, tok, text + i, e - i, err);
            i = e + 2;
        }
    }
    if (!rc && out->ndocs == 0) rc = slm_err_set(err, SLM_EINVAL, "calibration text holds no documents");
    if (rc) calib_docs_free(out);
    return rc;
}

/* ---- compress_run ---- */

int compress_run(struct model *m, const struct jobspec *spec, struct tokenizer *tok, const char *calib_path,
                 const struct compress_hooks *hooks, struct compress_result *res, json_t **figures,
                 struct slm_err *err)
{
    struct compress_opts o;
    struct compress_result local = { 0 }, *r = res ? res : &local;
    struct calib_docs docs = { 0 };
    int32_t *ids = NULL;
    char *text = NULL;
    size_t len = 0;
    json_t *fig = NULL;
    int rc;
    if (figures) *figures = NULL;
    if ((rc = compress_opts_from_spec(&o, spec, err))) return rc;
    if (hooks) {
        o.progress = hooks->progress;
        o.payload = hooks->payload;
        o.cancel = hooks->cancel;
        o.on_block = hooks->on_block;
        o.block_payload = hooks->block_payload;
        o.unload_blocks = hooks->on_block != NULL;
    }
    o.keep_codes = res != NULL || o.on_block;
    int n = spec->calibration.nsamples, T = spec->calibration.seqlen;
    if (m->cfg.max_pos > 0 && T > m->cfg.max_pos)
        return slm_err_set(err, SLM_EINVAL, "/calibration/seqlen: %d exceeds the model's %d positions", T, m->cfg.max_pos);
    double t0 = now_s();
    if ((rc = file_read_all(calib_path, (size_t)1 << 32, &text, &len, err))) goto done;
    if ((rc = calib_docs_from_text(&docs, tok, text, len, err))) goto done;
    if ((rc = calib_sample(&ids, &docs, n, T, spec->calibration.seed, err))) goto done;
    double t_cal = now_s() - t0;
    if ((rc = compress_model(m, ids, n, T, &o, r, err))) goto done;
    if (figures) {
        json_t *layers = json_array();
        double sp = r->weights ? (double)r->zeros / (double)r->weights : 0;
        for (int b = 0; layers && b < r->nblocks; b++)
            for (int k = 0; k < LIN_COUNT; k++) {
                const struct compressed_linear *cl = &r->lin[b][k];
                if (cl->present)   /* names stay when a block is unloaded */
                    json_array_append_new(layers, json_pack("{s:s,s:f,s:i}", "name", m->blocks[b].lin[k].name,
                                                            "rel_error", cl->rel_error, "rank", cl->rank));
            }
        fig = json_pack("{s:f,s:{s:i,s:i,s:i,s:f},s:o,s:f,s:{s:i,s:I,s:I,s:I,s:I,s:b}}", "seconds", r->seconds,
                        "calibration", "nsamples", n, "seqlen", T, "documents", docs.ndocs, "seconds", t_cal,
                        "layers", layers ? layers : json_null(), "measured_sparsity", sp,
                        "resident", "peak_blocks", r->peak_blocks, "peak_block_bytes", (json_int_t)r->peak_block_bytes,
                        "host_adapter_bytes", (json_int_t)r->host_adapter_bytes,
                        "peak_backend_bytes", (json_int_t)r->peak_backend_bytes,
                        "calibration_bytes", (json_int_t)r->calib_bytes, "calibration_spilled", r->calib_spilled);
        if (!fig) { rc = slm_err_set(err, SLM_ENOMEM, "compress figures: out of memory"); goto done; }
        *figures = fig;
    }
done:
    if (r == &local) compress_result_free(&local);
    calib_docs_free(&docs);
    free(ids);
    free(text);
    return rc;
}
