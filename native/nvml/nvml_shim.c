/* libvgpu-nvml.so: NVML's library state (init reference count), its local answers
 * (nvmlErrorString) and the translation of transport failures into NVML codes.
 * Every other export is a generated stub that calls vgpu_nvml_dispatch. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>
#include <pthread.h>
#include <stdio.h>

#include "nvml_shim.h"

/* What `vgpu ps` and `vgpu doctor` read to tell this library from NVIDIA's (pyelftools). */
__attribute__((section(".vgpu"), used)) static const char vgpu_identity[] = "vgpu libvgpu-nvml.so " VGPU_PACKAGE_VERSION;

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;

static vgpu_api api = {.name = "nvml", .prefix = "vgpu-nvml"};

static nvmlReturn_t init_with_flags(unsigned int flags) {
    (void)flags; /* NO_GPUS and NO_ATTACH change nothing: vgpud always has its GPUs attached */
    pthread_mutex_lock(&init_lock);
    if (init_count > 0) {
        init_count++;
        pthread_mutex_unlock(&init_lock);
        return NVML_SUCCESS;
    }
    api.digest = vgpu_nvml_digest;
    api.op_base = vgpu_nvml_op_base;
    api.op_count = vgpu_nvml_op_count;
    int rc = vgpu_open(&api);
    nvmlReturn_t result = NVML_SUCCESS;
    if (rc == VGPU_OK) init_count = 1;
    else if (rc == VGPU_MISMATCH) result = NVML_ERROR_LIB_RM_VERSION_MISMATCH;
    else if (rc == VGPU_NO_MEMORY) result = NVML_ERROR_MEMORY;
    else result = NVML_ERROR_DRIVER_NOT_LOADED;
    pthread_mutex_unlock(&init_lock);
    vgpu_log(3, api.prefix, "nvmlInit -> %d", result);
    char detail[32];
    snprintf(detail, sizeof detail, "\"args\":[%u]", flags);
    vgpu_trace_call(api.name, flags ? "nvmlInitWithFlags" : "nvmlInit_v2", result, flags ? detail : "");
    return result;
}

VGPU_EXPORT nvmlReturn_t nvmlInit_v2(void) { return init_with_flags(0); }
VGPU_EXPORT nvmlReturn_t nvmlInit(void) { return init_with_flags(0); }
VGPU_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { return init_with_flags(flags); }

VGPU_EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&init_lock);
    nvmlReturn_t result = NVML_SUCCESS;
    if (init_count == 0) result = NVML_ERROR_UNINITIALIZED;
    else if (--init_count == 0) vgpu_close(&api);
    pthread_mutex_unlock(&init_lock);
    return result;
}

VGPU_EXPORT const char *nvmlErrorString(nvmlReturn_t result) { return vgpu_nvml_error_text((int)result); }

static int dispatch(const vgpu_function *fn, void *const *args) {
    if (__atomic_load_n(&init_count, __ATOMIC_SEQ_CST) == 0) return NVML_ERROR_UNINITIALIZED;
    int32_t rc = NVML_ERROR_UNKNOWN;
    switch (vgpu_marshal_call(&api, fn, args, &rc)) {
    case VGPU_CALL_DONE:
        vgpu_log(3, api.prefix, "%s -> %d", fn->name, rc);
        return rc;
    case VGPU_CALL_UNSUPPORTED:
        return NVML_ERROR_NOT_SUPPORTED;
    case VGPU_CALL_BAD_HANDLE:
    case VGPU_CALL_TOO_BIG:
        return NVML_ERROR_INVALID_ARGUMENT;
    default:
        return NVML_ERROR_GPU_IS_LOST;
    }
}

int vgpu_nvml_dispatch(const vgpu_function *fn, void *const *args) {
    int rc = dispatch(fn, args);
    vgpu_trace_result(&api, fn, args, rc);
    return rc;
}
