/*
** kernels/cuda/attention_cuda.cu: fused causal attention (flash-attention style), f32.
** A block takes BQ = WARPS * ROWS query rows of one (sequence, head) and walks the key/value
** sequence in tiles of 32 keys held in shared memory, keeping a running max m, running sum l and
** the output accumulator per row (online softmax): no T x T matrix exists anywhere.
** Inside a warp, lane j scores key j of the tile against the warp's ROWS query rows (K rows padded
** to hd+1 floats: conflict-free), then lane d accumulates output dims d, d+32, ... with p_j
** broadcast by shuffles. HDC = ceil(hd/32) is a template parameter so accumulators stay in
** registers; hd <= 256. Blocks are issued last-rows-first, since late rows see the most keys.
** Two kernels: k_attention4 (hd % 4 == 0 and hd <= 128: OPT, LLaMA, Phi) reads shared memory
** 16 bytes at a time with 8 rows per warp; k_attention is the scalar fallback for other widths.
** GQA: query head h reads KV head h / (H / Hkv).
** SLIM_CUDA_ATTN=gemm selects the chunked cuBLAS path below instead (attention_gemm), and
** SLIM_CUDA_ATTN=tiled the register-tiled kernel (k_attention_tiled) for head dims 64 and 128.
*/
#include "cuda_common.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ATT_WARPS 8
#define ATT_ROWS 4
#define ATT_BQ (ATT_WARPS * ATT_ROWS)
#define ATT_BK 32

template <int HDC>
__global__ static void __launch_bounds__(ATT_WARPS * 32)
k_attention(struct kattn_args a)
{
    extern __shared__ float sm[];
    const int hd = a.hd, T = a.T, kp = hd + 1;
    float *Ks = sm;                          /* [BK][hd+1] */
    float *Vs = Ks + ATT_BK * kp;            /* [BK][hd] */
    float *Qs = Vs + ATT_BK * hd;            /* [BQ][hd] */
    const int qblk = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int g = a.H / a.Hkv, kvh = h / g;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = qblk * ATT_BQ;
    const float *qg = a.q + (size_t)b * T * a.q_stride + (size_t)h * hd;
    const float *kg = a.k + (size_t)b * T * a.kv_stride + (size_t)kvh * hd;
    const float *vg = a.v + (size_t)b * T * a.kv_stride + (size_t)kvh * hd;

    for (int i = threadIdx.x; i < ATT_BQ * hd; i += blockDim.x) {
        int r = i / hd, d = i % hd, t = q0 + r;
        Qs[i] = t < T ? qg[(size_t)t * a.q_stride + d] : 0.0f;
    }

    /* the warp's rows: q0 + warp + WARPS * rr (interleaved so warps finish together) */
    float m[ATT_ROWS], l[ATT_ROWS], acc[ATT_ROWS][HDC];
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < HDC; c++) acc[rr][c] = 0.0f;
    }
    const int last_row = min(q0 + ATT_BQ, T) - 1;
    for (int k0 = 0; k0 <= last_row; k0 += ATT_BK) {
        __syncthreads(); /* previous tile fully consumed (and Qs written, first time) */
        for (int i = threadIdx.x; i < ATT_BK * hd; i += blockDim.x) {
            int j = i / hd, d = i % hd, t = k0 + j;
            bool ok = t < T;
            Ks[j * kp + d] = ok ? kg[(size_t)t * a.kv_stride + d] : 0.0f;
            Vs[j * hd + d] = ok ? vg[(size_t)t * a.kv_stride + d] : 0.0f;
        }
        __syncthreads();
        /* scores: lane = key j */
        float s[ATT_ROWS];
#pragma unroll
        for (int rr = 0; rr < ATT_ROWS; rr++) s[rr] = 0.0f;
        const float *kr = Ks + lane * kp;
        for (int d = 0; d < hd; d++) {
            float kv = kr[d];
#pragma unroll
            for (int rr = 0; rr < ATT_ROWS; rr++) s[rr] += Qs[(warp + ATT_WARPS * rr) * hd + d] * kv;
        }
        const int key = k0 + lane;
        float p[ATT_ROWS];
#pragma unroll
        for (int rr = 0; rr < ATT_ROWS; rr++) {
            int t = q0 + warp + ATT_WARPS * rr;
            float sc = key <= t ? s[rr] * a.scale : -INFINITY;
            float mx = sc;
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float mn = fmaxf(m[rr], mx);
            /* mn is finite once key 0 was seen, which the first tile guarantees for every row */
            float pj = mn == -INFINITY ? 0.0f : expf(sc - mn);
            float corr = m[rr] == -INFINITY ? 0.0f : expf(m[rr] - mn);
            float ps = pj;
            for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l[rr] = l[rr] * corr + ps;
            m[rr] = mn;
#pragma unroll
            for (int c = 0; c < HDC; c++) acc[rr][c] *= corr;
            p[rr] = pj;
        }
        /* acc[d] += sum_j p_j V[j][d], lane owns d = lane + 32 c */
        for (int j = 0; j < ATT_BK; j++) {
            float pj[ATT_ROWS];
#pragma unroll
            for (int rr = 0; rr < ATT_ROWS; rr++) pj[rr] = __shfl_sync(0xffffffffu, p[rr], j);
#pragma unroll
            for (int c = 0; c < HDC; c++) {
                int d = lane + 32 * c;
                float vv = d < hd ? Vs[j * hd + d] : 0.0f;
#pragma unroll
                for (int rr = 0; rr < ATT_ROWS; rr++) acc[rr][c] += pj[rr] * vv;
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        int t = q0 + warp + ATT_WARPS * rr;
        if (t >= T) continue;
        float inv = 1.0f / l[rr];
        float *o = a.out + ((size_t)b * T + t) * a.out_stride + (size_t)h * hd;
#pragma unroll
        for (int c = 0; c < HDC; c++) {
            int d = lane + 32 * c;
            if (d < hd) o[d] = acc[rr][c] * inv;
        }
    }
}

/* The fast variant for hd % 4 == 0: 8 rows per warp, 16-byte shared-memory reads. Scores read
** K rows (stride hd+4: conflict-free float4 per quarter-warp) against broadcast float4 Q rows;
** the probabilities go through shared memory so PV reads them four keys at a time. */
#define AT4_ROWS 8

template <int HDC, int WARPS>
__global__ static void __launch_bounds__(WARPS * 32)
k_attention4(struct kattn_args a)
{
    extern __shared__ float4 sm4[];
    const int hd = a.hd, T = a.T, hd4 = hd / 4, kp4 = hd4 + 1;
    float4 *Ks = sm4;                        /* [BK][hd/4 + 1] */
    float *Vs = (float *)(Ks + ATT_BK * kp4); /* [BK][hd] */
    float4 *Qs = (float4 *)(Vs + ATT_BK * hd);/* [BQ][hd/4] */
    float *Ps = (float *)(Qs + (WARPS * AT4_ROWS) * hd4); /* [WARPS][ROWS][BK] */
    const int qblk = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (a.H / a.Hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = qblk * (WARPS * AT4_ROWS);
    const float *qg = a.q + (size_t)b * T * a.q_stride + (size_t)h * hd;
    const float *kg = a.k + (size_t)b * T * a.kv_stride + (size_t)kvh * hd;
    const float *vg = a.v + (size_t)b * T * a.kv_stride + (size_t)kvh * hd;
    float *Pw = Ps + warp * AT4_ROWS * ATT_BK;

    float *Qf = (float *)Qs;
    for (int i = threadIdx.x; i < (WARPS * AT4_ROWS) * hd; i += blockDim.x) {
        int r = i / hd, d = i % hd, t = q0 + r;
        Qf[i] = t < T ? qg[(size_t)t * a.q_stride + d] : 0.0f;
    }
    float m[AT4_ROWS], l[AT4_ROWS], acc[AT4_ROWS][HDC];
#pragma unroll
    for (int rr = 0; rr < AT4_ROWS; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < HDC; c++) acc[rr][c] = 0.0f;
    }
    const int last_row = min(q0 + (WARPS * AT4_ROWS), T) - 1;
    for (int k0 = 0; k0 <= last_row; k0 += ATT_BK) {
        __syncthreads();
        float *Kf = (float *)Ks;
        for (int i = threadIdx.x; i < ATT_BK * hd; i += blockDim.x) {
            int j = i / hd, d = i % hd, t = k0 + j;
            bool ok = t < T;
            Kf[j * kp4 * 4 + d] = ok ? kg[(size_t)t * a.kv_stride + d] : 0.0f;
            Vs[j * hd + d] = ok ? vg[(size_t)t * a.kv_stride + d] : 0.0f;
        }
        __syncthreads();
        float s[AT4_ROWS];
#pragma unroll
        for (int rr = 0; rr < AT4_ROWS; rr++) s[rr] = 0.0f;
        const float4 *kr = Ks + lane * kp4;
        for (int d4 = 0; d4 < hd4; d4++) {
            float4 kv = kr[d4];
#pragma unroll
            for (int rr = 0; rr < AT4_ROWS; rr++) {
                float4 qv = Qs[(warp + WARPS * rr) * hd4 + d4];
                s[rr] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
            }
        }
        const int key = k0 + lane;
#pragma unroll
        for (int rr = 0; rr < AT4_ROWS; rr++) {
            int t = q0 + warp + WARPS * rr;
            float sc = key <= t ? s[rr] * a.scale : -INFINITY;
            float mx = sc;
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float mn = fmaxf(m[rr], mx);
            float pj = mn == -INFINITY ? 0.0f : expf(sc - mn);
            float corr = m[rr] == -INFINITY ? 0.0f : expf(m[rr] - mn);
            float ps = pj;
            for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l[rr] = l[rr] * corr + ps;
            m[rr] = mn;
#pragma unroll
            for (int c = 0; c < HDC; c++) acc[rr][c] *= corr;
            Pw[rr * ATT_BK + lane] = pj;
        }
        __syncwarp();
        for (int j4 = 0; j4 < ATT_BK / 4; j4++) {
            float4 pv[AT4_ROWS];
#pragma unroll
            for (int rr = 0; rr < AT4_ROWS; rr++) pv[rr] = ((const float4 *)(Pw + rr * ATT_BK))[j4];
#pragma unroll
            for (int c = 0; c < HDC; c++) {
                int d = lane + 32 * c;
                if (d < hd) {
                    const float *vc = Vs + (4 * j4) * hd + d;
                    float v0 = vc[0], v1 = vc[hd], v2 = vc[2 * hd], v3 = vc[3 * hd];
#pragma unroll
                    for (int rr = 0; rr < AT4_ROWS; rr++)
                        acc[rr][c] += pv[rr].x * v0 + pv[rr].y * v1 + pv[rr].z * v2 + pv[rr].w * v3;
                }
            }
        }
        __syncwarp(); /* Pw is rewritten by the next tile */
    }
#pragma unroll
    for (int rr = 0; rr < AT4_ROWS; rr++) {
        int t = q0 + warp + WARPS * rr;
        if (t >= T) continue;
        float inv = 1.0f / l[rr];
        float *o = a.out + ((size_t)b * T + t) * a.out_stride + (size_t)h * hd;
#pragma unroll
        for (int c = 0; c < HDC; c++) {
            int d = lane + 32 * c;
            if (d < hd) o[d] = acc[rr][c] * inv;
        }
    }
}

template <int HDC, int WARPS>
static int launch4(struct cu_ctx *c, const struct kattn_args *a, struct slm_err *err)
{
    const int bq = WARPS * AT4_ROWS;
    size_t smem = (size_t)(ATT_BK * (a->hd + 4) + ATT_BK * a->hd + bq * a->hd + bq * ATT_BK) * sizeof(float);
    if (smem > (size_t)c->max_smem_optin)
        return slm_err_set(err, SLM_EUNSUPPORTED, "attention: head dim %d needs %zu bytes of shared memory, device allows %d",
                           a->hd, smem, c->max_smem_optin);
    if (smem > 48 * 1024)
        CU_TRY((cudaFuncSetAttribute(k_attention4<HDC, WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)));
    dim3 grid((a->T + bq - 1) / bq, a->H, a->B);
    k_attention4<HDC, WARPS><<<grid, WARPS * 32, smem, c->stream>>>(*a);
    CU_LAUNCH_TRY("attention kernel");
    return 0;
}

template <int HDC>
static int launch(struct cu_ctx *c, const struct kattn_args *a, struct slm_err *err)
{
    size_t smem = (size_t)(ATT_BK * (a->hd + 1) + ATT_BK * a->hd + ATT_BQ * a->hd) * sizeof(float);
    if (smem > (size_t)c->max_smem_optin)
        return slm_err_set(err, SLM_EUNSUPPORTED, "attention: head dim %d needs %zu bytes of shared memory, device allows %d",
                           a->hd, smem, c->max_smem_optin);
    if (smem > 48 * 1024)
        CU_TRY(cudaFuncSetAttribute(k_attention<HDC>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((a->T + ATT_BQ - 1) / ATT_BQ, a->H, a->B);
    k_attention<HDC><<<grid, ATT_WARPS * 32, smem, c->stream>>>(*a);
    CU_LAUNCH_TRY("attention kernel");
    return 0;
}

/* ---- the register-tiled kernel (SLIM_CUDA_ATTN=tiled; head dims 64 and 128) ----
** Flash attention shaped like an SGEMM: a block of 256 threads (a 16 x 16 grid ty, tx) takes
** TQ = 64 query rows and walks the keys in tiles of TK = 64. Thread (ty, tx) scores rows ty + 16 i
** against keys tx + 16 j (i, j < 4): per four dims, 8 float4 shared-memory reads feed 64 FMAs,
** where the warp-per-rows kernels above spend a shuffle or a read on every few. Row maxima and
** sums reduce over the 16 lanes of a half-warp. The probabilities then overwrite the K tile
** (64 x 68 floats fit its 64 x (hd + 4)), and the thread accumulates the same rows over dims
** 4 (tx + 16 c) .. + 3: per four keys, 4 + 4 hd/64 float4 reads feed 64 hd/64 FMAs.
** Rows of hd + 4 floats keep every float4 read conflict-free (hd/4 + 1 is odd). Q, K and V are
** read as float4 from global memory, so the pointers must be 16-byte aligned and the strides
** multiples of 4 floats; cu_attention falls back to the kernels above otherwise. Opt-in until it
** is timed on a GPU beside them (tests/bench/gpu_bench.sh). */
#define TA_Q 64
#define TA_K 64
#define TA_THREADS 256

template <int HD>
__global__ static void __launch_bounds__(TA_THREADS, 2)
k_attention_tiled(struct kattn_args a)
{
    constexpr int HD4 = HD / 4, LD4 = HD4 + 1, NC = HD4 / 16, LDP = TA_K + 4;
    static_assert(HD % 64 == 0 && TA_Q * LDP <= TA_K * LD4 * 4, "P must fit in the K tile");
    extern __shared__ float4 smt[];
    float4 *Qs = smt;                   /* [TQ][hd/4 + 1] */
    float4 *Ks = Qs + TA_Q * LD4;       /* [TK][hd/4 + 1], then P [TQ][TK + 4] floats */
    float4 *Vs = Ks + TA_K * LD4;       /* [TK][hd/4 + 1] */
    float *Ps = (float *)Ks;
    const int qblk = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (a.H / a.Hkv), T = a.T, q0 = qblk * TA_Q;
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const float *qg = a.q + (size_t)b * T * a.q_stride + (size_t)h * HD;
    const float *kg = a.k + (size_t)b * T * a.kv_stride + (size_t)kvh * HD;
    const float *vg = a.v + (size_t)b * T * a.kv_stride + (size_t)kvh * HD;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    for (int i = tid; i < TA_Q * HD4; i += TA_THREADS) {
        int r = i / HD4, c = i % HD4, t = q0 + r;
        Qs[r * LD4 + c] = t < T ? *(const float4 *)(qg + (size_t)t * a.q_stride + 4 * c) : zero;
    }
    float m[4], l[4];
    float4 acc[4][NC];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[i][c] = zero;
    }
    const int last_row = min(q0 + TA_Q, T) - 1;
    for (int k0 = 0; k0 <= last_row; k0 += TA_K) {
        __syncthreads(); /* the last tile's P and V consumed (and Qs written, first time) */
        for (int i = tid; i < TA_K * HD4; i += TA_THREADS) {
            int j = i / HD4, c = i % HD4, t = k0 + j;
            bool ok = t < T;
            Ks[j * LD4 + c] = ok ? *(const float4 *)(kg + (size_t)t * a.kv_stride + 4 * c) : zero;
            Vs[j * LD4 + c] = ok ? *(const float4 *)(vg + (size_t)t * a.kv_stride + 4 * c) : zero;
        }
        __syncthreads();
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = 0.0f;
#pragma unroll 4
        for (int c = 0; c < HD4; c++) {
            float4 qv[4], kv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) qv[i] = Qs[(ty + 16 * i) * LD4 + c];
#pragma unroll
            for (int j = 0; j < 4; j++) kv[j] = Ks[(tx + 16 * j) * LD4 + c];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    s[i][j] += qv[i].x * kv[j].x + qv[i].y * kv[j].y + qv[i].z * kv[j].z + qv[i].w * kv[j].w;
        }
        /* online softmax per row over the half-warp's 64 keys */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = q0 + ty + 16 * i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                s[i][j] = k0 + tx + 16 * j <= row ? s[i][j] * a.scale : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float mn = fmaxf(m[i], mx);
            /* mn is finite once key 0 was seen, which the first tile guarantees for every row */
            const float corr = m[i] == -INFINITY ? 0.0f : expf(m[i] - mn);
            float ps = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                s[i][j] = mn == -INFINITY ? 0.0f : expf(s[i][j] - mn);
                ps += s[i][j];
            }
            for (int o = 8; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l[i] = l[i] * corr + ps;
            m[i] = mn;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                acc[i][c].x *= corr; acc[i][c].y *= corr; acc[i][c].z *= corr; acc[i][c].w *= corr;
            }
        }
        __syncthreads(); /* every thread is done with the K tile: P takes its place */
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) Ps[(ty + 16 * i) * LDP + tx + 16 * j] = s[i][j];
        __syncthreads();
#pragma unroll 2
        for (int k4 = 0; k4 < TA_K / 4; k4++) {
            float4 pv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) pv[i] = *(const float4 *)(Ps + (ty + 16 * i) * LDP + 4 * k4);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const float4 *vc = Vs + (4 * k4) * LD4 + tx + 16 * c;
                float4 v0 = vc[0], v1 = vc[LD4], v2 = vc[2 * LD4], v3 = vc[3 * LD4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[i][c].x += pv[i].x * v0.x + pv[i].y * v1.x + pv[i].z * v2.x + pv[i].w * v3.x;
                    acc[i][c].y += pv[i].x * v0.y + pv[i].y * v1.y + pv[i].z * v2.y + pv[i].w * v3.y;
                    acc[i][c].z += pv[i].x * v0.z + pv[i].y * v1.z + pv[i].z * v2.z + pv[i].w * v3.z;
                    acc[i][c].w += pv[i].x * v0.w + pv[i].y * v1.w + pv[i].z * v2.w + pv[i].w * v3.w;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int row = q0 + ty + 16 * i;
        if (row >= T) continue;
        const float inv = 1.0f / l[i];
        float *o = a.out + ((size_t)b * T + row) * a.out_stride + (size_t)h * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float *od = o + 4 * (tx + 16 * c);   /* out may be unaligned: four plain stores */
            od[0] = acc[i][c].x * inv;
            od[1] = acc[i][c].y * inv;
            od[2] = acc[i][c].z * inv;
            od[3] = acc[i][c].w * inv;
        }
    }
}

/* Shared memory of the tiled kernel: the Q, K (then P) and V tiles, rows of hd + 4 floats. */
static size_t tiled_smem(int hd) { return (size_t)(TA_Q + 2 * TA_K) * (hd + 4) * sizeof(float); }

/* Only after tiled_fits, which checks the shared memory. */
template <int HD>
static int launch_tiled(struct cu_ctx *c, const struct kattn_args *a, struct slm_err *err)
{
    size_t smem = tiled_smem(HD);
    if (smem > 48 * 1024)
        CU_TRY(cudaFuncSetAttribute(k_attention_tiled<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((a->T + TA_Q - 1) / TA_Q, a->H, a->B);
    k_attention_tiled<HD><<<grid, TA_THREADS, smem, c->stream>>>(*a);
    CU_LAUNCH_TRY("attention kernel (tiled)");
    return 0;
}

/* Whether the tiled kernel may read q, k and v as float4, and the device gives it its shared memory. */
static bool tiled_fits(const struct cu_ctx *c, const struct kattn_args *a)
{
    uintptr_t addr = (uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v;
    return (a->hd == 64 || a->hd == 128) && addr % 16 == 0 && a->q_stride % 4 == 0 && a->kv_stride % 4 == 0 &&
           tiled_smem(a->hd) <= (size_t)c->max_smem_optin;
}

/* ---- the GEMM path: scores of a chunk of query rows by cuBLAS, causal softmax, P V by cuBLAS ----
** For QC query rows [q0, q0 + QC) of one sequence, S_h = scale Q_h K_h^T over the kv_len = q0 + QC
** keys they may see ([H x QC x kv_len] in global memory: never T x T once T > QC), a row-wise
** causal softmax in place, then out_h = P_h V_h. The GEMMs run at cuBLAS's f32 rate instead of the
** fused kernel's CUDA-core loop; the price is the scores' round trip through memory and up to
** QC/2 masked keys per row. Chosen with SLIM_CUDA_ATTN=gemm until it is timed on a GPU. */
#define ATT_GEMM_QC 512

/* one warp per row of S [rows x kv_len] (row r is query position q0 + r % QC): softmax over keys
** 0..q0 + r % QC, zeros after */
__global__ static void k_softmax_causal(float *S, int nrows, int QC, int kv_len, int q0)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= nrows) return;
    float *s = S + (size_t)row * kv_len;
    int last = q0 + row % QC;   /* the last key this query sees */
    float mx = -INFINITY;
    for (int j = lane; j <= last; j += 32) mx = fmaxf(mx, s[j]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (int j = lane; j <= last; j += 32) {
        float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float inv = 1.0f / sum;
    for (int j = lane; j < kv_len; j += 32) s[j] = j <= last ? s[j] * inv : 0.0f;
}

static int attention_gemm(struct kbackend *kb, const struct kattn_args *a, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    int QC = a->T < ATT_GEMM_QC ? a->T : ATT_GEMM_QC, g = a->H / a->Hkv, rc = 0;
    float *S = NULL;
    RC_GO(cu_pool_alloc(c, (void **)&S, (size_t)a->H * QC * a->T * sizeof(float), err));
    for (int b = 0; b < a->B; b++)
        for (int q0 = 0; q0 < a->T; q0 += QC) {
            int qc = a->T - q0 < QC ? a->T - q0 : QC, kv = q0 + qc;
            const float *qb = a->q + ((size_t)b * a->T + q0) * a->q_stride;
            const float *kb_ = a->k + (size_t)b * a->T * a->kv_stride, *vb = a->v + (size_t)b * a->T * a->kv_stride;
            float *ob = a->out + ((size_t)b * a->T + q0) * a->out_stride;
            size_t sh = (size_t)qc * kv;   /* one head's scores */
            /* query heads i, i + g, ... share KV heads 0, 1, ...: one strided batch per i */
            for (int i = 0; i < g; i++) {
                struct kgemm_args s1 = { .ta = KB_N, .tb = KB_T, .m = qc, .n = kv, .k = a->hd, .alpha = a->scale,
                                         .beta = 0, .a = qb + (size_t)i * a->hd, .lda = a->q_stride,
                                         .stride_a = (int64_t)g * a->hd, .b = kb_, .ldb = a->kv_stride,
                                         .stride_b = a->hd, .c = S + (size_t)i * sh, .ldc = kv,
                                         .stride_c = (int64_t)(g * sh), .batch = a->Hkv, .bf16_inputs = false };
                RC_GO(cu_gemm(kb, &s1, err));
            }
            int nrows = a->H * qc;
            k_softmax_causal<<<(nrows + 7) / 8, 256, 0, c->stream>>>(S, nrows, qc, kv, q0);
            CU_GO(cudaGetLastError());
            for (int i = 0; i < g; i++) {
                struct kgemm_args s2 = { .ta = KB_N, .tb = KB_N, .m = qc, .n = a->hd, .k = kv, .alpha = 1, .beta = 0,
                                         .a = S + (size_t)i * sh, .lda = kv, .stride_a = (int64_t)(g * sh), .b = vb,
                                         .ldb = a->kv_stride, .stride_b = a->hd, .c = ob + (size_t)i * a->hd,
                                         .ldc = a->out_stride, .stride_c = (int64_t)g * a->hd, .batch = a->Hkv, .bf16_inputs = false };
                RC_GO(cu_gemm(kb, &s2, err));
            }
        }
done:
    if (S) cu_pool_release(c, S);
    return rc;
}

int cu_attention(struct kbackend *kb, const struct kattn_args *a, struct slm_err *err)
{
    struct cu_ctx *c = cu_ctx(kb);
    if (a->Hkv <= 0 || a->H % a->Hkv)
        return slm_err_set(err, SLM_EINVAL, "attention: %d heads not a multiple of %d kv heads", a->H, a->Hkv);
    if (a->B < 0 || a->T < 0 || a->hd <= 0 || a->B > 65535 || a->H > 65535)
        return slm_err_set(err, SLM_EINVAL, "attention: bad shape B=%d T=%d H=%d hd=%d", a->B, a->T, a->H, a->hd);
    if (a->B == 0 || a->T == 0 || a->H == 0) return 0;
    const char *path = getenv("SLIM_CUDA_ATTN");
    if (path && !strcmp(path, "gemm")) return attention_gemm(kb, a, err);
    if (path && !strcmp(path, "tiled") && tiled_fits(c, a))
        return a->hd == 64 ? launch_tiled<64>(c, a, err) : launch_tiled<128>(c, a, err);
    /* 8-warp blocks: measured on an H100 (2026-11-23) 0.79 ms per OPT-125M layer at T = 2048
    ** against 1.01 ms with 4-warp blocks, and 2.83 against 4.03 ms for LLaMA-7B's shape */
    if (a->hd % 4 == 0) switch ((a->hd + 31) / 32) {
        case 1: return launch4<1, 8>(c, a, err);
        case 2: return launch4<2, 8>(c, a, err);
        case 3: return launch4<3, 8>(c, a, err);
        case 4: return launch4<4, 8>(c, a, err);
        default: break; /* wider heads: the scalar kernel */
    }
    switch ((a->hd + 31) / 32) {
    case 1: return launch<1>(c, a, err);
    case 2: return launch<2>(c, a, err);
    case 3: return launch<3>(c, a, err);
    case 4: return launch<4>(c, a, err);
    case 5: case 6: return launch<6>(c, a, err);
    case 7: case 8: return launch<8>(c, a, err);
    default:
        return slm_err_set(err, SLM_EUNSUPPORTED, "attention: head dim %d > 256", a->hd);
    }
}
