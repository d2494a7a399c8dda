/*
** daemon/config.c: the option table and its three sources (see config.h).
** DESIGN: one row per option {name, type, flags, offset, bounds, default}. The file parser, the
** environment scan and the flag parser all end in config_set(), so bounds and messages are the same
** whatever the source. Adding an option = one row here + one paragraph in deploy/slimd.conf (a unit
** test fails otherwise).
*/
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum cfg_type { CFG_STR, CFG_INT, CFG_I64 };
#define CFG_SENSITIVE 1

struct cfg_opt {
    const char *name;
    enum cfg_type type;
    int flags;
    size_t off;
    int64_t lo, hi;
    const char *def;
};

#define OPT(n, t, fl, field, lo, hi, def) { n, t, fl, offsetof(struct slimd_config, field), lo, hi, def }

static const struct cfg_opt cfg_opts[] = {
    OPT("listen", CFG_STR, 0, listen, 0, 0, "127.0.0.1:7310"),
    OPT("data-dir", CFG_STR, 0, data_dir, 0, 0, "/var/lib/slimd"),
    OPT("db", CFG_STR, 0, db, 0, 0, ""),
    OPT("workers", CFG_INT, 0, workers, 0, 64, "0"),
    OPT("device", CFG_STR, 0, device, 0, 0, "auto"),
    OPT("max-attempts", CFG_INT, 0, max_attempts, 1, 100, "3"),
    OPT("retry-backoff-ms", CFG_INT, 0, retry_backoff_ms, 0, 3600000, "2000"),
    OPT("max-body-bytes", CFG_I64, 0, max_body_bytes, 1024, 64 << 20, "65536"),
    OPT("connection-limit", CFG_INT, 0, connection_limit, 1, 65536, "1024"),
    OPT("per-ip-connection-limit", CFG_INT, 0, per_ip_connection_limit, 0, 65536, "64"),
    OPT("connection-timeout-s", CFG_INT, 0, connection_timeout_s, 1, 86400, "30"),
    OPT("api-tokens-file", CFG_STR, 0, api_tokens_file, 0, 0, ""),
    OPT("hub-endpoint", CFG_STR, 0, hub_endpoint, 0, 0, "https://huggingface.co"),
    OPT("hub-token", CFG_STR, CFG_SENSITIVE, hub_token, 0, 0, ""),
    OPT("allow-hosts", CFG_STR, 0, allow_hosts, 0, 0, "huggingface.co,.huggingface.co,.hf.co"),
    OPT("file-source-root", CFG_STR, 0, file_source_root, 0, 0, ""),
    OPT("dataset-dir", CFG_STR, 0, dataset_dir, 0, 0, ""),
    OPT("dataset-mirror", CFG_STR, 0, dataset_mirror, 0, 0, ""),
    OPT("download-stall-s", CFG_INT, 0, download_stall_s, 1, 3600, "60"),
    OPT("max-download-bytes", CFG_I64, 0, max_download_bytes, 1, INT64_MAX, "200000000000"),
    OPT("cancel-grace-ms", CFG_INT, 0, cancel_grace_ms, 0, 600000, "10000"),
    OPT("job-timeout-s", CFG_INT, 0, job_timeout_s, 1, 31 * 86400, "43200"),
    OPT("drain-timeout-s", CFG_INT, 0, drain_timeout_s, 0, 3600, "25"),
    OPT("queue-limit", CFG_INT, 0, queue_limit, 1, 10000000, "10000"),
    OPT("log-level", CFG_STR, 0, log_level, 0, 0, "notice"),
};
#define NOPTS (sizeof cfg_opts / sizeof cfg_opts[0])

const char *const *config_option_names(void)
{
    static const char *names[NOPTS + 1];
    for (size_t i = 0; i < NOPTS; i++) names[i] = cfg_opts[i].name;
    names[NOPTS] = NULL;
    return names;
}

static const struct cfg_opt *find(const char *name)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (!strcmp(cfg_opts[i].name, name)) return &cfg_opts[i];
    return NULL;
}

static int parse_i64(int64_t *out, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static const char *const log_levels[] = { "debug", "verbose", "notice", "warning", NULL };

int config_set(struct slimd_config *c, const char *name, const char *value, const char *where, struct slm_err *err)
{
    const struct cfg_opt *o = find(name);
    if (!o) return slm_err_set(err, SLM_EINVAL, "%s: unknown option '%s'", where, name);
    void *p = (char *)c + o->off;
    if (o->type == CFG_STR) {
        if (!strcmp(name, "log-level")) {
            int ok = 0;
            for (int i = 0; log_levels[i]; i++) ok |= !strcmp(value, log_levels[i]);
            if (!ok) return slm_err_set(err, SLM_EINVAL, "%s: log-level: must be debug, verbose, notice or warning", where);
        }
        if (!strcmp(name, "device") && strcmp(value, "auto") && strcmp(value, "cpu") && strncmp(value, "cuda", 4))
            return slm_err_set(err, SLM_EINVAL, "%s: device: must be auto, cpu, cuda or cuda:N", where);
        if ((!strcmp(name, "hub-endpoint") || (!strcmp(name, "dataset-mirror") && value[0])) &&
            strncmp(value, "https://", 8) && strncmp(value, "http://", 7))
            return slm_err_set(err, SLM_EINVAL, "%s: %s: must be an http:// or https:// URL", where, name);
        char *dup = strdup(value);
        if (!dup) return slm_err_set(err, SLM_ENOMEM, "config: out of memory");
        free(*(char **)p);
        *(char **)p = dup;
        return 0;
    }
    int64_t v;
    if (parse_i64(&v, value)) return slm_err_set(err, SLM_EINVAL, "%s: %s: '%s' is not an integer", where, name, value);
    if (v < o->lo) return slm_err_set(err, SLM_EINVAL, "%s: %s: must be >= %" PRId64, where, name, o->lo);
    if (v > o->hi) return slm_err_set(err, SLM_EINVAL, "%s: %s: must be <= %" PRId64, where, name, o->hi);
    if (o->type == CFG_INT) *(int *)p = (int)v;
    else *(int64_t *)p = v;
    return 0;
}

void config_free(struct slimd_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < NOPTS; i++)
        if (cfg_opts[i].type == CFG_STR) {
            char **p = (char **)((char *)c + cfg_opts[i].off);
            free(*p);
            *p = NULL;
        }
    free(c->config_file);
    c->config_file = NULL;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

/* "name value" lines; '#' comments; blank lines. */
static int load_file(struct slimd_config *c, const char *path, struct slm_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return slm_err_set(err, SLM_EIO, "config file %s: %s", path, strerror(errno));
    char line[4096], where[4200];
    int rc = 0, ln = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        snprintf(where, sizeof where, "%s:%d", path, ln);
        if (!strchr(line, '\n') && !feof(f)) { rc = slm_err_set(err, SLM_EINVAL, "%s: line too long", where); break; }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *sp = s;
        while (*sp && !isspace((unsigned char)*sp)) sp++;
        if (!*sp) { rc = slm_err_set(err, SLM_EINVAL, "%s: %s: missing value", where, s); break; }
        *sp = 0;
        char *val = trim(sp + 1);
        size_t n = strlen(val);
        if (n >= 2 && val[0] == '"' && val[n - 1] == '"') { val[n - 1] = 0; val++; }
        rc = config_set(c, s, val, where, err);
    }
    fclose(f);
    return rc;
}

static int load_env(struct slimd_config *c, struct slm_err *err)
{
    for (size_t i = 0; i < NOPTS; i++) {
        char env[96] = "SLIMD_";
        size_t k = 6;
        for (const char *p = cfg_opts[i].name; *p && k < sizeof env - 1; p++) env[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        env[k] = 0;
        const char *v = getenv(env);
        if (!v && !strcmp(cfg_opts[i].name, "hub-token")) v = getenv("HF_TOKEN");
        if (!v && !strcmp(cfg_opts[i].name, "hub-endpoint")) v = getenv("HF_ENDPOINT");
        if (!v) continue;
        int rc = config_set(c, cfg_opts[i].name, v, env, err);
        if (rc) return rc;
    }
    return 0;
}

static const char *const action_flags[] = { "--check-config", "--check-db", "--job-child", "--help", "--version", NULL };

int config_load(struct slimd_config *out, int argc, char **argv, const char **action, struct slm_err *err)
{
    int rc = 0;
    memset(out, 0, sizeof *out);
    *action = NULL;
    for (size_t i = 0; i < NOPTS && !rc; i++) rc = config_set(out, cfg_opts[i].name, cfg_opts[i].def, "default", err);
    /* the file first: flags and env can name it */
    const char *file = getenv("SLIMD_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) file = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9)) file = argv[i] + 9;
    }
    if (!rc && file && *file) {
        if (!(out->config_file = strdup(file))) rc = slm_err_set(err, SLM_ENOMEM, "config: out of memory");
        else rc = load_file(out, file, err);
    }
    if (!rc) rc = load_env(out, err);
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int is_action = 0;
        for (int k = 0; action_flags[k]; k++)
            if (!strcmp(a, action_flags[k])) { *action = action_flags[k]; is_action = 1; }
        if (is_action) continue;
        if (strncmp(a, "--", 2)) { rc = slm_err_set(err, SLM_EINVAL, "unexpected argument '%s'", a); break; }
        char name[128];
        const char *val, *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a + 2);
            if (i + 1 >= argc) { rc = slm_err_set(err, SLM_EINVAL, "--%s: missing value", name); break; }
            val = argv[++i];
        }
        if (!strcmp(name, "config")) continue;
        rc = config_set(out, name, val, "command line", err);
    }
    if (!rc && !out->db[0]) {
        char *db = NULL;
        if (asprintf(&db, "%s/slimd.db", out->data_dir) < 0) rc = slm_err_set(err, SLM_ENOMEM, "config: out of memory");
        else { free(out->db); out->db = db; }
    }
    char host[256];
    int port;
    if (!rc) rc = config_listen_addr(host, sizeof host, &port, out->listen, err);
    if (rc) config_free(out);
    return rc;
}

int config_listen_addr(char *host, size_t hostlen, int *port, const char *listen, struct slm_err *err)
{
    const char *colon = strrchr(listen, ':');
    int64_t p;
    if (!colon || colon == listen || (size_t)(colon - listen) >= hostlen || parse_i64(&p, colon + 1) || p < 0 || p > 65535)
        return slm_err_set(err, SLM_EINVAL, "listen: '%s' must be HOST:PORT (port 0-65535)", listen);
    snprintf(host, hostlen, "%.*s", (int)(colon - listen), listen);
    *port = (int)p;
    return 0;
}

json_t *config_to_json(const struct slimd_config *c)
{
    json_t *j = json_object();
    for (size_t i = 0; j && i < NOPTS; i++) {
        const struct cfg_opt *o = &cfg_opts[i];
        const void *p = (const char *)c + o->off;
        json_t *v;
        if (o->flags & CFG_SENSITIVE) v = json_string(*(char *const *)p && **(char *const *)p ? "(set)" : "");
        else if (o->type == CFG_STR) v = json_string(*(char *const *)p ? *(char *const *)p : "");
        else if (o->type == CFG_INT) v = json_integer(*(const int *)p);
        else v = json_integer(*(const int64_t *)p);
        json_object_set_new(j, o->name, v);
    }
    return j;
}
