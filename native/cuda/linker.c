/* The driver's linker (cuLinkCreate, cuLinkAddData, cuLinkAddFile, cuLinkComplete, cuLinkDestroy).
 *
 * A link state gathers its inputs (PTX, cubins, relocatable objects, fat binaries, libraries of
 * them) as entries of one fat binary, each entry's header lengthened by a link tag {u32 "VGLK",
 * u16 input number, u16 target architecture}.  cuLinkComplete hands that fat binary out as the
 * linked image, after vgpud has read it back as one program for the target (every input's code
 * for the target, every reference between inputs resolved: vgpu.images.model.CodeImage), so a
 * link that would fail fails here, with the reason in the error log.  cuModuleLoadData and
 * cuLibraryLoadData take the image like any other.
 *
 * Log buffers, their sizes and the wall time are written back into the option values array given
 * to cuLinkCreate, which the caller keeps for the life of the state (as cuda.h requires). */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_shim.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define WRAPPER_MAGIC 0x466243B1u
#define ENTRY_HEADER 64u /* the fat binary entry header nvcc writes (vgpu.images.fatbin.ENTRY) */
#define KIND_PTX 1u
#define KIND_CUBIN 2u
#define EM_CUDA 190
#define EM_X86_64 62
#define STATE_MAGIC 0x4b4e4c56u /* "VLNK" */
#define LIBRARY_MEMBER 0x8000u /* in a tag's input number: a library's member, linked only if it fits */

const char *vgpu_cuda_load_error(void);

typedef struct link_state {
    uint32_t magic;
    struct link_state *next;
    void **values;                        /* the caller's option values (outputs go here) */
    int info_slot, error_slot, wall_slot; /* their indices, -1 when not asked for */
    char *info, *error;                   /* the caller's log buffers */
    size_t info_cap, error_cap, info_len, error_len;
    int verbose;
    unsigned target; /* the architecture linked for, major * 10 + minor */
    unsigned inputs;
    unsigned member; /* LIBRARY_MEMBER while a library's members are added */
    uint8_t *entries; /* the fat binary's body so far */
    size_t size, cap;
    uint8_t *image; /* cuLinkComplete's output, owned by the state */
    double seconds;
} link_state;

static link_state *live;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

static link_state *state_of(CUlinkState handle) {
    pthread_mutex_lock(&live_lock);
    link_state *s = live;
    while (s && s != (link_state *)handle) s = s->next;
    pthread_mutex_unlock(&live_lock);
    return s;
}

/* ---- the logs ---- */

static void append(char *buffer, size_t cap, size_t *len, const char *text) {
    if (!buffer || !cap) return;
    size_t room = cap - 1 - (*len < cap - 1 ? *len : cap - 1), n = strlen(text);
    if (n > room) n = room;
    memcpy(buffer + *len, text, n);
    *len += n;
    buffer[*len] = 0;
}

static void logf_(link_state *s, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(link_state *s, int error, const char *fmt, ...) {
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (error) append(s->error, s->error_cap, &s->error_len, line);
    else append(s->info, s->info_cap, &s->info_len, line);
}

/* The outputs the caller asked for: bytes of each log filled (with its NUL), and the wall time. */
static void write_back(link_state *s) {
    if (s->info_slot >= 0) s->values[s->info_slot] = (void *)(uintptr_t)(s->info_cap ? s->info_len + 1 : 0);
    if (s->error_slot >= 0) s->values[s->error_slot] = (void *)(uintptr_t)(s->error_cap ? s->error_len + 1 : 0);
    if (s->wall_slot >= 0) {
        float ms = (float)(s->seconds * 1000.0);
        uintptr_t bits = 0;
        memcpy(&bits, &ms, sizeof ms);
        s->values[s->wall_slot] = (void *)bits;
    }
}

/* ---- entries ---- */

static int reserve(link_state *s, size_t more) {
    if (s->size + more <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 1 << 16;
    while (cap < s->size + more) cap *= 2;
    uint8_t *bigger = realloc(s->entries, cap);
    if (!bigger) return -1;
    s->entries = bigger;
    s->cap = cap;
    return 0;
}

/* One entry: a header (copied from `header` of `header_size` bytes, or made for kind and arch),
 * the link tag, and the payload padded to 8 bytes. */
static CUresult add_entry(link_state *s, const uint8_t *header, uint32_t header_size, unsigned kind, unsigned arch,
                          const void *payload, uint64_t payload_size) {
    uint64_t padded = (payload_size + 7) & ~7ull;
    uint32_t tagged = (header ? header_size : ENTRY_HEADER) + 8;
    if (reserve(s, tagged + padded) < 0) return CUDA_ERROR_OUT_OF_MEMORY;
    uint8_t *e = s->entries + s->size;
    memset(e, 0, tagged + padded);
    if (header) {
        memcpy(e, header, header_size);
    } else {
        uint16_t kind16 = kind, version = 0x101;
        uint32_t arch32 = arch;
        memcpy(e, &kind16, 2);
        memcpy(e + 2, &version, 2);
        memcpy(e + 28, &arch32, 4);
    }
    memcpy(e + 4, &tagged, 4);
    memcpy(e + 8, &padded, 8);
    const uint16_t input = (uint16_t)(s->inputs | s->member), target = (uint16_t)s->target;
    memcpy(e + tagged - 8, "VGLK", 4);
    memcpy(e + tagged - 4, &input, 2);
    memcpy(e + tagged - 2, &target, 2);
    memcpy(e + tagged, payload, payload_size);
    s->size += tagged + padded;
    return CUDA_SUCCESS;
}

/* The entries of a fat binary, tagged; bytes it takes, 0 when it is not one. */
static size_t add_fatbin(link_state *s, const uint8_t *p, size_t avail, CUresult *rc) {
    uint32_t magic;
    uint16_t header_size;
    uint64_t body;
    if (avail < 16) return 0;
    memcpy(&magic, p, 4);
    memcpy(&header_size, p + 6, 2);
    memcpy(&body, p + 8, 8);
    if (magic != FATBIN_MAGIC || header_size < 16 || header_size + body > avail) return 0;
    for (uint64_t at = header_size; at + ENTRY_HEADER <= header_size + body;) {
        uint32_t entry_header;
        uint64_t payload;
        memcpy(&entry_header, p + at + 4, 4);
        memcpy(&payload, p + at + 8, 8);
        if (entry_header < ENTRY_HEADER || at + entry_header + payload > header_size + body) break;
        *rc = add_entry(s, p + at, entry_header, 0, 0, p + at + entry_header, payload);
        if (*rc != CUDA_SUCCESS) return 0;
        at += entry_header + payload;
    }
    return header_size + body;
}

/* An ELF cubin's architecture (bits 8-15 of e_flags from ABI version 8, bits 0-7 before). */
static unsigned cubin_arch(const uint8_t *p) {
    uint32_t flags;
    memcpy(&flags, p + 48, 4);
    return p[8] >= 8 ? (flags >> 8) & 0xff : flags & 0xff;
}

static int elf_machine(const uint8_t *p, size_t size) {
    if (size < 64 || memcmp(p, "\177ELF", 4) || p[4] != 2) return -1;
    uint16_t machine;
    memcpy(&machine, p + 18, 2);
    return machine;
}

/* A host object's embedded fat binaries (its __nv_relfatbin or .nv_fatbin section):
 * how many entries were added, or -1. */
static int add_host_object(link_state *s, const uint8_t *p, size_t size, CUresult *rc) {
    uint64_t shoff;
    uint16_t shentsize, shnum, shstrndx;
    memcpy(&shoff, p + 40, 8);
    memcpy(&shentsize, p + 58, 2);
    memcpy(&shnum, p + 60, 2);
    memcpy(&shstrndx, p + 62, 2);
    if (shentsize < 64 || shstrndx >= shnum || shoff + (uint64_t)shentsize * shnum > size) return -1;
    const uint8_t *strtab_header = p + shoff + (uint64_t)shentsize * shstrndx;
    uint64_t strtab_offset, strtab_size;
    memcpy(&strtab_offset, strtab_header + 24, 8);
    memcpy(&strtab_size, strtab_header + 32, 8);
    if (strtab_offset + strtab_size > size) return -1;
    int found = 0;
    for (unsigned i = 0; i < shnum; i++) {
        const uint8_t *sh = p + shoff + (uint64_t)shentsize * i;
        uint32_t name;
        uint64_t offset, length;
        memcpy(&name, sh, 4);
        memcpy(&offset, sh + 24, 8);
        memcpy(&length, sh + 32, 8);
        if (name >= strtab_size || offset + length > size) continue;
        const char *section = (const char *)p + strtab_offset + name;
        size_t room = strtab_size - name;
        /* relocatable device code (nvcc -dc) in __nv_relfatbin, whole programs in .nv_fatbin */
        if (strncmp(section, "__nv_relfatbin", room) && strncmp(section, ".nv_fatbin", room)) continue;
        for (uint64_t at = 0; at + 16 <= length;) {
            size_t used = add_fatbin(s, p + offset + at, length - at, rc);
            if (!used) break;
            found++;
            at += (used + 7) & ~(size_t)7;
        }
    }
    return found;
}

/* An archive (ar) of device code: its cubins, fat binaries and host objects holding them. */
static CUresult add_library(link_state *s, const uint8_t *p, size_t size) {
    CUresult rc = CUDA_SUCCESS;
    s->member = LIBRARY_MEMBER; /* each member its own input: the linker takes the code of each that fits */
    for (size_t at = 8; at + 60 <= size && rc == CUDA_SUCCESS;) {
        char field[11] = {0};
        memcpy(field, p + at + 48, 10);
        size_t length = strtoull(field, NULL, 10);
        const uint8_t *member = p + at + 60;
        if (at + 60 + length > size || memcmp(p + at + 58, "`\n", 2)) {
            rc = CUDA_ERROR_INVALID_IMAGE;
            break;
        }
        int machine = elf_machine(member, length);
        if (machine == EM_CUDA) rc = add_entry(s, NULL, 0, KIND_CUBIN, cubin_arch(member), member, length);
        else if (machine == EM_X86_64) add_host_object(s, member, length, &rc);
        else add_fatbin(s, member, length, &rc);
        at += 60 + length + (length & 1);
        s->inputs++;
    }
    s->member = 0;
    return rc;
}

/* The architecture a PTX text targets (.target sm_90, compute_90, sm_90a), 0 when it names none. */
static unsigned ptx_target(const char *text) {
    const char *t = strstr(text, ".target");
    if (!t) return 0;
    t += 7;
    while (*t == ' ' || *t == '\t') t++;
    if (!strncmp(t, "sm_", 3)) t += 3;
    else if (!strncmp(t, "compute_", 8)) t += 8;
    else return 0;
    return (unsigned)strtoul(t, NULL, 10);
}

static const char *input_name(const char *name) { return name && *name ? name : "<unnamed>"; }

static CUresult add_input(link_state *s, CUjitInputType type, const uint8_t *data, size_t size, const char *name) {
    CUresult rc = CUDA_SUCCESS;
    const char *kind = "";
    switch (type) {
    case CU_JIT_INPUT_PTX: {
        kind = "PTX";
        size_t length = strnlen((const char *)data, size);
        char *text = malloc(length + 1);
        if (!text) return CUDA_ERROR_OUT_OF_MEMORY;
        memcpy(text, data, length);
        text[length] = 0;
        unsigned arch = strstr(text, ".version") ? ptx_target(text) : 0;
        if (!arch) {
            logf_(s, 1, "ptxas error   : '%s' is not PTX (no .version and .target)\n", input_name(name));
            rc = CUDA_ERROR_INVALID_PTX;
        } else if (arch > s->target) {
            logf_(s, 1, "ptxas error   : '%s' targets sm_%u, newer than the link target sm_%u\n", input_name(name),
                  arch, s->target);
            rc = CUDA_ERROR_INVALID_PTX;
        } else {
            rc = add_entry(s, NULL, 0, KIND_PTX, arch, text, length + 1);
        }
        free(text);
        break;
    }
    case CU_JIT_INPUT_CUBIN:
    case CU_JIT_INPUT_OBJECT:
        kind = type == CU_JIT_INPUT_CUBIN ? "cubin" : "object";
        if (elf_machine(data, size) != EM_CUDA) {
            logf_(s, 1, "error   : '%s' is not a CUDA ELF image\n", input_name(name));
            return CUDA_ERROR_INVALID_IMAGE;
        }
        rc = add_entry(s, NULL, 0, KIND_CUBIN, cubin_arch(data), data, size);
        break;
    case CU_JIT_INPUT_FATBINARY: {
        kind = "fat binary";
        uint32_t magic = 0;
        if (size >= 4) memcpy(&magic, data, 4);
        if (magic == WRAPPER_MAGIC && size >= 16) { /* {magic, version, const void *fatbin, ...} */
            memcpy(&data, data + 8, sizeof data);
            size = SIZE_MAX;
        }
        if (!add_fatbin(s, data, size, &rc) && rc == CUDA_SUCCESS) {
            logf_(s, 1, "error   : '%s' is not a fat binary\n", input_name(name));
            return CUDA_ERROR_INVALID_IMAGE;
        }
        break;
    }
    case CU_JIT_INPUT_LIBRARY:
        kind = "library";
        if (size < 8 || memcmp(data, "!<arch>\n", 8)) {
            logf_(s, 1, "error   : '%s' is not a library (ar archive)\n", input_name(name));
            return CUDA_ERROR_INVALID_IMAGE;
        }
        rc = add_library(s, data, size);
        break;
    default: /* LTO-IR (CU_JIT_INPUT_NVVM) only from toolkits before CUDA 12.0, which vgpu does not read */
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (rc == CUDA_SUCCESS) {
        if (s->verbose) logf_(s, 0, "info    : added %s '%s' (input %u)\n", kind, input_name(name), s->inputs);
        s->inputs++;
    }
    return rc;
}

/* ---- the API ---- */

static CUresult create(unsigned count, CUjit_option *options, void **values, CUlinkState *out) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!out || (count && (!options || !values))) return CUDA_ERROR_INVALID_VALUE;
    CUdevice dev;
    if (!vgpu_cuda_context_id() || cuCtxGetDevice(&dev) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    int major = 0, minor = 0;
    CUresult rc = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    if (rc == CUDA_SUCCESS) rc = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    if (rc != CUDA_SUCCESS) return rc;
    link_state *s = calloc(1, sizeof *s);
    if (!s) return CUDA_ERROR_OUT_OF_MEMORY;
    *s = (link_state){.magic = STATE_MAGIC, .values = values, .info_slot = -1, .error_slot = -1, .wall_slot = -1,
                      .target = (unsigned)(major * 10 + minor)};
    for (unsigned i = 0; i < count; i++) {
        uintptr_t v = (uintptr_t)values[i];
        switch (options[i]) {
        case CU_JIT_INFO_LOG_BUFFER: s->info = values[i]; break;
        case CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: s->info_cap = (unsigned)v; s->info_slot = (int)i; break;
        case CU_JIT_ERROR_LOG_BUFFER: s->error = values[i]; break;
        case CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: s->error_cap = (unsigned)v; s->error_slot = (int)i; break;
        case CU_JIT_WALL_TIME: s->wall_slot = (int)i; break;
        case CU_JIT_LOG_VERBOSE: s->verbose = v != 0; break;
        case CU_JIT_TARGET: s->target = (unsigned)v; break; /* CUjit_target: major * 10 + minor */
        default:
            if (options[i] >= CU_JIT_NUM_OPTIONS) {
                free(s);
                return CUDA_ERROR_INVALID_VALUE;
            }
        }
    }
    if (!s->info) s->info_cap = 0;
    if (!s->error) s->error_cap = 0;
    if (s->info_cap) s->info[0] = 0;
    if (s->error_cap) s->error[0] = 0;
    pthread_mutex_lock(&live_lock);
    s->next = live;
    live = s;
    pthread_mutex_unlock(&live_lock);
    *out = (CUlinkState)s;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLinkCreate_v2(unsigned int numOptions, CUjit_option *options, void **optionValues,
                                     CUlinkState *stateOut) {
    return create(numOptions, options, optionValues, stateOut);
}

VGPU_EXPORT CUresult cuLinkCreate(unsigned int numOptions, CUjit_option *options, void **optionValues,
                                  CUlinkState *stateOut) {
    return create(numOptions, options, optionValues, stateOut);
}

/* Options an input may carry: compiler options only (cuda.h). */
static CUresult input_options(unsigned count, const CUjit_option *options, void **values) {
    if (count && (!options || !values)) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < count; i++)
        switch (options[i]) {
        case CU_JIT_WALL_TIME: case CU_JIT_INFO_LOG_BUFFER: case CU_JIT_ERROR_LOG_BUFFER:
        case CU_JIT_TARGET_FROM_CUCONTEXT: case CU_JIT_TARGET: return CUDA_ERROR_INVALID_VALUE;
        default: if (options[i] >= CU_JIT_NUM_OPTIONS) return CUDA_ERROR_INVALID_VALUE;
        }
    return CUDA_SUCCESS;
}

static CUresult add_data(CUlinkState state, CUjitInputType type, void *data, size_t size, const char *name,
                         unsigned count, CUjit_option *options, void **values) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    link_state *s = state_of(state);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (!data || !size || (unsigned)type >= CU_JIT_NUM_INPUT_TYPES) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = input_options(count, options, values);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (rc == CUDA_SUCCESS) rc = add_input(s, type, data, size, name);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s->seconds += (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    write_back(s);
    return rc;
}

VGPU_EXPORT CUresult cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void *data, size_t size,
                                      const char *name, unsigned int numOptions, CUjit_option *options,
                                      void **optionValues) {
    return add_data(state, type, data, size, name, numOptions, options, optionValues);
}

VGPU_EXPORT CUresult cuLinkAddData(CUlinkState state, CUjitInputType type, void *data, size_t size, const char *name,
                                   unsigned int numOptions, CUjit_option *options, void **optionValues) {
    return add_data(state, type, data, size, name, numOptions, options, optionValues);
}

static CUresult add_file(CUlinkState state, CUjitInputType type, const char *path, unsigned count,
                         CUjit_option *options, void **values) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!state_of(state)) return CUDA_ERROR_INVALID_HANDLE;
    if (!path) return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(path, "rb");
    if (!f) return CUDA_ERROR_FILE_NOT_FOUND;
    size_t cap = 1 << 16, len = 0, n;
    uint8_t *buf = malloc(cap + 1);
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *bigger = realloc(buf, cap * 2 + 1);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return CUDA_ERROR_OUT_OF_MEMORY;
    buf[len] = 0; /* PTX files need their NUL */
    const char *base = strrchr(path, '/');
    CUresult rc = len ? add_data(state, type, buf, len + (type == CU_JIT_INPUT_PTX), base ? base + 1 : path, count,
                                 options, values)
                      : CUDA_ERROR_INVALID_IMAGE;
    free(buf);
    return rc;
}

VGPU_EXPORT CUresult cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char *path,
                                      unsigned int numOptions, CUjit_option *options, void **optionValues) {
    return add_file(state, type, path, numOptions, options, optionValues);
}

VGPU_EXPORT CUresult cuLinkAddFile(CUlinkState state, CUjitInputType type, const char *path, unsigned int numOptions,
                                   CUjit_option *options, void **optionValues) {
    return add_file(state, type, path, numOptions, options, optionValues);
}

VGPU_EXPORT CUresult cuLinkComplete(CUlinkState state, void **cubinOut, size_t *sizeOut) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    link_state *s = state_of(state);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (!cubinOut) return CUDA_ERROR_INVALID_VALUE;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CUresult rc = CUDA_SUCCESS;
    if (!s->inputs) {
        logf_(s, 1, "error   : no input to link\n");
        rc = CUDA_ERROR_INVALID_IMAGE;
    }
    uint8_t *image = rc == CUDA_SUCCESS ? malloc(16 + s->size) : NULL;
    if (rc == CUDA_SUCCESS && !image) rc = CUDA_ERROR_OUT_OF_MEMORY;
    CUmodule module = NULL;
    if (rc == CUDA_SUCCESS) {
        uint32_t magic = FATBIN_MAGIC;
        uint16_t version = 1, header = 16;
        uint64_t body = s->size;
        memcpy(image, &magic, 4);
        memcpy(image + 4, &version, 2);
        memcpy(image + 6, &header, 2);
        memcpy(image + 8, &body, 8);
        memcpy(image + 16, s->entries, s->size);
        /* vgpud reads the program back: what would not load did not link */
        rc = vgpu_cuda_module_from_fatbin(&module, image);
        if (rc != CUDA_SUCCESS) {
            const char *why = vgpu_cuda_load_error();
            logf_(s, 1, "nvlink error   : %s\n", *why ? why : vgpu_cuda_error_text(rc));
        }
    }
    if (module) {
        unsigned count = 0;
        cuModuleGetFunctionCount(&count, module);
        if (s->verbose) logf_(s, 0, "info    : linked %u inputs for sm_%u: %u kernels\n", s->inputs, s->target, count);
        cuModuleUnload(module);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s->seconds += (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    write_back(s);
    if (rc != CUDA_SUCCESS) {
        free(image);
        return rc;
    }
    free(s->image);
    s->image = image;
    *cubinOut = image;
    if (sizeOut) *sizeOut = 16 + s->size;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuLinkDestroy(CUlinkState state) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_lock(&live_lock);
    link_state **at = &live;
    while (*at && *at != (link_state *)state) at = &(*at)->next;
    link_state *s = *at;
    if (s) *at = s->next;
    pthread_mutex_unlock(&live_lock);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    free(s->entries);
    free(s->image);
    free(s);
    return CUDA_SUCCESS;
}
