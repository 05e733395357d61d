/* libvgpu-cuda.so: the CUDA driver's library state (cuInit), its local answers (versions,
 * entry points, error texts) and the translation of transport failures into CUresult codes.
 * Every other export is a generated stub that calls vgpu_cuda_dispatch. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"
#include "vgpu_wire.h"

/* What `vgpu ps` and `vgpu doctor` read to tell this library from NVIDIA's (pyelftools). */
__attribute__((section(".vgpu"), used)) static const char vgpu_identity[] = "vgpu libvgpu-cuda.so " VGPU_PACKAGE_VERSION;

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
        if (visible_count() > 0) {
            initialized = 1;
            vgpu_prefetch_facts(&api); /* device facts in one round trip; a failure only costs speed */
        } else {
            result = CUDA_ERROR_NO_DEVICE; /* none left by CUDA_VISIBLE_DEVICES */
        }
    } else if (rc == VGPU_MISMATCH) result = CUDA_ERROR_SYSTEM_DRIVER_MISMATCH;
    else if (rc == VGPU_NO_MEMORY) result = CUDA_ERROR_OUT_OF_MEMORY;
    else if (rc != VGPU_OK) result = CUDA_ERROR_NO_DEVICE; /* what a host without a driver answers */
    pthread_mutex_unlock(&init_lock);
    vgpu_log(3, api.prefix, "cuInit -> %d", result);
    char detail[32];
    snprintf(detail, sizeof detail, "\"args\":[%u]", Flags);
    vgpu_trace_call(api.name, "cuInit", result, detail);
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
#define CREATED_CONTEXT_ID 0x200000000ull /* | slot << 16 | device ordinal */
/* a green context's created context also has this bit, and its SM count from bit 48 on
 * (vgpud models its launches on that many SMs) */
#define GREEN_CONTEXT_ID 0x400000000ull
#define GREEN_SM_SHIFT 48
#define MAX_CREATED_CONTEXTS 1024

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

vgpu_api *vgpu_cuda_api(void) { return &api; }
uint64_t vgpu_cuda_context_id(void) { return current_context_id(); }
int vgpu_cuda_initialized(void) { return __atomic_load_n(&initialized, __ATOMIC_SEQ_CST); }

#define CONTEXT_STACK_DEPTH 64
static __thread CUcontext context_stack[CONTEXT_STACK_DEPTH];
static __thread int context_depth;

typedef struct created_context {
    int alive;
    unsigned flags;
} created_context;

static created_context created[MAX_CREATED_CONTEXTS];
static pthread_mutex_t created_lock = PTHREAD_MUTEX_INITIALIZER;

static int context_device(CUcontext ctx, CUdevice *dev) {
    uint64_t id;
    if (!ctx || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0) return -1;
    if (id & CREATED_CONTEXT_ID) {
        if (!__atomic_load_n(&created[(id >> 16) & 0xffff].alive, __ATOMIC_SEQ_CST)) return -1;
    } else if (!(id & PRIMARY_CONTEXT_ID)) {
        return -1;
    }
    *dev = (CUdevice)(id & 0xffff);
    return 0;
}

int vgpu_cuda_context_number(CUcontext ctx, uint64_t *number) {
    uint64_t id;
    CUdevice dev;
    if (context_device(ctx, &dev) < 0 || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0) return -1;
    /* small numbers, as the real driver's: 1 for device 0's primary context */
    *number = id & CREATED_CONTEXT_ID ? 2 + 16 + ((id >> 16) & 0xffff) % 46 : 1 + (uint64_t)(dev % 16);
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

VGPU_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx);

CUresult vgpu_cuda_context_make(CUdevice dev, unsigned flags, unsigned green_sms, CUcontext *pctx) {
    CUcontext probe;
    CUresult rc = vgpu_cuda_primary_context(&probe, dev); /* checks cuInit and the device */
    if (rc != CUDA_SUCCESS) return rc;
    pthread_mutex_lock(&created_lock);
    int slot = 0;
    while (slot < MAX_CREATED_CONTEXTS && created[slot].alive) slot++;
    if (slot < MAX_CREATED_CONTEXTS) created[slot] = (created_context){1, flags};
    pthread_mutex_unlock(&created_lock);
    if (slot == MAX_CREATED_CONTEXTS) return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t id = CREATED_CONTEXT_ID | ((uint64_t)slot << 16) | (uint64_t)dev;
    if (green_sms) id |= GREEN_CONTEXT_ID | (uint64_t)(green_sms & 0xfff) << GREEN_SM_SHIFT;
    *pctx = vgpu_handle_for(vgpu_cuda_handle_CUcontext, id);
    return *pctx ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

unsigned vgpu_cuda_context_green_sms(CUcontext ctx) {
    uint64_t id;
    CUdevice dev;
    if (context_device(ctx, &dev) < 0 || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0) return 0;
    return id & GREEN_CONTEXT_ID ? (unsigned)(id >> GREEN_SM_SHIFT) & 0xfff : 0;
}

void vgpu_cuda_context_end(CUcontext ctx) {
    uint64_t id;
    if (vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0 || !(id & CREATED_CONTEXT_ID)) return;
    vgpu_cuda_context_storage_release(ctx);
    vgpu_cuda_coredump_context_end(id);
    __atomic_store_n(&created[(id >> 16) & 0xffff].alive, 0, __ATOMIC_SEQ_CST);
    if (current_context == ctx) current_context = context_depth ? context_stack[--context_depth] : NULL;
}

/* Created contexts: a new handle on a device, made current; vgpud knows the device from the id. */
VGPU_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags,
                                    CUdevice dev) {
    (void)ctxCreateParams;
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = vgpu_cuda_context_make(dev, flags, 0, pctx);
    return rc == CUDA_SUCCESS ? cuCtxPushCurrent_v2(*pctx) : rc;
}

VGPU_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                                    unsigned int flags, CUdevice dev) {
    (void)paramsArray;
    (void)numParams;
    return cuCtxCreate_v4(pctx, NULL, flags, dev);
}

VGPU_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    return cuCtxCreate_v4(pctx, NULL, flags, dev);
}

VGPU_EXPORT CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    return cuCtxCreate_v4(pctx, NULL, flags, dev);
}

VGPU_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    uint64_t id;
    CUdevice dev;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (context_device(ctx, &dev) < 0 || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0 ||
        !(id & CREATED_CONTEXT_ID) || (id & GREEN_CONTEXT_ID))
        return CUDA_ERROR_INVALID_CONTEXT; /* primary contexts are released, green ones destroyed as such */
    vgpu_cuda_context_end(ctx);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxDestroy(CUcontext ctx) { return cuCtxDestroy_v2(ctx); }

VGPU_EXPORT CUresult cuCtxGetFlags(unsigned int *flags) {
    uint64_t id;
    CUdevice dev;
    if (!flags) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (context_device(current_context, &dev) < 0 || vgpu_handle_id(vgpu_cuda_handle_CUcontext, current_context, &id) < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *flags = id & CREATED_CONTEXT_ID ? created[(id >> 16) & 0xffff].flags : primaries[dev].flags;
    return CUDA_SUCCESS;
}

/* The current context's flags, replaced whole; the same flags as a primary context's. */
VGPU_EXPORT CUresult cuCtxSetFlags(unsigned int flags) {
    uint64_t id;
    CUdevice dev;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (context_device(current_context, &dev) < 0 || vgpu_handle_id(vgpu_cuda_handle_CUcontext, current_context, &id) < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (flags & ~(0x07u | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX | CU_CTX_COREDUMP_ENABLE |
                  CU_CTX_USER_COREDUMP_ENABLE | CU_CTX_SYNC_MEMOPS))
        return CUDA_ERROR_INVALID_VALUE;
    if (id & CREATED_CONTEXT_ID) created[(id >> 16) & 0xffff].flags = flags;
    else primaries[dev].flags = flags;
    return CUDA_SUCCESS;
}

/* A context's unique id: the number the private context table reports for it too. */
VGPU_EXPORT CUresult cuCtxGetId(CUcontext ctx, unsigned long long *ctxId) {
    uint64_t number;
    if (!ctxId) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (vgpu_cuda_context_number(ctx ? ctx : current_context, &number) < 0) return CUDA_ERROR_INVALID_CONTEXT;
    *ctxId = number;
    return CUDA_SUCCESS;
}

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


VGPU_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    CUdevice dev;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (context_device(ctx, &dev) < 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (context_depth == CONTEXT_STACK_DEPTH) return CUDA_ERROR_OUT_OF_MEMORY;
    context_stack[context_depth++] = current_context;
    current_context = ctx;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pctx) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
    if (pctx) *pctx = current_context;
    current_context = context_depth ? context_stack[--context_depth] : NULL;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxPushCurrent(CUcontext ctx) { return cuCtxPushCurrent_v2(ctx); }
VGPU_EXPORT CUresult cuCtxPopCurrent(CUcontext *pctx) { return cuCtxPopCurrent_v2(pctx); }

/* ---- page-locked host memory: plain host memory here, remembered so the driver's
 * questions about it (flags, device pointer, registration) get the driver's answers ---- */

/* Memory a memfd backs, mapped here (vgpud maps the same file); NULL when it cannot be made. */
/* Page-locked and managed memory go where kernels can reach them too: a range above every
 * device address that vgpud's kernel worker maps at the same addresses (VGPU_HOST_WINDOWS_*),
 * each at a fresh place in it; elsewhere (an old kernel, the range used up) the memory works
 * for copies only. */
static uintptr_t next_window = VGPU_HOST_WINDOWS_BASE;

static void *window_address(size_t bytes) {
    size_t span = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    uintptr_t at = __atomic_fetch_add(&next_window, span, __ATOMIC_SEQ_CST);
    return at + span <= VGPU_HOST_WINDOWS_BASE + VGPU_HOST_WINDOWS_SPAN ? (void *)at : NULL;
}

static void *file_backed(const char *name, size_t bytes, int *fd) {
    *fd = memfd_create(name, MFD_CLOEXEC);
    void *p = MAP_FAILED;
    if (*fd >= 0 && ftruncate(*fd, (off_t)bytes) == 0) {
        void *want = window_address(bytes);
        if (want) {
            p = mmap(want, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, *fd, 0);
            if (p != MAP_FAILED && p != want) { /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
                munmap(p, bytes);
                p = MAP_FAILED;
            }
        }
        if (p == MAP_FAILED) p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    }
    if (p != MAP_FAILED) return p;
    if (*fd >= 0) close(*fd);
    return NULL;
}

typedef struct host_range {
    char *start;
    size_t size;
    unsigned flags;
    int allocated; /* by cuMemHostAlloc (freed by cuMemFreeHost), else registered */
    int fd;        /* the memfd behind allocated memory, shared with vgpud */
} host_range;

static host_range *host_ranges;
static size_t host_count, host_cap;
static pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;

static host_range *host_find(const void *p) { /* call with host_lock held */
    for (size_t i = 0; i < host_count; i++)
        if ((const char *)p >= host_ranges[i].start && (const char *)p < host_ranges[i].start + host_ranges[i].size)
            return &host_ranges[i];
    return NULL;
}

static CUresult host_remember(void *p, size_t size, unsigned flags, int allocated, int fd) {
    pthread_mutex_lock(&host_lock);
    CUresult rc = CUDA_SUCCESS;
    if (host_find(p) || host_find((char *)p + size - 1)) rc = CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    else if (host_count == host_cap) {
        size_t cap = host_cap ? host_cap * 2 : 16;
        host_range *grown = realloc(host_ranges, cap * sizeof *grown);
        if (!grown) rc = CUDA_ERROR_OUT_OF_MEMORY;
        else { host_ranges = grown; host_cap = cap; }
    }
    if (rc == CUDA_SUCCESS) host_ranges[host_count++] = (host_range){p, size, flags, allocated, fd};
    pthread_mutex_unlock(&host_lock);
    return rc;
}

/* Forget the range starting at p made the given way; whether there was one (and its size and fd). */
static int host_forget(void *p, int allocated, size_t *size, int *fd) {
    pthread_mutex_lock(&host_lock);
    host_range *found = host_find(p);
    int ok = found && found->start == p && found->allocated == allocated;
    if (ok) {
        *size = found->size;
        *fd = found->fd;
        *found = host_ranges[--host_count];
    }
    pthread_mutex_unlock(&host_lock);
    return ok;
}

VGPU_EXPORT CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
    if (!pp || !bytesize) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (Flags & ~(unsigned)(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED))
        return CUDA_ERROR_INVALID_VALUE;
    /* Memory a file backs, which vgpud maps too: transfers from and to it skip the socket,
     * as DMA skips the staging copy with real page-locked memory. */
    int fd;
    void *p = file_backed("vgpu-pinned", bytesize, &fd);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = host_remember(p, bytesize, Flags, 1, fd);
    if (rc != CUDA_SUCCESS) {
        munmap(p, bytesize);
        close(fd);
        return rc;
    }
    vgpu_share(&api, p, bytesize, fd); /* if vgpud cannot map it, the socket carries the data */
    *pp = p;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }
VGPU_EXPORT CUresult cuMemAllocHost(void **pp, unsigned int bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }

VGPU_EXPORT CUresult cuMemFreeHost(void *p) {
    size_t size;
    int fd;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (!host_forget(p, 1, &size, &fd)) return CUDA_ERROR_INVALID_VALUE;
    vgpu_share(&api, p, 0, fd);
    munmap(p, size);
    close(fd);
    return CUDA_SUCCESS;
}

extern const vgpu_function vgpu_cuda_fn_cuMemHostRegister_v2, vgpu_cuda_fn_cuMemHostUnregister;

/* Registered memory is the caller's own; vgpud is told of it so that, where it reaches this
 * process's memory, its address works on the device side too (src/vgpu/server/cuda_hostmem.py).
 * A backend that does not serve that leaves it host memory only. */
VGPU_EXPORT CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags) {
    if (!p || !bytesize) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (Flags & ~(unsigned)(CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_IOMEMORY |
                            CU_MEMHOSTREGISTER_READ_ONLY))
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = host_remember(p, bytesize, Flags, 0, -1);
    if (rc != CUDA_SUCCESS) return rc;
    void *const args[] = {(void *)&p, (void *)&bytesize, (void *)&Flags};
    rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemHostRegister_v2, args);
    if (rc == CUDA_SUCCESS || rc == CUDA_ERROR_NOT_SUPPORTED) return CUDA_SUCCESS;
    size_t size;
    int fd;
    host_forget(p, 0, &size, &fd);
    return rc;
}

VGPU_EXPORT CUresult cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags) {
    return cuMemHostRegister_v2(p, bytesize, Flags);
}

VGPU_EXPORT CUresult cuMemHostUnregister(void *p) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    size_t size;
    int fd;
    if (!host_forget(p, 0, &size, &fd)) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    void *const args[] = {(void *)&p};
    vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemHostUnregister, args); /* vgpud forgets it too */
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemHostGetFlags(unsigned int *pFlags, void *p) {
    if (!pFlags) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&host_lock);
    host_range *found = host_find(p);
    if (found) *pFlags = found->flags;
    pthread_mutex_unlock(&host_lock);
    return found ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* With unified addressing, page-locked memory has the same address on the device. */
VGPU_EXPORT CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags) {
    if (!pdptr || Flags) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&host_lock);
    int found = host_find(p) != NULL;
    pthread_mutex_unlock(&host_lock);
    if (!found) return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

/* ---- managed memory: a window shared with vgpud, which the host reads and writes directly and
 * vgpud reaches as device memory (src/vgpu/server/cuda_hostmem.py) ---- */

typedef struct managed_range {
    CUdeviceptr start;
    size_t size;
    int fd;
} managed_range;

static managed_range *managed_ranges;
static size_t managed_count, managed_cap;
static pthread_mutex_t managed_lock = PTHREAD_MUTEX_INITIALIZER;

extern const vgpu_function vgpu_cuda_fn_cuMemAllocManaged, vgpu_cuda_fn_cuMemFree_v2,
    vgpu_cuda_fn_cuMemRangeGetAttribute;

static int managed_remember(CUdeviceptr start, size_t size, int fd) {
    pthread_mutex_lock(&managed_lock);
    int ok = 1;
    if (managed_count == managed_cap) {
        size_t cap = managed_cap ? managed_cap * 2 : 16;
        managed_range *grown = realloc(managed_ranges, cap * sizeof *grown);
        if (grown) { managed_ranges = grown; managed_cap = cap; }
        else ok = 0;
    }
    if (ok) managed_ranges[managed_count++] = (managed_range){start, size, fd};
    pthread_mutex_unlock(&managed_lock);
    return ok;
}

/* Take the managed allocation starting at start out of the list; whether there was one. */
static int managed_take(CUdeviceptr start, managed_range *taken) {
    pthread_mutex_lock(&managed_lock);
    int found = 0;
    for (size_t i = 0; i < managed_count && !found; i++)
        if (managed_ranges[i].start == start) {
            *taken = managed_ranges[i];
            managed_ranges[i] = managed_ranges[--managed_count];
            found = 1;
        }
    pthread_mutex_unlock(&managed_lock);
    return found;
}

static void managed_unmap(const managed_range *range) {
    vgpu_share(&api, (void *)(uintptr_t)range->start, 0, range->fd);
    munmap((void *)(uintptr_t)range->start, range->size);
    close(range->fd);
}

/* vgpud must map the window: where it cannot (a GPU host over the network), managed memory is
 * refused with CUDA_ERROR_NOT_SUPPORTED rather than served with contents the device never sees. */
VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (!dptr || !bytesize || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    CUdevice dev;
    if (context_device(current_context, &dev) < 0) return CUDA_ERROR_INVALID_CONTEXT;
    int fd;
    void *p = file_backed("vgpu-managed", bytesize, &fd);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    managed_range range = {(CUdeviceptr)(uintptr_t)p, bytesize, fd};
    if (vgpu_share(&api, p, bytesize, fd) != VGPU_OK) {
        vgpu_log(1, api.prefix, "cuMemAllocManaged: vgpud cannot map this process's memory (a GPU host over "
                 "the network?): managed memory is not supported here");
        munmap(p, bytesize);
        close(fd);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    CUdeviceptr address = range.start, *where = &address;
    void *const args[] = {(void *)&where, (void *)&bytesize, (void *)&flags};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemAllocManaged, args);
    if (rc == CUDA_SUCCESS && !managed_remember(range.start, bytesize, fd)) {
        void *const free_args[] = {(void *)&range.start};
        vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemFree_v2, free_args);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc != CUDA_SUCCESS) {
        managed_unmap(&range);
        return rc;
    }
    *dptr = range.start;
    return CUDA_SUCCESS;
}

/* Device and managed memory alike are freed by vgpud; a managed window is then unmapped here. */
VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    if (vgpu_cuda_external_buffer_free(dptr)) return CUDA_SUCCESS; /* native/cuda/sharing.c */
    managed_range range;
    int managed = dptr && managed_take(dptr, &range);
    void *const args[] = {(void *)&dptr};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemFree_v2, args);
    if (managed && rc == CUDA_SUCCESS) managed_unmap(&range);
    else if (managed && !managed_remember(range.start, range.size, range.fd)) managed_unmap(&range);
    return rc;
}

/* Each attribute asked of vgpud in turn, as the driver documents the plural form. */
VGPU_EXPORT CUresult cuMemRangeGetAttributes(void **data, size_t *dataSizes, CUmem_range_attribute *attributes,
                                             size_t numAttributes, CUdeviceptr devPtr, size_t count) {
    if (!data || !dataSizes || !attributes || !numAttributes) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < numAttributes; i++) {
        if (!data[i]) return CUDA_ERROR_INVALID_VALUE;
        void *const args[] = {(void *)&data[i], (void *)&dataSizes[i], (void *)&attributes[i], (void *)&devPtr,
                              (void *)&count};
        CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemRangeGetAttribute, args);
        if (rc != CUDA_SUCCESS) return rc;
    }
    return CUDA_SUCCESS;
}

/* ---- the driver's log: nothing to report, but callers (PyTorch) must be able to register ---- */

static CUlogsCallback log_callbacks[16];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

VGPU_EXPORT CUresult cuLogsRegisterCallback(CUlogsCallback callbackFunc, void *userData,
                                            CUlogsCallbackHandle *callback_out) {
    (void)userData;
    if (!callbackFunc || !callback_out) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&log_lock);
    int slot = 0;
    while (slot < 16 && log_callbacks[slot]) slot++;
    if (slot < 16) log_callbacks[slot] = callbackFunc;
    pthread_mutex_unlock(&log_lock);
    if (slot == 16) return CUDA_ERROR_OUT_OF_MEMORY;
    *callback_out = vgpu_handle_for(vgpu_cuda_handle_CUlogsCallbackHandle, (uint64_t)slot + 1);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLogsUnregisterCallback(CUlogsCallbackHandle callback) {
    uint64_t id;
    if (vgpu_handle_id(vgpu_cuda_handle_CUlogsCallbackHandle, callback, &id) < 0 || id < 1 || id > 16)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&log_lock);
    log_callbacks[id - 1] = NULL;
    pthread_mutex_unlock(&log_lock);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLogsCurrent(CUlogIterator *iterator_out, unsigned int flags) {
    if (!iterator_out || flags) return CUDA_ERROR_INVALID_VALUE;
    *iterator_out = 0;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLogsDumpToMemory(CUlogIterator *iterator, char *buffer, size_t *size, unsigned int flags) {
    if (!buffer || !size || flags) return CUDA_ERROR_INVALID_VALUE;
    if (*size) buffer[0] = 0; /* no entries */
    *size = 0;
    (void)iterator;
    return CUDA_SUCCESS;
}

/* ---- stream capture: vgpud keeps captures; the capture mode is per thread ---- */

static __thread CUstreamCaptureMode capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

VGPU_EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode) {
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode previous = capture_mode;
    capture_mode = *mode;
    *mode = previous;
    return CUDA_SUCCESS;
}

/* The newer forms ask vgpud for the status and id; the capture's graph has the capture's id.
 * The dependency nodes are not handed out (NULL, a count of 0). */
static CUresult capture_info(CUstream stream, CUstreamCaptureStatus *status, cuuint64_t *id, CUgraph *graph,
                             const CUgraphNode **dependencies, const CUgraphEdgeData **edges, size_t *count) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    cuuint64_t capture = 0;
    cuuint64_t *capture_out = &capture;
    void *const args[] = {(void *)&stream, (void *)&status, (void *)&capture_out};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuStreamGetCaptureInfo, args);
    if (rc != CUDA_SUCCESS) return rc;
    if (id) *id = capture;
    if (graph) *graph = *status == CU_STREAM_CAPTURE_STATUS_NONE ? NULL : vgpu_handle_for(vgpu_cuda_handle_CUgraph, capture);
    if (dependencies) *dependencies = NULL;
    if (edges) *edges = NULL;
    if (count) *count = 0;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                               cuuint64_t *id_out, CUgraph *graph_out,
                                               const CUgraphNode **dependencies_out, size_t *numDependencies_out) {
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, NULL, numDependencies_out);
}
VGPU_EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                               cuuint64_t *id_out, CUgraph *graph_out,
                                               const CUgraphNode **dependencies_out, const CUgraphEdgeData **edgeData_out,
                                               size_t *numDependencies_out) {
    return capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}

/* ---- host functions: run in order on one worker thread. Queueing one waits until vgpud has
 * carried out the work sent before it (a fence), so the function sees its stream's earlier copies;
 * later work on the same stream (or on a default stream) waits in the shim until it has run. ---- */

typedef struct host_call {
    void (*fn)(void *);
    void (*callback)(CUstream, CUresult, void *);
    CUstream stream;
    void *data;
    struct host_call *next;
} host_call;

static host_call *calls_head, *calls_tail;
static pthread_mutex_t calls_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t calls_ready = PTHREAD_COND_INITIALIZER, calls_done = PTHREAD_COND_INITIALIZER;
static int worker_started;
static unsigned long long calls_queued, calls_finished;
static const host_call *call_running; /* the call the worker is in, or NULL */
static __thread int on_worker;        /* this thread is the worker (a host function must not wait for itself) */

/* NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD: default streams, ordered with every other. */
static int default_stream(CUstream stream) { return (uintptr_t)stream <= (uintptr_t)CU_STREAM_PER_THREAD; }

static int same_order(CUstream a, CUstream b) { return a == b || default_stream(a) || default_stream(b); }

/* Whether a host function queued or running comes before work on `stream` (calls_lock held). */
static int host_call_ahead(CUstream stream) {
    if (call_running && same_order(call_running->stream, stream)) return 1;
    for (const host_call *call = calls_head; call; call = call->next)
        if (same_order(call->stream, stream)) return 1;
    return 0;
}

void vgpu_cuda_host_calls_before(CUstream stream) {
    if (on_worker || __atomic_load_n(&calls_finished, __ATOMIC_SEQ_CST) == __atomic_load_n(&calls_queued, __ATOMIC_SEQ_CST))
        return;
    pthread_mutex_lock(&calls_lock);
    while (host_call_ahead(stream)) pthread_cond_wait(&calls_done, &calls_lock);
    pthread_mutex_unlock(&calls_lock);
}

/* Before a synchronising call: the host functions queued so far have run. */
static void wait_host_calls(void) {
    if (on_worker) return;
    pthread_mutex_lock(&calls_lock);
    unsigned long long target = calls_queued;
    while (calls_finished < target) pthread_cond_wait(&calls_done, &calls_lock);
    pthread_mutex_unlock(&calls_lock);
}

static void *host_worker(void *unused) {
    (void)unused;
    on_worker = 1;
    for (;;) {
        pthread_mutex_lock(&calls_lock);
        while (!calls_head) pthread_cond_wait(&calls_ready, &calls_lock);
        host_call *call = calls_head;
        calls_head = call->next;
        if (!calls_head) calls_tail = NULL;
        call_running = call;
        pthread_mutex_unlock(&calls_lock);
        if (call->fn) call->fn(call->data);
        else call->callback(call->stream, CUDA_SUCCESS, call->data);
        pthread_mutex_lock(&calls_lock);
        call_running = NULL;
        free(call);
        __atomic_add_fetch(&calls_finished, 1, __ATOMIC_SEQ_CST);
        pthread_cond_broadcast(&calls_done);
        pthread_mutex_unlock(&calls_lock);
    }
    return NULL;
}

static CUresult queue_host_call(CUstream stream, void (*fn)(void *), void (*callback)(CUstream, CUresult, void *),
                                void *data) {
    if (!fn && !callback) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (vgpu_marshal_fence(&api) != VGPU_OK) return CUDA_ERROR_DEVICE_UNAVAILABLE;
    host_call *call = calloc(1, sizeof *call);
    if (!call) return CUDA_ERROR_OUT_OF_MEMORY;
    *call = (host_call){fn, callback, stream, data, NULL};
    pthread_mutex_lock(&calls_lock);
    if (!worker_started) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        worker_started = pthread_create(&thread, &attr, host_worker, NULL) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!worker_started) {
        pthread_mutex_unlock(&calls_lock);
        free(call);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (calls_tail) calls_tail->next = call;
    else calls_head = call;
    calls_tail = call;
    __atomic_add_fetch(&calls_queued, 1, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&calls_ready);
    pthread_mutex_unlock(&calls_lock);
    return CUDA_SUCCESS;
}

CUresult vgpu_cuda_queue_host_call(CUstream stream, void (*fn)(void *), void *data) {
    return queue_host_call(stream, fn, NULL, data);
}

VGPU_EXPORT CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
    if (fn && __atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) {
        CUresult captured = vgpu_cuda_capture_host_call(hStream, fn, userData); /* native/cuda/graphs.c */
        if (captured != CUDA_ERROR_NOT_FOUND) return captured;
    }
    return queue_host_call(hStream, fn, NULL, userData);
}
VGPU_EXPORT CUresult cuStreamAddCallback(CUstream hStream, CUstreamCallback callback, void *userData,
                                         unsigned int flags) {
    if (flags) return CUDA_ERROR_INVALID_VALUE;
    return queue_host_call(hStream, NULL, callback, userData);
}
/* CUDA 13.1's version (what cudart 13.1 and later get from cuGetProcAddress): the sync mode says
 * whether the driver's host-task thread blocks or spins while idle; the shim's worker always blocks. */
VGPU_EXPORT CUresult cuLaunchHostFunc_v2(CUstream hStream, CUhostFn fn, void *userData, unsigned int syncMode) {
    if (syncMode != CU_HOST_TASK_BLOCKING && syncMode != CU_HOST_TASK_SPINWAIT) return CUDA_ERROR_INVALID_VALUE;
    return cuLaunchHostFunc(hStream, fn, userData);
}

/* ---- pointer attributes: page-locked memory answered here, device memory by vgpud ---- */

extern const vgpu_function vgpu_cuda_fn_cuPointerGetAttribute;

/* How many bytes the caller's data takes for an attribute, or 0.  Booleans are ints: cudart's
 * cudaPointerGetAttributes and cuda-python both read four bytes for them. */
static size_t attribute_size(CUpointer_attribute attribute) {
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: case CU_POINTER_ATTRIBUTE_MAPPED:
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE:
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        return 4;
    case CU_POINTER_ATTRIBUTE_P2P_TOKENS:
        return 0;
    default:
        return 8;
    }
}

static CUresult host_attribute(const host_range *range, CUpointer_attribute attribute, CUdeviceptr ptr,
                               uint64_t *value) {
    CUdevice dev = 0;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *value = (uintptr_t)current_context; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *value = CU_MEMORYTYPE_HOST; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: case CU_POINTER_ATTRIBUTE_HOST_POINTER: *value = ptr; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID: case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *value = (uintptr_t)range->start; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: *value = range->size; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPED: *value = 1; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *value = context_device(current_context, &dev) == 0 ? (uint64_t)dev : 0; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: *value = CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_P2P_TOKENS: return CUDA_ERROR_NOT_SUPPORTED;
    default: *value = 0; return CUDA_SUCCESS;
    }
}

VGPU_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    size_t size = attribute_size(attribute);
    uint64_t value = 0;
    pthread_mutex_lock(&host_lock);
    host_range *range = host_find((const void *)(uintptr_t)ptr);
    host_range found = range ? *range : (host_range){0};
    pthread_mutex_unlock(&host_lock);
    CUresult rc;
    if (range) {
        rc = host_attribute(&found, attribute, ptr, &value);
    } else {
        uint64_t *where = &value;
        int32_t answer = CUDA_ERROR_UNKNOWN;
        void *const args[] = {(void *)&where, (void *)&attribute, (void *)&ptr};
        int status = vgpu_marshal_call(&api, &vgpu_cuda_fn_cuPointerGetAttribute, args, &answer);
        rc = status == VGPU_CALL_DONE ? (CUresult)answer : CUDA_ERROR_DEVICE_UNAVAILABLE;
        if (rc == CUDA_SUCCESS && attribute == CU_POINTER_ATTRIBUTE_CONTEXT)
            value = (uintptr_t)vgpu_handle_for(vgpu_cuda_handle_CUcontext, value);
    }
    if (rc != CUDA_SUCCESS) return rc;
    if (!size) return CUDA_ERROR_NOT_SUPPORTED;
    memcpy(data, &value, size); /* little-endian: the low bytes */
    return CUDA_SUCCESS;
}

/* Unlike cuPointerGetAttribute, a pointer CUDA does not know gives defaults, not an error. */
VGPU_EXPORT CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes, void **data,
                                            CUdeviceptr ptr) {
    if (!attributes || !data) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < numAttributes; i++) {
        if (!data[i]) continue;
        CUresult rc = cuPointerGetAttribute(data[i], attributes[i], ptr);
        if (rc == CUDA_ERROR_NOT_INITIALIZED) return rc;
        if (rc != CUDA_SUCCESS) {
            size_t size = attribute_size(attributes[i]);
            memset(data[i], 0, size);
            if (attributes[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL) *(int *)data[i] = -2; /* "no device" */
        }
    }
    return CUDA_SUCCESS;
}

/* ---- memory pool attributes: the first three are ints, the rest cuuint64_t ---- */

extern const vgpu_function vgpu_cuda_fn_cuMemPoolGetAttribute, vgpu_cuda_fn_cuMemPoolSetAttribute;

static size_t pool_attribute_size(CUmemPool_attribute attr) {
    return attr == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES || attr == CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC ||
                   attr == CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES
               ? sizeof(int) : sizeof(cuuint64_t);
}

static CUresult pool_attribute(const vgpu_function *fn, CUmemoryPool pool, CUmemPool_attribute attr, uint64_t *value) {
    void *const args[] = {(void *)&pool, (void *)&attr, (void *)&value};
    return (CUresult)vgpu_cuda_dispatch(fn, args);
}

VGPU_EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t wide = 0;
    CUresult rc = pool_attribute(&vgpu_cuda_fn_cuMemPoolGetAttribute, pool, attr, &wide);
    if (rc == CUDA_SUCCESS) memcpy(value, &wide, pool_attribute_size(attr));
    return rc;
}

VGPU_EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t wide = 0;
    memcpy(&wide, value, pool_attribute_size(attr));
    return pool_attribute(&vgpu_cuda_fn_cuMemPoolSetAttribute, pool, attr, &wide);
}

/* ---- copies that name memory by address alone (unified addressing: cuMemcpy, cuMemcpyAsync, and
 * 2D/3D copies of CU_MEMORYTYPE_UNIFIED): each side is device memory when vgpud says so;
 * page-locked memory this library made, and any other memory of the process, is host memory ---- */

static int on_device(CUdeviceptr ptr) {
    pthread_mutex_lock(&host_lock);
    int host = host_find((const void *)(uintptr_t)ptr) != NULL;
    pthread_mutex_unlock(&host_lock);
    unsigned type = 0;
    return !host && cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr) == CUDA_SUCCESS &&
           type == CU_MEMORYTYPE_DEVICE;
}

/* Whether [p, p + n) is mapped in this process, so that a copy on the host cannot fault (a
 * stale device pointer is not host memory either: the driver answers CUDA_ERROR_INVALID_VALUE). */
static int host_mapped(const void *p, size_t n) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)(page - 1), end = (uintptr_t)p + n;
    unsigned char residency[256];
    for (uintptr_t at = start; at < end; at += sizeof residency * (uintptr_t)page) {
        size_t len = end - at < sizeof residency * (size_t)page ? end - at : sizeof residency * (size_t)page;
        if (mincore((void *)at, len, residency) < 0) return 0;
    }
    return 1;
}

/* A copy between two host buffers in stream order: after the stream's earlier work (and the
 * host functions before it), as a real copy engine would make it. */
static CUresult host_copy(char *dst, const char *src, size_t bytes, CUstream stream) {
    if (!host_mapped(dst, bytes) || !host_mapped(src, bytes)) return CUDA_ERROR_INVALID_VALUE;
    vgpu_cuda_host_calls_before(stream);
    if (vgpu_marshal_fence(&api) != VGPU_OK) return CUDA_ERROR_DEVICE_UNAVAILABLE;
    memmove(dst, src, bytes);
    return CUDA_SUCCESS;
}

/* ---- 2D and 3D copies: row by row through the 1D copies (one copy when rows are contiguous) ---- */

typedef struct copy_side {
    CUmemorytype type;
    char *host;
    CUdeviceptr device;
    size_t x, y, z, pitch, height;
    CUarray array;
} copy_side;

static CUresult copy_row(const copy_side *dst, const copy_side *src, size_t dst_offset, size_t src_offset,
                         size_t bytes, CUstream stream, int async) {
    int dst_device = dst->type == CU_MEMORYTYPE_DEVICE, src_device = src->type == CU_MEMORYTYPE_DEVICE;
    char *dst_host = dst->host ? dst->host : (char *)(uintptr_t)dst->device;
    char *src_host = src->host ? src->host : (char *)(uintptr_t)src->device;
    if (dst_device && src_device)
        return async ? cuMemcpyDtoDAsync_v2(dst->device + dst_offset, src->device + src_offset, bytes, stream)
                     : cuMemcpyDtoD_v2(dst->device + dst_offset, src->device + src_offset, bytes);
    if (dst_device)
        return async ? cuMemcpyHtoDAsync_v2(dst->device + dst_offset, src_host + src_offset, bytes, stream)
                     : cuMemcpyHtoD_v2(dst->device + dst_offset, src_host + src_offset, bytes);
    if (src_device)
        return async ? cuMemcpyDtoHAsync_v2(dst_host + dst_offset, src->device + src_offset, bytes, stream)
                     : cuMemcpyDtoH_v2(dst_host + dst_offset, src->device + src_offset, bytes);
    return host_copy(dst_host + dst_offset, src_host + src_offset, bytes, stream);
}

static CUresult copy_box(const copy_side *dst, const copy_side *src, size_t width, size_t height, size_t depth,
                         CUstream stream, int async) {
    /* Each side once as device or host memory: an array side is device memory at its bytes
     * (native/cuda/arrays.c), a unified one what its address is (on_device), for every row. */
    copy_side sides[2] = {*dst, *src};
    for (int i = 0; i < 2; i++)
        if (sides[i].type == CU_MEMORYTYPE_ARRAY) {
            CUresult rc = vgpu_cuda_array_region(sides[i].array, sides[i].x, sides[i].y, sides[i].z, width, height, depth,
                                                 &sides[i].device, &sides[i].pitch, &sides[i].height);
            if (rc != CUDA_SUCCESS) return rc;
            sides[i].type = CU_MEMORYTYPE_DEVICE;
        } else if (sides[i].type == CU_MEMORYTYPE_UNIFIED) {
            sides[i].type = on_device(sides[i].device) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        }
    dst = &sides[0], src = &sides[1];
    if (width > src->pitch || width > dst->pitch) return CUDA_ERROR_INVALID_VALUE;
    for (size_t z = 0; z < depth; z++) {
        size_t dst_plane = (dst->z + z) * dst->height * dst->pitch, src_plane = (src->z + z) * src->height * src->pitch;
        int contiguous = dst->pitch == width && src->pitch == width && !dst->x && !src->x;
        size_t rows = contiguous ? 1 : height, bytes = contiguous ? width * height : width;
        for (size_t row = 0; row < rows; row++) {
            CUresult rc = copy_row(dst, src, dst_plane + (dst->y + row) * dst->pitch + dst->x,
                                   src_plane + (src->y + row) * src->pitch + src->x, bytes, stream, async);
            if (rc != CUDA_SUCCESS) return rc;
        }
    }
    return CUDA_SUCCESS;
}

static CUresult copy_2d(const CUDA_MEMCPY2D *p, CUstream stream, int async) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    copy_side src = {p->srcMemoryType, (char *)p->srcHost, p->srcDevice, p->srcXInBytes, p->srcY, 0, p->srcPitch, 0,
                     p->srcArray};
    copy_side dst = {p->dstMemoryType, p->dstHost, p->dstDevice, p->dstXInBytes, p->dstY, 0, p->dstPitch, 0, p->dstArray};
    if (!src.pitch) src.pitch = p->WidthInBytes;
    if (!dst.pitch) dst.pitch = p->WidthInBytes;
    return copy_box(&dst, &src, p->WidthInBytes, p->Height, 1, stream, async);
}

static CUresult copy_3d(const CUDA_MEMCPY3D *p, CUstream stream, int async) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    copy_side src = {p->srcMemoryType, (char *)p->srcHost, p->srcDevice, p->srcXInBytes, p->srcY, p->srcZ,
                     p->srcPitch ? p->srcPitch : p->WidthInBytes, p->srcHeight ? p->srcHeight : p->Height, p->srcArray};
    copy_side dst = {p->dstMemoryType, p->dstHost, p->dstDevice, p->dstXInBytes, p->dstY, p->dstZ,
                     p->dstPitch ? p->dstPitch : p->WidthInBytes, p->dstHeight ? p->dstHeight : p->Height, p->dstArray};
    return copy_box(&dst, &src, p->WidthInBytes, p->Height, p->Depth ? p->Depth : 1, stream, async);
}

CUresult vgpu_cuda_copy_3d(const CUDA_MEMCPY3D *p, CUstream stream, int async) { return copy_3d(p, stream, async); }

static CUresult copy_unified(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream, int async) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    if (!dst || !src) return CUDA_ERROR_INVALID_VALUE;
    if (!bytes) return CUDA_SUCCESS;
    copy_side to = {CU_MEMORYTYPE_UNIFIED, NULL, dst, 0, 0, 0, bytes, 1, NULL};
    copy_side from = {CU_MEMORYTYPE_UNIFIED, NULL, src, 0, 0, 0, bytes, 1, NULL};
    return copy_box(&to, &from, bytes, 1, 1, stream, async);
}

VGPU_EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount) {
    return copy_unified(dst, src, ByteCount, NULL, 0);
}
VGPU_EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream) {
    return copy_unified(dst, src, ByteCount, hStream, 1);
}

VGPU_EXPORT CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D *pCopy) { return copy_2d(pCopy, NULL, 0); }
VGPU_EXPORT CUresult cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D *pCopy) { return copy_2d(pCopy, NULL, 0); }
VGPU_EXPORT CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *pCopy, CUstream hStream) {
    return copy_2d(pCopy, hStream, 1);
}
VGPU_EXPORT CUresult cuMemcpy3D_v2(const CUDA_MEMCPY3D *pCopy) { return copy_3d(pCopy, NULL, 0); }
VGPU_EXPORT CUresult cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D *pCopy, CUstream hStream) {
    return copy_3d(pCopy, hStream, 1);
}

/* Lazy unless CUDA_MODULE_LOADING=EAGER, as in drivers since CUDA 12.2. */
VGPU_EXPORT CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode) {
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    const char *env = getenv("CUDA_MODULE_LOADING");
    *mode = env && !strcmp(env, "EAGER") ? CU_MODULE_EAGER_LOADING : CU_MODULE_LAZY_LOADING;
    return CUDA_SUCCESS;
}

/* Before a call: the host functions it must follow have run (all of them for a synchronising
 * call; for work on a stream, those of its stream and of the default streams). */
static void follow_host_calls(const vgpu_function *fn, void *const *args) {
    if (!__atomic_load_n(&worker_started, __ATOMIC_SEQ_CST)) return;
    if (fn->synchronizing) {
        wait_host_calls();
        return;
    }
    for (int i = 0; i < fn->nparams; i++)
        if (fn->params[i].kind == VGPU_K_HANDLE && fn->params[i].handle_type == vgpu_cuda_handle_CUstream) {
            vgpu_cuda_host_calls_before(*(CUstream *)args[i]);
            return;
        }
    if (!strncmp(fn->name, "cuMemset", 8)) vgpu_cuda_host_calls_before(NULL); /* on the legacy stream */
}

static int dispatch(const vgpu_function *fn, void *const *args) {
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    follow_host_calls(fn, args);
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

int vgpu_cuda_dispatch_piece(const vgpu_function *fn, void *const *args, int last) {
    if (last) return vgpu_cuda_dispatch(fn, args);
    if (!__atomic_load_n(&initialized, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_INITIALIZED;
    follow_host_calls(fn, args);
    int32_t rc = CUDA_ERROR_UNKNOWN;
    switch (vgpu_marshal_queue(&api, fn, args, &rc)) {
    case VGPU_CALL_DONE: return rc;
    case VGPU_CALL_UNSUPPORTED: return CUDA_ERROR_NOT_SUPPORTED;
    case VGPU_CALL_BAD_HANDLE: return CUDA_ERROR_INVALID_HANDLE;
    default: return CUDA_ERROR_DEVICE_UNAVAILABLE;
    }
}

int vgpu_cuda_dispatch(const vgpu_function *fn, void *const *args) {
    int rc = dispatch(fn, args);
    vgpu_trace_result(&api, fn, args, rc);
    return rc;
}
