/* A backend library in the manner of ggml-cuda (what Ollama and llama.cpp load): libcuda.so.1,
 * cudart and cuBLAS are DT_NEEDED entries.  ggml_discover() does what ggml_cuda_init and
 * Ollama's discovery do, and prints one JSON object per device: name, UUID, compute
 * capability, VMM support and granularity, free memory from cudart and from NVML (opened
 * with dlopen and found by UUID, as ggml's mem_nvml.cpp does), a cuBLAS handle and a
 * virtual-memory allocation written and read back. */
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int (*nvml_init_t)(void);
typedef int (*nvml_by_uuid_t)(const char *, void **);
typedef struct { unsigned long long total, free, used; } nvml_memory_t;
typedef int (*nvml_memory_info_t)(void *, nvml_memory_t *);

static long long nvml_free(const char *uuid) {
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_LAZY);
    if (!nvml) return -1;
    nvml_init_t init = (nvml_init_t)dlsym(nvml, "nvmlInit_v2");
    nvml_init_t shutdown = (nvml_init_t)dlsym(nvml, "nvmlShutdown");
    nvml_by_uuid_t by_uuid = (nvml_by_uuid_t)dlsym(nvml, "nvmlDeviceGetHandleByUUID");
    nvml_memory_info_t memory = (nvml_memory_info_t)dlsym(nvml, "nvmlDeviceGetMemoryInfo");
    long long free_bytes = -2;
    void *device = NULL;
    nvml_memory_t info;
    if (init && init() == 0) {
        if (by_uuid(uuid, &device) == 0 && memory(device, &info) == 0) free_bytes = (long long)info.free;
        shutdown();
    }
    dlclose(nvml);
    return free_bytes;
}

/* ggml's VMM pool in miniature: reserve, create, map, grant access, use, undo. */
static int vmm_round_trip(int device, size_t granularity) {
    CUdeviceptr base = 0;
    CUmemGenericAllocationHandle handle = 0;
    CUmemAllocationProp prop = {0};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    CUmemAccessDesc access = {prop.location, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    unsigned char out[4096], back[4096];
    for (int i = 0; i < 4096; i++) out[i] = (unsigned char)(i * 31 + device);
    int ok = cuMemAddressReserve(&base, 4 * granularity, 0, 0, 0) == CUDA_SUCCESS &&
             cuMemCreate(&handle, granularity, &prop, 0) == CUDA_SUCCESS &&
             cuMemMap(base, granularity, 0, handle, 0) == CUDA_SUCCESS &&
             cuMemSetAccess(base, granularity, &access, 1) == CUDA_SUCCESS &&
             cudaMemcpy((void *)(base + 1000), out, sizeof out, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemcpy(back, (void *)(base + 1000), sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
             !memcmp(out, back, sizeof out) && cuMemUnmap(base, granularity) == CUDA_SUCCESS &&
             cuMemRelease(handle) == CUDA_SUCCESS && cuMemAddressFree(base, 4 * granularity) == CUDA_SUCCESS;
    return ok;
}

__attribute__((visibility("default"))) int ggml_discover(void) {
    int count = 0, driver = 0, runtime = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        printf("{\"error\": \"failed to initialize CUDA: %s\"}\n", cudaGetErrorString(status));
        return -1;
    }
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    for (int d = 0; d < count; d++) {
        struct cudaDeviceProp prop;
        cudaGetDeviceProperties(&prop, d);
        char uuid[64];
        const unsigned char *u = (const unsigned char *)prop.uuid.bytes;
        snprintf(uuid, sizeof uuid, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
        CUdevice device;
        int vmm = 0;
        size_t granularity = 0, free_bytes = 0, total = 0;
        cuDeviceGet(&device, d);
        cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device);
        cudaSetDevice(d);
        if (vmm) {
            CUmemAllocationProp alloc = {0};
            alloc.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            alloc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            alloc.location.id = d;
            cuMemGetAllocationGranularity(&granularity, &alloc, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
        }
        cudaMemGetInfo(&free_bytes, &total);
        cublasHandle_t blas = NULL;
        int blas_ok = cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS && cublasDestroy(blas) == CUBLAS_STATUS_SUCCESS;
        printf("{\"index\": %d, \"name\": \"%s\", \"uuid\": \"%s\", \"compute\": \"%d.%d\", \"pci_bus\": %d, "
               "\"integrated\": %d, \"vmm\": %d, \"granularity\": %zu, \"free\": %zu, \"total\": %zu, "
               "\"nvml_free\": %lld, \"cublas\": %d, \"vmm_round_trip\": %d, \"driver\": %d, \"runtime\": %d}\n",
               d, prop.name, uuid, prop.major, prop.minor, prop.pciBusID, prop.integrated, vmm, granularity, free_bytes,
               total, nvml_free(uuid), blas_ok, vmm ? vmm_round_trip(d, granularity) : 0, driver, runtime);
    }
    return count;
}
