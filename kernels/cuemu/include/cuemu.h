/*
** kernels/cuemu/include/cuemu.h: just enough of CUDA, cuBLAS, cuSOLVER and CUB for kernels/cuda to
** compile as C++ and run on the CPU (meson -Dcuemu=true), so the CUDA backend's host code and
** kernels run their tests on a machine without a GPU.
**
** Execution model: a launch runs its blocks one after another; a block's threads are fibers
** (ucontext) on the calling thread, switched only at __syncthreads, __syncwarp and warp shuffles.
** So __shared__ is a static (one block at a time), atomics are plain read-modify-writes, and a
** barrier some threads never reach is reported as a deadlock naming the kernel. "Device" memory
** is host memory filled with NaN on allocation; streams and events are synchronous. What this
** cannot show: data races, warp-synchronous code without a sync, TF32 rounding, timing.
** The launch syntax and extern __shared__ arrays are rewritten by cu2cpp.py beforehand.
*/
#ifndef CUEMU_H
#define CUEMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- the language ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct int4 { int x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{ x, y, z, w }; }
static inline float2 make_float2(float x, float y) { return float2{ x, y }; }

/* the running fiber's coordinates */
struct cuemu_coords { uint3 thread, block; dim3 bdim, gdim; };
extern struct cuemu_coords cuemu_now;
#define threadIdx (cuemu_now.thread)
#define blockIdx (cuemu_now.block)
#define blockDim (cuemu_now.bdim)
#define gridDim (cuemu_now.gdim)
static const int warpSize = 32;

void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
void *cuemu_dynamic_smem(void);

/* A warp exchange: every lane of mask offers v; each gets the value of lane src_of(lane). */
uint64_t cuemu_shuffle(unsigned mask, uint64_t v, int mode, int arg, int width);
enum { CUEMU_SHFL_IDX, CUEMU_SHFL_XOR, CUEMU_SHFL_DOWN, CUEMU_SHFL_UP };
template <typename T> static inline T cuemu_shfl_(unsigned mask, T v, int mode, int arg, int width)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a wider type");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = cuemu_shuffle(mask, bits, mode, arg, width);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}
template <typename T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) { return cuemu_shfl_(m, v, CUEMU_SHFL_IDX, src, w); }
template <typename T> static inline T __shfl_xor_sync(unsigned m, T v, int x, int w = 32) { return cuemu_shfl_(m, v, CUEMU_SHFL_XOR, x, w); }
template <typename T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) { return cuemu_shfl_(m, v, CUEMU_SHFL_DOWN, (int)d, w); }
template <typename T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) { return cuemu_shfl_(m, v, CUEMU_SHFL_UP, (int)d, w); }

/* One fiber runs at a time and switches only at a sync: a plain update is atomic. */
template <typename T> static inline T atomicAdd(T *p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> static inline T atomicMax(T *p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <typename T> static inline T atomicMin(T *p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <typename T> static inline T atomicExch(T *p, T v) { T old = *p; *p = v; return old; }
template <typename T> static inline T atomicCAS(T *p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

/* intrinsics: round-to-nearest f32/f64 arithmetic (the C build has -ffp-contract=off) */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
template <typename T> static inline T __ldg(const T *p) { return *p; }
/* CUDA's device code has min/max overloads for every arithmetic type */
template <typename A, typename B> static inline auto min(A a, B b) -> typename std::common_type<A, B>::type
{ return b < a ? b : a; }
template <typename A, typename B> static inline auto max(A a, B b) -> typename std::common_type<A, B>::type
{ return a < b ? b : a; }

/* ---- the runtime ---- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef struct cuemu_stream *cudaStream_t;
typedef struct cuemu_event *cudaEvent_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaMemoryType { cudaMemoryTypeUnregistered, cudaMemoryTypeHost, cudaMemoryTypeDevice, cudaMemoryTypeManaged };
struct cudaPointerAttributes { enum cudaMemoryType type; int device; void *devicePointer, *hostPointer; };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 1u
#define cudaEventDisableTiming 2u
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
    int major, minor, multiProcessorCount, warpSize, maxThreadsPerBlock, pciBusID, pciDeviceID, pciDomainID;
    int maxThreadsDim[3], maxGridSize[3];
};

const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetPCIBusId(char *out, int len, int d);
cudaError_t cudaMalloc(void **p, size_t n);
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p);
cudaError_t cudaMemGetInfo(size_t *free_, size_t *total);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind k, cudaStream_t s = 0);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cuemu_func_set_attribute(const void *fn, enum cudaFuncAttribute a, int v);
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *fn, enum cudaFuncAttribute a, int v)
{ return cuemu_func_set_attribute((const void *)fn, a, v); }

/* A launch: checks the configuration as the driver does (the error is cudaGetLastError's), then
** runs fn(args...) once per thread. */
struct cuemu_thread_fn { void (*call)(void *); void *ctx; };
cudaError_t cuemu_run(dim3 grid, dim3 block, size_t smem, const char *name, const void *fn, struct cuemu_thread_fn body);
template <typename... P, typename... A>
static inline void cuemu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, const char *name, void (*fn)(P...), A &&...a)
{
    std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
    struct bound { void (*fn)(P...); decltype(args) *argv; } b = { fn, &args };
    struct cuemu_thread_fn body = { [](void *ctx) { bound *x = (bound *)ctx; std::apply(x->fn, *x->argv); }, &b };
    cuemu_run(grid, block, smem, name, (const void *)fn, body);
}

/* ---- cuBLAS (column-major, host-pointer scalars; the subset kernels/cuda calls) ---- */
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_ALLOC_FAILED = 3,
               CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 } cublasStatus_t;
typedef struct cuemu_blas *cublasHandle_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 } cublasFillMode_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TENSOR_OP_MATH = 1, CUBLAS_PEDANTIC_MATH = 2,
               CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69, CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
               CUBLAS_COMPUTE_64F = 70 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 } cublasGemmAlgo_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType;
typedef cudaDataType cudaDataType_t;
cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m);
const char *cublasGetStatusString(cublasStatus_t s);
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, long long sA,
                                         const float *B, int ldb, long long sB, const float *beta, float *C, int ldc,
                                         long long sC, int batch);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType ta_, int lda, const void *B, cudaDataType tb_,
                            int ldb, const void *beta, void *C, cudaDataType tc, int ldc, cublasComputeType_t ct,
                            cublasGemmAlgo_t algo);
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType ta_, int lda,
                                          long long sA, const void *B, cudaDataType tb_, int ldb, long long sB,
                                          const void *beta, void *C, cudaDataType tc, int ldc, long long sC, int batch,
                                          cublasComputeType_t ct, cublasGemmAlgo_t algo);
cublasStatus_t cublasDsyrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k,
                           const double *alpha, const double *A, int lda, const double *beta, double *C, int ldc);

/* ---- cuSOLVER (dense; LAPACK underneath, the same argument checks) ---- */
typedef enum { CUSOLVER_STATUS_SUCCESS = 0, CUSOLVER_STATUS_NOT_INITIALIZED = 1, CUSOLVER_STATUS_ALLOC_FAILED = 2,
               CUSOLVER_STATUS_INVALID_VALUE = 3, CUSOLVER_STATUS_ARCH_MISMATCH = 4,
               CUSOLVER_STATUS_MAPPING_ERROR = 5, CUSOLVER_STATUS_EXECUTION_FAILED = 6, CUSOLVER_STATUS_INTERNAL_ERROR = 7,
               CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED = 8, CUSOLVER_STATUS_NOT_SUPPORTED = 9 } cusolverStatus_t;
typedef struct cuemu_solver *cusolverDnHandle_t;
typedef enum { CUSOLVER_EIG_MODE_NOVECTOR = 0, CUSOLVER_EIG_MODE_VECTOR = 1 } cusolverEigMode_t;
cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h);
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h);
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t s);
cusolverStatus_t cusolverDnSpotrf_bufferSize(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, int *lwork);
cusolverStatus_t cusolverDnSpotrf(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, float *work,
                                  int lwork, int *info);
cusolverStatus_t cusolverDnSpotri_bufferSize(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, int *lwork);
cusolverStatus_t cusolverDnSpotri(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, float *work,
                                  int lwork, int *info);
cusolverStatus_t cusolverDnDsyevd_bufferSize(cusolverDnHandle_t h, cusolverEigMode_t jobz, cublasFillMode_t uplo, int n,
                                             const double *A, int lda, const double *W, int *lwork);
cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t h, cusolverEigMode_t jobz, cublasFillMode_t uplo, int n, double *A,
                                  int lda, double *W, double *work, int lwork, int *info);
cusolverStatus_t cusolverDnSgesvd_bufferSize(cusolverDnHandle_t h, int m, int n, int *lwork);
cusolverStatus_t cusolverDnSgesvd(cusolverDnHandle_t h, signed char jobu, signed char jobvt, int m, int n, float *A,
                                  int lda, float *S, float *U, int ldu, float *VT, int ldvt, float *work, int lwork,
                                  float *rwork, int *info);

#endif
