/*
** daemon/child.c: one job in its own process (`slimd --job-child`, exec'd by the supervisor).
** Protocol: the supervisor writes one JSON request on stdin and closes it; the child writes JSON
** lines on stdout: {"t":"progress","stage","progress","message"}, {"t":"bytes","n"} and finally
** {"t":"done","rc":0,"metrics":{...}} or {"t":"done","rc":N,"msg":"..."}. No database access here.
** Outputs: DATA/jobs/<id>/attempt-<n>.tmp/ is written, fsync'd and renamed to DATA/jobs/<id>/out/
** (never replacing an existing out/), so a job is published at most once: a rerun that finds out/
** reports that publication's metrics instead of running again.
** SIGUSR1 sets the cooperative cancel flag that job_run() checks between and inside layers.
*/
#include "child.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/job.h"
#include "core/jobspec.h"
#include "fetch.h"
#include "log.h"

static volatile sig_atomic_t cancel_flag;

static void on_usr1(int sig)
{
    (void)sig;
    cancel_flag = 1;
}

static void emit(json_t *line)
{
    char *s = line ? json_dumps(line, JSON_COMPACT) : NULL;
    json_decref(line);
    if (!s) return;
    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
}

static int on_progress(const struct job_progress *p, void *payload)
{
    (void)payload;
    emit(json_pack("{s:s,s:s?,s:f,s:s?}", "t", "progress", "stage", p->stage, "progress", p->fraction, "message", p->message));
    return cancel_flag != 0;
}

static int on_download(int64_t done, int64_t total, const char *file, void *payload)
{
    static int64_t last;
    (void)payload;
    if (done - last >= (1 << 20) || done == total || done < last) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s: %lld of %lld bytes", file, (long long)done, (long long)total);
        double frac = total > 0 ? 0.05 * (double)done / (double)total : 0;
        emit(json_pack("{s:s,s:s,s:f,s:s}", "t", "progress", "stage", "downloading", "progress", frac, "message", msg));
        emit(json_pack("{s:s,s:I}", "t", "bytes", "n", (json_int_t)(done - (done < last ? 0 : last))));
        last = done;
    }
    return cancel_flag != 0;
}

static int mkdirs(const char *path, struct slm_err *err)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0750) && errno != EEXIST) return slm_err_set(err, SLM_EIO, "mkdir %s: %s", tmp, strerror(errno));
            *p = '/';
        }
    if (mkdir(tmp, 0750) && errno != EEXIST) return slm_err_set(err, SLM_EIO, "mkdir %s: %s", tmp, strerror(errno));
    return 0;
}

static void rm_rf(const char *path)
{
    char cmdpath[PATH_MAX + 300];
    struct stat st;
    if (lstat(path, &st)) return;
    if (!S_ISDIR(st.st_mode)) { unlink(path); return; }
    /* job folders are flat (checkpoint files only): remove entries, then the folder */
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) return;
    DIR *d = fdopendir(fd);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(cmdpath, sizeof cmdpath, "%s/%s", path, e->d_name);
            rm_rf(cmdpath);
        }
    if (d) closedir(d);
    else close(fd);
    rmdir(path);
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_RDONLY);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* Write metrics.json into dir and fsync every file and the folder. */
static int seal(const char *dir, json_t *metrics, struct slm_err *err)
{
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/metrics.json", dir);
    if (json_dump_file(metrics, path, JSON_INDENT(2) | JSON_SORT_KEYS))
        return slm_err_set(err, SLM_EIO, "write %s", path);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (fsync_path(path, 0)) { closedir(d); return slm_err_set(err, SLM_EIO, "fsync %s: %s", path, strerror(errno)); }
        }
    if (d) closedir(d);
    if (fsync_path(dir, O_DIRECTORY)) return slm_err_set(err, SLM_EIO, "fsync %s: %s", dir, strerror(errno));
    return 0;
}

static int run(json_t *req, json_t **metrics, struct slm_err *err)
{
    const char *id = json_string_value(json_object_get(req, "id"));
    const char *jobs_dir = json_string_value(json_object_get(req, "jobs_dir"));
    int attempt = (int)json_integer_value(json_object_get(req, "attempt"));
    json_t *spec_doc = json_object_get(req, "spec");
    struct jobspec spec;
    char job_dir[PATH_MAX], tmp[PATH_MAX + 32], out[PATH_MAX + 8], model_dir[PATH_MAX], path[PATH_MAX + 300];
    int rc;
    if (!id || !jobs_dir || !spec_doc) return slm_err_set(err, SLM_EINVAL, "job child: incomplete request");
    snprintf(job_dir, sizeof job_dir, "%s/%s", jobs_dir, id);
    snprintf(out, sizeof out, "%s/out", job_dir);
    snprintf(tmp, sizeof tmp, "%s/attempt-%d.tmp", job_dir, attempt);
    /* published by an earlier attempt whose commit was lost: report it, do not run again */
    snprintf(path, sizeof path, "%s/metrics.json", out);
    if (access(path, F_OK) == 0) {
        json_error_t je;
        if (!(*metrics = json_load_file(path, 0, &je))) return slm_err_set(err, SLM_EIO, "%s: %s", path, je.text);
        return 0;
    }
    memset(&spec, 0, sizeof spec);
    if ((rc = jobspec_parse(&spec, spec_doc, NULL, 0, err))) goto done;
    if ((rc = mkdirs(job_dir, err))) goto done;
    rm_rf(tmp);
    if ((rc = mkdirs(tmp, err))) goto done;

    struct fetch_opts fo = {
        .cache_dir = json_string_value(json_object_get(req, "cache_dir")),
        .hub_endpoint = json_string_value(json_object_get(req, "hub_endpoint")),
        .hub_token = json_string_value(json_object_get(req, "hub_token")),
        .allow_hosts = json_string_value(json_object_get(req, "allow_hosts")),
        .file_source_root = json_string_value(json_object_get(req, "file_source_root")),
        .stall_s = (int)json_integer_value(json_object_get(req, "stall_s")),
        .max_bytes = json_integer_value(json_object_get(req, "max_bytes")),
        .progress = on_download, .payload = NULL, .cancel = &cancel_flag,
    };
    emit(json_pack("{s:s,s:s,s:f,s:s}", "t", "progress", "stage", "downloading", "progress", 0.0, "message", spec.model.source));
    if ((rc = fetch_model(model_dir, sizeof model_dir, &fo, spec.model.source, spec.model.revision, err))) goto done;

    const char *names[18];
    int nn = 0;
    char data_dir[PATH_MAX];
    if (spec.method != JS_METHOD_EVAL && spec.calibration.dataset) names[nn++] = spec.calibration.dataset;
    for (int i = 0; i < spec.eval.n_perplexity && nn < 18; i++) names[nn++] = spec.eval.perplexity[i];
    fo.dataset_mirror = json_string_value(json_object_get(req, "dataset_mirror"));
    if ((rc = fetch_datasets(data_dir, sizeof data_dir, &fo, json_string_value(json_object_get(req, "dataset_dir")), names, nn, err)))
        goto done;
    struct job_ctx ctx = {
        .model_dir = model_dir, .out_dir = tmp,
        .data_dir = data_dir,
        .device = json_string_value(json_object_get(req, "device")),
        .progress = on_progress, .payload = NULL, .cancel = &cancel_flag,
    };
    if (ctx.data_dir && !ctx.data_dir[0]) ctx.data_dir = NULL;
    if ((rc = job_run(&spec, &ctx, metrics, err))) goto done;
    json_object_set_new(*metrics, "attempt", json_integer(attempt));
    emit(json_pack("{s:s,s:s,s:f,s:s}", "t", "progress", "stage", "saving", "progress", 1.0, "message", "publishing outputs"));
    if ((rc = seal(tmp, *metrics, err))) goto done;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_NOREPLACE)) {
        rc = slm_err_set(err, SLM_EIO, "publish %s: %s", out, strerror(errno));
        goto done;
    }
    if (fsync_path(job_dir, O_DIRECTORY)) { rc = slm_err_set(err, SLM_EIO, "fsync %s: %s", job_dir, strerror(errno)); goto done; }
    /* leftovers of attempts killed mid-way */
    DIR *jd = opendir(job_dir);
    struct dirent *e;
    while (jd && (e = readdir(jd)))
        if (!strncmp(e->d_name, "attempt-", 8)) {
            snprintf(path, sizeof path, "%s/%s", job_dir, e->d_name);
            rm_rf(path);
        }
    if (jd) closedir(jd);
done:
    if (rc) { json_decref(*metrics); *metrics = NULL; rm_rf(tmp); }
    jobspec_free(&spec);
    return rc;
}

int child_main(void)
{
    struct slm_err err = SLM_ERR_INIT;
    json_error_t je;
    json_t *metrics = NULL;
    log_role = 'C';
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    json_t *req = json_loadf(stdin, 0, &je);
    int rc = req ? run(req, &metrics, &err) : slm_err_set(&err, SLM_EINVAL, "job child: bad request: %s", je.text);
    if (rc && cancel_flag && err.rc != SLM_ECANCELLED) { slm_err_clear(&err); rc = slm_err_set(&err, SLM_ECANCELLED, "cancelled"); }
    if (rc) emit(json_pack("{s:s,s:i,s:s}", "t", "done", "rc", (int)err.rc ? (int)err.rc : -rc, "msg", err.msg));
    else emit(json_pack("{s:s,s:i,s:o}", "t", "done", "rc", 0, "metrics", metrics));
    json_decref(req);
    return 0;
}
