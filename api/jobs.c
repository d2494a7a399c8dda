/*
** api/jobs.c: the /v1/jobs resource: submit, list, get, events (JSON or text/event-stream),
** cancel, delete, artifacts. Submission validates the WHOLE spec (jobspec_parse) and the model
** source policy before anything is written, so a 4xx leaves the store unchanged; the row is
** committed before 201 goes out.
*/
#include "api.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <microhttpd.h>

#include "core/jobspec.h"
#include "daemon/fetch.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake(struct api_ctx *ctx)
{
    if (ctx->wake_fd >= 0) {
        char b = 1;
        ssize_t r = write(ctx->wake_fd, &b, 1);
        (void)r;
    }
}

/* ---- source policy ---- */

static bool name_chars(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)) || !c)
            return false;
    }
    return true;
}

/* huggingface_hub validate_repo_id: [ns/]name, [A-Za-z0-9._-], 1..96, no --/.., no leading or
** trailing - or ., no .git suffix. */
static bool repo_id_ok(const char *id)
{
    size_t n = strlen(id);
    const char *slash = strchr(id, '/');
    if (n == 0 || n > 96 || (slash && strchr(slash + 1, '/'))) return false;
    if (strstr(id, "--") || strstr(id, "..") || (n >= 4 && !strcmp(id + n - 4, ".git"))) return false;
    const char *parts[2] = { id, slash ? slash + 1 : NULL };
    size_t lens[2] = { slash ? (size_t)(slash - id) : n, slash ? n - (size_t)(slash - id) - 1 : 0 };
    for (int i = 0; i < 2 && parts[i]; i++) {
        if (!lens[i] || !name_chars(parts[i], lens[i], "._-")) return false;
        char f = parts[i][0], l = parts[i][lens[i] - 1];
        if (f == '-' || f == '.' || l == '-' || l == '.') return false;
    }
    return true;
}

static bool revision_ok(const char *r)
{
    size_t n = strlen(r);
    return n > 0 && n <= 128 && name_chars(r, n, "._/-") && !strstr(r, "..") && r[0] != '/' && r[0] != '-';
}

/* Literal addresses slimd must never be pointed at by a client (SSRF). Host names are checked
** again against the resolved address when downloading (daemon/fetch.c). */
static bool host_private(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (!strcasecmp(host, "localhost") || strstr(host, ".localhost") || !strcasecmp(host, "metadata.google.internal"))
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1) {
        uint32_t x = ntohl(a4.s_addr);
        return (x >> 24) == 10 || (x >> 24) == 127 || (x >> 24) == 0 || (x >> 20) == (172u << 4 | 1) ||
               (x >> 16) == (192u << 8 | 168) || (x >> 16) == (169u << 8 | 254) || (x >> 22) == (100u << 2 | 1);
    }
    if (host[0] == '[') return true; /* IPv6 literals: refused outright */
    if (inet_pton(AF_INET6, host, &a6) == 1) return true;
    /* other numeric IPv4 spellings ("2130706433", "0x7f.1", "017.0.0.1") */
    return host[strspn(host, "0123456789.")] == 0 || !strncasecmp(host, "0x", 2);
}

int api_source_allowed(const struct slimd_config *cfg, const char *src, const char *rev, char *ptr, size_t ptr_len,
                       struct slm_err *err)
{
    snprintf(ptr, ptr_len, "/model/source");
    if (!strncmp(src, "hf://", 5)) {
        char id[200];
        snprintf(id, sizeof id, "%s", src + 5);
        char *at = strchr(id, '@');
        if (at) {
            *at = 0;
            if (!revision_ok(at + 1)) return slm_err_set(err, SLM_EINVAL, "/model/source: invalid revision after '@'");
        }
        if (!repo_id_ok(id)) return slm_err_set(err, SLM_EINVAL, "/model/source: '%s' is not a valid ORG/NAME model id", id);
        if (rev && !revision_ok(rev)) {
            snprintf(ptr, ptr_len, "/model/revision");
            return slm_err_set(err, SLM_EINVAL, "/model/revision: must be a branch, tag or commit of [A-Za-z0-9._/-]");
        }
        return 0;
    }
    if (!strncmp(src, "https://", 8)) {
        char host[256];
        size_t n = strcspn(src + 8, "/:?#@");
        if (src[8 + n] == '@') return slm_err_set(err, SLM_EINVAL, "/model/source: credentials in URLs are not accepted");
        if (!n || n >= sizeof host) return slm_err_set(err, SLM_EINVAL, "/model/source: URL has no host");
        snprintf(host, sizeof host, "%.*s", (int)n, src + 8);
        if (host_private(host)) return slm_err_set(err, SLM_EINVAL, "/model/source: private or loopback address '%s'", host);
        if (!fetch_host_allowed(cfg->allow_hosts, host))
            return slm_err_set(err, SLM_EINVAL, "/model/source: host '%s' is not in allow-hosts", host);
        if (strstr(src, "/../") || strstr(src, "/..?") || (strlen(src) > 3 && !strcmp(src + strlen(src) - 3, "/..")))
            return slm_err_set(err, SLM_EINVAL, "/model/source: '..' in URL path");
        return 0;
    }
    if (!strncmp(src, "http://", 7)) return slm_err_set(err, SLM_EINVAL, "/model/source: plain http is not accepted; use https://");
    const char *path = !strncmp(src, "file://", 7) ? src + 7 : src;
    if (!cfg->file_source_root[0]) return slm_err_set(err, SLM_EINVAL, "/model/source: local paths are disabled (file-source-root)");
    if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") ||
        (strlen(path) >= 3 && !strcmp(path + strlen(path) - 3, "/..")))
        return slm_err_set(err, SLM_EINVAL, "/model/source: must be an absolute path without '.' or '..'");
    char root[PATH_MAX], real[PATH_MAX];
    if (!realpath(cfg->file_source_root, root) || !realpath(path, real))
        return slm_err_set(err, SLM_EINVAL, "/model/source: %s: %s", path, strerror(errno));
    size_t rn = strlen(root);
    if (strncmp(real, root, rn) || (real[rn] != '/' && real[rn] != 0))
        return slm_err_set(err, SLM_EINVAL, "/model/source: outside file-source-root");
    return 0;
}

/* ---- submit ---- */

int jobs_submit(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    struct api_ctx *ctx = rq->ctx;
    struct jobspec spec;
    json_error_t jerr;
    json_t *doc = NULL;
    char *canon = NULL;
    int rc;
    bool parsed = false;
    if (atomic_load(&ctx->draining)) {
        rs->retry_after = 5;
        return slm_err_set(err, SLM_EBUSY, "slimd is shutting down");
    }
    const char *ctype = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Content-Type");
    if (ctype && strncasecmp(ctype, "application/json", 16))
        return slm_err_set(err, SLM_EINVAL, "Content-Type must be application/json");
    const char *key = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (key && (!key[0] || strlen(key) > 128 || !name_chars(key, strlen(key), "._-:")))
        return slm_err_set(err, SLM_EINVAL, "Idempotency-Key must be 1-128 characters of [A-Za-z0-9._:-]");
    if (memchr(rq->body, 0, rq->body_len)) return slm_err_set(err, SLM_EINVAL, "request body contains a NUL byte");
    if (!(doc = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &jerr))) {
        rs->pointer = "";
        rc = slm_err_set(err, SLM_EINVAL, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        goto done;
    }
    if (!json_is_object(doc)) { rs->pointer = ""; rc = slm_err_set(err, SLM_EINVAL, "/: the job spec must be a JSON object"); goto done; }
    memset(&spec, 0, sizeof spec);
    rs->ptrbuf[0] = 0;
    rc = jobspec_parse(&spec, doc, rs->ptrbuf, sizeof rs->ptrbuf, err);
    parsed = true;
    if (rc) { rs->pointer = rs->ptrbuf; goto done; }
    if ((rc = api_source_allowed(ctx->cfg, spec.model.source, spec.model.revision, rs->ptrbuf, sizeof rs->ptrbuf, err))) {
        rs->pointer = rs->ptrbuf;
        goto done;
    }
    if (!(canon = json_dumps(spec.raw, JSON_COMPACT | JSON_SORT_KEYS))) { rc = slm_err_set(err, SLM_ENOMEM, "submit: out of memory"); goto done; }
    char id[JOBSTORE_ID_LEN + 1];
    bool created;
    if ((rc = jobstore_submit(id, &created, ctx->js, canon, key, now_ms(), err))) goto done;
    rs->status = created ? 201 : 200;
    if (asprintf(&rs->location, "/v1/jobs/%s", id) < 0) rs->location = NULL;
    rs->json = json_pack("{s:s,s:s,s:b}", "id", id, "state", "queued", "created", created);
    if (created) wake(ctx);
done:
    if (parsed) jobspec_free(&spec);
    free(canon);
    json_decref(doc);
    return rc;
}

/* ---- read side ---- */

static int query_int(int64_t *out, struct api_req *rq, const char *name, int64_t lo, int64_t hi, int64_t def,
                     struct slm_err *err)
{
    const char *v = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
    *out = def;
    if (!v) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return slm_err_set(err, SLM_EINVAL, "query parameter %s must be an integer in [%lld, %lld]", name, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

int jobs_list(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int64_t limit, cursor, next;
    int rc, state = -1;
    json_t *items;
    const char *st = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "status");
    if (st) {
        enum job_state s;
        if (job_state_parse(&s, st)) return slm_err_set(err, SLM_EINVAL, "status must be queued, running, succeeded, failed or cancelled");
        state = (int)s;
    }
    if ((rc = query_int(&limit, rq, "limit", 1, 500, 50, err)) || (rc = query_int(&cursor, rq, "cursor", 0, INT64_MAX, 0, err)) ||
        (rc = jobstore_list(&items, &next, rq->ctx->js, state, cursor, (int)limit, err)))
        return rc;
    rs->json = json_pack("{s:o,s:o}", "jobs", items, "next_cursor", next ? json_sprintf("%lld", (long long)next) : json_null());
    return rs->json ? 0 : slm_err_set(err, SLM_ENOMEM, "list: out of memory");
}

int jobs_get(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    return jobstore_get(&rs->json, rq->ctx->js, rq->params[0], err);
}

int jobs_cancel(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    enum job_state s;
    int rc = jobstore_cancel(&s, rq->ctx->js, rq->params[0], now_ms(), err);
    if (rc) return rc;
    wake(rq->ctx);
    rs->status = s == JOB_CANCELLED ? 200 : 202;
    rs->json = json_pack("{s:s,s:s,s:b}", "id", rq->params[0], "state", job_state_str(s), "cancel_requested", s == JOB_RUNNING);
    return 0;
}

/* Remove DIR recursively (job outputs only: no symlinks followed). */
static void rm_tree(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd >= 0) {
        DIR *d = fdopendir(fd);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) rm_tree(fd, e->d_name);
        if (d) closedir(d);
        else close(fd);
        unlinkat(dirfd, name, AT_REMOVEDIR);
    } else
        unlinkat(dirfd, name, 0);
}

int jobs_delete(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int rc = jobstore_delete(rq->ctx->js, rq->params[0], err);
    if (rc) return rc;
    int dfd = open(rq->ctx->jobs_dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { rm_tree(dfd, rq->params[0]); close(dfd); }
    rs->status = 204;
    return 0;
}

/* ---- events ---- */

struct stream {
    struct api_ctx *ctx;
    char id[JOBSTORE_ID_LEN + 1];
    int64_t after;
    char *pending;          /* formatted, not yet sent */
    size_t plen, poff;
    bool finished;
};

void jobs_stream_free(void *cls)
{
    struct stream *s = cls;
    if (!s) return;
    free(s->pending);
    free(s);
}

/* Format new events into s->pending; 1 = something queued, 0 = nothing new, <0 error. */
static int stream_fill(struct stream *s)
{
    json_t *evs = NULL;
    struct slm_err err = SLM_ERR_INIT;
    if (jobstore_events(&evs, s->ctx->js, s->id, s->after, 100, &err)) return -1;
    size_t n = json_array_size(evs);
    if (!n) { json_decref(evs); return 0; }
    size_t cap = 0, len = 0;
    char *buf = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(evs, i);
        char *data = json_dumps(e, JSON_COMPACT);
        if (!data) break;
        int64_t num = json_integer_value(json_object_get(e, "n"));
        size_t need = strlen(data) + 96;
        if (len + need > cap) {
            char *nb = realloc(buf, cap = (len + need) * 2);
            if (!nb) { free(data); break; }
            buf = nb;
        }
        len += (size_t)snprintf(buf + len, cap - len, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)num,
                                json_string_value(json_object_get(e, "kind")), data);
        free(data);
        s->after = num;
    }
    json_decref(evs);
    if (!buf) return -1;
    free(s->pending);
    s->pending = buf;
    s->plen = len;
    s->poff = 0;
    return 1;
}

ssize_t jobs_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream *s = cls;
    (void)pos;
    for (int waited = 0; ; waited++) {
        if (s->pending && s->poff < s->plen) {
            size_t n = s->plen - s->poff < max ? s->plen - s->poff : max;
            memcpy(buf, s->pending + s->poff, n);
            s->poff += n;
            return (ssize_t)n;
        }
        if (s->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        enum job_state st;
        struct slm_err err = SLM_ERR_INIT;
        if (jobstore_state(&st, s->ctx->js, s->id, &err)) return MHD_CONTENT_READER_END_OF_STREAM;
        int got = stream_fill(s);
        if (got < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (got) continue;
        if (st >= JOB_SUCCEEDED || atomic_load(&s->ctx->draining)) { s->finished = true; continue; }
        if (waited >= 50) { /* 10 s without events: a comment keeps proxies and the idle timer happy */
            static const char ka[] = ": keepalive\n\n";
            memcpy(buf, ka, sizeof ka - 1 < max ? sizeof ka - 1 : max);
            return (ssize_t)(sizeof ka - 1 < max ? sizeof ka - 1 : max);
        }
        struct timespec ts = { 0, 200 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

int jobs_events(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int64_t after;
    int rc;
    const char *accept = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Accept");
    const char *last = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Last-Event-ID");
    if ((rc = query_int(&after, rq, "after", 0, INT64_MAX, 0, err))) return rc;
    if (last) {
        char *end;
        long long v = strtoll(last, &end, 10);
        if (end != last && !*end && v >= 0) after = v;
    }
    if (accept && strstr(accept, "text/event-stream")) {
        enum job_state st;
        if ((rc = jobstore_state(&st, rq->ctx->js, rq->params[0], err))) return rc;
        struct stream *s = calloc(1, sizeof *s);
        if (!s) return slm_err_set(err, SLM_ENOMEM, "events: out of memory");
        s->ctx = rq->ctx;
        snprintf(s->id, sizeof s->id, "%s", rq->params[0]);
        s->after = after;
        rs->stream = s;
        rs->content_type = "text/event-stream";
        return 0;
    }
    json_t *evs;
    if ((rc = jobstore_events(&evs, rq->ctx->js, rq->params[0], after, 1000, err))) return rc;
    rs->json = json_pack("{s:s,s:o}", "id", rq->params[0], "events", evs);
    return rs->json ? 0 : slm_err_set(err, SLM_ENOMEM, "events: out of memory");
}

/* ---- artifacts: DATA_DIR/jobs/<id>/out/<name> ---- */

static int out_dir(int *fd, struct api_req *rq, struct slm_err *err)
{
    enum job_state st;
    int rc;
    char path[PATH_MAX];
    if ((rc = jobstore_state(&st, rq->ctx->js, rq->params[0], err))) return rc;
    snprintf(path, sizeof path, "%s/%s/out", rq->ctx->jobs_dir, rq->params[0]);
    *fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (*fd < 0) return st == JOB_SUCCEEDED ? slm_err_set(err, SLM_EIO, "job %s: outputs missing", rq->params[0])
                                              : slm_err_set(err, SLM_ENOTFOUND, "job %s has no artifacts (state %s)", rq->params[0], job_state_str(st));
    return 0;
}

int jobs_artifacts(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int fd, rc;
    if ((rc = out_dir(&fd, rq, err))) return rc;
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return slm_err_set(err, SLM_EIO, "artifacts: %s", strerror(errno)); }
    json_t *arr = json_array();
    struct dirent *e;
    while (arr && (e = readdir(d))) {
        struct stat st;
        if (e->d_name[0] == '.' || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) continue;
        json_array_append_new(arr, json_pack("{s:s,s:I,s:o}", "name", e->d_name, "bytes", (json_int_t)st.st_size, "url",
                                             json_sprintf("/v1/jobs/%s/artifacts/%s", rq->params[0], e->d_name)));
    }
    closedir(d);
    if (!arr) return slm_err_set(err, SLM_ENOMEM, "artifacts: out of memory");
    rs->json = json_pack("{s:s,s:o}", "id", rq->params[0], "artifacts", arr);
    return 0;
}

/* "bytes=A-B", "bytes=A-", "bytes=-N" (one range). 0 ok, 1 unsatisfiable, -1 malformed (ignored). */
static int parse_range(uint64_t *off, uint64_t *len, const char *h, uint64_t size)
{
    if (strncmp(h, "bytes=", 6) || strchr(h, ',')) return -1;
    const char *p = h + 6, *dash = strchr(p, '-');
    char *end;
    if (!dash) return -1;
    if (p == dash) {
        unsigned long long n = strtoull(dash + 1, &end, 10);
        if (end == dash + 1 || *end) return -1;
        if (!n || !size) return 1;
        if (n > size) n = size;
        *off = size - n, *len = n;
        return 0;
    }
    unsigned long long a = strtoull(p, &end, 10), b;
    if (end != dash) return -1;
    if (!dash[1]) b = size ? size - 1 : 0;
    else {
        b = strtoull(dash + 1, &end, 10);
        if (*end || b < a) return -1;
    }
    if (a >= size) return 1;
    if (b >= size) b = size - 1;
    *off = a, *len = b - a + 1;
    return 0;
}

int jobs_artifact_get(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int dfd, rc;
    struct stat st;
    if ((rc = out_dir(&dfd, rq, err))) return rc;
    const char *name = rq->params[1];
    int fd = name[0] == '.' ? -1 : openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dfd);
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return slm_err_set(err, SLM_ENOTFOUND, "job %s has no artifact '%s'", rq->params[0], name);
    }
    rs->fd = fd;
    rs->content_type = "application/octet-stream";
    rs->total = (uint64_t)st.st_size;
    rs->off = 0;
    rs->len = rs->total;
    const char *range = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Range");
    if (range) {
        int r = parse_range(&rs->off, &rs->len, range, rs->total);
        if (r == 1) {
            close(rs->fd);
            rs->fd = -1;
            problem_http(rs, 416, "/problems/range-not-satisfiable", "Range not satisfiable", range, rq->path);
            return 0;
        }
        if (r == 0) { rs->status = 206; rs->partial = true; }
        else { rs->off = 0; rs->len = rs->total; }
    }
    return 0;
}
