/* Green contexts: a device's SMs described as resources, split into groups, gathered into a
 * descriptor, and given to a green context (a created context limited to those SMs, whose
 * launches vgpud models on that many). All of it is the process's own bookkeeping, as in the
 * real driver; only the streams and events it uses travel to vgpud.
 *
 * What the driver keeps inside a CUdevResource (its 92 internal bytes) is ours to choose: the
 * device, the split that made it and its part in it, so that a descriptor can check that its
 * resources belong together. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"

#define RESOURCE_MAGIC 0x53524756u /* "VGRS" */

enum resource_part { WHOLE = 0, GROUP = 1, REMAINDER = 2 };

typedef struct resource_tag {
    uint32_t magic;
    int32_t device;
    uint32_t split; /* the split that made it, 0 for a device's or a context's whole set */
    uint32_t part;
} resource_tag;

_Static_assert(sizeof(resource_tag) <= sizeof(((CUdevResource *)0)->_internal_padding), "tag fits the padding");

extern const unsigned vgpu_cuda_handle_CUgreenCtx, vgpu_cuda_handle_CUdevResourceDesc;

/* ---- descriptors: never destroyed by the API, so kept for the life of the process ---- */

typedef struct descriptor {
    CUdevice device;
    unsigned sms;
} descriptor;

static descriptor *descriptors;
static size_t descriptor_count, descriptor_cap;
static pthread_mutex_t green_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t splits_made;

/* ---- streams made while a green context was current (stream id -> green context id) ---- */

typedef struct stream_origin {
    uint64_t stream, context;
} stream_origin;

static stream_origin *origins;
static size_t origin_count, origin_cap;

static int initialised(void) { return vgpu_cuda_initialized(); }

static CUresult attribute(CUdevice dev, CUdevice_attribute which, int *value) {
    return cuDeviceGetAttribute(value, which, dev);
}

/* The partition rules of the driver's documentation: the minimum SMs in a group and the step
 * of its size, by compute capability (relaxed when SMs need not be co-scheduled). */
static void partition_rules(int major, unsigned flags, unsigned *minimum, unsigned *alignment) {
    if (flags & CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING) *minimum = 2, *alignment = 2;
    else if (major >= 9) *minimum = 8, *alignment = 8;
    else if (major == 8) *minimum = 4, *alignment = 2;
    else *minimum = 2, *alignment = 2;
}

static void describe(CUdevResource *out, CUdevice dev, unsigned sms, unsigned minimum, unsigned alignment,
                     uint32_t split, uint32_t part) {
    memset(out, 0, sizeof *out);
    out->type = CU_DEV_RESOURCE_TYPE_SM;
    out->sm.smCount = sms;
    out->sm.minSmPartitionSize = minimum;
    out->sm.smCoscheduledAlignment = alignment;
    resource_tag tag = {RESOURCE_MAGIC, dev, split, part};
    memcpy(out->_internal_padding, &tag, sizeof tag);
}

static int tag_of(const CUdevResource *resource, resource_tag *tag) {
    memcpy(tag, resource->_internal_padding, sizeof *tag);
    return tag->magic == RESOURCE_MAGIC ? 0 : -1;
}

/* The SM set of a device, or of a context (a green context's own SMs). */
static CUresult whole_set(CUdevice dev, unsigned green_sms, CUdevResource *resource, CUdevResourceType type) {
    if (!resource) return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
    int sms = 0, major = 0;
    CUresult rc = attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, &sms);
    if (rc == CUDA_SUCCESS) rc = attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &major);
    if (rc != CUDA_SUCCESS) return rc;
    unsigned minimum, alignment;
    partition_rules(major, 0, &minimum, &alignment);
    describe(resource, dev, green_sms ? green_sms : (unsigned)sms, minimum, alignment, 0, WHOLE);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDeviceGetDevResource(CUdevice device, CUdevResource *resource, CUdevResourceType type) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUdevice checked;
    CUresult rc = cuDeviceGet(&checked, device);
    return rc == CUDA_SUCCESS ? whole_set(device, 0, resource, type) : rc;
}

VGPU_EXPORT CUresult cuCtxGetDevResource(CUcontext hCtx, CUdevResource *resource, CUdevResourceType type) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUdevice dev;
    if (cuCtxGetDevice_v2(&dev, hCtx) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext ctx = hCtx;
    if (!ctx) cuCtxGetCurrent(&ctx);
    return whole_set(dev, vgpu_cuda_context_green_sms(ctx), resource, type);
}

VGPU_EXPORT CUresult cuDevSmResourceSplitByCount(CUdevResource *result, unsigned int *nbGroups,
                                                 const CUdevResource *input, CUdevResource *remaining,
                                                 unsigned int useFlags, unsigned int minCount) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    resource_tag tag;
    if (!nbGroups || !input || (result && !*nbGroups)) return CUDA_ERROR_INVALID_VALUE;
    if (input->type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
    if (tag_of(input, &tag) < 0) return CUDA_ERROR_INVALID_VALUE;
    if (tag.part != WHOLE) return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION; /* a split's output is not split again */
    if (useFlags & ~(unsigned)(CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING |
                               CU_DEV_SM_RESOURCE_SPLIT_MAX_POTENTIAL_CLUSTER_SIZE))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned sms = input->sm.smCount;
    if (minCount > sms) return CUDA_ERROR_INVALID_VALUE;
    int major = 0;
    CUresult rc = attribute(tag.device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &major);
    if (rc != CUDA_SUCCESS) return rc;
    if ((useFlags & CU_DEV_SM_RESOURCE_SPLIT_MAX_POTENTIAL_CLUSTER_SIZE) && major < 9) return CUDA_ERROR_INVALID_VALUE;
    unsigned minimum, alignment;
    partition_rules(major, useFlags, &minimum, &alignment);
    unsigned size = minCount > minimum ? minCount : minimum;
    size = (size + alignment - 1) / alignment * alignment;
    unsigned groups = size <= sms ? sms / size : 0;
    if (!groups) return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
    if (result && *nbGroups < groups) groups = *nbGroups;
    *nbGroups = groups;
    if (!result) return CUDA_SUCCESS;
    uint32_t split = __atomic_add_fetch(&splits_made, 1, __ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < groups; i++) describe(&result[i], tag.device, size, minimum, alignment, split, GROUP);
    if (remaining) describe(remaining, tag.device, sms - groups * size, minimum, alignment, split, REMAINDER);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuDevResourceGenerateDesc(CUdevResourceDesc *phDesc, CUdevResource *resources,
                                               unsigned int nbResources) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!phDesc || !resources || !nbResources) return CUDA_ERROR_INVALID_VALUE;
    resource_tag first, tag;
    unsigned sms = 0;
    for (unsigned i = 0; i < nbResources; i++) {
        if (resources[i].type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
        if (tag_of(&resources[i], &tag) < 0) return CUDA_ERROR_INVALID_VALUE;
        if (i == 0) first = tag;
        else if (tag.device != first.device || !tag.split || tag.split != first.split)
            return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION; /* one device, one split */
        sms += resources[i].sm.smCount;
    }
    if (!sms) return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
    pthread_mutex_lock(&green_lock);
    CUresult rc = CUDA_SUCCESS;
    if (descriptor_count == descriptor_cap) {
        size_t cap = descriptor_cap ? descriptor_cap * 2 : 16;
        descriptor *grown = realloc(descriptors, cap * sizeof *grown);
        if (grown) descriptors = grown, descriptor_cap = cap;
        else rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    size_t id = descriptor_count;
    if (rc == CUDA_SUCCESS) descriptors[descriptor_count++] = (descriptor){first.device, sms};
    pthread_mutex_unlock(&green_lock);
    if (rc != CUDA_SUCCESS) return rc;
    *phDesc = vgpu_handle_for(vgpu_cuda_handle_CUdevResourceDesc, id + 1);
    return *phDesc ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* ---- green contexts: the handle's id is its context's id ---- */

static CUresult green_context(CUgreenCtx green, CUcontext *ctx) {
    uint64_t id;
    if (!green || vgpu_handle_id(vgpu_cuda_handle_CUgreenCtx, green, &id) < 0) return CUDA_ERROR_INVALID_HANDLE;
    *ctx = vgpu_handle_for(vgpu_cuda_handle_CUcontext, id);
    return vgpu_cuda_context_green_sms(*ctx) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE; /* destroyed */
}

static CUgreenCtx green_of(CUcontext ctx) {
    uint64_t id;
    if (!vgpu_cuda_context_green_sms(ctx) || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0) return NULL;
    return vgpu_handle_for(vgpu_cuda_handle_CUgreenCtx, id);
}

VGPU_EXPORT CUresult cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev, unsigned int flags) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t id;
    if (!phCtx || !desc || vgpu_handle_id(vgpu_cuda_handle_CUdevResourceDesc, desc, &id) < 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (flags != CU_GREEN_CTX_DEFAULT_STREAM) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&green_lock);
    descriptor chosen = id >= 1 && id <= descriptor_count ? descriptors[id - 1] : (descriptor){-1, 0};
    pthread_mutex_unlock(&green_lock);
    if (!chosen.sms) return CUDA_ERROR_INVALID_VALUE;
    if (chosen.device != dev) return CUDA_ERROR_INVALID_DEVICE;
    CUcontext primary, ctx;
    CUresult rc = cuDevicePrimaryCtxRetain(&primary, dev); /* held until the green context is destroyed */
    if (rc != CUDA_SUCCESS) return rc;
    rc = vgpu_cuda_context_make(dev, 0, chosen.sms, &ctx);
    if (rc != CUDA_SUCCESS) {
        cuDevicePrimaryCtxRelease_v2(dev);
        return rc;
    }
    *phCtx = green_of(ctx);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuGreenCtxDestroy(CUgreenCtx hCtx) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUcontext ctx;
    CUdevice dev;
    CUresult rc = green_context(hCtx, &ctx);
    if (rc != CUDA_SUCCESS) return rc;
    if (cuCtxGetDevice_v2(&dev, ctx) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_HANDLE;
    vgpu_cuda_context_end(ctx);
    return cuDevicePrimaryCtxRelease_v2(dev);
}

VGPU_EXPORT CUresult cuCtxFromGreenCtx(CUcontext *pContext, CUgreenCtx hCtx) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pContext) return CUDA_ERROR_INVALID_VALUE;
    return green_context(hCtx, pContext);
}

VGPU_EXPORT CUresult cuGreenCtxGetDevResource(CUgreenCtx hCtx, CUdevResource *resource, CUdevResourceType type) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUcontext ctx;
    CUresult rc = green_context(hCtx, &ctx);
    return rc == CUDA_SUCCESS ? cuCtxGetDevResource(ctx, resource, type) : rc;
}

VGPU_EXPORT CUresult cuGreenCtxGetId(CUgreenCtx greenCtx, unsigned long long *greenCtxId) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUcontext ctx;
    uint64_t number;
    if (!greenCtxId) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = green_context(greenCtx, &ctx);
    if (rc != CUDA_SUCCESS) return rc;
    if (vgpu_cuda_context_number(ctx, &number) < 0) return CUDA_ERROR_INVALID_HANDLE;
    *greenCtxId = number;
    return CUDA_SUCCESS;
}

/* Work on the green context's device as a whole, made with its context current. */
static CUresult in_context(CUgreenCtx green, CUresult (*work)(CUevent), CUevent event) {
    CUcontext ctx, previous;
    CUresult rc = green_context(green, &ctx);
    if (rc != CUDA_SUCCESS) return rc;
    if (!event) return CUDA_ERROR_INVALID_HANDLE;
    cuCtxPushCurrent_v2(ctx);
    rc = work(event);
    cuCtxPopCurrent_v2(&previous);
    return rc;
}

static CUresult record_on_legacy(CUevent event) { return cuEventRecord(event, CU_STREAM_LEGACY); }
static CUresult wait_on_legacy(CUevent event) { return cuStreamWaitEvent(CU_STREAM_LEGACY, event, 0); }

VGPU_EXPORT CUresult cuGreenCtxRecordEvent(CUgreenCtx hCtx, CUevent hEvent) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    return in_context(hCtx, record_on_legacy, hEvent);
}

VGPU_EXPORT CUresult cuGreenCtxWaitEvent(CUgreenCtx hCtx, CUevent hEvent) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    return in_context(hCtx, wait_on_legacy, hEvent);
}

/* ---- streams: a stream belongs to the green context current when it was made ---- */

extern const vgpu_function vgpu_cuda_fn_cuStreamCreate, vgpu_cuda_fn_cuStreamCreateWithPriority;

static void remember_origin(CUstream stream) {
    CUcontext ctx = NULL;
    uint64_t stream_id, context_id;
    cuCtxGetCurrent(&ctx);
    if (!vgpu_cuda_context_green_sms(ctx) || vgpu_handle_id(vgpu_cuda_handle_CUstream, stream, &stream_id) < 0 ||
        vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &context_id) < 0)
        return;
    pthread_mutex_lock(&green_lock);
    if (origin_count == origin_cap) {
        size_t cap = origin_cap ? origin_cap * 2 : 16;
        stream_origin *grown = realloc(origins, cap * sizeof *grown);
        if (grown) origins = grown, origin_cap = cap;
    }
    if (origin_count < origin_cap) origins[origin_count++] = (stream_origin){stream_id, context_id};
    pthread_mutex_unlock(&green_lock);
}

VGPU_EXPORT CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority) {
    void *const args[] = {(void *)&phStream, (void *)&flags, (void *)&priority};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuStreamCreateWithPriority, args);
    if (rc == CUDA_SUCCESS) remember_origin(*phStream);
    return rc;
}

VGPU_EXPORT CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    void *const args[] = {(void *)&phStream, (void *)&Flags};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuStreamCreate, args);
    if (rc == CUDA_SUCCESS) remember_origin(*phStream);
    return rc;
}

VGPU_EXPORT CUresult cuGreenCtxStreamCreate(CUstream *phStream, CUgreenCtx greenCtx, unsigned int flags, int priority) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    CUcontext ctx, previous;
    CUresult rc = green_context(greenCtx, &ctx);
    if (rc != CUDA_SUCCESS) return rc;
    if (!phStream || flags != CU_STREAM_NON_BLOCKING) return CUDA_ERROR_INVALID_VALUE;
    cuCtxPushCurrent_v2(ctx);
    rc = cuStreamCreateWithPriority(phStream, flags, priority);
    cuCtxPopCurrent_v2(&previous);
    return rc;
}

VGPU_EXPORT CUresult cuStreamGetGreenCtx(CUstream hStream, CUgreenCtx *phCtx) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!phCtx) return CUDA_ERROR_INVALID_VALUE;
    *phCtx = NULL;
    if ((uintptr_t)hStream <= (uintptr_t)CU_STREAM_PER_THREAD) { /* the current context's own */
        CUcontext ctx = NULL;
        cuCtxGetCurrent(&ctx);
        *phCtx = green_of(ctx);
        return CUDA_SUCCESS;
    }
    uint64_t stream_id, context_id = 0;
    if (vgpu_handle_id(vgpu_cuda_handle_CUstream, hStream, &stream_id) < 0) return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&green_lock);
    for (size_t i = 0; i < origin_count; i++)
        if (origins[i].stream == stream_id) context_id = origins[i].context;
    pthread_mutex_unlock(&green_lock);
    if (context_id) *phCtx = green_of(vgpu_handle_for(vgpu_cuda_handle_CUcontext, context_id));
    return CUDA_SUCCESS;
}

/* A stream's resources: its green context's SMs, or its context's (the device's).  The _ptsz name
 * forwards here (generated). */
VGPU_EXPORT CUresult cuStreamGetDevResource(CUstream hStream, CUdevResource *resource, CUdevResourceType type) {
    if (!initialised()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!resource) return CUDA_ERROR_INVALID_VALUE;
    CUgreenCtx green = NULL;
    CUresult rc = cuStreamGetGreenCtx(hStream, &green);
    if (rc != CUDA_SUCCESS) return rc;
    if (green) return cuGreenCtxGetDevResource(green, resource, type);
    CUcontext ctx = NULL;
    rc = cuStreamGetCtx(hStream, &ctx);
    return rc == CUDA_SUCCESS ? cuCtxGetDevResource(ctx, resource, type) : rc;
}
