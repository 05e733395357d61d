/* Client side of the vgpu wire protocol: one connection per thread and process,
 * a handshake per connection, bounded waits, no hang when vgpud dies. */
#pragma once
#include <stddef.h>
#include <stdint.h>

enum vgpu_status {
    VGPU_OK = 0,
    VGPU_NO_DAEMON = -1,     /* nothing listening: behave as a host without a driver */
    VGPU_LOST = -2,          /* the daemon went away or stopped answering */
    VGPU_MISMATCH = -3,      /* protocol version or manifest digest differs */
    VGPU_NO_MEMORY = -4,
};

typedef struct vgpu_api {
    const char *name;          /* "nvml" */
    const char *digest;        /* manifest digest, 64 hex digits */
    const char *prefix;        /* log prefix, e.g. "vgpu-nvml" */
    unsigned int op_base;
    unsigned int op_count;
    /* filled by the first handshake */
    unsigned char *implemented; /* bitmap of ops vgpud serves */
    int generation;            /* bumped by vgpu_open; older connections reconnect */
    int lost;                  /* set when a connection failed mid-session */
    const uint8_t *published;  /* vgpud's published answers, mapped read-only, or NULL */
    unsigned char *logged;     /* ops already logged as not implemented */
    /* For APIs with per-thread state (CUDA's current context): a u64 sent before every
     * request's parameters; NULL when the API has none. */
    uint64_t (*call_context)(void);
    struct vgpu_memo *memo;    /* answers to immutable calls, kept by the marshaller */
    int direct;                /* vgpud reads and writes this process's memory itself */
    int client_copies;         /* this process may map device memory and copy through it */
} vgpu_api;

/* Log levels from VGPU_LOG: 0 off, 1 warn (default), 2 info, 3 debug. */
int vgpu_log_level(void);
void vgpu_log(int level, const char *prefix, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Under `vgpu trace` (VGPU_TRACE_DIR set): append one of this process's first calls and its
 * result to the process's trace file; `detail` is a JSON object's members or "". */
void vgpu_trace_call(const char *prefix, const char *name, int result, const char *detail);
/* Whether vgpu_trace_call would still record a call (under `vgpu trace`, below its quota). */
int vgpu_tracing(void);

/* Connect this thread and handshake; resets the lost flag.  Returns a vgpu_status. */
int vgpu_open(vgpu_api *api);
/* Drop every connection of this API (the next vgpu_open starts afresh). */
void vgpu_close(vgpu_api *api);
/* Send one request and wait for its reply (at most timeout_ms beyond extra_ms).
 * The reply stays valid until this thread's next call. */
int vgpu_call(vgpu_api *api, unsigned int op, const void *req, size_t req_len,
              const uint8_t **reply, size_t *reply_len, int extra_ms);
/* Part of a request, where it lies: a large array is sent from the caller's memory, not
 * copied into the request first. */
typedef struct vgpu_span {
    const void *data;
    size_t len;
} vgpu_span;
#define VGPU_MAX_SPANS 4
/* Where a reply's large output array goes straight from the socket: the reply's bytes from
 * offset `at` on, when the reply is exactly at + len bytes long (else the reply is read as a
 * whole and `landed` stays 0). */
typedef struct vgpu_landing {
    void *data;
    size_t at, len;
    int landed;
} vgpu_landing;
/* vgpu_call for a request in up to VGPU_MAX_SPANS spans, sent as one frame; with a landing
 * (or NULL), *reply_len then counts the bytes before it. */
int vgpu_callv(vgpu_api *api, unsigned int op, const vgpu_span *spans, int count,
               const uint8_t **reply, size_t *reply_len, int extra_ms, vgpu_landing *landing);
/* Look a key up among vgpud's published answers; copies a fresh answer into buf
 * (VGPU_PUBLISHED_ANSWER_MAX bytes) and returns its length, or -1. */
int vgpu_published_answer(const vgpu_api *api, const uint8_t *key, size_t key_len, uint8_t *buf);
/* Share [address, address + size) with vgpud through fd, a file that maps it; size 0 withdraws
 * it.  VGPU_OK when vgpud mapped it: transfers in that range then skip the socket. */
int vgpu_share(vgpu_api *api, const void *address, size_t size, int fd);
/* Whether [address, address + size) lies in one shared window. */
int vgpu_shared(const void *address, size_t size);
/* Whether vgpud reads or writes a buffer in place (a shared window, or direct access to a
 * large enough ordinary buffer) instead of receiving or sending its bytes. */
int vgpu_in_place(const vgpu_api *api, const void *address, size_t size);
/* Mark the array at `address` (`size` bytes) in this thread's next requests as copied by the
 * process itself, through its mapping of the allocation with `serial` (0 ends it): the request
 * names the serial instead of carrying the bytes. */
void vgpu_set_client_copy(const void *address, size_t size, uint64_t serial);
/* The serial an array of the thread's request is marked with (vgpu_set_client_copy), or 0. */
uint64_t vgpu_client_copy_serial(const void *address, size_t size);
/* vgpud's process id as this process sees it (from this thread's connection), or 0. */
int vgpu_daemon_pid(vgpu_api *api);
/* Queue one request without waiting for an answer (vgpud keeps the first error for the next
 * synchronising call).  Posts wait in the thread's connection and travel together: before
 * any call of any thread, when a batch fills, at thread and process exit; so they stay
 * ordered with this thread's other requests. */
int vgpu_post(vgpu_api *api, unsigned int op, const void *req, size_t req_len);
/* vgpu_post for a request in spans; one of 60 KiB or more is sent before it returns (after
 * the thread's earlier posts), so its spans may change once it has. */
int vgpu_postv(vgpu_api *api, unsigned int op, const vgpu_span *spans, int count);
/* As vgpu_post, for ops whose payload is a sequence of self-delimiting records: a record
 * posted right after another of the same op joins its frame (one frame, many launches). */
int vgpu_post_record(vgpu_api *api, unsigned int op, const void *req, size_t req_len);
/* Send every thread's waiting posts now. */
void vgpu_flush_posts(void);
/* Whether vgpud implements op (after a successful vgpu_open). */
int vgpu_implemented(const vgpu_api *api, unsigned int op);
/* The socket path clients use: $VGPU_SOCKET, the system socket if present, else /tmp/vgpu-UID/vgpud.sock. */
const char *vgpu_socket_path(char *buf, size_t len);
