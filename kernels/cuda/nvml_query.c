/*
** kernels/cuda/nvml_query.c: GPU memory in use and utilisation through NVML, for the daemon's
** capabilities and metrics. libnvidia-ml ships with the driver, not the toolkit, so it is
** dlopen'ed (a missing library is no error: the figures read -1), and only the four calls used
** are declared here, with NVML's documented signatures.
*/
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>

#include "../kbackend.h"
#include "../kbackend_impl.h"

typedef int nvml_return;                   /* nvmlReturn_t: 0 = NVML_SUCCESS */
typedef struct nvml_device *nvml_device;   /* nvmlDevice_t */
struct nvml_memory { unsigned long long total, free, used; };
struct nvml_utilization { unsigned int gpu, memory; };

static struct {
    nvml_return (*init)(void);
    nvml_return (*by_pci)(const char *bus_id, nvml_device *dev);
    nvml_return (*memory)(nvml_device dev, struct nvml_memory *m);
    nvml_return (*utilization)(nvml_device dev, struct nvml_utilization *u);
    int ok;
} nv;
static pthread_once_t nv_once = PTHREAD_ONCE_INIT;

static void nv_load(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    *(void **)&nv.init = dlsym(h, "nvmlInit_v2");
    *(void **)&nv.by_pci = dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    *(void **)&nv.memory = dlsym(h, "nvmlDeviceGetMemoryInfo");
    *(void **)&nv.utilization = dlsym(h, "nvmlDeviceGetUtilizationRates");
    nv.ok = nv.init && nv.by_pci && nv.memory && nv.utilization && nv.init() == 0;
}

void kgpu_nvml_query(const char *pci_bus_id, int64_t *memory_used, int *utilization)
{
    nvml_device d;
    struct nvml_memory m;
    struct nvml_utilization u;
    *memory_used = -1;
    *utilization = -1;
    pthread_once(&nv_once, nv_load);
    if (!nv.ok || nv.by_pci(pci_bus_id, &d)) return;
    if (nv.memory(d, &m) == 0) *memory_used = (int64_t)m.used;
    if (nv.utilization(d, &u) == 0) *utilization = (int)u.gpu;
}
