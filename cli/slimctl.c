/*
** cli/slimctl.c: the slimd client for people and CI.
**   slimctl [--addr URL] [--token T] submit SPEC.json [--wait] [--json] [--idempotency-key K]
**   slimctl list [--status S] [--limit N] [--all] | get ID | cancel ID | logs ID | download ID DIR
** list prints one line a job (id, state, stage, progress, created, then the perplexity before -> after
** or the error); --json (before the command) prints the server's pages as they are.
** Address and token: flags, else SLIMD_ADDR / SLIMD_TOKEN, else http://127.0.0.1:7310.
** Exit status: 0 success; 1 the job failed or was cancelled (with --wait); 2 usage, transport or
** HTTP errors (the server's problem detail is printed).
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <jansson.h>

struct cli { const char *addr, *token; bool json; };

struct buf { char *p; size_t n; };

static size_t on_body(char *b, size_t s, size_t n, void *ud)
{
    struct buf *bf = ud;
    char *np = realloc(bf->p, bf->n + s * n + 1);
    if (!np) return 0;
    memcpy(np + bf->n, b, s * n);
    bf->p = np;
    bf->n += s * n;
    np[bf->n] = 0;
    return s * n;
}

/* One request; *out gets the parsed JSON body (may be NULL). Returns the HTTP status or -1. */
static long request(const struct cli *c, const char *method, const char *path, const char *body, const char *extra_hdr,
                    json_t **out)
{
    CURL *h = curl_easy_init();
    struct buf bf = { NULL, 0 };
    struct curl_slist *hdrs = NULL;
    char url[2048], auth[1024];
    long code = -1;
    if (out) *out = NULL;
    if (!h) return -1;
    snprintf(url, sizeof url, "%s%s", c->addr, path);
    if (c->token && *c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    if (body) hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (extra_hdr) hdrs = curl_slist_append(hdrs, extra_hdr);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &bf);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    if (body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    else if (!strcmp(method, "POST")) curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) fprintf(stderr, "slimctl: %s: %s\n", url, curl_easy_strerror(cc));
    else {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        if (out && bf.p) *out = json_loads(bf.p, 0, NULL);
        if (code >= 400) {
            json_t *pj = bf.p ? json_loads(bf.p, 0, NULL) : NULL;
            const char *detail = json_string_value(json_object_get(pj, "detail"));
            const char *title = json_string_value(json_object_get(pj, "title"));
            fprintf(stderr, "slimctl: HTTP %ld: %s%s%s\n", code, title ? title : "error", detail ? ": " : "", detail ? detail : "");
            json_decref(pj);
        }
    }
    free(bf.p);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return code;
}

static void print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (s) puts(s);
    free(s);
}

/* Follow a job until it ends; 0 succeeded, 1 failed/cancelled, 2 error. */
static int wait_job(const struct cli *c, const char *id)
{
    char path[256], last[256] = "";
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    for (;;) {
        json_t *j;
        long code = request(c, "GET", path, NULL, NULL, &j);
        if (code != 200 || !j) { json_decref(j); return 2; }
        const char *state = json_string_value(json_object_get(j, "state"));
        const char *stage = json_string_value(json_object_get(j, "stage"));
        char now[256];
        snprintf(now, sizeof now, "%s %s %.0f%%", state ? state : "?", stage ? stage : "",
                 100 * json_number_value(json_object_get(j, "progress")));
        if (strcmp(now, last) && !c->json) fprintf(stderr, "%s: %s\n", id, now);
        snprintf(last, sizeof last, "%s", now);
        if (state && (!strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "cancelled"))) {
            int rc = strcmp(state, "succeeded") ? 1 : 0;
            if (c->json) print_json(j);
            else if (rc) {
                json_t *e = json_object_get(j, "error");
                fprintf(stderr, "%s: %s: %s\n", id, state, e ? json_string_value(json_object_get(e, "message")) : "");
            } else print_json(json_object_get(j, "metrics"));
            json_decref(j);
            return rc;
        }
        json_decref(j);
        struct timespec ts = { 0, 300 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

static int cmd_submit(const struct cli *c, int argc, char **argv)
{
    const char *file = NULL, *key = NULL;
    bool wait = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--wait")) wait = true;
        else if (!strcmp(argv[i], "--json")) ((struct cli *)c)->json = true;
        else if (!strcmp(argv[i], "--idempotency-key") && i + 1 < argc) key = argv[++i];
        else if (!file) file = argv[i];
        else { fprintf(stderr, "slimctl submit: unexpected '%s'\n", argv[i]); return 2; }
    }
    if (!file) { fprintf(stderr, "slimctl submit: SPEC.json required\n"); return 2; }
    json_error_t je;
    json_t *spec = !strcmp(file, "-") ? json_loadf(stdin, 0, &je) : json_load_file(file, 0, &je);
    if (!spec) { fprintf(stderr, "slimctl: %s:%d:%d: %s\n", file, je.line, je.column, je.text); return 2; }
    char *body = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    char hdr[300];
    if (key) snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    json_t *resp;
    long code = request(c, "POST", "/v1/jobs", body, key ? hdr : NULL, &resp);
    free(body);
    if (code != 201 && code != 200) { json_decref(resp); return 2; }
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(resp, "id")) ? json_string_value(json_object_get(resp, "id")) : "");
    if (!wait) {
        if (c->json) print_json(resp);
        else puts(id);
    } else if (!c->json) fprintf(stderr, "submitted %s\n", id);
    json_decref(resp);
    return wait ? wait_job(c, id) : 0;
}

static int simple(const struct cli *c, const char *method, const char *path)
{
    json_t *j;
    long code = request(c, method, path, NULL, NULL, &j);
    if (j) print_json(j);
    json_decref(j);
    return code >= 200 && code < 300 ? 0 : 2;
}

/* "2026-12-07 14:31:22Z" from milliseconds since the epoch. */
static void format_ms(char *out, size_t n, json_int_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!ms || !gmtime_r(&t, &tm) || !strftime(out, n, "%Y-%m-%d %H:%M:%SZ", &tm)) snprintf(out, n, "-");
}

/* The end of a job's line: each dataset's perplexity before -> after, else the error. */
static void format_outcome(char *out, size_t n, const json_t *job)
{
    const json_t *err = json_object_get(job, "error"), *ppl = json_object_get(json_object_get(job, "metrics"), "perplexity");
    const char *name;
    const json_t *v;
    size_t used = 0;
    out[0] = 0;
    if (json_is_object(err)) {
        snprintf(out, n, "%s", json_string_value(json_object_get(err, "message")) ? json_string_value(json_object_get(err, "message")) : "");
        return;
    }
    json_object_foreach((json_t *)ppl, name, v) {
        const json_t *before = json_object_get(v, "before"), *after = json_object_get(v, "after");
        int k;
        if (json_is_number(before))
            k = snprintf(out + used, n - used, "%s%s %.3f -> %.3f", used ? ", " : "", name, json_number_value(before), json_number_value(after));
        else
            k = snprintf(out + used, n - used, "%s%s %.3f", used ? ", " : "", name, json_number_value(after));
        if (k < 0 || (size_t)k >= n - used) break;
        used += (size_t)k;
    }
}

/* GET /v1/jobs, newest first: one page of --limit (server default 50), or every page with --all. */
static int cmd_list(const struct cli *c, int argc, char **argv)
{
    const char *status = NULL;
    long limit = 0;
    bool all = false;
    for (int i = 0; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--status") && i + 1 < argc) status = argv[++i];
        else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            limit = strtol(argv[++i], &end, 10);
            if (*end || limit < 1 || limit > 500) { fprintf(stderr, "slimctl list: --limit: 1..500, not '%s'\n", argv[i]); return 2; }
        } else if (!strcmp(argv[i], "--all")) all = true;
        else { fprintf(stderr, "slimctl list: unexpected '%s'\n", argv[i]); return 2; }
    }
    char cursor[32] = "";
    bool header = !c->json;
    for (;;) {
        char path[512];
        int k = snprintf(path, sizeof path, "/v1/jobs?limit=%ld", limit ? limit : 50);
        if (status) {
            char *esc = curl_easy_escape(NULL, status, 0);
            if (!esc) return 2;
            k += snprintf(path + k, sizeof path - (size_t)k, "&status=%s", esc);
            curl_free(esc);
        }
        if (*cursor) snprintf(path + k, sizeof path - (size_t)k, "&cursor=%s", cursor);
        json_t *page;
        long code = request(c, "GET", path, NULL, NULL, &page);
        if (code != 200 || !page) { json_decref(page); return 2; }
        if (c->json) print_json(page);
        else {
            size_t i;
            json_t *job;
            if (header) printf("%-20s %-10s %-12s %5s  %-20s  %s\n", "ID", "STATE", "STAGE", "DONE", "CREATED", "PERPLEXITY / ERROR");
            header = false;
            json_array_foreach(json_object_get(page, "jobs"), i, job) {
                char created[32], outcome[512];
                const char *id = json_string_value(json_object_get(job, "id")), *state = json_string_value(json_object_get(job, "state")),
                           *stage = json_string_value(json_object_get(job, "stage"));
                format_ms(created, sizeof created, json_integer_value(json_object_get(job, "created_at_ms")));
                format_outcome(outcome, sizeof outcome, job);
                printf("%-20s %-10s %-12s %4.0f%%  %-20s  %s\n", id ? id : "?", state ? state : "?", stage ? stage : "-",
                       100 * json_number_value(json_object_get(job, "progress")), created, outcome);
            }
        }
        const char *next = json_string_value(json_object_get(page, "next_cursor"));
        snprintf(cursor, sizeof cursor, "%s", next ? next : "");
        json_decref(page);
        if (!all || !*cursor) return 0;
    }
}

static int cmd_logs(const struct cli *c, const char *id)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    json_t *j;
    long code = request(c, "GET", path, NULL, NULL, &j);
    if (code != 200) { json_decref(j); return 2; }
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e) {
        const char *stage = json_string_value(json_object_get(e, "stage"));
        printf("%lld %-8s %-12s %s\n", (long long)json_integer_value(json_object_get(e, "at_ms")),
               json_string_value(json_object_get(e, "kind")), stage ? stage : "-",
               json_string_value(json_object_get(e, "message")));
    }
    json_decref(j);
    return 0;
}

static size_t on_file(char *b, size_t s, size_t n, void *ud)
{
    return fwrite(b, s, n, ud) * s;
}

static int cmd_download(const struct cli *c, const char *id, const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts", id);
    json_t *j;
    if (request(c, "GET", path, NULL, NULL, &j) != 200) { json_decref(j); return 2; }
    if (mkdir(dir, 0755) && errno != EEXIST) { fprintf(stderr, "slimctl: %s: %s\n", dir, strerror(errno)); json_decref(j); return 2; }
    size_t i;
    json_t *a;
    int rc = 0;
    json_array_foreach(json_object_get(j, "artifacts"), i, a) {
        const char *name = json_string_value(json_object_get(a, "name"));
        if (!name || strchr(name, '/') || name[0] == '.') continue;
        char out[PATH_MAX], url[1024], auth[1024];
        snprintf(out, sizeof out, "%s/%s", dir, name);
        snprintf(url, sizeof url, "%s/v1/jobs/%s/artifacts/%s", c->addr, id, name);
        FILE *f = fopen(out, "wb");
        if (!f) { fprintf(stderr, "slimctl: %s: %s\n", out, strerror(errno)); rc = 2; break; }
        CURL *h = curl_easy_init();
        struct curl_slist *hdrs = NULL;
        if (c->token && *c->token) { snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token); hdrs = curl_slist_append(hdrs, auth); }
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_file);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
        CURLcode cc = curl_easy_perform(h);
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(h);
        if (fclose(f) || cc != CURLE_OK) { fprintf(stderr, "slimctl: %s: %s\n", name, curl_easy_strerror(cc)); rc = 2; break; }
        if (!c->json) fprintf(stderr, "%s (%lld bytes)\n", out, (long long)json_integer_value(json_object_get(a, "bytes")));
    }
    json_decref(j);
    return rc;
}

static int usage(void)
{
    fputs("usage: slimctl [--addr URL] [--token TOKEN] COMMAND\n"
          "  submit SPEC.json [--wait] [--json] [--idempotency-key KEY]\n"
          "  list [--status queued|running|succeeded|failed|cancelled] [--limit N] [--all]\n"
          "  get ID | cancel ID | delete ID | logs ID | download ID DIR\n"
          "  --json (before COMMAND): print the server's JSON instead of lines for people\n"
          "env: SLIMD_ADDR (default http://127.0.0.1:7310), SLIMD_TOKEN\n", stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct cli c = { getenv("SLIMD_ADDR"), getenv("SLIMD_TOKEN"), false };
    int i = 1;
    if (!c.addr || !*c.addr) c.addr = "http://127.0.0.1:7310";
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        if (!strcmp(argv[i], "--addr") && i + 1 < argc) c.addr = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc) c.token = argv[++i];
        else if (!strcmp(argv[i], "--json")) c.json = true;
        else return usage();
    }
    if (i >= argc) return usage();
    const char *cmd = argv[i++];
    int rest = argc - i, rc;
    char path[512];
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (!strcmp(cmd, "submit")) rc = cmd_submit(&c, rest, argv + i);
    else if (!strcmp(cmd, "list")) rc = cmd_list(&c, rest, argv + i); else if (rest == 1 && (!strcmp(cmd, "get") || !strcmp(cmd, "cancel") || !strcmp(cmd, "delete"))) {
        snprintf(path, sizeof path, "/v1/jobs/%s%s", argv[i], !strcmp(cmd, "cancel") ? "/cancel" : "");
        rc = simple(&c, !strcmp(cmd, "get") ? "GET" : !strcmp(cmd, "cancel") ? "POST" : "DELETE", path);
    } else if (rest == 1 && !strcmp(cmd, "logs")) rc = cmd_logs(&c, argv[i]);
    else if (rest == 2 && !strcmp(cmd, "download")) rc = cmd_download(&c, argv[i], argv[i + 1]);
    else rc = usage();
    curl_global_cleanup();
    return rc;
}
