/* CUDA arrays, mipmapped arrays, texture and surface objects, and the copies and memsets that
 * are made of the 1D ones (native/cuda/cuda_shim.c).
 *
 * An array is an object of this library: its descriptor stays here, its bytes are an ordinary
 * device allocation in vgpud (cuMemAlloc_v2, so they count against the device as allocations
 * do, and live exactly as long as the array or the process). The layout is packed and row-major:
 * an element is the format's bytes times its channels, a row is Width elements, a slice is
 * max(Height, 1) rows, and there are max(Depth, 1) slices (layers of a layered or cubemap array,
 * the six faces of a cubemap in CUarray_cubemap_face order). NV12 (4:2:0) keeps its Y plane of
 * Width x Height bytes followed by its interleaved UV plane of Width x Height / 2 bytes, and its
 * planes (cuArrayGetPlane) are arrays over those bytes. A mipmapped array holds one array per
 * level. Copies into and out of arrays are copies of device memory at those addresses, so every
 * copy path (asynchronous, captured, page-locked, held behind stream memory waits) serves them.
 *
 * Texture and surface objects are numbers this library issues; it keeps their descriptors and
 * answers them back as given. Kernels that sample them are recorded like any launch. */
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"

#define ARRAY_MAGIC 0x61727279u  /* "arry" */
#define MIPMAP_MAGIC 0x6d69706du /* "mipm" */
#define MAX_LEVELS 32

typedef struct vgpu_array {
    uint32_t magic;
    CUDA_ARRAY3D_DESCRIPTOR desc; /* as created (Height 0 for 1D, Depth 0 for 1D and 2D) */
    CUdeviceptr storage;          /* its first byte in device memory */
    size_t element;               /* bytes per element */
    size_t rows;                  /* rows per slice (NV12: the Y plane's and the UV plane's) */
    size_t slices;
    int owns_storage;             /* 0 for a plane or a mipmap level (its owner frees the bytes) */
    int from_mipmap;
    struct vgpu_array *planes[2]; /* NV12's, made on first request */
    struct vgpu_array *next;
} vgpu_array;

typedef struct vgpu_mipmap {
    uint32_t magic;
    CUDA_ARRAY3D_DESCRIPTOR desc;
    CUdeviceptr external; /* the external memory buffer its levels lie in (0: levels own their bytes) */
    unsigned levels;
    vgpu_array *level[MAX_LEVELS];
    struct vgpu_mipmap *next;
} vgpu_mipmap;

typedef struct texture_object {
    unsigned long long id;
    int surface;
    CUDA_RESOURCE_DESC resource;
    CUDA_TEXTURE_DESC texture;
    CUDA_RESOURCE_VIEW_DESC view;
    int has_view;
    struct texture_object *next;
} texture_object;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static vgpu_array *arrays;
static vgpu_mipmap *mipmaps;
static texture_object *objects;
static unsigned long long next_object = 1;

static CUresult ready(void) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!vgpu_cuda_context_id()) return CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_SUCCESS;
}

/* The array a handle names, or NULL when this library issued no such live array. */
static vgpu_array *find_array(CUarray handle) {
    pthread_mutex_lock(&lock);
    vgpu_array *a = arrays;
    while (a && a != (vgpu_array *)handle) a = a->next;
    pthread_mutex_unlock(&lock);
    return a;
}

static vgpu_mipmap *find_mipmap(CUmipmappedArray handle) {
    pthread_mutex_lock(&lock);
    vgpu_mipmap *m = mipmaps;
    while (m && m != (vgpu_mipmap *)handle) m = m->next;
    pthread_mutex_unlock(&lock);
    return m;
}

/* Bytes per component of a format and the channels it fixes itself (0: NumChannels says), or 0
 * bytes for a format this library does not lay out (block-compressed and the YUV formats but NV12). */
static size_t format_bytes(CUarray_format format, unsigned *fixed_channels) {
    *fixed_channels = 0;
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: case CU_AD_FORMAT_NV12: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return 4;
    case CU_AD_FORMAT_UNORM_INT8X1: case CU_AD_FORMAT_SNORM_INT8X1: *fixed_channels = 1; return 1;
    case CU_AD_FORMAT_UNORM_INT8X2: case CU_AD_FORMAT_SNORM_INT8X2: *fixed_channels = 2; return 1;
    case CU_AD_FORMAT_UNORM_INT8X4: case CU_AD_FORMAT_SNORM_INT8X4: *fixed_channels = 4; return 1;
    case CU_AD_FORMAT_UNORM_INT16X1: case CU_AD_FORMAT_SNORM_INT16X1: *fixed_channels = 1; return 2;
    case CU_AD_FORMAT_UNORM_INT16X2: case CU_AD_FORMAT_SNORM_INT16X2: *fixed_channels = 2; return 2;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4: *fixed_channels = 4; return 2;
    case CU_AD_FORMAT_UNORM_INT_101010_2: *fixed_channels = 4; return 1; /* 32 bits for the 4 channels */
    default: return 0;
    }
}

/* A format cuda.h names that format_bytes() does not lay out: block-compressed, and the YUV
 * formats other than NV12. */
static int other_format(CUarray_format f) {
    return (f >= CU_AD_FORMAT_BC1_UNORM && f <= CU_AD_FORMAT_P010) || (f >= CU_AD_FORMAT_P016 && f <= CU_AD_FORMAT_Y410) ||
           (f >= CU_AD_FORMAT_Y416 && f <= CU_AD_FORMAT_YUV444_16bit_SemiPlanar) ||
           (f >= CU_AD_FORMAT_UINT8_PACKED_422 && f <= CU_AD_FORMAT_UINT16_PLANAR_444);
}

/* Bytes per element of a format with its channels: 0 when the pair is invalid, and
 * CUDA_ERROR_NOT_SUPPORTED's marker (SIZE_MAX) for a valid format this library does not lay out. */
static size_t element_bytes(CUarray_format format, unsigned channels) {
    unsigned fixed;
    size_t bytes = format_bytes(format, &fixed);
    if (!bytes) return other_format(format) ? SIZE_MAX : 0;
    if (format == CU_AD_FORMAT_UNORM_INT_101010_2) return channels == 4 ? 4 : 0;
    if (format == CU_AD_FORMAT_NV12) return channels >= 1 && channels <= 4 ? 1 : 0; /* bytes of the Y plane */
    if (fixed) return channels == fixed ? bytes * fixed : 0;
    return channels == 1 || channels == 2 || channels == 4 ? bytes * channels : 0;
}

size_t vgpu_cuda_element_bytes(CUarray_format format, unsigned channels) { return element_bytes(format, channels); }

static int device_attribute(CUdevice_attribute which) {
    CUdevice dev;
    int value = 0;
    if (cuCtxGetDevice(&dev) != CUDA_SUCCESS || cuDeviceGetAttribute(&value, which, dev) != CUDA_SUCCESS) return 0;
    return value;
}

/* cuArray3DCreate's checks (cuda.h): the shape the flags allow, within the device's texture
 * (or, with SURFACE_LDST, surface) limits. */
static CUresult check_shape(const CUDA_ARRAY3D_DESCRIPTOR *d) {
    const unsigned known = CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_SURFACE_LDST | CUDA_ARRAY3D_CUBEMAP |
                           CUDA_ARRAY3D_TEXTURE_GATHER | CUDA_ARRAY3D_DEPTH_TEXTURE | CUDA_ARRAY3D_COLOR_ATTACHMENT |
                           CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING | CUDA_ARRAY3D_VIDEO_ENCODE_DECODE;
    size_t w = d->Width, h = d->Height, depth = d->Depth;
    unsigned f = d->Flags;
    if (f & ~known || !w || (depth && !h && !(f & CUDA_ARRAY3D_LAYERED))) return CUDA_ERROR_INVALID_VALUE;
    if (f & CUDA_ARRAY3D_CUBEMAP) {
        if (w != h || !depth || depth % 6 || (!(f & CUDA_ARRAY3D_LAYERED) && depth != 6)) return CUDA_ERROR_INVALID_VALUE;
        if ((int64_t)w > device_attribute(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURECUBEMAP_WIDTH)) return CUDA_ERROR_INVALID_VALUE;
        return CUDA_SUCCESS;
    }
    if ((f & CUDA_ARRAY3D_TEXTURE_GATHER) && (!h || depth)) return CUDA_ERROR_INVALID_VALUE; /* 2D only */
    int surface = (f & CUDA_ARRAY3D_SURFACE_LDST) != 0;
    struct { CUdevice_attribute attribute; size_t value; } limits[3];
    int n = 0;
    if (f & CUDA_ARRAY3D_LAYERED) {
        if (!depth) return CUDA_ERROR_INVALID_VALUE;
        if (!h) {
            limits[n++] = (typeof(limits[0])){CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_WIDTH, w};
            limits[n++] = (typeof(limits[0])){CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_LAYERS, depth};
        } else {
            limits[n++] = (typeof(limits[0])){CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_WIDTH, w};
            limits[n++] = (typeof(limits[0])){CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_HEIGHT, h};
            limits[n++] = (typeof(limits[0])){CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_LAYERS, depth};
        }
    } else if (!h) {
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE1D_WIDTH
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_WIDTH, w};
    } else if (!depth) {
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_WIDTH
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_WIDTH, w};
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_HEIGHT
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_HEIGHT, h};
    } else {
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_WIDTH
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH, w};
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_HEIGHT
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT, h};
        limits[n++] = (typeof(limits[0])){surface ? CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_DEPTH
                                                  : CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH, depth};
    }
    for (int i = 0; i < n; i++)
        if (limits[i].value > (size_t)device_attribute(limits[i].attribute)) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

static void link_array(vgpu_array *a) {
    pthread_mutex_lock(&lock);
    a->magic = ARRAY_MAGIC;
    a->next = arrays;
    arrays = a;
    pthread_mutex_unlock(&lock);
}

static void unlink_array(vgpu_array *a) {
    pthread_mutex_lock(&lock);
    for (vgpu_array **at = &arrays; *at; at = &(*at)->next)
        if (*at == a) {
            *at = a->next;
            break;
        }
    a->magic = 0;
    pthread_mutex_unlock(&lock);
}

static size_t array_bytes(const vgpu_array *a) { return a->desc.Width * a->element * a->rows * a->slices; }

/* An array over storage (owned or not), linked; NULL when out of host memory. */
static vgpu_array *new_array(const CUDA_ARRAY3D_DESCRIPTOR *d, size_t element, CUdeviceptr storage, int owns) {
    vgpu_array *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->desc = *d;
    a->element = element;
    a->rows = d->Height ? d->Height : 1;
    if (d->Format == CU_AD_FORMAT_NV12) a->rows += d->Height / 2;
    a->slices = d->Depth ? d->Depth : 1;
    a->storage = storage;
    a->owns_storage = owns;
    link_array(a);
    return a;
}

/* A checked array with storage of its own. */
static CUresult create_array(const CUDA_ARRAY3D_DESCRIPTOR *d, vgpu_array **out) {
    CUresult rc = ready();
    if (rc != CUDA_SUCCESS) return rc;
    size_t element = element_bytes(d->Format, d->NumChannels);
    if (!element) return CUDA_ERROR_INVALID_VALUE;
    if ((rc = check_shape(d)) != CUDA_SUCCESS) return rc;
    if (d->Flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING)) return CUDA_ERROR_NOT_SUPPORTED;
    if (element == SIZE_MAX) return CUDA_ERROR_NOT_SUPPORTED;
    if (d->Format == CU_AD_FORMAT_NV12 && (d->Depth || d->Width % 2 || d->Height % 2 || !d->Height))
        return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY3D_DESCRIPTOR shape = *d;
    vgpu_array probe = {.desc = shape, .element = element, .rows = d->Height ? d->Height : 1,
                        .slices = d->Depth ? d->Depth : 1};
    if (d->Format == CU_AD_FORMAT_NV12) probe.rows += d->Height / 2;
    CUdeviceptr storage = 0;
    if ((rc = cuMemAlloc_v2(&storage, array_bytes(&probe))) != CUDA_SUCCESS) return rc;
    vgpu_array *a = new_array(&shape, element, storage, 1);
    if (!a) {
        cuMemFree_v2(storage);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = a;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray) {
    if (!pHandle || !pAllocateArray) return CUDA_ERROR_INVALID_VALUE;
    vgpu_array *a = NULL;
    CUresult rc = create_array(pAllocateArray, &a);
    if (rc == CUDA_SUCCESS) *pHandle = (CUarray)a;
    return rc;
}

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray) {
    if (!pHandle || !pAllocateArray) return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY3D_DESCRIPTOR d = {pAllocateArray->Width, pAllocateArray->Height, 0, pAllocateArray->Format,
                                 pAllocateArray->NumChannels, 0};
    return cuArray3DCreate_v2(pHandle, &d);
}

static void free_array(vgpu_array *a) {
    for (int i = 0; i < 2; i++)
        if (a->planes[i]) free_array(a->planes[i]);
    unlink_array(a);
    if (a->owns_storage) cuMemFree_v2(a->storage);
    free(a);
}

VGPU_EXPORT CUresult cuArrayDestroy(CUarray hArray) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    vgpu_array *a = find_array(hArray);
    if (!a || !a->owns_storage) return CUDA_ERROR_INVALID_HANDLE; /* planes and levels go with their owner */
    free_array(a);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuArray3DGetDescriptor_v2(CUDA_ARRAY3D_DESCRIPTOR *pArrayDescriptor, CUarray hArray) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pArrayDescriptor) return CUDA_ERROR_INVALID_VALUE;
    vgpu_array *a = find_array(hArray);
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    *pArrayDescriptor = a->desc;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuArrayGetDescriptor_v2(CUDA_ARRAY_DESCRIPTOR *pArrayDescriptor, CUarray hArray) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pArrayDescriptor) return CUDA_ERROR_INVALID_VALUE;
    vgpu_array *a = find_array(hArray);
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    *pArrayDescriptor = (CUDA_ARRAY_DESCRIPTOR){a->desc.Width, a->desc.Height, a->desc.Format, a->desc.NumChannels};
    return CUDA_SUCCESS;
}

/* No array here is sparse or deferred-mapped (creating one answers CUDA_ERROR_NOT_SUPPORTED), and
 * cuda.h answers CUDA_ERROR_INVALID_VALUE for any other array. */
VGPU_EXPORT CUresult cuArrayGetSparseProperties(CUDA_ARRAY_SPARSE_PROPERTIES *sparseProperties, CUarray array) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!find_array(array)) return CUDA_ERROR_INVALID_HANDLE;
    (void)sparseProperties;
    return CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements, CUarray array,
                                                  CUdevice device) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!find_array(array)) return CUDA_ERROR_INVALID_HANDLE;
    (void)memoryRequirements, (void)device;
    return CUDA_ERROR_INVALID_VALUE;
}

/* NV12's planes (cuda.h): 0 is Width x Height of one UNSIGNED_INT8 channel, 1 half the width and
 * height of two; any other array has none. */
VGPU_EXPORT CUresult cuArrayGetPlane(CUarray *pPlaneArray, CUarray hArray, unsigned int planeIdx) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pPlaneArray) return CUDA_ERROR_INVALID_VALUE;
    vgpu_array *a = find_array(hArray);
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    if (a->desc.Format != CU_AD_FORMAT_NV12 || planeIdx > 1) return CUDA_ERROR_INVALID_VALUE;
    if (!a->planes[planeIdx]) {
        size_t w = a->desc.Width, h = a->desc.Height;
        CUDA_ARRAY3D_DESCRIPTOR d = {planeIdx ? w / 2 : w, planeIdx ? h / 2 : h, 0, CU_AD_FORMAT_UNSIGNED_INT8,
                                     planeIdx ? 2 : 1, a->desc.Flags};
        vgpu_array *plane = new_array(&d, planeIdx ? 2 : 1, a->storage + (planeIdx ? w * h : 0), 0);
        if (!plane) return CUDA_ERROR_OUT_OF_MEMORY;
        a->planes[planeIdx] = plane;
    }
    *pPlaneArray = (CUarray)a->planes[planeIdx];
    return CUDA_SUCCESS;
}

/* ---- mipmapped arrays: one array per level, each dimension halved (at least 1); layers and
 * cubemap faces stay ---- */

static size_t level_size(size_t size, unsigned level) { return size ? (size >> level ? size >> level : 1) : 0; }

static void free_mipmap(vgpu_mipmap *m) {
    pthread_mutex_lock(&lock);
    for (vgpu_mipmap **at = &mipmaps; *at; at = &(*at)->next)
        if (*at == m) {
            *at = m->next;
            break;
        }
    m->magic = 0;
    pthread_mutex_unlock(&lock);
    for (unsigned i = 0; i < m->levels; i++) {
        m->level[i]->owns_storage = !m->external;
        free_array(m->level[i]);
    }
    if (m->external) vgpu_cuda_external_buffer_free(m->external);
    free(m);
}

/* Whether a mipmapped array of that shape may have that many levels (cuda.h: at most
 * 1 + log2 of its largest extent; NV12 has none). */
static int valid_levels(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned count) {
    int layered = (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
    size_t largest = d->Width > d->Height ? d->Width : d->Height;
    if (!layered && d->Depth > largest) largest = d->Depth;
    unsigned most = 0;
    while (largest >> most) most++;
    return count && count <= most && count <= MAX_LEVELS && d->Format != CU_AD_FORMAT_NV12;
}

static CUDA_ARRAY3D_DESCRIPTOR level_shape(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned i) {
    CUDA_ARRAY3D_DESCRIPTOR level = *d;
    level.Width = level_size(d->Width, i);
    level.Height = level_size(d->Height, i);
    if (!(d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP))) level.Depth = level_size(d->Depth, i);
    return level;
}

static void publish_mipmap(vgpu_mipmap *m, CUmipmappedArray *out) {
    pthread_mutex_lock(&lock);
    m->magic = MIPMAP_MAGIC;
    m->next = mipmaps;
    mipmaps = m;
    pthread_mutex_unlock(&lock);
    *out = (CUmipmappedArray)m;
}

CUresult vgpu_cuda_mipmap_over(CUmipmappedArray *out, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels,
                               CUdeviceptr storage, size_t capacity) {
    size_t element = element_bytes(d->Format, d->NumChannels);
    if (!element || !valid_levels(d, levels)) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = check_shape(d);
    if (rc != CUDA_SUCCESS) return rc;
    if (d->Flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING)) return CUDA_ERROR_NOT_SUPPORTED;
    vgpu_mipmap *m = calloc(1, sizeof *m);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    m->desc = *d;
    size_t offset = 0;
    for (unsigned i = 0; i < levels; i++) { /* levels one after another, each 512-byte aligned */
        CUDA_ARRAY3D_DESCRIPTOR level = level_shape(d, i);
        vgpu_array *a = new_array(&level, element, storage + offset, 0);
        if (!a || (offset += (array_bytes(a) + 511) / 512 * 512) > capacity) {
            if (a) free_array(a); /* levels own no bytes: the caller keeps the storage */
            for (unsigned j = 0; j < m->levels; j++) free_array(m->level[j]);
            free(m);
            return a ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_OUT_OF_MEMORY;
        }
        a->from_mipmap = 1;
        m->level[m->levels++] = a;
    }
    m->external = storage;
    publish_mipmap(m, out);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pMipmappedArrayDesc,
                                            unsigned int numMipmapLevels) {
    if (!pHandle || !pMipmappedArrayDesc) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = ready();
    if (rc != CUDA_SUCCESS) return rc;
    const CUDA_ARRAY3D_DESCRIPTOR *d = pMipmappedArrayDesc;
    if (!valid_levels(d, numMipmapLevels)) return CUDA_ERROR_INVALID_VALUE;
    vgpu_mipmap *m = calloc(1, sizeof *m);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    m->desc = *d;
    for (unsigned i = 0; i < numMipmapLevels; i++) {
        CUDA_ARRAY3D_DESCRIPTOR level = level_shape(d, i);
        vgpu_array *a = NULL;
        if ((rc = create_array(&level, &a)) != CUDA_SUCCESS) {
            free_mipmap(m);
            return rc;
        }
        a->owns_storage = 0;
        a->from_mipmap = 1;
        m->level[m->levels++] = a;
    }
    publish_mipmap(m, pHandle);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayGetLevel(CUarray *pLevelArray, CUmipmappedArray hMipmappedArray, unsigned int level) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pLevelArray) return CUDA_ERROR_INVALID_VALUE;
    vgpu_mipmap *m = find_mipmap(hMipmappedArray);
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    if (level >= m->levels) return CUDA_ERROR_INVALID_VALUE;
    *pLevelArray = (CUarray)m->level[level];
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    vgpu_mipmap *m = find_mipmap(hMipmappedArray);
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    free_mipmap(m);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayGetSparseProperties(CUDA_ARRAY_SPARSE_PROPERTIES *sparseProperties,
                                                         CUmipmappedArray mipmap) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!find_mipmap(mipmap)) return CUDA_ERROR_INVALID_HANDLE;
    (void)sparseProperties;
    return CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements,
                                                           CUmipmappedArray mipmap, CUdevice device) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!find_mipmap(mipmap)) return CUDA_ERROR_INVALID_HANDLE;
    (void)memoryRequirements, (void)device;
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---- copies: an array side of a 2D or 3D copy becomes device memory at its bytes ---- */

CUresult vgpu_cuda_array_region(CUarray array, size_t x_bytes, size_t y, size_t z, size_t width_bytes, size_t height,
                                size_t depth, CUdeviceptr *base, size_t *pitch, size_t *rows) {
    vgpu_array *a = find_array(array);
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    size_t row_bytes = a->desc.Width * a->element;
    if (x_bytes % a->element || width_bytes % a->element || x_bytes > row_bytes || width_bytes > row_bytes - x_bytes ||
        y > a->rows || height > a->rows - y || z > a->slices || depth > a->slices - z)
        return CUDA_ERROR_INVALID_VALUE;
    *base = a->storage;
    *pitch = row_bytes;
    *rows = a->rows;
    return CUDA_SUCCESS;
}

/* One array's bytes [offset, offset + count), in the packed layout; CUDA_ERROR_INVALID_VALUE past its end. */
static CUresult array_span(CUarray array, size_t offset, size_t count, CUdeviceptr *at) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    vgpu_array *a = find_array(array);
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    size_t total = array_bytes(a);
    if (offset > total || count > total - offset) return CUDA_ERROR_INVALID_VALUE;
    *at = a->storage + offset;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemcpyHtoA_v2(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t ByteCount) {
    CUdeviceptr at;
    CUresult rc = array_span(dstArray, dstOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyHtoD_v2(at, srcHost, ByteCount);
}

VGPU_EXPORT CUresult cuMemcpyHtoAAsync_v2(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t ByteCount,
                                          CUstream hStream) {
    CUdeviceptr at;
    CUresult rc = array_span(dstArray, dstOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyHtoDAsync_v2(at, srcHost, ByteCount, hStream);
}

VGPU_EXPORT CUresult cuMemcpyAtoH_v2(void *dstHost, CUarray srcArray, size_t srcOffset, size_t ByteCount) {
    CUdeviceptr at;
    CUresult rc = array_span(srcArray, srcOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoH_v2(dstHost, at, ByteCount);
}

VGPU_EXPORT CUresult cuMemcpyAtoHAsync_v2(void *dstHost, CUarray srcArray, size_t srcOffset, size_t ByteCount,
                                          CUstream hStream) {
    CUdeviceptr at;
    CUresult rc = array_span(srcArray, srcOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoHAsync_v2(dstHost, at, ByteCount, hStream);
}

VGPU_EXPORT CUresult cuMemcpyAtoD_v2(CUdeviceptr dstDevice, CUarray srcArray, size_t srcOffset, size_t ByteCount) {
    CUdeviceptr at;
    CUresult rc = array_span(srcArray, srcOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoD_v2(dstDevice, at, ByteCount);
}

VGPU_EXPORT CUresult cuMemcpyDtoA_v2(CUarray dstArray, size_t dstOffset, CUdeviceptr srcDevice, size_t ByteCount) {
    CUdeviceptr at;
    CUresult rc = array_span(dstArray, dstOffset, ByteCount, &at);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoD_v2(at, srcDevice, ByteCount);
}

VGPU_EXPORT CUresult cuMemcpyAtoA_v2(CUarray dstArray, size_t dstOffset, CUarray srcArray, size_t srcOffset,
                                     size_t ByteCount) {
    CUdeviceptr to, from;
    CUresult rc = array_span(dstArray, dstOffset, ByteCount, &to);
    if (rc == CUDA_SUCCESS) rc = array_span(srcArray, srcOffset, ByteCount, &from);
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoD_v2(to, from, ByteCount);
}

/* ---- 2D memsets: rows of 1D memsets (one when the rows are contiguous) ---- */

static CUresult memset_2d(CUdeviceptr dst, size_t pitch, unsigned value, size_t size, size_t width, size_t height,
                          CUstream stream, int async) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!width || !height) return CUDA_SUCCESS;
    if (pitch < width * size || dst % size || pitch % size) return CUDA_ERROR_INVALID_VALUE;
    int contiguous = pitch == width * size;
    size_t rows = contiguous ? 1 : height, count = contiguous ? width * height : width;
    for (size_t row = 0; row < rows; row++) {
        CUdeviceptr at = dst + row * pitch;
        CUresult rc;
        if (size == 1)
            rc = async ? cuMemsetD8Async(at, (unsigned char)value, count, stream) : cuMemsetD8_v2(at, (unsigned char)value, count);
        else if (size == 2)
            rc = async ? cuMemsetD16Async(at, (unsigned short)value, count, stream)
                       : cuMemsetD16_v2(at, (unsigned short)value, count);
        else
            rc = async ? cuMemsetD32Async(at, value, count, stream) : cuMemsetD32_v2(at, value, count);
        if (rc != CUDA_SUCCESS) return rc;
    }
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemsetD2D8_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width, size_t Height) {
    return memset_2d(dstDevice, dstPitch, uc, 1, Width, Height, NULL, 0);
}
VGPU_EXPORT CUresult cuMemsetD2D16_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width,
                                      size_t Height) {
    return memset_2d(dstDevice, dstPitch, us, 2, Width, Height, NULL, 0);
}
VGPU_EXPORT CUresult cuMemsetD2D32_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width, size_t Height) {
    return memset_2d(dstDevice, dstPitch, ui, 4, Width, Height, NULL, 0);
}
VGPU_EXPORT CUresult cuMemsetD2D8Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width,
                                       size_t Height, CUstream hStream) {
    return memset_2d(dstDevice, dstPitch, uc, 1, Width, Height, hStream, 1);
}
VGPU_EXPORT CUresult cuMemsetD2D16Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width,
                                        size_t Height, CUstream hStream) {
    return memset_2d(dstDevice, dstPitch, us, 2, Width, Height, hStream, 1);
}
VGPU_EXPORT CUresult cuMemsetD2D32Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width,
                                        size_t Height, CUstream hStream) {
    return memset_2d(dstDevice, dstPitch, ui, 4, Width, Height, hStream, 1);
}

/* ---- 3D peer copies: with unified addressing a copy between two GPUs' memory is a peer copy,
 * so the contexts add nothing to a 3D copy ---- */

static CUresult copy_3d_peer(const CUDA_MEMCPY3D_PEER *p, CUstream stream, int async) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY3D copy = {
        .srcXInBytes = p->srcXInBytes, .srcY = p->srcY, .srcZ = p->srcZ, .srcLOD = p->srcLOD,
        .srcMemoryType = p->srcMemoryType, .srcHost = p->srcHost, .srcDevice = p->srcDevice, .srcArray = p->srcArray,
        .srcPitch = p->srcPitch, .srcHeight = p->srcHeight,
        .dstXInBytes = p->dstXInBytes, .dstY = p->dstY, .dstZ = p->dstZ, .dstLOD = p->dstLOD,
        .dstMemoryType = p->dstMemoryType, .dstHost = p->dstHost, .dstDevice = p->dstDevice, .dstArray = p->dstArray,
        .dstPitch = p->dstPitch, .dstHeight = p->dstHeight,
        .WidthInBytes = p->WidthInBytes, .Height = p->Height, .Depth = p->Depth,
    };
    return vgpu_cuda_copy_3d(&copy, stream, async);
}

VGPU_EXPORT CUresult cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER *pCopy) { return copy_3d_peer(pCopy, NULL, 0); }
VGPU_EXPORT CUresult cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER *pCopy, CUstream hStream) {
    return copy_3d_peer(pCopy, hStream, 1);
}

/* ---- batch copies (CUDA 12.8 and later): each copy in stream order; the source access order
 * asks no more than that, and the location hints and flags are hints ---- */

static int legacy_stream(CUstream stream) { return !stream || stream == CU_STREAM_LEGACY; }

static int valid_order(CUmemcpySrcAccessOrder order) {
    return order >= CU_MEMCPY_SRC_ACCESS_ORDER_STREAM && order <= CU_MEMCPY_SRC_ACCESS_ORDER_ANY;
}

static CUresult batch(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count, CUmemcpyAttributes *attrs,
                      size_t *attrsIdxs, size_t numAttrs, size_t *failIdx, CUstream hStream) {
    if (failIdx) *failIdx = SIZE_MAX;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count || !dsts || !srcs || !sizes || !attrs || !attrsIdxs || !numAttrs || numAttrs > count ||
        legacy_stream(hStream) || attrsIdxs[0] != 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t k = 0; k < numAttrs; k++)
        if ((k && attrsIdxs[k] <= attrsIdxs[k - 1]) || attrsIdxs[k] >= count || !valid_order(attrs[k].srcAccessOrder))
            return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++) {
        CUresult rc = cuMemcpyAsync(dsts[i], srcs[i], sizes[i], hStream);
        if (rc != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return rc;
        }
    }
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                                        CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, size_t *failIdx,
                                        CUstream hStream) {
    return batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx, hStream);
}

VGPU_EXPORT CUresult cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                                           CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs,
                                           CUstream hStream) {
    return batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, NULL, hStream);
}

VGPU_EXPORT CUresult cuMemcpyWithAttributesAsync(CUdeviceptr dst, CUdeviceptr src, size_t size, CUmemcpyAttributes *attr,
                                                 CUstream hStream) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!attr || !valid_order(attr->srcAccessOrder) || legacy_stream(hStream)) return CUDA_ERROR_INVALID_VALUE;
    return cuMemcpyAsync(dst, src, size, hStream);
}

/* One side of a 3D batch operation as a CUDA_MEMCPY3D side: an array at an offset in elements,
 * or a pointer (host or device, by address) with rows of rowLength elements. */
static CUresult operand_side(const CUmemcpy3DOperand *o, size_t element, size_t width, size_t height,
                             CUmemorytype *type, CUdeviceptr *device, CUarray *array, size_t *x, size_t *y, size_t *z,
                             size_t *pitch, size_t *rows) {
    if (o->type == CU_MEMCPY_OPERAND_TYPE_ARRAY) {
        *type = CU_MEMORYTYPE_ARRAY;
        *array = o->op.array.array;
        *x = o->op.array.offset.x * element;
        *y = o->op.array.offset.y;
        *z = o->op.array.offset.z;
        return CUDA_SUCCESS;
    }
    if (o->type != CU_MEMCPY_OPERAND_TYPE_POINTER || !o->op.ptr.ptr) return CUDA_ERROR_INVALID_VALUE;
    if ((o->op.ptr.rowLength && o->op.ptr.rowLength < width) || (o->op.ptr.layerHeight && o->op.ptr.layerHeight < height))
        return CUDA_ERROR_INVALID_VALUE;
    *type = CU_MEMORYTYPE_UNIFIED;
    *device = o->op.ptr.ptr;
    *pitch = (o->op.ptr.rowLength ? o->op.ptr.rowLength : width) * element;
    *rows = o->op.ptr.layerHeight ? o->op.ptr.layerHeight : height;
    return CUDA_SUCCESS;
}

static size_t operand_element(const CUmemcpy3DOperand *o) {
    vgpu_array *a = o->type == CU_MEMCPY_OPERAND_TYPE_ARRAY ? find_array(o->op.array.array) : NULL;
    return a ? a->element : 0;
}

static CUresult batch_op(const CUDA_MEMCPY3D_BATCH_OP *op, CUstream stream) {
    const CUextent3D *e = &op->extent;
    if (!e->width || !e->height || !e->depth || !valid_order(op->srcAccessOrder)) return CUDA_ERROR_INVALID_VALUE;
    size_t src_element = operand_element(&op->src), dst_element = operand_element(&op->dst);
    if ((op->src.type == CU_MEMCPY_OPERAND_TYPE_ARRAY && !src_element) ||
        (op->dst.type == CU_MEMCPY_OPERAND_TYPE_ARRAY && !dst_element))
        return CUDA_ERROR_INVALID_VALUE;
    if (src_element && dst_element && src_element != dst_element) return CUDA_ERROR_INVALID_VALUE;
    size_t element = src_element ? src_element : dst_element ? dst_element : 1;
    CUDA_MEMCPY3D c = {0};
    CUresult rc = operand_side(&op->src, element, e->width, e->height, &c.srcMemoryType, &c.srcDevice, &c.srcArray,
                               &c.srcXInBytes, &c.srcY, &c.srcZ, &c.srcPitch, &c.srcHeight);
    if (rc == CUDA_SUCCESS)
        rc = operand_side(&op->dst, element, e->width, e->height, &c.dstMemoryType, &c.dstDevice, &c.dstArray,
                          &c.dstXInBytes, &c.dstY, &c.dstZ, &c.dstPitch, &c.dstHeight);
    if (rc != CUDA_SUCCESS) return rc;
    c.WidthInBytes = e->width * element;
    c.Height = e->height;
    c.Depth = e->depth;
    return vgpu_cuda_copy_3d(&c, stream, 1);
}

static CUresult batch_3d(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx, unsigned long long flags,
                         CUstream hStream) {
    if (failIdx) *failIdx = SIZE_MAX;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!numOps || !opList || flags || legacy_stream(hStream)) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < numOps; i++) {
        CUresult rc = batch_op(&opList[i], hStream);
        if (rc != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return rc;
        }
    }
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx,
                                          unsigned long long flags, CUstream hStream) {
    return batch_3d(numOps, opList, failIdx, flags, hStream);
}

VGPU_EXPORT CUresult cuMemcpy3DBatchAsync_v2(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, unsigned long long flags,
                                             CUstream hStream) {
    return batch_3d(numOps, opList, NULL, flags, hStream);
}

VGPU_EXPORT CUresult cuMemcpy3DWithAttributesAsync(CUDA_MEMCPY3D_BATCH_OP *op, unsigned long long flags,
                                                   CUstream hStream) {
    return batch_3d(1, op, NULL, flags, hStream);
}

/* ---- texture and surface objects ---- */

static CUresult check_resource(const CUDA_RESOURCE_DESC *r, int surface) {
    if (r->flags) return CUDA_ERROR_INVALID_VALUE;
    switch (r->resType) {
    case CU_RESOURCE_TYPE_ARRAY: {
        vgpu_array *a = find_array(r->res.array.hArray);
        if (!a || (surface && !(a->desc.Flags & CUDA_ARRAY3D_SURFACE_LDST))) return CUDA_ERROR_INVALID_VALUE;
        return CUDA_SUCCESS;
    }
    case CU_RESOURCE_TYPE_MIPMAPPED_ARRAY:
        return !surface && find_mipmap(r->res.mipmap.hMipmappedArray) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    case CU_RESOURCE_TYPE_LINEAR: {
        size_t element = element_bytes(r->res.linear.format, r->res.linear.numChannels);
        int alignment = device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT);
        if (surface || !r->res.linear.devPtr || !element || element == SIZE_MAX || r->res.linear.format == CU_AD_FORMAT_NV12 ||
            (alignment && r->res.linear.devPtr % alignment) || r->res.linear.sizeInBytes % element)
            return CUDA_ERROR_INVALID_VALUE;
        return CUDA_SUCCESS;
    }
    case CU_RESOURCE_TYPE_PITCH2D: {
        size_t element = element_bytes(r->res.pitch2D.format, r->res.pitch2D.numChannels);
        int alignment = device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT);
        int pitch_alignment = device_attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT);
        if (surface || !r->res.pitch2D.devPtr || !element || element == SIZE_MAX ||
            r->res.pitch2D.format == CU_AD_FORMAT_NV12 || (alignment && r->res.pitch2D.devPtr % alignment) ||
            (pitch_alignment && r->res.pitch2D.pitchInBytes % pitch_alignment) || !r->res.pitch2D.width ||
            !r->res.pitch2D.height || r->res.pitch2D.pitchInBytes < r->res.pitch2D.width * element)
            return CUDA_ERROR_INVALID_VALUE;
        return CUDA_SUCCESS;
    }
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

static CUresult make_object(unsigned long long *out, const CUDA_RESOURCE_DESC *resource, const CUDA_TEXTURE_DESC *texture,
                            const CUDA_RESOURCE_VIEW_DESC *view, int surface) {
    if (!out || !resource || (!surface && !texture)) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = ready();
    if (rc != CUDA_SUCCESS) return rc;
    if ((rc = check_resource(resource, surface)) != CUDA_SUCCESS) return rc;
    if (view && resource->resType != CU_RESOURCE_TYPE_ARRAY && resource->resType != CU_RESOURCE_TYPE_MIPMAPPED_ARRAY)
        return CUDA_ERROR_INVALID_VALUE; /* cuda.h: a view only of an array or a mipmapped array */
    texture_object *o = calloc(1, sizeof *o);
    if (!o) return CUDA_ERROR_OUT_OF_MEMORY;
    o->surface = surface;
    o->resource = *resource;
    if (texture) o->texture = *texture;
    if (view) {
        o->view = *view;
        o->has_view = 1;
    }
    pthread_mutex_lock(&lock);
    o->id = next_object++;
    o->next = objects;
    objects = o;
    pthread_mutex_unlock(&lock);
    *out = o->id;
    return CUDA_SUCCESS;
}

/* The object of an id (texture or surface as asked), copied out under the lock; 0 if none. */
static int find_object(unsigned long long id, int surface, texture_object *copy) {
    pthread_mutex_lock(&lock);
    texture_object *o = objects;
    while (o && !(o->id == id && o->surface == surface)) o = o->next;
    if (o) *copy = *o;
    pthread_mutex_unlock(&lock);
    return o != NULL;
}

static CUresult destroy_object(unsigned long long id, int surface) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_lock(&lock);
    texture_object *found = NULL;
    for (texture_object **at = &objects; *at; at = &(*at)->next)
        if ((*at)->id == id && (*at)->surface == surface) {
            found = *at;
            *at = found->next;
            break;
        }
    pthread_mutex_unlock(&lock);
    free(found);
    return found ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuTexObjectCreate(CUtexObject *pTexObject, const CUDA_RESOURCE_DESC *pResDesc,
                                       const CUDA_TEXTURE_DESC *pTexDesc, const CUDA_RESOURCE_VIEW_DESC *pResViewDesc) {
    return make_object(pTexObject, pResDesc, pTexDesc, pResViewDesc, 0);
}

VGPU_EXPORT CUresult cuTexObjectDestroy(CUtexObject texObject) { return destroy_object(texObject, 0); }

VGPU_EXPORT CUresult cuTexObjectGetResourceDesc(CUDA_RESOURCE_DESC *pResDesc, CUtexObject texObject) {
    texture_object o;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pResDesc || !find_object(texObject, 0, &o)) return CUDA_ERROR_INVALID_VALUE;
    *pResDesc = o.resource;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTexObjectGetTextureDesc(CUDA_TEXTURE_DESC *pTexDesc, CUtexObject texObject) {
    texture_object o;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pTexDesc || !find_object(texObject, 0, &o)) return CUDA_ERROR_INVALID_VALUE;
    *pTexDesc = o.texture;
    return CUDA_SUCCESS;
}

/* The view given at creation; without one, zeros (format NONE: the resource's own). */
VGPU_EXPORT CUresult cuTexObjectGetResourceViewDesc(CUDA_RESOURCE_VIEW_DESC *pResViewDesc, CUtexObject texObject) {
    texture_object o;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pResViewDesc || !find_object(texObject, 0, &o)) return CUDA_ERROR_INVALID_VALUE;
    *pResViewDesc = o.view;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuSurfObjectCreate(CUsurfObject *pSurfObject, const CUDA_RESOURCE_DESC *pResDesc) {
    if (pResDesc && pResDesc->resType != CU_RESOURCE_TYPE_ARRAY) return CUDA_ERROR_INVALID_VALUE;
    return make_object(pSurfObject, pResDesc, NULL, NULL, 1);
}

VGPU_EXPORT CUresult cuSurfObjectDestroy(CUsurfObject surfObject) { return destroy_object(surfObject, 1); }

VGPU_EXPORT CUresult cuSurfObjectGetResourceDesc(CUDA_RESOURCE_DESC *pResDesc, CUsurfObject surfObject) {
    texture_object o;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pResDesc || !find_object(surfObject, 1, &o)) return CUDA_ERROR_INVALID_VALUE;
    *pResDesc = o.resource;
    return CUDA_SUCCESS;
}

/* ---- v1 names (CUDA < 3.2: 32-bit device pointers, sizes and descriptor fields), by the v1
 * rule: inputs are widened and the call is the current version's; a size handed back is at most
 * 0xFFFFFFFF ---- */

static unsigned narrow(size_t value) { return value > 0xFFFFFFFFu ? 0xFFFFFFFFu : (unsigned)value; }

VGPU_EXPORT CUresult cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *pAllocateArray) {
    if (!pAllocateArray) return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY_DESCRIPTOR d = {pAllocateArray->Width, pAllocateArray->Height, pAllocateArray->Format,
                               pAllocateArray->NumChannels};
    return cuArrayCreate_v2(pHandle, &d);
}

VGPU_EXPORT CUresult cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *pAllocateArray) {
    if (!pAllocateArray) return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY3D_DESCRIPTOR d = {pAllocateArray->Width, pAllocateArray->Height, pAllocateArray->Depth,
                                 pAllocateArray->Format, pAllocateArray->NumChannels, pAllocateArray->Flags};
    return cuArray3DCreate_v2(pHandle, &d);
}

VGPU_EXPORT CUresult cuArrayGetDescriptor(CUDA_ARRAY_DESCRIPTOR_v1 *pArrayDescriptor, CUarray hArray) {
    CUDA_ARRAY_DESCRIPTOR d;
    CUresult rc = cuArrayGetDescriptor_v2(pArrayDescriptor ? &d : NULL, hArray);
    if (rc == CUDA_SUCCESS) *pArrayDescriptor = (CUDA_ARRAY_DESCRIPTOR_v1){narrow(d.Width), narrow(d.Height), d.Format, d.NumChannels};
    return rc;
}

VGPU_EXPORT CUresult cuArray3DGetDescriptor(CUDA_ARRAY3D_DESCRIPTOR_v1 *pArrayDescriptor, CUarray hArray) {
    CUDA_ARRAY3D_DESCRIPTOR d;
    CUresult rc = cuArray3DGetDescriptor_v2(pArrayDescriptor ? &d : NULL, hArray);
    if (rc == CUDA_SUCCESS)
        *pArrayDescriptor = (CUDA_ARRAY3D_DESCRIPTOR_v1){narrow(d.Width), narrow(d.Height), narrow(d.Depth), d.Format,
                                                         d.NumChannels, d.Flags};
    return rc;
}

VGPU_EXPORT CUresult cuMemcpyHtoA(CUarray dstArray, unsigned int dstOffset, const void *srcHost, unsigned int ByteCount) {
    return cuMemcpyHtoA_v2(dstArray, dstOffset, srcHost, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyAtoH(void *dstHost, CUarray srcArray, unsigned int srcOffset, unsigned int ByteCount) {
    return cuMemcpyAtoH_v2(dstHost, srcArray, srcOffset, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyHtoAAsync(CUarray dstArray, unsigned int dstOffset, const void *srcHost,
                                       unsigned int ByteCount, CUstream hStream) {
    return cuMemcpyHtoAAsync_v2(dstArray, dstOffset, srcHost, ByteCount, hStream);
}
VGPU_EXPORT CUresult cuMemcpyAtoHAsync(void *dstHost, CUarray srcArray, unsigned int srcOffset, unsigned int ByteCount,
                                       CUstream hStream) {
    return cuMemcpyAtoHAsync_v2(dstHost, srcArray, srcOffset, ByteCount, hStream);
}
VGPU_EXPORT CUresult cuMemcpyAtoD(CUdeviceptr_v1 dstDevice, CUarray srcArray, unsigned int srcOffset, unsigned int ByteCount) {
    return cuMemcpyAtoD_v2(dstDevice, srcArray, srcOffset, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyDtoA(CUarray dstArray, unsigned int dstOffset, CUdeviceptr_v1 srcDevice, unsigned int ByteCount) {
    return cuMemcpyDtoA_v2(dstArray, dstOffset, srcDevice, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyAtoA(CUarray dstArray, unsigned int dstOffset, CUarray srcArray, unsigned int srcOffset,
                                  unsigned int ByteCount) {
    return cuMemcpyAtoA_v2(dstArray, dstOffset, srcArray, srcOffset, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyHtoD(CUdeviceptr_v1 dstDevice, const void *srcHost, unsigned int ByteCount) {
    return cuMemcpyHtoD_v2(dstDevice, srcHost, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyDtoH(void *dstHost, CUdeviceptr_v1 srcDevice, unsigned int ByteCount) {
    return cuMemcpyDtoH_v2(dstHost, srcDevice, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyDtoD(CUdeviceptr_v1 dstDevice, CUdeviceptr_v1 srcDevice, unsigned int ByteCount) {
    return cuMemcpyDtoD_v2(dstDevice, srcDevice, ByteCount);
}
VGPU_EXPORT CUresult cuMemcpyHtoDAsync(CUdeviceptr_v1 dstDevice, const void *srcHost, unsigned int ByteCount,
                                       CUstream hStream) {
    return cuMemcpyHtoDAsync_v2(dstDevice, srcHost, ByteCount, hStream);
}
VGPU_EXPORT CUresult cuMemcpyDtoHAsync(void *dstHost, CUdeviceptr_v1 srcDevice, unsigned int ByteCount, CUstream hStream) {
    return cuMemcpyDtoHAsync_v2(dstHost, srcDevice, ByteCount, hStream);
}
VGPU_EXPORT CUresult cuMemcpyDtoDAsync(CUdeviceptr_v1 dstDevice, CUdeviceptr_v1 srcDevice, unsigned int ByteCount,
                                       CUstream hStream) {
    return cuMemcpyDtoDAsync_v2(dstDevice, srcDevice, ByteCount, hStream);
}
VGPU_EXPORT CUresult cuMemsetD2D8(CUdeviceptr_v1 dstDevice, unsigned int dstPitch, unsigned char uc, unsigned int Width,
                                  unsigned int Height) {
    return cuMemsetD2D8_v2(dstDevice, dstPitch, uc, Width, Height);
}
VGPU_EXPORT CUresult cuMemsetD2D16(CUdeviceptr_v1 dstDevice, unsigned int dstPitch, unsigned short us, unsigned int Width,
                                   unsigned int Height) {
    return cuMemsetD2D16_v2(dstDevice, dstPitch, us, Width, Height);
}
VGPU_EXPORT CUresult cuMemsetD2D32(CUdeviceptr_v1 dstDevice, unsigned int dstPitch, unsigned int ui, unsigned int Width,
                                   unsigned int Height) {
    return cuMemsetD2D32_v2(dstDevice, dstPitch, ui, Width, Height);
}

static CUDA_MEMCPY2D widen_2d(const CUDA_MEMCPY2D_v1 *p) {
    return (CUDA_MEMCPY2D){
        .srcXInBytes = p->srcXInBytes, .srcY = p->srcY, .srcMemoryType = p->srcMemoryType, .srcHost = p->srcHost,
        .srcDevice = p->srcDevice, .srcArray = p->srcArray, .srcPitch = p->srcPitch,
        .dstXInBytes = p->dstXInBytes, .dstY = p->dstY, .dstMemoryType = p->dstMemoryType, .dstHost = p->dstHost,
        .dstDevice = p->dstDevice, .dstArray = p->dstArray, .dstPitch = p->dstPitch,
        .WidthInBytes = p->WidthInBytes, .Height = p->Height,
    };
}

static CUDA_MEMCPY3D widen_3d(const CUDA_MEMCPY3D_v1 *p) {
    return (CUDA_MEMCPY3D){
        .srcXInBytes = p->srcXInBytes, .srcY = p->srcY, .srcZ = p->srcZ, .srcLOD = p->srcLOD,
        .srcMemoryType = p->srcMemoryType, .srcHost = p->srcHost, .srcDevice = p->srcDevice, .srcArray = p->srcArray,
        .srcPitch = p->srcPitch, .srcHeight = p->srcHeight,
        .dstXInBytes = p->dstXInBytes, .dstY = p->dstY, .dstZ = p->dstZ, .dstLOD = p->dstLOD,
        .dstMemoryType = p->dstMemoryType, .dstHost = p->dstHost, .dstDevice = p->dstDevice, .dstArray = p->dstArray,
        .dstPitch = p->dstPitch, .dstHeight = p->dstHeight,
        .WidthInBytes = p->WidthInBytes, .Height = p->Height, .Depth = p->Depth,
    };
}

VGPU_EXPORT CUresult cuMemcpy2D(const CUDA_MEMCPY2D_v1 *pCopy) {
    if (!pCopy) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY2D copy = widen_2d(pCopy);
    return cuMemcpy2D_v2(&copy);
}
VGPU_EXPORT CUresult cuMemcpy2DUnaligned(const CUDA_MEMCPY2D_v1 *pCopy) {
    if (!pCopy) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY2D copy = widen_2d(pCopy);
    return cuMemcpy2DUnaligned_v2(&copy);
}
VGPU_EXPORT CUresult cuMemcpy2DAsync(const CUDA_MEMCPY2D_v1 *pCopy, CUstream hStream) {
    if (!pCopy) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY2D copy = widen_2d(pCopy);
    return cuMemcpy2DAsync_v2(&copy, hStream);
}
VGPU_EXPORT CUresult cuMemcpy3D(const CUDA_MEMCPY3D_v1 *pCopy) {
    if (!pCopy) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY3D copy = widen_3d(pCopy);
    return vgpu_cuda_copy_3d(&copy, NULL, 0);
}
VGPU_EXPORT CUresult cuMemcpy3DAsync(const CUDA_MEMCPY3D_v1 *pCopy, CUstream hStream) {
    if (!pCopy) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY3D copy = widen_3d(pCopy);
    return vgpu_cuda_copy_3d(&copy, hStream, 1);
}
