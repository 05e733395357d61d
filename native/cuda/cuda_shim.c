/* libvgpu-cuda.so: the CUDA driver's library state (cuInit), its local answers (versions,
 * entry points, error texts) and the translation of transport failures into CUresult codes.
 * Every other export is a generated stub that calls vgpu_cuda_dispatch. */
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"
#include "vgpu_wire.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int connected; /* a connection exists, perhaps only for cuDriverGetVersion */

static __thread CUcontext current_context;
static uint64_t current_context_id(void);

static vgpu_api api = {.name = "cuda", .prefix = "vgpu-cuda", .call_context = current_context_id};

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

void vgpu_cuda_log(int level, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    vgpu_log(level, api.prefix, "%s", line);
}

/* ---- contexts: primary contexts, and each thread's current context ----
 * A primary context is a handle standing for (this process, device); vgpud learns of
 * contexts when work names them.  The current context is per thread, as in the driver. */

#define PRIMARY_CONTEXT_ID 0x100000000ull

typedef struct primary_state {
    int retained;
    unsigned flags;
} primary_state;

static primary_state primaries[64];

/* Sent with every call: vgpud's driver needs the calling thread's current context. */
static uint64_t current_context_id(void) {
    uint64_t id = 0;
    if (current_context) vgpu_handle_id(vgpu_cuda_handle_CUcontext, current_context, &id);
    return id;
}

static int context_device(CUcontext ctx, CUdevice *dev) {
    uint64_t id;
    if (!ctx || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0 || !(id & PRIMARY_CONTEXT_ID)) return -1;
    *dev = (CUdevice)(id & 0xffffffffu);
    return 0;
}

CUresult vgpu_cuda_primary_context(CUcontext *ctx, CUdevice dev) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    CUdevice checked;
    CUresult rc = cuDeviceGet(&checked, dev);
    if (rc != CUDA_SUCCESS) return rc;
    if (dev < 0 || dev >= (int)(sizeof primaries / sizeof *primaries)) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = vgpu_handle_for(vgpu_cuda_handle_CUcontext, PRIMARY_CONTEXT_ID | (uint64_t)dev);
    return *ctx ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    CUresult rc = vgpu_cuda_primary_context(pctx, dev);
    if (rc == CUDA_SUCCESS) __atomic_add_fetch(&primaries[dev].retained, 1, __ATOMIC_SEQ_CST);
    return rc;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    CUcontext ctx;
    CUresult rc = vgpu_cuda_primary_context(&ctx, dev);
    if (rc != CUDA_SUCCESS) return rc;
    if (__atomic_load_n(&primaries[dev].retained, __ATOMIC_SEQ_CST) <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (__atomic_sub_fetch(&primaries[dev].retained, 1, __ATOMIC_SEQ_CST) == 0)
        vgpu_cuda_context_storage_release(ctx);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }

VGPU_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active) {
    CUcontext ctx;
    if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = vgpu_cuda_primary_context(&ctx, dev);
    if (rc != CUDA_SUCCESS) return rc;
    *flags = primaries[dev].flags;
    *active = __atomic_load_n(&primaries[dev].retained, __ATOMIC_SEQ_CST) > 0;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
    CUcontext ctx;
    CUresult rc = vgpu_cuda_primary_context(&ctx, dev);
    if (rc != CUDA_SUCCESS) return rc;
    if (flags & ~(0x07u | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX | CU_CTX_COREDUMP_ENABLE |
                  CU_CTX_USER_COREDUMP_ENABLE | CU_CTX_SYNC_MEMOPS))
        return CUDA_ERROR_INVALID_VALUE;
    primaries[dev].flags = flags;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags) {
    return cuDevicePrimaryCtxSetFlags_v2(dev, flags);
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    CUcontext ctx;
    CUresult rc = vgpu_cuda_primary_context(&ctx, dev);
    if (rc != CUDA_SUCCESS) return rc;
    vgpu_cuda_context_storage_release(ctx);
    primaries[dev].flags = 0;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxReset_v2(dev); }

VGPU_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    *pctx = current_context;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    CUdevice dev;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && context_device(ctx, &dev) < 0) return CUDA_ERROR_INVALID_CONTEXT;
    current_context = ctx;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    return context_device(current_context, device) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

VGPU_EXPORT CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx) {
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    return context_device(ctx ? ctx : current_context, device) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* Lazy unless CUDA_MODULE_LOADING=EAGER, as in drivers since CUDA 12.2. */
VGPU_EXPORT CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode) {
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    const char *env = getenv("CUDA_MODULE_LOADING");
    *mode = env && !strcmp(env, "EAGER") ? CU_MODULE_EAGER_LOADING : CU_MODULE_LAZY_LOADING;
    return CUDA_SUCCESS;
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
    case VGPU_CALL_TOO_BIG:
        vgpu_log(1, api.prefix, "%s: transfers above %u MiB in one call are not supported yet", fn->name,
                 (unsigned)(VGPU_MAX_PAYLOAD >> 20));
        return CUDA_ERROR_INVALID_VALUE;
    default:
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    }
}
