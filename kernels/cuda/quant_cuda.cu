/*
** kernels/cuda/quant_cuda.cu: SLiM's per-linear pruning and quantization ops of the CUDA backend
** (N:M pruning, block maxima, |w| range and histogram, SLiM-Quant's clipping search, fake
** quantization and dequantization).
** Every element goes through the same functions of kernels/kquant.h as the CPU backend and
** core's host path, with non-contracted f32 arithmetic (__fmul_rn ...) and IEEE division and
** square root (the build has no fast-math), so masks, codes, histogram counts and quantized
** values equal the CPU's bit for bit. Maxima and minima are order-independent (NaN ignored by
** fminf/fmaxf on both sides), so the parallel reductions keep that property.
*/
#include <climits>

#include <cub/block/block_scan.cuh>

#include "cuda_common.h"
#include "../kquant.h"

/* One thread per group of m: t is the thread's copy of the metrics, so zeroing w while walking
** the group leaves the selection untouched (as kq_prune_nm_row on the host). M > 0 fixes m at
** compile time, so the unrolled loops keep t in registers (2:4, 4:8); M = 0 takes any m <= 256
** with t in local memory. */
template <int M>
__global__ static void k_prune_nm(float *w, uint8_t *mask, const float *s, int d_in, size_t ngroups, int n, int m_rt)
{
    float t[M ? M : 256];
    const int m = M ? M : m_rt;
    int per_row = d_in / m;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < ngroups; g += (size_t)gridDim.x * blockDim.x) {
        size_t r = g / per_row;
        int c0 = (int)(g % per_row) * m;
        float *wr = w + r * d_in + c0;
        uint8_t *mr = mask + r * d_in + c0;
#pragma unroll
        for (int k = 0; k < m; k++) t[k] = kq_prune_metric(wr[k], s, c0 + k);
#pragma unroll
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
    cudaStream_t st = cu_ctx(kb)->stream;
    if (m == 4) k_prune_nm<4><<<cu_blocks(ng), 256, 0, st>>>(w, mask, s, d_in, ng, n, m);
    else if (m == 8) k_prune_nm<8><<<cu_blocks(ng), 256, 0, st>>>(w, mask, s, d_in, ng, n, m);
    else k_prune_nm<0><<<cu_blocks(ng), 256, 0, st>>>(w, mask, s, d_in, ng, n, m);
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

/* ---- unstructured pruning: per-row and global radix selection ----
** Both selections find the exact key (kq_order_key / kq_abs_key) of the k-th smallest metric by
** four 8-bit radix passes, most significant digit first: each pass counts, among the entries whose
** higher digits equal the prefix found so far, how many fall in each of the 256 values of the next
** digit, and the digit where the running count reaches the rank joins the prefix. Counting is
** exact, so the threshold is the CPU's value bit for bit, whatever the order of the atomics. */

#define ROWS_THREADS 256

__device__ static inline uint32_t row_key(const float *wr, const float *s, int c)
{
    return kq_order_key(kq_prune_metric(wr[c], s, c));
}

/* Keys of the higher digits than `shift` (none in the first pass). */
__device__ static inline uint32_t radix_hi_mask(int shift)
{
    return shift == 24 ? 0u : 0xffffffffu << (shift + 8);
}

/* One block per row. After the passes, thr is the key of the row's k-th smallest metric and
** `take` (>= 1) how many entries equal to it are pruned: the lowest columns, found by a block-wide
** prefix count in column order; every key below thr goes too. */
__global__ static void __launch_bounds__(ROWS_THREADS) k_prune_rows(float *w, uint8_t *mask, const float *s, int d_in, int k)
{
    typedef cub::BlockScan<int, ROWS_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ unsigned int hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_left;
    float *wr = w + (size_t)blockIdx.x * d_in;
    uint8_t *mr = mask + (size_t)blockIdx.x * d_in;
    if (k == 0) {
        for (int c = threadIdx.x; c < d_in; c += ROWS_THREADS) mr[c] = 0;
        return;
    }
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_left = k;   /* rank, from 1, among the entries that match the prefix */
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += ROWS_THREADS) hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, hi = radix_hi_mask(shift);
        for (int c = threadIdx.x; c < d_in; c += ROWS_THREADS) {
            uint32_t key = row_key(wr, s, c);
            if ((key & hi) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int left = s_left;
            unsigned d = 0;
            for (; d < 255 && (int)hist[d] < left; d++) left -= (int)hist[d];
            s_prefix = prefix | (d << shift);
            s_left = left;
        }
        __syncthreads();
    }
    uint32_t thr = s_prefix;
    int take = s_left, running = 0;
    for (int base = 0; base < d_in; base += ROWS_THREADS) {
        int c = base + threadIdx.x, pos, total;
        uint32_t key = c < d_in ? row_key(wr, s, c) : 0xffffffffu;
        int eq = c < d_in && key == thr;
        Scan(scan_tmp).ExclusiveSum(eq, pos, total);
        if (c < d_in) {
            bool p = key < thr || (eq && running + pos < take);
            mr[c] = p;
            if (p) wr[c] = 0;
        }
        running += total;
        __syncthreads();   /* scan_tmp is reused by the next chunk */
    }
}

int cu_prune_rows(struct kbackend *kb, float *w, uint8_t *mask, const float *s, int d_out, int d_in, int k,
                  struct slm_err *err)
{
    int rc = kq_check_rows(d_out, d_in, k, err);
    if (rc || !d_out || !d_in) return rc;
    k_prune_rows<<<d_out, ROWS_THREADS, 0, cu_ctx(kb)->stream>>>(w, mask, s, d_in, k);
    CU_LAUNCH_TRY("prune_rows kernel");
    return 0;
}

/* The global selection's state in device memory: the prefix, the rank left within it (from 1),
** and the pass's digit counts. */
struct kth_state {
    uint32_t prefix;
    unsigned long long left;
    unsigned long long hist[256];
};

__global__ static void k_kth_init(struct kth_state *st, unsigned long long rank)
{
    for (int i = threadIdx.x; i < 256; i += blockDim.x) st->hist[i] = 0;
    if (threadIdx.x == 0) {
        st->prefix = 0;
        st->left = rank;
    }
}

__global__ static void k_kth_hist(struct kth_state *st, const float *a, size_t n, int shift)
{
    __shared__ unsigned int bins[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) bins[i] = 0;
    __syncthreads();
    uint32_t prefix = st->prefix, hi = radix_hi_mask(shift);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t key = kq_abs_key(a[i]);
        if ((key & hi) == prefix) atomicAdd(&bins[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        if (bins[i]) atomicAdd(&st->hist[i], (unsigned long long)bins[i]);
}

/* One thread: the digit where the count reaches the rank; the counts are cleared for the next pass. */
__global__ static void k_kth_pick(struct kth_state *st, int shift)
{
    unsigned long long left = st->left;
    unsigned d = 0;
    for (; d < 255 && st->hist[d] < left; d++) left -= st->hist[d];
    st->prefix |= d << shift;
    st->left = left;
    for (int i = 0; i < 256; i++) st->hist[i] = 0;
}

int cu_abs_kth(struct kbackend *kb, float *kth, const float *a, size_t n, size_t k, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    struct kth_state *st = NULL;
    uint32_t key = 0;
    int rc = kq_check_kth(n, k, err);
    if (rc || (rc = cu_pool_alloc(c, (void **)&st, sizeof *st, err))) return rc;
    unsigned blocks = cu_blocks(n) < HIST_BLOCKS ? cu_blocks(n) : HIST_BLOCKS;
    k_kth_init<<<1, 256, 0, c->stream>>>(st, (unsigned long long)k + 1);
    for (int shift = 24; shift >= 0; shift -= 8) {
        k_kth_hist<<<blocks, 256, 0, c->stream>>>(st, a, n, shift);
        k_kth_pick<<<1, 1, 0, c->stream>>>(st, shift);
    }
    CU_GO(cudaGetLastError());
    CU_GO(cudaMemcpyAsync(&key, &st->prefix, sizeof key, cudaMemcpyDeviceToHost, c->stream));
    CU_GO(cudaStreamSynchronize(c->stream));
    memcpy(kth, &key, sizeof key);
done:
    cu_pool_release(c, st);
    return rc;
}

__global__ static void k_prune_abs_le(float *w, uint8_t *mask, size_t n, float thr)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        bool p = fabsf(w[i]) <= thr;
        mask[i] = p;
        if (p) w[i] = 0;
    }
}

int cu_prune_abs_le(struct kbackend *kb, float *w, uint8_t *mask, size_t n, float thr, struct slm_err *err)
{
    if (!n) return 0;
    k_prune_abs_le<<<cu_blocks(n), 256, 0, cu_ctx(kb)->stream>>>(w, mask, n, thr);
    CU_LAUNCH_TRY("prune_abs_le kernel");
    return 0;
}

/* ---- measured sparsity ---- */

__global__ static void k_count_zeros(unsigned long long *count, const float *a, size_t n)
{
    unsigned int z = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        z += a[i] == 0;
    for (int o = 16; o > 0; o >>= 1) z += __shfl_xor_sync(0xffffffffu, z, o);
    if ((threadIdx.x & 31) == 0 && z) atomicAdd(count, (unsigned long long)z);
}

int cu_count_zeros(struct kbackend *kb, uint64_t *count, const float *a, size_t n, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    unsigned long long *d = NULL, h = 0;
    int rc;
    *count = 0;
    if (!n) return 0;
    if ((rc = cu_pool_alloc(c, (void **)&d, sizeof *d, err))) return rc;
    CU_GO(cudaMemsetAsync(d, 0, sizeof *d, c->stream));
    k_count_zeros<<<cu_blocks(n) < 1024 ? cu_blocks(n) : 1024, 256, 0, c->stream>>>(d, a, n);
    CU_GO(cudaGetLastError());
    CU_GO(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, c->stream));
    CU_GO(cudaStreamSynchronize(c->stream));
    *count = h;
done:
    cu_pool_release(c, d);
    return rc;
}

/* ---- SLiM-Quant's clipping search ---- */

/* One search's device state: the coarse losses and grid, the fine range, the answer. */
struct slim_state {
    double coarse[11];
    int idx[11], flo, fhi;
    float alpha;
};

__global__ static void k_slim_bins(float *pdf, float *val, const uint64_t *counts, const float *edge, int nb, size_t n)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < nb; k += gridDim.x * blockDim.x) {
        pdf[k] = kq_slim_pdf(counts, edge, k, n);
        val[k] = kq_slim_val(edge, k);
    }
}

/* One block of 32: thread j < 11 sums coarse candidate j (each loss one thread's sequential sum,
** as on the host), then thread 0 picks the fine range. */
__global__ static void k_slim_coarse(struct slim_state *st, const float *pdf, const float *val, int nb, int bits)
{
    int idx[11], nc = kq_slim_grid(idx, nb), j = threadIdx.x;
    float dx = val[1] - val[0];
    if (j < 11) {
        st->coarse[j] = j < nc ? kq_slim_err(pdf, val, nb, dx, idx[j], bits) : INFINITY;
        st->idx[j] = idx[j];
    }
    __syncthreads();
    if (j == 0) kq_slim_fine_range(st->coarse, st->idx, &st->flo, &st->fhi);
}

/* One thread per fine candidate; the grid covers the widest range (2 nb / 10 bins). */
__global__ static void k_slim_fine(double *loss, const struct slim_state *st, const float *pdf, const float *val,
                                   int nb, int bits)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x, flo = st->flo;
    if (j < st->fhi - flo) loss[j] = kq_slim_err(pdf, val, nb, val[1] - val[0], flo + j, bits);
}

/* The host's first strict minimum: the smallest finite loss, the lowest index among equals (NaN and
** +inf never win); bin 0 when none is finite or the range is empty. One block of SLIM_BEST. */
#define SLIM_BEST 256
__global__ static void k_slim_best(struct slim_state *st, const double *loss, const float *val)
{
    __shared__ double sl[SLIM_BEST];
    __shared__ int si[SLIM_BEST];
    int cnt = st->fhi - st->flo, t = threadIdx.x, bi = INT_MAX;
    double bl = INFINITY;
    for (int j = t; j < cnt; j += SLIM_BEST)
        if (loss[j] < bl) { bl = loss[j]; bi = j; }
    sl[t] = bl;
    si[t] = bi;
    __syncthreads();
    for (int o = SLIM_BEST / 2; o > 0; o >>= 1) {
        if (t < o && (sl[t + o] < sl[t] || (sl[t + o] == sl[t] && si[t + o] < si[t]))) {
            sl[t] = sl[t + o];
            si[t] = si[t + o];
        }
        __syncthreads();
    }
    if (t == 0) st->alpha = val[si[0] == INT_MAX ? 0 : st->flo + si[0]];
}

int cu_slim_search(struct kbackend *kb, float *alpha, const uint64_t *counts, const float *edge, int nb, size_t n,
                   int bits, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    struct slim_state *st = NULL;
    int rc = kq_check_search(nb, n, bits, err);
    if (rc) return rc;
    /* state, losses [nb] doubles, pdf and values [2 nb] floats: one pool block (doubles first) */
    if ((rc = cu_pool_alloc(c, (void **)&st, sizeof *st + sizeof(double) * (size_t)nb + sizeof(float) * 2 * (size_t)nb,
                            err)))
        return rc;
    double *loss = (double *)(st + 1);   /* sizeof *st is a multiple of its double alignment */
    float *pdf = (float *)(loss + nb), *val = pdf + nb;
    int wide = 2 * (nb / 10) + 1;
    k_slim_bins<<<cu_blocks((size_t)nb), 256, 0, c->stream>>>(pdf, val, counts, edge, nb, n);
    k_slim_coarse<<<1, 32, 0, c->stream>>>(st, pdf, val, nb, bits);
    k_slim_fine<<<(wide + 127) / 128, 128, 0, c->stream>>>(loss, st, pdf, val, nb, bits);
    k_slim_best<<<1, SLIM_BEST, 0, c->stream>>>(st, loss, val);
    CU_GO(cudaGetLastError());
    CU_GO(cudaMemcpyAsync(alpha, &st->alpha, sizeof *alpha, cudaMemcpyDeviceToHost, c->stream));
    CU_GO(cudaStreamSynchronize(c->stream));
done:
    cu_pool_release(c, st);
    return rc;
}
