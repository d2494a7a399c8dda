/* tests/unit/daemon/config.c: the option table: defaults, precedence file < env < flags, bounds
** with the source named, and deploy/slimd.conf documenting every option. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"

static char conf_path[64];

static int write_conf(void **state)
{
    (void)state;
    snprintf(conf_path, sizeof conf_path, "/tmp/t-config-XXXXXX");
    int fd = mkstemp(conf_path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("# comment\n\nworkers 2\nlisten 127.0.0.1:9000\nqueue-limit 5\n", f);
    fclose(f);
    unsetenv("SLIMD_WORKERS");
    unsetenv("SLIMD_LISTEN");
    unsetenv("SLIMD_CONFIG");
    return 0;
}

static int rm_conf(void **state)
{
    (void)state;
    unlink(conf_path);
    return 0;
}

static void test_daemon_config__defaults_are_loopback(void **state)
{
    (void)state;
    struct slimd_config c;
    struct slm_err err = SLM_ERR_INIT;
    const char *action;
    char *argv[] = { "slimd", NULL };
    assert_int_equal(config_load(&c, 1, argv, &action, &err), 0);
    assert_string_equal(c.listen, "127.0.0.1:7310");
    assert_int_equal(c.max_attempts, 3);
    assert_string_equal(c.db, "/var/lib/slimd/slimd.db");
    assert_null(action);
    config_free(&c);
}

static void test_daemon_config__file_then_env_then_flags(void **state)
{
    (void)state;
    struct slimd_config c;
    struct slm_err err = SLM_ERR_INIT;
    const char *action;
    setenv("SLIMD_WORKERS", "3", 1);
    char *argv[] = { "slimd", "--config", conf_path, "--listen", "127.0.0.1:0", "--data-dir=var", "--check-config", NULL };
    assert_int_equal(config_load(&c, 7, argv, &action, &err), 0);
    assert_int_equal(c.workers, 3);                 /* env beats file */
    assert_string_equal(c.listen, "127.0.0.1:0");   /* flag beats file */
    assert_int_equal(c.queue_limit, 5);             /* file beats default */
    assert_string_equal(c.db, "var/slimd.db");
    assert_string_equal(action, "--check-config");
    config_free(&c);
    unsetenv("SLIMD_WORKERS");
}

static void test_daemon_config__out_of_range_names_source(void **state)
{
    (void)state;
    struct slimd_config c;
    struct slm_err err = SLM_ERR_INIT;
    const char *action;
    char *argv[] = { "slimd", "--max-attempts", "0", NULL };
    assert_int_equal(config_load(&c, 3, argv, &action, &err), -SLM_EINVAL);
    assert_string_equal(err.msg, "command line: max-attempts: must be >= 1");
    slm_err_clear(&err);
    FILE *f = fopen(conf_path, "a");
    fputs("workers lots\n", f);
    fclose(f);
    char *argv2[] = { "slimd", "--config", conf_path, NULL };
    assert_int_equal(config_load(&c, 3, argv2, &action, &err), -SLM_EINVAL);
    char want[128];
    snprintf(want, sizeof want, "%s:6: workers: 'lots' is not an integer", conf_path);
    assert_string_equal(err.msg, want);
    slm_err_clear(&err);
    char *argv3[] = { "slimd", "--no-such-option", "1", NULL };
    assert_int_equal(config_load(&c, 3, argv3, &action, &err), -SLM_EINVAL);
    slm_err_clear(&err);
    char *argv4[] = { "slimd", "--hub-endpoint", "ftp://x", NULL };
    assert_int_equal(config_load(&c, 3, argv4, &action, &err), -SLM_EINVAL);
    assert_string_equal(err.msg, "command line: hub-endpoint: must be an http:// or https:// URL");
}

static void test_daemon_config__hub_token_is_hidden(void **state)
{
    (void)state;
    struct slimd_config c;
    struct slm_err err = SLM_ERR_INIT;
    const char *action;
    char *argv[] = { "slimd", "--hub-token", "hf_secret", NULL };
    assert_int_equal(config_load(&c, 3, argv, &action, &err), 0);
    json_t *j = config_to_json(&c);
    char *txt = json_dumps(j, 0);
    assert_null(strstr(txt, "hf_secret"));
    free(txt);
    json_decref(j);
    config_free(&c);
}

static void test_daemon_config__every_option_documented(void **state)
{
    (void)state;
    const char *data = getenv("SLIM_TEST_DATA");
    assert_non_null(data);
    char path[1024];
    snprintf(path, sizeof path, "%s/../../deploy/slimd.conf", data);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    for (const char *const *o = config_option_names(); *o; o++) {
        char want[128];
        snprintf(want, sizeof want, "\n%s ", *o);   /* an example line "name value" */
        if (!strstr(text, want)) fail_msg("deploy/slimd.conf does not document '%s'", *o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemon_config__defaults_are_loopback),
        cmocka_unit_test(test_daemon_config__file_then_env_then_flags),
        cmocka_unit_test(test_daemon_config__out_of_range_names_source),
        cmocka_unit_test(test_daemon_config__hub_token_is_hidden),
        cmocka_unit_test(test_daemon_config__every_option_documented),
    };
    return cmocka_run_group_tests_name("daemon/config", tests, write_conf, rm_conf);
}
