/*
** cli/slim_compress.c: `slim compress MODEL_DIR SPEC.json OUT_DIR [--device D] [--data-dir DIR]`.
** Runs the same job_run() as the daemon's worker on a local model folder: the spec is validated
** completely first (errors name the field), then compress, save into OUT_DIR, evaluate. The
** metrics JSON goes to stdout; progress lines (stage, block, per-layer error) go to stderr.
** A spec without "model" gets file://MODEL_DIR, so specs written for the API work unchanged.
*/
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/job.h"
#include "core/jobspec.h"
#include "slim_cmds.h"

static volatile sig_atomic_t cancel_flag;

static void on_sigint(int sig)
{
    (void)sig;
    cancel_flag = 1;
}

static int print_progress(const struct job_progress *p, void *payload)
{
    (void)payload;
    fprintf(stderr, "[%5.1f%%] %-11s %s\n", 100 * p->fraction, p->stage, p->message ? p->message : "");
    return 0;
}

int slim_cmd_compress(int argc, char **argv)
{
    const char *pos[3] = { NULL, NULL, NULL }, *device = NULL, *data_dir = getenv("SLIM_DATA_DIR");
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--device") && v) { device = v; i++; }
        else if (!strcmp(a, "--data-dir") && v) { data_dir = v; i++; }
        else if (a[0] != '-' && npos < 3) pos[npos++] = a;
        else npos = 99;
    }
    if (npos != 3) {
        fprintf(stderr, "usage: slim compress MODEL_DIR SPEC.json OUT_DIR [--device auto|cpu|cuda[:N]] [--data-dir DIR]\n");
        return 2;
    }
    struct slm_err err = SLM_ERR_INIT;
    struct jobspec spec;
    json_error_t je;
    json_t *doc = json_load_file(pos[1], JSON_REJECT_DUPLICATES, &je), *metrics = NULL;
    char path[256];
    if (!doc) {
        fprintf(stderr, "slim compress: %s:%d: %s\n", pos[1], je.line, je.text);
        return 2;
    }
    if (json_is_object(doc) && !json_object_get(doc, "model")) {
        char src[4200];
        snprintf(src, sizeof src, "file://%s", pos[0]);
        json_object_set_new(doc, "model", json_pack("{s:s}", "source", src));
    }
    int rc = jobspec_parse(&spec, doc, path, sizeof path, &err);
    json_decref(doc);
    if (rc) {
        fprintf(stderr, "slim compress: %s: %s\n", pos[1], err.msg);
        return 2;
    }
    struct job_ctx ctx = { .model_dir = pos[0], .out_dir = pos[2], .data_dir = data_dir ? data_dir : "data",
                           .device = device, .progress = print_progress, .payload = NULL, .cancel = &cancel_flag };
    signal(SIGINT, on_sigint);
    rc = job_run(&spec, &ctx, &metrics, &err);
    signal(SIGINT, SIG_DFL);
    jobspec_free(&spec);
    if (rc) {
        fprintf(stderr, "slim compress: %s\n", err.msg[0] ? err.msg : slm_strerror(err.rc));
        return 1;
    }
    json_dumpf(metrics, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
    fputc('\n', stdout);
    json_decref(metrics);
    return 0;
}
