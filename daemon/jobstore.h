/*
** daemon/jobstore.h: the job queue in SQLite (WAL, synchronous=FULL). One connection guarded by a
** mutex does every read and write, so only one writer ever touches the file (see
** RELIABILITY-AND-PERFORMANCE.md §1.2). Every mutation is one BEGIN IMMEDIATE transaction and every
** state change a compare-and-set (UPDATE ... WHERE state=?old): a lost race is SLM_ECONFLICT.
** Ownership: struct jobstore is opaque, created by jobstore_open() and freed by jobstore_close();
** json_t results are new references owned by the caller.
** Never use a jobstore after fork(): worker children exec a fresh slimd and never touch the DB.
*/
#ifndef SLIMD_JOBSTORE_H
#define SLIMD_JOBSTORE_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#include "core/err.h"

struct jobstore;

enum job_state { JOB_QUEUED = 0, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_NSTATES };

const char *job_state_str(enum job_state s);
int job_state_parse(enum job_state *out, const char *name); /* -SLM_EINVAL on an unknown name */

#define JOBSTORE_ID_LEN 18                /* "j_" + 16 hex */

/* Open (creating) the database at path (":memory:" for tests), apply pending migrations and run
** quick_check. A database newer than this binary is refused with SLM_EUNSUPPORTED. */
int jobstore_open(struct jobstore **out, const char *path, int max_attempts, struct slm_err *err);
void jobstore_close(struct jobstore *js);

/* PRAGMA integrity_check (tests, slimd --check-db): 0 when "ok". */
int jobstore_integrity_check(struct jobstore *js, struct slm_err *err);

/* Insert a queued job; the row is committed (durable) before this returns. spec_json is the
** validated spec. With idem_key, a second submit with the same key and the same spec returns the
** first id with *created = false; the same key with a different spec is SLM_ECONFLICT. */
int jobstore_submit(char id_out[JOBSTORE_ID_LEN + 1], bool *created, struct jobstore *js,
                    const char *spec_json, const char *idem_key, int64_t now_ms, struct slm_err *err);

/* The job as the API shows it. SLM_ENOTFOUND for an unknown id. */
int jobstore_get(json_t **out, struct jobstore *js, const char *id, struct slm_err *err);

/* State of a job (cheap; no JSON). */
int jobstore_state(enum job_state *out, struct jobstore *js, const char *id, struct slm_err *err);

/* Jobs in seq order, newest first, after cursor (0 = from the newest), at most limit; state < 0 for
** all states. *next is the cursor for the following page, 0 when there is none. */
int jobstore_list(json_t **out, int64_t *next, struct jobstore *js, int state, int64_t cursor, int limit,
                  struct slm_err *err);

/* Events of a job with n > after, oldest first, at most limit. */
int jobstore_events(json_t **out, struct jobstore *js, const char *id, int64_t after, int limit,
                    struct slm_err *err);

/* ---- worker side ---- */

struct job_claim {
    char id[JOBSTORE_ID_LEN + 1];
    int attempt;              /* 1-based, counted by the claim */
    char *spec;               /* JSON text, caller frees with free() */
};

/* Claim the oldest queued job for worker (one transaction, attempts+1). SLM_ENOTFOUND when the
** queue is empty (no message set). */
int jobstore_claim(struct job_claim *out, struct jobstore *js, const char *worker, int64_t now_ms,
                   struct slm_err *err);

/* Progress of a running job; appends an event when message is non-NULL. */
int jobstore_progress(struct jobstore *js, const char *id, const char *stage, double progress,
                      const char *message, int64_t now_ms, struct slm_err *err);

/* running -> succeeded (metrics JSON text may be NULL) | failed (rc, msg) | cancelled, for the claim
** of that attempt only; a stale attempt gets SLM_ECONFLICT. */
int jobstore_finish(struct jobstore *js, const char *id, int attempt, enum job_state to, int rc,
                    const char *msg, const char *metrics, int64_t now_ms, struct slm_err *err);

/* running -> queued. refund=true gives the attempt back (shutdown, daemon crash); otherwise the
** attempt stays spent and the job fails when attempts reach max_attempts. *requeued tells which. */
int jobstore_requeue(bool *requeued, struct jobstore *js, const char *id, int attempt, bool refund, int rc,
                     const char *msg, int64_t now_ms, struct slm_err *err);

/* At start: every job left running by an earlier process goes back to queued at once, its attempt
** refunded (the daemon died, not the job); after 100 such recoveries the job fails. *n = rows. */
int jobstore_recover(int *n, struct jobstore *js, int64_t now_ms, struct slm_err *err);

/* queued -> cancelled at once; running -> cancel_requested (the supervisor stops the child);
** finished -> SLM_ECONFLICT. *state is the state after the call. */
int jobstore_cancel(enum job_state *state, struct jobstore *js, const char *id, int64_t now_ms,
                    struct slm_err *err);
int jobstore_cancel_requested(bool *out, struct jobstore *js, const char *id, struct slm_err *err);

/* Remove a finished job and its events; a queued or running job is SLM_ECONFLICT. */
int jobstore_delete(struct jobstore *js, const char *id, struct slm_err *err);

/* Submissions beyond limit queued jobs get SLM_EBUSY (<= 0: no limit). */
void jobstore_set_queue_limit(struct jobstore *js, int64_t limit);

/* A job requeued after a failed attempt becomes claimable base_ms * 2^(attempt-1) later (capped at
** 64 * base_ms); 0 (the default) = at once. */
void jobstore_set_retry_backoff(struct jobstore *js, int64_t base_ms);

/* Number of jobs per state (counts[JOB_NSTATES]). */
int jobstore_counts(int64_t counts[JOB_NSTATES], struct jobstore *js, struct slm_err *err);

#endif
