/*
** api/api.h: the HTTP surface (DESIGN.md "The service"). libmicrohttpd runs the connections (a
** thread each, bounded by connection-limit and per-ip-connection-limit); router.c maps
** (method, path) to a handler; handlers validate, touch the store and fill a struct api_resp.
** Handlers never write status lines or JSON text by hand: a negative return goes through
** problem.c, the one slm_rc -> HTTP table.
** Ownership: struct api_server is opaque (api_start/api_stop); struct api_ctx is the caller's and
** must outlive the server; everything in api_resp is freed by the server after sending.
*/
#ifndef SLIMD_API_H
#define SLIMD_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "core/err.h"
#include "daemon/config.h"
#include "daemon/jobstore.h"

struct auth;
struct MHD_Connection;

/* Shared state the handlers see (borrowed pointers; counters updated atomically). */
struct api_ctx {
    struct jobstore *js;
    const struct slimd_config *cfg;
    struct auth *auth;              /* NULL = no authentication */
    char *jobs_dir;                 /* DATA_DIR/jobs: artifacts in jobs/<id>/out/ */
    int wake_fd;                    /* written after a submit/cancel so the supervisor looks now; -1 = none */
    atomic_int draining;            /* SIGTERM: refuse submissions with 503 */
    atomic_int ready;               /* store open and supervisor running */
    atomic_long http_by_code[600];  /* requests answered, by status */
    atomic_long bytes_downloaded;
    atomic_long jobs_finished, job_seconds_ms;  /* for the duration summary */
    int workers;
    const char *const *worker_devices;  /* [workers] backend of each slot ("cpu", "cuda:0"); may be NULL */
};

enum api_scope { SCOPE_NONE = 0, SCOPE_READ, SCOPE_SUBMIT };

struct api_req {
    struct api_ctx *ctx;
    struct MHD_Connection *conn;
    const char *method, *path;
    const char *body;
    size_t body_len;
    const char *params[2];          /* '*' segments of the route, in order */
};

struct api_resp {
    int status;                     /* default 200 */
    json_t *json;                   /* body (owned) */
    char *text;                     /* or a plain body (owned, malloc) */
    const char *content_type;       /* static; default application/json */
    char *location;                 /* Location header (owned) */
    const char *pointer;            /* JSON pointer for a 400 problem (static or in ptrbuf) */
    char ptrbuf[256];
    int fd;                         /* file body when >= 0 (owned) */
    uint64_t off, len, total;       /* file range; total = whole size (Content-Range) */
    bool partial;                   /* 206 */
    void *stream;                   /* event stream state (owned; see jobs.c) */
    int retry_after;                /* seconds; 0 = no header */
};

typedef int (*api_handler)(struct api_req *rq, struct api_resp *rs, struct slm_err *err);

/* ---- server.c ---- */
struct api_server;
int api_start(struct api_server **out, struct api_ctx *ctx, int *bound_port, struct slm_err *err);
void api_quiesce(struct api_server *s);     /* stop accepting new connections */
void api_stop(struct api_server *s);        /* NULL ok */

/* ---- router.c ---- */
/* Find the handler for method+path; fills rq->params. Returns 0, or 404/405 (allow set for 405). */
int router_match(api_handler *h, enum api_scope *scope, const char **allow, struct api_req *rq, char *pbuf, size_t pbuf_len);

/* ---- problem.c ---- */
/* application/problem+json for a failed handler (rc negative slm_rc) or an HTTP-level refusal
** (rc = 0, status given). Fills rs->status and rs->json. */
void problem_from_err(struct api_resp *rs, int rc, const struct slm_err *err, const char *instance);
void problem_http(struct api_resp *rs, int status, const char *type, const char *title, const char *detail,
                  const char *instance);
int problem_status(int rc);

/* ---- handlers (jobs.c, health.c) ---- */
int jobs_submit(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_list(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_get(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_events(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_cancel(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_delete(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_artifacts(struct api_req *, struct api_resp *, struct slm_err *);
int jobs_artifact_get(struct api_req *, struct api_resp *, struct slm_err *);
int health_capabilities(struct api_req *, struct api_resp *, struct slm_err *);
int health_healthz(struct api_req *, struct api_resp *, struct slm_err *);
int health_readyz(struct api_req *, struct api_resp *, struct slm_err *);
int health_metrics(struct api_req *, struct api_resp *, struct slm_err *);
int health_index(struct api_req *, struct api_resp *, struct slm_err *);

/* Event stream body reader for MHD (jobs.c). */
ssize_t jobs_stream_read(void *cls, uint64_t pos, char *buf, size_t max);
void jobs_stream_free(void *cls);

/* ---- source policy (jobs.c): may slimd fetch this model source? 0 or -SLM_EINVAL ---- */
int api_source_allowed(const struct slimd_config *cfg, const char *source, const char *revision, char *ptr,
                       size_t ptr_len, struct slm_err *err);

/* ---- auth.c ---- */
/* Load "SCOPE SHA256HEX" lines; refuses a file readable by group or others. */
int auth_load(struct auth **out, const char *path, struct slm_err *err);
void auth_free(struct auth *a);
/* 0 = allowed, 401 = missing/unknown token, 403 = token lacks the scope. */
int auth_check(const struct auth *a, const char *authorization_header, enum api_scope need);
/* lower-case hex sha256 of s into hex[65] (also used by tests and fetch). */
void auth_sha256_hex(char hex[65], const void *data, size_t len);

#endif
