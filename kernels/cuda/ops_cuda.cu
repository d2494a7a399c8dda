/*
** kernels/cuda/ops_cuda.cu: row and element-wise ops of the CUDA backend: layer/RMS norm,
** bias, add/mul/scale, activations, RoPE, cross-entropy. Each mirrors kernels/cpu/backend_cpu.c
** expression for expression (double accumulators in the row reductions, f32 cosf/sinf/expf/
** tanhf/erff, no fast-math) so both backends agree to f32 rounding.
*/
#include "cuda_common.h"

#include <math.h>

#define ROW_THREADS 256

/* Block-wide sum of a double (ROW_THREADS threads); every thread gets the result. */
__device__ static double block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads(); /* sh may still be read from a previous call */
    if (l == 0) sh[w] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < ROW_THREADS / 32; i++) t += sh[i];
    return t;
}

__device__ static float block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < ROW_THREADS / 32; i++) t = fmaxf(t, sh[i]);
    return t;
}

/* ---- norms ---- */
__global__ static void k_layernorm(float *y, const float *x, const float *w, const float *b, int cols, float eps)
{
    __shared__ double sh[ROW_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    float *yr = y + (size_t)blockIdx.x * cols;
    double s = 0;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) s += xr[c];
    double mean = block_sum(s, sh) / cols;
    double v = 0;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) { double d = xr[c] - mean; v += d * d; }
    double var = block_sum(v, sh) / cols;
    float inv = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
    __syncthreads(); /* every read of xr done before y (which may be x) is written */
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) {
        float o = (xr[c] - m) * inv;
        if (w) o *= w[c];
        if (b) o += b[c];
        yr[c] = o;
    }
}

__global__ static void k_rmsnorm(float *y, const float *x, const float *w, int cols, float divisor, float eps)
{
    __shared__ double sh[ROW_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    float *yr = y + (size_t)blockIdx.x * cols;
    double s = 0;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) s += (double)xr[c] * xr[c];
    double ss = block_sum(s, sh);
    float inv = (float)(1.0 / sqrt(ss / divisor + eps));
    __syncthreads();
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) yr[c] = w ? w[c] * (xr[c] * inv) : xr[c] * inv;
}

static int check_rows(int rows, int cols, const char *op, struct slm_err *err)
{
    if (rows < 0 || cols <= 0 || rows > 0x7fffffff)
        return slm_err_set(err, SLM_EINVAL, "%s: bad shape %d x %d", op, rows, cols);
    return 0;
}

int cu_layernorm(struct kbackend *kb, float *y, const float *x, const float *w, const float *b,
                 int rows, int cols, float eps, struct slm_err *err)
{
    int rc = check_rows(rows, cols, "layernorm", err);
    if (rc || rows == 0) return rc;
    k_layernorm<<<rows, ROW_THREADS, 0, cu_ctx(kb)->stream>>>(y, x, w, b, cols, eps);
    CU_LAUNCH_TRY("layernorm kernel");
    return 0;
}

int cu_rmsnorm(struct kbackend *kb, float *y, const float *x, const float *w, int rows, int cols,
               float divisor, float eps, struct slm_err *err)
{
    int rc = check_rows(rows, cols, "rmsnorm", err);
    if (rc || rows == 0) return rc;
    if (!(divisor > 0)) return slm_err_set(err, SLM_EINVAL, "rmsnorm: divisor %g must be positive", (double)divisor);
    k_rmsnorm<<<rows, ROW_THREADS, 0, cu_ctx(kb)->stream>>>(y, x, w, cols, divisor, eps);
    CU_LAUNCH_TRY("rmsnorm kernel");
    return 0;
}

/* ---- element-wise ---- */
__global__ static void k_add_bias(float *y, const float *bias, int rows, int cols, int ld)
{
    size_t n = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i % cols;
        y[r * ld + c] += bias[c];
    }
}

int cu_add_bias(struct kbackend *kb, float *y, const float *bias, int rows, int cols, int ld, struct slm_err *err)
{
    if (rows < 0 || cols < 0 || ld < cols)
        return slm_err_set(err, SLM_EINVAL, "add_bias: bad shape %d x %d (ld %d)", rows, cols, ld);
    size_t n = (size_t)rows * cols;
    if (!n) return 0;
    k_add_bias<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(y, bias, rows, cols, ld);
    CU_LAUNCH_TRY("add_bias kernel");
    return 0;
}

enum ew_op { EW_ADD, EW_MUL };

template <int OP>
__global__ static void k_binary(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = OP == EW_ADD ? y[i] + x[i] : y[i] * x[i];
}

__global__ static void k_scale(float *y, float s, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] *= s;
}

int cu_add(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    k_binary<EW_ADD><<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(y, x, n);
    CU_LAUNCH_TRY("add kernel");
    return 0;
}

int cu_mul(struct kbackend *kb, float *y, const float *x, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    k_binary<EW_MUL><<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(y, x, n);
    CU_LAUNCH_TRY("mul kernel");
    return 0;
}

int cu_scale(struct kbackend *kb, float *y, float s, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    k_scale<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(y, s, n);
    CU_LAUNCH_TRY("scale kernel");
    return 0;
}

/* as cpu_round_bf16: round to nearest even, NaN stays a quiet NaN */
__global__ static void k_round_bf16(float *y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned u = __float_as_uint(y[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) u = (u | 0x00400000u) & 0xffff0000u;
        else u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        y[i] = __uint_as_float(u);
    }
}

int cu_round_bf16(struct kbackend *kb, float *y, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    k_round_bf16<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(y, n);
    CU_LAUNCH_TRY("round_bf16 kernel");
    return 0;
}

/* same expressions as kcpu_act1() */
template <int ACT>
__global__ static void k_act(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i], o;
        if (ACT == KACT_RELU) o = v > 0 ? v : 0;
        else if (ACT == KACT_GELU_TANH) o = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        else if (ACT == KACT_GELU_ERF) o = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
        else o = v / (1.0f + expf(-v));
        y[i] = o;
    }
}

int cu_act(struct kbackend *kb, float *y, const float *x, size_t n, enum kact act, struct slm_err *err)
{
    cudaStream_t s = cu_ctx(kb)->stream;
    if ((unsigned)act > KACT_SILU) return slm_err_set(err, SLM_EINVAL, "act: unknown activation %d", (int)act);
    if (!n) return 0;
    switch (act) {
    case KACT_RELU: k_act<KACT_RELU><<<cu_blocks(n), 256, 0, s>>>(y, x, n); break;
    case KACT_GELU_TANH: k_act<KACT_GELU_TANH><<<cu_blocks(n), 256, 0, s>>>(y, x, n); break;
    case KACT_GELU_ERF: k_act<KACT_GELU_ERF><<<cu_blocks(n), 256, 0, s>>>(y, x, n); break;
    case KACT_SILU: k_act<KACT_SILU><<<cu_blocks(n), 256, 0, s>>>(y, x, n); break;
    }
    CU_LAUNCH_TRY("act kernel");
    return 0;
}

/* ---- RoPE: one thread per (row, rotation pair); the heads share the angle ---- */
__global__ static void k_rope(float *x, int rows, int ld, int T, int nheads, int hd, int half, const float *inv_freq)
{
    size_t n = (size_t)rows * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(idx / half), i = (int)(idx % half);
        float ang = (float)(r % T) * inv_freq[i];
        float c = cosf(ang), s = sinf(ang);
        for (int h = 0; h < nheads; h++) {
            float *p = x + (size_t)r * ld + (size_t)h * hd;
            float a = p[i], b = p[i + half];
            p[i] = a * c - b * s;
            p[i + half] = b * c + a * s;
        }
    }
}

int cu_rope(struct kbackend *kb, float *x, int rows, int ld, int T, int nheads, int hd, int rot_dim,
            const float *inv_freq, struct slm_err *err)
{
    if (rot_dim <= 0 || rot_dim > hd || (rot_dim & 1) || T <= 0)
        return slm_err_set(err, SLM_EINVAL, "rope: bad rot_dim %d for head_dim %d", rot_dim, hd);
    if (rows < 0 || nheads < 0 || ld < nheads * hd)
        return slm_err_set(err, SLM_EINVAL, "rope: bad shape rows=%d ld=%d heads=%d hd=%d", rows, ld, nheads, hd);
    size_t n = (size_t)rows * (rot_dim / 2);
    if (!n || !nheads) return 0;
    k_rope<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(x, rows, ld, T, nheads, hd, rot_dim / 2, inv_freq);
    CU_LAUNCH_TRY("rope kernel");
    return 0;
}

/* ---- cross-entropy: one block per row ---- */
__global__ static void k_cross_entropy(float *nll, const float *logits, const int32_t *targets, int vocab)
{
    __shared__ double shd[ROW_THREADS / 32];
    __shared__ float shf[ROW_THREADS / 32];
    const float *l = logits + (size_t)blockIdx.x * vocab;
    int t = targets[blockIdx.x];
    if (t < 0 || t >= vocab) { /* uniform across the block: no barrier is skipped by some only */
        if (threadIdx.x == 0) nll[blockIdx.x] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += ROW_THREADS) mx = fmaxf(mx, l[j]);
    mx = block_max(mx, shf);
    double s = 0;
    for (int j = threadIdx.x; j < vocab; j += ROW_THREADS) s += (double)expf(l[j] - mx);
    s = block_sum(s, shd);
    if (threadIdx.x == 0) nll[blockIdx.x] = (float)(log(s) + mx - l[t]);
}

int cu_cross_entropy(struct kbackend *kb, float *nll, const float *logits, const int32_t *targets,
                     int rows, int vocab, struct slm_err *err)
{
    int rc = check_rows(rows, vocab, "cross_entropy", err);
    if (rc || rows == 0) return rc;
    k_cross_entropy<<<rows, ROW_THREADS, 0, cu_ctx(kb)->stream>>>(nll, logits, targets, vocab);
    CU_LAUNCH_TRY("cross_entropy kernel");
    return 0;
}

/* ---- calibration statistics: one thread per column, rows in order (as kcpu_col_stats) ---- */
#define COL_STATS_THREADS 32   /* one warp per block: 4096 columns spread over 128 SMs */

/* Explicitly rounded f32 / f64 operations (no FMA contraction): the CPU's bits exactly. */
__global__ static void k_col_stats(float *scaler, double *abssum, const float *x, int rows, int cols, float nn)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float sq = 0;
    double as = abssum[j];
    const float *p = x + j;   /* consecutive threads read consecutive columns of a row: coalesced */
#pragma unroll 8
    for (int t = 0; t < rows; t++) {
        float v = p[(size_t)t * cols];
        sq = __fadd_rn(sq, __fmul_rn(v, v));
        as = __dadd_rn(as, (double)fabsf(v));
    }
    float n1 = __fadd_rn(nn, 1.0f);
    scaler[j] = __fadd_rn(__fdiv_rn(__fmul_rn(scaler[j], nn), n1), __fdiv_rn(sq, n1));
    abssum[j] = as;
}

int cu_col_stats(struct kbackend *kb, float *scaler, double *abssum, const float *x, int rows, int cols, int nseq,
                 struct slm_err *err)
{
    if (rows < 0 || cols < 0) return slm_err_set(err, SLM_EINVAL, "col_stats: bad shape %d x %d", rows, cols);
    if (!cols) return 0;
    unsigned blocks = (unsigned)((cols + COL_STATS_THREADS - 1) / COL_STATS_THREADS);
    k_col_stats<<<blocks, COL_STATS_THREADS, 0, cu_ctx(kb)->stream>>>(scaler, abssum, x, rows, cols, (float)nseq);
    CU_LAUNCH_TRY("col_stats kernel");
    return 0;
}

/* ---- embedding gather: one block per output row ---- */
__global__ static void k_gather_rows(float *out, const float *table, const int32_t *ids, int cols, int V)
{
    int id = ids[blockIdx.x];
    float *o = out + (size_t)blockIdx.x * cols;
    if (id < 0 || id >= V) {   /* callers validate: a NaN row makes a missed check visible */
        for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = __int_as_float(0x7fc00000);
        return;
    }
    const float *s = table + (size_t)id * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = s[c];
}

int cu_gather_rows(struct kbackend *kb, float *out, const float *table, const int32_t *ids, int rows, int cols, int V,
                   struct slm_err *err)
{
    if (rows < 0 || cols < 0 || V < 0) return slm_err_set(err, SLM_EINVAL, "gather_rows: bad shape %d x %d of %d", rows, cols, V);
    if (!rows || !cols) return 0;
    k_gather_rows<<<(unsigned)rows, 256, 0, cu_ctx(kb)->stream>>>(out, table, ids, cols, V);
    CU_LAUNCH_TRY("gather_rows kernel");
    return 0;
}

/* ---- added for the GPU compress flow ---- */

__global__ static void k_apply_mask(float *w, const uint8_t *mask, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (mask[i]) w[i] = 0.0f;
}

int cu_apply_mask(struct kbackend *kb, float *w, const uint8_t *mask, size_t n, struct slm_err *err)
{
    if (!n) return 0;
    k_apply_mask<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(w, mask, n);
    CU_LAUNCH_TRY("apply_mask kernel");
    return 0;
}
