// Streams, events and page-locked memory through cudart, built with nvcc for the tests:
// random data round trips on several streams, event timing, priorities.  "name value" lines.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

#define STREAMS 4

static volatile int host_calls = 0;
static void CUDART_CB count_call(void *data) { host_calls += *(int *)data; }

int main() {
    const size_t n = 8 << 20;
    unsigned char *host = NULL, *back = NULL;
    printf("mallochost %d\n", (int)cudaMallocHost((void **)&host, n * STREAMS));
    printf("hostalloc %d\n", (int)cudaHostAlloc((void **)&back, n * STREAMS, cudaHostAllocDefault));
    srand(7);
    for (size_t i = 0; i < n * STREAMS; i++) host[i] = (unsigned char)rand();
    int least = 0, greatest = 0;
    printf("priority_range %d\n", (int)cudaDeviceGetStreamPriorityRange(&least, &greatest));
    printf("priorities %d %d\n", least, greatest);
    cudaStream_t streams[STREAMS];
    void *device[STREAMS];
    cudaEvent_t start, stop, untimed;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    printf("untimed_create %d\n", (int)cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
    int ok = 1;
    for (int s = 0; s < STREAMS; s++) {
        ok &= cudaStreamCreateWithPriority(&streams[s], cudaStreamNonBlocking, s % 2 ? greatest : least) == cudaSuccess;
        ok &= cudaMalloc(&device[s], n) == cudaSuccess;
    }
    printf("created %d\n", ok);
    cudaEventRecord(start, streams[0]);
    for (int s = 0; s < STREAMS; s++) {
        ok &= cudaMemcpyAsync(device[s], host + s * n, n, cudaMemcpyHostToDevice, streams[s]) == cudaSuccess;
        ok &= cudaMemcpyAsync(back + s * n, device[s], n, cudaMemcpyDeviceToHost, streams[s]) == cudaSuccess;
    }
    static int one = 1;
    for (int s = 0; s < STREAMS; s++) ok &= cudaLaunchHostFunc(streams[s], count_call, &one) == cudaSuccess;
    for (int s = 0; s < STREAMS; s++) ok &= cudaStreamSynchronize(streams[s]) == cudaSuccess;
    printf("host_calls %d\n", host_calls);
    cudaEventRecord(stop, streams[0]);
    cudaEventRecord(untimed, streams[0]);
    printf("async %d\n", ok);
    printf("equal %d\n", memcmp(host, back, n * STREAMS) == 0);
    printf("event_sync %d\n", (int)cudaEventSynchronize(stop));
    printf("event_query %d\n", (int)cudaEventQuery(stop));
    float ms = -1;
    printf("elapsed_rc %d\n", (int)cudaEventElapsedTime(&ms, start, stop));
    printf("elapsed_ms %f\n", ms);
    printf("untimed_rc %d\n", (int)cudaEventElapsedTime(&ms, start, untimed));
    int priority = 99;
    cudaStreamGetPriority(streams[1], &priority);
    printf("stream_priority %d\n", priority);
    for (int s = 0; s < STREAMS; s++) {
        cudaFree(device[s]);
        ok &= cudaStreamDestroy(streams[s]) == cudaSuccess;
    }
    printf("destroyed %d\n", ok);
    printf("freehost %d %d\n", (int)cudaFreeHost(host), (int)cudaFreeHost(back));
    printf("sync %d\n", (int)cudaDeviceSynchronize());
    return 0;
}
