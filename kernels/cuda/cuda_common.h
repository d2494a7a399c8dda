/*
** kernels/cuda/cuda_common.h: what the CUDA backend's files share (not for core/).
** One context per backend: the device, one stream, the cuBLAS and cuSOLVER handles bound to it,
** a caching allocator, and a one-int device word for cuSOLVER's info. Error macros turn every
** cudaError_t / cublasStatus_t / cusolverStatus_t into an slm_err with the call site; nothing
** here exits or prints.
*/
#ifndef SLM_CUDA_COMMON_H
#define SLM_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <stddef.h>

extern "C" {
#include "../kbackend.h"
#include "../kbackend_impl.h"
}

/* A freed block waiting for reuse, or a live one waiting for release. */
struct cu_block {
    void *p;
    size_t size;         /* bucketed size actually allocated */
    size_t req;          /* bytes asked for: what bytes_live, the peak and the limit count */
};

struct cu_pool {
    struct cu_block *live; size_t nlive, caplive;
    struct cu_block *free_; size_t nfree, capfree;
    /* bytes_live counts what callers asked for, as the CPU backend does, so budgets and the memory
    ** planning in core/ (which sums tensor sizes) mean the same on both; the bucket rounding is the
    ** pool's own overhead, bounded by the device's free memory that kb_room also consults */
    size_t bytes_live, bytes_cached;
    size_t bytes_peak;   /* most bytes_live since open or the last mem_stats reset */
    size_t limit;        /* budget on bytes_live (set_limit), 0 = none */
};

struct cu_ctx {
    int device;
    char name[96];
    cudaStream_t stream;
    cudaStream_t copy_stream;   /* upload_async: block uploads overlapped with the ops */
    cudaEvent_t queued;         /* copy_after_queued: the point of the op stream copies wait for */
    cublasHandle_t blas;
    cusolverDnHandle_t solver;
    struct cu_pool pool;
    int *d_info;         /* cuSOLVER info word */
    int max_smem_optin;  /* bytes of dynamic shared memory a block may opt into */
    bool pedantic;       /* SLIM_CUDA_PEDANTIC=1: no tensor-core shortcut, not even for bf16 inputs */
};

static inline struct cu_ctx *cu_ctx(struct kbackend *kb) { return (struct cu_ctx *)kb->ctx; }

const char *cu_cublas_str(cublasStatus_t s);
const char *cu_cusolver_str(cusolverStatus_t s);

/* Device memory through the pool (stream-ordered reuse: every op runs on the one stream). */
int cu_pool_alloc(struct cu_ctx *c, void **out, size_t n, struct slm_err *err);
void cu_pool_release(struct cu_ctx *c, void *p);
void cu_pool_drain(struct cu_ctx *c);

/* ---- error macros: CU_TRY* return, CU_GO* set rc and jump to done ---- */
#define CU_MSG_(rc_, what_, s_) slm_err_set(err, rc_, "cuda: %s: %s at %s:%d", what_, s_, __FILE__, __LINE__)

#define CU_TRY(call) do { cudaError_t e_ = (call); \
    if (e_ != cudaSuccess) return CU_MSG_(SLM_ECUDA, #call, cudaGetErrorString(e_)); } while (0)
#define CUBLAS_TRY(call) do { cublasStatus_t e_ = (call); \
    if (e_ != CUBLAS_STATUS_SUCCESS) return CU_MSG_(SLM_ECUDA, #call, cu_cublas_str(e_)); } while (0)
#define CUSOLVER_TRY(call) do { cusolverStatus_t e_ = (call); \
    if (e_ != CUSOLVER_STATUS_SUCCESS) return CU_MSG_(SLM_ECUDA, #call, cu_cusolver_str(e_)); } while (0)
/* after a kernel launch */
#define CU_LAUNCH_TRY(what) CU_TRY_NAMED_(cudaGetLastError(), what)
#define CU_TRY_NAMED_(call, what) do { cudaError_t e_ = (call); \
    if (e_ != cudaSuccess) return CU_MSG_(SLM_ECUDA, what, cudaGetErrorString(e_)); } while (0)

#define CU_GO(call) do { cudaError_t e_ = (call); \
    if (e_ != cudaSuccess) { rc = CU_MSG_(SLM_ECUDA, #call, cudaGetErrorString(e_)); goto done; } } while (0)
#define CUBLAS_GO(call) do { cublasStatus_t e_ = (call); \
    if (e_ != CUBLAS_STATUS_SUCCESS) { rc = CU_MSG_(SLM_ECUDA, #call, cu_cublas_str(e_)); goto done; } } while (0)
#define CUSOLVER_GO(call) do { cusolverStatus_t e_ = (call); \
    if (e_ != CUSOLVER_STATUS_SUCCESS) { rc = CU_MSG_(SLM_ECUDA, #call, cu_cusolver_str(e_)); goto done; } } while (0)
#define RC_GO(expr) do { if ((rc = (expr)) != 0) goto done; } while (0)

/* Grid for a grid-stride loop over n items with 256-thread blocks. */
static inline unsigned cu_blocks(size_t n)
{
    size_t b = (n + 255) / 256;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535u * 16 ? 65535u * 16 : b);
}

/* ops, attention, linear algebra: the vtable entries defined in the other files */
int cu_layernorm(struct kbackend *kb, float *y, const float *x, const float *w, const float *b,
                 int rows, int cols, float eps, struct slm_err *err);
int cu_rmsnorm(struct kbackend *kb, float *y, const float *x, const float *w, int rows, int cols,
               float divisor, float eps, struct slm_err *err);
int cu_add_bias(struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld, struct slm_err *err);
int cu_add(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err);
int cu_mul(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err);
int cu_act(struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err);
int cu_scale(struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err);
int cu_round_bf16(struct kbackend *kb, float *y, size_t n, struct slm_err *err);
int cu_rope(struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
            const float *inv_freq, struct slm_err *err);
int cu_cross_entropy(struct kbackend *kb, float *nll, const float *logits, const int32_t *targets,
                     int rows, int vocab, struct slm_err *err);
int cu_attention(struct kbackend *kb, const struct kattn_args *a, struct slm_err *err);
int cu_gemm(struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err);
int cu_eigh_f64(struct kbackend *kb, double *a, double *w, int n, struct slm_err *err);
int cu_cholesky_upper(struct kbackend *kb, float *a, int n, struct slm_err *err);
int cu_spd_inverse(struct kbackend *kb, float *a, int n, struct slm_err *err);
int cu_svd(struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt, struct slm_err *err);
int cu_gram_f64(struct kbackend *kb, double *c, const float *x, int rows, int n, struct slm_err *err);
/* SparseGPT's within-block OBS loop (sparsegpt_cuda.cu) */
int cu_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err);
/* SLiM pruning and quantization (quant_cuda.cu) */
int cu_prune_nm(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n, int m,
                struct slm_err *err);
int cu_absmax_groups(struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows, int gcols,
                     struct slm_err *err);
int cu_abs_range(struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err);
int cu_abs_histogram(struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                     const float *edge, int nb, struct slm_err *err);
int cu_quant_apply(struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in, const struct kquant_args *q,
                   struct slm_err *err);
int cu_quant_dequant(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                     const struct kquant_args *q, struct slm_err *err);
/* added for GPU calibration statistics and embedding gather */
int cu_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                 struct slm_err *err);
int cu_gather_rows(struct kbackend *kb, float *out, const float *table, const int32_t *ids, int rows, int cols, int V,
                   struct slm_err *err);

/* added for the GPU compress flow (ops_cuda.cu) */
int cu_apply_mask(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err);
/* added for GPU unstructured pruning and measured sparsity (quant_cuda.cu) */
int cu_prune_rows(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                  struct slm_err *err);
int cu_abs_kth(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err);
int cu_prune_abs_le(struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err);
int cu_count_zeros(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err);
/* added for SLiM-Quant's search on the backend (quant_cuda.cu) */
int cu_slim_search(struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb, size_t n,
                   int bits, struct slm_err *err);

#endif
