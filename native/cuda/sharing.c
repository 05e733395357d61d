/* Shareable handles of physical allocations and memory pools (cuMemExportToShareableHandle,
 * cuMemImportFromShareableHandle, cuMemPoolExportToShareableHandle,
 * cuMemPoolImportFromShareableHandle), cuPointerSetAttribute and the v1 name of cuMemHostGetDevicePointer.
 *
 * A POSIX file descriptor handle is a real descriptor the application may pass to another
 * process (SCM_RIGHTS over a Unix socket, fork, pidfd_getfd): a sealed memfd holding the 64-byte
 * token vgpud issued for the allocation or pool. Importing reads the token back and vgpud answers only a
 * token it made (src/vgpu/server/cuda_sharing.py). Fabric handles are refused with
 * CUDA_ERROR_NOT_SUPPORTED, as on GPUs without a fabric (CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED
 * reads 0); Windows handle types do not exist on Linux. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_shim.h"

extern const vgpu_function vgpu_cuda_fn_cuMemExportToShareableHandle, vgpu_cuda_fn_cuMemImportFromShareableHandle,
    vgpu_cuda_fn_cuMemPoolExportToShareableHandle, vgpu_cuda_fn_cuMemPoolImportFromShareableHandle;

/* The code for a handle type other than a POSIX descriptor: fabric and Windows handles are types
 * this driver cannot make, anything else is no type at all. */
static CUresult other_handle_type(CUmemAllocationHandleType type) {
    switch (type) {
    case CU_MEM_HANDLE_TYPE_FABRIC: case CU_MEM_HANDLE_TYPE_WIN32: case CU_MEM_HANDLE_TYPE_WIN32_KMT:
        return CUDA_ERROR_NOT_SUPPORTED;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

/* A sealed memfd holding a token vgpud made: the descriptor an export hands out. */
static CUresult descriptor_of(const CUmemFabricHandle *token, int *out) {
    int fd = memfd_create("vgpu-shareable-memory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
    if (pwrite(fd, token->data, sizeof token->data, 0) != (ssize_t)sizeof token->data ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = fd;
    return CUDA_SUCCESS;
}

/* The token a descriptor (travelling in a pointer's value) holds: only a regular file can hold
 * one, and reading it never blocks. 0 on success. */
static int token_of(void *os_handle, CUmemFabricHandle *token) {
    int fd = (int)(intptr_t)os_handle;
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                   pread(fd, token->data, sizeof token->data, 0) == (ssize_t)sizeof token->data
               ? 0 : -1;
}

VGPU_EXPORT CUresult cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                                  CUmemAllocationHandleType handleType, unsigned long long flags) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!shareableHandle || flags) return CUDA_ERROR_INVALID_VALUE;
    if (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return other_handle_type(handleType);
    CUmemFabricHandle token = {{0}}, *where = &token;
    void *const args[] = {(void *)&where, (void *)&handle, (void *)&handleType, (void *)&flags};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemExportToShareableHandle, args);
    return rc == CUDA_SUCCESS ? descriptor_of(&token, (int *)shareableHandle) : rc;
}

VGPU_EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                                    CUmemAllocationHandleType shHandleType) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!handle) return CUDA_ERROR_INVALID_VALUE;
    if (shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return other_handle_type(shHandleType);
    CUmemFabricHandle token, *where = &token;
    if (token_of(osHandle, &token) != 0) return CUDA_ERROR_INVALID_VALUE;
    void *const args[] = {(void *)&handle, (void *)&where, (void *)&shHandleType};
    return (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemImportFromShareableHandle, args);
}

VGPU_EXPORT CUresult cuMemPoolExportToShareableHandle(void *handle_out, CUmemoryPool pool,
                                                      CUmemAllocationHandleType handleType, unsigned long long flags) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!handle_out || flags) return CUDA_ERROR_INVALID_VALUE;
    if (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return other_handle_type(handleType);
    CUmemFabricHandle token = {{0}}, *where = &token;
    void *const args[] = {(void *)&where, (void *)&pool, (void *)&handleType, (void *)&flags};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemPoolExportToShareableHandle, args);
    return rc == CUDA_SUCCESS ? descriptor_of(&token, (int *)handle_out) : rc;
}

VGPU_EXPORT CUresult cuMemPoolImportFromShareableHandle(CUmemoryPool *pool_out, void *handle,
                                                        CUmemAllocationHandleType handleType, unsigned long long flags) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pool_out || flags) return CUDA_ERROR_INVALID_VALUE;
    if (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return other_handle_type(handleType);
    CUmemFabricHandle token, *where = &token;
    if (token_of(handle, &token) != 0) return CUDA_ERROR_INVALID_VALUE;
    void *const args[] = {(void *)&pool_out, (void *)&where, (void *)&handleType, (void *)&flags};
    return (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuMemPoolImportFromShareableHandle, args);
}

/* The v1 name: the device address of page-locked host memory, which must fit 32 bits (else
 * nothing is written and CUDA_ERROR_INVALID_VALUE comes back: docs/cuda.md, legacy v1 names). */
VGPU_EXPORT CUresult cuMemHostGetDevicePointer(CUdeviceptr_v1 *pdptr, void *p, unsigned int Flags) {
    if (!pdptr) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr wide = 0;
    CUresult rc = cuMemHostGetDevicePointer_v2(&wide, p, Flags);
    if (rc != CUDA_SUCCESS) return rc;
    if (wide > UINT32_MAX) return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr_v1)wide;
    return CUDA_SUCCESS;
}

extern const vgpu_function vgpu_cuda_fn_cuPointerSetAttribute;

/* Only CU_POINTER_ATTRIBUTE_SYNC_MEMOPS can be set, from a boolean the caller's 4 bytes hold. */
VGPU_EXPORT CUresult cuPointerSetAttribute(const void *value, CUpointer_attribute attribute, CUdeviceptr ptr) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!value || attribute != CU_POINTER_ATTRIBUTE_SYNC_MEMOPS) return CUDA_ERROR_INVALID_VALUE;
    unsigned int flag, *where = &flag;
    memcpy(&flag, value, sizeof flag);
    void *const args[] = {(void *)&where, (void *)&attribute, (void *)&ptr};
    return (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuPointerSetAttribute, args);
}

/* ---- external memory: a descriptor from cuMemExportToShareableHandle (or any exporter of the
 * same tokens) imported as CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD; its buffers are mappings
 * of the imported physical allocation at addresses of their own. ---- */

#define GRANULARITY (2u << 20)            /* the simulated GPUs' allocation granularity */

typedef struct external_memory {
    CUmemGenericAllocationHandle physical;
    unsigned long long size;
    CUdevice device;
    struct external_memory *next;
} external_memory;

typedef struct mapped_buffer {
    CUdeviceptr pointer, base;
    size_t size;
    struct mapped_buffer *next;
} mapped_buffer;

static mapped_buffer *mapped_buffers;
static external_memory *external_objects; /* looked up, never dereferenced unchecked */
static pthread_mutex_t external_lock = PTHREAD_MUTEX_INITIALIZER;

VGPU_EXPORT CUresult cuImportExternalMemory(CUexternalMemory *extMem_out, const CUDA_EXTERNAL_MEMORY_HANDLE_DESC *desc) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!extMem_out || !desc || !desc->size || (desc->flags & ~CUDA_EXTERNAL_MEMORY_DEDICATED))
        return CUDA_ERROR_INVALID_VALUE;
    switch (desc->type) {
    case CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD: break;
    case CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32: case CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32_KMT:
    case CU_EXTERNAL_MEMORY_HANDLE_TYPE_D3D12_HEAP: case CU_EXTERNAL_MEMORY_HANDLE_TYPE_D3D12_RESOURCE:
    case CU_EXTERNAL_MEMORY_HANDLE_TYPE_D3D11_RESOURCE: case CU_EXTERNAL_MEMORY_HANDLE_TYPE_D3D11_RESOURCE_KMT:
    case CU_EXTERNAL_MEMORY_HANDLE_TYPE_NVSCIBUF:
        return CUDA_ERROR_NOT_SUPPORTED; /* Windows and Tegra objects */
    default:
        return CUDA_ERROR_INVALID_VALUE; /* a dma-buf of another device names no memory of vgpud's */
    }
    CUdevice device;
    CUresult rc = cuCtxGetDevice(&device);
    if (rc != CUDA_SUCCESS) return rc;
    external_memory *made = calloc(1, sizeof *made);
    if (!made) return CUDA_ERROR_OUT_OF_MEMORY;
    rc = cuMemImportFromShareableHandle(&made->physical, (void *)(intptr_t)desc->handle.fd,
                                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (rc != CUDA_SUCCESS) {
        free(made);
        return rc;
    }
    close(desc->handle.fd); /* cuda.h: the driver owns the descriptor once the import succeeded */
    made->size = desc->size;
    made->device = device;
    pthread_mutex_lock(&external_lock);
    made->next = external_objects;
    external_objects = made;
    pthread_mutex_unlock(&external_lock);
    *extMem_out = (CUexternalMemory)made;
    return CUDA_SUCCESS;
}

/* The object a handle names, taken out of the list when `take`; NULL for anything else. */
static external_memory *find_external(CUexternalMemory handle, int take) {
    pthread_mutex_lock(&external_lock);
    external_memory **link = &external_objects;
    while (*link && *link != (external_memory *)handle) link = &(*link)->next;
    external_memory *found = *link;
    if (found && take) *link = found->next;
    pthread_mutex_unlock(&external_lock);
    return found;
}

VGPU_EXPORT CUresult cuExternalMemoryGetMappedBuffer(CUdeviceptr *devPtr, CUexternalMemory extMem,
                                                     const CUDA_EXTERNAL_MEMORY_BUFFER_DESC *bufferDesc) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    external_memory *memory = find_external(extMem, 0);
    if (!memory) return CUDA_ERROR_INVALID_HANDLE;
    if (!devPtr || !bufferDesc || bufferDesc->flags || !bufferDesc->size || bufferDesc->offset > memory->size ||
        bufferDesc->size > memory->size - bufferDesc->offset)
        return CUDA_ERROR_INVALID_VALUE;
    /* the whole object is mapped (a size past its allocation's fails to map), the buffer lies within */
    size_t span = (memory->size + GRANULARITY - 1) / GRANULARITY * GRANULARITY;
    mapped_buffer *buffer = calloc(1, sizeof *buffer);
    if (!buffer) return CUDA_ERROR_OUT_OF_MEMORY;
    CUdeviceptr base = 0;
    CUresult rc = cuMemAddressReserve(&base, span, 0, 0, 0);
    if (rc != CUDA_SUCCESS) {
        free(buffer);
        return rc;
    }
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, memory->device}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    rc = cuMemMap(base, span, 0, memory->physical, 0);
    if (rc == CUDA_SUCCESS && (rc = cuMemSetAccess(base, span, &access, 1)) != CUDA_SUCCESS) cuMemUnmap(base, span);
    if (rc != CUDA_SUCCESS) {
        cuMemAddressFree(base, span);
        free(buffer);
        return rc;
    }
    *buffer = (mapped_buffer){base + bufferDesc->offset, base, span, NULL};
    pthread_mutex_lock(&external_lock);
    buffer->next = mapped_buffers;
    mapped_buffers = buffer;
    pthread_mutex_unlock(&external_lock);
    *devPtr = buffer->pointer;
    return CUDA_SUCCESS;
}

/* cuda.h: the array's levels lie in the object from the offset on; destroyed with
 * cuMipmappedArrayDestroy, which frees the mapping under them. */
VGPU_EXPORT CUresult cuExternalMemoryGetMappedMipmappedArray(CUmipmappedArray *mipmap, CUexternalMemory extMem,
                                                             const CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC *desc) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    external_memory *memory = find_external(extMem, 0);
    if (!memory) return CUDA_ERROR_INVALID_HANDLE;
    if (!mipmap || !desc || desc->offset >= memory->size) return CUDA_ERROR_INVALID_VALUE;
    CUDA_EXTERNAL_MEMORY_BUFFER_DESC rest = {desc->offset, memory->size - desc->offset, 0, {0}};
    CUdeviceptr storage;
    CUresult rc = cuExternalMemoryGetMappedBuffer(&storage, extMem, &rest);
    if (rc != CUDA_SUCCESS) return rc;
    rc = vgpu_cuda_mipmap_over(mipmap, &desc->arrayDesc, desc->numLevels, storage, rest.size);
    if (rc != CUDA_SUCCESS) vgpu_cuda_external_buffer_free(storage);
    return rc;
}

int vgpu_cuda_external_buffer_free(CUdeviceptr dptr) {
    if (!dptr) return 0;
    pthread_mutex_lock(&external_lock);
    mapped_buffer **link = &mapped_buffers;
    while (*link && (*link)->pointer != dptr) link = &(*link)->next;
    mapped_buffer *found = *link;
    if (found) *link = found->next;
    pthread_mutex_unlock(&external_lock);
    if (!found) return 0;
    cuMemUnmap(found->base, found->size);
    cuMemAddressFree(found->base, found->size);
    free(found);
    return 1;
}

/* The object goes; buffers mapped from it stay until freed (cuda.h), their mappings holding the memory. */
VGPU_EXPORT CUresult cuDestroyExternalMemory(CUexternalMemory extMem) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    external_memory *memory = find_external(extMem, 1);
    if (!memory) return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = cuMemRelease(memory->physical);
    free(memory);
    return rc;
}

/* ---- external semaphores: vgpu has no Vulkan or other driver whose semaphore objects a
 * descriptor could name, so a semaphore is named by the open file its descriptor refers to
 * (device and inode, the same in every process the descriptor reaches); vgpud keeps its state
 * (src/vgpu/server/cuda_sharing.py). ---- */

extern const vgpu_function vgpu_cuda_fn_cuImportExternalSemaphore;

VGPU_EXPORT CUresult cuImportExternalSemaphore(CUexternalSemaphore *extSem_out,
                                               const CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC *semHandleDesc) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!extSem_out || !semHandleDesc || semHandleDesc->flags) return CUDA_ERROR_INVALID_VALUE;
    switch (semHandleDesc->type) {
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD: case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD: break;
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_WIN32: case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_WIN32_KMT:
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_D3D12_FENCE: case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_D3D11_FENCE:
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_NVSCISYNC: case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_D3D11_KEYED_MUTEX:
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_D3D11_KEYED_MUTEX_KMT:
    case CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_WIN32:
        return CUDA_ERROR_NOT_SUPPORTED; /* Windows and Tegra objects */
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    struct stat st;
    if (fstat(semHandleDesc->handle.fd, &st) != 0) return CUDA_ERROR_INVALID_VALUE;
    CUmemFabricHandle key = {{0}}, *where = &key;
    uint32_t kind = (uint32_t)semHandleDesc->type, flags = semHandleDesc->flags;
    uint64_t device = (uint64_t)st.st_dev, inode = (uint64_t)st.st_ino;
    memcpy(key.data, "vgES", 4);
    memcpy(key.data + 4, &kind, 4);
    memcpy(key.data + 8, &flags, 4);
    memcpy(key.data + 12, &device, 8);
    memcpy(key.data + 20, &inode, 8);
    void *const args[] = {(void *)&extSem_out, (void *)&where};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuImportExternalSemaphore, args);
    if (rc == CUDA_SUCCESS) close(semHandleDesc->handle.fd); /* cuda.h: the driver owns it now */
    return rc;
}
