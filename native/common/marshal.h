/* Generic marshalling of one API call from its generated parameter descriptors.
 * The encoding is documented in vgpu/wire/codec.py. */
#pragma once
#include <stdint.h>
#include "transport.h"

enum vgpu_kind { /* mirrors vgpu.api.manifest.Kind */
    VGPU_K_VALUE = 1, VGPU_K_HANDLE = 2, VGPU_K_CSTRING = 3, VGPU_K_IN = 4, VGPU_K_INOUT = 5,
    VGPU_K_HANDLE_OUT = 6, VGPU_K_BUFFER = 7, VGPU_K_ARRAY = 8, VGPU_K_OPAQUE = 9,
    VGPU_K_ARRAY_IN = 10, VGPU_K_ARRAY_OUT = 11, VGPU_K_HANDLE_ARRAY = 12,
    VGPU_K_HANDLE_ARRAY_OUT = 13,
};

typedef struct vgpu_handle_field {
    int16_t offset;      /* offset of a handle inside a struct, -1 ends the list */
    uint8_t type;        /* index into the API's handle types */
} vgpu_handle_field;

typedef struct vgpu_param {
    uint8_t kind;
    uint8_t handle_type; /* index into the API's handle types (HANDLE, HANDLE_OUT) */
    int8_t count;        /* parameter holding a capacity or count, or -1 */
    uint32_t size;       /* value, pointee or element size; fixed capacity of a BUFFER */
    const vgpu_handle_field *handle_fields; /* INOUT: handles inside the struct travel as ids; or NULL */
    uint8_t record;      /* IN, INOUT: the pointee is a struct (its contents are part of a published key) */
    uint8_t versioned;   /* IN, INOUT: an NVML struct whose first field gives its size (NVML_STRUCT_VERSION):
                          * no more of it is read or written than the caller's version holds */
} vgpu_param;

typedef struct vgpu_function {
    const char *name;
    uint16_t op;
    uint8_t nparams;
    int8_t wait_param;   /* parameter holding a wait in ms, or -1 */
    uint8_t published;   /* vgpud publishes its answers in shared memory */
    uint8_t immutable;   /* the first successful answer holds for the life of the process */
    uint8_t synchronizing; /* waits for queued work: host functions the shim runs come first */
    uint8_t asynchronous; /* queues work: sent without waiting when nothing comes back */
    const vgpu_param *params;
} vgpu_function;

/* Outcome of a marshalled call, for the API shim to turn into its own codes. */
enum vgpu_call_status {
    VGPU_CALL_DONE = 0,          /* *rc holds the server's return code */
    VGPU_CALL_UNSUPPORTED = 1,   /* vgpud does not serve it, or it cannot be marshalled */
    VGPU_CALL_BAD_HANDLE = 2,    /* a handle argument is not one this library issued */
    VGPU_CALL_FAILED = 3,        /* transport failure (see transport.h) */
    VGPU_CALL_TOO_BIG = 4,       /* the request or its reply would not fit in a frame */
};

int vgpu_marshal_call(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc);
/* As vgpu_marshal_call, but a call that returns nothing to the caller is sent without waiting
 * (the pieces of a large copy before its last: they travel while vgpud works on the previous). */
int vgpu_marshal_queue(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc);
/* Return once vgpud has carried out everything this process's threads sent or posted before
 * (a ping after it): what a host function queued on a stream may rely on. */
int vgpu_marshal_fence(vgpu_api *api);
/* Under `vgpu trace`: record one of a process's first calls, its arguments and result. */
void vgpu_trace_result(const vgpu_api *api, const vgpu_function *fn, void *const *args, int rc);
/* Ask vgpud for every immutable answer of the API at once (OP_FACTS) and keep them. */
int vgpu_prefetch_facts(vgpu_api *api);

/* Handles: stable pointers that stand for the server's 64-bit ids. */
void *vgpu_handle_for(unsigned type, uint64_t id);
int vgpu_handle_id(unsigned type, const void *handle, uint64_t *id);
