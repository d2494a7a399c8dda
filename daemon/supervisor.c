/*
** daemon/supervisor.c: worker slots, job children, and the drain on SIGTERM (see supervisor.h).
** DESIGN: one poll() loop on the main thread over the wake pipe and every child's stdout. Claims
** happen only here, so a slot never holds two jobs. The store is the only record: a child's last
** line decides the outcome ({"t":"done"}); no line at all means the child crashed.
*/
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct slot {
    char device[32];
    pid_t pid;                 /* 0 = idle */
    int fd;                    /* child's stdout */
    struct job_claim job;
    int64_t started_ms, cancel_sent_ms;
    bool killed_for_drain;
    bool timed_out;            /* stopped for exceeding job-timeout-s */
    char *buf;                 /* partial line */
    size_t len, cap;
    json_t *done;              /* the {"t":"done"} line */
    char last_stage[32];       /* progress throttle: a stage change is always stored, */
    int64_t last_progress_ms;  /* otherwise at most one progress row per PROGRESS_EVERY_MS */
};

struct supervisor {
    struct api_ctx *ctx;
    int nslots, wake_fd;
    struct slot *slots;
    char boot[24];
};

#define PROGRESS_EVERY_MS 250

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int supervisor_new(struct supervisor **out, struct api_ctx *ctx, int nslots, const char *const *devices, int wake_fd,
                   struct slm_err *err)
{
    struct supervisor *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s || !(s->slots = calloc((size_t)nslots, sizeof *s->slots))) {
        free(s);
        return slm_err_set(err, SLM_ENOMEM, "supervisor: out of memory");
    }
    s->ctx = ctx;
    s->nslots = nslots;
    s->wake_fd = wake_fd;
    snprintf(s->boot, sizeof s->boot, "%d", (int)getpid());
    for (int i = 0; i < nslots; i++) {
        snprintf(s->slots[i].device, sizeof s->slots[i].device, "%s", devices[i]);
        s->slots[i].fd = -1;
    }
    *out = s;
    return 0;
}

void supervisor_free(struct supervisor *s)
{
    if (!s) return;
    for (int i = 0; i < s->nslots; i++) {
        free(s->slots[i].buf);
        free(s->slots[i].job.spec);
        json_decref(s->slots[i].done);
        if (s->slots[i].fd >= 0) close(s->slots[i].fd);
    }
    free(s->slots);
    free(s);
}

/* ---- spawning ---- */

static json_t *child_request(struct supervisor *s, struct slot *sl)
{
    const struct slimd_config *c = s->ctx->cfg;
    char cache[4200];
    snprintf(cache, sizeof cache, "%s/cache", c->data_dir);
    json_t *spec = json_loads(sl->job.spec, 0, NULL);
    if (!spec) return NULL;
    return json_pack("{s:s,s:i,s:o,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:s}", "id", sl->job.id, "attempt",
                     sl->job.attempt, "spec", spec, "jobs_dir", s->ctx->jobs_dir, "cache_dir", cache, "dataset_dir",
                     c->dataset_dir, "device", sl->device, "hub_endpoint", c->hub_endpoint, "hub_token", c->hub_token,
                     "allow_hosts", c->allow_hosts, "file_source_root", c->file_source_root, "stall_s",
                     c->download_stall_s, "max_bytes", (json_int_t)c->max_download_bytes, "dataset_mirror",
                     c->dataset_mirror);
}

static int spawn(struct supervisor *s, struct slot *sl, struct slm_err *err)
{
    int in[2] = { -1, -1 }, outp[2] = { -1, -1 };
    json_t *req = child_request(s, sl);
    char *txt = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!txt) return slm_err_set(err, SLM_ENOMEM, "spawn: out of memory");
    if (pipe2(in, O_CLOEXEC) || pipe2(outp, O_CLOEXEC)) {
        free(txt);
        if (in[0] >= 0) { close(in[0]); close(in[1]); }
        return slm_err_set(err, SLM_EIO, "pipe: %s", strerror(errno));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) { /* async-signal-safe calls only until exec */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(in[0], 0);
        dup2(outp[1], 1);
        char *argv[] = { "slimd", "--job-child", NULL };
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(in[0]);
    close(outp[1]);
    if (pid < 0) {
        close(in[1]);
        close(outp[0]);
        free(txt);
        return slm_err_set(err, SLM_EIO, "fork: %s", strerror(errno));
    }
    /* the child reads stdin first, so a request larger than the pipe buffer cannot deadlock */
    size_t n = strlen(txt), off = 0;
    while (off < n) {
        ssize_t w = write(in[1], txt + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(in[1]);
    free(txt);
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    sl->pid = pid;
    sl->fd = outp[0];
    sl->started_ms = now_ms();
    sl->cancel_sent_ms = 0;
    sl->killed_for_drain = false;
    sl->timed_out = false;
    sl->last_stage[0] = 0;
    sl->last_progress_ms = 0;
    sl->len = 0;
    slog(LOG_NOTICE, "job %s: attempt %d started in pid %d on %s", sl->job.id, sl->job.attempt, (int)pid, sl->device);
    return 0;
}

/* ---- child output ---- */

static void on_line(struct supervisor *s, struct slot *sl, const char *line)
{
    json_t *j = json_loads(line, 0, NULL);
    const char *t = j ? json_string_value(json_object_get(j, "t")) : NULL;
    struct slm_err err = SLM_ERR_INIT;
    if (!t) { slog(LOG_WARNING, "job %s: unreadable line from child", sl->job.id); json_decref(j); return; }
    if (!strcmp(t, "progress")) {
        const char *stage = json_string_value(json_object_get(j, "stage"));
        int64_t now = now_ms();
        bool same = stage && !strcmp(stage, sl->last_stage);
        if (same && now - sl->last_progress_ms < PROGRESS_EVERY_MS) { json_decref(j); return; }
        snprintf(sl->last_stage, sizeof sl->last_stage, "%s", stage ? stage : "");
        sl->last_progress_ms = now;
        if (jobstore_progress(s->ctx->js, sl->job.id, json_string_value(json_object_get(j, "stage")),
                              json_number_value(json_object_get(j, "progress")),
                              json_string_value(json_object_get(j, "message")), now_ms(), &err))
            slog(LOG_VERBOSE, "job %s: progress not stored: %s", sl->job.id, err.msg);
    } else if (!strcmp(t, "bytes")) {
        atomic_fetch_add(&s->ctx->bytes_downloaded, (long)json_integer_value(json_object_get(j, "n")));
    } else if (!strcmp(t, "done")) {
        json_decref(sl->done);
        sl->done = j;
        return;
    }
    json_decref(j);
}

/* Read what the child wrote; returns true at EOF. */
static bool drain_fd(struct supervisor *s, struct slot *sl)
{
    for (;;) {
        if (sl->cap - sl->len < 4096) {
            size_t nc = sl->cap ? sl->cap * 2 : 8192;
            if (nc > (64u << 20)) { sl->len = 0; nc = sl->cap; } /* runaway line: drop it */
            char *nb = realloc(sl->buf, nc);
            if (!nb) return false;
            sl->buf = nb;
            sl->cap = nc;
        }
        ssize_t r = read(sl->fd, sl->buf + sl->len, sl->cap - sl->len - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return false;      /* EAGAIN */
        if (r == 0) return true;
        sl->len += (size_t)r;
        sl->buf[sl->len] = 0;
        char *start = sl->buf, *nl;
        while ((nl = memchr(start, '\n', sl->len - (size_t)(start - sl->buf)))) {
            *nl = 0;
            on_line(s, sl, start);
            start = nl + 1;
        }
        sl->len -= (size_t)(start - sl->buf);
        memmove(sl->buf, start, sl->len);
    }
}

static bool retryable(int code)
{
    return code == SLM_ENOMEM || code == SLM_ECUDA || code == SLM_EIO || code == SLM_EBUSY;
}

/* The child is gone: record the outcome in the store and free the slot. */
static void finish(struct supervisor *s, struct slot *sl, int status)
{
    struct slm_err err = SLM_ERR_INIT;
    int64_t t = now_ms();
    int rc = 0;
    bool requeued = false;
    const char *id = sl->job.id;
    int code = sl->done ? (int)json_integer_value(json_object_get(sl->done, "rc")) : -1;
    const char *msg = sl->done ? json_string_value(json_object_get(sl->done, "msg")) : NULL;
    char why[160];
    if (sl->killed_for_drain && code != 0) {
        rc = jobstore_requeue(&requeued, s->ctx->js, id, sl->job.attempt, true, 0, "slimd is shutting down", t, &err);
    } else if (sl->timed_out && code != 0) {
        snprintf(why, sizeof why, "job exceeded job-timeout-s (%d s)", s->ctx->cfg->job_timeout_s);
        rc = jobstore_finish(s->ctx->js, id, sl->job.attempt, JOB_FAILED, SLM_ETOOLATE, why, NULL, t, &err);
    } else if (code == 0) {
        char *m = json_dumps(json_object_get(sl->done, "metrics"), JSON_COMPACT);
        rc = jobstore_finish(s->ctx->js, id, sl->job.attempt, JOB_SUCCEEDED, 0, NULL, m, t, &err);
        free(m);
    } else if (code == SLM_ECANCELLED || sl->cancel_sent_ms) {
        rc = jobstore_finish(s->ctx->js, id, sl->job.attempt, JOB_CANCELLED, SLM_ECANCELLED, "cancelled", NULL, t, &err);
    } else if (code > 0 && !retryable(code)) {
        rc = jobstore_finish(s->ctx->js, id, sl->job.attempt, JOB_FAILED, code, msg, NULL, t, &err);
    } else {
        if (code > 0) snprintf(why, sizeof why, "%s", msg ? msg : slm_strerror((enum slm_rc)code));
        else if (WIFSIGNALED(status)) snprintf(why, sizeof why, "worker exited: signal %d", WTERMSIG(status));
        else snprintf(why, sizeof why, "worker exited with status %d without a result", WEXITSTATUS(status));
        rc = jobstore_requeue(&requeued, s->ctx->js, id, sl->job.attempt, false, code > 0 ? code : SLM_EINTERNAL, why, t, &err);
    }
    if (rc) slog(LOG_WARNING, "job %s: outcome not stored: %s", id, err.msg);
    else slog(LOG_NOTICE, "job %s: attempt %d ended (rc %d)%s", id, sl->job.attempt, code, requeued ? ", requeued" : "");
    atomic_fetch_add(&s->ctx->jobs_finished, 1);
    atomic_fetch_add(&s->ctx->job_seconds_ms, (long)(t - sl->started_ms));
    close(sl->fd);
    sl->fd = -1;
    sl->pid = 0;
    free(sl->job.spec);
    memset(&sl->job, 0, sizeof sl->job);
    json_decref(sl->done);
    sl->done = NULL;
    sl->len = 0;
}

static void reap(struct supervisor *s, struct slot *sl)
{
    int status = 0;
    pid_t r;
    while ((r = waitpid(sl->pid, &status, 0)) < 0 && errno == EINTR) {}
    finish(s, sl, r == sl->pid ? status : 0);
}

/* Cancel requests and grace periods of running slots. */
static void check_cancels(struct supervisor *s, int64_t t)
{
    for (int i = 0; i < s->nslots; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->pid) continue;
        if (!sl->cancel_sent_ms) {
            bool want = false;
            struct slm_err err = SLM_ERR_INIT;
            if (t - sl->started_ms > (int64_t)s->ctx->cfg->job_timeout_s * 1000) sl->timed_out = want = true;
            else if (jobstore_cancel_requested(&want, s->ctx->js, sl->job.id, &err)) want = false;
            if (want) {
                kill(sl->pid, SIGUSR1);
                sl->cancel_sent_ms = t;
                slog(LOG_NOTICE, "job %s: cancel sent to pid %d", sl->job.id, (int)sl->pid);
            }
        } else if (t - sl->cancel_sent_ms > s->ctx->cfg->cancel_grace_ms) {
            kill(sl->pid, SIGKILL);
        }
    }
}

static int busy(const struct supervisor *s)
{
    int n = 0;
    for (int i = 0; i < s->nslots; i++) n += s->slots[i].pid != 0;
    return n;
}

static void claim_free_slots(struct supervisor *s)
{
    for (int i = 0; i < s->nslots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->pid) continue;
        struct slm_err err = SLM_ERR_INIT;
        char worker[64];
        snprintf(worker, sizeof worker, "%s/%d", s->boot, i);
        int rc = jobstore_claim(&sl->job, s->ctx->js, worker, now_ms(), &err);
        if (rc == SLM_FAIL(SLM_ENOTFOUND)) return;
        if (rc) { slog(LOG_WARNING, "claim: %s", err.msg); return; }
        if ((rc = spawn(s, sl, &err))) {
            bool requeued;
            struct slm_err e2 = SLM_ERR_INIT;
            slog(LOG_WARNING, "job %s: %s", sl->job.id, err.msg);
            jobstore_requeue(&requeued, s->ctx->js, sl->job.id, sl->job.attempt, true, 0, err.msg, now_ms(), &e2);
            free(sl->job.spec);
            memset(&sl->job, 0, sizeof sl->job);
            return;
        }
    }
}

int supervisor_run(struct supervisor *s, volatile sig_atomic_t *stop)
{
    int64_t drain_deadline = 0, last_cancel_check = 0;
    bool drain_killed = false;
    struct pollfd *pfd = calloc((size_t)s->nslots + 1, sizeof *pfd);
    if (!pfd) return SLM_FAIL(SLM_ENOMEM);
    for (;;) {
        int64_t t = now_ms();
        if (*stop && !drain_deadline) {
            drain_deadline = t + (int64_t)s->ctx->cfg->drain_timeout_s * 1000;
            atomic_store(&s->ctx->draining, 1);
            slog(LOG_NOTICE, "shutdown: no new claims; waiting up to %d s for %d running job(s)",
                 s->ctx->cfg->drain_timeout_s, busy(s));
        }
        if (drain_deadline && !busy(s)) break;
        if (drain_deadline && t >= drain_deadline && !drain_killed) {
            for (int i = 0; i < s->nslots; i++)
                if (s->slots[i].pid) { s->slots[i].killed_for_drain = true; kill(s->slots[i].pid, SIGKILL); }
            drain_killed = true;
        }
        if (!drain_deadline) claim_free_slots(s);
        if (t - last_cancel_check >= 200) { check_cancels(s, t); last_cancel_check = t; }
        int n = 0;
        pfd[n++] = (struct pollfd){ .fd = s->wake_fd, .events = POLLIN };
        for (int i = 0; i < s->nslots; i++)
            if (s->slots[i].pid) pfd[n++] = (struct pollfd){ .fd = s->slots[i].fd, .events = POLLIN };
        int pr = poll(pfd, (nfds_t)n, 200);
        if (pr < 0 && errno != EINTR) break;
        if (pr <= 0) continue;
        if (pfd[0].revents) {
            char b[256];
            while (read(s->wake_fd, b, sizeof b) > 0) {}
        }
        for (int i = 0; i < s->nslots; i++) {
            struct slot *sl = &s->slots[i];
            if (sl->pid && drain_fd(s, sl)) reap(s, sl);
        }
    }
    free(pfd);
    return 0;
}
