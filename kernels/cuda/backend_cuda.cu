/*
** kernels/cuda/backend_cuda.cu: the CUDA backend's life cycle and memory.
** One device, one non-blocking stream; cuBLAS and cuSOLVER bound to that stream, so every op
** is ordered after the previous one and kb_download()/kb_sync() are the only host waits. A second
** stream only carries the block prefetch's uploads (upload_async), into buffers nothing queued
** can touch: copy_after_queued orders it after the ops queued when those buffers were taken.
** Memory: a caching allocator with size-bucketed free lists (powers of two up to 1 MiB, then
** multiples of 2 MiB). kb_release() returns a block to its list; since all work is on one
** stream, a reused block is only touched after the work that used it before. Cached blocks are
** returned to CUDA when an allocation fails (then retried once) and when the backend is freed.
** Live bytes (bucketed) are counted with their peak for mem_stats; an optional budget
** (set_limit) fails an allocation that would take them above it, before asking CUDA.
** GEMM math: exact FP32 (CUBLAS_DEFAULT_MATH: FP32 products and sums, no TF32, as PyTorch's
** default) unless, at open, SLIM_CUDA_TF32=1 allows TF32 tensor cores (about 3e-4 relative
** error: above the forward-pass parity tolerance, so opt-in only) or SLIM_CUDA_PEDANTIC=1 asks
** for CUBLAS_PEDANTIC_MATH (measured at the same speed on an H100, 2026-11-23).
** Ownership: the backend owns the context, handles, stream and every pooled block.
*/
#include "cuda_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- status strings ---- */
const char *cu_cublas_str(cublasStatus_t s) { return cublasGetStatusString(s); }

const char *cu_cusolver_str(cusolverStatus_t s)
{
    switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "success";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUSOLVER_STATUS_INVALID_VALUE: return "invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "internal error";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "matrix type not supported";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "cusolver error";
    }
}

/* ---- caching allocator ---- */
static size_t bucket_size(size_t n)
{
    if (n <= 512) return 512;
    if (n <= ((size_t)1 << 20)) {
        size_t b = 512;
        while (b < n) b <<= 1;
        return b;
    }
    const size_t two_mib = (size_t)2 << 20;
    if (n > SIZE_MAX - two_mib) return SIZE_MAX;   /* no such size: the limit or cudaMalloc refuses it */
    return (n + two_mib - 1) / two_mib * two_mib;
}

static int grow(struct cu_block **v, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    struct cu_block *nv = (struct cu_block *)realloc(*v, nc * sizeof **v);
    if (!nv) return -1;
    *v = nv;
    *cap = nc;
    return 0;
}

void cu_pool_drain(struct cu_ctx *c)
{
    struct cu_pool *pl = &c->pool;
    if (pl->nfree) cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < pl->nfree; i++) cudaFree(pl->free_[i].p);
    pl->nfree = 0;
    pl->bytes_cached = 0;
}

int cu_pool_alloc(struct cu_ctx *c, void **out, size_t n, struct slm_err *err)
{
    struct cu_pool *pl = &c->pool;
    size_t sz = bucket_size(n);
    void *p = NULL;
    if (pl->limit && (n > pl->limit || pl->bytes_live > pl->limit - n))
        return kmem_oom(err, "cuda", "device", c->name, n, pl->bytes_live, pl->limit, -1, -1);
    if (grow(&pl->live, &pl->caplive, pl->nlive + 1))
        return slm_err_set(err, SLM_ENOMEM, "cuda: pool bookkeeping for %zu blocks", pl->nlive + 1);
    for (size_t i = pl->nfree; i-- > 0;) /* most recently released first: warm in L2 */
        if (pl->free_[i].size == sz) {
            p = pl->free_[i].p;
            pl->free_[i] = pl->free_[--pl->nfree];
            pl->bytes_cached -= sz;
            break;
        }
    if (!p) {
        cudaError_t e = cudaMalloc(&p, sz);
        if (e == cudaErrorMemoryAllocation && pl->nfree) {
            cudaGetLastError();
            cu_pool_drain(c);
            e = cudaMalloc(&p, sz);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            if (e == cudaErrorMemoryAllocation) {
                size_t fr = 0, tot = 0;
                cudaMemGetInfo(&fr, &tot);
                return kmem_oom(err, "cuda", "device", c->name, n, pl->bytes_live, 0, (int64_t)fr, (int64_t)tot);
            }
            return slm_err_set(err, SLM_ECUDA, "cuda: cudaMalloc(%zu): %s", sz, cudaGetErrorString(e));
        }
    }
    pl->live[pl->nlive].p = p;
    pl->live[pl->nlive].size = sz;
    pl->live[pl->nlive].req = n;
    pl->nlive++;
    pl->bytes_live += n;
    if (pl->bytes_live > pl->bytes_peak) pl->bytes_peak = pl->bytes_live;
    *out = p;
    return 0;
}

void cu_pool_release(struct cu_ctx *c, void *p)
{
    struct cu_pool *pl = &c->pool;
    for (size_t i = pl->nlive; i-- > 0;)
        if (pl->live[i].p == p) {
            struct cu_block b = pl->live[i];
            pl->live[i] = pl->live[--pl->nlive];
            pl->bytes_live -= b.req;
            if (grow(&pl->free_, &pl->capfree, pl->nfree + 1)) { /* cannot cache: give it back */
                cudaStreamSynchronize(c->stream);
                cudaFree(b.p);
                return;
            }
            pl->free_[pl->nfree++] = b;
            pl->bytes_cached += b.size;
            return;
        }
    /* not ours: ignore rather than corrupt the pool (a bug in the caller) */
}

/* ---- vtable: life cycle and memory ---- */
static const char *cu_name(struct kbackend *kb) { return cu_ctx(kb)->name; }

static void cu_free(struct kbackend *kb)
{
    struct cu_ctx *c = cu_ctx(kb);
    if (c) {
        cudaSetDevice(c->device);
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->copy_stream) cudaStreamSynchronize(c->copy_stream);
        for (size_t i = 0; i < c->pool.nlive; i++) cudaFree(c->pool.live[i].p);
        cu_pool_drain(c);
        free(c->pool.live);
        free(c->pool.free_);
        if (c->d_info) cudaFree(c->d_info);
        if (c->solver) cusolverDnDestroy(c->solver);
        if (c->blas) cublasDestroy(c->blas);
        if (c->queued) cudaEventDestroy(c->queued);
        if (c->copy_stream) cudaStreamDestroy(c->copy_stream);
        if (c->stream) cudaStreamDestroy(c->stream);
        free(c);
    }
    free(kb);
}

static int cu_alloc(struct kbackend *kb, void **out, size_t n, struct slm_err *err)
{
    return cu_pool_alloc(cu_ctx(kb), out, n, err);
}

static void cu_release(struct kbackend *kb, void *p)
{
    if (p) cu_pool_release(cu_ctx(kb), p);
}

static int cu_upload(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cu_ctx(kb)->stream));
    return 0;
}

static int cu_download(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    /* a wait point even when empty (kbackend.h: downloads wait for the queued ops) */
    if (n) CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cu_ctx(kb)->stream));
    CU_TRY(cudaStreamSynchronize(cu_ctx(kb)->stream));
    return 0;
}

static int cu_copy(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cu_ctx(kb)->stream));
    return 0;
}

static int cu_sync(struct kbackend *kb, struct slm_err *err)
{
    CU_TRY(cudaStreamSynchronize(cu_ctx(kb)->stream));
    return 0;
}

/* ---- uploads overlapped with the ops: a second stream, and an event to order it ---- */

static int cu_copy_after_queued(struct kbackend *kb, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    CU_TRY(cudaEventRecord(c->queued, c->stream));
    CU_TRY(cudaStreamWaitEvent(c->copy_stream, c->queued, 0));
    return 0;
}

/* From the prefetch thread: the current device is per thread, so it is set first. From pageable
** memory the call returns once src is staged; the copy itself runs beside the op stream. */
static int cu_upload_async(struct kbackend *kb, void *dst, const void *src, size_t n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    if (!n) return 0;
    CU_TRY(cudaSetDevice(c->device));
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->copy_stream));
    return 0;
}

static int cu_copy_sync(struct kbackend *kb, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    CU_TRY(cudaSetDevice(c->device));
    CU_TRY(cudaStreamSynchronize(c->copy_stream));
    return 0;
}

static int cu_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    struct cu_pool *pl = &c->pool;
    size_t fr = 0, tot = 0;
    CU_TRY(cudaMemGetInfo(&fr, &tot));
    out->in_use = (int64_t)pl->bytes_live;
    out->peak = (int64_t)pl->bytes_peak;
    out->cached = (int64_t)pl->bytes_cached;
    out->limit = (int64_t)pl->limit;
    out->device_total = (int64_t)tot;
    out->device_free = (int64_t)fr;
    if (reset_peak) pl->bytes_peak = pl->bytes_live;
    return 0;
}

static int cu_set_limit(struct kbackend *kb, size_t bytes, struct slm_err *err)
{
    (void)err;
    cu_ctx(kb)->pool.limit = bytes;
    return 0;
}

/* Pinned host memory: copies to and from it run at full PCIe speed and can be asynchronous.
** When the driver refuses to lock that much (memlock and container limits can refuse gigabytes
** that plain memory would give), plain malloc, which kb_host_alloc promises as the fallback:
** copies from it are staged by CUDA, slower but the same bytes. */
static int cu_host_alloc(struct kbackend *kb, void **out, size_t n, struct slm_err *err)
{
    (void)kb;
    cudaError_t e = cudaMallocHost(out, n ? n : 1);
    if (e == cudaSuccess) return 0;
    cudaGetLastError();
    if ((*out = malloc(n ? n : 1))) return 0;
    return slm_err_set(err, SLM_ENOMEM, "cuda: cannot allocate %zu bytes of host memory (pinned: %s)", n,
                       cudaGetErrorString(e));
}

static void cu_host_free(struct kbackend *kb, void *p)
{
    if (!p) return;
    /* an async copy may still read it, on either stream */
    cudaStreamSynchronize(cu_ctx(kb)->stream);
    if (cu_ctx(kb)->copy_stream) cudaStreamSynchronize(cu_ctx(kb)->copy_stream);
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) == cudaSuccess && at.type == cudaMemoryTypeHost) {
        cudaFreeHost(p);
    } else {
        cudaGetLastError();
        free(p);   /* cu_host_alloc's malloc fallback */
    }
}

static const struct kbackend_i cuda_iface = {
    /* .name */ cu_name,
    /* .free */ cu_free,
    /* .alloc */ cu_alloc,
    /* .release */ cu_release,
    /* .upload */ cu_upload,
    /* .download */ cu_download,
    /* .copy */ cu_copy,
    /* .sync */ cu_sync,
    /* .gemm */ cu_gemm,
    /* .layernorm */ cu_layernorm,
    /* .rmsnorm */ cu_rmsnorm,
    /* .add_bias */ cu_add_bias,
    /* .add */ cu_add,
    /* .mul */ cu_mul,
    /* .act */ cu_act,
    /* .scale */ cu_scale,
    /* .rope */ cu_rope,
    /* .attention */ cu_attention,
    /* .cross_entropy */ cu_cross_entropy,
    /* .eigh_f64 */ cu_eigh_f64,
    /* .cholesky_upper */ cu_cholesky_upper,
    /* .spd_inverse */ cu_spd_inverse,
    /* .svd */ cu_svd,
    /* .gram_f64 */ cu_gram_f64,
    /* .round_bf16 */ cu_round_bf16,
    /* --- added for GPU SparseGPT (optional) --- */
    /* .sparsegpt_block */ cu_sparsegpt_block,
    /* --- added for GPU SLiM pruning and quantization (optional) --- */
    /* .prune_nm */ cu_prune_nm,
    /* .absmax_groups */ cu_absmax_groups,
    /* .abs_range */ cu_abs_range,
    /* .abs_histogram */ cu_abs_histogram,
    /* .quant_apply */ cu_quant_apply,
    /* .quant_dequant */ cu_quant_dequant,
    /* --- added for GPU calibration statistics and embedding gather (optional) --- */
    /* .col_stats */ cu_col_stats,
    /* .gather_rows */ cu_gather_rows,
    /* --- added for memory accounting and budgets (optional) --- */
    /* .mem_stats */ cu_mem_stats,
    /* .set_limit */ cu_set_limit,
    /* .host_alloc */ cu_host_alloc,
    /* .host_free */ cu_host_free,
    /* --- added for the GPU compress flow (optional) --- */
    /* .apply_mask */ cu_apply_mask,
    /* --- added for GPU unstructured pruning and measured sparsity (optional) --- */
    /* .prune_rows */ cu_prune_rows,
    /* .abs_kth */ cu_abs_kth,
    /* .prune_abs_le */ cu_prune_abs_le,
    /* .count_zeros */ cu_count_zeros,
    /* --- added for block uploads overlapped with compute (optional) --- */
    /* .copy_after_queued */ cu_copy_after_queued,
    /* .upload_async */ cu_upload_async,
    /* .copy_sync */ cu_copy_sync,
    /* --- added for SLiM-Quant's search on the backend (optional) --- */
    /* .slim_search */ cu_slim_search,
};

extern "C" int kbackend_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no device: not an error for callers */
        return 0;
    }
    return n;
}

extern "C" int kbackend_cuda_device_info(int i, struct kgpu_info *out, struct slm_err *err)
{
    cudaDeviceProp prop;
    CU_TRY(cudaGetDeviceProperties(&prop, i));
    snprintf(out->name, sizeof out->name, "%.95s", prop.name);
    out->memory_total = (int64_t)prop.totalGlobalMem;
    CU_TRY(cudaDeviceGetPCIBusId(out->pci_bus_id, (int)sizeof out->pci_bus_id, i));
    return 0;
}

static int open_ctx(struct cu_ctx *c, int device, struct slm_err *err)
{
    cudaDeviceProp prop;
    CU_TRY(cudaSetDevice(device));
    CU_TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(c->name, sizeof c->name, "cuda:%d (%.64s)", device, prop.name);
    c->max_smem_optin = (int)prop.sharedMemPerBlockOptin;
    CU_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CU_TRY(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
    CU_TRY(cudaEventCreateWithFlags(&c->queued, cudaEventDisableTiming));
    CUBLAS_TRY(cublasCreate(&c->blas));
    CUBLAS_TRY(cublasSetStream(c->blas, c->stream));
    const char *tf32 = getenv("SLIM_CUDA_TF32"), *ped = getenv("SLIM_CUDA_PEDANTIC");
    cublasMath_t mode = CUBLAS_DEFAULT_MATH;
    if (tf32 && strcmp(tf32, "1") == 0) mode = CUBLAS_TF32_TENSOR_OP_MATH;
    else if (ped && strcmp(ped, "1") == 0) mode = CUBLAS_PEDANTIC_MATH;
    c->pedantic = mode == CUBLAS_PEDANTIC_MATH;
    CUBLAS_TRY(cublasSetMathMode(c->blas, mode));
    CUSOLVER_TRY(cusolverDnCreate(&c->solver));
    CUSOLVER_TRY(cusolverDnSetStream(c->solver, c->stream));
    CU_TRY(cudaMalloc((void **)&c->d_info, sizeof(int)));
    return 0;
}

extern "C" int kbackend_cuda_open(struct kbackend **out, int device, struct slm_err *err)
{
    int n = kbackend_cuda_device_count();
    if (n <= 0) return slm_err_set(err, SLM_EUNSUPPORTED, "cuda: no CUDA device is visible");
    if (device < 0) device = 0;
    if (device >= n) return slm_err_set(err, SLM_EINVAL, "cuda: device %d requested, %d visible", device, n);
    struct kbackend *kb = (struct kbackend *)calloc(1, sizeof *kb);
    struct cu_ctx *c = (struct cu_ctx *)calloc(1, sizeof *c);
    if (!kb || !c) {
        free(kb);
        free(c);
        return slm_err_set(err, SLM_ENOMEM, "cuda backend: out of host memory");
    }
    c->device = device;
    kb->api_version = KBACKEND_API_VERSION;
    kb->iface = &cuda_iface;
    kb->ctx = c;
    int rc = open_ctx(c, device, err);
    if (rc) {
        cu_free(kb);
        return rc;
    }
    *out = kb;
    return 0;
}
