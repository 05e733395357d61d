/* See transport.h.  Every wait is bounded by VGPU_TIMEOUT_MS (default 3000). */
#define _GNU_SOURCE
#include "transport.h"
#include "vgpu_wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct vgpu_conn {
    int fd;
    pid_t pid;
    int generation;
    uint32_t seq;
    uint8_t *buf;
    size_t cap;
    int timeout_ms;  /* the socket's current SO_RCVTIMEO */
    vgpu_api *api;   /* the API it was opened for */
    /* Frames posted without waiting, sent together (vgpu_post): before the thread's next
     * call, before any thread's call (vgpu_flush_posts), when POST_BATCH bytes wait, at thread
     * and process exit.  send_lock guards them and every write to fd. */
    uint8_t *out;
    size_t out_len, out_cap;
    size_t last_record;      /* offset of the last frame vgpu_post_record may extend, or SIZE_MAX */
    unsigned last_record_op;
    int unsettled;           /* posts were sent since vgpud last answered on it: perhaps not yet carried out */
    pthread_mutex_t send_lock;
    struct vgpu_conn *next;
} vgpu_conn;

/* Posted bytes waiting in all connections, and connections whose sent posts may not have been
 * carried out yet; when both are 0, a call need not look at other threads' connections. */
static size_t pending_total;
static int unsettled_total;
static vgpu_conn *registry;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
#define POST_BATCH (60u << 10)

static pthread_key_t conn_key;
static pthread_once_t conn_key_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t api_lock = PTHREAD_MUTEX_INITIALIZER;

static int flush_locked(vgpu_conn *conn);

/* Posts went out on the connection (send_lock held): until vgpud answers on it, they may be
 * waiting in its socket. */
static void mark_unsettled(vgpu_conn *conn) {
    if (!conn->unsettled) __atomic_add_fetch(&unsettled_total, 1, __ATOMIC_SEQ_CST);
    conn->unsettled = 1;
}

/* vgpud answered on the connection: everything sent on it before has been carried out. */
static void mark_settled(vgpu_conn *conn) {
    if (conn->unsettled) __atomic_sub_fetch(&unsettled_total, 1, __ATOMIC_SEQ_CST);
    conn->unsettled = 0;
}

static void conn_free(void *ptr) {
    vgpu_conn *conn = ptr;
    if (!conn) return;
    pthread_mutex_lock(&registry_lock);
    for (vgpu_conn **at = &registry; *at; at = &(*at)->next)
        if (*at == conn) { *at = conn->next; break; }
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_lock(&conn->send_lock);
    flush_locked(conn); /* a thread's last posts are not lost when it ends */
    mark_settled(conn); /* vgpud carries them out before it sees the connection close */
    pthread_mutex_unlock(&conn->send_lock);
    if (conn->fd >= 0) close(conn->fd);
    pthread_mutex_destroy(&conn->send_lock);
    free(conn->out);
    free(conn->buf);
    free(conn);
}

static void conn_key_make(void) { pthread_key_create(&conn_key, conn_free); }

int vgpu_log_level(void) {
    static int level = -1;
    if (level < 0) {
        const char *env = getenv("VGPU_LOG");
        if (!env || !*env || !strcmp(env, "warn")) level = 1;
        else if (!strcmp(env, "off") || !strcmp(env, "0")) level = 0;
        else if (!strcmp(env, "info") || !strcmp(env, "2")) level = 2;
        else if (!strcmp(env, "debug") || !strcmp(env, "3")) level = 3;
        else level = 1;
    }
    return level;
}

void vgpu_log(int level, const char *prefix, const char *fmt, ...) {
    if (vgpu_log_level() < level) return;
    char line[1024];
    int n = snprintf(line, sizeof line, "%s[%d]: ", prefix, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    if (len + 1 < sizeof line) { line[len++] = '\n'; }
    ssize_t ignored = write(2, line, len);
    (void)ignored;
}

enum { TRACED_CALLS = 64 };
static int trace_fd = -1, trace_state; /* state: 0 not decided, 1 off, 2 on */
static int traced_calls;

static void trace_forked(void) { /* a forked child gets its own file */
    if (trace_fd >= 0) close(trace_fd);
    trace_fd = -1;
    trace_state = traced_calls = 0;
}

static void trace_register_fork(void) { pthread_atfork(NULL, NULL, trace_forked); }

static void trace_open(void) {
    static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&lock);
    if (!trace_state) {
        const char *dir = getenv("VGPU_TRACE_DIR");
        char path[4096];
        if (dir && *dir && snprintf(path, sizeof path, "%s/%d.jsonl", dir, (int)getpid()) < (int)sizeof path)
            trace_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (trace_fd >= 0) pthread_once(&atfork_once, trace_register_fork);
        __atomic_store_n(&trace_state, trace_fd >= 0 ? 2 : 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&lock);
}

static int trace_on(void) {
    if (!__atomic_load_n(&trace_state, __ATOMIC_SEQ_CST)) trace_open();
    return __atomic_load_n(&trace_state, __ATOMIC_SEQ_CST) == 2;
}

int vgpu_tracing(void) {
    return trace_on() && __atomic_load_n(&traced_calls, __ATOMIC_SEQ_CST) < TRACED_CALLS;
}

void vgpu_trace_call(const char *prefix, const char *name, int result, const char *detail) {
    if (!trace_on() || __atomic_fetch_add(&traced_calls, 1, __ATOMIC_SEQ_CST) >= TRACED_CALLS) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[1280];
    int n = snprintf(line, sizeof line, "{\"ev\":\"call\",\"t\":%.6f,\"pid\":%d,\"library\":\"%s\",\"call\":\"%s\","
                     "\"result\":%d%s%s}\n", (double)ts.tv_sec + ts.tv_nsec / 1e9, (int)getpid(), prefix, name,
                     result, *detail ? "," : "", detail);
    if (n > 0 && n < (int)sizeof line) {
        ssize_t ignored = write(trace_fd, line, (size_t)n);
        (void)ignored;
    }
}

static int timeout_ms(void) {
    static int value = -1;
    if (value < 0) {
        const char *env = getenv("VGPU_TIMEOUT_MS");
        value = env && atoi(env) > 0 ? atoi(env) : 3000;
    }
    return value;
}

const char *vgpu_socket_path(char *buf, size_t len) {
    const char *env = getenv(VGPU_SOCKET_ENV);
    struct stat st;
    if (env && *env) snprintf(buf, len, "%s", env);
    else if (stat(VGPU_SYSTEM_SOCKET, &st) == 0) snprintf(buf, len, "%s", VGPU_SYSTEM_SOCKET);
    else snprintf(buf, len, "/tmp/vgpu-%u/vgpud.sock", (unsigned)getuid());
    return buf;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Blocking I/O whose every syscall the kernel bounds (SO_RCVTIMEO, SO_SNDTIMEO); the
 * deadline bounds the whole exchange across partial transfers and signals. */
static int io_all(int fd, void *data, size_t len, int writing, long long deadline) {
    uint8_t *p = data;
    while (len) {
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n > 0) { p += n; len -= (size_t)n; }
        else if (n == 0 || errno != EINTR) return -1; /* closed, timed out (EAGAIN) or broken */
        if (len && now_ms() > deadline) return -1;
    }
    return 0;
}

/* As io_all for sending, from several places at once (a frame's header, its parameters and
 * a large array where the caller keeps it): nothing is copied on the way to the socket. */
static int send_all(int fd, struct iovec *iov, int count, long long deadline) {
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
    while (msg.msg_iovlen) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) n = 0;
        else if (n <= 0) return -1; /* closed, timed out (EAGAIN) or broken */
        while (msg.msg_iovlen && (size_t)n >= msg.msg_iov->iov_len) {
            n -= (ssize_t)msg.msg_iov->iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen) {
            msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + n;
            msg.msg_iov->iov_len -= (size_t)n;
            if (now_ms() > deadline) return -1;
        }
    }
    return 0;
}

/* A frame header and the request's spans as the iovecs of one send (at most VGPU_MAX_SPANS). */
static int frame_iovecs(struct iovec *iov, uint8_t header[12], uint32_t len, unsigned op, uint16_t flags,
                        uint32_t seq, const vgpu_span *spans, int count) {
    uint16_t op16 = (uint16_t)op;
    memcpy(header, &len, 4);
    memcpy(header + 4, &op16, 2);
    memcpy(header + 6, &flags, 2);
    memcpy(header + 8, &seq, 4);
    iov[0] = (struct iovec){header, 12};
    int n = 1;
    for (int k = 0; k < count; k++)
        if (spans[k].len) iov[n++] = (struct iovec){(void *)spans[k].data, spans[k].len};
    return n;
}

static size_t spans_length(const vgpu_span *spans, int count) {
    size_t total = 0;
    for (int k = 0; k < count; k++) total += spans[k].len;
    return total;
}

static void set_timeout(vgpu_conn *conn, int ms);

/* Send the connection's posted frames (call with send_lock held); a failure loses vgpud for
 * the API, as a failed send of one frame would. */
static int flush_locked(vgpu_conn *conn) {
    if (!conn->out_len) return 0;
    size_t len = conn->out_len;
    conn->out_len = 0;
    conn->last_record = SIZE_MAX;
    __atomic_sub_fetch(&pending_total, len, __ATOMIC_SEQ_CST);
    if (conn->fd < 0 || conn->pid != getpid()) return 0; /* closed, or a parent's, after fork */
    set_timeout(conn, timeout_ms());
    mark_unsettled(conn);
    if (io_all(conn->fd, conn->out, len, 1, now_ms() + timeout_ms()) == 0) return 0;
    if (conn->api && !__atomic_exchange_n(&conn->api->lost, 1, __ATOMIC_SEQ_CST))
        vgpu_log(1, conn->api->prefix, "lost vgpud (could not send %zu bytes of queued work); calls fail until the "
                 "next init", len);
    return -1;
}

static uint32_t send_frame(vgpu_conn *conn, unsigned op, uint16_t flags, const vgpu_span *spans, int count,
                           long long deadline);

/* A notice vgpud sent unasked (VGPU_OP_NOTICE, sequence 0) where a reply was expected: work the
 * reply waits for is still running (the wait starts again), or text the process's kernels
 * printed (written to stdout, as a GPU's printf output appears at a synchronisation).  `data`
 * holds its payload. */
static void take_notice(const uint8_t *data, uint32_t len, long long *deadline, int extra_ms) {
    uint32_t kind = 0;
    if (len >= 4) memcpy(&kind, data, 4);
    if (kind == VGPU_NOTICE_BUSY) {
        *deadline = now_ms() + timeout_ms() + extra_ms;
    } else if (kind == VGPU_NOTICE_OUTPUT) {
        size_t done = 4;
        while (done < len) {
            ssize_t n = write(STDOUT_FILENO, data + done, len - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            done += (size_t)n;
        }
    }
}

static int is_notice(const uint8_t *header) {
    uint16_t op;
    uint32_t seq;
    memcpy(&op, header + 4, 2);
    memcpy(&seq, header + 8, 4);
    return op == VGPU_OP_NOTICE && seq == 0;
}

/* A ping on another thread's connection (send_lock held): its answer is read here, never into
 * the connection's buffer, where its own thread may still be reading a reply. 0 once answered. */
static int ping_locked(vgpu_conn *conn, int extra_ms) {
    long long deadline = now_ms() + timeout_ms() + extra_ms;
    set_timeout(conn, timeout_ms() + extra_ms);
    uint32_t seq = send_frame(conn, VGPU_OP_PING, 0, NULL, 0, deadline);
    uint8_t header[12];
    if (!seq || io_all(conn->fd, header, sizeof header, 0, deadline) < 0) return -1;
    uint32_t len, rseq;
    memcpy(&len, header, 4);
    while (is_notice(header)) { /* read in pieces: printed output may be long */
        uint8_t piece[4096];
        uint32_t kind = 0, done = 0;
        while (done < len) {
            uint32_t take = len - done < sizeof piece ? len - done : (uint32_t)sizeof piece;
            if (io_all(conn->fd, piece, take, 0, deadline) < 0) return -1;
            if (done == 0 && take >= 4) memcpy(&kind, piece, 4);
            if (done == 0) take_notice(piece, take, &deadline, extra_ms);
            else if (kind == VGPU_NOTICE_OUTPUT) {
                uint8_t framed[sizeof piece + 4];
                memcpy(framed, &kind, 4);
                memcpy(framed + 4, piece, take);
                take_notice(framed, take + 4, &deadline, extra_ms);
            }
            done += take;
        }
        if (io_all(conn->fd, header, sizeof header, 0, deadline) < 0) return -1;
        memcpy(&len, header, 4);
    }
    memcpy(&rseq, header + 8, 4);
    if (len != 0 || rseq != seq) return -1;
    mark_settled(conn);
    return 0;
}

/* How much longer than a call a ping after another thread's posts may wait: this thread cannot
 * know how many bytes of copies that thread had sent before. */
#define OTHERS_PATIENCE_MS 10000

/* Send every connection's posts; those of connections other than `self` are also carried out
 * before this returns (each answers a ping after them), because vgpud reads connections in no
 * set order and the caller's next frame may depend on them (stream order across threads).
 * A connection in use is its own thread posting, or in a call, whose earlier posts vgpud has
 * carried out once the call is answered: so this waits for it (vgpud answers CUDA calls without
 * waiting, and no thread holds its connection while it waits for the registry). Without a
 * `self` (flushing at exit, reconnecting) a connection in use is skipped. */
static void settle_posts(vgpu_conn *self) {
    if (!__atomic_load_n(&pending_total, __ATOMIC_SEQ_CST) && !__atomic_load_n(&unsettled_total, __ATOMIC_SEQ_CST))
        return;
    pthread_mutex_lock(&registry_lock);
    for (vgpu_conn *conn = registry; conn; conn = conn->next) {
        if (self ? pthread_mutex_lock(&conn->send_lock) : pthread_mutex_trylock(&conn->send_lock)) continue;
        int had = conn->out_len > 0 || conn->unsettled;
        if (flush_locked(conn) == 0 && had && self && conn != self && conn->fd >= 0 && conn->pid == getpid()) {
            if (ping_locked(conn, OTHERS_PATIENCE_MS) < 0) {
                close(conn->fd); /* out of step or gone: its thread reconnects or finds vgpud lost */
                conn->fd = -1;
                mark_settled(conn);
            }
        }
        pthread_mutex_unlock(&conn->send_lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

void vgpu_flush_posts(void) { settle_posts(NULL); }

/* Whether connections other than this one hold posted work (which a frame of this one must
 * not overtake). */
static int others_pending(const vgpu_conn *self) {
    return __atomic_load_n(&pending_total, __ATOMIC_SEQ_CST) > __atomic_load_n(&self->out_len, __ATOMIC_SEQ_CST) ||
           __atomic_load_n(&unsettled_total, __ATOMIC_SEQ_CST) > __atomic_load_n(&self->unsettled, __ATOMIC_SEQ_CST);
}

static void set_timeout(vgpu_conn *conn, int ms) {
    if (conn->timeout_ms == ms) return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    conn->timeout_ms = ms;
}

static int reserve(vgpu_conn *conn, size_t need) {
    if (need <= conn->cap) return 0;
    size_t cap = conn->cap ? conn->cap : 4096;
    while (cap < need) cap *= 2;
    uint8_t *buf = realloc(conn->buf, cap);
    if (!buf) return -1;
    conn->buf = buf;
    conn->cap = cap;
    return 0;
}

/* One frame out, without waiting; its sequence number, or 0 on failure. */
static uint32_t send_frame(vgpu_conn *conn, unsigned op, uint16_t flags, const vgpu_span *spans, int count,
                           long long deadline) {
    if (count > VGPU_MAX_SPANS) return 0;
    uint32_t seq = ++conn->seq;
    uint8_t header[12];
    struct iovec iov[VGPU_MAX_SPANS + 1];
    int n = frame_iovecs(iov, header, (uint32_t)spans_length(spans, count), op, flags, seq, spans, count);
    return send_all(conn->fd, iov, n, deadline) < 0 ? 0 : seq;
}

/* One frame out, one frame in; the reply lands in conn->buf. */
static int exchange(vgpu_conn *conn, unsigned op, const vgpu_span *spans, int count,
                    const uint8_t **reply, size_t *reply_len, int extra_ms, vgpu_landing *landing) {
    uint16_t op16 = (uint16_t)op;
    set_timeout(conn, timeout_ms() + extra_ms);
    long long deadline = now_ms() + timeout_ms() + extra_ms;
    uint32_t seq = send_frame(conn, op, 0, spans, count, deadline);
    if (!seq) return VGPU_LOST;
    /* One recv usually brings the whole reply; the header comes first. */
    size_t have = 0;
    if (reserve(conn, 4096) < 0) return VGPU_NO_MEMORY;
    /* with a landing, no byte past where it starts is read into the buffer */
    size_t first = landing && 12 + landing->at < conn->cap ? 12 + landing->at : conn->cap;
    uint32_t rlen, rseq;
    for (;;) {
        while (have < 12) {
            ssize_t n = recv(conn->fd, conn->buf + have, first - have, 0);
            if (n > 0) have += (size_t)n;
            else if (n == 0 || errno != EINTR) return VGPU_LOST;
            if (have < 12 && now_ms() > deadline) return VGPU_LOST;
        }
        if (!is_notice(conn->buf)) break;
        memcpy(&rlen, conn->buf, 4);
        if (rlen > VGPU_MAX_PAYLOAD || reserve(conn, 12 + (size_t)rlen) < 0) return VGPU_LOST;
        if (12 + rlen > have && io_all(conn->fd, conn->buf + have, 12 + rlen - have, 0, deadline) < 0) return VGPU_LOST;
        if (have < 12 + rlen) have = 12 + rlen;
        take_notice(conn->buf + 12, rlen, &deadline, extra_ms);
        memmove(conn->buf, conn->buf + 12 + rlen, have - 12 - rlen);
        have -= 12 + rlen;
        first = landing && 12 + landing->at < conn->cap ? 12 + landing->at : conn->cap;
    }
    uint16_t rop, rflags;
    memcpy(&rlen, conn->buf, 4);
    memcpy(&rop, conn->buf + 4, 2);
    memcpy(&rflags, conn->buf + 6, 2);
    memcpy(&rseq, conn->buf + 8, 4);
    if (rseq != seq || rop != op16 || !(rflags & VGPU_FLAG_REPLY) || rlen > VGPU_MAX_PAYLOAD) return VGPU_LOST;
    if (have > 12 + (size_t)rlen) return VGPU_LOST; /* more than one reply: out of step */
    mark_settled(conn);
    if (landing && first < conn->cap && rlen == landing->at + landing->len) {
        if (have < first && io_all(conn->fd, conn->buf + have, first - have, 0, deadline) < 0) return VGPU_LOST;
        if (io_all(conn->fd, landing->data, landing->len, 0, deadline) < 0) return VGPU_LOST;
        landing->landed = 1;
        *reply = conn->buf + 12;
        *reply_len = landing->at;
        return VGPU_OK;
    }
    if (reserve(conn, 12 + (size_t)rlen) < 0) return VGPU_NO_MEMORY;
    if (12 + rlen > have && io_all(conn->fd, conn->buf + have, 12 + rlen - have, 0, deadline) < 0) return VGPU_LOST;
    *reply = conn->buf + 12;
    *reply_len = rlen;
    return VGPU_OK;
}

/* Map vgpud's published answers.  A mapping is kept for the life of the process (readers
 * on other threads may hold it); a new daemon at init gets a new one. */
static void map_published(vgpu_api *api, const char *path) {
    static char mapped_path[4096];
    if (api->published && !strcmp(mapped_path, path)) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    size_t size = VGPU_PUBLISHED_HEADER_SIZE + (size_t)VGPU_PUBLISHED_SLOTS * VGPU_PUBLISHED_SLOT_SIZE;
    struct stat st;
    void *map = fstat(fd, &st) == 0 && (size_t)st.st_size >= size ? mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
                                                                     : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED || memcmp(map, VGPU_PUBLISHED_MAGIC, 8)) {
        if (map != MAP_FAILED) munmap(map, size);
        return;
    }
    snprintf(mapped_path, sizeof mapped_path, "%s", path);
    __atomic_store_n(&api->published, (const uint8_t *)map, __ATOMIC_RELEASE);
}

static uint32_t fnv1a(const uint8_t *data, size_t len) {
    uint32_t value = 0x811c9dc5u;
    for (size_t i = 0; i < len; i++) value = (value ^ data[i]) * 0x01000193u;
    return value;
}

int vgpu_published_answer(const vgpu_api *api, const uint8_t *key, size_t key_len, uint8_t *buf) {
    const uint8_t *base = __atomic_load_n(&api->published, __ATOMIC_ACQUIRE);
    if (!base || api->lost || key_len > VGPU_PUBLISHED_KEY_MAX) return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint32_t start = fnv1a(key, key_len);
    for (unsigned probe = 0; probe < VGPU_PUBLISHED_PROBES; probe++) {
        const uint8_t *slot = base + VGPU_PUBLISHED_HEADER_SIZE +
                              (size_t)((start + probe) % VGPU_PUBLISHED_SLOTS) * VGPU_PUBLISHED_SLOT_SIZE;
        for (int attempt = 0; attempt < 4; attempt++) {
            uint32_t before = __atomic_load_n((const uint32_t *)slot, __ATOMIC_ACQUIRE);
            if (before & 1) continue; /* being written */
            uint16_t slot_key_len, answer_len;
            uint64_t stamp;
            memcpy(&slot_key_len, slot + 4, 2);
            memcpy(&answer_len, slot + 6, 2);
            memcpy(&stamp, slot + 8, 8);
            int same = slot_key_len == key_len && !memcmp(slot + 16, key, key_len);
            if (same && answer_len <= VGPU_PUBLISHED_ANSWER_MAX)
                memcpy(buf, slot + 16 + VGPU_PUBLISHED_KEY_MAX, answer_len);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n((const uint32_t *)slot, __ATOMIC_RELAXED) != before) continue;
            if (slot_key_len == 0) return -1; /* an empty slot ends the probe */
            if (!same) break;
            if (answer_len > VGPU_PUBLISHED_ANSWER_MAX || now - stamp > VGPU_PUBLISHED_MAX_AGE_MS * 1000000ull)
                return -1;
            return answer_len;
        }
    }
    return -1;
}

/* A value vgpud must read out of this process to prove it can reach its memory. */
static uint64_t probe_value;

static int handshake(vgpu_api *api, vgpu_conn *conn) {
    char exe[512];
    ssize_t exe_len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (exe_len < 0) exe_len = 0;
    /* The environment the driver honours, as it is now (a program may have set it after start). */
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (!probe_value) probe_value = ((uint64_t)(uintptr_t)&probe_value * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)now_ms() | 1);
    /* Let vgpud (and only it) reach this process's memory where Yama restricts ptrace. */
    struct ucred server;
    socklen_t server_len = sizeof server;
    if (getsockopt(conn->fd, SOL_SOCKET, SO_PEERCRED, &server, &server_len) == 0)
        prctl(PR_SET_PTRACER, (unsigned long)server.pid, 0, 0, 0);
    const uint8_t *probe_bytes = (const uint8_t *)&probe_value;
    const char *direct = getenv("VGPU_DIRECT_MEMORY"); /* "0": data always travels in frames */
    char env[1100];
    int env_len = direct && !strcmp(direct, "0")
                      ? snprintf(env, sizeof env, "VGPU_DIRECT_MEMORY=0")
                      : snprintf(env, sizeof env, "VGPU_PROBE=%lx:%02x%02x%02x%02x%02x%02x%02x%02x",
                                 (unsigned long)(uintptr_t)&probe_value, probe_bytes[0], probe_bytes[1],
                                 probe_bytes[2], probe_bytes[3], probe_bytes[4], probe_bytes[5], probe_bytes[6],
                                 probe_bytes[7]);
    if (visible && env_len > 0)
        env_len += snprintf(env + env_len + 1, sizeof env - (size_t)env_len - 1, "CUDA_VISIBLE_DEVICES=%s", visible) + 1;
    if (env_len < 0 || env_len >= (int)sizeof env) env_len = 0;
    uint8_t req[VGPU_HELLO_REQUEST_SIZE + 2 + sizeof exe + 2 + sizeof env];
    memset(req, 0, sizeof req);
    uint32_t version = VGPU_PROTOCOL_VERSION;
    memcpy(req, VGPU_MAGIC, 4);
    memcpy(req + 4, &version, 4);
    strncpy((char *)req + 8, api->name, 15);
    memcpy(req + 24, api->digest, 64);
    uint16_t exe16 = (uint16_t)exe_len;
    memcpy(req + VGPU_HELLO_REQUEST_SIZE, &exe16, 2);
    memcpy(req + VGPU_HELLO_REQUEST_SIZE + 2, exe, (size_t)exe_len);
    size_t env_at = VGPU_HELLO_REQUEST_SIZE + 2 + (size_t)exe_len;
    uint16_t env16 = (uint16_t)env_len;
    memcpy(req + env_at, &env16, 2);
    memcpy(req + env_at + 2, env, (size_t)env_len);
    const uint8_t *reply;
    size_t reply_len;
    vgpu_span hello = {req, env_at + 2 + (size_t)env_len};
    int rc = exchange(conn, VGPU_OP_HELLO, &hello, 1, &reply, &reply_len, 0, NULL);
    if (rc != VGPU_OK) return rc;
    if (reply_len < VGPU_HELLO_REPLY_SIZE) return VGPU_LOST;
    int32_t status;
    uint32_t bitmap_len, capabilities;
    memcpy(&status, reply, 4);
    memcpy(&bitmap_len, reply + 16, 4);
    memcpy(&capabilities, reply + 20, 4);
    if (VGPU_HELLO_REPLY_SIZE + (size_t)bitmap_len + 2 > reply_len) return VGPU_LOST;
    if (status != VGPU_HELLO_OK) {
        uint16_t msg_len;
        memcpy(&msg_len, reply + VGPU_HELLO_REPLY_SIZE + bitmap_len, 2);
        const char *msg = (const char *)reply + VGPU_HELLO_REPLY_SIZE + bitmap_len + 2;
        size_t avail = reply_len - VGPU_HELLO_REPLY_SIZE - bitmap_len - 2;
        vgpu_log(1, api->prefix, "vgpud refused the connection: %.*s", (int)(msg_len < avail ? msg_len : avail), msg);
        return VGPU_MISMATCH;
    }
    pthread_mutex_lock(&api_lock);
    api->direct = (capabilities & VGPU_CAP_DIRECT_MEMORY) != 0;
    api->client_copies = (capabilities & VGPU_CAP_CLIENT_COPIES) != 0;
    if (!api->implemented) api->implemented = calloc((api->op_count + 7) / 8, 1);
    if (api->implemented) {
        size_t n = bitmap_len < (api->op_count + 7) / 8 ? bitmap_len : (api->op_count + 7) / 8;
        memcpy(api->implemented, reply + VGPU_HELLO_REPLY_SIZE, n);
    }
    size_t pos = VGPU_HELLO_REPLY_SIZE + bitmap_len, msg_len = 0, path_len = 0;
    if (pos + 2 <= reply_len) { uint16_t v; memcpy(&v, reply + pos, 2); msg_len = v; }
    pos += 2 + msg_len;
    if (pos + 2 <= reply_len) { uint16_t v; memcpy(&v, reply + pos, 2); path_len = v; }
    if (path_len && pos + 2 + path_len <= reply_len && path_len < 4096) {
        char path[4096];
        memcpy(path, reply + pos + 2, path_len);
        path[path_len] = 0;
        map_published(api, path);
    }
    pthread_mutex_unlock(&api_lock);
    return VGPU_OK;
}

static int connect_conn(vgpu_api *api, vgpu_conn *conn) {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    vgpu_socket_path(path, sizeof path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return VGPU_NO_DAEMON;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = errno;
        close(fd);
        static int told;
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_SEQ_CST)) {
            vgpu_log(1, api->prefix, "no vgpud at %s (%s); start one with `vgpu up`, or run the program under `vgpu run -- CMD`",
                     path, strerror(err));
            char detail[700];
            snprintf(detail, sizeof detail, "\"socket\":\"%.512s\",\"error\":\"%s\"", path, strerror(err));
            vgpu_trace_call(api->name, "connect", -err, detail);
        }
        return VGPU_NO_DAEMON;
    }
    conn->fd = fd;
    conn->pid = getpid();
    conn->seq = 0;
    conn->timeout_ms = -1;
    int rc = handshake(api, conn);
    if (rc != VGPU_OK) {
        close(fd);
        conn->fd = -1;
        if (rc == VGPU_LOST) vgpu_log(1, api->prefix, "vgpud at %s did not complete the handshake", path);
    }
    return rc;
}

static void register_exit_flush(void) { atexit(vgpu_flush_posts); }

static vgpu_conn *thread_conn(void) {
    pthread_once(&conn_key_once, conn_key_make);
    vgpu_conn *conn = pthread_getspecific(conn_key);
    if (!conn) {
        conn = calloc(1, sizeof *conn);
        if (!conn) return NULL;
        conn->fd = -1;
        conn->last_record = SIZE_MAX;
        pthread_mutex_init(&conn->send_lock, NULL);
        pthread_setspecific(conn_key, conn);
        pthread_mutex_lock(&registry_lock);
        conn->next = registry;
        registry = conn;
        pthread_mutex_unlock(&registry_lock);
        static pthread_once_t exit_flush = PTHREAD_ONCE_INIT;
        pthread_once(&exit_flush, register_exit_flush);
    }
    if (conn->fd >= 0 && conn->pid != getpid()) {
        /* A forked child: drop its copy of the parent's socket (the parent's connection
         * lives on) and its posts (the parent sends them), and make a connection, and a
         * session, of its own. */
        pthread_mutex_lock(&conn->send_lock);
        __atomic_sub_fetch(&pending_total, conn->out_len, __ATOMIC_SEQ_CST);
        conn->out_len = 0;
        mark_settled(conn);
        conn->last_record = SIZE_MAX;
        close(conn->fd);
        conn->fd = -1;
        pthread_mutex_unlock(&conn->send_lock);
    }
    return conn;
}

int vgpu_open(vgpu_api *api) {
    vgpu_conn *conn = thread_conn();
    if (!conn) return VGPU_NO_MEMORY;
    vgpu_flush_posts();
    __atomic_add_fetch(&api->generation, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&conn->send_lock);
    if (conn->fd >= 0) close(conn->fd);
    conn->fd = -1;
    pthread_mutex_unlock(&conn->send_lock);
    int rc = connect_conn(api, conn);
    if (rc == VGPU_OK) {
        conn->generation = api->generation;
        api->lost = 0;
    }
    return rc;
}

void vgpu_close(vgpu_api *api) {
    vgpu_flush_posts();
    __atomic_add_fetch(&api->generation, 1, __ATOMIC_SEQ_CST);
    vgpu_conn *conn = thread_conn();
    if (!conn) return;
    pthread_mutex_lock(&conn->send_lock);
    if (conn->fd >= 0) close(conn->fd);
    conn->fd = -1;
    pthread_mutex_unlock(&conn->send_lock);
}

static int ready_conn(vgpu_api *api, vgpu_conn **out);

int vgpu_call(vgpu_api *api, unsigned int op, const void *req, size_t req_len,
              const uint8_t **reply, size_t *reply_len, int extra_ms) {
    vgpu_span whole = {req, req_len};
    return vgpu_callv(api, op, &whole, 1, reply, reply_len, extra_ms, NULL);
}

int vgpu_callv(vgpu_api *api, unsigned int op, const vgpu_span *spans, int count,
               const uint8_t **reply, size_t *reply_len, int extra_ms, vgpu_landing *landing) {
    vgpu_conn *conn;
    int ready = ready_conn(api, &conn);
    if (ready != VGPU_OK) return ready;
    settle_posts(conn); /* work this or another thread posted comes first */
    pthread_mutex_lock(&conn->send_lock);
    int rc = exchange(conn, op, spans, count, reply, reply_len, extra_ms, landing);
    pthread_mutex_unlock(&conn->send_lock);
    if (rc == VGPU_LOST) {
        char path[108];
        if (!__atomic_exchange_n(&api->lost, 1, __ATOMIC_SEQ_CST))
            vgpu_log(1, api->prefix, "lost vgpud at %s (no answer to op 0x%x); calls fail until the next init",
                     vgpu_socket_path(path, sizeof path), op);
        close(conn->fd);
        conn->fd = -1;
    }
    return rc;
}

/* The thread's connection, made (or remade after fork or re-init) when needed. */
static int ready_conn(vgpu_api *api, vgpu_conn **out) {
    if (api->lost) return VGPU_LOST;
    vgpu_conn *conn = thread_conn();
    if (!conn) return VGPU_NO_MEMORY;
    if (conn->fd >= 0 && conn->generation != api->generation) {
        close(conn->fd);
        conn->fd = -1;
    }
    if (conn->fd < 0) {
        int rc = connect_conn(api, conn);
        if (rc != VGPU_OK) {
            api->lost = 1;
            return rc == VGPU_NO_DAEMON ? VGPU_LOST : rc;
        }
        conn->generation = api->generation;
    }
    *out = conn;
    return VGPU_OK;
}

/* A large posted frame goes at once, after the posts before it, from where its spans lie (the
 * caller's buffer may change once the call returns). */
static int post_now(vgpu_conn *conn, unsigned int op, const vgpu_span *spans, int count, size_t req_len) {
    if (flush_locked(conn) < 0 || conn->fd < 0 || count > VGPU_MAX_SPANS) return -1;
    set_timeout(conn, timeout_ms());
    uint8_t header[12];
    struct iovec iov[VGPU_MAX_SPANS + 1];
    int n = frame_iovecs(iov, header, (uint32_t)req_len, op, VGPU_FLAG_NO_REPLY, ++conn->seq, spans, count);
    mark_unsettled(conn);
    if (send_all(conn->fd, iov, n, now_ms() + timeout_ms()) == 0) return 0;
    if (conn->api && !__atomic_exchange_n(&conn->api->lost, 1, __ATOMIC_SEQ_CST))
        vgpu_log(1, conn->api->prefix, "lost vgpud (could not send %zu bytes of queued work); calls fail until the "
                 "next init", req_len);
    return -1;
}

/* Append to the connection's posts: a frame of its own, or (records) the last frame grown. */
static int post(vgpu_api *api, unsigned int op, const vgpu_span *spans, int count, int record) {
    vgpu_conn *conn;
    int rc = ready_conn(api, &conn);
    if (rc != VGPU_OK) return rc;
    conn->api = api;
    size_t req_len = spans_length(spans, count);
    if (others_pending(conn)) settle_posts(conn); /* another thread's earlier work stays earlier */
    pthread_mutex_lock(&conn->send_lock);
    if (!record && req_len >= POST_BATCH) {
        int failed = post_now(conn, op, spans, count, req_len);
        pthread_mutex_unlock(&conn->send_lock);
        return failed ? VGPU_LOST : VGPU_OK;
    }
    int extend = record && conn->out_len && conn->last_record != SIZE_MAX && conn->last_record_op == op;
    size_t need = conn->out_len + (extend ? 0 : 12) + req_len;
    if (need > conn->out_cap) {
        size_t cap = conn->out_cap ? conn->out_cap : POST_BATCH + (64u << 10);
        while (cap < need) cap *= 2;
        uint8_t *out = realloc(conn->out, cap);
        if (!out) {
            pthread_mutex_unlock(&conn->send_lock);
            return VGPU_NO_MEMORY;
        }
        conn->out = out;
        conn->out_cap = cap;
    }
    if (extend) {
        uint32_t len32;
        memcpy(&len32, conn->out + conn->last_record, 4);
        len32 += (uint32_t)req_len;
        memcpy(conn->out + conn->last_record, &len32, 4);
    } else {
        uint8_t *frame = conn->out + conn->out_len;
        uint32_t len32 = (uint32_t)req_len, seq = ++conn->seq;
        uint16_t op16 = (uint16_t)op, flags = VGPU_FLAG_NO_REPLY;
        memcpy(frame, &len32, 4);
        memcpy(frame + 4, &op16, 2);
        memcpy(frame + 6, &flags, 2);
        memcpy(frame + 8, &seq, 4);
        conn->last_record = record ? conn->out_len : SIZE_MAX;
        conn->last_record_op = op;
        conn->out_len += 12;
    }
    for (int k = 0; k < count; k++) {
        if (spans[k].len) memcpy(conn->out + conn->out_len, spans[k].data, spans[k].len);
        conn->out_len += spans[k].len;
    }
    __atomic_add_fetch(&pending_total, (extend ? 0 : 12) + req_len, __ATOMIC_SEQ_CST);
    int failed = conn->out_len >= POST_BATCH ? flush_locked(conn) : 0;
    pthread_mutex_unlock(&conn->send_lock);
    return failed ? VGPU_LOST : VGPU_OK;
}

int vgpu_post(vgpu_api *api, unsigned int op, const void *req, size_t req_len) {
    vgpu_span whole = {req, req_len};
    return post(api, op, &whole, 1, 0);
}

int vgpu_postv(vgpu_api *api, unsigned int op, const vgpu_span *spans, int count) {
    return post(api, op, spans, count, 0);
}

int vgpu_post_record(vgpu_api *api, unsigned int op, const void *req, size_t req_len) {
    vgpu_span whole = {req, req_len};
    return post(api, op, &whole, 1, 1);
}

int vgpu_implemented(const vgpu_api *api, unsigned int op) {
    unsigned index = op - api->op_base;
    if (!api->implemented || index >= api->op_count) return 0;
    return (api->implemented[index / 8] >> (index % 8)) & 1;
}

/* ---- shared-memory windows ---- */

typedef struct window {
    const char *start;
    size_t size;
} window;

static window windows[256];
static int window_count;
static pthread_mutex_t window_lock = PTHREAD_MUTEX_INITIALIZER;

int vgpu_share(vgpu_api *api, const void *address, size_t size, int fd) {
    uint8_t req[VGPU_SHARE_REQUEST_SIZE];
    uint64_t addr64 = (uintptr_t)address, size64 = size;
    int32_t fd32 = fd;
    memcpy(req, &addr64, 8);
    memcpy(req + 8, &size64, 8);
    memcpy(req + 16, &fd32, 4);
    pthread_mutex_lock(&window_lock);
    if (size == 0) { /* withdraw locally first: no transfer may name it from now on */
        for (int i = 0; i < window_count; i++)
            if (windows[i].start == address) windows[i] = windows[--window_count];
    }
    pthread_mutex_unlock(&window_lock);
    const uint8_t *reply;
    size_t reply_len;
    int rc = vgpu_call(api, VGPU_OP_SHARE, req, sizeof req, &reply, &reply_len, 0);
    if (rc != VGPU_OK || size == 0) return rc;
    int32_t status = -1;
    if (reply_len == 4) memcpy(&status, reply, 4);
    if (status != 0) {
        vgpu_log(2, api->prefix, "vgpud could not map shared memory (errno %d): transfers go through the socket",
                 status);
        return VGPU_LOST;
    }
    pthread_mutex_lock(&window_lock);
    if (window_count < (int)(sizeof windows / sizeof *windows)) windows[window_count++] = (window){address, size};
    pthread_mutex_unlock(&window_lock);
    return VGPU_OK;
}

int vgpu_shared(const void *address, size_t size) {
    const char *p = address;
    int found = 0;
    pthread_mutex_lock(&window_lock);
    for (int i = 0; i < window_count && !found; i++)
        found = p >= windows[i].start && p + size <= windows[i].start + windows[i].size;
    pthread_mutex_unlock(&window_lock);
    return found;
}

static __thread struct {
    const void *address;
    size_t size;
    uint64_t serial;
} client_copy;

void vgpu_set_client_copy(const void *address, size_t size, uint64_t serial) {
    client_copy.address = address;
    client_copy.size = size;
    client_copy.serial = serial;
}

uint64_t vgpu_client_copy_serial(const void *address, size_t size) {
    return client_copy.serial && address == client_copy.address && size == client_copy.size ? client_copy.serial : 0;
}

int vgpu_daemon_pid(vgpu_api *api) {
    vgpu_conn *conn;
    if (ready_conn(api, &conn) != VGPU_OK) return 0;
    struct ucred peer;
    socklen_t len = sizeof peer;
    return getsockopt(conn->fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 ? (int)peer.pid : 0;
}

int vgpu_in_place(const vgpu_api *api, const void *address, size_t size) {
    return size && (vgpu_shared(address, size) || (api->direct && size >= VGPU_DIRECT_MIN));
}
