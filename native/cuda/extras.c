/* Device and context extras the process keeps to itself, as the real driver does: the legacy
 * device properties, execution affinity, async notification and coredump callbacks, the
 * coredump settings (global, per context, and the environment variables cuda-gdb documents),
 * and the driver log dumped to a file.
 *
 * vgpu never writes a GPU coredump (a simulated kernel raises no GPU exception) and sends no
 * async notification (the model has no over-budget events), so the callbacks registered here
 * are kept, listed and removed as cuda.h says, and never called. */
#define _GNU_SOURCE
#include <cuda.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_shim.h"

extern const unsigned vgpu_cuda_handle_CUasyncCallbackHandle, vgpu_cuda_handle_CUcoredumpCallbackHandle;

static pthread_mutex_t extras_lock = PTHREAD_MUTEX_INITIALIZER;

static CUresult device_checked(CUdevice dev) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    CUdevice checked;
    return cuDeviceGet(&checked, dev);
}

/* ---- the deprecated CUdevprop, filled from the attributes cudaGetDeviceProperties reads ---- */

VGPU_EXPORT CUresult cuDeviceGetProperties(CUdevprop *prop, CUdevice dev) {
    if (!prop) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = device_checked(dev);
    if (rc != CUDA_SUCCESS) return rc;
    const struct {
        int *field;
        CUdevice_attribute attribute;
    } fields[] = {
        {&prop->maxThreadsPerBlock, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK},
        {&prop->maxThreadsDim[0], CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X},
        {&prop->maxThreadsDim[1], CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y},
        {&prop->maxThreadsDim[2], CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z},
        {&prop->maxGridSize[0], CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X},
        {&prop->maxGridSize[1], CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y},
        {&prop->maxGridSize[2], CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z},
        {&prop->sharedMemPerBlock, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK},
        {&prop->totalConstantMemory, CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY},
        {&prop->SIMDWidth, CU_DEVICE_ATTRIBUTE_WARP_SIZE},
        {&prop->memPitch, CU_DEVICE_ATTRIBUTE_MAX_PITCH},
        {&prop->regsPerBlock, CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK},
        {&prop->clockRate, CU_DEVICE_ATTRIBUTE_CLOCK_RATE},
        {&prop->textureAlign, CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT},
    };
    CUdevprop filled;
    memset(&filled, 0, sizeof filled);
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        int value = 0;
        rc = cuDeviceGetAttribute(&value, fields[i].attribute, dev);
        if (rc != CUDA_SUCCESS) return rc;
        *(int *)((char *)&filled + ((char *)fields[i].field - (char *)prop)) = value;
    }
    *prop = filled;
    return CUDA_SUCCESS;
}

/* ---- execution affinity: a context's SM count (a green context's own SMs, else the device's).
 * Creating contexts with an SM-count affinity is an MPS client's feature (cuCtxCreate_v3), and
 * no MPS server is modelled, so devices report it unsupported. ---- */

VGPU_EXPORT CUresult cuDeviceGetExecAffinitySupport(int *pi, CUexecAffinityType type, CUdevice dev) {
    if (!pi || (unsigned)type >= CU_EXEC_AFFINITY_TYPE_MAX) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = device_checked(dev);
    if (rc != CUDA_SUCCESS) return rc;
    *pi = 0;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCtxGetExecAffinity(CUexecAffinityParam *pExecAffinity, CUexecAffinityType type) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pExecAffinity) return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = NULL;
    CUdevice dev;
    cuCtxGetCurrent(&ctx);
    if (cuCtxGetDevice_v2(&dev, ctx) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    if (type != CU_EXEC_AFFINITY_TYPE_SM_COUNT) return CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY;
    unsigned sms = vgpu_cuda_context_green_sms(ctx);
    if (!sms) {
        int count = 0;
        CUresult rc = cuDeviceGetAttribute(&count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
        if (rc != CUDA_SUCCESS) return rc;
        sms = (unsigned)count;
    }
    memset(pExecAffinity, 0, sizeof *pExecAffinity);
    pExecAffinity->type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
    pExecAffinity->param.smCount.val = sms;
    return CUDA_SUCCESS;
}

/* ---- callbacks: registrations with unique handles (ids never reused) ---- */

enum callback_kind { ASYNC_NOTIFICATION = 1, COREDUMP_START = 2, COREDUMP_COMPLETE = 3 };

#define MAX_CALLBACKS 64

typedef struct registration {
    uint64_t id; /* 0: free */
    enum callback_kind kind;
    CUdevice device;
    void *function;
    void *user_data;
} registration;

static registration registrations[MAX_CALLBACKS];
static uint64_t registrations_made;

static CUresult callback_add(enum callback_kind kind, CUdevice device, void *function, void *user_data,
                             unsigned handle_type, void **out) {
    pthread_mutex_lock(&extras_lock);
    int slot = 0;
    while (slot < MAX_CALLBACKS && registrations[slot].id) slot++;
    uint64_t id = ++registrations_made;
    if (slot < MAX_CALLBACKS) registrations[slot] = (registration){id, kind, device, function, user_data};
    pthread_mutex_unlock(&extras_lock);
    if (slot == MAX_CALLBACKS) return CUDA_ERROR_OUT_OF_MEMORY;
    void *handle = vgpu_handle_for(handle_type, id);
    if (!handle) {
        pthread_mutex_lock(&extras_lock);
        registrations[slot].id = 0;
        pthread_mutex_unlock(&extras_lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (out) *out = handle;
    return CUDA_SUCCESS;
}

/* Remove the registration a handle names, if it is of this kind (and device); 0 when found. */
static int callback_remove(enum callback_kind kind, CUdevice device, const void *handle, unsigned handle_type) {
    uint64_t id;
    if (!handle || vgpu_handle_id(handle_type, handle, &id) < 0) return -1;
    int found = -1;
    pthread_mutex_lock(&extras_lock);
    for (int i = 0; i < MAX_CALLBACKS; i++)
        if (registrations[i].id == id && registrations[i].kind == kind &&
            (kind != ASYNC_NOTIFICATION || registrations[i].device == device)) {
            registrations[i].id = 0;
            found = 0;
        }
    pthread_mutex_unlock(&extras_lock);
    return found;
}

VGPU_EXPORT CUresult cuDeviceRegisterAsyncNotification(CUdevice device, CUasyncCallback callbackFunc, void *userData,
                                                       CUasyncCallbackHandle *callback) {
    if (!callbackFunc || !callback) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = device_checked(device);
    if (rc != CUDA_SUCCESS) return rc;
    return callback_add(ASYNC_NOTIFICATION, device, (void *)callbackFunc, userData,
                        vgpu_cuda_handle_CUasyncCallbackHandle, (void **)callback);
}

VGPU_EXPORT CUresult cuDeviceUnregisterAsyncNotification(CUdevice device, CUasyncCallbackHandle callback) {
    CUresult rc = device_checked(device);
    if (rc != CUDA_SUCCESS) return rc;
    return callback_remove(ASYNC_NOTIFICATION, device, callback, vgpu_cuda_handle_CUasyncCallbackHandle) == 0
               ? CUDA_SUCCESS
               : CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuCoredumpRegisterStartCallback(CUcoredumpStatusCallback callback, void *userData,
                                                     CUcoredumpCallbackHandle *callbackOut) {
    if (!callback) return CUDA_ERROR_INVALID_VALUE;
    return callback_add(COREDUMP_START, 0, (void *)callback, userData, vgpu_cuda_handle_CUcoredumpCallbackHandle,
                        (void **)callbackOut);
}

VGPU_EXPORT CUresult cuCoredumpRegisterCompleteCallback(CUcoredumpStatusCallback callback, void *userData,
                                                        CUcoredumpCallbackHandle *callbackOut) {
    if (!callback) return CUDA_ERROR_INVALID_VALUE;
    return callback_add(COREDUMP_COMPLETE, 0, (void *)callback, userData, vgpu_cuda_handle_CUcoredumpCallbackHandle,
                        (void **)callbackOut);
}

VGPU_EXPORT CUresult cuCoredumpDeregisterStartCallback(CUcoredumpCallbackHandle callback) {
    return callback_remove(COREDUMP_START, 0, callback, vgpu_cuda_handle_CUcoredumpCallbackHandle) == 0
               ? CUDA_SUCCESS
               : CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuCoredumpDeregisterCompleteCallback(CUcoredumpCallbackHandle callback) {
    return callback_remove(COREDUMP_COMPLETE, 0, callback, vgpu_cuda_handle_CUcoredumpCallbackHandle) == 0
               ? CUDA_SUCCESS
               : CUDA_ERROR_INVALID_VALUE;
}

/* ---- coredump settings: the process's (global) ones, and each context's own where set ---- */

#define PATH_CAPACITY 1024 /* "a string of up to 1023 characters" */

typedef struct coredump_settings {
    unsigned set;  /* bit per attribute: given a value (locally, for a context) */
    unsigned from_environment; /* bit per attribute fixed by an environment variable (global only) */
    bool on_exception, trigger_host, lightweight, user_trigger;
    unsigned generation_flags;
    char file[PATH_CAPACITY], pipe[PATH_CAPACITY];
} coredump_settings;

#define BIT(attribute) (1u << (attribute))

static coredump_settings global_settings;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

typedef struct context_settings {
    uint64_t context; /* 0: free */
    coredump_settings settings;
} context_settings;

#define MAX_CONTEXT_SETTINGS 64
static context_settings per_context[MAX_CONTEXT_SETTINGS];

static bool truthy(const char *value) { return value && (strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0); }

/* CUDA_COREDUMP_GENERATION_FLAGS: a comma-separated list of the flags' names, as cuda-gdb's
 * documentation spells them (skip_global_memory, gzip_compress, ...). */
static unsigned generation_flags_from(const char *text) {
    static const struct {
        const char *name;
        unsigned flag;
    } names[] = {
        {"skip_nonrelocated_elf_images", CU_COREDUMP_SKIP_NONRELOCATED_ELF_IMAGES},
        {"skip_global_memory", CU_COREDUMP_SKIP_GLOBAL_MEMORY},
        {"skip_shared_memory", CU_COREDUMP_SKIP_SHARED_MEMORY},
        {"skip_local_memory", CU_COREDUMP_SKIP_LOCAL_MEMORY},
        {"skip_abort", CU_COREDUMP_SKIP_ABORT},
        {"skip_constbank_memory", CU_COREDUMP_SKIP_CONSTBANK_MEMORY},
        {"skip_tensor_memory", CU_COREDUMP_SKIP_TENSOR_MEMORY},
        {"gzip_compress", CU_COREDUMP_GZIP_COMPRESS},
        {"faulted_contexts_only", CU_COREDUMP_FAULTED_CONTEXTS_ONLY},
        {"no_errbar_at_exit", CU_COREDUMP_NO_ERRBAR_AT_EXIT},
        {"log_only", (unsigned)CU_COREDUMP_LOG_ONLY},
    };
    unsigned flags = 0;
    char copy[512];
    snprintf(copy, sizeof copy, "%s", text);
    char *saved = NULL;
    for (char *word = strtok_r(copy, ", ", &saved); word; word = strtok_r(NULL, ", ", &saved))
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            if (strcasecmp(word, names[i].name) == 0) flags |= names[i].flag;
    return flags;
}

/* The defaults cuda.h documents, then the environment variables cuda-gdb documents, which take
 * permanent precedence over values set through the API. */
static void global_defaults(void) {
    coredump_settings *s = &global_settings;
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    s->trigger_host = true;
    snprintf(s->file, sizeof s->file, "core.cuda.%s.%d", host, (int)getpid());
    snprintf(s->pipe, sizeof s->pipe, "corepipe.cuda.%s.%d", host, (int)getpid());
    const char *value;
    if ((value = getenv("CUDA_ENABLE_COREDUMP_ON_EXCEPTION")))
        s->on_exception = truthy(value), s->from_environment |= BIT(CU_COREDUMP_ENABLE_ON_EXCEPTION);
    if ((value = getenv("CUDA_ENABLE_CPU_COREDUMP_ON_EXCEPTION")))
        s->trigger_host = truthy(value), s->from_environment |= BIT(CU_COREDUMP_TRIGGER_HOST);
    if ((value = getenv("CUDA_ENABLE_LIGHTWEIGHT_COREDUMP")))
        s->lightweight = truthy(value), s->from_environment |= BIT(CU_COREDUMP_LIGHTWEIGHT);
    if ((value = getenv("CUDA_ENABLE_USER_TRIGGERED_COREDUMP")))
        s->user_trigger = truthy(value), s->from_environment |= BIT(CU_COREDUMP_ENABLE_USER_TRIGGER);
    if ((value = getenv("CUDA_COREDUMP_FILE")) && strlen(value) < PATH_CAPACITY)
        snprintf(s->file, sizeof s->file, "%s", value), s->from_environment |= BIT(CU_COREDUMP_FILE);
    if ((value = getenv("CUDA_COREDUMP_PIPE")) && strlen(value) < PATH_CAPACITY)
        snprintf(s->pipe, sizeof s->pipe, "%s", value), s->from_environment |= BIT(CU_COREDUMP_PIPE);
    if ((value = getenv("CUDA_COREDUMP_GENERATION_FLAGS")))
        s->generation_flags = generation_flags_from(value), s->from_environment |= BIT(CU_COREDUMP_GENERATION_FLAGS);
}

static size_t attribute_size(CUcoredumpSettings attrib) {
    switch (attrib) {
    case CU_COREDUMP_ENABLE_ON_EXCEPTION:
    case CU_COREDUMP_TRIGGER_HOST:
    case CU_COREDUMP_LIGHTWEIGHT:
    case CU_COREDUMP_ENABLE_USER_TRIGGER: return sizeof(bool);
    case CU_COREDUMP_FILE:
    case CU_COREDUMP_PIPE: return PATH_CAPACITY;
    case CU_COREDUMP_GENERATION_FLAGS: return sizeof(unsigned int);
    default: return 0;
    }
}

static bool *flag_of(coredump_settings *s, CUcoredumpSettings attrib) {
    switch (attrib) {
    case CU_COREDUMP_ENABLE_ON_EXCEPTION: return &s->on_exception;
    case CU_COREDUMP_TRIGGER_HOST: return &s->trigger_host;
    case CU_COREDUMP_LIGHTWEIGHT: return &s->lightweight;
    case CU_COREDUMP_ENABLE_USER_TRIGGER: return &s->user_trigger;
    default: return NULL;
    }
}

static CUresult settings_read(const coredump_settings *s, CUcoredumpSettings attrib, void *value, size_t *size) {
    size_t needed = attribute_size(attrib);
    if (!needed || !size) return CUDA_ERROR_INVALID_VALUE;
    if (!value) {
        *size = needed;
        return CUDA_SUCCESS;
    }
    if (attrib == CU_COREDUMP_FILE || attrib == CU_COREDUMP_PIPE) {
        const char *text = attrib == CU_COREDUMP_FILE ? s->file : s->pipe;
        if (*size < strlen(text) + 1) return CUDA_ERROR_INVALID_VALUE;
        memcpy(value, text, strlen(text) + 1);
        return CUDA_SUCCESS;
    }
    if (*size < needed) return CUDA_ERROR_INVALID_VALUE;
    if (attrib == CU_COREDUMP_GENERATION_FLAGS) memcpy(value, &s->generation_flags, needed);
    else memcpy(value, flag_of((coredump_settings *)s, attrib), needed);
    return CUDA_SUCCESS;
}

static CUresult settings_write(coredump_settings *s, CUcoredumpSettings attrib, const void *value, size_t size) {
    size_t needed = attribute_size(attrib);
    if (attrib == CU_COREDUMP_FILE || attrib == CU_COREDUMP_PIPE) {
        size_t length = strnlen(value, size);
        if (!size || length == size || length >= PATH_CAPACITY) return CUDA_ERROR_INVALID_VALUE;
        memcpy(attrib == CU_COREDUMP_FILE ? s->file : s->pipe, value, length + 1);
    } else if (size != needed) {
        return CUDA_ERROR_INVALID_VALUE;
    } else if (attrib == CU_COREDUMP_GENERATION_FLAGS) {
        memcpy(&s->generation_flags, value, needed);
    } else {
        unsigned char byte;
        memcpy(&byte, value, 1);
        *flag_of(s, attrib) = byte != 0;
    }
    s->set |= BIT(attrib);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCoredumpGetAttributeGlobal(CUcoredumpSettings attrib, void *value, size_t *size) {
    pthread_once(&global_once, global_defaults);
    pthread_mutex_lock(&extras_lock);
    CUresult rc = settings_read(&global_settings, attrib, value, size);
    pthread_mutex_unlock(&extras_lock);
    return rc;
}

VGPU_EXPORT CUresult cuCoredumpSetAttributeGlobal(CUcoredumpSettings attrib, void *value, size_t *size) {
    pthread_once(&global_once, global_defaults);
    size_t needed = attribute_size(attrib);
    if (!needed || !size) return CUDA_ERROR_INVALID_VALUE;
    if (!value) {
        *size = needed;
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&extras_lock);
    CUresult rc = CUDA_SUCCESS;
    if (global_settings.from_environment & BIT(attrib)) rc = CUDA_ERROR_NOT_PERMITTED;
    else if (attrib == CU_COREDUMP_PIPE && global_settings.user_trigger) rc = CUDA_ERROR_NOT_PERMITTED;
    else rc = settings_write(&global_settings, attrib, value, *size);
    pthread_mutex_unlock(&extras_lock);
    return rc;
}

/* The current context's settings: its own where set, else the process's (and its creation flags). */
static CUresult context_view(coredump_settings *view, context_settings **own) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    CUcontext ctx = NULL;
    unsigned flags = 0;
    uint64_t id;
    cuCtxGetCurrent(&ctx);
    if (cuCtxGetFlags(&flags) != CUDA_SUCCESS || vgpu_handle_id(vgpu_cuda_handle_CUcontext, ctx, &id) < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_once(&global_once, global_defaults);
    *view = global_settings;
    view->set = 0;
    if (flags & CU_CTX_COREDUMP_ENABLE) view->on_exception = true;
    if (flags & CU_CTX_USER_COREDUMP_ENABLE) view->user_trigger = true;
    *own = NULL;
    context_settings *unused = NULL;
    for (int i = 0; i < MAX_CONTEXT_SETTINGS; i++) {
        if (per_context[i].context == id) *own = &per_context[i];
        else if (!per_context[i].context && !unused) unused = &per_context[i];
    }
    if (!*own && unused) {
        unused->context = id;
        unused->settings = *view;
        *own = unused;
    }
    if (!*own) return CUDA_ERROR_OUT_OF_MEMORY;
    const coredump_settings *local = &(*own)->settings;
    for (CUcoredumpSettings a = CU_COREDUMP_ENABLE_ON_EXCEPTION; a < CU_COREDUMP_MAX; a++) {
        if (!(local->set & BIT(a)) || (global_settings.from_environment & BIT(a))) continue;
        if (flag_of(view, a)) *flag_of(view, a) = *flag_of((coredump_settings *)local, a);
        else if (a == CU_COREDUMP_FILE) memcpy(view->file, local->file, sizeof view->file);
        else if (a == CU_COREDUMP_GENERATION_FLAGS) view->generation_flags = local->generation_flags;
    }
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuCoredumpGetAttribute(CUcoredumpSettings attrib, void *value, size_t *size) {
    coredump_settings view;
    context_settings *own;
    pthread_mutex_lock(&extras_lock);
    CUresult rc = context_view(&view, &own);
    if (rc == CUDA_SUCCESS) rc = settings_read(&view, attrib, value, size);
    pthread_mutex_unlock(&extras_lock);
    return rc;
}

VGPU_EXPORT CUresult cuCoredumpSetAttribute(CUcoredumpSettings attrib, void *value, size_t *size) {
    coredump_settings view;
    context_settings *own;
    pthread_mutex_lock(&extras_lock);
    CUresult rc = context_view(&view, &own);
    size_t needed = attribute_size(attrib);
    if (rc != CUDA_SUCCESS) {
    } else if (!needed || !size) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (!value) {
        *size = needed;
    } else if (attrib == CU_COREDUMP_ENABLE_USER_TRIGGER || attrib == CU_COREDUMP_PIPE) {
        rc = CUDA_ERROR_NOT_PERMITTED; /* "cannot be set on a per-context basis" */
    } else if (global_settings.from_environment & BIT(attrib)) {
        rc = CUDA_ERROR_NOT_PERMITTED;
    } else {
        rc = settings_write(&own->settings, attrib, value, *size);
    }
    pthread_mutex_unlock(&extras_lock);
    return rc;
}

/* A created context's settings go with it: forget those of contexts no longer alive. */
void vgpu_cuda_coredump_context_end(uint64_t context) {
    pthread_mutex_lock(&extras_lock);
    for (int i = 0; i < MAX_CONTEXT_SETTINGS; i++)
        if (per_context[i].context == context) per_context[i].context = 0;
    pthread_mutex_unlock(&extras_lock);
}

/* ---- the driver's log, to a file: the same entries cuLogsDumpToMemory gives (none are kept) ---- */

VGPU_EXPORT CUresult cuLogsDumpToFile(CUlogIterator *iterator, const char *pathToFile, unsigned int flags) {
    if (!pathToFile || !*pathToFile || flags) return CUDA_ERROR_INVALID_VALUE;
    char entries[1] = {0};
    size_t size = sizeof entries;
    CUresult rc = cuLogsDumpToMemory(iterator, entries, &size, 0);
    if (rc != CUDA_SUCCESS) return rc;
    FILE *out = fopen(pathToFile, "w");
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    int failed = size && fwrite(entries, 1, size, out) != size;
    failed |= fclose(out) != 0;
    return failed ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
