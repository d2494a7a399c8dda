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
