/*
** api/router.c: the route table. Patterns are '/'-separated; '*' matches one segment of
** [A-Za-z0-9._-] (1-128 bytes, not "." or "..") and is handed to the handler in rq->params.
** A path that matches with another method is 405 (with Allow), anything else 404.
*/
#include "api.h"

#include <string.h>

struct route { const char *method; const char *pattern; api_handler h; enum api_scope scope; };

static const struct route routes[] = {
    { "POST", "/v1/jobs", jobs_submit, SCOPE_SUBMIT },
    { "GET", "/v1/jobs", jobs_list, SCOPE_READ },
    { "GET", "/v1/jobs/*", jobs_get, SCOPE_READ },
    { "DELETE", "/v1/jobs/*", jobs_delete, SCOPE_SUBMIT },
    { "GET", "/v1/jobs/*/events", jobs_events, SCOPE_READ },
    { "POST", "/v1/jobs/*/cancel", jobs_cancel, SCOPE_SUBMIT },
    { "GET", "/v1/jobs/*/artifacts", jobs_artifacts, SCOPE_READ },
    { "GET", "/v1/jobs/*/artifacts/*", jobs_artifact_get, SCOPE_READ },
    { "GET", "/v1/capabilities", health_capabilities, SCOPE_READ },
    { "GET", "/healthz", health_healthz, SCOPE_NONE },
    { "GET", "/readyz", health_readyz, SCOPE_NONE },
    { "GET", "/metrics", health_metrics, SCOPE_READ },
    { "GET", "/", health_index, SCOPE_READ },
};

static bool seg_ok(const char *s, size_t n)
{
    if (n == 0 || n > 128 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Match path against pattern; '*' segments are copied into pbuf and pointed to by params. */
static bool match(const char *pattern, const char *path, const char **params, char *pbuf, size_t pbuf_len)
{
    int np = 0;
    size_t used = 0;
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/') return false;
        pattern++, path++;
        const char *pe = strchr(pattern, '/'), *se = strchr(path, '/');
        size_t pn = pe ? (size_t)(pe - pattern) : strlen(pattern), sn = se ? (size_t)(se - path) : strlen(path);
        if (pn == 1 && pattern[0] == '*') {
            if (!seg_ok(path, sn) || np >= 2 || used + sn + 1 > pbuf_len) return false;
            memcpy(pbuf + used, path, sn);
            pbuf[used + sn] = 0;
            params[np++] = pbuf + used;
            used += sn + 1;
        } else if (pn != sn || memcmp(pattern, path, pn)) return false;
        pattern += pn, path += sn;
    }
    return !*pattern && !*path;
}

int router_match(api_handler *h, enum api_scope *scope, const char **allow, struct api_req *rq, char *pbuf,
                 size_t pbuf_len)
{
    bool other_method = false;
    *allow = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const char *params[2] = { NULL, NULL };
        if (!match(routes[i].pattern, rq->path, params, pbuf, pbuf_len)) continue;
        if (strcmp(routes[i].method, rq->method)) {
            other_method = true;
            *allow = routes[i].method;
            continue;
        }
        *h = routes[i].h;
        *scope = routes[i].scope;
        rq->params[0] = params[0];
        rq->params[1] = params[1];
        return 0;
    }
    return other_method ? 405 : 404;
}
