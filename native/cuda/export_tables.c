/* The private tables NVIDIA's runtime libraries ask libcuda.so.1 for with cuGetExportTable
 * (docs/cuda.md): what cudart needs to find its devices, keep its per-context state and pass the
 * driver's integrity check, and what cuBLAS(Lt), cuFFT and CUPTI ask for. */
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_shim.h"

typedef CUresult (*slot_fn)();

/* ---- MD2 (RFC 1319, with the published erratum) and HMAC-MD2 (RFC 2104) ---- */

static const uint8_t md2_s[256] = {
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19, 98, 167, 5, 243, 192, 199, 115, 140,
    152, 147, 43, 217, 188, 76, 130, 202, 30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18,
    190, 78, 196, 214, 218, 158, 222, 73, 160, 251, 245, 142, 187, 47, 238, 122, 169, 104, 121, 145, 21, 178, 7, 63,
    148, 194, 16, 137, 11, 34, 95, 33, 128, 127, 93, 154, 90, 144, 50, 39, 53, 62, 204, 231, 191, 247, 151, 3, 255,
    25, 48, 179, 72, 165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198, 79, 184, 56, 210, 150, 164, 125, 182, 118,
    252, 107, 226, 156, 116, 4, 241, 69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2, 27, 96,
    37, 173, 174, 176, 185, 246, 28, 70, 97, 105, 52, 64, 126, 15, 85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249,
    206, 186, 197, 234, 38, 44, 83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82, 106, 220, 55, 200,
    108, 193, 171, 250, 36, 225, 123, 8, 12, 189, 177, 74, 120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254,
    59, 0, 29, 57, 242, 239, 183, 14, 102, 88, 208, 228, 166, 119, 114, 248, 235, 117, 75, 10, 49, 68, 80, 180, 143,
    237, 31, 26, 219, 153, 141, 51, 159, 17, 131, 20};

typedef struct md2 {
    uint8_t state[48], checksum[16], block[16];
    size_t fill;
} md2;

static void md2_block(md2 *m, const uint8_t *block) {
    for (int i = 0; i < 16; i++) {
        m->state[16 + i] = block[i];
        m->state[32 + i] = (uint8_t)(m->state[16 + i] ^ m->state[i]);
    }
    uint8_t t = 0;
    for (int round = 0; round < 18; round++) {
        for (int i = 0; i < 48; i++) t = m->state[i] ^= md2_s[t];
        t = (uint8_t)(t + round);
    }
    uint8_t last = m->checksum[15];
    for (int i = 0; i < 16; i++) last = m->checksum[i] ^= md2_s[block[i] ^ last];
}

static void md2_update(md2 *m, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len--) {
        m->block[m->fill++] = *p++;
        if (m->fill == 16) {
            md2_block(m, m->block);
            m->fill = 0;
        }
    }
}

static void md2_final(md2 *m, uint8_t out[16]) {
    uint8_t pad = (uint8_t)(16 - m->fill), padding[16];
    memset(padding, pad, sizeof padding);
    md2_update(m, padding, pad);
    uint8_t checksum[16];
    memcpy(checksum, m->checksum, 16);
    md2_block(m, checksum);
    memcpy(out, m->state, 16);
}

static const uint8_t integrity_key[16] = {0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52,
                                          0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F};

/* ---- CONTEXT_LOCAL_STORAGE: cudart keeps its per-context state here ---- */

typedef struct cls_entry {
    CUcontext ctx;
    void *key, *value;
    void (*dtor)(CUcontext, void *, void *);
} cls_entry;

static cls_entry *cls;
static size_t cls_count, cls_cap;
static pthread_mutex_t cls_lock = PTHREAD_MUTEX_INITIALIZER;

static CUcontext context_or_current(CUcontext ctx) {
    if (ctx) return ctx;
    CUcontext current = NULL;
    cuCtxGetCurrent(&current);
    return current;
}

static CUresult cls_put(CUcontext ctx, void *key, void *value, void (*dtor)(CUcontext, void *, void *)) {
    ctx = context_or_current(ctx);
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&cls_lock);
    CUresult rc = CUDA_SUCCESS;
    size_t i = 0;
    while (i < cls_count && !(cls[i].ctx == ctx && cls[i].key == key)) i++;
    if (i == cls_count) {
        if (cls_count == cls_cap) {
            size_t cap = cls_cap ? cls_cap * 2 : 16;
            cls_entry *grown = realloc(cls, cap * sizeof *grown);
            if (!grown) rc = CUDA_ERROR_OUT_OF_MEMORY;
            else { cls = grown; cls_cap = cap; }
        }
        if (rc == CUDA_SUCCESS) cls_count++;
    }
    if (rc == CUDA_SUCCESS) cls[i] = (cls_entry){ctx, key, value, dtor};
    pthread_mutex_unlock(&cls_lock);
    return rc;
}

static CUresult cls_delete(CUcontext ctx, void *key) {
    ctx = context_or_current(ctx);
    pthread_mutex_lock(&cls_lock);
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    for (size_t i = 0; i < cls_count; i++)
        if (cls[i].ctx == ctx && cls[i].key == key) {
            cls[i] = cls[--cls_count];
            rc = CUDA_SUCCESS;
            break;
        }
    pthread_mutex_unlock(&cls_lock);
    return rc;
}

static CUresult cls_get(void **value, CUcontext ctx, void *key) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    ctx = context_or_current(ctx);
    pthread_mutex_lock(&cls_lock);
    CUresult rc = CUDA_ERROR_INVALID_HANDLE; /* absent: cudart then creates its state and puts it */
    for (size_t i = 0; i < cls_count; i++)
        if (cls[i].ctx == ctx && cls[i].key == key) {
            *value = cls[i].value;
            rc = CUDA_SUCCESS;
            break;
        }
    pthread_mutex_unlock(&cls_lock);
    return rc;
}

void vgpu_cuda_context_storage_release(CUcontext ctx) {
    for (;;) {
        cls_entry found = {0};
        pthread_mutex_lock(&cls_lock);
        for (size_t i = 0; i < cls_count; i++)
            if (cls[i].ctx == ctx) {
                found = cls[i];
                cls[i] = cls[--cls_count];
                break;
            }
        pthread_mutex_unlock(&cls_lock);
        if (!found.ctx) return;
        if (found.dtor) found.dtor(ctx, found.key, found.value);
    }
}

/* ---- the tables ---- */

static CUresult succeed() { return CUDA_SUCCESS; }
static void no_op(size_t unused) { (void)unused; }

/* [1] (CUmodule *, const wrapper *) and [6] (CUmodule *, wrapper *, extra, extra, unsigned); [8] takes the
 * fat binary header first.  The extra arguments are for linking device code, which vgpu does not do. */
static CUresult module_from_wrapper(CUmodule *module, const void *wrapper) {
    return vgpu_cuda_module_from_fatbin(module, wrapper);
}
static CUresult module_from_wrapper_ex(CUmodule *module, const void *wrapper, void *a, void *b, unsigned c) {
    return a || b ? CUDA_ERROR_NOT_SUPPORTED : vgpu_cuda_module_from_fatbin(module, wrapper);
}
static CUresult module_from_fatbin_ex(const void *fatbin, CUmodule *module, void *a, void *b, unsigned c) {
    return a || b ? CUDA_ERROR_NOT_SUPPORTED : vgpu_cuda_module_from_fatbin(module, fatbin);
}

static CUresult primary_context(CUcontext *ctx, CUdevice dev) {
    return vgpu_cuda_primary_context(ctx, dev);
}

static uint8_t hook_buffer_a[1024], hook_buffer_b[14];
static CUresult hook_a(void **buf, size_t *size) { *buf = hook_buffer_a; *size = sizeof hook_buffer_a; return CUDA_SUCCESS; }
static CUresult hook_b(void **buf, size_t *size) { *buf = hook_buffer_b; *size = sizeof hook_buffer_b; return CUDA_SUCCESS; }

static CUresult context_check(CUcontext ctx, unsigned *out1, void **out2) {
    (void)ctx;
    (void)out2;
    if (out1) *out1 = 0;
    return CUDA_SUCCESS;
}

static CUresult integrity_check(unsigned version, uint64_t unix_seconds, uint64_t out[2]);

static const void *cudart_interface[13] = {
    (void *)(sizeof(void *) * 13), (void *)module_from_wrapper, (void *)primary_context, NULL, NULL, NULL,
    (void *)module_from_wrapper_ex, (void *)no_op, (void *)module_from_fatbin_ex, NULL, NULL, NULL, (void *)succeed};
static const void *tools_hooks[7] = {(void *)(sizeof(void *) * 7), (void *)succeed, (void *)hook_a,
                                     (void *)succeed, (void *)succeed, (void *)succeed, (void *)hook_b};
static const void *tools_tls[4] = {(void *)(sizeof(void *) * 4), (void *)succeed, (void *)succeed, (void *)succeed};
static const void *context_storage[4] = {(void *)cls_put, (void *)cls_delete, (void *)cls_get, NULL};
static const void *context_checks[4] = {(void *)(sizeof(void *) * 4), NULL, (void *)context_check, (void *)succeed};
static const void *integrity[3] = {(void *)(sizeof(void *) * 3), (void *)integrity_check, NULL};

static CUresult integrity_check(unsigned version, uint64_t unix_seconds, uint64_t out[2]) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (version % 10 < 2) {
        out[0] = version % 10 == 0 ? 0x3341181C03CB675Cull : 0x1841181C03CB675Cull;
        out[1] = 0x8ED383AA1F4CD1E8ull;
        return CUDA_SUCCESS;
    }
    int driver = 0;
    cuDriverGetVersion(&driver);
    struct {
        uint32_t driver, version, pid, thread;
        const void *cudart, *integrity, *function;
        uint64_t seconds;
    } record = {(uint32_t)driver, version, (uint32_t)getpid(), (uint32_t)pthread_self(),
                cudart_interface, integrity, (const void *)integrity_check, unix_seconds};
    uint8_t pad[16];
    md2 inner = {0};
    for (int i = 0; i < 16; i++) pad[i] = integrity_key[i] ^ 0x36;
    md2_update(&inner, pad, 16);
    md2_update(&inner, &record, sizeof record);
    int count = 0;
    if (cuDeviceGetCount(&count) != CUDA_SUCCESS) return CUDA_ERROR_NOT_INITIALIZED;
    for (int dev = 0; dev < count; dev++) {
        struct { CUuuid uuid; int32_t domain, bus, device; } facts;
        if (cuDeviceGetUuid_v2(&facts.uuid, dev) != CUDA_SUCCESS ||
            cuDeviceGetAttribute(&facts.domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, dev) != CUDA_SUCCESS ||
            cuDeviceGetAttribute(&facts.bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev) != CUDA_SUCCESS ||
            cuDeviceGetAttribute(&facts.device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, dev) != CUDA_SUCCESS)
            return CUDA_ERROR_INVALID_DEVICE;
        md2_update(&inner, &facts, 28);
    }
    uint8_t inner_hash[16];
    md2_final(&inner, inner_hash);
    md2 outer = {0};
    for (int i = 0; i < 16; i++) pad[i] = integrity_key[i] ^ 0x5c;
    md2_update(&outer, pad, 16);
    md2_update(&outer, inner_hash, 16);
    md2_final(&outer, (uint8_t *)out);
    return CUDA_SUCCESS;
}

/* ---- 21318c60: asked for by cuBLAS (context-level queries).  A real H200 driver serves 92
 * slots; traced there (tests/real_gpu/tabletrace.c), cuBLAS 13 calls [4] (CUcontext, u64 *out),
 * which wrote 1 for the primary context, and on some paths [51] (CUcontext, u64, void **out),
 * which handed out an object whose first word was 1, then [39] (CUcontext, object, u64 *out),
 * which wrote 7.  vgpu answers [39] with a model of the same figure (one per 18 SMs: 7 for the
 * 132-SM Hopper boards); every other slot logs its call and answers "not supported". ---- */

#define MAX_CONTEXT_OBJECTS 64

static CUresult context_number(CUcontext ctx, uint64_t *out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!ctx && cuCtxGetCurrent(&ctx) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t number = 0;
    *out = ctx && vgpu_cuda_context_number(ctx, &number) == 0 ? number : 0;
    return CUDA_SUCCESS;
}

static uint64_t context_objects[MAX_CONTEXT_OBJECTS][8];

static CUresult context_object(CUcontext ctx, uint64_t which, void **out) {
    uint64_t number = 0;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (which == UINT64_MAX) return CUDA_ERROR_INVALID_HANDLE;
    if (context_number(ctx, &number) != CUDA_SUCCESS || number >= MAX_CONTEXT_OBJECTS) return CUDA_ERROR_INVALID_CONTEXT;
    context_objects[number][0] = 1;
    *out = context_objects[number];
    return CUDA_SUCCESS;
}

static CUresult context_object_query(CUcontext ctx, const void *object, uint64_t *out) {
    CUdevice dev;
    int sms = 0;
    if (!object || !out) return CUDA_ERROR_INVALID_VALUE;
    if (cuCtxGetDevice(&dev) != CUDA_SUCCESS ||
        cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = sms >= 18 ? (uint64_t)(sms / 18) : 1;
    return CUDA_SUCCESS;
}

/* ---- slots whose meaning is not established ----
 * Such a slot is a function of its own that logs its call (VGPU_LOG=info: the table, the slot
 * and the first four arguments) and answers "not supported", never NULL: every caller traced
 * (docs/cuda.md) handles that answer, where a NULL slot would crash it. */

static CUresult unserved(const char *table, int slot, uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    vgpu_cuda_log(2, "export table %s slot %d called (%#llx, %#llx, %#llx, %#llx): answered \"not supported\"",
                  table, slot, (unsigned long long)a, (unsigned long long)b, (unsigned long long)c,
                  (unsigned long long)d);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* UNSERVED(t, n) defines table t's slot n (t##_name names the table in the log); U(t, n) is its
 * entry.  The "10" forms cover slots n0..n9. */
#define UNSERVED(t, n) static CUresult unserved_##t##_##n(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { \
        return unserved(t##_name, n, a, b, c, d); }
#define UNSERVED10(t, n) UNSERVED(t, n##0) UNSERVED(t, n##1) UNSERVED(t, n##2) UNSERVED(t, n##3) \
    UNSERVED(t, n##4) UNSERVED(t, n##5) UNSERVED(t, n##6) UNSERVED(t, n##7) UNSERVED(t, n##8) UNSERVED(t, n##9)
#define UNSERVED1TO9(t) UNSERVED(t, 1) UNSERVED(t, 2) UNSERVED(t, 3) UNSERVED(t, 4) UNSERVED(t, 5) UNSERVED(t, 6) \
    UNSERVED(t, 7) UNSERVED(t, 8) UNSERVED(t, 9)
#define U(t, n) (void *)unserved_##t##_##n,
#define U10(t, n) U(t, n##0) U(t, n##1) U(t, n##2) U(t, n##3) U(t, n##4) U(t, n##5) U(t, n##6) U(t, n##7) \
    U(t, n##8) U(t, n##9)
#define U1TO9(t) U(t, 1) U(t, 2) U(t, 3) U(t, 4) U(t, 5) U(t, 6) U(t, 7) U(t, 8) U(t, 9)

static const char context_queries_name[] = "21318c60 CONTEXT_QUERIES";
UNSERVED(context_queries, 1) UNSERVED(context_queries, 2) UNSERVED(context_queries, 3)
UNSERVED(context_queries, 5) UNSERVED(context_queries, 6) UNSERVED(context_queries, 7)
UNSERVED(context_queries, 8) UNSERVED(context_queries, 9) UNSERVED10(context_queries, 1)
UNSERVED10(context_queries, 2) UNSERVED(context_queries, 30) UNSERVED(context_queries, 31)
UNSERVED(context_queries, 32) UNSERVED(context_queries, 33) UNSERVED(context_queries, 34)
UNSERVED(context_queries, 35) UNSERVED(context_queries, 36) UNSERVED(context_queries, 37)
UNSERVED(context_queries, 38) UNSERVED10(context_queries, 4) UNSERVED(context_queries, 50)
UNSERVED(context_queries, 52) UNSERVED(context_queries, 53) UNSERVED(context_queries, 54)
UNSERVED(context_queries, 55) UNSERVED(context_queries, 56) UNSERVED(context_queries, 57)
UNSERVED(context_queries, 58) UNSERVED(context_queries, 59) UNSERVED10(context_queries, 6)
UNSERVED10(context_queries, 7) UNSERVED10(context_queries, 8) UNSERVED(context_queries, 90)
UNSERVED(context_queries, 91) UNSERVED(context_queries, 92)
static const void *context_queries[93] = {
    (void *)(sizeof(void *) * 93), U(context_queries, 1) U(context_queries, 2) U(context_queries, 3)
    (void *)context_number, U(context_queries, 5) U(context_queries, 6) U(context_queries, 7)
    U(context_queries, 8) U(context_queries, 9) U10(context_queries, 1) U10(context_queries, 2)
    U(context_queries, 30) U(context_queries, 31) U(context_queries, 32) U(context_queries, 33)
    U(context_queries, 34) U(context_queries, 35) U(context_queries, 36) U(context_queries, 37)
    U(context_queries, 38) (void *)context_object_query, U10(context_queries, 4) U(context_queries, 50)
    (void *)context_object, U(context_queries, 52) U(context_queries, 53) U(context_queries, 54)
    U(context_queries, 55) U(context_queries, 56) U(context_queries, 57) U(context_queries, 58)
    U(context_queries, 59) U10(context_queries, 6) U10(context_queries, 7) U10(context_queries, 8)
    U(context_queries, 90) U(context_queries, 91) U(context_queries, 92)};

/* ---- f8cff951: the runtime's error log.  cudart (12.9 and 13.x; cuBLAS, cuDNN and the other
 * libraries carry the same code) asks for it before cuInit and keeps it.  Traced under vgpu:
 * when a runtime call fails, cudart calls [1] (const char *source, u64, const char *format,
 * va_list) with source "CUDA", 0 and a printf format such as "Invalid device number %d
 * provided, must be in the range of 0 to %d"; it ignores the answer.  It calls [2] only when
 * the size slot says the table is larger than two slots, forwarding its own arguments (not
 * seen called).  Three slots (size 0x18), as a real 580 driver's table begins. ---- */

static CUresult runtime_log(const char *source, uint64_t unknown, const char *format, va_list args) {
    char message[512];
    if (!format) return CUDA_ERROR_INVALID_VALUE;
    vsnprintf(message, sizeof message, format, args);
    vgpu_cuda_log(2, "%s: %s", source ? source : "runtime", message);
    return CUDA_SUCCESS;
}

static const char runtime_log_table_name[] = "f8cff951 RUNTIME_LOG";
UNSERVED(runtime_log_table, 2)
static const void *runtime_log_table[3] = {(void *)(sizeof(void *) * 3), (void *)runtime_log,
                                           U(runtime_log_table, 2)};

/* ---- 1734dc26: asked for by cuBLASLt 13.4 and later (also by cuDNN's graph engines, CUPTI and
 * NVRTC).  Traced under vgpu with cuBLASLt 13.4's half-precision heuristics: it calls [4]
 * (void **data, void **handle) only, once per (SM count, cluster shape) it caches; on success
 * it reads data as one byte per TPC (half the SM count) and counts the TPCs per distinct byte
 * value (a TPC -> GPC map, by all appearances), then gives handle back through [13].  On any
 * other answer it caches "no layout" and its heuristics go on without one (the algorithms it
 * finds are the same).  The layout of a real GPU is not known here, so [4] answers "not
 * supported"; the size (14 slots) covers the slots seen used, not a real driver's count. ---- */

static const char gpu_layout_name[] = "1734dc26 GPU_LAYOUT";
UNSERVED1TO9(gpu_layout) UNSERVED(gpu_layout, 10) UNSERVED(gpu_layout, 11) UNSERVED(gpu_layout, 12)
UNSERVED(gpu_layout, 13)
static const void *gpu_layout[14] = {(void *)(sizeof(void *) * 14), U1TO9(gpu_layout) U(gpu_layout, 10)
                                     U(gpu_layout, 11) U(gpu_layout, 12) U(gpu_layout, 13)};

/* ---- 6e163fbe: TOOLS_MODULE (the name NVIDIA's tools libraries give it), asked for by cuFFT and
 * CUPTI; 97 slots on a real H200 driver.  cuFFT loads each of its kernels as a module of one
 * function and finds the CUfunction with [7] (CUcontext, CUmodule, void (*callback)(void
 * *user, CUfunction), void *user): the callback is called once per function of the module,
 * and cuFFT takes only the answer 1 as success (CUFFT_INTERNAL_ERROR otherwise), so the
 * answer is a truth value rather than a CUresult.  Other slots: not established. ---- */

/* [7]: 1 once the callback has had every function of the module; 0 for no module or no callback. */
static int module_functions_each(CUcontext ctx, CUmodule module, void (*callback)(void *, CUfunction), void *user) {
    int count = callback ? vgpu_cuda_module_functions(module, NULL, 0) : -1;
    if (count < 0) return 0;
    CUfunction *functions = calloc(count ? (size_t)count : 1, sizeof *functions);
    if (!functions) return 0;
    count = vgpu_cuda_module_functions(module, functions, (unsigned)count); /* a module's functions are fixed */
    for (int i = 0; i < count; i++) callback(user, functions[i]);
    free(functions);
    return count >= 0;
}

static const char tools_module_name[] = "6e163fbe TOOLS_MODULE";
UNSERVED(tools_module, 1) UNSERVED(tools_module, 2) UNSERVED(tools_module, 3) UNSERVED(tools_module, 4)
UNSERVED(tools_module, 5) UNSERVED(tools_module, 6) UNSERVED(tools_module, 8) UNSERVED(tools_module, 9)
UNSERVED10(tools_module, 1) UNSERVED10(tools_module, 2) UNSERVED10(tools_module, 3) UNSERVED10(tools_module, 4)
UNSERVED10(tools_module, 5) UNSERVED10(tools_module, 6) UNSERVED10(tools_module, 7) UNSERVED10(tools_module, 8)
UNSERVED(tools_module, 90) UNSERVED(tools_module, 91) UNSERVED(tools_module, 92) UNSERVED(tools_module, 93)
UNSERVED(tools_module, 94) UNSERVED(tools_module, 95) UNSERVED(tools_module, 96)
static const void *tools_module[97] = {
    (void *)(sizeof(void *) * 97), U(tools_module, 1) U(tools_module, 2) U(tools_module, 3) U(tools_module, 4)
    U(tools_module, 5) U(tools_module, 6) (void *)module_functions_each, U(tools_module, 8) U(tools_module, 9)
    U10(tools_module, 1) U10(tools_module, 2) U10(tools_module, 3) U10(tools_module, 4) U10(tools_module, 5)
    U10(tools_module, 6) U10(tools_module, 7) U10(tools_module, 8) U(tools_module, 90) U(tools_module, 91)
    U(tools_module, 92) U(tools_module, 93) U(tools_module, 94) U(tools_module, 95) U(tools_module, 96)};

/* ---- 7cb63f9b-9ca4-8e42-a484-beb66e6aed7f: CUPTI's own table.  CUPTI 13.1 and later ask for it
 * first of all and, refused, answer every call (cuptiGetVersion included) with
 * CUPTI_ERROR_INVALID_PARAMETER, so JAX takes the GPU for absent.  Served, CUPTI 13.5 calls no
 * slot of it in cuptiGetVersion, activity registration, enabling or flushing; it then asks for
 * some twenty further tools tables, which vgpu refuses, and answers its activity calls with
 * CUPTI_ERROR_UNKNOWN, as when the profiling interface is unavailable (PyTorch's profiler then
 * warns and records CPU activity only).  The slots' meanings are not established; 61 slots
 * reach the highest one seen named in public (slot 60, byte offset 0x1e0). ---- */

static const char tools_cupti_name[] = "7cb63f9b TOOLS_CUPTI";
UNSERVED1TO9(tools_cupti) UNSERVED10(tools_cupti, 1) UNSERVED10(tools_cupti, 2) UNSERVED10(tools_cupti, 3)
UNSERVED10(tools_cupti, 4) UNSERVED10(tools_cupti, 5) UNSERVED(tools_cupti, 60)
static const void *tools_cupti[61] = {
    (void *)(sizeof(void *) * 61), U1TO9(tools_cupti) U10(tools_cupti, 1) U10(tools_cupti, 2) U10(tools_cupti, 3)
    U10(tools_cupti, 4) U10(tools_cupti, 5) U(tools_cupti, 60)};

/* ---- 69a28e9f-2449-8b47-b030-c5da330ea4e9: asked for by PyTorch 2.11 and later; a real driver
 * serves it with 34 slots (size 0x110).  None of the libraries traced here asks for it, so no
 * slot's meaning is established. ---- */

static const char torch_69a28e9f_name[] = "69a28e9f";
UNSERVED1TO9(torch_69a28e9f) UNSERVED10(torch_69a28e9f, 1) UNSERVED10(torch_69a28e9f, 2)
UNSERVED(torch_69a28e9f, 30) UNSERVED(torch_69a28e9f, 31) UNSERVED(torch_69a28e9f, 32)
UNSERVED(torch_69a28e9f, 33)
static const void *torch_69a28e9f[34] = {
    (void *)(sizeof(void *) * 34), U1TO9(torch_69a28e9f) U10(torch_69a28e9f, 1) U10(torch_69a28e9f, 2)
    U(torch_69a28e9f, 30) U(torch_69a28e9f, 31) U(torch_69a28e9f, 32) U(torch_69a28e9f, 33)};

typedef struct known_table {
    uint8_t id[16];
    const void *const *table;
    const char *name;
} known_table;

static const known_table tables[] = {
    {{0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9}, cudart_interface, "CUDART_INTERFACE"},
    {{0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a, 0x66}, tools_hooks, "TOOLS_RUNTIME_CALLBACK_HOOKS"},
    {{0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc}, tools_tls, "TOOLS_TLS"},
    {{0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93}, context_storage, "CONTEXT_LOCAL_STORAGE"},
    {{0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e}, context_checks, "CONTEXT_CHECKS"},
    {{0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2}, integrity, "INTEGRITY_CHECK"},
    {{0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2}, context_queries, "CONTEXT_QUERIES"},
    {{0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9}, runtime_log_table, "RUNTIME_LOG"},
    {{0x17, 0x34, 0xdc, 0x26, 0x80, 0x0d, 0x47, 0x45, 0x87, 0x26, 0xc0, 0xf1, 0xe7, 0xdd, 0x8b, 0xca}, gpu_layout, "GPU_LAYOUT"},
    {{0x6e, 0x16, 0x3f, 0xbe, 0xb9, 0x58, 0x44, 0x4d, 0x83, 0x5c, 0xe1, 0x82, 0xaf, 0xf1, 0x99, 0x1e}, tools_module, "TOOLS_MODULE"},
    {{0x7c, 0xb6, 0x3f, 0x9b, 0x9c, 0xa4, 0x8e, 0x42, 0xa4, 0x84, 0xbe, 0xb6, 0x6e, 0x6a, 0xed, 0x7f}, tools_cupti, "TOOLS_CUPTI"},
    {{0x69, 0xa2, 0x8e, 0x9f, 0x24, 0x49, 0x8b, 0x47, 0xb0, 0x30, 0xc5, 0xda, 0x33, 0x0e, 0xa4, 0xe9}, torch_69a28e9f, "69a28e9f"},
};

VGPU_EXPORT CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
    if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++)
        if (!memcmp(tables[i].id, pExportTableId->bytes, 16)) {
            *ppExportTable = tables[i].table;
            vgpu_cuda_log(3, "cuGetExportTable: %s", tables[i].name);
            return CUDA_SUCCESS;
        }
    *ppExportTable = NULL;
    const unsigned char *id = (const unsigned char *)pExportTableId->bytes;
    vgpu_cuda_log(2, "cuGetExportTable(%02x%02x%02x%02x-%02x%02x-%02x%02x-...) refused: not served", id[0], id[1],
                  id[2], id[3], id[4], id[5], id[6], id[7]);
    return CUDA_ERROR_INVALID_VALUE;
}
