/* The CUDA driver shim's hand-written core, shared with the generated stubs. */
#pragma once
#include <cuda.h>

#include "marshal.h"

#define VGPU_EXPORT __attribute__((visibility("default")))

extern const char vgpu_cuda_digest[];
extern const unsigned vgpu_cuda_op_base;
extern const unsigned vgpu_cuda_op_count;

/* One row of cuGetProcAddress's table, generated from cudaTypedefs.h: the symbol for a name
 * from a CUDA version on, and its per-thread-default-stream variant from its own version on. */
typedef struct vgpu_proc_entry {
    const char *name;
    int version;
    void *symbol;
    void *per_thread;
    int per_thread_version;
} vgpu_proc_entry;

extern const vgpu_proc_entry vgpu_cuda_procs[];
extern const unsigned vgpu_cuda_proc_count;
extern const vgpu_function vgpu_cuda_fn_cuDriverGetVersion;
extern const vgpu_function vgpu_cuda_fn_cuDeviceGetCount;

extern const unsigned vgpu_cuda_handle_CUcontext;
extern const unsigned vgpu_cuda_handle_CUlogsCallbackHandle;
extern const unsigned vgpu_cuda_handle_CUmodule, vgpu_cuda_handle_CUlibrary, vgpu_cuda_handle_CUfunction,
    vgpu_cuda_handle_CUkernel, vgpu_cuda_handle_CUstream, vgpu_cuda_handle_CUgraph, vgpu_cuda_handle_CUgraphNode;
extern const vgpu_function vgpu_cuda_fn_cuFuncSetAttribute, vgpu_cuda_fn_cuKernelSetAttribute,
    vgpu_cuda_fn_cuStreamGetCaptureInfo;

/* The library's connection state, for the shim's other files. */
vgpu_api *vgpu_cuda_api(void);
/* The calling thread's current context as vgpud knows it (0: none). */
uint64_t vgpu_cuda_context_id(void);
int vgpu_cuda_initialized(void);
/* A small number for a context (1 for device 0's primary context, as a real driver counts); 0 on
 * success, -1 for no context. */
int vgpu_cuda_context_number(CUcontext ctx, uint64_t *number);
/* A created context on a device, not made current; green_sms > 0 makes it a green context's,
 * limited to that many SMs. */
CUresult vgpu_cuda_context_make(CUdevice dev, unsigned flags, unsigned green_sms, CUcontext *pctx);
/* The SM count of a green context's context, or 0 for any other. */
unsigned vgpu_cuda_context_green_sms(CUcontext ctx);
/* A created context's coredump settings are forgotten when it ends (native/cuda/extras.c). */
void vgpu_cuda_coredump_context_end(uint64_t context);
/* A created context ends: its local storage released, no thread's current one. */
void vgpu_cuda_context_end(CUcontext ctx);
/* A module's functions in its order: up to max into out; their count, -1 for no module. */
int vgpu_cuda_module_functions(CUmodule module, CUfunction *out, unsigned max);
/* Load the fat binary a wrapper or header points at (CUDART_INTERFACE's module slots). */
CUresult vgpu_cuda_module_from_fatbin(CUmodule *module, const void *fatbin);

const char *vgpu_cuda_error_text(int code);
void vgpu_cuda_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The primary context of a device (not retained), as CUDART_INTERFACE hands it out. */
CUresult vgpu_cuda_primary_context(CUcontext *ctx, CUdevice dev);
/* Run the destructors cudart registered in a context's local storage, and forget it. */
void vgpu_cuda_context_storage_release(CUcontext ctx);
const char *vgpu_cuda_error_name(int code);
/* Wait for the host functions that come before work on `stream` (those of the stream itself and
 * of the default streams) to have run. */
void vgpu_cuda_host_calls_before(CUstream stream);
/* Queue a function on the host-function worker, after the work sent before it (graph host nodes). */
CUresult vgpu_cuda_queue_host_call(CUstream stream, void (*fn)(void *), void *data);
/* A host function on a capturing stream becomes a host node (CUDA_ERROR_NOT_FOUND: not capturing). */
CUresult vgpu_cuda_capture_host_call(CUstream stream, void (*fn)(void *), void *data);
/* Run one generated stub's call through vgpud, with the driver's answers for every failure. */
int vgpu_cuda_dispatch(const vgpu_function *fn, void *const *args);
/* One piece of a large copy: pieces before the last are sent without waiting when nothing
 * comes back from them; the last is an ordinary call (it reports the first failure). */
int vgpu_cuda_dispatch_piece(const vgpu_function *fn, void *const *args, int last);
/* A copy between host memory and device memory made by the process itself, through its mapping
 * of the allocation (native/cuda/client_copies.c): the call's result, or -1 when the data must
 * travel to vgpud instead (always for page-locked memory when `pageable_only`). */
int vgpu_cuda_client_copy(const vgpu_function *fn, void *const *args, CUdeviceptr device, void *host, size_t bytes,
                          int to_device, int pageable_only);
/* A 3D copy as cuMemcpy3D_v2 (async: on `stream`, as cuMemcpy3DAsync_v2). */
CUresult vgpu_cuda_copy_3d(const CUDA_MEMCPY3D *p, CUstream stream, int async);
/* Where an array's box of bytes lies: its first byte, its row pitch and rows per slice, or
 * CUDA_ERROR_INVALID_HANDLE (no such array) / CUDA_ERROR_INVALID_VALUE (outside it, or not in
 * whole elements). native/cuda/arrays.c */
CUresult vgpu_cuda_array_region(CUarray array, size_t x_bytes, size_t y, size_t z, size_t width_bytes, size_t height,
                                size_t depth, CUdeviceptr *base, size_t *pitch, size_t *rows);
/* Bytes per element of an array format with its channels: 0 for an invalid pair, SIZE_MAX for a
 * valid format arrays here do not lay out (native/cuda/arrays.c). */
size_t vgpu_cuda_element_bytes(CUarray_format format, unsigned channels);
/* cuMemFree of a buffer cuExternalMemoryGetMappedBuffer made: unmapped and its range freed
 * (whether dptr was one). native/cuda/sharing.c */
int vgpu_cuda_external_buffer_free(CUdeviceptr dptr);
/* A mipmapped array whose levels lie one after another in an external memory buffer at storage
 * (capacity bytes), which cuMipmappedArrayDestroy frees with it. native/cuda/arrays.c */
CUresult vgpu_cuda_mipmap_over(CUmipmappedArray *out, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels,
                               CUdeviceptr storage, size_t capacity);
