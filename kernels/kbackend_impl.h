/* kernels/kbackend_impl.h: what backends export to the registry (not for core/). */
#ifndef SLM_KBACKEND_IMPL_H
#define SLM_KBACKEND_IMPL_H
#include "kbackend.h"

int kbackend_cpu_open(struct kbackend **out, struct slm_err *err);
/* "cpu-discrete" (kernels/cpu/backend_discrete.c): the CPU's ops on memory the host cannot touch
** outside them, a test stand-in for a GPU. */
int kbackend_discrete_open(struct kbackend **out, struct slm_err *err);
/* Scalar activation, shared by the CPU backend and tests as the reference. */
float kcpu_act1(float v, enum kact act);
/* Nearest bfloat16 of x (round to nearest even, NaN stays a quiet NaN) as f32, in place over n;
** the CPU backend's round_bf16 and the host fallback of kb_round_bf16. */
void kcpu_round_bf16(float *y, size_t n);
/* The CPU backend's sparsegpt_block (kernels/cpu/sparsegpt_cpu.c). */
int kcpu_sparsegpt_block(struct kbackend *kb, const struct ksgpt_args *a, struct slm_err *err);
/* The col_stats op on host arrays (kbackend.h): the CPU backend's and kb_col_stats' fallback. */
void kcpu_col_stats(float *scaler, double *abssum, const float *x, int rows, int cols, int nseq);
/* The one out-of-memory message of every backend's allocator and budget, returns -SLM_ENOMEM:
** "WHO: out of WHAT memory allocating N bytes[ on WHERE] (X in use by slimd, limit Y)" with a
** budget (limit > 0), else "(X in use by slimd, F of T free)" (dev_total >= 0) or "(X in use by slimd)". */
int kmem_oom(struct slm_err *err, const char *who, const char *what, const char *where, size_t n, uint64_t in_use,
             uint64_t limit, int64_t dev_free, int64_t dev_total);

#ifdef SLM_HAVE_CUDA
/* device < 0: first visible device. -SLM_EUNSUPPORTED if no device. */
int kbackend_cuda_open(struct kbackend **out, int device, struct slm_err *err);
int kbackend_cuda_device_count(void);
/* Name, PCI bus id and total memory from the runtime (kbackend_gpu_info fills the rest). */
int kbackend_cuda_device_info(int i, struct kgpu_info *out, struct slm_err *err);
/* memory_used and utilization of the GPU at pci_bus_id through NVML (dlopen'ed once); -1 each
** when NVML is missing or does not know the device. */
void kgpu_nvml_query(const char *pci_bus_id, int64_t *memory_used, int *utilization);
#endif
#endif
