/*
** daemon/main.c: slimd's start-up order, and nothing else.
** config -> (action flags) -> data dirs -> store (migrate, quick_check, recover) -> auth -> HTTP ->
** supervisor loop until SIGTERM/SIGINT -> drain -> stop HTTP -> close store -> exit 0.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>

#include "api/api.h"
#include "child.h"
#include "config.h"
#include "jobstore.h"
#include "kernels/kbackend.h"
#include "kernels/kbackend_impl.h"
#include "log.h"
#include "supervisor.h"

static volatile sig_atomic_t shutdown_asap;

static void on_term(int sig)
{
    if (shutdown_asap && sig == SIGINT) _exit(1);
    shutdown_asap = 1;
    log_from_signal("slimd: shutdown requested\n");
}

static int mkdir_p(const char *path)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(tmp, 0750) && errno != EEXIST) return -1; *p = '/'; }
    return mkdir(tmp, 0750) && errno != EEXIST ? -1 : 0;
}

static void usage(void)
{
    fputs("usage: slimd [--config FILE] [--data-dir DIR] [--listen HOST:PORT] [--OPTION VALUE ...]\n"
          "             [--check-config | --check-db]\n"
          "Every option of deploy/slimd.conf is also a flag (--name value) and an environment variable\n"
          "(SLIMD_NAME). Precedence: file < environment < flags.\n", stderr);
}

int main(int argc, char **argv)
{
    struct slimd_config cfg;
    struct slm_err err = SLM_ERR_INIT;
    const char *action = NULL;
    struct jobstore *js = NULL;
    struct api_server *srv = NULL;
    struct supervisor *sup = NULL;
    struct api_ctx *ctx = NULL;
    char **devices = NULL;
    int wake[2] = { -1, -1 }, status = 1, nslots = 0;

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--job-child")) return child_main();
    if (config_load(&cfg, argc, argv, &action, &err)) {
        fprintf(stderr, "slimd: %s\n", err.msg);
        return 2;
    }
    log_set_level(cfg.log_level);
    if (action && (!strcmp(action, "--help") || !strcmp(action, "--version"))) {
        if (!strcmp(action, "--help")) usage();
        else puts("slimd 0.1.0");
        config_free(&cfg);
        return 0;
    }
    if (action && !strcmp(action, "--check-config")) {
        json_t *j = config_to_json(&cfg);
        char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("%s\nconfiguration ok\n", s ? s : "{}");
        free(s);
        json_decref(j);
        config_free(&cfg);
        return 0;
    }
    if (!(ctx = calloc(1, sizeof *ctx))) goto done;
    ctx->cfg = &cfg;
    ctx->wake_fd = -1;
    if (asprintf(&ctx->jobs_dir, "%s/jobs", cfg.data_dir) < 0) { ctx->jobs_dir = NULL; goto done; }
    if (mkdir_p(cfg.data_dir) || mkdir_p(ctx->jobs_dir)) {
        slog(LOG_WARNING, "data-dir %s: %s", cfg.data_dir, strerror(errno));
        goto done;
    }
    if (jobstore_open(&js, cfg.db, cfg.max_attempts, &err)) { slog(LOG_WARNING, "%s", err.msg); goto done; }
    if (action && !strcmp(action, "--check-db")) {
        status = jobstore_integrity_check(js, &err) ? 1 : 0;
        printf("%s\n", status ? err.msg : "integrity_check ok");
        goto done;
    }
    jobstore_set_queue_limit(js, cfg.queue_limit);
    jobstore_set_retry_backoff(js, cfg.retry_backoff_ms);
    ctx->js = js;
    int n;
    if (jobstore_recover(&n, js, (int64_t)time(NULL) * 1000, &err)) { slog(LOG_WARNING, "%s", err.msg); goto done; }
    if (n) slog(LOG_NOTICE, "recovered %d job(s) left running by an earlier slimd", n);
    if (cfg.api_tokens_file[0] && auth_load(&ctx->auth, cfg.api_tokens_file, &err)) { slog(LOG_WARNING, "%s", err.msg); goto done; }
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) goto done;

    /* worker slots: configured, else one per CUDA device, else one CPU worker */
    int ngpu = 0;
#ifdef SLM_HAVE_CUDA
    if (kbackend_cuda_available()) ngpu = kbackend_cuda_device_count();
#endif
    nslots = cfg.workers > 0 ? cfg.workers : ngpu > 0 ? ngpu : 1;
    if (!(devices = calloc((size_t)nslots, sizeof *devices))) goto done;
    for (int i = 0; i < nslots; i++) {
        char d[32];
        if (ngpu > 0 && !strcmp(cfg.device, "auto")) snprintf(d, sizeof d, "cuda:%d", i % ngpu);
        else snprintf(d, sizeof d, "%s", strcmp(cfg.device, "auto") ? cfg.device : "cpu");   /* auto, no GPU: CPU workers */
        if (!(devices[i] = strdup(d))) goto done;
    }
    ctx->workers = nslots;
    ctx->worker_devices = (const char *const *)devices;

    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK)) goto done;
    ctx->wake_fd = wake[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN); /* no live reload: restart to apply a new configuration */
    if (supervisor_new(&sup, ctx, nslots, (const char *const *)devices, wake[0], &err)) { slog(LOG_WARNING, "%s", err.msg); goto done; }
    int port;
    if (api_start(&srv, ctx, &port, &err)) { slog(LOG_WARNING, "%s", err.msg); goto done; }
    char host[256];
    config_listen_addr(host, sizeof host, &n, cfg.listen, &err);
    slog(LOG_NOTICE, "listening on http://%s:%d (%d worker%s, cpu %s)", host, port, nslots, nslots == 1 ? "" : "s",
         kbackend_cpu_info());
    atomic_store(&ctx->ready, 1);
    supervisor_run(sup, &shutdown_asap);
    atomic_store(&ctx->draining, 1);
    api_quiesce(srv);
    slog(LOG_NOTICE, "shutdown complete");
    status = 0;
done:
    api_stop(srv);
    supervisor_free(sup);
    if (wake[0] >= 0) { close(wake[0]); close(wake[1]); }
    for (int i = 0; devices && i < nslots; i++) free(devices[i]);
    free(devices);
    if (ctx) { auth_free(ctx->auth); free(ctx->jobs_dir); free(ctx); }
    jobstore_close(js);
    curl_global_cleanup();
    config_free(&cfg);
    return status;
}
