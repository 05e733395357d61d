/* See marshal.h. */
#include "marshal.h"
#include "vgpu_wire.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define MAX_HANDLES 8192
#define SPECIAL_HANDLES 4096 /* handle values below this are constants, not table slots */
#define HANDLE_MAGIC 0x76677075u /* "vgpu" */

typedef struct handle_slot {
    uint32_t magic;
    uint32_t type;
    uint64_t id;
} handle_slot;

static handle_slot handles[MAX_HANDLES];
static unsigned handle_count;
static pthread_mutex_t handle_lock = PTHREAD_MUTEX_INITIALIZER;

void *vgpu_handle_for(unsigned type, uint64_t id) {
    if (!id) return NULL;
    void *found = NULL;
    pthread_mutex_lock(&handle_lock);
    for (unsigned i = 0; i < handle_count && !found; i++)
        if (handles[i].type == type && handles[i].id == id) found = &handles[i];
    if (!found && handle_count < MAX_HANDLES) {
        handles[handle_count] = (handle_slot){HANDLE_MAGIC, type, id};
        found = &handles[handle_count++];
    }
    pthread_mutex_unlock(&handle_lock);
    return found;
}

int vgpu_handle_id(unsigned type, const void *handle, uint64_t *id) {
    const handle_slot *slot = handle;
    if (slot < handles || slot >= handles + MAX_HANDLES) return -1;
    if (((const char *)slot - (const char *)handles) % sizeof *slot) return -1;
    if (slot->magic != HANDLE_MAGIC || slot->type != type) return -1;
    *id = slot->id;
    return 0;
}

typedef struct out_buf {
    uint8_t *data;
    size_t len, cap;
    /* one large input array, sent from the caller's memory: its bytes belong at outside_at */
    const void *outside;
    size_t outside_at, outside_len;
} out_buf;

/* An input array this large travels from where the caller keeps it, not copied into the request. */
#define OUTSIDE_MIN (64u << 10)

static int put(out_buf *b, const void *src, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *data = realloc(b->data, cap);
        if (!data) return -1;
        b->data = data;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int put_u8(out_buf *b, uint8_t v) { return put(b, &v, 1); }
static int put_u32(out_buf *b, uint32_t v) { return put(b, &v, 4); }

/* The current value of a count or capacity parameter (by value or behind a pointer). */
static uint64_t count_of(const vgpu_function *fn, void *const *args, int index) {
    const vgpu_param *p = &fn->params[index];
    const void *where = args[index];
    if (p->kind == VGPU_K_INOUT) {
        where = *(void *const *)args[index];
        if (!where) return 0;
    }
    if (p->size == 8) { uint64_t v; memcpy(&v, where, 8); return v; }
    if (p->size == 2) { uint16_t v; memcpy(&v, where, 2); return v; }
    uint32_t v;
    memcpy(&v, where, 4);
    return v;
}

/* How many bytes of an IN or INOUT struct the caller has: all of it, or for a versioned struct what
 * its version says (a caller built with an older header has a smaller one), at least the version. */
static size_t struct_bytes(const vgpu_param *p, const void *ptr) {
    if (!p->versioned) return p->size;
    uint32_t version;
    memcpy(&version, ptr, 4);
    size_t size = version & 0xffffffu;
    return size < 4 ? 4 : size < p->size ? size : p->size;
}

static int encode(const vgpu_api *api, const vgpu_function *fn, void *const *args, out_buf *b) {
    if (api->call_context) {
        uint64_t context = api->call_context();
        if (put(b, &context, 8)) return VGPU_CALL_FAILED;
    }
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        void *ptr = p->kind == VGPU_K_VALUE || p->kind == VGPU_K_HANDLE ? NULL : *(void *const *)args[i];
        int err = 0;
        switch (p->kind) {
        case VGPU_K_VALUE:
            err = put(b, args[i], p->size);
            break;
        case VGPU_K_HANDLE: {
            void *handle = *(void *const *)args[i];
            uint64_t id = (uintptr_t)handle;
            /* NULL and the small constants some APIs give meaning to (CU_STREAM_LEGACY,
             * CU_STREAM_PER_THREAD) travel as they are, for vgpud to judge; anything else
             * must be a handle this library issued. */
            if ((uintptr_t)handle >= SPECIAL_HANDLES && vgpu_handle_id(p->handle_type, handle, &id) < 0)
                return VGPU_CALL_BAD_HANDLE;
            err = put(b, &id, 8);
            break;
        }
        case VGPU_K_CSTRING:
            if (!ptr) err = put_u32(b, 0xffffffffu);
            else {
                size_t n = strlen(ptr);
                err = put_u32(b, (uint32_t)n) || put(b, ptr, n);
            }
            break;
        case VGPU_K_IN:
        case VGPU_K_INOUT: {
            static const uint8_t zeros[256];
            size_t have = ptr ? struct_bytes(p, ptr) : 0, pad = ptr ? p->size - have : 0;
            err = put_u8(b, ptr != NULL) || (ptr && put(b, ptr, have));
            for (; !err && pad; pad -= pad < sizeof zeros ? pad : sizeof zeros) /* the rest reads as zeros */
                err = put(b, zeros, pad < sizeof zeros ? pad : sizeof zeros);
            break;
        }
        case VGPU_K_HANDLE_OUT:
            err = put_u8(b, ptr != NULL);
            break;
        case VGPU_K_BUFFER: {
            uint64_t cap = p->count >= 0 ? count_of(fn, args, p->count) : p->size;
            err = put_u8(b, ptr != NULL) || (ptr && put_u32(b, (uint32_t)cap));
            break;
        }
        case VGPU_K_HANDLE_ARRAY: { /* each handle as its id; NULL as 0 */
            uint64_t n = ptr ? count_of(fn, args, p->count) : 0;
            if (n * 8 > VGPU_MAX_PAYLOAD - 4096) return VGPU_CALL_TOO_BIG;
            err = put_u8(b, ptr != NULL) || (ptr && put_u32(b, (uint32_t)n));
            for (uint64_t k = 0; k < n && !err; k++) {
                void *handle = ((void *const *)ptr)[k];
                uint64_t id = 0;
                if (handle && vgpu_handle_id(p->handle_type, handle, &id) < 0) return VGPU_CALL_BAD_HANDLE;
                err = put(b, &id, 8);
            }
            break;
        }
        case VGPU_K_HANDLE_ARRAY_OUT: /* the capacity; ids come back */
            err = put_u8(b, ptr != NULL) || (ptr && put_u32(b, (uint32_t)count_of(fn, args, p->count)));
            break;
        case VGPU_K_ARRAY:
        case VGPU_K_ARRAY_IN:
        case VGPU_K_ARRAY_OUT: {
            uint64_t n = ptr ? count_of(fn, args, p->count) : 0;
            uint64_t serial = p->kind != VGPU_K_ARRAY && n ? vgpu_client_copy_serial(ptr, n * p->size) : 0;
            if (serial) { /* the process copies it itself, through its mapping of the allocation (4) */
                uint64_t address = (uintptr_t)ptr;
                err = put_u8(b, 4) || put_u32(b, (uint32_t)n) || put(b, &address, 8) || put(b, &serial, 8);
                break;
            }
            if (p->kind != VGPU_K_ARRAY && n && vgpu_in_place(api, ptr, n * p->size)) {
                /* vgpud reads or writes it in place: through a shared window (2) or directly (3) */
                uint64_t address = (uintptr_t)ptr;
                err = put_u8(b, vgpu_shared(ptr, n * p->size) ? 2 : 3) || put_u32(b, (uint32_t)n) || put(b, &address, 8);
                break;
            }
            if (n * p->size > VGPU_MAX_PAYLOAD - 4096) return VGPU_CALL_TOO_BIG;
            err = put_u8(b, ptr != NULL) || (ptr && put_u32(b, (uint32_t)n));
            if (err || !ptr || p->kind == VGPU_K_ARRAY_OUT) break;
            if (n * p->size >= OUTSIDE_MIN && !b->outside && !fn->published && !fn->immutable) {
                b->outside = ptr;
                b->outside_at = b->len;
                b->outside_len = n * p->size;
            } else {
                err = put(b, ptr, n * p->size);
            }
            break;
        }
        default:
            return VGPU_CALL_UNSUPPORTED;
        }
        if (err) return VGPU_CALL_FAILED;
    }
    return VGPU_CALL_DONE;
}

/* Whether a parameter has something in the reply (when the caller passed a pointer). */
static int returns(const vgpu_param *p) {
    return p->kind != VGPU_K_VALUE && p->kind != VGPU_K_HANDLE && p->kind != VGPU_K_CSTRING && p->kind != VGPU_K_IN &&
           p->kind != VGPU_K_ARRAY_IN && p->kind != VGPU_K_HANDLE_ARRAY;
}

/* Copy the reply's outputs into the caller's memory, never past what the caller provided; an
 * array the landing received is already there. */
static int decode(const vgpu_api *api, const vgpu_function *fn, void *const *args, const uint8_t *r, size_t len,
                  const vgpu_landing *landing) {
    size_t pos = 4;
    uint64_t caps[32];
    for (int i = 0; i < fn->nparams && i < 32; i++) {
        const vgpu_param *p = &fn->params[i];
        caps[i] = (p->kind == VGPU_K_BUFFER) ? (p->count >= 0 ? count_of(fn, args, p->count) : p->size)
                : (p->kind == VGPU_K_ARRAY || p->kind == VGPU_K_ARRAY_OUT || p->kind == VGPU_K_HANDLE_ARRAY_OUT)
                    ? count_of(fn, args, p->count) : 0;
    }
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        void *ptr = returns(p) ? *(void *const *)args[i] : NULL;
        if (!ptr) continue;
        if (p->kind == VGPU_K_INOUT) {
            if (pos + p->size > len) return -1;
            size_t have = struct_bytes(p, ptr); /* never past what the caller's version holds */
            memcpy(ptr, r + pos, have);
            pos += p->size;
            for (const vgpu_handle_field *h = p->handle_fields; h && h->offset >= 0 && h->offset + 8 <= (int)have; h++) {
                uint64_t id;
                memcpy(&id, (uint8_t *)ptr + h->offset, sizeof id);
                void *handle = vgpu_handle_for(h->type, id);
                memcpy((uint8_t *)ptr + h->offset, &handle, sizeof handle);
            }
        } else if (p->kind == VGPU_K_HANDLE_OUT) {
            uint64_t id;
            if (pos + 8 > len) return -1;
            memcpy(&id, r + pos, 8);
            pos += 8;
            int32_t status;
            memcpy(&status, r, 4);
            if (id) *(void **)ptr = vgpu_handle_for(p->handle_type, id);
            else if (status == 0) *(void **)ptr = NULL; /* a success that answers NULL (no green context) */
        } else if (p->kind == VGPU_K_HANDLE_ARRAY_OUT) {
            uint32_t n;
            if (pos + 4 > len) return -1;
            memcpy(&n, r + pos, 4);
            pos += 4;
            if (n > caps[i] || pos + (size_t)n * 8 > len) return -1;
            for (uint32_t k = 0; k < n; k++) {
                uint64_t id;
                memcpy(&id, r + pos + 8 * (size_t)k, 8);
                ((void **)ptr)[k] = id ? vgpu_handle_for(p->handle_type, id) : NULL;
            }
            pos += (size_t)n * 8;
        } else {
            uint32_t n;
            if (pos + 4 > len) return -1;
            memcpy(&n, r + pos, 4);
            pos += 4;
            size_t unit = p->kind == VGPU_K_BUFFER ? 1 : p->size;
            if (n > caps[i]) return -1;
            if (p->kind == VGPU_K_ARRAY_OUT && n &&
                (vgpu_in_place(api, ptr, caps[i] * unit) || vgpu_client_copy_serial(ptr, caps[i] * unit)))
                continue; /* written in place, or copied by the process itself */
            if (landing && landing->landed && ptr == landing->data) {
                if ((size_t)n * unit != landing->len) return -1;
                continue; /* received where it belongs */
            }
            if (pos + (size_t)n * unit > len) return -1;
            memcpy(ptr, r + pos, (size_t)n * unit);
            pos += (size_t)n * unit;
        }
    }
    return pos == len ? 0 : -1;
}

/* The key vgpud files a published answer under: the request without the contents of
 * scalar outputs.  vgpu.wire.codec.FunctionCodec.published_key builds the same. */
static size_t published_key(const vgpu_function *fn, const uint8_t *req, size_t len, uint8_t *key) {
    size_t pos = 0, out = 0;
    uint16_t op = fn->op;
    memcpy(key, &op, 2);
    out = 2;
#define KEY_PUT(src, n) do { if (out + (n) > VGPU_PUBLISHED_KEY_MAX || pos + (n) > len) return 0; \
                             memcpy(key + out, (src), (n)); out += (n); } while (0)
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        if (p->kind == VGPU_K_VALUE) { KEY_PUT(req + pos, p->size); pos += p->size; continue; }
        if (p->kind == VGPU_K_HANDLE) { KEY_PUT(req + pos, 8); pos += 8; continue; }
        KEY_PUT(req + pos, 1);
        uint8_t present = req[pos++];
        if (!present) continue;
        if (p->kind == VGPU_K_IN || p->kind == VGPU_K_INOUT) {
            if (p->kind == VGPU_K_IN || p->record) KEY_PUT(req + pos, p->size);
            pos += p->size;
        } else if (p->kind == VGPU_K_BUFFER) {
            KEY_PUT(req + pos, 4);
            pos += 4;
        }
    }
#undef KEY_PUT
    return out;
}

static void log_unsupported(vgpu_api *api, const vgpu_function *fn) {
    unsigned index = fn->op - api->op_base;
    if (!api->logged) {
        unsigned char *fresh = calloc(api->op_count, 1);
        unsigned char *expected = NULL;
        if (fresh && !__atomic_compare_exchange_n(&api->logged, &expected, fresh, 0, __ATOMIC_SEQ_CST,
                                                  __ATOMIC_SEQ_CST))
            free(fresh);
    }
    if (api->logged && index < api->op_count && !__atomic_exchange_n(&api->logged[index], 1, __ATOMIC_SEQ_CST))
        vgpu_log(2, api->prefix, "%s is not implemented: answered \"not supported\"", fn->name);
}

/* ---- answers to immutable calls, per process ---- */

#define MEMO_SLOTS 4096

typedef struct memo_entry {
    uint8_t key[VGPU_PUBLISHED_KEY_MAX];
    size_t key_len, answer_len;
    uint8_t *answer;
} memo_entry;

struct vgpu_memo {
    pthread_mutex_t lock;
    memo_entry slots[MEMO_SLOTS];
};

static memo_entry *memo_slot(struct vgpu_memo *memo, const uint8_t *key, size_t key_len) {
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < key_len; i++) hash = (hash ^ key[i]) * 16777619u;
    for (unsigned probe = 0; probe < 64; probe++) {
        memo_entry *e = &memo->slots[(hash + probe) % MEMO_SLOTS];
        if (!e->answer || (e->key_len == key_len && !memcmp(e->key, key, key_len))) return e;
    }
    return NULL;
}

/* A kept answer copied into buf (at most cap bytes); its length, or 0. */
static size_t memo_find(vgpu_api *api, const uint8_t *key, size_t key_len, uint8_t *buf, size_t cap) {
    if (!api->memo) return 0;
    size_t found = 0;
    pthread_mutex_lock(&api->memo->lock);
    memo_entry *e = memo_slot(api->memo, key, key_len);
    if (e && e->answer && e->answer_len <= cap) {
        memcpy(buf, e->answer, e->answer_len);
        found = e->answer_len;
    }
    pthread_mutex_unlock(&api->memo->lock);
    return found;
}

static void memo_keep(vgpu_api *api, const uint8_t *key, size_t key_len, const uint8_t *answer, size_t len) {
    if (!api->memo) {
        struct vgpu_memo *fresh = calloc(1, sizeof *fresh), *expected = NULL;
        if (!fresh) return;
        pthread_mutex_init(&fresh->lock, NULL);
        if (!__atomic_compare_exchange_n(&api->memo, &expected, fresh, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            free(fresh);
    }
    pthread_mutex_lock(&api->memo->lock);
    memo_entry *e = memo_slot(api->memo, key, key_len);
    uint8_t *copy = e && !e->answer ? malloc(len) : NULL;
    if (copy) {
        memcpy(copy, answer, len);
        memcpy(e->key, key, key_len);
        e->key_len = key_len;
        e->answer_len = len;
        e->answer = copy;
    }
    pthread_mutex_unlock(&api->memo->lock);
}

int vgpu_prefetch_facts(vgpu_api *api) {
    const uint8_t *reply;
    size_t len, pos = 0;
    int rc = vgpu_call(api, VGPU_OP_FACTS, NULL, 0, &reply, &len, 0);
    if (rc != VGPU_OK) return rc;
    uint8_t *copy = malloc(len ? len : 1); /* the reply buffer is reused by the calls below */
    if (!copy) return VGPU_NO_MEMORY;
    memcpy(copy, reply, len);
    while (pos + 2 <= len) {
        uint16_t key_len;
        uint32_t answer_len;
        memcpy(&key_len, copy + pos, 2);
        if (pos + 2 + key_len + 4 > len || key_len > VGPU_PUBLISHED_KEY_MAX) break;
        memcpy(&answer_len, copy + pos + 2 + key_len, 4);
        size_t answer_at = pos + 2 + key_len + 4;
        if (answer_at + answer_len > len || answer_len > VGPU_PUBLISHED_ANSWER_MAX) break;
        memo_keep(api, copy + pos + 2, key_len, copy + answer_at, answer_len);
        pos = answer_at + answer_len;
    }
    free(copy);
    return VGPU_OK;
}

/* Whether a call gives nothing back to its caller: no output, or outputs vgpud writes in
 * place (shared windows); such work can go without waiting. */
static int returns_nothing(const vgpu_api *api, const vgpu_function *fn, void *const *args) {
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        void *ptr = p->kind == VGPU_K_VALUE || p->kind == VGPU_K_HANDLE ? NULL : *(void *const *)args[i];
        if (!ptr) continue;
        if (p->kind == VGPU_K_INOUT || p->kind == VGPU_K_HANDLE_OUT || p->kind == VGPU_K_BUFFER ||
            p->kind == VGPU_K_ARRAY)
            return 0;
        if (p->kind == VGPU_K_ARRAY_IN || p->kind == VGPU_K_ARRAY_OUT) {
            size_t bytes = count_of(fn, args, p->count) * p->size;
            if (vgpu_client_copy_serial(ptr, bytes)) return 0; /* the process copies once answered */
            /* vgpud reaching ordinary memory by address must do so before the call returns: the
             * caller may reuse a pageable buffer at once (only page-locked memory may wait) */
            if (!vgpu_shared(ptr, bytes) && (p->kind == VGPU_K_ARRAY_OUT || vgpu_in_place(api, ptr, bytes))) return 0;
        }
    }
    return 1;
}

static int marshal(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc, int queue);

int vgpu_marshal_call(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc) {
    return marshal(api, fn, args, rc, 0);
}

int vgpu_marshal_queue(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc) {
    return marshal(api, fn, args, rc, 1);
}

/* Whether the reply's last output is a large array that can be received where the caller
 * wants it (every output before it of fixed size), and where in the reply it starts. */
static int landing_for(const vgpu_api *api, const vgpu_function *fn, void *const *args, vgpu_landing *landing) {
    size_t at = 4;
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        void *ptr = returns(p) ? *(void *const *)args[i] : NULL;
        if (!ptr) continue;
        if (landing->data) return 0; /* an output after the array */
        if (p->kind == VGPU_K_INOUT) at += p->size;
        else if (p->kind == VGPU_K_HANDLE_OUT) at += 8;
        else if (p->kind != VGPU_K_ARRAY_OUT) return 0;
        else {
            size_t size = count_of(fn, args, p->count) * p->size;
            if (size < OUTSIDE_MIN || vgpu_in_place(api, ptr, size) || vgpu_client_copy_serial(ptr, size)) return 0;
            *landing = (vgpu_landing){ptr, at + 4, size, 0};
        }
    }
    return landing->data != NULL;
}

/* Bytes of copies this thread posted since its last call: that call waits for vgpud to have
 * carried them out, so its wait grows with them, at the pace of a slow machine. */
static __thread uint64_t posted_bytes;
#define PATIENT_BYTES_PER_MS 100000u

static uint64_t array_bytes(const vgpu_function *fn, void *const *args) {
    uint64_t total = 0;
    for (int i = 0; i < fn->nparams; i++) {
        const vgpu_param *p = &fn->params[i];
        if ((p->kind == VGPU_K_ARRAY || p->kind == VGPU_K_ARRAY_IN || p->kind == VGPU_K_ARRAY_OUT) &&
            *(void *const *)args[i])
            total += count_of(fn, args, p->count) * p->size;
    }
    return total;
}

static int marshal(vgpu_api *api, const vgpu_function *fn, void *const *args, int32_t *rc, int queue) {
    if (!vgpu_implemented(api, fn->op)) {
        log_unsupported(api, fn);
        return VGPU_CALL_UNSUPPORTED;
    }
    static __thread out_buf request;
    request.len = 0;
    request.outside = NULL;
    int status = encode(api, fn, args, &request);
    if (status != VGPU_CALL_DONE) return status;
    vgpu_span spans[3] = {{request.data, request.len}};
    int span_count = 1;
    if (request.outside) {
        spans[0].len = request.outside_at;
        spans[1] = (vgpu_span){request.outside, request.outside_len};
        spans[2] = (vgpu_span){request.data + request.outside_at, request.len - request.outside_at};
        span_count = 3;
    }
    size_t prefix = api->call_context ? 8 : 0;
    uint8_t key[VGPU_PUBLISHED_KEY_MAX];
    size_t key_len = fn->published || fn->immutable ? published_key(fn, request.data + prefix, request.len - prefix, key) : 0;
    if (key_len) {
        uint8_t answer[VGPU_PUBLISHED_ANSWER_MAX];
        int answer_len = fn->published ? vgpu_published_answer(api, key, key_len, answer)
                                       : (int)memo_find(api, key, key_len, answer, sizeof answer);
        if (answer_len >= 4 && decode(api, fn, args, answer, (size_t)answer_len, NULL) == 0) {
            memcpy(rc, answer, 4);
            return VGPU_CALL_DONE;
        }
    }
    if ((fn->asynchronous || queue) && returns_nothing(api, fn, args)) {
        /* queued work: no round trip; vgpud answers its first error at the next synchronising call */
        if (vgpu_postv(api, fn->op, spans, span_count) != VGPU_OK) return VGPU_CALL_FAILED;
        posted_bytes += array_bytes(fn, args);
        *rc = 0;
        return VGPU_CALL_DONE;
    }
    uint64_t patience = (posted_bytes + array_bytes(fn, args)) / PATIENT_BYTES_PER_MS;
    posted_bytes = 0;
    int extra = (fn->wait_param >= 0 ? (int)count_of(fn, args, fn->wait_param) : 0) +
                (int)(patience < (1u << 30) ? patience : (1u << 30));
    const uint8_t *reply;
    size_t reply_len;
    vgpu_landing landing = {0};
    int lands = landing_for(api, fn, args, &landing);
    if (vgpu_callv(api, fn->op, spans, span_count, &reply, &reply_len, extra, lands ? &landing : NULL) != VGPU_OK)
        return VGPU_CALL_FAILED;
    if (reply_len < 4) return VGPU_CALL_FAILED;
    memcpy(rc, reply, 4);
    if (decode(api, fn, args, reply, reply_len, &landing) < 0) {
        vgpu_log(1, api->prefix, "%s: malformed reply from vgpud (%zu bytes)", fn->name, reply_len);
        return VGPU_CALL_FAILED;
    }
    if (fn->immutable && key_len && *rc == 0 && reply_len <= VGPU_PUBLISHED_ANSWER_MAX)
        memo_keep(api, key, key_len, reply, reply_len);
    return VGPU_CALL_DONE;
}

int vgpu_marshal_fence(vgpu_api *api) {
    uint64_t patience = posted_bytes / PATIENT_BYTES_PER_MS;
    posted_bytes = 0;
    const uint8_t *reply;
    size_t reply_len;
    return vgpu_callv(api, VGPU_OP_PING, NULL, 0, &reply, &reply_len,
                      (int)(patience < (1u << 30) ? patience : (1u << 30)), NULL);
}

/* One argument as JSON: values as integers, handles by id, strings as text; after a
 * successful call, what scalar and handle outputs received; other pointers as "ptr" or null. */
static int trace_argument(const vgpu_param *param, void *arg, int done, char *out, size_t cap) {
    void *pointer = *(void **)arg;
    uint64_t id = 0;
    switch (param->kind) {
    case VGPU_K_VALUE:
        switch (param->size) {
        case 1: return snprintf(out, cap, "%u", *(uint8_t *)arg);
        case 2: return snprintf(out, cap, "%u", *(uint16_t *)arg);
        case 4: return snprintf(out, cap, "%d", *(int32_t *)arg);
        case 8: return snprintf(out, cap, "%lld", (long long)*(int64_t *)arg);
        default: return snprintf(out, cap, "\"value\"");
        }
    case VGPU_K_HANDLE:
        if (!pointer) return snprintf(out, cap, "null");
        if (vgpu_handle_id(param->handle_type, pointer, &id) == 0)
            return snprintf(out, cap, "\"handle %llu\"", (unsigned long long)id);
        return snprintf(out, cap, "\"%p\"", pointer);
    case VGPU_K_CSTRING: {
        if (!pointer) return snprintf(out, cap, "null");
        size_t n = 0;
        out[n++] = '"';
        for (const char *c = pointer; *c && n + 8 < cap && c - (const char *)pointer < 96; c++)
            if (*c == '"' || *c == '\\') { out[n++] = '\\'; out[n++] = *c; }
            else if ((unsigned char)*c >= 0x20) out[n++] = *c;
        out[n++] = '"';
        out[n] = 0;
        return (int)n;
    }
    case VGPU_K_HANDLE_OUT:
        if (!pointer) return snprintf(out, cap, "null");
        if (done && vgpu_handle_id(param->handle_type, *(void **)pointer, &id) == 0)
            return snprintf(out, cap, "\"handle %llu\"", (unsigned long long)id);
        return snprintf(out, cap, "\"ptr\"");
    case VGPU_K_INOUT:
        if (!pointer) return snprintf(out, cap, "null");
        if (done && !param->record && param->size == 4) return snprintf(out, cap, "%d", *(int32_t *)pointer);
        if (done && !param->record && param->size == 8)
            return snprintf(out, cap, "%lld", (long long)*(int64_t *)pointer);
        return snprintf(out, cap, "\"ptr\"");
    default:
        return snprintf(out, cap, pointer ? "\"ptr\"" : "null");
    }
}

void vgpu_trace_result(const vgpu_api *api, const vgpu_function *fn, void *const *args, int rc) {
    if (!vgpu_tracing()) return;
    char detail[768];
    size_t n = (size_t)snprintf(detail, sizeof detail, "\"args\":[");
    for (unsigned i = 0; i < fn->nparams && n + 120 < sizeof detail; i++) {
        if (i) detail[n++] = ',';
        int wrote = trace_argument(&fn->params[i], args[i], rc == 0, detail + n, sizeof detail - n - 2);
        if (wrote > 0) n += (size_t)wrote < sizeof detail - n - 2 ? (size_t)wrote : 0;
    }
    detail[n++] = ']';
    detail[n] = 0;
    vgpu_trace_call(api->name, fn->name, rc, detail);
}
