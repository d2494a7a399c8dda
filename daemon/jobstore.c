/*
** daemon/jobstore.c: the job queue in SQLite (see jobstore.h).
** DESIGN: one connection, one mutex, prepared statements cached in a table indexed by enum stmt
** (prepared once with SQLITE_PREPARE_PERSISTENT). Writes run in BEGIN IMMEDIATE ... COMMIT so a
** writer never hits SQLITE_BUSY on a lock upgrade; the commit is durable (synchronous=FULL) before
** any function returns success. Schema steps come from migrations/ (embedded by meson), each applied
** with its PRAGMA user_version bump inside one transaction, so a crash mid-migration reruns it.
*/
#include "jobstore.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <sys/random.h>

extern const char *const slimd_migrations[];
extern const int slimd_migrations_count;

#define JOBSTORE_MAX_RECOVERIES 100 /* daemon restarts during one job before it is failed */

static const char *const state_names[JOB_NSTATES] = { "queued", "running", "succeeded", "failed", "cancelled" };

const char *job_state_str(enum job_state s)
{
    return (unsigned)s < JOB_NSTATES ? state_names[s] : "unknown";
}

int job_state_parse(enum job_state *out, const char *name)
{
    for (int i = 0; i < JOB_NSTATES; i++)
        if (name && !strcmp(name, state_names[i])) { *out = (enum job_state)i; return 0; }
    return SLM_FAIL(SLM_EINVAL);
}

/* ---- statements ---- */

enum stmt {
    S_INSERT, S_BY_IDEM, S_GET, S_STATE, S_LIST, S_LIST_STATE, S_EVENTS, S_SEQ,
    S_CLAIM, S_PROGRESS, S_EVENT_ADD, S_FINISH, S_REQUEUE, S_REQUEUE_FAIL, S_RECOVER, S_RECOVER_FAIL,
    S_CANCEL_QUEUED, S_CANCEL_RUNNING, S_CANCEL_FLAG, S_DELETE, S_COUNTS, S_NSTMT
};

#define JOB_COLS "id, state, stage, progress, attempts, max_attempts, cancel_requested, worker, created_at, " \
                 "updated_at, started_at, finished_at, error_rc, error_msg, metrics, spec, seq"

/* next event number of a job (?1 = seq) */
#define NEXT_N "(SELECT COALESCE(MAX(n), 0) + 1 FROM events WHERE job_seq = ?1)"

static const char *const stmt_sql[S_NSTMT] = {
    [S_INSERT] = "INSERT INTO jobs (id, idem_key, spec, created_at, updated_at, max_attempts) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
    [S_BY_IDEM] = "SELECT id, spec FROM jobs WHERE idem_key = ?1",
    [S_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [S_STATE] = "SELECT state, cancel_requested FROM jobs WHERE id = ?1",
    [S_LIST] = "SELECT " JOB_COLS " FROM jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
    [S_LIST_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE seq < ?1 AND state = ?3 ORDER BY seq DESC LIMIT ?2",
    [S_EVENTS] = "SELECT n, at, kind, stage, progress, message FROM events WHERE job_seq = ?1 AND n > ?2 ORDER BY n LIMIT ?3",
    [S_SEQ] = "SELECT seq FROM jobs WHERE id = ?1",
    [S_CLAIM] = "UPDATE jobs SET state = 'running', worker = ?1, attempts = attempts + 1, started_at = ?2, "
                "updated_at = ?2, stage = NULL, progress = 0 "
                "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' AND wake_at <= ?2 ORDER BY seq LIMIT 1) "
                "RETURNING id, attempts, spec, seq",
    [S_PROGRESS] = "UPDATE jobs SET stage = ?2, progress = ?3, updated_at = ?4 WHERE seq = ?1 AND state = 'running'",
    [S_EVENT_ADD] = "INSERT INTO events (job_seq, n, at, kind, stage, progress, message) VALUES (?1, " NEXT_N ", ?2, ?3, ?4, ?5, ?6)",
    [S_FINISH] = "UPDATE jobs SET state = ?3, error_rc = ?4, error_msg = ?5, metrics = ?6, finished_at = ?7, "
                 "updated_at = ?7, progress = CASE WHEN ?3 = 'succeeded' THEN 1 ELSE progress END "
                 "WHERE seq = ?1 AND state = 'running' AND attempts = ?2",
    [S_REQUEUE] = "UPDATE jobs SET state = 'queued', worker = NULL, stage = NULL, progress = 0, updated_at = ?4, wake_at = ?7, "
                  "attempts = attempts - ?3, error_rc = ?5, error_msg = ?6 "
                  "WHERE seq = ?1 AND state = 'running' AND attempts = ?2 AND (?3 = 1 OR attempts < max_attempts)",
    [S_REQUEUE_FAIL] = "UPDATE jobs SET state = 'failed', error_rc = ?3, error_msg = ?4, finished_at = ?5, updated_at = ?5 "
                       "WHERE seq = ?1 AND state = 'running' AND attempts = ?2",
    [S_RECOVER] = "UPDATE jobs SET state = 'queued', worker = NULL, stage = NULL, progress = 0, updated_at = ?1, "
                  "attempts = attempts - 1, recoveries = recoveries + 1 "
                  "WHERE state = 'running' AND recoveries < ?2 RETURNING seq",
    [S_RECOVER_FAIL] = "UPDATE jobs SET state = 'failed', error_rc = ?3, error_msg = ?4, finished_at = ?1, updated_at = ?1 "
                       "WHERE state = 'running' AND recoveries >= ?2 RETURNING seq",
    [S_CANCEL_QUEUED] = "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2, error_rc = ?3, "
                        "error_msg = 'cancelled while queued' WHERE seq = ?1 AND state = 'queued'",
    [S_CANCEL_RUNNING] = "UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE seq = ?1 AND state = 'running'",
    [S_CANCEL_FLAG] = "SELECT cancel_requested FROM jobs WHERE id = ?1",
    [S_DELETE] = "DELETE FROM jobs WHERE seq = ?1 AND state IN ('succeeded', 'failed', 'cancelled')",
    [S_COUNTS] = "SELECT state, COUNT(*) FROM jobs GROUP BY state",
};

struct sub_req;

struct jobstore {
    sqlite3 *db;
    pthread_mutex_t mu;
    /* read side: each thread gets its own read-only connection (WAL readers run in parallel with
    ** the writer); a reader is a struct jobstore of its own with only db and st[] in use */
    bool readers_on;
    pthread_key_t key;
    pthread_mutex_t rmu;
    struct jobstore *readers, *next_reader, *parent;
    char *path;
    /* group commit of submissions */
    pthread_mutex_t gc_mu;
    pthread_cond_t gc_cv;
    struct sub_req *gc_queue;
    bool gc_leader;
    int max_attempts;
    int64_t nqueued, queue_limit;
    int64_t retry_backoff_ms;   /* queued rows, kept in step with every transition */
    sqlite3_stmt *st[S_NSTMT];
};

static void reader_close(struct jobstore *r);
static void reader_release_thread(void *v);

static int db_fail(struct jobstore *js, int src, const char *what, struct slm_err *err)
{
    enum slm_rc rc = src == SQLITE_BUSY || src == SQLITE_LOCKED ? SLM_EBUSY
                   : src == SQLITE_NOMEM ? SLM_ENOMEM : SLM_EIO;
    return slm_err_set(err, rc, "database: %s: %s", what, js && js->db ? sqlite3_errmsg(js->db) : sqlite3_errstr(src));
}

/* The cached statement id, reset and unbound. */
static sqlite3_stmt *st(struct jobstore *js, enum stmt s, struct slm_err *err)
{
    if (!js->st[s]) {
        int src = sqlite3_prepare_v3(js->db, stmt_sql[s], -1, SQLITE_PREPARE_PERSISTENT, &js->st[s], NULL);
        if (src != SQLITE_OK) { db_fail(js, src, "prepare", err); return NULL; }
    }
    sqlite3_reset(js->st[s]);
    sqlite3_clear_bindings(js->st[s]);
    return js->st[s];
}

static int exec(struct jobstore *js, const char *sql, struct slm_err *err)
{
    int src = sqlite3_exec(js->db, sql, NULL, NULL, NULL);
    return src == SQLITE_OK ? 0 : db_fail(js, src, sql, err);
}

static int begin(struct jobstore *js, struct slm_err *err)
{
    return exec(js, "BEGIN IMMEDIATE", err);
}

static int commit(struct jobstore *js, int rc, struct slm_err *err)
{
    if (rc == 0) {
        int src = sqlite3_exec(js->db, "COMMIT", NULL, NULL, NULL);
        if (src == SQLITE_OK) return 0;
        rc = db_fail(js, src, "commit", err);
    }
    sqlite3_exec(js->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Step a statement that returns no rows (or whose rows are ignored). */
static int step_done(struct jobstore *js, sqlite3_stmt *s, struct slm_err *err)
{
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {}
    sqlite3_reset(s);
    return src == SQLITE_DONE ? 0 : db_fail(js, src, "step", err);
}

static const char *col_text(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

/* seq of id, under the lock; SLM_ENOTFOUND when absent. */
static int seq_of(int64_t *out, struct jobstore *js, const char *id, struct slm_err *err)
{
    sqlite3_stmt *s = st(js, S_SEQ, err);
    if (!s) return SLM_FAIL(err ? err->rc : SLM_EIO);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) { *out = sqlite3_column_int64(s, 0); sqlite3_reset(s); return 0; }
    sqlite3_reset(s);
    if (src != SQLITE_DONE) return db_fail(js, src, "lookup", err);
    return slm_err_set(err, SLM_ENOTFOUND, "job %s not found", id);
}

static int event_add(struct jobstore *js, int64_t seq, int64_t now, const char *kind, const char *stage,
                     double progress, const char *msg, struct slm_err *err)
{
    sqlite3_stmt *s = st(js, S_EVENT_ADD, err);
    if (!s) return SLM_FAIL(SLM_EIO);
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_text(s, 3, kind, -1, SQLITE_STATIC);
    if (stage) sqlite3_bind_text(s, 4, stage, -1, SQLITE_STATIC);
    if (progress >= 0) sqlite3_bind_double(s, 5, progress);
    sqlite3_bind_text(s, 6, msg, -1, SQLITE_STATIC);
    return step_done(js, s, err);
}

/* ---- open, migrate, check ---- */

static int pragma_int(int64_t *out, struct jobstore *js, const char *sql, struct slm_err *err)
{
    sqlite3_stmt *s = NULL;
    int src = sqlite3_prepare_v2(js->db, sql, -1, &s, NULL);
    if (src == SQLITE_OK && (src = sqlite3_step(s)) == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        return 0;
    }
    sqlite3_finalize(s);
    return db_fail(js, src, sql, err);
}

static int check(struct jobstore *js, const char *pragma, struct slm_err *err)
{
    sqlite3_stmt *s = NULL;
    int src = sqlite3_prepare_v2(js->db, pragma, -1, &s, NULL);
    if (src != SQLITE_OK) return db_fail(js, src, pragma, err);
    int rc = 0;
    if ((src = sqlite3_step(s)) != SQLITE_ROW) rc = db_fail(js, src, pragma, err);
    else if (strcmp(col_text(s, 0) ? col_text(s, 0) : "", "ok"))
        rc = slm_err_set(err, SLM_EFORMAT, "database is corrupt: %s", col_text(s, 0) ? col_text(s, 0) : "?");
    sqlite3_finalize(s);
    return rc;
}

static int migrate(struct jobstore *js, struct slm_err *err)
{
    int64_t v = 0;
    int rc;
    if ((rc = pragma_int(&v, js, "PRAGMA user_version", err))) return rc;
    if (v > slimd_migrations_count)
        return slm_err_set(err, SLM_EUNSUPPORTED, "database schema version %lld is newer than this slimd (%d)",
                           (long long)v, slimd_migrations_count);
    for (int i = (int)v; i < slimd_migrations_count; i++) {
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d", i + 1);
        if ((rc = begin(js, err))) return rc;
        rc = exec(js, slimd_migrations[i], err);
        if (!rc) rc = exec(js, bump, err);
        if ((rc = commit(js, rc, err))) return rc;
    }
    return 0;
}

int jobstore_open(struct jobstore **out, const char *path, int max_attempts, struct slm_err *err)
{
    struct jobstore *js = calloc(1, sizeof *js);
    int rc = 0, src;
    *out = NULL;
    if (!js) return slm_err_set(err, SLM_ENOMEM, "database: out of memory");
    pthread_mutex_init(&js->mu, NULL);
    pthread_mutex_init(&js->rmu, NULL);
    pthread_mutex_init(&js->gc_mu, NULL);
    pthread_cond_init(&js->gc_cv, NULL);
    js->max_attempts = max_attempts > 0 ? max_attempts : 3;
    src = sqlite3_open_v2(path, &js->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) { rc = slm_err_set(err, SLM_EIO, "database %s: %s", path, js->db ? sqlite3_errmsg(js->db) : sqlite3_errstr(src)); goto done; }
    sqlite3_busy_timeout(js->db, 5000);
    sqlite3_extended_result_codes(js->db, 0);
    if ((rc = exec(js, "PRAGMA journal_mode = WAL", err)) || (rc = exec(js, "PRAGMA synchronous = FULL", err)) ||
        (rc = exec(js, "PRAGMA foreign_keys = ON", err)) || (rc = check(js, "PRAGMA quick_check", err)) ||
        (rc = migrate(js, err)) || (rc = pragma_int(&js->nqueued, js, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'", err)))
        goto done;
    js->queue_limit = INT64_MAX;
    js->retry_backoff_ms = 0;
    if (strcmp(path, ":memory:") && (js->path = strdup(path)) && pthread_key_create(&js->key, reader_release_thread) == 0)
        js->readers_on = true;
    *out = js;
    js = NULL;
done:
    jobstore_close(js);
    return rc;
}

void jobstore_close(struct jobstore *js)
{
    if (!js) return;
    if (js->readers_on) {
        pthread_key_delete(js->key);
        while (js->readers) {
            struct jobstore *r = js->readers;
            js->readers = r->next_reader;
            reader_close(r);
        }
    }
    free(js->path);
    pthread_mutex_destroy(&js->rmu);
    pthread_mutex_destroy(&js->gc_mu);
    pthread_cond_destroy(&js->gc_cv);
    for (int i = 0; i < S_NSTMT; i++) sqlite3_finalize(js->st[i]);
    sqlite3_close(js->db);
    pthread_mutex_destroy(&js->mu);
    free(js);
}

/* ---- per-thread readers ---- */

static void reader_close(struct jobstore *r)
{
    for (int i = 0; i < S_NSTMT; i++) sqlite3_finalize(r->st[i]);
    sqlite3_close(r->db);
    free(r);
}

static void reader_release_thread(void *v)
{
    struct jobstore *r = v, *js = r->parent;
    pthread_mutex_lock(&js->rmu);
    for (struct jobstore **pp = &js->readers; *pp; pp = &(*pp)->next_reader)
        if (*pp == r) { *pp = r->next_reader; break; }
    pthread_mutex_unlock(&js->rmu);
    reader_close(r);
}

/* This thread's reader, or js itself (locked) when readers are off or cannot be opened. */
static struct jobstore *rd_acquire(struct jobstore *js)
{
    struct jobstore *r = js->readers_on ? pthread_getspecific(js->key) : NULL;
    if (r) return r;
    if (js->readers_on && (r = calloc(1, sizeof *r))) {
        if (sqlite3_open_v2(js->path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
            sqlite3_busy_timeout(r->db, 5000);
            sqlite3_exec(r->db, "PRAGMA query_only = 1", NULL, NULL, NULL);
            r->parent = js;
            pthread_mutex_lock(&js->rmu);
            r->next_reader = js->readers;
            js->readers = r;
            pthread_mutex_unlock(&js->rmu);
            if (pthread_setspecific(js->key, r) == 0) return r;
            reader_release_thread(r);
        } else {
            sqlite3_close(r->db);
            free(r);
        }
    }
    pthread_mutex_lock(&js->mu);
    return js;
}

static void rd_release(struct jobstore *js, struct jobstore *r)
{
    if (r == js) pthread_mutex_unlock(&js->mu);
}

int jobstore_integrity_check(struct jobstore *js, struct slm_err *err)
{
    pthread_mutex_lock(&js->mu);
    int rc = check(js, "PRAGMA integrity_check", err);
    pthread_mutex_unlock(&js->mu);
    return rc;
}

/* ---- API side ---- */

static int new_id(char id[JOBSTORE_ID_LEN + 1], struct slm_err *err)
{
    uint8_t b[8];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return slm_err_set(err, SLM_EIO, "getrandom: %s", strerror(errno));
    snprintf(id, JOBSTORE_ID_LEN + 1, "j_%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    return 0;
}

/* Idempotency lookup, under the lock: 1 = found with the same spec (id filled), 0 = absent. */
static int by_idem(char id[JOBSTORE_ID_LEN + 1], struct jobstore *js, const char *key, const char *spec,
                   struct slm_err *err)
{
    sqlite3_stmt *s = st(js, S_BY_IDEM, err);
    if (!s) return SLM_FAIL(SLM_EIO);
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int src = sqlite3_step(s), rc = 0;
    if (src == SQLITE_ROW) {
        if (strcmp(col_text(s, 1), spec))
            rc = slm_err_set(err, SLM_ECONFLICT, "Idempotency-Key '%s' was used with a different job spec", key);
        else { snprintf(id, JOBSTORE_ID_LEN + 1, "%s", col_text(s, 0)); rc = 1; }
    } else if (src != SQLITE_DONE) rc = db_fail(js, src, "idempotency lookup", err);
    sqlite3_reset(s);
    return rc;
}

/* ---- submissions: group commit ----
** Concurrent submitters queue their rows; whichever finds no leader becomes one, writes every
** queued row in ONE transaction (one fsync) and wakes the others. Each row is still committed
** before its submitter returns. A row that is refused (idempotency conflict, queue full) writes
** nothing; an SQL failure rolls the whole batch back and every submitter in it gets the error. */

struct sub_req {
    const char *spec, *key;
    int64_t now;
    char id[JOBSTORE_ID_LEN + 1];
    bool created, done;
    int rc;
    struct slm_err err;
    struct sub_req *next;
};

/* One row of a batch, inside the leader's transaction. <0 = SQL failure (batch fails). */
static int submit_one(struct jobstore *js, struct sub_req *r, int64_t *added)
{
    int rc;
    if (r->key && (rc = by_idem(r->id, js, r->key, r->spec, &r->err)) != 0) {
        r->rc = rc < 0 ? rc : 0;
        return r->err.rc == SLM_ECONFLICT ? 0 : (rc < 0 ? rc : 0);
    }
    if (js->nqueued + *added >= js->queue_limit) {
        r->rc = slm_err_set(&r->err, SLM_EBUSY, "queue is full (%lld jobs waiting)", (long long)(js->nqueued + *added));
        return 0;
    }
    sqlite3_stmt *s = st(js, S_INSERT, &r->err);
    if (!s) return SLM_FAIL(SLM_EIO);
    sqlite3_bind_text(s, 1, r->id, -1, SQLITE_STATIC);
    if (r->key) sqlite3_bind_text(s, 2, r->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, r->spec, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, r->now);
    sqlite3_bind_int(s, 5, js->max_attempts);
    if ((rc = step_done(js, s, &r->err)) ||
        (rc = event_add(js, sqlite3_last_insert_rowid(js->db), r->now, "state", NULL, -1, "queued", &r->err)))
        return rc;
    r->created = true;
    (*added)++;
    return 0;
}

static void submit_batch(struct jobstore *js, struct sub_req *batch)
{
    struct slm_err err = SLM_ERR_INIT;
    int64_t added = 0;
    int rc;
    pthread_mutex_lock(&js->mu);
    if (!(rc = begin(js, &err)))
        for (struct sub_req *r = batch; r && !rc; r = r->next)
            if ((rc = submit_one(js, r, &added)) && !err.msg[0]) err = r->err;
    rc = commit(js, rc, &err);
    if (!rc) js->nqueued += added;
    pthread_mutex_unlock(&js->mu);
    for (struct sub_req *r = batch; r; r = r->next)
        if (rc) { r->rc = rc; r->err = err; r->created = false; }
}

int jobstore_submit(char id_out[JOBSTORE_ID_LEN + 1], bool *created, struct jobstore *js, const char *spec_json,
                    const char *idem_key, int64_t now_ms, struct slm_err *err)
{
    struct sub_req req = { .spec = spec_json, .key = idem_key, .now = now_ms, .err = SLM_ERR_INIT };
    int rc;
    *created = false;
    if ((rc = new_id(req.id, err))) return rc;
    pthread_mutex_lock(&js->gc_mu);
    req.next = js->gc_queue;
    js->gc_queue = &req;
    while (!req.done) {
        if (js->gc_leader) { pthread_cond_wait(&js->gc_cv, &js->gc_mu); continue; }
        struct sub_req *batch = js->gc_queue, *rev = NULL;
        js->gc_queue = NULL;
        js->gc_leader = true;
        pthread_mutex_unlock(&js->gc_mu);
        while (batch) { struct sub_req *n = batch->next; batch->next = rev; rev = batch; batch = n; } /* arrival order */
        submit_batch(js, rev);
        pthread_mutex_lock(&js->gc_mu);
        for (struct sub_req *r = rev, *n; r; r = n) { n = r->next; r->done = true; }
        js->gc_leader = false;
        pthread_cond_broadcast(&js->gc_cv);
    }
    pthread_mutex_unlock(&js->gc_mu);
    if (req.rc) {
        if (err && !err->msg[0]) *err = req.err;
        return req.rc;
    }
    memcpy(id_out, req.id, sizeof req.id);
    *created = req.created;
    return 0;
}

/* The current row of s (JOB_COLS) as the API's JSON. */
static json_t *job_json(sqlite3_stmt *s)
{
    json_t *j = json_object(), *spec = NULL, *metrics = NULL;
    if (!j) return NULL;
    const char *spec_txt = col_text(s, 15), *m = col_text(s, 14);
    if (spec_txt) spec = json_loads(spec_txt, 0, NULL);
    if (m) metrics = json_loads(m, 0, NULL);
    int bad = 0;
    bad |= json_object_set_new(j, "id", json_string(col_text(s, 0)));
    bad |= json_object_set_new(j, "state", json_string(col_text(s, 1)));
    bad |= json_object_set_new(j, "stage", col_text(s, 2) ? json_string(col_text(s, 2)) : json_null());
    bad |= json_object_set_new(j, "progress", json_real(sqlite3_column_double(s, 3)));
    bad |= json_object_set_new(j, "attempts", json_integer(sqlite3_column_int(s, 4)));
    bad |= json_object_set_new(j, "max_attempts", json_integer(sqlite3_column_int(s, 5)));
    bad |= json_object_set_new(j, "cancel_requested", json_boolean(sqlite3_column_int(s, 6)));
    bad |= json_object_set_new(j, "worker", col_text(s, 7) ? json_string(col_text(s, 7)) : json_null());
    static const char *const ts[] = { "created_at_ms", "updated_at_ms", "started_at_ms", "finished_at_ms" };
    for (int i = 0; i < 4; i++)
        bad |= json_object_set_new(j, ts[i], sqlite3_column_type(s, 8 + i) == SQLITE_NULL ? json_null()
                                                                                            : json_integer(sqlite3_column_int64(s, 8 + i)));
    if (sqlite3_column_type(s, 12) != SQLITE_NULL)
        bad |= json_object_set_new(j, "error", json_pack("{s:i,s:s,s:s?}", "code", sqlite3_column_int(s, 12), "name",
                                                         slm_strerror((enum slm_rc)sqlite3_column_int(s, 12)),
                                                         "message", col_text(s, 13)));
    else
        bad |= json_object_set_new(j, "error", json_null());
    bad |= json_object_set_new(j, "metrics", metrics ? metrics : json_null());
    bad |= json_object_set_new(j, "spec", spec ? spec : json_null());
    if (bad) { json_decref(j); return NULL; }
    return j;
}

int jobstore_get(json_t **out, struct jobstore *js, const char *id, struct slm_err *err)
{
    int rc = 0;
    *out = NULL;
    struct jobstore *r = rd_acquire(js);
    sqlite3_stmt *s = st(r, S_GET, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) {
        if (!(*out = job_json(s))) rc = slm_err_set(err, SLM_ENOMEM, "job %s: out of memory", id);
    } else if (src == SQLITE_DONE) rc = slm_err_set(err, SLM_ENOTFOUND, "job %s not found", id);
    else rc = db_fail(r, src, "get", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    return rc;
}

int jobstore_state(enum job_state *out, struct jobstore *js, const char *id, struct slm_err *err)
{
    int rc = 0;
    struct jobstore *r = rd_acquire(js);
    sqlite3_stmt *s = st(r, S_STATE, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) rc = job_state_parse(out, col_text(s, 0));
    else if (src == SQLITE_DONE) rc = slm_err_set(err, SLM_ENOTFOUND, "job %s not found", id);
    else rc = db_fail(r, src, "state", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    return rc;
}

int jobstore_list(json_t **out, int64_t *next, struct jobstore *js, int state, int64_t cursor, int limit,
                  struct slm_err *err)
{
    int rc = 0, src, n = 0;
    json_t *arr = json_array();
    *out = NULL;
    *next = 0;
    if (!arr) return slm_err_set(err, SLM_ENOMEM, "list: out of memory");
    struct jobstore *r = rd_acquire(js);
    sqlite3_stmt *s = st(r, state >= 0 ? S_LIST_STATE : S_LIST, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    sqlite3_bind_int64(s, 1, cursor > 0 ? cursor : INT64_MAX);
    sqlite3_bind_int(s, 2, limit + 1);
    if (state >= 0) sqlite3_bind_text(s, 3, job_state_str((enum job_state)state), -1, SQLITE_STATIC);
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == limit) { *next = sqlite3_column_int64(s, 16) + 1; break; }
        json_t *j = job_json(s);
        if (!j || json_array_append_new(arr, j)) { rc = slm_err_set(err, SLM_ENOMEM, "list: out of memory"); break; }
        n++;
    }
    if (!rc && src != SQLITE_ROW && src != SQLITE_DONE) rc = db_fail(r, src, "list", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    if (rc) json_decref(arr);
    else *out = arr;
    return rc;
}

int jobstore_events(json_t **out, struct jobstore *js, const char *id, int64_t after, int limit, struct slm_err *err)
{
    int64_t seq;
    int rc, src;
    json_t *arr = json_array();
    *out = NULL;
    if (!arr) return slm_err_set(err, SLM_ENOMEM, "events: out of memory");
    struct jobstore *r = rd_acquire(js);
    if ((rc = seq_of(&seq, r, id, err))) goto done;
    sqlite3_stmt *s = st(r, S_EVENTS, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, after);
    sqlite3_bind_int(s, 3, limit);
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        json_t *e = json_pack("{s:I,s:I,s:s,s:s?,s:o,s:s}", "n", (json_int_t)sqlite3_column_int64(s, 0), "at_ms",
                              (json_int_t)sqlite3_column_int64(s, 1), "kind", col_text(s, 2), "stage", col_text(s, 3),
                              "progress", sqlite3_column_type(s, 4) == SQLITE_NULL ? json_null() : json_real(sqlite3_column_double(s, 4)),
                              "message", col_text(s, 5));
        if (!e || json_array_append_new(arr, e)) { rc = slm_err_set(err, SLM_ENOMEM, "events: out of memory"); break; }
    }
    if (!rc && src != SQLITE_ROW && src != SQLITE_DONE) rc = db_fail(r, src, "events", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    if (rc) json_decref(arr);
    else *out = arr;
    return rc;
}

/* ---- worker side ---- */

int jobstore_claim(struct job_claim *out, struct jobstore *js, const char *worker, int64_t now_ms, struct slm_err *err)
{
    int rc, src;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    sqlite3_stmt *s = st(js, S_CLAIM, err);
    if (!s) { rc = commit(js, SLM_FAIL(SLM_EIO), err); goto done; }
    sqlite3_bind_text(s, 1, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    int64_t seq = 0;
    if ((src = sqlite3_step(s)) == SQLITE_ROW) {
        snprintf(out->id, sizeof out->id, "%s", col_text(s, 0));
        out->attempt = sqlite3_column_int(s, 1);
        out->spec = strdup(col_text(s, 2));
        seq = sqlite3_column_int64(s, 3);
        if (!out->spec) rc = slm_err_set(err, SLM_ENOMEM, "claim: out of memory");
        while ((src = sqlite3_step(s)) == SQLITE_ROW) {}
    }
    sqlite3_reset(s);
    if (!rc && src != SQLITE_DONE) rc = db_fail(js, src, "claim", err);
    else if (!rc && !seq) rc = SLM_FAIL(SLM_ENOTFOUND);
    if (!rc) {
        char msg[96];
        snprintf(msg, sizeof msg, "running (attempt %d) on %s", out->attempt, worker);
        rc = event_add(js, seq, now_ms, "state", NULL, 0, msg, err);
    }
    rc = commit(js, rc, err);
    if (rc) { free(out->spec); out->spec = NULL; }
    else js->nqueued--;
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_progress(struct jobstore *js, const char *id, const char *stage, double progress, const char *message,
                      int64_t now_ms, struct slm_err *err)
{
    int64_t seq;
    int rc;
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    if (!(rc = seq_of(&seq, js, id, err))) {
        sqlite3_stmt *s = st(js, S_PROGRESS, err);
        if (!s) rc = SLM_FAIL(SLM_EIO);
        else {
            sqlite3_bind_int64(s, 1, seq);
            if (stage) sqlite3_bind_text(s, 2, stage, -1, SQLITE_STATIC);
            sqlite3_bind_double(s, 3, progress);
            sqlite3_bind_int64(s, 4, now_ms);
            rc = step_done(js, s, err);
            if (!rc && sqlite3_changes(js->db) != 1) rc = slm_err_set(err, SLM_ECONFLICT, "job %s is not running", id);
        }
    }
    if (!rc && message) rc = event_add(js, seq, now_ms, "progress", stage, progress, message, err);
    rc = commit(js, rc, err);
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_finish(struct jobstore *js, const char *id, int attempt, enum job_state to, int code, const char *msg,
                    const char *metrics, int64_t now_ms, struct slm_err *err)
{
    int64_t seq;
    int rc;
    assert(to == JOB_SUCCEEDED || to == JOB_FAILED || to == JOB_CANCELLED);
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    if (!(rc = seq_of(&seq, js, id, err))) {
        sqlite3_stmt *s = st(js, S_FINISH, err);
        if (!s) rc = SLM_FAIL(SLM_EIO);
        else {
            sqlite3_bind_int64(s, 1, seq);
            sqlite3_bind_int(s, 2, attempt);
            sqlite3_bind_text(s, 3, job_state_str(to), -1, SQLITE_STATIC);
            if (to != JOB_SUCCEEDED) sqlite3_bind_int(s, 4, code);
            if (to != JOB_SUCCEEDED && msg) sqlite3_bind_text(s, 5, msg, -1, SQLITE_STATIC);
            if (metrics) sqlite3_bind_text(s, 6, metrics, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 7, now_ms);
            rc = step_done(js, s, err);
            if (!rc && sqlite3_changes(js->db) != 1)
                rc = slm_err_set(err, SLM_ECONFLICT, "job %s attempt %d is no longer running", id, attempt);
        }
    }
    if (!rc) {
        char line[300];
        snprintf(line, sizeof line, "%s%s%s", job_state_str(to), msg && to != JOB_SUCCEEDED ? ": " : "",
                 msg && to != JOB_SUCCEEDED ? msg : "");
        rc = event_add(js, seq, now_ms, "state", NULL, -1, line, err);
    }
    rc = commit(js, rc, err);
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_requeue(bool *requeued, struct jobstore *js, const char *id, int attempt, bool refund, int code,
                     const char *msg, int64_t now_ms, struct slm_err *err)
{
    int64_t seq;
    int rc;
    *requeued = false;
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    if ((rc = seq_of(&seq, js, id, err))) goto end;
    sqlite3_stmt *s = st(js, S_REQUEUE, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto end; }
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int(s, 2, attempt);
    sqlite3_bind_int(s, 3, refund ? 1 : 0);
    sqlite3_bind_int64(s, 4, now_ms);
    if (!refund) sqlite3_bind_int(s, 5, code);
    if (!refund && msg) sqlite3_bind_text(s, 6, msg, -1, SQLITE_STATIC);
    /* retry backoff: base * 2^(attempt-1), at most 64 * base; a refunded attempt is due at once */
    sqlite3_bind_int64(s, 7, refund ? now_ms : now_ms + (js->retry_backoff_ms << (attempt > 7 ? 6 : attempt - 1)));
    if ((rc = step_done(js, s, err))) goto end;
    *requeued = sqlite3_changes(js->db) == 1;
    if (!*requeued) { /* attempts exhausted (or a stale attempt: then nothing changes) */
        if (!(s = st(js, S_REQUEUE_FAIL, err))) { rc = SLM_FAIL(SLM_EIO); goto end; }
        sqlite3_bind_int64(s, 1, seq);
        sqlite3_bind_int(s, 2, attempt);
        sqlite3_bind_int(s, 3, code);
        if (msg) sqlite3_bind_text(s, 4, msg, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 5, now_ms);
        if ((rc = step_done(js, s, err))) goto end;
        if (sqlite3_changes(js->db) != 1) { rc = slm_err_set(err, SLM_ECONFLICT, "job %s attempt %d is no longer running", id, attempt); goto end; }
    }
    char line[320];
    snprintf(line, sizeof line, "%s: %s", *requeued ? (refund ? "queued (attempt refunded)" : "queued for retry")
                                                     : "failed after the last attempt", msg ? msg : "interrupted");
    rc = event_add(js, seq, now_ms, "state", NULL, -1, line, err);
end:
    rc = commit(js, rc, err);
    if (!rc && *requeued) js->nqueued++;
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_recover(int *n, struct jobstore *js, int64_t now_ms, struct slm_err *err)
{
    int rc, src;
    int64_t seqs[2][64];
    int ns[2] = { 0, 0 };
    *n = 0;
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        sqlite3_stmt *s = st(js, pass ? S_RECOVER_FAIL : S_RECOVER, err);
        if (!s) { rc = SLM_FAIL(SLM_EIO); break; }
        sqlite3_bind_int64(s, 1, now_ms);
        sqlite3_bind_int(s, 2, JOBSTORE_MAX_RECOVERIES);
        if (pass) {
            sqlite3_bind_int(s, 3, SLM_EINTERNAL);
            sqlite3_bind_text(s, 4, "slimd died while running this job too many times", -1, SQLITE_STATIC);
        }
        while ((src = sqlite3_step(s)) == SQLITE_ROW) {
            if (ns[pass] < 64) seqs[pass][ns[pass]] = sqlite3_column_int64(s, 0);
            ns[pass]++;
            (*n)++;
        }
        sqlite3_reset(s);
        if (src != SQLITE_DONE) rc = db_fail(js, src, "recover", err);
    }
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (int i = 0; i < ns[pass] && i < 64 && !rc; i++)
            rc = event_add(js, seqs[pass][i], now_ms, "state", NULL, -1,
                           pass ? "failed: slimd died while running this job too many times"
                                : "queued: slimd restarted while the job was running (attempt refunded)", err);
    rc = commit(js, rc, err);
    if (!rc) js->nqueued += ns[0];
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_cancel(enum job_state *state, struct jobstore *js, const char *id, int64_t now_ms, struct slm_err *err)
{
    int64_t seq;
    int rc;
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    if ((rc = seq_of(&seq, js, id, err))) goto end;
    sqlite3_stmt *s = st(js, S_CANCEL_QUEUED, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto end; }
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, now_ms);
    sqlite3_bind_int(s, 3, SLM_ECANCELLED);
    if ((rc = step_done(js, s, err))) goto end;
    if (sqlite3_changes(js->db) == 1) {
        *state = JOB_CANCELLED;
        rc = event_add(js, seq, now_ms, "state", NULL, -1, "cancelled", err);
        if (!rc) js->nqueued--; /* undone below if the commit fails */
        if ((rc = commit(js, rc, err))) js->nqueued++;
        goto done;
    }
    if (!(s = st(js, S_CANCEL_RUNNING, err))) { rc = SLM_FAIL(SLM_EIO); goto end; }
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, now_ms);
    if ((rc = step_done(js, s, err))) goto end;
    if (sqlite3_changes(js->db) == 1) {
        *state = JOB_RUNNING;
        rc = event_add(js, seq, now_ms, "log", NULL, -1, "cancel requested", err);
    } else
        rc = slm_err_set(err, SLM_ECONFLICT, "job %s has already finished", id);
end:
    rc = commit(js, rc, err);
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_cancel_requested(bool *out, struct jobstore *js, const char *id, struct slm_err *err)
{
    int rc = 0;
    *out = false;
    struct jobstore *r = rd_acquire(js);
    sqlite3_stmt *s = st(r, S_CANCEL_FLAG, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) *out = sqlite3_column_int(s, 0) != 0;
    else if (src == SQLITE_DONE) rc = slm_err_set(err, SLM_ENOTFOUND, "job %s not found", id);
    else rc = db_fail(r, src, "cancel flag", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    return rc;
}

int jobstore_delete(struct jobstore *js, const char *id, struct slm_err *err)
{
    int64_t seq;
    int rc;
    pthread_mutex_lock(&js->mu);
    if ((rc = begin(js, err))) goto done;
    if ((rc = seq_of(&seq, js, id, err))) goto end;
    sqlite3_stmt *s = st(js, S_DELETE, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto end; }
    sqlite3_bind_int64(s, 1, seq);
    if ((rc = step_done(js, s, err))) goto end;
    if (sqlite3_changes(js->db) != 1) rc = slm_err_set(err, SLM_ECONFLICT, "job %s has not finished; cancel it first", id);
end:
    rc = commit(js, rc, err);
done:
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int jobstore_counts(int64_t counts[JOB_NSTATES], struct jobstore *js, struct slm_err *err)
{
    int rc = 0, src;
    memset(counts, 0, sizeof(int64_t) * JOB_NSTATES);
    struct jobstore *r = rd_acquire(js);
    sqlite3_stmt *s = st(r, S_COUNTS, err);
    if (!s) { rc = SLM_FAIL(SLM_EIO); goto done; }
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        enum job_state k;
        if (job_state_parse(&k, col_text(s, 0)) == 0) counts[k] = sqlite3_column_int64(s, 1);
    }
    if (src != SQLITE_DONE) rc = db_fail(r, src, "counts", err);
    sqlite3_reset(s);
done:
    rd_release(js, r);
    return rc;
}

void jobstore_set_queue_limit(struct jobstore *js, int64_t limit)
{
    pthread_mutex_lock(&js->mu);
    js->queue_limit = limit > 0 ? limit : INT64_MAX;
    pthread_mutex_unlock(&js->mu);
}

void jobstore_set_retry_backoff(struct jobstore *js, int64_t base_ms)
{
    pthread_mutex_lock(&js->mu);
    js->retry_backoff_ms = base_ms > 0 ? base_ms : 0;
    pthread_mutex_unlock(&js->mu);
}
