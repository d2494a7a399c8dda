/*
** kernels/kbackend.h: the one interface between core/ and compute (ggml-backend style).
**
** A backend owns a memory space (host for "cpu", device for "cuda:N"). Every op takes pointers
** into that space, allocated with kb_alloc(); core/ moves data in and out with kb_upload() and
** kb_download() and never calls BLAS, LAPACK or CUDA itself. All float tensors are f32,
** row-major, contiguous unless a leading dimension says otherwise. Ops may run asynchronously
** on the backend's stream; kb_download() and kb_sync() wait for them.
**
** Errors: every op returns 0 or a negative slm_rc and fills err. Optional ops are NULL in the
** vtable; kb_*() wrappers then return -SLM_EUNSUPPORTED. Ownership: buffers from kb_alloc()
** belong to the caller until kb_release(); the backend from kbackend_open() to kbackend_free().
*/
#ifndef SLM_KBACKEND_H
#define SLM_KBACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/err.h"

#define KBACKEND_API_VERSION 1

struct kbackend;

enum ktrans { KB_N = 0, KB_T = 1 };

enum kact { KACT_RELU = 0, KACT_GELU_TANH, KACT_GELU_ERF, KACT_SILU };

/* Row-major (strided-batched) GEMM: for i < batch,
**   C_i[m x n] = alpha * op(A_i)[m x k] * op(B_i)[k x n] + beta * C_i
** op(X) = X or X^T; lda/ldb/ldc are row strides of the matrices as stored; stride_* are the
** distances between consecutive batch matrices (0 = shared). */
struct kgemm_args {
    enum ktrans ta, tb;
    int m, n, k;
    float alpha, beta;
    const float *a; int lda; int64_t stride_a;
    const float *b; int ldb; int64_t stride_b;
    float *c; int ldc; int64_t stride_c;
    int batch;           /* >= 1 */
};

/* Causal multi-head attention over a batch of sequences, with grouped KV heads.
** q: [B*T, q_stride] holding H heads of hd at column h*hd; k, v: [B*T, kv_stride] holding Hkv heads.
** out: [B*T, out_stride], head h at column h*hd. Query head h reads KV head h / (H/Hkv).
** scores = scale * q.k, causal (token t sees 0..t of its own sequence), softmax in f32. */
struct kattn_args {
    float *out; int out_stride;
    const float *q; int q_stride;
    const float *k; const float *v; int kv_stride;
    int B, T, H, Hkv, hd;
    float scale;
};

/* Backend memory, in bytes, as kb_mem_stats reports it. */
struct kmem_stats {
    int64_t in_use;        /* held by live kb_alloc buffers (as allocated: CUDA's pool rounds sizes up) */
    int64_t peak;          /* most in_use since open or the last reset */
    int64_t cached;        /* released but kept by the allocator for reuse (CUDA pool); 0 on the CPU */
    int64_t limit;         /* kbackend_set_limit budget, 0 = none */
    int64_t device_total;  /* device memory; -1 on the CPU */
    int64_t device_free;   /* free on the device now, as the driver sees it; -1 on the CPU */
};

struct kbackend_i {
    const char *(*name)(struct kbackend *kb);
    void (*free)(struct kbackend *kb);

    /* memory */
    int (*alloc)(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err);
    void (*release)(struct kbackend *kb, void *p);
    int (*upload)(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
    int (*download)(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
    int (*copy)(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
    int (*sync)(struct kbackend *kb, struct slm_err *err);

    /* dense linear algebra */
    int (*gemm)(struct kbackend *kb, const struct kgemm_args *a, struct slm_err *err);

    /* row ops, x and y [rows x cols] (y may equal x); w, b [cols] may be NULL */
    int (*layernorm)(struct kbackend *kb, float *y, const float *x, const float *w, const float *b,
                     int rows, int cols, float eps, struct slm_err *err);
    /* y = x * rsqrt(sum(x^2)/divisor + eps) * w; divisor is normally cols (SliceGPT passes the
    ** original hidden size for sliced models). */
    int (*rmsnorm)(struct kbackend *kb, float *y, const float *x, const float *w,
                   int rows, int cols, float divisor, float eps, struct slm_err *err);
    /* y[r][c] += bias[c] */
    int (*add_bias)(struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld,
                    struct slm_err *err);

    /* element-wise over n floats */
    int (*add)(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err);   /* y += x */
    int (*mul)(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err);   /* y *= x */
    int (*act)(struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err);
    int (*scale)(struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err);        /* y *= s */

    /* Rotary embedding in place, HF rotate-half layout, on the first rot_dim dims of each of the
    ** nheads heads of width hd in every row of x [rows, ld]. Rows are sequences of T tokens laid
    ** end to end, so row r has position r % T. inv_freq [rot_dim/2] is in backend memory;
    ** angle = (float)pos * inv_freq[i] in f32, then cos/sin, as transformers does. */
    int (*rope)(struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
                const float *inv_freq, struct slm_err *err);

    int (*attention)(struct kbackend *kb, const struct kattn_args *a, struct slm_err *err);

    /* nll[r] = logsumexp(logits[r]) - logits[r][target[r]]; targets int32 in backend memory;
    ** a target < 0 yields nll 0. */
    int (*cross_entropy)(struct kbackend *kb, float *nll, const float *logits, const int32_t *targets,
                         int rows, int vocab, struct slm_err *err);

    /* --- optional (NULL allowed) --- */
    /* Symmetric eigendecomposition of a [n x n] f64 (row-major, overwritten by eigenvectors as
    ** COLUMNS), eigenvalues ascending in w [n]. LAPACK dsyevd / cuSOLVER syevd. */
    int (*eigh_f64)(struct kbackend *kb, double *a, double *w, int n, struct slm_err *err);
    /* In-place Cholesky of a SPD [n x n] f32: upper factor U with A = U^T U written to the upper
    ** triangle (lower triangle zeroed). -SLM_ENUMERIC if not positive definite. */
    int (*cholesky_upper)(struct kbackend *kb, float *a, int n, struct slm_err *err);
    /* In-place inverse of a SPD [n x n] f32 (via Cholesky). -SLM_ENUMERIC if not SPD. */
    int (*spd_inverse)(struct kbackend *kb, float *a, int n, struct slm_err *err);
    /* Thin SVD of a [m x n] f32: u [m x r], s [r], vt [r x n], r = min(m,n). */
    int (*svd)(struct kbackend *kb, const float *a, int m, int n, float *u, float *s, float *vt,
               struct slm_err *err);
    /* --- added for SliceGPT (optional) --- */
    /* Gram matrix in f64 (PCA): the UPPER triangle (j >= i) of c [n x n] f64 += x^T x, x [rows x n]
    ** f32; products and sums in f64. Lower triangle left as it is. BLAS dsyrk on the CPU. */
    int (*gram_f64)(struct kbackend *kb, double *c, const float *x, int rows, int n, struct slm_err *err);
    /* --- added for bf16 emulation (optional) --- */
    /* y[i] <- nearest bfloat16 value of y[i] (round to nearest even, NaN stays NaN), as f32. */
    int (*round_bf16)(struct kbackend *kb, float *y, size_t n, struct slm_err *err);
    /* --- added for memory accounting and budgets (optional) --- */
    /* Figures of this backend's allocations (struct kmem_stats); reset_peak: peak <- in_use after
    ** reading. */
    int (*mem_stats)(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err);
    /* Budget for kb_alloc: an allocation that would take in_use above bytes fails with
    ** -SLM_ENOMEM ("out of ... memory allocating N bytes ... (X in use, limit Y)"); 0 = none. */
    int (*set_limit)(struct kbackend *kb, size_t bytes, struct slm_err *err);
    /* Host memory the backend copies to and from fastest (CUDA: pinned, cudaMallocHost); NOT
    ** backend memory and not counted in mem_stats. Free with host_free. */
    int (*host_alloc)(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err);
    void (*host_free)(struct kbackend *kb, void *p);
};

struct kbackend {
    int api_version;
    const struct kbackend_i *iface;
    void *ctx;
};

/* Open a backend: "cpu", "cuda" (device 0), "cuda:N", or "auto" (cuda:0 if a GPU is usable,
** else cpu). *out is the caller's until kbackend_free(). -SLM_EUNSUPPORTED when the build has
** no CUDA or no device is visible. */
int kbackend_open(struct kbackend **out, const char *spec, struct slm_err *err);
void kbackend_free(struct kbackend *kb);

/* True when this build includes the CUDA backend and at least one device is visible. */
bool kbackend_cuda_available(void);

/* A visible GPU, numbered as the CUDA runtime numbers it (CUDA_VISIBLE_DEVICES applies). Memory in
** bytes. memory_used and utilization (percent, last sample period) come from NVML when the
** driver's libnvidia-ml loads; else -1. Queried without creating a CUDA context. */
struct kgpu_info {
    char name[96];
    char pci_bus_id[32];
    int64_t memory_total, memory_used;
    int utilization;
};
/* Visible GPUs: 0 without CUDA in the build or without a device. */
int kbackend_gpu_count(void);
/* Info of GPU i (0 <= i < kbackend_gpu_count()); -SLM_EUNSUPPORTED in a build without CUDA. */
int kbackend_gpu_info(int i, struct kgpu_info *out, struct slm_err *err);

/* One-line description of the BLAS/CPU build ("OpenBLAS 0.3.21 DYNAMIC_ARCH core=Haswell ..."). */
const char *kbackend_cpu_info(void);

/* Convenience wrappers (NULL-safe for optional ops). */
static inline const char *kb_name(struct kbackend *kb) { return kb->iface->name(kb); }
int kb_alloc(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err);
void kb_release(struct kbackend *kb, void *p);
int kb_upload(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
int kb_download(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
int kb_sync(struct kbackend *kb, struct slm_err *err);
/* y[rows x n] = x[rows x k] W^T (+ bias), W [n x k] row-major (nn.Linear layout). */
int kb_linear(struct kbackend *kb, float *y, const float *x, const float *w, const float *bias,
              int rows, int n, int k, struct slm_err *err);
/* round_bf16 on y [n] (backend memory); a backend without the op gets a host round trip. */
int kb_round_bf16(struct kbackend *kb, float *y, size_t n, struct slm_err *err);

/* Memory figures (struct kmem_stats). -SLM_EUNSUPPORTED, *out all -1, without the op. */
int kb_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err);
/* Budget in bytes for kb_alloc (0: none); -SLM_EUNSUPPORTED without the op. */
int kbackend_set_limit(struct kbackend *kb, size_t bytes, struct slm_err *err);
/* The budget from the environment: SLIM_MEM_LIMIT_MB (MiB, fractions allowed) when set, for
** jobs and tools that open a backend. -SLM_EINVAL naming the variable when it is not a number. */
int kbackend_limit_from_env(struct kbackend *kb, struct slm_err *err);
/* "512 B", "12.5 KiB", "3.2 MiB", "1.50 GiB": sizes in out-of-memory messages, readable for a
** test model as for a 70B one. buf holds at least 16 chars; returns buf. */
const char *kb_size_str(char *buf, size_t n, uint64_t bytes);
/* Host staging memory (pinned where the backend offers it, else malloc); *out is the caller's
** until kb_host_free on the same backend. */
int kb_host_alloc(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err);
void kb_host_free(struct kbackend *kb, void *p);

#endif
