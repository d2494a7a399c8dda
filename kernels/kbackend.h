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
    /* Every value of a and b is bf16-representable (bf16 emulation rounds weights and activations):
    ** a backend may then use TF32 tensor cores, which hold such values exactly (8-bit significands
    ** in TF32's 11; products exact in f32) and accumulate in f32: the summation order differs from
    ** the plain f32 GEMM, and tensor cores may truncate rather than round inside each MMA (a small,
    ** slightly biased error, far below what SparseGPT's 1% damping adds to a Hessian).
    ** Ignored by the CPU. */
    bool bf16_inputs;
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

/* --- added for GPU SparseGPT (optional): sparsegpt_block's arguments --- */
/* One column block [i1, i2) of SparseGPT's OBS loop (`fasterprune`, ALGORITHMS.md §2.3) with
** OPTQ quantization of the kept weights (§3.5) when bits > 0. cnt = i2 - i1. Rows are
** independent; within a row the columns c = i1 .. i2-1 go in order:
**   N:M (m > 0): when (c - i1) % m == 0, mark the m - n smallest of t[k] = W[c+k]^2 / Hinv[c+k][c+k]^2,
**       k < m, as W stands now (ties: the lower column is dropped first);
**   grouped OPTQ (group > 0): when c % group == 0, refit step[r * ngroups + c / group] from
**       W[r][c .. min(c + group, cols)) as it stands (block columns already updated, later ones not);
**   q = mask ? 0 : W[c], then q = kb_optq_apply(q, step) if bits and q != 0;
**   e = (W[c] - q) / Hinv[c][c]; W[c] = q; W[j] -= e * Hinv[c][j] for c < j < i2; err[c - i1] = e.
** Unstructured (m == 0): mask = (t <= thr) for the whole block, t from W at the start of the block
** (thr = -INFINITY prunes nothing). With metric != NULL the op only writes t [rows x cnt]
** (contiguous) there and touches nothing else: the caller picks thr from it.
** All pointers are backend memory. Floats are rounded op by op (no contraction), so backends agree
** bit for bit where no ties occur. */
struct ksgpt_args {
    float *w; int ldw;              /* weight [rows x cols], row stride ldw; block columns -> Q */
    int rows, cols, i1, i2;
    const float *hinv; int ldh;     /* upper Cholesky factor of H^-1 [cols x cols], row stride ldh */
    uint8_t *mask; int ldm;         /* OUT: the block's mask [rows x cnt], 1 = pruned, row stride ldm */
    float *err;                     /* OUT: [rows x cnt] contiguous, for W[:, i2:] -= err Hinv[i1:i2, i2:] */
    float *metric;                  /* NULL, or OUT [rows x cnt]: only compute t */
    int n, m;                       /* N:M: keep n of every m columns (cnt % m == 0); 0:0 unstructured */
    float thr;                      /* unstructured threshold on t */
    int bits;                       /* OPTQ bits (2..8), 0 = no quantization */
    int group;                      /* 0: step[0]; -1: step[r]; > 0: step[r * ngroups + c / group], refit (IN/OUT) */
    int ngroups;
    float *step;
};

/* OPTQ's symmetric quantizer (§3.5), the one definition the host code and the backends share:
** step from the range of a slice, and the rounding of x onto that grid. */
static inline float kb_optq_step(float xmin, float xmax, int bits)
{
    xmax = xmax > -xmin ? xmax : -xmin;
    if (xmax == 0) xmax = 1;
    return 2 * xmax / (float)((1 << bits) - 1);
}
static inline float kb_optq_apply(float x, float step, int bits)
{
    float maxq = (float)((1 << bits) - 1), zero = (float)(1 << (bits - 1));
    float q = __builtin_nearbyintf(x / step) + zero;
    q = q < 0 ? 0 : q > maxq ? maxq : q;
    return step * (q - zero);
}
/* How a stored scale s turns a code q back into a weight (core/quant.h: enum quant_kind). */
enum kquant_kind {
    KQ_SF = 0,      /* per tensor or per row: w = q / s */
    KQ_ALPHA,       /* groups: w = q / max_q * s */
    KQ_STEP         /* OPTQ: w = s * q */
};

/* A quantizer's scale grid for a [d_out x d_in] weight: scale [rows x cols], one value per
** group_rows x group_cols block; col_scale [d_in] (may be NULL) is the AWQ-like column scaling.
** Both in the memory of whoever reads them (backend memory for the ops). */
struct kquant_args {
    int kind;                     /* enum kquant_kind */
    int bits;                     /* 2..8: codes in [-2^(bits-1), 2^(bits-1) - 1] */
    bool bf16;                    /* the bf16 rounding variant */
    int rows, cols, group_rows, group_cols;
    const float *scale;
    const float *col_scale;
};

/* Backend memory, in bytes, as kb_mem_stats reports it. */
struct kmem_stats {
    int64_t in_use;        /* bytes of the live kb_alloc buffers, as asked for on every backend (CUDA's pool
                           ** rounds sizes up besides: that overhead shows in device_free, not here) */
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
    /* --- added for GPU SparseGPT (optional) --- */
    /* The within-block OBS loop of SparseGPT / OPTQ, see struct ksgpt_args. */
    int (*sparsegpt_block)(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err);
    /* --- added for GPU SLiM pruning and quantization (optional) --- */
    /* The per-linear ops of core/prune.c and core/quant.c on backend memory, bit-identical to the
    ** host path (the scalar arithmetic is kernels/kquant.h). All arrays are backend memory.
    ** N:M pruning of w [d_out x d_in] in place: metric |w| (s NULL: magnitude) or |w| * sqrt(s[c])
    ** (s [d_in]: Wanda's shifted scaler row); in each group of m consecutive columns of a row the
    ** m - n smallest metrics are pruned (equal metrics: the lower column first), mask [d_out x d_in]
    ** bytes gets 1 there and 0 elsewhere, and w gets 0 there. 0 < n < m <= 256, d_in % m == 0. */
    int (*prune_nm)(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in,
                    int n, int m, struct slm_err *err);
    /* amax [(d_out / grows) x (d_in / gcols)] = max |w| over each grows x gcols block of w
    ** [d_out x d_in] (NaN ignored, 0 for an all-NaN block); per tensor is grows = d_out, gcols = d_in. */
    int (*absmax_groups)(struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows,
                         int gcols, struct slm_err *err);
    /* lo_hi [2] = { min |a|, max |a| } over a [n], NaN ignored ({ +inf, 0 } when n = 0). */
    int (*abs_range)(struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err);
    /* counts [nb] += histogram of |a| [n] over the nb bins with edges edge [nb + 1] spanning [lo, hi]
    ** (kq_hist_bin: SLiM-Quant's bin rule in f32). */
    int (*abs_histogram)(struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                         const float *edge, int nb, struct slm_err *err);
    /* Fake-quantize w [d_out x d_in] in place with the scale grid q (kq_quant1); codes [d_out x d_in]
    ** (may be NULL) get the integers. */
    int (*quant_apply)(struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in,
                       const struct kquant_args *q, struct slm_err *err);
    /* w [d_out x d_in] = the weights of codes under q, as quant_apply left them (kq_dequant1). */
    int (*quant_dequant)(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                         const struct kquant_args *q, struct slm_err *err);
    /* --- added for GPU calibration statistics and embedding gather (optional) --- */
    /* Wanda / L2QER column statistics of one calibration input x [rows x cols]: for each column j,
    ** sq = sum of x[t][j]^2 over t = 0..rows-1 in that order in f32 (each product and sum rounded,
    ** no FMA), then scaler[j] <- scaler[j] * n / (n + 1) + sq / (n + 1) in f32 with n = (float)nseq;
    ** abssum[j] += |x[t][j]| in f64, rows in order. scaler f32 [cols], abssum f64 [cols]; all three
    ** in backend memory. Every backend gives the same bits (kb_col_stats falls back to the host). */
    int (*col_stats)(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols,
                     int nseq, struct slm_err *err);
    /* out [rows x cols] <- rows ids[r] of table [V x cols]; ids int32 [rows]; all in backend memory.
    ** Callers validate the ids; an id outside [0, V) yields a row of NaN. NULL on the CPU, whose
    ** memory is the host's: core/ gathers from its host table there. */
    int (*gather_rows)(struct kbackend *kb, float *out, const float *table, const int32_t *ids, int rows, int cols,
                       int V, struct slm_err *err);
    /* --- added for memory accounting and budgets (optional) --- */
    /* Figures of this backend's allocations (struct kmem_stats); reset_peak: peak <- in_use after
    ** reading. */
    int (*mem_stats)(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err);
    /* Budget for kb_alloc: an allocation that would take in_use above bytes fails with
    ** -SLM_ENOMEM ("out of ... memory allocating N bytes ... (X in use, limit Y)"); 0 = none. */
    int (*set_limit)(struct kbackend *kb, size_t bytes, struct slm_err *err);
    /* Host memory the backend copies to and from fastest (CUDA: pinned, cudaMallocHost, or plain
    ** malloc when pinning is refused); NOT backend memory and not counted in mem_stats. Free with
    ** host_free. An upload from pinned memory reads it after the call returns: the source must
    ** stay unchanged until the next download or sync. */
    int (*host_alloc)(struct kbackend *kb, void **out, size_t nbytes, struct slm_err *err);
    void (*host_free)(struct kbackend *kb, void *p);
    /* --- added for the GPU compress flow (optional) --- */
    /* w[i] <- +0 where mask[i] != 0, i < n; other entries untouched (w f32, mask bytes, backend
    ** memory). Wanda's quantize-first order: the pruned entries of the quantized dense weight. */
    int (*apply_mask)(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err);
    /* --- added for GPU unstructured pruning and measured sparsity (optional) --- */
    /* Unstructured per-row pruning of w [d_out x d_in] in place (Wanda): in each row the k smallest
    ** metrics (kq_prune_metric under s, as prune_nm; ordered by kq_order_key, equal ones the lower
    ** column first: a stable ascending sort) go: mask 1 and w 0 there, mask 0 elsewhere.
    ** 0 <= k <= d_in. All arrays backend memory. */
    int (*prune_rows)(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                      struct slm_err *err);
    /* *kth (host memory) <- the k-th smallest (0-based, k < n) of |a[i]| over a [n] (backend
    ** memory) in kq_abs_key order (NaN above +inf): the threshold of global magnitude pruning and
    ** of SparseGPT's unstructured blocks. The value is unique, so every backend gives its bits. */
    int (*abs_kth)(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err);
    /* Magnitude pruning under a global threshold: mask[i] <- |w[i]| <= thr, and w[i] <- 0 there, i < n
    ** (w f32, mask bytes, backend memory; a NaN weight stays). */
    int (*prune_abs_le)(struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err);
    /* *count (host memory) <- how many of a [n] (backend memory) equal 0 (either sign). */
    int (*count_zeros)(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err);
    /* --- added for block uploads overlapped with compute (optional; all three or none) --- */
    /* Order the copy stream after every op queued so far, so that later upload_async calls may fill
    ** buffers just taken from kb_alloc whose earlier contents queued ops may still read. Called on
    ** the thread that runs the backend's ops, between those allocations and the uploads. */
    int (*copy_after_queued)(struct kbackend *kb, struct slm_err *err);
    /* nbytes from host src to backend dst on the copy stream, concurrently with the ops; callable
    ** from another thread (the block prefetch) while the ops go on. dst must not be touched by ops
    ** before copy_sync has returned; src stays the caller's and may be freed then. */
    int (*upload_async)(struct kbackend *kb, void *dst, const void *src, size_t nbytes, struct slm_err *err);
    /* Wait for every upload_async so far (any thread). */
    int (*copy_sync)(struct kbackend *kb, struct slm_err *err);
    /* --- added for SLiM-Quant's search on the backend (optional) --- */
    /* *alpha (host memory) <- SLiM-Quant's clip over the histogram counts [nb] of n values with
    ** edges edge [nb + 1] (both backend memory, abs_histogram's): kq_slim_search, whose losses are
    ** sequential f64 sums, so every backend gives its bits. nb >= 2, n > 0, 2 <= bits <= 8. */
    int (*slim_search)(struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb,
                       size_t n, int bits, struct slm_err *err);
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
/* sparsegpt_block after checking a's shapes; -SLM_EUNSUPPORTED when the backend lacks it. */
int kb_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err);
/* col_stats on backend buffers; a backend without the op gets a host round trip (same bits). */
int kb_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                 struct slm_err *err);

/* apply_mask on backend buffers; -SLM_EUNSUPPORTED when the backend lacks it. */
int kb_apply_mask(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err);

/* count_zeros of a [n] (backend memory); a backend without the op gets a host round trip. */
int kb_count_zeros(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err);
/* abs_kth of a [n] (backend memory); a backend without the op gets a host round trip. */
int kb_abs_kth(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err);

/* Memory figures (struct kmem_stats). -SLM_EUNSUPPORTED, *out all -1, without the op. */
int kb_mem_stats(struct kbackend *kb, struct kmem_stats *out, bool reset_peak, struct slm_err *err);
/* Bytes kb_alloc can still hand out, as far as the backend can tell: the budget left (set_limit)
** and, on a device, its free plus cached memory, whichever is smaller; -1 when neither bounds it
** (host memory without a budget) or the backend keeps no figures. For plans made ahead of an
** allocation (spilling, prefetching, chunking): the allocation itself has the last word. */
int64_t kb_room(struct kbackend *kb);
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
