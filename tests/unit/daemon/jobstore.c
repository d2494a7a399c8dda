/* tests/unit/daemon/jobstore.c: the SQLite job queue: migrations, compare-and-set transitions,
** attempts, recovery, idempotency keys, cancel and delete rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "daemon/jobstore.h"

static struct jobstore *open_mem(void)
{
    struct jobstore *js = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobstore_open(&js, ":memory:", 3, &err), 0);
    return js;
}

static void submit(struct jobstore *js, char id[JOBSTORE_ID_LEN + 1], const char *key)
{
    struct slm_err err = SLM_ERR_INIT;
    bool created;
    assert_int_equal(jobstore_submit(id, &created, js, "{\"method\":\"eval\"}", key, 1000, &err), 0);
}

static enum job_state state_of(struct jobstore *js, const char *id)
{
    enum job_state s;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobstore_state(&s, js, id, &err), 0);
    return s;
}

static void test_daemon_jobstore__submit_then_get_is_queued(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char id[JOBSTORE_ID_LEN + 1];
    submit(js, id, NULL);
    assert_int_equal(strlen(id), JOBSTORE_ID_LEN);
    json_t *j = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobstore_get(&j, js, id, &err), 0);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "queued");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "spec"), "method")), "eval");
    json_decref(j);
    assert_int_equal(jobstore_get(&j, js, "j_nope", &err), -SLM_ENOTFOUND);
    assert_null(j);
    jobstore_close(js);
}

static void test_daemon_jobstore__claim_counts_attempts_and_fails_after_three(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char id[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    submit(js, id, NULL);
    for (int a = 1; a <= 3; a++) {
        struct job_claim c;
        assert_int_equal(jobstore_claim(&c, js, "w0", 2000 + 10000 * a, &err), 0);
        assert_string_equal(c.id, id);
        assert_int_equal(c.attempt, a);
        assert_int_equal(state_of(js, id), JOB_RUNNING);
        free(c.spec);
        bool requeued;
        assert_int_equal(jobstore_requeue(&requeued, js, id, a, false, SLM_EINTERNAL, "worker exited: signal 9", 3000 + 10000 * a, &err), 0);
        assert_int_equal(requeued, a < 3);
    }
    assert_int_equal(state_of(js, id), JOB_FAILED);
    struct job_claim c;
    assert_int_equal(jobstore_claim(&c, js, "w0", 99000, &err), -SLM_ENOTFOUND);
    json_t *j;
    assert_int_equal(jobstore_get(&j, js, id, &err), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "worker exited: signal 9");
    json_decref(j);
    jobstore_close(js);
}

static void test_daemon_jobstore__finish_is_compare_and_set(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char id[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    submit(js, id, NULL);
    struct job_claim c;
    assert_int_equal(jobstore_claim(&c, js, "w0", 2000, &err), 0);
    free(c.spec);
    assert_int_equal(jobstore_finish(js, id, 2, JOB_SUCCEEDED, 0, NULL, NULL, 3000, &err), -SLM_ECONFLICT);
    slm_err_clear(&err);
    assert_int_equal(jobstore_finish(js, id, 1, JOB_SUCCEEDED, 0, NULL, "{\"x\":1}", 3000, &err), 0);
    assert_int_equal(jobstore_finish(js, id, 1, JOB_SUCCEEDED, 0, NULL, NULL, 3000, &err), -SLM_ECONFLICT);
    assert_int_equal(state_of(js, id), JOB_SUCCEEDED);
    jobstore_close(js);
}

static void test_daemon_jobstore__recover_requeues_running_without_spending_attempt(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char id[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    submit(js, id, NULL);
    struct job_claim c;
    assert_int_equal(jobstore_claim(&c, js, "w0", 2000, &err), 0);
    free(c.spec);
    int n;
    assert_int_equal(jobstore_recover(&n, js, 3000, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(state_of(js, id), JOB_QUEUED);
    assert_int_equal(jobstore_claim(&c, js, "w0", 4000, &err), 0);
    assert_int_equal(c.attempt, 1);
    free(c.spec);
    jobstore_close(js);
}

static void test_daemon_jobstore__idempotency_key_returns_first_id(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char a[JOBSTORE_ID_LEN + 1], b[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    bool created;
    assert_int_equal(jobstore_submit(a, &created, js, "{}", "k1", 1, &err), 0);
    assert_true(created);
    assert_int_equal(jobstore_submit(b, &created, js, "{}", "k1", 2, &err), 0);
    assert_false(created);
    assert_string_equal(a, b);
    assert_int_equal(jobstore_submit(b, &created, js, "{\"other\":1}", "k1", 3, &err), -SLM_ECONFLICT);
    int64_t counts[JOB_NSTATES];
    assert_int_equal(jobstore_counts(counts, js, &err), 0);
    assert_int_equal(counts[JOB_QUEUED], 1);
    jobstore_close(js);
}

static void test_daemon_jobstore__cancel_and_delete_rules(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char q[JOBSTORE_ID_LEN + 1], r[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    enum job_state s;
    submit(js, r, NULL);
    submit(js, q, NULL);
    struct job_claim c;
    assert_int_equal(jobstore_claim(&c, js, "w0", 2000, &err), 0); /* oldest first: r */
    assert_string_equal(c.id, r);
    free(c.spec);
    assert_int_equal(jobstore_delete(js, q, &err), -SLM_ECONFLICT);
    slm_err_clear(&err);
    assert_int_equal(jobstore_cancel(&s, js, q, 3000, &err), 0);
    assert_int_equal(s, JOB_CANCELLED);
    assert_int_equal(jobstore_cancel(&s, js, q, 3000, &err), -SLM_ECONFLICT);
    slm_err_clear(&err);
    assert_int_equal(jobstore_cancel(&s, js, r, 3000, &err), 0);
    assert_int_equal(s, JOB_RUNNING);
    bool flag;
    assert_int_equal(jobstore_cancel_requested(&flag, js, r, &err), 0);
    assert_true(flag);
    assert_int_equal(jobstore_delete(js, q, &err), 0);
    assert_int_equal(jobstore_state(&s, js, q, &err), -SLM_ENOTFOUND);
    jobstore_close(js);
}

static void test_daemon_jobstore__list_pages_with_cursor_and_filter(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char ids[5][JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    for (int i = 0; i < 5; i++) submit(js, ids[i], NULL);
    json_t *page;
    int64_t next, cursor = 0;
    int seen = 0;
    do {
        assert_int_equal(jobstore_list(&page, &next, js, -1, cursor, 2, &err), 0);
        for (size_t i = 0; i < json_array_size(page); i++, seen++)
            assert_string_equal(json_string_value(json_object_get(json_array_get(page, i), "id")), ids[4 - seen]);
        json_decref(page);
        cursor = next;
    } while (next);
    assert_int_equal(seen, 5);
    enum job_state s;
    assert_int_equal(jobstore_cancel(&s, js, ids[2], 1, &err), 0);
    assert_int_equal(jobstore_list(&page, &next, js, JOB_CANCELLED, 0, 10, &err), 0);
    assert_int_equal(json_array_size(page), 1);
    json_decref(page);
    json_t *ev;
    assert_int_equal(jobstore_events(&ev, js, ids[2], 0, 100, &err), 0);
    assert_int_equal(json_array_size(ev), 2); /* queued, cancelled */
    json_decref(ev);
    jobstore_close(js);
}

static void test_daemon_jobstore__refuses_newer_schema(void **state)
{
    (void)state;
    char path[] = "/tmp/t-jobstore-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    struct jobstore *js = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobstore_open(&js, path, 3, &err), -SLM_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "newer"));
    unlink(path);
    /* and a fresh file migrates and passes integrity_check; reopening is a no-op */
    for (int i = 0; i < 2; i++) {
        slm_err_clear(&err);
        assert_int_equal(jobstore_open(&js, path, 3, &err), 0);
        assert_int_equal(jobstore_integrity_check(js, &err), 0);
        jobstore_close(js);
    }
    char aux[64];
    unlink(path);
    snprintf(aux, sizeof aux, "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", path);
    unlink(aux);
}

static void test_daemon_jobstore__retry_waits_for_backoff(void **state)
{
    (void)state;
    struct jobstore *js = open_mem();
    char id[JOBSTORE_ID_LEN + 1];
    struct slm_err err = SLM_ERR_INIT;
    struct job_claim c;
    bool requeued;
    jobstore_set_retry_backoff(js, 1000);
    submit(js, id, NULL);
    assert_int_equal(jobstore_claim(&c, js, "w0", 10000, &err), 0);
    free(c.spec);
    assert_int_equal(jobstore_requeue(&requeued, js, id, 1, false, SLM_EIO, "HTTP 500", 10000, &err), 0);
    assert_int_equal(jobstore_claim(&c, js, "w0", 10999, &err), -SLM_ENOTFOUND);   /* 1 s after attempt 1 */
    assert_int_equal(jobstore_claim(&c, js, "w0", 11000, &err), 0);
    free(c.spec);
    assert_int_equal(jobstore_requeue(&requeued, js, id, 2, false, SLM_EIO, "HTTP 500", 20000, &err), 0);
    assert_int_equal(jobstore_claim(&c, js, "w0", 21999, &err), -SLM_ENOTFOUND);   /* 2 s after attempt 2 */
    assert_int_equal(jobstore_claim(&c, js, "w0", 22000, &err), 0);
    assert_int_equal(c.attempt, 3);
    free(c.spec);
    /* a refunded attempt (shutdown) is due at once */
    assert_int_equal(jobstore_requeue(&requeued, js, id, 3, true, 0, "shutdown", 30000, &err), 0);
    assert_int_equal(jobstore_claim(&c, js, "w0", 30000, &err), 0);
    assert_int_equal(c.attempt, 3);
    free(c.spec);
    jobstore_close(js);
}

struct submitter { struct jobstore *js; int t; int created; };

static void *submit_many(void *v)
{
    struct submitter *sb = v;
    for (int i = 0; i < 50; i++) {
        char id[JOBSTORE_ID_LEN + 1], key[32], got[JOBSTORE_ID_LEN + 1];
        bool created;
        struct slm_err err = SLM_ERR_INIT;
        snprintf(key, sizeof key, "k%d", i);            /* every thread uses the same 50 keys */
        if (jobstore_submit(id, &created, sb->js, "{}", key, i, &err) == 0 && created) sb->created++;
        enum job_state st;
        if (jobstore_submit(got, &created, sb->js, "{\"n\":1}", NULL, i, &err) || created != true ||
            jobstore_state(&st, sb->js, got, &err) || st != JOB_QUEUED)
            sb->created = -1000;                        /* committed and readable on return */
    }
    return NULL;
}

static void test_daemon_jobstore__concurrent_submits_group_commit(void **state)
{
    (void)state;
    char path[] = "/tmp/t-jobstore-gc-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    struct jobstore *js = NULL;
    struct slm_err err = SLM_ERR_INIT;
    assert_int_equal(jobstore_open(&js, path, 3, &err), 0);
    pthread_t th[8];
    struct submitter sb[8];
    for (int t = 0; t < 8; t++) {
        sb[t] = (struct submitter){ js, t, 0 };
        pthread_create(&th[t], NULL, submit_many, &sb[t]);
    }
    int created = 0;
    for (int t = 0; t < 8; t++) {
        pthread_join(th[t], NULL);
        assert_true(sb[t].created >= 0);
        created += sb[t].created;
    }
    assert_int_equal(created, 50);                       /* each key created exactly once */
    int64_t counts[JOB_NSTATES];
    assert_int_equal(jobstore_counts(counts, js, &err), 0);
    assert_int_equal(counts[JOB_QUEUED], 50 + 8 * 50);
    assert_int_equal(jobstore_integrity_check(js, &err), 0);
    jobstore_close(js);
    char aux[64];
    unlink(path);
    snprintf(aux, sizeof aux, "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", path);
    unlink(aux);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemon_jobstore__submit_then_get_is_queued),
        cmocka_unit_test(test_daemon_jobstore__claim_counts_attempts_and_fails_after_three),
        cmocka_unit_test(test_daemon_jobstore__finish_is_compare_and_set),
        cmocka_unit_test(test_daemon_jobstore__recover_requeues_running_without_spending_attempt),
        cmocka_unit_test(test_daemon_jobstore__idempotency_key_returns_first_id),
        cmocka_unit_test(test_daemon_jobstore__cancel_and_delete_rules),
        cmocka_unit_test(test_daemon_jobstore__list_pages_with_cursor_and_filter),
        cmocka_unit_test(test_daemon_jobstore__refuses_newer_schema),
        cmocka_unit_test(test_daemon_jobstore__concurrent_submits_group_commit),
        cmocka_unit_test(test_daemon_jobstore__retry_waits_for_backoff),
    };
    return cmocka_run_group_tests_name("daemon/jobstore", tests, NULL, NULL);
}
