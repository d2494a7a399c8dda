/* tests/unit/api/http.c: the route table, the slm_rc -> HTTP table, bearer-token checks and the
** model-source policy, without a server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"

static int route(const char *method, const char *path, api_handler *h, const char **p0, const char **p1)
{
    static char pbuf[300];
    struct api_req rq = { .method = method, .path = path };
    enum api_scope scope;
    const char *allow;
    int st = router_match(h, &scope, &allow, &rq, pbuf, sizeof pbuf);
    if (p0) *p0 = rq.params[0];
    if (p1) *p1 = rq.params[1];
    return st;
}

static void test_api_router__matches_params_and_rejects_traversal(void **state)
{
    (void)state;
    api_handler h;
    const char *a, *b;
    assert_int_equal(route("GET", "/v1/jobs/j_1/artifacts/model.safetensors", &h, &a, &b), 0);
    assert_ptr_equal(h, jobs_artifact_get);
    assert_string_equal(a, "j_1");
    assert_string_equal(b, "model.safetensors");
    assert_int_equal(route("POST", "/v1/jobs/j_1/cancel", &h, &a, NULL), 0);
    assert_ptr_equal(h, jobs_cancel);
    assert_int_equal(route("PUT", "/v1/jobs", &h, NULL, NULL), 405);
    assert_int_equal(route("GET", "/v1/jobs/../x", &h, NULL, NULL), 404);
    assert_int_equal(route("GET", "/v1/jobs/j_1/artifacts/..", &h, NULL, NULL), 404);
    assert_int_equal(route("GET", "/v1/jobs/a b", &h, NULL, NULL), 404);
    assert_int_equal(route("GET", "/v1/jobs/", &h, NULL, NULL), 404);
    assert_int_equal(route("GET", "/v1/jobs//events", &h, NULL, NULL), 404);
    assert_int_equal(route("GET", "/", &h, NULL, NULL), 0);
}

static void test_api_problem__codes_map_to_statuses(void **state)
{
    (void)state;
    assert_int_equal(problem_status(-SLM_EINVAL), 400);
    assert_int_equal(problem_status(-SLM_ENOTFOUND), 404);
    assert_int_equal(problem_status(-SLM_ECONFLICT), 409);
    assert_int_equal(problem_status(-SLM_EBUSY), 503);
    assert_int_equal(problem_status(-SLM_EINTERNAL), 500);
    assert_int_equal(problem_status(-999), 500);
    struct api_resp rs = { .fd = -1, .pointer = "/pruning/sparsity" };
    struct slm_err err = SLM_ERR_INIT;
    int rc = slm_err_set(&err, SLM_EINVAL, "/pruning/sparsity: must be in [0, 1)");
    problem_from_err(&rs, rc, &err, "/v1/jobs");
    assert_int_equal(rs.status, 400);
    assert_string_equal(rs.content_type, "application/problem+json");
    assert_string_equal(json_string_value(json_object_get(rs.json, "pointer")), "/pruning/sparsity");
    assert_string_equal(json_string_value(json_object_get(rs.json, "detail")), err.msg);
    assert_int_equal(json_integer_value(json_object_get(rs.json, "code")), SLM_EINVAL);
    json_decref(rs.json);
}

static void test_api_auth__hashed_tokens_and_scopes(void **state)
{
    (void)state;
    char path[] = "/tmp/t-auth-XXXXXX", r[65], w[65];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    auth_sha256_hex(r, "reader", 6);
    auth_sha256_hex(w, "writer", 6);
    /* sha256("abc") is the FIPS 180-2 example */
    char abc[65];
    auth_sha256_hex(abc, "abc", 3);
    assert_string_equal(abc, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# tokens\nread %s\nsubmit %s\n", r, w);
    fclose(f);
    struct auth *a = NULL;
    struct slm_err err = SLM_ERR_INIT;
    chmod(path, 0644);
    assert_int_equal(auth_load(&a, path, &err), -SLM_EINVAL);   /* world-readable */
    chmod(path, 0600);
    slm_err_clear(&err);
    assert_int_equal(auth_load(&a, path, &err), 0);
    assert_int_equal(auth_check(a, NULL, SCOPE_READ), 401);
    assert_int_equal(auth_check(a, "Bearer", SCOPE_READ), 401);
    assert_int_equal(auth_check(a, "Bearer nope", SCOPE_READ), 401);
    assert_int_equal(auth_check(a, "Basic cmVhZGVy", SCOPE_READ), 401);
    assert_int_equal(auth_check(a, "Bearer reader", SCOPE_READ), 0);
    assert_int_equal(auth_check(a, "Bearer reader", SCOPE_SUBMIT), 403);
    assert_int_equal(auth_check(a, "Bearer writer", SCOPE_SUBMIT), 0);
    assert_int_equal(auth_check(a, "Bearer writer", SCOPE_READ), 0);
    assert_int_equal(auth_check(a, NULL, SCOPE_NONE), 0);
    assert_int_equal(auth_check(NULL, NULL, SCOPE_SUBMIT), 0);   /* auth off */
    auth_free(a);
    unlink(path);
}

static void test_api_jobs__source_policy(void **state)
{
    (void)state;
    struct slimd_config cfg;
    struct slm_err err = SLM_ERR_INIT;
    const char *action;
    char *argv[] = { "slimd", "--file-source-root", "/tmp", NULL };
    assert_int_equal(config_load(&cfg, 3, argv, &action, &err), 0);
    char ptr[64];
    static const char *const ok[] = { "hf://facebook/opt-125m", "hf://gpt2", "hf://org/name@v1.0",
                                      "https://huggingface.co/x/y", "https://cdn-lfs.hf.co/a", "file:///tmp", NULL };
    static const char *const bad[] = { "hf://../x", "hf://a/b/c", "hf://-a/b", "hf://a/b.git", "hf://a--b/c",
                                       "hf://a/b@..", "https://127.0.0.1/x", "https://10.1.2.3/", "https://192.168.0.1/",
                                       "https://172.16.0.1/", "https://169.254.169.254/", "https://100.64.0.1/",
                                       "https://localhost/", "https://[::1]/", "https://0x7f000001/", "https://2130706433/",
                                       "https://evil.com/", "https://huggingface.co.evil.com/", "https://u@huggingface.co/",
                                       "http://huggingface.co/", "file:///etc", "file:///tmp/../etc", "/etc", NULL };
    for (int i = 0; ok[i]; i++) {
        slm_err_clear(&err);
        if (api_source_allowed(&cfg, ok[i], "main", ptr, sizeof ptr, &err)) fail_msg("refused %s: %s", ok[i], err.msg);
    }
    for (int i = 0; bad[i]; i++) {
        slm_err_clear(&err);
        if (api_source_allowed(&cfg, bad[i], "main", ptr, sizeof ptr, &err) != -SLM_EINVAL) fail_msg("accepted %s", bad[i]);
        assert_string_equal(ptr, "/model/source");
    }
    slm_err_clear(&err);
    assert_int_equal(api_source_allowed(&cfg, "hf://a/b", "../main", ptr, sizeof ptr, &err), -SLM_EINVAL);
    assert_string_equal(ptr, "/model/revision");
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_router__matches_params_and_rejects_traversal),
        cmocka_unit_test(test_api_problem__codes_map_to_statuses),
        cmocka_unit_test(test_api_auth__hashed_tokens_and_scopes),
        cmocka_unit_test(test_api_jobs__source_policy),
    };
    return cmocka_run_group_tests_name("api/http", tests, NULL, NULL);
}
