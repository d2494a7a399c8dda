/*
** kernels/cuda/quant_cuda.cu: SLiM's per-linear pruning and quantization ops of the CUDA backend
** (N:M pruning, block maxima, |w| range and histogram, fake quantization and dequantization).
** Every element goes through the same functions of kernels/kquant.h as the CPU backend and
** core's host path, with non-contracted f32 arithmetic (__fmul_rn ...) and IEEE division and
** square root (the build has no fast-math), so masks, codes, histogram counts and quantized
** values equal the CPU's bit for bit. Maxima and minima are order-independent (NaN ignored by
** fminf/fmaxf on both sides), so the parallel reductions keep that property.
*/
#include "cuda_common.h"
#include "../kquant.h"

/* One thread per group of m: t is the thread's copy of the metrics, so zeroing w while walking
** the group leaves the selection untouched (as kq_prune_nm_row on the host). */
__global__ static void k_prune_nm(float *w, uint8_t *mask, const float *s, int d_in, size_t ngroups, int n, int m)
{
    float t[256];
    int per_row = d_in / m;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < ngroups; g += (size_t)gridDim.x * blockDim.x) {
        size_t r = g / per_row;
        int c0 = (int)(g % per_row) * m;
        float *wr = w + r * d_in + c0;
        uint8_t *mr = mask + r * d_in + c0;
        for (int k = 0; k < m; k++) t[k] = kq_prune_metric(wr[k], s, c0 + k);
        for (int k = 0; k < m; k++) {
            bool p = kq_nm_pruned(t, k, m, n);
            mr[k] = p;
            if (p) wr[k] = 0;
        }
    }
}

int cu_prune_nm(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int n, int m,
                struct slm_err *err)
{
    int rc = kq_check_nm(d_out, d_in, n, m, err);
    if (rc) return rc;
    size_t ng = (size_t)d_out * (d_in / m);
    if (!ng) return 0;
    k_prune_nm<<<cu_blocks(ng), 256, 0, cu_ctx(kb)->stream>>>(w, mask, s, d_in, ng, n, m);
    CU_LAUNCH_TRY("prune_nm kernel");
    return 0;
}

/* ---- block maxima ---- */

/* Rows of one group a thread reduces before the warp combines columns. */
#define AMAX_ROWS 32

/* Thread item = (group row gr, row chunk, column c): the max |w| of column c over the chunk's
** rows. Consecutive lanes hold consecutive items, so lanes of one (gr, chunk, column group) are
** contiguous: a segmented shuffle reduction leaves their max on the segment's first lane, which
** alone does the atomic max (on the float's bits: every value is >= +0 and not NaN). */
__global__ static void k_absmax_groups(float *amax, const float *w, int d_in, int grows, int gcols, int nchunk,
                                       size_t items)
{
    int lane = threadIdx.x & 31, cols = d_in / gcols;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t base = blockIdx.x * (size_t)blockDim.x; base < items; base += stride) {
        size_t i = base + threadIdx.x;
        bool valid = i < items;
        float v = 0;
        long long key = -1;
        if (valid) {
            int c = (int)(i % d_in);
            size_t rest = i / d_in;
            int chunk = (int)(rest % nchunk);
            size_t gr = rest / nchunk;
            int r0 = (int)(gr * grows) + chunk * AMAX_ROWS, r1 = (int)(gr * grows) + grows;
            if (r1 > r0 + AMAX_ROWS) r1 = r0 + AMAX_ROWS;
            for (int r = r0; r < r1; r++) v = fmaxf(v, fabsf(w[(size_t)r * d_in + c]));
            key = (long long)rest * cols + c / gcols;
        }
        for (int o = 1; o < 32; o <<= 1) {
            float ov = __shfl_down_sync(0xffffffffu, v, o);
            long long ok = __shfl_down_sync(0xffffffffu, key, o);
            if (lane + o < 32 && ok == key) v = fmaxf(v, ov);
        }
        long long prev = __shfl_up_sync(0xffffffffu, key, 1);
        if (valid && (lane == 0 || prev != key)) {
            size_t gr = i / d_in / nchunk;
            atomicMax((unsigned int *)&amax[gr * cols + (i % d_in) / gcols], __float_as_uint(v));
        }
    }
}

int cu_absmax_groups(struct kbackend *kb, float *amax, const float *w, int d_out, int d_in, int grows, int gcols,
                     struct slm_err *err)
{
    cudaStream_t st = cu_ctx(kb)->stream;
    int rc = kq_check_groups(d_out, d_in, grows, gcols, err);
    if (rc) return rc;
    size_t ng = (size_t)(d_out / grows) * (d_in / gcols);
    if (!ng) return 0;
    CU_TRY(cudaMemsetAsync(amax, 0, ng * sizeof *amax, st));
    int nchunk = (grows + AMAX_ROWS - 1) / AMAX_ROWS;
    size_t items = (size_t)(d_out / grows) * nchunk * d_in;
    k_absmax_groups<<<cu_blocks(items), 256, 0, st>>>(amax, w, d_in, grows, gcols, nchunk, items);
    CU_LAUNCH_TRY("absmax_groups kernel");
    return 0;
}

/* ---- |a| range and histogram (SLiM-Quant) ---- */

__global__ static void k_abs_range_init(float *lo_hi)
{
    lo_hi[0] = INFINITY;
    lo_hi[1] = 0;
}

__global__ static void k_abs_range(float *lo_hi, const float *a, size_t n)
{
    float lo = INFINITY, hi = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = fabsf(a[i]);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if ((threadIdx.x & 31) == 0) {
        atomicMin((unsigned int *)&lo_hi[0], __float_as_uint(lo));
        atomicMax((unsigned int *)&lo_hi[1], __float_as_uint(hi));
    }
}

int cu_abs_range(struct kbackend *kb, float *lo_hi, const float *a, size_t n, struct slm_err *err)
{
    cudaStream_t st = cu_ctx(kb)->stream;
    k_abs_range_init<<<1, 1, 0, st>>>(lo_hi);
    CU_LAUNCH_TRY("abs_range init kernel");
    if (!n) return 0;
    k_abs_range<<<cu_blocks(n) < 1024 ? cu_blocks(n) : 1024, 256, 0, st>>>(lo_hi, a, n);
    CU_LAUNCH_TRY("abs_range kernel");
    return 0;
}

/* SHARED: each block counts into its own [nb] u32 bins in shared memory, then adds the non-zero
** ones to counts; otherwise (too many bins for shared memory) straight into counts. */
template <bool SHARED>
__global__ static void k_abs_histogram(unsigned long long *counts, const float *a, size_t n, float lo, float hi,
                                       const float *edge, int nb)
{
    extern __shared__ unsigned int bins[];
    if (SHARED) {
        for (int k = threadIdx.x; k < nb; k += blockDim.x) bins[k] = 0;
        __syncthreads();
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int p = kq_hist_bin(fabsf(a[i]), lo, hi, nb, edge);
        if (SHARED) atomicAdd(&bins[p], 1u);
        else atomicAdd(&counts[p], 1ull);
    }
    if (SHARED) {
        __syncthreads();
        for (int k = threadIdx.x; k < nb; k += blockDim.x)
            if (bins[k]) atomicAdd(&counts[k], (unsigned long long)bins[k]);
    }
}

/* Blocks of the histogram: each flushes up to nb bins, so a few per SM, not one per 256 values. */
#define HIST_BLOCKS 264

int cu_abs_histogram(struct kbackend *kb, uint64_t *counts, const float *a, size_t n, float lo, float hi,
                     const float *edge, int nb, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int rc = kq_check_bins(nb, err);
    if (rc) return rc;
    if (!n) return 0;
    unsigned blocks = cu_blocks(n) < HIST_BLOCKS ? cu_blocks(n) : HIST_BLOCKS;
    size_t smem = sizeof(unsigned int) * (size_t)nb;
    unsigned long long *cnt = (unsigned long long *)counts;
    if (smem <= (size_t)c->max_smem_optin) {
        if (smem > 48 * 1024)
            CU_TRY(cudaFuncSetAttribute(k_abs_histogram<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        k_abs_histogram<true><<<blocks, 256, smem, c->stream>>>(cnt, a, n, lo, hi, edge, nb);
    } else {
        k_abs_histogram<false><<<blocks, 256, 0, c->stream>>>(cnt, a, n, lo, hi, edge, nb);
    }
    CU_LAUNCH_TRY("abs_histogram kernel");
    return 0;
}

/* ---- fake quantization ---- */

__global__ static void k_quant_apply(float *w, int8_t *codes, int d_in, size_t n, struct kquant_args q)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float code;
        w[i] = kq_quant1(w[i], (int)(i / d_in), (int)(i % d_in), &q, &code);
        if (codes) codes[i] = (int8_t)code;
    }
}

__global__ static void k_quant_dequant(float *w, const int8_t *codes, int d_in, size_t n, struct kquant_args q)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        w[i] = kq_dequant1(codes[i], (int)(i / d_in), (int)(i % d_in), &q);
}

int cu_quant_apply(struct kbackend *kb, float *w, int8_t *codes, int d_out, int d_in, const struct kquant_args *q,
                   struct slm_err *err)
{
    int rc = kq_check_quant(q, d_out, d_in, err);
    size_t n = (size_t)d_out * d_in;
    if (rc || !n) return rc;
    k_quant_apply<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(w, codes, d_in, n, *q);
    CU_LAUNCH_TRY("quant_apply kernel");
    return 0;
}

int cu_quant_dequant(struct kbackend *kb, float *w, const int8_t *codes, int d_out, int d_in,
                     const struct kquant_args *q, struct slm_err *err)
{
    int rc = kq_check_quant(q, d_out, d_in, err);
    size_t n = (size_t)d_out * d_in;
    if (rc || !n) return rc;
    k_quant_dequant<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(w, codes, d_in, n, *q);
    CU_LAUNCH_TRY("quant_dequant kernel");
    return 0;
}
