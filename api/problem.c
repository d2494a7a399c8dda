/*
** api/problem.c: the only slm_rc -> HTTP table, and RFC 9457 problem+json bodies built with jansson.
** `detail` is the one-line slm_err message (client-facing: no secrets, no stack traces).
*/
#include "api.h"

#include <stdio.h>

struct problem_row { enum slm_rc rc; int status; const char *type; const char *title; };

static const struct problem_row problems[] = {
    { SLM_EINVAL, 400, "/problems/invalid-request", "The request is not valid" },
    { SLM_EFORMAT, 400, "/problems/malformed", "The document is malformed" },
    { SLM_ENOTFOUND, 404, "/problems/not-found", "No such resource" },
    { SLM_ECONFLICT, 409, "/problems/conflict", "The resource is not in a state that allows this" },
    { SLM_EUNSUPPORTED, 422, "/problems/unsupported", "This request cannot be served by this build" },
    { SLM_EBUSY, 503, "/problems/busy", "Busy: try again later" },
    { SLM_ENOMEM, 503, "/problems/out-of-memory", "Out of memory: try again later" },
    { SLM_EIO, 500, "/problems/io", "Storage or network error" },
    { SLM_ETOOLATE, 409, "/problems/too-late", "Too late for this operation" },
    { SLM_ECANCELLED, 409, "/problems/cancelled", "The job was cancelled" },
};

static const struct problem_row *row_of(int rc)
{
    int code = rc < 0 ? -rc : rc;
    for (size_t i = 0; i < sizeof problems / sizeof problems[0]; i++)
        if ((int)problems[i].rc == code) return &problems[i];
    return NULL;
}

int problem_status(int rc)
{
    const struct problem_row *r = row_of(rc);
    return r ? r->status : 500;
}

void problem_http(struct api_resp *rs, int status, const char *type, const char *title, const char *detail,
                  const char *instance)
{
    json_decref(rs->json);
    rs->status = status;
    rs->json = json_pack("{s:s,s:s,s:i,s:s?,s:s?}", "type", type, "title", title, "status", status, "detail", detail,
                         "instance", instance);
    rs->content_type = "application/problem+json";
}

void problem_from_err(struct api_resp *rs, int rc, const struct slm_err *err, const char *instance)
{
    const struct problem_row *r = row_of(rc);
    int code = rc < 0 ? -rc : rc;
    problem_http(rs, r ? r->status : 500, r ? r->type : "/problems/internal", r ? r->title : "Internal error",
                 err && err->msg[0] ? err->msg : slm_strerror((enum slm_rc)code), instance);
    if (rs->json) {
        json_object_set_new(rs->json, "code", json_integer(code));
        if (rs->pointer) json_object_set_new(rs->json, "pointer", json_string(rs->pointer));
    }
    if (rs->status == 503) rs->retry_after = 1;
}
