/*
** kernels/cuda/sparsegpt_cuda.cu: sparsegpt_block on the GPU, the within-block OBS loop of
** SparseGPT / OPTQ (struct ksgpt_args in kbackend.h). Rows are independent, so one warp owns one
** row: the row's block columns and mask bytes sit in the warp's slice of shared memory, the
** block of Hinv is staged once per thread block in dynamic shared memory (read from global
** memory when it does not fit), and every column step is a warp-local broadcast and update.
** The arithmetic follows kernels/cpu/sparsegpt_cpu.c operation for operation with explicitly
** rounded intrinsics (no FMA contraction), so masks and quantized values agree bit for bit with
** the CPU backend wherever the metrics do not tie.
*/
#include "cuda_common.h"

#include <math.h>

#define SGPT_WARPS 16

__device__ static inline float sgpt_metric(float v, float d) { return __fdiv_rn(__fmul_rn(v, v), __fmul_rn(d, d)); }

/* kb_optq_apply, rounded step by step as the host does it (rintf: nearest even, as nearbyintf) */
__device__ static inline float sgpt_optq_apply(float x, float step, int bits)
{
    float maxq = (float)((1 << bits) - 1), zero = (float)(1 << (bits - 1));
    float q = __fadd_rn(rintf(__fdiv_rn(x, step)), zero);
    q = q < 0 ? 0 : q > maxq ? maxq : q;
    return __fmul_rn(step, __fsub_rn(q, zero));
}

__global__ static void k_sgpt_metric(float *t, const float *w, int ldw, const float *h, int ldh, int rows, int i1, int cnt)
{
    size_t n = (size_t)rows * cnt;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(i / cnt), col = i1 + (int)(i % cnt);
        t[i] = sgpt_metric(w[(size_t)r * ldw + col], h[(size_t)col * ldh + col]);
    }
}

/* smem_h: stage Hinv[i1:i2, i1:i2] in shared memory (else read it from global memory). */
__global__ static void k_sgpt_block(struct ksgpt_args a, bool smem_h)
{
    extern __shared__ float sh[];
    int cnt = a.i2 - a.i1, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *H;
    size_t ldH;
    float *rows_sh = sh;
    if (smem_h) {
        for (int i = threadIdx.x; i < cnt * cnt; i += blockDim.x)
            sh[i] = a.hinv[(size_t)(a.i1 + i / cnt) * a.ldh + a.i1 + i % cnt];
        H = sh;
        ldH = (size_t)cnt;
        rows_sh = sh + (size_t)cnt * cnt;
    } else {
        H = a.hinv + (size_t)a.i1 * a.ldh + a.i1;
        ldH = (size_t)a.ldh;
    }
    __syncthreads();
    int r = blockIdx.x * SGPT_WARPS + warp;
    if (r >= a.rows) return;   /* no block-wide barrier follows */
    float *rw = rows_sh + (size_t)warp * cnt;
    uint8_t *rm = (uint8_t *)(rows_sh + (size_t)SGPT_WARPS * cnt) + (size_t)warp * cnt;
    float *wrow = a.w + (size_t)r * a.ldw;
    for (int i = lane; i < cnt; i += 32) {
        float v = wrow[a.i1 + i];
        rw[i] = v;
        rm[i] = !a.m && sgpt_metric(v, H[i * ldH + i]) <= a.thr;
    }
    float step = 0;
    if (a.bits) step = a.step[a.group > 0 ? (size_t)r * a.ngroups + a.i1 / a.group : a.group == -1 ? (size_t)r : 0];
    __syncwarp();
    for (int i = 0; i < cnt; i++) {
        int col = a.i1 + i;
        if (a.m && i % a.m == 0) {
            /* rank of each of the m candidates in ascending (metric, index) order */
            for (int k = lane; k < a.m; k += 32) {
                float tk = sgpt_metric(rw[i + k], H[(i + k) * ldH + i + k]);
                int rank = 0;
                for (int j = 0; j < a.m; j++) {
                    float tj = sgpt_metric(rw[i + j], H[(i + j) * ldH + i + j]);
                    rank += tj < tk || (tj == tk && j < k);
                }
                rm[i + k] = rank < a.m - a.n;
            }
            __syncwarp();
        }
        if (a.bits && a.group > 0 && col % a.group == 0) {
            /* min and max are exact, so the lanes may split the range in any order */
            int gc = col + a.group <= a.cols ? a.group : a.cols - col;
            float xmax = 0, xmin = 0;
            for (int c = lane; c < gc; c += 32) {
                float v = i + c < cnt ? rw[i + c] : wrow[col + c];
                xmax = fmaxf(xmax, v);
                xmin = fminf(xmin, v);
            }
            for (int o = 16; o > 0; o >>= 1) {
                xmax = fmaxf(xmax, __shfl_xor_sync(0xffffffffu, xmax, o));
                xmin = fminf(xmin, __shfl_xor_sync(0xffffffffu, xmin, o));
            }
            xmax = fmaxf(fabsf(xmin), xmax);
            if (xmax == 0) xmax = 1;
            step = __fdiv_rn(__fmul_rn(2.0f, xmax), (float)((1 << a.bits) - 1));
            if (lane == 0) a.step[(size_t)r * a.ngroups + col / a.group] = step;
        }
        float w = rw[i], q = rm[i] ? 0 : w;
        if (a.bits && q != 0) q = sgpt_optq_apply(q, step, a.bits);
        float e = __fdiv_rn(__fsub_rn(w, q), H[i * ldH + i]);
        const float *hrow = H + i * ldH;
        for (int c = i + 1 + lane; c < cnt; c += 32) rw[c] = __fsub_rn(rw[c], __fmul_rn(e, hrow[c]));
        __syncwarp();   /* every lane has read rw[i] */
        if (lane == 0) {
            rw[i] = q;
            a.err[(size_t)r * cnt + i] = e;
        }
        __syncwarp();
    }
    uint8_t *mrow = a.mask + (size_t)r * a.ldm;
    for (int i = lane; i < cnt; i += 32) {
        wrow[a.i1 + i] = rw[i];
        mrow[i] = rm[i];
    }
}

int cu_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int cnt = a->i2 - a->i1;
    if (a->rows == 0) return 0;
    if (a->metric) {
        k_sgpt_metric<<<cu_blocks((size_t)a->rows * cnt), 256, 0, c->stream>>>(a->metric, a->w, a->ldw, a->hinv, a->ldh,
                                                                               a->rows, a->i1, cnt);
        CU_LAUNCH_TRY("sparsegpt metric");
        return 0;
    }
    size_t rows_bytes = (size_t)SGPT_WARPS * cnt * (sizeof(float) + 1);
    size_t h_bytes = sizeof(float) * (size_t)cnt * cnt;
    bool smem_h = rows_bytes + h_bytes <= (size_t)c->max_smem_optin;
    size_t smem = rows_bytes + (smem_h ? h_bytes : 0);
    if (smem > (size_t)c->max_smem_optin)
        return slm_err_set(err, SLM_EINVAL, "sparsegpt_block: a block of %d columns needs %zu bytes of shared memory (%d available)",
                           cnt, smem, c->max_smem_optin);
    if (smem > 48 * 1024) CU_TRY(cudaFuncSetAttribute(k_sgpt_block, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    unsigned grid = (unsigned)((a->rows + SGPT_WARPS - 1) / SGPT_WARPS);
    k_sgpt_block<<<grid, SGPT_WARPS * 32, smem, c->stream>>>(*a, smem_h);
    CU_LAUNCH_TRY("sparsegpt block");
    return 0;
}
