/* Legacy texture and surface references (cuTexRef*, cuSurfRef*, cuModuleGetTexRef/SurfRef,
 * cuParamSetTexRef): deprecated, still declared and documented in cuda.h 13.5, so a current
 * driver still serves them. A texture reference made by cuTexRefCreate is an object of this
 * library that keeps what is set on it and answers it back; what it is bound to (linear memory,
 * pitched 2D memory, an array or a mipmapped array) supersedes the previous binding, as
 * documented. Modules name texture and surface references only when built by CUDA 11 or earlier
 * (CUDA 12 removed them from the language); vgpu does not read them out of images, so
 * cuModuleGetTexRef and cuModuleGetSurfRef answer CUDA_ERROR_NOT_FOUND, and with no module
 * reference there is nothing cuParamSetTexRef or a surface reference can name. */
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"

#define TEXREF_MAGIC 0x74657872u /* "texr" */

enum binding { UNBOUND, LINEAR, PITCH_2D, ARRAY, MIPMAPPED };

typedef struct texref {
    uint32_t magic;
    enum binding bound;
    CUdeviceptr address;
    CUarray array;
    CUmipmappedArray mipmap;
    CUarray_format format;
    int channels;
    CUaddress_mode address_mode[3];
    CUfilter_mode filter, mipmap_filter;
    float bias, min_clamp, max_clamp, border[4];
    unsigned max_anisotropy, flags;
    struct texref *next;
} texref;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static texref *texrefs;

/* The texture reference a handle names (this library's, alive), or NULL. Callers then use it
 * without the lock: a reference destroyed while another thread sets it is the caller's race,
 * as with the real driver. */
static texref *find(CUtexref handle) {
    pthread_mutex_lock(&lock);
    texref *t = texrefs;
    while (t && t != (texref *)handle) t = t->next;
    pthread_mutex_unlock(&lock);
    return t;
}

/* The checks every call starts with; the reference, or NULL with *rc set. */
static texref *start(CUtexref handle, CUresult *rc) {
    if (!vgpu_cuda_initialized()) {
        *rc = CUDA_ERROR_NOT_INITIALIZED;
        return NULL;
    }
    texref *t = find(handle);
    *rc = t ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    return t;
}

static int device_attribute(CUdevice_attribute which) {
    CUdevice dev;
    int value = 0;
    if (cuCtxGetDevice(&dev) != CUDA_SUCCESS || cuDeviceGetAttribute(&value, which, dev) != CUDA_SUCCESS) return 0;
    return value;
}

VGPU_EXPORT CUresult cuTexRefCreate(CUtexref *pTexRef) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!vgpu_cuda_context_id()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!pTexRef) return CUDA_ERROR_INVALID_VALUE;
    texref *t = calloc(1, sizeof *t);
    if (!t) return CUDA_ERROR_OUT_OF_MEMORY;
    t->magic = TEXREF_MAGIC;
    pthread_mutex_lock(&lock);
    t->next = texrefs;
    texrefs = t;
    pthread_mutex_unlock(&lock);
    *pTexRef = (CUtexref)t;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefDestroy(CUtexref hTexRef) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_lock(&lock);
    texref *found = NULL;
    for (texref **at = &texrefs; *at; at = &(*at)->next)
        if (*at == (texref *)hTexRef) {
            found = *at;
            *at = found->next;
            break;
        }
    pthread_mutex_unlock(&lock);
    if (!found) return CUDA_ERROR_INVALID_HANDLE;
    found->magic = 0;
    free(found);
    return CUDA_SUCCESS;
}

/* ---- bindings ---- */

VGPU_EXPORT CUresult cuTexRefSetAddress_v2(size_t *ByteOffset, CUtexref hTexRef, CUdeviceptr dptr, size_t bytes) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    unsigned alignment = (unsigned)device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT);
    if (ByteOffset) *ByteOffset = alignment ? dptr % alignment : 0; /* 0 for memory from cuMemAlloc */
    t->bound = LINEAR;
    t->address = dptr;
    t->array = NULL;
    t->mipmap = NULL;
    (void)bytes;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetAddress2D_v3(CUtexref hTexRef, const CUDA_ARRAY_DESCRIPTOR *desc, CUdeviceptr dptr,
                                             size_t Pitch) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    int alignment = device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT);
    int pitch_alignment = device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT);
    if (!desc || !dptr || (alignment && dptr % alignment) || (pitch_alignment && Pitch % pitch_alignment))
        return CUDA_ERROR_INVALID_VALUE;
    size_t element = vgpu_cuda_element_bytes(desc->Format, desc->NumChannels);
    if (!element || element == SIZE_MAX || Pitch < desc->Width * element) return CUDA_ERROR_INVALID_VALUE;
    t->bound = PITCH_2D;
    t->address = dptr;
    t->array = NULL;
    t->mipmap = NULL;
    t->format = desc->Format;
    t->channels = (int)desc->NumChannels;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetAddress2D_v2(CUtexref hTexRef, const CUDA_ARRAY_DESCRIPTOR *desc, CUdeviceptr dptr,
                                             size_t Pitch) {
    return cuTexRefSetAddress2D_v3(hTexRef, desc, dptr, Pitch);
}

VGPU_EXPORT CUresult cuTexRefSetArray(CUtexref hTexRef, CUarray hArray, unsigned int Flags) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (Flags != CU_TRSA_OVERRIDE_FORMAT || cuArray3DGetDescriptor_v2(&d, hArray) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_VALUE;
    t->bound = ARRAY;
    t->array = hArray;
    t->mipmap = NULL;
    t->address = 0;
    t->format = d.Format; /* the array's format overrides the reference's */
    t->channels = (int)d.NumChannels;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetMipmappedArray(CUtexref hTexRef, CUmipmappedArray hMipmappedArray, unsigned int Flags) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    CUarray level;
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (Flags != CU_TRSA_OVERRIDE_FORMAT || cuMipmappedArrayGetLevel(&level, hMipmappedArray, 0) != CUDA_SUCCESS ||
        cuArray3DGetDescriptor_v2(&d, level) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_VALUE;
    t->bound = MIPMAPPED;
    t->mipmap = hMipmappedArray;
    t->array = NULL;
    t->address = 0;
    t->format = d.Format;
    t->channels = (int)d.NumChannels;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetAddress_v2(CUdeviceptr *pdptr, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pdptr || (t->bound != LINEAR && t->bound != PITCH_2D)) return CUDA_ERROR_INVALID_VALUE;
    *pdptr = t->address;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetArray(CUarray *phArray, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!phArray || t->bound != ARRAY) return CUDA_ERROR_INVALID_VALUE;
    *phArray = t->array;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetMipmappedArray(CUmipmappedArray *phMipmappedArray, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!phMipmappedArray || t->bound != MIPMAPPED) return CUDA_ERROR_INVALID_VALUE;
    *phMipmappedArray = t->mipmap;
    return CUDA_SUCCESS;
}

/* ---- how it reads ---- */

VGPU_EXPORT CUresult cuTexRefSetFormat(CUtexref hTexRef, CUarray_format fmt, int NumPackedComponents) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    size_t element = NumPackedComponents > 0 ? vgpu_cuda_element_bytes(fmt, (unsigned)NumPackedComponents) : 0;
    if (!element || element == SIZE_MAX) return CUDA_ERROR_INVALID_VALUE;
    t->format = fmt;
    t->channels = NumPackedComponents;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetFormat(CUarray_format *pFormat, int *pNumChannels, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pFormat && !pNumChannels) return CUDA_ERROR_INVALID_VALUE;
    if (pFormat) *pFormat = t->format;
    if (pNumChannels) *pNumChannels = t->channels;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetAddressMode(CUtexref hTexRef, int dim, CUaddress_mode am) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (dim < 0 || dim > 2 || am < CU_TR_ADDRESS_MODE_WRAP || am > CU_TR_ADDRESS_MODE_BORDER) return CUDA_ERROR_INVALID_VALUE;
    t->address_mode[dim] = am;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetAddressMode(CUaddress_mode *pam, CUtexref hTexRef, int dim) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pam || dim < 0 || dim > 2) return CUDA_ERROR_INVALID_VALUE;
    *pam = t->address_mode[dim];
    return CUDA_SUCCESS;
}

static int filter_mode(CUfilter_mode fm) { return fm == CU_TR_FILTER_MODE_POINT || fm == CU_TR_FILTER_MODE_LINEAR; }

VGPU_EXPORT CUresult cuTexRefSetFilterMode(CUtexref hTexRef, CUfilter_mode fm) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!filter_mode(fm)) return CUDA_ERROR_INVALID_VALUE;
    t->filter = fm;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetFilterMode(CUfilter_mode *pfm, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pfm) return CUDA_ERROR_INVALID_VALUE;
    *pfm = t->filter;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetMipmapFilterMode(CUtexref hTexRef, CUfilter_mode fm) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!filter_mode(fm)) return CUDA_ERROR_INVALID_VALUE;
    t->mipmap_filter = fm;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetMipmapFilterMode(CUfilter_mode *pfm, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pfm) return CUDA_ERROR_INVALID_VALUE;
    *pfm = t->mipmap_filter;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetMipmapLevelBias(CUtexref hTexRef, float bias) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (t) t->bias = bias;
    return rc;
}

VGPU_EXPORT CUresult cuTexRefGetMipmapLevelBias(float *pbias, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pbias) return CUDA_ERROR_INVALID_VALUE;
    *pbias = t->bias;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetMipmapLevelClamp(CUtexref hTexRef, float minMipmapLevelClamp, float maxMipmapLevelClamp) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    t->min_clamp = minMipmapLevelClamp;
    t->max_clamp = maxMipmapLevelClamp;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetMipmapLevelClamp(float *pminMipmapLevelClamp, float *pmaxMipmapLevelClamp,
                                                 CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pminMipmapLevelClamp || !pmaxMipmapLevelClamp) return CUDA_ERROR_INVALID_VALUE;
    *pminMipmapLevelClamp = t->min_clamp;
    *pmaxMipmapLevelClamp = t->max_clamp;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetMaxAnisotropy(CUtexref hTexRef, unsigned int maxAniso) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (t) t->max_anisotropy = maxAniso;
    return rc;
}

VGPU_EXPORT CUresult cuTexRefGetMaxAnisotropy(int *pmaxAniso, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pmaxAniso) return CUDA_ERROR_INVALID_VALUE;
    *pmaxAniso = (int)t->max_anisotropy;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetBorderColor(CUtexref hTexRef, float *pBorderColor) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pBorderColor) return CUDA_ERROR_INVALID_VALUE;
    memcpy(t->border, pBorderColor, sizeof t->border);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetBorderColor(float *pBorderColor, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pBorderColor) return CUDA_ERROR_INVALID_VALUE;
    memcpy(pBorderColor, t->border, sizeof t->border);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefSetFlags(CUtexref hTexRef, unsigned int Flags) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    const unsigned known = CU_TRSF_READ_AS_INTEGER | CU_TRSF_NORMALIZED_COORDINATES | CU_TRSF_SRGB |
                           CU_TRSF_DISABLE_TRILINEAR_OPTIMIZATION | CU_TRSF_SEAMLESS_CUBEMAP;
    if (Flags & ~known) return CUDA_ERROR_INVALID_VALUE;
    t->flags = Flags;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexRefGetFlags(unsigned int *pFlags, CUtexref hTexRef) {
    CUresult rc;
    texref *t = start(hTexRef, &rc);
    if (!t) return rc;
    if (!pFlags) return CUDA_ERROR_INVALID_VALUE;
    *pFlags = t->flags;
    return CUDA_SUCCESS;
}

/* ---- references in modules ---- */

static CUresult module_reference(void *out, CUmodule hmod, const char *name) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!vgpu_cuda_context_id()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!out || !name) return CUDA_ERROR_INVALID_VALUE;
    if (vgpu_cuda_module_functions(hmod, NULL, 0) < 0) return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_ERROR_NOT_FOUND;
}

VGPU_EXPORT CUresult cuModuleGetTexRef(CUtexref *pTexRef, CUmodule hmod, const char *name) {
    return module_reference(pTexRef, hmod, name);
}

VGPU_EXPORT CUresult cuModuleGetSurfRef(CUsurfref *pSurfRef, CUmodule hmod, const char *name) {
    return module_reference(pSurfRef, hmod, name);
}

/* cuda.h: the reference must come from cuModuleGetTexRef (none does here) and the unit must be
 * CU_PARAM_TR_DEFAULT. */
VGPU_EXPORT CUresult cuParamSetTexRef(CUfunction hfunc, int texunit, CUtexref hTexRef) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!vgpu_cuda_context_id()) return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t id;
    if (vgpu_handle_id(vgpu_cuda_handle_CUfunction, hfunc, &id) < 0) return CUDA_ERROR_INVALID_HANDLE;
    (void)texunit, (void)hTexRef;
    return CUDA_ERROR_INVALID_VALUE;
}

/* Surface references exist only in modules, and none is found there: every handle is unknown. */
VGPU_EXPORT CUresult cuSurfRefSetArray(CUsurfref hSurfRef, CUarray hArray, unsigned int Flags) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    (void)hSurfRef, (void)hArray, (void)Flags;
    return CUDA_ERROR_INVALID_HANDLE;
}

VGPU_EXPORT CUresult cuSurfRefGetArray(CUarray *phArray, CUsurfref hSurfRef) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    (void)phArray, (void)hSurfRef;
    return CUDA_ERROR_INVALID_HANDLE;
}

/* ---- v1 names (CUDA < 3.2: 32-bit device pointers and sizes), by the v1 rule: inputs widened,
 * an address that does not fit 32 bits is never handed back (CUDA_ERROR_INVALID_VALUE) ---- */

VGPU_EXPORT CUresult cuTexRefSetAddress(unsigned int *ByteOffset, CUtexref hTexRef, CUdeviceptr_v1 dptr,
                                        unsigned int bytes) {
    size_t offset = 0;
    CUresult rc = cuTexRefSetAddress_v2(&offset, hTexRef, dptr, bytes);
    if (rc == CUDA_SUCCESS && ByteOffset) *ByteOffset = (unsigned)offset;
    return rc;
}

VGPU_EXPORT CUresult cuTexRefSetAddress2D(CUtexref hTexRef, const CUDA_ARRAY_DESCRIPTOR_v1 *desc, CUdeviceptr_v1 dptr,
                                          unsigned int Pitch) {
    if (!desc) return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY_DESCRIPTOR wide = {desc->Width, desc->Height, desc->Format, desc->NumChannels};
    return cuTexRefSetAddress2D_v3(hTexRef, &wide, dptr, Pitch);
}

VGPU_EXPORT CUresult cuTexRefGetAddress(CUdeviceptr_v1 *pdptr, CUtexref hTexRef) {
    CUdeviceptr address = 0;
    CUresult rc = cuTexRefGetAddress_v2(pdptr ? &address : NULL, hTexRef);
    if (rc != CUDA_SUCCESS) return rc;
    if (address > 0xFFFFFFFFu) return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr_v1)address;
    return CUDA_SUCCESS;
}
