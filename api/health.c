/*
** api/health.c: capabilities, liveness/readiness, Prometheus metrics and the plain status page.
*/
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jobspec.h"
#include "kernels/kbackend.h"

int health_capabilities(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    json_t *caps = jobspec_capabilities();
    if (!caps) return slm_err_set(err, SLM_ENOMEM, "capabilities: out of memory");
    json_t *devs = json_array();
    json_array_append_new(devs, json_pack("{s:s,s:s}", "name", "cpu", "info", kbackend_cpu_info()));
    for (int i = 0, n = kbackend_gpu_count(); i < n; i++) {
        struct kgpu_info g;
        struct slm_err e = SLM_ERR_INIT;
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", i);
        if (kbackend_gpu_info(i, &g, &e)) {
            json_array_append_new(devs, json_pack("{s:s,s:s}", "name", name, "error", e.msg));
            continue;
        }
        /* -1: NVML (the driver's library) could not say */
        json_array_append_new(devs, json_pack("{s:s,s:s,s:s,s:I,s:I,s:i}", "name", name, "gpu", g.name, "pci_bus_id",
                                              g.pci_bus_id, "memory_total", (json_int_t)g.memory_total, "memory_used",
                                              (json_int_t)g.memory_used, "utilization", g.utilization));
    }
    json_object_set_new(caps, "devices", devs);
    json_t *wd = json_array();
    for (int i = 0; wd && rq->ctx->worker_devices && i < rq->ctx->workers; i++)
        json_array_append_new(wd, json_string(rq->ctx->worker_devices[i]));
    json_object_set_new(caps, "worker_devices", wd ? wd : json_null());
    json_object_set_new(caps, "limits", json_pack("{s:I,s:i,s:I}", "max_body_bytes", (json_int_t)rq->ctx->cfg->max_body_bytes,
                                                  "max_attempts", rq->ctx->cfg->max_attempts, "max_download_bytes",
                                                  (json_int_t)rq->ctx->cfg->max_download_bytes));
    json_object_set_new(caps, "workers", json_integer(rq->ctx->workers));
    rs->json = caps;
    return 0;
}

int health_healthz(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    (void)rq, (void)err;
    rs->json = json_pack("{s:s}", "status", "ok");
    return 0;
}

int health_readyz(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    if (atomic_load(&rq->ctx->draining)) return slm_err_set(err, SLM_EBUSY, "draining for shutdown");
    if (!atomic_load(&rq->ctx->ready)) return slm_err_set(err, SLM_EBUSY, "starting");
    int64_t counts[JOB_NSTATES];
    int rc = jobstore_counts(counts, rq->ctx->js, err);
    if (rc) return rc;
    rs->json = json_pack("{s:s,s:I}", "status", "ready", "queued", (json_int_t)counts[JOB_QUEUED]);
    return 0;
}

/* Append printf output to a growing buffer; on OOM the buffer is dropped. */
static void put(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void put(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    if (!*buf) return;
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (*len + (size_t)n < *cap) { *len += (size_t)n; return; }
        char *nb = realloc(*buf, *cap * 2 + (size_t)n);
        if (!nb) { free(*buf); *buf = NULL; return; }
        *buf = nb;
        *cap = *cap * 2 + (size_t)n;
    }
}

int health_metrics(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    int64_t counts[JOB_NSTATES];
    int rc = jobstore_counts(counts, rq->ctx->js, err);
    if (rc) return rc;
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    put(&b, &len, &cap, "# HELP slimd_jobs Jobs in the store by state.\n# TYPE slimd_jobs gauge\n");
    for (int i = 0; i < JOB_NSTATES; i++)
        put(&b, &len, &cap, "slimd_jobs{state=\"%s\"} %lld\n", job_state_str((enum job_state)i), (long long)counts[i]);
    put(&b, &len, &cap, "# HELP slimd_job_duration_seconds Wall time of finished jobs (claim to end).\n"
                        "# TYPE slimd_job_duration_seconds summary\n"
                        "slimd_job_duration_seconds_sum %.3f\nslimd_job_duration_seconds_count %ld\n",
        atomic_load(&rq->ctx->job_seconds_ms) / 1000.0, atomic_load(&rq->ctx->jobs_finished));
    put(&b, &len, &cap, "# HELP slimd_download_bytes_total Bytes downloaded for models and datasets.\n"
                        "# TYPE slimd_download_bytes_total counter\nslimd_download_bytes_total %ld\n",
        atomic_load(&rq->ctx->bytes_downloaded));
    put(&b, &len, &cap, "# HELP slimd_http_requests_total HTTP requests answered, by status code.\n"
                        "# TYPE slimd_http_requests_total counter\n");
    for (int code = 100; code < 600; code++) {
        long n = atomic_load(&rq->ctx->http_by_code[code]);
        if (n) put(&b, &len, &cap, "slimd_http_requests_total{code=\"%d\"} %ld\n", code, n);
    }
    put(&b, &len, &cap, "# HELP slimd_workers Worker slots.\n# TYPE slimd_workers gauge\nslimd_workers %d\n", rq->ctx->workers);
    put(&b, &len, &cap, "# HELP slimd_worker_info Backend of each worker slot.\n# TYPE slimd_worker_info gauge\n");
    for (int i = 0; rq->ctx->worker_devices && i < rq->ctx->workers; i++)
        put(&b, &len, &cap, "slimd_worker_info{slot=\"%d\",device=\"%s\"} 1\n", i, rq->ctx->worker_devices[i]);
    int ngpu = kbackend_gpu_count();
    if (ngpu > 0)
        put(&b, &len, &cap, "# HELP slimd_gpu_memory_total_bytes GPU memory.\n# TYPE slimd_gpu_memory_total_bytes gauge\n"
                            "# HELP slimd_gpu_memory_used_bytes GPU memory in use (NVML).\n# TYPE slimd_gpu_memory_used_bytes gauge\n"
                            "# HELP slimd_gpu_utilization_ratio GPU busy fraction over NVML's last sample period.\n"
                            "# TYPE slimd_gpu_utilization_ratio gauge\n");
    for (int i = 0; i < ngpu; i++) {
        struct kgpu_info g;
        struct slm_err e = SLM_ERR_INIT;
        if (kbackend_gpu_info(i, &g, &e)) continue;
        for (char *c = g.name; *c; c++)
            if (*c == '"' || *c == '\\' || *c == '\n') *c = ' ';   /* label value stays valid */
        put(&b, &len, &cap, "slimd_gpu_memory_total_bytes{device=\"cuda:%d\",gpu=\"%s\"} %lld\n", i, g.name, (long long)g.memory_total);
        if (g.memory_used >= 0)
            put(&b, &len, &cap, "slimd_gpu_memory_used_bytes{device=\"cuda:%d\",gpu=\"%s\"} %lld\n", i, g.name, (long long)g.memory_used);
        if (g.utilization >= 0)
            put(&b, &len, &cap, "slimd_gpu_utilization_ratio{device=\"cuda:%d\",gpu=\"%s\"} %.2f\n", i, g.name, g.utilization / 100.0);
    }
    if (!b) return slm_err_set(err, SLM_ENOMEM, "metrics: out of memory");
    rs->text = b;
    rs->content_type = "text/plain; version=0.0.4";
    return 0;
}

/* The plain status page until the dashboard lands: the newest jobs, escaped. */
int health_index(struct api_req *rq, struct api_resp *rs, struct slm_err *err)
{
    json_t *jobs;
    int64_t next;
    int rc = jobstore_list(&jobs, &next, rq->ctx->js, -1, 0, 100, err);
    if (rc) return rc;
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    put(&b, &len, &cap, "<!doctype html><meta charset=utf-8><title>slimd</title><h1>slimd</h1>"
                        "<table><tr><th>id<th>state<th>stage<th>progress<th>source</tr>");
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j) {
        const char *stage = json_string_value(json_object_get(j, "stage"));
        json_t *src = json_object_get(json_object_get(json_object_get(j, "spec"), "model"), "source");
        char esc[300] = "";
        const char *s = json_string_value(src);
        size_t k = 0;
        for (; s && *s && k < sizeof esc - 8; s++) {
            const char *rep = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : *s == '"' ? "&quot;" : NULL;
            if (rep) { memcpy(esc + k, rep, strlen(rep)); k += strlen(rep); }
            else esc[k++] = *s;
        }
        esc[k] = 0;
        put(&b, &len, &cap, "<tr><td><a href=\"/v1/jobs/%s\">%s</a><td>%s<td>%s<td>%.0f%%<td>%s</tr>",
            json_string_value(json_object_get(j, "id")), json_string_value(json_object_get(j, "id")),
            json_string_value(json_object_get(j, "state")), stage ? stage : "",
            100 * json_real_value(json_object_get(j, "progress")), esc);
    }
    put(&b, &len, &cap, "</table>\n");
    json_decref(jobs);
    if (!b) return slm_err_set(err, SLM_ENOMEM, "index: out of memory");
    rs->text = b;
    rs->content_type = "text/html; charset=utf-8";
    return 0;
}
