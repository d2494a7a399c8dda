/*
** core/job.h: run one job spec end to end on a local model folder: load, (calibrate, compress,
** save), evaluate, report. The daemon's worker child and `slim compress` call this same function.
** No threads, no HTTP, no SQL: progress goes out through a callback, cancellation comes in through
** a flag the core checks between and inside layers.
*/
#ifndef SLM_JOB_H
#define SLM_JOB_H

#include <jansson.h>
#include <signal.h>

#include "err.h"
#include "jobspec.h"

struct job_progress {
    const char *stage;        /* "loading", "calibrating", "compressing", "evaluating", "saving" */
    int block, nblocks;       /* -1 when not per block */
    double fraction;          /* overall progress in [0, 1] */
    const char *message;      /* one line for the events log, e.g. per-layer error figures */
};

/* Return non-zero to cancel (the job then fails with -SLM_ECANCELLED). */
typedef int (*job_progress_cb)(const struct job_progress *p, void *payload);

struct job_ctx {
    const char *model_dir;    /* local folder with config.json + safetensors (+ tokenizer) */
    const char *out_dir;      /* where the compressed checkpoint goes (created) */
    const char *data_dir;     /* where named datasets live: wikitext2.txt, c4.jsonl, ... */
    const char *device;       /* "cpu", "cuda", "cuda:N", "auto" (overrides spec->device when set) */
    job_progress_cb progress; /* may be NULL */
    void *payload;
    volatile sig_atomic_t *cancel;  /* may be NULL; non-zero = stop soon */
};

/* Run spec. On success *metrics (caller's reference) holds e.g.
** {"perplexity": {"wikitext2": {"before": 27.6, "after": 31.2}}, "memory": {...},
**  "timings_s": {"loading": ..}, "artifacts": ["model.safetensors", ...]}. */
int job_run(const struct jobspec *spec, const struct job_ctx *ctx, json_t **metrics, struct slm_err *err);

#endif
