/* libvgpu-cuda.so: the CUDA driver's library state (cuInit), its local answers (versions,
 * entry points, error texts) and the translation of transport failures into CUresult codes.
 * Every other export is a generated stub that calls vgpu_cuda_dispatch. */
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <string.h>

#include "cuda_shim.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int connected; /* a connection exists, perhaps only for cuDriverGetVersion */

static vgpu_api api = {.name = "cuda", .prefix = "vgpu-cuda"};

/* Connect once (under init_lock); the answer as a vgpu_status. */
static int connect_locked(void) {
    if (connected) return VGPU_OK;
    api.digest = vgpu_cuda_digest;
    api.op_base = vgpu_cuda_op_base;
    api.op_count = vgpu_cuda_op_count;
    int rc = vgpu_open(&api);
    connected = rc == VGPU_OK;
    return rc;
}

/* How many GPUs this process sees (CUDA_VISIBLE_DEVICES applied by vgpud), or -1. */
static int visible_count(void) {
    int count = 0, *where = &count;
    int32_t rc = CUDA_ERROR_UNKNOWN;
    void *const args[] = {(void *)&where};
    if (vgpu_marshal_call(&api, &vgpu_cuda_fn_cuDeviceGetCount, args, &rc) != VGPU_CALL_DONE || rc != CUDA_SUCCESS)
        return -1;
    return count;
}

VGPU_EXPORT CUresult cuInit(unsigned int Flags) {
    if (Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&init_lock);
    int rc = initialized ? VGPU_OK : connect_locked();
    CUresult result = CUDA_SUCCESS;
    if (rc == VGPU_OK && !initialized) {
        if (visible_count() > 0) initialized = 1;
        else result = CUDA_ERROR_NO_DEVICE; /* none left by CUDA_VISIBLE_DEVICES */
    } else if (rc == VGPU_MISMATCH) result = CUDA_ERROR_SYSTEM_DRIVER_MISMATCH;
    else if (rc == VGPU_NO_MEMORY) result = CUDA_ERROR_OUT_OF_MEMORY;
    else if (rc != VGPU_OK) result = CUDA_ERROR_NO_DEVICE; /* what a host without a driver answers */
    pthread_mutex_unlock(&init_lock);
    vgpu_log(3, api.prefix, "cuInit -> %d", result);
    return result;
}

/* Works before cuInit, as the real driver's does: vgpud's version when it answers, else the
 * version of the cuda.h this library was built from. */
VGPU_EXPORT CUresult cuDriverGetVersion(int *driverVersion) {
    if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&init_lock);
    int rc = connect_locked();
    pthread_mutex_unlock(&init_lock);
    int32_t result = CUDA_ERROR_UNKNOWN;
    void *const args[] = {(void *)&driverVersion};
    if (rc == VGPU_OK && vgpu_marshal_call(&api, &vgpu_cuda_fn_cuDriverGetVersion, args, &result) == VGPU_CALL_DONE &&
        result == CUDA_SUCCESS)
        return CUDA_SUCCESS;
    *driverVersion = CUDA_VERSION;
    return CUDA_SUCCESS;
}

static const vgpu_proc_entry *find_proc(const char *name) {
    unsigned lo = 0, hi = vgpu_cuda_proc_count;
    while (lo < hi) { /* the table is sorted by name; a name's rows are adjacent, oldest first */
        unsigned mid = (lo + hi) / 2;
        if (strcmp(vgpu_cuda_procs[mid].name, name) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < vgpu_cuda_proc_count && !strcmp(vgpu_cuda_procs[lo].name, name) ? &vgpu_cuda_procs[lo] : NULL;
}

VGPU_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *symbolStatus) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    const vgpu_proc_entry *row = find_proc(symbol), *chosen = NULL;
    for (; row && row < vgpu_cuda_procs + vgpu_cuda_proc_count && !strcmp(row->name, symbol); row++)
        if (row->version <= cudaVersion) chosen = row;
    if (!chosen) {
        if (symbolStatus)
            *symbolStatus = find_proc(symbol) ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                                              : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        vgpu_log(3, api.prefix, "cuGetProcAddress(%s, %d): not found", symbol, cudaVersion);
        return CUDA_ERROR_NOT_FOUND;
    }
    int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && chosen->per_thread &&
                     chosen->per_thread_version <= cudaVersion;
    *pfn = per_thread ? chosen->per_thread : chosen->symbol;
    if (symbolStatus) *symbolStatus = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, NULL);
}

/* The private tables NVIDIA's runtime asks for are not served yet: refused the way a driver
 * refuses an id it does not know, with no table. */
VGPU_EXPORT CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
    if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
    *ppExportTable = NULL;
    const unsigned char *id = (const unsigned char *)pExportTableId->bytes;
    vgpu_log(2, api.prefix, "cuGetExportTable(%02x%02x%02x%02x-...) refused: not served yet", id[0], id[1], id[2],
             id[3]);
    return CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuGetErrorName(CUresult error, const char **pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = vgpu_cuda_error_name((int)error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuGetErrorString(CUresult error, const char **pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = vgpu_cuda_error_name((int)error) ? vgpu_cuda_error_text((int)error) : NULL;
    if (*pStr == NULL && vgpu_cuda_error_name((int)error)) *pStr = "unknown error";
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

int vgpu_cuda_dispatch(const vgpu_function *fn, void *const *args) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    int32_t rc = CUDA_ERROR_UNKNOWN;
    switch (vgpu_marshal_call(&api, fn, args, &rc)) {
    case VGPU_CALL_DONE:
        vgpu_log(3, api.prefix, "%s -> %d", fn->name, rc);
        return rc;
    case VGPU_CALL_UNSUPPORTED:
        return CUDA_ERROR_NOT_SUPPORTED;
    case VGPU_CALL_BAD_HANDLE:
        return CUDA_ERROR_INVALID_HANDLE;
    default:
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    }
}
