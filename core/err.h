/*
** core/err.h: one error code, one message. The only core/ header kernels/ may include
** (besides core/dtype.h). Codes are stored in the job database: append only, never reuse.
*/
#ifndef SLM_ERR_H
#define SLM_ERR_H

enum slm_rc {
    SLM_OK = 0,
    SLM_ENOMEM = 1,      /* allocation failed (host or device) */
    SLM_EIO = 2,         /* file or network I/O */
    SLM_EFORMAT = 3,     /* malformed input file or document */
    SLM_EDTYPE = 4,      /* unsupported or mismatched dtype */
    SLM_ESHAPE = 5,      /* tensor shape mismatch */
    SLM_ENOTFOUND = 6,   /* named thing absent */
    SLM_ECONFLICT = 7,   /* state changed under us */
    SLM_ECUDA = 8,       /* CUDA / cuBLAS / cuSOLVER failure */
    SLM_ECANCELLED = 9,  /* caller asked to stop */
    SLM_EBUSY = 10,      /* resource busy, try later */
    SLM_ETOOLATE = 11,   /* deadline passed */
    SLM_EINVAL = 12,     /* invalid argument or job spec value */
    SLM_EUNSUPPORTED = 13, /* valid request we cannot serve (architecture, method) */
    SLM_ENUMERIC = 14,   /* numerical failure (non-SPD Hessian, NaN) */
    SLM_EINTERNAL = 15   /* invariant broken: a bug */
};

struct slm_err {
    enum slm_rc rc;
    char msg[256];       /* one line, no '\n'; first message wins */
};

#define SLM_ERR_INIT { SLM_OK, { 0 } }

/* Record rc and a printf-style message in e (e may be NULL). The first message set wins, so the
** innermost cause is what the user sees. Returns -(int)rc, so `return slm_err_set(...)` works. */
int slm_err_set(struct slm_err *e, enum slm_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Put "PREFIX: " (printf-style) in front of the recorded message, so a caller can say where the
** innermost cause struck ("block 3 of 32, compress q_proj (64 x 64): cuda: out of ..."). No-op
** when e is NULL or holds no error; the end of a long message is cut to fit. Returns -(int)e->rc. */
int slm_err_prefix(struct slm_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Forget a recorded error so e can be reused. */
void slm_err_clear(struct slm_err *e);

/* Short static name of a code ("out of memory", ...). */
const char *slm_strerror(enum slm_rc rc);

/* Functions return 0 on success and a negative slm_rc on failure. */
#define SLM_FAIL(rc) (-(int)(rc))

#endif
