/*
** api/server.c: libmicrohttpd glue. DESIGN: a thread per connection (an event stream may block its
** thread while it waits for events) bounded by connection-limit and per-ip-connection-limit, an
** idle timeout, 64 KiB of per-connection memory and strict HTTP/1.1 parsing. The access callback
** checks headers on its first call (duplicate Content-Length or Content-Length + Transfer-Encoding
** -> 400, a declared body over the cap -> 413 at once), collects the body up to max-body-bytes (a
** chunked body that grows past it -> 413), authenticates, routes, runs the handler and turns its
** struct api_resp into an MHD response.
*/
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <microhttpd.h>

#include "daemon/log.h"

struct api_server { struct MHD_Daemon *d; struct api_ctx *ctx; };

struct conn_state {
    char *body;
    size_t len;
    int reject;               /* HTTP status decided before the body was read; 0 = none */
    const char *reject_detail;
};

struct hdr_count { int content_length, transfer_encoding; };

static enum MHD_Result count_hdr(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct hdr_count *h = cls;
    (void)kind, (void)value;
    if (!strcasecmp(key, "Content-Length")) h->content_length++;
    if (!strcasecmp(key, "Transfer-Encoding")) h->transfer_encoding++;
    return MHD_YES;
}

static void resp_clear(struct api_resp *rs)
{
    json_decref(rs->json);
    free(rs->text);
    free(rs->location);
    if (rs->fd >= 0) close(rs->fd);
    if (rs->stream) jobs_stream_free(rs->stream);
}

static enum MHD_Result send_resp(struct api_ctx *ctx, struct MHD_Connection *c, struct api_resp *rs)
{
    struct MHD_Response *r = NULL;
    const char *ctype = rs->content_type ? rs->content_type : "application/json";
    if (rs->stream) {
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, jobs_stream_read, rs->stream, jobs_stream_free);
        if (r) rs->stream = NULL; /* now owned by the response */
    } else if (rs->fd >= 0) {
        r = MHD_create_response_from_fd_at_offset64(rs->len, rs->fd, rs->off);
        if (r) rs->fd = -1;
    } else {
        char *body = rs->json ? json_dumps(rs->json, JSON_COMPACT) : rs->text;
        size_t n = body ? strlen(body) : 0;
        if (!rs->json) rs->text = NULL;
        if (rs->json && body) { body = realloc(body, n + 2); if (body) { body[n++] = '\n'; body[n] = 0; } }
        r = MHD_create_response_from_buffer(n, body ? body : "", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (!r) free(body);
    }
    if (!r) { resp_clear(rs); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (rs->location) MHD_add_response_header(r, "Location", rs->location);
    if (rs->retry_after) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", rs->retry_after);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    if (rs->total) {
        MHD_add_response_header(r, "Accept-Ranges", "bytes");
        if (rs->partial || rs->status == 416) {
            char cr[96];
            if (rs->status == 416) snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)rs->total);
            else snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)rs->off,
                          (unsigned long long)(rs->off + rs->len - 1), (unsigned long long)rs->total);
            MHD_add_response_header(r, "Content-Range", cr);
        }
    }
    if (rs->status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"slimd\"");
    int st = rs->status ? rs->status : 200;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)st, r);
    MHD_destroy_response(r);
    if (st >= 100 && st < 600) atomic_fetch_add(&ctx->http_by_code[st], 1);
    resp_clear(rs);
    return ok;
}

static enum MHD_Result refuse(struct api_ctx *ctx, struct MHD_Connection *c, int status, const char *detail,
                              const char *url)
{
    struct api_resp rs = { .fd = -1 };
    const char *type = status == 413 ? "/problems/body-too-large" : status == 401 ? "/problems/unauthorized"
                     : status == 403 ? "/problems/forbidden" : status == 404 ? "/problems/not-found"
                     : status == 405 ? "/problems/method-not-allowed" : "/problems/bad-request";
    const char *title = status == 413 ? "Request body too large" : status == 401 ? "Authentication required"
                      : status == 403 ? "Token lacks the scope" : status == 404 ? "No such resource"
                      : status == 405 ? "Method not allowed" : "Bad request";
    problem_http(&rs, status, type, title, detail, url);
    return send_resp(ctx, c, &rs);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct api_ctx *ctx = cls;
    struct conn_state *cs = *con_cls;
    (void)version;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        struct hdr_count h = { 0, 0 };
        MHD_get_connection_values(c, MHD_HEADER_KIND, count_hdr, &h);
        if (h.content_length > 1) return refuse(ctx, c, 400, "more than one Content-Length header", url);
        if (h.content_length && h.transfer_encoding) return refuse(ctx, c, 400, "both Content-Length and Transfer-Encoding", url);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || end == cl || *end) return refuse(ctx, c, 400, "invalid Content-Length", url);
            if (n > (unsigned long long)ctx->cfg->max_body_bytes) return refuse(ctx, c, 413, "request body exceeds max-body-bytes", url);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->reject) {
            if (cs->len + *upload_size > (size_t)ctx->cfg->max_body_bytes) {
                cs->reject = 413;
                free(cs->body);
                cs->body = NULL;
                cs->len = 0;
            } else {
                char *nb = realloc(cs->body, cs->len + *upload_size + 1);
                if (!nb) { cs->reject = 503; cs->reject_detail = "out of memory"; }
                else {
                    memcpy(nb + cs->len, upload_data, *upload_size);
                    cs->body = nb;
                    cs->len += *upload_size;
                    nb[cs->len] = 0;
                }
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->reject == 413) return refuse(ctx, c, 413, "request body exceeds max-body-bytes", url);
    if (cs->reject) return refuse(ctx, c, cs->reject, cs->reject_detail, url);

    struct api_req rq = { .ctx = ctx, .conn = c, .method = method, .path = url, .body = cs->body ? cs->body : "",
                          .body_len = cs->len };
    char pbuf[300];
    api_handler h = NULL;
    enum api_scope scope;
    const char *allow;
    int st = router_match(&h, &scope, &allow, &rq, pbuf, sizeof pbuf);
    if (st == 405) {
        struct api_resp rs = { .fd = -1 };
        problem_http(&rs, 405, "/problems/method-not-allowed", "Method not allowed", NULL, url);
        char *dumped = json_dumps(rs.json, JSON_COMPACT);
        struct MHD_Response *r = MHD_create_response_from_buffer(dumped ? strlen(dumped) : 0, dumped ? dumped : "",
                                                                 dumped ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        json_decref(rs.json);
        if (!r) { free(dumped); return MHD_NO; }
        MHD_add_response_header(r, "Allow", allow);
        MHD_add_response_header(r, "Content-Type", "application/problem+json");
        enum MHD_Result ok = MHD_queue_response(c, 405, r);
        MHD_destroy_response(r);
        atomic_fetch_add(&ctx->http_by_code[405], 1);
        return ok;
    }
    if (st) return refuse(ctx, c, st, NULL, url);
    int au = auth_check(ctx->auth, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"), scope);
    if (au) return refuse(ctx, c, au, au == 401 ? "missing or unknown bearer token" : "this token may only read", url);

    struct api_resp rs = { .fd = -1 };
    struct slm_err err = SLM_ERR_INIT;
    int rc = h(&rq, &rs, &err);
    if (rc < 0) {
        json_decref(rs.json);
        rs.json = NULL;
        free(rs.text);
        rs.text = NULL;
        problem_from_err(&rs, rc, &err, url);
        if (rs.status >= 500) slog(LOG_WARNING, "%s %s: %d %s", method, url, rs.status, err.msg);
    }
    return send_resp(ctx, c, &rs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct conn_state *cs = *con_cls;
    (void)cls, (void)c, (void)toe;
    if (cs) { free(cs->body); free(cs); }
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    (void)cls;
    vsnprintf(buf, sizeof buf, fmt, ap);
    slog(LOG_VERBOSE, "http: %s", buf);
}

int api_start(struct api_server **out, struct api_ctx *ctx, int *bound_port, struct slm_err *err)
{
    char host[256];
    int port, rc;
    struct sockaddr_in sa;
    *out = NULL;
    if ((rc = config_listen_addr(host, sizeof host, &port, ctx->cfg->listen, err))) return rc;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return slm_err_set(err, SLM_EINVAL, "listen: '%s' is not an IPv4 address", host);
    struct api_server *s = calloc(1, sizeof *s);
    if (!s) return slm_err_set(err, SLM_ENOMEM, "api: out of memory");
    s->ctx = ctx;
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                            MHD_USE_ITC,
                            0, NULL, NULL, on_request, ctx,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)ctx->cfg->connection_limit,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ctx->cfg->per_ip_connection_limit,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ctx->cfg->connection_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
                            MHD_OPTION_STRICT_FOR_CLIENT, 1,
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_END);
    if (!s->d) {
        free(s);
        return slm_err_set(err, SLM_EIO, "cannot listen on %s: %s", ctx->cfg->listen, strerror(errno));
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = di ? di->port : port;
    *out = s;
    return 0;
}

void api_quiesce(struct api_server *s)
{
    if (s && s->d) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
}

void api_stop(struct api_server *s)
{
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
