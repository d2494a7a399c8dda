/*
** kernels/registry.c: picks a backend by name. "cpu" is always there; "cuda[:N]" only in builds
** with SLM_HAVE_CUDA and a visible device. "auto" prefers CUDA.
*/
#include "kbackend.h"
#include "kbackend_impl.h"
#include "kquant.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool kbackend_cuda_available(void)
{
#ifdef SLM_HAVE_CUDA
    return kbackend_cuda_device_count() > 0;
#else
    return false;
#endif
}

int kbackend_gpu_count(void)
{
#ifdef SLM_HAVE_CUDA
    return kbackend_cuda_device_count();
#else
    return 0;
#endif
}

int kbackend_gpu_info(int i, struct kgpu_info *out, struct slm_err *err)
{
    memset(out, 0, sizeof *out);
    out->memory_used = -1;
    out->utilization = -1;
#ifdef SLM_HAVE_CUDA
    if (i < 0 || i >= kbackend_cuda_device_count()) return slm_err_set(err, SLM_EINVAL, "gpu %d is not visible", i);
    int rc = kbackend_cuda_device_info(i, out, err);
    if (!rc) kgpu_nvml_query(out->pci_bus_id, &out->memory_used, &out->utilization);
    return rc;
#else
    (void)i;
    return slm_err_set(err, SLM_EUNSUPPORTED, "this build has no CUDA backend");
#endif
}

int kbackend_open(struct kbackend **out, const char *spec, struct slm_err *err)
{
    if (!spec || !*spec || strcmp(spec, "auto") == 0)
        spec = kbackend_cuda_available() ? "cuda" : "cpu";
    if (strcmp(spec, "cpu") == 0) return kbackend_cpu_open(out, err);
    if (strcmp(spec, "cpu-discrete") == 0) return kbackend_discrete_open(out, err);
    if (strncmp(spec, "cuda", 4) == 0 && (spec[4] == 0 || spec[4] == ':')) {
#ifdef SLM_HAVE_CUDA
        int dev = -1;
        if (spec[4] == ':') {
            char *end;
            long v = strtol(spec + 5, &end, 10);
            if (*end || v < 0 || v > 255) return slm_err_set(err, SLM_EINVAL, "backend '%s': bad device index", spec);
            dev = (int)v;
        }
        return kbackend_cuda_open(out, dev, err);
#else
        return slm_err_set(err, SLM_EUNSUPPORTED, "backend '%s': this build has no CUDA support", spec);
#endif
    }
    return slm_err_set(err, SLM_EINVAL, "unknown backend '%s' (expected auto, cpu, cuda or cuda:N)", spec);
}

void kbackend_free(struct kbackend *kb)
{
    if (kb) kb->iface->free(kb);
}

int kb_alloc(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err)
{
    return kb->iface->alloc(kb, out, nbytes, err);
}

void kb_release(struct kbackend *kb, void *p)
{
    if (p) kb->iface->release(kb, p);
}

int kb_upload(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err)
{
    return kb->iface->upload(kb, dst, src, nbytes, err);
}

int kb_download(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err)
{
    return kb->iface->download(kb, dst, src, nbytes, err);
}

int kb_sync(struct kbackend *kb, struct slm_err *err) { return kb->iface->sync(kb, err); }

int kb_linear(struct kbackend *kb, float *y, const float *x, const float *w, const float *bias,
              int rows, int n, int k, struct slm_err *err)
{
    struct kgemm_args g = {
        .ta = KB_N, .tb = KB_T, .m = rows, .n = n, .k = k, .alpha = 1.0f, .beta = 0.0f,
        .a = x, .lda = k, .b = w, .ldb = k, .c = y, .ldc = n, .batch = 1,
    };
    int rc = kb->iface->gemm(kb, &g, err);
    if (rc == 0 && bias) rc = kb->iface->add_bias(kb, y, bias, rows, n, n, err);
    return rc;
}

int kb_round_bf16(struct kbackend *kb, float *y, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    if (kb->iface->round_bf16) return kb->iface->round_bf16(kb, y, n, err);
    float *h = malloc(n * sizeof *h);
    if (!h) return slm_err_set(err, SLM_ENOMEM, "round_bf16: %zu floats", n);
    int rc = kb_download(kb, h, y, n * sizeof *h, err);
    if (!rc) {
        kcpu_round_bf16(h, n);
        rc = kb_upload(kb, y, h, n * sizeof *h, err);
    }
    free(h);
    return rc;
}

int kb_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err)
{
    if (!kb->iface->sparsegpt_block)
        return slm_err_set(err, SLM_EUNSUPPORTED, "backend %s has no sparsegpt_block", kb_name(kb));
    int cnt = a->i2 - a->i1;
    if (a->rows < 0 || a->i1 < 0 || cnt <= 0 || a->i2 > a->cols || a->ldw < a->cols || a->ldh < a->cols || a->ldm < cnt)
        return slm_err_set(err, SLM_ESHAPE, "sparsegpt_block: block [%d, %d) of %d x %d (ldw %d, ldh %d, ldm %d)",
                           a->i1, a->i2, a->rows, a->cols, a->ldw, a->ldh, a->ldm);
    if (a->m && (a->n <= 0 || a->n >= a->m || a->m > 256 || cnt % a->m))
        return slm_err_set(err, SLM_EINVAL, "sparsegpt_block: N:M %d:%d on a block of %d columns", a->n, a->m, cnt);
    if (a->bits && (a->bits < 2 || a->bits > 8 || a->group < -1 || !a->step ||
                    (a->group > 0 && a->ngroups < (a->cols + a->group - 1) / a->group)))
        return slm_err_set(err, SLM_EINVAL, "sparsegpt_block: OPTQ %d bits, group %d, %d groups", a->bits, a->group, a->ngroups);
    return kb->iface->sparsegpt_block(kb, a, err);
}

int kb_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                 struct slm_err *err)
{
    if (rows < 0 || cols < 0) return slm_err_set(err, SLM_EINVAL, "col_stats: bad shape %d x %d", rows, cols);
    if (!cols) return 0;
    if (kb->iface->col_stats) return kb->iface->col_stats(kb, scaler, abssum, x, rows, cols, nseq, err);
    size_t nx = (size_t)rows * cols;
    float *hx = malloc(sizeof *hx * (nx + (size_t)cols));
    double *ha = malloc(sizeof *ha * (size_t)cols);
    int rc;
    if (!hx || !ha) {
        rc = slm_err_set(err, SLM_ENOMEM, "col_stats: %d x %d floats", rows, cols);
        goto done;
    }
    float *hs = hx + nx;
    if ((rc = kb_download(kb, hx, x, sizeof *hx * nx, err)) || (rc = kb_download(kb, hs, scaler, sizeof *hs * cols, err)) ||
        (rc = kb_download(kb, ha, abssum, sizeof *ha * cols, err)))
        goto done;
    kcpu_col_stats(hs, ha, hx, rows, cols, nseq);
    if (!(rc = kb_upload(kb, scaler, hs, sizeof *hs * cols, err))) rc = kb_upload(kb, abssum, ha, sizeof *ha * cols, err);
done:
    free(hx);
    free(ha);
    return rc;
}

int kb_apply_mask(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err)
{
    if (!kb->iface->apply_mask) return slm_err_set(err, SLM_EUNSUPPORTED, "backend %s has no apply_mask", kb_name(kb));
    return n ? kb->iface->apply_mask(kb, w, mask, n, err) : 0;
}

int kb_count_zeros(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err)
{
    *count = 0;
    if (!n) return 0;
    if (kb->iface->count_zeros) return kb->iface->count_zeros(kb, count, a, n, err);
    float *h = malloc(sizeof *h * n);
    if (!h) return slm_err_set(err, SLM_ENOMEM, "count_zeros: %zu floats", n);
    int rc = kb_download(kb, h, a, sizeof *h * n, err);
    if (!rc) *count = kq_count_zeros(h, n);
    free(h);
    return rc;
}

int kb_abs_kth(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err)
{
    int rc = kq_check_kth(n, k, err);
    if (rc) return rc;
    if (kb->iface->abs_kth) return kb->iface->abs_kth(kb, kth, a, n, k, err);
    float *h = malloc(sizeof *h * n);
    uint32_t *keys = malloc(sizeof *keys * n);
    if (!h || !keys) rc = slm_err_set(err, SLM_ENOMEM, "abs_kth: %zu floats", n);
    else if (!(rc = kb_download(kb, h, a, sizeof *h * n, err))) *kth = kq_kth_abs(keys, h, n, k);
    free(h);
    free(keys);
    return rc;
}

/* ---- memory accounting and budgets ---- */

int64_t kb_room(struct kbackend *kb)
{
    struct kmem_stats s;
    struct slm_err e = SLM_ERR_INIT;
    int64_t room = -1;
    if (kb_mem_stats(kb, &s, false, &e)) return -1;
    if (s.limit > 0) room = s.limit - s.in_use > 0 ? s.limit - s.in_use : 0;
    if (s.device_free >= 0 && (room < 0 || s.device_free + s.cached < room)) room = s.device_free + s.cached;
    return room;
}

const char *kb_size_str(char *buf, size_t n, uint64_t bytes)
{
    static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) { v /= 1024; u++; }
    if (u == 0) snprintf(buf, n, "%llu B", (unsigned long long)bytes);
    else snprintf(buf, n, v < 10 ? "%.2f %s" : "%.1f %s", v, unit[u]);
    return buf;
}

int kmem_oom(struct slm_err *err, const char *who, const char *what, const char *where, size_t n, uint64_t in_use,
             uint64_t limit, int64_t dev_free, int64_t dev_total)
{
    char a[24], b[24], c[24];
    kb_size_str(a, sizeof a, in_use);
    const char *on = where ? " on " : "", *wh = where ? where : "";
    if (limit)
        return slm_err_set(err, SLM_ENOMEM, "%s: out of %s memory allocating %zu bytes%s%s (%s in use by slimd, limit %s)",
                           who, what, n, on, wh, a, kb_size_str(b, sizeof b, limit));
    if (dev_total >= 0)
        return slm_err_set(err, SLM_ENOMEM, "%s: out of %s memory allocating %zu bytes%s%s (%s in use by slimd, %s of %s free)",
                           who, what, n, on, wh, a, kb_size_str(b, sizeof b, (uint64_t)(dev_free > 0 ? dev_free : 0)),
                           kb_size_str(c, sizeof c, (uint64_t)dev_total));
    return slm_err_set(err, SLM_ENOMEM, "%s: out of %s memory allocating %zu bytes%s%s (%s in use by slimd)", who, what, n,
                       on, wh, a);
}

int kb_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err)
{
    if (kb->iface->mem_stats) return kb->iface->mem_stats(kb, out, reset_peak, err);
    out->in_use = out->peak = out->cached = out->limit = out->device_total = out->device_free = -1;
    return slm_err_set(err, SLM_EUNSUPPORTED, "%s: no memory accounting", kb_name(kb));
}

int kbackend_set_limit(struct kbackend *kb, size_t bytes, struct slm_err *err)
{
    if (!kb->iface->set_limit) return slm_err_set(err, SLM_EUNSUPPORTED, "%s: no memory budget", kb_name(kb));
    return kb->iface->set_limit(kb, bytes, err);
}

int kbackend_limit_from_env(struct kbackend *kb, struct slm_err *err)
{
    const char *v = getenv("SLIM_MEM_LIMIT_MB");
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    double mb = strtod(v, &end);
    if (errno || *end || !(mb >= 0) || !isfinite(mb) || mb * 1048576.0 > 1e18)
        return slm_err_set(err, SLM_EINVAL, "SLIM_MEM_LIMIT_MB='%s' is not a size in MiB", v);
    return kbackend_set_limit(kb, (size_t)(mb * 1048576.0), err);
}

int kb_host_alloc(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err)
{
    if (kb->iface->host_alloc) return kb->iface->host_alloc(kb, out, nbytes, err);
    if (!(*out = malloc(nbytes ? nbytes : 1))) return slm_err_set(err, SLM_ENOMEM, "out of host memory allocating %zu bytes", nbytes);
    return 0;
}

void kb_host_free(struct kbackend *kb, void *p)
{
    if (!p) return;
    if (kb->iface->host_free) kb->iface->host_free(kb, p);
    else free(p);
}
