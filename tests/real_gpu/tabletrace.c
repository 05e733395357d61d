/* LD_PRELOAD tracer for the real driver: wraps every private export table a process gets
 * (through dlsym -> cuGetProcAddress -> cuGetExportTable) and logs each slot's calls. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t (*fn6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
#define TABLES 12
#define SLOTS 128
static void *orig[TABLES][SLOTS];
static unsigned char ids[TABLES][16];
static void *shadow[TABLES][SLOTS + 1];
static const void *real_table[TABLES];
static int table_count;
static unsigned long calls[TABLES][SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* What a stack or heap pointer argument points at after the call (outputs), or 0. */
static uint64_t after(uint64_t p) {
    return p >= 0x10000 && p < 0x800000000000ull && !(p & 7) ? *(const uint64_t *)(uintptr_t)p : 0;
}

static void note(int t, int s, uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f, uint64_t r) {
    unsigned long n = __atomic_fetch_add(&calls[t][s], 1, __ATOMIC_SEQ_CST);
    if (n < 6)
        fprintf(stderr, "TRACE %02x%02x%02x%02x[%d] #%lu (%#lx, %#lx, %#lx, %#lx, %#lx, %#lx) -> %#lx; *a=%#lx *b=%#lx *c=%#lx\n",
                ids[t][0], ids[t][1], ids[t][2], ids[t][3], s, n, a, b, c, d, e, f, r, after(a), after(b), after(c));
}

#define T(t, s) static uint64_t tr_##t##_##s(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f) { \
    uint64_t r = ((fn6)orig[t][s])(a, b, c, d, e, f); note(t, s, a, b, c, d, e, f, r); return r; }
#define T8(t, s) T(t, s##0) T(t, s##1) T(t, s##2) T(t, s##3) T(t, s##4) T(t, s##5) T(t, s##6) T(t, s##7)
#define T64(t, s) T8(t, s##0) T8(t, s##1) T8(t, s##2) T8(t, s##3) T8(t, s##4) T8(t, s##5) T8(t, s##6) T8(t, s##7)
#define TT(t) T64(t, 0) T64(t, 01)
/* slot numbers are octal-spelled here: s##0 ... gives 00..177 octal, i.e. 0..127 */
TT(0) TT(1) TT(2) TT(3) TT(4) TT(5) TT(6) TT(7) TT(8) TT(9) TT(10) TT(11)
#define P(t, s) (void *)tr_##t##_##s,
#define P8(t, s) P(t, s##0) P(t, s##1) P(t, s##2) P(t, s##3) P(t, s##4) P(t, s##5) P(t, s##6) P(t, s##7)
#define P64(t, s) P8(t, s##0) P8(t, s##1) P8(t, s##2) P8(t, s##3) P8(t, s##4) P8(t, s##5) P8(t, s##6) P8(t, s##7)
#define PT(t) {P64(t, 0) P64(t, 01)},
static void *trampolines[TABLES][SLOTS] = {PT(0) PT(1) PT(2) PT(3) PT(4) PT(5) PT(6) PT(7) PT(8) PT(9) PT(10) PT(11)};

typedef int (*get_export_table_t)(const void **, const unsigned char *);
static get_export_table_t real_get_export_table;

static int traced_get_export_table(const void **table, const unsigned char *id) {
    int rc = real_get_export_table(table, id);
    fprintf(stderr, "TRACE table %02x%02x%02x%02x-... rc %d table %p\n", id[0], id[1], id[2], id[3], rc, rc ? NULL : *table);
    if (rc || !*table) return rc;
    /* CUDART_INTERFACE and INTEGRITY_CHECK take part in the integrity hash: left as they are */
    if ((id[0] == 0x6b && id[1] == 0xd5) || (id[0] == 0xd4 && id[1] == 0x08)) return rc;
    pthread_mutex_lock(&lock);
    for (int t = 0; t < table_count; t++)
        if (!memcmp(ids[t], id, 16)) { *table = shadow[t]; pthread_mutex_unlock(&lock); return rc; }
    if (table_count == TABLES) { pthread_mutex_unlock(&lock); return rc; }
    int t = table_count++;
    memcpy(ids[t], id, 16);
    real_table[t] = *table;
    const void *const *slots = *table;
    uint64_t size = (uint64_t)(uintptr_t)slots[0];
    int sized = size && size % 8 == 0 && size <= 8 * SLOTS;
    int n = sized ? (int)(size / 8) : 4; /* the context-local storage table has no size slot */
    for (int s = 0; s < n && s < SLOTS; s++) {
        if ((sized && s == 0) || !slots[s]) { shadow[t][s] = (void *)slots[s]; continue; }
        orig[t][s] = (void *)slots[s];
        shadow[t][s] = trampolines[t][s];
    }
    fprintf(stderr, "TRACE wrapped %02x%02x%02x%02x: %d slots (size %#lx)\n", id[0], id[1], id[2], id[3], n, size);
    *table = shadow[t];
    pthread_mutex_unlock(&lock);
    return rc;
}

typedef int (*get_proc_t)(const char *, void **, int, uint64_t, int *);
static get_proc_t real_get_proc_v2;
typedef int (*get_proc1_t)(const char *, void **, int, uint64_t);
static get_proc1_t real_get_proc;
static int traced_get_proc(const char *symbol, void **pfn, int version, uint64_t flags);
static int traced_get_proc_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    int rc = real_get_proc_v2(symbol, pfn, version, flags, status);
    if (!rc && pfn && *pfn && !strcmp(symbol, "cuGetProcAddress")) {
        if (version >= 12000) { real_get_proc_v2 = (get_proc_t)*pfn; *pfn = (void *)traced_get_proc_v2; }
        else { real_get_proc = (get_proc1_t)*pfn; *pfn = (void *)traced_get_proc; }
    }
    if (!rc && pfn && *pfn && !strcmp(symbol, "cuGetExportTable")) {
        real_get_export_table = (get_export_table_t)*pfn;
        *pfn = (void *)traced_get_export_table;
    }
    return rc;
}
static int traced_get_proc(const char *symbol, void **pfn, int version, uint64_t flags) {
    int rc = real_get_proc(symbol, pfn, version, flags);
    if (!rc && pfn && *pfn && !strcmp(symbol, "cuGetExportTable")) {
        real_get_export_table = (get_export_table_t)*pfn;
        *pfn = (void *)traced_get_export_table;
    }
    return rc;
}

void *dlsym(void *handle, const char *name) {
    static void *(*real_dlsym)(void *, const char *);
    if (!real_dlsym) {
        real_dlsym = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (!real_dlsym) real_dlsym = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    }
    void *found = real_dlsym(handle, name);
    if (!found) return found;
    if (!strcmp(name, "cuGetProcAddress_v2")) { real_get_proc_v2 = found; return (void *)traced_get_proc_v2; }
    if (!strcmp(name, "cuGetProcAddress")) { real_get_proc = found; return (void *)traced_get_proc; }
    if (!strcmp(name, "cuGetExportTable")) { real_get_export_table = found; return (void *)traced_get_export_table; }
    return found;
}

__attribute__((destructor)) static void summary(void) {
    for (int t = 0; t < table_count; t++)
        for (int s = 0; s < SLOTS; s++)
            if (calls[t][s]) fprintf(stderr, "TRACE count %02x%02x%02x%02x[%d] %lu\n", ids[t][0], ids[t][1], ids[t][2], ids[t][3], s, calls[t][s]);
}
