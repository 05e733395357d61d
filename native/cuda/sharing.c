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
