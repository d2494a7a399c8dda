/* core/err.c: error recording. See err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int slm_err_set(struct slm_err *e, enum slm_rc rc, const char *fmt, ...)
{
    if (e && e->rc == SLM_OK) {
        va_list ap;
        e->rc = rc;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        for (char *p = e->msg; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
    }
    return -(int)rc;
}

int slm_err_prefix(struct slm_err *e, const char *fmt, ...)
{
    if (!e || e->rc == SLM_OK) return 0;
    char pre[sizeof e->msg], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    /* pre, ": ", old, cut at the buffer's end */
    size_t cap = sizeof e->msg - 1, n = 0;
    const char *parts[] = { pre, ": ", old };
    for (size_t i = 0; i < 3; i++)
        for (const char *q = parts[i]; *q && n < cap; q++) e->msg[n++] = *q;
    e->msg[n] = 0;
    for (char *p = e->msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return -(int)e->rc;
}

void slm_err_clear(struct slm_err *e)
{
    if (e) { e->rc = SLM_OK; e->msg[0] = 0; }
}

const char *slm_strerror(enum slm_rc rc)
{
    switch (rc) {
    case SLM_OK: return "ok";
    case SLM_ENOMEM: return "out of memory";
    case SLM_EIO: return "i/o error";
    case SLM_EFORMAT: return "malformed input";
    case SLM_EDTYPE: return "unsupported dtype";
    case SLM_ESHAPE: return "shape mismatch";
    case SLM_ENOTFOUND: return "not found";
    case SLM_ECONFLICT: return "conflict";
    case SLM_ECUDA: return "cuda error";
    case SLM_ECANCELLED: return "cancelled";
    case SLM_EBUSY: return "busy";
    case SLM_ETOOLATE: return "too late";
    case SLM_EINVAL: return "invalid argument";
    case SLM_EUNSUPPORTED: return "unsupported";
    case SLM_ENUMERIC: return "numerical failure";
    case SLM_EINTERNAL: return "internal error";
    }
    return "unknown error";
}
