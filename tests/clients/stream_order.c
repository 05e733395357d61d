// Stream order under load: randomised sequences of copies (every direction, pageable and
// page-locked host memory), memsets, host functions, callbacks, event records and waits on
// several streams from several threads, checked against a model kept on the host.
//
// Every device slot holds one 32-bit value repeated; the model knows what each slot holds after
// each operation in issue order, so a host function that reads a page-locked buffer filled by
// the copy before it, a copy from a buffer a host function filled, and the final read-back can
// all be checked. Prints "checks N failures M" and exits 1 on any failure.
//
// usage: stream_order SEED THREADS STEPS
#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STREAMS 3
#define SLOTS 4             // device slots per stream
#define SLOT_WORDS 1024     // 4 KiB each
#define EXCHANGE 50         // every this many steps the threads hand slots on, and synchronise
#define PINNED 64           // page-locked buffers per thread, used in turn (more than EXCHANGE)

static atomic_long checks, failures;
static CUcontext context;
static int steps;
static unsigned base_seed;

#define OK(call)                                                                       \
    do {                                                                               \
        CUresult rc_ = (call);                                                         \
        if (rc_ != CUDA_SUCCESS) {                                                     \
            fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #call, (int)rc_);  \
            exit(2);                                                                   \
        }                                                                              \
    } while (0)

static void fill(uint32_t *words, uint32_t value) {
    for (int i = 0; i < SLOT_WORDS; i++) words[i] = value;
}

static int holds(const uint32_t *words, uint32_t value) {
    for (int i = 0; i < SLOT_WORDS; i++)
        if (words[i] != value) return 0;
    return 1;
}

// A host function's work: check a page-locked buffer against what the model says the copy
// before it put there, or fill one that the copy after it reads.
typedef struct {
    uint32_t *buffer;
    uint32_t value;
    int write;
} host_work;

static void run_host_work(host_work *work) {
    if (work->write) {
        fill(work->buffer, work->value);
    } else {
        atomic_fetch_add(&checks, 1);
        if (!holds(work->buffer, work->value)) {
            if (atomic_fetch_add(&failures, 1) < 5)
                fprintf(stderr, "host function saw %u, expected %u\n", work->buffer[0], work->value);
        }
    }
    free(work);
}

static void CUDA_CB host_function(void *data) { run_host_work((host_work *)data); }
static void CUDA_CB stream_callback(CUstream stream, CUresult status, void *data) {
    (void)stream;
    if (status != CUDA_SUCCESS) atomic_fetch_add(&failures, 1);
    run_host_work((host_work *)data);
}

static void queue_host_work(CUstream stream, uint32_t *buffer, uint32_t value, int write, int as_callback) {
    host_work *work = malloc(sizeof *work);
    *work = (host_work){buffer, value, write};
    if (as_callback) OK(cuStreamAddCallback(stream, stream_callback, work, 0));
    else OK(cuLaunchHostFunc(stream, host_function, work));
}

// What one thread shares with the next for the cross-thread step: an event recorded after a
// slot was written, and the value the slot then held.
typedef struct {
    pthread_barrier_t barrier;
    CUevent event[16];
    CUdeviceptr slot[16];
    uint32_t value[16];
} handoff;

typedef struct {
    int index, count;
    handoff *shared;
} thread_args;

// Every thread at once: record an event after a slot's writer, let the next thread's stream
// wait for it and copy the slot, then synchronise so that no buffer is reused while in use.
static void exchange(thread_args *args, CUstream stream, CUdeviceptr *slots, uint32_t *model, unsigned *seed) {
    handoff *shared = args->shared;
    int k = rand_r(seed) % SLOTS, other = (k + 1 + rand_r(seed) % (SLOTS - 1)) % SLOTS; /* k is read by the next */
    int from = (args->index + args->count - 1) % args->count;
    shared->slot[args->index] = slots[k];
    shared->value[args->index] = model[k];
    OK(cuEventRecord(shared->event[args->index], stream));
    pthread_barrier_wait(&shared->barrier);
    OK(cuStreamWaitEvent(stream, shared->event[from], 0));
    OK(cuMemcpyDtoDAsync(slots[other], shared->slot[from], SLOT_WORDS * 4, stream));
    model[other] = shared->value[from];
    OK(cuCtxSynchronize());
    pthread_barrier_wait(&shared->barrier); // no slot is written again before every copy is done
}

static void *worker(void *raw) {
    thread_args *args = raw;
    unsigned seed = base_seed * 7919u + (unsigned)args->index;
    OK(cuCtxSetCurrent(context));
    CUstream streams[STREAMS];
    CUdeviceptr slots[STREAMS][SLOTS];
    uint32_t model[STREAMS][SLOTS];
    uint32_t *pinned[PINNED];
    uint32_t pageable[SLOT_WORDS], back[SLOT_WORDS];
    CUevent events[STREAMS];
    int next_pinned = 0;
    for (int s = 0; s < STREAMS; s++) {
        OK(cuStreamCreate(&streams[s], s == 0 ? CU_STREAM_DEFAULT : CU_STREAM_NON_BLOCKING));
        OK(cuEventCreate(&events[s], CU_EVENT_DISABLE_TIMING));
        for (int k = 0; k < SLOTS; k++) {
            OK(cuMemAlloc(&slots[s][k], SLOT_WORDS * 4));
            model[s][k] = 0;
            OK(cuMemsetD32(slots[s][k], 0, SLOT_WORDS));
        }
    }
    for (int p = 0; p < PINNED; p++) OK(cuMemAllocHost((void **)&pinned[p], SLOT_WORDS * 4));
    for (int step = 0; step < steps; step++) {
        if (step % EXCHANGE == EXCHANGE - 1) {
            exchange(args, streams[step % STREAMS], slots[step % STREAMS], model[step % STREAMS], &seed);
            continue;
        }
        int s = rand_r(&seed) % STREAMS, k = rand_r(&seed) % SLOTS, other = rand_r(&seed) % SLOTS;
        CUstream stream = streams[s];
        uint32_t value = (uint32_t)rand_r(&seed) | 1u;
        uint32_t *buffer = pinned[next_pinned++ % PINNED];
        switch (rand_r(&seed) % 8) {
        case 0: // from pageable memory: the source may be reused once the call returns
            fill(pageable, value);
            OK(cuMemcpyHtoDAsync(slots[s][k], pageable, SLOT_WORDS * 4, stream));
            model[s][k] = value;
            break;
        case 1:
            OK(cuMemsetD32Async(slots[s][k], value, SLOT_WORDS, stream));
            model[s][k] = value;
            break;
        case 2:
            OK(cuMemcpyDtoDAsync(slots[s][k], slots[s][other], SLOT_WORDS * 4, stream));
            model[s][k] = model[s][other];
            break;
        case 3: // device to page-locked memory, then a host function on the stream reads it
        case 4:
            OK(cuMemcpyDtoHAsync(buffer, slots[s][k], SLOT_WORDS * 4, stream));
            queue_host_work(stream, buffer, model[s][k], 0, rand_r(&seed) % 2);
            break;
        case 5: // a host function fills page-locked memory, then the stream copies from it
            queue_host_work(stream, buffer, value, 1, rand_r(&seed) % 2);
            OK(cuMemcpyHtoDAsync(slots[s][k], buffer, SLOT_WORDS * 4, stream));
            model[s][k] = value;
            break;
        case 6: { // another stream of this thread waits for this one, then copies from it
            int t = (s + 1 + rand_r(&seed) % (STREAMS - 1)) % STREAMS;
            OK(cuEventRecord(events[s], stream));
            OK(cuStreamWaitEvent(streams[t], events[s], 0));
            OK(cuMemcpyDtoDAsync(slots[t][other], slots[s][k], SLOT_WORDS * 4, streams[t]));
            model[t][other] = model[s][k];
            break;
        }
        case 7: // the synchronous copies wait for the legacy stream, which waits for stream 0
            OK(cuMemcpyDtoH(back, slots[0][k], SLOT_WORDS * 4));
            atomic_fetch_add(&checks, 1);
            if (!holds(back, model[0][k])) atomic_fetch_add(&failures, 1);
            break;
        }
    }
    for (int s = 0; s < STREAMS; s++) {
        OK(cuStreamSynchronize(streams[s]));
        for (int k = 0; k < SLOTS; k++) {
            OK(cuMemcpyDtoH(back, slots[s][k], SLOT_WORDS * 4));
            atomic_fetch_add(&checks, 1);
            if (!holds(back, model[s][k])) {
                if (atomic_fetch_add(&failures, 1) < 5)
                    fprintf(stderr, "slot %d/%d holds %u, expected %u\n", s, k, back[0], model[s][k]);
            }
        }
    }
    OK(cuCtxSynchronize());
    for (int p = 0; p < PINNED; p++) OK(cuMemFreeHost(pinned[p]));
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: stream_order SEED THREADS STEPS\n");
        return 2;
    }
    base_seed = (unsigned)atoi(argv[1]);
    int count = atoi(argv[2]);
    steps = atoi(argv[3]);
    if (count < 1 || count > 16) return 2;
    CUdevice device;
    OK(cuInit(0));
    OK(cuDeviceGet(&device, 0));
    OK(cuDevicePrimaryCtxRetain(&context, device));
    OK(cuCtxSetCurrent(context));
    handoff shared;
    pthread_barrier_init(&shared.barrier, NULL, (unsigned)count);
    for (int i = 0; i < count; i++) OK(cuEventCreate(&shared.event[i], CU_EVENT_DISABLE_TIMING));
    pthread_t threads[16];
    thread_args args[16];
    for (int i = 0; i < count; i++) {
        args[i] = (thread_args){i, count, &shared};
        pthread_create(&threads[i], NULL, worker, &args[i]);
    }
    for (int i = 0; i < count; i++) pthread_join(threads[i], NULL);
    printf("checks %ld failures %ld\n", (long)atomic_load(&checks), (long)atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}
