/* Host-device copies this process makes itself: the synchronous ones (cuMemcpyHtoD, cuMemcpyDtoH),
 * and the asynchronous ones with pageable host memory, which are done with the host buffer when
 * they return as well (the driver stages them).
 *
 * vgpud keeps each allocation's bytes in a memfd. Where it says so at the handshake (a local
 * simulator), the library maps the memfd of an allocation it copies to or from (VGPU_OP_MAP_MEMORY
 * names it; the library opens /proc/VGPUD/fd/N, and checks the inode), keeps a few such mappings,
 * and a copy becomes one memcpy here: the call still goes to vgpud, which orders and times it
 * like any copy and answers once the work before it is done, naming the allocation's serial
 * instead of carrying the bytes; the memcpy follows the answer. When vgpud refuses the copy
 * (the allocation is not the one mapped, or the copy must wait behind other work), or anything
 * here fails, the data travels as before. Where the memfd cannot be opened (another user's
 * vgpud) the library stops trying. src/vgpu/server/cuda_client_copies.py is the other side. */
#define _GNU_SOURCE
#include <cuda.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_shim.h"
#include "transport.h"
#include "vgpu_wire.h"

/* mappings kept: an application copies to and from a handful of buffers at a time */
#define MAPPINGS 32

typedef struct mapping {
    uint64_t serial; /* 0: free */
    CUdeviceptr start;
    size_t size;
    char *bytes;
    unsigned long used; /* for least-recently-used replacement */
} mapping;

static mapping mappings[MAPPINGS];
static unsigned long use_clock;
static int unavailable; /* the memfds cannot be opened from here: stop asking */
/* memcpy holds it for reading; adding and dropping mappings, for writing */
static pthread_rwlock_t mappings_lock = PTHREAD_RWLOCK_INITIALIZER;

/* The mapping holding [device, device + bytes) (lock held), or NULL. */
static mapping *mapping_for(CUdeviceptr device, size_t bytes) {
    for (int i = 0; i < MAPPINGS; i++) {
        mapping *m = &mappings[i];
        if (m->serial && device >= m->start && device - m->start <= m->size && bytes <= m->size - (device - m->start))
            return m;
    }
    return NULL;
}

static void drop(uint64_t serial) {
    pthread_rwlock_wrlock(&mappings_lock);
    for (int i = 0; i < MAPPINGS; i++)
        if (mappings[i].serial == serial) {
            munmap(mappings[i].bytes, mappings[i].size);
            mappings[i].serial = 0;
        }
    pthread_rwlock_unlock(&mappings_lock);
}

/* Ask vgpud for the memfd holding `device` and map it here; 0 when a mapping now holds it. */
static int map_allocation(CUdeviceptr device) {
    vgpu_api *api = vgpu_cuda_api();
    uint64_t address = device;
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(api, VGPU_OP_MAP_MEMORY, &address, sizeof address, &reply, &reply_len, 0) != VGPU_OK ||
        reply_len != VGPU_MAP_MEMORY_REPLY_SIZE)
        return -1;
    int32_t status, fd_number;
    uint64_t inode, start, size, serial;
    memcpy(&status, reply, 4);
    memcpy(&fd_number, reply + 4, 4);
    memcpy(&inode, reply + 8, 8);
    memcpy(&start, reply + 16, 8);
    memcpy(&size, reply + 24, 8);
    memcpy(&serial, reply + 32, 8);
    if (status != 0) {
        if (status == EOPNOTSUPP) __atomic_store_n(&unavailable, 1, __ATOMIC_RELAXED);
        return -1;
    }
    int daemon = vgpu_daemon_pid(api);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", daemon, fd_number);
    int fd = daemon > 0 ? open(path, O_RDWR | O_CLOEXEC) : -1;
    if (fd < 0) {
        vgpu_cuda_log(2, "copies go through vgpud: %s cannot be opened (%s)", path, strerror(errno));
        __atomic_store_n(&unavailable, 1, __ATOMIC_RELAXED);
        return -1;
    }
    struct stat st;
    void *bytes = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_ino == inode)
        bytes = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (bytes == MAP_FAILED) return -1;
    pthread_rwlock_wrlock(&mappings_lock);
    mapping *slot = NULL;
    for (int i = 0; i < MAPPINGS; i++) {
        mapping *m = &mappings[i];
        if (m->serial && m->start < start + size && start < m->start + m->size) { /* freed since: stale */
            munmap(m->bytes, m->size);
            m->serial = 0;
        }
        if (!slot || !m->serial || (slot->serial && m->used < slot->used)) slot = m;
    }
    if (slot->serial) munmap(slot->bytes, slot->size);
    *slot = (mapping){serial, start, size, bytes, ++use_clock};
    pthread_rwlock_unlock(&mappings_lock);
    return 0;
}

int vgpu_cuda_client_copy(const vgpu_function *fn, void *const *args, CUdeviceptr device, void *host, size_t bytes,
                          int to_device, int pageable_only) {
    vgpu_api *api = vgpu_cuda_api();
    if (bytes < VGPU_DIRECT_MIN || !host || !api->client_copies || __atomic_load_n(&unavailable, __ATOMIC_RELAXED) ||
        !vgpu_cuda_initialized() || (pageable_only && vgpu_shared(host, bytes)))
        return -1;
    uint64_t serial = 0;
    for (int attempt = 0; attempt < 2 && !serial; attempt++) {
        pthread_rwlock_rdlock(&mappings_lock);
        mapping *m = mapping_for(device, bytes);
        if (m) serial = m->serial;
        pthread_rwlock_unlock(&mappings_lock);
        if (!serial && (attempt || map_allocation(device) != 0)) return -1;
    }
    vgpu_set_client_copy(host, bytes, serial);
    int rc = vgpu_cuda_dispatch(fn, args);
    vgpu_set_client_copy(NULL, 0, 0);
    if (rc == VGPU_CLIENT_COPY_REFUSED) {
        drop(serial);
        return -1;
    }
    if (rc != CUDA_SUCCESS) return rc;
    pthread_rwlock_rdlock(&mappings_lock);
    mapping *m = mapping_for(device, bytes);
    int copied = m && m->serial == serial;
    if (copied) {
        char *at = m->bytes + (device - m->start);
        memcpy(to_device ? at : host, to_device ? host : at, bytes);
        __atomic_store_n(&m->used, __atomic_add_fetch(&use_clock, 1, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&mappings_lock);
    return copied ? CUDA_SUCCESS : -1; /* dropped meanwhile by another thread: the data travels */
}
