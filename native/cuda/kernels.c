/* Code and launches: loading images (the shim measures them and sends them to vgpud, which
 * parses them), and launching kernels.  A launch is checked here against the kernel's facts
 * from the load reply and the device's limits, so its errors come back at once as a real
 * driver's do; then its packed parameters are sent without waiting (OP_LAUNCH). */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"
#include "vgpu_wire.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define WRAPPER_MAGIC 0x466243B1u
#define MODULE_FLAG_LIBRARY 0x1u
#define LAUNCH_COOPERATIVE 0x1u
#define LAUNCH_GRAPH_NODE 0x2u
#define MAX_PARAM_BYTES 32764u /* kernel parameter space since CUDA 12.1 */
#define SPECIAL_STREAMS 4096u
#define MODULE_LOAD_MS 30000 /* beyond VGPU_TIMEOUT_MS, for reading an image */  /* stream handles below this are constants (NULL, legacy, per-thread) */

typedef struct kernel_info {
    char *name;
    unsigned max_threads, bound, max_dynamic_shared, required[3], nparams, param_bytes;
    uint32_t *offsets, *sizes;
    /* the legacy execution control's state (cuFuncSetBlockShape, cuFuncSetSharedSize, cuParamSet*) */
    unsigned shape[3], legacy_shared, legacy_param_size;
    uint8_t *legacy_params; /* MAX_PARAM_BYTES, allocated by the first cuParamSet* */
} kernel_info;

typedef struct module_info {
    uint64_t id;
    int library;
    unsigned nkernels;
    kernel_info *kernels;
    struct module_info *next;
} module_info;

#define MODULE_BUCKETS 256
static module_info *modules[MODULE_BUCKETS];
static pthread_rwlock_t modules_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Device limits a launch is checked against (the same on every architecture vgpud simulates,
 * read from vgpud once). */
static int limits_known;
static int max_grid[3], max_block[3], max_threads_per_block;

static void read_limits(void) {
    if (__atomic_load_n(&limits_known, __ATOMIC_ACQUIRE)) return;
    static const CUdevice_attribute grid[3] = {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y,
                                               CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z};
    static const CUdevice_attribute block[3] = {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y,
                                                CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z};
    CUdevice dev = 0;
    cuCtxGetDevice(&dev);
    for (int i = 0; i < 3; i++) {
        if (cuDeviceGetAttribute(&max_grid[i], grid[i], dev) != CUDA_SUCCESS) max_grid[i] = i ? 65535 : 0x7fffffff;
        if (cuDeviceGetAttribute(&max_block[i], block[i], dev) != CUDA_SUCCESS) max_block[i] = i < 2 ? 1024 : 64;
    }
    if (cuDeviceGetAttribute(&max_threads_per_block, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev) != CUDA_SUCCESS)
        max_threads_per_block = 1024;
    __atomic_store_n(&limits_known, 1, __ATOMIC_RELEASE);
}

/* ---- images ---- */

/* How many bytes an image takes: a fat binary's header says so, an ELF cubin ends with its
 * last section or header table, PTX with its NUL. */
static size_t image_size(const void *image, const void **start) {
    const uint8_t *p = image;
    uint32_t magic;
    memcpy(&magic, p, 4);
    if (magic == WRAPPER_MAGIC) { /* __fatBinC_Wrapper_t: {magic, version, data, filename_or_fatbins} */
        const void *data;
        memcpy(&data, p + 8, sizeof data);
        return image_size(data, start);
    }
    *start = image;
    if (magic == FATBIN_MAGIC) {
        uint16_t header_size;
        uint64_t size;
        memcpy(&header_size, p + 6, 2);
        memcpy(&size, p + 8, 8);
        return header_size + size;
    }
    if (!memcmp(p, "\177ELF", 4) && p[4] == 2) {
        uint64_t shoff, phoff, end;
        uint16_t phentsize, phnum, shentsize, shnum;
        memcpy(&phoff, p + 32, 8);
        memcpy(&shoff, p + 40, 8);
        memcpy(&phentsize, p + 54, 2);
        memcpy(&phnum, p + 56, 2);
        memcpy(&shentsize, p + 58, 2);
        memcpy(&shnum, p + 60, 2);
        end = shoff + (uint64_t)shentsize * shnum;
        if (phoff + (uint64_t)phentsize * phnum > end) end = phoff + (uint64_t)phentsize * phnum;
        for (unsigned i = 0; i < shnum; i++) {
            const uint8_t *sh = p + shoff + (uint64_t)i * shentsize;
            uint32_t type;
            uint64_t offset, size;
            memcpy(&type, sh + 4, 4);
            memcpy(&offset, sh + 24, 8);
            memcpy(&size, sh + 32, 8);
            if (type != 8 /* SHT_NOBITS */ && offset + size > end) end = offset + size;
        }
        return end;
    }
    return strlen(image) + 1;
}

static uint32_t take_u32(const uint8_t **p) {
    uint32_t v;
    memcpy(&v, *p, 4);
    *p += 4;
    return v;
}

/* The kernels of a load reply; 0 on success. */
static int remember_module(uint64_t id, int library, const uint8_t *p, const uint8_t *end, unsigned count) {
    module_info *m = calloc(1, sizeof *m);
    if (!m) return -1;
    m->id = id;
    m->library = library;
    m->kernels = calloc(count ? count : 1, sizeof *m->kernels);
    if (!m->kernels) { free(m); return -1; }
    for (unsigned i = 0; i < count; i++) {
        kernel_info *k = &m->kernels[i];
        if (p + 2 > end) break;
        uint16_t len;
        memcpy(&len, p, 2);
        p += 2;
        if (p + len + 28 > end) break;
        k->name = strndup((const char *)p, len);
        p += len;
        k->max_threads = take_u32(&p);
        k->bound = take_u32(&p);
        k->max_dynamic_shared = take_u32(&p);
        for (int d = 0; d < 3; d++) k->required[d] = take_u32(&p);
        k->nparams = take_u32(&p);
        if (p + 8ull * k->nparams > end) break;
        k->offsets = calloc(k->nparams + 1, 4);
        k->sizes = calloc(k->nparams + 1, 4);
        for (unsigned j = 0; j < k->nparams; j++) {
            k->offsets[j] = take_u32(&p);
            k->sizes[j] = take_u32(&p);
            if (k->offsets[j] + k->sizes[j] > k->param_bytes) k->param_bytes = k->offsets[j] + k->sizes[j];
        }
        m->nkernels = i + 1;
    }
    pthread_rwlock_wrlock(&modules_lock);
    m->next = modules[id % MODULE_BUCKETS];
    modules[id % MODULE_BUCKETS] = m;
    pthread_rwlock_unlock(&modules_lock);
    return 0;
}

/* The kernel behind a function id (module id << 16 | index); call with modules_lock held. */
static kernel_info *find_kernel(uint64_t function_id) {
    for (module_info *m = modules[(function_id >> 16) % MODULE_BUCKETS]; m; m = m->next)
        if (m->id == function_id >> 16) return (function_id & 0xffff) < m->nkernels ? &m->kernels[function_id & 0xffff] : NULL;
    return NULL;
}

/* Why the calling thread's last load was refused, as vgpud put it ("" when it did not say). */
static __thread char load_error[512];

const char *vgpu_cuda_load_error(void) { return load_error; }

static CUresult load(void **out, unsigned handle_type, const void *image, unsigned flags) {
    load_error[0] = 0;
    if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    const void *start = image;
    size_t size = image_size(image, &start);
    if (size + 12 > VGPU_MAX_PAYLOAD) return CUDA_ERROR_INVALID_IMAGE;
    uint8_t *req = malloc(12 + size);
    if (!req) return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t context = vgpu_cuda_context_id();
    uint32_t flags32 = flags;
    memcpy(req, &context, 8);
    memcpy(req + 8, &flags32, 4);
    memcpy(req + 12, start, size);
    const uint8_t *reply;
    size_t reply_len;
    /* a large image (cuBLASLt's hold hundreds of kernels) takes vgpud a while to read the first time */
    int status = vgpu_call(vgpu_cuda_api(), VGPU_OP_MODULE, req, 12 + size, &reply, &reply_len, MODULE_LOAD_MS);
    free(req);
    if (status != VGPU_OK) return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t rc;
    uint64_t id;
    uint32_t count;
    if (reply_len < 16) return CUDA_ERROR_UNKNOWN;
    memcpy(&rc, reply, 4);
    memcpy(&id, reply + 4, 8);
    memcpy(&count, reply + 12, 4);
    if (rc != CUDA_SUCCESS) { /* vgpud may say why after the 16 bytes */
        size_t n = reply_len - 16 < sizeof load_error - 1 ? reply_len - 16 : sizeof load_error - 1;
        memcpy(load_error, reply + 16, n);
        load_error[n] = 0;
        return (CUresult)rc;
    }
    if (remember_module(id, flags & MODULE_FLAG_LIBRARY, reply + 16, reply + reply_len, count) < 0) return CUDA_ERROR_OUT_OF_MEMORY;
    *out = vgpu_handle_for(handle_type, id);
    vgpu_cuda_log(3, "loaded %zu-byte image as %s %llu with %u kernels", size,
                  flags & MODULE_FLAG_LIBRARY ? "library" : "module", (unsigned long long)id, count);
    return *out ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* The functions of a loaded module, in the module's order (TOOLS_MODULE's function iterator):
 * up to max of them into out; their count, or -1 for a handle that names no module. */
int vgpu_cuda_module_functions(CUmodule module, CUfunction *out, unsigned max) {
    uint64_t id;
    if (vgpu_handle_id(vgpu_cuda_handle_CUmodule, module, &id) < 0) return -1;
    int count = -1;
    pthread_rwlock_rdlock(&modules_lock);
    for (module_info *m = modules[id % MODULE_BUCKETS]; m; m = m->next)
        if (m->id == id) {
            count = (int)m->nkernels;
            break;
        }
    pthread_rwlock_unlock(&modules_lock);
    for (int i = 0; i < count && (unsigned)i < max; i++)
        out[i] = vgpu_handle_for(vgpu_cuda_handle_CUfunction, id << 16 | (uint64_t)i);
    return count;
}

static CUresult traced(const char *name, CUresult rc) {
    char detail[8] = "";
    vgpu_trace_call("cuda", name, rc, detail);
    return rc;
}

VGPU_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    return traced("cuModuleLoadData", load((void **)module, vgpu_cuda_handle_CUmodule, image, 0));
}

VGPU_EXPORT CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                        CUjit_option *options, void **optionValues) {
    return traced("cuModuleLoadDataEx", load((void **)module, vgpu_cuda_handle_CUmodule, image, 0));
}

VGPU_EXPORT CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin) {
    return traced("cuModuleLoadFatBinary", load((void **)module, vgpu_cuda_handle_CUmodule, fatCubin, 0));
}

VGPU_EXPORT CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                                       void **jitOptionsValues, unsigned int numJitOptions,
                                       CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                       unsigned int numLibraryOptions) {
    return traced("cuLibraryLoadData", load((void **)library, vgpu_cuda_handle_CUlibrary, code, MODULE_FLAG_LIBRARY));
}

/* A file's contents, NUL-terminated (PTX files need it); NULL when it cannot be read. */
static void *read_file(const char *path) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            char *bigger = realloc(buf, cap * 2 + 1);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[len] = 0;
    return buf;
}

static CUresult load_file(void **out, unsigned handle_type, const char *path, unsigned flags) {
    if (!out || !path) return CUDA_ERROR_INVALID_VALUE;
    void *data = read_file(path);
    if (!data) return CUDA_ERROR_FILE_NOT_FOUND;
    CUresult rc = load(out, handle_type, data, flags);
    free(data);
    return rc;
}

VGPU_EXPORT CUresult cuModuleLoad(CUmodule *module, const char *fname) {
    return traced("cuModuleLoad", load_file((void **)module, vgpu_cuda_handle_CUmodule, fname, 0));
}

VGPU_EXPORT CUresult cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, CUjit_option *jitOptions,
                                           void **jitOptionsValues, unsigned int numJitOptions,
                                           CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                           unsigned int numLibraryOptions) {
    return traced("cuLibraryLoadFromFile",
                  load_file((void **)library, vgpu_cuda_handle_CUlibrary, fileName, MODULE_FLAG_LIBRARY));
}

/* CUDART_INTERFACE's module slots: load the fat binary a wrapper (or header) points at. */
CUresult vgpu_cuda_module_from_fatbin(CUmodule *module, const void *fatbin) {
    return load((void **)module, vgpu_cuda_handle_CUmodule, fatbin, 0);
}

/* ---- launches ---- */

/* CUkernel and CUfunction handles share a handle type (cuda_annotations.toml, handle_aliases). */
static int function_id(CUfunction f, uint64_t *id) { return vgpu_handle_id(vgpu_cuda_handle_CUfunction, f, id); }

static int stream_id(CUstream stream, uint64_t *id) {
    if ((uintptr_t)stream < SPECIAL_STREAMS) {
        *id = (uintptr_t)stream;
        return 0;
    }
    return vgpu_handle_id(vgpu_cuda_handle_CUstream, stream, id);
}

typedef struct launch_request {
    uint64_t context, function, stream;
    uint32_t grid[3], block[3], shared, flags, args_size;
} __attribute__((packed)) launch_request;

/* Check a launch against the kernel and the device, and pack its parameters into args
 * (MAX_PARAM_BYTES); the request's head is filled but for the stream. */
static CUresult prepare(CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned shared, void **params,
                        void **extra, unsigned flags, launch_request *head, uint8_t *args) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t context = vgpu_cuda_context_id(), fid;
    if (!context) return CUDA_ERROR_INVALID_CONTEXT;
    if (!f || function_id(f, &fid) < 0) return CUDA_ERROR_INVALID_HANDLE;
    read_limits();
    unsigned long long threads = 1;
    for (int d = 0; d < 3; d++) {
        if (!grid[d] || grid[d] > (unsigned)max_grid[d] || !block[d] || block[d] > (unsigned)max_block[d])
            return CUDA_ERROR_INVALID_VALUE;
        threads *= block[d];
    }
    if (threads > (unsigned)max_threads_per_block) return CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&modules_lock);
    kernel_info *k = find_kernel(fid);
    CUresult rc = CUDA_SUCCESS;
    size_t args_size = 0;
    if (!k) rc = CUDA_ERROR_INVALID_HANDLE;
    else if (k->bound && threads > k->bound) rc = CUDA_ERROR_INVALID_VALUE; /* __launch_bounds__, as on an H200 */
    else if (threads > k->max_threads) rc = CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES; /* too many registers */
    else if (k->required[0] && (block[0] != k->required[0] || block[1] != k->required[1] || block[2] != k->required[2]))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (shared > k->max_dynamic_shared) rc = CUDA_ERROR_INVALID_VALUE;
    else if (params && extra) rc = CUDA_ERROR_INVALID_VALUE;
    else if (extra) { /* {CU_LAUNCH_PARAM_BUFFER_POINTER, p, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END} */
        const void *buffer = NULL;
        size_t *size = NULL;
        for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END && i < 64; i += 2) {
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) buffer = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) size = extra[i + 1];
            else { rc = CUDA_ERROR_INVALID_VALUE; break; }
        }
        if (rc == CUDA_SUCCESS && (!buffer || !size || *size < k->param_bytes || *size > MAX_PARAM_BYTES))
            rc = CUDA_ERROR_INVALID_VALUE;
        if (rc == CUDA_SUCCESS) {
            args_size = *size;
            memcpy(args, buffer, args_size);
        }
    } else if (k->nparams && !params) rc = CUDA_ERROR_INVALID_VALUE;
    else {
        args_size = k->param_bytes;
        memset(args, 0, args_size);
        for (unsigned i = 0; i < k->nparams && rc == CUDA_SUCCESS; i++) {
            if (!params[i]) rc = CUDA_ERROR_INVALID_VALUE;
            else memcpy(args + k->offsets[i], params[i], k->sizes[i]);
        }
    }
    pthread_rwlock_unlock(&modules_lock);
    *head = (launch_request){context, fid, 0, {grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]},
                             shared, flags, (uint32_t)args_size};
    return rc;
}

static CUresult launch(CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned shared,
                       CUstream stream, void **params, void **extra, unsigned flags) {
    struct {
        launch_request head;
        uint8_t args[MAX_PARAM_BYTES];
    } req;
    uint64_t sid;
    if (vgpu_cuda_initialized() && stream_id(stream, &sid) < 0) return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = prepare(f, grid, block, shared, params, extra, flags, &req.head, req.args);
    if (rc != CUDA_SUCCESS) return rc;
    req.head.stream = sid;
    vgpu_cuda_host_calls_before(stream);
    if (vgpu_post_record(vgpu_cuda_api(), VGPU_OP_LAUNCH, &req, sizeof req.head + req.head.args_size) != VGPU_OK)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    return CUDA_SUCCESS;
}

/* A kernel node: the launch's head, the graph and its dependencies, the packed parameters;
 * vgpud answers with the node's id. */
#define MAX_NODE_DEPENDENCIES 1024
static CUresult add_kernel_node(CUgraphNode *node, CUgraph graph, const CUgraphNode *dependencies, size_t count,
                                CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned shared,
                                void **params, void **extra) {
    if (!node || (count && !dependencies) || count > MAX_NODE_DEPENDENCIES) return CUDA_ERROR_INVALID_VALUE;
    static __thread uint8_t req[sizeof(launch_request) + 12 + 8 * MAX_NODE_DEPENDENCIES + MAX_PARAM_BYTES];
    launch_request head;
    uint8_t *args = req + sizeof head + 12 + 8 * count;
    CUresult rc = prepare(f, grid, block, shared, params, extra, LAUNCH_GRAPH_NODE, &head, args);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t graph_id;
    uint32_t count32 = (uint32_t)count;
    if (!graph || vgpu_handle_id(vgpu_cuda_handle_CUgraph, graph, &graph_id) < 0) return CUDA_ERROR_INVALID_HANDLE;
    memcpy(req, &head, sizeof head);
    memcpy(req + sizeof head, &graph_id, 8);
    memcpy(req + sizeof head + 8, &count32, 4);
    for (size_t i = 0; i < count; i++) {
        uint64_t id;
        if (vgpu_handle_id(vgpu_cuda_handle_CUgraphNode, dependencies[i], &id) < 0) return CUDA_ERROR_INVALID_HANDLE;
        memcpy(req + sizeof head + 12 + 8 * i, &id, 8);
    }
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(vgpu_cuda_api(), VGPU_OP_LAUNCH, req, sizeof head + 12 + 8 * count + head.args_size, &reply,
                  &reply_len, 0) != VGPU_OK || reply_len < 4)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t result;
    uint64_t id = 0;
    memcpy(&result, reply, 4);
    if (reply_len >= 12) memcpy(&id, reply + 4, 8);
    if (result != CUDA_SUCCESS) return (CUresult)result;
    *node = vgpu_handle_for(vgpu_cuda_handle_CUgraphNode, id);
    return *node ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

VGPU_EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                             size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, p->func ? p->func : (CUfunction)p->kern,
                           grid, block, p->sharedMemBytes, p->kernelParams, p->extra);
}

VGPU_EXPORT CUresult cuGraphAddKernelNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                          size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS_v1 *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, p->func, grid, block, p->sharedMemBytes,
                           p->kernelParams, p->extra);
}

/* A cooperative grid must be resident all at once: at most the occupancy times the SMs. */
static CUresult check_cooperative(CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned shared) {
    int per_sm = 0, sms = 0;
    CUdevice dev = 0;
    CUresult rc = cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, f, (int)(block[0] * block[1] * block[2]), shared);
    if (rc == CUDA_SUCCESS) rc = cuCtxGetDevice(&dev);
    if (rc == CUDA_SUCCESS) rc = cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    if (rc != CUDA_SUCCESS) return rc;
    return (unsigned long long)grid[0] * grid[1] * grid[2] > (unsigned long long)per_sm * sms
               ? CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
               : CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                    unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                    unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
    const unsigned grid[3] = {gridDimX, gridDimY, gridDimZ}, block[3] = {blockDimX, blockDimY, blockDimZ};
    return launch(f, grid, block, sharedMemBytes, hStream, kernelParams, extra, 0);
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                               unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                               unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                               void **kernelParams) {
    const unsigned grid[3] = {gridDimX, gridDimY, gridDimZ}, block[3] = {blockDimX, blockDimY, blockDimZ};
    CUresult rc = check_cooperative(f, grid, block, sharedMemBytes);
    return rc != CUDA_SUCCESS ? rc : launch(f, grid, block, sharedMemBytes, hStream, kernelParams, NULL, LAUNCH_COOPERATIVE);
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra) {
    if (!config) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {config->gridDimX, config->gridDimY, config->gridDimZ};
    const unsigned block[3] = {config->blockDimX, config->blockDimY, config->blockDimZ};
    unsigned flags = 0;
    if (config->numAttrs && !config->attrs) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < config->numAttrs; i++) {
        const CUlaunchAttribute *a = &config->attrs[i];
        if (a->id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE && a->value.cooperative) flags |= LAUNCH_COOPERATIVE;
        else if (a->id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) {
            const unsigned cluster[3] = {a->value.clusterDim.x, a->value.clusterDim.y, a->value.clusterDim.z};
            for (int d = 0; d < 3; d++)
                if (!cluster[d] || grid[d] % cluster[d]) return CUDA_ERROR_INVALID_VALUE;
            if ((unsigned long long)cluster[0] * cluster[1] * cluster[2] > 8) return CUDA_ERROR_INVALID_CLUSTER_SIZE;
        } else if (a->id > CU_LAUNCH_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
    }
    if (flags & LAUNCH_COOPERATIVE) {
        CUresult rc = check_cooperative(f, grid, block, config->sharedMemBytes);
        if (rc != CUDA_SUCCESS) return rc;
    }
    return launch(f, grid, block, config->sharedMemBytes, config->hStream, kernelParams, extra, flags);
}

/* The block size with the most resident threads per SM (the largest on ties), and the grid
 * that fills the device with it; the caller's callback gives the dynamic shared memory a
 * block size needs, so this runs here, asking vgpud for each candidate's occupancy. */
VGPU_EXPORT CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int *minGridSize, int *blockSize, CUfunction func,
                                                               CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                               size_t dynamicSMemSize, int blockSizeLimit,
                                                               unsigned int flags) {
    if (!minGridSize || !blockSize) return CUDA_ERROR_INVALID_VALUE;
    int ceiling = 0, sms = 0, best_threads = 0, best_block = 0, best_blocks = 0;
    CUdevice dev = 0;
    CUresult rc = cuFuncGetAttribute(&ceiling, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, func);
    if (rc == CUDA_SUCCESS) rc = cuCtxGetDevice(&dev);
    if (rc == CUDA_SUCCESS) rc = cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    if (rc != CUDA_SUCCESS) return rc;
    if (blockSizeLimit > 0 && blockSizeLimit < ceiling) ceiling = blockSizeLimit;
    for (int block = 32; block <= ceiling; block += 32) {
        size_t shared = blockSizeToDynamicSMemSize ? blockSizeToDynamicSMemSize(block) : dynamicSMemSize;
        int blocks = 0;
        rc = cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&blocks, func, block, shared, flags);
        if (rc != CUDA_SUCCESS) return rc;
        if (blocks && blocks * block >= best_threads) {
            best_threads = blocks * block;
            best_block = block;
            best_blocks = blocks;
        }
    }
    *minGridSize = best_blocks * sms;
    *blockSize = best_block;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuOccupancyMaxPotentialBlockSize(int *minGridSize, int *blockSize, CUfunction func,
                                                      CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                      size_t dynamicSMemSize, int blockSizeLimit) {
    return cuOccupancyMaxPotentialBlockSizeWithFlags(minGridSize, blockSize, func, blockSizeToDynamicSMemSize,
                                                     dynamicSMemSize, blockSizeLimit, 0);
}

/* cuFuncSetAttribute goes to vgpud; the shim keeps the dynamic shared memory limit it checks
 * launches against in step. */
static void note_dynamic_shared(CUfunction f, CUfunction_attribute attrib, int value) {
    uint64_t fid;
    if (attrib != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES || function_id(f, &fid) < 0) return;
    pthread_rwlock_wrlock(&modules_lock);
    kernel_info *k = find_kernel(fid);
    if (k) k->max_dynamic_shared = (unsigned)value;
    pthread_rwlock_unlock(&modules_lock);
}

VGPU_EXPORT CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
    void *const args[] = {(void *)&hfunc, (void *)&attrib, (void *)&value};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuFuncSetAttribute, args);
    if (rc == CUDA_SUCCESS) note_dynamic_shared(hfunc, attrib, value);
    return rc;
}

VGPU_EXPORT CUresult cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev) {
    void *const args[] = {(void *)&attrib, (void *)&val, (void *)&kernel, (void *)&dev};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuKernelSetAttribute, args);
    if (rc == CUDA_SUCCESS) note_dynamic_shared((CUfunction)kernel, attrib, val);
    return rc;
}

/* Clusters (sm_90): a cluster's blocks run on the SMs of one GPC.  The model: GPCs of 16 SMs
 * (the rest in a smaller one), each holding the occupancy's blocks per SM; 16 blocks is the
 * largest (non-portable) cluster, 8 the largest portable one. */
#define GPC_SMS 16

static unsigned cluster_blocks(const CUlaunchConfig *config) {
    for (unsigned i = 0; i < config->numAttrs && config->attrs; i++)
        if (config->attrs[i].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
            return config->attrs[i].value.clusterDim.x * config->attrs[i].value.clusterDim.y *
                   config->attrs[i].value.clusterDim.z;
    return 1;
}

VGPU_EXPORT CUresult cuOccupancyMaxActiveClusters(int *numClusters, CUfunction func, const CUlaunchConfig *config) {
    if (!numClusters || !config) return CUDA_ERROR_INVALID_VALUE;
    unsigned cluster = cluster_blocks(config);
    if (!cluster || cluster > GPC_SMS) return CUDA_ERROR_INVALID_CLUSTER_SIZE;
    int per_sm = 0, sms = 0, threads = (int)(config->blockDimX * config->blockDimY * config->blockDimZ);
    CUdevice dev = 0;
    CUresult rc = cuCtxGetDevice(&dev);
    if (rc == CUDA_SUCCESS) rc = cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    if (rc != CUDA_SUCCESS) return rc;
    if (func) {
        rc = cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, func, threads, config->sharedMemBytes);
        if (rc != CUDA_SUCCESS) return rc;
    } else {
        /* No kernel: cuBLASLt 13.10 asks so on drivers of CUDA 13.3 and later, and goes on only
         * with an answer. Blocks of the configuration's size limited by the SM's block, thread and
         * shared memory limits alone (a kernel using no registers or static shared memory). */
        int blocks = 0, sm_threads = 0, sm_shared = 0;
        if (!threads) return CUDA_ERROR_INVALID_VALUE;
        rc = cuDeviceGetAttribute(&blocks, CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, dev);
        if (rc == CUDA_SUCCESS) rc = cuDeviceGetAttribute(&sm_threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev);
        if (rc == CUDA_SUCCESS)
            rc = cuDeviceGetAttribute(&sm_shared, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, dev);
        if (rc != CUDA_SUCCESS) return rc;
        per_sm = blocks < sm_threads / threads ? blocks : sm_threads / threads;
        if (config->sharedMemBytes && (int)(sm_shared / config->sharedMemBytes) < per_sm)
            per_sm = (int)(sm_shared / config->sharedMemBytes);
    }
    *numClusters = sms / GPC_SMS * (GPC_SMS * per_sm / (int)cluster) + sms % GPC_SMS * per_sm / (int)cluster;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuOccupancyMaxPotentialClusterSize(int *clusterSize, CUfunction func,
                                                        const CUlaunchConfig *config) {
    if (!clusterSize || !config) return CUDA_ERROR_INVALID_VALUE;
    uint64_t fid;
    if (!func || function_id(func, &fid) < 0) return CUDA_ERROR_INVALID_HANDLE;
    *clusterSize = 8; /* the portable cluster size */
    return CUDA_SUCCESS;
}

/* ---- what the shim knows of loaded code: names, parameter counts, enumerations ---- */

/* The module or library behind an id; call with modules_lock held. */
static module_info *find_module(uint64_t id) {
    for (module_info *m = modules[id % MODULE_BUCKETS]; m; m = m->next)
        if (m->id == id) return m;
    return NULL;
}

/* Up to max handles of a module's (or library's) kernels into out, in the module's order. */
static CUresult enumerate(void **out, unsigned max, unsigned owner_type, const void *owner, int library,
                          unsigned item_type) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t id;
    if (!owner || vgpu_handle_id(owner_type, owner, &id) < 0) return CUDA_ERROR_INVALID_HANDLE;
    if (!out && max) return CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&modules_lock);
    module_info *m = find_module(id);
    unsigned count = m && m->library == library ? m->nkernels : 0;
    pthread_rwlock_unlock(&modules_lock);
    if (!m || m->library != library) return CUDA_ERROR_INVALID_HANDLE;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < count && i < max; i++)
        if (!(out[i] = vgpu_handle_for(item_type, id << 16 | i))) return CUDA_ERROR_OUT_OF_MEMORY;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuModuleEnumerateFunctions(CUfunction *functions, unsigned int numFunctions, CUmodule mod) {
    return enumerate((void **)functions, numFunctions, vgpu_cuda_handle_CUmodule, mod, 0, vgpu_cuda_handle_CUfunction);
}

VGPU_EXPORT CUresult cuLibraryEnumerateKernels(CUkernel *kernels, unsigned int numKernels, CUlibrary lib) {
    return enumerate((void **)kernels, numKernels, vgpu_cuda_handle_CUlibrary, lib, 1, vgpu_cuda_handle_CUkernel);
}

/* What the shim knows of a kernel: its name (kept for the life of the process, as the modules
 * are), parameter count, and whether its module is a library. */
typedef struct kernel_facts {
    const char *name;
    unsigned nparams;
    int library;
    uint64_t module;
} kernel_facts;

static CUresult facts_of(const void *f, kernel_facts *out) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t fid;
    if (!f || function_id((CUfunction)f, &fid) < 0) return CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_rdlock(&modules_lock);
    module_info *m = find_module(fid >> 16);
    kernel_info *k = find_kernel(fid);
    if (k) *out = (kernel_facts){k->name, k->nparams, m->library, m->id};
    pthread_rwlock_unlock(&modules_lock);
    return k ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

static CUresult kernel_name(const char **name, const void *f) {
    kernel_facts facts;
    CUresult rc = facts_of(f, &facts);
    if (rc == CUDA_SUCCESS && !name) rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) *name = facts.name;
    return rc;
}

static CUresult param_count(const void *f, size_t *count) {
    kernel_facts facts;
    CUresult rc = facts_of(f, &facts);
    if (rc == CUDA_SUCCESS && !count) rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) *count = facts.nparams;
    return rc;
}

VGPU_EXPORT CUresult cuFuncGetName(const char **name, CUfunction hfunc) { return kernel_name(name, hfunc); }

VGPU_EXPORT CUresult cuKernelGetName(const char **name, CUkernel hfunc) { return kernel_name(name, hfunc); }

VGPU_EXPORT CUresult cuFuncGetParamCount(CUfunction func, size_t *paramCount) { return param_count(func, paramCount); }

VGPU_EXPORT CUresult cuKernelGetParamCount(CUkernel kernel, size_t *paramCount) {
    return param_count(kernel, paramCount);
}

/* The library a kernel came from; a module's function is no library's kernel. */
VGPU_EXPORT CUresult cuKernelGetLibrary(CUlibrary *pLib, CUkernel kernel) {
    kernel_facts facts;
    CUresult rc = facts_of(kernel, &facts);
    if (rc != CUDA_SUCCESS) return rc;
    if (!pLib) return CUDA_ERROR_INVALID_VALUE;
    if (!facts.library) return CUDA_ERROR_INVALID_HANDLE;
    *pLib = vgpu_handle_for(vgpu_cuda_handle_CUlibrary, facts.module);
    return *pLib ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* ---- the legacy execution control: a function's block shape, dynamic shared memory and
 * parameter buffer, set call by call and used by cuLaunch, cuLaunchGrid and cuLaunchGridAsync,
 * whose launches are checked, packed and recorded as cuLaunchKernel's ---- */

/* Run the statements given on a function's kernel `k` under the write lock; rc_ is the answer. */
#define WITH_KERNEL(f, ...)                                                   \
    do {                                                                      \
        if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;     \
        uint64_t fid_;                                                        \
        if (!(f) || function_id((f), &fid_) < 0) return CUDA_ERROR_INVALID_HANDLE; \
        CUresult rc_ = CUDA_SUCCESS;                                          \
        pthread_rwlock_wrlock(&modules_lock);                                 \
        kernel_info *k = find_kernel(fid_);                                   \
        if (!k) rc_ = CUDA_ERROR_INVALID_HANDLE;                              \
        else { __VA_ARGS__ }                                                  \
        pthread_rwlock_unlock(&modules_lock);                                 \
        return rc_;                                                           \
    } while (0)

VGPU_EXPORT CUresult cuFuncSetBlockShape(CUfunction hfunc, int x, int y, int z) {
    WITH_KERNEL(hfunc, {
        if (x <= 0 || y <= 0 || z <= 0) rc_ = CUDA_ERROR_INVALID_VALUE;
        else k->shape[0] = (unsigned)x, k->shape[1] = (unsigned)y, k->shape[2] = (unsigned)z;
    });
}

VGPU_EXPORT CUresult cuFuncSetSharedSize(CUfunction hfunc, unsigned int bytes) {
    WITH_KERNEL(hfunc, { k->legacy_shared = bytes; });
}

VGPU_EXPORT CUresult cuParamSetSize(CUfunction hfunc, unsigned int numbytes) {
    WITH_KERNEL(hfunc, {
        if (numbytes > MAX_PARAM_BYTES) rc_ = CUDA_ERROR_INVALID_VALUE;
        else k->legacy_param_size = numbytes;
    });
}

/* Copy bytes into a function's parameter buffer at offset (within the kernel parameter space). */
static CUresult set_param(CUfunction f, int offset, const void *value, unsigned size) {
    if (offset < 0 || (unsigned long long)offset + size > MAX_PARAM_BYTES || (size && !value))
        return vgpu_cuda_initialized() ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_NOT_INITIALIZED;
    WITH_KERNEL(f, {
        if (!k->legacy_params) k->legacy_params = calloc(1, MAX_PARAM_BYTES);
        if (!k->legacy_params) rc_ = CUDA_ERROR_OUT_OF_MEMORY;
        else memcpy(k->legacy_params + offset, value, size);
    });
}

VGPU_EXPORT CUresult cuParamSeti(CUfunction hfunc, int offset, unsigned int value) {
    return set_param(hfunc, offset, &value, sizeof value);
}

VGPU_EXPORT CUresult cuParamSetf(CUfunction hfunc, int offset, float value) {
    return set_param(hfunc, offset, &value, sizeof value);
}

VGPU_EXPORT CUresult cuParamSetv(CUfunction hfunc, int offset, void *ptr, unsigned int numbytes) {
    return set_param(hfunc, offset, ptr, numbytes);
}

/* A launch of the state the calls above set: its parameter buffer goes as cuLaunchKernel's
 * `extra` buffer would (checked against the kernel's parameter size). */
static CUresult legacy_launch(CUfunction f, int width, int height, CUstream stream) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t fid;
    if (!f || function_id(f, &fid) < 0) return CUDA_ERROR_INVALID_HANDLE;
    static __thread uint8_t params[MAX_PARAM_BYTES];
    unsigned block[3] = {0, 0, 0}, shared = 0;
    size_t size = 0;
    pthread_rwlock_rdlock(&modules_lock);
    kernel_info *k = find_kernel(fid);
    if (k) {
        memcpy(block, k->shape, sizeof block);
        shared = k->legacy_shared;
        size = k->legacy_param_size;
        if (k->legacy_params) memcpy(params, k->legacy_params, size);
        else memset(params, 0, size);
    }
    pthread_rwlock_unlock(&modules_lock);
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    if (width <= 0 || height <= 0) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {(unsigned)width, (unsigned)height, 1};
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, params, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    return launch(f, grid, block, shared, stream, NULL, extra, 0);
}

VGPU_EXPORT CUresult cuLaunch(CUfunction f) { return legacy_launch(f, 1, 1, NULL); }

VGPU_EXPORT CUresult cuLaunchGrid(CUfunction f, int grid_width, int grid_height) {
    return legacy_launch(f, grid_width, grid_height, NULL);
}

VGPU_EXPORT CUresult cuLaunchGridAsync(CUfunction f, int grid_width, int grid_height, CUstream hStream) {
    return legacy_launch(f, grid_width, grid_height, hStream);
}

/* ---- kernel nodes' parameters, set and read (vgpud keeps them: cuda_graphs.py) ---- */

extern const unsigned vgpu_cuda_handle_CUgraphExec;

#define NODE_SET 0x4u
#define NODE_GET 0x8u

/* Set a kernel node's launch (of the graph, or with graph_exec of an executable graph). */
static CUresult set_kernel_node(CUgraphExec graph_exec, CUgraphNode node, CUfunction f, const unsigned grid[3],
                                const unsigned block[3], unsigned shared, void **params, void **extra) {
    static __thread uint8_t req[sizeof(launch_request) + 16 + MAX_PARAM_BYTES];
    launch_request head;
    uint8_t *args = req + sizeof head + 16;
    CUresult rc = prepare(f, grid, block, shared, params, extra, NODE_SET, &head, args);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t ids[2] = {0, 0};
    if (!node || vgpu_handle_id(vgpu_cuda_handle_CUgraphNode, node, &ids[0]) < 0) return CUDA_ERROR_INVALID_HANDLE;
    if (graph_exec && vgpu_handle_id(vgpu_cuda_handle_CUgraphExec, graph_exec, &ids[1]) < 0)
        return CUDA_ERROR_INVALID_HANDLE;
    memcpy(req, &head, sizeof head);
    memcpy(req + sizeof head, ids, sizeof ids);
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(vgpu_cuda_api(), VGPU_OP_LAUNCH, req, sizeof head + 16 + head.args_size, &reply, &reply_len, 0) !=
            VGPU_OK || reply_len < 4)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t result;
    memcpy(&result, reply, 4);
    return (CUresult)result;
}

VGPU_EXPORT CUresult cuGraphKernelNodeSetParams_v2(CUgraphNode hNode, const CUDA_KERNEL_NODE_PARAMS *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return set_kernel_node(NULL, hNode, p->func ? p->func : (CUfunction)p->kern, grid, block, p->sharedMemBytes,
                           p->kernelParams, p->extra);
}
VGPU_EXPORT CUresult cuGraphKernelNodeSetParams(CUgraphNode hNode, const CUDA_KERNEL_NODE_PARAMS_v1 *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return set_kernel_node(NULL, hNode, p->func, grid, block, p->sharedMemBytes, p->kernelParams, p->extra);
}
VGPU_EXPORT CUresult cuGraphExecKernelNodeSetParams_v2(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                       const CUDA_KERNEL_NODE_PARAMS *p) {
    if (!p || !hGraphExec) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return set_kernel_node(hGraphExec, hNode, p->func ? p->func : (CUfunction)p->kern, grid, block, p->sharedMemBytes,
                           p->kernelParams, p->extra);
}
VGPU_EXPORT CUresult cuGraphExecKernelNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                    const CUDA_KERNEL_NODE_PARAMS_v1 *p) {
    if (!p || !hGraphExec) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {p->gridDimX, p->gridDimY, p->gridDimZ}, block[3] = {p->blockDimX, p->blockDimY, p->blockDimZ};
    return set_kernel_node(hGraphExec, hNode, p->func, grid, block, p->sharedMemBytes, p->kernelParams, p->extra);
}

/* What cuGraphKernelNodeGetParams hands out: the node's packed parameters and pointers to each,
 * owned by the library (as the driver owns them) until the next read of the same node. */
typedef struct node_parameters {
    CUgraphNode node;
    uint8_t *args;
    void **pointers;
    struct node_parameters *next;
} node_parameters;

static node_parameters *read_parameters;
static pthread_mutex_t read_parameters_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct kernel_node {
    CUfunction func;
    unsigned grid[3], block[3], shared;
    void **params;
} kernel_node;

static CUresult get_kernel_node(CUgraphNode node, kernel_node *out) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    uint8_t req[sizeof(launch_request) + 16];
    launch_request head = {vgpu_cuda_context_id(), 0, 0, {0, 0, 0}, {0, 0, 0}, 0, NODE_GET, 0};
    uint64_t ids[2] = {0, 0};
    if (!node || vgpu_handle_id(vgpu_cuda_handle_CUgraphNode, node, &ids[0]) < 0) return CUDA_ERROR_INVALID_HANDLE;
    memcpy(req, &head, sizeof head);
    memcpy(req + sizeof head, ids, sizeof ids);
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(vgpu_cuda_api(), VGPU_OP_LAUNCH, req, sizeof req, &reply, &reply_len, 0) != VGPU_OK || reply_len < 4)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t result;
    memcpy(&result, reply, 4);
    if (result != CUDA_SUCCESS) return (CUresult)result;
    if (reply_len < 4 + sizeof head) return CUDA_ERROR_DEVICE_UNAVAILABLE;
    memcpy(&head, reply + 4, sizeof head);
    if (reply_len < 4 + sizeof head + head.args_size) return CUDA_ERROR_DEVICE_UNAVAILABLE;
    node_parameters *kept = calloc(1, sizeof *kept);
    uint8_t *args = malloc(head.args_size ? head.args_size : 1);
    pthread_rwlock_rdlock(&modules_lock);
    kernel_info *k = find_kernel(head.function);
    unsigned nparams = k ? k->nparams : 0;
    void **pointers = calloc(nparams + 1, sizeof *pointers);
    if (kept && args && pointers) {
        memcpy(args, reply + 4 + sizeof head, head.args_size);
        for (unsigned i = 0; i < nparams; i++) pointers[i] = args + k->offsets[i];
    }
    pthread_rwlock_unlock(&modules_lock);
    if (!kept || !args || !pointers) {
        free(kept), free(args), free(pointers);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *kept = (node_parameters){node, args, pointers, NULL};
    pthread_mutex_lock(&read_parameters_lock);
    for (node_parameters **at = &read_parameters; *at; at = &(*at)->next)
        if ((*at)->node == node) { /* the previous read's pointers give way to this one's */
            node_parameters *old = *at;
            *at = old->next;
            free(old->args), free(old->pointers), free(old);
            break;
        }
    kept->next = read_parameters;
    read_parameters = kept;
    pthread_mutex_unlock(&read_parameters_lock);
    *out = (kernel_node){vgpu_handle_for(vgpu_cuda_handle_CUfunction, head.function),
                         {head.grid[0], head.grid[1], head.grid[2]}, {head.block[0], head.block[1], head.block[2]},
                         head.shared, pointers};
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode hNode, CUDA_KERNEL_NODE_PARAMS *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    kernel_node k;
    CUresult rc = get_kernel_node(hNode, &k);
    if (rc != CUDA_SUCCESS) return rc;
    *p = (CUDA_KERNEL_NODE_PARAMS){k.func, k.grid[0], k.grid[1], k.grid[2], k.block[0], k.block[1], k.block[2],
                                   k.shared, k.params, NULL, NULL, NULL};
    return CUDA_SUCCESS;
}
VGPU_EXPORT CUresult cuGraphKernelNodeGetParams(CUgraphNode hNode, CUDA_KERNEL_NODE_PARAMS_v1 *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    kernel_node k;
    CUresult rc = get_kernel_node(hNode, &k);
    if (rc != CUDA_SUCCESS) return rc;
    *p = (CUDA_KERNEL_NODE_PARAMS_v1){k.func, k.grid[0], k.grid[1], k.grid[2], k.block[0], k.block[1], k.block[2],
                                      k.shared, k.params, NULL};
    return CUDA_SUCCESS;
}

/* A loaded kernel's name (cuGraphDebugDotPrint in graphs.c), or NULL; the name lives as long as
 * the process (modules are never forgotten by the library). */
const char *vgpu_cuda_kernel_name(CUfunction f) {
    uint64_t fid;
    if (!f || function_id(f, &fid) < 0) return NULL;
    pthread_rwlock_rdlock(&modules_lock);
    kernel_info *k = find_kernel(fid);
    const char *name = k ? k->name : NULL;
    pthread_rwlock_unlock(&modules_lock);
    return name;
}
