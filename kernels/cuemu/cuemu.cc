/*
** kernels/cuemu/cuemu.cc: the CPU emulation of the CUDA runtime, cuBLAS and cuSOLVER that
** include/cuemu.h declares (see there for the model and its limits).
**
** Launches: blocks run in order; a block's threads are fibers on the launching thread, resumed
** round-robin, each until its next barrier. On x86-64 a fiber switch saves the callee-saved
** registers and swaps stacks (no system call); elsewhere it is ucontext's swapcontext. A barrier
** some live thread never reaches is a deadlock: the emulator prints the kernel, block and waiters
** and aborts, as a hung GPU would be noticed. Launch configurations are checked as the driver
** checks them (threads per block, grid limits, dynamic shared memory above 48 KiB only after
** cudaFuncSetAttribute), and dynamic shared memory is refilled with NaN for every block. Copies
** check that their device side lies inside one cudaMalloc'ed allocation. cuBLAS and cuSOLVER
** calls check their arguments as the libraries document and then run OpenBLAS / LAPACKE; TF32
** compute rounds the inputs to TF32 first.
** Environment: CUEMU_MEM_MB (device memory, default 8192); CUEMU_TF32=0 (TF32 GEMMs in full f32);
** CUEMU_TF32_REPORT=1 (name TF32 GEMM operands that are not TF32 values).
*/
#include "cuemu.h"

#include <cblas.h>
#include <lapacke.h>
#include <map>
#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

struct cuemu_coords cuemu_now;

/* ---------------------------------------------------------------- fibers and launches */

enum { F_RUN, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };
enum { STACK_BYTES = 256 * 1024, MAX_THREADS = 1024 };

#if defined(__x86_64__)
/* cuemu_switch(&save, to): push the callee-saved registers, store the stack pointer in *save, load
** `to` and pop that fiber's registers. A new fiber's stack holds six zeros and the entry address. */
extern "C" void cuemu_switch(void **save, void *to);
__asm__(".text\n.globl cuemu_switch\n.type cuemu_switch,@function\ncuemu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size cuemu_switch, .-cuemu_switch\n");
typedef void *fiber_ctx;
#else
typedef ucontext_t fiber_ctx;
#endif

struct fiber {
    fiber_ctx uc;
    char *stack;
    int state;
    unsigned shfl_count;   /* shuffles this lane has made in this block: picks the slot buffer */
};

struct warp_state {
    unsigned arrived;      /* lanes waiting at the current warp barrier */
    unsigned required;     /* the mask of that barrier */
    unsigned done;         /* lanes that have exited */
    uint64_t slot[2][32];  /* shuffle values, double-buffered by shuffle count */
    unsigned wrote[2];
};

static struct {
    std::recursive_mutex lock;   /* one launch at a time: the scheduler state below is global */
    fiber_ctx sched;
    fiber f[MAX_THREADS];
    warp_state w[MAX_THREADS / 32];
    int nt, live, cur, block_arrived;
    unsigned lanes_last_warp;
    struct cuemu_thread_fn body;
    const char *name;
    std::vector<unsigned char> smem;
    std::map<const void *, int> smem_optin;   /* cudaFuncSetAttribute(MaxDynamicSharedMemorySize) */
} L;

static thread_local cudaError_t last_error = cudaSuccess;

static void fail(const char *fmt, const char *a, long b)
{
    fprintf(stderr, "cuemu: kernel %s, block (%u,%u,%u), thread %d: ", L.name, cuemu_now.block.x, cuemu_now.block.y,
            cuemu_now.block.z, L.cur);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    abort();
}

static unsigned warp_lanes(int w)
{
    return w == (L.nt - 1) / 32 ? L.lanes_last_warp : 0xffffffffu;
}

static void release_warp(int w)
{
    warp_state *ws = &L.w[w];
    ws->arrived = 0;
    for (int l = 0; l < 32 && w * 32 + l < L.nt; l++)
        if (L.f[w * 32 + l].state == F_WAIT_WARP) L.f[w * 32 + l].state = F_RUN;
}

/* The barrier of warp w completes when every live lane of its mask has arrived. */
static bool warp_complete(int w)
{
    warp_state *ws = &L.w[w];
    unsigned need = ws->required & warp_lanes(w) & ~ws->done;
    return ws->arrived && (ws->arrived & need) == need;
}

static bool block_complete(void)
{
    return L.block_arrived && L.block_arrived == L.live;
}

static void release_block(void)
{
    L.block_arrived = 0;
    for (int i = 0; i < L.nt; i++)
        if (L.f[i].state == F_WAIT_BLOCK) L.f[i].state = F_RUN;
}

static void switch_to_sched(fiber *f)
{
#if defined(__x86_64__)
    cuemu_switch(&f->uc, L.sched);
#else
    swapcontext(&f->uc, &L.sched);
#endif
}

static void switch_to_fiber(fiber *f)
{
#if defined(__x86_64__)
    cuemu_switch(&L.sched, f->uc);
#else
    swapcontext(&L.sched, &f->uc);
#endif
}

static void yield_as(int state)
{
    fiber *f = &L.f[L.cur];
    f->state = state;
    switch_to_sched(f);
}

void __syncthreads(void)
{
    L.block_arrived++;
    if (block_complete()) release_block();
    else yield_as(F_WAIT_BLOCK);
}

/* Returns whether this lane completed the barrier (the others resume after it yields). */
static bool warp_barrier(unsigned mask)
{
    int w = L.cur / 32, lane = L.cur % 32;
    warp_state *ws = &L.w[w];
    if (!(mask >> lane & 1)) fail("a warp sync with mask %s%lx leaves out the calling lane", "0x", (long)mask);
    if (ws->arrived && ws->required != mask) fail("warp sync masks differ: %s%lx against the first lane's", "0x", (long)mask);
    ws->required = mask;
    ws->arrived |= 1u << lane;
    if (warp_complete(w)) {
        release_warp(w);
        return true;
    }
    yield_as(F_WAIT_WARP);
    return false;
}

void __syncwarp(unsigned mask)
{
    warp_barrier(mask);
}

uint64_t cuemu_shuffle(unsigned mask, uint64_t v, int mode, int arg, int width)
{
    int w = L.cur / 32, lane = L.cur % 32;
    warp_state *ws = &L.w[w];
    fiber *f = &L.f[L.cur];
    int b = f->shfl_count++ & 1;
    if (width < 1 || width > 32 || (width & (width - 1))) fail("shuffle width %s%ld", "", width);
    ws->slot[b][lane] = v;
    ws->wrote[b] |= 1u << lane;
    /* every lane of the mask has written buffer b and read buffer b ^ 1 (the previous shuffle), so
    ** the lane that completes this barrier frees b ^ 1 before any lane can write it again */
    if (warp_barrier(mask)) ws->wrote[b ^ 1] = 0;
    int base = lane & ~(width - 1), src = lane;
    switch (mode) {
    case CUEMU_SHFL_IDX: src = base + (arg & (width - 1)); break;
    case CUEMU_SHFL_XOR: src = lane ^ arg; if (src >= base + width) src = lane; break;
    case CUEMU_SHFL_DOWN: src = lane + arg; if (src >= base + width) src = lane; break;
    case CUEMU_SHFL_UP: src = lane - arg; if (src < base) src = lane; break;
    }
    if (src != lane && !(ws->wrote[b] >> src & 1)) fail("a shuffle reads lane %s%ld, which did not take part", "", src);
    return ws->slot[b][src];
}

void *cuemu_dynamic_smem(void)
{
    return L.smem.data();
}

static void fiber_main(void)
{
    L.body.call(L.body.ctx);
    fiber *f = &L.f[L.cur];
    f->state = F_DONE;
    L.live--;
    /* exited threads no longer hold up barriers (as on Volta and later) */
    int w = L.cur / 32;
    L.w[w].done |= 1u << (L.cur % 32);
    if (warp_complete(w)) release_warp(w);
    if (block_complete()) release_block();
#if defined(__x86_64__)
    switch_to_sched(f);   /* never resumed */
    abort();
#endif
}

static char *stack_for(int i)
{
    if (!L.f[i].stack) {
        void *p = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) { perror("cuemu: fiber stack"); abort(); }
        mprotect(p, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE);   /* overflow faults */
        L.f[i].stack = (char *)p;
    }
    return L.f[i].stack;
}

static void fiber_init(int i)
{
    fiber *f = &L.f[i];
    f->state = F_RUN;
    f->shfl_count = 0;
#if defined(__x86_64__)
    /* entered by cuemu_switch's ret: rsp must then be 8 mod 16, as just after a call */
    void **sp = (void **)(stack_for(i) + STACK_BYTES - 8);
    *--sp = (void *)fiber_main;
    for (int r = 0; r < 6; r++) *--sp = NULL;
    f->uc = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = stack_for(i);
    f->uc.uc_stack.ss_size = STACK_BYTES;
    f->uc.uc_link = &L.sched;
    makecontext(&f->uc, fiber_main, 0);
#endif
}

static void run_block(void)
{
    L.live = L.nt;
    L.block_arrived = 0;
    memset(L.w, 0, sizeof L.w);
    if (!L.smem.empty()) memset(L.smem.data(), 0xff, L.smem.size());   /* NaN: shared memory starts undefined */
    for (int i = 0; i < L.nt; i++) fiber_init(i);
    for (;;) {
        bool ran = false;
        for (int i = 0; i < L.nt; i++) {
            if (L.f[i].state != F_RUN) continue;
            L.cur = i;
            cuemu_now.thread.x = (unsigned)i % cuemu_now.bdim.x;
            cuemu_now.thread.y = (unsigned)i / cuemu_now.bdim.x % cuemu_now.bdim.y;
            cuemu_now.thread.z = (unsigned)i / (cuemu_now.bdim.x * cuemu_now.bdim.y);
            switch_to_fiber(&L.f[i]);
            ran = true;
        }
        if (!L.live) return;
        if (!ran) {
            int wb = 0, ww = 0;
            for (int i = 0; i < L.nt; i++) wb += L.f[i].state == F_WAIT_BLOCK, ww += L.f[i].state == F_WAIT_WARP;
            fprintf(stderr, "cuemu: kernel %s, block (%u,%u,%u): deadlock: %d of %d threads live, %d at __syncthreads, "
                    "%d at a warp sync\n", L.name, cuemu_now.block.x, cuemu_now.block.y, cuemu_now.block.z, L.live, L.nt,
                    wb, ww);
            abort();
        }
    }
}

cudaError_t cuemu_run(dim3 grid, dim3 block, size_t smem, const char *name, const void *fn, struct cuemu_thread_fn body)
{
    std::lock_guard<std::recursive_mutex> g(L.lock);
    size_t nt = (size_t)block.x * block.y * block.z;
    int optin = L.smem_optin.count(fn) ? L.smem_optin[fn] : 0;
    if (!nt || nt > MAX_THREADS || block.z > 64 || !grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 ||
        grid.x > 0x7fffffffu)
        return last_error = cudaErrorInvalidConfiguration;
    if (smem > 48 * 1024 && (int)smem > optin) return last_error = cudaErrorInvalidValue;
    L.nt = (int)nt;
    L.lanes_last_warp = nt % 32 ? (1u << (nt % 32)) - 1 : 0xffffffffu;
    L.body = body;
    L.name = name;
    L.smem.assign(smem, 0xff);
    cuemu_now.bdim = block;
    cuemu_now.gdim = grid;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                cuemu_now.block = uint3{ x, y, z };
                run_block();
            }
    return cudaSuccess;
}

cudaError_t cuemu_func_set_attribute(const void *fn, enum cudaFuncAttribute a, int v)
{
    std::lock_guard<std::recursive_mutex> g(L.lock);
    if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || v > 227 * 1024) return last_error = cudaErrorInvalidValue;
    L.smem_optin[fn] = v;
    return cudaSuccess;
}

/* ---------------------------------------------------------------- memory */

static struct {
    std::mutex lock;
    std::map<const char *, size_t> dev, host;   /* start -> bytes */
    size_t used;
} M;

static size_t mem_total(void)
{
    const char *e = getenv("CUEMU_MEM_MB");
    return (size_t)(e && *e ? atof(e) : 8192.0) * 1024 * 1024;
}

/* Whether [p, p + n) lies inside one allocation of map m. */
static bool inside(const std::map<const char *, size_t> &m, const void *p, size_t n)
{
    const char *c = (const char *)p;
    auto it = m.upper_bound(c);
    if (it == m.begin()) return false;
    --it;
    return c >= it->first && n <= it->second && (size_t)(c - it->first) <= it->second - n;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
    std::lock_guard<std::mutex> g(M.lock);
    *p = NULL;
    if (n > mem_total() - M.used || posix_memalign(p, 256, n ? n : 1)) { *p = NULL; return last_error = cudaErrorMemoryAllocation; }
    memset(*p, 0xff, n);   /* NaN: fresh device memory holds whatever was there */
    M.dev[(const char *)*p] = n;
    M.used += n;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> g(M.lock);
    auto it = M.dev.find((const char *)p);
    if (it == M.dev.end()) return last_error = cudaErrorInvalidValue;
    memset(p, 0xff, it->second);
    M.used -= it->second;
    M.dev.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t n)
{
    std::lock_guard<std::mutex> g(M.lock);
    if (posix_memalign(p, 4096, n ? n : 1)) { *p = NULL; return last_error = cudaErrorMemoryAllocation; }
    M.host[(const char *)*p] = n;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> g(M.lock);
    if (!M.host.erase((const char *)p)) return last_error = cudaErrorInvalidValue;
    free(p);
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p)
{
    std::lock_guard<std::mutex> g(M.lock);
    memset(a, 0, sizeof *a);
    a->type = inside(M.dev, p, 0) ? cudaMemoryTypeDevice : inside(M.host, p, 0) ? cudaMemoryTypeHost : cudaMemoryTypeUnregistered;
    a->devicePointer = a->type == cudaMemoryTypeDevice ? (void *)p : NULL;
    a->hostPointer = a->type == cudaMemoryTypeHost ? (void *)p : NULL;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_, size_t *total)
{
    std::lock_guard<std::mutex> g(M.lock);
    *total = mem_total();
    *free_ = *total - M.used;
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind k, cudaStream_t)
{
    if (!n) return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(M.lock);
        bool dst_dev = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
        bool src_dev = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
        if ((dst_dev && !inside(M.dev, dst, n)) || (src_dev && !inside(M.dev, src, n)) ||
            (!dst_dev && inside(M.dev, dst, 1)) || (!src_dev && inside(M.dev, src, 1))) {
            fprintf(stderr, "cuemu: cudaMemcpy kind %d of %zu bytes from %p to %p: a side is not where the kind says\n",
                    (int)k, n, src, dst);
            return last_error = cudaErrorInvalidValue;
        }
    }
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k)
{
    return cudaMemcpyAsync(dst, src, n, k, 0);
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t)
{
    {
        std::lock_guard<std::mutex> g(M.lock);
        if (n && !inside(M.dev, p, n)) return last_error = cudaErrorInvalidValue;
    }
    memset(p, v, n);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- devices, streams, events */

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "unspecified launch failure";
    }
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : (last_error = cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d)
{
    if (d != 0) return last_error = cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuemu (CUDA emulated on the CPU)");
    p->totalGlobalMem = mem_total();
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->major = 9;
    p->multiProcessorCount = 132;
    p->warpSize = 32;
    p->maxThreadsPerBlock = MAX_THREADS;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *out, int len, int d)
{
    if (d != 0 || len < 13) return last_error = cudaErrorInvalidValue;
    snprintf(out, (size_t)len, "0000:00:00.0");
    return cudaSuccess;
}

struct cuemu_stream { int unused; };
struct cuemu_event { int unused; };
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = new cuemu_stream(); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) { return e ? cudaSuccess : (last_error = cudaErrorInvalidValue); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { *e = new cuemu_event(); return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { return e ? cudaSuccess : (last_error = cudaErrorInvalidValue); }

/* ---------------------------------------------------------------- cuBLAS */

struct cuemu_blas { cublasMath_t math; };

cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new cuemu_blas{ CUBLAS_DEFAULT_MATH }; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

/* TF32 keeps 10 mantissa bits: round to nearest even on the 13 dropped (NaN/Inf unchanged). */
static float to_tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&x, &u, 4);
    return x;
}

/* A column-major operand rounded to TF32: rows x cols with leading dimension ld. With
** CUEMU_TF32_REPORT=1, operands that TF32 changes are reported on stderr (callers that promise
** bf16-valued inputs should never be). */
static std::vector<float> tf32_copy(const float *a, int rows, int cols, int ld, const char *which)
{
    std::vector<float> out((size_t)ld * (cols ? cols - 1 : 0) + (size_t)rows);
    size_t changed = 0;
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++) {
            float v = a[(size_t)j * ld + i], t = to_tf32(v);
            out[(size_t)j * ld + i] = t;
            changed += memcmp(&v, &t, 4) != 0;
        }
    const char *e = getenv("CUEMU_TF32_REPORT");
    if (changed && e && *e == '1')
        fprintf(stderr, "cuemu: TF32 GEMM operand %s (%d x %d): %zu values are not TF32 values\n", which, rows, cols, changed);
    return out;
}

static bool gemm_args_ok(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc)
{
    if (m < 0 || n < 0 || k < 0 || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return false;
    int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    return lda >= (arows > 1 ? arows : 1) && ldb >= (brows > 1 ? brows : 1) && ldc >= (m > 1 ? m : 1);
}

static void sgemm(bool tf32, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (!m || !n) return;
    std::vector<float> a32, b32;
    const char *e = getenv("CUEMU_TF32");
    if (tf32 && k && !(e && *e == '0')) {
        a32 = tf32_copy(A, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda, "A");
        b32 = tf32_copy(B, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb, "B");
        A = a32.data();
        B = b32.data();
    }
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, long long sA,
                                         const float *B, int ldb, long long sB, const float *beta, float *C, int ldc,
                                         long long sC, int batch)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batch; i++)
        sgemm(h->math == CUBLAS_TF32_TENSOR_OP_MATH, ta, tb, m, n, k, *alpha, A + i * sA, lda, B + i * sB, ldb, *beta,
              C + i * sC, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t gemm_ex_ok(cublasHandle_t h, cudaDataType a, cudaDataType b, cudaDataType c, cublasComputeType_t ct)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (a != CUDA_R_32F || b != CUDA_R_32F || c != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;   /* all the backend uses */
    if (ct != CUBLAS_COMPUTE_32F && ct != CUBLAS_COMPUTE_32F_FAST_TF32 && ct != CUBLAS_COMPUTE_32F_PEDANTIC)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType ta_, int lda, const void *B, cudaDataType tb_,
                            int ldb, const void *beta, void *C, cudaDataType tc, int ldc, cublasComputeType_t ct,
                            cublasGemmAlgo_t algo)
{
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, ta_, lda, 0, B, tb_, ldb, 0, beta, C, tc, ldc, 0, 1,
                                      ct, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType ta_, int lda,
                                          long long sA, const void *B, cudaDataType tb_, int ldb, long long sB,
                                          const void *beta, void *C, cudaDataType tc, int ldc, long long sC, int batch,
                                          cublasComputeType_t ct, cublasGemmAlgo_t)
{
    cublasStatus_t s = gemm_ex_ok(h, ta_, tb_, tc, ct);
    if (s) return s;
    if (!gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batch; i++)
        sgemm(ct == CUBLAS_COMPUTE_32F_FAST_TF32, ta, tb, m, n, k, *(const float *)alpha, (const float *)A + i * sA, lda,
              (const float *)B + i * sB, ldb, *(const float *)beta, (float *)C + i * sC, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDsyrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k,
                           const double *alpha, const double *A, int lda, const double *beta, double *C, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    int arows = t == CUBLAS_OP_N ? n : k;
    if (n < 0 || k < 0 || lda < (arows > 1 ? arows : 1) || ldc < (n > 1 ? n : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    if (n)
        cblas_dsyrk(CblasColMajor, uplo == CUBLAS_FILL_MODE_UPPER ? CblasUpper : CblasLower,
                    t == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, n, k, *alpha, A, lda, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- cuSOLVER */

struct cuemu_solver { int unused; };

cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h) { *h = new cuemu_solver(); return CUSOLVER_STATUS_SUCCESS; }
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h) { delete h; return CUSOLVER_STATUS_SUCCESS; }
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t) { return h ? CUSOLVER_STATUS_SUCCESS : CUSOLVER_STATUS_NOT_INITIALIZED; }

/* info is a device word: it must be one */
static cusolverStatus_t put_info(int *info, int v)
{
    std::lock_guard<std::mutex> g(M.lock);
    if (!inside(M.dev, info, sizeof *info)) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = v;
    return CUSOLVER_STATUS_SUCCESS;
}

static char fill(cublasFillMode_t u) { return u == CUBLAS_FILL_MODE_UPPER ? 'U' : 'L'; }

cusolverStatus_t cusolverDnSpotrf_bufferSize(cusolverDnHandle_t h, cublasFillMode_t, int n, float *, int lda, int *lwork)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (n < 0 || lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *lwork = n > 0 ? n : 1;
    return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnSpotrf(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, float *,
                                  int lwork, int *info)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (n < 0 || lda < (n > 1 ? n : 1) || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
    return put_info(info, n ? LAPACKE_spotrf(LAPACK_COL_MAJOR, fill(uplo), n, A, lda) : 0);
}

cusolverStatus_t cusolverDnSpotri_bufferSize(cusolverDnHandle_t h, cublasFillMode_t u, int n, float *A, int lda, int *lwork)
{
    return cusolverDnSpotrf_bufferSize(h, u, n, A, lda, lwork);
}

cusolverStatus_t cusolverDnSpotri(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float *A, int lda, float *,
                                  int lwork, int *info)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (n < 0 || lda < (n > 1 ? n : 1) || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
    return put_info(info, n ? LAPACKE_spotri(LAPACK_COL_MAJOR, fill(uplo), n, A, lda) : 0);
}

cusolverStatus_t cusolverDnDsyevd_bufferSize(cusolverDnHandle_t h, cusolverEigMode_t, cublasFillMode_t, int n,
                                             const double *, int lda, const double *, int *lwork)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (n < 0 || lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    *lwork = 1 + 6 * n + 2 * n * n;
    return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t h, cusolverEigMode_t jobz, cublasFillMode_t uplo, int n, double *A,
                                  int lda, double *W, double *, int lwork, int *info)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (n < 0 || lda < (n > 1 ? n : 1) || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
    return put_info(info, n ? LAPACKE_dsyevd(LAPACK_COL_MAJOR, jobz == CUSOLVER_EIG_MODE_VECTOR ? 'V' : 'N', fill(uplo), n,
                                             A, lda, W) : 0);
}

cusolverStatus_t cusolverDnSgesvd_bufferSize(cusolverDnHandle_t h, int m, int n, int *lwork)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (m < n || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;   /* cuSOLVER's gesvd needs m >= n */
    *lwork = 5 * (m > 1 ? m : 1);
    return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnSgesvd(cusolverDnHandle_t h, signed char jobu, signed char jobvt, int m, int n, float *A,
                                  int lda, float *S, float *U, int ldu, float *VT, int ldvt, float *, int lwork,
                                  float *, int *info)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if (m < n || n < 0 || lda < (m > 1 ? m : 1) || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
    if ((jobu == 'A' || jobu == 'S') && ldu < (m > 1 ? m : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    if (jobvt == 'A' && ldvt < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    if (jobvt == 'S' && ldvt < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
    std::vector<float> superb(n > 1 ? n : 1);
    return put_info(info, n ? LAPACKE_sgesvd(LAPACK_COL_MAJOR, (char)jobu, (char)jobvt, m, n, A, lda, S, U, ldu, VT, ldvt,
                                             superb.data()) : 0);
}
